"""Every chapter follows the arc of CONTRIBUTING.md, and every labelled statement is checked.

These tests read the committed notebooks as JSON; they execute nothing. Each rule is its own
test, parametrised by notebook, so a failure names the chapter and the missing element.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from expand_macros import expand, uses_shorthands  # noqa: E402
from install_cell import TAG as INSTALL_TAG  # noqa: E402
from install_cell import first_code_cell, is_install_cell  # noqa: E402
from install_cell import source as install_source  # noqa: E402

NOTEBOOK_DIR = ROOT / "notebooks"

CHECKED_KINDS = ("theorem", "lemma", "proposition", "corollary")
DIRECTIVE = re.compile(
    r"^(?P<fence>:{3,}|`{3,})\{prf:(?P<kind>\w+)\}[^\n]*\n(?P<options>(?:[ \t]*:[\w-]+:[^\n]*\n)*)",
    re.MULTILINE,
)
LABEL = re.compile(r":label:\s*(\S+)")
SOURCE_LINK = re.compile(r"https?://(?:kexue\.fm|spaces\.ac\.cn)/archives/\d+")


def toc_files(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """Every `file:` entry of the table of contents, in order, including the root."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def markdown(nb) -> str:
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def statements(nb) -> list[tuple[str, str | None]]:
    """(kind, label) of every prf: directive in the notebook's markdown."""
    found = []
    for m in DIRECTIVE.finditer(markdown(nb)):
        label = LABEL.search(m.group("options"))
        found.append((m.group("kind"), label.group(1) if label else None))
    return found


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def has_assert(cell) -> bool:
    return cell.cell_type == "code" and re.search(r"^\s*assert\b", cell.source, re.M) is not None


def headings(nb) -> list[str]:
    return [line.strip() for line in markdown(nb).splitlines() if line.startswith("## ")]


# A line that may stand right above a `$$` display: a fence, a directive option, or a label.
BLOCK_START = re.compile(r"^(?::{3,}|`{3,}|:[\w-]+:)")


def math_in_paragraphs(text: str) -> list[str]:
    """The `$$` displays that open right under a line of text. MyST then reads them as part of
    the paragraph, pairs their dollars as inline math and garbles the rest of it; a blank line
    above the `$$` makes a math block."""
    bad, in_math, in_code, prev = [], False, False, ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("```") and not in_math:
            in_code = not in_code
        elif not in_code:
            if s.startswith("$$") and not in_math and prev and not BLOCK_START.match(prev):
                bad.append(prev[-50:])
            if s.count("$$") % 2:
                in_math = not in_math
        prev = s
    return bad


# -- structural rules, one function each, reused by the self-test below -------------------

