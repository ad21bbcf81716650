"""Tests of dlmath.optim.clipping: clipping against torch.nn.utils.clip_grad_norm_ (including
the edge cases), the first-order loss change, the sign cosine and the decrease-clipped rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dlmath.optim import clipping as cl

F64 = torch.float64
SETTINGS = settings(max_examples=60, deadline=None)


def params_with_grads(shapes, scale, seed, dtype=F64, none_at=()):
    g = torch.Generator().manual_seed(seed)
    ps = []
    for i, s in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype))
        if i not in none_at:
            p.grad = scale * torch.randn(s, generator=g, dtype=dtype)
        ps.append(p)
    return ps


def twin(ps):
    """An independent copy of parameters and their gradients."""
    out = []
    for p in ps:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


# -- matches torch ------------------------------------------------------------------------

@SETTINGS
@given(st.floats(1e-3, 1e3), st.floats(0.0, 10.0), st.sampled_from([1.0, 2.0, 3.0, math.inf]),
       st.sampled_from([torch.float32, F64]), st.integers(0, 2**31 - 1))
def test_clip_grad_norm_matches_torch(scale, tau, p, dtype, seed):
    ours = params_with_grads([(30, 20), (7,), (2, 3, 4)], scale, seed, dtype, none_at=(2,))
    ref = twin(ours)
    n_ours = cl.clip_grad_norm_(ours, tau, norm_type=p)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, tau, norm_type=p)
    rtol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(n_ours, n_ref, rtol=rtol, atol=0)
    for a, b in zip(ours, ref, strict=True):
        if b.grad is None:
            assert a.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=1e-30)


@pytest.mark.parametrize("target", [0.3, 7.5])
def test_clip_keeps_direction_and_caps_norm(target):
    ps = params_with_grads([(30, 20), (7,)], 1.0, 0)
    g0 = torch.cat([p.grad.reshape(-1) for p in ps])
    for p in ps:
        p.grad *= target / g0.norm()
    g0 = g0 * target / g0.norm()
    clipped, total = cl.clip_by_global_norm([p.grad for p in ps], 1.0)
    g1 = torch.cat([c.reshape(-1) for c in clipped])
    assert total.item() == pytest.approx(target, rel=1e-12)
    assert torch.dot(g0, g1) / (g0.norm() * g1.norm()) > 1 - 1e-12
    expected = min(target, 1.0 / (1 + 1e-6 / target))
    assert g1.norm().item() == pytest.approx(expected, rel=1e-12)
    # the functional version did not touch the inputs, and eps=0 is the textbook formula
    assert torch.cat([p.grad.reshape(-1) for p in ps]).norm().item() == pytest.approx(target)
    exact, _ = cl.clip_by_global_norm([p.grad for p in ps], 1.0, eps=0.0)
    assert torch.cat([c.reshape(-1) for c in exact]).norm().item() == pytest.approx(
        min(target, 1.0), rel=1e-13)


def test_zero_none_and_empty_gradients_like_torch():
    ours = params_with_grads([(4, 3), (5,)], 0.0, 1)
    ref = twin(ours)
    assert cl.clip_grad_norm_(ours, 1.0) == torch.nn.utils.clip_grad_norm_(ref, 1.0) == 0.0
    assert all((p.grad == 0).all() for p in ours)
    # all gradients None: norm 0.0, nothing happens
    bare = [torch.nn.Parameter(torch.ones(3))]
    assert cl.clip_grad_norm_(bare, 1.0).item() == 0.0 and bare[0].grad is None
    assert cl.global_grad_norm([None, None]).item() == 0.0
    # eps = 0 with a zero gradient: coefficient 1, not inf or nan
    assert cl.clip_coefficient(torch.tensor(0.0), 1.0, eps=0.0).item() == 1.0
    assert cl.clip_coefficient(torch.tensor(0.0), 0.0, eps=0.0).item() == 1.0
    # max_norm = 0 zeroes the gradient, as in torch
    ours = params_with_grads([(3,)], 1.0, 2)
    ref = twin(ours)
    cl.clip_grad_norm_(ours, 0.0)
    torch.nn.utils.clip_grad_norm_(ref, 0.0)
    torch.testing.assert_close(ours[0].grad, ref[0].grad)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_nonfinite_gradients_like_torch(bad):
    ours = params_with_grads([(4,), (3,)], 1.0, 3)
    ours[0].grad[1] = bad
    ref = twin(ours)
    n_ours = cl.clip_grad_norm_(ours, 1.0)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert (n_ours.isnan() and n_ref.isnan()) or n_ours == n_ref == math.inf
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, equal_nan=True)
    if bad != bad:  # nan
        assert ours[1].grad.isnan().all()
    else:  # inf: finite entries become 0, the infinite one NaN
        assert (ours[1].grad == 0).all() and ours[0].grad[1].isnan()
    fresh = params_with_grads([(4,)], 1.0, 3)
    fresh[0].grad[0] = bad
    before = fresh[0].grad.clone()
    with pytest.raises(ValueError, match="cannot be clipped"):
        cl.clip_grad_norm_(fresh, 1.0, error_if_nonfinite=True)
    torch.testing.assert_close(fresh[0].grad, before, equal_nan=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(twin(fresh), 1.0, error_if_nonfinite=True)


def test_inf_norm_type_is_the_largest_entry():
    ps = params_with_grads([(5, 5), (3,)], 2.0, 4, none_at=())
    big = max(p.grad.abs().max().item() for p in ps)
    assert cl.global_grad_norm([p.grad for p in ps], math.inf).item() == big


def test_single_tensor_and_bad_input():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert cl.clip_grad_norm_(p, 1.0).item() == pytest.approx(5.0)
    assert p.grad.norm().item() == pytest.approx(1 / (1 + 0.2e-6), rel=1e-6)
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        cl.global_grad_norm([torch.ones(2), [1.0, 2.0]])
    with pytest.raises(ValueError, match="norm_type"):
        cl.global_grad_norm([torch.ones(2)], norm_type=0)
    with pytest.raises(ValueError, match="max_norm"):
        cl.clip_by_global_norm([torch.ones(2)], -1.0)
    with pytest.raises(ValueError, match="total_norm"):
        cl.clip_coefficient(torch.tensor(-1.0), 1.0)


# -- first-order change -------------------------------------------------------------------

def tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (64,), generator=g)
    w1 = torch.nn.Parameter(0.5 * torch.randn(5, 8, generator=g, dtype=F64))
    w2 = torch.nn.Parameter(0.5 * torch.randn(8, 3, generator=g, dtype=F64))

    def loss():
        return torch.nn.functional.cross_entropy(torch.tanh(x @ w1) @ w2, y)
    return loss, [w1, w2]


def test_first_order_change_is_first_order():
    loss, ps = tiny_problem()
    before = [p.detach().clone() for p in ps]
    etas = torch.logspace(-6, -3, 4, dtype=F64)
    for direction in (lambda gs: gs, lambda gs: [g.sign() for g in gs]):
        actual, pred = cl.first_order_change(loss, ps, direction, etas)
        rel = ((actual - pred) / pred).abs()
        # the relative error is O(eta): it shrinks tenfold with eta
        slopes = torch.diff(rel.log10())
        assert rel[0] < 1e-4 and ((slopes > 0.8) & (slopes < 1.2)).all(), (rel, slopes)
    assert all(torch.equal(a, b) for a, b in zip(before, ps, strict=True))
    # SGD prediction is -eta * |g|^2
    grads = torch.autograd.grad(loss(), ps)
    sq = sum((g * g).sum() for g in grads).item()
    _, pred = cl.first_order_change(loss, ps, list(grads), 0.1)
    assert pred.item() == pytest.approx(-0.1 * sq, rel=1e-14)
    with pytest.raises(ValueError, match="direction"):
        cl.first_order_change(loss, ps, [grads[0]], 0.1)


# -- sign cosine -----------------------------------------------------------------------------

@SETTINGS
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6)))
def test_sign_cosine_bounds_and_identity(a):
    g = torch.from_numpy(a)
    nnz = int((g != 0).sum())
    if nnz == 0:
        assert cl.sign_cosine(g).isnan()
        return
    c = cl.sign_cosine(g).item()
    assert 1 / math.sqrt(nnz) - 1e-12 <= c <= 1 + 1e-12
    g = g / g.abs().max()  # the norms below would underflow for entries like 1e-194
    l1, l2 = g.abs().sum().item(), g.norm().item()
    assert l2 <= l1 * (1 + 1e-12) and l1 <= math.sqrt(g.numel()) * l2 * (1 + 1e-12)
    if nnz == g.numel():
        assert l1 == pytest.approx(math.sqrt(g.numel()) * l2 * c, rel=1e-12)


def test_sign_cosine_limits_for_iid_components():
    gen = torch.Generator().manual_seed(5)
    n = 200_000
    gauss = torch.randn(n, generator=gen, dtype=F64)
    u = torch.rand(n, generator=gen, dtype=F64) - 0.5
    lap = -u.sign() * torch.log1p(-2 * u.abs())  # Laplace by inversion, seeded
    assert cl.sign_cosine(gauss).item() == pytest.approx(math.sqrt(2 / math.pi), abs=5e-3)
    assert cl.sign_cosine(lap).item() == pytest.approx(1 / math.sqrt(2), abs=5e-3)
    # extremes: a constant-magnitude vector has cosine 1, a one-hot vector 1 (only one nonzero)
    assert cl.sign_cosine(torch.tensor([1.0, -1.0, 1.0])).item() == pytest.approx(1.0)
    assert cl.sign_cosine(torch.tensor([[0.0, 2.0, 0.0]]), dim=-1).item() == pytest.approx(1.0)
    assert cl.sign_cosine(torch.ones(2, 3), dim=0).shape == (3,)
    # tiny and huge entries: the squares would underflow or overflow without rescaling
    for scale in (1e-200, 1e200):
        assert cl.sign_cosine(torch.tensor([3.0, -4.0], dtype=F64) * scale).item() == \
            pytest.approx(7 / (math.sqrt(2) * 5), rel=1e-14)
    with pytest.raises(ValueError, match="finite"):
        cl.sign_cosine(torch.tensor([1.0, math.inf]))


# -- decrease-clipped learning rate ---------------------------------------------------------

@SETTINGS
@given(st.floats(-1e6, 1e6), st.floats(1e-6, 10), st.floats(1e-6, 1e3))
def test_decrease_clipped_lr(ug, lr, T):
    eta = cl.decrease_clipped_lr(lr, torch.tensor(ug, dtype=F64), T).item()
    assert eta * ug <= lr * T * (1 + 1e-12)
    assert 0 < eta <= lr
    if ug <= T:
        assert eta == lr


def test_decrease_clipped_lr_sgd_factor_edge_cases_and_dtype():
    """For SGD (u.g = |g|^2) the rate is eta min(1, T/|g|^2), so the step eta_t |g| falls like
    eta T/|g|; +inf gives 0, -inf leaves eta, NaN raises; shape, dtype and device are kept."""
    g2 = torch.tensor([0.0, 0.25, 0.5, 4.0, 100.0], dtype=F64)
    eta = cl.decrease_clipped_lr(0.1, g2, 0.5)
    torch.testing.assert_close(eta, 0.1 * torch.clamp(0.5 / g2, max=1.0), rtol=1e-15, atol=0)
    torch.testing.assert_close(eta[-1] * g2[-1].sqrt(), torch.tensor(0.1 * 0.5 / 10, dtype=F64),
                               rtol=1e-15, atol=0)
    edge = cl.decrease_clipped_lr(0.1, torch.tensor([math.inf, -math.inf]), 0.5)
    assert edge.tolist() == [0.0, pytest.approx(0.1)]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        out = cl.decrease_clipped_lr(0.1, torch.ones(2, 3, dtype=dtype), 0.5)
        assert out.dtype == dtype and out.shape == (2, 3)
    with pytest.raises(ValueError, match="predicted_decrease contains NaN"):
        cl.decrease_clipped_lr(0.1, torch.tensor([math.nan]), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        cl.decrease_clipped_lr(0.1, torch.ones(1), 0.0)


def test_a_single_tensor_counts_as_a_list_of_one_and_eta_must_be_at_most_1d():
    g = torch.tensor([[3.0, 0.0], [0.0, -4.0]])
    assert cl.global_grad_norm(g).item() == pytest.approx(5.0, rel=1e-7)   # sqrt(9 + 16)
    assert cl.global_grad_norm(g, norm_type=math.inf).item() == 4.0
    assert cl.global_grad_norm(g).item() == cl.global_grad_norm([g]).item()
    p = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"eta must be a number or a 1-D tensor, got shape "
                                         r"\(2, 2\)"):
        cl.first_order_change(lambda: p.square().sum(), [p], [torch.ones(2)], torch.ones(2, 2))


# -- bad inputs (tools/bad_inputs.py): first_order_change names its arguments ------------------

_P = torch.tensor([1.0, 2.0], requires_grad=True)


def _loss():
    return _P.square().sum()


def _same(gs):
    return list(gs)


@pytest.mark.parametrize("call, err, text", [
    (lambda: cl.first_order_change(3, [_P], _same, 0.1), TypeError, "loss_fn must be callable"),
    (lambda: cl.first_order_change(_loss, [], _same, 0.1), ValueError, "params must hold"),
    (lambda: cl.first_order_change(_loss, [torch.ones(2)], _same, 0.1), ValueError,
     r"params\[0\] must be a tensor with requires_grad=True"),
    (lambda: cl.first_order_change(_loss, [_P], None, 0.1), TypeError, "direction must be"),
    (lambda: cl.first_order_change(_loss, [_P], lambda gs: None, 0.1), TypeError,
     "direction must be"),
    (lambda: cl.first_order_change(_loss, [_P], [None], 0.1), ValueError, "direction must hold"),
    (lambda: cl.first_order_change(_loss, [_P], _same, None), TypeError, "^eta must be"),
    (lambda: cl.first_order_change(lambda: _P.square(), [_P], _same, 0.1), ValueError,
     "loss_fn must return a scalar tensor"),
    (lambda: cl.first_order_change(lambda: 1.0, [_P], _same, 0.1), ValueError,
     "loss_fn must return a scalar tensor"),
])
def test_fuzz_first_order_change_bad_input(call, err, text):
    with pytest.raises(err, match=text):
        call()
    assert torch.equal(_P.detach(), torch.tensor([1.0, 2.0]))      # parameters untouched


def test_fuzz_first_order_change_takes_a_single_tensor_and_a_generator_direction():
    etas = torch.tensor([0.1, 0.2], dtype=torch.float64)
    a1, p1 = cl.first_order_change(_loss, [_P], _same, etas)
    a2, p2 = cl.first_order_change(_loss, _P, lambda gs: (g for g in gs), etas)
    assert torch.equal(a1, a2) and torch.equal(p1, p2)
    assert torch.allclose(p1, torch.tensor([-2.0, -4.0], dtype=torch.float64))  # -eta |g|^2


# -- gaps found by mutation testing ---------------------------------------------------------

def test_sign_cosine_of_a_matrix_is_per_slice_along_dim():
    # default dim = -1: one cosine per row, |g|_1 / (sqrt(nnz) |g|_2) of that row, each row
    # rescaled by its own maximum (rows of very different scale, square so that a wrong
    # broadcast of the row maxima would not raise); dim=0 is the same on the transpose
    g = torch.tensor([[3.0, -4.0, 0.0], [1e-3, 2e-3, -2e-3], [5e4, 1e4, 1e4]], dtype=F64)

    def by_hand(rows):
        return torch.tensor([r.abs().sum().item() / (math.sqrt(int((r != 0).sum()))
                                                     * math.sqrt((r * r).sum().item()))
                             for r in rows], dtype=F64)

    torch.testing.assert_close(cl.sign_cosine(g), by_hand(g), rtol=1e-14, atol=0)
    torch.testing.assert_close(cl.sign_cosine(g, dim=0), by_hand(g.T), rtol=1e-14, atol=0)
    assert cl.sign_cosine(g[:2]).shape == (2,)


def test_clip_coefficient_when_the_norm_equals_eps():
    # min(1, tau / (|g| + eps)) also at |g| = eps > 0 (only |g| + eps = 0 is special-cased)
    eps = 1e-6
    coef = cl.clip_coefficient(torch.tensor(eps, dtype=F64), 1e-7, eps=eps)
    assert coef.item() == pytest.approx(1e-7 / (2 * eps), rel=1e-15)
