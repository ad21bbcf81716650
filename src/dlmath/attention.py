r"""Attention matrices under the masks of decoder-only, prefix and bidirectional models.

Chapter: *Why are today's LLMs decoder-only?* (``notebooks/25-decoder-only-rank.ipynb``).

For queries :math:`Q\in\mathbb{R}^{n\times d}`, keys :math:`K\in\mathbb{R}^{m\times d}` and a
visibility mask :math:`V\in\{0,1\}^{n\times m}`, the attention matrix is the row-wise softmax

.. math:: A_{ij} = \frac{V_{ij}\,e^{s_{ij}}}{\sum_{l} V_{il}\,e^{s_{il}}},
          \qquad S = \tau\, QK^\top,\quad \tau = 1/\sqrt d \text{ by default}.

A causal mask makes :math:`A` lower triangular with a positive diagonal, hence non-singular;
a bidirectional one lies within :math:`\varepsilon\,\sigma_1(A)` (spectral norm) of a matrix of
rank :math:`\binom{p+d}{d}`, with :math:`\varepsilon` independent of :math:`n`
(:func:`taylor_rank_bound`).

Conventions:

* tokens sit on dimension ``-2`` and features on ``-1``; leading dimensions broadcast (batch,
  heads). Results keep the inputs' device and promoted dtype.
* masks are boolean with ``True`` meaning *visible*; :func:`attention_mask` builds the four
  kinds of the chapter, and :func:`attention_matrix` also accepts a kind by name.
* a row with no visible key has no attention distribution; it is returned as a row of zeros
  (never NaN). The masks of :func:`attention_mask` never produce one.
* NaN or infinite queries/keys raise ``ValueError``, and so do finite ones whose logits (or
  linear-attention weights) overflow the working dtype; integer tensors raise ``TypeError``.
  float16 and bfloat16 inputs are computed in float32 and the result is rounded back.
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    all_finite,
    as_float_tensor,
    broadcasts_to,
    check_choice,
    check_finite,
    check_int,
    check_real,
    upcast_half,
)

__all__ = [
    "MASK_KINDS",
    "attention_mask",
    "attention_matrix",
    "linear_attention_matrix",
    "taylor_rank_bound",
    "rank_one_residual",
]

#: The mask kinds of :func:`attention_mask`.
MASK_KINDS = ("bidirectional", "causal", "anticausal", "prefix")


def attention_mask(kind: str, n: int, *, prefix: int = 0,
                   device: torch.device | str | None = None) -> torch.Tensor:
    r"""The ``(n, n)`` boolean visibility mask of one kind of self-attention.

    .. math:: V^{\rm bi}_{ij}=1,\quad V^{\rm causal}_{ij}=[j\le i],\quad
              V^{\rm anti}_{ij}=[j\ge i],\quad V^{\rm prefix}_{ij}=[j\le i\ \text{or}\ j<p]

    (indices from 0). ``"causal"`` is GPT's mask; ``"anticausal"`` is its mirror image (a
    backward language model); ``"prefix"`` is UniLM's sequence-to-sequence mask, where the
    first ``prefix`` tokens (the input) see each other and every later token (the output)
    sees the input and the outputs before it. ``prefix=0`` gives ``"causal"`` and
    ``prefix=n`` gives ``"bidirectional"``. Every row has at least one visible entry (the
    diagonal). ``prefix`` is only allowed with ``kind="prefix"``.
    """
    check_choice(kind, "kind", MASK_KINDS)
    check_int(n, "n", low=1)
    check_int(prefix, "prefix", low=0, high=n)
    if prefix and kind != "prefix":
        raise ValueError(f"prefix is only used with kind='prefix', got kind={kind!r}")
    i = torch.arange(n, device=device).unsqueeze(-1)
    j = torch.arange(n, device=device)
    if kind == "bidirectional":
        return torch.ones(n, n, dtype=torch.bool, device=device)
    if kind == "causal":
        return j <= i
    if kind == "anticausal":
        return j >= i
    return (j <= i) | (j < prefix)


def _qk(q, k) -> tuple[torch.Tensor, torch.Tensor]:
    q = as_float_tensor(q, "q", min_ndim=2)
    k = as_float_tensor(k, "k", min_ndim=2)
    check_finite(q, "q")
    check_finite(k, "k")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size (last dimension), got "
                         f"{q.shape[-1]} and {k.shape[-1]}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device, got {q.device} and {k.device}")
    dtype = torch.promote_types(q.dtype, k.dtype)
    return q.to(dtype), k.to(dtype)


def _mask(mask, shape, device) -> torch.Tensor | None:
    """The mask as a boolean tensor broadcastable to the logits' ``shape`` ``(..., n, m)``, or
    None (all visible)."""
    n, m = shape[-2:]
    if mask is None:
        return None
    if isinstance(mask, str):
        check_choice(mask, "mask", tuple(k for k in MASK_KINDS if k != "prefix"))
        if n != m:
            raise ValueError(f"mask={mask!r} needs as many queries as keys, got {n} and {m}")
        return attention_mask(mask, n, device=device)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be None, a mask kind ('bidirectional', 'causal', "
                        "'anticausal') or a boolean tensor (True = visible)")
    if mask.ndim < 2 or mask.shape[-2:] != (n, m):
        raise ValueError(f"mask must end in the shape ({n}, {m}) of the logits, got "
                         f"{tuple(mask.shape)}")
    if not broadcasts_to(mask.shape, shape):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the shape "
                         f"{tuple(shape)} of the logits")
    return mask.to(device)


def attention_matrix(q, k, mask=None, *, scale: float | None = None) -> torch.Tensor:
    r"""Softmax attention weights :math:`A=\operatorname{softmax}(\tau QK^\top)` under a mask.

    .. math:: A_{ij} = \frac{V_{ij}\exp(s_{ij}-\mu_i)}{\sum_l V_{il}\exp(s_{il}-\mu_i)},
              \qquad s_{ij}=\tau\,q_i^\top k_j,\quad \mu_i=\max_{l:\,V_{il}=1}s_{il}.

    Shapes: ``q`` is ``(..., n, d)``, ``k`` is ``(..., m, d)``; the result is ``(..., n, m)``
    with rows summing to 1. ``mask`` is None (bidirectional), a kind name (``"causal"``,
    ``"anticausal"``, ``"bidirectional"``; needs ``n == m``) or a boolean tensor
    broadcastable to the logits' ``(..., n, m)`` with ``True`` = visible (``ValueError``
    naming ``mask`` otherwise). ``scale`` is :math:`\tau`,
    default :math:`1/\sqrt d`. The maximum is taken over visible entries only, so no row
    overflows, and a row with no visible entry is returned as zeros. float16/bfloat16 inputs
    are computed in float32 (their logits overflow at 65504 and 3.4e38, where a float16
    softmax returns NaN); logits that overflow the working dtype raise ``ValueError``.
    """
    q, k = _qk(q, k)
    out_dtype = q.dtype
    q, k = upcast_half(q), upcast_half(k)
    tau = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check_real(scale, "scale")
    s = tau * (q @ k.transpose(-1, -2))
    if not all_finite(s):
        raise ValueError(f"the logits scale * q k^T overflow {s.dtype}: rescale q, k or scale")
    visible = _mask(mask, s.shape, q.device)
    if visible is None:
        return torch.softmax(s, dim=-1).to(out_dtype)
    visible = visible.expand_as(s)
    neg_inf = torch.tensor(-math.inf, dtype=s.dtype, device=s.device)
    s = torch.where(visible, s, neg_inf)
    mu = s.amax(dim=-1, keepdim=True)
    mu = torch.where(torch.isfinite(mu), mu, torch.zeros_like(mu))  # fully masked rows
    e = torch.where(visible, torch.exp(s - mu), torch.zeros_like(s))
    total = e.sum(dim=-1, keepdim=True)
    return (e / torch.where(total > 0, total, torch.ones_like(total))).to(out_dtype)


def _elu1(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1, written as x + 1 (x > 0) and e^x (x <= 0): the same function, but
    elu(x) + 1 = (e^x - 1) + 1 rounds to 0 below x ~ -17 in float32 (-37 in float64)."""
    return torch.where(x > 0, x + 1.0, torch.exp(torch.clamp(x, max=0.0)))


