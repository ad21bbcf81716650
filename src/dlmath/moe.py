r"""Mixture of experts as the best sparse approximation of a dense feed-forward layer.

Chapters: *Mixture of experts from a geometric view* (``notebooks/26-moe-geometry.ipynb``) and
*Balancing experts with a bias* (``notebooks/27-moe-dynamic-experts.ipynb``), whose
functions, at the end of this module, route by biased scores and update the bias.

A feed-forward layer :math:`y = f(xW^{(A)})W^{(B)}` with hidden width :math:`D = nc` is exactly
the sum of :math:`n` "experts" :math:`v_i = f(xW^{(A)}_i)W^{(B)}_i`, one per block of
:math:`c` hidden units. Keeping only :math:`k` of them is the subset problem

.. math:: \min_{|S| = k} \Big\|\sum_{i\in S} v_i - \sum_{i=1}^n v_i\Big\|^2
          = \min_{|S| = k} \Big\|\sum_{i\notin S} v_i\Big\|^2 ,

which top-:math:`k`-by-norm solves exactly when the :math:`v_i` are pairwise orthogonal. A
geometric MoE layer writes :math:`v_i = \|v_i\| e_i` and lets a router predict the magnitudes:
:math:`y = \sum_{i\in\operatorname{argtop}_k p} p_i e_i`.

Conventions for every function here:

* Row vectors: ``x`` has shape ``(..., d)`` and a layer computes ``x @ W``; ``W_A`` is
  ``(d, D)`` and ``W_B`` is ``(D, d_out)``, so expert ``i`` owns columns
  ``i*c:(i+1)*c`` of ``W_A`` and rows ``i*c:(i+1)*c`` of ``W_B``.
* A set of expert vectors ``V`` has shape ``(..., n, d)``: ``n`` vectors of length ``d``,
  batched over the leading dimensions. Subsets are returned as index tensors ``(..., k)``
  sorted ascending.
* **Ties.** Top-:math:`k` selection is stable: among equal scores the lower index wins.
  :func:`best_subset` returns the first optimal subset in lexicographic order.
* Results keep the input's device and dtype; integer tensors raise ``TypeError``; NaN raises
  ``ValueError``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ._checks import (
    as_float_tensor,
    check_broadcast,
    check_callable,
    check_choice,
    check_dim,
    check_finite,
    check_float_dtype,
    check_int,
    check_no_nan,
    check_probability,
    check_real,
    upcast_half,
    work_dtype,
)

__all__ = [
    "split_ffn_experts",
    "expert_outputs",
    "topk_indices",
    "topk_by_norm",
    "subset_error",
    "all_subsets",
    "best_subset",
    "unit_direction",
    "geometric_moe",
    "importance_sampling_variance",
    # bias balancing and dynamic expert counts
    "route_topk",
    "route_threshold",
    "LoadStats",
    "load_stats",
    "lossfree_update",
    "dynamic_k_update",
    "threshold_bias_init",
    "sigmoid_bias_init",
    "BalancedRouting",
    "balance_by_bias",
]


def _vectors(V, name: str = "V") -> torch.Tensor:
    """A floating tensor of shape (..., n, d) without NaN or inf."""
    V = as_float_tensor(V, name, min_ndim=2)
    check_finite(V, name)
    return V


def _scaled(V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V / s, s)`` with ``s`` a power of two per instance ``(..., 1, 1)`` that brings the
    largest entry of each set of vectors into [1, 2) (``s = 1`` for an all-zero set).

    Squares of float32 entries overflow above about 1e19 and underflow below about 1e-23
    (float16: 256 and 2e-4), so norms and subset errors computed from ``V`` itself would tie
    at ``inf`` or 0 and pick the wrong vectors. Dividing by a power of two is exact, so on
    ordinary inputs every value computed from ``V / s`` and rescaled by ``s**2`` is the same,
    bit for bit, as without the scaling. float16/bfloat16 are computed in float32.
    """
    V = upcast_half(V)
    m = V.abs().amax(dim=(-2, -1), keepdim=True)
    exponent = torch.frexp(m)[1]  # m = mantissa * 2**exponent, mantissa in [0.5, 1)
    s = torch.where(m > 0, torch.ldexp(torch.ones_like(m), exponent - 1), torch.ones_like(m))
    return V / s, s


