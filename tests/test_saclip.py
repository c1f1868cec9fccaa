"""SA-CLIP: tiny random open_clip models exercise every code path (no weights, no network)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from agent.degradations import Degradation
from agent.perception import saclip
from agent.perception.cli_commands import add_assess_parser
from agent.perception.saclip import CLASSES, TYPES
from agent.perception.saclip_train import (
    assemble_batch,
    classification_scores,
    confusion_matrix,
    make_optimizer,
    make_sample,
    multilabel_f1,
    severity_mae,
    training_step,
)
from agent.report import DegradationReport
from evals.synthesis import procedural_image
from tests.fakes import fake_shared

TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def published_dir(tmp_path_factory):
    """A "published" tiny CLIP in open_clip's local-dir layout (config JSON + safetensors weights)."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("published")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_VIT, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    clip = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture()
def one_thread():
    """Tiny models train faster on one thread (and do not fight other jobs on a 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny_model(published_dir):
    torch.manual_seed(1)
    return saclip.create_model(f"local-dir:{published_dir}", crops=2)


def _toy_batch(n: int = 8, size: int = 32) -> dict[str, torch.Tensor]:
    """Separable toy data: dark flat images are "low light", noisy ones "noise", plain mid-grey ones clean."""
    rng = np.random.default_rng(0)
    images, targets, presence, severity = [], [], [], []
    for i in range(n):
        kind = i % 3
        base = np.full((3, size, size), 0.5, np.float32)
        if kind == 1:
            base = base * 0.2
        elif kind == 2:
            base = np.clip(base + rng.normal(0, 0.2, base.shape), 0, 1).astype(np.float32)
        images.append(base)
        target = np.zeros(len(CLASSES), np.float32)
        pres, sev = np.zeros(len(TYPES), np.float32), np.zeros(len(TYPES), np.float32)
        if kind == 0:
            target[0] = 1
        else:
            degradation = Degradation.LOW_LIGHT if kind == 1 else Degradation.NOISE
            j = TYPES.index(degradation)
            target[j + 1], pres[j], sev[j] = 1, 1, 0.7
        targets.append(target)
        presence.append(pres)
        severity.append(sev)
    batch = {
        "images": torch.from_numpy(np.stack(images)),
        "targets": torch.from_numpy(np.stack(targets)),
        "presence": torch.from_numpy(np.stack(presence)),
        "severity": torch.from_numpy(np.stack(severity)),
        "sa_rows": torch.tensor([0]),
        "sa_targets": torch.from_numpy(np.stack(targets))[[1]],
    }
    return batch


def test_prompts_cover_vocabulary():
    assert CLASSES[0] == "no" and len(CLASSES) == len(Degradation) + 1
    assert set(TYPES) == set(Degradation)
    assert saclip.prompts()[0] == "A photo needs no artifact reduction."
    assert "A photo needs motion blur artifact reduction." in saclip.prompts()


def test_backend_strings(tmp_path):
    assert saclip.parse_backend("default") == ("default", saclip.DEFAULT_MODEL_NAME)
    assert saclip.parse_backend("hf-hub:org/repo") == ("hf-hub", "org/repo")
    assert saclip.parse_backend(f"local-dir:{tmp_path}") == ("local-dir", str(tmp_path))
    with pytest.raises(ValueError, match="ambiguous"):
        saclip.parse_backend(str(tmp_path))
    with pytest.raises(ValueError, match="ambiguous"):
        saclip.create_model("ViT-B-16")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        saclip.create_model(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_VIT}))
    with pytest.raises(FileNotFoundError, match="holds no weights"):  # never a silent random "published" model
        saclip.create_model(f"local-dir:{tmp_path}")


def test_hub_backend_offline_does_not_reach_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="not in the local Hugging Face cache"):
        saclip.create_model("hf-hub:restora-test/definitely-not-cached-model")


def test_forward_shapes(tiny_model):
    tiny_model.eval()
    out = tiny_model(torch.rand(3, 3, 32, 32))
    assert out["logits"].shape == (3, len(CLASSES))
    assert out["presence_logits"].shape == (3, len(TYPES))
    assert out["severity"].shape == (3, len(TYPES))
    assert ((out["severity"] >= 0) & (out["severity"] <= 1)).all()
    norms = out["image_features"].norm(dim=-1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5)
    # logits are the CLIP-scaled cosine similarities with the prompt embeddings
    expected = tiny_model.clip.logit_scale.exp() * out["image_features"] @ tiny_model.text_features().T
    assert torch.allclose(out["logits"], expected, atol=1e-5)


def test_e_auto_is_probability_weighted_mix(tiny_model):
    tiny_model.eval()
    text = tiny_model.text_features()
    probabilities = torch.zeros(2, len(CLASSES))
    probabilities[0, 3] = 1.0
    probabilities[1, [0, 5]] = torch.tensor([0.25, 0.75])
    mixed = tiny_model.e_auto(probabilities)
    assert mixed.shape == (2, text.shape[1])
    assert torch.allclose(mixed[0], text[3], atol=1e-6)
    assert torch.allclose(mixed[1], 0.25 * text[0] + 0.75 * text[5], atol=1e-6)
    assessor = saclip.SAClipAssessor(tiny_model, with_parameters=False)
    image = procedural_image(48, 40, seed=1)
    softmax = torch.from_numpy(assessor.predict(image)["softmax"])
    assert math.isclose(float(softmax.sum()), 1.0, rel_tol=1e-5)
    assert np.allclose(assessor.e_auto(image), (softmax @ text).numpy(), atol=1e-5)


def test_report_is_valid(tiny_model):
    assessor = saclip.SAClipAssessor(tiny_model, with_parameters=True)
    report = assessor.assess(procedural_image(96, 80, seed=2))
    assert isinstance(report, DegradationReport) and report.assessor == "saclip"
    assert set(report.estimates) == set(Degradation)
    assert all(0 <= e.probability <= 1 and 0 <= e.severity <= 1 for e in report.estimates.values())
    assert "sigma" in report.estimates[Degradation.NOISE].params  # parameters come from the estimators
    softmax = [report.measurements[f"saclip_softmax_{c}"] for c in CLASSES]
    assert math.isclose(sum(softmax), 1.0, rel_tol=1e-5)
    assert saclip.softmax_dominant(report) == CLASSES[int(np.argmax(softmax))]
    assert report.seconds > 0


def test_crop_views_keep_native_pixels():
    image = np.random.default_rng(0).random((50, 70, 3)).astype(np.float32)
    views = saclip.crop_views(image, 32, 5)
    assert views.shape == (5, 3, 32, 32)
    assert np.array_equal(views[1], image[:32, :32].transpose(2, 0, 1))  # top-left corner, not resampled
    assert saclip.crop_views(image[:20, :20], 32, 1).shape == (1, 3, 32, 32)


def test_losses_match_hand_computed_values():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    expected_fid = ((1 - math.sqrt(0.7)) + (1 - (math.sqrt(0.125) + math.sqrt(0.25)))) / 2
    assert math.isclose(float(saclip.fidelity_loss(p, y)), expected_fid, rel_tol=1e-5)
    # SA on the clean images: the "no" column does not count
    expected_sa = (0.0 + (math.sqrt(0.125) + math.sqrt(0.25))) / 2
    assert math.isclose(float(saclip.semantic_agnostic_loss(p, y)), expected_sa, rel_tol=1e-5)
    # a perfect prediction has zero fidelity loss
    assert float(saclip.fidelity_loss(y[:1], y[:1])) == pytest.approx(0.0, abs=1e-6)

    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    outputs = {
        "logits": logits,
        "presence_logits": torch.tensor([[0.0, 2.0]]),
        "severity": torch.tensor([[0.9, 0.4]]),
    }
    terms = saclip.saclip_loss(
        outputs,
        targets=torch.tensor([[0.0, 1.0, 0.0]]),
        presence=torch.tensor([[0.0, 1.0]]),
        severity=torch.tensor([[0.0, 0.6]]),
        sa_rows=torch.tensor([0]),
        sa_targets=torch.tensor([[0.0, 0.0, 1.0]]),
    )
    assert math.isclose(float(terms["fidelity"]), 1 - math.sqrt(0.2), rel_tol=1e-5)
    assert math.isclose(float(terms["cross_entropy"]), -math.log(0.2), rel_tol=1e-5)
    assert math.isclose(float(terms["sa"]), math.sqrt(0.1), rel_tol=1e-5)
    bce = (math.log(2) + math.log(1 + math.exp(-2.0))) / 2
    assert math.isclose(float(terms["presence"]), bce, rel_tol=1e-5)
    assert math.isclose(float(terms["severity"]), 0.2, rel_tol=1e-5)  # masked: only the present type counts
    parts = sum(float(terms[k]) for k in ("fidelity", "sa", "cross_entropy", "presence", "severity"))
    assert math.isclose(float(terms["total"]), parts, rel_tol=1e-5)


def test_training_steps_decrease_loss(published_dir, one_thread):
    torch.manual_seed(3)
    model = saclip.create_model(f"local-dir:{published_dir}")
    model.settings.freeze_text = False
    optimizer = make_optimizer(model, lr=3e-3)
    batch = _toy_batch()
    losses = [training_step(model, batch, optimizer)["total"] for _ in range(25)]
    assert losses[-1] < 0.6 * losses[0], losses
    assert losses[-1] < min(losses[:5]), losses


def test_finetune_from_local_dir_freezes_text_tower(published_dir, one_thread):
    model = saclip.create_model(f"local-dir:{published_dir}")
    assert model.settings.freeze_text
    assert not any(p.requires_grad for p in model.text_parameters())
    text_before = [p.detach().clone() for p in model.text_parameters()]
    image_before = [p.detach().clone() for p in model.clip.visual.parameters()]
    # the published weights were loaded (not a fresh random init)
    from safetensors.torch import load_file

    published = load_file(str(published_dir / "open_clip_model.safetensors"))
    assert torch.equal(model.clip.visual.conv1.weight, published["visual.conv1.weight"])
    optimizer = make_optimizer(model, lr=1e-2, tower_lr=1e-3)
    training_step(model, _toy_batch(), optimizer)
    assert all(torch.equal(a, b) for a, b in zip(text_before, model.text_parameters(), strict=True))
    changed = [not torch.equal(a, b) for a, b in zip(image_before, model.clip.visual.parameters(), strict=True)]
    assert sum(changed) >= len(changed) // 2


def test_save_load_round_trip(tiny_model, tmp_path):
    tiny_model.eval()
    folder = saclip.save_checkpoint(tiny_model, tmp_path / "ckpt", training={"steps": 3})
    settings = json.loads((folder / saclip.SETTINGS_FILE).read_text())
    assert settings["training"] == {"steps": 3} and settings["freeze_text"]
    loaded = saclip.load_checkpoint(folder)
    images = torch.rand(2, 3, 32, 32)
    for key in ("logits", "presence_logits", "severity"):
        assert torch.allclose(tiny_model(images)[key], loaded(images)[key], atol=1e-5)
    assert loaded.settings.crops == 2


def test_default_backend_is_small_and_saves_compactly(tmp_path):
    model = saclip.create_model("default")
    assert model.settings.image_size == 160 and not model.settings.freeze_text
    model.eval()
    assert model(torch.rand(1, 3, 160, 160))["logits"].shape == (1, len(CLASSES))
    folder = saclip.save_checkpoint(model, tmp_path / "default")
    assert (folder / saclip.WEIGHTS_FILE).stat().st_size < 8_000_000  # token table pruned to the prompts' rows
    loaded = saclip.load_checkpoint(folder)
    assert torch.allclose(loaded.text_features(), model.text_features(), atol=1e-5)


def test_missing_checkpoint_names_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="saclip_train"):
        saclip.load_checkpoint(tmp_path)


def test_measurement_input_path(published_dir):
    model = saclip.create_model(f"local-dir:{published_dir}", use_measurements=True)
    n = len(model.settings.measurement_names)
    assert n > 10
    model.eval()
    with pytest.raises(ValueError, match="measure"):
        model(torch.rand(1, 3, 32, 32))
    assert model(torch.rand(2, 3, 32, 32), torch.rand(2, n))["logits"].shape == (2, len(CLASSES))
    report = saclip.SAClipAssessor(model, with_parameters=False).assess(procedural_image(64, 64, seed=3))
    assert "noise_sigma" in report.measurements


def test_synthetic_samples_and_batch_assembly():
    rng = np.random.default_rng(0)
    clean = procedural_image(96, 96, seed=0)
    sample = make_sample(clean, [Degradation.NOISE, Degradation.HAZE], 48, rng)
    assert sample["image"].shape == sample["clean"].shape == (3, 48, 48)
    assert not np.allclose(sample["image"], sample["clean"])
    assert sample["target"].sum() == pytest.approx(1.0) and sample["target"][0] == 0
    assert sample["presence"].sum() == 2
    clean_sample = make_sample(clean, [], 48, rng)
    assert np.array_equal(clean_sample["image"], clean_sample["clean"]) and clean_sample["target"][0] == 1
    samples = [sample, clean_sample]
    collated = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in sample}
    collated["has_clean"] = torch.tensor([1.0, 0.0])
    batch = assemble_batch(collated)
    assert batch["images"].shape[0] == 3 and batch["targets"][2, 0] == 1  # the ride-along clean crop is "no"
    assert batch["sa_rows"].tolist() == [2]
    assert torch.equal(batch["sa_targets"][0], collated["target"][0])


def test_classification_metrics():
    matrix = confusion_matrix([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    scores = classification_scores(matrix, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["per_class"]["b"]["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert scores["per_class"]["c"]["f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    true = np.array([[1, 1, 0], [0, 1, 0]], bool)
    predicted = np.array([[1, 0, 0], [0, 1, 1]], bool)
    f1 = multilabel_f1(true, predicted)
    assert f1["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert f1["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert severity_mae(np.array([[0.5, 0.2]]), np.array([[0.7, 0.9]]), np.array([[1, 0]])) == pytest.approx(0.2)


def _run_assess(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_assess_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["assess", *argv])
    return args.func(args)


def test_assess_cli_json(tiny_model, tmp_path, capsys, monkeypatch):
    paths = []
    for i in range(2):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray((procedural_image(64, 64, seed=i) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    checkpoint = saclip.save_checkpoint(tiny_model, tmp_path / "ckpt")
    assert _run_assess(["--json", "--assessor", f"saclip:{checkpoint}", *paths]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"photo0.png", "photo1.png"}
    entry = data["photo0.png"]
    assert entry["assessor"] == "saclip" and entry["softmax_dominant"] in CLASSES
    assert set(entry["estimates"]) == {d.value for d in Degradation}
    assert "quality" in entry["estimates"]["jpeg"]["params"]

    monkeypatch.setenv("RESTORA_ASSESSOR", "estimators")  # without --assessor: the agent's, as the environment says
    assert _run_assess(paths[:1]) == 0
    text = capsys.readouterr().out
    assert "photo0.png" in text and "[estimators" in text and "dominant:" in text
    monkeypatch.setenv("RESTORA_ASSESSOR", f"saclip:{checkpoint}")
    assert _run_assess(paths[:1]) == 0
    assert "[saclip" in capsys.readouterr().out

    assert _run_assess(["--assessor", "saclip:" + str(tmp_path / "none"), *paths]) == 2
    assert "saclip_train" in capsys.readouterr().err


def test_sample_cache_is_resumable_and_refuses_other_settings(tmp_path, monkeypatch):
    from agent.perception import saclip_train

    monkeypatch.setattr(saclip_train, "CACHE_CHUNK", 3)
    photos = [procedural_image(80, 80, seed=i) for i in range(2)]
    names = ["noise_sigma", "dark_fraction"]
    folder = tmp_path / "cache"
    first = saclip_train.build_cache(folder, photos, 5, 32, seed=4, measurement_names=names)
    assert first["image"].shape == first["clean"].shape == (6, 3, 32, 32)  # rounded up to two chunks
    assert first["image"].dtype == np.uint8 and first["measurements"].shape == (6, 2)
    # clean rows carry clean measurements only where the clean crop rides along
    assert np.all(first["clean_measurements"][first["has_clean"] < 0.5] == 0)
    (folder / "chunk_00001.npz").unlink()  # an interrupted build: the missing chunk is made again, identically
    again = saclip_train.build_cache(folder, photos, 5, 32, seed=4, measurement_names=names)
    for key in first:
        assert np.array_equal(first[key], again[key]), key
    with pytest.raises(ValueError, match="other settings"):
        saclip_train.build_cache(folder, photos, 5, 32, seed=5, measurement_names=names)
    with pytest.raises(ValueError, match="other settings"):
        saclip_train.build_cache(folder, photos, 5, 32, seed=4, measurement_names=names, content_jitter=1.0)
    assert saclip_train.default_cache_dir(32, 4, names) != saclip_train.default_cache_dir(32, 4, names, 0.1, 1.0)
    batch = saclip_train.cached_batch(first, np.random.default_rng(0), 4)
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert float(batch["image"].max()) <= 1.0
    assembled = assemble_batch(batch)
    assert assembled["measurements"].shape[0] == assembled["images"].shape[0]


def test_model_card_records_training_and_held_out_evaluation(tiny_model, tmp_path):
    from agent.perception.evaluate import evaluate_assessor
    from agent.perception.saclip_train import write_model_card

    training = {"steps": 12, "batch_size": 4, "lr": 0.002, "seed": 3, "cache_samples": 500, "train_photos": 9}
    training["validation"] = {"accuracy": 0.25, "clean_no_rate": 0.5}
    folder = saclip.save_checkpoint(tiny_model, tmp_path / "ckpt", training=training)
    card = write_model_card(folder).read_text()
    assert "12 steps, batch 4" in card and "accuracy: 0.250" in card and "Not run yet" in card
    assessor = saclip.SAClipAssessor(folder, with_parameters=False)
    assert assessor.folder == folder
    photo = procedural_image(48, 48, seed=2)
    result = evaluate_assessor(assessor, [{"image": photo, "labels": [], "severity": {}}], [])
    card = write_model_card(folder, result).read_text()
    assert "Not run yet" not in card and "single degradations (1 crops)" in card


def test_hybrid_calibration_fits_saves_and_keeps_the_evaluation_on_the_card(tiny_model, tmp_path, one_thread):
    from agent.perception.evaluate import evaluate_assessor
    from agent.perception.saclip_train import EVALUATION_FILE, HYBRID_GRID, finish_hybrid

    folder = saclip.save_checkpoint(tiny_model, tmp_path / "ckpt", training={"steps": 3})
    clean = [{"image": procedural_image(48, 48, seed=2), "labels": [], "severity": {}}]
    evaluation = evaluate_assessor(saclip.SAClipAssessor(folder, with_parameters=False), clean, [])
    (folder / EVALUATION_FILE).write_text(json.dumps(evaluation))
    model = saclip.load_checkpoint(folder)
    photos = [procedural_image(72, 72, seed=i) for i in range(2)]
    args = argparse.Namespace(seed=0, hybrid_per_class=1, hybrid_policy="default")
    fitted = finish_hybrid(model, folder, photos, args)
    # 11 single crops, 4 mixtures and those 4 after the agent's first step
    assert fitted["samples"] == 11 + 4 + 4 and set(fitted["weights"]) == {d.value for d in TYPES}
    assert all(w in HYBRID_GRID for w in fitted["weights"].values())
    reloaded = saclip.load_checkpoint(folder)
    assert reloaded.settings.hybrid_weights == fitted["weights"]
    assert reloaded.settings.training["hybrid_calibration"]["policy"] == "default"
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Hybrid assessor" in card and "Not run yet" not in card
    hybrid = saclip.SAClipAssessor(folder, blend="fitted")
    assert list(hybrid.blend) == [fitted["weights"][d.value] for d in TYPES]


def test_perceive_benchmark_times_fresh_images(capsys):
    from agent.perception import bench
    from agent.perception.assessor import EstimatorAssessor

    times = bench.time_assessor(EstimatorAssessor(), size=64, repeats=2)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert bench.main(["--size", "8"]) == 2
    assert bench.main(["--assessor", "saclip:/nonexistent/folder", "--size", "64", "--repeats", "1"]) == 2
    assert "train one with" in capsys.readouterr().err


def test_default_assessor_follows_env_and_falls_back_when_weights_are_missing(monkeypatch, tmp_path, caplog):
    from agent.perception import assessor as assessor_module

    monkeypatch.delenv(assessor_module.ASSESSOR_ENV, raising=False)
    assert assessor_module.DEFAULT_ASSESSOR == "hybrid"
    if (saclip.DEFAULT_WEIGHTS_DIR / saclip.WEIGHTS_FILE).is_file():  # the packaged SA-CLIP with the estimators
        default = assessor_module.default_assessor()
        assert default.name == "saclip+estimators" and np.allclose(default.blend, 0.5)
    monkeypatch.setattr(saclip, "DEFAULT_WEIGHTS_DIR", tmp_path / "not-packaged")
    with caplog.at_level("WARNING"):
        fallback = assessor_module.default_assessor()
    assert isinstance(fallback, assessor_module.EstimatorAssessor) and "unavailable" in caplog.text
    with pytest.raises(FileNotFoundError, match="train one with"):  # named explicitly: no silent fallback
        assessor_module.default_assessor("saclip")
    monkeypatch.setenv(assessor_module.ASSESSOR_ENV, "saclip:" + str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        assessor_module.default_assessor()
    monkeypatch.setenv(assessor_module.ASSESSOR_ENV, "estimators")
    assert isinstance(assessor_module.default_assessor(), assessor_module.EstimatorAssessor)
    with pytest.raises(ValueError, match="unknown assessor"):
        assessor_module.default_assessor("clip-magic")


def test_output_offsets_rebalance_decisions_and_never_hurt_the_fitting_data(tiny_model):
    from agent.perception.saclip_train import fit_class_bias, fit_output_biases, fit_presence_bias

    rng = np.random.default_rng(0)
    true_class = np.repeat(np.arange(3), 20)
    logits = rng.normal(0, 0.3, (60, 3))
    logits[np.arange(60), true_class] += 1.0
    logits[:, 0] -= 1.5  # class 0 is systematically under-scored: it almost never wins
    assert ((logits.argmax(1) == 0) & (true_class == 0)).sum() < 5
    bias = fit_class_bias(logits, true_class)
    assert bias[0] - bias[1:].max() >= 1.0
    assert ((logits + bias).argmax(1) == true_class).mean() >= (logits.argmax(1) == true_class).mean()
    assert ((logits + bias).argmax(1) == true_class).mean() > 0.9
    # presence: positives sit at logit -1, negatives at -3 -> the offset moves the boundary between them
    presence = np.where(np.arange(40)[:, None] % 2 == 0, -1.0, -3.0) * np.ones((1, 2))
    truth = (np.arange(40)[:, None] % 2 == 0) & np.array([[True, False]])
    offsets = fit_presence_bias(presence, truth)
    assert 1.0 < offsets[0] < 3.0 and offsets[1] == 0.0  # no positives of type 1: left alone
    # on a model: offsets are stored in the settings and applied by forward()
    photo = procedural_image(64, 64, seed=5)
    samples = [make_sample(photo, labels, 32, rng) for labels in ([], [Degradation.NOISE], [Degradation.HAZE]) * 2]
    fitted = fit_output_biases(tiny_model, samples)
    assert fitted["single_accuracy"]["after"] >= fitted["single_accuracy"]["before"]
    assert len(tiny_model.settings.class_bias) == len(CLASSES)
    tiny_model.eval()
    x = torch.from_numpy(samples[0]["image"][None])
    with_bias = tiny_model(x)["logits"]
    tiny_model.settings.class_bias = []
    assert torch.allclose(with_bias - tiny_model(x)["logits"], torch.tensor(fitted_bias_row(fitted)), atol=1e-5)


def fitted_bias_row(fitted: dict) -> list[float]:
    return [fitted["class_bias"][c] for c in CLASSES]


def test_hybrid_blends_estimator_probabilities_into_the_report(tiny_model):
    from agent.perception.assessor import EstimatorAssessor
    from agent.perception.estimators import measure

    photo = procedural_image(64, 64, seed=4)
    alone = saclip.SAClipAssessor(tiny_model).assess(photo)
    hybrid = saclip.SAClipAssessor(tiny_model, blend=0.5)
    mixed = hybrid.assess(photo)
    estimators = EstimatorAssessor().assess_measurements(measure(photo))
    assert hybrid.name == "saclip+estimators" and saclip.softmax_dominant(mixed) is None
    assert saclip.softmax_dominant(alone) is not None
    for degradation in TYPES:
        expected = 0.5 * alone.probability(degradation) + 0.5 * estimators.probability(degradation)
        assert mixed.probability(degradation) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="blend"):
        saclip.SAClipAssessor(tiny_model, blend=1.5)


def test_hybrid_weights_per_type_and_fitted_from_the_checkpoint(tiny_model):
    from agent.perception.assessor import EstimatorAssessor
    from agent.perception.estimators import measure

    photo = procedural_image(64, 64, seed=5)
    alone = saclip.SAClipAssessor(tiny_model).assess(photo)
    estimators = EstimatorAssessor().assess_measurements(measure(photo))
    per_type = saclip.SAClipAssessor(tiny_model, blend={"noise": 1.0, "haze": 0.25})
    report = per_type.assess(photo)
    assert report.probability(Degradation.NOISE) == pytest.approx(estimators.probability(Degradation.NOISE), abs=1e-6)
    haze = 0.75 * alone.probability(Degradation.HAZE) + 0.25 * estimators.probability(Degradation.HAZE)
    assert report.probability(Degradation.HAZE) == pytest.approx(haze, abs=1e-6)
    assert report.probability(Degradation.RAIN) == pytest.approx(alone.probability(Degradation.RAIN), abs=1e-6)
    # "fitted": the checkpoint's weights, else an even average
    tiny_model.settings.hybrid_weights = {}
    assert np.allclose(saclip.SAClipAssessor(tiny_model, blend="fitted").blend, 0.5)
    tiny_model.settings.hybrid_weights = {"jpeg": 0.75}
    try:
        fitted = saclip.SAClipAssessor(tiny_model, blend="fitted").blend
        assert fitted[TYPES.index(Degradation.JPEG)] == 0.75 and fitted.sum() == 0.75
    finally:
        tiny_model.settings.hybrid_weights = {}
    with pytest.raises(ValueError, match="unknown degradation"):
        saclip.SAClipAssessor(tiny_model, blend={"fog": 0.5})
    with pytest.raises(ValueError, match="fitted"):
        saclip.SAClipAssessor(tiny_model, blend="best")


def test_restored_samples_take_the_agents_first_step_and_drop_its_label():
    from agent.perception.assessor import EstimatorAssessor
    from agent.perception.saclip_train import FirstStep, restored_samples
    from evals.synthesis import synthesize

    photo = procedural_image(64, 64, seed=6)
    degraded = synthesize(photo, [Degradation.NOISE, Degradation.JPEG], seed=2, severity=0.8).image
    mixture = {"image": degraded, "labels": ["noise", "jpeg"]}
    [restored] = restored_samples([mixture], FirstStep(), [EstimatorAssessor().assess(degraded)])
    assert restored["labels"] == ["noise"]  # MAIR's order undoes JPEG first
    assert restored["image"].shape == degraded.shape and not np.allclose(restored["image"], degraded)


def test_restored_training_samples_are_labelled_with_what_the_first_step_left():
    from agent.perception.saclip_train import FirstStep, SyntheticStream, make_restored_sample

    photo = procedural_image(96, 96, seed=8)
    calls = []

    def fake_step(image, labels, report=None):  # records what it was given; "removes" the first label
        calls.append(list(labels))
        return labels[0], np.clip(image * 0.5, 0, 1).astype(np.float32)

    sample = make_restored_sample(photo, 32, np.random.default_rng(3), fake_step)
    [labels] = calls
    assert 2 <= len(labels) <= 3
    left = labels[1:]
    assert sample["image"].shape == sample["clean"].shape == (3, 32, 32)
    present = [TYPES[i] for i in np.flatnonzero(sample["presence"])]
    assert sorted(present) == sorted(left)
    assert sample["target"][CLASSES.index(labels[0].value)] == 0.0
    assert np.isclose(sample["target"].sum(), 1.0)

    assert make_restored_sample(photo, 32, np.random.default_rng(3), lambda image, labels: (labels[0], None)) is None

    # the real first step: the policy's earliest type is undone by its first tool, with the crop's size kept
    step = FirstStep()
    first, restored = step(photo, [Degradation.HAZE, Degradation.NOISE])
    assert first == Degradation.NOISE and restored is not None and restored.shape == photo.shape

    stream = SyntheticStream([photo], 32, seed=1, p_restored=1.0)
    drawn = next(iter(stream))
    assert drawn["has_clean"] == 0.0 and drawn["presence"].sum() >= 1  # a mixture with one type undone


def test_fit_hybrid_weights_picks_the_better_detector_per_type():
    from agent.perception.saclip_train import fit_hybrid_weights

    truth = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]], bool)
    # type 0: SA-CLIP right, estimators wrong; type 1: the reverse; type 2: both right
    saclip_p = np.array([[0.9, 0.2, 0.8], [0.8, 0.9, 0.7], [0.1, 0.9, 0.2], [0.2, 0.1, 0.1]])
    estimator_p = np.array([[0.1, 0.9, 0.9], [0.2, 0.8, 0.9], [0.9, 0.1, 0.1], [0.8, 0.2, 0.0]])
    weights, scores = fit_hybrid_weights(saclip_p, estimator_p, truth, [0.5, 0.5, 0.5])
    assert weights[0] <= 0.25 and weights[1] >= 0.75
    assert weights[2] == 0.5  # a tie goes to the even average
    assert scores[0]["saclip"] == 1.0 and scores[0]["estimators"] == 0.0 and scores[0]["hybrid"] == 1.0
    assert all(s["hybrid"] >= max(s["saclip"], s["estimators"]) for s in scores)
    # a lower threshold (as the policy's haze 0.2) is where the blend is judged
    weights, _ = fit_hybrid_weights(saclip_p * 0.3, estimator_p * 0.3, truth, [0.2, 0.2, 0.2])
    assert weights[0] <= 0.25 and weights[1] >= 0.75


def test_content_jitter_keeps_a_clean_photo_in_range_and_varies_it():
    from agent.perception.saclip_train import jitter_content, scaled_crop

    photo = procedural_image(96, 128, seed=2)
    rng = np.random.default_rng(0)
    assert jitter_content(photo, rng, 0.0) is photo
    varied = jitter_content(photo, rng, 1.0)
    assert varied.shape == photo.shape and varied.dtype == np.float32
    assert 0.0 <= varied.min() and varied.max() <= 1.0 and not np.allclose(varied, photo)
    # channel means move by far less than the weakest synthetic colour cast would
    ratios = varied.reshape(-1, 3).mean(0) / photo.reshape(-1, 3).mean(0)
    assert np.all(np.abs(np.log(ratios)) < 0.25)
    crop = scaled_crop(photo, 48, np.random.default_rng(1), min_scale=0.5)
    assert crop.shape == (48, 48, 3) and crop.dtype == np.float32
    sample = make_sample(photo, [Degradation.NOISE], 32, np.random.default_rng(3), content_jitter=1.0)
    assert sample["image"].shape == sample["clean"].shape == (3, 32, 32)


@pytest.mark.skipif(not (saclip.DEFAULT_WEIGHTS_DIR / saclip.WEIGHTS_FILE).is_file(), reason="no packaged SA-CLIP")
@pytest.mark.parametrize(
    "folder",
    [None, saclip.DEFAULT_WEIGHTS_DIR.with_name("saclip-small"), saclip.DEFAULT_WEIGHTS_DIR.with_name("saclip-real")],
)
def test_packaged_checkpoints_load_and_recognise_strong_noise(folder):
    from evals.synthesis import synthesize

    assessor = saclip.SAClipAssessor(folder)
    assert len(assessor.model.settings.class_bias) == len(CLASSES)
    # the default takes the estimators' measurements; SACLIP-small (and its fine-tune on real photos) sees pixels only
    assert assessor.model.settings.use_measurements == (folder is None)
    photo = procedural_image(192, 192, seed=11)
    noisy = synthesize(photo, [Degradation.NOISE], seed=1, severity=1.0).image
    report = assessor.assess(noisy)
    assert report.probability(Degradation.NOISE) > 0.5
    assert saclip.softmax_dominant(report) == "noise"


def test_finetune_benchmark_writes_a_loadable_random_folder_and_derives_rates(tmp_path, monkeypatch, capsys):
    from agent.perception import bench_finetune, saclip_train

    folder = bench_finetune.write_random_folder("SACLIP-tiny", tmp_path / "clip")
    model = saclip.create_model(f"local-dir:{folder}")  # the published-weights path loads it
    assert model.settings.freeze_text and not any(p.requires_grad for p in model.text_parameters())
    with pytest.raises(ValueError, match="no architecture"):
        bench_finetune.write_random_folder("no-such-arch", tmp_path / "bad")

    seen: list[list[str]] = []

    def fake_main(argv):  # records the arguments and the training time a real run would write
        seen.append(argv)
        out = next(a.split("=", 1)[1] for a in argv if a.startswith("--out="))
        (tmp_path / out).mkdir(parents=True, exist_ok=True)
        (tmp_path / out / "saclip.json").write_text(json.dumps({"training": {"seconds": 8.0, "device": "cpu"}}))
        return 0

    monkeypatch.setattr(saclip_train, "main", fake_main)
    args = ["--backend", f"local-dir:{folder}", "--samples", "100", "--batch-size", "16", "--epochs", "2"]
    assert bench_finetune.main([*args, "--work", str(tmp_path / "work")]) == 0
    assert "--steps=13" in seen[0] and "--cache=100" in seen[0]  # ceil(2 * 100 / 16) steps
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["steps_per_second"] == pytest.approx(13 / 8.0)
    assert record["seconds_per_epoch"] == pytest.approx(8.0 * 100 / (13 * 16))


def test_project_configs_are_backends_trained_from_scratch():
    assert {"SACLIP-tiny", "SACLIP-small"} <= set(saclip.project_configs())
    assert saclip.parse_backend("SACLIP-small") == ("default", "SACLIP-small")
    model = saclip.create_model("SACLIP-small")
    assert model.settings.backend == "SACLIP-small" and not model.settings.freeze_text
    assert model.open_clip_config["model_cfg"]["vision_cfg"]["width"] == 24
    with pytest.raises(ValueError, match="SACLIP-small"):  # the error lists the project configs
        saclip.parse_backend("SACLIP-huge")


def test_time_budget_schedule_warms_up_then_decays_with_elapsed_time():
    from agent.perception.saclip_train import follow_time_budget, schedule_factor

    assert schedule_factor(0, 10, 0.0) == pytest.approx(0.1)  # warm-up counts steps
    assert schedule_factor(10, 10, 0.0) == pytest.approx(1.0)
    assert schedule_factor(50, 10, 0.5) == pytest.approx(0.05 + 0.95 * 0.5)
    assert schedule_factor(50, 10, 2.0) == pytest.approx(0.05)  # past the budget: the floor
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [parameter], "lr": 0.1}])
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    follow_time_budget(optimizer, step=100, warmup=10, elapsed=30.0, budget=60.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (0.05 + 0.95 * 0.5))


def test_training_under_a_time_budget_then_from_its_weights(published_dir, tmp_path, one_thread):
    from agent.perception import saclip_train

    shared = fake_shared(tmp_path / "shared", size=(72, 72))
    common = ["--shared", str(shared), "--batch-size", "4", "--val-images", "1", "--val-per-class", "1"]
    common += ["--val-mixed", "2", "--calibrate-per-class", "0", "--max-side", "72", "--warmup", "2"]
    first = tmp_path / "first"
    args = ["--backend", f"local-dir:{published_dir}", "--out", str(first), "--time-budget", "3", "--steps", "100000"]
    assert saclip_train.main([*args, "--half-weights", *common]) == 0
    from safetensors.torch import load_file

    stored = load_file(str(first / saclip.WEIGHTS_FILE))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    record = json.loads((first / saclip.SETTINGS_FILE).read_text())["training"]
    assert record["time_budget_s"] == 3 and 0 < record["steps"] < 100000 and record["seconds"] >= 3
    card = (first / "MODEL_CARD.md").read_text()
    assert "--time-budget 3 --steps 100000" in card and "--warmup 2" in card and "--half-weights" in card

    second = tmp_path / "second"
    args = ["--init-from", str(first), "--out", str(second), "--steps", "2", "--lr", "0"]
    assert saclip_train.main([*args, *common]) == 0  # lr 0: the weights must come through unchanged
    before, after = saclip.load_checkpoint(first), saclip.load_checkpoint(second)
    used = torch.unique(before.prompt_tokens)  # only the prompts' token rows are stored and reach the model
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a[used], b[used]) if name == saclip.TOKEN_EMBEDDING else torch.equal(a, b), name
    settings = json.loads((second / saclip.SETTINGS_FILE).read_text())
    assert settings["backend"] == f"local-dir:{published_dir}" and settings["training"]["steps"] == 2
    # resumed without repeating --init-from, the run still records where it started
    assert saclip_train.main(["--resume", "--out", str(second), "--steps", "3", "--lr", "0", *common]) == 0
    settings = json.loads((second / saclip.SETTINGS_FILE).read_text())
    assert settings["training"]["steps"] == 3
    first_stage, second_stage = saclip_train.reproduce_command(settings).split(" && ")
    assert f"--out {first} " in first_stage and "--time-budget 3" in first_stage and "--half-weights" in first_stage
    assert f"--init-from {first}" in second_stage and "--steps 3" in second_stage and "--lr 0" in second_stage
