r"""Convergence of (projected) SGD: projections, a run recorder, regret, bounds, schedules.

Chapters: *SGD's average-loss convergence* (``notebooks/10-sgd-average-loss.ipynb``) and
*Extending the bound to unbounded domains* (``notebooks/11-sgd-unbounded-domain.ipynb``).

Conventions. Points are tensors of shape ``(..., d)``: the last dimension is the parameter
vector, leading dimensions are independent chains or instances. A learning-rate schedule is a
tensor ``etas`` of shape ``(..., T)`` holding :math:`\eta_1,\dots,\eta_T` (time runs along the
last dimension), and bounds reduce over it. Everything keeps the input's device and dtype;
use float64 for checks, since a regret is a small difference of large sums.

Edge cases. NaN or infinite points raise ``ValueError`` (a projection of ``inf`` has no
meaning); learning rates must be finite and > 0; a schedule that increases somewhere is refused
by the bounds that assume monotonicity unless the caller asks for the formula anyway
(``strict=False``), which the chapters do on purpose to show that the bound then fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import (
    as_float_tensor,
    broadcasts_to,
    check_broadcast,
    check_callable,
    check_choice,
    check_finite,
    check_float_dtype,
    check_int,
    check_real,
)

__all__ = [
    "project_ball",
    "project_box",
    "project_simplex",
    "SGDTrace",
    "sgd_run",
    "regret",
    "average_loss_bound",
    "average_loss_bound_any",
    "unbounded_average_bound",
    "weighted_average_bound",
    "lr_schedule",
    "SCHEDULES",
    "power_sums",
    "harmonic",
    "gaussian_abs_risk",
]

#: Euler–Mascheroni constant.
EULER_GAMMA = 0.5772156649015329


# -- projections --------------------------------------------------------------------------

def _points(v, name: str = "v") -> torch.Tensor:
    v = as_float_tensor(v, name)
    return check_finite(v, name)


def _broadcasts(t: torch.Tensor, name: str, v: torch.Tensor) -> torch.Tensor:
    """``t`` (already checked) if it broadcasts against the points ``v`` without growing them."""
    if not broadcasts_to(t.shape, v.shape):
        raise ValueError(f"{name} of shape {tuple(t.shape)} must broadcast against v of shape "
                         f"{tuple(v.shape)}")
    return t


def project_ball(v, radius: float = 1.0, center=None) -> torch.Tensor:
    r"""Euclidean projection onto the closed ball :math:`\{\theta: \|\theta-c\|_2\le r\}`.

    .. math:: \Pi(v) = c + (v-c)\,\min\Big(1, \frac{r}{\|v-c\|_2}\Big)

    ``v``: ``(..., d)``; ``center`` (default 0) broadcasts against ``v``; ``radius >= 0``
    (``radius = 0`` projects everything onto the centre). Returns ``(..., d)``. The offset
    :math:`v-c` is divided by its largest entry before its norm is taken, so huge offsets
    (whose squares overflow) and tiny ones (whose squares underflow) are projected correctly;
    an offset that itself overflows (``v`` and ``c`` of opposite signs near the dtype's largest
    value) is formed from the halves :math:`v/2 - c/2` instead, and is outside any ball.
    """
    v = _points(v)
    r = check_real(radius, "radius", nonnegative=True)
    c = torch.zeros((), dtype=v.dtype, device=v.device) if center is None else _broadcasts(
        check_finite(as_float_tensor(center, "center", min_ndim=0), "center"), "center", v).to(v)
    w = v - c
    huge = torch.isinf(w).any(dim=-1, keepdim=True)              # v - c overflowed
    w = torch.where(huge, 0.5 * v - 0.5 * c, w)                  # same direction, finite
    top = w.abs().amax(dim=-1, keepdim=True)
    unit = w / torch.where(top > 0, top, torch.ones_like(top))   # entries in [-1, 1]
    nu = torch.linalg.vector_norm(unit, dim=-1, keepdim=True)    # in [1, sqrt(d)], or 0
    outside = huge | (top * nu > r)                              # ||w|| > r (inf > r is right)
    on_sphere = unit * (r / nu.clamp_min(1.0))                   # nu >= 1 wherever outside
    return torch.where(outside, c + on_sphere, v)                # inside: v itself


def project_box(v, lo, hi) -> torch.Tensor:
    r"""Euclidean projection onto the box :math:`\{\theta: lo\le\theta_i\le hi\}`.

    .. math:: \Pi(v)_i = \min(\max(v_i, lo_i), hi_i)

    ``lo`` and ``hi`` are numbers or tensors broadcasting against ``v`` (``(..., d)``), with
    ``lo <= hi`` everywhere. Returns ``(..., d)``.
    """
    v = _points(v)
    lo = _broadcasts(check_finite(as_float_tensor(lo, "lo", min_ndim=0), "lo"), "lo", v).to(v)
    hi = _broadcasts(check_finite(as_float_tensor(hi, "hi", min_ndim=0), "hi"), "hi", v).to(v)
    if (lo > hi).any():
        raise ValueError("lo must be <= hi everywhere (the box would be empty)")
    return torch.minimum(torch.maximum(v, lo), hi)


def project_simplex(v, radius: float = 1.0) -> torch.Tensor:
    r"""Euclidean projection onto the simplex :math:`\{\theta\ge0: \sum_i\theta_i = r\}`.

    .. math:: \Pi(v)_i = \max(v_i-\tau, 0),\qquad
              \tau = \frac{1}{k}\Big(\sum_{j\le k}u_j - r\Big),\quad
              k = \max\Big\{j: u_j > \tfrac1j\big(\textstyle\sum_{i\le j}u_i - r\big)\Big\}

    where :math:`u` is :math:`v` sorted in decreasing order (the sort-based algorithm of
    Held, Wolfe and Crowder; Duchi et al. 2008). Ties are harmless. ``v``: ``(..., n)``,
    ``radius > 0``. Returns ``(..., n)``, non-negative, summing to ``radius``.
    """
    v = _points(v)
    r = check_real(radius, "radius", positive=True)
    n = v.shape[-1]
    v = v - v.amax(dim=-1, keepdim=True)   # the projection commutes with shifts along 1
    u = torch.sort(v, dim=-1, descending=True).values
    excess = torch.cumsum(u, dim=-1) - r
    j = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    # k >= 1 even in floats: after the shift u_1 = 0 exactly, so j = 1 gives 0 + r > 0
    k = (u - excess / j > 0).sum(dim=-1, keepdim=True)
    tau = torch.gather(excess, -1, k - 1) / k.to(v.dtype)
    return (v - tau).clamp_min(0.0)


# -- recording SGD ------------------------------------------------------------------------

@dataclass(frozen=True)
class SGDTrace:
    """What :func:`sgd_run` records.

    ``thetas``: ``(..., T+1, d)``, the iterates :math:`\\theta_1,\\dots,\\theta_{T+1}`;
    ``grads``: ``(..., T, d)``, :math:`g_t` evaluated at :math:`\\theta_t` on batch
    :math:`x_t`; ``losses``: ``(..., T)``, :math:`L(x_t,\\theta_t)`; ``etas``: ``(T,)`` or
    ``(..., T)``, as given.
    """

    thetas: torch.Tensor
    grads: torch.Tensor
    losses: torch.Tensor
    etas: torch.Tensor


def _schedule(etas, name: str = "etas") -> torch.Tensor:
    etas = as_float_tensor(etas, name)
    check_finite(etas, name)
    if not (etas > 0).all():
        raise ValueError(f"{name} must be > 0 everywhere (learning rates)")
    return etas


def sgd_run(loss_fn: Callable, theta1, etas, batches, *, grad_fn: Callable | None = None,
            project: Callable | None = None) -> SGDTrace:
    r"""Run (projected) SGD on a stream of losses and record everything.

    .. math:: \theta_{t+1} = \Pi_\Theta\big(\theta_t - \eta_t\, g(x_t, \theta_t)\big),
              \qquad t = 1,\dots,T

    ``loss_fn(theta, x) -> (...)`` is the loss of each chain on batch ``x``; ``grad_fn(theta,
    x) -> (..., d)`` its (sub)gradient, by default taken with autograd (which gives 0 as the
    subgradient of :math:`|\cdot|` at 0). ``theta1``: ``(..., d)``, the start, which must lie
    in :math:`\Theta` when ``project`` is given (``project(theta1) == theta1`` up to rounding:
    a move of at most :math:`\max(8, d/8)\,\epsilon\max(1,\|\theta_1\|_\infty)`, with
    :math:`\epsilon` the dtype's machine epsilon, since a projection's sums round too); ``etas``:
    ``(T,)``, one schedule for all chains, or ``(..., T)``, one per chain (broadcasting against
    the leading dimensions of ``theta1``), positive; ``batches[t-1]`` is :math:`x_t` (a tensor
    with leading dimension ``>= T`` or any sequence). Without ``project`` this is plain SGD on
    :math:`\mathbb R^d`.
    """
    check_callable(loss_fn, "loss_fn", "loss_fn(theta, x)")
    if grad_fn is not None:
        check_callable(grad_fn, "grad_fn", "grad_fn(theta, x)")
    if project is not None:
        check_callable(project, "project", "project(theta)")
    theta = _points(theta1, "theta1")
    etas = _schedule(etas)
    if etas.ndim > 1:
        if not broadcasts_to(etas.shape[:-1], theta.shape[:-1]):
            raise ValueError(f"etas of shape {tuple(etas.shape)} must be (T,) or (..., T) "
                             f"broadcasting to theta1's leading shape {tuple(theta.shape[:-1])}")
    T = etas.shape[-1]
    if isinstance(batches, torch.Tensor) and batches.ndim == 0:
        raise ValueError("batches must hold T batches along its first dimension, got a 0-d "
                         "tensor")
    if not hasattr(batches, "__len__") or not hasattr(batches, "__getitem__"):
        raise TypeError(f"batches must be a tensor or a sequence of batches, got "
                        f"{type(batches).__name__}")
    if len(batches) < T:
        raise ValueError(f"batches must hold at least T={T} batches (T = etas.shape[-1]), got "
                         f"{len(batches)}")
    if project is not None:
        gap = (project(theta) - theta).abs().max().item()
        ulps = max(8.0, theta.shape[-1] / 8) * torch.finfo(theta.dtype).eps
        if gap > ulps * max(1.0, theta.abs().max().item()):
            raise ValueError(f"theta1 must lie in the feasible set (project moved it by {gap:.3g})")

    def grad_by_autograd(th, x):
        with torch.enable_grad():
            th = th.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(th, x).sum(), th)
        return g

    grad = grad_fn if grad_fn is not None else grad_by_autograd
    thetas = grads = losses = None
    for t in range(T):
        x = batches[t]
        g = grad(theta, x)
        if g.shape != theta.shape:
            raise ValueError(f"the gradient at step {t + 1} has shape {tuple(g.shape)}, "
                             f"expected {tuple(theta.shape)}")
        if not torch.isfinite(g).all():
            raise ValueError(f"the gradient at step {t + 1} is not finite (diverged, or a "
                             f"non-finite batches[{t}]?)")
        loss = loss_fn(theta, x).detach()
        if loss.shape != theta.shape[:-1]:
            raise ValueError(f"loss_fn must return one loss per chain, shape "
                             f"{tuple(theta.shape[:-1])}; got {tuple(loss.shape)} at step {t + 1}")
        nxt = theta - etas[..., t, None].to(theta) * g
        if project is not None:
            nxt = project(nxt)
            if nxt.shape != theta.shape:
                raise ValueError(f"project must return its argument's shape "
                                 f"{tuple(theta.shape)}, got {tuple(nxt.shape)}")
        if thetas is None:  # the records, allocated once (stacking lists holds them twice)
            thetas = nxt.new_empty((*nxt.shape[:-1], T + 1, nxt.shape[-1]))
            grads = g.new_empty((*g.shape[:-1], T, g.shape[-1]))
            losses = loss.new_empty((*loss.shape, T))
            thetas[..., 0, :] = theta.detach()
        grads[..., t, :] = g.detach()
        losses[..., t] = loss
        theta = nxt.detach()
        thetas[..., t + 1, :] = theta
    return SGDTrace(thetas, grads, losses, etas)


def regret(traj_losses, comp_losses) -> torch.Tensor:
    r"""Average regret against a comparator :math:`u`.

    .. math:: \frac1T\sum_{t=1}^T\big[L(x_t,\theta_t) - L(x_t,u)\big]

    Both arguments ``(..., T)`` (broadcasting), time along the last dimension.
    """
    a = check_finite(as_float_tensor(traj_losses, "traj_losses"), "traj_losses")
    b = check_finite(as_float_tensor(comp_losses, "comp_losses"), "comp_losses")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"traj_losses and comp_losses must have the same T, got "
                         f"{a.shape[-1]} and {b.shape[-1]}")
    check_broadcast(traj_losses=a.shape, comp_losses=b.shape)
    return (a - b).mean(dim=-1)


# -- bounds -------------------------------------------------------------------------------

def _bound_inputs(dist, G, etas, dist_name: str):
    etas = _schedule(etas)
    dist = check_real(dist, dist_name, nonnegative=True)
    G = check_real(G, "G", nonnegative=True)
    t = torch.arange(1, etas.shape[-1] + 1, device=etas.device, dtype=etas.dtype)
    return dist, G, etas, t


def _pick(values: torch.Tensor, prefix: bool) -> torch.Tensor:
    return values if prefix else values[..., -1]


def _is_non_increasing(etas: torch.Tensor) -> bool:
    return bool((etas[..., 1:] <= etas[..., :-1]).all())


def average_loss_bound(diameter: float, G: float, etas, *, prefix: bool = False,
                       strict: bool = True) -> torch.Tensor:
    r"""The average-loss (regret) bound of projected SGD with non-increasing steps.

    .. math:: \frac{D^2}{2T\eta_T} + \frac{G^2}{2T}\sum_{t=1}^T\eta_t

    ``diameter`` is :math:`D` (of :math:`\Theta`), ``G`` bounds the gradient norms, ``etas``:
    ``(..., T)``. Returns ``(...)``, or ``(..., T)`` with the bound of every horizon
    :math:`1..T` when ``prefix=True``. The bound is proved only for non-increasing schedules;
    an increasing one raises ``ValueError`` unless ``strict=False``, which evaluates the
    formula anyway (to exhibit its failure; use :func:`average_loss_bound_any` instead).
    """
    D, G, etas, t = _bound_inputs(diameter, G, etas, "diameter")
    if strict and not _is_non_increasing(etas):
        raise ValueError("etas must be non-increasing for this bound (pass strict=False to "
                         "evaluate the formula anyway, or use average_loss_bound_any)")
    values = D**2 / (2 * t * etas) + G**2 * torch.cumsum(etas, dim=-1) / (2 * t)
    return _pick(values, prefix)


def average_loss_bound_any(diameter: float, G: float, etas, *,
                           prefix: bool = False) -> torch.Tensor:
    r"""The average-loss bound of projected SGD for an arbitrary positive schedule.

    .. math:: \frac{D^2}{2T}V_T + \frac{G^2}{2T}\sum_{t=1}^T\eta_t,\qquad
              V_T = \frac1{\eta_1} + \sum_{t=2}^T\Big(\frac1{\eta_t}-\frac1{\eta_{t-1}}\Big)_+

    :math:`V_T` is the upward variation of :math:`1/\eta`; it equals :math:`1/\eta_T` for a
    non-increasing schedule (then this is :func:`average_loss_bound`) and is at least
    :math:`\max_{t\le T}1/\eta_t` otherwise. Shapes as in :func:`average_loss_bound`.
    """
    D, G, etas, t = _bound_inputs(diameter, G, etas, "diameter")
    inv = 1.0 / etas
    rises = (inv[..., 1:] - inv[..., :-1]).clamp_min(0.0)
    V = inv[..., :1] + torch.cat([torch.zeros_like(inv[..., :1]),
                                  torch.cumsum(rises, dim=-1)], dim=-1)
    values = D**2 * V / (2 * t) + G**2 * torch.cumsum(etas, dim=-1) / (2 * t)
    return _pick(values, prefix)


def unbounded_average_bound(dist0: float, G: float, etas, *, prefix: bool = False,
                            strict: bool = True) -> torch.Tensor:
    r"""Bound on the average expected gap of plain SGD on :math:`\mathbb R^d`.

    .. math:: \frac1T\sum_{t=1}^T\mathbb E[L(\theta_t)-L^*] \le
              \frac{\|\theta_1-\theta^*\|^2}{2T\eta_T}
              + \frac{G^2}{2T}\sum_{t=1}^T\frac{\eta_t^2}{\eta_T}

    ``dist0`` is :math:`\|\theta_1-\theta^*\|`, ``G`` a *global* Lipschitz constant, ``etas``
    ``(..., T)`` non-increasing (``strict=False`` evaluates the formula for any schedule).
    Returns ``(...)``, or ``(..., T)`` for every horizon when ``prefix=True``.
    """
    R, G, etas, t = _bound_inputs(dist0, G, etas, "dist0")
    if strict and not _is_non_increasing(etas):
        raise ValueError("etas must be non-increasing for this bound (pass strict=False to "
                         "evaluate the formula anyway, or use weighted_average_bound)")
    values = R**2 / (2 * t * etas) + G**2 * torch.cumsum(etas**2, dim=-1) / (2 * t * etas)
    return _pick(values, prefix)


def weighted_average_bound(dist0: float, G: float, etas, *,
                           prefix: bool = False) -> torch.Tensor:
    r"""Bound on the :math:`\eta`-weighted average expected gap; any positive schedule.

    .. math:: \frac{\sum_t\eta_t\,\mathbb E[L(\theta_t)-L^*]}{\sum_t\eta_t} \le
              \frac{\|\theta_1-\theta^*\|^2}{2\sum_{t\le T}\eta_t}
              + \frac{G^2}{2}\,\frac{\sum_{t\le T}\eta_t^2}{\sum_{t\le T}\eta_t}

    Shapes as in :func:`unbounded_average_bound`.
    """
    R, G, etas, _ = _bound_inputs(dist0, G, etas, "dist0")
    s1, s2 = torch.cumsum(etas, dim=-1), torch.cumsum(etas**2, dim=-1)
    return _pick(R**2 / (2 * s1) + G**2 * s2 / (2 * s1), prefix)


# -- schedules and sums -------------------------------------------------------------------

#: The schedule kinds of :func:`lr_schedule`, with their formula (t = 1..T).
SCHEDULES = {
    "constant": r"\alpha",
    "inv_sqrt": r"\alpha/\sqrt t",
    "inv_sqrt_log": r"\alpha/\sqrt{t\max(1,\ln t)}",
    "inv": r"\alpha/t",
    "power": r"\alpha\,t^{-p}",
    "linear_decay": r"\alpha\,(T-t+1)/T",
    "linear_warmup": r"\alpha\,t/T",
}


def lr_schedule(kind: str, T: int, alpha: float = 1.0, *, p: float | None = None,
                dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    r"""The learning rates :math:`\eta_1,\dots,\eta_T` of a named schedule, shape ``(T,)``.

    Kinds (see :data:`SCHEDULES`): ``constant`` :math:`\alpha`; ``inv_sqrt``
    :math:`\alpha/\sqrt t`; ``inv_sqrt_log`` :math:`\alpha/\sqrt{t\max(1,\ln t)}` (the clamp
    keeps :math:`\eta_1` finite, since :math:`\ln 1 = 0`, and the schedule decreasing);
    ``inv`` :math:`\alpha/t`; ``power`` :math:`\alpha t^{-p}` (needs ``p``);
    ``linear_decay`` :math:`\alpha(T-t+1)/T` (ends at :math:`\alpha/T>0`);
    ``linear_warmup`` :math:`\alpha t/T` (increasing: it violates the monotonicity the
    average-loss bound needs). For a tuned constant rate pass e.g. ``alpha = D/(G*sqrt(T))``.
    A non-floating ``dtype`` raises ``TypeError`` (integer rates would truncate to 0).
    """
    check_choice(kind, "kind", list(SCHEDULES))
    T = check_int(T, "T", low=1)
    check_float_dtype(dtype)
    alpha = check_real(alpha, "alpha", positive=True)
    if (kind == "power") != (p is not None):
        raise ValueError("p is required for kind='power' and only for it")
    t = torch.arange(1, T + 1, dtype=dtype, device=device)
    if kind == "constant":
        return torch.full_like(t, alpha)
    if kind == "inv_sqrt":
        return alpha / t.sqrt()
    if kind == "inv_sqrt_log":
        return alpha / (t * t.log().clamp_min(1.0)).sqrt()
    if kind == "inv":
        return alpha / t
    if kind == "power":
        return alpha * t.pow(-check_real(p, "p"))
    if kind == "linear_decay":
        return alpha * (T - t + 1) / T
    return alpha * t / T


def power_sums(T: int, p: float, *, dtype: torch.dtype = torch.float64,
               device=None) -> torch.Tensor:
    r"""All partial sums :math:`S_n = \sum_{t=1}^n t^{-p}`, :math:`n = 1..T`, shape ``(T,)``.

    Summed term by term (float64 cumulative sum: relative error about :math:`10^{-13}` at
    :math:`T = 10^6`). :math:`p = 1/2` gives the sums bounded by :math:`2\sqrt n - 1`,
    :math:`p = 1` the harmonic numbers.
    """
    T = check_int(T, "T", low=1)
    p = check_real(p, "p")
    check_float_dtype(dtype)
    t = torch.arange(1, T + 1, dtype=dtype, device=device)
    return torch.cumsum(t.pow(-p), dim=-1)


def harmonic(n) -> torch.Tensor:
    r"""Harmonic numbers :math:`H_n = \sum_{t=1}^n 1/t = \psi(n+1) + \gamma` for real ``n >= 0``.

    Exact to rounding for any size through the digamma function :math:`\psi`
    (:math:`H_0 = 0`); below :math:`n = 1/4`, where :math:`\psi(n+1)+\gamma` cancels, through
    the series :math:`H_n = \sum_{k\ge2}(-1)^k\zeta(k)\,n^{k-1}` (40 terms). ``n`` is a number
    (computed in float64) or a floating tensor of any shape (its dtype is kept).
    """
    n = as_float_tensor(n, "n", min_ndim=0, dtype=None if isinstance(n, torch.Tensor)
                        else torch.float64)
    check_finite(n, "n")
    if (n < 0).any():
        raise ValueError("n must be >= 0")
    x = torch.where(n < 0.25, n, torch.zeros_like(n))
    acc = torch.zeros_like(x)
    for z in reversed(_ZETA):                  # Horner: zeta(2) - x (zeta(3) - x (...))
        acc = z - x * acc
    return torch.where(n < 0.25, x * acc, torch.special.digamma(n + 1) + EULER_GAMMA)


#: zeta(2), ..., zeta(41), the coefficients of harmonic's series at small n
_ZETA = torch.special.zeta(torch.arange(2.0, 42.0, dtype=torch.float64), 1.0).tolist()


def gaussian_abs_risk(theta) -> torch.Tensor:
    r"""Population risk of the separable absolute loss under standard Gaussian data.

    With :math:`L(x,\theta) = d^{-1/2}\sum_i|\theta_i - x_i|` and :math:`x\sim N(0, I_d)`,

    .. math:: L(\theta) = \mathbb E_x L(x,\theta)
              = d^{-1/2}\sum_{i=1}^d\big[\theta_i(2\Phi(\theta_i)-1) + 2\varphi(\theta_i)\big],

    minimised at :math:`\theta^* = 0` with :math:`L^* = \sqrt{2d/\pi}`. The loss is
    :math:`1`-Lipschitz in :math:`\theta` on all of :math:`\mathbb R^d`. ``theta``:
    ``(..., d)``; returns ``(...)``.
    """
    theta = _points(theta, "theta")
    phi = torch.exp(-0.5 * theta**2) / math.sqrt(2 * math.pi)
    per_coord = theta * (2 * torch.special.ndtr(theta) - 1) + 2 * phi
    return per_coord.sum(dim=-1) / math.sqrt(theta.shape[-1])
