"""Turn each chapter's Experiment knobs, as a reader in JupyterLab would, and run the rest.

A chapter's Experiment section starts with a code cell whose first lines set the parameters a
reader is invited to change. This tool reads those lines (simple assignments ``NAME = value`` and
``A, B = 1, 2``, and ``device.pick(cpu=value, gpu=...)``) and, for each knob, tries

- the values its comment suggests (``# try 8, 128``, ``# "adam" or "sgd"``, ``# 1 ... 8``);
- half and twice a number, the other value of a boolean, and seed + 1 and + 2 for a seed.

Each variant runs the chapter from the Experiment cell to the end, with that one knob changed (the
cells before it run once; each variant runs in a forked copy of that state). One more runs the
whole chapter and then the unchanged Experiment cell again, as a reader does who scrolls back
after Run All: it must print the same (a later cell that reuses one of its names breaks this).

What should happen: the chapter runs, every check that holds in general still holds, a number
quoted from the named knob values is guarded by them, and a value outside a check's domain is
refused with a message. Anything else (an IndexError, a NaN, an assert about the quoted run) is
a finding.

    OMP_NUM_THREADS=1 python tools/turn_knobs.py notebooks/NN-slug.ipynb [...] [--json out.jsonl]
    python tools/turn_knobs.py --list notebooks/*.ipynb   # show the knobs and variants only
    python tools/turn_knobs.py --zeros notebooks/*.ipynb  # only: every number knob set to 0

Not part of CI (about 430 variants, six minutes on one core). Each line says ``ok``, ``no``
(refused: a ``ValueError`` or ``TypeError`` from dlmath's validation, or an assert with a
message; the right answer for a value outside the domain, but read the message) or ``FAIL``
(anything else). Exit status 1 if any variant failed.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import linecache
import os
import re
import signal
import sys
import time
import tokenize
import traceback
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 180
RERUN = "(run again)"   # the unchanged Experiment cell run a second time after Run All


class ChangedOnRerun(Exception):
    """The Experiment cell printed something else when run again after the whole chapter."""


@dataclass
class Variant:
    knob: str
    value: str    # source text of the new value
    source: str   # the Experiment cell with that value spliced in


def experiment_cell(cells: list[dict]) -> tuple[int, str]:
    """The first code cell after the ``## Experiment`` heading, and the prose between them."""
    for i, cell in enumerate(cells):
        text = "".join(cell["source"])
        heading = re.search(r"^## Experiment\b", text, re.M)
        if cell["cell_type"] == "markdown" and heading:
            j = next(j for j in range(i + 1, len(cells)) if cells[j]["cell_type"] == "code")
            between = "".join("".join(cells[m]["source"]) for m in range(i + 1, j))
            prose = text[heading.start():] + between
            return j, prose
    raise ValueError("no '## Experiment' section")


def comments(source: str) -> dict[int, str]:
    """Line number -> the comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def suggested(comment: str, is_string: bool) -> list[str]:
    """Values a comment suggests, as source text: quoted strings, or the list after 'try'."""
    if is_string:
        return [repr(s) for s in re.findall(r'"([^"]*)"', comment)]
    m = (re.search(r"\btry\b(.*)", comment)
         or re.search(r"(-?[\d.]+(?:e-?\d+)?\s*\.\.\.\s*.*)", comment))   # "1 ... 8"
    if not m:
        return []
    text = m.group(1).split(";")[0]
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    out = []
    for piece in pieces:
        for part in re.split(r"\s+(?:and|or)\s+|\s*\.\.\.\s*", piece):
            part = re.sub(r"\s*\([A-Za-z ]+\)$", "", part.strip()).rstrip(".:)").strip()
            if part.count("(") > part.count(")"):
                part += ")"
            try:
                ast.parse(part, mode="eval")
            except SyntaxError:
                continue
            if part and not re.fullmatch(r"[A-Za-z_]+", part):   # a bare word is prose
                out.append(part)
    return out


def generic(name: str, node: ast.expr) -> list[str]:
    """Half and twice a number (or every number of a list), the other boolean, two more seeds."""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return []
    if isinstance(value, bool):
        return [repr(not value)]
    if isinstance(value, int):
        if "seed" in name.lower():
            return [repr(value + 1), repr(value + 2)]
        return [repr(v) for v in (value // 2, 2 * value) if v >= 1 and v != value]
    if isinstance(value, float) and value != 0:
        return [repr(value / 2), repr(2 * value)]
    numbers = isinstance(value, list | tuple) and value and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if numbers:   # every entry halved, then doubled (an integer stays >= 1)
        half = [max(1, v // 2) if isinstance(v, int) else v / 2 for v in value]
        return [repr(type(value)(half)), repr(type(value)(2 * v for v in value))]
    return []


def knobs(source: str) -> list[tuple[str, ast.expr, int]]:
    """(name, value node, line) of the assignments at the top of a cell, up to its first blank
    line (the block a chapter offers; later assignments belong to the code)."""
    lines, out = source.splitlines(), []
    first_blank = next((i + 1 for i, line in enumerate(lines) if not line.strip()), len(lines) + 1)
    for stmt in ast.parse(source).body:
        if (not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1
                or stmt.lineno > first_blank):
            break
        target, value = stmt.targets[0], stmt.value
        if isinstance(target, ast.Name):
            pairs = [(target, value)]
        elif (isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
              and len(target.elts) == len(value.elts)):
            pairs = list(zip(target.elts, value.elts, strict=True))
        else:
            break
        for t, v in pairs:
            if not isinstance(t, ast.Name):
                continue
            if isinstance(v, ast.Call) and ast.unparse(v.func) == "device.pick":
                cpu = [k.value for k in v.keywords if k.arg == "cpu"]
                if cpu:
                    out.append((t.id, cpu[0], stmt.lineno))
                continue
            out.append((t.id, v, stmt.lineno))
    return out


def splice(source: str, node: ast.expr, text: str) -> str:
    """``source`` with ``node``'s text replaced (ast offsets count UTF-8 bytes)."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    data = source.encode()
    a = offsets[node.lineno - 1] + node.col_offset
    b = offsets[node.end_lineno - 1] + node.end_col_offset
    return (data[:a] + text.encode() + data[b:]).decode()


