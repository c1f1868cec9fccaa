"""Classical tools, set A: denoise_dct / denoise_nlm, deblock_jpeg, lowlight_retinex, dehaze_dcp.

Each tool must (a) raise PSNR on its own synthetic degradation by a meaningful margin, (b) leave a clean
image (nearly) unchanged when the report says it is clean or the estimated degradation is tiny, and
(c) refuse out-of-range parameters. Images are procedural (no files), 160-192 px, so the file runs fast.
"""

from __future__ import annotations

import numpy as np
import pytest

import tools.classical  # noqa: F401  (registers the tools)
from agent.degradations import Degradation
from agent.report import DegradationEstimate, DegradationReport
from evals.synthesis import degrade, procedural_image
from tools.base import REGISTRY
from tools.classical.deblock import detect_quality
from tools.classical.dehaze import dark_channel, default_radius, estimate_airlight
from tools.classical.denoise import estimate_noise
from tools.classical.lowlight import classify_darkening
from tools.imageops import luminance

TOOL_NAMES = ("denoise_dct", "denoise_nlm", "deblock_jpeg", "lowlight_retinex", "dehaze_dcp")


def psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((luminance(a).astype(np.float64) - luminance(b)) ** 2))
    return 10.0 * np.log10(1.0 / max(mse, 1e-12))


def run(name: str, image: np.ndarray, **params: object) -> np.ndarray:
    return REGISTRY.get(name)(image, params).image


def report_for(degradation: Degradation, probability: float = 0.9, severity: float = 0.5, **params: float):
    estimate = DegradationEstimate(probability=probability, severity=severity, params=params)
    return DegradationReport(assessor="test", estimates={degradation: estimate})


def photo_like(size: int = 192, seed: int = 0) -> np.ndarray:
    """The procedural test image, stretched so its highlights reach white as most photos do."""
    image = procedural_image(size, size, seed)
    return np.clip((image - image.min()) / (image.max() - image.min()), 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return procedural_image(192, 192, seed=1)


# ------------------------------------------------------------------------------------------------
# Registration and parameter validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_registered_with_strength_and_restores(name: str) -> None:
    spec = REGISTRY.get(name).spec
    assert spec.name == name
    assert spec.param("strength").default == 1.0
    assert spec.restores and spec.family == "classical" and not spec.generative


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("denoise_dct", {"sigma": 0.5}),
        ("denoise_dct", {"poisson": "yes"}),
        ("denoise_nlm", {"sigma": -0.1}),
        ("denoise_nlm", {"search_radius": 40}),
        ("deblock_jpeg", {"quality": 101}),
        ("lowlight_retinex", {"gain": 25.0}),
        ("lowlight_retinex", {"curve": "s-curve"}),
        ("dehaze_dcp", {"omega": 0.2}),
        ("dehaze_dcp", {"t0": 0.9}),
        ("dehaze_dcp", {"strength": 1.5}),
        ("dehaze_dcp", {"beta": 1.0}),
    ],
)
def test_out_of_range_params_are_refused(name: str, params: dict, clean: np.ndarray) -> None:
    with pytest.raises(ValueError):
        REGISTRY.get(name).spec.resolve(params)
    with pytest.raises(ValueError):
        REGISTRY.get(name)(clean, params)


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_bad_image_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        REGISTRY.get(name)(np.zeros((32, 32, 3), dtype=np.float64), {})


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_output_shape_range_and_strength_zero(name: str, clean: np.ndarray) -> None:
    result = REGISTRY.get(name)(clean[:61, :45], {"strength": 0.0})  # odd sizes, not multiples of 8
    assert result.image.shape == (61, 45, 3) and result.image.dtype == np.float32
    np.testing.assert_allclose(result.image, clean[:61, :45], atol=1e-6)


