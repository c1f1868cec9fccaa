"""Learned restorers: network shapes, training, weights round trip, tiling, tools, train/evaluate on a tiny dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agent.degradations import Degradation
from tests.fakes import fake_shared
from tools.base import ToolError, ToolRegistry
from tools.learned.nafnet import NAFNet, NAFNetConfig, count_parameters
from tools.learned.tiling import tiled_forward


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one thread avoids the synchronisation cost that dominates on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _restore_registry():
    """Importing the learned tools registers them; keep the process-wide registry as other test files expect it.

    The snapshot is taken after :func:`tools.default_registry`: the classical tools register on first import
    only, so a snapshot taken before it would drop them for every later test file.
    """
    from tools import default_registry
    from tools.base import REGISTRY

    default_registry()
    classes, instances = dict(REGISTRY._classes), dict(REGISTRY._instances)
    yield
    REGISTRY._classes.clear()
    REGISTRY._classes.update(classes)
    REGISTRY._instances.clear()
    REGISTRY._instances.update(instances)


TINY = NAFNetConfig(width=4, encoder_blocks=(1, 1), middle_blocks=1, decoder_blocks=(1, 1))


def _clean_crop(seed: int = 1) -> np.ndarray:
    """A random 48x48 RGB crop kept off black and white (0.1-0.9), for the tasks' mixture draws."""
    return np.random.default_rng(seed).random((48, 48, 3), dtype=np.float32) * 0.8 + 0.1


def _perturbed(config: NAFNetConfig = TINY, seed: int = 0) -> NAFNet:
    """A tiny network whose residual scales are non-zero, so every block really changes its input."""
    torch.manual_seed(seed)
    model = NAFNet(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("beta", "gamma")) or "condition" in name:
                param.normal_(0.0, 0.3)
    return model.eval()


def test_forward_keeps_shape_for_odd_sizes_and_batches():
    model = _perturbed()
    for shape in [(1, 3, 16, 16), (2, 3, 37, 23)]:
        out = model(torch.rand(shape))
        assert out.shape == shape
        assert torch.isfinite(out).all()


def test_fresh_network_starts_close_to_identity():
    model = NAFNet(TINY).eval()
    x = torch.rand(1, 3, 32, 32)
    # Only intro/ending/down/up convs act at init (NAF blocks are identities); the global residual dominates.
    assert (model(x) - x).abs().mean() < 0.5
    assert count_parameters(model) > 0


def test_conditioning_changes_output_and_is_checked():
    config = NAFNetConfig(width=4, encoder_blocks=(1,), middle_blocks=1, decoder_blocks=(1,), condition_dim=5)
    model = _perturbed(config)
    x = torch.rand(2, 3, 16, 16)
    a = model(x, torch.zeros(2, 5))
    b = model(x, torch.ones(2, 5))
    assert (a - b).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="condition"):
        model(x)
    with pytest.raises(ValueError, match="condition"):
        _perturbed()(x, torch.zeros(2, 5))


def test_config_round_trip_and_validation():
    config = NAFNetConfig.from_dict(json.loads(json.dumps(TINY.to_dict())))
    assert config == TINY
    with pytest.raises(ValueError, match="same length"):
        NAFNetConfig(encoder_blocks=(1, 1), decoder_blocks=(1,))
    with pytest.raises(ValueError, match="unknown"):
        NAFNetConfig.from_dict({"widht": 8})


