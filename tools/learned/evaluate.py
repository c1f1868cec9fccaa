"""Held-out evaluation of a learned restorer against the classical tools.

Run ``python -m tools.learned.evaluate --task denoise [--write-card]``.

Images come from the EVALUATION split only (LIVE1_color, McMaster, Set14; never used in training),
cropped to ``--crop`` pixels. Each image is degraded once per severity band of the task with a fixed
seed; a task trained inside mixtures (``context_share``) is also scored per band inside random mixtures,
against what it should leave of them (rows "in mixtures: ..."). The learned model runs blind; each
classical tool runs twice: with the parameters its ``suggest()`` derives from the perception estimators'
report of the degraded image (as in the agent; this is the comparison that counts) and with those derived
from the *true* degradation (an oracle report, their best case). PSNR is measured on the BT.601 Y channel
(:func:`evals.metrics.psnr`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tools.learned.tasks import ALL_TASKS, SINGLE_TASKS, MixtureTask, Task, get_task, oracle_report, weights_dir

logger = logging.getLogger(__name__)

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"


def evaluate(
    task_name: str, weights: Path, shared: Path, limit: int | None = None, crop: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Mean PSNR per band of the input, each classical tool and the learned model.

    A single-degradation task is scored on its own bands. The all-in-one task is scored on each degradation
    it restores alone, with that degradation's bands and classical rivals (:data:`SINGLE_TASKS`); its band
    labels are prefixed with the degradation (``"noise: sigma 0-15"``).

    Returns:
        ``{"bands": {label: {"input": dB, "<tool>": dB, ..., "learned": dB, "best_classical": name}},
        "images": n, "crop": crop, "seconds_learned": mean seconds per image}``.
    """
    from agent.perception.assessor import EstimatorAssessor
    from evals.synthesis import clean_split, load_clean_images
    from tools.learned.restorers import RESTORERS

    task = get_task(task_name)
    judges = [SINGLE_TASKS[d] for d in task.restores] if isinstance(task, MixtureTask) else [task]
    learned = RESTORERS[task_name](weights=weights)
    images = load_clean_images(clean_split(shared)["evaluation"], limit=limit, crop=crop, seed=seed)
    assessor = EstimatorAssessor()
    bands: dict[str, dict[str, Any]] = {}
    learned_seconds: list[float] = []
    for judge in judges:
        prefix = f"{judge.degradation.value}: " if isinstance(task, MixtureTask) else ""
        for band_index, band in enumerate(judge.bands):
            label = prefix + band.label
            bands[label] = _score_band(judge, band_index, images, learned, assessor, seed, learned_seconds)
            logger.info("%s %s: %s", task_name, label, bands[label])
    if isinstance(task, Task) and task.context_share:
        for band_index, band in enumerate(task.bands):
            label = f"in mixtures: {band.label}"
            bands[label] = _score_band(
                task, band_index, images, learned, assessor, seed, learned_seconds, in_mixtures=True
            )
            logger.info("%s %s: %s", task_name, label, bands[label])
    return {
        "task": task_name,
        "images": len(images),
        "crop": crop,
        "seed": seed,
        "bands": bands,
        "seconds_learned": float(np.mean(learned_seconds)),
    }


