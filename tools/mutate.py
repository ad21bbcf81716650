"""Mutation testing of one library module with cosmic-ray (``make mutate MODULE=…``; not CI).

A mutant is the module with one small change: ``+`` for ``-``, ``*`` for ``/``, ``<`` for
``<=`` or ``>``, ``==`` for ``!=``, a constant moved by one, ``True`` for ``False``, ``and`` for
``or``, a removed ``not`` or unary minus, a loop that runs zero times. A mutant the tests
still pass on *survived*: either it computes the same thing (an *equivalent* mutant; say why)
or the tests miss a behaviour (a *gap*: write a test of the documented behaviour, with the
expected value computed independently, and rerun with ``recheck``).

    python tools/mutate.py run src/dlmath/lse.py [--tests tests/test_lse.py ...]
    python tools/mutate.py survivors src/dlmath/lse.py    # each survivor's diff (any time)
    python tools/mutate.py recheck src/dlmath/lse.py [--tests ...] [-k EXPR]  # vs the tests now

Work happens in ``_build/mutation/<module>/``: a clone of HEAD with this tree's ``src/`` and
``tests/`` copied over by ``run`` and ``recheck`` (so uncommitted tests count; so do not start
one while another runs on the same module) except the module itself, kept as the session found
it (mutants are numbered in it), and cosmic-ray's session database; ``run`` resumes an
interrupted session. The default tests are ``tests/test_<module>*.py``. The
operators are a subset of cosmic-ray's (the rest mostly make mutants no code could tell apart,
such as ``+`` for ``|`` on floats, or ``+x`` for ``-x``, the same as ``x``). Mutants inside
argument checks are skipped: a ``raise``, the test of an ``if`` whose body only raises, a
``check_*``/``as_float_tensor`` call, a ``warnings.warn`` call; so are those in a
``dim=``/``keepdim=`` argument (a wrong axis is a wrong shape on the batched inputs the tests
use, and they were a third of the mutants) and in a decorator (``lru_cache(maxsize=...)``).
Each test run uses one thread: run two modules side by side on two cores. ``run`` first times
the tests on the unmutated module; a mutant whose tests take ten times as long (at least 30 s)
is stopped and counts as killed (with the fixed 300 s per mutant used before, the recurrence
run sat for over ten minutes on looping mutants).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

BINARY = {("Add", "Sub"), ("Sub", "Add"), ("Mul", "Div"), ("Div", "Mul")}
COMPARE = {("Lt", "LtE"), ("LtE", "Lt"), ("Gt", "GtE"), ("GtE", "Gt"), ("Lt", "Gt"), ("Gt", "Lt"),
           ("LtE", "GtE"), ("GtE", "LtE"), ("Eq", "NotEq"), ("NotEq", "Eq"), ("Is", "IsNot"),
           ("IsNot", "Is"), ("In", "NotIn"), ("NotIn", "In")}
UNARY = {("Delete", "USub"), ("Delete", "Not"), ("Delete", "Invert")}
DROPPED = {"VariableInserter", "VariableReplacer", "ExceptionReplacer", "RemoveDecorator"}
CHECK_CALL = re.compile(r"^(check_\w+|as_float_tensor|warn)$")
AXIS_KEYWORDS = {"dim", "keepdim"}
# Plugins the library's tests do not use; off, pytest starts in half the time.
PLUGINS_OFF = "-p no:nbval -p no:xdist -p no:xdist.looponfail -p no:anyio"


def excluded_operators() -> list[str]:
    """cosmic-ray operators outside the subset above, as anchored regexes for its filter."""
    names = subprocess.run([BIN / "cosmic-ray", "operators"], capture_output=True, text=True,
                           check=True).stdout.split()
    out = []
    for name in names:
        kind, _, rest = name.removeprefix("core/").partition("_")
        pair = tuple(rest.split("_")) if rest else None
        keep = {"ReplaceBinaryOperator": BINARY, "ReplaceComparisonOperator": COMPARE,
                "ReplaceUnaryOperator": UNARY}.get(kind)
        if kind in DROPPED or (keep is not None and pair not in keep):
            out.append(re.escape(name) + "$")
    return out


def skipped_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions, as (line, character column), of the code not to mutate."""
    lines = source.splitlines()

    def pos(line, byte_col):  # ast counts UTF-8 bytes, cosmic-ray (parso) characters
        return line, len(lines[line - 1].encode()[:byte_col].decode())

    def span(node):
        return pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)

    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise):
            spans.append(span(node))
        elif isinstance(node, ast.If) and all(isinstance(s, ast.Raise) for s in node.body):
            spans.append(span(node.test))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if CHECK_CALL.match(name):
                spans.append(span(node))
        elif isinstance(node, ast.keyword) and node.arg in AXIS_KEYWORDS:
            spans.append(span(node.value))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # decorators (an lru_cache's maxsize changes the speed, never a result)
            spans += [span(d) for d in node.decorator_list]
            # the bare * and / of a signature, which cosmic-ray takes for operators
            start = pos(node.lineno, node.col_offset)
            spans += [((line, col), (line, col + 1)) for line, col in _markers(lines, start,
                                                                                 node.body[0])]
    return spans


