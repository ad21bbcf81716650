r"""Adaptive optimizers: reference runners, Hessian heuristics and the Adam-epsilon closed forms.

Chapters: *Adaptive optimizers as Hessian approximations*
(``notebooks/13-adaptive-hessian.ipynb``) and *Adam's epsilon and the learning-rate/batch-size
law* (``notebooks/14-adam-epsilon.ipynb``).

Three groups of functions live here.

* **Runners.** :func:`ema` (with and without bias correction) and :func:`adam_run`, a small
  loop-level Adam / AdaBelief that matches ``torch.optim.Adam`` step for step (the tests check
  the state and the iterates).
* **Hessian heuristics.** :func:`random_spd`, :func:`gauss_newton`, the exact stationary
  moments of SGD on a noisy diagonal quadratic (:func:`sgd_stationary_moments`) and a
  vectorised simulator of SGD or Adam on that quadratic (:func:`noisy_quadratic`).
* **Adam's epsilon.** In units of the per-batch noise, a coordinate's gradient is
  :math:`a + z` with :math:`z\sim\mathcal N(0,1)`, :math:`a = g\sqrt B/\sigma` and
  :math:`b = \epsilon\sqrt B/\sigma` (:func:`noise_units`). The update of the idealised Adam
  (:math:`\beta_1=\beta_2=0`) is :math:`\operatorname{softsign}(a+z, b)`; its moments are computed
  exactly (:func:`softsign_moments`), through the clipped surrogate
  (:func:`clip_moments`, closed form) and through the post's approximations
  (:func:`softsign_moments_approx`). The optimal learning rate of a second-order model
  (:func:`eta_opt`, :func:`eta_opt_sgd`, :func:`eta_opt_meanfield`) and the surge condition
  (:func:`surge_overshoot`) complete the chapter.

Every function takes and returns torch tensors, keeps the input's device and dtype, and
broadcasts its elementwise arguments. Edge cases are documented per function. scipy is imported
only by the ``method="quad"`` reference path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import (
    as_float_tensor,
    check_broadcast,
    check_callable,
    check_choice,
    check_device,
    check_dim,
    check_finite,
    check_float_dtype,
    check_int,
    check_matrix,
    check_no_nan,
    check_real,
    check_reals,
    check_returned,
    upcast_half,
    work_dtype,
)

__all__ = [
    "ema",
    "adam_run",
    "random_spd",
    "gauss_newton",
    "sgd_stationary_moments",
    "noisy_quadratic",
    "softsign",
    "s_curve_sqrt",
    "s_curve_clip",
    "noise_units",
    "clip_moments",
    "softsign_moments",
    "softsign_moments_approx",
    "eta_opt",
    "eta_opt_sgd",
    "eta_opt_meanfield",
    "beta_from_batch",
    "batch_from_beta",
    "surge_overshoot",
    "surge_peak_beta",
]

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------
# runners
# ---------------------------------------------------------------------------------------------

def _check_beta(beta, name: str) -> float:
    beta = check_real(beta, name, low=0.0)
    if not beta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {beta}")
    return beta


def _check_betas(betas) -> tuple[float, float]:
    beta1, beta2 = check_reals(betas, "betas", 2, "a pair (beta1, beta2)")
    return _check_beta(beta1, "betas[0]"), _check_beta(beta2, "betas[1]")


def ema(x, beta: float, *, bias_correct: bool = True, dim: int = 0,
        init: str = "zero") -> torch.Tensor:
    r"""Exponential moving average of a sequence, at every step.

    .. math:: s_t = \beta s_{t-1} + (1-\beta) x_t,\quad s_0 = 0,\qquad
              \hat s_t = \frac{s_t}{1-\beta^t}\ \text{(bias-corrected)}

    ``x`` holds the sequence along ``dim`` (time first by default, as a recorded trajectory
    of shape ``(steps, ...)``); the result has the same shape, device and dtype. Without bias
    correction the early averages are pulled towards 0 by the weight :math:`\beta^t` still
    sitting on :math:`s_0=0`; with it, a constant sequence is reproduced exactly at every step
    (float16/bfloat16 are averaged in float32 and rounded once: a half-precision running sum
    would stall when :math:`(1-\beta)x_t` falls below half an ulp of :math:`s`).
    ``init="first"`` starts the average at the first value instead (:math:`s_1 = x_1`, an EMA
    copy of weights made at initialisation, as in the GAN chapter); it needs
    ``bias_correct=False``, since there is no bias to correct. ``beta`` must lie in ``[0, 1)``
    (``beta = 0`` returns ``x``). Non-finite entries propagate.
    """
    x = as_float_tensor(x, "x")
    beta = _check_beta(beta, "beta")
    check_choice(init, "init", ("zero", "first"))
    if init == "first" and bias_correct:
        raise ValueError("init='first' needs bias_correct=False: an average that starts at the "
                         "first value has no bias towards 0")
    dim = check_dim(x, dim)
    xs = upcast_half(x.movedim(dim, 0))
    out = torch.empty_like(xs)
    s = xs[0].clone() if init == "first" else torch.zeros_like(xs[0])
    for t in range(xs.shape[0]):
        s = beta * s + (1.0 - beta) * xs[t]
        out[t] = s / (1.0 - beta ** (t + 1)) if bias_correct else s
    return out.movedim(0, dim).to(x.dtype)


def _adam_update(theta, g, m, v, t, lr, beta1, beta2, eps, centered):
    """One Adam (or AdaBelief) step in place of the returned tensors; ``t`` is 1-based."""
    m = beta1 * m + (1.0 - beta1) * g
    if centered:
        v = beta2 * v + (1.0 - beta2) * (g - m) ** 2 + eps
    else:
        v = beta2 * v + (1.0 - beta2) * g * g
    m_hat = m / (1.0 - beta1 ** t)
    v_hat = v / (1.0 - beta2 ** t)
    # sqrt(v) computed as 1/rsqrt(v) (equal to within an ulp, and 1/rsqrt(0) = 0): on CPU,
    # torch's sqrt and pow kernels are pathologically slow on small multi-threaded tensors
    # (milliseconds for a few thousand entries), and this line runs once per step
    theta = theta - lr * m_hat / (torch.reciprocal(torch.rsqrt(v_hat)) + eps)
    return theta, m, v


def adam_run(grad_fn: Callable[[torch.Tensor], torch.Tensor], theta0, *, lr: float, steps: int,
             betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
             centered: bool = False, record: bool = False) -> dict:
    r"""Run Adam (or AdaBelief with ``centered=True``) from ``theta0`` for ``steps`` steps.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2
              \quad\text{or, centred,}\quad
              \beta_2 v_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon, \\
        \theta_t &= \theta_{t-1}
                    - \eta\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}.

    The plain form is exactly ``torch.optim.Adam`` (no weight decay, no amsgrad); the centred
    form is AdaBelief as published by Zhuang et al. (2020), with :math:`\epsilon` also added inside
    :math:`v` (the blog post leaves it out; pass ``eps=0`` for its version).

    ``grad_fn(theta)`` returns the (possibly stochastic) gradient at ``theta``, same shape;
    randomness belongs in the closure, through an explicit generator. ``theta0`` may carry
    leading batch dimensions (independent chains): every operation is elementwise.

    Returns a dict with the final ``theta``, ``m``, ``v`` (raw EMAs, as torch stores them as
    ``exp_avg`` and ``exp_avg_sq``), ``v_hat`` (bias-corrected) and, with ``record=True``,
    ``"trajectory"`` of shape ``(steps + 1, *theta0.shape)`` starting with ``theta0``.
    A gradient containing NaN or inf raises ``ValueError`` naming the step. With ``eps=0`` a
    coordinate whose gradients have all been 0 gets :math:`0/0` = NaN, as in
    ``torch.optim.Adam``; ``lr=0`` leaves ``theta`` unchanged (useful to read off the moments).
    """
    check_callable(grad_fn, "grad_fn", "grad_fn(theta)")
    theta = as_float_tensor(theta0, "theta0").clone()
    check_finite(theta, "theta0")
    lr = check_real(lr, "lr", nonnegative=True)
    steps = check_int(steps, "steps", low=1)
    beta1, beta2 = _check_betas(betas)
    eps = check_real(eps, "eps", nonnegative=True)
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    path = [theta.clone()] if record else None
    for t in range(1, steps + 1):
        g = check_returned(grad_fn(theta), "grad_fn(theta)", theta.shape)
        if not torch.isfinite(g).all():
            bad = "NaN" if torch.isnan(g).any() else "inf"
            raise ValueError(f"grad_fn returned {bad} at step {t}")
        theta, m, v = _adam_update(theta, g.to(theta.dtype), m, v, t, lr, beta1, beta2, eps,
                                   centered)
        if record:
            path.append(theta.clone())
    out = {"theta": theta, "m": m, "v": v, "v_hat": v / (1.0 - beta2 ** steps)}
    if record:
        out["trajectory"] = torch.stack(path)
    return out


# ---------------------------------------------------------------------------------------------
# Hessian heuristics
# ---------------------------------------------------------------------------------------------

def random_spd(d: int, *, cond: float = 10.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    r"""A random symmetric positive definite :math:`d\times d` matrix of condition number ``cond``.

    :math:`H = Q\,\operatorname{diag}(\lambda)\,Q^\top` with :math:`Q` Haar-orthogonal (QR of a
    Gaussian matrix, signs fixed) and eigenvalues log-spaced from :math:`1/\sqrt{\kappa}` to
    :math:`\sqrt{\kappa}` (so :math:`\det H = 1`). Deterministic given the generator.
    ``d = 1`` gives ``[[1]]`` whatever ``cond`` (a 1x1 matrix has condition number 1); float16
    and bfloat16 are built in float32 and rounded; a non-floating ``dtype`` raises ``TypeError``.
    """
    d = check_int(d, "d", low=1)
    cond = check_real(cond, "cond", low=1.0)
    check_float_dtype(dtype)
    out_dtype, dtype = dtype, work_dtype(dtype)   # no QR in half precision
    device = check_device(device) if device is not None else torch.device("cpu")
    dev = generator.device if generator is not None else device
    A = torch.randn(d, d, generator=generator, dtype=dtype, device=dev)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones((), dtype=dtype,
                                                                                  device=dev))
    half = 0.5 * math.log(cond) if d > 1 else 0.0   # linspace(-h, h, 1) would be [-h]
    lam = torch.exp(torch.linspace(-half, half, d, dtype=dtype, device=dev))
    H = (Q * lam) @ Q.mT
    return (0.5 * (H + H.mT)).to(out_dtype)


def gauss_newton(jac) -> torch.Tensor:
    r"""The Gauss–Newton matrix of a squared loss from per-sample Jacobians.

    .. math:: G = \frac1n\sum_{s=1}^n J_s^\top J_s,\qquad J_s = \frac{\partial f_\theta(x_s)}
              {\partial\theta}\in\mathbb R^{k\times d}

    ``jac`` has shape ``(..., n, k, d)`` (torch's ``jacobian`` convention, outputs before
    parameters) or ``(n, d)`` for a scalar output; the result is ``(..., d, d)``. A 2-D input
    is always read as ``(n, d)`` and a 3-D or larger one as ``(..., n, k, d)``, so batched
    scalar-output Jacobians need an explicit ``k = 1`` axis. Empty input raises ``ValueError``.
    The blog writes :math:`\mathcal J = \nabla_\theta f` as a :math:`d\times k` matrix, so its
    :math:`\mathcal J\mathcal J^\top` is our :math:`J^\top J`.
    """
    jac = as_float_tensor(jac, "jac", min_ndim=2)
    check_finite(jac, "jac")
    if jac.ndim == 2:
        jac = jac.unsqueeze(-2)
    elif jac.ndim >= 3 and jac.shape[-2] == 0:
        raise ValueError("jac must have at least one output row")
    n = jac.shape[-3]
    flat = jac.reshape(*jac.shape[:-3], n * jac.shape[-2], jac.shape[-1])
    return flat.mT @ flat / n


def sgd_stationary_moments(h, c, lr) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact stationary moments of SGD on a noisy diagonal quadratic.

    The loss is :math:`\frac12\sum_i h_i\delta_i^2` and the stochastic gradient is
    :math:`\tilde g_i = h_i\delta_i + \sqrt{c_i}\,\xi_i` with :math:`\xi_i` i.i.d.
    :math:`\mathcal N(0,1)`. SGD,
    :math:`\delta_i \leftarrow (1-\eta h_i)\delta_i - \eta\sqrt{c_i}\xi_i`, is an AR(1)
    recursion whose stationary law (for :math:`0<\eta h_i<2`) has

    .. math:: \operatorname{Var}\delta_i = \frac{\eta c_i}{h_i(2-\eta h_i)},\qquad
              \mathbb E\tilde g_i^2 = h_i^2\operatorname{Var}\delta_i + c_i
              = \frac{2c_i}{2-\eta h_i}.

    Returns ``(var_delta, mean_sq_grad)`` broadcast over ``h`` and ``c``. ``h`` must be > 0 and
    ``lr * h < 2`` (otherwise SGD diverges and there is no stationary law); ``c >= 0``.
    """
    h = as_float_tensor(h, "h")
    c = as_float_tensor(c, "c").to(h)
    check_finite(h, "h")
    check_finite(c, "c")
    lr = check_real(lr, "lr", positive=True)
    if (h <= 0).any():
        raise ValueError("h must be > 0 (curvatures of a convex quadratic)")
    if (c < 0).any():
        raise ValueError("c must be >= 0 (noise variances)")
    if (lr * h >= 2).any():
        raise ValueError(f"lr * h must be < 2 for SGD to have a stationary law; "
                         f"max lr*h = {float((lr * h).max()):.3g}")
    var = lr * c / (h * (2.0 - lr * h))
    return var, 2.0 * c / (2.0 - lr * h)


