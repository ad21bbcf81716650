"""The browser check's text rule, on small pages, and its Chromium runner (no Chromium needed)."""

import subprocess
import sys
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import browser_check  # noqa: E402
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


def numbering(html: str, chapter: int) -> list[str]:
    main = BeautifulSoup(f"<main><div><h1>print copy</h1></div><section>{html}</section></main>",
                         "html.parser").main
    return browser_check.numbering_problems(main, chapter)


def test_a_chapters_numbers_carry_the_chapter():
    page = ('<h1><span class="section-number">5. </span>Softmax</h1>'
            '<span class="eqno">(5.3)<a class="headerlink">#</a></span>'
            '<p class="admonition-title"><span class="caption-number">Proposition 5.12 </span></p>'
            '<a href="#x"><span>Proposition 7.1</span></a>')  # a reference elsewhere: not checked
    assert numbering(page, 5) == []
    assert numbering(page.replace("(5.3)", "(22)"), 5) == ["numbered '(22) #', not 5.k"]
    assert numbering(page.replace("5.12", "51.2"), 5) == ["numbered 'Proposition 51.2', not 5.k"]
    assert numbering(page.replace('<span class="section-number">5. </span>', ""), 5) == [
        "title not numbered 5.: 'Softmax'"]
    assert numbering(page + '<h2><span class="section-number">5. </span>Margin</h2>', 5) == [
        "section heading numbered: '5. Margin'"]


def test_a_numbered_link_must_name_the_number_its_target_shows(tmp_path):
    target = tmp_path / "ch.html"
    target.write_text('<main><div id="thm-a" class="proof theorem admonition"><p class="admonition-'
                      'title"><span class="caption-number">Theorem 5.2 </span>(A)</p></div>'
                      '<div id="equation-e" class="math"><span class="eqno">(5.3)<a>#</a></span>'
                      '</div></main>')

    def problems(links: str) -> list[str]:
        page = tmp_path / "ledger.html"
        main = BeautifulSoup(f"<main>{links}</main>", "html.parser").main
        return browser_check.numbered_reference_problems(main, page)

    good = ('<a class="reference internal" href="ch.html#thm-a">Theorem 5.2</a>'
            '<a class="reference internal" href="ch.html#equation-e">(5.3)</a>'
            '<a class="reference internal" href="ch.html#thm-a">check cell</a>')
    assert problems(good) == []
    assert problems(good.replace(">Theorem 5.2<", ">Theorem 5.1<")) == [
        "link 'Theorem 5.1' points to ch.html#thm-a, which shows 'Theorem 5.2'"]
    assert problems(good.replace(">(5.3)<", ">(22)<")) == [
        "link '(22)' points to ch.html#equation-e, which shows '(5.3)'"]


def fake_run(hangs: int):
    """A stand-in for subprocess.run that times out ``hangs`` times, then succeeds."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if len(calls) <= hangs:
            raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
        return subprocess.CompletedProcess(cmd, 0, "<html></html>", "")
    return run, calls


def test_a_chromium_hang_is_tried_again_once(monkeypatch, tmp_path):
    run, calls = fake_run(hangs=1)
    monkeypatch.setattr(browser_check.subprocess, "run", run)
    assert browser_check.run_chromium("chromium", ["--dump-dom", "x"]).stdout == "<html></html>"
    assert len(calls) == 2 and calls[0][-2:] == ["--dump-dom", "x"]
    run, calls = fake_run(hangs=2)  # a page check that hangs twice fails
    monkeypatch.setattr(browser_check.subprocess, "run", run)
    with pytest.raises(subprocess.TimeoutExpired):
        browser_check.run_chromium("chromium", ["--dump-dom", "x"])
    assert len(calls) == 2


def test_a_screenshot_that_hangs_twice_is_skipped(monkeypatch, tmp_path, capsys):
    run, _ = fake_run(hangs=2)
    monkeypatch.setattr(browser_check.subprocess, "run", run)
    browser_check.screenshot("chromium", tmp_path / "ledger.html", tmp_path / "ledger.png")
    assert "screenshot of ledger.html skipped" in capsys.readouterr().out
