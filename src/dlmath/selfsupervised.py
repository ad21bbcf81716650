r"""Linear feature fields, shift operators and block extrapolation (the QB-Heat predictor).

Chapter: *The heat equation as a pretext task* (``notebooks/33-heat-equation-pretext.ipynb``).

A feature map is a grid of vectors :math:`z(x,y)\in\mathbb{R}^d`. QB-Heat assumes that
neighbouring features differ by one shared linear map per axis,

.. math:: z(x+1,y) = M_x\,z(x,y), \qquad z(x,y+1) = M_y\,z(x,y),

which is the one-step form of the first-order system :math:`\partial_x z = Az`,
:math:`\partial_y z = Bz` (exactly :math:`M_x=e^{A}`, :math:`M_y=e^{B}`; Euler's step gives
:math:`I+A`, :math:`I+B`). The system has a solution for every start only if :math:`AB=BA`,
and then every solution also solves :math:`z_{xx}+Sz_{yy}=0` with :math:`S=-A^2B^{-2}`.

Conventions for every function here:

* A field has shape ``(..., H, W, d)``: the grid axis ``x`` is ``dim=-3`` (rows, ``H``
  positions), the grid axis ``y`` is ``dim=-2`` (columns, ``W`` positions), and the feature
  vector is ``dim=-1``. Leading dimensions are a batch (images).
* Matrices are ``(d, d)`` (or batches ``(..., d, d)`` where stated); results keep the
  inputs' device and promoted dtype.
* NaN or an infinity raises ``ValueError``; integer tensors raise ``TypeError``; an empty
  tensor (e.g. a batch of zero images) raises ``ValueError`` naming the argument.
* float16/bfloat16 inputs are computed in float32 (torch's CPU eigen-, SVD- and pseudo-inverse
  routines refuse half precision, and repeated half-precision products drift) and the result is
  returned in the input's dtype.
"""

from __future__ import annotations

import torch

from ._checks import (
    as_float_tensor,
    check_choice,
    check_device,
    check_finite,
    check_float_dtype,
    check_int,
    check_matrix,
    check_real,
    work_dtype,
)

__all__ = [
    "commuting_pair",
    "anisotropy_matrix",
    "linear_field",
    "fit_shift_operator",
    "extrapolate_block",
    "block_mask",
    "random_patch_mask",
]


def _square(M, name: str) -> torch.Tensor:
    M = check_matrix(M, name)
    if M.shape[-1] != M.shape[-2]:
        raise ValueError(f"{name} must be square, got shape {tuple(M.shape)}")
    return M


def _same_device(*tensors: torch.Tensor) -> torch.dtype:
    devs = {t.device for t in tensors}
    if len(devs) > 1:
        raise ValueError(f"inputs must be on the same device, got {sorted(map(str, devs))}")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def commuting_pair(d: int, *, scale: float = 0.1, coeffs=(0.0, 0.5, 1.0), generator=None,
                   dtype: torch.dtype = torch.float64, device=None):
    r"""A random matrix :math:`A` of spectral radius ``scale`` and :math:`B=p(A)`.

    .. math:: A = \text{scale}\cdot G/\rho(G),\quad G_{ij}\sim\mathcal N(0,1),\qquad
              B = \sum_k c_k A^k,

    with :math:`c_k` = ``coeffs[k]``. A polynomial in :math:`A` commutes with :math:`A`, so
    :math:`AB=BA` up to rounding. Returns ``(A, B)``, each ``(d, d)``. ``generator`` fixes the
    draw (its device is used when ``device`` is None); ``dtype`` must be a floating dtype
    (``TypeError`` otherwise; float16/bfloat16 are drawn and multiplied in float32, then
    rounded, so :math:`AB=BA` holds only to that rounding). ``d = 1`` gives
    :math:`A=\pm\text{scale}`.
    """
    check_int(d, "d", low=1)
    check_float_dtype(dtype)
    scale = check_real(scale, "scale", nonnegative=True)
    coeffs = [check_real(c, f"coeffs[{k}]") for k, c in enumerate(coeffs)]
    if not coeffs:
        raise ValueError("coeffs must hold at least one coefficient")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    device = check_device(device)
    work = work_dtype(dtype)
    G = torch.randn(d, d, generator=generator, dtype=work, device=device)
    rho = torch.linalg.eigvals(G).abs().max().to(work)
    A = scale * G / rho
    B = torch.zeros_like(A)
    P = torch.eye(d, dtype=work, device=A.device)
    for c in coeffs:
        B = B + c * P
        P = P @ A
    return A.to(dtype), B.to(dtype)


