"""Tests of dlmath.msign: the exact polar factor, Newton–Schulz msign and its schedules."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath.device import generator
from dlmath.msign import (
    JORDAN,
    SCALES,
    SCHEDULES,
    SU_6STEP,
    TAYLOR,
    YOU_JIACHENG,
    fit_quintic,
    marchenko_pastur_singular_values,
    msign,
    newton_schulz_map,
    ns_schedule,
    optimal_quintic,
    polar,
    polar_express_coefficients,
    quintic_from_roots,
    with_safety,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return generator(seed, "cpu")


def planted(n: int, m: int, sigma: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """An n x m float64 matrix with singular values ``sigma`` and random singular vectors."""
    r = sigma.numel()
    g = gen(seed)
    U, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=F64))
    return (U * sigma.to(F64)) @ V.T


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- polar (exact msign)

@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (25, 25)])
def test_polar_equals_inverse_root_forms(shape):
    n, m = shape
    M = torch.randn(n, m, generator=gen(1), dtype=F64)
    Q = polar(M)
    # M (M^T M)^{-1/2} and (M M^T)^{-1/2} M, pseudo-inverse roots via eigh on the range
    for gram, left in ((M.T @ M, False), (M @ M.T, True)):
        lam, E = torch.linalg.eigh(gram)
        inv_root = torch.where(lam > 1e-10 * lam.max(), lam.clamp_min(1e-300).rsqrt(),
                               torch.zeros_like(lam))
        R = (E * inv_root) @ E.T
        ref = R @ M if left else M @ R
        torch.testing.assert_close(Q, ref, atol=1e-10, rtol=0)
    # all singular values of the result are 1
    torch.testing.assert_close(torch.linalg.svdvals(Q), torch.ones(min(n, m), dtype=F64),
                               atol=1e-12, rtol=0)


def test_polar_matches_scipy_and_is_nearest_orthogonal():
    from scipy.linalg import polar as scipy_polar

    M = torch.randn(12, 12, generator=gen(2), dtype=F64)
    Q = polar(M)
    torch.testing.assert_close(Q, torch.from_numpy(scipy_polar(M.numpy())[0]),
                               atol=1e-12, rtol=0)
    # S = Q^T M is symmetric positive definite (polar decomposition M = Q S)
    S = Q.T @ M
    torch.testing.assert_close(S, S.T, atol=1e-12, rtol=0)
    assert torch.linalg.eigvalsh(S).min() > 0
    # no random orthogonal matrix is closer to M in Frobenius norm
    best = (M - Q).norm()
    for seed in range(50):
        R, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen(100 + seed), dtype=F64))
        assert (M - R).norm() >= best


def test_polar_special_cases_diagonal_vector_scale():
    d = torch.tensor([3.0, -0.5, 2.0, -7.0], dtype=F64)
    torch.testing.assert_close(polar(torch.diag(d)), torch.diag(torch.sign(d)))
    v = torch.randn(9, 1, generator=gen(3), dtype=F64)
    torch.testing.assert_close(polar(v), v / v.norm())
    M = torch.randn(7, 5, generator=gen(4), dtype=F64)
    torch.testing.assert_close(polar(1e5 * M), polar(M), atol=1e-12, rtol=0)


def test_polar_dual_norm_and_shampoo():
    G = torch.randn(15, 10, generator=gen(5), dtype=F64)
    Q = polar(G)
    nuclear = torch.linalg.svdvals(G).sum()
    torch.testing.assert_close(torch.trace(G.T @ Q), nuclear, atol=1e-10, rtol=0)
    # no Phi with spectral norm 1 does better
    for seed in range(200):
        P = torch.randn(15, 10, generator=gen(200 + seed), dtype=F64)
        P = P / torch.linalg.matrix_norm(P, 2)
        assert torch.trace(G.T @ P) <= nuclear + 1e-12
    # Shampoo at beta = 0: (G G^T)^{-1/4} G (G^T G)^{-1/4} = msign(G)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    L = (U * S.rsqrt()) @ U.T
    R = (Vh.T * S.rsqrt()) @ Vh
    torch.testing.assert_close(L @ G @ R, Q, atol=1e-10, rtol=0)


def test_polar_rank_deficient_and_zero():
    sigma = torch.tensor([3.0, 1.0, 0.2], dtype=F64)
    M = planted(20, 12, sigma, seed=6)
    Q = polar(M)
    s = torch.linalg.svdvals(Q)
    torch.testing.assert_close(s[:3], torch.ones(3, dtype=F64), atol=1e-10, rtol=0)
    assert s[3:].abs().max() < 1e-10
    torch.testing.assert_close(Q.norm() ** 2, torch.tensor(3.0, dtype=F64))
    # same range as M: Q Q^T M = M
    torch.testing.assert_close(Q @ Q.T @ M, M, atol=1e-10, rtol=0)
    for dtype in (torch.float32, F64):
        Z = torch.zeros(4, 6, dtype=dtype)
        assert torch.equal(polar(Z), Z) and torch.equal(polar(Z, rtol=0), Z)


def test_polar_batched_dtype_device_kept():
    M = torch.randn(3, 2, 8, 5, generator=gen(7))
    Q = polar(M)
    assert Q.shape == M.shape and Q.dtype == torch.float32 and Q.device == M.device
    for idx in [(0, 0), (2, 1)]:
        torch.testing.assert_close(Q[idx], polar(M[idx]))
    assert polar(M.to(torch.bfloat16)).dtype == torch.bfloat16


# ------------------------------------------------------- Newton–Schulz acts on singular values

@pytest.mark.parametrize("coefficients", ["jordan", "polar_express", "su_6step"])
@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_msign_is_scalar_map_on_singular_values(coefficients, shape):
    n, m = shape
    sigma = torch.logspace(0, -2, min(n, m), dtype=F64)
    M = planted(n, m, sigma, seed=8)
    X = msign(M, steps=5, coefficients=coefficients)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    expected = (U * newton_schulz_map(S / S.norm(), coefficients, 5)) @ Vh
    torch.testing.assert_close(X, expected, atol=1e-11, rtol=0)


def _spectra(k: int) -> dict[str, torch.Tensor]:
    g = gen(9)
    gauss = torch.linalg.svdvals(torch.randn(4 * k, k, generator=g, dtype=F64))
    return {"gaussian": gauss, "power_law": 1.0 / torch.arange(1, k + 1, dtype=F64)}


@pytest.mark.parametrize("shape", [(32, 32), (16, 64), (64, 16)])
@pytest.mark.parametrize("spectrum", ["gaussian", "power_law"])
def test_msign_error_vs_steps(shape, spectrum):
    """The error table: Taylor and Polar Express converge to polar(M), monotonically."""
    n, m = shape
    sigma = _spectra(min(n, m))[spectrum]
    if spectrum == "gaussian" and n == m:
        sigma = torch.linalg.svdvals(torch.randn(n, m, generator=gen(10), dtype=F64))
    M = planted(n, m, sigma, seed=11)
    Q = polar(M)
    x_min = (sigma.min() / sigma.norm()).item()
    errs = {c: [rel(msign(M, steps=T, coefficients=c), Q) for T in range(1, 21)]
            for c in ("taylor", "polar_express")}
    # Taylor raises every singular value monotonically towards 1; Polar Express only
    # guarantees the worst case on [1e-3, 1], and its Frobenius error may rise at first
    e = errs["taylor"]
    assert all(b <= a + 1e-14 for a, b in zip(e, e[1:], strict=False)), e
    e = errs["polar_express"][4:]
    assert all(b <= a + 1e-14 for a, b in zip(e, e[1:], strict=False)), e
    if x_min > 1e-3:  # inside the interval Polar Express was designed for: 8 steps suffice
        assert errs["polar_express"][7] < 1e-12
    assert errs["polar_express"][19] < 1e-12
    assert errs["taylor"][19] < 1e-8
    # Jordan's 5-step output is not msign: each singular value x >= 0.01 (normalised) goes
    # into a band around 1, smaller ones stay below it
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    g = torch.diagonal(U.T @ msign(M, 5, "jordan") @ Vh.T)
    x = S / S.norm()
    assert 0.6 < g[x >= 0.01].min() and g.max() < 1.25
    assert torch.all(g[x < 1e-3] < 0.6)


def test_msign_float32_cpu_matches_float64():
    M = torch.randn(64, 32, generator=gen(12), dtype=F64)
    X64 = msign(M, 8, "polar_express")
    X32 = msign(M.float(), 8, "polar_express")
    assert X32.dtype == torch.float32
    assert rel(X32.double(), X64) < 1e-4
    # bf16 input computes in float32 on CPU and returns bf16
    Xb = msign(M.to(torch.bfloat16), 8, "polar_express")
    assert Xb.dtype == torch.bfloat16 and rel(Xb.double(), X64) < 2e-2
    # bf16 products are allowed on CPU too (fast where the CPU has bf16 units): ~2 digits
    Xh = msign(M.float(), 8, "polar_express", dtype=torch.bfloat16)
    assert Xh.dtype == torch.float32 and 1e-4 < rel(Xh.double(), X64) < 5e-2


@pytest.mark.parametrize("gram", [False, True])
def test_schatten8_scale_is_the_map_at_the_tighter_bound(gram):
    # scale="schatten8" runs the same scalar map on x / s, s = (sum x^8)^(1/8), x = sigma/||M||_F
    M = torch.randn(24, 60, generator=gen(21), dtype=F64)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    x = S / S.norm()
    s8 = x.pow(8).sum().pow(1 / 8)
    assert x[0] <= s8 <= 1
    for coef in ("jordan", "polar_express"):
        want = (U * newton_schulz_map(x / s8, coef, 5)) @ Vh
        got = msign(M, 5, coef, gram=gram, scale="schatten8")
        assert rel(got, want) < 1e-12
        # and differs from the Frobenius scaling
        assert rel(msign(M, 5, coef, gram=gram), want) > 1e-3
    assert torch.equal(msign(torch.zeros(2, 4, 6), gram=gram, scale="schatten8"),
                       torch.zeros(2, 4, 6))


def test_schatten8_lifts_the_smallest_singular_value():
    # Su (kexue.fm/archives/10922): on 100x100 Gaussians the smallest output singular value of
    # Jordan's 5 steps is mostly more than 2x larger with the Schatten-8 rescaling
    g = gen(22)
    ratios, means = [], []
    for _ in range(20):
        M = torch.randn(100, 100, generator=g, dtype=F64)
        sv = [torch.linalg.svdvals(msign(M, scale=sc)) for sc in SCALES]
        ratios.append(float(sv[1].min() / sv[0].min()))
        means.append((float(sv[0].mean()), float(sv[1].mean())))
    assert statistics.median(ratios) > 2
    assert sum(r > 2 for r in ratios) >= 10
    assert all(m8 > mf for mf, m8 in means)


def test_msign_edge_cases():
    Z = torch.zeros(2, 5, 3)
    assert torch.equal(msign(Z), Z)
    # overflow / underflow safe normalisation
    M = torch.randn(10, 6, generator=gen(13))
    ref = msign(M, 8, "polar_express")
    for scale in (1e30, 1e-30):
        torch.testing.assert_close(msign(M * scale, 8, "polar_express"), ref,
                                   atol=1e-5, rtol=0)
    # validate=False skips the finiteness check (no host sync): same result on good input,
    # NaN out for NaN in
    torch.testing.assert_close(msign(M, 8, "polar_express", validate=False), ref, atol=0, rtol=0)
    assert msign(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), validate=False).isnan().all()
    assert torch.equal(msign(Z, validate=False), Z)
    # rank deficiency: null directions stay (numerically) zero, the rest go to 1
    sigma = torch.tensor([1.0, 0.5, 0.1], dtype=F64)
    R = planted(16, 10, sigma, seed=14)
    s = torch.linalg.svdvals(msign(R, 8, "polar_express"))
    torch.testing.assert_close(s[:3], torch.ones(3, dtype=F64), atol=1e-10, rtol=0)
    assert s[3:].max() < 1e-10
    # batched, tall matrices come back in their own orientation
    B = torch.randn(3, 9, 4, generator=gen(15), dtype=F64)
    X = msign(B, 10, "polar_express")
    assert X.shape == B.shape
    torch.testing.assert_close(X, polar(B), atol=1e-10, rtol=0)
    # non-contiguous input
    torch.testing.assert_close(msign(B.mT, 10, "polar_express"), polar(B).mT,
                               atol=1e-10, rtol=0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), m=st.integers(1, 12), seed=st.integers(0, 10_000),
       log_scale=st.floats(-20, 20))
def test_msign_scale_invariance_and_bound(n, m, seed, log_scale):
    M = torch.randn(n, m, generator=gen(seed), dtype=F64)
    X = msign(M, 5, "jordan")
    torch.testing.assert_close(msign(M * 10.0**log_scale, 5, "jordan"), X,
                               atol=1e-10, rtol=0)
    # Jordan's map sends (0, 1] into (0, 1.21): the spectral norm of the result is bounded
    assert torch.linalg.matrix_norm(X, 2) < 1.21


# ---------------------------------------------------------------- schedules and scalar maps

def test_named_schedules_transcribed():
    """Slopes at 0 and ranges on [1e-3, 1] quoted in the 10922 post and the fact sheet."""
    x = torch.linspace(1e-3, 1, 100_001, dtype=F64)
    cases = {  # name, steps -> (slope at 0, min, max), min and max as quoted
        ("jordan", 5): (485, "0.47", "1.20"),
        ("you_jiacheng", 6): (1138, "0.87", "1.00"),
        ("su_6step", 6): (1476, "0.975", "1.010"),
        ("polar_express", 5): (976, "0.846", "1.124"),
    }
    for (name, T), (slope, lo, hi) in cases.items():
        y = newton_schulz_map(x, name, T)
        # slopes are quoted as integers (YouJiacheng's 1137.45 is quoted as 1138)
        assert abs(math.prod(a for a, _, _ in ns_schedule(name, T)) - slope) < 1, name
        for got, text in ((y.min().item(), lo), (y.max().item(), hi)):
            assert abs(got - float(text)) <= 0.5 * 10.0 ** -len(text.split(".")[1]), name
    assert JORDAN[0] == (3.4445, -4.7750, 2.0315) and TAYLOR[0] == (1.875, -1.25, 0.375)
    assert len(YOU_JIACHENG) == len(SU_6STEP) == 6


def test_ns_schedule_semantics():
    assert ns_schedule("jordan", 3) == JORDAN * 3
    seq = ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert ns_schedule(seq, 4) == (seq[0], seq[1], seq[1], seq[1])
    assert ns_schedule((1.5, -0.5, 0.0), 2) == ((1.5, -0.5, 0.0),) * 2
    assert ns_schedule(torch.tensor([[1.0, 2.0, 3.0]]), 1) == ((1.0, 2.0, 3.0),)
    x = torch.tensor([0.3, 0.7], dtype=F64)
    # a triple (a, 0, 0) multiplies by a at each step
    torch.testing.assert_close(newton_schulz_map(x, (2.0, 0.0, 0.0), 3), 8 * x)
    assert set(SCHEDULES) == {"jordan", "taylor", "you_jiacheng", "su_6step", "polar_express"}


def test_taylor_coefficients_by_sympy():
    import sympy as sp

    t = sp.symbols("t")
    series = sp.series(t ** sp.Rational(-1, 2), t, 1, 3).removeO()
    a, b, c = TAYLOR[0]
    assert sp.expand(series - (sp.nsimplify(a) + sp.nsimplify(b) * t
                               + sp.nsimplify(c) * t**2)) == 0


def test_quintic_from_roots_fixed_points():
    a, b, c = quintic_from_roots(1.724, 0.935, 1.235)
    # the table's (kappa, x1, x2) are rounded to 3 decimals, so (a, b, c) agree to ~3e-3
    for got, want in zip((a, b, c), (3.297, -4.136, 1.724), strict=True):
        assert abs(got - want) < 5e-3
    for x in (0.935, 1.235):
        assert abs(a * x + b * x**3 + c * x**5 - x) < 1e-12


# ---------------------------------------------------------------- Polar Express

def test_optimal_quintic_equioscillates():
    a, b, c = optimal_quintic(1e-3, 1.0)
    for got, want in zip((a, b, c), (8.4703, -25.1081, 18.6293), strict=True):
        assert abs(got - want) < 1e-4
    disc = math.sqrt(9 * b * b - 20 * a * c)
    q, r = (math.sqrt((-3 * b + s * disc) / (10 * c)) for s in (-1, 1))
    assert abs(q - 0.3674) < 1e-4 and abs(r - 0.8208) < 1e-4
    p = [a * x + b * x**3 + c * x**5 - 1 for x in (1e-3, q, r, 1.0)]
    E = p[1]
    assert abs(E - 0.9915) < 1e-4
    for val, sign in zip(p, (-1, 1, -1, 1), strict=True):
        assert abs(val - sign * E) < 1e-10
    # scale covariance: optimum on [l, u] is the optimum on [l/u, 1] composed with x/u
    a2, b2, c2 = optimal_quintic(2e-3, 2.0)
    assert abs(a2 - a / 2) < 1e-12 and abs(b2 - b / 8) < 1e-12 and abs(c2 - c / 32) < 1e-12


@pytest.mark.parametrize("lower", [1e-12, 1e-16, 1e-100, 5e-324])
def test_optimal_quintic_tiny_lower_converges_to_the_limit(lower):
    """E ~ 1 - a*lower is pinned near 1 for a tiny lower: the stopping rule must also wait
    for the nodes, or p dips below 0 (sign flips) and max|p - 1| exceeds 1."""
    a, b, c = optimal_quintic(lower)
    assert abs(a - 8.514302273849) < 1e-9 and abs(c - 18.767448231046) < 1e-9
    x = torch.cat([torch.logspace(-300, 0, 20_001, dtype=F64), torch.tensor([lower], dtype=F64)])
    p = a * x + b * x**3 + c * x**5
    assert p.min().item() >= 0 and (p - 1).abs().max().item() <= 1.0
    for got, want in zip(polar_express_coefficients(1, lower, cushion=0.0)[0], (a, b, c),
                         strict=True):  # inherits it (recentring factor 1 up to rounding)
        assert abs(got - want) <= 1e-12 * abs(want)


PRINTED_PE = [  # the paper's table (before the 1.01 safety factor), as printed
    ("8.28721", "-23.5959", "17.3004"),
    ("4.10706", "-2.94785", "0.544843"),
    ("3.94869", "-2.9089", "0.551819"),
    ("3.31842", "-2.48849", "0.510049"),
    ("2.30065", "-1.6689", "0.418807"),
    ("1.8913", "-1.268", "0.376804"),  # the post prints b6 without its minus sign
    ("1.875", "-1.25", "0.375"),
    ("1.875", "-1.25", "0.375"),
]


def test_polar_express_table_to_printed_digits():
    coeffs = polar_express_coefficients(8)
    for t, (row, printed) in enumerate(zip(coeffs, PRINTED_PE, strict=True)):
        for got, text in zip(row, printed, strict=True):
            decimals = len(text.split(".")[1])
            assert abs(got - float(text)) <= 0.5 * 10**-decimals + 1e-12, (t, got, text)
    # the schedule used by msign: safety factor on all but the last triple
    sched = ns_schedule("polar_express", 10)
    f = 1.01
    a, b, c = coeffs[0]
    assert sched[0] == (a / f, b / f**3, c / f**5)
    assert sched[7] == coeffs[7] and sched[9] == coeffs[7]
    assert with_safety(coeffs, keep_last=False)[7] != coeffs[7]
    # the table is the cushioned one (PE_CUSHION ~ 0.024), not the greedy cushion=0 optimum
    assert abs(sched[0][0] - 8.205160414) < 1e-8
    assert abs(polar_express_coefficients(1, cushion=0.0)[0][0] - 8.470328804) < 1e-8


# ---------------------------------------------------------------- Marchenko–Pastur and Su's table

def test_marchenko_pastur_quantiles_match_sampled_singular_values():
    for n, m in ((400, 400), (800, 200), (200, 800)):
        s = torch.linalg.svdvals(torch.randn(n, m, generator=gen(16), dtype=F64))
        s = (s / s.norm()).flip(0)
        mp = marchenko_pastur_singular_values(n, m)
        assert mp.shape == s.shape and torch.isfinite(mp).all()
        assert abs(mp.norm().item() - 1) < 1e-12
        assert torch.all(mp[1:] >= mp[:-1])
        # middle quantiles agree to a few percent
        k = len(s)
        mid = slice(k // 10, 9 * k // 10)
        assert ((mp[mid] - s[mid]).abs() / s[mid]).max() < 0.05


def test_su_table_rows_reproduced_from_mp_quantiles():
    """mse and mse_o of the post's table (Jordan's coefficients), from MP quantiles."""
    rows = [  # n, m, T, a, b, c, mse, mse_o as printed in kexue.fm/archives/10592
        (1024, 1024, 5, 3.297, -4.136, 1.724, 0.02733, 0.04431),
        (2048, 1024, 3, 4.095, -9.327, 7.028, 0.01628, 0.06171),
        (4096, 4096, 5, 3.373, -4.613, 2.057, 0.04700, 0.06372),
        (8192, 8192, 3, 6.139, -24.893, 30.147, 0.11944, 0.44843),
    ]
    for n, m, T, a, b, c, mse, mse_o in rows:
        x = marchenko_pastur_singular_values(n, m)
        ours = ((newton_schulz_map(x, (a, b, c), T) - 1) ** 2).mean().item()
        ours_o = ((newton_schulz_map(x, "jordan", T) - 1) ** 2).mean().item()
        assert abs(ours - mse) < 3e-4 and abs(ours_o - mse_o) < 3e-4, (n, m, T)


def test_fit_quintic_recovers_table_row():
    kappa, x1, x2 = fit_quintic(marchenko_pastur_singular_values(1024, 1024), steps=5)
    assert abs(kappa - 1.724) < 5e-3 and abs(x1 - 0.935) < 5e-3 and abs(x2 - 1.235) < 5e-3


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("fn", [polar, msign])
def test_bad_input(fn):
    with pytest.raises(ValueError, match="M must have at least 2"):
        fn(torch.ones(3))
    with pytest.raises(ValueError, match="M must"):
        fn(torch.ones(0, 3))
    with pytest.raises(ValueError, match="M must be finite.*NaN"):
        fn(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="M must be finite.*inf"):
        fn(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(TypeError, match="M must have a floating dtype"):
        fn(torch.ones(2, 2, dtype=torch.int64))


def test_bad_schedule_and_dtype():
    M = torch.ones(3, 2)
    with pytest.raises(ValueError, match="coefficients must be one of"):
        msign(M, coefficients="newton")
    with pytest.raises(ValueError, match=r"coefficients\[1\] must be an \(a, b, c\) triple"):
        msign(M, coefficients=[(1.0, 2.0, 3.0), (1.0, 2.0)])
    with pytest.raises(ValueError, match=r"coefficients\[0\] must be finite"):
        msign(M, coefficients=[(1.0, float("nan"), 3.0)])
    with pytest.raises(TypeError, match="coefficients must be"):
        msign(M, coefficients=[])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        msign(M, steps=0)
    with pytest.raises(TypeError, match="steps must be an int"):
        msign(M, steps=2.5)
    with pytest.raises(ValueError, match="beyond the range of the working dtype"):
        msign(torch.full((2, 2), 1e300, dtype=F64), dtype=torch.float32)
    with pytest.raises(ValueError, match="scale must be one of"):
        msign(M, scale="spectral")
    with pytest.raises(TypeError, match="dtype must be"):
        msign(M, dtype=torch.int32)
    with pytest.raises(ValueError, match="lower must be <= "):
        optimal_quintic(2.0, 1.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        marchenko_pastur_singular_values(0, 3)


@pytest.mark.parametrize("shape", [(32, 64), (48, 200), (300, 60), (2, 16, 80)])
@pytest.mark.parametrize("coefficients", ["jordan", "polar_express"])
def test_gram_path_equals_plain_path(shape, coefficients):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-5)):
        X = G.to(dtype)
        plain = msign(X, coefficients=coefficients, gram=False)
        fast = msign(X, coefficients=coefficients, gram=True)
        assert fast.dtype == dtype and fast.shape == X.shape
        assert (fast - plain).abs().max().item() <= tol
    # the default takes the Gram path beyond aspect ratio 1.5 and gives the same output
    torch.testing.assert_close(msign(G, coefficients=coefficients),
                               msign(G, coefficients=coefficients, gram=True), rtol=0, atol=0)
    assert torch.equal(msign(torch.zeros(4, 12), gram=True), torch.zeros(4, 12))


@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 8), (3, 1, 2, 8, 5)])
def test_msign_with_several_batch_dimensions_acts_slice_by_slice(shape, gram):
    M = torch.randn(shape, generator=gen(12), dtype=F64)
    X = msign(M, coefficients="polar_express", gram=gram)
    assert X.shape == M.shape
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    S = S / S.norm(dim=-1, keepdim=True)        # each slice normalised by its own Frobenius norm
    expected = (U * newton_schulz_map(S, "polar_express", 5).unsqueeze(-2)) @ Vh
    torch.testing.assert_close(X, expected, atol=1e-11, rtol=0)


# ---------------------------------------------------------------- added by the second reader

def _max_error(coef, lo, hi, k=20_001):
    x = torch.linspace(lo, hi, k, dtype=F64)
    a, b, c = coef
    return (a * x + b * x**3 + c * x**5 - 1).abs().max().item()


def test_optimal_quintic_error_is_monotone_and_continuous_up_to_the_taylor_limit():
    """The monotonicity fact of the greedy proof, and no jump where the Taylor limit takes over."""
    rhos = [1e-9, 1e-6, 1e-3, 0.01, 0.1, 0.3, 0.6, 0.9, 0.99, 0.999, 0.9999, 1 - 4e-6, 1 - 6e-6]
    errs = []
    for rho in rhos:
        coef = optimal_quintic(rho, 1.0)
        E = _max_error(coef, rho, 1.0)
        # equioscillation: the error at the left end is -E (p(rho) = 1 - E)
        assert abs(coef[0] * rho + coef[1] * rho**3 + coef[2] * rho**5 - (1 - E)) < 1e-9
        errs.append(E)
        if 0.9 <= rho <= 0.9999:  # near 1 the optimum beats the Taylor map (~32x as rho -> 1)
            assert E < _max_error(TAYLOR[0], rho, 1.0) / 10, rho
    assert all(e2 <= e1 + 1e-15 for e1, e2 in zip(errs, errs[1:], strict=False)), errs
    # both sides of the switch at 1 - 5e-6 are the Taylor map to ~1e-5
    for rho in (1 - 4e-6, 1 - 6e-6):
        for got, want in zip(optimal_quintic(rho), TAYLOR[0], strict=True):
            assert abs(got - want) < 1e-4


def test_polar_express_without_cushion_is_the_greedy_of_the_theorem():
    """cushion=0: each step is the plain best quintic, the recentring factor is 1, the next
    interval is [1 - E_t, 1 + E_t], and the composition's worst error on [l, 1] is E_T."""
    lower, steps = 0.05, 4
    coeffs = polar_express_coefficients(steps, lower, cushion=0.0)
    lo, hi = lower, 1.0
    for coef in coeffs:
        best = optimal_quintic(lo, hi)
        for got, want in zip(coef, best, strict=True):
            assert abs(got - want) <= 1e-9 * max(1.0, abs(want))
        E = _max_error(coef, lo, hi)
        lo, hi = 1 - E, 1 + E
    x = torch.linspace(lower, 1.0, 100_001, dtype=F64)
    total = (newton_schulz_map(x, coeffs, steps) - 1).abs().max().item()
    assert abs(total - E) < 1e-9
    # the cushioned default only differs in the first steps, where lower < cushion
    assert polar_express_coefficients(2, 0.05) == coeffs[:2]


