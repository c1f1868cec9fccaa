"""Data contracts passed between perception, planning, verification and traces.

These are pydantic models so that they validate on creation and serialise to JSON for traces
and checkpoints without custom code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agent.degradations import Degradation


class DegradationEstimate(BaseModel):
    """What the assessor believes about one degradation type in one image."""

    probability: float = Field(ge=0.0, le=1.0, description="probability that the degradation is present")
    severity: float = Field(ge=0.0, le=1.0, description="0 = none, 1 = as strong as the synthesis ranges go")
    params: dict[str, float] = Field(default_factory=dict, description="estimated physical parameters")


class DegradationReport(BaseModel):
    """Per-type presence probability, severity and parameters, plus which assessor produced it."""

    assessor: str
    estimates: dict[Degradation, DegradationEstimate]
    measurements: dict[str, float] = Field(default_factory=dict, description="raw estimator outputs")
    seconds: float = 0.0

    def present(self, threshold: float = 0.5) -> list[Degradation]:
        """Degradations whose probability reaches ``threshold``, most probable first."""
        found = [(d, e.probability) for d, e in self.estimates.items() if e.probability >= threshold]
        return [d for d, _ in sorted(found, key=lambda x: -x[1])]

    def probability(self, degradation: Degradation) -> float:
        """Presence probability of ``degradation`` (0 when the assessor does not cover it)."""
        est = self.estimates.get(degradation)
        return est.probability if est else 0.0

    def severity(self, degradation: Degradation) -> float:
        """Severity of ``degradation`` (0 when the assessor does not cover it)."""
        est = self.estimates.get(degradation)
        return est.severity if est else 0.0

    def dominant(self, threshold: float = 0.5) -> Degradation | None:
        """The most probable degradation at or above ``threshold``; ``None`` means the image looks clean."""
        present = self.present(threshold)
        return present[0] if present else None

    def summary(self) -> dict[str, Any]:
        """Compact ``{name: [probability, severity]}`` for logs and tables."""
        return {d.value: [round(e.probability, 3), round(e.severity, 3)] for d, e in self.estimates.items()}
