"""Tests of dlmath.penalties: the input- versus parameter-gradient inequality."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import penalties as P
from dlmath.device import generator

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


def _gen(seed):
    return generator(seed, "cpu")


def _smooth_f(v):
    return lambda h: torch.sin(h @ v) + 0.1 * h.pow(2).sum()


@st.composite
def networks(draw):
    depth = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 8), min_size=depth + 1, max_size=depth + 1))
    acts = draw(st.lists(st.sampled_from(sorted(P.ACTIVATIONS)), min_size=depth,
                         max_size=depth))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    g = _gen(draw(st.integers(0, 2**31)))
    Ws, bs = P.random_mlp(widths, generator=g, scale=scale, bias_scale=0.5)
    x = torch.randn(widths[0], generator=g, dtype=F64)
    v = torch.randn(widths[-1], generator=g, dtype=F64)
    return x, Ws, bs, acts, _smooth_f(v)


def test_rank_one_gradients_against_autograd():
    g = _gen(0)
    Ws, bs = P.random_mlp([5, 7, 6, 3], generator=g)
    x = torch.randn(5, generator=g, dtype=F64, requires_grad=True)
    Ws = [W.requires_grad_() for W in Ws]
    bs = [b.requires_grad_() for b in bs]
    v = torch.randn(3, generator=g, dtype=F64)
    hs, zs = P.mlp_forward(x, Ws, bs, "tanh")
    f = _smooth_f(v)(hs[-1])
    grads = torch.autograd.grad(f, [x, *Ws, *bs, *zs])
    gx, gW, gb, deltas = grads[0], grads[1:4], grads[4:7], grads[7:]
    for t in range(3):
        J = torch.autograd.functional.jacobian(
            lambda u, t=t: P.mlp_forward(u, Ws, bs, "tanh")[0][t], x.detach())
        assert torch.allclose(gW[t], torch.outer(deltas[t], hs[t].detach()), atol=1e-12)
        assert torch.allclose(gb[t], deltas[t], atol=1e-12)
        assert torch.allclose(gx, J.T @ Ws[t].detach().T @ deltas[t], atol=1e-12)


@SETTINGS
@given(networks(), st.sampled_from(["spectral", "fro"]))
def test_inequality_holds_for_mlps(net, norm):
    x, Ws, bs, acts, f = net
    T = P.penalty_terms(x, Ws, bs, acts, f, norm=norm)
    assert torch.isfinite(T.weight_terms).all() and torch.isfinite(T.bias_terms).all()
    assert (T.weight_terms <= T.weight_grad_sq * (1 + 1e-10) + 1e-300).all()
    assert (T.bias_terms <= T.bias_grad_sq * (1 + 1e-10) + 1e-300).all()
    assert T.ratio <= 1 + 1e-10


@SETTINGS
@given(networks())
def test_frobenius_version_is_weaker(net):
    x, Ws, bs, acts, f = net
    spec = P.penalty_terms(x, Ws, bs, acts, f, norm="spectral")
    fro = P.penalty_terms(x, Ws, bs, acts, f, norm="fro")
    assert fro.lhs <= spec.lhs * (1 + 1e-12) + 1e-300
    assert torch.allclose(fro.rhs, spec.rhs, rtol=1e-14, atol=0)


def test_jacobians_match_the_chain_rule():
    g = _gen(1)
    Ws, bs = P.random_mlp([4, 6, 5], generator=g)
    x = torch.randn(4, generator=g, dtype=F64)
    T = P.penalty_terms(x, Ws, bs, "tanh", lambda h: h.sum())
    z2 = Ws[0] @ x + bs[0]
    J2 = torch.diag(1 - torch.tanh(z2) ** 2) @ Ws[0]
    assert abs(T.jacobian_norms[0] - 1) < 1e-15
    assert abs(T.jacobian_norms[1] - torch.linalg.matrix_norm(J2, 2)) < 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_equality_for_one_linear_layer(seed):
    g = _gen(seed)
    (W,), (b,) = P.random_mlp([6, 4], generator=g)
    x = torch.randn(6, generator=g, dtype=F64)
    u = torch.linalg.svd(W).U[:, 0]
    T = P.penalty_terms(x, [W], [b], "identity", lambda h: h @ u)
    assert abs(T.ratio.item() - 1) < 1e-12
    u2 = u + 0.3 * torch.linalg.svd(W).U[:, 1]
    assert P.penalty_terms(x, [W], [b], "identity", lambda h: h @ u2).ratio < 1 - 1e-3


def test_ratio_does_not_depend_on_the_scale_of_f():
    # both sides scale with c^2: lhs / rhs is 1 for the top singular direction at any scale,
    # also when rhs < 1
    g = _gen(8)
    (W,), (b,) = P.random_mlp([5, 3], generator=g)
    x = torch.randn(5, generator=g, dtype=F64)
    u = torch.linalg.svd(W).U[:, 0]
    for c in (1e-3, 1e3):
        T = P.penalty_terms(x, [W], [b], "identity", lambda h, c=c: c * (h @ u))
        expected_rhs = c**2 * (1 + x.pow(2).sum())  # grad_W f = c u x^T, grad_b f = c u
        assert torch.isclose(T.rhs, expected_rhs, rtol=1e-12, atol=0)
        assert abs(T.ratio.item() - 1) < 1e-12


def test_dead_relus_give_defined_zero_terms():
    g = _gen(2)
    Ws, bs = P.random_mlp([3, 4, 4, 2], generator=g)
    bs[0] = torch.full((4,), -100.0, dtype=F64)  # every unit of layer 1 is dead
    x = torch.randn(3, generator=g, dtype=F64)
    T = P.penalty_terms(x, Ws, bs, "relu", lambda h: h.sum() + 1.0)
    assert T.input_grad_sq.item() == 0.0
    assert T.jacobian_norms[1:].eq(0).all()
    assert T.weight_terms.eq(0).all() and T.bias_terms.eq(0).all()
    assert T.ratio.item() == 0.0
    naive = T.input_grad_sq / (T.weight_norms**2 * T.jacobian_norms**2)
    assert torch.isnan(naive[1:]).all()


def test_zero_weight_gives_defined_zero_terms():
    # the docstring's other 0/0 case: W_1 = 0 makes ||W_1|| = 0 and J_2 = 0, so grad_x f = 0
    g = _gen(9)
    Ws, bs = P.random_mlp([3, 4, 2], generator=g)
    Ws[0] = torch.zeros(4, 3, dtype=F64)
    x = torch.randn(3, generator=g, dtype=F64)
    T = P.penalty_terms(x, Ws, bs, "tanh", lambda h: h.sum())
    assert T.input_grad_sq.item() == 0.0
    assert T.weight_norms[0].item() == 0.0 and T.jacobian_norms[0].item() == 1.0
    assert T.jacobian_norms[1].item() == 0.0
    assert T.weight_terms.eq(0).all() and T.bias_terms.eq(0).all()
    assert T.rhs > 0 and T.ratio.item() == 0.0


def test_zero_denominator_under_nonzero_gradient_gives_inf():
    # residual, W = 0: h_2 = x + tanh(b), so grad_x f = v while ||W|| = 0; a term is inf when
    # its numerator ||grad_x f||^2 (||h_1||^2) is > 0 and 0 when it is 0 (x = 0)
    g = _gen(10)
    W = torch.zeros(4, 4, dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    v = torch.full((4,), 0.25, dtype=F64)  # ||v|| = 0.5
    for x, weight_term in ((torch.full((4,), 0.25, dtype=F64), torch.inf),
                           (torch.zeros(4, dtype=F64), 0.0)):
        T = P.penalty_terms(x, [W], [b], "tanh", lambda h: h @ v, residual=True)
        assert abs(T.input_grad_sq.item() - 0.25) < 1e-15
        assert T.weight_norms.item() == 0.0
        assert T.bias_terms.item() == torch.inf
        assert T.weight_terms.item() == weight_term
        assert T.rhs > 0 and T.ratio.item() == torch.inf


def test_ratio_is_inf_when_only_the_input_gradient_is_nonzero():
    # residual with every ReLU dead: h_2 = x, so grad_theta f = 0 but grad_x f = v
    g = _gen(0)
    (W,), _ = P.random_mlp([4, 4], generator=g)
    b = torch.full((4,), -100.0, dtype=F64)
    x = torch.full((4,), 0.25, dtype=F64)
    v = torch.full((4,), 0.25, dtype=F64)
    T = P.penalty_terms(x, [W], [b], "relu", lambda h: h @ v, residual=True)
    lhs = v.pow(2).sum() * (1 + x.pow(2).sum()) / torch.linalg.matrix_norm(W, 2) ** 2
    assert 0 < lhs <= 1
    assert torch.isclose(T.lhs, lhs, rtol=1e-12, atol=0)
    assert T.rhs.item() == 0.0
    assert T.ratio.item() == torch.inf


@pytest.mark.parametrize("seed", range(5))
def test_residual_networks_break_it(seed):
    g = _gen(seed)
    (W,), (b,) = P.random_mlp([6, 6], generator=g, scale=0.05)
    x = torch.randn(6, generator=g, dtype=F64)
    v = torch.randn(6, generator=g, dtype=F64)
    T = P.penalty_terms(x, [W], [b], "tanh", lambda h: h @ v, residual=True)
    s = torch.linalg.matrix_norm(W, 2)
    assert T.ratio >= (1 / s - 1) ** 2 * (1 - 1e-12)
    assert T.ratio > 100


def test_residual_forward_adds_each_layer_to_its_input():
    g = _gen(11)
    Ws, bs = P.random_mlp([3, 3, 3], generator=g)
    x = torch.randn(2, 3, generator=g, dtype=F64)
    hs, zs = P.mlp_forward(x, Ws, bs, "tanh", residual=True)
    z2 = x @ Ws[0].T + bs[0]
    h2 = x + torch.tanh(z2)
    z3 = h2 @ Ws[1].T + bs[1]
    h3 = h2 + torch.tanh(z3)
    for got, want in zip(hs + zs, [x, h2, h3, z2, z3], strict=True):
        assert torch.allclose(got, want, rtol=1e-14, atol=1e-14)


def test_random_mlp_is_seeded_and_shaped():
    Ws, bs = P.random_mlp([3, 5, 2], generator=_gen(7), scale=2.0, dtype=torch.float32)
    Ws2, _ = P.random_mlp([3, 5, 2], generator=_gen(7), scale=2.0, dtype=torch.float32)
    assert [W.shape for W in Ws] == [(5, 3), (2, 5)] and [b.shape for b in bs] == [(5,), (2,)]
    assert Ws[0].dtype == torch.float32 and torch.equal(Ws[0], Ws2[0])
    hs, zs = P.mlp_forward(torch.randn(10, 3), Ws, bs, ["relu", "identity"])
    assert [h.shape for h in hs] == [(10, 3), (10, 5), (10, 2)] and len(zs) == 2


def test_bad_input():
    Ws, bs = P.random_mlp([3, 4, 2], generator=_gen(0))
    x = torch.randn(3, dtype=F64)

    def f(h):
        return h.sum()

    with pytest.raises(ValueError, match="acts must be one of"):
        P.penalty_terms(x, Ws, bs, "swish", f)
    with pytest.raises(ValueError, match="acts must be one activation name or 2"):
        P.penalty_terms(x, Ws, bs, ["tanh"], f)
    with pytest.raises(ValueError, match=r"Ws\[0\] must have shape"):
        P.penalty_terms(torch.randn(4, dtype=F64), Ws, bs, "tanh", f)
    with pytest.raises(ValueError, match=r"bs\[1\] must have shape"):
        P.penalty_terms(x, Ws, [bs[0], torch.zeros(3, dtype=F64)], "tanh", f)
    with pytest.raises(ValueError, match="bs must be a sequence of 2"):
        P.penalty_terms(x, Ws, bs[:1], "tanh", f)
    with pytest.raises(ValueError, match="square"):
        P.penalty_terms(x, Ws, bs, "tanh", f, residual=True)
    with pytest.raises(ValueError, match="norm must be one of"):
        P.penalty_terms(x, Ws, bs, "tanh", f, norm="nuclear")
    with pytest.raises(ValueError, match="scalar"):
        P.penalty_terms(x, Ws, bs, "tanh", lambda h: h)
    with pytest.raises(ValueError, match="single input"):
        P.penalty_terms(x[None], Ws, bs, "tanh", f)
    with pytest.raises(ValueError, match="x must be finite"):
        P.penalty_terms(torch.tensor([1.0, float("nan"), 0.0]), Ws, bs, "tanh", f)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        P.penalty_terms(torch.ones(3, dtype=torch.int64), Ws, bs, "tanh", f)
    with pytest.raises(TypeError, match="generator"):
        P.random_mlp([3, 2], generator=0)
    with pytest.raises(ValueError, match="width"):
        P.random_mlp([3, 0], generator=_gen(0))
    with pytest.raises(ValueError, match="scale must be >= 0"):
        P.random_mlp([3, 2], generator=_gen(0), scale=-1.0)


def test_more_bad_input_names_the_argument():
    for widths in ([3], "32", torch.tensor([3, 2]), 3):
        with pytest.raises(ValueError, match="widths must be a sequence of at least two ints"):
            P.random_mlp(widths, generator=_gen(0))
    Ws, bs = P.random_mlp([3, 4, 2], generator=_gen(0))
    x = torch.ones(3, dtype=Ws[0].dtype)
    for bad in (Ws[0], [], None):
        with pytest.raises(TypeError, match="Ws must be a non-empty sequence of weight matrices"):
            P.penalty_terms(x, bad, bs, "tanh", lambda h: h.sum())
    with pytest.raises(TypeError, match=r"f must be callable as f\(h\), mapping the network"):
        P.penalty_terms(x, Ws, bs, "tanh", 1.0)


def _reference_sides(x, Ws, bs, acts, f, ord):
    """Both sides of the inequality from autograd and torch.linalg alone (no 0/0 handling)."""
    xr = x.clone().requires_grad_(True)
    Wr = [W.clone().requires_grad_(True) for W in Ws]
    br = [b.clone().requires_grad_(True) for b in bs]

    def layers(u, upto):
        h = u
        for W, b, a in list(zip(Wr, br, acts, strict=True))[:upto]:
            h = P.ACTIVATIONS[a](W.detach() @ h + b.detach())
        return h

    hs = [xr]
    for W, b, a in zip(Wr, br, acts, strict=True):
        hs.append(P.ACTIVATIONS[a](W @ hs[-1] + b))
    grads = torch.autograd.grad(f(hs[-1]), [xr, *Wr, *br])
    depth = len(Ws)
    gx = grads[0]
    rhs = sum(g.pow(2).sum() for g in grads[1:])
    lhs = 0.0
    for t in range(depth):
        J = torch.autograd.functional.jacobian(lambda u, t=t: layers(u, t), x)
        den = torch.linalg.matrix_norm(Ws[t], ord) ** 2 * torch.linalg.matrix_norm(J, ord) ** 2
        lhs = lhs + gx.pow(2).sum() * (1 + hs[t].detach().pow(2).sum()) / den
    return lhs, rhs


@SETTINGS
@given(networks(), st.sampled_from(["spectral", "fro"]))
def test_both_sides_match_an_independent_computation(net, norm):
    x, Ws, bs, acts, f = net
    acts = ["tanh" if a == "relu" else a for a in acts]  # no dead layers: no 0/0 terms
    T = P.penalty_terms(x, Ws, bs, acts, f, norm=norm)
    lhs, rhs = _reference_sides(x, Ws, bs, acts, f, 2 if norm == "spectral" else "fro")
    assert torch.isclose(T.rhs, rhs, rtol=1e-12, atol=1e-300)
    if torch.isfinite(lhs):
        assert torch.isclose(T.lhs, lhs, rtol=1e-10, atol=1e-300)


def test_random_mlp_uses_fan_in_variance():
    Ws, bs = P.random_mlp([400, 100, 50], generator=_gen(3), scale=2.0, bias_scale=0.3)
    for W in Ws:
        n = W.shape[1]
        assert abs(W.var().item() * n / 4.0 - 1) < 0.05  # N(0, s^2 / fan_in)
    assert abs(torch.cat(bs).std().item() / 0.3 - 1) < 0.15
    with pytest.raises(TypeError, match="dtype must be a floating"):
        P.random_mlp([3, 2], generator=_gen(0), dtype=torch.int64)


def test_random_mlp_default_scales():
    # defaults: s = 1 (LeCun, variance 1 / fan_in) and s_b = 0.1
    Ws, bs = P.random_mlp([400, 100, 50], generator=_gen(12))
    for W in Ws:
        assert abs(W.var().item() * W.shape[1] - 1) < 0.05
    assert abs(torch.cat(bs).std().item() / 0.1 - 1) < 0.15
    assert Ws[0].dtype == bs[0].dtype == F64


def test_terms_survive_extreme_weight_scales():
    # a 2-layer linear net: scaling both weights by s leaves the layer-2 bias term unchanged
    # (s^4 / (s^2 s^2)); with squares formed first it underflowed to 0/0 := 0 at s = 1e-100
    g = _gen(4)
    Ws, bs = P.random_mlp([5, 6, 4], generator=g)
    bs = [torch.zeros_like(b) for b in bs]
    x = torch.randn(5, generator=g, dtype=F64)
    u = torch.randn(4, generator=g, dtype=F64)
    ref = P.penalty_terms(x, Ws, bs, "identity", lambda h: h @ u)
    for s in (1e-100, 1e-150, 1e100):
        T = P.penalty_terms(x, [s * W for W in Ws], bs, "identity", lambda h: h @ u)
        assert torch.isclose(T.bias_terms[1], ref.bias_terms[1], rtol=1e-12, atol=0)
        assert torch.isclose(T.bias_grad_sq[1], ref.bias_grad_sq[1], rtol=1e-12, atol=0)
        assert T.ratio <= 1 + 1e-12


def test_dtypes_are_promoted_and_kept():
    g = _gen(5)
    Ws, bs = P.random_mlp([3, 4, 2], generator=g)
    x = torch.randn(3, generator=g, dtype=F64)

    def f(h):
        return torch.sin(h).sum()

    ref = P.penalty_terms(x, Ws, bs, "tanh", f)
    mixed = P.penalty_terms(x.float(), Ws, bs, "tanh", f)  # float32 input, float64 weights
    assert mixed.lhs.dtype == F64
    assert torch.isclose(mixed.lhs, ref.lhs, rtol=1e-6) and torch.isclose(mixed.rhs, ref.rhs,
                                                                           rtol=1e-6)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        T = P.penalty_terms(x.to(dtype), [W.to(dtype) for W in Ws], [b.to(dtype) for b in bs],
                            "tanh", f)
        assert T.lhs.dtype == T.weight_norms.dtype == dtype
        tol = 30 * torch.finfo(dtype).eps
        assert abs(T.lhs.double() / ref.lhs - 1) < tol and abs(T.rhs.double() / ref.rhs - 1) < tol
    hs, _ = P.mlp_forward(x.float(), Ws, bs, "tanh")
    assert hs[-1].dtype == F64


def test_f_without_gradient_and_nonfinite_f():
    Ws, bs = P.random_mlp([3, 4, 2], generator=_gen(6))
    x = torch.ones(3, dtype=F64)
    T = P.penalty_terms(x, Ws, bs, "tanh", lambda h: torch.tensor(2.0, dtype=F64))
    assert T.input_grad_sq.item() == 0.0 and T.rhs.item() == 0.0 and T.ratio.item() == 0.0
    with pytest.raises(ValueError, match="f must be finite"):
        P.penalty_terms(x, Ws, bs, "tanh", lambda h: h.sum() * float("nan"))
    with pytest.raises(ValueError, match="gradients of f must be finite"):
        P.penalty_terms(x, Ws, bs, "tanh", lambda h: (0 * h.sum()).sqrt())


def test_f_ignoring_h_but_requiring_grad_has_zero_gradients():
    # f's value depends on a tensor of its own, not on h: every gradient is still 0
    Ws, bs = P.random_mlp([3, 4, 2], generator=_gen(6))
    x = torch.ones(3, dtype=F64)
    c = torch.tensor(1.5, dtype=F64, requires_grad=True)
    T = P.penalty_terms(x, Ws, bs, "tanh", lambda h: 2 * c)
    assert T.input_grad_sq.item() == 0.0 and T.rhs.item() == 0.0 and T.ratio.item() == 0.0
    assert T.weight_terms.eq(0).all() and T.bias_terms.eq(0).all()


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

@pytest.mark.parametrize("widths", [[float("nan"), 7, 6, 3], [5, 0, 3], [5, 2.0, 3], [5, True]])
def test_fuzz_random_mlp_names_widths(widths):
    with pytest.raises(ValueError, match=r"^widths must hold ints >= 1"):
        P.random_mlp(widths, generator=generator(0, "cpu"))
