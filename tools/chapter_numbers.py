"""Sphinx extension: number each chapter by its notebook's NN, and what it holds within it.

Without a numbered toctree, Sphinx counts equations, figures, tables and statement boxes across
the whole book, so the last chapter ended at equation (266) and Proposition 129. A numbered
toctree would count the part openers as chapters and restart in each part. Here the chapter
``notebooks/NN-slug`` gets the section number ``NN`` for its title alone (shown on the page and
in the sidebar: "5. Softmax and its alternatives"), and Sphinx's own figure numbering, which
reads that number, then gives "(5.3)", "Proposition 5.2", "Fig. 5.1" and "Table 5.1". Pages
that are not chapters keep their numbers unprefixed.

Sphinx numbers sections and figures in one handler of ``env-get-updated``; this one runs after
it (priority 900), writes the chapters' numbers and numbers the figures again.
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


def number_chapters(app, env) -> list[str]:
    numbered = []
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
        numbered.append(docname)
    changed = TocTreeCollector().assign_figure_numbers(env)
    return sorted(set(numbered) | set(changed))


def setup(app):
    app.connect("env-get-updated", number_chapters, priority=900)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True,
            "env_version": 1}
