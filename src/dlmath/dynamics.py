r"""Training dynamics as differential equations: the Dirac GAN and its variants.

Chapter: *GAN dynamics: the Dirac GAN* (``notebooks/15-dirac-gan.ipynb``).

The Dirac GAN has real data at the origin, a generator that outputs the single point
:math:`\theta\in\mathbb R^d` and a linear critic :math:`D(x) = \varphi\cdot x` (pushed through
the sigmoid for the vanilla losses). A state is one tensor ``y = [phi, theta]`` of shape
``(..., 2d)``: critic first, generator second, batched over the leading dimensions. Every
field below maps ``y`` to :math:`\dot y = (\dot\varphi, \dot\theta)`, where the critic ascends
its objective and the generator descends its loss, and :math:`u = \theta\cdot\varphi`:

* ``vanilla``: :math:`\dot\varphi = -\sigma(u)\,\theta`,
  :math:`\dot\theta = \sigma(u)\,\varphi`;
* ``non-saturating``: :math:`\dot\varphi = -\sigma(u)\,\theta`,
  :math:`\dot\theta = (1-\sigma(u))\,\varphi`;
* ``wgan``: :math:`\dot\varphi = -\theta/|\varphi| + u\,\varphi/|\varphi|^3`,
  :math:`\dot\theta = \varphi/|\varphi|`;
* ``wgan-gp``: :math:`\dot\varphi = -\theta - 2\lambda(1 - c/|\varphi|)\,\varphi`,
  :math:`\dot\theta = \varphi`;
* ``gan-qp``: :math:`\dot\varphi = -\theta - u\,\theta/(\lambda|\theta|)`,
  :math:`\dot\theta = \varphi`.

An L2 penalty :math:`\tfrac w2|\varphi|^2` on the critic (``wd=w``) adds :math:`-w\varphi` to
:math:`\dot\varphi` for every kind. Edge cases: the WGAN field and the WGAN-GP field with
``c > 0`` are undefined at :math:`\varphi = 0` (their direction jumps there) and raise
``ValueError``; the GAN-QP term is :math:`O(|\theta||\varphi|)` and is continued by 0 at
:math:`\theta = 0`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import as_float_tensor, check_choice, check_finite, check_int, check_real

__all__ = [
    "KINDS",
    "split",
    "dirac_gan_field",
    "integrate",
    "gda",
    "jacobian",
    "equilibrium_jacobian",
    "wedge",
    "energy",
]

#: The Dirac-GAN variants that :func:`dirac_gan_field` knows.
KINDS = ("vanilla", "non-saturating", "wgan", "wgan-gp", "gan-qp")

Field = Callable[[torch.Tensor], torch.Tensor]


def _state(y, name: str = "y") -> torch.Tensor:
    y = as_float_tensor(y, name)
    if y.shape[-1] % 2:
        raise ValueError(f"{name} must have an even last dimension [phi, theta], "
                         f"got shape {tuple(y.shape)}")
    check_finite(y, name)
    return y


def split(y) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Split a state ``(..., 2d)`` into the critic :math:`\varphi` and the generator
    :math:`\theta`, each ``(..., d)`` (views, not copies)."""
    y = _state(y)
    d = y.shape[-1] // 2
    return y[..., :d], y[..., d:]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=-1, keepdim=True)


def _norm(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a, dim=-1, keepdim=True)


def _nonzero_norm(a: torch.Tensor, kind: str) -> torch.Tensor:
    n = _norm(a)
    if (n == 0).any():
        raise ValueError(f"the {kind} field is undefined where phi = 0 (its direction jumps "
                         f"there); start the critic away from 0")
    return n


