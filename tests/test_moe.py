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
    with pytest.raises(TypeError, match="share one dtype"):
        moe.expert_outputs(x.float(), W_A, W_B, 4)
    with pytest.raises(TypeError, match="W_gate must have the dtype"):
        moe.expert_outputs(x, W_A, W_B, 4, W_gate=W_A.float())


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
@given(st.integers(0, 2**31), st.integers(1, 7), st.integers(1, 5))
def test_subset_error_is_the_kept_sum_error(seed, n, d):
    """The complement identity: the library's dropped-sum norm equals the kept-sum error
    computed directly, for every subset (the value, not only the argmin)."""
    g = _gen(seed)
    V = torch.randn(n, d, generator=g, dtype=F64) * 10 ** (2 * torch.rand(n, 1, generator=g,
                                                                          dtype=F64))
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            direct = float((V[list(S)].sum(0) - V.sum(0)).square().sum())
            assert abs(moe.subset_error(V, torch.tensor(S)) - direct) <= 1e-12 * max(1.0, direct)


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


def _mu(V):
    gram = V @ V.T
    return (gram - torch.diag(torch.diag(gram))).abs().max().item()


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 8), st.integers(1, 6),
       st.sampled_from([1e-3, 1e-1, 1.0]))
def test_near_orthogonal_bound_holds(seed, n, d, eps):
    """E(top-k) <= E(opt) + 2 m (m - 1) mu, m = n - k, mu = max |<v_i, v_j>| (chapter 26)."""
    g = _gen(seed)
    Q = torch.linalg.qr(torch.randn(n + d, n, generator=g, dtype=F64)).Q.T
    V = (Q + eps * torch.randn(n, n + d, generator=g, dtype=F64)) \
        * torch.rand(n, 1, generator=g, dtype=F64)
    mu = _mu(V)
    for k in range(1, n):
        m = n - k
        _, opt = moe.best_subset(V, k)
        excess = moe.subset_error(V, moe.topk_by_norm(V, k)) - opt
        assert excess <= 2 * m * (m - 1) * mu + 1e-12


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_near_orthogonal_bound_is_sharp(m):
    """m short vectors with inner products +mu and m longer ones (|v|^2 = 1 + delta) with -mu:
    the excess is 2 m (m - 1) mu - m delta, so the constant 2 m (m - 1) cannot be lowered."""
    mu, delta = 0.1, 1e-3
    ones, eye = torch.ones(m, m, dtype=F64), torch.eye(m, dtype=F64)
    gram = torch.block_diag((1 - mu) * eye + mu * ones, (1 + delta + mu) * eye - mu * ones)
    V = torch.linalg.cholesky(gram)
    assert abs(_mu(V) - mu) < 1e-14
    best, opt = moe.best_subset(V, m)
    assert best.tolist() == list(range(m))
    assert moe.topk_by_norm(V, m).tolist() == list(range(m, 2 * m))
    excess = moe.subset_error(V, moe.topk_by_norm(V, m)) - opt
    assert abs(excess - (2 * m * (m - 1) * mu - m * delta)) < 1e-12


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


def test_float32_dtype_is_kept_and_matches_float64():
    g = _gen(6)
    V = torch.randn(5, 6, 3, generator=g, dtype=F64)
    V32 = V.float()
    idx, err = moe.best_subset(V32, 2)
    assert err.dtype == torch.float32 and idx.dtype == torch.long
    assert torch.equal(idx, moe.best_subset(V, 2)[0])
    assert moe.subset_error(V32, idx).dtype == torch.float32
    assert torch.equal(moe.topk_by_norm(V32, 2), moe.topk_by_norm(V, 2))
    p = torch.full((5, 6), 1 / 6, dtype=F64)
    var32 = moe.importance_sampling_variance(V32, p.float())
    assert var32.dtype == torch.float32 and var32.shape == (5,)
    assert torch.allclose(var32.double(), moe.importance_sampling_variance(V, p),
                          rtol=1e-5, atol=0)
    W_A, W_B, _, x = _ffn(0)
    v32 = moe.expert_outputs(x.float(), W_A.float(), W_B.float(), 4)
    assert v32.dtype == torch.float32
    assert torch.allclose(v32.double(), moe.expert_outputs(x, W_A, W_B, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("scale", "fits"), [(1e25, False), (1e15, True), (1e-15, True),
                                             (1e-25, False)])
def test_selection_and_errors_at_the_ends_of_the_float32_range(scale, fits):
    """Squares of float32 entries overflow above ~1e19 and underflow below ~1e-23: without the
    power-of-two rescaling every norm and subset error tied at inf or 0 and the first subset
    won. The subsets must be those of float64; errors that fit in float32 must agree with it."""
    g = _gen(8)
    V = torch.randn(6, 5, 3, generator=g, dtype=F64) * torch.rand(6, 5, 1, generator=g,
                                                                  dtype=F64)
    V32 = (V * scale).float()
    V64 = V32.double()  # the same numbers, in a dtype where nothing overflows
    for k in (1, 2, 4):
        idx, err = moe.best_subset(V32, k)
        idx64, err64 = moe.best_subset(V64, k)
        assert torch.equal(idx, idx64) and err.dtype == torch.float32
        assert torch.equal(moe.topk_by_norm(V32, k), moe.topk_by_norm(V64, k))
        sub = moe.subset_error(V32, idx64)
        if fits:  # the error itself (about scale^2) is a float32 number
            assert torch.allclose(err.double(), err64, rtol=1e-5, atol=0)
            assert torch.allclose(sub.double(), err64, rtol=1e-5, atol=0)
        else:  # it is not: inf or 0, never NaN, and the subset is still right
            assert bool(((err == math.inf) | (err == 0)).all()) and not sub.isnan().any()
    p = torch.tensor([0.25, 0.25, 0.25, 0.125, 0.125]).expand(6, 5)  # exact in both dtypes
    var = moe.importance_sampling_variance(V32, p)
    var64 = moe.importance_sampling_variance(V64, p.double())
    assert not var.isnan().any()
    if fits:
        assert torch.allclose(var.double(), var64, rtol=1e-4, atol=0)
    # a tiny non-zero vector that can never be drawn still makes the estimate biased
    off = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float32)
    assert (moe.importance_sampling_variance(V32, off) == math.inf).all()


