"""Ingest and output: every bad or odd input is either normalised (with a note) or refused clearly."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from agent.imageio import (
    ImageInputError,
    ImageOutputError,
    apply_orientation,
    file_sha256,
    iter_inputs,
    load_image,
    save_image,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _noise_rgb(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG whose IHDR claims width x height but holds almost no data (no pixels are allocated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------------ refusals


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="no such file"):
        load_image(tmp_path / "absent.png")


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="folder"):
        load_image(tmp_path)


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty"):
        load_image(path)


def test_text_file_named_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageInputError, match="text"):
        load_image(path)


def test_binary_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.jpg"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(path)


@pytest.mark.parametrize("suffix, keep", [(".png", 0.5), (".jpg", 0.6)])
def test_truncated_file_is_refused(tmp_path: Path, suffix: str, keep: float) -> None:
    full = tmp_path / f"full{suffix}"
    Image.fromarray(_noise_rgb(96, 96)).save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_file_is_refused_even_if_someone_enabled_truncated_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = tmp_path / "full.jpg"
    Image.fromarray(_noise_rgb(96, 96)).save(full)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:1500])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageInputError, match="truncated"):
        load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_truncated_16bit_png_is_refused(tmp_path: Path) -> None:
    full = tmp_path / "deep.png"
    cv2.imwrite(str(full), np.random.default_rng(1).integers(0, 65536, size=(64, 64, 3), dtype=np.uint16))
    cut = tmp_path / "deep_cut.png"
    cut.write_bytes(full.read_bytes()[:4000])
    with pytest.raises(ImageInputError, match="truncated"):
        load_image(cut)


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    _write_png_header_only(path, 100_000, 100_000)  # 10 Gpx claimed, a few bytes of data
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageInputError, match="set max_pixels in the policy"):
        load_image(path)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_max_pixels_is_enforced_below_pillows_own_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _write_png_header_only(path, 4000, 3000)  # 12 Mpx claimed
    with pytest.raises(ImageInputError, match=r"4000x3000 .*max_pixels"):
        load_image(path, max_pixels=10_000_000)


def test_tiny_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.fromarray(_noise_rgb(7, 20)).save(path)
    with pytest.raises(ImageInputError, match="at least 8x8"):
        load_image(path)


def test_unsupported_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "icon.ico"
    Image.fromarray(_noise_rgb(16, 16)).save(path)
    with pytest.raises(ImageInputError, match="supported format"):
        load_image(path)


# ------------------------------------------------------------------------------------------ normalisation


def test_rgb_png_loads_exactly_and_leaves_the_file_untouched(tmp_path: Path) -> None:
    pixels = _noise_rgb()
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    digest = file_sha256(path)
    loaded = load_image(path)
    assert loaded.image.dtype == np.float32 and loaded.image.shape == (48, 64, 3)
    assert loaded.image.flags.c_contiguous
    np.testing.assert_array_equal(np.round(loaded.image * 255).astype(np.uint8), pixels)
    assert (loaded.format, loaded.mode, loaded.bit_depth, loaded.had_alpha, loaded.exif_rotated) == (
        "PNG",
        "RGB",
        8,
        False,
        False,
    )
    assert file_sha256(path) == digest


@pytest.mark.parametrize("suffix, tolerance", [(".bmp", 0), (".tif", 0), (".webp", 0), (".ppm", 0), (".jpg", 40)])
def test_common_formats_load(tmp_path: Path, suffix: str, tolerance: int) -> None:
    pixels = np.zeros((32, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (200, 40, 10)
    pixels[:, 20:] = (10, 90, 220)
    path = tmp_path / f"img{suffix}"
    options: dict[str, Any] = {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(pixels).save(path, **options)
    loaded = load_image(path)
    assert loaded.image.shape == (32, 40, 3)
    error = np.abs(np.round(loaded.image * 255).astype(int) - pixels.astype(int))
    away_from_edge = np.r_[0:12, 28:40]  # JPEG chroma subsampling smears the colour edge at x = 20
    assert error[:, away_from_edge].max() <= tolerance


def test_grayscale_is_replicated_to_rgb(tmp_path: Path) -> None:
    gray = np.random.default_rng(2).integers(0, 256, size=(20, 30), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    loaded = load_image(path)
    assert loaded.mode == "L"
    for channel in range(3):
        np.testing.assert_allclose(loaded.image[..., channel], gray / 255.0, atol=1e-6)
    assert any("grayscale" in note for note in loaded.notes)


def test_one_bit_image(tmp_path: Path) -> None:
    bits = np.zeros((16, 16), dtype=bool)
    bits[:, 8:] = True
    path = tmp_path / "bits.png"
    Image.fromarray(bits).convert("1").save(path)
    loaded = load_image(path)
    assert loaded.bit_depth == 1
    assert loaded.image[:, :8].max() == 0.0 and loaded.image[:, 8:].min() == 1.0


def test_gray_alpha_is_composited_over_white(tmp_path: Path) -> None:
    gray = np.full((16, 16), 0, dtype=np.uint8)
    alpha = np.full((16, 16), 255, dtype=np.uint8)
    alpha[:, :8] = 0  # left half fully transparent
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA").save(path)
    loaded = load_image(path)
    assert loaded.had_alpha and loaded.alpha is not None
    assert loaded.image[:, :8].min() == 1.0  # transparent -> white
    assert loaded.image[:, 8:].max() == 0.0  # opaque black stays black


def test_rgba_composite_and_drop(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # pure red everywhere
    rgba[..., 3] = 128  # half transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    composited = load_image(path)
    a = 128 / 255
    np.testing.assert_allclose(composited.image[0, 0], [1.0, 1 - a, 1 - a], atol=1e-5)
    assert composited.alpha is not None and abs(float(composited.alpha.mean()) - a) < 1e-6
    dropped = load_image(path, alpha="drop")
    np.testing.assert_allclose(dropped.image[0, 0], [1.0, 0.0, 0.0], atol=1e-6)
    assert any("dropped" in note for note in dropped.notes)


def test_palette_with_transparency(tmp_path: Path) -> None:
    indices = np.zeros((16, 16), dtype=np.uint8)
    indices[:, 8:] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)  # 0 = blue, 1 = green
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)  # blue is transparent
    loaded = load_image(path)
    assert loaded.mode == "P" and loaded.had_alpha
    np.testing.assert_allclose(loaded.image[0, 0], [1.0, 1.0, 1.0])  # transparent blue -> white
    np.testing.assert_allclose(loaded.image[0, 15], [0.0, 1.0, 0.0])
    assert any("palette" in note for note in loaded.notes)


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.gif"
    Image.fromarray(_noise_rgb(16, 16)).convert("P").save(path)
    loaded = load_image(path)
    assert not loaded.had_alpha and loaded.image.shape == (16, 16, 3)


def test_16bit_rgb_png_keeps_precision(tmp_path: Path) -> None:
    deep = np.random.default_rng(3).integers(0, 65536, size=(24, 32, 3), dtype=np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), deep)  # OpenCV writes BGR
    loaded = load_image(path)
    assert loaded.bit_depth == 16 and loaded.mode == "RGB;16"
    expected = deep[..., ::-1].astype(np.float64) / 65535.0
    assert np.abs(loaded.image - expected).max() < 1e-6  # far below one 8-bit step (0.0039)


def test_16bit_gray_png(tmp_path: Path) -> None:
    deep = np.random.default_rng(4).integers(0, 65536, size=(24, 32), dtype=np.uint16)
    path = tmp_path / "deep_gray.png"
    cv2.imwrite(str(path), deep)
    loaded = load_image(path)
    assert loaded.bit_depth == 16 and loaded.mode.startswith("I")
    assert np.abs(loaded.image[..., 1] - deep / 65535.0).max() < 1e-6


def test_16bit_rgba_png(tmp_path: Path) -> None:
    deep = np.full((16, 16, 4), 65535, dtype=np.uint16)
    deep[..., 3] = 0  # fully transparent
    path = tmp_path / "deep_rgba.png"
    cv2.imwrite(str(path), deep)
    loaded = load_image(path)
    assert loaded.had_alpha and loaded.bit_depth == 16 and loaded.alpha is not None
    assert float(loaded.alpha.max()) == 0.0


def test_float_tiffs(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    color = rng.random((20, 24, 3), dtype=np.float32)
    path = tmp_path / "float_rgb.tif"
    cv2.imwrite(str(path), color)
    loaded = load_image(path)
    assert loaded.bit_depth == 32 and loaded.format == "TIFF"
    np.testing.assert_allclose(loaded.image, color[..., ::-1], atol=1e-7)

    gray = rng.random((20, 24), dtype=np.float32) * 4.0  # outside [0, 1]: rescaled, and said so
    gray_path = tmp_path / "float_gray.tif"
    Image.fromarray(gray, mode="F").save(gray_path)
    loaded_gray = load_image(gray_path)
    assert loaded_gray.image.max() == pytest.approx(1.0)
    np.testing.assert_allclose(loaded_gray.image[..., 0], gray / gray.max(), atol=1e-6)
    assert any("scaled" in note for note in loaded_gray.notes)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[..., 1] = 255  # magenta
    cmyk[..., 2] = 255  # yellow -> red
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=95)
    loaded = load_image(path)
    assert loaded.mode == "CMYK"
    red, green, blue = loaded.image[8, 8]
    assert red > 0.9 and green < 0.1 and blue < 0.1
    assert any("CMYK" in note for note in loaded.notes)


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((24, 40, 3), dtype=np.uint8)  # H=24, W=40
    stored[:12, :20] = (255, 0, 0)  # red in the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.exif_rotated
    assert loaded.image.shape == (40, 24, 3)
    top_right, bottom_left = loaded.image[:20, 12:], loaded.image[20:, :12]
    assert top_right[..., 0].mean() > 0.9 and top_right[..., 1].mean() < 0.1
    assert bottom_left.mean() < 0.1
    assert any("orientation 6" in note for note in loaded.notes)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation: int) -> None:
    stored = _noise_rgb(5, 7, seed=orientation)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(apply_orientation(stored, orientation), expected)


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.image[0, 0], [1.0, 0.0, 0.0], atol=1 / 255)
    assert any("3 frames" in note for note in loaded.notes)


def test_broken_icc_profile_is_noted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "icc.png"
    Image.fromarray(_noise_rgb(16, 16)).save(path, icc_profile=b"not a real profile")
    loaded = load_image(path)
    assert any("ICC" in note for note in loaded.notes)


@pytest.mark.skipif(not (SHARED / "data" / "clean" / "Set14").is_dir(), reason="shared data not available")
def test_real_photo_loads_and_is_not_modified() -> None:
    path = sorted((SHARED / "data" / "clean" / "Set14").iterdir())[0]
    digest = file_sha256(path)
    loaded = load_image(path)
    assert loaded.image.ndim == 3 and loaded.image.shape[2] == 3
    assert 0.0 <= loaded.image.min() and loaded.image.max() <= 1.0
    assert file_sha256(path) == digest


# ------------------------------------------------------------------------------------------ saving


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_roundtrip_8bit_and_no_temp_files(tmp_path: Path) -> None:
    image = np.random.default_rng(6).random((20, 30, 3), dtype=np.float32)
    target = tmp_path / "out" / "result.png"
    written = save_image(image, target)
    assert written == target and _listing(target.parent) == ["result.png"]
    back = load_image(target).image
    assert np.abs(back - image).max() <= 0.5 / 255 + 1e-6


def test_save_roundtrip_16bit(tmp_path: Path) -> None:
    image = np.random.default_rng(7).random((20, 30, 3), dtype=np.float32)
    target = save_image(image, tmp_path / "deep.png", bit_depth=16)
    back = load_image(target)
    assert back.bit_depth == 16
    assert np.abs(back.image - image).max() <= 0.5 / 65535 + 1e-6


def test_save_reattaches_alpha(tmp_path: Path) -> None:
    image = np.zeros((16, 16, 3), dtype=np.float32)
    alpha = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    target = save_image(image, tmp_path / "alpha.png", alpha=alpha)
    back = load_image(target, alpha="drop")
    assert back.had_alpha and back.alpha is not None
    assert np.abs(back.alpha - alpha).max() <= 0.5 / 255 + 1e-6


def test_save_refuses_protected_input(tmp_path: Path) -> None:
    source = tmp_path / "input.png"
    Image.fromarray(_noise_rgb(16, 16)).save(source)
    digest = file_sha256(source)
    image = np.zeros((16, 16, 3), dtype=np.float32)
    with pytest.raises(ImageOutputError, match="protected input"):
        save_image(image, source, protect={source})
    with pytest.raises(ImageOutputError, match="protected input"):  # another spelling of the same path
        save_image(image, tmp_path / "sub" / ".." / "input.png", protect=[str(source)])
    link = tmp_path / "hardlink.png"
    os.link(source, link)
    with pytest.raises(ImageOutputError, match="protected input"):  # another name for the same file
        save_image(image, link, protect=[source])
    assert file_sha256(source) == digest
    assert _listing(tmp_path) == ["hardlink.png", "input.png"]


def test_save_failure_keeps_previous_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result.png"
    save_image(np.zeros((16, 16, 3), dtype=np.float32), target)
    digest = file_sha256(target)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_image(np.ones((16, 16, 3), dtype=np.float32), target)
    assert file_sha256(target) == digest
    assert _listing(tmp_path) == ["result.png"]


def test_save_refusals(tmp_path: Path) -> None:
    image = np.zeros((16, 16, 3), dtype=np.float32)
    with pytest.raises(ImageOutputError, match=".png extension"):
        save_image(image, tmp_path / "out.jpg")
    with pytest.raises(ImageOutputError, match="NaN"):
        save_image(np.full((16, 16, 3), np.nan, dtype=np.float32), tmp_path / "nan.png")
    with pytest.raises(ImageOutputError, match="divide by 255"):
        save_image(np.zeros((16, 16, 3), dtype=np.uint8), tmp_path / "ints.png")
    save_image(image, tmp_path / "exists.png")
    with pytest.raises(ImageOutputError, match="already exists"):
        save_image(image, tmp_path / "exists.png", overwrite=False)
    assert _listing(tmp_path) == ["exists.png"]


# ------------------------------------------------------------------------------------------ inputs


def test_iter_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    (folder / ".cache").mkdir()
    for name in ("b.png", "a.JPG", ".hidden.png", "readme.txt", "nested/c.tif", ".cache/d.png"):
        (folder / name).write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    explicit = tmp_path / "explicit.dat"
    explicit.write_bytes(b"x")

    files, errors = iter_inputs([folder, tmp_path / "missing.png", empty, explicit, folder / "b.png"])
    assert [p.name for p in files] == ["a.JPG", "b.png", "explicit.dat"]
    assert [(p.name, reason) for p, reason in errors][0] == ("missing.png", "no such file or folder")
    assert errors[1][0] == empty and "no images" in errors[1][1]

    recursive, _ = iter_inputs(folder, recursive=True)
    assert [p.relative_to(folder).as_posix() for p in recursive] == ["a.JPG", "b.png", "nested/c.tif"]


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "bytes.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
