"""Tests of dlmath.selfsupervised: linear fields, S = -A^2 B^-2, shift fits, block extrapolation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import selfsupervised as Q
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


def _pair(seed, d=4, scale=0.3):
    return Q.commuting_pair(d, scale=scale, generator=_gen(seed))


# -- commuting_pair and anisotropy_matrix ---------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 8), st.floats(0.01, 1.0))
def test_commuting_pair_commutes_and_has_the_scale(seed, d, scale):
    A, B = Q.commuting_pair(d, scale=scale, generator=_gen(seed))
    assert A.shape == B.shape == (d, d) and A.dtype == F64
    assert float((A @ B - B @ A).abs().max()) < 1e-14 * (1 + float(A.abs().max())) ** 3
    assert abs(float(torch.linalg.eigvals(A).abs().max()) - scale) < 1e-10 * max(1, scale)


def test_commuting_pair_polynomial():
    A, B = Q.commuting_pair(3, coeffs=(2.0, 0.0, -1.0), generator=_gen(0))
    assert torch.allclose(B, 2 * torch.eye(3, dtype=F64) - A @ A, atol=1e-15)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 6))
def test_anisotropy_annihilates_second_derivatives(seed, d):
    A, _ = _pair(seed, d)
    B = A + 2 * torch.eye(d, dtype=F64)           # commuting and invertible
    S = Q.anisotropy_matrix(A, B)
    assert float((A @ A + S @ B @ B).abs().max()) < 1e-12


@SETTINGS
@given(st.integers(0, 2**31))
def test_anisotropy_identity_needs_no_commutation(seed):
    """A^2 + S B^2 = 0 is pure algebra: it holds for non-commuting A, B as well."""
    g = _gen(seed)
    A = torch.randn(4, 4, generator=g, dtype=F64)
    B = torch.randn(4, 4, generator=g, dtype=F64) + 8 * torch.eye(4, dtype=F64)
    S = Q.anisotropy_matrix(A, B)
    assert float((A @ A + S @ B @ B).abs().max()) < 1e-10 * float((A @ A).abs().max())


def test_anisotropy_cauchy_riemann_and_scalar_sign():
    a = 0.7
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
    S = Q.anisotropy_matrix(a * torch.eye(2, dtype=F64), a * J)
    assert torch.allclose(S, torch.eye(2, dtype=F64), atol=1e-15)
    s = Q.anisotropy_matrix(torch.tensor([[0.5]], dtype=F64), torch.tensor([[2.0]], dtype=F64))
    assert s.item() == pytest.approx(-0.0625, abs=1e-15)


def test_anisotropy_batched_and_dtype():
    A = torch.randn(3, 4, 4, generator=_gen(1))
    B = 0.3 * A + 3 * torch.eye(4)
    S = Q.anisotropy_matrix(A, B)
    assert S.shape == (3, 4, 4) and S.dtype == torch.float32
    assert float((A @ A + S @ B @ B).abs().max()) < 1e-4


def test_anisotropy_singular_B_raises():
    B = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64)    # nilpotent: B^2 = 0
    with pytest.raises(ValueError, match="singular"):
        Q.anisotropy_matrix(torch.eye(2, dtype=F64), B)
    with pytest.raises(ValueError, match="singular"):
        Q.anisotropy_matrix(torch.eye(2, dtype=F64), torch.zeros(2, 2, dtype=F64))


def test_anisotropy_bad_input():
    with pytest.raises(ValueError, match="square"):
        Q.anisotropy_matrix(torch.ones(2, 3), torch.eye(2))
    with pytest.raises(ValueError, match="same size"):
        Q.anisotropy_matrix(torch.eye(3), torch.eye(2))
    with pytest.raises(TypeError, match="A must"):
        Q.anisotropy_matrix(torch.eye(2, dtype=torch.int64), torch.eye(2))
    with pytest.raises(ValueError, match="finite"):
        Q.anisotropy_matrix(torch.full((2, 2), float("nan")), torch.eye(2))


# -- linear_field ---------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 5), st.integers(1, 5))
def test_linear_field_steps_are_exponentials(seed, H, W):
    A, B = _pair(seed)
    z0 = torch.randn(3, 4, generator=_gen(seed + 1), dtype=F64)
    Z = Q.linear_field(A, B, z0, H, W)
    assert Z.shape == (3, H, W, 4)
    assert torch.allclose(Z[:, 0, 0], z0, atol=1e-15)
    eA, eB = torch.linalg.matrix_exp(A), torch.linalg.matrix_exp(B)
    assert torch.allclose(Z[:, 1:], Z[:, :-1] @ eA.T, atol=1e-12)
    assert torch.allclose(Z[:, :, 1:], Z[:, :, :-1] @ eB.T, atol=1e-12)


def test_linear_field_steps_and_scalar_case():
    a, b = 0.3, -0.2
    Z = Q.linear_field(torch.tensor([[a]], dtype=F64), torch.tensor([[b]], dtype=F64),
                       torch.tensor([1.0], dtype=F64), 4, 3, dx=0.5, dy=2.0)
    i, j = torch.meshgrid(torch.arange(4.0, dtype=F64), torch.arange(3.0, dtype=F64),
                          indexing="ij")
    assert torch.allclose(Z[..., 0], torch.exp(a * 0.5 * i + b * 2.0 * j), atol=1e-15)


def test_linear_field_noncommuting_order():
    A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64)
    B = A.T.clone()
    z0 = torch.tensor([1.0, -2.0], dtype=F64)
    Z = Q.linear_field(A, B, z0, 2, 2)
    expected = torch.linalg.matrix_exp(A) @ torch.linalg.matrix_exp(B) @ z0
    other = torch.linalg.matrix_exp(B) @ torch.linalg.matrix_exp(A) @ z0
    assert torch.allclose(Z[1, 1], expected, atol=1e-15)
    assert float((Z[1, 1] - other).norm()) > 0.5


def test_linear_field_bad_input():
    A = torch.eye(2, dtype=F64)
    with pytest.raises(ValueError, match="share the size"):
        Q.linear_field(A, A, torch.ones(3, dtype=F64), 2, 2)
    with pytest.raises(ValueError, match="H must be >= 1"):
        Q.linear_field(A, A, torch.ones(2, dtype=F64), 0, 2)
    with pytest.raises(ValueError, match="z0 must be finite"):
        Q.linear_field(A, A, torch.tensor([1.0, float("inf")], dtype=F64), 2, 2)
    with pytest.raises(ValueError, match="single"):
        Q.linear_field(torch.eye(2).expand(3, 2, 2), A, torch.ones(2), 2, 2)


# -- fit_shift_operator ---------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from(["x", "y"]))
def test_fit_recovers_any_shift_on_exact_data(seed, axis):
    """Data generated by an arbitrary (non-exponential) M along one axis: M is recovered."""
    g = _gen(seed)
    d, n = 3, 5
    M = torch.eye(d, dtype=F64) + 0.3 * torch.randn(d, d, generator=g, dtype=F64)
    start = torch.randn(6, 4, d, generator=g, dtype=F64)       # 6 images, 4 lines each
    steps = [start]
    for _ in range(n - 1):
        steps.append(steps[-1] @ M.T)
    Z = torch.stack(steps, dim=-3 if axis == "x" else -2)      # grow along `axis`
    assert torch.allclose(Q.fit_shift_operator(Z, axis), M, atol=1e-10)


def test_fit_recovers_matrix_exponential_not_euler():
    A, B = _pair(3, d=4, scale=0.4)
    Z = Q.linear_field(A, B, torch.randn(20, 4, generator=_gen(4), dtype=F64), 6, 6)
    Mx = Q.fit_shift_operator(Z, "x")
    assert float((Mx - torch.linalg.matrix_exp(A)).norm()) < 1e-10
    assert float((Mx - torch.eye(4, dtype=F64) - A).norm()) > 1e-2


def test_fit_ridge_shrinks_and_rank_deficiency_is_min_norm():
    Z = torch.zeros(1, 2, 1, 3, dtype=F64)
    Z[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    Z[0, 1, 0] = torch.tensor([2.0, 0.0, 0.0], dtype=F64)
    M = Q.fit_shift_operator(Z, "x")                   # one pair: min-norm answer
    assert torch.allclose(M, torch.diag(torch.tensor([2.0, 0.0, 0.0], dtype=F64)))
    M1 = Q.fit_shift_operator(Z, "x", ridge=1.0)       # (2 * 1) / (1 + 1)
    assert M1[0, 0].item() == pytest.approx(1.0, abs=1e-14)


def test_fit_keeps_dtype_and_rejects_nonfinite():
    Z = Q.linear_field(0.1 * torch.eye(2), 0.2 * torch.eye(2), torch.randn(5, 2, generator=_gen(6)),
                       4, 4)
    assert Z.dtype == torch.float32
    M = Q.fit_shift_operator(Z, "y")
    assert M.dtype == torch.float32 and torch.allclose(M, torch.exp(torch.tensor(0.2)) *
                                                       torch.eye(2), atol=1e-5)
    Z[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="Z must be finite"):
        Q.fit_shift_operator(Z, "x")


def test_fit_bad_input():
    Z = torch.zeros(1, 4, 3, dtype=F64)
    with pytest.raises(ValueError, match="at least two positions"):
        Q.fit_shift_operator(Z, "x")
    with pytest.raises(ValueError, match="axis must be one of"):
        Q.fit_shift_operator(torch.zeros(2, 2, 3), "z")
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        Q.fit_shift_operator(torch.zeros(2, 2, 3), "x", ridge=-1.0)
    with pytest.raises(ValueError, match="at least 3"):
        Q.fit_shift_operator(torch.zeros(2, 3), "x")


# -- extrapolate_block ----------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 4), st.integers(1, 4), st.integers(0, 3),
       st.integers(0, 3), st.sampled_from(["xy", "yx"]))
def test_extrapolation_is_exact_on_linear_fields(seed, h, w, extra_h, extra_w, order):
    A, B = _pair(seed)
    H, W = h + extra_h, w + extra_w
    Z = Q.linear_field(A, B, torch.randn(2, 4, generator=_gen(seed + 1), dtype=F64), H, W)
    eA, eB = torch.linalg.matrix_exp(A), torch.linalg.matrix_exp(B)
    Zh = Q.extrapolate_block(Z[:, :h, :w], eA, eB, H, W, order=order)
    assert Zh.shape == Z.shape
    assert torch.equal(Zh[:, :h, :w], Z[:, :h, :w])
    assert torch.allclose(Zh, Z, atol=1e-11)


def test_extrapolation_order_matters_only_in_the_far_quarter():
    A = torch.tensor([[0.0, 0.3], [0.0, 0.0]], dtype=F64)
    Mx, My = torch.eye(2, dtype=F64) + A, torch.eye(2, dtype=F64) + A.T
    Zv = torch.randn(3, 3, 2, generator=_gen(5), dtype=F64)
    yx = Q.extrapolate_block(Zv, Mx, My, 6, 6, order="yx")
    xy = Q.extrapolate_block(Zv, Mx, My, 6, 6, order="xy")
    assert torch.equal(yx[:3], xy[:3]) and torch.equal(yx[:, :3], xy[:, :3])
    assert float((yx[3:, 3:] - xy[3:, 3:]).abs().max()) > 1e-3
    a, b = 2, 1                                          # position (3 + a, 3 + b)
    far = (torch.linalg.matrix_power(Mx, a + 1) @ torch.linalg.matrix_power(My, b + 1)
           @ Zv[2, 2])
    assert torch.allclose(yx[3 + a, 3 + b], far, atol=1e-14)


def test_extrapolation_bad_input_and_dtype():
    Zv = torch.zeros(2, 2, 3)
    I3 = torch.eye(3)
    assert Q.extrapolate_block(Zv, I3, I3, 2, 2).shape == (2, 2, 3)
    assert Q.extrapolate_block(Zv, I3.double(), I3, 3, 3).dtype == F64
    with pytest.raises(ValueError, match="H must be >= 2"):
        Q.extrapolate_block(Zv, I3, I3, 1, 4)
    with pytest.raises(ValueError, match=r"Mx and My must be \(3, 3\)"):
        Q.extrapolate_block(Zv, torch.eye(2), I3, 4, 4)
    with pytest.raises(ValueError, match="order must be one of"):
        Q.extrapolate_block(Zv, I3, I3, 4, 4, order="diag")
    with pytest.raises(ValueError, match="Zv must be finite"):
        Q.extrapolate_block(torch.full((2, 2, 3), float("nan")), I3, I3, 4, 4)


# -- masks ----------------------------------------------------------------------------------

def test_block_mask():
    m = Q.block_mask(6, 8, 3, 4, top=1, left=2)
    assert m.dtype == torch.bool and m.shape == (6, 8) and int(m.sum()) == 12
    assert m[1:4, 2:6].all() and not m[0].any() and not m[:, :2].any()
    with pytest.raises(ValueError, match="top must be <= 3"):
        Q.block_mask(6, 8, 3, 4, top=4)
    with pytest.raises(ValueError, match="h must be <= 6"):
        Q.block_mask(6, 8, 7, 4)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 12), st.integers(1, 12), st.floats(0.0, 1.0))
def test_random_patch_mask_counts(seed, H, W, ratio):
    m = Q.random_patch_mask(H, W, ratio, generator=_gen(seed))
    assert m.shape == (H, W) and int((~m).sum()) == round(ratio * H * W)


def test_random_patch_mask_is_reproducible_and_checked():
    a = Q.random_patch_mask(16, 16, 0.75, generator=_gen(7))
    b = Q.random_patch_mask(16, 16, 0.75, generator=_gen(7))
    assert torch.equal(a, b) and int(a.sum()) == 64
    with pytest.raises(ValueError, match="mask_ratio must be <= 1"):
        Q.random_patch_mask(4, 4, 1.5)
    with pytest.raises(TypeError, match="W must be an int"):
        Q.random_patch_mask(4, 4.0, 0.5)


# -- added by the second reader: ridge formula, edge cases, dtypes --------------------------

@SETTINGS
@given(st.integers(0, 2**31), st.floats(0.01, 10.0), st.sampled_from(["x", "y"]))
def test_fit_ridge_is_the_closed_form(seed, lam, axis):
    """ridge = lam gives M^T = (X^T X + lam I)^{-1} X^T Y for any data, lam != 1 included."""
    g = _gen(seed)
    Z = torch.randn(3, 4, 5, 3, generator=g, dtype=F64)
    dim = -3 if axis == "x" else -2
    n = Z.shape[dim]
    X = Z.narrow(dim, 0, n - 1).reshape(-1, 3)
    Y = Z.narrow(dim, 1, n - 1).reshape(-1, 3)
    expected = torch.linalg.solve(X.T @ X + lam * torch.eye(3, dtype=F64), X.T @ Y).T
    assert torch.allclose(Q.fit_shift_operator(Z, axis, ridge=lam), expected, atol=1e-12)


def test_fit_ridge_limits():
    Z = torch.randn(4, 5, 5, 3, generator=_gen(11), dtype=F64)
    X, Y = Z[:, :-1].reshape(-1, 3), Z[:, 1:].reshape(-1, 3)
    ols = torch.linalg.lstsq(X, Y).solution.T
    assert torch.allclose(Q.fit_shift_operator(Z, "x"), ols, atol=1e-12)
    assert torch.allclose(Q.fit_shift_operator(Z, "x", ridge=1e-12), ols, atol=1e-10)
    big = Q.fit_shift_operator(Z, "x", ridge=1e12)                 # ~ X^T Y / lam
    assert float(big.abs().max()) < 1e-9
    assert torch.allclose(big * 1e12, (X.T @ Y).T, rtol=1e-6, atol=1e-6)


def test_d_equals_one():
    a, b = 0.2, -0.1
    A, B = torch.tensor([[a]], dtype=F64), torch.tensor([[b]], dtype=F64)
    Z = Q.linear_field(A, B, torch.tensor([[1.0], [2.0]], dtype=F64), 4, 5)
    Mx, My = Q.fit_shift_operator(Z, "x"), Q.fit_shift_operator(Z, "y")
    assert Mx.shape == My.shape == (1, 1)
    assert Mx.item() == pytest.approx(math.exp(a), abs=1e-14)
    assert My.item() == pytest.approx(math.exp(b), abs=1e-14)
    assert torch.allclose(Q.extrapolate_block(Z[:, :2, :3], Mx, My, 4, 5), Z, atol=1e-14)
    A1, B1 = Q.commuting_pair(1, scale=0.4, coeffs=(1.0, 2.0), generator=_gen(2))
    assert abs(A1.item()) == pytest.approx(0.4) and B1.item() == pytest.approx(1 + 2 * A1.item())
    A0, B0 = Q.commuting_pair(3, scale=0.0, coeffs=(1.5,), generator=_gen(2))
    assert torch.equal(A0, torch.zeros(3, 3, dtype=F64))
    assert torch.equal(B0, 1.5 * torch.eye(3, dtype=F64))


def test_empty_inputs_raise_naming_the_argument():
    I2 = torch.eye(2, dtype=F64)
    with pytest.raises(ValueError, match="Z must not be empty"):
        Q.fit_shift_operator(torch.zeros(0, 3, 3, 2, dtype=F64), "x")
    with pytest.raises(ValueError, match="z0 must not be empty"):
        Q.linear_field(I2, I2, torch.zeros(0, 2, dtype=F64), 2, 2)
    with pytest.raises(ValueError, match="Zv must not be empty"):
        Q.extrapolate_block(torch.zeros(0, 2, 2, 2, dtype=F64), I2, I2, 3, 3)


def test_extrapolation_identity_sizes_and_one_axis():
    Zv = torch.randn(2, 3, 4, 2, generator=_gen(12), dtype=F64)
    Mx = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64)
    My = torch.tensor([[0.9, 0.0], [0.2, 1.1]], dtype=F64)
    same = Q.extrapolate_block(Zv, Mx, My, 3, 4)                   # H = h, W = w
    assert torch.equal(same, Zv)
    down = Q.extrapolate_block(Zv, Mx, My, 5, 4)                   # only rows are added
    assert down.shape == (2, 5, 4, 2)
    assert torch.allclose(down[:, 4], Zv[:, 2] @ (Mx @ Mx).T, atol=1e-15)
    right = Q.extrapolate_block(Zv, Mx, My, 3, 6, order="xy")      # only columns are added
    assert torch.allclose(right[:, :, 5], Zv[:, :, 3] @ (My @ My).T, atol=1e-15)


def test_dtypes_kept_and_promoted():
    A32, B32 = Q.commuting_pair(3, scale=0.2, generator=_gen(3), dtype=torch.float32)
    assert A32.dtype == B32.dtype == torch.float32
    z0 = torch.randn(2, 3, generator=_gen(4), dtype=F64)
    assert Q.linear_field(A32, B32, z0, 3, 3).dtype == F64          # promoted
    Z32 = Q.linear_field(A32, B32, z0.float(), 3, 3)
    assert Z32.dtype == torch.float32
    Mx = Q.fit_shift_operator(Z32, "x", ridge=0.5)
    assert Mx.dtype == torch.float32
    assert Q.extrapolate_block(Z32[:, :2, :2], Mx, Mx, 3, 3).dtype == torch.float32
    assert Q.anisotropy_matrix(A32, B32.double()).dtype == F64
    with pytest.raises(TypeError, match="dtype must be a floating"):
        Q.commuting_pair(2, dtype=torch.int64)


def test_anisotropy_singularity_threshold():
    A = torch.eye(2, dtype=F64)
    with pytest.raises(ValueError, match="singular"):              # cond(B^2) = 1e18
        Q.anisotropy_matrix(A, torch.diag(torch.tensor([1.0, 1e-9], dtype=F64)))
    S = Q.anisotropy_matrix(A, torch.diag(torch.tensor([1.0, 1e-6], dtype=F64)))  # cond 1e12
    assert torch.allclose(S, torch.diag(torch.tensor([-1.0, -1e12], dtype=F64)), rtol=1e-12)
    with pytest.raises(ValueError, match="singular"):              # one singular matrix in a batch
        Q.anisotropy_matrix(A.expand(2, 2, 2), torch.stack([2 * A, torch.zeros(2, 2, dtype=F64)]))


def test_random_patch_mask_rounds_half_to_even_and_extremes():
    assert int((~Q.random_patch_mask(1, 5, 0.5, generator=_gen(0))).sum()) == 2     # 2.5 -> 2
    assert int((~Q.random_patch_mask(1, 7, 0.5, generator=_gen(0))).sum()) == 4     # 3.5 -> 4
    assert Q.random_patch_mask(3, 3, 0.0, generator=_gen(0)).all()
    assert not Q.random_patch_mask(3, 3, 1.0, generator=_gen(0)).any()


def test_commuting_pair_needs_a_coefficient():
    with pytest.raises(ValueError, match="coeffs must hold at least one coefficient"):
        Q.commuting_pair(3, coeffs=(), generator=_gen(0))


# -- added in the third reading (s19): half precision, the default order, rounding -----------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_returned_in_half(dtype):
    """CPU eig/svd/pinv refuse half precision: every function works in float32, returns dtype."""
    A, B = Q.commuting_pair(3, scale=0.3, generator=_gen(20), dtype=dtype)
    A32, B32 = Q.commuting_pair(3, scale=0.3, generator=_gen(20), dtype=torch.float32)
    assert A.dtype == B.dtype == dtype
    assert torch.equal(A, A32.to(dtype)) and torch.equal(B, B32.to(dtype))  # same draw, rounded
    tol = 4 * torch.finfo(dtype).eps
    A64, B64 = A.double(), B.double()
    S = Q.anisotropy_matrix(A, B)
    S64 = Q.anisotropy_matrix(A64, B64)
    assert S.dtype == dtype
    assert float((S.double() - S64).abs().max()) <= tol * float(S64.abs().max())
    z0 = torch.tensor([[1.0, -0.5, 0.25], [0.5, 2.0, -1.0]], dtype=dtype)
    Z = Q.linear_field(A, B, z0, 4, 4)
    Z64 = Q.linear_field(A64, B64, z0.double(), 4, 4)
    assert Z.dtype == dtype
    assert float((Z.double() - Z64).abs().max()) <= tol * float(Z64.abs().max())
    Mx = Q.fit_shift_operator(Z64, "x").to(dtype)
    for ridge in (0.0, 0.1):
        M = Q.fit_shift_operator(Z, "x", ridge=ridge)
        ref = Q.fit_shift_operator(Z.double(), "x", ridge=ridge)       # same rounded data
        assert M.dtype == dtype and float((M.double() - ref).abs().max()) <= tol * 4
    E = Q.extrapolate_block(Z[:, :2, :2], Mx, Mx, 4, 4)
    E64 = Q.extrapolate_block(Z[:, :2, :2].double(), Mx.double(), Mx.double(), 4, 4)
    assert E.dtype == dtype and torch.equal(E[:, :2, :2], Z[:, :2, :2])
    assert float((E.double() - E64).abs().max()) <= tol * float(E64.abs().max())


def test_extrapolation_default_order_is_rows_first():
    """The chapter's text: the default extends each row right with M_y, then columns down."""
    Mx = torch.tensor([[1.0, 0.3], [0.0, 1.0]], dtype=F64)
    My = torch.tensor([[1.0, 0.0], [0.3, 1.0]], dtype=F64)            # Mx My != My Mx
    Zv = torch.randn(2, 2, 2, generator=_gen(21), dtype=F64)
    default = Q.extrapolate_block(Zv, Mx, My, 4, 4)
    assert torch.equal(default, Q.extrapolate_block(Zv, Mx, My, 4, 4, order="yx"))
    assert not torch.equal(default, Q.extrapolate_block(Zv, Mx, My, 4, 4, order="xy"))
    assert torch.allclose(default[3, 3], Mx @ Mx @ My @ My @ Zv[1, 1], atol=1e-15)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

