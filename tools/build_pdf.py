"""Build the PDF of the book: Sphinx's LaTeX builder (through Jupyter Book), then latexmk + XeLaTeX.

Usage: ``python tools/build_pdf.py [--check-only] [--no-strict]`` (``make pdf`` runs it).

1. Checks that the TeX programs, LaTeX packages and fonts the book needs are installed, and if
   not, stops with the Debian packages to install (``tools/install_tex.sh`` installs them).
2. Writes ``_build/latex/dlmath.tex`` with Jupyter Book's configuration (``_config.yml``,
   ``_toc.yml``), warnings as errors and nitpicky like the HTML build. It reads the notebooks'
   outputs from the same execution cache as ``make book`` (``_build/.jupyter_cache``) but keeps
   its own doctrees (``_build/.doctrees-latex``): the LaTeX build changes Sphinx settings
   (parts, numbering depth), and sharing one environment would make each build re-read every
   page after the other.
3. Runs ``latexmk`` (Sphinx's generated Makefile, XeLaTeX) with ``-halt-on-error``, so a TeX
   error fails the build instead of waiting for input; then fails if a reference of the PDF is
   undefined (a dead link). Before that it fails if a box of the .tex has no title (an empty
   title bar). ``--no-strict`` keeps Sphinx warnings, untitled boxes and dead links non-fatal.

The chapters keep the numbers they have in the HTML book (``tools/chapter_numbers.py``: the
NN of ``notebooks/NN-slug``, which the boxes' "Proposition 5.2" already carry): the part
openers become unnumbered chapters (each part already has its own page and entry in the contents)
and the appendices are lettered. The build fails if a numbered chapter then differs from its
notebook's NN.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
OUT = BUILD / "latex"
NAME = "dlmath"  # latex.latex_documents.targetname in _config.yml

# What the LaTeX run needs, and the Debian package that ships it.
PROGRAMS = {"xelatex": "texlive-xetex", "latexmk": "latexmk", "makeindex": "texlive-binaries",
            "kpsewhich": "texlive-binaries", "fc-list": "fontconfig"}
STYLES = {
    "sphinx.sty": None,  # shipped by Sphinx itself, copied next to the .tex
    "fontspec.sty": "texlive-latex-recommended",
    "unicode-math.sty": "texlive-latex-recommended",
    "ucharclasses.sty": "texlive-xetex",
    "polyglossia.sty": "texlive-latex-recommended",
    "fncychap.sty": "texlive-latex-extra",
    "tabulary.sty": "texlive-latex-extra",
    "changepage.sty": "texlive-latex-extra",
    "pgfplots.sty": "texlive-pictures",
    "rsfs10.tfm": "texlive-fonts-recommended",
    "xeCJK.sty": "texlive-lang-cjk",
    "ctexhook.sty": "texlive-lang-chinese",
}
# fontconfig family -> package. Sphinx's XeLaTeX default text font, and one CJK font.
FONTS = {"FreeSerif": "fonts-freefont-otf"}
CJK_FONTS = {"Noto Serif CJK SC": "fonts-noto-cjk", "AR PL SungtiL GB": "fonts-arphic-gbsn00lp"}


def missing_prerequisites() -> dict[str, str]:
    """What is missing, as {thing: Debian package}."""
    missing = {p: pkg for p, pkg in PROGRAMS.items() if shutil.which(p) is None}
    if "kpsewhich" not in missing:
        for sty, pkg in STYLES.items():
            if pkg and not subprocess.run(["kpsewhich", sty], capture_output=True,
                                          text=True).stdout.strip():
                missing[sty] = pkg
    if "fc-list" not in missing:
        families = subprocess.run(["fc-list", ":", "family"], capture_output=True,
                                  text=True).stdout
        have = {f.strip() for line in families.splitlines() for f in line.split(",")}
        missing.update({f: pkg for f, pkg in FONTS.items() if f not in have})
        if not any(f in have for f in CJK_FONTS):
            missing["a CJK font (" + " or ".join(CJK_FONTS) + ")"] = "fonts-noto-cjk"
    return missing


# What tools/install_tex.sh installs (fonts-noto-cjk optional).
DEBIAN_PACKAGES = ("texlive-xetex texlive-latex-recommended texlive-latex-extra "
                   "texlive-fonts-recommended texlive-lang-chinese latexmk fonts-freefont-otf "
                   "poppler-utils fonts-noto-cjk")


def explain(missing: dict[str, str]) -> str:
    pkgs = sorted(set(missing.values()) | set(DEBIAN_PACKAGES.split()))
    return ("make pdf: TeX is not (fully) installed. Missing: " + ", ".join(missing) + ".\n"
            "Install the Debian packages (about 240 MB to download) with\n"
            "  sudo tools/install_tex.sh\n"
            "or by hand:\n"
            "  sudo apt-get install --no-install-recommends " + " ".join(pkgs))


def build_latex(strict: bool) -> int:
    from jupyter_book.sphinx import build_sphinx

    return build_sphinx(
        ROOT, OUT, doctreedir=BUILD / ".doctrees-latex", noconfig=True,
        path_config=str(ROOT / "_config.yml"), builder="latex",
        confoverrides={"external_toc_path": (ROOT / "_toc.yml").as_posix(),
                       "latex_individualpages": False, "nitpicky": strict},
        warningiserror=strict, keep_going=True)


def run_latexmk() -> int:
    env = {"LATEXOPTS": "-interaction=nonstopmode -halt-on-error -file-line-error"}
    cmd = ["make", "-C", str(OUT), "all-pdf"]
    with open(OUT / "latexmk.log", "w") as log:
        proc = subprocess.run(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    return proc.returncode


def tex_errors(log: Path, limit: int = 15) -> str:
    """The first TeX error lines of a .log file, with a little context."""
    if not log.exists():
        return "(no TeX log)"
    lines = log.read_text(errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith("!") or re.match(r"^[^:\s]+\.tex:\d+: ", line):
            out += lines[i:i + 4]
        if len(out) >= limit:
            break
    return "\n".join(out) or "(no error line found; see the log)"


def undefined_references(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return len(re.findall(r"(?:Hyper r|R)eference `[^']*' on page", text.replace("\n", "")))


def untitled_boxes(tex: Path) -> int:
    """Admonition boxes written without their title argument: LaTeX would take the body's first
    token as the title and draw an empty title bar (tools/latex_refs.py rewrites proofs, which
    sphinx-proof writes that way)."""
    return len(re.findall(r"\\begin\{sphinxadmonition\}\{\w+\}(?!\{)", tex.read_text()))


PART_OPENER = re.compile(r"\\chapter\{(Part [IVXLC]+: )")
CHAPTER_DOC = re.compile(r"\\chapter\{.*?\n\\label\{\\detokenize\{([^}:]*)")


def number_like_the_html(tex: str) -> tuple[str, list[str]]:
    """The .tex with unnumbered part openers and lettered appendices, and the numbered
    chapters whose number would differ from their notebook's NN (empty when all agree)."""
    from chapter_numbers import chapter_number  # imports Sphinx: not for --check-only

    tex = PART_OPENER.sub(r"\\chapter*{\1", tex)
    tex = tex.replace("\\part{Appendices}", "\\appendix\n\\part{Appendices}", 1)
    body = tex.split("\\appendix\n", 1)[0]
    wrong = [f"chapter {k} is {doc}" for k, doc in enumerate(CHAPTER_DOC.findall(body), 1)
             if chapter_number(doc) != k]
    return tex, wrong


