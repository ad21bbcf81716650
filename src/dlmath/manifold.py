r"""Steepest descent under a norm, on the unit ball and on the hypersphere.

Chapters: *Muon: from vectors to matrices* (``notebooks/08-muon-msign.ipynb``) derives the
unconstrained directions of :func:`steepest_direction`; *Steepest descent on the hypersphere*
(``notebooks/21-hypersphere-steepest-descent.ipynb``) derives the rest.

The *steepest direction* of a gradient :math:`g` under a norm :math:`\rho` is a maximiser of the
first-order decrease,

.. math:: \varphi^* \in \arg\max_{\rho(\varphi) = 1} \langle g, \varphi\rangle ,

and the step is :math:`-\eta\varphi^*`. On the sphere :math:`\lVert w\rVert_2 = 1` the direction
must also keep :math:`w - \eta\varphi` on the sphere: to first order, be tangent.

Conventions: vectors live along ``dim=-1`` (matrices, for ``"fro"`` and ``"spectral"``, in the
last two dimensions), leading dimensions are a batch, results keep the input's device and dtype
(the sphere functions compute float16/bfloat16 in float32 and round once at the end). Norms are
taken after dividing by the largest entry, so huge and tiny (even subnormal) inputs are exact.
Inputs must be finite. Where the answer is undefined (a zero gradient, a gradient with no tangent
component) the direction is the zero vector and a step leaves the point where it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import (
    as_float_tensor,
    check_callable,
    check_choice,
    check_finite,
    check_int,
    check_real,
    upcast_half,
)
from .msign import polar

__all__ = [
    "NORMS",
    "signed_power",
    "steepest_direction",
    "sphere_project",
    "sphere_direction",
    "sphere_exact_direction",
    "sphere_step",
    "lp_sphere_direction",
    "linf_sphere_direction",
    "riemannian_sgd_sphere",
]

#: Norms accepted by :func:`steepest_direction`.
NORMS = ("l2", "lp", "l1", "linf", "fro", "spectral")

_RETRACTIONS = ("normalize", "exact")


def _vector(x, name: str) -> torch.Tensor:
    x = as_float_tensor(x, name)
    return check_finite(x, name)


def _pair(w, g) -> tuple[torch.Tensor, torch.Tensor]:
    w = _vector(w, "w")
    g = _vector(g, "g")
    if w.shape[-1] != g.shape[-1]:
        raise ValueError(f"w and g must have the same last dimension, got shapes "
                         f"{tuple(w.shape)} and {tuple(g.shape)}")
    g = g.to(device=w.device)
    dtype = torch.promote_types(w.dtype, g.dtype)
    w, g = torch.broadcast_tensors(w.to(dtype), g.to(dtype))
    return w, g


def _work_pair(w, g) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """:func:`_pair` in the working dtype (float32 for float16/bfloat16), and the input dtype."""
    w, g = _pair(w, g)
    return upcast_half(w), upcast_half(g), w.dtype


def _safe_div(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x / d where d > 0, and 0 where d == 0."""
    return torch.where(d > 0, x / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(x))


def _normalise(x: torch.Tensor, dim=-1) -> torch.Tensor:
    """x / ||x||_2 over ``dim``, divided by max |x_i| first (so that the squares neither overflow
    nor underflow); 0 where x is 0."""
    x = _safe_div(x, x.abs().amax(dim=dim, keepdim=True))
    return _safe_div(x, torch.linalg.vector_norm(x, dim=dim, keepdim=True))


def _check_p(p) -> float:
    p = check_real(p, "p", finite=False)
    if not p > 1:
        raise ValueError(f"p must be > 1 (or math.inf), got {p}")
    return p


def signed_power(x, a) -> torch.Tensor:
    r"""The signed power :math:`x^{[a]} = \operatorname{sign}(x)\,|x|^{a}`, elementwise.

    ``a`` must be a real number :math:`\ge 0`; :math:`0^{[a]} = 0` for every ``a`` (including
    :math:`a = 0`, where the result is :math:`\operatorname{sign}(x)`). Shape and dtype of ``x``
    are kept. Chapter 21.
    """
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    a = check_real(a, "a", nonnegative=True)
    return torch.sign(x) * x.abs().pow(a)


