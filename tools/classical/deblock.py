"""JPEG artifact removal: shifted-grid DCT shrinkage with the quantisation-constraint projection.

JPEG quantises the 8x8 block DCT of the luminance (and of the 2x-subsampled chrominance) with a
known table. Re-applying the same quantisation at all 64 shifts of the block grid and averaging
(Nosratinia 2001) removes blocking and ringing, because the artifacts are aligned with the original
grid while the image content is not. This tool uses the soft form of that idea: in every overlapping
8x8 patch it zeroes the DCT coefficients below ``0.3 q`` (``q`` the quantiser step of that frequency;
rounding the surviving coefficients, as plain re-application does, only adds error) and averages the
patches. The luminance result is then projected onto the quantisation constraint set: on the original
grid each DCT coefficient is clamped to the quantisation cell the decoded coefficient came from, so
the output stays consistent with the compressed file.

The quantisation table is read off the image itself when possible: on the original grid the DCT
coefficients of a decoded JPEG cluster on multiples of the quantiser steps, so the coarsest IJG
quality whose table explains the coefficients is the one used. The ``quality`` parameter (from the
assessor) is the fallback when no table fits, e.g. after the image was cropped or resized.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from agent.degradations import Degradation
from agent.report import DegradationReport
from tools.base import STRENGTH, Param, Tool, ToolSpec, register_tool
from tools.classical.denoise import PATCH, SlidingDCT, aggregate_patches, pad_for_patches
from tools.imageops import IJG_LUMA_TABLE

logger = logging.getLogger(__name__)

_LUMA_BASE = IJG_LUMA_TABLE
_CHROMA_BASE = np.full((8, 8), 99.0)
_CHROMA_BASE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]

#: Fraction of a quantiser step below which sliding-patch coefficients are zeroed (0.25-0.3 best at Q 10-30).
_THRESHOLD = 0.3
#: Frequencies used to recognise the table: the 15 lowest (including DC), whose steps are coarse enough.
_DETECT_FREQUENCIES = [(u, v) for u in range(8) for v in range(8) if u + v <= 4]
#: Mean cos(2 pi c / step) above which a table explains the coefficients (true tables score 0.4-0.98,
#: unrelated ones about 0).
_MIN_ALIGNMENT = 0.35
#: Candidates within this of the best alignment count as explaining the data (neighbouring qualities).
_ALIGNMENT_SLACK = 0.02
#: Widening of each quantisation cell for the decoder's rounding (8-bit RGB output, clipping).
_CELL_MARGIN = 1.0
_DETECT_MAX_QUALITY = 92

_DCT_MATRIX = np.sqrt(2.0 / 8) * np.cos(np.pi * (2 * np.arange(8)[None, :] + 1) * np.arange(8)[:, None] / 16)
_DCT_MATRIX[0] /= np.sqrt(2.0)


def quantisation_table(quality: int, chroma: bool = False) -> np.ndarray:
    """The 8x8 quantiser steps libjpeg uses at ``quality`` (1-100) for luminance or chrominance."""
    quality = int(np.clip(quality, 1, 100))
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    base = _CHROMA_BASE if chroma else _LUMA_BASE
    return np.clip(np.floor((base * scale + 50.0) / 100.0), 1.0, 255.0)


def rgb_to_ycbcr(image: np.ndarray) -> np.ndarray:
    """JFIF full-range YCbCr in [0, 255] (as JPEG codes it) of an RGB image in [0, 1]."""
    rgb = image.astype(np.float32) * 255.0
    matrix = np.array(
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32
    )
    out = rgb @ matrix.T
    out[..., 1:] += 128.0
    return out


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`, back to RGB in [0, 1] (not clipped)."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return (rgb / 255.0).astype(np.float32)


def block_dct(plane: np.ndarray) -> np.ndarray:
    """Orthonormal DCT of the 8x8 blocks of ``plane`` (sides multiples of 8): shape (rows, cols, 8, 8)."""
    h, w = plane.shape
    blocks = plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    return _DCT_MATRIX @ blocks @ _DCT_MATRIX.T


def block_idct(coefficients: np.ndarray) -> np.ndarray:
    """Inverse of :func:`block_dct`."""
    rows, cols = coefficients.shape[:2]
    blocks = _DCT_MATRIX.T @ coefficients @ _DCT_MATRIX
    return blocks.transpose(0, 2, 1, 3).reshape(rows * 8, cols * 8)


def _pad_to_blocks(plane: np.ndarray, multiple: int = 8) -> np.ndarray:
    h, w = plane.shape
    return cv2.copyMakeBorder(plane, 0, -h % multiple, 0, -w % multiple, cv2.BORDER_REPLICATE)


def detect_quality(image: np.ndarray, max_blocks: int = 4096) -> int | None:
    """The IJG quality whose luminance table the image was decoded with, or ``None`` if none fits.

    For each candidate quality the non-zero grid-block DCT coefficients are tested for lying on
    multiples of the candidate's steps (the mean of ``cos(2 pi c / step)``: near 1 when they do, near
    0 for unrelated steps, negative for steps twice too coarse). Finer tables whose steps divide the
    true ones fit as well, so the coarsest quality within a small margin of the best fit wins. Only
    the grid anchored at the top-left pixel is examined: an image cropped or resized after compression
    returns ``None``, and so does one compressed above quality ~90, whose steps 8-bit rounding hides.
    """
    y = _pad_to_blocks(rgb_to_ycbcr(image)[..., 0].astype(np.float64)) - 128.0
    coefficients = block_dct(y).reshape(-1, 8, 8)
    # Blocks with pixels clipped at black or white no longer hold the decoded coefficients: skip them.
    clipped = np.asarray(((image <= 0.5 / 255.0) | (image >= 254.5 / 255.0)).any(axis=2), dtype=np.float32)
    clipped_blocks = _pad_to_blocks(clipped).reshape(y.shape[0] // 8, 8, y.shape[1] // 8, 8).max(axis=(1, 3))
    if (clipped_blocks == 0).sum() >= 16:
        coefficients = coefficients[clipped_blocks.ravel() == 0]
    if len(coefficients) > max_blocks:
        coefficients = coefficients[np.linspace(0, len(coefficients) - 1, max_blocks).astype(int)]
    rows, cols = np.array(_DETECT_FREQUENCIES).T
    samples = coefficients[:, rows, cols]
    alignments = np.full(_DETECT_MAX_QUALITY + 1, -1.0)
    for quality in range(1, _DETECT_MAX_QUALITY + 1):
        steps = quantisation_table(quality)[rows, cols]
        nonzero = np.abs(samples) >= steps / 2.0
        counts = nonzero.sum(axis=0)
        cosines = np.where(nonzero, np.cos(2.0 * np.pi * samples / steps), 0.0).sum(axis=0)
        usable = (steps >= 3.0) & (counts >= 20)
        # The median over frequencies: one frequency aligned by chance (e.g. the DC of a flat sky) is not enough.
        if usable.sum() >= 4:
            alignments[quality] = float(np.median(cosines[usable] / counts[usable]))
    best = float(alignments.max())
    if best < _MIN_ALIGNMENT:
        return None
    # Coarsest table that explains the coefficients about as well as the best one does.
    return int(np.argmax(alignments >= best - _ALIGNMENT_SLACK))


def _shrink_sliding(plane: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Zero small DCT coefficients of all overlapping 8x8 patches (steps from ``table``) and average."""
    padded, valid, crop = pad_for_patches(plane)
    patches = SlidingDCT(padded)
    thresholds = (_THRESHOLD * table).astype(np.float32)

    def shrunk(u: int, v: int) -> np.ndarray:
        c = patches.coefficient(u, v)
        return c * valid if u == 0 and v == 0 else c * ((np.abs(c) > thresholds[u, v]) * valid)

    assert table.shape == (PATCH, PATCH)
    return aggregate_patches(shrunk, valid)[crop]


