"""Fake tools and a fake assessor with known behaviour, for testing the agent's machinery."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.degradations import ALL_DEGRADATIONS, Degradation
from agent.report import DegradationEstimate, DegradationReport
from tools.base import STRENGTH, Tool, ToolError, ToolRegistry, ToolSpec


def high_pass_std(image: np.ndarray) -> float:
    """Standard deviation of the fine-scale residual (a crude noise measure)."""
    smooth = cv2.GaussianBlur(image, (0, 0), 1.5)
    return float(np.std(image - smooth))


class FakeAssessor:
    """Noise from high-pass energy, low light from mean brightness; every other type absent."""

    name = "fake"

    def assess(self, image: np.ndarray) -> DegradationReport:
        """Report noise and low light with simple, monotone rules."""
        noise = float(np.clip((high_pass_std(image) - 0.02) / 0.04, 0.0, 1.0))
        dark = float(np.clip((0.3 - image.mean()) / 0.2, 0.0, 1.0))
        estimates = {d: DegradationEstimate(probability=0.0, severity=0.0) for d in ALL_DEGRADATIONS}
        estimates[Degradation.NOISE] = DegradationEstimate(probability=noise, severity=noise, params={"sigma": 0.1})
        estimates[Degradation.LOW_LIGHT] = DegradationEstimate(probability=dark, severity=dark)
        return DegradationReport(assessor=self.name, estimates=estimates)


class FakeDenoise(Tool):
    """Gaussian smoothing: lowers the fake noise measure."""

    spec = ToolSpec("fake_denoise", "gaussian smoothing", (Degradation.NOISE,), (STRENGTH,), family="test")
    delay = 0.0
    calls_file: Path | None = None

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Blur the image (slowly when ``delay`` is set, logging each call when ``calls_file`` is)."""
        if self.calls_file is not None:
            with open(self.calls_file, "a") as handle:
                handle.write("call\n")
        time.sleep(self.delay)
        return cv2.GaussianBlur(image, (0, 0), 1.2)


class FakeBrighten(Tool):
    """Scales the image so that its mean becomes 0.45."""

    spec = ToolSpec("fake_brighten", "gain", (Degradation.LOW_LIGHT,), (STRENGTH,), family="test")

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Multiply by the gain that brings the mean to 0.45."""
        return image * (0.45 / max(float(image.mean()), 1e-3))


class InvertTool(Tool):
    """A harmful tool: inverts the image (must be rejected by the fidelity guard)."""

    spec = ToolSpec("fake_invert", "inverts", (Degradation.NOISE,), (STRENGTH,), family="test")

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Return the negative, smoothed so that the noise measure drops."""
        return 1.0 - cv2.GaussianBlur(image, (0, 0), 1.2)


class FailingTool(Tool):
    """A tool that always raises (must fail one step, not the run)."""

    spec = ToolSpec("fake_fail", "raises", (Degradation.NOISE,), (STRENGTH,), family="test")

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Raise a ToolError."""
        raise ToolError("fake_fail always fails")


def fake_registry() -> ToolRegistry:
    """A registry holding only the fake tools."""
    registry = ToolRegistry()
    for cls in (FakeDenoise, FakeBrighten, InvertTool, FailingTool):
        registry.add_instance(cls())
    return registry


def fake_policy(noise_candidates: list[str] | None = None) -> Any:
    """The default policy with fake candidates, PIQE only and no time budget."""
    from policies import load_policy, policy_from_mapping

    data = load_policy("default").model_dump(mode="json")
    data["candidates"] = {
        "noise": [{"tool": t, "strengths": [1.0]} for t in (noise_candidates or ["fake_denoise"])],
        "low_light": [{"tool": "fake_brighten", "strengths": [1.0]}],
    }
    data["iqa_metrics"] = ["piqe"]
    data["budgets"]["time_budget_s"] = None
    data["thresholds"]["iqa_tolerance"] = 1.0
    return policy_from_mapping(data)


def fake_context(noise_candidates: list[str] | None = None) -> Any:
    """A RunContext over the fake tools and assessor."""
    from agent.context import RunContext

    return RunContext(policy=fake_policy(noise_candidates), registry=fake_registry(), assessor=FakeAssessor())


def noisy_dark_image(path: Path, seed: int = 0, size: int = 96) -> Path:
    """Write a dark, noisy test image with some structure as an 8-bit PNG."""
    from agent.imageio import save_image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 0.25 * (0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy))
    base[size // 4 : size // 2, size // 4 : size // 2] += 0.15
    image = np.repeat(base[..., None], 3, axis=2) * np.array([1.0, 0.9, 0.8], dtype=np.float32)
    image = np.clip(image + rng.normal(0, 0.06, image.shape), 0, 1).astype(np.float32)
    return save_image(image, path)


def main(input_path: str, run_dir: str, output: str, calls_file: str) -> None:
    """Run the agent with slow fake tools (used by the kill-and-resume test in a subprocess)."""
    from agent.runner import restore_image

    context = fake_context()
    tool = context.tools.get("fake_denoise")
    tool.delay = 3.0  # ample time for the test to see the call and kill the process, even on a loaded machine
    tool.calls_file = Path(calls_file)
    restore_image(input_path, run_dir, context, output_path=output)


if __name__ == "__main__":
    main(*sys.argv[1:5])


def fake_shared(root: Path, count: int = 4, size: tuple[int, int] = (56, 64)) -> Path:
    """A ``shared`` folder: ``count`` procedural calibration photos (BSD100) and one per evaluation collection."""
    from PIL import Image

    from evals.synthesis import procedural_image

    clean = root / "data" / "clean"
    for folder, n in (("BSD100", count), ("LIVE1_color", 1), ("McMaster", 1), ("Set14", 1)):
        (clean / folder).mkdir(parents=True)
        for i in range(n):
            image = procedural_image(*size, seed=i + 10 * len(folder))
            Image.fromarray((image * 255).round().astype(np.uint8)).save(clean / folder / f"img_{i:03d}.png")
    return root