def test_subset_error_and_variance_gradients_in_closed_form():
    """The rescaling is a constant power of two, so gradients still flow:
    d|sum_{i not in S} v_i|^2 / dv_j = 2 rest (j dropped) or 0 (j kept), and
    d(sum |v_i|^2/p_i - |sum v|^2) / dv_j = 2 v_j / p_j - 2 sum v."""
    g = _gen(12)
    V = (1e3 * torch.randn(4, 3, generator=g, dtype=F64)).requires_grad_(True)
    S = torch.tensor([0, 2])
    (grad,) = torch.autograd.grad(moe.subset_error(V, S), V)
    rest = V.detach()[[1, 3]].sum(0)
    expected = torch.stack([torch.zeros(3, dtype=F64), 2 * rest, torch.zeros(3, dtype=F64),
                            2 * rest])
    assert torch.allclose(grad, expected, rtol=1e-14, atol=0)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    (grad,) = torch.autograd.grad(moe.importance_sampling_variance(V, p), V)
    expected = 2 * V.detach() / p.unsqueeze(-1) - 2 * V.detach().sum(0)
    assert torch.allclose(grad, expected, rtol=1e-12, atol=0)
    W = (V.detach() / 1e3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda W: moe.best_subset(W, 2)[1], (W,))


def test_selection_in_float16_keeps_the_dtype_and_ranks_past_its_range():
    # squared lengths 9e4, 1.6e5, 9.01e4 all overflow float16 (max 65504)
    V = torch.tensor([[300.0, 0.0], [0.0, 400.0], [-300.0, 10.0]], dtype=torch.float16)
    assert moe.topk_by_norm(V, 1).tolist() == [1]
    assert moe.topk_by_norm(V, 2).tolist() == [1, 2]
    idx, err = moe.best_subset(V, 1)
    assert idx.tolist() == [1] and err.dtype == torch.float16 and err.item() == 100.0
    assert moe.subset_error(V, torch.tensor([0])).item() == math.inf  # 410^2 > 65504
    W = torch.tensor([[3e-3, 0.0], [0.0, 4e-3]], dtype=torch.float16)  # squares underflow
    assert moe.topk_by_norm(W, 1).tolist() == [1]


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
    # closed form: d e / d v = (I - e e^T) / |v|
    u = v[0].detach()
    e = u / u.norm()
    J = torch.autograd.functional.jacobian(moe.unit_direction, u)
    assert torch.allclose(J, (torch.eye(4, dtype=F64) - torch.outer(e, e)) / u.norm(),
                          atol=1e-14, rtol=0)
    # at v = 0 the value is 0 and the Jacobian is 0 (not the identity of the rescaling)
    J0 = torch.autograd.functional.jacobian(moe.unit_direction, torch.zeros(4, dtype=F64))
    assert torch.equal(J0, torch.zeros(4, 4, dtype=F64))


def test_unit_direction_other_dim_and_validation():
    g = _gen(3)
    v = torch.randn(4, 3, generator=g, dtype=F64)
    assert torch.allclose(moe.unit_direction(v, dim=0), (v / v.norm(dim=0)), atol=1e-15, rtol=0)
    assert torch.allclose(moe.unit_direction(v, dim=0), moe.unit_direction(v.T).T, atol=0, rtol=0)
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        moe.unit_direction(v, dim=2)
    with pytest.raises(TypeError, match="floating"):
        moe.unit_direction(torch.ones(3, dtype=torch.long))


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
    with pytest.raises(ValueError, match="x must not be empty"):
        moe.geometric_moe(x[:0], torch.ones(0, 4, dtype=F64), experts, 1)
    with pytest.raises(ValueError, match="scores must be finite"):
        moe.geometric_moe(x, torch.full((7, 4), math.inf, dtype=F64), experts, 1)
    with pytest.raises(ValueError, match="k must be <= 4"):
        moe.geometric_moe(x, torch.ones(7, 4, dtype=F64), experts, 5)


def test_geometric_moe_zero_expert_and_ties():
    """A selected expert whose output is exactly 0 contributes 0 and passes no gradient; tied
    scores select the lower index."""
    x, experts, v = _experts(0)
    zero = [lambda z: torch.zeros(z.shape[0], 5, dtype=z.dtype)] + experts[1:]
    scores = torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=F64).expand(7, 4).clone()
    scores.requires_grad_(True)
    y, counts = moe.geometric_moe(x, scores, zero, 2)
    assert counts.tolist() == [7, 7, 0, 0]
    assert torch.allclose(y, moe.unit_direction(v[:, 1]), atol=1e-14, rtol=0)
    (gs,) = torch.autograd.grad(y.sum(), scores)
    assert torch.equal(gs[:, 0], torch.zeros(7, dtype=F64))
    assert torch.allclose(gs[:, 1], moe.unit_direction(v[:, 1]).sum(-1), atol=1e-14, rtol=0)
    assert torch.equal(gs[:, 2:], torch.zeros(7, 2, dtype=F64))


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
    with pytest.raises(ValueError, match="one probability per vector"):
        moe.importance_sampling_variance(V, torch.tensor([0.5, 0.25, 0.25], dtype=F64))
    # with z zero vectors, p ~ |v|^2 beats uniform by z sum|v|^2 (uniform = it only if z = 0)
    W = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, -2.0], [0.0, 0.0]], dtype=F64)
    sq = W.square().sum(-1)
    uniform = moe.importance_sampling_variance(W, torch.full((4,), 0.25, dtype=F64))
    squares = moe.importance_sampling_variance(W, sq / sq.sum())
    assert abs(uniform - squares - 2 * sq.sum()) < 1e-12
    assert abs(uniform - (4 * sq.sum() - W.sum(0).square().sum())) < 1e-12


# --- Dynamic expert counts and bias balancing (chapter 27) ---------------------------------

def _scores(seed, T=64, n=8, spread=1.0):
    g = _gen(seed)
    return torch.sigmoid(torch.randn(T, n, generator=g, dtype=F64)
                         + spread * torch.randn(n, generator=g, dtype=F64))


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 8), st.floats(-50, 50))
def test_route_topk_is_argtop_of_biased_scores_and_shift_invariant(seed, k, c):
    rho = _scores(seed)
    b = 0.5 * torch.randn(8, generator=_gen(seed + 1), dtype=F64)
    mask = moe.route_topk(rho, b, k)
    assert mask.dtype == torch.bool and mask.shape == rho.shape
    assert (mask.sum(-1) == k).all()
    ref = torch.zeros_like(mask).scatter(-1, torch.topk(rho + b, k, dim=-1).indices, True)
    assert torch.equal(mask, ref)
    shifted = b + c
    if torch.equal(torch.argsort(rho + shifted, dim=-1), torch.argsort(rho + b, dim=-1)):
        assert torch.equal(moe.route_topk(rho, shifted, k), mask)


