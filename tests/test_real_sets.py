"""The real sets' fixed train/held-out split, their loaders, and SA-CLIP training on real photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agent.degradations import Degradation
from agent.perception import saclip
from agent.perception.real_sets import (
    HELD_OUT,
    POLYU_TRAIN_CAMERAS,
    REAL_SETS,
    TRAIN,
    evenly_spaced,
    load_real_sets,
    load_real_training,
    part_of,
    real_entries,
)
from agent.perception.saclip import TYPES
from agent.perception.saclip_train import SyntheticStream, assemble_batch, make_real_sample
from evals.synthesis import procedural_image
from tests.fakes import fake_shared

POLYU_CAMERAS = ("Canon5D2", "Canon600D", "Canon80D", "NikonD800", "Sony")


def _save(path: Path, seed: int, size: int = 40, scale: float = 1.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = procedural_image(size, size, seed=seed) * scale
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)


def _fake_real_sets(shared: Path) -> Path:
    """PolyU (paired, two photos per camera), SOTS (paired), RUIE (sub-folders) and U45 (held out whole)."""
    data = shared / "data"
    polyu = data / REAL_SETS["PolyU"][0]
    for i, camera in enumerate(POLYU_CAMERAS):
        for k in range(2):
            _save(polyu / "lq" / f"{camera}_5_160_{k}.png", seed=10 * i + k)
            _save(polyu / "gt" / f"{camera}_5_160_{k}.png", seed=100 + 10 * i + k)
    for k in range(12):
        _save(data / REAL_SETS["SOTS"][0] / "lq" / f"{1400 + k}.png", seed=200 + k, scale=0.9)
        _save(data / REAL_SETS["SOTS"][0] / "gt" / f"{1400 + k}.png", seed=300 + k)
    for k in range(12):
        _save(data / REAL_SETS["RUIE"][0] / ("blue" if k < 6 else "green") / f"img_{k:02d}.jpg", seed=400 + k)
    for k in range(5):
        _save(data / REAL_SETS["U45"][0] / f"{k}.png", seed=500 + k)
    return shared


def test_split_is_fixed_by_name_not_by_what_is_present_or_its_encoding():
    assert part_of("U45", "1.png") == part_of("Rain100L", "001.png") == part_of("EUVP", "x.jpg") == HELD_OUT
    for camera in POLYU_CAMERAS:
        expected = TRAIN if camera in POLYU_TRAIN_CAMERAS else HELD_OUT
        assert part_of("PolyU", f"{camera}_5_160_3200_chair_11.JPG") == expected
    names = [f"blue/blue_{k:02d}" for k in range(100)]
    parts = [part_of("RUIE", f"{name}.jpg") for name in names]
    assert parts == [part_of("RUIE", f"{name}.webp") for name in names]  # a lossless re-encoding splits alike
    assert 30 < parts.count(TRAIN) < 70  # about half each way


def test_evenly_spaced_keeps_both_ends():
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced([1, 2], 5) == [1, 2] and evenly_spaced([1, 2], None) == [1, 2]
    assert evenly_spaced([1, 2, 3], 0) == []


def test_training_and_held_out_parts_partition_each_set(tmp_path):
    shared = _fake_real_sets(tmp_path / "shared")
    for name in ("PolyU", "SOTS", "RUIE", "U45"):
        train = {str(e.lq) for e in real_entries(shared, name, TRAIN)}
        held = {str(e.lq) for e in real_entries(shared, name, HELD_OUT)}
        every = {str(e.lq) for e in real_entries(shared, name, None)}
        assert train | held == every and not train & held, name
    polyu_train = real_entries(shared, "PolyU", TRAIN)
    assert {Path(e.lq).name.split("_")[0] for e in polyu_train} == set(POLYU_TRAIN_CAMERAS)
    assert real_entries(shared, "U45", TRAIN) == [] and real_entries(shared, "DICM", None) == []

    held_out = load_real_sets(shared, limit=3)
    assert set(held_out) == {"PolyU", "SOTS", "RUIE", "U45"}
    assert all(len(images) <= 3 for images, _ in held_out.values())
    assert held_out["SOTS"][1] is Degradation.HAZE

    labelled, clean = load_real_training(shared)
    counts = {label: sum(1 for _, lab in labelled if lab is label) for label in {lab for _, lab in labelled}}
    assert counts[Degradation.NOISE] == 2 * len(POLYU_TRAIN_CAMERAS)
    assert counts[Degradation.HAZE] == len(real_entries(shared, "SOTS", TRAIN))
    assert counts[Degradation.COLOR_CAST] == len(real_entries(shared, "RUIE", TRAIN))
    # SOTS' references are the extra clean photos (PolyU's are JPEG files, which would read as "jpeg")
    assert len(clean) == len(real_entries(shared, "SOTS", TRAIN))


def test_loss_counts_only_the_known_presence_and_severity():
    outputs = {
        "logits": torch.log(torch.tensor([[0.7, 0.2, 0.1]])),
        "presence_logits": torch.tensor([[0.0, 2.0]]),
        "severity": torch.tensor([[0.9, 0.4]]),
    }
    common = {"targets": torch.tensor([[0.0, 1.0, 0.0]]), "presence": torch.tensor([[1.0, 1.0]])}
    known = torch.tensor([[0.0, 1.0]])
    terms = saclip.saclip_loss(outputs, severity=torch.tensor([[0.5, -1.0]]), presence_known=known, **common)
    assert math.isclose(float(terms["presence"]), math.log(1 + math.exp(-2.0)), rel_tol=1e-5)  # the known type only
    assert math.isclose(float(terms["severity"]), 0.4, rel_tol=1e-5)  # the unknown (-1) severity does not count
    nothing_known = saclip.saclip_loss(
        outputs, severity=torch.tensor([[-1.0, -1.0]]), presence_known=torch.zeros(1, 2), **common
    )
    assert float(nothing_known["presence"]) == 0.0 and float(nothing_known["severity"]) == 0.0


def test_real_samples_carry_only_their_dominant_label_and_stream_balances_labels():
    rng = np.random.default_rng(0)
    photo = procedural_image(64, 64, seed=1)
    sample = make_real_sample(photo, Degradation.HAZE, 32, rng)
    index = TYPES.index(Degradation.HAZE)
    assert sample["image"].shape == (3, 32, 32)
    assert sample["target"][index + 1] == 1.0 and sample["target"].sum() == 1.0
    assert sample["presence_known"].tolist() == [1.0 if i == index else 0.0 for i in range(len(TYPES))]
    assert sample["severity"][index] < 0  # unknown

    real = [(photo, Degradation.HAZE)] + [(photo, Degradation.COLOR_CAST)] * 9
    stream = iter(SyntheticStream([photo], 32, seed=0, real=real, p_real=1.0))
    labels = [int(np.argmax(next(stream)["target"])) - 1 for _ in range(200)]
    assert 60 < labels.count(index) < 140  # two labels drawn evenly, not by photo count (1 in 10)
    samples = [next(stream) for _ in range(2)]
    mixed = iter(SyntheticStream([photo], 32, seed=1))
    samples.append(next(mixed))
    collated = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}
    collated["has_clean"] = torch.tensor([0.0, 0.0, 1.0])
    batch = assemble_batch(collated)
    assert batch["presence_known"].shape == (4, len(TYPES))
    assert batch["presence_known"][:2].sum() == 2 and bool((batch["presence_known"][2:] == 1).all())


def test_training_with_real_photos_records_them(tmp_path):
    from agent.perception import saclip_train

    shared = _fake_real_sets(fake_shared(tmp_path / "shared", size=(72, 72)))
    out = tmp_path / "model"
    args = ["--backend", "SACLIP-small", "--out", str(out), "--steps", "2", "--p-real", "0.5", "--shared", str(shared)]
    args += ["--batch-size", "4", "--val-images", "1", "--val-per-class", "1", "--val-mixed", "2"]
    args += ["--calibrate-per-class", "0", "--max-side", "72", "--warmup", "1", "--threads", "1"]
    args += ["--p-restored", "0.25"]
    assert saclip_train.main(args) == 0
    record = json.loads((out / saclip.SETTINGS_FILE).read_text())["training"]
    assert record["p_real"] == 0.5 and record["real_photos"] == len(load_real_training(shared)[0])
    assert record["train_photos"] == 3 + len(load_real_training(shared)[1])  # 4 calibration photos, 1 validation
    assert record["p_restored"] == 0.25 and "after the agent's first step" in record["data"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "--p-real 0.5" in card and "--p-restored 0.25" in card
    with pytest.raises(ValueError, match="on the fly"):
        saclip_train.main(
            [*args[: args.index(str(out))], str(tmp_path / "cached"), *args[args.index(str(out)) + 1 :], "--cache", "8"]
        )
    assert not (tmp_path / "cached").exists()
    bare = fake_shared(tmp_path / "bare", size=(72, 72))  # clean photos only: no real set to train on
    args[args.index(str(shared))], args[args.index(str(out))] = str(bare), str(tmp_path / "other")
    with pytest.raises(ValueError, match="no real training photos"):
        saclip_train.main(args)


def test_extra_clean_photos_are_trained_on_recorded_and_never_evaluated(tmp_path):
    from agent.perception import saclip_train
    from agent.perception.evaluate import checkpoint_photo_names, synthetic_sets, trained_photo_names
    from agent.perception.saclip import SAClipAssessor

    shared = fake_shared(tmp_path / "shared", size=(72, 72))
    live1 = shared / "data" / "clean" / "LIVE1_color"
    out = tmp_path / "model"
    args = ["--backend", "SACLIP-small", "--out", str(out), "--steps", "2", "--shared", str(shared)]
    args += ["--batch-size", "4", "--val-images", "1", "--val-per-class", "1", "--val-mixed", "2"]
    args += ["--calibrate-per-class", "0", "--max-side", "72", "--warmup", "1", "--threads", "1"]
    assert saclip_train.main([*args, "--extra-clean", str(live1)]) == 0
    record = json.loads((out / saclip.SETTINGS_FILE).read_text())["training"]
    assert record["train_photos"] == 3 + 1 and record["extra_clean"] == ["LIVE1_color/img_000"]
    assert record["extra_clean_sources"] == ["../shared/data/clean/LIVE1_color"]
    assert "--extra-clean ../shared/data/clean/LIVE1_color" in (out / "MODEL_CARD.md").read_text()

    # resumed without the option, the record still names the photos the weights saw
    assert saclip_train.main([*args, "--resume", "--steps", "3"]) == 0
    resumed = json.loads((out / saclip.SETTINGS_FILE).read_text())["training"]
    assert resumed["steps"] == 3 and resumed["extra_clean"] == ["LIVE1_color/img_000"]
    # a checkpoint fine-tuned from it inherits what it must not be scored on
    tuned = tmp_path / "tuned"
    args[args.index(str(out))] = str(tuned)
    assert saclip_train.main([*args, "--init-from", str(out)]) == 0
    trained = trained_photo_names(SAClipAssessor(tuned, with_parameters=False))
    assert trained == {"LIVE1_color/img_000"}
    assert checkpoint_photo_names(tuned) == trained and checkpoint_photo_names(tmp_path / "model") == trained
    with pytest.raises(FileNotFoundError, match="not a SA-CLIP checkpoint"):
        checkpoint_photo_names(live1)
    single, mixed = synthetic_sets(shared, per_class=2, mixtures=2, seed=0, size=32, exclude=trained)
    sources = {s["source"] for s in single + mixed}
    assert sources and "LIVE1_color/img_000" not in sources
    single, _ = synthetic_sets(shared, per_class=2, mixtures=0, seed=0, size=32, collections=["McMaster"])
    assert {s["source"] for s in single} == {"McMaster/img_000"}
    with pytest.raises(FileNotFoundError, match="no evaluation images"):
        synthetic_sets(shared, 1, 0, 0, size=32, collections=["LIVE1_color"], exclude=trained)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        saclip_train.main([*args, "--extra-clean", str(tmp_path / "empty")])
