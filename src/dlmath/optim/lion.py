r"""Lion (EvoLved Sign Momentum), as a ``torch.optim.Optimizer`` and as a pure function.

Chapter: *Lion* (``notebooks/16-lion.ipynb``); its special cases and its fixed points are in
*Tiger* (``notebooks/17-tiger.ipynb``) and *Embedding outliers*
(``notebooks/18-sign-embedding-outliers.ipynb``).

One step, with gradient :math:`g_t`, momentum :math:`m`, learning rate :math:`\eta` and
decoupled weight decay :math:`\lambda`:

.. math::
    u_t = \operatorname{sign}\big(\beta_1 m_{t-1} + (1-\beta_1) g_t\big),\qquad
    \theta_t = (1-\eta\lambda)\,\theta_{t-1} - \eta\,u_t,\qquad
    m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t .

The weight decay follows ``torch.optim.AdamW`` (and ``lion-pytorch``): the parameter is
multiplied by :math:`1-\eta\lambda`, so ``weight_decay`` is :math:`\lambda`, not
:math:`\eta\lambda`. The floating-point operations are those of ``lion_pytorch.Lion``, so both
give bit-identical trajectories when configured alike.

Edge cases: ``sign(0) = 0``, so a coordinate whose interpolated momentum is exactly zero does not
move (apart from weight decay); parameters whose ``grad`` is ``None`` are skipped entirely;
sparse gradients raise ``TypeError``. A NaN gradient entry makes that coordinate's momentum NaN
for good, and ``torch.sign(nan)`` is 0 on CPU, so the coordinate silently stops moving: guard
against non-finite gradients upstream (or use :class:`dlmath.optim.Tiger`'s ``nan_guard``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._checks import check_real, check_reals
from ._fused import check_fused, fused_sign_step

__all__ = ["Lion", "lion_update", "check_betas", "dense_grads", "lazy_rows"]


def check_betas(betas, name: str = "betas") -> tuple[float, float]:
    """A pair of momentum coefficients, each in ``[0, 1]``."""
    return check_reals(betas, name, 2, "a pair (beta1, beta2)", low=0.0, high=1.0)


def dense_grads(optimizer: torch.optim.Optimizer, group: dict):
    """The parameters of ``group`` that have a gradient, and those gradients (dense only)."""
    params, grads = [], []
    for i, p in enumerate(group["params"]):
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise TypeError(
                f"{type(optimizer).__name__} does not support sparse gradients (parameter {i} "
                "of a group has one); use a dense embedding (nn.Embedding(sparse=False)) and "
                "lazy=True for row-sparse updates"
            )
        params.append(p)
        grads.append(p.grad)
    return params, grads


def add_checked_group(optimizer: torch.optim.Optimizer, param_group: dict,
                      check: Callable[[dict], None]) -> None:
    """``torch.optim``'s ``add_param_group``, then ``check(group)`` on the group as stored
    (defaults filled in); a group that fails is removed again before the error propagates, so a
    refused group is never stepped."""
    torch.optim.Optimizer.add_param_group(optimizer, param_group)
    try:
        check(optimizer.param_groups[-1])
    except (TypeError, ValueError):
        optimizer.param_groups.pop()
        raise


def run_closure(closure: Callable | None):
    """Evaluate ``closure`` with gradients enabled (a step itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def momentum_buffers(optimizer: torch.optim.Optimizer, params: list) -> list:
    """The ``exp_avg`` momentum buffer of each parameter, created as zeros on first use."""
    buffers = []
    for p in params:
        state = optimizer.state[p]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buffers.append(state["exp_avg"])
    return buffers


def lazy_rows(grad: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the rows (first dimension) of ``grad`` that hold a non-zero entry.

    For a tensor with fewer than two dimensions the whole tensor counts as one row, so the
    mask is a 0-d tensor. This is the "this row's gradient is not zero" test of lazy updates.
    """
    if grad.ndim < 2:
        return grad.ne(0).any()
    return grad.ne(0).flatten(1).any(dim=1)


def _apply_lazy(params, olds, masks):
    """Restore the rows that the mask marks as absent (``olds`` holds their previous values)."""
    for p, old, mask in zip(params, olds, masks, strict=True):
        keep = mask.reshape(mask.shape + (1,) * (p.ndim - mask.ndim))
        p.copy_(torch.where(keep, p, old))


class Lion(torch.optim.Optimizer):
    r"""Lion with decoupled weight decay, over parameter groups, with ``foreach`` kernels.

    .. math::
        \theta \leftarrow (1-\eta\lambda)\theta - \eta\,\operatorname{sign}(\beta_1 m+(1-\beta_1)g),
        \qquad m \leftarrow \beta_2 m + (1-\beta_2) g

    Args:
        params: an iterable of tensors or of parameter-group dicts.
        lr: :math:`\eta \ge 0`. Sign updates have RMS 1, so it is typically 3-10x smaller than
            AdamW's (chapter 16 derives :math:`\eta = \alpha_0\sigma`).
        betas: :math:`(\beta_1, \beta_2)` in :math:`[0,1]^2`; ``(0.9, 0.99)`` by default.
            :math:`\beta_1 = \beta_2` gives Tiger/Signum.
        weight_decay: :math:`\lambda \ge 0`, applied as ``p *= 1 - lr * weight_decay``.
        lazy: when True, a row (first dimension) whose gradient is exactly zero is left
            untouched: no sign step, no weight decay, no momentum decay (chapter 18).
        fused: ``None`` (default, auto), ``True`` or ``False``, as in ``torch.optim``. ``True``
            runs the step as one ``torch.compile``'d kernel (one pass over parameter, gradient
            and momentum); ``None`` does so for CPU parameter groups of at least 2**20 elements
            (``dlmath.optim.FUSED_MIN_NUMEL``; compiling takes seconds) when
            torch.compile can run on their device; ``False`` always uses the eager ``foreach``
            ops, applied chunk by chunk so that the intermediate stays in cache. Both paths give
            bit-identical results in float32/float64 (tested on CPU; in bf16/fp16 the compiled
            kernel rounds once per output, not per op). If compiling fails (no C++ compiler, ...)
            the optimizer warns once and uses ``foreach`` from then on. ``lazy`` groups always
            take the ``foreach`` path.

    Every parameter has one state buffer, ``exp_avg`` (:math:`m`), of its shape and dtype.
    ``step(closure)`` re-evaluates the loss under ``torch.enable_grad`` and returns it.
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 *, lazy: bool = False, fused: bool | None = None):
        lr = check_real(lr, "lr", nonnegative=True)
        betas = check_betas(betas)
        weight_decay = check_real(weight_decay, "weight_decay", nonnegative=True)
        if not isinstance(lazy, bool):
            raise TypeError(f"lazy must be a bool, got {type(lazy).__name__}")
        # an attribute, not a group option: state dicts then load across fused and foreach
        self.fused = check_fused(fused)
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, lazy=lazy))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group as ``torch.optim`` does, then check it; a bad group is removed again."""
        add_checked_group(self, param_group, _check_group)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """Perform one update; ``closure`` (optional) recomputes and returns the loss."""
        loss = run_closure(closure)
        for group in self.param_groups:
            sign_group_step(self, group, *group["betas"], lazy=group["lazy"])
        return loss


def sign_group_step(optimizer, group: dict, beta1: float, beta2: float, lazy: bool = False):
    """The Lion update of one parameter group (SignSGD is ``beta1 = beta2``): the compiled
    kernel where :func:`lion_fused` takes it, the foreach ops otherwise; ``lazy`` restores the
    rows whose gradient is exactly zero."""
    params, grads = dense_grads(optimizer, group)
    if not params:
        return
    ms = momentum_buffers(optimizer, params)
    kw = dict(lr=group["lr"], beta1=beta1, beta2=beta2, wd=group["weight_decay"])
    if lazy:
        masks = [lazy_rows(g) for g in grads]
        old_p = [p.clone() for p in params]
        old_m = [m.clone() for m in ms]
    elif lion_fused(optimizer, params, grads, ms, **kw):
        return
    _lion_foreach(params, grads, ms, **kw)
    if lazy:
        _apply_lazy(params, old_p, masks)
        _apply_lazy(ms, old_m, masks)


def lion_fused(optimizer, params, grads, ms, *, lr, beta1, beta2, wd) -> bool:
    """The Lion update by the compiled kernel, if ``optimizer.fused`` allows (else False)."""
    coef = torch.tensor([beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - lr * wd, -lr],
                        dtype=torch.float64)
    return fused_sign_step(optimizer, params, grads, ms, coef)


#: The number of elements per chunk of the CPU foreach path. 2**18 float32 values are 1 MiB,
#: so the chunk of the update and of the three operands stays in this CPU's 2 MiB L2 cache
#: between the seven ops (measured best of 2**16..2**20 in benchmarks/bench_optim.py's model,
#: about 2x faster than whole tensors, which stream 68 bytes per parameter instead of 20).
CHUNK = 1 << 18


def _waves(params, grads, ms, size: int | None = None):
    """Split the triples into waves of at most about ``size`` elements (views of the tensors);
    ``size=None`` reads ``CHUNK``.

    A contiguous tensor larger than ``size`` is cut into flat chunks of ``size``; other tensors
    are kept whole. Element-wise ops on the chunks perform the same arithmetic as on the whole.
    """
    size = CHUNK if size is None else size
    waves, wave, count = [], ([], [], []), 0
    for p, g, m in zip(params, grads, ms, strict=True):
        n = p.numel()
        if n > size and p.is_contiguous() and g.is_contiguous() and m.is_contiguous():
            flat = (p.view(-1), g.view(-1), m.view(-1))
            pieces = [tuple(t[s:s + size] for t in flat) for s in range(0, n, size)]
        else:
            pieces = [(p, g, m)]
        for piece in pieces:
            for lst, t in zip(wave, piece, strict=True):
                lst.append(t)
            count += piece[0].numel()
            if count >= size:
                waves.append(wave)
                wave, count = ([], [], []), 0
    if count or wave[0]:
        waves.append(wave)
    return waves


def _lion_foreach(params, grads, ms, *, lr, beta1, beta2, wd):
    """The Lion update on lists of tensors, in place (same operations as lion-pytorch),
    applied wave by wave (:func:`_waves`) on a CPU so that the intermediate stays in cache;
    on an accelerator whole tensors (there chunks only multiply the kernel launches: 9x
    slower than lion-pytorch on an H100, benchmarks/results)."""
    cpu = bool(params) and params[0].device.type == "cpu"
    for ps, gs, mv in _waves(params, grads, ms) if cpu else [(params, grads, ms)]:
        if wd != 0:
            torch._foreach_mul_(ps, 1.0 - lr * wd)
        update = torch._foreach_mul(mv, beta1)
        torch._foreach_add_(update, gs, alpha=1.0 - beta1)
        torch._foreach_sign_(update)
        torch._foreach_add_(ps, update, alpha=-lr)
        torch._foreach_mul_(mv, beta2)
        torch._foreach_add_(mv, gs, alpha=1.0 - beta2)


def lion_update(theta, m, g, *, lr: float, betas=(0.9, 0.99), weight_decay: float = 0.0):
    r"""One Lion step as a pure function: returns new ``(theta, m)``, inputs untouched.

    .. math::
        \theta' = (1-\eta\lambda)\theta - \eta\operatorname{sign}(\beta_1 m + (1-\beta_1) g),
        \qquad m' = \beta_2 m + (1-\beta_2) g

    ``theta``, ``m`` and ``g`` are floating tensors of one shape (any shape); the results keep
    their dtype and device. This is the reference the chapters iterate on float64 trajectories;
    it performs the same floating-point operations as :class:`Lion`.
    """
    lr = check_real(lr, "lr", nonnegative=True)
    beta1, beta2 = check_betas(betas)
    weight_decay = check_real(weight_decay, "weight_decay", nonnegative=True)
    theta, m, g = _same_shape(theta=theta, m=m, g=g)
    theta = theta.clone()
    if weight_decay != 0:
        theta.mul_(1.0 - lr * weight_decay)
    u = (m * beta1).add_(g, alpha=1.0 - beta1).sign_()
    theta.add_(u, alpha=-lr)
    return theta, (m * beta2).add_(g, alpha=1.0 - beta2)


def _same_shape(**tensors):
    """Validate that the named tensors are floating, of one shape, dtype and device."""
    from .._checks import as_float_tensor

    out = [as_float_tensor(t, name, min_ndim=0) for name, t in tensors.items()]
    names = list(tensors)
    for name, t in zip(names[1:], out[1:], strict=True):
        if t.shape != out[0].shape or t.dtype != out[0].dtype or t.device != out[0].device:
            raise ValueError(
                f"{name} must match {names[0]} in shape, dtype and device: got "
                f"{tuple(t.shape)}/{t.dtype}/{t.device} vs "
                f"{tuple(out[0].shape)}/{out[0].dtype}/{out[0].device}"
            )
    return out


def _check_group(group: dict) -> None:
    """A Lion group's hyperparameters, checked as the constructor's arguments are (``betas``
    stored as the checked pair)."""
    check_real(group["lr"], "lr", nonnegative=True)
    group["betas"] = check_betas(group["betas"])
    check_real(group["weight_decay"], "weight_decay", nonnegative=True)
    if not isinstance(group["lazy"], bool):
        raise TypeError(f"lazy must be a bool, got {type(group['lazy']).__name__}")