def steepest_direction(g, norm: str = "l2", p: float | None = None) -> torch.Tensor:
    r"""A maximiser of :math:`\langle g, \varphi\rangle` over the unit sphere of a norm.

    With :math:`1/p + 1/q = 1`:

    * ``"l2"``: :math:`\varphi = g/\lVert g\rVert_2` (SGD);
    * ``"lp"``, :math:`1 < p < \infty`: :math:`\varphi = g^{[q-1]}/\lVert g^{[q-1]}\rVert_p`
      (pbSGD; note :math:`q - 1 = q/p = 1/(p-1)`); ``p=math.inf`` means ``"linf"``;
    * ``"linf"``: :math:`\varphi = \operatorname{sign}(g)` (SignSGD); on a zero coordinate any
      value in :math:`[-1, 1]` is optimal and 0 is returned;
    * ``"l1"``: :math:`\varphi = \operatorname{sign}(g_k) e_k`, :math:`k = \arg\max_i |g_i|`
      (the first such index when several tie);
    * ``"fro"``: :math:`\varphi = G/\lVert G\rVert_F` over the last two dimensions;
    * ``"spectral"``: :math:`\varphi = \operatorname{msign}(G)` (Muon), computed exactly by
      :func:`dlmath.msign.polar`.

    The optimal value :math:`\langle g, \varphi\rangle` is the dual norm of ``g``. Vectors along
    ``dim=-1`` (``(..., n) -> (..., n)``), matrices in the last two dimensions
    (``(..., n, m) -> (..., n, m)``). A zero ``g`` gives a zero direction; every norm is taken
    after dividing ``g`` by its largest entry, so tiny and huge gradients give the same direction
    as moderate ones. Chapters 08 and 21.
    """
    check_choice(norm, "norm", NORMS)
    if norm in ("fro", "spectral"):
        if p is not None:
            raise ValueError(f"p is only used with norm='lp', got p={p} with norm={norm!r}")
        G = as_float_tensor(g, "g", min_ndim=2)
        check_finite(G, "g")
        if norm == "spectral":
            return polar(G)
        return _normalise(G, dim=(-2, -1))
    g = _vector(g, "g")
    if norm == "lp":
        if p is None:
            raise ValueError("norm='lp' needs the exponent p (a real number > 1, or math.inf)")
        p = _check_p(p)
        if math.isinf(p):
            norm = "linf"
    elif p is not None:
        raise ValueError(f"p is only used with norm='lp', got p={p} with norm={norm!r}")
    if norm == "l2":
        return _normalise(g)
    if norm == "linf":
        return torch.sign(g)
    if norm == "l1":
        k = g.abs().argmax(dim=-1, keepdim=True)
        out = torch.zeros_like(g)
        return out.scatter(-1, k, torch.sign(g.gather(-1, k)))
    # lp: scale g by its largest entry first, so |g|^(q-1) neither overflows nor underflows
    scaled = _safe_div(g, g.abs().amax(dim=-1, keepdim=True))
    v = signed_power(scaled, 1.0 / (p - 1.0))
    return _safe_div(v, torch.linalg.vector_norm(v, ord=p, dim=-1, keepdim=True))


def _unit(w: torch.Tensor, name: str = "w") -> torch.Tensor:
    if (w == 0).all(dim=-1).any():
        raise ValueError(f"{name} must be non-zero (a point of the sphere, or a multiple of one)")
    return _normalise(w)


def sphere_project(w, g) -> torch.Tensor:
    r"""Projection of ``g`` onto the tangent space of the sphere at ``w``.

    .. math:: P_w g = g - \langle g, \hat w\rangle \hat w, \qquad \hat w = w/\lVert w\rVert_2,

    which is :math:`g - \langle g, w\rangle w` on the unit sphere. Normalising ``w`` first makes
    the result orthogonal to ``w`` even when ``w`` has drifted off the sphere (the formula
    without it is not). Shapes ``(..., n)`` broadcast; ``w`` must be non-zero (any finite scale,
    subnormal to near overflow). Chapter 21.
    """
    w, g, dtype = _work_pair(w, g)
    u = _unit(w)
    return (g - (g * u).sum(-1, keepdim=True) * u).to(dtype)


