"""sparsemax / entmax: dlmath's threshold solvers against the `entmax` package.

Anchors: the package's sort-based ``entmax.sparsemax`` / ``entmax.entmax15`` (forward, full
sort), and ``entmax.entmax_bisect`` for a general alpha. Other candidates: the package's top-k
variant (``k=64``, a partial sort that doubles k when the support is larger), dlmath's sort path
and dlmath's Newton path. Logits are standard Gaussian rows of width d in {128,
1024, 32768}. Each case records the largest |p - p_float64|, the entries that should be exact
zeros but are not, and what one call asks of the device (``aten_ops``, ``host_syncs``:
:func:`harness.dispatch_counts`; on the H100, calls this size cost 10-15 us per op, whatever the
solver). dlmath's default is Newton on a CPU and the sort on CUDA. Two general alphas: 1.25
(1/(alpha-1) = 4, an integer power that dlmath computes by products) and 1.75 (a non-integer
power: ``torch.pow``, slow on CPU).
"""

import sys
from pathlib import Path

import entmax
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlmath import normalizers as N  # noqa: E402

from harness import Case, dispatch_counts, run_cases, save  # noqa: E402

SHAPES = [(2048, 128), (256, 1024), (16, 32768)]
ALPHAS = (1.25, 1.75)  # general alphas: no closed form, no sort path


def accuracy(f, ref):
    p = f()
    return {"max_abs_error": float((p.double() - ref).abs().max()),
            "nonzero_where_exact_zero": int(((ref == 0) & (p != 0)).sum()), **dispatch_counts(f)}


def cases(device):
    out = []
    g = torch.Generator(device=device).manual_seed(0)
    for b, d in SHAPES:
        x = torch.randn(b, d, device=device, generator=g)
        xd = x.double()
        for alpha, pkg, ours in ((2.0, entmax.sparsemax, N.sparsemax),
                                 (1.5, entmax.entmax15, N.entmax15)):
            ref = ours(xd, method="sort")
            name = "sparsemax" if alpha == 2 else "entmax15"
            cands = {
                f"entmax.{name} (sort)": lambda x=x, pkg=pkg: pkg(x),
                f"entmax.{name} (k=64)": lambda x=x, pkg=pkg: pkg(x, k=64),
                f"dlmath {name} (sort)": lambda x=x, ours=ours: ours(x, method="sort"),
                f"dlmath {name} (newton)": lambda x=x, ours=ours: ours(x),
            }
            notes = {n: accuracy(f, ref) for n, f in cands.items()}
            out.append(Case(f"{name} {b}x{d} ({device})", cands,
                            anchor=f"entmax.{name} (sort)", notes=notes, rounds=11))
        for alpha in ALPHAS:
            ref = N.entmax_bisect(xd, alpha, n_iter=200)
            cands = {
                "entmax.entmax_bisect": lambda x=x, a=alpha: entmax.entmax_bisect(x, a),
                "dlmath entmax_bisect": lambda x=x, a=alpha: N.entmax_bisect(x, a),
                "dlmath entmax (newton)": lambda x=x, a=alpha: N.entmax(x, a),
            }
            notes = {n: accuracy(f, ref) for n, f in cands.items()}
            out.append(Case(f"entmax alpha={alpha} {b}x{d} ({device})", cands,
                            anchor="entmax.entmax_bisect", notes=notes, rounds=11))
    return out


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    save("normalizers", run_cases(cases(device), device=device,
                                  threads=None if device == "cuda" else 2))