def test_fuzz_anisotropy_matrix_broadcasts_batches_of_different_rank():
    """A (d, d) against a batch (1, d, d) of B (or the other way round) broadcasts, as the
    docstring says; before, torch.linalg.solve read the (d, d) right-hand side as a batch of
    vectors and failed. Batches that do not broadcast raise a ValueError naming A and B."""
    A, B = Q.commuting_pair(4, generator=generator(0, "cpu"))
    S = Q.anisotropy_matrix(A, B)
    assert torch.equal(Q.anisotropy_matrix(A, B.unsqueeze(0)), S.unsqueeze(0))
    assert torch.equal(Q.anisotropy_matrix(A.unsqueeze(0), B), S.unsqueeze(0))
    assert Q.anisotropy_matrix(A.expand(3, 4, 4), B).shape == (3, 4, 4)
    with pytest.raises(ValueError, match="A of shape .* B of shape"):
        Q.anisotropy_matrix(A.expand(3, 4, 4), B.expand(2, 4, 4))


# -- fourth reading: the pseudo-inverse cutoff ------------------------------------------------

def test_fit_cutoff_depends_on_d_not_on_the_number_of_images():
    """A well-determined feature 1000x smaller than the others is fitted in float32 (and in
    half precision, computed in float32) whatever the batch size; before, pinv's default
    cutoff eps * n_rows zeroed it once 16 images gave ~16 000 rows. ridge > 0 is the
    closed form (X^T X + lam I)^{-1} X^T Y of the same data in float64."""
    M = torch.tensor([[0.99, 0.05, 0.0], [-0.05, 0.99, 0.0], [0.0, 0.0, 0.97]])
    Z = torch.zeros(16, 32, 32, 3)
    Z[:, 0] = torch.randn(16, 32, 3, generator=_gen(30)) * torch.tensor([1.0, 1.0, 1e-3])
    for i in range(1, 32):
        Z[:, i] = Z[:, i - 1] @ M.T
    for images in (1, 16):
        fit = Q.fit_shift_operator(Z[:images], "x")
        assert fit.dtype == torch.float32 and torch.allclose(fit, M, atol=1e-4)
    half = Q.fit_shift_operator(Z.half(), "x")
    assert half.dtype == torch.float16 and abs(float(half[2, 2]) - 0.97) < 5e-3
    X, Y = Z.double()[:, :-1].reshape(-1, 3), Z.double()[:, 1:].reshape(-1, 3)
    lam = 1e-6
    ref = torch.linalg.solve(X.T @ X + lam * torch.eye(3, dtype=F64), X.T @ Y).T
    assert abs(float(ref[2, 2]) - 0.97) > 1e-4                       # the ridge term matters
    ridge = Q.fit_shift_operator(Z, "x", ridge=lam)
    assert torch.allclose(ridge.double(), ref, atol=1e-4)
    assert abs(float(ridge[2, 2]) - float(ref[2, 2])) < 1e-5