def _tangent_unit(w: torch.Tensor, g: torch.Tensor, rtol: float | None) -> torch.Tensor:
    """P_w g / ||P_w g||, or zero where ||P_w g|| <= rtol * ||g|| (no tangent component)."""
    if rtol is None:
        rtol = 10 * w.shape[-1] * torch.finfo(w.dtype).eps
    rtol = check_real(rtol, "rtol", nonnegative=True)
    u = _unit(w)
    # The direction does not depend on the scale of g: divide by its largest entry first, so that
    # tiny gradients (entries ~1e-158, whose squares are subnormal) keep full precision.
    top = g.abs().amax(-1, keepdim=True)
    g = torch.where(top > 0, g / torch.where(top > 0, top, 1.0), g)
    t = g - (g * u).sum(-1, keepdim=True) * u
    t = t - (t * u).sum(-1, keepdim=True) * u  # a second pass: orthogonal to rounding level
    size = torch.linalg.vector_norm(t, dim=-1, keepdim=True)
    scale = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
    return torch.where(size > rtol * scale, _safe_div(t, size), torch.zeros_like(t))


def sphere_direction(w, g, *, rtol: float | None = None) -> torch.Tensor:
    r"""Steepest unit direction on the sphere (first-order constraint), the normalised projection

    .. math:: \varphi = \frac{P_w g}{\lVert P_w g\rVert_2}
              = \arg\max\ \{\langle g, \varphi\rangle : \lVert\varphi\rVert_2 = 1,\
              \langle w, \varphi\rangle = 0\}.

    The projection is applied twice, so :math:`|\langle \hat w, \varphi\rangle|` is at rounding
    level even when :math:`P_w g` is tiny next to :math:`g` (near a critical point, where one
    pass leaves a relative error :math:`\varepsilon\lVert g\rVert/\lVert P_w g\rVert`). If
    :math:`\lVert P_w g\rVert \le \texttt{rtol}\,\lVert g\rVert` (a zero gradient, or one parallel
    to ``w``: a critical point) the direction is 0. Default ``rtol`` is :math:`10\,n\,\varepsilon`
    with :math:`\varepsilon` of the working dtype: float16/bfloat16 are computed in float32 (with
    their own :math:`\varepsilon` the default would reach 1 at :math:`n = 13` in bfloat16 and
    every direction would be 0). Shapes ``(..., n)`` broadcast. Chapter 21.
    """
    w, g, dtype = _work_pair(w, g)
    return _tangent_unit(w, g, rtol).to(dtype)


def sphere_exact_direction(w, g, eta, *, rtol: float | None = None) -> torch.Tensor:
    r"""Steepest unit direction under the *exact* constraint
    :math:`\lVert w - \eta\varphi\rVert_2 = 1`.

    For unit :math:`w, \varphi` the constraint is :math:`\langle w, \varphi\rangle = \eta/2`, and

    .. math:: \varphi = \tfrac{\eta}{2}\, \hat w + \sqrt{1 - \eta^2/4}\; t ,

    with :math:`t` the unit tangent direction of :func:`sphere_direction`; requires
    :math:`0 \le \eta \le 2`. At a critical point (:math:`t = 0`) every feasible direction has the
    same first-order value and :math:`\varphi = \tfrac{\eta}{2}\hat w` is returned, so that the
    step :math:`w - \eta\varphi` scales ``w`` by :math:`1 - \eta^2/2` (see :func:`sphere_step`,
    which leaves a critical point alone instead). Chapter 21.
    """
    w, g, dtype = _work_pair(w, g)
    eta = check_real(eta, "eta", nonnegative=True, high=2.0)
    t = _tangent_unit(w, g, rtol)
    return (0.5 * eta * _unit(w) + math.sqrt(1 - eta * eta / 4) * t).to(dtype)