def from_text(text: str, names: set[str]) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """What the Experiment's prose invites: `NAME` (try 1, 10 and 100), `A = 1, B = 2`,
    `A, B = 1, 2` and `NAME` to `value`."""
    values: dict[str, list[str]] = {}
    for name, tries in re.findall(r"`(\w+)`\s*\(try ([^)]*)\)", text):
        if name in names:
            values.setdefault(name, []).extend(suggested("try " + tries, False))
    settings = []
    for snippet in re.findall(r"`([A-Za-z_][\w, ]*=[^`]+)`", text):
        try:   # `A, B = 1, 2`
            stmt = ast.parse(snippet).body[0]
            pairs = [(t.id, ast.get_source_segment(snippet, v)) for t, v in
                     zip(stmt.targets[0].elts, stmt.value.elts, strict=True)]
        except (SyntaxError, AttributeError, IndexError, ValueError):   # `A = 1, B = 2`
            pieces = re.split(r",\s*(?=[A-Za-z_]\w*\s*=)", snippet)
            pairs = [(n.strip(), v) for n, v in (p.split("=", 1) for p in pieces)]
        if pairs and all(name in names for name, _ in pairs):
            settings.append({name: value.strip() for name, value in pairs})
    for name, value in re.findall(r"`(\w+)` to `([^`]+)`", text):   # set `A` to `B // 2`
        if name in names:
            settings.append({name: value})
    return values, settings


def same_value(a: str, b: str) -> bool:
    """Whether two source texts are the same literal ("x" and 'x', 2.0 and 2.)."""
    try:
        return ast.literal_eval(a) == ast.literal_eval(b)
    except (ValueError, SyntaxError):
        return a == b


def zeros(source: str) -> list[Variant]:
    """Every number knob (not a seed, not a boolean) set to 0: a value readers type to switch a
    term off, and one that halving never reaches."""
    out = []
    for name, node, _ in knobs(source):
        try:
            value = ast.literal_eval(node)
        except ValueError:
            continue
        if (isinstance(value, int | float) and not isinstance(value, bool) and value != 0
                and "seed" not in name.lower()):
            zero = "0" if isinstance(value, int) else "0.0"
            out.append(Variant(name, zero, splice(source, node, zero)))
    return out


def variants(source: str, text: str = "") -> list[Variant]:
    """One knob changed at a time (suggested, then generic values), then the prose's settings."""
    notes, out, top = comments(source), [], knobs(source)
    found = {name: node for name, node, _ in top}
    invited, settings = from_text(text, set(found))
    for name, node, line in top:
        is_string = isinstance(node, ast.Constant) and isinstance(node.value, str)
        current = ast.get_source_segment(source, node)
        values = (invited.get(name, []) + suggested(notes.get(line, ""), is_string)
                  + generic(name, node))
        for value in dict.fromkeys(values):
            if not same_value(value, current):
                out.append(Variant(name, value, splice(source, node, value)))
    tried = {(v.knob, v.value) for v in out}
    for setting in settings:
        if len(setting) == 1:   # one knob: skip its current value and values already tried
            (name, value), = setting.items()
            current = ast.get_source_segment(source, found[name])
            if same_value(value, current) or any(same_value(value, v) for k, v in tried
                                                 if k == name):
                continue
        changed = source
        last_first = sorted(setting, key=lambda n: (found[n].lineno, found[n].col_offset),
                            reverse=True)   # so that the earlier nodes' offsets still hold
        for name in last_first:
            changed = splice(changed, found[name], setting[name])
        out.append(Variant(", ".join(setting), ", ".join(setting.values()), changed))
    return out + [Variant(RERUN, "after Run All", source)]


