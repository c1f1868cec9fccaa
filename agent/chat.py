"""A conversation over one image: ``restora chat IMAGE`` and the same API from Python.

Each turn is parsed into an intent (:func:`agent.planning.request.parse_request`, with the previous turn's
intent as context). A first request runs the agent; follow-ups edit what it did instead of starting again:

* "less denoising" / "more" - the step is re-run at a lower/higher strength from the checkpoint taken just
  before it, then the agent re-plans what follows from there;
* "undo the last step" / "skip dehazing" - the run is forked from the checkpoint before that step, which is
  marked skipped, and the agent continues from there;
* "also remove the haze" - the finished run is forked before its final check with the wider intent;
* "save it as out.jpg" - the current result is written (never over an existing file or the input);
* a request the parser cannot read gets its question back, and nothing runs.

All turns share one LangGraph thread in one SQLite checkpoint file, so every fork starts from a real
checkpoint of the earlier run (nothing is recomputed before it). With ``approve`` set, the graph is
interrupted before every tool call and the callback answers yes (run it), no (skip this step) or a
dict of parameters to use instead.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.degradations import Degradation

if TYPE_CHECKING:  # the graph, LangGraph and the tools load on first use, not when the CLI builds its parser
    from langchain_core.runnables import RunnableConfig

    from agent.context import RunContext

logger = logging.getLogger(__name__)

CHAT_THREAD = "chat"
#: What an approval callback returns: ``True`` (run), ``False`` (skip the step) or replacement parameters.
Approval = bool | dict[str, Any]
Approver = Callable[[dict[str, Any]], Approval]


@dataclass
class Turn:
    """What one conversation turn understood, did and produced."""

    text: str
    understood: str
    question: str | None = None
    action: str = "none"
    plan: list[str] = field(default_factory=list)
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    kept: str | None = None
    output: Path | None = None
    message: str = ""

    def render(self) -> str:
        """The turn as terminal text."""
        lines = [f"understood: {self.understood}"]
        if self.question:
            lines.append(f"question: {self.question}")
            return "\n".join(lines)
        if self.plan:
            lines.append("plan: " + " -> ".join(self.plan))
        if self.metrics_after:
            pairs = ", ".join(
                f"{name} {self.metrics_before.get(name, float('nan')):.3g} -> {value:.3g}"
                for name, value in self.metrics_after.items()
            )
            lines.append(f"metrics: {pairs}")
        if self.kept:
            lines.append(f"kept: {self.kept}")
        if self.output:
            lines.append(f"result: {self.output}")
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)


class ChatSession:
    """One image, many turns; results and checkpoints live in ``workdir``.

    Args:
        image: The image to restore (never modified).
        workdir: Folder of the session (checkpoints, artifacts, one result per turn). Created if missing.
        context: Shared resources (policy, tools, assessor); the default context when omitted.
        approve: Called before every tool call with the planned attempt; see :data:`Approval`.
    """

    def __init__(
        self,
        image: str | Path,
        workdir: str | Path,
        context: RunContext | None = None,
        approve: Approver | None = None,
    ) -> None:
        from langgraph.checkpoint.sqlite import SqliteSaver

        from agent.context import RunContext
        from agent.graph import graph as compiled_graph

        self.image = Path(image)
        if not self.image.is_file():
            raise FileNotFoundError(f"{self.image} does not exist or is not a file")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.context = context or RunContext()
        self.approve = approve
        self.intent: Any = None
        self.turns: list[Turn] = []
        self._conn = sqlite3.connect(self.workdir / "checkpoints.sqlite", check_same_thread=False)
        update: dict[str, Any] = {"checkpointer": SqliteSaver(self._conn)}
        if approve is not None:
            update["interrupt_before_nodes"] = ["act"]
        self._graph = compiled_graph.copy(update=update)
        self._config: RunnableConfig = {"configurable": {"thread_id": CHAT_THREAD}, "recursion_limit": 200}

    # ------------------------------------------------------------------------------------ public API

    def send(self, text: str) -> Turn:
        """Handle one user message and return what was understood and done."""
        from agent.planning.request import parse_request

        intent = parse_request(text, previous=self.intent)
        turn = Turn(text=text, understood=describe_intent(intent))
        if intent.needs_clarification:
            turn.question = intent.clarification.question if intent.clarification else "please rephrase"
            self.turns.append(turn)
            return turn
        state = self._state()
        started = time.perf_counter()
        if state and not intent.edits:
            intent = _protections_as_edits(intent, state)
        if intent.edits and state:
            self._apply_edits(intent, state, turn)
        elif not state or any(e.action == "reset" for e in intent.edits):
            turn.action = "run"
            self._run_fresh(intent, text)
        else:
            turn.action = "extend"
            self._extend(intent, state, turn)
        self.intent = intent.model_copy(update={"edits": []})
        if turn.action not in ("export", "none"):
            self._finish_turn(turn, time.perf_counter() - started)
        self.turns.append(turn)
        return turn

    def close(self) -> None:
        """Close the checkpoint database."""
        self._conn.close()

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def result(self) -> Path | None:
        """The latest result image (``None`` before the first run)."""
        return self.turns_with_output[-1].output if self.turns_with_output else None

    @property
    def turns_with_output(self) -> list[Turn]:
        """Turns that produced an image."""
        return [t for t in self.turns if t.output is not None]

    # ------------------------------------------------------------------------------------ running

    def _state(self) -> dict[str, Any]:
        return dict(self._graph.get_state(self._config).values)

    def _invoke(self, payload: Any, config: RunnableConfig | None = None) -> None:
        """Run until the end, asking the approver at every interrupt before a tool call."""
        self._graph.invoke(payload, config or self._config, context=self.context, durability="sync")
        # A fork's config pins the checkpoint it started from; from here on follow the thread's newest one.
        thread = (config or self._config)["configurable"]["thread_id"]
        self._config = {"configurable": {"thread_id": thread}, "recursion_limit": 200}
        while True:
            snapshot = self._graph.get_state(self._config)
            if not snapshot.next:
                return
            if snapshot.next != ("act",) or self.approve is None:
                self._graph.invoke(None, self._config, context=self.context, durability="sync")
                continue
            step = dict(snapshot.values["step"])
            attempt = dict(step["attempts"][step["attempt"]])
            answer = self.approve({"target": step["target"], **attempt})
            if answer is True:
                pass
            elif answer is False:
                self._graph.update_state(
                    self._config,
                    {
                        "step": None,
                        "handled": [*snapshot.values.get("handled", []), step["target"]],
                        "attempts": [
                            {
                                "target": step["target"],
                                "tool": attempt["tool"],
                                "decision": "skip",
                                "reason": "declined by the user",
                            }
                        ],
                    },
                    as_node="verify",
                )
            else:
                tool = self.context.tools.get(attempt["tool"])
                params = tool.spec.resolve({**attempt["params"], **dict(answer)})
                attempts = list(step["attempts"])
                attempts[step["attempt"]] = {**attempt, "params": params}
                self._graph.update_state(self._config, {"step": {**step, "attempts": attempts}}, as_node="plan")
            self._graph.invoke(None, self._config, context=self.context, durability="sync")

    def _run_fresh(self, intent: Any, text: str) -> None:
        """Start a new thread on the input image (the request is parsed again by the graph's ingest)."""
        self._config = {
            "configurable": {"thread_id": f"{CHAT_THREAD}-{len(self.turns)}"},
            "recursion_limit": 200,
        }
        self._invoke(
            {
                "input_path": str(self.image),
                "run_dir": str(self.workdir / "run"),
                "request": text,
            }
        )

    def _branch(self) -> list[Any]:
        """The snapshots of the current branch, newest first (forks leave other branches behind)."""
        snapshots = []
        snapshot: Any = self._graph.get_state(self._config)
        while snapshot is not None and snapshot.values:
            snapshots.append(snapshot)
            parent = snapshot.parent_config
            snapshot = self._graph.get_state(parent) if parent else None
        return snapshots

    def _before_step(self, target: str | None) -> tuple[Any, dict[str, Any]] | None:
        """The checkpoint just before the accepted step for ``target`` (the last one when ``None``) ran."""
        accepted = self._state().get("accepted", [])
        matches = [i for i, a in enumerate(accepted) if target is None or a["target"] == target]
        if not matches:
            return None
        index = matches[-1]
        record = accepted[index]
        for snapshot in self._branch():
            values = snapshot.values
            step = values.get("step")
            if (
                snapshot.next == ("act",)
                and step
                and step["target"] == record["target"]
                and len(values.get("accepted", [])) == index
            ):
                return snapshot, record
        return None

    def _apply_edits(self, intent: Any, state: dict[str, Any], turn: Turn) -> None:
        for edit in intent.edits:
            target = edit.target.value if edit.target is not None else None
            if edit.action == "export":
                turn.action = "export"
                turn.output = self._export(edit)
                turn.message = f"saved {turn.output}"
                continue
            if edit.action == "reset":
                turn.action = "run"
                self._run_fresh(intent.model_copy(update={"edits": []}), intent.text or "")
                continue
            found = self._before_step(target)
            if found is None:
                turn.message = f"no accepted {target or 'step'} to {edit.action}; nothing changed"
                continue
            snapshot, record = found
            values = snapshot.values
            merged = intent.model_copy(update={"edits": []})
            if edit.action in ("undo", "skip"):
                turn.action = edit.action
                merged = merged.model_copy(update={"skip": [*merged.skip, Degradation(record["target"])]})
                fork = self._graph.update_state(
                    snapshot.config,
                    {
                        "step": None,
                        "intent": merged.to_dict(),
                        "handled": [*values.get("handled", []), record["target"]],
                        "attempts": [
                            {
                                "target": record["target"],
                                "tool": record["tool"],
                                "decision": edit.action,
                                "reason": f"the user asked: {intent.text}",
                            }
                        ],
                    },
                    as_node="verify",
                )
            else:  # less / more
                turn.action = edit.action
                old = float(record["params"].get("strength", 1.0))
                amount = float(edit.amount or 0.5)
                if edit.action == "more" and old >= 1.0:
                    turn.message = f"{record['tool']} already ran at full strength; nothing stronger to do"
                    continue
                new = old * (1.0 - amount) if edit.action == "less" else min(1.0, old + (1.0 - old) * amount + 0.25)
                params = {**record["params"], "strength": round(max(new, 0.05), 3)}
                # Later steps on the same type (re-planned after the fork) keep the user's strength too.
                strengths = {**merged.strengths, Degradation(record["target"]): params["strength"]}
                merged = merged.model_copy(update={"strengths": strengths})
                step = dict(values["step"])
                step.update(
                    attempts=[{"tool": record["tool"], "params": params}],
                    attempt=0,
                    forced=True,
                    rationale=f"the user asked for {edit.action} ({intent.text})",
                )
                fork = self._graph.update_state(
                    snapshot.config, {"step": step, "intent": merged.to_dict()}, as_node="plan"
                )
            self._invoke(None, fork)

    def _extend(self, intent: Any, state: dict[str, Any], turn: Turn) -> None:
        """A new request on a finished run: fork before its final check and let the agent plan again."""
        snapshot = next((s for s in self._branch() if s.next == ("finish",)), None)
        if snapshot is None:
            self._run_fresh(intent, intent.text or "")
            return
        wanted = set(d.value for d in (intent.only or []))
        handled = [h for h in snapshot.values.get("handled", []) if h not in wanted]
        fork = self._graph.update_state(
            snapshot.config, {"intent": intent.to_dict(), "handled": handled}, as_node="verify"
        )
        self._invoke(None, fork)

    def _export(self, edit: Any) -> Path:
        from agent import artifacts
        from agent.imageio import save_image

        state = self._state()
        if not state.get("final"):
            raise ValueError("nothing to export yet; ask for a restoration first")
        name = edit.path or f"{self.image.stem}_restored.{edit.format or 'png'}"
        target = Path(name).expanduser()
        if not target.is_absolute():
            target = self.workdir / target
        if target.exists():
            raise FileExistsError(f"{target} exists; choose another name (results are never written over files)")
        if target.resolve() == self.image.resolve():
            raise ValueError(f"refusing to write over the input {self.image}")
        image = artifacts.read(state["final"]["artifact"])
        if target.suffix.lower() in ("", ".png"):
            return save_image(image, target.with_suffix(".png"), protect=[str(self.image)], overwrite=False)
        from PIL import Image

        from tools.imageops import to_uint8

        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(image)).save(target)
        return target

    def _finish_turn(self, turn: Turn, seconds: float) -> None:
        state = self._state()
        final = state.get("final") or {}
        turn.plan = [
            f"{a['target']}:{a['tool']}@{a['params'].get('strength', 1.0):g}" for a in state.get("accepted", [])
        ]
        turn.metrics_before = dict((state.get("input_iqa") or {}).get("values", {}))
        turn.metrics_after = dict((state.get("iqa") or {}).get("values", {})) if final.get("kept") == "output" else {}
        turn.kept = final.get("kept")
        if final.get("output"):
            out = self.workdir / f"turn_{len(self.turns) + 1:02d}.png"
            out.write_bytes(Path(final["output"]).read_bytes())
            turn.output = out
        policy = getattr(self.context.policy, "name", "policy")
        from agent.trace import build_trace, write_trace

        write_trace(Path(state["run_dir"]), build_trace(state, seconds, policy), state.get("input_artifact"))