def anisotropy_matrix(A, B) -> torch.Tensor:
    r"""The matrix :math:`S` for which solutions of :math:`z_x=Az,\ z_y=Bz` solve
    :math:`z_{xx}+Sz_{yy}=0`:

    .. math:: S = -A^2\,(B^2)^{-1}.

    Shapes: ``A`` and ``B`` are ``(..., d, d)`` (broadcast); the result too. Computed by a
    solve, not an explicit inverse. Raises ``ValueError`` when :math:`B^2` is singular to
    working precision (smallest singular value below ``d * eps`` times the largest, ``eps`` of
    the working dtype: float32 for half-precision inputs), since then no such :math:`S` exists
    in general.
    """
    A, B = _square(A, "A"), _square(B, "B")
    dtype = _same_device(A, B)
    work = work_dtype(dtype)
    A, B = A.to(work), B.to(work)
    if A.shape[-1] != B.shape[-1]:
        raise ValueError(f"A and B must have the same size, got {A.shape[-1]} and {B.shape[-1]}")
    B2 = B @ B
    sv = torch.linalg.svdvals(B2)
    tol = B2.shape[-1] * torch.finfo(work).eps
    if bool((sv[..., -1] <= tol * sv[..., 0]).any()):
        raise ValueError("B @ B is singular to working precision, so S = -A^2 B^-2 does not "
                         "exist; B must be invertible")
    A2 = A @ A
    try:
        batch = torch.broadcast_shapes(A2.shape[:-2], B2.shape[:-2])
    except RuntimeError as exc:
        raise ValueError(f"A of shape {tuple(A.shape)} and B of shape {tuple(B.shape)} do not "
                         "broadcast") from exc
    # solve needs both batch shapes spelled out (a (d, d) right-hand side against a batch of
    # B2 would be read as a batch of vectors)
    A2, B2 = A2.expand(*batch, *A2.shape[-2:]), B2.expand(*batch, *B2.shape[-2:])
    return (-torch.linalg.solve(B2, A2, left=False)).to(dtype)


def linear_field(A, B, z0, H: int, W: int, *, dx: float = 1.0, dy: float = 1.0) -> torch.Tensor:
    r"""The field :math:`z(x,y)=e^{xA}e^{yB}z_0` on the grid :math:`x=i\,\Delta x`,
    :math:`y=j\,\Delta y`, :math:`0\le i<H`, :math:`0\le j<W`.

    ``z0`` is ``(..., d)`` (one start per image); ``A``, ``B`` are ``(d, d)``. Returns
    ``(..., H, W, d)`` with ``out[..., i, j, :]`` :math:`=e^{i\Delta x A}e^{j\Delta y B}z_0`,
    through ``torch.linalg.matrix_exp``. When :math:`AB=BA` this solves :math:`z_x=Az`,
    :math:`z_y=Bz` exactly; otherwise only :math:`z_x=Az` holds (the order of the two
    exponentials is the one written).
    """
    A, B = _square(A, "A"), _square(B, "B")
    z0 = as_float_tensor(z0, "z0")
    check_finite(z0, "z0")
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError("A and B must be single (d, d) matrices")
    d = A.shape[-1]
    if B.shape[-1] != d or z0.shape[-1] != d:
        raise ValueError(f"A, B and z0 must share the size d, got {d}, {B.shape[-1]} and "
                         f"{z0.shape[-1]}")
    check_int(H, "H", low=1)
    check_int(W, "W", low=1)
    dx, dy = check_real(dx, "dx"), check_real(dy, "dy")
    dtype = _same_device(A, B, z0)
    work = work_dtype(dtype)
    A, B, z0 = A.to(work), B.to(work), z0.to(work)
    xs = dx * torch.arange(H, dtype=work, device=A.device)
    ys = dy * torch.arange(W, dtype=work, device=A.device)
    Ex = torch.linalg.matrix_exp(xs[:, None, None] * A)      # (H, d, d)
    Ey = torch.linalg.matrix_exp(ys[:, None, None] * B)      # (W, d, d)
    return torch.einsum("iab,jbc,...c->...ija", Ex, Ey, z0).to(dtype)


