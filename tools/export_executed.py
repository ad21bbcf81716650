"""Write the chapters the last book build executed, with their outputs, into a folder.

The book executes every chapter once through jupyter-cache. `make rerun` runs nbval in strict
mode on these copies: each cell runs again in a fresh kernel, every assert must hold, and each
cell's printed text and values must equal the build's character for character (nbval skips
figures). So CI executes each chapter twice in all, and a chapter that prints anything that
changes between runs fails.

Usage: python tools/export_executed.py [_build/.jupyter_cache] [_build/executed]
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from jupyter_cache import get_cache


def newest_records(cache) -> dict:
    """The newest cache record of every notebook, by its path (uri)."""
    newest = {}
    for record in cache.list_cache_records():
        if record.uri not in newest or record.created > newest[record.uri].created:
            newest[record.uri] = record
    return newest


def export(cache_path: Path, out: Path) -> list[Path]:
    """The newest cached run of every notebook, written to ``out`` under its own name."""
    cache, written = get_cache(str(cache_path)), []
    out.mkdir(parents=True, exist_ok=True)
    for uri, record in sorted(newest_records(cache).items()):
        target = out / Path(uri).name
        nbformat.write(cache.get_cache_bundle(record.pk).nb, target)
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    cache_path = Path(argv[0] if argv else "_build/.jupyter_cache")
    out = Path(argv[1] if len(argv) > 1 else "_build/executed")
    if not cache_path.exists():
        sys.exit(f"export: no execution cache at {cache_path} (build the book first)")
    written = export(cache_path, out)
    if not written:
        sys.exit(f"export: the cache at {cache_path} holds no executed notebook")
    print(f"export: {len(written)} executed chapters in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
