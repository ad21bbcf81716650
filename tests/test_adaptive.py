"""Tests of dlmath.adaptive: the runners against torch.optim.Adam, the Hessian heuristics
against exact formulas, the Adam-epsilon moments against scipy quadrature, the surge
condition as a property, and the documented edge cases and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import adaptive as ad
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


# -- runners --------------------------------------------------------------------------------

@pytest.mark.parametrize("betas, eps",
                         [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3), ((0.0, 0.99), 0.0)])
def test_adam_matches_torch_optim_adam(betas, eps):
    gen = generator(3, "cpu")
    A = torch.randn(6, 6, generator=gen, dtype=F64)
    H = A @ A.T / 6 + 0.1 * torch.eye(6, dtype=F64)
    theta0 = torch.randn(6, generator=gen, dtype=F64)
    noise = torch.randn(40, 6, generator=gen, dtype=F64)
    calls = iter(range(40))

    def grad(theta):
        return H @ theta + 0.3 * noise[next(calls)]

    ours = ad.adam_run(grad, theta0, lr=0.05, steps=40, betas=betas, eps=eps, record=True)
    p = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.Adam([p], lr=0.05, betas=betas, eps=eps)
    for t in range(40):
        p.grad = H @ p.detach() + 0.3 * noise[t]
        opt.step()
        torch.testing.assert_close(ours["trajectory"][t + 1], p.detach(), rtol=1e-12, atol=1e-14)
    state = opt.state[p]
    torch.testing.assert_close(ours["m"], state["exp_avg"], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours["v"], state["exp_avg_sq"], rtol=1e-12, atol=1e-15)


def test_adabelief_matches_a_direct_transcription_of_the_paper():
    g_seq = torch.randn(30, 4, generator=generator(1, "cpu"), dtype=F64)
    it = iter(g_seq)
    out = ad.adam_run(lambda th: next(it), torch.zeros(4, dtype=F64), lr=0.1, steps=30,
                      betas=(0.8, 0.95), eps=1e-6, centered=True)
    theta, m, s = torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64)
    for t, g in enumerate(g_seq, start=1):
        m = 0.8 * m + 0.2 * g
        s = 0.95 * s + 0.05 * (g - m) ** 2 + 1e-6
        theta = theta - 0.1 * (m / (1 - 0.8 ** t)) / (torch.sqrt(s / (1 - 0.95 ** t)) + 1e-6)
    torch.testing.assert_close(out["theta"], theta, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out["v"], s, rtol=1e-12, atol=1e-15)


def test_adam_bad_input():
    with pytest.raises(ValueError, match="betas\\[1\\]"):
        ad.adam_run(lambda t: t, torch.zeros(2), lr=0.1, steps=3, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="steps"):
        ad.adam_run(lambda t: t, torch.zeros(2), lr=0.1, steps=0)
    with pytest.raises(ValueError, match="shape"):
        ad.adam_run(lambda t: t[:1], torch.zeros(2), lr=0.1, steps=2)
    with pytest.raises(ValueError, match="NaN at step 1"):
        ad.adam_run(lambda t: t * math.nan, torch.zeros(2), lr=0.1, steps=2)
    with pytest.raises(TypeError, match="theta0"):
        ad.adam_run(lambda t: t, torch.zeros(2, dtype=torch.int64), lr=0.1, steps=2)


@SETTINGS
@given(st.floats(0.0, 0.999), st.floats(-5, 5), st.integers(1, 40))
def test_ema_bias_correction_reproduces_a_constant(beta, value, steps):
    x = torch.full((steps, 3), value, dtype=F64)
    corrected = ad.ema(x, beta)
    raw = ad.ema(x, beta, bias_correct=False)
    torch.testing.assert_close(corrected, x, rtol=1e-10, atol=1e-12)
    weights = 1 - beta ** torch.arange(1, steps + 1, dtype=F64)
    torch.testing.assert_close(raw, x * weights[:, None], rtol=1e-10, atol=1e-12)


def test_ema_is_a_weighted_average_and_keeps_dim():
    x = torch.randn(3, 50, generator=generator(0, "cpu"), dtype=F64)
    out = ad.ema(x, 0.9, dim=-1)
    w = 0.1 * 0.9 ** torch.arange(49, -1, -1, dtype=F64)
    torch.testing.assert_close(out[:, -1], (x * w).sum(-1) / (1 - 0.9 ** 50))
    with pytest.raises(ValueError, match="beta"):
        ad.ema(x, 1.0)
    with pytest.raises(ValueError, match="dim"):
        ad.ema(x, 0.5, dim=2)
    for bad in (None, 1.0):  # used to fail inside the range check or in movedim
        with pytest.raises(TypeError, match="dim must be an int"):
            ad.ema(x, 0.5, dim=bad)


# -- Hessian heuristics ---------------------------------------------------------------------

def test_random_spd_is_spd_with_the_requested_condition_number():
    H = ad.random_spd(7, cond=50.0, generator=generator(0, "cpu"))
    lam = torch.linalg.eigvalsh(H)
    assert torch.allclose(H, H.T)
    assert lam.min() > 0 and abs(lam.max() / lam.min() - 50.0) < 1e-9
    with pytest.raises(ValueError, match="cond"):
        ad.random_spd(3, cond=0.5)


def test_gauss_newton_equals_the_hessian_of_a_linear_least_squares():
    X = torch.randn(20, 3, 5, generator=generator(2, "cpu"), dtype=F64)   # n, k, d

    def loss(w):
        return 0.5 * ((X @ w) ** 2).sum(-1).mean()

    hess = torch.autograd.functional.hessian(loss, torch.zeros(5, dtype=F64))
    torch.testing.assert_close(ad.gauss_newton(X), hess)
    torch.testing.assert_close(ad.gauss_newton(X[:, 0]), X[:, 0].T @ X[:, 0] / 20)


@SETTINGS
@given(st.floats(0.01, 10), st.floats(0, 5), st.floats(0.01, 0.99))
def test_sgd_stationary_moments_are_a_fixed_point(h, c, frac):
    lr = frac * 2 / h
    var, g2 = ad.sgd_stationary_moments(torch.tensor([h], dtype=F64),
                                        torch.tensor([c], dtype=F64), lr)
    # one SGD step maps the stationary variance to itself
    torch.testing.assert_close((1 - lr * h) ** 2 * var + lr ** 2 * c, var, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g2, h * h * var + c, rtol=1e-10, atol=1e-14)


def test_sgd_stationary_bad_input():
    with pytest.raises(ValueError, match="lr \\* h"):
        ad.sgd_stationary_moments(torch.tensor([1.0]), torch.tensor([1.0]), 2.0)
    with pytest.raises(ValueError, match="h must be > 0"):
        ad.sgd_stationary_moments(torch.tensor([0.0]), torch.tensor([1.0]), 0.1)
    with pytest.raises(ValueError, match="c must be >= 0"):
        ad.sgd_stationary_moments(torch.tensor([1.0]), torch.tensor([-1.0]), 0.1)


def test_noisy_quadratic_sgd_matches_the_exact_moments():
    h = torch.tensor([0.2, 1.0, 5.0])
    c = torch.tensor([1.0, 0.5, 2.0])
    out = ad.noisy_quadratic(h, c, lr=0.05, steps=1500, burn_in=500, chains=1000,
                             generator=generator(0, "cpu"))
    var, g2 = ad.sgd_stationary_moments(h, c, 0.05)
    assert torch.allclose(out["var_delta"], var, rtol=0.05)
    assert torch.allclose(out["mean_sq_grad"], g2, rtol=0.05)
    again = ad.noisy_quadratic(h, c, lr=0.05, steps=1500, burn_in=500, chains=1000,
                               generator=generator(0, "cpu"))
    assert torch.equal(out["var_delta"], again["var_delta"])
    with pytest.raises(ValueError, match="method"):
        ad.noisy_quadratic(h, c, lr=0.05, steps=1, burn_in=0, chains=1, method="lion")


# -- Adam's epsilon: moments ----------------------------------------------------------------

def _quad_clip(a, b):
    from scipy.integrate import quad

    def phi(z):
        return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    def clip(x):
        return max(-1.0, min(1.0, x / b))

    pieces = [(a - 14, -b), (-b, b), (b, a + 14)]
    m1 = sum(quad(lambda x: clip(x) * phi(x - a), lo, hi, epsabs=1e-14)[0]
             for lo, hi in pieces if hi > lo)
    m2 = sum(quad(lambda x: clip(x) ** 2 * phi(x - a), lo, hi, epsabs=1e-14)[0]
             for lo, hi in pieces if hi > lo)
    return m1, m2


@pytest.mark.parametrize("b", [1e-9, 1e-3, 0.3, 0.99, 1.0, 1.01, 3.0, 30.0])
def test_clip_moments_match_quadrature(b):
    a = torch.linspace(-6, 6, 13, dtype=F64)
    m1, m2 = ad.clip_moments(a, torch.full_like(a, b))
    ref = torch.tensor([_quad_clip(float(x), b) for x in a], dtype=F64)
    torch.testing.assert_close(m1, ref[:, 0], rtol=0, atol=1e-11)
    torch.testing.assert_close(m2, ref[:, 1], rtol=0, atol=1e-11)


@pytest.mark.parametrize("b", [0.0, 1e-12, 1e-8, 1e-5, 0.02, 0.7, 4.0, 300.0])
def test_softsign_moments_sinh_matches_scipy_quad(b):
    a = torch.tensor([-30.0, -4.0, -0.5, 0.0, 1e-3, 0.8, 2.5, 9.0], dtype=F64)
    bt = torch.full_like(a, b)
    fast = ad.softsign_moments(a, bt)
    ref = ad.softsign_moments(a, bt, method="quad")
    for x, y in zip(fast, ref, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-11)


@SETTINGS
@given(st.floats(-8, 8), st.floats(0, 20))
def test_moment_shapes_odd_even_bounded(a, b):
    a_t = torch.tensor([a, -a], dtype=F64)
    b_t = torch.tensor([b, b], dtype=F64)
    for m1, m2 in (ad.clip_moments(a_t, b_t), ad.softsign_moments(a_t, b_t)):
        assert abs(m1[0] + m1[1]) < 1e-12 and abs(m2[0] - m2[1]) < 1e-12
        assert m1.abs().max() <= 1 + 1e-12 and 0 <= m2.min() and m2.max() <= 1 + 1e-12
        assert (m1 * m1 <= m2 + 1e-12).all()              # Jensen


@SETTINGS
@given(st.floats(0.05, 10))
def test_second_clip_moment_is_an_inverted_bell(b):
    a = torch.linspace(0, 8, 81, dtype=F64)
    _, m2 = ad.clip_moments(a, torch.full_like(a, b))
    assert (m2.diff() >= -1e-13).all() and m2[0] < 1


def test_moments_edge_cases():
    a = torch.tensor([-math.inf, 0.0, math.inf], dtype=F64)
    b = torch.zeros(3, dtype=F64)
    for fn in (ad.clip_moments, ad.softsign_moments):
        m1, m2 = fn(a, b)
        assert m1.tolist() == [-1.0, 0.0, 1.0] and m2.tolist() == [1.0, 1.0, 1.0]
    # huge b: clip is linear on the bulk, so E[c] = a/b and E[c^2] = (a^2 + 1)/b^2
    m1, m2 = ad.clip_moments(torch.tensor([0.3], dtype=F64), torch.tensor([1e6], dtype=F64))
    assert m1.item() == pytest.approx(3e-7, rel=1e-12) and m2.item() == pytest.approx(1.09e-12)
    assert ad.clip_moments(torch.tensor([0.3], dtype=torch.float32),
                           torch.tensor([2.0]))[0].dtype == torch.float32
    with pytest.raises(ValueError, match="b must be >= 0"):
        ad.clip_moments(torch.tensor([0.0]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="b must be finite"):
        ad.softsign_moments(torch.tensor([0.0]), torch.tensor([math.inf]))
    with pytest.raises(ValueError, match="a contains NaN"):
        ad.softsign_moments(torch.tensor([math.nan]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="method"):
        ad.softsign_moments(torch.tensor([0.0]), torch.tensor([1.0]), method="hermite")


def test_softsign_function():
    x = torch.tensor([-math.inf, -3.0, 0.0, 1e-300, 1e300, math.inf], dtype=F64)
    assert ad.softsign(x, 0.0).tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0, 1.0]
    assert abs(ad.softsign(torch.tensor([3.0], dtype=F64), 4.0).item() - 0.6) < 1e-15
    big = 1e8 * ad.softsign(torch.tensor([0.7], dtype=F64), 1e8)
    assert abs(big.item() - 0.7) < 1e-12
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ad.softsign(x, -1.0)


def test_noise_units_and_bad_input():
    a, b = ad.noise_units(torch.tensor([0.2]), 2.0, 16.0, 0.5)
    assert a.item() == pytest.approx(0.4) and b.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sigma"):
        ad.noise_units(torch.tensor([0.2]), 0.0, 16.0, 0.5)
    with pytest.raises(ValueError, match="batch"):
        ad.noise_units(torch.tensor([0.2]), 1.0, -1.0, 0.5)


# -- optimal learning rate and the surge ----------------------------------------------------

def test_eta_opt_minimises_the_expected_quadratic_loss():
    gen = generator(5, "cpu")
    H = ad.random_spd(4, cond=20.0, generator=gen)
    g = torch.randn(4, generator=gen, dtype=F64)
    m = torch.randn(4, generator=gen, dtype=F64) * 0.5
    s = m * m + torch.rand(4, generator=gen, dtype=F64)
    eta = ad.eta_opt(m, s, g, H).item()

    def expected_change(e):     # E[-e u.g + e^2/2 u'Hu], independent coordinates
        cov = torch.outer(m, m) + torch.diag(s - m * m)
        return -e * (m @ g) + 0.5 * e * e * torch.trace(cov @ H)

    assert expected_change(eta) < expected_change(eta * 1.01)
    assert expected_change(eta) < expected_change(eta * 0.99)


def test_eta_opt_sgd_is_eta_opt_with_gradient_moments():
    gen = generator(6, "cpu")
    H = ad.random_spd(5, generator=gen)
    g = torch.randn(5, generator=gen, dtype=F64)
    var = torch.rand(5, generator=gen, dtype=F64)
    for B in (1.0, 7.0, 1e4):
        direct = ad.eta_opt(g, g * g + var / B, g, H)
        torch.testing.assert_close(ad.eta_opt_sgd(g, H, var, B), direct)
        torch.testing.assert_close(ad.eta_opt_sgd(g, H, torch.diag(var), B), direct)


def test_eta_opt_sgd_batches_of_curvatures_and_covariances():
    """An (n, n) covariance is one matrix for every H of a batch, even a batch of n (it was read
    as n diagonals there); matrices and diagonals batch alongside H (n diagonals as diag_embed,
    three as (3, n)). Each against the unbatched call."""
    gen = generator(7, "cpu")
    n = 4
    Hs = torch.stack([ad.random_spd(n, generator=gen) for _ in range(n)])   # a batch of n
    g = torch.randn(n, generator=gen, dtype=F64)
    A = torch.randn(n, n, generator=gen, dtype=F64)
    cov, diags = A @ A.T, torch.rand(n, n, generator=gen, dtype=F64)
    covs = torch.stack([cov, 2 * cov, cov @ cov, torch.eye(n, dtype=F64)])
    for S, H, per in [(cov, Hs, lambda k: cov), (covs, Hs, lambda k: covs[k]),
                      (torch.diag_embed(diags), Hs, lambda k: diags[k]),
                      (torch.diag_embed(diags), Hs[0], lambda k: diags[k]),
                      (diags[:3], Hs[:3], lambda k: diags[k])]:
        got = ad.eta_opt_sgd(g, H, S, 3.0)
        want = torch.stack([ad.eta_opt_sgd(g, H[k] if H.ndim == 3 else H, per(k), 3.0)
                            for k in range(got.shape[0])])
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"the shapes of noise_var \(2,\) and H \(3,\) and g "
                                         r"\(\) do not broadcast"):
        ad.eta_opt_sgd(g, Hs[:3], torch.ones(2, n, dtype=F64), 3.0)


@SETTINGS
@given(st.floats(0.1, 50), st.floats(0.1, 10))
def test_surge_iff_C_greater_than_2D(C, D):
    beta = torch.linspace(1e-4, 1, 20001, dtype=F64)
    eta = beta / (D + beta ** 2 * (C - D))
    ratio = (eta.max() / eta[-1]).item()
    over = ad.surge_overshoot(torch.tensor(C, dtype=F64), torch.tensor(D, dtype=F64)).item()
    assert abs(ratio - over) < 1e-6 * over
    peak = ad.surge_peak_beta(torch.tensor(C, dtype=F64), torch.tensor(D, dtype=F64)).item()
    assert abs(beta[eta.argmax()].item() - peak) < 2e-4


def test_beta_batch_round_trip_and_meanfield_formula():
    B = torch.logspace(0, 5, 11, dtype=F64)
    beta = ad.beta_from_batch(B, 3.0)
    assert (beta.diff() > 0).all()
    torch.testing.assert_close(ad.batch_from_beta(beta, 3.0), B)
    g = torch.tensor([1.0, -0.5, 0.25], dtype=F64)
    H = torch.eye(3, dtype=F64) + 0.3
    u = torch.sign(g)
    eta = ad.eta_opt_meanfield(u, g, H, beta)
    direct = ad.eta_opt(u * beta[:, None], (u * u * beta[:, None] ** 2 + 1 - beta[:, None] ** 2),
                        g, H)
    torch.testing.assert_close(eta, direct)
    with pytest.raises(ValueError, match="beta"):
        ad.eta_opt_meanfield(u, g, H, 1.5)
    with pytest.raises(ValueError, match="H must be 3x3"):
        ad.eta_opt_meanfield(u, g, torch.eye(2, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="C and D"):
        ad.surge_overshoot(torch.tensor(-1.0), torch.tensor(1.0))


def test_clip_mean_is_differentiable_with_the_right_slope():
    b = torch.tensor([0.05, 0.5, 1.0, 2.0, 8.0], dtype=F64)
    a = torch.zeros_like(b, requires_grad=True)
    (slope,) = torch.autograd.grad(ad.clip_moments(a, b)[0].sum(), a)
    torch.testing.assert_close(slope, torch.erf(b / math.sqrt(2)) / b, rtol=1e-12, atol=0)
    a = torch.tensor([-1.3, 0.4, 2.2, 0.7, -0.2], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ad.clip_moments(x, b), (a,))


def test_python_scalars_keep_float64_precision():
    g = torch.tensor([0.3, -0.2], dtype=F64)
    H = torch.eye(2, dtype=F64)
    u = torch.sign(g)
    eta = ad.eta_opt_meanfield(u, g, H, 0.7)
    assert eta.dtype == F64
    assert eta.item() == pytest.approx(0.7 * 0.5 / (0.49 * 2 + 0.51 * 2), rel=1e-15)


def test_ema_from_the_first_value_against_a_loop():
    x = torch.randn(300, 4, generator=generator(1, "cpu"), dtype=F64)  # time first
    beta = 0.9
    m, out = x[0].clone(), []
    for t in range(300):
        m = beta * m + (1 - beta) * x[t]
        out.append(m)
    first = ad.ema(x, beta, bias_correct=False, init="first")
    torch.testing.assert_close(first, torch.stack(out))
    torch.testing.assert_close(ad.ema(x.T, beta, bias_correct=False, init="first", dim=-1),
                               torch.stack(out).T)
    const = torch.full((50, 3), 2.5, dtype=torch.float32)
    torch.testing.assert_close(ad.ema(const, 0.99, bias_correct=False, init="first"), const)
    with pytest.raises(ValueError, match="init='first' needs bias_correct=False"):
        ad.ema(x, beta, init="first")
    with pytest.raises(ValueError, match="init must be one of"):
        ad.ema(x, beta, init="last")


# -- coverage of the remaining branches -----------------------------------------------------

def test_s_curves_closed_forms_slope_and_limits():
    k = 2 / math.sqrt(math.pi)
    xs = [-1e300, -3.0, -0.4, 0.0, 1e-3, 0.7, 2.5, 1e300]
    x = torch.tensor(xs, dtype=F64)
    sq = ad.s_curve_sqrt(x, k)
    ref = [k * v / math.sqrt(1.0 + (k * v) ** 2) if abs(v) < 1e150 else math.copysign(1.0, v)
           for v in xs]
    torch.testing.assert_close(sq, torch.tensor(ref, dtype=F64), rtol=1e-15, atol=1e-15)
    clip = ad.s_curve_clip(x, k)
    assert clip.tolist() == [max(-1.0, min(1.0, k * v)) for v in xs]
    for fn in (ad.s_curve_sqrt, ad.s_curve_clip):          # slope k at 0, odd, range [-1, 1]
        z = torch.zeros((), dtype=F64, requires_grad=True)
        (slope,) = torch.autograd.grad(fn(z, 3.0), z)
        assert slope.item() == pytest.approx(3.0, rel=1e-15)
        assert torch.equal(fn(-x, k), -fn(x, k)) and fn(x, k).abs().max() <= 1
    dense = torch.linspace(-5, 5, 2001, dtype=F64)          # the erf approximation of the chapter
    assert (ad.s_curve_sqrt(dense, k) - torch.erf(dense)).abs().max() < 0.11
    assert ad.s_curve_sqrt(1.5, 2.0).dtype == torch.get_default_dtype()  # numbers are accepted
    for fn in (ad.s_curve_sqrt, ad.s_curve_clip):
        with pytest.raises(ValueError, match="k must be > 0"):
            fn(x, 0.0)


def test_softsign_moments_approx_formula_and_error():
    a = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=F64)
    b = torch.tensor([0.5, 2.0, 1.0, 0.0], dtype=F64)
    m1, m2 = ad.softsign_moments_approx(a, b)
    for i in range(4):
        q = a[i].item() ** 2 + b[i].item() ** 2 + math.pi / 2
        assert m1[i].item() == pytest.approx(a[i].item() / math.sqrt(q), rel=1e-15)
        assert m2[i].item() == pytest.approx(1 - b[i].item() ** 2 / q, rel=1e-15)
    # at b = 0 the mean is the sqrt S-curve of erf: E sign(a + z) = erf(a/sqrt 2)
    grid = torch.linspace(-6, 6, 121, dtype=F64)
    zero = torch.zeros_like(grid)
    torch.testing.assert_close(ad.softsign_moments_approx(grid, zero)[0],
                               ad.s_curve_sqrt(grid / math.sqrt(2), 2 / math.sqrt(math.pi)),
                               rtol=1e-14, atol=1e-15)
    for bb in (0.0, 0.3, 1.0, 3.0):                        # within 0.11 of the exact mean
        approx = ad.softsign_moments_approx(grid, torch.full_like(grid, bb))[0]
        exact = ad.softsign_moments(grid, torch.full_like(grid, bb))[0]
        assert (approx - exact).abs().max() < 0.11
    with pytest.raises(ValueError, match="b must be >= 0"):
        ad.softsign_moments_approx(a, -b - 1)


def test_noisy_quadratic_adam_matches_a_transcription_of_adam():
    h = torch.tensor([0.5, 2.0])
    c = torch.tensor([1.0, 0.25])
    lr, b1, b2, eps, chains, burn_in, steps = 0.05, 0.8, 0.9, 1e-8, 7, 2, 3
    out = ad.noisy_quadratic(h, c, lr=lr, steps=steps, burn_in=burn_in, chains=chains,
                             method="adam", betas=(b1, b2), eps=eps,
                             generator=generator(4, "cpu"))
    gen = generator(4, "cpu")                   # the same noise, Adam written out in float64
    hd, sd = h.double(), c.double().sqrt()
    delta = m = v = torch.zeros(chains, 2, dtype=F64)
    d2 = g2 = 0
    for t in range(1, burn_in + steps + 1):
        g = hd * delta + sd * torch.randn(chains, 2, generator=gen).double()
        if t > burn_in:
            d2, g2 = d2 + (delta ** 2).mean(0), g2 + (g ** 2).mean(0)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        delta = delta - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    torch.testing.assert_close(out["var_delta"].double(), d2 / steps, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out["mean_sq_grad"].double(), g2 / steps, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out["v_hat"].double(), (v / (1 - b2 ** 5)).mean(0),
                               rtol=1e-4, atol=1e-7)
    assert "v_hat" not in ad.noisy_quadratic(h, c, lr=lr, steps=1, burn_in=0, chains=1)


def test_noisy_quadratic_bad_input():
    with pytest.raises(ValueError, match="h and c must be vectors of the same length"):
        ad.noisy_quadratic(torch.ones(3), torch.ones(2), lr=0.1, steps=1, burn_in=0, chains=1)
    with pytest.raises(ValueError, match="h and c must be vectors"):
        ad.noisy_quadratic(torch.ones(2, 2), torch.ones(2, 2), lr=0.1, steps=1, burn_in=0,
                           chains=1)
    with pytest.raises(ValueError, match="h must be > 0"):
        ad.noisy_quadratic(torch.tensor([0.0, 1.0]), torch.ones(2), lr=0.1, steps=1, burn_in=0,
                           chains=1)
    with pytest.raises(ValueError, match="c must be >= 0"):
        ad.noisy_quadratic(torch.ones(2), torch.tensor([1.0, -1.0]), lr=0.1, steps=1, burn_in=0,
                           chains=1)


def test_more_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="betas must be a pair"):
        ad.adam_run(lambda th: th, torch.ones(2), lr=0.1, steps=1, betas=0.9)
    with pytest.raises(ValueError, match="jac must not be empty"):  # caught before the row check
        ad.gauss_newton(torch.ones(4, 0, 3))
    with pytest.raises(TypeError, match="sigma must be a number or a tensor, got str"):
        ad.noise_units(torch.tensor([0.2]), "two", 16.0, 0.5)
    g, H = torch.ones(3, dtype=F64), torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match="mean_u, second_u and g must have the same length"):
        ad.eta_opt(torch.ones(2, dtype=F64), torch.ones(3, dtype=F64), g, H)
    with pytest.raises(ValueError, match="batch must be > 0"):
        ad.eta_opt_sgd(g, H, torch.ones(3, dtype=F64), 0.0)
    with pytest.raises(ValueError, match=r"noise_var must be \(\.\.\., 3\) or \(\.\.\., 3, 3\) to "
                                         r"match g, got \(2,\)"):
        ad.eta_opt_sgd(g, H, torch.ones(2, dtype=F64), 4.0)
    with pytest.raises(ValueError, match="batch must be > 0"):
        ad.beta_from_batch(torch.tensor([1.0, 0.0]), 1.0)
    for beta in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"beta must be in \(0, 1\]"):
            ad.batch_from_beta(beta, 1.0)
    assert ad.batch_from_beta(1.0, 2.0).item() == math.inf   # the documented limit


# -- added by the second reading (review r1315) -------------------------------------------

@SETTINGS
@given(st.floats(0.0, 0.999), st.integers(1, 300))
def test_ema_weights_give_the_variance_formula_of_the_chapter(beta, t):
    # the bias-corrected EMA at step t is sum_k w_k x_k; feeding unit impulses reads off w_k,
    # and sum_k w_k^2 is the factor (1-b)/(1+b) (1-b^(2t))/(1-b^t)^2 of adahess-eq-emavar
    w = ad.ema(torch.eye(t, dtype=F64), beta)[-1]
    assert w.sum().item() == pytest.approx(1.0, rel=1e-12)
    factor = (1 - beta) / (1 + beta) * (1 - beta ** (2 * t)) / (1 - beta ** t) ** 2
    assert (w * w).sum().item() == pytest.approx(factor, rel=1e-9)


def test_softsign_moments_tiny_b_branch_is_the_first_order_expansion():
    # below SOFTSIGN_TINY the library switches to (erf(a/sqrt 2), 1 - pi b phi(a)); the dip
    # 1 - E[u^2] must be pi b phi(a) to first order, as the quadrature reference says, and
    # continue the sinh branch across the switch
    a = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0], dtype=F64)
    phi_a = torch.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    for b in (1e-10, 3e-9, 0.99 * ad.SOFTSIGN_TINY):
        m1, m2 = ad.softsign_moments(a, torch.full_like(a, b))
        # (1 - m2) carries a rounding error of ~1e-16, i.e. 1e-16 / b after the division
        torch.testing.assert_close((1 - m2) / b, math.pi * phi_a, rtol=1e-6, atol=3e-16 / b)
        torch.testing.assert_close(m1, torch.erf(a / math.sqrt(2)), rtol=0, atol=1e-14)
    _, q2 = ad.softsign_moments(a, torch.full_like(a, 3e-9), method="quad")
    torch.testing.assert_close((1 - q2) / 3e-9, math.pi * phi_a, rtol=1e-5, atol=1e-7)
    below = ad.softsign_moments(a, torch.full_like(a, 0.999 * ad.SOFTSIGN_TINY))[1]
    above = ad.softsign_moments(a, torch.full_like(a, 1.001 * ad.SOFTSIGN_TINY))[1]
    torch.testing.assert_close((1 - below) / 0.999, (1 - above) / 1.001, rtol=1e-4, atol=0)


def test_moments_keep_float32_and_its_accuracy():
    a = torch.tensor([-1.0, 0.2, 2.5])
    b = torch.tensor([0.05, 1.0, 4.0])
    for fn in (ad.clip_moments, ad.softsign_moments, ad.softsign_moments_approx):
        m32 = fn(a, b)
        m64 = fn(a.double(), b.double())
        for x, y in zip(m32, m64, strict=True):
            assert x.dtype == torch.float32
            torch.testing.assert_close(x.double(), y, rtol=0, atol=1e-5)


def test_adam_moments_with_lr_zero_and_float32():
    # lr = 0: theta stays, and m, v are the EMAs of the fed gradients (the chapter reads them so)
    g_seq = torch.randn(20, 3, generator=generator(2, "cpu"))
    it = iter(g_seq)
    out = ad.adam_run(lambda th: next(it), torch.ones(3), lr=0.0, steps=20, betas=(0.8, 0.9))
    assert out["theta"].dtype == torch.float32 and torch.equal(out["theta"], torch.ones(3))
    torch.testing.assert_close(out["v_hat"], ad.ema(g_seq ** 2, 0.9)[-1])
    torch.testing.assert_close(out["m"] / (1 - 0.8 ** 20), ad.ema(g_seq, 0.8)[-1])


def test_noisy_quadratic_refuses_a_diverging_sgd_and_bad_betas():
    h, c = torch.tensor([0.5, 10.0]), torch.ones(2)
    with pytest.raises(ValueError, match=r"lr \* h must be < 2"):
        ad.noisy_quadratic(h, c, lr=0.2, steps=1, burn_in=0, chains=1)
    # Adam is scale-free and has no such limit
    out = ad.noisy_quadratic(h, c, lr=0.2, steps=5, burn_in=0, chains=2, method="adam",
                             generator=generator(0, "cpu"))
    assert torch.isfinite(out["var_delta"]).all()
    with pytest.raises(TypeError, match="betas must be a pair"):
        ad.noisy_quadratic(h, c, lr=0.01, steps=1, burn_in=0, chains=1, betas=0.9)


def test_surge_functions_below_and_at_the_threshold():
    # D < C <= 2D: the post's C > D holds, yet there is no surge (adameps erratum)
    C = torch.tensor([1.2, 1.5, 2.0, 2.0 + 1e-9, 3.0], dtype=F64)
    D = torch.ones(5, dtype=F64)
    over = ad.surge_overshoot(C, D)
    peak = ad.surge_peak_beta(C, D)
    assert over[:3].tolist() == [1.0, 1.0, 1.0] and peak[:3].tolist() == [1.0, 1.0, 1.0]
    assert over[3].item() == pytest.approx(1.0, abs=1e-12) and peak[3].item() < 1
    assert over[4].item() == pytest.approx(3 / (2 * math.sqrt(2)), rel=1e-15)
    assert peak[4].item() == pytest.approx(math.sqrt(0.5), rel=1e-15)


# -- bad inputs and edge cases (tools/bad_inputs.py) -------------------------------------------

def test_adam_run_refuses_a_non_callable_and_an_infinite_gradient():
    with pytest.raises(TypeError, match="grad_fn"):
        ad.adam_run(3, torch.zeros(2), lr=0.1, steps=2)
    with pytest.raises(ValueError, match="grad_fn returned inf at step 1"):
        ad.adam_run(lambda t: t + math.inf, torch.zeros(2), lr=0.1, steps=2)


def test_noise_units_refuses_infinite_eps():
    with pytest.raises(ValueError, match="eps must be finite"):
        ad.noise_units(torch.ones(2, dtype=F64), 1.0, 4.0, math.inf)


def test_softsign_moments_approx_at_infinite_a():
    m1, m2 = ad.softsign_moments_approx(torch.tensor([math.inf, -math.inf, 0.0], dtype=F64), 2.0)
    assert m1.tolist() == [1.0, -1.0, 0.0]
    assert m2[:2].tolist() == [1.0, 1.0]


def test_batch_from_beta_needs_finite_positive_kappa2():
    for bad in (0.0, math.inf):
        with pytest.raises(ValueError, match="kappa2"):
            ad.batch_from_beta(torch.tensor([0.5, 1.0], dtype=F64), bad)


def test_eta_opt_without_curvature_is_infinite():
    g = torch.tensor([1.0, -2.0], dtype=F64)
    H = torch.zeros(2, 2, dtype=F64)
    u = torch.sign(g)
    assert ad.eta_opt(u, torch.ones(2, dtype=F64), g, H).item() == math.inf
    assert ad.eta_opt_sgd(g, H, torch.ones(2, dtype=F64), 4.0).item() == math.inf
    assert ad.eta_opt_meanfield(u, g, H, 0.5).item() == math.inf
    # batch = inf is the noiseless limit eta_max = g'g / g'Hg
    H2 = torch.eye(2, dtype=F64)
    assert ad.eta_opt_sgd(g, H2, torch.ones(2, dtype=F64), math.inf).item() == 1.0


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_softsign_moments_of_half_inputs(half):
    """Half inputs are integrated in float32 and returned in their own dtype: float16 raised
    inside torch (the saturation cap 1e6 does not fit in it)."""
    a = torch.tensor([-3.0, -0.5, 0.0, 0.25, 2.0, 60000.0]).to(half)
    b = torch.tensor([0.0, 0.1, 1.0, 0.5, 3.0, 1.0]).to(half)
    m1, m2 = ad.softsign_moments(a, b)
    r1, r2 = ad.softsign_moments(a.float(), b.float())
    assert (m1.dtype, m2.dtype) == (half, half)
    torch.testing.assert_close(m1, r1.to(half), atol=0, rtol=0)
    torch.testing.assert_close(m2, r2.to(half), atol=0, rtol=0)


def test_eta_opt_meanfield_refuses_a_beta_that_does_not_broadcast():
    """A batch of two gradients with eleven betas: torch's own broadcast error named neither."""
    g = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]], dtype=torch.float64)
    H = torch.eye(3, dtype=torch.float64)
    u = torch.sign(g)
    with pytest.raises(ValueError, match="beta"):
        ad.eta_opt_meanfield(u, g, H, torch.linspace(0.1, 1.0, 11, dtype=torch.float64))
    assert ad.eta_opt_meanfield(u, g, H, torch.tensor([[0.5], [1.0]])).shape == (2, 2)
    with pytest.raises(ValueError, match="u and g must have the same length"):
        ad.eta_opt_meanfield(u.reshape(-1), g, H, 0.5)


