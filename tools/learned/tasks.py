"""The learned restorers' tasks and where their weights live.

Per task: which degradation the model removes, how training pairs are drawn, which classical tools it
must beat and the evaluation bands.

Synthesis (:mod:`evals.synthesis`) is imported lazily: only training and evaluation need it, the
inference tools do not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.degradations import Degradation

#: Folder of the weights that ship with the project (one sub-folder per task).
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"

#: Environment variable naming another weights folder (same layout: ``<dir>/<task>/model.safetensors``).
WEIGHTS_ENV = "RESTORA_WEIGHTS"

Sampler = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]


@dataclass(frozen=True)
class Band:
    """One severity band of the held-out evaluation: a label and the sampler parameters it fixes."""

    label: str
    low: float
    high: float


@dataclass(frozen=True)
class Task:
    """A learned-restorer task: its degradation, training sampler, evaluation bands and classical rivals."""

    name: str
    degradation: Degradation
    description: str
    band_param: str
    bands: tuple[Band, ...]
    classical_tools: tuple[str, ...]

    def sample(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """Degrade ``clean`` with a training draw over the task's whole range."""
        return self.degrade(clean, rng, self.bands[0].low, self.bands[-1].high)

    def degrade(
        self, clean: np.ndarray, rng: np.random.Generator, low: float, high: float
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Degrade ``clean`` with ``band_param`` drawn uniformly in ``[low, high]``."""
        from evals.synthesis import degrade

        value = float(rng.uniform(min(low, high), max(low, high)))
        if self.name == "denoise":
            if rng.random() < 0.2:  # Poisson (signal-dependent) noise of comparable strength
                return degrade(clean, self.degradation, rng, kind="poisson", scale=max(value * 255.0 / 15.0, 0.05))
            return degrade(clean, self.degradation, rng, sigma=value / 255.0)
        if self.name == "jpeg":
            return degrade(clean, self.degradation, rng, quality=round(value))
        return degrade(clean, self.degradation, rng, severity=value)

    def degrade_band(self, clean: np.ndarray, rng: np.random.Generator, band: Band) -> tuple[np.ndarray, dict]:
        """Degrade ``clean`` for held-out evaluation in ``band`` (Gaussian noise only for ``denoise``)."""
        from evals.synthesis import degrade

        value = float(rng.uniform(min(band.low, band.high), max(band.low, band.high)))
        if self.name == "denoise":
            return degrade(clean, self.degradation, rng, sigma=value / 255.0)
        if self.name == "jpeg":
            return degrade(clean, self.degradation, rng, quality=round(value))
        return degrade(clean, self.degradation, rng, severity=value)


SEVERITY_BANDS = (
    Band("severity 0-0.33", 0.0, 1 / 3),
    Band("severity 0.33-0.67", 1 / 3, 2 / 3),
    Band("severity 0.67-1", 2 / 3, 1.0),
)

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "denoise",
            Degradation.NOISE,
            "blind removal of Gaussian (sigma 0-50 of 255) and Poisson sensor noise",
            "sigma (of 255)",
            (Band("sigma 0-15", 0.0, 15.0), Band("sigma 15-30", 15.0, 30.0), Band("sigma 30-50", 30.0, 50.0)),
            ("denoise_dct", "denoise_nlm"),
        ),
        Task(
            "jpeg",
            Degradation.JPEG,
            "removal of JPEG blocking and ringing (quality 10-90)",
            "quality",
            (Band("quality 90-60", 90.0, 60.0), Band("quality 60-30", 60.0, 30.0), Band("quality 30-10", 30.0, 10.0)),
            ("deblock_jpeg",),
        ),
        Task(
            "derain",
            Degradation.RAIN,
            "removal of rain streaks (the synthesis' full severity range)",
            "severity",
            SEVERITY_BANDS,
            ("derain_directional",),
        ),
        Task(
            "lowlight",
            Degradation.LOW_LIGHT,
            "brightening of under-exposed images (value shift, gamma and range compression)",
            "severity",
            SEVERITY_BANDS,
            ("lowlight_retinex",),
        ),
        Task(
            "motion_deblur",
            Degradation.MOTION_BLUR,
            "blind removal of linear motion blur (5-25 px, any direction)",
            "severity",
            SEVERITY_BANDS,
            ("deblur_wiener",),
        ),
        Task(
            "defocus_deblur",
            Degradation.DEFOCUS_BLUR,
            "blind removal of defocus (disc) blur (radius 1.5-6 px)",
            "severity",
            SEVERITY_BANDS,
            ("deblur_wiener",),
        ),
        Task(
            "upscale",
            Degradation.LOW_RESOLUTION,
            "detail restoration of images upsampled from 2x-4x lower resolution (same-size input and output)",
            "severity",
            SEVERITY_BANDS,
            ("upscale_detail", "deblur_wiener"),
        ),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        KeyError: naming the known tasks when ``name`` is not one of them.
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def weights_dir(task: str, root: Path | str | None = None) -> Path:
    """Folder of ``task``'s weights: ``root``, else ``$RESTORA_WEIGHTS``, else the package's ``weights/``."""
    base = Path(root) if root is not None else Path(os.environ.get(WEIGHTS_ENV) or PACKAGE_WEIGHTS)
    return base / task


def train_command(task: str) -> str:
    """The shell command that trains ``task``'s model."""
    return f"python -m tools.learned.train --task {task}"


def oracle_report(degradation: Degradation, applied: dict[str, Any]):
    """A :class:`DegradationReport` that knows the true degradation (for giving classical tools their best params)."""
    from agent.report import DegradationEstimate, DegradationReport
    from evals.synthesis import canonical_params

    estimate = DegradationEstimate(
        probability=1.0,
        severity=float(np.clip(applied.get("severity", 0.5), 0.0, 1.0)),
        params=canonical_params(degradation, applied),
    )
    return DegradationReport(assessor="oracle", estimates={degradation: estimate})
