r"""Input-gradient and parameter-gradient norms of MLPs, and the inequality between them.

Chapter: *Input-gradient versus parameter-gradient penalty*
(``notebooks/04-gradient-penalty.ipynb``).

An :math:`l`-layer MLP maps :math:`h^{(1)} = x` through
:math:`z^{(t+1)} = W^{(t)} h^{(t)} + b^{(t)}`, :math:`h^{(t+1)} = g^{(t)}(z^{(t+1)})`, and
:math:`f` is any scalar function of :math:`h^{(l+1)}`. With
:math:`J_t = \partial h^{(t)}/\partial x` (:math:`J_1 = I`),

.. math:: \|\nabla_x f\|^2 \sum_{t=1}^{l}
          \frac{1 + \|h^{(t)}\|^2}{\|W^{(t)}\|^2\,\|J_t\|^2}
          \;\le\; \|\nabla_\theta f\|^2
          = \sum_{t=1}^{l}\Big(\|\nabla_{W^{(t)}} f\|_F^2 + \|\nabla_{b^{(t)}} f\|^2\Big),

with spectral (or, weaker, Frobenius) norms of :math:`W^{(t)}` and :math:`J_t`. A
*residual* network :math:`h^{(t+1)} = h^{(t)} + g(W^{(t)} h^{(t)} + b^{(t)})` breaks it.

Conventions: ``Ws[t]`` has shape ``(n_{t+1}, n_t)`` (torch's ``nn.Linear`` layout), ``bs[t]``
shape ``(n_{t+1},)``; activations are named (:data:`ACTIVATIONS`). Gradients are stored with
the shape of the parameter, so :math:`\nabla_W f = \delta h^\top`. ``x``, ``Ws`` and ``bs``
are cast to their common (promoted) floating dtype, which the results keep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._checks import (
    as_float_tensor,
    check_callable,
    check_choice,
    check_finite,
    check_float_dtype,
    check_generator,
    check_real,
    upcast_half,
)

__all__ = ["ACTIVATIONS", "random_mlp", "mlp_forward", "PenaltyTerms", "penalty_terms"]

#: Elementwise activations by name.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda z: z,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
}


def random_mlp(widths: Sequence[int], *, generator: torch.Generator, scale: float = 1.0,
               bias_scale: float = 0.1, dtype: torch.dtype = torch.float64,
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    r"""Gaussian weights and biases of an MLP with layer widths ``widths``.

    .. math:: W^{(t)}_{ij} \sim \mathcal N(0, s^2 / n_t), \qquad
              b^{(t)}_i \sim \mathcal N(0, s_b^2)

    ``widths = [n_1, ..., n_{l+1}]`` (input width first, at least two entries, each >= 1);
    ``s = scale`` (``1`` is LeCun's scale, ``sqrt(2)`` Kaiming's), ``s_b = bias_scale``.
    Tensors are created on ``generator.device`` with the floating ``dtype``. Returns
    ``(Ws, bs)``.
    """
    check_generator(generator)
    check_float_dtype(dtype)
    if (isinstance(widths, (str, torch.Tensor)) or not isinstance(widths, Sequence)
            or len(widths) < 2):
        raise ValueError(f"widths must be a sequence of at least two ints, got {widths!r}")
    for n in widths:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"widths must hold ints >= 1, got {widths!r}")
    scale = check_real(scale, "scale", nonnegative=True)
    bias_scale = check_real(bias_scale, "bias_scale", nonnegative=True)
    kw = dict(generator=generator, dtype=dtype, device=generator.device)
    pairs = zip(widths[:-1], widths[1:], strict=True)
    Ws = [torch.randn(m, n, **kw) * (scale / n**0.5) for n, m in pairs]
    bs = [torch.randn(m, **kw) * bias_scale for m in widths[1:]]
    return Ws, bs


def _check_net(x, Ws, bs, acts, residual: bool):
    x = as_float_tensor(x, "x")
    check_finite(x, "x")
    if isinstance(Ws, torch.Tensor) or not isinstance(Ws, Sequence) or len(Ws) == 0:
        raise TypeError("Ws must be a non-empty sequence of weight matrices")
    if isinstance(bs, torch.Tensor) or not isinstance(bs, Sequence) or len(bs) != len(Ws):
        raise ValueError(f"bs must be a sequence of {len(Ws)} bias vectors, one per weight")
    if isinstance(acts, str):
        acts = [acts] * len(Ws)
    if not isinstance(acts, Sequence) or len(acts) != len(Ws):
        raise ValueError(f"acts must be one activation name or {len(Ws)} of them")
    for a in acts:
        check_choice(a, "acts", list(ACTIVATIONS))
    width = x.shape[-1]
    Ws, bs = list(Ws), list(bs)
    dtype = x.dtype
    for t, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        W = Ws[t] = as_float_tensor(W, f"Ws[{t}]", min_ndim=2)
        b = bs[t] = as_float_tensor(b, f"bs[{t}]")
        dtype = torch.promote_types(dtype, torch.promote_types(W.dtype, b.dtype))
        check_finite(W, f"Ws[{t}]")
        check_finite(b, f"bs[{t}]")
        if W.ndim != 2 or W.shape[1] != width:
            raise ValueError(f"Ws[{t}] must have shape (n_out, {width}), got {tuple(W.shape)}")
        if b.shape != W.shape[:1]:
            raise ValueError(f"bs[{t}] must have shape ({W.shape[0]},), got {tuple(b.shape)}")
        if residual and W.shape[0] != W.shape[1]:
            raise ValueError(f"a residual network needs square weights; Ws[{t}] has shape "
                             f"{tuple(W.shape)}")
        width = W.shape[0]
    return x.to(dtype), [W.to(dtype) for W in Ws], [b.to(dtype) for b in bs], list(acts)


def _forward(x, Ws, bs, acts, residual):
    hs, zs = [x], []
    for W, b, a in zip(Ws, bs, acts, strict=True):
        z = hs[-1] @ W.T + b
        g = ACTIVATIONS[a](z)
        zs.append(z)
        hs.append(hs[-1] + g if residual else g)
    return hs, zs


def mlp_forward(x, Ws, bs, acts, *, residual: bool = False
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    r"""Forward pass keeping every activation.

    .. math:: z^{(t+1)} = W^{(t)} h^{(t)} + b^{(t)}, \qquad
              h^{(t+1)} = g^{(t)}(z^{(t+1)})\ \ \text{or, residual,}\ \
              h^{(t+1)} = h^{(t)} + g^{(t)}(z^{(t+1)}).

    ``x`` has shape ``(..., n_1)``; ``acts`` is one name of :data:`ACTIVATIONS` or one per
    layer. Returns ``(hs, zs)``: ``hs = [h^(1) = x, ..., h^(l+1)]`` and
    ``zs = [z^(2), ..., z^(l+1)]``, each of shape ``(..., n_t)``.
    """
    x, Ws, bs, acts = _check_net(x, Ws, bs, acts, residual)
    return _forward(x, Ws, bs, acts, residual)


class PenaltyTerms(NamedTuple):
    """Both sides of the inequality at one input, and their parts (shapes ``()`` or ``(l,)``)."""

    input_grad_sq: torch.Tensor    #: ||grad_x f||^2
    weight_grad_sq: torch.Tensor   #: ||grad_{W_t} f||_F^2 per layer
    bias_grad_sq: torch.Tensor     #: ||grad_{b_t} f||^2 per layer
    weight_terms: torch.Tensor     #: ||grad_x f||^2 ||h_t||^2 / (||W_t||^2 ||J_t||^2)
    bias_terms: torch.Tensor       #: ||grad_x f||^2 / (||W_t||^2 ||J_t||^2)
    weight_norms: torch.Tensor     #: ||W_t|| (spectral or Frobenius)
    jacobian_norms: torch.Tensor   #: ||J_t|| = ||d h_t / d x|| (same norm)
    act_norms: torch.Tensor        #: ||h_t||

    @property
    def lhs(self) -> torch.Tensor:
        """The input-gradient side, the sum of all weight and bias terms."""
        return self.weight_terms.sum() + self.bias_terms.sum()

    @property
    def rhs(self) -> torch.Tensor:
        """The parameter-gradient side, ||grad_theta f||^2."""
        return self.weight_grad_sq.sum() + self.bias_grad_sq.sum()

    @property
    def ratio(self) -> torch.Tensor:
        """lhs / rhs (0 when both are 0); at most 1 for an MLP."""
        lhs, rhs = self.lhs, self.rhs
        return torch.where(rhs > 0, lhs / torch.where(rhs > 0, rhs, 1.0),
                           torch.where(lhs > 0, torch.inf, 0.0).to(lhs.dtype))


def _norm(M: torch.Tensor, ord) -> torch.Tensor:
    """Vector (``ord=None``) or matrix norm, scaled by the largest entry first so that squares
    of tiny or huge entries neither underflow nor overflow; returned in ``M``'s dtype."""
    M32 = upcast_half(M)
    m = M32.abs().amax()
    if m == 0:
        return torch.zeros((), dtype=M.dtype, device=M.device)
    U = M32 / m
    n = torch.linalg.vector_norm(U) if ord is None else torch.linalg.matrix_norm(U, ord)
    return (m * n).to(M.dtype)


