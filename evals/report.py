"""Reports of an eval run: JSON and CSV results, a Markdown summary, plots and an HTML page; run comparison.

Files written into the run folder:

* ``results.json``: the run's metadata (suite, executor, metric availability and directions) and every
  item's record; ``results.csv``: one row per image and method with every metric;
* ``summary.md``: per dataset, the mean of every metric per method, the share of images each method
  improved over the input, and per agent policy its gap to the oracle and to the best fixed chain and the
  share of images it made worse than the input (judged by the dataset's primary metric);
* ``plots/``: metric distributions per method and gain against severity (matplotlib);
* ``report.html``: the same tables, the plots, and per-image galleries (input, every method, reference)
  linking each agent run's trace and report.

Gaps are signed so that a positive number means the agent is better, whatever the metric's direction;
directions come from the run's metadata (pyiqa's ``lower_better``).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"

Record = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------


def _finite(values: list[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values: list[float | None]) -> float:
    kept = _finite(values)
    return float(np.mean(kept)) if kept else float("nan")


def method_order(records: list[Record]) -> list[str]:
    """Methods in the order they first appear (identity, tools, chains, oracle, agents)."""
    order: list[str] = []
    for record in records:
        for name in record.get("methods", {}):
            if name != "input" and name not in order:
                order.append(name)
    kinds = ("identity", "tool:", "chain:", "oracle", "agent:")
    rank = {name: next((i for i, k in enumerate(kinds) if name.startswith(k)), len(kinds)) for name in order}
    return sorted(order, key=lambda name: rank[name])  # stable: first-seen order within a kind


def metric_order(meta: dict[str, Any]) -> list[str]:
    """The suite's metrics that were available in the run."""
    status = meta.get("metric_status", {})
    return [m for m in meta.get("suite_config", {}).get("metrics", status) if status.get(m) == "available"]


def value(record: Record, method: str, metric: str) -> float | None:
    """A method's score on one item, or ``None``."""
    return record.get("methods", {}).get(method, {}).get("metrics", {}).get(metric)


def primary_metric(records: list[Record], meta: dict[str, Any]) -> str | None:
    """The first of the suite's primary metrics that the input images of ``records`` have values for."""
    for metric in meta.get("suite_config", {}).get("primary_metrics", []):
        if any(value(r, "input", metric) is not None for r in records):
            return metric
    return None


def _signed(delta: float, lower_better: bool) -> float:
    return -delta if lower_better else delta


def _is_worse(a: float, b: float, lower_better: bool) -> bool:
    tol = 1e-9 * max(1.0, abs(b))
    return a > b + tol if lower_better else a < b - tol


def _is_better(a: float, b: float, lower_better: bool) -> bool:
    tol = 1e-9 * max(1.0, abs(b))
    return a < b - tol if lower_better else a > b + tol


def share(records: list[Record], method: str, metric: str, lower_better: bool, better: bool = True) -> float:
    """Share of the items (with both scores) where ``method`` is better (or worse) than the input."""
    pairs: list[tuple[float, float]] = []
    for r in records:
        a, b = value(r, method, metric), value(r, "input", metric)
        if a is not None and b is not None:
            pairs.append((a, b))
    if not pairs:
        return float("nan")
    test = _is_better if better else _is_worse
    return float(np.mean([test(a, b, lower_better) for a, b in pairs]))


def paired_gap(records: list[Record], method: str, reference: str, metric: str, lower_better: bool) -> float:
    """Mean of ``method - reference`` over items with both, signed so that > 0 means ``method`` is better."""
    diffs = []
    for r in records:
        a, b = value(r, method, metric), value(r, reference, metric)
        if a is not None and b is not None:
            diffs.append(_signed(a - b, lower_better))
    return float(np.mean(diffs)) if diffs else float("nan")


