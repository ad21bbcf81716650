r"""Dilated 1-D convolution stacks: receptive fields and the residual split-sum network.

Chapter: *A dilated Conv1D classifier for spectra* (``notebooks/34-conv1d-spectra.ipynb``).

**Receptive field.** Walk through a stack from the input. Keep the *jump* :math:`J`, the
distance in input samples between two neighbouring positions of the current layer (:math:`J = 1`
at the input). A convolution with kernel :math:`k` and dilation :math:`\delta` widens the field
by :math:`(k-1)\delta J`; a pooling window of size :math:`p` with stride :math:`p` widens it by
:math:`(p-1)J` and multiplies :math:`J` by :math:`p`. Starting from one position,

.. math:: \mathrm{RF} = 1 + \sum_{\text{convs}} (k-1)\,\delta\,J + \sum_{\text{pools}} (p-1)\,J .

Pointwise layers (activations, a :math:`1\times1` convolution, adding a residual branch that
sees no more than the main branch) do not widen it.

**The block and the network** follow the post's Keras code, in torch's ``(batch, channels,
length)`` layout: :class:`SplitSumBlock` and :class:`SpectraNet`.

Conventions: modules keep whatever device and dtype they are moved to; integer and boolean
arguments are validated with a clear ``TypeError``/``ValueError`` naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._checks import check_callable, check_choice, check_int, check_real

__all__ = [
    "receptive_field",
    "empirical_receptive_field",
    "SplitSumBlock",
    "SpectraNet",
]


def _int_seq(values, name: str, *, low: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    return tuple(check_int(v, f"{name}[{i}]", low=low) for i, v in enumerate(values))


def receptive_field(kernel: int, dilations, pools) -> int:
    r"""Receptive field, in input samples, of one output position of a block stack.

    The stack has ``len(pools)`` blocks. Block ``b`` is a chain of convolutions with kernel
    size ``kernel`` and the dilations ``dilations`` (the same for every block), or
    ``dilations[b]`` when ``dilations`` is a sequence of sequences, followed by a pooling
    window of size ``pools[b]`` with stride ``pools[b]`` (``1`` means no pooling; an empty
    chain of dilations is a block of pooling only):

    .. math:: \mathrm{RF} = 1 + \sum_b J_b\Big((k-1)\sum_{\delta\in D_b}\delta + (p_b - 1)\Big),
              \qquad J_b = \prod_{b' < b} p_{b'} .

    ``receptive_field(3, (1, 2, 4), (2,) * 7 + (1,)) == 3698``, the post's network.
    Returns a Python int.
    """
    kernel = check_int(kernel, "kernel", low=1)
    pools = _int_seq(pools, "pools", low=1)
    if len(pools) == 0:
        raise ValueError("pools must name at least one block (use 1 for 'no pooling')")
    if isinstance(dilations, Sequence) and len(dilations) > 0 and all(
            isinstance(d, Sequence) and not isinstance(d, (str, bytes)) for d in dilations):
        if len(dilations) != len(pools):
            raise ValueError(f"dilations has {len(dilations)} blocks but pools has {len(pools)}")
        per_block = [_int_seq(d, f"dilations[{b}]", low=1) for b, d in enumerate(dilations)]
    else:
        per_block = [_int_seq(dilations, "dilations", low=1)] * len(pools)
    rf, jump = 1, 1
    for dils, p in zip(per_block, pools, strict=True):
        rf += (kernel - 1) * sum(dils) * jump + (p - 1) * jump
        jump *= p
    return rf


def empirical_receptive_field(model: Callable, length: int, *, in_channels: int = 1,
                              position: int | None = None, inputs: torch.Tensor | None = None,
                              generator: torch.Generator | None = None,
                              dtype: torch.dtype = torch.float64, device=None):
    r"""Gradient footprint of one output position: the measured receptive field.

    Feeds ``x`` of shape ``(1, in_channels, length)`` to ``model`` (any callable returning
    ``(1, C_out, L_out)``), sums the output channels at ``position`` (default ``L_out // 2``,
    for an even ``L_out`` the right-hand one of the two central positions) and returns
    ``(width, footprint)``:

    .. math:: f_i = \sum_{c_{\mathrm{in}}}\Big|\frac{\partial}{\partial x_{c_{\mathrm{in}},i}}
              \sum_c y_{c,\mathrm{pos}}\Big|, \qquad
              \mathrm{width} = \max\{i : f_i > 0\} - \min\{i : f_i > 0\} + 1 .

    ``footprint`` has shape ``(length,)`` (on ``device``, in ``dtype``). ``x`` is ``inputs``
    when given (cast to ``dtype``, moved to ``device`` if given), else uniform on ``[1, 2)``
    drawn with ``generator`` (positive, so that with positive weights every ReLU is active).
    The width is the span of the *non-zero* gradient:
    at most the analytic receptive field, cut to ``[0, length)`` by the input's edges (choose
    ``length`` large enough), and equal to it only when no contribution is lost. Contributions
    can cancel exactly (two output channels with kernels ``[1, 1, 1]`` and ``[-1, 1, 1]`` sum to
    ``[0, 2, 2]``: field 3, width 2), and an inactive ReLU or a max pool cuts paths: use positive
    weights, a positive input and average pooling. Max pooling routes the gradient through one
    element per window, so its footprint can be narrower (see the chapter). Zeros *inside* the
    span (``[1, 1, 1]`` then ``[1, -1, 1]`` gives taps ``[1, 0, 1, 0, 1]``, width 5) are not
    reported by the width; look at ``footprint``. Width 0 means the output does not depend on
    the input at all: a zero gradient, or an output that autograd does not connect to ``x``
    (a constant, ``x.detach() + 1``); the footprint is then all zeros.
    """
    length = check_int(length, "length", low=1)
    in_channels = check_int(in_channels, "in_channels", low=1)
    check_callable(model, "model")
    if inputs is None:
        x = torch.rand(1, in_channels, length, generator=generator, dtype=dtype,
                       device=generator.device if generator is not None else "cpu")
        x = (x if device is None else x.to(device)) + 1
    else:
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise TypeError("inputs must be a floating torch.Tensor")
        if tuple(inputs.shape) != (1, in_channels, length):
            raise ValueError(f"inputs must have shape (1, {in_channels}, {length}), got "
                             f"{tuple(inputs.shape)}")
        x = inputs.detach().to(dtype=dtype, device=device, copy=True)
    x.requires_grad_(True)
    y = model(x)
    if not isinstance(y, torch.Tensor) or y.ndim != 3 or y.shape[0] != 1:
        raise ValueError("model must return a tensor of shape (1, C_out, L_out)")
    pos = y.shape[-1] // 2 if position is None else check_int(position, "position", low=0,
                                                               high=y.shape[-1] - 1)
    out = y[0, :, pos].sum()
    grad = torch.autograd.grad(out, x, allow_unused=True)[0] if out.requires_grad else None
    if grad is None:                               # not connected to x by autograd: width 0
        grad = torch.zeros_like(x)
    footprint = grad.abs().sum(dim=1)[0].detach()
    nz = torch.nonzero(footprint > 0).flatten()
    width = 0 if nz.numel() == 0 else int(nz[-1] - nz[0]) + 1
    return width, footprint


class SplitSumBlock(nn.Module):
    r"""The post's residual block: dilated convolutions with a split-sum, plus a shortcut.

    Each convolution ``i`` (kernel ``kernel``, dilation ``dilations[i]``, 'same' padding)
    outputs ``2 * width`` channels; after the ReLU the two halves are added:

    .. math:: h \leftarrow \mathrm{ReLU}(W_a * h + a) + \mathrm{ReLU}(W_b * h + b),

    which is two parallel convolutions of ``width`` channels whose ReLU outputs are summed.
    The block returns :math:`P s + h` where :math:`s` is the block's input and :math:`P` a
    :math:`1\times1` convolution when ``in_channels != width`` (the identity otherwise).

    Shapes: ``(B, in_channels, L) -> (B, width, L)``.
    """

    def __init__(self, in_channels: int, width: int, dilations: Sequence[int] = (1, 2, 4),
                 kernel: int = 3):
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", low=1)
        width = check_int(width, "width", low=1)
        kernel = check_int(kernel, "kernel", low=1)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd for 'same' padding, got {kernel}")
        dilations = _int_seq(dilations, "dilations", low=1)
        if not dilations:
            raise ValueError("dilations must not be empty")
        self.width = width
        chans = [in_channels] + [width] * (len(dilations) - 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(c, 2 * width, kernel, dilation=d, padding="same")
            for c, d in zip(chans, dilations, strict=True))
        self.proj = nn.Conv1d(in_channels, width, 1) if in_channels != width else nn.Identity()

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, L) -> (B, width, L)``: the shortcut plus the split-sum stack."""
        h = s
        for conv in self.convs:
            a, b = torch.relu(conv(h)).split(self.width, dim=1)
            h = a + b
        return self.proj(s) + h