def page_count(pdf: Path) -> str:
    if shutil.which("pdfinfo") is None:
        return "?"
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout
    m = re.search(r"^Pages:\s+(\d+)", info, re.M)
    return m.group(1) if m else "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check-only", action="store_true", help="only check the TeX installation")
    ap.add_argument("--no-strict", action="store_true",
                    help="Sphinx warnings and dead links do not fail")
    args = ap.parse_args(argv)

    missing = missing_prerequisites()
    if missing:
        print(explain(missing), file=sys.stderr)
        return 2
    if args.check_only:
        print("make pdf: TeX installation complete")
        return 0

    t0 = time.monotonic()
    status = build_latex(strict=not args.no_strict)
    if status != 0:
        print(f"make pdf: the LaTeX build failed (Sphinx exit status {status}); see above",
              file=sys.stderr)
        return 1
    t1 = time.monotonic()
    tex, wrong = number_like_the_html((OUT / f"{NAME}.tex").read_text())
    (OUT / f"{NAME}.tex").write_text(tex)
    if wrong and not args.no_strict:
        print(f"make pdf: the PDF's chapter numbers would differ from the HTML's: {wrong[:3]}",
              file=sys.stderr)
        return 1
    untitled = untitled_boxes(OUT / f"{NAME}.tex")
    if untitled and not args.no_strict:
        print(f"make pdf: {untitled} boxes of {OUT / NAME}.tex have no title (an empty title "
              "bar in the PDF)", file=sys.stderr)
        return 1
    pdf, log = OUT / f"{NAME}.pdf", OUT / f"{NAME}.log"
    if run_latexmk() != 0 or not pdf.exists():
        print(f"make pdf: XeLaTeX failed. First errors in {log}:\n{tex_errors(log)}\n"
              f"(latexmk's output: {OUT / 'latexmk.log'})", file=sys.stderr)
        return 1
    t2 = time.monotonic()
    undefined = undefined_references(log)
    print(f"make pdf: LaTeX sources {t1 - t0:.0f} s, XeLaTeX {t2 - t1:.0f} s; "
          f"{page_count(pdf)} pages, {undefined} undefined references")
    print(f"\nThe PDF is at: {pdf}")
    if undefined and not args.no_strict:
        print(f"make pdf: {undefined} links of the PDF lead nowhere (\"undefined\" in {log})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
