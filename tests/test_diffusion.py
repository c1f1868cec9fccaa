"""The diffusion restorer with tiny random components: sampler, HFG, tiling, converter, SCM and the tool."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from agent.degradations import ALL_DEGRADATIONS, Degradation  # noqa: E402
from agent.report import DegradationEstimate, DegradationReport  # noqa: E402
from tools.base import ToolError, ToolRegistry  # noqa: E402
from tools.diffusion import DiffusionRestore, register  # noqa: E402
from tools.diffusion import convert as cv  # noqa: E402
from tools.diffusion.hfg import (  # noqa: E402
    HFGConfig,
    fft_high_pass,
    high_frequency_loss,
    predict_x0,
    sobel_magnitude,
)
from tools.diffusion.pipeline import (  # noqa: E402
    ModelNotFoundError,
    load_components,
    make_scheduler,
    sd15_unet_config,
    tiny_components,
    tiny_tokenizer,
)
from tools.diffusion.sampler import (  # noqa: E402
    SamplerConfig,
    branch_batch,
    build_conditioning,
    build_e_auto,
    combine_guidance,
    restore,
)
from tools.diffusion.scm import StructureCorrector, load_corrector, save_corrector, task_weight  # noqa: E402
from tools.diffusion.tiling import tiled_apply, window_starts  # noqa: E402
from tools.diffusion.train_scm import one_step_estimate, scm_loss, training_step  # noqa: E402

NO_HFG = HFGConfig(enabled=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded on a shared machine; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return tiny_components(seed=0)


@pytest.fixture(scope="module")
def pattern():
    """A 32x32 image with plenty of high-frequency structure."""
    x = torch.linspace(0, 1, 32)
    return (0.5 + 0.4 * torch.sin(x[None, :] * 30) * torch.cos(x[:, None] * 20)).expand(1, 3, 32, 32).clone()


def test_package_import_is_light():
    heavy = "('torch', 'diffusers', 'transformers')"
    code = f"import sys, tools.diffusion; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------


def test_restore_shapes_and_seed_determinism(tiny):
    image = torch.rand(1, 3, 22, 37, generator=torch.Generator().manual_seed(0))
    cond = build_conditioning(tiny, "remove the noise")
    first = restore(tiny, image, cond, SamplerConfig(steps=2, seed=3, hfg=NO_HFG))
    again = restore(tiny, image, cond, SamplerConfig(steps=2, seed=3, hfg=NO_HFG))
    other = restore(tiny, image, cond, SamplerConfig(steps=2, seed=4, hfg=NO_HFG))
    assert first.image.shape == (1, 3, 22, 37)
    assert 0.0 <= float(first.image.min()) and float(first.image.max()) <= 1.0
    assert torch.equal(first.image, again.image)
    assert (first.image - other.image).abs().mean() > 1e-3
    assert len(first.step_seconds) == 2


def test_denoise_below_one_runs_the_tail_of_the_schedule(tiny, pattern):
    cond = build_conditioning(tiny, "remove the noise")
    result = restore(tiny, pattern, cond, SamplerConfig(steps=10, denoise=0.3, hfg=NO_HFG))
    assert result.info["steps"] == 3
    assert result.image.shape == pattern.shape


def test_guidance_formulas():
    full, second, third = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(-1.0)
    # InstructPix2Pix: second = image-only, third = unconditional
    ip2p = combine_guidance(full, second, third, "instructpix2pix", 7.5, 1.5)
    assert ip2p == pytest.approx(-1.0 + 7.5 * (3.0 - 2.0) + 1.5 * (2.0 - (-1.0)))
    # PromptFix: second = image-only (empty text), third = text-only (no image)
    promptfix = combine_guidance(full, second, third, "promptfix", 6.5, 1.25)
    assert promptfix == pytest.approx(0.5 * (2.0 - 1.0) + 6.5 * (3.0 - 2.0) + 1.25 * (3.0 - (-1.0)))
    same = torch.tensor(0.7)
    for formula in ("instructpix2pix", "promptfix"):  # weights sum to one: agreeing branches pass through
        assert combine_guidance(same, same, same, formula, 5.0, 2.0) == pytest.approx(0.7)


def test_branch_batches_follow_each_formula(tiny):
    cond = build_conditioning(tiny, "remove the noise")
    latent = torch.ones(1, 4, 4, 4)
    contexts, images = branch_batch("instructpix2pix", cond, latent)
    assert torch.equal(contexts[0], cond.text[0]) and torch.equal(contexts[2], cond.null[0])
    assert images[2].abs().sum() == 0 and images[1].abs().sum() > 0
    contexts, images = branch_batch("promptfix", cond, latent)
    assert torch.equal(contexts[2], cond.text[0]) and torch.equal(contexts[1], cond.null[0])
    assert images[2].abs().sum() == 0


def test_conditioning_concatenates_auxiliary_and_e_auto(tiny):
    main = build_conditioning(tiny, "remove the haze")
    both = build_conditioning(tiny, "remove the haze", auxiliary="a foggy street at night")
    tokens = main.text.shape[1]
    assert both.text.shape[1] == 2 * tokens and both.null.shape == both.text.shape
    assert torch.equal(both.text[:, :tokens], main.text)
    e_auto = build_e_auto(tiny, {"haze": 0.7, "noise": 0.3, "rain": 0.0})
    assert e_auto.shape == (1, tokens, tiny.cross_attention_dim)
    haze = tiny.encode_prompt(["A photo needs haze artifact reduction", "A photo needs noise artifact reduction"])
    assert torch.allclose(e_auto[0], 0.7 * haze[0] + 0.3 * haze[1], atol=1e-5)
    pooled = build_conditioning(tiny, e_auto=torch.zeros(tiny.cross_attention_dim))
    assert pooled.text.shape == (1, 1, tiny.cross_attention_dim)
    with pytest.raises(ValueError, match="width"):
        build_conditioning(tiny, e_auto=torch.zeros(7))
    with pytest.raises(ValueError, match="nothing conditions"):
        build_conditioning(tiny)


# ----------------------------------------------------------------------------------------------
# High-frequency guidance
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prediction"),
    [
        ("euler_a", "epsilon"),
        ("euler", "epsilon"),
        ("euler", "v_prediction"),
        ("lms", "epsilon"),
        ("ddim", "epsilon"),
        ("ddim", "v_prediction"),
        ("ddpm", "epsilon"),
    ],
)
def test_x0_estimate_matches_the_scheduler(name, prediction):
    extra = {"clip_sample": False} if name in ("ddim", "ddpm") else {}
    scheduler = make_scheduler(name, {"prediction_type": prediction, **extra})
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    for index in (0, 4, 8):
        t = scheduler.timesteps[index]
        if hasattr(scheduler, "_step_index"):
            scheduler._step_index = index  # as if the sampler had reached step `index`
        sample = torch.randn(1, 4, 8, 8, generator=generator) * float(scheduler.init_noise_sigma)
        output = torch.randn(1, 4, 8, 8, generator=generator)
        mine = predict_x0(scheduler, sample, output, t)
        kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        theirs = scheduler.step(output, t, sample, **kwargs).pred_original_sample
        assert torch.allclose(mine, theirs, atol=1e-4, rtol=1e-4), (name, prediction, index)


def test_x0_estimate_uses_k_diffusion_scaling_not_division_by_sigma():
    scheduler = make_scheduler("euler_a")
    scheduler.set_timesteps(20)
    t = scheduler.timesteps[-1]
    scheduler._step_index = len(scheduler.timesteps) - 1
    sigma = float(scheduler.sigmas[-2])
    clean = torch.full((1, 4, 2, 2), 0.5)
    eps = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    z = clean + sigma * eps  # k-diffusion latent
    assert torch.allclose(predict_x0(scheduler, z, eps, t), clean, atol=1e-5)
    flawed = (z / sigma - (1 - scheduler.alphas_cumprod[int(t)]) ** 0.5 * eps) / scheduler.alphas_cumprod[int(t)] ** 0.5
    assert (flawed - clean).abs().mean() > 1.0  # the released PromptFix estimate blows up at small sigma


def test_high_frequency_maps_and_loss(pattern):
    flat = torch.full((1, 32, 32), 0.5)
    assert float(sobel_magnitude(flat).max()) < 0.02  # a flat image is not stretched to an all-ones map
    assert float(fft_high_pass(flat, 4).max()) < 0.02
    maps = fft_high_pass(pattern[:, 0], 4)
    assert float(maps.max()) == pytest.approx(1.0)  # normalised by its maximum
    assert float(high_frequency_loss(pattern, pattern).max()) == 0.0
    smooth = torch.full_like(pattern, 0.5)
    for loss in ("both", "fft", "sobel"):
        assert float(high_frequency_loss(smooth, pattern, 4, loss)) > 0.01


def test_hfg_lowers_the_high_frequency_loss_on_the_same_seed(tiny, pattern):
    cond = build_conditioning(tiny, "remove the noise")
    plain = restore(tiny, pattern, cond, SamplerConfig(steps=3, seed=5, hfg=NO_HFG))
    guided = restore(
        tiny, pattern, cond, SamplerConfig(steps=3, seed=5, hfg=HFGConfig(iterations=2, scale=30000.0, radius=4))
    )
    before = float(high_frequency_loss(plain.image, pattern, 4))
    after = float(high_frequency_loss(guided.image, pattern, 4))
    assert len(guided.hfg_losses) == 3 and not plain.hfg_losses
    assert after < 0.95 * before
    assert SamplerConfig().hfg.enabled  # on by default


def test_hfg_step_selection():
    assert [HFGConfig(start=0.5).guided(i, 10) for i in (0, 4, 5, 9)] == [False, False, True, True]
    assert HFGConfig(steps=(2,)).guided(2, 10) and not HFGConfig(steps=(2,)).guided(3, 10)
    assert not HFGConfig(enabled=False).guided(0, 10)


# ----------------------------------------------------------------------------------------------
# Tiling
# ----------------------------------------------------------------------------------------------


def test_window_starts_cover_with_overlap():
    starts = window_starts(40, 16, 8)
    assert starts[0] == 0 and starts[-1] == 24
    assert all(b - a <= 8 for a, b in zip(starts, starts[1:], strict=False))
    assert window_starts(12, 16, 4) == [0]


def test_tiled_apply_of_a_pointwise_function_is_exact():
    x = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(2))
    y = torch.rand(1, 1, 37, 29, generator=torch.Generator().manual_seed(3))
    out = tiled_apply(lambda a, b: a * 2 + b, (x, y), tile=12, overlap=4)
    assert torch.allclose(out, x * 2 + y, atol=1e-6)


def test_latent_tiling_reproduces_the_untiled_result():
    local = tiny_components(seed=0, attention=False)  # convolution-only UNet: a finite receptive field
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cond = build_conditioning(local, "remove the noise")
    untiled = restore(local, image, cond, SamplerConfig(steps=2, hfg=NO_HFG)).image
    tiled = restore(local, image, cond, SamplerConfig(steps=2, latent_tile=24, latent_overlap=12, hfg=NO_HFG))
    reseeded = restore(local, image, cond, SamplerConfig(steps=2, seed=1, hfg=NO_HFG)).image
    assert tiled.info["latent_tile"] == 24
    error = float((tiled.image - untiled).abs().mean())
    assert error < 0.02
    assert error < 0.1 * float((reseeded - untiled).abs().mean())


# ----------------------------------------------------------------------------------------------
# Converter
# ----------------------------------------------------------------------------------------------


def test_unet_mapping_round_trips_and_agrees_with_diffusers(tiny):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = dict(tiny.unet.config)
    state = tiny.unet.state_dict()
    original = cv.unet_to_original(state, config)
    assert "model.diffusion_model.input_blocks.0.0.weight" in original
    assert "model.diffusion_model.output_blocks.2.1.proj_in.weight" in original
    stripped = {k.removeprefix(cv.UNET_PREFIX): v for k, v in original.items()}
    back, _ = cv.convert_unet(stripped, config)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    theirs = convert_ldm_unet_checkpoint(original, config)  # diffusers' own converter, independently
    assert set(theirs) == set(state) and all(torch.equal(theirs[k], state[k]) for k in state)
    inferred = cv.infer_unet_config(stripped)
    for key in ("in_channels", "layers_per_block", "cross_attention_dim", "down_block_types", "up_block_types"):
        assert tuple(np.atleast_1d(inferred[key])) == tuple(np.atleast_1d(config[key])), key
    assert tuple(inferred["block_out_channels"]) == tuple(config["block_out_channels"])


def test_vae_mapping_round_trips(tiny):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = dict(tiny.vae.config)
    state = tiny.vae.state_dict()
    original = cv.vae_to_original(state, config)
    assert "first_stage_model.decoder.up.1.block.0.conv1.weight" in original
    stripped = {k.removeprefix(cv.VAE_PREFIX): v for k, v in original.items()}
    back, _ = cv.convert_vae(stripped, config)
    assert all(torch.equal(back[k], state[k]) for k in state)
    theirs = convert_ldm_vae_checkpoint(original, config)
    assert all(torch.equal(theirs[k].reshape(state[k].shape), state[k]) for k in state)


def test_converter_refuses_unknown_and_missing_keys(tiny):
    config = dict(tiny.unet.config)
    stripped = {
        k.removeprefix(cv.UNET_PREFIX): v for k, v in cv.unet_to_original(tiny.unet.state_dict(), config).items()
    }
    extra = dict(stripped)
    extra["input_blocks.1.1.transformer_blocks.0.attn_extra.to_q.weight"] = torch.zeros(8, 8)
    with pytest.raises(cv.ConversionError, match="attn_extra") as info:
        cv.convert_unet(extra, config)
    assert info.value.unmapped == ["input_blocks.1.1.transformer_blocks.0.attn_extra.to_q.weight"]
    converted, _ = cv.convert_unet(extra, config, ignore_keys=cv.PROMPTFIX_EXTRA_KEYS)
    assert len(converted) == len(stripped)
    missing = dict(stripped)
    missing.pop("out.2.weight")
    with pytest.raises(cv.ConversionError, match="absent"):
        cv.convert_unet(missing, config)
    with pytest.raises(cv.ConversionError, match="no diffusers counterpart"):
        cv.split_state_dict({"model.diffusion_model.conv.weight": 1, "mystery.weight": 2})


def test_single_file_checkpoint_loads_into_working_components(tiny, tmp_path):
    from safetensors.torch import save_file

    state = cv.unet_to_original(tiny.unet.state_dict(), dict(tiny.unet.config))
    state |= cv.vae_to_original(tiny.vae.state_dict(), dict(tiny.vae.config))
    state |= {cv.TEXT_PREFIX + "text_model." + k: v for k, v in tiny.text_encoder.state_dict().items()}
    state |= {"alphas_cumprod": torch.linspace(1, 0, 10), "model_ema.decay": torch.tensor(0.99)}
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    loaded = cv.load_single_file(
        path,
        tokenizer=str(tmp_path / "tokenizer"),
        local_files_only=True,
        unet_config=dict(tiny.unet.config),
        vae_config=dict(tiny.vae.config),
        text_config={"num_attention_heads": 2, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
    ).to()
    assert torch.allclose(loaded.encode_prompt(["remove rain"]), tiny.encode_prompt(["remove rain"]), atol=1e-5)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = build_conditioning(tiny, "remove rain")
    ours = restore(tiny, image, cond, SamplerConfig(steps=1, hfg=NO_HFG)).image
    theirs = restore(loaded, image, cond, SamplerConfig(steps=1, hfg=NO_HFG)).image
    assert torch.allclose(ours, theirs, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def test_diffusers_folder_loads(tiny, tmp_path):
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(tiny, name).save_pretrained(tmp_path / name)
    loaded = load_components(tmp_path, device="cpu")
    assert type(loaded.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = build_conditioning(tiny, "remove rain")
    a = restore(tiny, image, cond, SamplerConfig(steps=1, hfg=NO_HFG)).image
    b = restore(loaded, image, cond, SamplerConfig(steps=1, hfg=NO_HFG)).image
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ModelNotFoundError, match="not a diffusers model folder"):
        load_components(tmp_path / "unet")


def test_missing_models_say_how_to_provide_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="hf download"):
        load_components("restora-tests/no-such-model")
    with pytest.raises(ModelNotFoundError, match="no diffusion model"):
        load_components(str(tmp_path / "nowhere"))


def test_sd15_config_has_sd15_size_and_eight_input_channels():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_unet_config())
    count = sum(p.numel() for p in unet.parameters())
    assert 855e6 < count < 865e6
    assert unet.config.in_channels == 8


# ----------------------------------------------------------------------------------------------
# Structural correction
# ----------------------------------------------------------------------------------------------


def test_scm_starts_as_identity_and_a_training_step_lowers_the_loss(tiny, tmp_path):
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 16, 16, generator=generator)
    degraded = (clean + 0.2 * torch.randn(2, 3, 16, 16, generator=generator)).clamp(0, 1)
    context = build_conditioning(tiny, "remove the noise", batch=2).text
    restored = one_step_estimate(tiny, clean, degraded, context, generator, timesteps=torch.tensor([10, 500]))
    assert restored.shape == clean.shape
    torch.manual_seed(0)
    corrector = StructureCorrector()
    assert torch.equal(corrector.correct(restored, degraded), restored)  # zero-initialised F
    optimizer = torch.optim.Adam(corrector.parameters(), lr=1e-3)
    before = training_step(corrector, optimizer, restored, degraded, clean)
    for _ in range(4):
        training_step(corrector, optimizer, restored, degraded, clean)
    after = float(scm_loss(corrector, restored, degraded, clean))
    assert after < before
    save_corrector(corrector, tmp_path / "scm")
    reloaded = load_corrector(tmp_path / "scm")
    assert torch.allclose(reloaded(restored, degraded), corrector.eval()(restored, degraded), atol=1e-6)
    assert task_weight("low_resolution") == 0.1 and task_weight("noise") == 1.0


# ----------------------------------------------------------------------------------------------
# The tool
# ----------------------------------------------------------------------------------------------


def test_tool_spec_and_registration():
    spec = DiffusionRestore.spec
    assert spec.name == "diffusion_restore" and spec.generative
    assert set(spec.restores) == set(ALL_DEGRADATIONS)
    assert spec.param("hfg").default is True
    registry = ToolRegistry()
    register(registry)
    assert "diffusion_restore" in registry


def test_tool_runs_end_to_end_with_injected_components(tiny, monkeypatch):
    monkeypatch.delenv("RESTORA_SCM_WEIGHTS", raising=False)
    monkeypatch.setenv("RESTORA_WEIGHTS", "/nonexistent-restora-weights")
    tool = DiffusionRestore(components=tiny, device="cpu")
    image = np.random.default_rng(0).random((20, 28, 3), dtype=np.float32)
    report = DegradationReport(
        assessor="test",
        estimates={Degradation.NOISE: DegradationEstimate(probability=0.9, severity=0.5)},
    )
    params = tool.suggest(report, Degradation.NOISE)
    assert params == {"task": "noise"} and tool.probabilities == {"noise": 0.9}
    result = tool(image, params | {"steps": 2, "hfg_iters": 1})
    assert result.image.shape == image.shape and result.image.dtype == np.float32
    assert tool.last_info["scm"] == "classical" and tool.last_info["hfg_steps"] == 2
    off = tool(image, {"steps": 2, "hfg": False, "scm": "off", "conditioning": "e_auto"})
    assert off.image.shape == image.shape and tool.last_info["scm"] == "off"
    sr = tool(image, {"steps": 1, "hfg": False, "task": "low_resolution"})
    assert tool.last_info["scm_weight"] == pytest.approx(0.1) and sr.image.shape == image.shape
    text = tool.restore(image, "remove the noise", auxiliary="a noisy photo", params={"steps": 1, "hfg": False})
    assert text.image.shape == image.shape
    with pytest.raises(ToolError, match="no trained structural corrector"):
        tool(image, {"steps": 1, "hfg": False, "scm": "learned"})


def test_tool_uses_a_learned_corrector_when_given(tiny):
    tool = DiffusionRestore(components=tiny, device="cpu", scm_model=StructureCorrector())
    image = np.random.default_rng(1).random((16, 16, 3), dtype=np.float32)
    tool(image, {"steps": 1, "hfg": False})
    assert tool.last_info["scm"] == "learned"


def test_tool_without_a_model_explains_how_to_provide_one(monkeypatch, tmp_path):
    monkeypatch.delenv("RESTORA_DIFFUSION_MODEL", raising=False)
    image = np.zeros((16, 16, 3), dtype=np.float32)
    with pytest.raises(ToolError, match="RESTORA_DIFFUSION_MODEL") as info:
        DiffusionRestore(device="cpu")(image)
    assert "instruct-pix2pix" in str(info.value)
    with pytest.raises(ToolError, match="no diffusion model"):
        DiffusionRestore(model=str(tmp_path / "missing"), device="cpu")(image)


def test_tool_reads_its_model_from_the_policy_and_the_environment(monkeypatch):
    from types import SimpleNamespace

    policy = SimpleNamespace(diffusion={"model": "tiny", "device": "cpu", "dtype": None, "unknown": 1})
    tool = DiffusionRestore.from_policy(policy, prompt_style="autodir")
    assert tool.model == "tiny" and tool.device_name == "cpu" and tool.prompt_style == "autodir"
    assert DiffusionRestore.from_policy(SimpleNamespace()).model is None
    monkeypatch.setenv("RESTORA_DIFFUSION_MODEL", "tiny")
    monkeypatch.setenv("RESTORA_WEIGHTS", "/nonexistent-restora-weights")
    env_tool = DiffusionRestore(device="cpu")
    result = env_tool(np.full((16, 16, 3), 0.5, dtype=np.float32), {"steps": 1, "hfg": False})
    assert result.image.shape == (16, 16, 3) and env_tool.last_info["model"] == "tiny"
