r"""Diagonal linear recurrences and the Linear Recurrent Unit (LRU).

Chapter: *Linear recurrences: the LRU* (``notebooks/24-linear-recurrence.ipynb``).

A linear RNN :math:`x_t = A x_{t-1} + u_t` with a diagonalisable :math:`A = P\Lambda P^{-1}`
is, after absorbing :math:`P` and :math:`P^{-1}` into the projections around it, a bank of
independent scalar recurrences

.. math:: x_t = \lambda_t\, x_{t-1} + u_t, \qquad x_t = \sum_{k \le t}
          \Big(\prod_{j=k+1}^{t} \lambda_j\Big) u_k ,

with complex :math:`\lambda`. The LRU parametrises
:math:`\lambda = \exp(-e^{\nu^{\log}} + i\,e^{\theta^{\log}})`, initialises :math:`\lambda`
uniformly on a ring :math:`r_{\min} \le |\lambda| \le r_{\max}` and scales the input by
:math:`\gamma = \sqrt{1 - |\lambda|^2}` so that white noise keeps unit variance.

Dtypes. Real and complex tensors are both accepted; a result has the promoted dtype of its
inputs (``torch.promote_types``: float32 with complex64 gives complex64, float64 with complex64
gives complex128). float16 and bfloat16 are computed in float32 and rounded back at the end.
Integer, boolean and ``complex32`` tensors raise ``TypeError``; NaN and infinities raise
``ValueError``. Results keep the inputs' device.
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    all_finite,
    as_float_tensor,
    check_choice,
    check_dim,
    check_finite,
    check_generator,
    check_int,
    check_real,
    work_dtype,
)

__all__ = ["linear_recurrence", "lru_lambda", "lru_ring_init", "lru_normalization"]

def _as_tensor(x, name: str, *, complex_ok: bool = True, min_ndim: int = 0) -> torch.Tensor:
    """``x`` as a finite real or complex floating tensor (no integer/bool/complex32)."""
    x = as_float_tensor(x, name, min_ndim=min_ndim, allow_empty=True, complex_ok=complex_ok)
    return check_finite(x, name)


def _loop(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sequential recurrence along the last axis: x_t = a_t x_{t-1} + b_t, x_{-1} = 0."""
    out, x = [], torch.zeros_like(b[..., 0])
    for t in range(b.shape[-1]):
        x = a[..., t] * x + b[..., t]
        out.append(x)
    return torch.stack(out, dim=-1)


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inclusive prefix scan along the last axis under (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2).

    Hillis–Steele: after the round with offset ``s`` element ``t`` holds the composition of the
    steps ``t - 2s + 1 .. t``; ceil(log2 T) rounds, each one elementwise over the whole sequence.
    """
    T, s = b.shape[-1], 1
    while s < T:
        b = torch.cat([b[..., :s], a[..., s:] * b[..., :-s] + b[..., s:]], dim=-1)
        if 2 * s < T:  # the last round's products are never used
            a = torch.cat([a[..., :s], a[..., s:] * a[..., :-s]], dim=-1)
        s *= 2
    return b


def _chunked(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-level scan along the last axis: blocks of C ~ sqrt(T) steps solved from zero state
    in parallel, then the block-end states carried across blocks and added back times the
    running products of ``a`` inside each block (the split identity). C + T/C sequential
    steps, O(T) work, no division."""
    T = b.shape[-1]
    C = math.isqrt(T - 1) + 1
    K = -(-T // C)
    if K * C > T:  # pad the end with identity steps (a = 1, b = 0)
        a = torch.cat([a, a.new_ones(a.shape[:-1] + (K * C - T,))], dim=-1)
        b = torch.cat([b, b.new_zeros(b.shape[:-1] + (K * C - T,))], dim=-1)
    a, b = a.reshape(a.shape[:-1] + (K, C)), b.reshape(b.shape[:-1] + (K, C))
    local = _loop(a, b)                              # every block from a zero state
    prods = torch.cumprod(a, dim=-1)                 # a_{start} ... a_j inside each block
    ends = _loop(prods[..., -1], local[..., -1])     # true state at the end of each block
    carry = torch.cat([torch.zeros_like(ends[..., :1]), ends[..., :-1]], dim=-1)
    x = local + prods * carry.unsqueeze(-1)
    return x.reshape(x.shape[:-2] + (K * C,))[..., :T]


_METHODS = {"chunked": _chunked, "scan": _scan, "loop": _loop}


def linear_recurrence(lam, u, dim: int = -2, *, initial=None,
                      method: str = "chunked") -> torch.Tensor:
    r"""All states of the diagonal linear recurrence :math:`x_t = \lambda_t x_{t-1} + u_t`.

    .. math:: x_t = \Big(\prod_{j=0}^{t}\lambda_j\Big) x_{-1}
              + \sum_{k=0}^{t} \Big(\prod_{j=k+1}^{t} \lambda_j\Big) u_k,
              \qquad x_{-1} = \texttt{initial}\ (\text{default } 0),

    which for a constant :math:`\lambda` is :math:`x_t = \lambda^{t+1}x_{-1} +
    \sum_k \lambda^{t-k} u_k`.

    Shapes: ``u`` is ``(..., T, n)`` with time along ``dim`` (default ``-2``: batch, time,
    channels). ``lam`` broadcasts against ``u``: a ``lam`` of shape ``(n,)`` is one constant
    :math:`\lambda` per channel, one with the size ``T`` along the time axis varies in time.
    (With ``dim=-1`` a per-channel ``lam`` must be given as ``(n, 1)``.) ``initial`` broadcasts
    against ``u`` with the time axis removed. The result has the broadcast shape of ``lam`` and
    ``u``, the promoted dtype of ``lam``, ``u`` and ``initial`` (complex if any is complex) and
    their device.

    Methods (all compose the steps with the associative operator
    :math:`(a_1,b_1)\circ(a_2,b_2)=(a_1a_2,\ a_2b_1+b_2)` and never divide by :math:`\lambda`):

    * ``"chunked"`` (default): blocks of :math:`C\approx\sqrt T` steps are solved from a zero
      state all at once, then the block-end states are carried across and added back times
      the running products of :math:`\lambda` inside each block:
      :math:`C + T/C \approx 2\sqrt T` sequential steps and :math:`O(T)` work.
    * ``"scan"``: the Hillis–Steele prefix scan, :math:`\lceil\log_2 T\rceil` elementwise
      rounds with :math:`O(T\log T)` work, the shortest chain of dependent steps (for long
      sequences on wide hardware).
    * ``"loop"``: the exact sequential recurrence, ``T`` steps, the reference that the other
      two are tested against. They agree with it to rounding.

    With :math:`|\lambda| > 1` the partial products of the fast methods can overflow where the
    loop does not (``inf * 0``); a fast result that is not finite is therefore recomputed by the
    loop, so all methods agree to rounding wherever the loop is finite. The one exception is a
    time-varying :math:`\lambda_t` that first drives a product below the underflow threshold
    and then, with some :math:`|\lambda_t| > 1`, grows it back: each method rounds the vanished
    product at a different place (for :math:`|\lambda_t| \le 1` an underflowed product stays
    negligible and all agree). float16 and bfloat16 inputs are computed in float32 and the
    result is rounded back once: a float16 loop of a few thousand steps near
    :math:`|\lambda| = 1` would be off by tens of per cent. All methods are differentiable by
    autograd, for real and complex inputs.

    Raises ``TypeError`` for integer, boolean or complex32 inputs and ``ValueError`` for NaN
    or infinite inputs, shapes that do not broadcast, mixed devices or an unknown method.
    A time axis of length 0 gives an empty result.
    """
    check_choice(method, "method", tuple(_METHODS))
    u = _as_tensor(u, "u", min_ndim=1)
    lam = _as_tensor(lam, "lam")
    dim = check_dim(u, dim)
    tensors = [lam, u] if initial is None else [lam, u, _as_tensor(initial, "initial")]
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"lam, u and initial must be on one device, "
                         f"got {sorted(map(str, devices))}")
    dtype = u.dtype
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    try:
        shape = torch.broadcast_shapes(lam.shape, u.shape)
    except RuntimeError as exc:
        raise ValueError(f"lam of shape {tuple(lam.shape)} does not broadcast against u of "
                         f"shape {tuple(u.shape)}") from exc
    if len(shape) != u.ndim:
        raise ValueError(f"lam of shape {tuple(lam.shape)} has more dimensions than u of shape "
                         f"{tuple(u.shape)}")
    work = work_dtype(dtype)                         # float16/bfloat16 run in float32
    a = lam.to(work).expand(shape).movedim(dim, -1)
    b = u.to(work).expand(shape).movedim(dim, -1)
    if b.shape[-1] == 0:
        return torch.empty(shape, dtype=dtype, device=u.device)
    if initial is not None:
        x0 = tensors[2].to(work)
        try:
            x0 = x0.expand(b.shape[:-1])
        except RuntimeError as exc:
            raise ValueError(f"initial of shape {tuple(x0.shape)} does not broadcast against "
                             f"u without its time axis, {tuple(b.shape[:-1])}") from exc
        b = torch.cat([(b[..., 0] + a[..., 0] * x0).unsqueeze(-1), b[..., 1:]], dim=-1)
    x = _METHODS[method](a, b)
    if method != "loop" and not all_finite(x):
        x = _loop(a, b)
    return x.movedim(-1, dim).to(dtype)


