"""Run chapters as plain Python, without Jupyter, and time each one.

Reads each notebook as JSON and executes its code cells in order in a fresh namespace (with
matplotlib's non-interactive backend), in a fresh interpreter per notebook. Used to run the
chapters on machines without a Jupyter stack, for example a GPU machine:

    DLMATH_DEVICE=cuda python tools/run_notebooks.py notebooks/*.ipynb

``--reseed N`` imitates a GPU's draws on any machine: every generator a chapter asks
``dlmath.device.generator`` for gets the seed ``seed + N``, except one asked for on the literal
``"cpu"`` (the chapters' way to draw the same numbers on every device). A CUDA generator gives
other numbers than a CPU one for the same seed, so with the GPU's sizes this finds the asserts
that hold for the CPU's draw only (which should draw on ``"cpu"`` or be guarded)::

    DLMATH_SIZE=large python tools/run_notebooks.py --reseed 7919 notebooks/*.ipynb

An assert guarded for the CPU's own run (``dev.type == "cpu" and device.preset() == ...``:
numbers quoted from that run) still runs there, on other draws, and may fail. ``--as-gpu`` turns
those guards off as a GPU would (every ``dev.type == "cpu"`` in a cell reads ``False``; the
chapters write their device tests in that one form), so that with ``--reseed`` a CPU runs what a
GPU runs, with other draws, at either preset::

    DLMATH_SIZE=small python tools/run_notebooks.py --reseed 7919 --as-gpu notebooks/*.ipynb

Each line gives the chapter's wall time and its peak memory: the process's resident set and,
on a GPU, ``torch.cuda.max_memory_allocated`` (what a smaller card, e.g. Colab's 16 GB, must
hold at the same preset). Exit status 1 if any chapter raised (an assert in a check included).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
from pathlib import Path

RUNNER = r"""
import json, sys, time
import matplotlib
matplotlib.use("Agg")
if int(sys.argv[2]):
    import dlmath.device
    dlmath.device.generator = reseeded(dlmath.device.generator, int(sys.argv[2]))
nb = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] != "code":
        continue
    source = "".join(cell["source"])
    if int(sys.argv[3]):
        source = source.replace('dev.type == "cpu"', "False")
    exec(compile(source, f"{sys.argv[1]}:cell{i}", "exec"), namespace)
import torch
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else 0
print(f"{PEAK} {peak_resident()} {cuda}", file=sys.stderr)
"""
PEAK = "run_notebooks-peak-bytes:"   # the runner's last line on stderr: resident and CUDA peaks


def peak_resident() -> int:
    """This process's peak resident memory in bytes: VmHWM of /proc/self/status on Linux.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries into it the resident size of the process
    that spawned this one (the parent's memory at the fork or vfork before exec), so a chapter
    started from a pytest worker would report the worker's 0.7 GB as its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # elsewhere: ru_maxrss, in bytes on macOS and kB on the other systems
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                 else 1024)


def peaks(stderr: str) -> str:
    """' peak 1.2 GB (CUDA 3.4 GB)' from the runner's last stderr line; '' if it is missing."""
    lines = [line for line in stderr.splitlines() if line.startswith(PEAK)]
    if not lines:
        return ""
    rss, cuda = (int(v) / 2**30 for v in lines[-1].split()[1:])
    return f"  peak {rss:4.1f} GB" + (f" (CUDA {cuda:.1f} GB)" if cuda else "")


def reseeded(generator, shift: int):
    """``generator(seed, device)`` with ``seed + shift`` unless ``device`` is the string "cpu"."""
    def other_draws(seed, device=None):
        keep = isinstance(device, str) and device == "cpu"   # not a chapter's torch.device dev
        return generator(seed if keep else seed + shift, device)
    return other_draws


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or any(
            a.startswith("-") and a not in ("--reseed", "--as-gpu") for a in argv):
        print(__doc__.split("\n\n")[0].strip(), "\n\nusage: python tools/run_notebooks.py "
              "[--reseed N] [--as-gpu] NOTEBOOK...  (see the module docstring)")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    shift, as_gpu = 0, False
    while argv[:1] in (["--reseed"], ["--as-gpu"]):
        if argv[0] == "--as-gpu":
            as_gpu, argv = True, argv[1:]
        else:
            shift, argv = int(argv[1]), argv[2:]
    runner = (f"PEAK = {PEAK!r}\n{inspect.getsource(reseeded)}\n"
              f"{inspect.getsource(peak_resident)}\n{RUNNER}")
    paths, failed = argv, []
    for path in paths:
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", runner, path, str(shift), str(int(as_gpu))],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        ok = result.returncode == 0
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:7.1f} s{peaks(result.stderr)}  "
              f"{Path(path).name}", flush=True)
        if not ok:
            failed.append(path)
            print("\n".join(result.stderr.strip().splitlines()[-15:]), flush=True)
    print(f"run_notebooks: {len(paths) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
