"""Eval suites as data: the schema of ``evals/suites/*.yaml`` and how suites are found.

A suite names its datasets (folders under the data root, the project's clean evaluation split, or
procedural images that need no files), how clean images are degraded (MiO100 combinations, the physical
underwater or under-display-camera models), the baselines and agent policies run side by side on every
image, and the metrics. Every section refuses unknown keys, so a typo is an error naming the field.

:func:`load_suite` takes a built-in name (``smoke``, ``mixed``, ``underwater``, ``udc``) or a path to a YAML file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.degradations import Degradation, parse_degradation

SUITES_DIR = Path(__file__).resolve().parent / "suites"
SCHEMA_VERSION = 1


class SuiteError(ValueError):
    """A suite cannot be found or is invalid; the message names the file and the offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Synthesis(_Section):
    """How the clean images of a dataset are degraded (the reference is the clean image)."""

    kind: Literal["mio100", "combos", "underwater", "udc"] = Field(
        description="mio100/combos: evals.synthesis.synthesize; underwater/udc: the physical models"
    )
    combinations: list[str] = Field(
        default_factory=list,
        description="MiO100 keys (A1..C4) or '+'-joined degradation names; empty: all 16 MiO100 combinations",
    )
    assign: Literal["cycle", "all"] = Field(
        default="cycle", description="cycle: one combination (or panel) per image in turn; all: every one per image"
    )
    panels: list[Literal["toled", "poled"]] = Field(default_factory=lambda: ["toled", "poled"])  # type: ignore[arg-type]
    severity: float | None = Field(default=None, ge=0.0, le=1.0, description="fixed severity; null draws one")
    preset: Literal["default", "mio100"] = "mio100"

    @field_validator("combinations")
    @classmethod
    def _known_combinations(cls, value: list[str]) -> list[str]:
        from evals.synthesis import MIO100_COMBINATIONS

        for combo in value:
            if combo not in MIO100_COMBINATIONS:
                for part in combo.split("+"):
                    parse_degradation(part)  # raises with the known names
        return value

    def variants(self) -> list[str]:
        """The combinations (or panels, or the single underwater model) images are spread over."""
        from evals.synthesis import MIO100_COMBINATIONS

        if self.kind == "udc":
            return list(self.panels)
        if self.kind == "underwater":
            return ["underwater"]
        return list(self.combinations) or list(MIO100_COMBINATIONS)


