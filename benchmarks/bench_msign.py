"""msign: dlmath's Newton-Schulz against torch.optim.Muon's orthogonalisation and the SVD.

Two comparisons per shape:

* **against torch.optim.Muon** (anchor: its ``_zeropower_via_newtonschulz``, Jordan's quintic,
  5 steps, always in bfloat16): dlmath.msign in its default float32 and in bfloat16, with
  Jordan's and the Polar Express schedules, and the exact polar factor by SVD. Besides time,
  each case records the relative Frobenius error against the exact polar factor.
* **per-step cost** (anchor: the plainest Newton-Schulz loop, Jordan's fixed quintic written
  with the same fused ``addmm`` products, in the same dtype): what dlmath's checks, scaling,
  per-step schedules and the Schatten-8 rescaling add.
"""

import sys
from pathlib import Path

import torch
from torch.optim._muon import _zeropower_via_newtonschulz

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlmath.msign import msign, polar  # noqa: E402

from harness import Case, run_cases, save  # noqa: E402

JORDAN = (3.4445, -4.7750, 2.0315)


def plain_newton_schulz(G: torch.Tensor, dtype: torch.dtype, steps: int = 5) -> torch.Tensor:
    """The reference loop: X <- aX + (bA + cA^2)X, A = XX^T, fixed (a, b, c), no checks."""
    a, b, c = JORDAN
    X = G.to(dtype)
    if X.shape[0] > X.shape[1]:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    if G.shape[0] > G.shape[1]:
        X = X.T
    return X.to(G.dtype)


def tflops(fn, n: int, m: int) -> float:
    """Achieved matmul throughput of a 5-step Newton-Schulz on CUDA (3 products per step)."""
    k = min(n, m)
    flops = 5 * 2 * (2 * k * k * max(n, m) + k ** 3)
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return flops / (start.elapsed_time(stop) / 1e3 / 20) / 1e12


def cases(device: str) -> list[Case]:
    shapes = [(256, 256), (1024, 1024), (256, 1024)] if device == "cpu" else \
        [(1024, 1024), (4096, 4096), (1024, 4096)]
    bf16 = torch.bfloat16
    fast = bf16 if device == "cuda" else torch.float32  # dtype of the per-step comparison
    out = []
    g = torch.Generator(device=device).manual_seed(0)
    for n, m in shapes:
        G = torch.randn(n, m, generator=g, device=device)
        exact = polar(G.double() if device == "cpu" or n * m <= 1024 * 1024 else G).float()

        def err(X, exact=exact):
            return float((X.float() - exact).norm() / exact.norm())

        cand = {
            "torch.optim.Muon NS": lambda G=G: _zeropower_via_newtonschulz(G, JORDAN, 5, 1e-7),
            "dlmath.msign(jordan)": lambda G=G: msign(G, 5, "jordan"),
            "dlmath.msign(jordan, bf16)": lambda G=G: msign(G, 5, "jordan", dtype=bf16),
            "dlmath.msign(polar_express, bf16)":
                lambda G=G: msign(G, 5, "polar_express", dtype=bf16),
            "dlmath.msign(polar_express, bf16, validate=False)":
                lambda G=G: msign(G, 5, "polar_express", dtype=bf16, validate=False),
            "polar via SVD": lambda G=G: polar(G),
        }
        notes = {"rel_error": {k: err(f()) for k, f in cand.items() if k != "polar via SVD"}}
        notes["rel_error"]["dlmath.msign(polar_express)"] = err(msign(G, 5, "polar_express"))
        notes["rel_error"]["dlmath.msign(polar_express, schatten8)"] = err(
            msign(G, 5, "polar_express", scale="schatten8"))
        if device == "cuda":
            notes["tflops"] = {k: tflops(f, n, m) for k, f in cand.items()
                               if k != "polar via SVD"}
        out.append(Case(f"msign {n}x{m} ({device})", cand, anchor="torch.optim.Muon NS",
                        rounds=7, notes=notes))
        if device == "cuda":
            # torch.optim.Muon's function returns bf16 while msign returns its input's dtype:
            # with a bf16 input neither casts back, and the two do the same work
            H = G.to(bf16)
            same = {"torch.optim.Muon NS": lambda H=H: _zeropower_via_newtonschulz(H, JORDAN, 5,
                                                                                    1e-7),
                    "dlmath.msign(jordan, bf16)": lambda H=H: msign(H, 5, "jordan", dtype=bf16),
                    "dlmath.msign(jordan, bf16, validate=False)":
                        lambda H=H: msign(H, 5, "jordan", dtype=bf16, validate=False)}
            out.append(Case(f"msign {n}x{m} bf16 in and out (cuda)", same,
                            anchor="torch.optim.Muon NS", rounds=9,
                            notes={"tflops": {k: tflops(f, n, m) for k, f in same.items()}}))

        step = {
            "plain Newton-Schulz": lambda G=G: plain_newton_schulz(G, fast),
            "dlmath.msign(jordan)": lambda G=G: msign(G, 5, "jordan", dtype=fast, gram=False),
            "dlmath.msign(polar_express)":
                lambda G=G: msign(G, 5, "polar_express", dtype=fast, gram=False),
            "dlmath.msign(polar_express, validate=False)":
                lambda G=G: msign(G, 5, "polar_express", dtype=fast, gram=False,
                                  validate=False),
            "dlmath.msign(polar_express, schatten8, validate=False)":
                lambda G=G: msign(G, 5, "polar_express", dtype=fast, gram=False,
                                  scale="schatten8", validate=False),
        }
        out.append(Case(f"msign per-step cost {n}x{m} ({device}, {str(fast)[6:]})", step,
                        anchor="plain Newton-Schulz", rounds=9))
    return out


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    save("msign", run_cases(cases(device), device=device))
