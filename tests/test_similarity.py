"""Tests of dlmath.similarity: cosine, the block identity, its bounds, Pearson and Simpson."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import similarity as S
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=60, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


@st.composite
def blocks(draw):
    """Random x, y split into blocks with random scales; some blocks are exactly zero."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=6))
    g = _gen(draw(st.integers(0, 2**31)))
    n = sum(sizes)
    x, y = torch.randn(n, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64)
    start = 0
    for s in sizes:
        for v in (x, y):
            kind = draw(st.sampled_from(["scale", "scale", "scale", "zero"]))
            factor = 0.0 if kind == "zero" else 10.0 ** draw(st.floats(-6, 6))
            v[start:start + s] *= factor
        start += s
    return x, y, sizes


def test_post_counterexample():
    x, y = torch.tensor([1.0, 1.0], dtype=F64), torch.tensor([1.0, 2.0], dtype=F64)
    assert abs(S.cosine(x, y).item() - 3 / math.sqrt(10)) < 1e-15
    _, _, c = S.block_stats(x, y, [1, 1])
    assert torch.equal(c, torch.ones(2, dtype=F64))


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 5), st.integers(1, 30))
def test_matches_torch_cosine_similarity(seed, batch, n):
    g = _gen(seed)
    x, y = torch.randn(batch, n, generator=g, dtype=F64), torch.randn(batch, n, generator=g,
                                                                          dtype=F64)
    ours, ref = S.cosine(x, y), F.cosine_similarity(x, y, dim=-1, eps=0.0)
    assert torch.allclose(ours, ref, atol=1e-14, rtol=0)
    assert torch.allclose(S.cosine(x, y, dim=0), F.cosine_similarity(x, y, dim=0, eps=0.0),
                          atol=1e-14, rtol=0)


def test_zero_vector_convention_matches_torch():
    z, y = torch.zeros(4, dtype=F64), torch.arange(4.0, dtype=F64)
    assert S.cosine(z, y).item() == 0.0 == F.cosine_similarity(z, y, dim=0).item()
    assert S.cosine(z, z).item() == 0.0


@pytest.mark.parametrize("dtype,big,tiny", [(F64, 1e300, 1e-300), (torch.float32, 1e30, 1e-40)])
def test_huge_and_tiny_entries(dtype, big, tiny):
    x = torch.tensor([1.0, 2.0, -3.0], dtype=dtype)
    y = torch.tensor([2.0, 0.5, 1.0], dtype=dtype)
    ref = S.cosine(x, y)
    assert S.cosine(x * big, y * tiny).item() == pytest.approx(ref.item(), abs=1e-6)
    assert S.cosine(x * big, y * big).dtype == dtype
    a, b, _ = S.block_stats(x * big, y * tiny, [2, 1])
    assert torch.isfinite(a).all() and (b > 0).all()


def test_cosine_is_clamped_and_keeps_dtype():
    x = torch.rand(1000, generator=_gen(1))
    c = S.cosine(x, 3 * x)
    assert c.dtype == torch.float32 and c.item() <= 1.0
    assert S.cosine(x.double(), -x.double()).item() == -1.0


@SETTINGS
@given(blocks())
def test_block_identity_and_bounds(data):
    x, y, sizes = data
    a, b, c = S.block_stats(x, y, sizes)
    glob = S.cosine(x, y)
    assert abs(S.global_from_blocks(a, b, c) - glob) < 1e-12
    shrink, mean = S.block_decomposition(a, b, c)
    assert 0 <= shrink <= 1 and abs(mean) <= 1
    lo, hi = S.hull_bounds(c)
    assert lo - 1e-12 <= glob <= hi + 1e-12
    if c.max() >= 0:  # the sharpened upper bound of the chapter
        assert glob <= c.max() + 1e-12
    zero = (a == 0) | (b == 0)  # zero blocks: cosine 0 (and weight 0)
    assert (c[zero] == 0).all()


def test_weights_ignore_zero_blocks_and_disjoint_support_gives_zero():
    x = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=F64)
    y = torch.tensor([0.0, 0.0, 3.0, 1.0], dtype=F64)
    a, b, c = S.block_stats(x, y, [2, 2])
    assert torch.equal(c, torch.zeros(2, dtype=F64))
    shrink, mean = S.block_decomposition(a, b, c)
    assert shrink.item() == 0.0 and mean.item() == 0.0
    assert S.global_from_blocks(a, b, c).item() == 0.0 == S.cosine(x, y).item()


