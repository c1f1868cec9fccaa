"""Rain-streak removal by directional median filtering (and a light raindrop-trace clean-up).

Rain streaks are thin, bright and elongated along one dominant direction. The tool

1. isolates thin bright structures with a morphological white top-hat of the luminance;
2. estimates the streak direction from the gradient-orientation histogram of that residual
   (the gradients of a streak point across it), restricted to within 45 degrees of vertical
   unless an angle is given; the strongest modes are ranked by the streak evidence they yield;
3. compares every pixel with the median of its neighbours *across* the streak direction and
   with the median *along* it: a streak pixel is brighter than the first but not the second,
   while a scene edge parallel to the streaks is bright against neither and a speck or a line at
   another angle against both; the difference is opened by a line segment at the streak angle
   (only long straight runs survive) and discounted where the image is textured;
4. replaces the detected pixels by the cross-direction median, only ever darkening (rain
   brightens: it is a screen blend of a bright layer), with a soft mask that also requires the
   three channels to agree on the layer's opacity (rain is grey, bright texture usually is not).

Raindrops on the lens are blurred, refracted discs with a dark rim and a specular highlight;
``mode="raindrop"`` (or ``"both"``) only flattens such highlights and rims where the surroundings
are smooth, which changes PSNR by about 0 dB: detecting drops on textured scenes (Hough circles
were tried) fires on texture far too often, and recovering what a drop hides needs a learned model.
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

#: Streak directions searched when estimating, degrees CCW from horizontal (90 = vertical).
_ANGLE_RANGE = (45.0, 135.0)
#: How much local texture (brightness excess along the streak direction) raises the detection bar.
TEXTURE_WEIGHT = 2.0


def white_tophat(channel: np.ndarray, size: int) -> np.ndarray:
    """Channel minus its morphological opening with a ``size`` x ``size`` square: thin bright detail."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    return channel - cv2.morphologyEx(channel, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REFLECT)


