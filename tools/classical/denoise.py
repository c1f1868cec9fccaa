"""Noise removal: sliding-window DCT shrinkage and non-local means, both in a decorrelated colour space.

Both tools first rotate RGB into an orthonormal opponent colour space (one luminance and two
chrominance axes). The rotation keeps independent per-channel Gaussian noise independent with the
same standard deviation, while concentrating the image's structure into the luminance channel, so
each channel can be denoised on its own with a threshold tied to one known sigma.

* ``denoise_dct`` (the stronger and faster one) shrinks the coefficients of every overlapping 8x8 DCT
  patch: hard thresholding at 2.5 sigma, then, on the luminance, an empirical Wiener stage steered by
  that first estimate (Yu & Sapiro's sliding DCT denoiser with BM3D's two-stage shrinkage and
  sparsity-weighted aggregation, without block matching). The transforms run as separable 1-D
  filters over the whole image, so no patch is ever materialised.
* ``denoise_nlm`` is non-local means (OpenCV's fast implementation) with the filtering strength tied
  to sigma.

Signal-dependent (Poisson) noise is handled with the generalised Anscombe variance-stabilising
transform and Makitalo & Foi's closed-form unbiased inverse. When ``sigma`` is 0 the tools estimate
it per opponent channel from the finest diagonal Haar coefficients (Donoho's median rule).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from agent.degradations import Degradation
from agent.report import DegradationReport
from tools.base import STRENGTH, Param, Tool, ToolSpec, register_tool

logger = logging.getLogger(__name__)

#: Orthonormal opponent transform: rows are (luminance, red-blue, green-magenta) axes.
_OPPONENT = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, -2.0, 1.0]], dtype=np.float32)
_OPPONENT /= np.linalg.norm(_OPPONENT, axis=1, keepdims=True)

#: Below this standard deviation (about half an 8-bit level) a channel is left untouched.
_MIN_SIGMA = 0.5 / 255.0

PATCH = 8
_HARD_THRESHOLD = 2.5  # in units of sigma; 2.35-2.7 are equally good on BSD100 at sigma 15-50

# Sliding-DCT basis (orthonormal DCT-II), as correlation taps and as flipped (convolution) taps.
_n = np.arange(PATCH)
_DCT = np.sqrt(2.0 / PATCH) * np.cos(np.pi * (2 * _n[None, :] + 1) * _n[:, None] / (2 * PATCH))
_DCT[0] /= np.sqrt(2.0)
_DCT_TAPS = [np.ascontiguousarray(row, dtype=np.float32) for row in _DCT]
_DCT_FLIPPED = [np.ascontiguousarray(row[::-1], dtype=np.float32) for row in _DCT]


# --------------------------------------------------------------------------------------------
# Colour space, noise estimation and variance stabilisation
# --------------------------------------------------------------------------------------------


def to_opponent(image: np.ndarray) -> np.ndarray:
    """Rotate an RGB image into the orthonormal opponent space (channel 0 = luminance * sqrt(3))."""
    return (image @ _OPPONENT.T).astype(np.float32)


def from_opponent(opponent: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_opponent`."""
    return (opponent @ _OPPONENT).astype(np.float32)


def estimate_sigma(channel: np.ndarray) -> float:
    """Noise standard deviation of one channel by the median rule on its finest diagonal Haar band.

    Texture biases the estimate upwards a little (about 1-3/255 on clean photos); noise dominates
    the diagonal band as soon as it is visible, so the estimate is accurate from sigma ~ 5/255 up.
    """
    h, w = (channel.shape[0] // 2) * 2, (channel.shape[1] // 2) * 2
    x = channel[:h, :w].astype(np.float32)
    diagonal = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) * 0.5
    return float(np.median(np.abs(diagonal)) / 0.6745)


def estimate_noise(image: np.ndarray) -> np.ndarray:
    """Per-channel noise sigma of an RGB image in the opponent space (3 values, [0, 1] units)."""
    opponent = to_opponent(image)
    return np.array([estimate_sigma(opponent[..., c]) for c in range(3)], dtype=np.float32)


