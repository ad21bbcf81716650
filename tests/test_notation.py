"""The notation page covers every named symbol the chapters use (issue #9).

Pure text parsing, no execution. From the math of every chapter (markdown cells and figure
captions of notebooks/*.ipynb) and of every part opener (book/parts/*.md) we extract

* the upright names: ``\\operatorname{..}``, ``\\operatorname*{..}``, ``\\mathrm{..}``,
  ``{\\rm ..}`` and a one-word ``\\text{..}`` used as a sub- or superscript label
  (``\\epsilon_{\\text{mach}}``);
* the letter-font symbols: ``\\mathbb``, ``\\mathcal``, ``\\mathbf`` (and the other math alphabets),
  with or without braces (``\\mathbb E`` is ``\\mathbb{E}``).

Each must either sit in the symbol column of exactly one row of book/notation.md, whose chapter
column links exactly the chapters that use it, or be in LOCAL below, a name a chapter defines for
itself, with the chapters allowed to use it and the reason it stays off the page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTATION = ROOT / "book" / "notation.md"

# -- extraction ---------------------------------------------------------------------------

FENCE = re.compile(r"^(`{3,}|~{3,})([^\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
MATH_ROLE = re.compile(r"\{math\}`([^`]*)`")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE = re.compile(r"(?<![\\$])\$(?!\s)((?:[^$\\]|\\.)+?)(?<!\s)\$", re.S)
CODE_DIRECTIVES = ("{code", "{literalinclude", "{eval-rst", "{raw", "{bibliography")
DIRECTIVE_OPTION = re.compile(r"^[ \t]*:[\w-]+:.*$", re.M)

UPRIGHT = re.compile(r"\\(?:operatorname\*?|mathrm)\s*\{([^{}]*)\}")
RM = re.compile(r"\\rm(?![A-Za-z])\s*([A-Za-z][A-Za-z0-9 -]*)")
TEXT_LABEL = re.compile(r"[_^]\s*\{?\s*\\text(?:rm)?\s*\{([^{}\s]*)\}")  # one word: a label
ALPHABET = re.compile(
    r"\\(mathbb|mathcal|mathbf|mathsf|mathfrak|mathscr)(?![A-Za-z])\s*"
    r"(?:\{\s*([^{}]*?)\s*\}|([A-Za-z0-9]))")


def math_segments(text: str) -> list[str]:
    """The TeX of every formula in MyST text: ``$..$``, ``$$..$$``, ``{math}`` blocks and roles.

    Fenced code and inline code spans are not math and are dropped; the body of a fenced
    directive (``{list-table}``, ``{glossary}``, ...) is MyST text and is read.
    """
    out: list[str] = []

    def fence(m: re.Match) -> str:
        info = m.group(2).strip()
        if info.startswith("{math}"):
            out.append(DIRECTIVE_OPTION.sub("", m.group(3)))
        elif info.startswith("{") and not info.startswith(CODE_DIRECTIVES):
            return "\n" + FENCE.sub(fence, m.group(3)) + "\n"  # a directive holds MyST text
        return "\n"

    text = FENCE.sub(fence, text)
    text = MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    text = INLINE_CODE.sub(" ", text)
    out += DISPLAY.findall(text)
    out += INLINE.findall(DISPLAY.sub(" ", text))
    return out


def _name(raw: str) -> str:
    return re.sub(r"\s+", "", raw)


def symbols(tex: str) -> set[str]:
    r"""Canonical forms of the named symbols in one formula: ``\operatorname{lse}``, ``\mathbb{E}``.

    ``\mathrm``, ``\operatorname*``, ``{\rm ..}`` and sub/superscript ``\text`` labels are all
    upright names and share the canonical form ``\operatorname{..}``.
    """
    found = {rf"\operatorname{{{_name(n)}}}" for n in UPRIGHT.findall(tex)}
    found |= {rf"\operatorname{{{_name(n)}}}" for n in RM.findall(tex)}
    found |= {rf"\operatorname{{{_name(n)}}}" for n in TEXT_LABEL.findall(tex)}
    found |= {rf"\{font}{{{_name(a or b)}}}" for font, a, b in ALPHABET.findall(tex)}
    return {s for s in found if not s.endswith("{}")}


def notebook_text(path: Path) -> str:
    """Markdown cells and figure captions of a notebook, read as JSON."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    parts = []
    for cell in nb["cells"]:
        source = cell["source"]
        source = "".join(source) if isinstance(source, list) else source
        if cell["cell_type"] == "markdown":
            parts.append(source)
        caption = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("caption")
        if caption:
            parts.append(caption)
    return "\n\n".join(parts)


