r"""Tiger (Tight-fisted Optimizer): sign momentum with one buffer, accumulation for free.

Chapter: *Tiger* (``notebooks/17-tiger.ipynb``); the embedding fixed point in chapter 18.

Tiger is Lion with :math:`\beta_1=\beta_2=\beta`:

.. math::
    m_t = \beta m_{t-1} + (1-\beta) g_t,\qquad
    \theta_t = (1-\eta_t\lambda)\theta_{t-1} - \eta_t\operatorname{sign}(m_t),

with the learning rate set per parameter from a global *relative* rate :math:`\alpha`:
:math:`\eta = \tfrac12\alpha` for element-wise parameters (biases, norm gains) and
:math:`\eta = \alpha\,\mathrm{RMS}(\theta_{t-1})` for matrices, so that a matrix changes by
exactly the fraction :math:`\alpha` of its norm per step (when no momentum entry is zero).

Gradient accumulation over :math:`k` micro-batches lives inside the momentum: at micro-step
:math:`t` (from 1) the momentum is multiplied by :math:`\beta` only if :math:`k \mid t-1`, the
gradient enters with weight :math:`(1-\beta)/k`, and the parameters move only if
:math:`k \mid t`. This reproduces big-batch Tiger on the mean of the :math:`k` gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import (
    all_finite,
    as_float_tensor,
    check_choice,
    check_float_dtype,
    check_int,
    check_real,
    work_dtype,
)
from ._fused import check_fused, fused_sign_step, use_fused
from .lion import (
    _apply_lazy,
    add_checked_group,
    dense_grads,
    lazy_rows,
    lion_update,
    run_closure,
)

__all__ = ["Tiger", "tiger_update", "tiger_lr", "fraction_unchanged", "TIGER_KINDS"]

#: How a parameter's learning rate is derived from the relative rate alpha.
TIGER_KINDS = ("auto", "matrix", "elementwise")


def tiger_lr(alpha: float, theta: torch.Tensor, kind: str = "auto") -> float:
    r"""Tiger's learning rate for one parameter.

    .. math:: \eta = \begin{cases} \tfrac12\alpha & \text{element-wise parameter}\\
              \alpha\,\mathrm{RMS}(\theta) = \alpha\sqrt{\tfrac1k\sum_i\theta_i^2}
              & \text{matrix}\end{cases}

    ``kind="auto"`` treats tensors with two or more dimensions as matrices. An all-zero matrix
    gets :math:`\eta = 0` and never moves: initialise kernels away from zero.
    """
    alpha = check_real(alpha, "alpha", nonnegative=True)
    check_choice(kind, "kind", TIGER_KINDS)
    theta = as_float_tensor(theta, "theta", min_ndim=0).detach()
    if _is_matrix(theta, kind):
        return alpha * float(torch.linalg.vector_norm(theta, dtype=torch.float64)) / math.sqrt(
            theta.numel())
    return 0.5 * alpha


def _is_matrix(p: torch.Tensor, kind: str) -> bool:
    return kind == "matrix" or (kind == "auto" and p.ndim >= 2)


def tiger_update(theta, m, g, *, lr: float, beta: float = 0.965, weight_decay: float = 0.0):
    r"""One Tiger step with a given learning rate, as a pure function returning ``(theta, m)``.

    .. math:: m' = \beta m + (1-\beta) g,\qquad
              \theta' = (1-\eta\lambda)\theta - \eta\operatorname{sign}(m')

    It is :func:`dlmath.optim.lion_update` with ``betas=(beta, beta)`` (the same floating-point
    operations, so the two agree bit for bit).
    """
    beta = check_real(beta, "beta", low=0.0, high=1.0)
    return lion_update(theta, m, g, lr=lr, betas=(beta, beta), weight_decay=weight_decay)


def fraction_unchanged(theta: torch.Tensor, update: torch.Tensor, dtype: torch.dtype) -> float:
    r"""Fraction of entries with :math:`\mathrm{fl}(\theta - u) = \theta` when both are stored in
    ``dtype``: the update is absorbed by rounding (chapter 17, half precision).

    ``theta`` and ``update`` are broadcastable floating tensors; the subtraction is done in
    ``dtype`` (e.g. ``torch.bfloat16``), the comparison exactly.
    """
    theta = as_float_tensor(theta, "theta", min_ndim=0)
    update = as_float_tensor(update, "update", min_ndim=0)
    check_float_dtype(dtype)
    t = theta.to(dtype)
    return (t - update.to(dtype) == t).double().mean().item()


class Tiger(torch.optim.Optimizer):
    r"""Tiger with parameter-group rules, momentum-based accumulation and a NaN guard.

    .. math:: m \leftarrow \beta m + (1-\beta) g,\qquad
              \theta \leftarrow (1-\eta\lambda)\theta - \eta\operatorname{sign}(m)

    Args:
        params: an iterable of tensors or parameter-group dicts; every option below except
            ``nan_guard`` can be set per group.
        lr: the relative learning rate :math:`\alpha` (0.001-0.002 at peak in the post);
            schedulers act on it. The per-parameter :math:`\eta` comes from :func:`tiger_lr`.
        beta: :math:`\beta\in[0,1]`; 0.945 (vision) or 0.965 (language), the means of Lion's pairs.
        weight_decay: :math:`\lambda \ge 0`, decoupled (``p *= 1 - eta * weight_decay``).
            The post uses 0.01 for matrices and 0 for biases and norm parameters.
        kind: ``"auto"`` (matrices are tensors with ndim >= 2), ``"matrix"`` or ``"elementwise"``.
        accumulate: :math:`k \ge 1` micro-batches per real step, accumulated inside the
            momentum (call ``step()`` after every micro-batch; no second buffer).
        center: the value the NaN guard shrinks towards (1 for norm gains, 0 otherwise).
        shrink: the NaN guard's factor :math:`s\in(0,1]`.
        lazy: leave rows (first dimension) with an all-zero gradient untouched (k = 1 only).
        nan_guard: if any gradient holds NaN or inf, skip the step: momenta stay as they are,
            step counters do not advance, and every parameter with a gradient becomes
            :math:`c + s(\theta - c)`. Costs one device synchronisation per step.
        fused: ``None`` (auto), ``True`` or ``False``: the compiled one-pass step or the eager
            ``foreach`` ops, chosen as in :class:`dlmath.optim.Lion` (auto: compiled for groups
            of 2**20+ elements on a CPU); bit-identical results in float32/float64. ``lazy``
            groups take the ``foreach`` path. On a micro-step that does not fire (accumulation)
            the compiled kernel rewrites each parameter unchanged.

    State per parameter: ``exp_avg`` (:math:`m`) and ``step`` (micro-steps taken). An empty
    parameter (a dimension of size 0) is allowed and stays empty. A parameter
    whose ``grad`` is ``None`` is skipped and its counter does not advance, so its accumulation
    cycle resumes where it stopped; give it a zero gradient instead to count the micro-step.
    Sparse gradients raise ``TypeError``.
    """

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.965, weight_decay: float = 0.0,
                 *, kind: str = "auto", accumulate: int = 1, center: float = 0.0,
                 shrink: float = 0.99, lazy: bool = False, nan_guard: bool = True,
                 fused: bool | None = None):
        defaults = dict(lr=lr, beta=beta, weight_decay=weight_decay, kind=kind,
                        accumulate=accumulate, center=center, shrink=shrink, lazy=lazy)
        _check_group(defaults)
        if not isinstance(nan_guard, bool):
            raise TypeError(f"nan_guard must be a bool, got {type(nan_guard).__name__}")
        self.nan_guard = nan_guard
        self.fused = check_fused(fused)  # an attribute: state dicts load across both paths
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group as ``torch.optim`` does, then check it; a bad group is removed again."""
        add_checked_group(self, param_group, _check_group)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One micro-step; ``closure`` (optional) recomputes and returns the loss."""
        loss = run_closure(closure)
        work = [(group, *dense_grads(self, group)) for group in self.param_groups]
        if self.nan_guard and not all_finite([g for _, _, grads in work for g in grads]):
            for group, params, _ in work:
                if params:
                    c, s = group["center"], group["shrink"]
                    torch._foreach_add_(params, -c)
                    torch._foreach_mul_(params, s)
                    torch._foreach_add_(params, c)
            return loss
        for group, params, grads in work:
            if params:
                self._step_group(group, params, grads)
        return loss

    def _step_group(self, group, params, grads):
        beta, k, alpha = group["beta"], group["accumulate"], group["lr"]
        decay, fire = [], []  # indices of parameters starting a cycle / ending one
        for i, p in enumerate(params):
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = 0
            state["step"] += 1
            t = state["step"]
            if (t - 1) % k == 0:
                decay.append(i)
            if t % k == 0:
                fire.append(i)
        ms = [self.state[p]["exp_avg"] for p in params]
        lazy = group["lazy"]  # then k = 1: every parameter fires
        if not lazy and self._step_fused(group, params, grads, ms, decay, fire):
            return
        if lazy:
            masks = [lazy_rows(g) for g in grads]
            old_p = [p.clone() for p in params]
            old_m = [m.clone() for m in ms]
        if decay and beta != 1.0:
            torch._foreach_mul_([ms[i] for i in decay], beta)
        torch._foreach_add_(ms, grads, alpha=(1.0 - beta) / k)
        if not fire:
            return
        ps = [params[i] for i in fire]
        fm = [ms[i] for i in fire]
        etas = _tiger_etas(ps, alpha, group["kind"])
        wd = group["weight_decay"]
        if wd != 0:
            torch._foreach_mul_(ps, [1.0 - eta * wd for eta in etas])
        step = torch._foreach_sign(fm)
        torch._foreach_mul_(step, etas)
        torch._foreach_sub_(ps, step)
        if lazy:
            _apply_lazy(params, old_p, masks)
            _apply_lazy(ms, old_m, masks)

    def _step_fused(self, group, params, grads, ms, decay, fire) -> bool:
        """The same update by the compiled kernel (one coefficient row per parameter)."""
        if not use_fused(self, params):
            return False
        beta, wd = group["beta"], group["weight_decay"]
        c = (1.0 - beta) / group["accumulate"]
        etas = _tiger_etas([params[i] for i in fire], group["lr"], group["kind"])
        decay = set(decay)
        rows = [[beta, c, beta, c, 1.0, 0.0] if i in decay else [1.0, c, 1.0, c, 1.0, 0.0]
                for i in range(len(params))]
        for i, eta in zip(fire, etas, strict=True):
            rows[i][4:] = [1.0 - eta * wd, -eta]
        coef = torch.tensor(rows, dtype=torch.float64)
        return fused_sign_step(self, params, grads, ms, coef)


def _tiger_etas(ps, alpha, kind):
    """Per-parameter learning rates: one norm per matrix.

    ``torch.linalg.vector_norm`` per tensor, not ``torch._foreach_norm``: on this CPU the
    foreach norm is about 10x slower (single-threaded), a whole fused Lion step's worth for a
    10M-parameter model (benchmarks/bench_optim.py)."""
    etas = [0.5 * alpha] * len(ps)
    for i, p in enumerate(ps):
        if _is_matrix(p, kind):
            # a float16/bfloat16 norm is accumulated and returned in float32: in float16 it
            # would overflow to inf (and the step to inf/nan) once it passes 65504
            norm = torch.linalg.vector_norm(p, dtype=work_dtype(p.dtype))
            etas[i] = alpha * float(norm) / math.sqrt(p.numel() or 1)  # an empty one: eta = 0
    return etas


def _check_group(group: dict) -> None:
    check_real(group["lr"], "lr", nonnegative=True)
    check_real(group["beta"], "beta", low=0.0, high=1.0)
    check_real(group["weight_decay"], "weight_decay", nonnegative=True)
    check_choice(group["kind"], "kind", TIGER_KINDS)
    check_int(group["accumulate"], "accumulate", low=1)
    check_real(group["center"], "center")
    check_real(group["shrink"], "shrink", positive=True, high=1.0)
    if not isinstance(group["lazy"], bool):
        raise TypeError(f"lazy must be a bool, got {type(group['lazy']).__name__}")
    if group["lazy"] and group["accumulate"] != 1:
        raise ValueError("lazy=True needs accumulate=1 (a row absent from one micro-batch may "
                         "be present in another)")
