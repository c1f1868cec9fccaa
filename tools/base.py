"""The declared tool interface and the registry every restoration tool goes through.

A tool is a class with a :class:`ToolSpec` declared once as the class attribute ``spec``. The
spec is validated when the class is defined (``__init_subclass__``) and the same declaration
feeds the planner's catalogue, ``restora tools`` and the docs. Images are ``float32`` arrays of
shape ``(H, W, 3)``, RGB, in ``[0, 1]``.

Heavy models load in :meth:`Tool.setup` on first use, never at import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from agent.degradations import Degradation
from agent.report import DegradationReport

ParamKind = Literal["float", "int", "bool", "choice"]


@dataclass(frozen=True)
class Param:
    """A typed tool parameter with its default and allowed range or choices."""

    name: str
    kind: ParamKind
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or not self.low <= self.high:
                raise ValueError(f"param {self.name!r}: numeric params need low <= high")
            if not self.low <= self.default <= self.high:
                raise ValueError(f"param {self.name!r}: default {self.default} outside [{self.low}, {self.high}]")
        if self.kind == "choice" and self.default not in self.choices:
            raise ValueError(f"param {self.name!r}: default {self.default!r} not in {self.choices}")

    def validate(self, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type; raise ``ValueError`` if out of range."""
        if self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"param {self.name!r} must be true or false, got {value!r}")
            return bool(value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"param {self.name!r} must be one of {self.choices}, got {value!r}")
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"param {self.name!r} must be a number, got {value!r}") from None
        assert self.low is not None and self.high is not None
        if not self.low <= number <= self.high:
            raise ValueError(f"param {self.name!r}={number} is outside [{self.low}, {self.high}]")
        return int(round(number)) if self.kind == "int" else number

    def describe(self) -> str:
        """One-line human description: ``name: kind in [low, high] (default x)``."""
        if self.kind in ("float", "int"):
            span = f" in [{self.low:g}, {self.high:g}]"
        elif self.kind == "choice":
            span = " in {" + ", ".join(map(str, self.choices)) + "}"
        else:
            span = ""
        return f"{self.name}: {self.kind}{span} (default {self.default})"


STRENGTH = Param("strength", "float", 1.0, 0.0, 1.0, description="blend of the result with the input")


@dataclass(frozen=True)
class ToolSpec:
    """The declaration of a tool: what it restores, its parameters and its costs."""

    name: str
    description: str
    restores: tuple[Degradation, ...]
    params: tuple[Param, ...] = ()
    generative: bool = False
    device: Literal["cpu", "cuda", "any"] = "cpu"
    family: str = "classical"
    changes_size: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name.lower() != self.name:
            raise ValueError(f"tool name {self.name!r} must be lower_snake_case")
        if not self.restores:
            raise ValueError(f"tool {self.name!r} must declare at least one degradation it restores")
        names = [p.name for p in self.params]
        if len(names) != len(set(names)):
            raise ValueError(f"tool {self.name!r} declares a parameter twice: {names}")
        for d in self.restores:
            if not isinstance(d, Degradation):
                raise TypeError(f"tool {self.name!r}: restores must hold Degradation members, got {d!r}")

    def param(self, name: str) -> Param:
        """The declared parameter called ``name``."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"tool {self.name!r} has no parameter {name!r}; it has {[p.name for p in self.params]}")

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``params``, every value validated; unknown names are refused."""
        params = dict(params or {})
        unknown = set(params) - {p.name for p in self.params}
        if unknown:
            raise ValueError(f"tool {self.name!r} has no parameter(s) {sorted(unknown)}")
        return {p.name: p.validate(params[p.name]) if p.name in params else p.default for p in self.params}


class ToolError(RuntimeError):
    """A tool failed on one image; the agent records it and moves on (fails the step, not the run)."""


