"""Tests of dlmath.series: truncated exponential, Stirling numbers, the coefficient closed form."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import series as S

F64 = torch.float64


def test_exp_taylor_matches_the_sum_and_exp():
    x = torch.linspace(-6, 6, 101, dtype=F64)
    for j in range(8):
        direct = sum(x**i / math.factorial(i) for i in range(j + 1))
        torch.testing.assert_close(S.exp_taylor(x, j), direct)
    torch.testing.assert_close(S.exp_taylor(x, 60), torch.exp(x))
    # f_j' = f_{j-1}
    xr = x.clone().requires_grad_()
    S.exp_taylor(xr, 5).sum().backward()
    torch.testing.assert_close(xr.grad, S.exp_taylor(x, 4))


def test_exp_taylor_even_orders_are_positive_with_known_minima():
    x = torch.linspace(-5, 1, 600_001, dtype=F64)
    for k, want in ((2, 0.5), (4, 0.2704), (6, 0.1493), (8, 0.0833)):
        assert abs(S.exp_taylor(x, k).min().item() - want) < 1e-3
    assert S.exp_taylor(torch.tensor(-3.0), 3).item() < 0  # odd orders go negative


def test_exp_taylor_infinities_and_shapes():
    x = torch.tensor([[-math.inf, math.inf], [0.0, 1.0]])
    for j in range(1, 9):  # the leading power decides: (-inf)^j has the sign (-1)^j
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            got = S.exp_taylor(x[0].to(dtype), j).tolist()
            assert got == [(-1) ** j * math.inf, math.inf], (j, dtype)
    assert S.exp_taylor(x, 0).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert S.exp_taylor(torch.tensor(2.0, dtype=F64), 2).item() == 5.0
    assert S.exp_taylor(x, 2).dtype == torch.float32


def test_geometric_partial_sum():
    p = torch.linspace(-0.99, 0.99, 41, dtype=F64)
    for j in range(6):
        torch.testing.assert_close(S.geometric_partial_sum(p, j), (1 - p ** (j + 1)) / (1 - p))
    assert S.geometric_partial_sum(torch.tensor(1.0), 4).item() == 5.0


def test_stirling_numbers():
    for n in range(10):
        row = S.stirling1_row(n)
        assert sum(row) == math.factorial(n)
        for m in range(n + 1):
            assert row[m] == sp.functions.combinatorial.numbers.stirling(n, m, kind=1,
                                                                         signed=False)
    assert S.stirling1_row(3) == [0, 2, 3, 1]
    assert S.stirling1(5, 7) == 0
    assert S.stirling1(0, 0) == 1


def test_coefficients_closed_form_against_sympy_series():
    p = sp.symbols("p")
    x = -sp.log(1 - p)
    for j in range(5):
        f = sum(x**i / sp.factorial(i) for i in range(j + 1))
        got = S.series_coeffs(f, p, 7)
        want = S.trunc_exp_log_coeffs(j, 7)
        assert [sp.Rational(c.numerator, c.denominator) for c in want] == got


def test_coefficient_pattern():
    table = {1: (Fraction(1, 2), Fraction(1, 3), Fraction(1, 4)),
             2: (Fraction(5, 6), Fraction(17, 24), Fraction(37, 60)),
             3: (Fraction(23, 24), Fraction(109, 120), Fraction(619, 720)),
             4: (Fraction(119, 120), Fraction(44, 45), Fraction(4843, 5040))}
    for j, tail in table.items():
        a = S.trunc_exp_log_coeffs(j, j + 3)
        assert a[: j + 1] == [1] * (j + 1)
        assert tuple(a[j + 1:]) == tail
    for j in range(1, 9):
        a = S.trunc_exp_log_coeffs(j, 14)
        assert all(0 < c < 1 for c in a[j + 1:])
        assert a[j + 1] == 1 - Fraction(1, math.factorial(j + 1))
    assert S.trunc_exp_log_coeffs(0, 5) == [1, 0, 0, 0, 0, 0]


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 1 - 1e-9), st.integers(0, 30))
def test_the_inequality_holds_on_the_unit_interval(p, j):
    pt = torch.tensor(p, dtype=F64)
    lhs = S.geometric_partial_sum(pt, j)
    rhs = S.exp_taylor(-torch.log1p(-pt), j)
    assert rhs >= lhs - 1e-12 * lhs


def test_the_inequality_fails_for_negative_p_and_even_j():
    p = torch.tensor(-0.5, dtype=F64)
    for j in (2, 4, 6):
        assert S.exp_taylor(-torch.log1p(-p), j) < S.geometric_partial_sum(p, j)


@settings(max_examples=80, deadline=None)
@given(st.floats(-30, 30), st.integers(0, 40))
def test_exp_taylor_against_exact_sum(x, j):
    # Horner's rule within a few ulps of the exact truncated sum, measured against the
    # condition number sum |x|^i / i!; an extra or a missing term is far outside this
    import mpmath

    with mpmath.workdps(50):
        xm = mpmath.mpf(x)
        exact = float(sum(xm**i / mpmath.factorial(i) for i in range(j + 1)))
        scale = float(sum(abs(xm) ** i / mpmath.factorial(i) for i in range(j + 1)))
    got = S.exp_taylor(torch.tensor(x, dtype=F64), j).item()
    assert abs(got - exact) <= 4 * (j + 1) * 2.2e-16 * scale


def test_gap_is_the_coefficient_tail():
    # f_j(x(p)) - sum_{i<=j} p^i = sum_{k>j} a_k p^k, in 50-digit arithmetic
    import mpmath

    with mpmath.workdps(50):
        for j in (1, 2, 4):
            a = S.trunc_exp_log_coeffs(j, 400)
            for p in (mpmath.mpf("0.2"), mpmath.mpf("0.6")):
                x = -mpmath.log(1 - p)
                gap = sum(x**i / mpmath.factorial(i) for i in range(j + 1)) - \
                    sum(p**i for i in range(j + 1))
                tail = sum(mpmath.mpf(c.numerator) / c.denominator * p**k
                           for k, c in enumerate(a) if k > j)
                assert abs(gap / tail - 1) < mpmath.mpf(10) ** -30


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_dtype_is_kept_and_the_derivative_is_the_previous_order(dtype):
    x = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=dtype)
    assert S.exp_taylor(x, 4).dtype == dtype
    assert S.geometric_partial_sum(x / 4, 3).dtype == dtype
    x64 = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: S.exp_taylor(z, 6), (x64,))
    (grad,) = torch.autograd.grad(S.exp_taylor(x64, 6).sum(), x64)
    torch.testing.assert_close(grad, S.exp_taylor(x64.detach(), 5))


def test_geometric_partial_sum_edge_values():
    p = torch.tensor([-1.0, 1.0, math.inf, -math.inf, 0.0], dtype=F64)
    for j in range(5):
        got = S.geometric_partial_sum(p, j).tolist()
        assert got[0] == (1.0 if j % 2 == 0 else 0.0)      # 1 - 1 + 1 - ...
        assert got[1] == j + 1
        assert got[2] == (math.inf if j > 0 else 1.0)
        assert got[3] == ((math.inf if j % 2 == 0 else -math.inf) if j > 0 else 1.0)
        assert got[4] == 1.0


def test_bad_input():
    with pytest.raises(TypeError, match="floating"):
        S.exp_taylor(torch.tensor([1, 2]), 2)
    with pytest.raises(ValueError, match="NaN"):
        S.geometric_partial_sum(torch.tensor([math.nan]), 2)
    with pytest.raises(ValueError, match="j must be >= 0"):
        S.exp_taylor(torch.zeros(2), -1)
    with pytest.raises(TypeError, match="j must be an int"):
        S.exp_taylor(torch.zeros(2), 2.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        S.stirling1_row(-1)
    with pytest.raises(TypeError, match="Symbol"):
        S.series_coeffs(sp.Integer(1), 1, 3)
    assert S.exp_taylor(torch.zeros(0), 3).shape == (0,)
    with pytest.raises(ValueError, match="order must be >= 0"):
        S.trunc_exp_log_coeffs(2, -1)
    with pytest.raises(ValueError, match="m must be >= 0"):
        S.stirling1(3, -1)
