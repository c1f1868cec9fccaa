"""The agent benchmark's paired comparison of two runs (no images needed)."""

from __future__ import annotations

import json

import pytest

from evals.bench_agent import compare_results, main


def _write(path, outputs: list[float], inputs: list[float] | None = None, calls: int = 2):
    inputs = inputs or [20.0] * len(outputs)
    rows = [
        {"stem": f"{i:03d}_A1_img", "psnr_in": p_in, "psnr_out": p_out, "tool_calls": calls, "wall": 1.0 + i}
        for i, (p_in, p_out) in enumerate(zip(inputs, outputs, strict=True))
    ]
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(rows))
    return path


def test_compare_pools_pairs_of_runs_and_counts_changed_images(tmp_path, capsys):
    a1 = _write(tmp_path / "a1", [21.0, 22.0, 23.0, 24.0])
    b1 = _write(tmp_path / "b1", [21.5, 22.0, 23.5, 23.0], calls=3)
    a2 = _write(tmp_path / "a2", [20.0, 20.0])
    b2 = _write(tmp_path / "b2", [20.5, 20.005])
    result = compare_results([a1, a2 / "results.json"], [b1, b2])
    assert result["n"] == 6
    assert result["mean_difference"] == pytest.approx((0.5 + 0 + 0.5 - 1.0 + 0.5 + 0.005) / 6)
    assert (result["better"], result["worse"]) == (3, 1)  # the 0.005 dB change is a tie
    assert result["largest_loss"] == pytest.approx(-1.0) and result["largest_gain"] == pytest.approx(0.5)
    assert 0.0 < result["p_value"] <= 1.0
    assert result["a"]["tool_calls"] == 2 and result["b"]["tool_calls"] == pytest.approx((4 * 3 + 2 * 2) / 6)
    assert main(["--compare", str(a1), "--against", str(b1)]) == 0
    assert "Wilcoxon" in capsys.readouterr().out


def test_compare_names_changed_images_whose_run_stopped_at_the_time_budget(tmp_path, capsys):
    a = _write(tmp_path / "a", [21.0, 22.0, 23.0])
    b = _write(tmp_path / "b", [21.0, 25.0, 20.0])
    rows = json.loads((b / "results.json").read_text())
    rows[0]["out_of_time"] = True  # unchanged image: not worth a warning
    rows[2]["out_of_time"] = True  # lost 3 dB because its run stopped early
    (b / "results.json").write_text(json.dumps(rows))
    assert compare_results([a], [b])["out_of_time"] == ["002_A1_img"]
    assert compare_results([a], [a])["out_of_time"] == []
    assert main(["--compare", str(a), "--against", str(b)]) == 0
    assert "time budget hit       : 1 changed image(s)" in capsys.readouterr().out
    assert main(["--time-budget", "0", "--limit", "1"]) == 2
    assert "--time-budget must be positive" in capsys.readouterr().err


def test_compare_refuses_runs_made_on_different_images(tmp_path, capsys):
    a = _write(tmp_path / "a", [21.0, 22.0])
    other = _write(tmp_path / "other", [21.0, 22.0], inputs=[19.0, 20.0])
    with pytest.raises(ValueError, match="not the same degraded image"):
        compare_results([a], [other])
    with pytest.raises(ValueError, match="paired by position"):
        compare_results([a], [])
    assert main(["--compare", str(a), "--against", str(other)]) == 2
    assert "not the same degraded image" in capsys.readouterr().err


def test_a_combos_subset_is_compared_on_its_own_images(tmp_path):
    full = _write(tmp_path / "full", [21.0, 22.0, 23.0])
    rows = json.loads((full / "results.json").read_text())
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "results.json").write_text(json.dumps([{**rows[1], "psnr_out": 23.0}]))
    for a, b, expected in ((full, subset, 1.0), (subset, full, -1.0)):
        result = compare_results([a], [b])
        assert result["n"] == 1 and result["mean_difference"] == pytest.approx(expected)
    (subset / "results.json").write_text(json.dumps([{**rows[1], "stem": "999_A1_other"}]))
    with pytest.raises(ValueError, match="different sets"):
        compare_results([full], [subset])


def test_combos_are_chosen_by_key_or_by_the_degradations_they_hold():
    from evals.bench_agent import select_combos

    assert select_combos(["a2", "B1"]) == {"A2", "B1"}
    assert select_combos(["motion_blur"]) == {"A2", "A7", "B1", "C1", "C4"}
    assert select_combos(["rain", "C3"]) == {"A1", "A6", "B4", "C2", "C3"}
    with pytest.raises(ValueError, match="neither a MiO100 combination"):
        select_combos(["Z9"])
    assert main(["--combos", "Z9", "--shared", "/nonexistent"]) == 2
