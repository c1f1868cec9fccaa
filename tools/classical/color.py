"""Colour-cast correction: white balance by illuminant estimation, and underwater colour restoration.

``white_balance`` estimates the illuminant colour with gray-world, shades-of-gray (Minkowski
p-norm, Finlayson & Trezzi 2004) and white-patch (robust max) statistics, or takes the
neutralising per-channel gains from the assessor, and applies them as a von Kries diagonal
correction normalised so that luminance is unchanged; gains are clamped to a sane range.

``underwater_color`` follows the principle of Ancuti et al. (2018, "Color balance and fusion for
underwater image enhancement"): water absorbs red first, so the red channel (and, in green
water, the blue one) is first compensated from the better-preserved green channel, where green
is informative and red is dark; a white balance follows (the same estimator and deadzone as
``white_balance``), then a mild CLAHE on the L channel of Lab for the contrast lost to
scattering, blended in conservatively.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from agent.degradations import Degradation
from agent.report import DegradationReport
from tools.base import STRENGTH, Param, Tool, ToolSpec, register_tool
from tools.imageops import luminance

logger = logging.getLogger(__name__)

#: Rec. 601 weights; white balance keeps ``weights @ gains == 1`` so luminance is preserved.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)
ESTIMATORS = ("auto", "gray_world", "shades_of_gray", "white_patch")
#: Weights of gray-world, shades-of-gray and white-patch in the ``auto`` (log-domain) combination;
#: gray world is the most biased by scene colour on BSD100 (foliage, sky), white patch the least.
AUTO_WEIGHTS = (0.0, 1.0, 2.0)


def _usable_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels that carry illuminant information: not clipped in any channel and not nearly black."""
    pixels = image.reshape(-1, 3).astype(np.float64)
    keep = (pixels.max(axis=1) < 0.985) & (pixels.mean(axis=1) > 0.02)
    return pixels[keep] if keep.sum() > 0.05 * len(pixels) else pixels


def estimate_illuminant(image: np.ndarray, method: str = "auto", p: float = 6.0) -> np.ndarray:
    """Illuminant colour (R, G, B), normalised to unit luminance, by the chosen statistic.

    Args:
        image: RGB float32 in [0, 1].
        method: ``gray_world`` (mean), ``shades_of_gray`` (p-norm mean), ``white_patch`` (99.5th
            percentile per channel) or ``auto`` (weighted geometric mean, :data:`AUTO_WEIGHTS`).
        p: the Minkowski norm of shades-of-gray.
    """
    pixels = _usable_pixels(image)
    estimates = {
        "gray_world": pixels.mean(axis=0),
        "shades_of_gray": np.mean(pixels**p, axis=0) ** (1.0 / p),
        "white_patch": np.percentile(pixels, 99.5, axis=0),
    }
    if method == "auto":
        normalised = np.array([e / max(float(LUMA_WEIGHTS @ e), 1e-6) for e in estimates.values()])
        weights = np.array(AUTO_WEIGHTS)[:, None]
        illuminant = np.exp((weights * np.log(np.maximum(normalised, 1e-6))).sum(axis=0) / weights.sum())
    elif method in estimates:
        illuminant = estimates[method]
    else:
        raise ValueError(f"unknown illuminant estimator {method!r}; use one of {', '.join(ESTIMATORS)}")
    illuminant = np.maximum(illuminant, 1e-6)
    return illuminant / float(LUMA_WEIGHTS @ illuminant)


def neutralising_gains(illuminant: np.ndarray, max_gain: float) -> np.ndarray:
    """Per-channel gains that map ``illuminant`` to gray, clamped to [1/max_gain, max_gain].

    The gains are normalised to unit Rec. 601 luminance of a gray pixel before clamping, so the
    clamp is symmetric around "no change"; :func:`preserve_luminance` sets the final scale.
    """
    gains = 1.0 / np.maximum(np.asarray(illuminant, dtype=np.float64), 1e-6)
    gains = gains / float(LUMA_WEIGHTS @ gains)
    return np.clip(gains, 1.0 / max_gain, max_gain)


