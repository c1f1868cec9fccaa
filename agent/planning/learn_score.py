"""Learn how best-of-k ranks verified candidates: a model of a step's PSNR gain from what the verifier sees.

    python -m agent.planning.learn_score [--policy learned] [--per-combo 4] [--seed 11] [--out policies/scored.yaml]

The verifier's own score (degradation-load drop plus NR-IQA gain) prefers strong restorations that
lose PSNR, so best-of-k with it scores below greedy. This script measures instead of guessing. On
synthetic MiO100 mixtures made from the *calibration* images (BSD100; the benchmark's evaluation
images are never used) the agent runs best-of-k over every candidate of every step (all attempts,
no k limit); each candidate the verifier accepts is scored by its true PSNR-Y gain against the
clean image, and the step keeps the truly best one (so the agent follows the reference-guided
trajectory, an upper bound that is reported too). Every accepted candidate's features
(:data:`agent.verify.STEP_FEATURES`) and true gain are recorded.

Per target degradation a ridge regression of the gain on the features is fitted (features
standardised, the standardisation folded back into the coefficients, so the policy holds plain
linear models); degradations with too few steps that had a choice share a pooled model. The
script reports, with mixtures held out in folds, how much PSNR the learned ranking, the verifier's
score and the first accepted candidate (greedy) each keep at the steps with a choice, then writes the
policy with ``strategy: best_of_k`` and the learned score.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from agent.degradations import Degradation
from agent.verify import STEP_FEATURES
from policies.schema import StepScore

logger = logging.getLogger(__name__)

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "policies" / "scored.yaml"

#: The ranking rules compared: the learned model, the verifier's score, the first accepted, the reference.
RULES = ("learned", "verifier", "greedy", "reference")

#: Fewest steps with a choice a degradation needs for a model of its own (else the pooled model).
MIN_GROUPS = 12


def with_attempts(policy: Any, attempts: int, **budgets: Any) -> Any:
    """``policy`` trying up to ``attempts`` candidates per step, with tool calls for 8 such steps (and ``budgets``)."""
    update = {
        "max_attempts_per_step": attempts,
        "max_tool_calls": max(policy.budgets.max_tool_calls, 8 * attempts),
        **budgets,
    }
    return policy.model_copy(update={"budgets": policy.budgets.model_copy(update=update)})


def exploring_policy(policy: Any, attempts: int) -> Any:
    """``policy`` with best-of-k over every attempt of a step (up to ``attempts``) and room for them."""
    policy = with_attempts(policy, max(policy.budgets.max_attempts_per_step, attempts), time_budget_s=None)
    strategy = policy.strategy.model_copy(update={"name": "best_of_k", "k": 16})
    return policy.model_copy(update={"strategy": strategy})


def collect(shared: Path, policy_name: str, per_combo: int, seed: int, attempts: int, limit: int | None) -> dict:
    """Run the reference-guided best-of-all agent on the calibration mixtures; return candidates and runs."""
    from tqdm import tqdm

    from agent.context import RunContext
    from agent.imageio import load_image, save_image
    from agent.runner import restore_image
    from evals.bench_agent import build_set
    from evals.metrics import psnr
    from policies import load_policy

    items = build_set(shared, per_combo, seed, split_name="calibration")[:limit]
    candidates: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    def reference_gain(*, target, before_image, after_image, features, record) -> float:
        clean = current["clean"]
        gain = psnr(after_image, clean) - psnr(before_image, clean)
        candidates.append(
            {
                "item": current["item"],
                "step": record["step"],
                "target": target.value,
                "tool": record["tool"],
                "strength": features.get("strength", 1.0),
                "features": {k: round(float(v), 5) for k, v in features.items()},
                "verifier_score": round(features["load_drop"] + features["iqa_gain"], 5),
                "order": sum(1 for c in candidates if c["item"] == current["item"] and c["step"] == record["step"]),
                "gain": round(float(gain), 4),
            }
        )
        return gain

    context = RunContext(policy=exploring_policy(load_policy(policy_name), attempts), step_scorer=reference_gain)
    with tempfile.TemporaryDirectory(prefix="restora-score-") as tmp:
        work = Path(tmp)
        for index, item in enumerate(tqdm(items, desc="explore candidates", unit="img", file=sys.stderr)):
            name = f"{index:03d}_{item['combo']}_{Path(item['name']).stem}"
            current.update(clean=item["clean"], item=name)
            input_path = work / f"{index:03d}.png"
            save_image(item["degraded"], input_path)
            result = restore_image(input_path, work / "run", context, output_path=work / "out.png")
            assert result.output_path is not None
            runs.append(
                {
                    "item": name,
                    "combo": item["combo"],
                    "psnr_input": round(psnr(load_image(input_path).image, item["clean"]), 3),
                    "psnr": round(psnr(load_image(result.output_path).image, item["clean"]), 3),
                    "tool_calls": result.trace.get("tool_calls", 0),
                }
            )
    return {"candidates": candidates, "runs": runs}


def _groups(candidates: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for candidate in candidates:
        groups[(candidate["item"], candidate["step"])].append(candidate)
    return groups


def fit_linear(rows: list[dict[str, Any]], ridge: float) -> dict[str, Any]:
    """Ridge regression of ``gain`` on the features; coefficients on the raw (unstandardised) features."""
    x = np.array([[row["features"].get(name, 0.0) for name in STEP_FEATURES] for row in rows], dtype=np.float64)
    y = np.array([row["gain"] for row in rows], dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (x - mean) / scale
    coef = np.linalg.solve(z.T @ z + ridge * len(rows) * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    weights = coef / scale
    intercept = float(y.mean() - weights @ mean)
    return {
        "intercept": round(intercept, 5),
        "weights": {name: round(float(w), 5) for name, w in zip(STEP_FEATURES, weights, strict=True) if abs(w) > 1e-7},
    }


def fit_models(candidates: list[dict[str, Any]], ridge: float) -> dict[str, Any]:
    """Per-target models (where enough steps had a choice) and a pooled fallback."""
    by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
    choices: dict[str, int] = defaultdict(int)
    for group in _groups(candidates).values():
        by_target[group[0]["target"]].extend(group)
        choices[group[0]["target"]] += len(group) > 1
    models = {target: fit_linear(rows, ridge) for target, rows in by_target.items() if choices[target] >= MIN_GROUPS}
    return {"by_target": models, "fallback": fit_linear(candidates, ridge)}


def cross_validate(candidates: list[dict[str, Any]], ridge: float, folds: int = 4) -> dict[str, Any]:
    """Held-out ranking quality: mixtures split into folds, models fitted on the others.

    Per step with a choice, the true gain of the candidate each rule picks: the learned model, the
    verifier's score, the first accepted (greedy) and the best (reference); summed over steps (dB).
    """
    items = sorted({c["item"] for c in candidates})
    fold_of = {item: i % folds for i, item in enumerate(items)}
    totals: dict[str, float] = defaultdict(float)
    per_target: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    steps = 0
    for fold in range(folds):
        train = [c for c in candidates if fold_of[c["item"]] != fold]
        if not train:
            continue
        score = StepScore(kind="learned", **fit_models(train, ridge))
        for group in _groups([c for c in candidates if fold_of[c["item"]] == fold]).values():
            if len(group) < 2:
                continue
            steps += 1
            model = score.model_for(Degradation(group[0]["target"]))
            assert model is not None  # a learned score always has its pooled fallback
            picks = {
                "learned": max(group, key=lambda c: model.predict(c["features"])),
                "verifier": max(group, key=lambda c: c["verifier_score"]),
                "greedy": min(group, key=lambda c: c["order"]),
                "reference": max(group, key=lambda c: c["gain"]),
            }
            for rule, pick in picks.items():
                totals[rule] += pick["gain"]
                per_target[group[0]["target"]][rule] += pick["gain"]
            per_target[group[0]["target"]]["steps"] += 1
    return {"steps": steps, "totals": dict(totals), "per_target": {t: dict(v) for t, v in per_target.items()}}


def _policy_file(name: str) -> Path:
    """The YAML file of a shipped policy name or a policy path."""
    from importlib import resources

    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    return Path(str(resources.files("policies").joinpath(f"{name}.yaml")))


def write_policy(base_name: str, models: dict[str, Any], k: int, note: str, out: Path, header: list[str]) -> Path:
    """The base policy with ``strategy: best_of_k`` and the learned score, as YAML keeping the base's header."""
    from agent.planning.explore_order import write_policy_file
    from policies import load_policy

    kept = []  # the base file's provenance header, without an earlier run of this script's lines
    for line in _policy_file(base_name).read_text().splitlines():
        if not line.startswith("#") or "agent.planning.learn_score" in line:
            break
        kept.append(line)
    data = load_policy(base_name).model_dump(mode="json", exclude_none=True)
    data["name"] = out.stem
    data["strategy"] = {
        **data["strategy"],
        "name": "best_of_k",
        "k": k,
        "score": {"kind": "learned", **models, "note": note},
    }
    return write_policy_file(data, out, [*kept, *(f"# {line}" for line in header)])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--policy", default="learned", help="policy explored; its candidates and order are kept")
    parser.add_argument("--per-combo", type=int, default=4, help="calibration images per MiO100 combination")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--attempts", type=int, default=8, help="attempts explored per step")
    parser.add_argument("--k", type=int, default=3, help="best_of_k's k in the written policy")
    parser.add_argument("--ridge", type=float, default=0.05, help="ridge penalty (per sample, standardised features)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N mixtures (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="policy YAML to write")
    parser.add_argument("--record", type=Path, default=None, help="JSON of every candidate (default: next to --out)")
    parser.add_argument("--reuse", action="store_true", help="refit from an existing --record made with these settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    record_path = args.record or args.out.with_name(args.out.stem + "_candidates.json")
    settings = {
        "policy": args.policy,
        "per_combo": args.per_combo,
        "seed": args.seed,
        "attempts": args.attempts,
        "limit": args.limit,
    }
    if args.reuse and record_path.is_file():
        data = json.loads(record_path.read_text())
        if data.get("settings") != settings:
            print(f"error: {record_path} was made with {data.get('settings')}, not {settings}", file=sys.stderr)
            return 2
    else:
        if not (args.shared / "data" / "clean").is_dir():
            print(f"error: {args.shared}/data/clean not found; pass --shared", file=sys.stderr)
            return 2
        collected = collect(args.shared, args.policy, args.per_combo, args.seed, args.attempts, args.limit)
        data = {"settings": settings, **collected}
        record_path.write_text(json.dumps(data))
    candidates, runs = data["candidates"], data["runs"]
    if not candidates:
        print("error: no step had a verified candidate; nothing to learn from", file=sys.stderr)
        return 1
    validation = cross_validate(candidates, args.ridge)
    models = fit_models(candidates, args.ridge)
    totals, steps = validation["totals"], max(validation["steps"], 1)
    summary = [
        f"Generated by: python -m agent.planning.learn_score --policy {args.policy} --per-combo {args.per_combo} "
        f"--seed {args.seed} --attempts {args.attempts} --k {args.k} --ridge {args.ridge}",
        f"Score: {len(runs)} calibration mixtures (BSD100), {len(candidates)} verified candidates, "
        f"{validation['steps']} steps with a choice.",
        "Held-out (4 folds by mixture) mean true PSNR-Y gain per step with a choice of the candidate picked by: "
        + ", ".join(f"{rule} {totals.get(rule, 0.0) / steps:+.3f} dB" for rule in RULES),
        f"Reference-guided best-of-all on the calibration mixtures: {np.mean([r['psnr'] for r in runs]):.2f} dB "
        f"(input {np.mean([r['psnr_input'] for r in runs]):.2f} dB).",
    ]
    for target, figures in sorted(validation["per_target"].items()):
        n = max(figures.get("steps", 0), 1)
        summary.append(
            f"  {target} ({int(figures.get('steps', 0))} steps): "
            + ", ".join(f"{rule} {figures.get(rule, 0.0) / n:+.3f}" for rule in RULES)
        )
    note = " ".join(summary[1:3])
    path = write_policy(args.policy, models, args.k, note, args.out, summary)
    print("\n".join(summary))
    print(f"\nwrote {path} and {record_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
