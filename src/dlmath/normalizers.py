r"""Maps from logits to probability vectors: softmax and its alternatives.

Chapter: *Softmax and its alternatives* (``notebooks/05-softmax-alternatives.ipynb``), which
derives every map below, its Jacobian and its loss.

Conventions. Logits ``x`` are floating tensors normalised along ``dim`` (default ``-1``) and
batched over the other dimensions; outputs keep the input's device and dtype. Targets are
integer tensors of shape ``x.shape`` without ``dim``. Losses are returned per example (no
reduction). Jacobians are ``(..., n, n)`` matrices and work on the last dimension.

The sparse maps share one form, with :math:`\beta = \alpha - 1 > 0`,

.. math:: \operatorname{entmax}_\alpha(x)_i = \big[\beta x_i - \lambda(x)\big]_+^{1/\beta},
          \qquad \textstyle\sum_i \operatorname{entmax}_\alpha(x)_i = 1,

(:math:`\alpha = 2` is sparsemax, :math:`\alpha \to 1` softmax), and the threshold
:math:`\lambda` is found by one of three solvers, chosen with ``method``: ``"newton"`` (the
default on a CPU; sort-free: Newton from the
left on the convex, decreasing :math:`\phi(\lambda) = \|[\beta x - \lambda]_+\|_{1/\beta} - 1`,
which is Michelot's iteration at :math:`\alpha = 2`, with an exact closed-form finish on the
support for :math:`\alpha \in \{1.5, 2\}`; long rows start from the threshold of their group
maxima, a lower bound, and for other :math:`\alpha` are solved on their candidates only),
``"sort"`` (exact, :math:`O(n\log n)`; the default on a CUDA device, where these calls are
bound by kernel launches and a sort takes fewer) or ``"bisect"`` (any :math:`\alpha>1`, fixed
iteration count: :func:`entmax_bisect`; the default for :math:`\alpha > 2`). The default
``method="auto"`` makes that choice. float16/bfloat16 logits are computed in float32 and the result
cast back, so large half-precision logits never give NaN.
Their backward passes are hand-derived: with :math:`s_i = p_i^{2-\alpha}` on the support and 0
off it, :math:`J = \operatorname{diag}(s) - s s^\top / \sum_i s_i`.

Edge cases, shared by every map (and consistent with :func:`dlmath.lse.softmax`):

* ``+inf`` logits are "certain" classes: a slice containing ``+inf`` returns the uniform
  distribution over its ``+inf`` entries (the limit as those logits grow together). For Taylor
  softmax, whose weights are even polynomials, ``-inf`` is just as certain as ``+inf``.
* ``-inf`` logits carry zero mass (except in Taylor softmax); a slice that is ``-inf``
  everywhere raises ``ValueError``.
* Ties are fine everywhere; top-k keeps the lower index among tied logits at its boundary.
* NaN raises ``ValueError``, integer dtypes ``TypeError``, empty slices ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import (
    HALF_DTYPES,
    as_float_tensor,
    check_choice,
    check_dim,
    check_finite,
    check_int,
    check_no_nan,
    check_probability,
    check_real,
    promote,
    work_dtype,
)
from .lse import softmax

__all__ = [
    "softmax",
    "softmax_jacobian",
    "taylor_softmax",
    "topk_softmax",
    "topk_softmax_loss",
    "perturb_max",
    "sparsemax",
    "sparsemax_threshold",
    "sparsemax_jacobian",
    "sparsemax_loss",
    "entmax15",
    "entmax15_threshold",
    "entmax",
    "ENTMAX_METHODS",
    "entmax_bisect",
    "entmax_bisect_threshold",
    "entmax_jacobian",
    "entmax_loss",
    "tsallis_entropy",
    "am_softmax_loss",
    "stop_gradient_loss",
]


# ----------------------------------------------------------------------------- validation


def _logits(x, dim: int, name: str = "x", light: bool = False) -> torch.Tensor:
    """Validate logits and move ``dim`` last; ``light`` leaves the NaN and all--inf checks to
    the caller (the sort-free solver does them on the row maxima)."""
    x = as_float_tensor(x, name)
    dim = check_dim(x, dim)
    if x.shape[dim] == 0:
        raise ValueError(f"{name} must not be empty along dim={dim}")
    x = x.movedim(dim, -1)
    return x if light else _check_slices(x, dim, name)


def _check_slices(x: torch.Tensor, dim: int, name: str = "x") -> torch.Tensor:
    """The checks ``light`` leaves out (``x`` with the normalised dim last): no NaN, and no
    slice that is -inf everywhere."""
    check_no_nan(x, name)
    if torch.isneginf(x).all(dim=-1).any():
        raise ValueError(f"{name} has a slice that is -inf everywhere along dim={dim}; "
                         "no probability vector has those logits")
    return x


def _target(target, x: torch.Tensor) -> torch.Tensor:
    """Validate class indices for logits ``x`` (normalised dim last); returns a long tensor."""
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"target must have shape {tuple(x.shape[:-1])} (the logits' shape "
                         f"without the class dimension), got {tuple(target.shape)}")
    n = x.shape[-1]
    if target.numel() and (target.min() < 0 or target.max() >= n):
        raise ValueError(f"target must lie in [0, {n - 1}], got values in "
                         f"[{int(target.min())}, {int(target.max())}]")
    return target.to(device=x.device, dtype=torch.long)


def _alpha(alpha, *, allow_one: bool = False) -> float:
    alpha = check_real(alpha, "alpha")
    if alpha < 1 or (alpha == 1 and not allow_one):
        raise ValueError(f"alpha must be > 1 (alpha = 1 is softmax), got {alpha}")
    return alpha


def _uniform_on(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return mask.to(dtype) / mask.sum(dim=-1, keepdim=True).clamp_min(1).to(dtype)


def _onehot(target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(target, x.shape[-1]).to(x.dtype)


# ----------------------------------------------------------------------------- softmax


def softmax_jacobian(x, tau: float = 1.0) -> torch.Tensor:
    r"""Jacobian of :math:`p = \operatorname{softmax}(x/\tau)` along the last dimension.

    .. math:: \frac{\partial p_i}{\partial x_j} = \frac{1}{\tau}\big(p_i\delta_{ij} - p_i p_j\big),
              \qquad J = \tfrac{1}{\tau}\big(\operatorname{diag}(p) - p p^\top\big),

    symmetric, with :math:`J\mathbf 1 = 0` (shift invariance). Shape ``(..., n)`` to
    ``(..., n, n)``.
    """
    tau = check_real(tau, "tau", positive=True)
    p = softmax(x, tau=tau, dim=-1)
    return (torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)) / tau


# ----------------------------------------------------------------------------- Taylor softmax


def taylor_softmax(x, k: int = 2, dim: int = -1) -> torch.Tensor:
    r"""Taylor softmax of even order :math:`k`.

    .. math:: p_i = \frac{f_k(x_i)}{\sum_j f_k(x_j)},\qquad f_k(t) = \sum_{m=0}^{k}\frac{t^m}{m!},

    well defined because :math:`f_k > 0` for even :math:`k` (odd orders are refused: they go
    negative). It is **neither monotone nor shift-invariant**: :math:`f_k` decreases left of
    its minimum, so ``x = (-3, -1, 0)`` gives ``p = (0.625, 0.125, 0.25)`` for ``k = 2``.
    The weights are :func:`dlmath.series.exp_taylor`, evaluated here as
    :math:`f_k(x_i)/s^k` with :math:`s = \max(1, \max_j|x_j|)` so it never overflows.
    Infinite logits of either sign are certain (both :math:`f_k(\pm\infty) = +\infty`).
    float16/bfloat16 logits are computed in float32; ``k`` must keep :math:`1/k!` a normal
    number of that dtype (``k <= 32`` in float32, ``k <= 170`` in float64), or the weights
    could all underflow to 0.
    """
    x = _logits(x, dim)
    k = check_int(k, "k", low=2)
    if k % 2:
        raise ValueError(f"k must be even (odd-order Taylor polynomials of exp take negative "
                         f"values), got {k}")
    if x.dtype in HALF_DTYPES:  # half logits: compute in float32
        return taylor_softmax(x.float(), k, -1).to(x.dtype).movedim(-1, dim)
    if math.lgamma(k + 1) > -math.log(torch.finfo(x.dtype).tiny):
        raise ValueError(f"k = {k} is too large for {x.dtype}: 1/k! underflows; use k <= "
                         f"{_max_taylor_order(x.dtype)} or a wider dtype")
    inf = torch.isinf(x)
    xf = torch.where(inf, torch.zeros_like(x), x)
    s = xf.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    y = xf / s
    w = torch.zeros_like(x)
    for m in range(k, -1, -1):  # sum_m y^m s^(m-k) / m!  (= f_k(x) / s^k), by Horner in y
        w = w * y + s ** (m - k) * math.exp(-math.lgamma(m + 1))
    p = w / w.sum(dim=-1, keepdim=True)
    p = torch.where(inf.any(dim=-1, keepdim=True), _uniform_on(inf, x.dtype), p)
    return p.movedim(-1, dim)


def _max_taylor_order(dtype: torch.dtype) -> int:
    """The largest even k with 1/k! a normal number of ``dtype``."""
    k = 2
    while math.lgamma(k + 3) <= -math.log(torch.finfo(dtype).tiny):
        k += 2
    return k


# ----------------------------------------------------------------------------- top-k softmax


def _topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest entries of each slice; ties broken towards the lower index."""
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(x, dtype=torch.bool).scatter(-1, order, True)


