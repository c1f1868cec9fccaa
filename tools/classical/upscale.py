"""Upsampling and recovery of low effective resolution by iterative back-projection.

Two modes share one model of the low-resolution image: ``y = U(D(x))`` where ``D`` is an
antialiased bicubic downsampling by the scale and ``U`` a bicubic upsampling (Pillow's, as in
MATLAB's ``imresize``), which is how ``evals.synthesis`` and most software make such images.

* ``factor > 1`` (the output is bigger): the input *is* the small image ``z``; the output starts
  as its bicubic enlargement and is corrected until its downsampling reproduces ``z``.
* ``factor == 1`` (same size, low effective resolution ``scale`` < 1): the small image is first
  recovered by inverting the bicubic upsampling (``z`` such that ``U(z) = y``), then the same
  back-projection restores the detail that bicubic interpolation attenuates.

The back-projected residual is made edge-aware by a guided filter steered by the current
estimate, so corrections align with edges instead of spreading as ringing; a mild guided-filter
sharpening, followed by a final re-projection, is optional. When ``scale`` is unknown it is
estimated as the coarsest scale at which the image is still explained by ``U(D(y))``.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from agent.degradations import Degradation
from agent.report import DegradationReport
from tools.base import STRENGTH, Param, Tool, ToolSpec, register_tool
from tools.imageops import guided_filter, luminance

logger = logging.getLogger(__name__)

#: Candidate effective-resolution fractions tried by :func:`estimate_scale`, finest first.
SCALE_CANDIDATES: tuple[float, ...] = (0.75, 0.6, 0.5, 0.4, 0.33, 0.25, 0.2, 0.15)
#: Jump in the U(D(y)) residual that marks the true scale (1.2-1.35 on sharp images, 2.3+ at the scale).
_SCALE_JUMP = 1.7
_MAX_OUTPUT_PIXELS = 64_000_000


def bicubic_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize to ``size`` = (width, height) of an (H, W) or (H, W, C) float array.

    Pillow's filter (like MATLAB's ``imresize``) widens the kernel when shrinking, so it is the
    usual way low-resolution images are made; the back-projection model uses it both ways.
    """
    from PIL import Image

    planes = image[..., None] if image.ndim == 2 else image
    out = np.empty((size[1], size[0], planes.shape[2]), dtype=np.float32)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(planes[..., c], dtype=np.float32), mode="F")
        out[..., c] = np.asarray(plane.resize(size, Image.Resampling.BICUBIC))
    return out[..., 0] if image.ndim == 2 else out


_down = bicubic_resize
_up = bicubic_resize


def small_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The (width, height) of an image of ``width`` x ``height`` downsampled by ``scale``."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def estimate_scale(image: np.ndarray) -> float:
    """Effective resolution fraction of a same-size image (1.0 when it looks natively sharp).

    For each candidate scale ``s`` the RMS of ``y - U(D(y, s))`` on luminance is measured; it stays
    tiny for every ``s`` above the true scale and jumps just below it. The smallest scale followed
    by a jump of 1.7x or more is returned, else 1.0. Noise or JPEG residue flattens the curve, and
    the estimate then says 1.0 (no restoration).
    """
    g = luminance(image)
    h, w = g.shape
    residuals = []
    for s in SCALE_CANDIDATES:
        size = small_size(w, h, s)
        if min(size) < 8:
            break
        residuals.append(float(np.sqrt(np.mean((g - _up(_down(g, size), (w, h))) ** 2))) + 1e-5)
    if len(residuals) < 2:
        return 1.0
    jumps = np.array(residuals[1:]) / np.array(residuals[:-1])
    coarsest = residuals[-1]
    # The finest resolution actually present is the smallest scale after which the residual jumps;
    # it must also explain the image well compared with the coarsest candidate.
    for index in range(len(jumps) - 1, -1, -1):
        if jumps[index] >= _SCALE_JUMP and residuals[index] <= 0.4 * coarsest:
            return SCALE_CANDIDATES[index]
    return 1.0


def invert_upsampling(image: np.ndarray, size: tuple[int, int], iterations: int = 3) -> np.ndarray:
    """The small image ``z`` of ``size`` whose bicubic upsampling best reproduces ``image``.

    Starts from the downsampled image and corrects it by back-projecting the mismatch.
    """
    h, w = image.shape[:2]
    z = _down(image, size)
    for _ in range(iterations):
        z = z + _down(image - _up(z, (w, h)), size)
    return z


