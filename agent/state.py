"""The graph's state: a narrow public input and the fuller internal state.

Only small JSON-friendly values live here (paths, reports, records); pixels live as files in
the run directory, so checkpoints stay small and a resumed run reads exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired, TypedDict


def add_timings(left: dict[str, float] | None, right: dict[str, float] | None) -> dict[str, float]:
    """Reducer summing per-category seconds reported by nodes."""
    out = dict(left or {})
    for key, value in (right or {}).items():
        out[key] = out.get(key, 0.0) + float(value)
    return out


class InputState(TypedDict):
    """What a caller provides to start a run."""

    input_path: str
    """The image file to restore (never modified)."""
    run_dir: str
    """Folder holding every artifact of this run (created if missing)."""
    request: NotRequired[str | None]
    """Optional natural-language request ("remove the haze but keep the grain")."""
    output_path: NotRequired[str | None]
    """Where the final image is also written (besides ``run_dir/output.png``)."""


class State(InputState, total=False):
    """Everything the nodes read and write while restoring one image."""

    input_info: dict[str, Any]
    """What ingest found and normalised (mode, bit depth, orientation, size, notes)."""
    input_artifact: str
    """Normalised input pixels (``.npy`` in the run directory)."""
    image_path: str
    """The currently accepted image (``.npy`` in the run directory)."""
    input_report: dict[str, Any]
    """Assessor report of the input."""
    report: dict[str, Any]
    """Assessor report of the currently accepted image."""
    input_iqa: dict[str, Any]
    """No-reference IQA scores of the input."""
    iqa: dict[str, Any]
    """No-reference IQA scores of the currently accepted image."""
    intent: dict[str, Any]
    """What the request asks: degradations to fix only / to protect."""
    handled: list[str]
    """Degradations already addressed (accepted or given up), never planned again."""
    hidden: dict[str, list[float]]
    """Degradations an accepted step hid without removing them (``agent.degradations.HIDES``): type ->
    [probability, severity] as last seen; still to restore unless handled."""
    step: dict[str, Any] | None
    """The step in progress: target degradation, candidate list, attempt index, rationale."""
    candidate: dict[str, Any] | None
    """The result of the last tool call, awaiting verification."""
    attempts: Annotated[list[dict[str, Any]], operator.add]
    """Every tool call with its metrics, decision and reason (the trace)."""
    accepted: list[dict[str, Any]]
    """Accepted steps in order, with the artifact of each intermediate image."""
    model_plan: list[dict[str, Any]]
    """Steps a model planner proposed and that are still to do (absent with the rule planner)."""
    planner_record: dict[str, Any]
    """What the model planner did: replies, validation errors, fallback and why (for the trace)."""
    frames: list[dict[str, Any]]
    """Per accepted step, what undoing it restores (image, report, handled, the step's candidates): tree strategy."""
    backtracks: int
    """Accepted steps undone so far by the tree strategy."""
    tool_calls: int
    """Tool calls so far (bounded by the policy's budget)."""
    steps_done: int
    """Steps planned so far (accepted or rolled back)."""
    timings: Annotated[dict[str, float], add_timings]
    """Seconds per category: tools, perception, verification, io."""
    final: dict[str, Any]
    """The final decision: output kept or input returned, and why."""
    status: str
    """"running", "done" or "failed"."""
