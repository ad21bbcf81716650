"""Tests of dlmath.normalizers: cross-checks against torch and the `entmax` package, hand-derived
Jacobians and backward passes against autograd, losses, properties, and edge cases."""

from __future__ import annotations

import math
import sys
import types
from fractions import Fraction
from pathlib import Path
from statistics import NormalDist

import entmax
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import lse
from dlmath import normalizers as N
from dlmath.series import exp_taylor

F64 = torch.float64


def _topk2(x, dim=-1):
    """Top-2 softmax (top-1 on a single class); the shape check is left to the library."""
    n = x.shape[dim] if -x.ndim <= dim < x.ndim else 2
    return N.topk_softmax(x, 1 if n == 1 else 2, dim=dim)

SPARSE = {
    "sparsemax": N.sparsemax,
    "entmax15": N.entmax15,
    "sparsemax-sort": lambda x, dim=-1: N.sparsemax(x, dim=dim, method="sort"),
    "entmax15-sort": lambda x, dim=-1: N.entmax15(x, dim=dim, method="sort"),
    "bisect-1.25": lambda x, dim=-1: N.entmax_bisect(x, 1.25, dim=dim),
    "bisect-3": lambda x, dim=-1: N.entmax_bisect(x, 3.0, dim=dim),
}
ALL_MAPS = {
    "softmax": N.softmax,
    "taylor": N.taylor_softmax,
    "topk": lambda x, dim=-1: _topk2(x, dim),
    "perturb-normal": lambda x, dim=-1: N.perturb_max(x, "normal", 2000, dim=dim),
    **SPARSE,
}


def randn(*shape, seed=0, scale=2.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=dtype)


