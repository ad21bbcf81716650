r"""Image augmentations of the fine-tuning chapter, as batched torch functions.

Chapter: *Fine-tuning an image classifier* (``notebooks/35-finetuning-classifier.ipynb``).

Images are square, ``(N, ..., S, S)`` (a batch of :math:`N` images with any channel dimensions
before the last two), floating, integer (e.g. ``uint8``) or boolean tensors, whose dtype and
device every function keeps (array-likes are converted to floating tensors). Every random
function draws one decision per image from an explicit ``torch.Generator`` on the images'
device and returns ``(augmented, info)``, where ``info`` records what was drawn so the
frequencies can be checked. Sizes follow the post's Python 2
code, where ``S/2`` is integer division:

* quarter mask: with total probability :math:`p` one corner square of side
  :math:`\lfloor S/2\rfloor` is zeroed, each corner with probability :math:`p/4` (for odd
  :math:`S` the middle row and column are never masked, and a "quarter" is
  :math:`\lfloor S/2\rfloor^2/S^2 < 1/4` of the image);
* same-class splice: the first image supplies the first ``idx`` rows or columns (a fraction
  :math:`idx/S`, ``idx`` uniform in :math:`[\lfloor S/4\rfloor, \lfloor 3S/4\rfloor)`), or the
  lower triangle with its diagonal, or that triangle turned by 90°, a fraction
  :math:`(S+1)/(2S)`.
"""

from __future__ import annotations

import torch

from ._checks import as_float_tensor, check_choice, check_generator, check_int, check_real

__all__ = ["quarter_masks", "quarter_mask", "splice_mask", "same_class_splice",
           "random_splice", "random_flip", "SPLICE_MODES"]

#: The four splice modes, in the order of the post's thresholds on one uniform draw.
SPLICE_MODES = ("rows", "cols", "diag", "antidiag")


def _images(x, name: str = "x", *, batched: bool = True) -> torch.Tensor:
    min_ndim = 3 if batched else 2
    if isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex()):
        # integer (e.g. uint8) or boolean images keep their dtype: every function here only
        # selects, zeroes or mirrors pixels, which is exact in any real dtype
        if x.ndim < min_ndim:
            raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape "
                             f"{tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
        return _square(x, name)
    return _square(as_float_tensor(x, name, min_ndim=min_ndim), name)


def _square(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must hold square images (..., S, S), got {tuple(x.shape)}")
    return x


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a (N,) tensor to broadcast against x of shape (N, ..., S, S)."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def quarter_masks(size: int, *, device=None) -> torch.Tensor:
    r"""The post's four masks, ``(4, S, S)`` booleans that are ``False`` where pixels are zeroed:
    mask 0 zeroes the top-left :math:`\lfloor S/2\rfloor\times\lfloor S/2\rfloor` square and
    mask :math:`q` is mask 0 turned :math:`q` times by 90° (``torch.rot90``, like ``np.rot90``)."""
    check_int(size, "size", low=2)
    m = torch.ones(size, size, dtype=torch.bool, device=device)
    m[: size // 2, : size // 2] = False
    return torch.stack([torch.rot90(m, q, dims=(0, 1)) for q in range(4)])


def quarter_mask(x, p: float = 0.5, *, generator: torch.Generator):
    r"""Zero one corner square of each image with total probability ``p``.

    One uniform :math:`r` per image; corner :math:`q\in\{0,1,2,3\}` is zeroed when
    :math:`q\,p/4 \le 1-r < (q+1)\,p/4`, so each corner has probability :math:`p/4` and no
    mask :math:`1-p`. Masked pixels are set to 0 (also where they held ``inf`` or NaN). Returns
    ``(masked, quadrant)`` with ``quadrant`` a ``(N,)`` long tensor
    (``-1`` = untouched). Shapes: ``x`` ``(N, ..., S, S)``.
    """
    x = _images(x)
    p = check_real(p, "p", low=0.0, high=1.0)
    g = check_generator(generator, x.device, of="the images")
    r = torch.rand(x.shape[0], generator=g, device=x.device, dtype=torch.float64)
    q = torch.floor((1.0 - r) / (p / 4)) if p > 0 else torch.full_like(r, 4.0)
    q = torch.where(q < 4, q, torch.full_like(q, -1.0)).long()
    masks = quarter_masks(x.shape[-1], device=x.device)
    keep = torch.where(_per_image(q >= 0, x), masks[q.clamp(min=0)].reshape(
        (x.shape[0],) + (1,) * (x.ndim - 3) + x.shape[-2:]), True)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)), q


