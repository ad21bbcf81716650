"""The first code cell of every chapter: on Colab, install dlmath before the chapter imports it.

The book's launch buttons open a chapter's notebook on Binder (whose environment, built from
``binder/environment.yml`` and ``binder/postBuild``, has dlmath) or on Colab, whose Python has
torch, numpy, scipy, sympy and matplotlib but not dlmath. So each chapter starts with the cell
below, hidden from the book (tag ``remove-cell``). Where dlmath imports, it does nothing. On
Colab it pip-installs dlmath from the book's repository (``repository.url`` of
``_config.yml``), with the torch it pins, before the chapter's first ``import torch``. Anywhere
else it refuses, naming the way in: it does not install a torch into a reader's own environment
behind their back.

    python tools/install_cell.py notebooks/*.ipynb   # insert the cell, or bring it up to date
    nbstripout notebooks/*.ipynb                       # then, as after any edit

The structure test fails on a chapter whose first code cell is not this one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "remove-cell"
CELL_ID = "install-dlmath"   # nbstripout renumbers it with the others
FIRST_LINE = "# On Colab, install the book's library first"


def repository_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def source(url: str | None = None) -> str:
    """The install cell's code for the repository at ``url`` (default: the book's)."""
    url = url or repository_url()
    return f'''\
{FIRST_LINE} (this cell is hidden in the book).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("dlmath") is None:
    if "google.colab" not in sys.modules:
        raise ModuleNotFoundError(
            "dlmath is not installed for this kernel: run `make lab` in the book's repository "
            "({url}), or `pip install -e '.[book]'` there")
    print("Installing dlmath and the torch it pins (a minute or two) ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "dlmath @ git+{url}"], check=True)
    importlib.invalidate_caches()'''


def is_install_cell(cell) -> bool:
    """``cell`` (a dict of a notebook's JSON, or an nbformat node) is the current install cell."""
    text = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    return (cell["cell_type"] == "code" and text == source()
            and TAG in cell.get("metadata", {}).get("tags", []))


def first_code_cell(nb):
    """The first code cell of ``nb`` (an nbformat notebook or its JSON dict), or None."""
    return next((c for c in nb["cells"] if c["cell_type"] == "code"), None)


def update(path: Path) -> bool:
    """Put the install cell first among ``path``'s code cells; True if the file changed.

    Edits the notebook's JSON as the chapters store it (one-space indent, sources as lists of
    lines), so that nothing else in the file moves.
    """
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    at = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), len(cells))
    if at < len(cells) and is_install_cell(cells[at]):
        return False
    cell = {"cell_type": "code", "execution_count": None, "id": CELL_ID,
            "metadata": {"tags": [TAG]}, "outputs": [],
            "source": source().splitlines(keepends=True)}
    if at < len(cells) and "".join(cells[at]["source"]).startswith(FIRST_LINE):
        cells[at] = cell                      # an older version of it
    else:
        cells.insert(at, cell)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    for name in argv:
        if update(Path(name)):
            print(f"updated {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
