r"""The head, loss, batch sampler and ensemble of a fine-tuned image classifier.

Chapter: *Fine-tuning an image classifier* (``notebooks/35-finetuning-classifier.ipynb``).

The recipe puts a gated bottleneck on top of a pretrained backbone's features :math:`x`,

.. math:: h = (W_a x + b_a) \odot \sigma(W_g x + b_g),

classifies :math:`h` with a softmax head and :math:`x` with an auxiliary softmax head, and pulls
each :math:`h_n` towards a learnable centre of its class with the *center loss*

.. math:: \mathcal L_c = \frac{\lambda}{B}\sum_{n=1}^{B}\|h_n - c_{y_n}\|^2

(a sum of squares, no factor :math:`\tfrac12`, averaged over the batch). Batches hold
:math:`B/2` distinct classes with two images each, and the two heads' probabilities are mixed
with a weight chosen on validation data. Finally, the confident predictions of the trained
model on unlabelled images become hard pseudo-labels (:func:`pseudo_labels`).

Conventions: features are ``(N, d)`` floating tensors and labels ``(N,)`` integer tensors on the
same device; results keep the features' device and dtype (float16 and bfloat16 sums and squares
are computed in float32 and rounded once at the end, so an intermediate above 65504 does not
overflow). Randomness only through an explicit ``torch.Generator``. Bad input raises
``TypeError``/``ValueError`` naming the argument.
"""

from __future__ import annotations

import torch

from ._checks import (
    as_float_tensor,
    check_finite,
    check_generator,
    check_int,
    check_probability,
    check_real,
    work_dtype,
)

__all__ = [
    "glu",
    "GLU",
    "center_loss",
    "CenterLoss",
    "center_gradient",
    "wen_center_update",
    "paired_class_sampler",
    "class_inclusion_probabilities",
    "ensemble_weight_search",
    "within_between_ratio",
    "pseudo_labels",
]


# -- the gated head -------------------------------------------------------------------------

class _GLU(torch.autograd.Function):
    """a * sigmoid(g) with the hand-derived backward pass (checked by gradcheck in the tests)."""

    @staticmethod
    def forward(ctx, a, g):
        s = torch.sigmoid(g)
        ctx.save_for_backward(a, g, s)
        return a * s

    @staticmethod
    def backward(ctx, grad):
        a, g, s = ctx.saved_tensors
        # sigma'(g) = sigma(g) sigma(-g): no cancellation in 1 - sigma(g) for large g
        return grad * s, grad * a * s * torch.sigmoid(-g)


def glu(a, g) -> torch.Tensor:
    r"""Gated linear unit of a value ``a`` and a gate ``g``, elementwise.

    .. math:: h = a \odot \sigma(g), \qquad
              \frac{\partial h}{\partial a} = \sigma(g), \qquad
              \frac{\partial h}{\partial g} = a \odot \sigma(g)\,(1 - \sigma(g)).

    The backward pass uses these formulas, with :math:`\sigma(g)(1-\sigma(g))` computed as
    :math:`\sigma(g)\sigma(-g)` so it stays accurate for large :math:`|g|`. Shapes: ``a`` and
    ``g`` broadcast together; the result has the broadcast shape. NaN raises ``ValueError``;
    infinite gates are allowed (:math:`\sigma(\pm\infty) = 1, 0`).
    """
    a, g = as_float_tensor(a, "a"), as_float_tensor(g, "g")
    check_finite(a, "a")
    if torch.isnan(g).any():
        raise ValueError("g contains NaN")
    try:
        a, g = torch.broadcast_tensors(a, g)
    except RuntimeError as exc:
        raise ValueError(f"a and g must have broadcastable shapes, got {tuple(a.shape)} and "
                         f"{tuple(g.shape)}") from exc
    dtype = torch.promote_types(a.dtype, g.dtype)
    return _GLU.apply(a.to(dtype), g.to(dtype))