def splice_mask(size: int, mode: str, idx: int | None = None, *, device=None) -> torch.Tensor:
    r"""Where a splice takes its pixels from the first image: an ``(S, S)`` boolean mask.

    ``"rows"``: the first ``idx`` rows (``np.vstack((x[:idx], y[idx:]))``); ``"cols"``: the first
    ``idx`` columns; ``"diag"``: the lower triangle with the diagonal (``np.tri(S, S)``: pixel
    :math:`(i, j)` with :math:`j\le i`); ``"antidiag"``: that triangle turned by 90°
    (``np.rot90``). Fractions from the first image: :math:`idx/S` and :math:`(S+1)/(2S)`.
    ``idx`` (rows and cols only) must lie in ``[0, S]``.
    """
    check_int(size, "size", low=1)
    check_choice(mode, "mode", SPLICE_MODES)
    if mode in ("rows", "cols"):
        if idx is None:
            raise ValueError(f"mode={mode!r} needs the cut index idx")
        check_int(idx, "idx", low=0, high=size)
        line = torch.arange(size, device=device) < idx
        return (line[:, None] if mode == "rows" else line[None, :]).expand(size, size).clone()
    if idx is not None:
        raise ValueError(f"mode={mode!r} takes no idx")
    tri = torch.ones(size, size, dtype=torch.bool, device=device).tril()
    return tri if mode == "diag" else torch.rot90(tri, 1, dims=(0, 1))


def same_class_splice(x1, x2, mode: str, idx: int | None = None) -> torch.Tensor:
    r"""Splice two images of one class, ``where(splice_mask, x1, x2)``; the label is theirs.

    Shapes: ``x1`` and ``x2`` ``(..., S, S)`` of the same shape; the result has that shape."""
    x1, x2 = _images(x1, "x1", batched=False), _images(x2, "x2", batched=False)
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and "
                         f"{tuple(x2.shape)}")
    m = splice_mask(x1.shape[-1], mode, idx, device=x1.device)
    return torch.where(m, x1, x2)


def random_splice(x1, x2, *, generator: torch.Generator):
    r"""The post's random same-class splice, one per image pair.

    One uniform :math:`r` picks the mode (``rows`` if :math:`r>3/4`, ``cols`` if
    :math:`r>1/2`, ``diag`` if :math:`r>1/4`, else ``antidiag``: each 1/4) and the cut index
    is uniform in :math:`[\lfloor S/4\rfloor, \lfloor 3S/4\rfloor)` (drawn for every pair,
    used by the cuts). Returns ``(spliced, mode, idx)``: ``mode`` ``(N,)`` long indexes
    :data:`SPLICE_MODES` and ``idx`` ``(N,)`` long is the cut index. The share of pixels from
    ``x1`` is ``idx / S`` for a cut and :math:`(S+1)/(2S)` for a triangle.
    Shapes: ``x1``, ``x2`` ``(N, ..., S, S)``.
    """
    x1, x2 = _images(x1, "x1"), _images(x2, "x2")
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and "
                         f"{tuple(x2.shape)}")
    S, n = x1.shape[-1], x1.shape[0]
    if S < 4:
        raise ValueError(f"random_splice needs images of side >= 4, got {S}")
    g = check_generator(generator, x1.device, of="the images")
    r = torch.rand(n, generator=g, device=x1.device, dtype=torch.float64)
    idx = torch.randint(S // 4, (3 * S) // 4, (n,), generator=g, device=x1.device)
    mode = torch.where(r > 0.75, 0, torch.where(r > 0.5, 1, torch.where(r > 0.25, 2, 3)))
    line = torch.arange(S, device=x1.device)
    below = line[None, :] < idx[:, None]                                  # (n, S)
    rows, cols = below[:, :, None].expand(n, S, S), below[:, None, :].expand(n, S, S)
    diag = splice_mask(S, "diag", device=x1.device).expand(n, S, S)
    anti = splice_mask(S, "antidiag", device=x1.device).expand(n, S, S)
    masks = torch.stack([rows, cols, diag, anti])[mode, torch.arange(n, device=x1.device)]
    masks = masks.reshape((n,) + (1,) * (x1.ndim - 3) + (S, S))
    return torch.where(masks, x1, x2), mode, idx


def random_flip(x, p: float = 0.5, *, generator: torch.Generator):
    r"""Mirror each image left-right (the last axis) with probability ``p``.

    Returns ``(flipped, did_flip)`` with ``did_flip`` a ``(N,)`` boolean tensor. Shapes: ``x``
    ``(N, ..., S, S)``."""
    x = _images(x)
    p = check_real(p, "p", low=0.0, high=1.0)
    g = check_generator(generator, x.device, of="the images")
    flip = torch.rand(x.shape[0], generator=g, device=x.device, dtype=torch.float64) < p
    return torch.where(_per_image(flip, x), x.flip(-1), x), flip
