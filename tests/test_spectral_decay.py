"""Tests of dlmath.optim.spectral_decay_ (W <- W - lr * wd * W v v^T, v by power iteration)."""

import pytest
import torch

from dlmath import linalg
from dlmath.optim import spectral_decay_

F64 = torch.float64


def planted(spectrum, n, m, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    r = len(spectrum)
    U, _ = torch.linalg.qr(torch.randn(n, r, dtype=dtype, generator=g))
    V, _ = torch.linalg.qr(torch.randn(m, r, dtype=dtype, generator=g))
    return U @ torch.diag(torch.tensor(spectrum, dtype=dtype)) @ V.T


def test_shrinks_only_the_top_singular_value():
    W = planted([3.0, 1.0, 0.5, 0.25], 8, 6)
    before = torch.linalg.svdvals(W)
    lr, wd = 0.1, 2.0
    v = spectral_decay_(W, lr, wd, iters=80)
    after = torch.linalg.svdvals(W)
    want = before.clone()
    want[0] *= 1 - lr * wd
    torch.testing.assert_close(after, want, rtol=0, atol=1e-12)
    assert abs(torch.linalg.vector_norm(v).item() - 1) < 1e-14


def test_equals_gradient_step_on_half_squared_spectral_norm():
    W = planted([2.0, 0.5, 0.1], 5, 7, seed=1)
    Wr = W.clone().requires_grad_()
    (g,) = torch.autograd.grad(0.5 * torch.linalg.matrix_norm(Wr, 2) ** 2, Wr)
    spectral_decay_(W, 0.3, 0.5, iters=60, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(W, Wr.detach() - 0.15 * g, rtol=0, atol=1e-12)


def test_warm_start_converges_over_steps():
    W = planted([3.0, 2.0, 1.0], 6, 5, seed=2)
    v1 = torch.linalg.svd(W).Vh[0]
    v = None
    for _ in range(40):
        v = spectral_decay_(W, 1e-4, 1.0, v=v, iters=1)
    # one power step per call, warm-started: v has found the (slowly moving) top direction
    v1 = torch.linalg.svd(W).Vh[0]
    assert abs(abs(v @ v1).item() - 1) < 1e-8


def test_batched_float32_parameter_in_place():
    p = torch.nn.Parameter(torch.stack([planted([4.0, 1.0, 0.5], 6, 4, seed=s)
                                        for s in range(3)]).float())
    before = torch.linalg.svdvals(p.detach()).clone()
    ptr = p.data_ptr()
    v = spectral_decay_(p, 0.5, 0.2, iters=40)
    assert p.data_ptr() == ptr and v.shape == (3, 4) and v.dtype == torch.float32
    after = torch.linalg.svdvals(p.detach())
    torch.testing.assert_close(after[:, 0], 0.9 * before[:, 0], rtol=1e-5, atol=0)
    torch.testing.assert_close(after[:, 1:], before[:, 1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-15, 1e12])
def test_float32_far_from_unit_scale(scale):
    # the power iteration squares the scale twice: at 3e12 in float32 it used to return v = 0,
    # and the decay silently did nothing
    W = (planted([3.0, 1.0, 0.5], 8, 6, seed=4) * scale).float()
    before = torch.linalg.svdvals(W.double())
    v = spectral_decay_(W, 0.1, 2.0, iters=40)
    after = torch.linalg.svdvals(W.double())
    assert abs(torch.linalg.vector_norm(v).item() - 1) < 1e-6
    torch.testing.assert_close(after / scale, torch.cat([0.8 * before[:1], before[1:]]) / scale,
                               rtol=1e-5, atol=1e-6)


def test_zero_decay_and_zero_matrix_are_fixed_points():
    W = planted([1.0, 0.5], 3, 3, seed=3)
    W0 = W.clone()
    spectral_decay_(W, 0.0, 1.0)
    assert torch.equal(W, W0)
    Z = torch.zeros(3, 2)
    v = spectral_decay_(Z, 0.1, 0.1, iters=3)
    assert (Z == 0).all() and torch.isfinite(v).all()


def test_unconverged_on_gaussian_is_not_the_top_rank_one_term():
    # a square Gaussian has sigma2/sigma1 close to 1: ten steps from the ones vector give a
    # vector whose Rayleigh estimate is close but whose rank-one term is far from u1 v1^T
    g = torch.Generator().manual_seed(0)
    W = torch.randn(256, 128, dtype=F64, generator=g)
    s = torch.linalg.svdvals(W)
    assert s[1] / s[0] > 0.97
    sigma, _, v = linalg.power_iteration(W, 10)
    exact = linalg.spectral_norm_grad(W) * s[0]
    err = torch.linalg.matrix_norm(W @ torch.outer(v, v) - exact) / s[0]
    assert sigma / s[0] > 0.9 and err > 0.3


def test_bad_input():
    W = torch.eye(3)
    with pytest.raises(ValueError, match="lr"):
        spectral_decay_(W, -1.0, 0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        spectral_decay_(W, 0.1, float("nan"))
    with pytest.raises(ValueError, match="W"):
        spectral_decay_(torch.ones(3), 0.1, 0.1)
    with pytest.raises(TypeError, match="W"):
        spectral_decay_(torch.eye(3, dtype=torch.int32), 0.1, 0.1)
    nested = [[1.0, 2.0], [3.0, 4.0]]           # could only be decayed as a copy: refused
    with pytest.raises(TypeError, match="W must be a torch.Tensor"):
        spectral_decay_(nested, 0.5, 1.0, iters=10)
    assert nested == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="v must be"):
        spectral_decay_(W, 0.1, 0.1, v=torch.ones(2))


# -- gaps found by mutation testing ---------------------------------------------------------

def test_default_is_one_power_step_from_the_ones_vector():
    # iters defaults to 1 and v=None starts from the ones vector: v = W^T W 1 / |W^T W 1| and
    # W <- W - lr wd (W v) v^T, written out by hand (two power steps give another v)
    W = planted([3.0, 2.0, 1.0], 6, 5, seed=5)
    W0 = W.clone()
    y = W0.T @ (W0 @ torch.ones(5, dtype=F64))
    v_hand = y / torch.linalg.vector_norm(y)
    v = spectral_decay_(W, 0.1, 0.5)
    torch.testing.assert_close(v, v_hand, rtol=0, atol=1e-14)
    torch.testing.assert_close(W, W0 - 0.05 * torch.outer(W0 @ v_hand, v_hand), rtol=0,
                               atol=1e-14)
