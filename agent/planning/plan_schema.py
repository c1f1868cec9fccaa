"""The plan schema, built at run time from the tool catalogue: all a planner may propose.

A plan comes from a model (a local VLM or a remote API), so it is untrusted input. The schema
built here from a :class:`~tools.base.ToolRegistry` admits exactly:

- ``steps``: at most ``max_steps`` items, each ``{"tool", "target", "params", "rationale"}`` where
  ``tool`` is a registered name, ``target`` a degradation that tool declares it restores,
  ``params`` only that tool's declared parameters, each of its type and within its range;
- ``description``: what the model sees in the image (free text);
- nothing else: unknown keys anywhere are refused, duplicate JSON keys are refused, NaN and
  infinities are refused, strings are length-limited and may not contain control characters,
  paths or URLs.

:func:`parse_plan` extracts the JSON object from a model's reply (code fences and prose around it
are tolerated), validates it and returns steps whose parameters went through the tool's own
:meth:`~tools.base.ToolSpec.resolve`. Errors are :class:`PlanValidationError` with a short message
meant to be shown to the model for one retry.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, create_model

from tools.base import Param, ToolRegistry, ToolSpec

#: Most steps a plan may hold unless the caller says otherwise.
DEFAULT_MAX_STEPS = 8
#: Longest rationale per step and longest image description, in characters.
MAX_RATIONALE_CHARS = 400
MAX_DESCRIPTION_CHARS = 1000
#: Longest model reply that is parsed at all.
MAX_REPLY_CHARS = 20_000

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PATH_LIKE = re.compile(
    r"(?:^|[\s'\"`=(\[{,;:])(?:~|\.{1,2})?[/\\]|[A-Za-z]:[\\/]|\.\.[/\\]|\b(?:file|https?|ftp)://", re.IGNORECASE
)


class PlanValidationError(ValueError):
    """A model's plan is not valid JSON or does not match the schema; the message says why."""


def _safe_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    if _PATH_LIKE.search(value):
        raise ValueError("paths and URLs are not allowed in text fields")
    return value.strip()


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError("must be finite")
    return value


def _integer(value: Any) -> Any:
    value = _number(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be a whole number, got {value}")
        return int(value)
    return value


def _param_type(param: Param) -> Any:
    if param.kind == "bool":
        return StrictBool
    if param.kind == "choice":
        return Literal[param.choices]  # type: ignore[valid-type]
    bounds = Field(ge=param.low, le=param.high, description=param.description or None)
    if param.kind == "int":
        return Annotated[int, BeforeValidator(_integer), bounds]
    return Annotated[float, BeforeValidator(_number), bounds]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _step_model(spec: ToolSpec) -> type[BaseModel]:
    forbid = ConfigDict(extra="forbid")
    fields: dict[str, Any] = {p.name: (_param_type(p) | None, None) for p in spec.params}
    params_model = create_model(f"{_camel(spec.name)}Params", __config__=forbid, **fields)
    tool_type: Any = Literal[spec.name]  # type: ignore[valid-type]
    target_type: Any = Literal[tuple(d.value for d in spec.restores)]  # type: ignore[valid-type]
    rationale = Annotated[str, BeforeValidator(_safe_text), Field(max_length=MAX_RATIONALE_CHARS)]
    return create_model(
        f"{_camel(spec.name)}Step",
        __config__=forbid,
        __doc__=f"One step with {spec.name}: {spec.description}",
        tool=(tool_type, ...),
        target=(target_type, ...),
        params=(params_model, Field(default_factory=params_model)),
        rationale=(rationale, ""),
    )


def build_plan_schema(
    registry: ToolRegistry, *, max_steps: int = DEFAULT_MAX_STEPS, tools: list[str] | None = None
) -> type[BaseModel]:
    """The pydantic model of a plan over ``registry``'s tools (or the subset ``tools``).

    Raises:
        ValueError: if no tool is left to plan with, or ``max_steps`` is below 1.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps is {max_steps}; a plan schema needs max_steps >= 1")
    specs = [s for s in registry.specs() if tools is None or s.name in tools]
    if not specs:
        raise ValueError("no tools to plan with; register tools or check the names passed as tools=")
    steps = [_step_model(spec) for spec in specs]
    step_type: Any = steps[0] if len(steps) == 1 else Annotated[Union[tuple(steps)], Field(discriminator="tool")]  # noqa: UP007
    description = Annotated[str, BeforeValidator(_safe_text), Field(max_length=MAX_DESCRIPTION_CHARS)]
    return create_model(
        "Plan",
        __config__=ConfigDict(extra="forbid"),
        __doc__="A restoration plan: ordered steps over the registered tools.",
        description=(description, ""),
        steps=(list[step_type], Field(default_factory=list, max_length=max_steps)),
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        raise PlanValidationError(f"duplicate JSON keys: {duplicated[:5]}")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise PlanValidationError(f"{name} is not allowed in a plan")


def extract_json(reply: str) -> Any:
    """The first JSON object in a model's reply (``json`` code fences and surrounding prose allowed).

    Raises:
        PlanValidationError: if the reply is too long or holds no valid JSON object.
    """
    if len(reply) > MAX_REPLY_CHARS:
        raise PlanValidationError(f"reply is {len(reply)} characters; at most {MAX_REPLY_CHARS} are read")
    start = reply.find("{")
    if start < 0:
        raise PlanValidationError('no JSON object found; reply with one object {"description": ..., "steps": [...]}')
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    try:
        value, _ = decoder.raw_decode(reply[start:])
    except json.JSONDecodeError as exc:
        raise PlanValidationError(f"invalid JSON: {exc.msg} at character {exc.pos}") from None
    return value


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:6]:
        where = ".".join(str(x) for x in item["loc"]) or "plan"
        parts.append(f"{_shorten(where, 80)}: {_shorten(item['msg'])}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_plan(reply: str | dict[str, Any], schema: type[BaseModel], registry: ToolRegistry) -> dict[str, Any]:
    """Validate a model's plan; return ``{"description", "steps": [{tool, target, params, rationale}]}``.

    Each step's ``params`` are the tool's resolved parameters (defaults filled in, values checked
    again by the tool's own spec).

    Raises:
        PlanValidationError: with a short reason, for the retry prompt and the trace.
    """
    data = extract_json(reply) if isinstance(reply, str) else reply
    if not isinstance(data, dict):
        raise PlanValidationError(f"the plan must be a JSON object, got {type(data).__name__}")
    try:
        plan = schema.model_validate(data)
    except ValidationError as exc:
        raise PlanValidationError(_describe(exc)) from None
    specs = {s.name: s for s in registry.specs()}
    steps = []
    for step in plan.steps:  # type: ignore[attr-defined]
        given = {k: v for k, v in step.params.model_dump().items() if v is not None}
        try:
            params = specs[step.tool].resolve(given)
        except (KeyError, ValueError) as exc:
            raise PlanValidationError(f"{step.tool}: {_shorten(str(exc))}") from None
        steps.append({"tool": step.tool, "target": step.target, "params": params, "rationale": step.rationale})
    return {"description": plan.description, "steps": steps}  # type: ignore[attr-defined]


def catalogue_text(registry: ToolRegistry, tools: list[str] | None = None) -> str:
    """The tool catalogue as compact text for a prompt: name, what it restores, parameters."""
    lines = []
    for spec in registry.specs():
        if tools is not None and spec.name not in tools:
            continue
        restores = ", ".join(d.value for d in spec.restores)
        lines.append(f"- {spec.name} (restores: {restores}): {spec.description}")
        lines.extend(f"    {p.describe()}" for p in spec.params)
    return "\n".join(lines)