# -- referee findings: overflow, half precision, far from the step, shapes -------------------

@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_ema_of_half_inputs_reproduces_a_constant(half):
    """Averaged in float32: a half-precision running sum stalled (bfloat16 gave 1.05 for 3)."""
    x = torch.full((3000,), 3.0, dtype=half)
    out = ad.ema(x, 0.999)
    assert out.dtype == half and torch.equal(out, x)
    plain = ad.ema(x, 0.999, bias_correct=False)[-1].float()   # 3 (1 - 0.999^3000)
    assert plain.item() == pytest.approx(3 * (1 - 0.999 ** 3000), rel=8e-3)


def test_noisy_quadratic_half_precision_accumulates_in_float32():
    """The sums over time are float32: in bfloat16 they stalled at 0.13 for an exact 1.05."""
    out = ad.noisy_quadratic(torch.tensor([1.0]), torch.tensor([1.0]), lr=0.1, steps=2000,
                             burn_in=200, chains=64, generator=generator(0, "cpu"),
                             dtype=torch.bfloat16)
    _, exact = ad.sgd_stationary_moments(torch.tensor([1.0]), torch.tensor([1.0]), 0.1)
    assert out["mean_sq_grad"].dtype == torch.bfloat16
    assert out["mean_sq_grad"].float().item() == pytest.approx(exact.item(), rel=0.06)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_softsign_and_its_approximate_moments_do_not_overflow(dtype):
    big = torch.finfo(dtype).max / 1.1
    x = torch.tensor([big, -big, 300.0], dtype=dtype)
    out = ad.softsign(x, x.abs())                            # x and eps both near the max
    torch.testing.assert_close(out.double(), torch.tensor([1, -1, 1], dtype=F64) / math.sqrt(2),
                               rtol=4 * torch.finfo(dtype).eps, atol=0)
    # huge a: E[u] -> +-1, E[u^2] -> 1; huge a = b: (1/sqrt 2, 1/2); the squares overflowed
    m1, m2 = ad.softsign_moments_approx(x, torch.ones_like(x))
    assert m1.tolist() == [1.0, -1.0, pytest.approx(1.0, abs=1e-2)] and m2.tolist()[:2] == [1, 1]
    m1, m2 = ad.softsign_moments_approx(x, x.abs())
    q = 2 * 300.0**2 + math.pi / 2                          # the a = b = 300 entry
    tol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(m1.double(), torch.tensor(
        [2**-0.5, -(2**-0.5), 300 / math.sqrt(q)], dtype=F64), rtol=tol, atol=0)
    torch.testing.assert_close(m2.double(), torch.tensor([0.5, 0.5, 1 - 300.0**2 / q],
                                                         dtype=F64), rtol=tol, atol=0)


