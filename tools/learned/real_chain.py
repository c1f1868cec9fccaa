"""The learned upscaler on real noisy photos as the agent meets them: alone, and after JPEG deblocking.

    python -m tools.learned.real_chain [--shared ../shared] [--weights DIR] [--limit N]

For PolyU's real camera photos (``data/degraded/PolyU_real_noise_cropped100``, burst-mean references) it
prints the mean PSNR change (RGB) of ``deblock_jpeg`` at the photos' in-camera quality, of
``nafnet_upscale`` run on the deblocked photo, and of ``nafnet_upscale`` alone, with how many photos each
made worse. ``--weights`` is a folder laid out like ``$RESTORA_WEIGHTS`` (``<dir>/upscale/...``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
POLYU = Path("data/degraded/PolyU_real_noise_cropped100")
#: PolyU's in-camera JPEG quality (the estimators read 74 on its photos).
POLYU_QUALITY = 74


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped ones)")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    folder = args.shared / POLYU
    inputs = sorted((folder / "lq").glob("*"))[: args.limit]
    if not inputs:
        print(f"error: no PolyU photos under {folder}; pass --shared", file=sys.stderr)
        return 2
    if args.weights:
        os.environ["RESTORA_WEIGHTS"] = str(args.weights)
    from agent.imageio import load_image
    from evals.metrics import psnr
    from tools import default_registry

    registry = default_registry()
    upscale, deblock = registry.get("nafnet_upscale"), registry.get("deblock_jpeg")
    gains: dict[str, list[float]] = {"deblock": [], "upscale after deblock": [], "upscale alone": []}
    for path in inputs:
        noisy = load_image(path).image
        reference = load_image(folder / "gt" / path.name).image
        deblocked = deblock(noisy, {"strength": 1.0, "quality": POLYU_QUALITY, "detect": True, "chroma": True}).image
        after = upscale(deblocked, {"strength": 1.0}).image
        alone = upscale(noisy, {"strength": 1.0}).image
        base = psnr(noisy, reference, on="rgb")
        gains["deblock"].append(psnr(deblocked, reference, on="rgb") - base)
        gains["upscale after deblock"].append(psnr(after, reference, on="rgb") - psnr(deblocked, reference, on="rgb"))
        gains["upscale alone"].append(psnr(alone, reference, on="rgb") - base)
    for name, values in gains.items():
        array = np.asarray(values)
        print(f"{name:22s} {array.mean():+.2f} dB (RGB) over {len(array)} photos, {int((array < -0.01).sum())} worse")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
