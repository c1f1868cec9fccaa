"""The diffusion restorer's parts: loading them, building tiny or full-size random ones, device and dtype.

A restorer is four diffusers/transformers parts held by :class:`DiffusionComponents`: an
InstructPix2Pix-layout ``UNet2DConditionModel`` (8 input channels: the noisy latent and the VAE latent
of the input image), an ``AutoencoderKL``, a scheduler and, optionally, a CLIP text encoder with its
tokenizer (prompt embeddings may be passed precomputed instead).

:func:`load_components` takes

* a diffusers folder (``model_index.json`` with ``unet/``, ``vae/``, ``scheduler/``, ``text_encoder/``,
  ``tokenizer/``), e.g. a saved ``timbrooks/instruct-pix2pix``;
* a hub id (``owner/name``), read from the local Hugging Face cache only when ``local_files_only`` is
  true or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set;
* an original-LDM single-file checkpoint (``.ckpt`` / ``.safetensors``, e.g. PromptFix's or AutoDIR's),
  converted by :mod:`tools.diffusion.convert`;
* ``"tiny"`` (random components small enough for tests) or ``"sd15-random"`` (random weights with the
  SD-1.5 sizes and an 8-channel UNet, for benchmarks).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Environment variables that switch the Hugging Face libraries to the local cache only.
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")

#: Scheduler short names -> diffusers class names (Euler-ancestral is the default, as in InstructPix2Pix).
SCHEDULERS: dict[str, str] = {
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
DEFAULT_SCHEDULER = "euler_a"

#: The noise schedule of Stable Diffusion 1.x (and of InstructPix2Pix, PromptFix and AutoDIR).
SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}

Offload = Literal["none", "model", "sequential"]
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelNotFoundError(FileNotFoundError):
    """No usable diffusion model at the given place; the message says how to provide one."""


@dataclass
class DiffusionComponents:
    """The parts of a text- and image-conditioned latent-diffusion restorer.

    Attributes:
        unet: ``UNet2DConditionModel`` with ``in_channels == 2 * latent channels`` (InstructPix2Pix layout).
        vae: ``AutoencoderKL``.
        scheduler: Any diffusers scheduler.
        text_encoder: ``CLIPTextModel`` (or ``None`` when prompt embeddings are passed precomputed).
        tokenizer: Its tokenizer (``None`` together with ``text_encoder``).
        source: Where the parts came from (for logs and reports).
        offload: ``"none"`` (everything on ``device``), ``"model"`` (each part moved to the device only while
            it runs, the rest on the CPU) or ``"sequential"`` (accelerate's per-layer offload, least memory).
    """

    unet: Any
    vae: Any
    scheduler: Any
    text_encoder: Any = None
    tokenizer: Any = None
    source: str = ""
    offload: Offload = "none"
    device: Any = None
    dtype: Any = None

    def __post_init__(self) -> None:
        latent = int(self.vae.config.latent_channels)
        if int(self.unet.config.in_channels) != 2 * latent:
            raise ValueError(
                f"the UNet takes {self.unet.config.in_channels} input channels; an InstructPix2Pix-layout restorer "
                f"needs {2 * latent} (noisy latent + input-image latent); load an 8-channel model such as "
                "timbrooks/instruct-pix2pix, PromptFix or AutoDIR"
            )
        if (self.text_encoder is None) != (self.tokenizer is None):
            raise ValueError("pass both text_encoder and tokenizer, or neither (then pass prompt embeddings)")

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each axis (8 for Stable Diffusion's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_multiple(self) -> int:
        """Latent sizes must be multiples of this for the UNet's down/up-sampling to line up."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides are padded to a multiple of this before encoding."""
        return self.vae_scale_factor * self.unet_multiple

    @property
    def cross_attention_dim(self) -> int:
        """Width of the UNet's text context tokens."""
        dim = self.unet.config.cross_attention_dim
        return int(dim[0] if isinstance(dim, (list, tuple)) else dim)

    @property
    def scaling_factor(self) -> float:
        """The VAE latent scaling (0.18215 for SD 1.x)."""
        return float(self.vae.config.scaling_factor)

    def to(self, device: Any = None, dtype: Any = None, offload: Offload = "none") -> DiffusionComponents:
        """Place the parts on ``device`` in ``dtype`` (the VAE too; schedulers have no weights).

        Args:
            device: Target device (default: CPU).
            dtype: Weight dtype (default: float32).
            offload: See the class attributes; ``"model"`` keeps the parts on the CPU until used.
        """
        import torch

        self.device = torch.device(device or "cpu")
        self.dtype = dtype or torch.float32
        self.offload = offload
        parts = [p for p in (self.unet, self.vae, self.text_encoder) if p is not None]
        for part in parts:
            if part.dtype != self.dtype:
                part.to(dtype=self.dtype)
            part.eval()
            part.requires_grad_(False)
        if offload == "sequential" and self.device.type != "cpu":
            try:
                from accelerate import cpu_offload
            except ImportError as exc:  # pragma: no cover - accelerate ships with diffusers' extras
                raise ImportError("offload='sequential' needs accelerate: pip install accelerate") from exc
            for part in parts:
                if getattr(part, "_hf_hook", None) is None:
                    cpu_offload(part, execution_device=self.device)
        elif offload == "model" and self.device.type != "cpu":
            for part in parts:
                part.to("cpu")
        else:
            for part in parts:
                part.to(self.device)
        return self

    def activate(self, *names: str) -> None:
        """With ``offload="model"``, move the named parts to the device and every other part to the CPU."""
        if self.offload != "model" or self.device is None or self.device.type == "cpu":
            return
        import torch

        for name in ("unet", "vae", "text_encoder"):
            part = getattr(self, name)
            if part is not None:
                part.to(self.device if name in names else "cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """CLIP last hidden states ``(len(texts), T, D)`` of ``texts`` (padded to the tokenizer's length).

        Raises:
            ValueError: when the parts have no text encoder; pass prompt embeddings instead.
        """
        import torch

        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "these components have no text encoder; pass prompt embeddings (prompt_embeds) or load a model "
                "with text_encoder/ and tokenizer/"
            )
        self.activate("text_encoder")
        length = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        length = min(length, int(self.text_encoder.config.max_position_embeddings))
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        device = _module_device(self.text_encoder)
        with torch.no_grad():
            hidden = self.text_encoder(tokens.input_ids.to(device))[0]
        return hidden.to(self.device or device)


def _module_device(module: Any) -> torch.device:
    """Where ``module``'s first parameter lives (its execution device under accelerate offload)."""
    import torch

    hook = getattr(module, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def offline(local_files_only: bool | None = None) -> bool:
    """Whether to read the Hugging Face cache only: the argument, else any of :data:`OFFLINE_ENVS` set to 1/true."""
    if local_files_only is not None:
        return local_files_only
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENVS)


def select_device(name: str | None = None) -> torch.device:
    """The device: ``name``, else ``$RESTORA_DEVICE``, else CPU (``"auto"`` takes CUDA when present)."""
    from tools.learned.tiling import select_device as _select

    return _select(name)


def select_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The weight dtype: ``name`` or ``$RESTORA_DTYPE``; default bfloat16 (float16 on older GPUs) on CUDA, else float32.

    Half precision on the CPU is replaced by float32 (slow or missing kernels).

    Raises:
        ValueError: for an unknown dtype name.
    """
    import torch

    from tools.learned.tiling import DTYPES

    name = (name or os.environ.get("RESTORA_DTYPE") or "").lower() or None
    if name is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name in ("fp16", "half"):
        name = "float16"
    if name in ("bf16",):
        name = "bfloat16"
    if name in ("fp32",):
        name = "float32"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    if device.type == "cpu" and name != "float32":
        logger.info("dtype %s on the CPU: using float32", name)
        return torch.float32
    return DTYPES[name]


def make_scheduler(name: str | None = None, config: dict[str, Any] | None = None) -> Any:
    """A diffusers scheduler by short name (:data:`SCHEDULERS`) or class name, from ``config`` (default: SD's).

    Raises:
        ValueError: for an unknown scheduler name, listing the known ones.
    """
    import diffusers

    name = name or DEFAULT_SCHEDULER
    class_name = SCHEDULERS.get(name, name)
    cls = getattr(diffusers, class_name, None)
    if cls is None or not class_name.endswith("Scheduler"):
        raise ValueError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)} or a diffusers class name")
    base = dict(SD_SCHEDULE)
    base.update({k: v for k, v in (config or {}).items() if not k.startswith("_")})
    return cls.from_config(base)


def tiny_unet_config(cross_attention_dim: int = 16, attention: bool = True) -> dict[str, Any]:
    """A UNet config small enough for CPU tests (8 input channels, two levels).

    Args:
        cross_attention_dim: Width of the text context.
        attention: ``False`` builds a purely convolutional UNet (no self/cross-attention, no mid block), whose
            outputs depend only on a local neighbourhood (used to test tiling).
    """
    if attention:
        down, up, mid = (
            ("CrossAttnDownBlock2D", "DownBlock2D"),
            ("UpBlock2D", "CrossAttnUpBlock2D"),
            "UNetMidBlock2DCrossAttn",
        )
    else:
        down, up, mid = ("DownBlock2D", "DownBlock2D"), ("UpBlock2D", "UpBlock2D"), None
    return {
        "sample_size": 16,
        "in_channels": 8,
        "out_channels": 4,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": mid,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 4,
        "norm_num_groups": 4,
    }


def tiny_vae_config() -> dict[str, Any]:
    """An AutoencoderKL config small enough for CPU tests (scale factor 2, 4 latent channels)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 64,
    }


def sd15_unet_config() -> dict[str, Any]:
    """The SD-1.5 UNet config with 8 input channels (InstructPix2Pix / PromptFix / AutoDIR sizes, 860 M weights)."""
    return {
        "sample_size": 64,
        "in_channels": 8,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def sd15_vae_config() -> dict[str, Any]:
    """The SD-1.x AutoencoderKL config (84 M weights, scale factor 8)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }


def tiny_tokenizer(max_length: int = 16) -> Any:
    """A CLIP tokenizer over single letters (no merges) built in memory: no files, no network."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_components(
    seed: int = 0,
    cross_attention_dim: int = 16,
    text: bool = True,
    attention: bool = True,
    scheduler: str | None = None,
) -> DiffusionComponents:
    """Random tiny parts built from configs (as diffusers' own tests do); deterministic for a ``seed``.

    Args:
        seed: Seed of the random weights.
        cross_attention_dim: Text context width (also the tiny CLIP's hidden size).
        text: Include a tiny CLIP text encoder and tokenizer.
        attention: See :func:`tiny_unet_config`.
        scheduler: Scheduler short name (default Euler-ancestral).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(cross_attention_dim, attention))
    vae = AutoencoderKL(**tiny_vae_config())
    text_encoder = tokenizer = None
    if text:
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = tiny_tokenizer()
        config = CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=cross_attention_dim,
            intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        text_encoder = CLIPTextModel(config)
    return DiffusionComponents(
        unet=unet,
        vae=vae,
        scheduler=make_scheduler(scheduler),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        source="tiny",
    ).to()


def sd15_random_components(seed: int = 0, device: Any = None, dtype: Any = None) -> DiffusionComponents:
    """Random weights with SD-1.5 sizes (8-channel UNet, SD VAE) and no text encoder: for benchmarks.

    The weights are initialised in float32 directly on ``device``, then cast to ``dtype``.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    with device:
        unet = UNet2DConditionModel(**sd15_unet_config())
        vae = AutoencoderKL(**sd15_vae_config())
    components = DiffusionComponents(unet=unet, vae=vae, scheduler=make_scheduler(), source="sd15-random")
    return components.to(device, dtype or torch.float32)


def _is_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not Path(text).exists()


def load_components(
    source: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str | None = None,
    scheduler: str | None = None,
    offload: Offload = "none",
    local_files_only: bool | None = None,
    tokenizer: str | None = None,
    ignore_keys: tuple[str, ...] = (),
) -> DiffusionComponents:
    """Load a restorer's parts from ``source`` and place them on the device.

    Args:
        source: A diffusers folder, a hub id, a single-file original-LDM checkpoint, ``"tiny"`` or ``"sd15-random"``.
        device: ``"cpu"`` (default), ``"cuda"``, ``"auto"``; falls back to ``$RESTORA_DEVICE``.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"``; default half precision on CUDA, float32 on the CPU.
        scheduler: Scheduler short name (:data:`SCHEDULERS`); default Euler-ancestral, configured from the model's
            own scheduler config when it has one.
        offload: ``"none"``, ``"model"`` or ``"sequential"`` (see :class:`DiffusionComponents`).
        local_files_only: Read hub ids from the local cache only (default: true when ``HF_HUB_OFFLINE`` is set).
        tokenizer: For single-file checkpoints: folder or hub id of the CLIP tokenizer (default
            ``openai/clip-vit-large-patch14``, from the cache when offline).
        ignore_keys: For single-file checkpoints: key substrings to drop instead of refusing them
            (e.g. :data:`tools.diffusion.convert.PROMPTFIX_EXTRA_KEYS`).

    Raises:
        ModelNotFoundError: when nothing usable is at ``source``; the message says how to provide a model.
    """
    target = select_device(device)
    weight_dtype = select_dtype(dtype, target)
    text = str(source)
    if text == "tiny":
        return tiny_components(scheduler=scheduler).to(target, weight_dtype, offload)
    if text == "sd15-random":
        return sd15_random_components(device=target if offload == "none" else "cpu", dtype=weight_dtype).to(
            target, weight_dtype, offload
        )
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelNotFoundError(
                f"{path} is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}); pass a diffusers folder, a hub id "
                "or an original-LDM .ckpt/.safetensors file"
            )
        from tools.diffusion.convert import load_single_file

        components = load_single_file(
            path, tokenizer=tokenizer, local_files_only=offline(local_files_only), ignore_keys=ignore_keys
        )
        if scheduler:
            components.scheduler = make_scheduler(scheduler, dict(components.scheduler.config))
        return components.to(target, weight_dtype, offload)
    if path.is_dir():
        if not (path / "unet").is_dir() or not (path / "vae").is_dir():
            raise ModelNotFoundError(
                f"{path} is not a diffusers model folder (no unet/ and vae/ sub-folders); save one with "
                "`pipeline.save_pretrained(folder)` or pass a single-file checkpoint"
            )
        return _from_pretrained(str(path), True, scheduler).to(target, weight_dtype, offload)
    if _is_hub_id(text):
        local = offline(local_files_only)
        try:
            components = _from_pretrained(text, local, scheduler)
        except (OSError, ValueError) as exc:
            how = (
                f"download it first with `hf download {text}` (it is not in the local cache and the hub is "
                "offline), or pass a local folder"
                if local
                else f"check the id, your network, or pass a local folder ({type(exc).__name__}: {exc})"
            )
            raise ModelNotFoundError(f"cannot load diffusion model {text!r}: {how}") from exc
        return components.to(target, weight_dtype, offload)
    raise ModelNotFoundError(
        f"no diffusion model at {text!r}: pass a diffusers folder, a hub id (owner/name), an original-LDM "
        "checkpoint file, or 'tiny' / 'sd15-random' for random test weights"
    )


def _from_pretrained(location: str, local_files_only: bool, scheduler: str | None) -> DiffusionComponents:
    """Read the parts of a diffusers folder or hub repository (``subfolder`` layout)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", **kwargs)
    vae = AutoencoderKL.from_pretrained(location, subfolder="vae", **kwargs)
    scheduler_config: dict[str, Any] = {}
    try:
        from diffusers import DDPMScheduler  # any ConfigMixin class reads a scheduler_config.json

        scheduler_config = dict(DDPMScheduler.load_config(location, subfolder="scheduler", **kwargs))
    except (OSError, ValueError):
        logger.info("%s has no scheduler config; using Stable Diffusion's schedule", location)
    text_encoder = tokenizer = None
    try:
        from transformers import CLIPTextModel, CLIPTokenizer

        text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer", **kwargs)
    except (OSError, ValueError) as exc:
        logger.warning("%s: no usable text encoder/tokenizer (%s); prompt embeddings must be passed", location, exc)
        text_encoder = tokenizer = None
    return DiffusionComponents(
        unet=unet,
        vae=vae,
        scheduler=make_scheduler(scheduler, scheduler_config),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        source=location,
    )


__all__ = [
    "DEFAULT_SCHEDULER",
    "SCHEDULERS",
    "DiffusionComponents",
    "ModelNotFoundError",
    "load_components",
    "make_scheduler",
    "offline",
    "sd15_random_components",
    "select_device",
    "select_dtype",
    "tiny_components",
]
