r"""Truncated exponential series and the combinatorics behind a probability inequality.

Chapter: *A probability inequality* (``notebooks/02-truncated-exp-inequality.ipynb``), which
proves, for :math:`p\in[0,1)` and :math:`x=\log\frac{1}{1-p}`,

.. math:: \sum_{i=0}^{j} p^i \;\le\; \sum_{i=0}^{j}\frac{x^i}{i!},

by expanding the right-hand side in powers of :math:`p`. The truncated exponential
:func:`exp_taylor` is also the numerator of Taylor softmax (``dlmath.normalizers``).

Tensor functions take floating tensors, keep device and dtype and act elementwise; NaN raises
``ValueError``. The combinatorial functions return exact Python ``int`` / ``Fraction`` values.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from ._checks import as_float_tensor, check_int, check_no_nan

__all__ = [
    "exp_taylor",
    "geometric_partial_sum",
    "stirling1_row",
    "stirling1",
    "trunc_exp_log_coeffs",
    "series_coeffs",
]


def _values(x, name: str) -> torch.Tensor:
    x = as_float_tensor(x, name, min_ndim=0, allow_empty=True)
    return check_no_nan(x, name)


def exp_taylor(x, j: int) -> torch.Tensor:
    r"""The exponential series truncated after the power :math:`j`.

    .. math:: f_j(x) = \sum_{i=0}^{j} \frac{x^i}{i!}, \qquad f_j' = f_{j-1},

    evaluated by Horner's rule, elementwise, for any shape. For even :math:`j` it is positive
    on the whole real line (its minimum sits at the root of :math:`f_{j-1}`), which is why
    Taylor softmax uses even orders. ``j`` is an int >= 0; ``±inf`` entries follow the
    leading term (:math:`f_j(-\infty)=+\infty` for even :math:`j\ge 2`).
    """
    x = _values(x, "x")
    j = check_int(j, "j", low=0)
    out = torch.ones_like(x)
    for i in range(j, 0, -1):  # 1 + x/1 (1 + x/2 (1 + ... (1 + x/j))); at x = ±inf each
        out = 1 + out * x / i  # step is ±inf (never inf - inf), the sign of x^j in the end
    return out


def geometric_partial_sum(p, j: int) -> torch.Tensor:
    r"""The partial geometric sum :math:`\sum_{i=0}^{j} p^i` (Horner), elementwise.

    It equals :math:`(1-p^{j+1})/(1-p)` for :math:`p\ne1` and :math:`j+1` at :math:`p=1`;
    Horner's rule needs no case split and has no cancellation near :math:`p=1`.
    """
    p = _values(p, "p")
    j = check_int(j, "j", low=0)
    out = torch.ones_like(p)
    for _ in range(j):
        out = 1 + p * out
    return out


def stirling1_row(n: int) -> list[int]:
    r"""The unsigned Stirling numbers of the first kind :math:`c(n, 0), \dots, c(n, n)`.

    :math:`c(n, m)` counts the permutations of :math:`n` items with exactly :math:`m` cycles;
    they obey :math:`c(n+1, m) = c(n, m-1) + n\,c(n, m)` with :math:`c(0,0)=1`, and
    :math:`\sum_m c(n,m) = n!`. Exact integers, built by that recurrence.
    """
    n = check_int(n, "n", low=0)
    row = [1]
    for k in range(n):  # row k -> row k + 1
        row = [(row[m - 1] if m >= 1 else 0) + (k * row[m] if m <= k else 0)
               for m in range(k + 2)]
    return row


def stirling1(n: int, m: int) -> int:
    r"""One unsigned Stirling number of the first kind :math:`c(n, m)` (0 when :math:`m>n`)."""
    n = check_int(n, "n", low=0)
    m = check_int(m, "m", low=0)
    return stirling1_row(n)[m] if m <= n else 0


def trunc_exp_log_coeffs(j: int, order: int) -> list[Fraction]:
    r"""Exact power-series coefficients of :math:`f_j(-\log(1-p))` in :math:`p`.

    .. math:: f_j\big(-\log(1-p)\big) = \sum_{k\ge0} a^{(j)}_k p^k,\qquad
              a^{(j)}_k = \frac{1}{k!}\sum_{m=0}^{\min(j,k)} c(k, m),

    from :math:`\frac{(-\log(1-p))^m}{m!}=\sum_{k\ge m}\frac{c(k,m)}{k!}p^k`. Returns
    :math:`a^{(j)}_0,\dots,a^{(j)}_{\text{order}}` as ``Fraction`` s: they equal 1 for
    :math:`k\le j` and lie strictly between 0 and 1 for :math:`k>j\ge1`
    (:math:`a^{(j)}_k` is the probability that a uniform random permutation of :math:`k`
    items has at most :math:`j` cycles).
    """
    j = check_int(j, "j", low=0)
    order = check_int(order, "order", low=0)
    return [Fraction(sum(stirling1_row(k)[: j + 1]), math.factorial(k)) for k in range(order + 1)]


def series_coeffs(expr, var, order: int) -> list:
    r"""Exact Taylor coefficients :math:`[\,\mathrm{var}^k\,]\,\mathrm{expr}` for
    :math:`k = 0,\dots,\text{order}`, computed by sympy around ``var = 0``.

    ``expr`` and ``var`` are sympy objects; the coefficients are sympy numbers (exact
    rationals when the expansion is rational).
    """
    import sympy as sp

    order = check_int(order, "order", low=0)
    if not isinstance(var, sp.Symbol):
        raise TypeError(f"var must be a sympy Symbol, got {type(var).__name__}")
    poly = sp.expand(sp.series(sp.sympify(expr), var, 0, order + 1).removeO())
    return [poly.coeff(var, k) for k in range(order + 1)]