class GLU(torch.nn.Module):
    r"""The gated bottleneck :math:`h = (W_a x + b_a)\odot\sigma(W_g x + b_g)`, ``(..., d_in)``
    to ``(..., d_out)``, built on :func:`glu`."""

    def __init__(self, d_in: int, d_out: int, *, device=None, dtype=None):
        super().__init__()
        check_int(d_in, "d_in", low=1)
        check_int(d_out, "d_out", low=1)
        self.value = torch.nn.Linear(d_in, d_out, device=device, dtype=dtype)
        self.gate = torch.nn.Linear(d_in, d_out, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_in) -> (..., d_out)``: the gated features :math:`h`."""
        return glu(self.value(x), self.gate(x))


# -- the center loss ------------------------------------------------------------------------

def _features_labels(h, labels, name: str = "h") -> tuple[torch.Tensor, torch.Tensor]:
    h = as_float_tensor(h, name, min_ndim=2)
    if h.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got {tuple(h.shape)}")
    check_finite(h, name)
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels, device=h.device)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.shape != h.shape[:1]:
        raise ValueError(f"labels must have shape ({h.shape[0]},) to match {name}, got "
                         f"{tuple(labels.shape)}")
    if labels.device != h.device:
        raise ValueError(f"labels must be on {name}'s device {h.device}, got {labels.device}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("labels must be >= 0")
    return h, labels.long()


def _centers(centers, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    centers = as_float_tensor(centers, "centers", min_ndim=2)
    if centers.ndim != 2 or centers.shape[1] != h.shape[1]:
        raise ValueError(f"centers must have shape (n_classes, {h.shape[1]}), got "
                         f"{tuple(centers.shape)}")
    check_finite(centers, "centers")
    if labels.numel() and int(labels.max()) >= centers.shape[0]:
        raise ValueError(f"labels must be < n_classes = {centers.shape[0]}, got "
                         f"{int(labels.max())}")
    return centers


def center_loss(h, labels, centers, weight: float = 0.25) -> torch.Tensor:
    r"""The center loss as the post's code computes it: a weighted batch mean of squared
    distances to the class centres,

    .. math:: \mathcal L_c = \frac{\lambda}{B}\sum_{n=1}^{B}\|h_n - c_{y_n}\|^2 .

    Shapes: ``h`` ``(B, d)``, ``labels`` ``(B,)`` integers in ``[0, n_classes)``, ``centers``
    ``(n_classes, d)``; returns a scalar. Differentiable in ``h`` and ``centers``; its gradient
    on the centres is :func:`center_gradient`.
    """
    h, labels = _features_labels(h, labels)
    centers = _centers(centers, h, labels)
    lam = check_real(weight, "weight", nonnegative=True)
    out = torch.promote_types(h.dtype, centers.dtype)
    return (lam * _squared_distances(h, labels, centers).mean()).to(out)


def _squared_distances(h, labels, centers) -> torch.Tensor:
    """||h_n - c_{y_n}||^2, (B,), in float32 for float16/bfloat16 inputs (the caller rounds
    once, so a sum of squares above 65504 does not make a representable loss infinite), else
    in the promoted dtype of h and centers."""
    work = work_dtype(torch.promote_types(h.dtype, centers.dtype))
    return ((h.to(work) - centers.to(work)[labels]) ** 2).sum(dim=-1)


def center_gradient(h, labels, centers, weight: float = 0.25) -> torch.Tensor:
    r"""The closed-form gradient of :func:`center_loss` with respect to the centres,

    .. math:: \nabla_{c_j}\mathcal L_c = \frac{2\lambda}{B}\sum_{n:\,y_n=j}(c_j - h_n)
              = \frac{2\lambda n_j}{B}\,(c_j - \bar h_j),

    with :math:`n_j` the number of samples of class :math:`j` in the batch and
    :math:`\bar h_j` their mean; rows of absent classes are zero. Shapes as
    :func:`center_loss`; returns ``(n_classes, d)``.
    """
    h, labels = _features_labels(h, labels)
    centers = _centers(centers, h, labels)
    lam = check_real(weight, "weight", nonnegative=True)
    work = work_dtype(torch.promote_types(h.dtype, centers.dtype))   # halves: sums in float32
    diff = (centers.to(work)[labels] - h.to(work))
    grad = torch.zeros_like(centers, dtype=work).index_add_(0, labels, diff)
    return ((2.0 * lam / h.shape[0]) * grad).to(centers.dtype)


def wen_center_update(h, labels, centers, alpha: float = 0.5) -> torch.Tensor:
    r"""One centre update of Wen et al. (2016), their moving-average rule,

    .. math:: c_j \leftarrow c_j - \alpha\,\frac{\sum_{n:\,y_n=j}(c_j - h_n)}{1 + n_j}
              = c_j - \alpha\,\frac{n_j}{1+n_j}\,(c_j - \bar h_j).

    Shapes as :func:`center_loss`; returns the new ``(n_classes, d)`` centres (absent classes
    unchanged). ``alpha`` must lie in ``[0, 1]``.
    """
    h, labels = _features_labels(h, labels)
    centers = _centers(centers, h, labels)
    a = check_real(alpha, "alpha", low=0.0, high=1.0)
    work = work_dtype(torch.promote_types(h.dtype, centers.dtype))   # halves: sums in float32
    c = centers.to(work)
    diff = torch.zeros_like(c).index_add_(0, labels, c[labels] - h.to(work))
    n = torch.bincount(labels, minlength=centers.shape[0]).to(work)
    return (c - a * diff / (1.0 + n)[:, None]).to(centers.dtype)


class CenterLoss(torch.nn.Module):
    r"""Learnable class centres :math:`c_j\in\mathbb R^d` (one row per class, like the post's
    Embedding layer), updated by the optimiser rather than by :func:`wen_center_update`.

    ``forward(h, labels)`` returns the per-sample squared distances
    :math:`\|h_n - c_{y_n}\|^2`, shape ``(B,)``; the loss of the post is
    ``weight * forward(h, labels).mean()`` (= :func:`center_loss`). Centres start at zero.
    """

    def __init__(self, n_classes: int, dim: int, *, device=None, dtype=None):
        super().__init__()
        check_int(n_classes, "n_classes", low=1)
        check_int(dim, "dim", low=1)
        self.centers = torch.nn.Parameter(torch.zeros(n_classes, dim, device=device,
                                                      dtype=dtype))

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample squared distances :math:`\\|h_n - c_{y_n}\\|^2`, shape ``(B,)``."""
        h, labels = _features_labels(h, labels)
        centers = _centers(self.centers, h, labels)
        return _squared_distances(h, labels, centers).to(torch.promote_types(h.dtype,
                                                                             centers.dtype))


