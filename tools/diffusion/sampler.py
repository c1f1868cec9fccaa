"""Our own sampling loop over diffusers parts: text + image classifier-free guidance, HFG, tiling, strength.

The UNet has the InstructPix2Pix layout: its input is the scheduler-scaled noisy latent concatenated
with the (unscaled) VAE latent of the degraded image, and it cross-attends to a text context. Each step
evaluates three conditionings in one batch and combines them with one of two published formulas; with
``e_full`` = text and image, ``e_img`` = empty text and image, ``e_txt`` = text and no image,
``e_none`` = neither:

* ``"instructpix2pix"`` (Brooks et al.; batches full, img, none)::

      e = e_none + s_T (e_full - e_img) + s_I (e_img - e_none)

* ``"promptfix"`` (PromptFix's released sampler; batches full, img, txt)::

      e = (e_img + e_txt) / 2 + s_T (e_full - e_img) + s_I (e_full - e_txt)

Both weight sums are 1, so the formulas apply to noise, v or x0 predictions alike. Before a guided step,
high-frequency guidance (:mod:`tools.diffusion.hfg`) nudges the latent towards the input's fine detail.

``denoise`` (the img2img *strength* of diffusers) below 1 starts from the input's own latent noised to
the matching level instead of pure noise and runs only the last ``denoise`` share of the schedule.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tools.diffusion.hfg import HFGConfig, apply_guidance, scheduler_kind
from tools.diffusion.pipeline import DiffusionComponents, _module_device
from tools.diffusion.tiling import enable_vae_tiling, tiled_apply

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CFGFormula = Literal["promptfix", "instructpix2pix"]


@dataclass
class SamplerConfig:
    """Settings of one restoration run.

    Attributes:
        steps: Sampler steps over the whole schedule (PromptFix and AutoDIR: 20).
        text_scale: Text guidance ``s_T`` (PromptFix: 6.5; InstructPix2Pix: 7.5).
        image_scale: Image guidance ``s_I`` (PromptFix: 1.25; InstructPix2Pix: 1.5).
        cfg: ``"promptfix"`` or ``"instructpix2pix"`` combination formula.
        denoise: Share of the schedule run, in (0, 1]; 1 starts from pure noise.
        seed: Seed of the initial and ancestral noise (``None``: nondeterministic).
        hfg: High-frequency guidance settings (on by default).
        latent_tile: UNet window side in latent cells (0: tile only latents larger than ``auto_tile``).
        latent_overlap: Cells shared by neighbouring UNet windows.
        auto_tile: Latents with a side above this are tiled automatically (0: never); 96 cells = 768 px for SD.
        vae_tile: VAE tile side in latent cells (0: follow ``latent_tile`` / ``auto_tile``).
    """

    steps: int = 20
    text_scale: float = 6.5
    image_scale: float = 1.25
    cfg: CFGFormula = "promptfix"
    denoise: float = 1.0
    seed: int | None = 0
    hfg: HFGConfig = field(default_factory=HFGConfig)
    latent_tile: int = 0
    latent_overlap: int = 16
    auto_tile: int = 96
    vae_tile: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 < self.denoise <= 1.0:
            raise ValueError(f"denoise must lie in (0, 1], got {self.denoise}")
        if self.cfg not in ("promptfix", "instructpix2pix"):
            raise ValueError(f"cfg {self.cfg!r} must be 'promptfix' or 'instructpix2pix'")


@dataclass
class Conditioning:
    """Text contexts for the UNet's cross-attention.

    Attributes:
        text: ``(B, T, D)`` context of the instruction / embedding / auxiliary description.
        null: ``(B, T, D)`` context of the empty prompt (the unconditional branch), same ``T``.
    """

    text: torch.Tensor
    null: torch.Tensor

    def __post_init__(self) -> None:
        if self.text.ndim != 3 or self.text.shape != self.null.shape:
            raise ValueError(
                f"text and null contexts must both be (B, T, D) of one shape, got {tuple(self.text.shape)} "
                f"and {tuple(self.null.shape)}"
            )


@dataclass
class SampleResult:
    """What :func:`restore` produced."""

    image: torch.Tensor
    seconds: float
    step_seconds: list[float]
    hfg_losses: list[list[float]]
    info: dict[str, Any] = field(default_factory=dict)


def _as_context(embedding: Any, dim: int, batch: int) -> torch.Tensor:
    """``(D,)``, ``(T, D)`` or ``(B, T, D)`` embedding -> ``(batch, T, D)`` float tensor.

    Raises:
        ValueError: when the width differs from the UNet's cross-attention width.
    """
    import torch

    tensor = torch.as_tensor(embedding, dtype=torch.float32)
    if tensor.ndim == 1:
        tensor = tensor[None, None]
    elif tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[-1] != dim:
        raise ValueError(
            f"embedding of shape {tuple(torch.as_tensor(embedding).shape)} does not fit this UNet's text context "
            f"width {dim}; pass (D,), (T, D) or (B, T, D) with D = {dim} (an embedding from this model's own text "
            "encoder, e.g. build_e_auto())"
        )
    if tensor.shape[0] == 1 and batch > 1:
        tensor = tensor.expand(batch, -1, -1)
    return tensor


def build_conditioning(
    components: DiffusionComponents,
    prompt: str | list[str] | None = None,
    *,
    e_auto: Any = None,
    auxiliary: str | list[str] | None = None,
    prompt_embeds: Any = None,
    null_embeds: Any = None,
    batch: int = 1,
) -> Conditioning:
    """The text context from any mix of an instruction, AutoDIR's ``e_auto`` and an auxiliary description.

    The pieces present are concatenated along the token axis in the order instruction (or
    ``prompt_embeds``), ``e_auto``, auxiliary description. Stock diffusers UNets have one
    cross-attention per block, so PromptFix's second text (a VLM's description of the image and its
    flaws, which PromptFix feeds to a separate cross-attention) is appended to the main context: the
    UNet attends over the union of both token sets. The null context holds the empty prompt's tokens
    in the same layout (one empty-prompt block per text block; ``e_auto`` tokens are replaced by the
    empty prompt's first tokens), so classifier-free guidance contrasts like with like.

    Args:
        components: The restorer's parts (their text encoder encodes the strings).
        prompt: The instruction (e.g. ``"remove the haze"``), one per batch item or shared.
        e_auto: AutoDIR's probability-weighted text embedding, ``(D,)``, ``(T, D)`` or ``(B, T, D)`` with the UNet's
            context width (see :func:`build_e_auto`).
        auxiliary: Optional description of the image and its flaws.
        prompt_embeds: Precomputed instruction context ``(T, D)`` / ``(B, T, D)`` instead of ``prompt``.
        null_embeds: Precomputed empty-prompt context (default: the encoder's ``""``, or zeros without an encoder).
        batch: Batch size of the images.

    Raises:
        ValueError: when nothing conditions the model or a tensor has the wrong width.
    """
    import torch

    dim = components.cross_attention_dim
    has_encoder = components.text_encoder is not None

    def texts(value: str | list[str]) -> list[str]:
        return [value] * batch if isinstance(value, str) else list(value)

    if null_embeds is not None:
        null_block = _as_context(null_embeds, dim, batch)
    elif has_encoder:
        null_block = components.encode_prompt([""]).float().expand(batch, -1, -1)
    else:
        null_block = None
    blocks: list[torch.Tensor] = []
    nulls: list[torch.Tensor] = []

    def null_like(block: torch.Tensor) -> torch.Tensor:
        if null_block is None:
            return torch.zeros_like(block)
        tokens = block.shape[1]
        reps = -(-tokens // null_block.shape[1])
        return null_block.to(block.device).repeat(1, reps, 1)[:, :tokens]

    if prompt_embeds is not None:
        blocks.append(_as_context(prompt_embeds, dim, batch))
    elif prompt is not None:
        blocks.append(components.encode_prompt(texts(prompt)).float())
    if e_auto is not None:
        blocks.append(_as_context(e_auto, dim, batch))
    if auxiliary:
        blocks.append(components.encode_prompt(texts(auxiliary)).float())
    if not blocks:
        raise ValueError("nothing conditions the restorer: pass a prompt, prompt_embeds or e_auto")
    device = blocks[0].device
    blocks = [b.to(device) for b in blocks]
    nulls = [null_like(b) for b in blocks]
    return Conditioning(text=torch.cat(blocks, dim=1), null=torch.cat(nulls, dim=1))


#: Instruction prompts per degradation (InstructPix2Pix / PromptFix style); ``"auto"`` is SPIRE's blind prompt.
INSTRUCTIONS: dict[str, str] = {
    "noise": "remove the noise",
    "motion_blur": "remove the motion blur and make the image sharp",
    "defocus_blur": "remove the blur and make the image sharp",
    "jpeg": "remove the jpeg compression artifacts",
    "low_resolution": "increase the resolution and restore fine detail",
    "haze": "remove the haze",
    "rain": "remove the rain",
    "raindrop": "remove the raindrops",
    "low_light": "brighten the image",
    "color_cast": "correct the color cast",
    "auto": "remove all degradation",
}


def instruction_for(task: str | None, style: Literal["instruction", "autodir"] = "instruction") -> str:
    """The prompt for restoring ``task`` (a degradation name or ``"auto"``) in the given ``style``.

    ``"instruction"`` gives :data:`INSTRUCTIONS`; ``"autodir"`` gives AutoDIR's
    ``"A photo needs {c} artifact reduction"`` (``"auto"`` then falls back to the instruction).

    Raises:
        ValueError: for an unknown task name.
    """
    key = str(getattr(task, "value", task or "auto"))
    if key not in INSTRUCTIONS:
        raise ValueError(f"unknown task {key!r}; known: {', '.join(INSTRUCTIONS)}")
    if style == "autodir" and key in AUTODIR_WORDS:
        return AUTODIR_TEMPLATE.format(AUTODIR_WORDS[key])
    return INSTRUCTIONS[key]


#: AutoDIR's SA-BIQA prompt template and its artifact words (Degradation value -> word).
AUTODIR_TEMPLATE = "A photo needs {} artifact reduction"
AUTODIR_WORDS: dict[str, str] = {
    "noise": "noise",
    "motion_blur": "blur",
    "defocus_blur": "blur",
    "rain": "rain",
    "low_light": "underexposure",
    "haze": "haze",
    "low_resolution": "low resolution",
    "raindrop": "raindrop",
    "jpeg": "jpeg compression",
    "color_cast": "color cast",
}


def build_e_auto(components: DiffusionComponents, probabilities: dict[str, float]) -> torch.Tensor:
    """AutoDIR's ``e_auto = sum_i p_i E_T(T_i)`` with this model's own text encoder, ``(1, T, D)``.

    ``T_i`` is ``"A photo needs {c} artifact reduction"`` for each degradation ``c`` (AutoDIR's words,
    :data:`AUTODIR_WORDS`); ``p`` is renormalised over the degradations given. Types sharing a word
    (the two blurs) add their probabilities.

    Raises:
        ValueError: for an unknown degradation name or no positive probability.
    """
    import torch

    weights: dict[str, float] = {}
    for name, p in probabilities.items():
        key = str(getattr(name, "value", name))
        if key not in AUTODIR_WORDS:
            raise ValueError(f"unknown degradation {key!r}; known: {', '.join(AUTODIR_WORDS)}")
        word = AUTODIR_WORDS[key]
        weights[word] = weights.get(word, 0.0) + max(float(p), 0.0)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("e_auto needs at least one positive probability")
    words = sorted(weights)
    hidden = components.encode_prompt([AUTODIR_TEMPLATE.format(w) for w in words]).float()
    mix = torch.tensor([weights[w] / total for w in words], dtype=hidden.dtype, device=hidden.device)
    return (mix[:, None, None] * hidden).sum(dim=0, keepdim=True)


def combine_guidance(
    full: torch.Tensor, second: torch.Tensor, third: torch.Tensor, formula: CFGFormula, s_text: float, s_image: float
) -> torch.Tensor:
    """Combine the three branch predictions (batch order of :func:`branch_batch`) with ``formula``."""
    if formula == "instructpix2pix":
        image_only, none = second, third
        return none + s_text * (full - image_only) + s_image * (image_only - none)
    image_only, text_only = second, third
    return 0.5 * (image_only + text_only) + s_text * (full - image_only) + s_image * (full - text_only)


def branch_batch(
    formula: CFGFormula, conditioning: Conditioning, image_latent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The three (context, image latent) pairs of ``formula`` stacked along the batch axis."""
    import torch

    text, null = conditioning.text, conditioning.null
    zeros = torch.zeros_like(image_latent)
    if formula == "instructpix2pix":
        contexts, images = (text, null, null), (image_latent, image_latent, zeros)
    else:
        contexts, images = (text, null, text), (image_latent, image_latent, zeros)
    return torch.cat(contexts), torch.cat(images)


def _pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    import torch.nn.functional as functional

    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        image = functional.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    return image, (height, width)


def encode_image(components: DiffusionComponents, image: torch.Tensor) -> torch.Tensor:
    """The unscaled VAE latent (distribution mode) of ``image`` (B, 3, H, W) in ``[0, 1]``, as float32."""
    components.activate("vae")
    vae = components.vae
    device = _module_device(vae)
    latent = vae.encode((2.0 * image - 1.0).to(device=device, dtype=vae.dtype)).latent_dist.mode()
    return latent.float()


def decode_latent(components: DiffusionComponents, latent: torch.Tensor) -> torch.Tensor:
    """Image ``(B, 3, H, W)`` in ``[0, 1]`` (float32, differentiable) from a scheduler-space (scaled) latent."""
    vae = components.vae
    device = _module_device(vae)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scaled = latent / components.scaling_factor + shift
    decoded = vae.decode(scaled.to(device=device, dtype=vae.dtype)).sample
    return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _step_kwargs(scheduler: Any, generator: Any) -> dict[str, Any]:
    parameters = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in parameters else {}


def restore(
    components: DiffusionComponents,
    image: torch.Tensor,
    conditioning: Conditioning,
    config: SamplerConfig | None = None,
) -> SampleResult:
    """Restore ``image`` (B, 3, H, W) in ``[0, 1]`` with the text ``conditioning``; returns the same-size result.

    The image is padded (reflection) to a multiple of the VAE x UNet down-sampling, sampled, decoded
    and cropped back. Memory: large latents run the UNet in windows (:mod:`tools.diffusion.tiling`) and
    the VAE in tiles; high-frequency guidance uses gradient checkpointing.
    """
    import torch

    config = config or SamplerConfig()
    start = time.perf_counter()
    unet, scheduler = components.unet, components.scheduler
    if config.hfg.enabled and config.hfg.iterations > 0:
        scheduler_kind(scheduler)  # refuse an unsupported scheduler before any work
    batch = image.shape[0]
    if conditioning.text.shape[0] not in (1, batch):
        raise ValueError(f"conditioning batch {conditioning.text.shape[0]} does not match {batch} images")
    if conditioning.text.shape[0] == 1 and batch > 1:
        conditioning = Conditioning(conditioning.text.expand(batch, -1, -1), conditioning.null.expand(batch, -1, -1))
    padded, (height, width) = _pad_to_multiple(image.float(), components.pixel_multiple)
    latent_h = padded.shape[-2] // components.vae_scale_factor
    latent_w = padded.shape[-1] // components.vae_scale_factor
    tile = config.latent_tile
    if tile <= 0 and config.auto_tile > 0 and max(latent_h, latent_w) > config.auto_tile:
        tile = config.auto_tile
    vae_tile = config.vae_tile or tile
    enable_vae_tiling(components.vae, vae_tile if max(latent_h, latent_w) > vae_tile > 0 else 0)

    with torch.no_grad():
        image_latent = encode_image(components, padded)
    components.activate("unet", "vae")
    unet_device = _module_device(unet)
    generator = torch.Generator("cpu")
    if config.seed is not None:
        generator.manual_seed(int(config.seed))
    else:
        generator.seed()

    scheduler.set_timesteps(config.steps, device=unet_device)
    timesteps = scheduler.timesteps
    order = int(getattr(scheduler, "order", 1))
    first = min(int(round(config.steps * (1.0 - config.denoise))), config.steps - 1) * order
    timesteps = timesteps[first:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    noise = torch.randn(image_latent.shape, generator=generator, dtype=torch.float32).to(unet_device)
    if first == 0:
        latent = noise * float(scheduler.init_noise_sigma)
    else:
        clean = image_latent * components.scaling_factor
        latent = scheduler.add_noise(clean, noise, timesteps[:1].repeat(batch))
    latent = latent.float()

    text_ctx, image_ctx = branch_batch(config.cfg, conditioning, image_latent)
    text_ctx = text_ctx.to(device=unet_device, dtype=unet.dtype)
    image_ctx = image_ctx.to(unet_device)
    cond_ctx = conditioning.text.to(device=unet_device, dtype=unet.dtype)
    reference = image.float().to(unet_device)
    reference, _ = _pad_to_multiple(reference, components.pixel_multiple)

    def guided_window(model_in: torch.Tensor, image_lat: torch.Tensor, t: Any) -> torch.Tensor:
        stacked = torch.cat([model_in.repeat(3, 1, 1, 1), image_lat], dim=1).to(unet.dtype)
        out = unet(stacked, t, encoder_hidden_states=text_ctx).sample.float()
        full, second, third = out.chunk(3)
        return combine_guidance(full, second, third, config.cfg, config.text_scale, config.image_scale)

    def conditional_window(model_in: torch.Tensor, image_lat: torch.Tensor, t: Any) -> torch.Tensor:
        stacked = torch.cat([model_in, image_lat], dim=1).to(unet.dtype)
        return unet(stacked, t, encoder_hidden_states=cond_ctx).sample.float()

    multiple = components.unet_multiple
    hfg = config.hfg
    step_seconds: list[float] = []
    hfg_losses: list[list[float]] = []
    step_kwargs = _step_kwargs(scheduler, generator)
    total = len(timesteps)
    for index, t in enumerate(timesteps):
        tick = time.perf_counter()
        if hfg.guided(index, total):
            latent, losses = _guide(
                components, latent, t, reference, image_latent, conditional_window, tile, config, multiple
            )
            hfg_losses.append(losses)
        with torch.no_grad():
            model_in = scheduler.scale_model_input(latent, t)
            noise_pred = tiled_apply(
                lambda m, i, _t=t: guided_window(m, i, _t),
                (model_in, image_ctx),
                tile,
                config.latent_overlap,
                multiple,
            )
            latent = scheduler.step(noise_pred, t, latent, **step_kwargs).prev_sample.float()
        if unet_device.type == "cuda":
            torch.cuda.synchronize(unet_device)
        step_seconds.append(time.perf_counter() - tick)
    with torch.no_grad():
        components.activate("vae")
        decoded = decode_latent(components, latent)
    out = decoded[..., :height, :width]
    return SampleResult(
        image=out,
        seconds=time.perf_counter() - start,
        step_seconds=step_seconds,
        hfg_losses=hfg_losses,
        info={"latent_tile": tile, "steps": total, "cfg": config.cfg},
    )


def _guide(
    components: DiffusionComponents,
    latent: torch.Tensor,
    t: Any,
    reference: torch.Tensor,
    image_latent: torch.Tensor,
    conditional_window: Any,
    tile: int,
    config: SamplerConfig,
    multiple: int,
) -> tuple[torch.Tensor, list[float]]:
    """One guided step: HFG on ``latent`` with gradient checkpointing switched on for its duration."""
    hfg = config.hfg
    unet, vae = components.unet, components.vae
    switched = []
    if hfg.checkpointing:
        for module in (unet, vae):
            if getattr(module, "_supports_gradient_checkpointing", False) and not module.is_gradient_checkpointing:
                module.enable_gradient_checkpointing()
                switched.append(module)
    try:

        def predict(model_in: Any) -> Any:
            return tiled_apply(
                lambda m, i: conditional_window(m, i, t),
                (model_in, image_latent.to(model_in.device)),
                tile,
                config.latent_overlap,
                multiple,
            )

        def decode(x0: Any) -> Any:
            return decode_latent(components, x0)

        return apply_guidance(
            latent,
            t,
            reference,
            scheduler=components.scheduler,
            predict_noise=predict,
            decode=decode,
            config=hfg,
        )
    finally:
        for module in switched:
            module.disable_gradient_checkpointing()


__all__ = [
    "AUTODIR_TEMPLATE",
    "AUTODIR_WORDS",
    "INSTRUCTIONS",
    "Conditioning",
    "SampleResult",
    "SamplerConfig",
    "branch_batch",
    "build_conditioning",
    "build_e_auto",
    "combine_guidance",
    "decode_latent",
    "encode_image",
    "instruction_for",
    "restore",
]