def test_route_topk_ties_inf_and_raising_one_bias():
    rho = torch.tensor([[0.5, 0.5, 0.5, 0.2]], dtype=F64)
    assert moe.route_topk(rho, torch.zeros(4, dtype=F64), 2).tolist() == [[True, True, False,
                                                                            False]]
    inf_rho = torch.tensor([[math.inf, 0.0, -math.inf]], dtype=F64)
    assert moe.route_topk(inf_rho, torch.zeros(3, dtype=F64), 1).tolist() == [[True, False,
                                                                               False]]
    rho = _scores(3, T=200)
    b = torch.zeros(8, dtype=F64)
    prev = moe.load_stats(moe.route_topk(rho, b, 2)).rates  # rates = k F, exact counts / T
    for _ in range(30):
        b[5] += 0.05
        cur = moe.load_stats(moe.route_topk(rho, b, 2)).rates
        assert cur[5] >= prev[5] and (torch.cat([cur[:5], cur[6:]])
                                      <= torch.cat([prev[:5], prev[6:]])).all()
        prev = cur
    assert prev[5] > 0.8


def test_route_threshold_is_strict_and_monotone_in_a_common_shift():
    rho = torch.tensor([[0.2, 0.5, 0.9]], dtype=F64)
    b = torch.tensor([-0.5, -0.5, -0.5], dtype=F64)
    assert moe.route_threshold(rho, b).tolist() == [[False, False, True]]  # 0.5 - 0.5 = 0: out
    rho = _scores(4)
    budgets = [moe.load_stats(moe.route_threshold(rho, torch.full((8,), c, dtype=F64))).budget
               for c in torch.linspace(-1.2, 0.2, 30)]
    assert all(a <= b for a, b in itertools.pairwise(budgets))
    assert budgets[0] == 0 and budgets[-1] == 8
    batched = moe.route_threshold(rho, torch.zeros(3, 1, 8, dtype=F64) - 0.6)
    assert batched.shape == (3, 64, 8)


def test_routing_validation():
    rho = torch.rand(4, 3, dtype=F64)
    with pytest.raises(ValueError, match="one entry per expert"):
        moe.route_topk(rho, torch.zeros(4, dtype=F64), 1)
    with pytest.raises(ValueError, match="NaN"):
        moe.route_threshold(torch.tensor([[math.nan, 0.0]]), torch.zeros(2))
    with pytest.raises(ValueError, match="bias must be finite"):
        moe.route_threshold(rho, torch.tensor([0.0, math.inf, 0.0]))
    with pytest.raises(ValueError, match="k must be <= 3"):
        moe.route_topk(rho, torch.zeros(3, dtype=F64), 4)
    with pytest.raises(TypeError, match="floating"):
        moe.route_threshold(torch.ones(2, 3, dtype=torch.long), torch.zeros(3))


def test_load_stats_by_hand_and_conventions():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    st_ = moe.load_stats(mask, dtype=F64)
    assert torch.allclose(st_.rates, torch.tensor([1, 2 / 3, 1 / 3, 0], dtype=F64), atol=1e-15)
    assert abs(st_.budget.item() - 2) < 1e-15
    assert torch.allclose(st_.load, torch.tensor([0.5, 1 / 3, 1 / 6, 0], dtype=F64), atol=1e-15)
    assert abs(st_.maxvio.item() - 1.0) < 1e-15  # n max F - 1 = 4 * 0.5 - 1
    empty = moe.load_stats(torch.zeros(5, 4, dtype=torch.bool))
    assert empty.budget.item() == 0 and torch.allclose(empty.load, torch.full((4,), 0.25))
    assert empty.maxvio.item() == 0
    balanced = moe.load_stats(torch.eye(4, dtype=torch.float32))
    assert balanced.rates.dtype == torch.float32 and abs(balanced.maxvio.item()) < 1e-6
    batch = moe.load_stats(torch.rand(2, 3, 10, 4, generator=_gen(0)) > 0.5)
    assert batch.rates.shape == (2, 3, 4) and batch.budget.shape == (2, 3)
    assert torch.allclose(batch.load.sum(-1), torch.ones(2, 3))


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 8))
def test_topk_loads_sum_to_one_and_budget_is_k(seed, k):
    st_ = moe.load_stats(moe.route_topk(_scores(seed), torch.zeros(8, dtype=F64), k), dtype=F64)
    assert abs(st_.budget.item() - k) < 1e-12 and abs(st_.load.sum().item() - 1) < 1e-12
    assert st_.maxvio.item() >= -1e-12 and st_.maxvio.item() <= 8 / k - 1 + 1e-12


def test_load_stats_validation():
    with pytest.raises(TypeError, match="boolean or floating"):
        moe.load_stats(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="only 0 and 1"):
        moe.load_stats(torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match=r"\(\.\.\., T, n\)"):
        moe.load_stats(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(\.\.\., T, n\)"):
        moe.load_stats(torch.ones(0, 3, dtype=torch.bool))


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 7))
def test_straight_through_gradient_is_F_minus_Q_and_sgd_descends_it(seed, k):
    rho = _scores(seed)
    b = (0.3 * torch.randn(8, generator=_gen(seed + 1), dtype=F64)).requires_grad_(True)
    F_ = moe.load_stats(moe.route_topk(rho, b.detach(), k), dtype=F64).load
    Q = torch.full((8,), 1 / 8, dtype=F64)
    loss = 0.5 * (b + (F_ - b).detach() - Q).square().sum()
    (grad,) = torch.autograd.grad(loss, b)
    assert torch.allclose(grad, F_ - Q, atol=1e-15, rtol=0)
    new = moe.lossfree_update(b.detach(), F_, 0.01, "sgd")
    assert torch.allclose(new, b.detach() - 0.01 * grad, atol=1e-15, rtol=0)