class _Stabiliser:
    """Generalised Anscombe transform for noise whose variance is ``a * x`` (Poisson-like).

    ``forward`` maps [0, 1] intensities to roughly [0, 1] values whose noise has the constant standard
    deviation ``sigma``; ``inverse`` is Makitalo & Foi's closed-form approximation of the exact
    unbiased inverse, which stays accurate at the low photon counts of dark regions.
    """

    def __init__(self, variance_slope: float) -> None:
        self.a = max(float(variance_slope), 1e-8)
        self.scale = 2.0 * np.sqrt(1.0 / self.a + 0.375)
        self.sigma = 1.0 / self.scale

    def forward(self, image: np.ndarray) -> np.ndarray:
        return (2.0 * np.sqrt(np.maximum(image, 0.0) / self.a + 0.375) / self.scale).astype(np.float32)

    def inverse(self, stabilised: np.ndarray) -> np.ndarray:
        y = np.maximum(stabilised.astype(np.float64) * self.scale, 2.0 * np.sqrt(0.375))
        r = np.sqrt(1.5)
        counts = 0.25 * y * y + 0.25 * r / y - 1.375 / (y * y) + 0.625 * r / (y * y * y) - 0.125
        return (np.maximum(counts, 0.0) * self.a).astype(np.float32)


def _stabiliser_for(image: np.ndarray, sigma: float) -> _Stabiliser:
    """Stabiliser for Poisson-like noise whose std is ``sigma`` at the image's mean intensity."""
    if sigma <= 0.0:
        sigma = float(np.median(estimate_noise(image)))
    mean = max(float(image.mean()), 1e-3)
    return _Stabiliser(sigma * sigma / mean)


