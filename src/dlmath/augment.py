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

The two geometric augmentations, :func:`random_rotate` (an angle uniform in
:math:`\pm10^\circ`) and :func:`random_zoom` (a factor :math:`r\sim U[0.8, 1.2]`; enlarged images
are cropped back to size, shrunk ones are pasted onto another image of the batch), interpolate,
so they need floating images and raise ``TypeError`` for integer or boolean ones (convert with
``x.float()``; rounding back is the caller's choice). They use ``torch.nn.functional``'s
``grid_sample`` and ``interpolate`` with ``align_corners=False``: pixels are squares filling
:math:`[-1, 1]^2`, so a resize maps the image's outer edges onto each other and a rotation by a
multiple of 90° maps pixel centres onto pixel centres.
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    as_float_tensor,
    check_choice,
    check_generator,
    check_int,
    check_real,
    work_dtype,
)

__all__ = ["quarter_masks", "quarter_mask", "splice_mask", "same_class_splice",
           "random_splice", "random_flip", "rotate", "random_rotate", "random_zoom",
           "SPLICE_MODES", "INTERPOLATIONS"]

#: The interpolation modes of :func:`rotate` and :func:`random_zoom` (the post used nearest).
INTERPOLATIONS = ("bilinear", "nearest")

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


# -- geometric augmentations: these interpolate, so they need floating images ----------------

def _float_images(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype for rotation and zoom, which interpolate; "
                        f"got {x.dtype} (convert with x.float() and round back if needed)")
    return _images(x)


