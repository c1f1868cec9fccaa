"""Suites as data, dataset adapters and metric availability (offline)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evals.datasets import LAYOUTS, DatasetLayoutError, load_dataset
from evals.iqa_metrics import MetricSet, NetworkBlockedError, metric_info, network_available, no_network
from evals.suite import SuiteError, list_suites, load_suite, suite_from_mapping

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------
# Suites
# ----------------------------------------------------------------------------------------------


def test_builtin_suites_load_and_differ() -> None:
    names = list_suites()
    assert {"smoke", "mixed", "underwater", "udc", "real"} <= set(names)
    suites = [load_suite(n) for n in names]
    assert len({s.fingerprint() for s in suites}) == len(suites)
    mixed = load_suite("mixed")
    assert mixed.datasets[0].split == "evaluation" and mixed.datasets[0].limit == 48
    assert len(mixed.datasets[0].synthesis.variants()) == 16  # all MiO100 combinations
    udc = load_suite("udc")
    assert any(d.synthesis and d.synthesis.kind == "udc" for d in udc.datasets)
    uw = load_suite("underwater")
    assert {"uiqm", "uciqe"} <= set(uw.improvement_metrics)
    real = load_suite("real")
    assert all(d.optional and d.synthesis is None for d in real.datasets)  # real photos only, none required
    assert "psnr" in real.primary_metrics and real.baselines.identity


def test_suite_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="did you mean smoke"):
        load_suite("smok")
    base = {"name": "x", "datasets": [{"name": "d", "procedural": 2, "synthesis": {"kind": "mio100"}}]}
    with pytest.raises(SuiteError, match="metricz"):
        suite_from_mapping({**base, "metricz": ["psnr"]})
    with pytest.raises(SuiteError, match="exactly one of path, split or procedural"):
        suite_from_mapping({"name": "x", "datasets": [{"name": "d"}]})
    with pytest.raises(SuiteError, match="unknown metric 'psnrr'"):
        suite_from_mapping({**base, "metrics": ["psnrr"]})
    with pytest.raises(SuiteError, match="must also be listed"):
        suite_from_mapping({**base, "metrics": ["psnr"], "primary_metrics": ["ssim"]})
    with pytest.raises(SuiteError, match="unknown degradation"):
        synthesis = {"kind": "combos", "combinations": ["noise+smog"]}
        suite_from_mapping({"name": "x", "datasets": [{"name": "d", "procedural": 1, "synthesis": synthesis}]})
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndatasets:\n  - {name: d, procedural: 2, synthesis: {kind: mio100}}\n")
    suite = load_suite(path)
    assert suite.name == "mine" and suite.datasets[0].synthesis.variants()[0] == "A1"
    assert suite.fingerprint() != suite.model_copy(update={"seed": 1}).fingerprint()
    # the agents' perception is a suite setting; the estimators (the default) keep earlier fingerprints
    assert suite.assessor == "estimators"
    assert suite.fingerprint() == suite_from_mapping({**base, "name": "mine"}).fingerprint()
    assert suite.fingerprint() != suite_from_mapping({**base, "name": "mine", "assessor": "hybrid"}).fingerprint()
    with pytest.raises(SuiteError, match="unknown assessor"):
        suite_from_mapping({**base, "assessor": "clip"})


# ----------------------------------------------------------------------------------------------
# Dataset adapters
# ----------------------------------------------------------------------------------------------


def _png(path: Path, value: int = 100, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


@pytest.mark.parametrize(
    ("layout", "lq", "gt", "expected_layout"),
    [
        ("paired", "lq", "gt", "paired"),
        ("uieb", "raw-890", "reference-890", "uieb"),
        ("euvp", "test_samples/Inp", "test_samples/GTr", "euvp"),
        ("lsui", "input", "GT", "lsui"),
        ("udc", "Toled_train/LQ", "Toled_train/HQ", "udc"),
    ],
)
def test_paired_layouts_are_recognised(tmp_path: Path, layout: str, lq: str, gt: str, expected_layout: str) -> None:
    for stem in ("1", "2", "10"):
        _png(tmp_path / lq / f"{stem}.jpg")
        _png(tmp_path / gt / f"{stem}.png", value=150)
    _png(tmp_path / lq / "orphan.png")  # no reference: left out
    dataset = load_dataset(tmp_path)
    assert dataset.layout == expected_layout
    assert dataset.paired and len(dataset) == 3
    assert all(e.gt is not None and e.gt.stem == e.lq.stem for e in dataset.entries)
    assert load_dataset(tmp_path, layout=layout).layout == layout
    if layout == "udc":
        assert {e.group for e in dataset.entries} == {"toled"}


def test_euvp_paired_subsets_and_unpaired_trees(tmp_path: Path) -> None:
    for subset in ("underwater_dark", "underwater_scenes"):
        _png(tmp_path / "euvp" / "Paired" / subset / "trainA" / "a.jpg")
        _png(tmp_path / "euvp" / "Paired" / subset / "trainB" / "a.jpg")
    euvp = load_dataset(tmp_path / "euvp")
    assert euvp.layout == "euvp" and {e.group for e in euvp.entries} == {"underwater_dark", "underwater_scenes"}
    for cast in ("blue", "green"):
        for i in range(2):
            _png(tmp_path / "ruie" / "UCCS" / cast / f"{cast}_{i}.jpg")
    ruie = load_dataset(tmp_path / "ruie", layout="ruie")
    assert len(ruie) == 4 and not ruie.paired
    assert {e.group for e in ruie.entries} == {"UCCS/blue", "UCCS/green"}
    for i in range(3):
        _png(tmp_path / "u45" / f"{i}.png")
    assert load_dataset(tmp_path / "u45").layout == "unpaired"
    assert len(load_dataset(tmp_path / "u45", layout="u45")) == 3


def test_unknown_layout_error_lists_expected_layouts(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetLayoutError) as info:
        load_dataset(tmp_path)
    message = str(info.value)
    for name in LAYOUTS:
        assert name in message
    assert "raw-890/ + reference-890/" in message
    _png(tmp_path / "lq" / "1.png")
    with pytest.raises(DatasetLayoutError, match="'uieb' layout"):
        load_dataset(tmp_path, layout="uieb")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown layout"):
        load_dataset(tmp_path, layout="uiebb")


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not available")
def test_real_sets_load() -> None:
    expected = {
        "underwater/EUVP_test_samples_FUnIE-GAN": (23, True),
        "underwater/LSUI_test_samples_Ushape": (108, True),
        "underwater/U45": (45, False),
        "underwater/RUIE_UCCS": (300, False),
        "udc/DAGF_ECCV2020_UDC_examples": (2, False),
        "degraded/PolyU_real_noise_cropped100": (100, True),
        "degraded/Rain100L_synthetic_samples": (10, True),
        "degraded/SOTS_indoor_synthetic_haze_subset50": (50, True),
    }
    for rel, (count, paired) in expected.items():
        dataset = load_dataset(DATA / rel)
        assert (len(dataset), dataset.paired) == (count, paired), rel
    ruie = load_dataset(DATA / "underwater/RUIE_UCCS", layout="ruie")
    assert {e.group for e in ruie.entries} == {"blue", "blue-green", "green"}


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not available")
def test_real_suite_items() -> None:
    from evals.runner import build_items

    items, notes = build_items(load_suite("real"), DATA)
    counts: dict[str, int] = {}
    for item in items:
        counts[item["dataset"]] = counts.get(item["dataset"], 0) + 1
    assert counts == {"PolyU": 100, "Rain100L": 10, "SOTS": 25, "DICM": 30} and not notes


def test_real_suite_without_data_skips_every_set(tmp_path: Path) -> None:
    from evals.runner import build_items

    items, notes = build_items(load_suite("real"), tmp_path)
    assert items == [] and len(notes) == 4


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def test_directions_come_from_pyiqa() -> None:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    metrics = MetricSet(["psnr", "ssim_rgb", "niqe", "piqe", "uiqm", "uciqe"])
    lower = metrics.lower_better()
    for name in ("psnr", "ssim_rgb", "niqe", "piqe"):
        pyiqa_name = metric_info(name).pyiqa_name
        assert lower[name] == DEFAULT_CONFIGS[pyiqa_name].get("lower_better", False)
    assert lower["niqe"] and lower["piqe"] and not lower["psnr"]
    assert not lower["uiqm"] and not lower["uciqe"]
    with pytest.raises(ValueError, match="did you mean"):
        metric_info("niqee")


def test_scores_full_reference_only_with_a_reference() -> None:
    from evals.metrics import psnr

    rng = np.random.default_rng(0)
    ref = rng.random((48, 48, 3)).astype(np.float32)
    noisy = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1).astype(np.float32)
    metrics = MetricSet(["psnr", "psnr_rgb", "uiqm"])
    with_ref = metrics.score(noisy, ref)
    assert with_ref["psnr"] == pytest.approx(psnr(noisy, ref))
    assert with_ref["psnr_rgb"] == pytest.approx(psnr(noisy, ref, on="rgb"))
    assert set(metrics.score(noisy)) == {"uiqm"}


def test_offline_means_no_probe_and_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was probed although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", fail)
    assert network_available() is False
    metrics = MetricSet(["musiq", "piqe"])
    status = metrics.availability()
    assert status["musiq"].startswith("unavailable: weights missing")
    assert status["piqe"] == "available"
    assert metrics.active() == ["piqe"]
    assert metrics.lower_better()["musiq"] is False  # pyiqa's direction even when unavailable


def test_no_network_blocks_and_restores() -> None:
    before = socket.getaddrinfo
    with no_network():
        with pytest.raises(NetworkBlockedError):
            socket.create_connection(("example.com", 443), timeout=0.1)
        with pytest.raises(OSError):
            socket.getaddrinfo("example.com", 443)
    assert socket.getaddrinfo is before