def back_project(
    estimate: np.ndarray, small: np.ndarray, iterations: int, guided_radius: int, guided_eps: float
) -> np.ndarray:
    """Iterative back-projection: correct ``estimate`` until its downsampling equals ``small``.

    Works on (H, W) or (H, W, C) arrays. The upsampled residual is passed through a guided filter
    steered by the estimate's luminance (all but the last three iterations), so that the detail
    it adds follows the estimate's edges.
    """
    h, w = estimate.shape[:2]
    size = (small.shape[1], small.shape[0])
    x = estimate.astype(np.float32).copy()
    for k in range(iterations):
        correction = _up(small - _down(x, size), (w, h))
        if guided_radius > 0 and k < iterations - 3:
            guide = np.clip(x if x.ndim == 2 else luminance(x), 0.0, 1.0)
            correction = guided_filter(guide, correction, guided_radius, guided_eps)
        x += correction
    return x


def guided_sharpen(image: np.ndarray, amount: float, radius: int, eps: float = 1e-4) -> np.ndarray:
    """Add ``amount`` x the detail layer (image minus its guided-filter smoothing); edge-aware unsharp mask."""
    if amount <= 0:
        return image
    guide = np.clip(image if image.ndim == 2 else luminance(image), 0.0, 1.0)
    base = guided_filter(guide, image, radius, eps)
    return image + amount * (image - base)


@register_tool
class UpscaleDetail(Tool):
    """Bicubic upscaling or same-size detail recovery with edge-aware iterative back-projection."""

    spec = ToolSpec(
        name="upscale_detail",
        description=(
            "Recovers detail of low-resolution images by edge-aware iterative back-projection against a "
            "bicubic downsampling model; factor > 1 enlarges a small image (bicubic + back-projection), factor 1 "
            "restores a same-size image upsampled from `scale` of its resolution (estimated when 0)."
        ),
        restores=(Degradation.LOW_RESOLUTION,),
        params=(
            STRENGTH,
            Param("factor", "float", 1.0, 1.0, 4.0, description="output size / input size (1 keeps the size)"),
            Param("scale", "float", 0.0, 0.0, 1.0, description="effective resolution fraction (0: estimate)"),
            Param("iterations", "int", 8, 1, 50, description="back-projection iterations"),
            Param("sharpen", "float", 0.3, 0.0, 2.0, description="edge-aware sharpening before re-projection"),
        ),
        changes_size=True,
    )

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Map the estimated effective resolution ``scale`` onto the same-size mode."""
        est = report.estimates.get(Degradation.LOW_RESOLUTION)
        if est and 0.0 < est.params.get("scale", 0.0) < 1.0:
            return {"scale": float(np.clip(est.params["scale"], 0.05, 1.0))}
        return {}

    def apply(
        self,
        image: np.ndarray,
        *,
        strength: float = 1.0,
        factor: float = 1.0,
        scale: float = 0.0,
        iterations: int = 8,
        sharpen: float = 0.3,
        **_ignored: Any,
    ) -> np.ndarray:
        """Upscale by ``factor`` (> 1) or recover a same-size image of effective resolution ``scale``."""
        h, w = image.shape[:2]
        if factor > 1.0:
            out_size = (round(w * factor), round(h * factor))
            if out_size[0] * out_size[1] > _MAX_OUTPUT_PIXELS:
                raise ValueError(f"output would be {out_size[0]}x{out_size[1]}; lower factor or tile the image")
            small = image
            start = _up(image, out_size)
            ratio = factor
        else:
            if scale <= 0.0:
                scale = estimate_scale(image)
                logger.debug("estimated effective resolution scale %.2f", scale)
            if scale >= 0.95:
                return image.copy()
            size = small_size(w, h, scale)
            small = invert_upsampling(image, size)
            start = image
            ratio = 1.0 / scale
        radius = max(1, int(round(0.5 * ratio)))
        # Luma gets the edge-aware back-projection and sharpening; chroma, which the eye and PSNR-Y
        # barely see, gets the plain (cheap) one.
        start_ycc = cv2.cvtColor(np.ascontiguousarray(start, dtype=np.float32), cv2.COLOR_RGB2YCrCb)
        small_ycc = cv2.cvtColor(np.ascontiguousarray(small, dtype=np.float32), cv2.COLOR_RGB2YCrCb)
        luma = back_project(start_ycc[..., 0], small_ycc[..., 0], iterations, radius, 1e-3)
        if sharpen > 0:
            luma = guided_sharpen(luma, sharpen, radius)
            luma = back_project(luma, small_ycc[..., 0], 3, 0, 0.0)
        chroma = back_project(start_ycc[..., 1:], small_ycc[..., 1:], min(iterations, 5), 0, 0.0)
        x = cv2.cvtColor(np.dstack([luma, chroma]).astype(np.float32), cv2.COLOR_YCrCb2RGB)
        out = np.clip(x, 0.0, 1.0).astype(np.float32)
        if strength < 1.0 and out.shape != image.shape:
            # Tool.__call__ blends only same-size results; blend with the plain bicubic enlargement here.
            out = (strength * out + (1.0 - strength) * np.clip(start, 0.0, 1.0)).astype(np.float32)
        return out
