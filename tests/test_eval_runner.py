"""The eval runner end to end: the smoke suite, resume, the Ray executor, reports and run comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evals.cli import main as eval_main
from evals.report import compare_runs, format_comparison
from evals.runner import RunOptions, run_suite
from evals.suite import Suite, load_suite, suite_from_mapping


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny suite run once in this process (shared by the resume and Ray tests)."""
    out = tmp_path_factory.mktemp("serial")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        outcome = run_suite(tiny_suite(), RunOptions(out_dir=out, progress=False))
    assert (outcome.ran, outcome.skipped, outcome.failed) == (2, 0, [])
    return out


def tiny_suite(seed: int = 3) -> Suite:
    """Two small procedural images, every kind of method, cheap metrics."""
    return suite_from_mapping(
        {
            "name": "tiny",
            "seed": seed,
            "datasets": [
                {"name": "proc", "procedural": 2, "size": 64, "synthesis": {"kind": "mio100", "combinations": ["A3"]}}
            ],
            "baselines": {"single_tools": ["denoise_dct"], "fixed_chains": {"auto": "auto"}, "oracle": True},
            "agents": ["fast"],
            "metrics": ["psnr", "ssim", "uiqm"],
            "primary_metrics": ["psnr"],
            "improvement_metrics": ["psnr"],
        }
    )


def _scores(out: Path) -> dict[str, dict[str, dict[str, float]]]:
    records = json.loads((out / "results.json").read_text())["records"]
    return {r["id"]: {m: e["metrics"] for m, e in r["methods"].items()} for r in records}


def test_smoke_suite_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    code = eval_main(["smoke", "--out", str(out), "-q"])
    assert code == 0
    for name in ("results.json", "results.csv", "summary.md", "report.html"):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    records = data["records"]
    assert len(records) == 3 and data["meta"]["metric_status"]["psnr"] == "available"
    methods = {"input", "identity", "tool:denoise_dct", "chain:reverse_physical", "oracle", "agent:fast"}
    for record in records:
        assert set(record["methods"]) == methods, record["errors"]
        scores = {m: e["metrics"]["psnr"] for m, e in record["methods"].items()}
        assert scores["identity"] == scores["input"]
        # The oracle may skip any step, so it is never below the input; it sees the truth, so it beats the agent.
        assert scores["oracle"] >= scores["input"]
        assert scores["oracle"] >= scores["agent:fast"] - 1e-9
        agent = record["methods"]["agent:fast"]
        assert (out / agent["trace"]).is_file() and (out / agent["report"]).is_file()
        assert all((out / rel).is_file() for rel in record["images"].values())
    summary = (out / "summary.md").read_text()
    assert "gap to oracle" in summary and "agent:fast" in summary
    html = (out / "report.html").read_text()
    assert "Gallery: procedural" in html and "plots/procedural_gain_vs_severity.png" in html
    assert (out / "plots" / "procedural_distributions.png").is_file()
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 3 * len(methods)


def test_resume_skips_finished_items(serial_run: Path, tmp_path: Path) -> None:
    suite = tiny_suite()
    out = tmp_path / "run"
    shutil.copytree(serial_run, out)
    again = run_suite(suite, RunOptions(out_dir=out, progress=False))
    assert (again.ran, again.skipped) == (0, 2)
    assert _scores(out) == _scores(serial_run)
    victim = next((out / "items").glob("*.json"))
    victim.unlink()
    partial = run_suite(suite, RunOptions(out_dir=out, progress=False))
    assert (partial.ran, partial.skipped) == (1, 1)
    assert _scores(out) == _scores(serial_run)  # the redone item scores exactly as before
    changed = run_suite(tiny_suite(seed=4), RunOptions(out_dir=out, progress=False))
    assert changed.ran == 2  # another suite configuration: nothing is reused


@pytest.mark.slow
def test_process_pool_gives_identical_results(serial_run: Path, tmp_path: Path) -> None:
    run_suite(tiny_suite(), RunOptions(out_dir=tmp_path / "pool", workers=2, progress=False))
    assert _scores(tmp_path / "pool") == _scores(serial_run)


