"""Open every page of the built book in headless Chromium and check what a reader would see.

The strict Sphinx build cannot see bad TeX: MathJax only meets it in the browser. For each HTML
page this script lets Chromium load the page and run MathJax, dumps the resulting DOM, and fails
when

* a math node (``.math`` element written by Sphinx) was left untypeset (no ``mjx-container``),
* MathJax reported an error (``mjx-merror`` or ``data-mjx-error``) or met an undefined
  macro (rendered in red by its ``noundefined`` extension),
* an image points to a file that is not in the build, or did not load (natural width 0), or
  has no text alternative (an ``alt`` that is empty or the file's own path),
* an internal link points to a missing page or a missing anchor,
* the page logged a JavaScript error or a resource failed to load,
* a chapter page lacks a Binder or Colab launch button opening its own notebook,
* a chapter's title, equation numbers or numbered boxes, figures and tables do not carry the
  chapter's number (``notebooks/05-...``: "5. Title", "(5.3)", "Proposition 5.2"), or a link
  that names a number ("Theorem 5.2", "(5.3)", the ledger's links too) points to a box,
  equation, figure or table that shows another,
* a figure's text stand-in (``<Figure size ...>``) is shown instead of, or beside, the figure,
* the reader's text shows markup that should have been rendered: a TeX dollar or a MyST role
  such as ``{eq}`` outside math and code (a ``$$`` display opened inside a paragraph once
  garbled whole paragraphs this way, with no error anywhere).

To see what only the running page knows (image sizes, console errors), the check opens a
temporary copy of each page with a small probe script injected at the top of ``<head>``; the probe
writes its findings into the DOM once MathJax has finished, and the dumped DOM carries them out.

Usage: python tools/browser_check.py _build/html [--jobs 2] [--pages GLOB ...]
Exit status 0 when every page passes; otherwise each problem is printed with its page.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bs4 import BeautifulSoup
from chapter_numbers import chapter_number

# Console messages of the book theme itself, harmless and outside this project's control; each is
# matched exactly, so any other error still fails the check.
KNOWN_THEME_MESSAGES = {
    # sphinx-thebe (via Jupyter Book 1) inserts its configuration script twice on pages with
    # code cells; the second copy redeclares a const. Thebe (live code) is not enabled here.
    "js error: Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared",
    # pydata-sphinx-theme with no stored light/dark preference in a fresh browser profile.
    "console.error: Got invalid theme mode: . Resetting to auto.",
}
SKIP = {"search.html", "genindex.html", "prf-prf.html", "py-modindex.html"}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--allow-file-access-from-files", "--virtual-time-budget=20000",
    "--run-all-compositor-stages-before-draw",
]


# Markup that a reader must never see in the text: a TeX dollar, or a MyST role left unparsed.
STRAY_MARKUP = re.compile(r"\$|\{(?:eq|cite(?::[pt])?|numref|prf:ref|ref|doc|term|math)\}`")
NOT_TEXT = ["pre", "code", "script", "style", "svg", "textarea", "mjx-container"]


def stray_markup(main) -> list[str]:
    """The text snippets of ``main`` (a BeautifulSoup node) that show unrendered markup."""
    return [text.strip()[:80] for text in main.find_all(string=STRAY_MARKUP)
            if text.find_parent(NOT_TEXT) is None and text.find_parent(class_="math") is None]


def numbering_problems(main, chapter: int) -> list[str]:
    """The chapter's own numbers (title, equations, captions) that do not start with ``chapter``."""
    h1 = main.select_one("section > h1")  # the page's title (a print-only copy comes first)
    number = h1.find("span", class_="section-number") if h1 else None
    problems = [] if number and number.get_text(strip=True) == f"{chapter}." else [
        f"title not numbered {chapter}.: {h1.get_text(' ', strip=True)[:60] if h1 else None!r}"]
    for span in main.select("span.eqno, span.caption-number"):
        found = re.search(r"(\d+)\.\d+", span.get_text(" ", strip=True))
        if not found or int(found.group(1)) != chapter:
            problems.append(f"numbered {span.get_text(' ', strip=True)[:30]!r}, not {chapter}.k")
    for heading in main.select("h2, h3, h4, h5, h6"):  # only the title carries the number
        if heading.find("span", class_="section-number"):
            problems.append(f"section heading numbered: {heading.get_text(' ', strip=True)[:40]!r}")
    return problems


