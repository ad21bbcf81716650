"""Tests of dlmath.dynamics: the Dirac-GAN fields against autograd of their losses, the
Jacobians at the equilibrium, the invariants, the ODE wrapper, the discrete schemes and EMA."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import dynamics as dy

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


def random_state(d, seed, batch=()):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, 2 * d, generator=g, dtype=F64)


def losses(kind, lam, c, wd):
    """(critic objective to ascend, generator loss to descend) of each Dirac GAN."""
    def critic(phi, theta):
        u = phi @ theta
        value = {
            "vanilla": lambda: torch.log1p(-torch.sigmoid(u)),
            "non-saturating": lambda: torch.log1p(-torch.sigmoid(u)),
            "wgan": lambda: -u / phi.norm(),
            "wgan-gp": lambda: -(u + lam * (phi.norm() - c) ** 2),
            "gan-qp": lambda: -(u + u**2 / (2 * lam * theta.detach().norm())),
        }[kind]()
        return value - 0.5 * wd * phi @ phi

    def generator(phi, theta):
        u = phi @ theta
        return {
            "vanilla": lambda: torch.log1p(-torch.sigmoid(u)),
            "non-saturating": lambda: -torch.log(torch.sigmoid(u)),
            "wgan": lambda: -u / phi.norm(),
        }.get(kind, lambda: -u)()
    return critic, generator


@SETTINGS
@given(st.sampled_from(dy.KINDS), st.integers(1, 4), st.floats(0.05, 3), st.floats(0, 2),
       st.sampled_from([0.0, 0.3]), st.integers(0, 2**31 - 1))
def test_fields_are_the_gradients_of_their_losses(kind, d, lam, c, wd, seed):
    y = random_state(d, seed)
    phi = y[:d].clone().requires_grad_()
    theta = y[d:].clone().requires_grad_()
    critic, generator = losses(kind, lam, c, wd)
    (dphi,) = torch.autograd.grad(critic(phi, theta), phi)
    (gtheta,) = torch.autograd.grad(generator(phi, theta), theta)
    expected = torch.cat([dphi, -gtheta])
    field = dy.dirac_gan_field(kind, lam=lam, c=c, wd=wd)
    torch.testing.assert_close(field(y), expected, rtol=1e-12, atol=1e-12)
    # batched evaluation agrees with one-by-one evaluation
    Y = torch.stack([y, 2 * y])
    torch.testing.assert_close(field(Y)[1], field(2 * y))


@pytest.mark.parametrize("kind, kw", [("vanilla", {}), ("non-saturating", {}),
                                      ("non-saturating", {"wd": 0.2}), ("gan-qp", {"lam": 0.7}),
                                      ("wgan-gp", {"lam": 0.1}), ("wgan-gp", {"lam": 2.0}),
                                      ("gan-qp", {"wd": 0.5})])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_equilibrium_jacobian_matches_autograd(kind, kw, d):
    closed = dy.equilibrium_jacobian(kind, d, **kw)
    auto = dy.jacobian(dy.dirac_gan_field(kind, **kw), torch.zeros(2 * d, dtype=F64))
    torch.testing.assert_close(auto, closed, rtol=0, atol=1e-15)


def test_eigenvalues_at_the_equilibrium():
    ev = torch.linalg.eigvals(dy.equilibrium_jacobian("non-saturating", 2))
    torch.testing.assert_close(ev.real, torch.zeros(4, dtype=F64))
    torch.testing.assert_close(ev.imag.abs(), torch.full((4,), 0.5, dtype=F64))
    for lam in (0.1, 0.5, 1.0, 3.0):
        ev = torch.linalg.eigvals(dy.equilibrium_jacobian("wgan-gp", 1, lam=lam))
        root = complex(lam**2 - 1) ** 0.5
        want = sorted([-lam + root, -lam - root], key=lambda z: (z.real, z.imag))
        got = sorted(ev.tolist(), key=lambda z: (z.real, z.imag))
        assert all(abs(a - b) < 1e-7 for a, b in zip(got, want, strict=True))
    with pytest.raises(ValueError, match="no equilibrium"):
        dy.equilibrium_jacobian("wgan", 2)
    with pytest.raises(ValueError, match="no equilibrium"):
        dy.equilibrium_jacobian("wgan-gp", 2, c=1.0)


@pytest.mark.parametrize("d", [2, 3])
def test_wedge_is_conserved_or_decays(d):
    y = random_state(d, 7, batch=(50,))
    for kind, wd, rate in [("vanilla", 0.0, 0.0), ("non-saturating", 0.0, 0.0),
                           ("gan-qp", 0.0, 0.0), ("non-saturating", 0.3, 0.3),
                           ("gan-qp", 0.1, 0.1)]:
        f = dy.dirac_gan_field(kind, wd=wd)(y)
        dphi, dtheta = dy.split(f)
        phi, theta = dy.split(y)
        outer = dtheta.unsqueeze(-1) * phi.unsqueeze(-2) + theta.unsqueeze(-1) * dphi.unsqueeze(-2)
        rate_of_change = outer - outer.transpose(-1, -2)
        torch.testing.assert_close(rate_of_change, -rate * dy.wedge(y), rtol=0, atol=1e-13)
    # WGAN-GP: not conserved, but still proportional, dW/dt = -(2 lam (1 - c/|phi|) + wd) W
    lam, c, wd = 0.5, 0.7, 0.2
    f = dy.dirac_gan_field("wgan-gp", lam=lam, c=c, wd=wd)(y)
    dphi, dtheta = dy.split(f)
    phi, theta = dy.split(y)
    outer = dtheta.unsqueeze(-1) * phi.unsqueeze(-2) + theta.unsqueeze(-1) * dphi.unsqueeze(-2)
    gamma = 2 * lam * (1 - c / phi.norm(dim=-1)) + wd
    torch.testing.assert_close(outer - outer.transpose(-1, -2),
                               -gamma[:, None, None] * dy.wedge(y), rtol=0, atol=1e-13)
    assert (outer - outer.transpose(-1, -2)).abs().max() > 0.1


def test_energy_and_wgan_invariants():
    y = 3 * random_state(3, 8, batch=(2000,))
    for kind, sign in [("non-saturating", -1), ("gan-qp", -1), ("vanilla", 0)]:
        dE = 2 * (y * dy.dirac_gan_field(kind)(y)).sum(-1)
        if sign == 0:
            assert dE.abs().max() < 1e-12
        else:
            assert dE.max() <= 1e-12 and dE.min() < -1e-3
    f = dy.dirac_gan_field("wgan")(y)
    phi, _ = dy.split(y)
    dphi, dtheta = dy.split(f)
    assert (phi * dphi).sum(-1).abs().max() < 1e-12
    torch.testing.assert_close(dtheta.norm(dim=-1), torch.ones(2000, dtype=F64))
    assert dy.energy(y).shape == (2000,)


def test_integrate_harmonic_oscillator_and_batches():
    # non-saturating field near 0 is theta'' = -theta/4; check on the exact linear system
    def linear(y):
        J = dy.equilibrium_jacobian("non-saturating", 1)
        return y @ J.T
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    ts = torch.linspace(0, 20, 41, dtype=F64)
    t, Y = dy.integrate(linear, y0, 20.0, t_eval=ts)
    assert Y.shape == (41, 2, 2) and torch.equal(t, ts)
    torch.testing.assert_close(Y[:, 0, 1], torch.sin(ts / 2), atol=1e-7, rtol=0)
    torch.testing.assert_close(Y[:, 1, 1], 2 * torch.cos(ts / 2), atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="t_eval"):
        dy.integrate(linear, y0, 1.0, t_eval=ts)
    with pytest.raises(ValueError, match="T must be > 0"):
        dy.integrate(linear, y0, 0.0)


def test_gda_schemes_on_the_linear_center():
    def center(y):
        phi, theta = dy.split(y)
        return torch.cat([-theta / 2, phi / 2], dim=-1)
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    eta, n = 0.1, 2000
    sim = dy.gda(center, y0, eta, n, every=100)
    assert sim.shape == (21, 2)
    r = sim.norm(dim=-1)
    torch.testing.assert_close(r, (1 + eta**2 / 4) ** (torch.arange(21, dtype=F64) * 50),
                               rtol=1e-10, atol=0)
    alt = dy.gda(center, y0, eta, n, scheme="alternating")
    assert alt.norm(dim=-1).max() < 1.1 and alt.norm(dim=-1).min() > 0.9
    # alternating: the generator step uses the updated critic
    one = dy.gda(center, y0, eta, 1, scheme="alternating")[-1]
    phi1 = 0 - eta * 1.0 / 2
    torch.testing.assert_close(one, torch.tensor([phi1, 1.0 + eta * phi1 / 2], dtype=F64))
    # one simultaneous step is y0 + eta f(y0) (the radius alone cannot tell eta from -eta)
    torch.testing.assert_close(dy.gda(center, y0, eta, 1)[-1],
                               torch.tensor([-eta / 2, 1.0], dtype=F64))
    # batched runs are independent, whatever the batch size (4 runs of d = 1 here)
    Y0 = torch.tensor([[0.0, 1.0], [0.5, -0.2], [1.0, 2.0], [-1.0, 0.3]], dtype=F64)
    for scheme in ("simultaneous", "alternating"):
        batch = dy.gda(center, Y0, eta, 5, scheme=scheme)
        for i in range(4):
            torch.testing.assert_close(batch[:, i], dy.gda(center, Y0[i], eta, 5, scheme=scheme))
    with pytest.raises(ValueError, match="scheme"):
        dy.gda(center, y0, eta, 3, scheme="leapfrog")


def test_bad_input():
    with pytest.raises(ValueError, match="kind"):
        dy.dirac_gan_field("lsgan")
    with pytest.raises(ValueError, match="lam"):
        dy.dirac_gan_field("wgan-gp", lam=0.0)
    with pytest.raises(ValueError, match="even last dimension"):
        dy.split(torch.zeros(3))
    with pytest.raises(ValueError, match="phi = 0"):
        dy.dirac_gan_field("wgan")(torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="phi = 0"):
        dy.dirac_gan_field("wgan-gp", c=1.0)(torch.tensor([0.0, 0.0, 1.0, 1.0]))
    # gan-qp is continued by 0 at theta = 0, where its extra term vanishes
    y = torch.tensor([0.3, -0.2, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(dy.dirac_gan_field("gan-qp")(y),
                               torch.tensor([0.0, 0.0, 0.3, -0.2], dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        dy.split(torch.tensor([math.nan, 0.0]))


def test_integrate_reports_a_failed_solve_and_jacobian_wants_one_state():
    # y' = y^2 from y = 1 blows up at t = 1: the solver cannot reach T = 2
    with pytest.raises(RuntimeError, match="solve_ivp failed"):
        dy.integrate(lambda y: y * y, torch.ones(1, dtype=F64), 2.0)
    field = dy.dirac_gan_field("vanilla")
    with pytest.raises(ValueError, match=r"y must be a single state of shape \(n,\), got "
                                         r"\(2, 4\)"):
        dy.jacobian(field, torch.ones(2, 4, dtype=F64))


def test_integrate_gives_up_on_a_path_into_the_wgan_singularity():
    # with an L2 penalty the WGAN critic shrinks like exp(-wd t) while its direction turns at a
    # rate ~ |theta_perp| / |phi|^2: the solver's steps shrink without end, so the evaluation
    # budget must stop it with a clear error instead of running for hours
    y0 = torch.tensor([0.1, 0.2, 0.2, 0.1], dtype=F64)
    field = dy.dirac_gan_field("wgan", wd=0.1)
    with pytest.raises(RuntimeError, match=r"max_evals=20000 field evaluations reached at "
                                           r"t = \d"):
        dy.integrate(field, y0, 100.0, max_evals=20_000)
    # the same path without the penalty keeps |phi| and needs far fewer evaluations
    t, Y = dy.integrate(dy.dirac_gan_field("wgan"), y0, 10.0, max_evals=20_000)
    assert t[-1] == 10.0 and (dy.split(Y)[0].norm(dim=-1) - y0[:2].norm()).abs().max() < 1e-7
    # the budget counts evaluations exactly: a solve that needs n of them passes with n
    calls = []

    def counted(y):
        calls.append(1)
        return dy.dirac_gan_field("vanilla")(y)

    dy.integrate(counted, y0, 5.0)
    dy.integrate(dy.dirac_gan_field("vanilla"), y0, 5.0, max_evals=len(calls))
    with pytest.raises(RuntimeError, match="max_evals"):
        dy.integrate(dy.dirac_gan_field("vanilla"), y0, 5.0, max_evals=len(calls) - 1)
    t, _ = dy.integrate(field, y0, 1.0, max_evals=None)
    assert t[-1] == 1.0
    with pytest.raises(ValueError, match="max_evals must be >= 1"):
        dy.integrate(field, y0, 1.0, max_evals=0)
    with pytest.raises(TypeError, match="max_evals must be an int"):
        dy.integrate(field, y0, 1.0, max_evals=1e5)


# -- added by the second reading (review r1315) -------------------------------------------

def test_wedge_value_sign_and_lagrange_identity():
    y = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)        # phi = (0.1, 0.2), theta = (0.3, 0.4)
    W = dy.wedge(y)
    # A = theta_1 phi_2 - theta_2 phi_1
    assert W[0, 1].item() == pytest.approx(0.3 * 0.2 - 0.4 * 0.1, abs=1e-16)
    torch.testing.assert_close(W, -W.T)
    Y = random_state(4, 3, batch=(10,))
    phi, theta = dy.split(Y)
    lagrange = (theta * theta).sum(-1) * (phi * phi).sum(-1) - (theta * phi).sum(-1) ** 2
    torch.testing.assert_close((dy.wedge(Y) ** 2).sum((-1, -2)) / 2, lagrange)


def test_one_centred_penalty_rotation_is_an_exact_solution():
    # on |theta| = |phi| = c, theta . phi = 0 the WGAN-GP field is the rotation (phi, theta)' =
    # (-theta, phi), whatever lam and wd = 0
    for c in (0.25, 1.0, 3.0):
        y = torch.tensor([c, 0.0, 0.0, c], dtype=F64)
        f = dy.dirac_gan_field("wgan-gp", lam=0.7, c=c)(y)
        torch.testing.assert_close(f, torch.tensor([0.0, -c, c, 0.0], dtype=F64), rtol=0,
                                   atol=1e-15)


def test_gda_zero_steps_and_dtype():
    y0 = torch.tensor([0.3, -0.1], dtype=torch.float32)
    out = dy.gda(dy.dirac_gan_field("vanilla"), y0, 0.1, 0)
    assert out.shape == (1, 2) and torch.equal(out[0], y0)
    out = dy.gda(dy.dirac_gan_field("non-saturating"), y0, 0.1, 7, scheme="alternating", every=3)
    assert out.shape == (3, 2) and out.dtype == torch.float32


def test_integrate_rejects_nonfinite_or_unsorted_t_eval():
    """NaN passes every range comparison: before, t_eval=[0, nan, 2] silently dropped t=2 and
    [0, nan, 1, 2] gave a NaN row. Non-finite, unsorted, repeated or 2-d t_eval raise a
    ValueError naming t_eval; a valid one is returned exactly."""
    f = dy.dirac_gan_field("vanilla")
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    nan, inf = float("nan"), float("inf")
    for ts, what in (([0.0, nan, 2.0], "finite"), ([0.0, nan, 1.0, 2.0], "finite"),
                     ([nan], "finite"), ([0.0, inf], "finite"), ([0.0, 2.0, 1.0], "increasing"),
                     ([0.0, 1.0, 1.0], "increasing"), ([[0.0, 1.0], [1.5, 2.0]], "1-d")):
        with pytest.raises(ValueError, match=f"t_eval.*{what}"):
            dy.integrate(f, y0, 2.0, t_eval=torch.tensor(ts, dtype=F64))
    ts = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    t, Y = dy.integrate(f, y0, 2.0, t_eval=ts)
    assert torch.equal(t, ts) and Y.shape == (3, 2) and torch.isfinite(Y).all()


def test_energy_is_the_squared_distance_to_the_equilibrium():
    # E = |phi|^2 + |theta|^2, per state of a batch (zeros included)
    y = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 2.0]], dtype=F64)
    assert dy.energy(y).tolist() == [25.0, 0.0, 5.0]


@pytest.mark.parametrize("kind", [k for k in dy.KINDS if k != "wgan"])  # wgan: no field at 0
def test_equilibrium_jacobian_defaults_match_the_field_defaults(kind):
    # the closed form with its default lam, c, wd is the Jacobian of the default field at 0
    auto = dy.jacobian(dy.dirac_gan_field(kind), torch.zeros(4, dtype=F64))
    torch.testing.assert_close(dy.equilibrium_jacobian(kind, 2), auto, atol=1e-12, rtol=0)
