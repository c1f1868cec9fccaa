"""Seeded synthesis of every degradation in the vocabulary, MiO100 combinations and the clean-image split.

One entry point per level of detail:

* :func:`degrade` applies one degradation to one image and returns the parameters it applied;
* :func:`synthesize` applies several, always in :data:`agent.degradations.PHYSICAL_ORDER` (scene ->
  optics -> sensor -> processing -> compression) whatever order they are passed in;
* :func:`underwater` and :func:`udc` are physically motivated presets that produce several labels at once.

``severity`` in ``[0, 1]`` maps monotonically onto each type's parameter range of the chosen preset
(:data:`PRESET_RANGES`); it is drawn from the generator when ``None``. Explicit keyword parameters
override the severity mapping, and the recorded ``severity`` then follows the overriding value.
Every applied-parameter dict carries the canonical estimate names of :data:`CANONICAL_PARAMS`, so the
same numbers can train and check perception. Images are float32 ``(H, W, 3)`` RGB in ``[0, 1]``;
outputs keep the input size and are clipped to ``[0, 1]``.

The project's clean split (:func:`clean_split`): BSD100 (100 images) is for calibration and training;
LIVE1_color, McMaster and Set14 without its two non-photos (img_005 comic, img_013 slide), 59 images
in all, are for evaluation and benchmarks. The two never mix.
"""

from __future__ import annotations

import io
import logging
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from agent.degradations import PHYSICAL_ORDER, Degradation, parse_degradation
from tools.imageops import gray, to_uint8

logger = logging.getLogger(__name__)

D = Degradation

#: Photon levels of the Poisson model: an 8-bit sensor's full well, as in Real-ESRGAN-style synthesis.
POISSON_LEVELS = 255.0

#: Names of the noise models and darkening methods, for ``kind=`` and ``method=``.
NOISE_KINDS: tuple[str, ...] = ("gaussian", "poisson")
LOW_LIGHT_METHODS: tuple[str, ...] = ("v_shift", "gamma", "range")

#: Colour casts as directions in log-gain space (R, G, B); the magnitude scales them.
CAST_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "warm": (1.0, 0.0, -1.0),
    "cool": (-1.0, 0.0, 1.0),
    "green": (-0.5, 1.0, -0.5),
    "magenta": (0.5, -1.0, 0.5),
    "yellow": (0.5, 0.5, -1.0),
    "cyan": (-1.0, 0.5, 0.5),
}

_DEFAULT_RANGES: dict[Degradation, dict[str, tuple[float, float]]] = {
    D.NOISE: {"sigma": (5 / 255, 50 / 255), "scale": (0.25, 3.0)},
    D.MOTION_BLUR: {"length": (5.0, 25.0)},
    D.DEFOCUS_BLUR: {"radius": (1.5, 6.0)},
    D.JPEG: {"quality": (90.0, 10.0)},
    D.LOW_RESOLUTION: {"scale": (0.5, 0.25)},
    D.HAZE: {"beta": (0.3, 1.8), "airlight": (0.7, 1.0)},
    D.RAIN: {"density": (0.0015, 0.006), "length": (15.0, 40.0), "intensity": (0.35, 0.8)},
    D.RAINDROP: {"coverage": (0.05, 0.35)},
    D.LOW_LIGHT: {"shift": (20 / 255, 60 / 255), "gamma": (0.8, 0.4), "level": (180 / 255, 60 / 255)},
    D.COLOR_CAST: {"magnitude": (0.05, 0.35)},
}

#: Parameter ranges per preset: ``(value at severity 0, value at severity 1)``; ``airlight`` is drawn
#: uniformly whatever the severity. ``mio100`` follows RESEARCH.md section 2 (AgenticIR's MiO100):
#: Gaussian sigma 20-50/255 or Poisson scale 1-3, JPEG quality 30-10, V shift 30-50/255, gamma 0.7-0.5,
#: range compression to 150-100 of 255, haze A in [0.7, 1] with beta 0.6-1.8, low resolution x0.25.
PRESET_RANGES: dict[str, dict[Degradation, dict[str, tuple[float, float]]]] = {
    "default": _DEFAULT_RANGES,
    "mio100": {
        **_DEFAULT_RANGES,
        D.NOISE: {"sigma": (20 / 255, 50 / 255), "scale": (1.0, 3.0)},
        D.MOTION_BLUR: {"length": (7.0, 25.0)},
        D.DEFOCUS_BLUR: {"radius": (2.0, 6.0)},
        D.JPEG: {"quality": (30.0, 10.0)},
        D.LOW_RESOLUTION: {"scale": (0.25, 0.25)},
        D.HAZE: {"beta": (0.6, 1.8), "airlight": (0.7, 1.0)},
        D.LOW_LIGHT: {"shift": (30 / 255, 50 / 255), "gamma": (0.7, 0.5), "level": (150 / 255, 100 / 255)},
    },
}

#: The canonical estimated-parameter names per degradation (perception produces them, tools read them).
CANONICAL_PARAMS: dict[Degradation, tuple[str, ...]] = {
    D.NOISE: ("sigma", "poisson"),
    D.MOTION_BLUR: ("length", "angle"),
    D.DEFOCUS_BLUR: ("radius",),
    D.JPEG: ("quality",),
    D.LOW_RESOLUTION: ("scale",),
    D.HAZE: ("density", "airlight"),
    D.RAIN: ("energy", "angle"),
    D.RAINDROP: ("coverage",),
    D.LOW_LIGHT: ("exposure", "gain"),
    D.COLOR_CAST: ("r_gain", "g_gain", "b_gain"),
}

