r"""The fused step of the sign optimizers (Lion, SignSGD, Tiger): one ``torch.compile``'d kernel.

Every sign optimizer of this package updates a parameter :math:`p`, its gradient :math:`g` and
its momentum :math:`m` by the same three lines, with coefficients :math:`c = (b_1, c_1, b_2, c_2,
d, s)` per parameter:

.. math::
    u = \operatorname{sign}\big(\operatorname{fma}(g, c_1, m b_1)\big),\qquad
    p \leftarrow \operatorname{fma}(u, s, p d),\qquad
    m \leftarrow \operatorname{fma}(g, c_2, m b_2),

where :math:`\operatorname{fma}(x, y, z) = xy + z` rounded once. Lion is
:math:`c = (\beta_1, 1-\beta_1, \beta_2, 1-\beta_2, 1-\eta\lambda, -\eta)`; Tiger is
:math:`(\beta_t, \tfrac{1-\beta}{k}, \beta_t, \tfrac{1-\beta}{k}, d_t, s_t)` with its per-parameter
learning rate. These are exactly the roundings of the eager ``foreach`` ops (``x.mul_(b)``
rounds, ``x.add_(y, alpha=c)`` is an fma in ATen), so on float32/float64 the fused path gives
**bit-identical** results to the foreach path; the coefficients are computed in Python (double),
as the foreach path does, and passed as a float64 tensor so that a changing learning rate does
not recompile.

Why a compiled function over the parameter lists and not flat buffers: parameters and gradients
are user tensors (autograd allocates the gradients), so one flat buffer for them would need a copy
per step, which costs more bandwidth than it saves; and a flat momentum buffer alone buys
nothing, since the compiled kernel already streams each (p, g, m) triple once, all tensors in one
OpenMP region (20 bytes per float32 parameter, against 28 for AdamW and about 60-70 for the
eager foreach chains). The state stays one ``exp_avg`` per parameter, so state dicts move freely
between the fused and the foreach path. Measured in ``benchmarks/bench_optim.py``.

Compiling costs seconds (tens of seconds with a cold Inductor cache on a 2-core CPU), so
``fused=None`` compiles only for parameter lists of at least :data:`FUSED_MIN_NUMEL` elements,
and only on a CPU (on an H100 the compiled kernel measured slower than the foreach ops): the
chapters' toy models stay on the foreach path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import warnings
from functools import lru_cache

import torch

__all__ = ["FUSED_MIN_NUMEL", "check_fused", "use_fused", "fused_sign_step"]

#: ``fused=None`` (auto) uses the compiled kernel for parameter groups of at least this many
#: elements (2**20, about a million): below it the compile time is not paid back.
FUSED_MIN_NUMEL = 1 << 20

#: Graphs the kernel may hold (one per list of parameter shapes and dtypes seen).
RECOMPILE_LIMIT = 64

_KERNEL = None  # the torch.compile'd kernel, built on first use


def check_fused(fused) -> bool | None:
    """Validate the ``fused`` option: ``None`` (auto), ``True`` or ``False``."""
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused must be None, True or False, got {fused!r}")
    return fused


def _sign_kernel(ps, gs, ms, coef):
    """The step of the module docstring on lists; ``coef`` is (6,) shared or (n, 6) per tensor."""
    fma = torch.ops.prims.fma
    for i, (p, g, m) in enumerate(zip(ps, gs, ms, strict=True)):
        row = coef if coef.ndim == 1 else coef[i]
        # the coefficients in the compute dtype, as eager ATen casts a Python scalar (and so
        # that a 0-d float32 parameter is not promoted to float64 by a 0-d float64 coefficient)
        b1, c1, b2, c2, d, s = row.to(torch.promote_types(p.dtype, torch.float32)).unbind()
        u = fma(g, c1, m * b1).sign()
        p.copy_(fma(u, s, p * d))
        m.copy_(fma(g, c2, m * b2))


def _compiled_kernel():
    """``torch.compile(_sign_kernel)``, built once (raises if compile is unavailable)."""
    global _KERNEL
    if _KERNEL is None:
        import torch._inductor.inductor_prims  # noqa: F401  (registers torch.ops.prims.fma)

        _KERNEL = torch.compile(_sign_kernel, fullgraph=True)
    return _KERNEL


@lru_cache
def _unavailable(device_type: str) -> str | None:
    """Why torch.compile cannot run on this device type (None when it should)."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device_type == "cpu":
        names = [os.environ.get("CXX"), "g++", "c++", "clang++"]
        if not any(n and shutil.which(n) for n in names):
            return "no C++ compiler found (Inductor needs one on CPU)"
        return None
    if device_type == "cuda":
        return None if importlib.util.find_spec("triton") else "triton is not installed"
    return f"device type {device_type!r} is not supported by the fused path"


