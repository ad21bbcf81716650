"""Tests of the score-identity-distillation part of dlmath.diffusion (chapter 32): the
Gauss-Hermite rule, the exact student denoisers, the SiD/FGM losses and their gradient
theorems, and the lambda training loop."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import diffusion as D

F64 = torch.float64
TEACHER = D.GaussianMixture([0.4, 0.6], [-1.5, 1.0], [0.4, 0.5])
ZR, ER = D.gauss_hermite(60), D.gauss_hermite(80)


def gen(theta, z):
    return theta[0] + theta[1] * z + theta[2] * torch.tanh(2 * z)


def losses(theta, sg, a=0.8, b=0.6, zr=ZR, er=ER):
    return D.sid_losses(theta, theta.detach() if sg else theta, TEACHER, gen, zr, er, a, b)


def grad_of(fn, theta):
    t = theta.detach().clone().requires_grad_(True)
    return torch.autograd.grad(fn(t), t)[0]


# -- quadrature and denoisers ----------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_gauss_hermite_moments(n):
    z, w = D.gauss_hermite(n)
    assert z.dtype == F64 and z.shape == w.shape == (n,)
    assert abs(float(w.sum()) - 1) < 1e-14 and (w > 0).all()
    for k, m in [(0, 1.0), (2, 1.0), (4, 3.0), (6, 15.0)]:
        if k <= 2 * n - 1:
            assert abs(float((w * z**k).sum()) - m) < 1e-10 * m
    assert abs(float((w * z).sum())) < 1e-14


def test_gauss_hermite_bad_input():
    with pytest.raises(ValueError, match="n"):
        D.gauss_hermite(0)
    with pytest.raises(TypeError, match="n"):
        D.gauss_hermite(2.0)


def test_discrete_eps_is_minus_bbar_score():
    atoms = torch.tensor([-1.0, 0.3, 2.0], dtype=F64)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    x = torch.linspace(-4, 4, 41, dtype=F64, requires_grad=True)
    a, b = 0.7, 0.5
    logp = torch.logsumexp(w.log() - 0.5 * ((x[:, None] - a * atoms) / b) ** 2, -1)
    score = torch.autograd.grad(logp.sum(), x)[0]
    eps = D.discrete_generator_eps(x, atoms, w, a, b)
    assert eps.shape == x.shape
    assert torch.allclose(eps, -b * score, atol=1e-12)


def test_discrete_eps_matches_narrow_mixture_limit():
    # a mixture with tiny stds is (almost) the discrete law
    atoms = torch.tensor([-1.0, 2.0], dtype=F64)
    w = torch.tensor([0.3, 0.7], dtype=F64)
    gm = D.GaussianMixture(w, atoms, torch.full((2,), 1e-6, dtype=F64))
    x = torch.linspace(-3, 3, 13, dtype=F64)
    ref = gm.posterior(x, 0.6, 0.8).noise_mean
    assert torch.allclose(D.discrete_generator_eps(x, atoms, w, 0.6, 0.8), ref, atol=1e-9)


def test_discrete_eps_extreme_points_and_bad_input():
    atoms = torch.tensor([-1.0, 1.0], dtype=F64)
    w = torch.tensor([0.5, 0.5], dtype=F64)
    x = torch.tensor([-1e6, 1e6], dtype=F64)  # far tails: one atom takes all responsibility
    eps = D.discrete_generator_eps(x, atoms, w, 1.0, 1.0)
    assert torch.isfinite(eps).all()
    assert torch.allclose(eps, torch.tensor([-1e6 + 1, 1e6 - 1], dtype=F64))
    with pytest.raises(ValueError, match="bbar"):
        D.discrete_generator_eps(x, atoms, w, 1.0, 0.0)
    with pytest.raises(ValueError, match="weights"):
        D.discrete_generator_eps(x, atoms, torch.tensor([0.5, 0.6], dtype=F64), 1.0, 1.0)
    with pytest.raises(ValueError, match="atoms"):
        D.discrete_generator_eps(x, atoms, torch.ones(3, dtype=F64) / 3, 1.0, 1.0)


def test_discrete_eps_gradcheck():
    atoms = torch.tensor([-1.0, 0.5, 1.5], dtype=F64, requires_grad=True)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    x = torch.tensor([-0.7, 0.1, 1.9], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, g_: D.discrete_generator_eps(x_, g_, w, 0.8, 0.6), (x, atoms))


@given(m=st.floats(-2, 2), s=st.floats(0.2, 2), a=st.floats(0.1, 1.0))
@settings(max_examples=25, deadline=None)
def test_gaussian_eps_is_posterior_noise_mean(m, s, a):
    b = math.sqrt(1 - a * a) + 0.05
    gm = D.GaussianMixture([1.0], [m], [s])
    x = torch.linspace(-3, 3, 7, dtype=F64)
    ref = gm.posterior(x, a, b).noise_mean
    assert torch.allclose(D.gaussian_generator_eps(x, m, s, a, b), ref, atol=1e-12)


# -- the identity and the loss values ---------------------------------------------------------

@given(c=st.floats(-3, 3), k=st.floats(0.5, 4))
@settings(max_examples=10, deadline=None)
def test_identity_student_side(c, k):
    theta = torch.tensor([0.3, 0.9, 0.5], dtype=F64)
    zn, zw = ZR
    en, ew = ER
    x = 0.8 * gen(theta, zn)[:, None] + 0.6 * en[None, :]
    w = zw[:, None] * ew[None, :]
    eps_star = D.discrete_generator_eps(x, gen(theta, zn), zw, 0.8, 0.6)
    f = torch.sin(k * x) + c * x**2
    lhs, rhs = float((w * f * eps_star).sum()), float((w * f * en).sum())
    assert abs(lhs - rhs) < 1e-8 * (1 + abs(rhs))
    # negative control: f also depends on eps
    assert abs(float((w * x * en * eps_star).sum()) - float((w * x * en * en).sum())) > 0.05


@given(t1=st.floats(-1, 1), t2=st.floats(0.3, 1.5), t3=st.floats(-0.8, 0.8))
@settings(max_examples=8, deadline=None)
def test_loss_values_agree(t1, t2, t3):
    theta = torch.tensor([t1, t2, t3], dtype=F64)
    L = {k: float(v) for k, v in losses(theta, True).items()}
    for k in ["L2", "L3", "L4", "L5"]:
        assert abs(L[k] - L["L1"]) < 1e-7 * L["L1"] + 1e-12, k


def test_losses_pointwise_algebra_with_wrong_student():
    theta = torch.tensor([0.3, 0.9, 0.5], dtype=F64)
    L = D.sid_losses(theta, theta + 0.1, TEACHER, gen, ZR, ER, 0.8, 0.6)
    assert abs(float(L["L4"] - (2 * L["L2"] - L["L1"]))) < 1e-13
    assert abs(float(L["L1"] - L["L2"])) > 1e-3 * float(L["L1"])  # identity needs psi*


# -- gradient theorems --------------------------------------------------------------------------

@pytest.mark.parametrize("theta", [[0.3, 0.9, 0.5], [-0.4, 0.6, 0.1], [0.8, 1.2, -0.3]])
def test_fgm_and_lambda_one_gradients(theta):
    theta = torch.tensor(theta, dtype=F64)
    g_true = grad_of(lambda t: losses(t, False)["L1"], theta)
    g_l4 = grad_of(lambda t: losses(t, True)["L4"], theta)
    g_l2 = grad_of(lambda t: losses(t, True)["L2"], theta)
    g_l1s = grad_of(lambda t: losses(t, True)["L1"], theta)
    g_l5 = grad_of(lambda t: losses(t, False)["L5"], theta)
    n = float(g_true.norm())
    assert float((g_l4 - g_true).norm()) < 1e-6 * n
    assert float((g_l2 - g_true).norm()) > 0.1 * n  # the naive SiD gradient is biased
    assert float((g_l5 - 2 * (g_l2 - g_l1s)).norm()) < 1e-6 * float(g_l5.norm())
    assert float((g_l5 - (g_true - g_l1s)).norm()) < 1e-12 * n


def test_sid_losses_bad_input():
    theta = torch.tensor([0.3, 0.9, 0.5], dtype=F64)
    with pytest.raises(TypeError, match="teacher"):
        D.sid_losses(theta, theta, "gmm", gen, ZR, ER, 0.8, 0.6)
    with pytest.raises(ValueError, match="zrule's weights must sum to 1"):
        D.sid_losses(theta, theta, TEACHER, gen, (ZR[0], 2 * ZR[1]), ER, 0.8, 0.6)
    with pytest.raises(ValueError, match="bbar"):
        D.sid_losses(theta, theta, TEACHER, gen, ZR, ER, 0.8, -0.6)


# -- training loop ------------------------------------------------------------------------------

BIMODAL = D.GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.5, 0.5])


def _train(lam, steps=150):
    rule = D.gauss_hermite(16)
    levels = [(a, math.sqrt(1 - a * a)) for a in (0.4, 0.7, 0.9)]
    return D.train_sid(lam, [0.5, 0.5], BIMODAL, lambda t, z: t[0] + t[1] * z, rule, rule,
                       levels, steps=steps, lr=0.05,
                       student=lambda tp, x, a, b: D.gaussian_generator_eps(x, tp[0], tp[1], a, b))


@pytest.fixture
def one_thread():
    """Tiny tensors: a single intra-op thread avoids contention on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_lambda_regimes(one_thread):
    fisher, fgm, cover, diverge, zero = (_train(lam) for lam in (None, 0.5, 1.0, 1.5, 0.0))
    assert fisher.shape == (151, 2) and fisher.dtype == F64
    assert float((fisher[-1] - fgm[-1]).abs().max()) < 5e-3
    assert zero[-1, 0] > 1.5 and zero[-1, 1] < fisher[-1, 1] - 0.05  # narrower than Fisher
    assert fgm[-1, 0] > 1.5 and fgm[-1, 1] < 0.7          # one mode
    assert abs(float(cover[-1, 0])) < 0.2 and cover[-1, 1] > 1.5   # both modes
    last = diverge[torch.isfinite(diverge).all(-1)][-1]
    assert float(last[1]) > 2.5