def noisy_quadratic(h, c, *, lr: float, steps: int, burn_in: int, chains: int,
                    method: str = "sgd", betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32) -> dict:
    r"""Simulate SGD or Adam on the noisy diagonal quadratic of :func:`sgd_stationary_moments`.

    ``chains`` independent copies start at the optimum :math:`\delta = 0`, run ``burn_in``
    steps, then ``steps`` more steps over which the moments are averaged (over chains and time):

    * ``"var_delta"``: :math:`\mathbb E\delta_i^2` (the spread around the optimum);
    * ``"mean_sq_grad"``: :math:`\mathbb E\tilde g_i^2` (what Adam's :math:`v` estimates);
    * ``"v_hat"`` (Adam only): the chain average of the bias-corrected :math:`\hat v_i` at the
      end, Adam's own estimate.

    Each step draws one ``(chains, d)`` block of noise from ``generator`` (on its device), so
    results are reproducible. Shapes: ``h`` and ``c`` are ``(d,)``; results are ``(d,)`` in
    ``dtype``. The chains run in ``dtype``; the time averages are accumulated in float32 for
    float16/bfloat16 (a half-precision running sum stalls after a few hundred steps).
    ``method="sgd"`` needs ``lr * h < 2`` (otherwise SGD diverges and the moments
    would be ``inf``/``nan``): a larger step raises ``ValueError``. ``betas`` (Adam only) is a
    pair in ``[0, 1)``.
    """
    h = as_float_tensor(h, "h").to(dtype)
    c = as_float_tensor(c, "c").to(h)
    if h.ndim != 1 or c.shape != h.shape:
        raise ValueError(f"h and c must be vectors of the same length, got {tuple(h.shape)} "
                         f"and {tuple(c.shape)}")
    check_finite(h, "h")
    check_finite(c, "c")
    if (h <= 0).any() or (c < 0).any():
        raise ValueError("h must be > 0 and c must be >= 0")
    lr = check_real(lr, "lr", positive=True)
    steps = check_int(steps, "steps", low=1)
    burn_in = check_int(burn_in, "burn_in", low=0)
    chains = check_int(chains, "chains", low=1)
    check_choice(method, "method", ("sgd", "adam"))
    if method == "sgd" and float((lr * h).max()) >= 2:
        raise ValueError(f"lr * h must be < 2 for SGD to have a stationary law (it diverges "
                         f"otherwise); max lr*h = {float((lr * h).max()):.3g}")
    beta1, beta2 = _check_betas(betas)
    eps = check_real(eps, "eps", nonnegative=True)
    dev = generator.device if generator is not None else torch.device("cpu")
    h, c = h.to(dev), c.to(dev)
    sd = c.sqrt()
    delta = torch.zeros(chains, h.numel(), dtype=dtype, device=dev)
    m = torch.zeros_like(delta)
    v = torch.zeros_like(delta)
    sum_d2 = upcast_half(torch.zeros_like(h))
    sum_g2 = torch.zeros_like(sum_d2)
    for t in range(1, burn_in + steps + 1):
        noise = torch.randn(delta.shape, generator=generator, dtype=dtype, device=dev)
        g = h * delta + sd * noise
        if t > burn_in:
            sum_d2 += upcast_half(delta * delta).mean(dim=0)
            sum_g2 += upcast_half(g * g).mean(dim=0)
        if method == "sgd":
            delta = delta - lr * g
        else:
            delta, m, v = _adam_update(delta, g, m, v, t, lr, beta1, beta2, eps, False)
    out = {"var_delta": (sum_d2 / steps).to(dtype), "mean_sq_grad": (sum_g2 / steps).to(dtype)}
    if method == "adam":
        out["v_hat"] = (v / (1.0 - beta2 ** (burn_in + steps))).mean(dim=0)
    return out


