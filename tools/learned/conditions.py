"""Conditioning vectors that a learned restorer measures on its own input.

A blind network sees only its receptive field, so it cannot tell faint noise from fine texture; FFDNet
showed that handing a denoiser the noise level lets one network serve every level, and keeps it from
smoothing nearly clean images. Here the level is *measured* on the input (the same way at training
and at inference), so the tool stays blind for its user: ``noise_level`` is the per-channel noise
sigma of :func:`tools.classical.denoise.estimate_noise` (opponent colour space, finest diagonal Haar
band), scaled so that 25/255 reads 1.0; ``jpeg_quality`` is the IJG quality read off the DCT lattice of
the luma (over 100), the lattice's strength and the 8x8 grid's blockiness, from
:func:`agent.perception.estimators.jpeg_measurements`.

The kind a model was trained with is recorded in its ``config.json`` (``"condition"``) and its
:class:`~tools.learned.nafnet.NAFNetConfig` has ``condition_dim`` set to the vector's length.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Noise sigma (in [0, 1] units) that the ``noise_level`` condition maps to 1.0.
NOISE_LEVEL_UNIT = 25.0 / 255.0


def noise_level(image: np.ndarray) -> np.ndarray:
    """Per-channel noise sigma of ``image`` (H, W, 3 float RGB in [0, 1]) in units of 25/255."""
    from tools.classical.denoise import estimate_noise

    return (estimate_noise(image) / NOISE_LEVEL_UNIT).astype(np.float32)


def jpeg_quality(image: np.ndarray) -> np.ndarray:
    """Estimated JPEG quality / 100, DCT-lattice strength and grid blockiness (clipped to [0, 2]) of ``image``.

    An image under 32 pixels a side holds too few 8x8 blocks to measure and reads as uncompressed (1, 0, 0).
    """
    from agent.perception.estimators import jpeg_measurements

    if min(image.shape[:2]) < 32:
        return np.array([1.0, 0.0, 0.0], dtype=np.float32)
    found = jpeg_measurements(image)
    return np.array(
        [found["jpeg_quality"] / 100.0, found["jpeg_periodicity"], min(max(found["jpeg_blockiness"], 0.0), 2.0)],
        dtype=np.float32,
    )


#: Condition kind -> (vector length, function of the input image).
CONDITIONS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    "noise_level": (3, noise_level),
    "jpeg_quality": (3, jpeg_quality),
}


def condition_dim(kind: str | None) -> int:
    """Length of the ``kind`` condition vector (0 for ``None``: an unconditioned model).

    Raises:
        ValueError: for an unknown kind.
    """
    if kind is None:
        return 0
    if kind not in CONDITIONS:
        raise ValueError(f"unknown condition {kind!r}; known: {sorted(CONDITIONS)}")
    return CONDITIONS[kind][0]


def measure_condition(kind: str, image: np.ndarray) -> np.ndarray:
    """The ``kind`` condition vector (float32, length :func:`condition_dim`) measured on ``image`` (H, W, 3)."""
    dim = condition_dim(kind)
    vector = np.asarray(CONDITIONS[kind][1](image), dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise ValueError(f"condition {kind!r} measured {vector.shape[0]} values, expected {dim}")
    return vector