class DatasetSpec(_Section):
    """One dataset of a suite: exactly one of ``path``, ``split`` or ``procedural``."""

    name: str = Field(description="name in reports")
    path: str | None = Field(default=None, description="folder, relative to the data root unless absolute")
    layout: str = Field(default="auto", description="an evals.datasets layout name, or auto")
    split: Literal["evaluation", "calibration"] | None = Field(
        default=None, description="the project's clean split (evals.synthesis.clean_split) under the data root"
    )
    procedural: int | None = Field(default=None, ge=1, description="this many procedural images (no files needed)")
    size: int = Field(default=128, ge=16, le=2048, description="side of procedural images")
    limit: int | None = Field(default=None, ge=1, description="use only the first N images")
    crop: int | None = Field(default=None, ge=16, description="crop images to at most N x N (seeded position)")
    optional: bool = Field(default=False, description="skip with a note when the folder is missing")
    synthesis: Synthesis | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        sources = [s for s in (self.path, self.split, self.procedural) if s is not None]
        if len(sources) != 1:
            raise ValueError(f"dataset {self.name!r}: give exactly one of path, split or procedural")
        if (self.split is not None or self.procedural is not None) and self.synthesis is None:
            raise ValueError(f"dataset {self.name!r}: clean images need a synthesis section to degrade them")
        if self.layout != "auto":
            from evals.datasets import LAYOUTS

            if self.layout not in LAYOUTS:
                raise ValueError(f"dataset {self.name!r}: unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        return self


class Baselines(_Section):
    """The non-agent methods run on every image."""

    identity: bool = Field(default=True, description="the input unchanged")
    single_tools: list[str] | Literal["all"] = Field(
        default_factory=list, description="each tool alone ('all': every tool in the reference policy's candidates)"
    )
    fixed_chains: dict[str, list[str] | Literal["auto"]] = Field(
        default_factory=dict,
        description=(
            "named fixed chains: tool names in order, or 'auto' (the reference policy's first tool for each of "
            "chain_degradations, in reverse physical order)"
        ),
    )
    chain_degradations: list[Degradation] = Field(
        default_factory=list, description="degradations an 'auto' chain undoes (default: all the synthesis applies)"
    )
    oracle: bool = Field(default=True, description="true degradations, best tool per step by PSNR (synthetic only)")
    reference_policy: str = Field(default="default", description="policy whose candidates the baselines use")


class Suite(_Section):
    """An evaluation suite."""

    schema_version: int = SCHEMA_VERSION
    name: str
    description: str = ""
    seed: int = 2025
    datasets: list[DatasetSpec] = Field(min_length=1)
    baselines: Baselines = Field(default_factory=Baselines)
    agents: list[str] = Field(default_factory=lambda: ["default"], description="policy names or YAML paths")
    metrics: list[str] = Field(default_factory=lambda: ["psnr", "ssim"])
    primary_metrics: list[str] = Field(
        default_factory=lambda: ["psnr"],
        description="the metric gaps and 'made worse' are judged by: the first one an image has a value for",
    )
    improvement_metrics: list[str] = Field(
        default_factory=list, description="metrics whose share of images improved over the input is reported"
    )
    gallery_per_dataset: int = Field(default=24, ge=0, description="images per dataset shown in the HTML gallery")
    assessor: str = Field(
        default="estimators",
        description="perception of the agents and baselines: estimators | saclip[:<folder>] | hybrid[:<folder>]",
    )

    @field_validator("schema_version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported; this restora reads version {SCHEMA_VERSION}")
        return value

    @field_validator("assessor")
    @classmethod
    def _assessor_known(cls, value: str) -> str:
        from agent.perception.assessor import parse_assessor_spec

        parse_assessor_spec(value)
        return value

    @model_validator(mode="after")
    def _metrics_known(self) -> Suite:
        from evals.iqa_metrics import metric_info

        for name in {*self.metrics, *self.primary_metrics, *self.improvement_metrics}:
            metric_info(name)
        missing = [m for m in (*self.primary_metrics, *self.improvement_metrics) if m not in self.metrics]
        if missing:
            raise ValueError(f"primary/improvement metrics {missing} must also be listed under metrics")
        names = [d.name for d in self.datasets]
        if len(names) != len(set(names)):
            raise ValueError(f"dataset names must be unique, got {names}")
        return self

    def fingerprint(self) -> str:
        """A short hash of everything that changes results (finished items of another fingerprint are redone)."""
        data = self.model_dump(mode="json", exclude={"description", "gallery_per_dataset"})
        if data["assessor"] == "estimators":  # the setting before it was one: earlier results stay valid
            del data["assessor"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def list_suites() -> list[str]:
    """Names of the built-in suites."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_from_mapping(data: dict[str, Any], source: str = "<mapping>") -> Suite:
    """Validate a suite given as a mapping; errors name ``source`` and the field."""
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'suite'}: {e['msg']}" for e in exc.errors())
        raise SuiteError(f"invalid suite {source}: {problems}") from None


def load_suite(name_or_path: str | Path) -> Suite:
    """Load a built-in suite by name or a suite YAML file by path.

    Raises:
        SuiteError: for an unknown name (with close matches), unreadable YAML or an invalid suite.

    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = SUITES_DIR / f"{text}.yaml"
        if not path.is_file():
            close = difflib.get_close_matches(text, list_suites(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SuiteError(f"unknown suite {text!r}{hint}; built-in: {', '.join(list_suites())}, or pass a YAML path")
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"suite file {path} must hold a mapping at the top level")
    return suite_from_mapping(data, str(path))


def default_data_root() -> Path:
    """The shared data folder beside the repository (``../shared/data``)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"
