"""Request understanding: the paraphrase set, numbers, protect/skip, follow-ups, clarifications."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from agent.degradations import ALL_DEGRADATIONS, Degradation
from agent.planning import request as request_module
from agent.planning.request import Edit, Intent, evaluate, parse_request, tool_params
from agent.planning.rule_planner import Intent as PlannerIntent
from agent.planning.rule_planner import parse_request as planner_parse_request

PARAPHRASES = Path(__file__).parent / "data" / "paraphrases.yaml"
N, D, M, L, J, H = (
    Degradation.NOISE,
    Degradation.DEFOCUS_BLUR,
    Degradation.MOTION_BLUR,
    Degradation.LOW_RESOLUTION,
    Degradation.JPEG,
    Degradation.HAZE,
)


def parse(text: str, previous: Intent | None = None) -> Intent:
    intent = parse_request(text, previous)
    assert intent.text == text
    return intent


# ----------------------------------------------------------------------------------- the paraphrase set


def test_paraphrase_set_is_large_and_covers_every_degradation() -> None:
    cases = yaml.safe_load(PARAPHRASES.read_text())["cases"]
    assert len(cases) >= 220
    categories = Counter(c["cat"] for c in cases)
    for needed in [d.value for d in ALL_DEGRADATIONS] + [
        "underwater", "numbers", "protect", "skip", "strength", "semantic", "preference", "followup", "clarification"
    ]:  # fmt: skip
        assert categories[needed] >= 5, needed
    texts = [c["text"] for c in cases if "previous" not in c]
    assert len(texts) == len(set(texts)), "duplicate requests in the paraphrase set"


def test_paraphrase_accuracy_is_at_least_95_percent() -> None:
    result = evaluate(PARAPHRASES)
    failures = "\n".join(f"{f['text']!r}: {f['diff']}" for f in result.failures[:10])
    assert result.accuracy >= 0.95, f"accuracy {result.accuracy:.1%}; first failures:\n{failures}"
    assert result.by_split["heldout"][1] >= 50


def test_evaluation_counts_a_wrong_expectation_as_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "set.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "cases": [
                    {"cat": "noise", "text": "remove the noise", "expect": {"only": ["noise"]}},
                    {"cat": "noise", "text": "remove the noise", "expect": {"only": ["haze"]}},
                ]
            }
        )
    )
    result = evaluate(path)
    assert (result.correct, result.total) == (1, 2)
    assert result.failures[0]["diff"] == {"only": {"got": ["noise"], "want": ["haze"]}}


def test_eval_command_prints_accuracy_and_categories(capsys: pytest.CaptureFixture[str]) -> None:
    assert request_module.main(["--eval", str(PARAPHRASES)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("exact-intent accuracy:")
    assert "followup" in out and "clarification" in out


# -------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "degradation", "params"),
    [
        ("denoise with sigma 0.06", N, {"sigma": 0.06}),
        ("denoise with sigma 15", N, {"sigma": 0.0588}),  # >= 1: out of 255
        ("remove noise, sigma 10/255", N, {"sigma": 0.0392}),
        ("deblur with sigma 2", D, {"sigma": 2.0}),
        ("motion blur 20 px long at 45 degrees", M, {"length": 20.0, "angle": 45.0}),
        ("upscale to 4x", L, {"scale": 4.0}),
        ("make it three times bigger", L, {"scale": 3.0}),
        ("jpeg quality 30", J, {"quality": 30.0}),
    ],
)
def test_spire_numbers(text: str, degradation: Degradation, params: dict[str, float]) -> None:
    intent = parse(text)
    assert intent.params == {degradation: params}
    assert intent.only == [degradation]
    assert not intent.needs_clarification


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("noise sigma 200", "out_of_range"),
        ("upscale 16x", "out_of_range"),
        ("jpeg quality 0", "out_of_range"),
        ("sigma 0.06", "ambiguous"),
        ("upscale 2x and 4x", "ambiguous"),
    ],
)
def test_bad_numbers_ask_instead_of_guessing(text: str, reason: str) -> None:
    intent = parse(text)
    assert intent.clarification is not None and intent.clarification.reason == reason
    assert intent.clarification.question
    assert intent.only is None and intent.params == {}


def test_strength_words_and_percentages() -> None:
    assert parse("denoise slightly").strengths == {N: 0.3}
    assert parse("dehaze a tiny bit").strengths == {H: 0.15}
    assert parse("denoise at 70% strength").strengths == {N: 0.7}
    assert parse("denoise strongly and deblur gently").strengths == {N: 0.8, D: 0.3}
    general = parse("clean it up a little")
    assert general.strength == 0.3 and general.strengths == {} and general.blind


# -------------------------------------------------------------------------------- fix, protect, skip


def test_protect_and_skip_are_different() -> None:
    keep = parse("remove the haze but keep the grain")
    assert (keep.only, keep.protect, keep.skip) == ([H], [N], [])
    decline = parse("remove the haze, don't denoise")
    assert (decline.only, decline.protect, decline.skip) == ([H], [], [N])
    assert not decline.allows(N) and decline.allows(H) and not decline.allows(D)


def test_blind_request_and_all_of_one_kind() -> None:
    assert parse("remove all degradation").blind
    assert parse("remove all degradation").only is None
    one = parse("remove all the noise")
    assert not one.blind and one.only == [N]
    assert parse("fix everything except the bokeh").protect == [D]


def test_semantic_content_and_preference() -> None:
    intent = parse("upscale 2x, this is a panda, keep it faithful")
    assert intent.semantic == "panda"
    assert intent.preference == "fidelity"
    assert parse("make it look nice").preference == "perception"


def test_typos_and_british_spelling() -> None:
    assert parse("remvoe the nosie").only == [N]
    assert parse("neutralise the colour cast").only == [Degradation.COLOR_CAST]
    assert parse("dehaze").only == [H]
    assert parse("the train is blurry").only == [D]  # "train" is a word, not a typo of "grain"


# ------------------------------------------------------------------------------------------ follow-ups


def test_follow_ups_edit_the_previous_intent() -> None:
    first = parse("denoise and dehaze, keep the colours")
    assert first.only == [N, H]

    less = parse("a bit less denoising", first)
    assert less.edits == [Edit(action="less", target=N, amount=0.3)]
    assert (less.only, less.protect) == (first.only, first.protect)

    skip = parse("skip the dehazing", less)
    assert skip.only == [N] and skip.skip == [H]
    assert skip.edits == [Edit(action="skip", target=H)]

    undo = parse("undo the last step", skip)
    assert undo.edits == [Edit(action="undo")] and undo.only == [N]

    added = parse("also upscale 2x", undo)
    assert added.only == [N, L] and added.params == {L: {"scale": 2.0}} and added.edits == []

    export = parse("looks good, export it to ~/out/final.png", added)
    assert export.edits == [Edit(action="export", path="~/out/final.png")]


def test_comparatives_are_more_of_a_step_only_after_that_step() -> None:
    assert parse("make it brighter").only == [Degradation.LOW_LIGHT]
    after = parse("make it brighter", Intent(only=[Degradation.LOW_LIGHT]))
    assert after.edits == [Edit(action="more", target=Degradation.LOW_LIGHT)]
    assert parse("still too noisy").edits == [Edit(action="more", target=N)]
    assert parse("too smooth, bring back some grain", Intent(only=[N])).edits == [Edit(action="less", target=N)]


def test_clarification_keeps_the_previous_intent_unchanged() -> None:
    previous = Intent(only=[N], strengths={N: 0.3})
    intent = parse("remove the watermark too", previous)
    assert intent.clarification is not None and intent.clarification.reason == "unsupported"
    assert "watermark" in intent.clarification.question
    assert intent.only == [N] and intent.strengths == {N: 0.3} and intent.edits == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("remove the noise but keep the noise", "contradiction"),
        ("I want it both faithful and great looking", "contradiction"),
        ("crop the left side", "unsupported"),
        ("make it darker", "unsupported"),
        ("qwertyuiop", "unknown"),
        ("x" * 3000, "unknown"),
    ],
)
def test_clarifications(text: str, reason: str) -> None:
    intent = parse(text)
    assert intent.clarification is not None and intent.clarification.reason == reason


# ----------------------------------------------------------------------------- compatibility and tools


def test_intent_round_trips_and_reads_v0_dicts() -> None:
    intent = parse("brighten a little, denoise with sigma 0.06, keep the bokeh")
    data = intent.to_dict()
    assert {"only", "protect", "text"} <= set(data)
    assert data["only"] == ["noise", "low_light"] and data["params"] == {"noise": {"sigma": 0.06}}
    assert Intent.from_dict(data) == intent
    v0 = Intent.from_dict({"only": ["haze"], "protect": ["noise"], "text": "remove the haze, keep the grain"})
    assert v0.only == [H] and v0.protect == [N] and v0.skip == [] and v0.edits == []
    assert Intent.from_dict(None) == Intent() == parse_request(None)
    assert parse_request("   ").comparable() == Intent().comparable()


def test_rule_planner_delegates_to_the_parser() -> None:
    assert PlannerIntent is Intent
    assert planner_parse_request("remove the haze but keep the grain") == parse_request(
        "remove the haze but keep the grain"
    )
    previous = planner_parse_request("denoise")
    assert planner_parse_request("less", previous).edits == [Edit(action="less")]


def test_tool_params_map_the_request_onto_declared_parameters() -> None:
    from tools import default_registry

    registry = default_registry()
    deblur = registry.get("deblur_wiener").spec
    intent = parse("deblur with sigma 2 at 50% strength")
    assert tool_params(intent, D, deblur) == {"strength": 0.5, "kind": "gaussian", "radius": 2.0}
    intent = parse("denoise with sigma 15, upscale 2x")
    assert tool_params(intent, N, registry.get("denoise_dct").spec) == {"sigma": 0.0588}
    assert tool_params(intent, L, registry.get("upscale_detail").spec) == {"factor": 2.0}
    too_big = parse("upscale 6x")  # valid for the request, beyond this tool's range: left to the tool
    assert tool_params(too_big, L, registry.get("upscale_detail").spec) == {}
