"""Tests of dlmath.optim.Lion and lion_update: cross-checks against lion-pytorch and AdamW."""

import copy
import sys

import lion_pytorch
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath.optim import Lion, lion_update

SHAPES = st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple)
DTYPES = st.sampled_from([torch.float32, torch.float64])


def _params(shapes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _run(opt_cls, params, steps, seed=1, **kw):
    """Feed the same seeded noisy-quadratic gradients to an optimizer; return the final params."""
    opt = opt_cls(params, **kw)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = p.detach() + torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
    return opt


@settings(max_examples=25, deadline=None)
@given(shapes=st.lists(SHAPES, min_size=1, max_size=3), dtype=DTYPES,
       lr=st.floats(1e-4, 0.1), wd=st.sampled_from([0.0, 0.01, 0.5]),
       b1=st.floats(0.0, 0.99), b2=st.floats(0.0, 0.999))
def test_matches_lion_pytorch_bit_for_bit(shapes, dtype, lr, wd, b1, b2):
    ours = _params(shapes, dtype)
    ref = _clone(ours)
    kw = dict(lr=lr, betas=(b1, b2), weight_decay=wd)
    _run(Lion, ours, 20, **kw)
    _run(lion_pytorch.Lion, ref, 20, **kw)
    for p, q in zip(ours, ref, strict=True):
        assert torch.equal(p, q)
        assert p.dtype == dtype


def test_state_matches_lion_pytorch_momentum():
    ours = _params([(4, 3), (3,)], torch.float64)
    ref = _clone(ours)
    a = _run(Lion, ours, 10, lr=1e-2, weight_decay=0.1)
    b = _run(lion_pytorch.Lion, ref, 10, lr=1e-2, weight_decay=0.1)
    for p, q in zip(ours, ref, strict=True):
        assert torch.equal(a.state[p]["exp_avg"], b.state[q]["exp_avg"])


@settings(max_examples=20, deadline=None)
@given(shape=SHAPES, dtype=DTYPES, lr=st.floats(1e-4, 1.0), wd=st.floats(0.0, 0.9),
       b1=st.floats(0.0, 1.0), b2=st.floats(0.0, 1.0))
def test_update_rule_properties(shape, dtype, lr, wd, b1, b2):
    g = torch.Generator().manual_seed(3)
    theta, m, grad = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    new, m_new = lion_update(theta, m, grad, lr=lr, betas=(b1, b2), weight_decay=wd)
    # the step after weight decay is -lr times a sign of the interpolated momentum
    u = (theta * (1 - lr * wd) - new) / lr
    expected = torch.sign(b1 * m + (1 - b1) * grad)
    tol = 8 * torch.finfo(dtype).eps * (theta.abs() + lr) / lr  # rounding of theta - new
    assert ((u - expected).abs() <= tol).all()
    assert torch.allclose(m_new, b2 * m + (1 - b2) * grad, rtol=1e-5, atol=1e-6)
    assert new.dtype == dtype and new.shape == theta.shape


def test_functional_equals_optimizer():
    (p,) = _params([(6, 5)], torch.float64)
    theta, m = p.detach().clone(), torch.zeros_like(p)
    opt = Lion([p], lr=0.03, betas=(0.8, 0.95), weight_decay=0.2)
    g = torch.Generator().manual_seed(5)
    for _ in range(30):
        grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad = grad
        opt.step()
        theta, m = lion_update(theta, m, grad, lr=0.03, betas=(0.8, 0.95), weight_decay=0.2)
    assert torch.equal(p.detach(), theta)
    assert torch.equal(opt.state[p]["exp_avg"], m)


def test_weight_decay_convention_matches_adamw():
    # with a zero gradient Lion's sign step and AdamW's adaptive step both vanish, so what is
    # left is the decoupled decay: both multiply by 1 - lr * weight_decay
    a = _params([(7, 3)], torch.float64)
    b = _clone(a)
    lion = Lion(a, lr=0.05, weight_decay=0.3)
    adamw = torch.optim.AdamW(b, lr=0.05, weight_decay=0.3)
    for _ in range(5):
        a[0].grad = torch.zeros_like(a[0])
        b[0].grad = torch.zeros_like(b[0])
        lion.step()
        adamw.step()
    assert torch.equal(a[0], b[0])
    wrong = _clone(b)
    lion_l2 = Lion(wrong, lr=0.05, weight_decay=0.3 * 0.05)  # "weight_decay = lr * lambda"
    wrong[0].grad = torch.zeros_like(wrong[0])
    lion_l2.step()
    assert not torch.allclose(wrong[0], b[0])


def test_param_groups_and_missing_grads():
    a, b, c = _params([(3, 2), (4,), (2,)], torch.float64)
    c0 = c.detach().clone()
    opt = Lion([{"params": [a], "lr": 0.1}, {"params": [b, c], "lr": 0.01}])
    a.grad, b.grad = torch.ones_like(a), -torch.ones_like(b)
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt.step()
    assert torch.allclose(a - a0, torch.full_like(a, -0.1), atol=1e-15)
    assert torch.allclose(b - b0, torch.full_like(b, 0.01), atol=1e-15)
    assert torch.equal(c, c0) and c not in opt.state


def test_state_dict_round_trip():
    ps = _params([(5, 4), (4,)], torch.float32)
    qs = _clone(ps)
    opt = _run(Lion, ps, 5, lr=1e-2, weight_decay=0.1)
    saved = copy.deepcopy(opt.state_dict())
    for p, q in zip(ps, qs, strict=True):
        q.data.copy_(p.data)
    other = Lion(qs, lr=1.0)
    other.load_state_dict(saved)
    assert other.param_groups[0]["lr"] == 1e-2
    g = torch.Generator().manual_seed(9)
    for _ in range(5):
        for p, q in zip(ps, qs, strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        other.step()
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)


def test_closure_is_called_with_grad_enabled():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Lion([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    assert torch.allclose(w.detach(), torch.tensor([0.9, -1.9]))


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse gradients"):
        Lion(emb.parameters()).step()


def test_lazy_rows_are_untouched():
    (e,) = _params([(6, 3)], torch.float64)
    opt = Lion([e], lr=0.1, weight_decay=0.5, lazy=True)
    e.grad = torch.randn_like(e)
    opt.step()
    before, m_before = e.detach().clone(), opt.state[e]["exp_avg"].clone()
    grad = torch.zeros_like(e)
    grad[[1, 4]] = 1.0
    e.grad = grad
    opt.step()
    absent = [0, 2, 3, 5]
    assert torch.equal(e[absent], before[absent])
    assert torch.equal(opt.state[e]["exp_avg"][absent], m_before[absent])
    assert not torch.equal(e[[1, 4]], before[[1, 4]])


def test_absent_rows_keep_moving_without_lazy():
    (e,) = _params([(4, 2)], torch.float64)
    opt = Lion([e], lr=0.1, betas=(0.9, 0.99))
    e.grad = torch.ones_like(e)
    opt.step()
    e.grad = torch.zeros_like(e)
    before = e.detach().clone()
    opt.step()
    assert torch.allclose(e - before, torch.full_like(e, -0.1), atol=1e-15)


def test_zero_momentum_does_not_move():
    (p,) = _params([(3,)], torch.float64)
    opt = Lion([p], lr=0.1)
    p.grad = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    before = p.detach().clone()
    opt.step()
    assert torch.equal((p - before)[[0, 2]], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("kw, exc, text", [
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lr="x"), TypeError, "lr"),
    (dict(betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(betas=torch.tensor(0.9)), TypeError, r"betas must be a pair \(beta1, beta2\)"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(lazy=1), TypeError, "lazy"),
])
def test_bad_arguments(kw, exc, text):
    with pytest.raises(exc, match=text):
        Lion([torch.nn.Parameter(torch.zeros(2))], **kw)


def test_bad_param_group():
    opt = Lion([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="betas"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "betas": (2, 0)})


@pytest.mark.parametrize("bad, exc", [(dict(lr=-1.0), ValueError), (dict(betas=(2, 0)), ValueError),
                                      (dict(weight_decay=-0.1), ValueError),
                                      (dict(lazy=1), TypeError)])
def test_rejected_param_group_is_not_kept(bad, exc):
    # the group is removed again, so the next step does not use it (lr=-1 would move b uphill)
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Lion([a], lr=0.1)
    with pytest.raises(exc):
        opt.add_param_group({"params": [b], **bad})
    assert len(opt.param_groups) == 1
    b.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b, torch.ones(2))


def test_functional_bad_input():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="m must match theta"):
        lion_update(x, torch.zeros(4), x, lr=0.1)
    with pytest.raises(TypeError, match="theta"):
        lion_update(torch.zeros(3, dtype=torch.int64), x, x, lr=0.1)


def test_nan_gradient_freezes_the_coordinate_silently():
    (p,) = _params([(3,)], torch.float32)
    before = p.detach().clone()
    opt = Lion([p], lr=0.1)
    p.grad = torch.tensor([float("nan"), 1.0, -1.0])
    opt.step()
    # torch.sign(nan) is 0 on CPU: the coordinate does not move, but its momentum is NaN from
    # now on, so it never moves again (documented; Tiger's nan_guard avoids this)
    assert p[0] == before[0] and torch.isnan(opt.state[p]["exp_avg"][0])
    p.grad = torch.ones(3)
    opt.step()
    assert p[0] == before[0] and torch.isfinite(p).all()


# --- the fused (torch.compile) path -------------------------------------------------------

FUSED_SHAPES = [(40, 30), (17,), (3, 4, 5), (), (1, 1)]


def _fused_pair(cls, dtype=torch.float32, groups=False, **kw):
    """Two optimizers on equal parameters: fused=True and fused=False."""
    a = _params(FUSED_SHAPES, dtype)
    b = _clone(a)

    def make(ps, fused):
        spec = [{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.3}] if groups else ps
        return cls(spec, fused=fused, **kw)

    return a, b, make(a, True), make(b, False)


def _step_both(a, b, oa, ob, steps, seed=1, lr_decay=1.0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for i, (p, q) in enumerate(zip(a, b, strict=True)):
            grad = None if i == 3 else torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        oa.step()
        ob.step()
        for o in (oa, ob):  # a scheduler: the fused kernel takes lr as data, no recompile
            for group in o.param_groups:
                group["lr"] *= lr_decay


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_lion_equals_foreach_bit_for_bit(dtype):
    a, b, fused, eager = _fused_pair(Lion, dtype, groups=True, lr=0.03, betas=(0.8, 0.95),
                                     weight_decay=0.1)
    _step_both(a, b, fused, eager, 6, lr_decay=0.7)
    assert getattr(fused, "_fused_off", None) is None  # the compiled kernel really ran
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q) and p.dtype == dtype
        if p.grad is not None:
            assert torch.equal(fused.state[p]["exp_avg"], eager.state[q]["exp_avg"])
    assert a[3] not in fused.state  # never had a gradient: untouched, no state


def test_fused_signsgd_equals_foreach():
    from dlmath.optim import SignSGD

    a, b, fused, eager = _fused_pair(SignSGD, lr=0.01, momentum=0.9, weight_decay=0.05)
    _step_both(a, b, fused, eager, 4)
    assert getattr(fused, "_fused_off", None) is None
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_fused_state_dict_moves_across_paths():
    a, b, fused, eager = _fused_pair(Lion, lr=0.02, weight_decay=0.1)
    _step_both(a, b, fused, eager, 3)
    # swap the states: the fused optimizer continues the foreach run and vice versa
    fused_state, eager_state = copy.deepcopy(fused.state_dict()), copy.deepcopy(eager.state_dict())
    fused.load_state_dict(eager_state)
    eager.load_state_dict(fused_state)
    assert fused.fused is True and eager.fused is False  # the path is not part of the state
    _step_both(a, b, fused, eager, 3, seed=2)
    assert getattr(fused, "_fused_off", None) is None
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_fused_compile_failure_warns_once_and_falls_back(monkeypatch):
    from dlmath.optim import _fused

    def broken():
        raise RuntimeError("no C++ compiler (simulated)")

    monkeypatch.setattr(_fused, "_compiled_kernel", broken)
    a, b, fused, eager = _fused_pair(Lion, lr=0.02, weight_decay=0.1)
    with pytest.warns(RuntimeWarning, match="no C.. compiler") as record:
        _step_both(a, b, fused, eager, 4)
    assert len([w for w in record if "fused" in str(w.message)]) == 1
    assert "simulated" in fused._fused_off
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_fused_unavailable_device(monkeypatch):
    from dlmath.optim import _fused

    monkeypatch.setattr(_fused, "_unavailable", lambda device_type: "no compiler (simulated)")
    monkeypatch.setattr(_fused, "FUSED_MIN_NUMEL", 1)
    (p,) = _params([(3,)], torch.float32)
    p.grad = torch.ones(3)
    with pytest.warns(RuntimeWarning, match="simulated"):
        Lion([p], fused=True).step()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Lion([p], fused=None).step()  # auto: silently foreach


def test_fused_auto_compiles_only_large_groups(monkeypatch):
    from dlmath.optim import _fused

    calls = []

    def spy():
        calls.append(1)
        raise RuntimeError("spy")

    monkeypatch.setattr(_fused, "_compiled_kernel", spy)
    (p,) = _params([(30, 30)], torch.float32)
    p.grad = torch.ones_like(p)
    Lion([p]).step()
    assert calls == []  # 900 elements < FUSED_MIN_NUMEL: no compile
    monkeypatch.setattr(_fused, "FUSED_MIN_NUMEL", 900)
    with pytest.warns(RuntimeWarning, match="spy"):
        Lion([p]).step()
    assert calls == [1]


def test_foreach_chunks_equal_whole_tensors(monkeypatch):
    import dlmath.optim.lion as lion_module

    a = _params([(37, 29), (5,), (300,)], torch.float32)
    b = _clone(a)
    monkeypatch.setattr(lion_module, "CHUNK", 64)  # many chunks and waves
    waves = lion_module._waves(a, a, a)
    assert len(waves) > 10 and sum(t.numel() for w in waves for t in w[0]) == 37 * 29 + 305
    oa = Lion(a, lr=0.02, weight_decay=0.1, fused=False)
    ob = lion_pytorch.Lion(b, lr=0.02, weight_decay=0.1)
    _step_both(a, b, oa, ob, 5, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_bad_fused_argument():
    with pytest.raises(TypeError, match="fused"):
        Lion([torch.nn.Parameter(torch.zeros(2))], fused="yes")


def test_fused_auto_stays_on_foreach_off_the_cpu(monkeypatch):
    # auto mode compiles only CPU groups (on an H100 the compiled kernel measured slower)
    from types import SimpleNamespace

    from dlmath.optim import _fused

    monkeypatch.setattr(_fused, "_unavailable", lambda device_type: None)
    opt = SimpleNamespace(fused=None)
    big = _fused.FUSED_MIN_NUMEL
    assert _fused.use_fused(opt, [torch.empty(big)])
    assert not _fused.use_fused(opt, [torch.empty(big, device="meta")])
    assert _fused.use_fused(SimpleNamespace(fused=True), [torch.empty(big, device="meta")])


# -- the remaining branches ---------------------------------------------------------------

def test_lazy_rows_of_a_vector_is_one_row():
    from dlmath.optim.lion import lazy_rows

    assert lazy_rows(torch.zeros(4)).ndim == 0 and not lazy_rows(torch.zeros(4))
    assert lazy_rows(torch.tensor([0.0, 0.0, -1e-30]))
    assert lazy_rows(torch.tensor(2.0)) and not lazy_rows(torch.tensor(0.0))
    assert lazy_rows(torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])).tolist() == [
        False, True, False]