# -- the batch sampler ----------------------------------------------------------------------

def paired_class_sampler(labels, batch_size: int, *, generator: torch.Generator,
                         n_batches: int = 1) -> torch.Tensor:
    r"""Index batches of :math:`B/2` distinct classes with two distinct images each.

    Each batch draws :math:`k = B/2` classes *without replacement*, each draw with probability
    proportional to the class size among the classes not yet drawn (successive sampling, like
    ``numpy.random.choice(K, k, replace=False, p=sizes/N)`` in the post), then two different
    images of each drawn class, uniformly. The class draw uses the equivalent exponential race:
    class :math:`c` gets the clock :math:`E_c/n_c` with :math:`E_c\sim\mathrm{Exp}(1)`, and the
    :math:`k` earliest clocks win, in order. A class's chance to be in a batch is
    :func:`class_inclusion_probabilities`, which is *not* proportional to its size.

    Shapes: ``labels`` ``(N,)`` integers (the classes are its distinct values); returns a
    ``(n_batches, B)`` long tensor of indices into ``labels``, laid out as pairs
    ``[a_1, b_1, a_2, b_2, ...]`` with ``labels[a_i] == labels[b_i]``, on the labels' device
    (the generator must be on that device too). Raises ``ValueError`` if ``batch_size`` is odd,
    if there are fewer than :math:`B/2` classes, or if some class has a single image (it could
    be drawn, and then no pair exists).
    """
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape "
                         f"{tuple(labels.shape)}")
    check_int(batch_size, "batch_size", low=2)
    check_int(n_batches, "n_batches", low=1)
    if batch_size % 2:
        raise ValueError(f"batch_size must be even (pairs of images), got {batch_size}")
    check_generator(generator, labels.device, of="labels")
    k = batch_size // 2
    classes, counts = torch.unique(labels, return_counts=True)
    if classes.numel() < k:
        raise ValueError(f"batch_size={batch_size} needs {k} distinct classes, but labels has "
                         f"only {classes.numel()}")
    if int(counts.min()) < 2:
        lonely = classes[counts < 2].tolist()
        raise ValueError(f"every class needs at least 2 images to form a pair; classes "
                         f"{lonely[:5]} have one")
    dev = labels.device
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    w = counts.to(torch.float64)
    u = torch.rand(n_batches, classes.numel(), generator=generator, device=dev,
                   dtype=torch.float64)
    clocks = -torch.log1p(-u) / w                       # Exp(1)/n_c, finite since u < 1
    chosen = torch.topk(clocks, k, dim=1, largest=False, sorted=True).indices
    n = counts[chosen].to(torch.float64)
    u1 = torch.rand(n_batches, k, generator=generator, device=dev, dtype=torch.float64)
    u2 = torch.rand(n_batches, k, generator=generator, device=dev, dtype=torch.float64)
    i = torch.minimum(torch.floor(u1 * n), n - 1).long()
    j = torch.minimum(torch.floor(u2 * (n - 1)), n - 2).long()
    j = j + (j >= i).long()                             # uniform over the n - 1 others
    first, second = order[starts[chosen] + i], order[starts[chosen] + j]
    return torch.stack([first, second], dim=-1).reshape(n_batches, batch_size)