def _field(Z, name: str) -> torch.Tensor:
    Z = as_float_tensor(Z, name, min_ndim=3)
    check_finite(Z, name)
    return Z


def fit_shift_operator(Z, axis: str, *, ridge: float = 0.0) -> torch.Tensor:
    r"""The shared linear map between neighbouring features, by least squares.

    .. math:: \hat M = \arg\min_M \sum_{\text{images}}\sum_{p}\|z(p+e)-Mz(p)\|^2
              + \lambda\|M\|_F^2,

    where :math:`e` is one step along ``axis`` (``"x"``: ``dim=-3``, ``"y"``: ``dim=-2``) and
    the sum runs over every image and every pair of neighbours inside ``Z``
    (shape ``(..., H, W, d)``). Returns ``(d, d)``. With :math:`X` the ``(n, d)`` stacked
    sources, :math:`Y` their right/lower neighbours and :math:`X=U\Sigma V^\top` (thin SVD),

    .. math:: \hat M^\top = V\,\mathrm{diag}(f(\sigma_i))\,U^\top Y, \qquad
              f(\sigma) = \frac{\sigma}{\sigma^2+\lambda},

    i.e. :math:`\hat M^\top=(X^\top X+\lambda I)^{-1}X^\top Y` for ``ridge`` :math:`=\lambda>0`
    (without forming :math:`X^\top X`), and :math:`\hat M^\top = X^{+}Y` for ``ridge=0``: the
    least-squares solution, minimum-norm when :math:`X` is rank-deficient. There singular
    values :math:`\sigma_i \le d\,\varepsilon\,\sigma_{\max}` (:math:`\varepsilon` of the
    working dtype, float32 for half inputs) count as zero: the cutoff depends on ``d`` only,
    not on ``n``, so the number of images never zeroes a well-determined direction (a feature
    1000x smaller than the others is kept in float32). Raises ``ValueError`` if ``Z`` has
    fewer than two positions along ``axis`` or is empty.
    """
    Z = _field(Z, "Z")
    check_choice(axis, "axis", ("x", "y"))
    ridge = check_real(ridge, "ridge", nonnegative=True)
    dim = -3 if axis == "x" else -2
    n = Z.shape[dim]
    if n < 2:
        raise ValueError(f"Z needs at least two positions along axis {axis!r}, got {n}")
    d = Z.shape[-1]
    W = Z.to(work_dtype(Z.dtype))
    X = W.narrow(dim, 0, n - 1).reshape(-1, d)
    Y = W.narrow(dim, 1, n - 1).reshape(-1, d)
    U, sv, Vh = torch.linalg.svd(X, full_matrices=False)
    if ridge > 0:
        f = 1 / (sv + ridge / sv)                        # sigma / (sigma^2 + lam); 0 at sigma=0
    else:
        keep = sv > d * torch.finfo(sv.dtype).eps * sv[0]
        f = torch.where(keep, 1 / torch.where(keep, sv, 1), 0)
    return (Vh.mT @ (f[:, None] * (U.mT @ Y))).mT.to(Z.dtype)


