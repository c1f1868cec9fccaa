"""Ingest and output: read any reasonable image into the project's convention, write results safely.

Every image inside Restora is a ``float32`` array of shape ``(H, W, 3)``, RGB, values in ``[0, 1]``.
:func:`load_image` turns a file into that array and records every normalisation it made (palette
expansion, alpha compositing, EXIF orientation, ICC conversion, 16-bit or float input, first frame of
an animation) so traces can show exactly what the agent saw. Bad input is refused with an
:class:`ImageInputError` that says what is wrong and what to do:

* missing, unreadable, empty or non-image files;
* truncated or corrupt data (Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is held ``False`` while decoding,
  so a cut file is never silently padded);
* decompression bombs: the pixel count is read from the header and checked against ``max_pixels``
  before any pixel is decoded;
* images smaller than 8x8 pixels.

:func:`save_image` writes lossless PNG atomically (temporary file in the same folder, then
``os.replace``) and refuses to write over protected paths such as the input being restored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import warnings
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, TiffImagePlugin, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: Default refusal limit on the pixel count (width x height) of an input: 100 Mpx.
DEFAULT_MAX_PIXELS = 100_000_000
#: Smallest accepted width and height; restoration tools need at least this much context.
MIN_SIDE = 8
#: File extensions :func:`iter_inputs` picks up from folders (lower case).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
)
#: Pillow decoders :func:`load_image` lets run; anything else (EPS, PSD, ...) is refused up front. JPEG covers MPO.
_PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "WEBP", "GIF", "PPM")
_SUPPORTED = "PNG, JPEG, BMP, TIFF, WebP, GIF, PPM"
#: zlib level for PNG output: 1 is about 30 % faster than 3 for files about 8 % larger.
_PNG_COMPRESSION = 1

_ORIENTATION_TAG = ExifTags.Base.Orientation.value
_ORIENTATION_WORDS = {
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed",
    6: "rotated 90 degrees clockwise",
    7: "transversed",
    8: "rotated 90 degrees counter-clockwise",
}

# Pillow's decompression-bomb limit and truncated-image switch are module globals; this lock keeps
# concurrent loads from seeing each other's temporary settings.
_PILLOW_LOCK = threading.Lock()


class ImageInputError(ValueError):
    """An input file cannot be used; the message names the file, the problem and the fix."""


class ImageOutputError(ValueError):
    """A result cannot be written where it was asked to go; the message says why."""


@dataclass
class LoadedImage:
    """An image read from disk, normalised to float32 RGB in [0, 1], with a record of what was done.

    Attributes:
        image: ``float32`` array ``(H, W, 3)``, RGB, values in ``[0, 1]``, orientation already applied.
        path: The file it came from.
        format: The container format as Pillow names it (``"PNG"``, ``"JPEG"``, ``"TIFF"``, ...).
        mode: The original pixel mode (Pillow's name, e.g. ``"P"``, ``"I;16"``, ``"CMYK"``; ``"RGB;16"``
            or ``"RGB;32F"`` for 16-bit or float colour data that was decoded with OpenCV).
        bit_depth: Bits per sample of the stored data (1, 8, 16 or 32).
        had_alpha: Whether the file carried an alpha channel or palette transparency.
        exif_rotated: Whether an EXIF orientation other than "normal" was applied.
        notes: Human-readable list of every normalisation performed.
        alpha: The alpha channel ``(H, W)`` in ``[0, 1]`` when ``had_alpha``, so it can be re-attached on save.

    """

    image: np.ndarray
    path: Path
    format: str
    mode: str
    bit_depth: int
    had_alpha: bool = False
    exif_rotated: bool = False
    notes: list[str] = field(default_factory=list)
    alpha: np.ndarray | None = None

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.image.shape[1])


@dataclass
class _Decoded:
    """Intermediate result of one decoder: channels still separate, orientation not yet applied."""

    rgb: np.ndarray  # float32 (H, W, 3)
    alpha: np.ndarray | None  # float32 (H, W) or None
    mode: str
    bit_depth: int
    notes: list[str]


# --------------------------------------------------------------------------------------------- loading


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    alpha: Literal["composite", "drop"] = "composite",
    convert_icc: bool = True,
) -> LoadedImage:
    """Read an image file into float32 RGB in ``[0, 1]``, refusing bad input with a clear error.

    Args:
        path: The image file (PNG, JPEG, BMP, TIFF, WebP, GIF or PPM).
        max_pixels: Refuse images whose width x height exceeds this, checked from the header before
            decoding (decompression-bomb guard). ``None`` disables the limit.
        alpha: What to do with transparency: ``"composite"`` blends the colours over white (transparent
            pixels often hold arbitrary colours); ``"drop"`` keeps the stored colours as they are. Either
            way the alpha channel is kept in :attr:`LoadedImage.alpha` for :func:`save_image`.
        convert_icc: Convert 8-bit colour data with an embedded non-sRGB ICC profile to sRGB.

    Returns:
        The normalised image and a record of what was done to it.

    Raises:
        ImageInputError: if the file is missing, unreadable, empty, not a supported image, truncated or
            corrupt, larger than ``max_pixels`` or smaller than 8x8.

    """
    if alpha not in ("composite", "drop"):
        raise ValueError(f"alpha must be 'composite' or 'drop', got {alpha!r}")
    if max_pixels is not None and max_pixels < MIN_SIDE * MIN_SIDE:
        raise ValueError(f"max_pixels={max_pixels} is below the smallest accepted image ({MIN_SIDE}x{MIN_SIDE})")
    path = Path(path)
    _check_file(path)

    with _pillow_guard(max_pixels):
        try:
            pil: Image.Image | None = Image.open(path, formats=_PILLOW_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(path, exc, max_pixels) from None
        except UnidentifiedImageError:
            pil = None
        except OSError as exc:
            raise ImageInputError(f"cannot read {path}: {exc}") from None
        if pil is None:
            # Pillow cannot decode float or >8-bit multi-sample TIFFs; OpenCV can, once the header is checked.
            tiff = _read_tiff_header(path)
            if tiff is None:
                raise ImageInputError(_not_an_image_message(path))
            _check_size(path, (int(tiff.get(256, 0)), int(tiff.get(257, 0))), max_pixels)
            orientation = int(tiff.get(274, 1))
            return _finish(path, "TIFF", _decode_with_opencv(path), orientation, alpha)
        with pil:
            _check_size(path, pil.size, max_pixels)
            _arm_pillow_bomb_check(max_pixels)
            fmt = pil.format or "unknown"
            if _needs_opencv(path, pil):
                return _finish(path, fmt, _decode_with_opencv(path), _exif_orientation(pil), alpha)
            decoded, orientation = _decode_with_pillow(path, pil, max_pixels, convert_icc)
    return _finish(path, fmt, decoded, orientation, alpha, already_oriented=True)


def _check_file(path: Path) -> None:
    """Refuse paths that are missing, folders, empty or unreadable, before any decoder sees them."""
    if not path.exists():
        raise ImageInputError(f"no such file: {path}; check the path")
    if path.is_dir():
        raise ImageInputError(f"{path} is a folder, not an image file; pass the files inside it")
    if not path.is_file():
        raise ImageInputError(f"{path} is not a regular file")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ImageInputError(f"cannot read {path}: {exc.strerror or exc}; check its permissions") from None
    if size == 0:
        raise ImageInputError(f"{path} is empty (0 bytes); the file was not written completely")


@contextmanager
def _pillow_guard(max_pixels: int | None) -> Iterator[None]:
    """Keep truncated loads refused and Pillow's bomb check off until :func:`_check_size` has run.

    Pillow's own check would refuse big images inside ``Image.open`` with a message that lacks the
    dimensions; ours runs right after the header is parsed (no pixel decoded yet), then
    :func:`_arm_pillow_bomb_check` re-arms Pillow's check at ``max_pixels`` as a backstop for decoding.
    """
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved_limit, saved_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = None
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved_limit, saved_truncated


def _arm_pillow_bomb_check(max_pixels: int | None) -> None:
    """Let Pillow refuse (as an error, see :func:`_pillow_guard`) anything beyond ``max_pixels`` while decoding."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def _bomb_error(path: Path, exc: Exception, max_pixels: int | None) -> ImageInputError:
    limit = f"{max_pixels / 1e6:g} Mpx" if max_pixels else "the limit"
    return ImageInputError(
        f"{path} is too large to decode safely ({exc}); the limit is {limit}: "
        "set max_pixels in the policy (limits.max_pixels) if the image is genuine"
    )


