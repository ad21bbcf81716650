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
        exact = polar(G.double()).float()

        def err(X, exact=exact):
            return float((X.float() - exact).norm() / exact.norm())

        ours = lambda G=G: msign(G, steps=5, coefficients="jordan")  # noqa: E731
        anchor = lambda G=G: _zeropower_via_newtonschulz(G, JORDAN, 5, 1e-7)  # noqa: E731
        svd = lambda G=G: polar(G)  # noqa: E731
        notes = {"rel_error": {"dlmath.msign(jordan)": err(ours()),
                               "torch.optim.Muon NS": err(anchor()),
                               "dlmath.msign(polar_express)":
                                   err(msign(G, steps=5, coefficients="polar_express"))}}
        out.append(Case(f"msign {n}x{m} ({device})",
                        {"torch.optim.Muon NS": anchor, "dlmath.msign(jordan)": ours,
                         "polar via SVD": svd},
                        anchor="torch.optim.Muon NS", rounds=7, notes=notes))
    return out


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    save("msign", run_cases(cases(device), device=device))