@pytest.mark.parametrize("exact", [False, True])
def test_float16_input_is_computed_wider_and_returned_as_float16(exact):
    M = torch.randn(12, 7, generator=gen(60))
    X = polar(M.half()) if exact else msign(M.half(), 8, "polar_express")
    assert X.dtype == torch.float16 and X.shape == M.shape
    # float32 work, then one rounding to float16 (11-bit mantissa): ~1e-3
    assert rel(X.double(), polar(M.half().double())) < 2e-3


def test_square_non_symmetric_iteration_uses_x_xt_x_not_x_cubed():
    """On a square, non-symmetric matrix X (X^T X) and X^3 differ: the result must be the
    scalar map on the singular values (the comment thread of kexue.fm/archives/10592)."""
    M = torch.randn(20, 20, generator=gen(61), dtype=F64)
    U, S, Vh = torch.linalg.svd(M)
    for coefficients in ("jordan", "polar_express"):
        expected = (U * newton_schulz_map(S / S.norm(), coefficients, 5)) @ Vh
        torch.testing.assert_close(msign(M, 5, coefficients), expected, atol=1e-12, rtol=0)
    X = M / M.norm()
    a, b, c = JORDAN[0]
    cubed = a * X + b * X @ X @ X + c * X @ X @ X @ X @ X
    assert rel(msign(M, 1, "jordan"), cubed) > 0.1


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 10), m=st.integers(1, 10), rank=st.integers(1, 10),
       seed=st.integers(0, 10_000), log_scale=st.floats(-30, 30))
