"""Link the first use of each glossary term in a chapter to the glossary (idempotent).

For every term defined in book/glossary.md, the first occurrence in a chapter's prose becomes
``{term}`text <term>``` — unless the chapter already links that term. Only plain paragraph text
is touched: never headings, directive lines, math, inline code, links or existing roles.

Usage: python tools/link_glossary.py notebooks/NN-slug.ipynb [...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
# Spans that must not be touched: code fences, math (display and inline, across lines),
# inline code, roles, links.
PROTECTED = re.compile(r"(```.*?```|\$\$.*?\$\$|\$[^$]*\$|`[^`\n]*`|\{[\w:-]+\}`[^`]*`"
                       r"|\[[^\]]*\]\([^)]*\))", re.S)
SKIP_LINE = ("#", ":", "|", ">")


def glossary_terms(path: Path = ROOT / "book" / "glossary.md") -> list[str]:
    text = path.read_text()
    block = text[text.index("```{glossary}"):]
    return [line.strip() for line in block.splitlines()[1:]
            if line and not line.startswith((" ", "```"))]


def link_first(text: str, term: str) -> tuple[str, bool]:
    """Link the first unprotected occurrence of ``term`` in ``text`` (a markdown cell)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(term)}(?![\w-])", re.I)
    protected = [m.span() for m in PROTECTED.finditer(text)]
    for m in pattern.finditer(text):
        if any(a <= m.start() < b for a, b in protected):
            continue
        line_start = text.rfind("\n", 0, m.start()) + 1
        if text[line_start:].lstrip().startswith(SKIP_LINE):
            continue
        found = m.group(0)
        role = f"{{term}}`{found}`" if found == term else f"{{term}}`{found} <{term}>`"
        return text[:m.start()] + role + text[m.end():], True
    return text, False


def link_notebook(path: Path, terms: list[str]) -> int:
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    todo = [t for t in terms if not re.search(rf"\{{term\}}`([^`<]*<)?{re.escape(t)}>?`",
                                              text, re.I)]
    linked = 0
    for term in todo:
        for cell in nb.cells:
            if cell.cell_type != "markdown":
                continue
            cell.source, changed = link_first(cell.source, term)
            if changed:
                linked += 1
                break
    if linked:
        nbformat.write(nb, path)
    return linked


def main(paths: list[str]) -> int:
    terms = glossary_terms()
    for name in paths:
        n = link_notebook(Path(name), terms)
        print(f"{name}: linked {n} glossary term(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
