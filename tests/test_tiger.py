"""Tests of dlmath.optim.Tiger: group rules, accumulation inside the momentum, the NaN guard."""

import copy
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath.optim import Lion, Tiger, fraction_unchanged, tiger_lr, tiger_update


def _param(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))


def test_is_lion_with_equal_betas_bit_for_bit():
    a = _param((6, 4))
    b = torch.nn.Parameter(a.detach().clone())
    # element-wise kind: eta = 0.5 * lr, so lr = 2 * eta gives Lion's fixed eta exactly
    tiger = Tiger([a], lr=2 * 0.01, beta=0.965, weight_decay=0.2, kind="elementwise")
    lion = Lion([b], lr=0.01, betas=(0.965, 0.965), weight_decay=0.2)
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        a.grad = a.detach() + torch.randn(a.shape, generator=g, dtype=a.dtype)
        b.grad = a.grad.clone()
        tiger.step()
        lion.step()
    assert torch.equal(a, b)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(2, 6), min_size=2, max_size=3).map(tuple),
       alpha=st.floats(1e-4, 1e-2), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_matrix_relative_change_is_alpha(shape, alpha, dtype):
    w = _param(shape, dtype)
    w0 = w.detach().clone()
    opt = Tiger([w], lr=alpha)
    w.grad = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    opt.step()
    rel = (torch.linalg.vector_norm(w - w0) / torch.linalg.vector_norm(w0)).item()
    # rounding of w - eta * sign: at most eps |w| per entry, against a step of alpha RMS(w)
    eps = torch.finfo(dtype).eps
    tol = 4 * eps * (w0.abs().max() / w0.pow(2).mean().sqrt()).item() / alpha + 1e-13
    assert abs(rel / alpha - 1) < tol
    assert w.dtype == dtype


def test_elementwise_moves_by_half_alpha():
    b = _param((5,))
    b0 = b.detach().clone()
    opt = Tiger([b], lr=0.004)
    b.grad = torch.randn_like(b)
    opt.step()
    assert torch.allclose((b - b0).abs(), torch.full_like(b, 0.002), atol=1e-15)


def test_tiger_lr_rules():
    w = torch.full((3, 4), 2.0)
    assert tiger_lr(1e-3, w) == pytest.approx(2e-3, rel=1e-15)
    assert tiger_lr(1e-3, w, "elementwise") == 5e-4
    assert tiger_lr(1e-3, torch.ones(7)) == 5e-4
    assert tiger_lr(1e-3, torch.ones(7), "matrix") == pytest.approx(1e-3)
    assert tiger_lr(1e-3, torch.zeros(3, 3)) == 0.0  # zero kernels never move
    with pytest.raises(ValueError, match="kind"):
        tiger_lr(1e-3, w, "kernel")


