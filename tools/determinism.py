"""Run every chapter again and compare its outputs with those of the last book build.

Each chapter is seeded and promises the same outputs every time. The book build stores the
executed notebooks in its jupyter-cache; this executes each source notebook once more, in the
same way (its own folder as the working directory, a fresh kernel), and compares the two runs
cell by cell: printed text, returned values and errors must be identical, character for
character. Figures are compared by their PNG bytes and reported, but do not fail the check: a
PNG also records how the renderer rounded, which is not a result.

Usage: python tools/determinism.py [_build/.jupyter_cache] [--jobs 2] [NOTEBOOK ...]
Exit status 0 when every chapter printed the same thing twice.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
from jupyter_cache import get_cache
from nbclient import NotebookClient

TEXT_TYPES = ("text/plain", "text/markdown", "text/latex", "application/json")


def texts(cell) -> list[str]:
    """What a reader sees of a code cell's outputs, as text (figures excluded). Consecutive
    pieces of one stream are joined: how a kernel splits printed text into messages varies."""
    out = []
    for o in cell.get("outputs", []):
        kind = o["output_type"]
        if kind == "stream":
            head = f"[{o['name']}] "
            if out and out[-1].startswith(head):
                out[-1] += o["text"]
            else:
                out.append(head + o["text"])
        elif kind == "error":
            out.append(f"[error] {o['ename']}: {o['evalue']}")
        else:
            data = o.get("data", {})
            out += [f"[{t}] {data[t]}" for t in TEXT_TYPES if t in data]
    return out


def figures(cell) -> list[str]:
    return [o["data"]["image/png"] for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]


def compare(cached, fresh) -> tuple[list[str], int]:
    """(text differences, number of figures whose bytes differ) between two runs."""
    diffs, figs = [], 0
    a = [c for c in cached.cells if c.cell_type == "code"]
    b = [c for c in fresh.cells if c.cell_type == "code"]
    if len(a) != len(b):
        return [f"{len(a)} code cells in the build, {len(b)} now"], 0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        tx, ty = texts(x), texts(y)
        if tx != ty:
            lines = difflib.unified_diff("".join(tx).splitlines(), "".join(ty).splitlines(),
                                         "build", "rerun", lineterm="", n=0)
            diffs.append(f"code cell {i}:\n    " + "\n    ".join(list(lines)[2:12]))
        figs += figures(x) != figures(y)
    return diffs, figs


def rerun(path: Path, timeout: int = 300):
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", nargs="?", default="_build/.jupyter_cache")
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    if not Path(args.cache).exists():
        sys.exit(f"determinism: no execution cache at {args.cache} (build the book first)")
    newest = {}
    for record in get_cache(args.cache).list_cache_records():
        if record.uri not in newest or record.created > newest[record.uri].created:
            newest[record.uri] = record
    wanted = {p.resolve() for p in args.notebooks}
    records = [r for uri, r in sorted(newest.items()) if not wanted or Path(uri) in wanted]
    if not records:
        sys.exit("determinism: no cached chapter to compare")
    cache = get_cache(args.cache)

    def check(record):
        fresh, seconds = rerun(Path(record.uri))
        return record, seconds, *compare(cache.get_cache_bundle(record.pk).nb, fresh)

    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for record, seconds, diffs, figs in pool.map(check, records):
            name = Path(record.uri).name
            note = f", {figs} figure(s) differ in their PNG bytes" if figs else ""
            print(f"{'DIFFERS' if diffs else 'same':8s}{name} ({seconds:.1f} s{note})")
            for d in diffs:
                print("  " + d)
            failed += bool(diffs)
    print(f"determinism: {len(records) - failed} of {len(records)} chapters printed the same "
          f"outputs twice")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
