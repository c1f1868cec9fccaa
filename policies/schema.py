"""Policies as data: the schema every policy YAML file is validated against, and how files are found.

A policy says how hard the agent may try (budgets), when a step counts as an improvement
(thresholds), which tools to try for each degradation and in what order (candidates), which
order to undo degradations in (order prior), how quality is scored (no-reference metrics) and
what the machine can afford (limits). Every section refuses unknown keys, so a typo is an error
that names the field instead of a setting silently ignored.

Named policies ship as ``policies/<name>.yaml`` inside the package; :func:`load_policy` accepts
such a name or a path to any YAML file.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from agent.degradations import ALL_DEGRADATIONS, Degradation, restoration_order

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_TOOL_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
_KNOWN_DEGRADATIONS = ", ".join(d.value for d in ALL_DEGRADATIONS)


class PolicyError(ValueError):
    """A policy cannot be found or is invalid; the message names the file and the offending field."""


class _Section(BaseModel):
    """Base of every policy section: unknown keys are refused, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Budgets(_Section):
    """How much work one image may cost."""

    max_steps: int = Field(default=6, ge=1, le=64, description="restoration steps (accepted or abandoned) per image")
    max_attempts_per_step: int = Field(default=3, ge=1, le=32, description="tool/strength attempts tried for one step")
    max_tool_calls: int = Field(default=16, ge=1, le=1024, description="tool calls per image, all steps together")
    time_budget_s: float | None = Field(
        default=None, gt=0, description="wall-clock seconds per image after which no new step starts (None: no limit)"
    )


class Thresholds(_Section):
    """When a degradation counts as present and when a step or the whole run counts as an improvement."""

    presence_threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="probability from which a type is present"
    )
    presence_threshold_by_type: dict[Degradation, float] = Field(
        default_factory=dict,
        description="per degradation, a different presence threshold for planning a step (calibrated per type)",
    )
    min_target_drop: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="the targeted type's probability or severity must drop at least this much",
    )
    max_other_rise: float = Field(
        default=0.2, ge=0.0, le=1.0, description="no other type's probability may rise by more than this"
    )
    iqa_tolerance: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="relative worsening of the no-reference quality scores that is tolerated",
    )
    iqa_tolerance_by_target: dict[Degradation, float] = Field(
        default_factory=dict,
        description=(
            "per targeted degradation, a different iqa_tolerance: NR metrics penalise the legitimate smoothing of "
            "denoising, deblocking and deraining, while brightening, colour and haze steps should not lose quality"
        ),
    )
    iqa_tolerance_if_confident: dict[Degradation, float] = Field(
        default_factory=dict,
        description=(
            "per targeted degradation, a larger iqa_tolerance for a step after which the assessor is confident the "
            "target went away (its probability fell by at least confident_target_drop): dehazing and brightening "
            "often lower PIQE/NIQE even when right, and a large drop tells a right step from a wrong one"
        ),
    )
    iqa_tolerance_after: dict[Degradation, dict[Degradation, float]] = Field(
        default_factory=dict,
        description=(
            "per target of an earlier accepted step, then per targeted degradation, a larger iqa_tolerance for a "
            "later step: NR metrics score a denoised photo far worse once it is sharpened, even when right"
        ),
    )
    confident_target_drop: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="the drop in the target's probability from which iqa_tolerance_if_confident applies",
    )
    iqa_combine: Literal["mean", "min"] = Field(
        default="mean",
        description=(
            "how the relative changes of several NR-IQA metrics make one gain: their mean, or their minimum (every "
            "metric must agree, e.g. UIQM and UCIQE, which reward different things, for the underwater preset)"
        ),
    )
    min_iqa_gain: float | None = Field(
        default=0.03,
        ge=0.0,
        le=1.0,
        description=(
            "a step whose target did not measurably drop is still kept when no-reference quality rose by at least "
            "this much and the target did not rise (tools that restore only part of a degradation); null disables"
        ),
    )
    min_fidelity: float = Field(
        default=0.45,
        ge=-1.0,
        le=1.0,
        description="fidelity guard: least low-frequency structure correlation between a step's input and output",
    )
    final_check: bool = Field(
        default=True, description="compare the output with the input; keep the input if not better"
    )
    final_load_tolerance: float | None = Field(
        default=None,
        ge=0.0,
        description=(
            "how much the degradation load may rise in an output kept for better no-reference quality (min_iqa_gain); "
            "null: min_target_drop. The underwater preset raises it: dehazing unveils the water's colour, which its "
            "UIQM/UCIQE judges do not count as a defect"
        ),
    )
    final_margin: float = Field(
        default=0.0, ge=0.0, description="how much less degraded the output must look than the input to be kept"
    )

    def presence_for(self, degradation: Degradation | str) -> float:
        """The presence threshold of ``degradation``: its per-type value, else the general one."""
        return self.presence_threshold_by_type.get(Degradation(degradation), self.presence_threshold)