def test_train_bad_input():
    with pytest.raises(ValueError, match="levels"):
        D.train_sid(1.0, [0.5, 0.5], BIMODAL, gen, ZR, ER, [])
    with pytest.raises(ValueError, match="lr"):
        D.train_sid(1.0, [0.5, 0.5], BIMODAL, gen, ZR, ER, [(0.8, 0.6)], lr=0.0)
    with pytest.raises(TypeError, match="lam"):
        D.train_sid("one", [0.5, 0.5], BIMODAL, gen, ZR, ER, [(0.8, 0.6)])


# -- second reader: edge cases, an independent value check, and the rest of the contract -----

def test_rule_rejects_nan_or_negative_weights():
    atoms = torch.tensor([-1.0, 1.0], dtype=F64)
    x = torch.zeros(3, dtype=F64)
    for bad in ([float("nan"), 1.0], [1.5, -0.5], [0.5, 0.4]):
        with pytest.raises(ValueError, match="weights"):
            D.discrete_generator_eps(x, atoms, torch.tensor(bad, dtype=F64), 1.0, 1.0)
    theta = torch.tensor([0.3, 0.9, 0.5], dtype=F64)
    zn, zw = ZR
    with pytest.raises(ValueError, match="erule's weights must be finite"):
        D.sid_losses(theta, theta, TEACHER, gen, ZR, (ER[0], ER[1] * float("nan")), 0.8, 0.6)
    with pytest.raises(ValueError, match="zrule's nodes and zrule's weights must be 1-D"):
        D.sid_losses(theta, theta, TEACHER, gen, (zn[:-1], zw), ER, 0.8, 0.6)


