"""Sphinx extension: internal links that the LaTeX (PDF) build would otherwise leave dangling.

Acts only under the LaTeX builder, as a post-transform on the assembled book; the HTML build is
untouched. Without it the PDF has about 240 undefined references (dead links, one "Exercise ??"):

* the ledger and errata pages (tools/ledger.py) link to anchors on check cells (``check-N``) and
  on erratum admonitions; LaTeX writes no ``\\label`` for ids on containers and admonitions, so a
  label is inserted at the start of each such node;
* a link to a whole chapter ends in ``#`` with an empty anchor; it becomes a link to the
  chapter's start (Sphinx's ``docname::doc`` label);
* sphinx-proof labels a statement with the document that holds it, found by walking up the
  node's parents to a node whose names hold the chapter's title. sphinx-jupyterbook-latex
  regroups the tree without fixing the children's ``parent`` pointers, and titles with a
  typographic apostrophe (smart quotes) never match the names, so some statements were labelled
  ``None:<label>``. The statement's parent is given the chapter's docname and title.

Parent pointers cannot be trusted here (see above), so the chapter of a node is found top-down,
as the LaTeX writer does: the innermost enclosing ``start_of_file``.
* sphinx-exercise labels an exercise ``exercise:<label>`` but resolves only same-page
  references to it; a reference from another chapter is pointed at that label, with the
  exercise's number as its text.

It also typesets proofs as plain text with an end-of-proof box (see :func:`_plain_proof`).
"""

from __future__ import annotations

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform


def _with_docname(node, docname=None):
    """Yield (element, docname of the chapter it is in), walking the tree top-down."""
    if isinstance(node, addnodes.start_of_file):
        docname = node["docname"]
    yield node, docname
    for child in node.children:
        if isinstance(child, nodes.Element):
            yield from _with_docname(child, docname)


def _label(docname: str, anchor: str) -> nodes.raw:
    text = rf"\phantomsection\label{{\detokenize{{{docname}:{anchor}}}}}"
    return nodes.raw(text, text, format="latex")


class LatexInternalLinks(SphinxPostTransform):
    default_priority = 800  # after sphinx-exercise's title resolution (20, 22)
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        env = self.env
        from sphinx_proof.nodes import find_parent, proof_node

        for node, docname in list(_with_docname(self.document)):
            if docname not in env.titles:
                continue
            # ledger and errata anchors on cells and admonitions.
            classes = node.get("classes", [])
            if node.get("ids") and ((isinstance(node, nodes.container) and "cell" in classes)
                                    or (type(node) is nodes.admonition and "erratum" in classes)):
                # after an admonition's title, which LaTeX takes as its second argument
                start = 1 if node.children and isinstance(node[0], nodes.title) else 0
                for i, anchor in enumerate(node["ids"]):
                    node.insert(start + i, _label(docname, anchor))
            # sphinx-proof: let its find_parent() stop at the statement's parent.
            statement = (type(node).__module__ == "sphinx_proof.nodes" and node.get("label")
                         and not isinstance(node, proof_node))
            if statement and find_parent(env, node, "section") != docname:
                node.parent["docname"] = docname
                node.parent["names"].append(env.titles[docname].astext().lower())

        for proof in list(self.document.findall(nodes.admonition)):
            if "proof" in proof.get("classes", []) and not isinstance(proof[0], nodes.title):
                _plain_proof(proof)

        # references to an exercise of another chapter.
        registry = getattr(env, "sphinx_exercise_registry", {})
        if not registry:
            return
        from sphinx_exercise.nodes import exercise_enumerable_node, exercise_latex_number_reference

        numbers = {}
        for ex in self.document.findall(exercise_enumerable_node):
            if ex.children and isinstance(ex.children[0], nodes.title):
                numbers[ex.get("label")] = ex.children[0].astext().split(" (")[0]
        for ref in list(self.document.findall(addnodes.number_reference)):
            uri = ref.get("refuri", "")
            label = uri.partition("#")[2] if uri.startswith("%") else ""
            if label in numbers:
                new = exercise_latex_number_reference(refid=label)
                new += nodes.Text(numbers[label])
                ref.replace_self(new)


def _plain_proof(proof: nodes.admonition) -> None:
    """Typeset a sphinx-proof proof as a textbook does: "*Proof.*" run into the text and a box at
    the end of its last line, spaced by the preamble's ``dlmathproof`` environment; not as a
    note box, whose title slot would swallow the first paragraph's start (sphinx-proof writes
    no title)."""
    first = proof[0] if isinstance(proof[0], nodes.paragraph) else None
    text = first[0] if first is not None and isinstance(first[0], nodes.Text) else None
    if text is not None and text.startswith("Proof. "):
        first.replace(text, nodes.Text(text[len("Proof. "):]))
        first.insert(0, nodes.emphasis(text="Proof."))
        first.insert(1, nodes.Text(" "))
    box = r"\nobreak\hfill$\square$"  # at the end of the last line, or on a line of its own
    last = proof[-1]
    if isinstance(last, nodes.paragraph):
        last += nodes.raw(box, box, format="latex")
    else:
        proof += nodes.paragraph("", "", nodes.raw(box, box, format="latex"))
    begin, end = r"\begin{dlmathproof}", r"\end{dlmathproof}"
    proof.replace_self([nodes.raw(begin, begin, format="latex"), *proof.children,
                        nodes.raw(end, end, format="latex")])


def chapter_links(app, doctree, fromdoc) -> None:
    """Whole-chapter links written as ``%docname#`` (the ledger adds them on doctree-resolved,
    after the post-transforms) point at the chapter's start."""
    if app.builder.name != "latex":
        return
    for ref in doctree.findall(nodes.reference):
        uri = ref.get("refuri", "")
        if uri.startswith("%") and uri.endswith("#"):
            ref["refuri"] = uri[:-1]


def setup(app):
    app.add_post_transform(LatexInternalLinks)
    app.connect("doctree-resolved", chapter_links, priority=900)  # after tools/ledger.py
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
