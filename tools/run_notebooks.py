"""Run chapters as plain Python, without Jupyter, and time each one.

Reads each notebook as JSON and executes its code cells in order in a fresh namespace (with
matplotlib's non-interactive backend), in a fresh interpreter per notebook. Used to run the
chapters on machines without a Jupyter stack, for example a GPU machine:

    DLMATH_DEVICE=cuda python tools/run_notebooks.py notebooks/*.ipynb

Exit status 1 if any chapter raised (an assert in a check included).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

RUNNER = r"""
import json, sys, time
import matplotlib
matplotlib.use("Agg")
nb = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] != "code":
        continue
    source = "".join(cell["source"])
    exec(compile(source, f"{sys.argv[1]}:cell{i}", "exec"), namespace)
"""


def main(paths: list[str]) -> int:
    failed = []
    for path in paths:
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", RUNNER, path], capture_output=True,
                                text=True)
        seconds = time.perf_counter() - t0
        ok = result.returncode == 0
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:7.1f} s  {Path(path).name}", flush=True)
        if not ok:
            failed.append(path)
            print("\n".join(result.stderr.strip().splitlines()[-15:]), flush=True)
    print(f"run_notebooks: {len(paths) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
