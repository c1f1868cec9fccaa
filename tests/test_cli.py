"""The ``restora`` command line on real tools: batches, bad input, exit codes, traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from agent.imageio import file_sha256, save_image
from agent.runner import output_names
from evals.synthesis import procedural_image, synthesize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def noisy_png(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    clean = procedural_image(160, 160, seed=3)
    noisy = synthesize(clean, ["noise"], seed=1, severity=0.6).image
    return save_image(noisy, folder / "noisy.png")


def test_tools_lists_the_catalogue(capsys):
    assert main(["tools"]) == EXIT_OK
    out = capsys.readouterr().out
    for name in ("denoise_nlm", "deblock_jpeg", "dehaze_dcp", "lowlight_retinex", "deblur_wiener"):
        assert name in out
    assert main(["tools", "--json"]) == EXIT_OK
    specs = json.loads(capsys.readouterr().out)
    assert all(s["restores"] for s in specs)


def test_tools_says_which_cannot_run_here_and_how_to_fix_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESTORA_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.delenv("RESTORA_DIFFUSION_MODEL", raising=False)
    assert main(["tools"]) == EXIT_OK
    out = capsys.readouterr().out
    entry = out[out.index("nafnet_derain") :].split("\n\n")[0]
    assert "NOT AVAILABLE HERE: no trained weights" in entry and "tools.learned.train --task derain" in entry
    assert main(["tools", "--json"]) == EXIT_OK
    missing = {s["name"]: s["missing"] for s in json.loads(capsys.readouterr().out)}
    assert missing["dehaze_dcp"] is None and "RESTORA_DIFFUSION_MODEL" in missing["diffusion_restore"]
    assert "task derain" in missing["nafnet_derain"]


def test_batch_goes_on_past_bad_files_and_lists_them(tmp_path, noisy_png, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / "good.png"
    good.write_bytes(noisy_png.read_bytes())
    (inputs / "notes.png").write_text("this is not an image")
    truncated = inputs / "cut.png"
    truncated.write_bytes(noisy_png.read_bytes()[:300])
    (inputs / "empty.jpg").write_bytes(b"")
    hashes = {p: file_sha256(p) for p in inputs.iterdir()}
    code = main(["run", str(inputs), "-o", str(tmp_path / "out"), "--policy", "fast", "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_SOME_FAILED
    for bad in ("notes.png", "cut.png", "empty.jpg"):
        assert bad in err
    assert (tmp_path / "out" / "good.png").is_file()
    assert (tmp_path / "out" / "good.restora" / "trace.json").is_file()
    assert {p: file_sha256(p) for p in inputs.iterdir()} == hashes, "inputs must never change"
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob(".*"))


def test_run_then_trace_then_resume(tmp_path, noisy_png, capsys):
    out = tmp_path / "out"
    assert main(["run", str(noisy_png), "-o", str(out), "-q"]) == EXIT_OK
    trace_before = (out / "noisy.restora" / "trace.json").read_text()
    assert main(["trace", str(out / "noisy.restora")]) == EXIT_OK
    table = capsys.readouterr().out
    assert "result:" in table and "noise" in table
    # Resuming a finished run does not recompute it: the steps are the same.
    assert main(["run", str(noisy_png), "-o", str(out), "-q", "--resume"]) == EXIT_OK
    after = json.loads((out / "noisy.restora" / "trace.json").read_text())
    assert after["attempts"] == json.loads(trace_before)["attempts"]


def test_usage_errors_exit_2(tmp_path, noisy_png, capsys):
    assert main(["run", str(noisy_png), "-o", str(tmp_path), "--policy", "no_such_policy"]) == EXIT_USAGE
    assert "unknown policy" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.png"), "-o", str(tmp_path)]) == EXIT_USAGE
    assert main(["trace", str(tmp_path)]) == EXIT_USAGE


def test_output_names_do_not_collide():
    names = output_names([Path("a/x.jpg"), Path("b/x.png"), Path("c/y.png")])
    assert len(set(names.values())) == 3 and names[Path("c/y.png")] == "y"


def test_clean_image_comes_back_unchanged(tmp_path):
    clean = procedural_image(160, 160, seed=5)
    path = save_image(clean, tmp_path / "clean.png")
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "-q"]) == EXIT_OK
    trace = json.loads((tmp_path / "out" / "clean.restora" / "trace.json").read_text())
    from agent.imageio import load_image

    out = load_image(tmp_path / "out" / "clean.png").image
    if trace["final"]["kept"] == "input":
        np.testing.assert_allclose(out, load_image(path).image, atol=1 / 255)
    else:  # if the agent changed it, it must have stayed very close
        assert float(np.abs(out - load_image(path).image).mean()) < 0.02


def test_langgraph_json_points_at_the_graph():
    config = json.loads((REPO / "langgraph.json").read_text())
    module_path, attr = config["graphs"]["restora"].split(":")
    assert (REPO / module_path).is_file() and attr == "graph"
