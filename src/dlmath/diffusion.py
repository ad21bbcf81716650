r"""Exact references for diffusion and flow models: Gaussian-mixture data, posteriors on a
noisy path, the ideal velocity of a linear path, and the flow map of an ODE.

Chapters: *Shortcut models* (``notebooks/28-shortcut-models.ipynb``), *Consistency
models* (``notebooks/29-consistency-models.ipynb``), *Discrete codes from DDPM*
(``notebooks/30-diffusion-codebooks.ipynb``), *Signal-to-noise ratio and upsample guidance*
(``notebooks/31-upsample-guidance.ipynb``) and *Score identity distillation*
(``notebooks/32-score-identity-distillation.ipynb``); each chapter's own functions follow the
shared core below, in that order.

A Gaussian mixture :math:`p(x) = \sum_j w_j\,\mathcal N(x;\mu_j, s_j^2 I)` stays a Gaussian
mixture on every noisy path :math:`x_t = a\,x_{\text{data}} + b\,z` with
:math:`z\sim\mathcal N(0, I)` independent of the data, so everything a trained network would
only approximate is available in closed form: the marginal density, the responsibilities
:math:`r_j(x)`, and the posterior means

.. math::

    \mathbb E[x_{\text{data}}\mid x_t=x,\,j] = \mu_j + \frac{a s_j^2}{V_j}(x - a\mu_j),\qquad
    \mathbb E[z\mid x_t=x,\,j] = \frac{b}{V_j}(x - a\mu_j),\qquad V_j = a^2s_j^2 + b^2 .

Conventions for every function here:

* A point is a tensor whose last axis has length ``gmm.dim``; a 1-D mixture (``means`` of
  shape ``(m,)``) takes points of any shape and treats every entry as one point.
* Computation runs in float64 on the mixture's device; results come back in the points'
  floating dtype and device.
* The two linear-path conventions of the literature are one flag, ``data_at``: with
  ``data_at=1`` (flow matching, shortcut models) :math:`x_t=(1-t)z+t\,x_{\text{data}}`;
  with ``data_at=0`` (consistency models) :math:`x_t=(1-t)x_{\text{data}}+t\,z`. In both the
  velocity is :math:`\mathbb E[x_1 - x_0\mid x_t]`.
* Bad input raises ``TypeError``/``ValueError`` naming the argument; NaN or inf points raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._checks import (
    as_float_tensor,
    check_callable,
    check_choice,
    check_finite,
    check_float_dtype,
    check_generator,
    check_int,
    check_matrix,
    check_probability,
    check_real,
    check_returned,
    promote,
    upcast_half,
    work_dtype,
)

__all__ = [
    "GaussianMixture",
    "Posterior",
    "path_coefficients",
    "linear_path_velocity",
    "euler",
    "flow_map",
    "w1_1d",
    # shortcut models
    "average_velocity",
    "shortcut_ideal",
    "ShortcutMLP",
    "shortcut_loss",
    "train_shortcut",
    "shortcut_sample",
    # consistency models
    "VelocityPosterior",
    "velocity_posterior",
    "interp_table",
    "consistency_fixed_point",
    "consistency_function_gaussian",
    "consistency_function_1d",
    "multistep_consistency_sample",
    # denoising diffusion codebooks
    "VPSchedule",
    "vp_schedule",
    "ddpm_posterior_coefficients",
    "gmm_x0_predictor",
    "gaussian_x0_predictor",
    "make_codebooks",
    "ddpm_sample",
    "ddcm_generate",
    "ddcm_encode",
    "selection_logits",
    "selection_weights",
    "energy_distance",
    "gaussian_distortion_rate",
    # signal-to-noise ratio and upsample guidance
    "snr",
    "vp_from_abar",
    "snr_matched",
    "tau_cosine",
    "avg_pool_matrix",
    "nearest_upsample_matrix",
    "torus_conv_matrix",
    "torus_covariance",
    "GaussianEpsPredictor",
    "ug_eps",
    "affine_coefficients",
    "ddpm_eps_moments",
    # score identity distillation
    "gauss_hermite",
    "discrete_generator_eps",
    "gaussian_generator_eps",
    "sid_losses",
    "train_sid",
]


@dataclass(frozen=True)
class Posterior:
    """What the noisy point :math:`x_t` says about its origin (shapes follow the points)."""

    responsibilities: torch.Tensor  #: :math:`r_j(x)`, shape ``(*batch, m)``
    data_mean: torch.Tensor  #: :math:`\mathbb E[x_{\text{data}}\mid x_t]`
    noise_mean: torch.Tensor  #: :math:`\mathbb E[z\mid x_t]`


class GaussianMixture:
    r""":math:`p(x)=\sum_j w_j\,\mathcal N(x;\mu_j,s_j^2I)`.

    ``weights`` (m,) non-negative with a positive sum (normalised here), ``means`` (m,) for a
    1-D mixture or (m, d), ``stds`` (m,) positive. Stored in float64 on the means' device;
    Python numbers and lists are read in float64, so ``0.2`` is the double nearest 0.2.
    """

    def __init__(self, weights, means, stds):
        w = as_float_tensor(weights, "weights", dtype=torch.float64)
        mu = as_float_tensor(means, "means", dtype=torch.float64)
        s = as_float_tensor(stds, "stds", dtype=torch.float64)
        for t, name in ((w, "weights"), (mu, "means"), (s, "stds")):
            check_finite(t, name)
        if w.ndim != 1:
            raise ValueError(f"weights must be 1-D, got shape {tuple(w.shape)}")
        if mu.ndim not in (1, 2) or mu.shape[0] != w.shape[0]:
            raise ValueError(f"means must have shape ({w.shape[0]},) or ({w.shape[0]}, d), "
                             f"got {tuple(mu.shape)}")
        if s.shape != w.shape:
            raise ValueError(f"stds must have shape {tuple(w.shape)}, got {tuple(s.shape)}")
        if (w < 0).any() or not w.sum() > 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if not (s > 0).all():
            raise ValueError("stds must be > 0")
        dev = mu.device
        self.weights = (w / w.sum()).to(dev, torch.float64)
        self.scalar = mu.ndim == 1
        self.means = mu.to(torch.float64).reshape(mu.shape[0], -1)
        self.stds = s.to(dev, torch.float64)
        # the widest component of positive weight: the reference of _components on every path
        # (V_j = a^2 s_j^2 + b^2 rounds monotonically in s_j), found once, not at each call
        self._widest = int(torch.where(w > 0, s, -math.inf).argmax())

    @property
    def dim(self) -> int:
        """The dimension :math:`d` of a point (1 for a 1-D mixture)."""
        return self.means.shape[1]

    def __repr__(self) -> str:
        return f"GaussianMixture(m={len(self.weights)}, dim={self.dim})"

    def mean(self) -> torch.Tensor:
        r""":math:`\mathbb E x = \sum_j w_j\mu_j` (a 0-d tensor for a 1-D mixture)."""
        m = self.weights @ self.means
        return m[0] if self.scalar else m

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws, shape ``(n,)`` for a 1-D mixture and ``(n, d)`` otherwise (float64)."""
        check_int(n, "n", low=0)
        dev = self.means.device
        j = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.long, device=dev)
        z = torch.randn(n, self.dim, generator=generator, device=dev, dtype=torch.float64)
        x = self.means[j] + self.stds[j, None] * z
        return x[:, 0] if self.scalar else x

    def _points(self, x, name: str = "x") -> tuple[torch.Tensor, torch.dtype, torch.device]:
        x = as_float_tensor(x, name, min_ndim=0, allow_empty=True)
        check_finite(x, name)
        if not self.scalar and (x.ndim == 0 or x.shape[-1] != self.dim):
            raise ValueError(f"{name} must have last dimension {self.dim}, got shape "
                             f"{tuple(x.shape)}")
        pts = x.to(self.means.device, torch.float64)
        return (pts[..., None] if self.scalar else pts), x.dtype, x.device

    def _out(self, y: torch.Tensor, dtype, device) -> torch.Tensor:
        return (y[..., 0] if self.scalar else y).to(device, dtype)

    def _components(self, x: torch.Tensor, a: float, b: float):
        r"""Per-component log-joints of the noisy mixture at points x (…, d), relative to one
        reference component, with the residuals :math:`r_j=x-a\mu_j` and variances
        :math:`V_j=a^2s_j^2+b^2`.

        Returns ``(rel, ref, resid, var)`` with :math:`\ell_j=\text{rel}_j+\text{ref}`, where
        :math:`\ell_j=\log w_j-\tfrac d2\log(2\pi V_j)-\tfrac12 D_j`,
        :math:`D_j=|r_j|^2/V_j`. The reference :math:`k` is the widest component of positive
        weight, and the differences are formed without :math:`|x|^2`:

        .. math:: D_j-D_k=\frac{a(\mu_k-\mu_j)\cdot(r_j+r_k)}{V_j}
                  +|r_k|^2\Big(\frac1{V_j}-\frac1{V_k}\Big),

        the second term :math:`\ge0`. So :math:`\text{rel}_k=0` even where :math:`|x|^2`
        overflows (there ``ref`` is :math:`-\infty`, the rounded log-density), and the
        responsibilities stay defined: one-hot or mixed, as the finite differences say.
        """
        var = a * a * self.stds**2 + b * b  # V_j
        resid = x[..., None, :] - a * self.means  # (…, m, d)
        k = self._widest
        rk = resid[..., k, :]
        cross = ((a * (self.means[k] - self.means)) * (resid + rk[..., None, :])).sum(-1) / var
        wider = ((rk[..., None, :] * (1 / var - 1 / var[k]).sqrt()[:, None]) ** 2).sum(-1)
        d = self.dim
        rel = ((self.weights.log() - self.weights[k].log())
               - 0.5 * d * torch.log(var / var[k]) - 0.5 * (cross + wider))
        ref = (self.weights[k].log() - 0.5 * d * torch.log(2 * math.pi * var[k])
               - 0.5 * (rk**2).sum(-1) / var[k])
        return rel, ref, resid, var

    def log_prob(self, x, a: float = 1.0, b: float = 0.0) -> torch.Tensor:
        r"""Log-density of :math:`x_t = a x_{\text{data}} + b z` at ``x``; the default
        ``a=1, b=0`` is the data's own density; :math:`-\infty` where it is below the most
        negative double, as far out as :math:`|x|^2` overflows."""
        a, b = _coeffs(a, b)
        pts, dtype, device = self._points(x)
        rel, ref, _, _ = self._components(pts, a, b)
        return (torch.logsumexp(rel, dim=-1) + ref).to(device, dtype)

    def posterior(self, x, a: float, b: float) -> Posterior:
        r"""Responsibilities and posterior means of data and noise given
        :math:`x_t = a\,x_{\text{data}} + b\,z = x`; they satisfy
        :math:`a\,\mathbb E[x_{\text{data}}\mid x] + b\,\mathbb E[z\mid x] = x`."""
        a, b = _coeffs(a, b)
        pts, dtype, device = self._points(x)
        rel, _, resid, var = self._components(pts, a, b)
        r = torch.softmax(rel, dim=-1)  # (…, m)
        data = ((self.means + (a * self.stds**2 / var)[:, None] * resid) * r[..., None]).sum(-2)
        noise = (((b / var)[:, None] * resid) * r[..., None]).sum(-2)
        return Posterior(r.to(device, dtype), self._out(data, dtype, device),
                         self._out(noise, dtype, device))


def _coeffs(a, b) -> tuple[float, float]:
    a, b = check_real(a, "a"), check_real(b, "b")
    if a == 0 and b == 0:
        raise ValueError("a and b must not both be 0 (x_t would carry no information)")
    return a, b


def path_coefficients(t: float, data_at: int = 1) -> tuple[float, float]:
    r"""``(a, b)`` with :math:`x_t = a\,x_{\text{data}} + b\,z` on the linear path:
    :math:`(t, 1-t)` for ``data_at=1`` and :math:`(1-t, t)` for ``data_at=0``; ``t`` in [0, 1]."""
    t = check_real(t, "t", low=0.0, high=1.0)
    check_choice(data_at, "data_at", (0, 1))
    return (t, 1.0 - t) if data_at == 1 else (1.0 - t, t)


