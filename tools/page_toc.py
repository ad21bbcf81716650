"""Write a table of contents holding the intro and one chapter, for `make page`.

Usage: python tools/page_toc.py notebooks/NN-slug.ipynb OUT.yml
"""

import sys
from pathlib import Path


def main(notebook: str, out: str) -> None:
    stem = Path(notebook).with_suffix("").as_posix()
    if not Path(notebook).exists():
        sys.exit(f"make page: no such notebook: {notebook}")
    Path(out).write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n"
        f"  - file: {stem}\n  - file: book/bibliography\n"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
