"""The conda environment and pyproject.toml list the same packages, and importing dlmath
stays cheap (scipy, sympy and matplotlib are imported lazily)."""

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def reader_requirements() -> set[str]:
    """Runtime, book and lab requirements of pyproject.toml, without dlmath's own extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("book", "lab"):
        reqs += project["optional-dependencies"][extra]
    return {r.replace(" ", "") for r in reqs if not r.startswith("dlmath")}


def conda_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {r.replace(" ", "") for r in pip if not r.startswith("-e")}


def test_environment_yml_matches_pyproject():
    ours, conda = reader_requirements(), conda_requirements()
    assert conda == ours, (f"only in pyproject.toml: {sorted(ours - conda)}; "
                           f"only in environment.yml: {sorted(conda - ours)}")


def test_environment_yml_pins_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_import_dlmath_is_cheap():
    code = ("import sys, dlmath, dlmath.optim; "
            "heavy = [m for m in ('scipy', 'sympy', 'matplotlib') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import dlmath pulled in: {out.stdout.strip()}"