def test_polar_is_the_partial_isometry_attaining_the_nuclear_norm(n, m, rank, seed, log_scale):
    """For any shape, rank and scale: Q = polar(M) has Q Q^T Q = Q, rank(Q) = rank(M),
    Q Q^T M = M, and <M, Q> = ||M||_* (the maximiser of the spectral-norm dual problem)."""
    r = min(rank, n, m)
    g = gen(seed)
    M = (torch.randn(n, r, generator=g, dtype=F64) @ torch.randn(r, m, generator=g, dtype=F64)
         * 10.0**log_scale)
    Q = polar(M)
    s = torch.linalg.svdvals(M)
    torch.testing.assert_close(Q @ Q.T @ Q, Q, atol=1e-10, rtol=0)
    assert abs(Q.norm().item() ** 2 - r) < 1e-8
    scale = s[0]
    torch.testing.assert_close(Q @ Q.T @ M / scale, M / scale, atol=1e-10, rtol=0)
    assert abs(((M * Q).sum() - s.sum()) / scale).item() < 1e-10


def test_small_helpers_keep_dtype_and_honour_k():
    # newton_schulz_map keeps float32 / float64 and the shape, scalars included
    for dtype in (torch.float32, F64):
        x = torch.tensor([[0.1, 0.5], [0.9, 1.0]], dtype=dtype)
        y = newton_schulz_map(x, "taylor", 3)
        assert y.dtype == dtype and y.shape == x.shape
    assert newton_schulz_map(torch.tensor(0.5, dtype=F64), "jordan", 1).ndim == 0
    # k quantiles of the MP law: k values, ascending, unit Euclidean norm, inside the MP support
    s = marchenko_pastur_singular_values(300, 100, k=7)
    assert s.shape == (7,) and torch.all(s[1:] > s[:-1]) and abs(s.norm().item() - 1) < 1e-12
    q = 100 / 300
    ratio = s[-1] / s[0]  # bounded by the support's edge ratio (1 + sqrt q) / (1 - sqrt q)
    assert ratio < (1 + math.sqrt(q)) / (1 - math.sqrt(q))
    with pytest.raises(ValueError, match="k must be >= 1"):
        marchenko_pastur_singular_values(3, 3, k=0)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_fuzz_fit_quintic_refuses_non_finite_x(bad):
    """A NaN or inf singular value made L-BFGS return (nan, nan, nan) silently."""
    x = marchenko_pastur_singular_values(16, 16)
    x[0] = bad
    with pytest.raises(ValueError, match="x must be finite"):
        fit_quintic(x, steps=3)


