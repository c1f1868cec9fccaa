"""Planner v0: rules in reverse physical order, candidate tools from the policy.

The planner is called after every accepted or abandoned step with the current report, so a
degradation that only becomes visible after another one is removed (blur under noise) is still
found: perceive -> plan one step -> act -> verify -> plan again.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.degradations import ALL_DEGRADATIONS, Degradation, restoration_order
from agent.planning.request import Intent, tool_params
from agent.planning.request import parse_request as _parse_request
from agent.report import DegradationReport
from tools.base import ToolRegistry

logger = logging.getLogger(__name__)

__all__ = ["Intent", "expand_candidates", "next_step", "parse_request"]


def parse_request(text: str | None, previous: Intent | None = None) -> Intent:
    """Read a request into an :class:`Intent` (see :mod:`agent.planning.request` for the conventions).

    ``previous`` is the intent of the previous turn, for follow-ups ("less", "undo", "skip dehazing").
    An intent that :attr:`Intent.needs_clarification` should be answered with its question, not run.
    """
    return _parse_request(text, previous)


def expand_candidates(
    policy: Any,
    registry: ToolRegistry,
    degradation: Degradation,
    report: DegradationReport,
    intent: Intent | None = None,
) -> list[dict[str, Any]]:
    """The ordered attempts for one degradation: each candidate tool at each of its strengths.

    Parameters come from, in increasing priority: the tool's defaults, the tool's own
    ``suggest`` from the report, the policy's fixed params, and the numbers of the request
    ("denoise with sigma 0.06"; applied to the tools that declare such a parameter). When the request
    gives numbers, the tools that take them are tried before those that would ignore them. A strength
    from the request ("a little", or a chat's "less denoising") replaces the policy's strengths.
    Candidates meant for another severity range (``min_severity``/``max_severity``) are left out, so are
    tools that cannot run here (:meth:`tools.base.Tool.missing`: no weights, no model), and an attempt
    identical to an earlier one is not repeated.
    """
    attempts: list[dict[str, Any]] = []
    ignores_request_numbers: list[dict[str, Any]] = []  # tried after the tools that take the user's numbers
    asked_numbers = bool(intent is not None and intent.params.get(degradation))
    # Checkpoints the user registered (`restora tools add`) come first, then the policy's candidates.
    user_tools: list[tuple[str, dict[str, Any], list[float]]] = [
        (s.name, {}, [1.0]) for s in registry.for_degradation(degradation) if s.family == "user"
    ]
    severity = report.severity(degradation)
    policy_tools = [
        (c.tool, c.params, c.strengths) for c in policy.candidates_for(degradation) if c.applies_to(severity)
    ]
    for name, fixed, candidate_strengths in user_tools + policy_tools:
        if name not in registry:
            continue
        tool = registry.get(name)
        problem = tool.missing()
        if problem:  # e.g. a learned tool without weights: no attempt is spent on it
            logger.info("skipping %s for %s: %s", name, degradation.value, problem)
            continue
        suggested = tool.suggest(report, degradation)
        declared = {p.name for p in tool.spec.params}
        requested = tool_params(intent, degradation, tool.spec) if intent is not None else {}
        wanted_strength = requested.pop("strength", None)
        queue = ignores_request_numbers if asked_numbers and not requested else attempts
        params = {**suggested, **fixed, **requested}
        strengths = [wanted_strength] if wanted_strength is not None else (candidate_strengths or [1.0])
        for strength in strengths:
            step_params = dict(params)
            if "strength" in declared:
                step_params["strength"] = max(float(strength), 0.01)
            try:
                attempt = {"tool": name, "params": tool.spec.resolve(step_params)}
            except ValueError as exc:  # e.g. a number from the request outside this tool's range
                logger.info("skipping %s for %s: %s", name, degradation.value, exc)
                continue
            if attempt not in attempts and attempt not in ignores_request_numbers:
                queue.append(attempt)  # a severity-specific candidate may repeat a general one
    attempts += ignores_request_numbers
    return attempts[: policy.budgets.max_attempts_per_step]


def choose_first(present: list[Degradation], policy: Any) -> Degradation:
    """The degradation to undo first among ``present`` (already sorted by the order prior).

    With a learned pairwise prior (``policy.order_pairwise``), the type that the exploration
    most preferred to undo before the others present wins (the sum of its pairwise margins); the
    fixed order prior breaks ties and decides where the learned prior has no opinion.
    """
    pairwise = getattr(policy, "order_pairwise", None)
    if not pairwise or len(present) < 2:
        return present[0]
    scores = {d: sum(policy.precedence(d, other) for other in present if other != d) for d in present}
    best = max(scores.values())
    return next(d for d in present if scores[d] >= best - 1e-9)


def next_step(
    report: DegradationReport,
    handled: list[str],
    intent: Intent,
    policy: Any,
    registry: ToolRegistry,
    hidden: dict[str, list[float]] | None = None,
) -> dict[str, Any] | None:
    """The next step to take, or ``None`` when nothing is left to fix.

    Picks, among the degradations the report finds present and not yet handled, the first in
    the policy's restoration order; the request can narrow (``only``) or protect types. ``hidden``
    holds the types an earlier step hid without removing them (type -> [probability, severity] as
    last seen, :data:`agent.degradations.HIDES`): they count as present.
    """
    present = [
        d
        for d, estimate in report.estimates.items()
        if estimate.probability >= policy.presence_threshold(d) and d.value not in handled and intent.allows(d)
    ]
    last_seen = {
        d: seen
        for d, seen in ((Degradation(name), seen) for name, seen in (hidden or {}).items())
        if d not in present and d.value not in handled and intent.allows(d)
    }
    present += list(last_seen)
    # A degradation the request names with numbers ("upscale 2x", "deblur with sigma 2") is done even
    # when the assessor does not find it.
    present += [
        d
        for d in intent.only or []
        if intent.params.get(d) and d not in present and d.value not in handled and intent.allows(d)
    ]
    if not present:
        return None
    order = (
        [Degradation(d) for d in policy.order_prior]
        if policy.order_prior
        else restoration_order(list(ALL_DEGRADATIONS))
    )
    rank = {d: i for i, d in enumerate(order)}
    present.sort(key=lambda d: (rank.get(d, len(rank)), -report.probability(d)))
    target = choose_first(present, policy)
    attempts = expand_candidates(policy, registry, target, report, intent)
    estimate = report.estimates[target]
    if target in last_seen:
        probability, severity = last_seen[target]
        seen = f"hidden by an earlier step, not removed (p={probability:.2f}, severity={severity:.2f} before it)"
    else:
        seen = f"present (p={estimate.probability:.2f}, severity={estimate.severity:.2f})"
    return {
        "target": target.value,
        "attempts": attempts,
        "attempt": 0,
        "rationale": f"{target.value} {seen}; first in restoration order among {[d.value for d in present]}",
    }