def sphere_step(w, g, eta, *, retraction: str = "normalize", rtol: float | None = None
                ) -> torch.Tensor:
    r"""One step of steepest descent on the unit sphere, landing exactly on it.

    With :math:`\hat w = w/\lVert w\rVert` and :math:`t` = :func:`sphere_direction`:

    * ``"normalize"``: :math:`w^+ = (\hat w - \eta t)/\lVert \hat w - \eta t\rVert_2`, the
      first-order step retracted by its *actual* norm (the post divides by
      :math:`\sqrt{1+\eta^2}`, which equals it only when :math:`t \perp w` exactly; chapter 21
      shows the iterates drift off the sphere with that constant). Rotation by
      :math:`\arctan\eta`.
    * ``"exact"``: :math:`w^+ = (1 - \eta^2/2)\hat w - \eta\sqrt{1 - \eta^2/4}\; t`, the step
      along :func:`sphere_exact_direction`: a rotation by :math:`2\arcsin(\eta/2)` along the
      great circle, chord length :math:`\eta` (requires :math:`\eta \le 2`).

    ``eta >= 0`` (finite; for :math:`\eta > 1` the normalised step is formed as
    :math:`\hat w/\eta - t`, the same direction, so a huge ``eta`` rotates by :math:`\pi/2`
    instead of overflowing). At a critical point (``t = 0``) the result is :math:`\hat w`. Shapes
    ``(..., n)`` broadcast; float16/bfloat16 are computed in float32 (see
    :func:`sphere_direction`). Chapter 21.
    """
    check_choice(retraction, "retraction", _RETRACTIONS)
    w, g, dtype = _work_pair(w, g)
    eta = check_real(eta, "eta", nonnegative=True, high=2.0 if retraction == "exact" else None)
    u = _unit(w)
    t = _tangent_unit(w, g, rtol)
    if retraction == "exact":
        step = (1 - eta * eta / 2) * u - eta * math.sqrt(1 - eta * eta / 4) * t
        critical = (t == 0).all(dim=-1, keepdim=True)
        return torch.where(critical, u, step).to(dtype)
    a, b = (1.0, eta) if eta <= 1 else (1.0 / eta, 1.0)   # (u - eta t) / eta for eta > 1
    return _normalise(a * u - b * t).to(dtype)


def linf_sphere_direction(w, g) -> torch.Tensor:
    r"""The :math:`p \to \infty` limit of :func:`lp_sphere_direction`: zero the largest coordinate.

    Let :math:`T = \{i : |w_i| = \lVert w\rVert_\infty\}` and
    :math:`s_i = \operatorname{sign}(w_i)`.
    The limit constraint is :math:`\sum_{i \in T} s_i\varphi_i = 0` and the direction solves the
    linear programme :math:`\max\langle g, \varphi\rangle` s.t. :math:`|\varphi_i| \le 1`:

    * off :math:`T`: :math:`\varphi_i = \operatorname{sign}(g_i)`;
    * on :math:`T`, with :math:`c_i = s_i g_i` sorted decreasingly, :math:`s_i\varphi_i = +1` for
      the top :math:`\lfloor |T|/2\rfloor`, :math:`-1` for the bottom :math:`\lfloor |T|/2\rfloor`
      and 0 for the middle one when :math:`|T|` is odd.

    With a unique largest coordinate :math:`k` this is :math:`\operatorname{sign}(g)` with entry
    :math:`k` set to 0, the post's rule, and :math:`w - \eta\varphi` stays on the
    :math:`\ell_\infty` sphere for small :math:`\eta`. With ties (:math:`|T| \ge 2`) it is the
    limit of the :math:`\ell_p` directions but a step leaves the :math:`\ell_\infty` sphere (a
    tied coordinate with :math:`s_i\varphi_i = -1` grows). Ties among the :math:`c_i` make the
    LP's maximiser non-unique; this returns one of them. If the tangent part of ``g`` vanishes,
    :math:`g_i = 0` off :math:`T` and all :math:`c_i` equal (exact comparisons; a zero gradient,
    or a critical point), every feasible :math:`\varphi` has :math:`\langle g,\varphi\rangle=0`
    and the direction is 0, the limit of the :math:`\ell_p` rule. Shapes ``(..., n)``; ``w``
    non-zero. Chapter 21.
    """
    w, g = _pair(w, g)
    return _linf_direction(w, g, 0.0)


