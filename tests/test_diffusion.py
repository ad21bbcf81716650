"""Tests of dlmath.diffusion: Gaussian-mixture posteriors, linear-path velocities, ODE maps."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import diffusion as D

GMM = D.GaussianMixture([0.3, 0.7], [-2.0, 1.5], [0.3, 0.5])


def _quad_posterior(x: float, a: float, b: float):
    """E[data | x_t = x] and E[z | x_t = x] by brute-force quadrature of Bayes' rule."""
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    prior = GMM.log_prob(grid).exp()
    like = torch.exp(-0.5 * ((x - a * grid) / b) ** 2)
    w = prior * like
    data = (grid * w).sum() / w.sum()
    return data.item(), ((x - a * data) / b).item()


@pytest.mark.parametrize("x,a,b", [(0.3, 0.6, 0.8), (-2.5, 0.9, 0.2), (4.0, 0.1, 1.0)])
def test_posterior_matches_quadrature(x, a, b):
    post = GMM.posterior(torch.tensor([x], dtype=torch.float64), a, b)
    data, noise = _quad_posterior(x, a, b)
    assert post.data_mean.item() == pytest.approx(data, abs=1e-8)
    assert post.noise_mean.item() == pytest.approx(noise, abs=1e-8)
    assert post.responsibilities.sum().item() == pytest.approx(1.0, abs=1e-14)


@settings(max_examples=50, deadline=None)
@given(st.floats(-20, 20), st.floats(0.0, 1.0))
def test_posterior_means_reassemble_the_point(x, t):
    a, b = D.path_coefficients(t)
    post = GMM.posterior(torch.tensor([x], dtype=torch.float64), a, b)
    assert (a * post.data_mean + b * post.noise_mean).item() == pytest.approx(x, abs=1e-9)


def test_log_prob_is_a_normalised_density_on_every_path():
    grid = torch.linspace(-15, 15, 30_001, dtype=torch.float64)
    for a, b in [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (2.0, 0.3)]:
        mass = torch.trapezoid(GMM.log_prob(grid, a, b).exp(), grid).item()
        assert mass == pytest.approx(1.0, abs=1e-9)
    # a = 0: x_t is pure noise, whatever the data
    assert GMM.log_prob(torch.tensor([0.0], dtype=torch.float64), 0.0, 1.0).item() == pytest.approx(
        -0.5 * math.log(2 * math.pi), abs=1e-12)


def test_velocity_at_the_noise_end_points_to_the_data_mean():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    mean = GMM.mean().item()
    # data_at=1: at t=0, x_t is the noise, independent of the data: v* = E[x_1] - x
    assert torch.allclose(D.linear_path_velocity(GMM, x, 0.0, data_at=1), mean - x, atol=1e-12)
    # data_at=0: at t=1, x_t is the noise: v* = x - E[x_0]
    assert torch.allclose(D.linear_path_velocity(GMM, x, 1.0, data_at=0), x - mean, atol=1e-12)


def test_the_two_conventions_are_mirror_images():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        assert torch.allclose(D.linear_path_velocity(GMM, x, t, data_at=1),
                              -D.linear_path_velocity(GMM, x, 1 - t, data_at=0), atol=1e-12)


def test_flow_map_pushes_noise_onto_the_mixture():
    from scipy.stats import kstest

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3000, generator=gen, dtype=torch.float64)
    y = D.flow_map(lambda x, t: D.linear_path_velocity(GMM, x, t), z, 0.0, 1.0)

    def cdf(v):
        from scipy.stats import norm

        return 0.3 * norm.cdf(v, -2.0, 0.3) + 0.7 * norm.cdf(v, 1.5, 0.5)

    assert kstest(y.numpy(), cdf).pvalue > 0.01
    # the map is monotone in 1-D (paths of an ODE never cross)
    order = torch.argsort(z)
    assert (y[order].diff() > 0).all()


