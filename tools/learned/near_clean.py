"""How denoisers treat photos with little or no noise (``python -m tools.learned.near_clean``).

A blind denoiser that smooths fine texture makes a nearly clean photo worse, which the agent must avoid
("leave it alone"). This script adds white Gaussian noise of a few small sigmas to central crops of the
evaluation split (never used in training) and prints the mean RGB PSNR of the input and of each denoiser's
output: the shipped ``nafnet_denoise`` and any other weights folders passed with ``--weights``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"


def rgb_psnr(output: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of ``output`` clipped to [0, 1] against ``reference``, over all RGB values."""
    mse = float(np.mean((np.clip(output, 0.0, 1.0) - reference) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(1.0 / mse))


def near_clean_scores(
    shared: Path, weights: list[Path | None], sigmas: tuple[float, ...], images: int = 8, crop: int = 256
) -> dict[float, dict[str, float]]:
    """Per sigma (of 255), the mean PSNR of the input and of each weights folder's output.

    Args:
        shared: The shared folder holding ``data/clean``.
        weights: Denoiser weights folders (``None``: the shipped ``nafnet_denoise``).
        sigmas: Noise levels; noise is drawn with seed = image index.
        images: How many evaluation photos (spread over the split).
        crop: Side of each photo's central crop.
    """
    from evals.synthesis import clean_split, load_clean_images
    from tools.learned.restorers import NAFNetDenoise

    paths = clean_split(shared)["evaluation"]
    chosen = paths[:: max(1, len(paths) // images)][:images]
    clean = []
    for _, image in load_clean_images(chosen, crop=None):
        top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
        clean.append(image[top : top + crop, left : left + crop])
    tools = {str(folder or "shipped"): NAFNetDenoise(weights=folder) for folder in weights}
    scores: dict[float, dict[str, float]] = {}
    for sigma in sigmas:
        rows: dict[str, list[float]] = {"input": [], **{name: [] for name in tools}}
        for index, photo in enumerate(clean):
            noise = np.random.default_rng(index).normal(0.0, sigma / 255.0, photo.shape)
            noisy = np.clip(photo + noise, 0.0, 1.0).astype(np.float32)
            rows["input"].append(rgb_psnr(noisy, photo))
            for name, tool in tools.items():
                rows[name].append(rgb_psnr(tool(noisy, {}).image, photo))
        scores[sigma] = {name: float(np.mean(values)) for name, values in rows.items()}
    return scores


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: prints one line per sigma."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--weights", type=Path, nargs="*", default=[], help="other denoiser weights folders")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 2.0, 5.0], help="noise sigmas (of 255)")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args(argv)
    if not (args.shared / "data" / "clean").is_dir():
        print(f"error: {args.shared}/data/clean not found; pass --shared", file=sys.stderr)
        return 2
    scores = near_clean_scores(args.shared, [None, *args.weights], tuple(args.sigmas), args.images)
    for sigma, row in scores.items():
        print(f"sigma {sigma:g}: " + ", ".join(f"{name} {value:.2f} dB" for name, value in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
