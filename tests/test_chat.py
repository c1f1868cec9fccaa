"""A scripted chat session over fake tools: fix, adjust strength, protect, undo, export, clarify."""

from __future__ import annotations

import numpy as np
import pytest

from agent.chat import ChatSession, cmd_chat
from agent.imageio import file_sha256, load_image
from tests.fakes import fake_context, noisy_dark_image


def test_five_turn_conversation_edits_the_run_instead_of_restarting(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    digest = file_sha256(image)
    with ChatSession(image, tmp_path / "session", fake_context()) as chat:
        first = chat.send("remove the noise and brighten it")
        assert first.action == "run"
        assert first.plan == ["noise:fake_denoise@1", "low_light:fake_brighten@1"]
        assert first.kept == "output" and first.output is not None
        bright = load_image(first.output).image

        second = chat.send("less denoising")
        assert second.action == "less"
        assert second.plan[0].startswith("noise:fake_denoise@0.5")
        assert second.plan[1] == "low_light:fake_brighten@1"

        third = chat.send("actually keep it dark")
        assert third.action == "skip"
        assert [p.split(":")[0] for p in third.plan] == ["noise"]
        dark = load_image(third.output).image
        assert dark.mean() < bright.mean() - 0.1

        fourth = chat.send("undo the last step")
        assert fourth.action == "undo"
        assert fourth.plan == []
        assert fourth.kept == "input"

        fifth = chat.send("save it as final.png")
        assert fifth.action == "export"
        saved = load_image(fifth.output).image
        assert np.allclose(saved, load_image(image).image, atol=1 / 255)
        with pytest.raises(FileExistsError):
            chat.send("save it as final.png")
    assert file_sha256(image) == digest, "the input must never be modified"


def test_unclear_request_gets_a_question_and_runs_nothing(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    with ChatSession(image, tmp_path / "session", fake_context()) as chat:
        turn = chat.send("remove the noise but keep the noise")
        assert turn.question
        assert turn.output is None and chat.result is None


def test_approve_mode_can_decline_and_edit_steps(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    seen = []

    def approve(attempt):
        seen.append(attempt["tool"])
        if attempt["tool"] == "fake_brighten":
            return False  # decline the brightening
        return {"strength": 0.5}

    with ChatSession(image, tmp_path / "session", fake_context(), approve=approve) as chat:
        turn = chat.send("fix everything")
    assert seen == ["fake_denoise", "fake_brighten"]
    assert turn.plan == ["noise:fake_denoise@0.5"]


def test_terminal_chat_reads_turns_until_quit(tmp_path, capsys):
    import argparse

    image = noisy_dark_image(tmp_path / "in.png")
    lines = iter(["remove the noise", "quit"])
    args = argparse.Namespace(image=str(image), policy="default", workdir=str(tmp_path / "s"), approve=False)
    assert cmd_chat(args, read=lambda prompt: next(lines)) == 0
    out = capsys.readouterr().out
    assert "understood: fix noise" in out and "result:" in out


def test_run_refuses_an_unclear_request_before_touching_anything(tmp_path, capsys):
    from agent.cli import main

    image = noisy_dark_image(tmp_path / "in.png")
    code = main(["run", str(image), "-o", str(tmp_path / "out"), "--request", "remove the noise but keep the noise"])
    assert code == 2
    assert "unclear" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_graph_stops_on_an_unclear_request_and_returns_the_input(tmp_path):
    from agent.runner import restore_image

    image = noisy_dark_image(tmp_path / "in.png")
    result = restore_image(image, tmp_path / "run", fake_context(), request="remove the noise but keep the noise")
    assert result.kept == "input"
    assert any("request unclear" in a.get("reason", "") for a in result.trace["attempts"])


def test_numbers_in_a_request_reach_the_tool(tmp_path):
    from agent.planning.rule_planner import expand_candidates, parse_request
    from policies import load_policy
    from tests.test_strategies import _report
    from tools import default_registry

    intent = parse_request("denoise with sigma 0.06, gently")
    attempts = expand_candidates(load_policy("default"), default_registry(), intent.only[0], _report(noise=0.9), intent)
    first = attempts[0]
    assert first["tool"] == "denoise_dct"
    assert first["params"]["sigma"] == pytest.approx(0.06)
    wanted = intent.strengths.get(intent.only[0], intent.strength)
    assert wanted is not None and wanted < 1.0
    assert first["params"]["strength"] == pytest.approx(wanted)
    assert all(a["params"]["strength"] == first["params"]["strength"] for a in attempts if "strength" in a["params"])
    # The tools that take the user's sigma come before those that would ignore it (the policy's first, learned
    # denoiser reads the noise level off the image itself).
    takes_sigma = ["sigma" in a["params"] for a in attempts]
    assert takes_sigma == sorted(takes_sigma, reverse=True) and not all(takes_sigma)
    plain = expand_candidates(load_policy("default"), default_registry(), intent.only[0], _report(noise=0.9))
    assert plain[0]["tool"] == "nafnet_denoise"