def _quadratic_grads(theta, k, gen):
    """k micro-batch gradients of 1/2 |A theta - b_i|^2 at a fixed theta."""
    return [theta + 0.5 * torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
            for _ in range(k)]


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_accumulation_reproduces_big_batch(k):
    a = _param((5, 4))
    b = torch.nn.Parameter(a.detach().clone())
    acc = Tiger([a], lr=2e-2, weight_decay=0.1, accumulate=k)
    big = Tiger([b], lr=2e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(k)
    worst = 0.0
    for _ in range(40):
        grads = _quadratic_grads(a.detach().clone(), k, gen)
        assert torch.equal(a, b) or worst > 0
        for i, g in enumerate(grads):
            a.grad = g
            before = a.detach().clone()
            acc.step()
            if i < k - 1:
                assert torch.equal(a, before)  # frozen inside a cycle
        b.grad = torch.stack(grads).mean(0)
        big.step()
        worst = max(worst, (a - b).abs().max().item())
    # the two sum the k gradients in different orders: equal up to rounding
    assert worst < 1e-13
    assert acc.state[a]["step"] == 40 * k


def test_accumulation_is_exact_in_rational_arithmetic():
    beta, eta, k = Fraction(965, 1000), Fraction(1, 64), 4
    gen = torch.Generator().manual_seed(0)
    noise = [[Fraction(int(v)) / 8 for v in torch.randint(-20, 20, (3,), generator=gen)]
             for _ in range(60 * k)]
    theta_a = [Fraction(1), Fraction(-2), Fraction(3, 2)]
    theta_b, m_a, m_b = list(theta_a), [Fraction(0)] * 3, [Fraction(0)] * 3
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    for t in range(1, 60 * k + 1):
        grad = [th + n for th, n in zip(theta_a, noise[t - 1], strict=True)]
        factor = beta if (t - 1) % k == 0 else 1
        m_a = [factor * m + (1 - beta) / k * g for m, g in zip(m_a, grad, strict=True)]
        if t % k == 0:
            theta_a = [th - eta * sign(m) for th, m in zip(theta_a, m_a, strict=True)]
            gbar = [th + sum(noise[s][i] for s in range(t - k, t)) / k
                    for i, th in enumerate(theta_b)]
            m_b = [beta * m + (1 - beta) * g for m, g in zip(m_b, gbar, strict=True)]
            theta_b = [th - eta * sign(m) for th, m in zip(theta_b, m_b, strict=True)]
            assert theta_a == theta_b and m_a == m_b


def test_wrong_factor_breaks_accumulation():
    # applying beta at every micro-step is not big-batch Tiger
    beta, k = 0.965, 4
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(4, k, generator=gen, dtype=torch.float64)
    m = torch.zeros(4, dtype=torch.float64)
    for i in range(k):
        m = beta * m + (1 - beta) / k * g[:, i]
    assert (m - (1 - beta) * g.mean(1)).abs().max() > 1e-3


def test_nan_guard_shrinks_and_keeps_momentum():
    w, gain = _param((3, 3)), torch.nn.Parameter(torch.full((3,), 1.3, dtype=torch.float64))
    opt = Tiger([{"params": [w]}, {"params": [gain], "center": 1.0}], lr=1e-3)
    w.grad, gain.grad = torch.randn_like(w), torch.randn_like(gain)
    opt.step()
    w1, g1 = w.detach().clone(), gain.detach().clone()
    m1, step1 = opt.state[w]["exp_avg"].clone(), opt.state[w]["step"]
    for _ in range(10):
        w.grad = torch.full_like(w, float("nan"))
        gain.grad = torch.ones_like(gain)  # finite, but the step is skipped for all
        opt.step()
    assert torch.allclose(w, 0.99**10 * w1, rtol=1e-14)
    assert torch.allclose(gain, 1 + 0.99**10 * (g1 - 1), rtol=1e-14)
    assert torch.equal(opt.state[w]["exp_avg"], m1) and opt.state[w]["step"] == step1
    w.grad, gain.grad = torch.randn_like(w), torch.randn_like(gain)
    opt.step()
    assert torch.isfinite(w).all() and opt.state[w]["step"] == step1 + 1


def test_inf_gradient_triggers_guard_and_guard_can_be_off():
    w = _param((2, 2))
    opt = Tiger([w], lr=1e-3, nan_guard=False)
    w.grad = torch.full_like(w, float("inf"))
    opt.step()
    assert torch.isinf(opt.state[w]["exp_avg"]).all()


def test_lazy_rows_untouched():
    e = _param((5, 3))
    opt = Tiger([e], lr=1e-2, weight_decay=0.1, lazy=True)
    e.grad = torch.randn_like(e)
    opt.step()
    before, m_before = e.detach().clone(), opt.state[e]["exp_avg"].clone()
    grad = torch.zeros_like(e)
    grad[2] = 1.0
    e.grad = grad
    opt.step()
    absent = [0, 1, 3, 4]
    assert torch.equal(e[absent], before[absent])
    assert torch.equal(opt.state[e]["exp_avg"][absent], m_before[absent])
    assert not torch.equal(e[2], before[2])


def test_state_dict_round_trip_mid_cycle():
    a = _param((4, 4))
    b = torch.nn.Parameter(a.detach().clone())
    opt = Tiger([a], lr=1e-2, accumulate=3)
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(4, 4, generator=gen, dtype=torch.float64) for _ in range(10)]
    for g in grads[:4]:
        a.grad = g
        opt.step()
    other = Tiger([b], lr=0.5)
    b.data.copy_(a.data)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    for g in grads[4:]:
        a.grad, b.grad = g, g.clone()
        opt.step()
        other.step()
    assert torch.equal(a, b)