def linear_path_velocity(gmm: GaussianMixture, x, t: float, data_at: int = 1) -> torch.Tensor:
    r"""The ideal velocity :math:`v^*(x,t)=\mathbb E[x_1-x_0\mid x_t=x]` of the linear path
    :math:`x_t=(1-t)x_0+t\,x_1`, for Gaussian-mixture data and standard normal noise.

    ``data_at=1``: :math:`x_1` is data, :math:`v^*=\mathbb E[x_{\text{data}}-z\mid x_t]`.
    ``data_at=0``: :math:`x_0` is data, :math:`v^*=\mathbb E[z-x_{\text{data}}\mid x_t]`.
    Shape follows ``x``.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    a, b = path_coefficients(t, data_at)
    post = gmm.posterior(x, a, b)
    diff = post.data_mean - post.noise_mean
    return diff if data_at == 1 else -diff


def euler(v: Callable, x, ts: Sequence[float]) -> torch.Tensor:
    r"""Euler's method :math:`x \leftarrow x + (t_{i+1}-t_i)\,v(x, t_i)` over the times ``ts``
    (increasing or decreasing, at least two); ``v(x, t)`` returns a tensor shaped like ``x``."""
    check_callable(v, "v")
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    check_finite(x, "x")
    ts = [check_real(t, "ts") for t in ts]
    if len(ts) < 2:
        raise ValueError(f"ts must hold at least two times, got {len(ts)}")
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        x = x + (t1 - t0) * v(x, t0)
    return x


def flow_map(v: Callable, x, t0: float, t1: float, *, rtol: float = 1e-10,
             atol: float = 1e-10) -> torch.Tensor:
    r"""The flow map :math:`\Phi_{t_0\to t_1}(x)` of :math:`\dot x = v(x, t)`, by scipy's
    DOP853 on all points at once (float64). ``v(x, t)`` takes and returns tensors shaped like
    ``x``. The result has ``x``'s shape, dtype and device; ``t1 == t0`` returns a copy."""
    from scipy.integrate import solve_ivp

    check_callable(v, "v")
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    check_finite(x, "x")
    t0, t1 = check_real(t0, "t0"), check_real(t1, "t1")
    rtol, atol = check_real(rtol, "rtol", positive=True), check_real(atol, "atol", positive=True)
    if t0 == t1 or x.numel() == 0:
        return x.clone()
    shape, dtype, device = x.shape, x.dtype, x.device
    x64 = x.detach().to(torch.float64)

    def rhs(t, y):
        pt = torch.from_numpy(y).to(device).reshape(shape)
        out = check_returned(v(pt, float(t)), "v(x, t)", shape)
        out = out.detach().to("cpu", torch.float64).reshape(-1)
        if not torch.isfinite(out).all():
            raise ValueError(f"v(x, t) returned a non-finite velocity at t = {float(t):.6g}")
        return out.numpy()

    sol = solve_ivp(rhs, (t0, t1), x64.cpu().reshape(-1).numpy(), method="DOP853",
                    rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"flow_map: the ODE solver failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device, dtype)


def w1_1d(x, y) -> float:
    r"""The 1-Wasserstein distance :math:`\int|F_x-F_y|` between two empirical laws on the
    line (scipy's ``wasserstein_distance``); ``x`` and ``y`` are 1-D samples."""
    from scipy.stats import wasserstein_distance

    xs = []
    for s, name in ((x, "x"), (y, "y")):
        s = as_float_tensor(s, name)
        check_finite(s, name)
        if s.ndim != 1:
            raise ValueError(f"{name} must be a 1-D sample, got shape {tuple(s.shape)}")
        xs.append(s.detach().to("cpu", torch.float64).numpy())
    return float(wasserstein_distance(xs[0], xs[1]))


# --- Shortcut models (chapter 28) ---

def average_velocity(v: Callable, x, t: float, d: float, *, rtol: float = 1e-10,
                     atol: float = 1e-10) -> torch.Tensor:
    r"""The exact average velocity of the flow of :math:`\dot x=v(x,t)` over :math:`[t, t+d]`,

    .. math:: u^*(x,t,d)=\frac{\Phi_{t\to t+d}(x)-x}{d}
              =\frac1d\int_t^{t+d}v\big(\Phi_{t\to\tau}(x),\tau\big)\,d\tau ,

    the target a shortcut model :math:`s(x,t,d)` learns: one step :math:`x+d\,u^*` lands
    exactly on the ODE path. ``d`` must be non-zero; the flow map is :func:`flow_map` (DOP853
    with ``rtol``/``atol``). Shape, dtype and device follow ``x``; like :func:`flow_map`'s, the
    result carries no gradient.

    Chapter: *Shortcut models: the step size as a conditional input*.
    """
    check_callable(v, "v")
    t = check_real(t, "t")
    d = check_real(d, "d")
    if d == 0:
        raise ValueError("d must be non-zero (at d = 0 the average velocity is v itself)")
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True).detach()
    return (flow_map(v, x, t, t + d, rtol=rtol, atol=atol) - x) / d


def shortcut_ideal(v: Callable, x, t: float, k: int, K: int) -> torch.Tensor:
    r"""The ideal dyadic shortcut velocity :math:`s_k(x,t)` for the step :math:`d_k=2^{-k}`,
    anchored at the finest level by :math:`s_K=v` and defined by self-consistency,

    .. math:: s_k(x,t)=\tfrac12\Big[s_{k+1}(x,t)+s_{k+1}\big(x+d_{k+1}s_{k+1}(x,t),\,
              t+d_{k+1}\big)\Big],\qquad 0\le k<K .

    Then :math:`x+d_k\,s_k(x,t)` is exactly :math:`2^{K-k}` Euler steps of size :math:`2^{-K}`
    on ``v`` from :math:`(x,t)`, at the cost of :math:`2^{K-k}` calls of ``v(x, t)``.
    ``x`` of any shape accepted by ``v``; the result is shaped like ``x``.

    Chapter: *Shortcut models: the step size as a conditional input*.
    """
    check_callable(v, "v")
    K = check_int(K, "K", low=0, high=30)
    k = check_int(k, "k", low=0, high=K)
    t = check_real(t, "t")
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    check_finite(x, "x")

    def s(y, tau, level):
        if level == K:
            return v(y, tau)
        h = 2.0 ** -(level + 1)
        first = s(y, tau, level + 1)
        return 0.5 * (first + s(y + h * first, tau + h, level + 1))

    return s(x, t, k)


def _time_features(t: torch.Tensor, n_freq: int) -> torch.Tensor:
    j = torch.arange(1, n_freq + 1, dtype=t.dtype, device=t.device)
    ang = math.pi * t[:, None] * j
    return torch.cat([t[:, None], torch.sin(ang), torch.cos(ang)], dim=-1)


class ShortcutMLP(torch.nn.Module):
    r"""A tiny shortcut model :math:`s_\theta(x,t,d_k)` for :math:`d_k=2^{-k}`,
    :math:`k=0,\dots,n_{\text{levels}}-1`:

    .. math:: h=W_x x+W_t\,\phi(t)+e_k,\qquad s_\theta=W_3\,\sigma(W_2\,\sigma(h)),

    with :math:`\phi(t)=(t,\sin\pi jt,\cos\pi jt)_{j\le4}`, :math:`\sigma` = SiLU, and a
    learned embedding row :math:`e_k` per step size, added to the time embedding (as in
    the shortcut-model paper). With ``zero_level=True`` one more row, index ``n_levels``,
    stands for :math:`d=0` (the literal reading of the post's flow-matching term).

    ``forward(x, t, k)``: ``x`` of shape ``(n, dim)``, or ``(n,)`` when ``dim == 1``; ``t`` a
    float or a tensor of shape ``(n,)``; ``k`` an int or a long tensor of shape ``(n,)`` (a float
    or a floating tensor, e.g. the step size :math:`d` itself, raises ``TypeError``).
    Returns a velocity shaped like ``x``, in the net's dtype.

    Chapter: *Shortcut models: the step size as a conditional input*.
    """

    N_FREQ = 4

    def __init__(self, dim: int = 1, hidden: int = 64, n_levels: int = 8, *,
                 zero_level: bool = False):
        super().__init__()
        nn = torch.nn
        self.dim = check_int(dim, "dim", low=1)
        hidden = check_int(hidden, "hidden", low=1)
        self.n_levels = check_int(n_levels, "n_levels", low=1, high=30)
        self.zero_level = bool(zero_level)
        self.x_in = nn.Linear(self.dim, hidden)
        self.t_in = nn.Linear(2 * self.N_FREQ + 1, hidden)
        self.d_embed = nn.Embedding(self.n_levels + self.zero_level, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, self.dim))

    def forward(self, x, t, k):
        """The velocity :math:`s_\theta(x,t,d_k)` (shapes in the class docstring)."""
        flat = x.ndim == 1 and self.dim == 1
        xx = x[:, None] if flat else x
        if xx.ndim != 2 or xx.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim})"
                             + (" or (n,)" if self.dim == 1 else "") + f", got {tuple(x.shape)}")
        n, p = xx.shape[0], self.x_in.weight
        xx = xx.to(p.dtype)
        tt = torch.as_tensor(t, dtype=p.dtype, device=p.device)
        kk = torch.as_tensor(k, device=p.device)
        if kk.is_floating_point() or kk.is_complex() or kk.dtype == torch.bool:
            raise TypeError(f"k must be an int or an integer tensor (the level k of d = 2**-k, "
                            f"not the step size d), got {kk.dtype}")
        kk = kk.long()
        if tt.ndim and tt.shape != (n,):
            raise ValueError(f"t must be a number or have shape ({n},), got {tuple(tt.shape)}")
        if kk.ndim and kk.shape != (n,):
            raise ValueError(f"k must be an int or have shape ({n},), got {tuple(kk.shape)}")
        tt, kk = tt.expand(n), kk.expand(n)
        top = self.n_levels + self.zero_level - 1
        if kk.numel() and (int(kk.min()) < 0 or int(kk.max()) > top):
            raise ValueError(f"k must lie in [0, {top}], got values in "
                             f"[{int(kk.min())}, {int(kk.max())}]")
        h = self.x_in(xx) + self.t_in(_time_features(tt, self.N_FREQ)) + self.d_embed(kk)
        out = self.body(h)
        return out[:, 0] if flat else out


def shortcut_loss(net: ShortcutMLP, gmm: GaussianMixture, batch: int,
                  generator: torch.Generator | None = None, *, frac_bootstrap: float = 0.25,
                  anchor: str = "finest") -> torch.Tensor:
    r"""One minibatch of the shortcut-model loss on the path :math:`x_t=(1-t)x_0+t\,x_1`
    (:math:`x_0` noise, :math:`x_1\sim` ``gmm``), with finest level :math:`K=n_{\text{levels}}-1`:

    * a fraction :math:`1-` ``frac_bootstrap`` of the samples regress
      :math:`s_\theta(x_t,t,\cdot)` on :math:`x_1-x_0`, :math:`t\sim U[0,1)`, at level
      :math:`K` (``anchor="finest"``, the official code) or at the extra :math:`d=0` row
      (``anchor="zero"``, the post read literally; needs ``net.zero_level``);
    * the rest draw a half step :math:`\epsilon=2^{-k}`, :math:`k\in\{1,\dots,K\}`, a time
      :math:`t\in\{0,2\epsilon,\dots,1-2\epsilon\}` and regress :math:`s_\theta(x_t,t,2\epsilon)`
      on :math:`\mathrm{sg}\big[\tfrac12\big(s_\theta(x_t,t,\epsilon)+
      s_\theta(x_t+\epsilon s_\theta(x_t,t,\epsilon),t+\epsilon,\epsilon)\big)\big]`.

    Returns the sum of all squared errors divided by ``batch`` (so the split is the weighting).
    Samples come from ``generator`` (on the net's device).

    Chapter: *Shortcut models: the step size as a conditional input*.
    """
    if not isinstance(net, ShortcutMLP):
        raise TypeError(f"net must be a ShortcutMLP, got {type(net).__name__}")
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    batch = check_int(batch, "batch", low=2)
    frac = check_real(frac_bootstrap, "frac_bootstrap", low=0.0, high=1.0)
    check_choice(anchor, "anchor", ("finest", "zero"))
    if anchor == "zero" and not net.zero_level:
        raise ValueError("anchor='zero' needs a net built with zero_level=True")
    if gmm.dim != net.dim:
        raise ValueError(f"gmm.dim={gmm.dim} and net.dim={net.dim} differ")
    K = net.n_levels - 1
    if K == 0:
        frac = 0.0
    p = net.x_in.weight
    n_b = int(round(batch * frac))
    n_f = batch - n_b

    def pairs(n):
        x1 = gmm.sample(n, generator).to(p.device, p.dtype)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        return x0, x1

    def lerp(x0, x1, t):
        tt = t if x0.ndim == 1 else t[:, None]
        return (1 - tt) * x0 + tt * x1

    x0, x1 = pairs(batch)
    t = torch.rand(n_f, generator=generator, device=p.device, dtype=p.dtype)
    xs, ts = [lerp(x0[:n_f], x1[:n_f], t)], [t]
    ks = [torch.full((n_f,), K if anchor == "finest" else net.n_levels, device=p.device)]
    targets = [x1[:n_f] - x0[:n_f]]
    if n_b:
        kh = torch.randint(1, K + 1, (n_b,), generator=generator, device=p.device)
        eps = torch.exp2(-kh.to(p.dtype))
        slots = torch.exp2((kh - 1).to(p.dtype))  # 1/(2 eps) starting times
        j = torch.floor(torch.rand(n_b, generator=generator, device=p.device, dtype=p.dtype)
                        * slots)
        t = j * 2 * eps
        xt = lerp(x0[n_f:], x1[n_f:], t)
        e = eps if xt.ndim == 1 else eps[:, None]
        with torch.no_grad():  # the stop-gradient target
            s1 = net(xt, t, kh)
            s2 = net(xt + e * s1, t + eps, kh)
        xs, ts, ks = xs + [xt], ts + [t], ks + [kh - 1]
        targets.append(0.5 * (s1 + s2))
    pred = net(torch.cat(xs), torch.cat(ts), torch.cat(ks))
    err = ((pred - torch.cat(targets)) ** 2).sum()
    return err / batch