def _check_size(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageInputError(
            f"{path} is {width}x{height} pixels; Restora needs at least {MIN_SIDE}x{MIN_SIDE} (upscale it first)"
        )
    pixels = width * height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageInputError(
            f"{path} is {width}x{height} ({pixels / 1e6:.1f} Mpx); the limit is {max_pixels / 1e6:g} Mpx: "
            "set max_pixels in the policy (limits.max_pixels) if the image is genuine"
        )


def _not_an_image_message(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(512)
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return f"{path} holds text, not image data; supported formats: {_SUPPORTED}"
    return f"{path} is not an image in a supported format ({_SUPPORTED})"


def _read_tiff_header(path: Path) -> dict[int, Any] | None:
    """Read the first IFD of a TIFF file; ``None`` when the file is not a readable TIFF."""
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
            if head[:4] not in TiffImagePlugin.PREFIXES:
                return None
            big = 43 in head[2:4]  # BigTIFF headers are 16 bytes, classic ones 8
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head if big else head[:8])
            handle.seek(ifd.next)
            ifd.load(handle)
            return dict(ifd)
    except Exception:  # any malformed header means "not a TIFF we can read"
        return None


def _needs_opencv(path: Path, pil: Image.Image) -> bool:
    """Tell whether colour samples exceed 8 bits (Pillow would silently reduce them to 8 bits)."""
    if pil.format == "PNG":
        with path.open("rb") as handle:
            ihdr = handle.read(26)
        bit_depth, color_type = ihdr[24], ihdr[25]
        return bit_depth == 16 and color_type in (2, 4, 6)  # RGB, gray+alpha, RGBA (gray-only stays in Pillow)
    if pil.format == "TIFF":
        bits = getattr(pil, "tag_v2", {}).get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return len(bits) > 1 and max(bits) > 8
    return False


def _exif_orientation(pil: Image.Image) -> int:
    try:
        value = int(pil.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not stop the load
        return 1
    return value if value in range(1, 9) else 1


def _decode_with_pillow(
    path: Path, pil: Image.Image, max_pixels: int | None, convert_icc: bool
) -> tuple[_Decoded, int]:
    """Decode with Pillow (first frame), apply EXIF orientation; return the decoded data and the orientation."""
    notes: list[str] = []
    frames = int(getattr(pil, "n_frames", 1) or 1)
    if frames > 1:
        notes.append(f"{pil.format} has {frames} frames; using the first")
    try:
        pil.seek(0)
        pil.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(path, exc, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as exc:
        raise ImageInputError(
            f"{path} could not be decoded: the file is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "re-export or re-download it"
        ) from None
    orientation = _exif_orientation(pil)
    image: Image.Image = pil
    if orientation != 1:
        image = ImageOps.exif_transpose(pil)
    decoded = _pillow_to_float(image, notes, convert_icc)
    return decoded, orientation


def _pillow_to_float(pil: Image.Image, notes: list[str], convert_icc: bool) -> _Decoded:
    """Convert a loaded Pillow image of any supported mode to float RGB (+ alpha)."""
    mode = pil.mode
    icc = pil.info.get("icc_profile")
    if mode == "1":
        gray = np.asarray(pil.convert("L"), dtype=np.float32) / 255.0
        notes.append("1-bit image expanded to RGB")
        return _Decoded(_gray_to_rgb(gray), None, mode, 1, notes)
    if mode == "P":
        has_transparency = "transparency" in pil.info or (pil.palette is not None and pil.palette.mode == "RGBA")
        pil = pil.convert("RGBA" if has_transparency else "RGB")
        notes.append("palette image expanded to RGB" + (" with its transparency as alpha" if has_transparency else ""))
    elif mode in ("PA", "RGBa", "La"):
        pil = pil.convert("RGBA" if mode != "La" else "LA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        if not (mode == "CMYK" and icc and convert_icc):
            pil = pil.convert("RGB")
            if mode != "RGBX":
                notes.append(f"{mode} converted to RGB")
    if pil.mode in ("RGB", "RGBA", "CMYK") and icc:
        pil = _apply_icc(pil, icc, notes) if convert_icc else pil
        if not convert_icc:
            notes.append("embedded ICC profile ignored (convert_icc=False)")
        if pil.mode == "CMYK":  # the ICC transform failed
            pil = pil.convert("RGB")
            notes.append("CMYK converted to RGB without its ICC profile")
    if pil.mode in ("RGB", "RGBA", "L", "LA"):
        data = np.asarray(pil, dtype=np.float32) / 255.0
        if pil.mode in ("L", "LA"):
            notes.append("grayscale replicated to RGB")
        if data.ndim == 2:
            return _Decoded(_gray_to_rgb(data), None, mode, 8, notes)
        channels = data.shape[2]
        color = data[..., :3] if channels >= 3 else _gray_to_rgb(data[..., 0])
        alpha = data[..., -1] if channels in (2, 4) else None
        return _Decoded(color, alpha, mode, 8, notes)
    if pil.mode.startswith("I;16"):
        data = np.asarray(pil).astype(np.float32) / 65535.0
        notes.append("16-bit grayscale scaled to [0, 1] and replicated to RGB")
        return _Decoded(_gray_to_rgb(data), None, mode, 16, notes)
    if pil.mode == "I":
        raw = np.asarray(pil).astype(np.float64)
        low, high = float(raw.min()), float(raw.max())
        if low >= 0 and high <= 65535:
            data = raw / 65535.0
            notes.append("integer grayscale read as 16-bit data and replicated to RGB")
            return _Decoded(_gray_to_rgb(data.astype(np.float32)), None, mode, 16, notes)
        data = (raw - low) / max(high - low, 1.0)
        notes.append(f"32-bit integer grayscale in [{low:g}, {high:g}] rescaled to [0, 1]")
        return _Decoded(_gray_to_rgb(data.astype(np.float32)), None, mode, 32, notes)
    if pil.mode == "F":
        data = _normalise_float(np.asarray(pil, dtype=np.float32), notes)
        notes.append("float grayscale replicated to RGB")
        return _Decoded(_gray_to_rgb(data), None, mode, 32, notes)
    try:
        converted = pil.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageInputError(f"pixel mode {mode!r} is not supported ({exc}); convert the file to PNG") from None
    notes.append(f"{mode} converted to RGB")
    return _Decoded(np.asarray(converted, dtype=np.float32) / 255.0, None, mode, 8, notes)


def _apply_icc(pil: Image.Image, icc: bytes, notes: list[str]) -> Image.Image:
    """Convert ``pil`` from its embedded ICC profile to sRGB (a no-op for sRGB profiles)."""
    try:
        from io import BytesIO

        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(BytesIO(icc))
        name = (ImageCms.getProfileDescription(source) or "").strip()
        if "srgb" in name.lower() and pil.mode != "CMYK":
            return pil
        out_mode = "RGBA" if pil.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(pil, source, ImageCms.createProfile("sRGB"), outputMode=out_mode)
    except Exception as exc:  # lcms missing or a broken profile: keep the stored values and say so
        notes.append(f"embedded ICC profile could not be applied ({type(exc).__name__}); colours used as stored")
        return pil
    assert converted is not None
    notes.append(f"converted from embedded ICC profile {name or '(unnamed)'!r} ({pil.mode}) to sRGB")
    return converted


def _decode_with_opencv(path: Path) -> _Decoded:
    """Decode 16-bit or float colour data without losing precision (Pillow would reduce it to 8 bits)."""
    import cv2

    buffer = np.fromfile(path, dtype=np.uint8)
    data = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ImageInputError(
            f"{path} could not be decoded: the file is truncated, corrupt or uses an unsupported encoding; "
            "re-export it as 8- or 16-bit PNG"
        )
    notes: list[str] = []
    if data.dtype == np.uint16:
        values, depth, mode_suffix = data.astype(np.float32) / 65535.0, 16, "16"
        notes.append("16-bit data scaled to [0, 1] without reducing precision")
    elif data.dtype == np.uint8:
        values, depth, mode_suffix = data.astype(np.float32) / 255.0, 8, ""
    elif data.dtype in (np.float32, np.float64):
        values, depth, mode_suffix = _normalise_float(data.astype(np.float32), notes), 32, "32F"
    else:
        raise ImageInputError(f"{path} stores {data.dtype} samples, which Restora does not read; convert it to PNG")
    if values.ndim == 2:
        return _Decoded(_gray_to_rgb(values), None, f"L;{mode_suffix}".rstrip(";"), depth, notes)
    channels = values.shape[2]
    if channels == 1:
        return _Decoded(_gray_to_rgb(values[..., 0]), None, f"L;{mode_suffix}".rstrip(";"), depth, notes)
    if channels == 2:
        return _Decoded(_gray_to_rgb(values[..., 0]), values[..., 1], f"LA;{mode_suffix}".rstrip(";"), depth, notes)
    rgb = np.ascontiguousarray(values[..., 2::-1])  # OpenCV gives BGR(A)
    alpha = values[..., 3] if channels >= 4 else None
    mode = ("RGBA" if alpha is not None else "RGB") + (f";{mode_suffix}" if mode_suffix else "")
    return _Decoded(rgb, alpha, mode, depth, notes)


def _normalise_float(data: np.ndarray, notes: list[str]) -> np.ndarray:
    """Bring float samples into [0, 1]: NaN/inf become 0, out-of-range data is rescaled and said so."""
    if not np.isfinite(data).all():
        notes.append(f"{int((~np.isfinite(data)).sum())} NaN/inf samples replaced by 0")
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(data.min()), float(data.max())
    tolerance = 1e-3
    if low >= -tolerance and high <= 1.0 + tolerance:
        notes.append("float data used as [0, 1] intensities")
        return np.clip(data, 0.0, 1.0).astype(np.float32)
    if low >= 0.0:
        notes.append(f"float data in [0, {high:g}] scaled by 1/{high:g} to [0, 1]")
        return (data / high).astype(np.float32)
    notes.append(f"float data in [{low:g}, {high:g}] rescaled to [0, 1]")
    return ((data - low) / (high - low)).astype(np.float32)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray.astype(np.float32)[..., None], 3, axis=2)


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Transpose ``array`` (H, W, ...) the way EXIF ``orientation`` (1-8) says it should be displayed.

    This mirrors :func:`PIL.ImageOps.exif_transpose` for arrays decoded outside Pillow.
    """
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return np.swapaxes(array, 0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return np.swapaxes(array[::-1, ::-1], 0, 1)
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


def _finish(
    path: Path,
    fmt: str,
    decoded: _Decoded,
    orientation: int,
    alpha_mode: str,
    *,
    already_oriented: bool = False,
) -> LoadedImage:
    """Apply orientation (if not yet done) and alpha policy; package the result."""
    notes = decoded.notes
    rgb, alpha = decoded.rgb, decoded.alpha
    rotated = orientation != 1
    if rotated:
        if not already_oriented:
            rgb = apply_orientation(rgb, orientation)
            alpha = apply_orientation(alpha, orientation) if alpha is not None else None
        notes.append(f"EXIF orientation {orientation} applied ({_ORIENTATION_WORDS[orientation]})")
    had_alpha = alpha is not None
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha, dtype=np.float32)
        if float(alpha.min()) >= 1.0:
            notes.append("alpha channel is fully opaque; nothing to composite")
        elif alpha_mode == "composite":
            rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
            notes.append("transparency composited over white; alpha kept for saving")
        else:
            notes.append("alpha channel dropped (stored colours kept); alpha kept for saving")
    image = np.ascontiguousarray(rgb, dtype=np.float32)  # a fresh array: decoders never return caller data
    np.clip(image, 0.0, 1.0, out=image)
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ImageInputError(f"{path} decodes to {image.shape[1]}x{image.shape[0]} pixels; need 8x8 at least")
    for note in notes:
        logger.debug("%s: %s", path, note)
    return LoadedImage(
        image=image,
        path=path,
        format=fmt,
        mode=decoded.mode,
        bit_depth=decoded.bit_depth,
        had_alpha=had_alpha,
        exif_rotated=rotated,
        notes=notes,
        alpha=alpha,
    )


# --------------------------------------------------------------------------------------------- saving


def save_image(
    image: np.ndarray,
    path: str | os.PathLike[str],
    bit_depth: Literal[8, 16] = 8,
    *,
    protect: Collection[str | os.PathLike[str]] = (),
    alpha: np.ndarray | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``image`` as a lossless PNG, atomically: a temporary file in the same folder, then ``os.replace``.

    A reader never sees a half-written file, and an interrupted write leaves the previous file intact.

    Args:
        image: float array ``(H, W, 3)`` RGB in ``[0, 1]`` (values outside are clipped; NaN is refused).
        path: Destination; must end in ``.png``. Missing parent folders are created.
        bit_depth: 8 or 16 bits per sample.
        protect: Paths that must never be written (e.g. the input being restored); writing to one of them,
            or to another name for the same file, raises.
        alpha: Optional ``(H, W)`` alpha in ``[0, 1]`` to re-attach (e.g. :attr:`LoadedImage.alpha`).
        overwrite: When ``False``, refuse to replace an existing file.

    Returns:
        The path written.

    Raises:
        ImageOutputError: for a protected or existing (``overwrite=False``) destination, a non-PNG name,
            or an image that is not ``(H, W, 3)`` finite floats.

    """
    import cv2

    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ImageOutputError(f"save_image writes PNG; give {target} a .png extension")
    if bit_depth not in (8, 16):
        raise ImageOutputError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    _check_not_protected(target, protect)
    if not overwrite and target.exists():
        raise ImageOutputError(f"{target} already exists; pass overwrite=True or choose another name")
    pixels = _to_integer_pixels(image, alpha, bit_depth)

    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION])
    if not ok:
        raise ImageOutputError(f"PNG encoding failed for {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(encoded.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return target


def _check_not_protected(target: Path, protect: Collection[str | os.PathLike[str]]) -> None:
    resolved = target.resolve()
    for item in protect:
        guarded = Path(item)
        same = resolved == guarded.resolve()
        if not same and target.exists() and guarded.exists():
            same = os.path.samefile(target, guarded)  # hard links and case-insensitive file systems
        if same:
            raise ImageOutputError(
                f"refusing to write {target}: it is a protected input ({guarded}); choose another output path"
            )


def _to_integer_pixels(image: np.ndarray, alpha: np.ndarray | None, bit_depth: int) -> np.ndarray:
    """Float RGB (+ alpha) in [0, 1] to OpenCV's BGR(A) uint8/uint16 layout."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ImageOutputError(f"expected an (H, W, 3) RGB array, got {getattr(image, 'shape', type(image))}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ImageOutputError(f"expected float pixels in [0, 1], got {image.dtype}; divide by 255 first")
    if not np.isfinite(image).all():
        raise ImageOutputError("the image holds NaN or inf values; the producing step is broken")
    channels = [image[..., 2], image[..., 1], image[..., 0]]
    if alpha is not None:
        if alpha.shape != image.shape[:2]:
            raise ImageOutputError(f"alpha has shape {alpha.shape}, expected {image.shape[:2]}")
        channels.append(alpha)
    stacked = np.stack(channels, axis=2).astype(np.float32)
    scale, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    np.clip(stacked, 0.0, 1.0, out=stacked)
    stacked *= scale
    stacked += 0.5  # round half up; exact for every 16-bit level in float32
    return stacked.astype(dtype)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# --------------------------------------------------------------------------------------------- inputs


def iter_inputs(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = False,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into the image files to process, reporting problems instead of raising.

    Files named explicitly are kept whatever their extension (:func:`load_image` judges them). Folders
    contribute their files with an image extension (see :data:`IMAGE_SUFFIXES`), sorted by name, skipping
    hidden files and folders; sub-folders are searched only when ``recursive`` is true. Duplicates are
    dropped, first occurrence kept.

    Args:
        paths: One path or several.
        recursive: Also search sub-folders of the given folders.

    Returns:
        ``(files, errors)``: the image files in order, and ``(path, reason)`` for every path that is missing,
        unreadable, or a folder without images.

    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    errors: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def keep(candidate: Path) -> None:
        key = candidate.resolve()
        if key not in seen:
            seen.add(key)
            files.append(candidate)

    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            keep(path)
        elif path.is_dir():
            try:
                found = _images_in_folder(path, recursive)
            except OSError as exc:
                errors.append((path, f"cannot list folder: {exc.strerror or exc}"))
                continue
            if not found:
                where = "or its sub-folders " if recursive else ""
                errors.append((path, f"folder {where}holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            for item in found:
                keep(item)
        elif path.exists():
            errors.append((path, "not a regular file or folder"))
        else:
            errors.append((path, "no such file or folder"))
    return files, errors


def _images_in_folder(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = []
    for item in candidates:
        relative = item.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if item.suffix.lower() in IMAGE_SUFFIXES and item.is_file():
            found.append(item)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (for traces and input-integrity checks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
