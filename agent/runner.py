"""Running the graph over one image or a batch, with SQLite checkpoints and resume."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver

from agent.context import RunContext
from agent.graph import graph as compiled_graph
from agent.trace import build_trace, write_trace

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoints.sqlite"
THREAD_ID = "restora"
#: Suffix of the run directory written beside each output (``OUT/<stem>.restora/``).
RUN_DIR_SUFFIX = ".restora"


@dataclass
class RunResult:
    """Outcome of restoring one image."""

    input_path: Path
    run_dir: Path
    output_path: Path | None
    kept: str | None
    reason: str
    seconds: float
    trace: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _config() -> RunnableConfig:
    return {"configurable": {"thread_id": THREAD_ID}, "recursion_limit": 200}


def _bind(conn: sqlite3.Connection, interrupt_after: list[str] | None = None) -> Any:
    """The graph (compiled once at import) bound to one run's checkpoint database."""
    update: dict[str, Any] = {"checkpointer": SqliteSaver(conn)}
    if interrupt_after:
        update["interrupt_after_nodes"] = list(interrupt_after)
    return compiled_graph.copy(update=update)


def _resumable(run_dir: Path) -> bool:
    """Whether the checkpoint holds a run that can continue (steps left) or has finished."""
    conn = sqlite3.connect(run_dir / CHECKPOINT_FILE, check_same_thread=False)
    try:
        snapshot = _bind(conn).get_state(_config())
        return bool(snapshot.values) and bool(snapshot.next or snapshot.values.get("final"))
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def _clear_run(run_dir: Path) -> None:
    """Remove an earlier run's checkpoints and artifacts (outputs are overwritten atomically later)."""
    for name in (CHECKPOINT_FILE, f"{CHECKPOINT_FILE}-wal", f"{CHECKPOINT_FILE}-shm", f"{CHECKPOINT_FILE}-journal"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "artifacts", ignore_errors=True)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint that a run can resume from."""
    return (run_dir / CHECKPOINT_FILE).is_file()


def restore_image(
    input_path: str | Path,
    run_dir: str | Path,
    context: RunContext,
    *,
    request: str | None = None,
    output_path: str | Path | None = None,
    resume: bool = False,
    interrupt_after: list[str] | None = None,
) -> RunResult:
    """Restore one image; artifacts, checkpoints, trace and report go to ``run_dir``.

    With ``resume=True`` and a checkpoint present, the run continues where it stopped; a
    finished run is not recomputed. Without it, an old run in ``run_dir`` is replaced.
    ``interrupt_after`` (node names) stops the run early, as a kill would (for tests).
    """
    input_path = Path(input_path)
    run_dir = Path(run_dir)
    if resume and has_checkpoint(run_dir) and not _resumable(run_dir):
        logger.warning("%s: the checkpoint holds no resumable state; starting this image again", run_dir)
        resume = False
    if not resume and run_dir.exists():
        _clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    conn = sqlite3.connect(run_dir / CHECKPOINT_FILE, check_same_thread=False)
    try:
        graph = _bind(conn, interrupt_after)
        config = _config()
        snapshot = graph.get_state(config)
        # "sync" durability: every step's checkpoint is on disk before the next step starts, so a
        # kill at any moment leaves a checkpoint to resume from.
        if resume and snapshot.values:
            if snapshot.next:
                graph.invoke(None, config, context=context, durability="sync")
        else:
            inputs: dict[str, Any] = {"input_path": str(input_path), "run_dir": str(run_dir), "request": request}
            if output_path is not None:
                inputs["output_path"] = str(output_path)
            graph.invoke(inputs, config, context=context, durability="sync")
        snapshot = graph.get_state(config)
        state = dict(snapshot.values)
        finished = not snapshot.next
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    policy_name = getattr(context.policy, "name", str(context.policy))
    trace = build_trace(state, seconds if finished else None, policy_name)
    if not finished:
        trace["status"] = "interrupted"
    write_trace(run_dir, trace, state.get("input_artifact"))
    final = state.get("final") or {}
    return RunResult(
        input_path=input_path,
        run_dir=run_dir,
        output_path=Path(final["output"]) if final.get("output") else None,
        kept=final.get("kept"),
        reason=final.get("reason", "interrupted" if not finished else ""),
        seconds=seconds,
        trace=trace,
    )


def output_names(inputs: Iterable[Path]) -> dict[Path, str]:
    """A distinct output stem per input: ``photo`` or, on collisions, ``photo_jpg``."""
    inputs = list(inputs)
    counts: dict[str, int] = {}
    for p in inputs:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    names: dict[Path, str] = {}
    used: set[str] = set()
    for p in inputs:
        stem = p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        base, n = stem, 1
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        names[p] = stem
    return names
