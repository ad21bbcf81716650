"""Tests of dlmath.lse: the inequalities of the logsumexp chapter as properties, cross-checks
against scipy and torch, gradients, and the documented edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dlmath import lse, normalizers

F64 = torch.float64
SETTINGS = settings(max_examples=150, deadline=None)

# Vectors with magnitudes from 1e-3 to 1e3, and near-ties (a base value plus tiny offsets).
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
plain_vectors = st.integers(1, 12).flatmap(lambda n: arrays(np.float64, n, elements=finite))
near_ties = st.tuples(finite, st.integers(2, 12), st.floats(0, 1e-9)).map(
    lambda a: a[0] + a[2] * np.arange(a[1], dtype=np.float64))
vectors = st.one_of(plain_vectors, near_ties).map(torch.from_numpy)


@st.composite
def vector_and_distribution(draw):
    x = draw(vectors)
    kind = draw(st.sampled_from(["dirichlet", "onehot", "uniform", "sparse"]))
    n = x.numel()
    if kind == "onehot":
        p = torch.zeros(n, dtype=F64)
        p[draw(st.integers(0, n - 1))] = 1.0
    elif kind == "uniform":
        p = torch.full((n,), 1.0 / n, dtype=F64)
    else:
        w = torch.tensor(draw(arrays(np.float64, n, elements=st.floats(0.0, 1.0))))
        if kind == "sparse":
            w[: n // 2] = 0.0
        assume(w.sum() > 1e-6)
        p = w / w.sum()
    return x, p


def tol(x):
    """Rounding allowance for float64 quantities of magnitude |x|_inf."""
    return 1e-12 * max(1.0, float(x.abs().max()))


# -- the bounds ---------------------------------------------------------------------------

@SETTINGS
@given(vectors, st.floats(1e-2, 1e2))
def test_sandwich_with_temperature(x, tau):
    value = lse.logsumexp(x, tau=tau)
    lower, upper = lse.lse_bounds(x, tau=tau)
    assert lower - tol(x) <= value <= upper + tol(x)


def test_sandwich_equality_and_strictness():
    x = torch.full((7,), 2.5, dtype=F64)
    assert lse.logsumexp(x) == pytest.approx(2.5 + math.log(7), abs=1e-14)
    assert lse.logsumexp(torch.tensor([3.0], dtype=F64)) == 3.0  # n = 1: lower bound is equality
    # n >= 2 with a moderate gap: strictly above the max
    assert lse.logsumexp(torch.tensor([0.0, -30.0], dtype=F64)) > 0.0
    # beyond ~37 in float64 the strict inequality is lost to rounding, as documented
    assert lse.logsumexp(torch.tensor([0.0, -40.0], dtype=F64)) == 0.0


@SETTINGS
@given(vector_and_distribution(), st.sampled_from([1.0, 1.01, 1.5, 2.0, 3.0, 10.0, math.inf]))
def test_holder_renyi_lower_bound(xp, t):
    x, p = xp
    assert lse.lse_lower_bound(x, p, t=t) <= lse.logsumexp(x) + tol(x)


@SETTINGS
@given(vector_and_distribution())
def test_shannon_bound_is_the_tightest_of_the_family(xp):
    x, p = xp
    bounds = [float(lse.lse_lower_bound(x, p, t=t)) for t in (1.0, 1.5, 2.0, 4.0, math.inf)]
    assert all(a >= b - tol(x) for a, b in zip(bounds, bounds[1:], strict=False))


@SETTINGS
@given(vectors)
def test_shannon_bound_is_attained_at_softmax(x):
    p = lse.softmax(x)
    assert lse.lse_lower_bound(x, p, t=1.0) == pytest.approx(float(lse.logsumexp(x)),
                                                            abs=1e-9 * max(1, float(x.abs().max())))


def test_mean_bound_is_uniform_case_of_cauchy_bound():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, generator=g, dtype=F64)
    u = torch.full((9,), 1 / 9, dtype=F64)
    assert lse.lse_lower_bound(x, u, t=2.0) == pytest.approx(float(x.mean() + math.log(9)))


@SETTINGS
@given(vectors, st.floats(-50, 50), st.data())
def test_sup_norm_lipschitz(x, c, data):
    y = x + torch.tensor(data.draw(arrays(np.float64, x.numel(), elements=st.floats(-5, 5))))
    gap = (lse.logsumexp(x) - lse.logsumexp(y)).abs()
    assert gap <= (x - y).abs().max() + tol(x)
    shifted = lse.logsumexp(x + c) - lse.logsumexp(x)  # equality along the ones direction
    assert shifted == pytest.approx(c, abs=tol(x) + 1e-12 * abs(c))


@SETTINGS
@given(vectors, st.floats(0, 1), st.data())
def test_convexity(x, t, data):
    y = torch.tensor(data.draw(arrays(np.float64, x.numel(), elements=finite)))
    lhs = t * lse.logsumexp(x) + (1 - t) * lse.logsumexp(y)
    assert lse.logsumexp(t * x + (1 - t) * y) <= lhs + tol(torch.cat([x, y]))


# -- entropies ------------------------------------------------------------------------------

def test_renyi_limits_and_monotonicity():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=F64)
    shannon = float(lse.shannon_entropy(p))
    assert shannon == pytest.approx(float(-(p[:3] * p[:3].log()).sum()))
    assert lse.renyi_entropy(p, 1.0) == pytest.approx(shannon)
    assert lse.renyi_entropy(p, 1 + 1e-4) == pytest.approx(shannon, abs=1e-4)
    assert lse.renyi_entropy(p, 0.0) == pytest.approx(math.log(3))  # support size, zeros excluded
    assert lse.renyi_entropy(p, math.inf) == pytest.approx(-math.log(0.5))
    assert lse.renyi_entropy(p, 2.0) == pytest.approx(-math.log(0.25 + 0.09 + 0.04))
    ts = [0.0, 0.5, 1.0, 2.0, 5.0, math.inf]
    values = [float(lse.renyi_entropy(p, t)) for t in ts]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_renyi_near_one_does_not_cancel(dtype):
    # sum p^t = 1 - (t-1) H + ..., so the plain log(sum p^t)/(1-t) loses eps/|t-1|: in float32
    # it was off by 0.08 nats at t = 1 + 2e-6. Reference: the float64 Taylor expansion
    # H_t = H - (t-1)/2 Var_p(log p) + O((t-1)^2).
    p64 = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.01
    p64[:100] = 0.0
    p64 /= p64.sum()
    p = p64.to(dtype)
    p64 = p.to(F64) / p.to(F64).sum()
    log_p = torch.log(p64[p64 > 0])
    shannon = float(-(p64[p64 > 0] * log_p).sum())
    variance = float((p64[p64 > 0] * log_p**2).sum()) - shannon**2
    tol = 8 * torch.finfo(dtype).eps * shannon
    for t in [1 - 1e-4, 1 - 2e-6, 1 - 1e-9, 1 + 1e-9, 1 + 2e-6, 1 + 1e-5, 1 + 1e-4]:
        expected = shannon - (t - 1) / 2 * variance
        assert float(lse.renyi_entropy(p, t)) == pytest.approx(expected, abs=tol + (t - 1) ** 2)
    # both branches agree where they meet, and the gradient has no NaN at the zero entries
    for t in [0.5, 1.5]:  # |t - 1| = 0.5 takes the expm1 branch, a step outwards the plain one
        outward = float(lse.renyi_entropy(p64, t + 1e-12 if t > 1 else t - 1e-12))
        assert outward == pytest.approx(float(lse.renyi_entropy(p64, t)), rel=1e-9)
    q = p64.clone().requires_grad_()
    lse.renyi_entropy(q, 1.2).backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("t", [1.1, 1.3, 1.5])
def test_renyi_high_entropy_float32_keeps_the_plain_sum(t):
    # With sum p^t = 1 + s far below 1 (t > 1, high entropy), log1p(s) has the error
    # eps*|s|/(1+s): in float32 at n = 1e6 and t = 1.5 the expm1 route alone was 1.3e-5 off
    # (relative), the plain log(sum p^t) 3e-8. Reference: float64 of the same float32 p. At
    # t = 1.1 and 1.3 both routes are within a few float32 ulps (1e-7 to 6e-7), and a float32
    # sum of 1e6 terms moves by that much with the number of threads: only t = 1.5 tells the
    # routes apart, and 1e-6 (8 ulps) leaves room for the summation order.
    p = torch.rand(1_000_000, generator=torch.Generator().manual_seed(0)) + 0.01
    p /= p.sum()
    p64 = p.to(F64) / p.to(F64).sum()
    want = float(torch.log((p64**t).sum()) / (1 - t))
    assert float(lse.renyi_entropy(p, t)) == pytest.approx(want, rel=1e-6)
    # a batch mixing a low-entropy row (expm1 route) with a high-entropy one (plain route)
    rows = torch.stack([torch.tensor([0.9, 0.1] + [0.0] * 999_998), p])
    got = lse.renyi_entropy(rows, t)
    assert float(got[1]) == pytest.approx(want, rel=2e-7)
    assert float(got[0]) == pytest.approx(math.log(0.9**t + 0.1**t) / (1 - t), rel=1e-6)


def test_entropies_of_a_point_mass_are_plus_zero():
    onehot = torch.tensor([[0.0, 1.0, 0.0]], dtype=F64)
    for t in [0.0, 0.3, 0.7, 1.0, 1.3, 2.0, 5.0, math.inf]:
        value = float(lse.renyi_entropy(onehot, t))
        assert value == 0.0 and math.copysign(1.0, value) == 1.0, t
    assert math.copysign(1.0, float(lse.shannon_entropy(onehot))) == 1.0


@pytest.mark.parametrize("tau", [0.01, 0.5, 1.0, 3.0, 100.0])
def test_sandwich_bounds_are_the_max_and_max_plus_tau_log_n(tau):
    # the bounds themselves, and where each is attained (a bound that is merely valid, e.g.
    # max - tau or max + log n for tau < 1, would pass test_sandwich_with_temperature)
    x = torch.tensor([[0.3, -1.2, 2.5, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    lower, upper = lse.lse_bounds(x, tau=tau)
    assert lower.tolist() == [2.5, 1.0]
    assert upper.tolist() == pytest.approx([2.5 + tau * math.log(4), 1.0 + tau * math.log(4)],
                                           rel=1e-15)
    assert float(lse.logsumexp(x[1], tau=tau)) == pytest.approx(float(upper[1]), abs=1e-14 * (
        1 + tau))                                          # all equal: the upper bound
    single = torch.tensor([-0.7], dtype=F64)               # n = 1: the lower bound
    assert lse.lse_bounds(single, tau=tau)[0] == -0.7      # (tau * (x / tau) may round)
    assert float(lse.logsumexp(single, tau=tau)) == pytest.approx(-0.7, abs=2e-16)


def test_kl_divergence():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=F64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=F64)
    assert lse.kl_divergence(p, q) == pytest.approx(math.log(2))
    assert lse.kl_divergence(q, p) == math.inf
    assert lse.kl_divergence(p, p) == 0.0


# -- cross-checks -------------------------------------------------------------------------

@SETTINGS
@given(st.integers(1, 5), st.integers(1, 9), st.floats(0.05, 20), st.integers(0, 2**31 - 1))
def test_against_scipy_and_torch(rows, n, tau, seed):
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=F64) * 100
    ours = lse.logsumexp(x, tau=tau).numpy()
    ref = tau * scipy.special.logsumexp(x.numpy() / tau, axis=-1)
    np.testing.assert_allclose(ours, ref, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(lse.softmax(x, tau=tau).numpy(),
                               scipy.special.softmax(x.numpy() / tau, axis=-1), atol=1e-14)
    torch.testing.assert_close(lse.softmax(x, dim=0), torch.softmax(x, dim=0))


def test_dim_keepdim_and_batching():
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    assert lse.logsumexp(x, dim=1).shape == (3, 5)
    assert lse.logsumexp(x, dim=1, keepdim=True).shape == (3, 1, 5)
    torch.testing.assert_close(lse.logsumexp(x, dim=1), torch.logsumexp(x, dim=1))
    torch.testing.assert_close(lse.softmax(x, dim=1).sum(1), torch.ones(3, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_keeps_dtype_and_never_overflows(dtype):
    x = torch.tensor([1e4, 1e4 - 1.0, -1e4], dtype=dtype) if dtype != torch.float16 \
        else torch.tensor([6e4, 6e4 - 1.0, -6e4], dtype=dtype)
    value = lse.logsumexp(x)
    assert value.dtype == dtype and torch.isfinite(value)
    p = lse.softmax(x)
    assert p.dtype == dtype and torch.isfinite(p).all()


# -- gradients ------------------------------------------------------------------------------

def test_softmax_is_the_gradient_of_lse_and_its_jacobian():
    x = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    (grad,) = torch.autograd.grad(lse.logsumexp(x, tau=0.7), x)
    torch.testing.assert_close(grad, lse.softmax(x.detach(), tau=0.7))
    assert torch.autograd.gradcheck(lambda z: lse.softmax(z, tau=0.7), (x,))
    jac = torch.autograd.functional.jacobian(lambda z: lse.softmax(z), x)
    p = lse.softmax(x.detach())
    torch.testing.assert_close(jac, torch.diag(p) - torch.outer(p, p))
    hess = torch.autograd.functional.hessian(lambda z: lse.logsumexp(z), x.detach())
    torch.testing.assert_close(hess, jac)
    assert torch.linalg.eigvalsh(hess).min() > -1e-12
    torch.testing.assert_close(hess @ torch.ones(6, dtype=F64), torch.zeros(6, dtype=F64))


# -- edge cases and bad input ---------------------------------------------------------------

def test_infinities_are_defined():
    inf = math.inf
    x = torch.tensor([[1.0, inf, 3.0, inf], [-inf, 0.0, -inf, 0.0], [-inf, -inf, -inf, -inf]])
    v = lse.logsumexp(x)
    assert v[0] == inf and v[1] == pytest.approx(math.log(2)) and v[2] == -inf
    p = lse.softmax(x[:2])
    torch.testing.assert_close(p, torch.tensor([[0, 0.5, 0, 0.5], [0, 0.5, 0, 0.5]]))
    with pytest.raises(ValueError, match="-inf everywhere"):
        lse.softmax(x)


@pytest.mark.parametrize("call, error, match", [
    (lambda: lse.logsumexp(torch.tensor([])), ValueError, "x must not be empty"),
    (lambda: lse.logsumexp(torch.zeros(3, 0)), ValueError, "empty"),
    (lambda: lse.logsumexp(torch.tensor([1, 2])), TypeError, "floating dtype"),
    (lambda: lse.logsumexp(torch.tensor([1.0, math.nan])), ValueError, "x contains NaN"),
    (lambda: lse.logsumexp(torch.ones(3), tau=0.0), ValueError, "tau must be > 0"),
    (lambda: lse.logsumexp(torch.ones(3), tau=-1.0), ValueError, "tau must be > 0"),
    (lambda: lse.logsumexp(torch.ones(3), tau=math.inf), ValueError, "tau must be finite"),
    (lambda: lse.logsumexp(torch.ones(3), dim=1), ValueError, "dim=1 is out of range"),
    (lambda: lse.logsumexp("abc"), TypeError, "x must be"),
    (lambda: lse.softmax(torch.ones(3), tau="1"), TypeError, "tau must be a real number"),
    (lambda: lse.renyi_entropy(torch.tensor([0.5, 0.6]), 2.0), ValueError, "p must sum to 1"),
    (lambda: lse.renyi_entropy(torch.tensor([1.5, -0.5]), 2.0), ValueError, "non-negative"),
    (lambda: lse.renyi_entropy(torch.tensor([0.5, 0.5]), -1.0), ValueError, "t must be >= 0"),
    (lambda: lse.lse_lower_bound(torch.ones(3), torch.ones(3) / 3, t=0.5), ValueError,
     "t must be >= 1"),
    (lambda: lse.lse_lower_bound(torch.ones(3), torch.ones(2) / 2), ValueError, "same length"),
])
def test_bad_input_gives_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_accepts_array_likes():
    assert lse.logsumexp([0.0, 0.0]).item() == pytest.approx(math.log(2))
    assert lse.logsumexp(np.zeros(2)).dtype == torch.float64


def test_kl_divergence_needs_equal_lengths():
    with pytest.raises(ValueError, match="p and q must have the same length along dim=-1, got 2 "
                                         "and 3"):
        lse.kl_divergence(torch.tensor([0.5, 0.5]), torch.ones(3) / 3)


@pytest.mark.parametrize("x, tau, dtype, want", [
    ([1.0, 0.0], 1e-39, torch.float32, 1.0),
    ([1e38, 0.0], 0.1, torch.float32, 1e38),
    ([6e4, 0.0], 0.5, torch.float16, 6e4),
    ([1000.0, 999.0], 0.01, torch.float16, 1000.0),
    ([1000.0, 992.0], 0.01, torch.bfloat16, 1000.0),  # 999 rounds to 1000 in bfloat16
])
def test_temperature_shifts_before_dividing(x, tau, dtype, want):
    # the max is subtracted before dividing by tau: x / tau alone overflowed to inf (softmax
    # nan) for a tiny tau or huge logits, in half precision already at 6e4 / 0.5
    x = torch.tensor(x, dtype=dtype)
    value = lse.logsumexp(x, tau=tau)
    assert value.dtype == dtype and float(value) == pytest.approx(want, rel=1e-6)
    p = lse.softmax(x, tau=tau)
    assert p.dtype == dtype and p.tolist() == [1.0, 0.0]
    jac = normalizers.softmax_jacobian(x.float(), tau=tau)
    assert torch.isfinite(jac).all()
    # and where it is not saturated it is the plain formula, with keepdim and -inf/+inf slices
    y = torch.tensor([[3.0, 1.0, -2.0], [-math.inf, 0.5, 0.5], [math.inf, 0.0, 1.0]], dtype=F64)
    v = lse.logsumexp(y, tau=0.3, keepdim=True)
    assert v.shape == (3, 1) and v[2, 0] == math.inf
    torch.testing.assert_close(v[:2, 0], 0.3 * torch.logsumexp(y[:2] / 0.3, -1))
    torch.testing.assert_close(lse.softmax(y, tau=0.3)[:2], torch.softmax(y[:2] / 0.3, -1))


def test_renyi_of_large_order_does_not_underflow():
    # sum p^t underflowed to 0 for large t (H_t = +inf, and a lower bound above logsumexp);
    # H_t is non-increasing in t and tends to H_inf = -log max p
    p = torch.full((1000,), 1e-3)
    assert float(lse.renyi_entropy(p, 20.0)) == pytest.approx(math.log(1000), rel=1e-6)
    assert float(lse.renyi_entropy(torch.tensor([0.5, 0.5], dtype=F64), 1100.0)) == \
        pytest.approx(math.log(2), rel=1e-12)
    assert float(lse.lse_lower_bound(torch.zeros(1000), p, t=20.0)) <= \
        float(lse.logsumexp(torch.zeros(1000))) + 1e-5
    q = torch.tensor([0.6, 0.3, 0.1, 0.0], dtype=F64)
    ts = [2.0, 50.0, 500.0, 5000.0, 1e6, math.inf]
    values = [float(lse.renyi_entropy(q, t)) for t in ts]
    assert all(math.isfinite(v) for v in values) and values == sorted(values, reverse=True)
    assert values[-2] == pytest.approx(-math.log(0.6), rel=1e-5)
    r = q.clone().requires_grad_()
    lse.renyi_entropy(r, 30.0).backward()  # no NaN from the zero entry
    assert torch.isfinite(r.grad).all()


# -- gaps found by mutation testing ---------------------------------------------------------

def test_bounds_use_the_documented_defaults():
    # lse_bounds defaults to tau = 1 and lse_lower_bound to t = 1 (the Shannon bound); every
    # other test passes them explicitly, so a wrong default went unnoticed
    x = torch.tensor([0.3, -1.2, 2.5, 0.0], dtype=F64)
    lower, upper = lse.lse_bounds(x)
    assert float(lower) == 2.5
    assert float(upper) == pytest.approx(2.5 + math.log(4), rel=1e-15)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    shannon = -sum(v * math.log(v) for v in p.tolist())
    mean = sum(a * b for a, b in zip(p.tolist(), x.tolist(), strict=True))
    assert float(lse.lse_lower_bound(x, p)) == pytest.approx(mean + shannon, rel=1e-14)


def test_lower_bound_reduces_along_the_last_dim_by_default():
    # a 2-D batch: one bound per row (dim = -1), each the closed form sum p x + H_2(p)
    x = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.5, 0.5]], dtype=F64)
    p = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.4, 0.0]], dtype=F64)
    got = lse.lse_lower_bound(x, p, t=2.0)
    want = [sum(a * b for a, b in zip(pr, xr, strict=True)) - math.log(sum(a * a for a in pr))
            for pr, xr in zip(p.tolist(), x.tolist(), strict=True)]
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(want, rel=1e-14)


@pytest.mark.parametrize("t", [1.0, 2.0, math.inf])
def test_lower_bound_ignores_minus_inf_where_p_is_zero(t):
    # documented: terms with p_i = 0 contribute 0 to the mean even where x_i = -inf
    # (0 * -inf would be NaN)
    x = torch.tensor([-math.inf, 1.0, 3.0], dtype=F64)
    p = torch.tensor([0.0, 0.25, 0.75], dtype=F64)
    renyi = {1.0: -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)),
             2.0: -math.log(0.25**2 + 0.75**2), math.inf: -math.log(0.75)}[t]
    value = float(lse.lse_lower_bound(x, p, t=t))
    assert value == pytest.approx(0.25 * 1.0 + 0.75 * 3.0 + renyi, rel=1e-14)
    assert value <= scipy.special.logsumexp([-np.inf, 1.0, 3.0])


def test_softmax_with_a_single_plus_inf_is_one_hot():
    # the uniform distribution over the +inf entries: with one +inf entry, all mass on it
    x = torch.tensor([[2.0, math.inf, -1.0], [math.inf, 0.0, math.inf], [0.0, 1.0, 2.0]],
                     dtype=F64)
    want = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5],
                         scipy.special.softmax([0.0, 1.0, 2.0]).tolist()], dtype=F64)
    torch.testing.assert_close(lse.softmax(x), want, rtol=0, atol=1e-15)
    torch.testing.assert_close(lse.softmax(x, tau=0.3)[:2], want[:2], rtol=0, atol=0)


@pytest.mark.parametrize("dtype, tiny", [(torch.float64, 5e-324), (torch.float32, 1e-45)])
def test_renyi_small_order_with_a_subnormal_entry(dtype, tiny):
    # RENYI_NEAR_ONE = 1/2 keeps p_i^(t-1) <= p_i^(-1/2): for small t the expm1 route would
    # need p_i^(t-1) ~ 1/p_i, which overflows for a subnormal p_i (H_t = +inf). Reference:
    # the closed form log(2 * 0.5^t + tiny^t) / (1 - t) in Python floats.
    p = torch.tensor([0.5, 0.5, tiny], dtype=dtype)
    tiny = float(p[2])  # the value the dtype actually holds
    eps = torch.finfo(dtype).eps
    for t in [0.01, 0.2, 0.4]:
        want = math.log(2 * 0.5**t + math.exp(t * math.log(tiny))) / (1 - t)
        assert float(lse.renyi_entropy(p, t)) == pytest.approx(want, rel=8 * eps)


@pytest.mark.parametrize("t", [1.2, 1.5, 2.5])
def test_renyi_gradient_on_the_simplex_matches_the_closed_form(t):
    # dH_t/dp_i = t p_i^(t-1) / ((1 - t) sum_j p_j^t), which is 0 at p_i = 0 for t > 1, on
    # both routes (the expm1 form near t = 1 and the plain sum). Reference in Python floats.
    vals = [0.5, 0.3, 0.2, 0.0]
    p = torch.tensor(vals, dtype=F64, requires_grad=True)
    lse.renyi_entropy(p, t).backward()
    s = sum(v**t for v in vals)
    want = [t * v ** (t - 1) / ((1 - t) * s) for v in vals[:3]] + [0.0]
    assert p.grad.tolist() == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("tau", [0.5, 2.0, 10.0])
def test_logsumexp_at_round_temperatures(tau):
    # tau == 1 takes torch.logsumexp; any other round tau must use the temperature (only the
    # derandomized hypothesis draws in test_against_scipy_and_torch happened to hit tau = 2)
    x = np.array([[0.3, -1.2, 2.5, 0.0], [10.0, 9.0, -5.0, 1.0]])
    want = tau * scipy.special.logsumexp(x / tau, axis=-1)
    np.testing.assert_allclose(lse.logsumexp(torch.from_numpy(x), tau=tau).numpy(), want,
                               rtol=1e-14)


def test_kl_divergence_reduces_along_the_last_dim_by_default():
    # one divergence per row; the reference is scipy's elementwise rel_entr summed per row
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.25, 0.25, 0.5], [0.4, 0.4, 0.2]])
    got = lse.kl_divergence(torch.from_numpy(p), torch.from_numpy(q))
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), scipy.special.rel_entr(p, q).sum(-1), rtol=1e-14)


@pytest.mark.parametrize("t", [0.7, 1.2, 1.5, 2.0])
def test_renyi_gradient_moving_mass_onto_a_zero_entry_matches_the_plain_formula(t):
    # the expm1 form near t = 1 computes sum p^t - sum_{p>0} p: without its correction the
    # gradient along this direction was 0.20 instead of 3.49 at t = 1.5. Reference: autograd
    # through the plain log(sum p^t) / (1 - t) in float64 (d/dp p^t = 0 at p = 0 for t > 1;
    # for t < 1 it is infinite there, so only mass moving within the support is compared)
    p0 = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    d = torch.tensor([-1.0, 0.0, 0.0, 1.0] if t > 1 else [-1.0, 1.0, 0.0, 0.0],
                     dtype=torch.float64)
    p = p0.clone().requires_grad_()
    lse.renyi_entropy(p, t).backward()
    q = p0.clone().requires_grad_()
    (torch.log((q**t).sum()) / (1 - t)).backward()
    along = d != 0  # (the plain formula's infinite gradient at a zero entry for t < 1)
    assert float(p.grad[along] @ d[along]) == pytest.approx(float(q.grad[along] @ d[along]),
                                                          rel=1e-12)