# ---------------------------------------------------------------------------------------------
# Adam's epsilon: softsign, the S-curve approximations, the moments
# ---------------------------------------------------------------------------------------------

def softsign(x, eps) -> torch.Tensor:
    r"""The soft sign :math:`\operatorname{softsign}(x,\epsilon) = x/\sqrt{x^2+\epsilon^2}`.

    Computed as ``x / hypot(x, eps)``, both halved first when one exceeds 1 (exact), so huge
    ``x`` or ``eps`` do not overflow, even both near the dtype's largest value. At
    ``eps = 0`` it is :math:`\operatorname{sign}(x)` with :math:`\operatorname{sign}(0)=0`;
    :math:`\epsilon\operatorname{softsign}(x,\epsilon)\to x` as :math:`\epsilon\to\infty`.
    ``eps`` is a number or a tensor (broadcast) and must be >= 0.
    """
    x = as_float_tensor(x, "x", min_ndim=0)
    check_no_nan(x, "x")
    eps = _nonneg_tensor(eps, "eps", x)
    return _softsign(x, eps)


def _softsign(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """:func:`softsign` without the checks: ``x / hypot(x, eps)``, overflow-free."""
    # hypot overflows when both are near the largest float: halving is exact above 1
    big = torch.maximum(x.abs(), eps.abs()) > 1
    x, eps = torch.where(big, 0.5 * x, x), torch.where(big, 0.5 * eps, eps)
    r = torch.hypot(x, eps)
    out = torch.where(r > 0, x / r.where(r > 0, torch.ones_like(r)), torch.zeros_like(r))
    # x = +-inf: hypot is inf, the ratio is nan; the limit is +-1
    return torch.where(torch.isinf(x), torch.sign(x), out)


def s_curve_sqrt(x, k: float) -> torch.Tensor:
    r"""Square-root approximation of an odd S-curve with range (-1, 1) and slope ``k`` at 0:
    :math:`x/\sqrt{x^2 + 1/k^2}`. With :math:`k = 2/\sqrt\pi` it approximates
    :math:`\operatorname{erf}`."""
    x = as_float_tensor(x, "x", min_ndim=0)
    k = check_real(k, "k", positive=True)
    return softsign(x, 1.0 / k)


def s_curve_clip(x, k: float) -> torch.Tensor:
    r"""Piecewise-linear imitation of the same S-curve: :math:`\operatorname{clip}(kx, -1, 1)`."""
    x = as_float_tensor(x, "x", min_ndim=0)
    k = check_real(k, "k", positive=True)
    return (k * x).clamp(-1.0, 1.0)


def _tensor_like(value, name: str, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a floating tensor in ``like``'s dtype and device (numbers are converted
    directly in that dtype, so a Python float keeps its float64 digits)."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a number or a tensor, got "
                            f"{type(value).__name__}") from exc
    return as_float_tensor(value, name, min_ndim=0).to(dtype=like.dtype, device=like.device)


