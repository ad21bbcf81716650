r"""Sign descent: SignSGD/Signum, the Amos-style hyperparameter rule, decoupled-decay fixed points.

Chapters: *Lion* (``notebooks/16-lion.ipynb``) for :class:`SignSGD` and
:func:`amos_sign_hparams`; *Embedding outliers* (``notebooks/18-sign-embedding-outliers.ipynb``)
for the fixed point :func:`sign_decay_fixed_point` and :func:`sign_decay_closed_form`.

Signum (SignSGD with momentum :math:`\beta`, SignSGD when :math:`\beta=0`) with decoupled decay:

.. math:: m_t = \beta m_{t-1} + (1-\beta) g_t,\qquad
          \theta_t = (1-\eta\lambda)\theta_{t-1} - \eta\operatorname{sign}(m_t).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._checks import as_float_tensor, check_int, check_real
from ._fused import check_fused
from .lion import add_checked_group, lion_update, run_closure, sign_group_step

__all__ = [
    "SignSGD",
    "signum_update",
    "amos_sign_hparams",
    "sign_decay_fixed_point",
    "sign_decay_closed_form",
]


class SignSGD(torch.optim.Optimizer):
    r"""SignSGD (``momentum=0``) and Signum (``momentum`` :math:`=\beta>0`), decoupled decay.

    .. math:: m \leftarrow \beta m + (1-\beta) g,\qquad
              \theta \leftarrow (1-\eta\lambda)\theta - \eta\operatorname{sign}(m)

    The reference sign method of chapter 16: it is :class:`dlmath.optim.Lion` with
    ``betas=(momentum, momentum)`` and performs the same floating-point operations. One state
    buffer ``exp_avg`` per parameter (kept also when ``momentum=0``, for a uniform state).
    ``fused`` (``None``: auto, ``True``, ``False``) chooses the compiled or the foreach step
    exactly as in :class:`dlmath.optim.Lion`.
    """

    def __init__(self, params, lr: float = 1e-4, momentum: float = 0.0,
                 weight_decay: float = 0.0, *, fused: bool | None = None):
        lr = check_real(lr, "lr", nonnegative=True)
        momentum = check_real(momentum, "momentum", low=0.0, high=1.0)
        weight_decay = check_real(weight_decay, "weight_decay", nonnegative=True)
        self.fused = check_fused(fused)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group as ``torch.optim`` does, then check it; a bad group is removed again."""
        add_checked_group(self, param_group, _check_group)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """Perform one update; ``closure`` (optional) recomputes and returns the loss."""
        loss = run_closure(closure)
        for group in self.param_groups:
            sign_group_step(self, group, group["momentum"], group["momentum"])
        return loss


def signum_update(theta, m, g, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    r"""One Signum step as a pure function, returning new ``(theta, m)``.

    .. math:: m' = \beta m + (1-\beta) g,\qquad
              \theta' = (1-\eta\lambda)\theta - \eta\operatorname{sign}(m')
    """
    momentum = check_real(momentum, "momentum", low=0.0, high=1.0)
    return lion_update(theta, m, g, lr=lr, betas=(momentum, momentum), weight_decay=weight_decay)


def amos_sign_hparams(alpha0: float, sigma: float, *, q: float = 1.0, kappa: float = 0.0,
                      step: int = 0) -> tuple[float, float]:
    r"""Learning rate and weight decay of a sign optimizer from the Amos-style rule.

    Writing a step as :math:`\theta \leftarrow \theta - (\alpha_t u_t + \rho_t\theta)` with
    :math:`\alpha_t = \alpha_0\|\varepsilon_0\|/(\|u_t\|(\kappa t+1))` and
    :math:`\rho_t = \alpha_0^2/(2q(\kappa t+1))`, a sign update (:math:`\|u\|=\sqrt k`) on a
    parameter of scale :math:`\sigma` (:math:`\|\varepsilon_0\|=\sqrt k\,\sigma`) gives

    .. math:: \eta_t = \frac{\alpha_0\sigma}{\kappa t + 1},\qquad
              \lambda = \frac{\rho_t}{\alpha_t} = \frac{\alpha_0}{2q\sigma},

    where :math:`\lambda` is the weight decay in the AdamW/Lion convention
    (:math:`\theta \leftarrow (1-\eta\lambda)\theta - \dots`). Returns ``(lr, weight_decay)``;
    chapter 16 reproduces lr ≈ 4e-5, weight decay ≈ 0.015 for BERT-base.
    """
    alpha0 = check_real(alpha0, "alpha0", positive=True)
    sigma = check_real(sigma, "sigma", positive=True)
    q = check_real(q, "q", positive=True)
    kappa = check_real(kappa, "kappa", nonnegative=True)
    step = check_int(step, "step", low=0)
    return alpha0 * sigma / (kappa * step + 1.0), alpha0 / (2.0 * q * sigma)


def sign_decay_fixed_point(s, weight_decay: float) -> torch.Tensor:
    r"""The fixed point :math:`\theta^* = -s/\lambda` of
    :math:`\theta \leftarrow (1-\eta\lambda)\theta - \eta s` for a frozen sign :math:`s`.

    ``s`` is a floating tensor (any shape) of entries in :math:`\{-1, 0, 1\}` or :math:`[-1, 1]`.
    """
    s = as_float_tensor(s, "s", min_ndim=0)
    if not bool(((s >= -1) & (s <= 1)).all()):  # also refuses NaN
        raise ValueError("s must hold signs: entries in [-1, 1]")
    weight_decay = check_real(weight_decay, "weight_decay", positive=True)
    return -s / weight_decay


def sign_decay_closed_form(theta0, s, *, lr: float, weight_decay: float, t) -> torch.Tensor:
    r"""Closed form of :math:`t` steps of :math:`\theta \leftarrow (1-\eta\lambda)\theta-\eta s`:

    .. math:: \theta_t = \theta^* + (1-\eta\lambda)^t(\theta_0-\theta^*),
              \qquad \theta^* = -s/\lambda .

    ``theta0``, ``s`` and ``t`` broadcast (``t`` may be a tensor of step counts, all
    :math:`\ge 0`; non-integer ``t`` interpolates); needs :math:`0 < \eta\lambda \le 1` (then
    it is a contraction towards :math:`\theta^*`). Returns a tensor of the broadcast shape, in
    ``theta0``'s dtype and on its device.
    """
    theta0 = as_float_tensor(theta0, "theta0", min_ndim=0)
    lr = check_real(lr, "lr", positive=True)
    weight_decay = check_real(weight_decay, "weight_decay", positive=True)
    if lr * weight_decay > 1:
        raise ValueError(f"lr * weight_decay must be <= 1, got {lr * weight_decay}")
    if not isinstance(s, torch.Tensor):
        s = as_float_tensor(s, "s", min_ndim=0, dtype=theta0.dtype)
    star = sign_decay_fixed_point(s.to(theta0.device, theta0.dtype), weight_decay)
    try:
        t = torch.as_tensor(t, dtype=theta0.dtype, device=theta0.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"t must be a number or a tensor of step counts, got "
                        f"{type(t).__name__}") from exc
    if not bool((t >= 0).all()):
        raise ValueError("t must be >= 0 (a number of steps)")
    return star + (1.0 - lr * weight_decay) ** t * (theta0 - star)


def _check_group(group: dict) -> None:
    """A SignSGD group's hyperparameters, checked as the constructor's arguments are."""
    check_real(group["lr"], "lr", nonnegative=True)
    check_real(group["momentum"], "momentum", low=0.0, high=1.0)
    check_real(group["weight_decay"], "weight_decay", nonnegative=True)