def ties(*shape, seed=0):
    """Integer-valued logits: many ties, and thresholds landing exactly on a logit."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=g).to(F64)


# ----------------------------------------------------------------------------- reference values


def test_softmax_is_lse_softmax_and_matches_torch():
    x = randn(5, 4, 6)
    assert N.softmax is lse.softmax
    for dim in (-1, 0, 1):
        torch.testing.assert_close(N.softmax(x, dim=dim), torch.softmax(x, dim=dim))


def test_readme_reference_values():
    x = torch.tensor([-2.0, 0.0, 0.5], dtype=F64)
    ref = {
        N.softmax: [0.0486, 0.3592, 0.5922],
        N.sparsemax: [0.0, 0.25, 0.75],
        N.entmax15: [0.0, 0.3260, 0.6740],
    }
    for f, want in ref.items():
        assert torch.allclose(f(x), torch.tensor(want, dtype=F64), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("make", [randn, ties])
def test_sparse_maps_match_entmax_package(dtype, make):
    x = make(300, 7).to(dtype)
    tol = dict(atol=1e-5, rtol=0) if dtype == torch.float32 else dict(atol=1e-12, rtol=0)
    torch.testing.assert_close(N.sparsemax(x), entmax.sparsemax(x), **tol)
    torch.testing.assert_close(N.entmax15(x), entmax.entmax15(x), **tol)
    for alpha in (1.1, 1.5, 2.0, 2.5, 4.0):
        ref = entmax.entmax_bisect(x.to(F64), alpha, n_iter=100).to(dtype)
        if alpha > 2:  # p = t^(1/beta) has infinite slope at the threshold: error ~ eps^(1/beta)
            tol = dict(atol=tol["atol"] + torch.finfo(dtype).eps ** (1 / (alpha - 1)), rtol=0)
        torch.testing.assert_close(N.entmax_bisect(x, alpha), ref, **tol)


def test_sort_and_bisection_agree():
    x = torch.cat([randn(500, 9), ties(500, 9)])
    torch.testing.assert_close(N.entmax_bisect(x, 1.5), N.entmax15(x), atol=1e-13, rtol=0)
    torch.testing.assert_close(N.entmax_bisect(x, 2.0), N.sparsemax(x), atol=1e-13, rtol=0)
    torch.testing.assert_close(N.entmax_bisect_threshold(x, 2.0), N.sparsemax_threshold(x),
                               atol=1e-13, rtol=0)
    torch.testing.assert_close(N.entmax_bisect_threshold(x, 1.5), N.entmax15_threshold(x),
                               atol=1e-13, rtol=0)


@pytest.mark.parametrize("x, want", [
    ([2.0, 0.0], [1.0, 0.0]),
    ([4.0, 2.0, 0.0], [1.0, 0.0, 0.0]),
    ([2.0, 0.0, -1.0], [1.0, 0.0, 0.0]),
    ([math.sqrt(2), math.sqrt(2), 0.0], [0.5, 0.5, 0.0]),
])
def test_entmax15_where_the_posts_reference_code_crashes(x, want):
    """The threshold lands exactly on a sorted logit; the >= rule handles it."""
    x = torch.tensor(x, dtype=F64)
    want = torch.tensor(want, dtype=F64)
    torch.testing.assert_close(N.entmax15(x), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(N.entmax15(x), entmax.entmax15(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(N.entmax_bisect(x, 1.5), want, atol=1e-12, rtol=0)
    # threshold in units of x/2: the largest z = x/2 minus 1 when the top logit is alone
    if want[0] == 1:
        assert abs(N.entmax15_threshold(x).item() - (x[0].item() / 2 - 1)) < 1e-12


def test_thresholds_reproduce_the_maps():
    x = randn(200, 6, seed=3)
    lam = N.sparsemax_threshold(x)
    torch.testing.assert_close(N.sparsemax(x), (x - lam[:, None]).clamp_min(0))
    lam = N.entmax15_threshold(x)
    torch.testing.assert_close(N.entmax15(x), (x / 2 - lam[:, None]).clamp_min(0) ** 2)
    lam = N.entmax_bisect_threshold(x, 3.0)
    p = (2 * x - lam[:, None]).clamp_min(0) ** 0.5
    torch.testing.assert_close(N.entmax_bisect(x, 3.0), p / p.sum(-1, keepdim=True))


def test_bisection_converges_towards_softmax_as_alpha_to_one():
    x = randn(50, 5, seed=4)
    err = (N.entmax_bisect(x, 1.001) - torch.softmax(x, -1)).abs().max().item()
    assert err < 5e-3


# ----------------------------------------------------------------------------- Jacobians


def _autograd_jacobian(f, x):
    return torch.stack([torch.autograd.functional.jacobian(f, row) for row in x])


@pytest.mark.parametrize("name, f, jac", [
    ("softmax", lambda x: torch.softmax(x, -1), N.softmax_jacobian),
    ("sparsemax", N.sparsemax, N.sparsemax_jacobian),
    ("entmax15", N.entmax15, lambda x: N.entmax_jacobian(x, 1.5)),
    ("bisect-1.3", lambda x: N.entmax_bisect(x, 1.3), lambda x: N.entmax_jacobian(x, 1.3)),
    ("bisect-2.5", lambda x: N.entmax_bisect(x, 2.5), lambda x: N.entmax_jacobian(x, 2.5)),
])
def test_jacobians_match_autograd(name, f, jac):
    x = randn(20, 6, seed=5)
    x[:, 4] = x[:, 3]  # ties away from the threshold (generic values never hit it)
    torch.testing.assert_close(jac(x), _autograd_jacobian(f, x), atol=1e-10, rtol=0)


def test_sparsemax_jacobian_formula_and_softmax_size_identity():
    x = randn(40, 5, seed=6)
    s = (N.sparsemax(x) > 0).to(F64)
    J = torch.diag_embed(s) - s[:, :, None] * s[:, None, :] / s.sum(-1)[:, None, None]
    torch.testing.assert_close(N.sparsemax_jacobian(x), J)
    p = torch.softmax(x, -1)
    torch.testing.assert_close(0.5 * N.softmax_jacobian(x).abs().sum((-1, -2)), 1 - (p * p).sum(-1))
    torch.testing.assert_close(N.entmax_jacobian(x, 1.0), N.softmax_jacobian(x))
    torch.testing.assert_close(N.softmax_jacobian(x, tau=0.5),
                               _autograd_jacobian(lambda r: torch.softmax(r / 0.5, -1), x))


@pytest.mark.parametrize("f", [
    N.sparsemax, N.entmax15,
    lambda x: N.entmax_bisect(x, 1.25), lambda x: N.entmax_bisect(x, 2.0),
    lambda x: N.entmax_bisect(x, 3.0),
])
def test_gradcheck_hand_derived_backward(f):
    x = randn(4, 5, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,), eps=1e-7, atol=1e-6)
    x3 = randn(2, 3, 4, seed=8).requires_grad_()  # batched, and along dim=1
    assert torch.autograd.gradcheck(lambda t: f(t.transpose(1, 2)), (x3,), eps=1e-7, atol=1e-6)


# ----------------------------------------------------------------------------- losses


def _grad(loss_fn, x):
    x = x.clone().requires_grad_()
    loss_fn(x).sum().backward()
    return x.grad


@pytest.mark.parametrize("alpha, p_of", [
    (1.0, lambda x: torch.softmax(x, -1)), (1.5, N.entmax15), (2.0, N.sparsemax),
    (1.7, lambda x: N.entmax_bisect(x, 1.7)),
])
def test_fenchel_young_losses(alpha, p_of):
    x, t = randn(500, 6, seed=9), torch.arange(500) % 6
    onehot = torch.nn.functional.one_hot(t, 6).to(F64)
    loss = N.entmax_loss(x, t, alpha)
    assert loss.min() >= -1e-12
    torch.testing.assert_close(_grad(lambda z: N.entmax_loss(z, t, alpha), x), p_of(x) - onehot)
    perfect = torch.tensor([[50.0, 0.3, -1.0]], dtype=F64)
    assert abs(N.entmax_loss(perfect, torch.tensor([0]), alpha).item()) < 1e-12


def test_fenchel_young_gradient_for_any_batch_shape():
    # the hand-written backward broadcasts the incoming gradient over the classes: p - e_t for
    # a single example (a scalar loss) and for a 2 x 3 batch; p from the `entmax` package
    x = randn(2, 3, 5, seed=66)
    t = torch.arange(6).reshape(2, 3) % 5
    onehot = torch.nn.functional.one_hot(t, 5).to(F64)
    for alpha, p_of in ((1.0, lambda z: torch.softmax(z, -1)), (1.5, entmax.entmax15),
                        (2.0, entmax.sparsemax)):
        p = p_of(x.reshape(6, 5)).reshape(2, 3, 5)
        g = _grad(lambda z, a=alpha: N.entmax_loss(z, t, a), x)
        torch.testing.assert_close(g, p - onehot)
        g1 = _grad(lambda z, a=alpha: N.entmax_loss(z, t[1, 2], a), x[1, 2])
        torch.testing.assert_close(g1, p[1, 2] - onehot[1, 2])


def test_loss_cross_checks():
    x, t = randn(300, 5, seed=10), torch.arange(300) % 5
    torch.testing.assert_close(N.entmax_loss(x, t, 1.0),
                               torch.nn.functional.cross_entropy(x, t, reduction="none"))
    torch.testing.assert_close(N.sparsemax_loss(x, t), entmax.sparsemax_loss(x, t))
    torch.testing.assert_close(N.entmax_loss(x, t, 1.5), entmax.entmax15_loss(x, t))
    # the chapter's two forms of the sparsemax loss
    p, lam = N.sparsemax(x), N.sparsemax_threshold(x)
    xt = x.gather(-1, t[:, None]).squeeze(-1)
    onehot = torch.nn.functional.one_hot(t, 5).to(F64)
    post = 0.5 - xt + 0.5 * torch.where(p > 0, x**2 - lam[:, None] ** 2, 0).sum(-1)
    fy = 0.5 * ((onehot - x) ** 2).sum(-1) - 0.5 * ((p - x) ** 2).sum(-1)
    torch.testing.assert_close(N.sparsemax_loss(x, t), post)
    torch.testing.assert_close(N.sparsemax_loss(x, t), fy)
    torch.testing.assert_close(N.tsallis_entropy(p, 2.0), 0.5 * (1 - (p * p).sum(-1)))


def test_sparsemax_loss_is_shift_invariant_for_large_logits():
    x, t = randn(50, 4, seed=11), torch.arange(50) % 4
    torch.testing.assert_close(N.sparsemax_loss(x + 1e6, t), N.sparsemax_loss(x, t), atol=1e-8,
                               rtol=0)


def test_topk_softmax_and_loss():
    x = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0], dtype=F64)
    g = _grad(lambda z: N.topk_softmax_loss(z, torch.tensor(3), 2), x)
    torch.testing.assert_close(g, torch.tensor([0.7311, 0.2689, 0, -1, 0], dtype=F64), atol=1e-4,
                               rtol=0)
    xb = randn(100, 7, seed=12)
    torch.testing.assert_close(N.topk_softmax(xb, 7), torch.softmax(xb, -1))
    p = N.topk_softmax(xb, 3)
    assert ((p > 0).sum(-1) == 3).all()
    t = p.argmax(-1)
    torch.testing.assert_close(N.topk_softmax_loss(xb, t, 3), -torch.log(p.gather(-1, t[:, None])
                                                                         .squeeze(-1)))
    tie = torch.tensor([1.0, 3.0, 1.0, 1.0, 0.0])
    assert N.topk_softmax(tie, 2).tolist()[2:] == [0.0, 0.0, 0.0]  # lower index kept
    assert N.topk_softmax(tie, 2)[0] > 0


def test_topk_breaks_long_runs_of_ties_towards_the_lower_index():
    # rows of 64 logits in {0, 1, 2}: every boundary falls inside a run of ties (a CPU sort
    # that is not stable reorders such runs from about 50 entries on); the kept set is the k
    # largest logits, lower index first among equals, by a plain Python sort
    g = torch.Generator().manual_seed(56)
    x = torch.cat([torch.randint(0, 3, (6, 64), generator=g), torch.zeros(1, 64)]).to(F64)
    order = [sorted(range(64), key=lambda i, r=r: (-r[i], i)) for r in x.tolist()]
    for k in (5, 20, 40):
        kept = torch.zeros(x.shape, dtype=torch.bool)
        for row, idx in enumerate(order):
            kept[row, idx[:k]] = True
        e = torch.where(kept, x.exp(), 0.0)
        torch.testing.assert_close(N.topk_softmax(x, k), e / e.sum(-1, keepdim=True), atol=0,
                                   rtol=1e-14)
        # the loss uses the same set: a target left out of it is pushed up
        t = torch.tensor([idx[-1] for idx in order])
        torch.testing.assert_close(N.topk_softmax_loss(x, t, k),
                                   e.sum(-1).log() - x.gather(-1, t[:, None]).squeeze(-1))


def test_am_softmax_loss():
    g = torch.Generator().manual_seed(13)
    z, c = torch.randn(20, 4, generator=g, dtype=F64), torch.randn(6, 4, generator=g, dtype=F64)
    t = torch.arange(20) % 6
    cos = torch.nn.functional.normalize(z, dim=-1) @ torch.nn.functional.normalize(c, dim=-1).T
    m, tau = 0.35, 1 / 30
    logits = cos / tau
    logits[torch.arange(20), t] -= m / tau
    torch.testing.assert_close(N.am_softmax_loss(z, c, t, m, tau),
                               torch.nn.functional.cross_entropy(logits, t, reduction="none"))
    assert (N.am_softmax_loss(z, c, t, 0.3, 0.1) > N.am_softmax_loss(z, c, t, 0.0, 0.1)).all()
    with pytest.raises(ValueError, match="non-zero"):
        N.am_softmax_loss(torch.zeros(1, 4), c, torch.tensor([0]))
    with pytest.raises(ValueError, match="centers"):
        N.am_softmax_loss(z, c[:, :3], t)


@pytest.mark.parametrize("normalizer", [N.softmax, N.sparsemax, N.entmax15])
def test_stop_gradient_loss_has_gradient_p_minus_onehot(normalizer):
    x, t = randn(200, 5, seed=14), torch.arange(200) % 5
    onehot = torch.nn.functional.one_hot(t, 5).to(F64)
    g = _grad(lambda z: N.stop_gradient_loss(z, t, normalizer), x)
    assert (g - (normalizer(x) - onehot)).abs().max() < 1e-15
    # the printed variant (p - onehot) . sg(x) has a different gradient, J^T x
    printed = _grad(lambda z: ((normalizer(z) - onehot) * z.detach()).sum(-1), x)
    assert (printed - g).abs().max() > 0.1


# ----------------------------------------------------------------------------- Taylor, Perturb


def test_taylor_softmax():
    p = N.taylor_softmax(torch.tensor([-3.0, -1.0, 0.0], dtype=F64))
    torch.testing.assert_close(p, torch.tensor([0.625, 0.125, 0.25], dtype=F64))
    x = randn(30, 5, seed=15)
    for k in (2, 4, 6):
        w = exp_taylor(x, k)
        torch.testing.assert_close(N.taylor_softmax(x, k), w / w.sum(-1, keepdim=True))
    big = torch.tensor([1e30, -2e30, 0.0])  # f_2 overflows float32 here; the scaled form does not
    torch.testing.assert_close(N.taylor_softmax(big), torch.tensor([0.2, 0.8, 0.0]))
    with pytest.raises(ValueError, match="even"):
        N.taylor_softmax(x, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_taylor_softmax_half_precision_on_batches(dtype):
    # half logits are computed in float32 along the normalised dim, batched: each row of
    # f_2(x) / sum f_2(x), f_2(t) = 1 + t + t^2/2, in float64 from the same (rounded) logits
    x = randn(4, 5, seed=57, dtype=torch.float32).to(dtype)
    xd = x.double()
    w = 1 + xd + xd**2 / 2
    want = w / w.sum(-1, keepdim=True)
    for got in (N.taylor_softmax(x), N.taylor_softmax(x.T, dim=0).T):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, atol=1e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_perturb_max_half_precision(dtype):
    """The normal cdf has no half kernels on a CPU: computed in float32 and cast back."""
    x = randn(3, 4, seed=48, dtype=torch.float32)
    for noise in ("normal", "gumbel"):
        p = N.perturb_max(x.to(dtype), noise, 500, dim=0)
        assert p.dtype == dtype
        torch.testing.assert_close(p, N.perturb_max(x.to(dtype).float(), noise, 500, dim=0)
                                   .to(dtype), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_perturb_max_half_precision_keeps_any_shape(dtype):
    # half logits go through float32 in their own layout, whatever the number of dimensions:
    # a single row, and 2 x 3 rows along dim 1, against the quadrature in plain Python
    cdf, inv = (lambda e: math.exp(-math.exp(-e))), (lambda u: -math.log(-math.log(u)))
    n_grid = 5
    eps = [inv((k + 0.5) / n_grid) for k in range(n_grid)]

    def quadrature(row):
        w = [sum(math.prod(cdf(xi - xj + e) for j, xj in enumerate(row) if j != i) for e in eps)
             for i, xi in enumerate(row)]
        return [v / sum(w) for v in w]

    x = randn(2, 4, 3, seed=63, dtype=torch.float32).to(dtype)
    want = torch.tensor([[quadrature(x[a, :, b].tolist()) for b in range(3)] for a in range(2)],
                        dtype=F64).transpose(1, 2)
    for xs, dim, ref in ((x, 1, want), (x[0, :, 0], 0, want[0, :, 0])):
        got = N.perturb_max(xs, "gumbel", n_grid, dim=dim)
        assert got.dtype == dtype and got.shape == xs.shape
        torch.testing.assert_close(got.double(), ref, atol=1e-2, rtol=0)


def test_perturb_max():
    x = randn(10, 5, seed=16)
    torch.testing.assert_close(N.perturb_max(x, "gumbel"), torch.softmax(x, -1), atol=1e-6,
                               rtol=0)
    d = torch.linspace(-3, 3, 13, dtype=F64)
    x2 = torch.stack([d, torch.zeros_like(d)], -1)
    probit = torch.special.ndtr(d / math.sqrt(2))
    torch.testing.assert_close(N.perturb_max(x2, "normal")[:, 0], probit, atol=1e-6, rtol=0)
    pn = N.perturb_max(x, "normal", 4000)
    torch.testing.assert_close(N.perturb_max(x + 7.5, "normal", 4000), pn, atol=1e-12, rtol=0)
    # Monte Carlo estimate of Pr[argmax(x + eps) = i]
    g = torch.Generator().manual_seed(17)
    eps = torch.randn(200_000, 5, generator=g, dtype=F64)
    mc = torch.nn.functional.one_hot((x[0] + eps).argmax(-1), 5).to(F64).mean(0)
    assert (mc - pn[0]).abs().max() < 5e-3


# ----------------------------------------------------------------------------- properties


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-20_000, 20_000), min_size=1, max_size=8), st.integers(-100, 100))
def test_simplex_monotone_shift_invariant(values, shift):
    """Logits on a 1e-3 grid, so that a shift keeps ties tied and distinct values distinct."""
    x = torch.tensor(values, dtype=F64) / 1000
    bigger = x[:, None] > x[None, :]
    for name, f in ALL_MAPS.items():
        p = f(x)
        assert (p >= 0).all() and abs(p.sum().item() - 1) < 1e-9, name
        if name == "taylor":  # neither monotone nor shift-invariant (see the chapter)
            continue
        assert (p[:, None] >= p[None, :] - 1e-9)[bigger].all(), name  # weakly monotone
        if name != "topk":  # top-k splits tied logits at its boundary
            tied = x[:, None] == x[None, :]
            assert ((p[:, None] - p[None, :]).abs() < 1e-9)[tied].all(), name
        if name != "perturb-normal":  # its grid moves with the shift: checked separately
            torch.testing.assert_close(f(x + shift), p, atol=1e-9, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=8))
def test_sparsemax_is_the_projection(values):
    """Variational inequality of the projection: (x - p).(q - p) <= 0 for all q in the simplex."""
    x = torch.tensor(values, dtype=F64)
    p = N.sparsemax(x)
    r = x - p
    assert r.max() <= (r * p).sum() + 1e-9
    assert (p > 0).sum() >= 1


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", list(ALL_MAPS))
def test_infinite_logits(name):
    f = ALL_MAPS[name]
    x = torch.tensor([[1.0, math.inf, 0.0, math.inf], [3.0, -math.inf, 1.0, 0.0]], dtype=F64)
    p = f(x)
    torch.testing.assert_close(p[0], torch.tensor([0, 0.5, 0, 0.5], dtype=F64))
    if name == "taylor":  # an even polynomial: -inf is as certain as +inf
        torch.testing.assert_close(p[1], torch.tensor([0, 1.0, 0, 0], dtype=F64))
    else:
        assert p[1, 1] == 0
        torch.testing.assert_close(p[1], f(torch.tensor([3.0, -1e300, 1.0, 0.0], dtype=F64)))
    lse_p = lse.softmax(x[:1])
    torch.testing.assert_close(p[:1], lse_p)
    with pytest.raises(ValueError, match="-inf everywhere"):
        f(torch.full((2, 3), -math.inf))


def test_losses_with_infinite_logits():
    x = torch.tensor([1.0, math.inf, 0.0, math.inf], dtype=F64)
    for alpha, ent in ((1.0, math.log(2)), (1.5, (1 - 2 * 0.5**1.5) / 0.75), (2.0, 0.25)):
        assert N.entmax_loss(x, torch.tensor(1), alpha).item() == pytest.approx(ent)
        assert N.entmax_loss(x, torch.tensor(0), alpha).item() == math.inf
    assert N.topk_softmax_loss(x, torch.tensor(3), 2).item() == pytest.approx(math.log(2))
    assert N.topk_softmax_loss(x, torch.tensor(0), 2).item() == math.inf
    y = torch.tensor([2.0, -math.inf, 0.0], dtype=F64)
    assert N.sparsemax_loss(y, torch.tensor(1)).item() == math.inf
    assert N.sparsemax_loss(y, torch.tensor(0)).item() == 0.0


@pytest.mark.parametrize("name", list(ALL_MAPS))
def test_bad_input(name):
    f = ALL_MAPS[name]
    with pytest.raises(TypeError, match="floating"):
        f(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="empty"):
        f(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="NaN"):
        f(torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="dim"):
        f(torch.zeros(3), dim=1)


def test_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="alpha"):
        N.entmax_bisect(x, 1.0)
    with pytest.raises(ValueError, match="k must be <= 3"):
        N.topk_softmax(x, 4)
    with pytest.raises(ValueError, match="noise"):
        N.perturb_max(x, "laplace")
    with pytest.raises(TypeError, match="target"):
        N.sparsemax_loss(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        N.sparsemax_loss(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        N.sparsemax_loss(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="finite"):
        N.stop_gradient_loss(torch.tensor([0.0, math.inf]), torch.tensor(0))


@pytest.mark.parametrize("name", list(ALL_MAPS))
def test_dtype_device_and_dim_are_kept(name):
    f = ALL_MAPS[name]
    x = randn(3, 5, 4, seed=18, dtype=torch.float32)
    p = f(x, dim=1)
    assert p.dtype == torch.float32 and p.device == x.device and p.shape == x.shape
    torch.testing.assert_close(p, f(x.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(p.sum(1), torch.ones(3, 4))


def test_single_class_is_certain():
    for f in ALL_MAPS.values():
        assert f(torch.tensor([[-5.0], [7.0]])).flatten().tolist() == [1.0, 1.0]


# ----------------------------------------------------------------------------- sort-free solver


def _hard_logits(dtype):
    """Gaussian, tied and widely spread logits, with -inf entries."""
    x = torch.cat([randn(400, 9, seed=30), ties(400, 9, seed=31),
                   randn(200, 9, seed=32, scale=50.0), randn(50, 9, seed=33, scale=0.01)])
    x[::7, 3] = -math.inf
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_newton_equals_sort(dtype):
    x = _hard_logits(dtype)
    tol = dict(atol=2e-6, rtol=0) if dtype == torch.float32 else dict(atol=1e-13, rtol=0)
    # float32: both paths round x - threshold, an error that grows with the logits' size
    scale = 1 + x.abs().nan_to_num(posinf=0, neginf=0).amax(-1, keepdim=True)
    for f, thr in ((N.sparsemax, N.sparsemax_threshold), (N.entmax15, N.entmax15_threshold)):
        fast, exact = f(x, method="newton"), f(x, method="sort")
        if dtype == F64:
            torch.testing.assert_close(fast, exact, **tol)
            torch.testing.assert_close(thr(x, method="newton"), thr(x, method="sort"), **tol)
        else:
            ref = f(x.double(), method="sort")
            bound = 16 * torch.finfo(dtype).eps * scale
            assert ((fast.double() - ref).abs() <= bound).all()
            assert ((thr(x, method="newton").double() - thr(x.double(), method="sort")).abs()
                    <= bound.squeeze(-1)).all()
        if dtype == F64:  # the same exact zeros; where a tie lands exactly on the threshold
            # sorting leaves a rounding residue (~5e-32) that the exact finish does not
            assert torch.equal(fast == 0, (exact == 0) | (exact < 1e-30))
    alpha2 = N.entmax(x, 2.0)
    torch.testing.assert_close(alpha2, N.sparsemax(x, method="sort"), **tol)
    wide = randn(20, 3000, seed=36, dtype=dtype)  # long rows, large supports
    # near-uniform rows: the support repeats for a step before it is final, so the closed-form
    # finish of alpha = 1.5 must be checked (without the check this case is off by 5e-4)
    flat = randn(2000, 50, seed=37, scale=0.1, dtype=dtype)
    for f in (N.sparsemax, N.entmax15):
        torch.testing.assert_close(f(wide), f(wide, method="sort"), **tol)
        torch.testing.assert_close(f(flat), f(flat, method="sort"), **tol)


@pytest.mark.parametrize("alpha", [1.1, 1.125, 1.25, 1.75, 2.0])
def test_newton_general_alpha_against_float64(alpha):
    x = _hard_logits(torch.float32)
    ref = N.entmax_bisect(x.double(), alpha, n_iter=200)
    p = N.entmax(x, alpha)
    assert p.dtype == torch.float32
    assert (p.double() - ref).abs().max().item() <= 1e-6
    assert torch.equal(p[ref == 0], torch.zeros_like(p[ref == 0]))  # exact zeros
    # and the bisection variant through the same function
    torch.testing.assert_close(N.entmax(x, alpha, method="bisect"), N.entmax_bisect(x, alpha))


def test_newton_general_alpha_renormalises_on_the_general_path():
    # a +inf logit sends the whole batch down the general path (standardised logits); its
    # Newton rows are renormalised there as well ("stop when the Newton step is below rounding
    # and renormalise"): in float32 near alpha = 1, p = u^(1/beta) amplifies the threshold's
    # rounding by 1/beta, and the sums would be off by 5e-6. Reference: the `entmax` package
    x = randn(200, 9, seed=64, scale=3.0)
    certain = torch.tensor([[math.inf] + [0.0] * 8], dtype=F64)
    for alpha in (1.06, 1.1):
        p = N.entmax(torch.cat([x, certain]).float(), alpha)
        assert p[-1].tolist() == [1.0] + [0.0] * 8
        ref = entmax.entmax_bisect(x, alpha, n_iter=100)
        assert (p[:-1].double().sum(-1) - 1).abs().max().item() <= 1e-6
        assert (p[:-1].double() - ref).abs().max().item() <= 1e-6


def test_newton_backward_is_the_hand_derived_one():
    x = randn(3, 6, seed=34).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: N.entmax(t, 1.3), (x,))
    assert torch.autograd.gradcheck(lambda t: N.sparsemax(t, method="newton"), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_logits_never_nan(dtype):
    # the `entmax` package's open issue #30: its bisection returns NaN on these inputs
    big = 6e4 if dtype == torch.float16 else 1e30
    x = torch.cat([randn(64, 10, seed=35, scale=3e3, dtype=torch.float32).clamp(-big, big),
                   torch.tensor([[big, -big] * 5, [big] * 10, [-big] * 9 + [0.0]])]).to(dtype)
    maps = {"sparsemax": N.sparsemax, "entmax15": N.entmax15,
            "sparsemax-sort": lambda t: N.sparsemax(t, method="sort"),
            "entmax15-sort": lambda t: N.entmax15(t, method="sort"),
            "newton-1.25": lambda t: N.entmax(t, 1.25),
            "bisect-1.5": lambda t: N.entmax_bisect(t, 1.5),
            "bisect-3": lambda t: N.entmax_bisect(t, 3.0)}
    for name, f in maps.items():
        p = f(x)
        assert p.dtype == dtype and not torch.isnan(p).any(), name
        torch.testing.assert_close(p.float(), f(x.float()).to(dtype).float(), atol=1e-2,
                                   rtol=0, msg=name)
        torch.testing.assert_close(p.float().sum(-1), torch.ones(x.shape[0]), atol=2e-2,
                                   rtol=0, msg=name)


def test_solver_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="method"):
        N.sparsemax(x, method="bisect")
    with pytest.raises(ValueError, match="method"):
        N.entmax(x, 1.5, method="heap")
    with pytest.raises(ValueError, match="alpha <= 2"):
        N.entmax(x, 2.5, method="newton")
    with pytest.raises(ValueError, match="sort"):
        N.entmax(x, 1.25, method="sort")
    with pytest.raises(ValueError, match="method"):
        N.sparsemax_threshold(x, method="bisect")
    y = randn(5, 7, seed=38)
    torch.testing.assert_close(N.entmax(y, 2.5), N.entmax_bisect(y, 2.5))  # auto: bisect
    # every solver entmax picks validates: bisection (asked for, auto for alpha > 2, or the
    # fallback where Newton's powers would overflow) as much as the others
    nan, dead = torch.tensor([[0.0, math.nan]]), torch.full((1, 3), -math.inf)
    for alpha, method in ((2.5, "auto"), (1.5, "bisect"), (1.001, "auto"), (1.5, "auto"),
                          (2.0, "sort"), (1.25, "newton")):
        with pytest.raises(ValueError, match="NaN"):
            N.entmax(nan, alpha, method=method)
        with pytest.raises(ValueError, match="-inf everywhere"):
            N.entmax(dead, alpha, method=method)


def test_exact_maps_take_only_the_exact_solvers():
    # sparsemax, entmax15 and their thresholds are exact: "newton", "sort" or "auto", and
    # "bisect" (which entmax and entmax_bisect take) is refused like any unknown name
    x = randn(2, 5, seed=59)
    for f in (N.sparsemax, N.entmax15, N.sparsemax_threshold, N.entmax15_threshold):
        for method in ("bisect", "heap"):
            with pytest.raises(ValueError, match="method"):
                f(x, method=method)
        for method in ("auto", "newton", "sort"):
            assert not torch.isnan(f(x, method=method)).any()


def test_auto_method_by_device():
    """"auto" sorts on a CUDA device (where these calls are bound by kernel launches) and runs
    Newton elsewhere; alpha > 2 bisects everywhere."""
    cpu, cuda = torch.zeros(1), types.SimpleNamespace(is_cuda=True)
    for alpha in (1.5, 2.0):
        assert N._method("auto", cpu, alpha) == "newton"
        assert N._method("auto", cuda, alpha) == "sort"
    assert N._method("auto", cuda, 1.25) == N._method("auto", cpu, 1.25) == "newton"
    assert N._method("auto", cuda, 3.0) == N._method("auto", cpu, 3.0) == "bisect"
    assert N._method("sort", cpu, 2.0) == "sort" and N._method("newton", cuda, 2.0) == "newton"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_method_on_cuda_is_the_sort_path():
    x = randn(64, 300, seed=39, dtype=torch.float32).cuda()
    for f in (N.sparsemax, N.entmax15):
        assert torch.equal(f(x), f(x, method="sort"))
        torch.testing.assert_close(f(x).cpu(), f(x.cpu()), atol=2e-6, rtol=0)


def test_auto_method_on_a_cuda_device_sorts_for_each_exact_map(monkeypatch):
    """Each map asks the dispatch for its own alpha: simulated on a CPU by a dispatch that sees
    a CUDA tensor (as above), "auto" must then reach the sort for alpha in {1.5, 2}."""
    cuda, dispatch = types.SimpleNamespace(is_cuda=True), N._method
    monkeypatch.setattr(N, "_method", lambda method, x, alpha, exact_only=False:
                        dispatch(method, cuda, alpha, exact_only))
    sorts = _count_calls(monkeypatch, "_sort_threshold")
    x = randn(4, 6, seed=62)
    for f in (N.sparsemax, N.entmax15, lambda t: N.entmax(t, 1.5), lambda t: N.entmax(t, 2.0)):
        before = len(sorts)
        f(x)
        assert len(sorts) == before + 1, f


def _prefix_rule_threshold(row, alpha):
    """The threshold by the textbook rule, in float64 Python: lambda_K for the largest K with
    w_(K) >= lambda_K (w = (alpha - 1) x, sorted descending; finite entries only)."""
    w = sorted(((alpha - 1) * v for v in row if v != -math.inf), reverse=True)
    best = None
    for k in range(1, len(w) + 1):
        top = w[:k]
        mean = sum(top) / k
        if alpha == 2.0:
            lam = mean - 1 / k
        else:
            var = sum(t * t for t in top) / k - mean * mean
            lam = mean - math.sqrt(max(1 / k - var, 0.0))
        if w[k - 1] >= lam:
            best = lam
    return best


@pytest.mark.parametrize("alpha, thr", [(2.0, N.sparsemax_threshold),
                                        (1.5, N.entmax15_threshold)])
def test_sort_threshold_is_the_prefix_rule(alpha, thr):
    """The sort path takes the largest candidate on the support (and, for alpha = 2, the
    largest of all), not a count of the support: the same threshold as the textbook rule."""
    x = torch.cat([randn(60, 9, seed=44), ties(60, 9, seed=45), randn(20, 9, seed=46, scale=0.05),
                   torch.tensor([[2.0, 0.0] + [-math.inf] * 7, [1.0] * 9])])
    x[::5, 2] = -math.inf
    got = thr(x, method="sort")
    want = torch.tensor([_prefix_rule_threshold(r.tolist(), alpha) for r in x], dtype=F64)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_sort_path_dispatch_is_lean():
    """On a GPU these calls are bound by kernel launches (the committed H100 results: 10-15 us
    per aten op at d <= 1024, for every solver), so the sort path, the default there, must ask
    for no more ops than the `entmax` package's sort, and synchronise once (its validation)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from harness import dispatch_counts

    x = randn(64, 300, seed=47, dtype=torch.float32)
    # alpha = 1.5 may take 2 ops more: its running sums are cast to float64 and the threshold
    # back, which exactness needs (test_entmax15_sort_is_exact_on_long_supports)
    for ours, pkg, extra in ((N.sparsemax, entmax.sparsemax, 0), (N.entmax15, entmax.entmax15, 2)):
        mine = dispatch_counts(lambda f=ours: f(x, method="sort"))
        theirs = dispatch_counts(lambda f=pkg: f(x))
        assert mine["host_syncs"] == 1 and mine["aten_ops"] <= theirs["aten_ops"] + extra, (
            mine, theirs)
    # the counter sees what it should: a sync per .item(), none for a view
    assert dispatch_counts(lambda: x.sum().item()) == {"aten_ops": 2, "host_syncs": 1}
    assert dispatch_counts(lambda: x.view(-1)) == {"aten_ops": 0, "host_syncs": 0}