def _as_nchw(x: torch.Tensor) -> torch.Tensor:
    """(N, ..., S, S) -> (N, C, S, S), C the product of the middle dimensions (1 if none)."""
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def rotate(x, degrees, *, mode: str = "bilinear") -> torch.Tensor:
    r"""Rotate each image about its centre by ``degrees``, counter-clockwise as displayed
    (row 0 on top), so that ``rotate(x, 90)`` is ``torch.rot90(x, 1, dims=(-2, -1))``.

    Output pixel :math:`u` (normalised coordinates in :math:`[-1,1]^2`, first coordinate the
    column, second the row) reads the input at :math:`R_\theta u` with
    :math:`R_\theta=\begin{pmatrix}\cos\theta&-\sin\theta\\ \sin\theta&\cos\theta\end{pmatrix}`,
    interpolated by ``grid_sample`` (``mode`` ``"bilinear"`` or ``"nearest"``,
    ``align_corners=False``); points that fall outside the image read 0. A multiple of 90°
    maps pixel centres onto pixel centres, so it equals ``torch.rot90`` up to the rounding of
    the sampling grid (relative error about :math:`S` times the dtype's epsilon: ``3e-5`` in
    float32 at :math:`S=299`), and exactly with ``mode="nearest"``.

    Shapes: ``x`` ``(N, ..., S, S)`` floating (integer and boolean images raise ``TypeError``);
    ``degrees`` a number or an ``(N,)`` tensor. The result has the shape, dtype and device of
    ``x``; float16 and bfloat16 images are resampled in float32 and rounded back once.
    """
    x = _float_images(x)
    check_choice(mode, "mode", INTERPOLATIONS)
    n = x.shape[0]
    if isinstance(degrees, torch.Tensor):
        deg = degrees.to(device=x.device, dtype=torch.float64)
        if deg.ndim == 0:
            deg = deg.expand(n)
        if deg.shape != (n,):
            raise ValueError(f"degrees must be a number or have shape ({n},), got "
                             f"{tuple(degrees.shape)}")
        if not torch.isfinite(deg).all():
            raise ValueError("degrees must be finite")
    else:
        deg = torch.full((n,), check_real(degrees, "degrees"), dtype=torch.float64,
                         device=x.device)
    t = torch.deg2rad(deg)
    cos, sin, zero = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    # half images are resampled in float32 (a half-precision affine_grid is coarse, and some
    # CPU kernels lack it) and rounded back once
    work = work_dtype(x.dtype)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1),
                         torch.stack([sin, cos, zero], -1)], -2).to(work)      # (N, 2, 3)
    x4 = _as_nchw(x).to(work)
    grid = torch.nn.functional.affine_grid(theta, list(x4.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x4, grid, mode=mode, padding_mode="zeros",
                                          align_corners=False)
    return out.to(x.dtype).reshape(x.shape)


def random_rotate(x, max_degrees: float = 10.0, *, generator: torch.Generator,
                  mode: str = "bilinear"):
    r"""Rotate each image by an angle uniform in ``[-max_degrees, max_degrees]`` (the post:
    :math:`\pm10^\circ`), with :func:`rotate`.

    Returns ``(rotated, degrees)`` with ``degrees`` the ``(N,)`` float64 angles drawn,
    :math:`(2u-1)\,\text{max\_degrees}` for one uniform :math:`u` per image. Shapes: ``x``
    ``(N, ..., S, S)`` floating.
    """
    x = _float_images(x)
    max_degrees = check_real(max_degrees, "max_degrees", nonnegative=True)
    g = check_generator(generator, x.device, of="the images")
    u = torch.rand(x.shape[0], generator=g, device=x.device, dtype=torch.float64)
    deg = (2 * u - 1) * max_degrees
    return rotate(x, deg, mode=mode), deg


def _window(img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
    """out[i, c, a, b] = img[i, c, rows[i, a], cols[i, b]] where both lie in [0, T), else 0;
    also returns where they do, (n, S, S). img (n, C, T, T); rows, cols (n, S) long."""
    n, c, T = img.shape[0], img.shape[1], img.shape[-1]
    S = rows.shape[1]
    r, k = rows.clamp(0, T - 1), cols.clamp(0, T - 1)
    out = img.gather(2, r[:, None, :, None].expand(n, c, S, T))
    out = out.gather(3, k[:, None, None, :].expand(n, c, S, S))
    inside = ((rows >= 0) & (rows < T))[:, :, None] & ((cols >= 0) & (cols < T))[:, None, :]
    return out, inside


def _resize(x4: torch.Tensor, T: int, mode: str) -> torch.Tensor:
    """Resize (n, C, S, S) to (n, C, T, T) with pixel-centre sampling. torch's "nearest" reads
    source pixel floor(dst S/T), half a pixel off (8 -> 10 gives 0,0,1,..); "nearest-exact"
    reads floor((dst + 1/2) S/T), the centre rule of PIL (scipy.misc.imresize, the post)."""
    if mode == "bilinear":
        return torch.nn.functional.interpolate(x4, size=(T, T), mode="bilinear",
                                               align_corners=False)
    return torch.nn.functional.interpolate(x4, size=(T, T), mode="nearest-exact")


def random_zoom(x, low: float = 0.8, high: float = 1.2, *, generator: torch.Generator,
                mode: str = "bilinear"):
    r"""The post's random zoom: resize each image by a factor :math:`r\sim U[\text{low},
    \text{high}]` and bring it back to :math:`S\times S`.

    The resized side is :math:`T=\lfloor rS\rfloor` (``int(img_size * r)`` in the post), so the
    factor applied is :math:`T/S`. The image is resized to :math:`T\times T` with
    ``torch.nn.functional.interpolate`` (``mode="bilinear"`` with ``align_corners=False``, or
    ``mode="nearest"``, done by torch's ``"nearest-exact"``: output pixel :math:`m` reads input
    pixel :math:`\lfloor (m+\tfrac12)S/T\rfloor`, the pixel under its centre); then, with an
    offset :math:`(t, l)` uniform on :math:`\{0,\dots,|T-S|\}^2`,

    * :math:`T\ge S`: the output is the crop ``resized[..., t:t+S, l:l+S]``;
    * :math:`T<S`: the output is a background image with ``[..., t:t+T, l:l+T]`` replaced by the
      resized image. The background is *another* image of the batch, uniform among the other
      :math:`N-1` (the post took a random training image, of any class), so a shrunk image
      shows a share :math:`1-T^2/S^2` of a foreign picture.

    A factor with :math:`T=S` (e.g. :math:`r=1`) returns the image unchanged. Returns
    ``(zoomed, info)``; ``info`` holds ``(N,)`` tensors ``"factor"`` (float64, the :math:`r`
    drawn), ``"size"`` (:math:`T`), ``"top"``, ``"left"`` (the offsets) and ``"background"``
    (the index of the background image, ``-1`` where :math:`T\ge S`). Shapes: ``x``
    ``(N, ..., S, S)`` floating (integer images raise ``TypeError``); ``0 < low <= high`` with
    :math:`\lfloor \text{low}\cdot S\rfloor\ge1`, and ``N >= 2`` when ``low < 1``.
    """
    x = _float_images(x)
    check_choice(mode, "mode", INTERPOLATIONS)
    low = check_real(low, "low", positive=True)
    high = check_real(high, "high", low=low)
    n, S = x.shape[0], x.shape[-1]
    if math.floor(low * S) < 1:
        raise ValueError(f"low * S must be >= 1 (a zoomed image needs a pixel), got "
                         f"{low} * {S}")
    if low < 1 and n < 2:
        raise ValueError(f"x needs at least 2 images (N >= 2) when low < 1: a shrunk "
                         f"image is pasted onto another one; got shape {tuple(x.shape)}")
    g = check_generator(generator, x.device, of="the images")
    r = low + (high - low) * torch.rand(n, generator=g, device=x.device, dtype=torch.float64)
    size = torch.floor(r * S).long()
    span = (size - S).abs() + 1
    top = (torch.rand(n, generator=g, device=x.device, dtype=torch.float64) * span).long()
    left = (torch.rand(n, generator=g, device=x.device, dtype=torch.float64) * span).long()
    top, left = torch.minimum(top, span - 1), torch.minimum(left, span - 1)
    shift = torch.randint(1, max(n, 2), (n,), generator=g, device=x.device)
    other = (torch.arange(n, device=x.device) + shift) % n
    background = torch.where(size < S, other, torch.full_like(other, -1))
    x4 = _as_nchw(x)
    out = torch.empty_like(x4)
    line = torch.arange(S, device=x.device)
    for T in torch.unique(size).tolist():
        sel = torch.nonzero(size == T).flatten()
        resized = _resize(x4[sel].to(work_dtype(x.dtype)), T, mode).to(x.dtype)
        if T >= S:                                                  # crop the enlarged image
            out[sel], _ = _window(resized, top[sel, None] + line, left[sel, None] + line)
        else:                                                       # paste onto a background
            block, inside = _window(resized, line - top[sel, None], line - left[sel, None])
            out[sel] = torch.where(inside[:, None], block, x4[background[sel]])
    info = {"factor": r, "size": size, "top": top, "left": left, "background": background}
    return out.reshape(x.shape), info
