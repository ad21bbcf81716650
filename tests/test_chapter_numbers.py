"""Chapters are numbered by their notebook's NN, in the HTML (tools/chapter_numbers.py) and in
the PDF (tools/build_pdf.py). The built pages themselves are checked by the browser check."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from build_pdf import number_like_the_html  # noqa: E402
from chapter_numbers import chapter_number  # noqa: E402


def test_chapter_number_is_the_notebooks_nn():
    assert chapter_number("notebooks/05-softmax-alternatives") == 5
    assert chapter_number("notebooks/35-finetuning-classifier") == 35
    assert chapter_number("book/parts/matrices") is None
    assert chapter_number("book/notation") is None


def chapter(title: str, doc: str) -> str:
    return f"\\chapter{{{title}}}\n\\label{{\\detokenize{{{doc}::doc}}}}\ntext\n"


TEX = ("\\part{Inequalities}\n" + chapter("Part I: Inequalities", "book/parts/inequalities")
       + chapter("Logsumexp", "notebooks/01-lse") + chapter("Cosine", "notebooks/02-cos")
       + "\\part{Distributions}\n" + chapter("Part II: Distributions", "book/parts/dist")
       + chapter("Softmax", "notebooks/03-softmax")
       + "\\part{Appendices}\n" + chapter("Notation", "book/notation"))


def test_pdf_part_openers_are_unnumbered_and_appendices_lettered():
    tex, wrong = number_like_the_html(TEX)
    assert wrong == []
    assert "\\chapter*{Part I: Inequalities}" in tex and "\\chapter*{Part II: " in tex
    assert "\\appendix\n\\part{Appendices}" in tex
    assert "\\chapter{Notation}" in tex  # lettered by \appendix


def test_pdf_numbering_that_drifts_from_the_notebooks_is_reported():
    # a part opener that does not read "Part N: ..." stays numbered and shifts what follows
    _, wrong = number_like_the_html(TEX.replace("Part II: Distributions", "Distributions"))
    assert wrong == ["chapter 3 is book/parts/dist", "chapter 4 is notebooks/03-softmax"]