def test_lossfree_update_modes_and_edge_cases():
    b = torch.zeros(4, dtype=F64)
    F_ = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64)
    assert torch.equal(moe.lossfree_update(b, F_, 0.5, "sign"),
                       torch.tensor([-0.5, -0.5, 0.5, 0.5], dtype=F64))
    z = F_ - 0.25
    rms_step = moe.lossfree_update(b, F_, 1.0, "rms")
    assert torch.allclose(-rms_step, z / z.square().mean().sqrt(), atol=1e-15, rtol=0)
    assert abs(rms_step.square().mean().sqrt().item() - 1) < 1e-15
    # alpha scales both normalised steps (alpha = 1 above cannot tell alpha from 1 or alpha^2)
    for mode, phi in (("sign", torch.sign(z)), ("rms", z / z.square().mean().sqrt())):
        assert torch.allclose(moe.lossfree_update(b, F_, 0.3, mode), -0.3 * phi, atol=1e-15,
                              rtol=0)
    uniform = torch.full((4,), 0.25, dtype=F64)
    for mode in ("sign", "rms", "sgd"):
        assert torch.equal(moe.lossfree_update(b, uniform, 1.0, mode), b)
    half = moe.lossfree_update(b.half(), F_.half(), 1.0, "rms")  # float16 keeps its dtype
    assert half.dtype == torch.float16 and abs(half.float().square().mean().sqrt() - 1) < 1e-2
    batched = moe.lossfree_update(torch.zeros(3, 4, dtype=F64), F_, 1.0, "sign")
    assert batched.shape == (3, 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        moe.lossfree_update(b, F_, 1.0, "adam")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        moe.lossfree_update(b, F_, 0.0)
    with pytest.raises(ValueError, match="same last dimension"):
        moe.lossfree_update(torch.zeros(3), F_, 1.0)


@SETTINGS
@given(st.integers(0, 2**31), st.floats(0.5, 15.0), st.floats(0.0, 3.0))
def test_dynamic_k_rules_move_the_mean_bias_as_stated(seed, k, lam):
    g = _gen(seed)
    rates = torch.rand(5, 16, generator=g, dtype=F64)
    bias = torch.randn(5, 16, generator=g, dtype=F64)
    B = rates.sum(-1)
    s = torch.sign(rates / B.unsqueeze(-1) - 1 / 16)
    alpha = 0.01
    expected = {"lossfree": s.mean(-1), "centred": torch.zeros_like(B),
                "budget": torch.sign(B - k), "cap": torch.sign((B - k).clamp_min(0)),
                "simplified": s.mean(-1) + lam * torch.sign(B - k)}
    for rule, u_bar in expected.items():
        new = moe.dynamic_k_update(bias, rates, k, alpha, rule, lam=lam)
        assert torch.allclose((bias.mean(-1) - new.mean(-1)) / alpha, u_bar, atol=1e-10, rtol=0)
        if rule in ("centred", "budget", "cap"):  # the balance part is s - mean(s)
            centred = (bias - new) / alpha - u_bar.unsqueeze(-1)
            assert torch.allclose(centred, s - s.mean(-1, keepdim=True), atol=1e-10, rtol=0)
    # normalised loads: blind to k and to a common scale of the rates
    a = moe.dynamic_k_update(bias, rates, k, alpha, "lossfree")
    assert torch.equal(a, moe.dynamic_k_update(bias, rates * 0.25, 1.0, alpha, "lossfree"))


def test_dynamic_k_per_k_fixed_point_and_zero_budget():
    bias = torch.linspace(-1, 0, 8, dtype=F64)
    rest = torch.full((8,), 0.5, dtype=F64)  # k / n with k = 4
    assert torch.equal(moe.dynamic_k_update(bias, rest, 4, 0.1, "lossfree", per_k=True), bias)
    assert (moe.dynamic_k_update(bias, rest / 2, 4, 0.1, "lossfree", per_k=True) > bias).all()
    assert (moe.dynamic_k_update(bias, rest, 4, 0.1, "lossfree", per_k=False) == bias).all()
    # no selection at all: no balance signal, only the budget term acts
    none = torch.zeros(8, dtype=F64)
    for rule in ("budget", "simplified"):
        new = moe.dynamic_k_update(bias, none, 4, 0.1, rule)
        assert torch.allclose(new - bias, torch.full((8,), 0.1, dtype=F64), atol=1e-15)
    assert torch.equal(moe.dynamic_k_update(bias, none, 4, 0.1, "cap"), bias)
    over = torch.full((8,), 0.75, dtype=F64)  # balanced, budget 6 > 4: cap lowers every bias
    assert torch.allclose(moe.dynamic_k_update(bias, over, 4, 0.1, "cap") - bias,
                          torch.full((8,), -0.1, dtype=F64), atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dynamic_k_update_equal_rates_are_a_rest_point(dtype):
    """Equal rates are balanced: s = 0 exactly, so Loss-Free and centred leave the bias alone
    and the budget rule moves every coordinate by the same alpha. Computed as n r_i - B with a
    rounded sum B, seven experts at rate c/1000 gave s != 0 for about half of the c."""
    bias = torch.linspace(-1, 0, 7, dtype=dtype)
    for c in range(1, 1000, 7):
        rates = torch.full((7,), c / 1000, dtype=dtype)
        for rule in ("lossfree", "centred"):
            assert torch.equal(moe.dynamic_k_update(bias, rates, 3.5, 0.1, rule), bias)
        budget = moe.dynamic_k_update(bias, rates, 3.5, 0.1, "budget")
        step = 0.1 * (1.0 if 7 * c / 1000 > 3.5 else -1.0)
        assert torch.allclose(budget, bias - step, atol=1e-6, rtol=0)
    # an unequal pair: the sign of n r_i - B, i.e. of r_i - mean(r)
    rates = torch.tensor([0.75, 0.25, 0.5], dtype=dtype)  # mean 0.5: expert 2 is balanced
    u = (bias[:3] - moe.dynamic_k_update(bias[:3], rates, 1.0, 0.5, "lossfree")) / 0.5
    assert u.tolist() == [1.0, -1.0, 0.0]


def test_dynamic_k_validation():
    b, r = torch.zeros(4), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="rule must be one of"):
        moe.dynamic_k_update(b, r, 2, 0.1, "eq7")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        moe.dynamic_k_update(b, r * 3, 2, 0.1)
    with pytest.raises(ValueError, match="k must be <= 4"):
        moe.dynamic_k_update(b, r, 5, 0.1)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        moe.dynamic_k_update(b, r, 2, 0.1, "simplified", lam=-1.0)
    with pytest.raises(TypeError, match="per_k must be a bool"):
        moe.dynamic_k_update(b, r, 2, 0.1, per_k=1)
    with pytest.raises(ValueError, match="same last dimension"):
        moe.dynamic_k_update(torch.zeros(3), r, 2, 0.1)


@SETTINGS
@given(st.integers(0, 2**31), st.floats(0.1, 7.9))
def test_threshold_bias_init_selects_round_kT_scores(seed, k):
    rho = _scores(seed, T=50)
    b0 = moe.threshold_bias_init(rho, k)
    count = moe.route_threshold(rho, b0.expand(8)).sum().item()
    assert count == min(max(round(k * 50), 1), 399)


def test_threshold_bias_init_batch_ties_and_validation():
    rho = torch.rand(3, 40, 6, generator=_gen(1), dtype=F64)
    b0 = moe.threshold_bias_init(rho, 2)
    assert b0.shape == (3,)
    for j in range(3):
        assert moe.route_threshold(rho[j], b0[j].expand(6)).sum().item() == 80
    tied = torch.full((4, 2), 0.5, dtype=F64)
    assert moe.threshold_bias_init(tied, 1).item() == -0.5  # no bias splits a tie: selects 0
    # the documented interval (-rho_(m), -rho_(m+1)] of the biases that select m = 2 of 4 scores
    four = torch.tensor([[0.9, 0.7], [0.5, 0.3]], dtype=F64)
    counts = [moe.route_threshold(four, torch.full((2,), b, dtype=F64)).sum().item()
              for b in (-0.7, -0.6, -0.5)]
    assert counts == [1, 2, 2] and moe.threshold_bias_init(four, 1).item() == -0.6
    with pytest.raises(ValueError, match="k must be < n = 6"):
        moe.threshold_bias_init(rho, 6)
    with pytest.raises(ValueError, match="k must be > 0"):
        moe.threshold_bias_init(rho, 0)
    with pytest.raises(ValueError, match="finite"):
        moe.threshold_bias_init(torch.tensor([[math.inf, 0.0]]), 1)


def test_sigmoid_bias_init_closed_form():
    assert abs(moe.sigmoid_bias_init(32, 4) - (-0.7596)) < 5e-5
    assert abs(moe.sigmoid_bias_init(10, 5) + 0.5) < 1e-15  # median: sigma(0) = 1/2
    values = [moe.sigmoid_bias_init(16, k) for k in (1, 2, 4, 8, 15)]
    assert all(a < b for a, b in itertools.pairwise(values)) and -1 < values[0] and values[-1] < 0
    g = _gen(2)
    z = 0.5 + 2.0 * torch.randn(40000, 16, generator=g, dtype=F64)
    empirical = moe.threshold_bias_init(torch.sigmoid(z), 3).item()
    assert abs(empirical - moe.sigmoid_bias_init(16, 3, 0.5, 2.0)) < 3e-3
    with pytest.raises(ValueError, match="k must be < n = 4"):
        moe.sigmoid_bias_init(4, 4)
    with pytest.raises(ValueError, match="std must be > 0"):
        moe.sigmoid_bias_init(4, 1, std=0.0)


def test_balanced_bias_routing_solves_the_assignment_problem():
    from scipy.optimize import linear_sum_assignment

    reached = 0
    for seed in range(8):
        C = torch.rand(12, 12, generator=_gen(seed), dtype=F64)
        res = moe.balance_by_bias(-C, 1, 1e-3, max_steps=4000)
        if res.steps is None:  # the fixed-step sign iteration may cycle
            continue
        reached += 1
        assert (res.mask.sum(0) == 1).all() and (res.mask.sum(1) == 1).all()
        rows, cols = linear_sum_assignment(C.numpy())
        assert abs((C * res.mask).sum().item() - C.numpy()[rows, cols].sum()) < 1e-12
        # the argmin-of-cost form with prices -bias gives the same bijection
        assert torch.equal((C - res.bias).argmin(1), res.mask.long().argmax(1))
    assert reached >= 5


def test_balanced_topk_routing_is_optimal_among_balanced_routings():
    import numpy as np
    from scipy.optimize import linprog

    reached = 0
    for seed in range(4):
        rho = _scores(seed, T=24, n=6)
        res = moe.balance_by_bias(rho, 2, 2e-3, max_steps=3000)
        if res.steps is None:
            continue
        reached += 1
        A = np.zeros((30, 144))
        for t in range(24):
            A[t, t * 6:(t + 1) * 6] = 1
        for i in range(6):
            A[24 + i, i::6] = 1
        lp = linprog(-rho.numpy().ravel(), A_eq=A, b_eq=np.r_[np.full(24, 2), np.full(6, 8)],
                     bounds=(0, 1), method="highs")
        assert abs((rho * res.mask).sum().item() + lp.fun) < 1e-8
        assert (res.mask.sum(0) == 8).all()
    assert reached >= 2


def test_the_posts_sign_in_the_cost_form_does_not_balance():
    C = torch.rand(12, 12, generator=_gen(0), dtype=F64)
    beta = torch.zeros(12, dtype=F64)
    for _ in range(2000):
        load = torch.bincount((C + beta).argmin(1), minlength=12)
        beta = beta - 1e-3 * torch.sign(load - 1).to(F64)  # over-used column made cheaper
    assert load.max() >= 3


def test_balance_by_bias_edge_cases():
    rho = torch.eye(4, dtype=F64)  # already balanced at b = 0
    res = moe.balance_by_bias(rho, 1, 0.1)
    assert res.steps == 0 and torch.equal(res.mask, rho.bool())
    one = moe.balance_by_bias(torch.ones(4, 4, dtype=F64), 1, 0.1, max_steps=0)
    assert one.steps is None and torch.equal(one.bias, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="integer"):
        moe.balance_by_bias(torch.rand(5, 4, dtype=F64), 1, 0.1)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        moe.balance_by_bias(rho, 1, 0.1, bias=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"\(T, n\) matrix"):
        moe.balance_by_bias(torch.rand(2, 4, 4, dtype=F64), 1, 0.1)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 5))
