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
    assert ours.shape == (4, S, S)
    for q in range(4):
        assert np.array_equal(ours[q], np.rot90(M1, q).astype(bool))
        assert (~ours[q]).sum() == (S // 2) ** 2


def test_odd_size_leaves_the_middle_cross_unmasked():
    S = 299
    masked = (~A.quarter_masks(S)).any(0)
    assert not masked[S // 2].any() and not masked[:, S // 2].any()
    assert (~A.quarter_masks(S)[0]).double().mean().item() == pytest.approx(149**2 / 299**2)


@pytest.mark.parametrize("p", [0.5, 0.3])     # at 0.5, p/4 = (1-p)/4 and 1-p = p
def test_quarter_mask_frequencies(p):
    n = 40000
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
    # the documented rule on the first uniform drawn: rows above 3/4, ..., antidiag up to 1/4
    # (diag and antidiag have the same share and fraction: only the rule tells them apart)
    r = torch.rand(n, generator=_gen(3), dtype=torch.float64)
    assert torch.equal(mode, 3 - (r > 0.25).long() - (r > 0.5).long() - (r > 0.75).long())


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
    with pytest.raises(ValueError, match="x1 must have at least 2 dimension"):   # one image
        A.same_class_splice(torch.ones(4), torch.ones(4), "diag")
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
    for S in (4, 5, 7, 13, 14):      # smallest sides, and S/4, 3S/4 not integers: floor both
        _, _, idx = A.random_splice(torch.ones(600, S, S), torch.zeros(600, S, S),
                                    generator=_gen(S))
        assert idx.min() == S // 4 and idx.max() == (3 * S) // 4 - 1     # both ends reached
    with pytest.raises(ValueError, match="side >= 4"):
        A.random_splice(torch.ones(2, 3, 3), torch.ones(2, 3, 3), generator=_gen(0))
    with pytest.raises(ValueError, match="size must be >= 2"):
        A.quarter_mask(torch.ones(2, 1, 1), generator=_gen(0))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator is on"):
            A.random_flip(torch.ones(2, 3, 3), generator=torch.Generator("cuda"))


# -- rotation and zoom ---------------------------------------------------------------------------

@SETTINGS
@given(st.integers(2, 12), st.integers(-3, 4), st.sampled_from([torch.float32, torch.float64]))
def test_rotation_by_multiples_of_90_degrees_is_rot90(S, k, dtype):
    x = torch.rand(3, 2, S, S, generator=_gen(S), dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert (A.rotate(x, 90.0 * k) - torch.rot90(x, k, dims=(-2, -1))).abs().max() < tol
    assert torch.equal(A.rotate(x, 90.0 * k, mode="nearest"), torch.rot90(x, k, dims=(-2, -1)))
    assert (A.rotate(x, 0.0) - x).abs().max() < tol
    assert A.rotate(x, 90.0 * k).dtype == dtype


def test_rotation_per_image_angles_direction_and_corners():
    x = torch.zeros(2, 5, 5, dtype=torch.float64)
    x[:, 0, 4] = 1.0                                   # top-right pixel
    y = A.rotate(x, torch.tensor([90.0, -90.0]))
    assert y[0, 0, 0] == pytest.approx(1.0) and y[1, 4, 4] == pytest.approx(1.0)  # CCW, CW
    # a 0-d tensor is one angle for every image, like a number
    assert torch.equal(A.rotate(x, torch.tensor(90.0)), A.rotate(x, 90.0))
    # a constant image loses its corners to the zero padding at 45 degrees, keeps its centre
    c = A.rotate(torch.ones(1, 9, 9, dtype=torch.float64), 45.0)[0]
    assert c[4, 4] == pytest.approx(1.0) and c[0, 0] == 0.0         # all 4 neighbours outside
    # an angle is an angle: 360 degrees is the identity to rounding
    xr = torch.rand(2, 6, 6, generator=_gen(3), dtype=torch.float64)
    assert (A.rotate(xr, 360.0) - xr).abs().max() < 1e-12


def test_random_rotate_angles_are_uniform():
    from scipy.stats import kstest
    n = 20_000
    y, deg = A.random_rotate(torch.ones(n, 3, 3), 10.0, generator=_gen(11))
    assert deg.dtype == torch.float64 and deg.shape == (n,)
    assert float(deg.abs().max()) <= 10.0
    # KS statistic below the 0.1% critical value 1.95/sqrt(n)
    assert kstest(deg.numpy(), "uniform", args=(-10, 20)).statistic < 1.95 / math.sqrt(n)
    # the post's +-10 degrees is the default
    assert torch.equal(A.random_rotate(torch.ones(n, 3, 3), generator=_gen(11))[1], deg)
    y0, d0 = A.random_rotate(torch.rand(4, 5, 5, generator=_gen(1)), 0.0, generator=_gen(2))
    assert torch.equal(d0, torch.zeros(4, dtype=torch.float64))


def _resized(img, T):
    return torch.nn.functional.interpolate(img[None, None], size=(T, T), mode="bilinear",
                                           align_corners=False)[0, 0]


@SETTINGS
@given(st.integers(4, 16), st.integers(0, 1000))
def test_zoom_paste_crop_and_identity(S, seed):
    n = 6
    x = torch.rand(n, S, S, generator=_gen(seed), dtype=torch.float64)
    z, info = A.random_zoom(x, generator=_gen(seed + 1))
    assert torch.equal(info["size"], torch.floor(S * info["factor"]).long())
    for i in range(n):
        T, t, lf, b = (int(info[k][i]) for k in ("size", "top", "left", "background"))
        assert 0 <= t <= abs(T - S) and 0 <= lf <= abs(T - S)
        if T == S:
            assert torch.equal(z[i], x[i]) and b == -1
        elif T < S:
            inside = torch.zeros(S, S, dtype=torch.bool)
            inside[t:t + T, lf:lf + T] = True
            assert b != i and 0 <= b < n
            assert torch.equal(z[i][t:t + T, lf:lf + T], _resized(x[i], T))
            assert torch.equal(z[i][~inside], x[b][~inside])
        else:
            assert b == -1 and torch.equal(z[i], _resized(x[i], T)[t:t + S, lf:lf + S])


def test_zoom_by_one_is_the_identity_and_channels_are_zoomed_together():
    x = torch.rand(5, 3, 9, 9, generator=_gen(4))
    z, info = A.random_zoom(x, 1.0, 1.0, generator=_gen(5))
    assert torch.equal(z, x) and (info["background"] == -1).all()
    z, info = A.random_zoom(x, 0.7, 0.7, generator=_gen(6))        # T = 6 for every image
    assert (info["size"] == 6).all()
    for i in range(5):
        t, lf, b = int(info["top"][i]), int(info["left"][i]), int(info["background"][i])
        block = torch.nn.functional.interpolate(x[i][None], size=(6, 6), mode="bilinear",
                                                align_corners=False)[0]
        assert torch.equal(z[i][:, t:t + 6, lf:lf + 6], block)
        assert torch.equal(z[i][:, :t], x[b][:, :t])
    zn, _ = A.random_zoom(x, 0.7, 1.3, generator=_gen(6), mode="nearest")
    assert zn.shape == x.shape


def test_zoom_draws_are_uniform():
    from scipy.stats import kstest
    n = 20_000
    _, info = A.random_zoom(torch.zeros(n, 8, 8), generator=_gen(12))
    ks = kstest(info["factor"].numpy(), "uniform", args=(0.8, 0.4)).statistic
    assert ks < 1.95 / math.sqrt(n)
    freq = torch.bincount(info["size"] - 6, minlength=4).double() / n
    for f, q in zip(freq, (3 / 16, 5 / 16, 5 / 16, 3 / 16), strict=True):
        assert abs(float(f) - q) < 4 * math.sqrt(q * (1 - q) / n)
    # offsets uniform on {0, .., |T - S|}: for T = 6 each of 0, 1, 2 has probability 1/3
    top6 = info["top"][info["size"] == 6]
    for f in torch.bincount(top6, minlength=3).double() / len(top6):
        assert abs(float(f) - 1 / 3) < 4 * math.sqrt(2 / 9 / len(top6))
    # the background is uniform among the other images: image 0 of 4 never uses itself
    _, info = A.random_zoom(torch.zeros(4, 8, 8), 0.8, 0.8, generator=_gen(13))
    bgs = torch.stack([A.random_zoom(torch.zeros(4, 8, 8), 0.8, 0.8,
                                     generator=_gen(100 + s))[1]["background"] for s in range(600)])
    assert not (bgs == torch.arange(4)).any()
    for f in torch.bincount(bgs[:, 0], minlength=4)[1:].double() / 600:
        assert abs(float(f) - 1 / 3) < 4 * math.sqrt(2 / 9 / 600)


def test_rotation_and_zoom_errors():
    x = torch.rand(3, 6, 6, generator=_gen(0))
    for f in (lambda v: A.rotate(v, 5.0), lambda v: A.random_rotate(v, generator=_gen(0)),
              lambda v: A.random_zoom(v, generator=_gen(0))):
        with pytest.raises(TypeError, match="floating dtype for rotation and zoom"):
            f(torch.ones(3, 6, 6, dtype=torch.uint8))
        with pytest.raises(TypeError, match="floating dtype"):
            f(torch.ones(3, 6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="square"):
        A.rotate(torch.ones(2, 4, 5), 1.0)
    with pytest.raises(ValueError, match="degrees must be a number or have shape"):
        A.rotate(x, torch.zeros(2))
    with pytest.raises(ValueError, match="degrees must be finite"):
        A.rotate(x, torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="mode must be one of"):
        A.rotate(x, 1.0, mode="bicubic")
    with pytest.raises(ValueError, match="max_degrees must be >= 0"):
        A.random_rotate(x, -1.0, generator=_gen(0))
    with pytest.raises(ValueError, match="high must be >= 0.9"):
        A.random_zoom(x, 0.9, 0.8, generator=_gen(0))
    with pytest.raises(ValueError, match="low must be > 0"):
        A.random_zoom(x, 0.0, 1.0, generator=_gen(0))
    with pytest.raises(ValueError, match="low \\* S must be >= 1"):
        A.random_zoom(x, 0.1, 1.0, generator=_gen(0))
    with pytest.raises(ValueError, match="needs at least 2 images"):
        A.random_zoom(x[:1], generator=_gen(0))
    z, _ = A.random_zoom(x[:1], 1.0, 1.2, generator=_gen(0))     # one image is fine without shrink
    assert z.shape == (1, 6, 6)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        A.random_zoom(x, generator=None)


# -- review additions: the angles returned are the ones applied; nearest zoom; joint offsets ---

def test_random_rotate_applies_the_angles_it_returns():
    x = torch.rand(7, 2, 6, 6, generator=_gen(21), dtype=torch.float64)
    y, deg = A.random_rotate(x, 30.0, generator=_gen(22))
    assert torch.equal(y, A.rotate(x, deg))
    assert not torch.allclose(y, A.rotate(x, -deg))          # the sign is not arbitrary


def test_rotation_edge_sizes_half_precision_and_180_degrees():
    x1 = torch.rand(3, 1, 1, generator=_gen(23))
    assert torch.equal(A.rotate(x1, 37.0), x1)                # one pixel: its centre is fixed
    x = torch.rand(2, 7, 7, generator=_gen(24), dtype=torch.float64)
    for d in (180.0, -180.0, 540.0):
        assert (A.rotate(x, d) - torch.rot90(x, 2, dims=(-2, -1))).abs().max() < 1e-12
    for dtype in (torch.float16, torch.bfloat16):
        for S in (1, 2, 5, 31):
            xh = torch.rand(2, S, S, generator=_gen(S)).to(dtype)
            y = A.rotate(xh, 90.0, mode="nearest")
            assert y.dtype == dtype and torch.equal(y, torch.rot90(xh, 1, dims=(-2, -1)))
        z, _ = A.random_zoom(torch.rand(3, 9, 9, generator=_gen(25)).to(dtype), generator=_gen(26))
        assert z.dtype == dtype


def test_zoom_nearest_reads_the_pixel_under_each_centre():
    # PIL's nearest rule (scipy.misc.imresize in the post): output m reads floor((m + 1/2) S / T)
    S = 10
    x = torch.rand(40, S, S, generator=_gen(27), dtype=torch.float64)
    z, info = A.random_zoom(x, 0.6, 1.5, generator=_gen(28), mode="nearest")
    for i in range(len(x)):
        T, t, lf = (int(info[k][i]) for k in ("size", "top", "left"))
        src = [math.floor((m + 0.5) * S / T) for m in range(T)]
        resized = x[i][src][:, src]
        if T >= S:
            assert torch.equal(z[i], resized[t:t + S, lf:lf + S])
        else:
            assert torch.equal(z[i][t:t + T, lf:lf + T], resized)


def test_zoom_offsets_are_independent_and_two_images_swap_backgrounds():
    n = 20_000
    _, info = A.random_zoom(torch.zeros(n, 8, 8), 0.8, 0.85, generator=_gen(29))   # T = 6
    assert (info["size"] == 6).all()
    joint = torch.bincount(3 * info["top"] + info["left"], minlength=9).double() / n
    for f in joint:                                           # uniform on {0, 1, 2}^2
        assert abs(float(f) - 1 / 9) < 4 * math.sqrt(8 / 81 / n)
    for seed in range(31, 51):     # never the image itself (a wrong shift has odds 1/4 a seed)
        _, info = A.random_zoom(torch.rand(2, 8, 8, generator=_gen(30)), 0.8, 0.8,
                                generator=_gen(seed))
        assert info["background"].tolist() == [1, 0]          # the only other image


def test_random_zoom_names_x_when_one_image_cannot_be_shrunk():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="x needs at least 2 images"):
        A.random_zoom(x, generator=_gen(0))
