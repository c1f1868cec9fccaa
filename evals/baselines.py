"""Methods compared with the agent on the same image: identity, single tools, fixed chains, the oracle plan.

All of them take the tools, their parameter suggestions and the assessor from the agent's own machinery,
so that differences come from *which* steps are taken, not from how each tool is tuned:

* ``identity``: the input unchanged (the floor every method must beat);
* ``tool:<name>``: one tool, once, on the degradation it restores that the assessor finds most probable,
  with the tool's own ``suggest()`` parameters at full strength;
* ``chain:<name>``: a fixed sequence of tools applied to every image whatever it shows (``auto``: the
  reference policy's first tool for each degradation of the suite, in reverse physical order);
* ``oracle``: the true degradations from synthesis, undone in reverse physical order; each step is told the
  true parameters and keeps the candidate (every tool that restores the type, at the policy's strengths, or
  skipping the step) with the best PSNR against the clean image. It needs synthetic pairs.

:func:`run_agent` runs the agent itself through :func:`agent.runner.restore_image`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.degradations import Degradation, restoration_order
from agent.report import DegradationEstimate, DegradationReport

#: Tool families the baselines never run on their own (structural correction needs a generative step first).
EXCLUDED_FAMILIES = frozenset({"correction"})


@dataclass
class MethodResult:
    """What one method produced on one image."""

    image: np.ndarray
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def _params_json(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in params.items()}


class BaselineRunner:
    """Runs the baselines with one tool registry, assessor and reference policy (one per worker process)."""

    def __init__(self, registry: Any, assessor: Any, policy: Any) -> None:
        self.registry = registry
        self.assessor = assessor
        self.policy = policy

    # ------------------------------------------------------------------------------------------
    def identity(self, image: np.ndarray) -> MethodResult:
        """The input, unchanged."""
        return MethodResult(image=image)

    def _target(self, tool_name: str, report: DegradationReport) -> Degradation:
        spec = self.registry.get(tool_name).spec
        return max(spec.restores, key=lambda d: (report.probability(d), -spec.restores.index(d)))

    def _apply(
        self,
        image: np.ndarray,
        tool_name: str,
        target: Degradation,
        report: DegradationReport,
        fixed: dict[str, Any] | None = None,
        strength: float = 1.0,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        tool = self.registry.get(tool_name)
        params = {**tool.suggest(report, target), **(fixed or {})}
        if any(p.name == "strength" for p in tool.spec.params):
            params["strength"] = strength
        result = tool(image, params)
        out = result.image
        if out.shape != image.shape:  # a size-changing tool: back to the input size so metrics compare
            import cv2

            out = cv2.resize(out, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
        return out.astype(np.float32), _params_json(result.params)

    def single_tool(self, image: np.ndarray, tool_name: str) -> MethodResult:
        """``tool_name`` once, on its most probable target, with suggested parameters at full strength."""
        start = time.perf_counter()
        report = self.assessor.assess(image)
        target = self._target(tool_name, report)
        out, params = self._apply(image, tool_name, target, report)
        step = {"tool": tool_name, "target": target.value, "params": params}
        return MethodResult(out, [step], time.perf_counter() - start)

    def auto_chain(self, degradations: Sequence[Degradation]) -> list[str]:
        """The reference policy's first tool for each degradation, in restoration (reverse physical) order."""
        tools = []
        for degradation in restoration_order(list(degradations)):
            candidates = [c.tool for c in self.policy.candidates_for(degradation) if c.tool in self.registry]
            if candidates:
                tools.append(candidates[0])
        return tools

    def chain(self, image: np.ndarray, tools: Sequence[str]) -> MethodResult:
        """Apply ``tools`` in order, each on its most probable target with suggested parameters."""
        start = time.perf_counter()
        current, steps = image, []
        for tool_name in tools:
            report = self.assessor.assess(current)
            target = self._target(tool_name, report)
            current, params = self._apply(current, tool_name, target, report)
            steps.append({"tool": tool_name, "target": target.value, "params": params})
        return MethodResult(current, steps, time.perf_counter() - start)

    def _oracle_candidates(self, degradation: Degradation) -> list[tuple[str, dict[str, Any], float]]:
        seen: set[tuple[str, str, float]] = set()
        out: list[tuple[str, dict[str, Any], float]] = []
        policy_tools = [(c.tool, dict(c.params), list(c.strengths)) for c in self.policy.candidates_for(degradation)]
        others: list[tuple[str, dict[str, Any], list[float]]] = [
            (s.name, {}, [1.0])
            for s in self.registry.for_degradation(degradation)
            if s.family not in EXCLUDED_FAMILIES and s.name not in {t for t, _, _ in policy_tools}
        ]
        for name, fixed, strengths in policy_tools + others:
            if name not in self.registry:
                continue
            for strength in strengths or [1.0]:
                key = (name, repr(sorted(fixed.items())), float(strength))
                if key not in seen:
                    seen.add(key)
                    out.append((name, fixed, float(strength)))
        return out

    def oracle(
        self,
        image: np.ndarray,
        clean: np.ndarray,
        applied: Sequence[tuple[Degradation, dict[str, Any]]],
        score: Callable[[np.ndarray, np.ndarray], float] | None = None,
    ) -> MethodResult:
        """Undo the true degradations in reverse physical order, keeping the best candidate per step.

        Args:
            image: The degraded image.
            clean: Its clean source (the reference).
            applied: ``(degradation, parameters)`` as synthesis applied them.
            score: Higher-is-better full-reference score (default: PSNR on Y).

        """
        from evals.metrics import psnr
        from evals.synthesis import canonical_params

        score = score or psnr
        start = time.perf_counter()
        truth = {d: p for d, p in applied}
        current, current_score = image, score(image, clean)
        steps = []
        for degradation in restoration_order(list(truth)):
            report = self._true_report(current, truth)
            best: tuple[float, np.ndarray, dict[str, Any] | None] = (current_score, current, None)
            tried = 0
            for name, fixed, strength in self._oracle_candidates(degradation):
                try:
                    out, params = self._apply(current, name, degradation, report, fixed, strength)
                except Exception:  # a failing tool is just a bad candidate
                    continue
                tried += 1
                value = score(out, clean)
                if value > best[0]:
                    best = (value, out, {"tool": name, "params": params, "strength": strength})
            step: dict[str, Any] = {"target": degradation.value, "candidates": tried, "before": current_score}
            if best[2] is None:
                step.update(tool=None, decision="skip", after=current_score)
            else:
                step.update(best[2], decision="apply", after=best[0])
                current_score, current = best[0], best[1]
            step["true_params"] = canonical_params(degradation, truth[degradation])
            steps.append(step)
            truth.pop(degradation)
        return MethodResult(current, steps, time.perf_counter() - start)

    def _true_report(self, image: np.ndarray, truth: dict[Degradation, dict[str, Any]]) -> DegradationReport:
        """The assessor's report with the still-present true degradations set to their true parameters."""
        from evals.synthesis import canonical_params

        report = self.assessor.assess(image)
        estimates = dict(report.estimates)
        for degradation, params in truth.items():
            severity = float(np.clip(params.get("severity", 0.5), 0.0, 1.0))
            estimates[degradation] = DegradationEstimate(
                probability=1.0, severity=severity, params=canonical_params(degradation, params)
            )
        for degradation in list(estimates):
            if degradation not in truth and estimates[degradation].probability >= 0.5:
                # Types the synthesis did not apply are known to be absent.
                estimates[degradation] = DegradationEstimate(probability=0.0, severity=0.0, params={})
        return report.model_copy(update={"estimates": estimates, "assessor": "oracle"})


