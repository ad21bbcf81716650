"""Tests of tools/mutate.py's filter: which code it leaves unmutated (no cosmic-ray needed)."""

import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from mutate import skipped_spans  # noqa: E402

SOURCE = textwrap.dedent('''\
    @lru_cache(maxsize=256)
    def f(x, /, *, n=2):
        if x < 0:
            raise ValueError("x must be >= 0")
        check_int(n - 1, "n")
        y = x.sum(dim=-1, keepdim=True) + 1
        return y * n
    ''')


def _skipped(source: str) -> set[str]:
    """The source text of each skipped span (single-line spans only, as in SOURCE)."""
    lines = source.splitlines()
    out = set()
    for (l0, c0), (l1, c1) in skipped_spans(source):
        assert l0 == l1
        out.add(lines[l0 - 1][c0:c1])
    return out


def test_filter_skips_checks_axes_decorators_and_signature_markers():
    skipped = _skipped(SOURCE)
    assert skipped == {"lru_cache(maxsize=256)", "*", "/", "x < 0",
                       'raise ValueError("x must be >= 0")', 'check_int(n - 1, "n")', "-1",
                       "True"}


def test_filter_leaves_the_arithmetic_and_defaults():
    skipped = "".join(_skipped(SOURCE))
    for kept in ("+ 1", "y * n", "n=2"):
        assert kept not in skipped