# -- gaps found by mutation testing ---------------------------------------------------------

def test_block_mask_off_the_quarter_and_default_corner():
    # h and w not half of H and W (a half-size block hides top:top - h for top:top + h)
    m = Q.block_mask(7, 9, 2, 3, top=4, left=5)
    expected = torch.tensor([[4 <= i < 6 and 5 <= j < 8 for j in range(9)] for i in range(7)])
    assert torch.equal(m, expected)
    corner = torch.zeros(5, 6, dtype=torch.bool)
    corner[:2, :4] = True
    assert torch.equal(Q.block_mask(5, 6, 2, 4), corner)   # top = left = 0 by default


def test_fit_rank_deficient_is_the_min_norm_least_squares():
    # 50 pairs, d = 3, the third feature of every source the sum of the other two (rank 2 up to
    # rounding), targets unrelated: M^T = pinv(X) Y with X's rounding-level singular value cut,
    # also at a scale of 1e4 (the cutoff is relative to the largest singular value)
    g = _gen(40)
    X = torch.randn(50, 3, generator=g, dtype=F64)
    X[:, 2] = X[:, 0] + X[:, 1]
    Y = torch.randn(50, 3, generator=g, dtype=F64)
    for scale in (1.0, 1e4):
        Z = scale * torch.stack([X, Y])                   # (H = 2, W = 50, d): pairs along x
        expected = (torch.linalg.pinv(scale * X, rtol=1e-10) @ (scale * Y)).T
        M = Q.fit_shift_operator(Z, "x")
        assert torch.allclose(M, expected, rtol=1e-9, atol=1e-12)
        # ridge = 0 is the cutoff, not 1 / (sigma + 0 / sigma)
        assert torch.isfinite(M).all() and float(M.abs().max()) < 10