def test_discrete_eps_edge_cases():
    atoms = torch.tensor([-1.0, 0.5, 2.0], dtype=F64)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="x"):
            D.discrete_generator_eps(torch.tensor([0.0, bad], dtype=F64), atoms, w, 0.8, 0.6)
    empty = D.discrete_generator_eps(torch.zeros(0, dtype=F64), atoms, w, 0.8, 0.6)
    assert empty.shape == (0,)
    scalar = D.discrete_generator_eps(torch.tensor(0.3, dtype=F64), atoms, w, 0.8, 0.6)
    assert scalar.shape == ()
    # abar = 0: x_t = bbar * eps carries the noise exactly, eps* = x / bbar
    x = torch.linspace(-2, 2, 9, dtype=F64)
    assert torch.allclose(D.discrete_generator_eps(x, atoms, w, 0.0, 0.6), x / 0.6, atol=1e-14)
    # a zero-weight atom is ignored; a single atom gives the linear predictor
    one = D.discrete_generator_eps(x, torch.tensor([0.5, 7.0], dtype=F64),
                                   torch.tensor([1.0, 0.0], dtype=F64), 0.8, 0.6)
    assert torch.allclose(one, (x - 0.8 * 0.5) / 0.6, atol=1e-14)
    # dtype follows the inputs (float32 throughout gives float32, close to float64)
    e32 = D.discrete_generator_eps(x.float(), atoms.float(), w.float(), 0.8, 0.6)
    assert e32.dtype == torch.float32
    assert torch.allclose(e32.double(), D.discrete_generator_eps(x, atoms, w, 0.8, 0.6),
                          atol=1e-5)


