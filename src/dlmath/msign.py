r"""The matrix sign (orthogonal polar factor) and its Newton–Schulz approximations.

Chapters: *Muon: from vectors to matrices* (``notebooks/08-muon-msign.ipynb``) derives every
formula here; *The Muon sequel* (``notebooks/09-muon-moonlight.ipynb``) uses them.

For :math:`M = U\Sigma V^\top` of rank :math:`r` (thin SVD),

.. math:: \operatorname{msign}(M) = U_{[:, :r]} V_{[:, :r]}^\top = M (M^\top M)^{+1/2},

every non-zero singular value replaced by 1. :func:`polar` computes it exactly by SVD;
:func:`msign` approximates it with matrix products only, by iterating an odd polynomial
:math:`X \mapsto aX + bX(X^\top X) + cX(X^\top X)^2` that acts on each singular value through the
scalar map :math:`g(x) = ax + bx^3 + cx^5` (:func:`newton_schulz_map`).

Conventions: matrices are the last two dimensions, any leading dimensions are a batch;
results keep the input's device and dtype. Input must be finite (NaN or inf raise
``ValueError``); the zero matrix maps to the zero matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from numbers import Real

import torch

from ._checks import as_float_tensor, check_finite, check_int, check_matrix, check_real, check_reals

__all__ = [
    "polar",
    "msign",
    "newton_schulz_map",
    "ns_schedule",
    "SCHEDULES",
    "SCALES",
    "JORDAN",
    "TAYLOR",
    "YOU_JIACHENG",
    "SU_6STEP",
    "quintic_from_roots",
    "optimal_quintic",
    "polar_express_coefficients",
    "with_safety",
    "marchenko_pastur_singular_values",
    "fit_quintic",
]

Triple = tuple[float, float, float]

#: Keller Jordan's fixed quintic, used 5 times (also ``torch.optim.Muon``'s default).
JORDAN: tuple[Triple, ...] = ((3.4445, -4.7750, 2.0315),)
#: Second-order Taylor expansion of :math:`t^{-1/2}` at 1: :math:`(15 - 10t + 3t^2)/8`.
TAYLOR: tuple[Triple, ...] = ((15 / 8, -10 / 8, 3 / 8),)
#: @YouJiacheng's six per-step quintics (Su, kexue.fm/archives/10922), printed as integers / 1024.
YOU_JIACHENG: tuple[Triple, ...] = tuple(
    (a / 1024, b / 1024, c / 1024)
    for a, b, c in ((3955, -8306, 5008), (3735, -6681, 3463), (3799, -6499, 3211),
                    (4019, -6385, 2906), (2677, -3029, 1162), (2172, -1833, 682))
)
#: Su's six per-step quintics from his min–max fit (kexue.fm/archives/10922), integers / 1024.
SU_6STEP: tuple[Triple, ...] = tuple(
    (a / 1024, b / 1024, c / 1024)
    for a, b, c in ((4140, -7553, 3571), (3892, -6637, 2973), (3668, -6456, 3021),
                    (3248, -6211, 3292), (2792, -5759, 3796), (3176, -5507, 4048))
)

#: Polar Express defaults (Amsel et al. 2025): the lower end of the interval, the cushion
#: :math:`\lambda` of their code, and the number of tabulated steps.
PE_LOWER, PE_CUSHION, PE_STEPS, PE_SAFETY = 1e-3, 0.02407327424182761, 8, 1.01


def quintic_from_roots(kappa: float, x1: float, x2: float) -> Triple:
    r"""Coefficients of :math:`g(x) = x + \kappa x (x^2 - x_1^2)(x^2 - x_2^2)`.

    .. math:: a = 1 + \kappa x_1^2 x_2^2,\quad b = -\kappa (x_1^2 + x_2^2),\quad c = \kappa,

    the parametrisation in which :math:`\pm x_1, \pm x_2` are the positive fixed points of
    :math:`g` (Su's coefficient table in kexue.fm/archives/10592, chapter 08).
    """
    kappa = check_real(kappa, "kappa")
    x1 = check_real(x1, "x1")
    x2 = check_real(x2, "x2")
    return (1 + kappa * x1**2 * x2**2, -kappa * (x1**2 + x2**2), kappa)


def optimal_quintic(lower: float, upper: float = 1.0, *, tol: float = 1e-15) -> Triple:
    r"""The odd quintic :math:`p(x) = ax + bx^3 + cx^5` closest to 1 in the max norm on
    :math:`[\ell, u]`.

    .. math:: p^* = \arg\min_{p} \max_{x \in [\ell, u]} |p(x) - 1|

    By the equioscillation theorem :math:`p^* - 1` takes the values :math:`-E, +E, -E, +E` at
    :math:`\ell < q < r < u`, where :math:`q, r` are the critical points of :math:`p^*`. The
    Remez-type iteration alternates solving those four linear equations for
    :math:`(a, b, c, E)` with moving :math:`q, r` to the roots of :math:`p'`. The problem is
    scale invariant (:math:`p(x) \mapsto p(x/u)`), so it is solved on :math:`[\ell/u, 1]`.
    When :math:`\ell/u > 1 - 5\cdot 10^{-6}` it returns the Taylor map
    :math:`(15/8, -10/8, 3/8)` rescaled to :math:`u`, the limit of the optimum as the
    interval shrinks. The iteration stops when :math:`E` is stable and the error at the new
    extrema :math:`q, r` does not exceed :math:`|E|` (Remez's test; :math:`E` alone is no test
    for a tiny :math:`\ell`), so an :math:`\ell/u` down to the smallest subnormal gives the
    limit quintic (:math:`a \approx 8.5143`, :math:`0 < p \le 1` on :math:`(0, \ell]`).
    Chapter 08 derives it. Runs in float64.
    """
    upper = check_real(upper, "upper", positive=True)
    lower = check_real(lower, "lower", positive=True, high=upper)
    return _optimal_quintic(lower / upper, upper, tol)


@lru_cache(maxsize=256)
def _optimal_quintic(lo: float, u: float, tol: float) -> Triple:
    if lo > 1 - 5e-6:
        a, b, c = TAYLOR[0]
    else:
        q, r = (3 * lo + 1) / 4, (lo + 3) / 4
        E_old = math.inf
        for _ in range(100):
            pts = torch.tensor([lo, q, r, 1.0], dtype=torch.float64)
            lhs = torch.stack([pts, pts**3, pts**5,
                               torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)], -1)
            a, b, c, E = torch.linalg.solve(lhs, torch.ones(4, dtype=torch.float64)).tolist()
            disc = math.sqrt(9 * b * b - 20 * a * c)
            q, r = math.sqrt((-3 * b - disc) / (10 * c)), math.sqrt((-3 * b + disc) / (10 * c))
            # converged when E is stable and the error at the new extrema q, r does not exceed
            # the levelled |E| (E alone is no test for a tiny lo: E ~ 1 - a*lo stays near 1)
            peak = max(abs(_quintic((a, b, c), x) - 1) for x in (q, r))
            if abs(E - E_old) <= tol and peak <= abs(E) + 1e-13:
                break
            E_old = E
    return (a / u, b / u**3, c / u**5)


def _quintic(coef: Triple, x: float) -> float:
    a, b, c = coef
    return a * x + b * x**3 + c * x**5


def polar_express_coefficients(steps: int = PE_STEPS, lower: float = PE_LOWER,
                               cushion: float = PE_CUSHION) -> tuple[Triple, ...]:
    r"""Polar Express's greedy per-step quintics (Amsel, Persson, Musco & Gower 2025).

    Start from :math:`[\ell_1, u_1] = [\ell, 1]`. At step :math:`t` take the optimal quintic
    (:func:`optimal_quintic`) on the cushioned interval :math:`[\max(\ell_t, \lambda u_t), u_t]`,
    recentre it by :math:`\gamma = 2/(p(\ell_t) + p(u_t))` so that the worst errors at both
    ends are equal, and move to :math:`\ell_{t+1} = p_t(\ell_t)`, :math:`u_{t+1} = 2 - \ell_{t+1}`.

    Returns the raw coefficients, *before* the safety factor (:func:`with_safety`), which is
    how the paper and the post print them. With ``cushion=0`` the recentring factor is 1 and
    this is the pure greedy schedule, which is optimal for the composition on
    :math:`[\ell, 1]` (chapter 08's theorem); a positive cushion gives up a little of that
    optimality in the first steps so that no singular value is sent close to 0. As the
    interval shrinks the steps tend to :math:`(15/8, -10/8, 3/8)`.
    """
    steps = check_int(steps, "steps", low=1)
    lower = check_real(lower, "lower", positive=True, high=1.0)
    cushion = check_real(cushion, "cushion", nonnegative=True, high=1.0)
    lo, u = lower, 1.0
    out = []
    for _ in range(steps):
        coef = optimal_quintic(max(lo, cushion * u), u)
        gamma = 2 / (_quintic(coef, lo) + _quintic(coef, u))
        coef = tuple(gamma * k for k in coef)
        out.append(coef)
        lo = _quintic(coef, lo)
        u = 2 - lo
    return tuple(out)


def with_safety(coefficients: Sequence[Triple], factor: float = PE_SAFETY,
                keep_last: bool = True) -> tuple[Triple, ...]:
    r"""Apply the safety factor :math:`p(x) \to p(x/f)`: :math:`(a/f, b/f^3, c/f^5)`.

    With ``keep_last`` the last triple is left alone (Polar Express's convention: it is the
    Taylor map, repeated for any further steps, and needs no margin).
    """
    factor = check_real(factor, "factor", positive=True)
    coefficients = _as_triples(coefficients)
    n = len(coefficients) - 1 if keep_last else len(coefficients)
    scaled = tuple((a / factor, b / factor**3, c / factor**5) for a, b, c in coefficients[:n])
    return scaled + tuple(coefficients[n:])


@lru_cache(maxsize=1)
def _polar_express_published() -> tuple[Triple, ...]:
    return with_safety(polar_express_coefficients(PE_STEPS, PE_LOWER, PE_CUSHION))


#: Named coefficient schedules accepted by :func:`msign` (``"polar_express"`` is computed).
SCHEDULES = ("jordan", "taylor", "you_jiacheng", "su_6step", "polar_express")


def _as_triples(coefficients) -> tuple[Triple, ...]:
    """A sequence of (a, b, c) triples of finite reals (a bare triple counts as one)."""
    if isinstance(coefficients, torch.Tensor):
        coefficients = coefficients.tolist()
    if (isinstance(coefficients, Sequence) and len(coefficients) == 3
            and all(isinstance(v, Real) and not isinstance(v, bool) for v in coefficients)):
        coefficients = (coefficients,)
    if not isinstance(coefficients, Sequence) or isinstance(coefficients, str) \
            or len(coefficients) == 0:
        raise TypeError("coefficients must be a schedule name, an (a, b, c) triple or a "
                        f"non-empty sequence of (a, b, c) triples, got {coefficients!r}")
    out = []
    for i, t in enumerate(coefficients):
        if not isinstance(t, Sequence) or isinstance(t, str) or len(t) != 3:
            raise ValueError(f"coefficients[{i}] must be an (a, b, c) triple, got {t!r}")
        out.append(tuple(check_real(v, f"coefficients[{i}]") for v in t))
    return tuple(out)


def ns_schedule(coefficients="jordan", steps: int = 5) -> tuple[Triple, ...]:
    r"""The list of ``steps`` triples :math:`(a_t, b_t, c_t)` that :func:`msign` will use.

    ``coefficients`` is a name in :data:`SCHEDULES`, one triple (used at every step) or a
    sequence of triples (step :math:`t` uses triple :math:`t`; past the end the last triple
    repeats). ``"polar_express"`` is the paper's 8-step table with the safety factor 1.01 on
    its first 7 steps.
    """
    steps = check_int(steps, "steps", low=1)
    sched = _schedule_table(coefficients)
    return tuple(sched[min(t, len(sched) - 1)] for t in range(steps))


def _schedule_table(coefficients) -> tuple[Triple, ...]:
    """The whole table behind a schedule name or a sequence of triples (before repetition)."""
    if isinstance(coefficients, str):
        table = {"jordan": JORDAN, "taylor": TAYLOR, "you_jiacheng": YOU_JIACHENG,
                 "su_6step": SU_6STEP}
        if coefficients == "polar_express":
            return _polar_express_published()
        if coefficients in table:
            return table[coefficients]
        raise ValueError(f"coefficients must be one of {list(SCHEDULES)} or a sequence of "
                         f"(a, b, c) triples, got {coefficients!r}")
    return _as_triples(coefficients)


def newton_schulz_map(x, coefficients="jordan", steps: int = 5) -> torch.Tensor:
    r"""The scalar map that :func:`msign` applies to each normalised singular value.

    .. math:: g_T \circ \dots \circ g_1(x), \qquad g_t(x) = a_t x + b_t x^3 + c_t x^5 .

    Elementwise on a floating tensor (array-likes are converted; float64 stays float64);
    ``coefficients`` and ``steps`` as in :func:`ns_schedule`. Chapter 08 plots it.
    """
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    for a, b, c in ns_schedule(coefficients, steps):
        x2 = x * x
        x = x * (a + x2 * (b + c * x2))
    return x


def _work_dtype(M: torch.Tensor, dtype) -> torch.dtype:
    if dtype is None:
        return torch.float64 if M.dtype == torch.float64 else torch.float32
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"dtype must be None or a floating torch dtype, got {dtype!r}")
    return dtype


def _normalise(X: torch.Tensor, M: torch.Tensor, validate: bool) -> torch.Tensor:
    """X / ||X||_F per matrix; a zero matrix stays zero.

    One norm and one division. With ``validate`` a single host synchronisation on the norms
    catches NaN/inf (ValueError) and norms that overflow or underflow the dtype, which are
    then recomputed after dividing by the largest entry.
    """
    fro = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    if validate:
        ok = torch.isfinite(fro) & (fro > torch.finfo(X.dtype).tiny ** 0.25)
        if not bool(ok.all()):
            check_finite(M, "M")
            if not bool(torch.isfinite(X).all()):
                raise ValueError(f"M has entries beyond the range of the working dtype "
                                 f"{X.dtype}; pass a wider dtype")
            scale = X.abs().amax(dim=(-2, -1), keepdim=True)
            X = X / torch.where(scale > 0, scale, torch.ones_like(scale))
            fro = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    return X / fro.clamp_min(torch.finfo(X.dtype).tiny)


def _schatten8(A: torch.Tensor, A2: torch.Tensor, X: torch.Tensor):
    """Su's free renormalisation: divide by s = ||A^2||_F^(1/4) = (sum sigma^8)^(1/8) <= 1."""
    s = torch.linalg.matrix_norm(A2, keepdim=True).pow(0.25)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return A / s**2, A2 / s**4, X / s


def _addmm(C: torch.Tensor, M1: torch.Tensor, M2: torch.Tensor, beta: float, alpha: float):
    """beta * C + alpha * M1 @ M2 in one fused product (addmm for 2-D, baddbmm for 3-D)."""
    return (torch.addmm if C.ndim == 2 else torch.baddbmm)(C, M1, M2, beta=beta, alpha=alpha)


#: Scalings accepted by :func:`msign`'s ``scale``.
SCALES = ("frobenius", "schatten8")


def msign(M, steps: int = 5, coefficients="jordan", *, dtype: torch.dtype | None = None,
          gram: bool | None = None, scale: str = "frobenius", validate: bool = True
          ) -> torch.Tensor:
    r"""Newton–Schulz approximation of :math:`\operatorname{msign}(M)` (matrix products only).

    .. math::
        X_0 = \frac{M}{\|M\|_F}, \qquad
        X_{t} = a_t X_{t-1} + \big(b_t A_{t} + c_t A_{t}^2\big) X_{t-1},\quad
        A_{t} = X_{t-1} X_{t-1}^\top .

    With :math:`M = U\Sigma V^\top`, :math:`X_T = U\, g_T\circ\dots\circ g_1(\Sigma/\|M\|_F)\,
    V^\top`: the singular vectors are exact and each singular value :math:`x \in (0, 1]` goes
    through :func:`newton_schulz_map`. The Frobenius normalisation puts every singular value
    in :math:`(0, 1]` (the largest is at most 1); a tall matrix is transposed so that the Gram
    matrix :math:`A` is the smaller one. Each step is two fused products
    (``addmm``: :math:`B = bA + cA\cdot A`, then :math:`aX + B\cdot X`) after :math:`A = XX^\top`.

    ``scale="schatten8"`` (Su's free step-1 renormalisation, kexue.fm/archives/10922) divides
    further, inside the first step, by
    :math:`s = \|A_1^2\|_F^{1/4} = (\sum_i x_i^8)^{1/8}`, which bounds the largest singular
    value more tightly than the Frobenius norm (:math:`x_1 \le s \le 1`); :math:`A_1^2` is
    computed by the first step anyway, so it costs one reduction of an :math:`n\times n` matrix.
    It lifts the small singular values, so the result is closer to msign.

    How close the result is to :func:`polar` depends on the schedule: ``"jordan"`` (the
    default, 5 steps) leaves singular values of a Gaussian matrix in roughly
    :math:`[0.68, 1.13]` by design; ``"taylor"`` converges to msign for every singular value
    given enough steps; ``"polar_express"`` is the published 8-step table (:func:`ns_schedule`:
    :func:`polar_express_coefficients` with the cushion ``PE_CUSHION`` :math:`\approx 0.024`
    and the safety factor 1.01 on its first 7 steps), a safeguarded, slightly worse version of
    the greedy optimum (``cushion=0``). Singular values below about :math:`10^{-3}\|M\|_F`
    are not brought to 1 by any 5-step schedule; zero singular values stay zero
    (:math:`g(0) = 0`), so the zero matrix maps to zero.

    Shapes ``(..., n, m)`` -> ``(..., n, m)``; device and dtype of ``M`` are kept. Computation
    runs in ``dtype``: by default float64 for float64 input and float32 otherwise;
    ``torch.bfloat16`` halves the cost on GPUs and on CPUs with bf16 matrix units (e.g.
    AVX512-BF16 or AMX) and is slow elsewhere; it keeps about 2–3 significant digits.
    NaN or inf raise ``ValueError``; ``validate=False`` skips that check and the host
    synchronisation it costs on a GPU (for training loops): the input must then be finite and
    its Frobenius norm, formed from the unscaled squares of the entries, must stay inside
    :math:`[\sqrt{\mathrm{tiny}}, \sqrt{\mathrm{max}}]` of the working dtype (about
    :math:`[10^{-19}, 1.8\cdot 10^{19}]` in float32, :math:`[10^{-154}, 10^{154}]` in float64).
    Above it the norm overflows and the output is the zero matrix; below it the squares are
    subnormal and the output loses accuracy (float32, norm :math:`10^{-21}`: 1% off), then
    turns NaN (norm :math:`10^{-22}`). Chapter 08.

    **Gram path** (``gram=None``: used when the aspect ratio exceeds 1.5, on a GPU only when
    the short side is at least 2048, below which its extra small products cost more than they
    save; ``True``/``False`` force it). For a wide :math:`X_0` (:math:`n \le m`) every iterate is
    :math:`X_t = Q_t X_0` with :math:`Q_t` a polynomial in :math:`A_1 = X_0X_0^\top`, so the
    iteration runs on :math:`n\times n` matrices only:

    .. math:: P_t = a_t I + b_t A_t + c_t A_t^2,\qquad Q_t = P_t Q_{t-1},\qquad
              A_{t+1} = P_t A_t P_t,\qquad X_T = Q_T X_0 ,

    (all commute), :math:`(4T-3)n^3 + 2n^2m` multiply-adds instead of :math:`T(n^3 + 2n^2m)`.
    Same result in exact arithmetic, but in floating point :math:`A_t` carries the squares of
    the singular values, so one at :math:`x\|M\|_F` is resolved to about :math:`\epsilon/x^2`
    instead of :math:`\epsilon/x`. Measured in float32 on ``64 x 256`` inputs, relative
    Frobenius error against the float64 result of the same schedule (Gram / plain):
    Gaussian, about :math:`10^{-6}` / :math:`10^{-6}`; singular values spread over
    :math:`[10^{-6}, 1]` or rank 8, at most :math:`10^{-3}` / :math:`3\cdot 10^{-5}` for
    ``"jordan"`` and 5-step ``"polar_express"``, 100 times below those schedules' own
    distance from :func:`polar` (at least 0.08 on the same inputs), so the default is kept. A
    schedule run to convergence loses that margin: 8-step ``"polar_express"`` gives
    :math:`2\cdot 10^{-3}` / :math:`10^{-5}` (spread :math:`[10^{-3}, 1]`, own distance
    :math:`5\cdot 10^{-5}`), :math:`3\cdot 10^{-2}` / :math:`6\cdot 10^{-5}` (spread
    :math:`[10^{-6}, 1]`) and :math:`10^{-3}` / :math:`2\cdot 10^{-4}` (rank 8); pass
    ``gram=False`` where such accuracy matters.
    """
    M = check_matrix(M, "M", finite=False)
    sched = ns_schedule(coefficients, steps)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
    work = _work_dtype(M, dtype)
    X = M.to(work)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    batch = X.shape[:-2]
    n, m = X.shape[-2:]
    if X.ndim > 3:  # addmm/baddbmm take one batch dimension
        X = X.reshape(-1, n, m)
    X = _normalise(X, M, validate)
    if gram is None:
        gram = _gram_pays(n, m, X.device.type)
    X = (_gram_newton_schulz if gram else _newton_schulz)(X, sched, scale == "schatten8")
    X = X.reshape(*batch, n, m)
    if tall:
        X = X.mT
    return X.to(M.dtype)


def _gram_pays(n: int, m: int, device_type: str) -> bool:
    """``gram=None``: the Gram path for an n x m (n <= m) matrix where it measured faster
    (benchmarks/bench_msign_gram.py): aspect above 1.5, and on a GPU a short side of 2048+."""
    return m > 1.5 * n and (device_type == "cpu" or n >= 2048)


def _newton_schulz(X: torch.Tensor, sched, schatten8: bool) -> torch.Tensor:
    """The plain iteration, X <- aX + (bA + cA^2)X with A = XX^T, as fused products."""
    for t, (a, b, c) in enumerate(sched):
        A = X @ X.mT
        if t == 0 and schatten8:
            A2 = A @ A
            A, A2, X = _schatten8(A, A2, X)
            X = _addmm(X, b * A + c * A2, X, beta=a, alpha=1.0)
        else:
            X = _addmm(X, _addmm(A, A, A, beta=b, alpha=c), X, beta=a, alpha=1.0)
    return X


def _gram_newton_schulz(X: torch.Tensor, sched, schatten8: bool = False) -> torch.Tensor:
    """The Newton-Schulz iteration of :func:`msign` on the n x n Gram side (X wide)."""
    A = X @ X.mT
    Q = None
    for t, (a, b, c) in enumerate(sched):
        if t == 0 and schatten8:
            A, A2, X = _schatten8(A, A @ A, X)
            P = b * A + c * A2
        else:
            P = _addmm(A, A, A, beta=b, alpha=c)
        P.diagonal(dim1=-2, dim2=-1).add_(a)
        Q = P if Q is None else P @ Q
        if t + 1 < len(sched):
            A = P @ (A @ P)
    return Q @ X if Q is not None else X


def polar(M, rtol: float | None = None) -> torch.Tensor:
    r"""Exact :math:`\operatorname{msign}(M) = U_{[:, :r]} V_{[:, :r]}^\top` by SVD.

    For a full-rank square :math:`M` this is the orthogonal factor :math:`Q` of the polar
    decomposition :math:`M = QS` and the orthogonal matrix nearest to :math:`M` in Frobenius
    norm; in general it is the partial isometry with the row and column spaces of :math:`M`.
    Singular values :math:`\sigma_i \le \texttt{rtol}\cdot\sigma_1` count as zero (default
    ``rtol`` :math:`= \max(n, m)\,\varepsilon` of the working dtype, as in
    ``torch.linalg.matrix_rank``), so a rank-deficient input gives a rank-:math:`r` output and
    the zero matrix gives zero.

    Shapes ``(..., n, m)`` -> ``(..., n, m)``; computed in float64 for float64 input and
    float32 otherwise, returned in the input's dtype and device. NaN or inf raise
    ``ValueError``. Chapter 08.
    """
    M = check_matrix(M, "M")
    work = torch.float64 if M.dtype == torch.float64 else torch.float32
    if rtol is None:
        rtol = max(M.shape[-2:]) * torch.finfo(work).eps
    rtol = check_real(rtol, "rtol", nonnegative=True)
    U, S, Vh = torch.linalg.svd(M.to(work), full_matrices=False)
    keep = S > rtol * S[..., :1]  # > 0 as well, rtol >= 0: the zero matrix gives zero
    return ((U * keep.unsqueeze(-2).to(work)) @ Vh).to(M.dtype)


def marchenko_pastur_singular_values(n: int, m: int, k: int | None = None,
                                     grid: int = 200_001) -> torch.Tensor:
    r"""Deterministic stand-in for the normalised singular values of an ``n x m`` Gaussian.

    With :math:`q = \min(n, m)/\max(n, m)`, the squared singular values of
    :math:`G/\sqrt{\max(n,m)}` follow, as the size grows, the Marchenko–Pastur law on
    :math:`[\lambda_-, \lambda_+] = [(1-\sqrt q)^2, (1+\sqrt q)^2]` with density
    :math:`\sqrt{(\lambda_+ - \lambda)(\lambda - \lambda_-)}/(2\pi q \lambda)`. This returns its
    :math:`k` quantiles at levels :math:`(i - \tfrac12)/k` (default :math:`k = \min(n, m)`), as
    singular values :math:`\sqrt{\lambda}` divided by their Euclidean norm: the singular values
    of :math:`G/\|G\|_F`, sorted ascending. The CDF is integrated in the variable
    :math:`\theta` of :math:`\lambda = \lambda_- + (\lambda_+ - \lambda_-)\sin^2\theta`, which
    removes the square-root endpoint singularities. float64, shape ``(k,)``. Chapter 08.
    """
    n = check_int(n, "n", low=1)
    m = check_int(m, "m", low=1)
    k = min(n, m) if k is None else check_int(k, "k", low=1)
    grid = check_int(grid, "grid", low=101)
    q = min(n, m) / max(n, m)
    lo, hi = (1 - math.sqrt(q)) ** 2, (1 + math.sqrt(q)) ** 2
    theta = torch.linspace(0, math.pi / 2, grid, dtype=torch.float64)
    s2, c2 = torch.sin(theta) ** 2, torch.cos(theta) ** 2
    lam = lo + (hi - lo) * s2
    # the density in theta up to a constant factor (the CDF is normalised below):
    # c2 * s2 / lam, where s2 / lam -> 1 / (hi - lo) at theta = 0 when lo = 0 (square case)
    ratio = torch.where(lam > 0, s2 / lam.clamp_min(1e-300), torch.full_like(lam, 1 / (hi - lo)))
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                     torch.cumulative_trapezoid(c2 * ratio, theta)])
    cdf = cdf / cdf[-1]
    levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    # levels lie in (0, 1) = (cdf[0], cdf[-1]): 1 <= idx <= grid - 1
    idx = torch.searchsorted(cdf, levels)
    w = (levels - cdf[idx - 1]) / (cdf[idx] - cdf[idx - 1])
    th = theta[idx - 1] + w * (theta[idx] - theta[idx - 1])
    s = torch.sqrt(lo + (hi - lo) * torch.sin(th) ** 2)
    return s / torch.linalg.vector_norm(s)


