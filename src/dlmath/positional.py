r"""Rotary position encoding (RoPE) and the lower bound on its base from the context length.

Chapter: *How large must the RoPE base be?* (``notebooks/22-rope-base.ipynb``).

RoPE with head size :math:`d` (even) and base :math:`b` rotates the pair
:math:`(x_{2i}, x_{2i+1})` of a query or key at position :math:`n` by the angle
:math:`n\theta_i`, with frequencies :math:`\theta_i = b^{-2i/d}`, :math:`i = 0, \dots, d/2-1`.
A score then depends on positions only through their offset :math:`m`, and the expected
advantage of a similar key over a random one is :math:`2\sigma^2 f_b(m)` with

.. math:: f_b(m) = \sum_{i=0}^{d/2-1} \cos(m\,\theta_i).

The base is *feasible* for a context length :math:`L` when :math:`f_b(m) \ge 0` for every
offset :math:`m = 0, \dots, L-1`. Feasibility is **not monotone** in :math:`b`, so the
smallest feasible base cannot be found by bisection; :func:`min_feasible_base` scans grids.

Precision: the angles :math:`m\theta_i` reach :math:`L` radians (a million for
:math:`L = 2^{20}`), where float32 rounding moves an angle by about 0.06 rad and can flip
the sign of :math:`f_b` near its minimum. Every function here therefore computes angles and
sums in float64, whatever the input dtype (on MPS, which has no float64, on the CPU).
"""

from __future__ import annotations

import math

import torch

from ._checks import as_float_tensor, check_device, check_finite, check_int, check_real

__all__ = [
    "rope_frequencies",
    "rope_rotate",
    "rope_gap_sum",
    "first_negative_offset",
    "is_feasible_base",
    "min_feasible_base",
    "cosine_integral_zero",
    "asymptotic_min_base",
]

F64 = torch.float64


def _check_d(d) -> int:
    d = check_int(d, "d", low=2)
    if d % 2:
        raise ValueError(f"d must be even (RoPE rotates pairs of coordinates), got {d}")
    return d


def _check_rotary(rotary_dims, d: int) -> int:
    if rotary_dims is None:
        return d
    r = check_int(rotary_dims, "rotary_dims", low=2, high=d)
    if r % 2:
        raise ValueError(f"rotary_dims must be even, got {r}")
    return r


