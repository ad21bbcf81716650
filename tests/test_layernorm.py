"""Tests of dlmath.layernorm: RMSNorm, its Jacobian, the ISRU identity, DyT, DyISRU, softcap."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import layernorm as L
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=60, deadline=None)


def _randn(seed, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=generator(seed, "cpu"), dtype=F64)


def _naive_rms(x, eps=0.0):
    return x / torch.sqrt(x.square().mean(dim=-1, keepdim=True) + eps)


# -- RMSNorm -----------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 40), st.floats(-8, 8),
       st.sampled_from([0.0, 1e-6, 0.5]))
def test_rms_norm_matches_torch(seed, d, log_scale, eps):
    x = _randn(seed, 3, d, scale=10.0**log_scale)
    ref = F.rms_norm(x, (d,), eps=eps) if eps > 0 else _naive_rms(x)
    assert torch.allclose(L.rms_norm(x, eps=eps), ref, rtol=1e-12, atol=1e-300)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 40), st.floats(-6, 6))
def test_rms_norm_is_on_the_sphere_and_bounded(seed, d, log_c):
    x = _randn(seed, 4, d)
    y = L.rms_norm(x)
    assert torch.allclose(y.square().sum(-1), torch.full((4,), float(d), dtype=F64), rtol=1e-12)
    assert (y.abs() <= math.sqrt(d) * (1 + 1e-15)).all()
    c = 10.0**log_c
    assert torch.allclose(L.rms_norm(c * x), y, rtol=1e-12, atol=1e-14)
    assert torch.allclose(L.rms_norm(-c * x), -y, rtol=1e-12, atol=1e-14)


def test_rms_norm_dim_and_dtype_and_device():
    x = _randn(0, 5, 7)
    assert torch.allclose(L.rms_norm(x, dim=0), L.rms_norm(x.T).T, rtol=1e-14)
    x32 = x.float()
    assert L.rms_norm(x32).dtype == torch.float32
    assert L.rms_norm(x32).device == x32.device


def test_rms_norm_zero_vector_is_zero_for_every_eps():
    z = torch.zeros(2, 5, dtype=F64)
    for eps in (0.0, 1e-12, 1.0):
        assert torch.equal(L.rms_norm(z, eps=eps), z)
    mixed = torch.stack([torch.zeros(3, dtype=F64), torch.tensor([3.0, 0.0, 4.0], dtype=F64)])
    out = L.rms_norm(mixed)
    assert torch.equal(out[0], torch.zeros(3, dtype=F64))
    assert torch.allclose(out[1], math.sqrt(3) * torch.tensor([0.6, 0.0, 0.8], dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_rms_norm_zero_vector_is_zero_when_sqrt_eps_underflows(dtype):
    # sqrt(1e-100) = 1e-50 is 0 in float32 (the working dtype of the half types): not 0 / 0
    z = torch.zeros(2, 4, dtype=dtype)
    assert torch.equal(L.rms_norm(z, eps=1e-100), z)
    J = L.rms_norm_jacobian(z, eps=1e-100)       # I / sqrt(eps): inf where that overflows
    eye = torch.eye(4, dtype=torch.bool).expand(2, 4, 4)
    if dtype == F64:
        assert torch.allclose(J, 1e50 * eye.to(F64))
    else:
        assert bool(torch.isposinf(J[eye]).all()) and bool((J[~eye] == 0).all())


@pytest.mark.parametrize("dtype,big,tiny", [(torch.float16, 300.0, 1e-4),
                                            (torch.float32, 1e30, 1e-35),
                                            (F64, 1e300, 1e-300)])
def test_rms_norm_huge_and_tiny_entries(dtype, big, tiny):
    base = torch.tensor([3.0, 0.0, -4.0], dtype=F64)
    expected = math.sqrt(3) * torch.tensor([0.6, 0.0, -0.8], dtype=F64)
    for s in (big, tiny):
        y = L.rms_norm((base * s).to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert torch.allclose(y.double(), expected, rtol=2e-3 if dtype == torch.float16
                              else 1e-6, atol=0)


def test_rms_norm_rejects_bad_input():
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        L.rms_norm(torch.arange(3))
    with pytest.raises(ValueError, match="x must be finite"):
        L.rms_norm(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="x must be finite"):
        L.rms_norm(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        L.rms_norm(torch.ones(2, 2), dim=2)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        L.rms_norm(torch.ones(3), eps=-1.0)


# -- the Jacobian ------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 5, 16])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_jacobian_matches_autograd_and_finite_differences(d, eps):
    x = _randn(d, 3, d)
    J = L.rms_norm_jacobian(x, eps=eps)
    assert J.shape == (3, d, d)
    for b in range(3):
        auto = torch.autograd.functional.jacobian(lambda v: _naive_rms(v, eps), x[b])
        assert torch.allclose(J[b], auto, atol=1e-13, rtol=0)
        h, fd = 1e-6, torch.empty(d, d, dtype=F64)
        for j in range(d):
            e = torch.zeros(d, dtype=F64)
            e[j] = h
            fd[:, j] = (_naive_rms(x[b] + e, eps) - _naive_rms(x[b] - e, eps)) / (2 * h)
        assert torch.allclose(J[b], fd, atol=1e-8, rtol=0)


def test_gradcheck_of_rms_norm_and_the_jacobian_vjp():
    x = _randn(3, 2, 6).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: L.rms_norm(v), (x,))
    assert torch.autograd.gradcheck(lambda v: L.rms_norm(v, eps=0.1), (x,))
    v = _randn(4, 2, 6)
    (vjp,) = torch.autograd.grad(L.rms_norm(x), x, v)
    ours = (v.unsqueeze(-2) @ L.rms_norm_jacobian(x.detach())).squeeze(-2)
    assert torch.allclose(vjp, ours, atol=1e-13, rtol=0)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 30), st.floats(-5, 5))
def test_jacobian_is_a_scaled_projector_killing_x(seed, d, log_scale):
    x = _randn(seed, d, scale=10.0**log_scale)
    J = L.rms_norm_jacobian(x)
    rho = x.square().mean().sqrt()
    P = rho * J
    assert torch.allclose(J, J.T, rtol=0, atol=1e-14 / rho.item())
    assert torch.allclose(P @ P, P, atol=1e-13, rtol=0)
    assert (J @ x).abs().max() <= 1e-13 * (x.abs().max() / rho)
    assert abs(torch.trace(P).item() - (d - 1)) < 1e-12 * d


def test_jacobian_with_an_outlier():
    x = torch.full((8,), 1e-3, dtype=F64)
    x[0] = 1e6
    auto = torch.autograd.functional.jacobian(lambda v: _naive_rms(v), x)
    J = L.rms_norm_jacobian(x)
    assert torch.allclose(J, auto, rtol=1e-10, atol=1e-20)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_jacobian_of_huge_and_tiny_vectors_in_float32(scale):
    # J(c x) = J(x) / c: the squares of 1e30 overflow float32 and those of 1e-30 underflow,
    # so rho must be formed from x / max|x|; the reference is the closed form
    # sqrt(d) (I / |x| - x x^T / |x|^3) in float64
    x = _randn(3, 5)
    d, n = 5, x.norm()
    ref = math.sqrt(d) * (torch.eye(d, dtype=F64) / n - torch.outer(x, x) / n**3) / scale
    got = L.rms_norm_jacobian((x * scale).float())
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)


def test_jacobian_of_a_batch_of_batches():
    # x (2, 3, d) -> (2, 3, d, d), each slice the Jacobian of that vector alone
    x = _randn(4, 2, 3, 5)
    J = L.rms_norm_jacobian(x)
    assert J.shape == (2, 3, 5, 5)
    for i in range(2):
        for j in range(3):
            v, n = x[i, j], x[i, j].norm()
            ref = math.sqrt(5) * (torch.eye(5, dtype=F64) / n - torch.outer(v, v) / n**3)
            torch.testing.assert_close(J[i, j], ref, rtol=1e-12, atol=1e-14)


def test_jacobian_at_zero():
    with pytest.raises(ValueError, match="not differentiable at the zero vector"):
        L.rms_norm_jacobian(torch.zeros(4))
    with pytest.raises(ValueError, match="not differentiable"):
        L.rms_norm_jacobian(torch.stack([torch.ones(3), torch.zeros(3)]))
    J = L.rms_norm_jacobian(torch.zeros(4, dtype=F64), eps=0.25)
    assert torch.allclose(J, torch.eye(4, dtype=F64) / 0.5)


# -- the ISRU identity -------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 40), st.sampled_from([0.0, 1e-3, 2.0]))
def test_rms_norm_is_isru_with_the_other_energy(seed, d, eps):
    x = _randn(seed, 3, d)
    x[:, 0] *= 50.0
    C = L.rms_norm_isru_constants(x, eps=eps)
    others = torch.stack([x.square().sum(-1) - x[:, i].square() for i in range(d)], -1)
    assert torch.allclose(C, others + d * eps, rtol=1e-10, atol=1e-12)
    assert torch.allclose(L.dyisru(x, C, d=d), L.rms_norm(x, eps=eps), rtol=1e-12, atol=1e-14)
    assert torch.allclose(L.rms_norm_isru_constants(x.T, dim=0, eps=eps), C.T, rtol=1e-14)


def test_isru_constants_do_not_cancel_next_to_an_outlier():
    x = torch.tensor([1e10, 1.0, 2.0, 2.0], dtype=F64)
    C = L.rms_norm_isru_constants(x)
    assert C[0].item() == 9.0                       # ||x||^2 - x_0^2 would give 0 here
    assert torch.equal(L.rms_norm_isru_constants(torch.ones(1, dtype=F64)),
                       torch.zeros(1, dtype=F64))


# -- DyT, DyISRU, softcap ----------------------------------------------------------------

def test_dyt_formula_parameters_and_limits():
    x = _randn(5, 4, 6)
    gamma, beta = _randn(6, 6), _randn(7, 6)
    assert torch.allclose(L.dyt(x, 0.7, gamma=gamma, beta=beta),
                          gamma * torch.tanh(0.7 * x) + beta, rtol=0, atol=1e-15)
    inf = torch.tensor([float("inf"), -float("inf"), float("nan")])
    out = L.dyt(inf, 2.0, gamma=3.0, beta=1.0)
    assert out[0].item() == 4.0 and out[1].item() == -2.0 and math.isnan(out[2].item())


def test_dyt_with_alpha_zero_is_the_constant_beta_at_infinity_too():
    x = torch.tensor([math.inf, -math.inf, 3.0, math.nan])
    out = L.dyt(x, 0.0, gamma=2.0, beta=0.5)
    assert out[:3].tolist() == [0.5, 0.5, 0.5] and math.isnan(out[3].item())
    alpha = torch.tensor([0.0, 1.0, 0.0, 1.0])    # a zero entry of a tensor alpha
    out = L.dyt(x.half(), alpha, gamma=2.0, beta=0.5)
    assert out[:3].tolist() == [0.5, -1.5, 0.5] and math.isnan(out[3].item())


def test_dyt_and_dyisru_parameters_are_learnable():
    x = _randn(8, 3, 5).requires_grad_()
    alpha = torch.tensor(0.6, dtype=F64, requires_grad=True)
    C = torch.tensor(1.5, dtype=F64, requires_grad=True)
    gamma = _randn(9, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, a, g: L.dyt(v, a, gamma=g), (x, alpha, gamma))
    assert torch.autograd.gradcheck(lambda v, c, g: L.dyisru(v, c, d=5, gamma=g),
                                    (x, C, gamma))
    assert torch.autograd.gradcheck(lambda v: L.softcap(v, 1.3), (x,))


@SETTINGS
@given(st.floats(0, 1e6))
def test_tanh_dominates_isru(u):
    # tanh u >= u / sqrt(1 + u^2) <=> sinh u >= u; both at most u; gap at most 0.0737
    ut = torch.tensor([u], dtype=F64)
    t, s = L.dyt(ut, 1.0).item(), L.dyisru(ut, 1.0).item()
    assert s <= t + 1e-16 and t <= u + 1e-16 and t - s <= 0.07371


def test_dyisru_edge_cases():
    x = torch.tensor([float("inf"), -float("inf"), 0.0, float("nan"), 1e30, -1e30])
    out = L.dyisru(x, 0.0, d=4)
    assert out[:3].tolist() == [2.0, -2.0, 0.0] and math.isnan(out[3].item())
    assert out[4:].tolist() == [2.0, -2.0]
    out = L.dyisru(x, 2.0)
    assert out[:3].tolist() == [1.0, -1.0, 0.0] and out[4:].tolist() == [1.0, -1.0]
    y = L.dyisru(_randn(10, 1000, scale=100.0), 0.5, d=64)
    assert (y.abs() < 8.0).all()


def test_softcap_is_a_smooth_clip():
    t = 2.5
    x = torch.linspace(-20, 20, 400_001, dtype=F64)
    gap = (L.softcap(x, t) - x.clamp(-t, t)).abs()
    assert abs(gap.max().item() - t * (1 - math.tanh(1))) < 1e-9
    assert abs(x[gap.argmax()].abs().item() - t) < 1e-3
    assert L.softcap(torch.tensor([float("inf")]), t).item() == t


def test_elementwise_maps_reject_bad_input():
    x = torch.ones(3)
    with pytest.raises(ValueError, match="C must be >= 0"):
        L.dyisru(x, -1.0)
    with pytest.raises(ValueError, match="C must be >= 0 everywhere"):
        L.dyisru(x, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="C of shape"):
        L.dyisru(x, torch.ones(4))
    with pytest.raises(ValueError, match="d must be >= 1"):
        L.dyisru(x, 1.0, d=0)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        L.dyt(x, "1")
    with pytest.raises(ValueError, match="alpha must be finite"):
        L.dyt(x, float("nan"))
    with pytest.raises(ValueError, match="t must be > 0"):
        L.softcap(x, 0.0)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        L.softcap(torch.arange(3), 1.0)


# -- review additions: the diagonal ODEs, the dropped part, dtypes ------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 40), st.sampled_from([0.0, 0.1]))
def test_jacobian_diagonal_is_the_isru_slope(seed, d, eps):
    """dyt-thm-exact: along coordinate i, y_i is the ISRU with C_i, so J_ii must equal
    d/dx sqrt(d) x / sqrt(x^2 + C) = sqrt(d) C / (x^2 + C)^{3/2} at x = x_i, C = C_i."""
    x = _randn(seed, d)
    C = L.rms_norm_isru_constants(x, eps=eps)
    slope = math.sqrt(d) * C / (x.square() + C) ** 1.5
    J = L.rms_norm_jacobian(x, eps=eps)
    assert torch.allclose(torch.diagonal(J), slope, rtol=1e-11, atol=0)


@SETTINGS
@given(st.floats(-30, 30), st.floats(0.1, 10), st.integers(1, 1000))
def test_dyt_solves_the_frozen_rho_ode(x0, rho, d):
    """dyt-prop-tanh: y = sqrt(d) tanh(x / (rho sqrt d)) has y' = (1 - y^2/d) / rho."""
    x = torch.tensor(x0, dtype=F64, requires_grad=True)
    y = L.dyt(x, 1 / (rho * math.sqrt(d)), gamma=math.sqrt(d))
    (dy,) = torch.autograd.grad(y, x)
    assert abs(dy.item() - (1 - y.item() ** 2 / d) / rho) < 1e-12 / rho


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 60), st.floats(-3, 3))
def test_dropped_offdiagonal_part(seed, d, log_scale):
    """dyt-prop-offdiag: |D|_F / |J|_F = sqrt((1 - q) / (d - 1)) <= 1/sqrt(d), q = sum y^4 / d^2,
    and |D|_2 >= (1 - q) |J|_2."""
    x = _randn(seed, d, scale=10.0**log_scale)
    J = L.rms_norm_jacobian(x)
    D = J - torch.diag(torch.diagonal(J))
    q = (L.rms_norm(x).pow(4).sum() / d**2).item()
    ratio = (torch.linalg.matrix_norm(D) / torch.linalg.matrix_norm(J)).item()
    assert abs(ratio - math.sqrt((1 - q) / (d - 1))) < 1e-12
    assert ratio <= 1 / math.sqrt(d) + 1e-12
    spec = torch.linalg.matrix_norm(D, ord=2) / torch.linalg.matrix_norm(J, ord=2)
    assert spec.item() >= (1 - q) - 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes_are_kept(dtype):
    x = _randn(11, 3, 8).to(dtype)
    assert L.rms_norm(x).dtype == dtype
    assert L.dyt(x, 0.5, gamma=2.0).dtype == dtype
    assert L.dyisru(x, 1.0, d=8).dtype == dtype
    assert L.softcap(x, 3.0).dtype == dtype
    assert L.rms_norm_jacobian(x).shape == (3, 8, 8) and L.rms_norm_jacobian(x).dtype == dtype
    assert L.rms_norm_isru_constants(x).dtype == torch.promote_types(dtype, torch.float32)
    ref = L.rms_norm(x.double())
    assert torch.allclose(L.rms_norm(x).double(), ref, rtol=2e-2, atol=2e-2)


