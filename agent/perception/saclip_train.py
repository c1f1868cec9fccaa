"""Train SA-CLIP on degradations synthesised on the fly from the calibration split (BSD100).

Usage::

    python -m agent.perception.saclip_train [--backend default|hf-hub:<id>|local-dir:<folder>]
        [--steps N] [--out DIR] [--resume]

Every sample is a random crop of a calibration photo (random flips and quarter turns), degraded by
:func:`evals.synthesis.synthesize` with random severities: mostly one degradation, often a mixture of
two or three (half of them MiO100 combinations), sometimes none (the clean crop as the ``"no"`` example).
For a share of the degraded crops the clean crop rides along: it is a ``"no"`` example and the ground
truth of AutoDIR's semantic-agnostic loss. The loss is :func:`agent.perception.saclip.saclip_loss`.

With ``--p-real P`` a share P of the samples are crops of real degraded photos instead: the training part
of the real sets (:mod:`agent.perception.real_sets`; the evaluation scores only their held-out part),
each labelled with its set's dominant degradation and nothing else (the other types' presence and the
severity are unknown and do not count in the loss). SOTS' clean references (indoor scenes) join the
clean photos, which widens the content beyond BSD100's 90 photos.

With ``--p-restored P`` a share P are mixtures after the agent's first restoring step
(:class:`FirstStep`), labelled with the types left: the images the verifier judges, on which an
assessor trained only on unrestored crops may read a type left (haze, after a sharpening step) as new.

``--extra-clean PATH ...`` adds clean photos (files or folders) of other collections to the training
photos, e.g. one evaluation collection to measure what a second collection of content buys on the
others. The checkpoint records their names and :mod:`agent.perception.evaluate` never scores them.

Measuring a crop with the estimators (needed when the model takes them, ``--measurements``) costs ten
times its synthesis, so ``--cache N`` synthesises and measures N samples once, in parallel (``--workers``),
in resumable chunks under ``~/.cache/restora`` (``--cache-dir``), and training draws batches from them
(mirrored at random). The shipped default was trained that way::

    python -m agent.perception.saclip_train --measurements --cache 48000 --workers 2 --steps 4000 \
        --batch-size 64 --threads 2 --out agent/perception/weights/saclip

Everything is seeded; checkpoints (``saclip.json``, ``open_clip_config.json``, ``saclip.safetensors`` plus
``train_state.pt`` with the optimizer) are written every ``--save-every`` steps and ``--resume`` continues
from them. A fixed validation set made from the last ``--val-images`` calibration photos (never trained on)
is scored every ``--eval-every`` steps. The evaluation split is not touched here.

Fine-tuning published CLIP weights (AutoDIR used ViT-L/14; ViT-B/16 is a lighter start) takes the same
command. Get an open_clip folder once, e.g.
``huggingface-cli download laion/CLIP-ViT-B-16-laion2B-s34B-b88K --local-dir ~/clip/vit-b-16`` (it holds
``open_clip_config.json`` and ``open_clip_model.safetensors``), then, offline::

    python -m agent.perception.saclip_train --backend local-dir:~/clip/vit-b-16 --out runs/saclip-vitb16 \
        --lr 1e-4 --tower-lr 1e-5 --batch-size 64 --workers 8 --steps 3000

The text tower stays frozen, the image tower is fine-tuned at ``--tower-lr`` and the heads learn at
``--lr``; crops are taken at the tower's own input size (224 for ViT-B/16). ``hf-hub:<org/repo>`` works the
same way and reads only the local Hugging Face cache when ``HF_HUB_OFFLINE=1``. The checkpoint folder is
self-contained: ``restora assess --assessor saclip:runs/saclip-vitb16 IMAGE``.

The metric functions (:func:`confusion_matrix`, :func:`classification_scores`, :func:`multilabel_f1`,
:func:`severity_mae`, :func:`evaluate`) are shared with evaluation scripts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from agent.degradations import Degradation
from agent.perception import saclip
from agent.perception.saclip import CLASSES, TYPES, LossWeights, SAClipModel, saclip_loss

logger = logging.getLogger(__name__)

#: The shared folder next to the repository (``<repo>/../shared``).
DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"
TRAIN_STATE_FILE = "train_state.pt"
#: Held-out evaluation of a checkpoint (``python -m agent.perception.evaluate --write-card``), kept beside it.
EVALUATION_FILE = "evaluation.json"
_TYPE_INDEX = {d: i for i, d in enumerate(TYPES)}
#: Default sample mix: share of clean crops, of mixtures, and of degraded crops carrying their clean crop.
P_CLEAN, P_MIXED, P_WITH_CLEAN = 0.05, 0.3, 0.25
#: Learning rate of the heads and of towers trained from scratch.
LR = 2e-3
WARMUP = 200


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def draw_labels(rng: np.random.Generator, p_clean: float = P_CLEAN, p_mixed: float = P_MIXED) -> list[Degradation]:
    """Draw the degradations of one training sample: none, one, or a mixture of two or three."""
    from evals.synthesis import MIO100_COMBINATIONS

    u = rng.random()
    if u < p_clean:
        return []
    if u < p_clean + p_mixed:
        if rng.random() < 0.5:
            combos = list(MIO100_COMBINATIONS.values())
            return list(combos[int(rng.integers(len(combos)))])
        count = int(rng.integers(2, 4))
        return [TYPES[i] for i in rng.choice(len(TYPES), size=count, replace=False)]
    return [TYPES[int(rng.integers(len(TYPES)))]]


def targets_for(labels: Sequence[Degradation], severities: Mapping[Degradation, float]) -> dict[str, np.ndarray]:
    """Softmax target (uniform over the labels, or one-hot "no"), presence and severity vectors."""
    target = np.zeros(len(CLASSES), np.float32)
    presence = np.zeros(len(TYPES), np.float32)
    severity = np.zeros(len(TYPES), np.float32)
    if not labels:
        target[0] = 1.0
    for degradation in labels:
        i = _TYPE_INDEX[degradation]
        target[i + 1] = 1.0 / len(labels)
        presence[i] = 1.0
        severity[i] = float(np.clip(severities.get(degradation, 0.5), 0.0, 1.0))
    return {"target": target, "presence": presence, "severity": severity}


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size`` x ``size`` crop (reflect-padded when the image is smaller), randomly flipped and turned."""
    h, w = image.shape[:2]
    if h < size or w < size:
        image = np.pad(image, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), "reflect")
        h, w = image.shape[:2]
    top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    crop = image[top : top + size, left : left + size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, int(rng.integers(4)))
    return np.ascontiguousarray(crop, dtype=np.float32)


