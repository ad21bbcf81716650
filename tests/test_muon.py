"""Tests of dlmath.optim.Muon against torch.optim.Muon and its rule computed in float32."""

from __future__ import annotations

import math

import pytest
import torch

from dlmath.device import generator
from dlmath.msign import msign, polar
from dlmath.optim import Muon, spectral_decay_
from dlmath.optim.muon import lr_ratio

JORDAN = (3.4445, -4.7750, 2.0315)


def gen(seed: int) -> torch.Generator:
    return generator(seed, "cpu")


def reference_ns(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """torch.optim.Muon's Newton–Schulz (transpose, normalise, addmm iterations) in float32."""
    a, b, c = JORDAN
    X = G.float()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if tall else X


def reference_step(W, buf, G, *, lr, wd, beta, nesterov, adjust):
    """One step of torch.optim.Muon's rule (its _single_tensor_muon), NS in float32."""
    buf = buf.lerp(G, 1 - beta)
    direction = G.lerp(buf, beta) if nesterov else buf
    ortho = reference_ns(direction)
    n, m = W.shape
    ratio = {"original": math.sqrt(max(1, n / m)), "match_rms_adamw": 0.2 * math.sqrt(max(n, m)),
             None: 1.0}[adjust]
    return W * (1 - lr * wd) - lr * ratio * ortho, buf


CONFIGS = [
    dict(shape=(48, 24), nesterov=True, adjust="original", wd=0.1),
    dict(shape=(24, 48), nesterov=False, adjust="match_rms_adamw", wd=0.0),
    dict(shape=(32, 32), nesterov=True, adjust="match_rms_adamw", wd=0.05),
    dict(shape=(40, 8), nesterov=False, adjust=None, wd=0.2),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_muon_matches_torch_rule_in_float32(cfg):
    lr, beta = 0.02, 0.9
    W = torch.randn(*cfg["shape"], generator=gen(0))
    p = W.clone().requires_grad_()
    opt = Muon([p], lr=lr, weight_decay=cfg["wd"], momentum=beta, nesterov=cfg["nesterov"],
               adjust_lr=cfg["adjust"])
    ref, buf = W.clone(), torch.zeros_like(W)
    g = gen(1)
    for t in range(6):
        G = torch.randn(*W.shape, generator=g)
        p.grad = G.clone()
        opt.step()
        ref, buf = reference_step(ref, buf, G, lr=lr, wd=cfg["wd"], beta=beta,
                                  nesterov=cfg["nesterov"], adjust=cfg["adjust"])
        torch.testing.assert_close(p.detach(), ref, atol=2e-6, rtol=1e-5, msg=f"step {t}")
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, atol=0, rtol=0)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_muon_agrees_with_torch_optim_muon(cfg):
    """torch.optim.Muon casts Newton–Schulz to bf16: agreement to bf16 accuracy, step by step."""
    lr, beta = 0.02, 0.95
    W = torch.randn(*cfg["shape"], generator=gen(2))
    ours, theirs = W.clone().requires_grad_(), W.clone().requires_grad_()
    kw = dict(lr=lr, weight_decay=cfg["wd"], momentum=beta, nesterov=cfg["nesterov"])
    adjust = cfg["adjust"]
    if adjust is None:  # torch.optim.Muon has no "no adjustment" option; compare "original"
        adjust = "original"
    opt_a = Muon([ours], adjust_lr=adjust, **kw)
    opt_b = torch.optim.Muon([theirs], adjust_lr_fn=adjust, **kw)
    g = gen(3)
    worst = 0.0
    for _ in range(6):
        G = torch.randn(*W.shape, generator=g)
        before = theirs.detach().clone()
        ours.grad, theirs.grad = G.clone(), G.clone()
        # same starting point each step, so per-step differences do not accumulate
        with torch.no_grad():
            ours.copy_(before)
        opt_a.step()
        opt_b.step()
        da, db = ours.detach() - before, theirs.detach() - before
        worst = max(worst, ((da - db).norm() / db.norm()).item())
        torch.testing.assert_close(opt_a.state[ours]["momentum_buffer"],
                                   opt_b.state[theirs]["momentum_buffer"], atol=0, rtol=0)
    assert worst < 0.03, worst  # bf16 has 8 bits of mantissa: ~1-2% on a 5-step NS


def test_defaults_match_torch_optim_muon():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    ours = Muon([p]).defaults
    theirs = torch.optim.Muon([p]).defaults
    for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_steps"):
        assert ours[key] == theirs[key], key
    assert ours["coefficients"] == (tuple(theirs["ns_coefficients"]),) * 5
    assert ours["adjust_lr"] == "original"  # torch's None means "original"


def test_lr_ratio():
    assert lr_ratio(None, (512, 128)) == 1.0
    assert lr_ratio("original", (512, 128)) == 2.0
    assert lr_ratio("original", (128, 512)) == 1.0
    assert lr_ratio("match_rms_adamw", (128, 512)) == pytest.approx(0.2 * math.sqrt(512))
    # the Moonlight factor makes the RMS of an exact full-rank msign equal to 0.2
    for shape in ((64, 16), (16, 64), (30, 30)):
        Q = polar(torch.randn(*shape, generator=gen(4), dtype=torch.float64))
        rms = Q.norm() / math.sqrt(Q.numel())
        assert abs(lr_ratio("match_rms_adamw", shape) * rms.item() - 0.2) < 1e-12
    assert lr_ratio("original", torch.Size([512, 128])) == 2.0
    assert lr_ratio("original", (3, 512, 128)) == 2.0          # the last two entries are (n, m)
    assert lr_ratio("match_rms_adamw", (600, 4, 128)) == pytest.approx(0.2 * math.sqrt(128))
    for bad in ((5,), (0, 3), (2.0, 3), (True, 3)):
        with pytest.raises(ValueError, match="shape must end in two positive int sizes"):
            lr_ratio(None, bad)


def test_momentum_zero_is_plain_msign_step():
    W = torch.randn(12, 20, generator=gen(5))
    p = W.clone().requires_grad_()
    G = torch.randn(12, 20, generator=gen(6))
    p.grad = G
    Muon([p], lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, adjust_lr=None,
         coefficients="polar_express", ns_steps=8).step()
    torch.testing.assert_close(p.detach(), W - 0.1 * polar(G), atol=1e-5, rtol=0)


def test_zero_gradient_and_skipped_parameters():
    W = torch.randn(6, 4, generator=gen(7))
    p, q = W.clone().requires_grad_(), W.clone().requires_grad_()
    opt = Muon([q, p], lr=0.1, weight_decay=0.5)   # the one without a grad first: p still steps
    p.grad = torch.zeros_like(W)  # zero momentum -> zero update, only weight decay acts
    opt.step()
    torch.testing.assert_close(p.detach(), (1 - 0.05) * W)
    assert torch.equal(q.detach(), W) and q not in opt.state  # no grad: untouched


def test_spectral_decay_option_uses_warm_started_power_iteration():
    g = gen(8)
    U, _ = torch.linalg.qr(torch.randn(16, 8, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    sigma = torch.tensor([5.0, 2.0, 1.5, 1.0, 0.8, 0.5, 0.3, 0.1], dtype=torch.float64)
    W = (U * sigma) @ V.T
    p = W.clone().requires_grad_()
    opt = Muon([p], lr=0.1, weight_decay=0.0, spectral_decay=0.5, spectral_iters=2)
    W_ref, v = W.clone(), None
    for _ in range(5):
        p.grad = torch.zeros_like(W)  # isolate the decay: msign(0) = 0
        opt.step()
        v = spectral_decay_(W_ref, 0.1, 0.5, v=v, iters=2)
        torch.testing.assert_close(p.detach(), W_ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(opt.state[p]["spectral_v"], v, atol=1e-12, rtol=0)
    # the top singular value shrank by about (1 - 0.05)^5, the rest did not move
    s = torch.linalg.svdvals(p.detach())
    assert abs(s[0].item() - 5.0 * 0.95**5) < 0.05
    torch.testing.assert_close(s[1:], sigma[1:], atol=0.05, rtol=0)


def test_training_reduces_loss():
    """Muon on a small least-squares problem: the loss falls a hundredfold."""
    g = gen(9)
    X, W_star = torch.randn(256, 32, generator=g), torch.randn(32, 16, generator=g)
    Y = X @ W_star
    W = torch.zeros(32, 16, requires_grad=True)
    opt = Muon([W], lr=0.05, weight_decay=0.0, adjust_lr="match_rms_adamw", momentum=0.9)

    def loss():
        return ((X @ W - Y) ** 2).mean()

    first = loss().item()
    for t in range(300):
        opt.param_groups[0]["lr"] = 0.05 * (1 - t / 300)
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 1e-2 * first


def test_state_dict_round_trip():
    p = torch.nn.Parameter(torch.randn(5, 3, generator=gen(10)))
    opt = Muon([p], lr=0.01)
    p.grad = torch.randn(5, 3, generator=gen(11))
    opt.step()
    opt2 = Muon([p], lr=0.01)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_float64_parameters_stay_float64():
    p = torch.nn.Parameter(torch.randn(6, 9, generator=gen(12), dtype=torch.float64))
    p.grad = torch.randn(6, 9, generator=gen(13), dtype=torch.float64)
    W = p.detach().clone()
    Muon([p], lr=0.1, momentum=0.0, weight_decay=0.0, adjust_lr=None).step()
    assert p.dtype == torch.float64
    torch.testing.assert_close(p.detach(), W - 0.1 * msign(p.grad), atol=1e-14, rtol=0)


@pytest.mark.parametrize("override, error, match", [
    ({"lr": -1.0}, ValueError, "lr must be >= 0"),
    ({"momentum": 1.0}, ValueError, "momentum must be < 1"),
    ({"momentum": -0.5}, ValueError, "momentum must be >= 0"),
    ({"weight_decay": float("nan")}, ValueError, "weight_decay must be finite"),
    ({"ns_steps": 0}, ValueError, "ns_steps must be >= 1"),
    ({"coefficients": "nope"}, ValueError, "coefficients must be one of"),
    ({"adjust_lr": "sqrt"}, ValueError, "adjust_lr must be one of"),
    ({"spectral_decay": -1.0}, ValueError, "spectral_decay must be >= 0"),
    ({"spectral_iters": 1.5}, TypeError, "spectral_iters must be an int"),
])
def test_group_overrides_are_checked(override, error, match):
    """A parameter group's own hyperparameters get the constructor's checks, at construction
    and in add_param_group, and a refused group is not kept."""
    a, b = torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(error, match=match):
        Muon([{"params": [a]}, {"params": [b], **override}])
    opt = Muon([a])
    with pytest.raises(error, match=match):
        opt.add_param_group({"params": [b], **override})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="Muon only takes 2-D parameters"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    opt.add_param_group({"params": [b], "lr": 0.5, "ns_steps": 3})  # a valid override is kept
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.5]


def test_bad_input():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="Muon only takes 2-D parameters"):
        Muon([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="adjust_lr must be one of"):
        Muon([p], adjust_lr="sqrt")
    with pytest.raises(ValueError, match="lr must be >= 0"):
        Muon([p], lr=-1.0)
    with pytest.raises(ValueError, match="momentum must be < 1"):
        Muon([p], momentum=1.0)
    with pytest.raises(ValueError, match="momentum must be <= 1"):
        Muon([p], momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        Muon([p], weight_decay=-0.1)
    with pytest.raises(ValueError, match="coefficients must be one of"):
        Muon([p], coefficients="nope")
    with pytest.raises(TypeError, match="ns_steps must be an int"):
        Muon([p], ns_steps=2.0)
    p.grad = torch.tensor([[1.0, float("nan")], [0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="must be finite"):
        Muon([p]).step()
    # validate=False skips the check (no host sync on a GPU): NaN propagates, as in torch.optim
    q = torch.nn.Parameter(torch.ones(3, 2))
    q.grad = p.grad.clone()
    Muon([q], validate=False).step()
    assert q.isnan().any()
    emb = torch.nn.Embedding(4, 3, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(TypeError, match="sparse gradients"):
        Muon(emb.parameters()).step()


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (64, 64)])
def test_bf16_newton_schulz_matches_torch_optim_muon(shape):
    # with ns_dtype=bfloat16 (allowed on every device) both optimizers run the same bf16
    # products, so up to aspect 1.5 (where msign takes its plain path) three steps with
    # momentum are bit-identical; the performance appendix says so
    W = torch.randn(*shape, generator=gen(40))
    ours, theirs = W.clone().requires_grad_(), W.clone().requires_grad_()
    opt_a = Muon([ours], lr=0.02, ns_dtype=torch.bfloat16)
    opt_b = torch.optim.Muon([theirs], lr=0.02)
    g = gen(41)
    for _ in range(3):
        G = torch.randn(*shape, generator=g)
        ours.grad, theirs.grad = G.clone(), G.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(ours, theirs)
    assert ours.dtype == torch.float32


def test_bf16_gram_path_stays_close_to_torch_optim_muon():
    # beyond aspect 1.5 msign's Gram path forms other bf16 products: about 2% apart
    W = torch.randn(200, 64, generator=gen(42))
    ours, theirs = W.clone().requires_grad_(), W.clone().requires_grad_()
    opt_a = Muon([ours], lr=0.02, ns_dtype=torch.bfloat16)
    opt_b = torch.optim.Muon([theirs], lr=0.02)
    G = torch.randn(200, 64, generator=gen(43))
    ours.grad, theirs.grad = G.clone(), G.clone()
    opt_a.step()
    opt_b.step()
    da, db = ours.detach() - W, theirs.detach() - W
    assert ((da - db).norm() / db.norm()).item() < 0.05


def test_step_with_a_closure_returns_the_loss_and_takes_the_same_step():
    W = torch.randn(6, 9, generator=gen(7))
    X = torch.randn(9, 4, generator=gen(8))
    p = W.clone().requires_grad_()
    q = W.clone().requires_grad_()
    kw = dict(lr=0.1, momentum=0.0, weight_decay=0.0, adjust_lr=None)
    opt = Muon([p], **kw)

    def closure():
        opt.zero_grad()
        loss = (p @ X).square().sum()
        loss.backward()           # needs grad mode although step() runs under no_grad
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.item() == pytest.approx((W @ X).square().sum().item(), rel=1e-6)
    q.grad = 2 * (W @ X) @ X.T    # the gradient of sum((W X)^2), by hand
    Muon([q], **kw).step()
    torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=0)


def test_integer_parameters_are_refused():
    with pytest.raises(TypeError, match="Muon needs floating parameters; parameter 1 has "
                                        "dtype torch.int64"):
        Muon([torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.long)])


def test_group_overriding_ns_steps_runs_the_schedules_own_later_steps():
    # a per-step schedule resolved for 5 steps must not repeat its 5th triple when a group
    # asks for 8 steps: the group gets exactly msign(G, 8, "polar_express")
    G = torch.randn(10, 16, generator=gen(50), dtype=torch.float64)
    W = torch.randn(10, 16, generator=gen(51), dtype=torch.float64)
    p = W.clone().requires_grad_()
    opt = Muon([{"params": [p], "ns_steps": 8}], lr=0.1, momentum=0.0, nesterov=False,
               weight_decay=0.0, adjust_lr=None, coefficients="polar_express")
    assert opt.defaults["ns_steps"] == 5 and len(opt.defaults["coefficients"]) == 8
    p.grad = G.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), W - 0.1 * msign(G, 8, "polar_express"),
                               atol=1e-14, rtol=0)
    # and 8 Polar Express steps are msign to rounding here, unlike 5 steps with a repeated 5th
    torch.testing.assert_close(p.detach(), W - 0.1 * polar(G), atol=1e-12, rtol=0)
    # a schedule given as a list keeps all its triples too
    seq = [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5), (1.875, -1.25, 0.375)]
    assert Muon([p], coefficients=seq, ns_steps=2).defaults["coefficients"] == tuple(seq)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