def _score_band(
    judge: Task,
    band_index: int,
    images: list[tuple[str, np.ndarray]],
    learned: Any,
    assessor: Any,
    seed: int,
    learned_seconds: list[float],
    in_mixtures: bool = False,
) -> dict[str, Any]:
    """One band of ``judge``: mean PSNR-Y of the input, each classical rival (estimated and oracle) and ``learned``.

    With ``in_mixtures`` each image is degraded inside a random mixture (:meth:`Task.in_context`, as the
    agent meets the degradation) and every output is scored against what the task should leave of it.
    """
    from evals.metrics import psnr
    from tools import default_registry

    registry = default_registry()
    classical = [registry.get(name) for name in judge.classical_tools]
    band = judge.bands[band_index]
    scores: dict[str, list[float]] = {"input": [], "learned": []}
    for tool in classical:
        scores[tool.spec.name] = []
        scores[f"{tool.spec.name} (oracle)"] = []
    for image_index, (_, clean) in enumerate(images):
        if in_mixtures:
            rng = np.random.default_rng([seed, 100 + band_index, image_index])
            degraded, reference, params = judge.in_context(clean, rng, band=band)
            applied = params["applied"]
        else:
            rng = np.random.default_rng([seed, band_index, image_index])
            degraded, applied = judge.degrade_band(clean, rng, band)
            reference = clean
        scores["input"].append(psnr(degraded, reference))
        oracle = oracle_report(judge.degradation, applied)
        estimated = assessor.assess(degraded)
        for tool in classical:
            result = tool(degraded, tool.suggest(estimated, judge.degradation))
            scores[tool.spec.name].append(psnr(result.image, reference))
            result = tool(degraded, tool.suggest(oracle, judge.degradation))
            scores[f"{tool.spec.name} (oracle)"].append(psnr(result.image, reference))
        result = learned(degraded)
        learned_seconds.append(result.seconds)
        scores["learned"].append(psnr(result.image, reference))
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    best = max((t.spec.name for t in classical), key=lambda name: means[name])
    best_oracle = max((f"{t.spec.name} (oracle)" for t in classical), key=lambda name: means[name])
    return means | {
        "best_classical": best,
        "gain_over_classical": means["learned"] - means[best],
        "best_classical_oracle": best_oracle,
        "gain_over_classical_oracle": means["learned"] - means[best_oracle],
    }


def markdown_table(results: dict[str, Any]) -> str:
    """The evaluation as a Markdown table (PSNR on Y in dB, one row per band)."""
    lines = [
        f"{results['images']} images of the evaluation split (LIVE1_color, McMaster, Set14), "
        f"{results['crop']}px crops, "
        f"seed {results['seed']}; PSNR on Y (dB). The learned model is blind; classical tools run as the agent "
        "runs them (parameters estimated by the perception estimators from the degraded image) and, for "
        "reference, with oracle parameters taken from the synthesis (their best case, unavailable in practice).",
        "",
        "| band | input | best classical | classical (estimated) | learned | gain | classical (oracle) "
        "| gain vs oracle |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in results["bands"].items():
        best = row["best_classical"]
        oracle = row.get("best_classical_oracle")
        oracle_cells = f"{row[oracle]:.2f} | {row['gain_over_classical_oracle']:+.2f}" if oracle in row else "n/a | n/a"
        lines.append(
            f"| {label} | {row['input']:.2f} | {best} | {row[best]:.2f} | {row['learned']:.2f} | "
            f"{row['gain_over_classical']:+.2f} | {oracle_cells} |"
        )
    lines.append("")
    lines.append(f"Mean learned inference time per {results['crop']}px crop: {results['seconds_learned']:.3f} s (CPU).")
    return "\n".join(lines)


def evaluate_and_record(
    task_name: str, weights: Path, shared: Path, limit: int | None = None, crop: int = 256
) -> dict[str, Any]:
    """Evaluate, store ``evaluation.json`` next to the weights and rewrite ``MODEL_CARD.md`` with the table."""
    from tools.learned.train import write_model_card

    started = time.perf_counter()
    results = evaluate(task_name, weights, shared, limit=limit, crop=crop)
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    (weights / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    record = json.loads((weights / "config.json").read_text())
    write_model_card(weights, record, markdown_table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: prints the table; ``--write-card`` also records it next to the weights."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(ALL_TASKS))
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the task's)")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--limit", type=int, default=None, help="first N evaluation images only")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--write-card", action="store_true", help="write evaluation.json and MODEL_CARD.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    weights = args.weights or weights_dir(args.task)
    if args.write_card:
        results = evaluate_and_record(args.task, weights, args.shared, args.limit, args.crop)
    else:
        results = evaluate(args.task, weights, args.shared, args.limit, args.crop)
    sys.stdout.write(markdown_table(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