def linear_attention_matrix(q, k, mask=None, *, feature=None) -> torch.Tensor:
    r"""Linear-attention weights: positive features, masked, normalised by rows.

    .. math:: A_{ij} = \frac{V_{ij}\,\phi(q_i)^\top\phi(k_j)}{\sum_l V_{il}\,\phi(q_i)^\top
              \phi(k_l)},\qquad \phi(x) = \operatorname{elu}(x) + 1 \text{ by default}.

    Without a mask :math:`A=D^{-1}\phi(Q)\phi(K)^\top` has rank at most the feature size;
    with the causal mask it is lower triangular with a positive diagonal. Shapes and ``mask``
    as :func:`attention_matrix`; ``feature`` is a callable mapping ``(..., d)`` to strictly
    positive features ``(..., d')`` (``ValueError`` otherwise). The default
    :math:`\operatorname{elu}(x)+1` is evaluated as :math:`e^x` for :math:`x\le0`, so it stays
    positive down to the underflow of :math:`e^x`. float16/bfloat16 inputs are computed in
    float32; weights that overflow raise ``ValueError``.
    """
    q, k = _qk(q, k)
    out_dtype = q.dtype
    q, k = upcast_half(q), upcast_half(k)
    phi = _elu1 if feature is None else feature
    if not callable(phi):
        raise TypeError("feature must be a callable (a positive feature map) or None")
    fq, fk = phi(q), phi(k)
    if not bool((fq > 0).all()) or not bool((fk > 0).all()):
        raise ValueError("feature must map to strictly positive features" + (
            "" if feature is not None else
            " (the default elu(x) + 1 = e^x for x <= 0 underflows to 0 below x ~ -87 in "
            "float32, -745 in float64)"))
    w = fq @ fk.transpose(-1, -2)
    if not all_finite(w):
        raise ValueError(f"the weights phi(q) phi(k)^T overflow {w.dtype}: rescale q or k")
    visible = _mask(mask, w.shape, q.device)
    if visible is not None:
        w = torch.where(visible.expand_as(w), w, torch.zeros_like(w))
    total = w.sum(dim=-1, keepdim=True)
    return (w / torch.where(total > 0, total, torch.ones_like(total))).to(out_dtype)