def fit_quintic(x, steps: int, init: tuple[float, float, float] = (1.0, 0.9, 1.1)
                ) -> tuple[float, float, float]:
    r"""Least-squares fixed quintic for a set of normalised singular values (Su's table).

    .. math:: \min_{\kappa, x_1, x_2} \frac1k \sum_{i=1}^k \big(g^{\circ T}(x_i) - 1\big)^2,
              \qquad g(x) = x + \kappa x (x^2 - x_1^2)(x^2 - x_2^2),

    solved by L-BFGS (strong Wolfe line search, float64) from ``init`` :math:`= (\kappa, x_1,
    x_2)`, the start of the post. Pass ``x`` from :func:`marchenko_pastur_singular_values` to
    reproduce the post's table without sampling matrices. Returns :math:`(\kappa, x_1, x_2)`;
    :func:`quintic_from_roots` turns it into :math:`(a, b, c)`. The objective is not convex:
    a different ``init`` may land elsewhere. Chapter 08.
    """
    x = as_float_tensor(x, "x", dtype=torch.float64).to(torch.float64).detach()
    check_finite(x, "x")
    steps = check_int(steps, "steps", low=1)
    init = check_reals(init, "init", 3, "three numbers (kappa, x1, x2)")
    p = torch.tensor(init, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([p], lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        kappa, x1, x2 = p
        y = x
        for _ in range(steps):
            y2 = y * y
            y = y + kappa * y * (y2 - x1**2) * (y2 - x2**2)
        loss = ((y - 1) ** 2).mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    kappa, x1, x2 = p.detach().tolist()
    x1, x2 = sorted((abs(x1), abs(x2)))
    return (kappa, x1, x2)
