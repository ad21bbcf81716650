"""The book's matplotlib style and a few figure helpers.

This is the only module of dlmath that imports matplotlib. Chapters call :func:`figure`
(which applies the style) and end the plotting cell with ``plt.show()``.
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

__all__ = ["PALETTE", "style", "figure", "band", "annotate_value"]

#: Colour-blind-safe palette (Okabe–Ito), used in this order by every figure of the book.
PALETTE = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # green
    "#CC79A7",  # purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)

_RC = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "figure.figsize": (6.4, 3.8),
    "figure.constrained_layout.use": True,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "mathtext.fontset": "cm",
    "svg.hashsalt": "dlmath",  # deterministic SVG ids
}


def style() -> None:
    """Apply the book's style to matplotlib's global rcParams (idempotent)."""
    mpl.rcParams.update(_RC)


def figure(nrows: int = 1, ncols: int = 1, *, width: float | None = None,
           height: float | None = None, **subplot_kw):
    """``plt.subplots`` in the book's style; the default size grows with the grid.

    Returns ``(fig, ax)`` exactly like ``plt.subplots`` (``ax`` is an array when the grid
    has more than one panel).
    """
    style()
    w = width if width is not None else min(3.6 * ncols + 1.0, 11.0)
    h = height if height is not None else 3.2 * nrows + 0.4
    return plt.subplots(nrows, ncols, figsize=(w, h), **subplot_kw)


def band(ax, x, low, high, *, label: str | None = None, color: str | None = None,
         alpha: float = 0.18):
    """Shade the region between ``low`` and ``high`` over ``x`` (an allowed range, a bound)."""
    return ax.fill_between(x, low, high, color=color or PALETTE[0], alpha=alpha, lw=0,
                           label=label)


def annotate_value(ax, x, y, text: str, *, dx: float = 8, dy: float = 8):
    """Put a small marker at ``(x, y)`` with ``text`` offset by ``(dx, dy)`` points."""
    ax.plot([x], [y], "o", ms=4, color=PALETTE[6])
    return ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=9)