def test_biased_topk_routing_is_optimal_for_its_own_loads(seed, k):
    # the proof of the chapter's theorem: for ANY bias, argtop_k(rho + b) maximises the total
    # score among all routings that give every expert the same number of tokens as it does
    import numpy as np
    from scipy.optimize import linprog

    T, n = 12, 6
    rho = _scores(seed, T=T, n=n)
    mask = moe.route_topk(rho, torch.randn(n, generator=_gen(seed + 7), dtype=F64), k)
    A = np.zeros((T + n, T * n))
    for t in range(T):
        A[t, t * n:(t + 1) * n] = 1
    for i in range(n):
        A[T + i, i::n] = 1
    lp = linprog(-rho.numpy().ravel(), A_eq=A, b_eq=np.r_[np.full(T, k), mask.sum(0).numpy()],
                 bounds=(0, 1), method="highs")
    assert lp.status == 0 and abs((rho * mask).sum().item() + lp.fun) < 1e-9


def test_dynamic_routing_dtypes_and_infinite_scores():
    rho = torch.tensor([[math.inf, -math.inf, 0.3]], dtype=torch.float32)
    b = torch.tensor([-5.0, 5.0, -0.3], dtype=torch.float32)
    assert moe.route_threshold(rho, b).tolist() == [[True, False, False]]
    r32 = torch.full((4,), 0.5, dtype=torch.float32)
    for rule in ("lossfree", "centred", "budget", "cap", "simplified"):
        assert moe.dynamic_k_update(torch.zeros(4), r32, 2, 0.1, rule).dtype == torch.float32
    assert moe.lossfree_update(torch.zeros(4), r32 / 2, 0.1).dtype == torch.float32
    assert moe.load_stats(torch.ones(3, 4, dtype=torch.bool), dtype=F64).rates.dtype == F64
    # m = round(k T) is clipped to [1, n T - 1]: a tiny k still selects one score
    rho = torch.rand(10, 4, generator=_gen(5), dtype=F64)
    b0 = moe.threshold_bias_init(rho, 0.01)
    assert moe.route_threshold(rho, b0.expand(4)).sum().item() == 1


