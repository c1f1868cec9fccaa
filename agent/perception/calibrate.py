"""Calibrate the estimator assessor on synthetic degradations of the calibration split (BSD100 only).

Run ``python -m agent.perception.calibrate [--shared PATH] [--samples N] [--out FILE]``. It

1. draws seeded random crops of the BSD100 photos (the evaluation sets LIVE1, McMaster and Set14 are
   never read here) and degrades them with :mod:`evals.synthesis`: clean crops, single degradations
   over the full severity ranges of the ``default`` and ``mio100`` presets, the 16 MiO100 combinations
   and random pairs and triples, so that the models learn how one degradation masks another;
2. measures every sample with :func:`agent.perception.estimators.measure`;
3. holds out every sample of 20 % of the photos, fits per type a logistic presence model, a ridge
   severity regression and the parameter regressions on the rest, and picks each decision threshold
   on out-of-fold probabilities (4 folds grouped by photo) so that at most ``--max-clean-fpr`` of
   clean crops of unseen photos are flagged, maximising F0.5 (precision first) under that cap;
4. prints held-out precision / recall / F1, the clean false-positive rate and the recall on
   MiO100-strength samples, and writes the JSON that :class:`EstimatorAssessor` loads.

The fitting code (:func:`fit_logistic`, :func:`fit_ridge`) is plain numpy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.degradations import Degradation
from agent.perception.assessor import (
    DEFAULT_CALIBRATION,
    PARAM_RANGES,
    PRESENCE_RULES,
    EstimatorAssessor,
    feature_matrix,
    mlp_forward,
)

logger = logging.getLogger(__name__)

D = Degradation

_BLUR_CUES = [
    "spec_b1",
    "spec_b2",
    "spec_b3",
    "spec_b4",
    "spec_cutoff",
    "grad_energy",
    "downup_2",
    "downup_4",
    "log:noise_sigma",
    "jpeg_blockiness",
]

#: The features of each type's models: the type's own cues plus the cues of what masks it.
TYPE_FEATURES: dict[Degradation, list[str]] = {
    D.NOISE: [
        "log:noise_sigma",
        "log:noise_sigma_gray",
        "log:noise_texture",
        "noise_chroma_ratio",
        "spec_b4",
        "jpeg_blockiness",
        "jpeg_periodicity",
        "lum_mean",
        "dark_fraction",
    ],
    D.MOTION_BLUR: [
        *_BLUR_CUES,
        "motion_anisotropy",
        "motion_anisotropy_mid",
        "motion_coherence",
        "rain_peak",
        "rain_ridge",
        "resample_p4",
    ],
    D.DEFOCUS_BLUR: [*_BLUR_CUES, "motion_anisotropy", "motion_coherence", "resample_p2", "resample_p4"],
    D.JPEG: [
        "jpeg_blockiness",
        "jpeg_periodicity",
        "jpeg_quality",
        "log:noise_sigma",
        "spec_b4",
    ],
    D.LOW_RESOLUTION: [*_BLUR_CUES, "resample_p2", "resample_p3", "resample_p4", "motion_anisotropy"],
    D.HAZE: [
        "dark_channel_mean",
        "dark_channel_p10",
        "dark_channel_top",
        "dark_channel_bottom",
        "haze_density",
        "haze_density_top",
        "black_level_middle",
        "black_level_bottom",
        "saturation_middle",
        "airlight",
        "saturation_mean",
        "saturation_top",
        "contrast_rms",
        "local_contrast",
        "local_contrast_top",
        "local_contrast_bottom",
        "lum_mean",
        "lum_p05",
        "lum_range",
        "spec_b1",
    ],
    D.RAIN: [
        "rain_energy",
        "rain_ridge",
        "log:rain_ridge_snr",
        "rain_peak",
        "rain_block_agreement",
        "rain_peak_coarse",
        "rain_block_agreement_coarse",
        "rain_elongation",
        "rain_length_ratio",
        "rain_asymmetry",
        "residual_asymmetry",
        "motion_anisotropy",
        "spec_b3",
        "grad_energy",
        "log:noise_sigma",
    ],
    D.RAINDROP: [
        "drop_area",
        "drop_count",
        "smooth_fraction",
        "sharpness_spread",
        "blurry_block_fraction",
        "rain_asymmetry",
        "residual_asymmetry",
        "rain_peak",
        "spec_b2",
        "spec_b3",
        "local_contrast",
        "cast_edge_spread",
        "log:noise_sigma",
    ],
    D.LOW_LIGHT: [
        "lum_mean",
        "lum_log_mean",
        "lum_median",
        "lum_p05",
        "lum_p95",
        "lum_p99",
        "value_p99",
        "value_p999",
        "bright_fraction",
        "black_fraction",
        "dark_fraction",
        "lum_range",
        "saturation_mean",
        "haze_density",
    ],
    D.COLOR_CAST: [
        "cast_gain_spread",
        "cast_edge_spread",
        "cast_white_offset",
        "cast_ab_offset",
        "cast_factor",
        "cast_r_gain",
        "cast_g_gain",
        "cast_b_gain",
        "saturation_mean",
        "lum_mean",
    ],
}

#: How each canonical parameter is produced: a ridge regression ("linear", optionally in log10 space,
#: on the type's features plus ``extra``; ``direct`` names a measurement that replaces it when below a
#: bound) or, for angles, the measurement with the smallest training error among ``candidates``.
PARAM_PLANS: dict[Degradation, dict[str, dict[str, Any]]] = {
    D.NOISE: {"sigma": {"kind": "linear", "transform": "log"}},
    D.MOTION_BLUR: {
        "length": {"kind": "linear", "transform": "log"},
        "angle": {"kind": "angle", "candidates": ["motion_block_angle", "motion_angle"]},
    },
    D.DEFOCUS_BLUR: {"radius": {"kind": "linear", "transform": "log"}},
    # the DCT lattice gives the IJG quality exactly when it is detected (below 100); else regress
    D.JPEG: {"quality": {"kind": "linear", "transform": "log", "direct": {"key": "jpeg_quality", "below": 100.0}}},
    D.LOW_RESOLUTION: {"scale": {"kind": "linear", "transform": "log"}},
    D.HAZE: {"density": {"kind": "linear"}, "airlight": {"kind": "linear", "extra": ["lum_p99"]}},
    D.RAIN: {"energy": {"kind": "linear"}, "angle": {"kind": "angle", "candidates": ["rain_angle"]}},
    D.RAINDROP: {"coverage": {"kind": "linear"}},
    D.LOW_LIGHT: {"exposure": {"kind": "linear"}, "gain": {"kind": "linear", "transform": "log"}},
    D.COLOR_CAST: {
        "r_gain": {"kind": "linear", "transform": "log", "extra": ["log:cast_r_gain"]},
        "g_gain": {"kind": "linear", "transform": "log", "extra": ["log:cast_g_gain"]},
        "b_gain": {"kind": "linear", "transform": "log", "extra": ["log:cast_b_gain"]},
    },
}

#: Types whose MiO100-strength recall the brief asks to exceed 90 %.
RECALL_TARGETS = (D.NOISE, D.LOW_LIGHT, D.HAZE, D.JPEG, D.RAIN)


# --------------------------------------------------------------------------------------------
# fitting


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: float = 1.0,
    sample_weight: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-8,
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (IRLS); the intercept is not penalised.

    Args:
        x: (n, d) features (standardise them first so that one ``l2`` suits all).
        y: (n,) labels in {0, 1}.
        l2: Ridge penalty on the coefficients (an absolute weight, not divided by n).
        sample_weight: Optional (n,) non-negative weights.
        max_iter: Newton steps at most.
        tol: Stop when the largest parameter update is below this.

    Returns:
        ``(coef, intercept)`` such that ``P(y=1 | x) = sigmoid(x @ coef + intercept)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.eye(d + 1) * l2
    penalty[d, d] = 0.0
    theta = np.zeros(d + 1)
    prior = np.clip(np.average(y, weights=weights), 1e-6, 1 - 1e-6)
    theta[d] = math.log(prior / (1 - prior))
    for _ in range(max_iter):
        z = design @ theta
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
        gradient = design.T @ (weights * (p - y)) + penalty @ theta
        curvature = weights * p * (1 - p)
        hessian = design.T @ (design * curvature[:, None]) + penalty + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    return theta[:d], float(theta[d])


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, float]:
    """Ridge regression ``y ~ x @ coef + intercept`` (intercept not penalised); returns (coef, intercept)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    x_mean, y_mean = x.mean(axis=0), float(y.mean())
    xc = x - x_mean
    coef = np.linalg.solve(xc.T @ xc + l2 * np.eye(d), xc.T @ (y - y_mean))
    return coef, y_mean - float(x_mean @ coef)


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (floored so constant columns stay finite)."""
    return x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)


def choose_threshold(
    probability: np.ndarray, label: np.ndarray, is_clean: np.ndarray, max_clean_fpr: float, beta: float = 0.5
) -> float:
    """The decision threshold maximising F-beta subject to a clean-image false-positive rate cap.

    Args:
        probability: Predicted presence probabilities.
        label: True presence (0/1).
        is_clean: Marks the undegraded samples, whose positive rate is capped.
        max_clean_fpr: Largest allowed fraction of clean samples at or above the threshold.
        beta: F-beta weight; below 1 favours precision.

    Returns:
        A probability in (0, 1).
    """
    label = label.astype(bool)
    clean_probability = np.sort(probability[is_clean])[::-1]
    allowed = int(math.floor(max_clean_fpr * len(clean_probability)))
    floor = float(clean_probability[allowed]) + 1e-9 if allowed < len(clean_probability) else 0.0
    candidates = np.unique(np.concatenate([probability, [0.5]]))
    candidates = candidates[(candidates > floor) & (candidates > 0.02) & (candidates < 0.995)]
    if candidates.size == 0:
        return float(np.clip(max(floor, 0.5), 0.02, 0.995))
    best, best_score = float(candidates[0]), -1.0
    for t in candidates:
        predicted = probability >= t
        tp = float((predicted & label).sum())
        precision = tp / max(float(predicted.sum()), 1.0)
        recall = tp / max(float(label.sum()), 1.0)
        score = (1 + beta**2) * precision * recall / max(beta**2 * precision + recall, 1e-12)
        if score > best_score + 1e-12:
            best, best_score = float(t), score
    return best


# --------------------------------------------------------------------------------------------
# synthetic data


@dataclass
class Sample:
    """One synthetic calibration example: its measurements, labels and applied parameters."""

    measurements: dict[str, float]
    labels: list[str]
    applied: dict[str, dict[str, float]]
    preset: str
    kind: str
    image: str
    held_out: bool = False


@dataclass(frozen=True)
class _Task:
    index: int
    seed: int
    image_path: str
    held_out: bool


_IMAGE_CACHE: dict[str, np.ndarray] = {}


def _load(path: str) -> np.ndarray:
    if path not in _IMAGE_CACHE:
        from PIL import Image

        with Image.open(path) as handle:
            _IMAGE_CACHE[path] = np.asarray(handle.convert("RGB"), dtype=np.float32) / 255.0
    return _IMAGE_CACHE[path]


def _random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    ch = int(rng.integers(min(h, 224) // 8, h // 8 + 1)) * 8
    cw = int(rng.integers(min(w, 224) // 8, w // 8 + 1)) * 8
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = image[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _make_sample(task: _Task) -> Sample:
    """Synthesise and measure one sample (runs in worker processes)."""
    import cv2

    from agent.perception.estimators import measure
    from evals.synthesis import MIO100_COMBINATIONS, synthesize

    cv2.setNumThreads(1)
    rng = np.random.default_rng([task.seed, task.index])
    clean = _random_crop(_load(task.image_path), rng)
    draw = rng.random()
    types = list(Degradation)
    if draw < 0.15:
        kind, preset, chosen = "clean", "default", []
    elif draw < 0.50:
        kind = "single"
        preset = "mio100" if rng.random() < 0.35 else "default"
        chosen = [types[int(rng.integers(len(types)))]]
    elif draw < 0.70:
        kind, preset = "mio100", "mio100"
        combos = list(MIO100_COMBINATIONS.values())
        chosen = list(combos[int(rng.integers(len(combos)))])
    else:
        kind, preset = "mixture", "default"
        count = 2 if rng.random() < 0.6 else 3
        chosen = [types[i] for i in rng.choice(len(types), size=count, replace=False)]
    if chosen:
        result = synthesize(clean, chosen, seed=int(rng.integers(2**31)), preset=preset)
        image = result.image
        applied = {d.value: _numeric(p) for d, p in result.applied}
    else:
        image, applied = clean, {}
    return Sample(
        measurements=measure(image),
        labels=sorted(applied),
        applied=applied,
        preset=preset,
        kind=kind,
        image=Path(task.image_path).stem,
        held_out=task.held_out,
    )


def _numeric(params: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in params.items() if isinstance(v, (int, float, np.floating, np.integer))}


def calibration_images(shared: Path) -> list[Path]:
    """The calibration split (BSD100) of the shared clean photos; never the evaluation sets."""
    from evals.synthesis import clean_split

    images = clean_split(shared)["calibration"]
    if not images:
        raise FileNotFoundError(f"no calibration images under {shared}/data/clean/BSD100")
    return images


def build_dataset(
    shared: Path, samples: int, seed: int = 0, held_out_fraction: float = 0.2, workers: int | None = None
) -> list[Sample]:
    """Synthesise and measure ``samples`` examples from the calibration split (seeded, reproducible).

    The photos are split once (seeded) into a fitting part and a held-out part; every sample of a
    held-out photo is held out, so held-out scores never see a fitted photo.
    """
    from tqdm import tqdm

    images = calibration_images(shared)
    order = np.random.default_rng(seed).permutation(len(images))
    held_out = set(order[: int(round(held_out_fraction * len(images)))].tolist())
    picker = np.random.default_rng([seed, 1])
    chosen = picker.integers(len(images), size=samples)
    tasks = [_Task(i, seed, str(images[j]), int(j) in held_out) for i, j in enumerate(chosen)]
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    if workers == 1:
        return [_make_sample(t) for t in tqdm(tasks, desc="synthesise+measure")]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        return list(tqdm(pool.imap(_make_sample, tasks, chunksize=8), total=len(tasks), desc="synthesise+measure"))


# --------------------------------------------------------------------------------------------
# fitting all models


def _linear_spec(features: list[str], mean: np.ndarray, std: np.ndarray, coef: np.ndarray, intercept: float):
    return {
        "features": features,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "coef": coef.tolist(),
        "intercept": intercept,
    }


def _circular_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute difference of orientations in degrees, modulo 180 (0-90)."""
    diff = np.abs(np.mod(a - b, 180.0))
    return np.minimum(diff, 180.0 - diff)