def test_gaussian_eps_edge_cases_and_gradcheck():
    x = torch.linspace(-2, 2, 5, dtype=F64)
    assert torch.allclose(D.gaussian_generator_eps(x, 0.3, -1.2, 0.7, 0.5),
                          D.gaussian_generator_eps(x, 0.3, 1.2, 0.7, 0.5))  # sign of std
    assert torch.allclose(D.gaussian_generator_eps(x, 0.3, 1.2, 0.0, 0.5), x / 0.5)
    # std = 0 is the one-atom generator
    assert torch.allclose(D.gaussian_generator_eps(x, 0.3, 0.0, 0.7, 0.5),
                          D.discrete_generator_eps(x, torch.tensor([0.3], dtype=F64),
                                                   torch.ones(1, dtype=F64), 0.7, 0.5))
    with pytest.raises(ValueError, match="std"):
        D.gaussian_generator_eps(x, 0.3, float("nan"), 0.7, 0.5)
    with pytest.raises(ValueError, match="mean"):
        D.gaussian_generator_eps(x, torch.tensor(float("inf")), 1.0, 0.7, 0.5)
    with pytest.raises(ValueError, match="mean"):
        D.gaussian_generator_eps(x, torch.zeros(2, dtype=F64), 1.0, 0.7, 0.5)
    with pytest.raises(TypeError, match="std"):
        D.gaussian_generator_eps(x, 0.3, "wide", 0.7, 0.5)
    with pytest.raises(ValueError, match="x must be finite"):  # as discrete_generator_eps
        D.gaussian_generator_eps(torch.tensor([0.0, math.nan], dtype=F64), 0.3, 1.2, 0.7, 0.5)
    m = torch.tensor(0.3, dtype=F64, requires_grad=True)
    s = torch.tensor(1.2, dtype=F64, requires_grad=True)
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x_, m_, s_: D.gaussian_generator_eps(x_, m_, s_, 0.7, 0.5), (xg, m, s))