def _project_on_quantisation_cells(estimate: np.ndarray, decoded: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Clamp each grid-block DCT coefficient of ``estimate`` into the cell of the decoded coefficient."""
    decoded_coefficients = block_dct(decoded.astype(np.float64) - 128.0)
    index = np.round(decoded_coefficients / table)
    low, high = (index - 0.5) * table - _CELL_MARGIN, (index + 0.5) * table + _CELL_MARGIN
    clamped = np.clip(block_dct(estimate.astype(np.float64) - 128.0), low, high)
    return (block_idct(clamped) + 128.0).astype(np.float32)


def deblock(image: np.ndarray, quality: int, chroma: bool = True) -> np.ndarray:
    """Remove the artifacts of JPEG compression at ``quality`` (4:2:0 chroma assumed) from ``image``."""
    h, w = image.shape[:2]
    ycc = rgb_to_ycbcr(image)
    luma = _pad_to_blocks(ycc[..., 0])
    luma_table = quantisation_table(quality)
    restored = _project_on_quantisation_cells(_shrink_sliding(luma, luma_table), luma, luma_table)
    ycc[..., 0] = restored[:h, :w]
    if chroma:
        chroma_table = quantisation_table(quality, chroma=True)
        for c in (1, 2):
            plane = _pad_to_blocks(ycc[..., c], 2)
            small = cv2.resize(plane, (plane.shape[1] // 2, plane.shape[0] // 2), interpolation=cv2.INTER_AREA)
            correction = _shrink_sliding(small, chroma_table) - small
            full = cv2.resize(correction, (plane.shape[1], plane.shape[0]), interpolation=cv2.INTER_LINEAR)
            ycc[..., c] += full[:h, :w]
    return ycbcr_to_rgb(ycc)


@register_tool
class JpegDeblock(Tool):
    """Shifted-grid DCT shrinkage with the quantisation-constraint projection (generalised Nosratinia)."""

    spec = ToolSpec(
        name="deblock_jpeg",
        description=(
            "Removes JPEG blocking and ringing: shrinks the DCT of every shifted 8x8 patch with the file's "
            "quantisation steps and keeps the result consistent with the compressed coefficients. Reads the "
            "quantisation table off the image when the 8x8 grid is intact; ~0.3 s per 512x512."
        ),
        restores=(Degradation.JPEG,),
        params=(
            STRENGTH,
            Param("quality", "int", 0, 0, 100, description="JPEG quality of the file; 0 = detect it"),
            Param("detect", "bool", True, description="prefer the table detected in the image over `quality`"),
            Param("chroma", "bool", True, description="also deblock the (subsampled) colour planes"),
        ),
    )

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Pass the estimated JPEG quality through (the tool still prefers the table it detects)."""
        est = report.estimates.get(Degradation.JPEG)
        if est is None or "quality" not in est.params:
            return {}
        return {"quality": int(np.clip(round(est.params["quality"]), 1, 100))}

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Deblock ``image``; leaves it unchanged when no quality is given and none is detected."""
        quality = int(params.get("quality", 0))
        if params.get("detect", True) or quality == 0:
            detected = detect_quality(image)
            if detected is not None:
                if quality and abs(detected - quality) > 5:
                    logger.info("deblock_jpeg: detected JPEG quality %d, using it instead of %d", detected, quality)
                quality = detected
        if quality == 0:
            logger.info("deblock_jpeg: no JPEG grid detected and no quality given; image left unchanged")
            return image
        return deblock(image, quality, chroma=bool(params.get("chroma", True)))
