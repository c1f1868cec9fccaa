r"""The Restora agent as one LangGraph ``StateGraph``.

    ingest -> perceive -> plan --(step)--> act -> verify --(retry)--> act
                           ^  \--(done)--> finish        |
                           \------(accepted / rolled back)

Every node reads pixels from the run directory and writes new pixels there, so the state and
its checkpoints hold only paths and small records; a killed run resumes from its last
checkpoint and produces the same output as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent import artifacts
from agent.context import RunContext
from agent.degradations import Degradation
from agent.iqa import IQAScore
from agent.planning.rule_planner import Intent, expand_candidates, next_step, parse_request
from agent.report import DegradationReport
from agent.state import InputState, State
from agent.verify import step_features, structural_fidelity, verify_final, verify_step
from tools.base import ToolError


def _report(data: dict[str, Any]) -> DegradationReport:
    return DegradationReport.model_validate(data)


def _iqa(data: dict[str, Any]) -> IQAScore:
    return IQAScore(values=dict(data.get("values", {})), lower_better=dict(data.get("lower_better", {})))


def ingest(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Read and validate the input, keep a byte copy, and store normalised pixels."""
    start = time.perf_counter()
    ctx = runtime.context
    run_dir = Path(state["run_dir"])
    loaded, info = artifacts.ingest_input(Path(state["input_path"]), run_dir, ctx.policy)
    intent = parse_request(state.get("request"))
    return {
        "input_info": info,
        "input_artifact": loaded,
        "image_path": loaded,
        "intent": intent.to_dict(),
        "handled": [],
        "accepted": [],
        "frames": [],
        "backtracks": 0,
        "tool_calls": 0,
        "steps_done": 0,
        "step": None,
        "candidate": None,
        "status": "running",
        "timings": {"io": time.perf_counter() - start},
    }


