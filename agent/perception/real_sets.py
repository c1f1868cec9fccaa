"""The real degraded photo sets of ``shared/data``, their known dominant degradation, and a fixed split.

Each set is divided once and for all into a *training part*, which SA-CLIP training may read
(``saclip_train --p-real``), and a *held-out part*, which the assessor evaluation scores. Sets listed in
:data:`TRAINABLE` are divided in half; the others are held out whole, so the evaluation always also
reports photos from collections never trained on.

* PolyU is divided by camera (:data:`POLYU_TRAIN_CAMERAS`): its crops come from a few scenes shot by five
  cameras, and a camera's noise should not be seen in training and scored in evaluation.
* The other trainable sets are divided by a checksum of each file's path inside the set, without its
  suffix. It does not depend on which files are present or how they are encoded: a copy holding only the
  training part, re-encoded losslessly, splits the same way.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agent.degradations import Degradation

#: Real sets of ``shared/data`` with their known dominant degradation.
REAL_SETS: dict[str, tuple[str, Degradation]] = {
    "DICM": ("degraded/DICM_lowlight_ZeroDCE", Degradation.LOW_LIGHT),
    "PolyU": ("degraded/PolyU_real_noise_cropped100", Degradation.NOISE),
    "Rain100L": ("degraded/Rain100L_synthetic_samples", Degradation.RAIN),
    "SOTS": ("degraded/SOTS_indoor_synthetic_haze_subset50", Degradation.HAZE),
    "EUVP": ("underwater/EUVP_test_samples_FUnIE-GAN", Degradation.COLOR_CAST),
    "LSUI": ("underwater/LSUI_test_samples_Ushape", Degradation.COLOR_CAST),
    "U45": ("underwater/U45", Degradation.COLOR_CAST),
    "RUIE": ("underwater/RUIE_UCCS", Degradation.COLOR_CAST),
}

#: Sets whose training part may be trained on; the rest (Rain100L, EUVP, U45) are always held out whole.
TRAINABLE = ("DICM", "PolyU", "SOTS", "LSUI", "RUIE")
#: Sets whose ``gt`` images are clean photos, usable as extra clean training photos: SOTS' haze-free
#: scenes (lossless PNG). Not PolyU's mean-of-burst references: they are stored as JPEG at quality 75,
#: which the synthesis labels "jpeg". Not LSUI and EUVP: their references are enhanced or generated.
CLEAN_REFERENCES = ("SOTS",)
#: PolyU cameras in the training part (file names start with the camera); Canon80D and NikonD800 are held out.
POLYU_TRAIN_CAMERAS = ("Canon5D2", "Canon600D", "Sony")

TRAIN, HELD_OUT = "train", "held-out"


def part_of(set_name: str, relative_path: str) -> str:
    """Which part (:data:`TRAIN` or :data:`HELD_OUT`) the file at ``relative_path`` inside the set belongs to.

    ``relative_path`` is the path below the set's ``lq``/``gt`` folder (or below the set when it has none),
    with forward slashes, e.g. ``"blue/blue_00.jpg"``; its suffix is ignored.
    """
    if set_name not in TRAINABLE:
        return HELD_OUT
    if set_name == "PolyU":
        camera = Path(relative_path).name.split("_", 1)[0]
        return TRAIN if camera in POLYU_TRAIN_CAMERAS else HELD_OUT
    stem = Path(relative_path).with_suffix("").as_posix()
    return TRAIN if zlib.crc32(stem.encode("utf-8")) % 2 == 0 else HELD_OUT


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the set folder ``root``, below its ``lq``/``gt`` folder when it sits in one."""
    parts = path.relative_to(root).parts
    if len(parts) > 1 and parts[0] in ("lq", "gt"):
        parts = parts[1:]
    return "/".join(parts)


def evenly_spaced(items: Sequence, limit: int | None) -> list:
    """At most ``limit`` of ``items``, spread evenly over the sequence (all of them when ``limit`` is None)."""
    if limit is None or len(items) <= limit:
        return list(items)
    if limit <= 0:
        return []
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def real_entries(shared: Path, name: str, part: str | None) -> list:
    """The dataset entries of real set ``name`` in ``part`` (``None``: all), ``[]`` when the set is absent."""
    from evals.datasets import load_dataset

    relative, _ = REAL_SETS[name]
    root = Path(shared) / "data" / relative
    if not root.is_dir():
        return []
    entries = load_dataset(root).entries
    return [e for e in entries if part is None or part_of(name, _relative(Path(e.lq), root)) == part]


def load_real_sets(
    shared: Path, limit: int | None, max_side: int = 512, part: str | None = HELD_OUT
) -> dict[str, tuple[list[np.ndarray], Degradation]]:
    """The real sets found under ``shared/data`` (degraded inputs only): ``{name: (images, label)}``.

    Args:
        shared: The shared folder holding ``data``.
        limit: At most this many images per set, evenly spaced over its (sorted) files.
        max_side: Images are centre-cropped to this side.
        part: :data:`HELD_OUT` (what evaluation scores), :data:`TRAIN`, or ``None`` for every file.
    """
    from evals.synthesis import load_clean_images

    sets = {}
    for name, (_, label) in REAL_SETS.items():
        entries = evenly_spaced(real_entries(shared, name, part), limit)
        if not entries:
            continue
        images = [image for _, image in load_clean_images([e.lq for e in entries], crop=max_side, seed=None)]
        sets[name] = (images, label)
    return sets


def load_real_training(
    shared: Path, max_side: int = 512
) -> tuple[list[tuple[np.ndarray, Degradation]], list[np.ndarray]]:
    """The training parts of the :data:`TRAINABLE` sets: labelled degraded photos, and extra clean photos.

    Returns:
        ``(labelled, clean)``: ``labelled`` holds ``(image, dominant degradation)`` for every degraded
        training photo; ``clean`` the ``gt`` photos of the :data:`CLEAN_REFERENCES` sets' training parts.
    """
    from evals.synthesis import load_clean_images

    labelled: list[tuple[np.ndarray, Degradation]] = []
    clean: list[np.ndarray] = []
    for name in TRAINABLE:
        label = REAL_SETS[name][1]
        entries = real_entries(shared, name, TRAIN)
        if not entries:
            continue
        labelled += [(img, label) for _, img in load_clean_images([e.lq for e in entries], crop=max_side, seed=None)]
        references = [e.gt for e in entries if e.gt is not None] if name in CLEAN_REFERENCES else []
        if references:
            clean += [img for _, img in load_clean_images(references, crop=max_side, seed=None)]
    return labelled, clean