def shrink_gains(gains: np.ndarray, deadzone: float) -> np.ndarray:
    """Soft-threshold the cast: shorten the log-gain vector (centred) by ``deadzone``, 0 if shorter.

    Natural scenes are not gray on average (foliage, sunsets): estimators report a "cast" of
    norm ~0.16 (median over BSD100; 0.34 at the 90th percentile) on clean photos. Correcting only
    the excess leaves clean images nearly untouched and still removes most of a strong cast.
    """
    log_gains = np.log(np.maximum(gains, 1e-6))
    centred = log_gains - log_gains.mean()
    norm = float(np.linalg.norm(centred))
    if norm <= deadzone:
        return np.ones(3)
    return np.exp(centred * (norm - deadzone) / norm)


def preserve_luminance(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Rescale ``gains`` so the corrected image keeps the input's mean luminance."""
    pixels = _usable_pixels(image)
    before = float(pixels.mean(axis=0) @ LUMA_WEIGHTS)
    after = float((pixels.mean(axis=0) * gains) @ LUMA_WEIGHTS)
    return gains * (before / max(after, 1e-6))


def apply_gains(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Multiply each channel by its gain (von Kries diagonal correction) and clip to [0, 1].

    A channel clipped at 1 only says its true value was at least ``gain``: where a gain below 1
    meets a clipped channel, the midpoint of that range (``(gain + 1) / 2``) is used instead.
    """
    gains = np.asarray(gains, dtype=np.float32)[None, None, :]
    clipped = np.clip((image - 0.99) / 0.008, 0.0, 1.0) * (gains < 1.0)
    effective = gains + clipped * 0.5 * (1.0 - gains)
    return np.clip(image * effective, 0.0, 1.0).astype(np.float32)


@register_tool
class WhiteBalance(Tool):
    """Luminance-preserving white balance from illuminant estimation or the assessor's gains."""

    spec = ToolSpec(
        name="white_balance",
        description=(
            "Removes a colour cast by per-channel gains: from the assessor's r/g/b gains when given, else from a "
            "shades-of-gray (p=6) / white-patch illuminant estimate, correcting only the cast beyond what natural "
            "scenes show (deadzone). Luminance-preserving, clamped."
        ),
        restores=(Degradation.COLOR_CAST,),
        params=(
            STRENGTH,
            Param("method", "choice", "auto", choices=ESTIMATORS, description="illuminant estimator"),
            Param("p", "float", 6.0, 1.0, 16.0, description="Minkowski norm of shades-of-gray"),
            Param("r_gain", "float", 0.0, 0.0, 8.0, description="neutralising red gain (0: estimate all gains)"),
            Param("g_gain", "float", 0.0, 0.0, 8.0, description="neutralising green gain (0: estimate all gains)"),
            Param("b_gain", "float", 0.0, 0.0, 8.0, description="neutralising blue gain (0: estimate all gains)"),
            Param("max_gain", "float", 2.0, 1.0, 8.0, description="clamp on any channel's gain (and 1/gain)"),
            Param("deadzone", "float", 0.2, 0.0, 1.0, description="estimated cast (log-gain norm) left alone"),
        ),
    )

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Pass the assessor's neutralising gains through when it estimated all three."""
        est = report.estimates.get(Degradation.COLOR_CAST)
        if est and all(k in est.params for k in ("r_gain", "g_gain", "b_gain")):
            gains = {k: float(np.clip(est.params[k], 0.05, 8.0)) for k in ("r_gain", "g_gain", "b_gain")}
            return gains | {"max_gain": float(np.clip(max(max(gains.values()), 1.0 / min(gains.values())), 2.0, 8.0))}
        return {}

    def apply(
        self,
        image: np.ndarray,
        *,
        strength: float = 1.0,
        method: str = "auto",
        p: float = 6.0,
        r_gain: float = 0.0,
        g_gain: float = 0.0,
        b_gain: float = 0.0,
        max_gain: float = 2.0,
        deadzone: float = 0.2,
        **_ignored: Any,
    ) -> np.ndarray:
        """White-balance ``image`` with given or estimated gains."""
        if min(r_gain, g_gain, b_gain) > 0:
            # The assessor's gains are absolute (they neutralise a luminance-keeping cast): use as given.
            gains = np.clip(np.array([r_gain, g_gain, b_gain], dtype=np.float64), 1.0 / max_gain, max_gain)
        else:
            gains = neutralising_gains(estimate_illuminant(image, method, p), max_gain)
            gains = preserve_luminance(image, shrink_gains(gains, deadzone))
        logger.debug("white balance gains %s", np.round(gains, 3))
        return apply_gains(image, gains)


def compensate_attenuated_channels(image: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Ancuti et al.'s channel compensation: lift red (and blue when weak) from the green channel.

    ``I_r' = I_r + alpha (mean(G) - mean(R)) (1 - I_r) I_g``: the correction is largest where green
    is bright (information survives) and red is dark (it was absorbed). Blue is compensated the same
    way only when its mean is below green's (green or turbid water). The compensation fades in as
    the channel's deficit grows from 10 % to 30 % of green's mean, so land photos are left alone.
    """
    out = image.astype(np.float32).copy()
    green = image[..., 1]
    mean_green = float(green.mean())
    for channel in (0, 2):
        deficit = mean_green - float(image[..., channel].mean())
        # Land photos have channel means within ~10 % of each other; only a clear deficit is absorption.
        relative = deficit / max(mean_green, 1e-4)
        weight = alpha * float(np.clip((relative - 0.1) / 0.2, 0.0, 1.0))
        if weight > 0:
            out[..., channel] = image[..., channel] + weight * deficit * (1.0 - image[..., channel]) * green
    return np.clip(out, 0.0, 1.0)


def _mean_ratio(reference: np.ndarray, image: np.ndarray) -> float:
    return float(luminance(reference).mean()) / max(float(luminance(image).mean()), 1e-4)


def clahe_luminance(image: np.ndarray, clip_limit: float = 1.5, tiles: int = 8) -> np.ndarray:
    """CLAHE on the L channel of Lab (colour untouched), for contrast lost to scattering."""
    lab = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2Lab)
    lightness = np.clip(lab[..., 0] * (255.0 / 100.0), 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    lab[..., 0] = clahe.apply(lightness).astype(np.float32) * (100.0 / 255.0)
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)


@register_tool
class UnderwaterColor(Tool):
    """Underwater colour restoration: red/blue compensation from green, white balance, mild CLAHE."""

    spec = ToolSpec(
        name="underwater_color",
        description=(
            "Underwater colour correction (Ancuti et al. 2018 principle): compensates the absorbed red (and blue) "
            "channel from green, white-balances, then blends in a mild CLAHE on Lab lightness. For underwater "
            "or strongly blue-green images; plain casts are white_balance's job."
        ),
        restores=(Degradation.COLOR_CAST, Degradation.HAZE),
        params=(
            STRENGTH,
            Param("alpha", "float", 1.0, 0.0, 2.0, description="strength of the red/blue compensation"),
            Param("contrast", "float", 0.2, 0.0, 1.0, description="blend of the CLAHE result (0: none)"),
            Param("clip_limit", "float", 1.5, 1.0, 4.0, description="CLAHE clip limit"),
            Param("max_gain", "float", 3.0, 1.0, 4.0, description="clamp on the white-balance gains"),
        ),
    )

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Stronger contrast recovery when the assessor also sees haze."""
        haze = report.estimates.get(Degradation.HAZE)
        if haze and haze.probability >= 0.5:
            return {"contrast": float(np.clip(0.2 + 0.5 * haze.severity, 0.0, 1.0))}
        return {}

    def apply(
        self,
        image: np.ndarray,
        *,
        strength: float = 1.0,
        alpha: float = 1.0,
        contrast: float = 0.2,
        clip_limit: float = 1.5,
        max_gain: float = 3.0,
        **_ignored: Any,
    ) -> np.ndarray:
        """Compensate, white-balance and (mildly) re-contrast an underwater image."""
        compensated = compensate_attenuated_channels(image, alpha)
        gains = shrink_gains(neutralising_gains(estimate_illuminant(compensated, "auto"), max_gain), 0.2)
        # Keep the input's overall brightness: compensation only adds light.
        balanced = apply_gains(compensated, preserve_luminance(image, gains) * _mean_ratio(image, compensated))
        if contrast > 0:
            balanced = (1.0 - contrast) * balanced + contrast * clahe_luminance(balanced, clip_limit)
        return balanced.astype(np.float32)
