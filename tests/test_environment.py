"""The conda environments (the readers' and Binder's) and pyproject.toml list the same packages,
and importing dlmath stays cheap (scipy, sympy and matplotlib are imported lazily)."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def reader_requirements() -> set[str]:
    """Runtime, book and lab requirements of pyproject.toml, without dlmath's own extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("book", "lab"):
        reqs += project["optional-dependencies"][extra]
    return {r.replace(" ", "") for r in reqs if not r.startswith("dlmath")}


def pip_section(path: str) -> list[str]:
    env = yaml.safe_load((ROOT / path).read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def conda_requirements(path: str = "environment.yml") -> set[str]:
    """The packages of an environment file's pip section (options and ``-e`` lines left out)."""
    return {r.replace(" ", "") for r in pip_section(path) if not r.startswith("-")}


@pytest.mark.parametrize("path", ["environment.yml", "binder/environment.yml"])
def test_environment_yml_matches_pyproject(path):
    ours, conda = reader_requirements(), conda_requirements(path)
    assert conda == ours, (f"only in pyproject.toml: {sorted(ours - conda)}; "
                           f"only in {path}: {sorted(conda - ours)}")


def test_binder_takes_the_cpu_torch_and_installs_dlmath_after():
    # Binder has no GPU: PyPI's Linux torch would pull gigabytes of CUDA libraries. The
    # environment is built before the repository is copied in, so dlmath comes in postBuild.
    pip = pip_section("binder/environment.yml")
    assert "--index-url https://download.pytorch.org/whl/cpu" in pip
    assert "--extra-index-url https://pypi.org/simple" in pip
    assert not any(r.startswith("-e") for r in pip)
    post = ROOT / "binder" / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    assert "pip install --no-deps -e ." in post.read_text()


def test_environment_yml_pins_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_import_dlmath_is_cheap():
    code = ("import sys, dlmath, dlmath.optim; "
            "heavy = [m for m in ('scipy', 'sympy', 'matplotlib') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import dlmath pulled in: {out.stdout.strip()}"