def jitter_content(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Vary a clean photo's look the way photos vary among themselves, so content is not learned as quality.

    At ``strength`` 1: per-channel gains within +-3 % (below the weakest synthetic colour cast, 5 %),
    a gamma within exp(+-0.1) and a saturation within +-20 %. The result is still a clean photo.
    """
    if strength <= 0:
        return image
    gains = np.exp(rng.uniform(-0.03, 0.03, size=3) * strength).astype(np.float32)
    gamma = float(np.exp(rng.uniform(-0.1, 0.1) * strength))
    saturation = float(1.0 + rng.uniform(-0.2, 0.2) * strength)
    out = np.clip(image * gains, 0.0, 1.0) ** gamma
    luminance = out @ np.array([0.299, 0.587, 0.114], np.float32)
    out = luminance[..., None] + saturation * (out - luminance[..., None])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def scaled_crop(image: np.ndarray, size: int, rng: np.random.Generator, min_scale: float = 1.0) -> np.ndarray:
    """A :func:`random_crop` of ``image`` seen at a random scale in ``[min_scale, 1]`` (area-averaged)."""
    if min_scale >= 1.0:
        return random_crop(image, size, rng)
    import cv2

    scale = float(rng.uniform(min_scale, 1.0))
    side = min(int(round(size / scale)), *image.shape[:2])
    crop = random_crop(image, max(side, size), rng)
    if crop.shape[0] == size:
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)


def make_sample(
    clean_image: np.ndarray,
    labels: Sequence[Degradation],
    size: int,
    rng: np.random.Generator,
    margin: int = 16,
    measurement_names: Sequence[str] = (),
    content_jitter: float = 0.0,
) -> dict[str, np.ndarray]:
    """Degrade a random crop of ``clean_image`` with ``labels`` and return tensors-to-be.

    The crop is taken ``margin`` pixels larger on each side and cut back after degrading, so blur and
    resampling see real image content at the borders. With ``content_jitter`` > 0 the clean crop is taken
    at a random scale (down to ``1 - 0.4 * content_jitter``) and passed through :func:`jitter_content`
    first: more distinct content from few photos.

    Returns:
        ``image`` and ``clean`` (3, S, S) float32, ``target`` (K,), ``presence`` (T,), ``severity`` (T,),
        and ``measurements`` / ``clean_measurements`` (M,) when ``measurement_names`` is given.
    """
    from evals.synthesis import synthesize

    big = scaled_crop(clean_image, size + 2 * margin, rng, 1.0 - 0.4 * content_jitter)
    big = jitter_content(big, rng, content_jitter)
    if labels:
        result = synthesize(big, labels, seed=int(rng.integers(2**31)))
        degraded = result.image
        severities = {d: float(p.get("severity", 0.5)) for d, p in result.applied}
    else:
        degraded, severities = big, {}
    return _cut_sample(degraded, big, labels, severities, margin, measurement_names)


def _cut_sample(
    degraded: np.ndarray,
    clean: np.ndarray,
    labels: Sequence[Degradation],
    severities: Mapping[Degradation, float],
    margin: int,
    measurement_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """The sample of a degraded crop and its clean crop, both ``margin`` pixels larger on each side than the sample."""
    cut = (slice(margin, degraded.shape[0] - margin), slice(margin, degraded.shape[1] - margin))
    degraded, clean = degraded[cut], clean[cut]
    sample = {"image": degraded.transpose(2, 0, 1).copy(), "clean": clean.transpose(2, 0, 1).copy()}
    sample.update(targets_for(labels, severities))
    if measurement_names:
        sample["measurements"] = measurement_row(degraded, measurement_names)
        sample["clean_measurements"] = measurement_row(clean, measurement_names)
    return sample


def make_real_sample(
    image: np.ndarray,
    label: Degradation,
    size: int,
    rng: np.random.Generator,
    measurement_names: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """A random crop of a real degraded photo whose dominant degradation ``label`` is all that is known of it.

    The softmax target is ``label``; presence is known for ``label`` only (``presence_known``) and its
    severity is unknown (-1). There is no clean crop, so ``clean`` repeats the image and is never used.
    """
    crop = random_crop(image, size, rng).transpose(2, 0, 1).copy()
    sample = {"image": crop, "clean": crop.copy()}
    sample.update(targets_for([label], {}))
    index = _TYPE_INDEX[label]
    sample["severity"][index] = -1.0
    known = np.zeros(len(TYPES), np.float32)
    known[index] = 1.0
    sample["presence_known"] = known
    if measurement_names:
        row = measurement_row(crop.transpose(1, 2, 0), measurement_names)
        sample["measurements"], sample["clean_measurements"] = row, row.copy()
    return sample


class FirstStep:
    """The agent's first restoring step on a degraded image, as :func:`restored_samples` and the stream take it.

    The type undone first is the earliest of the image's types in the policy's order prior; its first
    candidate tool runs with the parameters the estimator assessor's report suggests (the agent's tools take
    their parameters from the estimators). Tools and weights load on first use, once per process.
    """

    def __init__(self, policy: str = "default") -> None:
        from policies.schema import load_policy

        self.policy = load_policy(policy)
        self._registry: Any = None
        self._estimators: Any = None

    def __call__(
        self, image: np.ndarray, labels: Sequence[Degradation], report: Any = None
    ) -> tuple[Degradation, np.ndarray | None]:
        """``(type undone, restored image)``; the image is ``None`` when no tool applies, fails or resizes it."""
        from agent.perception.assessor import EstimatorAssessor
        from agent.planning.rule_planner import expand_candidates
        from tools import default_registry
        from tools.base import ToolError

        if self._registry is None:
            self._registry, self._estimators = default_registry(), EstimatorAssessor()
        first = min(labels, key=self.policy.order_prior.index)
        if report is None:
            report = self._estimators.assess(image)
        attempts = expand_candidates(self.policy, self._registry, first, report)
        if not attempts:
            return first, None
        try:
            restored = self._registry.get(attempts[0]["tool"])(image, attempts[0]["params"]).image
        except (ToolError, ValueError) as error:
            logger.info("no restored sample: %s", error)
            return first, None
        if restored.shape != image.shape:
            return first, None
        return first, np.clip(restored, 0.0, 1.0).astype(np.float32)


def make_restored_sample(
    clean_image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    first_step: Callable[..., tuple[Degradation, np.ndarray | None]],
    margin: int = 16,
    measurement_names: Sequence[str] = (),
) -> dict[str, np.ndarray] | None:
    """A mixture after the agent's first step, labelled with the degradations left: what the verifier judges.

    A crop carrying two or three degradations (:func:`draw_labels`) goes through ``first_step`` (a
    :class:`FirstStep`: ``(image, labels) -> (type undone, restored image or None)``) and is
    labelled with the other types and their synthesis severities. An assessor that sees only unrestored
    crops may read a type left on a restored image differently (haze, once a deblurring or upscaling step
    has sharpened the crop), and the verifier then holds that against a good step. ``None`` when the step
    does not apply.
    """
    from evals.synthesis import synthesize

    labels = draw_labels(rng, 0.0, 1.0)
    big = random_crop(clean_image, size + 2 * margin, rng)
    result = synthesize(big, labels, seed=int(rng.integers(2**31)))
    first, restored = first_step(result.image, labels)
    if restored is None:
        return None
    severities = {d: float(p.get("severity", 0.5)) for d, p in result.applied}
    left = [d for d in labels if d != first]
    return _cut_sample(restored, big, left, severities, margin, measurement_names)


def measurement_row(image: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The estimators' measurements of an (H, W, 3) float image, as a float32 vector in ``names`` order."""
    from agent.perception.estimators import measure

    values = measure(np.ascontiguousarray(image, dtype=np.float32))
    return np.array([values[k] for k in names], np.float32)


class SyntheticStream(torch.utils.data.IterableDataset):
    """An endless, seeded stream of :func:`make_sample` samples (each DataLoader worker its own stream).

    Args:
        images: Clean float32 RGB images.
        size: Crop side.
        seed: Base seed; ``start`` (the training step) and the worker id are mixed in, so a resumed run
            draws fresh but reproducible samples.
        start: Step the stream starts at.
        measurement_names: Also measure the crops with the estimators (when the model uses them).
        p_clean: Probability of a sample without degradation.
        p_mixed: Probability of a mixture of two or three.
        p_with_clean: Probability that a degraded sample carries its clean crop (SA term, "no" example).
        content_jitter: Scale and photometric variation of the clean crops (:func:`make_sample`).
        real: Real degraded photos with their dominant degradation (:func:`make_real_sample`).
        p_real: Probability that a sample is a crop of one of ``real``: a label drawn evenly among those
            present, then one of its photos (a large set of one label does not crowd out the others).
        p_restored: Probability that a sample is a mixture after the agent's first step
            (:func:`make_restored_sample`, with the default policy).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        size: int,
        seed: int = 0,
        start: int = 0,
        measurement_names: Sequence[str] = (),
        p_clean: float = P_CLEAN,
        p_mixed: float = P_MIXED,
        p_with_clean: float = P_WITH_CLEAN,
        content_jitter: float = 0.0,
        real: Sequence[tuple[np.ndarray, Degradation]] = (),
        p_real: float = 0.0,
        p_restored: float = 0.0,
    ) -> None:
        super().__init__()
        if not images:
            raise ValueError("no training images; pass the calibration photos (evals.synthesis.clean_split)")
        self.images = list(images)
        self.size, self.seed, self.start = size, seed, start
        self.measurement_names = list(measurement_names)
        self.p_clean, self.p_mixed, self.p_with_clean = p_clean, p_mixed, p_with_clean
        self.content_jitter = content_jitter
        by_label: dict[Degradation, list[np.ndarray]] = {}
        for photo, label in real:
            by_label.setdefault(label, []).append(photo)
        self.real_by_label = list(by_label.items())
        self.p_real = p_real if real else 0.0
        self.p_restored = p_restored

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield samples forever."""
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.start, worker])
        names, jitter = self.measurement_names, self.content_jitter
        first_step: FirstStep | None = None
        while True:
            if self.p_real and rng.random() < self.p_real:
                label, photos = self.real_by_label[int(rng.integers(len(self.real_by_label)))]
                image = photos[int(rng.integers(len(photos)))]
                sample = make_real_sample(image, label, self.size, rng, measurement_names=names)
                sample["has_clean"] = np.asarray(0.0, dtype=np.float32)
                yield sample
                continue
            image = self.images[int(rng.integers(len(self.images)))]
            if self.p_restored and rng.random() < self.p_restored:
                first_step = first_step or FirstStep()
                restored = make_restored_sample(image, self.size, rng, first_step, measurement_names=names)
                if restored is not None:
                    restored["has_clean"] = np.asarray(0.0, dtype=np.float32)
                    restored["presence_known"] = np.ones(len(TYPES), np.float32)
                    yield restored
                    continue
            labels = draw_labels(rng, self.p_clean, self.p_mixed)
            sample = make_sample(image, labels, self.size, rng, measurement_names=names, content_jitter=jitter)
            sample["has_clean"] = np.asarray(bool(labels) and rng.random() < self.p_with_clean, dtype=np.float32)
            sample["presence_known"] = np.ones(len(TYPES), np.float32)
            yield sample


