"""Tests of the consistency-model section of dlmath.diffusion (chapter 29): the law of
u = x_1 - x_0 given x_t, the CT and CD fixed points, the exact consistency functions and
multistep sampling. Convention: x_0 is data, x_1 is noise (data_at=0)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial.hermite_e import hermegauss

from dlmath import diffusion as D

F64 = torch.float64
GAUSS = D.GaussianMixture([1.0], [1.0], [0.5])
TWO = D.GaussianMixture([0.5, 0.5], [-1.5, 1.5], [0.2, 0.2])
MIXED = D.GaussianMixture([0.3, 0.7], [-2.0, 1.0], [0.3, 0.6])
GRID = torch.linspace(-8, 8, 801, dtype=F64)


@pytest.fixture(autouse=True)
def _one_thread():
    # small tensors: a second thread only adds contention on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the reparametrisation (cm-prop-reparam) ------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.floats(-5, 5), st.floats(-5, 5), st.floats(1e-3, 1.0), st.floats(-20, 20))
def test_velocity_loss_is_a_denoising_loss(x0, x1, t, v):
    xt = (1 - t) * x0 + t * x1
    lhs = (v - (x1 - x0)) ** 2
    rhs = ((xt - t * v) - x0) ** 2 / t**2
    assert rhs == pytest.approx(lhs, rel=1e-9, abs=1e-9)


def test_denoiser_is_the_posterior_mean_and_the_identity_at_t0():
    x = torch.linspace(-4, 4, 41, dtype=F64)
    for t in (0.0, 0.2, 0.7, 1.0):
        den = x - t * D.linear_path_velocity(MIXED, x, t, data_at=0)
        post = MIXED.posterior(x, *D.path_coefficients(t, data_at=0)).data_mean
        assert torch.allclose(den, post, atol=1e-12)
    assert torch.equal(x - 0.0 * D.linear_path_velocity(MIXED, x, 0.0, data_at=0), x)


# -- the law of u given x_t ------------------------------------------------------------------

def test_velocity_posterior_mean_is_the_ideal_velocity():
    x = torch.linspace(-6, 6, 61, dtype=F64)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        post = D.velocity_posterior(MIXED, x, t)
        assert torch.allclose(post.mean, D.linear_path_velocity(MIXED, x, t, data_at=0),
                              atol=1e-12)
        assert torch.allclose(post.responsibilities.sum(-1), torch.ones_like(x), atol=1e-14)


@pytest.mark.parametrize("t", [0.3, 0.8])
def test_velocity_posterior_matches_monte_carlo_in_a_thin_slab(t):
    gen = torch.Generator().manual_seed(0)
    n = 2_000_000
    x0 = MIXED.sample(n, gen)
    x1 = torch.randn(n, generator=gen, dtype=F64)
    xt, u = (1 - t) * x0 + t * x1, x1 - x0
    for x in (-1.0, 0.5):
        sel = (xt - x).abs() < 0.01
        post = D.velocity_posterior(MIXED, torch.tensor([x], dtype=F64), t)
        se = u[sel].std().item() / math.sqrt(sel.sum().item())
        assert abs(u[sel].mean().item() - post.mean.item()) < 5 * se + 0.01
        assert u[sel].var().item() == pytest.approx(post.variance.item(), rel=0.05, abs=0.01)


def test_velocity_posterior_in_two_dimensions_matches_coordinatewise_1d():
    g2 = D.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.5])
    x = torch.tensor([[0.2, -0.3], [1.5, 2.0]], dtype=F64)
    post = D.velocity_posterior(g2, x, 0.4)
    assert post.means.shape == (2, 2, 2) and post.mean.shape == (2, 2)
    assert post.variance.shape == (2, 2) and (post.variance > 0).all()
    a, b = D.path_coefficients(0.4, data_at=0)
    p = g2.posterior(x, a, b)
    assert torch.allclose(post.mean, p.noise_mean - p.data_mean, atol=1e-12)


def test_velocity_posterior_keeps_dtype_and_shape():
    x = torch.zeros(3, 4, dtype=torch.float32)
    post = D.velocity_posterior(TWO, x, 0.5)
    assert post.mean.dtype == torch.float32 and post.mean.shape == (3, 4)
    assert post.responsibilities.shape == (3, 4, 2)


# -- fixed points (cm-thm-fixed-point, cm-cor-gaussian) --------------------------------------

def test_gaussian_ct_equals_cd_and_converges_at_rate_one_over_n():
    errs = []
    for n in (4, 16, 64):
        ct = D.consistency_fixed_point(GAUSS, n, GRID)
        cd = D.consistency_fixed_point(GAUSS, n, GRID, target="cd")
        assert ct.shape == (n + 1, GRID.numel())
        assert (ct - cd).abs().max().item() < 1e-11
        x = torch.linspace(-3, 3, 61, dtype=F64)   # affine tables: interpolation is exact
        exact = D.consistency_function_gaussian(1.0, 0.5, x, 1.0)
        errs.append((D.interp_table(GRID, ct[-1], x) - exact).abs().max().item())
    assert 3.5 < errs[0] / errs[1] < 4.5 and 3.5 < errs[1] / errs[2] < 4.5
    assert errs[0] == pytest.approx(0.478, abs=2e-3)


def test_cd_table_is_euler_composition():
    v = lambda x, t: D.linear_path_velocity(TWO, x, t, data_at=0)  # noqa: E731
    grid = torch.linspace(-8, 8, 2001, dtype=F64)
    x = torch.linspace(-3, 3, 25, dtype=F64)
    for n in (4, 8):
        cd = D.consistency_fixed_point(TWO, n, grid, target="cd")
        for k in (1, n):
            ts = [k / n - i / n for i in range(k + 1)]
            ref = D.euler(v, x, ts)
            assert (D.interp_table(grid, cd[k], x) - ref).abs().max().item() < 1e-3


def _brute_ct_step(gmm, prev, grid, x, tk, tp):
    """E[f_{k-1}(x_{t_{k-1}}) | x_{t_k} = x] by quadrature over x_0 (x_1 is then determined)."""
    x0 = torch.linspace(-6, 6, 24001, dtype=F64)
    x1 = (x[:, None] - (1 - tk) * x0) / tk
    w = torch.softmax(gmm.log_prob(x0) - 0.5 * x1**2, -1)
    return (w * D.interp_table(grid, prev, (1 - tp) * x0 + tp * x1)).sum(-1)


def test_ct_table_is_the_conditional_expectation_by_brute_force():
    grid = torch.linspace(-8, 8, 1601, dtype=F64)
    x = torch.linspace(-3, 3, 25, dtype=F64)
    for n in (4, 8):
        ct = D.consistency_fixed_point(TWO, n, grid)
        for k in (2, n // 2 + 1, n):
            brute = _brute_ct_step(TWO, ct[k - 1], grid, x, k / n, (k - 1) / n)
            assert (brute - D.interp_table(grid, ct[k], x)).abs().max().item() < 5e-5


def test_ct_stage_one_is_the_denoiser():
    # f_0 = id is affine, so stage 1 of CT is E[x - dt u | x] = E[x_0 | x_{t_1}]
    for n in (2, 10):
        ct = D.consistency_fixed_point(TWO, n, GRID)
        den = TWO.posterior(GRID, *D.path_coefficients(1 / n, data_at=0)).data_mean
        assert torch.allclose(ct[1], den, atol=1e-12)
        assert torch.equal(ct[0], GRID)


def test_two_modes_ct_lags_cd():
    xi, w = hermegauss(80)
    xi, w = torch.tensor(xi), torch.tensor(w / w.sum())
    grid = torch.linspace(-8, 8, 2001, dtype=F64)
    ref = D.consistency_function_1d(TWO, xi, 1.0)
    rms = {}
    for target in ("ct", "cd"):
        tab = D.consistency_fixed_point(TWO, 16, grid, target=target)
        rms[target] = math.sqrt((w * (D.interp_table(grid, tab[-1], xi) - ref) ** 2).sum())
    assert rms["cd"] == pytest.approx(0.0338, abs=2e-3)
    assert rms["ct"] > 5 * rms["cd"]


def test_jensen_gap_formula():
    mild = D.GaussianMixture([0.5, 0.5], [-1.0, 1.0], [0.5, 0.5])
    xi, w = (torch.tensor(a) for a in hermegauss(40))
    w = w / w.sum()
    x = torch.linspace(-3, 3, 61, dtype=F64)
    t, dt = 0.5, 0.02
    a, b = D.path_coefficients(t - dt, data_at=0)

    def g(y):
        return mild.posterior(y, a, b).data_mean

    post = D.velocity_posterior(mild, x, t)
    pts = x[:, None, None] - dt * (post.means[..., None] + post.variances.sqrt()[:, None] * xi)
    ct = ((g(pts) @ w) * post.responsibilities).sum(-1)
    y = (x - dt * post.mean).requires_grad_(True)
    gy = g(y)
    (d1,) = torch.autograd.grad(gy.sum(), y, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), y)
    pred = 0.5 * dt**2 * d2 * post.variance
    assert ((ct - gy.detach() - pred).abs().max() / pred.abs().max()).item() < 0.1


# -- the bound (cm-prop-bound, the erratum) --------------------------------------------------

def _folded(mean, sd):
    from scipy.stats import norm

    return sd * math.sqrt(2 / math.pi) * math.exp(-mean**2 / (2 * sd**2)) \
        + mean * (1 - 2 * norm.cdf(-mean / sd))


def test_telescoped_sum_stays_large_while_the_ct_loss_vanishes():
    mu, sigma = 1.0, 0.5
    grid3 = torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    losses = []
    for n in (4, 64):
        tab = D.consistency_fixed_point(GAUSS, n, grid3)
        alpha, beta = tab[:, 1].tolist(), ((tab[:, 2] - tab[:, 0]) / 2).tolist()
        total_abs = total_sq = 0.0
        for k in range(1, n + 1):
            tk, tk1 = k / n, (k - 1) / n
            c0 = beta[k] * (1 - tk) - beta[k - 1] * (1 - tk1)
            c1 = beta[k] * tk - beta[k - 1] * tk1
            mean = alpha[k] - alpha[k - 1] + c0 * mu
            assert abs(mean) < 1e-12          # the fixed point makes each increment mean-zero
            sd = math.hypot(c0 * sigma, c1)
            total_abs += _folded(mean, sd)
            total_sq += mean**2 + sd**2
        one_step = _folded(alpha[n] - mu, math.hypot(beta[n], sigma))
        assert total_abs > 0.5 and total_abs >= one_step >= sigma * math.sqrt(2 / math.pi)
        losses.append(total_sq / n)
    assert losses[1] < 3e-4 and losses[0] / losses[1] > 100     # O(1/n^2): 16^2 = 256
    assert one_step == pytest.approx(2 * sigma / math.sqrt(math.pi), abs=1e-2)


def test_folded_normal_formula_by_monte_carlo():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1_000_000, generator=gen, dtype=F64)
    for m, s in ((0.0, 1.0), (0.7, 0.3), (-2.0, 1.5)):
        assert (m + s * z).abs().mean().item() == pytest.approx(_folded(m, s), abs=5e-3)


def test_folded_normal_formula_is_scipys_foldnorm_mean():
    # the exact mean, from an independent implementation (the Monte Carlo above has 5e-3 slack)
    from scipy.stats import foldnorm

    for m, s in ((0.0, 1.0), (0.7, 0.3), (-2.0, 1.5), (0.5, 2.0), (3.0, 0.01)):
        assert _folded(m, s) == pytest.approx(foldnorm(abs(m) / s, scale=s).mean(), rel=1e-13)


# -- exact consistency functions and multistep sampling (cm-thm-multistep) -------------------

@settings(max_examples=40, deadline=None)
@given(st.floats(-3, 3), st.floats(0.1, 3), st.floats(0.0, 1.0))
def test_gaussian_closed_form_is_the_transport_map(mu, sigma, t):
    g = D.GaussianMixture([1.0], [mu], [sigma])
    x = torch.linspace(-10, 10, 41, dtype=F64)
    assert torch.allclose(D.consistency_function_gaussian(mu, sigma, x, t),
                          D.consistency_function_1d(g, x, t), atol=1e-9 * (1 + abs(mu) + sigma))


def test_transport_map_solves_the_ode():
    v = lambda x, t: D.linear_path_velocity(MIXED, x, t, data_at=0)  # noqa: E731
    x = torch.linspace(-3, 3, 7, dtype=F64)
    ode = D.flow_map(v, x, 0.8, 0.0, rtol=1e-9, atol=1e-9)
    assert (ode - D.consistency_function_1d(MIXED, x, 0.8)).abs().max().item() < 1e-5
    # identity at t = 0, increasing, and the far tails stay finite and ordered
    assert torch.allclose(D.consistency_function_1d(MIXED, x, 0.0), x, atol=1e-9)
    far = D.consistency_function_1d(MIXED, torch.linspace(-30, 30, 61, dtype=F64), 1.0)
    assert torch.isfinite(far).all() and (far[1:] > far[:-1]).all()


def test_multistep_with_the_exact_map_keeps_the_data_law():
    from scipy.stats import kstest, norm

    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(5000, generator=gen, dtype=F64)

    def cdf(x):
        return 0.5 * norm.cdf(x, -1.5, 0.2) + 0.5 * norm.cdf(x, 1.5, 0.2)

    f = lambda x, t: D.consistency_function_1d(TWO, x, t)  # noqa: E731
    for ts in ([1.0], [1.0, 0.5], [1.0, 0.75, 0.5, 0.25]):
        out = D.multistep_consistency_sample(f, x1, ts, generator=gen)
        assert kstest(out.numpy(), cdf).pvalue > 0.01
    # a biased map is caught by the same test
    ct = D.consistency_fixed_point(TWO, 8, GRID)
    assert kstest(D.interp_table(GRID, ct[-1], x1).numpy(), cdf).pvalue < 1e-6


def test_multistep_sampler_follows_the_recipe():
    calls = []

    def f(x, t):
        calls.append(t)
        return 0.5 * x

    x1 = torch.ones(4, dtype=F64)
    out = D.multistep_consistency_sample(f, x1, [1.0, 0.5],
                                         generator=torch.Generator().manual_seed(3))
    z = torch.randn(4, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert calls == [1.0, 0.5]
    assert torch.allclose(out, 0.5 * (0.5 * 0.5 * x1 + 0.5 * z))


# -- interpolation and edge cases ------------------------------------------------------------

def test_interp_table_is_exact_on_affine_tables_and_extrapolates_linearly():
    grid = torch.tensor([-1.0, 0.0, 2.0], dtype=F64)
    table = torch.stack([3 * grid + 1, -grid])
    x = torch.tensor([[-5.0, -1.0], [0.5, 10.0]], dtype=F64)
    out = D.interp_table(grid, table, x)
    assert out.shape == (2, 2, 2)
    assert torch.allclose(out[0], 3 * x + 1) and torch.allclose(out[1], -x)
    assert torch.allclose(D.interp_table(grid, grid ** 2, grid), grid ** 2)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: D.velocity_posterior("gmm", [0.0], 0.5), TypeError, "gmm"),
    (lambda: D.velocity_posterior(TWO, [0.0], 1.5), ValueError, "t"),
    (lambda: D.velocity_posterior(TWO, [float("nan")], 0.5), ValueError, "x"),
    (lambda: D.consistency_fixed_point(TWO, 0, GRID), ValueError, "n"),
    (lambda: D.consistency_fixed_point(TWO, 4, GRID, target="ode"), ValueError, "target"),
    (lambda: D.consistency_fixed_point(TWO, 4, GRID.flip(0)), ValueError, "grid"),
    (lambda: D.consistency_fixed_point(D.GaussianMixture([1.0], [[0.0, 1.0]], [1.0]), 4, GRID),
     ValueError, "1-D"),
    (lambda: D.interp_table(GRID, torch.zeros(5, dtype=F64), [0.0]), ValueError, "table"),
    (lambda: D.interp_table(GRID, GRID, [float("inf")]), ValueError, "x"),
    (lambda: D.consistency_function_gaussian(0.0, 0.0, [0.0], 0.5), ValueError, "sigma"),
    (lambda: D.consistency_function_1d(TWO, [0.0], -0.1), ValueError, "t"),
    (lambda: D.multistep_consistency_sample(lambda x, t: x, [0.0], [1.0, 1.0]), ValueError, "ts"),
    (lambda: D.multistep_consistency_sample(lambda x, t: x, [0.0], [1.0, 0.0]), ValueError, "ts"),
    (lambda: D.multistep_consistency_sample(lambda x, t: x, [0.0], []), ValueError, "ts"),
])
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_empty_inputs_keep_shape_and_dtype_and_endpoint_variances_are_exact():
    empty = torch.zeros(0, dtype=torch.float32)
    for out in (D.consistency_function_1d(TWO, empty, 0.5),
                D.consistency_function_gaussian(1.0, 0.5, empty, 0.5),
                D.multistep_consistency_sample(lambda x, t: x, empty, [1.0, 0.5])):
        assert out.shape == (0,) and out.dtype == torch.float32
    out = D.interp_table(GRID, GRID, empty)                     # documented: the table's dtype
    assert out.shape == (0,) and out.dtype == F64
    x = torch.linspace(-3, 3, 7, dtype=F64)
    # t = 0: x_t = x_0 is known, u = x_1 - x_0 has variance Var x_1 = 1
    assert torch.allclose(D.velocity_posterior(TWO, x, 0.0).variance, torch.ones(7, dtype=F64))
    # t = 1: x_t = x_1 says nothing about x_0, Var(u | x_1) = Var x_0 = 0.2^2 + 1.5^2
    assert torch.allclose(D.velocity_posterior(TWO, x, 1.0).variance,
                          torch.full((7,), 0.04 + 2.25, dtype=F64))
    # far tails of the transport map: f*(x, 1) ~ 1.5 + 0.2 x (the right mode's quantiles)
    far = D.consistency_function_1d(TWO, torch.tensor([1e3, -1e3], dtype=F64), 1.0)
    assert torch.allclose(far, torch.tensor([201.5, -201.5], dtype=F64), rtol=1e-3)


# -- session-19 third reading: exact identities instead of Monte Carlo tolerances -------------

@pytest.mark.parametrize("gmm,x", [
    (MIXED, torch.linspace(-4, 4, 17, dtype=F64)),
    (D.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.5]),
     torch.tensor([[0.2, -0.3], [1.5, 2.0], [-2.0, 0.1]], dtype=F64)),
])
def test_velocity_posterior_variance_is_the_data_posterior_variance_over_t_squared(gmm, x):
    # on one path u = (x_t - x_0) / t, so Var(u | x_t) = Var(x_0 | x_t) / t^2; in component j,
    # x_0 | x_t is N(mu_j + a s_j^2 / V_j (x - a mu_j), s_j^2 b^2 / V_j): an independent formula
    for t in (0.1, 0.35, 0.8, 1.0):
        a, b = D.path_coefficients(t, data_at=0)
        post = D.velocity_posterior(gmm, x, t)
        s2 = gmm.stds**2
        V = a * a * s2 + b * b
        assert torch.allclose(post.variances, s2 / V, rtol=1e-12, atol=0)   # v_j = s_j^2 / V_j
        pts = x[..., None] if gmm.scalar else x
        resid = pts[..., None, :] - a * gmm.means                              # (..., m, d)
        m0 = gmm.means + (a * s2 / V)[:, None] * resid
        v0 = (s2 * b * b / V)[:, None]
        r = gmm.posterior(x, a, b).responsibilities[..., None]
        mean0 = (r * m0).sum(-2)
        var0 = (r * (v0 + m0**2)).sum(-2) - mean0**2
        if gmm.scalar:
            var0 = var0[..., 0]
        assert torch.allclose(post.variance, var0 / t**2, rtol=1e-10, atol=1e-13)


def test_multistep_starts_at_the_first_time_given():
    # ts need not start at 1: the first call is f(x1, ts[0]), then re-noise at each later time
    calls = []

    def f(x, t):
        calls.append(t)
        return (1 + t) * x

    x1 = torch.tensor([1.0, -2.0], dtype=F64)
    out = D.multistep_consistency_sample(f, x1, [0.6, 0.2],
                                         generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert calls == [0.6, 0.2]
    assert torch.allclose(out, 1.2 * (0.8 * 1.6 * x1 + 0.2 * z), atol=1e-15, rtol=0)


def test_variances_stay_exact_for_wide_components_and_far_points():
    # v_j = 1 + s^2 - c^2 / V cancels for s = 1e8; the total variance cancels for x = 1e8
    wide = D.GaussianMixture([1.0], [0.0], [1e8])
    v = D.velocity_posterior(wide, torch.zeros(1, dtype=F64), 0.5).variances
    assert v.item() == pytest.approx(1e16 / (0.25e16 + 0.25), rel=1e-14)
    x = torch.tensor([1e3, 1e6, 1e8, -1e8], dtype=F64)
    var = D.velocity_posterior(TWO, x, 0.5).variance
    # far out one component holds all the mass: Var(u | x) = v_j = 0.04 / (0.25 * 0.04 + 0.25)
    assert torch.allclose(var, torch.full_like(x, 0.04 / 0.26), rtol=1e-12, atol=0)


@settings(max_examples=40, deadline=None)
@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(0.05, 3), st.floats(0.05, 3),
       st.floats(0.05, 0.95), st.floats(0.05, 1.0), st.floats(-6, 6))
def test_velocity_posterior_moments_from_the_data_posterior(m1, m2, s1, s2, w, t, x):
    # u = (x_t - x_0) / t on one path: E[u | x] = (x - E[x_0 | x]) / t, and the variances scale
    # by 1 / t^2; the data posterior comes from GaussianMixture.posterior and the formula above
    gmm = D.GaussianMixture([w, 1 - w], [m1, m2], [s1, s2])
    pts = torch.tensor([x], dtype=F64)
    post = D.velocity_posterior(gmm, pts, t)
    a, b = D.path_coefficients(t, data_at=0)
    data = gmm.posterior(pts, a, b)
    assert post.mean.item() == pytest.approx(((pts - data.data_mean) / t).item(), rel=1e-9,
                                             abs=1e-9)
    s2v = gmm.stds**2
    V = a * a * s2v + b * b
    m0 = gmm.means[:, 0] + a * s2v / V * (x - a * gmm.means[:, 0])
    r = data.responsibilities[0]
    var0 = (r * (s2v * b * b / V + (m0 - (r * m0).sum()) ** 2)).sum()
    assert post.variance.item() == pytest.approx(var0.item() / t**2, rel=1e-9, abs=1e-12)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

def test_interp_table_at_a_scalar_point():
    grid = torch.linspace(0.0, 1.0, 5, dtype=F64)
    y = D.interp_table(grid, 2 * grid, torch.tensor(0.3, dtype=F64))
    assert y.shape == () and abs(float(y) - 0.6) < 1e-15
    y2 = D.interp_table(grid, torch.stack([grid, 3 * grid]), torch.tensor(0.3, dtype=F64))
    assert y2.shape == (2,) and torch.allclose(y2, torch.tensor([0.3, 0.9], dtype=F64))


def test_multistep_consistency_sample_refuses_bad_ts_generator_and_f():
    x1 = torch.zeros(4, dtype=F64)

    def f(x, t):
        return (1 - t) * x

    with pytest.raises(TypeError, match="ts must be a sequence"):
        D.multistep_consistency_sample(f, x1, 0.5)
    with pytest.raises(TypeError, match="generator"):
        D.multistep_consistency_sample(f, x1, [1.0, 0.5], generator=7)
    with pytest.raises(ValueError,
                       match=r"f\(x, t\) must return a tensor of shape \(.*\), got float"):
        D.multistep_consistency_sample(lambda x, t: 0.0, x1, [1.0, 0.5])


# -- referee findings --------------------------------------------------------------------------

def test_consistency_1d_follows_the_ode_between_separated_modes():
    # between two narrow modes both CDFs equal 1/2 to float64 rounding: the map must still
    # follow the probability-flow ODE there, and be odd for a symmetric mixture
    g = D.GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.1, 0.1])
    x = torch.tensor([-0.7, -0.3, 0.0, 0.3, 0.7], dtype=F64)
    ref = torch.tensor([-0.8822, -0.5096, 0.0, 0.5096, 0.8822], dtype=F64)  # flow_map, 1e-9 tol
    assert torch.allclose(D.consistency_function_1d(g, x, 0.05), ref, atol=1e-4)
    for t in (0.05, 0.5, 1.0):
        assert float(D.consistency_function_1d(g, torch.tensor(0.0, dtype=F64), t)) == 0.0
        f = D.consistency_function_1d(g, torch.tensor([-1e-15, 1e-15], dtype=F64), t)
        assert float(f[0]) == -float(f[1]) and float(f[1]) > 0  # steep, odd, increasing
    with pytest.raises(ValueError, match="x is too large"):
        D.consistency_function_1d(g, torch.tensor([1e155], dtype=F64), 0.5)


def test_consistency_gaussian_rejects_non_finite_points():
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="x must be finite"):
            D.consistency_function_gaussian(0.0, 1.0, torch.tensor([0.0, bad]), 0.5)
