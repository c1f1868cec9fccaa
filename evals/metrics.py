"""Full-reference quality metrics: PSNR and SSIM on the BT.601 Y channel or on RGB.

Conventions follow the restoration literature (BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True``): images are float in ``[0, 1]`` with data range 1.0; ``on="y"`` measures the
BT.601 luma of :func:`tools.imageops.luminance` plus the usual 16/255 offset (the offset cancels in
PSNR and only enters SSIM's luminance term); ``crop_border`` drops that many pixels on every side first
(super-resolution papers crop the scale factor).

SSIM is Wang et al. (2004): an 11 x 11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population
statistics, averaged over the positions where the window lies fully inside the image; on RGB it is the
mean of the per-channel SSIMs. This equals ``skimage.metrics.structural_similarity(x, y, data_range=1.0,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` on the same channel(s).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from tools.imageops import luminance

Channel = Literal["y", "rgb"]

#: SSIM constants (Wang et al. 2004) and window.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5

#: Offset of studio-range BT.601 luma (16 of 255), added for SSIM on Y as the papers do.
Y_OFFSET = 16.0 / 255.0

#: PSNR reported for identical images instead of infinity (keeps averages finite), in dB.
PSNR_IDENTICAL = 100.0


def _prepare(a: np.ndarray, b: np.ndarray, on: Channel, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate, crop and convert both images to float64 (H, W) for Y or (H, W, C) for RGB."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape, {a.shape} vs {b.shape}; crop or resize them to match first")
    if not (np.issubdtype(a.dtype, np.floating) and np.issubdtype(b.dtype, np.floating)):
        raise ValueError(
            f"expected float images in [0, 1], got {a.dtype} and {b.dtype}; convert with tools.imageops.from_uint8"
        )
    if on not in ("y", "rgb"):
        raise ValueError(f"on={on!r} is not supported; use 'y' or 'rgb'")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if min(a.shape[:2]) <= 2 * crop_border:
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {a.shape[0]}x{a.shape[1]} image")
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if on == "y" and a.ndim == 3:
        if a.shape[2] == 1:
            a, b = a[..., 0], b[..., 0]
        elif a.shape[2] >= 3:
            a, b = luminance(a.astype(np.float32)) + Y_OFFSET, luminance(b.astype(np.float32)) + Y_OFFSET
        else:
            raise ValueError(f"on='y' needs 1 or 3 channels, got {a.shape[2]}; use on='rgb'")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, on: Channel = "y", crop_border: int = 0) -> float:
    """Peak signal-to-noise ratio in dB of ``a`` against the reference ``b`` (data range 1.0).

    Args:
        a: A float image in ``[0, 1]``, ``(H, W, 3)`` or ``(H, W)``.
        b: The reference, same shape.
        on: ``"y"`` for BT.601 luma (the papers' convention) or ``"rgb"`` for all channels together.
        crop_border: Pixels dropped on each side before measuring.

    Returns:
        PSNR in dB; :data:`PSNR_IDENTICAL` when the images are identical.

    Raises:
        ValueError: on mismatched shapes, integer images or an unknown ``on``.

    """
    x, y = _prepare(a, b, on, crop_border)
    mse = float(np.mean((x - y) ** 2))
    if mse <= 1e-20:
        return PSNR_IDENTICAL
    return float(10.0 * np.log10(1.0 / mse))


def ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Local SSIM of two single-channel float images, only where the 11 x 11 window fits inside.

    Returns:
        An ``(H - 10, W - 10)`` float64 map.

    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    def window_mean(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K L)^2 with data range L = 1
    mu_x, mu_y = window_mean(x), window_mean(y)
    var_x = window_mean(x * x) - mu_x * mu_x
    var_y = window_mean(y * y) - mu_y * mu_y
    covariance = window_mean(x * y) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * covariance + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    pad = SSIM_WINDOW // 2
    return (numerator / denominator)[pad:-pad, pad:-pad]


def ssim(a: np.ndarray, b: np.ndarray, on: Channel = "y", crop_border: int = 0) -> float:
    """Structural similarity (Wang et al. 2004) of ``a`` against the reference ``b`` (data range 1.0).

    Args:
        a: A float image in ``[0, 1]``, ``(H, W, 3)`` or ``(H, W)``.
        b: The reference, same shape.
        on: ``"y"`` for BT.601 luma or ``"rgb"`` for the mean of the per-channel SSIMs.
        crop_border: Pixels dropped on each side before measuring.

    Returns:
        Mean SSIM, at most 1.0.

    Raises:
        ValueError: on mismatched shapes, integer images or images smaller than the 11 x 11 window.

    """
    x, y = _prepare(a, b, on, crop_border)
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {x.shape[0]}x{x.shape[1]}")
    if x.ndim == 2:
        return float(ssim_map(x, y).mean())
    return float(np.mean([ssim_map(x[..., c], y[..., c]).mean() for c in range(x.shape[2])]))


def full_reference(a: np.ndarray, b: np.ndarray, on: Channel = "y", crop_border: int = 0) -> dict[str, float]:
    """Both metrics at once: ``{"psnr": ..., "ssim": ...}`` of ``a`` against the reference ``b``."""
    return {"psnr": psnr(a, b, on, crop_border), "ssim": ssim(a, b, on, crop_border)}
