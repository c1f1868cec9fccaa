"""Step and final verification on hand-made reports: each rule accepts and rejects as documented."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.degradations import ALL_DEGRADATIONS, Degradation
from agent.iqa import IQAScore
from agent.report import DegradationEstimate, DegradationReport
from agent.verify import STEP_FEATURES, step_features, structural_fidelity, verify_final, verify_step
from policies import load_policy

THRESHOLDS = load_policy("default").thresholds


def report(**probabilities: float) -> DegradationReport:
    estimates = {d: DegradationEstimate(probability=0.0, severity=0.0) for d in ALL_DEGRADATIONS}
    for name, p in probabilities.items():
        estimates[Degradation(name)] = DegradationEstimate(probability=p, severity=p)
    return DegradationReport(assessor="test", estimates=estimates)


def iqa(piqe: float) -> IQAScore:
    return IQAScore(values={"piqe": piqe}, lower_better={"piqe": True})


def test_accepts_when_target_drops_and_nothing_else_rises():
    v = verify_step(Degradation.NOISE, report(noise=0.9), report(noise=0.1), iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.accept, v.reason


def test_rejects_when_target_does_not_drop_and_quality_does_not_rise():
    v = verify_step(Degradation.NOISE, report(noise=0.9), report(noise=0.88), iqa(50), iqa(50), 0.95, THRESHOLDS)
    assert not v.accept and "did not drop" in v.reason


def test_partial_restoration_kept_when_quality_rises():
    before, after = report(low_resolution=0.9), report(low_resolution=0.92)
    v = verify_step(Degradation.LOW_RESOLUTION, before, after, iqa(50), iqa(45), 0.99, THRESHOLDS)
    assert v.accept and "quality rose" in v.reason


def test_rejects_an_unrelated_rise_but_tolerates_a_revealed_one():
    before = report(noise=0.9, haze=0.1, defocus_blur=0.2, color_cast=0.1)
    tinted = report(noise=0.1, haze=0.1, defocus_blur=0.2, color_cast=0.8)
    v = verify_step(Degradation.NOISE, before, tinted, iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert not v.accept and "color_cast" in v.reason
    blurrier = report(noise=0.1, haze=0.1, defocus_blur=0.8)  # denoising reveals blur noise was hiding
    v = verify_step(Degradation.NOISE, before, blurrier, iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.accept and v.checks["revealed"] == {"defocus_blur": 0.6}
    hazier = report(noise=0.1, haze=0.8, defocus_blur=0.2)  # ... and haze: noise had lowered the dark channel
    v = verify_step(Degradation.NOISE, before, hazier, iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.accept and v.checks["revealed"] == {"haze": 0.7}
    brighter = report(low_light=0.1, haze=0.8)  # a haze rise after brightening still counts against it
    v = verify_step(
        Degradation.LOW_LIGHT, report(low_light=0.9, haze=0.1), brighter, iqa(50), iqa(45), 0.95, THRESHOLDS
    )
    assert not v.accept and "haze" in v.reason


def test_brightening_and_denoising_may_reveal_blur_and_rain_they_hid():
    dark = report(low_light=0.9, rain=0.1, defocus_blur=0.1)
    lit = report(low_light=0.1, rain=0.5, defocus_blur=0.6)  # streaks and blur measurable once brighter
    v = verify_step(Degradation.LOW_LIGHT, dark, lit, iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.accept, v.reason
    assert v.checks["revealed"] == {"rain": 0.4, "defocus_blur": 0.5}
    v = verify_step(
        Degradation.NOISE, report(noise=0.9), report(noise=0.1, rain=0.6), iqa(50), iqa(45), 0.95, THRESHOLDS
    )
    assert v.accept and v.checks["revealed"] == {"rain": 0.6}
    # Deraining hides no noise: a noise rise still counts against it.
    v = verify_step(Degradation.RAIN, report(rain=0.9), report(rain=0.1, noise=0.7), iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert not v.accept and "noise" in v.reason


# Per blur step: the report before it, one after it where a type it hid shows (tolerated, with that rise), and one
# where a type it did not hide rises (held against it).
BLUR_REVEALS = {
    # Restoring detail shows the streak of a motion blur that the lower resolution had hidden, but adds no noise.
    "lower resolution hid a streak": (
        Degradation.LOW_RESOLUTION,
        dict(low_resolution=0.9, motion_blur=0.3),
        dict(low_resolution=0.1, motion_blur=0.6),
        {"motion_blur": 0.3},
        dict(low_resolution=0.1, motion_blur=0.3, noise=0.7),
        "noise",
    ),
    # ... and removing the streak shows the softness of the lower resolution left beneath it.
    "a streak hid the lower resolution": (
        Degradation.MOTION_BLUR,
        dict(motion_blur=0.8, low_resolution=0.3),
        dict(motion_blur=0.1, low_resolution=0.6),
        {"low_resolution": 0.3},
        None,
        None,
    ),
    # A defocus disc hides a streak and the softness beneath it too; removing it adds no haze.
    "a disc hid a streak": (
        Degradation.DEFOCUS_BLUR,
        dict(defocus_blur=0.8, motion_blur=0.1),
        dict(defocus_blur=0.1, motion_blur=0.6),
        {"motion_blur": 0.5},
        dict(defocus_blur=0.1, motion_blur=0.1, haze=0.5),
        "haze",
    ),
}


@pytest.mark.parametrize("case", list(BLUR_REVEALS), ids=list(BLUR_REVEALS))
def test_removing_a_blur_or_a_lower_resolution_may_reveal_what_it_hid(case):
    target, before, revealing, revealed, unrelated, risen = BLUR_REVEALS[case]
    v = verify_step(target, report(**before), report(**revealing), iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.accept and v.checks["revealed"] == {name: pytest.approx(rise) for name, rise in revealed.items()}
    if unrelated is not None:
        v = verify_step(target, report(**before), report(**unrelated), iqa(50), iqa(45), 0.95, THRESHOLDS)
        assert not v.accept and risen in v.reason


def test_a_jpeg_step_that_smooths_the_noise_below_presence_hides_it_and_does_not_remove_it():
    before, after = report(jpeg=0.95, noise=0.8), report(jpeg=0.1, noise=0.05)
    v = verify_step(Degradation.JPEG, before, after, iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.accept and v.checks["hidden"] == {"noise": [0.8, 0.8]}
    # Noise still seen after the step is not hidden (the planner finds it), nor is noise never seen before it.
    v = verify_step(Degradation.JPEG, before, report(jpeg=0.1, noise=0.6), iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.accept and v.checks["hidden"] == {}
    v = verify_step(Degradation.JPEG, report(jpeg=0.95, noise=0.3), after, iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.accept and v.checks["hidden"] == {}
    # Denoising hides nothing by this rule, whatever it does to the blocks.
    v = verify_step(Degradation.NOISE, before, after, iqa(50), iqa(45), 0.95, THRESHOLDS)
    assert v.checks["hidden"] == {}


def test_a_hidden_target_drops_from_where_it_was_last_seen():
    def denoise(before, after, after_piqe=52.0, **kwargs):
        return verify_step(Degradation.NOISE, before, after, iqa(50), iqa(after_piqe), 0.95, THRESHOLDS, **kwargs)

    smoothed, denoised, last_seen = report(noise=0.05), report(noise=0.01), (0.8, 0.7)
    v = denoise(smoothed, denoised)
    assert not v.accept and "did not drop" in v.reason
    v = denoise(smoothed, denoised, target_before=last_seen)
    assert v.accept, v.reason
    assert v.checks["target_probability_drop"] == pytest.approx(0.79)
    assert v.checks["target_severity_drop"] == pytest.approx(0.69)
    # The other checks still compare with the image the step started from.
    v = denoise(smoothed, denoised, 50 * 1.8, target_before=last_seen)
    assert not v.accept and "quality fell" in v.reason
    # What it makes present is the look of its smoothing, listed as unfounded (the graph does not plan it) ...
    v = denoise(report(haze=0.1), report(haze=0.25), 45.0, target_before=last_seen)
    assert v.accept and v.checks["unfounded"] == {"haze": pytest.approx(0.15)}
    # ... but a step on a type in sight makes no such list, and a large rise it does not reveal still counts.
    v = denoise(report(noise=0.9, haze=0.1), report(haze=0.25), 45.0)
    assert v.accept and v.checks["unfounded"] == {}
    v = denoise(report(color_cast=0.1), report(color_cast=0.7), 45.0, target_before=last_seen)
    assert not v.accept and "color_cast" in v.reason


def test_iqa_tolerance_depends_on_the_target():
    # Denoising may lower PIQE/NIQE by up to 35 %; brightening may not lower it by 2 %.
    worse = iqa(50 * 1.2)
    assert verify_step(Degradation.NOISE, report(noise=0.9), report(), iqa(50), worse, 0.95, THRESHOLDS).accept
    dimmer = iqa(50 * 1.05)
    v = verify_step(Degradation.LOW_LIGHT, report(low_light=0.9), report(), iqa(50), dimmer, 0.95, THRESHOLDS)
    assert not v.accept and "quality fell" in v.reason


def test_confident_target_drop_raises_the_iqa_tolerance_of_that_step_and_of_the_output():
    confident = THRESHOLDS.model_copy(
        update={
            "iqa_tolerance_by_target": {Degradation.HAZE: 0.02},
            "iqa_tolerance_if_confident": {Degradation.HAZE: 0.2},
            "confident_target_drop": 0.3,
        }
    )
    worse = iqa(50 * 1.1)  # PIQE 10 % worse, as dehazing often scores
    v = verify_step(Degradation.HAZE, report(haze=0.9), report(haze=0.1), iqa(50), worse, 0.95, confident)
    assert v.accept, v.reason
    assert v.checks["iqa_tolerance"] == 0.2
    # A small drop (0.2) is no evidence that the step was right: the target's own 2 % applies.
    v = verify_step(Degradation.HAZE, report(haze=0.5), report(haze=0.3), iqa(50), worse, 0.95, confident)
    assert not v.accept and "tolerance 2%" in v.reason
    # Other targets are untouched by the haze entry.
    v = verify_step(Degradation.LOW_LIGHT, report(low_light=0.9), report(), iqa(50), worse, 0.95, confident)
    assert not v.accept and "quality fell" in v.reason
    # The final check tolerates what the accepted steps' verdicts tolerated, and no more.
    args = (report(haze=0.9), report(haze=0.1), iqa(50), worse, 0.99, confident, [Degradation.HAZE])
    assert not verify_final(*args).accept
    assert verify_final(*args, step_tolerances=[0.2]).accept
    assert not verify_final(*args, step_tolerances=[0.05]).accept


def test_an_earlier_step_of_one_type_raises_the_iqa_tolerance_of_a_later_step_of_another():
    after_denoising = THRESHOLDS.model_copy(
        update={
            "iqa_tolerance_by_target": {Degradation.DEFOCUS_BLUR: 0.2},
            "iqa_tolerance_if_confident": {},
            "iqa_tolerance_after": {Degradation.NOISE: {Degradation.DEFOCUS_BLUR: 0.65}},
        }
    )
    sharpened = iqa(50 * 1.5)  # PIQE half as bad again, as a denoised photo scores once deblurred
    args = (Degradation.DEFOCUS_BLUR, report(defocus_blur=0.9), report(defocus_blur=0.1), iqa(50), sharpened, 0.95)
    v = verify_step(*args, after_denoising, done=[Degradation.JPEG, Degradation.NOISE])
    assert v.accept and v.checks["iqa_tolerance"] == 0.65
    for done in ([], [Degradation.JPEG], None):  # no denoising before it: the target's own 20 %
        v = verify_step(*args, after_denoising, done=done)
        assert not v.accept and "tolerance 20%" in v.reason
    # The entry is for deblurring after denoising, not the other way round.
    denoising = (Degradation.NOISE, report(noise=0.9), report(noise=0.1), iqa(50), sharpened, 0.95)
    v = verify_step(*denoising, after_denoising, done=[Degradation.DEFOCUS_BLUR])
    assert not v.accept and "quality fell" in v.reason


def test_fidelity_guard_rejects_lost_structure():
    v = verify_step(Degradation.NOISE, report(noise=0.9), report(), iqa(50), iqa(45), 0.2, THRESHOLDS)
    assert not v.accept and "structure" in v.reason


def test_structural_fidelity_ignores_brightness_but_not_inversion():
    from evals.synthesis import procedural_image

    base = procedural_image(128, 128, seed=1)
    assert structural_fidelity(base, np.clip(base * 1.3, 0, 1)) > 0.9
    assert structural_fidelity(base, 1.0 - base) < THRESHOLDS.min_fidelity


def test_final_check_returns_input_unless_output_is_better():
    same = verify_final(report(noise=0.9), report(noise=0.9), iqa(50), iqa(50), 0.99, THRESHOLDS)
    assert not same.accept
    better = verify_final(report(noise=0.9), report(noise=0.1), iqa(50), iqa(48), 0.99, THRESHOLDS, [Degradation.NOISE])
    assert better.accept


def test_iqa_combine_min_requires_every_metric_to_improve():
    from agent.iqa import IQAScore
    from agent.verify import iqa_gain

    before = IQAScore(values={"uiqm": 3.0, "uciqe": 0.5}, lower_better={"uiqm": False, "uciqe": False})
    after = IQAScore(values={"uiqm": 3.6, "uciqe": 0.49}, lower_better={"uiqm": False, "uciqe": False})
    assert iqa_gain(before, after) == pytest.approx((0.2 - 0.02) / 2)
    assert iqa_gain(before, after, "min") == pytest.approx(-0.02)
    with pytest.raises(ValueError, match="iqa_combine"):
        iqa_gain(before, after, "median")
    strict = THRESHOLDS.model_copy(
        update={"iqa_combine": "min", "iqa_tolerance": 0.0, "iqa_tolerance_if_confident": {}}
    )
    verdict = verify_step(Degradation.HAZE, report(haze=0.9), report(haze=0.1), before, after, 0.95, strict)
    assert not verdict.accept and "fell" in verdict.reason
    assert verify_step(Degradation.HAZE, report(haze=0.9), report(haze=0.1), before, after, 0.95, THRESHOLDS).accept


def test_final_load_tolerance_lets_better_looking_output_through():
    from agent.iqa import IQAScore

    before = IQAScore(values={"uiqm": 3.0}, lower_better={"uiqm": False})
    after = IQAScore(values={"uiqm": 3.3}, lower_better={"uiqm": False})
    # Dehazing unveiled a colour cast: the load rose by 0.4 while quality rose 10 %.
    unveiled = report(color_cast=0.9)
    default = verify_final(report(color_cast=0.6), unveiled, before, after, 0.99, THRESHOLDS)
    assert not default.accept
    relaxed = THRESHOLDS.model_copy(update={"final_load_tolerance": 1.0})
    assert verify_final(report(color_cast=0.6), unveiled, before, after, 0.99, relaxed).accept


def test_step_features_describe_what_a_step_did():
    rng = np.random.default_rng(0)
    clean = np.clip(0.5 + 0.2 * rng.standard_normal((64, 64, 3)), 0, 1).astype(np.float32)
    noisy = np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)
    smoothed = cv2.GaussianBlur(noisy, (0, 0), 1.5)
    before = report(noise=0.9)
    after = report(noise=0.2)
    thresholds = THRESHOLDS
    features = step_features(Degradation.NOISE, noisy, smoothed, before, after, 0.1, 0.8, thresholds, 0.6)
    assert set(features) == set(STEP_FEATURES)
    assert features["detail_change"] < -0.5  # smoothing removed fine-scale energy
    assert features["change_rms"] > 0.02
    assert features["target_probability_drop"] == pytest.approx(0.7)
    assert features["target_severity_drop"] == pytest.approx(0.7)
    assert features["strength"] == 0.6 and features["iqa_gain"] == 0.1
    same = step_features(Degradation.NOISE, noisy, noisy, before, before, None, 1.0, thresholds)
    assert same["change_rms"] == 0.0 and same["detail_change"] == pytest.approx(0.0)
    assert same["load_drop"] == 0.0 and same["iqa_gain"] == 0.0
    brighter = np.clip(noisy * 1.5, 0, 1)
    brightened = step_features(Degradation.LOW_LIGHT, noisy, brighter, before, before, None, 1.0, thresholds)
    assert brightened["brightness_change"] > 0.1
