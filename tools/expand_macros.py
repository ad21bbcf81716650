"""Expand the book's TeX shorthands into standard TeX, in notebooks and Markdown pages.

A notebook is read in more places than the book: JupyterLab (jupyterlab-myst), Colab, GitHub.
None of them knows macros defined in the book's MathJax configuration, so the chapters are
written in standard TeX. Authors may still type the shorthands below; this tool rewrites them
in place (idempotent), and the structure test fails on any that remain.

Usage: python tools/expand_macros.py FILE [FILE ...]   (.ipynb: markdown cells only; .md: all)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

SIMPLE = {
    "lse": r"\operatorname{lse}",
    "softmax": r"\operatorname{softmax}",
    "msign": r"\operatorname{msign}",
    "sign": r"\operatorname{sign}",
    "tr": r"\operatorname{tr}",
    "diag": r"\operatorname{diag}",
    "rank": r"\operatorname{rank}",
    "KL": r"\operatorname{KL}",
    "RMS": r"\operatorname{RMS}",
    "argmin": r"\operatorname*{arg\,min}",
    "argmax": r"\operatorname*{arg\,max}",
    "R": r"\mathbb{R}",
    "E": r"\mathbb{E}",
    "simplex": r"\Delta^{n-1}",
}
WITH_ARGS = {
    "norm": (1, r"\left\lVert {0} \right\rVert"),
    "abs": (1, r"\left\lvert {0} \right\rvert"),
    "inner": (2, r"\left\langle {0}, {1} \right\rangle"),
}
MACRO = re.compile(r"\\(" + "|".join(sorted({*SIMPLE, *WITH_ARGS}, key=len, reverse=True))
                   + r")(?![A-Za-z])")


def _group(text: str, start: int) -> tuple[str, int]:
    """The TeX argument starting at ``text[start]`` (after spaces): (content, end index).

    A brace group gives its content; otherwise the argument is one token, as in TeX: a control
    sequence such as ``\\alpha`` or a single character.
    """
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        raise ValueError(f"macro argument missing near: {text[max(0, start - 20):]!r}")
    if text[i] != "{":
        if text[i] == "\\":
            j = i + 1
            while j < len(text) and text[j].isalpha():
                j += 1
            j = max(j, i + 2)
            return text[i:j], j
        return text[i], i + 1
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j], j + 1
    raise ValueError(f"unbalanced braces near: {text[i:i + 40]!r}")


def expand(text: str) -> str:
    """Rewrite every shorthand of the book in ``text`` into standard TeX."""
    out, pos = [], 0
    while (m := MACRO.search(text, pos)) is not None:
        out.append(text[pos:m.start()])
        name = m.group(1)
        if name in WITH_ARGS:
            nargs, template = WITH_ARGS[name]
            args, end = [], m.end()
            for _ in range(nargs):
                arg, end = _group(text, end)
                args.append(expand(arg))
            out.append(template.format(*args))
            pos = end
        else:
            out.append(SIMPLE[name])
            pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def uses_shorthands(text: str) -> list[str]:
    return sorted({m.group(1) for m in MACRO.finditer(text)})


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        if path.suffix == ".ipynb":
            nb = nbformat.read(path, as_version=4)
            changed = False
            for cell in nb.cells:
                if cell.cell_type == "markdown" and uses_shorthands(cell.source):
                    cell.source = expand(cell.source)
                    changed = True
            if changed:
                nbformat.write(nb, path)
                print(f"expanded shorthands in {path}")
        else:
            text = path.read_text()
            if uses_shorthands(text):
                path.write_text(expand(text))
                print(f"expanded shorthands in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
