r"""logsumexp, softmax and the entropies that bound them.

Chapter: *Inequalities for logsumexp* (``notebooks/01-logsumexp-inequalities.ipynb``).

Conventions for every function here: ``x`` and ``p`` are floating tensors reduced along
``dim`` (default ``-1``) and broadcast over the other dimensions; results keep the input's
device and dtype. Edge cases:

* ``+inf`` in ``x`` is a legitimate "certain" entry: ``logsumexp`` is ``+inf`` and ``softmax``
  puts equal mass on the ``+inf`` entries and zero elsewhere.
* ``-inf`` entries carry zero mass. A slice that is ``-inf`` everywhere has ``logsumexp = -inf``;
  ``softmax`` of it is undefined and raises ``ValueError``.
* NaN anywhere raises ``ValueError``; integer tensors raise ``TypeError``; empty slices raise
  ``ValueError``.
* Entropies use the convention :math:`0\log 0 = 0`.
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    as_float_tensor,
    check_dim,
    check_no_nan,
    check_probability,
    check_real,
    upcast_half,
)

__all__ = [
    "logsumexp",
    "softmax",
    "lse_bounds",
    "shannon_entropy",
    "renyi_entropy",
    "kl_divergence",
    "lse_lower_bound",
]

#: Within this distance of t from 1, :func:`renyi_entropy` sums :math:`p_i(p_i^{t-1}-1)` with
#: ``expm1`` instead of :math:`p_i^t`, whose sum is :math:`1-O(|t-1|)` and cancels (except in
#: slices where :math:`\sum_i p_i^t < 1/2`, which keep the plain sum).
RENYI_NEAR_ONE = 0.5


def _prepare(x, name: str, dim: int) -> torch.Tensor:
    x = as_float_tensor(x, name)
    check_dim(x, dim)
    if x.shape[dim] == 0:
        raise ValueError(f"{name} must not be empty along dim={dim}")
    check_no_nan(x, name)
    return x


def _shifted(x: torch.Tensor, tau: float, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``((x - m) / tau, m)`` in :func:`upcast_half` precision, ``m`` the slices' maxima (kept
    dim, no gradient: the maps are shift-invariant), or 0 where a slice's max is infinite;
    shifting first keeps ``x / tau`` from overflowing when ``tau`` is small."""
    x = upcast_half(x)
    m = x.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (x - m) / tau, m