def test_softsign_moments_far_from_the_step():
    """|a| or b large: the Taylor branch, not a cap on |a| that ignored b (1e8, 1e8 gave 0.01)
    nor a float32 trapezoid rule whose nodes lose digits like eps |a| (1e6, 10 gave 1.019)."""
    a = torch.tensor([1e8, 1e8, -1e12, math.inf, -math.inf], dtype=F64)
    b = torch.tensor([1e8, 1e10, 3.0, 1e-8, 5.0], dtype=F64)
    m1, m2 = ad.softsign_moments(a, b)
    r = torch.hypot(a[:3], b[:3])                          # E u = a/r, E u^2 = 1 - b^2/r^2
    want1 = torch.cat([a[:3] / r, torch.tensor([1.0, -1.0], dtype=F64)])
    want2 = torch.cat([1 - (b[:3] / r) ** 2, torch.ones(2, dtype=F64)])
    torch.testing.assert_close(m1, want1, rtol=1e-15, atol=0)
    torch.testing.assert_close(m2, want2, rtol=1e-15, atol=0)
    # float32 against the float64 reference over seven decades, across the switch at r = 64
    grid = torch.cat([torch.logspace(0, 7, 36, dtype=F64), torch.tensor([63.0, 65.0], dtype=F64)])
    for bb in (0.0, 1.0, 40.0, 1e4):
        ref = ad.softsign_moments(grid, torch.full_like(grid, bb))
        got = ad.softsign_moments(grid.float(), torch.full_like(grid, bb).float())
        for x, y in zip(got, ref, strict=True):
            torch.testing.assert_close(x.double(), y, rtol=0, atol=1e-6)
            assert x.max() <= 1
    for half in (torch.float16, torch.bfloat16):
        m1, m2 = ad.softsign_moments(torch.tensor([math.inf, 6e4], dtype=half), 1.0)
        assert m1.tolist() == [1.0, 1.0] and m2.tolist() == [1.0, 1.0]


