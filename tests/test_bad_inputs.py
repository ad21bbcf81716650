"""tools/bad_inputs.py: its options and spoils (running it is `make bad-inputs`)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bad_inputs  # noqa: E402


def test_help_and_a_bad_prefix_do_not_start_a_recording(capsys):
    assert bad_inputs.main(["--help"]) == 0
    assert bad_inputs.main(["--replay", "moe"]) == 2      # prefixes are module paths: dlmath.moe
    assert "bad_inputs.py --replay" in capsys.readouterr().out


def test_spoiled_tensors_include_the_other_dtypes():
    labels = [label for label, _ in bad_inputs.spoiled(torch.ones(2, 3))]
    assert {"float64", "float16", "bfloat16", "int dtype", "NaN entry"} <= set(labels)
    labels64 = [label for label, _ in bad_inputs.spoiled(torch.ones(2, dtype=torch.float64))]
    assert "float32" in labels64


def test_a_string_or_flag_is_another_code_path():
    """A method or a flag picks another path, which the replay spoils again; another shape does
    not (entmax's bisection fallback skipped validation, and no replayed call reached it)."""
    path, shape = bad_inputs._signatures_of_call((torch.ones(2, 3), 1.5), {"method": "sort"})
    other_method = bad_inputs._signatures_of_call((torch.ones(2, 3), 1.5), {"method": "newton"})
    other_shape = bad_inputs._signatures_of_call((torch.ones(4, 5), 2.0), {"method": "sort"})
    other_flag = bad_inputs._signatures_of_call((torch.ones(2, 3), 1.5),
                                                {"method": "sort", "exact": True})
    assert other_method[0] != path and other_flag[0] != path
    assert other_shape[0] == path and other_shape[1] != shape
