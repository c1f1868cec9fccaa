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

    @property
    def restores(self) -> tuple[Degradation, ...]:
        """The degradations the task's model removes (its tool declares them)."""
        return (self.degradation,)

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


#: The degradations of AgenticIR's MiO100 mixtures, which the all-in-one model learns to remove together.
ALL_IN_ONE_TYPES: tuple[Degradation, ...] = (
    Degradation.NOISE,
    Degradation.MOTION_BLUR,
    Degradation.DEFOCUS_BLUR,
    Degradation.JPEG,
    Degradation.LOW_RESOLUTION,
    Degradation.HAZE,
    Degradation.RAIN,
    Degradation.LOW_LIGHT,
)


@dataclass(frozen=True)
class MixtureTask:
    """An all-in-one task: one blind model for any mixture of up to three of ``types``.

    Training draws the number of degradations (1, 2 or 3 with ``size_weights``), distinct types among
    ``types`` and, per sample, the synthesis preset (``"default"``: wide ranges with mild settings, or
    ``"mio100"``: AgenticIR's ranges), each degradation at a random severity; :func:`evals.synthesis.synthesize`
    applies them in physical order. Its held-out evaluation is per degradation against that degradation's
    classical tools (:data:`SINGLE_TASKS`) and, on mixtures, through the agent benchmark.
    """

    name: str
    types: tuple[Degradation, ...]
    description: str
    size_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    band_param: str = "degradations"
    bands: tuple[Band, ...] = (
        Band("1 degradation", 1, 1),
        Band("2 degradations", 2, 2),
        Band("3 degradations", 3, 3),
    )

    @property
    def restores(self) -> tuple[Degradation, ...]:
        """The degradations the task's model removes (its tool declares them)."""
        return self.types

    def sample(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """Degrade ``clean`` with a random mixture of one to three degradations."""
        weights = np.asarray(self.size_weights, dtype=float)
        count = 1 + int(rng.choice(len(weights), p=weights / weights.sum()))
        return self.mix(clean, rng, count)

    def mix(self, clean: np.ndarray, rng: np.random.Generator, count: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Degrade ``clean`` with ``count`` distinct random types, each at a random severity."""
        from evals.synthesis import synthesize

        chosen = [self.types[int(i)] for i in rng.choice(len(self.types), size=count, replace=False)]
        preset = "mio100" if rng.random() < 0.5 else "default"
        synth = synthesize(clean, chosen, seed=int(rng.integers(2**31)), preset=preset)
        return synth.image, {"types": [d.value for d in synth.labels], "preset": preset}

    def degrade_band(self, clean: np.ndarray, rng: np.random.Generator, band: Band) -> tuple[np.ndarray, dict]:
        """Degrade ``clean`` with a mixture of ``band.low`` degradations."""
        return self.mix(clean, rng, int(band.low))


ALL_IN_ONE = MixtureTask(
    "all_in_one",
    ALL_IN_ONE_TYPES,
    "blind removal of any mixture of up to three of noise, motion blur, defocus blur, JPEG, low resolution, "
    "haze, rain and low light",
)

#: Every trainable task by name: the single-degradation tasks and the all-in-one model.
ALL_TASKS: dict[str, Task | MixtureTask] = {**TASKS, ALL_IN_ONE.name: ALL_IN_ONE}

#: Per degradation, the single-degradation task whose bands and classical rivals judge a multi-degradation
#: model on that degradation alone (haze has no learned model of its own, only this evaluation entry).
SINGLE_TASKS: dict[Degradation, Task] = {
    **{task.degradation: task for task in TASKS.values()},
    Degradation.HAZE: Task(
        "dehaze",
        Degradation.HAZE,
        "haze removal (evaluation only)",
        "severity",
        SEVERITY_BANDS,
        ("dehaze_dcp",),
    ),
}


def get_task(name: str) -> Task | MixtureTask:
    """The task called ``name``.

    Raises:
        KeyError: naming the known tasks when ``name`` is not one of them.
    """
    if name not in ALL_TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(ALL_TASKS)}")
    return ALL_TASKS[name]


def weights_dir(task: str, root: Path | str | None = None) -> Path:
    """Folder of ``task``'s weights: ``root``, else ``$RESTORA_WEIGHTS``, else the package's ``weights/``."""
    base = Path(root) if root is not None else Path(os.environ.get(WEIGHTS_ENV) or PACKAGE_WEIGHTS)
    return base / task


def has_weights(folder: Path | str) -> bool:
    """Whether ``folder`` holds a trained model (``model.safetensors`` and its ``config.json``)."""
    return (Path(folder) / "model.safetensors").is_file() and (Path(folder) / "config.json").is_file()


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
