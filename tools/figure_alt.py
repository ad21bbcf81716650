"""Give every plot a text alternative a screen reader can use.

MyST-NB writes a cell's plot as an image without alt text, so the HTML writer falls back to the
image's path (``../_images/6d76deb0....png``), which is what a screen reader would read out. A
plot inside a captioned figure gets the caption as plain text instead, its math written with
Unicode symbols (``\\sigma_2/\\sigma_1`` becomes ``σ_2/σ_1``: a screen reader says "sigma",
where it would spell out the backslash); a plot outside a figure says where it comes from.
"""

import re

from docutils import nodes

UNCAPTIONED = "Plot drawn by the code cell above."

SYMBOLS = {
    # Greek
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ϵ", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "kappa": "κ", "lambda": "λ",
    "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ", "tau": "τ",
    "phi": "ϕ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω", "Gamma": "Γ",
    "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Pi": "Π", "Sigma": "Σ", "Phi": "Φ",
    "Psi": "Ψ", "Omega": "Ω", "ell": "ℓ",
    # operators and relations
    "times": "×", "cdot": "·", "pm": "±", "mp": "∓", "infty": "∞", "in": "∈", "top": "ᵀ",
    "circ": "∘", "to": "→", "mapsto": "↦", "leftarrow": "←", "rightarrow": "→",
    "propto": "∝", "sim": "~", "approx": "≈", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥",
    "ne": "≠", "neq": "≠", "dots": "…", "ldots": "…", "cdots": "⋯", "langle": "⟨",
    "rangle": "⟩", "lVert": "‖", "rVert": "‖", "lvert": "|", "rvert": "|", "sum": "Σ",
    "prod": "Π", "partial": "∂", "nabla": "∇",
    # spacing and sizing: nothing to say
    "left": "", "right": "", "big": "", "Big": "", "quad": " ", "qquad": " ",
}
ACCENTS = {"bar": "\u0304", "hat": "\u0302", "tilde": "\u0303", "vec": "\u20d7"}
ESCAPES = {"\\|": "‖", "\\,": " ", "\\;": " ", "\\!": "", "\\ ": " ", "\\%": "%"}
_GROUP = r"(\{(?:[^{}]|\{[^{}]*\})*\}|\\[A-Za-z]+|[^\s{}\\])"   # {…} (one level), \cmd, a char
# private marks: the end of a rewritten command (so that "\in" + "R" does not read "\inR"),
# escaped braces (kept), and a space around a function name that punctuation absorbs
_END, _OPEN, _CLOSE, _SOFT = "\x00", "\x01", "\x02", "\x03"


def _bare(arg: str) -> str:
    return arg[1:-1] if arg.startswith("{") and arg.endswith("}") else arg


def _wrapped(arg: str, word_ok: bool = False) -> str:
    """An argument as one unit: ``(a+b)`` if it is more than one symbol, else itself (also a
    word, with ``word_ok``: ``x_max``)."""
    text = speakable(_bare(arg))
    unit = len(text) <= 1 or text.isdigit() or (word_ok and text.isalpha())
    if unit or (text[0], text[-1]) == ("(", ")") or re.fullmatch(r"√(\w|\(.*\))", text):
        return text
    return f"({text})"


def speakable(tex: str) -> str:
    """TeX math as plain text with Unicode symbols, for the alt text of a figure."""
    s = tex.replace("\\{", _OPEN).replace("\\}", _CLOSE)
    for _ in range(4):   # nested \frac and \sqrt, innermost last
        s = re.sub(r"\\[dt]?frac\s*" + _GROUP + r"\s*" + _GROUP,
                   lambda m: f"{_END}{_wrapped(m[1])}/{_wrapped(m[2])}", s)
        s = re.sub(r"\\sqrt\s*" + _GROUP, lambda m: f"{_END}√{_wrapped(m[1])}", s)
        s = re.sub(r"\\(?:mathcal|mathrm|mathbb|mathbf|mathit|boldsymbol|operatorname|text)\s*"
                   + _GROUP, lambda m: _END + speakable(_bare(m[1])), s)
        s = re.sub(r"\\(" + "|".join(ACCENTS) + r")\s*" + _GROUP,
                   lambda m: _END + speakable(_bare(m[2])) + ACCENTS[m[1]], s)
    for escape, text in ESCAPES.items():
        s = s.replace(escape, text)
    s = re.sub(r"\\([A-Za-z]+)", lambda m: SYMBOLS.get(m[1], _SOFT + m[1] + _SOFT), s)
    s = s.replace(_END, "")
    s = re.sub(r"([_^])\{([^{}]*)\}", lambda m: m[1] + _wrapped("{" + m[2] + "}", m[1] == "_"), s)
    s = s.replace("{", "").replace("}", "").replace(_OPEN, "{").replace(_CLOSE, "}")
    s = re.sub(_SOFT + r"(?=[(\[_^),}\]\s]|$)", "", s)
    s = re.sub(r"(^|[\s(\[{])" + _SOFT, r"\1", s)
    return re.sub(r"\s+", " ", s.replace(_SOFT, " ")).strip()


def caption_of(image: nodes.image) -> str | None:
    parent = image.parent
    while parent is not None and not isinstance(parent, nodes.figure):
        parent = parent.parent
    captions = list(parent.findall(nodes.caption)) if parent is not None else []
    if not captions:
        return None
    parts = []
    for node in captions[0].findall(lambda n: isinstance(n, (nodes.math, nodes.Text))):
        if isinstance(node, nodes.math):
            parts.append(speakable(node.astext()))
        elif not isinstance(node.parent, nodes.math):
            parts.append(node.astext())
    return " ".join("".join(parts).split())


def add_alt_text(app, doctree, docname):
    for image in doctree.findall(nodes.image):
        alt = image.get("alt", "")
        if alt and alt != image.get("uri"):
            continue   # written by an author (a logo, an html_image with its own alt)
        image["alt"] = caption_of(image) or UNCAPTIONED


def setup(app):
    app.connect("doctree-resolved", add_alt_text)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
