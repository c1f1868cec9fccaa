"""Assessors: image -> :class:`~agent.report.DegradationReport`.

:class:`Assessor` is the protocol every assessor implements (the estimator assessor here, a trained
CLIP assessor later). :class:`EstimatorAssessor` runs the hand-crafted measurements of
:mod:`agent.perception.estimators` and maps them through per-type models calibrated on synthetic
degradations of the calibration split (:mod:`agent.perception.calibrate` writes the JSON it loads):

* presence: a logistic model over a few standardised features, shifted so that probability 0.5 is
  the operating threshold chosen for a low false-positive rate on clean images;
* severity: a ridge regression from the same features, clipped to [0, 1] (meaningful when present);
* parameters under the canonical names, each either read from a measurement or regressed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from agent.degradations import Degradation
from agent.perception.estimators import measure
from agent.report import DegradationEstimate, DegradationReport

logger = logging.getLogger(__name__)

#: The calibration shipped with the package (written by ``python -m agent.perception.calibrate``).
DEFAULT_CALIBRATION = Path(__file__).with_name("estimator_calibration.json")

#: Environment variable naming another calibration file for the estimator assessor.
CALIBRATION_ENV = "RESTORA_CALIBRATION"

#: Canonical parameter names per degradation and the range each value is clipped to.
PARAM_RANGES: dict[Degradation, dict[str, tuple[float, float]]] = {
    Degradation.NOISE: {"sigma": (0.0, 0.5)},
    Degradation.MOTION_BLUR: {"length": (1.0, 60.0), "angle": (0.0, 180.0)},
    Degradation.DEFOCUS_BLUR: {"radius": (0.5, 20.0)},
    Degradation.JPEG: {"quality": (1.0, 100.0)},
    Degradation.LOW_RESOLUTION: {"scale": (0.1, 1.0)},
    Degradation.HAZE: {"density": (0.0, 1.0), "airlight": (0.0, 1.0)},
    Degradation.RAIN: {"energy": (0.0, 1.0), "angle": (0.0, 180.0)},
    Degradation.RAINDROP: {"coverage": (0.0, 1.0)},
    Degradation.LOW_LIGHT: {"exposure": (0.0, 1.0), "gain": (1.0, 20.0)},
    Degradation.COLOR_CAST: {"r_gain": (0.2, 5.0), "g_gain": (0.2, 5.0), "b_gain": (0.2, 5.0)},
}

_LOG_FLOOR = 1e-4


@runtime_checkable
class Assessor(Protocol):
    """Anything that turns an image into a :class:`DegradationReport`."""

    name: str

    def assess(self, image: np.ndarray) -> DegradationReport:
        """Per-type probability, severity and parameters for ``image`` (float32 RGB in [0, 1])."""
        ...


def feature_value(name: str, measurements: Mapping[str, float]) -> float:
    """Evaluate one model feature: a measurement name, optionally prefixed by a transform.

    ``"log:key"`` is ``log10(max(value, 1e-4))``, ``"sq:key"`` the square of the value (for a
    quadratic term in a linear model) and a plain ``"key"`` is the value itself.

    Raises:
        KeyError: if the measurement does not exist (the calibration and the estimators disagree).
    """
    transform, _, key = name.rpartition(":")
    if key not in measurements:
        raise KeyError(
            f"feature {name!r} needs measurement {key!r}, which estimators.measure() does not produce; "
            "re-run python -m agent.perception.calibrate"
        )
    value = float(measurements[key])
    if transform == "log":
        return math.log10(max(value, _LOG_FLOOR))
    if transform == "sq":
        return value * value
    if transform:
        raise ValueError(f"unknown feature transform {transform!r} in {name!r}; known: log, sq")
    return value


def feature_matrix(names: list[str], rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Stack the features ``names`` of many measurement dicts into an (n, d) float64 array."""
    return np.array([[feature_value(n, row) for n in names] for row in rows], dtype=np.float64).reshape(
        len(rows), len(names)
    )


