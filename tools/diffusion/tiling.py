"""Latent tiling: run the UNet on overlapping latent windows and blend their predictions.

For images larger than the model was trained on (or than memory allows), each sampler step predicts
the noise window by window (``tile`` x ``tile`` latent cells, neighbours sharing ``overlap`` cells) and
averages the windows' predictions with weights that ramp linearly across the shared cells, so a cell
is dominated by the window in whose interior it lies (MultiDiffusion-style). The scheduler step, the
ancestral noise and high-frequency guidance then act on the whole latent, so there are no seams in the
noise. Window sides are multiples of the UNet's down-sampling factor.

The VAE is tiled separately by diffusers' own differentiable tiled encode/decode
(:func:`enable_vae_tiling`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def window_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of side ``tile`` covering ``size`` cells with at least ``overlap`` shared cells.

    Raises:
        ValueError: when ``overlap`` is not smaller than ``tile``.
    """
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap ({overlap}) must lie in [0, tile={tile})")
    stride = tile - overlap
    count = -(-(size - tile) // stride) + 1  # ceil
    if count == 1:
        return [0]
    # Spread the windows evenly: the first at 0, the last flush with the end.
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weights of one window: 1 inside, rising linearly across ``overlap`` cells on shared edges.

    Edges on the latent's border keep weight 1; weights never reach 0, so every cell is covered.
    """
    import torch

    weights = torch.ones(length)
    width = min(overlap, length // 2)
    if width <= 0:
        return weights
    rise = torch.arange(1, width + 1, dtype=torch.float32) / (width + 1)
    if not at_start:
        weights[:width] = rise
    if not at_end:
        weights[length - width :] = torch.minimum(weights[length - width :], rise.flip(0))
    return weights


def tiled_apply(
    fn: Callable[..., torch.Tensor],
    tensors: Sequence[torch.Tensor],
    tile: int,
    overlap: int,
    multiple: int = 1,
) -> torch.Tensor:
    """Apply ``fn`` to matching windows of ``tensors`` (all ``(B, C_i, h, w)``) and blend the results.

    Args:
        fn: Maps the windows of ``tensors`` (same positional order) to a ``(B, C_out, th, tw)`` prediction.
        tensors: Inputs sharing their spatial size (e.g. the scaled noisy latent and the image latent).
        tile: Window side in latent cells; ``<= 0`` or a latent no larger than one window runs ``fn`` once.
        overlap: Cells shared by neighbouring windows.
        multiple: Window sides are rounded down to a multiple of this (the UNet's down-sampling factor).

    Returns:
        The blended ``(B, C_out, h, w)`` prediction (differentiable with respect to ``tensors``).
    """
    import torch
    import torch.nn.functional as functional

    height, width = tensors[0].shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        return fn(*tensors)
    tile = max(multiple, tile // multiple * multiple)
    overlap = min(overlap, tile - multiple)
    tile_h, tile_w = min(tile, height), min(tile, width)
    output: torch.Tensor | None = None
    total = tensors[0].new_zeros((1, 1, height, width), dtype=torch.float32)
    for top in window_starts(height, tile_h, overlap):
        for left in window_starts(width, tile_w, overlap):
            rows, cols = slice(top, top + tile_h), slice(left, left + tile_w)
            result = fn(*(t[..., rows, cols] for t in tensors)).float()
            window = (
                ramp(tile_h, overlap, top == 0, top + tile_h >= height)[:, None]
                * ramp(tile_w, overlap, left == 0, left + tile_w >= width)[None, :]
            )
            window = window.to(result.device)
            padding = (left, width - left - tile_w, top, height - top - tile_h)
            # Out-of-place accumulation (a padded copy per window) keeps the blend differentiable.
            placed = functional.pad(result * window, padding)
            output = placed if output is None else output + placed
            total[..., rows, cols] += window
    assert output is not None
    return output / total.to(output.device)


def enable_vae_tiling(vae: Any, latent_tile: int, overlap_fraction: float = 0.25) -> None:
    """Switch on diffusers' tiled VAE encode/decode with tiles of ``latent_tile`` latent cells.

    Args:
        vae: A diffusers ``AutoencoderKL``.
        latent_tile: Tile side in latent cells (``<= 0`` switches tiling off).
        overlap_fraction: Share of a tile overlapping its neighbour (blended linearly by diffusers).
    """
    if latent_tile <= 0:
        vae.disable_tiling()
        return
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.enable_tiling()
    vae.tile_latent_min_size = int(latent_tile)
    vae.tile_sample_min_size = int(latent_tile * scale)
    vae.tile_overlap_factor = float(overlap_fraction)


__all__ = ["enable_vae_tiling", "ramp", "tiled_apply", "window_starts"]
