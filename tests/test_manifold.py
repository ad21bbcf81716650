"""Tests of dlmath.manifold: steepest directions against scipy's constrained optimiser and
linear programmes, property tests (unit norm, tangency, optimality against random feasible
directions), the sphere steps and retractions, and bad input and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dlmath import manifold as mf
from dlmath.msign import polar

F64 = torch.float64
SETTINGS = settings(max_examples=60, deadline=None)

entries = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
pairs = st.integers(2, 8).flatmap(
    lambda n: st.tuples(arrays(np.float64, n, elements=entries),
                        arrays(np.float64, n, elements=entries)))
exponents = st.sampled_from([1.25, 1.5, 2.0, 3.0, 4.0, 7.0])


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def unit(x, p=2.0):
    return x / torch.linalg.vector_norm(x, ord=p, dim=-1, keepdim=True)


def slsqp_max(g, constraints, n, starts=12, seed=0):
    """Best local maximum of <g, x> found by SLSQP from several random starts."""
    g = np.asarray(g)
    rng = np.random.default_rng(seed)
    best, arg = -np.inf, None
    for _ in range(starts):
        res = scipy.optimize.minimize(lambda x: -g @ x, rng.standard_normal(n), method="SLSQP",
                                      constraints=constraints,
                                      options={"ftol": 1e-14, "maxiter": 1000})
        feasible = all(abs(c["fun"](res.x)) < 1e-8 for c in constraints)
        if res.success and feasible and -res.fun > best:
            best, arg = -res.fun, res.x
    assert arg is not None, "SLSQP found no feasible optimum"
    return best, arg


def linprog_max(g, A_eq=None, b_eq=None):
    """max <g, x> s.t. |x_i| <= 1 (and A_eq x = b_eq) by the HiGHS LP solver."""
    n = len(g)
    res = scipy.optimize.linprog(-np.asarray(g), A_eq=A_eq, b_eq=b_eq,
                                 bounds=[(-1, 1)] * n, method="highs")
    assert res.status == 0
    return -res.fun, res.x


# -- unconstrained steepest directions -------------------------------------------------------

@pytest.mark.parametrize("p", [1.5, 3.0, 4.0])
def test_lp_direction_matches_slsqp(p):
    g = randn(6, seed=1)
    phi = mf.steepest_direction(g, "lp", p=p)
    cons = [{"type": "eq", "fun": lambda x: np.sum(np.abs(x) ** p) - 1}]
    best, arg = slsqp_max(g.numpy(), cons, 6)
    assert float(g @ phi) == pytest.approx(best, abs=1e-8)
    assert np.abs(arg - phi.numpy()).max() < 1e-6
    q = p / (p - 1)
    assert float(g @ phi) == pytest.approx(float(torch.linalg.vector_norm(g, ord=q)), rel=1e-12)


def test_l2_and_fro_directions():
    g = randn(7, seed=2)
    assert torch.allclose(mf.steepest_direction(g), g / g.norm(), atol=0, rtol=1e-15)
    G = randn(3, 2, seed=3)
    cons = [{"type": "eq", "fun": lambda x: x @ x - 1}]
    best, _ = slsqp_max(G.flatten().numpy(), cons, 6, starts=4)
    assert float((G * mf.steepest_direction(G, "fro")).sum()) == pytest.approx(best, abs=1e-8)


def test_linf_and_l1_directions_against_linprog():
    g = randn(9, seed=4)
    value, x = linprog_max(g.numpy())
    phi = mf.steepest_direction(g, "linf")
    assert np.array_equal(x, phi.numpy())
    assert float(g @ phi) == pytest.approx(value, rel=1e-12)
    # l1 ball: max <g, x> s.t. sum |x_i| <= 1, as an LP in (x+, x-) >= 0
    res = scipy.optimize.linprog(np.concatenate([-g.numpy(), g.numpy()]),
                                 A_ub=np.ones((1, 18)), b_ub=[1.0], bounds=[(0, None)] * 18)
    x1 = res.x[:9] - res.x[9:]
    assert np.allclose(x1, mf.steepest_direction(g, "l1").numpy(), atol=1e-12)
    assert mf.steepest_direction(g, "lp", p=math.inf).equal(phi)
    # a batch: each row picks its own largest |g_i|
    rows = randn(4, 9, seed=5)
    batch = mf.steepest_direction(rows, "l1")
    assert torch.equal(batch, torch.stack([mf.steepest_direction(r, "l1") for r in rows]))
    assert torch.equal(batch.abs().sum(-1), torch.ones(4, dtype=F64))


def test_spectral_direction_is_msign_and_beats_random():
    G = randn(6, 4, seed=5)
    phi = mf.steepest_direction(G, "spectral")
    assert torch.equal(phi, polar(G))
    nuclear = float(torch.linalg.svdvals(G).sum())
    assert float((G * phi).sum()) == pytest.approx(nuclear, rel=1e-12)
    others = randn(2000, 6, 4, seed=6)
    others = others / torch.linalg.matrix_norm(others, 2)[:, None, None]
    assert float((G * others).sum((-2, -1)).max()) < nuclear


@SETTINGS
@given(arrays(np.float64, st.integers(1, 8), elements=entries), exponents)
def test_lp_direction_properties(g, p):
    g = torch.from_numpy(g)
    assume(g.abs().max() > 1e-6)
    phi = mf.steepest_direction(g, "lp", p=p)
    assert float(torch.linalg.vector_norm(phi, ord=p)) == pytest.approx(1.0, abs=1e-12)
    others = unit(randn(300, g.numel(), seed=7), p)
    assert (others @ g <= g @ phi + 1e-12 * g.abs().max()).all()


def test_lp_direction_is_scale_safe_and_batched():
    g = torch.tensor([[1e300, -3e299, 0.0], [1e-300, 2e-300, -1e-300]], dtype=F64)
    for p in (1.5, 4.0):
        phi = mf.steepest_direction(g, "lp", p=p)
        assert torch.isfinite(phi).all()
        assert torch.allclose(torch.linalg.vector_norm(phi, ord=p, dim=-1),
                              torch.ones(2, dtype=F64), atol=1e-12)


def test_zero_gradient_gives_zero_direction():
    for norm, p in [("l2", None), ("lp", 3.0), ("linf", None), ("l1", None)]:
        assert torch.equal(mf.steepest_direction(torch.zeros(4), norm, p=p), torch.zeros(4))
    for norm in ("fro", "spectral"):
        assert torch.equal(mf.steepest_direction(torch.zeros(3, 2), norm), torch.zeros(3, 2))


def test_steepest_direction_bad_input():
    with pytest.raises(ValueError, match="norm"):
        mf.steepest_direction(torch.ones(3), "l3")
    with pytest.raises(ValueError, match="needs the exponent p"):
        mf.steepest_direction(torch.ones(3), "lp")
    with pytest.raises(ValueError, match="p must be > 1"):
        mf.steepest_direction(torch.ones(3), "lp", p=0.5)
    with pytest.raises(ValueError, match="p is only used"):
        mf.steepest_direction(torch.ones(3), "l2", p=2.0)
    with pytest.raises(ValueError, match="g must be finite"):
        mf.steepest_direction(torch.tensor([1.0, math.nan]))
    with pytest.raises(TypeError, match="floating dtype"):
        mf.steepest_direction(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least 2"):
        mf.steepest_direction(torch.ones(3), "spectral")


def test_signed_power():
    x = torch.tensor([-8.0, 0.0, 4.0])
    assert torch.equal(mf.signed_power(x, 0.5), torch.tensor([-2.0 * math.sqrt(2), 0.0, 2.0]))
    assert torch.equal(mf.signed_power(x, 0.0), torch.tensor([-1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="a must be >= 0"):
        mf.signed_power(x, -1.0)


# -- the sphere ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_sphere_direction_matches_slsqp(seed):
    w, g = unit(randn(8, seed=10 + seed)), randn(8, seed=20 + seed)
    phi = mf.sphere_direction(w, g)
    cons = [{"type": "eq", "fun": lambda x: x @ x - 1},
            {"type": "eq", "fun": lambda x: w.numpy() @ x}]
    best, arg = slsqp_max(g.numpy(), cons, 8, starts=5, seed=seed)
    assert np.abs(arg - phi.numpy()).max() < 1e-6
    assert float(g @ phi) == pytest.approx(float(mf.sphere_project(w, g).norm()), rel=1e-12)


def test_exact_direction_matches_slsqp():
    w, g, eta = unit(randn(6, seed=30)), randn(6, seed=31), 0.3
    cons = [{"type": "eq", "fun": lambda x: x @ x - 1},
            {"type": "eq", "fun": lambda x: np.sum((w.numpy() - eta * x) ** 2) - 1}]
    _, arg = slsqp_max(g.numpy(), cons, 6, starts=8)
    phi = mf.sphere_exact_direction(w, g, eta)
    assert np.abs(arg - phi.numpy()).max() < 1e-6
    assert float(w @ phi) == pytest.approx(eta / 2, abs=1e-14)


@SETTINGS
@given(pairs, st.floats(0.0, 1.5))
def test_sphere_properties(pair, eta):
    w, g = (torch.from_numpy(a) for a in pair)
    assume(w.norm() > 1e-3)
    w = unit(w)
    phi = mf.sphere_direction(w, g)
    assert abs(float(w @ phi)) < 1e-13
    size = float(phi.norm())
    assert size == 0.0 or abs(size - 1) < 1e-13
    # optimality against random feasible (unit, tangent) directions
    # project twice: one pass leaves rounding along w where a sample is nearly parallel to w
    others = unit(mf.sphere_project(w, mf.sphere_project(w, randn(200, w.numel(), seed=40))))
    assert (others @ g <= g @ phi + 1e-12 * max(1.0, float(g.abs().max()))).all()
    for retraction in ("normalize", "exact"):
        step = mf.sphere_step(w, g, eta, retraction=retraction)
        assert abs(float(step.norm()) - 1) < 1e-14
        if size > 0:  # the chord length: eta for "exact", 2 sin(arctan(eta) / 2) otherwise
            chord = eta if retraction == "exact" else 2 * math.sin(math.atan(eta) / 2)
            assert float((step - w).norm()) == pytest.approx(chord, abs=1e-12)


def test_step_first_order_agreement():
    """Both retractions rotate along the same great circle; angles differ by O(eta^3)."""
    w, g = unit(randn(5, seed=50)), randn(5, seed=51)
    for eta in (0.1, 0.01):
        a = mf.sphere_step(w, g, eta)
        b = mf.sphere_step(w, g, eta, retraction="exact")
        angle = float(torch.arccos((a @ b).clamp(-1, 1)))
        expected = 2 * math.asin(eta / 2) - math.atan(eta)  # = 3 eta^3 / 8 + O(eta^5)
        assert angle == pytest.approx(expected, rel=1e-3, abs=1e-9)


def test_critical_points_and_bad_w():
    w = unit(randn(4, seed=60))
    for g in (torch.zeros(4, dtype=F64), 3.0 * w, -1e-20 * w):
        assert torch.equal(mf.sphere_direction(w, g), torch.zeros(4, dtype=F64))
        assert torch.allclose(mf.sphere_step(w, g, 0.5), w, atol=1e-15)
    w3 = unit(w, 3.0)
    for g in (torch.zeros(4, dtype=F64), 3.0 * mf.signed_power(w3, 2.0),
              -1e-20 * mf.signed_power(w3, 2.0)):
        assert torch.equal(mf.lp_sphere_direction(w3, g, 3.0), torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="w must be non-zero"):
        mf.sphere_direction(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="same last dimension"):
        mf.sphere_project(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="eta must be <= 2"):
        mf.sphere_step(w, w, 3.0, retraction="exact")
    with pytest.raises(ValueError, match="retraction"):
        mf.sphere_step(w, w, 0.1, retraction="cayley")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        mf.sphere_step(w, w, -0.1)


def test_projection_is_tangent_off_the_sphere():
    w, g = 1.7 * unit(randn(6, seed=70)), randn(6, seed=71)
    assert abs(float(mf.sphere_project(w, g) @ w)) < 1e-14
    naive = g - (g @ w) * w  # the formula that assumes ||w|| = 1
    assert abs(float(naive @ w)) > 0.1


def test_tangency_near_a_critical_point():
    """P_w g tiny next to g: one projection pass leaves a visible normal component."""
    w = unit(randn(50, seed=72))
    g = 1e3 * w + 1e-9 * mf.sphere_project(w, randn(50, seed=73))
    phi = mf.sphere_direction(w, g)
    assert float(phi.norm()) == pytest.approx(1.0, abs=1e-12)
    assert abs(float(w @ phi)) < 1e-12


def test_riemannian_sgd_finds_smallest_eigenvector():
    n = 20
    B = randn(n, n, seed=80)
    A = (B + B.T) / math.sqrt(2 * n) + 3 * torch.eye(n, dtype=F64)  # positive definite
    lam, V = torch.linalg.eigh(A)
    path = mf.riemannian_sgd_sphere(lambda w: 2 * A @ w, randn(n, seed=81), 2000,
                                    lambda t: 0.2 / math.sqrt(t))
    w = path[-1]
    assert path.shape == (2001, n)
    assert (torch.linalg.vector_norm(path, dim=-1) - 1).abs().max() < 1e-14
    assert abs(float(w @ V[:, 0])) > 0.999
    assert 0 <= float(w @ A @ w - lam[0]) < 1e-4


# -- the l_p sphere and its p -> infinity limit ---------------------------------------------

@pytest.mark.parametrize("p", [1.5, 3.0, 4.0])
def test_lp_sphere_direction_matches_slsqp(p):
    w, g = unit(randn(6, seed=90), p), randn(6, seed=91)
    u = mf.signed_power(w, p - 1).numpy()
    phi, lam = mf.lp_sphere_direction(w, g, p, return_lambda=True)
    cons = [{"type": "eq", "fun": lambda x: np.sum(np.abs(x) ** p) - 1},
            {"type": "eq", "fun": lambda x: u @ x}]
    best, arg = slsqp_max(g.numpy(), cons, 6, starts=12)
    assert float(g @ phi) == pytest.approx(best, abs=1e-8)
    assert np.abs(arg - phi.numpy()).max() < 1e-6
    assert abs(float(phi @ torch.from_numpy(u))) < 1e-12
    # the multiplier solves the scalar equation (brentq on the same function)
    q1 = 1 / (p - 1)
    h = lambda t: float(torch.from_numpy(u) @ mf.signed_power(g + t * torch.from_numpy(u), q1))  # noqa: E731
    assert float(lam) == pytest.approx(scipy.optimize.brentq(h, -50, 50, xtol=1e-14), abs=1e-10)


@SETTINGS
@given(pairs, exponents)
def test_lp_sphere_properties(pair, p):
    w, g = (torch.from_numpy(a) for a in pair)
    assume(w.abs().max() > 1e-3 and g.abs().max() > 1e-3)
    w = unit(w, p)
    u = mf.signed_power(w, p - 1)
    phi = mf.lp_sphere_direction(w, g, p)
    size = float(torch.linalg.vector_norm(phi, ord=p))
    assume(size > 0)
    assert abs(size - 1) < 1e-12
    assert abs(float(u @ phi)) < 1e-10 * float(u.abs().sum())
    # optimality against random feasible directions: project onto u^perp, rescale to the p-sphere
    z = randn(200, w.numel(), seed=92)
    for _ in range(2):
        z = z - (z @ u)[:, None] * u / (u @ u)
    z = unit(z, p)
    assert (z @ g <= g @ phi + 1e-9 * float(g.abs().max())).all()


def test_lp_sphere_p2_is_the_projection():
    w, g = unit(randn(3, 7, seed=93)), randn(3, 7, seed=94)
    phi, lam = mf.lp_sphere_direction(w, g, 2.0, return_lambda=True)
    assert torch.allclose(phi, mf.sphere_direction(w, g), atol=1e-13)
    assert torch.allclose(lam, -(g * w).sum(-1), atol=1e-12)


def test_linf_direction_against_linprog():
    w, g = randn(8, seed=95), randn(8, seed=96)
    k = int(w.abs().argmax())
    e = np.zeros(8)
    e[k] = float(w[k].sign())
    value, x = linprog_max(g.numpy(), A_eq=e[None], b_eq=[0.0])
    phi = mf.linf_sphere_direction(w, g)
    expected = g.sign().clone()
    expected[k] = 0
    assert torch.equal(phi, expected)
    assert np.array_equal(x, phi.numpy())
    assert torch.equal(mf.lp_sphere_direction(w, g, math.inf), phi)
    # the frozen coordinate is +0.0 even where w_k < 0 (no "-0.0" in printed output)
    frozen = mf.linf_sphere_direction(torch.tensor([0.1, -2.0, 0.5], dtype=F64),
                                      torch.tensor([1.0, 1.0, -1.0], dtype=F64))
    assert frozen.tolist() == [1.0, 0.0, -1.0] and not bool(torch.signbit(frozen[1]))


@pytest.mark.parametrize("scale", [1.0, 0.25])
@pytest.mark.parametrize("signs", [(1, 1), (1, -1, 1), (-1, 1, 1, -1)])
def test_linf_direction_with_ties_against_linprog(signs, scale):
    # scale 0.25: the tied |w_i| lie below 1, so the sign of w_i is not the sign of w_i - 1
    n = 7
    w = scale * 0.5 * randn(n, seed=97).clamp(-0.9, 0.9)
    w[: len(signs)] = scale * torch.tensor(signs, dtype=F64)
    g = randn(n, seed=98)
    s = np.zeros(n)
    s[: len(signs)] = signs
    value, _ = linprog_max(g.numpy(), A_eq=s[None], b_eq=[0.0])
    phi = mf.linf_sphere_direction(w, g)
    assert float(g @ phi) == pytest.approx(value, rel=1e-12)
    assert float(torch.from_numpy(s) @ phi) == 0.0
    assert phi.abs().max() <= 1


def test_lp_sphere_tends_to_linf_rule():
    w, g = randn(6, seed=99), randn(6, seed=100)
    limit = mf.linf_sphere_direction(w, g)
    # w is left unnormalised: the direction depends on w only through the tangent space
    errors = [float((mf.lp_sphere_direction(w, g, p) - limit).abs().max())
              for p in (10.0, 100.0, 1000.0, 10000.0)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 2e-3


def test_lp_sphere_batched_and_dtype():
    w, g = randn(4, 5, seed=101), randn(4, 5, seed=102)
    batch = mf.lp_sphere_direction(w.float(), g.float(), 4.0)
    assert batch.dtype == torch.float32 and batch.shape == (4, 5)
    for i in range(4):
        one = mf.lp_sphere_direction(w[i], g[i], 4.0)
        assert torch.allclose(batch[i].double(), one, atol=1e-6)


def test_linf_direction_batched_rows_are_the_single_rows():
    # rows: a critical point with ties, a row flat only within rtol, and two generic rows
    w = torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, 0.2], [0.3, -0.3, 0.1], [2.0, 0.5, -1.0]],
                     dtype=F64)
    g = torch.tensor([[0.3, 0.3, 0.0], [1.0, 1.0 + 1e-9, 0.0], [5.0, 0.7, -0.4],
                      [0.2, -3.0, 1.5]], dtype=F64)
    for call in (mf.linf_sphere_direction, lambda w, g: mf.lp_sphere_direction(
            w, g, math.inf, rtol=1e-6)):
        batch = call(w, g)
        rows = torch.stack([call(w[i], g[i]) for i in range(len(w))])
        assert torch.equal(batch, rows)
    flat = mf.lp_sphere_direction(w, g, math.inf, rtol=1e-6)[:2]
    assert torch.equal(flat, torch.zeros(2, 3, dtype=F64))


def test_default_rtols_bracketed():
    # w = e_1, g = e_1 + delta e_2: the tangent part is exactly delta e_2 and ||g|| rounds to 1,
    # so a delta just below the default threshold gives 0 and one just above gives e_2.
    # sphere_direction: 10 n eps of float32 with n = 3, the vector's length (these rows sit in a
    # batch of 1000, and a threshold that counted the batch would zero both)
    tol = 10 * 3 * torch.finfo(torch.float32).eps
    w = torch.zeros(1000, 3)
    w[:, 0] = 1.0
    g = w.clone()
    g[0, 1], g[1, 1], g[2, 1] = 0.95 * tol, 1.05 * tol, tol   # the last exactly at the threshold
    phi = mf.sphere_direction(w, g)
    assert torch.equal(phi[0], torch.zeros(3)) and torch.equal(phi[1], torch.tensor([0, 1.0, 0]))
    assert torch.equal(phi[2], torch.zeros(3))   # "<= rtol ||g||" is zero
    # lp_sphere_direction: 1e3 eps of float64 relative to ||g|| (here 1), at p = 3 and p = inf
    tol = 1e3 * torch.finfo(F64).eps
    w, g = torch.eye(3, dtype=F64)[:1].expand(2, 3), torch.eye(3, dtype=F64)[:1].repeat(2, 1)
    g[0, 1], g[1, 1] = (1 - 5e-4) * tol, (1 + 5e-4) * tol
    for p in (3.0, math.inf):
        phi = mf.lp_sphere_direction(w, g, p)
        assert torch.equal(phi[0], torch.zeros(3, dtype=F64)), p
        assert torch.allclose(phi[1], torch.tensor([0, 1.0, 0], dtype=F64), atol=1e-12), p
    # p = inf with four tied |w_i| and g = 1 on them: ||g|| = 2, so the threshold is 2e3 eps
    w = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5], dtype=F64)
    for factor, moves in ((0.95, False), (1.05, True)):
        g = torch.tensor([1.0, 1.0, 1.0, 1.0, factor * 2 * tol], dtype=F64)
        phi = mf.lp_sphere_direction(w, g, math.inf)
        assert bool(phi.any()) == moves and phi[4] == float(moves)


def test_lp_sphere_batch_tangency_and_lambda_shape():
    # row 0 has a coordinate of g + lambda u crossing zero at the root, (-0.5, 0, 0.5): at p = 10
    # the power 1/9 turns its rounding into ~0.02, which only the last projection removes (in
    # each row with its own u)
    w = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.5, 0.2]], dtype=F64)
    g = torch.tensor([[0.0, 1.0, 2.0], [0.3, -1.0, 0.8]], dtype=F64)
    p = 10.0
    phi, lam = mf.lp_sphere_direction(w, g, p, return_lambda=True)
    u = mf.signed_power(w, p - 1)
    assert ((u * phi).sum(-1).abs() < 1e-12).all()
    assert lam.shape == (2,) and float(lam[0]) == pytest.approx(-1.0, abs=1e-12)
    phi, lam = mf.lp_sphere_direction(w, g, math.inf, return_lambda=True)
    assert lam.shape == (2,) and lam.isnan().all()
    assert mf.lp_sphere_direction(w[1], g[1], math.inf, return_lambda=True)[1].shape == ()


@pytest.mark.parametrize("p, small", [(2.0, 0.1), (4.0, 0.5)])
def test_lp_sphere_multiplier_far_from_and_at_zero(p, small):
    # w = (1, small, ..., small) (40 small entries) and g = -/+1 on them: the root (2.86 at p = 2,
    # 7.5 at p = 4) lies beyond -/+2, outside the first bracket [-1, 1]; it must be found by
    # doubling. brentq as reference.
    w = torch.cat([torch.ones(1, dtype=F64), torch.full((40,), small, dtype=F64)])
    u = mf.signed_power(w, p - 1)
    for sign in (1.0, -1.0):
        g = torch.cat([torch.zeros(1, dtype=F64), torch.full((40,), -sign, dtype=F64)])
        phi, lam = mf.lp_sphere_direction(w, g, p, return_lambda=True)
        h = lambda t: float(u @ mf.signed_power(g + t * u, 1 / (p - 1)))  # noqa: E731, B023
        root = scipy.optimize.brentq(h, -1e4, 1e4, xtol=1e-13)
        assert sign * root > 2 and float(lam) == pytest.approx(root, rel=1e-10)
        assert abs(float(u @ phi)) < 1e-12
        if p == 2.0:
            assert torch.allclose(phi, mf.sphere_direction(w, g), atol=1e-13)
    # g already tangent, <u, g^[q-1]> = 0: the multiplier is 0 and phi = g^[q-1] / its p-norm,
    # to rounding (a stopping rule relative to 1 / |lambda| would stop at |lambda| ~ 1e-8)
    w, g = torch.tensor([1.0, 1.0], dtype=F64), torch.tensor([1.0, -1.0], dtype=F64)
    phi, lam = mf.lp_sphere_direction(w, g, p, return_lambda=True)
    assert abs(float(lam)) < 1e-15
    assert torch.allclose(phi, g / 2 ** (1 / p), rtol=0, atol=1e-15)


def test_lp_sphere_bad_input():
    with pytest.raises(ValueError, match="p must be > 1"):
        mf.lp_sphere_direction(torch.ones(3), torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="w must be non-zero"):
        mf.lp_sphere_direction(torch.zeros(3), torch.ones(3), 3.0)
    with pytest.raises(ValueError, match="g must be finite"):
        mf.lp_sphere_direction(torch.ones(3), torch.tensor([1.0, math.inf, 0.0]), 3.0)
    with pytest.raises(TypeError, match="p must be a real number"):
        mf.lp_sphere_direction(torch.ones(3), torch.ones(3), "4")


def test_riemannian_sgd_constant_lr_rotates_by_arctan_eta():
    # L(w) = -w_0 on the circle: each normalize step turns w by arctan(eta) towards e_0
    theta0, eta, steps = 2.5, 0.1, 10
    w0 = torch.tensor([math.cos(theta0), math.sin(theta0)], dtype=F64)
    c = torch.tensor([-1.0, 0.0], dtype=F64)
    path = mf.riemannian_sgd_sphere(lambda w: c.expand_as(w), 3.0 * w0, steps, eta)
    angles = theta0 - torch.arange(steps + 1, dtype=F64) * math.atan(eta)
    ref = torch.stack([angles.cos(), angles.sin()], dim=-1)
    torch.testing.assert_close(path, ref, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        mf.riemannian_sgd_sphere(lambda w: c, w0, 3, -0.1)


def test_p_is_refused_for_matrix_norms():
    for norm in ("fro", "spectral"):
        with pytest.raises(ValueError, match=f"p is only used with norm='lp', got p=3.0 with "
                                             f"norm='{norm}'"):
            mf.steepest_direction(torch.ones(2, 2), norm, p=3.0)


def test_sphere_functions_keep_dtype_and_broadcast():
    w = unit(randn(3, 5, seed=110)).float()
    g = randn(5, seed=111).float()
    outs = [mf.sphere_project(w, g), mf.sphere_direction(w, g),
            mf.sphere_exact_direction(w, g, 0.5), mf.sphere_step(w, g, 0.1),
            mf.sphere_step(w, g, 0.1, retraction="exact"), mf.linf_sphere_direction(w, g)]
    for out in outs:
        assert out.dtype == torch.float32 and out.shape == (3, 5)
    for i in range(3):
        assert torch.allclose(outs[3][i], mf.sphere_step(w[i], g, 0.1), atol=1e-6)
        assert abs(float(outs[3][i].double().norm()) - 1) < 1e-6


def test_tiny_step_leaves_the_point():
    # eta = 1e-310 (subnormal): 1 / eta overflows, so the step must not be formed as u / eta - t
    w, g = unit(randn(5, seed=114)), randn(5, seed=115)
    for retraction in ("normalize", "exact"):
        out = mf.sphere_step(w, g, 1e-310, retraction=retraction)
        assert torch.allclose(out, w, rtol=0, atol=1e-15)


def test_sphere_direction_is_scale_free():
    # the direction depends only on the direction of g: tiny and huge gradients included
    w, g = unit(randn(6, seed=112)), randn(6, seed=113)
    phi = mf.sphere_direction(w, g)
    for scale in (1e-160, 1e-300, 1e150):
        assert torch.allclose(mf.sphere_direction(w, scale * g), phi, rtol=0, atol=1e-14)
        assert torch.allclose(mf.sphere_step(w, scale * g, 0.3), mf.sphere_step(w, g, 0.3),
                              rtol=0, atol=1e-14)


def test_exact_direction_at_a_critical_point():
    w = unit(randn(4, seed=114))
    for g in (torch.zeros(4, dtype=F64), 3.0 * w):
        assert torch.allclose(mf.sphere_exact_direction(w, g, 0.5), 0.25 * w, atol=1e-15)
        assert torch.allclose(mf.sphere_step(w, g, 0.5, retraction="exact"), w, atol=1e-15)
    # eta = 2: the exact step is the antipode, whatever the tangent direction
    g = randn(4, seed=115)
    assert torch.allclose(mf.sphere_step(w, g, 2.0, retraction="exact"), -w, atol=1e-15)


# -- bad inputs (tools/bad_inputs.py): riemannian_sgd_sphere names its own arguments -----------

_GF = lambda w: w - torch.tensor([0.0, 0.0, 1.0], dtype=w.dtype)  # noqa: E731


@pytest.mark.parametrize("call, err, text", [
    (lambda: mf.riemannian_sgd_sphere(3, torch.ones(3), 2, 0.1), TypeError,
     "grad_fn must be callable"),
    (lambda: mf.riemannian_sgd_sphere(3, torch.ones(3), 0, 0.1), TypeError,
     "grad_fn must be callable"),
    (lambda: mf.riemannian_sgd_sphere(_GF, torch.ones(3), 0, 0.1, retraction="x"), ValueError,
     "retraction must be one of"),
    (lambda: mf.riemannian_sgd_sphere(_GF, torch.zeros(3), 2, 0.1), ValueError,
     "^w0 must be non-zero"),
    (lambda: mf.riemannian_sgd_sphere(_GF, torch.ones(3), 2, lambda t: -1.0), ValueError,
     r"^lr\(1\) must be >= 0"),
    (lambda: mf.riemannian_sgd_sphere(_GF, torch.ones(3), 2, 3.0, retraction="exact"),
     ValueError, "^lr must be <= 2"),
    (lambda: mf.riemannian_sgd_sphere(lambda w: torch.ones(4), torch.ones(3), 2, 0.1),
     ValueError, r"^grad_fn\(w\) must have the last dimension"),
    (lambda: mf.riemannian_sgd_sphere(lambda w: w * math.nan, torch.ones(3), 2, 0.1),
     ValueError, r"^grad_fn\(w\) must be finite"),
    (lambda: mf.riemannian_sgd_sphere(lambda w: None, torch.ones(3), 2, 0.1),
     TypeError, r"^grad_fn\(w\) must be a torch.Tensor"),
])
def test_fuzz_riemannian_sgd_sphere_bad_input(call, err, text):
    with pytest.raises(err, match=text):
        call()


@pytest.mark.parametrize("dtype,n", [(torch.bfloat16, 16), (torch.bfloat16, 300),
                                     (torch.float16, 200)])
def test_sphere_functions_move_in_half_precision(dtype, n):
    # computed in float32: with the half dtype's eps the default rtol reached 1 (bf16 n >= 13)
    w, g = torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype)
    w[0], g[1] = 1, 1
    e1 = torch.zeros(n, dtype=dtype)
    e1[1] = 1
    assert torch.equal(mf.sphere_direction(w, g), e1)
    assert torch.equal(mf.sphere_direction(w, g), mf.lp_sphere_direction(w, g, 2.0))
    phi = mf.sphere_exact_direction(w, g, 0.5)
    assert phi.dtype == dtype and float(phi[1]) == pytest.approx(math.sqrt(1 - 1 / 16), rel=1e-2)
    step = mf.sphere_step(w, g, 0.5)
    assert step.dtype == dtype and float(step[1]) == pytest.approx(-0.5 / math.sqrt(1.25), rel=1e-2)
    path = mf.riemannian_sgd_sphere(lambda v: g.expand_as(v), w, 2, 0.5)
    assert path.dtype == dtype and float(path[-1, 1]) < -0.5


def test_sphere_functions_at_extreme_scales():
    g = torch.tensor([1.0, 1.0, 0.0])
    for s in (1e20, 1e38, 1e-30, 1e-45):   # ||w||^2 overflows / underflows (1e-45: subnormal)
        w = torch.tensor([s, 0.0, 0.0])
        assert torch.equal(mf.sphere_project(w, g), torch.tensor([0.0, 1.0, 0.0]))
        assert torch.equal(mf.sphere_direction(w, g), torch.tensor([0.0, 1.0, 0.0]))
        assert torch.allclose(mf.sphere_step(w, g, 0.1), unit(torch.tensor([1.0, -0.1, 0.0])))
    # a huge eta rotates by arctan(eta) -> pi/2 and stays on the sphere (float16: no 70000 * t)
    e0, e1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    for eta in (1e20, 1e300):
        assert torch.allclose(mf.sphere_step(e0, e1, eta), -e1, atol=1e-7)
    half = mf.sphere_step(e0.half(), e1.half(), 70000.0)
    assert half.isfinite().all() and float(half[1]) == -1.0


def test_l2_and_fro_directions_at_extreme_scales():
    for s in (1e-30, 1e-45, 1e30, 3e38):
        assert torch.equal(mf.steepest_direction(torch.full((4,), s), "l2"), torch.full((4,), 0.5))
        assert torch.equal(mf.steepest_direction(torch.full((2, 2), s), "fro"),
                           torch.full((2, 2), 0.5))
    assert torch.equal(mf.steepest_direction(torch.zeros(2, 2), "fro"), torch.zeros(2, 2))


def test_linf_direction_is_zero_when_the_tangent_part_vanishes():
    # a tied largest |w_i| used to give [1, -1, ...] for a zero gradient or at a critical point
    cases = [([1.0, 1.0, 0.5], [0.0, 0.0, 0.0]), ([1.0, 1.0], [1.0, 1.0]),
             ([1.0, -1.0, 0.2], [0.3, -0.3, 0.0]), ([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]),
             ([1.0, -1.0, 0.5], [0.0, 0.0, 0.0])]
    for w, g in cases:
        w, g = torch.tensor(w, dtype=F64), torch.tensor(g, dtype=F64)
        zero = torch.zeros_like(w)
        assert torch.equal(mf.linf_sphere_direction(w, g), zero)
        assert torch.equal(mf.lp_sphere_direction(w, g, math.inf), zero)
        assert torch.equal(mf.lp_sphere_direction(w, g, 1000.0), zero)
    # a non-zero tangent part still moves: within rtol of flat only through lp_sphere_direction
    w, g = torch.tensor([1.0, 1.0], dtype=F64), torch.tensor([1.0, 1.0 + 1e-9], dtype=F64)
    assert torch.equal(mf.linf_sphere_direction(w, g), torch.tensor([-1.0, 1.0], dtype=F64))
    assert torch.equal(mf.lp_sphere_direction(w, g, math.inf, rtol=1e-6), torch.zeros(2, dtype=F64))


def test_lp_sphere_rtol_is_relative_to_g():
    # ||P_w g|| / ||g|| = 0.0499: rtol = 0.1 zeroes it, like sphere_direction; rtol = 0.01 does not
    n = 100
    w = torch.full((n,), 0.1, dtype=F64)
    t = torch.zeros(n, dtype=F64)
    t[0], t[1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    g = torch.ones(n, dtype=F64) + 0.5 * t
    for rtol in (0.1, 0.01):
        expected = mf.sphere_direction(w, g, rtol=rtol)
        assert torch.allclose(mf.lp_sphere_direction(w, g, 2.0, rtol=rtol), expected, atol=1e-12)
    zero = torch.zeros(n, dtype=F64)
    assert torch.equal(mf.lp_sphere_direction(w, 1e30 * g, 2.0, rtol=0.1), zero)