def _protections_as_edits(intent: Any, state: dict[str, Any]) -> Any:
    """A follow-up that protects or skips a type an accepted step already changed means: undo that step."""
    from agent.planning.request import Edit

    blocked = {d.value for d in [*intent.protect, *intent.skip]}
    edits = [
        Edit(action="skip", target=record["target"])
        for record in state.get("accepted", [])
        if record["target"] in blocked
    ]
    return intent.model_copy(update={"edits": edits}) if edits else intent


def describe_intent(intent: Any) -> str:
    """A one-line reading of an intent, for the user to check what was understood."""
    parts = []
    if intent.edits:
        parts.append(
            "; ".join(f"{e.action}" + (f" {e.target.value}" if e.target is not None else "") for e in intent.edits)
        )
    if intent.only:
        parts.append("fix " + ", ".join(d.value for d in intent.only))
    elif not intent.edits:
        parts.append("fix whatever is found")
    if intent.protect:
        parts.append("keep " + ", ".join(d.value for d in intent.protect))
    if intent.skip:
        parts.append("skip " + ", ".join(d.value for d in intent.skip))
    if intent.strength is not None:
        parts.append(f"strength {intent.strength:g}")
    for d, s in intent.strengths.items():
        parts.append(f"{d.value} strength {s:g}")
    for d, values in intent.params.items():
        parts.append(f"{d.value} " + ", ".join(f"{k}={v:g}" for k, v in values.items()))
    if intent.semantic:
        parts.append(f"content: {intent.semantic}")
    if intent.preference:
        parts.append(f"prefer {intent.preference}")
    return "; ".join(parts)


