"""No-reference underwater quality measures: UIQM (Panetta et al. 2016) and UCIQE (Yang & Sowmya 2015).

Both are higher-is-better and take float RGB images in ``[0, 1]``. Published implementations disagree on
scales and small details, so the conventions used here are spelled out; compare numbers across papers only
when the implementation is the same.

UIQM = 0.0282 UICM + 0.2953 UISM + 3.5753 UIConM, on the 8-bit scale ``[0, 255]``:

* UICM (colourfulness): opponent channels ``RG = R - G`` and ``YB = (R + G) / 2 - B``; their asymmetric
  alpha-trimmed means (alpha_L = alpha_R = 0.1: the ``ceil(0.1 K)`` smallest and ``floor(0.1 K)`` largest of
  the K pixels are left out) and their variances about those means over all pixels;
  ``UICM = -0.0268 sqrt(mu_RG^2 + mu_YB^2) + 0.1586 sqrt(var_RG + var_YB)``.
* UISM (sharpness): per channel, the Sobel gradient magnitude multiplied by the channel itself, then
  ``EME = 2 / (k1 k2) * sum over blocks of log(max / min)`` (blocks whose minimum is 0 add nothing);
  weighted 0.299, 0.587, 0.114 for R, G, B.
* UIConM (contrast): ``logAMEE = -1 / (k1 k2) * sum over blocks of r log r`` with ``r = (max - min) /
  (max + min)`` on the BT.601 intensity; plain arithmetic stands in for the PLIP operators, as in the most
  used Python implementation (blocks with ``max - min = 0`` add nothing).

Blocks are :data:`UIQM_BLOCK` x :data:`UIQM_BLOCK` pixels; rows and columns beyond the last whole block are left out.
Float inputs are rounded to 8 bits first: the measures are defined on 8-bit images (UISM's ``log(max / min)``
is discontinuous where a block minimum reaches 0), so an array and its saved 8-bit file score the same.

UCIQE = 0.4680 sigma_c + 0.2745 con_l + 0.2576 mu_s in CIELab (D65, from sRGB), with L and chroma both
divided by 100 so that every term is of order one:

* sigma_c: the standard deviation of chroma ``C = sqrt(a^2 + b^2) / 100``;
* con_l: the contrast of luminance, the mean of the brightest 1 % of ``L / 100`` minus the mean of the darkest 1 %;
* mu_s: the mean saturation ``C / sqrt(C^2 + L^2)`` (CIE saturation, 0 for grey pixels).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

#: UIQM weights (Panetta, Gao & Agaian 2016) of UICM, UISM and UIConM.
UIQM_WEIGHTS: tuple[float, float, float] = (0.0282, 0.2953, 3.5753)
#: UCIQE weights (Yang & Sowmya 2015) of the chroma spread, luminance contrast and mean saturation.
UCIQE_WEIGHTS: tuple[float, float, float] = (0.4680, 0.2745, 0.2576)
#: Block side (pixels) of UISM's EME and UIConM's logAMEE.
UIQM_BLOCK = 8
#: Trimming fractions of UICM's alpha-trimmed mean (low and high end).
UICM_TRIM = 0.1
#: Channel weights of UISM (BT.601 luma weights).
UISM_CHANNEL_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: Share of the darkest and brightest pixels compared in UCIQE's luminance contrast.
UCIQE_TAIL = 0.01


def _check(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected a float image in [0, 1], got {array.dtype}; divide uint8 images by 255")
    # Both measures are defined on 8-bit images, and UISM's log(max / min) jumps when a block's minimum
    # rounds to 0: score the 8-bit image that would be saved, not the float one, so that an image and
    # its saved file always score the same.
    return np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0) / 255.0


def _trimmed_mean(values: np.ndarray, trim: float = UICM_TRIM) -> float:
    ordered = np.sort(values.ravel())
    count = ordered.size
    low, high = math.ceil(trim * count), math.floor(trim * count)
    kept = ordered[low : count - high]
    return float(kept.mean()) if kept.size else float(ordered.mean())


def uicm(image: np.ndarray) -> float:
    """Underwater image colourfulness measure of a float RGB image in ``[0, 1]`` (8-bit scale)."""
    x = _check(image) * 255.0
    rg = x[..., 0] - x[..., 1]
    yb = (x[..., 0] + x[..., 1]) / 2.0 - x[..., 2]
    mu_rg, mu_yb = _trimmed_mean(rg), _trimmed_mean(yb)
    var_rg = float(np.mean((rg - mu_rg) ** 2))
    var_yb = float(np.mean((yb - mu_yb) ** 2))
    return -0.0268 * math.hypot(mu_rg, mu_yb) + 0.1586 * math.sqrt(var_rg + var_yb)


def _blocks(plane: np.ndarray, block: int) -> np.ndarray:
    """``(k2, k1, block * block)`` view of the whole blocks of a 2-D plane."""
    k2, k1 = plane.shape[0] // block, plane.shape[1] // block
    if k1 == 0 or k2 == 0:
        raise ValueError(f"image is {plane.shape[1]}x{plane.shape[0]}; UIQM needs at least {block}x{block} pixels")
    cropped = plane[: k2 * block, : k1 * block]
    return cropped.reshape(k2, block, k1, block).transpose(0, 2, 1, 3).reshape(k2, k1, block * block)


def eme(plane: np.ndarray, block: int = UIQM_BLOCK) -> float:
    """Enhancement measure: ``2 / (k1 k2) * sum log(max / min)`` over the blocks of a 2-D plane."""
    tiles = _blocks(np.asarray(plane, dtype=np.float64), block)
    high, low = tiles.max(axis=2), tiles.min(axis=2)
    valid = low > 0
    ratio = np.where(valid, high / np.where(valid, low, 1.0), 1.0)
    return float(2.0 / (tiles.shape[0] * tiles.shape[1]) * np.log(ratio).sum())


def uism(image: np.ndarray, block: int = UIQM_BLOCK) -> float:
    """Underwater image sharpness measure: weighted EME of each channel's Sobel edges times the channel."""
    x = _check(image) * 255.0
    total = 0.0
    for channel, weight in zip(range(3), UISM_CHANNEL_WEIGHTS, strict=True):
        plane = x[..., channel]
        edges = np.hypot(ndimage.sobel(plane, axis=0), ndimage.sobel(plane, axis=1))
        total += weight * eme(edges * plane, block)
    return total