def class_inclusion_probabilities(counts, k: int) -> torch.Tensor:
    r"""Probability that each class is among the :math:`k` drawn by successive sampling
    proportional to ``counts`` (the class draw of :func:`paired_class_sampler`).

    With weights :math:`w_c = n_c/\sum n` and independent clocks :math:`T_c\sim\mathrm{Exp}(w_c)`,
    the drawn set is the :math:`k` earliest clocks, so

    .. math:: \pi_c = \int_0^\infty w_c e^{-w_c t}\,
              \Pr\big[\#\{i\ne c: T_i < t\}\le k-1\big]\,dt ,

    where the count is Poisson-binomial with success probabilities :math:`1-e^{-w_i t}`. The
    integral is computed by ``scipy.integrate.quad_vec`` for all classes at once. Always
    :math:`\sum_c\pi_c = k` and :math:`\pi_c\le 1`; :math:`\pi_c\propto n_c` only when
    :math:`k = 1` or all sizes are equal.

    Shapes: ``counts`` ``(K,)`` positive, integer (e.g. ``torch.bincount`` of the labels) or
    floating; returns float64 ``(K,)`` on the counts' device, without gradient (a quadrature).
    """
    from scipy.integrate import quad_vec

    if isinstance(counts, torch.Tensor) and not (counts.is_floating_point() or counts.is_complex()
                                                 or counts.dtype == torch.bool):
        counts = counts.to(torch.float64)               # class sizes are naturally integers
    counts = as_float_tensor(counts, "counts")
    check_finite(counts, "counts")
    if counts.ndim != 1 or (counts <= 0).any():
        raise ValueError("counts must be a 1-D tensor of positive class sizes")
    K = counts.numel()
    check_int(k, "k", low=1, high=K)
    w = (counts.detach().double() / counts.detach().double().sum()).cpu().numpy()
    if k == K:
        return torch.ones(K, dtype=torch.float64, device=counts.device)
    import numpy as np

    others = ~np.eye(K, dtype=bool)                      # others[c, i]: is i another class?

    def integrand(t):
        p = -np.expm1(-w * t)                            # P(T_i < t)
        q = np.zeros((K, k))                             # q[c, m] = P(m of the others before t)
        q[:, 0] = 1.0
        for i in range(K):
            pi = np.where(others[:, i], p[i], 0.0)[:, None]
            shifted = np.concatenate([np.zeros((K, 1)), q[:, :-1]], axis=1)
            q = q * (1.0 - pi) + shifted * pi
        return w * np.exp(-w * t) * q.sum(axis=1)

    pi, _ = quad_vec(integrand, 0.0, np.inf, epsabs=1e-12, epsrel=1e-10)
    return torch.as_tensor(np.clip(pi, 0.0, 1.0), dtype=torch.float64, device=counts.device)


