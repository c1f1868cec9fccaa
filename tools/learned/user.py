"""User checkpoints as tools: any restoration model ``spandrel`` recognises, registered from a file.

``spandrel`` detects the architecture and hyper-parameters from the state dict (SwinIR, Restormer,
NAFNet, SCUNet, Real-ESRGAN/RRDBNet, DRUNet, HAT, ...). A :class:`UserCheckpointTool` wraps one such
file: it loads lazily, runs tiled inference on the chosen device and dtype, and keeps the input size
unless the catalogue entry asks to upscale (a super-resolution model used for same-size restoration
sees the input shrunk by its scale first, so its output lands back on the input size).

A small YAML catalogue remembers the registered checkpoints: ``$RESTORA_HOME/user_tools.yaml`` when
``RESTORA_HOME`` is set, else ``~/.config/restora/user_tools.yaml`` (every function takes an explicit
``catalogue`` path too). :func:`add_user_tool` validates and records a file, :func:`load_user_tools`
puts every recorded tool into a registry.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from agent.degradations import Degradation, parse_degradation
from tools.base import STRENGTH, Param, Tool, ToolError, ToolRegistry, ToolSpec

logger = logging.getLogger(__name__)

HOME_ENV = "RESTORA_HOME"
CATALOGUE_NAME = "user_tools.yaml"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")

TILE = Param("tile", "int", 512, 0, 4096, description="tile side for inference (0 = whole image in one pass)")
OVERLAP = 32


class UnsupportedCheckpointError(ValueError):
    """A file that is not a readable restoration checkpoint of an architecture spandrel supports."""


def catalogue_path(path: Path | str | None = None) -> Path:
    """The catalogue: ``path``, else ``$RESTORA_HOME/user_tools.yaml``, else ``~/.config/restora/user_tools.yaml``."""
    if path is not None:
        return Path(path)
    home = os.environ.get(HOME_ENV)
    base = Path(home) if home else Path.home() / ".config" / "restora"
    return base / CATALOGUE_NAME


def load_descriptor(path: Path | str, device: str = "cpu"):
    """Load ``path`` with spandrel and check it is an image-to-image restoration or SR model.

    Raises:
        FileNotFoundError: when the file does not exist.
        UnsupportedCheckpointError: when the file is unreadable, of an unknown architecture, or not an
            image-to-image model (e.g. inpainting).
    """
    import spandrel

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_file(path)
    except spandrel.UnsupportedModelError as exc:
        raise UnsupportedCheckpointError(
            f"{path.name}: spandrel does not recognise this architecture; supported ones include SwinIR, Restormer, "
            "NAFNet, SCUNet, ESRGAN/RRDBNet, DRUNet, HAT (see spandrel's README)"
        ) from exc
    except Exception as exc:  # corrupt pickles, truncated safetensors, wrong formats...
        raise UnsupportedCheckpointError(
            f"{path.name} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
            f"pass a .pth/.safetensors state dict of a restoration model"
        ) from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UnsupportedCheckpointError(
            f"{path.name} is a {descriptor.purpose} model ({descriptor.architecture.name}); only image-to-image "
            "restoration and super-resolution models can be tools"
        )
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels != descriptor.input_channels:
        raise UnsupportedCheckpointError(
            f"{path.name} maps {descriptor.input_channels} to {descriptor.output_channels} channels; "
            "only RGB (3->3) or grayscale (1->1) models are supported"
        )
    return descriptor


def tool_name_for(path: Path | str) -> str:
    """Default tool name for a checkpoint file: ``user_`` + its lower-snake-case stem."""
    stem = re.sub(r"[^a-z0-9]+", "_", Path(path).stem.lower()).strip("_") or "model"
    return f"user_{stem}"


class UserCheckpointTool(Tool):
    """A tool backed by a user's checkpoint; build instances with :func:`make_user_tool`."""

    def __init__(
        self,
        path: Path | str | None = None,
        upscale: bool = False,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        """Wrap ``path`` (default: the path recorded on the class by :func:`make_user_tool`)."""
        super().__init__()
        self.path = Path(path) if path is not None else Path(type(self).checkpoint)
        self.upscale = upscale if path is not None else bool(getattr(type(self), "upscale_output", upscale))
        self.device_name, self.dtype_name = device, dtype
        self.descriptor: Any = None

    checkpoint: str = ""
    upscale_output: bool = False

    def missing(self) -> str | None:
        """The checkpoint file when it is gone (moved or deleted since it was added); else ``None``."""
        return (
            None if self.path.is_file() else f"checkpoint {self.path} not found; add it again with `restora tools add`"
        )

    def setup(self) -> None:
        """Load the checkpoint onto the chosen device and dtype.

        Raises:
            ToolError: when the file is missing or not a supported checkpoint.
        """
        from tools.learned.tiling import select_device, select_dtype

        self.device = select_device(self.device_name)
        dtype = select_dtype(self.dtype_name, self.device)
        try:
            descriptor = load_descriptor(self.path)
        except (FileNotFoundError, UnsupportedCheckpointError) as exc:
            raise ToolError(f"{self.spec.name}: {exc}") from exc
        if dtype.is_floating_point and dtype != descriptor.dtype:
            import torch

            if (dtype == torch.float16 and not descriptor.supports_half) or (
                dtype == torch.bfloat16 and not descriptor.supports_bfloat16
            ):
                arch = descriptor.architecture.name
                logger.warning("%s: %s does not support %s; using float32", self.spec.name, arch, dtype)
                dtype = torch.float32
        self.dtype = dtype
        self.descriptor = descriptor.to(self.device).to(dtype).eval()

    def _run(self, tensor):
        """Tiled inference on a (1, C, H, W) tensor; grayscale models run on each channel."""
        import torch

        from tools.learned.tiling import tiled_forward

        descriptor, tile, scale = self.descriptor, self._tile, self.descriptor.scale
        overlap = min(OVERLAP, tile // 4)
        if descriptor.input_channels == 1:
            planes = [tiled_forward(descriptor, tensor[:, c : c + 1], tile, overlap, scale) for c in range(3)]
            return torch.cat(planes, dim=1)
        return tiled_forward(descriptor, tensor, tile, overlap, scale)

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Restore ``image``; the output keeps the input size unless the tool was registered to upscale."""
        import cv2
        import torch

        from tools.learned.tiling import to_image, to_tensor

        self._tile = int(params.get("tile", TILE.default))
        scale = int(self.descriptor.scale)
        height, width = image.shape[:2]
        source = image
        if scale > 1 and not self.upscale:  # same-size restoration: shrink first, the model restores the size
            small = (max(1, round(width / scale)), max(1, round(height / scale)))
            source = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        with torch.inference_mode():
            out = to_image(self._run(to_tensor(source, self.device, self.dtype)))
        if not self.upscale and out.shape[:2] != (height, width):
            interpolation = cv2.INTER_CUBIC if out.shape[0] < height else cv2.INTER_AREA
            out = cv2.resize(out, (width, height), interpolation=interpolation)
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def make_user_tool(
    path: Path | str,
    restores: list[Degradation | str] | tuple[Degradation | str, ...],
    name: str | None = None,
    upscale: bool = False,
    description: str | None = None,
) -> UserCheckpointTool:
    """A ready tool instance for checkpoint ``path`` (loaded lazily on first use).

    Each checkpoint gets its own subclass, because a tool's :class:`ToolSpec` is a class attribute.
    """
    degradations = tuple(d if isinstance(d, Degradation) else parse_degradation(d) for d in restores)
    name = name or tool_name_for(path)
    spec = ToolSpec(
        name=name,
        description=description
        or f"User checkpoint {Path(path).name} restoring {', '.join(d.value for d in degradations)}.",
        restores=degradations,
        params=(STRENGTH, TILE),
        device="any",
        family="user",
        changes_size=upscale,
    )
    cls = type(
        f"UserTool_{name}",
        (UserCheckpointTool,),
        {"spec": spec, "checkpoint": str(path), "upscale_output": upscale, "__doc__": spec.description},
    )
    return cls()


def _read_catalogue(path: Path) -> list[dict[str, Any]]:
    import yaml

    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("tools", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path} is not a user-tool catalogue (expected a 'tools:' list); fix or delete it")
    return entries


def _write_catalogue(path: Path, entries: list[dict[str, Any]]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(yaml.safe_dump({"tools": entries}, sort_keys=False))
    partial.replace(path)


def add_user_tool(
    path: Path | str,
    restores: list[Degradation | str] | tuple[Degradation | str, ...] | Degradation | str,
    name: str | None = None,
    *,
    upscale: bool = False,
    catalogue: Path | str | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Validate checkpoint ``path`` with spandrel and record it in the catalogue.

    Args:
        path: The checkpoint (``.pth``, ``.safetensors``, ...).
        restores: The degradation(s) it removes (names or :class:`Degradation` members).
        name: Tool name (default ``user_<file stem>``).
        upscale: Keep the model's larger output instead of restoring at the input size.
        catalogue: Catalogue file (default :func:`catalogue_path`).
        replace: Overwrite an entry of the same name instead of refusing.

    Returns:
        The recorded entry.

    Raises:
        FileNotFoundError, UnsupportedCheckpointError: for a missing or unsupported file.
        ValueError: for an unknown degradation or a name already in the catalogue.
    """
    if isinstance(restores, (str, Degradation)):
        restores = [restores]
    degradations = [d if isinstance(d, Degradation) else parse_degradation(d) for d in restores]
    if not degradations:
        raise ValueError("say what the checkpoint restores, e.g. restores=['noise']")
    path = Path(path).expanduser().resolve()
    descriptor = load_descriptor(path)
    name = name or tool_name_for(path)
    ToolSpec(name=name, description="check", restores=tuple(degradations))  # validates the name early
    entry = {
        "name": name,
        "path": str(path),
        "restores": [d.value for d in degradations],
        "architecture": descriptor.architecture.name,
        "scale": int(descriptor.scale),
        "upscale": bool(upscale),
    }
    file = catalogue_path(catalogue)
    entries = _read_catalogue(file)
    if any(e.get("name") == name for e in entries) and not replace:
        raise ValueError(f"a user tool named {name!r} is already in {file}; pass another name or replace=True")
    entries = [e for e in entries if e.get("name") != name] + [entry]
    _write_catalogue(file, entries)
    logger.info("registered %s (%s, x%d) as %s in %s", path.name, entry["architecture"], entry["scale"], name, file)
    return entry


def remove_user_tool(name: str, catalogue: Path | str | None = None) -> bool:
    """Drop ``name`` from the catalogue; returns whether it was there."""
    file = catalogue_path(catalogue)
    entries = _read_catalogue(file)
    kept = [e for e in entries if e.get("name") != name]
    if len(kept) != len(entries):
        _write_catalogue(file, kept)
    return len(kept) != len(entries)


def list_user_tools(catalogue: Path | str | None = None) -> list[dict[str, Any]]:
    """The catalogue's entries."""
    return _read_catalogue(catalogue_path(catalogue))


def load_user_tools(registry: ToolRegistry, catalogue: Path | str | None = None) -> list[str]:
    """Add every catalogued checkpoint to ``registry`` as a tool; returns the names added.

    Entries whose file has gone missing, or whose name clashes with a tool already registered, are
    skipped with a warning (the agent keeps working with the other tools).
    """
    added = []
    for entry in list_user_tools(catalogue):
        name = entry.get("name", "?")
        if not Path(entry.get("path", "")).is_file():
            logger.warning("user tool %s: checkpoint %s is missing; skipped", name, entry.get("path"))
            continue
        if name in registry:
            logger.warning("user tool %s: a tool of that name is already registered; skipped", name)
            continue
        tool = make_user_tool(
            entry["path"],
            entry["restores"],
            name=name,
            upscale=bool(entry.get("upscale", False)),
            description=(
                f"User checkpoint {Path(entry['path']).name} ({entry.get('architecture', '?')}, "
                f"x{entry.get('scale', 1)}) restoring {', '.join(entry['restores'])}."
            ),
        )
        registry.add_instance(tool)
        added.append(name)
    return added