def _linf_direction(w: torch.Tensor, g: torch.Tensor, rtol: float) -> torch.Tensor:
    """linf_sphere_direction; 0 also where the residual of g off s * 1_T (least squares, in
    float64 after dividing g by max |g_i|) is <= rtol * ||g||."""
    _unit(w)  # refuses zero w
    absw = w.abs()
    tied = absw == absw.amax(dim=-1, keepdim=True)
    s = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    c = torch.where(tied, s * g, torch.full_like(g, -math.inf))
    order = c.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(
        w.shape[-1], device=w.device).expand_as(order))
    k = tied.sum(-1, keepdim=True)
    psi = torch.where(rank < k // 2, 1.0, torch.where(rank >= k - k // 2, -1.0, 0.0)).to(w.dtype)
    phi = torch.where(tied, s * psi + 0.0, torch.sign(g))  # + 0.0: no -0.0 for s = -1
    # the tangent part vanishes: g = lambda * s on T, 0 off T (then every feasible phi scores 0)
    sg = s * g
    flat = ((torch.where(tied, 0.0, g) == 0).all(-1, keepdim=True)
            & (torch.where(tied, sg, -math.inf).amax(-1, keepdim=True)
               == torch.where(tied, sg, math.inf).amin(-1, keepdim=True)))
    if rtol > 0:
        G = _safe_div(g.double(), g.abs().amax(-1, keepdim=True).double())
        S, Tm = s.double(), tied.double()
        lam = (S * G * Tm).sum(-1, keepdim=True) / k
        r = G - lam * S * Tm
        flat |= (torch.linalg.vector_norm(r, dim=-1, keepdim=True)
                 <= rtol * torch.linalg.vector_norm(G, dim=-1, keepdim=True))
    return torch.where(flat, torch.zeros_like(phi), phi)


def lp_sphere_direction(w, g, p, *, rtol: float | None = None, return_lambda: bool = False,
                        iters: int = 200):
    r"""Steepest unit direction on the :math:`\ell_p` sphere (first-order constraint).

    Maximise :math:`\langle g, \varphi\rangle` s.t. :math:`\lVert\varphi\rVert_p = 1` and
    :math:`\langle w^{[p-1]}, \varphi\rangle = 0` (the tangent space of
    :math:`\lVert w\rVert_p = 1`). By Hölder with a multiplier,

    .. math:: \varphi(\lambda) = \frac{(g + \lambda u)^{[q-1]}}{\lVert (g + \lambda u)^{[q-1]}
              \rVert_p}, \qquad u = \frac{w^{[p-1]}}{\lVert w\rVert_\infty^{p-1}},\quad
              q - 1 = \frac{1}{p-1},

    where :math:`\lambda` is the root of :math:`h(\lambda) = \langle u, (g + \lambda u)^{[q-1]}
    \rangle`. :math:`h` is continuous and non-decreasing with :math:`h(\pm\infty) = \pm\infty`, so
    the root is found by bracketing and bisection, vectorised over the batch, in float64
    (at most ``iters`` halvings after the bracket is found), and a last projection onto
    :math:`u^\perp` removes the rounding that the power :math:`1/(p-1)` amplifies. The scaling
    of ``u`` (by the largest :math:`|w_i|`) avoids underflow of :math:`|w_i|^{p-1}` at large
    ``p``; it rescales :math:`\lambda` accordingly, and ``return_lambda`` returns the multiplier for
    :math:`u = w^{[p-1]}` with ``w`` as given.

    ``p = 2`` gives :func:`sphere_direction`; ``p = math.inf`` gives
    :func:`linf_sphere_direction` (and :math:`\lambda` is then ``nan``). If the tangent part of
    ``g`` vanishes (:math:`\lVert g + \lambda u\rVert \le \texttt{rtol}\lVert g\rVert`, default
    :math:`10^{3}\varepsilon` of float64; at ``p = math.inf`` the residual of ``g`` after
    removing its least-squares multiple of :math:`s\,1_T`, see :func:`linf_sphere_direction`)
    the direction is 0. Shapes ``(..., n)``. The result carries no
    gradient (autograd through the bisection would miss :math:`\lambda`'s dependence on ``w``
    and ``g``). Chapter 21.
    """
    w, g = (t.detach() for t in _pair(w, g))
    p = _check_p(p)
    iters = check_int(iters, "iters", low=1)
    if rtol is None:
        rtol = 1e3 * torch.finfo(torch.float64).eps
    rtol = check_real(rtol, "rtol", nonnegative=True)
    if math.isinf(p):
        phi = _linf_direction(w, g, rtol)
        return (phi, torch.full(phi.shape[:-1], math.nan, dtype=phi.dtype,
                                device=phi.device)) if return_lambda else phi
    _unit(w)
    work = torch.float64
    W, G = w.to(work), g.to(work)
    wmax = W.abs().amax(-1, keepdim=True)
    gmax = G.abs().amax(-1, keepdim=True)
    u = signed_power(W / wmax, p - 1)           # max |u_i| = 1
    Gs = _safe_div(G, gmax)                      # max |Gs_i| <= 1
    a = 1.0 / (p - 1.0)

    def h(lam):
        return (u * signed_power(Gs + lam * u, a)).sum(-1, keepdim=True)

    # bracket the root by doubling, then bisect
    lo = torch.full_like(wmax, -1.0)
    hi = torch.full_like(wmax, 1.0)
    for _ in range(200):
        bad_lo, bad_hi = h(lo) > 0, h(hi) < 0
        if not (bad_lo.any() or bad_hi.any()):
            break
        lo = torch.where(bad_lo, 2 * lo, lo)
        hi = torch.where(bad_hi, 2 * hi, hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        pos = h(mid) > 0
        hi, lo = torch.where(pos, mid, hi), torch.where(pos, lo, mid)
        if bool(((hi - lo) <= 4 * torch.finfo(work).eps * torch.maximum(lo.abs(), hi.abs()))
                .all()):
            break
    lam = 0.5 * (lo + hi)
    r = Gs + lam * u
    v = signed_power(r, a)
    # At the root a coordinate of r may cross zero; for p > 2 the power 1/(p-1) < 1 turns its
    # rounding error eps into eps^(1/(p-1)). Removing the component along u restores tangency.
    v = v - _safe_div((v * u).sum(-1, keepdim=True), (u * u).sum(-1, keepdim=True)) * u
    size = torch.linalg.vector_norm(v, ord=p, dim=-1, keepdim=True)
    gsize = torch.linalg.vector_norm(Gs, dim=-1, keepdim=True)   # >= 1 unless g = 0
    keep = (torch.linalg.vector_norm(r, dim=-1, keepdim=True) > rtol * gsize) & (gsize > 0)
    phi = torch.where(keep, _safe_div(v, size), torch.zeros_like(v)).to(w.dtype)
    if not return_lambda:
        return phi
    # undo the scalings: g + Lam * w^[p-1] = gmax * (Gs + lam * u) with u = w^[p-1] / wmax^(p-1)
    Lam = (lam * gmax / wmax.pow(p - 1)).squeeze(-1)
    return phi, Lam.to(w.dtype)


def riemannian_sgd_sphere(grad_fn: Callable[[torch.Tensor], torch.Tensor], w0, steps: int,
                          lr, *, retraction: str = "normalize") -> torch.Tensor:
    r"""Iterate :func:`sphere_step`:
    :math:`w_{t} = \mathrm{step}(w_{t-1}, \nabla L(w_{t-1}), \eta_t)`.

    ``grad_fn`` maps a point ``(..., n)`` to the gradient of the loss there; ``lr`` is a float
    or a callable ``t -> eta_t`` for ``t = 1, ..., steps``. Returns the iterates,
    shape ``(steps + 1, ..., n)``, the first being :math:`w_0/\lVert w_0\rVert`. Chapter 21.
    """
    check_callable(grad_fn, "grad_fn", "grad_fn(w)")
    steps = check_int(steps, "steps", low=0)
    check_choice(retraction, "retraction", _RETRACTIONS)
    w0 = _vector(w0, "w0")
    w = _unit(upcast_half(w0), "w0").to(w0.dtype)
    high = 2.0 if retraction == "exact" else None   # the exact step's chord is at most 2

    def eta_at(t):   # lr, or lr(t), checked under the caller's name
        return (check_real(lr(t), f"lr({t})", nonnegative=True, high=high) if callable(lr)
                else check_real(lr, "lr", nonnegative=True, high=high))

    if not callable(lr):
        eta_at(0)   # refuse a bad constant even when steps = 0
    out = [w]
    for t in range(1, steps + 1):
        eta = eta_at(t)
        g = _vector(grad_fn(w), "grad_fn(w)")
        if g.shape[-1] != w.shape[-1]:
            raise ValueError(f"grad_fn(w) must have the last dimension of w0, "
                             f"{w.shape[-1]}, got shape {tuple(g.shape)}")
        w = sphere_step(w, g, eta, retraction=retraction)
        out.append(w)
    return torch.stack(out)
