r"""muP and the spectral condition: how initialisation and learning rates scale with width.

Chapters: *muP, a first look* (``notebooks/19-mup-first-look.ipynb``) derives the table
:data:`MUP_TABLE`; *The spectral condition* (``notebooks/20-spectral-condition.ipynb``)
derives the rules :func:`spectral_target`, :func:`spectral_init_std`, :func:`spectral_lr`
and :func:`spectral_update`, and recovers the table from them.

Conventions (those of both posts): row vectors, a layer maps :math:`x \mapsto xW` with
:math:`W \in \mathbb R^{d_{in}\times d_{out}}`, so a weight has shape ``(fan_in, fan_out)``
(the transpose of ``torch.nn.Linear.weight``). The model family is the MLP

.. math:: Y_0 = X W_{in},\quad Y_k = \phi(Y_{k-1} W_k)\ (k = 1..K),\quad Z = Y_K W_{out},

with :math:`W_{in} \in \mathbb R^{d_{in}\times d}`, :math:`W_k \in \mathbb R^{d\times d}`,
:math:`W_{out} \in \mathbb R^{d\times d_{out}}`; only the width :math:`d` grows. The loss is
:math:`\mathcal L = \frac{1}{2b}\sum_{i}\|Z_i - T_i\|^2` over a batch of :math:`b` rows.
Optimizers are modelled by their update directions: SGD by the gradient :math:`G`, Adam by
:math:`\operatorname{sign}(G)` (SignSGD), Muon by :math:`\operatorname{msign}(G)` (exact, by
SVD: :func:`dlmath.msign.polar`).
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    as_float_tensor,
    check_broadcast,
    check_choice,
    check_dim,
    check_finite,
    check_int,
    check_matrix,
    check_real,
    promote,
    upcast_half,
)
from .linalg import spectral_norm
from .msign import msign, polar

__all__ = [
    "OPTIMIZERS",
    "LAYER_KINDS",
    "MUP_TABLE",
    "mup_exponents",
    "mup_multipliers",
    "spectral_target",
    "spectral_init_std",
    "spectral_init",
    "spectral_lr",
    "spectral_normalize",
    "svc",
    "spectral_update",
    "rms",
    "singular_values",
    "matrix_norms",
    "layer_kinds",
    "init_mlp",
    "mlp_features",
    "mse_loss",
    "update_direction",
    "lr_multipliers",
    "one_step",
    "train",
]

#: The optimizers of the table; ``"muon_adam"`` is Muon on hidden matrices and Adam at both ends.
OPTIMIZERS = ("sgd", "adam", "muon", "muon_adam")
#: Layer kinds of the MLP family.
LAYER_KINDS = ("in", "hidden", "out")

#: Exponents of the width :math:`d` in (initial variance, learning rate) per optimizer and layer
#: kind: :math:`\operatorname{Var} W \propto d^{a}`, :math:`\eta \propto d^{c}`. The input layer's
#: variance is :math:`1/d_{in}`, which does not depend on :math:`d` (exponent 0).
MUP_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "sgd": {"in": (0.0, 1.0), "hidden": (-1.0, 0.0), "out": (-2.0, -1.0)},
    "adam": {"in": (0.0, 0.0), "hidden": (-1.0, -1.0), "out": (-2.0, -1.0)},
    "muon": {"in": (0.0, 0.5), "hidden": (-1.0, 0.0), "out": (-2.0, -0.5)},
    "muon_adam": {"in": (0.0, 0.0), "hidden": (-1.0, 0.0), "out": (-2.0, -1.0)},
}

_MODES = ("sn", "svc", "msign")
_PARAMS = ("mup", "sp", "spectral")


def _positive_int(value, name: str) -> int:
    return check_int(value, name, low=1)


def mup_exponents(optimizer: str, layer_kind: str, *, adjust_lr: bool = False
                  ) -> tuple[float, float]:
    r"""Width exponents :math:`(a, c)` with :math:`\operatorname{Var}W \propto d^a`,
    :math:`\eta \propto d^c` (chapter 19's table, :data:`MUP_TABLE`).

    ``adjust_lr=True`` is Moonlight's rule for Muon, whose update on a hidden matrix is already
    multiplied by :math:`0.2\sqrt{\max(n, m)} \propto \sqrt d`; the learning rate then scales
    like :math:`d^{-1/2}` to cancel it (only for ``"muon"``/``"muon_adam"`` hidden layers).
    """
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    check_choice(layer_kind, "layer_kind", LAYER_KINDS)
    var_exp, lr_exp = MUP_TABLE[optimizer][layer_kind]
    if adjust_lr:
        if not optimizer.startswith("muon"):
            raise ValueError(f"adjust_lr only applies to Muon, not optimizer={optimizer!r}")
        if layer_kind == "hidden":
            lr_exp -= 0.5
    return var_exp, lr_exp


def mup_multipliers(optimizer: str, layer_kind: str, d: int, *, d_in: int = 1,
                    d0: int = 1, adjust_lr: bool = False) -> tuple[float, float]:
    r"""Initial variance and learning-rate multiplier of one layer under muP.

    .. math:: \operatorname{Var}W = \begin{cases}1/d_{in} & \text{in}\\ 1/d & \text{hidden}\\
              1/d^2 & \text{out}\end{cases},\qquad \eta\text{-multiplier} = (d/d_0)^{c},

    with :math:`c` from :func:`mup_exponents`; ``d0`` is the base width at which the multiplier
    is 1 (tune there, transfer to ``d``). Returns ``(init_var, lr_mult)`` as floats. Chapter 19.
    """
    d, d_in, d0 = _positive_int(d, "d"), _positive_int(d_in, "d_in"), _positive_int(d0, "d0")
    var_exp, lr_exp = mup_exponents(optimizer, layer_kind, adjust_lr=adjust_lr)
    init_var = 1.0 / d_in if layer_kind == "in" else float(d) ** var_exp
    return init_var, (d / d0) ** lr_exp


def spectral_target(d_in: int, d_out: int) -> float:
    r"""The spectral condition's scale :math:`\sqrt{d_{out}/d_{in}}` for both :math:`\|W\|_2` and
    :math:`\|\Delta W\|_2` (chapter 20)."""
    return math.sqrt(_positive_int(d_out, "d_out") / _positive_int(d_in, "d_in"))


def spectral_init_std(d_in: int, d_out: int) -> float:
    r"""Entry std that gives a Gaussian ``(d_in, d_out)`` matrix :math:`\|W\|_2 \approx
    \sqrt{d_{out}/d_{in}}`, using :math:`\|G\|_2 \approx \sqrt{d_{in}} + \sqrt{d_{out}}`:

    .. math:: \sigma = \sqrt{\frac{d_{out}}{d_{in}}}\,\frac{1}{\sqrt{d_{in}}+\sqrt{d_{out}}}.

    Chapter 20 (its square is :math:`\frac{1}{d_{in}}\min(1, d_{out}/d_{in})` up to a factor in
    :math:`[1/4, 1]`)."""
    return spectral_target(d_in, d_out) / (math.sqrt(d_in) + math.sqrt(d_out))


def spectral_init(d_in: int, d_out: int, *, sigma: float = 1.0, method: str = "gaussian",
                  generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                  device=None) -> torch.Tensor:
    r"""A ``(d_in, d_out)`` weight meeting the spectral condition at initialisation.

    ``method="gaussian"``: iid :math:`N(0, (\sigma s)^2)` entries with :math:`s` from
    :func:`spectral_init_std` (:math:`\|W\|_2 \approx \sigma\sqrt{d_{out}/d_{in}}`);
    ``method="sn"``: a standard Gaussian rescaled exactly, :math:`W = \sigma\sqrt{d_{out}/d_{in}}
    \,G/\|G\|_2`. Without ``device`` the weight is made on the generator's device. Chapter 20.
    """
    check_choice(method, "method", ("gaussian", "sn"))
    sigma = check_real(sigma, "sigma", positive=True)
    if device is None and generator is not None:
        device = generator.device
    G = torch.randn(_positive_int(d_in, "d_in"), _positive_int(d_out, "d_out"),
                    generator=generator, dtype=dtype, device=device)
    if method == "gaussian":
        return G * (sigma * spectral_init_std(d_in, d_out))
    return spectral_normalize(G, sigma * spectral_target(d_in, d_out))


def spectral_lr(optimizer: str, d_in: int, d_out: int) -> float:
    r"""Learning rate (up to a width-free constant) that makes :math:`\|\Delta W\|_2 \asymp
    \sqrt{d_{out}/d_{in}}`, chapter 20:

    .. math:: \eta_{\rm SGD} = d_{out}/d_{in},\qquad \eta_{\rm Adam} = 1/d_{in},\qquad
              \eta_{\rm Muon} = \sqrt{d_{out}/d_{in}} .

    The SGD rule assumes :math:`\|\nabla_W\mathcal L\|_2 \asymp \sqrt{d_{in}/d_{out}}`, the Adam
    rule :math:`\|\operatorname{sign}\nabla\|_2 \asymp \sqrt{d_{in}d_{out}}` (near-low-rank
    gradients only); ``"muon_adam"`` is not accepted (it is a per-layer choice).
    """
    check_choice(optimizer, "optimizer", ("sgd", "adam", "muon"))
    d_in, d_out = _positive_int(d_in, "d_in"), _positive_int(d_out, "d_out")
    return {"sgd": d_out / d_in, "adam": 1.0 / d_in, "muon": math.sqrt(d_out / d_in)}[optimizer]


def spectral_normalize(W, target: float = 1.0) -> torch.Tensor:
    r"""Spectral normalisation :math:`\operatorname{SN}(W) = \text{target}\cdot W/\|W\|_2`
    (exact, by SVD), shape ``(..., n, m)`` kept. The zero matrix is returned unchanged (it has
    no direction to rescale). Computed as :math:`A/\|A\|_2` with :math:`A = W/\max_{ij}|W_{ij}|`
    (in float32 for float16/bfloat16) and cast back, so a norm that would overflow (float16
    entries of ``4e4``) or underflow (float16 ``1e-6``, float32 subnormals) does not turn the
    result into 0 or inf. Chapter 20."""
    W = check_matrix(W, "W")
    target = check_real(target, "target", nonnegative=True)
    A = upcast_half(W)
    m = A.abs().amax(dim=(-2, -1), keepdim=True)
    A = A / torch.where(m > 0, m, 1)
    s = spectral_norm(A).unsqueeze(-1).unsqueeze(-1)
    return torch.where(s > 0, A * (target / torch.where(s > 0, s, 1)), A).to(W.dtype)


def svc(W, cap: float = 1.0) -> torch.Tensor:
    r"""Singular-value clipping :math:`\operatorname{SVC}(W) = U \min(\Sigma, \text{cap}) V^\top`
    (Su's addition in chapter 20). :math:`\operatorname{SVC}(\lambda W) \to
    \text{cap}\cdot\operatorname{msign}(W)` as :math:`\lambda \to \infty`, exactly once
    :math:`\lambda\sigma_{\min>0} \ge \text{cap}`. Shape ``(..., n, m)`` kept.

    As in :func:`dlmath.msign.polar`, singular values :math:`\sigma_i \le \max(n, m)\,
    \varepsilon\,\sigma_1` (:math:`\varepsilon` of the working dtype, float32 for half
    precision) count as zero: they are the SVD's rounding noise, and clipping them up to
    ``cap`` would make a rank-deficient :math:`\lambda W` full rank."""
    W = check_matrix(W, "W")
    cap = check_real(cap, "cap", positive=True)
    A = upcast_half(W)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    rtol = max(W.shape[-2:]) * torch.finfo(A.dtype).eps
    S = torch.where(S > rtol * S[..., :1], S.clamp(max=cap), 0.0)
    return ((U * S.unsqueeze(-2)) @ Vh).to(W.dtype)


def spectral_update(U, d_in: int, d_out: int, eta: float = 1.0, mode: str = "sn"
                    ) -> torch.Tensor:
    r"""Turn any base update ``U`` (shape ``(d_in, d_out)``) into one with
    :math:`\|\Delta W\|_2 = \eta\sqrt{d_{out}/d_{in}}`:

    * ``"sn"``: :math:`\eta\sqrt{d_{out}/d_{in}}\,U/\|U\|_2`;
    * ``"msign"``: :math:`\eta\sqrt{d_{out}/d_{in}}\,\operatorname{msign}(U)` (exact SVD; the
      "generalised Muon" of chapter 20);
    * ``"svc"``: :math:`\eta\sqrt{d_{out}/d_{in}}\,\operatorname{SVC}(U/\|U\|_2)`, which equals
      ``"sn"`` (clipping a matrix whose top singular value is 1 changes nothing): SVC pins the
      norm only when some singular value reaches the cap, so it needs this pre-scaling.

    A zero ``U`` gives a zero update.
    """
    U = check_matrix(U, "U")
    check_choice(mode, "mode", _MODES)
    eta = check_real(eta, "eta", nonnegative=True)
    if U.shape[-2:] != (d_in, d_out):
        raise ValueError(f"U must have shape (..., d_in, d_out) = (..., {d_in}, {d_out}), got "
                         f"{tuple(U.shape)}")
    scale = eta * spectral_target(d_in, d_out)
    if mode == "msign":
        return scale * polar(U)
    direction = spectral_normalize(U)
    return scale * (svc(direction) if mode == "svc" else direction)


def rms(x, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    r""":math:`\operatorname{RMS}(x) = \sqrt{\frac1N\sum_i x_i^2}` over ``dim`` (``None``: all
    entries, so for a matrix :math:`\|W\|_F/\sqrt{d_{in}d_{out}}`). Device and dtype kept.

    Computed as :math:`m\sqrt{\frac1N\sum_i(x_i/m)^2}` with :math:`m = \max_i|x_i|`, so the
    squares neither overflow (float16 entries above 256, float32 above :math:`10^{19}`) nor
    underflow (float32 entries below :math:`10^{-19}`); zeros give 0, an infinite entry inf, a
    NaN NaN."""
    x = as_float_tensor(x, "x", min_ndim=0)
    if dim is None:
        x, dim = x.reshape(-1), 0
    else:
        dims = dim if isinstance(dim, tuple) else (dim,)
        dims = [check_dim(x.reshape(1) if x.ndim == 0 else x, k) for k in dims]
        if len(set(dims)) < len(dims):
            raise ValueError(f"dim must not name a dimension twice, got {dim}")
    top = x.abs().amax(dim=dim, keepdim=True)
    scale = torch.where((top > 0) & torch.isfinite(top), top, torch.ones_like(top))
    return ((x / scale).pow(2).mean(dim=dim, keepdim=True).sqrt() * scale).squeeze(dim)


def _range_basis(W: torch.Tensor, rank: int, generator) -> torch.Tensor:
    """Orthonormal ``(n, k)`` basis of the range of ``W Omega`` for a Gaussian ``(m, k)`` Omega."""
    if generator is None:
        generator = torch.Generator(device=W.device)
        generator.manual_seed(0)
    omega = torch.randn(W.shape[-1], rank, generator=generator, dtype=W.dtype, device=W.device)
    return torch.linalg.qr(W @ omega).Q


def _low_rank(W: torch.Tensor, rank: int | None, generator):
    """``(Q, B)`` with ``W = Q B`` exactly when rank(W) <= rank, or ``(None, W)``."""
    if rank is None:
        return None, W
    rank = check_int(rank, "rank", low=1)
    if rank >= min(W.shape[-2:]):
        return None, W
    Q = _range_basis(W, rank, generator)
    return Q, Q.mT @ W


def singular_values(W, rank: int | None = None, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    r"""Singular values of ``W`` (``(..., n, m)`` -> ``(..., min(n, m))``, descending).

    ``rank=None``: ``torch.linalg.svdvals``. ``rank=k``: for a matrix known to have rank at most
    :math:`k` (a gradient over a batch of :math:`b \le k` rows), the randomized range finder
    :math:`Q = \operatorname{orth}(W\Omega)`, :math:`\Omega \in \mathbb R^{m\times k}` Gaussian,
    then :math:`\operatorname{svdvals}(Q^\top W)`, padded with zeros: exact (with probability 1)
    when :math:`\operatorname{rank}W \le k`, at cost :math:`O(nmk)` instead of
    :math:`O(nm\min(n,m))`. If the rank is larger, the result underestimates (it is the
    spectrum of the projection :math:`QQ^\top W`). ``generator`` draws :math:`\Omega` (default:
    a fresh generator seeded with 0, so results are deterministic).
    """
    W = check_matrix(W, "W")
    Q, B = _low_rank(upcast_half(W), rank, generator)
    s = torch.linalg.svdvals(B)
    if Q is not None:
        s = torch.cat([s, s.new_zeros(*s.shape[:-1], min(W.shape[-2:]) - s.shape[-1])], dim=-1)
    return s.to(W.dtype)


def matrix_norms(W, rank: int | None = None) -> dict[str, float]:
    r"""The norms the two chapters compare, for one matrix ``(n, m)``: ``rms``, ``fro``
    (:math:`\|W\|_F`), ``fro2`` (:math:`\|W\|_F^2`), ``spectral`` (:math:`\sigma_1`),
    ``nuclear`` (:math:`\sum_i\sigma_i`) and ``l1`` (:math:`\sum_{ij}|W_{ij}|`), as Python
    floats. Singular values come from :func:`singular_values` (``rank`` as there, in ``W``'s
    dtype). ``nuclear`` and ``l1`` are summed in float64 and ``fro`` is computed in float32 for
    float16/bfloat16, so a norm beyond a half dtype's range (``l1`` of a 256 x 256 float16
    matrix of ones, 65536) is still finite."""
    W = check_matrix(W, "W")
    if W.ndim != 2:
        raise ValueError(f"W must be a single matrix (n, m), got shape {tuple(W.shape)}")
    s = singular_values(W, rank)
    fro = float(torch.linalg.vector_norm(upcast_half(W)))
    return {"rms": float(rms(W)), "fro": fro, "fro2": fro * fro, "spectral": float(s[0]),
            "nuclear": float(s.sum(dtype=torch.float64)),
            "l1": float(W.abs().sum(dtype=torch.float64))}


def layer_kinds(n_hidden: int) -> list[str]:
    """``["in", "hidden" * n_hidden, "out"]``, the kinds of the MLP family's weights."""
    return ["in"] + ["hidden"] * check_int(n_hidden, "n_hidden", low=0) + ["out"]


def _shapes(d: int, d_in: int, d_out: int, n_hidden: int) -> list[tuple[int, int]]:
    return [(d_in, d)] + [(d, d)] * n_hidden + [(d, d_out)]


def init_mlp(d: int, d_in: int, d_out: int, n_hidden: int = 2, *, param: str = "mup",
             generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
             device=None) -> list[torch.Tensor]:
    r"""Weights ``[W_in, W_1, ..., W_K, W_out]`` (shapes ``(fan_in, fan_out)``) of the MLP family.

    Gaussian entries with variance

    * ``"mup"``: :math:`1/d_{in}`, :math:`1/d`, :math:`1/d^2` (chapter 19);
    * ``"sp"`` (standard parametrisation): fan-in :math:`1/\text{fan-in}` everywhere, so
      :math:`1/d` for the output layer;
    * ``"spectral"``: :func:`spectral_init_std` squared (chapter 20).
    """
    d, d_in, d_out = (_positive_int(v, n) for v, n in ((d, "d"), (d_in, "d_in"),
                                                       (d_out, "d_out")))
    check_choice(param, "param", _PARAMS)
    n_hidden = check_int(n_hidden, "n_hidden", low=0)
    weights = []
    shapes = _shapes(d, d_in, d_out, n_hidden)
    for (fi, fo), kind in zip(shapes, layer_kinds(n_hidden), strict=True):
        if param == "spectral":
            std = spectral_init_std(fi, fo)
        elif param == "sp":
            std = 1.0 / math.sqrt(fi)
        else:
            std = math.sqrt(mup_multipliers("sgd", kind, d, d_in=d_in)[0])
        weights.append(std * torch.randn(fi, fo, generator=generator, dtype=dtype,
                                         device=device))
    return weights


def mlp_features(weights, X, activation=torch.relu) -> list[torch.Tensor]:
    r"""All features of the MLP family, ``[Y_0, Y_1, ..., Y_K, Z]``:
    :math:`Y_0 = XW_{in}`, :math:`Y_k = \phi(Y_{k-1}W_k)`, :math:`Z = Y_K W_{out}`.
    ``X`` is ``(b, d_in)``; the last entry is the output ``(b, d_out)``, in the common dtype
    of ``X`` and the weights."""
    X = as_float_tensor(X, "X", min_ndim=2)
    if len(weights) < 2:
        raise ValueError(f"weights must hold at least W_in and W_out, got {len(weights)}")
    weights = [as_float_tensor(W, f"weights[{i}]", min_ndim=2) for i, W in enumerate(weights)]
    if X.shape[-1] != weights[0].shape[-2]:
        raise ValueError(f"X must have last dimension d_in = {weights[0].shape[-2]}, got "
                         f"shape {tuple(X.shape)}")
    for i in range(1, len(weights)):
        if weights[i].shape[-2] != weights[i - 1].shape[-1]:
            raise ValueError(f"weights[{i}] must have {weights[i - 1].shape[-1]} rows (the "
                             f"columns of weights[{i - 1}]), got shape "
                             f"{tuple(weights[i].shape)}")
    X, *weights = promote(X, *weights)
    feats = [X @ weights[0]]
    for W in weights[1:-1]:
        feats.append(activation(feats[-1] @ W))
    feats.append(feats[-1] @ weights[-1])
    return feats


def mse_loss(Z, T) -> torch.Tensor:
    r""":math:`\mathcal L = \frac{1}{2b}\sum_{i=1}^b \|Z_i - T_i\|^2`, the mean over the batch
    (rows) of half the squared error. ``Z`` is ``(..., b, d_out)``, ``T`` broadcasts to it; the
    result has shape ``(...)`` (a scalar for a single model, one loss per model for a stack)."""
    Z = as_float_tensor(Z, "Z", min_ndim=2)
    T = as_float_tensor(T, "T", min_ndim=2)
    if Z.shape[-2:] != T.shape[-2:]:
        raise ValueError(f"Z and T must end in the same (b, d_out), got {tuple(Z.shape)} and "
                         f"{tuple(T.shape)}")
    check_broadcast(Z=Z.shape, T=T.shape)
    return 0.5 * (Z - T).pow(2).sum(dim=-1).mean(dim=-1)


def update_direction(G, optimizer: str, rank: int | None = None) -> torch.Tensor:
    r"""The update direction :math:`U` (the step is :math:`-\eta U`) of the optimizer models:
    ``"sgd"`` :math:`G`, ``"adam"`` :math:`\operatorname{sign}(G)`, ``"muon"``
    :math:`\operatorname{msign}(G)` (exact, :func:`dlmath.msign.polar`), ``"muon_ns"``
    the Newton–Schulz :func:`dlmath.msign.msign`. With ``rank=k`` (``G`` of rank at most
    :math:`k`), the exact msign is computed as :math:`Q\operatorname{msign}(Q^\top G)` from the
    range basis of :func:`singular_values`, at cost :math:`O(nmk)` (for
    :math:`k \ge \min(n, m)` the full path, which gives the same)."""
    G = check_matrix(G, "G")
    check_choice(optimizer, "optimizer", ("sgd", "adam", "muon", "muon_ns"))
    if optimizer == "sgd":
        return G
    if optimizer == "adam":
        return torch.sign(G)
    if optimizer == "muon_ns":
        return msign(G)
    Q, B = _low_rank(upcast_half(G), rank, None)
    return (polar(B) if Q is None else Q @ polar(B)).to(G.dtype)


def lr_multipliers(optimizer: str, d: int, n_hidden: int, *, param: str = "mup",
                   d0: int = 1, d_in: int = 1, d_out: int = 1) -> list[float]:
    r"""Per-layer learning-rate multipliers of the MLP family.

    ``"mup"``: :math:`(d/d_0)^{c}` from :data:`MUP_TABLE`; ``"sp"``: 1 for every layer and
    width (one global learning rate); ``"spectral"``: :func:`spectral_lr` of each layer's
    shape, divided by its value at width ``d0`` (``d_in`` and ``d_out`` cancel in that
    ratio). For ``"muon_adam"`` the in/out layers use Adam's update and the hidden ones Muon's
    (see :func:`one_step`).
    """
    check_choice(param, "param", _PARAMS)
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    kinds = layer_kinds(n_hidden)
    d, d0 = _positive_int(d, "d"), _positive_int(d0, "d0")
    d_in, d_out = _positive_int(d_in, "d_in"), _positive_int(d_out, "d_out")
    if param == "sp":
        return [1.0] * len(kinds)
    if param == "mup":
        return [mup_multipliers(optimizer, k, d, d0=d0)[1] for k in kinds]
    out = []
    for kind, (fi, fo), (fi0, fo0) in zip(kinds, _shapes(d, d_in, d_out, n_hidden),
                                          _shapes(d0, d_in, d_out, n_hidden), strict=True):
        opt = ("adam" if kind != "hidden" else "muon") if optimizer == "muon_adam" else optimizer
        out.append(spectral_lr(opt, fi, fo) / spectral_lr(opt, fi0, fo0))
    return out


def one_step(weights, X, T, optimizer: str, lrs, activation=torch.relu) -> dict:
    r"""One optimizer step on the MLP family and what it changes.

    Computes the gradients :math:`G_l` of :func:`mse_loss`, the updates
    :math:`\Delta W_l = -\eta_l\,U(G_l)` (:func:`update_direction`; for ``"muon_adam"`` Adam's
    sign at the two ends and msign in between) and returns a dict with ``loss`` (before),
    ``delta_loss`` (:math:`\mathcal L(W+\Delta W) - \mathcal L(W)`), ``grads``, ``updates``,
    ``features`` and ``delta_features`` (lists per layer, :math:`Y_l(W+\Delta W) - Y_l(W)`).
    ``lrs`` is one learning rate per weight. The inputs are not modified. Every gradient has
    rank at most :math:`b` (the batch size), which msign exploits (:func:`update_direction`).
    """
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    if len(lrs) != len(weights):
        raise ValueError(f"lrs must hold one learning rate per weight ({len(weights)}), got "
                         f"{len(lrs)}")
    lrs = [check_real(lr, "lrs", nonnegative=True) for lr in lrs]
    # checked here, else the gradients' NaN is reported as G's; the tensors are used below
    X = check_finite(as_float_tensor(X, "X", min_ndim=2), "X")
    T = check_finite(as_float_tensor(T, "T", min_ndim=2), "T")
    for t, name in ((X, "X"), (T, "T")):
        if t.ndim != 2:   # one model, one batch: its loss must be a scalar
            raise ValueError(f"{name} must be a single batch (b, d), got shape {tuple(t.shape)}")
    if any(as_float_tensor(W, "weights").ndim != 2 for W in weights):
        raise ValueError("weights must be single matrices (fan_in, fan_out): one_step takes one "
                         "model (train takes a stack)")
    params = [W.detach().clone().requires_grad_(True) for W in weights]
    with torch.enable_grad():
        feats = mlp_features(params, X, activation)
        loss = mse_loss(feats[-1], T)
        grads = torch.autograd.grad(loss, params)
    n = len(weights)
    updates = []
    for i, (G, lr) in enumerate(zip(grads, lrs, strict=True)):
        opt = optimizer
        if optimizer == "muon_adam":
            opt = "muon" if 0 < i < n - 1 else "adam"
        updates.append(-lr * update_direction(G, opt, rank=X.shape[-2]))
    with torch.no_grad():
        new = [W.detach() + dW for W, dW in zip(weights, updates, strict=True)]
        new_feats = mlp_features(new, X, activation)
        new_loss = mse_loss(new_feats[-1], T)
    feats = [f.detach() for f in feats]
    loss = loss.detach()
    return {"loss": float(loss), "delta_loss": float(new_loss - loss), "grads": list(grads),
            "updates": updates, "features": feats,
            "delta_features": [b - a for a, b in zip(feats, new_feats, strict=True)]}


def train(weights, X, T, lrs, steps: int, optimizer: str = "sgd", activation=torch.relu
          ) -> torch.Tensor:
    r"""Full-batch training of the MLP family: ``steps`` updates
    :math:`W_l \leftarrow W_l - \eta_l U(\nabla_{W_l}\mathcal L)` with :math:`U(G) = G` (``"sgd"``)
    or :math:`\operatorname{sign}(G)` (``"adam"``, the SignSGD model).

    Weights may carry a leading stack dimension ``(L, fan_in, fan_out)`` to train ``L`` models at
    once (e.g. one per learning rate of a sweep); ``lrs`` holds one entry per layer, each a
    float or a tensor broadcastable to that layer's weight (``(L, 1, 1)`` for a sweep).
    Returns the losses before every step and after the last, shape ``(steps + 1, ...)``. A
    model diverges when its loss is not finite or when one of its updates overflows (an entry
    of :math:`\eta_l U` not finite while the loss still is); from then on its weights stay
    as they are and its loss is reported as ``inf``. ``X`` and ``T`` must be finite and add no
    leading dimensions to the weights' stack. The inputs are not modified. Chapter 19
    (the learning-rate sweep).
    """
    check_choice(optimizer, "optimizer", ("sgd", "adam"))
    steps = check_int(steps, "steps", low=0)
    if len(lrs) != len(weights):
        raise ValueError(f"lrs must hold one learning rate per weight ({len(weights)}), got "
                         f"{len(lrs)}")
    weights = [as_float_tensor(W, f"weights[{i}]", min_ndim=2) for i, W in enumerate(weights)]
    shapes = []
    for i, (W, lr) in enumerate(zip(weights, lrs, strict=True)):
        lr = as_float_tensor(lr, "lrs", min_ndim=0)
        if bool(torch.isnan(lr).any() | (lr < 0).any()):  # a caller's mistake, not a divergence
            raise ValueError("lrs must hold learning rates >= 0 (floats or tensors), not NaN "
                             "or negative ones")
        full = check_broadcast(**{f"lrs[{i}]": lr.shape, f"weights[{i}]": W.shape})
        if full[-2:] != W.shape[-2:]:
            raise ValueError(f"lrs[{i}] of shape {tuple(lr.shape)} must not widen the matrix of "
                             f"weights[{i}], {tuple(W.shape[-2:])} (e.g. (L, 1, 1) for L models)")
        shapes.append(full[:-2])
    for t, name in ((X, "X"), (T, "T")):  # else every model would be reported as diverged
        check_finite(as_float_tensor(t, name, min_ndim=2), name)
    # one copy of every weight per model: a weight without the stack dimension (or with a
    # stacked rate) is the shared start of each model's own copy
    stack = torch.broadcast_shapes(*shapes)
    params = [W.detach().expand(*stack, *W.shape[-2:]).clone().requires_grad_(True)
              for W in weights]
    losses, diverged = [], None  # diverged: per model (the loss's shape)
    for step in range(steps + 1):
        with torch.enable_grad():
            loss = mse_loss(mlp_features(params, X, activation)[-1], T)
            if step == 0:  # one loss per model: X and T may not add models of their own
                if loss.shape != stack:
                    raise ValueError(f"X and T must not carry leading dimensions beyond the "
                                     f"weights' stack {tuple(stack)}: the loss would have shape "
                                     f"{tuple(loss.shape)}")
            alive = torch.isfinite(loss) if diverged is None else torch.isfinite(loss) & ~diverged
            losses.append(torch.where(alive, loss.detach(), math.inf))
            if step == steps:
                break
            grads = torch.autograd.grad(torch.where(alive, loss, 0).sum(), params)
        with torch.no_grad():
            updates = [lr * (G if optimizer == "sgd" else torch.sign(G))
                       for G, lr in zip(grads, lrs, strict=True)]
            overflow = [~torch.isfinite(S).flatten(-2).all(dim=-1) for S in updates]
            diverged = ~alive | torch.stack(torch.broadcast_tensors(*overflow)).any(dim=0)
            for W, S in zip(params, updates, strict=True):
                W -= torch.where(diverged[..., None, None], 0.0, S)  # NaN-free: where selects
    return torch.stack(losses)
