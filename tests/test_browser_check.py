"""The browser check's text rule, on small pages (no Chromium needed)."""

import sys
from pathlib import Path

from bs4 import BeautifulSoup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from browser_check import stray_markup  # noqa: E402


def snippets(html: str) -> list[str]:
    return stray_markup(BeautifulSoup(f"<main>{html}</main>", "html.parser").main)


def test_rendered_math_code_and_figures_pass():
    assert snippets('<p>Let <span class="math">\\(x\\)</span> be real.</p>'
                    '<pre>echo $HOME</pre><p><code>{eq}`a`</code></p>'
                    '<svg><text>$\\mathdefault{10}$</text></svg>'
                    '<mjx-container>$</mjx-container>') == []


def test_a_garbled_paragraph_and_unparsed_roles_are_caught():
    # what a $$ display opened inside a paragraph rendered as: dollars left in the text
    garbled = '<p>Hence,\n$<span class="math">\\(\nx\n\\)</span> provided $y$.</p>'
    assert snippets(garbled) == ["Hence,\n$", "provided $y$."]
    assert snippets("<p>see {eq}`x-eq-a` and {cite:p}`key`</p>") == [
        "see {eq}`x-eq-a` and {cite:p}`key`"]