class Candidate(_Section):
    """One tool to try for a degradation, with fixed parameters and the strengths to try in turn."""

    tool: str = Field(description="registered tool name")
    params: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="fixed parameters; they override the tool's own suggestion"
    )
    strengths: list[float] = Field(
        default_factory=lambda: [1.0], min_length=1, description="strengths tried in order (blend with the input)"
    )
    min_severity: float = Field(
        default=0.0, ge=0.0, le=1.0, description="tried only when the assessed severity is at least this"
    )
    max_severity: float = Field(
        default=1.0, ge=0.0, le=1.0, description="tried only when the assessed severity is at most this"
    )

    def applies_to(self, severity: float) -> bool:
        """Whether this candidate is meant for a degradation of the assessed ``severity``."""
        return self.min_severity <= severity <= self.max_severity

    @model_validator(mode="after")
    def _severity_range(self) -> Candidate:
        if self.min_severity > self.max_severity:
            raise ValueError(f"min_severity {self.min_severity} is above max_severity {self.max_severity}")
        return self

    @field_validator("tool")
    @classmethod
    def _tool_name(cls, value: str) -> str:
        if not _TOOL_PATTERN.match(value):
            raise ValueError(f"tool name {value!r} must be lower_snake_case")
        return value

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, value: list[float]) -> list[float]:
        for strength in value:
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"strength {strength} is outside (0, 1]")
        if len(set(value)) != len(value):
            raise ValueError(f"strengths {value} repeat a value; each attempt should differ")
        return value


class Limits(_Section):
    """What the machine can afford."""

    max_pixels: int = Field(
        default=100_000_000, ge=64, description="inputs with more pixels are refused before decoding (bomb guard)"
    )
    working_max_pixels: int = Field(
        default=16_000_000, ge=64, description="inputs with more pixels are processed in tiles (or refused by tools)"
    )
    tile_size: int = Field(default=512, ge=64, le=8192, description="tile side for tiled processing of large images")
    tile_overlap: int = Field(default=32, ge=0, description="overlap between neighbouring tiles, in pixels")

    @model_validator(mode="after")
    def _consistent(self) -> Limits:
        if self.working_max_pixels > self.max_pixels:
            raise ValueError(
                f"working_max_pixels ({self.working_max_pixels}) exceeds max_pixels ({self.max_pixels}); lower it"
            )
        if self.tile_overlap * 2 >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be less than half of tile_size ({self.tile_size})"
            )
        return self


class LinearScore(_Section):
    """A linear predictor of a step's PSNR gain (dB) from its verification features."""

    intercept: float = Field(default=0.0, description="predicted gain with every feature at zero")
    weights: dict[str, float] = Field(default_factory=dict, description="per feature name, its coefficient")

    def predict(self, features: dict[str, float]) -> float:
        """The predicted gain; a feature this model weighs but ``features`` lacks counts as 0."""
        return self.intercept + sum(w * float(features.get(name, 0.0)) for name, w in self.weights.items())


class StepScore(_Section):
    """How best-of-k ranks the candidates the verifier accepted."""

    kind: Literal["verifier", "learned"] = Field(
        default="verifier",
        description=(
            "verifier: degradation-load drop plus NR-IQA gain; learned: a linear model of the step's PSNR gain learned "
            "on calibration mixtures (python -m agent.planning.learn_score), per target degradation"
        ),
    )
    by_target: dict[Degradation, LinearScore] = Field(
        default_factory=dict, description="learned: the model for steps on each degradation"
    )
    fallback: LinearScore | None = Field(
        default=None, description="learned: the model for degradations without their own (None: verifier score)"
    )
    note: str = Field(default="", description="how the model was learned and how well it ranked held-out candidates")

    def model_for(self, target: Degradation) -> LinearScore | None:
        """The learned model that ranks steps on ``target`` (``None``: use the verifier score)."""
        if self.kind != "learned":
            return None
        return self.by_target.get(target, self.fallback)


