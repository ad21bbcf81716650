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
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective


def _table(header, rows, widths):
    """A table with the given relative column widths (honoured by LaTeX too)."""
    table = nodes.table(classes=["colwidths-given"])
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
                                [44, 18, 12, 12, 14])]


def ratio_chart(entry: dict, title: str, fmt: str = "svg") -> str | bytes:
    """A bar chart of every non-anchor candidate's median ratio: inline SVG text (``fmt="svg"``,
    for HTML) or the bytes of a PDF (for the LaTeX build)."""
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
        return _draw(plt, labels, values, errs, title, fmt)


def _draw(plt, labels, values, errs, title, fmt) -> str | bytes:
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
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, metadata={"CreationDate": None} if fmt == "pdf" else None)
    plt.close(fig)
    if fmt != "svg":
        return buf.getvalue()
    svg = buf.getvalue().decode()
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
                    title = f"{bench}: {_machine_title(data)}"
                    svg = ratio_chart(entry, title)
                    out.append(nodes.raw("", f'<div class="dlmath-perf-chart">{svg}</div>',
                                         format="html"))
                    out.append(self._pdf_chart(entry, title, f"{f.stem}-{bench}"))
                out.append(_table(["case", "candidate", "time ratio", "IQR", "anchor (= 1)"],
                                  rows, [25, 28, 9, 14, 24]))
                notes = [[c["name"], key.replace("_", " "), _note_text(value)]
                         for c in entry["cases"] for key, value in
                         sorted((c.get("notes") or {}).items())]
                if notes:
                    out.append(_table(["case", "also measured", "value"], notes, [26, 18, 56]))
        return out


    def _pdf_chart(self, entry: dict, title: str, stem: str) -> addnodes.only:
        """The same chart for the LaTeX build, which drops raw HTML: a PDF image written under
        ``_build/`` (inside the source folder, where Sphinx looks for images; ignored by git)."""
        rel = f"_build/perf_charts/{stem}.pdf"
        path = Path(self.env.srcdir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ratio_chart(entry, title, fmt="pdf"))
        only = addnodes.only(expr="latex")
        only += nodes.image(uri="/" + rel, alt=title)
        return only


def _note_text(value) -> str:
    """A note's value for the table: numbers to 3 significant digits, mappings and lists inline."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_note_text(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return ", ".join(_note_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else str(value)


def setup(app):
    app.add_directive("benchmark-results", BenchmarkResults)
    app.add_directive("benchmark-goals", BenchmarkGoals)
    return {"version": "0.2", "parallel_read_safe": True, "parallel_write_safe": True}
