r"""Spectral weight decay: shrink only the top singular value of a weight matrix.

Chapter: *The gradient of the spectral norm* (``notebooks/07-spectral-norm-gradient.ipynb``).
"""

from __future__ import annotations

import torch

from .._checks import check_int, check_matrix, check_real
from ..linalg import power_iteration

__all__ = ["spectral_decay_"]


def spectral_decay_(W, lr: float, weight_decay: float, v=None, iters: int = 1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Decoupled spectral weight decay, in place:

    .. math:: W \leftarrow W - \eta\lambda\, W v v^\top ,

    where :math:`v \approx v_1` comes from ``iters`` steps of power iteration warm-started at
    ``v`` (see :func:`dlmath.linalg.power_iteration`; ``v=None`` starts from the ones vector, or
    from a Gaussian when ``generator`` is given). When :math:`v = \pm v_1` this is
    :math:`W - \eta\lambda\sigma_1 u_1 v_1^\top`, the gradient step on
    :math:`\tfrac{\lambda}{2}\|W\|_2^2`: it multiplies :math:`\sigma_1` by :math:`1-\eta\lambda`
    and leaves every other singular pair unchanged.

    Args:
        W: ``(..., n, m)`` floating tensor (a parameter is fine: the update runs under
            ``torch.no_grad()``), modified in place; anything else (a list) is a ``TypeError``.
        lr, weight_decay: :math:`\eta \ge 0` and :math:`\lambda \ge 0`.
        v: warm start of shape ``(..., m)``, normally the value returned by the previous call.
        iters: power-iteration steps per call (``>= 0``).

    Returns:
        The unit vector(s) ``v`` used, shape ``(..., m)``, to pass back in at the next step.
    """
    if not isinstance(W, torch.Tensor):            # a list would be decayed as a copy
        raise TypeError(f"W must be a torch.Tensor (it is modified in place), got "
                        f"{type(W).__name__}")
    W = check_matrix(W, "W")
    lr = check_real(lr, "lr", nonnegative=True)
    weight_decay = check_real(weight_decay, "weight_decay", nonnegative=True)
    iters = check_int(iters, "iters", low=0)
    if v is not None and (not isinstance(v, torch.Tensor) or v.shape[-1:] != W.shape[-1:]):
        raise ValueError(f"v must be a tensor with last dimension {W.shape[-1]} (the columns "
                         f"of W), got {getattr(v, 'shape', type(v).__name__)}")
    with torch.no_grad():
        _, _, v = power_iteration(W, iters, v0=v, generator=generator)
        Wv = (W @ v.unsqueeze(-1))
        W.sub_((lr * weight_decay) * (Wv * v.unsqueeze(-2)))
    return v
