"""Verification of one restoration step and of the whole run.

A step is accepted only when (1) the degradation it targeted dropped, (2) no other degradation
rose above the presence threshold, (3) no-reference quality did not get worse beyond the
policy's tolerance, and (4) the result still has the structure of its input (fidelity guard).
The final check compares the output with the input the same way, so the agent can decide to
"leave it alone".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from agent.degradations import HIDES, REVEALS, Degradation
from agent.iqa import IQAScore, relative_change
from agent.report import DegradationReport
from tools.imageops import gray


@dataclass
class Verdict:
    """The outcome of verifying one candidate image."""

    accept: bool
    reason: str
    checks: dict[str, Any] = field(default_factory=dict)


def structural_fidelity(reference: np.ndarray, candidate: np.ndarray, max_side: int = 256) -> float:
    """Mean local structure correlation (SSIM's structure term) between two images.

    Computed on grayscale images reduced to at most ``max_side`` pixels so that noise, JPEG
    blocks and rain streaks (fine scale) do not count, while lost or invented shapes do. It is
    insensitive to brightness and contrast changes, which restoration is allowed to make.
    """
    a, b = gray(reference), gray(candidate)
    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    h, w = a.shape
    f = min(1.0, max_side / max(h, w))
    if f < 1.0:
        size = (max(8, round(w * f)), max(8, round(h * f)))
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (7, 7), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = np.maximum(blur(a * a) - mu_a**2, 0.0)
    var_b = np.maximum(blur(b * b) - mu_b**2, 0.0)
    cov = blur(a * b) - mu_a * mu_b
    c3 = (0.03**2) / 2
    structure = (cov + c3) / (np.sqrt(var_a * var_b) + c3)
    return float(np.mean(structure))


def degradation_load(report: DegradationReport, thresholds: Any) -> float:
    """How degraded an image looks: sum over present types of probability x (0.5 + severity)."""
    load = 0.0
    for degradation, estimate in report.estimates.items():
        if estimate.probability >= thresholds.presence_for(degradation):
            load += estimate.probability * (0.5 + estimate.severity)
    return load


def iqa_gain(before: IQAScore, after: IQAScore, combine: str = "mean") -> float | None:
    """Relative NR-IQA improvement over the metrics both scores have (``None`` if none).

    ``combine="mean"`` averages the metrics' relative changes; ``"min"`` takes the worst one, so a
    gain is positive only when every metric improved.
    """
    changes = list(relative_change(before, after).values())
    if not changes:
        return None
    if combine == "min":
        return float(min(changes))
    if combine != "mean":
        raise ValueError(f"unknown iqa_combine {combine!r}: expected 'mean' or 'min'")
    return float(np.mean(changes))


#: Names of the features :func:`step_features` computes (the learned best-of-k score weighs these).
STEP_FEATURES = (
    "load_drop",
    "target_probability_drop",
    "target_severity_drop",
    "target_severity_before",
    "iqa_gain",
    "fidelity",
    "change_rms",
    "detail_change",
    "brightness_change",
    "strength",
)


def _detail_energy(luma: np.ndarray) -> float:
    """RMS of the image minus its Gaussian blur (sigma 1): the finest-scale content (edges, noise, blocks)."""
    smooth = cv2.GaussianBlur(luma, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    return float(np.sqrt(np.mean((luma - smooth) ** 2)))


def step_features(
    target: Degradation,
    before_image: np.ndarray,
    after_image: np.ndarray,
    before: DegradationReport,
    after: DegradationReport,
    iqa_change: float | None,
    fidelity: float,
    thresholds: Any,
    strength: float = 1.0,
) -> dict[str, float]:
    """What the verifier can see of one step without a reference, as named numbers (:data:`STEP_FEATURES`).

    ``change_rms`` is the RMS luminance change (0-1 scale), ``detail_change`` the log ratio of the
    finest-scale energy after vs before (negative: the step smoothed, positive: it sharpened or added
    texture), ``brightness_change`` the mean luminance change.
    """
    luma_before, luma_after = gray(before_image), gray(after_image)
    if luma_after.shape != luma_before.shape:
        luma_after = cv2.resize(luma_after, (luma_before.shape[1], luma_before.shape[0]), interpolation=cv2.INTER_AREA)
    detail_before, detail_after = _detail_energy(luma_before), _detail_energy(luma_after)
    return {
        "load_drop": degradation_load(before, thresholds) - degradation_load(after, thresholds),
        "target_probability_drop": before.probability(target) - after.probability(target),
        "target_severity_drop": before.severity(target) - after.severity(target),
        "target_severity_before": before.severity(target),
        "iqa_gain": 0.0 if iqa_change is None else float(iqa_change),
        "fidelity": float(fidelity),
        "change_rms": float(np.sqrt(np.mean((luma_after - luma_before) ** 2))),
        "detail_change": float(np.log((detail_after + 1e-4) / (detail_before + 1e-4))),
        "brightness_change": float(luma_after.mean() - luma_before.mean()),
        "strength": float(strength),
    }


def step_iqa_tolerance(
    target: Degradation, probability_drop: float, thresholds: Any, done: list[Degradation] | None = None
) -> float:
    """The NR-IQA tolerance of a step that targeted ``target`` and lowered its probability by ``probability_drop``.

    The target's ``iqa_tolerance_by_target`` entry (else ``iqa_tolerance``), raised to its
    ``iqa_tolerance_if_confident`` entry when the drop reaches ``confident_target_drop``, and to its
    ``iqa_tolerance_after`` entry under any of ``done``, the targets of the steps accepted before it.
    """
    tolerance = thresholds.iqa_tolerance_by_target.get(target, thresholds.iqa_tolerance)
    confident = thresholds.iqa_tolerance_if_confident.get(target)
    if confident is not None and probability_drop >= thresholds.confident_target_drop:
        tolerance = max(tolerance, confident)
    for earlier in done or []:
        tolerance = max(tolerance, thresholds.iqa_tolerance_after.get(earlier, {}).get(target, tolerance))
    return float(tolerance)


def verify_step(
    target: Degradation,
    before: DegradationReport,
    after: DegradationReport,
    before_iqa: IQAScore,
    after_iqa: IQAScore,
    fidelity: float,
    thresholds: Any,
    protected: list[Degradation] | None = None,
    target_before: tuple[float, float] | None = None,
    done: list[Degradation] | None = None,
) -> Verdict:
    """Decide whether a step that targeted ``target`` made things better.

    ``thresholds`` is the policy's thresholds section (presence_threshold, min_target_drop,
    max_other_rise, iqa_tolerance, min_fidelity). ``target_before`` is the target's probability and
    severity where it was last seen, for a type an earlier step hid (:data:`agent.degradations.HIDES`):
    its drop is measured from there, since ``before`` no longer shows it; the other checks still compare
    with ``before``. A type that such a step makes present is listed in ``checks["unfounded"]`` (the
    graph does not plan it: it is the look of the smoothing). ``checks["hidden"]`` lists what this step
    hid: ``{type: [probability, severity]}`` as they were before it. ``done`` holds the targets of the
    steps accepted before this one (for ``iqa_tolerance_after``).
    """
    target_probability, target_severity = (
        target_before if target_before is not None else (before.probability(target), before.severity(target))
    )
    prob_drop = target_probability - after.probability(target)
    sev_drop = target_severity - after.severity(target)
    all_rises = {
        d: round(after.probability(d) - before.probability(d), 4)
        for d in after.estimates
        if d != target
        and after.probability(d) >= thresholds.presence_for(d)
        and after.probability(d) - before.probability(d) > thresholds.max_other_rise
    }
    revealed = {d.value: v for d, v in all_rises.items() if d in REVEALS[target]}
    hidden = {
        d.value: [round(before.probability(d), 4), round(before.severity(d), 4)]
        for d in HIDES.get(target, frozenset())
        if before.probability(d) >= thresholds.presence_for(d) > after.probability(d)
    }
    rises = {d.value: v for d, v in all_rises.items() if d not in REVEALS[target]}
    # What the step on a hidden type makes appear is the look of its smoothing, not a finding (the hiding step
    # already showed what the type had hidden): the graph does not plan it.
    unfounded = {
        d.value: round(after.probability(d) - before.probability(d), 4)
        for d in after.estimates
        if target_before is not None
        and d != target
        and after.probability(d) >= thresholds.presence_for(d) > before.probability(d)
    }
    protected_rises = [
        d.value for d in (protected or []) if after.probability(d) < before.probability(d) - thresholds.max_other_rise
    ]
    gain = iqa_gain(before_iqa, after_iqa, thresholds.iqa_combine)
    checks: dict[str, Any] = {
        "target_probability_drop": round(prob_drop, 4),
        "target_severity_drop": round(sev_drop, 4),
        "other_rises": rises,
        "revealed": revealed,
        "hidden": hidden,
        "unfounded": unfounded,
        "iqa_gain": None if gain is None else round(gain, 4),
        "fidelity": round(fidelity, 4),
    }
    target_dropped = prob_drop >= thresholds.min_target_drop or sev_drop >= thresholds.min_target_drop
    partial = (
        thresholds.min_iqa_gain is not None
        and gain is not None
        and gain >= thresholds.min_iqa_gain
        and prob_drop >= -thresholds.min_target_drop
        and sev_drop >= -thresholds.min_target_drop
    )
    if not target_dropped and not partial:
        return Verdict(False, f"{target.value} did not drop enough", checks)
    if rises:
        return Verdict(False, "other degradations rose: " + ", ".join(f"{k} +{v}" for k, v in rises.items()), checks)
    if protected_rises:
        return Verdict(False, "removed a protected effect: " + ", ".join(protected_rises), checks)
    tolerance = step_iqa_tolerance(target, prob_drop, thresholds, done)
    checks["iqa_tolerance"] = tolerance
    if gain is not None and gain < -tolerance:
        return Verdict(False, f"no-reference quality fell by {-gain:.1%} (tolerance {tolerance:.0%})", checks)
    if fidelity < thresholds.min_fidelity:
        return Verdict(False, f"structure drifted from the input (fidelity {fidelity:.3f})", checks)
    if not target_dropped:
        return Verdict(True, f"{target.value} not measurably lower, but quality rose {gain:+.1%}", checks)
    return Verdict(True, f"{target.value} reduced", checks)


def verify_final(
    input_report: DegradationReport,
    output_report: DegradationReport,
    input_iqa: IQAScore,
    output_iqa: IQAScore,
    fidelity: float,
    thresholds: Any,
    targets: list[Degradation] | None = None,
    step_tolerances: list[float] | None = None,
) -> Verdict:
    """Whether the output beats the input; otherwise the agent returns the input unchanged.

    ``targets`` are the degradations of the accepted steps and ``step_tolerances`` the NR-IQA tolerances
    their verdicts used (``checks["iqa_tolerance"]``): the output's tolerance is the largest of these
    (smoothing steps legitimately lower PIQE/NIQE, and so may a step after a confident target drop).
    """
    load_in = degradation_load(input_report, thresholds)
    load_out = degradation_load(output_report, thresholds)
    gain = iqa_gain(input_iqa, output_iqa, thresholds.iqa_combine)
    checks = {
        "input_load": round(load_in, 4),
        "output_load": round(load_out, 4),
        "iqa_gain": None if gain is None else round(gain, 4),
        "fidelity": round(fidelity, 4),
    }
    less_degraded = load_out <= load_in - thresholds.final_margin
    load_tolerance = thresholds.final_load_tolerance
    if load_tolerance is None:
        load_tolerance = thresholds.min_target_drop
    better_looking = (
        thresholds.min_iqa_gain is not None and gain is not None and gain >= thresholds.min_iqa_gain
    ) and load_out <= load_in + load_tolerance
    if not less_degraded and not better_looking:
        return Verdict(False, "the output does not look less degraded than the input", checks)
    tolerance = max(
        [thresholds.iqa_tolerance_by_target.get(t, thresholds.iqa_tolerance) for t in targets or []]
        + [thresholds.iqa_tolerance]
        + list(step_tolerances or [])
    )
    if gain is not None and gain < -tolerance:
        return Verdict(False, f"no-reference quality of the output is {-gain:.1%} worse than the input", checks)
    if fidelity < thresholds.min_fidelity:
        return Verdict(False, f"the output drifted from the input's structure (fidelity {fidelity:.3f})", checks)
    return Verdict(True, "the output is less degraded than the input", checks)