def train_shortcut(gmm: GaussianMixture, *, steps: int = 1500, batch: int = 256,
                   lr: float = 3e-3, frac_bootstrap: float = 0.25, anchor: str = "finest",
                   hidden: int = 64, n_levels: int = 8, seed: int = 0) -> ShortcutMLP:
    r"""Train a :class:`ShortcutMLP` on ``gmm`` with :func:`shortcut_loss` and Adam
    (cosine-decayed ``lr``), on the CPU in float32 with one torch thread (restored on exit);
    deterministic for a given ``seed``, global RNG state untouched. Returns the net in eval
    mode.

    Chapter: *Shortcut models: the step size as a conditional input*.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    steps = check_int(steps, "steps", low=0)
    lr = check_real(lr, "lr", positive=True)
    seed = check_int(seed, "seed", low=0)
    check_choice(anchor, "anchor", ("finest", "zero"))
    cpu = GaussianMixture(gmm.weights.cpu(), gmm.means[:, 0].cpu() if gmm.scalar
                          else gmm.means.cpu(), gmm.stds.cpu())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # seeds the initialisation only
            torch.manual_seed(seed)
            net = ShortcutMLP(cpu.dim, hidden, n_levels, zero_level=anchor == "zero")
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
        for _ in range(steps):
            loss = shortcut_loss(net, cpu, batch, gen, frac_bootstrap=frac_bootstrap,
                                 anchor=anchor)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def shortcut_sample(s: Callable, z, nsteps: int) -> torch.Tensor:
    r"""Few-step sampling with a shortcut model: with :math:`d=1/n` for ``nsteps`` :math:`=n=2^k`,

    .. math:: x_{(i+1)d}=x_{id}+d\,s(x_{id},\,id,\,k),\qquad x_0=z,\quad i=0,\dots,n-1 .

    ``s(x, t, k)`` is a :class:`ShortcutMLP` or any callable with that signature (e.g. the
    ideal recursion ``lambda x, t, k: shortcut_ideal(v, x, t, k, K)``). Returns the points at
    :math:`t=1`, shaped like ``z`` and in its dtype. Runs under ``torch.no_grad()``.

    Chapter: *Shortcut models: the step size as a conditional input*.
    """
    check_callable(s, "s")
    nsteps = check_int(nsteps, "nsteps", low=1)
    if nsteps & (nsteps - 1):
        raise ValueError(f"nsteps must be a power of 2, got {nsteps}")
    z = as_float_tensor(z, "z", min_ndim=0, allow_empty=True)
    check_finite(z, "z")
    if isinstance(s, ShortcutMLP) and not (
            (z.ndim == 2 and z.shape[1] == s.dim) or (z.ndim == 1 and s.dim == 1)):
        raise ValueError(f"z must have shape (n, {s.dim})" + (" or (n,)" if s.dim == 1 else "")
                         + f" for this ShortcutMLP, got {tuple(z.shape)}")
    k = nsteps.bit_length() - 1
    d = 1.0 / nsteps
    x = z
    with torch.no_grad():
        for i in range(nsteps):
            x = x + d * s(x, i * d, k).to(x.dtype)
    return x



# --- Consistency models (chapter 29) ---


@dataclass(frozen=True)
class VelocityPosterior:
    r"""The law of :math:`u = x_1 - x_0` given :math:`x_t = x` on the path
    :math:`x_t=(1-t)x_0+t\,x_1` (data :math:`x_0`, noise :math:`x_1`): a mixture over the data's
    components of Gaussians :math:`\mathcal N(m_j(x), v_j I)`."""

    responsibilities: torch.Tensor  #: :math:`r_j(x)=P(j\mid x_t=x)`, shape ``(*batch, m)``
    means: torch.Tensor  #: :math:`m_j(x)`: ``(*batch, m)`` (1-D) or ``(*batch, m, d)``
    variances: torch.Tensor  #: :math:`v_j`, the per-coordinate variance, shape ``(m,)``

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`\mathbb E[u\mid x_t=x]=\sum_j r_j m_j`, the ideal velocity :math:`v^*(x,t)`."""
        r, m = self.responsibilities, self.means
        return (r * m).sum(-1) if m.ndim == r.ndim else (r[..., None] * m).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        r"""The variance of each coordinate of :math:`u` given :math:`x_t=x`, shaped like
        :attr:`mean`

        .. math:: \operatorname{Var}(u\mid x_t=x)=\sum_j r_j v_j+\sum_j r_j\,(m_j-\bar m)^2,
                  \qquad \bar m=\sum_j r_j m_j ,

        the law of total variance, written with centred means: the equal form
        :math:`\sum_j r_j(v_j+m_j^2)-\bar m^2` cancels catastrophically far out, where
        :math:`m_j\sim x/t` is large (it gave 0 instead of 0.15 at :math:`x=10^8`).
        """
        r, m, v = self.responsibilities, self.means, self.variances
        if m.ndim == r.ndim:
            return (r * (v + (m - self.mean[..., None]) ** 2)).sum(-1)
        return (r[..., None] * (v[:, None] + (m - self.mean[..., None, :]) ** 2)).sum(-2)


def velocity_posterior(gmm: GaussianMixture, x, t: float) -> VelocityPosterior:
    r"""Law of :math:`u=x_1-x_0` given :math:`x_t=x`, for :math:`x_t=(1-t)x_0+t\,x_1`, data
    :math:`x_0` from ``gmm`` and noise :math:`x_1\sim\mathcal N(0,I)` (the ``data_at=0``
    convention). In component :math:`j` (mean :math:`\mu_j`, std :math:`s_j`) the pair
    :math:`(u, x_t)` is jointly Gaussian with

    .. math::

        \mathbb E u=-\mu_j,\quad \operatorname{Var}u=1+s_j^2,\quad
        c_j=\operatorname{Cov}(u,x_t)=t-(1-t)s_j^2,\quad V_j=\operatorname{Var}x_t=(1-t)^2s_j^2+t^2,

    so :math:`m_j(x)=-\mu_j+\frac{c_j}{V_j}(x-(1-t)\mu_j)` and
    :math:`v_j=1+s_j^2-c_j^2/V_j=s_j^2/V_j` (expand, using :math:`(1-t)+t=1`; the second form
    is computed, the first cancels catastrophically for wide components: it gave 0 instead of
    4 for :math:`s_j=10^8`, :math:`t=\tfrac12`). ``t`` in [0, 1]; points shaped as for
    :meth:`GaussianMixture.posterior`; results in the points' dtype and device.

    Chapter: *Consistency models, step by step*.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    a, b = path_coefficients(t, data_at=0)
    pts, dtype, device = gmm._points(x)
    rel, _, resid, var = gmm._components(pts, a, b)  # resid = x - a mu_j, var = V_j
    r = torch.softmax(rel, dim=-1)
    s2 = gmm.stds**2
    c = b - a * s2
    means = -gmm.means + (c / var)[:, None] * resid  # (..., m, d)
    v = s2 / var  # = 1 + s_j^2 - c_j^2 / V_j, without the cancellation
    means = means[..., 0] if gmm.scalar else means
    return VelocityPosterior(r.to(device, dtype), means.to(device, dtype), v.to(device, dtype))


def _check_grid(grid) -> torch.Tensor:
    grid = as_float_tensor(grid, "grid")
    check_finite(grid, "grid")
    if grid.ndim != 1 or grid.numel() < 2 or not (grid[1:] > grid[:-1]).all():
        raise ValueError("grid must be a strictly increasing 1-D tensor with at least 2 points")
    return grid


def interp_table(grid, table, x) -> torch.Tensor:
    r"""Piecewise-linear interpolation of the values ``table`` (…, G) given on the strictly
    increasing ``grid`` (G,), at the points ``x`` (any shape), continued *linearly* by the end
    segments outside the grid (not clamped as ``numpy.interp`` does: a consistency function
    grows like an affine map in the tails). Rows of a ``table`` with leading dimensions are
    evaluated at the same points: the result has shape ``(*table.shape[:-1], *x.shape)``, in
    ``table``'s dtype on ``x``'s device.

    Chapter: *Consistency models, step by step*.
    """
    grid = _check_grid(grid)
    table = as_float_tensor(table, "table")
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    check_finite(x, "x")
    if table.shape[-1] != grid.numel():
        raise ValueError(f"table must have last dimension {grid.numel()} (the grid), got "
                         f"{tuple(table.shape)}")
    xf = x.reshape(-1).to(grid.device, grid.dtype)
    i = torch.searchsorted(grid, xf).clamp(1, grid.numel() - 1)
    lo, hi = grid[i - 1], grid[i]
    lam = (xf - lo) / (hi - lo)
    y0, y1 = table[..., i - 1], table[..., i]
    y = y0 + lam.to(table.dtype) * (y1 - y0)
    return y.reshape(tuple(table.shape[:-1]) + tuple(x.shape)).to(x.device)


def consistency_fixed_point(gmm: GaussianMixture, n: int, grid, *, target: str = "ct",
                            nodes: int = 20) -> torch.Tensor:
    r"""The stage-by-stage minimisers :math:`f_0,\dots,f_n` of the consistency losses on the
    uniform time grid :math:`t_k=k/n`, for a 1-D mixture, tabulated on ``grid``.

    With :math:`f_0=\mathrm{id}`, :math:`\Delta t=1/n` and :math:`u=x_1-x_0`:

    * ``target="ct"`` (consistency training, same-path target):
      :math:`f_k(x)=\mathbb E[f_{k-1}(x-\Delta t\,u)\mid x_{t_k}=x]`, the expectation taken
      over :func:`velocity_posterior` by ``nodes``-point Gauss–Hermite quadrature per component;
    * ``target="cd"`` (distillation with an Euler teacher):
      :math:`f_k(x)=f_{k-1}(x-\Delta t\,v^*(x,t_k))`, i.e. :math:`k` Euler steps from
      :math:`t_k` down to 0.

    :math:`f_{k-1}` between and beyond grid points is read by :func:`interp_table`. Returns
    shape ``(n+1, G)`` (row :math:`k` is :math:`f_k` on the grid), in ``grid``'s dtype and device
    (computed in float64).

    Chapter: *Consistency models, step by step*.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    if not gmm.scalar:
        raise ValueError(f"consistency_fixed_point needs a 1-D mixture, got dim {gmm.dim}")
    n = check_int(n, "n", low=1)
    check_choice(target, "target", ("ct", "cd"))
    nodes = check_int(nodes, "nodes", low=1)
    grid = _check_grid(grid)
    g = grid.to(gmm.means.device, torch.float64)
    xi, w = gauss_hermite(nodes, device=g.device)
    dt = 1.0 / n
    tables = [g]
    for k in range(1, n + 1):
        post = velocity_posterior(gmm, g, k * dt)
        if target == "cd":
            f = interp_table(g, tables[-1], g - dt * post.mean)
        else:  # quadrature points x - dt (m_j + sqrt(v_j) xi_i), shape (G, m, q)
            u = post.means[..., None] + post.variances.sqrt()[:, None] * xi
            vals = interp_table(g, tables[-1], g[:, None, None] - dt * u)
            f = ((vals @ w) * post.responsibilities).sum(-1)
        tables.append(f)
    return torch.stack(tables).to(grid.device, grid.dtype)


