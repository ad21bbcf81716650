"""Sphinx extension: the performance appendix, rendered from committed benchmark results.

Two directives, both reading ``benchmarks/results/*.json`` (written by ``benchmarks/harness.py``):

* ``{benchmark-goals}`` evaluates the goals listed in ``benchmarks/goals.yml`` against those
  results and renders one row per goal: what was measured, the target, and whether it is met;
* ``{benchmark-results}`` renders, per machine and benchmark, a chart and a table of the median
  per-round time ratio of each candidate against the benchmark's anchor.

Nothing is measured at build time: the numbers are those committed with the results.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import yaml
from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _table(header, rows, widths):
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    for w in widths:
        group += nodes.colspec(colwidth=w)
    head = nodes.thead()
    body = nodes.tbody()
    for cells, parent in [(header, head)] + [(r, body) for r in rows]:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=str(cell))
            row += entry
        parent += row
    group += head
    group += body
    return table


def load_results(root: Path) -> dict[str, dict]:
    """Results files by machine slug (the file's stem)."""
    return {f.stem: json.loads(f.read_text()) for f in sorted(root.glob("*.json"))}


def _find_case(results: dict, goal: dict) -> dict | None:
    data = results.get(goal["machine"])
    if data is None or goal["benchmark"] not in data["benchmarks"]:
        return None
    return next((c for c in data["benchmarks"][goal["benchmark"]]["cases"]
                 if c["name"] == goal["case"]), None)


def _note(case: dict, path: list[str]) -> float | None:
    value = case.get("notes", {})
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def evaluate(goal: dict, results: dict) -> tuple[float | None, str]:
    """(measured value, status) of one goal; status is "met", "missed" or "not measured".

    The value is the candidate's median time ratio against the case's anchor
    (``candidate:``), optionally divided by another candidate's (``relative_to:``, a ratio of
    medians), or a number from the case's notes (``note: [key, ...]``), optionally divided by
    another (``divide_by: [key, ...]``). It is compared with ``at_most`` and/or
    ``at_least``.
    """
    case = _find_case(results, goal)
    value = None
    if case is not None:
        if "candidate" in goal:
            cand = case["candidates"].get(goal["candidate"])
            value = None if cand is None else float(cand["median_ratio"])
            if value is not None and "relative_to" in goal:
                other = case["candidates"].get(goal["relative_to"])
                value = None if other is None else value / float(other["median_ratio"])
        else:
            value = _note(case, goal["note"])
            if value is not None and "divide_by" in goal:
                den = _note(case, goal["divide_by"])
                value = None if not den else value / den
    if value is None or math.isnan(value):
        return None, "not measured"
    ok = value <= goal.get("at_most", math.inf) and value >= goal.get("at_least", -math.inf)
    return value, "met" if ok else "missed"


def _target(goal: dict) -> str:
    parts = []
    if "at_most" in goal:
        parts.append(f"≤ {goal['at_most']:g}")
    if "at_least" in goal:
        parts.append(f"≥ {goal['at_least']:g}")
    return " and ".join(parts)


def _machine_title(data: dict) -> str:
    m = data["machine"]
    return (f"{m.get('gpu') or m.get('cpu')} (torch {m.get('torch')}, "
            f"{m.get('torch_threads')} threads)")


class BenchmarkGoals(SphinxDirective):
    def run(self):
        src = Path(self.env.srcdir)
        goals_file = src / "benchmarks" / "goals.yml"
        self.env.note_dependency(str(goals_file))
        root = src / "benchmarks" / "results"
        for f in root.glob("*.json"):
            self.env.note_dependency(str(f))
        goals = yaml.safe_load(goals_file.read_text()) or []
        results = load_results(root)
        rows, tally = [], {"met": 0, "missed": 0, "not measured": 0}
        for goal in goals:
            value, status = evaluate(goal, results)
            tally[status] += 1
            where = _machine_title(results[goal["machine"]]).split(" (")[0] \
                if goal["machine"] in results else goal["machine"]
            rows.append([goal["goal"], where, "—" if value is None else f"{value:.3g}",
                         _target(goal), status])
        summary = nodes.paragraph(text=f"{tally['met']} of {len(goals)} goals met, "
                                       f"{tally['missed']} missed, "
                                       f"{tally['not measured']} not measured.")
        return [summary, _table(["goal", "machine", "measured", "target", "status"], rows,
                                [45, 20, 10, 10, 12])]


def ratio_chart(entry: dict, title: str) -> str:
    """An inline SVG bar chart of every non-anchor candidate's median ratio (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, errs = [], [], []
    for case in entry["cases"]:
        for name, c in case["candidates"].items():
            if name == case["anchor"]:
                continue
            labels.append(f"{case['name']}: {name}")  # the anchor is in the table below
            lo, hi = c["ratio_iqr"]
            values.append(c["median_ratio"])
            errs.append((c["median_ratio"] - lo, hi - c["median_ratio"]))
    # text as <text> (small, selectable), and ids salted per chart: several share one page
    rc = {"svg.fonttype": "none", "svg.hashsalt": title}
    with matplotlib.rc_context(rc):
        return _draw(plt, labels, values, errs, title)


def _draw(plt, labels, values, errs, title) -> str:
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(labels) + 1.0))
    y = list(range(len(labels)))[::-1]
    colors = ["#2a7ab0" if v <= 1 else "#c0504d" for v in values]
    ax.barh(y, values, color=colors, xerr=list(zip(*errs, strict=True)) if errs else None,
            error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.axvline(1.0, color="black", linewidth=0.8)
    if min(values) > 0 and max(values) > 10 * min(values):  # log only across decades
        ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("time / anchor time (median over rounds, IQR bars; < 1 is faster)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


class BenchmarkResults(SphinxDirective):
    def run(self):
        root = Path(self.env.srcdir) / "benchmarks" / "results"
        files = sorted(root.glob("*.json"))
        for f in files:
            self.env.note_dependency(str(f))
        if not files:
            return [nodes.paragraph(text="No benchmark results have been committed yet.")]
        out = []
        for f in files:
            data = json.loads(f.read_text())
            out.append(nodes.rubric(text=_machine_title(data)))
            for bench, entry in sorted(data["benchmarks"].items()):
                rows = []
                for case in entry["cases"]:
                    for name, c in case["candidates"].items():
                        if name == case["anchor"]:
                            continue
                        lo, hi = c["ratio_iqr"]
                        rows.append([case["name"], name, f"{c['median_ratio']:.3f}",
                                     f"{lo:.3f}–{hi:.3f}", case["anchor"]])
                out.append(nodes.paragraph(text=f"{bench} (measured {entry['date']})"))
                if rows:
                    svg = ratio_chart(entry, f"{bench}: {_machine_title(data)}")
                    out.append(nodes.raw("", f'<div class="dlmath-perf-chart">{svg}</div>',
                                         format="html"))
                out.append(_table(["case", "candidate", "time ratio", "IQR", "anchor (= 1)"],
                                  rows, [30, 25, 12, 15, 25]))
                notes = [(c["name"], c["notes"]) for c in entry["cases"] if c.get("notes")]
                if notes:
                    block = "\n".join(f"{name}: {json.dumps(n, sort_keys=True)}"
                                      for name, n in notes)
                    lit = nodes.literal_block(block, block)
                    lit["language"] = "text"
                    out.append(lit)
        return out


def setup(app):
    app.add_directive("benchmark-results", BenchmarkResults)
    app.add_directive("benchmark-goals", BenchmarkGoals)
    return {"version": "0.2", "parallel_read_safe": True, "parallel_write_safe": True}
