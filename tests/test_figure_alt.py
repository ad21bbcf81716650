"""tools/figure_alt.py: the alt text of a plot is its caption, with the math spoken in Unicode."""

import sys
from pathlib import Path

import pytest
from docutils import nodes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import figure_alt  # noqa: E402


@pytest.mark.parametrize("tex, text", [
    (r"\sigma_2/\sigma_1 = 0.5", "σ_2/σ_1 = 0.5"),
    (r"x\in\mathbb R^6", "x∈R^6"),                          # \in must not swallow the R
    (r"W\sim\mathcal N(0,0.02^2)", "W~N(0,0.02^2)"),
    (r"r\in\{0.25,0.5,1,3\}", "r∈{0.25,0.5,1,3}"),         # escaped braces stay
    (r"\log\frac1{1-p}", "log 1/(1-p)"),
    (r"1/\sqrt{\max(n,m)}", "1/√(max(n,m))"),
    (r"\frac{1}{\sqrt{d}}", "1/√d"),
    (r"\rho^{2t}\tan\theta_0", "ρ^(2t) tan θ_0"),
    (r"x_{\max}-\bar x", "x_max-x̄"),
    (r"\min_\pm\|x_t \mp v_1\|", "min_±‖x_t ∓ v_1‖"),
    (r"\lambda=\tfrac12", "λ=1/2"),
    (r"\sqrt{\hat v_t}/\sigma_\theta", "√(v̂_t)/σ_θ"),
    (r"\cos(\operatorname{sign} g, g)", "cos(sign g, g)"),
])
def test_speakable(tex, text):
    assert figure_alt.speakable(tex) == text


def test_caption_with_math_becomes_the_alt_text():
    caption = nodes.caption("", "", nodes.Text("Spectra with "),
                            nodes.math(r"\eta\lambda = 0.3", r"\eta\lambda = 0.3"),
                            nodes.Text(": spectral decay."))
    image = nodes.image(uri="_images/abc.png")
    figure = nodes.figure("", nodes.container("", image), caption)
    doc = nodes.document(None, None)
    doc += figure
    lone = nodes.image(uri="_images/def.png")
    doc += lone
    figure_alt.add_alt_text(None, doc, "x")
    assert image["alt"] == "Spectra with ηλ = 0.3: spectral decay."
    assert lone["alt"] == figure_alt.UNCAPTIONED


def test_every_caption_of_the_book_speaks_without_tex():
    import json
    import re

    root = Path(__file__).resolve().parent.parent
    spans = [m for path in sorted(root.glob("notebooks/*.ipynb"))
             for cell in json.loads(path.read_text())["cells"]
             for m in re.findall(r"\$([^$]+)\$", cell.get("metadata", {}).get("mystnb", {})
                                 .get("figure", {}).get("caption", ""))]
    assert len(spans) > 100
    spoken = {m: figure_alt.speakable(m) for m in spans}
    left = {m: t for m, t in spoken.items()          # TeX left over (braces only where escaped)
            if re.search(r"[\\\x00-\x1f]|\^\^|__", t) or ("{" in t and "\\{" not in m)}
    assert not left, left