def consistency_function_gaussian(mu: float, sigma: float, x, t: float) -> torch.Tensor:
    r"""The exact consistency function :math:`f^*(x,t)=\Phi_{t\to0}(x)` of the linear path
    :math:`x_t=(1-t)x_0+t\,x_1` for Gaussian data :math:`x_0\sim\mathcal N(\mu,\sigma^2)`:

    .. math::

        f^*(x,t)=\mu+\sigma\,\frac{x-(1-t)\mu}{\sqrt{(1-t)^2\sigma^2+t^2}},

    the increasing affine map that sends the law of :math:`x_t` to the data's. Elementwise in
    ``x`` (any shape; dtype and device kept); ``t`` in [0, 1], ``sigma > 0``.

    Chapter: *Consistency models, step by step*.
    """
    mu = check_real(mu, "mu")
    sigma = check_real(sigma, "sigma", positive=True)
    t = check_real(t, "t", low=0.0, high=1.0)
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    check_finite(x, "x")
    return mu + sigma * (x - (1 - t) * mu) / math.hypot((1 - t) * sigma, t)


def consistency_function_1d(gmm: GaussianMixture, x, t: float, *,
                            iters: int = 64) -> torch.Tensor:
    r"""The exact consistency function :math:`f^*(x,t)=\Phi_{t\to0}(x)` of the probability-flow
    ODE of the path :math:`x_t=(1-t)x_0+t\,x_1` for 1-D mixture data, by monotone transport:

    .. math::

        f^*(\cdot,t)=F_0^{-1}\circ F_t ,

    with :math:`F_t` the CDF of :math:`x_t` (a mixture of normal CDFs). In one dimension the
    flow map is increasing and pushes the law of :math:`x_t` to the data's, and the increasing
    map between two laws is unique. :math:`F_0^{-1}` is found by ``iters`` bisection steps on
    the sign of :math:`F_0(y)-F_t(x)=\sum_jw_j[\Phi(u_j)-\Phi(v_j)]`, each term formed in log
    space from the normal tail it lies in, so the tails keep their precision and so does the
    gap between well-separated modes, where both CDFs equal 1/2 to float64 rounding (there the
    map is steep, :math:`\partial_x f^*=p_t/p_0`, but follows the ODE). The result is averaged
    with that of the mirrored problem, so a symmetric mixture gives an odd map and
    :math:`f^*(0,t)=0` exactly. ``x`` any shape (dtype and device kept), with
    :math:`|x|/s_{\min}` up to about :math:`10^{150}` (``ValueError`` beyond: the normal tails
    underflow); ``t`` in [0, 1]. The result carries no gradient (autograd through the
    bisection would differentiate its bracket); the exact derivative is
    :math:`\partial_x f^* = p_t(x)/p_0(f^*(x))`.

    Chapter: *Consistency models, step by step*.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    if not gmm.scalar:
        raise ValueError(f"consistency_function_1d needs a 1-D mixture, got dim {gmm.dim}")
    a, b = path_coefficients(t, data_at=0)
    iters = check_int(iters, "iters", low=1)
    pts, dtype, device = gmm._points(x)
    y = pts[..., 0].detach()
    mu, w = gmm.means[:, 0], gmm.weights

    logw, sd_t = w.log(), torch.sqrt(a * a * gmm.stds**2 + b * b)
    # F_0(y) - F_t(x) = sum_j w_j [Phi(u_j) - Phi(v_j)], u_j = (y - mu_j) / s_j: every term is
    # formed in log space from the tails it lies in and the positive and negative terms are
    # compared as logsumexps, so no 1/2 is ever added or subtracted and the comparison keeps
    # its relative precision even where both CDFs equal 1/2 to float64 rounding

    def log_abs_diff(u, v):  # log|Phi(u) - Phi(v)|, in the lower tail (reflected if needed)
        flip = u + v > 0  # Phi(u) - Phi(v) = Phi(-v) - Phi(-u)
        p, q = torch.where(flip, -v, u), torch.where(flip, -u, v)
        hi = torch.special.log_ndtr(torch.maximum(p, q))
        d = torch.special.log_ndtr(torch.minimum(p, q)) - hi  # <= 0
        log1mexp = torch.where(d > -math.log(2), torch.log(-torch.expm1(d)),
                               torch.log1p(-torch.exp(d)))
        return (hi + log1mexp).nan_to_num(nan=-math.inf)  # both tails 0 (|x| > 1e154)

    # the root lies within the data's components pushed out as far as x lies in its own
    m_abs, s_max = float(mu.abs().max()), float(gmm.stds.max())
    ratio = s_max / float(sd_t.min())
    reach = m_abs + ratio * (float(y.abs().max()) + m_abs) + 10 * s_max + 1.0 if y.numel() else 0
    if reach / float(gmm.stds.min()) > 1e150:
        raise ValueError("x is too large for this mixture: the bisection needs "
                         "|x| / min(stds) below about 1e150 (the normal tails underflow)")

    def bisect(mu, y):
        v = (y[..., None] - a * mu) / sd_t  # x standardised in each component of x_t
        width = 2 * (m_abs + ratio * (y.abs() + m_abs) + 10 * s_max + 1.0)
        lo = -0.5 * width
        for _ in range(iters):
            width = 0.5 * width
            mid = lo + width
            u = (mid[..., None] - mu) / gmm.stds
            terms = logw + log_abs_diff(u, v)
            above = torch.logsumexp(terms.masked_fill(u <= v, -math.inf), dim=-1)
            below = torch.logsumexp(terms.masked_fill(u >= v, -math.inf), dim=-1)
            # F_0(mid) < F_t(x): the root is right of mid
            lo = torch.where(above < below, mid, lo)
        return lo + 0.5 * width

    # averaged with the mirrored problem (-x for the mirrored mixture), so a symmetric mixture
    # gives an odd map, f*(0, t) = 0 included, even where the map is steeper than rounding
    return (0.5 * (bisect(mu, y) - bisect(-mu, -y))).to(device, dtype)


def multistep_consistency_sample(f: Callable, x1, ts: Sequence[float],
                                 generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Multistep consistency sampling: :math:`x\leftarrow f(x_1, t_0)`, then for each later
    time :math:`t` of ``ts``: draw :math:`z\sim\mathcal N(0,I)`, re-noise
    :math:`x_t=(1-t)\,x+t\,z` and denoise :math:`x\leftarrow f(x_t,t)`.

    ``f(x, t)`` returns a tensor shaped like ``x``; ``x1`` is the starting noise; ``ts`` is
    strictly decreasing in (0, 1] (usually starting at 1). The noise is drawn with
    ``generator`` on ``x1``'s device. Returns the final sample, shaped like ``x1``.

    Chapter: *Consistency models, step by step*.
    """
    check_callable(f, "f")
    x1 = as_float_tensor(x1, "x1", min_ndim=0, allow_empty=True)
    check_finite(x1, "x1")
    if generator is not None:
        check_generator(generator, x1.device, of="x1")
    if isinstance(ts, (str, bytes)) or not isinstance(ts, Sequence):
        raise TypeError(f"ts must be a sequence of times, got {type(ts).__name__}")
    ts = [check_real(t, "ts", low=0.0, high=1.0) for t in ts]
    if not ts:
        raise ValueError("ts must hold at least one time")
    if ts[-1] <= 0 or any(b >= a for a, b in zip(ts[:-1], ts[1:], strict=False)):
        raise ValueError(f"ts must be strictly decreasing and > 0, got {ts}")
    x = check_returned(f(x1, ts[0]), "f(x, t)", x1.shape)
    for t in ts[1:]:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = check_returned(f((1 - t) * x + t * z, t), "f(x, t)", x.shape)
    return x


# --- Denoising diffusion codebooks (chapter 30) ---


@dataclass(frozen=True)
class VPSchedule:
    r"""A DDPM (variance-preserving) noise schedule in Su's notation, four tensors of shape
    ``(T+1,)`` indexed by the step :math:`t=0,\dots,T`:

    .. math::

        x_t=\alpha_t x_{t-1}+\beta_t\varepsilon_t,\quad \alpha_t^2+\beta_t^2=1,\qquad
        x_t=\bar\alpha_t x_0+\bar\beta_t\varepsilon,\quad \bar\alpha_t=\prod_{i\le t}\alpha_i,
        \quad \bar\alpha_t^2+\bar\beta_t^2=1,

    with :math:`\alpha_0=\bar\alpha_0=1` and :math:`\beta_0=\bar\beta_0=0`. Build one with
    :func:`vp_schedule`.
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    abar: torch.Tensor
    bbar: torch.Tensor

    @property
    def T(self) -> int:
        """The number of steps."""
        return self.alpha.numel() - 1


def vp_schedule(T: int, kind: str = "cosine", *, device=None) -> VPSchedule:
    r"""A :class:`VPSchedule` with ``T`` steps (float64 on ``device``).

    * ``kind="cosine"``: :math:`\bar\alpha_t=\cos\frac{\pi t}{2T}`,
      :math:`\bar\beta_t=\sin\frac{\pi t}{2T}` (so :math:`\bar\alpha_T\approx 6\cdot10^{-17}`);
      :math:`\beta_t^2=(\bar\alpha_{t-1}^2-\bar\alpha_t^2)/\bar\alpha_{t-1}^2` is computed as
      :math:`\sin(\theta_t+\theta_{t-1})\sin(\theta_t-\theta_{t-1})/\cos^2\theta_{t-1}` to keep
      its relative accuracy at small :math:`t`, and :math:`\alpha_t=\bar\alpha_t/\bar\alpha_{t-1}`
      (not :math:`\sqrt{1-\beta_t^2}`, which cancels near :math:`t=T`).
    * ``kind="linear"``: the variances :math:`\beta_t^2` of Ho et al. (from
      :math:`10^{-4}` to :math:`0.02` for :math:`T=1000`), scaled by :math:`1000/T` so that
      other ``T`` reach a similar endpoint; needs ``T >= 21``.

    Chapter: *Discrete codes from DDPM*.
    """
    T = check_int(T, "T", low=1)
    check_choice(kind, "kind", ("cosine", "linear"))
    f64 = dict(dtype=torch.float64, device=device)
    t = torch.arange(T + 1, **f64)
    if kind == "cosine":
        th = 0.5 * math.pi * t / T
        abar, bbar = torch.cos(th), torch.sin(th)
        beta2 = (torch.sin(th[1:] + th[:-1]) * torch.sin(th[1:] - th[:-1])
                 / torch.cos(th[:-1])**2).clamp(max=1.0)
        alpha = abar[1:] / abar[:-1]  # not sqrt(1 - beta^2), which cancels near t = T
    else:
        if T < 21:
            raise ValueError(f"T must be >= 21 for kind='linear' (beta_T^2 < 1), got {T}")
        beta2 = torch.linspace(1e-4, 0.02, T, **f64) * (1000.0 / T)
        log_abar2 = torch.cat([torch.zeros(1, **f64), torch.cumsum(torch.log1p(-beta2), 0)])
        abar, bbar = torch.exp(0.5 * log_abar2), torch.sqrt(-torch.expm1(log_abar2))
        alpha = torch.sqrt(1.0 - beta2)
    beta = torch.cat([torch.zeros(1, **f64), beta2.sqrt()])
    alpha = torch.cat([torch.ones(1, **f64), alpha])
    return VPSchedule(alpha, beta, abar, bbar)


def _check_schedule(sched) -> VPSchedule:
    if not isinstance(sched, VPSchedule):
        raise TypeError(f"sched must be a VPSchedule, got {type(sched).__name__}")
    return sched


def ddpm_posterior_coefficients(sched: VPSchedule) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
    r"""The coefficients of the DDPM posterior
    :math:`p(x_{t-1}\mid x_t,x_0)=\mathcal N(a_tx_t+b_tx_0,\sigma_t^2I)`:

    .. math::

        a_t=\frac{\alpha_t\bar\beta_{t-1}^2}{\bar\beta_t^2},\qquad
        b_t=\frac{\bar\alpha_{t-1}\beta_t^2}{\bar\beta_t^2},\qquad
        \sigma_t=\frac{\bar\beta_{t-1}\beta_t}{\bar\beta_t},

    so :math:`a_1=0`, :math:`b_1=1`, :math:`\sigma_1=0`. Returns ``(a, b, sigma)``, each of shape
    ``(T+1,)`` and indexed by :math:`t`; entry 0 has no meaning and is NaN.

    Chapter: *Discrete codes from DDPM*.
    """
    s = _check_schedule(sched)
    nan = torch.full((1,), math.nan, dtype=s.alpha.dtype, device=s.alpha.device)
    bb2, bb2_prev = s.bbar[1:] ** 2, s.bbar[:-1] ** 2
    a = s.alpha[1:] * bb2_prev / bb2
    b = s.abar[:-1] * s.beta[1:] ** 2 / bb2
    sigma = s.bbar[:-1] * s.beta[1:] / s.bbar[1:]
    return tuple(torch.cat([nan, v]) for v in (a, b, sigma))


def gmm_x0_predictor(gmm: GaussianMixture, sched: VPSchedule) -> Callable:
    r"""The exact :math:`x_0`-predictor :math:`\bar\mu(x_t)=\mathbb E[x_0\mid x_t]` of
    Gaussian-mixture data on the schedule, as a callable ``den(x, t)`` (``x`` of shape
    ``(..., d)``, ``t`` an int in 1..T): :meth:`GaussianMixture.posterior` with
    :math:`a=\bar\alpha_t`, :math:`b=\bar\beta_t`.

    Chapter: *Discrete codes from DDPM*.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    s = _check_schedule(sched)
    abar, bbar = s.abar.tolist(), s.bbar.tolist()

    def den(x, t: int) -> torch.Tensor:
        return gmm.posterior(x, abar[t], bbar[t]).data_mean

    return den