def test_closure_and_sparse():
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]]))
    opt = Tiger([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(5.0)
    emb = torch.nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([0])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        Tiger(emb.parameters()).step()


@pytest.mark.parametrize("kw, exc, text", [
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(beta=1.2), ValueError, "beta"),
    (dict(kind="bias"), ValueError, "kind"),
    (dict(accumulate=0), ValueError, "accumulate"),
    (dict(accumulate=2.0), TypeError, "accumulate"),
    (dict(shrink=0.0), ValueError, "shrink"),
    (dict(lazy=True, accumulate=2), ValueError, "lazy"),
    (dict(nan_guard="yes"), TypeError, "nan_guard"),
])
def test_bad_arguments(kw, exc, text):
    with pytest.raises(exc, match=text):
        Tiger([torch.nn.Parameter(torch.zeros(2))], **kw)


def test_functional_and_fraction_unchanged():
    gen = torch.Generator().manual_seed(6)
    theta, m, g = (torch.randn(8, generator=gen, dtype=torch.float64) for _ in range(3))
    t1, m1 = tiger_update(theta, m, g, lr=0.01, beta=0.9)
    assert torch.allclose(m1, 0.9 * m + (1 - 0.9) * g, rtol=1e-15, atol=1e-16)
    assert torch.allclose((theta - t1).abs(), torch.full_like(theta, 0.01))
    w = torch.ones(4)
    assert fraction_unchanged(w, torch.full((4,), 1e-4), torch.float16) == 1.0
    assert fraction_unchanged(w, torch.full((4,), 1e-3), torch.float16) == 0.0
    assert fraction_unchanged(w, torch.full((4,), 1e-4), torch.float32) == 0.0
    assert math.isclose(fraction_unchanged(w, torch.tensor([1e-4, 1.0, 1e-4, 1.0]),
                                           torch.bfloat16), 0.5)
    with pytest.raises(TypeError, match="dtype"):
        fraction_unchanged(w, w, torch.int32)


def _reference_tiger(params, grads_seq, *, alpha, beta, wd, k):
    """A per-tensor loop written from the formulas, independent of the foreach code."""
    thetas = [p.detach().clone() for p in params]
    ms = [torch.zeros_like(t) for t in thetas]
    steps = [0] * len(thetas)
    for grads in grads_seq:
        for i, g in enumerate(grads):
            if g is None:
                continue
            steps[i] += 1
            t = steps[i]
            factor = beta if (t - 1) % k == 0 else 1.0
            ms[i] = ms[i] * factor + (1 - beta) / k * g
            if t % k == 0:
                th = thetas[i]
                rms = th.double().pow(2).mean().sqrt().item()
                eta = alpha * rms if th.ndim >= 2 else 0.5 * alpha
                thetas[i] = th * (1 - eta * wd) - eta * torch.sign(ms[i])
    return thetas


@settings(max_examples=15, deadline=None)
@given(k=st.integers(1, 3), seed=st.integers(0, 10**6),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_foreach_matches_per_tensor_reference(k, seed, dtype):
    _check_against_reference(k, seed, dtype, beta=0.9)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_foreach_matches_the_reference_at_the_ends_of_beta(beta):
    # beta = 0: the momentum is the last gradient (the old one multiplied by 0, not kept)
    for k in (1, 2):
        _check_against_reference(k, 5, torch.float64, beta=beta)


def _check_against_reference(k, seed, dtype, *, beta):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (4,), (2, 3, 2)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
    start = [p.detach().clone() for p in params]
    opt = Tiger(params, lr=1e-2, beta=beta, weight_decay=0.1, accumulate=k, nan_guard=False)
    grads_seq = []
    for _ in range(12):
        present = torch.rand(3, generator=gen) < 0.8  # a missing grad skips that parameter
        grads = [torch.randn(s, generator=gen, dtype=dtype) if keep else None
                 for s, keep in zip(shapes, present.tolist(), strict=True)]
        grads_seq.append(grads)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
    ref = _reference_tiger([torch.nn.Parameter(s) for s in start], grads_seq, alpha=1e-2,
                           beta=beta, wd=0.1, k=k)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for p, r in zip(params, ref, strict=True):
        assert torch.allclose(p.detach(), r, rtol=0, atol=tol)


@pytest.mark.parametrize("k, dtype", [(1, torch.float32), (2, torch.float32),
                                      (1, torch.float64)])
def test_fused_equals_foreach_bit_for_bit(k, dtype):
    """The compiled one-pass step is the foreach step, bit for bit: matrices (eta from RMS),
    vectors, a 0-d gain, weight decay, accumulation, a parameter without gradient, and a state
    dict moved between the two paths halfway."""
    shapes = [(40, 30), (17,), (3, 4, 5), (), (1, 1)]
    gen = torch.Generator().manual_seed(7)
    a = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    kw = dict(lr=2e-2, beta=0.9, weight_decay=0.1, accumulate=k)
    fused = Tiger([{"params": a[:3]}, {"params": a[3:], "kind": "elementwise", "center": 1.0}],
                  fused=True, **kw)
    eager = Tiger([{"params": b[:3]}, {"params": b[3:], "kind": "elementwise", "center": 1.0}],
                  fused=False, **kw)
    for step in range(8):
        if step == 4:
            fs, es = copy.deepcopy(fused.state_dict()), copy.deepcopy(eager.state_dict())
            fused.load_state_dict(es)
            eager.load_state_dict(fs)
        for i, (p, q) in enumerate(zip(a, b, strict=True)):
            grad = None if i == 1 else torch.randn(p.shape, generator=gen, dtype=dtype)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        fused.step()
        eager.step()
        for o in (fused, eager):
            o.param_groups[0]["lr"] *= 0.8
    assert getattr(fused, "_fused_off", None) is None  # the compiled kernel really ran
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q) and p.dtype == dtype
    assert a[1] not in fused.state
    assert fused.state[a[0]]["step"] == eager.state[b[0]]["step"] == 8


def test_fused_nan_guard_and_fallback(monkeypatch):
    from dlmath.optim import _fused

    w = _param((4, 4), torch.float32)
    opt = Tiger([w], lr=1e-2, fused=True)
    w.grad = torch.full_like(w, float("nan"))
    before = w.detach().clone()
    opt.step()  # the guard acts before either path
    assert torch.equal(w, 0.99 * before) and "exp_avg" not in opt.state[w]

    monkeypatch.setattr(_fused, "_compiled_kernel", lambda: 1 / 0)
    v = _param((4, 4), torch.float32)
    u = torch.nn.Parameter(v.detach().clone())
    broken, eager = Tiger([v], lr=1e-2, fused=True), Tiger([u], lr=1e-2, fused=False)
    with pytest.warns(RuntimeWarning, match="ZeroDivisionError"):
        for _ in range(3):
            v.grad = torch.randn_like(v)
            u.grad = v.grad.clone()
            broken.step()
            eager.step()
    assert torch.equal(v, u)
    with pytest.raises(TypeError, match="fused"):
        Tiger([v], fused=1)


def test_all_finite_is_exact_when_a_sum_overflows():
    from dlmath._checks import all_finite  # Tiger's NaN guard

    big = torch.full((4,), 3e38)  # finite entries whose sum overflows to inf
    assert all_finite([big, torch.ones(2)])
    assert not all_finite([big, torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("inf"), -float("inf")])])
    assert all_finite([]) and all_finite([torch.empty(0)])