def test_softsign_moments_quad_and_sinh_agree_for_huge_a():
    """The quad reference integrates in z: its window [a - 14, a + 14] in x collapsed."""
    a = torch.tensor([3e3, -2e4, 1e16, 1e17, math.inf], dtype=F64)
    b = torch.tensor([2e3, 1.0, 1.0, 1e17, 1.0], dtype=F64)
    q1, q2 = ad.softsign_moments(a, b, method="quad")
    s1, s2 = ad.softsign_moments(a, b)
    torch.testing.assert_close(q1, s1, rtol=0, atol=1e-13)
    torch.testing.assert_close(q2, s2, rtol=0, atol=1e-13)
    assert q1[2:].tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 1.0], rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, F64])
def test_surge_overshoot_depends_only_on_the_ratio(dtype):
    """C/(2 sqrt(D(C-D))) is scale-free; the product D(C-D) overflowed or underflowed."""
    fi = torch.finfo(dtype)
    for scale in (fi.tiny * 64, 1e-3, 1.0, 1e3 if dtype == torch.float16 else 1e30,
                  fi.max / 8):
        C = torch.tensor([10 / 3 * scale], dtype=dtype)
        D = torch.tensor([scale], dtype=dtype)
        exact = (C.double() / D.double()) / (2 * (C.double() / D.double() - 1).sqrt())
        got = ad.surge_overshoot(C, D)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), exact, rtol=8 * fi.eps, atol=0)