def test_l1_is_bbar2_times_fisher_divergence():
    # independent of sid_losses' formulas: scores by autograd of the two log-densities
    theta = torch.tensor([-0.2, 0.8, 0.4], dtype=F64)
    a, b = 0.7, math.sqrt(1 - 0.49)
    zn, zw = ZR
    en, ew = ER
    x = (a * gen(theta, zn)[:, None] + b * en[None, :]).requires_grad_(True)
    w = zw[:, None] * ew[None, :]
    log_g = torch.logsumexp(zw.log() - 0.5 * ((x[..., None] - a * gen(theta, zn)) / b) ** 2, -1)
    s_g = torch.autograd.grad(log_g.sum(), x)[0]
    s_t = torch.autograd.grad(TEACHER.log_prob(x, a, b).sum(), x)[0]
    fisher = float((w * (s_g - s_t) ** 2).sum())
    L = D.sid_losses(theta, theta, TEACHER, gen, ZR, ER, a, b)
    assert abs(float(L["L1"]) - b * b * fisher) < 1e-10 * float(L["L1"])


def test_sid_losses_contract():
    theta = torch.tensor([0.3, 0.9, 0.5], dtype=F64)
    tot, sg = losses(theta, False), losses(theta, True)
    assert set(tot) == {"L1", "L2", "L3", "L4", "L5"}
    for k in tot:  # the stop-gradient changes gradients, never values
        assert tot[k].shape == () and tot[k].dtype == F64
        assert float(tot[k]) == float(sg[k])
    with pytest.raises(ValueError, match="gen"):
        D.sid_losses(theta, theta, TEACHER, lambda t, z: gen(t, z)[:-1], ZR, ER, 0.8, 0.6)
    # a perfect generator (the teacher is one Gaussian and so is the generator): all zero
    gauss = D.GaussianMixture([1.0], [0.4], [1.3])
    th = torch.tensor([0.4, 1.3], dtype=F64)
    L = D.sid_losses(th, th, gauss, lambda t, z: t[0] + t[1] * z, ZR, ER, 0.8, 0.6,
                     student=lambda tp, x, a, b: D.gaussian_generator_eps(x, tp[0], tp[1], a, b))
    assert all(abs(float(v)) < 1e-12 for v in L.values()), L


def test_sid_losses_with_gaussian_student_values_agree():
    # the pluggable student: exact for the continuous Gaussian generator, so the identities
    # hold to quadrature accuracy of the double Gauss-Hermite rule
    th = torch.tensor([0.7, 0.6], dtype=F64)
    L = D.sid_losses(th, th, BIMODAL, lambda t, z: t[0] + t[1] * z, ZR, ER, 0.7,
                     math.sqrt(0.51),
                     student=lambda tp, x, a, b: D.gaussian_generator_eps(x, tp[0], tp[1], a, b))
    for k in ["L2", "L3", "L4", "L5"]:
        assert abs(float(L[k] - L["L1"])) < 1e-6 * float(L["L1"]), k


def test_train_edge_cases(one_thread):
    rule = D.gauss_hermite(8)
    st_ = lambda tp, x, a, b: D.gaussian_generator_eps(x, tp[0], tp[1], a, b)  # noqa: E731
    g_ = lambda t, z: t[0] + t[1] * z  # noqa: E731
    t0 = torch.tensor([0.5, 0.5], dtype=torch.float32)
    tr = D.train_sid(0.5, t0, BIMODAL, g_, rule, rule, [(0.8, 0.6)], steps=0, student=st_)
    assert tr.shape == (1, 2) and tr.dtype == F64 and torch.equal(tr[0], t0.double())
    # a step so large that the parameters overflow: the run stops and pads with NaN
    tr = D.train_sid(0.0, t0, BIMODAL, g_, rule, rule, [(0.8, 0.6)], steps=5, lr=1e300,
                     student=st_)
    assert tr.shape == (6, 2) and torch.isfinite(tr[:2]).all() and torch.isnan(tr[-1]).all()
    with pytest.raises(TypeError, match="lam"):
        D.train_sid(True, t0, BIMODAL, g_, rule, rule, [(0.8, 0.6)], student=st_)
    with pytest.raises(ValueError, match="bbar"):
        D.train_sid(1.0, t0, BIMODAL, g_, rule, rule, [(0.8, 0.0)], steps=1, student=st_)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