def test_newton_path_ends_in_a_few_iterations():
    """The sort-free solver is the CPU default because it is cheap: for alpha in {1.5, 2} the
    iteration stops as soon as the support repeats (at the closed-form root), in one step when
    the support's entries are equal, and for other alpha once the Newton step is below
    rounding. Counted like the sort path above: a few iterations of a few ops each (at most
    119 here), where running the loop to its cap of 200 takes 600-2000 ops."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from harness import dispatch_counts

    rows = randn(64, 9, seed=60)
    equal = torch.tensor([[1.0, 1.0, 1.0, -3.0, -5.0], [2.0, 2.0, -1.0, -1.5, -9.0]], dtype=F64)
    maps = {"sparsemax": lambda t: N.sparsemax(t, method="newton"),
            "entmax15": lambda t: N.entmax15(t, method="newton"),
            "entmax-1.25": lambda t: N.entmax(t, 1.25), "entmax-1.75": lambda t: N.entmax(t, 1.75)}
    for x in (rows, rows.float(), equal):
        for name, f in maps.items():
            counts = dispatch_counts(lambda f=f, x=x: f(x))
            assert counts["aten_ops"] <= 150 and counts["host_syncs"] <= 10, (name, counts)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fast_sort_path_equals_the_general_one(dtype):
    """The sort path validates through the row maxima and works on x - max; the general path
    (standardised logits, three checks) is what it replaces, and what +inf rows, or maxima whose
    sum overflows, fall back to."""
    x = _hard_logits(dtype)
    big = torch.full((3, 9), torch.finfo(dtype).max / 2, dtype=dtype)  # the maxima's sum overflows
    big[:, 4:] = 0.0
    inf = torch.tensor([[1.0, math.inf, 0.0, -math.inf, math.inf] + [0.0] * 4], dtype=dtype)
    for alpha in (1.5, 2.0):
        for rows in (x, big, torch.cat([x[:5], inf])):
            p, lam = N._fast_parts(rows.clone(), alpha, "sort")
            p0, lam0 = N._entmax_parts(rows.clone(), alpha, "sort", None)
            torch.testing.assert_close(p, p0, atol=0, rtol=0)
            torch.testing.assert_close(lam, lam0, atol=0, rtol=4 * torch.finfo(dtype).eps)


# ------------------------------------------------------------------------ fast paths, long rows


def _count_calls(monkeypatch, name):
    """Record the last-dim sizes that ``N.<name>`` is called with (the call still runs)."""
    seen, orig = [], getattr(N, name)

    def spy(z, *args, **kwargs):
        seen.append(z.shape[-1])
        return orig(z, *args, **kwargs)

    monkeypatch.setattr(N, name, spy)
    return seen


def _long_rows(dtype, n=4100):
    """Rows long enough for the warm start (n is not a multiple of the group size, so a tail
    joins the group maxima): Gaussian, tied, spread and near-flat rows, a huge offset, ties at
    the top, and whole groups of -inf."""
    x = torch.cat([randn(3, n, seed=40), ties(3, n, seed=41), randn(2, n, seed=42, scale=50.0),
                   randn(2, n, seed=43, scale=0.01)])
    x[1] += 1e6
    x[2, :7] = x[2].max()
    x[::3, ::N._GROUP] = -math.inf
    x[0, : 3 * N._GROUP] = -math.inf
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_newton_long_rows_equal_sort(dtype, monkeypatch):
    warm = _count_calls(monkeypatch, "_left_step")
    x = _long_rows(dtype)
    for f, thr in ((N.sparsemax, N.sparsemax_threshold), (N.entmax15, N.entmax15_threshold)):
        fast, exact = f(x), f(x.double(), method="sort")
        if dtype == F64:
            torch.testing.assert_close(fast, exact, atol=1e-13, rtol=0)
            torch.testing.assert_close(thr(x, method="newton"), thr(x, method="sort"), atol=1e-9,
                                       rtol=1e-15)  # 1e6 offset: the threshold is ~1e6
        else:  # both round x - threshold; the offset row is exact after the shift by the max
            assert (fast.double() - exact).abs().max() <= 16 * torch.finfo(dtype).eps
        assert torch.equal(fast == 0, (exact == 0) | (exact < 1e-30))  # the same exact zeros
        assert not torch.isnan(fast).any()
        # along dim 0 (non-contiguous rows) and with batch dimensions
        torch.testing.assert_close(f(x.T, dim=0), fast.T, atol=0, rtol=0)
        torch.testing.assert_close(f(x.reshape(2, 5, -1)), fast.reshape(2, 5, -1), atol=0, rtol=0)
    assert warm  # the group-maxima warm start ran


@pytest.mark.parametrize("alpha", [1.25, 1.6])
@pytest.mark.parametrize("n", [2048, 8192])  # candidates packed by prefix count / by top-K
def test_newton_general_alpha_long_rows(alpha, n, monkeypatch):
    """Long sparse rows are solved on their candidates only, dense rows on the full row; both
    within 1e-6 of float64 bisection, with its exact zeros."""
    assert (n < N._PACK_MAX) == (n == 2048)
    sizes = _count_calls(monkeypatch, "_solve")
    sparse = randn(6, n, seed=44, scale=3.0, dtype=torch.float32)
    sparse[::2, ::5] = -math.inf
    dense = randn(3, n, seed=45, scale=0.01, dtype=torch.float32)
    for x in (sparse, dense):
        ref = N.entmax_bisect(x.double(), alpha, n_iter=200)
        p = N.entmax(x, alpha)
        assert (p.double() - ref).abs().max().item() <= 1e-6
        assert torch.equal(p[ref == 0], torch.zeros_like(p[ref == 0]))
        assert ((p > 0) == (ref > 0)).all()
        # the backward pass uses p only: the same gradient as through bisection
        xr = x.clone().requires_grad_()
        w = randn(*x.shape, seed=46, dtype=torch.float32)
        (g,) = torch.autograd.grad((N.entmax(xr, alpha) * w).sum(), xr)
        (gb,) = torch.autograd.grad((N.entmax_bisect(xr, alpha) * w).sum(), xr)
        torch.testing.assert_close(g, gb, atol=2e-5, rtol=0)
    assert min(sizes) < n // 8 and max(sizes) == n  # the packed path and the full path both ran


def test_newton_general_alpha_on_a_single_row(monkeypatch):
    """A 1-d input is one row, on every path: short, and long sparse rows whose candidates are
    packed by prefix count (n < _PACK_MAX) or by top-K. Reference: the `entmax` package's
    bisection, in float64."""
    sizes = _count_calls(monkeypatch, "_solve")
    for n in (7, 2048, 8192):
        x = randn(n, seed=61, scale=3.0, dtype=torch.float32)
        x[::5] = -math.inf
        for alpha in (1.25, 1.6):
            p = N.entmax(x, alpha)
            ref = entmax.entmax_bisect(x.double(), alpha, n_iter=100)
            assert p.shape == (n,) and p.dtype == torch.float32
            assert (p.double() - ref).abs().max().item() <= 1e-6, (n, alpha)
            assert torch.equal(p[ref == 0], torch.zeros_like(p[ref == 0]))
    assert max(sizes[2:]) < 2048 // 8  # the long rows were solved on their candidates


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_long_rows_never_nan(dtype):
    big = 6e4 if dtype == torch.float16 else 1e30
    x = randn(4, 4096, seed=47, scale=3e3, dtype=torch.float32).clamp(-big, big)
    x[0] = big
    x = x.to(dtype)
    for f in (N.sparsemax, N.entmax15, lambda t: N.entmax(t, 1.25)):
        p = f(x)
        assert p.dtype == dtype and not torch.isnan(p).any()
        torch.testing.assert_close(p.float(), f(x.float()).to(dtype).float(), atol=1e-2, rtol=0)


def test_newton_gradcheck_long_rows():
    x = randn(2, 2 * N._WARM_MIN + 3, seed=48).requires_grad_()
    for f in (N.sparsemax, N.entmax15, lambda t: N.entmax(t, 1.3)):
        assert torch.autograd.gradcheck(f, (x,), eps=1e-7, atol=1e-6, fast_mode=True)


def test_integer_powers_by_products():
    u = torch.rand(7, 9, generator=torch.Generator().manual_seed(49), dtype=F64)
    for e in (2, 3, 4, 5, 6, 7, 8, 2.5, 0.25, 9):
        torch.testing.assert_close(N._ipow(u, e, torch.empty_like(u)), u**e, atol=0, rtol=1e-15)


# -- the remaining branches: n_iter, the Shannon limit, list targets --------------------------


def test_bisect_threshold_and_loss_with_n_iter_against_the_sparsemax_closed_form():
    # sparsemax of (1, 0.5, -1): tau = (1 + 0.5 - 1)/2 = 1/4, p = (3/4, 1/4, 0); the loss at
    # target 1 is (p - e_1).x + (1 - |p|^2)/2 = 3/8 + 3/16 = 9/16
    x = torch.tensor([1.0, 0.5, -1.0], dtype=F64)
    assert N.entmax_bisect_threshold(x, 2.0, n_iter=60).item() == pytest.approx(0.25, abs=1e-15)
    assert abs(N.entmax_bisect_threshold(x, 2.0, n_iter=5).item() - 0.25) <= 2.0**-5
    assert N.entmax_loss(x, torch.tensor(1), 2.0, n_iter=60).item() == pytest.approx(
        9 / 16, abs=1e-14)
    for fn in (lambda n: N.entmax_bisect_threshold(x, 2.0, n_iter=n),
               lambda n: N.entmax_loss(x, torch.tensor(1), 2.0, n_iter=n)):
        with pytest.raises(ValueError, match="n_iter must be >= 1"):
            fn(0)


def test_losses_at_exact_alphas_are_exact_whatever_n_iter():
    # alpha in {1.5, 2} has an exact solver (as for entmax_jacobian): n_iter, the bisection's
    # halvings for other alpha, does not make the loss approximate. Closed forms: sparsemax of
    # (1, 0.5, -1) as above (9/16 at target 1); 1.5-entmax of (1, 1, 1, 1, 0) is 1/4 on the
    # ones (lambda = 0 lands on the last logit), H = (1 - 4 (1/4)^1.5)/0.75 = 2/3, so the loss
    # is 2/3 at target 0 and 2/3 + (p - e_4).x = 5/3 at target 4
    x2 = torch.tensor([1.0, 0.5, -1.0], dtype=F64)
    x15 = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]] * 2, dtype=F64)
    for n_iter in (1, 2, 5):
        assert N.entmax_loss(x2, torch.tensor(1), 2.0, n_iter=n_iter).item() == pytest.approx(
            9 / 16, abs=1e-14)
        got = N.entmax_loss(x15, torch.tensor([0, 4]), 1.5, n_iter=n_iter)
        assert got.tolist() == pytest.approx([2 / 3, 5 / 3], abs=1e-14)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
def test_tsallis_entropy_gradient_at_a_zero_entry(alpha):
    # dH/dp_i = (1 - alpha p_i^(alpha-1)) / (alpha (alpha-1)), also at p_i = 0 (where it is
    # 1 / (alpha (alpha-1))): moving mass onto a zero entry raises the entropy at that rate
    p = torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(N.tsallis_entropy(p, alpha), p)
    want = [(1 - alpha * v ** (alpha - 1)) / (alpha * (alpha - 1)) for v in (0.6, 0.4, 0.0)]
    torch.testing.assert_close(g, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    t = 1e-10  # and a finite difference along e_3 - e_1 (its error is ~ t^(alpha-1))
    step = torch.tensor([-t, 0.0, t], dtype=torch.float64)
    fd = (N.tsallis_entropy(p.detach() + step, alpha) - N.tsallis_entropy(p.detach(), alpha)) / t
    assert float(fd) == pytest.approx(want[2] - want[0], rel=1e-4)


def test_tsallis_entropy_at_alpha_one_is_shannon():
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=F64)
    h = N.tsallis_entropy(p, 1.0)
    assert h[0].item() == pytest.approx(1.5 * math.log(2), rel=1e-15) and h[1].item() == 0.0
    near = N.tsallis_entropy(p, 1.0 + 1e-7)                    # the alpha -> 1 limit
    torch.testing.assert_close(near, h, rtol=0, atol=1e-6)


def test_loss_takes_targets_as_python_lists():
    x = torch.tensor([[2.0, 0.0, -1.0], [0.3, 0.2, 0.1]], dtype=F64)
    ce = N.entmax_loss(x, [0, 2], alpha=1.0)                    # alpha = 1: lse(x) - x_t
    ref = torch.logsumexp(x, dim=-1) - torch.tensor([2.0, 0.1], dtype=F64)
    torch.testing.assert_close(ce, ref, rtol=1e-14, atol=1e-15)
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        N.entmax_loss(x, [0.0, 2.0])


# -- second reading (r05): edge cases that returned NaN or an unclear error ------------------


@pytest.mark.parametrize("dtype, alphas", [
    (torch.float32, (1.0001, 1.001, 1.01, 1.03, 1.045, 1.06)),
    (F64, (1.0001, 1.001, 1.005, 1.008, 1.02)),
    (torch.float16, (1.001, 1.02)),
])
def test_newton_alpha_near_one_never_nan(dtype, alphas):
    """As alpha -> 1 the sort-free solver's powers u^(1/beta), u <= 1/beta, overflow (they gave
    NaN for alpha = 1.01 in float32 and 1.001 in float64); entmax falls back to bisection there.
    Just above the switch the Newton path itself must stay finite, on short and long rows."""
    for n in (7, 2048, 5000):
        x = randn(4, n, seed=50, scale=3.0)
        x[0, ::3] = -math.inf
        for alpha in alphas:
            p = N.entmax(x.to(dtype), alpha)
            assert p.dtype == dtype and not torch.isnan(p).any(), (alpha, n)
            ref = N.entmax_bisect(x, alpha, n_iter=200)
            # float32: p = [beta z - lam]^(1/beta) amplifies rounding by 1/beta near alpha = 1
            tol = {F64: 1e-12, torch.float32: 1e-6 / (alpha - 1) ** 0.5, torch.float16: 2e-2}[dtype]
            assert (p.double() - ref).abs().max().item() <= tol, (alpha, n)
    assert N._newton_overflows(1.01, torch.float32, 7)
    assert not N._newton_overflows(1.1, torch.float32, 7)
    assert N._newton_overflows(1.001, F64, 7) and not N._newton_overflows(1.01, F64, 7)


def test_taylor_softmax_half_precision_and_large_orders():
    x = torch.tensor([100.0, 0.0, -3.0])
    for dtype in (torch.float16, torch.bfloat16):  # 1/20! underflows in half: it gave NaN
        p = N.taylor_softmax(x.to(dtype), 20)
        assert p.dtype == dtype and not torch.isnan(p).any()
        torch.testing.assert_close(p.float(), N.taylor_softmax(x, 20).to(dtype).float())
    ref = N.taylor_softmax(x.double(), 30)
    torch.testing.assert_close(N.taylor_softmax(x, 30).double(), ref, atol=1e-6, rtol=0)
    assert N.taylor_softmax(x.double(), 170).sum().item() == pytest.approx(1.0)
    for k, dtype in ((34, torch.float32), (172, F64)):  # was OverflowError or NaN
        with pytest.raises(ValueError, match=f"k = {k} is too large"):
            N.taylor_softmax(x.to(dtype), k)


def test_stop_gradient_loss_takes_any_one_argument_map():
    x, t = randn(50, 4, seed=51), torch.arange(50) % 4
    g = _grad(lambda z: N.stop_gradient_loss(z, t, lambda v: torch.softmax(v, -1)), x)
    torch.testing.assert_close(g, torch.softmax(x, -1) - torch.nn.functional.one_hot(t, 4),
                               atol=1e-15, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-40, 40), min_size=1, max_size=8),
       st.sampled_from([1.25, 1.5, 2.0, 3.0]), st.integers(0, 7))
def test_entmax_threshold_bracket_and_fenchel_young_sign(values, alpha, target):
    """lambda in [m - 1, m - n^-beta] (m = beta max x; both ends attained: a lone top logit,
    equal logits), G(lambda) = 1, and the Fenchel-Young loss is >= 0 with equality iff
    p = e_t. Logits on a 1/4 grid: ties and thresholds landing on a logit are common."""
    x = torch.tensor(values, dtype=F64) / 4
    n, beta = len(values), alpha - 1
    m = beta * x.max().item()
    lam = N.entmax_bisect_threshold(x, alpha, n_iter=200).item()
    assert m - 1 - 1e-12 <= lam <= m - n ** -beta + 1e-12
    assert ((beta * x - lam).clamp_min(0) ** (1 / beta)).sum().item() == pytest.approx(1, abs=1e-9)
    if (x == x.max()).all():
        assert lam == pytest.approx(m - n ** -beta, abs=1e-12)
    t = torch.tensor(target % n)
    loss = N.entmax_loss(x, t, alpha).item()
    p = N.entmax_bisect(x, alpha, n_iter=200)
    assert loss >= -1e-12
    if p[t] == 1:
        assert abs(loss) < 1e-12
    else:
        assert loss > 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=8), st.integers(0, 7),
       st.floats(0.0, 1.0), st.floats(0.05, 2.0))
def test_softmax_and_am_softmax_identities(values, target, margin, tau):
    """Chapter identities as properties: (1/2)|J|_1 = 1 - |p|^2 for softmax's Jacobian, the
    bound |grad(-p_t)| <= sqrt(2) p_t (1 - p_t), and the AM-Softmax sandwich
    log(1 + e^((m - gap)/tau)) <= L <= log(1 + (n - 1) e^((m - gap)/tau))."""
    x = torch.tensor(values, dtype=F64)
    n, t = len(values), torch.tensor(target % len(values))
    p, J = torch.softmax(x, -1), N.softmax_jacobian(x)
    assert abs(0.5 * J.abs().sum().item() - (1 - (p * p).sum().item())) < 1e-12
    g = _grad(lambda z: -torch.softmax(z, -1)[t], x)
    assert g.norm().item() <= math.sqrt(2) * p[t].item() * (1 - p[t].item()) + 1e-15
    centers = torch.eye(n, dtype=F64)  # cos(z, e_i) = z_i / |z|
    z = x if x.norm() > 0 else torch.ones(n, dtype=F64)
    cos = z / z.norm()
    gap = (cos[t] - torch.cat([cos[:t], cos[t + 1:]]).max()).item()
    loss = N.am_softmax_loss(z, centers, t, margin=margin, tau=tau).item()
    a = (margin - gap) / tau
    low, high = math.log1p(math.exp(a)), math.log1p((n - 1) * math.exp(a))
    assert low - 1e-12 * (1 + low) <= loss <= high + 1e-12 * (1 + high)


# -- bad inputs (tools/bad_inputs.py): a +inf logit gives a +inf threshold (documented) -------


@pytest.mark.parametrize("threshold", [
    N.sparsemax_threshold, N.entmax15_threshold,
    lambda x: N.entmax15_threshold(x, method="newton"), N.entmax_bisect_threshold,
])
def test_fuzz_thresholds_are_inf_where_a_logit_is(threshold):
    x = torch.tensor([[1.0, math.inf, 0.0], [1.0, 2.0, 0.0], [math.inf, math.inf, 0.0]],
                     dtype=F64)
    lam = threshold(x)
    assert lam[0] == math.inf and lam[2] == math.inf and math.isfinite(lam[1])


def test_am_softmax_loss_promotes_mixed_dtypes():
    g = torch.Generator().manual_seed(5)
    z, c = torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.arange(4)
    out = N.am_softmax_loss(z, c, t)
    assert out.dtype == F64
    torch.testing.assert_close(out, N.am_softmax_loss(z.double(), c, t))


def test_entmax15_sort_is_exact_on_long_supports():
    """The sort path's discriminant 1 - S2_k + S_k mu_k cancels on a long support below the max
    (float32 sums: threshold off by 2e-5, sum p by 3e-3 at 32000 entries); its running sums are
    float64, so it agrees with the float64 map, as Newton does, in every caller of the solver."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor([1.8]), 1e-3 * torch.randn(32000, generator=g)])
    ref = N.entmax15(x.to(F64), method="sort")
    assert float(ref.sum()) == pytest.approx(1.0, abs=1e-10)
    for method in ("sort", "newton"):
        p = N.entmax15(x, method=method)
        assert abs(float(p.to(F64).sum()) - 1) < 1e-5, method
        assert float((p.to(F64) - ref).abs().max()) < 1e-6, method
        lam = float(N.entmax15_threshold(x, method=method))
        assert lam == pytest.approx(float(N.entmax15_threshold(x.to(F64))), abs=1e-6), method
    t = torch.tensor(0)
    assert float(N.entmax_loss(x, t, alpha=1.5)) == pytest.approx(
        float(N.entmax_loss(x.to(F64), t, alpha=1.5)), abs=1e-5)


