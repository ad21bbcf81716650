"""tools/turn_knobs.py: which variants it makes (running them is `make knobs`, not CI)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import turn_knobs  # noqa: E402

CELL = 'STEPS = 200      # try 50\nLR, SEED = 0.1, 3\nNAME = "adam"\nON = True\n\nx = STEPS * LR\n'


def test_zeros_sets_each_number_knob_to_zero_and_leaves_the_rest():
    made = {(v.knob, v.value): v.source for v in turn_knobs.zeros(CELL)}
    assert set(made) == {("STEPS", "0"), ("LR", "0.0")}   # not the seed, the string, the bool
    assert made["STEPS", "0"].startswith("STEPS = 0      # try 50\n")
    assert "LR, SEED = 0.0, 3\n" in made["LR", "0.0"]


def test_the_usual_variants_halve_double_and_follow_the_comment():
    values = {(v.knob, v.value) for v in turn_knobs.variants(CELL)}
    assert {("STEPS", "50"), ("STEPS", "100"), ("STEPS", "400"), ("LR", "0.05"),
            ("SEED", "4"), ("ON", "False")} <= values


def test_a_mistyped_option_is_refused_not_ignored(capsys):
    nb = "notebooks/01-logsumexp-inequalities.ipynb"
    assert turn_knobs.main(["--zero", nb]) == 2          # would have run the usual variants
    assert "not understood: --zero" in capsys.readouterr().out
    assert turn_knobs.main(["--help"]) == 0
    assert turn_knobs.main([]) == 2
