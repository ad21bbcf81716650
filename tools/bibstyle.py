"""Sphinx extension: a bibliography style whose labels are the citation keys.

Each chapter has its own bibliography (``:filter: docname in docnames``) and the book has a
global one. Numeric or alphabetic labels restart in every bibliography, so the same label ends
up naming different works and sphinxcontrib-bibtex reports duplicate labels. Keys are unique
across the book, so labelling every entry by its key makes the labels unique everywhere.
Citations in the text still read "Author, year" (``bibtex_reference_style: author_year``).
"""

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


class KeyLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            yield entry.key


class DlmathStyle(UnsrtStyle):
    default_label_style = "dlmath-key"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "dlmath-key", KeyLabelStyle)
    register_plugin("pybtex.style.formatting", "dlmath", DlmathStyle)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
