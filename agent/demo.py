"""``restora demo``: degrade a built-in photo, restore it, and show what changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The demo's degradations: a dark, noisy, hazy shot (a common mix the default policy handles).
DEMO_DEGRADATIONS = ("haze", "low_light", "noise")
DEMO_SEED = 7


def demo_clean_image() -> np.ndarray:
    """The built-in example: scikit-image's public-domain astronaut photo (512x512)."""
    from skimage import data

    return data.astronaut().astype(np.float32) / 255.0


def run_demo(out_dir: Path, policy: str = "default", quiet: bool = False, assessor: str | None = None) -> int:
    """Write ``demo_input.png``, restore it into ``out_dir``, print PSNR/SSIM before and after.

    ``assessor`` names the perception (``estimators``, ``saclip``, ...); ``None`` takes the agent's default.
    """
    from agent.context import RunContext
    from agent.imageio import load_image, save_image
    from agent.runner import RUN_DIR_SUFFIX, restore_image
    from agent.trace import format_table
    from evals.metrics import psnr, ssim
    from evals.synthesis import synthesize

    out_dir.mkdir(parents=True, exist_ok=True)
    clean = demo_clean_image()
    degraded = synthesize(clean, list(DEMO_DEGRADATIONS), seed=DEMO_SEED, severity=0.5).image
    input_path = out_dir / "demo_input.png"
    save_image(degraded, input_path)
    save_image(clean, out_dir / "demo_reference.png")
    result = restore_image(
        input_path,
        out_dir / f"demo{RUN_DIR_SUFFIX}",
        RunContext(policy=policy, assessor=assessor),
        output_path=out_dir / "demo.png",
    )
    restored = load_image(result.output_path).image if result.output_path else degraded
    stored_input = load_image(input_path).image
    if not quiet:
        print(format_table(result.trace))
        print()
        print(f"degradations applied: {', '.join(DEMO_DEGRADATIONS)} (seed {DEMO_SEED})")
        print(f"input : PSNR {psnr(stored_input, clean):.2f} dB  SSIM {ssim(stored_input, clean):.3f}")
        print(f"output: PSNR {psnr(restored, clean):.2f} dB  SSIM {ssim(restored, clean):.3f}")
        print(f"files : {input_path}, {result.output_path}, report {result.run_dir / 'report.html'}")
    return 0
