"""msign: dlmath's Newton-Schulz against torch.optim.Muon's orthogonalisation and the SVD.

Anchor: torch.optim.Muon's ``_zeropower_via_newtonschulz`` (Jordan's quintic, 5 steps, always in
bfloat16). dlmath.msign runs in float32 on CPU and bfloat16 on CUDA; torch.linalg.svd is the exact
path. Besides time, each case records the relative Frobenius error against the exact polar
factor, the accuracy half of the comparison.
"""

import sys
from pathlib import Path

import torch
from torch.optim._muon import _zeropower_via_newtonschulz

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlmath.msign import msign, polar  # noqa: E402

from harness import Case, run_cases, save  # noqa: E402

JORDAN = (3.4445, -4.7750, 2.0315)


def cases(device: str) -> list[Case]:
    shapes = [(256, 256), (1024, 1024), (256, 1024)] if device == "cpu" else \
        [(1024, 1024), (4096, 4096), (1024, 4096)]
    out = []
    g = torch.Generator(device=device).manual_seed(0)
    for n, m in shapes:
        G = torch.randn(n, m, generator=g, device=device)
        exact = polar(G.double() if device == "cpu" or n * m <= 1024 * 1024 else G).float()

        def err(X, exact=exact):
            return float((X.float() - exact).norm() / exact.norm())

        # float32 on CPU (bf16 matmuls are slow without bf16 units); bf16 on CUDA like torch's
        dtype = torch.bfloat16 if device == "cuda" else None
        ours = lambda G=G, dtype=dtype: msign(G, steps=5, coefficients="jordan",  # noqa: E731
                                             dtype=dtype)
        anchor = lambda G=G: _zeropower_via_newtonschulz(G, JORDAN, 5, 1e-7)  # noqa: E731
        svd = lambda G=G: polar(G)  # noqa: E731
        notes = {"rel_error": {"dlmath.msign(jordan)": err(ours()),
                               "torch.optim.Muon NS": err(anchor()),
                               "dlmath.msign(polar_express)":
                                   err(msign(G, steps=5, coefficients="polar_express"))}}
        if device == "cuda":  # achieved matmul throughput: 5 steps x 3 products
            k = min(n, m)
            flops = 5 * 2 * (2 * k * k * max(n, m) + k ** 3)
            for name, fn in (("dlmath.msign(jordan, bf16)", ours),
                             ("torch.optim.Muon NS", anchor)):
                fn()
                torch.cuda.synchronize()
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                for _ in range(20):
                    fn()
                stop.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(stop) / 1e3 / 20
                notes.setdefault("tflops", {})[name] = flops / seconds / 1e12
        out.append(Case(f"msign {n}x{m} ({device})",
                        {"torch.optim.Muon NS": anchor, "dlmath.msign(jordan)": ours,
                         "polar via SVD": svd},
                        anchor="torch.optim.Muon NS", rounds=7, notes=notes))
    return out


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    save("msign", run_cases(cases(device), device=device))
