"""Sphinx extension: the verification ledger and the errata page, generated at build time.

While each chapter is read, this extension records

* every labelled statement (theorem, lemma, proposition, corollary) of sphinx-proof,
* every code cell tagged ``verifies:<label>``, with the last line it printed when it ran,
* every admonition of class ``erratum``,

and gives each check cell and erratum an anchor. Two directives then render the records:
``{verification-ledger}`` (every statement, the cells that check it, and what they printed) and
``{errata-list}`` (every erratum, linking back to its chapter). A statement that no cell checks
is reported as a warning, which fails the strict (``-W``) build.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

CHECKED_KINDS = ("theorem", "lemma", "proposition", "corollary")
TAG = "tag_verifies:"


class ledger_placeholder(nodes.General, nodes.Element):
    """Replaced by the ledger table once every document has been read."""


class errata_placeholder(nodes.General, nodes.Element):
    """Replaced by the errata list once every document has been read."""


# The generated content carries math from the chapters' titles, but Sphinx loads MathJax only
# on pages that hold math when they are read: each placeholder carries an empty math node until
# it is replaced.


class VerificationLedger(SphinxDirective):
    def run(self):
        return [ledger_placeholder("", nodes.math("", ""))]


class ErrataList(SphinxDirective):
    def run(self):
        return [errata_placeholder("", nodes.math("", ""))]


def _records(env) -> dict:
    if not hasattr(env, "dlmath_ledger"):
        env.dlmath_ledger = {}
    return env.dlmath_ledger


def _chapter_title(doctree) -> str:
    section = next(iter(doctree.findall(nodes.section)), None)
    return section[0].astext() if section is not None and section.children else ""


def _printed_text(cell, max_lines: int = 8) -> str:
    """What a check cell printed (its stream output), at most ``max_lines`` lines."""
    lines = []
    for block in cell.findall(nodes.literal_block):
        if _image_fallback(block):
            continue
        if any("cell_output" in parent.get("classes", []) for parent in _parents(block)):
            lines += [ln.rstrip() for ln in block.astext().splitlines() if ln.strip()]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [f"... ({len(lines) - max_lines + 1} more lines)"]
    return "\n".join(lines)


def _image_fallback(block) -> bool:
    """Whether ``block`` is the text/plain twin of an image output (``<Figure size ...>``):
    myst-nb keeps every mime type of an output and picks one per builder later."""
    for parent in _parents(block):
        if parent.get("nb_element") == "mime_bundle":
            return any(str(c.get("mime_type", "")).startswith("image/") for c in parent.children)
    return False


def _title_nodes(node) -> list:
    """Copies of the inline nodes of ``node``'s title (math stays math), without references."""
    if not node.children or not isinstance(node.children[0], nodes.title):
        return []
    out = []
    for child in node.children[0].children:
        linked = isinstance(child, nodes.Element) and (child.get("refid") or child.get("refuri"))
        if isinstance(child, nodes.reference) or linked:
            out.append(nodes.Text(child.astext()))
        else:
            out.append(child.deepcopy())
    return out


def _parents(node):
    while node.parent is not None:
        node = node.parent
        yield node


def record(app, doctree) -> None:
    """On doctree-read: collect statements, checks and errata of one document."""
    docname = app.env.docname
    statements, checks, errata = [], [], []
    for node in doctree.findall(nodes.Element):
        classes = node.get("classes", [])
        if "proof" in classes and any(k in classes for k in CHECKED_KINDS) and node.get("ids"):
            kind = next(k for k in CHECKED_KINDS if k in classes)
            name = node.children[0].astext().strip(" ()") if node.children else ""
            statements.append({"label": node["ids"][0], "kind": kind, "name": name,
                               "name_nodes": _title_nodes(node)})
        elif "cell" in classes and any(c.startswith(TAG) for c in classes):
            anchor = f"check-{len(checks) + 1}"
            node["ids"].append(anchor)
            checks.append({
                "labels": [c[len(TAG):] for c in classes if c.startswith(TAG)],
                "anchor": anchor,
                "printed": _printed_text(node),
            })
        elif "erratum" in classes and isinstance(node, nodes.Admonition):
            if not node.get("ids"):
                node["ids"].append(f"erratum-{len(errata) + 1}")
            title = node.children[0].astext() if node.children else "Erratum"
            errata.append({"anchor": node["ids"][0], "title": title,
                           "title_nodes": _title_nodes(node)})
    if statements or checks or errata:
        _records(app.env)[docname] = {"title": _chapter_title(doctree), "statements": statements,
                                      "checks": checks, "errata": errata}


