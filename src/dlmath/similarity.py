r"""Cosine similarity of whole vectors and of their blocks ("local" against "global").

Chapter: *Local and global cosine similarity* (``notebooks/03-local-global-cosine.ipynb``).

Split :math:`x, y \in \mathbb{R}^N` into :math:`K` blocks :math:`x_k, y_k` and write
:math:`a_k = \|x_k\|`, :math:`b_k = \|y_k\|`, :math:`c_k = \cos(x_k, y_k)`. Then

.. math:: \cos(x, y) = \cos(a, b)\,\sum_k w_k c_k, \qquad w_k = \frac{a_k b_k}{\sum_j a_j b_j},

so the global cosine is a weighted mean of the local ones shrunk by the cosine of the
norm profiles, and :math:`\min(0, \min_k c_k) \le \cos(x, y) \le \max(0, \max_k c_k)`.

Conventions for every function here:

* ``x`` and ``y`` are floating tensors reduced along ``dim`` (default ``-1``) and broadcast
  over the other dimensions; results keep the inputs' device and promoted dtype. Sums are
  accumulated in float64 (except on MPS, which has none) after scaling each vector by its
  largest entry, so huge (``1e300``) and tiny (``1e-300``) entries neither overflow nor
  underflow.
* **Zero vectors.** The cosine of a zero vector with anything is defined as ``0``. This is
  the convention of ``torch.nn.functional.cosine_similarity`` and the one that keeps the
  block identity exact: a zero block has weight :math:`w_k = 0`, and when every weight is
  0 (no block has both parts non-zero) the weighted mean is defined as 0, as is the global
  cosine.
* Cosines are clamped to ``[-1, 1]`` (rounding can otherwise give ``1 + 1e-16``).
* Norms are returned in the input dtype and can exceed its range: a float16 block of norm
  above 65504 comes back as ``inf`` (its cosine is still computed without overflow).
* NaN or an infinity raises ``ValueError`` (an infinite vector has no direction);
  integer tensors raise ``TypeError``; empty vectors raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import as_float_tensor, check_dim, check_finite, check_int

__all__ = [
    "cosine",
    "pearson",
    "block_stats",
    "block_decomposition",
    "global_from_blocks",
    "hull_bounds",
    "concat_blocks",
    "simpson_blocks",
]


def _vector(x, name: str) -> torch.Tensor:
    x = as_float_tensor(x, name)
    check_finite(x, name)
    return x


def _pair(x, y, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _vector(x, "x"), _vector(y, "y")
    try:
        x, y = torch.broadcast_tensors(x, y)
    except RuntimeError as exc:
        raise ValueError(f"x and y must have broadcastable shapes, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}") from exc
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    check_dim(x, dim)
    return x.to(dtype), y.to(dtype)


def _work(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the accumulation dtype (float64 where the device has it)."""
    return x if x.device.type == "mps" else x.to(torch.float64)