NUMBERED_REF = re.compile(r"(?:(?:Theorem|Lemma|Proposition|Corollary|Definition|Exercise|"
                          r"Fig\.|Table) \d+(?:\.\d+)?|\(\d+(?:\.\d+)?\))")


def numbered_reference_problems(main, page: Path) -> list[str]:
    """Links reading "Theorem 5.2" or "(5.3)" whose target shows another number."""
    problems = []
    for a in main.select("a.reference.internal[href]"):
        text = " ".join(a.get_text(" ", strip=True).split())
        parts = urlsplit(a["href"])
        if not NUMBERED_REF.fullmatch(text) or not parts.fragment:
            continue
        target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if not target.is_file():
            continue  # reported as a broken link
        element = soup_of(target).find(id=unquote(parts.fragment))
        shown = element.find(class_=["caption-number", "eqno"]) if element else None
        shown = " ".join(shown.get_text(" ", strip=True).rstrip("#").split()) if shown else None
        if element is not None and shown != text:
            problems.append(f"link {text!r} points to {a['href']}, which shows {shown!r}")
    return problems


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("browser check: Chromium not found (Debian: apt-get install chromium)")


PROBE = """<script>
(function () {
  var found = {errors: []};
  var origError = console.error;
  console.error = function () {
    found.errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return origError.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) {
      found.errors.push("failed to load: " + (t.src || t.href));
    } else {
      found.errors.push("js error: " + (e.message || e));
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    found.errors.push("unhandled rejection: " + e.reason);
  });
  function report() {
    found.images = Array.prototype.map.call(document.images, function (img) {
      return [img.getAttribute("src"), img.naturalWidth];
    });
    var out = document.createElement("script");
    out.type = "application/json";
    out.id = "dlmath-probe";
    out.textContent = JSON.stringify(found);
    document.body.appendChild(out);
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) {
      mj.startup.promise.then(report, report);
    } else {
      report();
    }
  });
})();
</script>"""


def dump_dom(chromium: str, page: Path) -> str:
    """The DOM of ``page`` after it loaded and ran, with the probe's findings in it."""
    html = page.read_text(encoding="utf-8")
    head = html.find("<head>")
    probed = html[: head + 6] + PROBE + html[head + 6:] if head >= 0 else PROBE + html
    copy = page.with_name(f".probe-{page.name}")
    copy.write_text(probed, encoding="utf-8")
    try:
        result = run_chromium(chromium, ["--dump-dom", copy.resolve().as_uri()])
    finally:
        copy.unlink(missing_ok=True)
    if result.returncode != 0 or "<html" not in result.stdout:
        raise RuntimeError(f"Chromium failed on {page}: {result.stderr[-500:]}")
    return result.stdout


@functools.cache
def soup_of(path: Path) -> BeautifulSoup:
    """A built page as written by Sphinx (before any script ran), parsed once."""
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def ids_of(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        soup = soup_of(path)
        cache[path] = {el["id"] for el in soup.find_all(id=True)} | {
            el["name"] for el in soup.find_all("a", attrs={"name": True})}
    return cache[path]


def check_page(chromium: str, root: Path, page: Path, id_cache) -> list[str]:
    soup = BeautifulSoup(dump_dom(chromium, page), "html.parser")
    main = soup.find("main") or soup
    problems = []
    probe = soup.find("script", id="dlmath-probe")
    if probe is None:
        problems.append("the page never finished loading (no probe report)")
    else:
        found = json.loads(probe.string or "{}")
        problems += [e[:200] for e in found.get("errors", []) if e not in KNOWN_THEME_MESSAGES]
        problems += [f"image did not load: {src}" for src, width in found.get("images", [])
                     if not width]
    math_nodes = main.select(".math")
    for node in math_nodes:
        if node.find("mjx-container") is None:
            tex = node.get_text(" ", strip=True)[:120]
            problems.append(f"math not typeset: {tex!r}")
    for err in main.select("mjx-merror, [data-mjx-error]"):
        text = err.get("data-mjx-error") or err.get_text(" ", strip=True)
        problems.append(f"MathJax error: {text[:160]!r}")
    for undefined in main.select('mtext[mathcolor="red"]'):  # MathJax's noundefined extension
        problems.append(f"undefined TeX macro: {undefined.get_text(strip=True)[:80]!r}")
    if page.parent.name == "notebooks":  # launch buttons must open this very notebook
        problems += numbering_problems(main, chapter_number(f"notebooks/{page.stem}"))
        notebook = f"notebooks/{page.stem}.ipynb"
        for service, prefix in (("Binder", "https://mybinder.org/"),
                                ("Colab", "https://colab.research.google.com/")):
            links = [a["href"] for a in soup.find_all("a", href=True)
                     if a["href"].startswith(prefix)]
            if not links:
                problems.append(f"no {service} launch button")
            problems += [f"{service} launch button opens {href}, not {notebook}"
                         for href in links if not href.endswith(notebook)]
    problems += [f"unrendered markup in the text: {snippet!r}" for snippet in stray_markup(main)]
    problems += numbered_reference_problems(main, page)
    leaked = [pre for pre in main.find_all("pre") if "<Figure size" in pre.get_text()]
    problems += ["a figure's text stand-in (<Figure size ...>) is shown" for _ in leaked[:1]]
    for img in main.find_all("img"):
        src = img.get("src", "")
        if src.startswith(("data:", "http:", "https:")):
            continue
        target = (page.parent / unquote(urlsplit(src).path)).resolve()
        if not target.is_file():
            problems.append(f"image missing: {src}")
        alt = img.get("alt", "").strip()
        if not alt or alt == src or alt.lower().endswith((".png", ".svg", ".jpg")):
            problems.append(f"image without a text alternative (alt={alt!r}): {src}")
    for a in main.find_all("a", href=True):
        href = a["href"]
        parts = urlsplit(href)
        if parts.scheme or href.startswith(("mailto:", "//")):
            continue
        target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"broken link: {href}")
            continue
        if parts.fragment and target.suffix == ".html" and target.is_relative_to(root):
            if unquote(parts.fragment) not in ids_of(target, id_cache):
                problems.append(f"broken anchor: {href}")
    return [f"{page.relative_to(root)}: {p}" for p in problems] + (
        [] if problems else [f"ok {page.relative_to(root)} ({len(math_nodes)} math nodes)"])