def streak_angle_candidates(
    luma: np.ndarray, limits: tuple[float, float] = _ANGLE_RANGE, count: int = 3
) -> list[tuple[float, float]]:
    """Up to ``count`` candidate streak directions (degrees CCW) with their histogram peak / mean.

    Gradients of the top-hat residual (thin bright structures) point across streaks. Their
    directions, weighted by magnitude over the strongest 15 % of the residual, are histogrammed
    (1-degree bins, smoothed by 3 degrees); the highest local maxima inside ``limits``, at least
    10 degrees apart, are the candidates.
    """
    residual = white_tophat(luma, 7)
    gx = cv2.Sobel(residual, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(residual, cv2.CV_32F, 0, 1, ksize=3)
    selected = residual > np.percentile(residual, 85)
    if not selected.any():
        return [(90.0, 1.0)]
    gradient_angle = np.degrees(np.arctan2(gy[selected], gx[selected]))  # x right, y down
    streak_angle = (-(gradient_angle + 90.0)) % 180.0  # CCW as displayed
    weights = np.hypot(gx[selected], gy[selected])
    hist, _ = np.histogram(streak_angle, bins=180, range=(0.0, 180.0), weights=weights)
    wrapped = np.concatenate([hist[-10:], hist, hist[:10]])
    smooth = np.convolve(wrapped, np.exp(-0.5 * (np.arange(-9, 10) / 3.0) ** 2), mode="same")[10:-10]
    centres = np.arange(180) + 0.5
    allowed = (centres >= limits[0]) & (centres <= limits[1])
    scores = np.where(allowed, smooth, -np.inf)
    mean = smooth.mean() + 1e-12
    found: list[tuple[float, float]] = []
    for index in np.argsort(scores)[::-1]:
        if not np.isfinite(scores[index]) or len(found) == count:
            break
        if all(abs(centres[index] - angle) >= 10.0 for angle, _ in found):
            found.append((float(centres[index]), float(smooth[index] / mean)))
    return found


def estimate_streak_angle(
    luma: np.ndarray, limits: tuple[float, float] = _ANGLE_RANGE, min_length: int = 13
) -> tuple[float, float]:
    """Dominant streak direction (degrees CCW from horizontal) and its histogram peak / mean (~1: none).

    The three strongest modes of the gradient-orientation histogram (see
    :func:`streak_angle_candidates`; a mode, not the structure tensor's mean, which scene edges
    bias) are scored by the streak evidence (:func:`streak_evidence`) each yields on a central
    crop of at most 256 x 256 pixels: only the true direction turns rain into long straight runs.
    """
    candidates = streak_angle_candidates(luma, limits, count=3)
    if len(candidates) == 1:
        return candidates[0]
    h, w = luma.shape
    top, left = max(0, (h - 256) // 2), max(0, (w - 256) // 2)
    crop = luma[top : top + 256, left : left + 256]
    scores = [float(streak_evidence(crop, angle, 4, min_length | 1).mean()) for angle, _ in candidates]
    return candidates[int(np.argmax(scores))]


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` sampled at (x + dx, y + dy) with bilinear interpolation and reflected borders."""
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float32)
    h, w = image.shape[:2]
    return cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )


def directional_median(image: np.ndarray, angle: float, reach: int) -> np.ndarray:
    """Median over the 2 * reach + 1 samples on a line through each pixel at ``angle`` degrees."""
    theta = np.deg2rad(angle)
    ux, uy = np.cos(theta), -np.sin(theta)
    stack = np.stack([_shifted(image, k * ux, k * uy) for k in range(-reach, reach + 1)])
    return np.median(stack, axis=0).astype(np.float32)


def line_element(length: int, angle: float) -> np.ndarray:
    """Binary structuring element: a ``length``-pixel line through the centre at ``angle`` degrees."""
    half = length // 2
    n = 2 * half + 1
    element = np.zeros((n, n), np.uint8)
    theta = np.deg2rad(angle)
    dx, dy = half * np.cos(theta), -half * np.sin(theta)
    cv2.line(element, (round(half - dx), round(half - dy)), (round(half + dx), round(half + dy)), 1, 1)
    return element


def streak_evidence(luma: np.ndarray, angle: float, reach: int, support: int) -> np.ndarray:
    """Per-pixel brightness excess explained by a streak along ``angle`` (0 where there is none).

    A streak is bright against its cross-section but not against its own length; bright specks
    and lines at other angles are bright against both, so the difference keeps only streaks. The
    result is opened by a ``support``-pixel line at ``angle`` (only long straight runs survive)
    and lowered where the image is textured (texture is bright against its own length too).
    """
    excess_across = np.clip(luma - directional_median(luma, angle + 90.0, reach), 0.0, None)
    excess_along = np.clip(luma - directional_median(luma, angle, reach), 0.0, None)
    selective = np.clip(excess_across - excess_along, 0.0, None)
    # Opening by a line segment keeps only bright runs at least ``support`` pixels long at this angle.
    segment = line_element(support, angle)
    evidence = cv2.morphologyEx(selective, cv2.MORPH_OPEN, segment, borderType=cv2.BORDER_REFLECT)
    texture = cv2.blur(excess_along, (15, 15), borderType=cv2.BORDER_REFLECT)
    return np.clip(evidence - TEXTURE_WEIGHT * texture, 0.0, None)


def remove_streaks(
    image: np.ndarray, angle: float, threshold: float, reach: int = 4, support: int = 9
) -> tuple[np.ndarray, np.ndarray]:
    """One pass of streak removal along ``angle``; returns the image and the soft streak mask.

    Args:
        image: RGB float32 in [0, 1].
        angle: streak direction, degrees CCW from horizontal.
        threshold: brightness excess (in [0, 1] units) above the cross-streak median at which a
            pixel counts as fully rain; half of it is where the soft mask starts.
        reach: samples on each side across the streak (handles streaks up to about ``reach`` wide).
        support: shortest streak kept, pixels; shorter bright runs are taken for texture.
    """
    across = angle + 90.0
    evidence = streak_evidence(luminance(image), angle, reach, support)
    hard = np.clip((evidence - 0.5 * threshold) / (0.5 * threshold), 0.0, 1.0).astype(np.float32)
    mask = cv2.GaussianBlur(hard, (0, 0), 0.7)
    out = image.copy()
    rows, cols = np.nonzero(mask > 0.02)
    if rows.size == 0:
        return out, mask
    background = _sparse_directional_median(image, across, reach, rows, cols)
    current = image[rows, cols]
    # Rain is a screen blend of a near-white layer: I = 1 - (1 - B)(1 - a), with the same opacity a
    # in every channel. Bright texture is usually coloured, so its per-channel "opacities" disagree.
    opacity = 1.0 - (1.0 - current) / np.maximum(1.0 - background, 1e-3)
    agreement = np.clip(opacity.min(axis=1), 0.0, None) / np.maximum(opacity.max(axis=1), 1e-3)
    m = mask[rows, cols] * np.clip((agreement - 0.2) / 0.4, 0.0, 1.0)
    mask[rows, cols] = m
    out[rows, cols] = current - m[:, None] * np.clip(current - background, 0.0, None)
    return out, mask


def _sparse_directional_median(
    image: np.ndarray, angle: float, reach: int, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Per-channel median along ``angle`` evaluated only at the given pixels (bilinear samples)."""
    h, w = image.shape[:2]
    theta = np.deg2rad(angle)
    ux, uy = np.cos(theta), -np.sin(theta)
    samples = []
    for k in range(-reach, reach + 1):
        x = np.clip(cols + k * ux, 0, w - 1)
        y = np.clip(rows + k * uy, 0, h - 1)
        x0 = np.minimum(np.floor(x).astype(int), w - 2) if w > 1 else np.zeros_like(cols)
        y0 = np.minimum(np.floor(y).astype(int), h - 2) if h > 1 else np.zeros_like(rows)
        fx = (x - x0)[:, None]
        fy = (y - y0)[:, None]
        value = (
            image[y0, x0] * (1 - fx) * (1 - fy)
            + image[y0, x0 + 1] * fx * (1 - fy)
            + image[y0 + 1, x0] * (1 - fx) * fy
            + image[y0 + 1, x0 + 1] * fx * fy
        )
        samples.append(value)
    return np.median(np.stack(samples), axis=0).astype(np.float32)


def suppress_drop_highlights(
    image: np.ndarray, threshold: float = 0.04, smooth: float = 0.01, size: int = 5
) -> np.ndarray:
    """Flatten small bright highlights and thin dark rims that sit on smooth regions (raindrop traces).

    The morphological opening (closing) removes bright (dark) structures thinner than ``size``;
    the change is applied only where the excess exceeds ``threshold`` and where the surrounding
    structure-free image is smooth (local std below ``smooth``), which is where a raindrop's
    blurred interior is and texture is not. Expect little PSNR change: it removes what is
    clearly a drop artifact and leaves the refracted drop content, which needs a learned model.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(image, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REFLECT)
    closed = cv2.morphologyEx(image, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REFLECT)
    structure_free = luminance(
        0.5
        * (
            cv2.morphologyEx(opened, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REFLECT)
            + cv2.morphologyEx(closed, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REFLECT)
        )
    )
    mean = cv2.blur(structure_free, (7, 7), borderType=cv2.BORDER_REFLECT)
    square = cv2.blur(structure_free * structure_free, (7, 7), borderType=cv2.BORDER_REFLECT)
    local_std = np.sqrt(np.clip(square - mean * mean, 0.0, None))
    luma = luminance(image)
    bright = np.clip((luma - luminance(opened) - threshold) / threshold, 0.0, 1.0)[..., None]
    dark = np.clip((luminance(closed) - luma - threshold) / threshold, 0.0, 1.0)[..., None]
    # Fine texture also vanishes in the opening/closing and so looks smooth there; it is told apart
    # from drop traces by density: texture is thin structure everywhere, a highlight or rim is not.
    density = cv2.blur(((bright + dark)[..., 0] > 0).astype(np.float32), (15, 15), borderType=cv2.BORDER_REFLECT)
    flat = (np.clip(1.0 - local_std / smooth, 0.0, 1.0) * np.clip((0.25 - density) / 0.1, 0.0, 1.0))[..., None]
    out = image - flat * bright * np.clip(image - opened, 0.0, None)
    return out + flat * dark * np.clip(closed - image, 0.0, None)


@register_tool
class DirectionalDerain(Tool):
    """Rain-streak removal by cross-direction median replacement along the estimated rain angle."""

    spec = ToolSpec(
        name="derain_directional",
        description=(
            "Removes rain streaks: estimates their direction (orientation histogram), detects pixels brighter than "
            "the median across the streak and elongated along it, and darkens them to that median. "
            "Only ever darkens; fast, conservative. mode=raindrop/both also flattens raindrop highlights and rims "
            "on smooth regions (small effect: drop interiors need a learned model)."
        ),
        restores=(Degradation.RAIN, Degradation.RAINDROP),
        params=(
            STRENGTH,
            Param("mode", "choice", "rain", choices=("rain", "raindrop", "both"), description="what to remove"),
            Param("angle", "float", -1.0, -1.0, 180.0, description="streak direction, degrees CCW (-1: estimate)"),
            Param("threshold", "float", 0.04, 0.005, 0.3, description="brightness excess that counts as rain"),
            Param("passes", "int", 2, 1, 4, description="detection/removal passes (dense rain needs more)"),
            Param("width", "int", 4, 1, 8, description="largest streak half-width handled, pixels"),
            Param("min_length", "int", 13, 5, 41, description="shortest streak removed, pixels (longer: safer)"),
        ),
    )

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Map the estimated rain ``angle`` and ``energy`` (or raindrop presence) onto the tool."""
        params: dict[str, Any] = {"mode": "raindrop" if target == Degradation.RAINDROP else "rain"}
        rain = report.estimates.get(Degradation.RAIN)
        if rain and target == Degradation.RAIN:
            if "angle" in rain.params and 0.0 <= rain.params["angle"] <= 180.0:
                params["angle"] = float(rain.params["angle"])
            energy = rain.params.get("energy")
            if energy is not None:
                # Heavy rain (overlapping streaks): one more pass; the threshold is about contrast, kept.
                params["passes"] = 3 if energy > 0.03 else 2
        return params

    def apply(
        self,
        image: np.ndarray,
        *,
        strength: float = 1.0,
        mode: str = "rain",
        angle: float = -1.0,
        threshold: float = 0.04,
        passes: int = 2,
        width: int = 4,
        min_length: int = 13,
        **_ignored: Any,
    ) -> np.ndarray:
        """Remove rain streaks (and/or raindrop rims) from ``image``."""
        out = image.astype(np.float32).copy()
        if mode in ("rain", "both"):
            if angle < 0:
                angle, peak = estimate_streak_angle(luminance(out), min_length=min_length)
                logger.debug("rain angle %.1f (histogram peak/mean %.2f)", angle, peak)
            support = min_length | 1
            for _ in range(passes):
                out, _ = remove_streaks(out, angle, threshold, reach=width, support=support)
        if mode in ("raindrop", "both"):
            out = suppress_drop_highlights(out)
        return np.clip(out, 0.0, 1.0)