class SpectraNet(nn.Module):
    r"""The post's classifier: split-sum blocks with pooling, position dropout, global max pool.

    ``features``: blocks of widths ``widths`` (input ``in_channels``), each but the last followed
    by a pool of size 2 (``pool="max"`` as in the post, or ``"avg"``);
    ``(B, in_channels, L) -> (B, widths[-1], L_out)`` with :math:`L_{\mathrm{out}} =
    \lfloor L / 2^{n-1}\rfloor` after :math:`n-1` floor halvings. ``forward``: dropout of whole
    positions (one Bernoulli mask of shape ``(B, 1, L_out)`` shared by all channels, as the
    post's Keras ``Dropout(0.5, noise_shape=(batch, L, 1))``; this drops positions, *not*
    channels as Keras's ``SpatialDropout1D`` does), the max over positions, a hidden dense
    layer with ReLU and a final dense layer: ``(B, in_channels, L) -> (B, num_classes)`` logits
    (no softmax). ``forward`` raises
    ``ValueError`` naming ``x`` unless it is ``(B, in_channels, L)`` with
    :math:`L \ge 2^{n-1}` (shorter inputs leave no position after the pools).
    """

    def __init__(self, widths: Sequence[int] = (16, 16, 32, 32, 64, 64, 128, 128), *,
                 num_classes: int = 4, in_channels: int = 1, hidden: int = 128,
                 pool: str = "max", dropout: float = 0.5, dilations: Sequence[int] = (1, 2, 4),
                 kernel: int = 3):
        super().__init__()
        widths = _int_seq(widths, "widths", low=1)
        if not widths:
            raise ValueError("widths must not be empty")
        num_classes = check_int(num_classes, "num_classes", low=2)
        hidden = check_int(hidden, "hidden", low=1)
        check_choice(pool, "pool", ("max", "avg"))
        self.dropout = check_real(dropout, "dropout", low=0.0, high=1.0)
        if self.dropout == 1.0:
            raise ValueError("dropout must be < 1")
        layers: list[nn.Module] = []
        c = check_int(in_channels, "in_channels", low=1)
        for i, w in enumerate(widths):
            layers.append(SplitSumBlock(c, w, dilations, kernel))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool1d(2) if pool == "max" else nn.AvgPool1d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.in_channels, self.min_length = in_channels, 2 ** (len(widths) - 1)
        self.head = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, L) -> (B, num_classes)`` logits; position dropout in training."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, L), got {tuple(x.shape)}")
        if x.shape[-1] < self.min_length:
            raise ValueError(f"x must have length L >= {self.min_length} (one position left after "
                             f"the pools), got {x.shape[-1]}")
        h = self.features(x)
        if self.training and self.dropout > 0:
            keep = torch.ones_like(h[:, :1, :])
            h = h * F.dropout(keep, self.dropout, training=True)
        return self.head(h.amax(dim=-1))