def _check_k(k, n: int) -> int:
    return check_int(k, "k", low=1, high=n)


def topk_softmax(x, k: int, dim: int = -1) -> torch.Tensor:
    r"""Sparse (top-k) softmax: softmax restricted to the :math:`k` largest logits.

    .. math:: p_i = \frac{e^{x_i}}{\sum_{j\in\Omega_k} e^{x_j}}\ (i\in\Omega_k),\qquad
              p_i = 0\ (i\notin\Omega_k),

    where :math:`\Omega_k` holds the indices of the :math:`k` largest logits (ties at the
    boundary broken towards the lower index). ``1 <= k <= n``; ``k = n`` is softmax.
    """
    x = _logits(x, dim)
    k = _check_k(k, x.shape[-1])
    kept = torch.where(_topk_mask(x, k), x, torch.full_like(x, -math.inf))
    return softmax(kept, dim=-1).movedim(-1, dim)


def topk_softmax_loss(x, target, k: int, dim: int = -1) -> torch.Tensor:
    r"""Loss of top-k softmax, :math:`\mathcal L_t = \log\sum_{i\in\Omega_k} e^{x_i} - x_t`.

    When :math:`t\in\Omega_k` this is :math:`-\log p_t`; when :math:`t\notin\Omega_k` the
    formula still applies and pushes :math:`x_t` up. Its gradient is
    :math:`\operatorname{topk\_softmax}(x) - e_t`, so logits outside :math:`\Omega_k`, other
    than the target, receive no gradient. Slices with ``+inf`` logits take the formula's limit
    as those logits grow together: :math:`\log c`, :math:`c` the number of ``+inf`` logits in
    :math:`\Omega_k`, when the target's logit is ``+inf`` (in :math:`\Omega_k` or left out
    by the tie-break, as for finite ties), ``+inf`` otherwise; no gradient flows through them.
    """
    x = _logits(x, dim)
    t = _target(target, x)
    k = _check_k(k, x.shape[-1])
    mask = _topk_mask(x, k)
    certain = torch.isposinf(x).any(dim=-1)
    xs = torch.where(certain.unsqueeze(-1), torch.zeros_like(x), x)  # keep the finite branch finite
    kept = torch.where(mask, xs, torch.full_like(xs, -math.inf))
    finite = torch.logsumexp(kept, dim=-1) - xs.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    if not certain.any():
        return finite
    pos = torch.isposinf(x)
    c = (pos & mask).sum(dim=-1).to(x.dtype)  # >= 1 where the target's logit is +inf
    sure = torch.where(pos.gather(-1, t.unsqueeze(-1)).squeeze(-1), c.log(), math.inf)
    return torch.where(certain, sure, finite)


# ----------------------------------------------------------------------------- Perturb Max

_NOISES = ("gumbel", "normal")


