"""Pixels on disk: the run directory's artifacts, written atomically and read back exactly.

Working images are ``.npy`` float32 files (exact, fast); people-facing images are PNG. Nodes
always read the pixels they work on from these files, never from memory, which is what makes
a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.imageio import file_sha256, load_image, save_image

ARTIFACT_DIR = "artifacts"


def atomic_write(path: Path, writer: Any) -> None:
    """Write ``path`` through ``writer(binary_handle)`` into a temporary file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(run_dir: Path, name: str, image: np.ndarray) -> str:
    """Store ``image`` as ``run_dir/artifacts/<name>.npy`` atomically; return its path."""
    path = run_dir / ARTIFACT_DIR / f"{name}.npy"
    array = np.ascontiguousarray(image, dtype=np.float32)
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))
    return str(path)


def read(path: str | Path) -> np.ndarray:
    """Read a working image artifact."""
    return np.load(path, allow_pickle=False)


def ingest_input(input_path: Path, run_dir: Path, policy: Any) -> tuple[str, dict[str, Any]]:
    """Copy the input's bytes into the run directory, load and normalise it, store its pixels.

    The original file is only read. Raises :class:`agent.imageio.ImageInputError` for input
    that cannot be used, with a message that says why.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    source_hash = file_sha256(input_path)
    copy = run_dir / f"input{input_path.suffix.lower()}"
    if not copy.exists() or file_sha256(copy) != source_hash:
        atomic_write(copy, lambda handle: handle.write(input_path.read_bytes()))
    loaded = load_image(copy, max_pixels=policy.limits.max_pixels)
    image = loaded.image
    info = {
        "source": str(input_path),
        "sha256": source_hash,
        "copy": str(copy),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "mode": loaded.mode,
        "bit_depth": loaded.bit_depth,
        "notes": list(loaded.notes),
    }
    return write(run_dir, "input", image), info


def write_outputs(run_dir: Path, artifact: str, output_path: str | None, input_path: str, bit_depth: int = 8) -> str:
    """Write the result as ``run_dir/output.png`` (and ``output_path`` if given); return the final path.

    PNG is lossless; 16-bit when the input had more than 8 bits per channel. The input file is
    protected: asking to write over it raises an error.
    """
    image = read(artifact)
    protect = [input_path]
    depth: Literal[8, 16] = 16 if bit_depth > 8 else 8
    run_output = save_image(image, run_dir / "output.png", bit_depth=depth, protect=protect)
    if not output_path:
        return str(run_output)
    target = Path(output_path)
    if target.resolve() == Path(input_path).resolve():
        raise ValueError(f"refusing to write the output over the input {input_path}")
    # Same bytes as the run directory's copy: copy the file instead of encoding the PNG again.
    atomic_write(target, lambda handle: handle.write(run_output.read_bytes()))
    return str(target)
