"""Fail when a chapter's execution in the last book build exceeded its time budget.

The book executes every chapter through jupyter-cache; each cache record stores how long the
notebook took. This reads the newest record of every notebook and fails when one took longer
than the budget (default 30 s, the limit every chapter is written for on a 2-core CPU; override
with ``DLMATH_CHAPTER_BUDGET_S``). This is a budget, not a speed claim: speed claims live in
benchmarks/.

Usage: python tools/exec_budget.py [_build/.jupyter_cache]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from export_executed import newest_records
from jupyter_cache import get_cache


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "_build/.jupyter_cache")
    if not path.exists():
        sys.exit(f"exec budget: no execution cache at {path} (build the book first)")
    budget = float(os.environ.get("DLMATH_CHAPTER_BUDGET_S", "30"))
    newest = {}
    for uri, record in newest_records(get_cache(str(path))).items():
        seconds = (record.data or {}).get("execution_seconds")
        if seconds is not None:
            newest[uri] = seconds
    over = []
    for uri, seconds in sorted(newest.items()):
        flag = "OVER BUDGET" if seconds > budget else "ok"
        print(f"{seconds:7.1f} s  {Path(uri).name}  {flag}")
        if seconds > budget:
            over.append(Path(uri).name)
    total = sum(newest.values())
    print(f"exec budget: {len(newest)} chapters, {total:.0f} s in all, budget {budget:.0f} s "
          f"each; {len(over)} over")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
