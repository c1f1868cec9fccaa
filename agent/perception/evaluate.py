"""Evaluate an assessor honestly: held-out synthetic degradations and the real degraded sets.

    python -m agent.perception.evaluate [--assessor estimators|saclip[:DIR]] [--shared ../shared]
        [--per-class 20] [--mixtures 160] [--real-limit 40] [--out assessor-report.json]

Synthetic images are made from the *evaluation* split of the clean photos (LIVE1, McMaster, Set14),
which neither the estimator calibration nor SA-CLIP training reads: ``--per-class`` random crops per
class (every degradation type alone, drawn over the synthesis' full severity range, plus the clean crop
itself as "no"), and ``--mixtures`` crops carrying two or three degradations (half of them MiO100
combinations). Reported: accuracy of the dominant degradation (overall and per severity band), per-class
precision/recall/F1 and the confusion matrix on the single set; multi-label micro/macro F1, exact-set
rate, per-type F1 and severity error on the mixtures; how often "no" wins on clean crops (semantic
agnosticism: only the content differs between them); and on each real set in ``shared/data`` whose
dominant degradation is known (DICM: low light, PolyU: noise, Rain100L: rain, SOTS: haze, the underwater
sets: colour cast), the share of images whose dominant degradation is that label. The real sets are scored
on their held-out part (:mod:`agent.perception.real_sets`: SA-CLIP training may read the other part; at
most ``--real-limit`` images per set, evenly spaced). Also the assessor's mean time per image.
``--collections`` scores the photos of some evaluation collections only; photos a SA-CLIP checkpoint
trained on (``saclip_train --extra-clean``) are always left out, and ``--leave-out-trained-by CHECKPOINT``
leaves out those of other checkpoints too, so that several models are scored on the same crops.

The dominant degradation is SA-CLIP's softmax winner when the assessor provides one, else the most
probable type at or above probability 0.5 ("no" when none is).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.degradations import Degradation
from agent.perception.real_sets import HELD_OUT, TRAIN, load_real_sets

logger = logging.getLogger(__name__)

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"

#: The clean collections of the evaluation split (:func:`evals.synthesis.clean_split`).
EVALUATION_COLLECTIONS = ("LIVE1_color", "McMaster", "Set14")

#: Severity bands of the single-degradation crops for the per-band accuracy (the synthesis draws severity in [0, 1]).
SEVERITY_BANDS = ((0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0 + 1e-9))
SEVERITY_BAND_NAMES = ("0-0.33", "0.33-0.67", "0.67-1")


def dominant_class(report: Any) -> str:
    """The dominant class name of a report: SA-CLIP's softmax winner if present, else presence argmax or "no"."""
    from agent.perception.saclip import CLEAN, softmax_dominant

    winner = softmax_dominant(report)
    if winner is not None:
        return winner
    dominant = report.dominant(0.5)
    return CLEAN if dominant is None else dominant.value


def _crops(images: Sequence[tuple[str, np.ndarray]], count: int, size: int, rng: np.random.Generator) -> list:
    out = []
    for _ in range(count):
        name, image = images[int(rng.integers(len(images)))]
        h, w = image.shape[:2]
        ch, cw = min(size, h), min(size, w)
        top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        out.append((name, np.ascontiguousarray(image[top : top + ch, left : left + cw])))
    return out


def trained_photo_names(assessor: Any) -> set[str]:
    """Clean photos (``"<folder>/<stem>"``) a SA-CLIP assessor's checkpoint trained on beyond the calibration split.

    These are its ``--extra-clean`` photos, and those of every checkpoint it was fine-tuned from.
    """
    model = getattr(assessor, "model", None)
    return record_photo_names(getattr(getattr(model, "settings", None), "training", None))


def checkpoint_photo_names(folder: Path) -> set[str]:
    """:func:`trained_photo_names` of the SA-CLIP checkpoint in ``folder``, read from its settings file alone.

    Raises:
        FileNotFoundError: when ``folder`` holds no SA-CLIP settings file.
    """
    from agent.perception.saclip import SETTINGS_FILE

    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a SA-CLIP checkpoint folder")
    return record_photo_names(json.loads(path.read_text()).get("training"))


def record_photo_names(record: Any) -> set[str]:
    """The ``extra_clean`` photo names of a training record and of the records it was fine-tuned from."""
    names: set[str] = set()
    while isinstance(record, dict):
        names.update(record.get("extra_clean", []))
        record = record.get("init_record")
    return names