def problems(nb, name: str, toc: list[str]) -> list[str]:
    """Everything wrong with one chapter notebook; empty when it follows the arc."""
    out = []
    cells = nb.cells
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.startswith("# "):
        out.append("the first cell must be markdown starting with '# Title'")
    md = markdown(nb)
    if not (re.search(r":class:\s*source", md) and SOURCE_LINK.search(md)):
        out.append("no Source admonition (:class: source) linking a kexue.fm/archives post")
    if "**Prerequisites:**" not in md:
        out.append("no '**Prerequisites:**' line after the Source note")
    first = first_code_cell(nb)
    if first is None or not is_install_cell(first):
        out.append("the first code cell is not the install cell that Colab needs (run "
                   "tools/install_cell.py on the notebook)")
    found = statements(nb)
    if not found:
        out.append("no prf: statement (theorem, lemma, definition, ...)")
    for kind, label in found:
        if kind in CHECKED_KINDS and label is None:
            out.append(f"a prf:{kind} has no :label:, so no check can claim it")
    verified = {t.split(":", 1)[1] for c in cells if has_assert(c) for t in tags(c)
                if t.startswith("verifies:")}
    for kind, label in found:
        if kind in CHECKED_KINDS and label is not None and label not in verified:
            out.append(f"prf:{kind} '{label}' is claimed by no asserting cell "
                       f"(tag a cell that asserts it with verifies:{label})")
    claimed = {t.split(":", 1)[1] for c in cells for t in tags(c) if t.startswith("verifies:")}
    known = {label for _, label in found if label}
    for label in sorted(claimed - known):
        out.append(f"a cell claims verifies:{label}, but no statement has that label")
    if not any(has_assert(c) for c in cells):
        out.append("no code cell with an assert")
    figures = [c for c in cells if c.cell_type == "code"
               and c.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("caption")]
    if not figures:
        out.append("no captioned figure (code cell with mystnb.figure.caption metadata)")
    for c in figures:
        if "plt.show()" not in c.source and "savefig" not in c.source:
            out.append("a figure cell does not end with plt.show()")
    for c in cells:
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")):
            out.append("committed with outputs (run nbstripout)")
            break
    heads = headings(nb)
    for section in ("## Experiment", "## Exercises", "## References"):
        if not any(h.startswith(section) for h in heads):
            out.append(f"no '{section}' section")
    if heads and not heads[-1].startswith("## References"):
        out.append("'## References' must be the last section")
    shorthands = uses_shorthands(md)
    if shorthands:
        out.append(f"uses the book's TeX shorthands {shorthands}, which JupyterLab and Colab do "
                   f"not know: run tools/expand_macros.py on the notebook")
    for cell in (c for c in cells if c.cell_type == "markdown"):
        for where in math_in_paragraphs(cell.source):
            out.append(f"a $$ display opens inside a paragraph, under '...{where}': put a "
                       f"blank line above it")
    if "{exercise}" not in md or "{solution}" not in md:
        out.append("no exercise with a solution")
    if "{bibliography}" not in md:
        out.append("no bibliography directive in the References section")
    count = toc.count(f"notebooks/{name}")
    if count != 1:
        out.append(f"listed {count} times in _toc.yml (expected exactly once)")
    return out


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_chapter_follows_the_arc(path):
    nb = nbformat.read(path, as_version=4)
    found = problems(nb, path.stem, toc_files())
    assert not found, f"{path.name}:\n  - " + "\n  - ".join(found)


def test_toc_entries_exist_once():
    files = toc_files()
    duplicates = {f for f in files if files.count(f) > 1}
    assert not duplicates, f"listed more than once in _toc.yml: {sorted(duplicates)}"
    for f in files:
        candidates = [ROOT / f"{f}{ext}" for ext in ("", ".md", ".ipynb")]
        assert any(c.is_file() for c in candidates), f"_toc.yml names a missing file: {f}"


def test_every_chapter_notebook_is_in_the_toc():
    listed = set(toc_files())
    missing = [p.name for p in notebook_paths() if f"notebooks/{p.stem}" not in listed]
    assert not missing, f"notebooks missing from _toc.yml: {missing}"


def test_labels_are_unique_across_the_book():
    seen: dict[str, str] = {}
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        for _, label in statements(nb):
            if label is None:
                continue
            assert label not in seen, f"label {label} in {path.name} and {seen[label]}"
            seen[label] = path.name


# -- the rules themselves must be able to fail -------------------------------------------

def _model():
    """A minimal notebook that follows the arc."""
    v4 = nbformat.v4
    return v4.new_notebook(cells=[
        v4.new_markdown_cell("# A chapter\n\nSummary."),
        v4.new_markdown_cell(":::{admonition} Source\n:class: source\n"
                             "[post](https://kexue.fm/archives/1)\n:::\n\n"
                             "**Prerequisites:** none."),
        v4.new_code_cell(install_source(), metadata={"tags": [INSTALL_TAG]}),
        v4.new_markdown_cell(":::{prf:theorem} T\n:label: x-thm-t\n\nStatement.\n:::"),
        v4.new_code_cell("assert 1 + 1 == 2", metadata={"tags": ["verifies:x-thm-t"]}),
        v4.new_code_cell("plt.show()",
                         metadata={"mystnb": {"figure": {"caption": "c", "name": "x-fig"}}}),
        v4.new_markdown_cell("## Experiment\n\n## Exercises\n\n:::{exercise}\n:label: e\n:::\n"
                             ":::{solution} e\n:::"),
        v4.new_markdown_cell("## References\n\n```{bibliography}\n```"),
    ])


def test_model_notebook_passes():
    assert problems(_model(), "model", ["notebooks/model"]) == []


