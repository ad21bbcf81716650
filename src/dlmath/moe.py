r"""Mixture of experts as the best sparse approximation of a dense feed-forward layer.

Chapter: *Mixture of experts from a geometric view* (``notebooks/26-moe-geometry.ipynb``).

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

import torch

from ._checks import as_float_tensor, check_finite, check_int, check_no_nan, check_probability

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
]


def _vectors(V, name: str = "V") -> torch.Tensor:
    """A floating tensor of shape (..., n, d) without NaN or inf."""
    V = as_float_tensor(V, name, min_ndim=2)
    check_finite(V, name)
    return V


def split_ffn_experts(W_A, W_B, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Cut a feed-forward layer's weights into ``n`` equal experts.

    .. math:: W^{(A)}_i = W^{(A)}_{[:,\,(i-1)c:ic]}, \qquad W^{(B)}_i = W^{(B)}_{[(i-1)c:ic,\,:]},
              \qquad c = D/n .

    Shapes: ``W_A`` is ``(d, D)``, ``W_B`` is ``(D, d_out)`` and ``n`` must divide ``D``;
    returns ``(A, B)`` with ``A[i]`` of shape ``(d, c)`` and ``B[i]`` of shape ``(c, d_out)``
    (views of the inputs, not copies).
    """
    W_A = as_float_tensor(W_A, "W_A", min_ndim=2)
    W_B = as_float_tensor(W_B, "W_B", min_ndim=2)
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
    x = as_float_tensor(x, "x")
    if x.shape[-1] != A.shape[1]:
        raise ValueError(f"x must have last dimension d = {A.shape[1]} (the rows of W_A), "
                         f"got {x.shape[-1]}")
    if not callable(activation):
        raise TypeError(f"activation must be callable, got {type(activation).__name__}")
    hidden = x @ W_A
    if W_gate is not None:
        W_gate = as_float_tensor(W_gate, "W_gate", min_ndim=2)
        if W_gate.shape != W_A.shape:
            raise ValueError(f"W_gate must have the shape {tuple(W_A.shape)} of W_A, got "
                             f"{tuple(W_gate.shape)}")
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
    ascending, ties to the lower index.
    """
    V = _vectors(V)
    return topk_indices(torch.linalg.vector_norm(V, dim=-1), k)


def _kept_mask(idx: torch.Tensor, n: int, dtype) -> torch.Tensor:
    mask = torch.zeros(*idx.shape[:-1], n, dtype=dtype, device=idx.device)
    return mask.scatter(-1, idx, 1.0)


def subset_error(V, idx) -> torch.Tensor:
    r"""Squared error of approximating the full sum by the sum over a subset.

    .. math:: \Big\|\sum_{i\in S} v_i - \sum_{i=1}^n v_i\Big\|^2
              = \Big\|\sum_{i\notin S} v_i\Big\|^2

    Shapes: ``V`` ``(..., n, d)``, ``idx`` ``(..., k)`` of distinct integers in ``[0, n)``
    (broadcast against ``V``'s batch dimensions); result ``(...)``.
    """
    V = _vectors(V)
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
    batch = torch.broadcast_shapes(V.shape[:-2], idx.shape[:-1])
    idx = idx.expand(*batch, idx.shape[-1])
    dropped = 1.0 - _kept_mask(idx, n, V.dtype)
    rest = (dropped.unsqueeze(-1) * V).sum(dim=-2)
    return rest.square().sum(dim=-1)


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
    (by default :math:`2^{16}`, enough for every ``k`` at ``n <= 18``).
    """
    V = _vectors(V)
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
    return idx, errs.gather(-1, best.unsqueeze(-1)).squeeze(-1)


def unit_direction(v, dim: int = -1) -> torch.Tensor:
    r"""The direction :math:`e = v/\|v\|` of each vector, with :math:`e = 0` for :math:`v = 0`.

    Each vector is first divided by its largest entry, so huge (``1e300``) and tiny
    (``1e-300``) vectors neither overflow nor underflow. Shapes: ``(..., d)`` -> ``(..., d)``.
    """
    v = as_float_tensor(v, "v")
    check_finite(v, "v")
    m = v.abs().amax(dim=dim, keepdim=True)
    w = v / torch.where(m > 0, m, torch.ones_like(m))
    norm = torch.linalg.vector_norm(w, dim=dim, keepdim=True)
    return w / torch.where(norm > 0, norm, torch.ones_like(norm))


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
    if isinstance(experts, torch.Tensor) or not isinstance(experts, Sequence):
        raise TypeError("experts must be a sequence of callables")
    n = scores.shape[1]
    if len(experts) != n:
        raise ValueError(f"scores has {n} columns but {len(experts)} experts were given")
    check_finite(scores, "scores")
    if (scores < 0).any():
        raise ValueError("scores are magnitudes p_i = h(x W_R) and must be >= 0")
    chosen = topk_indices(scores.detach(), k)  # (T, k); selection is piecewise constant
    counts = torch.zeros(n, dtype=torch.long, device=x.device)
    parts = []
    for i, expert in enumerate(experts):
        tokens = (chosen == i).any(dim=-1).nonzero().squeeze(-1)
        counts[i] = tokens.numel()
        if tokens.numel() == 0:
            continue
        e = unit_direction(expert(x[tokens]))
        parts.append((tokens, scores[tokens, i].unsqueeze(-1) * e))
    d_out = parts[0][1].shape[-1]
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
    clamped at 0 against rounding.
    """
    V = _vectors(V)
    p = check_probability(p, "p")
    sq = V.square().sum(dim=-1)
    safe = torch.where(p > 0, p, torch.ones_like(p))
    terms = torch.where(p > 0, sq / safe,
                        torch.where(sq > 0, torch.full_like(sq, math.inf), torch.zeros_like(sq)))
    return (terms.sum(dim=-1) - V.sum(dim=-2).square().sum(dim=-1)).clamp_min(0.0)