def gaussian_x0_predictor(mean, var, sched: VPSchedule) -> Callable:
    r"""The exact (linear) :math:`x_0`-predictor of Gaussian data
    :math:`x_0\sim\mathcal N(m,\operatorname{diag}(v))`:

    .. math::

        \bar\mu(x_t)=\mathbb E[x_0\mid x_t]=m+\frac{\bar\alpha_t v}{\bar\alpha_t^2v+\bar\beta_t^2}
        \odot(x_t-\bar\alpha_t m),

    as a callable ``den(x, t)``; ``mean`` and ``var`` have shape ``(d,)`` (``var > 0``), ``x``
    has shape ``(..., d)``, ``t`` is an int in 1..T. Computed in float64 on ``var``'s device.

    Chapter: *Discrete codes from DDPM*.
    """
    m = as_float_tensor(mean, "mean")
    v = as_float_tensor(var, "var")
    for u, name in ((m, "mean"), (v, "var")):
        check_finite(u, name)
        if u.ndim != 1:
            raise ValueError(f"{name} must be 1-D (d,), got shape {tuple(u.shape)}")
    if m.shape != v.shape:
        raise ValueError(f"mean and var must have the same shape, got {tuple(m.shape)} and "
                         f"{tuple(v.shape)}")
    if not (v > 0).all():
        raise ValueError("var must be > 0")
    s = _check_schedule(sched)
    v = v.to(torch.float64)
    m = m.to(v.device, torch.float64)
    ab, bb = s.abar.to(v.device)[:, None], s.bbar.to(v.device)[:, None]
    gain = ab * v / (ab**2 * v + bb**2)  # (T+1, d)
    shift = m - gain * ab * m

    def den(x, t: int) -> torch.Tensor:
        return shift[t] + gain[t] * x

    return den


def make_codebooks(T: int, K: int, d: int, generator: torch.Generator | None = None, *,
                   shared: bool = False, device=None) -> torch.Tensor:
    r"""DDCM codebooks of :math:`K` standard normal vectors in :math:`\mathbb R^d`, shape
    ``(T+1, K, d)`` (float64): row 0 is the codebook for the start :math:`x_T`, row :math:`t`
    (1..T) the codebook :math:`\mathcal C_t` for the noise of step :math:`t\to t-1`.
    ``shared=True`` draws one codebook and uses it for every row (an expanded view).
    Drawn with ``generator`` on ``device`` (default: the generator's device).

    Chapter: *Discrete codes from DDPM*.
    """
    T, K, d = check_int(T, "T", low=1), check_int(K, "K", low=1), check_int(d, "d", low=1)
    if device is None and generator is not None:
        device = generator.device
    rows = 1 if shared else T + 1
    C = torch.randn(rows, K, d, generator=generator, device=device, dtype=torch.float64)
    return C.expand(T + 1, K, d) if shared else C


def _check_codebooks(C, sched: VPSchedule) -> torch.Tensor:
    C = as_float_tensor(C, "codebooks")
    if C.ndim != 3 or C.shape[0] != sched.T + 1:
        raise ValueError(f"codebooks must have shape (T+1, K, d) = ({sched.T + 1}, K, d), got "
                         f"{tuple(C.shape)}")
    return check_finite(C, "codebooks")


def _ddpm_update(den, coeffs, x, t: int, eps) -> torch.Tensor:
    """x_{t-1} = a_t x_t + b_t den(x_t, t) + sigma_t eps: the one update every sampler uses."""
    a, b, sigma = coeffs
    return a[t] * x + b[t] * den(x, t) + sigma[t] * eps


def ddpm_sample(den: Callable, sched: VPSchedule, x_T,
                generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Ancestral DDPM sampling from ``x_T`` (shape ``(n, d)``):
    :math:`x_{t-1}=a_tx_t+b_t\bar\mu(x_t)+\sigma_t\varepsilon_t` for :math:`t=T,\dots,1`, with
    :math:`\varepsilon_t\sim\mathcal N(0,I)` drawn by ``generator``; ``den(x, t)`` is the
    :math:`x_0`-predictor :math:`\bar\mu`. Returns :math:`x_0`, shaped like ``x_T``.

    Chapter: *Discrete codes from DDPM*.
    """
    check_callable(den, "den")
    s = _check_schedule(sched)
    x = as_float_tensor(x_T, "x_T")
    check_finite(x, "x_T")
    if generator is not None:
        check_generator(generator, x.device, of="x_T")
    coeffs = ddpm_posterior_coefficients(s)
    for t in range(s.T, 0, -1):
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = _ddpm_update(den, coeffs, x, t, eps)
    return x


def ddcm_generate(den: Callable, sched: VPSchedule, codebooks, idx) -> torch.Tensor:
    r"""DDCM decoding/generation: the DDPM recursion with every Gaussian draw replaced by a
    codeword, :math:`x_T=\mathcal C_0[i_0]` and
    :math:`x_{t-1}=a_tx_t+b_t\bar\mu(x_t)+\sigma_t\,\mathcal C_t[i_t]` for
    :math:`t=T,\dots,1` (column 1 has no effect since :math:`\sigma_1=0`).

    ``codebooks`` ``(T+1, K, d)`` from :func:`make_codebooks`; ``idx`` integer ``(n, T+1)``
    with entries in ``[0, K)``, column :math:`t` for codebook row :math:`t`. Returns
    :math:`x_0`, shape ``(n, d)``. It repeats :func:`ddcm_encode`'s arithmetic operation by
    operation, so decoding an encoder's indices reproduces its output bit for bit (same
    device, same ``den``).

    Chapter: *Discrete codes from DDPM*.
    """
    check_callable(den, "den")
    s = _check_schedule(sched)
    C = _check_codebooks(codebooks, s)
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int32, torch.int64):
        raise TypeError("idx must be an integer torch.Tensor")
    if idx.ndim != 2 or idx.shape[1] != s.T + 1:
        raise ValueError(f"idx must have shape (n, T+1) = (n, {s.T + 1}), got {tuple(idx.shape)}")
    if idx.numel() and (idx.min() < 0 or idx.max() >= C.shape[1]):
        raise ValueError(f"idx entries must lie in [0, K) = [0, {C.shape[1]})")
    idx = idx.to(C.device, torch.int64)
    coeffs = ddpm_posterior_coefficients(s)
    x = C[0][idx[:, 0]]
    for t in range(s.T, 0, -1):
        x = _ddpm_update(den, coeffs, x, t, C[t][idx[:, t]])
    return x


_RULES = ("is", "post")


def selection_logits(codebook, c, rule: str = "is") -> torch.Tensor:
    r"""Scores of the codewords :math:`\varepsilon_k` (rows of ``codebook``, ``(K, d)``, or a
    batch of codebooks ``(B, K, d)`` paired with ``c`` of shape ``(B, d)``) for the target shift
    :math:`c` (``(..., d)``); returns ``(..., K)``:

    * ``rule="is"``: :math:`\varepsilon_k\cdot c`, the log importance weight
      :math:`\log\frac{\mathcal N(\varepsilon_k;c,I)}{\mathcal N(\varepsilon_k;0,I)}` up to a
      constant (the corrected rule, whose argmax is DDCM's inner-product rule);
    * ``rule="post"``: :math:`\varepsilon_k\cdot c-\frac12\lVert\varepsilon_k\rVert^2`,
      i.e. :math:`-\frac12\lVert\varepsilon_k-c\rVert^2` up to a constant (the post's
      weights, whose argmax is the nearest-codeword rule).

    Chapter: *Discrete codes from DDPM*.
    """
    C = as_float_tensor(codebook, "codebook")
    c = as_float_tensor(c, "c")
    check_finite(C, "codebook")
    check_finite(c, "c")
    if C.ndim not in (2, 3) or C.shape[-1] != c.shape[-1]:
        raise ValueError(f"codebook must have shape (K, d) or (B, K, d) with d = c.shape[-1] = "
                         f"{c.shape[-1]}, got {tuple(C.shape)}")
    if C.ndim == 3 and c.shape != (C.shape[0], C.shape[2]):
        raise ValueError(f"a batch of codebooks {tuple(C.shape)} needs c of shape "
                         f"({C.shape[0]}, {C.shape[2]}), got {tuple(c.shape)}")
    check_choice(rule, "rule", _RULES)
    C, c = promote(C, c)
    logits = c @ C.mT if C.ndim == 2 else (C @ c[:, :, None])[:, :, 0]
    return logits if rule == "is" else logits - 0.5 * (C**2).sum(-1)


def selection_weights(codebook, c, rule: str = "is", temperature: float = 1.0) -> torch.Tensor:
    r"""Selection probabilities :math:`p_k\propto\exp(\ell_k/\tau)` over the codewords, with
    the scores :math:`\ell_k` of :func:`selection_logits` and temperature :math:`\tau`
    (``(..., K)``, rows summing to 1). ``temperature=0`` gives the one-hot limit at the first
    maximal score. With ``rule="is"`` and :math:`\tau=1` these are the self-normalised
    importance weights that turn draws from :math:`\mathcal N(0,I)` into draws from
    :math:`\mathcal N(c,I)` as :math:`K\to\infty`; with ``rule="post"`` the limit law is
    :math:`\mathcal N(c/2,I/2)`. A tiny positive :math:`\tau` approaches the one-hot limit
    (ties share the weight) without overflow; float16/bfloat16 scores are weighted in float32.

    Chapter: *Discrete codes from DDPM*.
    """
    tau = check_real(temperature, "temperature", nonnegative=True)
    logits = selection_logits(codebook, c, rule)
    if tau == 0:
        k = logits.argmax(-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, k, 1.0)
    z = upcast_half(logits)  # float16 overflows at 65504
    # shifted first, so a tiny tau sends the others to -inf, never the maximum to +inf
    return torch.softmax((z - z.amax(-1, keepdim=True)) / tau, dim=-1).to(logits.dtype)


def ddcm_encode(den: Callable, sched: VPSchedule, codebooks, x0, rule: str = "is",
                temperature: float = 0.0, *, start: int = 0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""DDCM encoding of the targets ``x0`` ``(n, d)``: start from the fixed
    :math:`x_T=\mathcal C_0[\text{start}]` and for :math:`t=T,\dots,2` choose the codeword of
    :math:`\mathcal C_t` by the scores (:func:`selection_logits`) for

    .. math::

        c_t=\frac{b_t}{\sigma_t}\big(x_0-\bar\mu(x_t)\big),

    then step :math:`x_{t-1}=a_tx_t+b_t\bar\mu(x_t)+\sigma_t\varepsilon_t`; the last step
    :math:`x_0=\bar\mu(x_1)` needs no codeword. ``temperature=0`` takes the best score
    (``rule="is"``: the paper's :math:`\arg\max_k\varepsilon_k\cdot(x_0-\bar\mu)`;
    ``rule="post"``: the nearest codeword :math:`\arg\min_k\lVert b_t(x_0-\bar\mu)-
    \sigma_t\varepsilon_k\rVert`); ``temperature > 0`` samples from :func:`selection_weights`
    with ``generator``.

    Returns ``(idx, x0_hat)``: indices ``(n, T+1)`` (column 0 is ``start``, column 1 is 0 and
    unused) and the reconstruction ``(n, d)``, which :func:`ddcm_generate` reproduces exactly
    from ``idx``. The code carries :math:`(T-1)\log_2K` bits.

    Chapter: *Discrete codes from DDPM*.
    """
    check_callable(den, "den")
    s = _check_schedule(sched)
    C = _check_codebooks(codebooks, s)
    K, d = C.shape[1], C.shape[2]
    x0 = as_float_tensor(x0, "x0")
    check_finite(x0, "x0")
    if x0.ndim != 2 or x0.shape[1] != d:
        raise ValueError(f"x0 must have shape (n, {d}), got {tuple(x0.shape)}")
    check_choice(rule, "rule", _RULES)
    tau = check_real(temperature, "temperature", nonnegative=True)
    start = check_int(start, "start", low=0, high=K - 1)
    if generator is not None:
        check_generator(generator, C.device, of="the codebooks")
    x0 = x0.to(C.device, C.dtype)
    n = x0.shape[0]
    coeffs = ddpm_posterior_coefficients(s)
    a, b, sigma = coeffs
    idx = torch.zeros(n, s.T + 1, dtype=torch.int64, device=C.device)
    idx[:, 0] = start
    x = C[0][idx[:, 0]]
    for t in range(s.T, 0, -1):
        if t > 1:
            c = (b[t] / sigma[t]) * (x0 - den(x, t))
            if tau == 0:
                k = selection_logits(C[t], c, rule).argmax(-1)
            else:
                w = selection_weights(C[t], c, rule, tau)
                k = torch.multinomial(w, 1, generator=generator)[:, 0]
            idx[:, t] = k
        x = _ddpm_update(den, coeffs, x, t, C[t][idx[:, t]])
    return idx, x


def energy_distance(x, y) -> float:
    r"""The energy distance between two samples, ``x`` ``(n, d)`` and ``y`` ``(m, d)`` (or 1-D
    samples ``(n,)``, ``(m,)``):

    .. math::

        D(X,Y)=\big(2\,\mathbb E\lVert X-Y\rVert-\mathbb E\lVert X-X'\rVert
        -\mathbb E\lVert Y-Y'\rVert\big)^{1/2},

    with every expectation the average over all pairs (the V-statistic, as
    ``scipy.stats.energy_distance`` in 1-D), computed exactly (no Gram-matrix shortcut) in
    float64, after scaling both samples by their largest magnitude (so values near the float64
    limits neither overflow nor underflow). It is 0 for identical samples and a metric between
    laws.

    Chapter: *Discrete codes from DDPM*.
    """
    pts = []
    for s, name in ((x, "x"), (y, "y")):
        s = as_float_tensor(s, name)
        check_finite(s, name)
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2:
            raise ValueError(f"{name} must have shape (n, d) or (n,), got {tuple(s.shape)}")
        pts.append(s.to(torch.float64))
    x, y = pts
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and "
                         f"{y.shape[1]}")
    y = y.to(x.device)
    # D is homogeneous of degree 1/2, D(x, y) = sqrt(s) D(x/s, y/s): scaling by the largest
    # magnitude keeps the squares inside cdist from overflowing (NaN at 1e200) or underflowing
    # (0 at 1e-200)
    scale = float(torch.maximum(x.abs().max(), y.abs().max()))
    if scale == 0.0:
        return 0.0
    x, y = x / scale, y / scale

    def mean_dist(u, v):
        return torch.cdist(u, v, compute_mode="donot_use_mm_for_euclid_dist").mean()

    d2 = 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)
    return math.sqrt(scale) * math.sqrt(max(float(d2), 0.0))


