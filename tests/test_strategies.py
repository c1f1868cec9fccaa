"""Exploration strategies (greedy, best-of-k, tree search with rollback) and the pairwise order prior."""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent.context import RunContext
from agent.degradations import ALL_DEGRADATIONS, Degradation
from agent.graph import build_graph
from agent.planning.rule_planner import Intent, next_step
from agent.report import DegradationEstimate, DegradationReport
from policies import policy_from_mapping
from tests.fakes import FakeAssessor, FakeBrighten, FakeDenoise, fake_policy, fake_registry, noisy_dark_image
from tools.base import STRENGTH, Tool, ToolError, ToolSpec


class WeakDenoise(Tool):
    """Light smoothing: accepted by the verifier, but leaves noise that the later brightening amplifies."""

    spec = ToolSpec("fake_denoise_weak", "light smoothing", (Degradation.NOISE,), (STRENGTH,), family="test")

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Blur lightly."""
        return cv2.GaussianBlur(image, (0, 0), 0.5)


class MarkingDenoise(Tool):
    """Smooths well but leaves a mark that makes the later brightening tool fail (a bad early choice)."""

    spec = ToolSpec("fake_denoise_marking", "smoothing with a mark", (Degradation.NOISE,), (STRENGTH,), family="test")

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Blur, then zero the top-left 4x4 corner."""
        out = cv2.GaussianBlur(image, (0, 0), 1.2)
        out[:4, :4] = 0.0
        return out


