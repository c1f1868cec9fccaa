"""The agent loop on fake tools and a fake assessor: routing, rollback, traces, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent.context import RunContext
from agent.degradations import Degradation
from agent.graph import build_graph, graph
from agent.imageio import file_sha256, load_image, save_image
from agent.report import DegradationEstimate, DegradationReport
from agent.runner import restore_image
from agent.trace import format_table, load_trace
from policies import policy_from_mapping
from tests.fakes import (
    FakeAssessor,
    FakeDenoise,
    fake_context,
    fake_policy,
    fake_registry,
    high_pass_std,
    noisy_dark_image,
)
from tools.base import STRENGTH, ToolSpec

REPO = Path(__file__).resolve().parents[1]


def test_module_graph_compiles_and_has_the_loop():
    nodes = set(graph.get_graph().nodes)
    assert {"ingest", "perceive", "plan", "act", "verify", "finish"} <= nodes


def test_graph_runs_with_in_memory_checkpointer(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    compiled = build_graph().compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    state = compiled.invoke(
        {"input_path": str(image), "run_dir": str(tmp_path / "run")}, config, context=fake_context()
    )
    assert state["status"] == "done"
    assert [a["tool"] for a in state["accepted"]] == ["fake_denoise", "fake_brighten"]


def test_run_accepts_good_steps_and_writes_trace(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    before = file_sha256(image)
    result = restore_image(image, tmp_path / "run", fake_context(), output_path=tmp_path / "out.png")
    assert file_sha256(image) == before, "the input must never be modified"
    assert result.kept == "output"
    assert result.output_path == tmp_path / "out.png"
    out = load_image(result.output_path).image
    src = load_image(image).image
    assert out.mean() > src.mean() + 0.1  # brightened
    trace = load_trace(tmp_path / "run")
    assert trace["schema_version"] == 1
    assert [a["decision"] for a in trace["attempts"]] == ["accept", "accept"]
    assert (tmp_path / "run" / "report.html").read_text().count("<img") >= 3
    table = format_table(trace)
    assert "fake_denoise" in table and "accept" in table


def test_spent_time_budget_stops_the_run_and_says_why(tmp_path):
    ctx = fake_context()
    budgets = ctx.policy.budgets.model_copy(update={"time_budget_s": 1e-9})  # perception alone spends it
    ctx.policy = ctx.policy.model_copy(update={"budgets": budgets})
    result = restore_image(noisy_dark_image(tmp_path / "in.png"), tmp_path / "run", ctx)
    stop = load_trace(tmp_path / "run")["attempts"][-1]
    assert stop["decision"] == "stop" and stop["stopped_by"] == "time_budget"
    assert result.kept == "input"


def test_failing_and_harmful_tools_are_retried_then_the_good_one_kept(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    ctx = fake_context(noise_candidates=["fake_fail", "fake_invert", "fake_denoise"])
    result = restore_image(image, tmp_path / "run", ctx)
    noise_attempts = [a for a in result.trace["attempts"] if a.get("target") == "noise"]
    assert [a["tool"] for a in noise_attempts] == ["fake_fail", "fake_invert", "fake_denoise"]
    assert noise_attempts[0]["reason"].startswith("tool failed")
    assert "fidelity" in noise_attempts[1]["reason"]
    assert noise_attempts[2]["decision"] == "accept"


def test_step_rolled_back_when_no_candidate_works(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    ctx = fake_context(noise_candidates=["fake_invert"])
    result = restore_image(image, tmp_path / "run", ctx)
    noise = [a for a in result.trace["attempts"] if a.get("target") == "noise"]
    assert noise[-1]["decision"] == "rollback"
    assert all(s["tool"] != "fake_invert" for s in result.trace["accepted"])


def test_clean_image_is_left_alone(tmp_path):
    from agent.imageio import save_image

    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32) / 96
    clean = np.stack([0.4 + 0.2 * xx, 0.5 + 0.1 * yy, 0.45 + 0 * xx], axis=2).astype(np.float32)
    path = save_image(clean, tmp_path / "clean.png")
    result = restore_image(path, tmp_path / "run", fake_context())
    assert result.kept == "input"
    assert result.trace["attempts"] == []
    np.testing.assert_allclose(load_image(result.output_path).image, load_image(path).image, atol=1 / 255)


def test_interrupted_run_resumes_to_the_same_output(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    full = restore_image(image, tmp_path / "full", fake_context())
    partial = restore_image(image, tmp_path / "part", fake_context(), interrupt_after=["verify"])
    assert partial.kept is None and partial.trace["status"] == "interrupted"
    resumed = restore_image(image, tmp_path / "part", fake_context(), resume=True)
    assert resumed.kept == full.kept
    assert file_sha256(resumed.output_path) == file_sha256(full.output_path)
    assert [a["tool"] for a in resumed.trace["attempts"]] == [a["tool"] for a in full.trace["attempts"]]


def test_killed_process_resumes_to_the_same_output(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    full = restore_image(image, tmp_path / "full", fake_context())
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes",
            str(image),
            str(tmp_path / "killed"),
            str(tmp_path / "k.png"),
            str(calls),
        ],
        cwd=REPO,
        env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (calls.exists() and calls.read_text().count("call") >= 1):
        if proc.poll() is not None:
            pytest.fail("the agent process ended before it could be killed")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k.png").exists(), "killed before finishing"
    resumed = restore_image(image, tmp_path / "killed", fake_context(), resume=True, output_path=tmp_path / "k.png")
    assert file_sha256(resumed.output_path) == file_sha256(full.output_path)
    assert json.loads((tmp_path / "killed" / "trace.json").read_text())["status"] == "done"


def test_resume_with_an_unusable_checkpoint_starts_again(tmp_path):
    image = noisy_dark_image(tmp_path / "in.png")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints.sqlite").write_bytes(b"not a database")
    result = restore_image(image, run_dir, fake_context(), resume=True)
    assert result.kept == "output" and result.output_path is not None


class _BlockyNoiseAssessor(FakeAssessor):
    """The fake assessor, plus JPEG blocks read off the same fine-scale energy (gone once smoothed), and haze
    read into an image smoothed twice."""

    def assess(self, image: np.ndarray) -> DegradationReport:
        report = super().assess(image)
        detail = high_pass_std(image)
        blocks = float(np.clip((detail - 0.01) / 0.01, 0.0, 1.0))
        report.estimates[Degradation.JPEG] = DegradationEstimate(probability=blocks, severity=blocks)
        haze = 0.3 if detail < 0.005 else 0.0
        report.estimates[Degradation.HAZE] = DegradationEstimate(probability=haze, severity=haze)
        return report


class _FakeDeblock(FakeDenoise):
    """Smoothing as a JPEG step: it takes the noise below the assessor's notice along with the blocks."""

    spec = ToolSpec("fake_deblock", "gaussian smoothing", (Degradation.JPEG,), (STRENGTH,), family="test")


