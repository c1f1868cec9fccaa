"""CPU inference benchmark of the learned restorers' network (``python -m tools.learned.bench``).

Prints the median seconds of one forward pass on a 512x512 image for the default configuration (or a
trained model's ``config.json`` with ``--weights DIR``), after a warm-up pass. For a model conditioned on a
vector measured on its input (:mod:`tools.learned.conditions`), the measurement is timed too, as the tool
makes it once per image.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def benchmark(config_path: Path | None = None, size: int = 512, repeats: int = 5, threads: int | None = None) -> float:
    """Median seconds of a ``size`` x ``size`` forward pass on CPU in float32 (with its condition measured, if any).

    Args:
        config_path: A ``config.json`` (or a folder holding one); ``None`` uses the default config.
        size: Side of the square test image.
        repeats: Timed passes after one warm-up pass.
        threads: ``torch.set_num_threads`` value; ``None`` keeps torch's default.

    Returns:
        The median wall-clock seconds of one pass.
    """
    import torch

    from tools.learned.conditions import measure_condition
    from tools.learned.nafnet import NAFNet, NAFNetConfig

    if threads:
        torch.set_num_threads(threads)
    config, kind = NAFNetConfig(), None
    if config_path is not None:
        path = config_path / "config.json" if config_path.is_dir() else config_path
        config = NAFNetConfig.load(path)
        kind = json.loads(path.read_text()).get("condition")
    model = NAFNet(config).eval()
    image = torch.rand(1, 3, size, size)
    pixels = image[0].permute(1, 2, 0).numpy()

    def forward() -> None:
        condition: torch.Tensor | None
        if kind:
            condition = torch.from_numpy(measure_condition(kind, pixels))[None]
        else:
            condition = torch.zeros(1, config.condition_dim) if config.condition_dim else None
        model(image, condition)

    times = []
    with torch.inference_mode():
        forward()
        for _ in range(repeats):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the median seconds."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=None, help="folder or config.json of a trained model")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    seconds = benchmark(args.weights, args.size, args.repeats, args.threads)
    sys.stdout.write(f"median {seconds:.3f} s per {args.size}x{args.size} forward pass (CPU, float32)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