class Strategy(_Section):
    """How a step explores its candidates and whether the agent may backtrack over accepted steps."""

    name: Literal["greedy", "best_of_k", "tree"] = Field(
        default="greedy",
        description=(
            "greedy: keep the first candidate the verifier accepts; best_of_k: verify up to k accepted candidates and "
            "keep the best; tree: greedy, but when a step finds no acceptable candidate, undo the previous accepted "
            "step and try its next candidate (depth-first rollback, bounded by max_backtracks)"
        ),
    )
    k: int = Field(default=3, ge=1, le=16, description="best_of_k: accepted candidates compared per step")
    max_backtracks: int = Field(default=2, ge=0, le=32, description="tree: undone steps per image at most")
    score: StepScore = Field(default_factory=StepScore, description="best_of_k: how the accepted candidates are ranked")


class PlannerSettings(_Section):
    """Which planner proposes the steps: the rule planner, or a vision-language model checked against the catalogue."""

    kind: Literal["rule", "vlm", "openai"] = Field(
        default="rule",
        description=(
            "rule: reverse physical order and the candidates below; vlm: a transformers image-text model (model: hub "
            "id or local folder); openai: an OpenAI-compatible server (base_url/model here or RESTORA_VLM_* "
            "environment variables; the API key only from RESTORA_VLM_API_KEY). A model's plan is validated; invalid "
            "output is retried once, then the rule planner takes over"
        ),
    )
    model: str | None = Field(default=None, description="vlm: hub id or local folder; openai: the served model name")
    base_url: str | None = Field(default=None, description="openai: server URL, e.g. http://localhost:8000/v1")
    max_steps: int = Field(default=6, ge=1, le=20, description="most steps a model plan may hold")
    max_image_side: int = Field(default=768, ge=64, le=4096, description="longer image side shown to the model")
    timeout_s: float = Field(default=120.0, gt=0, description="openai: seconds per request")


def _default_order() -> list[Degradation]:
    return restoration_order(list(ALL_DEGRADATIONS))