def test_empty_input_is_refused_by_rms_norm():
    with pytest.raises(ValueError, match="x must not be empty"):
        L.rms_norm(torch.ones(2, 0))


def test_elementwise_maps_accept_empty_input():
    e = torch.ones(2, 0, dtype=F64)
    assert L.dyt(e, 1.0).shape == (2, 0) and L.softcap(e, 1.0).shape == (2, 0)
    assert L.dyisru(e, 1.0, d=4).shape == (2, 0)


# -- third reading (s19): written-out formulas with constants != 1, attaining inputs, half ----

@SETTINGS
@given(st.integers(0, 2**31), st.floats(0.05, 40.0), st.integers(1, 1000),
       st.floats(0.2, 5.0), st.floats(-3.0, 3.0))
def test_dyisru_and_dyt_against_the_written_out_formulas(seed, C, d, gamma, beta):
    """gamma sqrt(d) x / sqrt(x^2 + C) + beta and gamma tanh(alpha x) + beta, with every constant
    away from 1 (C = 1, gamma = 1 or beta = 0 cannot tell C from C^2 or +beta from -beta)."""
    x = _randn(seed, 7, scale=3.0)
    isru = gamma * math.sqrt(d) * x / torch.sqrt(x.square() + C) + beta
    assert torch.allclose(L.dyisru(x, C, d=d, gamma=gamma, beta=beta), isru, rtol=1e-13, atol=1e-13)
    alpha = math.sqrt(C)
    tanh = gamma * torch.tensor([math.tanh(alpha * v) for v in x.tolist()], dtype=F64) + beta
    assert torch.allclose(L.dyt(x, alpha, gamma=gamma, beta=beta), tanh, rtol=1e-13, atol=1e-13)


