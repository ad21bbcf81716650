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
