"""The performance appendix's goal evaluation (tools/perf.py) and the committed goals file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import perf  # noqa: E402

RESULTS = {"box": {"machine": {"cpu": "x"}, "benchmarks": {"b": {"date": "d", "cases": [{
    "name": "case", "anchor": "ref",
    "candidates": {"ref": {"median_ratio": 1.0, "ratio_iqr": [1, 1]},
                   "fast": {"median_ratio": 0.4, "ratio_iqr": [0.3, 0.5]}},
    "notes": {"err": {"ours": 0.06, "theirs": 0.1}}}]}}}}


def goal(**kw):
    return {"goal": "g", "machine": "box", "benchmark": "b", "case": "case", **kw}


def test_candidate_ratio_goals():
    assert perf.evaluate(goal(candidate="fast", at_most=0.5), RESULTS) == (0.4, "met")
    assert perf.evaluate(goal(candidate="fast", at_most=0.3), RESULTS) == (0.4, "missed")
    assert perf.evaluate(goal(candidate="fast", at_least=0.5), RESULTS) == (0.4, "missed")
    # against another candidate: a ratio of medians
    assert perf.evaluate(goal(candidate="ref", relative_to="fast", at_most=2), RESULTS) == \
        (2.5, "missed")
    assert perf.evaluate(goal(candidate="fast", relative_to="nope", at_most=2),
                         RESULTS) == (None, "not measured")


def test_note_goals_and_ratios_of_notes():
    value, status = perf.evaluate(goal(note=["err", "ours"], divide_by=["err", "theirs"],
                                       at_most=0.65), RESULTS)
    assert value == pytest.approx(0.6) and status == "met"
    assert perf.evaluate(goal(note=["err", "ours"], at_most=0.01), RESULTS)[1] == "missed"


@pytest.mark.parametrize("change", [{"machine": "other"}, {"benchmark": "c"}, {"case": "x"},
                                    {"candidate": "slow"}, {"note": ["err", "none"]}])
def test_missing_results_are_not_measured(change):
    g = goal(candidate="fast", at_most=1.0)
    if "note" in change:
        del g["candidate"]
    g.update(change)
    assert perf.evaluate(g, RESULTS) == (None, "not measured")


def test_committed_goals_all_refer_to_committed_results():
    # a renamed case or candidate would silently turn a goal into "not measured"
    goals = yaml.safe_load((ROOT / "benchmarks" / "goals.yml").read_text())
    results = perf.load_results(ROOT / "benchmarks" / "results")
    assert goals
    for g in goals:
        assert {"goal", "machine", "benchmark", "case"} <= set(g), g
        assert ("candidate" in g) != ("note" in g), g
        assert "at_most" in g or "at_least" in g, g
        assert perf.evaluate(g, results)[1] != "not measured", g["goal"]


def test_chart_is_inline_svg():
    svg = perf.ratio_chart(RESULTS["box"]["benchmarks"]["b"], "t")
    assert svg.startswith("<svg") and "fast" in svg
