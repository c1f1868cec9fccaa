"""Benchmark the agent on AgenticIR's 16 MiO100 combinations over clean evaluation images.

    python -m evals.bench_agent [--shared ../shared] [--policy default] [--per-combo 3] [--out bench-out]

Builds the synthetic set (one clean image per degraded image, crops of at most 512x512 from the
evaluation split: LIVE1, McMaster and Set14 photos; the calibration images are never used),
runs the agent on each, and prints PSNR/SSIM on Y of input and output per combination and
group, the share of images improved, the worst change, the median wall time per image
(and per 512x512-equivalent), and the share of time outside tools, perception and verification.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def build_set(shared: Path, per_combo: int, seed: int, split_name: str = "evaluation") -> list[dict[str, Any]]:
    """The degraded images: ``per_combo`` distinct clean crops for each MiO100 combination.

    ``split_name`` picks the clean images: ``"evaluation"`` (LIVE1, McMaster, Set14; the benchmark) or
    ``"calibration"`` (BSD100; for learning priors and thresholds).
    """
    from evals.synthesis import MIO100_COMBINATIONS, clean_split, load_clean_images, synthesize

    split = clean_split(shared)
    images = load_clean_images(split[split_name], crop=512, seed=seed)
    needed = per_combo * len(MIO100_COMBINATIONS)
    if len(images) < needed:
        raise SystemExit(f"need {needed} clean evaluation images, found {len(images)} under {shared}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))[:needed]
    items = []
    for k, (combo, degradations) in enumerate(MIO100_COMBINATIONS.items()):
        for j in range(per_combo):
            name, clean = images[int(order[k * per_combo + j])]
            synth = synthesize(clean, list(degradations), seed=seed * 1000 + k * 10 + j, preset="mio100")
            items.append(
                {
                    "index": k * per_combo + j,
                    "combo": combo,
                    "name": name,
                    "clean": clean,
                    "degraded": synth.image,
                    "applied": [(d.value, p) for d, p in synth.applied],
                }
            )
    return items


def select_combos(keys: list[str]) -> set[str]:
    """The MiO100 combinations named by ``keys``.

    A key is a combination (``"A2"``) or a degradation name, which selects every combination holding it.

    Raises:
        ValueError: for a key that is neither.
    """
    from agent.degradations import parse_degradation
    from evals.synthesis import MIO100_COMBINATIONS

    chosen: set[str] = set()
    for key in keys:
        if key.upper() in MIO100_COMBINATIONS:
            chosen.add(key.upper())
            continue
        try:
            kind = parse_degradation(key)
        except ValueError:
            raise ValueError(
                f"{key!r} is neither a MiO100 combination ({', '.join(MIO100_COMBINATIONS)}) nor a degradation name"
            ) from None
        chosen |= {combo for combo, kinds in MIO100_COMBINATIONS.items() if kind in kinds}
    return chosen


def _results(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run)
    return json.loads((path / "results.json" if path.is_dir() else path).read_text())


def compare_results(runs_a: list[str | Path], runs_b: list[str | Path], tie: float = 0.01) -> dict[str, Any]:
    """Paired comparison of benchmark runs: B against A, image by image, pooled over the pairs of runs.

    ``runs_a[i]`` and ``runs_b[i]`` (``results.json`` files or the folders holding them) must be the same
    images (same seed, split and per-combo); images are matched by name within each pair. One side may be a
    ``--combos`` subset of the other: the images of the smaller run are compared.

    Returns:
        ``n``, the mean output PSNR gain of each side over the inputs, the mean and extremes of the
        per-image difference B - A, how many images B made better / worse by more than ``tie`` dB, the
        Wilcoxon signed-rank p-value of the differences, each side's mean tool calls and median wall time, and
        ``out_of_time``: the changed images whose run, on either side, stopped at the policy's time budget
        (``out_of_time`` in the rows; a load-dependent stop, not a decision of the policies compared).
    """
    from scipy.stats import wilcoxon

    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError("give as many runs to compare against as runs to compare (paired by position)")
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for run_a, run_b in zip(runs_a, runs_b, strict=True):
        rows_a, rows_b = _results(run_a), _results(run_b)
        by_stem_a = {row["stem"]: row for row in rows_a}
        by_stem_b = {row["stem"]: row for row in rows_b}
        if len(rows_a) <= len(rows_b):
            smaller, larger, larger_run = rows_a, by_stem_b, run_b
        else:
            smaller, larger, larger_run = rows_b, by_stem_a, run_a
        for row in smaller:
            key = row["stem"]
            if key not in larger:
                raise ValueError(f"{larger_run} has no image {row['stem']}: the runs were made on different sets")
            if abs(row["psnr_in"] - larger[key]["psnr_in"]) > 1e-6:
                raise ValueError(f"{row['stem']} differs between {run_a} and {run_b}: not the same degraded image")
            pairs.append((by_stem_a[key], by_stem_b[key]))
    diff = np.array([b["psnr_out"] - a["psnr_out"] for a, b in pairs])
    changed = np.abs(diff) > tie
    p_value = float(wilcoxon(diff[changed]).pvalue) if changed.sum() >= 2 else 1.0

    def side(rows: list[dict[str, Any]]) -> dict[str, float]:
        return {
            "gain": float(np.mean([r["psnr_out"] - r["psnr_in"] for r in rows])),
            "tool_calls": float(np.mean([r["tool_calls"] for r in rows])),
            "median_wall": float(np.median([r["wall"] for r in rows])),
        }

    return {
        "n": len(pairs),
        "a": side([a for a, _ in pairs]),
        "b": side([b for _, b in pairs]),
        "mean_difference": float(diff.mean()),
        "better": int((diff > tie).sum()),
        "worse": int((diff < -tie).sum()),
        "largest_gain": float(diff.max()),
        "largest_loss": float(diff.min()),
        "p_value": p_value,
        "out_of_time": [
            a["stem"]
            for (a, b), moved in zip(pairs, changed, strict=True)
            if moved and (a.get("out_of_time") or b.get("out_of_time"))
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    parser.add_argument("--policy", default="default")
    parser.add_argument("--per-combo", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--out", default="bench-out")
    parser.add_argument(
        "--strategy", choices=("greedy", "best_of_k", "tree"), default=None, help="override the policy's strategy"
    )
    parser.add_argument(
        "--split",
        choices=("evaluation", "calibration"),
        default="evaluation",
        help="clean images: the benchmark's evaluation split, or the calibration split for tuning decisions",
    )
    parser.add_argument("--k", type=int, default=None, help="override best_of_k's k")
    parser.add_argument("--attempts", type=int, default=None, help="override the policy's max_attempts_per_step")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="override the policy's time_budget_s (its stop depends on the machine's load, e.g. parallel runs)",
    )
    parser.add_argument(
        "--reference-score",
        action="store_true",
        help="diagnostic upper bound: best-of-k ranks candidates by their true PSNR gain (uses the clean image)",
    )
    parser.add_argument(
        "--assessor", default=None, help="estimators | saclip[:<folder>] | hybrid[:<folder>] (default: the agent's)"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (smoke test)")
    parser.add_argument(
        "--combos",
        nargs="+",
        default=None,
        metavar="KEY",
        help="only these combinations (e.g. A2 B1) or those holding these degradations (e.g. motion_blur)",
    )
    parser.add_argument("--report", default=None, help="only print the tables of an earlier results.json")
    parser.add_argument("--compare", nargs="+", default=None, metavar="RUN", help="runs A (results.json or folders)")
    parser.add_argument("--against", nargs="+", default=None, metavar="RUN", help="runs B, paired with --compare")
    args = parser.parse_args(argv)
    if args.time_budget is not None and args.time_budget <= 0:
        print("error: --time-budget must be positive (seconds)", file=sys.stderr)
        return 2
    if args.compare or args.against:
        try:
            comparison = compare_results(args.compare or [], args.against or [])
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        a, b = comparison["a"], comparison["b"]
        print(f"images                : {comparison['n']}")
        print(
            f"A gain / tool calls   : {a['gain']:+.2f} dB, {a['tool_calls']:.1f} calls, {a['median_wall']:.2f} s median"
        )
        print(
            f"B gain / tool calls   : {b['gain']:+.2f} dB, {b['tool_calls']:.1f} calls, {b['median_wall']:.2f} s median"
        )
        print(
            f"B - A                 : {comparison['mean_difference']:+.3f} dB mean, {comparison['better']} better, "
            f"{comparison['worse']} worse (> 0.01 dB), "
            f"from {comparison['largest_loss']:+.2f} to {comparison['largest_gain']:+.2f}"
        )
        print(f"Wilcoxon signed-rank  : p = {comparison['p_value']:.3g}")
        if comparison["out_of_time"]:
            print(
                f"time budget hit       : {len(comparison['out_of_time'])} changed image(s) stopped at the policy's "
                f"time budget in one run ({', '.join(comparison['out_of_time'])}); rerun on an idle machine or with "
                "--time-budget"
            )
        print(json.dumps(comparison))
        return 0
    if args.report:
        print_report(json.loads(Path(args.report).read_text()), args.policy)
        return 0

    from tqdm import tqdm

    from agent.context import RunContext
    from agent.imageio import load_image, save_image
    from agent.runner import restore_image
    from evals.metrics import psnr, ssim

    shared = Path(args.shared)
    if not (shared / "data" / "clean").is_dir():
        print(f"error: {shared}/data/clean not found; pass --shared", file=sys.stderr)
        return 2
    items = build_set(shared, args.per_combo, args.seed, split_name=args.split)
    if args.combos:
        try:
            wanted = select_combos(args.combos)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        items = [item for item in items if item["combo"] in wanted]
    items = items[: args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from policies import load_policy

    policy = load_policy(args.policy)
    if args.strategy or args.k:
        update = {"name": args.strategy or policy.strategy.name, "k": args.k or policy.strategy.k}
        policy = policy.model_copy(update={"strategy": policy.strategy.model_copy(update=update)})
    if args.attempts:
        from agent.planning.learn_score import with_attempts

        policy = with_attempts(policy, args.attempts)
    if args.time_budget is not None:
        from agent.planning.explore_order import with_time_budget

        policy = with_time_budget(policy, args.time_budget)
    if args.reference_score and policy.strategy.name != "best_of_k":
        print("error: --reference-score ranks best-of-k candidates; add --strategy best_of_k", file=sys.stderr)
        return 2
    current: dict[str, np.ndarray] = {}

    def reference_gain(*, target, before_image, after_image, features, record) -> float:
        return psnr(after_image, current["clean"]) - psnr(before_image, current["clean"])

    assessor = None
    if args.assessor:
        from agent.perception.cli_commands import make_assessor

        assessor = make_assessor(args.assessor)
    context = RunContext(policy=policy, assessor=assessor, step_scorer=reference_gain if args.reference_score else None)
    # load the metrics before timing (NIQE needs at least two of its 96-px blocks per side)
    context.iqa.score(np.random.default_rng(0).random((192, 192, 3), dtype=np.float32))
    rows = []
    for item in tqdm(items, desc="benchmark", unit="img", file=sys.stderr):
        stem = f"{item['index']:03d}_{item['combo']}_{Path(item['name']).stem}"  # the same in --combos subsets
        current["clean"] = item["clean"]
        input_path = out / "inputs" / f"{stem}.png"
        save_image(item["degraded"], input_path)
        start = time.perf_counter()
        result = restore_image(input_path, out / "runs" / stem, context, output_path=out / "outputs" / f"{stem}.png")
        wall = time.perf_counter() - start
        assert result.output_path is not None, f"no output for {stem}: {result.reason}"
        restored = load_image(result.output_path).image
        degraded = load_image(input_path).image
        clean = item["clean"]
        # Oracle diagnostics (not seen by the agent): PSNR of every attempt against the clean image.
        attempt_psnr = [
            (a.get("tool"), a.get("decision"), round(psnr(np.load(a["artifact"]), clean), 2))
            for a in result.trace.get("attempts", [])
            if a.get("artifact")
        ]
        timings = result.trace.get("timings", {})
        work = sum(timings.get(k, 0.0) for k in ("tools", "perception", "verification"))
        rows.append(
            {
                "stem": stem,
                "combo": item["combo"],
                "group": item["combo"][0],
                "applied": item["applied"],
                "psnr_in": psnr(degraded, clean),
                "psnr_out": psnr(restored, clean),
                "ssim_in": ssim(degraded, clean),
                "ssim_out": ssim(restored, clean),
                "pixels": int(clean.shape[0] * clean.shape[1]),
                "wall": wall,
                "work": work,
                "io": timings.get("io", 0.0),
                "steps": [s["tool"] for s in result.trace.get("accepted", [])],
                "kept": result.kept,
                "tool_calls": result.trace.get("tool_calls", 0),
                "attempt_psnr": attempt_psnr,
                "out_of_time": any(a.get("stopped_by") == "time_budget" for a in result.trace.get("attempts", [])),
            }
        )
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    label = f"{policy.name} (strategy {policy.strategy.name}"
    if policy.strategy.name == "best_of_k":
        score = "reference PSNR" if args.reference_score else policy.strategy.score.kind
        label += f", k={policy.strategy.k}, score: {score}"
    print_report(rows, label + ")")
    return 0


def print_report(rows: list[dict[str, Any]], policy: str) -> None:
    """Print per-combination and per-group tables and the acceptance figures."""

    def line(label: str, sel: list[dict[str, Any]]) -> str:
        pi = np.mean([r["psnr_in"] for r in sel])
        po = np.mean([r["psnr_out"] for r in sel])
        si = np.mean([r["ssim_in"] for r in sel])
        so = np.mean([r["ssim_out"] for r in sel])
        return f"{label:<34} {len(sel):>3} {pi:7.2f} {po:7.2f} {po - pi:+6.2f} {si:6.3f} {so:6.3f}"

    from evals.synthesis import MIO100_COMBINATIONS

    print(f"\npolicy: {policy}")
    print(f"{'combination':<34} {'n':>3} {'PSNR_in':>7} {'PSNR_out':>7} {'gain':>6} {'SSIMin':>6} {'SSIMout':>6}")
    for combo, degs in MIO100_COMBINATIONS.items():
        sel = [r for r in rows if r["combo"] == combo]
        if sel:
            print(line(f"{combo} {'+'.join(str(d) for d in degs)}", sel))
    for group in "ABC":
        sel = [r for r in rows if r["group"] == group]
        if sel:
            print(line(f"group {group}", sel))
    print(line("all", rows))
    deltas = np.array([r["psnr_out"] - r["psnr_in"] for r in rows])
    improved = float(np.mean(deltas > 0.01))
    walls = [r["wall"] for r in rows]
    norm = [r["wall"] * 512 * 512 / r["pixels"] for r in rows]
    overhead = [(r["wall"] - r["work"]) / r["wall"] for r in rows if r["wall"] > 0]
    machinery = [(r["wall"] - r["work"] - r.get("io", 0.0)) / r["wall"] for r in rows if r["wall"] > 0]
    print(f"\nmean PSNR gain        : {deltas.mean():+.2f} dB (target >= +2.0)")
    print(f"images improved       : {improved:.1%} (target >= 85 %)")
    print(f"worst change          : {deltas.min():+.2f} dB (target >= -0.3)")
    print(f"images worse > 0.3 dB : {int(np.sum(deltas < -0.3))}")
    print(f"input returned        : {sum(r['kept'] == 'input' for r in rows)} of {len(rows)}")
    print(
        f"median wall per image : {statistics.median(walls):.2f} s "
        f"({statistics.median(norm):.2f} s per 512x512-equivalent; target <= 3 s)"
    )
    print(f"graph/ckpt/io share   : {statistics.median(overhead):.1%} median (target < 10 %)")
    print(f"  without image I/O   : {statistics.median(machinery):.1%} median (graph, checkpoints, trace)")
    print(f"mean tool calls       : {np.mean([r['tool_calls'] for r in rows]):.1f}")


if __name__ == "__main__":
    sys.exit(main())