#: Keyword parameters :func:`degrade` accepts per degradation (anything else is refused).
ACCEPTED_PARAMS: dict[Degradation, frozenset[str]] = {
    D.NOISE: frozenset({"kind", "sigma", "scale"}),
    D.MOTION_BLUR: frozenset({"length", "angle"}),
    D.DEFOCUS_BLUR: frozenset({"radius"}),
    D.JPEG: frozenset({"quality"}),
    D.LOW_RESOLUTION: frozenset({"scale"}),
    D.HAZE: frozenset({"beta", "airlight", "depth"}),
    D.RAIN: frozenset({"density", "length", "intensity", "angle"}),
    D.RAINDROP: frozenset({"coverage"}),
    D.LOW_LIGHT: frozenset({"method", "shift", "gamma", "level"}),
    D.COLOR_CAST: frozenset({"cast", "magnitude", "r_gain", "g_gain", "b_gain"}),
}

#: AgenticIR's MiO100 benchmark: 16 combinations in three groups (RESEARCH.md section 2).
MIO100_COMBINATIONS: dict[str, tuple[Degradation, ...]] = {
    "A1": (D.RAIN, D.HAZE),
    "A2": (D.MOTION_BLUR, D.LOW_RESOLUTION),
    "A3": (D.LOW_LIGHT, D.NOISE),
    "A4": (D.DEFOCUS_BLUR, D.JPEG),
    "A5": (D.NOISE, D.JPEG),
    "A6": (D.RAIN, D.LOW_RESOLUTION),
    "A7": (D.MOTION_BLUR, D.LOW_LIGHT),
    "A8": (D.DEFOCUS_BLUR, D.HAZE),
    "B1": (D.MOTION_BLUR, D.JPEG),
    "B2": (D.HAZE, D.NOISE),
    "B3": (D.DEFOCUS_BLUR, D.LOW_RESOLUTION),
    "B4": (D.RAIN, D.LOW_LIGHT),
    "C1": (D.HAZE, D.MOTION_BLUR, D.LOW_RESOLUTION),
    "C2": (D.RAIN, D.NOISE, D.LOW_RESOLUTION),
    "C3": (D.LOW_LIGHT, D.DEFOCUS_BLUR, D.JPEG),
    "C4": (D.MOTION_BLUR, D.DEFOCUS_BLUR, D.NOISE),
}

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")

#: Set14 members that are not photographs (a comic drawing and a slide); left out of the evaluation split.
SET14_NON_PHOTOS: tuple[str, ...] = ("img_005", "img_013")

Params = dict[str, Any]


@dataclass
class Synthesized:
    """A degraded image with its clean source, its labels and the parameters applied, in physical order."""

    image: np.ndarray
    clean: np.ndarray
    labels: list[Degradation]
    applied: list[tuple[Degradation, Params]]
    seed: int | None = None
    preset: str = "default"

    def params(self, degradation: Degradation | str) -> Params:
        """Return the parameters applied for ``degradation``.

        Raises:
            KeyError: if that degradation was not applied.

        """
        wanted = _as_degradation(degradation)
        for applied_degradation, params in self.applied:
            if applied_degradation == wanted:
                return params
        raise KeyError(f"{wanted.value} was not applied; applied: {[d.value for d in self.labels]}")


# ----------------------------------------------------------------------------------------------
# Kernels and helpers shared with tools and perception
# ----------------------------------------------------------------------------------------------


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised, anti-aliased linear motion kernel.

    Args:
        length: Blur path length in pixels (>= 1).
        angle: Direction in degrees, counter-clockwise from the image's x axis (0 = horizontal,
            90 = vertical); the kernel is symmetric, so ``angle`` and ``angle + 180`` are the same.

    Returns:
        A float32 ``(k, k)`` kernel with odd ``k`` that sums to 1.

    """
    if not length >= 1.0:
        raise ValueError(f"motion blur length must be >= 1 pixel, got {length}")
    half = int(math.ceil(length / 2 + 0.5))
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    theta = math.radians(angle)
    along = x * math.cos(theta) - y * math.sin(theta)  # image y points down
    across = x * math.sin(theta) + y * math.cos(theta)
    kernel = np.clip(1.0 - np.abs(across), 0.0, 1.0) * np.clip(length / 2 + 0.5 - np.abs(along), 0.0, 1.0)
    return (kernel / kernel.sum()).astype(np.float32)


def disk_kernel(radius: float) -> np.ndarray:
    """Normalised, anti-aliased disk (pillbox) kernel of ``radius`` pixels, the usual defocus model."""
    if not radius > 0.0:
        raise ValueError(f"defocus radius must be > 0 pixels, got {radius}")
    half = int(math.ceil(radius + 0.5))
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    kernel = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0)
    return (kernel / kernel.sum()).astype(np.float32)


def depth_proxy(image: np.ndarray) -> np.ndarray:
    """Estimate a plausible relative depth map in ``[0, 1]`` (1 = far) from the image alone.

    There is no depth sensor, so depth mixes two cues that hold for most outdoor photos: the top of
    the frame is farther than the bottom (weight 0.6), and bright, unsaturated regions (sky, distant
    haze) are far (weight 0.4, heavily blurred so depth stays smooth). The mix is rescaled to [0, 1].
    """
    h, w = image.shape[:2]
    small_w = 64
    small_h = max(2, round(small_w * h / w))
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    value = small.max(axis=2)
    saturation = (value - small.min(axis=2)) / np.maximum(value, 1e-3)
    cue = cv2.GaussianBlur(value - saturation, (0, 0), sigmaX=4.0, borderType=cv2.BORDER_REFLECT)
    cue = (cue - cue.min()) / max(float(np.ptp(cue)), 1e-6)
    vertical = np.linspace(1.0, 0.0, small_h, dtype=np.float32)[:, None]
    depth = 0.6 * vertical + 0.4 * cue
    depth = (depth - depth.min()) / max(float(np.ptp(depth)), 1e-6)
    return np.clip(cv2.resize(depth.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def degradation_rng(seed: int, degradation: Degradation | str) -> np.random.Generator:
    """Return the generator :func:`synthesize` gives ``degradation`` for ``seed``.

    Each degradation has its own stream, so adding or removing one degradation from a combination
    does not change the random draws of the others.
    """
    return np.random.default_rng([int(seed), PHYSICAL_ORDER.index(_as_degradation(degradation))])


def photon_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson-distributed photon counts with the given means (float32, same shape).

    Means below 30 are sampled exactly; above, the rounded normal approximation (mean and variance
    equal to the expected count) is used, which is indistinguishable there and several times faster.
    """
    expected = np.asarray(expected, dtype=np.float32)
    counts = np.empty_like(expected)
    dim = expected < 30.0
    counts[dim] = rng.poisson(expected[dim].astype(np.float64))
    bright = expected[~dim]
    counts[~dim] = np.round(bright + np.sqrt(bright) * rng.standard_normal(bright.shape, dtype=np.float32))
    return counts