def test_a_few_training_steps_lower_the_loss():
    from tools.learned.train import loss_fn

    torch.manual_seed(0)
    model = NAFNet(TINY)
    clean = torch.rand(4, 3, 24, 24)
    clean = torch.nn.functional.avg_pool2d(clean, 3, 1, 1)  # smooth, so noise is separable from content
    noisy = clean + 0.1 * torch.randn_like(clean)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    criterion = loss_fn("l1")
    losses = []
    for _ in range(30):
        loss = criterion(model(noisy), clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * losses[0]


def test_weights_round_trip_through_safetensors(tmp_path):
    from tools.learned.train import load_model, save_weights

    model = _perturbed()
    save_weights(model, tmp_path, {"model": TINY.to_dict(), "task": "denoise"})
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_model(tmp_path)
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_tiling_is_exact_for_a_local_operator():
    conv = torch.nn.Conv2d(3, 3, 5, padding=2, padding_mode="reflect")
    x = torch.rand(1, 3, 70, 53)
    with torch.no_grad():
        whole = conv(x)
        tiled = tiled_forward(conv, x, tile=24, overlap=8)
    # A tile's own padded border (2 px for a 5x5 kernel) gets ~zero weight where a neighbour covers it.
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 5e-3


def test_tiled_matches_untiled_network_within_tolerance():
    model = _perturbed()
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_forward(model, x, tile=40, overlap=16)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.03


def test_tiling_with_scale():
    def upscale(t):
        return torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")

    x = torch.rand(1, 3, 50, 30)
    out = tiled_forward(upscale, x, tile=20, overlap=6, scale=2)
    assert out.shape == (1, 3, 100, 60)
    assert torch.allclose(out, upscale(x), atol=1e-5)


def test_tool_without_weights_names_the_training_command(tmp_path):
    from tools.learned.restorers import NAFNetDenoise

    tool = NAFNetDenoise(weights=tmp_path / "missing")
    image = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    with pytest.raises(ToolError, match=r"python -m tools\.learned\.train --task denoise"):
        tool(image)


def test_missing_weights_are_reported_without_loading_and_kept_out_of_the_runnable_tools(tmp_path, monkeypatch):
    from tools import default_registry
    from tools.learned.restorers import NAFNetDenoise

    assert "task denoise" in (NAFNetDenoise(weights=tmp_path / "missing").missing() or "")
    assert NAFNetDenoise(weights=tmp_path / "missing", model=_perturbed()).missing() is None
    registry = default_registry()
    monkeypatch.setenv("RESTORA_WEIGHTS", str(tmp_path / "empty"))
    runnable = registry.runnable()  # the weights folder is looked up at each check
    assert "nafnet_derain" not in runnable and "denoise_dct" in runnable
    from agent.planning.rule_planner import expand_candidates
    from agent.report import DegradationEstimate, DegradationReport
    from policies import load_policy

    report = DegradationReport(
        assessor="test", estimates={Degradation.RAIN: DegradationEstimate(probability=0.9, severity=0.5)}
    )
    tools = [a["tool"] for a in expand_candidates(load_policy("default"), registry, Degradation.RAIN, report)]
    assert tools and "nafnet_derain" not in tools and tools[0] == "derain_directional"  # no attempt spent on it


def test_tool_runs_an_injected_model_with_tiles():
    from tools.learned.restorers import NAFNetJpeg

    tool = NAFNetJpeg(model=_perturbed())
    image = np.random.default_rng(0).random((48, 40, 3), dtype=np.float32)
    whole = tool(image, {"tile": 0}).image
    tiled = tool(image, {"tile": 32}).image
    assert whole.shape == image.shape and whole.dtype == np.float32
    assert np.abs(whole - tiled).mean() < 0.03
    assert tool.spec.family == "learned" and Degradation.JPEG in tool.spec.restores


def test_register_all_adds_the_learned_tools(tmp_path, monkeypatch):
    import tools.learned as learned
    from tools.base import REGISTRY

    monkeypatch.setenv("RESTORA_HOME", str(tmp_path))  # an empty user catalogue
    names = learned.register_all()
    assert {"nafnet_denoise", "nafnet_jpeg", "nafnet_derain", "nafnet_lowlight"} <= set(names)
    assert "nafnet_denoise" in REGISTRY
    assert isinstance(ToolRegistry(), ToolRegistry)


def test_train_resume_and_evaluate_on_a_tiny_dataset(tmp_path):
    from tools.learned.evaluate import evaluate_and_record
    from tools.learned.train import CHECKPOINT_NAME, TrainSettings, split_images, train

    shared = fake_shared(tmp_path / "shared")
    out = tmp_path / "weights" / "denoise"
    settings = TrainSettings(
        task="denoise", steps=2, batch_size=2, crop=24, val_images=1, val_every=2, checkpoint_every=1
    )
    checkpoints = tmp_path / "checkpoints"
    train(settings, shared, out, model_config=TINY.to_dict(), progress=False, checkpoint_dir=checkpoints)
    assert (checkpoints / CHECKPOINT_NAME).is_file() and not (out / CHECKPOINT_NAME).exists()
    settings.steps = 4
    record = train(settings, shared, out, resume=True, progress=False, checkpoint_dir=checkpoints)
    assert [h["step"] for h in record["history"]] == [2, 4]
    assert record["training"]["schedule"] == [{"from_step": 0, "steps": 2}, {"from_step": 2, "steps": 4}]
    assert len(record["data"]["split"]["val"]) == 1
    assert split_images(["a", "b", "c"], 1, 0) == split_images(["a", "b", "c"], 1, 0)

    results = evaluate_and_record("denoise", out, shared, limit=1, crop=48)
    alone = ["sigma 0-15", "sigma 15-30", "sigma 30-50"]
    assert list(results["bands"]) == alone + [f"in mixtures: {band}" for band in alone]  # trained inside them too
    row = results["bands"]["sigma 30-50"]
    assert row["denoise_dct"] > row["input"] + 1.0  # the classical rival really denoises
    card = (out / "MODEL_CARD.md").read_text()
    assert "Held-out evaluation" in card and "denoise_dct" in card


def test_time_budget_with_synthesis_workers_stops_and_records_the_steps(tmp_path):
    from tools.learned.train import TrainSettings, cosine_lr, reproduce_command, train

    shared = fake_shared(tmp_path / "shared")
    out = tmp_path / "weights" / "jpeg"
    settings = TrainSettings(
        task="jpeg", steps=10_000, batch_size=2, crop=24, val_images=1, val_every=10_000, workers=1, time_budget_s=3.0
    )
    record = train(settings, shared, out, model_config=TINY.to_dict(), progress=False, checkpoint_dir=tmp_path / "ck")
    training = record["training"]
    assert 0 < training["steps_done"] < 10_000 and training["seconds"] >= 3.0
    assert training["schedule"] == [{"from_step": 0, "time_budget_s": 3.0}]
    assert record["history"][-1]["step"] == training["steps_done"]  # validated when the budget ran out
    assert cosine_lr(settings.lr, settings.min_lr, 0.0) == settings.lr
    assert cosine_lr(settings.lr, settings.min_lr, 1.0) == settings.min_lr
    command = reproduce_command("jpeg", training, record["model"])
    assert "--workers 1" in command and "--time-budget 3" in command and "--crop 24" in command
    assert "over a 3 s time budget" in (out / "MODEL_CARD.md").read_text()

    settings.time_budget_s = 4.0  # resumed with a longer budget: the schedule records the change
    resumed = train(settings, shared, out, resume=True, progress=False, checkpoint_dir=tmp_path / "ck")
    assert resumed["training"]["schedule"][-1] == {"from_step": training["steps_done"], "time_budget_s": 4.0}
    assert resumed["training"]["steps_done"] > training["steps_done"]
    assert "towards a 4 s time budget" in (out / "MODEL_CARD.md").read_text()


def test_all_in_one_task_draws_mixtures_and_its_tool_declares_every_type():
    from tools.learned.restorers import RESTORERS
    from tools.learned.tasks import ALL_IN_ONE, ALL_IN_ONE_TYPES, SINGLE_TASKS, get_task

    assert get_task("all_in_one") is ALL_IN_ONE
    assert RESTORERS["all_in_one"].spec.restores == ALL_IN_ONE_TYPES
    assert set(SINGLE_TASKS) >= set(ALL_IN_ONE_TYPES)  # every type has bands and classical rivals to face
    rng = np.random.default_rng(0)
    clean = np.random.default_rng(1).random((48, 48, 3), dtype=np.float32)
    sizes, presets = set(), set()
    for _ in range(30):
        degraded, applied = ALL_IN_ONE.sample(clean, rng)
        assert degraded.shape == clean.shape and not np.allclose(degraded, clean)
        assert len(set(applied["types"])) == len(applied["types"])
        assert {Degradation(t) for t in applied["types"]} <= set(ALL_IN_ONE_TYPES)
        sizes.add(len(applied["types"]))
        presets.add(applied["preset"])
    assert sizes == {1, 2, 3} and presets == {"default", "mio100"}
    _, applied = ALL_IN_ONE.degrade_band(clean, rng, ALL_IN_ONE.bands[2])
    assert len(applied["types"]) == 3


def test_all_in_one_is_evaluated_per_degradation_against_its_classical_rivals(tmp_path):
    from tools.learned.evaluate import evaluate
    from tools.learned.tasks import ALL_IN_ONE_TYPES, SINGLE_TASKS
    from tools.learned.train import reproduce_command, save_weights

    shared = fake_shared(tmp_path / "shared")
    config = NAFNetConfig(width=4, encoder_blocks=(1, 2), middle_blocks=1, decoder_blocks=(1, 1))
    record = {"model": config.to_dict(), "task": "all_in_one"}
    save_weights(_perturbed(config), tmp_path / "aio", record)
    results = evaluate("all_in_one", tmp_path / "aio", shared, limit=1, crop=48)
    expected = {f"{d.value}: {band.label}" for d in ALL_IN_ONE_TYPES for band in SINGLE_TASKS[d].bands}
    assert set(results["bands"]) == expected
    haze = results["bands"]["haze: severity 0.67-1"]
    assert haze["best_classical"] == "dehaze_dcp" and "learned" in haze
    command = reproduce_command("all_in_one", {"steps": 5}, config.to_dict())
    assert "--encoder-blocks 1 2" in command and "--middle-blocks 1" in command and "--width 4" in command


def test_init_from_continues_trained_weights_with_a_fresh_schedule(tmp_path):
    from safetensors.torch import load_file

    from tools.learned.train import TrainSettings, reproduce_command, train

    shared = fake_shared(tmp_path / "shared")
    first = tmp_path / "first"
    settings = TrainSettings(task="jpeg", steps=2, batch_size=2, crop=24, val_images=1, val_every=2)
    train(settings, shared, first, model_config=TINY.to_dict(), progress=False, checkpoint_dir=tmp_path / "ck1")
    with pytest.raises(ValueError, match="holds a 'jpeg' model"):
        train(TrainSettings(task="denoise", init_from=str(first)), shared, tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        train(TrainSettings(task="jpeg", init_from=str(tmp_path / "none")), shared, tmp_path / "x", progress=False)

    second = tmp_path / "second"
    settings = TrainSettings(task="jpeg", steps=0, batch_size=2, crop=24, val_images=1, init_from=str(first))
    record = train(settings, shared, second, progress=False, checkpoint_dir=tmp_path / "ck2")
    start, end = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert all(torch.equal(start[name], end[name]) for name in start)  # zero steps: exactly the weights loaded
    assert record["model"] == json.loads((first / "config.json").read_text())["model"]  # architecture from there
    assert record["initialised_from"]["folder"] == str(first) and record["initialised_from"]["steps_done"] == 2
    assert f"--init-from {first}" in reproduce_command("jpeg", record["training"], record["model"])
    assert "Started from the weights in" in (second / "MODEL_CARD.md").read_text()

    settings = TrainSettings(task="jpeg", steps=2, batch_size=2, crop=24, val_images=1, init_from=str(first))
    train(settings, shared, second, progress=False, checkpoint_dir=tmp_path / "ck2")
    settings = TrainSettings(task="jpeg", steps=3, batch_size=2, crop=24, val_images=1)  # resumed: no flag needed
    resumed = train(settings, shared, second, resume=True, progress=False, checkpoint_dir=tmp_path / "ck2")
    assert resumed["training"]["init_from"] == str(first) and resumed["initialised_from"]["folder"] == str(first)


def test_capture_noise_is_correlated_signal_dependent_and_compressed():
    from tools.learned.tasks import capture_noise

    flat = np.full((96, 96, 3), 0.5, np.float32)
    out, params = capture_noise(flat, np.random.default_rng(0), max_read=0.03, max_shot=0.0, qualities=(95, 95))
    assert out.shape == flat.shape and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    assert params["quality"] == 95 and 0.0 <= params["read"] <= 0.03 and params["shot"] == 0.0
    again, _ = capture_noise(flat, np.random.default_rng(0), max_read=0.03, max_shot=0.0, qualities=(95, 95))
    np.testing.assert_array_equal(out, again)  # seeded
    # the blur that correlates neighbouring pixels keeps the noise's strength (before compression)
    rng = np.random.default_rng(3)
    residuals = []
    for _ in range(20):
        noisy, p = capture_noise(flat, rng, max_read=0.05, max_shot=0.0, qualities=(100, 100))
        residuals.append(((noisy - flat)[..., 1].std() / max(p["read"], 1e-6), p["spread"], noisy - flat))
    ratios = [r for r, _, _ in residuals if r == r]
    assert 0.6 < float(np.median(ratios)) < 1.4
    spread_residual = max(residuals, key=lambda r: r[1])[2][..., 1]
    assert np.corrcoef(spread_residual[:, :-1].ravel(), spread_residual[:, 1:].ravel())[0, 1] > 0.5


def test_upscale_training_draws_include_capture_noise_but_its_evaluation_does_not():
    from tools.learned.tasks import get_task

    task = get_task("upscale")
    assert task.capture_share > 0 and task.capture_only_share > 0
    rng = np.random.default_rng(0)
    clean = np.random.default_rng(1).random((64, 64, 3), dtype=np.float32)
    kinds, deblocked = set(), 0
    for _ in range(40):
        degraded, params = task.sample(clean, rng)
        assert degraded.shape == clean.shape
        kinds.add("only" if "severity" not in params else "both" if "capture" in params else "task")
        deblocked += bool(params.get("deblocked") or params.get("capture", {}).get("deblocked"))
    assert kinds == {"only", "both", "task"}
    assert 0 < deblocked < 40  # part of the capture draws leave through the classical deblocker, as in the agent
    _, params = task.degrade_band(clean, rng, task.bands[1])
    assert "capture" not in params and 1 / 3 <= params["severity"] <= 2 / 3
    assert get_task("lowlight").capture_share == 0.0  # other tasks draw as before


def test_in_context_draws_keep_earlier_scene_effects_in_the_target_and_restore_later_ones():
    from agent.degradations import Degradation
    from tools.learned.tasks import Task, get_task, restored_context

    rng = np.random.default_rng(0)
    clean = np.random.default_rng(1).random((48, 48, 3), dtype=np.float32)
    plain = get_task("lowlight")
    degraded, target, _ = plain.sample_pair(clean, rng)
    assert target is clean and degraded.shape == clean.shape  # no context: the clean crop is the target
    task = Task(
        "motion_deblur",
        Degradation.MOTION_BLUR,
        "test",
        "severity",
        get_task("motion_deblur").bands,
        ("deblur_wiener",),
        context_share=1.0,
        context_kept=(Degradation.HAZE,),
        context_after=(Degradation.JPEG,),
        context_only_share=0.5,
    )
    seen_haze = seen_own = seen_only = 0
    for _ in range(30):
        degraded, target, params = task.sample_pair(clean, rng)
        assert degraded.shape == target.shape == clean.shape
        assert params["context"]  # an in-context draw always carries some context
        if "haze" in params["context"]:
            seen_haze += 1
            assert np.abs(target - clean).mean() > 0.01  # haze stays for the dehazing step
        else:
            assert target is clean
        seen_own += params["own"]
        seen_only += not params["own"]
    assert seen_haze and seen_own and seen_only
    compressed = rng.random((64, 64, 3), dtype=np.float32)
    from evals.synthesis import degrade

    jpeg_only, _ = degrade(compressed, Degradation.JPEG, np.random.default_rng(5))
    deblocked = restored_context(compressed, [Degradation.JPEG], np.random.default_rng(5))
    assert not np.allclose(deblocked, jpeg_only)  # the JPEG step was undone by the classical deblocker
    assert get_task("motion_deblur").context_share > 0


def test_model_card_says_where_each_context_degradation_goes():
    from tools.learned.tasks import get_task
    from tools.learned.train import _context_line

    assert _context_line(get_task("lowlight")) == ""
    defocus = _context_line(get_task("defocus_deblur"))
    assert "kept in the target (haze)" in defocus
    assert "undone by the classical tool the agent runs first (low_resolution, low_light, noise, jpeg;" in defocus
    assert "left, as a failed earlier step leaves it (motion_blur)" in defocus  # no classical undo for it
    assert "removed too" not in defocus and "none" not in defocus
    assert "removed too (defocus_blur)" in _context_line(get_task("motion_deblur"))
    assert "kept in the target, as missed by perception (low_light)" in _context_line(get_task("derain"))


def test_a_later_degradation_the_agent_missed_is_applied_alike_to_image_and_target():
    from agent.degradations import Degradation
    from tools.learned.tasks import Task, get_task

    clean = _clean_crop()
    task = Task(
        "derain",
        Degradation.RAIN,
        "test",
        "severity",
        get_task("derain").bands,
        ("derain_directional",),
        context_share=1.0,
        context_after_kept=(Degradation.LOW_LIGHT,),
    )
    rng = np.random.default_rng(0)
    for _ in range(6):
        degraded, target, params = task.in_context(clean, rng, own=False)
        assert params["context"] == ["low_light (kept)"]  # the only context, so always drawn
        assert target.mean() < clean.mean() - 0.02  # the target stays dark: the model must not brighten it
        np.testing.assert_array_equal(degraded, target)  # same darkening on both: nothing else to restore
        degraded, target, params = task.in_context(clean, rng, own=True)
        assert target.mean() < clean.mean() - 0.02 and not np.allclose(degraded, target)  # rain on top


def test_the_jpeg_model_learns_to_lift_only_the_compression_off_a_mixture():
    from tools.learned.tasks import get_task
    from tools.learned.train import _context_line

    task = get_task("jpeg")
    clean = _clean_crop()
    rng = np.random.default_rng(0)
    seen_noise = 0
    for _ in range(12):
        degraded, target, params = task.in_context(clean, rng, own=False)
        np.testing.assert_array_equal(degraded, target)  # no compression: what lies under it is not its job
        degraded, target, params = task.in_context(clean, rng, own=True)
        assert params["applied"]["quality"] and not np.allclose(degraded, target)
        if params["context"]:
            assert np.abs(target - clean).mean() > 1e-3  # the earlier degradations stay for later steps
        seen_noise += "noise" in params["context"]
    assert seen_noise  # noise under the blocks, the case where smoothing it starves the denoising step
    assert "kept in the target (haze, rain, defocus_blur, motion_blur, low_resolution, low_light, noise)" in (
        _context_line(task)
    )


def test_the_denoiser_leaves_what_arose_before_the_noise_to_later_steps_and_learns_real_camera_noise():
    from tools.learned.tasks import get_task
    from tools.learned.train import _context_line

    task = get_task("denoise")
    clean = _clean_crop()
    rng = np.random.default_rng(0)
    kept_only = 0
    for _ in range(12):
        degraded, target, params = task.in_context(clean, rng, own=False)
        if "jpeg" not in params["context"]:  # only what the later steps undo: nothing for the denoiser to do
            np.testing.assert_array_equal(degraded, target)
            assert np.abs(target - clean).mean() > 1e-3
            kept_only += 1
    assert kept_only
    kinds = {"capture" in params or "read" in params for _, params in (task.sample(clean, rng) for _ in range(40))}
    assert kinds == {True, False}  # some draws carry a real capture's correlated, compressed noise
    line = _context_line(task)
    assert "kept in the target (haze, rain, defocus_blur, motion_blur, low_resolution, low_light)" in line
    assert "undone by the classical tool the agent runs first (jpeg;" in line


def test_the_upscaler_removes_the_blur_from_before_the_lower_resolution_and_keeps_haze_and_rain():
    from tools.learned.tasks import get_task
    from tools.learned.train import _context_line

    task = get_task("upscale")
    clean = _clean_crop(seed=2)
    rng = np.random.default_rng(0)
    blurred_first = kept = 0
    for _ in range(30):
        degraded, target, params = task.in_context(clean, rng, own=True)
        assert params["applied"] and np.abs(degraded - target).mean() > 1e-3
        if {"haze", "rain"} & set(params["context"]):
            assert np.abs(target - clean).mean() > 1e-3  # left for the dehazing or deraining step
            kept += 1
        else:  # blur before the lower resolution, and what earlier steps undo, are all the upscaler's to remove
            np.testing.assert_array_equal(target, clean)
            blurred_first += bool({"motion_blur", "defocus_blur"} & set(params["context"]))
    assert blurred_first and kept
    line = _context_line(task)
    assert "kept in the target (haze, rain)" in line and "removed too (defocus_blur, motion_blur)" in line


def test_init_from_another_tasks_weights_needs_the_flag(tmp_path):
    from tools.learned.train import TrainSettings, reproduce_command, train

    shared = fake_shared(tmp_path / "shared")
    first = tmp_path / "first"
    settings = TrainSettings(task="defocus_deblur", steps=1, batch_size=2, crop=24, val_images=1, val_every=1)
    train(settings, shared, first, model_config=TINY.to_dict(), progress=False, checkpoint_dir=tmp_path / "ck1")
    with pytest.raises(ValueError, match="--init-other-task"):
        train(TrainSettings(task="motion_deblur", init_from=str(first)), shared, tmp_path / "x", progress=False)
    settings = TrainSettings(
        task="motion_deblur", steps=1, batch_size=2, crop=24, val_images=1, init_from=str(first), init_other_task=True
    )
    record = train(settings, shared, tmp_path / "second", progress=False, checkpoint_dir=tmp_path / "ck2")
    assert record["initialised_from"]["folder"] == str(first)
    assert "--init-other-task" in reproduce_command("motion_deblur", record["training"], record["model"])


def test_a_task_trained_in_mixtures_is_also_evaluated_in_mixtures(tmp_path):
    from tools.learned.evaluate import evaluate, markdown_table
    from tools.learned.train import save_weights

    shared = fake_shared(tmp_path / "shared")
    save_weights(_perturbed(TINY), tmp_path / "motion", {"model": TINY.to_dict(), "task": "motion_deblur"})
    results = evaluate("motion_deblur", tmp_path / "motion", shared, limit=1, crop=48)
    labels = list(results["bands"])
    assert labels[:3] == ["severity 0-0.33", "severity 0.33-0.67", "severity 0.67-1"]
    assert labels[3:] == [f"in mixtures: {label}" for label in labels[:3]]
    row = results["bands"]["in mixtures: severity 0.67-1"]
    assert row["best_classical"] == "deblur_wiener" and np.isfinite(row["learned"])
    assert "in mixtures: severity 0-0.33" in markdown_table(results)


def test_noise_level_condition_reads_the_noise_and_is_measured_on_every_training_input():
    from evals.synthesis import degrade
    from tools.learned.conditions import condition_dim, measure_condition
    from tools.learned.tasks import get_task
    from tools.learned.train import make_batch

    rng = np.random.default_rng(0)
    flat = np.full((96, 96, 3), 0.5, np.float32)
    noisy = np.clip(flat + rng.normal(0, 25 / 255, flat.shape), 0, 1).astype(np.float32)
    assert np.all(measure_condition("noise_level", flat) < 0.05)
    assert np.allclose(measure_condition("noise_level", noisy), 1.0, atol=0.15)  # 25/255 reads 1.0
    assert condition_dim(None) == 0 and condition_dim("noise_level") == 3
    textured = np.clip(
        0.5 + 0.2 * np.sin(np.arange(128) / 3.0)[:, None, None] + rng.normal(0, 0.05, (128, 128, 3)), 0, 1
    )
    compressed, _ = degrade(textured.astype(np.float32), Degradation.JPEG, rng, quality=20)
    assert measure_condition("jpeg_quality", compressed)[0] == pytest.approx(0.2, abs=0.05)
    assert measure_condition("jpeg_quality", compressed)[1] > 0.5  # a clear DCT lattice
    assert measure_condition("jpeg_quality", textured.astype(np.float32))[0] == 1.0
    assert measure_condition("jpeg_quality", flat[:16, :16]).tolist() == [1.0, 0.0, 0.0]  # too small to measure
    with pytest.raises(ValueError, match="unknown condition"):
        condition_dim("moon_phase")

    images = [rng.random((40, 40, 3), dtype=np.float32)]
    degraded, clean, conditions = make_batch(get_task("denoise"), images, 3, 24, np.random.default_rng(1))
    assert conditions.shape == (3, 0)  # unconditioned: nothing measured
    again = make_batch(get_task("denoise"), images, 3, 24, np.random.default_rng(1), condition="noise_level")
    assert np.array_equal(again[0], degraded) and np.array_equal(again[1], clean)  # the same draws
    assert again[2].shape == (3, 3)
    expected = [measure_condition("noise_level", np.ascontiguousarray(d.transpose(1, 2, 0))) for d in degraded]
    assert np.allclose(again[2], expected)


def test_conditioning_an_unconditioned_model_starts_from_its_outputs_and_trains(tmp_path):
    from tools.learned.restorers import NAFNetDenoise
    from tools.learned.train import TrainSettings, load_model, reproduce_command, train

    shared = fake_shared(tmp_path / "shared")
    blind = tmp_path / "blind"
    settings = TrainSettings(task="denoise", steps=1, batch_size=2, crop=24, val_images=1, val_every=1)
    train(settings, shared, blind, model_config=TINY.to_dict(), progress=False, checkpoint_dir=tmp_path / "ck1")
    image = torch.rand(1, 3, 32, 32)
    blind_model = load_model(blind)
    added = load_model(blind, condition="noise_level")
    assert added.config.condition_dim == 3
    with torch.no_grad():  # zero-initialised conditioning layers: the same outputs whatever the condition
        assert torch.allclose(added(image, torch.rand(1, 3) * 3), blind_model(image), atol=1e-6)

    conditioned = tmp_path / "conditioned"
    settings = TrainSettings(
        task="denoise",
        steps=3,
        batch_size=2,
        crop=24,
        val_images=1,
        val_every=3,
        init_from=str(blind),
        condition="noise_level",
    )
    record = train(settings, shared, conditioned, progress=False, checkpoint_dir=tmp_path / "ck2")
    assert record["condition"] == "noise_level" and record["model"]["condition_dim"] == 3
    assert "--condition noise_level" in reproduce_command("denoise", record["training"], record["model"])
    assert "Conditioned on `noise_level`" in (conditioned / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="trained with condition 'noise_level'"):
        train(
            TrainSettings(task="denoise", steps=4, condition="other"),
            shared,
            conditioned,
            resume=True,
            progress=False,
            checkpoint_dir=tmp_path / "ck2",
        )

    tool = NAFNetDenoise(weights=conditioned)
    noisy = np.random.default_rng(0).random((48, 40, 3), dtype=np.float32)
    whole, tiled = tool(noisy, {"tile": 0}).image, tool(noisy, {"tile": 32}).image
    assert tool.condition == "noise_level" and whole.shape == noisy.shape
    assert np.abs(whole - tiled).mean() < 0.03  # one condition for the whole image, shared by the tiles


def test_a_conditioned_model_without_a_condition_kind_is_refused():
    from tools.learned.restorers import NAFNetDenoise

    conditioned = _perturbed(
        NAFNetConfig(width=4, encoder_blocks=(1,), middle_blocks=1, decoder_blocks=(1,), condition_dim=3)
    )
    image = np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)
    with pytest.raises(ToolError, match="conditioned but no condition kind"):
        NAFNetDenoise(model=conditioned)(image, {})
    out = NAFNetDenoise(model=conditioned, condition="noise_level")(image, {"tile": 0})
    assert out.image.shape == image.shape


def test_inference_benchmark_times_the_condition_measurement_of_a_conditioned_model(tmp_path, monkeypatch):
    from tools.learned import bench, conditions

    calls = []
    real = conditions.measure_condition

    def counting(kind, image):
        calls.append(kind)
        return real(kind, image)

    monkeypatch.setattr(conditions, "measure_condition", counting)
    config = {"model": {**TINY.to_dict(), "condition_dim": 3}, "condition": "noise_level"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert bench.benchmark(tmp_path, size=32, repeats=2) > 0
    assert calls == ["noise_level"] * 3  # the warm-up pass and the two timed ones
    assert bench.benchmark(None, size=32, repeats=1) > 0


def test_near_clean_check_scores_the_input_and_each_denoiser(tmp_path):
    from tools.learned import near_clean
    from tools.learned.train import TrainSettings, train

    reference = np.full((8, 8, 3), 0.5, np.float32)
    assert near_clean.rgb_psnr(reference, reference) == float("inf")
    assert near_clean.rgb_psnr(reference + 0.1, reference) == pytest.approx(20.0, abs=1e-4)
    shared = fake_shared(tmp_path / "shared")
    weights = tmp_path / "tiny"
    settings = TrainSettings(task="denoise", steps=1, batch_size=2, crop=24, val_images=1, val_every=1)
    train(settings, shared, weights, model_config=TINY.to_dict(), progress=False, checkpoint_dir=tmp_path / "ck")
    scores = near_clean.near_clean_scores(shared, [weights], (0.0, 5.0), images=2, crop=32)
    assert scores[0.0]["input"] == float("inf") and np.isfinite(scores[0.0][str(weights)])
    assert scores[5.0]["input"] == pytest.approx(34.2, abs=1.0)  # sigma 5 of 255 on mid-grey-ish photos
    assert near_clean.main(["--shared", str(tmp_path / "missing")]) == 2
