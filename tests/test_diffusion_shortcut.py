"""Tests of the shortcut-model part of dlmath.diffusion (chapter 28): the exact average
velocity, the ideal dyadic recursion, the shortcut MLP, its loss, training and sampling."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import diffusion as D

F64 = torch.float64
GMM = D.GaussianMixture([0.3, 0.7], [-2.0, 1.5], [0.3, 0.5])


def v_star(x, t):
    return D.linear_path_velocity(GMM, x, t, data_at=1)


def _points(n, seed=0, scale=2.0):
    return scale * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- exact average velocity -------------------------------------------------------------

def test_average_velocity_is_self_consistent():
    x = _points(20)
    t, eps = 0.25, 0.25
    u_half = D.average_velocity(v_star, x, t, eps)
    x_mid = x + eps * u_half
    rhs = 0.5 * (u_half + D.average_velocity(v_star, x_mid, t + eps, eps))
    assert (D.average_velocity(v_star, x, t, 2 * eps) - rhs).abs().max() < 1e-8
    # the first version of the post evaluated the second velocity at t, not t + eps
    wrong = 0.5 * (u_half + D.average_velocity(v_star, x_mid, t, eps))
    assert (D.average_velocity(v_star, x, t, 2 * eps) - wrong).abs().max() > 1e-3


def test_average_velocity_tends_to_the_velocity():
    x = _points(20, 1)
    for t in (0.0, 0.4, 0.9):
        assert (D.average_velocity(v_star, x, t, 1e-6) - v_star(x, t)).abs().max() < 1e-4


def test_average_velocity_of_a_linear_field_is_closed_form():
    # dx/dt = a x: Phi = x e^{a d}, u = x (e^{a d} - 1) / d, also backwards in time
    x = torch.tensor([-1.0, 0.5, 3.0], dtype=F64)
    for d in (0.3, -0.2):
        u = D.average_velocity(lambda y, t: -1.7 * y, x, 0.1, d)
        assert torch.allclose(u, x * math.expm1(-1.7 * d) / d, rtol=1e-9)


def test_average_velocity_keeps_dtype_and_rejects_bad_input():
    x = torch.tensor([0.1, 0.2], dtype=torch.float32)
    assert D.average_velocity(v_star, x, 0.0, 0.5).dtype == torch.float32
    assert D.average_velocity(v_star, torch.zeros(0, dtype=F64), 0.0, 0.5).shape == (0,)
    with pytest.raises(ValueError, match="d must be non-zero"):
        D.average_velocity(v_star, x, 0.0, 0.0)
    with pytest.raises(TypeError, match="t must be a real"):
        D.average_velocity(v_star, x, "0", 0.5)
    with pytest.raises(ValueError, match="x must be finite"):
        D.average_velocity(v_star, torch.tensor([math.nan]), 0.0, 0.5)


def test_one_euler_step_from_noise_collapses_to_the_data_mean():
    x = _points(100, 2, scale=5.0)
    out = D.euler(v_star, x, [0.0, 1.0])
    assert (out - GMM.mean()).abs().max() < 1e-12
    assert out.std() < 1e-12


# -- ideal dyadic recursion ---------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(0, 5), st.integers(0, 3), st.floats(-4, 4), st.integers(0, 3))
def test_ideal_shortcut_is_fine_euler(K, drop, x0, j):
    k = max(K - drop, 0)
    dk, dK = 2.0 ** -k, 2.0 ** -K
    t = (j % (2 ** k)) * dk  # a grid time with t + d_k <= 1
    x = torch.tensor([x0, x0 / 2 + 0.3], dtype=F64)
    jump = x + dk * D.shortcut_ideal(v_star, x, t, k, K)
    fine = D.euler(v_star, x, [t + i * dK for i in range(2 ** (K - k) + 1)])
    assert torch.allclose(jump, fine, atol=1e-12, rtol=0)


def test_ideal_shortcut_counts_calls_and_anchors_the_finest_level():
    calls = []

    def v(y, t):
        calls.append(t)
        return torch.sin(3 * y) + t

    x = _points(5, 3)
    assert torch.equal(D.shortcut_ideal(v, x, 0.25, 4, 4), v(x, 0.25))
    calls.clear()
    D.shortcut_ideal(v, x, 0.0, 0, 5)
    assert len(calls) == 32 and calls == sorted(calls) and calls[-1] == 31 / 32


def test_ideal_shortcut_rejects_bad_levels():
    with pytest.raises(ValueError, match="k must be <= 3"):
        D.shortcut_ideal(v_star, _points(2), 0.0, 4, 3)
    with pytest.raises(TypeError, match="K must be an int"):
        D.shortcut_ideal(v_star, _points(2), 0.0, 0, 3.0)


# -- the network and its loss ---------------------------------------------------------------

def test_mlp_shapes_levels_and_errors():
    torch.manual_seed(0)
    net = D.ShortcutMLP(hidden=16, n_levels=4)
    x = torch.randn(7)
    assert net(x, 0.5, 2).shape == (7,)
    assert net(x, torch.rand(7), torch.tensor([0, 1, 2, 3, 0, 1, 2])).shape == (7,)
    assert net(x, 0.5, 0).dtype == torch.float32
    # the step size changes the output: the level embedding is used
    assert (net(x, 0.5, 0) - net(x, 0.5, 3)).abs().max() > 1e-4
    net2 = D.ShortcutMLP(dim=2, hidden=8, n_levels=2, zero_level=True)
    assert net2(torch.randn(3, 2), 0.1, 2).shape == (3, 2)
    with pytest.raises(ValueError, match="k must lie in"):
        net(x, 0.5, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        net2(torch.randn(3), 0.1, 0)
    with pytest.raises(ValueError, match="n_levels must be >= 1"):
        D.ShortcutMLP(n_levels=0)


def test_loss_validates_its_arguments():
    net = D.ShortcutMLP(hidden=8, n_levels=3)
    with pytest.raises(ValueError, match="anchor must be one of"):
        D.shortcut_loss(net, GMM, 8, anchor="middle")
    with pytest.raises(ValueError, match="zero_level=True"):
        D.shortcut_loss(net, GMM, 8, anchor="zero")
    with pytest.raises(TypeError, match="net must be a ShortcutMLP"):
        D.shortcut_loss(torch.nn.Linear(1, 1), GMM, 8)
    with pytest.raises(ValueError, match="frac_bootstrap must be <= 1"):
        D.shortcut_loss(net, GMM, 8, frac_bootstrap=1.5)
    with pytest.raises(ValueError, match="differ"):
        D.shortcut_loss(net, D.GaussianMixture([1.0], [[0.0, 0.0]], [1.0]), 8)


def _finest_grad(anchor: str) -> float:
    torch.manual_seed(0)
    net = D.ShortcutMLP(hidden=16, n_levels=8, zero_level=anchor == "zero")
    loss = D.shortcut_loss(net, GMM, 256, torch.Generator().manual_seed(0), anchor=anchor)
    loss.backward()
    return net.d_embed.weight.grad[7].abs().max().item()


def test_finest_level_gets_no_gradient_under_the_literal_reading():
    # d = 2^-7 appears only inside the stop-gradient target when flow matching sits at d = 0
    assert _finest_grad("zero") == 0.0
    assert _finest_grad("finest") > 1e-6


def test_stop_gradient_target_gets_no_gradient_from_bootstrap_only_batches():
    # all samples bootstrap: the half-step level K is used only inside no_grad, level 0 never
    torch.manual_seed(1)
    net = D.ShortcutMLP(hidden=16, n_levels=2)
    D.shortcut_loss(net, GMM, 64, torch.Generator().manual_seed(1), frac_bootstrap=1.0).backward()
    g = net.d_embed.weight.grad
    assert g[1].abs().max() == 0.0 and g[0].abs().max() > 0.0


def test_loss_is_the_flow_matching_loss_when_there_is_no_bootstrap():
    torch.manual_seed(2)
    net = D.ShortcutMLP(hidden=8, n_levels=3)
    gen = torch.Generator().manual_seed(5)
    loss = D.shortcut_loss(net, GMM, 50, gen, frac_bootstrap=0.0).item()
    gen = torch.Generator().manual_seed(5)
    x1 = GMM.sample(50, gen).float()
    x0 = torch.randn(x1.shape, generator=gen)
    t = torch.rand(50, generator=gen)
    xt = (1 - t) * x0 + t * x1
    expect = ((net(xt, t, 2) - (x1 - x0)) ** 2).mean().item()
    assert loss == pytest.approx(expect, rel=1e-6)


# -- training and sampling ----------------------------------------------------------------

def test_sampler_with_the_ideal_model_is_128_step_euler_at_every_nfe():
    z = _points(30, 4, scale=1.0)
    K = 4
    fine = D.euler(v_star, z, [i / 2**K for i in range(2**K + 1)])
    for n in (1, 2, 4, 16):
        out = D.shortcut_sample(lambda x, t, k: D.shortcut_ideal(v_star, x, t, k, K), z, n)
        assert torch.allclose(out, fine, atol=1e-12, rtol=0)


def test_sampler_rejects_bad_step_counts():
    with pytest.raises(ValueError, match="power of 2"):
        D.shortcut_sample(lambda x, t, k: x, torch.zeros(3), 3)
    with pytest.raises(ValueError, match="nsteps must be >= 1"):
        D.shortcut_sample(lambda x, t, k: x, torch.zeros(3), 0)


def test_training_is_deterministic_and_beats_one_euler_step():
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    a = D.train_shortcut(GMM, steps=300, seed=3, hidden=32)
    b = D.train_shortcut(GMM, steps=300, seed=3, hidden=32)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    z = _points(2000, 5, scale=1.0)
    data = GMM.sample(2000, torch.Generator().manual_seed(6))
    one = D.w1_1d(D.shortcut_sample(a, z, 1), data)
    naive = D.w1_1d(D.euler(v_star, z, [0.0, 1.0]), data)
    assert naive > 1.3 and one < 0.8 * naive


class _RecordingMLP(D.ShortcutMLP):
    """A ShortcutMLP that records the inputs and outputs of every forward call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def forward(self, x, t, k):
        out = super().forward(x, t, k)
        self.calls.append((x.detach().clone(), torch.as_tensor(t).detach().clone(),
                           torch.as_tensor(k).clone(), out.detach().clone()))
        return out


