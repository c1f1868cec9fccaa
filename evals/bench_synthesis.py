"""Seconds per degradation type on a 512x512 image (``python -m evals.bench_synthesis``); best of 3 runs."""

from __future__ import annotations

import time

import numpy as np


def main() -> int:
    """Print the synthesis time of every degradation type."""
    from agent.degradations import Degradation
    from evals.synthesis import degrade, procedural_image

    clean = procedural_image(512, 512, seed=0)
    for degradation in Degradation:
        best = np.inf
        for attempt in range(3):
            start = time.perf_counter()
            degrade(clean, degradation, np.random.default_rng(attempt), 1.0)
            best = min(best, time.perf_counter() - start)
        print(f"{degradation.value:<16} {best:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
