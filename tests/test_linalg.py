"""Tests of dlmath.linalg: spectral norm, its gradient, power iteration, effective ranks."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import linalg
from dlmath.device import generator

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return generator(seed, "cpu")


def orthonormal(n, k, g, dtype=F64):
    q, _ = torch.linalg.qr(torch.randn(n, k, dtype=dtype, generator=g))
    return q


def planted(spectrum, n, m, seed=0, dtype=F64):
    """U diag(spectrum) V^T with Haar-like U (n x r), V (m x r)."""
    g = gen(seed)
    s = torch.as_tensor(spectrum, dtype=dtype)
    r = s.numel()
    return orthonormal(n, r, g, dtype) @ torch.diag(s) @ orthonormal(m, r, g, dtype).T


def random_spectrum_matrix(seed, n, m, rank, decay):
    """A rank-`rank` n x m matrix with singular values u^decay, u ~ U(0, 1)."""
    g = gen(seed)
    s = torch.rand(rank, dtype=F64, generator=g) ** decay + 1e-3
    return planted(s, n, m, seed + 1)


# --------------------------------------------------------------------------- spectral norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectral_norm_matches_torch(dtype):
    W = torch.randn(3, 6, 4, dtype=dtype, generator=gen(1))
    got = linalg.spectral_norm(W)
    assert got.shape == (3,) and got.dtype == dtype
    torch.testing.assert_close(got, torch.linalg.matrix_norm(W, 2))


def test_power_iteration_matches_svd_on_planted_gap():
    W = torch.stack([planted([3.0, 1.5, 1.0, 0.2], 9, 6, seed=s) for s in range(4)])
    sigma, u, v = linalg.power_iteration(W, iters=60, generator=gen(0))
    U, S, Vh = torch.linalg.svd(W)
    torch.testing.assert_close(sigma, S[..., 0], rtol=1e-12, atol=0)
    # singular vectors up to sign: compare the rank-one outer products
    torch.testing.assert_close(u.unsqueeze(-1) * v.unsqueeze(-2),
                               U[..., :, :1] @ Vh[..., :1, :], rtol=0, atol=1e-12)
    torch.testing.assert_close(linalg.spectral_norm(W, "power", iters=60), S[..., 0])
    assert torch.allclose(torch.linalg.vector_norm(v, dim=-1), torch.ones(4, dtype=F64))


def test_power_iteration_rate_is_ratio_squared():
    rho = 0.8
    W = planted([rho**i for i in range(6)], 10, 6, seed=3)
    v1 = torch.linalg.svd(W).Vh[0]
    errs = []
    for t in range(5, 31, 5):
        v = linalg.power_iteration(W, t, generator=gen(7))[2]
        errs.append(min((v - v1).norm(), (v + v1).norm()).item())
    ratios = [(b / a) ** (1 / 5) for a, b in itertools.pairwise(errs)]
    assert all(abs(r - rho**2) < 0.01 for r in ratios[1:]), ratios


def test_power_iteration_warm_start_and_lower_bound():
    W = planted([2.0, 1.0, 0.5], 5, 4, seed=2)
    v1 = torch.linalg.svd(W).Vh[0]
    sigma, _, v = linalg.power_iteration(W, 1, v0=v1)
    assert abs(sigma.item() - 2.0) < 1e-13 and abs(abs(v @ v1).item() - 1) < 1e-13
    # from any start and any number of steps the estimate never exceeds sigma_1
    for t in range(6):
        assert linalg.power_iteration(W, t, generator=gen(t))[0] <= 2.0 + 1e-13


def test_power_iteration_ones_start_fails_when_v1_orthogonal_to_ones():
    # v1 = (1, -1)/sqrt2 is orthogonal to the ones vector: the documented failure of the
    # deterministic start; a Gaussian start finds sigma_1.
    V = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=F64) / math.sqrt(2)
    W = torch.diag(torch.tensor([3.0, 1.0], dtype=F64)) @ V
    assert abs(linalg.power_iteration(W, 50)[0].item() - 1.0) < 1e-12
    assert abs(linalg.power_iteration(W, 50, generator=gen(0))[0].item() - 3.0) < 1e-12


def test_power_iteration_zero_matrix_and_null_start():
    sigma, u, v = linalg.power_iteration(torch.zeros(4, 3), 5)
    assert sigma.item() == 0 and (u == 0).all() and torch.isfinite(v).all()
    W = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    sigma, _, v = linalg.power_iteration(W, 3, v0=torch.tensor([0.0, 1.0]))
    assert sigma.item() == 0 and torch.equal(v, torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("dtype, scales", [
    (torch.float32, [1e-30, 1e-12, 1e10, 1e15, 1e25]),  # 1e10: the plain steps overflowed to 0
    (F64, [1e-200, 1e-160, 1e100, 1e160, 1e200]),
])
def test_power_iteration_far_from_unit_scale(dtype, scales):
    # a step squares the scale twice (||W^T W x||): out of range it used to return 0, NaN or
    # the unmoved start vector; such slices are now redone on W / max|W|
    W = planted([3.0, 1.0, 0.5], 7, 5, seed=22)
    want = linalg.power_iteration(W, 30)
    batch = torch.stack([W.to(dtype) * c for c in scales] + [torch.zeros(7, 5, dtype=dtype)])
    sigma, u, v = linalg.power_iteration(batch, 30)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for i, c in enumerate(scales):
        assert abs(sigma[i].item() / (c * want[0].item()) - 1) < tol, (c, sigma[i].item())
        torch.testing.assert_close(torch.outer(u[i], v[i]).double(),
                                   torch.outer(want[1], want[2]), rtol=0, atol=10 * tol)
    assert sigma[-1] == 0 and (u[-1] == 0).all()
    # unbatched, and through spectral_norm(method="power")
    assert abs(linalg.spectral_norm(W.to(dtype) * scales[-1], "power", iters=30).item()
               / (scales[-1] * want[0].item()) - 1) < tol


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e10), (torch.float32, 1e25),
                                          (F64, 1e-200), (F64, 1e200)])
def test_power_iteration_class_far_from_unit_scale(dtype, scale):
    # float32 sigma_1 = 3e10 used to return sigma = 0 (and keep v = 0 for every later call)
    W = planted([3.0, 1.0, 0.5], 7, 5, seed=23).to(dtype) * scale
    tracker = linalg.PowerIteration(generator=gen(0))
    exact = torch.linalg.svdvals(W.double())[0].item()
    for _ in range(3):
        sigma, u, v = tracker(W)
        assert abs(sigma.item() / exact - 1) < 1e-5
        assert abs(torch.linalg.vector_norm(v).item() - 1) < 1e-5
    # 3e10: the steps stay in range, since norms are taken after scaling where the squares
    # would overflow; further out the cold start over- or underflows and is redone exactly
    assert (tracker.fallbacks >= 1) == (scale != 1e10)


def test_power_iteration_half_precision_keeps_dtype():
    W = planted([4.0, 1.0, 0.5], 6, 5, seed=4).to(torch.bfloat16)
    sigma, u, v = linalg.power_iteration(W, 30)
    assert sigma.dtype == u.dtype == v.dtype == torch.bfloat16
    assert abs(sigma.float().item() - 4.0) < 0.05


# --------------------------------------------------------------------------- gradient


class _TopSingularValue(torch.autograd.Function):
    """sigma_1 with the hand-derived backward u1 v1^T, for gradcheck."""

    @staticmethod
    def forward(ctx, W):
        ctx.save_for_backward(W)
        return torch.linalg.svdvals(W)[..., 0]

    @staticmethod
    def backward(ctx, grad):
        (W,) = ctx.saved_tensors
        return grad[..., None, None] * linalg.spectral_norm_grad(W)


def test_spectral_norm_grad_gradcheck_planted_gap():
    W = torch.stack([planted([2.0, 1.0, 0.7, 0.1], 6, 4, seed=s) for s in range(2)])
    assert torch.autograd.gradcheck(_TopSingularValue.apply, (W.clone().requires_grad_(),))


def test_spectral_norm_grad_matches_autograd_and_cheap_form():
    W = planted([5.0, 2.0, 1.0, 0.5, 0.1], 8, 5, seed=5) + 0 * torch.eye(8, 5, dtype=F64)
    Wr = W.clone().requires_grad_()
    (g,) = torch.autograd.grad(torch.linalg.matrix_norm(Wr, 2), Wr)
    G = linalg.spectral_norm_grad(W)
    torch.testing.assert_close(G, g, rtol=0, atol=1e-12)
    _, _, v = linalg.power_iteration(W, 40, generator=gen(0))
    torch.testing.assert_close(linalg.spectral_norm_grad(W, v=v), G, rtol=0, atol=1e-12)
    # the cheap identity W v1 v1^T = sigma1 u1 v1^T (R3)
    torch.testing.assert_close(W @ torch.outer(v, v), 5.0 * G, rtol=0, atol=1e-12)
    # wide matrices and float32
    Wt = W.T.float()
    torch.testing.assert_close(linalg.spectral_norm_grad(Wt), G.T.float(), rtol=0, atol=1e-5)


def _one_sided(W, D, h=1e-7):
    return ((torch.linalg.matrix_norm(W + h * D, 2) - torch.linalg.matrix_norm(W, 2)) / h).item()


def test_spectral_norm_grad_repeated_top_is_min_norm_subgradient():
    W = planted([2.0, 2.0, 1.0], 5, 4, seed=6)
    G = linalg.spectral_norm_grad(W)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    assert abs(S[0] - S[1]) < 1e-14  # the tie is there
    # the value: U_2 V_2^T / 2, of Frobenius norm 1/sqrt(2)
    torch.testing.assert_close(G, U[:, :2] @ Vh[:2] / 2, rtol=0, atol=1e-12)
    assert abs(G.norm().item() - 1 / math.sqrt(2)) < 1e-12
    g = gen(8)
    gaps = []
    for _ in range(20):
        D = torch.randn(5, 4, dtype=F64, generator=g)
        M = U[:, :2].T @ D @ Vh[:2].T
        up = torch.linalg.eigvalsh((M + M.T) / 2)[-1].item()
        down = torch.linalg.eigvalsh(-(M + M.T) / 2)[-1].item()
        # one-sided derivatives are lambda_max(+-sym(U2^T D V2)): not linear in D
        assert abs(_one_sided(W, D) - up) < 1e-5 and abs(_one_sided(W, -D) - down) < 1e-5
        gaps.append(up + down)
        # G is a subgradient: <G, D> <= f'(W; D)
        assert (G * D).sum().item() <= up + 1e-12
    assert max(gaps) > 1e-3  # f'(W; D) + f'(W; -D) > 0: no gradient


def test_spectral_norm_grad_square_identity_and_zero():
    torch.testing.assert_close(linalg.spectral_norm_grad(torch.eye(4, dtype=F64)),
                               torch.eye(4, dtype=F64) / 4)
    Z = linalg.spectral_norm_grad(torch.zeros(2, 3, 4))
    assert Z.shape == (2, 3, 4) and (Z == 0).all()
    # a tie looser than rtol is treated as simple
    W = torch.diag(torch.tensor([1.0, 1.0 - 1e-6], dtype=F64))
    torch.testing.assert_close(linalg.spectral_norm_grad(W), torch.diag(torch.tensor(
        [1.0, 0.0], dtype=F64)))
    torch.testing.assert_close(linalg.spectral_norm_grad(W, rtol=1e-5), torch.eye(2, dtype=F64)
                               / 2)


def test_spectral_norm_grad_tie_at_rounding_level():
    # a gap of 1e-15 relative is SVD rounding: the default rtol (10 max(n, m) eps) counts it as
    # a tie; rtol = 0 does not
    W = torch.diag(torch.tensor([1.0, 1.0 - 1e-15, 0.5], dtype=F64))
    torch.testing.assert_close(linalg.spectral_norm_grad(W),
                               torch.diag(torch.tensor([0.5, 0.5, 0.0], dtype=F64)))
    torch.testing.assert_close(linalg.spectral_norm_grad(W, rtol=0.0),
                               torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=F64)))


def test_nuclear_norm_matches_torch():
    W = torch.randn(2, 5, 7, generator=gen(9), dtype=F64)
    torch.testing.assert_close(linalg.nuclear_norm(W), torch.linalg.matrix_norm(W, "nuc"))


# --------------------------------------------------------------------------- effective rank


def direct(s, kind, eps=None, gamma=1.0, alpha=None):
    """The definitions written out from a sorted vector of singular values, one by one."""
    s = [float(x) for x in s]
    s1, n = s[0], len(s)
    if kind == "threshold":
        return max([i + 1 for i in range(n) if s[i] / s1 > eps], default=0)
    if kind == "energy":
        tot = sum(x * x for x in s)
        return min(r for r in range(1, n + 1) if math.sqrt(sum(x * x for x in s[:r]) / tot)
                   >= 1 - eps)
    if kind == "intrinsic":
        return sum(s) / s1
    if kind == "stable":
        return sum(x * x for x in s) / s1**2
    if kind == "nuc_fro":
        return sum(s) ** 2 / sum(x * x for x in s)
    p = [x**gamma / sum(y**gamma for y in s) for x in s]
    if kind == "entropy":
        return math.exp(-sum(q * math.log(q) for q in p if q > 0))
    if kind == "renyi":
        return math.exp(math.log(sum(q**alpha for q in p)) / (1 - alpha))
    if kind == "normalized_entropy":
        return -sum(q * math.log(q) for q in p if q > 0) / math.log(n)
    raise AssertionError(kind)


CASES = [
    ("threshold", dict(eps=0.3)), ("energy", dict(eps=0.05)), ("intrinsic", {}),
    ("stable", {}), ("nuc_fro", {}), ("entropy", {}), ("entropy", dict(gamma=2.0)),
    ("renyi", dict(alpha=0.5)), ("renyi", dict(alpha=3.0, gamma=2.0)),
    ("normalized_entropy", {}),
]


@pytest.mark.parametrize("kind,kw", CASES)
def test_effective_rank_matches_direct_formula(kind, kw):
    M = torch.randn(3, 9, 6, dtype=F64, generator=gen(10)) * torch.tensor([1.0, 0.1, 3.0],
                                                                           dtype=F64)[:, None,
                                                                                      None]
    got = linalg.effective_rank(M, kind, **kw)
    assert got.shape == (3,)
    s = torch.linalg.svdvals(M)
    gamma = kw.get("gamma", 2.0 if kind == "normalized_entropy" else 1.0)
    want = [direct(row, kind, eps=kw.get("eps"), gamma=gamma, alpha=kw.get("alpha"))
            for row in s]
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-12, atol=0)
    # the same from the singular values, in any order
    shuffled = s[:, torch.randperm(6, generator=gen(0))]
    torch.testing.assert_close(linalg.effective_rank(shuffled, kind, singular_values=True,
                                                     **kw), got)


def test_schatten_and_threshold_absolute():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=F64)
    got = linalg.effective_rank(s, "schatten", k=3, singular_values=True)
    assert abs(got.item() - (1 + 1 / 8 + 1 / 64 + 1 / 512)) < 1e-14
    assert linalg.effective_rank(s, "threshold", eps=0.9, relative=False,
                                 singular_values=True).item() == 3
    assert linalg.effective_rank(s, "threshold", eps=0.9, singular_values=True).item() == 1
    assert linalg.effective_rank(s, "threshold", eps=0.9, relative=False,
                                 singular_values=True).item() != \
        linalg.effective_rank(10 * s, "threshold", eps=0.9, relative=False,
                              singular_values=True).item()


def test_threshold_is_strict_and_energy_takes_the_first_rank_reaching_the_share():
    # threshold counts sigma_i / sigma_1 > eps strictly; energy takes the least k with
    # (sum_{i<=k} s_i^2 / sum s_i^2)^(1/2) >= 1 - eps, equality included
    s = torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    er = lambda kind, **kw: linalg.effective_rank(s, kind, singular_values=True, **kw).item()  # noqa: E731
    assert er("threshold", eps=0.5) == 1 and er("threshold", eps=0.25) == 2
    assert er("threshold", eps=1.0, relative=False) == 1
    assert er("threshold", eps=0.0) == 3
    # the one kind that can be 0 for a non-zero matrix (documented)
    assert er("threshold", eps=1.0) == 0 and er("threshold", eps=2.0, relative=False) == 0
    s2 = torch.tensor([math.sqrt(3.0), 1.0], dtype=F64)  # shares 3/4 and 1: sqrt(3/4)
    eps = 1 - math.sqrt(0.75)
    assert linalg.effective_rank(s2, "energy", eps=eps * (1 + 1e-9), singular_values=True) == 1
    assert linalg.effective_rank(s2, "energy", eps=eps * (1 - 1e-9), singular_values=True) == 2
    assert er("energy", eps=0.0) == 3
    # equality reached exactly: four equal values hold sqrt(1/4) = 1/2 in the first
    flat = torch.ones(4, dtype=F64)
    assert linalg.effective_rank(flat, "energy", eps=0.5, singular_values=True) == 1


KINDS_ALL = [("rank", {}), ("threshold", dict(eps=0.3)), ("energy", dict(eps=0.05))] + CASES[2:] \
    + [("schatten", dict(k=3.0))]


@pytest.mark.parametrize("dtype, scales", [(torch.float32, [1e-30, 1e-20, 1e20, 1e30]),
                                           (F64, [1e-250, 1e-160, 1e160, 1e250])])
@pytest.mark.parametrize("shape", [(9, 6), (12, 4)])
def test_effective_rank_far_from_unit_scale(dtype, scales, shape):
    # every kind but the absolute threshold is scale-free; the squares in the Gram matrix and in
    # the nuclear/Frobenius ratio used to over- or underflow (a non-zero float64 matrix at 1e-170
    # had effective rank 0, at 1e160 eigvalsh raised)
    M = random_spectrum_matrix(24, *shape, min(shape), 2.0).to(dtype)
    for kind, kw in KINDS_ALL:
        want = linalg.effective_rank(M, kind, **kw)
        for c in scales:
            for got in (linalg.effective_rank(M * c, kind, **kw),
                        linalg.effective_rank(torch.linalg.svdvals(M.double() * c).to(dtype), kind,
                                              singular_values=True, **kw)):
                assert torch.isfinite(got) and abs(got.item() / want.item() - 1) < 1e-4, \
                    (kind, c, got.item(), want.item())


def test_renyi_family_contains_the_other_definitions():
    M = random_spectrum_matrix(11, 8, 7, 5, 3.0)
    er = lambda kind, **kw: linalg.effective_rank(M, kind, **kw).item()  # noqa: E731
    assert abs(er("renyi", alpha=math.inf) - er("intrinsic")) < 1e-12
    assert abs(er("renyi", alpha=2.0) - er("nuc_fro")) < 1e-12
    assert abs(er("renyi", alpha=1.0) - er("entropy")) < 1e-12
    assert er("renyi", alpha=0.0) == er("rank") == 5
    assert abs(er("renyi", alpha=math.inf, gamma=2.0) - er("stable")) < 1e-12


def test_identity_rank_one_and_rank_deficient():
    n = 50
    eye = torch.eye(n, dtype=F64)
    for kind, kw in CASES:
        if kind != "normalized_entropy":
            kw = {k: v for k, v in kw.items() if k != "eps"}
            kw = dict(kw, eps=1e-3) if kind in ("threshold", "energy") else kw
            assert abs(linalg.effective_rank(eye, kind, **kw).item() - n) < 1e-10, kind
            uv = torch.outer(torch.arange(1.0, 6, dtype=F64), torch.ones(4, dtype=F64))
            assert abs(linalg.effective_rank(uv, kind, **kw).item() - 1) < 1e-10, kind
            D = torch.diag(torch.tensor([1.0, 1, 1, 0, 0], dtype=F64))
            assert abs(linalg.effective_rank(D, kind, **kw).item() - 3) < 1e-10, kind
    assert abs(linalg.effective_rank(eye, "normalized_entropy").item() - 1) < 1e-12
    assert linalg.effective_rank(torch.ones(1, 5), "normalized_entropy").item() == 1.0
    # a numerically rank-deficient product: rank counts 3, the entropies hardly move
    g = gen(12)
    R = torch.randn(10, 3, dtype=F64, generator=g) @ torch.randn(3, 8, dtype=F64, generator=g)
    assert linalg.effective_rank(R, "rank").item() == 3
    assert linalg.effective_rank(R, "entropy").item() <= 3 + 1e-9


def test_energy_rank_identity_threshold():
    n = 50
    eye = torch.eye(n, dtype=F64)
    edge = 1 - math.sqrt(1 - 1 / n)
    assert linalg.effective_rank(eye, "energy", eps=edge * (1 - 1e-6)).item() == n
    assert linalg.effective_rank(eye, "energy", eps=edge * (1 + 1e-6)).item() == n - 1
    assert edge < 1 / n  # so 1/n is sufficient but not necessary


def test_zero_matrix_has_effective_rank_zero():
    Z = torch.zeros(2, 4, 3)
    for kind, kw in CASES + [("rank", {}), ("schatten", dict(k=3.0))]:
        got = linalg.effective_rank(Z, kind, **kw)
        assert got.shape == (2,) and (got == 0).all(), kind
    assert linalg.nuclear_norm(Z).eq(0).all() and linalg.spectral_norm(Z).eq(0).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), m=st.integers(2, 12),
       rank=st.integers(1, 12), decay=st.floats(0.0, 8.0))
def test_ordering_chain(seed, n, m, rank, decay):
    rank = min(rank, n, m)
    M = random_spectrum_matrix(seed, n, m, rank, decay)
    er = lambda kind, **kw: linalg.effective_rank(M, kind, **kw).item()  # noqa: E731
    chain = [er("stable"), er("intrinsic"), er("nuc_fro"), er("entropy"), er("rank")]
    tol = 1e-9
    assert 1 - tol <= chain[0]
    assert all(a <= b + tol for a, b in itertools.pairwise(chain)), chain
    assert chain[-1] == rank
    renyi = [er("renyi", alpha=a) for a in (0.0, 0.5, 1.0, 2.0, 5.0, math.inf)]
    assert all(a + tol >= b for a, b in itertools.pairwise(renyi)), renyi


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 8), m=st.integers(2, 8),
       scale=st.floats(1e-3, 1e3))
def test_invariances(seed, n, m, scale):
    g = gen(seed)
    M = torch.randn(n, m, dtype=F64, generator=g)
    Q, R = orthonormal(n, n, g), orthonormal(m, m, g)
    for kind, kw in CASES[2:]:
        base = linalg.effective_rank(M, kind, **kw)
        for other in (scale * M, Q @ M @ R, M.T):
            assert abs(linalg.effective_rank(other, kind, **kw) - base) < 1e-9, kind


def test_effective_rank_dtypes_and_batch():
    M = torch.randn(2, 3, 5, 4, generator=gen(13))
    got = linalg.effective_rank(M, "stable")
    assert got.shape == (2, 3) and got.dtype == torch.float32
    want = linalg.effective_rank(M.double(), "stable")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    half = linalg.effective_rank(M.to(torch.bfloat16), "entropy")
    assert half.dtype == torch.bfloat16


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [linalg.spectral_norm, linalg.spectral_norm_grad,
                                linalg.nuclear_norm, linalg.effective_rank,
                                lambda W: linalg.power_iteration(W, 3)])
def test_bad_matrices_raise_clear_errors(fn):
    with pytest.raises(ValueError, match="W|M"):
        fn(torch.ones(4))
    with pytest.raises(ValueError, match="empty|non-empty"):
        fn(torch.ones(0, 3))
    with pytest.raises(ValueError, match="finite"):
        fn(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="finite"):
        fn(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="floating"):
        fn(torch.ones(3, 3, dtype=torch.int64))


def test_bad_arguments_raise_clear_errors():
    M = torch.eye(3)
    with pytest.raises(ValueError, match="singular_values=True"):
        linalg.effective_rank(torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        linalg.effective_rank(torch.tensor([1.0, -1.0]), singular_values=True)
    with pytest.raises(ValueError, match="kind"):
        linalg.effective_rank(M, "bogus")
    with pytest.raises(ValueError, match="needs eps"):
        linalg.effective_rank(M, "energy")
    with pytest.raises(ValueError, match="eps"):
        linalg.effective_rank(M, "energy", eps=1.0)
    with pytest.raises(ValueError, match="eps is not used"):
        linalg.effective_rank(M, "stable", eps=0.1)
    with pytest.raises(ValueError, match="needs alpha"):
        linalg.effective_rank(M, "renyi")
    with pytest.raises(ValueError, match="gamma"):
        linalg.effective_rank(M, "intrinsic", gamma=2.0)
    with pytest.raises(ValueError, match="method"):
        linalg.spectral_norm(M, "lanczos")
    with pytest.raises(ValueError, match="v0"):
        linalg.power_iteration(M, 3, v0=torch.ones(4))
    with pytest.raises(ValueError, match="v0 must be non-zero"):
        linalg.power_iteration(M, 3, v0=torch.zeros(3))
    with pytest.raises(ValueError, match="iters"):
        linalg.power_iteration(M, -1)
    with pytest.raises(TypeError, match="iters"):
        linalg.power_iteration(M, 2.5)
    with pytest.raises(ValueError, match="v must have"):
        linalg.spectral_norm_grad(M, v=torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_keeps_device():
    W = planted([3.0, 1.0, 0.5], 6, 5).cuda()
    assert linalg.spectral_norm(W).device.type == "cuda"
    sigma, u, v = linalg.power_iteration(W, 40, generator=torch.Generator("cuda").manual_seed(0))
    assert v.device.type == "cuda" and abs(sigma.item() - 3.0) < 1e-10
    assert linalg.spectral_norm_grad(W).device.type == "cuda"
    assert linalg.effective_rank(W, "entropy").device.type == "cuda"


# --------------------------------------------------------------------------- fast paths


def rel(a, b):
    return ((a.double() - b.double()).abs() / b.double().abs()).max().item()


def test_power_iteration_class_cold_and_warm_match_exact():
    # sigma_2 / sigma_1 = 0.6: 10 cold steps, then 1 warm step per call on a drifting matrix
    W = planted([5.0, 3.0, 2.0, 1.0, 0.5], 64, 48, seed=14)
    tracker = linalg.PowerIteration(generator=gen(0))
    sigma, u, v = tracker(W)
    exact = torch.linalg.svdvals(W)[0]
    assert rel(sigma, exact) <= 1e-6 and tracker.fallbacks == 0
    g = gen(15)
    worst = 0.0
    for _ in range(20):
        W = W + 1e-4 * torch.randn(W.shape, dtype=F64, generator=g)
        sigma, u, v = tracker(W)
        worst = max(worst, rel(sigma, torch.linalg.svdvals(W)[0]))
        torch.testing.assert_close(torch.outer(u, v), linalg.spectral_norm_grad(W), rtol=0,
                                   atol=2e-3)
    assert worst <= 1e-6 and tracker.fallbacks == 0, (worst, tracker.fallbacks)
    assert tracker.residual.item() ** 2 / (2 * (1 - tracker.contraction.item())) <= tracker.tol
    # float32: the same to rounding
    W32 = W.float()
    assert rel(linalg.PowerIteration(generator=gen(1))(W32)[0], exact.new_tensor(
        torch.linalg.svdvals(W)[0].item())) <= 1e-5


def test_power_iteration_class_detects_a_small_gap():
    # sigma_2 / sigma_1 = 0.999: 10 steps cannot separate the pair; the residual check sees it
    W = planted([1.0, 0.999, 0.5, 0.2], 40, 30, seed=16)
    unchecked = linalg.PowerIteration(tol=math.inf, generator=gen(0))
    assert rel(unchecked(W)[0], torch.linalg.svdvals(W)[0]) > 1e-6  # silently off ...
    # ... the residual alone is small, but its contraction rate shows the near-tie
    assert unchecked.residual.item() < 1e-3 and unchecked.contraction.item() > 0.99
    checked = linalg.PowerIteration(generator=gen(0))
    sigma, u, v = checked(W)
    assert checked.fallbacks == 1
    assert rel(sigma, torch.linalg.svdvals(W)[0]) <= 1e-12
    torch.testing.assert_close(torch.outer(u, v), linalg.spectral_norm_grad(W), rtol=0,
                               atol=1e-12)
    # the exact vector is kept: the next (warm) call needs no fallback
    checked(W)
    assert checked.fallbacks == 1
    # in a batch only the unresolved slice falls back
    good = planted([3.0, 1.0, 0.5], 40, 30, seed=17)
    batch = linalg.PowerIteration(generator=gen(0))
    sigma = batch(torch.stack([good, W, good]))
    assert batch.fallbacks == 1
    assert rel(sigma[0], torch.linalg.svdvals(torch.stack([good, W, good]))[:, 0]) <= 1e-6


def test_power_iteration_class_warm_call_keeps_the_gap_estimate():
    # a warm call runs one step, so it cannot measure the contraction; it must reuse the stored
    # rho^2 (here the exact 0.998 of the fallback). With rho^2 = 0 assumed instead, the bound
    # eta^2 / 2 would accept a sigma far outside tol after the matrix moved
    W = planted([1.0, 0.999, 0.5, 0.2], 40, 30, seed=16)
    tracker = linalg.PowerIteration(generator=gen(0))
    tracker(W)
    assert tracker.fallbacks == 1 and abs(tracker.contraction.item() - 0.999**2) < 1e-12
    g = gen(25)
    for _ in range(5):
        W = W + 3e-4 * torch.randn(W.shape, dtype=F64, generator=g)
        sigma = tracker(W)[0]
        assert rel(sigma, torch.linalg.svdvals(W)[0]) <= tracker.tol


def test_power_iteration_class_edge_cases_and_arguments():
    tracker = linalg.PowerIteration(generator=gen(0))
    sigma, u, _ = tracker(torch.zeros(2, 4, 3))
    assert (sigma == 0).all() and (u == 0).all() and tracker.fallbacks == 0
    sigma, _, v = tracker(torch.ones(5, 4))  # a new shape restarts cold
    assert v.shape == (4,) and abs(sigma.item() - math.sqrt(20)) < 1e-5
    half = tracker(planted([4.0, 1.0], 6, 5, seed=4).to(torch.bfloat16))
    assert half[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="cold_iters"):
        linalg.PowerIteration(cold_iters=1)
    with pytest.raises(ValueError, match="tol"):
        linalg.PowerIteration(tol=-1.0)
    with pytest.raises(ValueError, match="finite"):
        tracker(torch.tensor([[1.0, float("nan")]]))


FAST_KINDS = [("intrinsic", {}), ("stable", {}), ("nuc_fro", {}), ("entropy", {}),
              ("entropy", dict(gamma=2.0)), ("renyi", dict(alpha=2.0)),
              ("normalized_entropy", {}), ("schatten", dict(k=0.5))]


@pytest.mark.parametrize("shape", [(96, 96), (48, 192), (192, 48)])
@pytest.mark.parametrize("decay", [0.0, 2.0])
def test_effective_rank_gram_path_matches_exact_in_float32(shape, decay):
    g = gen(18)
    M = torch.randn(*shape, generator=g) * torch.logspace(0, -decay, shape[1])
    for kind, kw in FAST_KINDS:
        fast = linalg.effective_rank(M, kind, **kw)
        exact = linalg.effective_rank(M, kind, exact=True, **kw)
        assert fast.dtype == torch.float32
        assert rel(fast, exact) <= 1e-4, (kind, kw, rel(fast, exact))
    # the exact path is float64 svdvals
    s = torch.linalg.svdvals(M.double())
    torch.testing.assert_close(linalg.effective_rank(M, exact=True).double(),
                               linalg.effective_rank(s, singular_values=True), rtol=1e-6,
                               atol=0)


def test_effective_rank_gram_path_defers_what_it_cannot_resolve(monkeypatch):
    # full rank 8, but four singular values of 1e-3: below the float32 Gram rounding level
    M = planted([1.0] * 4 + [1e-3] * 4, 64, 32, seed=19).float()
    assert linalg.effective_rank(M, "rank", exact=True).item() == 8
    assert linalg.effective_rank(M, "rank").item() == 8
    # the Cholesky test sends it straight to float64; both checks switched off ...
    monkeypatch.setattr(linalg, "_clears_rounding", lambda gram, size: torch.ones(
        gram.shape[:-2], dtype=torch.bool))
    monkeypatch.setattr(linalg, "_GRAM_RTOL", math.inf)
    assert linalg.effective_rank(M, "rank").item() == 4  # ... gives a wrong count


@pytest.mark.parametrize("n, tested", [(5, True), (32, False)])
def test_effective_rank_cholesky_test_routes_slices(monkeypatch, n, tested):
    # a batch of a well-conditioned slice (float32 certifies it) and a rank-deficient one
    # (it cannot). Near-square (5 x 4), the Cholesky test sends only the first to the float32
    # eigenvalues and the second straight to float64; at aspect 8 (32 x 4) there is no test, so
    # both try float32 and the second, unsure there, is redone in float64
    good = planted([1.0, 0.9, 0.8, 0.7], n, 4, seed=20).float()
    bad = planted([1.0, 0.5, 0.0, 0.0], n, 4, seed=21).float()
    assert linalg._clears_rounding(linalg._small_gram(torch.stack([good, bad])), n).tolist() \
        == [True, False]
    calls = []
    real = linalg._gram_rank

    def spy(gram, args):
        calls.append((gram.dtype, gram.shape[0]))
        return real(gram, args)

    monkeypatch.setattr(linalg, "_gram_rank", spy)
    got = linalg.effective_rank(torch.stack([good, bad]), "entropy")
    assert calls == [(torch.float32, 1 if tested else 2), (torch.float64, 1)]
    want = linalg.effective_rank(torch.stack([good, bad]).double(), "entropy", exact=True)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)


def test_effective_rank_of_a_vector_names_singular_values_in_both_paths():
    for exact in (False, True):
        with pytest.raises(ValueError, match=r"M must be a matrix \(\.\.\., n, m\), got shape "
                                             r"\(3,\); .*singular_values=True"):
            linalg.effective_rank(torch.ones(3), exact=exact)
    M = torch.eye(3)
    for kind in ("entropy", "stable", "threshold"):
        with pytest.raises(ValueError, match=f"alpha is only used by kind='renyi', not '{kind}'"):
            linalg.effective_rank(M, kind, alpha=2.0, eps=0.1 if kind == "threshold" else None)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

def test_power_iteration_v0_must_broadcast_to_the_batch():
    W = torch.eye(4, dtype=F64)
    with pytest.raises(ValueError, match="v0 of shape \\(1, 4\\)"):
        linalg.power_iteration(W, 3, v0=torch.ones(1, 4, dtype=F64))
    with pytest.raises(ValueError, match="v0"):
        linalg.power_iteration(torch.eye(4, dtype=F64).expand(2, 4, 4), 3,
                               v0=torch.ones(3, 4, dtype=F64))
    sigma, _, v = linalg.power_iteration(W.expand(2, 4, 4), 3, v0=torch.ones(1, 4, dtype=F64))
    assert sigma.shape == (2,) and v.shape == (2, 4)


def test_power_iteration_refuses_a_non_generator():
    with pytest.raises(TypeError, match="generator"):
        linalg.power_iteration(torch.eye(3, dtype=F64), 3, generator=5)
    with pytest.raises(TypeError, match="generator"):
        linalg.PowerIteration(generator="seed")


def test_spectral_norm_grad_cheap_path_validates_v_like_power_iteration():
    W = torch.randn(3, 4, dtype=F64, generator=gen(30))
    with pytest.raises(ValueError, match="v must be non-zero"):
        linalg.spectral_norm_grad(W, v=torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="v must be non-zero"):  # one zero slice is enough
        linalg.spectral_norm_grad(W.expand(2, 3, 4), v=torch.stack(
            [torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64)]))
    with pytest.raises(ValueError, match=r"v of shape \(5, 4\) .*batch shape \(\)"):
        linalg.spectral_norm_grad(W, v=torch.randn(5, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"v of shape \(3, 4\) .*batch shape \(2,\)"):
        linalg.spectral_norm_grad(torch.randn(2, 3, 4), v=torch.randn(3, 4))
    # what broadcasts is accepted, and the result has W's shape
    G = linalg.spectral_norm_grad(W.expand(2, 3, 4), v=torch.ones(1, 4, dtype=F64))
    assert G.shape == (2, 3, 4)
    torch.testing.assert_close(G[1], linalg.spectral_norm_grad(W, v=torch.ones(4, dtype=F64)))


def _diag(*values):
    return torch.diag(torch.tensor(values, dtype=F64))


def test_power_iteration_class_tol_zero_and_exact_tie_fall_back():
    tracker = linalg.PowerIteration(tol=0.0, generator=gen(0))
    assert tracker(2 * torch.eye(3, dtype=F64))[0].item() == 2 and tracker.fallbacks == 1
    # an exact tie (eta = 0) passes but stores the unknown rate 1, not rho^2 = 0 ...
    tracker = linalg.PowerIteration(generator=gen(0))
    tracker(_diag(2.0, 2.0))
    assert tracker.fallbacks == 0 and tracker.contraction.item() == 1
    # ... so the next warm call on a near-tie falls back instead of returning sigma_2
    sigma = tracker(_diag(2.0, 1.999))[0]
    assert tracker.fallbacks == 1 and sigma.item() == 2


def test_power_iteration_class_check_limits_as_documented():
    # the documented limits: a faster-decaying component fools the cold rate estimate, and a
    # warm call reuses a rate measured before the gap shrank; sigma_2 passes with no fallback
    cold = linalg.PowerIteration(cold_iters=10, tol=1e-6, generator=gen(9))
    sigma = cold(_diag(1.0, 0.999, 0.8))[0].item()
    assert cold.fallbacks == 0 and 5e-4 < 1 - sigma < 2e-3
    c, s = math.cos(0.3), math.sin(0.3)
    R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    warm = linalg.PowerIteration(cold_iters=10, tol=1e-6, generator=gen(0))
    warm(_diag(1.0, 0.5, 0.3))
    sigma = warm(R @ _diag(1.0, 0.999, 0.3) @ R.T)[0].item()
    assert warm.fallbacks == 0 and 1e-6 < 1 - sigma < 2e-4
    # tol=0 is the safe setting
    exact = linalg.PowerIteration(tol=0.0, generator=gen(9))
    assert exact(_diag(1.0, 0.999, 0.8))[0].item() == 1


# -- gaps found by mutation testing ------------------------------------------------------------


def _plain_power(W, x, steps):
    """`steps` textbook power steps x <- W^T W x / |W^T W x| in float64, from x normalised."""
    x = x / x.norm()
    for _ in range(steps):
        y = W.T @ (W @ x)
        x = y / y.norm()
    return x


def test_power_iteration_and_spectral_norm_default_step_counts():
    # defaults from the signatures: power_iteration 10 steps, spectral_norm(method="power") 20,
    # both from the all-ones start; rho = 0.9 so that one step more or less shows
    W = planted([1.0, 0.9, 0.5], 6, 4, seed=40)
    ones = torch.ones(4, dtype=F64)
    sigma, _, v = linalg.power_iteration(W)
    x10 = _plain_power(W, ones, 10)
    torch.testing.assert_close(v, x10, rtol=0, atol=1e-13)
    assert abs(sigma.item() - (W @ x10).norm().item()) < 1e-13
    x20 = _plain_power(W, ones, 20)
    assert abs(linalg.spectral_norm(W, "power").item() - (W @ x20).norm().item()) < 1e-13


def test_power_iteration_class_default_cold_steps_and_warm_vector():
    # cold_iters defaults to 10: the call measures sigma at x_9 (nine steps from the normalised
    # Gaussian start) and keeps the next iterate x_10 as its warm vector
    W = planted([1.0, 0.9, 0.5], 6, 4, seed=41)
    tracker = linalg.PowerIteration(tol=math.inf, generator=gen(3))
    sigma, u, v = tracker(W)
    x0 = torch.randn(4, dtype=F64, generator=gen(3))
    x9, x10 = _plain_power(W, x0, 9), _plain_power(W, x0, 10)
    torch.testing.assert_close(v, x9, rtol=0, atol=1e-13)
    torch.testing.assert_close(tracker.v, x10, rtol=0, atol=1e-13)
    assert abs(sigma.item() - (W @ x9).norm().item()) < 1e-13
    torch.testing.assert_close(u, W @ x9 / (W @ x9).norm(), rtol=0, atol=1e-13)


def test_power_iteration_class_default_tol_bounds_the_error():
    # tol defaults to 1e-6: with the defaults, sigma is within 1e-6 relatively, also where the
    # 10 cold steps cannot get there (rho = 0.95, so the check falls back)
    W = planted([1.0, 0.95, 0.5], 30, 20, seed=42)
    tracker = linalg.PowerIteration(generator=gen(0))
    assert rel(tracker(W)[0], torch.linalg.svdvals(W)[0]) <= 1e-6
    unchecked = linalg.PowerIteration(tol=math.inf, generator=gen(0))
    assert rel(unchecked(W)[0], torch.linalg.svdvals(W)[0]) > 1e-6  # the steps alone are off


def test_power_iteration_class_cold_residuals_and_contraction():
    # the documented check on the last two steps: eta = |W^T u - sigma x| / sigma at x_0 and
    # x_1 (cold_iters=2), contraction = eta_1 / eta_0, from the Gaussian start normalised
    # slice by slice
    W = torch.stack([planted([2.0, 1.0, 0.5], 6, 4, seed=43 + i) * c
                     for i, c in enumerate((1.0, 0.25, 0.1))])  # sigma_1 = 2, 0.5, 0.2
    tracker = linalg.PowerIteration(cold_iters=2, tol=math.inf, generator=gen(5))
    tracker(W)
    x = torch.randn(3, 4, dtype=F64, generator=gen(5))
    for i in range(3):
        etas = []
        for t in range(2):
            xt = _plain_power(W[i], x[i], t)
            s = (W[i] @ xt).norm()
            etas.append(((W[i].T @ (W[i] @ xt / s) - s * xt).norm() / s).item())
        assert abs(tracker.residual[i].item() - etas[1]) < 1e-13
        assert abs(tracker.contraction[i].item() - etas[1] / etas[0]) < 1e-12


def test_power_iteration_class_batched_warm_call_starts_from_the_kept_vector():
    # a second call on a batch of the same shape is warm: its one step measures at the vector
    # kept by the first call
    W = torch.stack([planted([2.0, 1.0, 0.5], 6, 4, seed=s) for s in range(3)])
    tracker = linalg.PowerIteration(tol=math.inf, generator=gen(0))
    tracker(W)
    kept = tracker.v.clone()
    assert kept.shape == (3, 4)
    sigma, _, v = tracker(W)
    torch.testing.assert_close(v, kept, rtol=0, atol=0)
    torch.testing.assert_close(sigma, (W @ kept.unsqueeze(-1)).squeeze(-1).norm(dim=-1),
                               rtol=1e-14, atol=0)


def test_power_iteration_class_fallback_stores_the_exact_residual():
    # a slice recomputed by the SVD is an exact singular pair: its residual is stored as 0
    W = planted([1.0, 0.999, 0.5, 0.2], 40, 30, seed=16)
    tracker = linalg.PowerIteration(generator=gen(0))
    sigma, u, v = tracker(W)
    assert tracker.fallbacks == 1
    assert ((W.T @ u - sigma * v).norm() / sigma).item() < 1e-13  # it is exact ...
    assert tracker.residual.item() == 0  # ... and recorded so


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e-22), (F64, 1e-160)])
def test_power_iteration_class_warm_calls_far_below_unit_scale(dtype, scale):
    # warm calls run split steps only (u = Wx/|Wx|, then W^T u), which square the scale once:
    # in float32 a sigma_1 of 3e-22 (float64: 3e-160) loses precision there and must be redone
    W = planted([3.0, 1.0, 0.5], 7, 5, seed=23).to(dtype) * scale
    exact = torch.linalg.svdvals(W.double())[0].item()
    tracker = linalg.PowerIteration(generator=gen(0))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for _ in range(3):
        assert abs(tracker(W)[0].item() / exact - 1) < tol


def test_power_iteration_float32_scale_sweep_below_unit():
    # a plain step reaches the fourth power of the scale: a float32 sigma_1 of 3e-11 puts its
    # squares in the subnormals, so it must be rescaled like the smaller ones (after one step too)
    W = planted([3.0, 1.0, 0.5], 7, 5, seed=22)
    for iters in (1, 30):
        want = linalg.power_iteration(W, iters)[0].item()
        for c in [1e-6, 1e-8, 1e-9, 1e-10, 3e-11, 1e-11, 1e-12, 1e-14]:
            sigma = linalg.power_iteration(W.float() * c, iters)[0].item()
            assert abs(sigma / (c * want) - 1) < 1e-5, (iters, c)


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e-30), (torch.float32, 1e20),
                                          (F64, 1e-200), (F64, 1e200)])
def test_power_iteration_rescales_a_matrix_with_zero_entries(dtype, scale):
    # the rescaling divides by max|W_ij|: a zero entry (here most of them) must not stop it
    W = torch.zeros(4, 3, dtype=dtype)
    W[0, 0], W[1, 1], W[2, 2] = 3.0, 1.0, 0.5
    sigma, u, v = linalg.power_iteration(W * scale, 30)
    assert abs(sigma.item() / (3.0 * scale) - 1) < 1e-6
    e = torch.eye(4, 3, dtype=F64)
    torch.testing.assert_close(torch.outer(u, v).double(), torch.outer(e[:, 0], e[0]),
                               rtol=0, atol=1e-6)


def test_spectral_norm_grad_cheap_path_normalises_v():
    # v may have any non-zero length (power_iteration's v is a unit vector, a warm vector
    # need not be): the result is u1 v1^T for every multiple of v1
    W = planted([2.0, 1.0, 0.5], 5, 4, seed=44)
    U, _, Vh = torch.linalg.svd(W)
    want = torch.outer(U[:, 0], Vh[0])
    for c in (3.0, 0.25, -2.0):
        torch.testing.assert_close(linalg.spectral_norm_grad(W, v=c * Vh[0]), want, rtol=0,
                                   atol=1e-13)


def test_effective_rank_exact_path_default_rtol_uses_the_longer_side():
    # rank's default rtol is max(n, m) * eps like torch.linalg.matrix_rank, also with
    # exact=True: sigma_2 = 1e-15 lies between 2 eps and 10 eps (float64, 10 x 2)
    M = torch.zeros(10, 2, dtype=F64)
    M[0, 0], M[1, 1] = 1.0, 1e-15
    want = torch.linalg.matrix_rank(M).item()
    assert want == 1
    for exact in (False, True):
        assert linalg.effective_rank(M, "rank", exact=exact).item() == want
        assert linalg.effective_rank(M.T, "rank", exact=exact).item() == want


def test_effective_rank_rtol_zero_counts_only_positive_values():
    # "rank" counts sigma_i > rtol * sigma_1 strictly: with rtol=0 exact zeros do not count,
    # as in torch.linalg.matrix_rank(..., rtol=0)
    s = torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=F64)
    assert linalg.effective_rank(s, "rank", rtol=0.0, singular_values=True).item() == 2
    D = torch.diag(s)
    assert linalg.effective_rank(D, "rank", rtol=0.0).item() == \
        torch.linalg.matrix_rank(D, rtol=0.0, atol=0.0).item() == 2
    assert linalg.effective_rank(D, "rank", rtol=0.0, exact=True).item() == 2


def test_schatten_default_order_is_one():
    # k defaults to 1: the Schatten rank is then sum_i sigma_i / sigma_1 (the intrinsic rank)
    s = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=F64)
    got = linalg.effective_rank(s, "schatten", singular_values=True)
    assert abs(got.item() - (4 + 2 + 1 + 0.5) / 4) < 1e-15


def test_effective_rank_accepts_singular_values_as_a_list():
    # array-likes are converted like every dlmath input (to float32 for Python floats)
    got = linalg.effective_rank([4.0, 2.0, 1.0, 0.5], "intrinsic", singular_values=True)
    assert got.dtype == torch.float32 and abs(got.item() - 1.875) < 1e-6
    assert linalg.effective_rank([1.0, 0.0], "rank", singular_values=True).item() == 1


def test_effective_rank_of_a_scalar_names_the_matrix_shape():
    for exact in (False, True):
        with pytest.raises(ValueError, match=r"M must be a matrix \(\.\.\., n, m\), got shape "
                                             r"\(\)"):
            linalg.effective_rank(torch.tensor(3.0), exact=exact)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_cholesky_routing_is_scale_free(scale):
    # the shift c = size eps ||G||_F is relative to the Gram matrix: scaling M does not change
    # which slices clear the float32 rounding
    good = planted([1.0, 0.9, 0.8, 0.7], 5, 4, seed=20).float()
    bad = planted([1.0, 0.5, 0.0, 0.0], 5, 4, seed=21).float()
    gram = linalg._small_gram(torch.stack([good, bad]) * scale)
    assert linalg._clears_rounding(gram, 5).tolist() == [True, False]


@pytest.mark.parametrize("wide", [False, True])
def test_effective_rank_cholesky_test_starts_above_aspect_two_thirds(monkeypatch, wide):
    # the Cholesky test runs only where the shorter side is more than 2/3 of the longer
    # (min(n, m) and max(n, m)): at exactly 2/3, tall 6 x 4 or wide 4 x 6, a float32 matrix
    # skips it and goes to the float32 eigenvalues first
    M = planted([1.0, 0.5, 0.0, 0.0], 6, 4, seed=21).float()
    M = M.T if wide else M
    calls = []
    real = linalg._gram_rank

    def spy(gram, args):
        calls.append(gram.dtype)
        return real(gram, args)

    monkeypatch.setattr(linalg, "_gram_rank", spy)
    monkeypatch.setattr(linalg, "_clears_rounding", lambda gram, size: pytest.fail(
        f"Cholesky test run on a {tuple(M.shape)} matrix"))
    assert linalg.effective_rank(M, "rank").item() == 2
    assert calls == [torch.float32, torch.float64]  # unsure in float32, redone in float64


def test_power_iteration_zero_steps_normalise_each_slice():
    # iters=0 only normalises the start vector, slice by slice (here the all-ones start)
    W = torch.randn(3, 5, 4, dtype=F64, generator=gen(45))
    sigma, u, v = linalg.power_iteration(W, 0)
    torch.testing.assert_close(v, torch.full((3, 4), 0.5, dtype=F64), rtol=0, atol=1e-15)
    want = (W @ torch.full((4,), 0.5, dtype=F64)).norm(dim=-1)
    torch.testing.assert_close(sigma, want, rtol=1e-14, atol=0)


def test_power_iteration_class_zero_matrix_keeps_a_unit_vector():
    # on the zero matrix W^T u = 0: the iterate stays where it is (a unit vector), it does not
    # become the zero vector, which would leave every later warm call at sigma = 0
    tracker = linalg.PowerIteration(generator=gen(0))
    sigma, u, v = tracker(torch.zeros(4, 3, dtype=F64))
    assert sigma.item() == 0 and (u == 0).all()
    assert abs(v.norm().item() - 1) < 1e-15 and abs(tracker.v.norm().item() - 1) < 1e-15
    assert tracker.residual.item() == 0  # no residual to measure, and no NaN stored


@pytest.mark.parametrize("scale", [1.0, 0.25])
@pytest.mark.parametrize("n, m", [(5, 1), (1, 4), (4, 2), (2, 5), (6, 3)])
def test_power_iteration_class_exact_path_stores_the_exact_contraction(n, m, scale):
    # the exact fallback stores rho^2 = (sigma_2 / sigma_1)^2 (0 when there is no sigma_2), for
    # any number of singular values and any scale
    s = [2.0, 1.5, 0.5][:min(n, m)]
    W = planted(s, n, m, seed=46) * scale
    tracker = linalg.PowerIteration(tol=0.0, generator=gen(0))
    sigma, u, v = tracker(W)
    assert tracker.fallbacks == 1 and abs(sigma.item() - 2.0 * scale) < 1e-14
    want = (s[1] / s[0]) ** 2 if len(s) > 1 else 0.0
    assert abs(tracker.contraction.item() - want) < 1e-14


def test_power_iteration_class_falls_back_where_the_bound_exceeds_tol():
    # the check: fall back iff eta^2 / (2 (1 - rho^2)) > tol, with eta and rho^2 from the last
    # two steps; the bound is computed here from the two residuals, and tol set on either side
    W = planted([2.0, 1.0, 0.5], 6, 4, seed=43)
    x = torch.randn(4, dtype=F64, generator=gen(5))
    etas = []
    for t in range(2):
        xt = _plain_power(W, x, t)
        s = (W @ xt).norm()
        etas.append(((W.T @ (W @ xt / s) - s * xt).norm() / s).item())
    bound = etas[1] ** 2 / (2 * (1 - etas[1] / etas[0]))
    for factor, fallbacks in ((0.9, 1), (1.1, 0)):
        tracker = linalg.PowerIteration(cold_iters=2, tol=factor * bound, generator=gen(5))
        tracker(W)
        assert tracker.fallbacks == fallbacks, factor


def test_spectral_norm_grad_cheap_path_batched_and_small_scale():
    # each slice's v is normalised on its own; sigma_1 below 1 changes nothing
    W = torch.stack([planted([0.5, 0.2, 0.1], 5, 4, seed=s) for s in range(3)])
    U, _, Vh = torch.linalg.svd(W)
    v = Vh[:, 0] * torch.tensor([0.5, 2.0, 3.0], dtype=F64)[:, None]
    want = U[:, :, :1] @ Vh[:, :1, :]
    torch.testing.assert_close(linalg.spectral_norm_grad(W, v=v), want, rtol=0, atol=1e-13)


def test_spectral_norm_grad_cheap_path_zero_image_gives_zero():
    # W v = 0 (the zero matrix, or v in the null space): u = 0 and the result is 0, as the
    # exact path returns 0 for the zero matrix; never NaN
    assert (linalg.spectral_norm_grad(torch.zeros(3, 4, dtype=F64), v=torch.ones(4, dtype=F64))
            == 0).all()
    W = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    assert (linalg.spectral_norm_grad(W, v=torch.tensor([0.0, 1.0], dtype=F64)) == 0).all()


def test_spectral_norm_grad_default_rtol_is_ten_times_the_longer_side_times_eps():
    # sigma_2 counts as tied iff sigma_2 >= (1 - 10 max(n, m) eps) sigma_1: for 3 x 2 that is
    # a gap of 30 eps; 29 eps is a tie (G = (u1 v1^T + u2 v2^T) / 2), 31 eps is not
    # (of each matrix: a batch of 20 changes nothing)
    eps = torch.finfo(F64).eps
    for gap, tied in ((29, True), (31, False)):
        M = torch.zeros(3, 2, dtype=F64)
        M[0, 0], M[1, 1] = 1.0, 1.0 - gap * eps
        want = torch.zeros(3, 2, dtype=F64)
        want[0, 0], want[1, 1] = (0.5, 0.5) if tied else (1.0, 0.0)
        torch.testing.assert_close(linalg.spectral_norm_grad(M), want, rtol=0, atol=0)
        torch.testing.assert_close(linalg.spectral_norm_grad(M.expand(20, 3, 2)),
                                   want.expand(20, 3, 2), rtol=0, atol=0)


def test_effective_rank_last_tier_is_float64_svdvals():
    # an exactly rank-2 float32 matrix (a repeated row): float32 rounding cannot separate its
    # third singular value from 1e-7, so with rtol=1e-10 the fast path must end on float64
    # svdvals (as exact=True and matrix_rank in float64 do)
    a = torch.randn(2, 5, generator=gen(0))
    M = torch.cat([a, a[:1]])
    want = torch.linalg.matrix_rank(M.double(), rtol=1e-10).item()
    assert want == 2
    assert linalg.effective_rank(M, "rank", rtol=1e-10).item() == want
    assert linalg.effective_rank(M, "threshold", eps=1e-10).item() == want


def test_effective_rank_default_rtol_ignores_batch_dimensions():
    # the default rtol is max(n, m) eps of each matrix (r eps for a vector of r singular
    # values), whatever the batch size: sigma_2 = 2e-15 counts for a 3 x 2 matrix, 8e-16 for r = 2
    M = torch.zeros(20, 3, 2, dtype=F64)
    M[:, 0, 0], M[:, 1, 1] = 1.0, 2e-15
    assert torch.linalg.matrix_rank(M).tolist() == [2] * 20
    assert linalg.effective_rank(M, "rank").tolist() == [2.0] * 20
    assert linalg.effective_rank(M, "rank", exact=True).tolist() == [2.0] * 20
    s = torch.tensor([1.0, 8e-16], dtype=F64).expand(5, 2)
    assert linalg.effective_rank(s, "rank", singular_values=True).tolist() == [2.0] * 5


def test_power_iteration_u_is_a_unit_vector_below_unit_scale():
    # u = W x_T / sigma also for sigma_1 < 1 (the scale-free redo path only sees sigma_1 >= 1)
    W = planted([0.5, 0.1, 0.05], 6, 4, seed=47)
    U, S, Vh = torch.linalg.svd(W)
    sigma, u, v = linalg.power_iteration(W, 40)
    assert abs(sigma.item() - 0.5) < 1e-14 and abs(u.norm().item() - 1) < 1e-14
    torch.testing.assert_close(torch.outer(u, v), torch.outer(U[:, 0], Vh[0]), rtol=0,
                               atol=1e-12)


def test_effective_rank_gram_path_defers_a_small_normalized_entropy():
    # the check is relative to the value: a normalized entropy of 2.5e-4 (one dominant
    # direction) is too small for float32 eigenvalues to give to 1e-4, and must be redone
    M = planted([1.0, 3e-3, 3e-3, 3e-3], 40, 4, seed=48).float()
    fast = linalg.effective_rank(M, "normalized_entropy")
    exact = linalg.effective_rank(M, "normalized_entropy", exact=True)
    assert rel(fast, exact) <= 1e-4


def test_gram_rank_is_unsure_when_either_end_of_the_intervals_moves_the_value():
    # float32 Gram matrix diag(1, lambda_2), tau = 2 eps: at lambda_2 = 1.4e-6 raising the
    # eigenvalues by tau moves the intrinsic rank by less than 1e-4 relatively, lowering them
    # by more (sqrt is steeper below): the lower end alone makes the slice unsure
    tau = 2 * torch.finfo(torch.float32).eps
    args = (2, "intrinsic", None, True, 1.0, None, None, None, torch.float32)
    for lam2, unsure in ((1.4e-6, True), (3e-6, False)):
        value = 1 + math.sqrt(lam2)
        high = (1 + math.sqrt(lam2 + tau)) / math.sqrt(1 + tau)
        low = (1 + math.sqrt(lam2 - tau)) / math.sqrt(1 - tau)
        assert abs(high - value) < 1e-4 * value
        assert (abs(low - value) > 1e-4 * value) == unsure
        got, flag = linalg._gram_rank(torch.diag(torch.tensor([1.0, lam2])), args)
        assert abs(got.item() - value) < 1e-6 and flag.item() == unsure, lam2


@pytest.mark.parametrize("cold_iters, cold_fallbacks", [(2, 0), (3, 1), (10, 1)])
def test_power_iteration_class_floor_follows_the_kind_of_steps(cold_iters, cold_fallbacks):
    # with tol=inf only over- or underflow falls back: a float32 sigma_1 of 3e-9 is below the
    # floor of plain steps (about 1e-7: a cold call with a plain step, cold_iters > 2) but far
    # above that of split steps (about 1e-15: cold_iters=2, and every warm call); the gap
    # (rho = 0.01) makes two steps accurate
    W = planted([3.0, 0.03, 0.01], 7, 5, seed=22).float() * 1e-9
    exact = torch.linalg.svdvals(W.double())[0].item()
    tracker = linalg.PowerIteration(cold_iters=cold_iters, tol=math.inf, generator=gen(0))
    for _ in range(3):
        assert abs(tracker(W)[0].item() / exact - 1) < 1e-5
        assert tracker.fallbacks == cold_fallbacks


def test_normalized_entropy_of_two_singular_values():
    # H(p) / log r also for r = 2 (only r = 1 is defined as 1): gamma = 2, s = (2, 1) gives
    # p = (0.8, 0.2)
    got = linalg.effective_rank(torch.tensor([2.0, 1.0], dtype=F64), "normalized_entropy",
                                singular_values=True)
    want = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)
    assert abs(got.item() - want) < 1e-14
    assert linalg.effective_rank(torch.eye(2, dtype=F64), "normalized_entropy").item() == \
        pytest.approx(1.0, abs=1e-14)


# -- cases found by mutation testing (tools/mutate.py) --


def test_power_iteration_class_exact_contraction_of_a_rank_deficient_matrix():
    # the exact fallback stores rho^2 = (sigma_2 / sigma_1)^2 also when the smallest singular
    # value is exactly 0 (rank-deficient W) and sigma_1 != 1: here (1.5 / 2)^2
    W = torch.zeros(4, 3, dtype=F64)
    W[0, 0], W[1, 1] = 2.0, 1.5
    tracker = linalg.PowerIteration(tol=0.0, generator=gen(0))
    sigma = tracker(W)[0]
    assert tracker.fallbacks == 1 and sigma.item() == 2.0
    assert abs(tracker.contraction.item() - (1.5 / 2.0) ** 2) < 1e-15


def test_renyi_below_order_one_keeps_a_value_too_small_to_change_the_sum():
    # with rtol=0 only exact zeros are dropped: sigma_2 / sigma_1 = 1e-20 leaves sum_j sigma_j
    # unchanged in float64, yet p_2 = 1e-20 / (1 + 1e-20) and p_2^alpha = 1e-5 for alpha = 1/4
    alpha = 0.25
    p = [1 / (1 + 1e-20), 1e-20 / (1 + 1e-20)]
    want = sum(q**alpha for q in p) ** (1 / (1 - alpha))  # about 1 + 1.3e-5
    s = torch.tensor([3.0, 3e-20], dtype=F64)
    got = linalg.effective_rank(s, "renyi", alpha=alpha, rtol=0.0, singular_values=True)
    assert abs(got.item() - want) < 1e-12
    # the same from the matrix, on the default path and the exact one
    for exact in (False, True):
        got = linalg.effective_rank(torch.diag(s), "renyi", alpha=alpha, rtol=0.0, exact=exact)
        assert abs(got.item() - want) < 1e-12, exact


def test_power_iteration_class_floor_ignores_batch_dimensions():
    # the floor is (max(n, m) tiny / eps)^(1/4) of each matrix, about 2.1e-8 for a float32 2 x 2,
    # whatever the batch shape: with tol=inf a batch of 2 x 1000 such matrices at sigma_1 = 5e-8
    # keeps its plain power steps (no fallback) and they are accurate
    W = torch.diag(torch.tensor([5e-8, 5e-9])).expand(2, 1000, 2, 2)
    tracker = linalg.PowerIteration(tol=math.inf, generator=gen(0))
    sigma = tracker(W)[0]
    assert sigma.shape == (2, 1000) and tracker.fallbacks == 0
    assert ((sigma.double() / 5e-8 - 1).abs() < 1e-5).all()


@pytest.mark.parametrize("n, m", [(1, 3), (3, 1)])
def test_power_iteration_class_with_tol_inf_falls_back_only_below_the_floor(n, m):
    # tol=inf falls back only where sigma is *below* the floor (max(n, m) tiny / eps)^(1/4) of
    # plain steps: a float64 row or column whose one non-zero entry is f has sigma = |f|
    # exactly, so f at the floor keeps the power steps and one ulp below it is redone exactly
    info = torch.finfo(F64)
    floor = (max(n, m) * info.tiny / info.eps) ** 0.25
    for f, fallbacks in ((floor, 0), (math.nextafter(floor, 0.0), 1)):
        W = torch.zeros(n, m, dtype=F64)
        W[0, 0] = f
        tracker = linalg.PowerIteration(cold_iters=3, tol=math.inf, generator=gen(0))
        assert tracker(W)[0].item() == f and tracker.fallbacks == fallbacks, f


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_power_iteration_class_largest_finite_sigma_needs_no_fallback(dtype):
    # only a non-finite sigma counts as overflow: a 1 x 1 matrix holding the largest finite
    # number, with split steps only (cold_iters=2, then warm calls), is exact as it is
    big = torch.finfo(dtype).max
    W = torch.full((1, 1), big, dtype=dtype)
    tracker = linalg.PowerIteration(cold_iters=2, tol=math.inf, generator=gen(0))
    for _ in range(2):
        assert tracker(W)[0].item() == big and tracker.fallbacks == 0


@pytest.mark.parametrize("cold_iters, fallbacks", [(2, 0), (3, 1)])
def test_power_iteration_class_plain_steps_precede_the_two_measured_ones(cold_iters, fallbacks):
    # a cold call runs cold_iters - 2 plain steps (W^T W x, the square of the scale) before
    # the two measured split steps (Wx, then W^T u: the scale itself): at a float32 sigma_1 of
    # 9e19 the one plain step of cold_iters=3 overflows and the slice is redone exactly, while
    # two split steps need no fallback (tol=inf: only over- or underflow falls back)
    W = planted([3.0, 0.03, 0.01], 7, 5, seed=22).float() * 3e19
    exact = torch.linalg.svdvals(W.double())[0].item()
    tracker = linalg.PowerIteration(cold_iters=cold_iters, tol=math.inf, generator=gen(0))
    assert abs(tracker(W)[0].item() / exact - 1) < 1e-5
    assert tracker.fallbacks == fallbacks


def _spy_on_singular_values(monkeypatch) -> list:
    """The shapes of the matrices effective_rank sends on to its exact singular values."""
    calls = []
    real = linalg._singular_values

    def spy(M, singular_values, exact=False):
        calls.append(tuple(M.shape))
        return real(M, singular_values, exact)

    monkeypatch.setattr(linalg, "_singular_values", spy)
    return calls


def test_effective_rank_gram_path_defers_only_below_tiny_over_eps(monkeypatch):
    # a float64 slice goes on to svdvals where lambda_1 is *below* tiny/eps = 2^-970: at
    # sigma_1 = 2^-485 exactly the Gram eigenvalues are kept, at 2^-486 the slice is redone;
    # the intrinsic rank of diag(1, 1/2) is 1.5 either way
    calls = _spy_on_singular_values(monkeypatch)
    for scale, deferred in ((2.0**-485, False), (2.0**-486, True)):
        calls.clear()
        M = torch.diag(torch.tensor([1.0, 0.5], dtype=F64)) * scale
        assert abs(linalg.effective_rank(M, "intrinsic").item() - 1.5) < 1e-15
        assert bool(calls) == deferred, scale


def test_effective_rank_gram_path_keeps_a_value_its_interval_ends_agree_on(monkeypatch):
    # a slice is redone only where an end of the eigenvalue intervals moves the value by *more*
    # than 1e-4 relatively: the relative threshold count at eps=1 is 0 at both ends (nothing
    # exceeds sigma_1), so the float64 Gram value 0 is kept and svdvals is never called
    calls = _spy_on_singular_values(monkeypatch)
    M = torch.randn(2, 7, 5, dtype=F64, generator=gen(50))
    assert linalg.effective_rank(M, "threshold", eps=1.0).tolist() == [0.0, 0.0]
    assert calls == []


def test_unit_vectors_are_formed_without_under_or_overflow():
    # a float32 vector's norm underflows below about 1e-19 and overflows above 1e19: each
    # normalisation divides by the largest entry first
    W = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    sigma, u, v = linalg.power_iteration(W, 10, v0=torch.tensor([1e-25, 1.0]))
    assert sigma.item() == 1.0 and u.abs().tolist() == [1.0, 0.0] == v.abs().tolist()
    e1 = torch.diag(torch.tensor([1.0, 0.0]))
    for c, dtype in ((1e-25, torch.float32), (1e25, torch.float32), (1e-20, torch.float32),
                     (1e-170, F64), (1e170, F64)):
        D = torch.diag(torch.tensor([2.0, 1.0], dtype=F64) * c).to(dtype)
        got = linalg.spectral_norm_grad(D, v=torch.tensor([1.0, 0.0], dtype=dtype))
        torch.testing.assert_close(got, e1.to(dtype), atol=1e-6, rtol=0)
    tiny_v = torch.tensor([1e-30, 0.0])  # a warm vector of tiny entries is still a direction
    got = linalg.spectral_norm_grad(torch.diag(torch.tensor([2.0, 1.0])), v=tiny_v)
    torch.testing.assert_close(got, e1, atol=0, rtol=0)
    tracker = linalg.PowerIteration(cold_iters=10, warm_iters=10, tol=1e-6, generator=gen(1))
    tracker(W)
    tracker.v = torch.tensor([1e-25, 1.0])  # a warm start almost orthogonal to v_1
    sigma, u, v = tracker(W)
    assert sigma.item() == 1.0 and v.abs().tolist() == [1.0, 0.0] and tracker.fallbacks == 0


def test_effective_rank_refuses_rtol_of_one_or_more():
    # rtol >= 1 would count sigma_1 itself as noise (rank 0 for a non-zero matrix)
    M = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=F64))
    for rtol in (1.0, 2.0):
        for exact in (False, True):
            with pytest.raises(ValueError, match="rtol must be < 1"):
                linalg.effective_rank(M, "rank", rtol=rtol, exact=exact)
    assert linalg.effective_rank(M, "rank", rtol=0.5).item() == 2.0