def logsumexp(x, tau: float = 1.0, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    r"""Temperature logsumexp, a smooth maximum.

    .. math:: \operatorname{lse}_\tau(x) = \tau \log \sum_{i=1}^n e^{x_i/\tau}

    computed stably as :math:`m + \tau\log\sum_i e^{(x_i - m)/\tau}` with :math:`m=\max_i x_i`
    (subtracted before dividing by :math:`\tau`, float16/bfloat16 in float32), so it never
    overflows for any ``tau``, however small. ``tau`` must be a finite number > 0.
    """
    x = _prepare(x, "x", dim)
    tau = check_real(tau, "tau", positive=True)
    if tau == 1.0:
        return torch.logsumexp(x, dim=dim, keepdim=keepdim)
    z, m = _shifted(x, tau, dim)
    out = m + tau * torch.logsumexp(z, dim=dim, keepdim=True)
    return (out if keepdim else out.squeeze(dim)).to(x.dtype)


def softmax(x, tau: float = 1.0, dim: int = -1) -> torch.Tensor:
    r"""Softmax with temperature, the gradient of :func:`logsumexp`.

    .. math:: \operatorname{softmax}_\tau(x)_i = \frac{e^{x_i/\tau}}{\sum_j e^{x_j/\tau}}
              = \frac{\partial}{\partial x_i}\operatorname{lse}_\tau(x)

    Computed as :math:`\operatorname{softmax}((x - \max_i x_i)/\tau)` (float16/bfloat16 in
    float32), so no ``tau`` overflows it. A slice containing ``+inf`` returns the uniform
    distribution over its ``+inf`` entries (the limit of softmax as those logits grow
    together). A slice that is ``-inf`` everywhere raises ``ValueError``.
    """
    x = _prepare(x, "x", dim)
    tau = check_real(tau, "tau", positive=True)
    if torch.isneginf(x).all(dim=dim).any():
        raise ValueError(f"softmax is undefined for a slice of x that is -inf everywhere "
                         f"along dim={dim}")
    top = torch.isposinf(x)
    if not top.any():
        return torch.softmax(_shifted(x, tau, dim)[0], dim=dim).to(x.dtype)
    certain = top.any(dim=dim, keepdim=True)
    finite = torch.where(top, torch.zeros_like(x), x)
    finite_part = torch.softmax(_shifted(finite, tau, dim)[0], dim=dim).to(x.dtype)
    on_top = top.to(x.dtype) / top.sum(dim=dim, keepdim=True).clamp_min(1).to(x.dtype)
    return torch.where(certain, on_top, finite_part)


def lse_bounds(x, tau: float = 1.0, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The sandwich :math:`\max_i x_i \le \operatorname{lse}_\tau(x) \le \max_i x_i + \tau\log n`.

    Returns ``(lower, upper)``. The upper bound is attained iff all entries are equal; the
    lower one is strict for :math:`n \ge 2` in exact arithmetic, but in floating point
    ``lse == max`` once the other entries sit far enough below the maximum (about 37τ
    in float64, 17τ in float32).
    """
    x = _prepare(x, "x", dim)
    tau = check_real(tau, "tau", positive=True)
    m = x.amax(dim=dim)
    return m, m + tau * math.log(x.shape[dim])


def shannon_entropy(p, dim: int = -1) -> torch.Tensor:
    r"""Shannon entropy :math:`H(p) = -\sum_i p_i \log p_i` with :math:`0\log 0 = 0`."""
    p = check_probability(p, "p", dim=dim)
    return 0.0 - torch.special.xlogy(p, p).sum(dim=dim)  # 0.0 - : +0.0 for one-hot p


def renyi_entropy(p, t: float, dim: int = -1) -> torch.Tensor:
    r"""Rényi entropy of order :math:`t \in [0, \infty]`.

    .. math:: H_t(p) = \frac{1}{1-t}\log\sum_i p_i^t

    with its limits: :math:`H_1 = H` (Shannon), :math:`H_0 = \log|\{i : p_i>0\}|` and
    :math:`H_\infty = -\log\max_i p_i`. :math:`H_t` is non-increasing in :math:`t`. Near
    :math:`t=1` the sum :math:`\sum_i p_i^t = 1 - (t-1)H + \dots` cancels, so there the
    numerator is computed as
    :math:`\operatorname{log1p}\big(\sum_i p_i\,\operatorname{expm1}((t-1)\log p_i)\big)`,
    accurate to a few ulps in any dtype (the plain formula loses :math:`\epsilon/|t-1|`: 0.08
    nats in float32 at :math:`t = 1+2\cdot10^{-6}`), except in slices where
    :math:`\sum_i p_i^t < 1/2` (then :math:`t>1` and :math:`(t-1)H_t > \log 2`), where the
    plain :math:`\log\sum_i p_i^t` is the accurate one and is used. That sum is taken as
    :math:`t\log\max_i p_i + \log\sum_i (p_i/\max_j p_j)^t`, so it never underflows: large
    ``t`` (e.g. ``t = 1100`` for ``p = (1/2, 1/2)`` in float64) stays finite and tends to
    :math:`H_\infty`. A one-hot ``p`` gives ``+0.0`` for every order.
    """
    p = check_probability(p, "p", dim=dim)
    t = check_real(t, "t", nonnegative=True, finite=False)
    if math.isinf(t):
        return 0.0 - torch.log(p.amax(dim=dim))
    if t == 0:
        return torch.log((p > 0).sum(dim=dim).to(p.dtype))
    if t == 1.0:
        return 0.0 - torch.special.xlogy(p, p).sum(dim=dim)
    if abs(t - 1.0) <= RENYI_NEAR_ONE:  # p_i^(t-1) <= p_i^(-1/2): expm1 cannot overflow
        log_p = torch.log(torch.where(p > 0, p, 1.0))  # p_i = 0 contributes 0 (and no NaN grad)
        excess = (p * torch.expm1((t - 1.0) * log_p)).sum(dim=dim)  # = sum p^t - 1, no cancel
        # that is sum p^t - sum_{p>0} p, whose gradient is t p^(t-1) - 1 on the support and 0
        # off it: add the support's sum minus itself (0 in value) to restore the gradient of
        # sum p^t, or a step moving mass onto a zero entry is off (0.20 for 3.49 at t = 1.5)
        support = torch.where(p > 0, p, 0.0).sum(dim=dim)
        excess = excess + (support - support.detach())
        numerator = torch.log1p(excess)
        # log1p(s) carries the error eps*|s|/(1+s), the plain log(sum p^t) eps: for t > 1 and a
        # sum p^t below 1/2 (high entropy, e.g. t = 1.5 and n = 1e6) the plain sum is better
        # (float32: 1e-5 relative error in H_t instead of 3e-8)
        far = excess < -0.5
        if t > 1.0 and bool(far.any()):
            numerator = torch.where(far, _log_power_sum(p, t, dim), numerator)
        return numerator / (1.0 - t) + 0.0  # + 0.0: a one-hot p gives +0.0, not -0.0
    return _log_power_sum(p, t, dim) / (1.0 - t) + 0.0


def _log_power_sum(p: torch.Tensor, t: float, dim: int) -> torch.Tensor:
    r""":math:`\log\sum_i p_i^t = t\log m + \log\sum_i (p_i/m)^t`, :math:`m = \max_i p_i`: the
    second sum lies in :math:`[1, n]`, so it neither underflows for large ``t`` nor overflows.
    In float64, cast back: in float32, :math:`t\log m` would carry :math:`t\epsilon|\log m|`."""
    q = p.to(torch.float64)
    m = q.amax(dim=dim, keepdim=True)  # > 0: p sums to 1
    out = t * torch.log(m.squeeze(dim)) + torch.log(torch.pow(q / m, t).sum(dim=dim))
    return out.to(p.dtype)


def kl_divergence(p, q, dim: int = -1) -> torch.Tensor:
    r"""Kullback–Leibler divergence :math:`\mathrm{KL}(p\|q) = \sum_i p_i\log(p_i/q_i)`.

    Terms with :math:`p_i = 0` are 0; a term with :math:`p_i > 0 = q_i` makes it ``+inf``.
    """
    p = check_probability(p, "p", dim=dim)
    q = check_probability(q, "q", dim=dim)
    if p.shape[dim] != q.shape[dim]:
        raise ValueError(f"p and q must have the same length along dim={dim}, got "
                         f"{p.shape[dim]} and {q.shape[dim]}")
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(dim=dim)


def lse_lower_bound(x, p, t: float = 1.0, dim: int = -1) -> torch.Tensor:
    r"""The Hölder–Rényi lower bound on logsumexp.

    .. math:: \operatorname{lse}(x) \ \ge\ \sum_i p_i x_i + H_t(p)
              \qquad (p \in \Delta^{n-1},\ t \ge 1)

    ``t = 2`` is the Cauchy–Schwarz bound :math:`\sum p_i x_i - \log\sum p_i^2`; uniform ``p``
    gives the mean bound :math:`\bar x + \log n`; ``t = 1`` (Shannon) is the tightest member
    and is attained at :math:`p = \operatorname{softmax}(x)`. Terms with :math:`p_i = 0`
    contribute 0 to the mean even where :math:`x_i = -\infty`.
    """
    x = _prepare(x, "x", dim)
    t = check_real(t, "t", low=1.0, finite=False)
    p = check_probability(p, "p", dim=dim)
    if p.shape[dim] != x.shape[dim]:
        raise ValueError(f"p must have the same length as x along dim={dim}, got "
                         f"{p.shape[dim]} and {x.shape[dim]}")
    mean = torch.where(p > 0, p * x, torch.zeros((), dtype=x.dtype, device=x.device))
    return mean.sum(dim=dim) + renyi_entropy(p, t, dim=dim)
