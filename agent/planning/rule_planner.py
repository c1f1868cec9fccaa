"""Planner v0: rules in reverse physical order, candidate tools from the policy.

The planner is called after every accepted or abandoned step with the current report, so a
degradation that only becomes visible after another one is removed (blur under noise) is still
found: perceive -> plan one step -> act -> verify -> plan again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.degradations import ALL_DEGRADATIONS, Degradation, restoration_order
from agent.report import DegradationReport
from tools.base import ToolRegistry

#: Words that name each degradation in a request (v0 keyword matching; issue 6 brings a parser).
_KEYWORDS: dict[Degradation, tuple[str, ...]] = {
    Degradation.NOISE: ("noise", "noisy", "grain", "denoise"),
    Degradation.MOTION_BLUR: ("motion blur", "shake", "motion"),
    Degradation.DEFOCUS_BLUR: ("defocus", "out of focus", "bokeh", "blur", "blurry", "deblur", "sharpen"),
    Degradation.JPEG: ("jpeg", "compression", "block", "artifact"),
    Degradation.LOW_RESOLUTION: ("resolution", "upscale", "super-resolution", "pixelated", "upsample"),
    Degradation.HAZE: ("haze", "hazy", "fog", "foggy", "mist", "dehaze"),
    Degradation.RAIN: ("rain", "streak", "derain"),
    Degradation.RAINDROP: ("raindrop", "droplet", "water drop"),
    Degradation.LOW_LIGHT: ("dark", "low light", "low-light", "underexposed", "brighten", "exposure", "dim"),
    Degradation.COLOR_CAST: ("colour cast", "color cast", "tint", "white balance", "colour", "color"),
}
_PROTECT_PATTERNS = (r"\bkeep\b", r"\bpreserve\b", r"\bdon'?t (?:touch|remove|change)\b", r"\bleave\b", r"\bnot\b")


@dataclass
class Intent:
    """What a request asks: fix only some degradations, never touch others."""

    only: list[Degradation] | None = None
    protect: list[Degradation] = field(default_factory=list)
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the state and the trace."""
        return {
            "only": None if self.only is None else [d.value for d in self.only],
            "protect": [d.value for d in self.protect],
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Intent:
        """Inverse of :meth:`to_dict`."""
        if not data:
            return cls()
        only = data.get("only")
        return cls(
            only=None if only is None else [Degradation(d) for d in only],
            protect=[Degradation(d) for d in data.get("protect", [])],
            text=data.get("text"),
        )


def _mentions(clause: str) -> list[Degradation]:
    found: list[Degradation] = []
    # Longer phrases first so "motion blur" is not also read as generic "blur".
    taken = clause
    for deg, words in sorted(_KEYWORDS.items(), key=lambda kv: -max(len(w) for w in kv[1])):
        for word in sorted(words, key=len, reverse=True):
            if re.search(rf"\b{re.escape(word)}", taken):
                found.append(deg)
                taken = re.sub(rf"\b{re.escape(word)}\w*", " ", taken)
                break
    return found


def parse_request(text: str | None) -> Intent:
    """Read a request into an :class:`Intent` with keyword rules (v0).

    Clauses are split on "but", "and", commas; a clause with "keep"/"preserve"/"don't touch"
    protects what it names, any other clause asks to fix what it names. "everything", "all"
    or an empty request means: fix whatever is found.
    """
    if not text or not text.strip():
        return Intent()
    lowered = text.lower()
    fix: list[Degradation] = []
    protect: list[Degradation] = []
    for clause in re.split(r"\bbut\b|,|;|\band\b|\bwhile\b", lowered):
        named = _mentions(clause)
        if not named:
            continue
        if any(re.search(p, clause) for p in _PROTECT_PATTERNS):
            protect.extend(d for d in named if d not in protect)
        else:
            fix.extend(d for d in named if d not in fix)
    wants_all = bool(re.search(r"\b(all|everything|whatever)\b", lowered))
    only = None if wants_all or not fix else [d for d in fix if d not in protect]
    return Intent(only=only, protect=protect, text=text)


def expand_candidates(
    policy: Any, registry: ToolRegistry, degradation: Degradation, report: DegradationReport
) -> list[dict[str, Any]]:
    """The ordered attempts for one degradation: each candidate tool at each of its strengths.

    Parameters come from, in increasing priority: the tool's defaults, the tool's own
    ``suggest`` from the report, and the policy's fixed params.
    """
    attempts: list[dict[str, Any]] = []
    # Checkpoints the user registered (`restora tools add`) come first, then the policy's candidates.
    user_tools: list[tuple[str, dict[str, Any], list[float]]] = [
        (s.name, {}, [1.0]) for s in registry.for_degradation(degradation) if s.family == "user"
    ]
    policy_tools = [(c.tool, c.params, c.strengths) for c in policy.candidates_for(degradation)]
    for name, fixed, candidate_strengths in user_tools + policy_tools:
        if name not in registry:
            continue
        tool = registry.get(name)
        suggested = tool.suggest(report, degradation)
        params = {**suggested, **fixed}
        strengths = candidate_strengths or [1.0]
        for strength in strengths:
            step_params = dict(params)
            if any(p.name == "strength" for p in tool.spec.params):
                step_params["strength"] = strength
            attempts.append({"tool": name, "params": tool.spec.resolve(step_params)})
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
) -> dict[str, Any] | None:
    """The next step to take, or ``None`` when nothing is left to fix.

    Picks, among the degradations the report finds present and not yet handled, the first in
    the policy's restoration order; the request can narrow (``only``) or protect types.
    """
    present = [
        d
        for d, estimate in report.estimates.items()
        if estimate.probability >= policy.presence_threshold(d) and d.value not in handled and d not in intent.protect
    ]
    if intent.only is not None:
        present = [d for d in present if d in intent.only]
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
    attempts = expand_candidates(policy, registry, target, report)
    estimate = report.estimates[target]
    return {
        "target": target.value,
        "attempts": attempts,
        "attempt": 0,
        "rationale": (
            f"{target.value} present (p={estimate.probability:.2f}, severity={estimate.severity:.2f}); "
            f"first in restoration order among {[d.value for d in present]}"
        ),
    }