def test_noise_a_jpeg_step_hid_is_still_restored(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32) / 96
    base = 0.45 + 0.2 * np.sin(6 * xx) * np.cos(4 * yy)
    noisy = np.clip(np.repeat(base[..., None], 3, axis=2) + rng.normal(0, 0.06, (96, 96, 3)), 0, 1)
    image = save_image(noisy.astype(np.float32), tmp_path / "in.png")
    registry = fake_registry()
    registry.add_instance(_FakeDeblock())
    data = fake_policy().model_dump(mode="json")
    data["candidates"]["jpeg"] = [{"tool": "fake_deblock", "strengths": [1.0]}]
    data["thresholds"]["iqa_tolerance_by_target"]["noise"] = 1.0  # PIQE dislikes smoothing a smoothed image
    context = RunContext(policy=policy_from_mapping(data), registry=registry, assessor=_BlockyNoiseAssessor())
    result = restore_image(image, tmp_path / "run", context)
    jpeg_step, noise_step = result.trace["accepted"]
    assert jpeg_step["tool"] == "fake_deblock" and jpeg_step["report_after"]["noise"][0] < 0.5
    assert jpeg_step["checks"]["hidden"]["noise"][0] >= 0.5
    assert noise_step["tool"] == "fake_denoise" and noise_step["target"] == "noise"
    assert noise_step["checks"]["target_probability_drop"] >= 0.5  # from where the noise was last seen
    # The haze read into the twice-smoothed image is the look of the smoothing: not planned.
    assert noise_step["checks"]["unfounded"] == {"haze": 0.3}
    assert all(a.get("target") != "haze" for a in result.trace["attempts"])
    assert result.kept == "output"