def test_random_spd_for_d_1_and_half_or_integer_dtypes():
    one = ad.random_spd(1, cond=100.0)
    assert one.tolist() == [[1.0]]                          # det 1; a number has cond 1
    for half in (torch.float16, torch.bfloat16):
        H = ad.random_spd(4, cond=9.0, generator=generator(0, "cpu"), dtype=half)
        ref = ad.random_spd(4, cond=9.0, generator=generator(0, "cpu"), dtype=torch.float32)
        assert H.dtype == half and torch.equal(H, ref.to(half))
    with pytest.raises(TypeError, match="dtype"):
        ad.random_spd(3, dtype=torch.int64)


def test_eta_opt_and_eta_opt_sgd_name_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match="mean_u.*g"):
        ad.eta_opt(torch.rand(2, 3), torch.rand(2, 3), torch.rand(4, 3), torch.eye(3))
    with pytest.raises(ValueError, match="batch"):
        ad.eta_opt_sgd(torch.rand(2, 3), torch.eye(3), torch.rand(3), torch.tensor([1.0, 2, 3]))
    assert ad.eta_opt_sgd(torch.rand(2, 3), torch.eye(3), torch.rand(3),
                          torch.tensor([[1.0], [2.0]])).shape == (2, 2)


# -- gaps found by mutation testing ---------------------------------------------------------