def perceive(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Assess the input: per-type probability, severity, parameters; and NR-IQA scores."""
    ctx = runtime.context
    image = artifacts.read(state["image_path"])
    start = time.perf_counter()
    ctx.iqa.active  # noqa: B018  (loads the metrics once per process; timed as setup, not verification)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    report = ctx.assessor.assess(image)
    perception = time.perf_counter() - start
    iqa = ctx.iqa.score(image)
    verification = time.perf_counter() - start - perception
    report_dict = report.model_dump(mode="json")
    return {
        "input_report": report_dict,
        "report": report_dict,
        "input_iqa": iqa.to_dict(),
        "iqa": iqa.to_dict(),
        "timings": {"setup": setup, "perception": perception, "verification": verification},
    }


def plan(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Choose the next step (target degradation and candidate tools) from the current report."""
    ctx = runtime.context
    budgets = ctx.policy.budgets
    if state.get("steps_done", 0) >= budgets.max_steps or state.get("tool_calls", 0) >= budgets.max_tool_calls:
        return {"step": None}
    spent = sum(state.get("timings", {}).get(k, 0.0) for k in ("tools", "perception", "verification", "io"))
    if budgets.time_budget_s is not None and spent >= budgets.time_budget_s:
        return {
            "step": None,
            "attempts": [
                {
                    "decision": "stop",
                    "stopped_by": "time_budget",
                    "reason": f"time budget {budgets.time_budget_s}s spent",
                }
            ],
        }
    intent = Intent.from_dict(state.get("intent"))
    if intent.needs_clarification:
        question = intent.clarification.question if intent.clarification else "please rephrase the request"
        stop = {"decision": "stop", "stopped_by": "unclear_request", "reason": f"request unclear: {question}"}
        return {"step": None, "attempts": [stop]}
    update: dict[str, Any] = {}
    planned = state.get("model_plan")
    if ctx.planner is not None and planned is None:
        start = time.perf_counter()
        image = artifacts.read(state["image_path"])
        result = ctx.planner.plan(image, _report(state["report"]), state.get("request"), intent)
        planned = list(result.steps)
        update.update(
            model_plan=planned,
            planner_record=result.record.to_dict(),
            timings={"planning": time.perf_counter() - start},
        )
    step = _model_step(state, planned or [], intent, ctx) if planned else None
    if step is not None:
        update["model_plan"] = [s for s in planned or [] if s["target"] != step["target"]]
    else:
        step = next_step(
            _report(state["report"]), state.get("handled", []), intent, ctx.policy, ctx.tools, state.get("hidden")
        )
    if step is not None and not step["attempts"]:
        # No tool can restore this type under the policy: record it and move on.
        return update | {
            "step": None,
            "handled": [*state.get("handled", []), step["target"]],
            "attempts": [{"target": step["target"], "decision": "skip", "reason": "no candidate tool in policy"}],
        }
    return update | {"step": step, "steps_done": state.get("steps_done", 0) + (step is not None)}


def _model_step(state: State, planned: list[dict[str, Any]], intent: Intent, ctx: RunContext) -> dict[str, Any] | None:
    """The next step of a model's plan that is still to do: its tool first, the policy's candidates as retries."""
    handled = set(state.get("handled", []))
    for proposal in planned:
        target = Degradation(proposal["target"])
        if target.value in handled or not intent.allows(target) or proposal["tool"] not in ctx.tools:
            continue
        tool = ctx.tools.get(proposal["tool"])
        first = {"tool": proposal["tool"], "params": tool.spec.resolve(dict(proposal.get("params", {})))}
        retries = expand_candidates(ctx.policy, ctx.tools, target, _report(state["report"]), intent)
        attempts = [first, *[a for a in retries if a != first]][: ctx.policy.budgets.max_attempts_per_step]
        return {
            "target": target.value,
            "attempts": attempts,
            "attempt": 0,
            "rationale": f"model plan: {proposal.get('rationale', '')}".strip(),
        }
    return None


def act(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Run the current candidate tool on the currently accepted image."""
    ctx = runtime.context
    step = state["step"]
    assert step is not None
    attempt = step["attempts"][step["attempt"]]
    index = state.get("tool_calls", 0)
    image = artifacts.read(state["image_path"])
    candidate: dict[str, Any] = {"tool": attempt["tool"], "params": attempt["params"], "index": index}
    start = time.perf_counter()
    try:
        result = ctx.tools.get(attempt["tool"])(image, attempt["params"])
    except (ToolError, ValueError, KeyError) as exc:
        candidate.update(error=str(exc), seconds=time.perf_counter() - start)
        return {"candidate": candidate, "tool_calls": index + 1, "timings": {"tools": candidate["seconds"]}}
    tool_seconds = time.perf_counter() - start
    io_start = time.perf_counter()
    candidate["path"] = artifacts.write(Path(state["run_dir"]), f"attempt_{index:02d}_{attempt['tool']}", result.image)
    candidate["seconds"] = tool_seconds
    return {
        "candidate": candidate,
        "tool_calls": index + 1,
        "timings": {"tools": tool_seconds, "io": time.perf_counter() - io_start},
    }


def verify(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Accept the candidate, or move to the next attempt, or roll the step back."""
    ctx = runtime.context
    step = dict(state["step"] or {})
    candidate = state["candidate"] or {}
    target = Degradation(step["target"])
    record: dict[str, Any] = {
        "step": state.get("steps_done", 0),
        "target": target.value,
        "tool": candidate.get("tool"),
        "params": candidate.get("params"),
        "seconds": round(candidate.get("seconds", 0.0), 4),
    }
    timings: dict[str, float] = {}
    before = _report(state["report"])
    if "error" in candidate:
        record.update(decision="retry", reason=f"tool failed: {candidate['error']}")
        verdict_accept = False
    else:
        io_start = time.perf_counter()
        prev_image = artifacts.read(state["image_path"])
        image = artifacts.read(candidate["path"])
        timings["io"] = time.perf_counter() - io_start
        start = time.perf_counter()
        after = ctx.assessor.assess(image)
        timings["perception"] = time.perf_counter() - start
        start = time.perf_counter()
        after_iqa = ctx.iqa.score(image)
        fidelity = structural_fidelity(prev_image, image)
        intent = Intent.from_dict(state.get("intent"))
        last_seen = state.get("hidden", {}).get(target.value)
        verdict = verify_step(
            target,
            before,
            after,
            _iqa(state["iqa"]),
            after_iqa,
            fidelity,
            ctx.policy.thresholds,
            intent.protect,
            target_before=(last_seen[0], last_seen[1]) if last_seen else None,
            done=[Degradation(accepted["target"]) for accepted in state.get("accepted", [])],
        )
        strength = float((candidate.get("params") or {}).get("strength", 1.0))
        features = step_features(
            target,
            prev_image,
            image,
            before,
            after,
            verdict.checks.get("iqa_gain"),
            fidelity,
            ctx.policy.thresholds,
            strength,
        )
        timings["verification"] = time.perf_counter() - start
        # A step the user asked for in so many words (chat: "less denoising") is kept whatever the verifier
        # thinks; its opinion is recorded.
        verdict_accept = verdict.accept or bool(step.get("forced"))
        reason = verdict.reason if not step.get("forced") else f"requested by the user (verifier: {verdict.reason})"
        record.update(
            decision="accept" if verdict_accept else "retry",
            reason=reason,
            checks=verdict.checks,
            report_after=after.summary(),
            iqa_after=after_iqa.values,
            artifact=candidate["path"],
            features={name: round(value, 5) for name, value in features.items()},
        )
    out: dict[str, Any] = {"candidate": None, "timings": timings}
    strategy = ctx.policy.strategy
    passed = list(step.get("passed", []))
    if verdict_accept:
        record["score"] = round(_step_score(ctx, target, prev_image, image, features, record), 4)
        passed.append(
            {
                "record": record,
                "image_path": candidate["path"],
                "report": after.model_dump(mode="json"),
                "iqa": after_iqa.to_dict(),
            }
        )
    step["attempt"] = step["attempt"] + 1
    out_of_budget = state.get("tool_calls", 0) >= ctx.policy.budgets.max_tool_calls
    exhausted = step["attempt"] >= len(step["attempts"]) or out_of_budget
    compare_more = strategy.name == "best_of_k" and len(passed) < strategy.k and not exhausted
    if verdict_accept and compare_more:
        record["decision"] = "passed"
        record["reason"] += f"; kept for comparison ({len(passed)} of up to {strategy.k} candidates)"
        out.update(step={**step, "passed": passed}, attempts=[record])
        return out
    if passed:
        if verdict_accept and len(passed) == 1:
            logged = []  # greedy: the accepted record itself is logged below
        elif verdict_accept:
            logged = [record | {"decision": "passed"}]
        else:
            logged = [record]
        out.update(_accept_best(state, step, passed, target, logged))
        return out
    if not exhausted:
        out.update(step=step, attempts=[record])
        return out
    record["decision"] = "rollback"
    record["reason"] += "; no candidate left, step rolled back"
    frames = list(state.get("frames", []))
    backtracks = state.get("backtracks", 0)
    if strategy.name == "tree" and backtracks < strategy.max_backtracks and not out_of_budget and frames:
        frame = frames[-1]
        reopened = dict(frame["step"])
        if reopened["attempt"] + 1 < len(reopened["attempts"]):
            reopened["attempt"] += 1
            reopened.pop("passed", None)
            undone = state["accepted"][-1]
            backtrack = {
                "step": record["step"],
                "target": undone["target"],
                "tool": undone["tool"],
                "decision": "backtrack",
                "reason": (
                    f"no acceptable candidate for {target.value}; undoing the accepted {undone['target']} step "
                    f"({undone['tool']}) to try its next candidate"
                ),
            }
            out.update(
                step=reopened,
                image_path=frame["image_path"],
                report=frame["report"],
                iqa=frame["iqa"],
                handled=[h for h in frame["handled"] if h != target.value],
                hidden=frame.get("hidden", {}),
                accepted=state["accepted"][:-1],
                frames=frames[:-1],
                backtracks=backtracks + 1,
                attempts=[record, backtrack],
            )
            return out
    out.update(step=None, handled=[*state.get("handled", []), target.value], attempts=[record])
    return out


def _step_score(
    ctx: RunContext,
    target: Degradation,
    before_image: Any,
    after_image: Any,
    features: dict[str, float],
    record: dict[str, Any],
) -> float:
    """How good an accepted candidate is, for best-of-k: higher wins.

    A scorer on the context (e.g. the reference-based one that learns the score) comes first; then the
    policy's learned model of the step's PSNR gain for this target; else the verifier's score:
    degradation-load drop plus NR-IQA gain.
    """
    if ctx.step_scorer is not None:
        return float(
            ctx.step_scorer(
                target=target, before_image=before_image, after_image=after_image, features=features, record=record
            )
        )
    model = ctx.policy.strategy.score.model_for(target)
    if model is not None:
        return model.predict(features)
    return features["load_drop"] + features["iqa_gain"]


def _accept_best(
    state: State,
    step: dict[str, Any],
    passed: list[dict[str, Any]],
    target: Degradation,
    logged: list[dict[str, Any]],
) -> dict[str, Any]:
    """Accept the best-scoring verified candidate of a step and remember how to undo it (tree strategy)."""
    best = max(passed, key=lambda entry: entry["record"]["score"])
    chosen = dict(best["record"])
    chosen["decision"] = "accept"
    if len(passed) > 1:
        scores = ", ".join(f"{entry['record']['tool']}={entry['record']['score']}" for entry in passed)
        chosen["reason"] += f"; best of {len(passed)} verified candidates ({scores})"
    frame = {
        "image_path": state["image_path"],
        "report": state["report"],
        "iqa": state["iqa"],
        "handled": list(state.get("handled", [])),
        "hidden": dict(state.get("hidden", {})),
        "step": {k: v for k, v in step.items() if k != "passed"} | {"attempt": step["attempt"] - 1},
    }
    return {
        "image_path": best["image_path"],
        "report": best["report"],
        "iqa": best["iqa"],
        "handled": [
            *[h for h in state.get("handled", []) if h not in chosen["checks"].get("revealed", {})],
            target.value,
            *chosen["checks"].get("unfounded", {}),
        ],
        # what this step hid stays to be restored, judged against how it looked before (HIDES)
        "hidden": state.get("hidden", {}) | chosen["checks"].get("hidden", {}),
        "accepted": [*state.get("accepted", []), chosen],
        "frames": [*state.get("frames", []), frame],
        "step": None,
        "attempts": [*logged, chosen],
    }


def finish(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Final check against the input, then write the output, the trace and the report."""
    ctx = runtime.context
    run_dir = Path(state["run_dir"])
    timings: dict[str, float] = {}
    if state.get("accepted"):
        start = time.perf_counter()
        input_image = artifacts.read(state["input_artifact"])
        output_image = artifacts.read(state["image_path"])
        timings["io"] = time.perf_counter() - start
        start = time.perf_counter()
        fidelity = structural_fidelity(input_image, output_image)
        verdict = verify_final(
            _report(state["input_report"]),
            _report(state["report"]),
            _iqa(state["input_iqa"]),
            _iqa(state["iqa"]),
            fidelity,
            ctx.policy.thresholds,
            targets=[Degradation(step["target"]) for step in state["accepted"]],
            step_tolerances=[
                float(step["checks"]["iqa_tolerance"])
                for step in state["accepted"]
                if step.get("checks", {}).get("iqa_tolerance") is not None
            ],
        )
        timings["verification"] = time.perf_counter() - start
        if not ctx.policy.thresholds.final_check:
            final = {"kept": "output", "reason": "final check disabled by policy", "checks": verdict.checks}
        elif verdict.accept:
            final = {"kept": "output", "reason": verdict.reason, "checks": verdict.checks}
        else:
            final = {"kept": "input", "reason": verdict.reason + "; returning the input", "checks": verdict.checks}
    else:
        final = {"kept": "input", "reason": "nothing to fix or no step improved the image; returning the input"}
    result_artifact = state["image_path"] if final["kept"] == "output" else state["input_artifact"]
    start = time.perf_counter()
    final["artifact"] = result_artifact
    final["output"] = artifacts.write_outputs(
        run_dir,
        result_artifact,
        state.get("output_path"),
        state["input_path"],
        bit_depth=int(state.get("input_info", {}).get("bit_depth", 8)),
    )
    timings["io"] = timings.get("io", 0.0) + time.perf_counter() - start
    return {"final": final, "status": "done", "timings": timings}


def route_after_plan(state: State) -> Literal["act", "finish"]:
    """Act when a step was planned, otherwise finish."""
    return "act" if state.get("step") else "finish"


def route_after_verify(state: State) -> Literal["act", "plan"]:
    """Retry with the next candidate while the step is open; else plan the next step."""
    return "act" if state.get("step") else "plan"


def build_graph() -> StateGraph[State, RunContext, InputState, State]:
    """The uncompiled graph (compile it with a checkpointer of your choice)."""
    builder = StateGraph(State, context_schema=RunContext, input_schema=InputState)
    builder.add_node("ingest", ingest)
    builder.add_node("perceive", perceive)
    builder.add_node("plan", plan)
    builder.add_node("act", act)
    builder.add_node("verify", verify)
    builder.add_node("finish", finish)
    builder.add_edge(START, "ingest")
    builder.add_edge("ingest", "perceive")
    builder.add_edge("perceive", "plan")
    builder.add_conditional_edges("plan", route_after_plan)
    builder.add_edge("act", "verify")
    builder.add_conditional_edges("verify", route_after_verify)
    builder.add_edge("finish", END)
    return builder


#: The compiled graph without a checkpointer, for ``langgraph.json`` and LangGraph's tools
#: (their server adds its own persistence). ``agent.runner`` compiles with SQLite.
graph = build_graph().compile(name="Restora")
