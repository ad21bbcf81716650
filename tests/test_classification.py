"""Tests of dlmath.classification: macro-F1, the soft macro-F1 and its loss, the sampler."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import classification as K
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=60, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


def _reference_macro_f1(y, yhat, C):
    """Plain-Python macro-F1 (absent class counts 0), an independent path."""
    total = 0.0
    for c in range(C):
        tp = sum(1 for a, b in zip(y, yhat, strict=True) if a == c and b == c)
        fp = sum(1 for a, b in zip(y, yhat, strict=True) if a != c and b == c)
        fn = sum(1 for a, b in zip(y, yhat, strict=True) if a == c and b != c)
        total += 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return total / C


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 8), st.integers(1, 60))
def test_macro_f1_matches_reference(seed, C, N):
    g = _gen(seed)
    y, yhat = torch.randint(C, (N,), generator=g), torch.randint(C, (N,), generator=g)
    ref = _reference_macro_f1(y.tolist(), yhat.tolist(), C)
    assert abs(K.macro_f1(y, yhat, C).item() - ref) < 1e-12


@pytest.mark.parametrize("C", [2, 4, 7])
def test_macro_f1_matches_sklearn(C):
    metrics = pytest.importorskip("sklearn.metrics")
    g = _gen(C)
    for _ in range(5):
        y, yhat = torch.randint(C, (50,), generator=g), torch.randint(C, (50,), generator=g)
        ref = metrics.f1_score(y.numpy(), yhat.numpy(), labels=list(range(C)), average="macro",
                               zero_division=0)
        assert abs(K.macro_f1(y, yhat, C).item() - ref) < 1e-12


def test_soft_macro_f1_of_soft_targets_with_small_sums_and_eps():
    # soft targets whose per-class sums are below 1, by hand: class 0 has tp = 0.3 * 0.5 and
    # sum 0.3 + 0.5 + 0.2, class 1 tp = 0.2 * 0.1 and sum 0.1 + 0.2 + 0.1; 2/C = 1
    y = torch.tensor([[0.3, 0.0], [0.0, 0.2]], dtype=F64)
    p = torch.tensor([[0.5, 0.1], [0.2, 0.1]], dtype=F64)
    for eps in (0.0, 0.5):
        want = 0.15 / (1.0 + eps) + 0.02 / (0.4 + eps)
        assert K.soft_macro_f1(y, p, eps=eps).item() == pytest.approx(want, rel=1e-14)
    # float32 scores whose sums overflow are summed again in float64, eps included: class 0
    # gives 6e38 / (1 + 6e38 + eps) ~ 1/2 (tp 3e38 at its label), class 1 0.1 / (1.2 + eps)
    huge = torch.tensor([[3e38, 0.1], [3e38, 0.1]])
    got = K.soft_macro_f1(torch.tensor([0, 1]), huge, eps=0.5)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(0.5 + 0.1 / 1.7, rel=1e-6)


def test_fixed_fraction_counts_sum_to_batch_when_fracs_are_off_by_rounding():
    # fracs summing to 1 + 8e-7 (inside the 1e-6 tolerance) are renormalised first: at
    # batch 2e6 the raw counts 1e6 (1 + 8e-7) would round to 1e6 + 1 each, two too many
    labels = torch.tensor([0, 1])
    idx = K.fixed_fraction_sampler(labels, 2_000_000, [0.5000004, 0.5000004],
                                   generator=torch.Generator().manual_seed(0))
    assert idx.shape == (2_000_000,)
    assert torch.bincount(labels[idx]).tolist() == [1_000_000, 1_000_000]


def test_absent_class_counts_zero_and_mean_is_over_all_classes():
    y = torch.tensor([0, 0, 1, 1])
    assert K.macro_f1(y, y, 3).item() == pytest.approx(2 / 3, abs=1e-15)
    assert K.macro_f1(y, y, 2).item() == 1.0
    p = torch.nn.functional.one_hot(y, 3).to(F64)
    assert K.soft_macro_f1(y, p).item() == pytest.approx(2 / 3, abs=1e-15)


def test_constant_predictor_on_imbalanced_labels():
    y = torch.tensor([0] * 80 + [1] * 10 + [2] * 5 + [3] * 5)
    f1 = K.macro_f1(y, torch.zeros_like(y), 4).item()
    assert f1 == pytest.approx((2 * 80 / (160 + 20)) / 4, abs=1e-15)


def test_macro_f1_batched():
    g = _gen(3)
    y, yhat = torch.randint(4, (5, 30), generator=g), torch.randint(4, (5, 30), generator=g)
    out = K.macro_f1(y, yhat, 4)
    assert out.shape == (5,)
    for i in range(5):
        assert out[i].item() == K.macro_f1(y[i], yhat[i], 4).item()


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 8), st.integers(1, 80))
def test_soft_identity_on_hard_predictions(seed, C, N):
    g = _gen(seed)
    y, yhat = torch.randint(C, (N,), generator=g), torch.randint(C, (N,), generator=g)
    p = torch.nn.functional.one_hot(yhat, C).to(F64)
    soft = K.soft_macro_f1(y, p).item()
    assert abs(soft - K.macro_f1(y, yhat, C).item()) < 1e-12
    onehot = torch.nn.functional.one_hot(y, C).to(F64)
    assert abs(K.soft_macro_f1(onehot, p).item() - soft) < 1e-15


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 8), st.integers(1, 50))
def test_soft_f1_in_unit_interval_and_one_iff_perfect(seed, C, N):
    g = _gen(seed)
    y = torch.randint(C, (N,), generator=g)
    p = torch.softmax(3 * torch.randn(N, C, generator=g, dtype=F64), dim=-1)
    s = K.soft_macro_f1(y, p).item()
    assert 0.0 <= s < 1.0
    present = len(set(y.tolist()))
    perfect = K.soft_macro_f1(y, torch.nn.functional.one_hot(y, C).to(F64)).item()
    assert perfect == pytest.approx(present / C, abs=1e-15)


def test_post_literal_coefficient_only_right_for_four_classes():
    g = _gen(11)
    for C in (2, 4, 6):
        y = torch.randint(C, (200,), generator=g)
        p = torch.softmax(torch.randn(200, C, generator=g, dtype=F64), dim=-1)
        Y = torch.nn.functional.one_hot(y, C).to(F64)
        literal = (0.5 * (Y * p).sum(0) / (Y + p).sum(0)).sum().item()
        ours = K.soft_macro_f1(y, p).item()
        assert (abs(literal - ours) < 1e-14) == (C == 4)


def test_absent_class_gradient_is_zero_not_nan():
    y = torch.tensor([0, 1, 0])
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64,
                     requires_grad=True)
    s = K.soft_macro_f1(y, p)
    s.backward()
    assert s.item() == pytest.approx(2 / 3, abs=1e-15)
    assert torch.isfinite(p.grad).all()


def test_soft_f1_loss_gradcheck():
    g = _gen(5)
    z = torch.randn(12, 4, generator=g, dtype=F64, requires_grad=True)
    y = torch.randint(4, (12,), generator=g)
    assert torch.autograd.gradcheck(lambda t: K.soft_f1_loss(t, y), (z,))
    p = torch.rand(12, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: K.soft_macro_f1(y, t), (p,))


def test_soft_f1_loss_value_and_huge_logits():
    g = _gen(6)
    z = torch.randn(3, 20, 5, generator=g, dtype=F64)
    y = torch.randint(5, (3, 20), generator=g)
    loss = K.soft_f1_loss(z, y)
    assert loss.shape == (3,)
    expect = -torch.log(K.soft_macro_f1(y, torch.softmax(z, -1)) + 1e-7)
    assert torch.allclose(loss, expect, atol=1e-15, rtol=0)
    big = K.soft_f1_loss(1e30 * torch.nn.functional.one_hot(y[0], 5).to(F64), y[0])
    assert torch.isfinite(big) and abs(big.item()) < 1e-6


def test_soft_keeps_dtype():
    p = torch.softmax(torch.randn(10, 3), -1)
    assert K.soft_macro_f1(torch.zeros(10, dtype=torch.long), p).dtype == torch.float32


def test_bad_input_messages():
    with pytest.raises(TypeError, match="y must be an integer"):
        K.macro_f1(torch.zeros(3), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"yhat must hold class indices in \[0, 2\)"):
        K.macro_f1(torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="probs must be non-negative"):
        K.soft_macro_f1(torch.tensor([0]), torch.tensor([[-0.1, 1.1]]))
    with pytest.raises(ValueError, match="label y must have shape"):
        K.soft_macro_f1(torch.tensor([0, 1]), torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="probs must be finite"):
        K.soft_macro_f1(torch.tensor([0]), torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="eps must be > 0"):
        K.soft_f1_loss(torch.zeros(2, 2), torch.tensor([0, 1]), eps=0.0)
    with pytest.raises(ValueError, match="fracs must sum to 1"):
        K.fixed_fraction_sampler(torch.tensor([0, 1]), 4, [0.5, 0.6])
    with pytest.raises(ValueError, match="class 1 has fraction"):
        K.fixed_fraction_sampler(torch.tensor([0, 0]), 4, [0.5, 0.5])
    with pytest.raises(TypeError, match="batch must be an int"):
        K.fixed_fraction_sampler(torch.tensor([0, 1]), 4.0, [0.5, 0.5])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        K.fixed_fraction_sampler(torch.tensor([0, 1]), 4, [0.5, 0.5], generator=0)
    for fracs in (torch.tensor(1.0), 0.5, "ab"):  # a 0-d tensor used to fail inside iteration
        with pytest.raises(TypeError, match="fracs must be a sequence"):
            K.fixed_fraction_sampler(torch.tensor([0, 1]), 4, fracs)


def test_sampler_exact_composition_of_the_post():
    g = _gen(0)
    labels = torch.randint(4, (1000,), generator=g)
    for _ in range(20):
        idx = K.fixed_fraction_sampler(labels, 160, [0.8, 0.1, 0.05, 0.05], generator=g)
        assert idx.shape == (160,) and idx.dtype == torch.int64
        assert torch.bincount(labels[idx], minlength=4).tolist() == [128, 16, 8, 8]


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 97),
       st.lists(st.integers(0, 20), min_size=2, max_size=6).filter(lambda w: sum(w) > 0))
def test_sampler_counts_are_rounded_fractions(seed, batch, weights):
    g = _gen(seed)
    fracs = [w / sum(weights) for w in weights]
    labels = torch.arange(len(weights)).repeat(3)
    counts = torch.bincount(labels[K.fixed_fraction_sampler(labels, batch, fracs, g)],
                            minlength=len(weights))
    assert counts.sum().item() == batch
    # exact largest-remainder rounding in rational arithmetic, ties to the lower class index
    exact = [Fraction(batch * w, sum(weights)) for w in weights]
    expect = [math.floor(r) for r in exact]
    order = sorted(range(len(weights)), key=lambda c: (-(exact[c] - expect[c]), c))
    for c in order[:batch - sum(expect)]:
        expect[c] += 1
    assert counts.tolist() == expect


def test_sampler_draws_uniformly_within_a_class():
    g = _gen(1)
    labels = torch.tensor([0, 0, 0, 0, 1])
    idx = torch.cat([K.fixed_fraction_sampler(labels, 10, [0.5, 0.5], g) for _ in range(400)])
    hits = torch.bincount(idx, minlength=5).to(F64)
    assert hits[4].item() == 2000
    assert ((hits[:4] - 500).abs() < 100).all()


def test_sampler_rounding_ties_go_to_the_lower_class_index():
    labels = torch.arange(4).repeat(5)
    for batch, fracs, expect in [(4, [1 / 3] * 3, [2, 1, 1]),
                                 (9, [0.8, 0.1, 0.05, 0.05], [7, 1, 1, 0]),
                                 (32, [0.8, 0.1, 0.05, 0.05], [26, 3, 2, 1]),
                                 (20, [0.01, 0.07, 0.92], [0, 2, 18])]:  # float says class 2
        idx = K.fixed_fraction_sampler(labels[labels < len(fracs)], batch, fracs, _gen(0))
        got = torch.bincount(labels[labels < len(fracs)][idx], minlength=len(fracs)).tolist()
        assert got == expect


@pytest.mark.parametrize("C", [3, 5, 8])
def test_macro_f1_matches_sklearn_with_classes_absent_from_both(C):
    metrics = pytest.importorskip("sklearn.metrics")
    g = _gen(10 + C)
    for _ in range(30):
        k = int(torch.randint(1, C, (1,), generator=g))  # only classes < k occur at all
        N = int(torch.randint(1, 12, (1,), generator=g))
        y, yhat = torch.randint(k, (N,), generator=g), torch.randint(k, (N,), generator=g)
        ref = metrics.f1_score(y.numpy(), yhat.numpy(), labels=list(range(C)), average="macro",
                               zero_division=0)
        assert abs(K.macro_f1(y, yhat, C).item() - ref) < 1e-12


def test_gradcheck_where_a_class_has_zero_denominator():
    # class 2 is in no label and has probability 0: D_2 = 0. T_2 = 0 for every probs, so the
    # term is identically 0; the gradient in the other columns is checked numerically there.
    g = _gen(12)
    y = torch.tensor([0, 1, 1, 0, 0, 1])
    q = torch.rand(6, 2, generator=g, dtype=F64, requires_grad=True)

    def score(t):
        return K.soft_macro_f1(y, torch.cat([t, torch.zeros(6, 1, dtype=F64)], 1))

    assert torch.autograd.gradcheck(score, (q,))
    p = torch.cat([q.detach(), torch.zeros(6, 1, dtype=F64)], 1).requires_grad_(True)
    K.soft_macro_f1(y, p).backward()
    assert torch.isfinite(p.grad).all() and (p.grad[:, 2] == 0).all()
    # the loss through the softmax, with class 2 absent from the labels (D_2 > 0, T_2 = 0)
    z = torch.randn(6, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: K.soft_f1_loss(t, y), (z,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_soft_macro_f1_half_precision(dtype):
    g = _gen(13)
    N = 40_000  # sums up to ~2N: float16 would overflow beyond 65504 and round coarsely
    p = torch.softmax(torch.randn(N, 4, generator=g), -1)
    y = torch.randint(4, (N,), generator=g)
    s = K.soft_macro_f1(y, p.to(dtype))
    ref = K.soft_macro_f1(y, p.to(dtype).to(F64)).item()
    assert s.dtype == dtype and abs(s.item() - ref) <= 2 * torch.finfo(dtype).eps
    loss = K.soft_f1_loss(torch.randn(64, 4, generator=g).to(dtype), y[:64])
    assert loss.dtype == dtype and torch.isfinite(loss)


def test_sampler_fraction_inputs():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    for fracs in (torch.tensor([0.5, 0.3, 0.2]), [0.5, 0.3, 0.2], (0.5, 0.3, 0.2)):  # float32 too
        idx = K.fixed_fraction_sampler(labels, 10, fracs, _gen(0))
        assert torch.bincount(labels[idx], minlength=3).tolist() == [5, 3, 2]
    with pytest.raises(ValueError, match=r"fracs\[1\] must be >= 0"):
        K.fixed_fraction_sampler(labels, 10, [1.1, -0.1, 0.0])
    with pytest.raises(ValueError, match="fracs must sum to 1"):
        K.fixed_fraction_sampler(labels, 10, [0.5, 0.3, 0.1])
    with pytest.raises(ValueError, match="fracs must not be empty"):
        K.fixed_fraction_sampler(labels, 10, [])
    # a class without examples is fine while its rounded count is 0, an error once it is not
    few = torch.tensor([0, 0, 1])
    idx = K.fixed_fraction_sampler(few, 4, [0.5, 0.4, 0.1], _gen(0))
    assert torch.bincount(few[idx], minlength=2).tolist() == [2, 2]
    with pytest.raises(ValueError, match="class 2 has fraction"):
        K.fixed_fraction_sampler(few, 10, [0.5, 0.4, 0.1])


def test_sampler_is_reproducible_with_a_generator():
    labels = torch.randint(3, (50,), generator=_gen(1))
    a = K.fixed_fraction_sampler(labels, 12, [0.5, 0.25, 0.25], _gen(7))
    b = K.fixed_fraction_sampler(labels, 12, [0.5, 0.25, 0.25], _gen(7))
    assert torch.equal(a, b) and a.device == labels.device


def test_soft_macro_f1_eps_enters_each_class_denominator_once():
    g = _gen(14)
    y = torch.randint(3, (10,), generator=g)
    p = torch.softmax(torch.randn(10, 3, generator=g, dtype=F64), -1)
    Y = torch.nn.functional.one_hot(y, 3).to(F64)
    eps = 0.5
    expect = (2 / 3) * ((Y * p).sum(0) / ((Y + p).sum(0) + eps)).sum()
    assert abs(K.soft_macro_f1(y, p, eps).item() - expect.item()) < 1e-15
    # with eps > 0 a class with D_c = 0 gives T_c / eps = 0, not NaN
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64)
    assert K.soft_macro_f1(torch.tensor([0, 0]), q, eps).item() == pytest.approx(2 / 4.5, abs=1e-15)


def test_labels_given_as_python_lists():
    # y = [0, 0, 1, 2], yhat = [0, 1, 1, 2]: per-class F1 = 2/3, 2/3, 1, so the macro mean is 7/9
    f1 = K.macro_f1([0, 0, 1, 2], [0, 1, 1, 2], 3)
    assert f1.item() == pytest.approx(7 / 9, rel=1e-15)
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert K.soft_macro_f1([0, 0, 1, 2], probs).item() == pytest.approx(7 / 9, rel=1e-6)
    idx = K.fixed_fraction_sampler([0, 1, 0, 1], 2, [0.5, 0.5], generator=generator(0, "cpu"))
    assert sorted([0, 1, 0, 1][i] for i in idx.tolist()) == [0, 1]


def test_more_bad_input_messages():
    with pytest.raises(ValueError, match=r"y must be a non-empty tensor of shape \(\.\.\., N\)"):
        K.macro_f1(torch.tensor(1), torch.tensor([1]), 2)
    with pytest.raises(ValueError, match="yhat must be a non-empty tensor"):
        K.macro_f1([0], [], 2)
    with pytest.raises(ValueError, match=r"y and yhat must have broadcastable shapes, got \(3,\) "
                                         r"and \(2,\)"):
        K.macro_f1([0, 1, 0], [0, 1], 2)
    probs = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(ValueError, match=r"one-hot y must have the shape of probs \(2, 2\)"):
        K.soft_macro_f1(torch.ones(2, 3), probs)
    with pytest.raises(ValueError, match="one-hot y must be non-negative"):
        K.soft_macro_f1(torch.tensor([[1.0, 0.0], [-1.0, 2.0]]), probs)
    with pytest.raises(ValueError, match=r"labels must be one-dimensional, got shape \(2, 2\)"):
        K.fixed_fraction_sampler(torch.tensor([[0, 1], [1, 0]]), 2, [0.5, 0.5])


# -- added in the third reading (s19): written-out gradient at C != 4, the ends, float32 limits --

@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from([2, 3, 5, 7]), st.integers(1, 40))
def test_soft_gradient_is_the_quotient_rule(seed, C, N):
    """dS/dp_nc = (2/C)(y_nc D_c - T_c)/D_c^2 against autograd, for C != 4 (so 2/C != 1/2)."""
    g = _gen(seed)
    y = torch.randint(C, (N,), generator=g)
    p = torch.softmax(2 * torch.randn(N, C, generator=g, dtype=F64), -1).requires_grad_(True)
    K.soft_macro_f1(y, p).backward()
    Y = torch.nn.functional.one_hot(y, C).to(F64)
    T, D = (Y * p.detach()).sum(0), (Y + p.detach()).sum(0)
    expect = (2 / C) * (Y * D - T) / D**2
    assert torch.allclose(p.grad, expect, rtol=1e-12, atol=1e-15)
    assert (p.grad[Y == 1] > 0).all() and (p.grad[Y == 0] <= 0).all()


def test_soft_f1_reaches_one_exactly_and_scores_above_one_can_exceed_it():
    for C in (2, 3, 4, 7):
        y = torch.arange(C).repeat(2)
        assert K.soft_macro_f1(y, torch.nn.functional.one_hot(y, C).to(F64)).item() == 1.0
    y = torch.tensor([0, 1, 0, 1])
    big = torch.tensor([[9.0, 0.0], [0.0, 9.0], [9.0, 0.0], [9.0, 0.0]], dtype=F64)
    # class 0: T = 18, D = 2 + 27; class 1: T = 9, D = 2 + 9
    expect = (2 / 2) * (18 / 29 + 9 / 11)
    assert K.soft_macro_f1(y, big).item() == pytest.approx(expect, abs=1e-15) and expect > 1


@pytest.mark.parametrize("v", [1e37, 1e38, 3e38, 3.4e38])
def test_soft_macro_f1_scores_near_the_float32_limit(v):
    """The sums (and 2 T_c) overflow float32 there: the value must still be the float64 one."""
    y = torch.tensor([0, 1, 0, 1])
    p = torch.tensor([[v, 0.0], [0.0, v], [v, 0.0], [v, 0.0]], requires_grad=True)
    s = K.soft_macro_f1(y, p)
    s.backward()
    ref = K.soft_macro_f1(y, p.detach().double()).item()
    assert s.dtype == torch.float32 and abs(s.item() - ref) <= 2 * torch.finfo(torch.float32).eps
    assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("C", [2, 3, 6])
def test_post_constant_only_shifts_the_log_loss(C):
    """-log(0.5 sum T/D + eps) = soft_f1_loss - log(C/4) + O(eps): same gradient up to eps."""
    g = _gen(30 + C)
    z = torch.randn(40, C, generator=g, dtype=F64, requires_grad=True)
    y = torch.randint(C, (40,), generator=g)
    Y = torch.nn.functional.one_hot(y, C).to(F64)
    p = torch.softmax(z, -1)
    post = -torch.log((0.5 * (Y * p).sum(0) / (Y + p).sum(0)).sum())
    ours = K.soft_f1_loss(z, y, eps=1e-300)
    g_post, g_ours = (torch.autograd.grad(v, z)[0] for v in (post, ours))
    assert abs(post.item() - ours.item() + math.log(C / 4)) < 1e-13
    assert torch.allclose(g_post, g_ours, rtol=1e-10, atol=1e-15)


def test_soft_f1_loss_at_zero_score_is_minus_log_eps_with_finite_gradient():
    y = torch.tensor([0, 1, 1])
    z = torch.tensor([[-800.0, 800.0], [800.0, -800.0], [800.0, -800.0]], dtype=F64,
                     requires_grad=True)                       # every prediction wrong: S = 0
    loss = K.soft_f1_loss(z, y, eps=1e-7)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(1e-7), rel=1e-12)
    assert torch.isfinite(z.grad).all()