def test_clip_moments_at_infinite_a_on_the_closed_form_branch():
    # |a| -> inf gives (+-1, 1) for every b, also b >= 1 (the closed form): the cap of |a| at
    # b + 40 keeps a/b * P(|a+z|<b) from becoming inf * 0 there
    a = torch.tensor([math.inf, -math.inf] * 3, dtype=F64)
    b = torch.tensor([1.0, 1.0, 2.5, 2.5, 30.0, 30.0], dtype=F64)
    m1, m2 = ad.clip_moments(a, b)
    assert m1.tolist() == [1.0, -1.0] * 3 and m2.tolist() == [1.0] * 6


def test_clip_moments_of_a_batch_are_its_elements_moments():
    # 2-D a and b (both branches, b < 1 and b >= 1) against one call per element
    gen = generator(9, "cpu")
    a = 3 * torch.randn(2, 3, generator=gen, dtype=F64)
    b = torch.tensor([[0.05, 0.4, 0.9], [1.0, 2.0, 7.0]], dtype=F64)
    m1, m2 = ad.clip_moments(a, b)
    for i in range(2):
        for j in range(3):
            e1, e2 = ad.clip_moments(a[i, j:j + 1], b[i, j:j + 1])
            torch.testing.assert_close(m1[i, j], e1[0], rtol=1e-14, atol=1e-15)
            torch.testing.assert_close(m2[i, j], e2[0], rtol=1e-14, atol=1e-15)


