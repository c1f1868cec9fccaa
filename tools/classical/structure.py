"""Structural correction: put back the detail a restoration lost, taken from the original input.

AutoDIR's structural-correction module adds a learned residual ``I_res = I_restored + w F(I_restored,
I_input)`` so that a generative restorer's output keeps the input's structure. This is its classical,
training-free counterpart:

1. split both images into a base (guided filter steered by the restored image's luminance) and a
   detail layer;
2. regress, in every local window, the reference's detail on the restored image's detail
   (``ref_detail ~ a * restored_detail``, a guided filter in which the restored detail is the
   guide). ``a > 1`` means the restoration attenuated an edge the reference shows; the part of the
   reference's detail that is *not* explained by the restored structure (noise, rain, compression
   blocks, everything the restorer rightly removed) does not correlate with it and is never
   transferred;
3. ``I_res = restored + weight * (a_clamped - 1) * restored_detail`` with ``a`` clamped to
   ``[1, max_boost]``: detail is only ever given back, never taken away, and by at most a bounded
   factor; only where the two detail layers correlate (fully above 0.5), and only where the restored
   detail is well above the restored image's own residual noise: noise a restorer leaves behind
   correlates with the reference's noise and would otherwise be amplified.

The tool needs two images, which :meth:`Tool.apply` cannot take: call
:meth:`StructureCorrect.correct` (the agent does so after a restoration step). ``apply`` raises
:class:`ToolError` saying so; the spec's ``family`` is ``"correction"`` so planners can keep it out of
the per-degradation tool choice while its ``restores`` lists every degradation (it can follow any
restoration).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.degradations import ALL_DEGRADATIONS
from tools.base import STRENGTH, Param, Tool, ToolError, ToolSpec, check_image, register_tool
from tools.classical.deblur import estimate_noise_sigma
from tools.imageops import box_filter, guided_filter, luminance

#: Local correlation of the two detail layers below which nothing is transferred, and the ramp above it.
CORRELATION_FLOOR = 0.0
CORRELATION_RAMP = 0.5
#: Restored detail must carry this many times the variance of the restored image's residual noise.
NOISE_MARGIN = 8.0


def detail_layer(image: np.ndarray, guide: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """``image`` minus its guided-filter smoothing steered by ``guide``: the high-frequency layer."""
    return image - guided_filter(guide, image, radius, eps)


def local_gain(guide_detail: np.ndarray, target_detail: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Per-pixel least-squares slope ``a`` of ``target_detail ~ a * guide_detail`` over (2r+1)^2 windows.

    ``eps`` (squared intensity) regularises flat windows towards ``a = 0``; the slope is averaged
    over the windows covering each pixel, as in the guided filter.
    """
    mean_g = box_filter(guide_detail, radius)
    mean_t = box_filter(target_detail, radius)
    covariance = box_filter(guide_detail * target_detail, radius) - mean_g * mean_t
    variance = box_filter(guide_detail * guide_detail, radius) - mean_g * mean_g
    return box_filter(covariance / (variance + eps), radius)


def local_correlation(first: np.ndarray, second: np.ndarray, radius: int, eps: float = 1e-6) -> np.ndarray:
    """Pearson correlation of two (H, W) arrays over (2r+1)^2 windows, in [-1, 1]."""
    mean_a = box_filter(first, radius)
    mean_b = box_filter(second, radius)
    covariance = box_filter(first * second, radius) - mean_a * mean_b
    variance_a = np.clip(box_filter(first * first, radius) - mean_a * mean_a, 0.0, None)
    variance_b = np.clip(box_filter(second * second, radius) - mean_b * mean_b, 0.0, None)
    return covariance / np.sqrt(variance_a * variance_b + eps * eps)


@register_tool
class StructureCorrect(Tool):
    """Detail transfer from the degraded input onto a restored image, gated by structural agreement."""

    spec = ToolSpec(
        name="structure_correct",
        description=(
            "Structural correction after a restoration: gives back edges the restorer attenuated, taking their "
            "amplitude from the original input where its detail agrees with the restored structure (never noise). "
            "Needs both images: call StructureCorrect.correct(restored, reference, weight)."
        ),
        restores=ALL_DEGRADATIONS,
        params=(
            STRENGTH,
            Param("weight", "float", 1.0, 0.0, 1.0, description="w in I_res = I_restored + w * detail"),
            Param("radius", "int", 2, 1, 8, description="detail-layer guided-filter radius, pixels"),
            Param("max_boost", "float", 2.0, 1.0, 4.0, description="largest factor an edge may be amplified by"),
        ),
        family="correction",
    )

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Refuse: structural correction needs the reference image too.

        Raises:
            ToolError: always; use :meth:`correct` with the restored and the original image.
        """
        raise ToolError(
            "structure_correct needs the original input as well: call "
            "StructureCorrect().correct(restored, reference, weight) instead of running it as a step"
        )

    def correct(
        self,
        restored: np.ndarray,
        reference: np.ndarray,
        weight: float = 1.0,
        radius: int = 2,
        max_boost: float = 2.0,
    ) -> np.ndarray:
        """Return ``restored`` with the detail it lost relative to ``reference`` given back.

        Args:
            restored: the restoration result, float32 (H, W, 3) in [0, 1].
            reference: the image the restoration started from (same size).
            weight: 0 returns ``restored``; 1 gives back all the attenuated detail (AutoDIR uses 1 for
                most tasks and 0.1 after super-resolution).
            radius: radius of the guided filter that separates detail from base, pixels.
            max_boost: the largest factor by which a restored edge is amplified.

        Returns:
            The corrected image, float32 in [0, 1].

        Raises:
            ValueError: if the images are not valid or differ in size.
        """
        check_image(restored)
        check_image(reference)
        if restored.shape != reference.shape:
            raise ValueError(
                f"restored {restored.shape} and reference {reference.shape} differ in size; "
                "resize the reference to the restored image first"
            )
        weight = float(self.spec.param("weight").validate(weight))
        radius = int(self.spec.param("radius").validate(radius))
        max_boost = float(self.spec.param("max_boost").validate(max_boost))
        if weight == 0.0:
            return restored.copy()
        guide = luminance(restored)
        restored_detail = detail_layer(restored, guide, radius, 1e-3)
        reference_detail = detail_layer(reference, guide, radius, 1e-3)
        # One gain map from luminance so that colours are boosted together (no chroma fringes).
        restored_luma = luminance(restored_detail)
        reference_luma = luminance(reference_detail)
        window = radius + 1
        gain = local_gain(restored_luma, reference_luma, window, 1e-5)
        # Noise a restorer leaves behind correlates with the reference's noise and would be boosted
        # too; there the correlation of the two detail layers is weak (the reference's noise is much
        # stronger than the residue), on real structure it is close to 1. Boost only the latter.
        correlation = local_correlation(restored_luma, reference_luma, window)
        agreement = np.clip((correlation - CORRELATION_FLOOR) / CORRELATION_RAMP, 0.0, 1.0)
        # Detail weaker than the restored image's own residual noise is not structure either.
        residual_noise = estimate_noise_sigma(restored) ** 2
        significance = box_filter(restored_luma * restored_luma, window) / (NOISE_MARGIN * residual_noise + 1e-7)
        boost = (np.clip(gain, 1.0, max_boost) - 1.0) * agreement * np.clip(significance - 1.0, 0.0, 1.0)
        out = restored + weight * boost[..., None] * restored_detail
        return np.clip(out, 0.0, 1.0).astype(np.float32)