def _markers(lines: list[str], start: tuple[int, int], first: ast.stmt):
    """Positions of a bare ``*`` or ``/`` parameter in the header from ``start`` to ``first``."""
    for line in range(start[0], first.lineno):
        for m in re.finditer(r"(?:^|[(,])\s*([*/])\s*(?=[,)])", lines[line - 1]):
            yield line, m.start(1)


def skip_unmutated(session: Path, module: Path) -> int:
    """Mark the mutants inside :func:`skipped_spans` as skipped; returns how many."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = skipped_spans(module.read_text())
    skipped = 0
    with use_db(str(session)) as db:
        for item in db.work_items:
            m = item.mutations[0]
            start, end = tuple(m.start_pos), tuple(m.end_pos)
            if any(a <= start and end <= b for a, b in spans):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                      output="argument check or axis"))
                skipped += 1
    return skipped


def workdir(module: Path) -> Path:
    return ROOT / "_build" / "mutation" / module.stem


def prepare(module: Path, tests: list[str], refresh: bool) -> tuple[Path, Path, str]:
    """The clone (``refresh``: with this tree's src/ and tests/), the session, the test command."""
    work = workdir(module)
    repo = work / "repo"
    if not repo.exists():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    for part in ("src", "tests") if refresh else ():
        shutil.copytree(ROOT / part, repo / part, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # the mutants are numbered in the module as the session found it: keep that version
    snapshot = work / "module.py"
    if refresh and snapshot.exists():
        if snapshot.read_bytes() != (ROOT / module).read_bytes():
            print(f"note: {module} changed since this session began; the mutants are of the "
                  f"version it began with ({snapshot}); remove {work} to start over")
        shutil.copy(snapshot, repo / module)
    elif refresh:
        shutil.copy(repo / module, snapshot)
    command = (f"env PYTHONPATH=src OMP_NUM_THREADS=1 {BIN / 'python'} -m pytest -x -q "
               f"-p no:cacheprovider {PLUGINS_OFF} {' '.join(tests)}")
    return repo, work / "session.sqlite", command


def baseline_seconds(repo: Path, command: str) -> float:
    """Wall time of one run of the tests on the unmutated module (which must pass)."""
    start = time.perf_counter()
    run = subprocess.run(shlex.split(command), cwd=repo, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"the tests fail on the unmutated module:\n{run.stdout[-2000:]}")
    return time.perf_counter() - start


def write_config(path: Path, module: Path, command: str, timeout: float) -> None:
    excluded = "".join(f"  {json.dumps(e)},\n" for e in excluded_operators())
    path.write_text(f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout:.0f}.0\n'
                    f'excluded-modules = []\ntest-command = {json.dumps(command)}\n\n'
                    '[cosmic-ray.distributor]\nname = "local"\n\n'
                    f'[cosmic-ray.filters.operators-filter]\nexclude-operators = [\n{excluded}]\n')


def results(session: Path):
    out = subprocess.run([BIN / "cosmic-ray", "dump", str(session)], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        item, result = json.loads(line)
        yield item["mutations"][0], result


def survivors(session: Path):
    return [(m, r) for m, r in results(session)
            if r and r.get("worker_outcome") == "normal" and r.get("test_outcome") == "survived"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("run", "survivors", "recheck"))
    parser.add_argument("module", type=Path, help="e.g. src/dlmath/lse.py")
    parser.add_argument("--tests", nargs="+", help="test files (default tests/test_<module>*.py)")
    parser.add_argument("-k", dest="keyword", help="recheck: only the tests pytest -k selects")
    args = parser.parse_args(argv)
    module = args.module.resolve().relative_to(ROOT)
    if module.suffix != ".py" or not (ROOT / module).is_file():
        parser.error(f"module must be a .py file of this repository, got {args.module}")
    tests = args.tests or sorted(str(p.relative_to(ROOT))
                                 for p in (ROOT / "tests").glob(f"test_{module.stem}*.py"))
    if not tests and args.action != "survivors":   # listing survivors runs no tests
        parser.error(f"no tests/test_{module.stem}*.py: name the test files with --tests")
    if args.keyword and args.action != "recheck":
        parser.error("-k goes with recheck only (run mutates against the whole test files)")
    repo, session, command = prepare(module, tests, refresh=args.action != "survivors")
    if args.keyword:
        command += f" -k {shlex.quote(args.keyword)}"
    cr = str(BIN / "cosmic-ray")

    if args.action == "run":
        # a mutant that loops forever (or for far longer than the tests take) counts as
        # killed after ten times the unmutated run, not cosmic-ray's fixed minutes
        config = session.with_suffix(".toml")
        base = baseline_seconds(repo, command)
        timeout = max(30.0, 10 * base)
        print(f"unmutated tests: {base:.1f} s; timeout per mutant {timeout:.0f} s")
        write_config(config, module, command, timeout)
        if not session.exists() or session.stat().st_size == 0:   # (an empty file: no session)
            subprocess.run([cr, "init", str(config), str(session)], cwd=repo, check=True)
            subprocess.run([str(BIN / "cr-filter-operators"), str(session), str(config)],
                           cwd=repo, check=True)
            print(f"{skip_unmutated(session, repo / module)} mutants inside argument checks "
                  "or dim= arguments skipped")
        subprocess.run([cr, "exec", str(session.with_suffix(".toml")), str(session)], cwd=repo,
                       check=True)
    counts: dict[str, int] = {}
    for _, r in results(session):
        key = "pending" if not r else r.get("test_outcome") or r["worker_outcome"]
        counts[key] = counts.get(key, 0) + 1
    print(f"{module}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))

    if args.action == "survivors":
        for m, r in survivors(session):
            print(f"\n## {m['operator_name']} #{m['occurrence']} at line {m['start_pos'][0]} "
                  f"({m['definition_name']})\n" + "".join(r["diff"]).rstrip())
    elif args.action == "recheck":
        # a mutant counts as killed when a test fails: first the tests must pass unmutated
        if subprocess.run(shlex.split(command), cwd=repo, capture_output=True).returncode:
            print(f"the tests fail on {module} as the session found it (tests of a change made "
                  "since?): leave them out with -k, e.g. -k 'not test_new_behaviour'")
            return 1
        alive = 0
        for m, _ in survivors(session):
            run = subprocess.run([cr, "mutate-and-test", m["module_path"], m["operator_name"],
                                  str(m["occurrence"]), command], cwd=repo, capture_output=True,
                                 text=True)
            result = json.loads(run.stdout)
            outcome = result["test_outcome"] or result["worker_outcome"]
            alive += outcome == "survived"
            print(f"{outcome:9} {m['operator_name']} #{m['occurrence']} line "
                  f"{m['start_pos'][0]} ({m['definition_name']})")
        print(f"{alive} still survive the tests {' '.join(tests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