@pytest.mark.parametrize("breakage, expected", [
    (lambda nb: nb.cells.pop(0), "first cell"),
    (lambda nb: nb.cells.pop(1), "Source"),
    (lambda nb: nb.cells[1].update(source=nb.cells[1].source.split("**Pre")[0]), "Prerequisites"),
    (lambda nb: nb.cells.pop(2), "install cell"),
    (lambda nb: nb.cells[2].metadata.update(tags=[]), "install cell"),
    (lambda nb: nb.cells[2].update(source=nb.cells[2].source.replace("git+", "")), "install cell"),
    (lambda nb: nb.cells.insert(2, nbformat.v4.new_code_cell("import torch")), "install cell"),
    (lambda nb: nb.cells.pop(3), "prf: statement"),
    (lambda nb: nb.cells[4].metadata.update(tags=[]), "claimed by no asserting cell"),
    (lambda nb: setattr(nb.cells[4], "source", "print(2)"), "claimed by no asserting cell"),
    (lambda nb: nb.cells[3].update(source=":::{prf:lemma} L\n\nno label\n:::"), "no :label:"),
    (lambda nb: nb.cells[5].metadata.pop("mystnb"), "captioned figure"),
    (lambda nb: nb.cells[5].update(outputs=[{"output_type": "stream", "name": "stdout",
                                             "text": "x"}]), "outputs"),
    (lambda nb: nb.cells[6].update(source="## Exercises\n:::{exercise}\n:::{solution} e\n:::"),
     "Experiment"),
    (lambda nb: nb.cells[6].update(source="## Experiment\n## Exercises\n"), "exercise"),
    (lambda nb: nb.cells.pop(7), "References"),
    (lambda nb: nb.cells[3].update(source=nb.cells[3].source + " $\\lse(x)$"), "shorthands"),
    (lambda nb: nb.cells[0].update(source=nb.cells[0].source + "\n$$\nx\n$$"), "paragraph"),
    (lambda nb: nb.cells[0].update(source=nb.cells[0].source + "\n$$x$$ (e)"), "paragraph"),
])
def test_structure_rules_catch_each_missing_element(breakage, expected):
    nb = _model()
    breakage(nb)
    found = problems(nb, "model", ["notebooks/model"])
    assert any(expected in p for p in found), found


def test_toc_rule_catches_missing_and_duplicate_entries():
    assert any("listed 0 times" in p for p in problems(_model(), "model", []))
    toc = ["notebooks/model", "notebooks/model"]
    assert any("listed 2 times" in p for p in problems(_model(), "model", toc))


def test_expand_macros_rewrites_shorthands_into_standard_tex():
    text = r"$\norm{x - \abs{y}}_\infty + \inner{p}{x} + \lse(x) \Rightarrow \Re \E[X]$"
    out = expand(text)
    assert out == (r"$\left\lVert x - \left\lvert y \right\rvert \right\rVert_\infty + "
                   r"\left\langle p, x \right\rangle + \operatorname{lse}(x) \Rightarrow \Re "
                   r"\mathbb{E}[X]$")
    assert expand(out) == out and uses_shorthands(out) == []


def test_book_pages_use_standard_tex():
    for page in sorted((ROOT / "book").glob("*.md")):
        assert not uses_shorthands(page.read_text()), f"{page.name}: run tools/expand_macros.py"


def test_book_pages_open_displays_outside_paragraphs():
    for page in sorted((ROOT / "book").rglob("*.md")):
        assert not math_in_paragraphs(page.read_text()), f"{page.name}: blank line above $$"


def test_the_display_rule_reads_blocks_fences_and_directives():
    fine = ["Text.\n\n$$\nx\n$$\nafter $y$.",            # a block; text may follow it
            ":::{prf:lemma} L\n:label: l\n$$\nx\n$$\n:::",  # right under a directive's options
            "```python\ns = 'a'\n$$\n```",                   # inside code
            "$$\na\n\nb\n$$ (eq)\n\n$$x$$"]                  # a blank line inside a display
    assert all(math_in_paragraphs(text) == [] for text in fine)
    assert math_in_paragraphs("A\n$$\nx\n$$\n\nB\n$$y$$ (e)") == ["A", "B"]