@pytest.mark.parametrize("dtype, inside, above, below", [
    (torch.float32, (1e-18, 1e18), 1e20, 1e-21), (F64, (1e-150, 1e150), 1e155, 1e-160)])
def test_msign_validate_false_range_of_the_norm(dtype, inside, above, below):
    """validate=False scales by the unscaled norm: exact inside [sqrt(tiny), sqrt(max)];
    above, the norm overflows and the output is the zero matrix; below, accuracy is lost."""
    B = torch.randn(16, 24, generator=gen(31), dtype=F64)
    B = (B / B.norm()).to(dtype)
    want = msign(B)
    for c in inside:
        torch.testing.assert_close(msign(B * c, validate=False), want, rtol=0, atol=1e-5)
    assert torch.equal(msign(B * above, validate=False), torch.zeros_like(B))
    assert not (msign(B * below, validate=False) - want).abs().max() <= 1e-5
    for c in (*inside, above, below):  # the validated default rescales every one of them
        torch.testing.assert_close(msign(B * c), want, rtol=0, atol=1e-5)


def _spread(lo: float, seed: int = 0, rank: int | None = None) -> torch.Tensor:
    """A 64 x 256 float64 matrix with singular values logspace(0, lo) (or rank-``rank``)."""
    s = torch.logspace(0, lo, 64, dtype=F64)
    if rank is not None:
        s = torch.cat([torch.linspace(1, 0.5, rank, dtype=F64), torch.zeros(64 - rank, dtype=F64)])
    return planted(64, 256, s, seed)