def run_cell(source: str, name: str, namespace: dict) -> None:
    """Execute one cell; its lines go to linecache so that a traceback can quote them."""
    linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    exec(compile(source, name, "exec"), namespace)
    import matplotlib.pyplot as plt
    plt.close("all")


def run_variant(cells: list[dict], start: int, variant: Variant, namespace: dict,
                path: str) -> dict:
    """Fork, run the changed Experiment cell and every later code cell, report how it ended."""
    read, write = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        signal.alarm(TIMEOUT_S)
        result = {"status": "ok"}
        try:
            printed = []
            for i in range(start, len(cells)):
                if cells[i]["cell_type"] != "code":
                    continue
                source = variant.source if i == start else "".join(cells[i]["source"])
                with contextlib.redirect_stdout(io.StringIO()) as out:
                    run_cell(source, f"{path}:cell{i}", namespace)
                printed.append(out.getvalue())
            if variant.knob == RERUN:   # the Experiment cell once more, after the whole chapter
                with contextlib.redirect_stdout(io.StringIO()) as out:
                    run_cell(variant.source, f"{path}:cell{start}", namespace)
                again = out.getvalue().splitlines()
                first = printed[0].splitlines()
                pairs = zip(first, again, strict=False)
                diff = next((f"{a!r} became {b!r}" for a, b in pairs if a != b),
                            None if len(first) == len(again) else "a different number of lines")
                if diff is not None:
                    raise ChangedOnRerun(f"run again after the whole chapter, it prints: {diff}")
        except BaseException as exc:  # noqa: BLE001  the report is the point
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if ":cell" in f.filename]
            where = frames[-1] if frames else None
            inside = traceback.extract_tb(exc.__traceback__)[-1].filename
            result = {"status": type(exc).__name__, "error": str(exc).strip().splitlines()[:1],
                      "where": f"{where.filename.split(':')[-1]} line {where.lineno}: "
                               f"{(where.line or '').strip()}" if where else "",
                      "inside": inside}
            # a refusal: the library's validation, or an assert that explains itself
            if (isinstance(exc, ValueError | TypeError) and "dlmath" in Path(inside).parts
                    or isinstance(exc, AssertionError) and str(exc)):
                result["status"] = f"refused ({type(exc).__name__})"
        with os.fdopen(write, "w") as f:
            json.dump(result, f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(text) if text else {"status": f"killed (wait status {status})"}
    seconds = round(time.perf_counter() - t0, 1)
    result.update(knob=variant.knob, value=variant.value, seconds=seconds)
    return result


def main(argv: list[str]) -> int:
    out_path = argv[argv.index("--json") + 1] if "--json" in argv[:-1] else None
    paths = [a for a in argv if a.endswith(".ipynb")]
    unknown = [a for a in argv
               if a not in ("--list", "--zeros", "--json", "-h", "--help", out_path, *paths)]
    if not paths or unknown:
        print(__doc__.split("\n\n")[0].strip())
        print("\n" + "\n".join(line for line in __doc__.splitlines() if "turn_knobs.py" in line))
        if unknown:
            print(f"\nnot understood: {' '.join(unknown)}")
        return 0 if argv in (["-h"], ["--help"]) else 2
    list_only = "--list" in argv
    failures = 0
    for path in paths:
        cells = json.load(open(path))["cells"]
        try:
            start, prose = experiment_cell(cells)
        except ValueError as exc:
            print(f"{Path(path).name}: {exc}")
            continue
        source = "".join(cells[start]["source"])
        found = zeros(source) if "--zeros" in argv else variants(source, prose)
        if list_only:
            print(f"{Path(path).name}: " + "; ".join(f"{v.knob}={v.value}" for v in found))
            continue
        import matplotlib
        matplotlib.use("Agg")
        namespace = {"__name__": "__main__"}
        with contextlib.redirect_stdout(io.StringIO()):   # the cells before the Experiment
            for i in range(start):
                if cells[i]["cell_type"] == "code":
                    run_cell("".join(cells[i]["source"]), f"{path}:cell{i}", namespace)
        for variant in found:
            result = run_variant(cells, start, variant, namespace, path)
            result["notebook"] = Path(path).name
            status = result["status"]
            mark = "ok  " if status == "ok" else "no  " if status.startswith("refused") else "FAIL"
            failures += mark == "FAIL"
            print(f"{mark} {result['seconds']:6.1f} s {Path(path).name[:2]} {variant.knob} = "
                  f"{variant.value}" + ("" if status == "ok" else
                                        f"\n      {status}: {result.get('error')} at "
                                        f"{result.get('where')}"), flush=True)
            if out_path:
                with open(out_path, "a") as f:
                    f.write(json.dumps(result) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