@SETTINGS
@given(st.floats(-1e3, 1e3), st.floats(0.01, 100.0))
def test_softcap_against_the_written_out_formula(x, t):
    assert abs(L.softcap(torch.tensor([x], dtype=F64), t).item() - t * math.tanh(x / t)) \
        <= 1e-14 * t


@pytest.mark.parametrize("d", [2, 7, 64])
def test_offdiagonal_bounds_are_attained_at_equal_magnitudes(d):
    """dyt-prop-offdiag: with |x_i| all equal, q = 1/d, the Frobenius ratio is 1/sqrt(d) and the
    spectral ratio is 1 - 1/d = 1 - q (both bounds are sharp); random inputs never reach them."""
    signs = torch.where(_randn(d, d) > 0, 1.0, -1.0).to(F64)
    J = L.rms_norm_jacobian(2.5 * signs)
    D = J - torch.diag(torch.diagonal(J))
    frob = (torch.linalg.matrix_norm(D) / torch.linalg.matrix_norm(J)).item()
    spec = (torch.linalg.matrix_norm(D, ord=2) / torch.linalg.matrix_norm(J, ord=2)).item()
    assert abs(frob - 1 / math.sqrt(d)) < 1e-13 and abs(spec - (1 - 1 / d)) < 1e-13


