"""Tests of dlmath.moe: the expert split of an FFN, subset selection, the geometric MoE layer."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import moe
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


def _ffn(seed, d=6, D=12, d_out=5):
    g = _gen(seed)
    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)
    return draw(d, D), draw(D, d_out), draw(d, D), draw(3, d)


# -- the split ------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from([1, 2, 3, 4, 6, 12]),
       st.sampled_from(["relu", "gelu", "tanh"]))
def test_experts_sum_to_the_dense_layer(seed, n, act):
    W_A, W_B, W_G, x = _ffn(seed)
    f = {"relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh}[act]
    v = moe.expert_outputs(x, W_A, W_B, n, f)
    assert v.shape == (3, n, 5)
    assert torch.allclose(v.sum(-2), f(x @ W_A) @ W_B, atol=1e-12, rtol=0)
    glu = moe.expert_outputs(x, W_A, W_B, n, f, W_gate=W_G)
    assert torch.allclose(glu.sum(-2), (f(x @ W_G) * (x @ W_A)) @ W_B, atol=1e-12, rtol=0)


def test_split_uses_contiguous_column_and_row_blocks():
    W_A, W_B, _, x = _ffn(0)
    A, B = moe.split_ffn_experts(W_A, W_B, 4)
    v = moe.expert_outputs(x, W_A, W_B, 4)
    for i in range(4):
        assert torch.equal(A[i], W_A[:, 3 * i:3 * i + 3])
        assert torch.equal(B[i], W_B[3 * i:3 * i + 3])
        assert torch.allclose(v[:, i], torch.relu(x @ A[i]) @ B[i], atol=1e-14, rtol=0)


def test_split_errors():
    W_A, W_B, _, x = _ffn(0)
    with pytest.raises(ValueError, match="must divide"):
        moe.split_ffn_experts(W_A, W_B, 5)
    with pytest.raises(ValueError, match="rows"):
        moe.split_ffn_experts(W_A, W_B[:-1], 4)
    with pytest.raises(TypeError, match="n must be an int"):
        moe.split_ffn_experts(W_A, W_B, 4.0)
    with pytest.raises(ValueError, match="last dimension"):
        moe.expert_outputs(x[:, :-1], W_A, W_B, 4)
    with pytest.raises(ValueError, match="W_gate"):
        moe.expert_outputs(x, W_A, W_B, 4, W_gate=W_A[:, :-1])
    with pytest.raises(TypeError, match="activation"):
        moe.expert_outputs(x, W_A, W_B, 4, activation="relu")
    with pytest.raises(TypeError, match="floating"):
        moe.split_ffn_experts(W_A.long(), W_B, 4)


# -- selection ------------------------------------------------------------------------------

def test_topk_ties_go_to_the_lower_index_and_inf_is_allowed():
    s = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0])
    assert moe.topk_indices(s, 2).tolist() == [1, 2]
    assert moe.topk_indices(torch.zeros(4), 3).tolist() == [0, 1, 2]
    assert moe.topk_indices(torch.tensor([0.0, math.inf, -math.inf]), 1).tolist() == [1]
    with pytest.raises(ValueError, match="NaN"):
        moe.topk_indices(torch.tensor([0.0, math.nan]), 1)
    with pytest.raises(ValueError, match="k must be <= 3"):
        moe.topk_indices(torch.zeros(3), 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        moe.topk_indices(torch.zeros(3), 0)


def _brute(V, k):
    """Reference by itertools, one instance at a time."""
    n = V.shape[0]
    best = min(itertools.combinations(range(n), k),
               key=lambda S: float((V.sum(0) - V[list(S)].sum(0)).square().sum()))
    return list(best)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 7), st.integers(1, 5))
def test_best_subset_matches_itertools_and_beats_every_subset(seed, n, d):
    g = _gen(seed)
    V = torch.randn(n, d, generator=g, dtype=F64) * torch.rand(n, 1, generator=g, dtype=F64)
    for k in range(1, n + 1):
        idx, err = moe.best_subset(V, k)
        assert idx.tolist() == _brute(V, k)
        assert abs(err - moe.subset_error(V, idx)) < 1e-12
        for S in itertools.combinations(range(n), k):
            assert err <= moe.subset_error(V, torch.tensor(S)) + 1e-12


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 8), st.integers(0, 8))
def test_orthogonal_vectors_top_k_by_norm_is_optimal(seed, n, extra):
    g = _gen(seed)
    Q = torch.linalg.qr(torch.randn(n + extra, n, generator=g, dtype=F64)).Q.T
    V = Q * (10 ** (3 * torch.rand(n, 1, generator=g, dtype=F64)))
    for k in range(1, n + 1):
        idx, err = moe.best_subset(V, k)
        top = moe.topk_by_norm(V, k)
        assert torch.equal(idx, top)
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[top] = False
        assert abs(err - V[dropped].square().sum()) <= 1e-10 * max(1.0, err.item())


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 8), st.integers(1, 6))
def test_drop_one_is_always_solved_by_norms(seed, n, d):
    g = _gen(seed)
    V = torch.randn(n, d, generator=g, dtype=F64) + torch.randn(d, generator=g, dtype=F64)
    idx, err = moe.best_subset(V, n - 1)
    assert abs(moe.subset_error(V, moe.topk_by_norm(V, n - 1)) - err) < 1e-12


def test_non_orthogonal_counterexample_keeps_the_shortest_vector():
    V = torch.tensor([[2.0, 0.0], [-1.5, 0.0], [0.0, 1.0]], dtype=F64)
    idx, err = moe.best_subset(V, 1)
    assert idx.tolist() == [2] and abs(err - 0.25) < 1e-15
    assert moe.topk_by_norm(V, 1).tolist() == [0]
    assert abs(moe.subset_error(V, torch.tensor([0])) - 3.25) < 1e-15


def test_batched_selection_and_broadcast_subset_error():
    g = _gen(5)
    V = torch.randn(4, 3, 6, 2, generator=g, dtype=F64)
    idx, err = moe.best_subset(V, 2)
    assert idx.shape == (4, 3, 2) and err.shape == (4, 3)
    for a in range(4):
        for b in range(3):
            assert idx[a, b].tolist() == _brute(V[a, b], 2)
    combos = moe.all_subsets(6, 2)
    all_errs = moe.subset_error(V.unsqueeze(-3), combos)
    assert all_errs.shape == (4, 3, 15)
    assert torch.allclose(all_errs.min(-1).values, err, atol=1e-12, rtol=0)


def test_best_subset_ties_are_lexicographic_and_the_size_limit_is_enforced():
    V = torch.ones(4, 2, dtype=F64)  # every 2-subset has the same error
    assert moe.best_subset(V, 2)[0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="exhaustive search"):
        moe.best_subset(torch.zeros(20, 2), 10)
    assert moe.best_subset(torch.zeros(20, 2), 1)[0].tolist() == [0]
    with pytest.raises(ValueError, match="must be finite"):
        moe.best_subset(torch.tensor([[math.inf, 0.0]]), 1)


def test_all_subsets_order_count_and_a_large_case():
    assert moe.all_subsets(4, 2).tolist() == [list(c) for c in itertools.combinations(range(4), 2)]
    assert moe.all_subsets(3, 3).tolist() == [[0, 1, 2]]
    assert moe.all_subsets(3, 1).shape == (3, 1)
    assert moe.all_subsets(16, 8).shape == (12870, 8)  # torch.combinations would need 34 GB
    with pytest.raises(ValueError, match="k must be <= 3"):
        moe.all_subsets(3, 4)


def test_subset_error_validation():
    V = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="repeat"):
        moe.subset_error(V, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        moe.subset_error(V, torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="integer"):
        moe.subset_error(V, torch.tensor([0.0]))


# -- directions and the layer ---------------------------------------------------------------

def test_unit_direction_zero_huge_tiny_and_dtype():
    assert torch.equal(moe.unit_direction(torch.zeros(3)), torch.zeros(3))
    v = torch.tensor([3.0, -4.0], dtype=F64)
    for scale in (1.0, 1e300, 1e-300):
        assert torch.allclose(moe.unit_direction(v * scale), v / 5, atol=1e-15, rtol=0)
    big = torch.tensor([1e30, 1e30], dtype=torch.float32)
    assert moe.unit_direction(big).dtype == torch.float32
    assert moe.unit_direction(torch.tensor([[1e-40, 0.0]]))[0, 0].item() == 1.0
    with pytest.raises(ValueError, match="finite"):
        moe.unit_direction(torch.tensor([math.inf, 0.0]))


def test_unit_direction_gradient():
    g = _gen(2)
    v = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(moe.unit_direction, (v,))


def _experts(seed, n=4):
    W_A, W_B, _, x = _ffn(seed, D=12)
    A, B = moe.split_ffn_experts(W_A, W_B, n)
    g = _gen(seed + 1)
    x = torch.randn(7, 6, generator=g, dtype=F64)
    return x, [lambda z, i=i: torch.relu(z @ A[i]) @ B[i] for i in range(n)], \
        moe.expert_outputs(x, W_A, W_B, n)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 4))
def test_geometric_moe_with_true_norms_is_the_top_k_subset_sum(seed, k):
    x, experts, v = _experts(seed)
    norms = v.norm(dim=-1)
    y, counts = moe.geometric_moe(x, norms, experts, k)
    top = moe.topk_by_norm(v, k)
    ref = torch.gather(v, 1, top.unsqueeze(-1).expand(-1, -1, v.shape[-1])).sum(1)
    assert torch.allclose(y, ref, atol=1e-12, rtol=0)
    assert counts.sum().item() == 7 * k
    if k == 4:
        assert torch.allclose(y, v.sum(1), atol=1e-12, rtol=0)


def test_geometric_moe_evaluates_only_selected_experts_and_one_token():
    x, experts, v = _experts(3)
    calls = [0] * 4

    def counted(i):
        def f(z):
            calls[i] += z.shape[0]
            return experts[i](z)
        return f

    scores = torch.tensor([[1.0, 0.0, 2.0, 0.5]], dtype=F64).expand(7, 4)
    y, counts = moe.geometric_moe(x, scores, [counted(i) for i in range(4)], 2)
    assert calls == [7, 0, 7, 0] == counts.tolist()
    y1, c1 = moe.geometric_moe(x[0], scores[0], experts, 2)
    assert torch.allclose(y1, y[0], atol=1e-14, rtol=0) and c1.tolist() == [1, 0, 1, 0]


def test_router_gradient_flows_only_through_the_gate():
    x, experts, v = _experts(4)
    g = _gen(9)
    W_R = torch.randn(6, 4, generator=g, dtype=F64, requires_grad=True)
    target = v.sum(1)

    def loss(W):
        p = F.softplus(x @ W)
        y, _ = moe.geometric_moe(x, p, experts, 2)
        return 0.5 * (y - target).square().sum()

    assert torch.autograd.gradcheck(loss, (W_R,))
    # closed form: x^T (h'(x W_R) * G), G_ti = 1[i in S_t] <y_t - t_t, e_ti>
    p = F.softplus(x @ W_R)
    y, _ = moe.geometric_moe(x, p, experts, 2)
    e = moe.unit_direction(v)
    sel = moe._kept_mask(moe.topk_indices(p.detach(), 2), 4, F64)
    G = sel * torch.einsum("td,tnd->tn", (y - target).detach(), e)
    closed = x.T @ (torch.sigmoid(x @ W_R).detach() * G)
    (auto,) = torch.autograd.grad(loss(W_R), W_R)
    assert torch.allclose(auto, closed, atol=1e-12, rtol=0)


def test_geometric_moe_errors():
    x, experts, _ = _experts(0)
    with pytest.raises(ValueError, match=">= 0"):
        moe.geometric_moe(x, -torch.ones(7, 4, dtype=F64), experts, 1)
    with pytest.raises(ValueError, match="4 columns but 3 experts"):
        moe.geometric_moe(x, torch.ones(7, 4, dtype=F64), experts[:3], 1)
    with pytest.raises(ValueError, match="one row per token"):
        moe.geometric_moe(x, torch.ones(6, 4, dtype=F64), experts, 1)
    with pytest.raises(TypeError, match="sequence of callables"):
        moe.geometric_moe(x, torch.ones(7, 4, dtype=F64), experts[0], 1)


# -- importance sampling --------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 8), st.integers(1, 5))
def test_importance_sampling_closed_form_and_optimum(seed, n, d):
    g = _gen(seed)
    V = torch.randn(n, d, generator=g, dtype=F64) * torch.rand(n, 1, generator=g, dtype=F64)
    p = torch.rand(n, generator=g, dtype=F64) + 0.01
    p = p / p.sum()
    s = V.sum(0)
    direct = sum(p[i] * (V[i] / p[i] - s).square().sum() for i in range(n))
    assert abs(moe.importance_sampling_variance(V, p) - direct) <= 1e-9 * max(1.0, direct)
    norms = V.norm(dim=-1)
    best = moe.importance_sampling_variance(V, norms / norms.sum())
    assert abs(best - (norms.sum() ** 2 - s.square().sum()).clamp_min(0)) < 1e-10
    assert best <= moe.importance_sampling_variance(V, p) + 1e-10
    uniform = moe.importance_sampling_variance(V, torch.full((n,), 1 / n, dtype=F64))
    squares = moe.importance_sampling_variance(V, norms**2 / (norms**2).sum())
    assert abs(uniform - squares) <= 1e-10 * max(1.0, uniform)


def test_importance_sampling_zero_probabilities():
    V = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    on, off = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    assert moe.importance_sampling_variance(V, on).item() == 0.0
    assert moe.importance_sampling_variance(V, off).item() == math.inf
    with pytest.raises(ValueError, match="sum to 1"):
        moe.importance_sampling_variance(V, torch.tensor([0.5, 0.6], dtype=F64))