def screenshot(chromium: str, page: Path, out: Path) -> None:
    """A 2x screenshot of ``page`` (1280 px wide) for a person to look at.

    Not a check: if Chromium fails or hangs twice, a line says so and the run goes on.
    """
    try:
        result = run_chromium(chromium, ["--window-size=1280,2000", "--force-device-scale-factor=2",
                                         f"--screenshot={out}", page.resolve().as_uri()])
    except subprocess.TimeoutExpired:
        print(f"screenshot of {page.name} skipped: Chromium hung twice")
        return
    if result.returncode != 0:
        print(f"screenshot of {page.name} skipped: Chromium exited with {result.returncode}")


def run_chromium(chromium: str, args: list[str], timeout: float = 120, tries: int = 2):
    """Run headless Chromium on a fresh profile; a run that hangs past ``timeout`` seconds is
    tried again (once by default), since a hang is the browser's, not the page's, and seen
    rarely on a loaded machine (once in a clean run, where the same page then took 2 s)."""
    for attempt in range(1, tries + 1):
        with tempfile.TemporaryDirectory(prefix="dlmath-chromium-") as profile:
            try:
                return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                       *args], capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                if attempt == tries:
                    raise
                print(f"Chromium hung on {args[-1]} for {timeout:.0f} s; trying again",
                      file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", type=Path)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--pages", nargs="*", default=["**/*.html"])
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="folder for 2x screenshots of the intro, first chapter and ledger")
    args = parser.parse_args(argv)
    root = args.html_dir.resolve()
    if not (root / "index.html").is_file():
        sys.exit(f"browser check: no built book at {root} (run the book build first)")
    pages = sorted({p for pattern in args.pages for p in root.glob(pattern)
                    if "_static" not in p.parts and "_sources" not in p.parts
                    and p.name not in SKIP and p.name != "index.html"})
    chromium = find_chromium()
    id_cache: dict[Path, set[str]] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda p: check_page(chromium, root, p, id_cache), pages))
    failures = [line for lines in results for line in lines if not line.startswith("ok ")]
    for lines in results:
        for line in lines:
            print(line)
    if args.screenshots is not None:
        args.screenshots.mkdir(parents=True, exist_ok=True)
        chapters = sorted(root.glob("notebooks/*.html"))
        for page in [root / "book/intro.html", *chapters[:1], root / "book/ledger.html"]:
            if page.is_file():
                screenshot(chromium, page, args.screenshots / f"{page.stem}.png")
        print(f"screenshots in {args.screenshots}")
    print(f"browser check: {len(pages) - len({f.split(':')[0] for f in failures})} passed, "
          f"{len({f.split(':')[0] for f in failures})} failed ({len(pages)} pages)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