def _nonneg_tensor(value, name: str, like: torch.Tensor) -> torch.Tensor:
    t = _tensor_like(value, name, like)
    check_no_nan(t, name)
    if (t < 0).any():
        raise ValueError(f"{name} must be >= 0")
    return t


def noise_units(g, sigma, batch, eps) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Gradient and epsilon in units of the batch noise: :math:`a = g\sqrt B/\sigma`,
    :math:`b = \epsilon\sqrt B/\sigma`.

    ``g`` is the full-batch gradient, ``sigma`` the per-sample noise standard deviation (> 0),
    ``batch`` the batch size (> 0) and ``eps`` Adam's epsilon (finite, >= 0); all broadcast. The
    batch gradient is :math:`\tilde g = g + \sigma z/\sqrt B`, and
    :math:`\operatorname{softsign}(\tilde g,\epsilon) = \operatorname{softsign}(a+z, b)`.
    """
    g = as_float_tensor(g, "g", min_ndim=0)
    check_finite(g, "g")
    sigma = _tensor_like(sigma, "sigma", g)
    if not (sigma > 0).all() or not torch.isfinite(sigma).all():
        raise ValueError("sigma must be finite and > 0")
    batch = _tensor_like(batch, "batch", g)
    if not (batch > 0).all() or not torch.isfinite(batch).all():
        raise ValueError("batch must be finite and > 0")
    eps = _nonneg_tensor(eps, "eps", g)
    if torch.isinf(eps).any():
        raise ValueError("eps must be finite (b = eps sqrt(B) / sigma feeds the moments, which "
                         "need a finite b)")
    scale = batch.sqrt() / sigma
    return g * scale, eps * scale


def _ab(a, b):
    a = as_float_tensor(a, "a", min_ndim=0)
    check_no_nan(a, "a")
    b = _nonneg_tensor(b, "b", a)
    if torch.isinf(b).any():
        raise ValueError("b must be finite (the moments vanish as b -> inf)")
    check_broadcast(a=a.shape, b=b.shape)
    a, b = torch.broadcast_tensors(a, b)
    return a, b


def _gauss_legendre(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes and weights on [-1, 1] (Golub–Welsch, float64), cast to ``like``."""
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4.0 * k * k - 1.0)
    J = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(J)
    weights = 2.0 * vecs[0] ** 2
    return nodes.to(like), weights.to(like)