def gaussian_distortion_rate(variances, bits: float) -> float:
    r"""Shannon's distortion-rate function of a Gaussian vector with independent coordinates
    of variances :math:`\lambda_i` (``(d,)``, :math:`\ge 0`), per coordinate, for a code of
    ``bits`` :math:`=R` bits per vector, by reverse water-filling:

    .. math::

        D(R)=\frac1d\sum_i\min(\theta,\lambda_i),\qquad
        R=\sum_i\max\Big(0,\tfrac12\log_2\frac{\lambda_i}{\theta}\Big).

    No code with :math:`R` bits has a smaller mean squared error per coordinate. The water level
    :math:`\theta` is found exactly: with the :math:`m` largest variances active,
    :math:`\log_2\theta=(\sum_{i\le m}\log_2\lambda_i-2R)/m`.

    Chapter: *Discrete codes from DDPM*.
    """
    lam = as_float_tensor(variances, "variances")
    check_finite(lam, "variances")
    if lam.ndim != 1:
        raise ValueError(f"variances must be 1-D, got shape {tuple(lam.shape)}")
    if (lam < 0).any():
        raise ValueError("variances must be >= 0")
    R = check_real(bits, "bits", nonnegative=True)
    lam = lam.detach().to("cpu", torch.float64)
    d = lam.numel()
    pos = torch.sort(lam[lam > 0], descending=True).values
    if pos.numel() == 0 or R == 0:
        return float(lam.sum()) / d
    logl = torch.log2(pos)
    m = torch.arange(1, pos.numel() + 1, dtype=torch.float64)
    log_theta = (torch.cumsum(logl, 0) - 2 * R) / m
    # the active set is the longest prefix whose level stays below its last variance (as in
    # the projection onto a simplex); m = 1 always qualifies since R > 0
    active = torch.nonzero(log_theta < logl)
    k = int(active[-1]) if active.numel() else 0  # R below rounding: m = 1 and theta = lambda_1
    theta = 2.0 ** float(log_theta[k])
    return (theta * (k + 1) + float(pos[k + 1:].sum())) / d


# --- Signal-to-noise ratio and upsample guidance (chapter 31) ---


def _ug_real(x, name: str) -> torch.Tensor:
    """A finite float tensor; Python numbers and lists become float64 (not float32)."""
    if not isinstance(x, torch.Tensor) and not hasattr(x, "dtype"):
        if isinstance(x, bool):
            raise TypeError(f"{name} must be a real number or tensor, got bool")
        try:
            x = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a real number or tensor, got "
                            f"{type(x).__name__}") from exc
    x = as_float_tensor(x, name, min_ndim=0)
    check_finite(x, name)
    return x


def snr(abar, bbar) -> torch.Tensor:
    r"""The signal-to-noise ratio :math:`\operatorname{SNR}=\bar\alpha^2/\bar\beta^2` of
    :math:`x_t=\bar\alpha x_0+\bar\beta\varepsilon` (``abar``, ``bbar`` broadcast; a zero
    ``bbar`` gives ``inf``, a schedule's ``sched.abar, sched.bbar`` gives shape ``(T+1,)``).
    ``abar`` and ``bbar`` both 0 at one entry (:math:`0/0`, no such :math:`x_t`) raise
    ``ValueError``. Signs do not matter: :math:`-\varepsilon` has the law of :math:`\varepsilon`,
    and the ratio is of squares.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    a, b = promote(_ug_real(abar, "abar"), _ug_real(bbar, "bbar"))  # square in the wider dtype
    if ((a == 0) & (b == 0)).any():
        raise ValueError("abar and bbar must not both be 0 (the SNR would be 0/0)")
    return a**2 / b**2


def vp_from_abar(abar) -> VPSchedule:
    r"""The :class:`VPSchedule` with given :math:`\bar\alpha_0=1>\bar\alpha_1>\dots>
    \bar\alpha_T>0` (shape ``(T+1,)``): :math:`\alpha_t=\bar\alpha_t/\bar\alpha_{t-1}`,
    :math:`\beta_t^2=(\bar\alpha_{t-1}-\bar\alpha_t)(\bar\alpha_{t-1}+\bar\alpha_t)/
    \bar\alpha_{t-1}^2`, :math:`\bar\beta_t=\sqrt{1-\bar\alpha_t^2}`. Use it e.g. for a cosine
    schedule clipped below :math:`\pi/2`, :math:`\bar\alpha_t=\cos(0.999\,\frac{\pi t}{2T})`,
    whose :math:`\alpha_T` stays away from 0 so the :math:`\epsilon`-form sampler's
    :math:`1/\alpha_t` stays moderate.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    ab = as_float_tensor(abar, "abar", dtype=torch.float64).to(torch.float64)
    check_finite(ab, "abar")
    if ab.ndim != 1 or ab.numel() < 2 or float(ab[0]) != 1.0:
        raise ValueError("abar must be 1-D of length T+1 >= 2 with abar[0] == 1")
    if not (bool((ab[1:] < ab[:-1]).all()) and float(ab[-1]) > 0):
        raise ValueError("abar must be strictly decreasing and > 0")
    prev = ab[:-1]
    alpha = torch.cat([ab[:1], ab[1:] / prev])
    beta2 = (prev - ab[1:]) * (prev + ab[1:]) / prev**2
    beta = torch.cat([torch.zeros_like(ab[:1]), beta2.sqrt()])
    return VPSchedule(alpha, beta, ab, torch.sqrt((1 - ab) * (1 + ab)))


def snr_matched(abar, bbar, m) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The noise level :math:`\tau` whose SNR is ``m`` times that of :math:`t`, and the
    rescaling :math:`\rho` that makes the pooled input a legitimate noisy input at :math:`\tau`:

    .. math::

        \rho=\sqrt{\bar\alpha_t^2+\bar\beta_t^2/m},\qquad
        \bar\alpha_\tau=\bar\alpha_t/\rho,\qquad \bar\beta_\tau=\bar\beta_t/(\sqrt m\,\rho),

    so :math:`\bar\alpha_\tau^2+\bar\beta_\tau^2=1` and
    :math:`\operatorname{SNR}(\tau)=m\operatorname{SNR}(t)`. ``m`` is the number of pixels
    averaged (:math:`s^2` for 2-D :math:`s\times s` pooling, :math:`s` in 1-D), ``>= 1``.
    ``abar``, ``bbar`` broadcast and must satisfy :math:`\bar\alpha^2+\bar\beta^2=1` (to
    :math:`10^3` ulps of their dtype; ``ValueError`` otherwise); returns
    ``(abar_tau, bbar_tau, rho)``.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    a, b = _ug_real(abar, "abar"), _ug_real(bbar, "bbar")
    tol = 1e3 * max(torch.finfo(a.dtype).eps, torch.finfo(b.dtype).eps)  # the coarser one
    off = float((a**2 + b**2 - 1).abs().max())
    if not off <= tol:
        raise ValueError(f"abar and bbar must satisfy abar**2 + bbar**2 = 1, off by {off:.3g}")
    m = check_real(m, "m", low=1.0)
    rho = torch.sqrt(a**2 + b**2 / m)
    return a / rho, b / (math.sqrt(m) * rho), rho


