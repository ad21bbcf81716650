"""Sphinx extension: the performance appendix, rendered from committed benchmark results.

``{benchmark-results}`` reads every ``benchmarks/results/*.json`` (written by
``benchmarks/harness.py``) and renders, per machine and benchmark, a table of the median
per-round time ratio of each candidate against the benchmark's anchor. Nothing is measured at
build time: the numbers are those committed with the results.
"""

from __future__ import annotations

import json
from pathlib import Path

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
            m = data["machine"]
            title = m.get("gpu") or m.get("cpu")
            out.append(nodes.rubric(text=f"{title} — torch {m.get('torch')}, "
                                         f"{m.get('torch_threads')} threads"))
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
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