def test_ray_missing_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import evals.runner

    monkeypatch.setattr(evals.runner, "ray_available", lambda: False)
    with pytest.raises(RuntimeError, match='pip install "ray>=2.40"'):
        run_suite(tiny_suite(), RunOptions(out_dir=tmp_path, executor="ray", progress=False))


@pytest.mark.slow  # starts a local Ray instance and two worker processes: 20-50 s on 2 shared cores
def test_ray_gives_identical_results(serial_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    distributed = run_suite(
        tiny_suite(), RunOptions(out_dir=tmp_path / "ray", executor="ray", workers=2, progress=False)
    )
    assert distributed.meta["executor"] == "ray" and distributed.ran == 2
    assert _scores(tmp_path / "ray") == _scores(serial_run)


def _fake_run(folder: Path, shift: float, n: int = 10) -> Path:
    records = [
        {
            "id": f"d/{i}",
            "dataset": "d",
            "methods": {
                "input": {"metrics": {"psnr": 20.0 + i, "niqe": 6.0}},
                "agent:default": {"metrics": {"psnr": 21.0 + i + shift * (1 + 0.1 * i), "niqe": 5.0 + shift}},
            },
        }
        for i in range(n)
    ]
    meta = {
        "suite": "fake",
        "suite_config": {"metrics": ["psnr", "niqe"]},
        "metric_status": {"psnr": "available", "niqe": "available"},
        "lower_better": {"psnr": False, "niqe": True},
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"meta": meta, "records": records}))
    return folder


def test_compare_reports_paired_deltas_and_significance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _fake_run(tmp_path / "a", 0.0)
    b = _fake_run(tmp_path / "b", 0.5)
    result = compare_runs(a, b)
    rows = {(r["method"], r["metric"]): r for r in result["rows"]}
    psnr = rows[("agent:default", "psnr")]
    assert psnr["n"] == 10 and psnr["delta"] == pytest.approx(0.5 * 1.45)
    assert psnr["better"] == 1.0 and psnr["p_value"] < 0.01
    niqe = rows[("agent:default", "niqe")]  # lower is better: B's higher NIQE is worse
    assert niqe["worse"] == 1.0 and niqe["better"] == 0.0
    same = {(r["method"], r["metric"]): r for r in compare_runs(a, a)["rows"]}
    assert same[("agent:default", "psnr")]["p_value"] == 1.0
    assert "Wilcoxon p" in format_comparison(result)
    assert eval_main(["compare", str(a), str(b)]) == 0
    assert "agent:default" in capsys.readouterr().out
    assert eval_main(["compare", str(a)]) == 2
    assert eval_main(["compare", str(a), str(tmp_path / "missing")]) == 2


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main(["--list"]) == 0
    assert "underwater" in capsys.readouterr().out
    assert eval_main(["no-such-suite", "--out", str(tmp_path)]) == 2
    assert eval_main(["smoke", "--workers", "0"]) == 2
    suite = load_suite("underwater")
    assert suite.datasets[0].optional
    missing = tmp_path / "nodata"
    missing.mkdir()
    shutil.copy(Path(__file__), missing / "not_an_image.py")
    assert eval_main(["mixed", "--data", str(missing), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "pass the data root with --data" in capsys.readouterr().err


def test_the_suite_names_the_perception_of_its_agents_and_baselines() -> None:
    from evals.runner import _WORKER, _worker_state

    try:
        default = _worker_state(tiny_suite(), ["psnr"], 1)
        assert type(default["baselines"].assessor).__name__ == "EstimatorAssessor"
        hybrid_suite = tiny_suite().model_copy(update={"assessor": "hybrid"})
        hybrid = _worker_state(hybrid_suite, ["psnr"], 1)
        assert hybrid["baselines"].assessor.name == "saclip+estimators"
        assert all(context.assessor is hybrid["baselines"].assessor for context in hybrid["contexts"].values())
    finally:
        _WORKER.clear()