def lru_lambda(nu_log, theta_log) -> torch.Tensor:
    r"""The LRU's eigenvalues from their unconstrained parameters.

    .. math:: \lambda = \exp\!\big(-e^{\nu^{\log}} + i\,e^{\theta^{\log}}\big),\qquad
              |\lambda| = e^{-e^{\nu^{\log}}} \in (0, 1),\quad \arg\lambda = e^{\theta^{\log}} > 0,

    so :math:`\lambda^k = \exp(k(-\nu + i\theta))` and every real parameter gives a stable
    :math:`|\lambda| < 1` (it rounds to 0 for :math:`\nu^{\log} \gtrsim 6.6`, to 1 for
    :math:`\nu^{\log} \lesssim -37` in float64).

    Shapes: ``nu_log`` and ``theta_log`` broadcast; float32 gives complex64, float64 gives
    complex128 (other dtypes raise ``TypeError``). NaN, infinities, or a ``theta_log`` whose
    exponential overflows raise ``ValueError``.
    """
    nu_log = _as_tensor(nu_log, "nu_log", complex_ok=False)
    theta_log = _as_tensor(theta_log, "theta_log", complex_ok=False)
    for x, name in ((nu_log, "nu_log"), (theta_log, "theta_log")):
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if nu_log.device != theta_log.device:
        raise ValueError("nu_log and theta_log must be on one device")
    try:
        torch.broadcast_shapes(nu_log.shape, theta_log.shape)
    except RuntimeError as exc:
        raise ValueError(f"nu_log of shape {tuple(nu_log.shape)} does not broadcast against "
                         f"theta_log of shape {tuple(theta_log.shape)}") from exc
    dtype = torch.promote_types(nu_log.dtype, theta_log.dtype)
    theta = torch.exp(theta_log.to(dtype))
    if not all_finite(theta):
        raise ValueError("theta_log is so large that exp(theta_log) overflows")
    r = torch.exp(-torch.exp(nu_log.to(dtype)))
    r, theta = torch.broadcast_tensors(r, theta)
    return torch.polar(r, theta)