def test_load_stats_of_a_nested_list_by_hand():
    # token 1 picks expert 0, token 2 picks both: rates (1, 1/2), B = 3/2, F = (2/3, 1/3)
    st_ = moe.load_stats([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    assert st_.rates.tolist() == [1.0, 0.5] and st_.budget.item() == 1.5
    torch.testing.assert_close(st_.load, torch.tensor([2 / 3, 1 / 3], dtype=F64))
    assert st_.maxvio.item() == pytest.approx(1 / 3, rel=1e-15)
    assert moe.load_stats([[True, False], [True, True]]).budget.item() == 1.5


def test_more_shape_errors_name_the_arguments():
    with pytest.raises(ValueError, match=r"W_A and W_B must be matrices, got shapes \(2, 4, 6\) "
                                         r"and \(6, 3\)"):
        moe.split_ffn_experts(torch.ones(2, 4, 6), torch.ones(6, 3), 2)
    with pytest.raises(ValueError, match=r"idx must have at least one dimension \(the subset\)"):
        moe.subset_error(torch.ones(4, 3), 2)
    experts = [torch.nn.Identity()] * 3
    with pytest.raises(ValueError, match=r"x and scores must be \(T, d\) and \(T, n\), got "
                                         r"\(2, 2, 4\) and \(2, 2, 3\)"):
        moe.geometric_moe(torch.ones(2, 2, 4), torch.ones(2, 2, 3), experts, 1)


# -- bad inputs (tools/bad_inputs.py): geometric_moe names the argument at fault ---------------

def _gmoe_problem():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 4, generator=g), torch.rand(5, 3, generator=g)


def _take(c):
    return lambda z: z[:, :c]


@pytest.mark.parametrize("experts, err, text", [
    ([1, 2, 3], TypeError, r"experts\[0\] must be callable"),
    ("abc", TypeError, "experts must be a sequence of callables"),
    ([lambda z: torch.ones(1, 2)] * 3, ValueError, r"experts\[0\]'s output must have shape"),
    ([_take(2), _take(3), _take(2)], ValueError, r"experts\[1\]'s output must have shape \(m, 2\)"),
    ([lambda z: z[:, 0]] * 3, ValueError, r"experts\[0\]'s output must have at least 2"),
    ([lambda z: z * math.nan] * 3, ValueError, r"experts\[0\]'s output must be finite"),
])
def test_fuzz_geometric_moe_checks_the_experts(experts, err, text):
    """An expert returning one row for m tokens was broadcast silently (wrong y); other
    mismatches failed inside index_add."""
    x, scores = _gmoe_problem()
    with pytest.raises(err, match=text):
        moe.geometric_moe(x, scores, experts, 2)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_fuzz_geometric_moe_names_a_non_finite_x(bad):
    x, scores = _gmoe_problem()
    x[0, 0] = bad
    with pytest.raises(ValueError, match="^x must be finite"):
        moe.geometric_moe(x, scores, [_take(2)] * 3, 2)


def test_routing_refuses_a_bias_that_does_not_broadcast():
    scores = torch.rand(2, 64, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"scores \(2, 64, 8\) and bias \(2, 8\)"):
        moe.route_topk(scores, torch.zeros(2, 8), 2)
    with pytest.raises(ValueError, match="bias"):
        moe.route_threshold(scores, torch.zeros(2, 8))
    assert moe.route_topk(scores, torch.zeros(2, 1, 8), 2).shape == (2, 64, 8)


# -- referee's findings: rounding and range edge cases ----------------------------------------


def _mask_from_counts(counts, T):
    """A (T, n) top-1 mask whose expert i has counts[i] tokens."""
    mask = torch.zeros(T, len(counts), dtype=torch.bool)
    start = 0
    for i, c in enumerate(counts):
        mask[start:start + c, i] = True
        start += c
    return mask


def test_threshold_bias_init_between_neighbouring_floats_and_near_overflow():
    # rho_(1), rho_(2) neighbouring floats: the midpoint rounds onto rho_(1); -rho_(2) is returned
    s = torch.tensor([[1 + 2**-22, 1 + 2**-23, 0.0]])
    b0 = moe.threshold_bias_init(s, 1.0)
    assert b0.item() == -(1 + 2**-23) and moe.route_threshold(s, b0.expand(3)).sum() == 1
    # a + b would overflow: the midpoint is formed in float64
    h = torch.tensor([[40000.0, 30000.0, 0.0]], dtype=torch.float16)
    assert moe.threshold_bias_init(h, 1.0).item() == -35008.0  # 35000 rounded to float16
    big = moe.threshold_bias_init(torch.tensor([[3e38, 2e38, 0.0]]), 1.0)
    assert big.item() == torch.tensor(-2.5e38).item()
    assert moe.threshold_bias_init(torch.tensor([[1e308, -1e308]], dtype=F64), 0.5).item() == 0
    # sigmoid scores in half precision often have neighbouring rho_(m), rho_(m+1)
    g = _gen(3)
    for dtype in (torch.float16, torch.bfloat16):
        for _ in range(12):
            rho = torch.sigmoid(torch.randn(64, 16, generator=g)).to(dtype)
            b0 = moe.threshold_bias_init(rho, 2)
            assert b0.dtype == dtype
            flat = rho.flatten().sort(descending=True).values
            expect = 128 if flat[127] > flat[128] else (flat > flat[127]).sum().item()
            assert moe.route_threshold(rho, b0.expand(16)).sum().item() == expect


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_lossfree_update_gives_no_step_to_an_exactly_balanced_expert(dtype):
    # n = 10, T = 100: eight experts at exactly 1/n, two off by one token
    st_ = moe.load_stats(_mask_from_counts([10] * 8 + [11, 9], 100), dtype=dtype)
    new = moe.lossfree_update(torch.zeros(10, dtype=dtype), st_.load, 0.01, "sign")
    assert torch.equal(new[:8], torch.zeros(8, dtype=dtype))
    assert new[8] < 0 < new[9]
    for n in (10, 11, 12, 7):  # a perfectly balanced load: no step at all
        load = moe.load_stats(torch.eye(n, dtype=torch.bool), dtype=dtype).load
        for mode in ("sign", "rms", "sgd"):
            step = moe.lossfree_update(torch.zeros(n, dtype=dtype), load, 1.0, mode)
            assert torch.equal(step, torch.zeros(n, dtype=dtype)), (n, mode)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_load_stats_maxvio_is_exactly_zero_for_uniform_loads(dtype):
    for n in (3, 7, 11, 41):
        assert moe.load_stats(torch.zeros(3, n, dtype=torch.bool), dtype=dtype).maxvio == 0
        assert moe.load_stats(torch.eye(n, dtype=torch.bool), dtype=dtype).maxvio == 0
        ones = moe.load_stats(torch.ones(5, n, dtype=torch.bool), dtype=dtype)
        assert ones.maxvio == 0 and ones.budget == n
    # a float16 mask with T > 2048 tokens still counts exactly (its own sum would not)
    big = moe.load_stats(_mask_from_counts([3000, 1000], 4000).half())
    assert big.rates.dtype == torch.float16 and big.rates.tolist() == [0.75, 0.25]
    assert big.maxvio.item() == 0.5
    with pytest.raises(TypeError, match="dtype must be a floating"):
        moe.load_stats(torch.eye(3, dtype=torch.bool), dtype=torch.int64)


def test_balance_by_bias_keeps_a_float32_bias_for_half_scores():
    g = _gen(0)
    s = torch.rand(8, 4, generator=g) * 0.1
    s[:, 0] += 0.5
    # a common offset of 8 changes no routing, but a bfloat16 bias there moves in steps of
    # 2**-4: b - 0.003 would round back to b and the iteration would stall
    offset = torch.full((4,), 8.0)
    ref = moe.balance_by_bias(s, 1, 3e-3, max_steps=400, bias=offset)
    res = moe.balance_by_bias(s.bfloat16(), 1, 3e-3, max_steps=400, bias=offset)
    assert ref.steps is not None and res.steps is not None
    assert res.bias.dtype == torch.float32 and (res.mask.sum(0) == 2).all()
    given = moe.balance_by_bias(s.half(), 1, 0.1, max_steps=0, bias=torch.zeros(4, dtype=F64))
    assert given.bias.dtype == torch.float32


def test_expert_outputs_and_split_refuse_nan():
    W_A, W_B, W_G, x = _ffn(0)
    for i, name in enumerate(("W_A", "W_B", "W_gate", "x")):
        args = [W_A, W_B, W_G, x]
        args[i] = args[i].clone()
        args[i][0, 0] = math.nan
        with pytest.raises(ValueError, match=f"{name} contains NaN"):
            moe.expert_outputs(args[3], args[0], args[1], 3, W_gate=args[2])
    bad = W_A.clone()
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match="W_A contains NaN"):
        moe.split_ffn_experts(bad, W_B, 3)


