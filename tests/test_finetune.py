"""Tests of dlmath.finetune: GLU gate, center loss and its centre gradient, the paired sampler,
its inclusion probabilities, the ensemble search and the within/between ratio."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import finetune as F
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


# -- GLU ---------------------------------------------------------------------------------

def test_glu_backward_passes_gradcheck():
    g = _gen(0)
    a = torch.randn(5, 7, generator=g, dtype=F64, requires_grad=True)
    z = (3 * torch.randn(5, 7, generator=g, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(F.glu, (a, z))


def test_glu_gate_jacobian_formula():
    g = _gen(1)
    a = torch.randn(50, generator=g, dtype=F64)
    z = torch.randn(50, generator=g, dtype=F64).requires_grad_()
    (grad,) = torch.autograd.grad(F.glu(a, z).sum(), z)
    s = torch.sigmoid(z.detach())
    assert torch.allclose(grad, a * s * (1 - s), atol=1e-15, rtol=0)
    # the reference torch.nn.functional.glu stacks value and gate along a dim
    ref = torch.nn.functional.glu(torch.cat([a, z.detach()]), dim=0)
    assert torch.allclose(F.glu(a, z.detach()), ref, atol=1e-15, rtol=0)


def test_glu_large_gates_are_accurate_and_infinite_gates_allowed():
    a = torch.ones(3, dtype=F64)
    z = torch.tensor([40.0, -40.0, math.inf], dtype=F64, requires_grad=True)
    h = F.glu(a, z)
    (grad,) = torch.autograd.grad(h.sum(), z)
    assert h[0] == 1.0 and h[2] == 1.0 and 0 < h[1] < 1e-17
    # sigma'(40) = e^-40 / (1 + e^-40)^2 ~ 4.25e-18, lost entirely by s * (1 - s)
    assert grad[0].item() == pytest.approx(math.exp(-40), rel=1e-12)
    assert grad[2].item() == 0.0


def test_glu_errors_and_module():
    with pytest.raises(TypeError, match="a must have a floating dtype"):
        F.glu(torch.ones(3, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="g contains NaN"):
        F.glu(torch.ones(3), torch.tensor([0.0, math.nan, 0.0]))
    with pytest.raises(ValueError, match="broadcastable"):
        F.glu(torch.ones(3), torch.ones(4))
    torch.manual_seed(0)
    m = F.GLU(6, 4, dtype=F64)
    x = torch.randn(3, 6, dtype=F64)
    ref = m.value(x) * torch.sigmoid(m.gate(x))
    assert torch.allclose(m(x), ref, atol=1e-15)
    with pytest.raises(ValueError, match="d_out must be >= 1"):
        F.GLU(3, 0)


# -- center loss -------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 12), st.integers(1, 5), st.integers(1, 4),
       st.floats(0.0, 3.0))
def test_center_gradient_equals_autograd(seed, B, C, d, lam):
    g = _gen(seed)
    h = torch.randn(B, d, generator=g, dtype=F64)
    y = torch.randint(0, C, (B,), generator=g)
    c = torch.randn(C, d, generator=g, dtype=F64, requires_grad=True)
    (auto,) = torch.autograd.grad(F.center_loss(h, y, c, lam), c)
    closed = F.center_gradient(h, y, c.detach(), lam)
    assert torch.allclose(auto, closed, atol=1e-12, rtol=0)
    # the class-mean form (2 lam n_j / B)(c_j - mean_j)
    for j in range(C):
        n = int((y == j).sum())
        if n:
            form = 2 * lam * n / B * (c[j].detach() - h[y == j].mean(0))
            assert torch.allclose(closed[j], form, atol=1e-12, rtol=0)
        else:
            assert torch.equal(closed[j], torch.zeros(d, dtype=F64))


def test_center_loss_gradcheck_in_features_and_centers():
    g = _gen(3)
    h = torch.randn(6, 3, generator=g, dtype=F64, requires_grad=True)
    c = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 3, 3, 3])
    assert torch.autograd.gradcheck(lambda h, c: F.center_loss(h, y, c, 0.25), (h, c))


def test_center_loss_value_and_module():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    y = torch.tensor([0, 1])
    c = torch.zeros(2, 2, dtype=F64)
    assert F.center_loss(h, y, c, 0.25).item() == pytest.approx(0.25 * (1 + 4) / 2)
    m = F.CenterLoss(2, 2, dtype=F64)
    assert torch.equal(m(h, y), torch.tensor([1.0, 4.0], dtype=F64))
    with pytest.raises(ValueError, match="labels must be < n_classes = 2"):
        m(h, torch.tensor([0, 2]))


def test_sgd_step_contracts_towards_the_batch_mean():
    g = _gen(4)
    h = torch.randn(10, 3, generator=g, dtype=F64)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    c0 = torch.randn(3, 3, generator=g, dtype=F64)
    eta, lam, B = 0.3, 0.25, 10
    c1 = c0 - eta * F.center_gradient(h, y, c0, lam)
    for j, n in [(0, 3), (1, 2), (2, 5)]:
        mean = h[y == j].mean(0)
        assert torch.allclose(c1[j] - mean, (1 - 2 * eta * lam * n / B) * (c0[j] - mean),
                              atol=1e-14)


def test_wen_update_direction_and_step():
    g = _gen(5)
    h = torch.randn(7, 2, generator=g, dtype=F64)
    y = torch.tensor([0, 0, 2, 2, 2, 2, 0])
    c0 = torch.randn(3, 2, generator=g, dtype=F64)
    c1 = F.wen_center_update(h, y, c0, alpha=0.5)
    assert torch.equal(c1[1], c0[1])                       # absent class untouched
    for j, n in [(0, 3), (2, 4)]:
        mean = h[y == j].mean(0)
        assert torch.allclose(c1[j] - mean, (1 - 0.5 * n / (1 + n)) * (c0[j] - mean),
                              atol=1e-14)
    with pytest.raises(ValueError, match="alpha must be <= 1"):
        F.wen_center_update(h, y, c0, alpha=1.5)


def test_center_loss_errors():
    h, c = torch.zeros(3, 2), torch.zeros(2, 2)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        F.center_loss(h, torch.zeros(3), c)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        F.center_loss(h, torch.zeros(4, dtype=torch.long), c)
    with pytest.raises(ValueError, match="centers must have shape"):
        F.center_loss(h, torch.zeros(3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        F.center_loss(h, torch.tensor([0, -1, 0]), c)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        F.center_loss(h, torch.zeros(3, dtype=torch.long), c, -1.0)
    with pytest.raises(ValueError, match="h must be finite"):
        F.center_loss(torch.full((3, 2), math.inf), torch.zeros(3, dtype=torch.long), c)


# -- sampler and inclusion probabilities ------------------------------------------------

def _labels(sizes):
    return torch.tensor(np.repeat(np.arange(len(sizes)), sizes))


@SETTINGS
@given(st.integers(0, 2**31), st.lists(st.integers(2, 9), min_size=2, max_size=8),
       st.integers(1, 8))
def test_sampler_composition(seed, sizes, k):
    k = min(k, len(sizes))
    y = _labels(sizes)[torch.randperm(sum(sizes), generator=_gen(seed))]
    idx = F.paired_class_sampler(y, 2 * k, generator=_gen(seed + 1), n_batches=20)
    assert idx.shape == (20, 2 * k) and idx.dtype == torch.long
    pairs = idx.reshape(20, k, 2)
    assert torch.equal(y[pairs[..., 0]], y[pairs[..., 1]])            # same class
    assert (pairs[..., 0] != pairs[..., 1]).all()                      # two different images
    for row in y[pairs[..., 0]]:
        assert len(set(row.tolist())) == k                             # distinct classes


def test_pair_is_uniform_within_a_class():
    y = _labels([3, 2])
    idx = F.paired_class_sampler(y, 2, generator=_gen(7), n_batches=60000)
    pairs = {(a, b): 0 for a in range(3) for b in range(3) if a != b}
    first = idx[:, 0] < 3
    for a, b in idx[first].tolist():
        pairs[(a, b)] += 1
    n = int(first.sum())
    for count in pairs.values():                    # each ordered pair 1/6 of class-0 batches
        assert abs(count / n - 1 / 6) < 4 * math.sqrt(1 / 6 * 5 / 6 / n)


def _brute_inclusion(counts, k):
    w = np.asarray(counts, dtype=float)
    pi = np.zeros(len(w))
    for seq in itertools.permutations(range(len(w)), k):
        prob, left = 1.0, w.sum()
        for c in seq:
            prob *= w[c] / left
            left -= w[c]
        pi[list(seq)] += prob
    return pi


@pytest.mark.parametrize("counts,k", [([1, 2, 3, 4], 2), ([5, 1, 1, 1, 1], 3),
                                      ([2, 7, 3, 9, 4, 1], 4), ([3, 3, 3], 1),
                                      ([10, 1], 1)])
def test_inclusion_matches_enumeration(counts, k):
    ours = F.class_inclusion_probabilities(torch.tensor(counts, dtype=F64), k).numpy()
    assert np.allclose(ours, _brute_inclusion(counts, k), atol=1e-8, rtol=0)
    assert abs(ours.sum() - k) < 1e-8


def test_inclusion_edge_cases():
    assert torch.equal(F.class_inclusion_probabilities(torch.tensor([1.0, 5.0]), 2),
                       torch.ones(2, dtype=F64))
    eq = F.class_inclusion_probabilities(torch.full((7,), 4.0), 3)
    assert torch.allclose(eq, torch.full((7,), 3 / 7, dtype=F64), atol=1e-9)
    with pytest.raises(ValueError, match="k must be <= 3"):
        F.class_inclusion_probabilities(torch.ones(3), 4)
    with pytest.raises(ValueError, match="positive class sizes"):
        F.class_inclusion_probabilities(torch.tensor([1.0, 0.0]), 1)


def test_sampler_frequencies_match_inclusion_and_multinomial():
    sizes = [2, 4, 8, 16, 30]
    y = _labels(sizes)
    n_b = 20000
    idx = F.paired_class_sampler(y, 4, generator=_gen(11), n_batches=n_b)
    freq = torch.bincount(y[idx[:, ::2]].flatten(), minlength=5).double() / n_b
    pi = F.class_inclusion_probabilities(torch.tensor(sizes, dtype=F64), 2)
    sd = torch.sqrt(pi * (1 - pi) / n_b)
    assert ((freq - pi).abs() < 4 * sd).all()
    # torch.multinomial without replacement is the same successive sampling
    w = torch.tensor(sizes, dtype=F64)
    draws = torch.multinomial(w.expand(n_b, 5), 2, replacement=False, generator=_gen(12))
    freq_m = torch.bincount(draws.flatten(), minlength=5).double() / n_b
    assert ((freq_m - pi).abs() < 4 * sd).all()
    # and inclusion is not proportional to size
    assert (pi / w).max() / (pi / w).min() > 1.5


def test_sampler_errors():
    y = _labels([3, 3, 1])
    with pytest.raises(ValueError, match="at least 2 images"):
        F.paired_class_sampler(y, 2, generator=_gen(0))
    with pytest.raises(ValueError, match="needs 3 distinct classes, but labels has only 2"):
        F.paired_class_sampler(_labels([3, 3]), 6, generator=_gen(0))
    with pytest.raises(ValueError, match="batch_size must be even"):
        F.paired_class_sampler(_labels([3, 3]), 3, generator=_gen(0))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        F.paired_class_sampler(torch.zeros(4), 2, generator=_gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        F.paired_class_sampler(_labels([3, 3]), 2, generator=0)


# -- ensemble search ---------------------------------------------------------------------

def test_ensemble_search_against_loop_and_endpoints():
    g = _gen(20)
    p1 = torch.softmax(2 * torch.randn(200, 5, generator=g, dtype=F64), -1)
    p2 = torch.softmax(2 * torch.randn(200, 5, generator=g, dtype=F64), -1)
    y = torch.randint(0, 5, (200,), generator=g)
    a_star, alphas, acc = F.ensemble_weight_search(p1, p2, y, grid=11)
    for k in range(11):
        a = k / 10
        ref = ((a * p1 + (1 - a) * p2).argmax(-1) == y).double().mean()
        assert acc[k].item() == pytest.approx(ref.item(), abs=1e-15)
    assert acc[0] == (p2.argmax(-1) == y).double().mean()
    assert acc[-1] == (p1.argmax(-1) == y).double().mean()
    assert a_star == alphas[int(np.argmax(acc.numpy()))].item()


def test_ensemble_ties_go_to_smallest_alpha():
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=F64)
    a_star, _, acc = F.ensemble_weight_search(p, p, torch.tensor([0, 1]))
    assert a_star == 0.0 and (acc == 1).all()
    with pytest.raises(ValueError, match="must both have shape"):
        F.ensemble_weight_search(p, p[:1], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="grid must be >= 2"):
        F.ensemble_weight_search(p, p, torch.tensor([0, 1]), grid=1)


# -- within/between ratio ----------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.floats(-6, 6), st.floats(-100, 100))
def test_ratio_is_invariant_to_scale_shift_rotation(seed, log_scale, shift):
    g = _gen(seed)
    h = torch.randn(40, 3, generator=g, dtype=F64)
    y = torch.randint(0, 4, (40,), generator=g)
    y[:4] = torch.arange(4)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64)).Q
    r0 = F.within_between_ratio(h, y)
    r1 = F.within_between_ratio(10 ** log_scale * h @ Q + shift, y)
    assert r1 == pytest.approx(r0, rel=1e-8)


def test_ratio_decomposition_and_edge_cases():
    g = _gen(30)
    h = torch.randn(30, 2, generator=g, dtype=F64)
    y = torch.tensor([0] * 4 + [1] * 10 + [2] * 16)      # unequal classes: weights matter
    means = torch.stack([h[y == j].mean(0) for j in range(3)])
    within = ((h - means[y]) ** 2).sum() / 30
    between = ((means[y] - h.mean(0)) ** 2).sum() / 30
    assert within + between == pytest.approx(((h - h.mean(0)) ** 2).sum().item() / 30)
    assert F.within_between_ratio(h, y) == pytest.approx((within / between).item())
    centred = torch.cat([torch.ones(2, 2), -torch.ones(2, 2)])
    assert F.within_between_ratio(centred, torch.tensor([0, 1, 0, 1])) == math.inf
    assert math.isnan(F.within_between_ratio(torch.ones(4, 2), torch.tensor([0, 1, 0, 1])))
    assert F.within_between_ratio(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1])) == 0.0
    with pytest.raises(ValueError, match="at least two classes"):
        F.within_between_ratio(h, torch.zeros(30, dtype=torch.long))


def test_ratio_edge_cases_are_exact_and_scale_safe():
    y = torch.tensor([0, 0, 0, 1, 1])
    # all rows equal: nan, decided exactly (rounded class and overall means used to give 1.0)
    assert math.isnan(F.within_between_ratio(torch.full((5, 1), 0.1, dtype=F64), y))
    # class means both exactly 0.1: inf (the rounding of the overall mean used to give 3e21)
    h = torch.tensor([[0.1], [0.1], [0.1], [0.1 - 2**-20], [0.1 + 2**-20]], dtype=F64)
    assert F.within_between_ratio(h, y) == math.inf
    # means 0.2 = (0.1 + 0.2 + 0.3)/3 = (0.2 + 0.7 - 0.3)/3 differ only by rounding: inf, not 1e32
    h2 = torch.tensor([[0.1], [0.2], [0.3], [0.2], [0.7], [-0.3]], dtype=F64)
    assert F.within_between_ratio(h2, torch.tensor([0, 0, 0, 1, 1, 1])) == math.inf
    # scale invariance down to 1e-300 and up to 1e300 (the squares used to give nan)
    g = _gen(31)
    h = torch.randn(10, 3, generator=g, dtype=F64)
    y = torch.arange(10) % 3
    r = F.within_between_ratio(h, y)
    for scale in (1e-300, 1e-200, 1e200, 1e300):
        assert F.within_between_ratio(scale * h, y) == pytest.approx(r, rel=1e-12)


def test_inclusion_matches_the_posts_numpy_choice():
    # the post draws classes with numpy.random.choice(C, k, False, p): in law the same successive
    # sampling, although numpy draws in rounds and drops repeats
    sizes, k, n = np.array([1.0, 2.0, 3.0, 4.0, 10.0]), 2, 20000
    rs = np.random.RandomState(0)
    freq = np.zeros(5)
    for _ in range(n):
        freq[rs.choice(5, k, False, sizes / sizes.sum())] += 1
    pi = F.class_inclusion_probabilities(torch.tensor(sizes), k).numpy()
    assert np.allclose(pi, _brute_inclusion(sizes, k), atol=1e-12, rtol=0)
    sd = np.sqrt(pi * (1 - pi) / n)
    assert (np.abs(freq / n - pi) < 4 * sd).all()
    assert np.abs(freq / n - k * sizes / sizes.sum()).max() > 20 * sd.max()   # not proportional


def test_inclusion_extreme_weights():
    for counts, k in [([1.0, 1e6], 1), ([1.0, 1e6, 1e3], 2), ([1.0] * 6 + [1e5], 3)]:
        ours = F.class_inclusion_probabilities(torch.tensor(counts, dtype=F64), k).numpy()
        assert np.allclose(ours, _brute_inclusion(counts, k), atol=1e-10, rtol=0)


def test_sampler_single_class_pairs_and_devices():
    y = _labels([2, 5])                               # k = B/2 = 2: both classes every batch
    idx = F.paired_class_sampler(y, 4, generator=_gen(1), n_batches=50)
    assert (torch.sort(y[idx], dim=1).values == torch.tensor([0, 0, 1, 1])).all()
    small = idx.reshape(50, 2, 2)[y[idx[:, ::2]] == 0]   # the 2-image class: always {0, 1}
    assert (torch.sort(small, dim=1).values == torch.tensor([0, 1])).all()
    with pytest.raises(ValueError, match="non-empty 1-D"):
        F.paired_class_sampler(torch.zeros(0, dtype=torch.long), 2, generator=_gen(0))
    with pytest.raises(ValueError, match="classes \\[1\\] have one"):
        F.paired_class_sampler(_labels([2, 1, 3]), 2, generator=_gen(0))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator is on"):
            F.paired_class_sampler(y.cuda(), 2, generator=_gen(0))


def test_ensemble_row_ties_and_label_range():
    p = torch.full((1, 2), 0.5, dtype=F64)
    assert (F.ensemble_weight_search(p, p, torch.tensor([0]))[2] == 1).all()   # first class
    assert (F.ensemble_weight_search(p, p, torch.tensor([1]))[2] == 0).all()
    with pytest.raises(ValueError, match="labels must be < C = 2"):
        F.ensemble_weight_search(p, p, torch.tensor([2]))


# -- pseudo-labels -------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 12), st.floats(0.01, 30.0))
def test_pseudo_labels_select_confident_rows_and_nest(seed, C, scale):
    g = generator(seed, "cpu")
    p = torch.softmax(scale * torch.randn(50, C, generator=g, dtype=torch.float64), -1)
    top, arg = p.max(-1).values, p.argmax(-1)
    previous = None
    for tau in torch.linspace(1.0, 0.0, 21).tolist():          # falling thresholds
        idx, lab = F.pseudo_labels(p, tau)
        assert idx.dtype == lab.dtype == torch.long
        assert torch.equal(idx, torch.nonzero(top >= tau).flatten())        # increasing order
        assert torch.equal(lab, arg[idx])
        if previous is not None:
            assert set(previous.tolist()) <= set(idx.tolist())              # nested
        previous = idx
    assert len(F.pseudo_labels(p, 1.0 / C)[0]) == 50                        # max p >= 1/C


def test_pseudo_labels_ties_edges_and_min_entropy():
    p = torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]],
                     dtype=torch.float64)
    idx, lab = F.pseudo_labels(p, 0.4)              # inclusive threshold, first of tied maxima
    assert idx.tolist() == [0, 1, 2] and lab.tolist() == [0, 2, 0]
    idx, lab = F.pseudo_labels(p, 0.0)
    assert idx.tolist() == [0, 1, 2, 3] and lab.tolist() == [0, 2, 0, 0]
    idx, lab = F.pseudo_labels(p[:2], 0.9)          # nothing selected: empty, not an error
    assert idx.shape == lab.shape == (0,) and idx.dtype == torch.long
    # training on the pseudo-label with cross-entropy is the min-entropy -log max p
    z = torch.randn(30, 7, generator=generator(1, "cpu"), dtype=torch.float64)
    _, lab = F.pseudo_labels(z.softmax(-1), 0.0)
    ce = torch.nn.functional.cross_entropy(z, lab, reduction="none")
    assert torch.allclose(ce, -z.softmax(-1).max(-1).values.log(), atol=1e-12, rtol=0)


def test_pseudo_labels_errors_and_device():
    p = torch.full((4, 5), 0.2)
    with pytest.raises(ValueError, match="threshold must be <= 1"):
        F.pseudo_labels(p, 1.5)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        F.pseudo_labels(p, -0.1)
    with pytest.raises(ValueError, match="threshold must be finite"):
        F.pseudo_labels(p, float("nan"))
    with pytest.raises(TypeError, match="threshold must be a real number"):
        F.pseudo_labels(p, "0.5")
    with pytest.raises(ValueError, match="probs must sum to 1"):
        F.pseudo_labels(p * 2, 0.5)
    with pytest.raises(ValueError, match="probs must be non-negative"):
        F.pseudo_labels(torch.tensor([[1.5, -0.5]]), 0.5)
    with pytest.raises(ValueError, match="probs must have shape"):
        F.pseudo_labels(torch.full((2, 2, 2), 0.5), 0.5)
    with pytest.raises(TypeError, match="floating dtype"):
        F.pseudo_labels(torch.ones(2, 1, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="finite"):
        F.pseudo_labels(torch.tensor([[float("nan"), 1.0]]), 0.5)
    # 1/C selects every row only up to rounding: 0.2 in float16 is 0.19995
    assert len(F.pseudo_labels(p.to(torch.float16).float(), 0.2)[0]) == 0
    idx, lab = F.pseudo_labels(p.to(torch.float16).float(), 0.0)
    assert idx.device == p.device and len(idx) == 4 and lab.tolist() == [0] * 4


def test_pseudo_labels_compare_exactly_in_any_dtype():
    # tau is not rounded to the dtype of probs: float32 0.7 is 0.69999998..., below 0.7
    p = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    assert len(F.pseudo_labels(p, 0.7)[0]) == 0
    assert F.pseudo_labels(torch.tensor([[0.7, 0.3], [0.3, 0.7]], dtype=torch.float64),
                           0.7)[0].tolist() == [0, 1]
    p16 = torch.full((3, 5), 0.2, dtype=torch.float16)        # 0.19995 in float16
    assert len(F.pseudo_labels(p16, 0.2)[0]) == 0
    assert len(F.pseudo_labels(p16, float(p16[0, 0]))[0]) == 3
    # threshold 1 keeps exactly the one-hot rows
    q = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    idx, lab = F.pseudo_labels(q, 1.0)
    assert idx.tolist() == [0, 2] and lab.tolist() == [0, 1]


# -- third reading (s19): uneven counts, integer class sizes, inclusion as a property ----------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 16), st.integers(1, 6), st.floats(0.01, 0.5),
       st.floats(0.05, 3.0))
def test_sgd_equals_wen_for_every_count_at_its_own_alpha(seed, B, C, eta, lam):
    # the last claim of ft-prop-center-grad, for counts other than the paired sampler's 2
    g = _gen(seed)
    h = torch.randn(B, 3, generator=g, dtype=F64)
    y = torch.randint(0, C, (B,), generator=g)
    c = torch.randn(C, 3, generator=g, dtype=F64)
    c_sgd = c - eta * F.center_gradient(h, y, c, lam)
    for j in range(C):
        n = int((y == j).sum())
        alpha = 2 * eta * lam * (1 + n) / B
        if n == 0 or alpha > 1:
            continue
        c_wen = F.wen_center_update(h, y, c, alpha=alpha)
        assert torch.allclose(c_wen[j], c_sgd[j], atol=1e-13, rtol=0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=2, max_size=6), st.data())
def test_inclusion_is_the_enumeration_and_flatter_than_proportional(sizes, data):
    k = data.draw(st.integers(1, len(sizes)))
    pi = F.class_inclusion_probabilities(torch.tensor(sizes), k).numpy()   # integer counts
    assert np.allclose(pi, _brute_inclusion(sizes, k), atol=1e-9, rtol=0)
    assert abs(pi.sum() - k) < 1e-9 and (pi > 0).all() and (pi <= 1).all()
    w = np.asarray(sizes, dtype=float)
    order = np.argsort(w, kind="stable")
    for a, b in zip(order[:-1], order[1:], strict=True):
        if w[b] > w[a]:            # a larger class is drawn more often, but less than in proportion
            assert pi[b] >= pi[a] - 1e-12 and pi[b] / w[b] <= pi[a] / w[a] + 1e-12
    if k == 1:
        assert np.allclose(pi, w / w.sum(), atol=1e-12, rtol=0)


def test_inclusion_accepts_integer_counts_and_refuses_booleans():
    y = _labels([2, 4, 8, 16, 30])
    counts = torch.bincount(y)                        # int64, the natural input
    assert torch.equal(F.class_inclusion_probabilities(counts, 2),
                       F.class_inclusion_probabilities(counts.to(F64), 2))
    with pytest.raises(TypeError, match="counts must have a floating dtype"):
        F.class_inclusion_probabilities(torch.tensor([True, True]), 1)
    with pytest.raises(ValueError, match="positive class sizes"):
        F.class_inclusion_probabilities(torch.tensor([3, 0, 2]), 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_center_loss_and_updates_in_half_precision_do_not_overflow(dtype):
    # squared distances of 3 * 150^2 = 67500 exceed float16's 65504, the loss 0.25 * 67500 / 2
    # does not: it must come out finite and right, as must the centre gradient and Wen's update
    h = torch.tensor([[150.0] * 3, [150.0] * 3, [-1.0] * 3, [1.0] * 3], dtype=dtype)
    y = torch.tensor([0, 0, 1, 1])
    c = torch.zeros(2, 3, dtype=dtype)
    loss = F.center_loss(h, y, c, 0.125)
    assert loss.dtype == dtype and float(loss) == pytest.approx(0.125 * (2 * 67500 + 6) / 4,
                                                                rel=1e-2)
    grad = F.center_gradient(h, y, c, 0.125)
    ref = F.center_gradient(h.double(), y, c.double(), 0.125)
    assert grad.dtype == dtype and torch.allclose(grad.double(), ref, rtol=1e-2, atol=0)
    many = torch.full((600, 3), 120.0, dtype=dtype)       # a class sum of 72000 > 65504
    lab = torch.zeros(600, dtype=torch.long)
    new = F.wen_center_update(many, lab, torch.zeros(1, 3, dtype=dtype), alpha=0.5)
    assert new.dtype == dtype and torch.isfinite(new).all()
    assert float(new[0, 0]) == pytest.approx(0.5 * 600 / 601 * 120, rel=1e-2)
    assert torch.isfinite(F.center_gradient(many, lab, torch.zeros(1, 3, dtype=dtype), 1.0)).all()
    m = F.CenterLoss(2, 3, dtype=dtype)
    d = m(h, y).detach()
    assert d.dtype == dtype and float(d[2]) == 3.0


def test_ensemble_search_in_half_precision_is_the_exact_mixture():
    g = _gen(40)
    p1 = torch.softmax(torch.randn(2000, 10, generator=g), -1).half()
    p2 = torch.softmax(torch.randn(2000, 10, generator=g), -1).half()
    y = torch.randint(0, 10, (2000,), generator=g)
    a16, _, acc16 = F.ensemble_weight_search(p1, p2, y)
    a32, _, acc32 = F.ensemble_weight_search(p1.float(), p2.float(), y)   # the same numbers
    assert a16 == a32 and torch.equal(acc16, acc32)


def test_ratio_is_computed_in_float64_from_float32_features():
    # features far from the origin: a float32 computation of the scatters loses ~1e-4 relative
    g = _gen(41)
    h = (1e4 + torch.randn(400, 4, generator=g, dtype=F64)).float()
    y = torch.arange(400) % 5
    h[y == 1] += 0.5
    assert F.within_between_ratio(h, y) == pytest.approx(F.within_between_ratio(h.double(), y),
                                                         rel=1e-12)


def test_sampler_with_one_class_per_batch_draws_in_proportion_to_size():
    # k = 1: pi_c = n_c / N exactly, so a million batches test the clocks E/n_c themselves
    # (E/n_c^1.02 would put the small class 8.7 sd off)
    y = _labels([2, 198])
    n_b = 1_000_000
    idx = F.paired_class_sampler(y, 2, generator=_gen(42), n_batches=n_b)
    share = float((idx[:, 0] < 2).double().mean())
    assert abs(share - 0.01) < 4 * math.sqrt(0.01 * 0.99 / n_b)


# -- cases found by mutation testing (tools/mutate.py) --------------------------------------

def test_labels_given_as_a_list_are_taken_as_a_tensor():
    h = torch.randn(6, 3, generator=_gen(40), dtype=F64)
    labels = [0, 1, 2, 0, 1, 2]
    centers = torch.zeros(3, 3, dtype=F64)
    assert torch.equal(F.center_loss(h, labels, centers),
                       F.center_loss(h, torch.tensor(labels), centers))
    assert torch.equal(F.paired_class_sampler(labels, 4, generator=_gen(42), n_batches=3),
                       F.paired_class_sampler(torch.tensor(labels), 4, generator=_gen(42),
                                              n_batches=3))
    assert F.paired_class_sampler(labels, 4, generator=_gen(42)).shape == (1, 4)  # one batch


def test_center_gradient_defaults_match_center_loss():
    # the closed form with its default weight is the autograd gradient of the default loss
    h = torch.randn(8, 3, generator=_gen(43), dtype=F64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    centers = torch.randn(3, 3, generator=_gen(44), dtype=F64).requires_grad_(True)
    (auto,) = torch.autograd.grad(F.center_loss(h, labels, centers), centers)
    torch.testing.assert_close(F.center_gradient(h, labels, centers.detach()), auto,
                               atol=1e-14, rtol=0)


def test_within_between_ratio_reads_rounding_level_separation_as_inf():
    # class 1 is class 0 shifted by delta: the between-class share of the scatter is about
    # delta^2 / 4; below N^3 eps^2 = 4.9e-23 (N = 1000) it is rounding and the ratio is inf,
    # above it the ratio is finite, within / between = 4 var(h) / delta^2 per coordinate
    base = torch.randn(500, 2, generator=_gen(41), dtype=F64)
    labels = torch.arange(2).repeat_interleave(500)
    for delta, finite in ((1e-12, False), (1e-9, True), (6e-11, True)):
        h = torch.cat([base, base + delta])
        got = F.within_between_ratio(h, labels)
        assert math.isfinite(got) == finite, (delta, got)
        if finite:
            want = 4 * base.var(dim=0, correction=0).sum().item() / (2 * delta**2)
            assert got == pytest.approx(want, rel=1e-5)