@pytest.mark.parametrize("M", [_spread(-6), _spread(-3), _spread(0, rank=8)],
                         ids=["spread1e-6", "spread1e-3", "rank8"])
def test_gram_path_accuracy_as_documented(M):
    """float32 Gram path (the CPU default at aspect 4): within 1e-3 of the float64 result for
    the 5-step schedules, 100x below their own distance from polar; for 8-step polar_express
    it is the limiting error (the plain path, gram=False, is far more accurate)."""
    P, X = polar(M), M.float()
    for sched in ("jordan", "polar_express"):
        ref = msign(M, 5, sched)
        gram = msign(X, 5, sched)  # gram=None takes the Gram path here
        assert torch.equal(gram, msign(X, 5, sched, gram=True))
        assert rel(gram.double(), ref) <= 1e-3
        assert rel(gram.double(), ref) <= rel(ref, P) / 100
        assert rel(msign(X, 5, sched, gram=False).double(), ref) <= 3e-5
    ref = msign(M, 8, "polar_express")
    gram_err = rel(msign(X, 8, "polar_express").double(), ref)
    plain_err = rel(msign(X, 8, "polar_express", gram=False).double(), ref)
    assert 1e-4 <= gram_err <= 5e-2 and plain_err <= 2.5e-4 and plain_err <= gram_err / 4


