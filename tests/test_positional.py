"""Tests of dlmath.positional: RoPE, the gap sum f_b(m), feasibility and the base bounds."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import positional as P
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


def _rotation_matrix(n, d, base):
    """Dense block-diagonal R_n, built independently of rope_rotate."""
    R = torch.zeros(d, d, dtype=F64)
    for i in range(d // 2):
        phi = n * base ** (-2 * i / d)
        c, s = math.cos(phi), math.sin(phi)
        R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]], dtype=F64)
    return R


def _first_negative_direct(base, d, L):
    f = P.rope_gap_sum(torch.arange(L, dtype=F64), d, base)
    neg = (f < 0).nonzero()
    return int(neg[0]) if len(neg) else L


# -- frequencies and rotation ---------------------------------------------------------------

def test_frequencies_values_and_partial():
    th = P.rope_frequencies(8, 1e4)
    assert th.dtype == F64 and th.shape == (4,)
    assert torch.allclose(th, torch.tensor([1.0, 1e-1, 1e-2, 1e-3], dtype=F64), rtol=1e-14)
    half = P.rope_frequencies(8, 1e4, rotary_dims=4)
    assert torch.allclose(half, torch.tensor([1.0, 1e-2, 0.0, 0.0], dtype=F64), rtol=1e-14)
    assert P.rope_frequencies(8, 1e4, rotary_dims=8).equal(th)


def test_huge_base_gives_tiny_finite_frequencies():
    th = P.rope_frequencies(128, 1e300)
    assert th[0] == 1.0 and 0 < th[-1] < 1e-290 and torch.isfinite(th).all()
    assert P.rope_gap_sum(0.0, 128, 1e300).item() == 64.0
    # every pair but the first barely turns: f = cos m + (about) 63
    assert abs(P.rope_gap_sum(3.0, 128, 1e300).item() - (math.cos(3.0) + 63)) < 1e-6


@pytest.mark.parametrize("d", [2, 6, 16])
def test_rotate_matches_dense_matrix(d):
    x = torch.randn(5, d, generator=_gen(d), dtype=F64)
    pos = torch.tensor([0, 1, 7, 1000, 123456])
    y = P.rope_rotate(x, pos, 500.0)
    for j in range(5):
        ref = _rotation_matrix(int(pos[j]), d, 500.0) @ x[j]
        assert torch.allclose(y[j], ref, atol=1e-9, rtol=0)


def test_rotate_broadcasts_keeps_dtype_and_norm():
    x = torch.randn(3, 1, 8, generator=_gen(1))
    y = P.rope_rotate(x, torch.arange(4), 1e4)            # (3,1,8) with (4,) -> (3,4,8)
    assert y.shape == (3, 4, 8) and y.dtype == torch.float32
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1).expand(3, 4), rtol=1e-5)
    assert torch.equal(P.rope_rotate(x, 0, 1e4), x)
    assert P.rope_rotate(x, 2.5, 10.0).shape == x.shape     # fractional positions (interpolation)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 8), st.floats(1.5, 1e6),
       st.integers(0, 10**5), st.integers(0, 10**5))
def test_relative_position_identity(seed, half_d, base, m, n):
    d = 2 * half_d
    g = _gen(seed)
    q, k = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    lhs = P.rope_rotate(q, m, base) @ P.rope_rotate(k, n, base)
    rhs = q @ P.rope_rotate(k, n - m, base)
    assert abs(lhs - rhs) <= 1e-10 * q.norm() * k.norm()


# -- the gap sum ------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 8), st.floats(1.5, 1e6), st.integers(0, 10**5))
def test_gap_sum_is_the_rotated_self_score(seed, half_d, base, m):
    """E[q^T R_m q] for unit-variance pairs: (x, y) R (x, y)^T = (x^2 + y^2) cos(phi),
    so with ones in every coordinate 1^T R_m 1 = 2 f_b(m)."""
    d = 2 * half_d
    ones = torch.ones(d, dtype=F64)
    assert abs(ones @ P.rope_rotate(ones, m, base) - 2 * P.rope_gap_sum(m, d, base)) < 1e-10
    x = torch.randn(d, generator=_gen(seed), dtype=F64)
    pair_norms = x[0::2] ** 2 + x[1::2] ** 2
    th = P.rope_frequencies(d, base)
    assert abs(x @ P.rope_rotate(x, m, base) - (pair_norms * torch.cos(m * th)).sum()) < 1e-9


def test_gap_sum_shapes_and_values():
    m = torch.arange(6).reshape(2, 3)                     # integer offsets accepted
    f = P.rope_gap_sum(m, 16, 100.0)
    assert f.shape == (2, 3) and f.dtype == F64
    assert f[0, 0].item() == 8.0
    assert abs(P.rope_gap_sum(5, 16, 100.0).item()
               - sum(math.cos(5 * 100 ** (-2 * i / 16)) for i in range(8))) < 1e-14


@SETTINGS
@given(st.floats(1.5, 1e8), st.integers(0, 10**6))
def test_partial_rotation_is_nonnegative(base, m):
    assert P.rope_gap_sum(m, 128, base, rotary_dims=64).item() >= -1e-9


def test_monte_carlo_gap_matches_formula():
    d, base, mu, sigma, m, n = 8, 50.0, 1.0, 0.8, 3, 200_000
    g = _gen(5)
    q = mu + sigma * torch.randn(n, d, generator=g, dtype=F64)
    k_sim = q + 0.3 * torch.randn(n, d, generator=g, dtype=F64)
    k_rnd = mu + sigma * torch.randn(n, d, generator=g, dtype=F64)
    gap = (q * (P.rope_rotate(k_sim, m, base) - P.rope_rotate(k_rnd, m, base))).sum(-1)
    se = gap.std().item() / math.sqrt(n)
    f = P.rope_gap_sum(m, d, base).item()
    assert abs(gap.mean().item() - 2 * sigma**2 * f) < 4 * se
    assert abs(gap.mean().item() - 2 * (sigma**2 + mu**2) * f) > 10 * se   # mu must drop out


# -- first negative offset and feasibility ------------------------------------------------------

def test_first_negative_offset_matches_direct_scan():
    bases = torch.logspace(1, 5, 60, dtype=F64)
    fast = P.first_negative_offset(bases, 32, 1000)
    direct = torch.tensor([_first_negative_direct(float(b), 32, 1000) for b in bases])
    assert torch.equal(fast, direct)
    assert (fast == 1000).any() and (fast < 1000).any()


@pytest.mark.parametrize("budget", [1 << 10, 1 << 14, 1 << 22])
def test_first_negative_offset_independent_of_block_size(budget):
    bases = torch.tensor([[26960.0, 27500.0], [28000.0, 28700.0]], dtype=F64)
    M = P.first_negative_offset(bases, 128, 4096, budget=budget)
    assert M.shape == (2, 2) and M.dtype == torch.int64
    assert M.tolist() == [[4096, 2968], [2635, 4096]]


def test_first_negative_offset_memory_counts_the_head_size(monkeypatch):
    """The cos/sin tables are (bases, C, d/2): a wide head must shrink the block too."""
    largest, cos = [0], torch.cos

    def spy(x, *args, **kwargs):
        largest[0] = max(largest[0], x.numel())
        return cos(x, *args, **kwargs)

    monkeypatch.setattr(torch, "cos", spy)
    budget = 1 << 20
    M = P.first_negative_offset(1e4, 1 << 14, 5000, budget=budget)
    assert largest[0] <= budget                      # 2048 x 8192 = 16M before the fix
    monkeypatch.setattr(torch, "cos", cos)
    assert M.item() == P.first_negative_offset(1e4, 1 << 14, 5000).item()


def test_feasibility_is_not_monotone():
    ok = P.is_feasible_base(torch.tensor([26960.0, 27500.0, 28000.0, 28700.0]), 4096, 128)
    assert ok.tolist() == [True, False, False, True]


def test_partial_lengths_and_small_caps():
    assert P.first_negative_offset(100.0, 16, 1).item() == 1          # m = 0 is never negative
    assert P.first_negative_offset(100.0, 16, 17).item() == 16
    assert P.first_negative_offset(100.0, 16, 16).item() == 16        # capped: feasible for L=16
    assert bool(P.is_feasible_base(100.0, 10**5, 16, rotary_dims=8))


def test_min_feasible_base_is_first_feasible_grid_point():
    B2 = P.min_feasible_base(1024, 128, levels=2)
    b = P.min_feasible_base(1024, 128, levels=3)
    assert bool(P.is_feasible_base(b, 1024, 128)) and float(f"{b:.1e}") == 4.3e3
    j = round(b / (B2 / 1000))
    assert abs(b - j * B2 / 1000) < 1e-6 * b          # a point of the level-3 grid of (0, B2]
    below = torch.arange(1, j, dtype=F64) * (B2 / 1000)
    assert not P.is_feasible_base(below[below > 1], 1024, 128).any()
    # one level from an explicit start is a plain upward scan of start * j / steps
    b1 = P.min_feasible_base(4096, 128, levels=1, steps=1000, start=28700.0)
    grid = torch.arange(1, 1001, dtype=F64) * 28.7
    ok = P.is_feasible_base(grid, 4096, 128)
    assert b1 == float(grid[int(ok.to(torch.int8).argmax())])
    assert 27000 < b1 < 28700   # spacing 28.7 misses the first feasible window [26952, 26973]


def test_min_feasible_base_rejects_infeasible_start():
    with pytest.raises(ValueError, match="start"):
        P.min_feasible_base(4096, 128, start=27500.0)


# -- asymptotics ---------------------------------------------------------------------------------

def test_cosine_integral_zero_and_asymptotic_bound():
    from scipy.special import sici

    x0 = P.cosine_integral_zero()
    assert abs(x0 - 0.616505) < 1e-6 and abs(sici(x0)[1]) < 1e-14
    for L in (2, 100, 1024):
        b = P.asymptotic_min_base(L)
        m = np.arange(1, L, dtype=np.float64)
        assert (sici(m)[1] - sici(m / b)[1]).min() > -1e-12
        assert (sici(m)[1] - sici(m / (0.999 * b))[1]).min() < 0
    assert 1.621 < P.asymptotic_min_base(4096) / 4096 < 1.623


# -- input validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("call, err, text", [
    (lambda: P.rope_frequencies(7, 1e4), ValueError, "d must be even"),
    (lambda: P.rope_frequencies(8.0, 1e4), TypeError, "d must be an int"),
    (lambda: P.rope_frequencies(8, 1.0), ValueError, "base must be > 1"),
    (lambda: P.rope_frequencies(8, math.inf), ValueError, "base must be finite"),
    (lambda: P.rope_frequencies(8, 1e4, rotary_dims=3), ValueError, "rotary_dims must be even"),
    (lambda: P.rope_frequencies(8, 1e4, rotary_dims=10), ValueError, "rotary_dims"),
    (lambda: P.rope_rotate(torch.ones(3, 5), 1, 1e4), ValueError, "d must be even"),
    (lambda: P.rope_rotate(torch.ones(3, 4, dtype=torch.int64), 1, 1e4), TypeError, "x must"),
    (lambda: P.rope_rotate(torch.ones(3, 4), torch.arange(2), 1e4), ValueError, "broadcast"),
    (lambda: P.rope_rotate(torch.ones(3, 4), math.nan, 1e4), ValueError, "positions"),
    (lambda: P.rope_rotate(torch.ones(3, 4), torch.tensor(True), 1e4), TypeError, "positions"),
    (lambda: P.rope_gap_sum(math.inf, 8, 1e4), ValueError, "m must be finite"),
    (lambda: P.first_negative_offset(0.5, 8, 10), ValueError, "base must be > 1"),
    (lambda: P.first_negative_offset(torch.tensor([]), 8, 10), ValueError, "empty"),
    (lambda: P.first_negative_offset(1e4, 8, 0), ValueError, "max_offset"),
    (lambda: P.min_feasible_base(1024, 128, levels=0), ValueError, "levels"),
    (lambda: P.asymptotic_min_base(1), ValueError, "L must be >= 2"),
])
def test_bad_input_raises_clear_errors(call, err, text):
    with pytest.raises(err, match=text):
        call()


# -- review additions: independent formulas, edge cases ------------------------------------------

@SETTINGS
@given(st.floats(1.5, 1e8), st.integers(0, 10**6), st.sampled_from([8, 16, 64, 128]))
def test_partial_rotation_equals_the_paired_sum(base, m, d):
    """rope-eq-partial, written out independently: f = sum_{i<d/4} (1 + cos(m b^{-4i/d}))."""
    paired = sum(1 + math.cos(m * base ** (-4 * i / d)) for i in range(d // 4))
    assert abs(P.rope_gap_sum(m, d, base, rotary_dims=d // 2).item() - paired) < 1e-9 * d


@settings(max_examples=25, deadline=None)
@given(st.floats(2.0, 1e6), st.sampled_from([4, 8, 16, 32]), st.integers(1, 600),
       st.sampled_from([None, 0.5]))
def test_first_negative_offset_matches_numpy_scan(base, d, L, frac):
    """Block evaluator against a plain numpy loop over offsets (independent of rope_gap_sum)."""
    r = d if frac is None else max(2, int(d * frac) // 2 * 2)
    th = np.array([base ** (-2 * i / r) if i < r // 2 else 0.0 for i in range(d // 2)])
    f = np.cos(np.arange(L)[:, None] * th).sum(1)
    neg = np.nonzero(f < 0)[0]
    expected = int(neg[0]) if len(neg) else L
    if len(neg) and abs(f[neg[0]]) < 1e-9:        # a rounding tie: either answer is fine
        return
    got = P.first_negative_offset(base, d, L, rotary_dims=None if frac is None else r)
    assert got.dtype == torch.int64 and got.shape == () and got.item() == expected


def test_gap_sum_edge_cases_and_dtypes():
    empty = P.rope_gap_sum(torch.tensor([]), 8, 100.0)
    assert empty.shape == (0,) and empty.dtype == F64
    f32 = P.rope_gap_sum(torch.arange(5, dtype=torch.float32), 8, 100.0)
    assert f32.dtype == F64                           # always float64 (angles reach 1e6 rad)
    assert P.rope_gap_sum(torch.tensor(-7.0), 8, 100.0) == P.rope_gap_sum(7.0, 8, 100.0)  # even
    # d = 2: a single pair, f = cos m
    assert abs(P.rope_gap_sum(2.0, 2, 10.0).item() - math.cos(2.0)) < 1e-15
    with pytest.raises(ValueError, match="m must be finite"):
        P.rope_gap_sum(torch.tensor([1.0, math.nan]), 8, 100.0)
    with pytest.raises(TypeError, match="m must be real"):
        P.rope_gap_sum(torch.tensor([True]), 8, 100.0)


def test_rotate_half_precision_and_bad_input():
    x = torch.randn(3, 8, generator=_gen(3), dtype=F64)
    for dt in (torch.float16, torch.bfloat16):
        y = P.rope_rotate(x.to(dt), torch.tensor([5, 1000, 70000]), 1e4)
        ref = P.rope_rotate(x, torch.tensor([5, 1000, 70000]), 1e4)
        assert y.dtype == dt and torch.allclose(y.double(), ref, atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="x must not be empty"):
        P.rope_rotate(torch.ones(0, 4), 1, 10.0)
    with pytest.raises(ValueError, match="x must be finite"):
        P.rope_rotate(torch.tensor([[math.inf, 1.0]]), 1, 10.0)


def test_feasibility_edge_cases():
    # L = 1: only m = 0, where f = d/2 > 0, so every base is feasible
    assert P.is_feasible_base(torch.tensor([1.0001, 10.0, 1e12]), 1, 8).all()
    # shape of a batch is kept, and a scalar gives a 0-d answer
    assert P.is_feasible_base(torch.full((2, 3), 1e6), 100, 8).shape == (2, 3)
    assert P.first_negative_offset(1e4, 8, 10).shape == ()
    with pytest.raises(ValueError, match="base must be finite"):
        P.first_negative_offset(torch.tensor([2.0, math.nan]), 8, 10)
    with pytest.raises(TypeError, match="base must be real"):
        P.first_negative_offset(torch.tensor([True]), 8, 10)
    # the post's search always returns a feasible base, on the grid of its last level
    b = P.min_feasible_base(256, 16, levels=2)
    assert bool(P.is_feasible_base(b, 256, 16))


def test_min_feasible_base_skips_grid_chunks_below_one():
    # L = 1: every base is feasible (only offset 0), so each level lands on the first grid
    # point above 1, j B/n with j = floor(n/B) + 1; with steps = 70 the second level has
    # n = 4900 points and its first chunk of 4096 lies entirely below 1
    assert bool(P.is_feasible_base(torch.tensor([1.001, 1.3, 7.0], dtype=F64), 1, 4).all())
    B = 1.1
    for level in (1, 2):
        n = 70**level
        B = (math.floor(n / B) + 1) * (B / n)
    assert P.min_feasible_base(1, 4, levels=2, steps=70, start=1.1) == pytest.approx(B, rel=1e-15)
    assert 1 < B < 1 + 1.1 / 4900


# -- third reading (s19): the ends of the brackets ---------------------------------------------

def test_feasibility_at_the_ends_of_the_first_window():
    """L = 4096, d = 128: the first feasible window is [26952.34, 26973.08] (ends located by a
    float64 numpy scan). Just inside and just outside it min f is within 1e-4 of zero, so a
    feasibility test biased by more than about 3e-6 (e.g. f < -1e-5 taken as negative) fails."""
    ends = torch.tensor([26952.339, 26952.341, 26973.083, 26973.085], dtype=F64)
    assert P.is_feasible_base(ends, 4096, 128).tolist() == [False, True, True, False]
    m = np.arange(4096, dtype=np.float64)
    for b in ends.tolist():   # independent of the library: numpy, direct sums
        lowest = np.cos(m[:, None] * b ** (-2.0 * np.arange(64) / 128)).sum(1).min()
        assert 1e-6 < abs(lowest) < 1e-4


def test_feasible_exactly_up_to_the_first_negative_offset():
    """M(b) is the first negative offset, so b is feasible for L = M(b) and not for M(b) + 1
    (an off-by-one in the comparison with L survives every check away from this end)."""
    for base, d in ((100.0, 16), (27500.0, 128), (28000.0, 128)):
        M = int(P.first_negative_offset(base, d, 10**5))
        assert M < 10**5
        assert P.rope_gap_sum(float(M), d, base).item() < 0
        assert P.rope_gap_sum(torch.arange(M, dtype=F64), d, base).min().item() >= 0
        assert bool(P.is_feasible_base(base, M, d)) and not bool(P.is_feasible_base(base, M + 1, d))


# -- bad inputs (tools/bad_inputs.py): None where a number is meant; messages name L ------------

@pytest.mark.parametrize("call, err, text", [
    (lambda: P.first_negative_offset(None, 8, 10), TypeError, "base must be a number"),
    (lambda: P.is_feasible_base(None, 10, 8), TypeError, "base must be a number"),
    (lambda: P.rope_gap_sum(None, 8, 100.0), TypeError, "m must be a number"),
    (lambda: P.rope_rotate(torch.ones(3, 4), None, 1e4), TypeError, "positions must be a number"),
    (lambda: P.is_feasible_base(100.0, 0, 8), ValueError, r"^L must be >= 1"),
    (lambda: P.is_feasible_base(100.0, -1, 8), ValueError, r"^L must be >= 1"),
    (lambda: P.is_feasible_base(100.0, 2.5, 8), TypeError, r"^L must be an int"),
    (lambda: P.is_feasible_base(100.0, None, 8), TypeError, r"^L must be an int"),
])
def test_fuzz_bad_input_is_named(call, err, text):
    with pytest.raises(err, match=text):
        call()


def test_min_feasible_base_start_must_exceed_one():
    """A base must be > 1: start=1.0 passed the old inclusive check and the error came from
    first_negative_offset naming "base"; now every start <= 1 raises naming start."""
    for start in (1.0, 0.5, -3.0):
        with pytest.raises(ValueError, match=r"start must be a base > 1"):
            P.min_feasible_base(100, 16, start=start)
    with pytest.raises(ValueError, match="start must be finite"):
        P.min_feasible_base(100, 16, start=float("nan"))


# -- cases found by mutation testing (tools/mutate.py) --------------------------------------

def test_first_negative_offset_across_blocks_is_capped_and_ends_early():
    # budget = 1024 keeps the block at C = 16, 256 offsets: max_offset = 300 or 401 takes a
    # second block, computed in rows of 16, whose offsets beyond max_offset must not count;
    # d = 2 has f(m) = cos m, negative at m = 2, so every base drops out in the first block,
    # long before max_offset = 1000
    assert _first_negative_direct(6000.0, 32, 1000) == 404
    assert P.first_negative_offset(6000.0, 32, 300, budget=1024).item() == 300
    # 401 = 256 + 145: the second block's last row of 16 reaches offset 415, past 404
    assert P.first_negative_offset(6000.0, 32, 401, budget=1024).item() == 401
    assert P.first_negative_offset(6000.0, 32, 1000, budget=1024).item() == 404
    got = P.first_negative_offset(torch.tensor([10.0, 1e4]), 2, 1000, budget=1024)
    assert got.tolist() == [2, 2]


def test_min_feasible_base_at_one_level_of_two_steps():
    # levels = 1, steps = 2: the grid is {B/2, B}; at L = 1 every base is feasible (f(0) = d/2)
    assert P.min_feasible_base(1, 8, levels=1, steps=2) == 500.0
    # start = 2: the grid point 1 is not a base and is skipped
    assert P.min_feasible_base(1, 8, levels=1, steps=2, start=2.0) == 2.0


def test_work_device_is_kept_except_mps():
    # frequencies go where they are asked for (any device type but MPS, which has no float64)
    assert P.rope_frequencies(8, 100.0, device="meta").device.type == "meta"
    assert P._work_device("mps").type == "cpu" and P._work_device(None).type == "cpu"


def test_min_feasible_base_scans_past_one_chunk_and_its_defaults():
    # steps = 5000 at one level: 5000 grid points j * 16000 / 5000, scanned in chunks of 4096;
    # the answer is the first feasible one (direct sums), and the scan stops there
    grid = [j * 16000 / 5000 for j in range(1, 5001)]
    first = next(b for b in grid if b > 1 and _first_negative_direct(b, 16, 16) == 16)
    assert P.min_feasible_base(16, 16, levels=1, steps=5000) == pytest.approx(first, rel=1e-12)
    # the documented start B = 1000 L and d = 128
    assert (P.min_feasible_base(16, levels=1)
            == P.min_feasible_base(16, 128, levels=1, start=16000.0))


def test_asymptotic_min_base_for_short_contexts():
    # b_inf(L) = max_{1 <= m < L} m / g(m), Ci(g(m)) = Ci(m), g in (0, pi/2]; for small L the
    # maximising m has g(m) far from x0 (g(2) is about 1.2)
    from scipy.optimize import brentq
    from scipy.special import sici

    def g(m):
        return brentq(lambda x: sici(x)[1] - sici(m)[1], 0.1, math.pi / 2, xtol=1e-15)

    for L in (2, 3, 5, 12):
        want = max(m / g(m) for m in range(1, L))
        assert P.asymptotic_min_base(L) == pytest.approx(want, rel=1e-12), L


def test_a_bad_device_is_named():
    with pytest.raises(ValueError, match="device must be a torch.device or a device name"):
        P.rope_frequencies(8, 100.0, device="bogus")