def test_lazy_option_of_a_group_must_be_a_bool():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="lazy must be a bool, got int"):
        Tiger([{"params": [p], "lazy": 1}])


@pytest.mark.parametrize("bad, exc, text", [
    (dict(lr=-1.0), ValueError, "lr must be >= 0"),
    (dict(lazy=True, accumulate=2), ValueError, "lazy=True needs accumulate=1"),
    (dict(kind="nope"), ValueError, "kind"),
    (dict(lazy=1), TypeError, "lazy must be a bool"),
])
def test_rejected_param_group_is_not_kept(bad, exc, text):
    # the group is removed again, so the next step does not use it (lr=-1 would move b uphill)
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Tiger([a], lr=0.1)
    with pytest.raises(exc, match=text):
        opt.add_param_group({"params": [b], **bad})
    assert len(opt.param_groups) == 1
    b.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b, torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matrix_lr_is_finite_and_matches_tiger_lr(dtype):
    # a float16 matrix whose norm (90,000) exceeds float16's 65504: the learning rate must not
    # overflow to inf (review r1618: the norm was taken in float16 and the step became inf)
    w = torch.nn.Parameter(torch.full((300, 300), 300.0, dtype=dtype))
    w0 = w.detach().clone()
    opt = Tiger([w], lr=1e-3, weight_decay=0.01, fused=False)
    w.grad = torch.ones_like(w)
    opt.step()
    assert torch.isfinite(w).all() and w.dtype == dtype
    eta = tiger_lr(1e-3, w0)  # float64 reference: 0.3
    expected = (w0.double() * (1 - eta * 0.01) - eta).to(dtype)
    assert torch.equal(w.detach(), expected)
    # a random half matrix: the learning rate agrees with the float64 one to float32 rounding
    v = torch.nn.Parameter((0.02 * torch.randn(64, 32, generator=torch.Generator().manual_seed(9)))
                           .to(dtype))
    from dlmath.optim.tiger import _tiger_etas

    etas = _tiger_etas([v.detach()], 1e-3, "auto")
    assert etas[0] == pytest.approx(tiger_lr(1e-3, v), rel=1e-6)