def test_flow_map_and_euler_on_a_linear_ode():
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    y = D.flow_map(lambda x, t: x, x, 0.0, 1.0)
    assert torch.allclose(y, x * math.e, rtol=1e-9)
    back = D.flow_map(lambda x, t: x, y, 1.0, 0.0)
    assert torch.allclose(back, x, rtol=1e-9)
    n = 1000
    e = D.euler(lambda x, t: x, x, [i / n for i in range(n + 1)])
    assert torch.allclose(e, x * (1 + 1 / n) ** n, rtol=1e-12)
    assert torch.equal(D.flow_map(lambda x, t: x, x, 0.3, 0.3), x)


def test_points_keep_dtype_and_shape():
    x32 = torch.zeros(4, 3, dtype=torch.float32)
    v = D.linear_path_velocity(GMM, x32, 0.5)
    assert v.shape == (4, 3) and v.dtype == torch.float32
    g2 = D.GaussianMixture([1, 1], [[1.0, 0.0], [-1.0, 0.0]], [0.5, 0.5])
    x = g2.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 2)
    assert g2.posterior(x, 0.5, 0.5).responsibilities.shape == (5, 2)
    assert GMM.sample(0).shape == (0,)


def test_two_dimensional_posterior_factorises_for_axis_aligned_modes():
    g2 = D.GaussianMixture([1.0], [[1.0, -1.0]], [0.5])
    x = torch.tensor([[0.2, 0.4]], dtype=torch.float64)
    g1 = D.GaussianMixture([1.0], [1.0], [0.5])
    post = g2.posterior(x, 0.7, 0.6)
    assert post.data_mean[0, 0].item() == pytest.approx(
        g1.posterior(x[:, 0], 0.7, 0.6).data_mean.item(), abs=1e-14)


def test_huge_points_do_not_overflow():
    post = GMM.posterior(torch.tensor([1e6, -1e6], dtype=torch.float64), 0.5, 0.5)
    assert torch.isfinite(post.data_mean).all()
    assert post.responsibilities[0].argmax().item() == 1  # far right: the right mode


