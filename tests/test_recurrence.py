"""Tests of dlmath.recurrence: the diagonal linear recurrence (scan and loop) and the LRU's
parametrisation, ring initialisation and normalisation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import recurrence as R
from dlmath.device import generator

F32, F64, C64, C128 = torch.float32, torch.float64, torch.complex64, torch.complex128
SETTINGS = settings(max_examples=40, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


def _direct(lam, u, x0=None):
    """x_t = sum_k lam^(t-k) u_k (+ lam^(t+1) x0) for a constant lam of shape (n,), u (T, n),
    written as a double sum of powers, independent of both code paths."""
    T = u.shape[0]
    t = torch.arange(T, dtype=F64)
    expo = (t[:, None] - t[None, :]).clamp(min=0)               # (T, T): t - k
    mask = (t[:, None] >= t[None, :]).to(u.dtype)
    powers = lam[None, None, :] ** expo[..., None].to(lam.dtype)  # (T, T, n)
    x = torch.einsum("tkn,tk,kn->tn", powers, mask, u)
    if x0 is not None:
        x = x + lam ** (t[:, None] + 1).to(lam.dtype) * x0
    return x


def _complex_lam(g, n, low=0.3, high=1.0):
    r = low + (high - low) * torch.rand(n, generator=g, dtype=F64)
    th = 2 * math.pi * torch.rand(n, generator=g, dtype=F64)
    return torch.polar(r, th)


# -- the recurrence ----------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 70), st.integers(1, 4),
       st.sampled_from(["chunked", "scan", "loop"]))
def test_matches_closed_form(seed, T, n, method):
    g = _gen(seed)
    lam = _complex_lam(g, n)
    u = torch.randn(T, n, generator=g, dtype=C128)
    x0 = torch.randn(n, generator=g, dtype=C128)
    x = R.linear_recurrence(lam, u, dim=0, method=method)
    assert torch.allclose(x, _direct(lam, u), atol=1e-11, rtol=0)
    x = R.linear_recurrence(lam, u, dim=0, initial=x0, method=method)
    assert torch.allclose(x, _direct(lam, u, x0), atol=1e-11, rtol=0)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 300), st.booleans())
def test_scan_equals_loop_time_varying(seed, T, complex_):
    g = _gen(seed)
    dtype = C128 if complex_ else F64
    lam = torch.rand(3, T, 2, generator=g, dtype=F64) * 2 - 1
    if complex_:
        lam = lam * torch.exp(1j * torch.randn(3, T, 2, generator=g, dtype=F64))
    u = torch.randn(3, T, 2, generator=g, dtype=dtype)
    a, b, c = (R.linear_recurrence(lam, u, method=m) for m in ("chunked", "scan", "loop"))
    assert torch.allclose(a, c, atol=1e-12, rtol=0) and torch.allclose(b, c, atol=1e-12, rtol=0)


def test_long_sequence_near_unit_circle():
    g = _gen(1)
    lam = torch.polar(torch.full((4,), 0.9999, dtype=F64), torch.rand(4, generator=g,
                                                                       dtype=F64))
    u = torch.randn(2, 5000, 4, generator=g, dtype=C128)
    a, b, c = (R.linear_recurrence(lam, u, method=m) for m in ("chunked", "scan", "loop"))
    assert (a - c).abs().max() < 1e-11 * c.abs().max()
    assert (b - c).abs().max() < 1e-11 * c.abs().max()


def test_associativity_of_the_operator():
    g = _gen(2)
    a = _complex_lam(g, 3 * 50).reshape(3, 50)
    b = torch.randn(3, 50, generator=g, dtype=C128)

    def op(p, q):
        return p[0] * q[0], q[0] * p[1] + q[1]

    left = op(op((a[0], b[0]), (a[1], b[1])), (a[2], b[2]))
    right = op((a[0], b[0]), op((a[1], b[1]), (a[2], b[2])))
    assert all(torch.allclose(x, y, atol=1e-14) for x, y in zip(left, right, strict=True))


def test_dim_and_broadcasting():
    g = _gen(3)
    lam = _complex_lam(g, 5)
    u = torch.randn(4, 30, 5, generator=g, dtype=C128)
    ref = R.linear_recurrence(lam, u)                          # dim=-2
    last = R.linear_recurrence(lam[:, None], u.transpose(1, 2), dim=-1)
    first = R.linear_recurrence(lam, u.transpose(0, 1), dim=0)
    assert torch.allclose(last.transpose(1, 2), ref, atol=1e-13)
    assert torch.allclose(first.transpose(0, 1), ref, atol=1e-13)
    # a real u broadcast against a per-batch lam
    lam_b = _complex_lam(g, 4 * 5).reshape(4, 1, 5)
    x = R.linear_recurrence(lam_b, u.real)
    assert x.shape == (4, 30, 5) and x.dtype == C128
    for i in range(4):
        assert torch.allclose(x[i], _direct(lam_b[i, 0], u.real[i].to(C128)), atol=1e-12)


@pytest.mark.parametrize("lam_dtype,u_dtype,expected", [
    (F32, F32, F32), (F64, F32, F64), (F32, C64, C64), (F64, C64, C128),
    (C64, F32, C64), (C64, F64, C128), (C128, C128, C128), (torch.bfloat16, F32, F32),
])
def test_dtype_promotion(lam_dtype, u_dtype, expected):
    lam = torch.full((3,), 0.5).to(lam_dtype)
    u = torch.ones(10, 3).to(u_dtype)
    for method in ("chunked", "scan", "loop"):
        x = R.linear_recurrence(lam, u, method=method)
        assert x.dtype == expected
        assert torch.allclose(x[-1].to(C128), torch.full((3,), 2 - 0.5**9, dtype=C128),
                              atol=1e-2)
    x0 = torch.ones(3, dtype=C128)
    assert R.linear_recurrence(lam, u, initial=x0).dtype == C128


def test_gradients_of_scan():
    g = _gen(4)
    lam = _complex_lam(g, 3, 0.5, 0.95).requires_grad_()
    u = torch.randn(17, 3, generator=g, dtype=C128, requires_grad=True)
    for method in ("chunked", "scan"):
        assert torch.autograd.gradcheck(
            lambda a, b, m=method: R.linear_recurrence(a, b, dim=0, method=m), (lam, u))
    # and d x_T / d u_k = lam^(T-k), the memory kernel
    T = 40
    lam = torch.tensor([0.97], dtype=F64)
    u = torch.zeros(T, 1, dtype=F64, requires_grad=True)
    R.linear_recurrence(lam, u, dim=0)[-1].sum().backward()
    assert torch.allclose(u.grad[:, 0], 0.97 ** torch.arange(T - 1, -1, -1, dtype=F64),
                          atol=1e-15)


def test_overflowing_scan_falls_back_to_loop():
    lam = torch.tensor([10.0])          # 10^39 overflows float32 inside a 45-step block
    u = torch.zeros(2000, 1)
    u[1990] = 1.0
    assert torch.isnan(R._scan(lam.expand(1, 2000), u.T)).any()   # the raw scans fail here
    assert torch.isnan(R._chunked(lam.expand(1, 2000), u.T)).any()
    x = R.linear_recurrence(lam, u, dim=0, method="scan")
    assert torch.equal(x, R.linear_recurrence(lam, u, dim=0, method="loop"))
    assert torch.equal(x, R.linear_recurrence(lam, u, dim=0))
    assert x[:1990].abs().max() == 0 and x[1995].item() == 1e5


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 15, 16, 17, 99, 100, 101])
def test_chunked_block_boundaries(T):
    g = _gen(T)
    lam = _complex_lam(g, 3)
    u = torch.randn(2, T, 3, generator=g, dtype=C128)
    ref = R.linear_recurrence(lam, u, method="loop")
    assert torch.allclose(R.linear_recurrence(lam, u, method="chunked"), ref, atol=1e-13)
    # the raw method too: linear_recurrence would mask a non-finite block result by the loop
    raw = R._chunked(lam[:, None].expand(2, 3, T), u.movedim(1, -1)).movedim(-1, 1)
    assert torch.allclose(raw, ref, atol=1e-13)


def test_finite_fast_results_are_not_recomputed_by_the_loop(monkeypatch):
    # the loop fallback is for non-finite results only: scan never runs it, chunked runs it
    # twice inside (the 7 blocks of C = isqrt(T - 1) + 1 = 8 steps from zero state, then the
    # block ends)
    calls = []
    loop = R._loop
    monkeypatch.setattr(R, "_loop", lambda a, b: calls.append(a.shape) or loop(a, b))
    lam, u = torch.full((3,), 0.9), torch.ones(2, 50, 3)
    for method, expected in (("scan", []), ("chunked", [(2, 3, 7, 8), (2, 3, 7)])):
        calls.clear()
        x = R.linear_recurrence(lam, u, method=method)
        assert calls == expected, method
        assert torch.allclose(x, loop(lam.expand(2, 50, 3).movedim(1, -1),
                                      u.movedim(1, -1)).movedim(-1, 1), atol=1e-5)


def test_edge_cases():
    u = torch.randn(5, 0, 3)
    assert R.linear_recurrence(torch.ones(3), u).shape == (5, 0, 3)
    u = torch.randn(1, 3, dtype=F64)
    assert torch.equal(R.linear_recurrence(torch.full((3,), 0.3, dtype=F64), u, dim=0), u)
    # lam = 0: no memory; lam = 1: a cumulative sum
    u = torch.randn(50, 2, generator=_gen(5), dtype=F64)
    assert torch.equal(R.linear_recurrence(torch.zeros(2, dtype=F64), u, dim=0), u)
    assert torch.allclose(R.linear_recurrence(torch.ones(2, dtype=F64), u, dim=0),
                          u.cumsum(0), atol=1e-12)


def test_bad_input():
    u = torch.randn(10, 3)
    with pytest.raises(TypeError, match="u must have a real or complex"):
        R.linear_recurrence(torch.ones(3), torch.ones(10, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="lam"):
        R.linear_recurrence(torch.ones(3, dtype=torch.bool), u)
    with pytest.raises(ValueError, match="u must be finite"):
        R.linear_recurrence(torch.ones(3), torch.full((10, 3), math.nan))
    with pytest.raises(ValueError, match="lam must be finite"):
        R.linear_recurrence(torch.tensor([1.0, math.inf, 0.0], dtype=C64), u)
    with pytest.raises(ValueError, match="does not broadcast"):
        R.linear_recurrence(torch.ones(4), u)
    with pytest.raises(ValueError, match="more dimensions"):
        R.linear_recurrence(torch.ones(2, 10, 3), u)
    with pytest.raises(ValueError, match="initial"):
        R.linear_recurrence(torch.ones(3), u, initial=torch.ones(4))
    with pytest.raises(ValueError, match="method"):
        R.linear_recurrence(torch.ones(3), u, method="fft")
    with pytest.raises(ValueError, match="dim"):
        R.linear_recurrence(torch.ones(3), u, dim=2)
    with pytest.raises(ValueError, match="at least 1"):
        R.linear_recurrence(torch.ones(()), torch.ones(()))


# -- parametrisation, initialisation, normalisation --------------------------------------

@SETTINGS
@given(st.floats(-30, 6), st.floats(-20, 5))
def test_lambda_round_trip(nu_log, theta_log):
    lam = R.lru_lambda(torch.tensor(nu_log, dtype=F64), torch.tensor(theta_log, dtype=F64))
    r, th = lam.abs().item(), math.exp(theta_log)
    assert 0 < r <= 1
    assert math.isclose(r, math.exp(-math.exp(nu_log)), rel_tol=1e-13)
    # the angle modulo 2 pi
    back = (torch.angle(lam).item() - th) / (2 * math.pi)
    assert abs(back - round(back)) < 1e-12 * max(1.0, th)
    if r < 1:  # |lam| stores 1 - r to about eps / nu, so the way back loses that much
        nu = math.exp(nu_log)
        assert abs(math.log(-math.log(r)) - nu_log) < 4e-16 / nu + 1e-13


def test_lambda_powers_are_exponentials():
    nu_log, theta_log = torch.tensor([-3.0, -1.0], dtype=F64), torch.tensor([0.2, -2.0],
                                                                           dtype=F64)
    lam = R.lru_lambda(nu_log, theta_log)
    k = torch.arange(200, dtype=F64)[:, None]
    closed = torch.exp(k * torch.complex(-nu_log.exp(), theta_log.exp()))
    powers = torch.cumprod(torch.cat([torch.ones(1, 2, dtype=C128), lam.expand(199, 2)]), 0)
    assert torch.allclose(closed, powers, atol=1e-13)


def test_lambda_dtypes_and_errors():
    assert R.lru_lambda(torch.zeros(3), torch.zeros(3)).dtype == C64
    assert R.lru_lambda(torch.zeros(3, dtype=F64), torch.zeros(1)).dtype == C128
    assert R.lru_lambda(torch.tensor([800.0], dtype=F64), torch.zeros(1, dtype=F64)).abs() == 0
    with pytest.raises(TypeError, match="nu_log must have a floating dtype"):
        R.lru_lambda(torch.zeros(3, dtype=C64), torch.zeros(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        R.lru_lambda(torch.zeros(3, dtype=torch.float16), torch.zeros(3))
    with pytest.raises(ValueError, match="overflows"):
        R.lru_lambda(torch.zeros(1, dtype=F64), torch.tensor([800.0], dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        R.lru_lambda(torch.tensor([math.nan]), torch.zeros(1))


def test_ring_init_distribution():
    from scipy import stats

    r_min, r_max, phase, n = 0.4, 0.95, math.pi / 3, 40_000
    nu_log, theta_log = R.lru_ring_init(n, r_min, r_max, phase, generator=_gen(6),
                                        dtype=F64)
    lam = R.lru_lambda(nu_log, theta_log)
    r, th = lam.abs().numpy(), theta_log.exp().numpy()
    assert r.min() >= r_min - 1e-12 and r.max() <= r_max + 1e-12
    assert th.min() > 0 and th.max() <= phase + 1e-12
    ks_r = stats.kstest(r, lambda x: (x**2 - r_min**2) / (r_max**2 - r_min**2)).statistic
    ks_th = stats.kstest(th, "uniform", args=(0, phase)).statistic
    ks_bad = stats.kstest(r, "uniform", args=(r_min, r_max - r_min)).statistic
    assert ks_r < 2 / math.sqrt(n) and ks_th < 2 / math.sqrt(n)
    assert ks_bad > 5 / math.sqrt(n)                      # a uniform radius is rejected


def test_ring_init_radius_and_angle_independent():
    """Uniform on the sector needs F(r) and theta / max_phase independent, which the marginal
    KS tests above cannot see (drawing both from one uniform passes them)."""
    import numpy as np
    from scipy import stats

    r_min, r_max, phase, n = 0.4, 0.95, 2.0, 40_000
    nu_log, theta_log = R.lru_ring_init(n, r_min, r_max, phase, generator=_gen(16), dtype=F64)
    r = R.lru_lambda(nu_log, theta_log).abs().numpy()
    p_r = (r**2 - r_min**2) / (r_max**2 - r_min**2)
    p_th = theta_log.exp().numpy() / phase
    assert abs(np.corrcoef(p_r, p_th)[0, 1]) < 4 / math.sqrt(n)
    counts = np.histogram2d(p_r, p_th, bins=4, range=[[0, 1], [0, 1]])[0].ravel()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_ring_init_seeding_dtype_and_errors():
    a = R.lru_ring_init(8, generator=_gen(7))
    b = R.lru_ring_init(8, generator=_gen(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and a[0].dtype == F32
    nu_log, theta_log = R.lru_ring_init(1000, 0.0, 1e-3, generator=_gen(8), dtype=F64)
    assert torch.isfinite(nu_log).all() and torch.isfinite(theta_log).all()
    assert R.lru_lambda(nu_log, theta_log).abs().max() <= 1e-3
    nu_log, _ = R.lru_ring_init(5, 0.5, 0.5, generator=_gen(8), dtype=F64)
    assert torch.allclose(nu_log, torch.full((5,), math.log(math.log(2)), dtype=F64))
    with pytest.raises(ValueError, match="r_min <= r_max < 1"):
        R.lru_ring_init(4, 0.9, 1.0, generator=_gen(0))
    with pytest.raises(ValueError, match="r_min <= r_max < 1"):
        R.lru_ring_init(4, 0.99, 0.9, generator=_gen(0))
    with pytest.raises(ValueError, match="r_max > 0"):
        R.lru_ring_init(4, 0.0, 0.0, generator=_gen(0))
    with pytest.raises(ValueError, match="max_phase"):
        R.lru_ring_init(4, max_phase=0.0, generator=_gen(0))
    with pytest.raises(ValueError, match="n must be"):
        R.lru_ring_init(0, generator=_gen(0))
    with pytest.raises(TypeError, match="generator"):
        R.lru_ring_init(4, generator=0)
    with pytest.raises(TypeError, match="dtype"):
        R.lru_ring_init(4, generator=_gen(0), dtype=torch.float16)


@SETTINGS
@given(st.floats(0.0, 1.0), st.floats(-math.pi, math.pi))
def test_normalization_formula(r, theta):
    lam = torch.polar(torch.tensor(r, dtype=F64), torch.tensor(theta, dtype=F64))
    gamma = R.lru_normalization(lam)
    assert gamma.dtype == F64
    ref = math.sqrt(max(0.0, 1 - lam.abs().item() ** 2))
    assert abs(gamma.item() - ref) < 1e-7 * max(ref, 1e-9) + 1e-15


def test_normalization_precision_and_edges():
    # float32 near the unit circle: full relative precision, unlike 1 - |lam|^2
    lam = torch.tensor([0.999, 0.9999, 0.99999], dtype=F32)
    ref = torch.sqrt(1 - lam.double() ** 2)
    ours = R.lru_normalization(lam)
    naive = torch.sqrt(1 - lam * lam).double()
    assert ours.dtype == F32 and ((ours.double() / ref - 1).abs() < 3e-7).all()
    assert ((naive / ref - 1).abs().max() > 1e-6)
    assert R.lru_normalization(torch.zeros(2, dtype=C64)).tolist() == [1.0, 1.0]
    on_circle = torch.polar(torch.ones(100, dtype=F64), torch.linspace(0, 6, 100, dtype=F64))
    assert R.lru_normalization(on_circle).max() < 1e-7
    with pytest.raises(ValueError, match=r"\|lam\| <= 1"):
        R.lru_normalization(torch.tensor([1.01]))
    with pytest.raises(TypeError):
        R.lru_normalization(torch.tensor([1]))


def test_normalised_white_noise_has_unit_variance():
    g = _gen(9)
    lam = torch.polar(torch.tensor([0.9, 0.99], dtype=F64), torch.tensor([0.3, 2.0], dtype=F64))
    gamma = R.lru_normalization(lam)
    u = torch.randn(2000, 600, 2, generator=g, dtype=C128)   # E|u|^2 = 1
    x = R.linear_recurrence(lam, gamma * u)
    late = x[:, -1].abs().pow(2).mean(0)
    assert ((late - 1).abs() < 0.1).all()


def test_lambda_derivative_and_gradcheck():
    """dr/dnu_log = r log r (the chapter's hand-derived derivative), and autograd through the
    complex result is consistent."""
    nu_log = torch.linspace(-5, 2, 15, dtype=F64, requires_grad=True)
    theta_log = torch.linspace(-3, 1.5, 15, dtype=F64, requires_grad=True)
    r = R.lru_lambda(nu_log, theta_log).abs()
    (dr,) = torch.autograd.grad(r.sum(), nu_log)
    r = r.detach()
    assert torch.allclose(dr, r * torch.log(r), rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(R.lru_lambda, (nu_log, theta_log))
    # broadcasting of the two parameters
    assert R.lru_lambda(torch.zeros(3, 1, dtype=F64), torch.zeros(4, dtype=F64)).shape == (3, 4)


def test_nonfinite_and_empty_inputs_elsewhere():
    u = torch.randn(10, 3)
    with pytest.raises(ValueError, match="initial must be finite"):
        R.linear_recurrence(torch.ones(3), u, initial=torch.tensor([0.0, math.inf, 0.0]))
    with pytest.raises(ValueError, match="lam must be finite"):
        R.lru_normalization(torch.tensor([0.5, math.nan]))
    empty = R.lru_normalization(torch.empty(0, dtype=C128))
    assert empty.shape == (0,) and empty.dtype == F64
    # float64 keeps full relative precision even at 1 - r ~ 1e-12 (d = 1 - r is exact)
    lam = torch.tensor([1 - 1e-12], dtype=F64)
    d = 1 - lam.item()
    ref = math.sqrt(d * (2 - d))
    assert abs(R.lru_normalization(lam).item() / ref - 1) < 1e-13


def test_initial_with_time_varying_lambda():
    """x_{-1} enters as lambda_0 x_{-1} (the docstring's formula). A constant lam cannot tell
    lambda_0 from lambda_1, so this uses a lam that changes every step, and a hand loop."""
    g = _gen(21)
    T, n = 13, 3
    lam = _complex_lam(g, T * n).reshape(T, n)
    u = torch.randn(T, n, generator=g, dtype=C128)
    x0 = torch.randn(n, generator=g, dtype=C128)
    ref, x = [], x0
    for t in range(T):
        x = lam[t] * x + u[t]
        ref.append(x)
    ref = torch.stack(ref)
    for method in ("chunked", "scan", "loop"):
        out = R.linear_recurrence(lam, u, dim=0, initial=x0, method=method)
        assert torch.allclose(out, ref, atol=1e-13, rtol=0)
    args = tuple(t.clone().requires_grad_() for t in (lam, u, x0))
    for method in ("chunked", "scan"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, m=method: R.linear_recurrence(a, b, dim=0, initial=c, method=m), args)


def test_half_precision_is_computed_in_float32():
    """A float16 loop of 3000 steps near |lam| = 1 stalls at 768 instead of 969; the library
    computes in float32 and rounds once."""
    for dtype, r, rel in ((torch.float16, 0.999, 2e-3), (torch.bfloat16, 0.99, 1e-2)):
        lam = torch.full((2,), r, dtype=dtype)
        u = torch.ones(3000, 2, dtype=dtype)
        lam_q = float(lam[0])                               # 0.999 as stored in dtype
        ref = (1 - lam_q**3000) / (1 - lam_q)
        for method in ("chunked", "scan", "loop"):
            x = R.linear_recurrence(lam, u, method=method)
            assert x.dtype == dtype
            assert abs(float(x[-1, 0]) / ref - 1) < rel
    assert R.linear_recurrence(torch.ones(2, dtype=torch.float16),
                               torch.ones(0, 2, dtype=torch.float16)).dtype == torch.float16


def test_underflowing_products_are_harmless_when_stable():
    """float32 products of 1e-30 underflow inside the chunked blocks and the scan; with every
    |lam_t| <= 1 the result still agrees with a float64 loop."""
    T = 200
    lam = torch.full((T, 2), 0.9)
    lam[50:53] = 1e-30
    u = torch.randn(T, 2, generator=_gen(41))
    ref = R.linear_recurrence(lam.double(), u.double(), dim=0, method="loop")
    for method in ("chunked", "scan", "loop"):
        x = R.linear_recurrence(lam, u, dim=0, method=method).double()
        assert (x - ref).abs().max() < 1e-6 * ref.abs().max()


def test_normalization_within_rounding_of_the_circle():
    """Moduli within 4 eps of 1 give +0 (not NaN, not -0); anything beyond raises."""
    for dtype in (F32, F64):
        eps = torch.finfo(dtype).eps
        gamma = R.lru_normalization(torch.tensor([1 + 2 * eps, 1.0], dtype=dtype))
        assert gamma.tolist() == [0.0, 0.0] and not torch.signbit(gamma).any()
        with pytest.raises(ValueError, match=r"\|lam\| <= 1"):
            R.lru_normalization(torch.tensor([1 + 64 * eps], dtype=dtype))


def test_ring_init_is_the_inverse_cdf_of_its_uniforms():
    """The draws are the documented formula applied to the generator's uniforms U, V (in that
    order): exact, so a distortion far below what a KS test sees is caught."""
    r_min, r_max, phase, n = 0.3, 0.97, 2.5, 1000
    nu_log, theta_log = R.lru_ring_init(n, r_min, r_max, phase, generator=_gen(31), dtype=F64)
    g = _gen(31)
    U = 1 - torch.rand(n, generator=g, dtype=F64)
    V = 1 - torch.rand(n, generator=g, dtype=F64)
    r2 = torch.exp(-2 * torch.exp(nu_log))
    assert torch.allclose(r2, r_min**2 + U * (r_max**2 - r_min**2), rtol=1e-13, atol=0)
    assert torch.allclose(theta_log.exp(), V * phase, rtol=1e-13, atol=0)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

@pytest.mark.parametrize("nu_shape, theta_shape", [((0,), (2,)), ((2,), (0,)), ((3,), (2,))])
def test_fuzz_lru_lambda_shapes_that_do_not_broadcast_are_named(nu_shape, theta_shape):
    with pytest.raises(ValueError, match="nu_log of shape .* theta_log"):
        R.lru_lambda(torch.zeros(nu_shape), torch.zeros(theta_shape))


# -- cases found by mutation testing (tools/mutate.py) --------------------------------------

def test_initial_state_with_two_batch_dimensions():
    # u (B1, B2, T, n) and x0 (B1, B2, n): each sequence starts from its own state
    g = _gen(70)
    lam = torch.rand(3, generator=g, dtype=F64)
    u = torch.randn(2, 4, 6, 3, generator=g, dtype=F64)
    x0 = torch.randn(2, 4, 3, generator=g, dtype=F64)
    x = R.linear_recurrence(lam, u, initial=x0)
    for i in range(2):
        for j in range(4):
            assert torch.allclose(x[i, j], _direct(lam, u[i, j], x0[i, j]), atol=1e-12, rtol=0)


def test_lru_ring_init_default_sector_is_the_full_circle():
    # max_phase = 2 pi by default: theta = V theta_max with V uniform on (0, 1]
    _, theta_log = R.lru_ring_init(4000, generator=_gen(71), dtype=torch.float64)
    theta = theta_log.exp()
    assert theta.max().item() <= 2 * math.pi and theta.max().item() > 0.99 * 2 * math.pi
    assert theta.min().item() > 0