def test_small_vectors_next_to_large_ones_keep_their_norms():
    V = torch.tensor([[1.0, 0.0], [1e-25, 0.0], [3e-25, 0.0]])
    assert moe.topk_by_norm(V, 2).tolist() == [0, 2]
    tiny = torch.tensor([[1.0, 0.0], [1e-30, 0.0]])
    assert moe.importance_sampling_variance(tiny, torch.tensor([1.0, 0.0])).item() == math.inf
    assert moe.importance_sampling_variance(tiny * torch.tensor([[1.0], [0.0]]),
                                            torch.tensor([1.0, 0.0])).item() == 0


def test_batch_shape_mismatches_raise_value_errors():
    with pytest.raises(ValueError, match="bias .* and load .* do not broadcast"):
        moe.lossfree_update(torch.zeros(2, 4), torch.full((3, 4), 0.25), 0.1)
    with pytest.raises(ValueError, match="bias .* and rates .* do not broadcast"):
        moe.dynamic_k_update(torch.zeros(2, 4), torch.full((3, 4), 0.25), 1.0, 0.1)
    with pytest.raises(ValueError, match="do not broadcast"):
        moe.subset_error(torch.randn(2, 4, 3), torch.tensor([[0, 1], [1, 2], [0, 2]]))


# -- cases found by mutation testing (tools/mutate.py) --------------------------------------

def test_expert_outputs_keep_every_leading_dimension():
    # x is (..., d): a batch of sequences gives the experts of each token, as one token at a time
    W_A, W_B, W_G, _ = _ffn(5)
    x = torch.randn(2, 3, 6, generator=_gen(6), dtype=F64)
    for gate in (None, W_G):
        v = moe.expert_outputs(x, W_A, W_B, 4, W_gate=gate)
        assert v.shape == (2, 3, 4, 5)
        for b, t in itertools.product(range(2), range(3)):
            one = moe.expert_outputs(x[b, t], W_A, W_B, 4, W_gate=gate)
            assert torch.allclose(v[b, t], one, atol=1e-13, rtol=0)