class LinearModel:
    """A linear function of standardised features, as stored in the calibration file."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.features: list[str] = list(spec["features"])
        self.mean = np.asarray(spec["mean"], dtype=np.float64)
        self.std = np.asarray(spec["std"], dtype=np.float64)
        self.coef = np.asarray(spec["coef"], dtype=np.float64)
        self.intercept = float(spec["intercept"])
        if not len(self.features) == len(self.mean) == len(self.std) == len(self.coef):
            raise ValueError("calibration model has features, mean, std and coef of different lengths")

    def __call__(self, measurements: Mapping[str, float]) -> float:
        """The linear score for one measurement dict."""
        x = np.array([feature_value(n, measurements) for n in self.features])
        return float(((x - self.mean) / self.std) @ self.coef + self.intercept)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


#: How a calibration's presence network and per-type linear models decide presence together: the network
#: alone, either of them (the larger threshold-shifted logit: more recall), or the mean of the two logits.
PRESENCE_RULES = ("net", "or", "mean")


def signed_log(values: np.ndarray) -> np.ndarray:
    """``sign(x) * log(1 + |x|)``: tames heavy-tailed measurements while keeping their sign and order."""
    return np.sign(values) * np.log1p(np.abs(values))


def mlp_forward(layers: Sequence[tuple[np.ndarray, np.ndarray]], inputs: np.ndarray) -> np.ndarray:
    """Dense layers ``(weight, bias)`` with ReLU between them, applied to ``inputs`` (rows of samples, or one)."""
    h = inputs
    for i, (weight, bias) in enumerate(layers):
        h = h @ weight.T + bias
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


class PresenceNet:
    """A small multi-label MLP over all measurements: one presence logit per degradation type.

    Stored in the calibration file as ``presence_net``: the measurement names, the standardisation of
    their signed logs, the layers (ReLU between them) and, per type, the decision threshold that
    becomes probability 0.5 (:mod:`agent.perception.calibrate` fits it).
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.features: list[str] = list(spec["features"])
        self.types: list[Degradation] = [Degradation(name) for name in spec["types"]]
        self.mean = np.asarray(spec["mean"], dtype=np.float64)
        self.std = np.asarray(spec["std"], dtype=np.float64)
        self.layers = [
            (np.asarray(layer["weight"], dtype=np.float64), np.asarray(layer["bias"], dtype=np.float64))
            for layer in spec["layers"]
        ]
        if not len(self.features) == len(self.mean) == len(self.std) or not self.layers:
            raise ValueError("presence_net: features, mean and std differ in length, or it has no layers")
        if self.layers[0][0].shape[1] != len(self.features) or self.layers[-1][0].shape[0] != len(self.types):
            raise ValueError("presence_net: layer shapes do not match its features and types")
        thresholds = spec.get("thresholds", {})
        self.logit_shift = {
            d: math.log(float(thresholds.get(d.value, 0.5)) / (1.0 - float(thresholds.get(d.value, 0.5))))
            for d in self.types
        }

    def logits(self, measurements: Mapping[str, float]) -> dict[Degradation, float]:
        """Per type, the presence logit with the type's threshold moved to 0."""
        x = np.array([float(measurements[name]) if name in measurements else np.nan for name in self.features])
        if np.isnan(x).any():
            missing = [n for n, v in zip(self.features, x, strict=True) if np.isnan(v)]
            raise KeyError(
                f"presence_net needs measurements {missing[:5]}; re-run python -m agent.perception.calibrate"
            )
        h = mlp_forward(self.layers, (signed_log(x) - self.mean) / self.std)
        return {d: float(h[i]) - self.logit_shift[d] for i, d in enumerate(self.types)}