def test_fenchel_young_losses_of_large_logits_are_shift_invariant_and_nonnegative():
    """The loss is taken on x - max x: with float32 logits near 1e4, the unshifted
    (p - e_t)^T x carried the rounding of sum p times 1e4 (cross-entropy -1.1e-3 instead of
    2.9e-4). Every value is >= 0 (rounding below 0 is clamped)."""
    x = torch.tensor([10000.707, 10009.257, 9999.549, 9996.596, 9998.940])
    t = torch.tensor(1)
    ce = float(torch.nn.functional.cross_entropy(x[None], t[None]))
    assert float(N.entmax_loss(x, t, alpha=1.0)) == pytest.approx(ce, abs=2e-6)
    g = torch.Generator().manual_seed(1)
    xs = 1e4 + 10 * torch.randn(500, 7, generator=g)
    ts = torch.randint(0, 7, (500,), generator=g)
    for alpha in (1.0, 1.3, 1.5, 2.0):
        got = N.entmax_loss(xs, ts, alpha=alpha)
        want = N.entmax_loss((xs - xs.amax(-1, keepdim=True)).to(F64), ts, alpha=alpha)
        assert float((got.to(F64) - want).abs().max()) < 2e-5, alpha
        assert bool((got >= 0).all()), alpha


def test_fenchel_young_losses_of_confident_predictions_are_clamped_at_zero():
    # with the target at the argmax, p is at or near e_t and the loss is 0 up to rounding, which
    # in float32 lands a few ulps below 0 for about one row in a hundred: the documented value
    # is >= 0 (clamped), never a small negative number
    x = randn(2000, 5, seed=65, scale=3.0, dtype=torch.float32)
    t = x.argmax(-1)
    for alpha in (1.0, 1.25, 1.5):
        loss = N.entmax_loss(x, t, alpha)
        assert bool((loss >= 0).all()), alpha


