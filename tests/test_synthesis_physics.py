"""Physical sanity checks of the domain presets and metric conventions not covered elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from agent.degradations import Degradation as D
from evals.metrics import psnr, ssim
from evals.synthesis import diffraction_psf, procedural_image, underwater


def _core_energy(psf: np.ndarray, channel: int, radius: float = 2.0) -> float:
    size = psf.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    return float(psf[..., channel][xx * xx + yy * yy <= radius * radius].sum())


@pytest.mark.parametrize("panel", ["toled", "poled"])
def test_diffraction_spreads_red_wider_than_blue(panel: str) -> None:
    psf = diffraction_psf(panel)
    red, green, blue = (_core_energy(psf, c) for c in range(3))
    assert red < green < blue, f"core energy R {red:.3f} G {green:.3f} B {blue:.3f}"


def test_poled_puts_more_light_outside_the_central_lobe() -> None:
    toled_halo = 1.0 - _core_energy(diffraction_psf("toled"), 1)
    poled_halo = 1.0 - _core_energy(diffraction_psf("poled"), 1)
    assert poled_halo > toled_halo + 0.05


def test_underwater_labels_a_dark_result_low_light() -> None:
    dark_scene = procedural_image(96, 96, seed=1) * 0.3
    result = underwater(dark_scene, np.random.default_rng(0), severity=1.0)
    assert result.params(D.HAZE)["density"] > 0
    assert D.LOW_LIGHT in result.labels
    assert result.params(D.LOW_LIGHT)["exposure"] < 0.2


def test_psnr_on_y_ignores_changes_that_keep_luma() -> None:
    base = procedural_image(64, 64, seed=2) * 0.9 + 0.05
    weights = np.array([65.481, 128.553, 24.966]) / 255.0
    shifted = (base + 0.02 * np.array([1.0, -weights[0] / weights[1], 0.0])).astype(np.float32)
    assert psnr(shifted, base, on="y") > 60.0
    assert psnr(shifted, base, on="rgb") < 40.0


def test_ssim_penalises_noise_more_than_an_equal_psnr_brightness_shift() -> None:
    reference = procedural_image(96, 96, seed=3) * 0.8 + 0.1
    rng = np.random.default_rng(4)
    noisy = (reference + rng.normal(0, 0.05, reference.shape)).clip(0, 1).astype(np.float32)
    same_error = 10 ** (-psnr(noisy, reference) / 20) / (219 / 255)  # BT.601 luma weights sum to 219/255
    brighter = (reference + same_error).astype(np.float32)
    assert abs(psnr(brighter, reference) - psnr(noisy, reference)) < 0.1
    assert ssim(brighter, reference) > ssim(noisy, reference) + 0.2
