"""UIQM and UCIQE: closed-form cases, and agreement with a deliberately different reference implementation.

The reference below is written independently of ``evals.underwater_metrics``: explicit Python loops over
blocks, a hand-rolled Sobel with replicated borders (the module uses scipy's reflected borders), a
sort-and-slice trimmed mean, and scikit-image's CIELab conversion (the module uses OpenCV's). Border
handling differs, so UIQM is compared within a relative tolerance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from evals.synthesis import procedural_image, underwater
from evals.underwater_metrics import eme, uciqe, uciqe_components, uicm, uiconm, uiqm, uiqm_components

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "underwater"


# ----------------------------------------------------------------------------------------------
# Independent reference implementation
# ----------------------------------------------------------------------------------------------


def ref_uicm(img255: np.ndarray) -> float:
    r, g, b = (img255[..., i].astype(np.float64).ravel() for i in range(3))
    out = []
    for channel in (r - g, 0.5 * (r + g) - b):
        values = sorted(channel.tolist())
        k = len(values)
        lo, hi = math.ceil(0.1 * k), math.floor(0.1 * k)
        mu = sum(values[lo : k - hi]) / (k - lo - hi)
        var = sum((v - mu) ** 2 for v in values) / k
        out.append((mu, var))
    (mu1, v1), (mu2, v2) = out
    return -0.0268 * math.sqrt(mu1**2 + mu2**2) + 0.1586 * math.sqrt(v1 + v2)


def ref_sobel(plane: np.ndarray) -> np.ndarray:
    p = np.pad(plane, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.sqrt(gx * gx + gy * gy)


def ref_block_stats(plane: np.ndarray, size: int = 8) -> list[tuple[float, float]]:
    stats = []
    for top in range(0, plane.shape[0] - size + 1, size):
        for left in range(0, plane.shape[1] - size + 1, size):
            block = plane[top : top + size, left : left + size]
            stats.append((float(block.max()), float(block.min())))
    return stats


def ref_uiqm(image: np.ndarray) -> float:
    img = image.astype(np.float64) * 255.0
    sharp = 0.0
    for c, weight in enumerate((0.299, 0.587, 0.114)):
        stats = ref_block_stats(ref_sobel(img[..., c]) * img[..., c])
        sharp += weight * 2.0 / len(stats) * sum(math.log(hi / lo) for hi, lo in stats if lo > 0)
    intensity = 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
    contrast = 0.0
    stats = ref_block_stats(intensity)
    for hi, lo in stats:
        if hi - lo > 0 and hi + lo > 0:
            ratio = (hi - lo) / (hi + lo)
            contrast += ratio * math.log(ratio)
    contrast = -contrast / len(stats)
    return 0.0282 * ref_uicm(img) + 0.2953 * sharp + 3.5753 * contrast


def ref_uciqe(image: np.ndarray) -> float:
    skcolor = pytest.importorskip("skimage.color")
    lab = skcolor.rgb2lab(image.astype(np.float64))
    lightness = lab[..., 0].ravel() / 100.0
    chroma = np.sqrt(lab[..., 1] ** 2 + lab[..., 2] ** 2).ravel() / 100.0
    n = max(1, int(round(0.01 * lightness.size)))
    contrast = np.partition(lightness, -n)[-n:].mean() - np.partition(lightness, n - 1)[:n].mean()
    sat = [c / math.hypot(c, y) if c * c + y * y > 0 else 0.0 for c, y in zip(chroma, lightness, strict=True)]
    return 0.4680 * float(np.std(chroma)) + 0.2745 * float(contrast) + 0.2576 * float(np.mean(sat))


def _test_images() -> list[np.ndarray]:
    images = [procedural_image(96, 120, seed=s) for s in range(2)]
    rng = np.random.default_rng(3)
    images.append(underwater(procedural_image(96, 96, seed=5), rng, severity=0.7).image)
    images.append(rng.random((64, 80, 3)).astype(np.float32))
    # The measures are defined on 8-bit images; the references take the images as 8-bit values.
    return [(np.round(image * 255.0) / 255.0).astype(np.float32) for image in images]


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(4))
def test_uiqm_matches_independent_reference(index: int) -> None:
    image = _test_images()[index]
    assert uicm(image) == pytest.approx(ref_uicm(image.astype(np.float64) * 255.0), rel=1e-6)
    assert uiqm(image) == pytest.approx(ref_uiqm(image), rel=0.03)


@pytest.mark.parametrize("index", range(4))
def test_uciqe_matches_independent_reference(index: int) -> None:
    image = _test_images()[index]
    assert uciqe(image) == pytest.approx(ref_uciqe(image), abs=2e-3)


def test_closed_form_cases() -> None:
    # Constant colour: no spread, UICM is the mean term alone; no edges and no contrast.
    flat = np.empty((32, 32, 3), np.float32)
    flat[:] = (0.6, 0.4, 0.2)
    rg, yb = 0.2 * 255, 0.5 * (0.6 + 0.4) * 255 - 0.2 * 255
    assert uicm(flat) == pytest.approx(-0.0268 * math.hypot(rg, yb), rel=1e-6)
    assert uiconm(flat) == 0.0
    assert uiqm_components(flat)["uism"] == 0.0
    # EME: every 8x8 block spans [1, e] -> log ratio 1 per block -> 2 * (blocks / blocks).
    plane = np.ones((16, 24))
    plane[::8, ::8] = math.e
    assert eme(plane) == pytest.approx(2.0)
    # logAMEE of one block with intensities 1/3 and 2/3 of the range: ratio 1/3.
    block = np.full((8, 8, 3), 1.0 / 3.0, np.float32)
    block[0, 0] = 2.0 / 3.0
    assert uiconm(block) == pytest.approx(-(1 / 3) * math.log(1 / 3), rel=1e-5)
    # UCIQE: half black, half white -> luminance contrast 1, no chroma, no saturation.
    bw = np.zeros((20, 20, 3), np.float32)
    bw[10:] = 1.0
    parts = uciqe_components(bw)
    assert parts["con_l"] == pytest.approx(1.0, abs=1e-3)
    assert parts["sigma_c"] == pytest.approx(0.0, abs=1e-3)
    assert parts["uciqe"] == pytest.approx(0.2745, abs=1e-3)


def test_metrics_respond_to_underwater_degradation() -> None:
    import cv2

    clean = procedural_image(128, 128, seed=11)
    grain = 0.02 * np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32)
    clean = np.clip(clean + grain, 0.0, 1.0)  # texture everywhere, as in photos (EME skips blocks whose minimum is 0)
    blurred = cv2.GaussianBlur(clean, (0, 0), sigmaX=2.0)
    veiled = (0.4 * clean + 0.6 * np.array([0.1, 0.5, 0.6], np.float32)).astype(np.float32)  # backscatter veil
    assert uiqm_components(blurred)["uism"] < uiqm_components(clean)["uism"]  # blur removes sharpness
    assert uiconm(veiled) < uiconm(clean)  # a veiling light removes contrast
    grey = np.repeat(clean.mean(axis=2, keepdims=True), 3, axis=2)
    assert uciqe_components(grey)["mu_s"] == pytest.approx(0.0, abs=1e-3)
    assert uciqe(clean) > uciqe(grey)


def test_float_image_scores_as_its_8bit_file() -> None:
    """An array and the 8-bit file it is saved as score the same (UISM's log(max/min) is discontinuous at 0)."""
    rng = np.random.default_rng(7)
    image = np.clip(procedural_image(64, 64, seed=2) + 0.002 * rng.standard_normal((64, 64, 3)), 0, 1)
    saved = (np.round(image * 255.0).astype(np.uint8)).astype(np.float32) / 255.0
    assert uiqm(image.astype(np.float32)) == uiqm(saved)
    assert uciqe(image.astype(np.float32)) == pytest.approx(uciqe(saved), abs=1e-6)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="float"):
        uiqm(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="at least"):
        uiqm(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        uciqe(np.zeros((16, 16), np.float32))


@pytest.mark.skipif(not (DATA / "EUVP_test_samples_FUnIE-GAN").is_dir(), reason="../shared/data not available")
def test_euvp_references_score_higher_than_inputs() -> None:
    """Plausibility on real data: EUVP's good-quality references beat its distorted inputs on UIQM on average."""
    from PIL import Image

    folder = DATA / "EUVP_test_samples_FUnIE-GAN"
    gains = []
    for path in sorted((folder / "lq").glob("*.jpg"))[:12]:
        lq = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        gt = np.asarray(Image.open(folder / "gt" / path.name).convert("RGB"), np.float32) / 255.0
        gains.append(uiqm(gt) - uiqm(lq))
        assert uiqm(lq) == pytest.approx(ref_uiqm(lq), rel=0.03)
    assert np.mean(gains) > 0.0