@pytest.mark.parametrize("dtype,tiny", [(torch.float32, 1e-25), (F64, 1e-160)])
def test_rms_norm_of_a_tiny_vector_with_eps(dtype, tiny):
    """||x||^2/d << eps: y = x / sqrt(eps) (a version that formed eps / max|x|^2 overflowed
    there and returned 0)."""
    x = torch.tensor([1.0, -2.0, 3.0], dtype=F64) * tiny
    for eps in (1e-6, 0.25):
        y = L.rms_norm(x.to(dtype), eps=eps)
        assert y.dtype == dtype and torch.allclose(y.double(), x / math.sqrt(eps), rtol=1e-6,
                                                   atol=0)
    J = L.rms_norm_jacobian(x.to(dtype), eps=0.25)
    assert torch.allclose(J.double(), torch.eye(3, dtype=F64) / 0.5, rtol=1e-6, atol=1e-30)


def test_half_inputs_with_constants_outside_their_range():
    """float16 tops out at 65504: the ISRU constants of a width-768 vector with rho = 10 are
    about 7.7e4, and an alpha of 1e5 is inf in float16 (inf * 0 = nan at x = 0)."""
    x16 = _randn(12, 768, scale=10.0).half()
    C = L.rms_norm_isru_constants(x16)
    assert C.dtype == torch.float32 and C.min() > 65504
    y = L.dyisru(x16, C, d=768)
    assert y.dtype == torch.float16
    assert torch.allclose(y.double(), L.rms_norm(x16.double()), rtol=2e-3, atol=2e-3)
    big_c = torch.tensor(1e5, dtype=F64)
    ref = 3.0 * x16.double() / torch.sqrt(x16.double().square() + 1e5)
    assert torch.allclose(L.dyisru(x16, big_c, d=9).double(), ref, rtol=2e-3, atol=1e-4)
    zero_one = torch.tensor([0.0, 1e-3, -1.0], dtype=torch.float16)
    out = L.dyt(zero_one, torch.tensor(1e5, dtype=F64))
    assert out.tolist() == [0.0, 1.0, -1.0]
    # a small alpha with a large gamma: gamma tanh(alpha x) ~ x, not 0 (alpha x is subnormal)
    small = L.dyt(zero_one, 1e-7, gamma=1e7)
    assert torch.allclose(small.double(), zero_one.double(), rtol=1e-3, atol=0)
    assert L.softcap(zero_one, 1e-6).dtype == torch.float16