# A pre-synthesised training set: measuring a crop with the estimators costs ~40 ms, ten times the
# synthesis, so training on the fly spends most of its time measuring. The cache measures each sample
# once, in parallel, in resumable chunks; training then draws batches from it.

CACHE_CHUNK = 500
_CACHE_IMAGES: list[np.ndarray] = []


def _cache_chunk(args: tuple[int, int, int, list[str], tuple[float, float, float], float]) -> dict[str, np.ndarray]:
    """Synthesise chunk ``index`` of a cache (runs in a worker; the photos are inherited at fork)."""
    index, size, seed, names, (p_clean, p_mixed, p_with_clean), content_jitter = args
    rng = np.random.default_rng([seed, 4242, index])
    rows: dict[str, list[np.ndarray]] = {}
    for _ in range(CACHE_CHUNK):
        image = _CACHE_IMAGES[int(rng.integers(len(_CACHE_IMAGES)))]
        labels = draw_labels(rng, p_clean, p_mixed)
        sample = make_sample(image, labels, size, rng, content_jitter=content_jitter)
        # quantise as a camera file would, then measure what the model will see
        degraded = np.round(np.clip(sample["image"], 0, 1) * 255).astype(np.uint8)
        clean = np.round(np.clip(sample["clean"], 0, 1) * 255).astype(np.uint8)
        has_clean = bool(labels) and rng.random() < p_with_clean
        row = {
            "image": degraded,
            "clean": clean,
            "target": sample["target"],
            "presence": sample["presence"],
            "severity": sample["severity"],
            "has_clean": np.asarray(has_clean, np.float32),
        }
        if names:
            row["measurements"] = measurement_row(degraded.transpose(1, 2, 0).astype(np.float32) / 255.0, names)
            row["clean_measurements"] = (
                measurement_row(clean.transpose(1, 2, 0).astype(np.float32) / 255.0, names)
                if has_clean
                else np.zeros(len(names), np.float32)
            )
        for key, value in row.items():
            rows.setdefault(key, []).append(value)
    return {key: np.stack(values) for key, values in rows.items()}


def build_cache(
    folder: Path,
    images: Sequence[np.ndarray],
    count: int,
    size: int,
    seed: int,
    measurement_names: Sequence[str] = (),
    workers: int = 1,
    probabilities: tuple[float, float, float] = (P_CLEAN, P_MIXED, P_WITH_CLEAN),
    content_jitter: float = 0.0,
) -> dict[str, np.ndarray]:
    """Synthesise (or reload) ``count`` training samples into ``folder`` and return them as arrays.

    Samples are made in chunks of :data:`CACHE_CHUNK`, each seeded by ``(seed, chunk)`` and saved as
    ``chunk_NNNNN.npz`` as soon as it is done, so an interrupted build resumes where it stopped and the
    result does not depend on ``workers``. ``meta.json`` records the settings; a folder made with other
    settings is refused rather than mixed.

    Args:
        folder: Cache folder (not inside the checkpoint folder: it holds gigabytes).
        images: Clean training photos (float32 RGB).
        count: Number of samples, rounded up to whole chunks.
        size: Crop side.
        seed: Base seed.
        measurement_names: Also store the estimators' measurements of each crop (and of its clean crop).
        workers: Worker processes (fork).
        probabilities: ``(p_clean, p_mixed, p_with_clean)`` as in :class:`SyntheticStream`.
        content_jitter: Scale and photometric variation of the clean crops (:func:`make_sample`).

    Returns:
        ``image`` / ``clean`` uint8 ``(N, 3, S, S)``, ``target``, ``presence``, ``severity``, ``has_clean``
        and, with measurements, ``measurements`` / ``clean_measurements``.
    """
    import multiprocessing

    from tqdm import tqdm

    global _CACHE_IMAGES
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "size": size,
        "seed": seed,
        "chunk": CACHE_CHUNK,
        "measurement_names": list(measurement_names),
        "probabilities": list(probabilities),
        "images": len(images),
    }
    if content_jitter:
        meta["content_jitter"] = content_jitter
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        existing = json.loads(meta_path.read_text())
        if existing != meta:
            raise ValueError(f"{folder} holds a cache made with other settings ({existing}); pick another folder")
    else:
        meta_path.write_text(json.dumps(meta, indent=2))
    chunks = math.ceil(count / CACHE_CHUNK)
    todo = [i for i in range(chunks) if not (folder / f"chunk_{i:05d}.npz").is_file()]
    if todo:
        _CACHE_IMAGES = list(images)
        jobs = [(i, size, seed, list(measurement_names), probabilities, content_jitter) for i in todo]
        bar = tqdm(total=len(todo) * CACHE_CHUNK, desc="synthesising", unit="sample")
        context = multiprocessing.get_context("fork")
        with context.Pool(max(1, workers)) if workers > 1 else _InlinePool() as pool:
            for index, arrays in zip(todo, pool.imap(_cache_chunk, jobs), strict=True):
                tmp = folder / f"chunk_{index:05d}.tmp.npz"
                np.savez(tmp, **arrays)
                tmp.replace(folder / f"chunk_{index:05d}.npz")
                bar.update(CACHE_CHUNK)
        bar.close()
        _CACHE_IMAGES = []
    parts = [dict(np.load(folder / f"chunk_{i:05d}.npz")) for i in range(chunks)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def default_cache_dir(
    size: int, seed: int, measurement_names: Sequence[str], p_clean: float = P_CLEAN, content_jitter: float = 0.0
) -> Path:
    """``~/.cache/restora/saclip-s<size>-seed<seed>[-measured][-clean<p>][-jitter<j>]``: one folder per setting."""
    suffix = "-measured" if measurement_names else ""
    suffix += f"-clean{p_clean:g}" if p_clean != P_CLEAN else ""
    suffix += f"-jitter{content_jitter:g}" if content_jitter else ""
    return Path.home() / ".cache" / "restora" / f"saclip-s{size}-seed{seed}{suffix}"


class _InlinePool:
    """The ``imap`` of a pool, run in this process (``workers`` <= 1)."""

    def __enter__(self) -> _InlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, function: Any, jobs: Sequence[Any]) -> Iterator[Any]:
        return (function(job) for job in jobs)


def cached_batch(cache: Mapping[str, np.ndarray], rng: np.random.Generator, batch_size: int) -> dict[str, torch.Tensor]:
    """A random batch from a :func:`build_cache` set, collated like the stream's (pixels back in [0, 1]).

    Half of the rows are mirrored left-right (the measurements do not depend on it).
    """
    rows = rng.integers(len(cache["image"]), size=batch_size)
    flip = rng.random(batch_size) < 0.5
    batch: dict[str, torch.Tensor] = {}
    for key, values in cache.items():
        chosen = values[rows]
        if key in ("image", "clean"):
            chosen = np.where(flip[:, None, None, None], chosen[..., ::-1], chosen).astype(np.float32) / 255.0
        batch[key] = torch.from_numpy(np.ascontiguousarray(chosen))
    return batch