def synthetic_sets(
    shared: Path,
    per_class: int,
    mixtures: int,
    seed: int,
    size: int = 256,
    collections: Sequence[str] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Single-degradation (and clean) samples and mixture samples from the evaluation split.

    Args:
        shared: The shared folder holding ``data/clean``.
        per_class: Single-degradation crops per class (clean included).
        mixtures: Crops carrying two or three degradations.
        seed: Seeds the crops and the degradations.
        size: Side of the square crops.
        collections: Only photos of these evaluation collections (folder names, e.g. ``"McMaster"``).
        exclude: Photos (``"<folder>/<stem>"``) never to use, such as those an assessor trained on.

    Raises:
        FileNotFoundError: when no evaluation photo is left.
    """
    from evals.synthesis import clean_split, load_clean_images, photo_name

    files = clean_split(shared)["evaluation"]
    if collections is not None:
        files = [path for path in files if path.parent.name in collections]
    files = [path for path in files if photo_name(path) not in exclude]
    images = load_clean_images(files, crop=None) if files else []
    if not images:
        raise FileNotFoundError(f"no evaluation images under {shared}/data/clean (collections {collections})")
    return synthetic_samples(images, per_class, mixtures, seed, size)


def synthetic_samples(
    images: Sequence[tuple[str, np.ndarray]], per_class: int, mixtures: int, seed: int, size: int = 256
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Degraded random crops of ``(name, image)`` photos: ``per_class`` per class (clean included) and ``mixtures``.

    Single degradations are drawn over the synthesis' full severity range; mixtures alternate between
    MiO100 combinations (MiO100 ranges) and any two or three types (default ranges). Each sample has
    ``image``, ``labels`` (type names), ``severity`` per label and ``source``.
    """
    from evals.synthesis import MIO100_COMBINATIONS, synthesize

    rng = np.random.default_rng(seed)
    single = []
    for label in [None, *Degradation]:
        for name, crop in _crops(images, per_class, size, rng):
            if label is None:
                single.append({"image": crop, "labels": [], "severity": {}, "source": name})
                continue
            result = synthesize(crop, [label], seed=int(rng.integers(2**31)))
            single.append(_sample(result, name))
    mixed = []
    combos = list(MIO100_COMBINATIONS.values())
    types = list(Degradation)
    for i, (name, crop) in enumerate(_crops(images, mixtures, size, rng)):
        if i % 2 == 0:
            chosen, preset = list(combos[int(rng.integers(len(combos)))]), "mio100"
        else:
            count = 2 if rng.random() < 0.6 else 3
            chosen, preset = [types[j] for j in rng.choice(len(types), size=count, replace=False)], "default"
        mixed.append(_sample(synthesize(crop, chosen, seed=int(rng.integers(2**31)), preset=preset), name))
    return single, mixed


def _sample(result: Any, source: str) -> dict[str, Any]:
    return {
        "image": result.image,
        "labels": [d.value for d, _ in result.applied],
        "severity": {d.value: float(p.get("severity", np.nan)) for d, p in result.applied},
        "source": source,
    }


def _source_set(sample: dict[str, Any]) -> str:
    """The photo set a sample's crop came from (``"McMaster"`` of ``"McMaster/img_01"``)."""
    return str(sample.get("source", "?")).split("/")[0]


def evaluate_assessor(
    assessor: Any,
    single: Sequence[dict[str, Any]],
    mixed: Sequence[dict[str, Any]],
    real: dict[str, tuple[list[np.ndarray], Degradation]] | None = None,
) -> dict[str, Any]:
    """Score ``assessor`` on the synthetic sets (and real sets: ``{name: (images, label)}``)."""
    from agent.perception.saclip import CLASSES, CLEAN
    from agent.perception.saclip_train import classification_scores, confusion_matrix, multilabel_f1, severity_mae

    seconds: list[float] = []

    def assess(image: np.ndarray) -> Any:
        start = time.perf_counter()
        report = assessor.assess(image)
        seconds.append(time.perf_counter() - start)
        return report

    index = {name: i for i, name in enumerate(CLASSES)}
    true_class, predicted_class = [], []
    for sample in single:
        true_class.append(index[sample["labels"][0]] if sample["labels"] else index[CLEAN])
        predicted_class.append(index[dominant_class(assess(sample["image"]))])
    matrix = confusion_matrix(true_class, predicted_class, len(CLASSES))
    scores = classification_scores(matrix, CLASSES)
    by_severity: dict[str, dict[str, float]] = {}
    for (low, high), label in zip(SEVERITY_BANDS, SEVERITY_BAND_NAMES, strict=True):
        hits = [
            truth == guess
            for sample, truth, guess in zip(single, true_class, predicted_class, strict=True)
            if sample["labels"] and low <= sample["severity"].get(sample["labels"][0], np.nan) < high
        ]
        by_severity[label] = {"accuracy": float(np.mean(hits)) if hits else float("nan"), "samples": len(hits)}
    by_source: dict[str, dict[str, float]] = {}
    for folder in sorted({_source_set(sample) for sample in single}):
        rows = [
            (truth, guess)
            for sample, truth, guess in zip(single, true_class, predicted_class, strict=True)
            if _source_set(sample) == folder
        ]
        clean = [guess == index[CLEAN] for truth, guess in rows if truth == index[CLEAN]]
        by_source[folder] = {
            "accuracy": float(np.mean([truth == guess for truth, guess in rows])),
            "samples": len(rows),
            "clean_no_rate": float(np.mean(clean)) if clean else float("nan"),
            "clean_samples": len(clean),
        }
    types = list(Degradation)
    truth = np.zeros((len(mixed), len(types)), bool)
    predicted = np.zeros_like(truth)
    true_severity = np.zeros(truth.shape)
    predicted_severity = np.zeros(truth.shape)
    for i, sample in enumerate(mixed):
        report = assess(sample["image"])
        present = {d.value for d in report.present(0.5)}
        for j, d in enumerate(types):
            truth[i, j] = d.value in sample["labels"]
            predicted[i, j] = d.value in present
            true_severity[i, j] = sample["severity"].get(d.value, 0.0)
            predicted_severity[i, j] = report.severity(d)
    per_type = {}
    for j, d in enumerate(types):
        tp = float((truth[:, j] & predicted[:, j]).sum())
        denominator = float(truth[:, j].sum() + predicted[:, j].sum())
        per_type[d.value] = {
            "f1": 2 * tp / denominator if denominator else float("nan"),
            "support": int(truth[:, j].sum()),
        }
    result: dict[str, Any] = {
        "single": {
            "samples": len(single),
            **scores,
            "confusion": matrix.tolist(),
            "classes": list(CLASSES),
            "accuracy_by_severity": by_severity,
            "accuracy_by_source": by_source,
        },
        "clean_no_rate": scores["per_class"][CLEAN]["recall"],
        "mixed": {
            "samples": len(mixed),
            **multilabel_f1(truth, predicted),
            "exact_set": float(np.mean((truth == predicted).all(axis=1))) if len(mixed) else float("nan"),
            "per_type": per_type,
            "severity_mae": severity_mae(true_severity, predicted_severity, truth),
        },
        "real": {},
    }
    for name, (images, label) in (real or {}).items():
        reports = [assess(image) for image in images]
        winners = [dominant_class(report) for report in reports]
        counts: dict[str, int] = {}
        for winner in winners:
            counts[winner] = counts.get(winner, 0) + 1
        result["real"][name] = {
            "label": label.value,
            "images": len(images),
            "accuracy": float(np.mean([w == label.value for w in winners])) if winners else float("nan"),
            # multi-label view: the set's degradation found present, whatever else is
            "label_present": float(np.mean([r.probability(label) >= 0.5 for r in reports] or [np.nan])),
            "predicted": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        }
    result["seconds_per_image"] = float(np.mean(seconds)) if seconds else float("nan")
    return result


def format_result(result: dict[str, Any]) -> str:
    """A readable summary of :func:`evaluate_assessor`'s result."""
    single, mixed = result["single"], result["mixed"]
    lines = [
        f"single degradations ({single['samples']} crops): accuracy {single['accuracy']:.1%}, macro F1 "
        f'{single["macro_f1"]:.3f}; "no" wins on {result["clean_no_rate"]:.1%} of clean crops',
        "  per class F1: "
        + ", ".join(f"{name} {entry['f1']:.2f}" for name, entry in single["per_class"].items() if entry["support"]),
        "  degraded crops by severity: "
        + ", ".join(
            f"{band} {entry['accuracy']:.1%} (n={entry['samples']})"
            for band, entry in single.get("accuracy_by_severity", {}).items()
            if entry["samples"]
        ),
        f"mixtures ({mixed['samples']} crops): micro F1 {mixed['micro_f1']:.3f}, macro F1 {mixed['macro_f1']:.3f}, "
        f"exact set {mixed['exact_set']:.1%}, severity MAE {mixed['severity_mae']:.3f}",
        "  per type F1: " + ", ".join(f"{name} {entry['f1']:.2f}" for name, entry in mixed["per_type"].items()),
    ]
    sources = single.get("accuracy_by_source")
    if sources:  # after the severity line
        lines.insert(
            3,
            "  by photo set: "
            + ", ".join(
                f'{name} {entry["accuracy"]:.1%} (n={entry["samples"]}; "no" on {entry["clean_no_rate"]:.0%} of '
                f"{entry['clean_samples']} clean)"
                for name, entry in sources.items()
            ),
        )
    for name, entry in result["real"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(entry["predicted"].items())[:3])
        present = f"; label present {entry['label_present']:.0%}" if "label_present" in entry else ""
        lines.append(
            f"real {name} ({entry['images']} images, label {entry['label']}): {entry['accuracy']:.1%} ({top}){present}"
        )
    if result["real"]:
        total = sum(e["images"] for e in result["real"].values())
        right = sum(e["accuracy"] * e["images"] for e in result["real"].values())
        lines.append(f"real sets together: {right / max(total, 1):.1%} of {total} images")
        if all("label_present" in e for e in result["real"].values()):
            present = sum(e["label_present"] * e["images"] for e in result["real"].values())
            lines.append(f"  label found present (probability >= 0.5): {present / max(total, 1):.1%}")
    lines.append(f"assessor time: {result['seconds_per_image'] * 1000:.0f} ms per image (mean)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    from agent.perception.cli_commands import make_assessor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assessor", default="estimators", help="estimators | saclip[:<folder>] | hybrid[:<folder>]")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--per-class", type=int, default=20, help="single-degradation crops per class")
    parser.add_argument("--mixtures", type=int, default=160, help="crops with two or three degradations")
    parser.add_argument("--real-limit", type=int, default=40, help="images per real set (0: skip the real sets)")
    parser.add_argument(
        "--real-part",
        choices=(HELD_OUT, TRAIN, "all"),
        default=HELD_OUT,
        help="which part of the real sets to score (agent.perception.real_sets; default: the held-out part)",
    )
    parser.add_argument(
        "--collections",
        nargs="+",
        choices=EVALUATION_COLLECTIONS,
        default=None,
        help="score only the photos of these evaluation collections (default: all of them)",
    )
    parser.add_argument(
        "--leave-out-trained-by",
        nargs="+",
        type=Path,
        default=[],
        metavar="CHECKPOINT",
        help="also leave out the photos these SA-CLIP checkpoints trained on (--extra-clean), so that models "
        "are compared on the same crops",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write the full result (confusion matrix...) as JSON")
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="SA-CLIP only: store the result as evaluation.json in the checkpoint folder and update its MODEL_CARD.md",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not (args.shared / "data" / "clean").is_dir():
        print(f"error: {args.shared}/data/clean not found; pass --shared", file=sys.stderr)
        return 2
    assessor = make_assessor(args.assessor)
    folder = getattr(assessor, "folder", None)
    if args.write_card and folder is None:
        print("error: --write-card needs a SA-CLIP assessor (saclip or saclip:<folder>)", file=sys.stderr)
        return 2
    trained = trained_photo_names(assessor)
    for other in args.leave_out_trained_by:
        trained |= checkpoint_photo_names(other)
    if trained:
        print(f"leaving out {len(trained)} evaluation photos that were trained on (--extra-clean)")
    single, mixed = synthetic_sets(
        args.shared, args.per_class, args.mixtures, args.seed, collections=args.collections, exclude=trained
    )
    part = None if args.real_part == "all" else args.real_part
    real = load_real_sets(args.shared, args.real_limit, part=part) if args.real_limit > 0 else {}
    result = evaluate_assessor(assessor, single, mixed, real)
    result["settings"] = {k: str(v) for k, v in vars(args).items()}
    result["left_out_photos"] = sorted(trained)
    print(format_result(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    if args.write_card and folder is not None:
        from agent.perception.saclip_train import EVALUATION_FILE, write_model_card

        (folder / EVALUATION_FILE).write_text(json.dumps(result, indent=1))
        print(f"wrote {write_model_card(folder, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
