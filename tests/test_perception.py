"""Perception v0: hand-crafted measurements, the calibrated estimator assessor and its fitting code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.degradations import Degradation
from agent.perception.assessor import DEFAULT_CALIBRATION, PARAM_RANGES, Assessor, EstimatorAssessor
from agent.perception.calibrate import choose_threshold, fit_logistic, fit_ridge
from agent.perception.estimators import MEASUREMENTS, measure
from agent.report import DegradationReport
from evals.synthesis import degrade, procedural_image

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return procedural_image(256, 256, seed=3)


def _degraded(image: np.ndarray, degradation: str, seed: int = 0, **params) -> np.ndarray:
    out, _ = degrade(image, degradation, np.random.default_rng(seed), **params)
    return out


# ------------------------------------------------------------------------------------------------
# measurements


def test_measure_returns_every_documented_key_as_finite_float(photo):
    values = measure(photo)
    assert set(values) == set(MEASUREMENTS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())


def test_measure_refuses_tiny_or_non_rgb_images():
    with pytest.raises(ValueError, match="32x32"):
        measure(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        measure(np.zeros((64, 64), np.float32))


def test_noise_sigma_is_near_zero_on_clean_and_tracks_gaussian_noise(photo):
    assert measure(photo)["noise_sigma"] < 0.004
    for sigma_255 in (5, 15, 25, 50):
        sigma = sigma_255 / 255
        estimate = measure(_degraded(photo, "noise", sigma=sigma, kind="gaussian"))["noise_sigma"]
        assert abs(estimate - sigma) / sigma < 0.2, (sigma_255, estimate * 255)


def test_jpeg_blockiness_rises_and_quality_is_recovered(photo):
    clean = measure(photo)
    assert clean["jpeg_quality"] == 100.0  # no quantisation lattice on an uncompressed image
    for quality in (10, 30):
        values = measure(_degraded(photo, "jpeg", quality=quality))
        assert values["jpeg_blockiness"] > clean["jpeg_blockiness"] + 0.3
    for quality in (10, 30, 50, 70):
        shifted = photo[3:-5, 3:-5].copy()  # the grid search must not lock onto the texture's own period
        for image in (photo, shifted):
            estimate = measure(_degraded(image, "jpeg", quality=quality))["jpeg_quality"]
            assert abs(estimate - quality) <= 3, (quality, estimate)


def test_exposure_statistics_drop_with_darkening(photo):
    clean = measure(photo)
    dark = measure(_degraded(photo, "low_light", method="gamma", gamma=0.5))
    shifted = measure(_degraded(photo, "low_light", method="v_shift", shift=0.2))
    assert dark["lum_mean"] < 0.8 * clean["lum_mean"]
    assert dark["dark_fraction"] > clean["dark_fraction"]
    assert shifted["value_p999"] < clean["value_p999"] - 0.1


def test_haze_cues_rise_with_atmospheric_scattering(photo):
    clean = measure(photo)
    depth = np.full(photo.shape[:2], 0.8, np.float32)
    hazy = measure(_degraded(photo, "haze", beta=1.2, airlight=0.9, depth=depth))
    assert hazy["dark_channel_mean"] > clean["dark_channel_mean"] + 0.2
    assert hazy["haze_density"] > clean["haze_density"] + 0.2
    assert hazy["saturation_mean"] < clean["saturation_mean"]


def test_blur_cues_respond_and_motion_angle_is_recovered(photo):
    clean = measure(photo)
    defocus = measure(_degraded(photo, "defocus_blur", radius=4.0))
    assert defocus["spec_b3"] < clean["spec_b3"] - 0.5
    for angle in (0.0, 45.0, 90.0, 135.0):
        values = measure(_degraded(photo, "motion_blur", length=17.0, angle=angle))
        assert values["motion_anisotropy"] > clean["motion_anisotropy"] + 0.5
        errors = [abs((values[key] - angle + 90.0) % 180.0 - 90.0) for key in ("motion_block_angle", "motion_angle")]
        assert min(errors) < 15.0 and max(errors) < 30.0, (angle, errors)


def test_upsampling_leaves_a_periodic_trace(photo):
    clean = measure(photo)
    low = measure(_degraded(photo, "low_resolution", scale=0.25))
    assert low["resample_p4"] > clean["resample_p4"] + 0.2
    assert low["downup_4"] < clean["downup_4"] - 0.3


def test_rain_streaks_are_coherent_bright_ridges(photo):
    clean = measure(photo)
    rainy = measure(_degraded(photo, "rain", severity=1.0, angle=80.0))
    assert rainy["rain_peak"] > clean["rain_peak"] + 0.2
    assert rainy["rain_block_agreement"] > clean["rain_block_agreement"] + 0.2
    assert rainy["rain_energy"] > clean["rain_energy"]
    assert abs((rainy["rain_angle"] - 80.0 + 90.0) % 180.0 - 90.0) < 12.0


def test_colour_cast_widens_the_gain_spread(photo):
    clean = measure(photo)
    cast = measure(_degraded(photo, "color_cast", cast="warm", magnitude=0.35))
    assert cast["cast_gain_spread"] > clean["cast_gain_spread"] + 0.2


def test_large_images_are_measured_on_a_crop_without_changing_pixel_scale(photo):
    noisy = _degraded(np.tile(photo, (2, 2, 1)), "noise", sigma=20 / 255, kind="gaussian")
    full = measure(noisy)
    cropped = measure(noisy, max_pixels=128 * 128)
    assert abs(cropped["noise_sigma"] - full["noise_sigma"]) / full["noise_sigma"] < 0.2


# ------------------------------------------------------------------------------------------------
# fitting code


def test_fit_logistic_recovers_a_known_model():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 3))
    true_coef, true_intercept = np.array([2.0, -1.0, 0.0]), 0.5
    p = 1 / (1 + np.exp(-(x @ true_coef + true_intercept)))
    y = (rng.random(4000) < p).astype(float)
    coef, intercept = fit_logistic(x, y, l2=1e-3)
    np.testing.assert_allclose(coef, true_coef, atol=0.15)
    assert abs(intercept - true_intercept) < 0.15


def test_fit_ridge_recovers_a_linear_function():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 2))
    y = x @ np.array([0.5, -2.0]) + 3.0 + 0.01 * rng.standard_normal(500)
    coef, intercept = fit_ridge(x, y, l2=1e-6)
    np.testing.assert_allclose(coef, [0.5, -2.0], atol=0.01)
    assert abs(intercept - 3.0) < 0.01


def test_choose_threshold_caps_the_clean_false_positive_rate():
    rng = np.random.default_rng(2)
    clean_prob = rng.uniform(0.0, 0.7, 200)
    positive_prob = rng.uniform(0.3, 1.0, 200)
    probability = np.concatenate([clean_prob, positive_prob])
    label = np.concatenate([np.zeros(200), np.ones(200)])
    threshold = choose_threshold(probability, label, label == 0, max_clean_fpr=0.02)
    assert (clean_prob >= threshold).mean() <= 0.02
    assert (positive_prob >= threshold).mean() > 0.1


# ------------------------------------------------------------------------------------------------
# assessor


def _toy_calibration() -> dict:
    """A hand-made calibration: noise present iff log10(sigma) > -1.6, everything else absent."""
    linear = {"features": ["log:noise_sigma"], "mean": [-2.0], "std": [0.5], "intercept": 0.0}
    models = {}
    for degradation in Degradation:
        coef = [8.0] if degradation is Degradation.NOISE else [0.0]
        intercept = -6.4 if degradation is Degradation.NOISE else -5.0
        params = {
            name: {"kind": "constant", "value": 0.5 * (lo + hi)} for name, (lo, hi) in PARAM_RANGES[degradation].items()
        }
        if degradation is Degradation.NOISE:
            params["sigma"] = {"kind": "measurement", "key": "noise_sigma"}
        models[degradation.value] = {
            "presence": linear | {"coef": coef, "intercept": intercept, "threshold": 0.5},
            "severity": linear | {"coef": [0.2], "intercept": 0.5},
            "params": params,
        }
    return {"version": 1, "models": models}


def test_assessor_satisfies_the_protocol_and_reports_every_type(photo):
    assessor = EstimatorAssessor(_toy_calibration())
    assert isinstance(assessor, Assessor)
    report = assessor.assess(_degraded(photo, "noise", sigma=0.1, kind="gaussian"))
    assert isinstance(report, DegradationReport)
    assert report.assessor == "estimators"
    assert set(report.estimates) == set(Degradation)
    assert report.dominant() is Degradation.NOISE
    assert abs(report.estimates[Degradation.NOISE].params["sigma"] - 0.1) < 0.02
    assert set(report.measurements) == set(MEASUREMENTS)
    assert report.seconds > 0


def test_missing_calibration_names_the_command_that_creates_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m agent.perception.calibrate"):
        EstimatorAssessor(tmp_path / "absent.json")


needs_calibration = pytest.mark.skipif(not DEFAULT_CALIBRATION.is_file(), reason="no calibration JSON yet")


@needs_calibration
def test_shipped_calibration_gives_valid_reports_with_canonical_params(photo):
    assessor = EstimatorAssessor()
    for image in (photo, _degraded(photo, "jpeg", quality=15), _degraded(photo, "haze", severity=1.0)):
        report = assessor.assess(image)
        for degradation, estimate in report.estimates.items():
            assert set(estimate.params) == set(PARAM_RANGES[degradation])
            assert 0.0 <= estimate.probability <= 1.0 and 0.0 <= estimate.severity <= 1.0
        json.loads(report.model_dump_json())  # serialisable for traces


@needs_calibration
def test_shipped_calibration_leaves_a_clean_image_alone_and_flags_strong_degradations(photo):
    assessor = EstimatorAssessor()
    clean = assessor.assess(photo)
    assert clean.present() == [], clean.summary()
    noisy = assessor.assess(_degraded(photo, "noise", sigma=30 / 255, kind="gaussian"))
    assert noisy.probability(Degradation.NOISE) > 0.9
    compressed = assessor.assess(_degraded(photo, "jpeg", quality=15))
    assert compressed.probability(Degradation.JPEG) > 0.9
    assert abs(compressed.estimates[Degradation.JPEG].params["quality"] - 15) < 8


@pytest.mark.skipif(not (SHARED / "data" / "clean" / "BSD100").is_dir(), reason="shared data not available")
@needs_calibration
def test_shipped_calibration_on_a_real_calibration_photo():
    from evals.synthesis import load_clean_images, synthesize

    (_, image), *_ = load_clean_images(SHARED / "data" / "clean" / "BSD100" / "img_010.png", crop=320)
    assessor = EstimatorAssessor()
    result = synthesize(image, "A3", seed=5, preset="mio100")  # low light + noise
    report = assessor.assess(result.image)
    assert report.probability(Degradation.NOISE) > 0.5
    assert report.probability(Degradation.JPEG) < 0.5


# ------------------------------------------------------------------------------------------------
# presence network


def _net_samples(n: int, seed: int) -> list:
    """Toy samples: noise present iff noise_sigma > 0.05, low light iff lum_mean < 0.2 (two measurements)."""
    from agent.perception.calibrate import Sample

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        sigma, lum = float(rng.uniform(0.0, 0.1)), float(rng.uniform(0.05, 0.6))
        labels = [name for name, on in (("noise", sigma > 0.05), ("low_light", lum < 0.2)) if on]
        samples.append(
            Sample(
                measurements={"noise_sigma": sigma, "lum_mean": lum},
                labels=labels,
                applied={name: {"severity": 0.5} for name in labels},
                preset="default",
                kind="single" if labels else "clean",
                image=f"photo{i % 20}",
                held_out=False,
            )
        )
    return samples


def test_presence_net_learns_multi_label_presence_and_runs_without_torch():
    from agent.perception.assessor import PresenceNet
    from agent.perception.calibrate import fit_presence_net

    spec = fit_presence_net(_net_samples(600, 0), max_clean_fpr=0.05, hidden=16, epochs=60)
    document = json.loads(json.dumps(spec))  # what the calibration file stores
    net = PresenceNet(document)
    test = _net_samples(200, 1)
    correct = {Degradation.NOISE: 0, Degradation.LOW_LIGHT: 0}
    for sample in test:
        logits = net.logits(sample.measurements)
        for d in correct:
            correct[d] += (logits[d] >= 0) == (d.value in sample.labels)
    assert correct[Degradation.NOISE] / len(test) > 0.9, correct
    assert correct[Degradation.LOW_LIGHT] / len(test) > 0.9, correct
    with pytest.raises(KeyError, match="re-run python -m agent.perception.calibrate"):
        net.logits({"noise_sigma": 0.1})
    bad = dict(document, layers=document["layers"][:1])
    with pytest.raises(ValueError, match="layer shapes"):
        PresenceNet(bad)


def test_presence_rule_combines_the_network_with_the_linear_models(monkeypatch, tmp_path):
    from agent.perception.assessor import CALIBRATION_ENV

    calibration = _toy_calibration()
    types = [d.value for d in Degradation]
    # A one-layer "network" over noise_sigma that says low light is present (logit +2) and noise absent (-2).
    weight = [[0.0] for _ in types]
    bias = [2.0 if name == "low_light" else -2.0 for name in types]
    calibration["presence_net"] = {
        "features": ["noise_sigma"],
        "types": types,
        "mean": [0.0],
        "std": [1.0],
        "layers": [{"weight": weight, "bias": bias}],
        "thresholds": {},
    }
    noisy = {name: 0.0 for name in MEASUREMENTS} | {"noise_sigma": 0.1}
    net_only = EstimatorAssessor(calibration).assess_measurements(noisy)
    assert net_only.present() == [Degradation.LOW_LIGHT]
    either = EstimatorAssessor(calibration | {"presence_rule": "or"}).assess_measurements(noisy)
    assert set(either.present()) == {Degradation.LOW_LIGHT, Degradation.NOISE}
    with pytest.raises(ValueError, match="presence_rule"):
        EstimatorAssessor(calibration | {"presence_rule": "vote"})
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(calibration))
    monkeypatch.setenv(CALIBRATION_ENV, str(path))
    assert EstimatorAssessor().calibration_path == path


# ------------------------------------------------------------------------------------------------
# assessor evaluation


def test_evaluate_assessor_scores_single_mixed_and_real_sets(photo):
    from agent.perception.evaluate import dominant_class, evaluate_assessor, format_result

    assessor = EstimatorAssessor(_toy_calibration())  # noise iff the noise estimate is high; nothing else
    noisy = _degraded(photo, "noise", sigma=0.1, kind="gaussian")
    hazy = _degraded(photo, "haze", severity=1.0)
    single = [
        {"image": photo, "labels": [], "severity": {}, "source": "SetA/one"},
        {"image": noisy, "labels": ["noise"], "severity": {"noise": 0.8}, "source": "SetA/two"},
        {"image": hazy, "labels": ["haze"], "severity": {"haze": 1.0}, "source": "SetB/one"},
    ]
    mixed = [{"image": noisy, "labels": ["noise", "haze"], "severity": {"noise": 0.8, "haze": 0.5}}]
    real = {"noisy photos": ([noisy, photo], Degradation.NOISE)}
    assert dominant_class(assessor.assess(noisy)) == "noise"
    assert dominant_class(assessor.assess(photo)) == "no"
    result = evaluate_assessor(assessor, single, mixed, real)
    single_scores = result["single"]
    assert single_scores["accuracy"] == pytest.approx(2 / 3)  # the hazy crop is called clean
    assert result["clean_no_rate"] == 1.0
    assert single_scores["per_class"]["noise"]["f1"] == 1.0
    confusion = np.array(single_scores["confusion"])
    classes = single_scores["classes"]
    assert confusion[classes.index("haze"), classes.index("no")] == 1
    # Mixture: noise found, haze missed -> micro F1 = 2*1 / (2*1 + 0 + 1).
    assert result["mixed"]["micro_f1"] == pytest.approx(2 / 3)
    assert result["mixed"]["exact_set"] == 0.0
    assert result["mixed"]["per_type"]["haze"]["f1"] == 0.0
    assert result["real"]["noisy photos"]["accuracy"] == 0.5
    assert result["real"]["noisy photos"]["predicted"] == {"noise": 1, "no": 1}
    assert result["real"]["noisy photos"]["label_present"] == 0.5
    text = format_result(result)
    assert "accuracy 66.7%" in text and "real sets together: 50.0% of 2 images" in text
    assert "label found present (probability >= 0.5): 50.0%" in text
    # severities 0.8 (noise, right) and 1.0 (haze, missed) both fall in the top band; nothing below it
    bands = single_scores["accuracy_by_severity"]
    assert bands["0.67-1"] == {"accuracy": 0.5, "samples": 2} and bands["0-0.33"]["samples"] == 0
    assert "0.67-1 50.0% (n=2)" in text
    sources = single_scores["accuracy_by_source"]
    assert sources["SetA"] == {"accuracy": 1.0, "samples": 2, "clean_no_rate": 1.0, "clean_samples": 1}
    assert sources["SetB"]["accuracy"] == 0.0 and sources["SetB"]["clean_samples"] == 0
    assert 'SetA 100.0% (n=2; "no" on 100% of 1 clean)' in text
    assert result["seconds_per_image"] > 0


@pytest.mark.skipif(not (SHARED / "data" / "clean" / "LIVE1_color").is_dir(), reason="shared data not available")
def test_synthetic_evaluation_sets_come_from_the_evaluation_split():
    from agent.perception.evaluate import synthetic_sets

    single, mixed = synthetic_sets(SHARED, per_class=1, mixtures=2, seed=0, size=64)
    assert len(single) == 1 + len(Degradation) and len(mixed) == 2
    assert [s["labels"] for s in single[:2]] == [[], [list(Degradation)[0].value]]
    assert all(2 <= len(s["labels"]) <= 3 for s in mixed)
    sources = {s["source"].split("/")[0] for s in single + mixed}
    assert "BSD100" not in sources
