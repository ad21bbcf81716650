"""Optimizer steps: dlmath's Lion/Tiger (fused and foreach) and Muon against their anchors.

Three comparisons, float32 on the CPU (the GPU when there is one), timing ``opt.step()`` only
(the gradients are set once):

1. **Sign optimizers** on a model of 20 tensors, about 10M parameters, against
   ``torch.optim.AdamW(fused=True)``: a Lion step streams 20 bytes per parameter (read p, g, m;
   write p, m) against AdamW's 28, so 0.71x is the bandwidth bound; the goal is <= 0.8x for
   the fused step.
2. **Eager steps** on the same model against ``lion_pytorch.foreach.Lion``: goal <= 1.0x for
   dlmath's foreach step; and the chunk size of that step (``dlmath.optim.lion.CHUNK``).
3. **Muon** on four 1024x1024 matrices and two vectors (the vectors go to AdamW, as in
   practice), against the work it cannot avoid: its Newton-Schulz products (``dlmath.msign``,
   Jordan's quintic, 5 steps, float32) plus one ``AdamW(fused=True)`` pass over all parameters;
   goal <= 1.02x. ``torch.optim.Muon`` (Newton-Schulz in bfloat16) is timed beside it.
"""

import json
import sys
import time
from pathlib import Path

import lion_pytorch
import lion_pytorch.foreach
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dlmath.optim.lion as dlion  # noqa: E402
from dlmath.msign import msign  # noqa: E402
from dlmath.optim import Lion, Muon, Tiger  # noqa: E402

from harness import RESULTS, Case, machine, machine_slug, run_cases, save  # noqa: E402

# 20 tensors, 9,969,664 parameters: 8 square and 4 rectangular matrices, 8 vectors
SHAPES = [(1024, 1024)] * 8 + [(1024, 384)] * 4 + [(1024,)] * 8


def model(device: str, shapes=SHAPES, seed: int = 0) -> list[torch.nn.Parameter]:
    """Parameters with gradients set once (a step reads them, nothing else changes them)."""
    g = torch.Generator(device=device).manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g, device=device))
        p.grad = torch.randn(s, generator=g, device=device)
        params.append(p)
    return params


def first_step(opt) -> tuple[callable, float]:
    """Take the first step (allocation, compilation) outside the timing; return its seconds."""
    t = time.perf_counter()
    opt.step()
    return opt.step, time.perf_counter() - t


def sign_cases(device: str) -> list[Case]:
    numel = sum(torch.Size(s).numel() for s in SHAPES)
    steps, first = {}, {}
    for name, make in {
        "AdamW(fused)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1, fused=True),
        "AdamW(foreach)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1,
                                                      foreach=True),
        "lion_pytorch foreach Lion": lambda p: lion_pytorch.foreach.Lion(p, lr=1e-4,
                                                                         weight_decay=0.1),
        "lion_pytorch Lion": lambda p: lion_pytorch.Lion(p, lr=1e-4, weight_decay=0.1),
        "dlmath Lion(fused=False)": lambda p: Lion(p, lr=1e-4, weight_decay=0.1, fused=False),
        "dlmath Lion(fused=True)": lambda p: Lion(p, lr=1e-4, weight_decay=0.1, fused=True),
        "dlmath Tiger(fused=False)": lambda p: Tiger(p, lr=1e-3, weight_decay=0.01,
                                                     fused=False),
        "dlmath Tiger(fused=True)": lambda p: Tiger(p, lr=1e-3, weight_decay=0.01, fused=True),
        "dlmath Tiger(fused=True, nan_guard=False)": lambda p: Tiger(
            p, lr=1e-3, weight_decay=0.01, fused=True, nan_guard=False),
    }.items():
        opt = make(model(device))
        steps[name], first[name] = first_step(opt)
        if getattr(opt, "_fused_off", None):
            raise RuntimeError(f"{name}: the fused path fell back ({opt._fused_off})")
    notes = {"tensors": len(SHAPES), "parameters": numel, "first_step_s": first,
             "bandwidth_bound_vs_adamw": 20 / 28,
             "tiger": "nan_guard=True (the default) adds one sum pass over the gradients; "
                      "Tiger's matrix learning rates add one norm pass over the matrices"}
    model_steps = {k: v for k, v in steps.items() if k != "lion_pytorch Lion"}
    eager = {k: steps[k] for k in ("lion_pytorch foreach Lion", "lion_pytorch Lion",
                                   "dlmath Lion(fused=False)", "dlmath Tiger(fused=False)")}
    return [
        Case(f"sign steps, 20 tensors, {numel / 1e6:.1f}M fp32 ({device})", model_steps,
             anchor="AdamW(fused)", rounds=15, min_time=0.2, notes=notes),
        Case(f"eager sign steps, {numel / 1e6:.1f}M fp32 ({device})", eager,
             anchor="lion_pytorch foreach Lion", rounds=15, min_time=0.2),
    ]