class _TypeModel:
    """Presence, severity and parameter models of one degradation type."""

    def __init__(self, degradation: Degradation, spec: Mapping[str, Any]) -> None:
        self.degradation = degradation
        self.presence = LinearModel(spec["presence"])
        threshold = float(spec["presence"].get("threshold", 0.5))
        self.logit_shift = math.log(threshold / (1.0 - threshold))
        self.severity = LinearModel(spec["severity"])
        self.params: dict[str, dict[str, Any]] = {}
        for name, param_spec in spec.get("params", {}).items():
            entry = dict(param_spec)
            if entry["kind"] == "linear":
                entry["model"] = LinearModel(param_spec)
            elif entry["kind"] not in ("measurement", "constant"):
                raise ValueError(f"{degradation.value}.{name}: unknown parameter kind {entry['kind']!r}")
            self.params[name] = entry

    def estimate(self, measurements: Mapping[str, float], logit: float | None = None) -> DegradationEstimate:
        """Presence, severity and parameters; ``logit`` (from a :class:`PresenceNet`) replaces the linear presence."""
        if logit is None:
            logit = self.presence(measurements) - self.logit_shift
        probability = _sigmoid(logit)
        severity = float(np.clip(self.severity(measurements), 0.0, 1.0))
        params = {name: self._param(name, entry, measurements) for name, entry in self.params.items()}
        return DegradationEstimate(probability=probability, severity=severity, params=params)

    def _param(self, name: str, entry: Mapping[str, Any], measurements: Mapping[str, float]) -> float:
        if entry["kind"] == "constant":
            value = float(entry["value"])
        elif entry["kind"] == "measurement":
            value = float(entry.get("scale", 1.0)) * feature_value(entry["key"], measurements)
            value += float(entry.get("offset", 0.0))
        else:
            value = entry["model"](measurements)
            if entry.get("transform") == "log":
                value = 10.0**value
        direct = entry.get("direct")
        if direct is not None and feature_value(direct["key"], measurements) < float(direct["below"]):
            value = feature_value(direct["key"], measurements)  # an exact reading beats the regression
        low, high = PARAM_RANGES.get(self.degradation, {}).get(name, (-math.inf, math.inf))
        return float(np.clip(value, low, high))


class EstimatorAssessor:
    """Hand-crafted measurements mapped to calibrated per-type probabilities, severities and parameters.

    Args:
        calibration: Path of the calibration JSON, or the already-loaded dict; ``None`` uses the
            file named by ``$RESTORA_CALIBRATION``, else the one shipped with the package
            (:data:`DEFAULT_CALIBRATION`).
        max_pixels: Passed to :func:`~agent.perception.estimators.measure`.

    Raises:
        FileNotFoundError: if the calibration file is missing (the message says how to create it).
    """

    name = "estimators"

    def __init__(self, calibration: Path | str | Mapping[str, Any] | None = None, max_pixels: int = 1_000_000):
        if isinstance(calibration, Mapping):
            data = dict(calibration)
            self.calibration_path: Path | None = None
        else:
            default = os.environ.get(CALIBRATION_ENV) or DEFAULT_CALIBRATION
            path = Path(calibration) if calibration is not None else Path(default)
            if not path.is_file():
                raise FileNotFoundError(
                    f"estimator calibration {path} not found; create it with "
                    "`python -m agent.perception.calibrate` (needs the BSD100 images under shared/data/clean)"
                )
            data = json.loads(path.read_text())
            self.calibration_path = path
        self.max_pixels = max_pixels
        self.metadata: dict[str, Any] = dict(data.get("metadata", {}))
        models = data.get("models", {})
        self.models: dict[Degradation, _TypeModel] = {}
        for degradation in Degradation:
            if degradation.value not in models:
                raise ValueError(
                    f"calibration has no model for {degradation.value}; re-run python -m agent.perception.calibrate"
                )
            self.models[degradation] = _TypeModel(degradation, models[degradation.value])
        self.presence_net = PresenceNet(data["presence_net"]) if data.get("presence_net") else None
        self.presence_rule = str(data.get("presence_rule", "net"))
        if self.presence_rule not in PRESENCE_RULES:
            raise ValueError(f"unknown presence_rule {self.presence_rule!r}; known: {', '.join(PRESENCE_RULES)}")

    def assess(self, image: np.ndarray) -> DegradationReport:
        """Measure ``image`` and report every degradation type (see :meth:`assess_measurements`)."""
        start = time.perf_counter()
        measurements = measure(image, max_pixels=self.max_pixels)
        report = self.assess_measurements(measurements)
        report.seconds = time.perf_counter() - start
        return report

    def assess_measurements(self, measurements: Mapping[str, float]) -> DegradationReport:
        """Apply the calibrated models to measurements already taken with :func:`measure`."""
        logits: dict[Degradation, float] = {}
        if self.presence_net is not None:
            logits = self.presence_net.logits(measurements)
            if self.presence_rule != "net":  # combine with the per-type linear models
                for d, model in self.models.items():
                    linear = model.presence(measurements) - model.logit_shift
                    logits[d] = max(logits[d], linear) if self.presence_rule == "or" else 0.5 * (logits[d] + linear)
        estimates = {d: model.estimate(measurements, logits.get(d)) for d, model in self.models.items()}
        return DegradationReport(assessor=self.name, estimates=estimates, measurements=dict(measurements))


