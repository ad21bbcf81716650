"""tools/run_notebooks.py: chapters as plain Python, and --reseed, which imitates a GPU's draws."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import run_notebooks  # noqa: E402

CELL = """
import torch
from dlmath import device
ref = torch.rand(3, generator=torch.Generator().manual_seed(1))
on_cpu = torch.rand(3, generator=device.generator(1, "cpu"))              # kept everywhere
on_dev = torch.rand(3, generator=device.generator(1, torch.device("cpu")))  # a chapter's dev
assert torch.equal(on_cpu, ref)
assert torch.equal(on_dev, ref) == RESEEDED_EXPECTED
"""


def _notebook(tmp_path, expected_same: bool) -> str:
    source = CELL.replace("RESEEDED_EXPECTED", str(expected_same))
    nb = {"cells": [{"cell_type": "markdown", "source": ["# t"]},
                    {"cell_type": "code", "source": source.splitlines(keepends=True)}]}
    path = tmp_path / f"nb_{expected_same}.ipynb"
    path.write_text(json.dumps(nb))
    return str(path)


def test_plain_run_keeps_seeds_and_reseed_changes_only_device_generators(tmp_path, capsys):
    same, other = _notebook(tmp_path, True), _notebook(tmp_path, False)
    assert run_notebooks.main([same]) == 0
    assert run_notebooks.main(["--reseed", "7919", other]) == 0
    assert run_notebooks.main(["--reseed", "7919", same]) == 1   # the assert fails: reported
    assert "1 failed" in capsys.readouterr().out


def test_reseeded_keeps_the_literal_cpu_only():
    calls = []
    fake = run_notebooks.reseeded(lambda seed, device=None: calls.append((seed, device)), 10)
    fake(3, "cpu")
    fake(3)
    fake(3, "cuda")
    assert calls == [(3, "cpu"), (13, None), (13, "cuda")]


def test_as_gpu_turns_the_cpu_guards_off(tmp_path):
    source = ('import torch\ndev = torch.device("cpu")\n'
              'if dev.type == "cpu" and True:\n    raise AssertionError("a CPU-only check ran")\n')
    nb = {"cells": [{"cell_type": "code", "source": source.splitlines(keepends=True)}]}
    path = tmp_path / "guard.ipynb"
    path.write_text(json.dumps(nb))
    assert run_notebooks.main([str(path)]) == 1                  # on a CPU the guard is on
    assert run_notebooks.main(["--as-gpu", str(path)]) == 0      # as a GPU: off
    assert run_notebooks.main(["--reseed", "3", "--as-gpu", str(path)]) == 0


def test_chapters_test_the_device_in_the_one_form_as_gpu_rewrites():
    # --as-gpu rewrites `dev.type == "cpu"`; another spelling would escape it
    import re
    root = Path(__file__).resolve().parents[1]
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"]).replace('dev.type == "cpu"', "")
            assert not re.search(r"\.type\s*[!=]=|is_cuda|cuda\.is_available", src), nb.name


def test_help_and_bad_options(capsys):
    assert run_notebooks.main(["--help"]) == 0
    assert "usage:" in capsys.readouterr().out
    assert run_notebooks.main(["--bogus", "x.ipynb"]) == 2      # not run as a notebook path
    assert run_notebooks.main([]) == 2


def test_each_line_reports_the_chapters_peak_memory(tmp_path, capsys):
    def peak_of(mib):
        source = f"import torch\nx = torch.ones({mib} * 2**20 // 8, dtype=torch.float64)\n"
        nb = {"cells": [{"cell_type": "code", "source": source.splitlines(keepends=True)}]}
        path = tmp_path / f"mem{mib}.ipynb"
        path.write_text(json.dumps(nb))
        assert run_notebooks.main([str(path)]) == 0
        line = capsys.readouterr().out.splitlines()[0]
        assert line.startswith("ok") and " GB " in line, line
        return float(line.split("peak")[1].split()[0])

    # the parent's own memory must not count (getrusage's ru_maxrss carries it over on Linux)
    parent = torch.ones(512 * 2**20 // 8, dtype=torch.float64)
    alone = peak_of(0)
    assert alone < 0.5 and parent.sum() > 0           # torch and a chapter-less runner
    assert 0.4 <= peak_of(512) - alone <= 0.7          # the 0.5 GiB tensor, to the line's 0.1 GB
    assert run_notebooks.peaks(f"noise\n{run_notebooks.PEAK} {3 * 2**30} {2**31}\n") == \
        "  peak  3.0 GB (CUDA 2.0 GB)"
    assert run_notebooks.peaks("a traceback, no peak line") == ""
