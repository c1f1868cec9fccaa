"""Traces: what the agent saw, decided and checked, as versioned JSON, an HTML page and a table."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.artifacts import atomic_write

TRACE_SCHEMA_VERSION = 1
TRACE_FILE = "trace.json"
REPORT_FILE = "report.html"


def build_trace(state: dict[str, Any], wall_seconds: float | None, policy_name: str) -> dict[str, Any]:
    """Assemble the trace document from a finished (or partial) run state."""
    from agent import __version__

    timings = {k: round(v, 4) for k, v in (state.get("timings") or {}).items()}
    work = sum(timings.get(k, 0.0) for k in ("tools", "perception", "verification"))
    trace: dict[str, Any] = {
        "schema_version": TRACE_SCHEMA_VERSION,
        "restora_version": __version__,
        "status": state.get("status", "unknown"),
        "input": state.get("input_info", {"source": state.get("input_path")}),
        "request": state.get("request"),
        "intent": state.get("intent"),
        "policy": policy_name,
        "planner": state.get("planner_record"),
        "input_report": state.get("input_report"),
        "input_iqa": state.get("input_iqa"),
        "attempts": state.get("attempts", []),
        "accepted": state.get("accepted", []),
        "final_report": state.get("report"),
        "final_iqa": state.get("iqa"),
        "final": state.get("final"),
        "tool_calls": state.get("tool_calls", 0),
        "timings": timings,
    }
    if wall_seconds is not None:
        trace["timings"]["wall"] = round(wall_seconds, 4)
        trace["timings"]["overhead"] = round(max(wall_seconds - work, 0.0), 4)
    return trace


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    text = json.dumps(data, indent=2, default=str)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def load_trace(run: str | Path) -> dict[str, Any]:
    """Read a trace from a run directory or a ``trace.json`` path, checking its schema version."""
    path = Path(run)
    if path.is_dir():
        path = path / TRACE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trace at {path}; pass a run directory made by `restora run`")
    data = json.loads(path.read_text(encoding="utf-8"))
    version = data.get("schema_version")
    if version != TRACE_SCHEMA_VERSION:
        raise ValueError(f"trace schema version {version} is not supported (expected {TRACE_SCHEMA_VERSION})")
    return data


def _thumbnail(artifact: str | None, max_side: int = 256) -> str | None:
    if not artifact or not Path(artifact).is_file():
        return None
    image = np.load(artifact, allow_pickle=False)
    h, w = image.shape[:2]
    f = min(1.0, max_side / max(h, w))
    small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor((np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _figure(artifact: str | None, caption: str) -> str:
    data = _thumbnail(artifact)
    img = f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(caption)}">' if data else "<em>missing</em>"
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _report_rows(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    rows = []
    for name, est in sorted(report.get("estimates", {}).items(), key=lambda kv: -kv[1]["probability"]):
        params = ", ".join(f"{k}={v:.3g}" for k, v in est.get("params", {}).items())
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{est['probability']:.2f}</td>"
            f"<td>{est['severity']:.2f}</td><td>{html.escape(params)}</td></tr>"
        )
    return (
        "<table><tr><th>degradation</th><th>p</th><th>severity</th><th>parameters</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_html(trace: dict[str, Any], input_artifact: str | None) -> str:
    """A one-page HTML report: thumbnails per accepted step, every attempt, the final decision."""
    final = trace.get("final") or {}
    figures = [_figure(input_artifact, "input")]
    for i, step in enumerate(trace.get("accepted", []), start=1):
        figures.append(_figure(step.get("artifact"), f"step {i}: {step['tool']} ({step['target']})"))
    figures.append(_figure(final.get("artifact"), f"result ({final.get('kept', '?')} kept)"))
    attempts = []
    for a in trace.get("attempts", []):
        checks = a.get("checks") or {}
        attempts.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    a.get("step", ""),
                    a.get("target", ""),
                    a.get("tool", ""),
                    a.get("decision", ""),
                    a.get("reason", ""),
                    checks.get("iqa_gain", ""),
                    checks.get("fidelity", ""),
                    a.get("seconds", ""),
                )
            )
            + "</tr>"
        )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}figure{display:inline-block;margin:.5em}"
        "img{max-width:256px;border:1px solid #ccc}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ddd;padding:.25em .5em;font-size:90%}th{background:#f4f4f4}"
    )
    source = html.escape(str(trace.get("input", {}).get("source", "")))
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in trace.get("timings", {}).items())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Restora: {source}</title>"
        f"<style>{style}</style></head><body><h1>Restora run</h1><p><b>Input:</b> {source}<br>"
        f"<b>Policy:</b> {html.escape(str(trace.get('policy')))} &nbsp; <b>Request:</b> "
        f"{html.escape(str(trace.get('request') or '-'))}<br><b>Decision:</b> "
        f"{html.escape(str(final.get('reason', '-')))}<br><b>Timings:</b> {html.escape(timings)}</p>"
        f"<div>{''.join(figures)}</div><h2>Attempts</h2><table><tr><th>step</th><th>target</th><th>tool</th>"
        f"<th>decision</th><th>reason</th><th>IQA gain</th><th>fidelity</th><th>s</th></tr>{''.join(attempts)}"
        f"</table><h2>What the assessor saw in the input</h2>{_report_rows(trace.get('input_report'))}"
        f"<h2>... and in the result</h2>{_report_rows(trace.get('final_report'))}</body></html>"
    )


def write_trace(run_dir: Path, trace: dict[str, Any], input_artifact: str | None) -> None:
    """Write ``trace.json`` and ``report.html`` into ``run_dir``."""
    write_json_atomic(run_dir / TRACE_FILE, trace)
    page = render_html(trace, input_artifact)
    atomic_write(run_dir / REPORT_FILE, lambda handle: handle.write(page.encode("utf-8")))


def format_table(trace: dict[str, Any]) -> str:
    """The trace's attempts as a plain-text table for the terminal."""
    header = ("#", "step", "target", "tool", "decision", "iqa", "fidelity", "secs", "reason")
    rows = [header]
    for i, a in enumerate(trace.get("attempts", []), start=1):
        checks = a.get("checks") or {}
        rows.append(
            (
                str(i),
                str(a.get("step", "")),
                str(a.get("target", "")),
                str(a.get("tool", "") or ""),
                str(a.get("decision", "")),
                "" if checks.get("iqa_gain") is None else f"{checks['iqa_gain']:+.3f}",
                "" if checks.get("fidelity") is None else f"{checks['fidelity']:.3f}",
                "" if a.get("seconds") is None else f"{a['seconds']:.2f}",
                str(a.get("reason", "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows]
    final = trace.get("final") or {}
    lines.append("")
    lines.append(f"result: {final.get('kept', '?')} kept: {final.get('reason', '')}")
    lines.append(f"output: {final.get('output', '')}")
    t = trace.get("timings", {})
    if t:
        lines.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    return "\n".join(lines)