def test_best_subset_default_limit_is_two_to_the_sixteen():
    # the docstring: 2^16 subsets by default, enough for every k at n <= 18
    V = torch.randn(19, 3, generator=_gen(7), dtype=F64)
    idx, err = moe.best_subset(V[:18], 9)  # C(18, 9) = 48620 <= 65536
    assert err.item() == pytest.approx(moe.subset_error(V[:18], idx).item(), abs=1e-12)
    with pytest.raises(ValueError, match="C\\(19, 9\\) = 92378 subsets exceed max_subsets = 65536"):
        moe.best_subset(V, 9)


def test_load_stats_of_a_single_selection_and_maxvio_per_batch():
    one = torch.zeros(3, 4, dtype=torch.bool)
    one[1, 2] = True  # B = 1/3: one selection in all
    st_ = moe.load_stats(one, dtype=F64)
    assert st_.load.tolist() == [0.0, 0.0, 1.0, 0.0] and st_.maxvio.item() == 3.0
    mask = torch.rand(2, 3, 10, 4, generator=_gen(1)) > 0.5
    batch = moe.load_stats(mask, dtype=F64)
    assert batch.maxvio.shape == (2, 3)
    for i, j in itertools.product(range(2), range(3)):
        counts = mask[i, j].double().sum(0)
        assert batch.maxvio[i, j].item() == pytest.approx(4 * counts.max().item()
                                                          / counts.sum().item() - 1, abs=1e-15)


def test_lossfree_rms_step_in_half_precision_with_a_tiny_imbalance():
    # z = F - 1/4 = ±2^-12: z^2 is float16's smallest subnormal and the mean of the squares
    # underflows to 0; dividing by max|z| first keeps the step at RMS 1
    load = torch.tensor([0.25 + 2**-12, 0.25 - 2**-12, 0.25, 0.25], dtype=torch.float16)
    step = -moe.lossfree_update(torch.zeros(4, dtype=torch.float16), load, 1.0, "rms")
    z = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=F64)
    assert torch.allclose(step.double(), z / z.square().mean().sqrt(), atol=2e-3, rtol=0)


def test_dynamic_k_simplified_rule_with_the_budget_met_exactly():
    # B = k: sign(B - k) = 0, so the simplified rule is Loss-Free's step alone
    bias = torch.linspace(-1, 1, 4, dtype=F64)
    for rates in ([0.5, 0.5, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5]):
        rates = torch.tensor(rates, dtype=F64)
        new = moe.dynamic_k_update(bias, rates, 2, 0.1, "simplified", lam=2.0)
        assert torch.equal(new, moe.dynamic_k_update(bias, rates, 2, 0.1, "lossfree"))


def test_geometric_moe_with_one_expert_in_use():
    # k = 1 and every token choosing expert 2: one part, y_t = p_t2 e_2(x_t)
    x, experts, v = _experts(8)
    scores = torch.tensor([0.1, 0.2, 3.0, 0.3], dtype=F64).expand(7, 4).clone()
    y, counts = moe.geometric_moe(x, scores, experts, 1)
    assert counts.tolist() == [0, 0, 7, 0]
    assert torch.allclose(y, 3.0 * v[:, 2] / v[:, 2].norm(dim=-1, keepdim=True), atol=1e-13,
                          rtol=0)
    y1, _ = moe.geometric_moe(x[0], scores[0], experts, 1)
    assert torch.allclose(y1, y[0], atol=1e-14, rtol=0)


def test_importance_sampling_variance_clamped_and_differentiable_at_p_zero():
    # n equal vectors at p = 1/n: the variance is 0, and rounding makes the raw sum negative
    V = torch.randn(1, 4, generator=_gen(0), dtype=F64).expand(3, 4)
    p = torch.full((3,), 1 / 3, dtype=F64)
    raw = (V.square().sum(-1) / p).sum() - V.sum(0).square().sum()
    assert raw < 0 and moe.importance_sampling_variance(V, p).item() == 0.0
    # a zero vector with p_i = 0 adds nothing, and the gradient stays finite there:
    # d/dv_i = 2 v_i / p_i - 2 sum_j v_j (p_i > 0), -2 sum_j v_j (p_i = 0)
    W = torch.randn(4, 3, generator=_gen(1), dtype=F64)
    W[2] = 0
    W.requires_grad_(True)
    q = torch.tensor([0.5, 0.3, 0.0, 0.2], dtype=F64)
    (grad,) = torch.autograd.grad(moe.importance_sampling_variance(W, q), W)
    Wd = W.detach()
    expected = 2 * Wd / torch.where(q > 0, q, 1).unsqueeze(-1) - 2 * Wd.sum(0)
    assert torch.allclose(grad, expected, atol=1e-12, rtol=0)


def test_threshold_bias_init_is_the_midpoint_and_m_is_clipped():
    # scores of both signs: b0 = -(rho_(m) + rho_(m+1)) / 2
    rho = torch.tensor([[2.0, -1.0, -3.0]], dtype=F64)
    assert moe.threshold_bias_init(rho, 1).item() == -0.5
    # k T = 1.9 rounds to m = 2 = n T: clipped to n T - 1 = 1, one selection
    rho = torch.tensor([[0.75, 0.25]], dtype=F64)
    b0 = moe.threshold_bias_init(rho, 1.9)
    assert b0.item() == -0.5 and moe.route_threshold(rho, b0.expand(2)).sum().item() == 1


def test_topk_ties_go_to_the_lower_index_on_long_rows_and_routing_is_batched():
    # on short rows the CPU sort happens to be stable; on long runs of ties it is not
    assert torch.equal(moe.topk_indices(torch.zeros(3, 200), 10),
                       torch.arange(10).expand(3, 10))
    rho = torch.rand(2, 5, 8, generator=_gen(2), dtype=F64)
    b = torch.randn(8, generator=_gen(3), dtype=F64)
    mask = moe.route_topk(rho, b, 3)
    for i in range(2):
        assert torch.equal(mask[i], moe.route_topk(rho[i], b, 3))
    assert (mask.sum(-1) == 3).all()
