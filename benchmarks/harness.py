"""A small benchmark harness: candidates timed side by side, reported as ratios.

Shared machines move absolute times by 2-6x with load, so a benchmark never reports a time on
its own. It runs every candidate **in the same process, interleaved in rounds** (the order
rotated each round, so no candidate always runs first or last), and reports for each candidate
the **median over rounds of its time divided by the anchor's time in the same round**.

Usage inside a ``benchmarks/bench_*.py`` script::

    from harness import Case, run_cases, save

    cases = [Case("msign 1024x1024", {"dlmath": f, "torch": g}, anchor="torch")]
    save("msign", run_cases(cases))

Results go to ``benchmarks/results/<machine>.json`` (one file per machine, one entry per
benchmark), with the machine's description; the book's performance appendix is generated from
the committed files.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Case:
    """One comparison: candidates (name -> zero-argument callable) against an anchor."""

    name: str
    candidates: dict[str, Callable[[], object]]
    anchor: str
    rounds: int = 15
    min_time: float = 0.05  # seconds per measurement; calls are repeated to reach it
    notes: dict = field(default_factory=dict)
    warmup: bool = True  # False: one call per measurement, no warm-up (for minute-long calls)

    def __post_init__(self):
        if self.anchor not in self.candidates:
            raise ValueError(f"anchor {self.anchor!r} is not one of the candidates "
                             f"{list(self.candidates)}")


def _sync(device: str | None) -> None:
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


def _measure(fn: Callable[[], object], number: int, device: str | None) -> tuple[float, float]:
    """(wall, cpu) seconds per call over ``number`` calls."""
    _sync(device)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(number):
        fn()
    _sync(device)
    return ((time.perf_counter() - wall0) / number, (time.process_time() - cpu0) / number)


def _calibrate(fn, min_time: float, device: str | None) -> int:
    fn()  # warm-up: allocations, lazy initialisation, compilation
    number = 1
    while True:
        wall, _ = _measure(fn, number, device)
        if wall * number >= min_time or number >= 1 << 20:
            return number
        number *= 2


def run_case(case: Case, device: str | None = None) -> dict:
    """Time the candidates of ``case`` in interleaved, rotated rounds; return ratios."""
    names = list(case.candidates)
    numbers = {n: _calibrate(case.candidates[n], case.min_time, device) if case.warmup else 1
               for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    for r in range(case.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            wall, cpu = _measure(case.candidates[n], numbers[n], device)
            walls[n].append(wall)
            cpus[n].append(cpu)
    anchor = case.anchor
    out = {"name": case.name, "anchor": anchor, "rounds": case.rounds, "notes": case.notes,
           "candidates": {}}
    for n in names:
        ratios = [w / a for w, a in zip(walls[n], walls[anchor], strict=True)]
        cpu_ratios = [c / a for c, a in zip(cpus[n], cpus[anchor], strict=True) if a > 0]
        out["candidates"][n] = {
            "median_ratio": statistics.median(ratios),
            "ratio_iqr": _iqr(ratios),
            "median_cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None,
            "median_wall_s": statistics.median(walls[n]),
            "calls_per_measurement": numbers[n],
        }
    return out


# aten ops that copy a value to the host: on a GPU each waits for the queued kernels to finish
HOST_SYNC_OPS = frozenset({"aten._local_scalar_dense.default", "aten.equal.default",
                           "aten.is_nonzero.default", "aten.item.default", "aten.nonzero.default",
                           "aten.masked_select.default"})


class _CountDispatch(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.kernels += not func.is_view
        self.syncs += str(func) in HOST_SYNC_OPS
        return func(*args, **(kwargs or {}))


def dispatch_counts(fn: Callable[[], object]) -> dict:
    """What one call of ``fn`` asks of the device, counted at torch's dispatcher (device-free,
    deterministic): ``aten_ops``, the aten operators other than views (each one a kernel
    launch on a GPU, or a fused few), and ``host_syncs``, those that copy a value to the host.
    When a call is bound by launches, as small ones on a GPU are, its time follows these."""
    with _CountDispatch() as mode:
        fn()
    return {"aten_ops": mode.kernels, "host_syncs": mode.syncs}


def _iqr(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return [q[0], q[2]]


def run_cases(cases: list[Case], device: str | None = None, threads: int | None = None) -> list:
    """Run every case with torch's threads pinned; print one line per candidate."""
    if threads is not None:
        torch.set_num_threads(threads)
    results = []
    for case in cases:
        res = run_case(case, device)
        results.append(res)
        for n, c in res["candidates"].items():
            print(f"{case.name:<40} {n:<28} {c['median_ratio']:8.3f}x {case.anchor}"
                  f"  (IQR {c['ratio_iqr'][0]:.3f}-{c['ratio_iqr'][1]:.3f})")
    return results


def machine() -> dict:
    """Describe the machine the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "gpu": None}
    if torch.cuda.is_available():
        desc["gpu"] = torch.cuda.get_device_name(0)
    return desc


def machine_slug(desc: dict) -> str:
    name = desc["gpu"] or f"{desc['cpu']}-{desc['torch_threads']}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def save(benchmark: str, results: list, desc: dict | None = None) -> Path:
    """Merge ``results`` under ``benchmark`` into this machine's results file."""
    desc = desc or machine()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{machine_slug(desc)}.json"
    data = json.loads(path.read_text()) if path.exists() else {"machine": desc, "benchmarks": {}}
    data["machine"] = desc
    data["benchmarks"][benchmark] = {
        "date": time.strftime("%Y-%m-%d"),
        "cases": results,
    }
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"saved {benchmark} to {path}")
    return path
