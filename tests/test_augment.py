"""Tests of dlmath.augment: quarter masks, same-class splices and flips, against the post's
numpy constructions (np.tri, np.rot90, integer division) and in frequency."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import augment as A
from dlmath.device import generator

SETTINGS = settings(max_examples=30, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


@SETTINGS
@given(st.integers(2, 40))
def test_quarter_masks_match_the_numpy_construction(S):
    M1 = np.ones((S, S))
    M1[: S // 2, : S // 2] = 0
    ours = A.quarter_masks(S).numpy()
    for q in range(4):
        assert np.array_equal(ours[q], np.rot90(M1, q).astype(bool))
        assert (~ours[q]).sum() == (S // 2) ** 2


def test_odd_size_leaves_the_middle_cross_unmasked():
    S = 299
    masked = (~A.quarter_masks(S)).any(0)
    assert not masked[S // 2].any() and not masked[:, S // 2].any()
    assert (~A.quarter_masks(S)[0]).double().mean().item() == pytest.approx(149**2 / 299**2)


def test_quarter_mask_frequencies():
    n, p = 40000, 0.5
    x = torch.ones(n, 1, 6, 6)
    y, q = A.quarter_mask(x, p, generator=_gen(0))
    masks = A.quarter_masks(6)
    for i in range(n)[:200]:
        expect = masks[q[i]].float() if q[i] >= 0 else torch.ones(6, 6)
        assert torch.equal(y[i, 0], expect)
    counts = torch.bincount(q + 1, minlength=5).double() / n
    assert abs(counts[0] - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)
    for c in counts[1:]:
        assert abs(c - p / 4) < 4 * math.sqrt(p / 4 * (1 - p / 4) / n)


def test_quarter_mask_extremes_and_errors():
    x = torch.rand(50, 5, 5, generator=_gen(1))
    y, q = A.quarter_mask(x, 0.0, generator=_gen(2))
    assert torch.equal(y, x) and (q == -1).all()
    _, q = A.quarter_mask(x, 1.0, generator=_gen(2))
    assert (q >= 0).all()
    with pytest.raises(ValueError, match="p must be <= 1"):
        A.quarter_mask(x, 1.5, generator=_gen(0))
    with pytest.raises(ValueError, match="square images"):
        A.quarter_mask(torch.ones(2, 3, 4), generator=_gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        A.quarter_mask(x, generator=None)


@SETTINGS
@given(st.integers(1, 30), st.data())
def test_splice_masks_match_numpy_and_fractions(S, data):
    idx = data.draw(st.integers(0, S))
    x, y = np.arange(S * S).reshape(S, S) + 1, -np.arange(S * S).reshape(S, S) - 1
    tx, ty = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    rows = A.same_class_splice(tx, ty, "rows", idx).numpy()
    cols = A.same_class_splice(tx, ty, "cols", idx).numpy()
    assert np.array_equal(rows, np.vstack((x[:idx], y[idx:])))
    assert np.array_equal(cols, np.hstack((x[:, :idx], y[:, idx:])))
    tri = np.tri(S, S)
    for mode, m in [("diag", tri), ("antidiag", np.rot90(tri))]:
        ours = A.same_class_splice(tx, ty, mode).numpy()
        assert np.array_equal(ours, m * x + (1 - m) * y)
        assert A.splice_mask(S, mode).sum().item() * 2 * S == S * S * (S + 1)
    assert A.splice_mask(S, "rows", idx).sum().item() == idx * S


def test_random_splice_modes_indices_and_fraction():
    S, n = 12, 20000
    x1, x2 = torch.ones(n, S, S), torch.zeros(n, S, S)
    y, mode, idx = A.random_splice(x1, x2, generator=_gen(3))
    frac = y.double().mean((1, 2))
    tri = (S + 1) / (2 * S)
    expect = torch.where(mode < 2, idx.double() / S, torch.full((n,), tri, dtype=torch.float64))
    assert torch.allclose(frac, expect, atol=1e-12, rtol=0)
    for m, name in enumerate(A.SPLICE_MODES):       # the image is exactly that mode's mask
        i = int(torch.nonzero(mode == m)[0])
        ref = A.splice_mask(S, name, int(idx[i]) if m < 2 else None)
        assert torch.equal(y[i].bool(), ref)
    assert idx.min() == S // 4 and idx.max() == (3 * S) // 4 - 1
    share = torch.bincount(mode, minlength=4).double() / n
    assert ((share - 0.25).abs() < 4 * math.sqrt(0.25 * 0.75 / n)).all()


def test_random_splice_keeps_channels_and_errors():
    x1, x2 = torch.ones(3, 2, 8, 8), torch.zeros(3, 2, 8, 8)
    y, _, _ = A.random_splice(x1, x2, generator=_gen(4))
    assert torch.equal(y[:, 0], y[:, 1])
    with pytest.raises(ValueError, match="same shape"):
        A.random_splice(x1, x2[:2], generator=_gen(4))
    with pytest.raises(ValueError, match="needs the cut index"):
        A.splice_mask(5, "rows")
    with pytest.raises(ValueError, match="takes no idx"):
        A.splice_mask(5, "diag", 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        A.splice_mask(5, "spiral")
    with pytest.raises(ValueError, match="idx must be <= 5"):
        A.splice_mask(5, "cols", 6)


def test_random_flip():
    x = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3).repeat(5000, 1, 1, 1)
    y, flip = A.random_flip(x, 0.3, generator=_gen(5))
    assert torch.equal(y[flip], x[flip].flip(-1)) and torch.equal(y[~flip], x[~flip])
    n = flip.numel()
    assert abs(flip.double().mean() - 0.3) < 4 * math.sqrt(0.21 / n)


def test_integer_and_boolean_images_keep_their_dtype():
    g = _gen(6)
    x = torch.randint(1, 256, (64, 3, 7, 7), generator=g).to(torch.uint8)
    y, q = A.quarter_mask(x, 1.0, generator=_gen(7))
    assert y.dtype == torch.uint8
    masks = A.quarter_masks(7)
    for i in range(64):                           # exact zeroing of the drawn corner, odd S
        assert torch.equal(y[i], torch.where(masks[q[i]], x[i], 0))
    f, did = A.random_flip(x, 0.5, generator=_gen(8))
    assert f.dtype == torch.uint8 and torch.equal(f[did], x[did].flip(-1))
    s, mode, idx = A.random_splice(x, x.flip(0), generator=_gen(9))
    assert s.dtype == torch.uint8
    assert torch.equal(A.same_class_splice(x[0] > 100, x[1] > 100, "diag"),
                       torch.where(A.splice_mask(7, "diag"), x[0] > 100, x[1] > 100))
    with pytest.raises(ValueError, match="at least 3 dimension"):
        A.random_flip(torch.ones(4, 4, dtype=torch.uint8), generator=_gen(0))
    with pytest.raises(ValueError, match="square images"):
        A.random_flip(torch.ones(2, 4, 5, dtype=torch.long), generator=_gen(0))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        A.random_flip(torch.ones(2, 4, 4, dtype=torch.complex64), generator=_gen(0))


def test_masked_pixels_are_zero_even_when_infinite():
    x = torch.full((20, 5, 5), math.inf)
    x[0, 0, 0] = math.nan
    y, q = A.quarter_mask(x, 1.0, generator=_gen(10))
    masks = A.quarter_masks(5)
    assert torch.equal(y == 0, ~masks[q])          # zero exactly where masked, no NaN made
    assert torch.isinf(y[masks[q]]).sum() + torch.isnan(y).sum() == masks[q].sum()


def test_odd_and_tiny_sizes_and_generator_device():
    for S in (4, 5, 7):                           # smallest sides random_splice accepts
        _, _, idx = A.random_splice(torch.ones(200, S, S), torch.zeros(200, S, S),
                                    generator=_gen(S))
        assert idx.min() >= S // 4 and idx.max() <= (3 * S) // 4 - 1
    with pytest.raises(ValueError, match="side >= 4"):
        A.random_splice(torch.ones(2, 3, 3), torch.ones(2, 3, 3), generator=_gen(0))
    with pytest.raises(ValueError, match="size must be >= 2"):
        A.quarter_mask(torch.ones(2, 1, 1), generator=_gen(0))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator is on"):
            A.random_flip(torch.ones(2, 3, 3), generator=torch.Generator("cuda"))
