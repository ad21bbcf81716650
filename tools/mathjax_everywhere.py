"""Load MathJax on every HTML page, not only on pages whose own text has math.

A chapter title can hold math (chapter 32's ends in $\\lambda$), and the sidebar and the
previous/next links show titles on pages without any math of their own (a part opener); without
MathJax there, the title would read as raw TeX.
"""


def setup(app):
    app.set_html_assets_policy("always")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