# -- the two-head ensemble and a compactness measure ----------------------------------------

def ensemble_weight_search(p_main, p_aux, labels, grid: int = 101):
    r"""Accuracy of the mixture :math:`\alpha p^{\text{main}} + (1-\alpha) p^{\text{aux}}` on a
    grid :math:`\alpha\in\{0, \tfrac{1}{G-1}, \dots, 1\}`, and the best :math:`\alpha`.

    Run it on *validation* data; the chosen :math:`\alpha` is then applied to the test set.
    Ties go to the smallest :math:`\alpha` (``numpy.argmax``, as in the post), and a row whose
    mixture ties between classes predicts the first of them (``torch.argmax``).

    Shapes: ``p_main``, ``p_aux`` ``(N, C)``, ``labels`` ``(N,)`` integers in ``[0, C)``
    (else ``ValueError``). Returns
    ``(alpha_star, alphas, accuracies)`` with a float and two float64 tensors of length
    ``grid``.
    """
    p1 = as_float_tensor(p_main, "p_main", min_ndim=2)
    p2 = as_float_tensor(p_aux, "p_aux", min_ndim=2)
    check_finite(p1, "p_main")
    check_finite(p2, "p_aux")
    if p1.ndim != 2 or p1.shape != p2.shape:
        raise ValueError(f"p_main and p_aux must both have shape (N, C), got "
                         f"{tuple(p1.shape)} and {tuple(p2.shape)}")
    _, labels = _features_labels(p1, labels, "p_main")
    if int(labels.max()) >= p1.shape[1]:
        raise ValueError(f"labels must be < C = {p1.shape[1]} (the number of columns of p_main), "
                         f"got {int(labels.max())}")
    check_int(grid, "grid", low=2)
    alphas = torch.arange(grid, dtype=torch.float64, device=p1.device) / (grid - 1)
    work = work_dtype(torch.promote_types(p1.dtype, p2.dtype))   # float16 mixtures round ties
    a = alphas.to(work)[:, None, None]
    pred = (a * p1.to(work) + (1 - a) * p2.to(work)).argmax(dim=-1)       # (grid, N)
    acc = (pred == labels).to(torch.float64).mean(dim=-1)
    best = int(torch.argmax(acc))                       # first maximum
    return float(alphas[best]), alphas, acc