def chunk_case(device: str) -> Case:
    """dlmath Lion's foreach step with other chunk sizes (CHUNK is read at every step)."""
    opt = Lion(model(device), lr=1e-4, weight_decay=0.1, fused=False)
    opt.step()
    default = dlion.CHUNK

    def with_chunk(size):
        def step():
            dlion.CHUNK = size
            try:
                opt.step()
            finally:
                dlion.CHUNK = default
        return step

    sizes = {f"2**{k}": 1 << k for k in (16, 17, 18, 19, 20)} | {"whole tensors": 1 << 40}
    return Case(f"Lion foreach chunk size ({device})",
                {n: with_chunk(s) for n, s in sizes.items()},
                anchor=f"2**{default.bit_length() - 1}", rounds=9)


def muon_case(device: str) -> Case:
    mats = [(1024, 1024)] * 4
    vecs = [(1024,)] * 2

    def split(params):
        return params[:len(mats)], params[len(mats):]

    ours_m, ours_v = split(model(device, mats + vecs))
    ours = (Muon(ours_m, lr=0.02, weight_decay=0.1),
            torch.optim.AdamW(ours_v, lr=1e-3, fused=True))
    theirs_m, theirs_v = split(model(device, mats + vecs))
    theirs = (torch.optim.Muon(theirs_m, lr=0.02, weight_decay=0.1),
              torch.optim.AdamW(theirs_v, lr=1e-3, fused=True))
    floor_params = model(device, mats + vecs)
    floor_adamw = torch.optim.AdamW(floor_params, lr=1e-3, fused=True)

    def floor():
        for p in floor_params[:len(mats)]:
            msign(p.grad, steps=5, coefficients="jordan")
        floor_adamw.step()

    def both(pair):
        def step():
            for opt in pair:
                opt.step()
        return step

    return Case(f"Muon step, 4 x 1024x1024 + 2 vectors, fp32 ({device})",
                {"NS matmuls + AdamW pass": floor, "dlmath Muon + AdamW(1-D)": both(ours),
                 "torch.optim.Muon + AdamW(1-D)": both(theirs)},
                anchor="NS matmuls + AdamW pass", rounds=9,
                notes={"ns": "Jordan quintic, 5 steps; dlmath float32, torch.optim.Muon bf16"})


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    which = set(sys.argv[1:]) or {"sign", "chunk", "muon"}  # or name some of them
    cases = []
    if "sign" in which:
        cases += sign_cases(device)
    if "chunk" in which and device == "cpu":
        cases.append(chunk_case(device))
    if "muon" in which:
        cases.append(muon_case(device))
    results = run_cases(cases, device=device)
    # keep this machine's earlier cases that were not rerun (``python bench_optim.py muon``)
    path = RESULTS / f"{machine_slug(machine())}.json"
    old = json.loads(path.read_text())["benchmarks"].get("optim", {}) if path.exists() else {}
    rerun = {r["name"] for r in results}
    save("optim", [c for c in old.get("cases", []) if c["name"] not in rerun] + results)
