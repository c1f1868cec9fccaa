"""Small image helpers shared by tools, perception and evals (float32 RGB in [0, 1])."""

from __future__ import annotations

import cv2
import numpy as np

#: The IJG (libjpeg) standard luminance quantisation table (ITU-T T.81 Annex K.1), which libjpeg,
#: Pillow and OpenCV scale by the quality setting.
IJG_LUMA_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float64,
)

#: ITU-R BT.601 luma weights, as used for PSNR/SSIM "on Y" in restoration papers.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float32) / 255.0


def luminance(image: np.ndarray) -> np.ndarray:
    """BT.601 luma Y in [0, 1] (without the +16 offset) of an RGB image."""
    return (image[..., :3] @ _Y_WEIGHTS).astype(np.float32)


def gray(image: np.ndarray) -> np.ndarray:
    """Plain luminance-weighted grayscale (Rec. 601 weights summing to 1)."""
    return (0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]).astype(np.float32)


def box_filter(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window with reflected borders."""
    k = 2 * radius + 1
    return cv2.blur(image, (k, k), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grayscale guide: edge-preserving smoothing of ``source``.

    ``guide`` is (H, W); ``source`` is (H, W) or (H, W, C). ``eps`` is the regularisation (in
    squared intensity units): larger means smoother.
    """
    guide = guide.astype(np.float32)
    src = source.astype(np.float32)
    squeeze = src.ndim == 2
    if squeeze:
        src = src[..., None]
    mean_i = box_filter(guide, radius)
    var_i = box_filter(guide * guide, radius) - mean_i * mean_i
    out = np.empty_like(src)
    for c in range(src.shape[2]):
        p = src[..., c]
        mean_p = box_filter(p, radius)
        cov_ip = box_filter(guide * p, radius) - mean_i * mean_p
        a = cov_ip / (var_i + eps)
        b = mean_p - a * mean_i
        out[..., c] = box_filter(a, radius) * guide + box_filter(b, radius)
    return out[..., 0] if squeeze else out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round a [0, 1] float image to uint8."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def from_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a uint8 image to float32 in [0, 1]."""
    return image.astype(np.float32) / 255.0