@pytest.mark.parametrize("e", [0.1, 1e-2, 1e-3])
def test_no_lower_bound(e):
    ang = 0.1
    rot = torch.tensor([math.cos(ang), math.sin(ang)], dtype=F64)
    e1 = torch.tensor([1.0, 0.0], dtype=F64)
    x, y = torch.cat([e * e1, e1]), torch.cat([rot, e * rot])
    a, b, c = S.block_stats(x, y, [2, 2])
    assert torch.allclose(c, torch.full((2,), math.cos(ang), dtype=F64), atol=1e-15)
    assert abs(S.cosine(x, y).item() - 2 * e / (1 + e * e) * math.cos(ang)) < 1e-14


def test_all_negative_local_cosines_break_the_max_bound():
    eps = 0.01
    x, y = torch.tensor([1.0, eps], dtype=F64), torch.tensor([-eps, -1.0], dtype=F64)
    _, _, c = S.block_stats(x, y, [1, 1])
    glob = S.cosine(x, y).item()
    assert torch.equal(c, -torch.ones(2, dtype=F64))
    assert abs(glob + 2 * eps / (1 + eps**2)) < 1e-15 and glob > c.max().item()


def test_batched_block_stats():
    g = _gen(3)
    x, y = torch.randn(5, 7, generator=g, dtype=F64), torch.randn(5, 7, generator=g, dtype=F64)
    a, b, c = S.block_stats(x, y, [3, 4])
    assert a.shape == (5, 2)
    assert torch.allclose(S.global_from_blocks(a, b, c), S.cosine(x, y), atol=1e-14)
    a0, _, c0 = S.block_stats(x.T, y.T, [3, 4], dim=0)
    assert torch.allclose(a0, a, atol=1e-15) and torch.allclose(c0, c, atol=1e-15)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 40))
def test_pearson_matches_numpy(seed, n):
    g = _gen(seed)
    x = torch.randn(n, generator=g, dtype=F64)
    y = 0.5 * x + torch.randn(n, generator=g, dtype=F64)
    assert abs(S.pearson(x, y).item() - np.corrcoef(x.numpy(), y.numpy())[0, 1]) < 1e-12


def test_pearson_of_constant_is_zero():
    assert S.pearson(torch.ones(5), torch.arange(5.0)).item() == 0.0


def test_simpson_example():
    x = torch.tensor([0.0, 1, 2, 4, 5, 6], dtype=F64)
    y = torch.tensor([6.0, 7, 8, 0, 1, 2], dtype=F64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    a, b, c = S.simpson_blocks(x, y, groups)
    r = -32 / math.sqrt(28 * 58)
    assert torch.allclose(c, torch.tensor([1.0, 1.0, -1.0], dtype=F64), atol=1e-15)
    assert abs(S.pearson(x, y).item() - r) < 1e-15
    assert abs(S.global_from_blocks(a, b, c).item() - r) < 1e-15


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 5), st.integers(6, 30))
def test_simpson_blocks_identity(seed, n_groups, n):
    g = _gen(seed)
    groups = torch.randint(0, n_groups, (n,), generator=g)
    x = torch.randn(n, generator=g, dtype=F64) + groups
    y = torch.randn(n, generator=g, dtype=F64) - 2 * groups
    a, b, c = S.simpson_blocks(x, y, groups)
    assert abs(S.global_from_blocks(a, b, c) - S.pearson(x, y)) < 1e-12
    for k, label in enumerate(torch.unique(groups)):
        m = groups == label
        assert abs(c[k] - S.pearson(x[m], y[m])) < 1e-12


def test_concat_blocks():
    ts = [torch.ones(2, 3), torch.zeros(4, dtype=F64), torch.tensor(5.0)]
    flat, sizes = S.concat_blocks(ts)
    assert sizes == [6, 4, 1] and flat.dtype == F64 and flat.shape == (11,)