def purge(app, env, docname) -> None:
    _records(env).pop(docname, None)


def merge(app, env, docnames, other) -> None:
    _records(env).update({d: r for d, r in _records(other).items() if d in docnames})


def _link(app, fromdoc: str, todoc: str, anchor: str, text: str, content=None):
    uri = app.builder.get_relative_uri(fromdoc, todoc) + "#" + anchor
    ref = nodes.reference("", "", internal=True, refuri=uri)
    if content:
        for child in content:
            ref += child.deepcopy()
    else:
        ref += nodes.Text(text)
    return ref


def _ordered(app) -> list[str]:
    """Documents with records, in the reading order of the table of contents."""
    order = [app.env.config.root_doc]
    for doc in order:  # breadth-first over the toctree gives reading order within each level
        order += [d for d in app.env.toctree_includes.get(doc, []) if d not in order]
    records = _records(app.env)
    return [d for d in order if d in records] + sorted(set(records) - set(order))


def warn_unchecked(app, env) -> None:
    """On env-check-consistency: every statement needs at least one check."""
    for docname, rec in _records(env).items():
        checked = {label for check in rec["checks"] for label in check["labels"]}
        for st in rec["statements"]:
            if st["label"] not in checked:
                logger.warning(f"{st['kind']} '{st['label']}' has no verifying check cell "
                               f"(tag one with verifies:{st['label']})",
                               location=docname, type="dlmath", subtype="unchecked")
        known = {st["label"] for st in rec["statements"]}
        for check in rec["checks"]:
            for label in check["labels"]:
                if label not in known:
                    logger.warning(f"a check cell claims verifies:{label}, but no statement of "
                                   f"this chapter has that label", location=docname)


def _number(env, doc: str, label: str) -> str:
    """The statement's number as its box shows it ("5.2", see chapter_numbers), or ''."""
    for numbers in env.toc_fignumbers.get(doc, {}).values():
        if label in numbers:
            return ".".join(map(str, numbers[label]))
    return ""


def _chapter_text(env, doc: str, rec) -> str:
    """The chapter's title as the sidebar shows it: "5. Softmax ..." (see chapter_numbers)."""
    number = env.toc_secnumbers.get(doc, {}).get("")
    title = rec["title"] or doc
    return f"{'.'.join(map(str, number))}. {title}" if number else title


def _ledger_row(app, fromdoc, doc, rec, st) -> tuple:
    """A statement's link (with its name) and, per check, the cell's link and what it printed."""
    para = nodes.paragraph()
    text = f"{st['kind'].capitalize()} {_number(app.env, doc, st['label'])}".rstrip()
    para += _link(app, fromdoc, doc, st["label"], text)
    names = st.get("name_nodes") or []
    if names:  # the title reads " (Name)": keep its inline math
        for child in names:
            para += child.deepcopy()
    elif st["name"]:
        para += nodes.Text(f" ({st['name']})")
    checks = []
    for check in (c for c in rec["checks"] if st["label"] in c["labels"]):
        link = nodes.paragraph()
        link += _link(app, fromdoc, doc, check["anchor"], "check cell")
        printed = check["printed"] or "(printed nothing)"
        block = nodes.literal_block(printed, printed, classes=["ledger-output"])
        block["language"] = "text"
        checks += [link, block]
    return para, checks