# -- gaps found by mutation testing ---------------------------------------------------------

def test_schedule_and_scalar_map_default_to_msigns_five_jordan_steps():
    # ns_schedule and newton_schulz_map default to msign's own default, Jordan's quintic 5
    # times (torch.optim.Muon's); every other test passed coefficients and steps explicitly
    assert ns_schedule() == JORDAN * 5
    M = torch.randn(9, 14, generator=gen(70), dtype=F64)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    x = S / S.norm()
    a, b, c = JORDAN[0]
    y = x.clone()
    for _ in range(5):  # the composition written out
        y = a * y + b * y**3 + c * y**5
    torch.testing.assert_close(newton_schulz_map(x), y, atol=1e-14, rtol=0)
    torch.testing.assert_close(msign(M), (U * newton_schulz_map(x)) @ Vh, atol=1e-12, rtol=0)


def _mp_quantiles_by_quadrature(n: int, m: int, k: int) -> torch.Tensor:
    """The k MP quantiles at levels (i - 1/2)/k, independently: the quarter-circle law of
    sqrt(lambda) in closed form when n = m, else scipy's quad of the density in lambda."""
    from scipy.integrate import quad
    from scipy.optimize import brentq

    q = min(n, m) / max(n, m)
    lo, hi = (1 - math.sqrt(q)) ** 2, (1 + math.sqrt(q)) ** 2
    if n == m:  # density sqrt(4 - u^2)/pi on [0, 2]
        def cdf(u):
            return (u * math.sqrt(4 - u * u) / 2 + 2 * math.asin(u / 2)) / math.pi
        lo_u, hi_u, root = 0.0, 2.0, lambda u: u
    else:  # the (lambda - lo)^(1/2) factor as quad's algebraic weight
        def cdf(x):
            return quad(lambda t: math.sqrt(hi - t) / (2 * math.pi * q * t), lo, x,
                        weight="alg", wvar=(0.5, 0.0), epsabs=1e-14)[0]
        lo_u, hi_u, root = lo, hi, math.sqrt
    s = torch.tensor([root(brentq(lambda v, p=(i + 0.5) / k: cdf(v) - p, lo_u, hi_u,
                                  xtol=1e-15)) for i in range(k)], dtype=F64)
    return s / s.norm()


