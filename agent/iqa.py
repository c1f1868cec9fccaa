"""No-reference image quality through pyiqa, offline-aware.

Only metrics whose weights are already on disk are created: pyiqa would otherwise try to
download them at first use, which fails (slowly) on machines without network. PIQE needs no
weights; NIQE needs ``niqe_modelparameters.mat`` which is looked for in pyiqa's download
cache, in ``$RESTORA_IQA_WEIGHTS``, in a configured folder, and in ``../shared/weights/pyiqa``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Weight files each metric needs (``None``: the metric needs none).
_WEIGHT_FILES: dict[str, str | None] = {
    "piqe": None,
    "niqe": "niqe_modelparameters.mat",
    "brisque": "brisque_svm_weights.pth",
}

#: Metrics computed here rather than by pyiqa (underwater colour/contrast measures; higher is better).
BUILTIN_METRICS = ("uiqm", "uciqe")

#: Longest side the metrics see; larger images are downscaled first so that scoring stays cheap.
MAX_SIDE = 768


def _candidate_weight_dirs(extra: str | Path | None) -> list[Path]:
    dirs: list[Path] = []
    if extra:
        dirs.append(Path(extra).expanduser())
    if os.environ.get("RESTORA_IQA_WEIGHTS"):
        dirs.append(Path(os.environ["RESTORA_IQA_WEIGHTS"]).expanduser())
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    dirs.append(torch_home / "hub" / "pyiqa")
    repo_root = Path(__file__).resolve().parents[1]
    dirs.append(repo_root.parent / "shared" / "weights" / "pyiqa")
    return dirs


def find_weights(metric: str, weights_dir: str | Path | None = None) -> Path | None:
    """Path of the weight file ``metric`` needs, or ``None`` when it is not on disk."""
    filename = _WEIGHT_FILES.get(metric)
    if filename is None:
        return None
    for folder in _candidate_weight_dirs(weights_dir):
        path = folder / filename
        if path.is_file():
            return path
    return None


def metric_available(metric: str, weights_dir: str | Path | None = None) -> tuple[bool, str]:
    """Whether ``metric`` can run offline here, and why not when it cannot."""
    if metric in BUILTIN_METRICS:
        return True, "computed by Restora (evals.underwater_metrics)"
    if metric not in _WEIGHT_FILES:
        return False, f"unknown metric {metric!r}; supported: {sorted([*_WEIGHT_FILES, *BUILTIN_METRICS])}"
    if _WEIGHT_FILES[metric] is None:
        return True, "needs no weights"
    path = find_weights(metric, weights_dir)
    if path is None:
        return False, (
            f"weights missing: put {_WEIGHT_FILES[metric]} in pyiqa's cache (~/.cache/torch/hub/pyiqa), "
            "in $RESTORA_IQA_WEIGHTS, or in the policy's iqa_weights_dir"
        )
    return True, str(path)


@dataclass
class IQAScore:
    """Scores of one image: raw values per metric and which direction is better."""

    values: dict[str, float]
    lower_better: dict[str, bool]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"values": self.values, "lower_better": self.lower_better}


class NoReferenceIQA:
    """A set of pyiqa no-reference metrics, created lazily and only when their weights exist."""

    def __init__(self, metrics: list[str], weights_dir: str | Path | None = None, device: str = "cpu") -> None:
        self.requested = list(metrics)
        self.weights_dir = weights_dir
        self.device = device
        self.unavailable: dict[str, str] = {}
        self._metrics: dict[str, Any] | None = None

    def _setup(self) -> dict[str, Any]:
        if self._metrics is not None:
            return self._metrics
        import pyiqa

        self._metrics = {}
        for name in self.requested:
            ok, why = metric_available(name, self.weights_dir)
            if not ok:
                self.unavailable[name] = why
                logger.warning("IQA metric %s unavailable: %s", name, why)
                continue
            if name in BUILTIN_METRICS:
                from evals import underwater_metrics

                self._metrics[name] = getattr(underwater_metrics, name)
                continue
            kwargs: dict[str, Any] = {}
            weights = find_weights(name, self.weights_dir)
            if weights is not None:
                kwargs["pretrained_model_path"] = str(weights)
            try:
                self._metrics[name] = pyiqa.create_metric(name, device=self.device, **kwargs)
            except Exception as exc:  # pyiqa raises many kinds; one metric must not stop the run
                self.unavailable[name] = f"failed to load: {type(exc).__name__}: {exc}"
                logger.warning("IQA metric %s failed to load: %s", name, exc)
        return self._metrics

    @property
    def active(self) -> list[str]:
        """Metrics that loaded and will be scored."""
        return list(self._setup())

    def score(self, image: np.ndarray) -> IQAScore:
        """Score ``image`` (float32 HxWx3 in [0, 1]) with every available metric."""
        import torch

        metrics = self._setup()
        h, w = image.shape[:2]
        if max(h, w) > MAX_SIDE:
            import cv2

            f = MAX_SIDE / max(h, w)
            image = cv2.resize(image, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(self.device)
        values: dict[str, float] = {}
        lower: dict[str, bool] = {}
        for name, metric in metrics.items():
            if name in BUILTIN_METRICS:
                values[name] = float(metric(np.clip(image, 0.0, 1.0)))
                lower[name] = False
                continue
            try:
                with torch.no_grad():
                    value = float(metric(tensor).item())
            except Exception as exc:
                logger.warning("IQA metric %s failed on an image: %s", name, exc)
                continue
            if np.isfinite(value):
                values[name] = value
                lower[name] = bool(metric.lower_better)
        return IQAScore(values=values, lower_better=lower)


def relative_change(before: IQAScore, after: IQAScore) -> dict[str, float]:
    """Per metric, the relative improvement from ``before`` to ``after`` (positive = better).

    The direction comes from pyiqa's ``lower_better``, never assumed.
    """
    out: dict[str, float] = {}
    for name, b in before.values.items():
        if name not in after.values:
            continue
        a = after.values[name]
        scale = max(abs(b), 1e-6)
        delta = (b - a) / scale if before.lower_better[name] else (a - b) / scale
        out[name] = float(delta)
    return out