def book_texts() -> dict[str, str]:
    """Document name (as in _toc.yml) -> its text, for every chapter and part opener."""
    texts = {f"notebooks/{p.stem}": notebook_text(p)
             for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    texts |= {f"book/parts/{p.stem}": p.read_text(encoding="utf-8")
              for p in sorted((ROOT / "book" / "parts").glob("*.md"))}
    return texts


def usage(texts: dict[str, str]) -> dict[str, set[str]]:
    """Symbol -> the documents whose math uses it."""
    used: dict[str, set[str]] = {}
    for doc, text in texts.items():
        for tex in math_segments(text):
            for s in symbols(tex):
                used.setdefault(s, set()).add(doc)
    return used


# -- the notation page --------------------------------------------------------------------

ROW = re.compile(r"^\|(.+)\|[ \t]*$", re.M)
CELL_SPLIT = re.compile(r"(?<!\\)\|")
DOC_LINK = re.compile(r"\{doc\}`(?:[^`<]*<)?/?([^`>]+?)>?`")


def page_rows(page: str) -> list[tuple[set[str], set[str], str]]:
    """(symbols of the symbol column, linked documents of the last column, row text) per row."""
    rows = []
    for m in ROW.finditer(page):
        cells = [c.strip() for c in CELL_SPLIT.split(m.group(1))]
        if len(cells) < 3 or set(cells[0]) <= set("-: ") or cells[0] == "symbol":
            continue
        found = set().union(*(symbols(t) for t in math_segments(cells[0])))
        rows.append((found, set(DOC_LINK.findall(cells[-1])), m.group(0)))
    return rows


# -- names chapters define for themselves: (documents allowed to use it, why it is local) --

_NB = "notebooks/"
LOCAL: dict[str, tuple[set[str], str]] = {
    r"\operatorname{AM}": ({_NB + "05-softmax-alternatives"},
                           "label of the AM-Softmax loss L_AM, defined with it"),
    r"\operatorname{onehot}": ({_NB + "05-softmax-alternatives"},
                               "onehot(argmax x), the hard choice the alternatives soften"),
    r"\operatorname{energy}": ({_NB + "06-effective-rank"},
                               "label of the energy rank, one of the chapter's erank variants"),
    r"\operatorname{sym}": ({_NB + "07-spectral-norm-gradient"},
                            "symmetric part (A + A^T)/2, defined in the equation using it"),
    r"\mathcal{P}": ({_NB + "08-muon-msign"},
                     "P_d, the odd polynomials of degree <= d in Polar Express"),
    r"\operatorname{Reg}": ({_NB + "10-sgd-average-loss"},
                            "the average regret Reg_T(u), defined in sgdavg-def-regret"),
    r"\mathcal{T}": ({_NB + "12-gradient-clipping"},
                     "the cap on the predicted decrease, defined where it is introduced"),
    r"\mathcal{J}": ({_NB + "13-adaptive-hessian"},
                     "the post's Jacobian (the transpose of torch's), named once"),
    r"\mathcal{B}": ({_NB + "14-adam-epsilon"},
                     "B_noise, the critical batch scale of one post, defined in its equation"),
    r"\operatorname{noise}": ({_NB + "14-adam-epsilon"},
                              "label of B_noise and beta_noise, the posts' noise scales"),
    r"\operatorname{softsign}": ({_NB + "14-adam-epsilon"},
                                 "x/sqrt(x^2+eps^2), adameps-def-softsign"),
    r"\operatorname{SVC}": ({_NB + "20-spectral-condition"},
                            "singular-value clipping U min(Sigma, 1) V^T, defined where used"),
    r"\mathcal{F}": ({_NB + "21-hypersphere-steepest-descent",
                      _NB + "32-score-identity-distillation"},
                     "each defines its own: the feasible set of unit directions in "
                     "hsphere-def-steepest (21); the Fisher divergence F^+ (32)"),
    r"\operatorname{lo}": ({_NB + "27-moe-dynamic-experts"},
                          "the lower end of the bisection interval, named in its proof"),
    r"\operatorname{hi}": ({_NB + "27-moe-dynamic-experts"},
                          "the upper end of the bisection interval, named in its proof"),
    r"\operatorname{CT}": ({_NB + "29-consistency-models"},
                          "label of consistency training: L_CT and its fixed point f^CT"),
    r"\operatorname{CD}": ({_NB + "29-consistency-models"},
                          "label of consistency distillation: L_CD and its fixed point f^CD"),
    r"\operatorname{ReFlow}": ({_NB + "29-consistency-models"},
                              "label of the ReFlow loss L_ReFlow, defined where it appears"),
    r"\operatorname{den}": ({_NB + "29-consistency-models"},
                           "f^den, the denoiser x - t v, defined in cm-prop-reparam"),
    r"\operatorname{skip}": ({_NB + "29-consistency-models"},
                            "c_skip of the CM paper's parametrisation, named once"),
    r"\operatorname{out}": ({_NB + "29-consistency-models"},
                           "c_out of the CM paper's parametrisation, named once"),
    r"\operatorname{id}": ({_NB + "29-consistency-models"},
                          "the identity map, f_0 = id"),
    r"\operatorname{med}": ({_NB + "29-consistency-models"},
                           "the median, used once in the transport-map argument"),
    r"\operatorname{convolutions}": ({_NB + "34-conv1d-spectra"},
                                    "summation range of the receptive-field formula spec-eq-rf"),
    r"\operatorname{pools}": ({_NB + "34-conv1d-spectra"},
                             "summation range of the receptive-field formula spec-eq-rf"),
    r"\operatorname{acc}": ({_NB + "35-finetuning-classifier"},
                           "accuracy on the validation, test or pooled set, named where used"),
    r"\operatorname{main}": ({_NB + "35-finetuning-classifier"},
                            "superscript naming the post's main (GLU) head"),
    r"\operatorname{aux}": ({_NB + "35-finetuning-classifier"},
                           "superscript naming the post's auxiliary head on the backbone features"),
}

# One object, one notation: forms the book does not use, and what to write instead.
AVOID = {
    re.compile(r"(?<!\\mathcal)(?<!\\mathcal )(?<![\w\\])N\(\s*0\s*,"):
        r"\mathcal N(0, ...) for the normal law",
    re.compile(r"\\operatorname\{Tr\}"): r"\operatorname{tr} for the trace",
}


def problems(texts: dict[str, str], page: str, local=None) -> list[str]:
    """Everything that keeps the notation page from covering the chapters; empty when it does."""
    local = LOCAL if local is None else local
    used = usage(texts)
    rows = page_rows(page)
    out = []
    listed: dict[str, str] = {}
    for found, _, row in rows:
        for s in sorted(found):
            if s in listed:
                out.append(f"{s} is listed twice on the notation page:\n    {listed[s]}\n    {row}")
            listed[s] = row
    for s, docs in sorted(used.items()):
        if s in listed:
            continue
        allowed, _ = local.get(s, (set(), ""))
        for doc in sorted(docs - allowed):
            out.append(f"{doc} uses {s}: list it on book/notation.md (meaning and chapters) "
                       f"or, if the chapter defines it for itself, add it to LOCAL with a reason")
    for s, (allowed, reason) in sorted(local.items()):
        if not reason.strip():
            out.append(f"LOCAL entry {s} gives no reason")
        if s in listed:
            out.append(f"{s} is both on the notation page and in LOCAL: drop the LOCAL entry")
        for doc in sorted(allowed - used.get(s, set())):
            out.append(f"LOCAL allows {s} in {doc}, which no longer uses it: drop it")
    for found, linked, row in rows:
        for doc in sorted(linked):
            if doc not in texts:
                out.append(f"the notation page links a missing document {doc}:\n    {row}")
        if not found:
            continue
        users = set().union(*(used.get(s, set()) for s in found))
        if not users:
            out.append(f"no chapter uses {sorted(found)} any more; drop the row:\n    {row}")
        for doc in sorted(users - linked):
            out.append(f"the row of {sorted(found)} must link {{doc}}`/{doc}` (it uses them)")
        for doc in sorted(linked - users - {d for d in linked if d not in texts}):
            out.append(f"the row of {sorted(found)} links {doc}, which does not use them")
    for doc, text in sorted(texts.items()):
        for tex in math_segments(text):
            for pattern, instead in AVOID.items():
                if pattern.search(tex):
                    out.append(f"{doc} writes {pattern.search(tex).group(0)!r}: write {instead}")
    return out


def test_notation_page_covers_every_named_symbol():
    found = problems(book_texts(), NOTATION.read_text(encoding="utf-8"))
    assert not found, "\n  - ".join(["book/notation.md is out of step with the chapters:", *found])


def test_every_chapter_link_on_the_page_resolves():
    page = NOTATION.read_text(encoding="utf-8")
    docs = set(book_texts())
    for target in DOC_LINK.findall(page):
        if "/" in target:
            assert target in docs, f"book/notation.md links a missing document: {target}"


# -- the extraction and the check must be able to fail -----------------------------------

def test_extraction_reads_every_form_of_math():
    text = ("Inline $\\operatorname{lse}(x)$ and `$\\operatorname{code}$` in code.\n\n"
            "$$\n\\mathbb E[\\mathcal L_{\\rm AM}] + \\operatorname*{arg\\,max}_i x_i\n$$\n\n"
            "```{math}\n:label: x-eq\n\\mathrm{fl}(w) + \\epsilon_{\\text{mach}}\n```\n\n"
            "```python\nx = '$\\operatorname{notmath}$'\n```\n"
            "````{list-table}\n* - $\\operatorname{tr}$\n````\n"
            "and {math}`\\mathbf 1` with a price of \\$5 and \\$6.\n"
            "$\\underbrace{a}_{\\text{two words}}$")
    found = set().union(*(symbols(t) for t in math_segments(text)))
    assert found == {r"\operatorname{lse}", r"\mathbb{E}", r"\mathcal{L}", r"\operatorname{AM}",
                     r"\operatorname{arg\,max}", r"\operatorname{fl}", r"\operatorname{mach}",
                     r"\mathbf{1}", r"\operatorname{tr}"}


def test_extraction_reads_figure_captions(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["plt.show()"],
                     "metadata": {"mystnb": {"figure": {"caption": "$\\operatorname{zz}(x)$"}}}}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "99-x.ipynb"
    path.write_text(json.dumps(nb))
    assert symbols(math_segments(notebook_text(path))[0]) == {r"\operatorname{zz}"}


def _with(texts, doc, extra):
    return {**texts, doc: texts[doc] + extra}


CH01 = "notebooks/01-logsumexp-inequalities"


def _link_msign_row(page: str, doc: str) -> str:
    """The page with one more chapter link on the row of msign."""
    return "\n".join(line[:line.rstrip().rindex("|")] + f", {{doc}}`x </{doc}>` |"
                      if "$\\operatorname{msign}(M)$ |" in line else line
                      for line in page.splitlines())


@pytest.mark.parametrize("breakage, expected", [
    # a chapter starts using a name the page does not know
    (lambda t, p, loc: (_with(t, CH01, "\n\n$\\operatorname{foo}(x)$"), p, loc),
     "notebooks/01-logsumexp-inequalities uses \\operatorname{foo}"),
    (lambda t, p, loc: (_with(t, CH01, "\n\n$\\mathcal Q$"), p, loc), "uses \\mathcal{Q}"),
    # a chapter starts using a listed name: its row must link the chapter
    (lambda t, p, loc: (_with(t, "notebooks/02-truncated-exp-inequality",
                              "\n\n$\\operatorname{msign}(M)$"), p, loc),
     "must link {doc}`/notebooks/02-truncated-exp-inequality`"),
    # a row disappears from the page
    (lambda t, p, loc: (t, "\n".join(line for line in p.splitlines()
                                     if "\\operatorname{msign}(M)$ |" not in line), loc),
     "uses \\operatorname{msign}"),
    # a row links a chapter that does not use the symbol, or a chapter that does not exist
    (lambda t, p, loc: (t, _link_msign_row(p, "notebooks/02-truncated-exp-inequality"), loc),
     "links notebooks/02-truncated-exp-inequality, which does not use them"),
    (lambda t, p, loc: (t, p + "\n| $\\operatorname{lse}_2$ | x | {doc}`9 </notebooks/99-x>` |",
                        loc), "missing document notebooks/99-x"),
    # a symbol listed twice
    (lambda t, p, loc: (t, p + "\n| $\\mathbb{E}[X]$ | again | {doc}`01 </notebooks/01-x>` |",
                        loc), "listed twice"),
    # a local name used by a chapter it was not allowed for, or no longer used
    (lambda t, p, loc: (_with(t, CH01, "\n\n$\\operatorname{onehot}(x)$"), p, loc),
     "notebooks/01-logsumexp-inequalities uses \\operatorname{onehot}"),
    (lambda t, p, loc: (t, p, {**loc, r"\operatorname{gone}": ({CH01}, "was used once")}),
     "which no longer uses it"),
    (lambda t, p, loc: (t, p, {**loc, r"\operatorname{x}": (set(), " ")}), "gives no reason"),
    # two notations for one object
    (lambda t, p, loc: (_with(t, CH01, "\n\n$z\\sim N(0,1)$"), p, loc), "\\mathcal N(0"),
])
def test_the_check_catches_each_breakage(breakage, expected):
    texts, page, local = book_texts(), NOTATION.read_text(encoding="utf-8"), dict(LOCAL)
    assert problems(texts, page, local) == []
    found = problems(*breakage(texts, page, local))
    assert any(expected in p for p in found), found
