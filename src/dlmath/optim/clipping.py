r"""Gradient clipping by the global norm, and the first-order view of an update.

Chapter: *Why gradient clipping defaults to 1* (``notebooks/12-gradient-clipping.ipynb``).

All gradients of a model are treated as one long vector :math:`g`. Clipping by the global
norm keeps its direction and caps its length at :math:`\tau`:

.. math:: \operatorname{clip}(g, \tau) = \min\Big(1, \frac{\tau}{\|g\| + \epsilon}\Big)\, g,

with :math:`\epsilon = 10^{-6}` in ``torch.nn.utils.clip_grad_norm_``, which
:func:`clip_grad_norm_` reproduces operation by operation (same norm, same coefficient, same
in-place scaling). Edge cases, all as in torch: ``None`` gradients are skipped; with no
gradients at all the norm is ``0.0``; zero gradients stay zero (coefficient 1); a non-finite
norm gives coefficient 0 (``inf``) or NaN (``nan``), so finite entries become 0 and infinite
ones NaN, unless ``error_if_nonfinite=True``, which raises ``ValueError`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from .._checks import as_float_tensor, check_callable, check_dim, check_no_nan, check_real

__all__ = [
    "global_grad_norm",
    "clip_coefficient",
    "clip_by_global_norm",
    "clip_grad_norm_",
    "first_order_change",
    "sign_cosine",
    "decrease_clipped_lr",
]

TORCH_EPS = 1e-6  # the constant torch adds to the norm before dividing


def _tensors(grads, name: str) -> list[torch.Tensor | None]:
    if isinstance(grads, torch.Tensor):
        grads = [grads]
    grads = list(grads)
    for i, g in enumerate(grads):
        if g is not None and not (isinstance(g, torch.Tensor) and g.is_floating_point()):
            raise TypeError(f"{name}[{i}] must be a floating torch.Tensor or None, "
                            f"got {type(g).__name__}")
    return grads


def _norm_type(p) -> float:
    return check_real(p, "norm_type", positive=True, finite=False)


def global_grad_norm(grads, norm_type: float = 2.0) -> torch.Tensor:
    r"""The norm of all gradients concatenated into one vector,

    .. math:: \|g\|_p = \Big\|\big(\|g^{(1)}\|_p, \dots, \|g^{(k)}\|_p\big)\Big\|_p ,

    computed as torch does: the norm of the per-tensor norms. ``grads`` is a tensor or an
    iterable of tensors and ``None`` (skipped); ``norm_type`` is :math:`p>0` or ``inf``.
    Returns a 0-d tensor on the first gradient's device (``tensor(0.)`` if there is none).
    """
    p = _norm_type(norm_type)
    gs = [g for g in _tensors(grads, "grads") if g is not None]
    if not gs:
        return torch.tensor(0.0)
    dev = gs[0].device
    with torch.no_grad():
        norms = [torch.linalg.vector_norm(g, p).to(dev) for g in gs]
        return torch.linalg.vector_norm(torch.stack(norms), p)


def clip_coefficient(total_norm, max_norm: float, eps: float = TORCH_EPS) -> torch.Tensor:
    r"""The factor :math:`\min(1, \tau/(\|g\|+\epsilon))` that clipping multiplies by.

    ``total_norm`` is a tensor (any shape) of norms :math:`\ge 0`. With ``eps=0`` a zero norm
    gives 1 (nothing to clip), not ``inf``; an infinite norm gives 0 and NaN stays NaN.
    """
    total_norm = as_float_tensor(total_norm, "total_norm", min_ndim=0)
    if (total_norm < 0).any():
        raise ValueError("total_norm must be >= 0")
    tau = check_real(max_norm, "max_norm", nonnegative=True)
    eps = check_real(eps, "eps", nonnegative=True)
    coef = torch.clamp(tau / (total_norm + eps), max=1.0)
    return torch.where(total_norm + eps == 0, torch.ones_like(coef), coef)


def clip_by_global_norm(grads, max_norm: float, *, norm_type: float = 2.0,
                        eps: float = TORCH_EPS) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    r"""Functional clipping: returns ``(clipped, total_norm)`` without touching ``grads``.

    ``clipped[i] = coef * grads[i]`` with :math:`\mathrm{coef} = \min(1, \tau/(\|g\|+\epsilon))`
    and :math:`\|g\|` from :func:`global_grad_norm`; ``None`` entries stay ``None``.
    ``eps=0`` gives the textbook :math:`\min(1,\tau/\|g\|)\,g`.
    """
    gs = _tensors(grads, "grads")
    total = global_grad_norm(gs, norm_type)
    coef = clip_coefficient(total, max_norm, eps)
    return [None if g is None else g * coef.to(g.device) for g in gs], total


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, *,
                    error_if_nonfinite: bool = False, eps: float = TORCH_EPS) -> torch.Tensor:
    r"""In-place clipping of ``p.grad`` for every parameter, exactly as
    ``torch.nn.utils.clip_grad_norm_``; returns the total norm before clipping.

    .. math:: g^{(i)} \leftarrow \min\Big(1, \frac{\tau}{\|g\|_p + 10^{-6}}\Big)\, g^{(i)}

    Like torch it always multiplies (by 1 when nothing is clipped). With
    ``error_if_nonfinite=True`` a NaN or infinite total norm raises ``ValueError`` and leaves
    the gradients untouched.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    total = global_grad_norm(grads, norm_type)
    if error_if_nonfinite and not torch.isfinite(total):
        raise ValueError(f"the total gradient norm of order {norm_type} is {total.item()}, "
                         f"which cannot be clipped (error_if_nonfinite=True)")
    coef = clip_coefficient(total, max_norm, eps)
    with torch.no_grad():
        for g in grads:
            g.mul_(coef.to(g.device))
    return total