# the folders of dlmath and of torch (the first a level up from this subpackage)
_INTERNAL = (os.path.dirname(os.path.dirname(__file__)) + os.sep,
             os.path.dirname(torch.__file__) + os.sep)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside dlmath and torch, for the caller of
    :func:`_warn_once` (its call chains differ in depth: Lion, SignSGD, Tiger, the optimizer
    hooks of torch)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def _warn_once(optimizer, reason: str) -> None:
    if not getattr(optimizer, "_fused_off", None):
        warnings.warn(f"{type(optimizer).__name__}: the fused (torch.compile) step is not "
                      f"available ({reason}); using the foreach step", RuntimeWarning,
                      stacklevel=_caller_stacklevel())
    optimizer._fused_off = reason


def use_fused(optimizer, params) -> bool:
    """Whether ``optimizer.fused`` and the parameters (one group's, with gradients) call for the
    compiled kernel: ``fused`` is True, or None, the group on a CPU and holding at least
    :data:`FUSED_MIN_NUMEL` elements; all on one device where torch.compile can run; and no
    earlier failure. When ``fused=True`` cannot be honoured it warns once per optimizer.

    Auto mode stays on the foreach path on a GPU: there the compiled kernel measured slower
    (H100, 10M parameters in 20 tensors: 2.8x ``AdamW(fused=True)`` against 2.0x for foreach,
    benchmarks/results/nvidia-h100-80gb-hbm3.json)."""
    fused = optimizer.fused
    if fused is False or not params or getattr(optimizer, "_fused_off", None):
        return False
    device = params[0].device
    if fused is None and (device.type != "cpu"
                          or sum(p.numel() for p in params) < FUSED_MIN_NUMEL):
        return False
    reason = _unavailable(device.type)
    if reason is None and any(p.device != device for p in params):
        reason = "the parameters of a group span several devices"
    if reason is not None:
        if fused:
            _warn_once(optimizer, reason)
        return False
    return True


def fused_sign_step(optimizer, params, grads, ms, coef) -> bool:
    """Run the compiled kernel if :func:`use_fused` says so; False: take the foreach path.

    If compiling fails (no working compiler, an unsupported op, Dynamo's recompile limit) it
    warns once (``RuntimeWarning``), changes nothing and returns False, and the optimizer uses
    the foreach path from then on. ``coef`` is a float64 tensor, shape (6,) or
    (len(params), 6), on any device.
    """
    if not use_fused(optimizer, params):
        return False
    # torch 2.13's Inductor drops in-place writes to 0-d float64 CPU tensors (it takes them
    # for scalars): hand it 1-element views instead (tested in tests/test_tiger.py)
    params, grads, ms = ([t.view(1) if t.ndim == 0 else t for t in ts]
                         for ts in (params, grads, ms))
    try:
        kernel = _compiled_kernel()
        # every new list of shapes/dtypes is a new graph; a process with many optimizers
        # (a test suite) needs more than Dynamo's default 8. Past the limit Dynamo would run
        # the Python body eagerly (slow, and prims.fma's eager form rounds twice): make that an
        # error, handled below
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                        fail_on_recompile_limit_hit=True):
            kernel(params, grads, ms, coef.to(params[0].device))
    except Exception as exc:  # compile errors: no compiler, unsupported op, recompile limit
        _warn_once(optimizer, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return False
    return True