def best_of(records: list[Record], methods: list[str], metric: str, lower_better: bool) -> str | None:
    """The method with the best mean ``metric`` among ``methods`` (``None`` when none has values)."""
    scored = [(m, _mean([value(r, m, metric) for r in records])) for m in methods]
    scored = [(m, s) for m, s in scored if math.isfinite(s)]
    if not scored:
        return None
    return (min if lower_better else max)(scored, key=lambda x: x[1])[0]


def dataset_groups(records: list[Record]) -> list[tuple[str, list[Record]]]:
    """``(dataset, records)`` per dataset in order, plus ``("all", records)`` when there are several."""
    names: list[str] = []
    for r in records:
        if r["dataset"] not in names:
            names.append(r["dataset"])
    groups = [(n, [r for r in records if r["dataset"] == n]) for n in names]
    if len(groups) > 1:
        groups.append(("all", records))
    return groups


def summarize(records: list[Record], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Per dataset group: metric means per method, improvement shares, and the agent comparison."""
    lower = meta.get("lower_better", {})
    metrics = metric_order(meta)
    improvement = [m for m in meta.get("suite_config", {}).get("improvement_metrics", []) if m in metrics]
    out = []
    for name, group in dataset_groups(records):
        methods = ["input", *[m for m in method_order(group)]]
        primary = primary_metric(group, meta)
        rows = []
        for method in methods:
            entries = [r["methods"][method] for r in group if method in r.get("methods", {})]
            row: dict[str, Any] = {"method": method, "n": len(entries)}
            row["means"] = {m: _mean([value(r, method, m) for r in group]) for m in metrics}
            row["improved"] = {m: share(group, method, m, lower.get(m, False)) for m in improvement}
            row["seconds"] = _mean([e.get("seconds") for e in entries]) if method != "input" else float("nan")
            rows.append(row)
        agents = []
        if primary is not None:
            lb = lower.get(primary, False)
            chains = [m for m in methods if m.startswith("chain:")]
            tools = [m for m in methods if m.startswith("tool:")]
            best_chain = best_of(group, chains, primary, lb)
            best_tool = best_of(group, tools, primary, lb)
            for method in [m for m in methods if m.startswith("agent:")]:
                agents.append(
                    {
                        "method": method,
                        "metric": primary,
                        "mean": _mean([value(r, method, primary) for r in group]),
                        "gain": paired_gap(group, method, "input", primary, lb),
                        "gap_oracle": paired_gap(group, method, "oracle", primary, lb) if "oracle" in methods else None,
                        "best_chain": best_chain,
                        "gap_chain": paired_gap(group, method, best_chain, primary, lb) if best_chain else None,
                        "best_tool": best_tool,
                        "gap_tool": paired_gap(group, method, best_tool, primary, lb) if best_tool else None,
                        "worse": share(group, method, primary, lb, better=False),
                        "improved": {m: share(group, method, m, lower.get(m, False)) for m in improvement},
                    }
                )
        out.append(
            {
                "dataset": name,
                "n": len(group),
                "primary": primary,
                "rows": rows,
                "agents": agents,
                "metrics": metrics,
                "improvement": improvement,
            }
        )
    return out


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.0f} %"


def _arrow(metric: str, lower: dict[str, bool]) -> str:
    return f"{metric} {'↓' if lower.get(metric) else '↑'}"


def summary_tables(summary: list[dict[str, Any]], meta: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of every summary table (shared by the Markdown and HTML reports)."""
    lower = meta.get("lower_better", {})
    tables = []
    for block in summary:
        metrics, improvement = block["metrics"], block["improvement"]
        header = ["method", "n", *[_arrow(m, lower) for m in metrics], *[f"{m} improved" for m in improvement], "s/img"]
        rows = []
        for row in block["rows"]:
            cells = [row["method"], str(row["n"]), *[_fmt(row["means"][m]) for m in metrics]]
            cells += ["" if row["method"] == "input" else _pct(row["improved"][m]) for m in improvement]
            cells.append(_fmt(row["seconds"], 2))
            rows.append(cells)
        tables.append((f"{block['dataset']} ({block['n']} images): mean per method", header, rows))
        if block["agents"]:
            metric = block["primary"]
            header = [
                "agent",
                f"{_arrow(metric, lower)} mean",
                "gain over input",
                "gap to oracle",
                "gap to best fixed chain",
                "gap to best single tool",
                "made worse",
                *[f"{m} improved" for m in improvement],
            ]
            rows = []
            for a in block["agents"]:
                chain = f"{_fmt(a['gap_chain'])} ({a['best_chain']})" if a["best_chain"] else "n/a"
                tool = f"{_fmt(a['gap_tool'])} ({a['best_tool']})" if a["best_tool"] else "n/a"
                rows.append(
                    [
                        a["method"],
                        _fmt(a["mean"]),
                        _fmt(a["gain"]),
                        _fmt(a["gap_oracle"]),
                        chain,
                        tool,
                        _pct(a["worse"]),
                        *[_pct(a["improved"][m]) for m in improvement],
                    ]
                )
            tables.append((f"{block['dataset']}: agent by {metric} (gaps > 0: agent better)", header, rows))
    return tables


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown summary of a run."""
    status = meta.get("metric_status", {})
    lines = [f"# Eval `{meta.get('suite')}`", ""]
    lines.append(
        f"{meta.get('items')} images ({meta.get('ran')} run now, {meta.get('skipped')} reused); executor "
        f"{meta.get('executor')} x {meta.get('workers')}; wall {meta.get('wall_seconds')} s; {meta.get('created')}."
    )
    unavailable = {m: s for m, s in status.items() if s != "available"}
    if unavailable:
        lines += ["", "Metrics not computed:"] + [f"- {m}: {s}" for m, s in unavailable.items()]
    if meta.get("notes"):
        lines += ["", "Notes:"] + [f"- {note}" for note in meta["notes"]]
    for title, header, rows in summary_tables(summary, meta):
        lines += ["", f"## {title}", "", _markdown_table(header, rows)]
    lines += [
        "",
        "↑/↓: higher/lower is better (pyiqa's lower_better; UIQM/UCIQE from their papers). "
        "'improved'/'made worse': share of images better/worse than the input.",
    ]
    return "\n".join(lines) + "\n"


CSV_FIXED = ["id", "dataset", "group", "variant", "severity", "method", "seconds", "steps", "kept", "error"]


def write_csv(path: Path, records: list[Record], metrics: list[str]) -> None:
    """One row per image and method (the input included) with every metric."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIXED + metrics)
    for record in records:
        for method, entry in record.get("methods", {}).items():
            steps = " > ".join(str(s.get("tool")) for s in entry.get("steps", []) if s.get("tool"))
            row = [
                record["id"],
                record["dataset"],
                record.get("group") or "",
                record.get("variant") or "",
                _fmt(record.get("severity"), 4) if record.get("severity") is not None else "",
                method,
                entry.get("seconds", ""),
                steps,
                entry.get("kept", ""),
                "",
            ]
            writer.writerow(row + [entry["metrics"].get(m, "") for m in metrics])
        for method, error in record.get("errors", {}).items():
            writer.writerow(
                [record["id"], record["dataset"], "", "", "", method, "", "", "", error] + [""] * len(metrics)
            )
    _atomic_text(path, buffer.getvalue())


def _atomic_text(path: Path, text: str) -> None:
    from agent.artifacts import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def make_plots(out_dir: Path, records: list[Record], meta: dict[str, Any]) -> list[str]:
    """Metric distributions per method and gain against severity, per dataset; returns relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evals.runner import slug

    lower = meta.get("lower_better", {})
    metrics = metric_order(meta)
    written: list[str] = []
    (out_dir / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    for name, group in dataset_groups(records):
        methods = ["input", *method_order(group)]
        shown = [m for m in metrics if any(value(r, "input", m) is not None for r in group)]
        if shown:
            cols = min(3, len(shown))
            rows = math.ceil(len(shown) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 0.35 * len(methods) * rows + 1.5), squeeze=False)
            for ax, metric in zip(axes.flat, shown, strict=False):
                data = [_finite([value(r, m, metric) for r in group]) for m in methods]
                labels = [m for m, d in zip(methods, data, strict=True) if d]
                try:
                    ax.boxplot([d for d in data if d], orientation="horizontal", tick_labels=labels)
                except TypeError:  # matplotlib < 3.10
                    ax.boxplot([d for d in data if d], vert=False, labels=labels)
                ax.set_title(_arrow(metric, lower), fontsize=10)
                ax.tick_params(labelsize=7)
            for ax in list(axes.flat)[len(shown) :]:
                ax.axis("off")
            fig.suptitle(f"{name}: metric distributions")
            fig.tight_layout()
            rel = f"{PLOTS_DIR}/{slug(name)}_distributions.png"
            fig.savefig(out_dir / rel, dpi=90)
            plt.close(fig)
            written.append(rel)
        primary = primary_metric(group, meta)
        if primary is None:
            continue
        true_severity = any(r.get("severity") is not None for r in group)
        lb = lower.get(primary, False)
        chains = [m for m in methods if m.startswith("chain:")]
        best_chain = best_of(group, chains, primary, lb)
        plotted = [m for m in methods if m.startswith("agent:") or m == "oracle" or m == best_chain]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for method in plotted:
            xs, ys = [], []
            for r in group:
                a, b = value(r, method, primary), value(r, "input", primary)
                sev = r.get("severity") if true_severity else r.get("assessed", {}).get("severity")
                if a is not None and b is not None and sev is not None:
                    xs.append(sev)
                    ys.append(_signed(a - b, lb))
            if xs:
                ax.scatter(xs, ys, s=14, alpha=0.7, label=method)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("severity (synthesis)" if true_severity else "severity (assessed on the input)")
        ax.set_ylabel(f"{primary} gain over input ({'lower' if lb else 'higher'} is better, signed)")
        ax.set_title(f"{name}: gain vs severity")
        ax.legend(fontsize=7)
        fig.tight_layout()
        rel = f"{PLOTS_DIR}/{slug(name)}_gain_vs_severity.png"
        fig.savefig(out_dir / rel, dpi=90)
        plt.close(fig)
        written.append(rel)
    return written


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(records: list[Record], meta: dict[str, Any], summary: list[dict[str, Any]], plots: list[str]) -> str:
    """The HTML report: tables, plots and per-image galleries (sorted worst agent result first)."""
    lower = meta.get("lower_better", {})
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>restora eval {esc(str(meta.get('suite')))}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:12px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.g td{text-align:center;vertical-align:top}"
        ".g img{max-width:180px;max-height:180px;display:block;margin:auto}.s{font-size:11px;color:#444}"
        ".scroll{overflow-x:auto}</style></head><body>",
        f"<h1>Eval <code>{esc(str(meta.get('suite')))}</code></h1>",
        f"<p>{meta.get('items')} images; executor {esc(str(meta.get('executor')))} x {meta.get('workers')}; "
        f"wall {meta.get('wall_seconds')} s; {esc(str(meta.get('created')))}. "
        f"<a href='{RESULTS_JSON}'>results.json</a> · <a href='{RESULTS_CSV}'>results.csv</a> · "
        f"<a href='{SUMMARY_MD}'>summary.md</a></p>",
    ]
    unavailable = {m: s for m, s in meta.get("metric_status", {}).items() if s != "available"}
    if unavailable:
        parts.append("<p>Metrics not computed:</p><ul>")
        parts += [f"<li><b>{esc(m)}</b>: {esc(s)}</li>" for m, s in unavailable.items()]
        parts.append("</ul>")
    if meta.get("notes"):
        parts.append("<p>Notes:</p><ul>" + "".join(f"<li>{esc(n)}</li>" for n in meta["notes"]) + "</ul>")
    for title, header, rows in summary_tables(summary, meta):
        parts.append(f"<h2>{esc(title)}</h2><div class='scroll'>{_html_table(header, rows)}</div>")
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f"<p><img src='{esc(p)}' style='max-width:100%'></p>" for p in plots]
    limit = int(meta.get("suite_config", {}).get("gallery_per_dataset", 24))
    for name, group in dataset_groups(records):
        if name == "all" or limit <= 0:
            continue
        methods = [m for m in method_order(group) if m != "identity"]
        primary = primary_metric(group, meta)
        agent = next((m for m in methods if m.startswith("agent:")), None)
        lb = lower.get(primary, False) if primary else False

        def gain(r: Record, agent: str | None = agent, primary: str | None = primary, lb: bool = lb) -> float:
            a = value(r, agent, primary) if agent and primary else None
            b = value(r, "input", primary) if primary else None
            return _signed(a - b, lb) if a is not None and b is not None else 0.0

        shown = sorted(group, key=gain)[:limit]
        parts.append(
            f"<h2>Gallery: {esc(name)}</h2><p class='s'>{len(shown)} of {len(group)} images, "
            f"worst {esc(str(agent))} result by {esc(str(primary))} first.</p>"
        )
        columns = ["input", *methods, "gt"]
        parts.append("<div class='scroll'><table class='g'><tr><th>image</th>")
        parts += [f"<th>{esc(c)}</th>" for c in columns]
        parts.append("</tr>")
        for r in shown:
            label = f"{r['name']}" + (f" [{r['variant']}]" if r.get("variant") else "")
            parts.append(f"<tr><td>{esc(label)}<div class='s'>{esc(', '.join(r.get('labels', [])))}</div></td>")
            for column in columns:
                src = r.get("images", {}).get(column)
                if src is None:
                    parts.append("<td></td>")
                    continue
                caption = ""
                if primary and column != "gt":
                    v = value(r, column, primary)
                    caption = f"{primary} {_fmt(v, 2)}" if v is not None else ""
                entry = r.get("methods", {}).get(column, {})
                steps = " > ".join(str(s.get("tool")) for s in entry.get("steps", []) if s.get("tool"))
                links = "".join(f" <a href='{esc(entry[k])}'>{k}</a>" for k in ("trace", "report") if entry.get(k))
                parts.append(
                    f"<td><img src='{esc(src)}' loading='lazy'><div class='s'>{esc(caption)}</div>"
                    f"<div class='s'>{esc(steps)}{links}</div></td>"
                )
            parts.append("</tr>")
        parts.append("</table></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(out_dir: Path, records: list[Record], meta: dict[str, Any]) -> dict[str, Path]:
    """Write results.json, results.csv, summary.md, plots and report.html into ``out_dir``."""
    from evals.runner import _json_default

    out_dir = Path(out_dir)
    summary = summarize(records, meta)
    _atomic_text(out_dir / RESULTS_JSON, json.dumps({"meta": meta, "records": records}, default=_json_default))
    write_csv(out_dir / RESULTS_CSV, records, metric_order(meta))
    _atomic_text(out_dir / SUMMARY_MD, render_markdown(summary, meta))
    try:
        plots = make_plots(out_dir, records, meta)
    except Exception as exc:  # plots are a convenience; the numbers are already written
        import logging

        logging.getLogger(__name__).warning("plots failed: %s: %s", type(exc).__name__, exc)
        plots = []
    _atomic_text(out_dir / REPORT_HTML, render_html(records, meta, summary, plots))
    return {name: out_dir / name for name in (RESULTS_JSON, RESULTS_CSV, SUMMARY_MD, REPORT_HTML)}


# ----------------------------------------------------------------------------------------------
# Comparing two runs
# ----------------------------------------------------------------------------------------------


def load_run(run: str | Path) -> dict[str, Any]:
    """Read a run's ``results.json`` (from the run folder or the file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass an eval output folder (holding {RESULTS_JSON})")
    data = json.loads(path.read_text())
    if "records" not in data or "meta" not in data:
        raise ValueError(f"{path} is not a restora eval results file")
    return data


def _pairing(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(label, method in A, method in B)``: the methods both runs have, or their single agents."""
    methods_a, methods_b = method_order(a["records"]), method_order(b["records"])
    common = [(m, m, m) for m in methods_a if m in methods_b]
    agents_a = [m for m in methods_a if m.startswith("agent:")]
    agents_b = [m for m in methods_b if m.startswith("agent:")]
    if len(agents_a) == 1 and len(agents_b) == 1 and agents_a[0] != agents_b[0]:
        common.append((f"agent ({agents_a[0]} vs {agents_b[0]})", agents_a[0], agents_b[0]))
    return common


def compare_runs(run_a: str | Path, run_b: str | Path, methods: list[str] | None = None) -> dict[str, Any]:
    """Per method and metric: means in A and B, the paired delta B - A and a Wilcoxon signed-rank p-value.

    Items are paired by id; only items present in both runs count. ``better`` is the share of items where B
    beats A in the metric's direction (from the runs' metadata).
    """
    from scipy.stats import wilcoxon

    a, b = load_run(run_a), load_run(run_b)
    records_b = {r["id"]: r for r in b["records"]}
    lower = {**a["meta"].get("lower_better", {}), **b["meta"].get("lower_better", {})}
    metrics = [m for m in metric_order(a["meta"]) if m in metric_order(b["meta"])]
    rows = []
    for label, method_a, method_b in _pairing(a, b):
        if methods and label not in methods and method_a not in methods:
            continue
        for metric in metrics:
            pairs = []
            for ra in a["records"]:
                rb = records_b.get(ra["id"])
                if rb is None:
                    continue
                va, vb = value(ra, method_a, metric), value(rb, method_b, metric)
                if va is not None and vb is not None:
                    pairs.append((va, vb))
            if not pairs:
                continue
            xa, xb = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            diff = xb - xa
            if len(diff) < 2 or np.allclose(diff, 0.0):
                p_value = 1.0 if len(diff) else float("nan")
            else:
                p_value = float(wilcoxon(xb, xa, zero_method="wilcox").pvalue)
            lb = lower.get(metric, False)
            rows.append(
                {
                    "method": label,
                    "metric": metric,
                    "lower_better": lb,
                    "n": len(pairs),
                    "mean_a": float(xa.mean()),
                    "mean_b": float(xb.mean()),
                    "delta": float(diff.mean()),
                    "better": float(np.mean([_is_better(y, x, lb) for x, y in pairs])),
                    "worse": float(np.mean([_is_worse(y, x, lb) for x, y in pairs])),
                    "p_value": p_value,
                }
            )
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "suite_a": a["meta"].get("suite"),
        "suite_b": b["meta"].get("suite"),
        "rows": rows,
    }


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""
    header = ["method", "metric", "n", "A", "B", "B - A", "B better", "B worse", "Wilcoxon p"]
    rows = [
        [
            r["method"],
            f"{r['metric']} {'↓' if r['lower_better'] else '↑'}",
            str(r["n"]),
            _fmt(r["mean_a"]),
            _fmt(r["mean_b"]),
            f"{r['delta']:+.4f}",
            _pct(r["better"]),
            _pct(r["worse"]),
            "n/a" if not math.isfinite(r["p_value"]) else f"{r['p_value']:.3g}",
        ]
        for r in result["rows"]
    ]
    title = f"A = {result['run_a']} ({result['suite_a']}), B = {result['run_b']} ({result['suite_b']})"
    return title + "\n\n" + _markdown_table(header, rows) + "\n"