def photo_folds(samples: Sequence[Sample], folds: int, seed: int) -> np.ndarray:
    """Per sample, its cross-validation fold: photos are assigned to folds (seeded), so no photo spans two."""
    photos = sorted({s.image for s in samples})
    fold_of_photo = dict(zip(photos, np.random.default_rng(seed).permutation(len(photos)) % folds, strict=True))
    return np.array([fold_of_photo[s.image] for s in samples])


def _layer_arrays(layers: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(layer["weight"]), np.asarray(layer["bias"])) for layer in layers]


def fit_models(
    train: Sequence[Sample], max_clean_fpr: float = 0.02, l2: float = 1.0, folds: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Fit presence, severity and parameter models for every degradation type on ``train``.

    The decision threshold of each presence model is chosen on out-of-fold probabilities
    (``folds``-fold cross-validation grouped by photo), so the clean false-positive cap holds for
    photos the model has not seen rather than for its own training photos.
    """
    rows = [s.measurements for s in train]
    is_clean = np.array([not s.labels for s in train])
    fold = photo_folds(train, folds, seed)
    models: dict[str, Any] = {}
    for degradation in Degradation:
        features = TYPE_FEATURES[degradation]
        x = feature_matrix(features, rows)
        y = np.array([degradation.value in s.labels for s in train], dtype=float)
        out_of_fold = np.zeros(len(train))
        for k in range(folds):
            part = fold != k
            mean_k, std_k = standardiser(x[part])
            coef_k, intercept_k = fit_logistic((x[part] - mean_k) / std_k, y[part], l2=l2)
            out_of_fold[~part] = 1.0 / (1.0 + np.exp(-(((x[~part] - mean_k) / std_k) @ coef_k + intercept_k)))
        threshold = choose_threshold(out_of_fold, y, is_clean, max_clean_fpr)
        mean, std = standardiser(x)
        z = (x - mean) / std
        coef, intercept = fit_logistic(z, y, l2=l2)
        presence = _linear_spec(features, mean, std, coef, intercept) | {"threshold": threshold}
        positive = y > 0.5
        severity_target = np.array(
            [s.applied[degradation.value]["severity"] for s in train if degradation.value in s.labels]
        )
        sev_coef, sev_intercept = fit_ridge(z[positive], severity_target, l2=l2)
        models[degradation.value] = {
            "presence": presence,
            "severity": _linear_spec(features, mean, std, sev_coef, sev_intercept),
            "params": _fit_params(degradation, [s for s in train if degradation.value in s.labels], l2),
        }
    return models


def _train_net(z: np.ndarray, y: np.ndarray, hidden: int, epochs: int, seed: int) -> list[dict[str, Any]]:
    """Train a two-hidden-layer multi-label MLP (BCE, AdamW, cosine schedule) on standardised inputs."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(z.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, y.shape[1])
    )
    x_t, y_t = torch.tensor(z, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    batch = 256
    steps = epochs * math.ceil(len(z) / batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for index in torch.randperm(len(z), generator=generator).split(batch):
            optimizer.zero_grad()
            loss = loss_fn(net(x_t[index]), y_t[index])
            loss.backward()
            optimizer.step()
            scheduler.step()
    linear = [m for m in net if isinstance(m, nn.Linear)]
    return [{"weight": m.weight.detach().double().tolist(), "bias": m.bias.detach().double().tolist()} for m in linear]


def fit_presence_net(
    train: Sequence[Sample],
    max_clean_fpr: float = 0.02,
    folds: int = 4,
    seed: int = 0,
    hidden: int = 64,
    epochs: int = 150,
) -> dict[str, Any]:
    """One multi-label MLP over every measurement (signed-log, standardised) for all presence decisions.

    The per-type logistic models see only each type's own cues; this network sees all of them, so it
    can learn how one degradation masks another (darkness under noise, haze under blur). Thresholds are
    chosen per type on out-of-fold probabilities exactly as for the linear models.
    """
    from agent.perception.assessor import signed_log

    features = sorted(train[0].measurements)
    types = list(Degradation)
    x = signed_log(np.array([[float(s.measurements[f]) for f in features] for s in train], dtype=np.float64))
    y = np.array([[d.value in s.labels for d in types] for s in train], dtype=np.float64)
    is_clean = np.array([not s.labels for s in train])
    fold = photo_folds(train, folds, seed)
    out_of_fold = np.zeros_like(y)
    for k in range(folds):
        part = fold != k
        mean_k, std_k = standardiser(x[part])
        layers = _train_net((x[part] - mean_k) / std_k, y[part], hidden, epochs, seed + k)
        out_of_fold[~part] = 1.0 / (1.0 + np.exp(-mlp_forward(_layer_arrays(layers), (x[~part] - mean_k) / std_k)))
    thresholds = {
        d.value: choose_threshold(out_of_fold[:, i], y[:, i], is_clean, max_clean_fpr) for i, d in enumerate(types)
    }
    mean, std = standardiser(x)
    layers = _train_net((x - mean) / std, y, hidden, epochs, seed)
    return {
        "features": features,
        "types": [d.value for d in types],
        "transform": "signed_log",
        "mean": mean.tolist(),
        "std": std.tolist(),
        "layers": layers,
        "thresholds": thresholds,
        "training": {"hidden": hidden, "epochs": epochs, "folds": folds, "loss": "binary cross-entropy"},
    }


def _fit_params(degradation: Degradation, positives: Sequence[Sample], l2: float) -> dict[str, Any]:
    plans = PARAM_PLANS[degradation]
    out: dict[str, Any] = {}
    rows = [s.measurements for s in positives]
    for name, plan in plans.items():
        target = np.array([s.applied[degradation.value].get(name, np.nan) for s in positives], dtype=np.float64)
        keep = np.isfinite(target)
        if plan["kind"] == "angle":
            best_key, best_error = plan["candidates"][0], math.inf
            for key in plan["candidates"]:
                measured = np.array([r[key] for r in rows])
                error = float(np.median(_circular_error(measured[keep], target[keep]))) if keep.any() else math.inf
                if error < best_error:
                    best_key, best_error = key, error
            out[name] = {"kind": "measurement", "key": best_key}
            continue
        if keep.sum() < 10:
            low, high = PARAM_RANGES[degradation][name]
            fallback = float(np.nanmedian(target)) if keep.any() else 0.5 * (low + high)
            out[name] = {"kind": "constant", "value": fallback}
            continue
        features = TYPE_FEATURES[degradation] + list(plan.get("extra", []))
        x = feature_matrix(features, rows)[keep]
        values = target[keep]
        if plan.get("transform") == "log":
            values = np.log10(np.maximum(values, 1e-4))
        mean, std = standardiser(x)
        coef, intercept = fit_ridge((x - mean) / std, values, l2=l2)
        spec = _linear_spec(features, mean, std, coef, intercept) | {"kind": "linear"}
        for option in ("transform", "direct"):
            if option in plan:
                spec[option] = plan[option]
        out[name] = spec
    return out


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate(assessor: EstimatorAssessor, samples: Sequence[Sample]) -> dict[str, Any]:
    """Held-out scores per type: precision, recall, F1, clean false-positive rate, MiO100 recall, errors."""
    reports = [assessor.assess_measurements(s.measurements) for s in samples]
    clean = np.array([not s.labels for s in samples])
    mio = np.array([s.preset == "mio100" for s in samples])
    scores: dict[str, Any] = {}
    for degradation in Degradation:
        name = degradation.value
        truth = np.array([name in s.labels for s in samples])
        prob = np.array([r.probability(degradation) for r in reports])
        predicted = prob >= 0.5
        tp = float((predicted & truth).sum())
        precision = tp / max(float(predicted.sum()), 1.0)
        recall = tp / max(float(truth.sum()), 1.0)
        entry: dict[str, Any] = {
            "positives": int(truth.sum()),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
            "clean_fpr": float(predicted[clean].mean()) if clean.any() else 0.0,
            "mio100_recall": float(predicted[truth & mio].mean()) if (truth & mio).any() else float("nan"),
            "auc": _auc(prob, truth),
        }
        positive_reports = [(s, r) for s, r in zip(samples, reports, strict=True) if name in s.labels]
        if positive_reports:
            sev_err = [abs(r.severity(degradation) - s.applied[name]["severity"]) for s, r in positive_reports]
            entry["severity_mae"] = float(np.mean(sev_err))
            entry["params"] = _param_errors(degradation, positive_reports)
        scores[name] = entry
    return scores


def _param_errors(degradation: Degradation, pairs: Sequence[tuple[Sample, Any]]) -> dict[str, float]:
    errors: dict[str, float] = {}
    for name in PARAM_PLANS[degradation]:
        truth = np.array([s.applied[degradation.value].get(name, np.nan) for s, _ in pairs], dtype=np.float64)
        guess = np.array([r.estimates[degradation].params.get(name, np.nan) for _, r in pairs], dtype=np.float64)
        keep = np.isfinite(truth) & np.isfinite(guess)
        if not keep.any():
            continue
        if name == "angle":
            errors[f"{name}_median_abs_deg"] = float(np.median(_circular_error(guess[keep], truth[keep])))
        elif PARAM_PLANS[degradation][name].get("transform") == "log":
            rel = np.abs(guess[keep] - truth[keep]) / np.maximum(np.abs(truth[keep]), 1e-6)
            errors[f"{name}_median_rel"] = float(np.median(rel))
        else:
            errors[f"{name}_mae"] = float(np.mean(np.abs(guess[keep] - truth[keep])))
    return errors


def _auc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic); NaN when one class is missing."""
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(score)  # ties share their average rank
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def format_scores(scores: Mapping[str, Any]) -> str:
    """A fixed-width table of :func:`evaluate`'s scores."""
    header = f"{'type':<15}{'pos':>5}{'prec':>7}{'rec':>7}{'F1':>7}{'AUC':>7}{'cleanFP':>9}{'MiO rec':>9}"
    lines = [header + f"{'sevMAE':>8}  params"]
    for name, e in scores.items():
        params = ", ".join(f"{k}={v:.3g}" for k, v in e.get("params", {}).items())
        lines.append(
            f"{name:<15}{e['positives']:>5}{e['precision']:>7.3f}{e['recall']:>7.3f}{e['f1']:>7.3f}{e['auc']:>7.3f}"
            f"{e['clean_fpr']:>9.3f}{e['mio100_recall']:>9.3f}{e.get('severity_mae', float('nan')):>8.3f}  {params}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line


def _default_shared() -> Path:
    return Path(__file__).resolve().parents[3] / "shared"


def calibrate(
    shared: Path,
    samples: int = 5000,
    out: Path = DEFAULT_CALIBRATION,
    seed: int = 0,
    workers: int | None = None,
    cache: Path | None = None,
    max_clean_fpr: float = 0.02,
    presence: str = "linear",
) -> dict[str, Any]:
    """Build the synthetic set, fit, evaluate on the held-out photos and write the calibration JSON.

    ``presence`` is ``"linear"`` (per-type logistic models only) or a rule of
    :data:`~agent.perception.assessor.PRESENCE_RULES` (``"net"``, ``"or"``, ``"mean"``): the multi-label
    presence network (:func:`fit_presence_net`) is added and decides presence alone or with the linear models.

    Returns:
        The JSON document that was written.
    """
    if cache is not None and cache.is_file():
        dataset = [Sample(**row) for row in json.loads(cache.read_text())]
        logger.info("loaded %d cached samples from %s", len(dataset), cache)
    else:
        dataset = build_dataset(shared, samples, seed=seed, workers=workers)
        if cache is not None:
            cache.write_text(json.dumps([asdict(s) for s in dataset]))
    train = [s for s in dataset if not s.held_out]
    held_out = [s for s in dataset if s.held_out]
    models = fit_models(train, max_clean_fpr=max_clean_fpr, seed=seed)
    document: dict[str, Any] = {"version": 1, "models": models}
    if presence != "linear":
        document["presence_net"] = fit_presence_net(train, max_clean_fpr=max_clean_fpr, seed=seed)
        document["presence_rule"] = presence
    assessor = EstimatorAssessor(document)
    scores = evaluate(assessor, held_out)
    train_scores = evaluate(assessor, train)
    logger.info("held-out scores (%d samples from unseen photos):\n%s", len(held_out), format_scores(scores))
    document["metadata"] = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "data": "BSD100 (calibration split) random crops, degraded with evals.synthesis",
        "seed": seed,
        "samples": len(dataset),
        "fit_samples": len(train),
        "held_out_samples": len(held_out),
        "held_out_images": sorted({s.image for s in held_out}),
        "counts": {kind: sum(s.kind == kind for s in dataset) for kind in ("clean", "single", "mio100", "mixture")},
        "max_clean_fpr_fit": max_clean_fpr,
        "threshold_rule": "per type: max F0.5 on 4-fold out-of-fold probabilities (grouped by photo) with at most "
        "max_clean_fpr_fit of clean crops flagged; probabilities are shifted so that 0.5 is that threshold",
        "held_out_scores": scores,
        "fit_scores_f1": {k: v["f1"] for k, v in train_scores.items()},
    }
    out.write_text(json.dumps(document, indent=1, default=_json_default) + "\n")
    logger.info("wrote %s", out)
    return document


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m agent.perception.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=_default_shared(), help="shared folder holding data/clean")
    parser.add_argument("--samples", type=int, default=5000, help="synthetic samples to draw (default 5000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_CALIBRATION, help="calibration JSON to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--cache", type=Path, default=None, help="reuse / store the measured samples here (JSON)")
    parser.add_argument("--max-clean-fpr", type=float, default=0.02, help="clean false-positive cap when fitting")
    parser.add_argument(
        "--presence",
        choices=("linear", *PRESENCE_RULES),
        default="linear",
        help=(
            "linear: per-type logistic models decide presence (default); net: one multi-label MLP over all "
            "measurements; or / mean: the MLP and the linear models together (either one / mean logit)"
        ),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    calibrate(
        args.shared, args.samples, args.out, args.seed, args.workers, args.cache, args.max_clean_fpr, args.presence
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