def _mp_mixture(g, x, a, b):
    """Responsibilities and log-density of the noisy mixture at one point, in 60 digits."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    w, s = [mpmath.mpf(float(v)) for v in g.weights], [mpmath.mpf(float(v)) for v in g.stds]
    mu = [[mpmath.mpf(float(v)) for v in row] for row in g.means]
    logs = []
    for j in range(len(w)):
        V = a * a * s[j] ** 2 + b * b
        D2 = sum((mpmath.mpf(xi) - a * m) ** 2 for xi, m in zip(x, mu[j], strict=True)) / V
        logs.append(mpmath.log(w[j]) - g.dim * mpmath.log(2 * mpmath.pi * V) / 2 - D2 / 2)
    total = mpmath.log(sum(mpmath.exp(v) for v in logs))
    return [float(mpmath.exp(v - total)) for v in logs], float(total)


@pytest.mark.parametrize("g", [
    D.GaussianMixture([0.3, 0.5, 0.2], [-1.0, 0.5, 2.0], [0.4, 0.4, 0.9]),
    D.GaussianMixture([0.6, 0.4], [[0.0, 1.0], [2.0, -1.0]], [0.5, 0.5])])
def test_responsibilities_and_log_prob_match_60_digits(g):
    # Far from the modes |r_j|^2/V_j is large and nearly equal across components: their
    # difference, which sets the responsibilities, is formed without it (at x = 3e7 subtracting
    # the two squares put 0.006 on a responsibility).
    for x in (-3.0, 0.1, 1.7, 40.0, -1e3, 1e5, 3e7):
        pt = [x] if g.scalar else [x, -0.5 * x]
        for a, b in ((1.0, 0.0), (0.6, 0.8), (0.1, 0.99), (0.0, 1.0)):
            r, logp = _mp_mixture(g, pt, a, b)
            t = torch.tensor(pt if not g.scalar else pt[0], dtype=torch.float64)
            got = g.posterior(t, a, b).responsibilities
            assert torch.allclose(got, torch.tensor(r, dtype=torch.float64), rtol=0, atol=1e-14)
            assert g.log_prob(t, a, b).item() == pytest.approx(logp, rel=1e-14, abs=1e-14)


def test_points_whose_squares_overflow_keep_defined_posteriors():
    # |x|^2 = 1e310 overflows; the responsibilities depend only on x * (mu_2 - mu_1) = 10 here.
    g = D.GaussianMixture([0.5, 0.5], [0.0, 1e-154], [1.0, 1.0])
    post = g.posterior(torch.tensor([1e155], dtype=torch.float64), 1.0, 0.0)
    assert post.responsibilities[0, 1].item() == pytest.approx(1 / (1 + math.exp(-10)), rel=1e-14)
    assert g.log_prob(torch.tensor([1e155], dtype=torch.float64)).item() == -math.inf
    # Unequal widths: far out, all the mass is on the widest component, means stay finite.
    g3 = D.GaussianMixture([0.3, 0.5, 0.2], [-1.0, 0.5, 2.0], [0.4, 0.4, 0.9])
    x = torch.tensor([1e155, -1e155, 1e300], dtype=torch.float64)
    post = g3.posterior(x, 0.6, 0.8)
    assert torch.equal(post.responsibilities, torch.tensor([[0.0, 0.0, 1.0]] * 3,
                                                           dtype=torch.float64))
    assert torch.isfinite(post.data_mean).all() and torch.isfinite(post.noise_mean).all()
    assert torch.allclose(0.6 * post.data_mean + 0.8 * post.noise_mean, x, rtol=1e-14)
    vp = D.velocity_posterior(g3, x, 0.5)
    assert torch.isfinite(vp.responsibilities).all() and torch.isfinite(vp.means).all()


def test_w1_of_a_shift():
    x = torch.randn(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert D.w1_1d(x, x + 0.25) == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(weights=[1.0], means=[0.0], stds=[0.0]), ValueError, "stds"),
    (dict(weights=[-1.0, 2.0], means=[0.0, 1.0], stds=[1.0, 1.0]), ValueError, "weights"),
    (dict(weights=[1.0], means=[0.0, 1.0], stds=[1.0]), ValueError, "means"),
    (dict(weights=[1.0], means=[0.0], stds=[1.0, 2.0]), ValueError, "stds"),
    (dict(weights=[1.0], means=[float("nan")], stds=[1.0]), ValueError, "means"),
    (dict(weights=torch.tensor([1]), means=[0.0], stds=[1.0]), TypeError, "weights"),
])
def test_mixture_refuses_bad_parameters(kwargs, err, match):
    with pytest.raises(err, match=match):
        D.GaussianMixture(**kwargs)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="a and b"):
        GMM.posterior(torch.zeros(1), 0.0, 0.0)
    with pytest.raises(ValueError, match="x must be finite"):
        GMM.posterior(torch.tensor([float("inf")]), 0.5, 0.5)
    with pytest.raises(ValueError, match="t must be <= 1"):
        D.linear_path_velocity(GMM, torch.zeros(1), 1.5)
    with pytest.raises(ValueError, match="data_at"):
        D.linear_path_velocity(GMM, torch.zeros(1), 0.5, data_at=2)
    with pytest.raises(TypeError, match="gmm"):
        D.linear_path_velocity("gmm", torch.zeros(1), 0.5)
    with pytest.raises(ValueError, match="last dimension 2"):
        D.GaussianMixture([1.0], [[0.0, 0.0]], [1.0]).posterior(torch.zeros(3), 0.5, 0.5)
    with pytest.raises(ValueError, match="ts"):
        D.euler(lambda x, t: x, torch.zeros(1), [0.0])
    with pytest.raises(ValueError, match="y must be a 1-D"):
        D.w1_1d(torch.zeros(3), torch.zeros(3, 1))


# -- input validation and failure reporting across the chapters ------------------------------

def test_gaussian_mixture_repr_and_bad_weights():
    assert repr(GMM) == "GaussianMixture(m=2, dim=1)"
    assert repr(D.GaussianMixture([1.0], [[0.0, 1.0, 2.0]], [1.0])) == "GaussianMixture(m=1, dim=3)"
    with pytest.raises(ValueError, match=r"weights must be 1-D, got shape \(1, 2\)"):
        D.GaussianMixture([[0.5, 0.5]], [0.0, 1.0], [1.0, 1.0])


def test_flow_map_reports_a_failed_solve():
    # dx/dt = x^2 from x = 1 blows up at t = 1: the solver cannot reach t = 2
    with pytest.raises(RuntimeError, match="flow_map: the ODE solver failed"):
        D.flow_map(lambda x, t: x * x, torch.ones(1, dtype=torch.float64), 0.0, 2.0)


def test_functions_of_a_mixture_refuse_other_objects():
    with pytest.raises(TypeError, match="gmm must be a GaussianMixture, got dict"):
        D.shortcut_loss(D.ShortcutMLP(hidden=8, n_levels=2), {}, 4)
    with pytest.raises(TypeError, match="gmm must be a GaussianMixture, got list"):
        D.train_shortcut([0.5, 0.5], steps=0)
    with pytest.raises(TypeError, match="gmm must be a GaussianMixture, got str"):
        D.consistency_fixed_point("gmm", 2, torch.linspace(-1, 1, 5))
    with pytest.raises(TypeError, match="gmm must be a GaussianMixture, got NoneType"):
        D.consistency_function_1d(None, torch.zeros(3), 0.5)
    g2 = D.GaussianMixture([1.0], [[1.0, -1.0]], [0.5])
    with pytest.raises(ValueError, match="consistency_function_1d needs a 1-D mixture, got dim 2"):
        D.consistency_function_1d(g2, torch.zeros(3), 0.5)


def test_more_shape_and_type_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"variances must be 1-D, got shape \(2, 2\)"):
        D.gaussian_distortion_rate(torch.ones(2, 2), 1.0)
    with pytest.raises(TypeError, match="abar must be a real number or tensor, got bool"):
        D.snr(True, 0.5)
    with pytest.raises(TypeError, match="bbar must be a real number or tensor, got str"):
        D.snr(0.5, "half")
    for bad in (torch.tensor([0.9, 0.5]), torch.tensor([1.0]), torch.ones(2, 2)):
        with pytest.raises(ValueError, match=r"abar must be 1-D of length T\+1 >= 2 with "
                                             r"abar\[0\] == 1"):
            D.vp_from_abar(bad)
    with pytest.raises(ValueError, match=r"need mean \(d,\) and cov \(d, d\), got \(3,\) and "
                                         r"\(2, 2\)"):
        D.GaussianEpsPredictor(torch.zeros(3), torch.eye(2))


# -- independent cross-checks of the core (session-19 third reading) ---------------------------

def test_euler_evaluates_the_field_at_the_left_end_of_each_step():
    # dx/dt = t: a time-dependent field tells v(x, t_i) from v(x, t_{i+1}); the Euler sum is
    # x + sum_i (t_{i+1} - t_i) t_i = x + (n - 1) / (2 n) on the grid i / n (exact: x + 1/2)
    x = torch.tensor([0.0, -1.5], dtype=torch.float64)
    n = 8
    ts = [i / n for i in range(n + 1)]
    out = D.euler(lambda y, t: torch.full_like(y, t), x, ts)
    assert torch.allclose(out, x + (n - 1) / (2 * n), atol=1e-15, rtol=0)
    # backwards in time: steps of -1/n from t_i = 1 - i/n, sum -(1/n) sum_i (1 - i/n)
    back = D.euler(lambda y, t: torch.full_like(y, t), x, ts[::-1])
    assert torch.allclose(back, x - (n + 1) / (2 * n), atol=1e-15, rtol=0)


def test_samples_follow_the_mixture_law():
    from scipy.stats import kstest, norm

    y = GMM.sample(20_000, torch.Generator().manual_seed(7)).numpy()
    cdf = lambda v: 0.3 * norm.cdf(v, -2.0, 0.3) + 0.7 * norm.cdf(v, 1.5, 0.5)  # noqa: E731
    assert kstest(y, cdf).pvalue > 0.01
    # 2-D: each coordinate is a 1-D mixture with the same weights and stds
    g2 = D.GaussianMixture([0.25, 0.75], [[-1.0, 2.0], [1.0, 0.0]], [0.2, 0.7])
    x = g2.sample(20_000, torch.Generator().manual_seed(8)).numpy()
    for i, (m0, m1) in enumerate(((-1.0, 1.0), (2.0, 0.0))):
        cdf_i = lambda v: 0.25 * norm.cdf(v, m0, 0.2) + 0.75 * norm.cdf(v, m1, 0.7)  # noqa: B023, E731
        assert kstest(x[:, i], cdf_i).pvalue > 0.01


def test_log_prob_and_posterior_in_two_dimensions_match_scipy():
    # components of different widths in d = 2: the normalising constant carries the power d
    from scipy.stats import multivariate_normal as mvn

    w, mu, s = [0.25, 0.75], [[-1.0, 2.0], [1.0, 0.0]], [0.2, 0.7]
    g2 = D.GaussianMixture(w, mu, s)
    x = torch.tensor([[0.3, 0.4], [-1.0, 1.5], [2.0, -0.5]], dtype=torch.float64)
    for a, b in ((1.0, 0.0), (0.6, 0.8), (0.3, 1.7)):
        var = [a * a * si**2 + b * b for si in s]
        comp = torch.tensor([[math.log(wi) + mvn(a * torch.tensor(mi).numpy(), vi).logpdf(xx)
                              for wi, mi, vi in zip(w, mu, var, strict=True)]
                             for xx in x.numpy()], dtype=torch.float64)
        assert torch.allclose(g2.log_prob(x, a, b), torch.logsumexp(comp, -1), atol=1e-12)
        post = g2.posterior(x, a, b)
        assert torch.allclose(post.responsibilities, torch.softmax(comp, -1), atol=1e-12)


def test_parameters_given_as_python_numbers_are_read_in_float64():
    # torch.as_tensor([0.7]) is float32 (0.699999988...): the mixture must not inherit that
    g = D.GaussianMixture([0.3, 0.7], [0.3, -1.1], [0.7, 0.2])
    assert g.stds.tolist() == [0.7, 0.2] and g.means[:, 0].tolist() == [0.3, -1.1]
    assert g.weights.tolist() == [0.3, 0.7]
    # so a closed form written with the same numbers agrees to rounding, not to 1e-7
    single = D.GaussianMixture([1.0], [0.3], [0.7])
    x = torch.linspace(-10, 10, 41, dtype=torch.float64)
    assert torch.allclose(D.consistency_function_gaussian(0.3, 0.7, x, 0.5),
                          D.consistency_function_1d(single, x, 0.5), atol=1e-12, rtol=0)
    # booleans are still refused, not read as 0/1
    with pytest.raises(TypeError, match="weights"):
        D.GaussianMixture([True], [0.0], [1.0])


def test_functions_that_take_a_field_or_a_model_refuse_non_callables():
    x = torch.zeros(3, dtype=torch.float64)
    calls = [lambda: D.euler(None, x, [0.0, 1.0]),
             lambda: D.flow_map(1.0, x, 0.0, 1.0),
             lambda: D.average_velocity("v", x, 0.0, 0.5),
             lambda: D.shortcut_ideal(None, x, 0.0, 0, 2)]
    for call in calls:
        with pytest.raises(TypeError, match=r"v must be callable, got (NoneType|float|str)"):
            call()
    with pytest.raises(TypeError, match="s must be callable, got int"):
        D.shortcut_sample(3, x, 2)
    with pytest.raises(TypeError, match="f must be callable, got list"):
        D.multistep_consistency_sample([], x, [1.0])


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

def test_flow_map_checks_what_v_returns():
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    with pytest.raises(ValueError,
                       match=r"v\(x, t\) must return a tensor of shape \(5,\), got \(2,\)"):
        D.flow_map(lambda y, t: y[:2], x, 0.0, 1.0)
    with pytest.raises(ValueError, match="v\\(x, t\\) returned a non-finite velocity"):
        D.flow_map(lambda y, t: y * math.nan, x, 0.0, 1.0)   # used to hang the solver