def dirac_gan_field(kind: str, *, lam: float = 1.0, c: float = 0.0, wd: float = 0.0) -> Field:
    r"""The vector field :math:`y \mapsto \dot y` of the Dirac GAN of type ``kind``.

    ``kind`` is one of :data:`KINDS` (formulas in the module docstring). ``lam`` is the
    penalty weight :math:`\lambda>0` of ``wgan-gp`` and ``gan-qp``, ``c\ge 0`` the centre of
    the gradient penalty :math:`\lambda(|\nabla_x D| - c)^2` (``c=0``: zero-centred, ``c=1``:
    WGAN-GP), ``wd\ge 0`` the weight of an L2 penalty on the critic. The returned function
    maps a tensor ``(..., 2d)`` to a tensor of the same shape, dtype and device, and is
    differentiable by autograd wherever the field is smooth.
    """
    check_choice(kind, "kind", KINDS)
    lam = check_real(lam, "lam", positive=True)
    c = check_real(c, "c", nonnegative=True)
    wd = check_real(wd, "wd", nonnegative=True)

    def field(y: torch.Tensor) -> torch.Tensor:
        phi, theta = split(y)
        u = _dot(phi, theta)
        if kind in ("vanilla", "non-saturating"):
            s = torch.sigmoid(u)
            dphi = -s * theta
            dtheta = (s if kind == "vanilla" else torch.sigmoid(-u)) * phi
        elif kind == "wgan":
            n = _nonzero_norm(phi, kind)
            dphi = -theta / n + u * phi / n**3
            dtheta = phi / n
        elif kind == "wgan-gp":
            pull = 2 * lam * phi
            if c > 0:
                pull = pull - 2 * lam * c * phi / _nonzero_norm(phi, "wgan-gp (c > 0)")
            dphi = -theta - pull
            dtheta = phi
        else:  # gan-qp
            n = _norm(theta)
            safe = torch.where(n > 0, n, torch.ones_like(n))
            dphi = -theta - u * theta / (lam * safe)
            dtheta = phi
        if wd:
            dphi = dphi - wd * phi
        return torch.cat([dphi, dtheta], dim=-1)

    field.__name__ = f"dirac_gan_field_{kind.replace('-', '_')}"
    field.__doc__ = f"Dirac GAN field, kind={kind!r}, lam={lam}, c={c}, wd={wd}."
    return field


class _Budget(Exception):
    """Raised inside the solver's right-hand side when the evaluation budget is spent."""

    def __init__(self, t: float):
        super().__init__(t)
        self.t = t


