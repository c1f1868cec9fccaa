"""Time the perceive step: one assessor call on a ``--size`` x ``--size`` image, on this machine's CPU.

    python -m agent.perception.bench [--assessor estimators|saclip[:DIR]] [--size 512] [--repeats 20]

The images are procedural photographs degraded by the synthesis module (a fresh one per repeat, so no
cache helps); the first call is a warm-up and not counted. Prints the median, mean and slowest time per
image and the torch thread count. Targets are checked here, never in the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np


def time_assessor(assessor: object, size: int, repeats: int, seed: int = 0) -> list[float]:
    """Seconds per ``assessor.assess`` call on ``repeats`` fresh degraded ``size`` x ``size`` images."""
    from agent.degradations import Degradation
    from evals.synthesis import procedural_image, synthesize

    types = list(Degradation)
    rng = np.random.default_rng(seed)
    images = []
    for i in range(repeats + 1):
        clean = procedural_image(size, size, seed=seed + i)
        chosen = [types[j] for j in rng.choice(len(types), size=2, replace=False)]
        images.append(synthesize(clean, chosen, seed=seed + i).image)
    assess = assessor.assess  # type: ignore[attr-defined]
    assess(images[0])  # warm-up: lazy imports, first-call allocations
    times = []
    for image in images[1:]:
        start = time.perf_counter()
        assess(image)
        times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m agent.perception.bench``."""
    parser = argparse.ArgumentParser(prog="python -m agent.perception.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--assessor", default="estimators", help="estimators | saclip[:<folder>] | hybrid[:<folder>]")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.size < 32 or args.repeats < 1:
        print("error: --size must be >= 32 and --repeats >= 1", file=sys.stderr)
        return 2
    from agent.perception.cli_commands import make_assessor

    try:
        assessor = make_assessor(args.assessor)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    times = time_assessor(assessor, args.size, args.repeats)
    try:
        import torch

        threads = str(torch.get_num_threads())
    except ImportError:  # the estimator assessor runs without torch
        threads = "n/a"
    print(
        f"perceive {args.assessor} {args.size}x{args.size}: median {statistics.median(times):.3f} s, "
        f"mean {statistics.fmean(times):.3f} s, max {max(times):.3f} s over {len(times)} images "
        f"(torch threads {threads})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
