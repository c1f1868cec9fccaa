"""Tests for evals.synthesis: every degradation, the MiO100 combinations, presets and the clean split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.degradations import PHYSICAL_ORDER, Degradation
from evals.metrics import psnr
from evals.synthesis import (
    CANONICAL_PARAMS,
    MIO100_COMBINATIONS,
    PRESET_RANGES,
    canonical_params,
    clean_split,
    degradation_rng,
    degrade,
    depth_proxy,
    diffraction_psf,
    disk_kernel,
    load_clean_images,
    motion_kernel,
    procedural_image,
    synthesize,
    udc,
    underwater,
)

D = Degradation
SHARED = Path(__file__).resolve().parents[2] / "shared"
needs_shared = pytest.mark.skipif(not (SHARED / "data" / "clean").is_dir(), reason="needs ../shared/data/clean")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return procedural_image(112, 144, seed=3)


@pytest.fixture(scope="module")
def real_image() -> np.ndarray:
    if not (SHARED / "data" / "clean" / "BSD100").is_dir():
        pytest.skip("needs ../shared/data/clean/BSD100")
    return load_clean_images(SHARED / "data" / "clean" / "BSD100", limit=1, crop=160)[0][1]


# Options that pin each type's random sub-choice, so that only severity varies along a sweep.
SWEEPS: list[tuple[Degradation, dict]] = [
    (D.NOISE, {"kind": "gaussian"}),
    (D.NOISE, {"kind": "poisson"}),
    (D.MOTION_BLUR, {"angle": 30.0}),
    (D.DEFOCUS_BLUR, {}),
    (D.JPEG, {}),
    (D.LOW_RESOLUTION, {}),
    (D.HAZE, {}),
    (D.RAIN, {}),
    (D.RAINDROP, {}),
    (D.LOW_LIGHT, {"method": "v_shift"}),
    (D.LOW_LIGHT, {"method": "gamma"}),
    (D.LOW_LIGHT, {"method": "range"}),
    (D.COLOR_CAST, {"cast": "warm"}),
    (D.COLOR_CAST, {"cast": "green"}),
]


def _sweep_psnrs(clean: np.ndarray, degradation: Degradation, options: dict, preset: str) -> list[float]:
    values = []
    for severity in (0.0, 0.5, 1.0):
        out, _ = degrade(clean, degradation, np.random.default_rng(7), severity, preset=preset, **options)
        values.append(psnr(out, clean, on="rgb"))
    return values


@pytest.mark.parametrize("degradation", list(D))
def test_every_type_changes_image_keeps_format_and_records_params(image, degradation):
    out, params = degrade(image, degradation, np.random.default_rng(0), 0.5)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - image).mean() > 2e-3, "the degradation left the image (almost) unchanged"
    assert params["severity"] == pytest.approx(0.5)
    canonical = canonical_params(degradation, params)
    assert set(canonical) == set(CANONICAL_PARAMS[degradation])
    assert all(np.isfinite(v) for v in canonical.values())
    json.dumps(params)  # plain Python values, ready for traces


@pytest.mark.parametrize("degradation", list(D))
def test_deterministic_for_a_seed_and_varies_across_seeds(image, degradation):
    first, p1 = degrade(image, degradation, np.random.default_rng(11))
    second, p2 = degrade(image, degradation, np.random.default_rng(11))
    other, _ = degrade(image, degradation, np.random.default_rng(12))
    assert np.array_equal(first, second) and p1 == p2
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("preset", ["default", "mio100"])
@pytest.mark.parametrize(("degradation", "options"), SWEEPS, ids=lambda v: getattr(v, "value", str(v)))
def test_higher_severity_lowers_psnr(image, degradation, options, preset):
    spans = PRESET_RANGES[preset][degradation]
    if all(low == high for low, high in spans.values()):
        pytest.skip(f"{degradation.value} has a fixed setting in {preset}")
    values = _sweep_psnrs(image, degradation, options, preset)
    assert values[0] > values[1] + 0.2 > values[2] + 0.4, values


@pytest.mark.parametrize(("degradation", "options"), SWEEPS, ids=lambda v: getattr(v, "value", str(v)))
def test_higher_severity_lowers_psnr_on_a_real_photo(real_image, degradation, options):
    values = _sweep_psnrs(real_image, degradation, options, "default")
    assert values[0] > values[1] + 0.2 > values[2] + 0.4, values


def test_mio100_ranges_follow_the_benchmark(image):
    rng = np.random.default_rng(0)
    _, noise = degrade(image, D.NOISE, rng, 1.0, preset="mio100", kind="gaussian")
    _, poisson = degrade(image, D.NOISE, rng, 0.0, preset="mio100", kind="poisson")
    _, jpeg = degrade(image, D.JPEG, rng, 0.0, preset="mio100")
    _, low_res = degrade(image, D.LOW_RESOLUTION, rng, preset="mio100")
    _, haze = degrade(image, D.HAZE, rng, 1.0, preset="mio100")
    _, dark = degrade(image, D.LOW_LIGHT, rng, 0.0, preset="mio100", method="range")
    assert noise["sigma"] == pytest.approx(50 / 255) and poisson["scale"] == pytest.approx(1.0)
    assert jpeg["quality"] == 30 and low_res["scale"] == 0.25
    assert haze["beta"] == pytest.approx(1.8) and 0.7 <= haze["airlight"] <= 1.0
    assert dark["level"] == pytest.approx(150 / 255)


def test_explicit_params_override_severity():
    flat = np.full((128, 128, 3), 0.5, dtype=np.float32)
    out, params = degrade(flat, "noise", np.random.default_rng(0), sigma=0.08)
    assert params["kind"] == "gaussian" and params["sigma"] == 0.08
    assert np.std(out - flat) == pytest.approx(0.08, rel=0.05)
    _, params = degrade(flat, "noise", np.random.default_rng(0), preset="mio100", sigma=35 / 255)
    assert params["severity"] == pytest.approx(0.5)  # recorded severity follows the overriding value
    _, params = degrade(flat, "jpeg", np.random.default_rng(0), 0.9, quality=77)
    assert params["quality"] == 77
    _, params = degrade(flat, "motion_blur", np.random.default_rng(0), length=9, angle=200)
    assert params["length"] == 9 and params["angle"] == pytest.approx(20.0)
    out, params = degrade(flat, "color_cast", np.random.default_rng(0), r_gain=0.8, g_gain=1.0, b_gain=1.25)
    assert out[0, 0] == pytest.approx([0.625, 0.5, 0.4], abs=1e-5)
    assert (params["r_gain"], params["b_gain"]) == pytest.approx((0.8, 1.25))


def test_noise_poisson_std_matches_photon_model():
    flat = np.full((192, 192, 3), 0.4, dtype=np.float32)
    out, params = degrade(flat, "noise", np.random.default_rng(1), kind="poisson", scale=2.0)
    assert params["poisson"] == 1.0
    assert np.std(out - flat) == pytest.approx(2.0 * np.sqrt(0.4 / 255), rel=0.05)
    assert params["sigma"] == pytest.approx(np.std(out - flat), rel=0.05)


def test_low_light_records_exposure_and_gain(image):
    out, params = degrade(image, "low_light", np.random.default_rng(0), 1.0, method="gamma")
    assert params["exposure"] < 0.8 * float(image.mean())
    assert params["gain"] > 1.2
    assert (out <= image + 1e-6).all()  # darkening never brightens a pixel


def test_rain_and_raindrop_parameters(image):
    out, rain = degrade(image, "rain", np.random.default_rng(0), 0.7)
    assert 60.0 <= rain["angle"] <= 120.0 and 0 < rain["energy"] < 1
    assert (out >= image - 1e-6).all()  # screen blending only brightens
    _, drops = degrade(image, "raindrop", np.random.default_rng(0), 1.0)
    assert drops["coverage"] == pytest.approx(drops["target_coverage"], abs=0.08)


def test_bad_arguments_are_refused(image):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="accepts"):
        degrade(image, "noise", rng, radius=3)
    with pytest.raises(ValueError, match="severity"):
        degrade(image, "noise", rng, 1.5)
    with pytest.raises(ValueError, match="from_uint8"):
        degrade((image * 255).astype(np.uint8), "noise", rng)
    with pytest.raises(ValueError, match="RGB"):
        degrade(image[..., 0], "noise", rng)
    with pytest.raises(ValueError, match="preset"):
        degrade(image, "noise", rng, preset="extreme")
    with pytest.raises(ValueError, match="Poisson"):
        degrade(image, "noise", rng, kind="poisson", sigma=0.1)
    with pytest.raises(ValueError, match="method"):
        degrade(image, "low_light", rng, method="gamma", level=0.5)
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(image, "snow", rng)


def test_mio100_has_the_sixteen_combinations():
    expected = {
        "A1": {D.RAIN, D.HAZE},
        "A2": {D.MOTION_BLUR, D.LOW_RESOLUTION},
        "A3": {D.LOW_LIGHT, D.NOISE},
        "A4": {D.DEFOCUS_BLUR, D.JPEG},
        "A5": {D.NOISE, D.JPEG},
        "A6": {D.RAIN, D.LOW_RESOLUTION},
        "A7": {D.MOTION_BLUR, D.LOW_LIGHT},
        "A8": {D.DEFOCUS_BLUR, D.HAZE},
        "B1": {D.MOTION_BLUR, D.JPEG},
        "B2": {D.HAZE, D.NOISE},
        "B3": {D.DEFOCUS_BLUR, D.LOW_RESOLUTION},
        "B4": {D.RAIN, D.LOW_LIGHT},
        "C1": {D.HAZE, D.MOTION_BLUR, D.LOW_RESOLUTION},
        "C2": {D.RAIN, D.NOISE, D.LOW_RESOLUTION},
        "C3": {D.LOW_LIGHT, D.DEFOCUS_BLUR, D.JPEG},
        "C4": {D.MOTION_BLUR, D.DEFOCUS_BLUR, D.NOISE},
    }
    assert len(MIO100_COMBINATIONS) == 16
    assert {key: set(combo) for key, combo in MIO100_COMBINATIONS.items()} == expected


def test_synthesize_applies_physical_order_whatever_the_input_order(image):
    forward = synthesize(image, [D.JPEG, D.NOISE, D.HAZE], seed=5, severity=0.6)
    backward = synthesize(image, ["haze", "noise", "jpeg"], seed=5, severity=0.6)
    assert forward.labels == [D.HAZE, D.NOISE, D.JPEG] == [d for d in PHYSICAL_ORDER if d in forward.labels]
    assert [d for d, _ in forward.applied] == forward.labels
    assert np.array_equal(forward.image, backward.image)
    assert forward.clean is not None and forward.image.dtype == np.float32

    manual = image
    for degradation in (D.HAZE, D.NOISE, D.JPEG):
        manual, _ = degrade(manual, degradation, degradation_rng(5, degradation), 0.6)
    assert np.array_equal(manual, forward.image)
    wrong = image
    for degradation in (D.JPEG, D.NOISE, D.HAZE):
        wrong, _ = degrade(wrong, degradation, degradation_rng(5, degradation), 0.6)
    assert not np.array_equal(wrong, forward.image)


def test_synthesize_streams_are_independent_per_degradation(image):
    alone = synthesize(image, [D.NOISE], seed=9)
    combined = synthesize(image, [D.NOISE, D.MOTION_BLUR], seed=9)
    assert alone.params(D.NOISE)["severity"] == combined.params(D.NOISE)["severity"]
    with pytest.raises(KeyError):
        alone.params(D.JPEG)


def test_synthesize_takes_mio100_keys_and_overrides(image):
    result = synthesize(image, "C3", seed=2, preset="mio100", params={"jpeg": {"quality": 12}})
    assert result.labels == [D.DEFOCUS_BLUR, D.LOW_LIGHT, D.JPEG]
    assert result.params(D.JPEG)["quality"] == 12
    assert 2.0 <= result.params(D.DEFOCUS_BLUR)["radius"] <= 6.0
    assert result.preset == "mio100" and result.seed == 2
    with pytest.raises(ValueError, match="not being applied"):
        synthesize(image, [D.NOISE], seed=0, params={"jpeg": {"quality": 12}})


def test_kernels_are_normalised_and_oriented():
    horizontal = motion_kernel(9, 0.0)
    vertical = motion_kernel(9, 90.0)
    assert horizontal.sum() == pytest.approx(1.0) and vertical.sum() == pytest.approx(1.0)
    centre = horizontal.shape[0] // 2
    assert horizontal[centre].sum() > 0.95 and vertical[:, centre].sum() > 0.95
    assert np.allclose(motion_kernel(15, 33.0), motion_kernel(15, 33.0)[::-1, ::-1], atol=1e-7)
    disk = disk_kernel(4.0)
    assert disk.sum() == pytest.approx(1.0) and np.allclose(disk, disk.T)
    assert disk[disk.shape[0] // 2, 0] == 0.0 and disk.max() == disk[disk.shape[0] // 2, disk.shape[0] // 2]
    with pytest.raises(ValueError):
        motion_kernel(0.5, 0.0)


def test_depth_proxy_is_smooth_and_far_at_the_top(image):
    depth = depth_proxy(image)
    assert depth.shape == image.shape[:2] and depth.min() >= 0.0 and depth.max() <= 1.0
    assert depth[:20].mean() > depth[-20:].mean() + 0.3
    assert np.abs(np.diff(depth, axis=1)).max() < 0.1


def test_underwater_preset(image):
    result = underwater(image, np.random.default_rng(4), severity=0.8)
    again = underwater(image, np.random.default_rng(4), severity=0.8)
    assert np.array_equal(result.image, again.image)
    assert {D.COLOR_CAST, D.HAZE} <= set(result.labels)
    assert result.labels == [d for d in PHYSICAL_ORDER if d in result.labels]
    red, green, blue = result.image.reshape(-1, 3).mean(axis=0)
    clean_red, _, clean_blue = image.reshape(-1, 3).mean(axis=0)
    assert red / blue < 0.6 * clean_red / clean_blue  # red is absorbed first
    cast = result.params(D.COLOR_CAST)
    assert cast["r_gain"] > 1.0 > cast["b_gain"]
    assert 0.0 < result.params(D.HAZE)["density"] < 1.0
    json.dumps(result.applied)


def test_udc_presets(image):
    toled = udc(image, np.random.default_rng(0), "toled", severity=0.5)
    poled = udc(image, np.random.default_rng(0), "poled", severity=0.5)
    assert toled.labels == [D.DEFOCUS_BLUR, D.LOW_LIGHT, D.NOISE]
    assert poled.labels == [D.DEFOCUS_BLUR, D.LOW_LIGHT, D.NOISE, D.COLOR_CAST]
    assert poled.image.mean() < toled.image.mean() < image.mean()
    assert poled.params(D.COLOR_CAST)["b_gain"] > 1.1  # the panel absorbs blue most
    assert toled.params(D.DEFOCUS_BLUR)["radius"] > 1.0
    for panel in ("toled", "poled"):
        psf = diffraction_psf(panel, 24.0)
        assert psf.shape == (33, 33, 3) and np.allclose(psf.sum(axis=(0, 1)), 1.0, atol=1e-5)
    json.dumps(poled.applied)
    with pytest.raises(ValueError, match="panel"):
        udc(image, np.random.default_rng(0), "lcd")


def test_procedural_image_is_deterministic():
    a, b = procedural_image(64, 80, seed=1), procedural_image(64, 80, seed=1)
    assert np.array_equal(a, b) and a.shape == (64, 80, 3) and a.dtype == np.float32
    assert not np.array_equal(a, procedural_image(64, 80, seed=2))
    assert a.std() > 0.1


def test_load_clean_images_crops_and_converts(tmp_path):
    wide = (procedural_image(400, 600, seed=0) * 255).astype(np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide[:80, :100, 0]).save(tmp_path / "small_gray.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    loaded = load_clean_images(tmp_path, crop=256, seed=0)
    assert [name for name, _ in loaded] == [f"{tmp_path.name}/small_gray", f"{tmp_path.name}/wide"]
    small, big = loaded[0][1], loaded[1][1]
    assert small.shape == (80, 100, 3) and small.dtype == np.float32
    assert big.shape == (256, 256, 3) and 0.0 <= big.min() and big.max() <= 1.0
    again = load_clean_images(tmp_path / "wide.png", crop=256, seed=0)[0][1]
    other = load_clean_images(tmp_path / "wide.png", crop=256, seed=1)[0][1]
    centre = load_clean_images(tmp_path / "wide.png", crop=256, seed=None)[0][1]
    assert np.array_equal(big, again) and not np.array_equal(big, other)
    assert np.allclose(centre, wide[72:328, 172:428] / 255.0)
    assert len(load_clean_images([tmp_path], limit=1)) == 1
    with pytest.raises(FileNotFoundError):
        load_clean_images(tmp_path / "missing")


@needs_shared
def test_clean_split_is_fixed_and_disjoint():
    split = clean_split(SHARED)
    calibration, evaluation = split["calibration"], split["evaluation"]
    assert len(calibration) == 100 and all(p.parent.name == "BSD100" for p in calibration)
    assert len(evaluation) == 29 + 18 + 12
    names = {f"{p.parent.name}/{p.stem}" for p in evaluation}
    assert "Set14/img_005" not in names and "Set14/img_013" not in names and "Set14/img_001" in names
    assert not set(calibration) & set(evaluation)
    assert clean_split(SHARED / "data" / "clean") == split