@pytest.mark.parametrize("ns_dtype", ["float32", torch.int32, torch.complex64])
def test_fuzz_muon_refuses_a_non_floating_ns_dtype(ns_dtype):
    """Accepted before, and only the first step failed, with an error naming msign's dtype."""
    W = torch.nn.Parameter(torch.randn(4, 3, generator=gen(0)))
    with pytest.raises(TypeError, match="ns_dtype must be None or one of"):
        Muon([W], ns_dtype=ns_dtype)
    opt = Muon([W])
    with pytest.raises(TypeError, match="ns_dtype"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, 2))],
                             "ns_dtype": ns_dtype})
    assert len(opt.param_groups) == 1


def test_fuzz_muon_refuses_a_generator_that_is_not_one():
    W = torch.nn.Parameter(torch.randn(4, 3, generator=gen(0)))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        Muon([W], spectral_decay=0.1, generator=3)


# -- gaps found by mutation testing ---------------------------------------------------------

def test_spectral_decay_defaults_to_one_power_iteration_per_step():
    # spectral_iters defaults to 1 warm-started power-iteration step per optimizer step; the
    # other spectral test passes spectral_iters=2 explicitly
    g = gen(14)
    W = torch.randn(12, 7, generator=g, dtype=torch.float64)
    p = W.clone().requires_grad_()
    opt = Muon([p], lr=0.1, weight_decay=0.0, spectral_decay=0.5)
    one, two, v1, v2 = W.clone(), W.clone(), None, None
    for _ in range(3):
        p.grad = torch.zeros_like(W)  # isolate the decay: msign(0) = 0
        opt.step()
        v1 = spectral_decay_(one, 0.1, 0.5, v=v1, iters=1)
        v2 = spectral_decay_(two, 0.1, 0.5, v=v2, iters=2)
        torch.testing.assert_close(p.detach(), one, atol=1e-12, rtol=0)
        torch.testing.assert_close(opt.state[p]["spectral_v"], v1, atol=1e-12, rtol=0)
    assert (one - two).abs().max().item() > 1e-6  # the number of iterations is visible


def test_a_group_loaded_without_the_validate_key_still_validates():
    # a state dict whose groups lack "validate" (saved before the option existed) keeps the
    # documented default validate=True: a NaN gradient raises instead of poisoning the weights
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = Muon([p])
    sd = opt.state_dict()
    del sd["param_groups"][0]["validate"]
    opt.load_state_dict(sd)
    assert "validate" not in opt.param_groups[0]
    p.grad = torch.tensor([[1.0, float("nan")], [0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="must be finite"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3, 2))
