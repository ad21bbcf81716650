#!/usr/bin/env bash
# Install the Debian packages `make pdf` needs (XeLaTeX, the LaTeX packages Sphinx and
# sphinx-jupyterbook-latex load, xeCJK for the Chinese terms, and fonts). Run as root.
# Measured on Debian 12: about 240 MB to download (175 MB for the set below without
# texlive-lang-chinese, which adds 62 MB), 2.5 minutes to install on a 2-core machine.
#   NO_NOTO=1 tools/install_tex.sh   skips fonts-noto-cjk: the PDF then sets Chinese in the
#                                    AR PL fonts that texlive-lang-chinese pulls in anyway.
set -euo pipefail
pkgs=(
  texlive-xetex              # xelatex, ucharclasses
  texlive-latex-recommended  # fontspec, unicode-math, polyglossia
  texlive-latex-extra        # fncychap, tabulary, changepage, ... (pulls texlive-pictures)
  texlive-fonts-recommended  # rsfs (jupyterBook.cls loads mathrsfs)
  texlive-lang-chinese       # xeCJK (texlive-lang-cjk) and ctexhook.sty; AR PL fonts
  latexmk
  fonts-freefont-otf         # FreeSerif/FreeSans/FreeMono, Sphinx's XeLaTeX defaults
  poppler-utils              # pdfinfo (page count) and pdftotext/pdftoppm for looking at it
)
[ -n "${NO_NOTO:-}" ] || pkgs+=(fonts-noto-cjk)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
echo "install_tex: installed ${pkgs[*]}"