def integrate(field: Field, y0, T: float, *, t_eval=None, rtol: float = 1e-8,
              atol: float = 1e-10, method: str = "DOP853",
              max_evals: int | None = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Solve :math:`\dot y = f(y)`, :math:`y(0)=y_0` on :math:`[0, T]` with
    ``scipy.integrate.solve_ivp``.

    ``y0`` may be batched, ``(..., n)``: all initial states are integrated together (the
    field must broadcast over leading dimensions, as those of :func:`dirac_gan_field` do).
    ``t_eval`` (finite, strictly increasing times in ``[0, T]``; anything else, NaN included,
    raises ``ValueError`` naming ``t_eval``) defaults to the solver's own steps. Returns
    ``(t, Y)`` in float64 on ``y0``'s device, ``t`` of shape ``(m,)`` and ``Y`` of shape
    ``(m, ..., n)``.
    Raises ``RuntimeError`` if the solver fails, or if it has evaluated the field ``max_evals``
    times (``None``: no limit) before reaching ``T``: a path that runs into a singularity of
    the field (the WGAN critic shrinking to 0 under an L2 penalty turns ever faster) would
    otherwise keep the solver busy for hours. The chapters' paths need at most ~15 000.
    """
    from scipy.integrate import solve_ivp

    y0 = check_finite(as_float_tensor(y0, "y0"), "y0")
    T = check_real(T, "T", positive=True)
    shape, dev = y0.shape, y0.device
    if t_eval is not None:
        t_eval = check_finite(as_float_tensor(t_eval, "t_eval", dtype=torch.float64), "t_eval")
        t_eval = t_eval.detach().cpu().double().numpy()
        if t_eval.min() < 0 or t_eval.max() > T:
            raise ValueError(f"t_eval must lie in [0, T={T}]")
        if t_eval.ndim != 1 or (t_eval[1:] <= t_eval[:-1]).any():
            raise ValueError("t_eval must be a 1-d tensor of strictly increasing times")

    if max_evals is not None:
        max_evals = check_int(max_evals, "max_evals", low=1)
    evals = 0

    def rhs(t, y):
        nonlocal evals
        evals += 1
        if max_evals is not None and evals > max_evals:
            raise _Budget(t)
        with torch.no_grad():
            return field(torch.from_numpy(y).reshape(shape)).reshape(-1).numpy()

    try:
        sol = solve_ivp(rhs, (0.0, T), y0.detach().cpu().double().reshape(-1).numpy(),
                        method=method, t_eval=t_eval, rtol=rtol, atol=atol)
    except _Budget as stop:
        raise RuntimeError(
            f"integrate: max_evals={max_evals} field evaluations reached at t = {stop.t:.6g} "
            f"of T = {T}; the field is probably stiff or nearly singular along this path "
            f"(pass a larger max_evals, or max_evals=None, to keep going)") from None
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    t = torch.from_numpy(sol.t).to(dev)
    Y = torch.from_numpy(sol.y.T.copy()).reshape(len(sol.t), *shape).to(dev)
    return t, Y


def gda(field: Field, y0, lr: float, steps: int, *, scheme: str = "simultaneous",
        every: int = 1) -> torch.Tensor:
    r"""Discrete gradient descent–ascent: Euler steps of size ``lr`` along ``field``.

    ``scheme="simultaneous"``: :math:`y_{k+1} = y_k + \eta f(y_k)`.
    ``scheme="alternating"``: the critic moves first and the generator sees the new critic,
    :math:`\varphi_{k+1} = \varphi_k + \eta f_\varphi(\varphi_k,\theta_k)`,
    :math:`\theta_{k+1} = \theta_k + \eta f_\theta(\varphi_{k+1},\theta_k)`.

    ``y0`` is ``(..., 2d)`` (batched runs are independent). Returns the states after
    ``0, every, 2*every, ...`` steps, shape ``(steps // every + 1, ..., 2d)``, with ``y0``'s
    dtype and device.
    """
    y = _state(y0, "y0").detach()
    lr = check_real(lr, "lr", positive=True)
    steps = check_int(steps, "steps", low=0)
    every = check_int(every, "every", low=1)
    check_choice(scheme, "scheme", ("simultaneous", "alternating"))
    d = y.shape[-1] // 2
    out = [y]
    with torch.no_grad():
        for k in range(1, steps + 1):
            if scheme == "simultaneous":
                y = y + lr * field(y)
            else:
                phi = y[..., :d] + lr * field(y)[..., :d]
                y = torch.cat([phi, y[..., d:]], dim=-1)
                y = torch.cat([phi, y[..., d:] + lr * field(y)[..., d:]], dim=-1)
            if k % every == 0:
                out.append(y)
    return torch.stack(out)


def jacobian(field: Field, y) -> torch.Tensor:
    r"""The Jacobian :math:`\partial f_i/\partial y_j` of ``field`` at one state ``y``
    (shape ``(n,)``), by autograd; returns ``(n, n)``."""
    y = as_float_tensor(y, "y")
    if y.ndim != 1:
        raise ValueError(f"y must be a single state of shape (n,), got {tuple(y.shape)}")
    return torch.autograd.functional.jacobian(field, y)


def equilibrium_jacobian(kind: str, d: int, *, lam: float = 1.0, c: float = 0.0,
                         wd: float = 0.0, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""The Jacobian of the Dirac-GAN field at the equilibrium :math:`\varphi=\theta=0`,
    in closed form, shape ``(2d, 2d)`` in the block order :math:`(\varphi,\theta)`:

    .. math:: J = \begin{pmatrix} -a I - w I & -b I\\ b' I & 0\end{pmatrix},

    with :math:`b=b'=\tfrac12, a=0` (vanilla, non-saturating; :math:`\sigma(0)=\tfrac12`),
    :math:`b=b'=1, a=2\lambda` (wgan-gp, ``c=0``), :math:`b=b'=1, a=0` (gan-qp, whose extra
    term is :math:`O(|\theta||\varphi|)`), and :math:`w` the L2 weight. ``wgan`` and ``wgan-gp``
    with ``c>0`` have no equilibrium there (:math:`|\dot\theta| = 1` for WGAN; the WGAN-GP
    field jumps at :math:`\varphi=0`) and raise ``ValueError``.
    """
    check_choice(kind, "kind", KINDS)
    d = check_int(d, "d", low=1)
    lam = check_real(lam, "lam", positive=True)
    c = check_real(c, "c", nonnegative=True)
    wd = check_real(wd, "wd", nonnegative=True)
    if kind == "wgan" or (kind == "wgan-gp" and c > 0):
        raise ValueError(f"the {kind} field (c={c}) has no equilibrium at the origin: it is not "
                         f"defined at phi = 0, so there is no Jacobian to take")
    a, b = {"vanilla": (0.0, 0.5), "non-saturating": (0.0, 0.5),
            "wgan-gp": (2 * lam, 1.0), "gan-qp": (0.0, 1.0)}[kind]
    eye = torch.eye(d, dtype=dtype, device=device)
    top = torch.cat([-(a + wd) * eye, -b * eye], dim=1)
    bottom = torch.cat([b * eye, torch.zeros_like(eye)], dim=1)
    return torch.cat([top, bottom], dim=0)


def wedge(y) -> torch.Tensor:
    r"""The bivector :math:`\theta\wedge\varphi = \theta\varphi^\top - \varphi\theta^\top`,
    shape ``(..., d, d)``. In 2-D its entry ``[0, 1]`` is
    :math:`A = \theta_1\varphi_2 - \theta_2\varphi_1`, conserved by every field with
    :math:`\dot\theta\parallel\varphi` and :math:`\dot\varphi\parallel\theta`."""
    phi, theta = split(y)
    outer = theta.unsqueeze(-1) * phi.unsqueeze(-2)
    return outer - outer.transpose(-1, -2)


def energy(y) -> torch.Tensor:
    r"""The squared distance to the equilibrium, :math:`E = |\varphi|^2 + |\theta|^2`,
    shape ``(...)``."""
    y = _state(y)
    return (y * y).sum(dim=-1)