def tau_cosine(t, m) -> torch.Tensor:
    r"""The SNR-matched time of the continuous cosine schedule
    :math:`\bar\alpha_t=\cos\frac{\pi t}2`, :math:`t\in[0,1]`:
    :math:`\tan\frac{\pi\tau}2=\tan\frac{\pi t}2/\sqrt m`, i.e.
    :math:`\tau=\frac2\pi\arctan\!\big(\tan\frac{\pi t}{2}/\sqrt m\big)` (``tau(1) = 1``).
    ``t`` any shape; ``m >= 1`` pixels pooled. Computed in float64 and rounded to ``t``'s dtype,
    so :math:`\tau` stays in [0, 1] in every dtype (``tau(0) = 0``, ``tau(1) = 1``).

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    t = _ug_real(t, "t")
    if ((t < 0) | (t > 1)).any():
        raise ValueError("t must lie in [0, 1]")
    m = check_real(m, "m", low=1.0)
    t64 = t.to(torch.float64)  # pi/2 rounded to float32 has cos < 0: tau(1) > 1
    # tan(pi t / 2) = num / den with cos(pi t / 2) = sin(pi (1 - t) / 2), so den is exactly 0 at
    # t = 1 (cos(pi/2) is not); the smaller angle of atan2 is taken so both ends come out exact
    num, den = torch.sin(0.5 * math.pi * t64), math.sqrt(m) * torch.sin(0.5 * math.pi * (1 - t64))
    tau = torch.where(num <= den, torch.atan2(num, den) * (2 / math.pi),
                      1 - torch.atan2(den, num) * (2 / math.pi))
    return tau.to(t.dtype)


def _pool_1d(n: int, s: int, dtype, device) -> torch.Tensor:
    return torch.kron(torch.eye(n // s, dtype=dtype, device=device),
                      torch.full((1, s), 1.0 / s, dtype=dtype, device=device))


def avg_pool_matrix(n: int, s: int, dim: int = 2, *, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    r"""The matrix :math:`\mathcal D` of :math:`s^{\text{dim}}` average pooling of an
    ``n**dim`` image flattened row-major (``x.reshape(-1)``): shape
    ``((n//s)**dim, n**dim)``, each row averaging one block of :math:`m=s^{\text{dim}}` pixels.
    ``n`` must be a multiple of ``s``; ``dtype`` floating (an integer one raises ``TypeError``:
    :math:`1/s` would truncate to 0). :math:`\mathcal D\mathcal D^\top=I/m`.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    n, s = check_int(n, "n", low=1), check_int(s, "s", low=1)
    dim = check_int(dim, "dim", low=1, high=3)
    check_float_dtype(dtype)
    if n % s:
        raise ValueError(f"n must be a multiple of s, got n={n}, s={s}")
    P1 = _pool_1d(n, s, dtype, device)
    out = P1
    for _ in range(dim - 1):
        out = torch.kron(out, P1)
    return out


def nearest_upsample_matrix(n: int, s: int, dim: int = 2, *, dtype=torch.float64,
                            device=None) -> torch.Tensor:
    r"""The matrix :math:`\mathcal U` of nearest-neighbour upsampling by ``s`` along each of
    ``dim`` axes, from ``(n//s)**dim`` to ``n**dim`` pixels (row-major), i.e.
    :math:`\mathcal U=m\,\mathcal D^\top` with :math:`m=s^{\text{dim}}`; shape
    ``(n**dim, (n//s)**dim)``. :math:`\mathcal D\mathcal U=I` and :math:`\mathcal U\mathcal D`
    is the orthogonal projector onto block-constant images. ``dtype`` must be floating.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    Dm = avg_pool_matrix(n, s, dim, dtype=dtype, device=device)
    return Dm.T * float(s**dim)


def torus_conv_matrix(kernel) -> torch.Tensor:
    r"""The circulant matrix of a periodic convolution on an ``n1 x n2`` torus:
    :math:`C_{ij}=k\big((i-j)\bmod n\big)`, pixels flattened row-major, so that
    ``C @ x.reshape(-1)`` is :math:`(k\circledast x)`. ``kernel`` of shape ``(n1, n2)``
    (entry ``[a, b]`` is the weight at offset ``(a, b)``); returns ``(n1*n2, n1*n2)``.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    k = as_float_tensor(kernel, "kernel")
    check_finite(k, "kernel")
    if k.ndim != 2:
        raise ValueError(f"kernel must be 2-D (n1, n2), got shape {tuple(k.shape)}")
    n1, n2 = k.shape
    i1 = torch.arange(n1, device=k.device)
    i2 = torch.arange(n2, device=k.device)
    d1 = (i1[:, None] - i1[None, :]) % n1  # (n1, n1)
    d2 = (i2[:, None] - i2[None, :]) % n2
    C = k[d1[:, None, :, None], d2[None, :, None, :]]  # (n1, n2, n1, n2)
    return C.reshape(n1 * n2, n1 * n2)


def torus_covariance(n: int, spectrum: Callable, *, dtype=torch.float64,
                     device=None) -> torch.Tensor:
    r"""The covariance of a stationary Gaussian field on the ``n x n`` torus with power
    spectrum :math:`S(f)`: :math:`\Sigma=F^*\operatorname{diag}(S)F`, i.e. the circulant matrix
    (:func:`torus_conv_matrix`) of the autocovariance :math:`c=\operatorname{IFFT}(S)`.
    ``spectrum(f2)`` maps the squared integer frequency :math:`|f|^2` (tensor ``(n, n)``,
    frequencies folded to ``-n/2..n/2``) to non-negative powers. Returns ``(n*n, n*n)``,
    symmetric positive semidefinite, eigenvalues = the spectrum values. For ``dtype`` float16 or
    bfloat16 it is computed in float32 (``spectrum`` sees float32 ``f2``) and rounded at the end.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    n = check_int(n, "n", low=1)
    check_callable(spectrum, "spectrum")
    check_float_dtype(dtype)
    wd = work_dtype(dtype)  # the FFT has no float16/bfloat16 kernels on the CPU
    f = torch.fft.fftfreq(n, d=1.0 / n, dtype=wd, device=device)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    S = as_float_tensor(spectrum(f2), "spectrum(f2)").to(device=f2.device, dtype=wd)
    check_finite(S, "spectrum(f2)")
    if S.shape != f2.shape or (S < 0).any():
        raise ValueError("spectrum must return non-negative values of shape (n, n)")
    return torus_conv_matrix(torch.fft.ifft2(S).real).to(dtype)


class GaussianEpsPredictor:
    r"""The exact (affine) noise predictor of Gaussian data
    :math:`x_0\sim\mathcal N(\mu,\Sigma)` on :math:`x=\bar\alpha x_0+\bar\beta\varepsilon`:

    .. math::

        \epsilon^*(x)=\mathbb E[\varepsilon\mid x]
        =\bar\beta\,(\bar\alpha^2\Sigma+\bar\beta^2I)^{-1}(x-\bar\alpha\mu)=Mx+b,

    computed through one cached eigendecomposition :math:`\Sigma=Q\Lambda Q^\top`, so each
    noise level costs two matrix products. ``mean`` ``(d,)``, ``cov`` ``(d, d)`` symmetric
    PSD (float64 on ``cov``'s device). Call ``pred(x, abar, bbar)`` with ``x`` ``(..., d)``,
    or get ``pred.affine(abar, bbar) -> (M, b)``.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """

    def __init__(self, mean, cov):
        S = check_matrix(cov, "cov").to(torch.float64)
        mu = as_float_tensor(mean, "mean").to(S.device, torch.float64)
        check_finite(mu, "mean")
        if S.ndim != 2 or S.shape[0] != S.shape[1] or mu.shape != S.shape[:1]:
            raise ValueError(f"need mean (d,) and cov (d, d), got {tuple(mu.shape)} and "
                             f"{tuple(S.shape)}")
        if not torch.allclose(S, S.T, atol=1e-10 * float(S.abs().max()) + 1e-300):
            raise ValueError("cov must be symmetric")
        lam, Q = torch.linalg.eigh(0.5 * (S + S.T))
        if float(lam.min()) < -1e-10 * max(float(lam.abs().max()), 1e-300):
            raise ValueError("cov must be positive semidefinite")
        self.mean, self.lam, self.Q = mu, lam.clamp_min(0), Q

    def affine(self, abar, bbar) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M, b)`` with ``eps*(x) = x @ M.T + b``; needs ``bbar > 0``."""
        a = check_real(abar, "abar")
        b = check_real(bbar, "bbar", positive=True)
        M = (self.Q * (b / (a * a * self.lam + b * b))) @ self.Q.T
        return M, -a * (M @ self.mean)

    def __call__(self, x, abar, bbar) -> torch.Tensor:
        x = as_float_tensor(x, "x")
        M, b = self.affine(abar, bbar)
        return (x.to(M) @ M.T + b).to(x.dtype)


def ug_eps(x, eps_naive: Callable, eps_low: Callable, pool, up, abar: float, bbar: float,
           w: float = 0.0) -> torch.Tensor:
    r"""The upsample-guidance noise prediction at one step,

    .. math::

        \tilde\epsilon=\epsilon_\theta(x_t,t)+(1+w)\,\mathcal U\Big[\tfrac1{\sqrt m}
        \epsilon_{lo}\big(\mathcal Dx_t/\rho_t,\tau_t\big)-\mathcal D\epsilon_\theta(x_t,t)\Big],

    with :math:`(\bar\alpha_\tau,\bar\beta_\tau,\rho)` from :func:`snr_matched` and
    :math:`m` = pixels per pooled pixel (``pool.shape[1] // pool.shape[0]``; :math:`s^2` in
    2-D). ``w = -1`` returns the naive prediction, ``w = 0`` the plain main-plus-detail
    approximation. ``x`` ``(..., N)``; ``eps_naive(x)`` -> ``(..., N)`` is the model run as is
    at time :math:`t`; ``eps_low(y, abar_tau, bbar_tau)`` -> ``(..., n)`` the low-resolution
    model at the matched level; ``pool`` :math:`\mathcal D` ``(n, N)``, ``up``
    :math:`\mathcal U` ``(N, n)``.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    check_callable(eps_naive, "eps_naive")
    check_callable(eps_low, "eps_low")
    x = as_float_tensor(x, "x")
    check_finite(x, "x")
    Dm, Um = check_matrix(pool, "pool"), check_matrix(up, "up")
    if Dm.ndim != 2:
        raise ValueError(f"pool must be a matrix (n, N), got shape {tuple(Dm.shape)}")
    n, N = Dm.shape
    if Um.shape != (N, n) or x.shape[-1] != N:
        raise ValueError(f"need pool (n, N), up (N, n), x (..., N); got {tuple(Dm.shape)}, "
                         f"{tuple(Um.shape)}, {tuple(x.shape)}")
    if N % n:
        raise ValueError(f"pool must pool N = {N} pixels into n = {n} (N a multiple of n)")
    w = check_real(w, "w")
    m = N // n
    a_tau, b_tau, rho = (float(v) for v in snr_matched(abar, bbar, m))
    e = check_returned(eps_naive(x), "eps_naive(x)", x.shape)
    y = (x @ Dm.T) / rho
    main = check_returned(eps_low(y, a_tau, b_tau), "eps_low(y, abar, bbar)", y.shape)
    main = main / math.sqrt(m)
    return e + (1 + w) * ((main - e @ Dm.T) @ Um.T)


def affine_coefficients(f: Callable, d: int, *, dtype=torch.float64,
                        device=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(M, b)`` of an affine map :math:`f(x)=Mx+b` on :math:`\mathbb R^d` that acts on row
    batches ``(k, d) -> (k, d_out)``: :math:`b=f(0)`, :math:`M e_i=f(e_i)-b` (one batched call).
    Returns ``M`` ``(d_out, d)`` and ``b`` ``(d_out,)``. The map is not checked for affinity.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    check_callable(f, "f")
    d = check_int(d, "d", low=1)
    pts = torch.cat([torch.zeros(1, d, dtype=dtype, device=device),
                     torch.eye(d, dtype=dtype, device=device)])
    out = f(pts)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != d + 1:
        raise ValueError(f"f must map a (k, d) batch to (k, d_out); on ({d + 1}, {d}) it gave "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    return (out[1:] - out[:1]).T, out[0]


def ddpm_eps_moments(eps_affine: Callable, sched: VPSchedule, mean, cov, *,
                     noise_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact mean and covariance of the output of the :math:`\epsilon`-form ancestral sampler

    .. math::

        x_{t-1}=\frac1{\alpha_t}\Big(x_t-\frac{\beta_t^2}{\bar\beta_t}\hat\epsilon_t(x_t)\Big)
        +c\,\sigma_t z,\qquad \sigma_t=\frac{\bar\beta_{t-1}\beta_t}{\bar\beta_t},

    for affine predictors :math:`\hat\epsilon_t(x)=M_tx+b_t` (``eps_affine(t) -> (M, b)``,
    ``t = T..1``) and a Gaussian start :math:`x_T\sim\mathcal N(\mu_T,\Sigma_T)`, with
    :math:`\mu_T` = ``mean`` and :math:`\Sigma_T` = ``cov``:
    :math:`m\leftarrow A_tm-\frac{\beta_t^2}{\alpha_t\bar\beta_t}b_t`,
    :math:`C\leftarrow A_tCA_t^\top+c^2\sigma_t^2I` with
    :math:`A_t=(I-\frac{\beta_t^2}{\bar\beta_t}M_t)/\alpha_t`; ``c = noise_scale``. Needs
    :math:`\alpha_t>0` (clip a cosine schedule's end). Returns ``(mean_0, cov_0)``.

    Chapter: *Signal-to-noise ratio and upsample guidance*.
    """
    check_callable(eps_affine, "eps_affine")
    s = _check_schedule(sched)
    if not float(s.alpha[1:].min()) > 0:
        raise ValueError("sched.alpha must be > 0 for t >= 1 (clip the schedule's end)")
    c = check_real(noise_scale, "noise_scale", nonnegative=True)
    m = as_float_tensor(mean, "mean", dtype=torch.float64).to(torch.float64)
    check_finite(m, "mean")
    C = check_matrix(cov, "cov").to(m.device, torch.float64)
    if m.ndim != 1 or C.shape != (m.numel(), m.numel()):
        raise ValueError(f"need mean (d,) and cov (d, d), got {tuple(m.shape)} and "
                         f"{tuple(C.shape)}")
    if not torch.allclose(C, C.T, atol=1e-10 * float(C.abs().max()) + 1e-300):
        raise ValueError("cov must be symmetric")
    sigma = ddpm_posterior_coefficients(s)[2].tolist()
    al, be, bb = s.alpha.tolist(), s.beta.tolist(), s.bbar.tolist()
    eye = torch.eye(m.numel(), dtype=torch.float64, device=m.device)
    for t in range(s.T, 0, -1):
        Mb = eps_affine(t)
        if not (isinstance(Mb, (tuple, list)) and len(Mb) == 2
                and all(isinstance(u, torch.Tensor) for u in Mb)
                and Mb[0].shape == eye.shape and Mb[1].shape == m.shape):
            raise ValueError(f"eps_affine(t) must return (M, b) with M {tuple(eye.shape)} and "
                             f"b {tuple(m.shape)} (at t = {t})")
        M, b = (u.to(m) for u in Mb)
        k = be[t] ** 2 / bb[t]
        A = (eye - k * M) / al[t]
        m = A @ m - (k / al[t]) * b
        C = A @ C @ A.T + (c * sigma[t]) ** 2 * eye
    return m, 0.5 * (C + C.T)


# --- Score identity distillation (chapter 32) ---


def gauss_hermite(n: int, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Probabilists' Gauss–Hermite rule with weights that sum to 1:
    :math:`\mathbb E_{z\sim\mathcal N(0,1)}f(z)\approx\sum_{i=1}^n w_if(z_i)`, exact for
    polynomials of degree :math:`\le 2n-1`. Returns ``(nodes, weights)``, each ``(n,)`` float64.

    Chapter: *Identity-based distillation: SiD, FGM and the choice of lambda*.
    """
    from numpy.polynomial.hermite_e import hermegauss

    n = check_int(n, "n", low=1)
    z, w = hermegauss(n)
    f64 = dict(dtype=torch.float64, device=device)
    return torch.as_tensor(z, **f64), torch.as_tensor(w / w.sum(), **f64)


def _check_rule(nodes, weights, name: str, nodes_name: str = "nodes",
                weights_name: str = "weights") -> tuple[torch.Tensor, torch.Tensor]:
    nn, wn = name + nodes_name, name + weights_name
    nodes = as_float_tensor(nodes, nn)
    weights = as_float_tensor(weights, wn)
    if nodes.ndim != 1 or weights.shape != nodes.shape:
        raise ValueError(f"{nn} and {wn} must be 1-D of equal length, got "
                         f"{tuple(nodes.shape)} and {tuple(weights.shape)}")
    check_finite(nodes, nn)
    check_probability(weights, wn)  # the sum's tolerance scales with the dtype's eps
    return nodes, weights


def _check_rule_pair(rule, arg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``rule`` (the argument ``arg``) as a checked ``(nodes, weights)`` pair."""
    if isinstance(rule, torch.Tensor) or not isinstance(rule, Sequence) or len(rule) != 2:
        raise TypeError(f"{arg} must be a (nodes, weights) pair, e.g. from gauss_hermite, "
                        f"got {type(rule).__name__}")
    return _check_rule(rule[0], rule[1], f"{arg}'s ")


def discrete_generator_eps(x, atoms, weights, abar: float, bbar: float) -> torch.Tensor:
    r"""The optimal noise predictor :math:`\epsilon^*(x)=\mathbb E[\varepsilon\mid x_t=x]` for
    data drawn from the atoms :math:`g_k` with probabilities :math:`w_k` (a generator
    :math:`g_\theta` evaluated on a quadrature rule for its latent), noised as
    :math:`x_t=\bar\alpha g+\bar\beta\varepsilon`:

    .. math::

        \epsilon^*(x)=\sum_k r_k(x)\,\frac{x-\bar\alpha g_k}{\bar\beta},\qquad
        r_k(x)=\operatorname{softmax}_k\Big(\log w_k-\frac{(x-\bar\alpha g_k)^2}
        {2\bar\beta^2}\Big).

    ``x`` any shape (finite), ``atoms`` and ``weights`` ``(K,)``; returns the shape of ``x``
    on its device, in the dtype torch promotes ``x``, ``atoms`` and ``weights`` to (float64
    with the rule of :func:`gauss_hermite`; float16/bfloat16 are computed in float32). The
    squares are taken relative to the nearest atom, so far from every atom (``x = 1e20``,
    ``bbar = 1e-19``) one responsibility takes all the weight and the result stays finite
    wherever :math:`(x-\bar\alpha g_k)/\bar\beta` is. Differentiable in ``x`` and ``atoms`` (this is
    the student denoiser :math:`\epsilon_{\psi^*(\theta)}` as an explicit function of
    :math:`\theta`).

    Chapter: *Identity-based distillation: SiD, FGM and the choice of lambda*.
    """
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    check_finite(x, "x")
    atoms, weights = _check_rule(atoms, weights, "", "atoms")
    abar = check_real(abar, "abar", nonnegative=True)
    bbar = check_real(bbar, "bbar", positive=True)
    x, atoms, weights = promote(x, atoms, weights)
    dtype = x.dtype
    x, atoms, weights = upcast_half(x), upcast_half(atoms), upcast_half(weights)
    resid = x[..., None] - abar * atoms  # (..., K)
    # squares relative to the nearest atom of positive weight, (r_k - r_*)(r_k + r_*) >= 0:
    # its logit is finite, the others go to -inf instead of overflowing to NaN
    dist = resid.detach().abs().masked_fill(weights == 0, math.inf)
    near = resid.gather(-1, dist.argmin(-1, keepdim=True))
    quad = ((resid - near) * (resid + near) / bbar).nan_to_num(0.0, math.inf) / bbar
    r = torch.softmax(weights.log() - 0.5 * quad, dim=-1)
    return ((r * resid).sum(-1) / bbar).to(dtype)


def gaussian_generator_eps(x, mean, std, abar: float, bbar: float) -> torch.Tensor:
    r"""The optimal noise predictor of the Gaussian generator :math:`g=m+sz`, i.e. of
    :math:`x_t\sim\mathcal N(\bar\alpha m,\ \bar\alpha^2s^2+\bar\beta^2)`:
    :math:`\epsilon^*(x)=\bar\beta\,(x-\bar\alpha m)/(\bar\alpha^2s^2+\bar\beta^2)`.
    Differentiable in ``x``, ``mean`` and ``std`` (finite 0-d tensors or floats; the sign
    of ``std`` does not matter); returns the shape of ``x``.

    Chapter: *Identity-based distillation: SiD, FGM and the choice of lambda*.
    """
    x = as_float_tensor(x, "x", min_ndim=0, allow_empty=True)
    check_finite(x, "x")
    abar = check_real(abar, "abar", nonnegative=True)
    bbar = check_real(bbar, "bbar", positive=True)
    for v, name in ((mean, "mean"), (std, "std")):
        if isinstance(v, torch.Tensor):  # keep the tensor (and its graph); only look at it
            if v.numel() != 1:
                raise ValueError(f"{name} must be a scalar, got shape {tuple(v.shape)}")
            check_finite(as_float_tensor(v, name, min_ndim=0), name)
        else:
            check_real(v, name)
    return bbar * (x - abar * mean) / (abar**2 * std**2 + bbar**2)


def _check_generated(g, zn: torch.Tensor, arg: str) -> torch.Tensor:
    """What ``gen(arg, z)`` returned: a finite tensor of the nodes' shape."""
    check_returned(g, f"gen({arg}, z)", zn.shape)
    if not torch.isfinite(g.detach()).all():
        raise ValueError(f"gen({arg}, z) must return finite values (is {arg} finite?)")
    return g


def sid_losses(theta, theta_psi, teacher: GaussianMixture, gen: Callable, zrule, erule,
               abar: float, bbar: float, student: Callable | None = None) -> dict:
    r"""The five distillation losses of the chapter at one noise level, by double quadrature
    over the latent :math:`z` (rule ``zrule``) and the noise :math:`\varepsilon` (``erule``),
    with :math:`x_t=\bar\alpha g_\theta(z)+\bar\beta\varepsilon`,
    :math:`\epsilon_\varphi=` the teacher's exact noise predictor and :math:`\epsilon_\psi=`
    the student's optimal one for the generator with parameters ``theta_psi``:

    .. math::

        \mathcal L_1&=\mathbb E\|\epsilon_\varphi-\epsilon_\psi\|^2,\quad
        \mathcal L_2=\mathbb E\langle\epsilon_\varphi-\epsilon_\psi,
        \epsilon_\varphi-\varepsilon\rangle,\quad
        \mathcal L_3=\mathbb E[\|\epsilon_\varphi\|^2-2\langle\epsilon_\varphi,\varepsilon\rangle
        +\langle\epsilon_\psi,\varepsilon\rangle],\\
        \mathcal L_4&=\mathbb E[\|\epsilon_\varphi\|^2-2\langle\epsilon_\varphi,\varepsilon\rangle
        +2\langle\epsilon_\psi,\varepsilon\rangle-\|\epsilon_\psi\|^2],\\
        \mathcal L_5&=\mathbb E\|\epsilon_\varphi(\mathrm{sg}[x_t])
        -\epsilon_\psi(\mathrm{sg}[x_t])\|^2.

    Pass ``theta_psi=theta`` for the student's dependence on :math:`\theta` (total gradients)
    and ``theta_psi=theta.detach()`` for the stop-gradient versions used in practice.

    ``gen(theta, z)`` maps latent nodes ``(K,)`` to samples ``(K,)``; ``zrule`` and ``erule``
    are ``(nodes, weights)`` pairs (e.g. from :func:`gauss_hermite`). By default the student
    is :func:`discrete_generator_eps` of the atoms ``gen(theta_psi, znodes)`` (exact for the
    discretised generator); ``student(theta_psi, x, abar, bbar)`` replaces it. 1-D data only.
    Returns a dict of 0-d tensors with keys ``"L1"`` to ``"L5"``.

    Chapter: *Identity-based distillation: SiD, FGM and the choice of lambda*.
    """
    if not isinstance(teacher, GaussianMixture) or teacher.dim != 1:
        raise TypeError("teacher must be a 1-D GaussianMixture")
    check_callable(gen, "gen")
    zn, zw = _check_rule_pair(zrule, "zrule")
    en, ew = _check_rule_pair(erule, "erule")
    abar = check_real(abar, "abar", nonnegative=True)
    bbar = check_real(bbar, "bbar", positive=True)
    for v, name in ((theta, "theta"), (theta_psi, "theta_psi")):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            check_finite(v.detach(), name)
    g = _check_generated(gen(theta, zn), zn, "theta")
    if student is None:
        atoms = _check_generated(gen(theta_psi, zn), zn, "theta_psi")

        def student(_, y, a, b):
            return discrete_generator_eps(y, atoms, zw, a, b)

    eps = en[None, :]
    xt = abar * g[:, None] + bbar * eps  # (K, J)
    w = zw[:, None] * ew[None, :]
    phi = teacher.posterior(xt, abar, bbar).noise_mean
    psi = student(theta_psi, xt, abar, bbar)
    xs = xt.detach()
    phi_s = phi.detach()  # the teacher has no parameters: phi(sg[x]) = sg[phi(x)]
    psi_s = student(theta_psi, xs, abar, bbar)

    def E(v):
        return (w * v).sum()

    return {
        "L1": E((phi - psi) ** 2),
        "L2": E((phi - psi) * (phi - eps)),
        "L3": E(phi**2 - 2 * phi * eps + psi * eps),
        "L4": E(phi**2 - 2 * phi * eps + 2 * psi * eps - psi**2),
        "L5": E((phi_s - psi_s) ** 2),
    }


def train_sid(lam, theta0, teacher: GaussianMixture, gen: Callable, zrule, erule,
              levels: Sequence[tuple[float, float]], *, steps: int = 300, lr: float = 0.05,
              student: Callable | None = None) -> torch.Tensor:
    r"""Adam on the generator's parameters, averaging over the noise levels ``levels``
    (pairs :math:`(\bar\alpha,\bar\beta)`), with the student denoiser always exactly optimal
    for the current parameters (the idealised alternating scheme):

    * ``lam`` a number: the SiD objective :math:`\mathcal L_2^{(sg)}-\lambda\mathcal L_1^{(sg)}`
      (stop-gradient on the student); ``lam=0.5`` is FGM;
    * ``lam=None``: the total gradient of :math:`\mathcal L_1` (through the student's
      dependence on :math:`\theta`), i.e. descent on the Fisher divergence itself.

    Returns the trajectory, shape ``(steps + 1, *theta0.shape)`` (float64); the run stops
    early, padding with NaN, if the parameters become non-finite.

    Chapter: *Identity-based distillation: SiD, FGM and the choice of lambda*.
    """
    if lam is not None:
        lam = check_real(lam, "lam")
    steps = check_int(steps, "steps", low=0)
    lr = check_real(lr, "lr", positive=True)
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(f"levels must be a sequence of (abar, bbar) pairs, got "
                        f"{type(levels).__name__}")
    if len(levels) == 0:
        raise ValueError("levels must hold at least one (abar, bbar) pair")
    for i, lv in enumerate(levels):
        if isinstance(lv, (str, bytes)) or not isinstance(lv, Sequence) or len(lv) != 2:
            raise ValueError(f"levels[{i}] must be a pair (abar, bbar), got {lv!r}")
    theta = as_float_tensor(theta0, "theta0", dtype=torch.float64).detach()
    check_finite(theta, "theta0")
    theta = theta.to(torch.float64).clone()
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    traj = torch.full((steps + 1, *theta.shape), float("nan"), dtype=torch.float64,
                      device=theta.device)
    traj[0] = theta.detach()
    for s in range(steps):
        opt.zero_grad()
        loss = 0.0
        for a, b in levels:
            tp = theta if lam is None else theta.detach()
            L = sid_losses(theta, tp, teacher, gen, zrule, erule, a, b, student)
            loss = loss + (L["L1"] if lam is None else L["L2"] - lam * L["L1"])
        (loss / len(levels)).backward()
        opt.step()
        if not torch.isfinite(theta).all():
            break
        traj[s + 1] = theta.detach()
    return traj