def test_eta_opt_family_on_two_leading_dimensions():
    # g (2, 3, n), H (2, 3, n, n) and every other argument batched alike: each entry is the
    # unbatched call on its row
    gen = generator(10, "cpu")
    n = 4
    H = torch.stack([torch.stack([ad.random_spd(n, cond=30.0, generator=gen) for _ in range(3)])
                     for _ in range(2)])
    g = torch.randn(2, 3, n, generator=gen, dtype=F64)
    m = 0.5 * torch.randn(2, 3, n, generator=gen, dtype=F64)
    s = m * m + torch.rand(2, 3, n, generator=gen, dtype=F64)
    A = torch.randn(2, 3, n, n, generator=gen, dtype=F64)
    cov = A @ A.mT
    diag = torch.rand(2, 3, n, generator=gen, dtype=F64)
    batch = 1 + 10 * torch.rand(2, 3, generator=gen, dtype=F64)
    beta = 0.1 + 0.9 * torch.rand(2, 3, generator=gen, dtype=F64)
    u = ad.softsign(g, 0.3)
    got = [ad.eta_opt(m, s, g, H), ad.eta_opt_sgd(g, H, cov, batch),
           ad.eta_opt_sgd(g, H, diag, batch), ad.eta_opt_meanfield(u, g, H, beta)]
    for i in range(2):
        for j in range(3):
            want = [ad.eta_opt(m[i, j], s[i, j], g[i, j], H[i, j]),
                    ad.eta_opt_sgd(g[i, j], H[i, j], cov[i, j], batch[i, j]),
                    ad.eta_opt_sgd(g[i, j], H[i, j], diag[i, j], batch[i, j]),
                    ad.eta_opt_meanfield(u[i, j], g[i, j], H[i, j], beta[i, j])]
            for x, y in zip(got, want, strict=True):
                assert x.shape == (2, 3)
                torch.testing.assert_close(x[i, j], y, rtol=1e-13, atol=0)