_GL_NODES = 32
#: below this b the clip moments use Gauss–Legendre (the closed form cancels like 1/b there)
CLIP_SWITCH = 1.0


def _phi(x):
    return torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def clip_moments(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact :math:`\mathbb E[c]` and :math:`\mathbb E[c^2]` for
    :math:`c = \operatorname{clip}((a+z)/b,-1,1)`, :math:`z\sim\mathcal N(0,1)`.

    With :math:`Q(x) = P(z>x)` and :math:`\varphi` the standard normal density,

    .. math::
        \mathbb E[c] &= Q(b-a) - Q(a+b) + \frac ab P + \frac{\varphi(a+b)-\varphi(b-a)}{b},
        \qquad P = P(|a+z|<b), \\
        \mathbb E[c^2] &= 1 - P + \frac{(a^2+1)P + (a-b)\varphi(a+b) - (a+b)\varphi(a-b)}{b^2},

    which equal the post's erf expression and our second-moment formula. Both lose digits like
    :math:`10^{-16}/b^2` as :math:`b\to0`, so for :math:`b<1` we integrate instead the smooth
    forms :math:`\mathbb E[c] = \frac12\int_{-1}^1\operatorname{erf}\frac{a-bs}{\sqrt2}\,ds`
    and :math:`\mathbb E[c^2] = 1 - b\int_{-1}^1(1-s^2)\varphi(bs-a)\,ds` with 32-point
    Gauss–Legendre (exact to rounding there). ``b = 0`` gives
    :math:`(\operatorname{erf}(a/\sqrt2), 1)`, the sign function. :math:`|a|\to\infty` gives
    :math:`(\pm1, 1)`. Shapes broadcast; ``b`` must be finite and >= 0.
    """
    a, b = _ab(a, b)
    sgn = torch.where(a < 0, -torch.ones_like(a), torch.ones_like(a))
    # work with |a| (E[c] is odd, E[c^2] even) and cap it where both moments are saturated
    # (a * sgn rather than abs(a): same value, but the derivative at a = 0 survives autograd)
    x = torch.minimum(a * sgn, b + 40.0)
    small = b < CLIP_SWITCH
    # Gauss–Legendre branch
    s, w = _gauss_legendre(_GL_NODES, a)
    xs, bs = x.unsqueeze(-1), b.unsqueeze(-1)
    centre = torch.erf(x / _SQRT2)   # the b = 0 value; the sum below is the correction
    m1_gl = centre + 0.5 * (w * (torch.erf((xs - bs * s) / _SQRT2) - centre.unsqueeze(-1))).sum(-1)
    m2_gl = 1.0 - b * (w * (1.0 - s * s) * _phi(bs * s - xs)).sum(-1)
    # closed-form branch (b >= 1; b is replaced by 1 elsewhere to keep it finite)
    bb = torch.where(small, torch.ones_like(b), b)
    nd = torch.special.ndtr
    q_hi, q_lo = nd(x - bb), nd(-x - bb)          # Q(b-a), Q(a+b)
    # P(|a+z| < b), written so that neither branch subtracts two numbers close to 1
    p_in = torch.where(x > bb, nd(bb - x) - nd(-bb - x), 1.0 - q_hi - q_lo)
    m1_cf = q_hi - q_lo + x / bb * p_in + (_phi(x + bb) - _phi(bb - x)) / bb
    m2_cf = 1.0 - p_in + ((x * x + 1.0) * p_in + (x - bb) * _phi(x + bb)
                          - (x + bb) * _phi(x - bb)) / (bb * bb)
    m1 = torch.where(small, m1_gl, m1_cf)
    m2 = torch.where(small, m2_gl, m2_cf)
    return sgn * m1, m2


#: trapezoid nodes in t (x = b sinh t) for the exact softsign moments
_SINH_NODES = 1536
#: half-width, in noise units, of the window of x = a + z that is integrated
_WINDOW = 12.0
#: below this b, softsign is replaced by its sign-function expansion (error O(b^2))
SOFTSIGN_TINY = 1e-8


def softsign_moments(a, b, *, method: str = "sinh") -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact :math:`\mathbb E[u]` and :math:`\mathbb E[u^2]` for
    :math:`u = \operatorname{softsign}(a+z, b) = \frac{a+z}{\sqrt{(a+z)^2+b^2}}`,
    :math:`z\sim\mathcal N(0,1)`.

    As :math:`b\to0` the integrand becomes a step at :math:`a+z=0`, which is why Gauss–Hermite
    quadrature fails there. ``method="sinh"`` (default, vectorised torch) substitutes
    :math:`a+z = b\sinh t`, so that :math:`u=\tanh t` and the step is resolved at its own
    scale :math:`b`:

    .. math:: \mathbb E[u^k] = \int \tanh^k(t)\,\varphi(b\sinh t - a)\,b\cosh t\,dt,

    integrated by the trapezoid rule over the window :math:`|a+z|\le 12` (where the Gaussian
    tail is below :math:`10^{-32}`, so the rule converges geometrically). For
    :math:`b<10^{-8}` the expansion :math:`(\operatorname{erf}(a/\sqrt2),\ 1-\pi b\varphi(a))`
    is used (error :math:`O(b^2\log(1/b))` for the mean and :math:`O(b^2)` for the second
    moment, below :math:`10^{-14}` there); ``b = 0`` gives the sign function's moments exactly.
    Far from the step, :math:`r = \sqrt{a^2+b^2}\ge(2/\epsilon_{\rm mach})^{1/4}` (about
    :math:`10^4` in float64, 64 in float32), the Taylor expansion
    :math:`\mathbb E f(a+z) = f(a) + f''(a)/2 + O(r^{-4})` is used instead, with
    :math:`f = \operatorname{softsign}(\cdot, b)` for the mean and :math:`1-f^2` for the second
    moment; its error is below rounding there, while the trapezoid rule in :math:`t` would
    lose digits like :math:`\epsilon_{\rm mach}|a|` (and no cap on :math:`|a|` is needed:
    :math:`a=\pm\infty` gives :math:`(\pm1, 1)`).
    ``method="quad"`` is the slow reference: ``scipy.integrate.quad`` in :math:`z` over
    :math:`|z|\le 14` with break points where :math:`a+z` is 0 or :math:`\pm b4^k`, one call per
    element (float64 numpy under the hood; any finite or infinite :math:`a`).

    Shapes broadcast; ``b`` must be finite and >= 0. Float16/bfloat16 inputs are integrated in
    float32 and the moments returned in the input's dtype.
    """
    a, b = _ab(a, b)
    check_choice(method, "method", ("sinh", "quad"))
    if method == "quad":
        return _softsign_moments_quad(a, b)
    dtype = a.dtype
    a, b = upcast_half(a), upcast_half(b)   # float16 cannot hold fine nodes
    x = a.abs()  # E[u] odd in a, E[u^2] even
    sgn = torch.where(a < 0, -torch.ones_like(a), torch.ones_like(a))
    # integrate each distinct (|a|, b) pair once (coordinates often share them)
    pairs, inverse = torch.unique(torch.stack([x.reshape(-1), b.reshape(-1)], -1), dim=0,
                                  return_inverse=True)
    xf, bf = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
    tf = bf < SOFTSIGN_TINY
    m1f = torch.empty_like(xf)
    m2f = torch.empty_like(xf)
    chunk = 2048
    k = torch.arange(_SINH_NODES, dtype=a.dtype, device=a.device)
    r_asym = (2.0 / torch.finfo(a.dtype).eps) ** 0.25
    for lo in range(0, xf.numel(), chunk):
        xs, bs = xf[lo:lo + chunk], bf[lo:lo + chunk]
        far = torch.hypot(xs, bs) >= r_asym
        xs = torch.where(far, torch.zeros_like(xs), xs)   # the trapezoid rule sees no huge x
        bsafe = torch.where(bs < SOFTSIGN_TINY, torch.ones_like(bs), bs).unsqueeze(-1)
        xc = xs.unsqueeze(-1)
        t_lo = torch.asinh((xc - _WINDOW) / bsafe)
        t_hi = torch.asinh((xc + _WINDOW) / bsafe)
        dt = (t_hi - t_lo) / (_SINH_NODES - 1)
        t = t_lo + dt * k
        dens = _phi(bsafe * torch.sinh(t) - xc) * bsafe * torch.cosh(t)
        wts = torch.ones_like(k)
        wts[0] = wts[-1] = 0.5
        th = torch.tanh(t)
        v1 = (wts * th * dens).sum(-1) * dt.squeeze(-1)
        v2 = (wts * th * th * dens).sum(-1) * dt.squeeze(-1)
        tn = tf[lo:lo + chunk]
        v1 = torch.where(tn, torch.erf(xs / _SQRT2), v1)
        v2 = torch.where(tn, 1.0 - math.pi * bs * _phi(xs), v2)
        e1, e2 = _softsign_moments_far(xf[lo:lo + chunk], bs)
        m1f[lo:lo + chunk] = torch.where(far, e1, v1)
        m2f[lo:lo + chunk] = torch.where(far, e2, v2)
    m1 = m1f[inverse].reshape(a.shape)
    m2 = m2f[inverse].reshape(a.shape)
    return (sgn * m1).to(dtype), m2.to(dtype)


def _softsign_moments_far(x: torch.Tensor, b: torch.Tensor):
    """E f(x+z) = f + f''/2 + O(r^-4) for f = softsign(., b) and 1 - f^2, r = hypot(x, b)."""
    u, w = _softsign(x, b), _softsign(b, x)      # x/r and b/r, overflow-free
    inv_r2 = torch.hypot(x, b).pow(-2)           # 0 where r overflows: the term vanishes there
    m1 = u - 1.5 * w * w * u * inv_r2
    m2 = 1.0 - w * w - w * w * (3.0 * u * u - w * w) * inv_r2
    return m1, m2


def _softsign_moments_quad(a: torch.Tensor, b: torch.Tensor):
    import numpy as np
    from scipy.integrate import quad

    def phi(z):
        return math.exp(-0.5 * z * z) * _INV_SQRT_2PI

    def one(av: float, bv: float):
        if bv == 0.0:
            return math.erf(av / _SQRT2), 1.0
        if math.isinf(av):
            return math.copysign(1.0, av), 1.0
        # in z = x - a (a window [a-14, a+14] in x collapses in floats for huge |a|)
        lo, hi = -_WINDOW - 2.0, _WINDOW + 2.0
        # break points where x = a + z is 0 or +-b*4^k: every scale of the step gets its panels
        scales = [bv * 4.0 ** k for k in range(60) if bv * 4.0 ** k < 2 * _WINDOW + 4]
        pts = [p - av for p in [0.0, *scales, *(-q for q in scales)] if lo < p - av < hi]
        opts = dict(points=sorted(pts) or None, limit=800, epsabs=1e-15, epsrel=1e-13)
        m1 = quad(lambda z: (av + z) / math.hypot(av + z, bv) * phi(z), lo, hi, **opts)[0]
        dip = quad(lambda z: (bv / math.hypot(av + z, bv)) ** 2 * phi(z), lo, hi, **opts)[0]
        return m1, 1.0 - dip

    import warnings

    from scipy.integrate import IntegrationWarning

    an = a.detach().cpu().double().numpy().ravel()
    bn = b.detach().cpu().double().numpy().ravel()
    with warnings.catch_warnings():   # tolerances near rounding: quad says so, harmlessly
        warnings.simplefilter("ignore", IntegrationWarning)
        res = np.array([one(float(x), float(y)) for x, y in zip(an, bn, strict=True)])
    res = res.reshape(*a.shape, 2)
    out = torch.as_tensor(res, dtype=a.dtype, device=a.device)
    return out[..., 0], out[..., 1]


def softsign_moments_approx(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The post's approximations of the softsign moments:

    .. math:: \mathbb E[u]\approx\frac{a}{\sqrt{a^2+b^2+\pi/2}},\qquad
              \mathbb E[u^2]\approx 1-\frac{b^2}{a^2+b^2+\pi/2}.

    The first follows from the clip surrogate and :math:`\operatorname{erf}(x)\approx
    x/\sqrt{x^2+\pi/4}`; the second is chosen only to share the shape of the exact one. Shapes
    broadcast; ``b`` finite and >= 0; :math:`a=\pm\infty` gives the limit :math:`(\pm1, 1)`.
    Computed as :math:`\operatorname{softsign}(a, c)` and :math:`1-(\tfrac bc
    \operatorname{softsign}(c, a))^2` with :math:`c = \sqrt{b^2+\pi/2}` (by ``hypot``), so that
    no square overflows: huge :math:`|a|` or :math:`b` stay right in every dtype.
    """
    a, b = _ab(a, b)
    c = torch.hypot(b, torch.full_like(b, math.sqrt(math.pi / 2)))
    return _softsign(a, c), 1.0 - (b / c * _softsign(c, a.abs())) ** 2


# ---------------------------------------------------------------------------------------------
# optimal learning rate and the surge
# ---------------------------------------------------------------------------------------------

def _g_H(g, H):
    g = as_float_tensor(g, "g")
    check_finite(g, "g")
    H = check_matrix(H, "H").to(g)
    n = g.shape[-1]
    if H.shape[-2:] != (n, n):
        raise ValueError(f"H must be {n}x{n} to match g, got {tuple(H.shape[-2:])}")
    return g, H


def eta_opt(mean_u, second_u, g, H) -> torch.Tensor:
    r"""Optimal learning rate of the quadratic model for an update with independent coordinates.

    .. math:: \eta^* = \frac{\mathbb E[u]^\top g}{\operatorname{Tr}(\mathbb E[uu^\top]H)},
              \qquad \mathbb E[uu^\top] = \mathbb E[u]\mathbb E[u]^\top
              + \operatorname{diag}(\mathbb E[u^2]-\mathbb E[u]^2).

    ``mean_u`` and ``second_u`` are ``(..., n)``, ``g`` is ``(..., n)`` and ``H`` ``(..., n, n)``
    (symmetric); the result has the broadcast leading shape. The model minimises
    :math:`\mathbb E L(\theta-\eta u)` exactly when :math:`L` is quadratic with Hessian :math:`H`.
    Without curvature (denominator 0, e.g. :math:`H=0`) the model is linear and the result is
    the formula's limit :math:`\pm\infty`, or NaN when the numerator is 0 too.
    """
    g, H = _g_H(g, H)
    m = as_float_tensor(mean_u, "mean_u").to(g)
    s = as_float_tensor(second_u, "second_u").to(g)
    check_finite(m, "mean_u")
    check_finite(s, "second_u")
    if m.shape[-1] != g.shape[-1] or s.shape[-1] != g.shape[-1]:
        raise ValueError("mean_u, second_u and g must have the same length along dim=-1")
    check_broadcast(mean_u=m.shape[:-1], second_u=s.shape[:-1], g=g.shape[:-1], H=H.shape[:-2])
    num = (m * g).sum(-1)
    quad_form = (m.unsqueeze(-2) @ H @ m.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    var = (s - m * m).clamp_min(0.0)
    den = quad_form + (var * torch.diagonal(H, dim1=-2, dim2=-1)).sum(-1)
    return num / den


def eta_opt_sgd(g, H, noise_var, batch) -> torch.Tensor:
    r"""Optimal learning rate of minibatch SGD on the quadratic model (McCandlish et al.).

    .. math:: \eta^*(B) = \frac{g^\top g}{g^\top H g + \operatorname{Tr}(\Sigma H)/B}
              = \frac{\eta_{\max}}{1+\mathcal B_{\rm noise}/B}

    ``noise_var`` is the per-sample gradient covariance :math:`\Sigma`: ``(..., n, n)``, a matrix,
    or ``(..., n)``, its diagonal; leading dimensions broadcast against ``H``'s and ``g``'s. Last
    dimensions ``(n, n)`` always mean a matrix: pass a batch of ``n`` diagonals ``d`` as
    ``torch.diag_embed(d)``. ``batch`` is a number or tensor (broadcast, > 0;
    ``inf`` gives the noiseless :math:`\eta_{\max}`). Without curvature (:math:`H=0`) the result
    is ``inf`` (NaN if also :math:`g=0`), the formula's limit, as in :func:`eta_opt`.
    """
    g, H = _g_H(g, H)
    S = as_float_tensor(noise_var, "noise_var").to(g)
    check_finite(S, "noise_var")
    batch = _tensor_like(batch, "batch", g)
    if not (batch > 0).all():
        raise ValueError("batch must be > 0")
    n = g.shape[-1]
    if S.ndim == 0 or S.shape[-1] != n:
        raise ValueError(f"noise_var must be (..., {n}) or (..., {n}, {n}) to match g, got "
                         f"{tuple(S.shape)}")
    matrix = S.ndim >= 2 and S.shape[-2] == n
    lead = check_broadcast(noise_var=S.shape[:-2] if matrix else S.shape[:-1], H=H.shape[:-2],
                           g=g.shape[:-1])
    check_broadcast(batch=batch.shape, **{"the leading dimensions of noise_var, H and g": lead})
    if matrix:  # Tr(Sigma H) = sum_ij Sigma_ij H_ji
        tr = (S * H.transpose(-2, -1)).sum((-2, -1))
    else:
        tr = (S * torch.diagonal(H, dim1=-2, dim2=-1)).sum(-1)
    ghg = (g.unsqueeze(-2) @ H @ g.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    return (g * g).sum(-1) / (ghg + tr / batch)


def beta_from_batch(batch, kappa2) -> torch.Tensor:
    r"""Mean-field signal factor :math:`\beta = (1 + \pi\kappa^2/(2B))^{-1/2}`, increasing in
    :math:`B` from 0 to 1. ``batch`` > 0, ``kappa2`` >= 0 (tensors or numbers, broadcast)."""
    batch = as_float_tensor(batch, "batch", min_ndim=0)
    if not (batch > 0).all():
        raise ValueError("batch must be > 0")
    kappa2 = _nonneg_tensor(kappa2, "kappa2", batch)
    return torch.rsqrt(1.0 + math.pi * kappa2 / (2.0 * batch))


def batch_from_beta(beta, kappa2) -> torch.Tensor:
    r"""Inverse of :func:`beta_from_batch`: :math:`B = \pi\kappa^2/(2(\beta^{-2}-1))`,
    for :math:`0<\beta<1` (``beta = 1`` gives ``inf``) and finite ``kappa2 > 0`` (without
    noise every batch has :math:`\beta=1`, so there is no inverse)."""
    beta = as_float_tensor(beta, "beta", min_ndim=0)
    if not ((beta > 0) & (beta <= 1)).all():
        raise ValueError("beta must be in (0, 1]")
    kappa2 = _nonneg_tensor(kappa2, "kappa2", beta)
    if not ((kappa2 > 0) & torch.isfinite(kappa2)).all():
        raise ValueError("kappa2 must be finite and > 0")
    return math.pi * kappa2 / (2.0 * (beta.pow(-2) - 1.0))


def eta_opt_meanfield(u, g, H, beta) -> torch.Tensor:
    r"""The post's mean-field optimal learning rate for a (soft)sign update.

    .. math:: \eta^*(\beta)
              = \frac{\beta\,u^\top g}{\beta^2 u^\top H u + (1-\beta^2)\operatorname{Tr}H}
              = \frac{\beta A}{D + \beta^2(C - D)},\quad A = u^\top g,\ C = u^\top H u,\
              D = \operatorname{Tr} H,

    with :math:`u = \operatorname{softsign}(g,\epsilon)` (``sign(g)`` at :math:`\epsilon=0`)
    and :math:`\beta\in(0,1]` from :func:`beta_from_batch`. ``beta`` broadcasts against the
    leading shape of ``g``. Without curvature (:math:`H=0`) the result is :math:`\pm\infty`
    (NaN if also :math:`u^\top g=0`), the formula's limit, as in :func:`eta_opt`.
    """
    g, H = _g_H(g, H)
    u = as_float_tensor(u, "u").to(g)
    check_finite(u, "u")
    beta = _tensor_like(beta, "beta", g)
    if not ((beta > 0) & (beta <= 1)).all():
        raise ValueError("beta must be in (0, 1]")
    if u.shape[-1] != g.shape[-1]:
        raise ValueError(f"u and g must have the same length along dim=-1, got {u.shape[-1]} "
                         f"and {g.shape[-1]}")
    lead = check_broadcast(u=u.shape[:-1], g=g.shape[:-1], H=H.shape[:-2])
    check_broadcast(beta=beta.shape, **{"the leading dimensions of u, g and H": lead})
    A = (u * g).sum(-1)
    C = (u.unsqueeze(-2) @ H @ u.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    D = torch.diagonal(H, dim1=-2, dim2=-1).sum(-1)
    return beta * A / (D + beta * beta * (C - D))


def _cd(C, D):
    C = as_float_tensor(C, "C", min_ndim=0)
    D = _tensor_like(D, "D", C)
    check_finite(C, "C")
    check_finite(D, "D")
    if not (C > 0).all() or not (D > 0).all():
        raise ValueError("C and D must be > 0 (they are u'Hu and Tr H for H positive definite)")
    return torch.broadcast_tensors(C, D)


def surge_peak_beta(C, D) -> torch.Tensor:
    r"""Where :math:`\eta^*(\beta)=\beta A/(D+\beta^2(C-D))` peaks on :math:`(0,1]`.

    :math:`\partial_\beta\eta^*\propto D-\beta^2(C-D)`, so the maximum is at
    :math:`\beta^2 = D/(C-D)` when that is < 1, i.e. when :math:`C>2D`; otherwise
    :math:`\eta^*` increases all the way and the peak is :math:`\beta=1` (:math:`B=\infty`).
    """
    C, D = _cd(C, D)
    inner = torch.sqrt(D / (C - D).clamp_min(torch.finfo(C.dtype).tiny))
    return torch.where(C > 2 * D, inner, torch.ones_like(C))


def surge_overshoot(C, D) -> torch.Tensor:
    r"""How far the optimal learning rate overshoots its large-batch limit:
    :math:`\max_{\beta\le1}\eta^*(\beta)/\eta^*(1) = C/(2\sqrt{D(C-D)})` if :math:`C>2D`,
    else 1 (no surge). Evaluated as :math:`\tfrac12\sqrt C/\sqrt D\cdot\sqrt{C/(C-D)}`,
    which depends only on :math:`C/D` and forms no product, so huge or tiny :math:`C, D`
    neither overflow nor underflow (float16 included)."""
    C, D = _cd(C, D)
    gap = (C - D).clamp_min(torch.finfo(C.dtype).tiny)
    val = 0.5 * (C.sqrt() / D.sqrt()) * (C / gap).sqrt()
    return torch.where(C > 2 * D, val, torch.ones_like(C))