def penalty_terms(x, Ws, bs, acts, f: Callable[[torch.Tensor], torch.Tensor], *,
                  norm: str = "spectral", residual: bool = False) -> PenaltyTerms:
    r"""Both sides of the input- versus parameter-gradient inequality at one input ``x``.

    .. math:: \underbrace{\|\nabla_x f\|^2 \sum_t \frac{1 + \|h^{(t)}\|^2}
              {\|W^{(t)}\|^2 \|J_t\|^2}}_{\texttt{lhs}}
              \le \underbrace{\sum_t \|\nabla_{W^{(t)}} f\|_F^2
              + \|\nabla_{b^{(t)}} f\|^2}_{\texttt{rhs}}

    Gradients come from autograd and :math:`J_t = \partial h^{(t)}/\partial x` from
    ``torch.func.jacrev``. ``norm`` (``"spectral"`` or ``"fro"``) is the norm of
    :math:`W^{(t)}` and :math:`J_t`. **0/0 terms:** when :math:`\|W^{(t)}\|\|J_t\| = 0`
    (all ReLUs of an earlier layer dead, or a zero weight) the chapter proves
    :math:`\nabla_x f = 0`, and the term is defined as 0; a zero denominator under a
    non-zero numerator (possible only outside the theorem, e.g. ``residual=True``) gives
    ``inf``. The terms are computed as squared ratios of norms, one factor divided at a time,
    so weights of scale ``1e-100`` give the right (order-one) terms instead of 0/0.
    ``x`` is one input of shape ``(n_1,)``; ``f`` maps ``h^(l+1)`` to a 0-d (or one-element)
    tensor; an ``f`` that ignores its argument has all gradients 0, and a non-finite value or
    gradient of ``f`` raises ``ValueError``. Float64 is advised: near-tight cases are within
    ``1e-3`` of equality.
    """
    x, Ws, bs, acts = _check_net(x, Ws, bs, acts, residual)
    if x.ndim != 1:
        raise ValueError(f"x must be a single input of shape (n_1,), got {tuple(x.shape)}")
    check_callable(f, "f", "f(h), mapping the network output h to a scalar")
    check_choice(norm, "norm", ["spectral", "fro"])
    x = x.detach().clone().requires_grad_(True)
    Ws = [W.detach().clone().requires_grad_(True) for W in Ws]
    bs = [b.detach().clone().requires_grad_(True) for b in bs]
    hs, _ = _forward(x, Ws, bs, acts, residual)
    out = f(hs[-1])
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise ValueError("f must return a scalar tensor")
    if not torch.isfinite(out).all():
        raise ValueError(f"f must be finite at the network output, got {out.item()}")
    params = [x, *Ws, *bs]
    if out.requires_grad:
        grads = torch.autograd.grad(out.reshape(()), params, allow_unused=True)
    else:  # f ignores its argument: every gradient is 0
        grads = [None] * len(params)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    if not all(torch.isfinite(g).all() for g in grads):
        raise ValueError("the gradients of f must be finite at this input")
    depth = len(Ws)
    gx, gW, gb = grads[0], grads[1:1 + depth], grads[1 + depth:]

    Wd, bd = [W.detach() for W in Ws], [b.detach() for b in bs]
    jac = torch.func.jacrev(lambda u: tuple(_forward(u, Wd, bd, acts, residual)[0][:-1]))
    Js = jac(x.detach())
    mat = 2 if norm == "spectral" else "fro"
    W_norm = torch.stack([_norm(W, mat) for W in Wd])
    J_norm = torch.stack([_norm(J, mat) for J in Js])
    h_norm = torch.stack([_norm(h.detach(), None) for h in hs[:-1]])
    gx_norm = _norm(gx, None)
    # term_t = (||grad_x f|| / ||W_t|| / ||J_t||)^2 (times ||h_t||^2), 0/0 := 0, (>0)/0 := inf
    zero = (W_norm == 0) | (J_norm == 0)
    one = torch.ones_like(W_norm)
    q = gx_norm / torch.where(zero, one, W_norm) / torch.where(zero, one, J_norm)
    inf, nil = torch.full_like(q, torch.inf), torch.zeros_like(q)
    bias_terms = torch.where(zero, torch.where(gx_norm > 0, inf, nil), q.square())
    weight_terms = torch.where(zero, torch.where((gx_norm > 0) & (h_norm > 0), inf, nil),
                               (q * h_norm).square())
    return PenaltyTerms(
        input_grad_sq=gx_norm.square(),
        weight_grad_sq=torch.stack([_norm(g, None).square() for g in gW]),
        bias_grad_sq=torch.stack([_norm(g, None).square() for g in gb]),
        weight_terms=weight_terms,
        bias_terms=bias_terms,
        weight_norms=W_norm,
        jacobian_norms=J_norm,
        act_norms=h_norm,
    )