def _terminal_approver(ask: Callable[[str], str] = input) -> Approver:
    """An approver that asks on the terminal: y (run), n (skip the step), or ``name=value ...`` (edit)."""

    def approve(attempt: dict[str, Any]) -> Approval:
        params = ", ".join(f"{k}={v}" for k, v in attempt["params"].items())
        while True:
            answer = ask(f"run {attempt['tool']} on {attempt['target']} ({params})? [y/n/name=value ...] ").strip()
            if answer.lower() in ("", "y", "yes"):
                return True
            if answer.lower() in ("n", "no"):
                return False
            try:
                return {k.strip(): _number(v.strip()) for k, v in (item.split("=", 1) for item in answer.split())}
            except ValueError:
                print("answer y, n, or parameters as name=value", flush=True)

    return approve


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "=" in text or not text:
        raise ValueError(text)
    return text


def add_chat_parser(subparsers: Any) -> None:
    """Register ``restora chat IMAGE [--approve] [--policy P] [--workdir DIR]``."""
    chat = subparsers.add_parser("chat", help="talk to Restora about one image (fix, adjust, undo, save)")
    chat.add_argument("image", help="the image to restore (never modified)")
    chat.add_argument("--policy", default="default", help="policy name or YAML file")
    chat.add_argument("--workdir", default=None, help="session folder (default: ./<image stem>.chat)")
    chat.add_argument("--approve", action="store_true", help="ask before every tool call (y/n/edit)")
    chat.add_argument("--assessor", default=None, help="estimators, saclip[:<folder>] or hybrid[:<folder>]")
    chat.set_defaults(func=cmd_chat)


def cmd_chat(args: Any, read: Callable[[str], str] = input) -> int:
    """Run the terminal conversation until EOF, ``quit`` or ``exit``."""
    image = Path(args.image)
    workdir = Path(args.workdir) if args.workdir else Path.cwd() / f"{image.stem}.chat"
    from agent.context import RunContext

    context = RunContext(policy=args.policy, assessor=getattr(args, "assessor", None))
    approver = _terminal_approver(read) if args.approve else None
    print(f"restora chat on {image} (session folder {workdir}); type a request, 'quit' to leave", flush=True)
    with ChatSession(image, workdir, context, approve=approver) as session:
        while True:
            try:
                text = read("you> ").strip()
            except EOFError:
                break
            if text.lower() in ("quit", "exit", "bye"):
                break
            if not text:
                continue
            try:
                turn = session.send(text)
            except (FileExistsError, ValueError) as exc:
                print(f"error: {exc}", flush=True)
                continue
            print(turn.render(), flush=True)
    return 0
