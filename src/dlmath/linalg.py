r"""Spectral norm, its gradient, power iteration, nuclear norm and effective ranks.

Chapters: *The gradient of the spectral norm* (``notebooks/07-spectral-norm-gradient.ipynb``)
and *Effective rank* (``notebooks/06-effective-rank.ipynb``).

Conventions: a matrix ``W`` has shape ``(..., n, m)`` and acts on column vectors,
:math:`x \mapsto Wx`, with SVD :math:`W = \sum_i \sigma_i u_i v_i^\top`,
:math:`\sigma_1 \ge \sigma_2 \ge \dots \ge 0`, :math:`u_i \in \mathbb R^n`,
:math:`v_i \in \mathbb R^m`. Leading dimensions are batch dimensions; results keep the
input's device and dtype (float16/bfloat16 inputs are computed in float32 and cast back).
Edge cases, all tested:

* integer or boolean input raises ``TypeError``; fewer than two dimensions, an empty matrix or
  a non-finite entry raises ``ValueError`` naming the argument;
* the zero matrix has spectral norm 0, gradient 0 (the minimum-norm subgradient), nuclear norm
  0 and effective rank 0 for every definition (normalised entropy 0);
* a repeated top singular value makes the spectral norm non-differentiable;
  :func:`spectral_norm_grad` then returns the minimum-norm subgradient (see there);
* matrices far from unit scale (a float32 :math:`\sigma_1` of 1e10 or 1e-12, a float64 one of
  1e200 or 1e-200) give the same relative results: the power iterations and the Gram path of
  :func:`effective_rank` detect where squaring the scale over- or underflowed and redo those
  slices (rescaled, or on an exact path).
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    as_float_tensor,
    broadcasts_to,
    check_choice,
    check_finite,
    check_generator,
    check_int,
    check_matrix,
    check_real,
    upcast_half,
    work_dtype,
)
from .lse import renyi_entropy
from .msign import msign, polar  # re-exported: the msign chapter's functions live in msign.py

__all__ = [
    "power_iteration",
    "PowerIteration",
    "spectral_norm",
    "spectral_norm_grad",
    "nuclear_norm",
    "effective_rank",
    "EFFECTIVE_RANK_KINDS",
    "msign",
    "polar",
]

#: The definitions accepted by :func:`effective_rank`.
EFFECTIVE_RANK_KINDS = (
    "rank", "threshold", "energy", "intrinsic", "stable", "schatten", "nuc_fro",
    "entropy", "renyi", "normalized_entropy",
)

def power_iteration(W, iters: int = 10, v0=None, generator: torch.Generator | None = None):
    r"""Top singular triplet of ``W`` by power iteration on :math:`W^\top W`.

    .. math:: x_{t+1} = \frac{W^\top W x_t}{\|W^\top W x_t\|}, \qquad
              \sigma = \|W x_T\|,\quad u = W x_T/\sigma,\quad v = x_T .

    If :math:`\sigma_1 > \sigma_2` and :math:`\langle x_0, v_1\rangle \ne 0`, then
    :math:`x_t \to \pm v_1` with error :math:`O((\sigma_2/\sigma_1)^{2t})`; each step costs two
    matrix-vector products. The estimate is a lower bound, :math:`\|W x_T\| \le \sigma_1`.

    Args:
        W: ``(..., n, m)`` floating tensor, finite.
        iters: number of steps ``T >= 0`` (``0`` only normalises the start vector).
        v0: start vector(s) of shape ``(m,)`` or ``(..., m)``, for a warm start from the ``v``
            of a previous call. ``None``: a standard Gaussian drawn from ``generator`` if one
            is given, otherwise the all-ones vector (deterministic, as in the chapter's source;
            it fails when :math:`v_1 \perp \mathbf 1`).
        generator: ``torch.Generator`` on ``W``'s device, used only when ``v0`` is ``None``.

    Returns:
        ``(sigma, u, v)`` with shapes ``(...)``, ``(..., n)``, ``(..., m)``. Where
        :math:`W x_T = 0` (e.g. the zero matrix) ``sigma`` is 0 and ``u`` is 0.

    A step forms :math:`W^\top W x`, the square of the scale of ``W`` (norms are taken after
    dividing by the largest entry where their squares would leave the dtype's range): a slice
    whose ``sigma`` comes out non-finite or below about :math:`(\max(n,m)\,\mathrm{tiny}/
    \epsilon)^{1/4}` (1e-7 in float32) is rerun on :math:`W/\max|W_{ij}|` and ``sigma``
    scaled back, so the result does not depend on the scale of ``W``.
    """
    W = check_matrix(W, "W")
    iters = check_int(iters, "iters", low=0)
    A = upcast_half(W)
    m = A.shape[-1]
    if v0 is None:
        shape = (*A.shape[:-2], m)
        if generator is None:
            x = torch.ones(shape, dtype=A.dtype, device=A.device)
        else:
            check_generator(generator, A.device, of="W")
            x = torch.randn(shape, dtype=A.dtype, device=A.device, generator=generator)
    else:
        x = as_float_tensor(v0, "v0")
        check_finite(x, "v0")
        if x.shape[-1] != m:
            raise ValueError(f"v0 must have last dimension {m} (the columns of W), got "
                             f"shape {tuple(x.shape)}")
        if not broadcasts_to(x.shape[:-1], A.shape[:-2]):
            raise ValueError(f"v0 of shape {tuple(x.shape)} must be (m,) or (..., m) with "
                             f"leading dimensions broadcasting to W's batch shape "
                             f"{tuple(A.shape[:-2])}")
        x = x.to(device=A.device, dtype=A.dtype).expand(*A.shape[:-2], m)
    if (x == 0).all(dim=-1).any():
        raise ValueError("v0 must be non-zero")
    start = _unit(x, x)
    sigma, u, x = _power_steps(A, start, iters)
    # Out of range: a step forms W^T W x, the square of the scale, so in float32 a sigma_1
    # above ~1.8e19 overflows (x becomes NaN) and a tiny one loses precision. Such slices
    # (sigma below _power_floor, or not finite) are redone on W / max|W| and the result
    # scaled back; the zero matrix keeps sigma = 0.
    redo = ~(sigma >= _power_floor(A, plain=iters > 0)) | ~torch.isfinite(sigma)
    if redo.any():
        amax = A.abs().amax(dim=(-2, -1))
        redo = redo & (amax > 0)
        if redo.any():
            scale = amax[redo]
            s2, u2, x2 = _power_steps(A[redo] / scale[..., None, None], start.expand(
                *A.shape[:-2], m)[redo], iters)
            sigma, u, x = sigma.clone(), u.clone(), x.expand(*A.shape[:-2], m).clone()
            sigma[redo], u[redo], x[redo] = s2 * scale, u2, x2
    return sigma.to(W.dtype), u.to(W.dtype), x.to(W.dtype)


def _norm_unit(y: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||y||, y / ||y||)`` along the last dim (``zero`` as the direction where y = 0).

    ``vector_norm`` squares the entries: where ``||y||`` comes out non-finite or below
    ``sqrt(tiny)`` (float32: below about 1e-19 or above 1.8e19) both are formed again after
    dividing by ``max_i |y_i|``; elsewhere the plain quotient is kept, exact for an exact tie.
    """
    n = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    plain = torch.isfinite(n) & (n > torch.finfo(y.dtype).tiny ** 0.5)
    if y.device.type == "cpu" and bool(plain.all()):  # the usual case (no sync on a CPU)
        return n.squeeze(-1), y / n
    top = y.abs().amax(dim=-1, keepdim=True)
    z = y / torch.where(top > 0, top, 1)
    zn = torch.linalg.vector_norm(z, dim=-1, keepdim=True)  # >= 1 where top > 0
    # non-finite y (an overflowed step) gives a NaN direction, which the callers detect
    unit = torch.where(plain, y / torch.where(plain, n, 1),
                       torch.where(top == 0, zero, z / torch.where(top > 0, zn, 1)))
    return torch.where(plain, n, top * zn).squeeze(-1), unit


def _unit(y: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return _norm_unit(y, zero)[1]


def _power_steps(A, x, iters: int):
    """``iters`` plain steps x <- A^T A x / |A^T A x| from the unit vector(s) x; (sigma, u, x)."""
    for _ in range(iters):
        y = (A.mT @ (A @ x.unsqueeze(-1))).squeeze(-1)
        # a start vector in the null space of W stays where it is (sigma = 0 below)
        x = _unit(y, x)
    Wx = (A @ x.unsqueeze(-1)).squeeze(-1)
    sigma, u = _norm_unit(Wx, torch.zeros_like(Wx))
    return sigma, u, x


def _power_floor(A: torch.Tensor, plain: bool = True) -> float:
    r"""Smallest :math:`\sigma_1` at which a power step on ``A`` keeps full precision.

    A plain step :math:`W^\top W x` reaches the square of the scale, a split step
    (:math:`u = Wx/\|Wx\|`, then :math:`W^\top u`) only the scale itself. The floors,
    :math:`(\mathrm{size}\cdot\mathrm{tiny}/\epsilon)^{1/4}` (about 1e-7 in float32) or its
    square root, keep the squares of those dominant entries normal numbers as well: a margin
    kept from when the norms were formed unscaled (below it a slice is only redone on
    :math:`W/\max|W_{ij}|`, never wrong).
    """
    info = torch.finfo(A.dtype)
    floor = max(A.shape[-2:]) * info.tiny / info.eps
    return floor ** 0.25 if plain else floor ** 0.5


class PowerIteration:
    r"""Stateful top singular triplet with a warm vector and a Rayleigh-residual check.

    For a matrix that changes a little between calls (a weight during training), keeping the
    right singular vector of the previous call and running one power step per call tracks
    :math:`(\sigma_1, u_1, v_1)` for two matrix-vector products per call. Each step measures,
    for the current unit vector :math:`x`,

    .. math:: \sigma = \|Wx\|,\quad u = Wx/\sigma,\quad
              \eta = \frac{\|W^\top u - \sigma x\|}{\sigma},

    returns :math:`(\sigma, u, x)` and keeps :math:`W^\top u/\|W^\top u\|` (the next power
    iterate) as the warm vector of the next call. :math:`\eta` is the relative residual of the
    singular pair. With :math:`\rho = \sigma_2/\sigma_1` the Kato--Temple bound gives

    .. math:: \frac{\sigma_1 - \sigma}{\sigma_1} \lesssim \frac{\eta^2}{2(1-\rho^2)},
              \qquad \sin\angle(x, v_1) \lesssim \frac{\eta}{1 - \rho^2}.

    The gap is not known, so :math:`\rho^2` is estimated by the contraction of the residual
    over the last two steps, :math:`\hat\rho^2 = \eta_t/\eta_{t-1}` (the rate of the power
    iteration), and kept for the warm calls that run a single step (an exact fallback stores
    the exact :math:`\rho^2`). **Check and fallback:** a slice whose bound
    :math:`\eta^2/(2(1-\hat\rho^2))` exceeds ``tol`` (a spectral gap too small for the steps
    given, or a matrix that jumped since the last call) is recomputed exactly with
    ``torch.linalg.svd`` and its warm vector reset to the exact :math:`v_1`; ``fallbacks``
    counts such slices, ``residual`` and ``contraction`` hold the last :math:`\eta` and
    :math:`\hat\rho^2`. (An exact tie with :math:`\eta = 0`, e.g. the identity, passes:
    :math:`\sigma` is then exact; no rate is measured, so :math:`\hat\rho^2 = 1` is stored
    and the next warm call with :math:`\eta > 0` falls back.)

    **Limits of the check** (a heuristic, not a certificate: ``tol`` is a target). It catches a
    near-tie once the pair dominates the residual (e.g. :math:`\sigma = (1, 0.999, 0.5, 0.2)`,
    tested), but :math:`\hat\rho^2` underestimates :math:`\rho^2` when a faster-decaying
    component still dominates the last two residuals, or when a warm call reuses a
    :math:`\hat\rho^2` measured before the gap shrank; :math:`\sigma_2` can then be returned
    as :math:`\sigma_1` with no fallback. Measured (float64, ``tol=1e-6``, 200 seeds): 10
    cold steps on ``diag(1, 0.999, 0.8)`` are silently wrong for 5 seeds (relative error up to
    :math:`10^{-3}`), on ``diag(1, 1-1e-4, 0.8)`` for 24 (up to :math:`10^{-4}`); a warm call
    on a rotated ``diag(1, 0.999, 0.3)`` after ``diag(1, 0.5, 0.3)`` is off by
    :math:`8.7\cdot 10^{-5}`. Where a bound must hold, use ``tol=0`` (always the exact path)
    or :func:`spectral_norm`.

    Args:
        cold_iters: steps (``>= 2``) when there is no warm vector (first call, new shape).
        warm_iters: steps per call once warm.
        tol: bound on the relative error of :math:`\sigma`; ``0`` always takes the exact path,
            ``inf`` only where the steps over- or underflowed (a non-finite :math:`\sigma`,
            or one below the floor of :func:`power_iteration`, on a non-zero slice).
        generator: draws the Gaussian cold start (``None``: the default generator of torch).

    Call with ``W`` of shape ``(..., n, m)``; returns ``(sigma, u, v)`` of shapes ``(...)``,
    ``(..., n)``, ``(..., m)``, in ``W``'s dtype (half precisions computed in float32).
    Chapter: *The gradient of the spectral norm*.
    """

    def __init__(self, cold_iters: int = 10, warm_iters: int = 1, tol: float = 1e-6,
                 generator: torch.Generator | None = None):
        self.cold_iters = check_int(cold_iters, "cold_iters", low=2)
        self.warm_iters = check_int(warm_iters, "warm_iters", low=1)
        self.tol = check_real(tol, "tol", nonnegative=True, finite=False)
        self.generator = None if generator is None else check_generator(generator)
        self.reset()

    def reset(self) -> None:
        """Forget the warm vector (the next call starts cold)."""
        self.v: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.contraction: torch.Tensor | None = None
        self.fallbacks = 0

    def __call__(self, W):
        W = check_matrix(W, "W", finite=False)  # non-finite W shows in the bound, checked below
        A = upcast_half(W)
        shape = (*A.shape[:-2], A.shape[-1])
        warm = self.v is not None and self.v.shape == shape and self.v.device == A.device
        if warm:
            x, iters = self.v.to(A.dtype), self.warm_iters
        else:
            x = torch.randn(shape, dtype=A.dtype, device=A.device, generator=self.generator)
            x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            iters = self.cold_iters
        eta = None
        for i in range(iters):
            if i < iters - 2:  # only the last two steps are measured: plain steps before them
                y = (A.mT @ (A @ x.unsqueeze(-1))).squeeze(-1)
            else:
                u, sigma, y = self._step(A, x)
                eta_prev, eta = eta, torch.linalg.vector_norm(
                    y - sigma.unsqueeze(-1) * x, dim=-1) / torch.where(sigma > 0, sigma, 1)
                v = x
            x = _unit(y, x)
        if eta_prev is None:
            rate = self.contraction.to(eta.dtype)
        else:
            # eta_prev = 0 (an exact tie, e.g. 2I) measures no rate: store 1, the unknown gap,
            # so that a later warm call with eta > 0 falls back instead of trusting rho^2 = 0
            rate = torch.where(eta_prev > 0, eta / torch.where(eta_prev > 0, eta_prev, 1), 1)
        rate = rate.clamp(0, 1)
        bound = torch.where(eta == 0, 0, eta.square() / (2 * (1 - rate)))
        # NaN included; a sigma below the floor means that the steps over- or underflowed
        # (a float32 sigma_1 above ~1.8e19 turns the plain steps' x into NaN): exact path, except
        # for a zero slice, whose sigma = 0 is right
        bad = ~((bound <= self.tol) & (sigma >= _power_floor(A, plain=iters > 2))
                & (sigma <= torch.finfo(sigma.dtype).max) & (self.tol > 0))  # tol=0: always
        if bad.any():
            bad = bad & (A != 0).flatten(-2).any(-1)
        if bad.any():
            check_finite(W, "W")
            U, S, Vh = torch.linalg.svd(A[bad], full_matrices=False)
            sigma, u, v, x, eta, rate = (t.clone() for t in (sigma, u, v, x, eta, rate))
            sigma[bad], u[bad], v[bad], x[bad] = S[..., 0], U[..., :, 0], Vh[..., 0, :], \
                Vh[..., 0, :]
            eta[bad] = 0
            second = S[..., 1] if S.shape[-1] > 1 else torch.zeros_like(S[..., 0])
            rate[bad] = torch.where(S[..., 0] > 0, second / torch.where(S[..., 0] > 0,
                                                                        S[..., 0], 1), 0) ** 2
            self.fallbacks += int(bad.sum())
        self.v, self.residual, self.contraction = x, eta, rate
        return sigma.to(W.dtype), u.to(W.dtype), v.to(W.dtype)

    @staticmethod
    def _step(A, x):
        """u = Ax/|Ax|, sigma = |Ax| and y = A^T u (so y = sigma v_1 at a fixed point)."""
        Ax = (A @ x.unsqueeze(-1)).squeeze(-1)
        sigma, u = _norm_unit(Ax, torch.zeros_like(Ax))
        return u, sigma, (A.mT @ u.unsqueeze(-1)).squeeze(-1)


def spectral_norm(W, method: str = "svd", iters: int = 20,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Spectral norm :math:`\|W\|_2 = \max_{\|x\|=1}\|Wx\| = \sigma_1(W)`, shape ``(...)``.

    ``method="svd"`` is exact (``torch.linalg.svdvals``); ``method="power"`` runs ``iters``
    steps of :func:`power_iteration` (ones start, or Gaussian from ``generator``) and returns
    the lower bound :math:`\|Wx_T\| \le \sigma_1`, accurate only when
    :math:`(\sigma_2/\sigma_1)^{2T}` is small.
    """
    W = check_matrix(W, "W")
    check_choice(method, "method", ("svd", "power"))
    if method == "power":
        return power_iteration(W, iters, generator=generator)[0]
    return torch.linalg.svdvals(upcast_half(W))[..., 0].to(W.dtype)


def spectral_norm_grad(W, v=None, rtol: float | None = None) -> torch.Tensor:
    r"""Gradient of the spectral norm, :math:`\nabla_W \|W\|_2 = u_1 v_1^\top`.

    Exact path (``v=None``): from ``torch.linalg.svd``. The spectral norm is differentiable at
    ``W`` iff :math:`\sigma_1 > \sigma_2` (or ``W`` has a single singular value and is non-zero).
    When the top singular value is repeated, :math:`\sigma_1 = \dots = \sigma_k`, there is no
    gradient; the subdifferential is :math:`\{U_k A V_k^\top : A \succeq 0,\ \operatorname{tr}A
    = 1\}` and this function returns its element of least Frobenius norm,

    .. math:: G = \frac{1}{k} U_k V_k^\top, \qquad \|G\|_F = 1/\sqrt{k},

    which does not depend on the (arbitrary) choice of bases of the top singular subspaces.
    Singular values with :math:`\sigma_i \ge (1 - \mathrm{rtol})\,\sigma_1` count as tied;
    ``rtol`` defaults to ``10 * max(n, m) * eps`` of the dtype, the rounding level of the SVD.
    For the zero matrix the subdifferential is the unit ball of the nuclear norm and ``G = 0``.

    Cheap path (``v`` given, e.g. from :func:`power_iteration`): with :math:`\hat v = v/\|v\|`,
    the rank-one form :math:`W \hat v \hat v^\top / \|W \hat v\|` (zero where
    :math:`W\hat v = 0`), which equals :math:`u_1 v_1^\top` when :math:`v \parallel v_1` and costs
    one matrix-vector product; ``v`` has shape ``(m,)`` or ``(..., m)`` with leading
    dimensions broadcasting to ``W``'s batch shape, and must be non-zero (``ValueError``
    otherwise, as in :func:`power_iteration`).

    Shapes: ``W`` is ``(..., n, m)``; the result has the same shape, device and dtype.
    """
    W = check_matrix(W, "W")
    A = upcast_half(W)
    if v is not None:
        v = as_float_tensor(v, "v")
        check_finite(v, "v")
        if v.shape[-1] != A.shape[-1]:
            raise ValueError(f"v must have last dimension {A.shape[-1]} (the columns of W), "
                             f"got shape {tuple(v.shape)}")
        if not broadcasts_to(v.shape[:-1], A.shape[:-2]):
            raise ValueError(f"v of shape {tuple(v.shape)} must be (m,) or (..., m) with "
                             f"leading dimensions broadcasting to W's batch shape "
                             f"{tuple(A.shape[:-2])}")
        v = v.to(device=A.device, dtype=A.dtype)
        if (v == 0).all(dim=-1).any():
            raise ValueError("v must be non-zero")
        v = _unit(v, v)
        Wv = (A @ v.unsqueeze(-1)).squeeze(-1)
        u = _unit(Wv, torch.zeros_like(Wv))
        return (u.unsqueeze(-1) * v.unsqueeze(-2)).to(W.dtype)
    if rtol is None:
        rtol = 10 * max(A.shape[-2:]) * torch.finfo(A.dtype).eps
    rtol = check_real(rtol, "rtol", nonnegative=True, high=1.0)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    top = S[..., :1]
    tied = (S >= (1 - rtol) * top) & (top > 0)
    weight = tied.to(A.dtype) / tied.sum(dim=-1, keepdim=True).clamp_min(1).to(A.dtype)
    return ((U * weight.unsqueeze(-2)) @ Vh).to(W.dtype)


def nuclear_norm(W) -> torch.Tensor:
    r"""Nuclear norm :math:`\|W\|_* = \sum_i \sigma_i(W)`, shape ``(...)`` for ``W`` of shape
    ``(..., n, m)``. Chapter: effective rank."""
    W = check_matrix(W, "W")
    return torch.linalg.svdvals(upcast_half(W)).sum(dim=-1).to(W.dtype)


def _singular_values(M, singular_values: bool, exact: bool = False) -> tuple[torch.Tensor, int]:
    """Sorted (descending) singular values, and the default rank tolerance's size factor."""
    if singular_values:
        s = as_float_tensor(M, "M")
        check_finite(s, "M")
        if (s < 0).any():
            raise ValueError("M holds singular values (singular_values=True), so it must be "
                             "non-negative")
        s = torch.sort(upcast_half(s), dim=-1, descending=True).values
        return s, s.shape[-1]
    M = as_float_tensor(M, "M", min_ndim=0)
    if M.ndim < 2:
        raise ValueError(f"M must be a matrix (..., n, m), got shape {tuple(M.shape)}; to pass "
                         "a vector of singular values, use singular_values=True")
    M = check_matrix(M, "M")
    return torch.linalg.svdvals(M.double() if exact else upcast_half(M)), max(M.shape[-2:])


def _entropy_probabilities(s: torch.Tensor, gamma: float) -> torch.Tensor:
    """p_i = s_i^gamma / sum_j s_j^gamma; a one-hot row (entropy 0) where s is all zero, so
    every row is a distribution (the callers return 0 for those rows anyway)."""
    w = s.pow(gamma)
    total = w.sum(dim=-1, keepdim=True)
    onehot = torch.zeros_like(w)
    onehot[..., 0] = 1
    return torch.where(total > 0, w / torch.where(total > 0, total, 1), onehot)


def effective_rank(M, kind: str = "entropy", *, singular_values: bool = False,
                   eps: float | None = None, relative: bool = True, k: float = 1.0,
                   gamma: float | None = None, alpha: float | None = None,
                   rtol: float | None = None, exact: bool = False) -> torch.Tensor:
    r"""Effective rank of ``M`` under one of the definitions of the effective-rank chapter.

    ``M`` is a matrix ``(..., n, m)``; with ``singular_values=True`` it is instead a vector
    ``(..., r)`` of non-negative singular values (any order; e.g. from
    ``torch.linalg.svdvals``), which saves the SVD. With :math:`\sigma_1\ge\dots\ge\sigma_r\ge 0`
    (:math:`r=\min(n,m)`) the kinds are

    * ``"rank"``: :math:`\#\{i: \sigma_i > \mathrm{rtol}\cdot\sigma_1\}`, ``rtol`` defaulting
      to ``max(n, m) * eps`` of the dtype like ``torch.linalg.matrix_rank`` (for a vector of
      singular values ``r * eps``), and below 1;
    * ``"threshold"``: :math:`\max\{i: \sigma_i/\sigma_1 > \epsilon\}` (``relative=True``) or
      :math:`\max\{i: \sigma_i > \epsilon\}` (``relative=False``), ``eps`` required;
    * ``"energy"``: :math:`\min\{r': (\sum_{i\le r'}\sigma_i^2/\sum_i\sigma_i^2)^{1/2}
      \ge 1-\epsilon\}`, ``eps`` in ``[0, 1)`` required;
    * ``"intrinsic"``: :math:`\|M\|_*/\|M\|_2 = \sum_i \sigma_i/\sigma_1`;
    * ``"stable"``: :math:`\|M\|_F^2/\|M\|_2^2 = \sum_i \sigma_i^2/\sigma_1^2`;
    * ``"schatten"``: :math:`\sum_i (\sigma_i/\sigma_1)^k = (\|M\|_{S_k}/\|M\|_2)^k`, ``k > 0``;
    * ``"nuc_fro"``: :math:`\|M\|_*^2/\|M\|_F^2 = (\sum_i\sigma_i)^2/\sum_i\sigma_i^2`;
    * ``"entropy"`` (Roy–Vetterli): :math:`e^{H(p)}` with :math:`p_i = \sigma_i^\gamma/
      \sum_j\sigma_j^\gamma` and :math:`H(p) = -\sum_i p_i\log p_i` (``gamma`` default 1);
    * ``"renyi"``: :math:`e^{H_\alpha(p)}`, :math:`H_\alpha(p) = \frac{1}{1-\alpha}\log\sum_i
      p_i^\alpha`, ``alpha`` in :math:`[0,\infty]` required (``alpha=0`` is ``"rank"``, 1 is
      ``"entropy"``; with ``gamma=1``, 2 is ``"nuc_fro"`` and ``inf`` is ``"intrinsic"``; with
      ``gamma=2``, ``inf`` is ``"stable"``);
    * ``"normalized_entropy"`` (Moonlight): :math:`H(p)/\log r \in [0, 1]` with ``gamma``
      default **2**; not a rank but its logarithm rescaled. For ``r = 1`` it is 1.

    Singular values :math:`\le \mathrm{rtol}\cdot\sigma_1` are rounding noise of the SVD and
    every kind treats them as exact zeros, which contribute nothing (:math:`0\log 0 = 0`); this
    matters for Rényi orders below 1, where noise of size :math:`10^{-16}` would otherwise add
    :math:`10^{-8}`. Every kind but ``"normalized_entropy"`` and ``"threshold"`` lies in
    ``[1, rank]`` for a non-zero matrix and is 0 for the zero matrix; ``"threshold"`` lies in
    ``[0, rank]`` (0 when ``eps >= 1``, relative, or ``eps >= sigma_1``, absolute).
    The result has shape ``(...)`` and ``M``'s dtype (counts are returned as floats).

    **Paths.** ``exact=True`` takes the singular values from ``torch.linalg.svdvals`` in
    float64. The default (fast) path takes them from the eigenvalues of the small Gram matrix,
    :math:`\sigma_i = \sqrt{\lambda_i(MM^\top)}` (or :math:`M^\top M`, whichever is
    :math:`r\times r`), in the working dtype (those at or below :math:`\tau` count as zero), and
    checks itself: each :math:`\lambda_i` is trusted only to :math:`\pm\tau`,
    :math:`\tau = \max(n, m)\,\epsilon\,\lambda_1` (the rounding of forming and
    diagonalising the Gram matrix), and the rank is evaluated at both
    ends of these intervals. A slice where they differ from the value by more than ``1e-4``
    relatively (a rank count on a rank-deficient matrix, an ill-conditioned float32 matrix whose
    small singular values fall below :math:`\sqrt{\tau}`) is redone with the Gram matrix in
    float64, and, if still unresolved, with float64 svdvals. So the fast path never returns a
    value its rounding cannot support; it pays for the extra tiers only where needed. A float32
    slice whose Gram matrix fails a Cholesky test of :math:`G - cI`, :math:`c \ge \tau` (some
    eigenvalue within rounding of zero, as for a square Gaussian matrix) skips the float32
    eigenvalues, which could not be certified, and starts in float64; the test runs only where
    the shorter side is more than 2/3 of the longer, since a Gaussian of aspect 1.5 or more
    already clears it. A slice whose Gram matrix overflowed or whose :math:`\lambda_1` is below
    :math:`\mathrm{tiny}/\epsilon` (a float64 :math:`\sigma_1` beyond about
    :math:`10^{\pm 154}`, where the squares over- or underflow) is likewise unsure and goes on
    to the next tier; the ratios themselves are computed from :math:`\sigma_i/\sigma_1`.
    """
    check_choice(kind, "kind", EFFECTIVE_RANK_KINDS)
    if singular_values or exact:
        s, size = _singular_values(M, singular_values, exact=exact)
        out_dtype = M.dtype if isinstance(M, torch.Tensor) else s.dtype
        floating = isinstance(M, torch.Tensor) and M.is_floating_point()
        noise = work_dtype(M.dtype) if floating else None
        value = _rank_from_values(s, size, kind, eps, relative, k, gamma, alpha, rtol, noise)
        return value.to(out_dtype)
    M = as_float_tensor(M, "M", min_ndim=0)
    if M.ndim < 2:
        raise ValueError(f"M must be a matrix (..., n, m), got shape {tuple(M.shape)}; to pass "
                         "a vector of singular values, use singular_values=True")
    M = check_matrix(M, "M")
    A = upcast_half(M)
    size = max(A.shape[-2:])
    args = (size, kind, eps, relative, k, gamma, alpha, rtol, A.dtype)
    gram = _small_gram(A)
    if A.dtype == torch.float64 or 3 * min(A.shape[-2:]) <= 2 * size:
        value, unsure = _gram_rank(gram, args)  # first tier, in the working dtype
    else:
        # first tier for a near-square float32 matrix: only where a Cholesky test says it can
        # succeed (a near-square Gaussian's smallest singular values are within its rounding)
        value = torch.zeros(gram.shape[:-2], dtype=A.dtype, device=A.device)
        clear = _clears_rounding(gram, size)
        unsure = ~clear
        if clear.any():
            value[clear], unsure[clear] = _gram_rank(gram[clear], args)
    if A.dtype != torch.float64 and unsure.any():  # second tier: the Gram matrix in float64
        v64, unsure64 = _gram_rank(_small_gram(A[unsure].double()), args)
        value[unsure] = v64.to(value.dtype)
        unsure[unsure.clone()] = unsure64
    if unsure.any():  # last tier: float64 svdvals
        s_exact, _ = _singular_values(M[unsure], False, exact=True)
        value[unsure] = _rank_from_values(s_exact, *args).to(value.dtype)
    return value.to(M.dtype)


def _small_gram(A: torch.Tensor) -> torch.Tensor:
    """AA^T or A^TA, whichever is r x r with r = min(n, m)."""
    return A @ A.mT if A.shape[-2] <= A.shape[-1] else A.mT @ A


def _clears_rounding(gram: torch.Tensor, size: int) -> torch.Tensor:
    r"""Whether every eigenvalue of ``gram`` exceeds size * eps * ||gram||_F (>= tau).

    A Cholesky factorisation of :math:`G - cI` (a third of an eigendecomposition's cost)
    succeeds exactly when :math:`\lambda_{\min}(G) > c`. Where it fails, some singular value
    lies within float32 rounding of zero and the float32 Gram path would be unsure anyway
    (a near-square Gaussian matrix, a rank-deficient one), so those slices go straight to
    float64. Only a shortcut: the spread check of :func:`_gram_rank` still decides.
    """
    c = size * torch.finfo(gram.dtype).eps * torch.linalg.matrix_norm(gram, keepdim=True)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.cholesky_ex(gram - c * eye)[1] == 0


def _gram_rank(gram: torch.Tensor, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Effective rank from the eigenvalues of the small Gram matrix, and where it is unsure.

    Each eigenvalue is trusted to +-tau = max(n, m) eps lambda_1 (the rounding of forming and
    diagonalising the Gram matrix in its dtype), and those at or below tau count as zero, as the
    exact path zeroes rounding noise; the value is recomputed with every singular
    value at both ends of its interval, and a slice is unsure when these disagree by more
    than ``_GRAM_RTOL`` relatively.
    """
    info = torch.finfo(gram.dtype)
    # a Gram matrix that overflowed (sigma_1 above ~1e154 in float64) would make eigvalsh
    # raise: such slices are diagonalised as zeros and reported unsure
    finite = torch.isfinite(gram).flatten(-2).all(-1)
    lam = torch.linalg.eigvalsh(torch.where(finite[..., None, None], gram, 0)).flip(-1)
    lam = lam.clamp_min(0)
    tau = args[0] * info.eps * lam[..., :1]
    # the value (noise -> 0) and both ends of the intervals, in one batched evaluation
    value, low, high = _rank_from_values(torch.stack([torch.where(lam > tau, lam, 0),
                                                      (lam - tau).clamp_min(0), lam + tau])
                                         .sqrt(), *args)
    spread = torch.maximum((low - value).abs(), (high - value).abs())
    # lambda_1 < tiny/eps: the products in the Gram matrix may have underflowed by more than
    # tau (a non-zero matrix with sigma_1 below ~1e-154 in float64 would come out as zero)
    return value, ~(spread <= _GRAM_RTOL * value.abs()) | ~finite | ~(lam[..., 0] >= info.tiny
                                                                        / info.eps)


#: Relative disagreement above which the Gram path of :func:`effective_rank` defers.
_GRAM_RTOL = 1e-4


def _rank_from_values(s, size, kind, eps, relative, k, gamma, alpha, rtol,
                      noise_dtype=None) -> torch.Tensor:
    """The effective rank ``kind`` from singular values ``s`` sorted in descending order;
    ``noise_dtype`` (default ``s.dtype``) sets the default ``rtol``."""
    if kind in ("threshold", "energy"):
        if eps is None:
            raise ValueError(f"kind={kind!r} needs eps")
        eps = check_real(eps, "eps", nonnegative=True,
                         high=None if kind == "threshold" else 1.0)
        if kind == "energy" and eps == 1.0:
            raise ValueError("eps must be < 1 for kind='energy'")
    elif eps is not None:
        raise ValueError(f"eps is not used by kind={kind!r}")
    if alpha is not None and kind != "renyi":
        raise ValueError(f"alpha is only used by kind='renyi', not {kind!r}")
    if gamma is not None and kind not in ("entropy", "renyi", "normalized_entropy"):
        raise ValueError(f"gamma is only used by the entropy kinds, not {kind!r}")
    if gamma is None:
        gamma = 2.0 if kind == "normalized_entropy" else 1.0
    gamma = check_real(gamma, "gamma", positive=True)
    k = check_real(k, "k", positive=True)

    top = s[..., 0]
    nonzero = top > 0
    safe_top = torch.where(nonzero, top, 1).unsqueeze(-1)
    if rtol is None:
        rtol = size * torch.finfo(noise_dtype or s.dtype).eps
    rtol = check_real(rtol, "rtol", nonnegative=True)
    if not rtol < 1:
        raise ValueError(f"rtol must be < 1 (with rtol >= 1 every singular value, sigma_1 too, "
                         f"counts as noise), got {rtol}")
    significant = s > rtol * top.unsqueeze(-1)
    count = significant.sum(dim=-1).to(s.dtype)
    s = torch.where(significant, s, 0)

    if kind == "rank":
        value = count
    elif kind == "threshold":
        ref = safe_top if relative else 1.0
        value = (s / ref > eps).sum(dim=-1).to(s.dtype)
    elif kind == "energy":
        s = s / safe_top  # scale-free, and the squares neither overflow nor underflow
        cum = torch.cumsum(s * s, dim=-1)
        total = cum[..., -1:]
        frac = torch.sqrt(cum / torch.where(total > 0, total, 1))
        value = ((frac < 1 - eps).sum(dim=-1) + 1).clamp(max=s.shape[-1]).to(s.dtype)
    elif kind in ("intrinsic", "stable", "schatten"):
        power = {"intrinsic": 1.0, "stable": 2.0, "schatten": k}[kind]
        value = (s / safe_top).pow(power).sum(dim=-1)
    elif kind == "nuc_fro":
        s = s / safe_top
        fro2 = (s * s).sum(dim=-1)
        value = s.sum(dim=-1) ** 2 / torch.where(fro2 > 0, fro2, 1)
    else:
        p = _entropy_probabilities(s / safe_top, gamma)
        if kind == "renyi":
            if alpha is None:
                raise ValueError("kind='renyi' needs alpha")
            alpha = check_real(alpha, "alpha", nonnegative=True, finite=False)
            value = count if alpha == 0 else torch.exp(renyi_entropy(p, alpha))
        else:
            entropy = renyi_entropy(p, 1.0)
            if kind == "entropy":
                value = torch.exp(entropy)
            else:
                value = entropy / math.log(s.shape[-1]) if s.shape[-1] > 1 else \
                    torch.ones_like(entropy)
                return torch.where(nonzero, value, 0)
    return torch.where(nonzero, value, 0)
