"""Tests of dlmath.mup: the muP table against slopes fitted on the MLP family, the spectral
rules, the measurement helpers, bad input and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import mup
from dlmath.device import generator
from dlmath.msign import polar

F64 = torch.float64
WIDTHS = [64, 128, 256, 512]
D_IN, D_OUT, BATCH, N_HIDDEN = 8, 4, 16, 2


def _gen(seed):
    return generator(seed, "cpu")


def _low_rank(n, m, r, seed):
    """A Gaussian n x m matrix of rank r (with probability 1), float64."""
    g = _gen(seed)
    return torch.randn(n, r, generator=g, dtype=F64) @ torch.randn(r, m, generator=g, dtype=F64)


def _problem(d, seed, param="mup"):
    g = _gen(seed)
    X = torch.randn(BATCH, D_IN, generator=g, dtype=F64)
    T = torch.randn(BATCH, D_OUT, generator=g, dtype=F64)
    return mup.init_mlp(d, D_IN, D_OUT, N_HIDDEN, param=param, generator=g, dtype=F64), X, T


def _slope(values):
    return float(np.polyfit(np.log(WIDTHS), np.log(values), 1)[0])


@pytest.fixture(scope="module")
def grad_slopes():
    """Fitted width slopes of ||g||_F^2, ||g||_1 and ||g||_* per layer at muP init (2 seeds)."""
    norms = {}
    for d in WIDTHS:
        for seed in range(2):
            W, X, T = _problem(d, seed)
            grads = mup.one_step(W, X, T, "sgd", [0.0] * len(W))["grads"]
            for i, G in enumerate(grads):
                for key, value in mup.matrix_norms(G, rank=BATCH).items():
                    norms.setdefault((key, i), {}).setdefault(d, []).append(value)
    return {k: _slope([np.mean(v[d]) for d in WIDTHS]) for k, v in norms.items()}


NORM_OF = {"sgd": "fro2", "adam": "l1", "muon": "nuclear"}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "muon"])
def test_table_lr_exponents_match_fitted_gradient_slopes(grad_slopes, optimizer):
    # Delta L ~ eta * ||g||, so the table's lr exponent must cancel the norm's width slope.
    for i, kind in enumerate(mup.layer_kinds(N_HIDDEN)):
        lr_exp = mup.mup_exponents(optimizer, kind)[1]
        fitted = grad_slopes[(NORM_OF[optimizer], i)]
        assert abs(fitted + lr_exp) < 0.15, (optimizer, kind, fitted, lr_exp)


def test_muon_adam_row_combines_the_two_rows():
    for kind in mup.LAYER_KINDS:
        source = "muon" if kind == "hidden" else "adam"
        assert mup.mup_exponents("muon_adam", kind) == mup.mup_exponents(source, kind)
    assert mup.mup_exponents("muon", "hidden", adjust_lr=True) == (-1.0, -0.5)
    assert mup.mup_exponents("muon", "out", adjust_lr=True) == mup.mup_exponents("muon", "out")


def test_forward_is_stable_and_output_starts_small():
    hidden, out = [], []
    for d in WIDTHS:
        feats = [mup.mlp_features(*_problem(d, seed)[:2]) for seed in range(4)]
        hidden.append(np.mean([float(mup.rms(f[-2])) for f in feats]))
        out.append(np.mean([float(mup.rms(f[-1])) for f in feats]))
    assert abs(_slope(hidden)) < 0.15
    assert abs(_slope(out) + 0.5) < 0.15     # Var W_out = 1/d^2: Z has RMS ~ d^{-1/2}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "muon", "muon_adam"])
def test_one_step_changes_are_width_independent_under_mup(optimizer):
    dloss, dfeat = [], []
    for d in WIDTHS:
        W, X, T = _problem(d, 1)
        lrs = [0.05 * m for m in mup.lr_multipliers(optimizer, d, N_HIDDEN)]
        step = mup.one_step(W, X, T, optimizer, lrs)
        dloss.append(abs(step["delta_loss"]))
        dfeat.append(float(mup.rms(step["delta_features"][-2])))
    assert max(dloss) / min(dloss) < 1.5
    assert abs(_slope(dfeat)) < 0.15


def test_standard_parametrisation_is_not_width_independent():
    dloss = []
    for d in WIDTHS:
        W, X, T = _problem(d, 1, param="sp")
        dloss.append(abs(mup.one_step(W, X, T, "adam", [0.05] * len(W))["delta_loss"]))
    assert max(dloss) / min(dloss) > 3


def test_spectral_lr_recovers_the_table_exponents():
    for optimizer in ("sgd", "adam", "muon"):
        for kind, shape in (("in", lambda d: (D_IN, d)), ("hidden", lambda d: (d, d)),
                            ("out", lambda d: (d, D_OUT))):
            lrs = [mup.spectral_lr(optimizer, *shape(d)) for d in (10**4, 10**6)]
            slope = math.log(lrs[1] / lrs[0]) / math.log(100)
            assert slope == pytest.approx(mup.mup_exponents(optimizer, kind)[1], abs=1e-12)


def test_multipliers_values():
    assert mup.mup_multipliers("sgd", "in", 256, d_in=8) == (1 / 8, 256.0)
    assert mup.mup_multipliers("adam", "out", 256, d0=64) == (256.0 ** -2, 0.25)
    assert mup.lr_multipliers("muon", 64, 1, param="sp") == [1.0, 1.0, 1.0]
    assert mup.lr_multipliers("muon", 100, 1, d0=25) == [2.0, 1.0, 0.5]
    spec = mup.lr_multipliers("sgd", 256, 1, param="spectral", d0=64, d_in=8, d_out=4)
    assert spec == pytest.approx([4.0, 1.0, 0.25])


def test_multiplier_defaults_and_closed_forms():
    # defaults d_in = 1 (Var W_in = 1) and d0 = 1 (multiplier (d/1)^c); the muP multiplier is
    # (d/d0)^c itself, also when d0 does not divide d; the spectral rates of chapter 20
    assert mup.mup_multipliers("sgd", "in", 64) == (1.0, 64.0)
    assert mup.lr_multipliers("sgd", 4, 1) == [4.0, 1.0, 0.25]
    assert mup.lr_multipliers("sgd", 3, 1, d0=5) == [3 / 5, 1.0, (3 / 5) ** -1.0]
    assert mup.spectral_lr("sgd", 8, 4) == 0.5
    assert mup.spectral_lr("adam", 8, 4) == 0.125
    assert mup.spectral_lr("muon", 8, 2) == 0.5
    # "muon_adam" under "spectral": Adam's 1/d_in at both ends, Muon's rate on hidden layers
    spec = mup.lr_multipliers("muon_adam", 256, 1, param="spectral", d0=64, d_in=8, d_out=4)
    assert spec == pytest.approx([1.0, 1.0, 0.25])


def test_lr_multipliers_lists_every_optimizer_it_takes():
    for param in ("mup", "sp", "spectral"):  # "spectral" used to leave "muon_adam" out
        with pytest.raises(ValueError, match=r"optimizer must be one of \[.*'muon_adam'\]"):
            mup.lr_multipliers("rmsprop", 8, 1, param=param)


def test_spectral_init_meets_the_condition():
    for shape in [(256, 256), (64, 512), (512, 8)]:
        target = mup.spectral_target(*shape)
        W = mup.spectral_init(*shape, generator=_gen(3), dtype=F64)
        assert 0.9 < float(torch.linalg.matrix_norm(W, 2)) / target < 1.1
        W = mup.spectral_init(*shape, sigma=2.0, method="sn", generator=_gen(3), dtype=F64)
        assert float(torch.linalg.matrix_norm(W, 2)) == pytest.approx(2 * target, rel=1e-12)
    for name in ("sp", "spectral", "mup"):
        ws = mup.init_mlp(16, 3, 2, 1, param=name, generator=_gen(0))
        assert [tuple(w.shape) for w in ws] == [(3, 16), (16, 16), (16, 2)]


def test_spectral_init_device_and_generator_defaults():
    # no generator: the global one (the "sn" norm holds whatever it draws; forked and seeded,
    # so other tests see the same global state); no device: the generator's, not the default
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        W = mup.spectral_init(3, 12, method="sn", dtype=F64)
    assert W.shape == (3, 12)
    assert float(torch.linalg.matrix_norm(W, 2)) == pytest.approx(2.0, rel=1e-12)
    with torch.device("meta"):
        assert mup.spectral_init(3, 4, generator=_gen(0)).device.type == "cpu"


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), m=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_rms_inequality_and_its_equality_case(n, m, seed):
    g = _gen(seed)
    W = torch.randn(n, m, generator=g, dtype=F64)
    x = torch.randn(5, n, generator=g, dtype=F64)
    bound = math.sqrt(n / m) * mup.rms(x, dim=-1) * torch.linalg.matrix_norm(W, 2)
    assert (mup.rms(x @ W, dim=-1) <= bound * (1 + 1e-12)).all()
    U, S, _ = torch.linalg.svd(W)
    u1 = U[:, 0]
    assert float(mup.rms(u1 @ W)) == pytest.approx(
        math.sqrt(n / m) * float(mup.rms(u1)) * float(S[0]), rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 10), m=st.integers(1, 10), seed=st.integers(0, 10_000),
       cap=st.floats(0.1, 10.0))
def test_svc_tends_to_msign(n, m, seed, cap):
    M = torch.randn(n, m, generator=_gen(seed), dtype=F64)
    smin = float(torch.linalg.svdvals(M)[-1])
    lam = 1.01 * cap / smin
    assert torch.allclose(mup.svc(lam * M, cap), cap * polar(M), atol=1e-10 * cap)
    assert float(torch.linalg.svdvals(mup.svc(M, cap)).max()) <= max(cap, 0) * (1 + 1e-12)
    sn = mup.spectral_normalize(M, 3.0)
    assert float(torch.linalg.matrix_norm(sn, 2)) == pytest.approx(3.0, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 40), m=st.integers(4, 40), r=st.integers(1, 3),
       seed=st.integers(0, 10_000))
def test_low_rank_paths_are_exact(n, m, r, seed):
    G = _low_rank(n, m, r, seed)
    exact = torch.linalg.svdvals(G)
    assert torch.allclose(mup.singular_values(G, rank=3), exact, atol=1e-10 * float(exact[0]))
    assert torch.allclose(mup.update_direction(G, "muon", rank=3), polar(G), atol=1e-9)
    norms = mup.matrix_norms(G, rank=3)
    assert norms["nuclear"] == pytest.approx(float(exact.sum()), rel=1e-10)
    assert norms["fro2"] == pytest.approx(float((exact ** 2).sum()), rel=1e-10)


def test_low_rank_path_on_a_stack_and_its_default_seed():
    # (..., n, m) -> (..., min(n, m)), zeros padded per matrix (a stack of 3, rank 2, 6 x 5)
    G = torch.stack([_low_rank(6, 5, 2, seed) for seed in range(3)])
    s = mup.singular_values(G, rank=2)
    assert s.shape == (3, 5)
    exact = torch.linalg.svdvals(G)
    assert torch.allclose(s, exact, atol=1e-10 * float(exact.max()))
    assert torch.equal(s[:, 2:], torch.zeros(3, 3, dtype=F64))
    # a stack of full-rank matrices with rank=2: the projection's spectrum, which
    # underestimates (interlacing) and is padded with exact zeros
    full = torch.randn(2, 6, 5, generator=_gen(5), dtype=F64)
    s = mup.singular_values(full, rank=2)
    assert s.shape == (2, 5) and (s[:, :2] > 0).all()
    assert torch.equal(s[:, 2:], torch.zeros(2, 3, dtype=F64))
    assert (s <= torch.linalg.svdvals(full) * (1 + 1e-12)).all()
    # a full-rank W with rank=2: the spectrum of Q Q^T W, Omega drawn from a generator seeded
    # with 0 (the documented default), by hand
    W = torch.randn(6, 5, generator=_gen(4), dtype=F64)
    omega = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    Q = torch.linalg.qr(W @ omega).Q
    by_hand = torch.cat([torch.linalg.svdvals(Q.T @ W), torch.zeros(3, dtype=F64)])
    assert torch.allclose(mup.singular_values(W, rank=2), by_hand, rtol=1e-12, atol=0)
    assert torch.allclose(mup.update_direction(W, "muon", rank=2), Q @ polar(Q.T @ W),
                          atol=1e-12)


def test_spectral_update_modes():
    g = _gen(5)
    U = torch.randn(32, 8, generator=g, dtype=F64) @ torch.randn(8, 16, generator=g, dtype=F64)
    for mode in ("sn", "svc", "msign"):
        dW = mup.spectral_update(U, 32, 16, eta=0.3, mode=mode)
        assert float(torch.linalg.matrix_norm(dW, 2)) == pytest.approx(
            0.3 * math.sqrt(16 / 32), rel=1e-10)
    assert torch.equal(mup.spectral_update(torch.zeros(4, 3, dtype=F64), 4, 3, mode="sn"),
                       torch.zeros(4, 3, dtype=F64))
    assert torch.equal(mup.spectral_update(torch.zeros(4, 3, dtype=F64), 4, 3, mode="msign"),
                       torch.zeros(4, 3, dtype=F64))
    assert torch.equal(mup.svc(torch.zeros(3, 3)), torch.zeros(3, 3))


def test_spectral_normalize_of_a_stack_of_stacks():
    # shape (..., n, m) with two batch dimensions: each matrix scaled by its own norm, a zero
    # matrix among them left at zero
    W = torch.randn(2, 3, 4, 5, generator=_gen(9), dtype=F64)
    W[1, 2] = 0.0
    norms = torch.linalg.matrix_norm(W, 2, keepdim=True)
    expected = torch.where(norms > 0, 2.5 * W / norms.clamp(min=1e-300), 0.0)
    out = mup.spectral_normalize(W, 2.5)
    assert out.shape == (2, 3, 4, 5)
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-15)
    assert torch.equal(out[1, 2], torch.zeros(4, 5, dtype=F64))


def test_update_directions():
    G = torch.tensor([[1.0, -2.0], [0.0, 3.0]], dtype=F64)
    assert torch.equal(mup.update_direction(G, "sgd"), G)
    assert torch.equal(mup.update_direction(G, "adam"), torch.sign(G))
    assert torch.allclose(mup.update_direction(G, "muon"), polar(G))
    assert torch.allclose(mup.update_direction(G, "muon_ns"), polar(G), atol=0.3)


def test_train_stacks_models_and_flags_divergence():
    W, X, T = _problem(16, 2)
    lrs = torch.tensor([0.01, 1e6], dtype=F64).view(2, 1, 1)
    stacked = [w.expand(2, *w.shape).clone() for w in W]
    losses = mup.train(stacked, X, T, [lrs] * len(W), steps=20)
    single = mup.train(W, X, T, [0.01] * len(W), steps=20)
    assert losses.shape == (21, 2)
    assert torch.allclose(losses[:, 0], single, rtol=1e-12)
    assert single[-1] < single[0]
    assert math.isinf(float(losses[-1, 1]))
    assert torch.equal(W[0], _problem(16, 2)[0][0])      # inputs untouched


def test_train_flags_an_update_that_overflows_while_the_loss_is_finite():
    """X = W_in = W_out = I and T = I + 4b: every gradient entry is -4, so at lr = 1e308 every
    entry of the step overflows to -inf while the loss (8 b^3) is finite. Such a model is
    diverged (loss inf from the next step on), not stalled at its first loss with its update
    dropped; its neighbour in the stack trains as if alone."""
    b = 3
    eye = torch.eye(b, dtype=F64)
    T = eye + 4 * b
    lrs = torch.tensor([0.01, 1e308], dtype=F64).view(2, 1, 1)
    stacked = [eye.expand(2, b, b).clone() for _ in range(2)]
    losses = mup.train(stacked, eye, T, [lrs, lrs], steps=3)
    assert float(losses[0, 1]) == 0.5 * (4 * b) ** 2 * b      # finite before the step
    assert torch.isinf(losses[1:, 1]).all()
    assert torch.equal(losses[:, 0], mup.train([eye, eye], eye, T, [0.01, 0.01], steps=3))


def test_matrix_norms_and_rms_values():
    W = torch.tensor([[3.0, 0.0], [0.0, -4.0]], dtype=F64)
    n = mup.matrix_norms(W)
    assert n == pytest.approx({"rms": 2.5, "fro": 5.0, "fro2": 25.0, "spectral": 4.0,
                               "nuclear": 7.0, "l1": 7.0})
    assert mup.matrix_norms(torch.zeros(3, 2))["spectral"] == 0.0
    assert float(mup.rms(torch.zeros(5))) == 0.0


@pytest.mark.parametrize("call, error, match", [
    (lambda: mup.mup_exponents("rmsprop", "in"), ValueError, "optimizer"),
    (lambda: mup.mup_exponents("sgd", "middle"), ValueError, "layer_kind"),
    (lambda: mup.mup_exponents("sgd", "hidden", adjust_lr=True), ValueError, "adjust_lr"),
    (lambda: mup.mup_multipliers("sgd", "in", 0), ValueError, "d must be >= 1"),
    (lambda: mup.mup_multipliers("sgd", "in", 64.0), TypeError, "d must be an int"),
    (lambda: mup.spectral_target(0, 3), ValueError, "d_in"),
    (lambda: mup.spectral_lr("muon_adam", 3, 3), ValueError, "optimizer"),
    (lambda: mup.spectral_init(4, 4, method="orthogonal"), ValueError, "method"),
    (lambda: mup.spectral_init(4, 4, sigma=-1.0), ValueError, "sigma"),
    (lambda: mup.spectral_update(torch.ones(3, 4), 4, 3), ValueError, "U must have shape"),
    (lambda: mup.spectral_update(torch.ones(3, 4), 3, 4, mode="clip"), ValueError, "mode"),
    (lambda: mup.svc(torch.ones(3, 4), cap=0.0), ValueError, "cap"),
    (lambda: mup.svc(torch.tensor([[1.0, math.nan]])), ValueError, "W must be finite"),
    (lambda: mup.spectral_normalize(torch.ones(3, dtype=torch.int64)), TypeError, "W"),
    (lambda: mup.matrix_norms(torch.ones(2, 3, 3)), ValueError, "single matrix"),
    (lambda: mup.singular_values(torch.ones(3, 3), rank=0), ValueError, "rank"),
    (lambda: mup.init_mlp(8, 2, 2, param="ntk"), ValueError, "param"),
    (lambda: mup.mlp_features([torch.ones(2, 3)], torch.ones(1, 2)), ValueError, "W_in and"),
    (lambda: mup.mlp_features([torch.ones(2, 3), torch.ones(3, 1)], torch.ones(1, 5)),
     ValueError, "d_in = 2"),
    (lambda: mup.mse_loss(torch.ones(2, 3), torch.ones(2, 4)), ValueError, "same"),
    (lambda: mup.update_direction(torch.ones(2, 2), "lion"), ValueError, "optimizer"),
    (lambda: mup.one_step([torch.ones(2, 3), torch.ones(3, 1)], torch.ones(1, 2),
                          torch.ones(1, 1), "sgd", [0.1]), ValueError, "one learning rate"),
    (lambda: mup.train([torch.ones(2, 3), torch.ones(3, 1)], torch.ones(1, 2),
                       torch.ones(1, 1), [0.1, 0.1], steps=-1), ValueError, "steps"),
    (lambda: mup.train([torch.ones(2, 3), torch.ones(3, 1)], torch.ones(1, 2),
                       torch.ones(1, 1), [0.1, 0.1], steps=1, optimizer="muon"),
     ValueError, "optimizer"),
    (lambda: mup.train([torch.ones(2, 3), torch.ones(3, 1)], torch.ones(1, 2),
                       torch.ones(1, 1), [0.1], steps=1), ValueError,
     r"lrs must hold one learning rate per weight \(2\), got 1"),
    # found by tools/bad_inputs.py once it replayed calls passing these arguments
    (lambda: mup.train([torch.ones(2, 3), torch.ones(3, 1)], torch.ones(2, 1, 2),
                       torch.ones(1, 1), [0.1, 0.1], steps=1), ValueError,
     r"X and T must not carry leading dimensions beyond the weights' stack \(\)"),
    (lambda: mup.train([torch.ones(2, 2, 3), torch.ones(2, 3, 1)], torch.ones(1, 2),
                       torch.ones(3, 2, 1, 1), [0.1, 0.1], steps=1), ValueError, r"stack \(2,\)"),
    (lambda: mup.train([torch.ones(2, 2, 3), torch.ones(2, 3, 1)], torch.ones(1, 2),
                       torch.ones(3, 1, 1), [0.1, 0.1], steps=1), ValueError,
     r"the shapes of Z \(2, 1, 1\) and T \(3, 1, 1\) do not broadcast"),
    (lambda: mup.train([torch.ones(2, 3), torch.ones(3, 1)], torch.tensor([[0.0, math.nan]]),
                       torch.ones(1, 1), [0.1, 0.1], steps=1), ValueError, "X must be finite"),
    (lambda: mup.train([torch.ones(2, 3), torch.ones(3, 1)], torch.ones(1, 2),
                       torch.tensor([[math.inf]]), [0.1, 0.1], steps=1), ValueError,
     "T must be finite"),
    (lambda: mup.rms(torch.ones(2, 3), dim=2), ValueError, "dim=2 is out of range"),
    (lambda: mup.rms(torch.ones(2, 3), dim=1.0), TypeError, "dim"),
    (lambda: mup.rms(torch.ones(2, 3), dim=(1, -1)), ValueError, "dim must not name"),
    (lambda: mup.lr_multipliers("sgd", 8, 1, param="spectral", d0=0), ValueError, "d0"),
    (lambda: mup.lr_multipliers("sgd", 8, 1, d0=None), TypeError, "d0"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_device_and_dtype_are_kept():
    W = torch.randn(6, 4, dtype=torch.float32, generator=_gen(0))
    for out in (mup.svc(W), mup.spectral_normalize(W), mup.spectral_update(W, 6, 4),
                mup.update_direction(W, "muon", rank=2), mup.rms(W), mup.singular_values(W)):
        assert out.dtype == torch.float32 and out.device == W.device


def test_table_variances_are_shared_by_every_row():
    # the theorem's initial variances 1/d_in, 1/d, 1/d^2 hold for every optimizer of the table
    for opt in mup.OPTIMIZERS:
        assert [mup.mup_exponents(opt, k)[0] for k in mup.LAYER_KINDS] == [0.0, -1.0, -2.0]
        assert mup.mup_multipliers(opt, "in", 32, d_in=8)[0] == 1 / 8
        assert mup.mup_multipliers(opt, "hidden", 32)[0] == 1 / 32
        assert mup.mup_multipliers(opt, "out", 32)[0] == 32.0 ** -2


@pytest.mark.parametrize("param", ["mup", "sp", "spectral"])
def test_init_mlp_variances(param):
    d, d_in, d_out = 512, 8, 4
    ws = mup.init_mlp(d, d_in, d_out, 1, param=param, generator=_gen(7), dtype=F64)
    expected = {"mup": [1 / d_in, 1 / d, 1 / d**2], "sp": [1 / d_in, 1 / d, 1 / d],
                "spectral": [mup.spectral_init_std(*s) ** 2
                             for s in [(d_in, d), (d, d), (d, d_out)]]}[param]
    for w, var in zip(ws, expected, strict=True):
        assert float(w.var()) == pytest.approx(var, rel=0.1)


def test_gradients_follow_the_backprop_formulas():
    # the chapter's eq. mup-eq-grads: G_out = Y_K^T delta, dL/dY_K = delta W_out^T,
    # G_k = Y_{k-1}^T (dL/dY_k * phi'), G_in = X^T dL/dY_0, with delta = (Z - T) / b
    W, X, T = _problem(24, 6)
    step = mup.one_step(W, X, T, "sgd", [0.0] * len(W))
    Y = step["features"]
    delta = (Y[-1] - T) / BATCH
    assert torch.allclose(step["grads"][-1], Y[-2].T @ delta, rtol=1e-12, atol=1e-15)
    back = delta @ W[-1].T
    for k in range(N_HIDDEN, 0, -1):
        M = back * (Y[k] > 0)
        assert torch.allclose(step["grads"][k], Y[k - 1].T @ M, rtol=1e-12, atol=1e-15)
        back = M @ W[k].T
    assert torch.allclose(step["grads"][0], X.T @ back, rtol=1e-12, atol=1e-15)


def test_one_step_updates_and_loss_change():
    W, X, T = _problem(32, 4)
    lrs = [0.3, 0.2, 0.1, 0.05]
    step = mup.one_step(W, X, T, "muon_adam", lrs)
    for i, (G, dW, lr) in enumerate(zip(step["grads"], step["updates"], lrs, strict=True)):
        direction = polar(G) if 0 < i < len(W) - 1 else torch.sign(G)   # Adam at both ends
        assert torch.allclose(dW, -lr * direction, atol=1e-12)
    new = [w + dw for w, dw in zip(W, step["updates"], strict=True)]
    before, after = mup.mlp_features(W, X), mup.mlp_features(new, X)
    exact = float(mup.mse_loss(after[-1], T) - mup.mse_loss(before[-1], T))
    assert step["delta_loss"] == pytest.approx(exact, rel=1e-12)
    for df, a, b in zip(step["delta_features"], before, after, strict=True):
        assert torch.allclose(df, b - a, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype, value", [(torch.float16, 300.0), (torch.float32, 1e20),
                                          (torch.float32, 1e-30), (F64, 1e200)])
def test_rms_neither_overflows_nor_underflows(dtype, value):
    x = torch.tensor([value, -value, 0.0, 0.0], dtype=dtype)
    out = mup.rms(x)
    assert out.dtype == dtype
    assert float(out) == pytest.approx(value / math.sqrt(2), rel=1e-3)
    assert float(mup.rms(x.view(2, 2), dim=-1)[0]) == pytest.approx(value, rel=1e-3)


@pytest.mark.parametrize("dtype, tiny", [(torch.float32, 1e-30), (F64, 1e-200)])
def test_rms_of_tiny_entries_is_not_zero(dtype, tiny):
    # entries whose squares underflow (abs=0: pytest.approx's default abs=1e-12 would take 0);
    # the reference is the closed form sqrt((9 + 16) / 2) * tiny
    x = torch.tensor([3 * tiny, -4 * tiny], dtype=dtype)
    assert float(mup.rms(x)) == pytest.approx(math.sqrt(12.5) * tiny, rel=1e-6, abs=0)
    y = torch.tensor([[3 * tiny, -4 * tiny], [0.0, 0.0]], dtype=dtype)
    assert mup.rms(y, dim=-1).tolist() == pytest.approx([math.sqrt(12.5) * tiny, 0.0],
                                                        rel=1e-6, abs=0)


def test_rms_edge_values():
    assert float(mup.rms(torch.tensor([math.inf, 1.0]))) == math.inf
    assert math.isnan(float(mup.rms(torch.tensor([math.nan, 1.0]))))
    assert float(mup.rms(torch.tensor(-2.0))) == 2.0
    x = torch.randn(3, 4, 5, generator=_gen(8), dtype=F64)
    assert torch.allclose(mup.rms(x, dim=(-2, -1)), x.pow(2).mean((-2, -1)).sqrt(), rtol=1e-14)
    assert mup.rms(x, dim=1).shape == (3, 5)


def test_mse_loss_value_and_bad_input():
    Z = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    T = torch.zeros(2, 2, dtype=F64)
    assert float(mup.mse_loss(Z, T)) == pytest.approx((1 + 4 + 9 + 16) / 4)   # 1/(2b) sum
    with pytest.raises(TypeError, match="Z"):
        mup.mse_loss(torch.ones(2, 2, dtype=torch.int64), T)
    with pytest.raises(ValueError, match="T"):
        mup.mse_loss(Z, torch.ones(2))


def test_train_signsgd_matches_a_hand_written_step():
    W, X, T = _problem(16, 3)
    lrs = [0.01, 0.002, 0.002, 0.001]
    losses = mup.train(W, X, T, lrs, steps=1, optimizer="adam")
    grads = mup.one_step(W, X, T, "sgd", [0.0] * len(W))["grads"]
    new = [w - lr * torch.sign(G) for w, G, lr in zip(W, grads, lrs, strict=True)]
    expected = float(mup.mse_loss(mup.mlp_features(new, X)[-1], T))
    assert float(losses[0]) == pytest.approx(float(mup.mse_loss(mup.mlp_features(W, X)[-1], T)))
    assert float(losses[1]) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), m=st.integers(2, 12), r=st.integers(1, 4),
       seed=st.integers(0, 10_000))
def test_loss_change_identities_and_norm_order(n, m, r, seed):
    # <G, U(G)> for the three optimizer models is ||G||_F^2, ||G||_1, ||G||_* (chapter 19), and
    # ||G||_2 <= ||G||_F <= ||G||_* <= sqrt(rank) ||G||_F
    G = _low_rank(n, m, r, seed)
    norms = mup.matrix_norms(G)
    for opt, key in NORM_OF.items():
        inner = float((G * mup.update_direction(G, opt)).sum())
        assert inner == pytest.approx(norms[key], rel=1e-10)
    rank = min(n, m, r)
    tol = 1 + 1e-12
    assert norms["spectral"] <= norms["fro"] * tol and norms["fro"] <= norms["nuclear"] * tol
    assert norms["nuclear"] <= math.sqrt(rank) * norms["fro"] * tol
    assert norms["rms"] == pytest.approx(norms["fro"] / math.sqrt(n * m), rel=1e-12)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

_W2 = [torch.ones(2, 3), torch.ones(3, 1)]


@pytest.mark.parametrize("call, error, match", [
    (lambda: mup.init_mlp(8, 2, 2, n_hidden=2.5), TypeError, "n_hidden must be an int"),
    (lambda: mup.init_mlp(8, 2, 2, n_hidden=None), TypeError, "n_hidden must be an int"),
    (lambda: mup.init_mlp(8, 2, 2, n_hidden=-1), ValueError, "n_hidden must be >= 0"),
    (lambda: mup.one_step(_W2, torch.tensor([[math.nan, 1.0]]), torch.ones(1, 1), "sgd",
                          [0.1, 0.1]), ValueError, "X must be finite"),
    (lambda: mup.one_step(_W2, torch.ones(1, 2), torch.tensor([[math.inf]]), "sgd",
                          [0.1, 0.1]), ValueError, "T must be finite"),
    (lambda: mup.train(_W2, torch.ones(1, 2), torch.ones(1, 1), [math.nan, 0.1], steps=1),
     ValueError, "lrs must hold learning rates >= 0"),
    (lambda: mup.train(_W2, torch.ones(1, 2), torch.ones(1, 1),
                       [torch.tensor([0.1, -1.0]).view(2, 1, 1), 0.1], steps=1),
     ValueError, "lrs must hold learning rates >= 0"),
])
def test_fuzz_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_fuzz_two_layer_mlp_has_no_hidden_layer():
    """n_hidden = 0 is valid: W_in and W_out only."""
    W = mup.init_mlp(8, 2, 3, n_hidden=0, generator=torch.Generator().manual_seed(0))
    assert [tuple(w.shape) for w in W] == [(2, 8), (8, 3)]
    assert mup.layer_kinds(0) == ["in", "out"]


def test_train_gives_each_model_its_own_copy_of_a_shared_weight():
    # a weight without the stack dimension (or with a stacked rate) starts every model; each
    # model then trains as it would alone (the shared weight's in-place update raised inside
    # torch after a full step)
    g = _gen(21)
    W_in = torch.randn(3, 4, generator=g, dtype=F64) / 2
    W_out = torch.randn(2, 4, 2, generator=g, dtype=F64) / 2
    X = torch.randn(5, 3, generator=g, dtype=F64)
    T = torch.randn(5, 2, generator=g, dtype=F64)
    starts = (W_in.clone(), W_out.clone())
    both = mup.train([W_in, W_out], X, T, [0.1, 0.1], steps=3)
    alone = [mup.train([W_in, W_out[k]], X, T, [0.1, 0.1], steps=3) for k in range(2)]
    assert both.shape == (4, 2)
    torch.testing.assert_close(both, torch.stack(alone, dim=-1), rtol=1e-12, atol=0)
    rates = torch.tensor([0.1, 0.3], dtype=F64).view(2, 1, 1)
    swept = mup.train([W_in, W_out[0]], X, T, [rates, 0.1], steps=3)
    alone = [mup.train([W_in, W_out[0]], X, T, [r, 0.1], steps=3) for r in (0.1, 0.3)]
    torch.testing.assert_close(swept, torch.stack(alone, dim=-1), rtol=1e-12, atol=0)
    assert torch.equal(W_in, starts[0]) and torch.equal(W_out, starts[1])  # inputs untouched
    with pytest.raises(ValueError, match=r"lrs\[0\] \(5,\) and weights\[0\] \(3, 4\) do not "
                                         "broadcast"):
        mup.train([W_in, W_out], X, T, [torch.ones(5), 0.1], steps=1)
    with pytest.raises(ValueError, match=r"lrs\[1\] of shape \(1, 3\) must not widen"):
        mup.train([W_in, W_out[0, :, :1]], X, T[:, :1], [0.1, torch.ones(1, 3)], steps=1)



def test_init_mlp_default_has_two_hidden_layers():
    W = mup.init_mlp(8, 3, 2, generator=_gen(0))
    assert [tuple(w.shape) for w in W] == [(3, 8), (8, 8), (8, 8), (8, 2)]


def test_mixed_dtypes_promote_and_half_matrices_upcast():
    """X in float32 with float64 weights computes in float64 (it raised inside torch); the
    SVD-based functions take bfloat16 matrices (no bfloat16 SVD or QR on the CPU) by computing
    in float32, and return the input's dtype."""
    g = torch.Generator().manual_seed(0)
    Ws = [torch.randn(3, 4, generator=g, dtype=torch.float64) / 2,
          torch.randn(4, 2, generator=g, dtype=torch.float64) / 2]
    X, T = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g, dtype=torch.float64)
    feats = mup.mlp_features(Ws, X)
    assert feats[-1].dtype == torch.float64
    torch.testing.assert_close(feats[-1], mup.mlp_features(Ws, X.double())[-1])
    torch.testing.assert_close(mup.train(Ws, X, T, [0.1, 0.1], 3),
                               mup.train(Ws, X.double(), T, [0.1, 0.1], 3))
    assert mup.one_step(Ws, X, T, "sgd", [0.1, 0.1])["updates"][0].dtype == torch.float64
    W = torch.randn(6, 4, generator=g).to(torch.bfloat16)
    W32 = W.float()
    for got, ref in ((mup.singular_values(W), mup.singular_values(W32)),
                     (mup.singular_values(W, rank=2), mup.singular_values(W32, rank=2)),
                     (mup.svc(W, 0.5), mup.svc(W32, 0.5)),
                     (mup.update_direction(W, "muon"), mup.update_direction(W32, "muon")),
                     (mup.update_direction(W, "muon", rank=2),
                      mup.update_direction(W32, "muon", rank=2))):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, ref.to(torch.bfloat16), atol=0, rtol=0)
    assert mup.matrix_norms(W)["spectral"] == float(mup.singular_values(W)[0])