@pytest.mark.parametrize("n, m, k", [(50, 50, 9), (300, 100, 7), (100, 400, 6)])
def test_marchenko_pastur_quantiles_to_quadrature_accuracy(n, m, k):
    # the quantiles are interpolated between the theta grid's nodes, which makes them exact to
    # ~1e-10; the nodes alone (spacing ~8e-6) or a wrong density at lambda = 0 (the square
    # case) are off by ~1e-6..1e-5, inside the 5% of the sampled-matrix test above
    got = marchenko_pastur_singular_values(n, m, k=k)
    want = _mp_quantiles_by_quadrature(n, m, k)
    assert ((got - want).abs() / want).max().item() < 1e-9


def test_polar_rtol_boundary_counts_as_zero():
    # "singular values sigma_i <= rtol * sigma_1 count as zero": with rtol = 1 every one does,
    # sigma_1 included, whatever the rounding of the SVD; just below 1 only sigma_1 is kept
    M = planted(7, 5, torch.tensor([3.0, 2.0, 1.0], dtype=F64), seed=71)
    assert torch.equal(polar(M, rtol=1.0), torch.zeros_like(M))
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    torch.testing.assert_close(polar(M, rtol=0.9), torch.outer(U[:, 0], Vh[0]), atol=1e-12,
                               rtol=0)


@pytest.mark.parametrize("shape", [(40, 40), (64, 96), (96, 64)])
def test_default_takes_the_plain_path_up_to_aspect_1_5(shape):
    # gram=None uses the Gram path only when the aspect ratio *exceeds* 1.5 (square and 1.5
    # itself run the plain iteration); the two paths differ in the last bits in float32
    M = torch.randn(*shape, generator=gen(72))
    plain, fast = msign(M, gram=False), msign(M, gram=True)
    assert not torch.equal(plain, fast)
    assert torch.equal(msign(M), plain)


def test_fit_quintic_default_init_is_the_posts_start():
    # the documented start (kappa, x1, x2) = (1, 0.9, 1.1); the objective is not convex, and
    # from other starts L-BFGS lands elsewhere (or on the same row, rounded differently)
    x = marchenko_pastur_singular_values(1024, 1024, k=64)
    assert fit_quintic(x, steps=5) == fit_quintic(x, steps=5, init=(1.0, 0.9, 1.1))
    for bad in ((), (1.0, 0.9), (1.0, 0.9, 1.1, 1.0), 1.0, "abc", torch.tensor(1.0)):
        with pytest.raises(TypeError, match=r"init must be three numbers \(kappa, x1, x2\)"):
            fit_quintic(x, steps=5, init=bad)


