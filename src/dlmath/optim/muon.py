r"""Muon (MomentUm Orthogonalized by Newton–Schulz), as a ``torch.optim.Optimizer``.

Chapters: *Muon: from vectors to matrices* (``notebooks/08-muon-msign.ipynb``) and *The Muon
sequel* (``notebooks/09-muon-moonlight.ipynb``).

One step for a matrix parameter :math:`W \in \mathbb{R}^{n\times m}` with gradient :math:`G_t`,
in ``torch.optim.Muon``'s conventions (momentum as an exponential average, which differs from
Su's :math:`M_t = \beta M_{t-1} + G_t` only by the factor :math:`1-\beta`, invisible to msign):

.. math::
    B_t &= \beta B_{t-1} + (1-\beta) G_t, \qquad
    \tilde B_t = \begin{cases} (1-\beta) G_t + \beta B_t & \text{Nesterov} \\
                                B_t & \text{otherwise}\end{cases} \\
    W_t &= (1 - \eta\lambda) W_{t-1} - \eta\, s(n, m)\, \operatorname{msign}(\tilde B_t)

with msign computed by :func:`dlmath.msign.msign` (Newton–Schulz, float32 on CPU) and the
learning-rate factor :math:`s(n, m)` chosen by ``adjust_lr``:

* ``None``: :math:`s = 1`;
* ``"original"`` (Keller Jordan, and ``torch.optim.Muon``'s default): :math:`\sqrt{\max(1, n/m)}`;
* ``"match_rms_adamw"`` (Moonlight): :math:`0.2\sqrt{\max(n, m)}`, which makes the update's RMS
  0.2 when msign is exact and full rank.

``spectral_decay`` :math:`\mu > 0` adds the decoupled spectral weight decay
:math:`W \leftarrow W - \eta\mu\, W v_1 v_1^\top` of :func:`dlmath.optim.spectral.spectral_decay_`
(chapter 07), with :math:`v_1` from power iteration warm-started at the previous step's vector,
kept in the optimizer state as ``"spectral_v"``. Order within a step: weight decay, spectral
decay, then the msign update.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_generator, check_int, check_real
from ..msign import _schedule_table, msign, ns_schedule
from .lion import add_checked_group

__all__ = ["Muon", "lr_ratio"]

ADJUST_LR = (None, "original", "match_rms_adamw")


def lr_ratio(adjust_lr: str | None, shape) -> float:
    r"""Learning-rate factor :math:`s(n, m)` for a parameter of shape ``(n, m)``.

    ``None`` -> 1; ``"original"`` -> :math:`\sqrt{\max(1, n/m)}`; ``"match_rms_adamw"`` ->
    :math:`0.2\sqrt{\max(n, m)}` (the Moonlight rule derived in chapter 09). ``shape`` is a
    ``torch.Size`` or a tuple of ints whose last two entries are :math:`(n, m)`; anything else
    raises ``ValueError``.
    """
    check_choice(adjust_lr, "adjust_lr", ADJUST_LR)
    shape = tuple(shape)
    if len(shape) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                             for d in shape[-2:]):
        raise ValueError(f"shape must end in two positive int sizes (n, m), got {shape!r}")
    n, m = shape[-2], shape[-1]
    if adjust_lr == "original":
        return math.sqrt(max(1.0, n / m))
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(n, m))
    return 1.0


class Muon(torch.optim.Optimizer):
    r"""Muon for 2-D parameters (see the module docstring for the update rule).

    Args:
        params: iterable of 2-D parameters or parameter groups (biases, gains and embeddings
            belong to another optimizer, e.g. AdamW).
        lr: :math:`\eta \ge 0` (default ``1e-3``).
        weight_decay: decoupled :math:`\lambda \ge 0`, applied as :math:`W \leftarrow
            (1-\eta\lambda) W` with the *unadjusted* lr, as in ``torch.optim.Muon``
            (default ``0.1``).
        momentum: :math:`\beta \in [0, 1)` (default ``0.95``).
        nesterov: use :math:`(1-\beta) G_t + \beta B_t` (default ``True``).
        coefficients, ns_steps: Newton–Schulz schedule, as in :func:`dlmath.msign.msign`
            (default Jordan's quintic, 5 steps, as ``torch.optim.Muon``). The group default
            ``"coefficients"`` holds the resolved table of triples, at least ``ns_steps`` long,
            so a parameter group may override ``ns_steps`` alone (for a per-step schedule such
            as ``"polar_express"`` it then runs that schedule's own later steps).
        adjust_lr: ``None``, ``"original"`` (default, like ``torch.optim.Muon`` whose ``None``
            means ``"original"``) or ``"match_rms_adamw"``.
        spectral_decay: :math:`\mu \ge 0`, the coefficient of spectral weight decay (0: off).
        spectral_iters: power-iteration steps per optimizer step (default 1, warm-started).
        ns_dtype: dtype of the Newton–Schulz products (default: float32, float64 for float64
            parameters); ``torch.bfloat16`` halves the cost on a GPU and on a CPU with bf16
            matrix units, at bf16 accuracy.
        validate: check each direction for NaN/inf and raise ``ValueError`` (default). On a
            GPU the check costs a host synchronisation per matrix; ``False`` skips it, and a
            non-finite gradient then gives NaN parameters, as in ``torch.optim``.
        generator: optional ``torch.Generator`` for the first power-iteration vector
            (default: the ones vector, deterministic).

    Differences from ``torch.optim.Muon``: msign runs in float32 rather than bf16 (so updates
    agree with it to bf16 accuracy, a few percent, and exactly with its rule in float32);
    the normalisation divides by :math:`\|\tilde B_t\|_F` exactly (a zero momentum gives a zero
    update) instead of by :math:`\max(\|\tilde B_t\|_F, 10^{-7})`; ``adjust_lr=None`` means no
    adjustment.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, coefficients="jordan",
                 ns_steps: int = 5, adjust_lr: str | None = "original",
                 spectral_decay: float = 0.0, spectral_iters: int = 1,
                 ns_dtype: torch.dtype | None = None, validate: bool = True,
                 generator: torch.Generator | None = None):
        defaults = dict(
            lr=check_real(lr, "lr", nonnegative=True),
            weight_decay=check_real(weight_decay, "weight_decay", nonnegative=True),
            momentum=check_real(momentum, "momentum", low=0.0, high=1.0),
            nesterov=bool(nesterov),
            # the whole table, at least ns_steps long: a parameter group that changes only
            # ns_steps then gets the same steps as msign(..., steps=ns_steps, coefficients)
            coefficients=ns_schedule(coefficients, max(check_int(ns_steps, "ns_steps", low=1),
                                                       len(_schedule_table(coefficients)))),
            ns_steps=ns_steps,
            adjust_lr=check_choice(adjust_lr, "adjust_lr", ADJUST_LR),
            spectral_decay=check_real(spectral_decay, "spectral_decay", nonnegative=True),
            spectral_iters=check_int(spectral_iters, "spectral_iters", low=0),
            ns_dtype=ns_dtype,
            validate=bool(validate),
        )
        super().__init__(params, defaults)  # validates each group (add_param_group)
        self.generator = None if generator is None else check_generator(generator)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group as ``torch.optim`` does, then check its hyperparameters and parameters
        (a group's own values get the same checks as the constructor's arguments)."""
        add_checked_group(self, param_group, _check_group)

    @torch.no_grad()
    def step(self, closure=None):
        """One optimization step; ``closure`` re-evaluates the loss and returns it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("Muon does not support sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - beta)
                direction = p.grad.lerp(buf, beta) if group["nesterov"] else buf
                update = msign(direction, steps=group["ns_steps"],
                               coefficients=group["coefficients"], dtype=group["ns_dtype"],
                               validate=group.get("validate", True))
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                if group["spectral_decay"]:
                    from .spectral import spectral_decay_
                    state["spectral_v"] = spectral_decay_(
                        p, lr, group["spectral_decay"], v=state.get("spectral_v"),
                        iters=group["spectral_iters"], generator=self.generator)
                p.add_(update, alpha=-lr * lr_ratio(group["adjust_lr"], p.shape))
        return loss


#: The dtypes that msign can run its Newton-Schulz products in.
_NS_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check_group(group: dict) -> None:
    check_real(group["lr"], "lr", nonnegative=True)
    check_real(group["weight_decay"], "weight_decay", nonnegative=True)
    if check_real(group["momentum"], "momentum", low=0.0, high=1.0) == 1.0:
        raise ValueError("momentum must be < 1 (the average would ignore every gradient)")
    check_int(group["ns_steps"], "ns_steps", low=1)
    _schedule_table(group["coefficients"])  # a name or triples, as msign takes them
    check_choice(group["adjust_lr"], "adjust_lr", ADJUST_LR)
    check_real(group["spectral_decay"], "spectral_decay", nonnegative=True)
    check_int(group["spectral_iters"], "spectral_iters", low=0)
    if group["ns_dtype"] not in (None, *_NS_DTYPES):
        raise TypeError(f"ns_dtype must be None or one of {list(_NS_DTYPES)}, got "
                        f"{group['ns_dtype']!r}")
    for i, p in enumerate(group["params"]):
        if p.ndim != 2:
            raise ValueError(f"Muon only takes 2-D parameters; parameter {i} of a group has "
                             f"shape {tuple(p.shape)} (use AdamW for it)")
        if not p.is_floating_point():
            raise TypeError(f"Muon needs floating parameters; parameter {i} has dtype {p.dtype}")