def test_one_step_takes_one_model_and_one_batch():
    """A batch of batches gave torch's 'grad can be implicitly created only for scalar outputs'."""
    g = torch.Generator().manual_seed(1)
    Ws = [torch.randn(3, 4, generator=g), torch.randn(4, 2, generator=g)]
    X, T = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    with pytest.raises(ValueError, match="X must be a single batch"):
        mup.one_step(Ws, torch.stack([X, X]), T, "sgd", [0.1, 0.1])
    with pytest.raises(ValueError, match="T must be a single batch"):
        mup.one_step(Ws, X, torch.stack([T, T]), "sgd", [0.1, 0.1])
    with pytest.raises(ValueError, match="weights must be single matrices"):
        mup.one_step([torch.stack([W, W]) for W in Ws], X, T, "sgd", [0.1, 0.1])


# -- referee's findings: half precision, range and validation ---------------------------------


@pytest.mark.parametrize(("dtype", "value"), [(torch.float16, 40000.0), (torch.float16, 1e-6),
                                              (torch.bfloat16, 1e30), (torch.float32, 1e-40),
                                              (torch.float32, 3e38), (F64, 1e-310)])
def test_spectral_normalize_and_update_neither_overflow_nor_underflow(dtype, value):
    W = torch.full((2, 2), value, dtype=dtype)
    half = torch.full((2, 2), 0.5, dtype=dtype)  # the all-equal 2 x 2 matrix has norm 2 * value
    assert torch.equal(mup.spectral_normalize(W), half)
    assert torch.equal(mup.spectral_update(W, 2, 2, mode="sn"), half)
    torch.testing.assert_close(mup.spectral_update(W, 2, 2, mode="svc"), half)  # SVD rounding
    assert mup.spectral_normalize(W, 3.0).dtype == dtype


