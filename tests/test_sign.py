"""Tests of dlmath.optim.sign: SignSGD/Signum, the Amos-style rule, the decay closed forms."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath.optim import (
    Lion,
    SignSGD,
    amos_sign_hparams,
    sign_decay_closed_form,
    sign_decay_fixed_point,
    signum_update,
)


def test_signsgd_is_sign_of_gradient():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = SignSGD([p], lr=0.1)
    p.grad = torch.tensor([3.0, -1e-9, 0.0, 2.0], dtype=torch.float64)
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([-0.1, 0.1, 0.0, -0.1], dtype=torch.float64))


def test_signum_equals_lion_with_equal_betas():
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3, generator=gen))
    b = torch.nn.Parameter(a.detach().clone())
    s, lion = SignSGD([a], lr=0.01, momentum=0.9, weight_decay=0.1), Lion(
        [b], lr=0.01, betas=(0.9, 0.9), weight_decay=0.1)
    theta, m = a.detach().clone(), torch.zeros_like(a)
    for _ in range(50):
        g = torch.randn(5, 3, generator=gen)
        a.grad, b.grad = g, g.clone()
        s.step()
        lion.step()
        theta, m = signum_update(theta, m, g, lr=0.01, momentum=0.9, weight_decay=0.1)
    assert torch.equal(a, b) and torch.equal(a.detach(), theta)


def test_amos_rule_bert_base_numbers():
    sigma = 1 / math.sqrt(768)
    lr, wd = amos_sign_hparams(1.11e-3, sigma)
    assert lr == pytest.approx(4.005e-5, rel=1e-3)
    assert wd == pytest.approx(0.01538, rel=1e-3)
    rho = lr * wd  # the per-step decay rate rho = alpha0^2 / 2 is not the weight decay
    assert rho == pytest.approx(1.11e-3**2 / 2, rel=1e-12)
    lr_t, wd_t = amos_sign_hparams(1.11e-3, sigma, kappa=1e-3, step=1000)
    assert lr_t == pytest.approx(lr / 2) and wd_t == wd
    with pytest.raises(ValueError, match="sigma"):
        amos_sign_hparams(1e-3, 0.0)
    with pytest.raises(ValueError, match="step"):
        amos_sign_hparams(1e-3, 0.1, step=-1)


@settings(max_examples=30, deadline=None)
@given(theta0=st.floats(-500, 500), s=st.sampled_from([-1.0, 0.0, 1.0]),
       lr=st.floats(1e-3, 1.0), wd=st.floats(1e-3, 1.0), t=st.integers(0, 300))
def test_closed_form_matches_iteration(theta0, s, lr, wd, t):
    lr = min(lr, 1 / wd)
    theta = torch.tensor(theta0, dtype=torch.float64)
    for _ in range(t):
        theta = (1 - lr * wd) * theta - lr * s
    closed = sign_decay_closed_form(torch.tensor(theta0, dtype=torch.float64), s, lr=lr,
                                    weight_decay=wd, t=t)
    assert abs(closed.item() - theta.item()) <= 1e-9 * (1 + abs(theta0) + 1 / wd)


@settings(max_examples=20, deadline=None)
@given(lr=st.floats(1e-3, 1.0), wd=st.floats(1e-2, 1.0), seed=st.integers(0, 10**6))
def test_box_invariant(lr, wd, seed):
    lr = min(lr, 1 / wd)
    gen = torch.Generator().manual_seed(seed)
    theta0 = 3 * torch.randn(50, generator=gen, dtype=torch.float64) / wd
    theta = theta0.clone()
    box = torch.maximum(theta0.abs(), torch.full_like(theta0, 1 / wd))
    for _ in range(100):
        u = torch.randint(-1, 2, (50,), generator=gen).double()
        theta = (1 - lr * wd) * theta - lr * u
        assert (theta.abs() <= box * (1 + 1e-15)).all()


def test_fixed_point_and_errors():
    assert torch.equal(sign_decay_fixed_point(torch.tensor([1.0, -1.0, 0.0]), 0.01),
                       torch.tensor([-100.0, 100.0, -0.0]))
    with pytest.raises(ValueError, match="weight_decay"):
        sign_decay_fixed_point(torch.tensor(1.0), 0.0)
    with pytest.raises(ValueError, match="lr \\* weight_decay"):
        sign_decay_closed_form(torch.tensor(0.0), 1.0, lr=10.0, weight_decay=0.5, t=1)


def test_signsgd_bad_arguments_and_sparse():
    with pytest.raises(ValueError, match="momentum"):
        SignSGD([torch.nn.Parameter(torch.zeros(2))], momentum=1.5)
    emb = torch.nn.Embedding(3, 2, sparse=True)
    emb(torch.tensor([0])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        SignSGD(emb.parameters()).step()


def test_signsgd_validates_added_param_groups():
    opt = SignSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    for bad, text in ((dict(lr=-1.0), "lr"), (dict(momentum=1.5), "momentum"),
                      (dict(weight_decay=-0.1), "weight_decay")):
        with pytest.raises(ValueError, match=text):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], **bad})
        assert len(opt.param_groups) == 1  # the rejected group is not kept


def test_signsgd_rejected_param_group_is_not_stepped():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = SignSGD([a], lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.add_param_group({"params": [b], "lr": -1.0})
    b.grad = torch.ones(2)
    opt.step()
    assert len(opt.param_groups) == 1 and torch.equal(b, torch.ones(2))


def test_closed_form_edge_cases_dtype_and_negative_steps():
    theta0 = torch.tensor([0.5, -2.0], dtype=torch.float32)
    out = sign_decay_closed_form(theta0, torch.tensor([1.0, 0.0]), lr=1.0, weight_decay=1.0,
                                 t=torch.tensor([0, 3]))
    # t = 0 is theta0 itself (0^0 = 1 at eta * lam = 1); eta * lam = 1 jumps to the fixed point
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="t must be >= 0"):
        sign_decay_closed_form(theta0, 1.0, lr=0.1, weight_decay=0.1, t=-1)
    # a huge t is the fixed point, with no overflow or nan
    far = sign_decay_closed_form(theta0, 1.0, lr=0.5, weight_decay=0.1, t=1e9)
    assert torch.equal(far, torch.full((2,), -10.0))


def test_momentum_decay_sticks_at_a_subnormal():
    # chapter 18, outlier-prop-underflow: fl(beta m) never reaches 0 with gradual underflow;
    # for float32's 0.965 it stops at 14 * 2^-149 (k* = 14, no tie); beta = 3/4 ties at k = 2
    for beta, k_end in ((0.965, 14), (0.75, 2), (0.9, 4)):
        m = torch.tensor(1e-40, dtype=torch.float32)
        for _ in range(5_000):
            m = m * beta
        assert m.item() == k_end * 2.0**-149 and torch.sign(m) == 1


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

@pytest.mark.parametrize("s", [math.nan, math.inf, -2.0, torch.tensor([1.0, math.nan]),
                               torch.tensor([0.5, math.inf])])
def test_fuzz_sign_decay_refuses_s_that_is_not_a_sign(s):
    """s is a (frozen) sign, in [-1, 1]; NaN, inf or -2 is a caller's mistake, not a fixed
    point at -s / lambda."""
    with pytest.raises(ValueError, match="s must hold signs"):
        sign_decay_fixed_point(s, 0.01)
    with pytest.raises(ValueError, match="s must hold signs"):
        sign_decay_closed_form(torch.zeros(2, dtype=torch.float64), s, lr=0.1,
                               weight_decay=0.1, t=3)


def test_fuzz_sign_decay_closed_form_names_t_and_s():
    theta0 = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(TypeError, match="t must be"):
        sign_decay_closed_form(theta0, 1.0, lr=0.1, weight_decay=0.1, t=None)
    with pytest.raises(TypeError, match="s must be"):
        sign_decay_closed_form(theta0, None, lr=0.1, weight_decay=0.1, t=1)
    # integer signs and integer step counts are fine
    out = sign_decay_closed_form(theta0, torch.tensor([1, -1]), lr=0.1, weight_decay=0.1,
                                 t=torch.tensor([0, 2]))
    assert torch.allclose(out, torch.tensor([0.0, 10 * (1 - 0.99**2)], dtype=torch.float64))


# -- gaps found by mutation testing ---------------------------------------------------------

def test_signsgd_defaults_are_lr_1e_4_and_no_decay():
    # SignSGD(params) is SignSGD with lr = 1e-4, momentum 0 and weight_decay 0: the step is
    # exactly -1e-4 sign(g), the parameter is not shrunk
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64))
    p.grad = torch.tensor([0.5, 0.5, -0.5, 0.0], dtype=torch.float64)
    SignSGD([p]).step()
    assert torch.equal(p.detach(), torch.tensor([1.0 - 1e-4, -2.0 - 1e-4, 3.0 + 1e-4, 0.5],
                                                dtype=torch.float64))


def test_signum_update_defaults_are_momentum_0_9_and_no_decay():
    # m' = 0.9 m + 0.1 g, theta' = theta - lr sign(m'); the m and g below disagree in sign so
    # that 0.9 decides the step (coordinate 0: m wins, coordinate 1: g wins)
    theta = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    m = torch.tensor([1.0, -0.1, 0.5], dtype=torch.float64)
    g = torch.tensor([-8.0, 1.0, 2.0], dtype=torch.float64)
    new, m_new = signum_update(theta, m, g, lr=0.25)
    torch.testing.assert_close(m_new, 0.9 * m + 0.1 * g, rtol=0, atol=1e-15)
    assert torch.equal(new, torch.tensor([0.75, -2.25, 2.75], dtype=torch.float64))


def test_amos_rule_defaults_and_q():
    # step defaults to 0 and kappa to 0, so eta = alpha0 sigma whatever the other; and the
    # weight decay is alpha0 / (2 q sigma) for any q, not only q = 1
    a0, sigma = 2e-3, 0.04
    assert amos_sign_hparams(a0, sigma, kappa=0.5)[0] == pytest.approx(a0 * sigma, rel=1e-15)
    assert amos_sign_hparams(a0, sigma, step=100)[0] == pytest.approx(a0 * sigma, rel=1e-15)
    lr, wd = amos_sign_hparams(a0, sigma, q=4.0, kappa=0.5, step=2)
    assert lr == pytest.approx(a0 * sigma / 2, rel=1e-15)
    assert wd == pytest.approx(a0 / (8 * sigma), rel=1e-15)


def test_signsgd_is_not_lazy():
    # SignSGD has no lazy option: a row whose gradient is zero still takes the momentum's
    # sign step and the weight decay (as signum_update does), unlike Lion(lazy=True)
    gen = torch.Generator().manual_seed(2)
    p = torch.nn.Parameter(torch.randn(3, 2, generator=gen, dtype=torch.float64))
    theta, m = p.detach().clone(), torch.zeros_like(p)
    opt = SignSGD([p], lr=0.01, momentum=0.9, weight_decay=0.1)
    for step in range(3):
        g = torch.randn(3, 2, generator=gen, dtype=torch.float64)
        if step > 0:
            g[0] = 0.0  # row 0 absent from the batch
        before = p.detach().clone()
        p.grad = g
        opt.step()
        theta, m = signum_update(theta, m, g, lr=0.01, momentum=0.9, weight_decay=0.1)
        assert torch.equal(p.detach(), theta)
    assert (p.detach()[0] != before[0]).all()