def test_bad_input():
    x = torch.ones(3)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        S.cosine(torch.ones(3, dtype=torch.int64), x)
    with pytest.raises(ValueError, match="y contains NaN|y must be finite"):
        S.cosine(x, torch.tensor([1.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="x must be finite"):
        S.cosine(torch.tensor([float("inf"), 1.0, 0.0]), x)
    with pytest.raises(ValueError, match="broadcastable"):
        S.cosine(x, torch.ones(4))
    with pytest.raises(ValueError, match="must not be empty"):
        S.cosine(torch.ones(0), torch.ones(0))
    with pytest.raises(ValueError, match="dim"):
        S.cosine(x, x, dim=2)
    with pytest.raises(ValueError, match="sizes must add up"):
        S.block_stats(x, x, [1, 1])
    with pytest.raises(ValueError, match="sizes"):
        S.block_stats(x, x, [3, 0])
    with pytest.raises(TypeError, match="sizes"):
        S.block_stats(x, x, 3)
    with pytest.raises(ValueError, match="must be >= 0"):
        S.global_from_blocks(torch.tensor([-1.0, 1]), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        S.global_from_blocks(torch.ones(2), torch.ones(2), torch.tensor([1.5, 0]))
    with pytest.raises(TypeError, match="groups"):
        S.simpson_blocks(x, x, torch.zeros(3))
    with pytest.raises(ValueError, match="groups must have the shape"):
        S.simpson_blocks(x, x, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="tensors"):
        S.concat_blocks([])


def test_block_stats_by_hand_with_sizes_as_a_tensor():
    # blocks (3, 4 | 1, 2, 2) and (4, 3 | 0, 0, 1): norms (5, 3) and (5, 1), cosines 24/25, 2/3
    x = torch.tensor([3.0, 4.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    y = torch.tensor([4.0, 3.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    for sizes in ([2, 3], torch.tensor([2, 3])):
        a, b, c = S.block_stats(x, y, sizes)
        assert a.tolist() == [5.0, 3.0] and b.tolist() == [5.0, 1.0]
        torch.testing.assert_close(c, torch.tensor([24 / 25, 2 / 3], dtype=torch.float64),
                                   rtol=1e-15, atol=0)


def test_more_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"a, b, c must have broadcastable shapes, got \(2,\), "
                                         r"\(3,\), \(2,\)"):
        S.global_from_blocks(torch.ones(2), torch.ones(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"x and y must be 1-D, got shape \(2, 3\)"):
        S.simpson_blocks(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("n", [2, 3, 6, 7, 9, 11])
def test_pearson_of_any_constant_is_exactly_zero(dtype, n):
    # 0.1 and 0.3 are not binary fractions: centring by the plain mean left ~1e-17 residues,
    # whose cosine with y was ~1e-16 instead of the documented 0
    y = torch.arange(n, dtype=dtype) ** 2
    for value in (0.1, 0.3, -7.7, 1e300 if dtype == F64 else 1e30):
        assert S.pearson(torch.full((n,), value, dtype=dtype), y).item() == 0.0
        assert S.pearson(y, torch.full((n,), value, dtype=dtype)).item() == 0.0


def test_pearson_and_simpson_near_the_largest_float():
    # the plain mean of entries ~1e308 overflows to inf; pearson used to return 0.0 silently
    x = torch.tensor([1.0, 1.5, -1.0, 0.25], dtype=F64)
    y = torch.tensor([1.0, 2.0, 0.0, 3.0], dtype=F64)
    ref = np.corrcoef(x.numpy(), y.numpy())[0, 1]
    for scale in (1e308, 1e-300):  # (subnormal scales would round x itself)
        assert abs(S.pearson(x * scale, y).item() - ref) < 1e-12
        assert abs(S.pearson(x * scale, y * (scale / 4)).item() - ref) < 1e-12
    groups = torch.tensor([0, 0, 1, 1])
    a, b, c = S.simpson_blocks(x, y, groups)
    a_big, b_big, c_big = S.simpson_blocks(x * 1e308, y, groups)
    torch.testing.assert_close(c_big, c, rtol=0, atol=1e-14)
    torch.testing.assert_close(b_big, b, rtol=1e-14, atol=0)
    torch.testing.assert_close(a_big / 1e308, a, rtol=1e-14, atol=0)
    assert abs(S.global_from_blocks(a_big, b_big, c_big).item() - ref) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_keeps_dtype_and_is_accurate(dtype):
    g = _gen(11)
    x, y = torch.randn(4, 9, generator=g, dtype=F64), torch.randn(4, 9, generator=g, dtype=F64)
    ref = S.cosine(x, y)
    ours = S.cosine(x.to(dtype), y.to(dtype))
    assert ours.dtype == dtype
    # only the rounding of the inputs and of the result: a few units of the dtype's eps
    assert (ours.double() - ref).abs().max() < 20 * torch.finfo(dtype).eps
    a, b, c = S.block_stats(x.to(dtype), y.to(dtype), [4, 5])
    assert a.dtype == b.dtype == c.dtype == dtype
    assert (S.global_from_blocks(a, b, c).double() - ref).abs().max() < 40 * torch.finfo(dtype).eps


def test_float16_block_norm_overflows_to_inf_but_cosine_does_not():
    x = torch.tensor([60000.0, 60000.0], dtype=torch.float16)
    y = torch.tensor([1.0, 2.0], dtype=torch.float16)
    a, b, c = S.block_stats(x, y, [2])
    assert torch.isinf(a).all() and torch.isfinite(b).all()
    assert abs(c.item() - 3 / math.sqrt(10)) < 1e-3 and abs(S.cosine(x, y).item() - c.item()) == 0


@pytest.mark.parametrize("seed", range(4))
def test_hull_bounds_are_sharp_for_two_or_more_blocks(seed):
    g = _gen(seed)
    c = 2 * torch.rand(4, generator=g, dtype=F64) - 1
    eps = 1e-7
    lo, hi = S.hull_bounds(c)
    for j in range(4):  # both profiles concentrated on block j: the global cosine -> c_j
        prof = torch.full((4,), eps, dtype=F64)
        prof[j] = 1.0
        assert abs(S.global_from_blocks(prof, prof, c) - c[j]) < 1e-12
    # profiles concentrated on two different blocks: the global cosine -> 0
    a, b = torch.full((4,), eps, dtype=F64), torch.full((4,), eps, dtype=F64)
    a[0], b[1] = 1.0, 1.0
    assert abs(S.global_from_blocks(a, b, c)) < 10 * eps
    assert lo == min(0.0, c.min().item()) and hi == max(0.0, c.max().item())
    neg = -torch.tensor([0.5, 0.25, 0.75], dtype=F64)  # all negative: the upper end is 0
    assert [v.item() for v in S.hull_bounds(neg)] == [-0.75, 0.0]
    assert [v.item() for v in S.hull_bounds(-neg)] == [0.0, 0.75]
    # one block: the global cosine is c_1 itself, not anything in the hull
    x, y = torch.randn(5, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    _, _, c1 = S.block_stats(x, y, [5])
    assert torch.equal(c1[0], S.cosine(x, y))


def test_concat_blocks_rejects_mixed_devices():
    with pytest.raises(ValueError, match="tensors must be on one device"):
        S.concat_blocks([torch.ones(2), torch.ones(2, device="meta")])


@SETTINGS
@given(blocks(), st.floats(-300, 300))
def test_block_quantities_scale_as_they_should(data, log_s):
    x, y, sizes = data
    s = 10.0 ** log_s
    a, b, c = S.block_stats(x, y, sizes)
    a2, b2, c2 = S.block_stats(s * x, y, sizes)
    assert torch.allclose(c2, c, atol=1e-13, rtol=0)  # cosines are scale invariant
    assert torch.allclose(a2, s * a, rtol=1e-13, atol=0) and torch.equal(b2, b)
    assert abs(S.cosine(s * x, -y) + S.cosine(x, y)) < 1e-13


def test_block_weights_do_not_underflow_when_the_overlap_is_tiny():
    """w_k = a_k b_k / sum_j a_j b_j is scale-free. Before, a_k b_k = 1e-340 underflowed and
    the only overlapping block got weight 0 (mean 0 instead of its cosine 0.8); now the
    weights survive products far below the float64 range, and shrink underflows to 0."""
    c = torch.tensor([0.3, 0.8, -0.5], dtype=F64)
    for eps in (1e-150, 1e-170, 1e-300, 1e-320):
        a = torch.tensor([1.0, eps, 0.0], dtype=F64)
        b = torch.tensor([0.0, eps, 1.0], dtype=F64)
        shrink, mean = S.block_decomposition(a, b, c)
        assert float(mean) == pytest.approx(0.8, rel=1e-12)
        assert float(shrink) == pytest.approx(eps * eps, rel=1e-9, abs=0.0)
    a = torch.tensor([[1e-200, 1e-200, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=F64)
    b = torch.tensor([[1e-200, 3e-200, 1.0], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    c = torch.tensor([[0.2, 0.6, 1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], dtype=F64)
    _, mean = S.block_decomposition(a, b, c)          # weights 1/4, 3/4; 3/10, 4/10, 3/10
    assert torch.allclose(mean, torch.tensor([0.5, 0.2, 0.0], dtype=F64), rtol=1e-14, atol=0)


# -- cases found by mutation testing (tools/mutate.py) --------------------------------------

def test_cosine_of_parallel_vectors_is_clamped_to_one():
    # cos(x, 3x) is 1; rounded, the quotient comes out as 1 + 2^-52 for some x: clamped
    x = torch.randn(2000, 7, generator=_gen(60), dtype=F64)
    c = S.cosine(x, 3 * x)
    assert c.max().item() == 1.0 and (c > 1 - 1e-15).all()
    assert S.cosine(x, -3 * x).min().item() == -1.0


def test_pearson_default_dim_is_the_last():
    x = torch.randn(4, 9, generator=_gen(61), dtype=F64)
    y = torch.randn(4, 9, generator=_gen(62), dtype=F64)
    want = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(x.numpy(), y.numpy(), strict=True)]
    torch.testing.assert_close(S.pearson(x, y), torch.tensor(want, dtype=F64), atol=1e-14,
                               rtol=0)


def test_concat_blocks_of_one_tensor_and_the_index_of_a_stray_device():
    flat, sizes = S.concat_blocks([torch.ones(2, 3)])
    assert torch.equal(flat, torch.ones(6)) and sizes == [6]
    tensors = [torch.ones(2), torch.ones(3), torch.ones(2, device="meta")]
    with pytest.raises(ValueError, match=r"cpu for tensors\[0\] and meta for tensors\[2\]"):
        S.concat_blocks(tensors)


def test_hull_bounds_default_dim_is_the_last():
    c = torch.tensor([[0.2, 0.5, -0.1], [0.3, 0.4, 0.9]], dtype=F64)
    lo, hi = S.hull_bounds(c)
    assert lo.tolist() == [-0.1, 0.0] and hi.tolist() == [0.5, 0.9]


def test_simpson_blocks_norms_are_the_blocks_norms_at_any_scale():
    # a_k, b_k: the norms of the group-centred blocks and of the between-group block, for x
    # and y of different scales (each is divided by its largest entry inside, then scaled back)
    g = _gen(63)
    x = 3.0 * torch.randn(12, generator=g, dtype=F64)
    y = 7e5 * torch.randn(12, generator=g, dtype=F64)
    groups = torch.tensor([0, 1, 2] * 4)
    a, b, c = S.simpson_blocks(x, y, groups)

    def blocks(v):
        means = torch.stack([v[groups == k].mean() for k in range(3)])
        within = [torch.linalg.vector_norm(v[groups == k] - means[k]) for k in range(3)]
        return torch.stack(within + [torch.linalg.vector_norm(means[groups] - v.mean())])

    torch.testing.assert_close(a, blocks(x), atol=0, rtol=1e-13)
    torch.testing.assert_close(b, blocks(y), atol=0, rtol=1e-13)


def test_cosine_accumulates_float32_inputs_in_float64():
    # nearly orthogonal float32 vectors: the float64 cosine of the same (exact) inputs is about
    # 1e-9, which float32 sums would bury under errors near 1e-7
    g = _gen(64)
    x = torch.randn(4096, generator=g, dtype=F64)
    y = torch.randn(4096, generator=g, dtype=F64)
    y = y - (x @ y) / (x @ x) * x
    x32, y32 = x.float(), y.float()
    want = (x32.double() @ y32.double()) / (x32.double().norm() * y32.double().norm())
    got = S.cosine(x32, y32)
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) < 1e-12 + 1e-6 * abs(want.item())