def assemble_batch(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn collated samples into model inputs: degraded rows, then the clean rows that ride along.

    Returns:
        ``images``, ``targets``, ``presence``, ``severity``, ``presence_known`` (all ones when the samples
        carry none), optional ``measurements``, and ``sa_rows`` / ``sa_targets`` for
        :func:`~agent.perception.saclip.saclip_loss`.
    """
    keep = batch["has_clean"] > 0.5
    n, m = len(batch["image"]), int(keep.sum())
    known = batch.get("presence_known")
    if known is None:
        known = torch.ones(n, len(TYPES))
    clean_target = torch.zeros(m, len(CLASSES))
    clean_target[:, 0] = 1.0
    out = {
        "images": torch.cat([batch["image"], batch["clean"][keep]]),
        "targets": torch.cat([batch["target"], clean_target]),
        "presence": torch.cat([batch["presence"], torch.zeros(m, len(TYPES))]),
        "severity": torch.cat([batch["severity"], torch.zeros(m, len(TYPES))]),
        "presence_known": torch.cat([known, torch.ones(m, len(TYPES))]),
        "sa_rows": torch.arange(n, n + m),
        "sa_targets": batch["target"][keep],
    }
    if "measurements" in batch:
        out["measurements"] = torch.cat([batch["measurements"], batch["clean_measurements"][keep]])
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def training_step(
    model: SAClipModel,
    batch: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    weights: LossWeights = LossWeights(),  # noqa: B008 - frozen dataclass
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """One optimisation step on an assembled batch (:func:`assemble_batch`); returns the loss terms."""
    model.train()
    batch = {k: v.to(device) for k, v in batch.items()}
    outputs = model(batch["images"], batch.get("measurements"))
    losses = saclip_loss(
        outputs,
        batch["targets"],
        batch["presence"],
        batch["severity"],
        batch["sa_rows"],
        batch["sa_targets"],
        weights,
        presence_known=batch.get("presence_known"),
    )
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 5.0)
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def make_optimizer(model: SAClipModel, lr: float, tower_lr: float | None = None, weight_decay: float = 0.05) -> Any:
    """AdamW with the image tower at ``tower_lr`` (fine-tuning) and everything else at ``lr``."""
    tower = [p for n, p in model.named_parameters() if n.startswith("clip.visual.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("clip.visual.") and p.requires_grad]
    groups = [{"params": tower, "lr": tower_lr if tower_lr is not None else lr}, {"params": rest, "lr": lr}]
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def schedule_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % at ``progress`` 1 (a fraction of the run)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(max(progress, 0.0), 1.0)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> Any:
    """Linear warm-up then cosine decay to 5 % of the base rates, over ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, warmup, (step - warmup) / max(1, steps - warmup))
    )


def follow_time_budget(optimizer: torch.optim.Optimizer, step: int, warmup: int, elapsed: float, budget: float) -> None:
    """Set each group's rate to its base rate times :func:`schedule_factor` after ``elapsed`` of ``budget`` s."""
    factor = schedule_factor(step, warmup, elapsed / budget)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def confusion_matrix(
    true: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """``(n, n)`` counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def classification_scores(matrix: np.ndarray, names: Sequence[str] = CLASSES) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and macro F1 (over classes that occur) from a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(1.0, matrix.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
        },
    }


def multilabel_f1(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Micro and macro F1 of ``(N, T)`` boolean label matrices (macro over types that occur in ``true``)."""
    true, predicted = np.asarray(true, bool), np.asarray(predicted, bool)
    tp = (true & predicted).sum(axis=0).astype(np.float64)
    fp = (~true & predicted).sum(axis=0).astype(np.float64)
    fn = (true & ~predicted).sum(axis=0).astype(np.float64)
    micro_denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / micro_denominator) if micro_denominator > 0 else 1.0
    per_type_denominator = 2 * tp + fp + fn
    per_type = np.divide(2 * tp, per_type_denominator, out=np.ones_like(tp), where=per_type_denominator > 0)
    occurs = true.any(axis=0)
    return {"micro_f1": micro, "macro_f1": float(per_type[occurs].mean()) if occurs.any() else 1.0}


def severity_mae(true: np.ndarray, predicted: np.ndarray, present: np.ndarray) -> float:
    """Mean absolute severity error over the entries where the type is present (NaN when none is)."""
    mask = np.asarray(present, bool)
    return float(np.abs(np.asarray(true) - np.asarray(predicted))[mask].mean()) if mask.any() else float("nan")


def validation_set(
    images: Sequence[np.ndarray], size: int, seed: int, per_class: int, mixed: int = 0, measurement_names=()
) -> list[dict[str, np.ndarray]]:
    """A fixed synthetic set: ``per_class`` single-degradation crops per class (clean included) + ``mixed`` mixtures."""
    from evals.synthesis import MIO100_COMBINATIONS

    rng = np.random.default_rng(seed)
    combos = list(MIO100_COMBINATIONS.values())
    samples: list[dict[str, Any]] = []
    for j in range(per_class):
        for labels in [[], *([d] for d in TYPES)]:
            image = images[(j + len(samples)) % len(images)]
            samples.append(make_sample(image, labels, size, rng, measurement_names=measurement_names))
    for j in range(mixed):
        image = images[j % len(images)]
        samples.append(
            make_sample(image, list(combos[j % len(combos)]), size, rng, measurement_names=measurement_names)
        )
    return samples


def model_measurement_names(model: SAClipModel) -> list[str]:
    """The measurement keys ``model`` takes (empty when it takes none)."""
    return list(model.settings.measurement_names) if model.settings.use_measurements else []