def first_order_change(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                       direction, eta) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The actual and the first-order predicted loss change of the step
    :math:`\theta \to \theta - \eta u`:

    .. math:: \Delta\mathcal L = \mathcal L(\theta - \eta u) - \mathcal L(\theta)
              \approx -\eta\, u\cdot g, \qquad g = \nabla\mathcal L(\theta).

    ``loss_fn()`` evaluates the loss at the current values of ``params`` (leaf tensors with
    ``requires_grad``). ``direction`` is a list of tensors shaped like ``params`` or a function
    mapping the list of gradients to one (e.g. ``lambda gs: [g.sign() for g in gs]``).
    ``eta`` is a number or a 1-D tensor of step sizes. Returns ``(actual, predicted)``, each
    shaped like ``eta``, in float64. The parameters are restored afterwards.
    """
    check_callable(loss_fn, "loss_fn", "loss_fn()")
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if not params:
        raise ValueError("params must hold at least one tensor")
    for i, p in enumerate(params):
        if not (isinstance(p, torch.Tensor) and p.requires_grad):
            raise ValueError(f"params[{i}] must be a tensor with requires_grad=True")
    # as_float_tensor reads a Python number directly in float64 (no float32 detour)
    etas = as_float_tensor(eta, "eta", min_ndim=0, dtype=torch.float64).detach().double().cpu()
    check_no_nan(etas, "eta")
    if etas.ndim > 1:
        raise ValueError(f"eta must be a number or a 1-D tensor, got shape {tuple(etas.shape)}")
    loss0 = loss_fn()
    if not isinstance(loss0, torch.Tensor) or loss0.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor")
    grads = torch.autograd.grad(loss0.reshape(()), params)
    u = direction(list(grads)) if callable(direction) else direction
    if isinstance(u, torch.Tensor) or not isinstance(u, Iterable):
        raise TypeError("direction must be a list of tensors or a function returning one")
    u = list(u)
    if len(u) != len(params) or any(not isinstance(a, torch.Tensor) or a.shape != p.shape
                                    for a, p in zip(u, params, strict=False)):
        raise ValueError("direction must hold one tensor shaped like each parameter")
    slope = sum((a.double() * g.double()).sum() for a, g in zip(u, grads, strict=True)).item()
    actual = torch.empty_like(etas)
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for k, e in enumerate(etas.reshape(-1).tolist()):
                for p, a, p0 in zip(params, u, saved, strict=True):
                    p.copy_(p0 - e * a)
                actual.view(-1)[k] = loss_fn().double().item() - loss0.double().item()
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved, strict=True):
                p.copy_(p0)
    return actual, -etas * slope


def sign_cosine(g, dim: int = -1) -> torch.Tensor:
    r"""The cosine between :math:`\operatorname{sign}(g)` and :math:`g` along ``dim``:

    .. math:: \cos(\operatorname{sign} g, g) = \frac{\|g\|_1}{\|\operatorname{sign} g\|_2\,
              \|g\|_2} = \frac{\|g\|_1}{\sqrt{N}\,\|g\|_2}\quad\text{if no } g_i = 0 .

    The denominator uses the actual norm of ``torch.sign(g)`` (zeros count 0), so the value
    lies in :math:`[1/\sqrt{\mathrm{nnz}}, 1]`. Accumulates in float64 after dividing by
    :math:`\max_i|g_i|`, so tiny or huge entries neither underflow nor overflow (returns
    ``g``'s dtype). An all-zero slice has no direction and gives NaN; NaN/inf in ``g`` raise.
    """
    g = as_float_tensor(g, "g")
    dim = check_dim(g, dim)
    if not torch.isfinite(g).all():
        raise ValueError("g must be finite")
    x = g.double()
    nnz = (x != 0).sum(dim=dim).double()  # before rescaling, which may flush subnormals to 0
    # the ratio is scale-free: rescale so that the squares neither underflow nor overflow
    top = x.abs().amax(dim=dim, keepdim=True)
    x = x / torch.where(top > 0, top, torch.ones_like(top))
    l1 = x.abs().sum(dim=dim)
    l2 = torch.linalg.vector_norm(x, dim=dim)
    return (l1 / (nnz.sqrt() * l2)).to(g.dtype)


def decrease_clipped_lr(lr: float, predicted_decrease, threshold: float) -> torch.Tensor:
    r"""A learning rate clipped so that the predicted decrease :math:`\eta_t\, u\cdot g`
    never exceeds :math:`\eta\,\mathcal T`:

    .. math:: \eta_t = \eta \min\Big(1, \frac{\mathcal T}{u\cdot g}\Big)
              \quad (u\cdot g > 0), \qquad \eta_t = \eta \quad (u\cdot g \le 0).

    ``predicted_decrease`` is :math:`u\cdot g` (a tensor, any shape); the result has its
    shape, dtype and device. For SGD (:math:`u=g`) the factor is
    :math:`\mathcal T/\|g\|^2`, not the :math:`\tau/\|g\|` of norm clipping. Edge cases:
    :math:`u\cdot g = +\infty` gives the rate 0 (the limit of the formula),
    :math:`u\cdot g = -\infty` the rate :math:`\eta`; NaN raises ``ValueError``.
    """
    ug = as_float_tensor(predicted_decrease, "predicted_decrease", min_ndim=0)
    check_no_nan(ug, "predicted_decrease")
    lr = check_real(lr, "lr", positive=True)
    T = check_real(threshold, "threshold", positive=True)
    factor = torch.where(ug > T, T / ug, torch.ones_like(ug))
    return lr * factor
