"""``restora assess``: print what the assessor sees in each image.

The lead wires :func:`add_assess_parser` into :mod:`agent.cli`::

    restora assess IMAGE... [--json] [--assessor estimators|saclip[:CHECKPOINT_DIR]|hybrid[:CHECKPOINT_DIR]]

Without ``--assessor`` the agent's own perception runs (:func:`~agent.perception.assessor.default_assessor`).

Without ``--json`` each image gets a table (per-type probability and severity, the estimated parameters)
and its dominant degradation; with ``--json`` one JSON object keyed by file name goes to standard output.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.perception.assessor import default_assessor, make_assessor

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

__all__ = ["make_assessor"]


def report_to_json(report: Any) -> dict[str, Any]:
    """A report as a JSON-ready dict: assessor, dominant type (``null`` = clean), per-type estimates, seconds."""
    from agent.perception.saclip import softmax_dominant

    dominant = report.dominant()
    data = {
        "assessor": report.assessor,
        "dominant": dominant.value if dominant is not None else None,
        "present": [d.value for d in report.present()],
        "estimates": {
            d.value: {"probability": round(e.probability, 4), "severity": round(e.severity, 4), "params": e.params}
            for d, e in report.estimates.items()
        },
        "seconds": round(report.seconds, 4),
    }
    softmax_winner = softmax_dominant(report) if report.assessor == "saclip" else None
    if softmax_winner is not None:
        data["softmax_dominant"] = softmax_winner
    return data


def format_report(name: str, data: dict[str, Any]) -> str:
    """A readable table of one :func:`report_to_json` result."""
    lines = [f"{name}  [{data['assessor']}, {data['seconds'] * 1000:.0f} ms]"]
    lines.append(f"  dominant: {data['dominant'] or 'none (looks clean)'}")
    if "softmax_dominant" in data:
        lines.append(f"  prompt softmax winner: {data['softmax_dominant']}")
    lines.append(f"  {'degradation':<16}{'prob':>6}{'sev':>6}  parameters")
    ranked = sorted(data["estimates"].items(), key=lambda item: -item[1]["probability"])
    for degradation, estimate in ranked:
        params = ", ".join(f"{k}={v:.3g}" for k, v in estimate["params"].items())
        mark = "*" if degradation in data["present"] else " "
        lines.append(
            f"{mark} {degradation:<16}{estimate['probability']:>6.2f}{estimate['severity']:>6.2f}  {params}".rstrip()
        )
    return "\n".join(lines)


def cmd_assess(args: argparse.Namespace) -> int:
    """Assess every input image and print the reports (text, or one JSON object keyed by file name)."""
    from agent.cli import gather_inputs
    from agent.imageio import ImageInputError, load_image

    gathered = gather_inputs(args.inputs)
    if gathered is None:
        return EXIT_USAGE
    files, failures = gathered
    try:
        # Without --assessor, the agent's own perception (what `restora run` acts on), $RESTORA_ASSESSOR honoured.
        assessor = make_assessor(args.assessor) if args.assessor else default_assessor()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    results: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            report = assessor.assess(load_image(path).image)
        except (ImageInputError, ValueError) as exc:
            failures.append((path, str(exc)))
            continue
        key = path.name if path.name not in results else str(path)
        results[key] = report_to_json(report)
        if not args.json:
            print(format_report(key, results[key]) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    for path, why in failures:
        print(f"error: {path}: {why}", file=sys.stderr)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def add_assess_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``assess`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    assess = subparsers.add_parser("assess", help="report the degradations the assessor sees in images")
    assess.add_argument("inputs", nargs="+", help="image files or folders")
    assess.add_argument("--json", action="store_true", help="print one JSON object keyed by file name")
    assess.add_argument(
        "--assessor",
        default=None,
        help="estimators, saclip[:<checkpoint folder>] (SA-CLIP) or hybrid[:<folder>] (both blended); default: the "
        "agent's (hybrid, or $RESTORA_ASSESSOR)",
    )
    assess.set_defaults(func=cmd_assess)
    return assess
