r"""Macro-F1, its soft (differentiable) surrogate, and a batch sampler with fixed class fractions.

Chapter: *A dilated Conv1D classifier for spectra* (``notebooks/34-conv1d-spectra.ipynb``).

For :math:`C` classes, labels :math:`y_n` and predictions :math:`\hat y_n`, class :math:`c` has
:math:`\mathrm{TP}_c, \mathrm{FP}_c, \mathrm{FN}_c` and

.. math:: \mathrm{F1}_c = \frac{2\,\mathrm{TP}_c}{2\,\mathrm{TP}_c + \mathrm{FP}_c + \mathrm{FN}_c},
          \qquad \text{macro-F1} = \frac1C\sum_{c=1}^C \mathrm{F1}_c .

Writing :math:`y_{nc}` for the one-hot labels and :math:`p_{nc}` for predicted probabilities,
:math:`\sum_n y_{nc}p_{nc} = \mathrm{TP}_c` and :math:`\sum_n (y_{nc} + p_{nc}) = 2\mathrm{TP}_c +
\mathrm{FP}_c + \mathrm{FN}_c` whenever :math:`p` is one-hot, so

.. math:: \text{soft macro-F1}
          = \frac{2}{C}\sum_c \frac{\sum_n y_{nc}p_{nc}}{\sum_n (y_{nc}+p_{nc})}

equals macro-F1 on hard predictions and is differentiable in :math:`p`.

Conventions:

* **Absent classes.** A class with :math:`2\mathrm{TP}_c + \mathrm{FP}_c + \mathrm{FN}_c = 0`
  (in no label and no prediction; in the soft form, :math:`\sum_n (y_{nc}+p_{nc}) = 0`) has
  :math:`\mathrm{F1}_c = 0`, and the mean is always over all :math:`C` classes. This is
  ``sklearn.metrics.f1_score(..., labels=range(C), average="macro", zero_division=0)``, and
  the convention under which the soft identity holds exactly. A class absent from the labels
  but predicted has :math:`\mathrm{F1}_c = 0` in both forms anyway.
* Samples are along ``dim=-2`` and classes along ``dim=-1`` of ``(..., N, C)`` tensors; leading
  dimensions are batch dimensions. Results keep the probabilities' device and dtype.
* Integer label tensors are checked to lie in ``[0, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import as_float_tensor, check_finite, check_generator, check_int, check_real

__all__ = ["macro_f1", "soft_macro_f1", "soft_f1_loss", "fixed_fraction_sampler"]


def _labels(y, name: str, num_classes: int) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.ndim < 1 or y.numel() == 0:  # first: an empty list becomes a float32 tensor
        raise ValueError(f"{name} must be a non-empty tensor of shape (..., N), got "
                         f"{tuple(y.shape)}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name} must be an integer tensor of class indices, got {y.dtype}")
    if (y < 0).any() or (y >= num_classes).any():
        raise ValueError(f"{name} must hold class indices in [0, {num_classes})")
    return y


def macro_f1(y, yhat, num_classes: int) -> torch.Tensor:
    r"""Macro-averaged F1 of hard predictions.

    .. math:: \frac1C\sum_{c=1}^{C}
              \frac{2\,\mathrm{TP}_c}{2\,\mathrm{TP}_c+\mathrm{FP}_c+\mathrm{FN}_c},
              \qquad \frac{0}{0} := 0 .

    Shapes: integer ``y`` and ``yhat`` of shape ``(..., N)`` (broadcast); returns ``(...)`` in
    float64 on their device. A class in neither ``y`` nor ``yhat`` counts as F1 = 0 and the mean
    is over all ``num_classes`` classes (see the module notes).
    """
    C = check_int(num_classes, "num_classes", low=1)
    y, yhat = _labels(y, "y", C), _labels(yhat, "yhat", C)
    try:
        y, yhat = torch.broadcast_tensors(y, yhat)
    except RuntimeError as exc:
        raise ValueError(f"y and yhat must have broadcastable shapes, got {tuple(y.shape)} and "
                         f"{tuple(yhat.shape)}") from exc
    classes = torch.arange(C, device=y.device)
    Y = (y.unsqueeze(-1) == classes).to(torch.float64)
    P = (yhat.unsqueeze(-1) == classes).to(torch.float64)
    tp = (Y * P).sum(dim=-2)
    den = Y.sum(dim=-2) + P.sum(dim=-2)
    f1 = torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.zeros_like(den))
    return f1.mean(dim=-1)


def soft_macro_f1(y, probs, eps: float = 0.0) -> torch.Tensor:
    r"""Soft macro-F1 of predicted probabilities, with the coefficient :math:`2/C`.

    .. math:: \frac{2}{C}\sum_{c=1}^{C}
              \frac{\sum_n y_{nc}\,p_{nc}}{\sum_n (y_{nc}+p_{nc}) + \epsilon},
              \qquad \frac{0}{0} := 0 .

    Shapes: ``probs`` is ``(..., N, C)`` (rows of probabilities, or any non-negative scores);
    ``y`` is either integer class indices ``(..., N)`` or one-hot / soft targets of the same shape
    as ``probs``. Returns ``(...)`` in the dtype of ``probs`` (float16/bfloat16 sums are
    accumulated in float32, and sums that overflow float32, for scores near its limit, are
    redone in float64). The score lies in :math:`[0, 1]` when the entries of ``probs`` (and of
    soft ``y``) lie in :math:`[0, 1]`; larger scores are allowed but can give values up to 2,
    which are no longer an F1. ``eps`` is added once to each class's denominator (the post adds its
    epsilon to each of the :math:`N` terms instead). On one-hot ``probs`` and
    ``eps = 0`` this equals :func:`macro_f1` of the argmax exactly. A class with
    :math:`\sum_n (y_{nc}+p_{nc}) = 0` contributes 0 with a zero (not NaN) gradient; more
    generally a class absent from ``y`` has :math:`T_c = 0` for every ``probs``, so its term is
    identically 0 and the zero gradient is the true one, not a convention.
    """
    p = as_float_tensor(probs, "probs", min_ndim=2)
    check_finite(p, "probs")
    if (p < 0).any():
        raise ValueError("probs must be non-negative")
    C = p.shape[-1]
    eps = check_real(eps, "eps", nonnegative=True)
    if isinstance(y, torch.Tensor) and y.is_floating_point():
        Y = y.to(p.dtype)
        check_finite(Y, "y")
        if Y.shape != p.shape:
            raise ValueError(f"one-hot y must have the shape of probs {tuple(p.shape)}, got "
                             f"{tuple(Y.shape)}")
        if (Y < 0).any():
            raise ValueError("one-hot y must be non-negative")
    else:
        labels = _labels(y, "y", C)
        if tuple(labels.shape) != tuple(p.shape[:-1]):
            raise ValueError(f"label y must have shape {tuple(p.shape[:-1])}, got "
                             f"{tuple(labels.shape)}")
        Y = torch.nn.functional.one_hot(labels.to(p.device), C).to(p.dtype)
    # half precision: accumulate the sums over N in float32, return in the dtype of probs
    work = torch.promote_types(p.dtype, torch.float32)
    Yw, pw = Y.to(work), p.to(work)
    tp = (Yw * pw).sum(dim=-2)
    den = (Yw + pw).sum(dim=-2) + eps
    if work != torch.float64 and not bool(torch.isfinite(den).all()):
        # scores near the float32 limit: the sums overflow, so redo them in float64
        Yw, pw = Y.to(torch.float64), p.to(torch.float64)
        tp = (Yw * pw).sum(dim=-2)
        den = (Yw + pw).sum(dim=-2) + eps
    safe = torch.where(den > 0, den, torch.ones_like(den))
    f1 = torch.where(den > 0, 2 * (tp / safe), torch.zeros_like(den))  # 2 tp may overflow
    return f1.mean(dim=-1).to(p.dtype)


def soft_f1_loss(logits, y, eps: float = 1e-7) -> torch.Tensor:
    r"""The post's F1 loss: minus the log of the soft macro-F1 of the softmax.

    .. math:: \mathcal{L} = -\log\Big(\frac{2}{C}\sum_c
              \frac{\sum_n y_{nc}p_{nc}}{\sum_n(y_{nc}+p_{nc})} + \epsilon\Big),
              \qquad p_{n\cdot} = \mathrm{softmax}(z_{n\cdot}) .

    Shapes: ``logits`` ``(..., N, C)``; ``y`` integer labels ``(..., N)`` or one-hot
    ``(..., N, C)``; returns ``(...)``. ``eps > 0`` keeps the loss finite when the score is 0.
    """
    z = as_float_tensor(logits, "logits", min_ndim=2)
    check_finite(z, "logits")
    eps = check_real(eps, "eps", positive=True)
    return -torch.log(soft_macro_f1(y, torch.softmax(z, dim=-1)) + eps)


def _class_counts(batch: int, fracs: torch.Tensor) -> torch.Tensor:
    """Largest-remainder rounding of ``batch * fracs`` to integers that sum to ``batch``."""
    raw = batch * fracs
    counts = torch.floor(raw + 1e-9).to(torch.int64)
    short = batch - int(counts.sum())
    if short > 0:
        # remainders rounded to 1e-9 so that equal fractions tie exactly: lower class index wins
        rem = torch.round((raw - counts) * 1e9)
        order = torch.argsort(-rem, stable=True)
        counts[order[:short]] += 1
    return counts


def fixed_fraction_sampler(labels, batch: int, fracs: Sequence[float],
                           generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Indices of one batch whose class composition is fixed, drawn with replacement.

    Class :math:`c` gets :math:`n_c` indices, where :math:`n_c = \mathrm{batch}\cdot f_c` rounded
    by largest remainders so that :math:`\sum_c n_c = \mathrm{batch}`, equal remainders going to
    the lower class index (remainders are compared after rounding to :math:`10^{-9}`, so float
    noise such as ``20 * 0.07 = 1.4000000000000001`` does not break a tie; exactly ``batch * fracs``
    when those are integers, e.g. 160 with ``(0.8, 0.1, 0.05, 0.05)`` gives 128, 16, 8, 8). Each
    index is drawn uniformly, with replacement, among the examples of its class; the batch is
    then shuffled.

    ``fracs`` must be non-negative and sum to 1 within :math:`10^{-6}` (they are renormalised).
    Draws use ``generator`` (on its device; the global CPU generator when ``None``).
    Shapes: integer ``labels`` ``(N,)`` with values in ``[0, len(fracs))``; returns ``(batch,)``
    int64 indices on the device of ``labels``. A class with :math:`n_c > 0` but no example raises
    ``ValueError``; a class with :math:`f_c = 0` is never drawn.
    """
    batch = check_int(batch, "batch", low=1)
    if isinstance(fracs, (str, bytes)) or (isinstance(fracs, torch.Tensor) and fracs.ndim != 1) \
            or not hasattr(fracs, "__iter__"):
        raise TypeError(f"fracs must be a sequence of fractions, one per class, got "
                        f"{type(fracs).__name__}"
                        + (f" of shape {tuple(fracs.shape)}" if hasattr(fracs, "shape") else ""))
    f = torch.as_tensor([check_real(v, f"fracs[{i}]", nonnegative=True)
                         for i, v in enumerate(fracs)], dtype=torch.float64)
    if f.numel() == 0:
        raise ValueError("fracs must not be empty")
    if abs(float(f.sum()) - 1.0) > 1e-6:  # float32 fractions such as 0.3 are off by ~1e-8
        raise ValueError(f"fracs must sum to 1, got {float(f.sum()):.10g}")
    f = f / f.sum()  # exact renormalisation, so that the rounded counts sum to batch
    lab = _labels(labels, "labels", f.numel())
    if lab.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(lab.shape)}")
    if generator is not None:
        check_generator(generator)
    dev = generator.device if generator is not None else torch.device("cpu")
    lab_g = lab.to(dev)
    counts = _class_counts(batch, f)
    picks = []
    for c, n_c in enumerate(counts.tolist()):
        if n_c == 0:
            continue
        members = torch.nonzero(lab_g == c).flatten()
        if members.numel() == 0:
            raise ValueError(f"class {c} has fraction {float(f[c]):.3g} but no example in labels")
        picks.append(members[torch.randint(members.numel(), (n_c,), generator=generator,
                                           device=dev)])
    idx = torch.cat(picks)
    idx = idx[torch.randperm(batch, generator=generator, device=dev)]
    return idx.to(lab.device)
