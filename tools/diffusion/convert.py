"""Original-LDM single-file checkpoints (CompVis / InstructPix2Pix layout) -> diffusers parts.

PromptFix and AutoDIR ship one ``.ckpt`` holding the whole latent-diffusion model with an 8-channel
UNet. Its state dict has three parts, each mapped key by key:

* ``model.diffusion_model.*`` -> ``UNet2DConditionModel`` (our own mapping, :func:`unet_original_key`);
* ``first_stage_model.*`` -> ``AutoencoderKL`` (our own mapping, :func:`vae_original_key`);
* ``cond_stage_model.transformer.*`` -> ``transformers.CLIPTextModel`` (prefix removal).

The diffusers configs are inferred from the tensors' shapes (:func:`infer_unet_config`,
:func:`infer_vae_config`, :func:`infer_text_config`). Nothing is silently dropped: a key the mapping does
not know, or a weight the diffusers model needs but the checkpoint lacks, makes the conversion fail
with a :class:`ConversionError` listing them, unless the caller names substrings to ignore. The
diffusion schedule buffers of an LDM (``betas``, ``alphas_cumprod``, ...), EMA copies (``model_ema.*``)
and the VAE's training-loss modules (``first_stage_model.loss.*``) are known and skipped.

PromptFix's UNet has a second cross-attention per transformer block (``attn_extra``/``norm_extra``)
that stock diffusers blocks lack: it is refused unless ``ignore_keys=PROMPTFIX_EXTRA_KEYS``; the
auxiliary description is then appended to the main text context instead (see
:func:`tools.diffusion.sampler.build_conditioning`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tools.diffusion.pipeline import DiffusionComponents

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
#: Keys of an LDM checkpoint that are not weights of the three parts (schedule buffers, EMA, losses).
SKIPPED_KEYS = re.compile(
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|"
    r"log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|"
    r"posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|logvar|lvlb_weights|scale_factor|"
    r"model_ema\..*|first_stage_model\.loss\..*|cond_stage_model\.transformer\.(text_model\.)?embeddings\.position_ids)$"
)
#: PromptFix's extra per-block cross-attention for the auxiliary prompt (no counterpart in diffusers).
PROMPTFIX_EXTRA_KEYS = ("attn_extra.", "norm_extra.")
#: Trust ``.ckpt`` pickles beyond plain tensors when this environment variable is 1/true.
TRUST_PICKLE_ENV = "RESTORA_TRUST_PICKLE"

_RESNET_TO_ORIGINAL = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET_TO_ORIGINAL = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_TO_ORIGINAL = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


class ConversionError(ValueError):
    """A checkpoint whose keys the converter cannot map one to one; the message lists them."""

    def __init__(self, part: str, unmapped: Iterable[str] = (), missing: Iterable[str] = (), hint: str = "") -> None:
        self.unmapped, self.missing = sorted(unmapped), sorted(missing)
        lines = [f"cannot convert the {part}:"]
        if self.unmapped:
            shown = ", ".join(self.unmapped[:20]) + (" ..." if len(self.unmapped) > 20 else "")
            lines.append(f"{len(self.unmapped)} checkpoint key(s) have no diffusers counterpart: {shown}")
        if self.missing:
            shown = ", ".join(self.missing[:20]) + (" ..." if len(self.missing) > 20 else "")
            lines.append(f"{len(self.missing)} weight(s) the diffusers model needs are absent: {shown}")
        lines.append(
            hint
            or "pass ignore_keys=(substrings...) to drop keys you know are extras (e.g. PROMPTFIX_EXTRA_KEYS), "
            "or convert the checkpoint with the tool of the project that made it"
        )
        super().__init__(" ".join(lines))


# ----------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------


def _layers(config: Mapping[str, Any]) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ConversionError("UNet", hint=f"per-level layers_per_block {layers} is not supported; use an int")
    return layers


def _resnet_suffix(rest: str) -> str:
    name, _, tail = rest.partition(".")
    if name not in _RESNET_TO_ORIGINAL:
        raise KeyError(rest)
    return f"{_RESNET_TO_ORIGINAL[name]}.{tail}"


def unet_original_key(key: str, config: Mapping[str, Any]) -> str:
    """The original-LDM name (without ``model.diffusion_model.``) of diffusers UNet weight ``key``.

    Raises:
        KeyError: for a diffusers key with no original counterpart (e.g. class or added embeddings).
    """
    layers = _layers(config)
    up_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    simple = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    module, _, leaf = key.rpartition(".")
    if module in simple:
        return f"{simple[module]}.{leaf}"
    match = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if match:
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        block = 1 + level * (layers + 1) + index
        return (
            f"input_blocks.{block}.0.{_resnet_suffix(rest)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
        )
    match = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)
    if match:
        return f"input_blocks.{(int(match[1]) + 1) * (layers + 1)}.0.op.{match[2]}"
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if match:
        kind, index, rest = match[1], int(match[2]), match[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{_resnet_suffix(rest)}"
    match = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if match:
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        block = level * (layers + 1) + index
        return (
            f"output_blocks.{block}.0.{_resnet_suffix(rest)}"
            if kind == "resnets"
            else f"output_blocks.{block}.1.{rest}"
        )
    match = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key)
    if match:
        level = int(match[1])
        position = 2 if up_attention[level] else 1
        return f"output_blocks.{level * (layers + 1) + layers}.{position}.conv.{match[2]}"
    raise KeyError(key)


def infer_unet_config(state: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config from an original UNet state dict (prefix removed).

    Head counts are not stored in weights: 768-wide contexts get SD-1's 8 heads, wider ones 64-channel
    heads (SD-2); pass ``attention_head_dim`` (and any other field) in ``overrides`` to change it.

    Raises:
        ConversionError: when the state dict does not look like an LDM UNet.
    """
    if "input_blocks.0.0.weight" not in state or "out.2.weight" not in state:
        raise ConversionError("UNet", hint="no input_blocks.0.0 / out.2 weights: this is not an LDM UNet state dict")
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("input_blocks.")}
    downs = sorted(int(k.split(".")[1]) for k in state if re.match(r"input_blocks\.\d+\.0\.op\.weight$", k))
    count = max(blocks) + 1
    layers = downs[0] - 1 if downs else count - 1
    levels = count // (layers + 1)
    channels, attention = [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        channels.append(int(state[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        attention.append(f"input_blocks.{first}.1.proj_in.weight" in state)
    context = next((int(v.shape[1]) for k, v in state.items() if k.endswith("attn2.to_k.weight")), 768)
    first_attention = next((k for k in state if ".proj_in.weight" in k), None)
    linear = first_attention is not None and state[first_attention].ndim == 2
    depth = 1
    if first_attention is not None:
        stem = first_attention.rsplit(".proj_in.weight", 1)[0]
        indices = {int(m[1]) for k in state if (m := re.match(re.escape(stem) + r"\.transformer_blocks\.(\d+)\.", k))}
        depth = max(indices) + 1 if indices else 1
    config: dict[str, Any] = {
        "sample_size": 64,
        "in_channels": int(state["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(state["out.2.weight"].shape[0]),
        "block_out_channels": tuple(channels),
        "layers_per_block": layers,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        "mid_block_type": "UNetMidBlock2DCrossAttn" if "middle_block.1.proj_in.weight" in state else None,
        "cross_attention_dim": context,
        "attention_head_dim": 8 if context == 768 else tuple(max(1, c // 64) for c in channels),
        "use_linear_projection": linear,
        "transformer_layers_per_block": depth,
    }
    config["norm_num_groups"] = 32 if channels[0] % 32 == 0 else math.gcd(channels[0], 32)
    config.update(overrides)
    return config


def _empty_model(cls: Any, config: Mapping[str, Any]) -> Any:
    """A model built on the meta device (no memory), to read its parameter names and shapes."""
    import torch

    with torch.device("meta"):
        return cls(**config)


def materialise(cls: Any, config: Mapping[str, Any], state: Mapping[str, Any]) -> Any:
    """Build ``cls(**config)`` holding ``state`` without first allocating random weights (meta device)."""
    model = _empty_model(cls, config)
    model.load_state_dict(dict(state), strict=True, assign=True)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        model = cls(**config)  # a buffer outside the state dict: build normally
        model.load_state_dict(dict(state), strict=True)
    return model


def _reshape_like(tensor: torch.Tensor, shape: tuple[int, ...], key: str, part: str) -> torch.Tensor:
    """Accept 1x1 convolutions for linear layers and vice versa; refuse any other shape mismatch."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    if tensor.numel() == math.prod(shape) and (tensor.ndim == 4 or len(shape) == 4):
        return tensor.reshape(shape)
    raise ConversionError(part, hint=f"{key}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(shape)}")


def _convert(
    part: str,
    state: Mapping[str, Any],
    expected: Mapping[str, Any],
    original_name: Any,
    ignore_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Map ``state`` (original names) onto ``expected`` (diffusers names -> shapes), refusing leftovers."""
    table: dict[str, str] = {}
    unknown_targets = []
    for key in expected:
        try:
            table[original_name(key)] = key
        except KeyError:
            unknown_targets.append(key)
    kept = {k: v for k, v in state.items() if not any(s in k for s in ignore_keys)}
    dropped = len(state) - len(kept)
    if dropped:
        logger.warning("%s: dropped %d checkpoint keys matching %s", part, dropped, ignore_keys)
    unmapped = [k for k in kept if k not in table]
    missing = [table_key for table_key in table if table_key not in kept] + unknown_targets
    if unmapped or missing:
        raise ConversionError(part, unmapped, missing)
    return {table[k]: _reshape_like(v, tuple(expected[table[k]]), k, part) for k, v in kept.items()}


def convert_unet(
    state: Mapping[str, Any], config: Mapping[str, Any] | None = None, ignore_keys: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Original UNet weights (prefix removed) -> (diffusers state dict, config).

    Raises:
        ConversionError: listing unmapped and missing keys.
    """
    from diffusers import UNet2DConditionModel

    config = dict(config or infer_unet_config({k: v for k, v in state.items() if not any(s in k for s in ignore_keys)}))
    model = _empty_model(UNet2DConditionModel, config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _convert("UNet", state, expected, lambda key: unet_original_key(key, config), ignore_keys), config


def unet_to_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Diffusers UNet weights -> original-LDM names (with the ``model.diffusion_model.`` prefix)."""
    return {UNET_PREFIX + unet_original_key(k, config): v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------


def vae_original_key(key: str, config: Mapping[str, Any]) -> str:
    """The original-LDM name (without ``first_stage_model.``) of diffusers VAE weight ``key``.

    Raises:
        KeyError: for a key with no original counterpart.
    """
    levels = len(config["block_out_channels"])
    module, _, leaf = key.rpartition(".")
    if module in (
        "quant_conv",
        "post_quant_conv",
        "encoder.conv_in",
        "encoder.conv_out",
        "decoder.conv_in",
        "decoder.conv_out",
    ):
        return key
    if module in ("encoder.conv_norm_out", "decoder.conv_norm_out"):
        return f"{module.split('.')[0]}.norm_out.{leaf}"

    def resnet(rest: str) -> str:
        name, _, tail = rest.partition(".")
        if name not in ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"):
            raise KeyError(key)
        return f"{_VAE_RESNET_TO_ORIGINAL.get(name, name)}.{tail}"

    match = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", key)
    if match:
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{resnet(match[3])}"
    match = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key)
    if match:
        if match[2] not in _VAE_ATTENTION_TO_ORIGINAL:
            raise KeyError(key)
        return f"{match[1]}.mid.attn_1.{_VAE_ATTENTION_TO_ORIGINAL[match[2]]}.{match[3]}"
    match = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)
    if match:
        return f"encoder.down.{match[1]}.block.{match[2]}.{resnet(match[3])}"
    match = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)
    if match:
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    match = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)
    if match:
        return f"decoder.up.{levels - 1 - int(match[1])}.block.{match[2]}.{resnet(match[3])}"
    match = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key)
    if match:
        return f"decoder.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}"
    raise KeyError(key)


def infer_vae_config(state: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config from an original VAE state dict (prefix removed).

    Raises:
        ConversionError: when the state dict does not look like an LDM autoencoder.
    """
    if "encoder.conv_in.weight" not in state or "post_quant_conv.weight" not in state:
        raise ConversionError("VAE", hint="no encoder.conv_in / post_quant_conv weights: not an LDM autoencoder")
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    blocks = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block."))
    channels = tuple(int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels))
    groups = math.gcd(channels[0], 32)
    config: dict[str, Any] = {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": channels,
        "layers_per_block": blocks,
        "latent_channels": int(state["post_quant_conv.weight"].shape[0]),
        "norm_num_groups": groups,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    config.update(overrides)
    return config


def convert_vae(
    state: Mapping[str, Any], config: Mapping[str, Any] | None = None, ignore_keys: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Original VAE weights (prefix removed) -> (diffusers state dict, config).

    Raises:
        ConversionError: listing unmapped and missing keys.
    """
    from diffusers import AutoencoderKL

    config = dict(config or infer_vae_config({k: v for k, v in state.items() if not any(s in k for s in ignore_keys)}))
    model = _empty_model(AutoencoderKL, config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _convert("VAE", state, expected, lambda key: vae_original_key(key, config), ignore_keys), config


def vae_to_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Diffusers VAE weights -> original-LDM names (with ``first_stage_model.``; attention as 1x1 convolutions)."""
    out = {}
    for key, value in state.items():
        name = vae_original_key(key, config)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE_PREFIX + name] = value
    return out


# ----------------------------------------------------------------------------------------------
# Text encoder
# ----------------------------------------------------------------------------------------------


def infer_text_config(state: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """A ``CLIPTextConfig`` dict from CLIP text-encoder weights (``embeddings.*``/``encoder.*`` names)."""
    tokens = state["embeddings.token_embedding.weight"]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    hidden = int(tokens.shape[1])
    config = {
        "vocab_size": int(tokens.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(state["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": int(state["embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": "quick_gelu",
    }
    config.update(overrides)
    return config


def convert_text_encoder(
    state: Mapping[str, Any], ignore_keys: tuple[str, ...] = (), config: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """CLIP text weights (``cond_stage_model.transformer.`` removed) -> a loaded ``CLIPTextModel`` and its config.

    ``config`` overrides fields of the inferred ``CLIPTextConfig`` (e.g. ``num_attention_heads``).

    Raises:
        ConversionError: listing unmapped and missing keys.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    kept = {k.removeprefix("text_model."): v for k, v in state.items() if not any(s in k for s in ignore_keys)}
    kept.pop("embeddings.position_ids", None)
    config = infer_text_config(kept, **dict(config or {}))
    model = CLIPTextModel(CLIPTextConfig(**config))
    expected = model.state_dict()
    # transformers 4 nests the weights under text_model.; transformers 5 does not: follow the model.
    prefix = "text_model." if any(k.startswith("text_model.") for k in expected) else ""
    renamed = {prefix + k: v for k, v in kept.items()}
    buffers = {k for k in expected if k.endswith("position_ids")}
    unmapped = [k for k in renamed if k not in expected]
    missing = [k for k in expected if k not in renamed and k not in buffers]
    if unmapped or missing:
        raise ConversionError("text encoder", unmapped, missing)
    model.load_state_dict(renamed, strict=False)
    return model, config


# ----------------------------------------------------------------------------------------------
# Whole checkpoints
# ----------------------------------------------------------------------------------------------


def read_state_dict(path: Path | str, trust_pickle: bool | None = None) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` or ``.ckpt``/``.pt`` file (a Lightning ``state_dict`` is unwrapped).

    Raises:
        ConversionError: when a pickle holds objects beyond tensors and pickles are not trusted.
    """
    import torch

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    trust = trust_pickle if trust_pickle is not None else os.environ.get(TRUST_PICKLE_ENV, "") in ("1", "true")
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise ConversionError(
            "checkpoint",
            hint=f"{path.name} could not be read with weights_only=True ({type(exc).__name__}); if you trust the "
            f"file set {TRUST_PICKLE_ENV}=1 (or pass trust_pickle=True), or re-save it as .safetensors",
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ConversionError("checkpoint", hint=f"{path.name} holds a {type(data).__name__}, not a state dict")
    return data


def split_state_dict(state: Mapping[str, Any], ignore_keys: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Split an LDM state dict into ``{"unet", "vae", "text"}`` parts (prefixes removed).

    Raises:
        ConversionError: for keys outside the three parts that are not known LDM extras.
    """
    parts: dict[str, dict[str, Any]] = {"unet": {}, "vae": {}, "text": {}}
    unknown = []
    for key, value in state.items():
        if SKIPPED_KEYS.match(key) or any(s in key for s in ignore_keys):
            continue
        if key.startswith(UNET_PREFIX):
            parts["unet"][key.removeprefix(UNET_PREFIX)] = value
        elif key.startswith(VAE_PREFIX):
            parts["vae"][key.removeprefix(VAE_PREFIX)] = value
        elif key.startswith(TEXT_PREFIX):
            parts["text"][key.removeprefix(TEXT_PREFIX)] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError("checkpoint", unknown)
    if not parts["unet"] or not parts["vae"]:
        raise ConversionError(
            "checkpoint",
            hint=f"no {UNET_PREFIX}* or {VAE_PREFIX}* weights: not an original latent-diffusion checkpoint",
        )
    return parts


def convert_state_dict(
    state: Mapping[str, Any],
    ignore_keys: tuple[str, ...] = (),
    unet_config: Mapping[str, Any] | None = None,
    vae_config: Mapping[str, Any] | None = None,
    text_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert a whole LDM state dict.

    Args:
        state: The checkpoint's tensors.
        ignore_keys: Key substrings to drop instead of refusing.
        unet_config: Full diffusers UNet config (default: inferred).
        vae_config: Full diffusers VAE config (default: inferred).
        text_config: Overrides of the inferred ``CLIPTextConfig`` fields.

    Returns:
        ``{"unet": (state dict, config), "vae": (state dict, config), "text": CLIPTextModel or None}``.
    """
    parts = split_state_dict(state, ignore_keys)
    return {
        "unet": convert_unet(parts["unet"], unet_config, ignore_keys),
        "vae": convert_vae(parts["vae"], vae_config, ignore_keys),
        "text": convert_text_encoder(parts["text"], ignore_keys, text_config)[0] if parts["text"] else None,
    }


def load_single_file(
    path: Path | str,
    *,
    tokenizer: str | None = None,
    local_files_only: bool = False,
    ignore_keys: tuple[str, ...] = (),
    unet_config: Mapping[str, Any] | None = None,
    vae_config: Mapping[str, Any] | None = None,
    text_config: Mapping[str, Any] | None = None,
    trust_pickle: bool | None = None,
) -> DiffusionComponents:
    """Build :class:`~tools.diffusion.pipeline.DiffusionComponents` from an original-LDM single-file checkpoint.

    Args:
        path: The ``.ckpt`` / ``.safetensors`` file.
        tokenizer: Folder or hub id of the CLIP tokenizer (default ``openai/clip-vit-large-patch14``).
        local_files_only: Read the tokenizer from the local cache only.
        ignore_keys: Key substrings to drop instead of refusing (e.g. :data:`PROMPTFIX_EXTRA_KEYS`).
        unet_config: Explicit diffusers UNet config (default: inferred from the weights).
        vae_config: Explicit diffusers VAE config (default: inferred; GroupNorm group counts are not stored in
            weights and are assumed to be 32 where the widths allow).
        text_config: Overrides of the inferred CLIP text config (heads are assumed 64 channels wide).
        trust_pickle: Allow non-tensor pickles in ``.ckpt`` files (default: ``$RESTORA_TRUST_PICKLE``).

    Raises:
        ConversionError: when keys cannot be mapped (listed in the message).
        ModelNotFoundError: when the tokenizer cannot be found.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tools.diffusion.pipeline import DiffusionComponents, ModelNotFoundError, make_scheduler

    converted = convert_state_dict(
        read_state_dict(path, trust_pickle), ignore_keys, unet_config, vae_config, text_config
    )
    unet_state, unet_cfg = converted["unet"]
    vae_state, vae_cfg = converted["vae"]
    unet = materialise(UNet2DConditionModel, unet_cfg, unet_state)
    vae = materialise(AutoencoderKL, vae_cfg, vae_state)
    text_encoder, tok = converted["text"], None
    if text_encoder is not None:
        from transformers import CLIPTokenizer

        source = tokenizer or "openai/clip-vit-large-patch14"
        try:
            tok = CLIPTokenizer.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"{Path(path).name} needs the CLIP tokenizer {source!r}, which could not be loaded "
                f"({type(exc).__name__}); download it with `hf download {source}` or pass tokenizer=FOLDER"
            ) from exc
    return DiffusionComponents(
        unet=unet, vae=vae, scheduler=make_scheduler(), text_encoder=text_encoder, tokenizer=tok, source=str(path)
    )


__all__ = [
    "PROMPTFIX_EXTRA_KEYS",
    "ConversionError",
    "convert_state_dict",
    "convert_text_encoder",
    "convert_unet",
    "convert_vae",
    "infer_text_config",
    "infer_unet_config",
    "infer_vae_config",
    "load_single_file",
    "materialise",
    "read_state_dict",
    "split_state_dict",
    "unet_original_key",
    "unet_to_original",
    "vae_original_key",
    "vae_to_original",
]