class Policy(_Section):
    """A complete policy: budgets, thresholds, metrics, candidate tools, order prior and limits.

    Every field has a default, so a policy file only needs ``name`` and what it changes; shipped
    policies spell everything out so they can be read on their own.
    """

    schema_version: Literal[1] = Field(default=1, description="version of this schema the file was written for")
    name: str = Field(description="short identifier, lower case (recorded in every trace)")
    description: str = Field(default="", description="what the policy is for")
    budgets: Budgets = Field(default_factory=Budgets)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    iqa_metrics: list[str] = Field(
        default_factory=lambda: ["piqe", "niqe"], min_length=1, description="pyiqa no-reference metrics to score with"
    )
    iqa_weights_dir: Path | None = Field(
        default=None,
        description=(
            "folder with pyiqa weight files; None searches pyiqa's cache and ../shared/weights/pyiqa. "
            "A relative path is taken relative to the policy file"
        ),
    )
    candidates: dict[Degradation, list[Candidate]] = Field(
        default_factory=dict, description="per degradation, the tools to try in order"
    )
    order_prior: list[Degradation] = Field(
        default_factory=_default_order, description="order in which degradations are undone (every type once)"
    )
    order_pairwise: dict[Degradation, dict[Degradation, float]] = Field(
        default_factory=dict,
        description=(
            "learned pairwise order prior: order_pairwise[a][b] > 0 means undoing a before b worked better in "
            "exploration (python -m agent.planning.explore_order); overrides order_prior where it has an opinion"
        ),
    )
    strategy: Strategy = Field(default_factory=Strategy)
    planner: PlannerSettings = Field(default_factory=PlannerSettings)
    limits: Limits = Field(default_factory=Limits)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_PATTERN.match(value):
            raise ValueError(f"policy name {value!r} must be lower case letters, digits, '_' or '-'")
        return value

    @field_validator("iqa_metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        names = [metric.strip().lower() for metric in value]
        if len(set(names)) != len(names):
            raise ValueError(f"iqa_metrics {value} lists a metric twice")
        return names

    @field_validator("iqa_weights_dir")
    @classmethod
    def _weights_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        base = (info.context or {}).get("base_dir")
        if not value.is_absolute() and base is not None:
            value = Path(base) / value
        return value

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidate_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {_degradation_name(key, "candidates"): item for key, item in value.items()}

    @field_validator("order_pairwise", mode="before")
    @classmethod
    def _pairwise_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[Degradation, Any] = {}
        for first, row in value.items():
            key = _degradation_name(first, "order_pairwise")
            if not isinstance(row, dict):
                out[key] = row
                continue
            out[key] = {_degradation_name(second, f"order_pairwise.{key.value}"): v for second, v in row.items()}
        return out

    @field_validator("order_prior", mode="before")
    @classmethod
    def _order_names(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [_degradation_name(item, "order_prior") for item in value]

    @field_validator("order_prior")
    @classmethod
    def _order_complete(cls, value: list[Degradation]) -> list[Degradation]:
        repeated = sorted({d.value for d in value if value.count(d) > 1})
        if repeated:
            raise ValueError(f"order_prior lists {', '.join(repeated)} more than once")
        missing = [d.value for d in ALL_DEGRADATIONS if d not in value]
        if missing:
            raise ValueError(f"order_prior must list every degradation once; missing: {', '.join(missing)}")
        return value

    def presence_threshold(self, degradation: Degradation | str) -> float:
        """The probability from which ``degradation`` counts as present when planning."""
        return self.thresholds.presence_for(degradation)

    def precedence(self, first: Degradation | str, second: Degradation | str) -> float:
        """Learned preference for undoing ``first`` before ``second`` (positive: first; 0: no opinion)."""
        a, b = Degradation(first), Degradation(second)
        return self.order_pairwise.get(a, {}).get(b, 0.0) - self.order_pairwise.get(b, {}).get(a, 0.0)

    def candidates_for(self, degradation: Degradation | str) -> list[Candidate]:
        """Return the candidates for ``degradation`` in order (empty when the policy has none)."""
        return self.candidates.get(Degradation(degradation), [])

    def missing_candidates(self) -> list[Degradation]:
        """Degradation types this policy has no candidate tool for (the agent will skip them)."""
        return [d for d in ALL_DEGRADATIONS if not self.candidates.get(d)]

    def tool_names(self) -> list[str]:
        """Every tool the policy refers to, sorted."""
        return sorted({c.tool for items in self.candidates.values() for c in items})


def _degradation_name(value: Any, field: str) -> Degradation:
    """Map an exact degradation name to its member; an unknown name raises with a suggestion."""
    if isinstance(value, Degradation):
        return value
    text = str(value)
    try:
        return Degradation(text)
    except ValueError:
        close = difflib.get_close_matches(text, [d.value for d in ALL_DEGRADATIONS], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown degradation {text!r} in {field}; {hint}known: {_KNOWN_DEGRADATIONS}") from None


# --------------------------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"key {key!r} appears twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _all_field_names() -> list[str]:
    names: set[str] = set()
    for model in (Policy, Budgets, Thresholds, Candidate, Limits):
        names.update(model.model_fields)
    return sorted(names)


def _format_validation_error(error: ValidationError) -> str:
    """One line per problem: the dotted field path, what is wrong, and a spelling hint for unknown keys."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            key = str(item["loc"][-1])
            close = difflib.get_close_matches(key, _all_field_names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"  {where}: unknown field{hint}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def policy_from_mapping(data: Any, source: str = "<mapping>", base_dir: Path | None = None) -> Policy:
    """Validate an already-parsed mapping as a :class:`Policy`.

    Args:
        data: The parsed YAML (a mapping).
        source: Where it came from, for error messages.
        base_dir: Folder that relative paths in the policy are taken relative to.

    Returns:
        The validated policy.

    Raises:
        PolicyError: naming ``source`` and every invalid field.

    """
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise PolicyError(f"{source}: a policy must be a YAML mapping (name: ..., budgets: ...), got {kind}")
    try:
        return Policy.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise PolicyError(f"{source}: invalid policy\n{_format_validation_error(exc)}") from None


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"{source}: invalid YAML{where}: {problem}") from None


def list_policies() -> list[str]:
    """Names of the policies shipped with Restora (``policies/*.yaml``), sorted."""
    folder = resources.files("policies")
    return sorted(item.name[: -len(".yaml")] for item in folder.iterdir() if item.name.endswith(".yaml"))


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.endswith((".yaml", ".yml")) or text.startswith(("~", "."))


def load_policy(name_or_path: str | Path | Policy) -> Policy:
    """Load a shipped policy by name (``"default"``, ``"fast"``) or any policy YAML file by path.

    A bare name (no folder separator, no ``.yaml``/``.yml`` suffix) always means a shipped policy; pass
    a path such as ``./mine.yaml`` for a file of your own. When a file has no ``name``, its file name
    (without extension) is used.

    Args:
        name_or_path: A shipped policy's name, a path to a YAML file, or an existing :class:`Policy`
            (returned as is).

    Returns:
        The validated policy.

    Raises:
        PolicyError: if the name is unknown, the file is missing or not valid YAML, or a field is invalid;
            the message names the file and the field.

    """
    if isinstance(name_or_path, Policy):
        return name_or_path
    if isinstance(name_or_path, Path) or _looks_like_path(str(name_or_path)):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise PolicyError(f"no policy file at {path}; check the path (shipped policies: {list_policies()})")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc}") from None
        source, base_dir, stem = str(path), path.resolve().parent, path.stem
    else:
        name = str(name_or_path).strip()
        resource = resources.files("policies").joinpath(f"{name}.yaml")
        if not _NAME_PATTERN.match(name) or not resource.is_file():
            available = list_policies()
            close = difflib.get_close_matches(name, available, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PolicyError(
                f"unknown policy {name!r}; {hint}shipped policies: {', '.join(available)} "
                "(for a file of your own pass a path ending in .yaml)"
            )
        text = resource.read_text(encoding="utf-8")
        source, base_dir, stem = f"policies/{name}.yaml", None, name
    data = _parse_yaml(text, source)
    if isinstance(data, dict) and "name" not in data:
        data["name"] = stem.lower()
    return policy_from_mapping(data, source=source, base_dir=base_dir)


# --------------------------------------------------------------------------------------------- tools


def validate_tools(policy: Policy, registry: Any) -> list[str]:
    """Check the policy's candidates against a tool registry; return the problems found (empty: all good).

    Reported: unknown tool names (with close matches), tools that do not declare the degradation they are
    listed under, fixed parameters the tool does not have or that are out of range, and strengths other
    than 1.0 for tools without a ``strength`` parameter (those attempts would be identical).

    Args:
        policy: The policy to check.
        registry: A :class:`tools.base.ToolRegistry` (anything with ``names()`` and ``specs()``).

    Returns:
        Human-readable problems, each starting with the dotted path of the candidate concerned.

    """
    specs = {spec.name: spec for spec in registry.specs()}
    problems: list[str] = []
    for degradation, candidates in policy.candidates.items():
        for index, candidate in enumerate(candidates):
            where = f"candidates.{degradation.value}[{index}]"
            spec = specs.get(candidate.tool)
            if spec is None:
                close = difflib.get_close_matches(candidate.tool, list(specs), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; registered: {', '.join(sorted(specs))}"
                problems.append(f"{where}: unknown tool {candidate.tool!r}{hint}")
                continue
            if degradation not in spec.restores:
                restores = ", ".join(d.value for d in spec.restores)
                problems.append(
                    f"{where}: tool {candidate.tool!r} does not declare that it restores {degradation.value} "
                    f"(it restores {restores})"
                )
            try:
                spec.resolve(candidate.params)
            except (ValueError, KeyError) as exc:
                problems.append(f"{where}.params: {exc}")
            has_strength = any(param.name == "strength" for param in spec.params)
            if not has_strength and candidate.strengths != [1.0]:
                problems.append(
                    f"{where}.strengths: tool {candidate.tool!r} has no strength parameter; use strengths: [1.0]"
                )
    return problems