@pytest.mark.parametrize("lazy", [False, True])
def test_empty_parameters_are_allowed(lazy):
    # review r1618: an empty matrix made the RMS learning rate divide by zero
    e, b = torch.nn.Parameter(torch.zeros(0, 5)), torch.nn.Parameter(torch.zeros(0))
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = Tiger([e, b, w], lr=1e-2, weight_decay=0.1, lazy=lazy, fused=False)
    e.grad, b.grad, w.grad = torch.zeros(0, 5), torch.zeros(0), torch.ones(2, 2)
    opt.step()
    assert e.shape == (0, 5) and b.shape == (0,)
    assert torch.allclose(w.detach(), torch.full((2, 2), (1 - 1e-3) - 1e-2))


def test_box_holds_with_the_varying_matrix_learning_rate():
    # chapter 18, outlier-cor-box: |theta| <= max(|theta_0|, 1/lambda) for any eta_t with
    # eta_t * lambda <= 1, here Tiger's eta_t = alpha * RMS(theta_{t-1}), sparse gradients
    gen = torch.Generator().manual_seed(11)
    table = torch.nn.Parameter(0.02 * torch.randn(32, 4, generator=gen, dtype=torch.float64))
    opt = Tiger([table], lr=0.3, weight_decay=2.0, kind="matrix", nan_guard=False)
    bound = max(table.detach().abs().max().item(), 0.5)
    for _ in range(300):
        present = torch.rand(32, 1, generator=gen, dtype=torch.float64) < 0.05
        table.grad = present * torch.randn(32, 4, generator=gen, dtype=torch.float64)
        opt.step()
        assert table.detach().abs().max() <= bound * (1 + 1e-15)
    assert table.detach().abs().max() > 0.45  # the wall 1/lambda = 0.5 is reached


# -- gaps found by mutation testing ---------------------------------------------------------

def test_defaults_are_relative_lr_1e_3_beta_0_965_and_no_decay():
    # Tiger(params): alpha = 1e-3, so a vector moves by 0.5e-3 per entry and is not shrunk;
    # tiger_update(..., lr=) defaults to beta = 0.965, weight_decay = 0
    b = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    b.grad = torch.tensor([2.0, -4.0, 0.5], dtype=torch.float64)
    Tiger([b]).step()
    assert torch.equal(b.detach(), torch.tensor([1.0 - 5e-4, -2.0 + 5e-4, 3.0 - 5e-4],
                                                dtype=torch.float64))
    theta = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    m = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    g = torch.tensor([-20.0, 30.0, 1.0], dtype=torch.float64)  # m wins, g wins, both agree
    new, m_new = tiger_update(theta, m, g, lr=0.25)
    torch.testing.assert_close(m_new, 0.965 * m + 0.035 * g, rtol=0, atol=1e-15)
    assert torch.equal(new, torch.tensor([0.75, -2.25, 2.75], dtype=torch.float64))