def perturb_max(x, noise: str = "gumbel", n_grid: int = 20_000, dim: int = -1) -> torch.Tensor:
    r"""Perturb Max: the probability that :math:`i` wins :math:`\arg\max_j (x_j + \varepsilon_j)`.

    .. math:: p_i = \Pr\big[\arg\max_j (x_j+\varepsilon_j) = i\big]
              = \mathbb E_{\varepsilon}\Big[\prod_{j\ne i}\Phi(x_i - x_j + \varepsilon)\Big]

    for i.i.d. noise with cdf :math:`\Phi` (``"gumbel"``: :math:`\Phi(e)=\exp(-e^{-e})`, which
    gives exactly softmax; ``"normal"``: standard normal). The expectation is a deterministic
    quadrature on the inverse-cdf grid :math:`\varepsilon_k = \Phi^{-1}((k+\tfrac12)/N)`,
    :math:`k<N=` ``n_grid``, evaluated in log space; the result is renormalised to sum to 1.
    Accuracy: an absolute error of order :math:`1/N` per entry (measured in float64 below
    :math:`0.4/N` for up to 10 classes, against softmax and the two-class probit). The grid
    reaches noise only up to :math:`\Phi^{-1}(1-\tfrac1{2N})`, so probabilities below about
    :math:`1/N` are not resolved: ``x = [0, 15]`` (Gumbel, :math:`N = 20000`) gives
    :math:`p_0 \approx 10^{-40}`, softmax :math:`3\cdot10^{-7}`.
    Cost :math:`O(n^2 N)` per slice (chunked over the grid). float16/bfloat16 logits are
    computed in float32 and the result cast back.
    """
    x = _logits(x, dim)
    check_choice(noise, "noise", _NOISES)
    n_grid = check_int(n_grid, "n_grid", low=1)
    if x.dtype in HALF_DTYPES:  # the normal cdf has no half-precision kernels
        return perturb_max(x.float().movedim(-1, dim), noise, n_grid, dim).to(x.dtype)
    pos = torch.isposinf(x)
    xf = torch.where(pos, torch.zeros_like(x), x)
    u = (torch.arange(n_grid, device=x.device, dtype=torch.float64) + 0.5) / n_grid
    if noise == "gumbel":
        eps = -torch.log(-torch.log(u))

        def log_cdf(e):
            return -torch.exp(-e)
    else:
        eps = torch.special.ndtri(u)
        log_cdf = torch.special.log_ndtr
    eps = eps.to(x.dtype)
    d = xf.unsqueeze(-1) - xf.unsqueeze(-2)  # d_ij = x_i - x_j
    d = torch.where(torch.isnan(d), torch.full_like(d, -math.inf), d)  # both -inf: i never wins
    chunk = max(1, 2**22 // max(1, d.numel()))
    total = torch.zeros_like(x)
    for start in range(0, n_grid, chunk):
        e = eps[start:start + chunk]
        logs = log_cdf(d.unsqueeze(-1) + e).sum(dim=-2) - log_cdf(e)  # (..., n, c): j != i
        total = total + torch.exp(logs).sum(dim=-1)
    p = total / total.sum(dim=-1, keepdim=True)
    p = torch.where(pos.any(dim=-1, keepdim=True), _uniform_on(pos, x.dtype), p)
    return p.movedim(-1, dim)


# ----------------------------------------------------------------------------- entmax family


def _standardize(x: torch.Tensor, beta: float):
    """Shift so that max = 0 and move -inf just below any possible support.

    Returns ``(z, shift, certain_mask)`` with ``x = z + shift`` on the finite entries. The
    threshold satisfies ``lambda >= -1`` in units of ``beta * z``, so ``z <= -1/beta``
    is outside the support: -inf entries become ``-1/beta - 1``.
    """
    pos = torch.isposinf(x)
    z = torch.where(pos, torch.zeros_like(x), x)
    shift = z.amax(dim=-1, keepdim=True)
    z = z - shift
    z = torch.where(torch.isneginf(z), torch.full_like(z, -1.0 / beta - 1.0), z)
    return z, shift, pos


def _sort_threshold(w: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""Exact threshold for alpha in {1.5, 2} by sorting ``w = beta * z`` (max w = 0).

    Candidate thresholds assume the support is the top k: alpha = 2 gives
    lambda_k = (S_k - 1)/k; alpha = 1.5 gives lambda_k = mu_k - sqrt(1/k - sigma_k^2), the
    smaller root of sum_(i <= k) (w_(i) - lambda)^2 = 1. The k with w_(k) >= lambda_k form a
    prefix, the support, and lambda_k rises along it (adding a term moves the root right), so
    the threshold is the largest of those lambda_k. For alpha = 2 it is the largest of all:
    lambda_k - lambda_(k-1) = (w_(k) - lambda_(k-1))/k, so lambda_k falls after the support.
    Written in as few kernels as it takes (on a GPU each costs about the same at these sizes).
    For alpha = 1.5 the running sums are taken in float64 and the threshold cast back: the
    discriminant 1 - S2_k + S_k mu_k cancels to about k * eps * S2_k, which in float32 moved
    the threshold by 2e-5 (sum p off by 3e-3) for 32000 entries 1.8 below the max.
    """
    ws = torch.sort(w, dim=-1, descending=True).values
    if alpha == 2.0:
        k = torch.arange(1, w.shape[-1] + 1, device=w.device, dtype=w.dtype)
        return ws.cumsum(dim=-1).sub_(1).div_(k).amax(dim=-1, keepdim=True)
    ws = ws.to(torch.float64)  # two more ops (this cast and the one back) for exactness
    k = torch.arange(1, w.shape[-1] + 1, device=w.device, dtype=ws.dtype)
    cs = ws.cumsum(dim=-1)
    mean = cs / k
    # k (1/k - sigma_k^2) = 1 - S2_k + S_k mu_k
    disc = torch.addcmul(torch.rsub(ws.square().cumsum_(dim=-1), 1), cs, mean)
    lam = mean.sub_(disc.clamp_min_(0).div_(k).sqrt_())
    # (past the support S2_k can overflow, and lambda_k be NaN: "ws >= lam" is False there)
    return torch.where(ws >= lam, lam, -math.inf).amax(dim=-1, keepdim=True).to(w.dtype)


def _default_iters(dtype: torch.dtype) -> int:
    return round(-math.log2(torch.finfo(dtype).eps)) + 3


#: The threshold solvers of the entmax family; ``"auto"`` picks one by device (see
#: :func:`entmax`).
ENTMAX_METHODS = ("auto", "newton", "sort", "bisect")


# Sort-free solver, in units of z = x - max x: entmax_alpha(x)_i = [beta (z_i - tau)]_+^{1/beta}
# with sum_i [z_i - tau]_+^{1/beta} = beta^{-1/beta} (= 1 for alpha = 2, 4 for alpha = 1.5).
# Tuning constants (measured on a 2-core CPU, see benchmarks/bench_normalizers.py):
_GROUP = 32  # warm start: maxima of strided groups of this many entries
_WARM_MIN = 512  # ... for rows at least this long
_WARM_STEPS = 4  # Newton steps on the group maxima (no synchronisation)
_COMPACT_MIN = 1024  # general alpha: solve on the candidates only for rows this long
_PACK_MAX = 4096  # ... packed by a prefix count below this length, by top-K from it


def _ipow(u: torch.Tensor, e: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``u ** e`` for ``u >= 0``; an integer ``2 <= e <= 8`` by in-place products into ``out``
    (``pow`` with a non-special exponent is several times slower)."""
    if not (float(e).is_integer() and 2 <= e <= 8):
        return torch.pow(u, e, out=out)
    n = int(e)
    if n == 2 or n == 3:
        out = torch.mul(u, u, out=out)
        return out.mul_(u) if n == 3 else out
    out = _ipow(u, n // 2, out).square_()
    return out.mul_(u) if n % 2 else out


def _left_step(z: torch.Tensor, tau: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""One Newton step from the left on :math:`\phi(\tau) = \beta\|[z-\tau]_+\|_{1/\beta} - 1`
    (Michelot's step for alpha = 2). ``phi`` is convex and decreasing (a norm of a convex,
    nonnegative map), so from the left the step never overshoots the root."""
    beta = alpha - 1
    if alpha == 2.0:
        m = torch.gt(z, tau).to(z.dtype)
        k = m.sum(dim=-1, keepdim=True)
        return torch.maximum((m.mul_(z).sum(dim=-1, keepdim=True) - 1) / k, tau)
    u = (z - tau).relu_()
    if alpha == 1.5:
        r = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        return tau + (r * (r - 2) / u.sum(dim=-1, keepdim=True)).clamp_min(0)
    v = _ipow(u, 1 / beta - 1)
    d = v.sum(dim=-1, keepdim=True)
    g = (v * u).sum(dim=-1, keepdim=True)
    return tau + ((g - g.pow(1 - beta) / beta) / d).clamp_min(0)


def _row_max(x: torch.Tensor):
    """``(top, m)``: the row maxima, and for long rows the maxima ``m`` of strided groups of
    ``_GROUP`` entries (plus the leftover tail), from which the row maxima come cheaply."""
    n = x.shape[-1]
    if n < _WARM_MIN:
        return x.amax(dim=-1, keepdim=True), None
    c = n // _GROUP
    m = x[..., : _GROUP * c].unflatten(-1, (_GROUP, c)).amax(dim=-2)
    if _GROUP * c < n:
        m = torch.cat([m, x[..., _GROUP * c:]], dim=-1)
    return m.amax(dim=-1, keepdim=True), m


def _warm_start(top: torch.Tensor, m, alpha: float) -> torch.Tensor:
    r"""A lower bound of the threshold, in units of ``z = x - top``.

    :math:`\tau_0 = -1/\beta` (:math:`\lambda_0 = \max - 1`), where the top entry alone
    makes g reach its target; for long rows, a few Newton steps from there on the group maxima
    ``m`` (a subset T of the entries: :math:`g_T \le g`, so its root, and every left Newton
    iterate towards it, stays below the true threshold). No synchronisation.
    """
    tau = torch.full_like(top, -1 / (alpha - 1))
    if m is not None:
        m = (m - top).clamp_min_(-1 / (alpha - 1) - 1)  # -inf -> below any support
        for _ in range(_WARM_STEPS):
            tau = _left_step(m, tau, alpha)
    return tau


def _solve(z: torch.Tensor, tau: torch.Tensor, alpha: float, max_iter: int = 200):
    r"""``(p, tau)`` from ``z = x - max`` (max 0, ``-inf`` allowed; overwritten) and a lower bound
    ``tau``.

    alpha = 2: Michelot's iteration :math:`\tau \leftarrow (\sum_S z - 1)/|S|`, exact once the
    support S repeats. alpha = 1.5: the closed-form root on the current support,
    :math:`\tau = \bar z_S - \sqrt{4/|S| - \sigma_S^2}`, which is exact if the support holds
    there and lies right of the root otherwise (then one Newton step from the right lands left
    of it, by convexity). Other alpha: Newton on :math:`\phi` until its step is below rounding.
    """
    buf = torch.empty_like(z)
    if alpha == 2.0:
        z = z.clamp_min_(-2.0)  # (z is ours) -inf -> -2, below any support: 0 * z stays finite
        k_prev = None
        for _ in range(max_iter):
            m = torch.gt(z, tau, out=buf)
            k = m.sum(dim=-1, keepdim=True)
            if k_prev is not None and torch.equal(k, k_prev):
                break
            tau = torch.maximum((m.mul_(z).sum(dim=-1, keepdim=True) - 1) / k, tau)
            k_prev = k
        return torch.sub(z, tau, out=buf).relu_(), tau
    if alpha == 1.5:
        k_prev, closed = None, False
        mask = torch.empty_like(z)
        for _ in range(max_iter):
            u = torch.sub(z, tau, out=buf).relu_()
            k = torch.gt(u, 0, out=mask).sum(dim=-1, keepdim=True)
            if closed and torch.equal(k, k_prev):
                break  # the support held at the closed-form root: exact
            s1 = u.sum(dim=-1, keepdim=True)
            r = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
            if closed:  # it overshot: Newton from the right lands left of the root
                tau, closed = tau + r * (r - 2) / s1, False
            else:  # sum_S (u_i - t)^2 = 4, smaller root, in the cancellation-free form
                s2 = r * r
                disc = (s1 * s1 - k * (s2 - 4)).clamp_min(0)
                tau, closed = tau + ((s2 - 4) / (s1 + disc.sqrt())).clamp_min(0), True
            k_prev = k
        return u.mul_(0.5).square_(), tau
    beta = alpha - 1
    tiny = 4 * torch.finfo(z.dtype).eps
    pw = torch.empty_like(z)
    for _ in range(max_iter):
        u = torch.sub(z, tau, out=buf).relu_()
        v = _ipow(u, 1 / beta - 1, out=pw)
        d = v.sum(dim=-1, keepdim=True)
        v.mul_(u)  # u^(1/beta)
        g = v.sum(dim=-1, keepdim=True)
        step = ((g - g.pow(1 - beta) / beta) / d).clamp_min(0)
        if bool((step <= tiny * (1 + tau.abs())).all()):
            break
        tau = tau + step
    # the threshold moves by `step` (below rounding): entries at or below it are exact zeros
    v.mul_(torch.gt(u, step, out=buf))
    return v.div_(v.sum(dim=-1, keepdim=True)), tau + step


def _candidates(z: torch.Tensor, tau: torch.Tensor, floor: float):
    """``(values, unpack)``: the entries of each row above ``tau``, packed into K columns (K the
    most any row has; shorter rows padded with ``floor``), and the map that puts a result on
    them back in place (zeros elsewhere); None when K > n/8, where packing does not pay.

    Rows shorter than :data:`_PACK_MAX` are packed in order by a prefix count of the mask (each
    entry's column; a spare column takes the rest); longer rows by ``topk``, whose cost per row
    is then amortised (measured on a 2-core CPU: 2.5x faster than ``topk`` at 256 rows of 1024,
    3-6x slower at 8-64 rows of 4096-32768).
    """
    n = z.shape[-1]
    above = torch.gt(z, tau, out=torch.empty_like(z))  # 0/1 in z's dtype: sums 4x faster
    size = int(above.sum(dim=-1).max())
    if 8 * size > n:
        return None
    if n >= _PACK_MAX:
        vals, idx = torch.topk(z, size, dim=-1, sorted=False)
        return vals, lambda p: torch.zeros_like(z).scatter_(-1, idx, p)
    column = above.cumsum(dim=-1).sub_(1).masked_fill_(above == 0, size).long()  # n < 2^24: exact
    packed = torch.full((*z.shape[:-1], size + 1), floor, dtype=z.dtype, device=z.device)
    packed.scatter_(-1, column, z)
    return packed[..., :size], lambda p: torch.cat([p, torch.zeros_like(p[..., :1])],
                                                   dim=-1).gather(-1, column)


def _fast_parts(x: torch.Tensor, alpha: float, method: str, threshold: bool = True):
    """(p, lambda) by ``"newton"`` or ``"sort"`` (lambda None unless ``threshold``), validating
    through the row maxima (one synchronisation, where the general path needs three), then
    working on ``z = x - max``.

    ``"newton"``: warm start, then :func:`_solve` on the shifted row, or on its candidates
    only (general alpha, long sparse rows, where each ``pow`` pass over the full row would cost
    more than packing). ``"sort"`` (alpha in {1.5, 2}): :func:`_sort_threshold`, in as few
    kernels as it takes (on a GPU at these sizes each one costs about the same)."""
    if x.numel() == 0:
        return _entmax_parts(x, alpha, method, None)
    if x.dtype in HALF_DTYPES:  # half logits: solve in float32
        p, lam = _fast_parts(x.float(), alpha, method, threshold)
        return p.to(x.dtype), None if lam is None else lam.to(x.dtype)
    if method == "newton":
        top, m = _row_max(x)  # NaN propagates into the max
    else:
        top, m = x.amax(dim=-1, keepdim=True), None
    if not math.isfinite(top.sum()):  # one synchronisation; a sum that overflows costs a detour
        if torch.isnan(top).any():
            check_no_nan(x, "x")
        if torch.isneginf(top).any():
            raise ValueError("x has a slice that is -inf everywhere; no probability vector "
                             "has those logits")
        return _entmax_parts(x, alpha, method, None)  # +inf logits (or a sum that overflowed)
    beta = alpha - 1
    z = x - top  # shift first: exact for huge logits
    if method == "sort":
        # -inf entries need no care here: past the finite entries lambda_k is -inf (alpha = 2)
        # or NaN (alpha = 1.5), which neither the maximum nor the mask of _sort_threshold takes
        w = z if alpha == 2.0 else z.mul_(beta)
        lam = _sort_threshold(w, alpha)
        p = w.sub_(lam).clamp_min_(0)
        p = p if alpha == 2.0 else p.square_()
        return p, torch.add(lam, top, alpha=beta).squeeze(-1) if threshold else None
    n = x.shape[-1]
    tau = _warm_start(top, m, alpha)
    if alpha not in (1.5, 2.0) and n >= _COMPACT_MIN:
        # general alpha on long rows: pow is costly, so solve on the entries above the lower
        # bound only (the rest are exact zeros), when they are few
        packed = _candidates(z, tau, -1 / beta - 1)
        if packed is not None:
            vals, unpack = packed
            pc, tau = _solve(vals, tau, alpha)
            return unpack(pc), (beta * (tau + top)).squeeze(-1) if threshold else None
    p, tau = _solve(z, tau, alpha)
    return p, (beta * (tau + top)).squeeze(-1) if threshold else None


def _bisect_threshold(w: torch.Tensor, beta: float, n_iter: int) -> torch.Tensor:
    r"""Threshold by bisection on ``[-1, -n^{-beta}]`` (``w = beta * z``, max w = 0).

    g(lam) = sum_i [w_i - lam]_+^{1/beta} is decreasing, g(-1) >= 1 (the top entry alone
    gives 1) and g(-n^{-beta}) <= n * (1/n) = 1; a fixed number of halvings, no branches.
    """
    n = w.shape[-1]
    lo = torch.full_like(w[..., :1], -1.0)
    hi = torch.full_like(w[..., :1], -float(n) ** (-beta))
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        big = (w - mid).clamp_min(0).pow(1 / beta).sum(dim=-1, keepdim=True) >= 1
        lo = torch.where(big, mid, lo)
        hi = torch.where(big, hi, mid)
    return (lo + hi) / 2


def _entmax_parts(x: torch.Tensor, alpha: float, method: str, n_iter: int | None):
    """(p, lambda) for logits ``x`` with the normalised dim last; lambda in x's units."""
    if x.dtype in HALF_DTYPES:  # half logits: solve in float32
        p, lam = _entmax_parts(x.float(), alpha, method, n_iter)
        return p.to(x.dtype), lam.to(x.dtype)
    beta = alpha - 1
    z, shift, pos = _standardize(x, beta)
    w = beta * z
    if method == "sort":
        lam = _sort_threshold(w, alpha)
    elif method == "newton":
        top, m = _row_max(z)
        lam = beta * _solve(z - top, _warm_start(top, m, alpha), alpha)[1]
    else:
        lam = _bisect_threshold(w, beta, n_iter or _default_iters(x.dtype))
    p = (w - lam).clamp_min(0).pow(1 / beta)
    if method == "bisect" or (method == "newton" and alpha not in (1.5, 2.0)):
        p = p / p.sum(dim=-1, keepdim=True)
    certain = pos.any(dim=-1, keepdim=True)
    p = torch.where(certain, _uniform_on(pos, x.dtype), p)
    lam = torch.where(certain, torch.full_like(lam, math.inf), lam + beta * shift)
    return p, lam.squeeze(-1)


def _newton_overflows(alpha: float, dtype: torch.dtype, n: int) -> bool:
    r"""Whether the general-alpha Newton solver could overflow for ``n`` logits of ``dtype``.

    It works in units of ``z = x - max``, where the entries above its lower bound
    :math:`-1/\beta` reach up to :math:`u = 1/\beta`, and it sums ``n`` powers
    :math:`u^{1/\beta}`: as :math:`\alpha\to1` these overflow (``inf / inf = nan``), from about
    :math:`\alpha < 1.04` in float32 and :math:`\alpha < 1.007` in float64. Bisection works in
    units of :math:`\beta z`, where :math:`u \le 1`, and is used there instead."""
    work = work_dtype(dtype)
    inv = 1.0 / (alpha - 1.0)
    return inv * math.log2(inv) + math.log2(max(n, 1)) + 2 >= math.log2(torch.finfo(work).max)


def _method(method: str, x: torch.Tensor, alpha: float, exact_only: bool = False) -> str:
    """The solver ``method`` names for logits ``x``; ``"auto"`` is ``"sort"`` on a CUDA device
    for alpha in {1.5, 2}, ``"bisect"`` for alpha > 2 and ``"newton"`` otherwise. (Measured,
    benchmarks/results: on a 2-core CPU Newton takes 0.03-0.13x the time of a sort; on an H100,
    at every size benchmarked, each call is bound by its kernel launches, and a sort needs
    fewer than Newton's iterations.)"""
    check_choice(method, "method", ENTMAX_METHODS if not exact_only else ("auto", "newton", "sort"))
    if method != "auto":
        return method
    if alpha > 2:
        return "bisect"
    return "sort" if x.is_cuda and alpha in (1.5, 2.0) else "newton"


def _jacobian_weights(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_i = p_i^{2 - alpha} on the support, 0 off it."""
    on = p > 0
    return torch.where(on, p.clamp_min(torch.finfo(p.dtype).tiny).pow(2 - alpha),
                       torch.zeros_like(p))


class _Entmax(torch.autograd.Function):
    """entmax_alpha along the last dim; hand-derived backward J^T g = s*g - s (s.g)/sum s."""

    @staticmethod
    def forward(ctx, x, alpha, method, n_iter):
        if method in ("newton", "sort"):
            p, _ = _fast_parts(x, alpha, method, threshold=False)
        else:
            p, _ = _entmax_parts(x, alpha, method, n_iter)
        ctx.save_for_backward(p)
        ctx.alpha = alpha
        return p

    @staticmethod
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        s = _jacobian_weights(p, ctx.alpha)
        sg = s * grad
        return sg - s * sg.sum(dim=-1, keepdim=True) / s.sum(dim=-1, keepdim=True), None, None, None


def sparsemax(x, dim: int = -1, method: str = "auto") -> torch.Tensor:
    r"""Sparsemax: the Euclidean projection of :math:`x` onto the simplex (exact).

    .. math:: \operatorname{sparsemax}(x) = \arg\min_{p\in\Delta^{n-1}}\|p - x\|^2
              = \big[x - \lambda(x)\big]_+ ,

    with :math:`\lambda` from :func:`sparsemax_threshold`. Its backward pass is the
    hand-derived :math:`J = \operatorname{diag}(s) - ss^\top/|\Omega|`, :math:`s = 1_\Omega`.
    ``method``: ``"newton"`` (sort-free, Michelot's iteration, exact finish), ``"sort"``, or
    ``"auto"`` (sort on a CUDA device, Newton elsewhere; see :func:`entmax`).
    """
    x = _logits(x, dim, light=True)
    return _Entmax.apply(x, 2.0, _method(method, x, 2.0, True), None).movedim(-1, dim)


def sparsemax_threshold(x, dim: int = -1, method: str = "sort") -> torch.Tensor:
    r"""The sparsemax threshold :math:`\lambda(x)`, exact (``method``: ``"sort"``,
    ``"newton"``, or ``"auto"`` as in :func:`sparsemax`).

    With :math:`x_{(1)}\ge\dots\ge x_{(n)}` and :math:`\lambda_k = (\sum_{i\le k}x_{(i)} - 1)/k`,
    :math:`\lambda = \lambda_K` for the largest :math:`K` with :math:`x_{(K)} \ge \lambda_K`,
    which is also :math:`\max_k \lambda_k` (:math:`\lambda_k` rises while :math:`k` is in the
    support and falls after). Shape: ``x`` without ``dim``. ``+inf`` where the slice holds a
    ``+inf`` logit. The result carries no gradient (as :func:`entmax_bisect_threshold`);
    :func:`sparsemax` has the exact backward.
    """
    x = _logits(x, dim, light=True).detach()
    return _fast_parts(x, 2.0, _method(method, x, 2.0, True))[1]


def entmax15(x, dim: int = -1, method: str = "auto") -> torch.Tensor:
    r"""1.5-entmax, exact (``method``: ``"newton"``, sort-free, ``"sort"``, or ``"auto"``:
    sort on a CUDA device, Newton elsewhere).

    .. math:: \operatorname{entmax}_{1.5}(x) = \big[x/2 - \lambda(x)\big]_+^2,

    with :math:`\lambda` from :func:`entmax15_threshold`. Backward:
    :math:`J = \operatorname{diag}(s) - ss^\top/\sum s`, :math:`s = \sqrt{p}`.
    """
    x = _logits(x, dim, light=True)
    return _Entmax.apply(x, 1.5, _method(method, x, 1.5, True), None).movedim(-1, dim)


def entmax15_threshold(x, dim: int = -1, method: str = "sort") -> torch.Tensor:
    r"""The 1.5-entmax threshold, exact, by sorting :math:`z = x/2`.

    .. math:: \lambda_k = \mu_k - \sqrt{1/k - \sigma_k^2},

    with :math:`\mu_k, \sigma_k^2` the mean and variance of the :math:`k` largest
    :math:`z_{(i)}`; :math:`\lambda = \lambda_K` for the largest :math:`K` with
    :math:`z_{(K)} \ge \lambda_K` (a "≥" rule: it never fails on ties or when the threshold
    lands exactly on a logit, e.g. ``x = [2, 0]``). Shape: ``x`` without ``dim``; ``+inf``
    where the slice holds a ``+inf`` logit. ``method="newton"`` gives the same threshold
    without sorting; ``"auto"`` chooses as in :func:`entmax15`. The result carries no
    gradient (as :func:`entmax_bisect_threshold`); :func:`entmax15` has the exact backward.
    """
    x = _logits(x, dim, light=True).detach()
    return _fast_parts(x, 1.5, _method(method, x, 1.5, True))[1]


def entmax(x, alpha: float = 1.5, dim: int = -1, method: str = "auto") -> torch.Tensor:
    r""":math:`\alpha`-entmax with a choice of threshold solver.

    .. math:: \operatorname{entmax}_\alpha(x) = \big[(\alpha-1)x - \lambda(x)\big]_+^{1/(\alpha-1)}.

    ``method="newton"`` (:math:`1 < \alpha \le 2`): Newton's method on
    :math:`\phi(\lambda) = g(\lambda)^{\alpha-1} - 1`,
    :math:`g(\lambda) = \sum_i [(\alpha-1)x_i - \lambda]_+^{1/(\alpha-1)}`, from a point where
    :math:`g \ge 1` (:math:`\lambda_0 = (\alpha-1)\max_i x_i - 1`, or for long rows a few Newton
    steps on the maxima of groups of entries, which stay below the root); :math:`\phi` is a norm
    of a convex map, so convex and decreasing, and the iterates rise monotonically to the root
    without sorting (exactly in one step when the support's entries are equal). For
    :math:`\alpha \in \{1.5, 2\}` the iteration ends with the closed-form root on the support,
    verified (exact). Other :math:`\alpha` stop when the Newton step is below rounding and
    renormalise; on long rows they are solved on the top-K logits, K the most that any row has
    above the lower bound (the others are exact zeros). For :math:`\alpha` so close to 1 that
    the powers :math:`[z - \tau]_+^{1/(\alpha-1)}` could overflow the dtype (about
    :math:`\alpha < 1.04` in float32/float16/bfloat16, :math:`\alpha < 1.007` in float64),
    ``"newton"`` falls back to bisection, which works in units where they stay below 1.
    ``"sort"``: exact, :math:`\alpha \in \{1.5, 2\}` only. ``"bisect"``: any :math:`\alpha > 1`
    (same as :func:`entmax_bisect`). ``"auto"`` (default): ``"sort"`` on a CUDA device for
    :math:`\alpha \in \{1.5, 2\}` (there these calls are bound by kernel launches, and a sort
    takes fewer than Newton's iterations: benchmarks/results), ``"bisect"`` for
    :math:`\alpha > 2`, ``"newton"`` otherwise.
    Backward: :math:`s = p^{2-\alpha}` on the support.
    """
    x = _logits(x, dim, light=True)
    alpha = _alpha(alpha)
    method = _method(method, x, alpha)
    if method == "sort" and alpha not in (1.5, 2.0):
        raise ValueError(f"method='sort' needs alpha in (1.5, 2.0), got {alpha}")
    if method == "newton" and alpha > 2:
        raise ValueError(f"method='newton' needs alpha <= 2 (g must be convex), got {alpha}; "
                         "use method='bisect'")
    if (method == "newton" and alpha not in (1.5, 2.0)
            and _newton_overflows(alpha, x.dtype, x.shape[-1])):
        method = "bisect"  # u^(1/beta) would overflow: nan instead of a distribution
    if method == "bisect":  # the other solvers check through the row maxima
        _check_slices(x, dim)
    return _Entmax.apply(x, alpha, method, None).movedim(-1, dim)


def entmax_bisect(x, alpha: float = 1.5, n_iter: int | None = None, dim: int = -1) -> torch.Tensor:
    r""":math:`\alpha`-entmax for any :math:`\alpha>1`, threshold by bisection.

    .. math:: \operatorname{entmax}_\alpha(x) = \big[(\alpha-1)x - \lambda(x)\big]_+^{1/(\alpha-1)}
              = \arg\max_{p\in\Delta^{n-1}} \; p^\top x + H^{\mathrm T}_\alpha(p),

    (Tsallis entropy :math:`H^{\mathrm T}_\alpha`, see :func:`tsallis_entropy`). ``n_iter``
    halvings of a bracket of width < 1 (default: mantissa bits + 3, i.e. 55 in float64, 26
    in float32); the result is renormalised to sum to 1. Same data-independent work for every
    input, so it suits GPUs. Backward: :math:`s = p^{2-\alpha}` on the support. For
    :math:`\alpha>2` the map is ill-conditioned near the threshold (:math:`t^{1/\beta}` has
    infinite slope at 0): an entry there can be off by about :math:`\epsilon^{1/\beta}` of
    the dtype, whatever the algorithm.
    """
    x = _logits(x, dim)
    alpha = _alpha(alpha)
    if n_iter is not None:
        n_iter = check_int(n_iter, "n_iter", low=1)
    return _Entmax.apply(x, alpha, "bisect", n_iter).movedim(-1, dim)


def entmax_bisect_threshold(x, alpha: float = 1.5, n_iter: int | None = None,
                            dim: int = -1) -> torch.Tensor:
    r"""The threshold :math:`\lambda(x)` of :func:`entmax_bisect` (in units of
    :math:`(\alpha-1)x`). Shape: ``x`` without ``dim``; ``+inf`` where the slice holds a
    ``+inf`` logit. The result carries no gradient (autograd through the bisection would
    differentiate its bracket, not the root); :func:`entmax_bisect` has the exact backward."""
    x = _logits(x, dim).detach()
    alpha = _alpha(alpha)
    if n_iter is not None:
        n_iter = check_int(n_iter, "n_iter", low=1)
    return _entmax_parts(x, alpha, "bisect", n_iter)[1]


def _entmax_probs(x: torch.Tensor, alpha: float, n_iter=None) -> torch.Tensor:
    """The map for any alpha >= 1, exact paths where they exist (dim last, no autograd)."""
    if alpha == 1.0:
        return softmax(x, dim=-1)
    method = "sort" if alpha in (1.5, 2.0) else "bisect"
    return _entmax_parts(x, alpha, method, n_iter)[0]


def entmax_jacobian(x, alpha: float = 1.5) -> torch.Tensor:
    r"""Jacobian of :math:`\operatorname{entmax}_\alpha` (:math:`\alpha\ge1`) along the last dim.

    .. math:: J = \operatorname{diag}(s) - \frac{ss^\top}{\sum_i s_i},\qquad
              s_i = p_i^{2-\alpha}\,[p_i > 0],

    which is softmax's Jacobian at :math:`\alpha=1` and sparsemax's at :math:`\alpha=2`. Exact
    (sort) for :math:`\alpha\in\{1, 1.5, 2\}`, bisection otherwise. ``(..., n)`` to ``(..., n, n)``.
    """
    x = _logits(x, -1)
    alpha = _alpha(alpha, allow_one=True)
    s = _jacobian_weights(_entmax_probs(x, alpha), alpha)
    return torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2) / s.sum(dim=-1)[..., None, None]


def sparsemax_jacobian(x) -> torch.Tensor:
    r"""Jacobian of sparsemax: :math:`J = \operatorname{diag}(s) - ss^\top/|\Omega|`,
    :math:`s = 1_\Omega`, :math:`\Omega = \{i : p_i > 0\}`. ``(..., n)`` to ``(..., n, n)``."""
    return entmax_jacobian(x, 2.0)


def tsallis_entropy(p, alpha: float, dim: int = -1) -> torch.Tensor:
    r"""Tsallis entropy, the regulariser whose argmax is entmax.

    .. math:: H^{\mathrm T}_\alpha(p) = \frac{1 - \sum_i p_i^\alpha}{\alpha(\alpha-1)}
              \quad(\alpha>1),\qquad H^{\mathrm T}_1(p) = -\sum_i p_i\log p_i

    (Shannon is the limit :math:`\alpha\to1`); :math:`\alpha=2` gives
    :math:`\tfrac12(1-\|p\|^2)`. Reduces ``dim``. Computed as
    :math:`-\sum_i p_i\operatorname{expm1}((\alpha-1)\log p_i)/(\alpha(\alpha-1))` (terms with
    :math:`p_i = 0` are 0), which does not cancel as :math:`\alpha\to1`: the plain
    :math:`1-\sum_i p_i^\alpha` loses :math:`\epsilon/(\alpha-1)` (0.5 nats in float32 at
    :math:`\alpha = 1+10^{-6}`).
    """
    p = check_probability(p, "p", dim=dim)
    alpha = _alpha(alpha, allow_one=True)
    return _tsallis(p, alpha, dim)


def _tsallis(p: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """Tsallis entropy of a valid ``p`` (Shannon at alpha = 1), cancellation-free."""
    if alpha == 1.0:
        return -torch.special.xlogy(p, p).sum(dim=dim)
    # log 0 = -inf makes the factor expm1 = -1 there, the limit of p^(alpha-1) - 1, so the
    # gradient (1 - alpha p^(alpha-1)) / (alpha (alpha-1)) is right at p_i = 0 too (a factor
    # of 0 there gave 0); the where keeps log's 1/0 out of the backward
    log_p = torch.log(torch.where(p > 0, p, 0.0))
    return -(p * torch.expm1((alpha - 1) * log_p)).sum(dim=dim) / (alpha * (alpha - 1))


def _fy_value(x: torch.Tensor, p: torch.Tensor, onehot: torch.Tensor, alpha: float):
    r"""(p - e_t)^T (x - max x) + H_alpha(p), with 0 * (±inf) = 0 and certain slices rewritten.

    The shift is exact when sum p = 1, and keeps the rounding of sum p (times |x|) out of the
    loss for large logits."""
    pos = torch.isposinf(x)
    certain = pos.any(dim=-1, keepdim=True)
    xs = torch.where(certain, torch.where(pos, 0.0, -math.inf), x)  # +inf -> 0, rest -> -inf
    xs = xs - xs.amax(dim=-1, keepdim=True)  # the max is finite: 0 in certain slices
    coef = p - onehot
    dot = torch.where(coef != 0, coef * xs, torch.zeros_like(xs)).sum(dim=-1)
    return (dot + _tsallis(p, alpha)).clamp_min(0)  # rounding can dip a few ulps below 0


class _FenchelYoung(torch.autograd.Function):
    """Fenchel-Young loss of entmax_alpha; its gradient is p - e_t (Danskin)."""

    @staticmethod
    def forward(ctx, x, target, alpha, n_iter):
        p = _entmax_probs(x, alpha, n_iter)
        onehot = _onehot(target, x)
        ctx.save_for_backward(p - onehot)
        return _fy_value(x, p, onehot, alpha)

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        return grad.unsqueeze(-1) * diff, None, None, None


def entmax_loss(x, target, alpha: float = 1.5, n_iter: int | None = None,
                dim: int = -1) -> torch.Tensor:
    r"""Fenchel–Young loss of :math:`\alpha`-entmax (:math:`\alpha\ge1`), per example.

    .. math:: \mathcal L_t(x) = (p - e_t)^\top x + H^{\mathrm T}_\alpha(p),\qquad
              p = \operatorname{entmax}_\alpha(x),\qquad \nabla_x\mathcal L_t = p - e_t .

    :math:`\alpha = 1` is cross-entropy :math:`\operatorname{lse}(x) - x_t`; :math:`\alpha=2`
    is :func:`sparsemax_loss`. It is convex, :math:`\ge 0`, and 0 exactly when
    :math:`p = e_t`. ``+inf`` when the target's logit is ``-inf``, or when the slice has a
    ``+inf`` logit and the target's is not one. The dot product is taken on
    :math:`x - \max_i x_i` (the same value when :math:`\sum_i p_i = 1`), so large logits
    do not bring the rounding of :math:`\sum_i p_i` into the loss; the value is clamped at 0.
    ``n_iter``: the bisection iterations for :math:`\alpha \notin \{1, 1.5, 2\}` (default:
    as :func:`entmax_bisect`); the exact maps at :math:`\alpha \in \{1, 1.5, 2\}` ignore it.
    """
    x = _logits(x, dim)
    t = _target(target, x)
    alpha = _alpha(alpha, allow_one=True)
    if n_iter is not None:
        n_iter = check_int(n_iter, "n_iter", low=1)
    return _FenchelYoung.apply(x, t, alpha, n_iter)


def sparsemax_loss(x, target, dim: int = -1) -> torch.Tensor:
    r"""The sparsemax loss, per example, with gradient :math:`\operatorname{sparsemax}(x) - e_t`.

    .. math:: \mathcal L_t = \tfrac12 - x_t + \tfrac12\sum_{i\in\Omega}\big(x_i^2 - \lambda^2\big)
              = \tfrac12\|e_t - x\|^2 - \tfrac12\|p - x\|^2 \;\ge 0,

    the Fenchel–Young loss of :math:`\tfrac12\|p\|^2` (:func:`entmax_loss` at
    :math:`\alpha = 2`), evaluated in the shift-free form
    :math:`(p-e_t)^\top x + \tfrac12(1-\|p\|^2)`.
    """
    return entmax_loss(x, target, alpha=2.0, dim=dim)


# ----------------------------------------------------------------------------- other losses


def am_softmax_loss(z, centers, target, margin: float = 0.35, tau: float = 1 / 30) -> torch.Tensor:
    r"""Additive-margin (AM-)softmax loss, per example.

    .. math:: \mathcal L = -\log\frac{e^{(\cos(z, c_t) - m)/\tau}}
              {e^{(\cos(z, c_t) - m)/\tau} + \sum_{j\ne t} e^{\cos(z, c_j)/\tau}}

    ``z``: features ``(..., d)``; ``centers``: class vectors ``(n, d)``; ``target``: ``(...)``.
    Defaults :math:`m = 0.35`, :math:`\tau = 1/30` are those of Wang et al. (2018). Zero
    vectors have no cosine and raise ``ValueError``.
    """
    z = as_float_tensor(z, "z")
    centers = as_float_tensor(centers, "centers", min_ndim=2)
    check_finite(z, "z")
    check_finite(centers, "centers")
    if centers.ndim != 2 or centers.shape[-1] != z.shape[-1]:
        raise ValueError(f"centers must have shape (n, {z.shape[-1]}), got {tuple(centers.shape)}")
    margin = check_real(margin, "margin")
    tau = check_real(tau, "tau", positive=True)
    z, centers = promote(z, centers)
    zn, cn = z.norm(dim=-1, keepdim=True), centers.norm(dim=-1, keepdim=True)
    if (zn == 0).any() or (cn == 0).any():
        raise ValueError("z and centers must be non-zero vectors (cosine is undefined at 0)")
    cos = (z / zn) @ (centers / cn).T
    t = _target(target, cos)
    logits = (cos - margin * _onehot(t, cos)) / tau
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, t.unsqueeze(-1)).squeeze(-1)


def stop_gradient_loss(x, target, normalizer: Callable = sparsemax, dim: int = -1) -> torch.Tensor:
    r"""The stop-gradient surrogate loss, corrected: :math:`\mathcal L_t =
    \operatorname{sg}\big(p - e_t\big)^\top x`, with :math:`p` = ``normalizer(x)``.

    Its gradient is exactly :math:`p - e_t` for any map :math:`p`, which is the point; its
    value carries no meaning (it can be negative). (The post's
    :math:`(p - e_t)^\top\operatorname{sg}(x)` has gradient :math:`J_p^\top x` instead.)
    ``x`` must be finite. ``normalizer`` is called as ``normalizer(x)`` on the logits with the
    classes on the last dimension (every map of this module, or any callable of one tensor).
    """
    x = _logits(x, dim)
    check_finite(x, "x")
    t = _target(target, x)
    p = normalizer(x).detach()
    return ((p - _onehot(t, x)) * x).sum(dim=-1)