def lru_ring_init(n: int, r_min: float = 0.9, r_max: float = 0.999,
                  max_phase: float = 2 * math.pi, *, generator: torch.Generator,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Parameters ``(nu_log, theta_log)`` of ``n`` eigenvalues uniform on a ring sector.

    The eigenvalue :math:`\lambda = re^{i\theta}` is uniform on
    :math:`\{r_{\min} \le r \le r_{\max},\ 0 < \theta \le \theta_{\max}\}`: area
    :math:`r\,dr\,d\theta = \tfrac12 d(r^2)\,d\theta` makes :math:`r^2` and :math:`\theta`
    uniform, so with :math:`U, V` uniform on :math:`(0, 1]`

    .. math:: r = \sqrt{r_{\min}^2 + U\,(r_{\max}^2 - r_{\min}^2)},\qquad
              \theta = V\,\theta_{\max},\qquad
              \nu^{\log} = \log(-\log r),\quad \theta^{\log} = \log\theta .

    Feed the result to :func:`lru_lambda`. Requires ``0 <= r_min <= r_max < 1``, ``r_max > 0``
    and ``max_phase > 0``; the draws are made on ``generator``'s device in float64 (float32 on MPS)
    and returned as ``dtype`` (float32 or float64), shape ``(n,)``.
    """
    check_int(n, "n", low=1)
    r_min = check_real(r_min, "r_min", nonnegative=True)
    r_max = check_real(r_max, "r_max", nonnegative=True)
    if not r_min <= r_max < 1:
        raise ValueError(f"need 0 <= r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
    if r_max == 0:
        raise ValueError("need r_max > 0 (lambda = 0 has no finite nu_log)")
    max_phase = check_real(max_phase, "max_phase", positive=True)
    check_generator(generator)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    dev = generator.device
    work = torch.float32 if dev.type == "mps" else torch.float64
    U = 1 - torch.rand(n, generator=generator, device=dev, dtype=work)  # in (0, 1]
    V = 1 - torch.rand(n, generator=generator, device=dev, dtype=work)
    r2 = r_min**2 + U * (r_max**2 - r_min**2)
    nu_log = torch.log(-0.5 * torch.log(r2))
    theta_log = torch.log(V * max_phase)
    return nu_log.to(dtype), theta_log.to(dtype)


def lru_normalization(lam) -> torch.Tensor:
    r"""The input scale :math:`\gamma = \sqrt{1 - |\lambda|^2}` of the LRU.

    With it, :math:`x_t = \lambda x_{t-1} + \gamma u_t` driven by zero-mean uncorrelated
    inputs has :math:`\mathbb E|x_t|^2 \to \mathbb E|u|^2`, since
    :math:`\sum_{k \ge 0}|\lambda|^{2k} = 1/(1 - |\lambda|^2)`.

    Computed as :math:`\sqrt{-\operatorname{expm1}(2\log|\lambda|)}`, which keeps full relative
    precision when :math:`|\lambda|` is close to 1 (the direct :math:`1 - |\lambda|^2` loses
    the digits that :math:`|\lambda|^2` rounds away). :math:`\lambda = 0` gives 1, and
    :math:`|\lambda| = 1` gives 0.

    Shapes: elementwise; a real result of the matching real dtype (complex64 -> float32).
    :math:`|\lambda| > 1 + 4\varepsilon` raises ``ValueError`` (no stationary variance);
    moduli within rounding of 1 give 0.
    """
    lam = _as_tensor(lam, "lam")
    mod = lam.abs()
    eps = torch.finfo(mod.dtype).eps
    if bool((mod > 1 + 4 * eps).any()):
        raise ValueError(f"lam must satisfy |lam| <= 1, got max |lam| = {float(mod.max()):.6g}")
    # .abs(): a modulus within rounding of 1 gives +0, not -0
    return torch.sqrt(-torch.expm1(2 * torch.log(mod).clamp(max=0))).abs()
