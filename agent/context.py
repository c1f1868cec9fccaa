"""Run-time resources handed to the graph's nodes: policy, tools, assessor, IQA.

These hold models and tables, so they are not part of the (checkpointed) state. LangGraph
passes them to every node through ``Runtime.context``. Everything loads lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from agent.iqa import NoReferenceIQA
from tools.base import ToolRegistry


@dataclass
class RunContext:
    """Resources one or many runs share.

    Args:
        policy: a policy name (``default``, ``fast``) or a path to a policy YAML file.
        registry: tools to plan with; the built-in catalogue when omitted.
        assessor: an object with ``assess(image) -> DegradationReport``, or a spec string
            (``estimators``, ``saclip``, ``saclip:<folder>``); when omitted,
            :func:`agent.perception.assessor.default_assessor` (``$RESTORA_ASSESSOR`` or the package default).
        iqa_weights_dir: extra folder to look for pyiqa weight files in.
        planner: a model planner with ``plan(image, report, request, intent) -> PlanResult`` (e.g.
            :class:`agent.planning.vlm.VLMPlanner`); built from the policy's ``planner`` section when omitted
            and the policy asks for one; ``None`` with a ``rule`` policy.
        step_scorer: optional ``f(*, target, before_image, after_image, features, record) -> float`` ranking
            the candidates best-of-k compares, instead of the policy's score (used to learn that score
            from reference images; never needed to run).
    """

    policy: Any = "default"
    registry: ToolRegistry | None = None
    assessor: Any = None
    iqa_weights_dir: str | Path | None = None
    planner: Any = None
    step_scorer: Any = None
    _iqa: NoReferenceIQA | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from policies import load_policy

        if isinstance(self.policy, (str, Path)):
            self.policy = load_policy(self.policy)
        if self.registry is None:
            from tools import default_registry

            self.registry = default_registry()
        from policies import validate_tools

        problems = validate_tools(self.policy, self.registry)
        if problems:
            raise ValueError(f"policy {self.policy.name!r} does not fit the tool catalogue: " + "; ".join(problems))
        if self.planner is None and self.policy.planner.kind != "rule":
            self.planner = build_model_planner(self.policy, self.registry)
        if self.assessor is None or isinstance(self.assessor, str):
            from agent.perception.assessor import default_assessor

            self.assessor = default_assessor(self.assessor)

    @cached_property
    def iqa(self) -> NoReferenceIQA:
        """The policy's no-reference metrics (created on first use)."""
        weights = self.iqa_weights_dir or getattr(self.policy, "iqa_weights_dir", None)
        return NoReferenceIQA(list(self.policy.iqa_metrics), weights_dir=weights)

    @property
    def tools(self) -> ToolRegistry:
        """The tool registry (never ``None`` after construction)."""
        assert self.registry is not None
        return self.registry


def build_model_planner(policy: Any, registry: ToolRegistry) -> Any:
    """The VLM planner the policy's ``planner`` section describes (loaded lazily, on its first plan)."""
    from agent.planning.vlm import VLMPlanner

    settings = policy.planner
    options = {
        "registry": registry,
        "max_steps": settings.max_steps,
        "max_image_side": settings.max_image_side,
        "policy": policy,
    }
    if settings.kind == "openai":
        return VLMPlanner.from_openai(settings.base_url, settings.model, timeout=settings.timeout_s, **options)
    if not settings.model:
        raise ValueError(f"policy {policy.name!r}: planner kind 'vlm' needs planner.model (hub id or local folder)")
    return VLMPlanner(settings.model, **options)