def test_sid_bad_input_names_the_callers_arguments():
    theta = torch.tensor([0.3, 0.9, 0.5], dtype=F64)
    bad = theta.clone()
    bad[0] = math.nan
    with pytest.raises(ValueError, match="atoms must be finite"):
        D.discrete_generator_eps(torch.zeros(2, dtype=F64), bad, ZR[1][:3] / ZR[1][:3].sum(),
                                 0.8, 0.6)
    with pytest.raises(ValueError, match="theta must be finite"):
        D.sid_losses(bad, theta, TEACHER, gen, ZR, ER, 0.8, 0.6)
    with pytest.raises(ValueError, match="theta_psi must be finite"):
        D.sid_losses(theta, bad, TEACHER, gen, ZR, ER, 0.8, 0.6)
    with pytest.raises(ValueError, match="gen\\(theta_psi, z\\) must return finite values"):
        D.sid_losses(theta, [math.nan, 1.0, 0.0], TEACHER, gen, ZR, ER, 0.8, 0.6)
    with pytest.raises(TypeError, match="gen must be callable"):
        D.sid_losses(theta, theta, TEACHER, "gen", ZR, ER, 0.8, 0.6)
    with pytest.raises(TypeError, match="zrule must be a \\(nodes, weights\\) pair"):
        D.sid_losses(theta, theta, TEACHER, gen, ZR[0], ER, 0.8, 0.6)
    with pytest.raises(TypeError, match="erule"):
        D.sid_losses(theta, theta, TEACHER, gen, ZR, 3, 0.8, 0.6)


def test_train_sid_checks_levels_and_theta0():
    with pytest.raises(TypeError, match="levels must be a sequence"):
        D.train_sid(1.0, [0.5, 0.5], BIMODAL, gen, ZR, ER, 0.8)
    with pytest.raises(ValueError, match="levels\\[1\\] must be a pair"):
        D.train_sid(1.0, [0.5, 0.5], BIMODAL, gen, ZR, ER, [(0.8, 0.6), (0.8,)])
    with pytest.raises(ValueError, match="theta0 must be finite"):
        D.train_sid(1.0, [math.nan, 0.5], BIMODAL, gen, ZR, ER, [(0.8, 0.6)])


# -- referee findings --------------------------------------------------------------------------

def test_discrete_eps_far_from_every_atom_stays_finite():
    atoms = torch.tensor([-1.0, 0.0, 1.0])
    w = torch.tensor([0.25, 0.5, 0.25])
    half = D.discrete_generator_eps(torch.tensor([4.0, 300.0], dtype=torch.float16),
                                    atoms.half(), w.half(), 1.0, 1.0)
    assert half.dtype == torch.float16 and half.tolist() == [3.056640625, 299.0]
    big = D.discrete_generator_eps(torch.tensor([1e20]), atoms, w, 1.0, 1.0)
    assert torch.equal(big, torch.tensor([1e20 - 1]))
    tiny = D.discrete_generator_eps(torch.tensor([4.0]), atoms, w, 1.0, 1e-19)
    assert torch.allclose(tiny, torch.tensor([3e19]))
    # the nearest atom of zero weight is skipped
    zero = D.discrete_generator_eps(torch.tensor([1e20]), atoms, torch.tensor([0.5, 0.5, 0.0]),
                                    1.0, 1e-10)
    assert torch.equal(zero, torch.tensor([1e30]))  # (x - 0) / bbar: atom 0 takes it all


def test_rule_accepts_float32_weights_normalised_to_rounding():
    gen = torch.Generator().manual_seed(1)
    w = torch.softmax(torch.randn(50, generator=gen), 0)
    assert abs(float(w.sum(dtype=F64)) - 1) > 1e-9  # off by float32 rounding
    atoms = torch.randn(50, generator=gen)
    eps = D.discrete_generator_eps(torch.tensor([0.3]), atoms, w, 0.5, 0.8)
    assert torch.isfinite(eps).all()
    with pytest.raises(ValueError, match="weights must sum to 1"):
        D.discrete_generator_eps(torch.tensor([0.3]), atoms, 1.05 * w, 0.5, 0.8)
