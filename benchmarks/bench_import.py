"""The cost of `import dlmath` over `import torch`, in fresh interpreters.

Anchor: a fresh interpreter running `import torch`. Candidate: the same running `import dlmath`
(which imports torch). The ratio is reported; the note records the median extra seconds.
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, run_cases, save  # noqa: E402


def interpreter(code: str):
    def run():
        subprocess.run([sys.executable, "-c", code], check=True)
    return run


if __name__ == "__main__":
    torch_only = interpreter("import torch")
    with_dlmath = interpreter("import dlmath, dlmath.optim")
    extra = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch_only()
        t1 = time.perf_counter()
        with_dlmath()
        extra.append(time.perf_counter() - 2 * t1 + t0)
    case = Case("import dlmath vs import torch",
                {"import torch": torch_only, "import dlmath": with_dlmath},
                anchor="import torch", rounds=7, min_time=0.0,
                notes={"median_extra_seconds": statistics.median(extra)})
    save("import", run_cases([case]))
