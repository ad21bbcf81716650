"""Give every plot a text alternative a screen reader can use.

MyST-NB writes a cell's plot as an image without alt text, so the HTML writer falls back to the
image's path (``../_images/6d76deb0....png``), which is what a screen reader would read out. A
plot inside a captioned figure gets the caption as plain text instead; a plot outside a figure
says where it comes from.
"""

from docutils import nodes

UNCAPTIONED = "Plot drawn by the code cell above."


def caption_of(image: nodes.image) -> str | None:
    parent = image.parent
    while parent is not None and not isinstance(parent, nodes.figure):
        parent = parent.parent
    captions = list(parent.findall(nodes.caption)) if parent is not None else []
    return " ".join(captions[0].astext().split()) if captions else None


def add_alt_text(app, doctree, docname):
    for image in doctree.findall(nodes.image):
        alt = image.get("alt", "")
        if alt and alt != image.get("uri"):
            continue   # written by an author (a logo, an html_image with its own alt)
        image["alt"] = caption_of(image) or UNCAPTIONED


def setup(app):
    app.connect("doctree-resolved", add_alt_text)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