def within_between_ratio(features, labels) -> float:
    r"""Within-class over between-class scatter of features, a compactness measure that does
    not change when the features are scaled, shifted or rotated.

    With class means :math:`\mu_j`, the overall mean :math:`\mu` and :math:`N` samples,

    .. math:: \rho = \frac{\tfrac1N\sum_n\|h_n - \mu_{y_n}\|^2}
                          {\tfrac1N\sum_n\|\mu_{y_n} - \mu\|^2},

    the two terms adding up to the total scatter :math:`\tfrac1N\sum_n\|h_n-\mu\|^2`. Computed
    in float64 after centring by :math:`\mu` and dividing by the largest centred entry, so that
    the squares neither overflow nor underflow (scale invariance holds from 1e-300 to 1e300).
    Shapes: ``features`` ``(N, d)``, ``labels`` ``(N,)`` with at least two distinct classes
    (else ``ValueError``). Returns ``nan`` when all feature rows are equal (exact comparison), and
    ``inf`` when the class means coincide up to rounding: the between-class scatter is at most
    :math:`N^3\varepsilon^2` times the total (:math:`\varepsilon` of float64; the rounding of
    means of :math:`N` terms), so ratios beyond :math:`1/(N^3\varepsilon^2)` read as ``inf``.
    """
    h, labels = _features_labels(features, labels, "features")
    classes, inv = torch.unique(labels, return_inverse=True)
    if classes.numel() < 2:
        raise ValueError("within_between_ratio needs at least two classes in labels")
    if bool((h == h[0]).all()):
        return float("nan")
    h = h.to(torch.float64) if h.device.type != "mps" else h
    h = h / h.abs().amax()                               # no overflow in the mean
    h = h - h.mean(dim=0)
    h = h / h.abs().amax()                               # > 0: the rows are not all equal
    n = torch.bincount(inv).to(h.dtype)
    means = torch.zeros(classes.numel(), h.shape[1], dtype=h.dtype, device=h.device)
    means.index_add_(0, inv, h)
    means = means / n[:, None]
    within = ((h - means[inv]) ** 2).sum()
    between = ((means[inv] - h.mean(dim=0)) ** 2).sum()
    N, eps = h.shape[0], torch.finfo(h.dtype).eps
    if float(between) <= N**3 * eps**2 * float(within + between):
        return float("inf")
    return float(within / between)


# -- pseudo-labelling ------------------------------------------------------------------------

def pseudo_labels(probs, threshold: float):
    r"""Hard pseudo-labels of the confident rows of a model's predicted probabilities.

    Row :math:`n` is selected when its largest probability reaches the threshold,
    :math:`\max_c p_{nc}\ge\tau` (inclusive), and its pseudo-label is
    :math:`\hat y_n=\arg\max_c p_{nc}`, the first class among tied maxima (``torch.argmax``).
    These are the hard pseudo-labels of Lee (2013), who used every unlabelled point
    (:math:`\tau=0`); training on :math:`(x_n,\hat y_n)` with cross-entropy minimises
    :math:`-\log\max_c p_{nc}`, the min-entropy of the prediction. The comparison is made
    exactly, in float64, so it does not depend on the dtype of ``probs`` (a float32 ``0.7`` is
    :math:`0.69999998\ldots` and is not selected at :math:`\tau=0.7`). Lowering :math:`\tau`
    can only add rows. :math:`\tau=0` selects every row (the post's choice: all test images),
    and so does :math:`\tau\le 1/C` up to the rounding of ``probs`` (every row's largest
    probability is at least :math:`1/C`). A :math:`\tau` above every row's maximum selects
    none and returns empty tensors.

    Shapes: ``probs`` ``(N, C)``, rows non-negative and summing to 1 (``ValueError``
    otherwise); ``threshold`` a real number in :math:`[0, 1]`. Returns ``(index, label)``, two
    ``(M,)`` long tensors on the device of ``probs``: the selected rows in increasing order and
    their pseudo-labels.
    """
    p = check_probability(probs, "probs")
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {tuple(p.shape)}")
    tau = check_real(threshold, "threshold", low=0.0, high=1.0)
    top, label = p.amax(dim=-1), p.argmax(dim=-1)       # argmax: the first maximum
    index = torch.nonzero(top.double() >= tau).flatten()  # exact: tau is not rounded to p's dtype
    return index, label[index]
