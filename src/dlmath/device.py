"""Where computations run, and how big the book's experiments are there.

Every chapter takes its sizes from :func:`pick`, so the same notebook runs small on a laptop
CPU (and in CI) and larger on a GPU::

    from dlmath import device
    dev = device.default_device()
    n_trials = device.pick(cpu=2_000, gpu=200_000)

Two environment variables override the automatic choice:

``DLMATH_DEVICE``
    a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``). ``"mps"`` is refused: the
    chapters check their claims in float64, which Apple's MPS backend does not have.
``DLMATH_SIZE``
    ``"small"`` or ``"large"``: force the preset whatever the device.
"""

from __future__ import annotations

import os

import torch

from ._checks import check_choice, check_device, check_int

__all__ = ["default_device", "preset", "pick", "generator", "compute_dtype", "describe"]

_PRESETS = ("small", "large")


def default_device() -> torch.device:
    """The device chapters run on: ``$DLMATH_DEVICE``, else CUDA if available, else CPU."""
    name = os.environ.get("DLMATH_DEVICE")
    if name:
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise ValueError(f"DLMATH_DEVICE={name!r} is not a valid torch device") from exc
        if dev.type == "mps":
            raise ValueError(f"DLMATH_DEVICE={name!r}: the chapters check in float64, which MPS "
                             "does not support; use 'cpu' (each chapter runs in seconds there)")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def preset(device: torch.device | str | None = None) -> str:
    """``"large"`` on an accelerator, ``"small"`` on CPU, unless ``$DLMATH_SIZE`` says otherwise."""
    forced = os.environ.get("DLMATH_SIZE")
    if forced:
        return check_choice(forced, "DLMATH_SIZE", _PRESETS)
    dev = check_device(device) if device is not None else default_device()
    return "small" if dev.type == "cpu" else "large"


def pick(*, cpu, gpu, device: torch.device | str | None = None):
    """Return ``cpu`` under the small preset and ``gpu`` under the large one."""
    return cpu if preset(device) == "small" else gpu


def generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (no global state touched)."""
    check_int(seed, "seed", low=0)
    dev = check_device(device) if device is not None else default_device()
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    return g


def compute_dtype(device: torch.device | str | None = None, *, fast: bool = False) -> torch.dtype:
    """The dtype for matrix work on ``device``.

    ``fast=False`` (checks): float64 everywhere. ``fast=True`` (throughput): bfloat16 on CUDA,
    float32 elsewhere: bf16 matrix products on a CPU without bf16 units are tens of times slower.
    """
    dev = check_device(device) if device is not None else default_device()
    if not fast:
        return torch.float64
    return torch.bfloat16 if dev.type == "cuda" else torch.float32


def describe(device: torch.device | str | None = None) -> str:
    """One line naming the device and preset, for the top of a chapter."""
    dev = check_device(device) if device is not None else default_device()
    what = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return f"device: {dev} ({what}), preset: {preset(dev)}, torch {torch.__version__}"
