"""Input validation shared by every module of dlmath.

Each helper raises a ``TypeError`` (wrong kind of object or dtype) or a ``ValueError``
(right kind, bad value) whose message names the argument and says what was expected, so
that a reader who passes the wrong thing learns what to fix from the error alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch

__all__ = [
    "as_float_tensor",
    "all_finite",
    "check_finite",
    "check_no_nan",
    "check_matrix",
    "check_probability",
    "check_real",
    "check_int",
    "check_choice",
    "check_dim",
    "broadcasts_to",
    "check_broadcast",
    "check_callable",
    "check_returned",
    "check_generator",
    "check_device",
    "HALF_DTYPES",
    "promote",
    "upcast_half",
    "work_dtype",
]

_COMPLEX = (torch.complex64, torch.complex128)

#: Dtypes whose sums and squares overflow early (float16) or that some linalg routines refuse.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in: float32 for float16/bfloat16, otherwise ``dtype`` itself."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def check_float_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """``dtype`` if it is a floating ``torch.dtype``, else ``TypeError`` (an integer dtype would
    truncate fractions such as learning rates or averaging weights to 0)."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating torch.dtype, got {dtype!r}")
    return dtype


def upcast_half(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`work_dtype` (float32 if it is float16/bfloat16, else ``x`` itself)."""
    return x.to(work_dtype(x.dtype))


def promote(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in their common dtype, by torch's promotion rules (that of ``a + b``:
    float32 with float64 gives float64, bfloat16 with float32 float32), so that a matrix product
    of a float32 and a float64 argument computes instead of raising inside torch."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def as_float_tensor(
    x,
    name: str,
    *,
    min_ndim: int = 1,
    allow_empty: bool = False,
    complex_ok: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return ``x`` as a floating-point tensor, or raise.

    Tensors keep their device and dtype; Python numbers, lists and numpy arrays are
    converted with ``torch.as_tensor`` (numpy float64 stays float64), or read directly in
    ``dtype`` when it is given (``torch.float64`` where the value is kept in float64: read
    through the default float32 first, 0.2 would become 0.20000000298). Integer and boolean
    tensors are refused rather than silently cast, because integer logits or matrices are
    almost always a mistake in a caller's code. ``complex_ok=True`` also accepts complex64
    and complex128 (never complex32, which few operations support).
    """
    if not isinstance(x, torch.Tensor):
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{name} must be a torch.Tensor or array-like of real numbers, "
                f"got {type(x).__name__}"
            ) from exc
        real = not t.is_complex() and t.dtype != torch.bool
        if dtype is not None and real:
            t = torch.as_tensor(x, dtype=dtype)
        elif real and not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        x = t
    if complex_ok and x.dtype in _COMPLEX:
        pass
    elif not x.is_floating_point():
        kinds = "a real or complex floating dtype" if complex_ok else "a floating dtype"
        names = "float16/bfloat16/float32/float64" + ("/complex64/complex128" if complex_ok else "")
        raise TypeError(f"{name} must have {kinds} ({names}), got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape "
                         f"{tuple(x.shape)}")
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def check_no_nan(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` contains NaN (infinities are allowed)."""
    # a sum that is not NaN proves no term is NaN (NaN propagates); only inf - inf needs more
    if torch.isnan(x.sum()) and torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    return x


def all_finite(tensors: torch.Tensor | Sequence[torch.Tensor]) -> bool:
    """Whether every entry of a tensor (or of a sequence of tensors) is finite, with one host
    synchronisation in the common case and about 30x cheaper on a CPU than
    ``torch.isfinite(x).all()``: a finite sum proves every term finite (inf and NaN propagate
    through it), so only a sum that overflowed, or a tensor that really holds inf or NaN, pays
    for the elementwise test."""
    ts = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    ts = [torch.view_as_real(t) if t.is_complex() else t for t in ts]
    if not ts:
        return True
    dev = ts[0].device
    if bool(torch.stack([t.sum().to(dev, torch.float64) for t in ts]).isfinite().all()):
        return True
    return bool(torch.stack([torch.isfinite(t).all().to(dev) for t in ts]).all())


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` contains NaN or an infinity."""
    if not all_finite(x):
        bad = "NaN" if torch.isnan(x).any() else "inf"
        raise ValueError(f"{name} must be finite, but it contains {bad}")
    return x


def check_matrix(M, name: str = "M", *, finite: bool = True) -> torch.Tensor:
    """A floating tensor with at least two dimensions (a matrix or a batch of matrices)."""
    M = as_float_tensor(M, name, min_ndim=2)
    if finite:
        check_finite(M, name)
    return M


def check_probability(p, name: str = "p", *, dim: int = -1, atol: float | None = None):
    """A tensor of probability vectors along ``dim``: entries >= 0 that sum to 1.

    The default tolerance on the sum is ``1e3 * eps`` of the dtype times the length, and at
    most ``1e-2`` (without that cap a float16 row of length 2 could be off by 2).
    """
    p = as_float_tensor(p, name)
    check_finite(p, name)
    if (p < 0).any():
        raise ValueError(f"{name} must be non-negative (a probability vector)")
    n = p.shape[dim]
    tol = atol if atol is not None else min(1e3 * torch.finfo(p.dtype).eps * max(n, 1), 1e-2)
    err = (p.sum(dim=dim, dtype=torch.float64) - 1).abs().max().item()
    if err > tol:
        raise ValueError(f"{name} must sum to 1 along dim={dim}; off by {err:.3g}")
    return p


def check_real(
    value,
    name: str,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    finite: bool = True,
    low: float | None = None,
    high: float | None = None,
) -> float:
    """A real Python scalar (or 0-d tensor), optionally constrained; returns a float."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_reals(values, name: str, n: int, what: str, **bounds) -> tuple[float, ...]:
    """``n`` real numbers (a sequence or 1-d array; ``what`` describes them in the error), each
    checked by :func:`check_real` with ``bounds``."""
    ok = (not isinstance(values, (str, bytes))
          and (isinstance(values, Sequence) or getattr(values, "ndim", None) == 1))
    if not ok or len(values) != n:
        raise TypeError(f"{name} must be {what}, got {values!r}")
    return tuple(check_real(v, f"{name}[{i}]", **bounds) for i, v in enumerate(values))


def check_int(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """A Python integer (bools refused) within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def broadcasts_to(shape, target) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without growing it."""
    try:
        return torch.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except RuntimeError:
        return False


def check_broadcast(**shapes) -> torch.Size:
    """The broadcast shape of the named shapes (``check_broadcast(g=g.shape[:-1], beta=...)``),
    or ``ValueError`` naming them: torch's own error names neither argument."""
    try:
        return torch.broadcast_shapes(*(tuple(s) for s in shapes.values()))
    except RuntimeError:
        listed = " and ".join(f"{name} {tuple(s)}" for name, s in shapes.items())
        raise ValueError(f"the shapes of {listed} do not broadcast") from None


def check_callable(f, name: str, call: str | None = None):
    """``f`` if it is callable, else ``TypeError``; ``call`` shows how it is called, e.g.
    ``"grad_fn(theta, x)"``."""
    if not callable(f):
        how = f" as {call}" if call else ""
        raise TypeError(f"{name} must be callable{how}, got {type(f).__name__}")
    return f


def check_returned(value, call: str, shape) -> torch.Tensor:
    """``value``, what the caller's function returned (``call`` shows the call, e.g.
    ``"v(x, t)"``), if it is a tensor of ``shape``; else ``ValueError``."""
    if not isinstance(value, torch.Tensor) or value.shape != tuple(shape):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{call} must return a tensor of shape {tuple(shape)}, got {got}")
    return value


def check_choice(value, name: str, choices: Sequence):
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_generator(generator, device=None, *, of: str = "the tensors") -> torch.Generator:
    """A ``torch.Generator``; given ``device``, one on that device's type (``of``: whose device)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if device is not None and generator.device.type != torch.device(device).type:
        raise ValueError(f"generator is on {generator.device}, {of} on {device}")
    return generator


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` (from a device or a name such as ``"cuda:0"``)."""
    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name} must be a torch.device or a device name such as 'cpu' or "
                         f"'cuda', got {device!r}") from exc


def check_dim(x: torch.Tensor, dim: int, name: str = "dim") -> int:
    """A valid dimension index of ``x``; returns it normalised to be non-negative."""
    check_int(dim, name)
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{name}={dim} is out of range for a tensor with {x.ndim} dimension(s)")
    return dim % x.ndim
