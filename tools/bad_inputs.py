"""Call every public dlmath function with one argument spoiled, and sort what happens.

The house rule: bad input raises a ``ValueError``/``TypeError`` naming the argument, and numerical
edge cases have a defined behaviour. This tool tests the rule where nobody wrote a test yet::

    python tools/bad_inputs.py            # record, then replay (about a minute on one core)
    python tools/bad_inputs.py --replay   # replay the last recording only
    python tools/bad_inputs.py --replay dlmath.moe dlmath.lse   # some modules only

1. *Record*: the test suite runs with every public function of ``dlmath`` wrapped (as a pytest
   plugin, this module itself); per function, successful top-level calls with small arguments
   that take up to eight code paths (types, dimensions, dtypes, keywords, the values of strings
   and flags), and other shapes until there are eight calls, are saved to
   ``_build/bad_inputs/calls.pt``.
2. *Replay*: each saved call is repeated with one argument replaced by a bad value: a tensor with
   a NaN or an inf entry, all zeros, times 1e30, an integer dtype, the other float precision
   (float32 for float64 and back: a reader mixing the two), float16, bfloat16, empty, 0-d, one
   dimension more or less, a batch of two copies; for numbers NaN, inf, 0, a negative one,
   ``None``, a float where an int was; a bogus string. Each spoil is tried once per code path
   (the strings and flags a call passes), on the first call of that path. Each outcome is one of

   ``named``      a ``ValueError``/``TypeError`` whose message names the argument: the rule;
   ``other-arg``  a dlmath error naming another argument (fine when that one is at fault:
                  "target must have shape (1, 20)" after the logits gained a dimension);
   ``callee``     the caller's own function (a field, a loss, an expert) raised: not dlmath's;
   ``RAW``        any other exception (IndexError, a RuntimeError from inside torch, ...);
   ``HANG``       no answer within 15 s;
   ``non-finite`` returned inf/NaN where the valid call was finite (fine for NaN in, NaN out);
   ``returned``   accepted (fine for most: zeros, a larger batch, a learning rate of 0).

   The replay prints the counts, then every ``RAW``, ``HANG``, ``other-arg`` and ``non-finite``
   line with its message. Exit status 1 if any ``RAW`` or ``HANG`` is left.

Part of ``make test`` (``make bad-inputs``); run it after adding or changing a public function.
The functions the test suite never calls with small arguments are listed at the end: check
those by hand.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import io
import json
import math
import os
import pkgutil
import signal
import subprocess
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "_build" / "bad_inputs"
CALLS = OUT / "calls.pt"
SKIP_MODULES = {"dlmath._checks", "dlmath.plotting", "dlmath.device", "dlmath.optim._fused"}
PER_FUNCTION = 8
MAX_ELEMENTS = 20_000
TIMEOUT_S = 15


def public_functions():
    """{(owner module, name): function} for every public function of every dlmath module."""
    import dlmath

    found = {}
    for info in pkgutil.walk_packages(dlmath.__path__, "dlmath."):
        if info.name in SKIP_MODULES:
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            f = getattr(module, name, None)
            if inspect.isfunction(f) and f.__module__ == info.name:
                found[info.name, name] = f
    return found


# -- recording: this module as a pytest plugin ----------------------------------------------------

_records: dict[str, list] = {}
_depth = [0]


def _small(v) -> bool:
    import torch

    if isinstance(v, torch.Tensor):
        return v.numel() <= MAX_ELEMENTS
    if isinstance(v, (list, tuple)):
        return len(v) < 200 and all(_small(e) for e in v)
    if isinstance(v, dict):
        return all(_small(e) for e in v.values())
    return True


def _signatures_of_call(args, kwargs) -> tuple[str, str]:
    """(path, shape) signatures of a call. The path: argument types, tensor dimensions and
    dtypes, keyword names, and the values of string and bool arguments (a ``method`` or a flag
    picks another code path); the shape signature adds the tensors' shapes."""
    import torch

    def kind(a, shape):
        if isinstance(a, torch.Tensor):
            return "Tensor", tuple(a.shape) if shape else a.ndim, str(a.dtype)
        return type(a).__name__, a if isinstance(a, (str, bool)) else None

    return tuple(repr([kind(a, shape) for a in args])
                 + repr(sorted((k, kind(v, shape)) for k, v in kwargs.items()))
                 for shape in (False, True))