def test_safety_factor_on_every_triple_but_the_last():
    # with_safety maps (a, b, c) -> (a/f, b/f^3, c/f^5) on all triples but the last (keep_last),
    # so Polar Express has the factor on its first 7 of 8 steps, the 7th included
    seq = ((2.0, -1.0, 0.5), (3.0, -2.0, 1.0), (1.875, -1.25, 0.375))
    assert with_safety(seq, 2.0) == ((1.0, -0.125, 0.015625), (1.5, -0.25, 0.03125), seq[2])
    assert with_safety(seq, 2.0, keep_last=False)[2] == (0.9375, -0.15625, 0.01171875)
    a, b, c = polar_express_coefficients(8)[6]
    assert ns_schedule("polar_express", 8)[6] == (a / 1.01, b / 1.01**3, c / 1.01**5)


def test_newton_schulz_map_of_an_empty_tensor_is_empty():
    # elementwise: an empty input gives an empty output of the same shape and dtype
    for x in (torch.empty(0, dtype=F64), torch.empty(3, 0)):
        y = newton_schulz_map(x, "jordan", 5)
        assert y.shape == x.shape and y.dtype == x.dtype


def test_overflow_underflow_rescaling_with_zero_entries():
    # a norm that overflows or underflows is recomputed after dividing by the *largest* entry;
    # a matrix with zero entries is rescaled like any other
    M = torch.randn(10, 6, generator=gen(73))
    M[::3, ::2] = 0
    ref = msign(M, 8, "polar_express")
    for scale in (1e30, 1e-30):
        torch.testing.assert_close(msign(M * scale, 8, "polar_express"), ref, atol=1e-5, rtol=0)


def test_polar_default_rtol_is_the_longer_side_times_eps():
    # default rtol = max(n, m) * eps, as torch.linalg.matrix_rank: on a 4 x 100 float64 matrix
    # a singular value 30 eps * sigma_1 counts as zero, one of 300 eps * sigma_1 does not
    eps = torch.finfo(F64).eps
    for s2, rank in ((30 * eps, 1), (300 * eps, 2)):
        M = planted(4, 100, torch.tensor([1.0, s2], dtype=F64), seed=74)
        assert abs(polar(M).norm().item() ** 2 - rank) < 1e-9
    # per matrix: batch dimensions do not enter it (30 eps > 8 eps is kept in each of 150)
    M = planted(4, 8, torch.tensor([1.0, 30 * eps], dtype=F64), seed=75).expand(150, 4, 8)
    assert torch.all((polar(M).norm(dim=(-2, -1)) ** 2 - 2).abs() < 1e-9)


def test_a_schedule_of_exactly_three_triples_is_three_steps():
    # three (a, b, c) triples are a 3-step schedule, not mistaken for one bare triple
    seq = ((3.0, -3.2, 1.2), (2.0, -1.5, 0.5), (1.875, -1.25, 0.375))
    assert ns_schedule(seq, 3) == seq
    assert ns_schedule([list(t) for t in seq], 4) == (*seq, seq[2])
    x = torch.tensor([0.2, 0.9], dtype=F64)
    y = x.clone()
    for a, b, c in seq:
        y = a * y + b * y**3 + c * y**5
    torch.testing.assert_close(newton_schulz_map(x, seq, 3), y, atol=1e-15, rtol=0)


# -- cases found by mutation testing (tools/mutate.py) --------------------------------------

def test_gram_path_dispatch_rule_on_each_device_type():
    # gram=None: aspect above 1.5; on a GPU also a short side of at least 2048 (the CUDA half
    # is checked here without a GPU, on the rule msign applies to X.device.type)
    from dlmath.msign import _gram_pays

    assert _gram_pays(100, 151, "cpu") and not _gram_pays(100, 150, "cpu")
    assert _gram_pays(2048, 3073, "cuda") and not _gram_pays(2047, 4096, "cuda")
    assert not _gram_pays(2048, 3072, "cuda")


class _Matmuls:
    """Counts the matrix products a call makes, with the shapes of their results."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = {torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm,
               torch.ops.aten.baddbmm}
        shapes = self.shapes = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func.overloadpacket in ops:
                    shapes.append(tuple(out.shape))
                return out

        self.mode = Mode()


@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (3, 6, 20), (3, 20, 6)])
@pytest.mark.parametrize("T", [1, 3, 5])
def test_matmul_count_and_sizes_of_both_paths(shape, T):
    # plain: 3 products a step (A = XX^T and two fused ones); Gram: A_1, then per step P, Q = PQ
    # (not at the first) and A = PAP (not at the last), and Q X at the end: 4T - 1. Every
    # product works on the short side: a tall matrix is transposed first
    M = torch.randn(*shape, generator=gen(70), dtype=F64)
    short = min(shape[-2:])
    for gram, count in ((False, 3 * T), (True, 4 * T - 1)):
        counter = _Matmuls()
        with counter.mode:
            msign(M, T, "jordan", gram=gram)
        assert len(counter.shapes) == count, (gram, counter.shapes)
        assert all(s[-2] == short for s in counter.shapes), counter.shapes


def test_polar_default_rtol_counts_the_longer_side():
    # default rtol = max(n, m) eps: on a 20 x 2 matrix with sigma = (1, 8 eps), 8 eps lies
    # below 20 eps (dropped: rank 1) but above 2 eps, the tolerance of the shorter side
    eps = torch.finfo(F64).eps
    M = planted(20, 2, torch.tensor([1.0, 8 * eps], dtype=F64), seed=71)
    s = torch.linalg.svdvals(M)
    assert 2 * eps < s[1] < 20 * eps
    for A in (M, M.T):
        Q = polar(A)
        assert torch.linalg.matrix_rank(Q).item() == 1
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        torch.testing.assert_close(Q, U[:, :1] @ Vh[:1], atol=1e-12, rtol=0)
    assert torch.linalg.matrix_rank(polar(M, rtol=2 * eps)).item() == 2