def test_suggest_maps_canonical_params() -> None:
    noise = REGISTRY.get("denoise_dct").suggest(
        report_for(Degradation.NOISE, sigma=0.1, poisson=1.0), Degradation.NOISE
    )
    assert noise == {"sigma": pytest.approx(0.1), "poisson": True}
    assert REGISTRY.get("denoise_nlm").suggest(report_for(Degradation.NOISE, sigma=0.9), Degradation.NOISE) == {
        "sigma": 0.3
    }
    jpeg = REGISTRY.get("deblock_jpeg").suggest(report_for(Degradation.JPEG, quality=23.4), Degradation.JPEG)
    assert jpeg == {"quality": 23}
    light = REGISTRY.get("lowlight_retinex").suggest(report_for(Degradation.LOW_LIGHT, gain=2.5), Degradation.LOW_LIGHT)
    assert light == {"gain": 2.5}
    haze = REGISTRY.get("dehaze_dcp").suggest(report_for(Degradation.HAZE, density=0.4), Degradation.HAZE)
    assert haze == {"density": pytest.approx(0.4)}
    for name in TOOL_NAMES:  # every suggestion must pass the tool's own validation
        spec = REGISTRY.get(name).spec
        spec.resolve(REGISTRY.get(name).suggest(report_for(spec.restores[0], sigma=0.1, quality=20), spec.restores[0]))


# ------------------------------------------------------------------------------------------------
# Denoising
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "min_gain"), [("denoise_dct", 6.0), ("denoise_nlm", 5.0)])
def test_denoise_gaussian_gain(name: str, min_gain: float, clean: np.ndarray) -> None:
    noisy, applied = degrade(clean, "noise", np.random.default_rng(0), kind="gaussian", sigma=25 / 255)
    before = psnr_y(noisy, clean)
    assert psnr_y(run(name, noisy, sigma=applied["sigma"]), clean) - before >= min_gain
    assert psnr_y(run(name, noisy), clean) - before >= min_gain - 0.5  # sigma estimated by the tool


def test_noise_estimate_is_accurate(clean: np.ndarray) -> None:
    noisy, _ = degrade(clean, "noise", np.random.default_rng(1), kind="gaussian", sigma=20 / 255)
    assert np.median(estimate_noise(noisy)) * 255 == pytest.approx(20.0, rel=0.15)
    assert np.median(estimate_noise(clean)) * 255 < 3.0


def test_denoise_poisson_uses_variance_stabilisation(clean: np.ndarray) -> None:
    noisy, applied = degrade(clean, "noise", np.random.default_rng(2), kind="poisson", scale=2.5)
    before = psnr_y(noisy, clean)
    stabilised = psnr_y(run("denoise_dct", noisy, sigma=applied["sigma"], poisson=True), clean)
    plain = psnr_y(run("denoise_dct", noisy, sigma=applied["sigma"]), clean)
    assert stabilised - before >= 6.0
    assert stabilised >= plain - 0.1


@pytest.mark.parametrize("name", ["denoise_dct", "denoise_nlm"])
def test_denoise_leaves_clean_image_nearly_unchanged(name: str, clean: np.ndarray) -> None:
    assert psnr_y(run(name, clean, sigma=2 / 255), clean) > 40.0
    assert psnr_y(run(name, clean), clean) > 35.0  # own estimate on a noise-free image


# ------------------------------------------------------------------------------------------------
# JPEG deblocking
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [10, 20, 30])
def test_deblock_gain_at_low_quality(quality: int, clean: np.ndarray) -> None:
    compressed, _ = degrade(clean, "jpeg", np.random.default_rng(0), quality=quality)
    before = psnr_y(compressed, clean)
    assert psnr_y(run("deblock_jpeg", compressed, quality=quality), clean) - before >= 0.5
    assert psnr_y(run("deblock_jpeg", compressed), clean) - before >= 0.5  # table detected from the image


def test_deblock_detects_the_quantisation_table(clean: np.ndarray) -> None:
    for quality in (10, 25, 50, 80):
        compressed, _ = degrade(clean, "jpeg", np.random.default_rng(0), quality=quality)
        detected = detect_quality(compressed)
        # Neighbouring qualities share most quantiser steps, so an off-by-one or two is harmless.
        assert detected is not None and abs(detected - quality) <= 2
    assert detect_quality(clean) is None
    noisy, _ = degrade(clean, "noise", np.random.default_rng(0), sigma=0.02)
    assert detect_quality(noisy) is None
    shifted, _ = degrade(clean, "jpeg", np.random.default_rng(0), quality=20)
    assert detect_quality(np.ascontiguousarray(shifted[3:, 5:])) is None  # grid no longer at the origin


def test_deblock_barely_changes_high_quality_or_clean(clean: np.ndarray) -> None:
    compressed, _ = degrade(clean, "jpeg", np.random.default_rng(0), quality=90)
    before = psnr_y(compressed, clean)
    after = psnr_y(run("deblock_jpeg", compressed, quality=90), clean)
    assert after >= before - 0.1
    assert psnr_y(run("deblock_jpeg", compressed, quality=90), compressed) > 40.0
    np.testing.assert_array_equal(run("deblock_jpeg", clean), clean)  # no grid found, no quality given