def test_topk_softmax_loss_with_infinite_logits_is_the_limit():
    """+inf rows take the limit of the finite formula as the +inf logits grow together (log c
    when the target's logit is +inf, even when the tie-break leaves it out of Omega_k; +inf
    otherwise), and pass no NaN into the other rows' gradients."""
    inf = math.inf
    x = torch.tensor([[inf, 0.0, 1.0], [3.0, 2.0, 1.0]], requires_grad=True)
    N.topk_softmax_loss(x, torch.tensor([0, 2]), k=1).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0, 0], [1, 0, -1]]))
    for big in (5.0, 1e30, inf):
        assert float(N.topk_softmax_loss(torch.tensor([[big, 2.0, big]]), [2], 1)) == 0.0
    x = torch.tensor([[inf, inf, 0.0, inf]])
    assert float(N.topk_softmax_loss(x, [3], 2)) == pytest.approx(math.log(2))
    assert float(N.topk_softmax_loss(x, [0], 3)) == pytest.approx(math.log(3))
    assert float(N.topk_softmax_loss(x, [2], 3)) == inf


def test_topk_softmax_loss_with_infinite_logits_row_by_row():
    # each row of a batch takes its own limit: +inf logits at 1 and 3, both kept, target among
    # them: log 2; one +inf logit, the target's: log 1 = 0; three +inf logits, target finite:
    # +inf; a finite row: log(e^3 + e^2) - x_2
    inf = math.inf
    x = torch.tensor([[0.0, inf, 1.0, inf], [inf, 0.0, 1.0, 2.0], [inf, inf, inf, 0.0],
                      [3.0, 2.0, 1.0, 0.0]], dtype=F64)
    got = N.topk_softmax_loss(x, torch.tensor([1, 0, 3, 2]), 2)
    want = [math.log(2), 0.0, inf, math.log(math.exp(3) + math.exp(2)) - 1.0]
    assert got.shape == (4,) and got.tolist() == pytest.approx(want, rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_tsallis_entropy_near_alpha_one_does_not_cancel(dtype):
    """1 - sum p^alpha lost eps/(alpha - 1) (float32: 2.98 instead of 1.856 at 1 + 1e-7); the
    expm1 form follows the expansion H_a = (H - b M2 / 2 - b^2 M3 / 6) / a + O(b^3), b = a - 1,
    M_j = sum_i p_i log^j p_i (float64 reference of the same p)."""
    p64 = torch.softmax(randn(10, seed=3, scale=1.0), -1)
    p64[3] = 0.0
    p = (p64 / p64.sum()).to(dtype)
    p64 = p.to(F64) / p.to(F64).sum()
    log_p = torch.log(p64[p64 > 0])
    shannon = float(-(p64[p64 > 0] * log_p).sum())
    m2, m3 = (float((p64[p64 > 0] * log_p**j).sum()) for j in (2, 3))
    for alpha in (1 + 1e-4, 1 + 1e-5, 1 + 1e-6, 1 + 1e-7):
        b = alpha - 1
        want = (shannon - b * m2 / 2 - b * b * m3 / 6) / alpha
        got = float(N.tsallis_entropy(p, alpha))
        assert got == pytest.approx(want, abs=8 * torch.finfo(dtype).eps + (alpha - 1) ** 2)
    assert float(N.tsallis_entropy(p64, 2.0)) == pytest.approx(0.5 * float(1 - (p64**2).sum()))
    q = p64.clone().requires_grad_()
    N.tsallis_entropy(q, 1.5).backward()  # the zero entry gives no NaN
    assert torch.isfinite(q.grad).all()


def test_perturb_max_accuracy_is_about_one_over_the_grid():
    """The documented accuracy: absolute error below 1/n_grid (against softmax for Gumbel noise,
    the probit Phi((x_0 - x_1)/sqrt 2) for normal noise); probabilities below that are not
    resolved."""
    g = torch.Generator().manual_seed(2)
    for n_grid in (100, 1000):
        x = torch.cat([s * torch.randn(10, 4, generator=g, dtype=F64) for s in (0.5, 3, 20)])
        err = (N.perturb_max(x, "gumbel", n_grid) - torch.softmax(x, -1)).abs().max()
        assert float(err) < 1 / n_grid
        x2 = torch.cat([s * torch.randn(20, 2, generator=g, dtype=F64) for s in (0.5, 3, 20)])
        probit = torch.special.ndtr((x2[:, 0] - x2[:, 1]) / math.sqrt(2))
        assert float((N.perturb_max(x2, "normal", n_grid)[:, 0] - probit).abs().max()) < 1 / n_grid
    far = N.perturb_max(torch.tensor([0.0, 15.0], dtype=F64), "gumbel", 2000)
    assert float(far[0]) < 1e-20 < 3e-7 < float(torch.softmax(torch.tensor([0.0, 15.0]), -1)[0])


@pytest.mark.parametrize("threshold", [N.sparsemax_threshold, N.entmax15_threshold])
@pytest.mark.parametrize("method", ["sort", "newton"])
def test_thresholds_carry_no_gradient(threshold, method):
    """Both solvers accept inputs that require grad and return a detached threshold (torch raised
    an 'out=' or in-place RuntimeError before), as entmax_bisect_threshold does."""
    x = randn(3, 6, seed=5).requires_grad_()
    lam = threshold(x, method=method)
    assert not lam.requires_grad
    torch.testing.assert_close(lam, threshold(x.detach(), method="sort"))


# -- gaps found by mutation testing ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_taylor_softmax_order_limit_is_named_exactly(dtype):
    # the refusal names the largest usable order: the largest even k with 1/k! >= tiny
    # (documented: k <= 32 in float32, k <= 170 in float64), computed here in exact rationals;
    # that order works and the next even one is refused
    tiny = Fraction(torch.finfo(dtype).tiny)
    kmax = 2
    while Fraction(1, math.factorial(kmax + 2)) >= tiny:
        kmax += 2
    assert kmax == {torch.float32: 32, F64: 170}[dtype]
    x = torch.tensor([3.0, 0.0, -1.0], dtype=dtype)
    p = N.taylor_softmax(x, kmax)
    assert torch.isfinite(p).all() and float(p.sum()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=f"use k <= {kmax} or a wider dtype"):
        N.taylor_softmax(x, kmax + 2)


def test_perturb_max_default_grid_is_the_documented_one():
    # the default quadrature grid is N = 20000 points (the documented accuracy ~1/N and the
    # p_0 ~ 1e-40 of x = [0, 15] are stated for it); every other test passes n_grid
    x = torch.tensor([[0.3, -1.2, 2.5], [0.0, 15.0, 1.0]], dtype=F64)
    for noise in ("gumbel", "normal"):
        assert torch.equal(N.perturb_max(x, noise), N.perturb_max(x, noise, 20_000))


def test_long_rows_see_their_leftover_tail():
    # rows of n >= _WARM_MIN logits take their maxima over groups of _GROUP entries "plus the
    # leftover tail": a row whose finite, +inf or NaN logits all sit in that tail (n = 4100 =
    # 128 * 32 + 4) is still the 2-logit map, certain, or refused
    n = 4100
    assert n >= N._WARM_MIN and n % N._GROUP
    x = torch.full((1, n), -math.inf, dtype=F64)
    x[0, -2:] = torch.tensor([1.0, 0.5], dtype=F64)
    # closed forms on (1, 0.5): sparsemax tau = 1/4; 1.5-entmax in z = x/2, the smaller root of
    # (1/2 - t)^2 + (1/4 - t)^2 = 1; alpha = 1.25 against the `entmax` package
    t = (1.5 - math.sqrt(2.25 - 8 * (0.3125 - 1))) / 4
    maps = [(N.sparsemax, [0.75, 0.25]), (N.entmax15, [(0.5 - t) ** 2, (0.25 - t) ** 2]),
            (lambda v: N.entmax(v, 1.25), entmax.entmax_bisect(x[0, -2:], 1.25, n_iter=100))]
    for f, w in maps:
        p = f(x)
        torch.testing.assert_close(p[0, -2:], torch.as_tensor(w, dtype=F64), atol=1e-12, rtol=0)
        assert torch.equal(p[0, :-2], torch.zeros(n - 2, dtype=F64))
        y = torch.zeros(1, n, dtype=F64)
        y[0, -1] = math.inf
        assert torch.equal(f(y), torch.nn.functional.one_hot(torch.tensor([n - 1]), n).to(F64))
        y[0, -1] = math.nan
        with pytest.raises(ValueError, match="NaN"):
            f(y)


@pytest.mark.parametrize("name", list(ALL_MAPS))
def test_a_lone_logit_is_validated_like_any_other(name):
    # a tensor holding one logit is certain when finite or +inf, and refused when NaN or -inf,
    # as every other slice is (test_bad_input and test_infinite_logits use longer rows)
    f = ALL_MAPS[name]
    for v in (3.0, math.inf):
        assert f(torch.tensor([v], dtype=F64)).tolist() == [1.0]
    with pytest.raises(ValueError, match="-inf everywhere"):  # Taylor's too (the module doc)
        f(torch.tensor([-math.inf], dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        f(torch.tensor([math.nan], dtype=F64))


def test_thresholds_of_a_lone_logit():
    # one logit x: lambda = x - 1 in units of (alpha - 1) x, the top entry alone reaching 1
    for method in ("sort", "newton"):
        assert float(N.sparsemax_threshold(torch.tensor([3.0], dtype=F64), method=method)) == 2.0
        assert float(N.entmax15_threshold(torch.tensor([3.0], dtype=F64), method=method)) == 0.5
        for thr in (N.sparsemax_threshold, N.entmax15_threshold):
            with pytest.raises(ValueError, match="NaN"):
                thr(torch.tensor([math.nan], dtype=F64), method=method)
            with pytest.raises(ValueError, match="-inf everywhere"):
                thr(torch.tensor([-math.inf], dtype=F64), method=method)


def test_entmax_family_defaults_to_alpha_one_and_a_half():
    # alpha defaults to 1.5 in entmax, entmax_bisect, entmax_bisect_threshold, entmax_jacobian
    # and entmax_loss. Closed form at x = (-2, 0, 0.5), z = x/2: the support is the top two,
    # lambda the smaller root of (0 - t)^2 + (1/4 - t)^2 = 1, p = (z - lambda)_+^2
    x = torch.tensor([-2.0, 0.0, 0.5], dtype=F64)
    lam = (0.5 - math.sqrt(0.25 - 8 * (0.0625 - 1))) / 4
    p = [0.0, (0.0 - lam) ** 2, (0.25 - lam) ** 2]
    want = torch.tensor(p, dtype=F64)
    torch.testing.assert_close(N.entmax(x), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(N.entmax_bisect(x), want, atol=1e-12, rtol=0)
    assert float(N.entmax_bisect_threshold(x)) == pytest.approx(lam, abs=1e-12)
    s = torch.tensor([v**0.5 for v in p], dtype=F64)  # s = p^(2 - alpha) on the support
    jac = torch.diag(s) - torch.outer(s, s) / s.sum()
    torch.testing.assert_close(N.entmax_jacobian(x), jac, atol=1e-12, rtol=0)
    tsallis = (1 - sum(v**1.5 for v in p)) / (1.5 * 0.5)
    loss = sum(a * b for a, b in zip(p, x.tolist(), strict=True)) - 0.5 + tsallis  # target 2
    assert float(N.entmax_loss(x, torch.tensor(2))) == pytest.approx(loss, abs=1e-12)


def test_am_softmax_loss_defaults_are_wang_et_al():
    # documented defaults m = 0.35, tau = 1/30; the loss in plain Python from the cosines
    z = [[1.0, 2.0, -0.5], [0.3, -1.0, 0.8]]
    centers = [[1.0, 0.0, 0.0], [0.5, 1.0, -1.0], [-1.0, 0.2, 0.4], [0.0, -2.0, 1.0]]
    target = [1, 3]

    def cos(a, b):
        return sum(u * v for u, v in zip(a, b, strict=True)) / math.hypot(*a) / math.hypot(*b)

    want = []
    for zi, t in zip(z, target, strict=True):
        logits = [(cos(zi, c) - (0.35 if j == t else 0.0)) * 30 for j, c in enumerate(centers)]
        top = max(logits)
        want.append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[t])
    got = N.am_softmax_loss(torch.tensor(z, dtype=F64), torch.tensor(centers, dtype=F64),
                            torch.tensor(target))
    assert got.tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("noise", ["gumbel", "normal"])
def test_perturb_max_is_the_documented_quadrature(noise):
    # p_i proportional to sum_k prod_(j != i) Phi(x_i - x_j + eps_k) over the whole inverse-cdf
    # grid eps_k = Phi^-1((k + 1/2)/N), k = 0..N-1, in plain Python (N small: each point counts)
    if noise == "gumbel":
        cdf, inv = (lambda e: math.exp(-math.exp(-e))), (lambda u: -math.log(-math.log(u)))
    else:
        cdf, inv = NormalDist().cdf, NormalDist().inv_cdf
    x, n_grid = [0.5, -1.0, 2.0, 0.25], 7
    eps = [inv((k + 0.5) / n_grid) for k in range(n_grid)]
    w = [sum(math.prod(cdf(xi - xj + e) for j, xj in enumerate(x) if j != i) for e in eps)
         for i, xi in enumerate(x)]
    want = [v / sum(w) for v in w]
    got = N.perturb_max(torch.tensor(x, dtype=F64), noise, n_grid)
    assert got.tolist() == pytest.approx(want, rel=1e-12)


def test_perturb_max_slices_larger_than_a_chunk():
    # the grid is chunked so that one chunk of x_i - x_j + eps holds about 2^22 numbers; a batch
    # whose n^2 differences alone exceed that (16385 rows of 16 classes) takes one grid point
    # per chunk. The same quadrature as above, in plain Python, for the repeated row
    cdf, inv = (lambda e: math.exp(-math.exp(-e))), (lambda u: -math.log(-math.log(u)))
    row, n_grid = randn(16, seed=58, scale=0.5).tolist(), 2
    eps = [inv((k + 0.5) / n_grid) for k in range(n_grid)]
    w = [sum(math.prod(cdf(xi - xj + e) for j, xj in enumerate(row) if j != i) for e in eps)
         for i, xi in enumerate(row)]
    want = torch.tensor([v / sum(w) for v in w], dtype=F64)
    x = torch.tensor(row, dtype=torch.float32).repeat(16385, 1)
    assert x.shape[0] * 16 * 16 > 2**22
    got = N.perturb_max(x, "gumbel", n_grid)
    torch.testing.assert_close(got.double(), want.expand(16385, 16), atol=0, rtol=1e-4)


def test_bisection_default_iterations_are_mantissa_bits_plus_three():
    # documented: n_iter defaults to 55 halvings in float64 and 26 in float32. Thresholds near
    # -1/2 reach the dtype's resolution before that (further halvings change nothing), so the
    # flat rows put it at -n^-beta, close to 0, where every halving counts
    x = torch.cat([randn(30, 7, seed=52), ties(30, 7, seed=53)])
    flat = torch.zeros(2, 1000, dtype=F64)
    for dtype, n_iter in ((F64, 55), (torch.float32, 26)):
        for xd, alpha in [(x.to(dtype), a) for a in (1.25, 1.5, 3.0)] + [(flat.to(dtype), 3.0)]:
            assert torch.equal(N.entmax_bisect(xd, alpha), N.entmax_bisect(xd, alpha, n_iter))
            assert torch.equal(N.entmax_bisect_threshold(xd, alpha),
                               N.entmax_bisect_threshold(xd, alpha, n_iter))


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_bisection_halves_the_documented_bracket(alpha):
    # the bracket is [m - 1, m - n^-beta] (m = beta max x, width < 1): after n_iter halvings its
    # midpoint is within (1 - n^-beta) / 2^(n_iter + 1) of the threshold (the textbook one here)
    x = torch.cat([randn(10, 5, seed=54), ties(10, 5, seed=55)])
    n, beta = x.shape[-1], alpha - 1
    want = torch.tensor([_prefix_rule_threshold(r.tolist(), alpha) for r in x], dtype=F64)
    for n_iter in range(1, 13):
        err = (N.entmax_bisect_threshold(x, alpha, n_iter) - want).abs().max().item()
        assert err <= (1 - n**-beta) / 2 ** (n_iter + 1) + 1e-15, n_iter


def test_newton_falls_back_before_its_powers_can_overflow():
    # equal logits are the worst case of the overflow bound: every entry reaches u = 1/beta at
    # the start, and the sum of n powers u^(1/beta) is n (1/beta)^(1/beta). Across the switch
    # from Newton to bisection (alpha about 1.04 in float32) the map stays the uniform one
    for n in (2, 7, 100):
        x = torch.zeros(1, n)
        for i in range(12):
            alpha = 1.035 + 0.0004 * i
            p = N.entmax(x, alpha)
            torch.testing.assert_close(p.double(), torch.full((1, n), 1 / n, dtype=F64), atol=0,
                                       rtol=1e-2, msg=f"n = {n}, alpha = {alpha}")

