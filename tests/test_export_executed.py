"""tools/export_executed.py writes the newest cached run of each chapter, outputs included."""

import sys
from pathlib import Path

import nbformat
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from export_executed import export  # noqa: E402

v4 = nbformat.v4


def test_the_cached_outputs_are_written_under_the_chapter_name(tmp_path):
    source = tmp_path / "src" / "07-chapter.ipynb"          # committed without outputs
    source.parent.mkdir()
    nbformat.write(v4.new_notebook(cells=[v4.new_code_cell("print(1)")]), source)
    executed = v4.new_notebook(cells=[v4.new_code_cell("print(1)", outputs=[
        v4.new_output("stream", name="stdout", text="1\n")])])
    cache = get_cache(str(tmp_path / "cache"))
    cache.cache_notebook_bundle(CacheBundleIn(executed, str(source)), check_validity=False)
    written = export(tmp_path / "cache", tmp_path / "out")
    assert written == [tmp_path / "out" / "07-chapter.ipynb"]
    copy = nbformat.read(written[0], as_version=4)
    assert copy.cells[0].source == "print(1)"
    assert copy.cells[0].outputs[0]["text"] == "1\n"
