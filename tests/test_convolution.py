"""Tests of dlmath.convolution: analytic and measured receptive fields, the block, the network."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlmath import convolution as V

F64 = torch.float64
SETTINGS = settings(max_examples=25, deadline=None)


def _positive(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 + torch.rand(p.shape, generator=g, dtype=p.dtype))
    return module


def test_post_network_receptive_field():
    assert V.receptive_field(3, (1, 2, 4), (2,) * 7 + (1,)) == 3698
    assert V.receptive_field(3, (1, 2, 4), (2,) * 7 + (1,)) == 1 + 14 * 255 + 127


def test_receptive_field_simple_cases():
    assert V.receptive_field(1, (1,), (1,)) == 1
    assert V.receptive_field(3, (1,), (1,)) == 3
    assert V.receptive_field(5, (3,), (1,)) == 13
    assert V.receptive_field(3, [(1,), (1,)], (2, 1)) == 3 + 1 + 2 * 2
    assert V.receptive_field(3, (), (4,)) == 4                      # pooling only
    assert V.receptive_field(3, [(), (1,)], (2, 1)) == 1 + 1 + 2 * 2
    with pytest.raises(ValueError, match="dilations has 1 blocks but pools has 2"):
        V.receptive_field(3, [(1,)], (2, 1))
    with pytest.raises(ValueError, match="pools must name at least one block"):
        V.receptive_field(3, (1,), ())
    with pytest.raises(TypeError, match="kernel must be an int"):
        V.receptive_field(3.0, (1,), (1,))
    with pytest.raises(ValueError, match=r"dilations\[1\] must be >= 1"):
        V.receptive_field(3, (1, 0), (1,))


@SETTINGS
@given(st.lists(st.tuples(st.lists(st.integers(1, 4), min_size=0, max_size=3),
                          st.integers(1, 3)), min_size=1, max_size=4),
       st.sampled_from([1, 3, 5]))
def test_receptive_field_matches_gradient_footprint(blocks, kernel):
    """A stack of positive convolutions and average pools (a block may have no convolution):
    footprint width = analytic RF."""
    layers = []
    for dils, p in blocks:
        for d in dils:
            layers += [nn.Conv1d(1, 1, kernel, dilation=d, padding="same"), nn.ReLU()]
        if p > 1:
            layers.append(nn.AvgPool1d(p))
    net = _positive(nn.Sequential(*layers).double())
    rf = V.receptive_field(kernel, [tuple(d) for d, _ in blocks], [p for _, p in blocks])
    width, fp = V.empirical_receptive_field(net, 4 * rf + 64, generator=torch.Generator()
                                            .manual_seed(0))
    assert width == rf
    assert fp.shape == (4 * rf + 64,) and fp.dtype == F64


def test_empirical_receptive_field_of_the_post_network():
    avg = _positive(V.SpectraNet(pool="avg").double())
    mx = _positive(V.SpectraNet(pool="max").double())
    g = torch.Generator().manual_seed(0)
    assert V.empirical_receptive_field(avg.features, 8192, generator=g)[0] == 3698
    ones = torch.ones(1, 1, 8192, dtype=F64)
    w_ones = V.empirical_receptive_field(mx.features, 8192, inputs=ones)[0]
    assert w_ones == 3698 - 127  # ties go to the first element of every window: right edge loses J
    w_rand = V.empirical_receptive_field(mx.features, 8192, generator=g)[0]
    assert 3698 - 2 * 127 <= w_rand < 3698


def test_empirical_receptive_field_errors_and_zero_width():
    with pytest.raises(ValueError, match="inputs must have shape"):
        V.empirical_receptive_field(nn.Identity(), 8, inputs=torch.ones(1, 1, 9))
    with pytest.raises(ValueError, match="model must return a tensor of shape"):
        V.empirical_receptive_field(lambda x: x.sum(), 8)
    with pytest.raises(TypeError, match="model must be callable"):
        V.empirical_receptive_field(3, 8)
    width, fp = V.empirical_receptive_field(lambda x: 0 * x, 8)
    assert width == 0 and (fp == 0).all()
    assert V.empirical_receptive_field(lambda x: x, 8, position=2)[1].argmax().item() == 2


def test_empirical_receptive_field_of_an_output_not_connected_to_the_input():
    # a constant, a detached input, a layer fed something else: width 0 and a zero footprint,
    # as for an output whose gradient is zero (not torch's "does not require grad" error)
    conv = nn.Conv1d(1, 1, 3).double()
    for model in (lambda x: torch.zeros(1, 1, 5), lambda x: x.detach() + 1,
                  lambda x: conv(torch.ones_like(x))):
        width, fp = V.empirical_receptive_field(model, 5)
        assert width == 0 and torch.equal(fp, torch.zeros(5, dtype=torch.float64))


def test_split_sum_equals_two_relu_convolutions():
    torch.manual_seed(0)
    block = V.SplitSumBlock(3, 5, dilations=(1, 2, 4)).double()
    x = torch.randn(2, 3, 40, dtype=F64)
    h = x
    for conv in block.convs:
        F = conv.out_channels // 2
        wa, wb = conv.weight[:F], conv.weight[F:]
        ba, bb = conv.bias[:F], conv.bias[F:]
        pad, d = conv.dilation[0], conv.dilation[0]
        h = (torch.relu(nn.functional.conv1d(h, wa, ba, padding=pad, dilation=d))
             + torch.relu(nn.functional.conv1d(h, wb, bb, padding=pad, dilation=d)))
    expect = block.proj(x) + h
    assert torch.allclose(block(x), expect, atol=1e-12, rtol=0)
    assert isinstance(block.proj, nn.Conv1d)


def test_block_identity_shortcut_and_abs():
    block = V.SplitSumBlock(4, 4, dilations=(1,)).double()
    assert isinstance(block.proj, nn.Identity)
    conv = block.convs[0]
    with torch.no_grad():
        conv.bias.zero_()
        conv.weight[4:] = -conv.weight[:4]
    x = torch.randn(1, 4, 16, dtype=F64)
    a = nn.functional.conv1d(x, conv.weight[:4], padding=1)
    assert torch.allclose(block(x) - x, a.abs(), atol=1e-14, rtol=0)


def test_network_shapes_and_parameter_count():
    net = V.SpectraNet()
    assert sum(p.numel() for p in net.parameters()) == 748_324
    x = torch.randn(2, 1, 2600)
    assert net.features(x).shape == (2, 128, 20)
    net.eval()
    assert net(x).shape == (2, 4)


def test_position_dropout_shares_the_mask_across_channels():
    # the post's Dropout(0.5, noise_shape=(batch, L, 1)): whole positions, not channels
    net = V.SpectraNet((4, 4), hidden=3, dropout=0.5)
    net.head = nn.Identity()  # expose the pooled features
    torch.manual_seed(1)
    x = torch.randn(1, 1, 64)
    h = net.features(x)
    torch.manual_seed(2)
    out = net(x)
    torch.manual_seed(2)
    mask = nn.functional.dropout(torch.ones(1, 1, h.shape[-1]), 0.5, training=True)
    assert torch.allclose(out, (h * mask).amax(-1))
    net.eval()
    assert torch.allclose(net(x), h.amax(-1))


def test_network_validation():
    with pytest.raises(ValueError, match="pool must be one of"):
        V.SpectraNet(pool="sum")
    with pytest.raises(ValueError, match="dropout must be < 1"):
        V.SpectraNet(dropout=1.0)
    with pytest.raises(ValueError, match="kernel must be odd"):
        V.SplitSumBlock(1, 2, kernel=4)
    with pytest.raises(ValueError, match="widths must not be empty"):
        V.SpectraNet(())


def _fixed_conv(kernel, out_channels=1):
    conv = nn.Conv1d(1, out_channels, len(kernel[0]), bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(kernel, dtype=F64).unsqueeze(1))
    return conv


def test_empirical_receptive_field_cancellation_and_interior_zeros():
    # two output channels whose first taps cancel in the channel sum: field 3, width 2
    two = _fixed_conv([[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]], out_channels=2)
    width, fp = V.empirical_receptive_field(two, 12, position=4)
    assert width == 2 and fp[4] == 0 and fp[5] == fp[6] == 2
    # [1, 1, 1] then [1, -1, 1]: taps [1, 0, 1, 0, 1], width 5 with two interior zeros
    a, b = _fixed_conv([[1.0, 1.0, 1.0]]), _fixed_conv([[1.0, -1.0, 1.0]])
    width, fp = V.empirical_receptive_field(lambda x: b(a(x)), 12, position=3)
    assert width == 5 and fp[3:8].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_empirical_receptive_field_default_position_and_edges():
    # an even output length: the default position is L_out // 2, the right-hand central one
    width, fp = V.empirical_receptive_field(lambda x: nn.functional.avg_pool1d(x, 2), 8)
    assert width == 2 and torch.nonzero(fp).flatten().tolist() == [4, 5]
    # a field wider than the input is cut by the edges
    wide = _fixed_conv([[1.0] * 9])
    width, _ = V.empirical_receptive_field(lambda x: wide(nn.functional.pad(x, (4, 4))), 5)
    assert width == 5 < 9


def test_empirical_receptive_field_sums_absolute_values_over_input_channels():
    # gradients of opposite sign in the two input channels must not cancel in the footprint
    mix = nn.Conv1d(2, 1, 3, padding=1, bias=False).double()
    with torch.no_grad():
        mix.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]], dtype=F64))
    width, fp = V.empirical_receptive_field(mix, 9, in_channels=2, position=4)
    assert width == 3 and fp[3:6].tolist() == [2.0, 4.0, 6.0]  # cross-correlation


def test_more_validation_messages():
    with pytest.raises(TypeError, match="dilations must be a sequence of ints, got int"):
        V.SplitSumBlock(1, 4, dilations=2)
    with pytest.raises(TypeError, match="dilations must be a sequence of ints, got str"):
        V.receptive_field(3, "12", [1])
    with pytest.raises(ValueError, match="dilations must not be empty"):
        V.SplitSumBlock(1, 4, dilations=())
    conv = torch.nn.Conv1d(1, 1, 3)
    with pytest.raises(TypeError, match="inputs must be a floating torch.Tensor"):
        V.empirical_receptive_field(conv, 8, inputs=torch.ones(1, 1, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="inputs must be a floating torch.Tensor"):
        V.empirical_receptive_field(conv, 8, inputs=[[[1.0] * 8]])


# -- added in the third reading (s19): input checks of the network, the shortest input ------

def test_network_rejects_inputs_it_cannot_pool():
    net = V.SpectraNet().eval()                      # 8 blocks: 7 pools, L >= 128
    assert net(torch.randn(1, 1, 128)).shape == (1, 4)
    assert net.features(torch.randn(1, 1, 128)).shape == (1, 128, 1)
    with pytest.raises(ValueError, match=r"x must have length L >= 128 .* got 127"):
        net(torch.randn(1, 1, 127))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, L\), got \(1, 2, 300\)"):
        net(torch.randn(1, 2, 300))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, L\), got \(300,\)"):
        net(torch.randn(300))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        net([[0.0] * 128])
    assert V.SpectraNet((4,), in_channels=3).eval()(torch.randn(2, 3, 1)).shape == (2, 4)


def test_empirical_receptive_field_casts_inputs_to_dtype():
    """``inputs`` in float32 meet the float64 network of the default ``dtype``: they are cast
    (they raised inside the convolution), and the footprint is in ``dtype``, as documented."""
    net = nn.Conv1d(1, 1, 3, bias=False).double()
    nn.init.ones_(net.weight)
    width, fp = V.empirical_receptive_field(net, 16, inputs=torch.ones(1, 1, 16))
    assert (width, fp.dtype) == (3, torch.float64)
    assert fp.sum().item() == 3.0


def test_receptive_field_refuses_zero_pools_and_dilations():
    # found by mutation testing (tools/mutate.py): a pool or dilation of 0 is named, as 1 is
    # the smallest (1 = no pooling, no dilation)
    with pytest.raises(ValueError, match=r"pools\[1\] must be >= 1, got 0"):
        V.receptive_field(3, (1, 2), (2, 0))
    with pytest.raises(ValueError, match=r"dilations\[0\]\[1\] must be >= 1, got 0"):
        V.receptive_field(3, ((1, 0), (1,)), (2, 2))


def test_default_block_has_the_post_dilations_and_bad_widths_are_named():
    # the default block is the post's (dilations 1, 2, 4, kernel 3): its measured receptive
    # field is the formula's 1 + 2 (1 + 2 + 4) = 15
    block = _positive(V.SplitSumBlock(1, 4).double())  # positive weights: no path cut
    width, _ = V.empirical_receptive_field(block, 64, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64)
    assert width == V.receptive_field(3, (1, 2, 4), (1,)) == 15
    V.SpectraNet(widths=(1, 1))  # a width of 1 is allowed
    with pytest.raises(ValueError, match=r"widths\[1\] must be >= 1, got 0"):
        V.SpectraNet(widths=(4, 0))
    with pytest.raises(ValueError, match=r"dilations\[2\] must be >= 1, got 0"):
        V.SplitSumBlock(1, 4, dilations=(1, 2, 0))