def test_fit_on_a_single_image_and_its_batch_of_one():
    A, B = _pair(41, d=3)
    Z = Q.linear_field(A, B, torch.randn(3, generator=_gen(42), dtype=F64), 6, 5)  # (6, 5, 3)
    for axis in ("x", "y"):
        single = Q.fit_shift_operator(Z, axis)
        assert torch.allclose(single, Q.fit_shift_operator(Z[None], axis), atol=1e-12)
    assert torch.allclose(Q.fit_shift_operator(Z, "y"), torch.linalg.matrix_exp(B), atol=1e-8)


def test_anisotropy_threshold_counts_d_in_a_batch():
    # cond(B^2) = 1e14: above d eps = 4.4e-16 relative, so not singular, even in a batch of 1000
    # (a threshold that counted a batch size, 1000 eps = 2.2e-13, would refuse it); 1e-16 is
    # below d eps and is refused
    A = torch.eye(2, dtype=F64)
    for batch in ((1, 1000), (1000, 1)):
        B = torch.diag(torch.tensor([1.0, 1e-7], dtype=F64)).expand(*batch, 2, 2)
        S = Q.anisotropy_matrix(A, B)
        assert S.shape == (*batch, 2, 2)
        expected = torch.diag(torch.tensor([-1.0, -1e14], dtype=F64))
        assert torch.allclose(S[0, 0], expected, rtol=1e-10)
        B = torch.diag(torch.tensor([1.0, 1e-8], dtype=F64)).expand(*batch, 2, 2)
        with pytest.raises(ValueError, match="singular"):
            Q.anisotropy_matrix(A, B)


def test_random_draws_without_a_generator_and_on_a_given_device():
    m = Q.random_patch_mask(4, 4, 0.5)                # the global generator
    assert m.shape == (4, 4) and int((~m).sum()) == 8
    A, B = Q.commuting_pair(3)
    assert A.device.type == "cpu" and torch.allclose(A @ B, B @ A, atol=1e-15)
    # device names where to draw when given (meta: shapes only, no values)
    assert Q.random_patch_mask(4, 4, 0.5, device="meta").device.type == "meta"
    assert Q.commuting_pair(3, device="meta")[0].device.type == "meta"


def test_a_device_that_is_not_one_is_named():
    # found by make bad-inputs once the test above passed device=
    for call in (lambda: Q.commuting_pair(3, device="bogus"),
                 lambda: Q.random_patch_mask(4, 4, 0.5, device="bogus")):
        with pytest.raises(ValueError, match="device must be a torch.device or a device name"):
            call()
