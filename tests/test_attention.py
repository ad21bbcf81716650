"""Tests of dlmath.attention: masks, softmax and linear attention matrices, the causal
determinant, the Taylor low-rank bound and the rank-one residual."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import attention as at
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


def _randn(*shape, seed, std=1.0, dtype=F64):
    return std * torch.randn(*shape, generator=generator(seed, "cpu"), dtype=dtype)


def _reference(q, k, visible, scale):
    s = scale * q @ k.transpose(-1, -2)
    return torch.softmax(s.masked_fill(~visible, -math.inf), dim=-1)


# -- masks ---------------------------------------------------------------------------------

def test_masks_small_case():
    assert at.attention_mask("causal", 3).tolist() == [[True, False, False], [True, True, False],
                                                        [True, True, True]]
    assert at.attention_mask("anticausal", 3).tolist() == [[True, True, True], [False, True, True],
                                                            [False, False, True]]
    assert at.attention_mask("prefix", 4, prefix=2).tolist() == [
        [True, True, False, False], [True, True, False, False],
        [True, True, True, False], [True, True, True, True]]
    assert bool(at.attention_mask("bidirectional", 5).all())


@SETTINGS
@given(st.integers(1, 20), st.data())
def test_mask_relations(n, data):
    p = data.draw(st.integers(0, n))
    causal, anti = at.attention_mask("causal", n), at.attention_mask("anticausal", n)
    assert torch.equal(anti, causal.T)
    assert bool((causal | anti).all())
    assert torch.equal(causal & anti, torch.eye(n, dtype=torch.bool))
    pre = at.attention_mask("prefix", n, prefix=p)
    assert bool(pre.diagonal().all())
    assert bool(pre[:p, :p].all()) and not bool(pre[:p, p:].any())
    assert torch.equal(pre[p:, p:], causal[p:, p:])
    assert torch.equal(at.attention_mask("prefix", n, prefix=0), causal)
    assert torch.equal(at.attention_mask("prefix", n, prefix=n),
                       at.attention_mask("bidirectional", n))


def test_mask_errors():
    with pytest.raises(ValueError, match="kind"):
        at.attention_mask("diagonal", 3)
    with pytest.raises(ValueError, match="n must be >= 1"):
        at.attention_mask("causal", 0)
    with pytest.raises(TypeError, match="n must be an int"):
        at.attention_mask("causal", 3.0)
    with pytest.raises(ValueError, match="prefix must be <= 3"):
        at.attention_mask("prefix", 3, prefix=4)
    with pytest.raises(ValueError, match="only used with kind='prefix'"):
        at.attention_mask("causal", 3, prefix=1)


# -- softmax attention -----------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 12), st.integers(1, 12), st.integers(1, 6),
       st.sampled_from([None, "causal", "anticausal", "prefix", "random"]))
def test_attention_matches_reference(seed, n, m, d, kind):
    q, k = _randn(2, n, d, seed=seed), _randn(2, m, d, seed=seed + 1)
    if kind in ("causal", "anticausal"):
        k = k[:, :n] if m >= n else _randn(2, n, d, seed=seed + 2)
        m = n
    if kind == "prefix":
        k, m = _randn(2, n, d, seed=seed + 2), n
        mask = at.attention_mask("prefix", n, prefix=n // 2)
    elif kind == "random":
        mask = torch.rand(n, m, generator=generator(seed, "cpu")) < 0.6
        mask[:, 0] = True
    else:
        mask = kind
    A = at.attention_matrix(q, k, mask)
    visible = (torch.ones(n, m, dtype=torch.bool) if mask is None
               else at.attention_mask(mask, n) if isinstance(mask, str) else mask)
    assert torch.allclose(A, _reference(q, k, visible, 1 / math.sqrt(d)), atol=1e-14, rtol=0)
    assert torch.allclose(A.sum(-1), torch.ones(2, n, dtype=F64), atol=1e-13)
    assert bool((A[..., ~visible] == 0).all())


def test_attention_agrees_with_sdpa():
    q, k, v = _randn(3, 9, 4, seed=0), _randn(3, 9, 4, seed=1), _randn(3, 9, 5, seed=2)
    for causal in (False, True):
        ours = at.attention_matrix(q, k, "causal" if causal else None) @ v
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert torch.allclose(ours, ref, atol=1e-12)


def test_huge_logits_stay_finite_and_sharp():
    q = torch.tensor([[1e4], [-1e4], [0.0]], dtype=F64)
    k = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
    for mask in (None, "causal", "anticausal"):
        A = at.attention_matrix(q, k, mask, scale=1.0)
        assert bool(torch.isfinite(A).all())
        assert torch.allclose(A.sum(-1), torch.ones(3, dtype=F64))
    A = at.attention_matrix(q, k, scale=1.0)
    assert torch.equal(A[0], torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    assert torch.equal(A[1], torch.tensor([1.0, 0.0, 0.0], dtype=F64))


def test_ties_give_uniform_rows_and_fully_masked_rows_give_zeros():
    q, k = torch.zeros(4, 2, dtype=F64), torch.zeros(4, 2, dtype=F64)
    assert torch.allclose(at.attention_matrix(q, k), torch.full((4, 4), 0.25, dtype=F64))
    causal = at.attention_matrix(q, k, "causal")
    assert torch.allclose(causal.sum(-1), torch.ones(4, dtype=F64))
    assert torch.allclose(torch.diagonal(causal), 1 / torch.arange(1.0, 5.0, dtype=F64))
    mask = torch.tensor([[True, False], [False, False]])
    A = at.attention_matrix(torch.ones(2, 1), torch.ones(2, 1), mask)
    assert torch.equal(A, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_dtype_device_and_scale():
    q, k = _randn(5, 3, seed=0, dtype=torch.float32), _randn(5, 3, seed=1, dtype=torch.float32)
    A = at.attention_matrix(q, k, "causal")
    assert A.dtype == torch.float32 and A.device == q.device
    assert at.attention_matrix(q, k.double()).dtype == F64
    assert torch.allclose(at.attention_matrix(q, k, scale=0.0), torch.full((5, 5), 0.2))
    assert torch.allclose(at.attention_matrix(q, k, scale=2.0),
                          at.attention_matrix(2 * q, k, scale=1.0), atol=1e-6)


def test_attention_errors():
    q = torch.ones(3, 2)
    with pytest.raises(ValueError, match="q must be finite"):
        at.attention_matrix(torch.tensor([[math.nan, 0.0]]), q)
    with pytest.raises(ValueError, match="k must be finite"):
        at.attention_matrix(q, torch.full((3, 2), math.inf))
    with pytest.raises(TypeError, match="q must have a floating dtype"):
        at.attention_matrix(torch.ones(3, 2, dtype=torch.int64), q)
    with pytest.raises(ValueError, match="same feature size"):
        at.attention_matrix(q, torch.ones(3, 4))
    with pytest.raises(ValueError, match="at least 2 dimension"):
        at.attention_matrix(torch.ones(3), q)
    with pytest.raises(ValueError, match="as many queries as keys"):
        at.attention_matrix(q, torch.ones(4, 2), "causal")
    with pytest.raises(ValueError, match="mask must be one of"):
        at.attention_matrix(q, q, "prefix")
    with pytest.raises(TypeError, match="boolean tensor"):
        at.attention_matrix(q, q, torch.ones(3, 3))
    with pytest.raises(ValueError, match="mask must end in the shape"):
        at.attention_matrix(q, q, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="scale must be a real number"):
        at.attention_matrix(q, q, scale="big")


@pytest.mark.parametrize("fn", [at.attention_matrix, at.linear_attention_matrix])
def test_mask_whose_batch_dimensions_do_not_broadcast_is_named(fn):
    q = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0))
    for shape in ((2, 3, 3), (5, 4, 3, 3)):      # (2,) vs (4,); would grow the batch (4,)
        with pytest.raises(ValueError, match=r"mask of shape .* does not broadcast"):
            fn(q, q, torch.ones(shape, dtype=torch.bool))
    ok = fn(q, q, torch.ones(1, 3, 3, dtype=torch.bool))   # broadcasts: the unmasked weights
    assert torch.allclose(ok, fn(q, q))


# -- the causal determinant and the prefix corollary -------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 40), st.integers(1, 8), st.floats(0.05, 0.6))
def test_causal_determinant_is_product_of_positive_diagonal(seed, n, d, std):
    q, k = _randn(n, d, seed=seed, std=std), _randn(n, d, seed=seed + 1, std=std)
    rho = float((q @ k.T).abs().max()) / math.sqrt(d)
    for A in (at.attention_matrix(q, k, "causal"), at.linear_attention_matrix(q, k, "causal")):
        assert bool((torch.triu(A, 1) == 0).all())
        sign, logdet = torch.linalg.slogdet(A)
        diag = torch.diagonal(A)
        assert float(sign) == 1.0 and bool((diag > 0).all())
        assert abs(float(logdet - diag.log().sum())) < 1e-9
    diag = torch.diagonal(at.attention_matrix(q, k, "causal"))
    i = torch.arange(1, n + 1, dtype=F64)
    sharp = 1 / (1 + (i - 1) * math.exp(2 * rho))
    assert bool((diag >= sharp * (1 - 1e-12)).all())
    assert bool((sharp * i * math.exp(2 * rho) >= 1 - 1e-12).all())


@pytest.mark.parametrize("rho", [0.1, 1.0, 5.0])
def test_causal_diagonal_bound_is_attained(rho):
    # s_ii = -rho, s_ij = +rho for j < i (K = I, Q = S): a_ii = 1 / (1 + (i-1) e^(2 rho)) exactly
    n = 30
    S = rho * (torch.ones(n, n, dtype=F64) - 2 * torch.eye(n, dtype=F64))
    A = at.attention_matrix(S, torch.eye(n, dtype=F64), "causal", scale=1.0)
    i = torch.arange(1, n + 1, dtype=F64)
    assert torch.allclose(torch.diagonal(A), 1 / (1 + (i - 1) * math.exp(2 * rho)), rtol=1e-13,
                          atol=0)
    sign, logdet = torch.linalg.slogdet(A)
    gap = float(logdet) + 2 * rho * (n - 1) + math.lgamma(n + 1)   # log(det / bound)
    assert float(sign) == 1.0 and 0 <= gap < math.log(n)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 30), st.data())
def test_prefix_rank_is_input_rank_plus_output_length(seed, n, data):
    p = data.draw(st.integers(1, n))
    q, k = _randn(n, 4, seed=seed, std=0.5), _randn(n, 4, seed=seed + 1, std=0.5)
    k[:p] = k[0]                                   # input block of rank one
    A = at.attention_matrix(q, k, at.attention_mask("prefix", n, prefix=p))
    assert int(torch.linalg.matrix_rank(A)) == 1 + n - p


def test_equal_keys_bidirectional_rank_one_causal_full_rank():
    n = 20
    q, k = _randn(n, 3, seed=0), _randn(1, 3, seed=1).expand(n, 3)
    assert int(torch.linalg.matrix_rank(at.attention_matrix(q, k))) == 1
    A = at.attention_matrix(q, k, "causal")
    assert abs(float(torch.linalg.slogdet(A).logabsdet) + math.lgamma(n + 1)) < 1e-10


# -- linear attention ------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(10, 40), st.integers(1, 6))
def test_linear_attention_rank_and_rows(seed, n, d):
    q, k = _randn(n, d, seed=seed), _randn(n, d, seed=seed + 1)
    A = at.linear_attention_matrix(q, k)
    assert int(torch.linalg.matrix_rank(A)) <= d
    assert torch.allclose(A.sum(-1), torch.ones(n, dtype=F64), atol=1e-13)
    phi = F.elu(q) + 1, F.elu(k) + 1
    ref = phi[0] @ phi[1].T
    assert torch.allclose(A, ref / ref.sum(-1, keepdim=True), atol=1e-14)
    assert int(torch.linalg.matrix_rank(at.linear_attention_matrix(q, k, "causal"))) == n


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 15), st.integers(1, 5),
       st.sampled_from(["causal", "anticausal", "prefix", "random"]))
def test_masked_linear_attention_matches_reference(seed, n, d, kind):
    q, k = _randn(3, n, d, seed=seed), _randn(3, n, d, seed=seed + 1)
    if kind == "prefix":
        mask = at.attention_mask("prefix", n, prefix=n // 2)
    elif kind == "random":
        mask = torch.rand(n, n, generator=generator(seed, "cpu")) < 0.5
        mask[:, -1] = True
    else:
        mask = kind
    visible = at.attention_mask(mask, n) if isinstance(mask, str) else mask
    w = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2) * visible
    A = at.linear_attention_matrix(q, k, mask)
    assert torch.allclose(A, w / w.sum(-1, keepdim=True), atol=1e-14, rtol=0)
    assert torch.allclose(A.sum(-1), torch.ones(3, n, dtype=F64), atol=1e-13)


def test_linear_attention_feature_map_and_errors():
    q = _randn(6, 2, seed=0)
    A = at.linear_attention_matrix(q, q, feature=torch.exp)
    ref = torch.exp(q) @ torch.exp(q).T
    assert torch.allclose(A, ref / ref.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="strictly positive"):
        at.linear_attention_matrix(q, q, feature=lambda x: x)
    with pytest.raises(TypeError, match="callable"):
        at.linear_attention_matrix(q, q, feature="elu")


# -- the Taylor low-rank bound ---------------------------------------------------------------

def test_taylor_rank_bound_values():
    assert at.taylor_rank_bound(1.0, 2, 12) == (91, pytest.approx(math.exp(2) / math.factorial(13)))
    assert at.taylor_rank_bound(0.0, 5, 3) == (56, 0.0)
    r, eps = at.taylor_rank_bound(1e3, 3, 2)          # huge rho: capped, never inf
    assert r == 10 and math.isfinite(eps) and eps > 1e300
    assert sum(math.comb(m + 6, m) for m in range(5)) == at.taylor_rank_bound(0.5, 7, 4)[0]


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 4), st.integers(30, 120), st.floats(0.2, 1.5))
def test_taylor_bound_holds(seed, d, n, std):
    q, k = _randn(n, d, seed=seed, std=std), _randn(n, d, seed=seed + 1, std=std)
    rho = float((q @ k.T).abs().max())
    s = torch.linalg.svdvals(at.attention_matrix(q, k, scale=1.0))
    assert float(s[0]) >= 1 - 1e-12
    for p in range(12):
        r, eps = at.taylor_rank_bound(rho, d, p)
        if r < n:
            assert float(s[r] / s[0]) <= eps * (1 + 1e-9) + 1e-15


@pytest.mark.parametrize("rho", [1e-4, 0.3, 1.0, 4.0])
def test_taylor_bound_is_sharp_at_p0(rho):
    # d = 1, balanced signs: A = 11^T/n + tanh(rho) xy^T/n, so sigma_2/sigma_1 = tanh(rho)
    n = 40
    x = torch.tensor([1.0, -1.0] * (n // 2), dtype=F64)[:, None]
    y = torch.tensor([1.0, 1.0, -1.0, -1.0] * (n // 4), dtype=F64)[:, None]
    s = torch.linalg.svdvals(at.attention_matrix(rho**0.5 * x, rho**0.5 * y, scale=1.0))
    r, eps = at.taylor_rank_bound(rho, 1, 0)
    assert r == 1 and abs(float(s[1] / s[0]) - math.tanh(rho)) < 1e-13
    assert float(s[1] / s[0]) <= eps
    if rho < 1e-3:
        assert float(s[1] / s[0]) / eps > 0.999


def test_taylor_bound_survives_gradient_ascent():
    # maximise sigma_(r+1)/sigma_1 with max |s_ij| pinned at rho; the bound must still hold
    rho, n, worst = 1.0, 10, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # 10 x 10 matrices: extra threads only add overhead
    try:
        _ascend(rho, n, worst)
    finally:
        torch.set_num_threads(threads)
    assert worst[1, 0] > 0.05          # the ascent did find a bad case (0.1 of the bound)


def _ascend(rho, n, worst):
    for d, p in [(1, 0), (2, 1)]:
        r, eps = at.taylor_rank_bound(rho, d, p)
        g = generator(d, "cpu")
        q, k = (torch.randn(n, d, generator=g, dtype=F64).requires_grad_() for _ in "qk")
        opt = torch.optim.Adam([q, k], lr=0.05)
        for _ in range(60):
            S = q @ k.T
            s = torch.linalg.svdvals(at.attention_matrix(rho * S / S.abs().max(),
                                                         torch.eye(n, dtype=F64), scale=1.0))
            ratio = s[r] / s[0]
            assert float(ratio.detach()) <= eps
            opt.zero_grad()
            (-torch.log(ratio)).backward()
            opt.step()
        worst[d, p] = float(ratio.detach()) / eps


def test_taylor_bound_errors():
    with pytest.raises(ValueError, match="rho must be >= 0"):
        at.taylor_rank_bound(-1.0, 2, 1)
    with pytest.raises(ValueError, match="d must be >= 1"):
        at.taylor_rank_bound(1.0, 0, 1)
    with pytest.raises(TypeError, match="p must be an int"):
        at.taylor_rank_bound(1.0, 2, 1.5)
    with pytest.raises(ValueError, match="rho must be finite"):
        at.taylor_rank_bound(math.inf, 2, 1)


def test_empty_inputs_are_rejected():
    with pytest.raises(ValueError, match="q must not be empty"):
        at.attention_matrix(torch.zeros(0, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="k must not be empty"):
        at.linear_attention_matrix(torch.zeros(4, 3), torch.zeros(0, 3))
    assert float(at.rank_one_residual(torch.randn(1, 4, dtype=F64))) == 0.0   # one token


# -- the rank-one residual -------------------------------------------------------------------

def test_rank_one_residual():
    x = _randn(2, 7, 3, seed=0)
    centred = x - x.mean(-2, keepdim=True)
    ref = torch.linalg.matrix_norm(centred) / torch.linalg.matrix_norm(x)
    assert torch.allclose(at.rank_one_residual(x), ref, atol=1e-15)
    assert at.rank_one_residual(x).shape == (2,)
    equal_rows = _randn(1, 4, seed=1).expand(6, 4)
    assert float(at.rank_one_residual(equal_rows)) < 1e-15
    assert float(at.rank_one_residual(torch.zeros(3, 3))) == 0.0
    # one non-zero entry (its norm is exactly 1 after scaling): the mean row is e_j c / n, so
    # the residual is sqrt(1 - 1/n) whatever the entry's value
    for n, c in ((2, 1.0), (5, -3.5), (4, 1e-200)):
        one = torch.zeros(n, 3, dtype=F64)
        one[1, 2] = c
        assert float(at.rank_one_residual(one)) == pytest.approx(math.sqrt(1 - 1 / n), rel=1e-15)
    assert torch.allclose(at.rank_one_residual(1e300 * x), at.rank_one_residual(x), atol=1e-14)
    assert torch.allclose(at.rank_one_residual(1e-300 * x), at.rank_one_residual(x), atol=1e-14)
    with pytest.raises(ValueError, match="x must be finite"):
        at.rank_one_residual(torch.full((2, 2), math.nan))
    with pytest.raises(ValueError, match="at least 2 dimension"):
        at.rank_one_residual(torch.ones(3))


# -- precision limits ------------------------------------------------------------------------

def test_half_precision_logits_beyond_65504_stay_finite():
    """q k^T = 90000 overflows float16; the library computes in float32, as a float64
    reference confirms, and returns the input dtype."""
    q = torch.tensor([[300.0], [1.0], [-2.0]])
    k = torch.tensor([[300.0], [-300.0], [0.5]])
    for dtype in (torch.float16, torch.bfloat16):
        for mask in (None, "causal", "anticausal"):
            A = at.attention_matrix(q.to(dtype), k.to(dtype), mask, scale=1.0)
            ref = at.attention_matrix(q.to(dtype).double(), k.to(dtype).double(), mask,
                                      scale=1.0)
            assert A.dtype == dtype and bool(torch.isfinite(A).all())
            assert torch.allclose(A.double(), ref, atol=1e-2, rtol=0)
        lin = at.linear_attention_matrix(torch.full((3, 2), 200.0, dtype=dtype),
                                         torch.full((3, 2), 200.0, dtype=dtype))
        assert lin.dtype == dtype and torch.allclose(lin.double(),
                                                     torch.full((3, 3), 1 / 3, dtype=F64),
                                                     atol=1e-2)


def test_overflowing_logits_raise():
    q, k = torch.tensor([[1e20], [1.0]]), torch.tensor([[1e20], [-1e20]])
    with pytest.raises(ValueError, match="logits .* overflow"):
        at.attention_matrix(q, k, scale=1.0)
    with pytest.raises(ValueError, match="logits .* overflow"):
        at.attention_matrix(q, k, "causal", scale=1.0)
    with pytest.raises(ValueError, match="overflow"):
        at.linear_attention_matrix(q, q)
    with pytest.raises(ValueError, match="underflows"):              # e^(-1e20) = 0
        at.linear_attention_matrix(q, k)


def test_default_feature_map_is_elu_plus_one_and_stays_positive():
    x = torch.linspace(-30, 30, 601, dtype=F64)
    assert torch.allclose(at._elu1(x), F.elu(x) + 1, atol=1e-15, rtol=0)
    x32 = torch.tensor([-30.0, -80.0])                 # F.elu(x) + 1 rounds to 0 here
    assert float((F.elu(x32) + 1).max()) == 0.0
    assert torch.equal(at._elu1(x32), torch.exp(x32)) and bool((at._elu1(x32) > 0).all())
    A = at.linear_attention_matrix(torch.full((4, 2), -30.0), _randn(4, 2, seed=3).float())
    assert torch.allclose(A.sum(-1), torch.ones(4), atol=1e-6)
    # gradients stay finite where e^x would overflow in the branch not taken
    x = torch.tensor([-5.0, 0.0, 100.0], dtype=torch.float32, requires_grad=True)
    at._elu1(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([math.exp(-5.0), 1.0, 1.0], dtype=torch.float32))


@pytest.mark.parametrize("rho", [0.3, 2.0])
def test_anticausal_diagonal_bound_is_attained(rho):
    # the mirror image of the causal bound: row i sees n - i + 1 keys (i from 1), so
    # a_ii >= 1 / (1 + (n - i) e^(2 rho)), with equality at s_ii = -rho, s_ij = +rho (j > i)
    n = 25
    S = rho * (torch.ones(n, n, dtype=F64) - 2 * torch.eye(n, dtype=F64))
    A = at.attention_matrix(S, torch.eye(n, dtype=F64), "anticausal", scale=1.0)
    i = torch.arange(1, n + 1, dtype=F64)
    assert bool((torch.tril(A, -1) == 0).all())
    assert torch.allclose(torch.diagonal(A), 1 / (1 + (n - i) * math.exp(2 * rho)), rtol=1e-13,
                          atol=0)


def test_linear_attention_fully_masked_rows_give_zeros():
    mask = torch.tensor([[True, False], [False, False]])
    A = at.linear_attention_matrix(torch.ones(2, 1, dtype=F64), torch.ones(2, 1, dtype=F64), mask)
    assert torch.equal(A, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64))
