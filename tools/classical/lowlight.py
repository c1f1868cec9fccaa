"""Low-light enhancement: invert the tone curve that darkened the image, or a LIME-style illumination map.

Global darkening leaves a recognisable histogram, because most photos reach full white somewhere.
Where the brightest values (99.9th percentile of the HSV value, max of R, G, B) now end tells the
curve apart:

* a **gamma** curve (``I ** (1 / gamma)``) keeps white at white and darkens the mid-tones: it is
  undone per channel by ``I ** g``;
* a **value shift** (HSV value lowered by ``s``, hue and saturation kept, shadows crushed to black)
  moves the top to ``1 - s`` (0.72-0.92 for plausible shifts): it is undone by adding the shift back
  to the value while keeping each pixel's chromaticity;
* a **range compression** (``I * level``) moves the top lower still: it is undone by a gain.

How much to brighten comes from the assessor's ``gain`` (mean-luminance ratio) when given: ``g`` is
fitted to reach it, and the shift or gain are fitted to it too but capped where the brightest value
reaches white, so highlights are never blown out. Without a gain, a shift or a gain is read off the
top of the histogram and a gamma is fitted to reach ``target_exposure``. If a capped shift or gain
falls well short of the asked gain, the histogram misled (a photo that never reached white) and a
gamma curve is used instead. ``curve="local"`` divides by a structure-preserving illumination map
instead (LIME: max-RGB illumination refined with the guided filter, raised to a power below 1),
which suits real scenes with unevenly lit regions.

An image whose exposure already looks fine (no gain given and mean at or above the target, or an
assessor gain of ~1) is returned unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from agent.degradations import Degradation
from agent.report import DegradationReport
from tools.base import STRENGTH, Param, Tool, ToolSpec, register_tool
from tools.imageops import gray, guided_filter

logger = logging.getLogger(__name__)

CURVES = ("auto", "gamma", "shift", "linear", "local")

#: A brightest value (99.9th percentile of max-RGB) above this means white is still reached.
_WHITE_REACHED = 0.92
#: Below this brightest value a capped histogram is range compression rather than a value shift.
_SHIFT_MIN_TOP = 0.72
#: Gains (mean luminance ratios) closer to 1 than this are treated as "exposure is fine".
_NO_OP_GAIN = 1.05
#: An image whose brightest values stay below this holds no usable signal.
_BLACK_LEVEL = 2.0 / 255.0
#: Mean grey level to reach when no gain is given (best trade-off on BSD100: brightens gamma-darkened
#: images by ~+11 dB on average while leaving 23 of 30 clean images untouched).
_DEFAULT_TARGET = 0.35
#: A capped linear or shift curve that reaches less than 1/this of the asked gain means the histogram misled.
_MAX_GAIN_SHORTFALL = 1.25


def brightest_value(image: np.ndarray) -> float:
    """99.9th percentile of the HSV value (max of R, G, B): where the histogram's top now ends."""
    return float(np.percentile(image.max(axis=2), 99.9))


def classify_darkening(image: np.ndarray) -> str:
    """Guess which global curve darkened ``image``: ``"gamma"``, ``"shift"`` or ``"linear"``.

    White still reached means a gamma curve; a top end moderately lowered (to 0.72-0.92) means a value
    shift (shifts beyond ~70/255 would black out most of a photo); a lower top means range compression.
    """
    top = brightest_value(image)
    if top >= _WHITE_REACHED:
        return "gamma"
    return "shift" if top >= _SHIFT_MIN_TOP else "linear"