# ------------------------------------------------------------------------------------------------
# Low light
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["v_shift", "gamma", "range"])
def test_lowlight_gain_on_all_mio100_darkenings(method: str) -> None:
    clean = photo_like(seed=3) ** 1.5  # mean grey ~0.37, highlights at white, like a typical photo
    dark, applied = degrade(clean, "low_light", np.random.default_rng(0), severity=0.7, preset="mio100", method=method)
    before = psnr_y(dark, clean)
    with_gain = run("lowlight_retinex", dark, gain=applied["gain"])
    assert psnr_y(with_gain, clean) - before >= 10.0
    assert psnr_y(run("lowlight_retinex", dark), clean) - before >= 5.0  # no gain: histogram and target exposure
    assert (with_gain.max(axis=2) >= 0.999).mean() <= (clean.max(axis=2) >= 0.999).mean() + 0.01  # no blow-out


def test_lowlight_recognises_the_darkening_curve() -> None:
    clean = photo_like(seed=4)
    expected = {"v_shift": "shift", "gamma": "gamma", "range": "linear"}
    for method, curve in expected.items():
        dark, _ = degrade(clean, "low_light", np.random.default_rng(0), severity=1.0, preset="mio100", method=method)
        assert classify_darkening(dark) == curve


def test_lowlight_leaves_well_exposed_image_alone() -> None:
    clean = photo_like(seed=5)
    tool = REGISTRY.get("lowlight_retinex")
    not_dark = report_for(Degradation.LOW_LIGHT, probability=0.1, severity=0.0, gain=1.0)
    params = tool.suggest(not_dark, Degradation.LOW_LIGHT)
    np.testing.assert_array_equal(tool(clean, params).image, clean)
    bright = np.clip(clean * 0.5 + 0.4, 0.0, 1.0).astype(np.float32)  # mean above the default target
    np.testing.assert_array_equal(run("lowlight_retinex", bright), bright)


def test_lowlight_local_curve_brightens_without_clipping() -> None:
    clean = photo_like(seed=6)
    dark, applied = degrade(clean, "low_light", np.random.default_rng(0), severity=0.5, preset="mio100", method="gamma")
    out = run("lowlight_retinex", dark, curve="local", gain=applied["gain"])
    assert psnr_y(out, clean) - psnr_y(dark, clean) >= 2.0
    assert luminance(out).mean() / luminance(dark).mean() == pytest.approx(applied["gain"], rel=0.1)
    assert (out.max(axis=2) >= 0.999).mean() <= (clean.max(axis=2) >= 0.999).mean() + 0.01


# ------------------------------------------------------------------------------------------------
# Dehazing
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [0.2, 0.8])
def test_dehaze_gain_with_density_hint(severity: float, clean: np.ndarray) -> None:
    hazy, applied = degrade(clean, "haze", np.random.default_rng(0), severity=severity, preset="mio100")
    before = psnr_y(hazy, clean)
    assert psnr_y(run("dehaze_dcp", hazy, density=applied["density"]), clean) - before >= 4.0


def test_dehaze_airlight_estimate_and_plain_dcp(clean: np.ndarray) -> None:
    hazy, applied = degrade(clean, "haze", np.random.default_rng(1), severity=1.0, preset="mio100", airlight=0.9)
    atmosphere = estimate_airlight(hazy, dark_channel(hazy, default_radius(hazy)))
    np.testing.assert_allclose(atmosphere, 0.9, atol=0.06)
    before = psnr_y(hazy, clean)
    # Without the density hint the prior alone over-estimates haze on this flat-coloured image, but still helps.
    assert psnr_y(run("dehaze_dcp", hazy), clean) - before >= 1.0
    assert psnr_y(run("dehaze_dcp", hazy, density=applied["density"]), clean) - before >= 6.0


def test_dehaze_leaves_haze_free_image_nearly_unchanged(clean: np.ndarray) -> None:
    tool = REGISTRY.get("dehaze_dcp")
    params = tool.suggest(report_for(Degradation.HAZE, probability=0.05, severity=0.0, density=0.02), Degradation.HAZE)
    np.testing.assert_array_equal(tool(clean, params).image, clean)
    assert psnr_y(run("dehaze_dcp", clean, density=0.02), clean) > 35.0