def test_bootstrap_target_is_the_corrected_self_consistency():
    # all samples bootstrap: calls are (x, t, eps level), (x~, t + eps, eps level), then the
    # graded pass at the 2 eps level; the loss is the squared error to the average velocity
    torch.manual_seed(4)
    net = _RecordingMLP(hidden=16, n_levels=8)
    loss = D.shortcut_loss(net, GMM, 512, torch.Generator().manual_seed(4), frac_bootstrap=1.0)
    (x, t, kh, s1), (x2, t2, kh2, s2), (x3, t3, k3, pred) = net.calls
    eps = 2.0 ** -kh.double()
    assert torch.equal(kh, kh2) and kh.min() >= 1 and kh.max() <= 7
    assert set(kh.tolist()) == set(range(1, 8))                  # every half step is drawn
    assert torch.allclose(t2.double(), t.double() + eps, atol=1e-7)  # t + eps (erratum)
    assert torch.allclose(x2, x + eps.float() * s1, atol=1e-6)   # x~ = x + eps s(x, t, eps)
    assert torch.equal(k3, kh - 1) and torch.equal(t3, t) and torch.equal(x3, x)
    slots = t.double() / (2 * eps)                               # t on the grid of 2 eps
    assert torch.allclose(slots, slots.round(), atol=1e-6)
    assert (t.double() + 2 * eps).max() <= 1 + 1e-7 and t.min() >= 0
    expect = ((pred - 0.5 * (s1 + s2)) ** 2).sum() / 512
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)


