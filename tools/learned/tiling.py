"""Tiled inference with overlapping tiles blended by a feathered window, and device/dtype selection.

Large images do not fit a network's memory at once; they are cut into ``tile`` x ``tile`` tiles that
overlap by ``overlap`` pixels, each tile is restored on its own, and the results are averaged with
weights that fall off linearly towards each tile's border, so no seam is visible.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

#: Environment variables that pick the device (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``auto``) and dtype.
DEVICE_ENV = "RESTORA_DEVICE"
DTYPE_ENV = "RESTORA_DTYPE"

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def select_device(name: str | None = None) -> torch.device:
    """The inference device: ``name``, else ``$RESTORA_DEVICE``, else CPU (``"auto"`` takes CUDA when present).

    Raises:
        ValueError: when CUDA is asked for but not available.
    """
    name = (name or os.environ.get(DEVICE_ENV) or "cpu").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use device='cpu' or 'auto'")
    return torch.device(name)


def select_dtype(name: str | None = None, device: torch.device | None = None) -> torch.dtype:
    """The inference dtype: ``name``, else ``$RESTORA_DTYPE``, else float32 (half precision only off the CPU).

    Raises:
        ValueError: for an unknown dtype name.
    """
    name = (name or os.environ.get(DTYPE_ENV) or "float32").lower()
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    if name == "float16" and device is not None and device.type == "cpu":
        return torch.float32  # float16 convolutions are slow or missing on CPU
    return DTYPES[name]


def _feather(length: int, ramp: int, at_start_border: bool, at_end_border: bool) -> torch.Tensor:
    """1-D blending weights of one tile.

    Towards an edge shared with a neighbouring tile the weight is (almost) 0 over the first quarter of
    the overlap, where the tile's own padding corrupts a network's output, then rises linearly to 1;
    edges on the image border keep weight 1. Weights never reach exactly 0, so every pixel is covered.
    """
    ramp = min(ramp, length // 2)
    weights = torch.ones(length)
    if ramp <= 0:
        return weights
    margin = ramp // 4
    position = torch.arange(ramp, dtype=torch.float32)
    edge = ((position + 1 - margin) / (ramp - margin + 1)).clamp(min=1e-3, max=1.0)
    if not at_start_border:
        weights[:ramp] = edge
    if not at_end_border:
        weights[length - ramp :] = torch.minimum(weights[length - ramp :], edge.flip(0))
    return weights


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def tiled_forward(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int = 512,
    overlap: int = 32,
    scale: int = 1,
) -> torch.Tensor:
    """Apply ``fn`` to ``image`` (B, C, H, W) tile by tile and blend the overlapping results.

    Args:
        fn: The network; maps (B, C, h, w) to (B, C_out, h * scale, w * scale).
        image: The input batch.
        tile: Tile side in input pixels; ``<= 0`` or an image no larger than one tile runs in one pass.
        overlap: Pixels shared by neighbouring tiles (blended with a linear ramp).
        scale: The network's output scale (1 for same-size restoration, 2 or 4 for super-resolution).

    Returns:
        The blended output, (B, C_out, H * scale, W * scale).
    """
    height, width = image.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        return fn(image)
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    stride = tile - overlap
    output: torch.Tensor | None = None
    total: torch.Tensor | None = None
    for top in _starts(height, tile, stride):
        for left in _starts(width, tile, stride):
            patch = image[..., top : top + tile, left : left + tile]
            result = fn(patch)
            th, tw = result.shape[-2:]
            if output is None or total is None:
                shape = (image.shape[0], result.shape[1], height * scale, width * scale)
                output = image.new_zeros(shape, dtype=torch.float32)
                total = image.new_zeros((1, 1, height * scale, width * scale), dtype=torch.float32)
            rows_weight = _feather(th, overlap * scale, top == 0, top + tile >= height)
            cols_weight = _feather(tw, overlap * scale, left == 0, left + tile >= width)
            window = (rows_weight[:, None] * cols_weight[None, :]).to(output.device)
            rows = slice(top * scale, top * scale + th)
            cols = slice(left * scale, left * scale + tw)
            output[..., rows, cols] += result.float() * window
            total[..., rows, cols] += window
    assert output is not None and total is not None
    return (output / total).to(image.dtype)


def to_tensor(image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(H, W, 3) float32 array in [0, 1] -> (1, 3, H, W) tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device=device, dtype=dtype)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor -> (H, W, 3) float32 array clipped to [0, 1]."""
    return tensor[0].float().clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy().astype(np.float32)