def test_random_spd_is_the_documented_construction():
    # d = 2 has the requested condition number too: eigenvalues 1/sqrt(cond) and sqrt(cond)
    lam = torch.linalg.eigvalsh(ad.random_spd(2, cond=50.0, generator=generator(0, "cpu")))
    torch.testing.assert_close(lam, torch.tensor([50 ** -0.5, 50 ** 0.5], dtype=F64))
    # H = Q diag(lam) Q^T, Q from the QR of the generator's Gaussian matrix with diag(R) > 0 and
    # lam running from 1/sqrt(cond) up to sqrt(cond) along Q's columns (numpy, same draw)
    d, cond = 5, 20.0
    A = torch.randn(d, d, generator=generator(1, "cpu"), dtype=F64).numpy()
    Q, R = np.linalg.qr(A)
    Q = Q * np.sign(np.diag(R))
    want = (Q * np.geomspace(cond ** -0.5, cond ** 0.5, d)) @ Q.T
    got = ad.random_spd(d, cond=cond, generator=generator(1, "cpu"))
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-13)
    # without a generator it is built on the device asked for (meta: shapes only, no values)
    assert ad.random_spd(3, device="meta").device.type == "meta"


def test_softsign_moments_just_beyond_the_taylor_switch_are_at_rounding():
    # r = hypot(a, b) >= (2/eps)^(1/4) = 9742 in float64: the Taylor branch, "error below
    # rounding there" (the trapezoid rule loses ~eps |a|, some 1e-13, at these r); mpmath
    mpmath = pytest.importorskip("mpmath")
    pts = [(1.0e4, 1.0), (1.05e4, 1.0), (-1.0e4, 30.0)]
    want = []
    with mpmath.workdps(30):
        for av, bv in pts:
            def u(z, av=av, bv=bv):
                return (av + z) / mpmath.sqrt((av + z) ** 2 + bv * bv) * mpmath.npdf(z)

            def u2(z, av=av, bv=bv):
                return (av + z) ** 2 / ((av + z) ** 2 + bv * bv) * mpmath.npdf(z)

            want.append([float(mpmath.quad(f, [-14, 0, 14])) for f in (u, u2)])
    a = torch.tensor([p[0] for p in pts], dtype=F64)
    b = torch.tensor([p[1] for p in pts], dtype=F64)
    want = torch.tensor(want, dtype=F64)
    m1, m2 = ad.softsign_moments(a, b)
    torch.testing.assert_close(m1, want[:, 0], rtol=0, atol=1e-15)
    torch.testing.assert_close(m2, want[:, 1], rtol=0, atol=1e-15)


def test_gauss_newton_on_two_leading_dimensions():
    # jac (2, 3, n, k, d): G[i, j] = (1/n) sum_s J_s^T J_s of that batch entry's Jacobians
    jac = torch.randn(2, 3, 5, 2, 4, generator=generator(11, "cpu"), dtype=F64)
    G = ad.gauss_newton(jac)
    assert G.shape == (2, 3, 4, 4)
    for i in range(2):
        for j in range(3):
            want = sum(J.T @ J for J in jac[i, j]) / 5
            torch.testing.assert_close(G[i, j], want, rtol=1e-13, atol=1e-14)


def test_softsign_of_subnormal_inputs_is_their_sign():
    # eps = 0 is sign(x) down to the smallest subnormal (halving one rounds it to 0)
    for dtype in (torch.float32, F64):
        fi = torch.finfo(dtype)
        tiny = fi.smallest_normal * fi.eps                   # 2^-149, 2^-1074
        x = torch.tensor([tiny, -tiny, 3 * tiny], dtype=dtype)
        assert ad.softsign(x, 0.0).tolist() == [1.0, -1.0, 1.0]


def test_shapes_and_devices_that_cannot_work_are_named():
    # found by make bad-inputs once the tests above passed 2-D a, b and device=
    with pytest.raises(ValueError, match=r"the shapes of a \(6,\) and b \(2, 3\) do not"):
        ad.clip_moments(torch.ones(6), torch.ones(2, 3))
    with pytest.raises(ValueError, match="device must be a torch.device or a device name"):
        ad.random_spd(3, device="bogus")