def _run_in_opponent_space(
    image: np.ndarray,
    sigma: float,
    poisson: bool,
    denoise_channels: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Stabilise if Poisson, rotate to the opponent space, denoise, and undo both steps."""
    stabiliser = _stabiliser_for(image, sigma) if poisson else None
    work = stabiliser.forward(image) if stabiliser else image
    opponent = to_opponent(work)
    if stabiliser is not None:
        sigmas = np.full(3, stabiliser.sigma, dtype=np.float32)
    elif sigma > 0.0:
        sigmas = np.full(3, sigma, dtype=np.float32)
    else:
        sigmas = np.array([estimate_sigma(opponent[..., c]) for c in range(3)], dtype=np.float32)
        logger.debug("estimated opponent-channel noise sigmas %s", np.round(sigmas * 255, 2))
    out = from_opponent(denoise_channels(opponent, sigmas))
    return stabiliser.inverse(out) if stabiliser else out


def _suggest_noise_params(report: DegradationReport) -> dict[str, Any]:
    est = report.estimates.get(Degradation.NOISE)
    if est is None:
        return {}
    params: dict[str, Any] = {}
    sigma = est.params.get("sigma")
    if sigma is not None and sigma > 0.0:
        params["sigma"] = float(np.clip(sigma, 0.0, 0.3))
    if est.params.get("poisson", 0.0) >= 0.5:
        params["poisson"] = True
    return params


_SIGMA = Param(
    "sigma",
    "float",
    0.0,
    0.0,
    0.3,
    description="noise std in [0, 1] units (at the mean intensity if poisson); 0 = estimate",
)
_POISSON = Param("poisson", "bool", False, description="signal-dependent (Poisson) noise: stabilise variance first")


# --------------------------------------------------------------------------------------------
# Sliding-window DCT shrinkage
# --------------------------------------------------------------------------------------------


def _row_filter(x: np.ndarray, taps: np.ndarray, anchor: int) -> np.ndarray:
    return cv2.filter2D(x, -1, taps[None, :], anchor=(anchor, 0), borderType=cv2.BORDER_CONSTANT)


def _col_filter(x: np.ndarray, taps: np.ndarray, anchor: int) -> np.ndarray:
    return cv2.filter2D(x, -1, taps[:, None], anchor=(0, anchor), borderType=cv2.BORDER_CONSTANT)


class SlidingDCT:
    """Orthonormal DCT coefficients of every 8x8 patch of a padded channel, one frequency at a time.

    ``coefficient(u, v)`` is an image whose pixel ``p`` holds coefficient (u, v) of the patch whose
    top-left corner is ``p``. Row transforms are computed once; column transforms on demand.
    """

    def __init__(self, padded: np.ndarray) -> None:
        self.rows = [_row_filter(padded, _DCT_TAPS[v], 0) for v in range(PATCH)]

    def coefficient(self, u: int, v: int) -> np.ndarray:
        """Coefficient (u, v) (vertical, horizontal frequency) of every patch, as an image."""
        return _col_filter(self.rows[v], _DCT_TAPS[u], 0)


def pad_for_patches(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Reflect-pad a channel for :class:`SlidingDCT`.

    Returns:
        The padded channel, a 0/1 mask of the patch positions that overlap the image (use it as or in
        the aggregation weights), and the slices that crop the aggregate back to the image.
    """
    h, w = channel.shape
    pad = PATCH - 1
    padded = cv2.copyMakeBorder(np.ascontiguousarray(channel, dtype=np.float32), pad, pad, pad, pad, cv2.BORDER_REFLECT)
    valid = np.zeros(padded.shape, np.float32)
    valid[: h + pad, : w + pad] = 1.0
    return padded, valid, (slice(pad, pad + h), slice(pad, pad + w))


def aggregate_patches(weighted: Callable[[int, int], np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Inverse-transform every patch, weight it and average the overlapping pixels.

    Args:
        weighted: ``weighted(u, v)`` returns the (already weighted) coefficient image of frequency (u, v).
        weights: The per-patch weights that were applied (zero outside the patches to use).

    Returns:
        The aggregate on the padded grid; crop it with the slices of :func:`pad_for_patches`.
    """
    total = np.zeros_like(weights)
    for u in range(PATCH):
        rows = np.zeros_like(weights)
        for v in range(PATCH):
            rows += _row_filter(weighted(u, v), _DCT_FLIPPED[v], PATCH - 1)
        total += _col_filter(rows, _DCT_FLIPPED[u], PATCH - 1)
    anchor = (PATCH - 1, PATCH - 1)
    norm = cv2.boxFilter(weights, -1, (PATCH, PATCH), anchor=anchor, normalize=False, borderType=cv2.BORDER_CONSTANT)
    return total / np.maximum(norm, 1e-12)


def dct_denoise_channel(channel: np.ndarray, sigma: float, wiener: bool = True) -> np.ndarray:
    """Denoise one channel with sliding 8x8 DCT shrinkage (hard threshold, then optional Wiener).

    Args:
        channel: (H, W) float32 image.
        sigma: Standard deviation of its additive white Gaussian noise.
        wiener: Run the second, empirical-Wiener stage (about +0.3 dB, twice the time).

    Returns:
        The denoised (H, W) float32 channel.
    """
    padded, valid, crop = pad_for_patches(channel)
    noisy = SlidingDCT(padded)
    threshold = np.float32(_HARD_THRESHOLD * sigma)

    def hard(u: int, v: int) -> np.ndarray:
        c = noisy.coefficient(u, v)
        return c if u == 0 and v == 0 else c * (np.abs(c) > threshold)

    kept = np.ones(padded.shape, np.float32)  # the DC coefficient is always kept
    for u in range(PATCH):
        for v in range(PATCH):
            if u or v:
                kept += np.abs(noisy.coefficient(u, v)) > threshold
    weights = valid / kept  # sparser patches are more reliable (BM3D's aggregation weights)
    basic = aggregate_patches(lambda u, v: hard(u, v) * weights, weights)[crop]
    if not wiener:
        return basic

    pilot = SlidingDCT(pad_for_patches(basic)[0])
    variance = np.float32(sigma * sigma)

    def gain(u: int, v: int) -> np.ndarray:
        p2 = np.square(pilot.coefficient(u, v))
        return p2 / (p2 + variance)

    energy = np.zeros(padded.shape, np.float32)
    for u in range(PATCH):
        for v in range(PATCH):
            energy += np.square(gain(u, v))
    weights = valid / np.maximum(energy, 1e-3)
    return aggregate_patches(lambda u, v: noisy.coefficient(u, v) * gain(u, v) * weights, weights)[crop]


@register_tool
class DctDenoise(Tool):
    """Sliding-window DCT shrinkage denoiser (hard threshold + Wiener) in the opponent colour space."""

    spec = ToolSpec(
        name="denoise_dct",
        description=(
            "Removes Gaussian or Poisson sensor noise by shrinking overlapping 8x8 DCT patches (hard threshold, "
            "then Wiener) in a decorrelated colour space; strongest classical denoiser here, ~0.35 s per 512x512."
        ),
        restores=(Degradation.NOISE,),
        params=(
            STRENGTH,
            _SIGMA,
            _POISSON,
            Param("wiener", "bool", True, description="second, Wiener stage on the luminance (+0.3 dB, 2x time)"),
        ),
    )

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Pass the estimated noise sigma and Poisson flag through."""
        return _suggest_noise_params(report)

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Denoise ``image``; see the module docstring for the method."""
        wiener = bool(params.get("wiener", True))

        def channels(opponent: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
            out = opponent.copy()
            for c in range(3):
                if sigmas[c] >= _MIN_SIGMA:
                    # Wiener helps the luminance; on the chrominance it costs time for no measurable gain.
                    out[..., c] = dct_denoise_channel(opponent[..., c], float(sigmas[c]), wiener=wiener and c == 0)
            return out

        return _run_in_opponent_space(image, float(params.get("sigma", 0.0)), bool(params.get("poisson")), channels)


# --------------------------------------------------------------------------------------------
# Non-local means
# --------------------------------------------------------------------------------------------

#: uint8 coding of the opponent space: luminance spans [0, 255], chrominance is centred on 127.5.
_NLM_SCALE = 255.0 / np.sqrt(3.0)
_NLM_OFFSET = np.array([0.0, 127.5, 127.5], dtype=np.float32)


def _nlm_h_factor(sigma: float) -> float:
    """OpenCV's ``h`` per unit sigma: 1.0 up to sigma 25/255, easing to 0.9 at 50/255 (tuned on BSD100)."""
    return float(np.clip(1.0 - 0.004 * (sigma * 255.0 - 25.0), 0.85, 1.0))


@register_tool
class NlmDenoise(Tool):
    """Non-local means (OpenCV) on the opponent colour channels with ``h`` tied to the noise sigma."""

    spec = ToolSpec(
        name="denoise_nlm",
        description=(
            "Removes Gaussian or Poisson sensor noise with non-local means (5x5 patches, 11x11 search) in a "
            "decorrelated colour space; ~0.5-1 dB below denoise_dct on photos, ~0.35 s per 512x512."
        ),
        restores=(Degradation.NOISE,),
        params=(
            STRENGTH,
            _SIGMA,
            _POISSON,
            Param("h_scale", "float", 1.0, 0.5, 2.0, description="multiplies the filtering strength h"),
            Param("search_radius", "int", 5, 3, 15, description="half-size of the search window in pixels"),
        ),
    )

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Pass the estimated noise sigma and Poisson flag through."""
        return _suggest_noise_params(report)

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Denoise ``image`` with non-local means."""
        h_scale = float(params.get("h_scale", 1.0))
        search = 2 * int(params.get("search_radius", 5)) + 1

        def channels(opponent: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
            coded = np.clip(opponent * _NLM_SCALE + _NLM_OFFSET + 0.5, 0.0, 255.0).astype(np.uint8)
            out = opponent.copy()
            luma_sigma, chroma_sigma = float(sigmas[0]), float(np.mean(sigmas[1:]))
            if luma_sigma >= _MIN_SIGMA:
                h = h_scale * _nlm_h_factor(luma_sigma) * luma_sigma * _NLM_SCALE
                luma = cv2.fastNlMeansDenoising(np.ascontiguousarray(coded[..., 0]), None, float(h), 5, search)
                out[..., 0] = luma.astype(np.float32) / _NLM_SCALE
            if chroma_sigma >= _MIN_SIGMA:
                h = h_scale * _nlm_h_factor(chroma_sigma) * chroma_sigma * _NLM_SCALE
                chroma = cv2.fastNlMeansDenoising(np.ascontiguousarray(coded[..., 1:]), None, float(h), 5, search)
                out[..., 1:] = (chroma.astype(np.float32) - _NLM_OFFSET[1:]) / _NLM_SCALE
            return out

        return _run_in_opponent_space(image, float(params.get("sigma", 0.0)), bool(params.get("poisson")), channels)