def test_lazy_option_of_a_group_must_be_a_bool():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="lazy must be a bool, got str"):
        Lion([{"params": [p], "lazy": "yes"}])


def test_step_without_gradients_changes_nothing():
    (p,) = _params([(3, 2)], torch.float32)
    before = p.detach().clone()
    opt = Lion([p], lr=0.1, weight_decay=0.5)
    opt.step()
    assert torch.equal(p.detach(), before) and not opt.state


def test_dir_of_the_optim_package_lists_its_exports():
    import dlmath.optim as optim

    assert dir(optim) == optim.__all__
    assert {"Lion", "Tiger", "Muon", "SignSGD", "clip_grad_norm_"} <= set(dir(optim))
    assert all(hasattr(optim, name) for name in dir(optim))


def test_the_uncompiled_kernel_is_the_lion_step():
    # the kernel body itself (what torch.compile traces), run eagerly: its prims.fma rounds
    # twice in eager mode, so it matches the float64 Lion step to float32 rounding, not bitwise
    import torch._inductor.inductor_prims  # noqa: F401  (registers torch.ops.prims.fma)

    from dlmath.optim import _fused

    g = torch.Generator().manual_seed(5)
    ps = [torch.randn(7, 5, generator=g), torch.randn(4, generator=g), torch.randn((), generator=g)]
    gs = [torch.randn(p.shape, generator=g) for p in ps]
    ms = [torch.randn(p.shape, generator=g) for p in ps]
    lr, b1, b2, wd = 0.03, 0.8, 0.95, 0.1
    refs = [lion_update(p.double(), m.double(), gr.double(), lr=lr, betas=(b1, b2),
                        weight_decay=wd) for p, m, gr in zip(ps, ms, gs, strict=True)]
    coef = torch.tensor([b1, 1 - b1, b2, 1 - b2, 1 - lr * wd, -lr], dtype=torch.float64)
    _fused._sign_kernel(ps, gs, ms, coef)
    for p, m, (p_ref, m_ref) in zip(ps, ms, refs, strict=True):
        torch.testing.assert_close(p.double(), p_ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(m.double(), m_ref, atol=1e-6, rtol=0)
    # per-tensor coefficients, shape (n, 6): the second tensor takes a zero learning rate
    per = torch.stack([coef, torch.tensor([b1, 1 - b1, b2, 1 - b2, 1.0, 0.0],
                                          dtype=torch.float64), coef])
    before = ps[1].clone()
    _fused._sign_kernel(ps, gs, ms, per)
    assert torch.equal(ps[1], before)


def test_why_the_fused_path_is_unavailable(monkeypatch):
    import importlib.util

    from dlmath.optim import _fused

    why = _fused._unavailable.__wrapped__  # past the lru_cache
    monkeypatch.setattr(_fused.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert why("cpu") == "no C++ compiler found (Inductor needs one on CPU)"
    monkeypatch.setattr(_fused.shutil, "which", lambda name: "/usr/bin/" + name)
    assert why("cpu") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert why("cuda") == "triton is not installed"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert why("cuda") is None
    assert why("mps") == "device type 'mps' is not supported by the fused path"
    monkeypatch.delattr(torch, "compile")
    assert why("cpu") == "this torch has no torch.compile"


def test_a_group_on_several_devices_takes_the_foreach_path(monkeypatch):
    import types

    from dlmath.optim import _fused

    monkeypatch.setattr(_fused, "_unavailable", lambda device_type: None)
    opt = types.SimpleNamespace(fused=True)
    params = [torch.zeros(2), torch.zeros(2, device="meta")]
    with pytest.warns(RuntimeWarning, match="the parameters of a group span several devices"):
        assert _fused.use_fused(opt, params) is False
    assert opt._fused_off == "the parameters of a group span several devices"
    assert _fused.use_fused(types.SimpleNamespace(fused=True), params[:1]) is True


# -- gaps found by mutation testing ---------------------------------------------------------

def test_defaults_are_lr_1e_4_betas_0_9_0_99_and_no_decay():
    # Lion(params) and lion_update(..., lr=) default to betas (0.9, 0.99) and weight_decay 0;
    # Lion's lr defaults to 1e-4. From m = 0: theta' = theta - lr sign(g), m' = 0.01 g
    # (no shrinking of theta); then from that m the interpolation 0.9 m + 0.1 g decides
    theta = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g1 = torch.tensor([2.0, -4.0, 1.0], dtype=torch.float64)
    p = torch.nn.Parameter(theta.clone())
    opt = Lion([p])
    p.grad = g1
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([1.0 - 1e-4, -2.0 + 1e-4, 3.0 - 1e-4],
                                                dtype=torch.float64))
    m = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    g2 = torch.tensor([-8.0, 10.0, 1.0], dtype=torch.float64)  # 0.9 m + 0.1 g = 0.1, 0.1, 0.55
    new, m_new = lion_update(theta, m, g2, lr=0.25)
    assert torch.equal(new, torch.tensor([0.75, -2.25, 2.75], dtype=torch.float64))
    torch.testing.assert_close(m_new, 0.99 * m + 0.01 * g2, rtol=0, atol=1e-15)


@pytest.mark.parametrize("wd", [1.0, 0.5])
def test_weight_decay_of_one_shrinks_by_one_minus_lr(wd):
    # theta' = (1 - lr wd) theta - lr sign(...), also at weight_decay = 1 (theta (1 - lr))
    (p,) = _params([(4, 3)], torch.float64, seed=6)
    theta = p.detach().clone()
    g = torch.randn(p.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    lr = 0.125
    want = (1 - lr * wd) * theta - lr * torch.sign(g)  # m = 0: sign(0.1 g) = sign(g)
    new, _ = lion_update(theta, torch.zeros_like(theta), g, lr=lr, weight_decay=wd)
    torch.testing.assert_close(new, want, rtol=0, atol=1e-15)
    opt = Lion([p], lr=lr, weight_decay=wd, fused=False)
    p.grad = g
    opt.step()
    torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-15)


def test_foreach_keeps_a_large_non_contiguous_parameter_whole(monkeypatch):
    # _waves cuts only contiguous tensors into flat chunks (a transposed one has no flat view):
    # a non-contiguous parameter larger than a chunk is stepped whole, as lion_update does
    import dlmath.optim.lion as lion_module

    monkeypatch.setattr(lion_module, "CHUNK", 64)
    gen = torch.Generator().manual_seed(8)
    p = torch.nn.Parameter(torch.randn(30, 20, generator=gen, dtype=torch.float64).T)
    assert not p.is_contiguous() and p.numel() > 64
    theta, m = p.detach().clone(), torch.zeros(20, 30, dtype=torch.float64)
    opt = Lion([p], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, fused=False)
    for _ in range(3):
        g = torch.randn(30, 20, generator=gen, dtype=torch.float64).T
        p.grad = g
        opt.step()
        theta, m = lion_update(theta, m, g, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
    assert torch.equal(p.detach(), theta) and torch.equal(opt.state[p]["exp_avg"], m)


@pytest.mark.parametrize("shapes", [[(8, 8)], [(8, 8), (16, 8)], [(4, 4), (48,)], [(200,)]])
def test_foreach_waves_ending_on_a_chunk_boundary(monkeypatch, shapes):
    # parameters that fill the chunks exactly: every wave holds a tensor (foreach ops refuse
    # an empty list) and together they cover each element once; the step is lion_update's
    import dlmath.optim.lion as lion_module

    monkeypatch.setattr(lion_module, "CHUNK", 64)
    ps = _params(shapes, torch.float64, seed=9)
    waves = lion_module._waves(ps, ps, ps)
    assert all(w[0] for w in waves)
    assert sum(t.numel() for w in waves for t in w[0]) == sum(p.numel() for p in ps)
    refs = [(p.detach().clone(), torch.zeros_like(p)) for p in ps]
    opt = Lion(ps, lr=0.01, weight_decay=0.1, fused=False)
    gen = torch.Generator().manual_seed(10)
    for _ in range(2):
        for i, p in enumerate(ps):
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            refs[i] = lion_update(*refs[i], p.grad, lr=0.01, weight_decay=0.1)
        opt.step()
    assert all(torch.equal(p.detach(), theta) for p, (theta, _) in zip(ps, refs, strict=True))


def test_fused_single_parameter_group_runs_the_compiled_kernel():
    # a group of one parameter takes the compiled kernel like any other (no fallback, no
    # warning) and matches the foreach path bit for bit
    import warnings

    a = _params([(40, 30)], torch.float32, seed=11)
    b = _clone(a)
    fused = Lion(a, lr=0.03, betas=(0.8, 0.95), weight_decay=0.1, fused=True)
    eager = Lion(b, lr=0.03, betas=(0.8, 0.95), weight_decay=0.1, fused=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _step_both(a, b, fused, eager, 3)
    assert getattr(fused, "_fused_off", None) is None
    assert torch.equal(a[0], b[0])
    assert torch.equal(fused.state[a[0]]["exp_avg"], eager.state[b[0]]["exp_avg"])


def test_fused_recompile_limit_falls_back_to_foreach(monkeypatch):
    # past RECOMPILE_LIMIT graphs Dynamo would run the kernel body eagerly (prims.fma rounds
    # twice there); it is made an error instead: warn once, then the foreach path
    from dlmath.optim import _fused

    monkeypatch.setattr(_fused, "RECOMPILE_LIMIT", 1)
    a = _params([(7, 3), (2, 9), (6,), (5,)], torch.float32, seed=12)  # two new shape lists
    b = _clone(a)
    spec = lambda ps: [{"params": ps[:2]}, {"params": ps[2:]}]  # noqa: E731
    fused = Lion(spec(a), lr=0.03, weight_decay=0.1, fused=True)
    eager = Lion(spec(b), lr=0.03, weight_decay=0.1, fused=False)
    with pytest.warns(RuntimeWarning, match="fused"):
        _step_both(a, b, fused, eager, 3, seed=13)
    assert "recompile" in fused._fused_off.lower()
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["Lion", "SignSGD", "Tiger"])
def test_fused_unavailable_warning_points_at_the_callers_line(monkeypatch, name):
    # the warning names the line that called step(), not a line inside dlmath or torch,
    # whatever the depth of each optimizer's call chain
    import dlmath.optim as optim
    from dlmath.optim import _fused

    monkeypatch.setattr(_fused, "_unavailable", lambda device_type: "no compiler (simulated)")
    (p,) = _params([(3,)], torch.float32)
    p.grad = torch.ones(3)
    opt = getattr(optim, name)([p], fused=True)
    with pytest.warns(RuntimeWarning, match="simulated") as record:
        line = sys._getframe().f_lineno + 1
        opt.step()
    assert [(w.filename, w.lineno) for w in record] == [(__file__, line)]