@dataclass
class ToolResult:
    """What one tool call produced."""

    image: np.ndarray
    params: dict[str, Any]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class Tool:
    """Base class of every restoration tool. Subclasses set ``spec`` and implement :meth:`apply`."""

    spec: ClassVar[ToolSpec]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is None:
            return  # an abstract intermediate class
        if not isinstance(spec, ToolSpec):
            raise TypeError(f"{cls.__name__}.spec must be a ToolSpec")
        if "apply" not in cls.__dict__ and not any("apply" in b.__dict__ for b in cls.__mro__[1:-1] if b is not Tool):
            raise TypeError(f"{cls.__name__} declares a spec but no apply()")

    def __init__(self) -> None:
        self._ready = False

    def setup(self) -> None:
        """Load models or tables; called once before the first :meth:`apply`. Default: nothing."""

    def missing(self) -> str | None:
        """What the tool needs to run and lacks here (trained weights, a model), or ``None`` when it can run.

        A cheap check (nothing is loaded); the catalogue shows it and planners leave such tools out.
        """
        return None

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Parameters for restoring ``target`` given the assessor's ``report`` (default: none).

        Tools override this to map estimated physical parameters (noise sigma, blur radius, JPEG
        quality, ...) onto their own parameters; values must lie inside the declared ranges.
        """
        return {}

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Restore ``image`` (float32 HxWx3 in [0, 1]) with validated ``params``; return the result."""
        raise NotImplementedError

    def __call__(self, image: np.ndarray, params: dict[str, Any] | None = None) -> ToolResult:
        """Validate input and params, run the tool, apply ``strength`` blending, and time it.

        Raises:
            ToolError: when the tool raises or returns an invalid image.
        """
        check_image(image)
        resolved = self.spec.resolve(params)
        start = time.perf_counter()
        try:
            if not self._ready:
                self.setup()
                self._ready = True
            out = self.apply(image, **resolved)
        except ToolError:
            raise
        except Exception as exc:  # a failing tool fails one step, not the run
            raise ToolError(f"{self.spec.name} failed: {type(exc).__name__}: {exc}") from exc
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 3 or out.shape[2] != 3:
            raise ToolError(f"{self.spec.name} returned shape {out.shape}, expected (H, W, 3)")
        if not np.isfinite(out).all():
            raise ToolError(f"{self.spec.name} returned NaN or inf values")
        out = np.clip(out, 0.0, 1.0)
        strength = resolved.get("strength")
        if strength is not None and strength < 1.0 and out.shape == image.shape:
            out = (strength * out + (1.0 - strength) * image).astype(np.float32)
        return ToolResult(image=out, params=resolved, seconds=time.perf_counter() - start)


def check_image(image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is a finite float32 (H, W, 3) array in [0, 1]."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.float32:
        raise ValueError(f"expected float32 pixels in [0, 1], got {image.dtype}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}; tools need at least 8x8 pixels")


class ToolRegistry:
    """Tools keyed by name; unknown names raise an error with close matches."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Tool]] = {}
        self._instances: dict[str, Tool] = {}

    def register(self, cls: type[Tool]) -> type[Tool]:
        """Add a tool class (usable as a decorator). Registering a name twice is refused."""
        name = cls.spec.name
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"a tool named {name!r} is already registered ({self._classes[name].__name__})")
        self._classes[name] = cls
        return cls

    def add_instance(self, tool: Tool) -> None:
        """Register a ready-made tool instance (e.g. a user checkpoint or a test fake)."""
        self._classes[tool.spec.name] = type(tool)
        self._instances[tool.spec.name] = tool

    def names(self) -> list[str]:
        """All registered tool names, sorted."""
        return sorted(self._classes)

    def specs(self) -> list[ToolSpec]:
        """All tool specs, sorted by name."""
        return [self._classes[n].spec for n in self.names()]

    def for_degradation(self, degradation: Degradation) -> list[ToolSpec]:
        """Specs of the tools that declare they restore ``degradation``."""
        return [s for s in self.specs() if degradation in s.restores]

    def runnable(self) -> list[str]:
        """Names of the tools that have what they need to run here (:meth:`Tool.missing` is ``None``)."""
        return [name for name in self.names() if self.get(name).missing() is None]

    def get(self, name: str) -> Tool:
        """The (lazily created, cached) instance of tool ``name``."""
        if name not in self._classes:
            import difflib

            close = difflib.get_close_matches(name, self.names(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.names())}"
            raise KeyError(f"unknown tool {name!r}{hint}")
        if name not in self._instances:
            self._instances[name] = self._classes[name]()
        return self._instances[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes


#: The process-wide registry; ``tools.default_registry()`` fills it with the built-in tools.
REGISTRY = ToolRegistry()


def register_tool(cls: type[Tool]) -> type[Tool]:
    """Class decorator adding a tool to the process-wide :data:`REGISTRY`."""
    return REGISTRY.register(cls)