def _unit_scale(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` divided by its largest absolute entry along ``dim`` (zero slices left as they are)."""
    m = x.abs().amax(dim=dim, keepdim=True)
    return x / torch.where(m > 0, m, torch.ones_like(m))


def _scaled_product(x: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    """``x * y`` times the power of two that brings its largest entry along ``dim`` to
    ``[1/4, 1)``, from mantissas and exponents, so tiny factors cannot underflow the product
    (zero slices stay zero)."""
    (mx, ex), (my, ey) = torch.frexp(x), torch.frexp(y)
    m, e = mx * my, ex + ey
    top = torch.where(m != 0, e, -(1 << 20)).amax(dim=dim, keepdim=True)  # |e| < 2300
    return m * torch.exp2((e - top).clamp(max=0).to(m.dtype))     # zeros: any exponent <= 0


def _norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Euclidean norm along ``dim`` that neither overflows nor underflows (scaled first)."""
    m = x.abs().amax(dim=dim)
    return m * torch.linalg.vector_norm(_unit_scale(x, dim), dim=dim)


def _cosine(x: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosine of validated tensors of the same shape, in their (working) dtype."""
    x, y = _unit_scale(x, dim), _unit_scale(y, dim)
    den = torch.linalg.vector_norm(x, dim=dim) * torch.linalg.vector_norm(y, dim=dim)
    num = (x * y).sum(dim=dim)
    c = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                    torch.zeros_like(den))
    return c.clamp(-1.0, 1.0)


def cosine(x, y, dim: int = -1) -> torch.Tensor:
    r"""Cosine similarity along ``dim``.

    .. math:: \cos(x, y) = \frac{\langle x, y\rangle}{\|x\|\,\|y\|},
              \qquad \cos(x, y) = 0 \text{ if } x = 0 \text{ or } y = 0.

    Shapes: ``x`` and ``y`` broadcast to ``(..., n)``; the result has shape ``(...)``.
    Agrees with ``torch.nn.functional.cosine_similarity`` (including its value 0 on zero
    vectors) but never overflows: each vector is scaled by its largest entry first and the
    sums are accumulated in float64.
    """
    x, y = _pair(x, y, dim)
    return _cosine(_work(x), _work(y), dim).to(x.dtype)


def pearson(x, y, dim: int = -1) -> torch.Tensor:
    r"""Pearson correlation coefficient, the cosine of the centred vectors.

    .. math:: r(x, y) = \cos\big(x - \bar x\,\mathbf 1,\ y - \bar y\,\mathbf 1\big)

    Shapes as :func:`cosine`. A constant ``x`` or ``y`` gives exactly ``r = 0`` (the
    zero-vector convention; ``numpy.corrcoef`` returns NaN there). Each vector is divided by
    its largest entry before it is centred (``r`` is scale invariant), so the mean of entries
    near the largest float cannot overflow and a constant vector centres to exactly 0.
    """
    x, y = _pair(x, y, dim)
    xs, ys = _unit_scale(_work(x), dim), _unit_scale(_work(y), dim)
    xc = xs - xs.mean(dim=dim, keepdim=True)
    yc = ys - ys.mean(dim=dim, keepdim=True)
    return _cosine(xc, yc, dim).to(x.dtype)


def _check_sizes(sizes, n: int) -> list[int]:
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()
    if not isinstance(sizes, Sequence) or isinstance(sizes, str) or len(sizes) == 0:
        raise TypeError(f"sizes must be a non-empty sequence of ints, got {sizes!r}")
    sizes = [check_int(s, "each entry of sizes", low=1) for s in sizes]
    if sum(sizes) != n:
        raise ValueError(f"sizes must add up to the length {n} of x and y along dim, "
                         f"got {sum(sizes)}")
    return sizes


def block_stats(x, y, sizes, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Norms and cosines of consecutive blocks.

    Splits ``x`` and ``y`` along ``dim`` into blocks of lengths ``sizes`` and returns
    ``(a, b, c)`` with :math:`a_k = \|x_k\|`, :math:`b_k = \|y_k\|` and
    :math:`c_k = \cos(x_k, y_k)` (0 for a zero block).

    Shapes: ``x``, ``y`` broadcast to ``(..., n)`` with ``sum(sizes) == n``; each output has
    shape ``(..., K)``, ``K = len(sizes)``. ``sizes`` entries must be ints >= 1.
    """
    x, y = _pair(x, y, dim)
    sizes = _check_sizes(sizes, x.shape[dim])
    xw = torch.split(_work(x), sizes, dim=dim)
    yw = torch.split(_work(y), sizes, dim=dim)
    a = torch.stack([_norm(xk, dim) for xk in xw], dim=-1)
    b = torch.stack([_norm(yk, dim) for yk in yw], dim=-1)
    c = torch.stack([_cosine(xk, yk, dim) for xk, yk in zip(xw, yw, strict=True)], dim=-1)
    return a.to(x.dtype), b.to(x.dtype), c.to(x.dtype)


def _check_blocks(a, b, c, dim: int):
    a, b = _vector(a, "a"), _vector(b, "b")
    c = _vector(c, "c")
    if (a < 0).any() or (b < 0).any():
        raise ValueError("a and b are block norms and must be >= 0")
    if (c.abs() > 1).any():
        raise ValueError("c holds cosines and must lie in [-1, 1]")
    try:
        a, b, c = torch.broadcast_tensors(a, b, c)
    except RuntimeError as exc:
        raise ValueError(f"a, b, c must have broadcastable shapes, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}, {tuple(c.shape)}") from exc
    check_dim(a, dim)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), c.dtype)
    return a.to(dtype), b.to(dtype), c.to(dtype)


def block_decomposition(a, b, c, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two factors of the block identity: ``(shrink, mean)``.

    .. math:: \text{shrink} = \cos(a, b) \in [0, 1], \qquad
              \text{mean} = \sum_k w_k c_k,\quad w_k = \frac{a_k b_k}{\sum_j a_j b_j},

    with ``mean = 0`` when every :math:`a_k b_k = 0`. The weights are computed without
    underflow: a block that is the only overlap of the two profiles has weight 1 even where
    :math:`a_k b_k` itself is below the float64 range (``a = [1, 1e-170, 0]``,
    ``b = [0, 1e-170, 1]`` give ``mean = c_2``; ``shrink`` then underflows to 0). Their product is
    :func:`global_from_blocks`. Shapes: ``a``, ``b``, ``c`` broadcast to ``(..., K)``;
    outputs ``(...)``.
    """
    a, b, c = _check_blocks(a, b, c, dim)
    aw, bw, cw = _unit_scale(_work(a), dim), _unit_scale(_work(b), dim), _work(c)
    shrink = _cosine(aw, bw, dim)
    ab = _scaled_product(aw, bw, dim)     # w_k is scale-free: rescale so tiny a_k b_k survive
    total = ab.sum(dim=dim)
    mean = torch.where(total > 0, (ab * cw).sum(dim=dim) / torch.where(total > 0, total, 1.0),
                       torch.zeros_like(total))
    return shrink.to(a.dtype), mean.clamp(-1.0, 1.0).to(a.dtype)


def global_from_blocks(a, b, c, dim: int = -1) -> torch.Tensor:
    r"""The global cosine rebuilt from block norms and block cosines.

    .. math:: \cos(x, y) = \cos(a, b)\sum_k w_k c_k
              = \frac{\sum_k a_k b_k c_k}{\|a\|\,\|b\|}

    where ``(a, b, c)`` come from :func:`block_stats`. Shapes as :func:`block_decomposition`.
    """
    shrink, mean = block_decomposition(a, b, c, dim)
    return shrink * mean


def hull_bounds(c, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Bounds on the global cosine from the local ones alone.

    .. math:: \min\big(0, \min_k c_k\big) \le \cos(x, y) \le \max\big(0, \max_k c_k\big)

    Returns ``(lower, upper)`` of shape ``(...)`` for ``c`` of shape ``(..., K)``. For
    ``K >= 2`` both ends are sharp: norm profiles concentrated on the block of the smallest
    (largest) local cosine, or on two different blocks for the end ``0``, bring the global
    cosine arbitrarily close to them. For ``K = 1`` the global cosine is ``c_1`` itself.
    """
    c = _vector(c, "c")
    check_dim(c, dim)
    zero = torch.zeros((), dtype=c.dtype, device=c.device)
    return torch.minimum(c.amin(dim=dim), zero), torch.maximum(c.amax(dim=dim), zero)


def concat_blocks(tensors) -> tuple[torch.Tensor, list[int]]:
    """Flatten and concatenate a sequence of tensors (e.g. a model's per-tensor gradients).

    Returns ``(flat, sizes)`` ready for :func:`block_stats`. Every tensor must be a
    non-empty floating tensor, all on one device; they are cast to their common dtype.
    """
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence) or not tensors:
        raise TypeError("tensors must be a non-empty sequence of tensors")
    flats = [as_float_tensor(t, f"tensors[{i}]", min_ndim=0).reshape(-1)
             for i, t in enumerate(tensors)]
    for i, f in enumerate(flats[1:], start=1):
        if f.device != flats[0].device:
            raise ValueError(f"tensors must be on one device, got {flats[0].device} for "
                             f"tensors[0] and {f.device} for tensors[{i}]")
    dtype = flats[0].dtype
    for f in flats[1:]:
        dtype = torch.promote_types(dtype, f.dtype)
    return torch.cat([f.to(dtype) for f in flats]), [f.numel() for f in flats]


def simpson_blocks(x, y, groups) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The pooled Pearson correlation written as a block cosine (within and between groups).

    For samples :math:`(x_i, y_i)` in groups :math:`g = 1..G`, the centred vector splits into
    orthogonal parts, :math:`x - \bar x\mathbf 1 = (x - \bar x_{g(i)}) + (\bar x_{g(i)} - \bar x)`,
    so the pooled correlation is the global cosine of :math:`G + 1` blocks: the group-centred
    vectors of each group (block cosine = the group's own correlation :math:`r_g`) and the
    vector of group means (block cosine = the size-weighted correlation of the means):

    .. math:: r(x, y) = \cos(a, b)\sum_{k=1}^{G+1} w_k c_k .

    Returns ``(a, b, c)`` of shape ``(G + 1,)``: groups in increasing label order, then the
    between-group block. ``x``, ``y`` are 1-D of length ``N``; ``groups`` is a 1-D integer
    tensor of length ``N``. The centring is done on ``x`` and ``y`` divided by their largest
    entries (the norms are scaled back at the end), so entries near the largest float do not
    overflow the means.
    """
    x, y = _pair(x, y, -1)
    if x.ndim != 1:
        raise ValueError(f"x and y must be 1-D, got shape {tuple(x.shape)}")
    groups = torch.as_tensor(groups, device=x.device)
    if groups.dtype.is_floating_point or groups.dtype == torch.bool or groups.is_complex():
        raise TypeError(f"groups must hold integer labels, got {groups.dtype}")
    if groups.shape != x.shape:
        raise ValueError(f"groups must have the shape {tuple(x.shape)} of x, "
                         f"got {tuple(groups.shape)}")
    labels, index, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    mx, my = _work(x).abs().amax(), _work(y).abs().amax()
    xw, yw = _unit_scale(_work(x), -1), _unit_scale(_work(y), -1)
    means_x = torch.zeros(len(labels), dtype=xw.dtype, device=x.device).index_add_(0, index, xw)
    means_y = torch.zeros(len(labels), dtype=yw.dtype, device=x.device).index_add_(0, index, yw)
    means_x, means_y = means_x / counts, means_y / counts
    order = torch.argsort(index, stable=True)
    within_x, within_y = (xw - means_x[index])[order], (yw - means_y[index])[order]
    between_x, between_y = means_x[index] - xw.mean(), means_y[index] - yw.mean()
    sizes = counts.tolist() + [x.shape[0]]
    a, b, c = block_stats(torch.cat([within_x, between_x]), torch.cat([within_y, between_y]),
                          sizes)
    return (a * mx).to(x.dtype), (b * my).to(x.dtype), c.to(x.dtype)
