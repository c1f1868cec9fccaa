"""Learn the planner's pairwise order prior from exploration (AgenticIR's "experience", measured).

    python -m agent.planning.explore_order [--per-combo 4] [--seed 11] [--out policies/learned.yaml]

For synthetic MiO100 mixtures made from the *calibration* images (BSD100; the benchmark's evaluation
images are never used), the agent restores every image once for every ordering of its true
degradations (that ordering placed first in the policy's order prior, the rest unchanged) and the
result is scored against the clean image (PSNR on Y). For every pair of degradations (a, b) met in a
mixture, the mean PSNR of the orderings that undo ``a`` before ``b`` is compared with those that undo
``b`` first; the mean margin over all mixtures becomes ``order_pairwise[a][b]`` (dB) when it is at
least ``--min-margin`` and the winning side won most mixtures. Which tool was accepted for which
degradation is counted too. The result is written as a complete policy (the base policy plus the
learned prior) and a JSON record of every run, so the prior is data, reproducible by one command.

The second phase (``--phases tools``) explores which tools succeed: for every true degradation of a
mixture and every option for it (each tool and strength of the policy's candidate list, plus every other
catalogue tool that restores it and can run here, e.g. a learned restorer), the agent restores the
mixture with that option tried first. An option's score for a degradation is its mean PSNR margin over
the mean of all options on the same mixture; an option goes ahead of the policy's first choice only
when it beat it by at least ``--min-margin`` dB on average and on most mixtures (all options stay, as
fallbacks when the verifier rejects the first).

The third phase (``thresholds``) reruns the mixtures with one degradation's presence threshold moved to
each value of a grid (only those whose run saw a probability of that degradation between the two
thresholds: the others cannot change); the fourth (``tolerances``) does the same for the verifier's no-reference quality
tolerance per step target, rerunning only the mixtures whose run attempted a step for that target (the
others cannot change). A value is taken when it raised the mean PSNR over all mixtures by at least
``--min-margin`` dB, improved at least ``--min-improved`` mixtures (3: one lucky mixture is no evidence) and
at least as many as it worsened. ``--workers N`` runs the
agent in N forked processes in every phase.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.degradations import Degradation

logger = logging.getLogger(__name__)

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "policies" / "learned.yaml"


def ordering_policy(policy: Any, first: list[Degradation]) -> Any:
    """A copy of ``policy`` whose order prior starts with ``first`` (the others keep their order)."""
    rest = [d for d in policy.order_prior if d not in first]
    return policy.model_copy(update={"order_prior": [*first, *rest], "order_pairwise": {}})


def option_key(candidate: Any) -> str:
    """A stable name for one candidate option: ``tool@strength`` plus its fixed parameters."""
    params = ",".join(f"{k}={v}" for k, v in sorted(candidate.params.items()))
    return f"{candidate.tool}@{candidate.strengths[0]:g}" + (f"[{params}]" if params else "")


def candidate_options(policy: Any, registry: Any, degradation: Degradation) -> list[Any]:
    """Every option worth exploring for ``degradation``, one strength each, the policy's own first.

    The policy's candidates are split into one option per strength; then every other catalogue tool
    that declares it restores ``degradation`` joins at strength 1.0, unless it is generative, a
    correction step, or lacks what it needs to run here (:meth:`tools.base.Tool.missing`, e.g. trained weights).
    """
    from policies.schema import Candidate

    options = [
        Candidate(tool=c.tool, params=dict(c.params), strengths=[strength])
        for c in policy.candidates.get(degradation, [])
        for strength in c.strengths
    ]
    listed = {c.tool for c in options}
    for spec in registry.for_degradation(degradation):
        if spec.name in listed or spec.generative or spec.family == "correction":
            continue
        if registry.get(spec.name).missing():
            continue
        options.append(Candidate(tool=spec.name, strengths=[1.0]))
    unique: dict[str, Any] = {}
    for option in options:
        unique.setdefault(option_key(option), option)
    return list(unique.values())


def option_first_policy(policy: Any, degradation: Degradation, option: Any, options: list[Any]) -> Any:
    """A copy of ``policy`` that tries ``option`` first for ``degradation``, the other options after it."""
    rest = [o for o in options if option_key(o) != option_key(option)]
    candidates = {**policy.candidates, degradation: [option, *rest]}
    return policy.model_copy(update={"candidates": candidates})


def option_scores(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per degradation, option and mixture, the PSNR margin over the mean of all options on that mixture.

    Args:
        runs: records with ``item``, ``degradation``, ``option`` and ``psnr``.

    Returns:
        ``{degradation: {option: {mixture: margin}}}``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["item"], run["degradation"])].append(run)
    scores: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for (item, degradation), group in groups.items():
        if len(group) < 2:
            continue
        mean = float(np.mean([r["psnr"] for r in group]))
        for run in group:
            scores[degradation][run["option"]][item] = run["psnr"] - mean
    return {d: dict(per_option) for d, per_option in scores.items()}


def decisive(margins: list[float], min_margin: float, min_share: float, tie: float = 0.0) -> bool:
    """Whether per-mixture margins favour one side: mean >= ``min_margin`` and above ``tie`` on ``min_share``."""
    return bool(margins) and bool(np.mean(margins) >= min_margin and np.mean([m > tie for m in margins]) >= min_share)


def _promoted(
    per_option: dict[str, dict[str, float]], incumbent: str, items: set[str], min_margin: float, min_share: float
) -> dict[str, float]:
    """Options that beat ``incumbent`` on ``items`` by ``min_margin`` dB on average and on ``min_share`` of them."""
    margins: dict[str, float] = {}
    if incumbent not in per_option:
        return margins
    for key, per_item in per_option.items():
        if key == incumbent:
            continue
        diffs = [v - per_option[incumbent][m] for m, v in per_item.items() if m in items and m in per_option[incumbent]]
        if decisive(diffs, min_margin, min_share, tie=0.01):
            margins[key] = float(np.mean(diffs))
    return margins


def learn_candidates(
    policy: Any,
    registry: Any,
    scores: dict[str, dict[str, dict[str, float]]],
    min_margin: float = 0.05,
    min_share: float = 0.6,
    severities: dict[str, dict[str, float]] | None = None,
) -> dict[Degradation, list[Any]]:
    """Candidate lists where the evidence says so: options that beat the policy's first choice go first.

    An option is promoted ahead of the policy's first option when, on the mixtures where both ran, it
    was better by at least ``min_margin`` dB on average and better in at least ``min_share`` of them
    (the order prior's rule); promoted options are sorted by that margin, everything else keeps the
    policy's order (a small, noisy difference never overrides a choice made on dedicated evaluations).
    With ``severities`` (``{degradation: {mixture: assessed severity}}``) the same rule is also applied
    to the mixtures below and above the median severity: a band's winner, when it is not the overall
    first choice, goes first with ``min_severity``/``max_severity`` set to that band (a learned denoiser
    may win on heavy noise and lose on light noise). Consecutive options of one tool with the same
    fixed parameters are merged back into one candidate with several strengths.
    """
    from policies.schema import Candidate

    learned: dict[Degradation, list[Any]] = {}
    for degradation, per_option in scores.items():
        d = Degradation(degradation)
        options = {option_key(o): o for o in candidate_options(policy, registry, d)}
        per_option = {k: v for k, v in per_option.items() if k in options}
        incumbent = next(iter(options))
        all_items = {m for per_item in per_option.values() for m in per_item}
        margins = _promoted(per_option, incumbent, all_items, min_margin, min_share)
        ranked = sorted(margins, key=lambda key: -margins[key]) + [k for k in options if k not in margins]
        merged: list[Any] = []
        for key in ranked:
            option = options[key]
            last = merged[-1] if merged else None
            if last is not None and last.tool == option.tool and last.params == option.params:
                merged[-1] = Candidate(
                    tool=last.tool, params=last.params, strengths=[*last.strengths, *option.strengths]
                )
            else:
                merged.append(option)
        banded: list[Any] = []
        severity = (severities or {}).get(degradation, {})
        if len(severity) >= 4:
            cut = round(float(np.median(list(severity.values()))), 2)
            for low, high in ((0.0, cut), (cut, 1.0)):
                items = {m for m, v in severity.items() if (v <= cut if high == cut else v > cut)}
                band = _promoted(per_option, incumbent, items, min_margin, min_share)
                if band:
                    best = max(band, key=lambda key: band[key])
                    if best != ranked[0]:
                        banded.append(options[best].model_copy(update={"min_severity": low, "max_severity": high}))
        learned[d] = banded + merged
    return learned


def pairwise_margins(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """Per mixture and pair (a, b): mean PSNR of orders with a before b minus those with b before a.

    Args:
        runs: records with ``item`` (mixture id), ``order`` (list of degradation names) and ``psnr``.

    Returns:
        ``{(a, b): [margin per mixture]}`` for every pair with ``a < b`` alphabetically.
    """
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_item[run["item"]].append(run)
    margins: dict[tuple[str, str], list[float]] = defaultdict(list)
    for item_runs in by_item.values():
        names = sorted(set(item_runs[0]["order"]))
        for a, b in itertools.combinations(names, 2):
            first = [r["psnr"] for r in item_runs if r["order"].index(a) < r["order"].index(b)]
            second = [r["psnr"] for r in item_runs if r["order"].index(b) < r["order"].index(a)]
            if first and second:
                margins[(a, b)].append(float(np.mean(first) - np.mean(second)))
    return margins


def learn_prior(
    margins: dict[tuple[str, str], list[float]], min_margin: float = 0.05, min_share: float = 0.6
) -> dict[str, dict[str, float]]:
    """Turn per-mixture margins into ``order_pairwise``: keep pairs with a consistent, large enough margin.

    A pair enters the prior when the mean margin is at least ``min_margin`` dB and the winning order won
    at least ``min_share`` of the mixtures in which the pair met.
    """
    prior: dict[str, dict[str, float]] = defaultdict(dict)
    for (a, b), values in sorted(margins.items()):
        mean = float(np.mean(values))
        first, second = (a, b) if mean > 0 else (b, a)
        if decisive([v if mean > 0 else -v for v in values], min_margin, min_share):
            prior[first][second] = round(abs(mean), 3)
    return dict(prior)


#: Seconds that replace every explored policy's ``budgets.time_budget_s`` (``--time-budget``; None keeps it).
#: The budget stops a run before its next step, so on a loaded machine it would decide runs by load.
TIME_BUDGET_OVERRIDE: float | None = None


def with_time_budget(policy: Any, seconds: float | None) -> Any:
    """A copy of ``policy`` whose time budget is ``seconds`` (``policy`` itself when ``seconds`` is None)."""
    if seconds is None:
        return policy
    return policy.model_copy(update={"budgets": policy.budgets.model_copy(update={"time_budget_s": seconds})})


def _restore_jobs(jobs: list[tuple[int, dict[str, Any], Any, Any]], desc: str) -> list[tuple[dict[str, Any], Any]]:
    """Restore each job's mixture with its policy and score the output against the clean image.

    Args:
        jobs: ``(index, item, key, make_policy)``: the mixture's index and record from
            :func:`evals.bench_agent.build_set`, a hashable key naming the policy variant (one
            :class:`RunContext` per key) and a callable that builds that policy.
        desc: progress-bar label.

    Returns:
        Per job, the record fields every exploration keeps (mixture id, combination, PSNR of the
        input and the output, accepted steps, tool calls) and the run's result.
    """
    from tqdm import tqdm

    from agent.context import RunContext
    from agent.imageio import load_image, save_image
    from agent.runner import restore_image
    from evals.metrics import psnr

    contexts: dict[Any, RunContext] = {}
    input_psnr: dict[int, float] = {}
    out = []
    with tempfile.TemporaryDirectory(prefix="restora-explore-") as tmp:
        work = Path(tmp)
        for index, item, key, make_policy in tqdm(jobs, desc=desc, unit="run", file=sys.stderr):
            if key not in contexts:
                contexts[key] = RunContext(policy=with_time_budget(make_policy(), TIME_BUDGET_OVERRIDE))
            input_path = work / f"{index:03d}.png"
            if index not in input_psnr:
                save_image(item["degraded"], input_path)
                input_psnr[index] = round(psnr(load_image(input_path).image, item["clean"]), 3)
            result = restore_image(input_path, work / "run", contexts[key], output_path=work / "out.png")
            assert result.output_path is not None
            restored = load_image(result.output_path).image
            record = {
                "item": f"{index:03d}_{item['combo']}_{Path(item['name']).stem}",
                "combo": item["combo"],
                "psnr": round(psnr(restored, item["clean"]), 3),
                "psnr_input": input_psnr[index],
                "accepted": [(s["target"], s["tool"]) for s in result.trace.get("accepted", [])],
                "attempted": sorted({a["target"] for a in result.trace.get("attempts", [])}),
                "tool_calls": result.trace.get("tool_calls", 0),
                "probabilities": observed_probabilities(result.trace),
            }
            out.append((record, result))
    return out


#: Presence thresholds tried per degradation by the threshold phase (besides the policy's own).
THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.4)


def _with_per_type_threshold(policy: Any, field: str, degradation: Degradation, value: float) -> Any:
    """A copy of ``policy`` whose per-type mapping ``thresholds.<field>`` sets ``degradation`` to ``value``."""
    per_type = {**getattr(policy.thresholds, field), degradation: value}
    return policy.model_copy(update={"thresholds": policy.thresholds.model_copy(update={field: per_type})})


def threshold_policy(policy: Any, degradation: Degradation, value: float) -> Any:
    """A copy of ``policy`` that plans (and verifies) ``degradation`` from presence probability ``value``."""
    return _with_per_type_threshold(policy, "presence_threshold_by_type", degradation, value)


def explore_thresholds(
    shared: Path,
    policy_name: str,
    per_combo: int,
    seed: int,
    limit: int | None = None,
    grid: tuple[float, ...] = THRESHOLD_GRID,
    workers: int = 1,
) -> list[dict]:
    """Run the agent once with the policy's thresholds, then per (degradation, other threshold value) where it matters.

    The agent is deterministic and compares a degradation's presence probability with its threshold only,
    so moving the threshold from ``t0`` to ``t1`` can change a run only if one of the probabilities it saw
    for that degradation (:func:`observed_probabilities`) lies between the two; only those mixtures are
    rerun, the others keep their run (margin 0 in :func:`threshold_margins`).
    """
    from evals.bench_agent import build_set
    from policies import load_policy

    base = load_policy(policy_name)
    items = build_set(shared, per_combo, seed, split_name="calibration")[:limit]
    return _variant_runs(
        items,
        functools.partial(_variant_policy, base),
        base.thresholds.presence_for,
        lambda record, degradation, current, value: threshold_matters(_seen(record, degradation), current, value),
        grid,
        "threshold",
        "explore thresholds",
        workers,
    )


def _variant_runs(
    items: list[dict[str, Any]],
    policy_for: Callable[[str, float | None], Any],
    current_value: Callable[[Degradation], float],
    rerun: Callable[[dict[str, Any], Degradation, float, float], bool],
    grid: tuple[float, ...],
    key: str,
    desc: str,
    workers: int,
) -> list[dict]:
    """The policy's own run of every mixture, then reruns with one degradation's setting moved to each grid value.

    Args:
        items: The mixtures (:func:`evals.bench_agent.build_set` records).
        policy_for: ``(degradation name, value)`` -> policy; ``("policy", None)`` is the policy itself.
        current_value: Degradation -> the policy's own value (grid values equal to it are skipped).
        rerun: ``(own run's record, degradation, current, value)`` -> whether that mixture can change.
        grid: The values tried.
        key: Record field holding the value (None for the policy's own runs).
        desc: Progress-bar label.
        workers: Agent processes.

    Returns:
        The own runs (``degradation`` "policy") followed by the reruns, each record naming its variant.
    """
    base_jobs = [
        (index, item, ("policy", None), functools.partial(policy_for, "policy", None))
        for index, item in enumerate(items)
    ]
    base_records = [record for record, _ in _restore_jobs_parallel(base_jobs, desc, workers)]
    jobs: list[tuple[int, dict[str, Any], Any, Any]] = []
    for degradation in Degradation:
        current = current_value(degradation)
        for value in grid:
            if abs(value - current) < 1e-9:
                continue
            make = functools.partial(policy_for, degradation.value, value)
            jobs += [
                (index, item, (degradation.value, value), make)
                for (index, item, _, _), record in zip(base_jobs, base_records, strict=True)
                if rerun(record, degradation, current, value)
            ]
    results = _restore_jobs_parallel(jobs, desc, workers)
    return [{**record, "degradation": "policy", key: None} for record in base_records] + [
        {**record, "degradation": job[2][0], key: job[2][1]} for job, (record, _) in zip(jobs, results, strict=True)
    ]


#: Probabilities this close to a threshold count as lying on either side of it (traces round them to 0.001).
ROUNDING_MARGIN = 0.001


def observed_probabilities(trace: dict[str, Any]) -> dict[str, list[float]]:
    """Every presence probability a run's decisions could compare with a threshold, per degradation.

    They are those of the input report, of the report after each attempt (accepted or not) and of the final
    report: everything the planner and the verifier read.
    """
    seen: dict[str, set[float]] = defaultdict(set)
    for report in (trace.get("input_report"), trace.get("final_report")):
        for name, estimate in ((report or {}).get("estimates") or {}).items():
            seen[name].add(round(float(estimate["probability"]), 3))
    for attempt in trace.get("attempts", []):
        for name, values in (attempt.get("report_after") or {}).items():
            seen[name].add(float(values[0]))
    return {name: sorted(values) for name, values in seen.items()}


def _seen(record: dict[str, Any], degradation: Degradation) -> list[float] | None:
    """The probabilities of ``degradation`` a run saw (none: never estimated); ``None`` if the record lacks them."""
    probabilities = record.get("probabilities")
    return None if probabilities is None else probabilities.get(degradation.value, [])


def threshold_matters(probabilities: list[float] | None, current: float, value: float) -> bool:
    """Whether a run that saw ``probabilities`` could change when a threshold moves from ``current`` to ``value``.

    ``None`` (a record without them) counts as mattering, so such a run is redone rather than assumed equal.
    """
    if probabilities is None:
        return True
    low, high = min(current, value) - ROUNDING_MARGIN, max(current, value) + ROUNDING_MARGIN
    return any(low <= p <= high for p in probabilities)


def _variant_policy(base: Any, name: str, value: float | None) -> Any:
    return base if value is None else threshold_policy(base, Degradation(name), value)


#: No-reference quality tolerances tried per step target by the tolerance phase (besides the policy's own).
TOLERANCE_GRID = (0.02, 0.05, 0.1, 0.2, 0.35)


def tolerance_policy(policy: Any, degradation: Degradation, value: float) -> Any:
    """A copy of ``policy`` whose verifier tolerates a ``value`` fall in NR-IQA for steps targeting ``degradation``."""
    return _with_per_type_threshold(policy, "iqa_tolerance_by_target", degradation, value)


def _tolerance_variant(base: Any, name: str, value: float | None) -> Any:
    return base if value is None else tolerance_policy(base, Degradation(name), value)


def explore_tolerances(
    shared: Path,
    policy_name: str,
    per_combo: int,
    seed: int,
    limit: int | None = None,
    grid: tuple[float, ...] = TOLERANCE_GRID,
    workers: int = 1,
) -> list[dict]:
    """Run the agent with the policy's verifier, then per (target, other NR-IQA tolerance) where it matters.

    A step target's tolerance only changes runs that attempted a step for that target, so each variant
    reruns just the mixtures whose run with the policy's own tolerances did; the others are unchanged
    (margin 0) by construction.
    """
    from evals.bench_agent import build_set
    from policies import load_policy

    base = load_policy(policy_name)
    items = build_set(shared, per_combo, seed, split_name="calibration")[:limit]
    return _variant_runs(
        items,
        functools.partial(_tolerance_variant, base),
        lambda degradation: base.thresholds.iqa_tolerance_by_target.get(degradation, base.thresholds.iqa_tolerance),
        lambda record, degradation, current, value: degradation.value in record["attempted"],
        grid,
        "tolerance",
        "explore tolerances",
        workers,
    )


def tolerance_margins(runs: list[dict[str, Any]]) -> dict[str, dict[float, dict[str, float]]]:
    """Per target and tolerance, the per-mixture PSNR margin over the policy's tolerances (0 where not rerun)."""
    return _variant_margins(runs, "tolerance")


def threshold_margins(runs: list[dict[str, Any]]) -> dict[str, dict[float, dict[str, float]]]:
    """Per degradation and threshold value, the per-mixture PSNR margin over the policy's thresholds (0: not rerun)."""
    return _variant_margins(runs, "threshold")


def _variant_margins(runs: list[dict[str, Any]], key: str) -> dict[str, dict[float, dict[str, float]]]:
    """Per degradation and value of ``run[key]``, each mixture's PSNR minus its run with ``key`` None.

    A mixture that was not rerun for a value (the value could not change it) counts with margin 0.
    """
    base = {r["item"]: r["psnr"] for r in runs if r[key] is None}
    margins: dict[str, dict[float, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        if run[key] is not None and run["item"] in base:
            margins[run["degradation"]][run[key]][run["item"]] = run["psnr"] - base[run["item"]]
    return {
        d: {value: {item: per_item.get(item, 0.0) for item in base} for value, per_item in per_value.items()}
        for d, per_value in margins.items()
    }


#: Fewest mixtures a threshold or tolerance value must improve to be learned (one lucky mixture is no evidence).
MIN_IMPROVED = 3


def learn_thresholds(
    margins: dict[str, dict[float, dict[str, float]]],
    min_margin: float = 0.05,
    tie: float = 0.01,
    min_improved: int = MIN_IMPROVED,
) -> dict[str, float]:
    """Per degradation, the threshold value that raised the mean PSNR most, where it did so decisively.

    A value is taken when its mean margin over the policy's threshold is at least ``min_margin`` dB, it
    improved at least ``min_improved`` mixtures by more than ``tie`` dB and, among the mixtures it changed,
    at least as many as it worsened (most mixtures are untouched by a threshold, so the share is counted
    over the changed ones).
    """
    learned: dict[str, float] = {}
    for degradation, per_value in sorted(margins.items()):
        best, best_mean = None, min_margin
        for value, per_item in sorted(per_value.items()):
            values = list(per_item.values())
            changed = [v for v in values if abs(v) > tie]
            mean = float(np.mean(values)) if values else 0.0
            improved = sum(v > 0 for v in changed)
            if changed and improved >= min_improved and mean >= best_mean and improved >= len(changed) / 2:
                best, best_mean = value, mean
        if best is not None:
            learned[degradation] = best
    return learned


def _run_chunk(index: int) -> list[tuple[dict[str, Any], Any]]:
    """Worker of :func:`_restore_jobs_parallel` (the jobs are inherited from the parent through fork)."""
    import torch

    torch.set_num_threads(1)
    return _restore_jobs(_FORKED_JOBS[index], f"worker {index}")


_FORKED_JOBS: list[list[tuple[int, dict[str, Any], Any, Any]]] = []


def _restore_jobs_parallel(
    jobs: list[tuple[int, dict[str, Any], Any, Any]], desc: str, workers: int
) -> list[tuple[dict[str, Any], Any]]:
    """:func:`_restore_jobs` over ``workers`` forked processes (POSIX), results in job order."""
    import multiprocessing as mp

    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        return _restore_jobs(jobs, desc)
    global _FORKED_JOBS
    _FORKED_JOBS = [jobs[i::workers] for i in range(workers)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_run_chunk, range(workers))
    _FORKED_JOBS = []
    ordered: list[tuple[dict[str, Any], Any]] = [None] * len(jobs)  # type: ignore[list-item]
    for i, part in enumerate(parts):
        ordered[i::workers] = part
    return ordered


def explore(
    shared: Path, policy_name: str, per_combo: int, seed: int, limit: int | None = None, workers: int = 1
) -> list[dict]:
    """Run the agent on every ordering of every mixture's degradations; return one record per run."""
    from evals.bench_agent import build_set
    from policies import load_policy

    base = load_policy(policy_name)
    items = build_set(shared, per_combo, seed, split_name="calibration")[:limit]
    jobs: list[tuple[int, dict[str, Any], Any, Any]] = []
    for index, item in enumerate(items):
        degradations = list(dict.fromkeys(Degradation(name) for name, _ in item["applied"]))
        for order in itertools.permutations(degradations):
            key = tuple(d.value for d in order)
            jobs.append((index, item, key, lambda order=list(order): ordering_policy(base, order)))
    return [
        {**record, "order": list(job[2])}
        for job, (record, _) in zip(jobs, _restore_jobs_parallel(jobs, "explore orders", workers), strict=True)
    ]


def explore_tools(
    shared: Path, policy_name: str, per_combo: int, seed: int, limit: int | None = None, workers: int = 1
) -> list[dict]:
    """Run the agent once per (mixture, true degradation, option) with that option tried first."""
    from evals.bench_agent import build_set
    from policies import load_policy
    from tools import default_registry

    base = load_policy(policy_name)
    registry = default_registry()
    items = build_set(shared, per_combo, seed, split_name="calibration")[:limit]
    jobs: list[tuple[int, dict[str, Any], Any, Any]] = []
    for index, item in enumerate(items):
        for degradation in dict.fromkeys(Degradation(name) for name, _ in item["applied"]):
            options = candidate_options(base, registry, degradation)
            if len(options) < 2:
                continue
            for option in options:
                key = (degradation.value, option_key(option))
                jobs.append(
                    (
                        index,
                        item,
                        key,
                        lambda d=degradation, o=option, opts=options: option_first_policy(base, d, o, opts),
                    )
                )
    runs = []
    for job, (record, result) in zip(jobs, _restore_jobs_parallel(jobs, "explore tools", workers), strict=True):
        degradation = job[2][0]
        estimate = result.trace.get("input_report", {}).get("estimates", {}).get(degradation, {})
        runs.append(
            {
                **record,
                "degradation": degradation,
                "severity": round(float(estimate.get("severity", 0.0)), 4),
                "option": job[2][1],
            }
        )
    return runs


#: The runs of each exploration phase in the ``--runs`` record, in the order :func:`headroom` reports them.
PHASE_KEYS = (
    ("orders", "runs"),
    ("tools", "tool_runs"),
    ("thresholds", "threshold_runs"),
    ("tolerances", "tolerance_runs"),
)


def _policy_runs(record: dict[str, Any], order_prior: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per mixture, the PSNR of the run with the policy's own settings, and of its run in the policy's order."""
    own: dict[str, float] = {}
    for key, field in (("threshold_runs", "threshold"), ("tolerance_runs", "tolerance")):
        own.update({r["item"]: r["psnr"] for r in record.get(key, []) if r.get(field) is None and r["item"] not in own})
    rank = {d: i for i, d in enumerate(order_prior)}
    in_order = {
        r["item"]: r["psnr"]
        for r in record.get("runs", [])
        if [rank.get(d, len(rank)) for d in r["order"]] == sorted(rank.get(d, len(rank)) for d in r["order"])
    }
    return own, in_order


def headroom(record: dict[str, Any], order_prior: list[str]) -> dict[str, dict[str, float]]:
    """How much any choice among the explored options could gain, with hindsight, per phase and in all.

    For every mixture, the best PSNR among a phase's runs (every ordering; every tool option tried first;
    every threshold or tolerance value) is compared with the policy's own run: for orders, the run in the
    policy's ``order_prior`` (MAIR's fixed order for the default policy); otherwise the run with the
    policy's settings. The mean of those per-mixture maxima is an upper bound no learned prior over the
    same options can pass, since a prior must choose before seeing the clean image.

    Returns:
        Per phase (and ``"all"``), ``mean`` and ``median`` hindsight gain (dB), the mixtures counted (``n``)
        and how many gain more than 0.05 and 0.5 dB.
    """
    own, in_order = _policy_runs(record, order_prior)
    best_all: dict[str, float] = {}
    result: dict[str, dict[str, float]] = {}
    for phase, key in PHASE_KEYS:
        runs = record.get(key, [])
        baseline = in_order if phase == "orders" else own
        best: dict[str, float] = {}
        for run in runs:
            best[run["item"]] = max(best.get(run["item"], -np.inf), run["psnr"])
            best_all[run["item"]] = max(best_all.get(run["item"], -np.inf), run["psnr"])
        gains = [best[item] - baseline[item] for item in best if item in baseline]
        if gains:
            result[phase] = _headroom_stats(gains)
    gains = [best_all[item] - own[item] for item in best_all if item in own]
    if gains:
        result["all"] = _headroom_stats(gains)
    return result


def _headroom_stats(gains: list[float]) -> dict[str, float]:
    values = np.asarray(gains, dtype=np.float64)
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "above_0.05": int((values > 0.05).sum()),
        "above_0.5": int((values > 0.5).sum()),
    }


def write_policy(
    base_name: str,
    prior: dict[str, dict[str, float]],
    out: Path,
    header: list[str],
    candidates: dict[Degradation, list[Any]] | None = None,
    thresholds: dict[str, float] | None = None,
    tolerances: dict[str, float] | None = None,
) -> Path:
    """Write the base policy with ``order_pairwise`` (and learned candidates, presence thresholds, tolerances) set.

    The result is YAML with a provenance header.
    """
    from policies import load_policy

    data = load_policy(base_name).model_dump(mode="json", exclude_none=True)
    data["name"] = out.stem
    data["description"] = (
        f"The {base_name} policy plus a pairwise order prior learned by exploring every ordering of synthetic "
        "mixtures"
        + (" and candidate tools ranked by exploring each one first" if candidates else "")
        + (" and presence thresholds chosen by exploring each value" if thresholds else "")
        + (" and verifier NR-IQA tolerances chosen by exploring each value" if tolerances else "")
        + " (python -m agent.planning.explore_order)."
    )
    data["order_pairwise"] = prior
    if candidates:
        data["candidates"] = {
            **data["candidates"],
            **{d.value: [c.model_dump(mode="json") for c in options] for d, options in candidates.items()},
        }
    if thresholds:
        data["thresholds"]["presence_threshold_by_type"] = {
            **data["thresholds"].get("presence_threshold_by_type", {}),
            **thresholds,
        }
    if tolerances:
        data["thresholds"]["iqa_tolerance_by_target"] = {
            **data["thresholds"].get("iqa_tolerance_by_target", {}),
            **tolerances,
        }
    for options in data["candidates"].values():  # leave the default severity range out: readable YAML
        for option in options:
            if option.get("min_severity") == 0.0:
                option.pop("min_severity")
            if option.get("max_severity") == 1.0:
                option.pop("max_severity")
    return write_policy_file(data, out, [f"# {line}" for line in header])


def grid_lines(margins: dict[str, dict[float, dict[str, float]]]) -> list[str]:
    """One provenance line per degradation: each explored value's mean margin and mixtures improved/worsened."""
    return [
        f"  {d}: "
        + ", ".join(
            f"{value:g} {np.mean(list(v.values())):+.2f} "
            f"({sum(x > 0.01 for x in v.values())}/{sum(x < -0.01 for x in v.values())})"
            for value, v in sorted(per_value.items())
        )
        for d, per_value in sorted(margins.items())
    ]


def write_policy_file(data: dict[str, Any], out: Path, comments: list[str]) -> Path:
    """Validate a policy mapping and write it atomically as YAML under ``comments`` (lines starting with ``#``)."""
    import yaml

    from policies import policy_from_mapping

    policy_from_mapping(data)  # refuse to write something that does not load
    text = "\n".join(comments) + "\n" + yaml.safe_dump(data, sort_keys=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".tmp")
    partial.write_text(text)
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--policy", default="default", help="base policy explored and extended")
    parser.add_argument("--per-combo", type=int, default=4, help="calibration images per MiO100 combination")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--limit", type=int, default=None, help="only the first N mixtures (smoke test)")
    parser.add_argument("--min-margin", type=float, default=0.05, help="least mean PSNR margin (dB) kept")
    parser.add_argument(
        "--min-improved",
        type=int,
        default=MIN_IMPROVED,
        help="fewest mixtures a threshold or tolerance value must improve to be learned",
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=("orders", "tools", "thresholds", "tolerances"),
        default=["orders", "tools", "thresholds", "tolerances"],
        help="what to explore",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes running the agent (POSIX fork)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="override the policy's time_budget_s in every run (its stop depends on the machine's load)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="policy YAML to write")
    parser.add_argument("--runs", type=Path, default=None, help="JSON record of every run (default: next to --out)")
    parser.add_argument(
        "--headroom",
        action="store_true",
        help="only print, from the --runs record, what the best explored option per mixture gains with hindsight",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take the runs of a phase from an existing --runs record made with the same settings instead of rerunning",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runs_path = args.runs or args.out.with_name(args.out.stem + "_exploration.json")
    if args.headroom:
        from policies import load_policy

        if not runs_path.is_file():
            print(f"error: no exploration record at {runs_path}; pass --runs", file=sys.stderr)
            return 2
        record = json.loads(runs_path.read_text())
        policy = load_policy(record.get("settings", {}).get("policy", args.policy))
        order_prior = [Degradation(d).value for d in policy.order_prior]
        print(f"hindsight headroom over the policy's own runs ({runs_path}):")
        for phase, stats in headroom(record, order_prior).items():
            print(
                f"  {phase:11s} {stats['mean']:+.3f} dB mean, {stats['median']:+.3f} median over {stats['n']} "
                f"mixtures; {stats['above_0.05']} gain > 0.05 dB, {stats['above_0.5']} > 0.5 dB"
            )
        return 0
    if not (args.shared / "data" / "clean").is_dir():
        print(f"error: {args.shared}/data/clean not found; pass --shared", file=sys.stderr)
        return 2
    if args.time_budget is not None and args.time_budget <= 0:
        print("error: --time-budget must be positive (seconds)", file=sys.stderr)
        return 2
    global TIME_BUDGET_OVERRIDE
    TIME_BUDGET_OVERRIDE = args.time_budget
    settings: dict[str, Any] = {
        "policy": args.policy,
        "per_combo": args.per_combo,
        "seed": args.seed,
        "limit": args.limit,
    }
    if args.time_budget is not None:
        settings["time_budget"] = args.time_budget
    previous: dict[str, Any] = {}
    if args.reuse and runs_path.is_file():
        previous = json.loads(runs_path.read_text())
        if previous.get("settings", settings) != settings:
            print(f"error: {runs_path} was made with {previous['settings']}, not {settings}", file=sys.stderr)
            return 2

    def phase_runs(name: str, key: str, run_phase: Any) -> list[dict[str, Any]]:
        if name not in args.phases:
            return []
        if previous.get(key):
            print(f"{name}: reusing {len(previous[key])} runs from {runs_path}", file=sys.stderr)
            return list(previous[key])
        return run_phase(args.shared, args.policy, args.per_combo, args.seed, args.limit)

    parallel = functools.partial(functools.partial, workers=args.workers)
    runs = phase_runs("orders", "runs", parallel(explore))
    tool_runs = phase_runs("tools", "tool_runs", parallel(explore_tools))
    threshold_runs = phase_runs("thresholds", "threshold_runs", parallel(explore_thresholds))
    per_threshold = threshold_margins(threshold_runs)
    thresholds = learn_thresholds(per_threshold, args.min_margin, min_improved=args.min_improved)
    tolerance_runs = phase_runs("tolerances", "tolerance_runs", parallel(explore_tolerances))
    per_tolerance = tolerance_margins(tolerance_runs)
    tolerances = learn_thresholds(per_tolerance, args.min_margin, min_improved=args.min_improved)
    margins = pairwise_margins(runs)
    prior = learn_prior(margins, args.min_margin)
    scores = option_scores(tool_runs)
    candidates = None
    if tool_runs:
        from policies import load_policy
        from tools import default_registry

        severities: dict[str, dict[str, float]] = defaultdict(dict)
        for run in tool_runs:
            if "severity" in run:
                severities[run["degradation"]][run["item"]] = run["severity"]
        candidates = learn_candidates(
            load_policy(args.policy), default_registry(), scores, args.min_margin, severities=severities
        )
    tools: Counter[tuple[str, str]] = Counter(tuple(step) for run in runs for step in run["accepted"])
    command = (
        f"python -m agent.planning.explore_order --policy {args.policy} --per-combo {args.per_combo} "
        f"--seed {args.seed} --min-margin {args.min_margin} --min-improved {args.min_improved} "
        f"--phases {' '.join(args.phases)}"
        + (f" --time-budget {args.time_budget:g}" if args.time_budget is not None else "")
    )
    header = [f"Generated by: {command}"]
    if runs:
        header += [
            f"Orders: {len({r['item'] for r in runs})} MiO100 mixtures from the calibration split (BSD100), "
            f"{len(runs)} agent runs (every ordering of each mixture's degradations).",
            "order_pairwise[a][b]: mean PSNR-Y gain (dB) of undoing a before b, kept when >= min-margin and the",
            "order won in >= 60 % of the mixtures where the pair met. Pair statistics (mean dB, mixtures):",
            *[
                f"  {a} before {b}: {np.mean(v):+.2f} dB over {len(v)} mixtures"
                for (a, b), v in sorted(margins.items())
            ],
            "Accepted tools per degradation: "
            + ", ".join(f"{target}:{tool} x{n}" for (target, tool), n in sorted(tools.items())),
        ]
    if tool_runs:
        header += [
            f"Tools: {len({r['item'] for r in tool_runs})} mixtures, {len(tool_runs)} agent runs (each option of each "
            "true degradation tried first). Mean PSNR-Y margin (dB) of trying the option first over the mean of all",
            "options on the same mixture (mixtures); an option goes before the policy's first choice when it beat it",
            f"by >= {args.min_margin} dB on average and on >= 60 % of the mixtures:",
            *[
                f"  {d}: "
                + ", ".join(
                    f"{key} {np.mean(list(v.values())):+.2f} ({len(v)})"
                    for key, v in sorted(per_option.items(), key=lambda kv: -float(np.mean(list(kv[1].values()))))
                )
                for d, per_option in sorted(scores.items())
            ],
        ]
    if threshold_runs:
        header += [
            f"Thresholds: {len({r['item'] for r in threshold_runs})} mixtures, {len(threshold_runs)} agent runs (the "
            "policy's presence thresholds, then each degradation's at each value of the grid). Mean PSNR-Y margin",
            "(dB) over the policy's thresholds (mixtures improved / worsened by > 0.01 dB); a value is taken when its",
            f"mean is >= {args.min_margin} dB, the best, and it improved at least {args.min_improved} mixtures and",
            "at least as many as it worsened:",
            *grid_lines(per_threshold),
            "Learned presence thresholds: " + (", ".join(f"{d} {v:g}" for d, v in thresholds.items()) or "none"),
        ]
    if tolerance_runs:
        header += [
            f"Tolerances: {len({r['item'] for r in tolerance_runs})} mixtures, {len(tolerance_runs)} agent runs (the "
            "policy's verifier, then, for each step target, each NR-IQA tolerance of the grid on the mixtures",
            "whose run attempted that target). Mean PSNR-Y margin (dB) over the policy's tolerances, all mixtures",
            "counted (improved / worsened by > 0.01 dB); taken by the threshold rule (mean >= "
            f"{args.min_margin} dB, >= {args.min_improved} mixtures improved):",
            *grid_lines(per_tolerance),
            "Learned NR-IQA tolerances: " + (", ".join(f"{d} {v:g}" for d, v in tolerances.items()) or "none"),
        ]
    path = write_policy(args.policy, prior, args.out, header, candidates, thresholds, tolerances)
    record = {
        "settings": settings,
        "margins": {f"{a}>{b}": v for (a, b), v in margins.items()},
        "runs": runs,
        "tool_runs": tool_runs,
        "threshold_runs": threshold_runs,
        "tolerance_runs": tolerance_runs,
    }
    runs_path.write_text(json.dumps(record))
    print("\n".join(header))
    print(f"\nprior: {json.dumps(prior)}\nwrote {path} and {runs_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