def _recording(key: str, f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        calls = _records.setdefault(key, [])
        top = _depth[0] == 0 and len(calls) < 2 * PER_FUNCTION and _small(args) and \
            _small(kwargs)
        saved = None
        if top:
            try:
                saved = copy.deepcopy((args, kwargs))
            except Exception:  # an argument that cannot be copied: not recorded
                saved = None
        _depth[0] += 1
        try:
            result = f(*args, **kwargs)
        finally:
            _depth[0] -= 1
        if saved is not None:  # up to PER_FUNCTION code paths, and other shapes until as many
            path, shape = _signatures_of_call(*saved)
            paths, shapes = {c[0] for c in calls}, {c[1] for c in calls}
            if (path not in paths and len(paths) < PER_FUNCTION) or \
                    (shape not in shapes and len(calls) < PER_FUNCTION):
                calls.append((path, shape, saved))
        return result

    return wrapper


def pytest_configure(config):
    """Wrap every public function before the test modules import them."""
    for (owner, name), f in public_functions().items():
        w = _recording(f"{owner}.{name}", f)
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("dlmath") and \
                    getattr(module, name, None) is f:
                setattr(module, name, w)


def pytest_unconfigure(config):
    import torch

    keep = {}
    for key, calls in _records.items():
        for _, _, saved in calls:
            try:
                torch.save(saved, io.BytesIO())  # closures over test locals cannot be saved
            except Exception:
                continue
            keep.setdefault(key, []).append(saved)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(keep, CALLS)


def record() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "tools"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    skip = ["test_browser_check.py", "test_run_notebooks.py", "test_export_executed.py",
            "test_bad_inputs.py", "test_turn_knobs.py",
            "test_notebook_structure.py", "test_environment.py", "test_perf_goals.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "bad_inputs", "-p", "no:cacheprovider",
           str(ROOT / "tests"), *[f"--ignore={ROOT / 'tests' / s}" for s in skip]]
    print("recording the test suite's calls ...", flush=True)
    # a test that spies on a function it expects unwrapped may fail here: that does not matter
    subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


# -- replaying ------------------------------------------------------------------------------------

class _Timeout(Exception):
    pass


def _on_alarm(*_):
    raise _Timeout


def _spoiled_tensors(x):
    import torch

    if not x.is_floating_point() or x.numel() == 0:
        return
    for label, value in (("NaN entry", math.nan), ("inf entry", math.inf)):
        y = x.clone(memory_format=torch.contiguous_format)
        y.view(-1)[0] = value
        yield label, y
    yield "all zero", torch.zeros_like(x)
    yield "x 1e30", x * (1e4 if x.dtype == torch.float16 else 1e30)
    yield "int dtype", x.round().long()
    other = torch.float32 if x.dtype == torch.float64 else torch.float64
    yield str(other).removeprefix("torch."), x.to(other)
    for half in (torch.float16, torch.bfloat16):
        if x.dtype != half:
            yield str(half).removeprefix("torch."), x.to(half)
    if x.ndim >= 1:
        yield "empty", x[..., :0]
        yield "0-d", x.reshape(-1)[0].clone()
    yield "extra dim", x.unsqueeze(0)
    if x.ndim >= 1:
        yield "batch of 2", torch.stack([x, x])
    if x.ndim >= 2:
        yield "fewer dims", x.reshape(-1)


def spoiled(v):
    """(label, bad value) pairs for one argument's valid value ``v``."""
    import torch

    if isinstance(v, bool):
        return
    if isinstance(v, int):
        yield from (("0", 0), ("negative", -1 if v >= 0 else 3 * v), ("float", v + 0.5),
                    ("None", None))
    elif isinstance(v, float):
        yield from (("NaN", math.nan), ("inf", math.inf), ("0", 0.0),
                    ("negative", -abs(v) - 1.0), ("None", None))
    elif isinstance(v, str):
        yield "bogus string", "bogus"
    elif isinstance(v, torch.Tensor):
        yield from _spoiled_tensors(v)
    elif isinstance(v, (list, tuple)) and v and all(
            isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
        kind = list if isinstance(v, list) else tuple
        yield "empty sequence", kind()
        yield "NaN in sequence", kind([math.nan, *v[1:]])


def _non_finite(value, depth: int = 0) -> bool:
    import torch

    if isinstance(value, torch.Tensor):  # a meta tensor (shapes only) has no values to check
        return (value.is_floating_point() or value.is_complex()) and \
            value.device.type != "meta" and not bool(torch.isfinite(value).all())
    if isinstance(value, float):
        return not math.isfinite(value)
    if depth < 3 and isinstance(value, (list, tuple)):
        return any(_non_finite(e, depth + 1) for e in value)
    if depth < 3 and isinstance(value, dict):
        return any(_non_finite(e, depth + 1) for e in value.values())
    return False


def _call(f, args, kwargs):
    signal.alarm(TIMEOUT_S)
    try:
        return "returned", f(*args, **kwargs)
    except _Timeout:
        return "HANG", None
    except Exception as exc:  # noqa: BLE001 - sorting exceptions is the point
        return "raised", exc
    finally:
        signal.alarm(0)


def classify(exc: Exception, argument: str) -> str:
    """``named``, ``other-arg``, ``callee`` or ``RAW`` for an exception of a spoiled call."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]  # [0] is _call's own frame
    own = [fr for fr in frames if "/site-packages/" not in fr.filename or "/dlmath/" in fr.filename]
    if own and "/dlmath/" not in own[-1].filename:
        return "callee"  # raised in the caller's own function (a field, a loss), called by dlmath
    last = frames[-1] if frames else None
    raised_by_us = (last is not None and "/dlmath/" in last.filename
                    and (last.line or "").lstrip().startswith("raise"))
    if isinstance(exc, (ValueError, TypeError)) and raised_by_us:
        return "named" if argument in str(exc) else "other-arg"
    return "RAW"  # from inside torch, scipy or Python, not a message of ours


def replay(prefixes: list[str]) -> int:
    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _on_alarm)
    sys.path.insert(0, str(ROOT / "tests"))  # recorded closures may live in test modules
    calls = torch.load(CALLS, weights_only=False)
    functions = public_functions()
    lines, counts = [], Counter()
    for (owner, name), f in sorted(functions.items()):
        key = f"{owner}.{name}"
        if prefixes and not any(key.startswith(p) for p in prefixes):
            continue
        sig, tried = inspect.signature(f), set()
        for args, kwargs in calls.get(key, []):
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:
                continue
            # each spoil once per code path (the strings and flags passed), on the first call
            # that passes the argument
            path = tuple(sorted((k, v) for k, v in bound.arguments.items()
                                if isinstance(v, (str, bool))))
            status, valid = _call(f, *copy.deepcopy((bound.args, bound.kwargs)))
            if status != "returned":
                continue
            valid_non_finite = _non_finite(valid)
            for argument, value in list(bound.arguments.items()):
                if sig.parameters[argument].kind in (inspect.Parameter.VAR_POSITIONAL,
                                                     inspect.Parameter.VAR_KEYWORD):
                    continue
                for label, bad in spoiled(value):
                    if (argument, label, path) in tried:
                        continue
                    tried.add((argument, label, path))
                    b = sig.bind(*copy.deepcopy(bound.args), **copy.deepcopy(bound.kwargs))
                    b.arguments[argument] = bad
                    status, result = _call(f, b.args, b.kwargs)
                    message = ""
                    if status == "raised":
                        status = classify(result, argument)
                        message = f"{type(result).__name__}: {result}".splitlines()[0][:160]
                    elif status == "returned" and _non_finite(result) and not valid_non_finite:
                        status = "non-finite"
                    counts[status] += 1
                    if status in ("RAW", "HANG", "other-arg", "non-finite"):
                        lines.append(f"{status:10} {key[7:]}({argument}: {label}) {message}")
    print(json.dumps(dict(sorted(counts.items()))))
    print("\n".join(sorted(lines)))
    never = sorted(f"{o}.{n}"[7:] for o, n in functions if f"{o}.{n}" not in calls)
    if never and not prefixes:
        print(f"\nnot recorded (check by hand): {', '.join(never)}")
    return 1 if counts["RAW"] or counts["HANG"] else 0


def main(argv: list[str]) -> int:
    replay_only = argv[:1] == ["--replay"]
    prefixes = argv[1:] if replay_only else argv
    if any(not p.startswith("dlmath") for p in prefixes):
        print(__doc__.split("\n\n")[0].strip() + "\n\n" + "\n".join(
            line for line in __doc__.splitlines() if "bad_inputs.py" in line))
        return 0 if argv in (["-h"], ["--help"]) else 2
    if not replay_only:
        record()
    if not CALLS.exists():
        print(f"no recording at {CALLS}: run without --replay first")
        return 1
    return replay(prefixes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
