"""A small NAFNet-class restoration network (Chen et al., "Simple Baselines for Image Restoration", 2022).

The network is a U-shaped encoder/decoder of NAF blocks with additive skips and a global residual to
the input. A NAF block replaces non-linear activations with a *simple gate* (split the channels in two
halves and multiply them) and channel attention with *simplified channel attention* (global average
pool, one 1x1 convolution, multiply). Normalisation is a per-pixel LayerNorm over channels.

Optionally the network takes a degradation-conditioning vector (e.g. the assessor's per-type
probabilities and severities, or a text/prompt embedding) that is injected at every stage as a
channel-wise scale and shift, the way PromptIR and TextPromptIR condition their stages, so one
all-in-one model can serve several degradations.

Shapes: input and output are ``(B, 3, H, W)`` float tensors in ``[0, 1]``; any ``H, W`` is accepted
(the input is reflect-padded to a multiple of ``2 ** len(encoder_blocks)`` and cropped back).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


@dataclass
class NAFNetConfig:
    """Architecture hyper-parameters of :class:`NAFNet` (stored as ``config.json`` next to the weights)."""

    in_channels: int = 3
    width: int = 16
    encoder_blocks: tuple[int, ...] = (1, 1, 2)
    middle_blocks: int = 2
    decoder_blocks: tuple[int, ...] = (1, 1, 1)
    expansion: int = 2
    ffn_expansion: int = 2
    condition_dim: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.encoder_blocks = tuple(int(b) for b in self.encoder_blocks)
        self.decoder_blocks = tuple(int(b) for b in self.decoder_blocks)
        if len(self.encoder_blocks) != len(self.decoder_blocks):
            raise ValueError(
                f"encoder_blocks {self.encoder_blocks} and decoder_blocks {self.decoder_blocks} need the same length"
            )
        if self.width < 2 or self.width % 2:
            raise ValueError(f"width must be an even number >= 2, got {self.width}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of the configuration."""
        data = asdict(self)
        data["encoder_blocks"] = list(self.encoder_blocks)
        data["decoder_blocks"] = list(self.decoder_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NAFNetConfig:
        """Build a configuration from :meth:`to_dict` output; unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown NAFNet config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def load(cls, path: Path | str) -> NAFNetConfig:
        """Read a ``config.json`` written by :meth:`save` (its ``"model"`` entry or the whole file)."""
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data.get("model", data))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` tensor, with a learned per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every pixel's channel vector to zero mean and unit variance, then scale and shift."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class SimpleGate(nn.Module):
    """Split the channels into two halves and multiply them (NAFNet's activation-free non-linearity)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x[:, :C/2] * x[:, C/2:]``."""
        first, second = x.chunk(2, dim=1)
        return first * second


class NAFBlock(nn.Module):
    """One NAF block: a gated depth-wise-conv mixer with simplified channel attention, then a gated FFN."""

    def __init__(self, channels: int, expansion: int = 2, ffn_expansion: int = 2) -> None:
        super().__init__()
        hidden = channels * expansion
        self.norm1 = LayerNorm2d(channels)
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.gate = SimpleGate()
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden // 2, hidden // 2, 1))
        self.project = nn.Conv2d(hidden // 2, channels, 1)
        ffn_hidden = channels * ffn_expansion
        self.norm2 = LayerNorm2d(channels)
        self.ffn_in = nn.Conv2d(channels, ffn_hidden, 1)
        self.ffn_out = nn.Conv2d(ffn_hidden // 2, channels, 1)
        # Residual scales start at zero so every block begins as the identity (stable training from scratch).
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the mixer and the FFN, each as a scaled residual."""
        y = self.gate(self.depthwise(self.expand(self.norm1(x))))
        y = self.project(y * self.attention(y))
        x = x + y * self.beta
        y = self.ffn_out(self.gate(self.ffn_in(self.norm2(x))))
        return x + y * self.gamma


class ConditionInjector(nn.Module):
    """Channel-wise scale and shift of a stage's features from a conditioning vector (zero-initialised)."""

    def __init__(self, condition_dim: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(condition_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Return ``x * (1 + scale) + shift`` with ``scale, shift`` predicted from ``condition`` (B, D)."""
        scale, shift = self.linear(condition)[:, :, None, None].chunk(2, dim=1)
        return x * (1.0 + scale) + shift


class NAFNet(nn.Module):
    """U-shaped NAFNet with skips, a global residual and optional per-stage degradation conditioning."""

    def __init__(self, config: NAFNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NAFNetConfig()
        width = config.width
        self.intro = nn.Conv2d(config.in_channels, width, 3, padding=1)
        self.ending = nn.Conv2d(width, config.in_channels, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        conditioned = config.condition_dim > 0
        self.encoder_conditions = nn.ModuleList()
        self.decoder_conditions = nn.ModuleList()

        def blocks(channels: int, count: int) -> nn.Sequential:
            return nn.Sequential(*(NAFBlock(channels, config.expansion, config.ffn_expansion) for _ in range(count)))

        channels = width
        for count in config.encoder_blocks:
            if conditioned:
                self.encoder_conditions.append(ConditionInjector(config.condition_dim, channels))
            self.encoders.append(blocks(channels, count))
            self.downs.append(nn.Conv2d(channels, 2 * channels, 2, stride=2))
            channels *= 2
        self.middle_condition = ConditionInjector(config.condition_dim, channels) if conditioned else None
        self.middle = blocks(channels, config.middle_blocks)
        for count in config.decoder_blocks:
            # 1x1 conv to 2x channels then pixel shuffle: doubles resolution, halves channels.
            self.ups.append(nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            if conditioned:
                self.decoder_conditions.append(ConditionInjector(config.condition_dim, channels))
            self.decoders.append(blocks(channels, count))
        self.multiple = 2 ** len(config.encoder_blocks)

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Restore ``image`` (B, 3, H, W); ``condition`` (B, condition_dim) is required iff the model is conditioned.

        Raises:
            ValueError: when ``condition`` is missing for a conditioned model or has the wrong size.
        """
        dim = self.config.condition_dim
        if dim > 0:
            if condition is None or condition.shape != (image.shape[0], dim):
                got = None if condition is None else tuple(condition.shape)
                raise ValueError(
                    f"this model is conditioned: pass condition of shape ({image.shape[0]}, {dim}), got {got}"
                )
        elif condition is not None:
            raise ValueError("this model has condition_dim=0; pass condition=None or build it with condition_dim > 0")
        height, width = image.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        x = F.pad(image, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else image
        residual = x
        x = self.intro(x)
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs, strict=True)):
            if condition is not None:
                x = self.encoder_conditions[level](x, condition)
            x = encoder(x)
            skips.append(x)
            x = down(x)
        if self.middle_condition is not None and condition is not None:
            x = self.middle_condition(x, condition)
        x = self.middle(x)
        for level, (up, decoder) in enumerate(zip(self.ups, self.decoders, strict=True)):
            x = up(x) + skips.pop()
            if condition is not None:
                x = self.decoder_conditions[level](x, condition)
            x = decoder(x)
        x = self.ending(x) + residual
        return x[..., :height, :width]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