class FragileBrighten(FakeBrighten):
    """Brightens unless the image carries MarkingDenoise's mark."""

    spec = ToolSpec("fake_brighten_fragile", "gain", (Degradation.LOW_LIGHT,), (STRENGTH,), family="test")

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Raise on a marked image, else brighten."""
        if float(np.abs(image[:4, :4]).max()) == 0.0:
            raise ToolError("cannot brighten a marked image")
        return super().apply(image, **params)


def _context(noise: list[str], low_light: str, strategy: dict[str, Any]) -> RunContext:
    registry = fake_registry()
    for cls in (WeakDenoise, MarkingDenoise, FragileBrighten):
        registry.add_instance(cls())
    data = fake_policy().model_dump(mode="json")
    data["candidates"] = {
        "noise": [{"tool": name, "strengths": [1.0]} for name in noise],
        "low_light": [{"tool": low_light, "strengths": [1.0]}],
    }
    data["strategy"] = strategy
    return RunContext(policy=policy_from_mapping(data), registry=registry, assessor=FakeAssessor())


def _run(tmp_path, context: RunContext) -> dict[str, Any]:
    image = noisy_dark_image(tmp_path / "in.png")
    compiled = build_graph().compile(checkpointer=InMemorySaver())
    return compiled.invoke(
        {"input_path": str(image), "run_dir": str(tmp_path / "run")},
        {"configurable": {"thread_id": "t"}},
        context=context,
    )


def test_greedy_keeps_the_first_acceptable_candidate(tmp_path):
    context = _context(["fake_denoise_weak", "fake_denoise"], "fake_brighten", {"name": "greedy"})
    state = _run(tmp_path, context)
    # The weak denoiser passes, so greedy stops there; the brightening then amplifies the leftover noise.
    assert [a["tool"] for a in state["accepted"]] == ["fake_denoise_weak"]
    assert [a["decision"] for a in state["attempts"]] == ["accept", "rollback"]
    assert state["tool_calls"] == 2


def test_best_of_k_compares_verified_candidates_and_keeps_the_best(tmp_path):
    context = _context(["fake_denoise_weak", "fake_denoise"], "fake_brighten", {"name": "best_of_k", "k": 3})
    state = _run(tmp_path, context)
    assert [a["tool"] for a in state["accepted"]] == ["fake_denoise", "fake_brighten"]
    noise_records = [a for a in state["attempts"] if a.get("target") == "noise"]
    assert [a["decision"] for a in noise_records] == ["passed", "passed", "accept"]
    weak, strong = noise_records[0]["score"], noise_records[1]["score"]
    assert strong > weak
    assert "best of 2 verified candidates" in noise_records[-1]["reason"]
    assert state["tool_calls"] == 3


def test_best_of_k_with_k_1_is_greedy(tmp_path):
    context = _context(["fake_denoise_weak", "fake_denoise"], "fake_brighten", {"name": "best_of_k", "k": 1})
    state = _run(tmp_path, context)
    assert [a["tool"] for a in state["accepted"]] == ["fake_denoise_weak"]


def test_greedy_cannot_recover_from_a_bad_early_choice(tmp_path):
    context = _context(["fake_denoise_marking", "fake_denoise"], "fake_brighten_fragile", {"name": "greedy"})
    state = _run(tmp_path, context)
    assert [a["tool"] for a in state["accepted"]] == ["fake_denoise_marking"]
    assert state["attempts"][-1]["decision"] == "rollback"


def test_tree_search_backtracks_and_tries_the_next_candidate(tmp_path):
    context = _context(
        ["fake_denoise_marking", "fake_denoise"], "fake_brighten_fragile", {"name": "tree", "max_backtracks": 2}
    )
    state = _run(tmp_path, context)
    assert [a["tool"] for a in state["accepted"]] == ["fake_denoise", "fake_brighten_fragile"]
    decisions = [(a.get("tool"), a["decision"]) for a in state["attempts"] if "decision" in a]
    assert ("fake_denoise_marking", "backtrack") in decisions
    assert state["backtracks"] == 1
    assert state["final"]["kept"] == "output"


def test_tree_search_respects_its_backtrack_budget(tmp_path):
    context = _context(
        ["fake_denoise_marking", "fake_denoise"], "fake_brighten_fragile", {"name": "tree", "max_backtracks": 0}
    )
    state = _run(tmp_path, context)
    assert [a["tool"] for a in state["accepted"]] == ["fake_denoise_marking"]
    assert state["backtracks"] == 0


def _report(**probabilities: float) -> DegradationReport:
    estimates = {d: DegradationEstimate(probability=0.0, severity=0.0) for d in ALL_DEGRADATIONS}
    for name, p in probabilities.items():
        estimates[Degradation(name)] = DegradationEstimate(probability=p, severity=p)
    return DegradationReport(assessor="test", estimates=estimates)


def test_pairwise_prior_overrides_the_fixed_order_where_it_has_an_opinion():
    registry = fake_registry()
    data = fake_policy().model_dump(mode="json")
    report = _report(noise=0.9, low_light=0.9)
    fixed = policy_from_mapping(data)
    assert next_step(report, [], Intent(), fixed, registry)["target"] == "noise"  # reverse physical order
    data["order_pairwise"] = {"low_light": {"noise": 0.4}}
    learned = policy_from_mapping(data)
    assert learned.precedence("low_light", "noise") == 0.4
    assert learned.precedence("noise", "low_light") == -0.4
    assert next_step(report, [], Intent(), learned, registry)["target"] == "low_light"
    # With a single type present the prior has nothing to say.
    assert next_step(_report(noise=0.9), [], Intent(), learned, registry)["target"] == "noise"


def test_a_type_an_earlier_step_hid_is_still_planned_until_handled():
    registry, policy = fake_registry(), fake_policy()
    smoothed = _report(low_light=0.9)  # the noise no longer reads as present
    hidden = {"noise": [0.8, 0.6]}
    assert next_step(smoothed, [], Intent(), policy, registry)["target"] == "low_light"
    step = next_step(smoothed, [], Intent(), policy, registry, hidden)
    assert step["target"] == "noise" and step["attempts"][0]["tool"] == "fake_denoise"
    assert "hidden by an earlier step" in step["rationale"] and "p=0.80" in step["rationale"]
    assert next_step(smoothed, ["noise"], Intent(), policy, registry, hidden)["target"] == "low_light"
    protect = Intent(protect=[Degradation.NOISE])
    assert next_step(smoothed, [], protect, policy, registry, hidden)["target"] == "low_light"


def test_pairwise_prior_names_are_checked():
    import pytest

    from policies import PolicyError

    data = fake_policy().model_dump(mode="json")
    data["order_pairwise"] = {"low_lite": {"noise": 0.4}}
    with pytest.raises((PolicyError, ValueError), match="low_lite"):
        policy_from_mapping(data)


def test_fake_denoise_is_stronger_than_weak_denoise(tmp_path):
    # Guards the premise of the best-of-k test: the two fakes really differ in effect.
    from agent.imageio import load_image

    image = load_image(noisy_dark_image(tmp_path / "in.png")).image
    assessor = FakeAssessor()
    weak = assessor.assess(WeakDenoise()(image, {}).image).probability(Degradation.NOISE)
    strong = assessor.assess(FakeDenoise()(image, {}).image).probability(Degradation.NOISE)
    assert strong < weak


def test_exploration_margins_and_prior_from_known_runs(tmp_path):
    from agent.planning.explore_order import learn_prior, pairwise_margins, write_policy
    from policies import load_policy

    runs = [
        # Mixture 1: undoing haze before rain is 1 dB better.
        {"item": "m1", "order": ["haze", "rain"], "psnr": 21.0},
        {"item": "m1", "order": ["rain", "haze"], "psnr": 20.0},
        # Mixture 2: the same pair, 0.5 dB; a triple where noise first is worse by 2 dB.
        {"item": "m2", "order": ["haze", "rain"], "psnr": 18.5},
        {"item": "m2", "order": ["rain", "haze"], "psnr": 18.0},
        {"item": "m3", "order": ["noise", "jpeg", "low_light"], "psnr": 17.0},
        {"item": "m3", "order": ["jpeg", "noise", "low_light"], "psnr": 19.0},
    ]
    margins = pairwise_margins(runs)
    assert margins[("haze", "rain")] == [1.0, 0.5]
    assert margins[("jpeg", "noise")] == [2.0]
    # jpeg and low_light kept their relative order in every run: no evidence either way.
    assert ("jpeg", "low_light") not in margins
    prior = learn_prior(margins, min_margin=0.6)
    assert prior == {"haze": {"rain": 0.75}, "jpeg": {"noise": 2.0}}
    path = write_policy("default", prior, tmp_path / "explored.yaml", ["test header"])
    policy = load_policy(path)
    assert policy.name == "explored"
    assert policy.precedence("haze", "rain") == 0.75
    assert path.read_text().startswith("# test header")


def _classical_noise_policy(policy: Any) -> Any:
    """``policy`` with the classical denoisers alone for noise, whatever the shipped default tries first."""
    from policies.schema import Candidate

    noise = [Candidate(tool="denoise_dct", strengths=[1.0, 0.6]), Candidate(tool="denoise_nlm", strengths=[1.0])]
    return policy.model_copy(update={"candidates": {**policy.candidates, Degradation.NOISE: noise}})


def test_tool_exploration_ranks_options_per_mixture_and_writes_candidates(tmp_path):
    from agent.planning.explore_order import (
        candidate_options,
        learn_candidates,
        option_first_policy,
        option_key,
        option_scores,
        write_policy,
    )
    from policies import load_policy
    from tools import default_registry

    base, registry = _classical_noise_policy(load_policy("default")), default_registry()
    options = [option_key(o) for o in candidate_options(base, registry, Degradation.NOISE)]
    # The policy's own options first, one strength each, then the other catalogue tools for noise.
    assert options[:3] == ["denoise_dct@1", "denoise_dct@0.6", "denoise_nlm@1"]
    assert "nafnet_denoise@1" in options and "structure_correct@1" not in options
    noise_options = candidate_options(base, registry, Degradation.NOISE)
    reordered = option_first_policy(base, Degradation.NOISE, noise_options[2], noise_options)
    assert option_key(reordered.candidates[Degradation.NOISE][0]) == "denoise_nlm@1"

    runs = [
        # Mixture a: NLM 1 dB above the mean of the three options; mixture b: 2/3 dB above.
        {"item": "a", "degradation": "noise", "option": "denoise_dct@1", "psnr": 20.0},
        {"item": "a", "degradation": "noise", "option": "denoise_dct@0.6", "psnr": 19.0},
        {"item": "a", "degradation": "noise", "option": "denoise_nlm@1", "psnr": 21.0},
        {"item": "b", "degradation": "noise", "option": "denoise_dct@1", "psnr": 30.0},
        {"item": "b", "degradation": "noise", "option": "denoise_dct@0.6", "psnr": 29.0},
        {"item": "b", "degradation": "noise", "option": "denoise_nlm@1", "psnr": 30.5},
        # A lone run has nothing to be compared with.
        {"item": "c", "degradation": "haze", "option": "dehaze_dcp@1", "psnr": 25.0},
    ]
    scores = option_scores(runs)
    assert scores["noise"]["denoise_nlm@1"] == pytest.approx({"a": 1.0, "b": 2 / 3})
    assert scores["noise"]["denoise_dct@0.6"] == pytest.approx({"a": -1.0, "b": -5 / 6})
    assert "haze" not in scores
    learned = learn_candidates(base, registry, scores)
    # NLM beat the policy's first choice (DCT at full strength) by 0.75 dB on both mixtures: it goes first;
    # the rest keep the policy's order, and adjacent options of one tool merge back into one candidate.
    assert [c.tool for c in learned[Degradation.NOISE]][:3] == ["denoise_nlm", "denoise_dct", "nafnet_denoise"]
    assert learned[Degradation.NOISE][1].strengths == [1.0, 0.6]
    # A margin below min_margin leaves the policy's order alone.
    assert learn_candidates(base, registry, scores, min_margin=1.0)[Degradation.NOISE][0].tool == "denoise_dct"
    path = write_policy("default", {}, tmp_path / "explored.yaml", ["tools"], learned)
    policy = load_policy(path)
    assert policy.candidates[Degradation.NOISE][0].tool == "denoise_nlm"
    assert policy.candidates[Degradation.HAZE] == base.candidates[Degradation.HAZE]


def test_severity_banded_candidates_are_learned_and_planned():
    from agent.planning.explore_order import learn_candidates
    from agent.planning.rule_planner import expand_candidates
    from policies import load_policy
    from policies.schema import Candidate
    from tools import default_registry

    base, registry = _classical_noise_policy(load_policy("default")), default_registry()
    # The learned denoiser wins clearly on the two heavily noisy mixtures and loses a little on the light ones.
    heavy, light = {"h1": 3.0, "h2": 2.0}, {"l1": -0.2, "l2": -0.1}
    scores = {
        "noise": {
            "denoise_dct@1": {m: 0.0 for m in [*heavy, *light]},
            "nafnet_denoise@1": {**heavy, **light},
        }
    }
    severities = {"noise": {"h1": 0.8, "h2": 0.7, "l1": 0.1, "l2": 0.2}}
    plain = learn_candidates(base, registry, scores)[Degradation.NOISE]
    assert plain[0].tool == "denoise_dct"  # wins on half the mixtures only: no overall promotion
    banded = learn_candidates(base, registry, scores, severities=severities)[Degradation.NOISE]
    assert banded[0].tool == "nafnet_denoise"
    assert (banded[0].min_severity, banded[0].max_severity) == (0.45, 1.0)
    assert banded[1:] == plain

    policy = base.model_copy(update={"candidates": {**base.candidates, Degradation.NOISE: banded}})

    def planned(severity: float) -> list[str]:
        estimates = {d: DegradationEstimate(probability=0.0, severity=0.0) for d in ALL_DEGRADATIONS} | {
            Degradation.NOISE: DegradationEstimate(probability=0.9, severity=severity)
        }
        report = DegradationReport(assessor="test", estimates=estimates)
        return [a["tool"] for a in expand_candidates(policy, registry, Degradation.NOISE, report)]

    assert planned(0.8)[0] == "nafnet_denoise"
    assert planned(0.2)[0] == "denoise_dct" and "nafnet_denoise" not in planned(0.2)[:2]
    # A duplicate attempt (the same tool and parameters twice) is planned once.
    twice = [Candidate(tool="denoise_dct"), Candidate(tool="denoise_dct")]
    policy = base.model_copy(update={"candidates": {**base.candidates, Degradation.NOISE: twice}})
    assert planned(0.5) == ["denoise_dct"]
    with pytest.raises(ValueError, match="min_severity"):
        Candidate(tool="denoise_dct", min_severity=0.8, max_severity=0.2)


def _planner_context(replies: list[str]) -> RunContext:
    from agent.planning.vlm import VLMPlanner

    calls = iter(replies)
    registry = fake_registry()
    policy = fake_policy()
    planner = VLMPlanner(generate=lambda messages, image: next(calls), registry=registry, max_steps=4, policy=policy)
    return RunContext(policy=policy, registry=registry, assessor=FakeAssessor(), planner=planner)


def test_model_plan_decides_the_order_and_is_traced(tmp_path):
    import json

    plan = {
        "steps": [
            {"tool": "fake_brighten", "target": "low_light", "rationale": "too dark first"},
            {"tool": "fake_denoise", "target": "noise", "rationale": "then the noise"},
        ]
    }
    state = _run(tmp_path, _planner_context([json.dumps(plan)]))
    # The rule planner would denoise first (reverse physical order); the model asked to brighten first.
    assert state["attempts"][0]["tool"] == "fake_brighten"
    # The verifier still judges the model's steps: brightening the noisy image lowered quality, so it was
    # rolled back and the noise step of the plan came next.
    assert state["attempts"][0]["decision"] == "rollback"
    assert state["accepted"][0]["tool"] == "fake_denoise"
    record = state["planner_record"]
    assert record["fallback"] is False and "too dark first" in record["attempts"][0]["reply"]


def test_malicious_model_output_falls_back_to_the_rule_planner(tmp_path):
    bad = '{"steps": [{"tool": "rm -rf /", "target": "noise", "params": {"path": "../../etc/passwd"}}]}'
    state = _run(tmp_path, _planner_context([bad, bad]))
    assert state["planner_record"]["fallback"] is True
    assert [a["tool"] for a in state["accepted"]][0] == "fake_denoise"
    assert "rm -rf" not in str(state["accepted"]) and "passwd" not in str(state["accepted"])


def test_policy_with_a_vlm_planner_needs_a_model():
    import pytest

    data = fake_policy().model_dump(mode="json")
    data["planner"] = {"kind": "vlm"}
    with pytest.raises(ValueError, match="planner.model"):
        RunContext(policy=policy_from_mapping(data), registry=fake_registry(), assessor=FakeAssessor())


def test_best_of_k_ranks_by_the_policys_learned_score(tmp_path):
    # A learned model that prefers the step that changed the image least: the weak denoiser wins, where the
    # verifier's own score (test above) picks the strong one.
    score = {"kind": "learned", "by_target": {"noise": {"intercept": 0.0, "weights": {"change_rms": -10.0}}}}
    context = _context(
        ["fake_denoise_weak", "fake_denoise"], "fake_brighten", {"name": "best_of_k", "k": 3, "score": score}
    )
    state = _run(tmp_path, context)
    noise_records = [a for a in state["attempts"] if a.get("target") == "noise"]
    assert state["accepted"][0]["tool"] == "fake_denoise_weak"
    weak, strong = noise_records[0], noise_records[1]
    assert weak["features"]["change_rms"] < strong["features"]["change_rms"]
    assert weak["score"] == pytest.approx(-10.0 * weak["features"]["change_rms"], abs=1e-3)


def test_a_context_scorer_overrides_the_policy_score(tmp_path):
    calls = []

    def prefer_second(*, target, before_image, after_image, features, record):
        calls.append((target, record["tool"], before_image.shape == after_image.shape, sorted(features)))
        return 1.0 if record["tool"] == "fake_denoise" else 0.0

    context = _context(["fake_denoise", "fake_denoise_weak"], "fake_brighten", {"name": "best_of_k", "k": 3})
    context.step_scorer = prefer_second
    state = _run(tmp_path, context)
    assert state["accepted"][0]["tool"] == "fake_denoise"
    assert calls[0][:3] == (Degradation.NOISE, "fake_denoise", True)
    assert "change_rms" in calls[0][3]


def _candidate(item: str, step: int, order: int, target: str, gain: float, **features: float) -> dict[str, Any]:
    return {
        "item": item,
        "step": step,
        "order": order,
        "target": target,
        "tool": "t",
        "gain": gain,
        "verifier_score": features.pop("verifier_score", 0.0),
        "features": features,
    }


def test_learned_score_recovers_a_linear_gain_and_ranks_held_out_steps_better(tmp_path):
    from agent.planning.learn_score import MIN_GROUPS, cross_validate, fit_linear, fit_models, write_policy

    rng = np.random.default_rng(0)
    candidates = []
    for i in range(40):
        for order in range(3):
            change = float(rng.uniform(0.0, 0.2))
            drop = float(rng.uniform(0.0, 1.0))
            # True gain rewards the drop and punishes large changes; the "verifier" prefers large changes.
            gain = 2.0 * drop - 10.0 * change + 0.5
            candidates.append(
                _candidate(f"m{i}", 0, order, "noise", gain, change_rms=change, load_drop=drop, verifier_score=change)
            )
    model = fit_linear(candidates, ridge=1e-6)
    assert model["weights"]["change_rms"] == pytest.approx(-10.0, rel=1e-3)
    assert model["weights"]["load_drop"] == pytest.approx(2.0, rel=1e-3)
    assert model["intercept"] == pytest.approx(0.5, abs=1e-3)
    validation = cross_validate(candidates, ridge=1e-6)
    totals = validation["totals"]
    assert validation["steps"] == 40
    assert totals["learned"] == pytest.approx(totals["reference"], abs=1e-6)
    assert totals["learned"] > totals["greedy"] > totals["verifier"]
    models = fit_models(candidates, ridge=1e-6)
    assert set(models["by_target"]) == {"noise"} and 40 >= MIN_GROUPS
    # Too few steps with a choice for rain: it uses the pooled model.
    few = candidates + [_candidate("r0", 0, 0, "rain", 1.0, load_drop=1.0)]
    assert "rain" not in fit_models(few, ridge=1e-6)["by_target"]

    base = tmp_path / "base.yaml"
    base.write_text("# provenance of the base\nname: base\n")
    out = write_policy(str(base), models, 3, "a note", tmp_path / "scored.yaml", ["learned here"])
    text = out.read_text()
    assert text.startswith("# provenance of the base\n# learned here\n")
    from policies import load_policy

    policy = load_policy(out)
    assert policy.strategy.name == "best_of_k" and policy.strategy.score.kind == "learned"
    noise_model = policy.strategy.score.model_for(Degradation.NOISE)
    assert noise_model is not None
    assert noise_model.predict({"change_rms": 0.1, "load_drop": 0.5}) == pytest.approx(0.5, abs=1e-3)
    assert policy.strategy.score.model_for(Degradation.RAIN) is policy.strategy.score.fallback


def test_step_score_defaults_to_the_verifier():
    from policies.schema import StepScore

    assert StepScore().model_for(Degradation.NOISE) is None
    with pytest.raises(ValueError):
        StepScore.model_validate({"kind": "learned", "by_target": {"noise": {"weights": {}, "bias": 1.0}}})


def test_threshold_exploration_learns_decisive_thresholds_and_writes_them(tmp_path):
    from agent.planning.explore_order import learn_thresholds, threshold_margins, threshold_policy, write_policy
    from policies import load_policy

    base = load_policy("default")
    lowered = threshold_policy(base, Degradation.LOW_LIGHT, 0.2)
    assert lowered.thresholds.presence_for(Degradation.LOW_LIGHT) == 0.2
    assert base.thresholds.presence_for(Degradation.LOW_LIGHT) == base.thresholds.presence_threshold
    assert lowered.thresholds.presence_for(Degradation.HAZE) == base.thresholds.presence_for(Degradation.HAZE)

    def run(item: str, degradation: str, threshold: float | None, psnr: float) -> dict[str, Any]:
        return {"item": item, "degradation": degradation, "threshold": threshold, "psnr": psnr}

    runs = [run(f"m{i}", "policy", None, 20.0) for i in range(4)]
    # low_light at 0.2: one mixture +8 dB, one -0.3 dB, two untouched -> taken (mean +1.925, 1 of 2 changed improved).
    runs += [run("m0", "low_light", 0.2, 28.0), run("m1", "low_light", 0.2, 19.7)]
    runs += [run("m2", "low_light", 0.2, 20.0), run("m3", "low_light", 0.2, 20.0)]
    # low_light at 0.1: the same win but three losses -> refused although its mean is positive.
    runs += [run("m0", "low_light", 0.1, 28.0)] + [run(f"m{i}", "low_light", 0.1, 19.0) for i in (1, 2, 3)]
    # noise at 0.3: a tiny mean gain -> refused.
    runs += [run(f"m{i}", "noise", 0.3, 20.02) for i in range(4)]
    margins = threshold_margins(runs)
    assert margins["low_light"][0.2] == {"m0": 8.0, "m1": pytest.approx(-0.3), "m2": 0.0, "m3": 0.0}
    assert learn_thresholds(margins, min_margin=0.05, min_improved=1) == {"low_light": 0.2}
    assert learn_thresholds(margins, min_margin=0.05) == {}  # by default one improved mixture is not enough
    path = write_policy("default", {}, tmp_path / "explored.yaml", ["header"], thresholds={"low_light": 0.2})
    policy = load_policy(path)
    assert policy.thresholds.presence_for(Degradation.LOW_LIGHT) == 0.2
    assert policy.thresholds.presence_for(Degradation.HAZE) == base.thresholds.presence_for(Degradation.HAZE)


def test_tolerance_exploration_counts_untouched_mixtures_as_unchanged_and_writes_the_tolerance(tmp_path):
    from agent.planning.explore_order import learn_thresholds, tolerance_margins, tolerance_policy, write_policy
    from policies import load_policy

    base = load_policy("default")
    relaxed = tolerance_policy(base, Degradation.HAZE, 0.1)
    assert relaxed.thresholds.iqa_tolerance_by_target[Degradation.HAZE] == 0.1
    assert base.thresholds.iqa_tolerance_by_target[Degradation.HAZE] == 0.02
    assert relaxed.thresholds.iqa_tolerance_by_target[Degradation.NOISE] == 0.35

    def run(item: str, degradation: str, tolerance: float | None, psnr: float) -> dict[str, Any]:
        return {"item": item, "degradation": degradation, "tolerance": tolerance, "psnr": psnr}

    # Only m0 and m1 attempted a dehazing step, so only they were rerun with other haze tolerances.
    runs = [run(f"m{i}", "policy", None, 20.0) for i in range(4)]
    runs += [run("m0", "haze", 0.1, 24.0), run("m1", "haze", 0.1, 19.9)]
    runs += [run("m0", "haze", 0.35, 24.0), run("m1", "haze", 0.35, 15.0)]
    margins = tolerance_margins(runs)
    assert margins["haze"][0.1] == {"m0": 4.0, "m1": pytest.approx(-0.1), "m2": 0.0, "m3": 0.0}
    assert learn_thresholds(margins, min_margin=0.05, min_improved=1) == {"haze": 0.1}  # 0.35: mean -0.25 dB
    path = write_policy("default", {}, tmp_path / "explored.yaml", ["header"], tolerances={"haze": 0.1})
    policy = load_policy(path)
    assert policy.thresholds.iqa_tolerance_by_target[Degradation.HAZE] == 0.1
    assert policy.thresholds.iqa_tolerance_by_target[Degradation.NOISE] == 0.35
    assert "NR-IQA tolerances" in policy.description


def test_parallel_exploration_keeps_the_job_order(monkeypatch):
    from agent.planning import explore_order

    def fake_restore(jobs, desc):
        return [({"index": job[0], "key": job[2]}, None) for job in jobs]

    monkeypatch.setattr(explore_order, "_restore_jobs", fake_restore)
    jobs = [(i, {}, ("k", i % 3), None) for i in range(7)]
    results = explore_order._restore_jobs_parallel(jobs, "test", workers=2)
    assert [record["index"] for record, _ in results] == list(range(7))
    assert explore_order._restore_jobs_parallel(jobs, "test", workers=1) == results


def test_headroom_is_the_hindsight_best_explored_run_over_the_policys_own(tmp_path, capsys):
    from agent.planning import explore_order

    prior = ["noise", "haze"]
    record = {
        "settings": {"policy": "default"},
        "runs": [  # mixture m1: the reverse order wins by 0.4 dB; m2: the policy's order is best
            {"item": "m1", "order": ["noise", "haze"], "psnr": 20.0},
            {"item": "m1", "order": ["haze", "noise"], "psnr": 20.4},
            {"item": "m2", "order": ["noise", "haze"], "psnr": 25.0},
            {"item": "m2", "order": ["haze", "noise"], "psnr": 24.0},
        ],
        "threshold_runs": [
            {"item": "m1", "threshold": None, "degradation": "policy", "psnr": 20.1},
            {"item": "m2", "threshold": None, "degradation": "policy", "psnr": 25.0},
            {"item": "m1", "threshold": 0.2, "degradation": "haze", "psnr": 19.0},
            {"item": "m2", "threshold": 0.2, "degradation": "haze", "psnr": 26.0},
        ],
    }
    result = explore_order.headroom(record, prior)
    assert result["orders"]["n"] == 2
    assert abs(result["orders"]["mean"] - 0.2) < 1e-9  # (0.4 + 0) / 2, against the runs in the policy's order
    assert result["orders"]["above_0.05"] == 1 and result["orders"]["above_0.5"] == 0
    assert abs(result["thresholds"]["mean"] - 0.5) < 1e-9  # m1 keeps the policy's 20.1, m2 gains 1.0
    # all phases: m1's best is 20.4 (+0.3 over its own 20.1), m2's 26.0 (+1.0)
    assert abs(result["all"]["mean"] - 0.65) < 1e-9 and result["all"]["above_0.5"] == 1
    assert "tools" not in result

    runs = tmp_path / "exploration.json"
    runs.write_text(json.dumps(record))
    assert explore_order.main(["--headroom", "--runs", str(runs), "--shared", str(tmp_path / "absent")]) == 0
    out = capsys.readouterr().out
    assert "orders" in out and "+0.200 dB mean" in out
    assert explore_order.main(["--headroom", "--runs", str(tmp_path / "missing.json")]) == 2


def test_exploration_time_budget_override_reaches_every_run(monkeypatch):
    from agent.planning import explore_order
    from policies import load_policy

    seen = []

    class RecordingContext:
        def __init__(self, policy):
            seen.append(policy.budgets.time_budget_s)
            raise RuntimeError("recorded")

    monkeypatch.setattr("agent.context.RunContext", RecordingContext)
    monkeypatch.setattr(explore_order, "TIME_BUDGET_OVERRIDE", 7.5)
    default = load_policy("default")
    with pytest.raises(RuntimeError, match="recorded"):
        explore_order._restore_jobs([(0, {}, "k", lambda: default)], "test")
    assert seen == [7.5] and default.budgets.time_budget_s != 7.5  # the loaded policy itself is untouched
    assert explore_order.with_time_budget(default, None) is default
    assert explore_order.main(["--time-budget", "0"]) == 2


def test_threshold_exploration_reruns_only_mixtures_whose_probabilities_lie_between_the_thresholds(monkeypatch):
    from agent.planning import explore_order

    trace = {
        "input_report": {"estimates": {"haze": {"probability": 0.25123}, "rain": {"probability": 0.9}}},
        "attempts": [{"report_after": {"haze": [0.05, 0.1], "rain": [0.4, 0.2]}}, {"decision": "stop"}],
        "final_report": {"estimates": {"haze": {"probability": 0.05}, "rain": {"probability": 0.4}}},
    }
    assert explore_order.observed_probabilities(trace) == {"haze": [0.05, 0.251], "rain": [0.4, 0.9]}
    assert explore_order.threshold_matters([0.05, 0.251], 0.3, 0.2)  # 0.251 is present at 0.2, absent at 0.3
    assert not explore_order.threshold_matters([0.05, 0.251], 0.3, 0.4)  # absent at both
    assert explore_order.threshold_matters([0.4], 0.35, 0.3995)  # within the rounding margin: rerun
    assert explore_order.threshold_matters(None, 0.3, 0.4)  # unknown: rerun

    items = [{"name": f"m{i}"} for i in range(3)]
    seen = {0: {"haze": [0.25]}, 1: {"haze": [0.9]}, 2: {}}  # only m0 saw haze between the default 0.2 and 0.3
    monkeypatch.setattr("evals.bench_agent.build_set", lambda *args, **kwargs: items)

    def fake_parallel(jobs, desc, workers):
        return [({"item": f"m{job[0]}", "psnr": 20.0, "probabilities": seen[job[0]]}, None) for job in jobs]

    monkeypatch.setattr(explore_order, "_restore_jobs_parallel", fake_parallel)
    runs = explore_order.explore_thresholds(None, "default", 1, 0, grid=(0.3,))
    reruns = [(r["item"], r["degradation"]) for r in runs if r["threshold"] is not None]
    assert reruns == [("m0", "haze")]  # no other mixture or degradation saw a probability near 0.3
    margins = explore_order.threshold_margins(runs)
    assert margins["haze"][0.3] == {"m0": 0.0, "m1": 0.0, "m2": 0.0}  # those not rerun count as unchanged


def test_tolerance_exploration_reruns_only_mixtures_that_attempted_the_target(monkeypatch):
    from agent.planning import explore_order

    items = [{"name": f"m{i}"} for i in range(3)]
    attempted = {0: ["haze"], 1: ["noise"], 2: []}
    monkeypatch.setattr("evals.bench_agent.build_set", lambda *args, **kwargs: items)

    def fake_parallel(jobs, desc, workers):
        return [({"item": f"m{job[0]}", "psnr": 20.0, "attempted": attempted[job[0]]}, None) for job in jobs]

    monkeypatch.setattr(explore_order, "_restore_jobs_parallel", fake_parallel)
    runs = explore_order.explore_tolerances(None, "default", 1, 0, grid=(0.1,))
    assert sum(r["tolerance"] is None for r in runs) == 3  # the policy's own run of every mixture
    assert sorted((r["item"], r["degradation"]) for r in runs if r["tolerance"] is not None) == [
        ("m0", "haze"),
        ("m1", "noise"),
    ]