def test_svc_drops_the_rounding_noise_of_a_rank_deficient_matrix():
    g = _gen(0)
    W = torch.randn(4, 1, generator=g) @ torch.randn(1, 3, generator=g)
    for lam in (1.0, 1e6, 1e8):
        s = torch.linalg.svdvals(mup.svc(lam * W))
        assert s[1:].max() < 1e-5, (lam, s)  # rank 1, as polar(W)
    torch.testing.assert_close(mup.svc(1e8 * W), polar(W), atol=1e-6, rtol=0)
    full = torch.diag(torch.tensor([1.0, 1e-3, 1e-5]))  # resolvable small values are clipped
    assert torch.linalg.svdvals(mup.svc(1e6 * full)).tolist() == [1.0, 1.0, 1.0]


def test_svc_zero_threshold_is_max_n_m_eps_sigma1():
    # sigma_i <= max(n, m) eps sigma_1 counts as zero, the tie included; n, m are the matrix's
    # own sizes, not a batch size (diagonal matrices: their SVD is exact)
    eps = torch.finfo(F64).eps
    tie = torch.diag(torch.tensor([1.0, 2 * eps], dtype=F64))               # 2 x 2: 2 eps
    assert torch.equal(mup.svc(tie), torch.diag(torch.tensor([1.0, 0.0], dtype=F64)))
    tall = torch.zeros(8, 2, dtype=F64)                                     # 8 x 2: 8 eps
    tall[0, 0], tall[1, 1] = 1.0, 4 * eps
    expected = torch.zeros(8, 2, dtype=F64)
    expected[0, 0] = 1.0
    assert torch.equal(mup.svc(tall), expected)
    kept = torch.diag(torch.tensor([1.0, 4 * eps], dtype=F64))              # 4 eps > 2 eps
    out = mup.svc(kept.expand(16, 2, 2))
    assert torch.equal(out, kept.expand(16, 2, 2))


def test_matrix_norms_of_half_matrices_beyond_their_range_are_finite():
    assert mup.matrix_norms(torch.ones(256, 256, dtype=torch.float16))["l1"] == 65536.0
    norms = mup.matrix_norms(torch.eye(700, dtype=torch.float16) * 100)
    assert norms["nuclear"] == 70000.0 and norms["l1"] == 70000.0
    assert norms["fro"] == pytest.approx(100 * math.sqrt(700), rel=1e-6)


def test_list_inputs_and_mismatched_weights_are_named():
    g = _gen(2)
    Ws = [torch.randn(3, 4, generator=g), torch.randn(4, 2, generator=g)]
    X, T = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    ref = mup.one_step(Ws, X, T, "sgd", [0.1, 0.1])["loss"]
    assert mup.one_step(Ws, X.tolist(), T.tolist(), "sgd", [0.1, 0.1])["loss"] == ref
    bad = [Ws[0], torch.randn(5, 4, generator=g), Ws[1]]
    with pytest.raises(ValueError, match=r"weights\[1\] must have 4 rows"):
        mup.mlp_features(bad, X)
    with pytest.raises(ValueError, match=r"weights\[1\] must have 4 rows"):
        mup.one_step(bad, X, T, "sgd", [0.1] * 3)
