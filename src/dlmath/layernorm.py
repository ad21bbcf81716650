r"""RMSNorm, its Jacobian, and the elementwise maps proposed to replace it (DyT, DyISRU, softcap).

Chapter: *Replacing normalization by elementwise maps: DyT and DyISRU*
(``notebooks/23-dyt-normalization.ipynb``).

For :math:`x \in \mathbb{R}^d` the core of RMSNorm (no gain, no bias) is

.. math:: y = \frac{x}{\rho}, \qquad \rho = \sqrt{\tfrac1d \|x\|^2 + \epsilon},

and its coordinates are *exactly* inverse-square-root units with a coordinate-dependent
constant, :math:`y_i = \sqrt d\, x_i / \sqrt{x_i^2 + C_i}` with
:math:`C_i = \sum_{j \ne i} x_j^2 + d\epsilon` (:func:`rms_norm_isru_constants`). The
elementwise replacements freeze a statistic that RMSNorm recomputes for every vector:

* DyT, :math:`\gamma \tanh(\alpha x) + \beta`, freezes :math:`\rho`;
* DyISRU, :math:`\gamma \sqrt d\, x / \sqrt{x^2 + C} + \beta`, freezes :math:`C_i`;
* softcap, :math:`t \tanh(x / t)`, is a smooth clip to :math:`[-t, t]`.

Conventions:

* Reductions run along ``dim`` (default ``-1``) and broadcast over the other dimensions;
  results keep the input's device and dtype. RMSNorm is computed after dividing each vector
  by its largest entry, in float32 at least (float64 stays float64), so float16 inputs above
  256 (whose squares overflow float16) and float64 inputs near ``1e300`` are handled; with
  ``eps > 0`` the root mean square is combined with :math:`\sqrt\epsilon` by ``hypot``, so
  tiny vectors (float32 near ``1e-25``, float64 near ``1e-160``) give :math:`x/\sqrt\epsilon`
  rather than 0.
* The elementwise maps (DyT, DyISRU, softcap) also compute in float32 at least and cast the
  result back, so float16/bfloat16 inputs do not lose a constant that lies outside their
  range (e.g. a DyISRU constant :math:`C > 65504`, an :math:`\alpha` near ``1e5``).
* **Zero vector.** Without ``eps``, RMSNorm maps :math:`x = 0` to :math:`0`. That is the
  value of the ``eps > 0`` map at 0 for every ``eps``, so it is the limit ``eps -> 0`` taken
  at the zero vector (the map itself is discontinuous there: it has no direction to keep),
  also when :math:`\sqrt\epsilon` underflows to 0 in the working dtype (float32 below
  ``eps ~ 1e-90``). Its Jacobian does not exist there, and :func:`rms_norm_jacobian` raises
  ``ValueError``; with ``eps > 0`` it is :math:`I/\sqrt\epsilon`, whose diagonal is ``inf``
  (off-diagonal 0) where :math:`1/\sqrt\epsilon` overflows the dtype.
* RMSNorm and its Jacobian refuse NaN and infinities (``ValueError``): an infinite vector has
  no well-defined direction. They also refuse empty input (a vector needs a width).
  The elementwise maps act like ``torch.tanh``: NaN propagates, :math:`\pm\infty` maps to
  the saturation value (:math:`\pm\gamma + \beta`, :math:`\pm\gamma\sqrt d + \beta`,
  :math:`\pm t`; DyT with :math:`\alpha = 0` is the constant :math:`\beta`, at
  :math:`\pm\infty` too), and an empty tensor gives an empty tensor.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_float_tensor, check_dim, check_finite, check_int, check_real, upcast_half

__all__ = [
    "rms_norm",
    "rms_norm_jacobian",
    "rms_norm_isru_constants",
    "dyt",
    "dyisru",
    "softcap",
]


def _vectors(x, dim: int) -> tuple[torch.Tensor, int]:
    x = as_float_tensor(x, "x")
    check_finite(x, "x")
    return x, check_dim(x, dim)


def _eps(eps) -> float:
    return check_real(eps, "eps", nonnegative=True)


def _parameter(value, name: str, like: torch.Tensor, *, nonnegative: bool = False,
               cast: bool = True):
    """A real scalar or a floating tensor (broadcastable to ``like``), finite; kept as a tensor
    when it is one so that autograd can learn it, and then moved to ``like``'s device and
    dtype (``cast=False``: left in its own dtype and device)."""
    if isinstance(value, torch.Tensor):
        t = as_float_tensor(value, name, min_ndim=0)
        check_finite(t, name)
        if nonnegative and (t < 0).any():
            raise ValueError(f"{name} must be >= 0 everywhere")
        try:
            torch.broadcast_shapes(t.shape, like.shape)
        except RuntimeError as exc:
            raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast against x "
                             f"of shape {tuple(like.shape)}") from exc
        return t.to(device=like.device, dtype=like.dtype) if cast else t
    return check_real(value, name, nonnegative=nonnegative)


def rms_norm(x, dim: int = -1, *, eps: float = 0.0) -> torch.Tensor:
    r"""The core of RMSNorm (no gain, no bias).

    .. math:: \operatorname{RMSNorm}(x) = \frac{x}{\rho}, \qquad
              \rho = \sqrt{\frac1d\sum_{i=1}^d x_i^2 + \epsilon},

    so that :math:`\sum_i y_i^2 = d` when :math:`\epsilon = 0` and :math:`|y_i| \le \sqrt d`.
    The zero vector maps to zero (see the module notes).

    Shapes: ``x`` is ``(..., d, ...)`` reduced along ``dim``; the output has the shape,
    device and dtype of ``x``. ``eps >= 0``.
    """
    x, dim = _vectors(x, dim)
    eps = _eps(eps)
    w = upcast_half(x)
    m = w.abs().amax(dim=dim, keepdim=True)
    safe = torch.where(m > 0, m, torch.ones_like(m))
    u = w / safe                                   # entries in [-1, 1]: no overflow below
    if eps > 0:
        # rho = hypot(rms(x), sqrt(eps)) with rms(x) = m rms(u) <= m: no overflow, and a tiny
        # vector gives x / sqrt(eps) (forming eps / m^2 instead overflowed there and returned
        # 0). vector_norm, unlike sqrt(mean(u^2)), has a finite backward at the zero vector.
        r = torch.linalg.vector_norm(u, dim=dim, keepdim=True) / math.sqrt(u.shape[dim])
        rho = torch.hypot(safe * r, torch.tensor(math.sqrt(eps), dtype=w.dtype, device=w.device))
        # the zero vector: 0 / sqrt(eps) = 0, also where sqrt(eps) underflows to 0 (rho = 0)
        return (w / torch.where(rho > 0, rho, torch.ones_like(rho))).to(x.dtype)
    r = u.square().mean(dim=dim, keepdim=True).sqrt()   # rms(x) / m, in [1/sqrt(d), 1]
    return torch.where(m > 0, u / r, torch.zeros_like(u)).to(x.dtype)


def rms_norm_jacobian(x, *, eps: float = 0.0) -> torch.Tensor:
    r"""Jacobian of :func:`rms_norm` along the last dimension.

    .. math:: J = \frac{\partial y}{\partial x}
              = \frac{1}{\rho}\Big(I - \frac{y y^\top}{d}\Big),
              \qquad y = \operatorname{RMSNorm}(x),

    which for :math:`\epsilon = 0` equals :math:`\sqrt d\,(I/\|x\| - x x^\top/\|x\|^3)`: a
    symmetric matrix, :math:`1/\rho` times the orthogonal projector onto :math:`x^\perp`
    (so :math:`Jx = 0`).

    Shapes: ``x`` is ``(..., d)``; the output is ``(..., d, d)`` with the device and dtype of
    ``x``. Raises ``ValueError`` at a zero vector when ``eps == 0`` (no derivative there);
    with ``eps > 0`` it is :math:`I/\sqrt\epsilon` there, ``inf`` on the diagonal where that
    overflows (see the module notes).
    """
    x, _ = _vectors(x, -1)
    eps = _eps(eps)
    if eps == 0 and bool((x == 0).all(dim=-1).any()):
        raise ValueError("rms_norm is not differentiable at the zero vector when eps == 0 "
                         "(x contains a zero vector along its last dimension)")
    d = x.shape[-1]
    w = upcast_half(x)
    y = rms_norm(w, -1, eps=eps)
    m = w.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(m > 0, m, torch.ones_like(m))
    rho = safe * (w / safe).square().mean(dim=-1, keepdim=True).sqrt()
    if eps > 0:
        rho = torch.hypot(rho, torch.tensor(math.sqrt(eps), dtype=rho.dtype, device=rho.device))
    eye = torch.eye(d, dtype=w.dtype, device=w.device)
    proj = eye - y.unsqueeze(-1) * y.unsqueeze(-2) / d
    # zero entries stay 0 where rho underflowed to 0 (the zero vector, sqrt(eps) below the dtype)
    jac = torch.where(proj == 0, proj, proj / rho.unsqueeze(-1))
    return jac.to(x.dtype)


def rms_norm_isru_constants(x, dim: int = -1, *, eps: float = 0.0) -> torch.Tensor:
    r"""The constants that make each coordinate of RMSNorm an inverse square root unit.

    .. math:: C_i = \sum_{j \ne i} x_j^2 + d\,\epsilon, \qquad\text{so that}\qquad
              \operatorname{RMSNorm}(x)_i = \frac{\sqrt d\, x_i}{\sqrt{x_i^2 + C_i}}
              = \operatorname{DyISRU}(x; C)_i \text{ with } \texttt{d} = d .

    :math:`C_i` is the energy of the *other* coordinates. It is summed as an exclusive
    prefix sum plus an exclusive suffix sum of the squares, never as
    :math:`\|x\|^2 - x_i^2`, which cancels catastrophically when :math:`x_i` is an outlier.

    Shapes: ``x`` is ``(..., d, ...)``; the output has the shape of ``x`` (float32 at least).
    """
    x, dim = _vectors(x, dim)
    eps = _eps(eps)
    d = x.shape[dim]
    sq = upcast_half(x).square()
    before = torch.cat([torch.zeros_like(sq.narrow(dim, 0, 1)),
                        torch.cumsum(sq, dim=dim).narrow(dim, 0, d - 1)], dim=dim)
    after = torch.flip(torch.cumsum(torch.flip(sq, [dim]), dim=dim), [dim])
    after = torch.cat([after.narrow(dim, 1, d - 1), torch.zeros_like(sq.narrow(dim, 0, 1))],
                      dim=dim)
    return before + after + d * eps


def dyt(x, alpha, *, gamma=1.0, beta=0.0) -> torch.Tensor:
    r"""Dynamic Tanh (DyT), the elementwise map proposed to replace normalization layers.

    .. math:: \operatorname{DyT}(x) = \gamma \odot \tanh(\alpha x) + \beta .

    With :math:`\gamma = \sqrt d` and :math:`\alpha = 1/(\rho\sqrt d)` it is the solution of
    the diagonal part of the RMSNorm Jacobian with :math:`\rho` frozen.

    Shapes: ``x`` any floating tensor; ``alpha``, ``gamma``, ``beta`` real numbers or tensors
    that broadcast against ``x`` (tensors are cast to the device and dtype of ``x`` and stay in
    the autograd graph, so they can be learned). The output has the broadcast shape and the
    dtype of ``x``. ``alpha = 0`` (or a zero entry of ``alpha``) gives the constant
    :math:`\beta`, also at :math:`x = \pm\infty`.
    """
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    w = upcast_half(x)                             # a half alpha of 1e5 is inf, and inf * 0 nan
    alpha = _parameter(alpha, "alpha", w)
    gamma = _parameter(gamma, "gamma", w)
    beta = _parameter(beta, "beta", w)
    w = torch.where(torch.isinf(w) & (torch.as_tensor(alpha) == 0), 0.0, w)  # not 0 * inf = nan
    return (gamma * torch.tanh(alpha * w) + beta).to(x.dtype)


def dyisru(x, C, *, d: int | None = None, gamma=1.0, beta=0.0) -> torch.Tensor:
    r"""Dynamic inverse square root unit (DyISRU).

    .. math:: \operatorname{DyISRU}(x)_i = \gamma\,\sqrt d\,\frac{x_i}{\sqrt{x_i^2 + C}} + \beta,
              \qquad C \ge 0,

    where the factor :math:`\sqrt d` is included only when ``d`` is given. With ``d`` the width
    and ``C = rms_norm_isru_constants(x)`` it reproduces :func:`rms_norm` exactly. ``C = 0``
    gives :math:`\gamma\sqrt d\operatorname{sign}(x) + \beta` with
    :math:`\operatorname{sign}(0) = 0`.
    The ratio is computed as :math:`x/\operatorname{hypot}(x, \sqrt C)`, so large ``x`` does
    not overflow.

    Shapes: ``x`` any floating tensor; ``C`` (``>= 0``), ``gamma``, ``beta`` real numbers or
    tensors broadcastable against ``x``; ``d`` a positive int or ``None``.
    """
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    w = upcast_half(x)
    C = _parameter(C, "C", w, nonnegative=True, cast=False)
    gamma = _parameter(gamma, "gamma", w)
    beta = _parameter(beta, "beta", w)
    scale = 1.0 if d is None else math.sqrt(check_int(d, "d", low=1))
    # sqrt before narrowing: C (e.g. from rms_norm_isru_constants) may exceed x's dtype's range
    if isinstance(C, torch.Tensor):
        root_c = C.to(w.device).sqrt().to(w.dtype)
    else:
        root_c = torch.tensor(math.sqrt(C), dtype=w.dtype, device=w.device)
    zero = (w == 0) & (root_c == 0)                # sign(0) = 0, with a zero gradient as
    den = torch.hypot(torch.where(zero, 1.0, w), root_c)   # sign's (hypot's at 0 is NaN)
    ratio = torch.where(zero, torch.zeros_like(den), w / den)
    ratio = torch.where(torch.isinf(w), torch.sign(w), ratio)
    return (gamma * scale * ratio + beta).to(x.dtype)


def softcap(x, t) -> torch.Tensor:
    r"""Soft capping, a smooth clip to :math:`[-t, t]` (Gemma 2's logit cap).

    .. math:: \operatorname{softcap}(x, t) = t \tanh(x / t), \qquad
              \big|\operatorname{softcap}(x, t) - \operatorname{clip}(x, -t, t)\big|
              \le t\,(1 - \tanh 1),

    with equality at :math:`|x| = t`. Shapes: ``x`` any floating tensor; ``t > 0`` a real
    number. The output has the shape, device and dtype of ``x``.
    """
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    t = check_real(t, "t", positive=True)
    w = upcast_half(x)
    return (t * torch.tanh(w / t)).to(x.dtype)