# ------------------------------------------------------------------------------------------------
# choosing the assessor

#: Environment variable naming the agent's assessor: ``estimators``, ``saclip[:<folder>]`` or ``hybrid[:<folder>]``.
ASSESSOR_ENV = "RESTORA_ASSESSOR"

#: The agent's perception when neither the caller nor :data:`ASSESSOR_ENV` names one: the shipped SA-CLIP with
#: the parameter estimators blended in (on 96 evaluation images the agent gained more with it than with the
#: estimators alone; see README). Falls back to the estimators, with a warning, when SA-CLIP cannot load.
DEFAULT_ASSESSOR = "hybrid"


#: The assessor names a spec may start with (``saclip`` and ``hybrid`` also take ``:<checkpoint folder>``).
ASSESSOR_NAMES = ("estimators", "saclip", "hybrid")


def parse_assessor_spec(spec: str) -> tuple[str, str]:
    """Split an assessor spec into ``(name, checkpoint folder or "")``.

    Raises:
        ValueError: for an unknown name, or a folder given to ``estimators``.
    """
    name, _, path = spec.partition(":")
    if name not in ASSESSOR_NAMES or (name == "estimators" and path):
        raise ValueError(
            f"unknown assessor {spec!r}; use 'estimators', 'saclip[:<checkpoint folder>]' or 'hybrid[:<folder>]'"
        )
    return name, path


def make_assessor(spec: str) -> Any:
    """Build the assessor named by ``spec``: ``"estimators"``, ``"saclip[:<checkpoint dir>]"`` or ``"hybrid[:<dir>]"``.

    ``hybrid`` is SA-CLIP with the estimator assessor's probabilities and severities blended in, per type
    with the checkpoint's fitted weights (:attr:`~agent.perception.saclip.SAClipSettings.hybrid_weights`;
    an even average where none were fitted).

    Raises:
        ValueError: for an unknown name.
        FileNotFoundError: when a SA-CLIP checkpoint is missing (the message names the training command).
    """
    name, path = parse_assessor_spec(spec)
    if name == "estimators":
        return EstimatorAssessor()
    from agent.perception.saclip import SAClipAssessor

    return SAClipAssessor(Path(path) if path else None, blend="fitted" if name == "hybrid" else 0.0)


def default_assessor(spec: str | None = None) -> Any:
    """The agent's assessor: ``spec``, else ``$RESTORA_ASSESSOR``, else :data:`DEFAULT_ASSESSOR`.

    When the shipped SA-CLIP is the default but cannot run here (torch or open_clip missing, weights not
    packaged), the estimator assessor takes over and a warning says why. A SA-CLIP named explicitly
    (argument or environment) that cannot load raises instead.
    """
    explicit = spec or os.environ.get(ASSESSOR_ENV)
    chosen = explicit or DEFAULT_ASSESSOR
    if explicit or chosen == "estimators":
        return make_assessor(chosen)
    try:
        return make_assessor(chosen)
    except (ImportError, FileNotFoundError) as error:
        logger.warning("default assessor %r unavailable (%s); using the estimator assessor", chosen, error)
        return EstimatorAssessor()