def test_flow_matching_samples_sit_at_the_chosen_anchor():
    for anchor, row in (("finest", 3), ("zero", 4)):
        net = _RecordingMLP(hidden=8, n_levels=4, zero_level=anchor == "zero")
        D.shortcut_loss(net, GMM, 40, torch.Generator().manual_seed(0), frac_bootstrap=0.25,
                        anchor=anchor)
        k_all = net.calls[-1][2]
        assert (k_all[:30] == row).all() and (k_all[30:] < 3).all()


def test_single_level_net_trains_on_flow_matching_only():
    # n_levels = 1: there is no half step to bootstrap from (K = 0), so every sample regresses
    # on x1 - x0, whatever frac_bootstrap says
    torch.manual_seed(0)
    net = D.ShortcutMLP(hidden=8, n_levels=1)
    loss = D.shortcut_loss(net, GMM, 16, torch.Generator().manual_seed(3), frac_bootstrap=0.5)
    g = torch.Generator().manual_seed(3)               # the same draws, the loss written out
    x1 = GMM.sample(16, g).float()
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.rand(16, generator=g)
    ref = ((net((1 - t) * x0 + t * x1, t, torch.zeros(16, dtype=torch.long)) - (x1 - x0)) ** 2
           ).sum() / 16
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)


def test_mixed_batch_loss_written_out():
    # frac_bootstrap = 0.25 of 64: the first 48 samples flow-match at level K on their own pairs,
    # the last 16 bootstrap on the remaining pairs; the loss written out from the same draws
    torch.manual_seed(6)
    net = D.ShortcutMLP(hidden=16, n_levels=4)
    loss = D.shortcut_loss(net, GMM, 64, torch.Generator().manual_seed(9), frac_bootstrap=0.25)
    g = torch.Generator().manual_seed(9)
    x1 = GMM.sample(64, g).float()
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.rand(48, generator=g)
    kh = torch.randint(1, 4, (16,), generator=g)
    eps = 2.0 ** -kh.float()
    tb = torch.floor(torch.rand(16, generator=g) * 2.0 ** (kh - 1).float()) * 2 * eps
    with torch.no_grad():
        xb = (1 - tb) * x0[48:] + tb * x1[48:]
        s1 = net(xb, tb, kh)
        target = 0.5 * (s1 + net(xb + eps * s1, tb + eps, kh))
    fm = ((net((1 - t) * x0[:48] + t * x1[:48], t, 3) - (x1[:48] - x0[:48])) ** 2).sum()
    boot = ((net(xb, tb, kh - 1) - target) ** 2).sum()
    torch.testing.assert_close(loss, (fm + boot) / 64, rtol=1e-5, atol=0)