def uiconm(image: np.ndarray, block: int = UIQM_BLOCK) -> float:
    """Underwater image contrast measure: logAMEE of the intensity (plain arithmetic for the PLIP operators)."""
    x = _check(image) * 255.0
    intensity = x @ np.array([0.299, 0.587, 0.114])
    tiles = _blocks(intensity, block)
    high, low = tiles.max(axis=2), tiles.min(axis=2)
    spread, total = high - low, high + low
    valid = (spread > 0) & (total > 0)
    ratio = np.where(valid, spread / np.where(valid, total, 1.0), 1.0)
    return float(-np.sum(ratio * np.log(ratio)) / (tiles.shape[0] * tiles.shape[1]))


def uiqm_components(image: np.ndarray, block: int = UIQM_BLOCK) -> dict[str, float]:
    """UICM, UISM, UIConM and their weighted sum UIQM of a float RGB image in ``[0, 1]``."""
    parts = {"uicm": uicm(image), "uism": uism(image, block), "uiconm": uiconm(image, block)}
    c1, c2, c3 = UIQM_WEIGHTS
    parts["uiqm"] = c1 * parts["uicm"] + c2 * parts["uism"] + c3 * parts["uiconm"]
    return parts


def uiqm(image: np.ndarray, block: int = UIQM_BLOCK) -> float:
    """Underwater image quality measure (Panetta et al. 2016), higher is better; see the module notes."""
    return uiqm_components(image, block)["uiqm"]


def uciqe_components(image: np.ndarray) -> dict[str, float]:
    """Chroma spread, luminance contrast, mean saturation and their weighted sum UCIQE."""
    x = _check(image).astype(np.float32)
    lab = cv2.cvtColor(x, cv2.COLOR_RGB2Lab).astype(np.float64)  # float input: L in [0, 100], a and b unscaled
    lightness = lab[..., 0].ravel() / 100.0
    chroma = np.hypot(lab[..., 1], lab[..., 2]).ravel() / 100.0
    sigma_c = float(chroma.std())
    ordered = np.sort(lightness)
    tail = max(1, round(UCIQE_TAIL * ordered.size))
    con_l = float(ordered[-tail:].mean() - ordered[:tail].mean())
    norm = np.hypot(chroma, lightness)
    saturation = np.where(norm > 0, chroma / np.where(norm > 0, norm, 1.0), 0.0)
    mu_s = float(saturation.mean())
    c1, c2, c3 = UCIQE_WEIGHTS
    return {"sigma_c": sigma_c, "con_l": con_l, "mu_s": mu_s, "uciqe": c1 * sigma_c + c2 * con_l + c3 * mu_s}


def uciqe(image: np.ndarray) -> float:
    """Underwater colour image quality evaluation (Yang & Sowmya 2015), higher is better; see the module notes."""
    return uciqe_components(image)["uciqe"]