def extrapolate_block(Zv, Mx, My, H: int, W: int, *, order: str = "yx") -> torch.Tensor:
    r"""Extend a visible top-left block to the full grid by the one-sided recursions
    :math:`z(x+1,y)=M_xz(x,y)` and :math:`z(x,y+1)=M_yz(x,y)`.

    ``Zv`` is ``(..., h, w, d)``, the features of rows :math:`0\le i<h` and columns
    :math:`0\le j<w`; the result is ``(..., H, W, d)`` and holds ``Zv`` unchanged in that block.
    ``order="yx"`` first extends each visible row to the right with :math:`M_y`, then every
    column downwards with :math:`M_x`, so the bottom-right quarter is
    :math:`M_x^{\,i-h+1}M_y^{\,j-w+1}z(h-1,w-1)`; ``order="xy"`` goes down first, giving
    :math:`M_y^{\,j-w+1}M_x^{\,i-h+1}z(h-1,w-1)` there. The two agree on the other masked
    parts, and everywhere when :math:`M_xM_y=M_yM_x`. Information only flows away from the
    block: masked positions between visible ones cannot be filled this way.
    """
    Zv = _field(Zv, "Zv")
    Mx, My = _square(Mx, "Mx"), _square(My, "My")
    check_choice(order, "order", ("yx", "xy"))
    h, w, d = Zv.shape[-3:]
    check_int(H, "H", low=h)
    check_int(W, "W", low=w)
    if Mx.shape != (d, d) or My.shape != (d, d):
        raise ValueError(f"Mx and My must be ({d}, {d}), got {tuple(Mx.shape)} and "
                         f"{tuple(My.shape)}")
    dtype = _same_device(Zv, Mx, My)
    work = work_dtype(dtype)
    Zv, Mx, My = Zv.to(work), Mx.to(work), My.to(work)

    def grow(Z, M, n, dim):
        parts = [Z]
        last = Z.narrow(dim, Z.shape[dim] - 1, 1)
        for _ in range(n):
            last = last @ M.mT
            parts.append(last)
        return torch.cat(parts, dim)

    if order == "yx":
        return grow(grow(Zv, My, W - w, -2), Mx, H - h, -3).to(dtype)
    return grow(grow(Zv, Mx, H - h, -3), My, W - w, -2).to(dtype)


def block_mask(H: int, W: int, h: int, w: int, *, top: int = 0, left: int = 0,
               device=None) -> torch.Tensor:
    r"""Boolean ``(H, W)`` mask, ``True`` on the visible ``h x w`` block whose top-left corner
    is ``(top, left)`` (QB-Heat keeps one quarter: ``h = H // 2``, ``w = W // 2``)."""
    check_int(H, "H", low=1)
    check_int(W, "W", low=1)
    check_int(h, "h", low=1, high=H)
    check_int(w, "w", low=1, high=W)
    check_int(top, "top", low=0, high=H - h)
    check_int(left, "left", low=0, high=W - w)
    m = torch.zeros(H, W, dtype=torch.bool, device=device)
    m[top:top + h, left:left + w] = True
    return m


def random_patch_mask(H: int, W: int, mask_ratio: float, *, generator=None,
                      device=None) -> torch.Tensor:
    r"""Boolean ``(H, W)`` mask of an MAE-style random masking: exactly
    :math:`\operatorname{round}(\text{mask\_ratio}\cdot HW)` positions, drawn uniformly without
    replacement, are masked (``False``); the rest are visible (``True``). The rounding is
    Python's ``round``, halves to even (``H*W*mask_ratio = 2.5`` masks 2 positions)."""
    check_int(H, "H", low=1)
    check_int(W, "W", low=1)
    mask_ratio = check_real(mask_ratio, "mask_ratio", low=0.0, high=1.0)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    device = check_device(device)
    n = H * W
    n_masked = round(mask_ratio * n)
    perm = torch.randperm(n, generator=generator, device=device)
    m = torch.ones(n, dtype=torch.bool, device=device)
    m[perm[:n_masked]] = False
    return m.reshape(H, W)