def test_fraction_unchanged_takes_0d_tensors_and_broadcasts():
    # bfloat16 keeps 8 significant bits: the spacing below 1 is 2^-8 and below 256 is 1, so
    # 256 - 0.01 rounds back to 256 while 1 - 0.01 does not; 0-d operands broadcast
    assert fraction_unchanged(torch.tensor(256.0), torch.tensor(0.01), torch.bfloat16) == 1.0
    assert fraction_unchanged(torch.tensor(1.0), torch.tensor(0.01), torch.bfloat16) == 0.0
    assert fraction_unchanged(torch.tensor([1.0, 256.0]), torch.tensor(0.01),
                              torch.bfloat16) == 0.5
    assert fraction_unchanged(torch.tensor(256.0), torch.tensor([0.01, 4.0]),
                              torch.bfloat16) == 0.5
    # fl(theta - u), not fl(theta + u): 1 - 0.003 passes the midpoint 1 - 2^-9 and rounds
    # to 1 - 2^-8, while 1 + 0.003 would round back to 1 (the spacing above 1 is 2^-7)
    assert fraction_unchanged(torch.tensor(1.0), torch.tensor(0.003), torch.bfloat16) == 0.0
    assert fraction_unchanged(torch.tensor(1.0), torch.tensor(-0.003), torch.bfloat16) == 1.0


@pytest.mark.parametrize("wd", [1.0, 0.5])
def test_weight_decay_of_one_shrinks_by_one_minus_eta(wd):
    # theta' = (1 - eta wd) theta - eta sign(m), also at weight_decay = 1; element-wise kind,
    # so eta = alpha / 2, and from m = 0 the sign is that of the gradient
    b = _param((6,), seed=12)
    theta = b.detach().clone()
    b.grad = torch.randn(6, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    Tiger([b], lr=0.25, weight_decay=wd, fused=False).step()
    want = (1 - 0.125 * wd) * theta - 0.125 * torch.sign(b.grad)
    torch.testing.assert_close(b.detach(), want, rtol=0, atol=1e-15)


def test_tiger_lr_of_a_0d_parameter():
    # a scalar parameter (0-d) is element-wise under "auto": eta = alpha / 2; as a "matrix"
    # its RMS is |theta|
    assert tiger_lr(1e-3, torch.tensor(-3.0)) == 5e-4
    assert tiger_lr(1e-3, torch.tensor(-3.0), "matrix") == pytest.approx(3e-3, rel=1e-15)


def test_fused_micro_steps_that_neither_decay_nor_fire_leave_parameters_alone():
    # accumulate=3: micro-step 2 of each cycle neither multiplies the momentum by beta nor
    # moves the parameter; the compiled kernel must rewrite it unchanged (as foreach does).
    # The groups, shapes and missing gradient of the fused test above (no new compile)
    shapes = [(40, 30), (17,), (3, 4, 5), (), (1, 1)]
    gen = torch.Generator().manual_seed(14)
    a = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    kw = dict(lr=2e-2, beta=0.9, weight_decay=0.1, accumulate=3)
    fused, eager = (Tiger([{"params": ps[:3]}, {"params": ps[3:], "kind": "elementwise"}],
                          fused=f, **kw) for ps, f in ((a, True), (b, False)))
    for step in range(1, 7):
        before = [p.detach().clone() for p in a]
        for i, (p, q) in enumerate(zip(a, b, strict=True)):
            grad = None if i == 1 else torch.randn(p.shape, generator=gen)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        fused.step()
        eager.step()
        if step % 3 != 0:
            assert all(torch.equal(p, p0) for p, p0 in zip(a, before, strict=True))
    assert getattr(fused, "_fused_off", None) is None  # the compiled kernel really ran
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(torch.equal(fused.state[p]["exp_avg"], eager.state[q]["exp_avg"])
               for p, q in zip(a, b, strict=True) if p.grad is not None)
    assert not torch.equal(a[0], before[0])  # the third micro-step did move