def canonical_params(degradation: Degradation | str, applied: Mapping[str, Any]) -> dict[str, float]:
    """Pick the canonical estimate names (:data:`CANONICAL_PARAMS`) out of ``applied``, as floats."""
    names = CANONICAL_PARAMS[_as_degradation(degradation)]
    return {name: float(applied[name]) for name in names if name in applied}


def _as_degradation(value: Degradation | str) -> Degradation:
    return value if isinstance(value, Degradation) else parse_degradation(value)


def _lerp(span: tuple[float, float], severity: float) -> float:
    return float(span[0] + (span[1] - span[0]) * severity)


def _unlerp(value: float, span: tuple[float, float], fallback: float) -> float:
    if span[1] == span[0]:
        return fallback
    return float(np.clip((value - span[0]) / (span[1] - span[0]), 0.0, 1.0))


def _resolve(opts: Mapping[str, Any], name: str, span: tuple[float, float], severity: float) -> tuple[float, float]:
    """Value of ``name`` from ``opts`` or from ``severity``; returns (value, severity consistent with it)."""
    if name in opts:
        value = float(opts[name])
        return value, _unlerp(value, span, severity)
    return _lerp(span, severity), severity


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"expected an (H, W, 3) RGB array, got {shape}; repeat grayscale into 3 channels first")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected a float image in [0, 1], got {image.dtype}; convert with tools.imageops.from_uint8")
    return image.astype(np.float32, copy=False)


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # cv2.filter2D correlates; every kernel here is point-symmetric, so this equals convolution.
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _resize_bicubic(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased bicubic resize (Pillow's, like MATLAB ``imresize``) of a float (H, W, C) image."""
    channels = []
    for c in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
        channels.append(np.asarray(plane.resize((width, height), Image.Resampling.BICUBIC)))
    return np.stack(channels, axis=2).astype(np.float32)


def _exposure_params(before: np.ndarray, after: np.ndarray) -> Params:
    exposure = float(gray(after).mean())
    return {"exposure": exposure, "gain": float(gray(before).mean()) / max(exposure, 1e-3)}


# ----------------------------------------------------------------------------------------------
# One synthesiser per degradation: (image, rng, severity, ranges, opts) -> (image, params)
# ----------------------------------------------------------------------------------------------


def _noise(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    draw = rng.random()  # drawn even when overridden, so later draws do not depend on overrides
    kind = opts.get("kind")
    if kind is None:
        kind = "poisson" if "scale" in opts else "gaussian" if "sigma" in opts else NOISE_KINDS[int(draw >= 0.5)]
    if kind == "gaussian":
        if "scale" in opts:
            raise ValueError("scale applies to Poisson noise; pass sigma for Gaussian noise")
        sigma, severity = _resolve(opts, "sigma", ranges["sigma"], severity)
        out = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
        return out, {"severity": severity, "kind": kind, "sigma": sigma, "poisson": 0.0}
    if kind == "poisson":
        if "sigma" in opts:
            raise ValueError("sigma applies to Gaussian noise; pass scale (1-3 in MiO100) for Poisson noise")
        scale, severity = _resolve(opts, "scale", ranges["scale"], severity)
        counts = photon_counts(image * np.float32(POISSON_LEVELS), rng) / np.float32(POISSON_LEVELS)
        out = image + (counts - image) * np.float32(scale)
        sigma = scale * math.sqrt(float(image.mean()) / POISSON_LEVELS)  # noise std at the mean intensity
        return out, {"severity": severity, "kind": kind, "scale": scale, "sigma": sigma, "poisson": 1.0}
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


def _motion_blur(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    length, severity = _resolve(opts, "length", ranges["length"], severity)
    angle = float(opts.get("angle", rng.uniform(0.0, 180.0))) % 180.0
    out = _filter(image, motion_kernel(length, angle))
    return out, {"severity": severity, "length": length, "angle": angle}


def _defocus_blur(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    radius, severity = _resolve(opts, "radius", ranges["radius"], severity)
    return _filter(image, disk_kernel(radius)), {"severity": severity, "radius": radius}


def _jpeg(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    quality, severity = _resolve(opts, "quality", ranges["quality"], severity)
    quality_int = int(np.clip(round(quality), 1, 100))
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=quality_int, subsampling=2)  # 4:2:0
    buffer.seek(0)
    out = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    return out, {"severity": severity, "quality": float(quality_int), "bytes": float(buffer.getbuffer().nbytes)}


def _low_resolution(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    scale, severity = _resolve(opts, "scale", ranges["scale"], severity)
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"low_resolution scale must be in (0, 1], got {scale}")
    h, w = image.shape[:2]
    small_w, small_h = max(1, round(w * scale)), max(1, round(h * scale))
    out = _resize_bicubic(_resize_bicubic(image, small_w, small_h), w, h)
    return out, {"severity": severity, "scale": scale, "factor": 1.0 / scale, "small_size": [small_h, small_w]}


def _haze(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    beta, severity = _resolve(opts, "beta", ranges["beta"], severity)
    airlight = float(opts.get("airlight", rng.uniform(*ranges["airlight"])))
    depth = opts.get("depth")
    depth = depth_proxy(image) if depth is None else np.asarray(depth, dtype=np.float32)
    if depth.shape != image.shape[:2]:
        raise ValueError(f"depth must be (H, W) = {image.shape[:2]}, got {depth.shape}")
    transmission = np.exp(-beta * depth).astype(np.float32)
    out = image * transmission[..., None] + airlight * (1.0 - transmission[..., None])
    density = float(1.0 - transmission.mean())
    return out, {"severity": severity, "beta": beta, "airlight": airlight, "density": density}


#: Rain layers: (length factor, brightness factor, width sigma in pixels); near streaks long and wide.
_RAIN_LAYERS = ((1.0, 1.0, 0.8), (0.7, 0.75, 0.5), (0.45, 0.55, 0.0))


def _rain(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    density, severity = _resolve(opts, "density", ranges["density"], severity)
    length = float(opts.get("length", _lerp(ranges["length"], severity)))
    intensity = float(opts.get("intensity", _lerp(ranges["intensity"], severity)))
    angle = float(opts.get("angle", rng.uniform(60.0, 120.0)))  # within 30 degrees of vertical
    h, w = image.shape[:2]
    streaks = np.zeros((h, w), dtype=np.float32)
    for length_factor, brightness, width in _RAIN_LAYERS:
        # Seeds come from uniform maps compared with the density, so a denser rain is a superset.
        chance = rng.random((h, w), dtype=np.float32)
        strength = rng.random((h, w), dtype=np.float32)
        seeds = np.where(chance < density / len(_RAIN_LAYERS), 0.5 + 0.5 * strength, 0.0).astype(np.float32)
        kernel = motion_kernel(max(3.0, length * length_factor), angle + rng.uniform(-4.0, 4.0))
        layer = _filter(seeds, kernel) / kernel.max()
        if width > 0:
            across_peak = float(cv2.getGaussianKernel(2 * math.ceil(3 * width) + 1, width).max())
            layer = cv2.GaussianBlur(layer, (0, 0), sigmaX=width, borderType=cv2.BORDER_REFLECT) / across_peak
        streaks += brightness * layer
    streaks = cv2.GaussianBlur(np.clip(streaks * intensity, 0.0, 1.0), (3, 3), sigmaX=0.5)
    out = image + streaks[..., None] * (1.0 - image)  # screen blend: streaks brighten, never darken
    params = {"severity": severity, "density": density, "length": length, "intensity": intensity}
    return out, params | {"angle": angle % 180.0, "energy": float(streaks.mean())}


def _raindrop(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    target, severity = _resolve(opts, "coverage", ranges["coverage"], severity)
    h, w = image.shape[:2]
    size = min(h, w)
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=max(1.0, 0.006 * size), borderType=cv2.BORDER_REFLECT)
    map_y, map_x = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.zeros((h, w), dtype=np.float32)
    shade = np.zeros((h, w), dtype=np.float32)  # > 0 brightens (specular highlight), < 0 darkens (rim)
    covered, drops, radii = 0, 0, []
    while covered < target * h * w and drops < 5000:
        # Drops are drawn one after another until the covered area reaches the target, so a higher
        # severity keeps every drop of a lower one (same seed) and adds more.
        radius = max(3.0, rng.uniform(0.012, 0.05) * size)
        aspect = rng.uniform(0.7, 1.0)  # drops are a little taller than wide
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        magnification = rng.uniform(0.3, 0.6)
        rx, ry = radius * aspect, radius
        x0, x1 = max(0, int(cx - rx) - 2), min(w, int(cx + rx) + 3)
        y0, y1 = max(0, int(cy - ry) - 2), min(h, int(cy + ry) + 3)
        drops += 1
        radii.append(radius)
        if x0 >= x1 or y0 >= y1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        dx, dy = (xx - cx) / rx, (yy - cy) / ry
        rho = np.sqrt(dx * dx + dy * dy)
        soft = np.clip((1.0 - rho) * radius / 1.5, 0.0, 1.0)  # about 1.5 px soft edge
        before = alpha[y0:y1, x0:x1]
        inside = soft > before
        covered += int(np.count_nonzero((soft > 0.5) & (before <= 0.5)))
        # A drop is a small lens: it shows a shrunken, inverted, blurred view of the scene around it,
        # more compressed towards its rim; its edge looks dark and it catches a highlight at the top left.
        lens = magnification * (1.0 + 0.4 * rho * rho)
        map_x[y0:y1, x0:x1] = np.where(inside, cx - (xx - cx) * lens, map_x[y0:y1, x0:x1])
        map_y[y0:y1, x0:x1] = np.where(inside, cy - (yy - cy) * lens, map_y[y0:y1, x0:x1])
        alpha[y0:y1, x0:x1] = np.maximum(before, soft)
        rim = -0.3 * np.exp(-(((rho - 0.9) / 0.12) ** 2))
        highlight = 0.6 * np.exp(-((dx + 0.35) ** 2 + (dy + 0.4) ** 2) / 0.03)
        shade[y0:y1, x0:x1] = np.where(inside, (rim + highlight) * soft, shade[y0:y1, x0:x1])
    refracted = cv2.remap(blurred, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    refracted = 0.85 * refracted + 0.05  # water lowers contrast a little
    out = image * (1.0 - alpha[..., None]) + refracted * alpha[..., None]
    bright, dark = np.maximum(shade, 0.0)[..., None], np.minimum(shade, 0.0)[..., None]
    out = out * (1.0 + dark) + bright * (1.0 - out)
    params = {"severity": severity, "coverage": float((alpha > 0.5).mean()), "target_coverage": target}
    return out, params | {"drops": float(drops), "mean_radius": float(np.mean(radii)) if radii else 0.0}


#: The parameter each darkening method takes.
_LOW_LIGHT_PARAM = {"v_shift": "shift", "gamma": "gamma", "range": "level"}


def _low_light(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    draw = int(rng.integers(len(LOW_LIGHT_METHODS)))
    method = opts.get("method", LOW_LIGHT_METHODS[draw])
    if method not in _LOW_LIGHT_PARAM:
        raise ValueError(f"low_light method must be one of {LOW_LIGHT_METHODS}, got {method!r}")
    name = _LOW_LIGHT_PARAM[method]
    wrong = sorted(set(opts) & (set(_LOW_LIGHT_PARAM.values()) - {name}))
    if wrong:
        raise ValueError(f"{wrong} do not apply to low_light method {method!r}, which takes {name!r}")
    value, severity = _resolve(opts, name, ranges[name], severity)
    if method == "v_shift":  # HSV: V = max(R, G, B) shifted down by `value`, hue and saturation kept
        brightest = image.max(axis=2, keepdims=True)
        out = image * (np.maximum(brightest - value, 0.0) / np.maximum(brightest, 1e-6))
    elif method == "gamma":  # I ** (1 / gamma): gamma < 1 darkens
        out = np.power(np.clip(image, 0.0, 1.0), 1.0 / value)
    else:  # [0, 1] compressed linearly into [0, value]
        out = image * np.float32(value)
    params: Params = {"severity": severity, "method": method, name: value}
    return out, params | _exposure_params(image, out)


def _color_cast(image: np.ndarray, rng: np.random.Generator, severity: float, ranges: Mapping, opts: Params):
    names = tuple(CAST_DIRECTIONS)
    cast = opts.get("cast", names[rng.integers(len(names))])
    magnitude, severity = _resolve(opts, "magnitude", ranges["magnitude"], severity)
    explicit = [name for name in ("r_gain", "g_gain", "b_gain") if name in opts]
    if explicit:  # neutralising gains given: the cast applies their inverse
        if len(explicit) != 3:
            raise ValueError("pass all of r_gain, g_gain and b_gain (the gains that neutralise the cast)")
        gains = 1.0 / np.array([float(opts[name]) for name in ("r_gain", "g_gain", "b_gain")], dtype=np.float32)
        cast = "custom"
    else:
        if cast not in CAST_DIRECTIONS:
            raise ValueError(f"color_cast cast must be one of {names}, got {cast!r}")
        gains = np.exp(magnitude * np.array(CAST_DIRECTIONS[cast], dtype=np.float32))
        gains /= float(gains @ np.array([0.299, 0.587, 0.114], dtype=np.float32))  # keep luminance
    out = image * gains.astype(np.float32)
    params = {"severity": severity, "cast": cast, "magnitude": magnitude}
    params |= {f"cast_{c}_gain": float(g) for c, g in zip("rgb", gains, strict=True)}
    return out, params | {f"{c}_gain": float(1.0 / g) for c, g in zip("rgb", gains, strict=True)}


_SYNTHESISERS: dict[Degradation, Callable[..., tuple[np.ndarray, Params]]] = {
    D.NOISE: _noise,
    D.MOTION_BLUR: _motion_blur,
    D.DEFOCUS_BLUR: _defocus_blur,
    D.JPEG: _jpeg,
    D.LOW_RESOLUTION: _low_resolution,
    D.HAZE: _haze,
    D.RAIN: _rain,
    D.RAINDROP: _raindrop,
    D.LOW_LIGHT: _low_light,
    D.COLOR_CAST: _color_cast,
}


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def degrade(
    image: np.ndarray,
    degradation: Degradation | str,
    rng: np.random.Generator,
    severity: float | None = None,
    *,
    preset: str = "default",
    **params: Any,
) -> tuple[np.ndarray, Params]:
    """Apply one degradation to ``image``.

    Args:
        image: Float32 ``(H, W, 3)`` RGB in ``[0, 1]``.
        degradation: A :class:`Degradation` or its name.
        rng: The random generator every random choice is drawn from (seeded by the caller).
        severity: In ``[0, 1]``; maps monotonically onto the preset's range (:data:`PRESET_RANGES`).
            ``None`` draws it uniformly from ``rng``.
        preset: ``"default"`` (wide ranges, milder settings included) or ``"mio100"``.
        **params: Explicit parameters that override the severity mapping; the accepted names per type
            are in :data:`ACCEPTED_PARAMS` (e.g. ``kind="poisson"``, ``sigma=0.1``, ``angle=45``,
            ``method="gamma"``, ``cast="warm"``).

    Returns:
        The degraded float32 image (same size, clipped to ``[0, 1]``) and the parameters applied,
        including ``severity`` and the canonical names of :data:`CANONICAL_PARAMS`.

    Raises:
        ValueError: on a bad image, an unknown preset or parameter, or a severity outside ``[0, 1]``.

    """
    kind = _as_degradation(degradation)
    if preset not in PRESET_RANGES:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESET_RANGES)}")
    image = _check_image(image)
    unknown = set(params) - ACCEPTED_PARAMS[kind]
    if unknown:
        raise ValueError(f"{kind.value} does not take {sorted(unknown)}; it accepts {sorted(ACCEPTED_PARAMS[kind])}")
    if severity is None:
        severity = float(rng.random())
    elif not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    out, applied = _SYNTHESISERS[kind](image, rng, float(severity), PRESET_RANGES[preset][kind], params)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False), applied


def synthesize(
    clean: np.ndarray,
    degradations: Iterable[Degradation | str] | str,
    seed: int,
    severity: float | None = None,
    preset: str = "default",
    *,
    params: Mapping[Degradation | str, Mapping[str, Any]] | None = None,
) -> Synthesized:
    """Degrade ``clean`` with several degradations applied in :data:`PHYSICAL_ORDER`.

    Args:
        clean: Float32 ``(H, W, 3)`` RGB in ``[0, 1]``.
        degradations: Degradations or names in any order (duplicates ignored), or a MiO100 key such as
            ``"C3"``.
        seed: Seeds one independent generator per degradation (:func:`degradation_rng`).
        severity: One severity for every degradation, or ``None`` to draw one per degradation.
        preset: ``"default"`` or ``"mio100"``.
        params: Optional explicit parameters per degradation, passed to :func:`degrade`.

    Returns:
        A :class:`Synthesized` whose labels and applied parameters follow the physical order.

    """
    if isinstance(degradations, str) and degradations in MIO100_COMBINATIONS:
        degradations = MIO100_COMBINATIONS[degradations]
    elif isinstance(degradations, (str, Degradation)):
        degradations = [degradations]
    wanted = {_as_degradation(d) for d in degradations}
    overrides = {_as_degradation(d): dict(p) for d, p in (params or {}).items()}
    stray = set(overrides) - wanted
    if stray:
        raise ValueError(f"params given for {sorted(d.value for d in stray)}, which are not being applied")
    clean = _check_image(clean)
    image = clean
    applied: list[tuple[Degradation, Params]] = []
    for degradation in (d for d in PHYSICAL_ORDER if d in wanted):
        rng = degradation_rng(seed, degradation)
        image, used = degrade(image, degradation, rng, severity, preset=preset, **overrides.get(degradation, {}))
        applied.append((degradation, used))
    return Synthesized(image, clean, [d for d, _ in applied], applied, seed=seed, preset=preset)


def underwater(clean: np.ndarray, rng: np.random.Generator, severity: float | None = None) -> Synthesized:
    """Underwater look: wavelength-dependent attenuation, blue-green backscatter and mild blur.

    The scene's light travels down from the surface (depth ``z``) and then across the water to the
    camera (distance from :func:`depth_proxy`); both paths attenuate red fastest, then green, then
    blue. Backscatter adds a blue-green veiling light ``B (1 - t_c)``; forward scattering blurs a little.
    Labels are colour cast and haze, plus low light when the result is much darker than the source.
    """
    clean = _check_image(clean)
    if severity is None:
        severity = float(rng.random())
    elif not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    attenuation = np.array([0.45, 0.11, 0.06], dtype=np.float32) * rng.uniform(0.8, 1.25)  # per metre, R G B
    surface_depth = _lerp((1.0, 6.0), severity) * rng.uniform(0.8, 1.2)
    distance = _lerp((0.8, 5.0), severity) * (0.25 + 0.75 * depth_proxy(clean))
    veil = np.array([rng.uniform(0.02, 0.12), rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.7)], dtype=np.float32)
    exposure = rng.uniform(1.0, 1.5)  # the camera's auto exposure brightens part of the loss back
    downwelling = np.exp(-0.7 * attenuation * surface_depth)
    transmission = np.exp(-attenuation[None, None, :] * distance[..., None]).astype(np.float32)
    out = exposure * (clean * downwelling * transmission) + veil * (1.0 - transmission)
    blur = _lerp((0.4, 1.2), severity)
    out = np.clip(cv2.GaussianBlur(out.astype(np.float32), (0, 0), sigmaX=blur), 0.0, 1.0)
    channel_means = out.reshape(-1, 3).mean(axis=0)
    neutral = float(channel_means.mean()) / np.maximum(channel_means, 1e-3)  # grey-world neutralising gains
    model = {"severity": severity, "surface_depth": surface_depth, "blur_sigma": blur, "exposure_gain": exposure}
    applied: list[tuple[Degradation, Params]] = [
        (D.HAZE, {"severity": severity, "density": float(1.0 - transmission.mean()), "airlight": float(veil.mean())})
    ]
    light = _exposure_params(clean, out)
    if light["gain"] > 1.6 or light["exposure"] < 0.2:  # darker than the source, or simply dark
        applied.append((D.LOW_LIGHT, {"severity": severity} | light))
    cast = {f"{c}_gain": float(g) for c, g in zip("rgb", neutral, strict=True)}
    applied.append((D.COLOR_CAST, {"severity": severity} | cast))
    applied[0][1].update({"model": "underwater", **model})
    return Synthesized(out.astype(np.float32), clean, [d for d, _ in applied], applied)


#: Under-display panels: pixel pitch and open fraction of the display grid (aperture-plane samples),
#: lens pupil radius range (smaller = blurrier), brightness range, noise sigma range and per-channel
#: transmission tint. T-OLED mostly blurs and dims; P-OLED passes far less light, tints and flares.
UDC_PANELS: dict[str, dict[str, Any]] = {
    "toled": {"pitch": 16, "open": (0.6, 0.8), "pupil": (30.0, 20.0), "brightness": (0.65, 0.4),
              "sigma": (0.008, 0.025), "tint": (1.0, 1.0, 1.0), "flare": 0.0},
    "poled": {"pitch": 16, "open": (0.3, 0.35), "pupil": (26.0, 18.0), "brightness": (0.4, 0.22),
              "sigma": (0.015, 0.04), "tint": (1.08, 1.0, 0.72), "flare": 0.35},
}  # fmt: skip


def diffraction_psf(panel: str = "toled", pupil_radius: float = 24.0, size: int = 33) -> np.ndarray:
    """Per-channel PSF of a camera behind a display: ``|FFT(pupil * pixel grid)|^2`` (Fraunhofer).

    The aperture is a circular lens pupil multiplied by the display's periodic grid of openings;
    its far-field intensity spreads light into a central lobe plus grating orders. The PSF is
    computed for green and rescaled by wavelength (R 620 nm, G 540 nm, B 460 nm) for the other channels.

    Returns:
        A float32 ``(size, size, 3)`` array; each channel sums to 1.

    """
    if panel not in UDC_PANELS:
        raise ValueError(f"panel must be one of {sorted(UDC_PANELS)}, got {panel!r}")
    spec = UDC_PANELS[panel]
    n = 128
    pitch = spec["pitch"]
    open_x, open_y = spec["open"]
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    pupil = (x - n / 2) ** 2 + (y - n / 2) ** 2 <= pupil_radius**2
    grid = ((x % pitch) < open_x * pitch) & ((y % pitch) < open_y * pitch)
    field = np.fft.fft2((pupil & grid).astype(np.float64))
    intensity = np.fft.fftshift(np.abs(field) ** 2).astype(np.float32)
    half = size // 2
    centre = n // 2
    channels = []
    for wavelength in (620.0, 540.0, 460.0):
        zoom = wavelength / 540.0  # diffraction angles grow with wavelength
        # Scale the whole pattern about its centre first, then crop, so every channel is cut at the same radius.
        matrix = np.array([[zoom, 0, centre * (1 - zoom)], [0, zoom, centre * (1 - zoom)]], dtype=np.float32)
        scaled = cv2.warpAffine(intensity, matrix, (n, n), flags=cv2.INTER_LINEAR) / zoom**2
        cropped = scaled[centre - half : centre + half + 1, centre - half : centre + half + 1]
        channels.append(cropped / cropped.sum())
    return np.stack(channels, axis=2).astype(np.float32)


def udc(
    clean: np.ndarray, rng: np.random.Generator, panel: str = "toled", severity: float | None = None
) -> Synthesized:
    """Under-display-camera look: display-grid diffraction blur, low transmission, sensor noise.

    ``"toled"`` mostly blurs and dims; ``"poled"`` passes less light, tints (blue absorbed most) and
    adds flare around highlights. Labels: defocus blur, low light, noise, plus colour cast for P-OLED.
    """
    clean = _check_image(clean)
    if panel not in UDC_PANELS:
        raise ValueError(f"panel must be one of {sorted(UDC_PANELS)}, got {panel!r}")
    if severity is None:
        severity = float(rng.random())
    elif not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    spec = UDC_PANELS[panel]
    pupil = _lerp(spec["pupil"], severity)
    psf = diffraction_psf(panel, pupil)
    out = np.stack([_filter(clean[..., c], psf[..., c]) for c in range(3)], axis=2)
    if spec["flare"] > 0:  # glare: highlights spread widely by the panel's strong grating orders
        highlights = np.clip((gray(clean) - 0.6) / 0.4, 0.0, 1.0)
        sigma = 0.05 * min(clean.shape[:2])
        glow = cv2.GaussianBlur(highlights, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
        warm = np.array([1.0, 0.9, 0.75], dtype=np.float32)
        out = out + spec["flare"] * rng.uniform(0.7, 1.3) * glow[..., None] * warm
    brightness = _lerp(spec["brightness"], severity) * rng.uniform(0.9, 1.1)
    tint = np.array(spec["tint"], dtype=np.float32) * rng.uniform(0.95, 1.05, size=3).astype(np.float32)
    if panel == "toled":
        tint = np.ones(3, dtype=np.float32)
    dimmed = np.clip(out * brightness * tint, 0.0, 1.0)
    sigma_noise = _lerp(spec["sigma"], severity)
    photon = photon_counts(dimmed * np.float32(400.0), rng) / np.float32(400.0)  # few photons reach the sensor
    noisy = photon + rng.standard_normal(dimmed.shape, dtype=np.float32) * np.float32(sigma_noise)
    out = np.clip(noisy, 0.0, 1.0).astype(np.float32)
    second_moment = float((psf[..., 1] * _radius_squared(psf.shape[0])).sum())
    noise_sigma = float(np.std(noisy - dimmed))
    applied: list[tuple[Degradation, Params]] = [
        (D.DEFOCUS_BLUR, {"severity": severity, "radius": math.sqrt(2.0 * second_moment), "pupil_radius": pupil,
                          "model": f"udc_{panel}"}),
        (D.LOW_LIGHT, {"severity": severity, "brightness": brightness} | _exposure_params(clean, out)),
        (D.NOISE, {"severity": severity, "sigma": noise_sigma, "poisson": 1.0}),
    ]  # fmt: skip
    if panel == "poled":
        neutral = {f"{c}_gain": float(1.0 / g) for c, g in zip("rgb", tint, strict=True)}
        applied.append((D.COLOR_CAST, {"severity": severity} | neutral))
    return Synthesized(out, clean, [d for d, _ in applied], applied)


def _radius_squared(size: int) -> np.ndarray:
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    return x * x + y * y


# ----------------------------------------------------------------------------------------------
# Clean images
# ----------------------------------------------------------------------------------------------


def procedural_image(height: int = 256, width: int = 256, seed: int = 0) -> np.ndarray:
    """Draw a deterministic synthetic test photo: sky-to-ground gradient, sharp shapes, edges, texture.

    Tests use it so that they run without any image files; it has smooth areas (for noise), sharp
    edges at several orientations (for blur), fine texture (for resolution and JPEG) and a bright top.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    v, u = y / max(height - 1, 1), x / max(width - 1, 1)
    top, bottom = rng.uniform(0.6, 0.9, 3), rng.uniform(0.15, 0.45, 3)
    image = top * (1.0 - v[..., None]) + bottom * v[..., None]
    image += 0.06 * np.sin(2 * np.pi * u * rng.uniform(1, 3))[..., None] * rng.uniform(-1, 1, 3)
    band = (v > 0.55) & (v < 0.85)
    coarse = cv2.resize(rng.random((height // 8 + 1, width // 8 + 1)).astype(np.float32), (width, height))
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * (u * width / 6.0 + v * height / 9.0))
    texture = 0.25 + 0.35 * coarse + 0.2 * grating + 0.1 * rng.random((height, width))
    image[band] = 0.4 * image[band] + 0.6 * texture[band][:, None] * rng.uniform(0.6, 1.0, 3)
    for _ in range(5):
        colour = rng.uniform(0.05, 0.95, 3)
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        r = rng.uniform(0.05, 0.15) * min(height, width)
        if rng.random() < 0.5:
            mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        else:
            mask = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= 0.6 * r)
        image[mask] = colour
    for angle in (0.0, 35.0, 90.0, 125.0):  # thin dark lines
        theta = math.radians(angle)
        distance = np.abs((x - width / 2) * math.sin(theta) - (y - height / 2) * math.cos(theta))
        image[distance < 0.8] *= 0.3
    return np.clip(image, 0.02, 0.98).astype(np.float32)


def _image_files(paths: Path | str | Sequence[Path | str]) -> list[Path]:
    entries = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            files.extend(sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"{entry} does not exist; pass image files or folders holding images")
    return files


def photo_name(path: Path | str) -> str:
    """How a clean photo is named in samples and records: ``"<folder>/<file stem>"``."""
    path = Path(path)
    return f"{path.parent.name}/{path.stem}"


def load_clean_images(
    folder_or_folders: Path | str | Sequence[Path | str],
    limit: int | None = None,
    crop: int | None = 512,
    seed: int | None = 0,
) -> list[tuple[str, np.ndarray]]:
    """Read clean images as float32 RGB, cropped to at most ``crop`` x ``crop``.

    Args:
        folder_or_folders: A folder, an image file, or a sequence of either (folders are read in
            sorted file order; PNG, BMP, TIFF and JPEG; grayscale is converted to RGB).
        limit: Keep only the first ``limit`` images.
        crop: Largest side kept; ``None`` keeps whole images. Images smaller than ``crop`` keep their size.
        seed: Seeds a random crop position per image (stable per image name); ``None`` crops the centre.

    Returns:
        ``(name, image)`` pairs, where ``name`` is ``"<folder>/<file stem>"``.

    """
    files = _image_files(folder_or_folders)
    if limit is not None:
        files = files[:limit]
    images = []
    for path in files:
        name = photo_name(path)
        with Image.open(path) as handle:
            image = np.asarray(handle.convert("RGB"), dtype=np.float32) / 255.0
        if crop is not None:
            h, w = image.shape[:2]
            ch, cw = min(h, crop), min(w, crop)
            if seed is None:
                top, left = (h - ch) // 2, (w - cw) // 2
            else:
                position = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
                top, left = int(position.integers(h - ch + 1)), int(position.integers(w - cw + 1))
            image = image[top : top + ch, left : left + cw]
        images.append((name, np.ascontiguousarray(image)))
    logger.debug("loaded %d clean images", len(images))
    return images


def clean_split(shared_root: Path | str) -> dict[str, list[Path]]:
    """Split the clean photos under ``<shared_root>/data/clean`` the project's fixed way.

    ``"calibration"``: all of BSD100 (100 images), for calibrating and training perception and tools.
    ``"evaluation"``: LIVE1_color, McMaster and Set14 without img_005 (comic) and img_013 (slide),
    for evaluation and benchmarks only.

    Args:
        shared_root: The shared folder (holding ``data/clean``), or ``data`` or ``data/clean`` itself.

    Returns:
        ``{"calibration": [...], "evaluation": [...]}``, sorted image paths.

    """
    root = Path(shared_root)
    clean_dir = next((c for c in (root / "data" / "clean", root / "clean", root) if (c / "BSD100").is_dir()), None)
    if clean_dir is None:
        raise FileNotFoundError(f"no clean/BSD100 under {root}; pass the shared folder that holds data/clean")
    evaluation = [
        path
        for folder in ("LIVE1_color", "McMaster", "Set14")
        for path in _image_files(clean_dir / folder)
        if not (folder == "Set14" and path.stem in SET14_NON_PHOTOS)
    ]
    return {"calibration": _image_files(clean_dir / "BSD100"), "evaluation": evaluation}