def sample_labels(samples: Sequence[Mapping[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: the boolean presence row, the number of degradations, and the softmax class index.

    The class is 0 ("no") for a clean sample, else the (first) present type's index in :data:`CLASSES`;
    it is meaningful where the count is at most 1.
    """
    truth = np.stack([s["presence"] for s in samples]) > 0.5
    counts = truth.sum(axis=1)
    return truth, counts, np.where(counts == 0, 0, truth.argmax(axis=1) + 1)


@torch.no_grad()
def model_outputs(
    model: SAClipModel, samples: Sequence[Mapping[str, np.ndarray]], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """``logits``, ``presence_logits`` and ``severity`` of ``samples`` (eval mode, in batches) as arrays."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {"logits": [], "presence_logits": [], "severity": []}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = torch.from_numpy(np.stack([s["image"] for s in chunk])).to(device)
        extra = None
        if model.settings.use_measurements:
            extra = torch.from_numpy(np.stack([s["measurements"] for s in chunk])).to(device)
        out = model(images, extra)
        for key, values in parts.items():
            values.append(out[key].cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


@torch.no_grad()
def evaluate(model: SAClipModel, samples: Sequence[Mapping[str, np.ndarray]], batch_size: int = 64) -> dict[str, Any]:
    """Score samples from :func:`validation_set` or :func:`make_sample`.

    Returns:
        ``single``: :func:`classification_scores` of the softmax argmax on single-degradation and clean
        samples, with ``confusion``; ``clean_no_rate``: share of clean samples where "no" wins;
        ``multilabel``: :func:`multilabel_f1` of presence > 0.5 on mixtures; ``severity_mae`` on all.
    """
    outputs = model_outputs(model, samples, batch_size)
    probs = torch.from_numpy(outputs["logits"]).softmax(-1).numpy()
    pres = torch.sigmoid(torch.from_numpy(outputs["presence_logits"])).numpy()
    sev = outputs["severity"]
    true_presence, n_labels, true_class = sample_labels(samples)
    single = n_labels <= 1
    result: dict[str, Any] = {"n": len(samples)}
    if single.any():
        matrix = confusion_matrix(true_class[single], probs[single].argmax(1), len(CLASSES))
        result["single"] = {**classification_scores(matrix), "confusion": matrix.tolist()}
    clean = n_labels == 0
    result["clean_no_rate"] = float((probs[clean].argmax(1) == 0).mean()) if clean.any() else float("nan")
    mixed = n_labels >= 2
    if mixed.any():
        result["multilabel"] = multilabel_f1(true_presence[mixed], pres[mixed] > 0.5)
    result["multilabel_all"] = multilabel_f1(true_presence, pres > 0.5)
    result["severity_mae"] = severity_mae(np.stack([s["severity"] for s in samples]), sev, true_presence)
    return result


# ----------------------------------------------------------------------------------------------
# Output calibration
# ----------------------------------------------------------------------------------------------

BIAS_GRID = np.round(np.arange(-4.0, 4.01, 0.25), 2)


def raw_outputs(model: SAClipModel, samples: Sequence[Mapping[str, np.ndarray]], batch_size: int = 64) -> dict:
    """Prompt logits and presence logits of ``samples`` without the model's fitted biases."""
    saved = (model.settings.class_bias, model.settings.presence_bias)
    model.settings.class_bias, model.settings.presence_bias = [], []
    try:
        return model_outputs(model, samples, batch_size)
    finally:
        model.settings.class_bias, model.settings.presence_bias = saved


def fit_class_bias(logits: np.ndarray, true_class: np.ndarray, sweeps: int = 3) -> np.ndarray:
    """Per-class logit offsets that maximise balanced accuracy (mean recall) by coordinate ascent.

    Each sweep tries every value of :data:`BIAS_GRID` for each class in turn and keeps the best (ties
    go to the smaller offset), so the fit cannot do worse than no offsets on the data it sees.
    """
    n_classes = logits.shape[1]
    present = np.unique(true_class)

    def balanced_accuracy(bias: np.ndarray) -> float:
        predicted = (logits + bias).argmax(1)
        return float(np.mean([(predicted[true_class == c] == c).mean() for c in present]))

    bias = np.zeros(n_classes)
    best = balanced_accuracy(bias)
    for _ in range(sweeps):
        improved = False
        for c in range(n_classes):
            for value in sorted(BIAS_GRID, key=abs):
                trial = bias.copy()
                trial[c] = value
                score = balanced_accuracy(trial)
                if score > best + 1e-9:
                    best, bias, improved = score, trial, True
        if not improved:
            break
    return bias


def binary_f1(predicted: np.ndarray, present: np.ndarray) -> float:
    """F1 of boolean ``predicted`` against boolean ``present`` (0 when both are empty)."""
    tp = float((predicted & present).sum())
    return 2 * tp / max(float(predicted.sum() + present.sum()), 1.0)


def fit_presence_bias(presence_logits: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-type logit offsets moving each type's F1-best threshold to probability 0.5."""
    bias = np.zeros(presence_logits.shape[1])
    for j in range(presence_logits.shape[1]):
        if not truth[:, j].any():
            continue
        scores = [
            (binary_f1(presence_logits[:, j] + value > 0, truth[:, j]), -abs(value), value) for value in BIAS_GRID
        ]
        bias[j] = max(scores)[2]
    return bias


def fit_output_biases(model: SAClipModel, samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Fit and set the model's ``class_bias`` and ``presence_bias`` on held-out ``samples``.

    Class offsets are fitted on the single-degradation and clean samples (balanced accuracy), presence
    offsets on all samples (per-type F1). Returns the offsets and the before/after scores on ``samples``.
    """
    raw = raw_outputs(model, samples)
    truth, n_labels, true_class = sample_labels(samples)
    single = n_labels <= 1
    class_bias = fit_class_bias(raw["logits"][single], true_class[single])
    presence_bias = fit_presence_bias(raw["presence_logits"], truth)

    def accuracy(bias: np.ndarray) -> float:
        return float(((raw["logits"][single] + bias).argmax(1) == true_class[single]).mean())

    def micro_f1(bias: np.ndarray) -> float:
        return multilabel_f1(truth, raw["presence_logits"] + bias > 0)["micro_f1"]

    model.settings.class_bias = [round(float(v), 3) for v in class_bias]
    model.settings.presence_bias = [round(float(v), 3) for v in presence_bias]
    zero_c, zero_p = np.zeros_like(class_bias), np.zeros_like(presence_bias)
    return {
        "class_bias": dict(zip(CLASSES, model.settings.class_bias, strict=True)),
        "presence_bias": {d.value: v for d, v in zip(TYPES, model.settings.presence_bias, strict=True)},
        "samples": len(samples),
        "single_accuracy": {"before": accuracy(zero_c), "after": accuracy(class_bias)},
        "presence_micro_f1": {"before": micro_f1(zero_p), "after": micro_f1(presence_bias)},
    }


def calibrate_outputs(model: SAClipModel, images: Sequence[np.ndarray], seed: int, per_class: int, mixed: int) -> dict:
    """Draw a calibration set from ``images`` (held-out photos) and :func:`fit_output_biases` on it.

    ``per_class`` crops of every class alone (clean included) and ``mixed`` mixtures, half of them MiO100
    combinations and half any two or three types.
    """
    names = model_measurement_names(model)
    size = model.settings.image_size
    samples = validation_set(images, size, seed, per_class, mixed // 2, names)
    # the other half: mixtures of any two or three types (MiO100's never include colour cast or raindrop)
    rng = np.random.default_rng([seed, 31])
    for j in range(mixed - mixed // 2):
        labels = [TYPES[i] for i in rng.choice(len(TYPES), size=int(rng.integers(2, 4)), replace=False)]
        samples.append(make_sample(images[j % len(images)], labels, size, rng, measurement_names=names))
    return fit_output_biases(model, samples)


#: Candidate weights of the estimator assessor in the ``hybrid`` assessor, per type.
HYBRID_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Held-out crops per class for ``--hybrid-only`` when ``--hybrid-per-class`` is not given.
HYBRID_PER_CLASS = 30


def fit_hybrid_weights(
    saclip_probability: np.ndarray,
    estimator_probability: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float],
    grid: Sequence[float] = HYBRID_GRID,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Per type, the estimator weight whose blended probability detects the type best.

    For type ``j`` the blend ``(1 - w) * saclip + w * estimators`` is thresholded at ``thresholds[j]`` (the
    agent policy's presence threshold) and scored by F1 against ``truth[:, j]``; the best ``w`` of ``grid``
    wins, ties going to the weight nearest 0.5 (the even average). Arrays are (N, T).

    Returns:
        The weights (T,) and, per type, the F1 of SA-CLIP alone, of the estimators alone and of the blend.
    """
    weights = np.zeros(truth.shape[1])
    scores = []
    for j, threshold in enumerate(thresholds):
        present = truth[:, j].astype(bool)
        blends = [(1 - w) * saclip_probability[:, j] + w * estimator_probability[:, j] for w in grid]
        options = [
            (binary_f1(blend >= threshold, present), -abs(w - 0.5), w) for blend, w in zip(blends, grid, strict=True)
        ]
        best = max(options)
        weights[j] = best[2]
        scores.append(
            {
                "saclip": binary_f1(saclip_probability[:, j] >= threshold, present),
                "estimators": binary_f1(estimator_probability[:, j] >= threshold, present),
                "hybrid": best[0],
            }
        )
    return weights, scores


def restored_samples(
    mixtures: Sequence[Mapping[str, Any]], first_step: FirstStep, reports: Sequence[Any]
) -> list[dict[str, Any]]:
    """Each mixture after the step the agent would take first (``first_step``), labelled with the degradations left.

    The step takes its parameters from the mixture's report in ``reports`` (one per mixture, as the agent's
    perception would give). Mixtures whose step does not apply are skipped.
    """
    out = []
    for sample, report in zip(mixtures, reports, strict=True):
        labels = [Degradation(name) for name in sample["labels"]]
        first, restored = first_step(sample["image"], labels, report)
        if restored is None:
            continue
        left = [d.value for d in labels if d != first]
        out.append({"image": restored, "labels": left, "severity": {}, "source": sample.get("source", "")})
    return out


def calibrate_hybrid(
    model: SAClipModel,
    images: Sequence[np.ndarray],
    seed: int,
    per_class: int,
    mixed: int,
    policy: str = "default",
    size: int = 256,
) -> dict[str, Any]:
    """Fit and set ``model.settings.hybrid_weights`` on degraded crops of ``images`` (held-out photos).

    The crops (``per_class`` of every class alone, clean included, and ``mixed`` mixtures, drawn as by
    :func:`agent.perception.evaluate.synthetic_samples`), plus each mixture after the agent's first step
    (:func:`restored_samples`: the verifier judges such images, and a type that appears on them by mistake
    vetoes good steps), are assessed whole, by SA-CLIP and by the estimator assessor, as the agent would;
    each type's weight comes from :func:`fit_hybrid_weights` at the presence threshold of ``policy``.
    Returns the weights and the per-type F1 scores.
    """
    from tqdm import tqdm

    from agent.perception.assessor import EstimatorAssessor
    from agent.perception.evaluate import synthetic_samples

    first_step = FirstStep(policy)
    single, mixtures = synthetic_samples(
        [(f"held-out-{i}", image) for i, image in enumerate(images)], per_class, mixed, seed, size
    )
    estimators, clip_assessor = EstimatorAssessor(), saclip.SAClipAssessor(model)
    mixture_reports = [estimators.assess(sample["image"]) for sample in mixtures]
    samples = [*single, *mixtures, *restored_samples(mixtures, first_step, mixture_reports)]
    known = {len(single) + i: report for i, report in enumerate(mixture_reports)}  # assessed once, not twice
    sa_rows, est_rows = [], []
    for i, sample in enumerate(tqdm(samples, desc="hybrid calibration", unit="crop")):
        sa_report = clip_assessor.assess(sample["image"])
        est_report = known[i] if i in known else estimators.assess(sample["image"])
        sa_rows.append([sa_report.estimates[d].probability for d in TYPES])
        est_rows.append([est_report.estimates[d].probability for d in TYPES])
    truth = np.array([[d.value in s["labels"] for d in TYPES] for s in samples])
    weights, scores = fit_hybrid_weights(
        np.array(sa_rows), np.array(est_rows), truth, [first_step.policy.presence_threshold(d) for d in TYPES]
    )
    model.settings.hybrid_weights = {d.value: float(w) for d, w in zip(TYPES, weights, strict=True)}
    return {
        "weights": model.settings.hybrid_weights,
        "policy": policy,
        "samples": len(samples),
        "f1": {d.value: score for d, score in zip(TYPES, scores, strict=True)},
    }


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _load_split(shared: Path, val_images: int, max_side: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from evals.synthesis import clean_split, load_clean_images

    files = clean_split(shared)["calibration"]
    if len(files) <= val_images:
        raise ValueError(f"only {len(files)} calibration images; lower --val-images")
    images = [img for _, img in load_clean_images(files, crop=max_side, seed=None)]
    return images[:-val_images] if val_images else images, images[-val_images:] if val_images else []


def load_extra_clean(paths: Sequence[str | Path], max_side: int) -> list[tuple[str, np.ndarray]]:
    """The ``--extra-clean`` photos as ``(name, image)``, named ``"<folder>/<stem>"`` as the evaluation names them.

    Raises:
        FileNotFoundError: when a path does not exist or a folder holds no images.
    """
    from evals.synthesis import load_clean_images

    if not paths:
        return []
    named = load_clean_images(list(paths), crop=max_side, seed=None)
    if not named:
        raise FileNotFoundError(f"--extra-clean {' '.join(map(str, paths))}: no images found")
    return named


def _relative_or_given(path: str | Path, base: Path, prefix: str = "") -> str:
    """``path`` as ``prefix + <path relative to base>`` when it lies inside ``base``, else as given."""
    try:
        return prefix + Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training described by the parsed command-line ``args``; returns the last validation metrics."""
    from tqdm import tqdm

    if args.cache and args.p_restored > 0:
        raise ValueError("--p-restored draws samples on the fly; it does not work with --cache")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    state_path = out / TRAIN_STATE_FILE
    init_record: dict[str, Any] | None = None  # the training record of an --init-from checkpoint
    trained_extra: dict[str, list[str]] = {}  # --extra-clean names and sources of the run a --resume continues
    init_from = str(args.init_from) if args.init_from else None
    if args.resume and state_path.is_file():
        model = saclip.load_checkpoint(out, device=device)
        model.settings.class_bias, model.settings.presence_bias = [], []  # refitted after training
        init_record = model.settings.training.get("init_record")
        init_from = init_from or model.settings.training.get("init_from")
        trained_extra = {k: list(model.settings.training.get(k, [])) for k in ("extra_clean", "extra_clean_sources")}
        state = torch.load(state_path, map_location=device, weights_only=False)
        logger.info("resuming %s at step %d", out, state["step"])
    else:
        if args.resume:
            logger.warning("--resume: no %s in %s, starting fresh", TRAIN_STATE_FILE, out)
        if args.init_from:  # its architecture, measurement scaler and weights; a new optimizer and schedule
            model = saclip.load_checkpoint(args.init_from, device=device)
            model.settings.class_bias, model.settings.presence_bias = [], []  # refitted after training
            init_record = dict(model.settings.training)
            model.settings.half_weights = model.settings.half_weights or args.half_weights
        else:
            model = saclip.create_model(
                args.backend, use_measurements=args.measurements, crops=args.crops, half_weights=args.half_weights
            )
            model = model.to(device)
        state = None
    settings = model.settings
    published = settings.freeze_text
    tower_lr = args.lr * 0.1 if published and args.tower_lr is None else args.tower_lr
    optimizer = make_optimizer(model, args.lr, tower_lr)
    scheduler = cosine_schedule(optimizer, args.steps, args.warmup)
    step, seconds_before = 0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        seconds_before = float(settings.training.get("seconds", 0.0))

    train_images, val_images = _load_split(Path(args.shared), args.val_images, args.max_side)
    real_photos: list[tuple[np.ndarray, Degradation]] = []
    extra_clean: list[np.ndarray] = []
    if args.p_real > 0:
        from agent.perception.real_sets import load_real_training

        real_photos, extra_clean = load_real_training(Path(args.shared), args.max_side)
        if not real_photos:
            raise ValueError(f"--p-real {args.p_real:g}: no real training photos under {args.shared}/data")
        train_images = train_images + extra_clean
        logger.info("real training part: %d degraded photos, %d clean references", len(real_photos), len(extra_clean))
    extra_named = load_extra_clean(args.extra_clean, args.max_side)
    train_images = train_images + [image for _, image in extra_named]
    names = model_measurement_names(model)
    if settings.use_measurements and step == 0 and not args.init_from:
        _fit_measurement_scaler(model, train_images, settings.image_size, args.seed, names)
    val = validation_set(val_images, settings.image_size, args.seed + 1, args.val_per_class, args.val_mixed, names)
    loader: Iterable[Mapping[str, torch.Tensor]]
    if args.cache:
        cache_dir = (
            Path(args.cache_dir)
            if args.cache_dir
            else default_cache_dir(settings.image_size, args.seed, names, args.p_clean, args.content_jitter)
        )
        cache = build_cache(
            cache_dir,
            train_images,
            args.cache,
            settings.image_size,
            args.seed,
            names,
            max(1, args.workers),
            (args.p_clean, P_MIXED, P_WITH_CLEAN),
            args.content_jitter,
        )
        loader = (
            cached_batch(cache, np.random.default_rng([args.seed, 17, s]), args.batch_size)
            for s in itertools.count(step)
        )
    else:
        stream = SyntheticStream(
            train_images,
            settings.image_size,
            seed=args.seed,
            start=step,
            measurement_names=names,
            p_clean=args.p_clean,
            content_jitter=args.content_jitter,
            real=real_photos,
            p_real=args.p_real,
            p_restored=args.p_restored,
        )
        loader = torch.utils.data.DataLoader(
            stream, batch_size=args.batch_size, num_workers=args.workers, persistent_workers=args.workers > 0
        )
    weights = LossWeights(lambda_sa=args.lambda_sa, cross_entropy=args.ce_weight)
    record = {
        "backend": settings.backend,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu",
        "cache_samples": args.cache,
        "workers": args.workers,
        "init_from": init_from,
        "init_record": init_record,
        "p_clean": args.p_clean,
        "content_jitter": args.content_jitter,
        "train_photos": len(train_images),
        "validation_photos": len(val_images),
        "data": "calibration split of shared/data/clean (evals.synthesis.clean_split), last photos held out",
    }
    if args.p_restored > 0:
        record.update(
            p_restored=args.p_restored,
            data=record["data"] + f"; a share {args.p_restored:g} of the samples are mixtures after the agent's "
            "first step (default policy), labelled with the degradations left",
        )
    if args.p_real > 0:
        record.update(
            p_real=args.p_real,
            real_photos=len(real_photos),
            data=record["data"] + "; plus the training part of the real sets (agent.perception.real_sets): "
            f"{len(real_photos)} degraded photos labelled with their set's dominant degradation (p_real "
            f"{args.p_real:g}) and {len(extra_clean)} clean references added to the clean photos",
        )
    if extra_named or trained_extra.get("extra_clean"):  # a resumed run keeps the photos its weights saw
        # named as commands name the shared folder
        sources = [_relative_or_given(path, Path(args.shared), "../shared/") for path in args.extra_clean]
        extra_names = sorted({*trained_extra.get("extra_clean", []), *(name for name, _ in extra_named)})
        record.update(
            extra_clean=extra_names,
            extra_clean_sources=list(dict.fromkeys([*trained_extra.get("extra_clean_sources", []), *sources])),
            data=record["data"] + f"; plus {len(extra_names)} clean photos given with --extra-clean",
        )
    budget = args.time_budget
    if budget:
        record.update(time_budget_s=budget, max_steps=args.steps)
    metrics: dict[str, Any] = {}
    bar = tqdm(total=args.steps, initial=step, desc="saclip", unit="step")
    running: dict[str, float] = {}
    started = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - started

    def finished() -> bool:
        return step >= args.steps or bool(budget and elapsed() >= budget)

    for raw in loader:
        if step >= args.steps:  # a resumed run that had already finished
            break
        if budget:
            follow_time_budget(optimizer, step, args.warmup, elapsed(), budget)
        losses = training_step(model, assemble_batch(raw), optimizer, weights, device)
        if not budget:
            scheduler.step()
        step += 1
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in losses.items()}
        bar.update(1)
        bar.set_postfix(loss=f"{running['total']:.3f}", ce=f"{running['cross_entropy']:.3f}")
        last = finished()
        if step % args.eval_every == 0 or last:
            metrics = evaluate(model, val)
            bar.write(_summary(step, metrics))
        if step % args.save_every == 0 or last:
            record.update(steps=step, seconds=round(elapsed(), 1), validation=_brief(metrics))
            _save(model, optimizer, scheduler, step, out, record)
        if last:
            break
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    if args.calibrate_per_class > 0 and val_images:
        metrics = finish_calibration(model, out, val_images, val, args)
    else:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_model_card(out)
    return metrics


def finish_calibration(
    model: SAClipModel,
    out: Path,
    held_out: Sequence[np.ndarray],
    validation: Sequence[Mapping[str, np.ndarray]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Fit the output offsets on fresh crops of the held-out photos, re-validate, save, write the card."""
    fitted = calibrate_outputs(model, held_out, args.seed + 2, args.calibrate_per_class, args.calibrate_mixed)
    logger.info("output offsets: %s", fitted)
    metrics = evaluate(model, validation)
    record = dict(model.settings.training)
    record.update(output_calibration=fitted, validation=_brief(metrics))
    saclip.save_checkpoint(model, out, training=record)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / EVALUATION_FILE).unlink(missing_ok=True)  # the outputs changed: an earlier evaluation is stale
    write_model_card(out)
    if args.hybrid_per_class > 0:
        finish_hybrid(model, out, held_out, args)
    return metrics


def finish_hybrid(model: SAClipModel, out: Path, held_out: Sequence[np.ndarray], args: argparse.Namespace) -> dict:
    """Fit the hybrid assessor's per-type weights on fresh crops of the held-out photos and save them."""
    fitted = calibrate_hybrid(
        model, held_out, args.seed + 3, args.hybrid_per_class, 4 * args.hybrid_per_class, args.hybrid_policy
    )
    logger.info("hybrid weights: %s", fitted["weights"])
    record = dict(model.settings.training)
    record["hybrid_calibration"] = fitted
    saclip.save_checkpoint(model, out, training=record)
    # the SA-CLIP outputs did not change: a held-out evaluation already on the card stays valid
    evaluation_file = out / EVALUATION_FILE
    write_model_card(out, json.loads(evaluation_file.read_text()) if evaluation_file.is_file() else None)
    return fitted


def write_model_card(folder: Path, evaluation: Mapping[str, Any] | None = None) -> Path:
    """Write ``MODEL_CARD.md`` for the SA-CLIP checkpoint in ``folder``.

    Args:
        folder: A checkpoint folder (its ``saclip.json`` holds the training record, ``metrics.json`` the
            last validation).
        evaluation: A result of :func:`agent.perception.evaluate.evaluate_assessor` (held-out evaluation
            photos and real sets); ``None`` keeps the card's note on how to produce it.
    """
    settings = json.loads((folder / saclip.SETTINGS_FILE).read_text())
    record = settings.get("training", {})
    config = json.loads((folder / saclip.OPEN_CLIP_CONFIG_FILE).read_text())
    weights = folder / saclip.WEIGHTS_FILE
    vision = config.get("model_cfg", config).get("vision_cfg", {})
    validation = record.get("validation", {})
    lines = [
        f"# SA-CLIP `{_config_name(settings['backend'])}`: which degradations an image carries",
        "",
        f"open_clip config `{_config_name(settings['backend'])}` (ModifiedResNet image tower, width "
        f"{vision.get('width')}, "
        f"layers {vision.get('layers')}, input {settings['image_size']} px; two-layer text tower) plus presence and "
        f"severity heads{' and the estimators measurements MLP' if settings['use_measurements'] else ''}; "
        f"{weights.stat().st_size / 1e6:.1f} MB. At inference {settings['crops']} native-resolution crops "
        "are averaged.",
        "",
        "## Training",
        f"- Data: {record.get('data', 'n/a')}; {record.get('train_photos', '?')} photos trained on, "
        f"{record.get('validation_photos', '?')} held out for validation.",
        f"- {record.get('cache_samples') or 'on-the-fly'} synthesised samples (single degradations, mixtures of "
        "two or three, clean crops; AutoDIR's fidelity + semantic-agnostic losses, cross-entropy, presence BCE, "
        "severity L1).",
        f"- {record.get('steps')} steps, batch {record.get('batch_size')}, AdamW lr {record.get('lr')}, seed "
        f"{record.get('seed')}, {record.get('seconds')} s on {_device(record)}"
        + (f" (a {record['time_budget_s']:g} s time budget)." if record.get("time_budget_s") else "."),
        *_first_stage_line(record),
        f"- Reproduce: `{reproduce_command(settings, _card_path(folder))}`.",
        "",
        "## Validation (held-out calibration photos, synthetic)",
        "",
    ]
    lines += [f"- {key}: {value:.3f}" for key, value in validation.items() if isinstance(value, float)]
    hybrid = record.get("hybrid_calibration")
    if hybrid:
        lines += [
            "",
            "## Hybrid assessor (`--assessor hybrid`)",
            "",
            f"Per type, the weight of the estimators, fitted on {hybrid['samples']} crops of the held-out calibration "
            f"photos at the `{hybrid['policy']}` policy's presence thresholds.",
            "",
            "| type | estimator weight | F1 SA-CLIP | F1 estimators | F1 hybrid |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {weight:.2f} | {hybrid['f1'][name]['saclip']:.3f} | {hybrid['f1'][name]['estimators']:.3f} "
            f"| {hybrid['f1'][name]['hybrid']:.3f} |"
            for name, weight in hybrid["weights"].items()
        ]
    lines += ["", "## Held-out evaluation (evaluation photos and real sets)", ""]
    if evaluation is None:
        lines.append("Not run yet: `python -m agent.perception.evaluate --assessor saclip:<folder> --write-card`.")
    else:
        from agent.perception.evaluate import format_result

        lines += ["```", format_result(dict(evaluation)), "```"]
    path = folder / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _card_path(folder: Path) -> str:
    """How a card names its own folder: relative to the repository when inside it, else as given."""
    return _relative_or_given(folder, Path(__file__).resolve().parents[2])


def _first_stage_line(record: Mapping[str, Any]) -> list[str]:
    """The card line of the checkpoint a ``--init-from`` run started from (none for a run from scratch)."""
    first = record.get("init_record")
    if not first:
        return []
    return [
        f"- Started from the weights of a first stage: {first.get('steps')} steps, batch {first.get('batch_size')}, "
        f"AdamW lr {first.get('lr')}, {first.get('seconds')} s on {_device(first)}, "
        f"{first.get('cache_samples') or 'on-the-fly'} samples."
    ]


def _device(record: Mapping[str, Any]) -> str:
    device = record.get("device", "cpu")
    name = record.get("device_name")
    return f"{device} ({name})" if name and name != device else device


def _config_name(backend: str) -> str:
    return saclip.DEFAULT_MODEL_NAME if backend == "default" else backend


def reproduce_command(settings: Mapping[str, Any], out: str = "agent/perception/weights/saclip") -> str:
    """The training command that remakes a checkpoint, from its ``saclip.json`` settings (training record).

    A checkpoint trained ``--init-from`` another gets the commands of both stages, joined by ``&&``.
    """
    record = settings.get("training", {})
    first = record.get("init_record")
    stage = f"{reproduce_command({**settings, 'training': first}, record['init_from'])} && " if first else ""
    parts = [f"python -m agent.perception.saclip_train --backend {settings.get('backend', 'default')}"]
    parts.append(f"--out {out}")
    if settings.get("use_measurements"):
        parts.append("--measurements")
    if record.get("cache_samples"):
        parts.append(f"--cache {record['cache_samples']}")
    if record.get("time_budget_s"):
        steps = record.get("max_steps", record.get("steps"))
        parts.append(f"--time-budget {record['time_budget_s']:g} --steps {steps}")
    else:
        parts.append(f"--steps {record.get('steps')}")
    parts.append(f"--batch-size {record.get('batch_size')}")
    if record.get("lr") is not None and record["lr"] != LR:
        parts.append(f"--lr {record['lr']:g}")
    if record.get("workers"):
        parts.append(f"--workers {record['workers']}")
    if record.get("warmup", WARMUP) != WARMUP:
        parts.append(f"--warmup {record['warmup']}")
    if record.get("init_from"):
        parts.append(f"--init-from {record['init_from']}")
    if record.get("p_clean", P_CLEAN) != P_CLEAN:
        parts.append(f"--p-clean {record['p_clean']:g}")
    if record.get("content_jitter"):
        parts.append(f"--content-jitter {record['content_jitter']:g}")
    if record.get("p_real"):
        parts.append(f"--p-real {record['p_real']:g}")
    if record.get("p_restored"):
        parts.append(f"--p-restored {record['p_restored']:g}")
    if record.get("extra_clean_sources"):
        parts.append("--extra-clean " + " ".join(record["extra_clean_sources"]))
    if settings.get("half_weights") and not first:  # set once, at the first stage
        parts.append("--half-weights")
    return stage + " ".join(parts)


def _fit_measurement_scaler(model: SAClipModel, images, size: int, seed: int, names: Sequence[str]) -> None:
    rng = np.random.default_rng([seed, 7])
    rows = [
        make_sample(images[i % len(images)], draw_labels(rng), size, rng, measurement_names=names) for i in range(64)
    ]
    values = torch.from_numpy(np.stack([r["measurements"] for r in rows]))
    mean_buffer = cast(torch.Tensor, model.measurement_mean)
    std_buffer = cast(torch.Tensor, model.measurement_std)
    mean_buffer.copy_(values.mean(0))
    std_buffer.copy_(values.std(0).clamp_min(1e-4))


def _brief(metrics: Mapping[str, Any]) -> dict[str, Any]:
    single = metrics.get("single", {})
    return {
        "accuracy": single.get("accuracy"),
        "macro_f1": single.get("macro_f1"),
        "clean_no_rate": metrics.get("clean_no_rate"),
        "mixed_micro_f1": metrics.get("multilabel", {}).get("micro_f1"),
        "severity_mae": metrics.get("severity_mae"),
    }


def _summary(step: int, metrics: Mapping[str, Any]) -> str:
    brief = {k: round(v, 3) for k, v in _brief(metrics).items() if isinstance(v, float)}
    per_class = metrics.get("single", {}).get("per_class", {})
    f1 = " ".join(f"{name[:6]}={v['f1']:.2f}" for name, v in per_class.items())
    return f"step {step}: {brief}\n  F1: {f1}"


def _save(model, optimizer, scheduler, step: int, out: Path, record: Mapping[str, Any]) -> None:
    saclip.save_checkpoint(model, out, training=record)
    tmp = out / (TRAIN_STATE_FILE + ".tmp")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step}, tmp)
    tmp.replace(out / TRAIN_STATE_FILE)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m agent.perception.saclip_train``."""
    p = argparse.ArgumentParser(prog="python -m agent.perception.saclip_train", description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="default", help="default | hf-hub:<org/repo> | local-dir:<folder>")
    p.add_argument("--steps", type=int, default=6000, help="total optimisation steps (default 6000)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="train for this many seconds (resumed runs count the earlier ones); the cosine schedule follows "
        "the elapsed time and --steps becomes an upper bound",
    )
    p.add_argument("--out", default=str(saclip.DEFAULT_WEIGHTS_DIR), help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--init-from",
        default=None,
        help="start from the weights of this checkpoint folder (its architecture; --backend and --measurements "
        "are ignored) with a new optimizer and schedule",
    )
    p.add_argument("--shared", default=str(DEFAULT_SHARED), help="shared folder holding data/clean")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=LR, help="learning rate of heads (and towers trained from scratch)")
    p.add_argument("--tower-lr", type=float, default=None, help="image-tower rate (default: lr, or lr/10 if published)")
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--lambda-sa", type=float, default=1.0, help="weight of the semantic-agnostic loss")
    p.add_argument("--ce-weight", type=float, default=1.0, help="weight of the cross-entropy term")
    p.add_argument("--measurements", action="store_true", help="feed the estimators' measurements to the model")
    p.add_argument("--half-weights", action="store_true", help="store the weights in float16 (half the file)")
    p.add_argument("--crops", type=int, default=5, help="crops averaged at inference (stored in the checkpoint)")
    p.add_argument("--val-images", type=int, default=10, help="calibration images held out for validation")
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--val-mixed", type=int, default=64)
    p.add_argument("--max-side", type=int, default=512, help="photos are centre-cropped to this side when loaded")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--workers", type=int, default=0, help="processes synthesising samples (stream or cache)")
    p.add_argument(
        "--cache", type=int, default=0, help="train on N samples synthesised once (0: synthesise on the fly)"
    )
    p.add_argument("--cache-dir", default=None, help="where the --cache samples are kept (default ~/.cache/restora)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--p-clean", type=float, default=P_CLEAN, help="share of samples that are clean crops")
    p.add_argument(
        "--content-jitter",
        type=float,
        default=0.0,
        help="vary scale, channel gains, gamma and saturation of the clean crops (1: full; 0: off)",
    )
    p.add_argument(
        "--p-real",
        type=float,
        default=0.0,
        help="share of samples that are crops of the real sets' training part, labelled with the set's dominant "
        "degradation (agent.perception.real_sets; 0: synthetic only). SOTS' clean references join the clean "
        "photos",
    )
    p.add_argument(
        "--p-restored",
        type=float,
        default=0.0,
        help="share of samples that are mixtures after the agent's first step (default policy), labelled with "
        "the degradations left: what the verifier judges (not with --cache)",
    )
    p.add_argument(
        "--extra-clean",
        nargs="+",
        default=[],
        metavar="PATH",
        help="more clean photos (files or folders) to train on; the checkpoint records their names and the "
        "assessor evaluation leaves them out",
    )
    p.add_argument(
        "--calibrate-per-class",
        type=int,
        default=60,
        help="after training, fit the output offsets on this many held-out crops per class (0: skip)",
    )
    p.add_argument("--calibrate-mixed", type=int, default=200, help="held-out mixtures for the presence offsets")
    p.add_argument(
        "--calibrate-only", action="store_true", help="only fit the output offsets of the checkpoint in --out"
    )
    p.add_argument(
        "--hybrid-per-class",
        type=int,
        default=0,
        help="after the offsets, fit the hybrid assessor's per-type weights on this many held-out crops per "
        "class and four times as many mixtures (0: skip; the even average guided the agent better, see README)",
    )
    p.add_argument("--hybrid-policy", default="default", help="policy whose presence thresholds the hybrid fit uses")
    p.add_argument(
        "--hybrid-only",
        action="store_true",
        help=f"only fit the hybrid weights of the checkpoint in --out (--hybrid-per-class, default {HYBRID_PER_CLASS})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m agent.perception.saclip_train``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    if args.hybrid_only or args.calibrate_only:
        out = Path(args.out)
        model = saclip.load_checkpoint(out)
        _, held_out = _load_split(Path(args.shared), args.val_images, args.max_side)
    if args.hybrid_only:
        args.hybrid_per_class = args.hybrid_per_class or HYBRID_PER_CLASS
        finish_hybrid(model, out, held_out, args)
        return 0
    if args.calibrate_only:
        names = model_measurement_names(model)
        size = model.settings.image_size
        val = validation_set(held_out, size, args.seed + 1, args.val_per_class, args.val_mixed, names)
        metrics = finish_calibration(model, out, held_out, val, args)
    else:
        metrics = train(args)
    logger.info("final validation: %s", _brief(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
