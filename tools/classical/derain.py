"""Rain-streak and raindrop-rim removal by directional median filtering.

Rain streaks are thin, bright and elongated along one dominant direction. The tool

1. isolates thin bright structures with a morphological white top-hat of the luminance;
2. estimates the streak direction from the structure tensor of that residual (the gradients of a
   streak point across it), restricted to within 45 degrees of vertical unless an angle is given;
3. compares every pixel with the median of its neighbours *across* the streak direction: a
   streak pixel is brighter than that median, a scene edge parallel to it is not (the median of
   a line across a step edge is the step itself); the excess is then averaged *along* the streak
   direction, which keeps elongated streaks and rejects isolated texture;
4. replaces the detected pixels by the cross-direction median, only ever darkening (rain
   brightens: it is a screen blend of a bright layer), with a soft mask.

Raindrops on the lens are blurred, refracted discs with a bright rim; ``mode="raindrop"`` (or
``"both"``) removes the thin bright rim arcs with an isotropic version of the same test and
otherwise leaves the drop interiors alone: recovering what a drop hides needs a learned model.
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
TEXTURE_WEIGHT = 1.0


def white_tophat(channel: np.ndarray, size: int) -> np.ndarray:
    """Channel minus its morphological opening with a ``size`` x ``size`` square: thin bright detail."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    return channel - cv2.morphologyEx(channel, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REFLECT)


def estimate_streak_angle(luma: np.ndarray, limits: tuple[float, float] = _ANGLE_RANGE) -> tuple[float, float]:
    """Dominant streak direction (degrees CCW from horizontal) and a confidence (peak / mean, ~1 = none).

    Gradients of the top-hat residual (thin bright structures) point across streaks. Their
    directions, weighted by magnitude over the strongest 15 % of the residual, are histogrammed
    (1-degree bins, smoothed by 3 degrees); the peak inside ``limits`` is the streak direction.
    A histogram mode is used rather than the structure tensor's mean, which scene edges bias.
    """
    residual = white_tophat(luma, 7)
    gx = cv2.Sobel(residual, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(residual, cv2.CV_32F, 0, 1, ksize=3)
    selected = residual > np.percentile(residual, 85)
    if not selected.any():
        return 90.0, 1.0
    gradient_angle = np.degrees(np.arctan2(gy[selected], gx[selected]))  # x right, y down
    streak_angle = (-(gradient_angle + 90.0)) % 180.0  # CCW as displayed
    weights = np.hypot(gx[selected], gy[selected])
    hist, _ = np.histogram(streak_angle, bins=180, range=(0.0, 180.0), weights=weights)
    wrapped = np.concatenate([hist[-10:], hist, hist[:10]])
    smooth = np.convolve(wrapped, np.exp(-0.5 * (np.arange(-9, 10) / 3.0) ** 2), mode="same")[10:-10]
    centres = np.arange(180) + 0.5
    allowed = (centres >= limits[0]) & (centres <= limits[1])
    best = int(np.argmax(np.where(allowed, smooth, -np.inf)))
    return float(centres[best]), float(smooth[best] / (smooth.mean() + 1e-12))


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` sampled at (x + dx, y + dy) with bilinear interpolation and reflected borders."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
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


def line_average(image: np.ndarray, angle: float, length: int) -> np.ndarray:
    """Mean of ``image`` along a ``length``-pixel line at ``angle`` degrees through each pixel."""
    half = length // 2 + 1
    n = 2 * half + 1
    kernel = np.zeros((n, n), np.float32)
    theta = np.deg2rad(angle)
    for t in np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, 4 * length):
        x = half + t * np.cos(theta)
        y = half - t * np.sin(theta)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0, x0] += (1 - fx) * (1 - fy)
        kernel[y0, x0 + 1] += fx * (1 - fy)
        kernel[y0 + 1, x0] += (1 - fx) * fy
        kernel[y0 + 1, x0 + 1] += fx * fy
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


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
        support: length of the along-streak averaging that rejects short, isolated bright detail.
    """
    across = angle + 90.0
    luma = luminance(image)
    excess_across = np.clip(luma - directional_median(luma, across, reach), 0.0, None)
    excess_along = np.clip(luma - directional_median(luma, angle, reach), 0.0, None)
    # A streak is bright against its cross-section but not against its own length; bright specks
    # and lines at other angles are bright against both, so the difference keeps only streaks.
    selective = np.clip(excess_across - excess_along, 0.0, None)
    evidence = np.minimum(selective, 1.5 * line_average(selective, angle, support))
    # Texture is bright against its own length too: its local level raises the bar where it is busy.
    texture = cv2.blur(excess_along, (15, 15), borderType=cv2.BORDER_REFLECT)
    evidence = evidence - TEXTURE_WEIGHT * texture
    mask = np.clip((evidence - 0.5 * threshold) / (0.5 * threshold), 0.0, 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.7)
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


def remove_bright_rims(image: np.ndarray, threshold: float, size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Darken thin bright curves (raindrop rims, specks) down to the morphological opening of the image.

    Only structures thinner than ``size`` pixels and brighter than their surroundings by more
    than ``threshold`` are touched, so textures of normal contrast are kept.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(image, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REFLECT)
    excess = luminance(image) - luminance(opened)
    mask = np.clip((excess - threshold) / threshold, 0.0, 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.7)[..., None]
    return image - mask * np.clip(image - opened, 0.0, None), mask[..., 0]


@register_tool
class DirectionalDerain(Tool):
    """Rain-streak removal by cross-direction median replacement along the estimated rain angle."""

    spec = ToolSpec(
        name="derain_directional",
        description=(
            "Removes rain streaks: estimates their direction (structure tensor), detects pixels brighter than "
            "the median across the streak and elongated along it, and darkens them to that median. "
            "mode=raindrop/both also removes thin bright raindrop rims. Only ever darkens; fast, conservative."
        ),
        restores=(Degradation.RAIN, Degradation.RAINDROP),
        params=(
            STRENGTH,
            Param("mode", "choice", "rain", choices=("rain", "raindrop", "both"), description="what to remove"),
            Param("angle", "float", -1.0, -1.0, 180.0, description="streak direction, degrees CCW (-1: estimate)"),
            Param("threshold", "float", 0.04, 0.005, 0.3, description="brightness excess that counts as rain"),
            Param("passes", "int", 2, 1, 4, description="detection/removal passes (dense rain needs more)"),
            Param("width", "int", 4, 1, 8, description="largest streak half-width handled, pixels"),
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
                # Heavy rain: more passes; the threshold stays put (it is about streak contrast).
                params["passes"] = 3 if energy > 0.08 else 2
        return params

    def apply(
        self,
        image: np.ndarray,
        strength: float = 1.0,
        mode: str = "rain",
        angle: float = -1.0,
        threshold: float = 0.04,
        passes: int = 2,
        width: int = 4,
    ) -> np.ndarray:
        """Remove rain streaks (and/or raindrop rims) from ``image``."""
        out = image.astype(np.float32).copy()
        if mode in ("rain", "both"):
            if angle < 0:
                angle, coherence = estimate_streak_angle(luminance(out))
                logger.debug("rain angle %.1f (coherence %.2f)", angle, coherence)
            support = max(5, int(round(min(image.shape[:2]) / 40)) | 1)
            for _ in range(passes):
                out, _ = remove_streaks(out, angle, threshold, reach=width, support=support)
        if mode in ("raindrop", "both"):
            out, _ = remove_bright_rims(out, max(threshold, 0.06))
        return np.clip(out, 0.0, 1.0)
