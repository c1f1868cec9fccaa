"""Dataset adapters: paired (degraded / reference by file name) and unpaired folders in published layouts.

:func:`load_dataset` reads a folder into a :class:`Dataset` of :class:`Entry` rows (a degraded image, its
reference when there is one, and a group such as a RUIE colour cast or a UDC panel). ``layout="auto"``
recognises every layout in :data:`LAYOUTS`; a folder that matches none raises :class:`DatasetLayoutError`
naming the layouts that were expected. Pairs are matched by file stem (``12.jpg`` with ``12.png``).

Layouts (folder names are matched case-insensitively):

* ``paired``: ``lq/`` + ``gt/`` (also ``LQ/`` + ``HQ/``, ``input/`` + ``target/``);
* ``uieb``: ``raw-890/`` + ``reference-890/`` (Li et al. 2019), ``challenging-60/`` read as unpaired;
* ``euvp``: ``Inp/`` + ``GTr/`` (its ``test_samples``), or ``Paired/<subset>/trainA`` + ``trainB``;
* ``lsui``: ``input/`` + ``GT/`` (the LSUI release and U-shape's ``test/``);
* ``udc``: Zhou et al.'s T-OLED / P-OLED captures: ``LQ/`` + ``HQ/`` inside folders named ``*toled*`` /
  ``*poled*`` (e.g. ``Toled_train/``, ``Poled/``); a split with ``LQ/`` only is read unpaired;
* ``u45``, ``ruie``, ``unpaired``: images directly in the folder, in ``lq/``, or in sub-folders (one or two
  levels, e.g. RUIE's ``UCCS/blue``), whose relative path becomes the group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


class DatasetLayoutError(FileNotFoundError):
    """A folder does not hold a dataset in any known layout; the message names the expected layouts."""


@dataclass(frozen=True)
class Entry:
    """One image of a dataset: the degraded input, its reference when paired, and its group."""

    name: str
    lq: Path
    gt: Path | None = None
    group: str | None = None


@dataclass
class Dataset:
    """A dataset read from disk."""

    name: str
    root: Path
    layout: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def paired(self) -> bool:
        """Whether every entry has a reference image."""
        return bool(self.entries) and all(e.gt is not None for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _child(folder: Path, *names: str) -> Path | None:
    """The sub-folder of ``folder`` whose name equals one of ``names`` (case-insensitive), if any."""
    if not folder.is_dir():
        return None
    wanted = [n.lower() for n in names]
    children = {c.name.lower(): c for c in folder.iterdir() if c.is_dir()}
    for name in wanted:
        if name in children:
            return children[name]
    return None


def _pairs(lq_dir: Path, gt_dir: Path, group: str | None = None, prefix: str = "") -> list[Entry]:
    """Entries pairing the images of ``lq_dir`` and ``gt_dir`` by file stem; unmatched inputs are logged."""
    references = {p.stem: p for p in _images(gt_dir)}
    entries, unmatched = [], []
    for path in _images(lq_dir):
        ref = references.get(path.stem)
        if ref is None:
            unmatched.append(path.name)
            continue
        entries.append(Entry(f"{prefix}{path.stem}", path, ref, group))
    if unmatched:
        logger.warning(
            "%s: %d input(s) without a reference in %s left out, e.g. %s",
            lq_dir,
            len(unmatched),
            gt_dir,
            ", ".join(unmatched[:3]),
        )
    return entries


def _unpaired_tree(folder: Path, depth: int = 2) -> list[Entry]:
    """Images in ``folder`` and in sub-folders up to ``depth`` levels; the relative folder is the group."""
    entries = [Entry(p.stem, p) for p in _images(folder)]
    if depth <= 0:
        return entries
    for sub in sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")):
        for e in _unpaired_tree(sub, depth - 1):
            group = sub.name if e.group is None else f"{sub.name}/{e.group}"
            entries.append(Entry(f"{sub.name}/{e.name}", e.lq, None, group))
    return entries


def _paired_layout(root: Path) -> list[Entry] | None:
    for lq_names, gt_names in ((("lq",), ("gt",)), (("LQ",), ("HQ",)), (("input",), ("target",))):
        lq, gt = _child(root, *lq_names), _child(root, *gt_names)
        if lq is not None and gt is not None:
            return _pairs(lq, gt)
    return None


def _uieb_layout(root: Path) -> list[Entry] | None:
    raw, ref = _child(root, "raw-890", "raw"), _child(root, "reference-890", "reference")
    if raw is None or ref is None:
        return None
    entries = _pairs(raw, ref, group="raw-890")
    hard = _child(root, "challenging-60")
    if hard is not None:
        entries += [Entry(f"challenging-60/{p.stem}", p, None, "challenging-60") for p in _images(hard)]
    return entries


def _euvp_layout(root: Path) -> list[Entry] | None:
    base = _child(root, "test_samples") or root
    inp, gtr = _child(base, "Inp"), _child(base, "GTr")
    if inp is not None and gtr is not None:
        return _pairs(inp, gtr)
    paired = _child(root, "Paired")
    if paired is None:
        return None
    entries: list[Entry] = []
    for subset in sorted(c for c in paired.iterdir() if c.is_dir()):
        a, b = _child(subset, "trainA"), _child(subset, "trainB")
        if a is not None and b is not None:
            entries += _pairs(a, b, group=subset.name, prefix=f"{subset.name}/")
    return entries or None


def _lsui_layout(root: Path) -> list[Entry] | None:
    base = _child(root, "test") if _child(root, "input") is None else root
    if base is None:
        return None
    inp, gt = _child(base, "input"), _child(base, "GT")
    if inp is None or gt is None:
        return None
    return _pairs(inp, gt)


def _udc_layout(root: Path) -> list[Entry] | None:
    splits = [
        c for c in sorted(root.iterdir()) if c.is_dir() and ("toled" in c.name.lower() or "poled" in c.name.lower())
    ]
    if not splits and ("toled" in root.name.lower() or "poled" in root.name.lower()):
        splits = [root]
    entries: list[Entry] = []
    for split in splits:
        panel = "toled" if "toled" in split.name.lower() else "poled"
        lq, hq = _child(split, "LQ"), _child(split, "HQ")
        if lq is None:
            continue
        prefix = f"{split.name}/" if split is not root else ""
        if hq is not None:
            entries += _pairs(lq, hq, group=panel, prefix=prefix)
        else:
            entries += [Entry(f"{prefix}{p.stem}", p, None, panel) for p in _images(lq)]
    return entries or None


def _unpaired_layout(root: Path) -> list[Entry] | None:
    lq = _child(root, "lq")
    entries = _unpaired_tree(lq if lq is not None else root)
    return entries or None


LayoutReader = Callable[[Path], "list[Entry] | None"]

#: Layout name -> (what it expects, reader returning the entries or ``None`` when the folder does not match).
LAYOUTS: dict[str, tuple[str, LayoutReader]] = {
    "udc": ("Toled*/ or Poled*/ folders with LQ/ (+ HQ/)", _udc_layout),
    "uieb": ("raw-890/ + reference-890/ (+ challenging-60/)", _uieb_layout),
    "euvp": ("Inp/ + GTr/ (test_samples) or Paired/<subset>/trainA + trainB", _euvp_layout),
    "lsui": ("input/ + GT/ (or test/input + test/GT)", _lsui_layout),
    "paired": ("lq/ + gt/ (or LQ/ + HQ/, input/ + target/) with matching file names", _paired_layout),
    "u45": ("the 45 images directly in the folder (or in lq/)", _unpaired_layout),
    "ruie": ("UCCS/, UIQS/, UTTS/ sub-folders of images (or lq/<cast>/)", _unpaired_layout),
    "unpaired": ("images in the folder, in lq/, or in sub-folders", _unpaired_layout),
}


#: Layouts that only name a published set read like another layout; ``auto`` reports the generic name.
_ALIASES = frozenset({"u45", "ruie"})


def expected_layouts() -> str:
    """One line per layout: its name and the folders it expects."""
    return "\n".join(f"  {name}: {what}" for name, (what, _) in LAYOUTS.items())


def load_dataset(root: str | Path, layout: str = "auto", name: str | None = None) -> Dataset:
    """Read the dataset in ``root``.

    Args:
        root: The dataset folder.
        layout: A key of :data:`LAYOUTS`, or ``"auto"`` to take the first that matches (in that order).
        name: The dataset's name in reports (default: the folder name).

    Raises:
        DatasetLayoutError: when ``root`` is missing, or matches no layout (or not the one asked for);
            the message lists the expected layouts.
        ValueError: for an unknown layout name.

    """
    root = Path(root).expanduser()
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use 'auto' or one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder {root} does not exist; pass an existing folder (e.g. with --data)")
    candidates = [k for k in LAYOUTS if k not in _ALIASES] if layout == "auto" else [layout]
    for candidate in candidates:
        entries = LAYOUTS[candidate][1](root)
        if entries:
            logger.debug("%s: %d images, layout %s", root, len(entries), candidate)
            return Dataset(name or root.name, root, candidate, entries)
    asked = "any known layout" if layout == "auto" else f"the {layout!r} layout"
    raise DatasetLayoutError(f"{root} does not hold images in {asked}; expected one of:\n{expected_layouts()}")