def test_bootstrap_times_cover_every_slot_of_the_grid():
    # the starting times of half step eps are the multiples of 2 eps in [0, 1): all of them occur
    net = _RecordingMLP(hidden=8, n_levels=5)
    D.shortcut_loss(net, GMM, 4000, torch.Generator().manual_seed(1), frac_bootstrap=1.0)
    _, t, kh, _ = net.calls[0]
    for k in range(1, 5):
        slots = (t[kh == k].double() * 2.0 ** (k - 1)).round().long()
        assert set(slots.tolist()) == set(range(2 ** (k - 1)))


def test_mlp_rejects_times_and_levels_of_the_wrong_length():
    net = D.ShortcutMLP(hidden=8, n_levels=3)
    x = torch.zeros(5)
    with pytest.raises(ValueError, match=r"t must be a number or have shape \(5,\)"):
        net(x, torch.zeros(4), 0)
    with pytest.raises(ValueError, match=r"k must be an int or have shape \(5,\)"):
        net(x, 0.5, torch.zeros(4, dtype=torch.long))
    # a 0-d tensor is a single time (and level) for every point
    assert torch.equal(net(x, torch.tensor(0.5), torch.tensor(1)), net(x, 0.5, 1))


def test_shortcut_sample_names_z_for_a_shortcut_net():
    net = D.ShortcutMLP(hidden=8, n_levels=2)
    for z in (torch.tensor(0.5), torch.zeros(1, 20)):
        with pytest.raises(ValueError, match="z must have shape \\(n, 1\\) or \\(n,\\)"):
            D.shortcut_sample(net, z, 2)
    net2 = D.ShortcutMLP(dim=2, hidden=8, n_levels=2)
    with pytest.raises(ValueError, match="z must have shape \\(n, 2\\)"):
        D.shortcut_sample(net2, torch.zeros(5), 2)
    assert D.shortcut_sample(net2, torch.zeros(5, 2), 2).shape == (5, 2)


# -- referee findings --------------------------------------------------------------------------

def test_shortcut_mlp_rejects_a_float_level():
    net = D.ShortcutMLP(1, 8, 3)
    x = torch.linspace(-1, 1, 4)
    for k in (0.25, torch.full((4,), 0.25), True):
        with pytest.raises(TypeError, match="k must be an int"):
            net(x, 0.5, k)
    assert torch.equal(net(x, 0.5, torch.full((4,), 2, dtype=torch.int32)), net(x, 0.5, 2))


def test_euler_and_shortcut_ideal_reject_non_finite_points():
    for bad in (math.nan, math.inf):
        pts = torch.tensor([0.0, bad], dtype=F64)
        with pytest.raises(ValueError, match="x must be finite"):
            D.euler(lambda y, t: -y, pts, [0.0, 1.0])
        with pytest.raises(ValueError, match="x must be finite"):
            D.shortcut_ideal(lambda y, t: -y, pts, 0.0, 0, 1)