def _ledger_table(rows) -> nodes.table:
    """The ledger of one chapter as a two-column table (HTML)."""
    table = nodes.table(classes=["ledger"])
    group = nodes.tgroup(cols=2)
    table += group
    group += nodes.colspec(colwidth=35)
    group += nodes.colspec(colwidth=65)
    head = nodes.thead()
    row = nodes.row()
    for text in ("statement", "checked by, and what the check printed"):
        entry = nodes.entry()
        entry += nodes.paragraph(text=text)
        row += entry
    head += row
    group += head
    body = nodes.tbody()
    for statement, checks in rows:
        row = nodes.row()
        left, right = nodes.entry(), nodes.entry()
        left += statement
        right += checks
        row += left
        row += right
        body += row
    group += body
    return table


def _ledger_list(rows) -> nodes.definition_list:
    """The same as a definition list (PDF): a LaTeX table row cannot break across pages, and a
    statement with several checks can be taller than a page."""
    items = nodes.definition_list(classes=["ledger"])
    for statement, checks in rows:
        item = nodes.definition_list_item()
        term = nodes.term()
        term += statement.children
        definition = nodes.definition()
        definition += checks
        item += term
        item += definition
        items += item
    return items


def render(app, doctree, fromdoc) -> None:
    """On doctree-resolved: replace the placeholders by the ledger and the errata list."""
    records = _records(app.env)
    for placeholder in list(doctree.findall(ledger_placeholder)):
        out = []
        total = sum(len(r["statements"]) for r in records.values())
        chapters = sum(1 for r in records.values() if r["statements"])
        out.append(nodes.paragraph(text=f"{total} statements in {chapters} "
                                        f"chapter{'s' if chapters != 1 else ''}, each one "
                                        f"checked by computation."))
        for doc in _ordered(app):
            rec = records[doc]
            if not rec["statements"]:
                continue
            section = nodes.rubric()
            section += _link(app, fromdoc, doc, "", _chapter_text(app.env, doc, rec))
            out.append(section)
            rows = [_ledger_row(app, fromdoc, doc, rec, st) for st in rec["statements"]]
            out.append(_ledger_list(rows) if app.builder.name == "latex" else _ledger_table(rows))
        placeholder.replace_self(out)
    for placeholder in list(doctree.findall(errata_placeholder)):
        items = nodes.bullet_list()
        count = 0
        for doc in _ordered(app):
            for erratum in records[doc]["errata"]:
                item = nodes.list_item()
                para = nodes.paragraph()
                para += _link(app, fromdoc, doc, erratum["anchor"], erratum["title"],
                              erratum.get("title_nodes"))
                para += nodes.Text(" — in ")
                para += _link(app, fromdoc, doc, "", _chapter_text(app.env, doc, records[doc]))
                item += para
                items += item
                count += 1
        intro = nodes.paragraph(text=f"{count} place{'s' if count != 1 else ''} where a source "
                                     f"post is wrong or incomplete, each corrected and checked "
                                     f"in its chapter.")
        placeholder.replace_self([intro, items])


def always_rebuild_summaries(app, env, added, changed, removed):
    """The summary pages depend on every chapter: re-read them whenever anything changed."""
    if not (added or changed or removed):
        return []
    return [doc for doc in ("book/ledger", "book/errata") if doc in env.found_docs]


def setup(app):
    app.add_node(ledger_placeholder)
    app.add_node(errata_placeholder)
    app.add_directive("verification-ledger", VerificationLedger)
    app.add_directive("errata-list", ErrataList)
    app.connect("doctree-read", record)
    app.connect("env-purge-doc", purge)
    app.connect("env-merge-info", merge)
    app.connect("env-check-consistency", warn_unchecked)
    app.connect("doctree-resolved", render)
    app.connect("env-get-outdated", always_rebuild_summaries)
    return {"version": "0.2", "parallel_read_safe": True, "parallel_write_safe": True,
            "env_version": 2}
