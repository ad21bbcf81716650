"""The hidden first cell of every chapter: a no-op where dlmath imports, pip on Colab only."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import install_cell  # noqa: E402


@pytest.fixture
def calls(monkeypatch):
    """Run the cell with pip replaced by a recorder; return what it would have run."""
    recorded = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: recorded.append((args, kw)))
    return recorded


def test_does_nothing_where_dlmath_imports(calls):
    exec(install_cell.source(), {})
    assert calls == []


def test_refuses_outside_colab_naming_the_way_in(calls, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(ModuleNotFoundError, match="make lab"):
        exec(install_cell.source(), {})
    assert calls == []


def test_installs_from_the_books_repository_on_colab(calls, monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(install_cell.source(), {})
    (args, kw), = calls
    url = install_cell.repository_url()
    assert url.startswith("https://github.com/")
    assert args[:4] == [sys.executable, "-m", "pip", "install"]
    assert args[-1] == f"dlmath @ git+{url}" and kw == {"check": True}
    assert "Installing dlmath" in capsys.readouterr().out


def test_update_inserts_once_and_touches_nothing_else(tmp_path):
    src = next((ROOT / "notebooks").glob("01-*.ipynb"))
    nb = json.loads(src.read_text())
    nb["cells"] = [c for c in nb["cells"] if not install_cell.is_install_cell(c)]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    assert install_cell.update(path) is True
    after = json.loads(path.read_text())
    first = install_cell.first_code_cell(after)
    assert install_cell.is_install_cell(first)
    assert [c for c in after["cells"] if c is not first] == nb["cells"]
    text = path.read_text()
    assert install_cell.update(path) is False and path.read_text() == text
    first["source"] = [install_cell.FIRST_LINE + ", an older version\n"]   # replaced
    path.write_text(json.dumps(after, indent=1, ensure_ascii=False) + "\n")
    assert install_cell.update(path) is True and path.read_text() == text
