"""Tests of the signal-to-noise and upsample-guidance part of dlmath.diffusion (chapter 31)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import diffusion as D
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


def _cos_sched(T):
    return D.vp_from_abar(torch.cos(0.999 * 0.5 * math.pi * torch.arange(T + 1, dtype=F64) / T))


# --- SNR, the matched level, the cosine closed form ---------------------------------------


@SETTINGS
@given(st.floats(1e-6, math.pi / 2 - 1e-6), st.floats(1.0, 1e4))
def test_snr_matched_identities(theta, m):
    a, b = math.cos(theta), math.sin(theta)
    at, bt, rho = D.snr_matched(a, b, m)
    assert at.dtype == F64
    assert abs(float(at**2 + bt**2) - 1) < 1e-13
    assert abs(float(D.snr(at, bt) / (m * D.snr(a, b))) - 1) < 1e-12
    assert abs(float(rho) - math.sqrt(a * a + b * b / m)) < 1e-15


@SETTINGS
@given(st.floats(0.0, 1.0), st.floats(1.0, 1e3))
def test_tau_cosine_matches_snr(t, m):
    tau = float(D.tau_cosine(t, m))
    at, bt, _ = D.snr_matched(math.cos(0.5 * math.pi * t), math.sin(0.5 * math.pi * t), m)
    assert 0.0 <= tau <= t + 1e-15
    assert abs(math.cos(0.5 * math.pi * tau) - float(at)) < 1e-12
    assert abs(math.sin(0.5 * math.pi * tau) - float(bt)) < 1e-12


def test_tau_cosine_endpoints_and_shape():
    t = torch.tensor([[0.0, 1.0], [0.5, 0.25]], dtype=F64)
    tau = D.tau_cosine(t, 4)
    assert tau.shape == t.shape and float(tau[0, 0]) == 0 and abs(float(tau[0, 1]) - 1) < 1e-15
    assert torch.equal(D.tau_cosine(t, 1), t) or torch.allclose(D.tau_cosine(t, 1), t, atol=1e-15)


def test_snr_edges():
    assert math.isinf(float(D.snr(1.0, 0.0)))
    assert float(D.snr(0.0, 1.0)) == 0
    # signs do not matter (documented): the same SNR for (a, b), (-a, b), (a, -b)
    a, b = torch.tensor([0.6, 0.8], dtype=F64), torch.tensor([0.8, 0.6], dtype=F64)
    assert torch.equal(D.snr(-a, b), D.snr(a, b)) and torch.equal(D.snr(a, -b), D.snr(a, b))
    at, bt, rho = D.snr_matched(torch.tensor([1.0, 0.0], dtype=F64),
                                torch.tensor([0.0, 1.0], dtype=F64), 4)
    assert at.tolist() == [1.0, 0.0] and bt.tolist() == [0.0, 1.0] and rho.tolist() == [1.0, 0.5]


def test_snr_float32_kept():
    at, _, _ = D.snr_matched(torch.tensor(0.6), torch.tensor(0.8), 4)
    assert at.dtype == torch.float32


def test_bad_input():
    with pytest.raises(ValueError, match="m"):
        D.snr_matched(0.6, 0.8, 0.5)
    with pytest.raises(ValueError, match="abar"):
        D.snr_matched(float("nan"), 0.8, 4)
    with pytest.raises(TypeError, match="bbar"):
        D.snr(0.6, "x")
    with pytest.raises(ValueError, match="t must lie"):
        D.tau_cosine(1.5, 4)
    with pytest.raises(ValueError, match="multiple"):
        D.avg_pool_matrix(5, 2)
    with pytest.raises(ValueError, match="kernel"):
        D.torus_conv_matrix(torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="symmetric"):
        D.GaussianEpsPredictor(torch.zeros(2, dtype=F64), torch.tensor([[1.0, 0.5], [0.0, 1.0]],
                                                                       dtype=F64))
    with pytest.raises(ValueError, match="semidefinite"):
        D.GaussianEpsPredictor(torch.zeros(2, dtype=F64), -torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="abar"):
        D.vp_from_abar(torch.tensor([1.0, 0.5, 0.6], dtype=F64))
    with pytest.raises(ValueError, match="alpha"):
        one, zero = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)
        bad = D.VPSchedule(torch.cat([one, zero]), torch.cat([zero, one]),
                           torch.cat([one, zero]), torch.cat([zero, one]))
        D.ddpm_eps_moments(lambda t: None, bad, torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    Dm, Um = D.avg_pool_matrix(4, 2), D.nearest_upsample_matrix(4, 2)
    with pytest.raises(ValueError, match="pool"):
        D.ug_eps(torch.zeros(1, 16, dtype=F64), lambda x: x, lambda y, a, b: y, Dm, Um.T, 0.6, 0.8)
    sched, zero = _cos_sched(2), (torch.zeros(2, 2, dtype=F64), torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="mean must be finite"):
        D.ddpm_eps_moments(lambda t: zero, sched, torch.tensor([math.nan, 0.0], dtype=F64),
                           torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match=r"need mean \(d,\) and cov \(d, d\)"):
        D.ddpm_eps_moments(lambda t: zero, sched, torch.zeros(2, dtype=F64),
                           torch.eye(3, dtype=F64))


def test_pooled_noise_variance_monte_carlo():
    Dm = D.avg_pool_matrix(8, 2)
    eps = torch.randn(2500, 64, generator=_gen(0), dtype=F64)
    var = float((eps @ Dm.T).var())
    assert abs(4 * var - 1) < 0.03


# --- operators --------------------------------------------------------------------------


@pytest.mark.parametrize("n,s,dim", [(8, 2, 2), (12, 3, 2), (8, 4, 1), (4, 2, 3), (6, 1, 2)])
def test_operator_identities(n, s, dim):
    Dm, Um = D.avg_pool_matrix(n, s, dim), D.nearest_upsample_matrix(n, s, dim)
    nl = (n // s) ** dim
    P = Um @ Dm
    assert Dm.shape == (nl, n**dim) and Um.shape == (n**dim, nl)
    assert torch.allclose(Dm @ Um, torch.eye(nl, dtype=F64), atol=1e-15)
    assert torch.allclose(P @ P, P, atol=1e-15) and torch.equal(P, P.T)
    assert torch.allclose(Dm @ Dm.T, torch.eye(nl, dtype=F64) / s**dim, atol=1e-15)


def test_pool_matches_torch_avg_pool():
    x = torch.randn(2, 8, 8, generator=_gen(1), dtype=F64)
    ref = torch.nn.functional.avg_pool2d(x[:, None], 2)[:, 0].reshape(2, -1)
    got = x.reshape(2, -1) @ D.avg_pool_matrix(8, 2).T
    assert torch.allclose(got, ref, atol=1e-15)
    up = ref @ D.nearest_upsample_matrix(8, 2).T
    ref_up = torch.nn.functional.interpolate(ref.reshape(2, 1, 4, 4), scale_factor=2,
                                             mode="nearest").reshape(2, -1)
    assert torch.equal(up, ref_up)


def test_torus_conv_matches_fft():
    k = torch.randn(5, 6, generator=_gen(2), dtype=F64)
    x = torch.randn(5, 6, generator=_gen(3), dtype=F64)
    ref = torch.fft.ifft2(torch.fft.fft2(k) * torch.fft.fft2(x)).real
    assert torch.allclose(D.torus_conv_matrix(k) @ x.reshape(-1), ref.reshape(-1), atol=1e-12)


def test_torus_covariance_spectrum():
    n = 6
    C = D.torus_covariance(n, lambda f2: 1.0 / (f2 + 1.0))
    f = np.fft.fftfreq(n, 1.0 / n)
    spec = np.sort((1.0 / (f[:, None] ** 2 + f[None, :] ** 2 + 1)).ravel())
    assert torch.allclose(C, C.T, atol=1e-15)
    assert np.allclose(np.sort(np.linalg.eigvalsh(C.numpy())), spec, atol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        D.torus_covariance(4, lambda f2: f2 - 1.0)


# --- the Gaussian predictor and the main term ---------------------------------------------


def test_gaussian_eps_predictor_matches_solve():
    g = _gen(4)
    A = torch.randn(10, 10, generator=g, dtype=F64)
    Sig, mu = A @ A.T / 10, torch.randn(10, generator=g, dtype=F64)
    x = torch.randn(3, 10, generator=g, dtype=F64)
    a, b = 0.7, math.sqrt(1 - 0.49)
    ref = b * torch.linalg.solve(a * a * Sig + b * b * torch.eye(10, dtype=F64), (x - a * mu).T).T
    assert torch.allclose(D.GaussianEpsPredictor(mu, Sig)(x, a, b), ref, atol=1e-12)
    # rank-deficient covariance (zero data variance) is fine: eps = (x - a mu) / b
    z = D.GaussianEpsPredictor(mu, torch.zeros(10, 10, dtype=F64))(x, a, b)
    assert torch.allclose(z, (x - a * mu) / b, atol=1e-14)


@pytest.mark.parametrize("dim,s", [(2, 2), (1, 2), (1, 3), (3, 2)])
def test_main_term_exact_when_P_commutes(dim, s):
    n = {1: 12, 2: 4, 3: 4}[dim]
    Dm = D.avg_pool_matrix(n, s, dim)
    N, m = Dm.shape[1], s**dim
    g = _gen(5)
    mu, x = torch.randn(N, generator=g, dtype=F64), torch.randn(4, N, generator=g, dtype=F64)
    # a covariance that commutes with P: block-constant part plus a multiple of I
    Um = D.nearest_upsample_matrix(n, s, dim)
    B = torch.randn(Dm.shape[0], Dm.shape[0], generator=g, dtype=F64)
    Sig = Um @ (B @ B.T) @ Um.T / N + 0.3 * torch.eye(N, dtype=F64)
    hi = D.GaussianEpsPredictor(mu, Sig)
    lo = D.GaussianEpsPredictor(Dm @ mu, Dm @ Sig @ Dm.T)
    for a in (0.95, 0.6, 0.1):
        b = math.sqrt(1 - a * a)
        at, bt, rho = (float(v) for v in D.snr_matched(a, b, m))
        lhs = hi(x, a, b) @ Dm.T
        rhs = lo(x @ Dm.T / rho, at, bt) / math.sqrt(m)
        assert torch.allclose(lhs, rhs, atol=1e-12)
        # the 2-D formulas (s^2, 1/s) are wrong unless m = s^2
        if dim != 2:
            at2, bt2, rho2 = (float(v) for v in D.snr_matched(a, b, s * s))
            assert not torch.allclose(lhs, lo(x @ Dm.T / rho2, at2, bt2) / s, atol=1e-3)


def test_main_term_not_exact_for_correlated_data():
    n, s = 8, 2
    Dm = D.avg_pool_matrix(n, s)
    Sig = D.torus_covariance(n, lambda f2: 1.0 / (f2 + 1.0))
    mu = torch.zeros(n * n, dtype=F64)
    x = torch.randn(4, n * n, generator=_gen(6), dtype=F64)
    hi, lo = D.GaussianEpsPredictor(mu, Sig), D.GaussianEpsPredictor(Dm @ mu, Dm @ Sig @ Dm.T)
    a, b = math.cos(0.05 * math.pi), math.sin(0.05 * math.pi)
    at, bt, rho = (float(v) for v in D.snr_matched(a, b, 4))
    lhs, rhs = hi(x, a, b) @ Dm.T, lo(x @ Dm.T / rho, at, bt) / 2
    assert float((lhs - rhs).norm() / lhs.norm()) > 0.05


# --- guidance, affine coefficients, moments, consistency -------------------------------------


@SETTINGS
@given(st.integers(0, 2**31), st.floats(-1.0, 2.0))
def test_ug_eps_rewrite(seed, w):
    g = _gen(seed)
    Dm, Um = D.avg_pool_matrix(4, 2), D.nearest_upsample_matrix(4, 2)
    Wn, Wl = torch.randn(16, 16, generator=g, dtype=F64), torch.randn(4, 4, generator=g, dtype=F64)
    x = torch.randn(3, 16, generator=g, dtype=F64)
    naive = lambda y: torch.tanh(y @ Wn.T)  # noqa: E731 (UG needs no linearity)
    low = lambda y, a, b: torch.sin(a * (y @ Wl.T)) + b  # noqa: E731
    at, bt, rho = (float(v) for v in D.snr_matched(0.6, 0.8, 4))
    approx = low(x @ Dm.T / rho, at, bt) @ Um.T / 2 + naive(x) - naive(x) @ (Um @ Dm).T
    ref = (1 + w) * approx - w * naive(x)
    got = D.ug_eps(x, naive, low, Dm, Um, 0.6, 0.8, w)
    assert torch.allclose(got, ref, atol=1e-12)
    assert torch.allclose(D.ug_eps(x, naive, low, Dm, Um, 0.6, 0.8, -1.0), naive(x), atol=1e-14)


def test_affine_coefficients():
    g = _gen(7)
    M, b = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    M2, b2 = D.affine_coefficients(lambda x: x @ M.T + b, 5)
    assert torch.allclose(M2, M, atol=1e-15) and torch.allclose(b2, b, atol=1e-15)


def test_vp_from_abar_matches_vp_schedule():
    ref = D.vp_schedule(20)
    ab = ref.abar.clone()
    ab[-1] = 1e-3  # vp_from_abar needs abar_T > 0
    s = D.vp_from_abar(ab)
    for name in ("alpha", "beta", "abar", "bbar"):
        assert torch.allclose(getattr(s, name)[:-1], getattr(ref, name)[:-1], atol=1e-14), name
    assert torch.allclose(s.alpha[1:] ** 2 + s.beta[1:] ** 2, torch.ones(20, dtype=F64),
                          atol=1e-14)


def test_moments_match_monte_carlo_and_exact_prior():
    # with the exact predictor of N(mu, diag v) data and many steps, the output law is close
    # to the data; and the propagated moments agree with a Monte Carlo run of the same sampler
    T, d = 40, 3
    sched = _cos_sched(T)
    mu, v = torch.tensor([1.0, -0.5, 0.0], dtype=F64), torch.tensor([0.3, 1.0, 2.0], dtype=F64)
    pred = D.GaussianEpsPredictor(mu, torch.diag(v))
    ops = lambda t: pred.affine(float(sched.abar[t]), float(sched.bbar[t]))  # noqa: E731
    mean, cov = D.ddpm_eps_moments(ops, sched, torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64))
    g = _gen(8)
    x = torch.randn(20000, d, generator=g, dtype=F64)
    _, _, sig = D.ddpm_posterior_coefficients(sched)
    for t in range(T, 0, -1):
        M, b = ops(t)
        k = float(sched.beta[t] ** 2 / sched.bbar[t])
        x = (x - k * (x @ M.T + b)) / float(sched.alpha[t])
        x = x + float(sig[t]) * torch.randn(x.shape, generator=g, dtype=F64)
    assert torch.allclose(x.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06)
    # T = 40 steps leave a discretisation bias of about 10% in the variance
    assert torch.allclose(mean, mu, atol=0.05) and torch.allclose(torch.diag(cov), v, rtol=0.15)


@pytest.mark.parametrize("w,same", [(0.0, True), (0.3, False)])
def test_consistency_theorem(w, same):
    n, s, T = 8, 2, 12
    m = s * s
    sched = _cos_sched(T)
    Dm, Um = D.avg_pool_matrix(n, s), D.nearest_upsample_matrix(n, s)
    N, nl = n * n, (n // s) ** 2
    g = _gen(9)
    B = torch.randn(nl, nl, generator=g, dtype=F64)
    lo = D.GaussianEpsPredictor(torch.randn(nl, generator=g, dtype=F64), B @ B.T / nl)
    junk = [(torch.randn(N, N, generator=g, dtype=F64) * 0.5 / math.sqrt(N),
             torch.randn(N, generator=g, dtype=F64)) for _ in range(T + 1)]
    AB = list(zip(sched.abar.tolist(), sched.bbar.tolist(), strict=True))

    def ug(t):
        Mj, bj = junk[t]
        return D.affine_coefficients(
            lambda x: D.ug_eps(x, lambda y: y @ Mj.T + bj, lo, Dm, Um, *AB[t], w), N)

    def chain(t):
        at, bt, rho = (float(v) for v in D.snr_matched(*AB[t], m))
        M, b = lo.affine(at, bt)
        return M / (rho * math.sqrt(m)), b / math.sqrt(m)

    mh, Ch = D.ddpm_eps_moments(ug, sched, torch.zeros(N, dtype=F64), torch.eye(N, dtype=F64))
    ml, Cl = D.ddpm_eps_moments(chain, sched, torch.zeros(nl, dtype=F64),
                                torch.eye(nl, dtype=F64) / m, noise_scale=1 / math.sqrt(m))
    gap = max(float((Dm @ mh - ml).abs().max()), float((Dm @ Ch @ Dm.T - Cl).abs().max()))
    assert (gap < 1e-9) if same else (gap > 1e-3)


def test_moments_with_a_nonsymmetric_predictor_match_the_unrolled_sampler():
    # the output is x_0 = A x_T + const + sum_t G_t z_t; build A and the G_t by unrolling the
    # steps (a non-symmetric M_t, a non-identity start covariance and noise_scale != 1, so a
    # dropped transpose or a misplaced noise scale shows)
    T, d, c = 6, 4, 0.7
    sched = _cos_sched(T)
    g = _gen(40)
    ops_list = [None] + [(torch.randn(d, d, generator=g, dtype=F64) * 0.4,
                          torch.randn(d, generator=g, dtype=F64)) for _ in range(T)]
    m0 = torch.randn(d, generator=g, dtype=F64)
    B = torch.randn(d, d, generator=g, dtype=F64)
    C0 = B @ B.T + 0.1 * torch.eye(d, dtype=F64)
    mean, cov = D.ddpm_eps_moments(lambda t: ops_list[t], sched, m0, C0, noise_scale=c)
    _, _, sig = D.ddpm_posterior_coefficients(sched)
    A_tot, const, G = torch.eye(d, dtype=F64), torch.zeros(d, dtype=F64), []
    for t in range(T, 0, -1):
        M, b = ops_list[t]
        k = float(sched.beta[t] ** 2 / sched.bbar[t])
        A = (torch.eye(d, dtype=F64) - k * M) / float(sched.alpha[t])
        A_tot, const = A @ A_tot, A @ const - k * b / float(sched.alpha[t])
        G = [A @ Gi for Gi in G] + [c * float(sig[t]) * torch.eye(d, dtype=F64)]
    ref_mean = A_tot @ m0 + const
    ref_cov = A_tot @ C0 @ A_tot.T + sum(Gi @ Gi.T for Gi in G)
    assert torch.allclose(mean, ref_mean, rtol=1e-12, atol=1e-12)
    assert torch.allclose(cov, ref_cov, rtol=1e-11, atol=1e-11)
    # and a Monte Carlo run of the sampler itself agrees
    x = m0 + torch.randn(40000, d, generator=g, dtype=F64) @ torch.linalg.cholesky(C0).T
    for t in range(T, 0, -1):
        M, b = ops_list[t]
        k = float(sched.beta[t] ** 2 / sched.bbar[t])
        x = (x - k * (x @ M.T + b)) / float(sched.alpha[t])
        x = x + c * float(sig[t]) * torch.randn(x.shape, generator=g, dtype=F64)
    scale = float(cov.diagonal().max().sqrt())
    assert torch.allclose(x.mean(0), mean, atol=0.03 * scale)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.05 * scale**2)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

def test_snr_refuses_zero_over_zero_and_snr_matched_off_the_unit_circle():
    with pytest.raises(ValueError, match="abar and bbar must not both be 0"):
        D.snr(torch.tensor([0.6, 0.0], dtype=F64), torch.tensor([0.8, 0.0], dtype=F64))
    for a, b in ((0.0, 0.0), (0.6, 0.6), (torch.zeros(3, dtype=F64), 0.5)):
        with pytest.raises(ValueError, match="abar\\*\\*2 \\+ bbar\\*\\*2 = 1"):
            D.snr_matched(a, b, 4)
    # float32 rounding of a point on the circle is accepted, also next to a float64 partner
    D.snr_matched(torch.tensor(0.6), torch.tensor(0.8), 4)
    D.snr_matched(torch.tensor(0.6), 0.8, 4)


def test_upsample_helpers_refuse_bad_callables_and_shapes():
    with pytest.raises(TypeError, match="spectrum"):
        D.torus_covariance(4, 3.0)
    with pytest.raises(TypeError, match="dtype"):
        D.torus_covariance(4, lambda f2: f2, dtype=torch.int64)
    Dm = D.avg_pool_matrix(4, 2)
    Um = 4 * Dm.T
    x = torch.randn(3, 16, dtype=F64, generator=_gen(0))
    naive, low = (lambda v: v), (lambda y, a, b: y)
    with pytest.raises(TypeError, match="eps_naive"):
        D.ug_eps(x, None, low, Dm, Um, 0.6, 0.8)
    with pytest.raises(TypeError, match="eps_low"):
        D.ug_eps(x, naive, "low", Dm, Um, 0.6, 0.8)
    with pytest.raises(ValueError, match="pool must be a matrix"):
        D.ug_eps(x, naive, low, Dm[None], Um, 0.6, 0.8)
    with pytest.raises(ValueError,
                       match=r"eps_naive\(x\) must return a tensor of shape \(.*\), got \("):
        D.ug_eps(x, lambda v: v[..., :3], low, Dm, Um, 0.6, 0.8)
    with pytest.raises(ValueError, match="eps_low"):
        D.ug_eps(x, naive, lambda y, a, b: y[..., :1], Dm, Um, 0.6, 0.8)
    ones = torch.ones(2, 5, dtype=F64)
    with pytest.raises(ValueError, match="pool must pool N = 5 pixels into n = 2"):
        D.ug_eps(torch.ones(3, 5, dtype=F64), naive, low, ones, ones.T, 0.6, 0.8)
    with pytest.raises(TypeError, match="f must be callable"):
        D.affine_coefficients(3, 2)
    for bad in (lambda y: y.sum(-1), lambda y: y[:2], lambda y: 1.0):
        with pytest.raises(ValueError, match="f must map"):
            D.affine_coefficients(bad, 3)


def test_ddpm_eps_moments_refuses_bad_predictors_and_covariances():
    sched = _cos_sched(5)
    m0, C0 = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    ok = (torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64))
    with pytest.raises(TypeError, match="eps_affine"):
        D.ddpm_eps_moments(ok, sched, m0, C0)
    for bad in (torch.eye(2, dtype=F64), (torch.eye(3, dtype=F64), torch.zeros(3, dtype=F64))):
        with pytest.raises(ValueError, match="eps_affine\\(t\\) must return \\(M, b\\)"):
            D.ddpm_eps_moments(lambda t, bad=bad: bad, sched, m0, C0)
    with pytest.raises(ValueError, match="cov must be symmetric"):
        D.ddpm_eps_moments(lambda t: ok, sched, m0, torch.tensor([[1.0, 0.5], [0.0, 1.0]],
                                                                  dtype=F64))


def test_snr_squares_in_the_wider_dtype():
    """A float16 bbar with a float64 abar: bbar**2 computed in float16 underflowed to 0 below
    bbar ~ 2.4e-4 and gave SNR = inf; promoted first, it is the float64 value."""
    bbar = torch.tensor([1e-4, 0.5]).half()
    got = D.snr(torch.tensor([1.0, 0.5], dtype=torch.float64), bbar)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, 1.0 / bbar.double() ** 2 * torch.tensor([1.0, 0.25],
                                                                             dtype=torch.float64))


# -- referee findings --------------------------------------------------------------------------

def test_tau_cosine_stays_in_unit_interval_in_every_dtype():
    for dt in (torch.float16, torch.bfloat16, torch.float32, F64):
        t = torch.tensor([0.0, 1.0], dtype=dt)
        tau = D.tau_cosine(t, 64)
        assert tau.dtype == dt and tau.tolist() == [0.0, 1.0]
        D.tau_cosine(tau, 64)  # its own output is a valid input


def test_pool_matrices_reject_integer_dtypes():
    for f in (D.avg_pool_matrix, D.nearest_upsample_matrix):
        with pytest.raises(TypeError, match="dtype must be a floating"):
            f(4, 2, 1, dtype=torch.int64)


def test_torus_covariance_in_half_precision():
    def spec(f2):
        return 1 / (1 + f2)

    ref = D.torus_covariance(4, spec)
    for dt in (torch.float16, torch.bfloat16):
        S = D.torus_covariance(4, spec, dtype=dt)
        assert S.dtype == dt and torch.allclose(S.double(), ref, atol=1e-2)
