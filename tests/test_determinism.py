"""tools/determinism.py compares two runs of a chapter by what a reader sees (no kernel here)."""

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from determinism import compare  # noqa: E402

v4 = nbformat.v4


def run(printed: str, png: str = "iVBOR", value: str = "0.5") -> nbformat.NotebookNode:
    """A two-cell executed notebook: one cell prints, one returns a value and draws."""
    return v4.new_notebook(cells=[
        v4.new_markdown_cell("# t"),
        v4.new_code_cell("print(x)", outputs=[v4.new_output("stream", name="stdout",
                                                              text=printed)]),
        v4.new_code_cell("f()", outputs=[
            v4.new_output("execute_result", data={"text/plain": value}, execution_count=2),
            v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]),
    ])


def test_identical_runs_agree():
    assert compare(run("err 3.1e-13\n"), run("err 3.1e-13\n")) == ([], 0)


def test_a_changed_digit_a_value_or_an_error_is_a_difference():
    diffs, _ = compare(run("err 3.1e-13\n"), run("err 3.2e-13\n"))
    assert len(diffs) == 1
    assert "-[stdout] err 3.1e-13" in diffs[0] and "+[stdout] err 3.2e-13" in diffs[0]
    assert compare(run("a\n"), run("a\n", value="0.25"))[0] != []
    failed = run("a\n")
    failed.cells[1].outputs = [v4.new_output("error", ename="AssertionError", evalue="",
                                             traceback=[])]
    assert compare(run("a\n"), failed)[0] != []
    shorter = run("a\n")
    shorter.cells.pop()
    assert compare(run("a\n"), shorter)[0] == ["2 code cells in the build, 1 now"]


def test_a_stream_split_into_pieces_is_the_same_text():
    pieces = run("a\nb\n")
    pieces.cells[1].outputs = [v4.new_output("stream", name="stdout", text="a\n"),
                               v4.new_output("stream", name="stdout", text="b\n")]
    assert compare(run("a\nb\n"), pieces) == ([], 0)
    pieces.cells[1].outputs[1]["name"] = "stderr"
    assert compare(run("a\nb\n"), pieces)[0] != []


def test_figures_are_counted_not_failed():
    assert compare(run("a\n", png="AAAA"), run("a\n", png="BBBB")) == ([], 1)