def taylor_rank_bound(rho: float, d: int, p: int) -> tuple[int, float]:
    r"""How close a bidirectional attention matrix is to low rank: ``(r, eps)``.

    If every logit satisfies :math:`|s_{ij}|\le\rho` and :math:`S=\tau QK^\top` with
    :math:`Q, K` of width :math:`d`, then for the (unmasked) softmax matrix :math:`A`

    .. math:: \frac{\sigma_{r+1}(A)}{\sigma_1(A)} \le \varepsilon =
              \frac{\rho^{p+1}e^{2\rho}}{(p+1)!},\qquad r=\binom{p+d}{d},

    whatever the number of tokens :math:`n` (the degree-:math:`p` Taylor polynomial of
    :math:`e^{s}` has rank :math:`\le r`). For ``p = 0`` the factor :math:`\rho` is sharp as
    :math:`\rho\to0` (:math:`\sigma_2/\sigma_1=\tanh\rho` is attained with ``d = 1``).
    ``eps`` is computed in log space (no overflow); ``r`` is an exact integer. ``rho >= 0``,
    ``d >= 1`` and ``p >= 0``.
    """
    rho = check_real(rho, "rho", nonnegative=True)
    check_int(d, "d", low=1)
    check_int(p, "p", low=0)
    r = math.comb(p + d, d)
    if rho == 0:
        return r, 0.0
    log_eps = (p + 1) * math.log(rho) + 2 * rho - math.lgamma(p + 2)
    return r, math.exp(min(log_eps, 709.0))


def rank_one_residual(x) -> torch.Tensor:
    r"""Relative distance of a token matrix to "all tokens equal" (Dong et al.'s residual).

    .. math:: \operatorname{res}(X) = \frac{\|X - \mathbf 1\bar x^\top\|_F}{\|X\|_F},
              \qquad \bar x = \frac1n X^\top\mathbf 1,

    the distance to the nearest matrix :math:`\mathbf 1 c^\top` (the minimiser is the mean row).
    Shapes: ``x`` is ``(..., n, d)`` (tokens on dim ``-2``); the result is ``(...)``, in
    ``[0, 1]``. The zero matrix has residual 0.
    """
    x = as_float_tensor(x, "x", min_ndim=2)
    check_finite(x, "x")
    scale = x.abs().amax(dim=(-2, -1), keepdim=True)
    x = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    num = torch.linalg.matrix_norm(x - x.mean(dim=-2, keepdim=True))
    den = torch.linalg.matrix_norm(x)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.zeros_like(den))
