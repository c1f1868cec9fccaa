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
    #: Share of training samples that also carry the noise and compression of a real capture
    #: (:func:`capture_noise`) on top of the task's degradation; the target stays the clean image.
    capture_share: float = 0.0
    #: Share of training samples with only that capture noise (no task degradation): the model must
    #: not sharpen an image that lacks nothing but carries sensor noise.
    capture_only_share: float = 0.0
    #: Share of the capture-noise draws then deblocked by the classical ``deblock_jpeg`` at the JPEG quality
    #: used, as the agent's JPEG step leaves a photo before it reaches this task's tool.
    capture_deblock_share: float = 0.0
    #: Share of training samples drawn inside a mixture, as the agent meets this task's degradation after
    #: undoing the ones that arose later (:meth:`sample_pair`); 0 trains on the degradation alone.
    context_share: float = 0.0
    #: Scene degradations that arise before this one and that later agent steps undo: applied first and
    #: left in the target (e.g. haze under rain streaks).
    context_kept: tuple[Degradation, ...] = ()
    #: Degradations that arise before this one and that the model removes with it (e.g. defocus under motion blur).
    context_removed: tuple[Degradation, ...] = ()
    #: Degradations that arise after this one, which the agent undoes first: applied, then restored by the
    #: classical tool the agent would run (:func:`restored_context`), so the model sees what that step leaves.
    context_after: tuple[Degradation, ...] = ()
    #: Degradations that arise after this one and that the agent may leave in place (perception missed them):
    #: applied to the image and, with the same parameters, to the target, so the model learns to restore its own
    #: degradation under them without undoing them (e.g. rain streaks in a photo left dark).
    context_after_kept: tuple[Degradation, ...] = ()
    #: Share of the in-context draws without this task's degradation (only the context): the model must leave
    #: an image without it alone.
    context_only_share: float = 0.0

    @property
    def restores(self) -> tuple[Degradation, ...]:
        """The degradations the task's model removes (its tool declares them)."""
        return (self.degradation,)

    def sample(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """Degrade ``clean`` with a training draw over the task's whole range.

        With :attr:`capture_only_share` / :attr:`capture_share`, a draw is instead (or also) given the
        noise and JPEG compression of a real capture by :func:`capture_noise`.
        """
        draw = rng.random() if self.capture_share or self.capture_only_share else 1.0
        if draw < self.capture_only_share:
            degraded, params = capture_noise(clean, rng)
            return self._maybe_deblock(degraded, params, rng), params
        degraded, params = self.degrade(clean, rng, self.bands[0].low, self.bands[-1].high)
        if draw < self.capture_only_share + self.capture_share:
            degraded, capture = capture_noise(degraded, rng)
            degraded = self._maybe_deblock(degraded, capture, rng)
            params = {**params, "capture": capture}
        return degraded, params

    def sample_pair(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """A training pair ``(degraded, target, params)``.

        With :attr:`context_share`, a draw is placed in a mixture: kept context degradations are applied
        first and stay in the target, removed ones follow (the target lacks them), then this task's
        degradation (skipped in :attr:`context_only_share` of those draws), then later degradations
        restored as the agent's earlier steps would (:func:`restored_context`). Otherwise the target is
        ``clean`` and the draw is :meth:`sample`'s.
        """
        if not self.context_share or rng.random() >= self.context_share:
            degraded, params = self.sample(clean, rng)
            return degraded, clean, params
        return self.in_context(clean, rng, own=None)

    def in_context(
        self, clean: np.ndarray, rng: np.random.Generator, own: bool | None = True, band: Band | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``clean`` degraded inside a random mixture, and what this task's model should make of it.

        Kept context degradations are applied first and stay in the target, removed ones follow, then this
        task's degradation (when ``own``, or with chance ``1 - context_only_share`` when ``None``; over
        ``band``, else the whole range), then later degradations restored as the agent's earlier steps
        would (:func:`restored_context`), or left in image and target alike (:attr:`context_after_kept`);
        at least one context degradation is always applied.

        Returns:
            ``(degraded, target, params)``; ``params["context"]`` lists the context degradations and
            ``params["applied"]`` holds this task's synthesis parameters (empty when not ``own``).
        """
        from evals.synthesis import degrade

        target, before = clean, []
        for kind in self.context_kept:
            if rng.random() < CONTEXT_CHANCE:
                target, _ = degrade(target, kind, rng)
                before.append(kind.value)
        image = target
        for kind in self.context_removed:
            if rng.random() < CONTEXT_CHANCE:
                image, _ = degrade(image, kind, rng)
                before.append(kind.value)
        own_params: dict[str, Any] = {}
        if own is None:
            own = rng.random() >= self.context_only_share
        if own:
            low, high = (band.low, band.high) if band is not None else (self.bands[0].low, self.bands[-1].high)
            image, own_params = self.degrade(image, rng, low, high)
        kept_after = [kind for kind in self.context_after_kept if rng.random() < CONTEXT_CHANCE]
        after = [kind for kind in self.context_after if kind not in kept_after and rng.random() < CONTEXT_CHANCE]
        candidates = self.context_after + self.context_after_kept
        if not before and not after and not kept_after and candidates:
            pick = int(rng.integers(len(candidates)))
            (after if pick < len(self.context_after) else kept_after).append(candidates[pick])
        image, target = _after_context(image, target, after, kept_after, rng)
        context = before + [kind.value for kind in after] + [f"{kind.value} (kept)" for kind in kept_after]
        return image, target, {"context": context, "own": own, "applied": own_params}

    def _maybe_deblock(self, image: np.ndarray, capture: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        if not self.capture_deblock_share or rng.random() >= self.capture_deblock_share:
            return image
        capture["deblocked"] = True
        return deblocked(image, capture["quality"])

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


def capture_noise(
    image: np.ndarray,
    rng: np.random.Generator,
    max_read: float = 8.0 / 255.0,
    max_shot: float = 1e-3,
    qualities: tuple[int, int] = (60, 95),
) -> tuple[np.ndarray, dict[str, Any]]:
    """The noise and compression a camera adds: signal-dependent, spatially correlated noise, then JPEG.

    Noise of variance ``read**2 + shot * value`` per pixel (``read`` up to ``max_read``, ``shot`` up to
    ``max_shot``), blurred by a Gaussian of up to 0.8 px as demosaicing and in-camera processing
    correlate it (PolyU's real camera noise: std about 3/255, neighbouring pixels correlated ~0.8),
    then JPEG at a quality in ``qualities``. Real photos all carry some of this; an upscaler trained
    without it sharpens the noise into grain.
    """
    import cv2

    from evals.synthesis import degrade

    read = float(rng.uniform(0.0, max_read))
    shot = float(rng.uniform(0.0, max_shot))
    spread = float(rng.uniform(0.0, 0.8))
    std = np.sqrt(read**2 + shot * np.clip(image, 0.0, 1.0)).astype(np.float32)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    if spread > 0.05:
        size = 2 * int(np.ceil(3.0 * spread)) + 1
        kernel = cv2.getGaussianKernel(size, spread)
        gain = np.float32(1.0 / float(np.sum(kernel**2)))  # unit variance after the (separable) blur
        noise = cv2.GaussianBlur(noise, (size, size), spread) * gain
    noisy = np.clip(image + std * noise, 0.0, 1.0).astype(np.float32)
    quality = int(rng.integers(qualities[0], qualities[1] + 1))
    compressed, _ = degrade(noisy, Degradation.JPEG, rng, quality=quality)
    return compressed, {"read": read, "shot": shot, "spread": spread, "quality": quality}


def deblocked(image: np.ndarray, quality: float) -> np.ndarray:
    """``image`` deblocked by the classical ``deblock_jpeg`` at full strength, told the JPEG ``quality``."""
    from tools import default_registry

    return default_registry().get("deblock_jpeg")(image, {"strength": 1.0, "quality": quality}).image


#: Chance of each context degradation in an in-context draw (at least one is always applied).
CONTEXT_CHANCE = 0.3


def _undo_low_resolution(image: np.ndarray, applied: dict[str, Any], registry: Any) -> np.ndarray:
    return image  # the synthesis already upsamples bicubically, the worst upscaler the agent has


def _undo_jpeg(image: np.ndarray, applied: dict[str, Any], registry: Any) -> np.ndarray:
    return deblocked(image, applied["quality"])


def _undo_noise(image: np.ndarray, applied: dict[str, Any], registry: Any) -> np.ndarray:
    params = {"strength": 1.0, "sigma": min(float(applied["sigma"]), 0.3), "poisson": bool(applied["poisson"])}
    return registry.get("denoise_dct")(image, params).image


def _undo_low_light(image: np.ndarray, applied: dict[str, Any], registry: Any) -> np.ndarray:
    return registry.get("lowlight_retinex")(image, {"strength": 1.0}).image


#: How :func:`restored_context` undoes a later degradation, as the agent's classical step would: ``(image,
#: synthesis parameters, tool registry) -> image``. A kind without an entry is left as a failed step leaves it.
_CONTEXT_UNDO = {
    Degradation.LOW_RESOLUTION: _undo_low_resolution,
    Degradation.LOW_LIGHT: _undo_low_light,
    Degradation.NOISE: _undo_noise,
    Degradation.JPEG: _undo_jpeg,
}

#: The later degradations :func:`restored_context` undoes (the model cards list them); any other stays.
UNDONE_IN_CONTEXT: tuple[Degradation, ...] = tuple(_CONTEXT_UNDO)


def restored_context(image: np.ndarray, kinds: list[Degradation], rng: np.random.Generator) -> np.ndarray:
    """Apply ``kinds`` (in physical order) and undo each roughly as the agent's classical step would.

    Low resolution stays a bicubic upsampling (the worst upscaler); JPEG is deblocked by ``deblock_jpeg``
    at the quality used; noise is removed by ``denoise_dct`` given its true sigma (its residue is what a
    later step meets); low light is darkened and brightened back by ``lowlight_retinex`` (the shadows lose
    their quantisation steps). Anything else is applied unrestored (:data:`UNDONE_IN_CONTEXT` lists the
    undone kinds).
    """
    return _after_context(image, image, kinds, [], rng)[0]


def _after_context(
    image: np.ndarray, target: np.ndarray, undone: list[Degradation], kept: list[Degradation], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the later degradations in physical order, undoing some, keeping others in ``target`` too.

    ``undone`` kinds are applied to ``image`` and undone as :func:`restored_context` does; ``kept`` kinds are
    applied to ``image`` and, with the parameters drawn for it, to ``target``.
    """
    from agent.degradations import PHYSICAL_ORDER
    from evals.synthesis import ACCEPTED_PARAMS, degrade
    from tools import default_registry

    registry = default_registry()
    for kind in sorted(set(undone) | set(kept), key=PHYSICAL_ORDER.index):
        image, applied = degrade(image, kind, rng)
        if kind in kept:
            same = {name: applied[name] for name in ACCEPTED_PARAMS[kind] if name in applied}
            target, _ = degrade(target, kind, np.random.default_rng(0), applied["severity"], **same)
            continue
        undo = _CONTEXT_UNDO.get(kind)
        if undo is not None:
            image = undo(image, applied, registry)
    return np.clip(image, 0.0, 1.0).astype(np.float32), target


#: What the scene, the optics and the exposure do to a photo before its sensor noise, in physical order: the
#: degradations that the agent undoes after denoising and lifting compression, left in those tasks' targets.
#: Raindrops are not among them (the shipped JPEG and denoising weights were trained without).
SCENE_OPTICS_EXPOSURE: tuple[Degradation, ...] = (
    Degradation.HAZE,
    Degradation.RAIN,
    Degradation.DEFOCUS_BLUR,
    Degradation.MOTION_BLUR,
    Degradation.LOW_RESOLUTION,
    Degradation.LOW_LIGHT,
)

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
            # The agent denoises right after lifting compression and colour casts, so the noise lies over whatever
            # the scene, optics and exposure did before it: half the draws keep those in the target for the later
            # steps (a denoiser that brightens a dark photo or sharpens a blurred one pre-empts them wrongly).
            context_share=0.5,
            context_kept=SCENE_OPTICS_EXPOSURE,
            context_after=(Degradation.JPEG,),
            context_only_share=0.1,
            # A real camera's noise is spatially correlated and compressed (PolyU): some draws carry it, on top of
            # the synthetic noise or alone, half of them deblocked as the agent's JPEG step leaves a photo.
            capture_share=0.2,
            capture_only_share=0.1,
            capture_deblock_share=0.5,
        ),
        Task(
            "jpeg",
            Degradation.JPEG,
            "removal of JPEG blocking and ringing (quality 10-90)",
            "quality",
            (Band("quality 90-60", 90.0, 60.0), Band("quality 60-30", 60.0, 30.0), Band("quality 30-10", 30.0, 10.0)),
            ("deblock_jpeg",),
            # Compression comes last, so the agent undoes it first and meets it over everything else a photo
            # carries (every JPEG mixture of the benchmark); half the draws compress such a mixture, which stays in
            # the target for the later steps (a JPEG model that half-smooths the noise under the blocks leaves the
            # denoising step too little to estimate).
            context_share=0.5,
            context_kept=(*SCENE_OPTICS_EXPOSURE, Degradation.NOISE),
            context_only_share=0.1,
        ),
        Task(
            "derain",
            Degradation.RAIN,
            "removal of rain streaks (the synthesis' full severity range)",
            "severity",
            SEVERITY_BANDS,
            ("derain_directional",),
            # The agent derains after undoing what arose later (lower resolution, low light, noise, JPEG) and
            # before dehazing; a darkening it missed stays in the photo, so the streaks must go without the
            # model brightening it (or darkening it further, as the rain-only weights did).
            context_share=0.5,
            context_kept=(Degradation.HAZE,),
            context_after=(Degradation.LOW_RESOLUTION, Degradation.LOW_LIGHT, Degradation.NOISE, Degradation.JPEG),
            context_after_kept=(Degradation.LOW_LIGHT,),
            context_only_share=0.1,
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
            "blind removal of linear motion blur (5-25 px, any direction), alone or inside a mixture",
            "severity",
            SEVERITY_BANDS,
            ("deblur_wiener",),
            # Inside mixtures the blind Wiener step finds no reliable kernel and the blur stays: half the
            # draws carry what the agent leaves at this step (haze kept for dehazing later, defocus removed
            # too, lower resolution, JPEG, noise and low light undone by the classical tools first).
            context_share=0.5,
            context_kept=(Degradation.HAZE,),
            context_removed=(Degradation.DEFOCUS_BLUR,),
            context_after=(Degradation.LOW_RESOLUTION, Degradation.LOW_LIGHT, Degradation.NOISE, Degradation.JPEG),
            context_only_share=0.1,
            # Real photos misread as motion-blurred carry sensor noise it must not sharpen (as the upscaler).
            capture_share=0.3,
            capture_only_share=0.15,
            capture_deblock_share=0.5,
        ),
        Task(
            "defocus_deblur",
            Degradation.DEFOCUS_BLUR,
            "blind removal of defocus (disc) blur (radius 1.5-6 px), alone or inside a mixture",
            "severity",
            SEVERITY_BANDS,
            ("deblur_wiener",),
            # As for motion blur: inside mixtures the agent meets defocus after its earlier steps (motion blur
            # left by a failed blind Wiener step, lower resolution, low light, noise and JPEG undone first), with
            # haze still to be removed later; real photos read as soft carry sensor noise it must not sharpen.
            context_share=0.5,
            context_kept=(Degradation.HAZE,),
            context_after=(
                Degradation.MOTION_BLUR,
                Degradation.LOW_RESOLUTION,
                Degradation.LOW_LIGHT,
                Degradation.NOISE,
                Degradation.JPEG,
            ),
            context_only_share=0.1,
            capture_share=0.3,
            capture_only_share=0.15,
            capture_deblock_share=0.5,
        ),
        Task(
            "upscale",
            Degradation.LOW_RESOLUTION,
            "detail restoration of images upsampled from 2x-4x lower resolution (same-size input and output)",
            "severity",
            SEVERITY_BANDS,
            ("upscale_detail", "deblur_wiener"),
            # Real photos read as soft carry sensor noise: half the draws add it, and some are only noisy
            # (the upscaler must then leave detail alone rather than sharpen the grain); half of those noisy
            # draws are deblocked first, as the agent's JPEG step leaves a photo before the upscaler.
            capture_share=0.5,
            capture_only_share=0.15,
            capture_deblock_share=0.5,
            # In a mixture the lower resolution arose after the optics' blur (AgenticIR's motion or defocus with
            # lower resolution), which the upscaler removes with it, as blind super-resolution does; haze and rain
            # stay for the dehazing and deraining steps after it, and low light, noise and JPEG are undone first.
            context_share=0.4,
            context_kept=(Degradation.HAZE, Degradation.RAIN),
            context_removed=(Degradation.DEFOCUS_BLUR, Degradation.MOTION_BLUR),
            context_after=(Degradation.LOW_LIGHT, Degradation.NOISE, Degradation.JPEG),
            context_only_share=0.1,
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

    def sample_pair(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """A training pair ``(degraded, target, params)``: a random mixture and the clean image."""
        degraded, params = self.sample(clean, rng)
        return degraded, clean, params

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