def split_ffn_experts(W_A, W_B, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Cut a feed-forward layer's weights into ``n`` equal experts.

    .. math:: W^{(A)}_i = W^{(A)}_{[:,\,(i-1)c:ic]}, \qquad W^{(B)}_i = W^{(B)}_{[(i-1)c:ic,\,:]},
              \qquad c = D/n .

    Shapes: ``W_A`` is ``(d, D)``, ``W_B`` is ``(D, d_out)`` and ``n`` must divide ``D``;
    returns ``(A, B)`` with ``A[i]`` of shape ``(d, c)`` and ``B[i]`` of shape ``(c, d_out)``
    (views of the inputs when they are contiguous, copies otherwise).
    """
    W_A = check_no_nan(as_float_tensor(W_A, "W_A", min_ndim=2), "W_A")
    W_B = check_no_nan(as_float_tensor(W_B, "W_B", min_ndim=2), "W_B")
    if W_A.ndim != 2 or W_B.ndim != 2:
        raise ValueError(f"W_A and W_B must be matrices, got shapes {tuple(W_A.shape)} and "
                         f"{tuple(W_B.shape)}")
    d, D = W_A.shape
    if W_B.shape[0] != D:
        raise ValueError(f"W_B must have D = {D} rows (the columns of W_A), got "
                         f"{W_B.shape[0]}")
    check_int(n, "n", low=1)
    if D % n:
        raise ValueError(f"n = {n} must divide the hidden width D = {D}")
    c = D // n
    return W_A.reshape(d, n, c).transpose(0, 1), W_B.reshape(n, c, W_B.shape[1])


def expert_outputs(x, W_A, W_B, n: int, activation: Callable = torch.relu, W_gate=None):
    r"""The expert vectors :math:`v_i` of a feed-forward layer split into ``n`` experts.

    Plain layer, :math:`y = f(xW^{(A)})W^{(B)}`:

    .. math:: v_i = f\big(xW^{(A)}_i\big)\,W^{(B)}_i, \qquad y = \sum_{i=1}^n v_i .

    Gated (GLU) layer, :math:`y = \big(f(xW^{(G)}) \odot xW^{(A)}\big)W^{(B)}` when ``W_gate``
    is given (SwiGLU for :math:`f` = SiLU):

    .. math:: v_i = \big(f(xW^{(G)}_i) \odot xW^{(A)}_i\big)\,W^{(B)}_i .

    Shapes: ``x`` is ``(..., d)``, ``W_A`` and ``W_gate`` are ``(d, D)``, ``W_B`` is
    ``(D, d_out)``; the result is ``(..., n, d_out)``. ``activation`` must act elementwise
    (that is what makes the split exact).
    """
    A, B = split_ffn_experts(W_A, W_B, n)
    x = check_no_nan(as_float_tensor(x, "x"), "x")
    if x.shape[-1] != A.shape[1]:
        raise ValueError(f"x must have last dimension d = {A.shape[1]} (the rows of W_A), "
                         f"got {x.shape[-1]}")
    if x.dtype != W_A.dtype or W_B.dtype != W_A.dtype:
        raise TypeError(f"x, W_A and W_B must share one dtype, got {x.dtype}, {W_A.dtype} and "
                        f"{W_B.dtype}")
    check_callable(activation, "activation")
    hidden = x @ W_A
    if W_gate is not None:
        W_gate = check_no_nan(as_float_tensor(W_gate, "W_gate", min_ndim=2), "W_gate")
        if W_gate.shape != W_A.shape:
            raise ValueError(f"W_gate must have the shape {tuple(W_A.shape)} of W_A, got "
                             f"{tuple(W_gate.shape)}")
        if W_gate.dtype != W_A.dtype:
            raise TypeError(f"W_gate must have the dtype {W_A.dtype} of W_A, got "
                            f"{W_gate.dtype}")
        hidden = activation(x @ W_gate) * hidden
    else:
        hidden = activation(hidden)
    hidden = hidden.reshape(*hidden.shape[:-1], n, A.shape[2])
    return torch.einsum("...nc,ncd->...nd", hidden, B)


def topk_indices(scores, k: int) -> torch.Tensor:
    r"""The indices of the ``k`` largest scores, :math:`\operatorname{argtop}_k(p)`, ascending.

    Shapes: ``scores`` ``(..., n)`` -> ``(..., k)`` (int64). Ties are broken towards the lower
    index (a stable sort), so the result is deterministic; ``inf`` is allowed, NaN is refused.
    """
    scores = as_float_tensor(scores, "scores")
    check_no_nan(scores, "scores")
    check_int(k, "k", low=1, high=scores.shape[-1])
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :k].sort(dim=-1).values


def topk_by_norm(V, k: int) -> torch.Tensor:
    r"""The ``k`` expert vectors of largest Euclidean norm, :math:`\operatorname{argtop}_k \|v_i\|`.

    This is the optimal subset of :func:`best_subset` when the :math:`v_i` are pairwise
    orthogonal, and a heuristic otherwise. Shapes: ``V`` ``(..., n, d)`` -> ``(..., k)``,
    ascending, ties to the lower index. Each norm is computed as
    :math:`m_i\|v_i/m_i\|` with :math:`m_i = \max_j|v_{ij}|` (after an exact power-of-two
    rescaling of the set), so vectors whose squared entries would overflow or underflow the
    dtype (float32 beyond about 1e19 or below 1e-23) are still ranked correctly, also next to
    much larger vectors of the same set.
    """
    V, _ = _scaled(_vectors(V))
    m = V.abs().amax(dim=-1, keepdim=True)
    norms = torch.linalg.vector_norm(V / torch.where(m > 0, m, 1), dim=-1) * m.squeeze(-1)
    return topk_indices(norms, k)


def _kept_mask(idx: torch.Tensor, n: int, dtype) -> torch.Tensor:
    mask = torch.zeros(*idx.shape[:-1], n, dtype=dtype, device=idx.device)
    return mask.scatter(-1, idx, 1.0)


def subset_error(V, idx) -> torch.Tensor:
    r"""Squared error of approximating the full sum by the sum over a subset.

    .. math:: \Big\|\sum_{i\in S} v_i - \sum_{i=1}^n v_i\Big\|^2
              = \Big\|\sum_{i\notin S} v_i\Big\|^2

    Shapes: ``V`` ``(..., n, d)``, ``idx`` ``(..., k)`` of distinct integers in ``[0, n)``
    (broadcast against ``V``'s batch dimensions); result ``(...)`` in ``V``'s dtype. The sum is
    formed after an exact power-of-two rescaling of each set, so the result is ``inf`` or 0
    only when the error itself lies outside the dtype's range.
    """
    V0 = _vectors(V)
    V, scale = _scaled(V0)
    idx = torch.as_tensor(idx, device=V.device)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex():
        raise TypeError(f"idx must hold integer indices, got {idx.dtype}")
    if idx.ndim == 0:
        raise ValueError("idx must have at least one dimension (the subset)")
    n = V.shape[-2]
    idx = idx.long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"idx must lie in [0, {n}), got values in "
                         f"[{idx.min().item()}, {idx.max().item()}]")
    srt = idx.sort(dim=-1).values
    if (srt[..., 1:] == srt[..., :-1]).any():
        raise ValueError("idx must not repeat an index within a subset")
    batch = check_broadcast(V_batch=V.shape[:-2], idx_batch=idx.shape[:-1])
    idx = idx.expand(*batch, idx.shape[-1])
    dropped = 1.0 - _kept_mask(idx, n, V.dtype)
    rest = (dropped.unsqueeze(-1) * V).sum(dim=-2)
    scale = scale.squeeze(-1).squeeze(-1)
    return (rest.square().sum(dim=-1) * scale * scale).to(V0.dtype)


def all_subsets(n: int, k: int, *, device=None) -> torch.Tensor:
    r"""Every :math:`k`-subset of :math:`\{0, \dots, n-1\}`, one per row, in lexicographic order.

    Shape ``(C(n, k), k)``, int64, each row ascending. Built with ``itertools.combinations``:
    ``torch.combinations`` materialises all :math:`n^k` tuples first and runs out of memory
    long before :math:`\binom nk` is large (80 GB at ``n = k = 10``).
    """
    check_int(n, "n", low=1)
    check_int(k, "k", low=1, high=n)
    rows = list(itertools.combinations(range(n), k))
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(len(rows), k)


def best_subset(V, k: int, *, max_subsets: int = 2**16) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The exact best ``k``-subset, by exhaustive search over all :math:`\binom nk` subsets.

    .. math:: S^\star = \operatorname*{arg\,min}_{|S| = k} \Big\|\sum_{i\notin S} v_i\Big\|^2

    Returns ``(idx, err)``: ``idx`` ``(..., k)`` ascending (the first optimum in lexicographic
    order if several tie) and ``err`` ``(...)`` its squared error (:func:`subset_error`).
    Exponential in ``n``: raises ``ValueError`` when :math:`\binom nk` exceeds ``max_subsets``
    (by default :math:`2^{16}`, enough for every ``k`` at ``n <= 18``). The search runs on
    each set rescaled by an exact power of two, so the subset is right even when ``err``
    overflows to ``inf`` or underflows to 0 in ``V``'s dtype.
    """
    V0 = _vectors(V)
    V, scale = _scaled(V0)
    n = V.shape[-2]
    check_int(k, "k", low=1, high=n)
    check_int(max_subsets, "max_subsets", low=1)
    count = math.comb(n, k)
    if count > max_subsets:
        raise ValueError(f"best_subset is an exhaustive search: C({n}, {k}) = {count} subsets "
                         f"exceed max_subsets = {max_subsets}; raise the limit or use a "
                         f"smaller n")
    combos = all_subsets(n, k, device=V.device)
    dropped = 1.0 - _kept_mask(combos, n, V.dtype)  # (C, n)
    rests = torch.einsum("cn,...nd->...cd", dropped, V)  # (..., C, d)
    errs = rests.square().sum(dim=-1)
    best = errs.argmin(dim=-1)  # first minimum
    idx = combos[best]
    scale = scale.squeeze(-1).squeeze(-1)
    err = errs.gather(-1, best.unsqueeze(-1)).squeeze(-1) * scale * scale
    return idx, err.to(V0.dtype)


def unit_direction(v, dim: int = -1) -> torch.Tensor:
    r"""The direction :math:`e = v/\|v\|` of each vector, with :math:`e = 0` for :math:`v = 0`.

    Each vector is first divided by its largest entry, so huge (``1e300``) and tiny
    (``1e-300``) vectors neither overflow nor underflow. Shapes: ``(..., d)`` -> ``(..., d)``.
    The map is discontinuous at :math:`v = 0`; there its value is 0 and its Jacobian is taken
    to be 0 as well (the output is held constant), so a zero expert passes no gradient back.
    """
    v = as_float_tensor(v, "v")
    check_finite(v, "v")
    return _unit_direction(v, check_dim(v, dim))


def _unit_direction(v: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`unit_direction` of a checked, finite ``v``."""
    m = v.abs().amax(dim=dim, keepdim=True)
    w = v / torch.where(m > 0, m, torch.ones_like(m))
    norm = torch.linalg.vector_norm(w, dim=dim, keepdim=True)
    e = w / torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.where(norm > 0, e, torch.zeros_like(e))


def geometric_moe(x, scores, experts: Sequence[Callable], k: int):
    r"""A geometric mixture-of-experts layer: magnitudes from a router, directions from experts.

    .. math:: y = \sum_{i\in\operatorname{argtop}_k p} p_i\, e_i(x), \qquad
              e_i(x) = \frac{v_i(x)}{\|v_i(x)\|},

    where :math:`p` (``scores``, e.g. :math:`h(xW^{(R)})`) is a non-negative magnitude per expert
    and :math:`v_i` = ``experts[i]``. Expert ``i`` is evaluated only on the tokens that selected
    it, so about ``k/n`` of the experts' work is done.

    Shapes: ``x`` ``(T, d)`` (or ``(d,)`` for one token), ``scores`` ``(T, n)`` (or ``(n,)``);
    ``experts[i]`` maps ``(m, d)`` to ``(m, d_out)``. Returns ``(y, counts)``: ``y`` ``(T,
    d_out)`` (or ``(d_out,)``) and ``counts`` ``(n,)``, the number of tokens each expert
    processed. ``y`` is differentiable with respect to ``scores`` (the only way a gradient
    reaches the router).
    """
    x = as_float_tensor(x, "x")
    scores = as_float_tensor(scores, "scores")
    single = x.ndim == 1
    if single:
        x, scores = x.unsqueeze(0), scores.unsqueeze(0)
    if x.ndim != 2 or scores.ndim != 2:
        raise ValueError(f"x and scores must be (T, d) and (T, n), got {tuple(x.shape)} and "
                         f"{tuple(scores.shape)}")
    if scores.shape[0] != x.shape[0]:
        raise ValueError(f"scores must have one row per token: {x.shape[0]} tokens, "
                         f"{scores.shape[0]} rows")
    if isinstance(experts, (torch.Tensor, str)) or not isinstance(experts, Sequence):
        raise TypeError("experts must be a sequence of callables")
    n = scores.shape[1]
    if len(experts) != n:
        raise ValueError(f"scores has {n} columns but {len(experts)} experts were given")
    for i, expert in enumerate(experts):
        check_callable(expert, f"experts[{i}]")
    check_finite(x, "x")
    check_finite(scores, "scores")
    if (scores < 0).any():
        raise ValueError("scores are magnitudes p_i = h(x W_R) and must be >= 0")
    chosen = topk_indices(scores.detach(), k)  # (T, k); selection is piecewise constant
    counts = torch.zeros(n, dtype=torch.long, device=x.device)
    parts, d_out = [], None
    for i, expert in enumerate(experts):
        tokens = (chosen == i).any(dim=-1).nonzero().squeeze(-1)
        counts[i] = tokens.numel()
        if tokens.numel() == 0:
            continue
        name = f"experts[{i}]'s output"
        v = as_float_tensor(expert(x[tokens]), name, min_ndim=2)
        if v.ndim != 2 or v.shape[0] != tokens.numel() or v.shape[1] != (d_out or v.shape[1]):
            want = f"(m, {d_out})" if d_out else "(m, d_out)"
            raise ValueError(f"{name} must have shape {want} for its m = {tokens.numel()} "
                             f"tokens, got {tuple(v.shape)}")
        d_out = v.shape[1]
        e = _unit_direction(check_finite(v, name), -1)
        parts.append((tokens, scores[tokens, i].unsqueeze(-1) * e))
    y = torch.zeros(x.shape[0], d_out, dtype=parts[0][1].dtype, device=x.device)
    for tokens, contribution in parts:
        y = y.index_add(0, tokens, contribution)
    return (y[0] if single else y), counts


def importance_sampling_variance(V, p) -> torch.Tensor:
    r"""Mean squared error of the one-sample unbiased estimate :math:`v_I/p_I`, :math:`I\sim p`.

    .. math:: \mathbb{E}\Big\|\frac{v_I}{p_I} - \sum_j v_j\Big\|^2
              = \sum_i \frac{\|v_i\|^2}{p_i} - \Big\|\sum_i v_i\Big\|^2 ,

    minimised over the simplex by :math:`p_i \propto \|v_i\|`, where it equals
    :math:`(\sum_i\|v_i\|)^2 - \|\sum_i v_i\|^2`. A term with :math:`p_i = 0` counts as 0 if
    :math:`v_i = 0` and makes the result ``inf`` otherwise (the estimate is then biased).

    Shapes: ``V`` ``(..., n, d)``, ``p`` ``(..., n)`` a probability vector; result ``(...)``,
    clamped at 0 against rounding. The sums are formed after an exact power-of-two rescaling
    of each set of vectors, so a variance beyond the dtype's range is ``inf`` (not NaN), and a
    tiny non-zero :math:`v_i` with :math:`p_i = 0` still gives ``inf``.
    """
    V0 = _vectors(V)
    V, scale = _scaled(V0)
    p = check_probability(p, "p")
    if p.shape[-1] != V.shape[-2]:
        raise ValueError(f"p must have one probability per vector: V has n = {V.shape[-2]} "
                         f"vectors, p has {p.shape[-1]} entries")
    p = p.to(V.device)
    sq = V.square().sum(dim=-1)
    safe = torch.where(p > 0, p, torch.ones_like(p))
    nonzero = (V != 0).any(dim=-1)  # not sq > 0: a tiny v_i's square underflows to 0
    terms = torch.where(p > 0, sq / safe,
                        torch.where(nonzero, torch.full_like(sq, math.inf), torch.zeros_like(sq)))
    var = (terms.sum(dim=-1) - V.sum(dim=-2).square().sum(dim=-1)).clamp_min(0.0)
    scale = scale.squeeze(-1).squeeze(-1)
    return (var * scale * scale).to(torch.promote_types(V0.dtype, p.dtype))


# --- Dynamic expert counts and bias balancing (chapter 27) ---------------------------------
#
# Chapter: *Balancing experts with a bias, and a dynamic number of experts per token*
# (``notebooks/27-moe-dynamic-experts.ipynb``). A router gives each of T tokens a selection
# score per expert, ``scores`` of shape (..., T, n) (sigmoid scores in (0, 1) in the chapter),
# and a bias ``bias`` of shape (n,) that does not depend on the token is added to the scores for
# the *selection only*. Masks are boolean tensors of the scores' shape.

_DYNAMIC_K_RULES = ("lossfree", "centred", "budget", "cap", "simplified")


def _biased_scores(scores, bias) -> torch.Tensor:
    scores = as_float_tensor(scores, "scores")
    check_no_nan(scores, "scores")
    bias = as_float_tensor(bias, "bias")
    check_finite(bias, "bias")
    if bias.shape[-1] != scores.shape[-1]:
        raise ValueError(f"bias must have one entry per expert: scores have n = "
                         f"{scores.shape[-1]} columns, bias has {bias.shape[-1]}")
    check_broadcast(scores=scores.shape, bias=bias.shape)
    return scores + bias.to(scores.device)


def route_topk(scores, bias, k: int) -> torch.Tensor:
    r"""Biased top-:math:`k` routing: token :math:`t` selects
    :math:`\operatorname{argtop}_k(\rho_t + b)`.

    The bias :math:`b` only chooses the experts; the gate that multiplies an expert's output is
    still the unbiased score. Adding a constant to every :math:`b_i` changes nothing.

    Shapes: ``scores`` ``(..., n)``, ``bias`` ``(n,)`` (or broadcastable); returns a boolean
    mask of the broadcast shape with exactly ``k`` ``True`` per row. Ties go to the lower index
    (:func:`topk_indices`); ``inf`` scores are allowed, NaN is refused.
    """
    z = _biased_scores(scores, bias)
    idx = topk_indices(z, k)
    return torch.zeros(z.shape, dtype=torch.bool, device=z.device).scatter(-1, idx, True)


def route_threshold(scores, bias) -> torch.Tensor:
    r"""Threshold routing: token :math:`t` selects every expert with :math:`\rho_{ti} + b_i > 0`.

    The number of selected experts varies from token to token (it can be 0 or ``n``); no sort
    is needed. A score exactly at the threshold is not selected. Shapes as in
    :func:`route_topk`.
    """
    return _biased_scores(scores, bias) > 0


class LoadStats(NamedTuple):
    r"""Statistics of a routing mask over its ``T`` tokens (see :func:`load_stats`).

    ``rates`` ``(..., n)``: :math:`\tilde F_i`, the fraction of tokens that select expert ``i``;
    ``budget`` ``(...)``: :math:`B = \sum_i \tilde F_i`, the mean number of experts per token;
    ``load`` ``(..., n)``: :math:`F = \tilde F / B`, the load distribution (uniform if B = 0);
    ``maxvio`` ``(...)``: :math:`n\max_i F_i - 1`, the relative overload of the busiest expert.
    """

    rates: torch.Tensor
    budget: torch.Tensor
    load: torch.Tensor
    maxvio: torch.Tensor


def load_stats(mask, *, dtype: torch.dtype | None = None) -> LoadStats:
    r"""Rates, budget, load distribution and MaxVio of a routing mask.

    .. math:: \tilde F_i = \frac1T\sum_{t=1}^T \mathbb{1}[i\in S_t], \qquad
              B = \sum_{i=1}^n \tilde F_i, \qquad F = \frac{\tilde F}{B}, \qquad
              \operatorname{MaxVio} = n\max_i F_i - 1 .

    For top-:math:`k` routing :math:`B = k` and :math:`F_i` is the mean of
    :math:`f_{ti} = \mathbb{1}[i\in S_t]/k`. A mask that selects nothing at all (:math:`B = 0`)
    carries no imbalance: its :math:`F` is uniform and its MaxVio 0.

    Everything is computed from the integer counts :math:`c_i = T\tilde F_i` in float64 and
    rounded once to ``dtype``: :math:`F_i = c_i/\sum_j c_j` and
    :math:`\operatorname{MaxVio} = n\max_i c_i/\sum_j c_j - 1`. So an expert with exactly
    :math:`1/n` of the selections gets :math:`F_i` = ``1/n`` rounded to ``dtype``, bit for bit
    (which :func:`lossfree_update` compares against), and a uniform load has MaxVio exactly 0.

    Shapes: ``mask`` ``(..., T, n)``, boolean or floating 0/1; results as in
    :class:`LoadStats`, in ``dtype`` (default: the mask's floating dtype, else torch's default).
    """
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be a boolean or floating 0/1 tensor, got {mask.dtype}")
    if mask.ndim < 2 or mask.shape[-2] == 0 or mask.shape[-1] == 0:
        raise ValueError(f"mask must have shape (..., T, n) with T, n >= 1, got "
                         f"{tuple(mask.shape)}")
    if mask.is_floating_point() and not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must hold only 0 and 1")
    if dtype is None:
        dtype = mask.dtype if mask.is_floating_point() else torch.get_default_dtype()
    check_float_dtype(dtype)
    T, n = mask.shape[-2:]
    counts = mask.to(torch.float64).sum(dim=-2)  # exact integers
    total = counts.sum(dim=-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    load = torch.where(total > 0, counts / safe, torch.full_like(counts, 1.0 / n))
    maxvio = torch.where(total > 0, n * counts.amax(dim=-1, keepdim=True) / safe - 1, 0.0)
    return LoadStats((counts / T).to(dtype), (total / T).squeeze(-1).to(dtype), load.to(dtype),
                     maxvio.squeeze(-1).to(dtype))


def _alpha(alpha) -> float:
    return check_real(alpha, "alpha", positive=True)


def lossfree_update(bias, load, alpha: float, mode: str = "sign") -> torch.Tensor:
    r"""One step of Loss-Free balancing of biased top-:math:`k` routing.

    With :math:`Q = \mathbf 1/n` and :math:`z = F - Q`,

    .. math:: b \leftarrow b - \alpha\,\phi(z), \qquad
              \phi(z) = \operatorname{sign}(z) \ (\texttt{"sign"}), \quad
              \frac{z}{\operatorname{RMS}(z)} \ (\texttt{"rms"}), \quad
              z \ (\texttt{"sgd"}),

    where :math:`\operatorname{RMS}(z) = \sqrt{\frac1n\sum_i z_i^2}`: an over-loaded expert's
    bias goes down. ``"sgd"`` is gradient descent on the straight-through loss
    :math:`\frac12\|F - Q\|^2`; ``"sign"`` and ``"rms"`` both give steps of RMS 1 (``"rms"``
    gives 0 when :math:`z = 0`; it divides by :math:`\max_i|z_i|` first, so that
    :math:`z_i^2` cannot underflow in half precision).

    :math:`Q` is ``1/n`` rounded to the load's dtype and :math:`z` is formed in that dtype, so
    :math:`z_i = 0` exactly (no step in ``"sign"``; all-zero step in ``"rms"``) iff
    :math:`F_i` equals it bit for bit, as :func:`load_stats` makes it for an expert with exactly
    :math:`1/n` of the selections. (``1.0/n`` as a Python float would leave
    :math:`z_i` at a rounding error of about ``eps/n`` and give a balanced expert a full step.)

    Shapes: ``bias`` ``(..., n)``, ``load`` ``(..., n)`` (broadcast), a load distribution such
    as :attr:`LoadStats.load`; returns the new bias (a new tensor).
    """
    bias = as_float_tensor(bias, "bias")
    check_finite(bias, "bias")
    load = as_float_tensor(load, "load")
    check_finite(load, "load")
    alpha = _alpha(alpha)
    check_choice(mode, "mode", ("sign", "rms", "sgd"))
    n = load.shape[-1]
    if bias.shape[-1] != n:
        raise ValueError(f"bias and load must have the same last dimension, got "
                         f"{bias.shape[-1]} and {n}")
    check_broadcast(bias=bias.shape, load=load.shape)
    load = load.to(bias.device)
    z = load - torch.tensor(1.0 / n, dtype=load.dtype, device=load.device)
    if mode == "sign":
        step = torch.sign(z)
    elif mode == "sgd":
        step = z
    else:
        m = z.abs().amax(dim=-1, keepdim=True)
        w = z / torch.where(m > 0, m, torch.ones_like(m))
        rms = w.square().mean(dim=-1, keepdim=True).sqrt()
        step = w / torch.where(rms > 0, rms, torch.ones_like(rms))
    return bias - alpha * step


def dynamic_k_update(bias, rates, k: float, alpha: float, rule: str = "budget", *,
                     lam: float = 1.0, per_k: bool = False) -> torch.Tensor:
    r"""One bias step for threshold routing: balance the experts and steer the budget to ``k``.

    With :math:`s = \operatorname{sign}(F - Q)`, :math:`\bar s` its mean over the experts,
    :math:`B = \sum_i\tilde F_i` and :math:`F = \tilde F/B` (uniform when :math:`B = 0`), or
    :math:`F = \tilde F/k` with ``per_k=True``, the step is :math:`b \leftarrow b - \alpha\,u`
    with

    * ``"lossfree"``: :math:`u = s` (Loss-Free as it is);
    * ``"centred"``: :math:`u = s - \bar s` (balance only; the mean bias stays fixed);
    * ``"budget"``: :math:`u = s - \bar s + \operatorname{sign}(B - k)` (balance, budget ``k``);
    * ``"cap"``: :math:`u = s - \bar s + \operatorname{sign}(\max(B - k, 0))` (budget at most
      ``k``);
    * ``"simplified"``: :math:`u = s + \lambda\operatorname{sign}(B - k)`, :math:`\lambda\ge0`.

    The sign of :math:`F_i - 1/n` is computed as that of
    :math:`\sum_j(\tilde F_i - \tilde F_j) = n\tilde F_i - B` (or of :math:`n\tilde F_i - k`),
    without a division: equal rates give exactly :math:`s = 0` in any dtype, which
    :math:`n\tilde F_i - B` with a rounded sum :math:`B` does not (e.g. seven experts at rate
    0.001 in float32).

    Shapes: ``bias`` ``(..., n)``, ``rates`` ``(..., n)`` (:attr:`LoadStats.rates`);
    returns the new bias.
    """
    bias = as_float_tensor(bias, "bias")
    check_finite(bias, "bias")
    rates = as_float_tensor(rates, "rates")
    check_finite(rates, "rates")
    if bias.shape[-1] != rates.shape[-1]:
        raise ValueError(f"bias and rates must have the same last dimension, got "
                         f"{bias.shape[-1]} and {rates.shape[-1]}")
    check_broadcast(bias=bias.shape, rates=rates.shape)
    if (rates < 0).any() or (rates > 1).any():
        raise ValueError("rates are fractions of tokens and must lie in [0, 1]")
    n = rates.shape[-1]
    k = check_real(k, "k", positive=True, high=n)
    alpha = _alpha(alpha)
    lam = check_real(lam, "lam", nonnegative=True)
    check_choice(rule, "rule", _DYNAMIC_K_RULES)
    if not isinstance(per_k, bool):
        raise TypeError(f"per_k must be a bool, got {type(per_k).__name__}")
    rates = rates.to(bias.device)
    budget = rates.sum(dim=-1, keepdim=True)
    if per_k:
        s = torch.sign(n * rates - k)
    else:  # sum_j (r_i - r_j) = n r_i - B; exactly 0 when the rates are equal (also B = 0)
        s = torch.sign((rates.unsqueeze(-1) - rates.unsqueeze(-2)).sum(dim=-1))
    if rule == "lossfree":
        step = s
    elif rule == "simplified":
        step = s + lam * torch.sign(budget - k)
    else:
        step = s - s.mean(dim=-1, keepdim=True)
        if rule == "budget":
            step = step + torch.sign(budget - k)
        elif rule == "cap":
            step = step + torch.sign((budget - k).clamp_min(0.0))
    return bias - alpha * step


def threshold_bias_init(scores, k: float) -> torch.Tensor:
    r"""The common bias :math:`b_0` that makes threshold routing select ``k`` experts per token
    on average over the sample ``scores``.

    The count :math:`N(b) = \#\{(t, i) : \rho_{ti} + b > 0\}` is a non-decreasing step function
    of :math:`b`, so instead of bisecting on it we read the answer off the sorted scores: with
    :math:`m = \operatorname{round}(kT)` (clipped to :math:`[1, nT - 1]`) and
    :math:`\rho_{(1)}\ge\rho_{(2)}\ge\dots` all :math:`nT` scores in decreasing order,

    .. math:: b_0 = -\tfrac12\big(\rho_{(m)} + \rho_{(m+1)}\big),

    for which :math:`N(b_0) = m` exactly unless :math:`\rho_{(m)} = \rho_{(m+1)}` (a tie that
    no bias can split; then :math:`N(b_0) < m`). Any :math:`b` with :math:`N(b) = m` lies in
    :math:`(-\rho_{(m)}, -\rho_{(m+1)}]`; the midpoint is the most robust choice. It is formed
    in float64 and rounded to the scores' dtype, so it neither overflows (float32 scores near
    ``3e38``) nor rounds onto :math:`\rho_{(m)}`: when no value of the dtype lies strictly
    between the two scores (neighbouring floats, common in float16/bfloat16) the result is
    :math:`b_0 = -\rho_{(m+1)}`, which still gives :math:`N(b_0) = m`.

    Shapes: ``scores`` ``(..., T, n)``, finite; ``0 < k < n``; returns ``(...)`` in the scores'
    dtype.
    """
    scores = as_float_tensor(scores, "scores", min_ndim=2)
    check_finite(scores, "scores")
    T, n = scores.shape[-2:]
    k = check_real(k, "k", positive=True)
    if not k < n:
        raise ValueError(f"k must be < n = {n}, got {k}")
    m = min(max(round(k * T), 1), n * T - 1)
    flat = scores.reshape(*scores.shape[:-2], n * T)
    top = torch.topk(flat, m + 1, dim=-1).values
    hi, lo = top[..., m - 1], top[..., m]
    a, b = hi.to(torch.float64), lo.to(torch.float64)
    # a + (b - a)/2 cannot overflow for scores of one sign, (a + b)/2 for scores of both signs
    mid = torch.where((a > 0) == (b > 0), a + (b - a) / 2, (a + b) / 2)
    c = torch.minimum(torch.maximum(mid.to(scores.dtype), lo), hi)
    return -torch.where(c < hi, c, lo)  # rounded onto rho_(m): take rho_(m+1) instead


def sigmoid_bias_init(n: int, k: float, mean: float = 0.0, std: float = 1.0) -> float:
    r"""Closed-form :math:`b_0` for sigmoid scores :math:`\rho = \sigma(z)`,
    :math:`z\sim\mathcal N(\mu, s^2)` i.i.d. over tokens and experts.

    .. math:: \mathbb E\,\#\{i : \rho_i + b > 0\}
              = n\,\Big(1 - \Phi\Big(\frac{\operatorname{logit}(-b) - \mu}{s}\Big)\Big) = k
              \iff b_0 = -\sigma\big(\mu + s\,\Phi^{-1}(1 - k/n)\big),

    valid for :math:`0 < k < n` (then :math:`-1 < b_0 < 0`). Returns a float.
    """
    from scipy.special import expit, ndtri

    check_int(n, "n", low=1)
    k = check_real(k, "k", positive=True)
    if not k < n:
        raise ValueError(f"k must be < n = {n}, got {k}")
    mean = check_real(mean, "mean")
    std = check_real(std, "std", positive=True)
    return -float(expit(mean + std * ndtri(1.0 - k / n)))


class BalancedRouting(NamedTuple):
    r"""Result of :func:`balance_by_bias`.

    ``mask`` ``(T, n)`` boolean: the last routing, :math:`\operatorname{argtop}_k(\rho_t + b)`;
    ``bias`` ``(n,)``: the bias that produced it; ``steps``: the number of bias updates made
    before every expert had :math:`Tk/n` tokens, or ``None`` if that never happened.
    """

    mask: torch.Tensor
    bias: torch.Tensor
    steps: int | None


def balance_by_bias(scores, k: int, alpha: float, max_steps: int = 10_000,
                    bias=None) -> BalancedRouting:
    r"""Adjust a bias by sign steps until top-:math:`k` routing of a fixed batch is balanced.

    Each step routes with :func:`route_topk`, counts the tokens :math:`c_i` of every expert and,
    unless every :math:`c_i = Tk/n`, sets

    .. math:: b \leftarrow b - \alpha\,\operatorname{sign}\big(c - Tk/n\big) .

    With ``k = 1``, ``T = n`` and ``scores = -C`` this is the bias method for the linear
    assignment problem with cost ``C``; in the cost form the bias of an over-used column goes
    *up*. A balanced result is an optimal balanced routing (chapter 27).

    Shapes: ``scores`` ``(T, n)`` with :math:`Tk/n` an integer, ``bias`` ``(n,)`` (default 0).
    The bias is kept in float32 for float16/bfloat16 scores (else in the scores' dtype): in
    bfloat16, :math:`b - \alpha` would stop changing once :math:`\alpha` is below half an ulp
    of :math:`b` (``alpha = 1e-4`` at :math:`|b| \approx 0.05`), and the iteration would stall.
    """
    scores = as_float_tensor(scores, "scores", min_ndim=2)
    check_finite(scores, "scores")
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (T, n) matrix, got shape {tuple(scores.shape)}")
    T, n = scores.shape
    check_int(k, "k", low=1, high=n)
    if (T * k) % n:
        raise ValueError(f"a balanced routing needs T k / n to be an integer, got T = {T}, "
                         f"k = {k}, n = {n}")
    alpha = _alpha(alpha)
    check_int(max_steps, "max_steps", low=0)
    cap = T * k // n
    dtype = work_dtype(scores.dtype)
    if bias is None:
        b = torch.zeros(n, dtype=dtype, device=scores.device)
    else:
        b = as_float_tensor(bias, "bias").to(device=scores.device, dtype=dtype)
        check_finite(b, "bias")
        if b.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(b.shape)}")
    for step in range(max_steps + 1):
        mask = route_topk(scores, b, k)
        over = mask.sum(dim=0) - cap
        if not over.any():
            return BalancedRouting(mask, b, step)
        if step < max_steps:
            b = b - alpha * torch.sign(over).to(dtype)
    return BalancedRouting(mask, b, None)
