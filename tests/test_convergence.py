"""Tests of dlmath.convergence: projections (properties and a direct solver), the SGD recorder,
every bound of the two SGD chapters on random and adversarial instances, schedules and sums,
the Gaussian absolute-loss risk, and bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import convergence as C

F64 = torch.float64
SETTINGS = settings(max_examples=60, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def rng(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=F64)


# -- projections --------------------------------------------------------------------------

PROJECTIONS = {
    "ball": lambda v: C.project_ball(v, 1.5, center=torch.tensor([0.5, -0.2, 0.0], dtype=F64)),
    "box": lambda v: C.project_box(v, -0.5, torch.tensor([1.0, 2.0, 0.3], dtype=F64)),
    "simplex": lambda v: C.project_simplex(v),
}


def member(name, x):
    """Is x in the set (up to rounding)?"""
    if name == "ball":
        c = torch.tensor([0.5, -0.2, 0.0], dtype=F64)
        return torch.linalg.vector_norm(x - c, dim=-1) <= 1.5 + 1e-12
    if name == "box":
        hi = torch.tensor([1.0, 2.0, 0.3], dtype=F64)
        return ((x >= -0.5) & (x <= hi)).all(dim=-1)
    return (x >= 0).all(dim=-1) & ((x.sum(dim=-1) - 1).abs() < 1e-12)


@pytest.mark.parametrize("name", list(PROJECTIONS))
@SETTINGS
@given(seed=seeds, scale=st.sampled_from([1e-3, 1.0, 10.0, 1e4]))
def test_projection_properties(name, seed, scale):
    randn = rng(seed)
    proj = PROJECTIONS[name]
    v, w = scale * randn(200, 3), scale * randn(200, 3)
    p, q = proj(v), proj(w)
    theta = proj(randn(200, 3))                               # points of the set
    tol = 1e-12 * max(1.0, scale) ** 2
    assert member(name, p).all() and member(name, theta).all()
    assert torch.allclose(proj(p), p, atol=1e-12 * max(1.0, scale))        # idempotent
    assert (torch.linalg.vector_norm(p - q, dim=-1)
            <= torch.linalg.vector_norm(v - w, dim=-1) + 1e-12 * max(1.0, scale)).all()
    # variational inequality and the three-point (Pythagoras) inequality
    assert (((p - theta) * (v - p)).sum(-1) >= -tol).all()
    lhs = ((v - theta) ** 2).sum(-1)
    rhs = ((p - theta) ** 2).sum(-1) + ((v - p) ** 2).sum(-1)
    assert (lhs - rhs >= -tol).all()


def test_simplex_projection_matches_a_direct_solver():
    randn = rng(0)
    for n in (1, 2, 3, 5, 8):
        for _ in range(6):
            v = 2 * randn(n)
            w = v.numpy()
            res = scipy.optimize.minimize(
                lambda x, w=w: 0.5 * np.sum((x - w) ** 2), np.full(n, 1.0 / n),
                jac=lambda x, w=w: x - w, method="SLSQP", bounds=[(0, None)] * n,
                constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1,
                              "jac": lambda x: np.ones_like(x)}],
                options={"ftol": 1e-14, "maxiter": 500})
            assert res.success
            assert np.allclose(C.project_simplex(v).numpy(), res.x, atol=1e-6)
            # and the threshold found by root bracketing on sum(max(v - tau, 0)) = 1
            f = lambda tau, w=w: np.maximum(w - tau, 0).sum() - 1  # noqa: E731
            tau = scipy.optimize.brentq(f, v.min().item() - 1, v.max().item(), xtol=1e-15)
            assert np.allclose(C.project_simplex(v).numpy(), np.maximum(v.numpy() - tau, 0),
                               atol=1e-12)


def test_projection_edge_cases():
    # ties, huge entries, a radius, a batch; the simplex is invariant under shifts along 1
    assert torch.equal(C.project_simplex(torch.tensor([2.0, 2.0, 2.0])), torch.full((3,), 1 / 3))
    assert torch.equal(C.project_simplex(torch.tensor([1e30, 0.0, -1e30])),
                       torch.tensor([1.0, 0.0, 0.0]))
    v = torch.tensor([[0.3, -0.1, 4.0], [1.0, 1.0, 1.0]], dtype=F64)
    assert torch.allclose(C.project_simplex(v + 7.0), C.project_simplex(v), atol=1e-14)
    assert torch.allclose(C.project_simplex(v, radius=3.0).sum(-1), torch.full((2,), 3.0,
                                                                               dtype=F64))
    # the ball: inside stays, the centre and radius 0 behave
    x = torch.tensor([0.3, 0.4])
    assert torch.equal(C.project_ball(x, 1.0), x)
    assert torch.equal(C.project_ball(torch.zeros(2), 0.0), torch.zeros(2))
    assert torch.equal(C.project_ball(x, 0.0), torch.zeros(2))
    assert torch.allclose(C.project_ball(torch.tensor([3.0, 4.0]), 1.0), torch.tensor([0.6, 0.8]))
    assert torch.equal(C.project_ball(torch.tensor([0.0, 1.5])), torch.tensor([0.0, 1.0]))  # r = 1
    # dtype and device are kept
    for f in (lambda z: C.project_ball(z), lambda z: C.project_box(z, 0, 1), C.project_simplex):
        y = f(torch.randn(4, 3, dtype=torch.float32))
        assert y.dtype == torch.float32 and y.shape == (4, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_ball_projection_of_huge_and_tiny_offsets(dtype):
    """The squares of 1e30 overflow float32 (and 1e4 overflows float16): the projection must
    still land on the sphere, in the right direction; offsets whose squares underflow must
    still be projected onto a smaller sphere or the centre; inside points are returned as is."""
    big = 1e30 if dtype in (torch.float32, F64, torch.bfloat16) else 1e4
    v = torch.tensor([[big, big], [big, -2 * big], [3.0, 4.0]], dtype=dtype)
    p = C.project_ball(v, 1.0)
    ref = C.project_ball(v.double() / big, 1.0) if big > 1 else None
    assert p.dtype == dtype and torch.isfinite(p).all()
    torch.testing.assert_close(p[:2].double(), ref[:2], rtol=1e-2 if dtype in (
        torch.float16, torch.bfloat16) else 1e-6, atol=0)
    torch.testing.assert_close(p[2].double(), torch.tensor([0.6, 0.8], dtype=F64),
                               rtol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6,
                               atol=0)
    tiny = torch.tensor([1e-30, -1e-30], dtype=F64 if dtype == F64 else torch.float32)
    assert torch.equal(C.project_ball(tiny, 0.0), torch.zeros_like(tiny))
    half = C.project_ball(tiny, 1e-30)
    torch.testing.assert_close(half, tiny / math.sqrt(2), rtol=1e-6, atol=0)
    inside = torch.tensor([0.1, -0.2], dtype=dtype)
    assert torch.equal(C.project_ball(inside, 1.0, center=torch.tensor([0.3, 0.0])), inside)


def test_projection_bad_input():
    with pytest.raises(ValueError, match="v must be finite"):
        C.project_ball(torch.tensor([math.inf, 0.0]))
    with pytest.raises(ValueError, match="v must be finite"):
        C.project_simplex(torch.tensor([math.nan, 0.0]))
    with pytest.raises(TypeError, match="floating dtype"):
        C.project_simplex(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="radius must be >= 0"):
        C.project_ball(torch.zeros(2), -1.0)
    with pytest.raises(ValueError, match="radius must be > 0"):
        C.project_simplex(torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="lo must be <= hi"):
        C.project_box(torch.zeros(2), 1.0, 0.0)


# -- the recorder -------------------------------------------------------------------------

def abs_loss(theta, batch):
    a, b = batch[..., :-1], batch[..., -1]
    return ((theta * a).sum(-1) - b).abs()


def abs_grad(theta, batch):
    a, b = batch[..., :-1], batch[..., -1]
    return torch.sign((theta * a).sum(-1) - b).unsqueeze(-1) * a


def abs_problem(seed, T, d, chains=1):
    """Batches (T, chains, d+1): rows a_t with ||a_t|| <= 1 (so G = 1) and targets b_t."""
    randn = rng(seed)
    a = randn(T, chains, d)
    a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min(1.0)
    b = randn(T, chains, 1) * 2
    return torch.cat([a, b], dim=-1)


def test_sgd_run_matches_a_hand_loop_and_autograd():
    batches = abs_problem(1, 30, 3, chains=4)
    etas = C.lr_schedule("inv_sqrt", 30, 0.7)
    theta1 = torch.zeros(4, 3, dtype=F64)
    proj = lambda z: C.project_ball(z, 1.0)  # noqa: E731
    tr = C.sgd_run(abs_loss, theta1, etas, batches, grad_fn=abs_grad, project=proj)
    auto = C.sgd_run(abs_loss, theta1, etas, batches, project=proj)
    assert torch.allclose(tr.thetas, auto.thetas, atol=1e-14)
    th = theta1.clone()
    for t in range(30):
        assert torch.allclose(tr.losses[:, t], abs_loss(th, batches[t]), atol=1e-14)
        th = proj(th - etas[t] * abs_grad(th, batches[t]))
        assert torch.allclose(tr.thetas[:, t + 1], th, atol=1e-14)
    assert tr.thetas.shape == (4, 31, 3) and tr.grads.shape == (4, 30, 3)
    assert tr.losses.shape == (4, 30)
    assert (torch.linalg.vector_norm(tr.thetas, dim=-1) <= 1 + 1e-12).all()
    # one schedule per chain: chain k uses etas * (k + 1)
    scales = torch.arange(1, 5, dtype=F64)
    per = C.sgd_run(abs_loss, theta1, etas * scales[:, None], batches, grad_fn=abs_grad)
    for k in range(4):
        one = C.sgd_run(abs_loss, theta1[k:k + 1], etas * scales[k], batches[:, k:k + 1],
                        grad_fn=abs_grad)
        assert torch.allclose(per.thetas[k], one.thetas[0], atol=1e-14)


def test_sgd_run_trace_shapes_follow_theta1():
    # theta1 (d,), (chains, d) and (2, 3, d): the records are (..., T + 1, d), (..., T, d) and
    # (..., T), each slice equal to a hand loop on that chain alone
    T, d = 3, 2
    etas = torch.tensor([0.5, 0.25, 0.125], dtype=F64)
    batches = torch.arange(T * d, dtype=F64).reshape(T, d)
    loss = lambda th, x: ((th - x) ** 2).sum(-1)  # noqa: E731
    for lead in ((), (4,), (2, 3)):
        theta1 = torch.linspace(-1, 1, math.prod(lead) * d, dtype=F64).reshape(*lead, d)
        trace = C.sgd_run(loss, theta1, etas, batches)
        assert trace.thetas.shape == (*lead, T + 1, d) and trace.grads.shape == (*lead, T, d)
        assert trace.losses.shape == (*lead, T)
        for chain in itertools.product(*map(range, lead)):
            th = theta1[chain].clone()
            for t in range(T):
                assert torch.equal(trace.thetas[chain][t], th)
                th = th - etas[t] * 2 * (th - batches[t])
            assert torch.equal(trace.thetas[chain][T], th)
    with pytest.raises(AttributeError):  # a frozen record
        trace.etas = etas


def test_sgd_run_feasibility_tolerance_is_the_documented_one():
    # project may move theta1 by max(8, d/8) eps max(1, |theta1|_inf), no more; theta1 = 0 so the
    # move is exactly k eps
    eps = torch.finfo(F64).eps
    for lead, d in (((), 3), ((2,), 800)):
        ulps = max(8.0, d / 8)
        for k, ok in ((0.99 * ulps, True), (1.01 * ulps, False)):
            step = torch.zeros(d, dtype=F64)
            step[0] = k * eps
            args = (lambda th, x: th.sum(-1), torch.zeros(*lead, d, dtype=F64),
                    torch.ones(1, dtype=F64), torch.zeros(1, d, dtype=F64))
            if ok:
                C.sgd_run(*args, project=lambda z, step=step: z + step)
            else:
                with pytest.raises(ValueError, match="theta1 must lie in the feasible set"):
                    C.sgd_run(*args, project=lambda z, step=step: z + step)


def test_bounds_refuse_schedules_that_rise_anywhere():
    # non-increasing means each step <= the one before, not just <= the first
    etas = torch.tensor([1.0, 0.5, 0.8], dtype=F64)
    for bound in (C.average_loss_bound, C.unbounded_average_bound):
        with pytest.raises(ValueError, match="etas must be non-increasing"):
            bound(1.0, 1.0, etas)
        bound(1.0, 1.0, etas, strict=False)


def test_sgd_run_bad_input():
    batches = abs_problem(0, 5, 2)
    etas = C.lr_schedule("constant", 5)
    th = torch.zeros(1, 2, dtype=F64)
    with pytest.raises(ValueError, match="theta1 must lie in the feasible set"):
        C.sgd_run(abs_loss, th + 5, etas, batches, project=C.project_ball)
    with pytest.raises(ValueError, match="at least T=5 batches"):
        C.sgd_run(abs_loss, th, etas, batches[:3])
    with pytest.raises(ValueError, match="etas must be > 0"):
        C.sgd_run(abs_loss, th, -etas, batches)
    with pytest.raises(ValueError, match="must be \\(T,\\) or"):
        C.sgd_run(abs_loss, th, etas.expand(3, 5), batches)
    with pytest.raises(ValueError, match="has shape"):
        C.sgd_run(abs_loss, th, etas, batches, grad_fn=lambda t, x: t[..., :1])
    with pytest.raises(ValueError, match="step 1 is not finite"):
        C.sgd_run(abs_loss, th, etas, batches, grad_fn=lambda t, x: t / 0.0)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        C.sgd_run(3, th, etas, batches)
    with pytest.raises(ValueError, match="same T"):
        C.regret(torch.zeros(3), torch.zeros(4))


# -- the average-loss bound (chapter 10) --------------------------------------------------

@st.composite
def non_increasing_schedules(draw, T):
    kind = draw(st.sampled_from(["constant", "inv_sqrt", "inv_sqrt_log", "inv", "linear_decay",
                                 "steps", "random"]))
    alpha = draw(st.floats(1e-3, 10.0))
    if kind == "steps":     # piecewise constant with sharp drops: adversarial for the telescope
        cuts = sorted(draw(st.lists(st.integers(1, T - 1), max_size=4)))
        levels = sorted(draw(st.lists(st.floats(1e-3, 1.0), min_size=len(cuts) + 1,
                                      max_size=len(cuts) + 1)), reverse=True)
        etas = torch.empty(T, dtype=F64)
        for lo, hi, lvl in zip([0, *cuts], [*cuts, T], levels, strict=True):
            etas[lo:hi] = lvl
        return alpha * etas
    if kind == "random":
        u = torch.tensor(draw(st.lists(st.floats(1e-3, 1.0), min_size=T, max_size=T)), dtype=F64)
        return alpha * torch.sort(u, descending=True).values
    return C.lr_schedule(kind, T, alpha)


@SETTINGS
@given(seed=seeds, d=st.integers(1, 4), radius=st.floats(0.1, 3.0), data=st.data())
def test_average_loss_bound_holds_for_every_comparator(seed, d, radius, data):
    T = data.draw(st.integers(2, 60))
    etas = data.draw(non_increasing_schedules(T))
    batches = abs_problem(seed, T, d, chains=3)
    proj = lambda z: C.project_ball(z, radius)  # noqa: E731
    theta1 = proj(rng(seed + 1)(3, d) * radius)
    tr = C.sgd_run(abs_loss, theta1, etas, batches, grad_fn=abs_grad, project=proj)
    comps = proj(rng(seed + 2)(16, 1, d) * radius)          # 16 comparators in the ball
    comp_losses = abs_loss(comps.unsqueeze(-2), batches.transpose(0, 1))   # (16, 3, T)
    reg = C.regret(tr.losses, comp_losses)
    bound = C.average_loss_bound(2 * radius, 1.0, etas)
    assert (reg <= bound + 1e-12).all()
    assert torch.allclose(bound, C.average_loss_bound_any(2 * radius, 1.0, etas))


def linear_game(etas, signs, theta1=1.0):
    """Projected SGD on l_t(theta) = s_t theta over [-1, 1]; regret against the best u."""
    theta, total = theta1, 0.0
    for eta, s in zip(etas.tolist(), signs.tolist(), strict=True):
        total += s * theta
        theta = min(1.0, max(-1.0, theta - eta * s))
    return (total + abs(float(signs.sum()))) / len(signs)


def test_increasing_schedules_break_the_formula_but_not_the_general_bound():
    T = 50
    # a warm-up that creeps at eps and jumps at the end: the formula is off by a factor ~T
    etas = torch.full((T,), 1.0 / T**2, dtype=F64)
    etas[-1] = 2.0
    signs = torch.ones(T, dtype=F64)
    reg = linear_game(etas, signs)
    wrong = C.average_loss_bound(2.0, 1.0, etas, strict=False)
    assert reg > 10 * wrong
    assert reg <= C.average_loss_bound_any(2.0, 1.0, etas)
    with pytest.raises(ValueError, match="non-increasing"):
        C.average_loss_bound(2.0, 1.0, etas)
    with pytest.raises(ValueError, match="non-increasing"):
        C.unbounded_average_bound(1.0, 1.0, etas)


@SETTINGS
@given(seed=seeds, T=st.integers(1, 40), data=st.data())
def test_general_bound_holds_for_any_schedule_on_adversarial_signs(seed, T, data):
    g = torch.Generator().manual_seed(seed)
    etas = torch.exp(3 * torch.randn(T, generator=g, dtype=F64))
    signs = torch.where(torch.rand(T, generator=g) < 0.5, -1.0, 1.0).to(F64)
    theta1 = data.draw(st.floats(-1, 1))
    assert linear_game(etas, signs, theta1) <= C.average_loss_bound_any(2.0, 1.0, etas) + 1e-12


@SETTINGS
@given(seed=seeds, T=st.integers(1, 40))
def test_upward_variation_term(seed, T):
    """V_T = 1/eta_1 + sum of the rises of 1/eta: at least max_t 1/eta_t, 1/eta_T when the
    schedule does not increase, and a direct loop agrees."""
    g = torch.Generator().manual_seed(seed)
    etas = torch.exp(2 * torch.randn(T, generator=g, dtype=F64))
    t = torch.arange(1, T + 1, dtype=F64)
    V = (C.average_loss_bound_any(1.0, 0.0, etas, prefix=True) * 2 * t).tolist()
    loop, prev = [], None
    for eta in etas.tolist():
        loop.append(1 / eta if prev is None else loop[-1] + max(0.0, 1 / eta - 1 / prev))
        prev = eta
    assert np.allclose(V, loop, rtol=1e-12)
    assert (torch.tensor(V, dtype=F64) >= (1 / etas).cummax(0).values * (1 - 1e-12)).all()
    mono = torch.sort(etas, descending=True).values
    assert torch.allclose(C.average_loss_bound_any(1.0, 0.0, mono) * 2 * T, 1 / mono[-1])


def test_prefix_bounds_match_horizon_by_horizon():
    etas = C.lr_schedule("inv_sqrt", 40, 0.3)
    for f in (C.average_loss_bound, C.average_loss_bound_any, C.unbounded_average_bound,
              C.weighted_average_bound):
        every = f(2.0, 1.5, etas, prefix=True)
        assert every.shape == (40,)
        for T in (1, 7, 40):
            assert torch.allclose(every[T - 1], f(2.0, 1.5, etas[:T]), rtol=1e-14)
    batch = torch.stack([etas, 2 * etas])                          # leading dims broadcast
    assert C.average_loss_bound(2.0, 1.0, batch).shape == (2,)


def test_bound_values_in_closed_form():
    T, D, G = 400, 4.0, 1.0
    tuned = C.lr_schedule("constant", T, D / (G * math.sqrt(T)))
    assert math.isclose(C.average_loss_bound(D, G, tuned).item(), D * G / math.sqrt(T),
                        rel_tol=1e-13)
    alpha = D / (math.sqrt(2) * G)
    sq = C.average_loss_bound(D, G, C.lr_schedule("inv_sqrt", T, alpha)).item()
    assert sq < math.sqrt(2) * D * G / math.sqrt(T)
    assert sq > 0.95 * math.sqrt(2) * D * G / math.sqrt(T)
    # unbounded form with 1/sqrt(t): dist^2/(2 a sqrt T) + G^2 a H_T / (2 sqrt T)
    u = C.unbounded_average_bound(1.3, G, C.lr_schedule("inv_sqrt", T, 0.5)).item()
    ref = 1.3**2 / (2 * 0.5 * math.sqrt(T)) + 0.5 * C.harmonic(T).item() / (2 * math.sqrt(T))
    assert math.isclose(u, ref, rel_tol=1e-12)
    with pytest.raises(ValueError, match="diameter must be >= 0"):
        C.average_loss_bound(-1.0, 1.0, tuned)
    with pytest.raises(ValueError, match="etas must be > 0"):
        C.weighted_average_bound(1.0, 1.0, torch.zeros(3))
    with pytest.raises(ValueError, match="etas must be finite"):
        C.weighted_average_bound(1.0, 1.0, torch.tensor([1.0, math.inf]))


# -- the unbounded-domain bounds (chapter 11) ---------------------------------------------

@SETTINGS
@given(seed=seeds, T=st.integers(1, 50), d=st.integers(1, 3))
def test_pathwise_identity_and_weighted_sum_bound(seed, T, d):
    g = torch.Generator().manual_seed(seed)
    etas = torch.exp(torch.randn(T, generator=g, dtype=F64))      # not monotone
    batches = abs_problem(seed, T, d)
    theta1 = 3 * rng(seed + 1)(1, d)
    phi = 3 * rng(seed + 2)(1, d)
    tr = C.sgd_run(abs_loss, theta1, etas, batches, grad_fn=abs_grad)
    e = tr.thetas[0] - phi                                           # (T+1, d)
    inner = 2 * (etas * ((e[:-1] * tr.grads[0]).sum(-1))).sum()
    exact = (e[0] ** 2).sum() - (e[-1] ** 2).sum() + (etas**2 * (tr.grads[0] ** 2).sum(-1)).sum()
    assert torch.allclose(inner, exact, rtol=1e-10, atol=1e-10)
    lhs = (etas * (tr.losses[0] - abs_loss(phi, batches[:, 0]))).sum()
    dist0 = torch.linalg.vector_norm(theta1 - phi).item()
    rhs = C.weighted_average_bound(dist0, 1.0, etas) * etas.sum()
    assert lhs <= rhs + 1e-10


@SETTINGS
@given(T=st.integers(1, 30), alpha=st.floats(0.01, 3.0), theta1=st.floats(-5, 5),
       G=st.sampled_from([1.0, 0.3, 2.5]))
def test_bounds_are_attained_by_a_linear_loss(T, alpha, theta1, G):
    """L(x, theta) = G theta (|g| = G always): comparing with phi = theta_{T+1} turns every
    inequality of the pathwise bound into an equality, so the constants cannot be smaller.
    G != 1 tells G from G^2."""
    etas = C.lr_schedule("inv_sqrt", T, alpha)
    thetas = theta1 - G * torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(etas, 0)])
    phi = thetas[-1]
    lhs = (etas * G * (thetas[:-1] - phi)).sum()
    dist0 = abs(theta1 - phi.item())
    assert torch.allclose(lhs, C.weighted_average_bound(dist0, G, etas) * etas.sum(),
                          rtol=1e-12)
    const = C.lr_schedule("constant", T, alpha)
    thetas = theta1 - G * alpha * torch.arange(T + 1, dtype=F64)
    gap = G * (thetas[:-1] - thetas[-1]).mean()
    assert torch.allclose(gap, C.unbounded_average_bound(G * alpha * T, G, const), rtol=1e-12)


@pytest.mark.parametrize("G", [0.4, 1.0, 3.0])
@pytest.mark.parametrize("T", [1, 2, 9, 250])
def test_average_loss_bound_is_attained_by_a_walk_across_the_interval(G, T):
    """Theta = [-1, 1] (D = 2), l_t(theta) = G theta, theta_1 = 1, u = -1, eta = 2/(G T): the
    iterate walks to u without touching the boundary, and regret = bound = G (1 + 1/T) for
    the theorem and for the bound for any schedule."""
    etas = C.lr_schedule("constant", T, 2 / (G * T))
    batches = torch.zeros(T, 1, dtype=F64)
    tr = C.sgd_run(lambda th, x: G * th.sum(-1), torch.ones(1, dtype=F64), etas, batches,
                   project=lambda z: z.clamp(-1.0, 1.0))
    reg = C.regret(tr.losses, torch.full((T,), -G, dtype=F64)).item()
    assert math.isclose(reg, G * (1 + 1 / T), rel_tol=1e-12)
    assert math.isclose(C.average_loss_bound(2.0, G, etas).item(), reg, rel_tol=1e-12)
    assert math.isclose(C.average_loss_bound_any(2.0, G, etas).item(), reg, rel_tol=1e-12)


@pytest.mark.parametrize(("D", "G"), [(4.0, 1.0), (3.0, 2.5), (0.5, 0.2)])
def test_average_loss_bound_closed_forms_for_any_constants(D, G):
    """Tuned constant rate: DG/sqrt(T) exactly; alpha/sqrt(t) with alpha* = D/(sqrt2 G): the
    theorem's right side with the exact sum, below sqrt2 DG/sqrt(T); unbounded and weighted
    forms against their formulas with G != 1 (which a G written for G^2 would fail)."""
    for T in (1, 5, 400):
        tuned = C.lr_schedule("constant", T, D / (G * math.sqrt(T)))
        assert math.isclose(C.average_loss_bound(D, G, tuned).item(), D * G / math.sqrt(T),
                            rel_tol=1e-13)
        a = D / (math.sqrt(2) * G)
        etas = C.lr_schedule("inv_sqrt", T, a)
        S = C.power_sums(T, 0.5)[-1].item()
        exact = D**2 / (2 * a * math.sqrt(T)) + G**2 * a * S / (2 * T)
        assert math.isclose(C.average_loss_bound(D, G, etas).item(), exact, rel_tol=1e-13)
        assert exact <= math.sqrt(2) * D * G / math.sqrt(T) * (1 + 1e-14)
        H = C.harmonic(T).item()
        assert math.isclose(C.unbounded_average_bound(D, G, etas).item(),
                            D**2 / (2 * a * math.sqrt(T)) + G**2 * a * H / (2 * math.sqrt(T)),
                            rel_tol=1e-12)
        assert math.isclose(C.weighted_average_bound(D, G, etas).item(),
                            (D**2 + G**2 * a**2 * H) / (2 * a * S), rel_tol=1e-12)


@SETTINGS
@given(seed=seeds, T=st.integers(1, 9), theta1=st.floats(-4, 4), monotone=st.booleans())
def test_expectation_bounds_exactly_on_a_two_point_distribution(seed, T, theta1, monotone):
    """x = +-1 with probability 1/2, L(x, theta) = |theta - x|: enumerate all 2^T paths, so the
    expectations are exact. L(theta) = max(1, |theta|), L* = 1 on [-1, 1], theta* = 0."""
    g = torch.Generator().manual_seed(seed)
    etas = torch.exp(torch.randn(T, generator=g, dtype=F64))
    if monotone:
        etas = torch.sort(etas, descending=True).values
    paths = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=T)), dtype=F64)
    theta = torch.full((paths.shape[0],), theta1, dtype=F64)
    gaps = []
    for t in range(T):
        gaps.append(torch.clamp(theta.abs(), min=1.0).mean() - 1.0)
        theta = theta - etas[t] * torch.sign(theta - paths[:, t])
    gaps = torch.stack(gaps)
    weighted = (etas * gaps).sum() / etas.sum()
    assert weighted <= C.weighted_average_bound(abs(theta1), 1.0, etas) + 1e-12
    if monotone:
        assert gaps.mean() <= C.unbounded_average_bound(abs(theta1), 1.0, etas) + 1e-12


# -- schedules, sums, harmonic numbers ----------------------------------------------------

def test_schedules():
    T = 1000
    for kind in C.SCHEDULES:
        etas = C.lr_schedule(kind, T, 0.5, p=0.75 if kind == "power" else None)
        assert etas.shape == (T,) and etas.dtype == F64 and (etas > 0).all()
        assert torch.isfinite(etas).all()
        monotone = bool((etas[1:] <= etas[:-1]).all())
        assert monotone == (kind != "linear_warmup"), kind
    assert torch.allclose(C.lr_schedule("inv_sqrt_log", 3)[:2], torch.tensor([1.0, 2**-0.5],
                                                                             dtype=F64))
    assert C.lr_schedule("linear_decay", 4, 2.0).tolist() == [2.0, 1.5, 1.0, 0.5]
    by_hand = {  # t = 1..4, alpha = 0.5, each kind's formula in Python floats
        "constant": lambda t: 0.5, "inv_sqrt": lambda t: 0.5 / math.sqrt(t),
        "inv_sqrt_log": lambda t: 0.5 / math.sqrt(t * max(1.0, math.log(t))),
        "inv": lambda t: 0.5 / t, "power": lambda t: 0.5 * t**-0.75,
        "linear_decay": lambda t: 0.5 * (4 - t + 1) / 4, "linear_warmup": lambda t: 0.5 * t / 4}
    assert by_hand.keys() == C.SCHEDULES.keys()
    for kind, f in by_hand.items():
        got = C.lr_schedule(kind, 4, 0.5, p=0.75 if kind == "power" else None).tolist()
        assert got == pytest.approx([f(t) for t in range(1, 5)], rel=1e-15), kind
    assert C.lr_schedule("constant", 3, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="kind must be one of"):
        C.lr_schedule("cosine", 10)
    with pytest.raises(ValueError, match="p is required"):
        C.lr_schedule("power", 10)
    with pytest.raises(ValueError, match="T must be >= 1"):
        C.lr_schedule("constant", 0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        C.lr_schedule("constant", 3, 0.0)


def test_partial_sums_and_harmonic_numbers():
    T = 10**5
    n = torch.arange(1, T + 1, dtype=F64)
    s_half = C.power_sums(T, 0.5)
    assert (s_half <= 2 * n.sqrt() - 1 + 1e-9).all()                   # the chapter's lemma
    assert (s_half >= 2 * (n + 1).sqrt() - 2 - 1e-9).all()              # integral lower bound
    assert (s_half[1:] < 2 * n[1:].sqrt() - 1).all()                    # strict from T = 2
    h = C.power_sums(T, 1.0)
    assert torch.allclose(C.harmonic(n), h, rtol=1e-13)
    big = torch.tensor([1e6, 1e9], dtype=F64)
    asym = big.log() + C.EULER_GAMMA + 1 / (2 * big) - 1 / (12 * big**2)
    assert torch.allclose(C.harmonic(big), asym, rtol=1e-14)
    assert (h <= 1 + n.log() + 1e-12).all() and (h >= (n + 1).log()).all()
    assert C.harmonic(0.0).item() == 0.0
    with pytest.raises(ValueError, match="n must be >= 0"):
        C.harmonic(-1.0)


# -- the Gaussian absolute-loss risk ------------------------------------------------------

@pytest.mark.parametrize("z", [-9.0, -1.3, 0.0, 0.4, 2.5, 12.0])
def test_gaussian_abs_risk_against_quadrature(z):
    quad, _ = scipy.integrate.quad(lambda x: abs(z - x) * scipy.stats.norm.pdf(x), -np.inf,
                                   np.inf, points=None, epsabs=1e-13, epsrel=1e-13)
    got = C.gaussian_abs_risk(torch.tensor([z], dtype=F64)).item()
    assert math.isclose(got, quad, rel_tol=1e-9, abs_tol=1e-12)


def test_gaussian_abs_risk_of_a_batch_is_row_by_row():
    # theta (..., d): the d in d^{-1/2} is the last dimension, not the batch
    theta = torch.tensor([[0.7, -1.2, 0.1, 2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 0.5]],
                         dtype=F64)
    got = C.gaussian_abs_risk(theta)
    assert got.shape == (3,)
    assert torch.equal(got, torch.stack([C.gaussian_abs_risk(row) for row in theta]))


def test_gaussian_abs_risk_minimum_and_monte_carlo():
    d = 4
    zero = C.gaussian_abs_risk(torch.zeros(d, dtype=F64)).item()
    assert math.isclose(zero, math.sqrt(2 * d / math.pi), rel_tol=1e-15)
    theta = torch.tensor([0.7, -1.2, 0.1, 2.0], dtype=F64)
    assert C.gaussian_abs_risk(theta) > zero
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400_000, d, generator=g, dtype=F64)
    mc = ((theta - x).abs().sum(-1) / math.sqrt(d)).mean().item()
    assert abs(mc - C.gaussian_abs_risk(theta).item()) < 5e-3


def test_sgd_run_bad_callables_and_unbroadcastable_schedules():
    batches = abs_problem(0, 5, 2)
    etas = C.lr_schedule("constant", 5)
    th = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(TypeError, match="grad_fn must be callable"):
        C.sgd_run(abs_loss, th, etas, batches, grad_fn=1.0)
    with pytest.raises(TypeError, match="project must be callable"):
        C.sgd_run(abs_loss, th, etas, batches, project="ball")
    # one schedule per chain, but 3 schedules for 2 chains: (3,) and (2,) do not broadcast
    with pytest.raises(ValueError, match=r"etas of shape \(3, 5\) must be \(T,\) or \(\.\.\., T\) "
                                         r"broadcasting to theta1's leading shape \(2,\)"):
        C.sgd_run(abs_loss, th, etas.expand(3, 5), batches)


def test_sgd_run_refuses_callables_that_change_the_shape():
    batches = abs_problem(0, 5, 2)
    etas = C.lr_schedule("constant", 5)
    th = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"loss_fn must return one loss per chain, shape \(2,\); "
                                         r"got \(\) at step 1"):
        C.sgd_run(lambda t, x: abs_loss(t, x).sum(), th, etas, batches, grad_fn=abs_grad)
    with pytest.raises(ValueError, match=r"project must return its argument's shape \(2, 2\), "
                                         r"got \(1, 2\)"):
        C.sgd_run(abs_loss, th, etas, batches, grad_fn=abs_grad, project=lambda z: z[:1])


def test_sgd_run_records_the_promoted_dtype_like_a_hand_loop():
    """float32 chains with float64 rates stay float32; a float64 gradient promotes the iterates
    from step 2 on, and the record holds theta_1 in that dtype too."""
    batches = abs_problem(2, 6, 2, chains=3)
    etas = C.lr_schedule("inv_sqrt", 6, 0.5)
    th32 = torch.full((3, 2), 0.3, dtype=torch.float32)
    tr = C.sgd_run(abs_loss, th32, etas, batches.float(), grad_fn=abs_grad)
    assert tr.thetas.dtype == tr.grads.dtype == tr.losses.dtype == torch.float32
    tr = C.sgd_run(abs_loss, th32, etas, batches, grad_fn=lambda t, x: abs_grad(t.double(), x))
    assert tr.thetas.dtype == torch.float64 and tr.grads.dtype == torch.float64
    th = th32
    for t in range(6):
        assert torch.equal(tr.thetas[:, t], th.to(torch.float64))
        assert torch.equal(tr.grads[:, t], abs_grad(th.double(), batches[t]))
        th = th - etas[t].to(th) * abs_grad(th.double(), batches[t])
    assert torch.equal(tr.thetas[:, 6], th)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

def test_projections_refuse_parameters_that_do_not_broadcast_against_v():
    v = torch.ones(600, dtype=F64)
    with pytest.raises(ValueError, match="center of shape \\(3,\\) must broadcast against v"):
        C.project_ball(v, 1.0, center=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="lo of shape"):
        C.project_box(v, -torch.ones(3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="hi of shape"):
        C.project_box(v, -1.0, torch.ones(3, dtype=F64))
    # a centre or box that would grow v is refused too: the projection keeps v's shape
    with pytest.raises(ValueError, match="center"):
        C.project_ball(torch.ones(3, dtype=F64), 1.0, center=torch.zeros(2, 3, dtype=F64))
    # broadcasting ones are fine
    assert C.project_box(torch.full((4, 3), 5.0, dtype=F64), torch.zeros(3, dtype=F64),
                         torch.ones(4, 1, dtype=F64)).eq(1.0).all()


def test_sgd_run_names_batches():
    def loss(th, x):
        return ((th - x) ** 2).sum(-1)

    theta, etas = torch.zeros(2, dtype=F64), torch.full((3,), 0.1, dtype=F64)
    with pytest.raises(ValueError, match="batches"):
        C.sgd_run(loss, theta, etas, torch.tensor(1.0, dtype=F64))
    with pytest.raises(TypeError, match="batches"):
        C.sgd_run(loss, theta, etas, 5)
    bad = torch.zeros(3, 2, dtype=F64)
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match="step 2 .*batches\\[1\\]"):
        C.sgd_run(loss, theta, etas, bad)


def test_sgd_run_short_batches_message_names_etas():
    def loss(th, x):
        return ((th - x) ** 2).sum(-1)

    with pytest.raises(ValueError, match="T=6 batches \\(T = etas.shape\\[-1\\]\\), got 3"):
        C.sgd_run(loss, torch.zeros(2, dtype=F64), torch.full((6,), 0.1, dtype=F64),
                  torch.zeros(3, 2, dtype=F64))


@pytest.mark.parametrize("bad", [None, "3", [1, None]])
def test_harmonic_names_n_for_a_non_number(bad):
    # None reached math's own "must be real number, not NoneType" before
    with pytest.raises(TypeError, match="^n must be"):
        C.harmonic(bad)


def test_regret_refuses_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"traj_losses \(2, 3, 2\) and comp_losses"):
        C.regret(torch.ones(2, 3, 2), torch.ones(16, 3, 2))
    assert C.regret(torch.ones(3, 2), torch.zeros(16, 3, 2)).shape == (16, 3)


# -- referee findings -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64])
def test_sgd_run_accepts_starts_projected_in_their_own_dtype(dtype):
    """The feasibility check follows the dtype's eps: a float32 point projected by the library
    moves by an ulp when projected again, which the old absolute 1e-9 refused."""
    g = torch.Generator().manual_seed(3)
    v = torch.randn(200, 5, generator=g, dtype=F64).mul(3).to(dtype)
    batches = torch.randn(2, 5, generator=g, dtype=F64).to(dtype)
    etas = torch.full((2,), 0.1, dtype=dtype)
    for proj in (C.project_ball, C.project_simplex):
        th = proj(v)
        C.sgd_run(lambda t, x: (t * x).sum(-1), th, etas, batches, project=proj)
        with pytest.raises(ValueError, match="theta1 must lie in the feasible set"):
            C.sgd_run(lambda t, x: (t * x).sum(-1), th * 1.5, etas, batches, project=proj)


def test_harmonic_numbers_of_small_real_n():
    """Below n = 1/4 a series replaces psi(n+1) + gamma, which cancelled (1e-6 gave 1.19e-6)."""
    z2, z3, z4 = math.pi**2 / 6, 1.2020569031595942, math.pi**4 / 90
    for dtype in (torch.float32, F64):
        n = torch.tensor([1e-30, 1e-6, 1e-4], dtype=dtype)
        x = n.double()
        want = (z2 * x - z3 * x**2 + z4 * x**3).to(dtype)          # + O(n^4)
        torch.testing.assert_close(C.harmonic(n), want, rtol=1e-12 if dtype == F64 else 1e-6,
                                   atol=0)
    # the two branches join: H_{1/4} = 4 - pi/2 - 3 ln 2, the digamma value at 1/4
    quarter = 4 - math.pi / 2 - 3 * math.log(2)
    for n in (0.25 - 1e-13, 0.25):
        assert C.harmonic(n).item() == pytest.approx(quarter, rel=1e-14)


def test_ball_projection_is_differentiable_inside_the_ball_even_at_its_centre():
    # inside the ball the projection is the identity, so its Jacobian is I; at the centre the
    # offset's largest entry is 0 and the unused unit vector must not turn the gradient to NaN
    for v in (torch.zeros(3, dtype=F64), torch.tensor([0.1, -0.2, 0.0], dtype=F64)):
        jac = torch.autograd.functional.jacobian(lambda z: C.project_ball(z, 1.0), v)
        assert torch.equal(jac, torch.eye(3, dtype=F64))
    v = torch.tensor([3.0, 4.0], dtype=F64)   # outside: d(v/|v|)/dv = (I - u u^T)/|v|
    u = v / 5
    jac = torch.autograd.functional.jacobian(lambda z: C.project_ball(z, 1.0), v)
    torch.testing.assert_close(jac, (torch.eye(2, dtype=F64) - torch.outer(u, u)) / 5)


def test_ball_projection_of_an_offset_that_overflows():
    v = torch.tensor([[3e38, 0.0], [1.0, 2.0]])
    c = torch.tensor([[-3e38, 0.0], [0.0, 0.0]])
    out = C.project_ball(v, 2.0, center=c)
    assert torch.equal(out[0], c[0])              # c + 2 e_1 rounds to c in float32
    torch.testing.assert_close(out[1], torch.tensor([1.0, 2.0]) / math.sqrt(5) * 2)
    # a radius as huge as the offset: the direction e_1 of v - c must survive the halving,
    # c + r e_1 = (-3e38 + 3e38, 0) = 0 exactly
    assert torch.equal(C.project_ball(v[:1], 3e38, center=c[:1]), torch.zeros(1, 2))


def test_schedules_refuse_a_non_floating_dtype():
    for bad in (torch.int64, torch.bool, "float64"):
        with pytest.raises(TypeError, match="dtype"):
            C.lr_schedule("constant", 3, 0.5, dtype=bad)
        with pytest.raises(TypeError, match="dtype"):
            C.power_sums(3, 1.0, dtype=bad)
