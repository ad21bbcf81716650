"""msign on wide matrices: the Gram Newton-Schulz path against the plain path.

Anchor: ``dlmath.msign(G, gram=False)`` (plain Newton-Schulz; float32 on CPU, bfloat16 with
``validate=False`` on CUDA). Candidate: the
same iteration run on the n x n Gram side (``gram=True``, the default beyond aspect ratio 1.5).
Each case records the largest |difference| between the two outputs.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlmath.msign import msign  # noqa: E402

from harness import Case, run_cases, save  # noqa: E402


def cases(device):
    shapes = [(256, 512), (256, 1024), (128, 1024), (512, 2048)] if device == "cpu" else \
        [(1024, 2048), (1024, 4096), (2048, 4096), (2048, 8192), (4096, 16384)]
    # float32 on CPU; bfloat16 without the host-synchronising check on CUDA (a training step)
    kw = {} if device == "cpu" else {"dtype": torch.bfloat16, "validate": False}
    out = []
    g = torch.Generator(device=device).manual_seed(0)
    for n, m in shapes:
        G = torch.randn(n, m, device=device, generator=g)
        plain = lambda G=G: msign(G, coefficients="polar_express", gram=False, **kw)  # noqa: E731
        fast = lambda G=G: msign(G, coefficients="polar_express", gram=True, **kw)  # noqa: E731
        notes = {"aspect": m / n, "max_abs_diff": float((fast() - plain()).abs().max())}
        out.append(Case(f"msign {n}x{m} ({device})",
                        {"plain Newton-Schulz": plain, "Gram Newton-Schulz": fast},
                        anchor="plain Newton-Schulz", rounds=9, notes=notes))
    return out


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    save("msign_gram", run_cases(cases(device), device=device,
                                 threads=None if device == "cuda" else 2))