def run_agent(image: np.ndarray, context: Any, workdir: str | Path | None = None) -> MethodResult:
    """Run the agent on ``image`` (written as an 8-bit PNG first) and collect its output and trace files.

    Returns:
        The output image, the accepted steps, the wall time, ``extra`` with ``kept``/``reason``/``tool_calls``,
        and ``files`` holding the run's ``trace.json`` and ``report.html``.

    """
    from agent.imageio import load_image, save_image
    from agent.runner import restore_image

    with tempfile.TemporaryDirectory(prefix="restora-eval-", dir=workdir) as tmp:
        folder = Path(tmp)
        input_path = save_image(image, folder / "input.png")
        start = time.perf_counter()
        result = restore_image(input_path, folder / "run", context, output_path=folder / "output.png")
        seconds = time.perf_counter() - start
        if result.output_path is None:
            raise RuntimeError(f"the agent wrote no output: {result.reason}")
        out = load_image(result.output_path, max_pixels=None).image
        files = {}
        for name in ("trace.json", "report.html"):
            path = folder / "run" / name
            if path.is_file():
                files[name] = path.read_bytes()
    if out.shape != image.shape:
        import cv2

        out = cv2.resize(out, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
    steps = [
        {"tool": s.get("tool"), "target": s.get("target"), "params": s.get("params", {})}
        for s in result.trace.get("accepted", [])
    ]
    extra = {"kept": result.kept, "reason": result.reason, "tool_calls": result.trace.get("tool_calls", 0)}
    return MethodResult(out.astype(np.float32), steps, seconds, extra, files)