def gamma_for_mean(image: np.ndarray, target_mean: float) -> float:
    """The exponent ``g`` in [0.2, 1] whose per-channel curve ``I ** g`` brings mean luminance to ``target_mean``."""
    sample = image[:: max(1, image.shape[0] // 256), :: max(1, image.shape[1] // 256)]
    low, high = 0.2, 1.0
    if float(gray(sample).mean()) >= target_mean:
        return 1.0
    for _ in range(30):  # the mean of I ** g decreases with g: bisect
        mid = 0.5 * (low + high)
        if float(gray(np.power(sample, mid)).mean()) > target_mean:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def undo_value_shift(image: np.ndarray, shift: float) -> np.ndarray:
    """Add ``shift`` back to the HSV value, keeping chromaticity; crushed blacks become mid-shadow grey."""
    value = image.max(axis=2, keepdims=True)
    out = image * ((value + shift) / np.maximum(value, 1e-6))
    black = value[..., 0] <= 0.0
    out[black] = 0.5 * shift  # their value was somewhere in [0, shift]; grey at the middle is the best guess
    return out


def shift_for_gain(image: np.ndarray, gain: float, max_shift: float) -> float:
    """The value shift in [0, max_shift] whose undoing multiplies the mean luminance by ``gain``."""
    sample = image[:: max(1, image.shape[0] // 256), :: max(1, image.shape[1] // 256)]
    mean = max(float(gray(sample).mean()), 1e-4)
    low, high = 0.0, max_shift
    for _ in range(25):  # brightening grows with the shift: bisect
        mid = 0.5 * (low + high)
        if float(gray(np.clip(undo_value_shift(sample, mid), 0.0, 1.0)).mean()) < gain * mean:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def lime_illumination(image: np.ndarray, power: float) -> np.ndarray:
    """LIME's illumination map: max-RGB, refined by a guided filter on itself, raised to ``power``."""
    value = image.max(axis=2)
    radius = max(2, round(min(image.shape[:2]) / 50))
    refined = guided_filter(value, value, radius, 1e-3)
    return np.power(np.clip(refined, 1e-3, 1.0), power)


#: Below this low-light probability, a photo that looks normally exposed is left alone.
_CONFIDENT = 0.9


def _looks_well_exposed(measurements: dict[str, float]) -> bool:
    """Mean luminance near mid-grey and highlights reaching near white (when the assessor measured them)."""
    mean, top = measurements.get("lum_mean"), measurements.get("lum_p99")
    return mean is not None and top is not None and mean >= 0.3 and top >= 0.75


@register_tool
class RetinexLowLight(Tool):
    """Undo a global darkening curve (range compression, value shift or gamma) or apply LIME-style retinex."""

    spec = ToolSpec(
        name="lowlight_retinex",
        description=(
            "Brightens under-exposed images: recognises from the histogram whether a range compression, a "
            "value shift or a gamma curve darkened the image and inverts it (hue kept, highlights not blown); "
            "curve='local' uses a LIME-style illumination map instead. No-op on well-exposed images."
        ),
        restores=(Degradation.LOW_LIGHT,),
        params=(
            STRENGTH,
            Param("curve", "choice", "auto", choices=CURVES, description="darkening model to invert; auto = detect"),
            Param("gain", "float", 0.0, 0.0, 20.0, description="wanted mean-luminance gain; 0 = estimate, 1 = none"),
            Param(
                "target_exposure",
                "float",
                _DEFAULT_TARGET,
                0.2,
                0.7,
                description="mean luminance to reach when gain is unknown",
            ),
            Param("gamma", "float", 0.0, 0.0, 1.0, description="exponent for curve=gamma/local; 0 = fit the target"),
        ),
    )

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Pass the estimated brightening gain through; ask for no change when the image is not judged dark."""
        est = report.estimates.get(Degradation.LOW_LIGHT)
        if est is None:
            return {}
        if est.probability < 0.5 or est.severity == 0.0:
            return {"gain": 1.0}
        if est.probability < _CONFIDENT and _looks_well_exposed(report.measurements):
            # Naturally dim scenes fool the exposure cues; brightening a photo whose exposure is
            # within the normal photographic range is not a restoration (it cost up to 8 dB).
            return {"gain": 1.0}
        if "gain" not in est.params:
            return {}
        return {"gain": float(np.clip(est.params["gain"], 1.0, 20.0))}

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Brighten ``image`` with the chosen or detected curve (unchanged if its exposure looks fine)."""
        gain = float(params.get("gain", 0.0))
        if 0.0 < gain < _NO_OP_GAIN:
            return image
        mean = max(float(gray(image).mean()), 1e-4)
        target_mean = min(gain * mean if gain else float(params.get("target_exposure", _DEFAULT_TARGET)), 0.9)
        curve = params.get("curve", "auto")
        if curve == "auto":
            if not gain and mean >= target_mean:
                return image  # no gain asked for and already as bright as the target
            curve = classify_darkening(image)
        top = brightest_value(image)
        if top < _BLACK_LEVEL:
            return image  # nothing but black: no curve can recover it
        if curve in ("linear", "shift"):
            # The cap keeps the brightest value at or below white; a given gain may ask for less.
            if curve == "linear":
                out = image * min(gain or np.inf, 1.0 / top)
            else:
                out = undo_value_shift(image, shift_for_gain(image, gain, 1.0 - top) if gain else 1.0 - top)
            reached = float(gray(np.clip(out, 0.0, 1.0)).mean()) / mean
            if params.get("curve", "auto") != "auto" or not gain or reached * _MAX_GAIN_SHORTFALL >= gain:
                return out
            logger.debug("lowlight: %s reaches gain %.2f of the asked %.2f; using gamma", curve, reached, gain)
            curve = "gamma"
        gamma = float(params.get("gamma", 0.0))
        logger.debug("lowlight: curve=%s top=%.3f mean=%.3f target=%.3f", curve, top, mean, target_mean)
        if curve == "gamma":
            return np.power(image, gamma or gamma_for_mean(image, target_mean))
        return self._local(image, gamma, target_mean)

    @staticmethod
    def _local(image: np.ndarray, power: float, target_mean: float) -> np.ndarray:
        """LIME-style enhancement: divide by the illumination map raised to ``power`` (fitted when 0)."""
        if not power:
            low, high = 0.0, 1.0  # more power brightens more: bisect on a sample
            sample = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
            if float(gray(sample).mean()) >= target_mean:
                return image
            for _ in range(20):
                mid = 0.5 * (low + high)
                if float(gray(sample / lime_illumination(sample, mid)[..., None]).clip(0, 1).mean()) < target_mean:
                    low = mid
                else:
                    high = mid
            power = 0.5 * (low + high)
        return image / lime_illumination(image, power)[..., None]
