"""Sphinx extension: number each chapter by its notebook's NN, and what it holds within it.

Without a numbered toctree, Sphinx counts equations, figures, tables and statement boxes across
the whole book, so the last chapter ended at equation (266) and Proposition 129. A numbered
toctree would count the part openers as chapters and restart in each part. Here the chapter
``notebooks/NN-slug`` gets the section number ``NN`` for its title alone (shown on the page and
in the sidebar: "5. Softmax and its alternatives"), and Sphinx's own figure numbering, which
reads that number, then gives "(5.3)", "Proposition 5.2", "Fig. 5.1" and "Table 5.1". Pages
that are not chapters keep their numbers unprefixed.

Sphinx numbers figures right after sections, in the handler of ``env-get-updated`` of its
toctree collector, and rewrites the pages whose numbers differ from the last build's. This
extension wraps that numbering step: it writes the chapters' numbers first, then lets Sphinx
number the figures with them, so the comparison with the last build stays meaningful (an
unchanged book rewrites no page for its numbers).
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.environment.collectors.toctree import TocTreeCollector

CHAPTER = re.compile(r"notebooks/(\d+)-")


def chapter_number(docname: str) -> int | None:
    """``5`` for ``notebooks/05-softmax-alternatives``; ``None`` for a page that is not one."""
    m = CHAPTER.match(docname)
    return int(m.group(1)) if m else None


def number_chapters(env) -> None:
    """Give every chapter its number, for its title alone (see the module's docstring)."""
    for docname in sorted(env.found_docs):
        n = chapter_number(docname)
        if n is None or docname not in env.tocs:
            continue
        doctree = env.get_doctree(docname)
        sections = list(doctree.findall(nodes.section))
        # The title's section has no entry and falls back to '' (numbered); every other
        # section is entered with () so that the HTML writer leaves its heading unnumbered.
        secnumbers = {"": (n,)}
        secnumbers.update({"#" + s["ids"][0]: () for s in sections[1:] if s["ids"]})
        env.toc_secnumbers[docname] = secnumbers
        refs = list(env.tocs[docname].findall(nodes.reference))
        if refs:
            refs[0]["secnumber"] = (n,)  # the sidebar's entry


_assign_figure_numbers = TocTreeCollector.assign_figure_numbers


def assign_figure_numbers(self, env) -> list[str]:
    number_chapters(env)
    return _assign_figure_numbers(self, env)


def setup(app):
    TocTreeCollector.assign_figure_numbers = assign_figure_numbers
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True,
            "env_version": 1}