def _as_real(x, name: str) -> torch.Tensor:
    """``x`` as a tensor of real numbers (integer or floating), or ``TypeError`` naming it."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a number or a tensor of real numbers, "
                        f"got {type(x).__name__}") from exc
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be real numbers, got dtype {t.dtype}")
    return t


def _work_device(device) -> torch.device:
    dev = check_device(device) if device is not None else torch.device("cpu")
    return torch.device("cpu") if dev.type == "mps" else dev


def rope_frequencies(d: int, base: float, *, rotary_dims: int | None = None,
                     device=None) -> torch.Tensor:
    r"""The RoPE frequencies :math:`\theta_i = b^{-2i/d}`, in float64.

    .. math:: \theta_i = b^{-2i/r}\ (0 \le i < r/2), \qquad \theta_i = 0\ (r/2 \le i < d/2),

    where :math:`r` = ``rotary_dims`` (default :math:`d`, full RoPE). With
    :math:`r < d` only the first :math:`r` coordinates rotate (*partial* RoPE, as in
    GPT-NeoX); the remaining pairs have frequency 0.

    Shapes: returns ``(d // 2,)``, float64, on ``device`` (default CPU). ``d`` and
    ``rotary_dims`` must be even ints; ``base`` a finite real > 1 (even ``1e300`` gives
    tiny but positive frequencies, computed as ``exp(-(2i/r) ln b)``).
    """
    d = _check_d(d)
    r = _check_rotary(rotary_dims, d)
    base = check_real(base, "base")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base}")
    dev = _work_device(device)
    i = torch.arange(d // 2, dtype=F64, device=dev)
    theta = torch.exp(-(2.0 * i / r) * math.log(base))
    return torch.where(i < r // 2, theta, torch.zeros_like(theta))


def rope_rotate(x, positions, base: float) -> torch.Tensor:
    r"""Apply RoPE: rotate each pair :math:`(x_{2i}, x_{2i+1})` by the angle :math:`n\theta_i`.

    .. math:: \begin{pmatrix} y_{2i} \\ y_{2i+1} \end{pmatrix} =
              \begin{pmatrix} \cos n\theta_i & -\sin n\theta_i \\
                              \sin n\theta_i & \cos n\theta_i \end{pmatrix}
              \begin{pmatrix} x_{2i} \\ x_{2i+1} \end{pmatrix},
              \qquad \theta_i = b^{-2i/d}.

    Shapes: ``x`` is ``(..., d)`` with ``d`` even (the last dimension is the head);
    ``positions`` (a number or a tensor, integer or float) broadcasts against
    ``x.shape[:-1]``; the result has the broadcast shape ``(..., d)`` and ``x``'s dtype and
    device. The angles are formed in float64 before the cosines are taken. ``x`` must be
    non-empty and finite (``ValueError`` otherwise); ``positions`` must be finite reals.
    """
    x = as_float_tensor(x, "x")
    check_finite(x, "x")
    d = _check_d(x.shape[-1])
    pos = _as_real(positions, "positions")
    work = _work_device(x.device)
    pos = pos.to(work, F64)
    check_finite(pos, "positions")
    theta = rope_frequencies(d, base, device=work)
    angle = pos.unsqueeze(-1) * theta                       # (..., d/2)
    cos, sin = torch.cos(angle).to(x.device, x.dtype), torch.sin(angle).to(x.device, x.dtype)
    try:
        even, odd = x[..., 0::2], x[..., 1::2]
        out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    except RuntimeError as exc:
        raise ValueError(f"positions of shape {tuple(pos.shape)} do not broadcast against "
                         f"x.shape[:-1] = {tuple(x.shape[:-1])}") from exc
    return out.flatten(-2)


def rope_gap_sum(m, d: int, base: float, *, rotary_dims: int | None = None) -> torch.Tensor:
    r"""The sum :math:`f_b(m) = \sum_{i=0}^{d/2-1}\cos(m\,\theta_i)`, in float64.

    :math:`2\sigma^2 f_b(m)` is the expected score advantage, at offset :math:`m`, of a key
    similar to the query over an unrelated one. ``rotary_dims`` as in
    :func:`rope_frequencies` (unrotated pairs contribute :math:`\cos 0 = 1` each).

    Shapes: ``m`` is a number or a tensor of any shape (integer or float offsets); the result
    has ``m``'s shape, float64, on ``m``'s device. Direct evaluation, ``m.numel() * d/2``
    cosines; for all offsets below a length use :func:`first_negative_offset`.
    """
    m = _as_real(m, "m")
    work = _work_device(m.device)
    mm = m.to(work, F64)
    check_finite(mm, "m")
    theta = rope_frequencies(d, base, rotary_dims=rotary_dims, device=work)
    return torch.cos(mm.unsqueeze(-1) * theta).sum(-1).to(m.device)


def _as_bases(base) -> torch.Tensor:
    b = _as_real(base, "base")
    if b.numel() == 0:
        raise ValueError("base must not be empty")
    work = _work_device(b.device)
    b = b.to(work, F64)
    check_finite(b, "base")
    if not (b > 1).all():
        raise ValueError(f"every base must be > 1, got minimum {b.min().item()}")
    return b


def first_negative_offset(base, d: int, max_offset: int, *, rotary_dims: int | None = None,
                          budget: int = 1 << 22) -> torch.Tensor:
    r"""The first offset at which :math:`f_b` is negative, capped at ``max_offset``.

    .. math:: M(b) = \min\{m \in \{0, \dots, L-1\} : f_b(m) < 0\}, \quad
              M(b) = L \text{ if there is none}, \qquad L = \texttt{max\_offset},

    so base :math:`b` is feasible for length :math:`L` exactly when :math:`M(b) = L`, and in
    general it supports every context length up to :math:`M(b)`.

    Shapes: ``base`` is a number or a tensor of any shape; the result is an int64 tensor of
    the same shape on ``base``'s device.

    Method (exact up to float64 rounding, about ``1e-12``): offsets are scanned in blocks of
    :math:`C^2`, ``m = s + Cj + k`` with ``0 <= j, k < C``. The addition formula
    :math:`\cos((s+Cj+k)\theta) = \cos((s+Cj)\theta)\cos k\theta - \sin((s+Cj)\theta)\sin
    k\theta` turns one block into two batched matrix products of shapes
    :math:`(C \times d/2)(d/2 \times C)`, so only :math:`O(dC)` cosines are computed per
    :math:`C^2` offsets. Bases drop out as soon as they have a negative offset (early exit),
    and the block grows as fewer bases remain; ``budget`` caps the number of float64 values
    held at once: bases times (:math:`C^2` offsets plus the four :math:`C \times d/2` tables of
    cosines and sines), down to the smallest block, :math:`C = 16`.
    """
    d = _check_d(d)
    L = check_int(max_offset, "max_offset", low=1)
    budget = check_int(budget, "budget", low=1 << 10)
    b = _as_bases(base)
    out_device = torch.as_tensor(base).device
    flat = b.reshape(-1)
    result = torch.full(flat.shape, L, dtype=torch.int64, device=flat.device)
    active = torch.arange(flat.numel(), device=flat.device)
    r = _check_rotary(rotary_dims, d)
    i = torch.arange(d // 2, dtype=F64, device=flat.device)
    theta = torch.exp(-(2.0 * i / r) * torch.log(flat)[:, None])     # (n_bases, d/2)
    theta = torch.where(i < r // 2, theta, torch.zeros_like(theta))
    start = 0
    h = d // 2
    while start < L and active.numel() > 0:
        per_base = budget // active.numel()
        C = 16
        while C < 2048 and 4 * C * C + 8 * C * h <= per_base:   # the next block, 2C, fits
            C *= 2
        n_outer = min(C, -(-(L - start) // C))
        th = theta[active]                                             # (B, h)
        k = torch.arange(C, dtype=F64, device=th.device)
        outer = start + C * torch.arange(n_outer, dtype=F64, device=th.device)
        inner = k[None, :, None] * th[:, None, :]                      # (B, C, h)
        lead = th[:, :, None] * outer[None, None, :]                   # (B, h, n_outer)
        f = (torch.cos(inner) @ torch.cos(lead) - torch.sin(inner) @ torch.sin(lead))
        f = f.transpose(1, 2).reshape(th.shape[0], -1)                  # offsets start + 0..
        f = f[:, : L - start]
        neg = f < 0
        hit = neg.any(dim=1)
        first = torch.argmax(neg.to(torch.int8), dim=1) + start
        result[active[hit]] = first[hit]
        active = active[~hit]
        start += f.shape[1]
    return result.reshape(b.shape).to(out_device)


def is_feasible_base(base, L: int, d: int, *, rotary_dims: int | None = None) -> torch.Tensor:
    r"""Whether :math:`f_b(m) \ge 0` for every offset :math:`m = 0, \dots, L-1`.

    Shapes: ``base`` a number or tensor; returns a bool tensor of its shape (``bool()`` of a
    single one is the answer). Same method and precision as :func:`first_negative_offset`.
    """
    L = check_int(L, "L", low=1)
    return first_negative_offset(base, d, L, rotary_dims=rotary_dims) == L


def min_feasible_base(L: int, d: int = 128, *, levels: int = 5, steps: int = 10,
                      start: float | None = None) -> float:
    r"""The post's search for the smallest feasible base: refine a grid, scanning upwards.

    Start from :math:`B = 1000L` (or ``start``), which must be feasible. At level
    :math:`k = 1, \dots,` ``levels`` split :math:`(0, B]` into :math:`s^k` equal steps
    (:math:`s` = ``steps``), take the grid points :math:`jB/s^k`, :math:`j = 1, 2, \dots`,
    upwards, and set :math:`B` to the first feasible one (it exists, since :math:`B` itself
    is a grid point). Return :math:`B`.

    The result is the smallest feasible point of a grid of spacing about
    :math:`B/s^{\text{levels}}`, **not** a certified infimum: feasibility is not monotone in
    the base, and a feasible window narrower than the spacing can lie below the result
    (nor does any level skip the points below the previous answer, for the same reason).
    The cost is about :math:`s^{\text{levels}}` feasibility tests at the last level, most of
    which end early.

    Raises ``ValueError`` naming ``start`` if it is not a base ``> 1`` or not feasible.
    """
    L = check_int(L, "L", low=1)
    d = _check_d(d)
    levels = check_int(levels, "levels", low=1, high=7)
    steps = check_int(steps, "steps", low=2)
    B = 1000.0 * L if start is None else check_real(start, "start")
    if not B > 1:
        raise ValueError(f"start must be a base > 1, got {B}")
    if not bool(is_feasible_base(B, L, d)):
        raise ValueError(f"start={B:g} is not a feasible base for L={L}, d={d}")
    chunk = 4096
    for level in range(1, levels + 1):
        n = steps**level
        for lo in range(1, n + 1, chunk):
            j = torch.arange(lo, min(lo + chunk, n + 1), dtype=F64)
            grid = j * (B / n)
            grid = grid[grid > 1]
            if grid.numel() == 0:
                continue
            ok = is_feasible_base(grid, L, d)
            if ok.any():
                B = float(grid[int(torch.argmax(ok.to(torch.int8)))])
                break
    return B


def cosine_integral_zero() -> float:
    r"""The first positive zero :math:`x_0 \approx 0.616505` of the cosine integral.

    .. math:: \operatorname{Ci}(x) = -\int_x^\infty \frac{\cos t}{t}\,dt, \qquad
              \operatorname{Ci}(x_0) = 0 .

    Ci increases on :math:`(0, \pi/2]` from :math:`-\infty`, so the zero there is unique;
    computed with ``scipy.special.sici`` and ``scipy.optimize.brentq``.
    """
    from scipy.optimize import brentq
    from scipy.special import sici

    return float(brentq(lambda x: sici(x)[1], 0.1, 1.0, xtol=1e-15, rtol=1e-15))


def asymptotic_min_base(L: int) -> float:
    r"""The threshold :math:`b_\infty(L)` of the :math:`d \to \infty` form of the criterion.

    As :math:`d \to \infty`, :math:`\tfrac{2}{d} f_b(m) \to
    (\operatorname{Ci}(m) - \operatorname{Ci}(m/b)) / \ln b`, so the criterion reads
    :math:`\operatorname{Ci}(m/b) \le \operatorname{Ci}(m)` for :math:`1 \le m < L`. With
    :math:`g(m) \in (0, \pi/2]` the solution of :math:`\operatorname{Ci}(g) =
    \operatorname{Ci}(m)` (unique: Ci increases on :math:`(0,\pi/2]` to its maximum 0.472,
    and :math:`|\operatorname{Ci}(m)| \le 0.472` for :math:`m \ge 1`), it holds for every
    such :math:`m` once

    .. math:: b \ge b_\infty(L) = \max_{1 \le m < L} \frac{m}{g(m)} \approx \frac{L}{x_0}.

    It is sharp: just below :math:`b_\infty`, the maximising :math:`m` has
    :math:`m/b \in (g(m), \pi/2]`, where Ci exceeds :math:`\operatorname{Ci}(m)`.
    Returns a float; ``L`` an int.

    :math:`g` is found for all :math:`m` at once by bisection on
    :math:`[0.1, \pi/2]` (60 halvings, float64). Requires ``L >= 2``.
    """
    import numpy as np
    from scipy.special import sici

    L = check_int(L, "L", low=2)
    m = np.arange(1, L, dtype=np.float64)
    target = sici(m)[1]
    lo, hi = np.full_like(m, 0.1), np.full_like(m, math.pi / 2)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = sici(mid)[1] < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return float(np.max(m / (0.5 * (lo + hi))))
