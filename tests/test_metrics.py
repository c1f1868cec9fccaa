"""Tests for evals.metrics: PSNR and SSIM values, conventions and the skimage cross-check."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from evals.metrics import PSNR_IDENTICAL, Y_OFFSET, full_reference, psnr, ssim
from evals.synthesis import procedural_image
from tools.imageops import luminance


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return procedural_image(96, 120, seed=5)


@pytest.fixture(scope="module")
def distorted(clean) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
    blurred = cv2.GaussianBlur(clean, (0, 0), 2.0)
    darker = (clean * 0.7).astype(np.float32)
    return [noisy, blurred, darker]


def test_psnr_known_values():
    a = np.full((16, 16, 3), 0.5, dtype=np.float32)
    b = np.full((16, 16, 3), 0.6, dtype=np.float32)
    assert psnr(a, b, on="rgb") == pytest.approx(20.0, abs=1e-4)
    y_step = 0.1 * (65.481 + 128.553 + 24.966) / 255.0
    assert psnr(a, b, on="y") == pytest.approx(-20 * np.log10(y_step), abs=1e-3)
    assert psnr(a, a) == PSNR_IDENTICAL


def test_psnr_crop_border_ignores_the_edge():
    a = np.full((32, 32, 3), 0.5, dtype=np.float32)
    b = a.copy()
    b[:2] = 0.0
    assert psnr(a, b) < 30
    assert psnr(a, b, crop_border=2) == PSNR_IDENTICAL


def test_ssim_identity_and_ordering(clean):
    assert ssim(clean, clean) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    scores = []
    for sigma in (0.01, 0.05, 0.15):
        noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 1).astype(np.float32)
        scores.append(ssim(noisy, clean))
    assert scores[0] > scores[1] > scores[2] and scores[2] < 0.7


@pytest.mark.parametrize("index", [0, 1, 2])
def test_ssim_matches_skimage(clean, distorted, index):
    metrics = pytest.importorskip("skimage.metrics")
    options = {"data_range": 1.0, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    other = distorted[index]
    expected_y = metrics.structural_similarity(
        luminance(other).astype(np.float64) + Y_OFFSET, luminance(clean).astype(np.float64) + Y_OFFSET, **options
    )
    expected_rgb = metrics.structural_similarity(
        other.astype(np.float64), clean.astype(np.float64), channel_axis=2, **options
    )
    assert ssim(other, clean, on="y") == pytest.approx(expected_y, abs=1e-3)
    assert ssim(other, clean, on="rgb") == pytest.approx(expected_rgb, abs=1e-3)


def test_psnr_matches_skimage(clean, distorted):
    metrics = pytest.importorskip("skimage.metrics")
    for other in distorted:
        expected = metrics.peak_signal_noise_ratio(clean.astype(np.float64), other.astype(np.float64), data_range=1.0)
        assert psnr(other, clean, on="rgb") == pytest.approx(expected, abs=1e-4)


def test_grayscale_inputs_and_full_reference(clean, distorted):
    y_clean, y_noisy = luminance(clean), luminance(distorted[0])
    assert psnr(y_noisy, y_clean, on="rgb") == pytest.approx(psnr(distorted[0], clean, on="y"), abs=1e-4)
    both = full_reference(distorted[1], clean)
    assert both == {"psnr": psnr(distorted[1], clean), "ssim": ssim(distorted[1], clean)}


def test_bad_inputs_are_refused(clean):
    with pytest.raises(ValueError, match="shape"):
        psnr(clean, clean[:-1])
    with pytest.raises(ValueError, match="from_uint8"):
        ssim((clean * 255).astype(np.uint8), (clean * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="on="):
        psnr(clean, clean, on="lab")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="11x11"):
        ssim(clean[:8, :8], clean[:8, :8])
    with pytest.raises(ValueError, match="crop_border"):
        psnr(clean, clean, crop_border=60)