def test_tensor_parameters_are_cast_to_the_dtype_of_x_but_c_is_not():
    # dyt/dyisru cast a tensor alpha, gamma or beta to x's dtype first (as documented), so a
    # float64 alpha gives the float32 result of alpha.float(), bit for bit (a 1-d one: a 0-d
    # float64 tensor would not promote x anyway)
    x = torch.linspace(-3, 3, 101)
    a64 = torch.full((101,), 1 / 3, dtype=F64)
    assert torch.equal(L.dyt(x, a64), L.dyt(x, a64.float()))
    assert torch.equal(L.dyt(x, 0.5, gamma=a64), L.dyt(x, 0.5, gamma=a64.float()))
    # C is taken to its square root before narrowing: C = 1e40 (inf in float32) must give
    # x / sqrt(x^2 + 1e40) = x / 1e20, not x / inf = 0
    big = L.dyisru(torch.tensor([1.0, -2.0]), torch.tensor(1e40, dtype=F64))
    torch.testing.assert_close(big, torch.tensor([1e-20, -2e-20]), rtol=1e-6, atol=0)


def test_dyisru_with_c_zero_has_a_finite_gradient_at_zero():
    # C = 0: gamma sign(x), flat on both sides; the masked 0 / 0 must not turn the gradient NaN
    x = torch.tensor([0.0, 1.5, -2.0], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(L.dyisru(x, 0.0).sum(), x)
    assert torch.equal(g, torch.zeros(3, dtype=F64))


def test_autograd_at_the_zero_vector_with_eps():
    """With eps > 0, RMSNorm is smooth at 0 with Jacobian I / sqrt(eps); its backward must be
    finite there (a sqrt(mean(x^2)) inside the eps path gave 0 * inf = nan)."""
    z = torch.zeros(4, dtype=F64)
    auto = torch.autograd.functional.jacobian(lambda v: L.rms_norm(v, eps=0.25), z)
    assert torch.equal(auto, torch.eye(4, dtype=F64) / 0.5)
    assert torch.equal(L.rms_norm_jacobian(z, eps=0.25), auto)
