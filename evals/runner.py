"""Run a suite: build its items, evaluate every method on each, locally (process pool) or on Ray.

An *item* is one image of one dataset (and, for synthetic sets, one degradation variant), described by a
small JSON-able dict so that it travels to any worker; the worker re-creates the images from it
deterministically (seeded crops and synthesis), runs every method, scores every output and returns the
record plus the files to write (thumbnails, the agent's trace and report). The driver writes them under the
output folder and commits ``items/<item>.json`` last, so a re-run skips every finished item (resume) as long
as the suite is unchanged (its fingerprint is stored in each record).

Executors: ``local`` (``workers == 1`` runs in this process; more uses a spawn process pool) and ``ray``
(a local Ray instance with ``workers`` CPUs, or the cluster at ``address``, whose nodes need the same restora
installed; one task per image, at most ``workers`` in flight, a GPU share per task when the cluster has
GPUs). Both run the same :func:`evaluate_item`, single-threaded per worker, so they give identical scores.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evals.suite import Suite, default_data_root

logger = logging.getLogger(__name__)

ITEMS_DIR = "items"
IMAGES_DIR = "images"
TRACES_DIR = "traces"
THUMBNAIL_SIDE = 256

Record = dict[str, Any]
Files = dict[str, bytes]


@dataclass
class RunOptions:
    """How to run a suite."""

    out_dir: Path
    data_root: Path = field(default_factory=default_data_root)
    executor: str = "local"
    workers: int = 1
    address: str | None = None
    limit: int | None = None
    progress: bool = True
    threads_per_worker: int = 1


@dataclass
class RunOutcome:
    """What :func:`run_suite` did."""

    out_dir: Path
    records: list[Record]
    ran: int
    skipped: int
    failed: list[str]
    wall_seconds: float
    notes: list[str]
    meta: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """A file-name-safe form of an item id or method name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__").replace(":", "-")).strip("_") or "item"


def _seed(suite_seed: int, key: str) -> int:
    return (suite_seed * 1_000_003 + zlib.crc32(key.encode())) % (2**31 - 1)


def build_items(suite: Suite, data_root: Path, limit: int | None = None) -> tuple[list[Record], list[str]]:
    """The suite's items in a fixed order, and notes on datasets that were skipped.

    Raises:
        evals.datasets.DatasetLayoutError: when a non-optional dataset is missing or in no known layout.

    """
    from evals.datasets import DatasetLayoutError, load_dataset
    from evals.synthesis import clean_split

    items: list[Record] = []
    notes: list[str] = []
    for spec in suite.datasets:
        sources: list[dict[str, Any]] = []
        if spec.procedural is not None:
            sources = [{"name": f"procedural_{i:03d}", "procedural": i} for i in range(spec.procedural)]
        elif spec.split is not None:
            try:
                paths = clean_split(data_root)[spec.split]
            except FileNotFoundError as exc:
                if spec.optional:
                    notes.append(f"{spec.name}: skipped ({exc})")
                    continue
                raise DatasetLayoutError(f"dataset {spec.name}: {exc}; pass the data root with --data") from None
            sources = [{"name": f"{p.parent.name}/{p.stem}", "lq": str(p)} for p in paths]
        else:
            assert spec.path is not None
            root = Path(spec.path) if Path(spec.path).is_absolute() else data_root / spec.path
            if spec.optional and not root.exists():
                notes.append(f"{spec.name}: skipped ({root} not found)")
                continue
            dataset = load_dataset(root, spec.layout, spec.name)
            sources = [
                {"name": e.name, "lq": str(e.lq), "gt": str(e.gt) if e.gt else None, "group": e.group}
                for e in dataset.entries
            ]
        if spec.limit is not None:
            sources = sources[: spec.limit]
        variants = spec.synthesis.variants() if spec.synthesis is not None else [None]
        for index, source in enumerate(sources):
            chosen = (
                variants
                if spec.synthesis is None or spec.synthesis.assign == "all"
                else [variants[index % len(variants)]]
            )
            for variant in chosen:
                item_id = f"{spec.name}/{source['name']}" + (f"/{variant}" if variant else "")
                item: Record = {
                    "id": item_id,
                    "dataset": spec.name,
                    "name": source["name"],
                    "group": source.get("group") or variant,
                    "variant": variant,
                    "lq": source.get("lq"),
                    "gt": source.get("gt"),
                    "procedural": source.get("procedural"),
                    "size": spec.size,
                    "crop": spec.crop,
                    "crop_seed": _seed(suite.seed, f"{spec.name}/{source['name']}"),  # same crop for every variant
                    "seed": _seed(suite.seed, item_id),
                }
                items.append(item)
    if limit is not None:
        items = items[:limit]
    return items, notes


def _crop_window(shape: tuple[int, ...], crop: int | None, seed: int) -> tuple[slice, slice]:
    h, w = shape[:2]
    if crop is None:
        return slice(0, h), slice(0, w)
    ch, cw = min(h, crop), min(w, crop)
    rng = np.random.default_rng([seed, 17])
    top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return slice(top, top + ch), slice(left, left + cw)


def _quantize(image: np.ndarray) -> np.ndarray:
    """Round to 8 bits, as every method (and the agent, which reads a PNG) then sees the same input."""
    return (np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def materialize(item: Record, suite: Suite) -> dict[str, Any]:
    """Re-create an item's images: ``lq`` (the input), ``gt`` (or ``None``) and the synthesis record."""
    from agent.imageio import load_image
    from evals.synthesis import procedural_image, synthesize, udc, underwater

    spec = next(d for d in suite.datasets if d.name == item["dataset"])
    if item["procedural"] is not None:
        base = procedural_image(item["size"], item["size"], seed=_seed(suite.seed, item["name"]))
    else:
        base = load_image(item["lq"], max_pixels=None).image
    rows, cols = _crop_window(base.shape, item["crop"], item["crop_seed"])
    base = _quantize(base[rows, cols])
    out: dict[str, Any] = {"labels": [], "applied": [], "severity": None}
    synthesis = spec.synthesis
    if synthesis is None:
        out["lq"] = base
        gt = None
        if item["gt"]:
            reference = load_image(item["gt"], max_pixels=None).image
            gt = _quantize(reference[rows, cols])
            if gt.shape != base.shape:
                raise ValueError(f"{item['id']}: the reference is {gt.shape[:2]}, the input {base.shape[:2]}")
        out["gt"] = gt
        return out
    seed = int(item["seed"])
    rng = np.random.default_rng(seed)
    if synthesis.kind == "underwater":
        synth = underwater(base, rng, synthesis.severity)
    elif synthesis.kind == "udc":
        synth = udc(base, rng, panel=item["variant"], severity=synthesis.severity)
    else:
        combo = item["variant"]
        degradations: Any = combo if "+" not in combo else combo.split("+")
        synth = synthesize(base, degradations, seed=seed, severity=synthesis.severity, preset=synthesis.preset)
    out.update(lq=_quantize(synth.image), gt=base, labels=[d.value for d in synth.labels], applied=synth.applied)
    severities = [float(p["severity"]) for _, p in synth.applied if "severity" in p]
    out["severity"] = float(np.mean(severities)) if severities else None
    return out


# ----------------------------------------------------------------------------------------------
# One item, in a worker
# ----------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_state(suite: Suite, metric_names: list[str], threads: int) -> dict[str, Any]:
    """Per-process tools, assessor, policies and metrics, built on first use and kept for later items."""
    key = f"{suite.fingerprint()}:{','.join(metric_names)}"
    if _WORKER.get("key") == key:
        return _WORKER
    import cv2
    import torch

    torch.set_num_threads(max(1, threads))
    cv2.setNumThreads(max(1, threads))
    from agent.context import RunContext
    from agent.perception.assessor import make_assessor
    from evals.baselines import BaselineRunner
    from evals.iqa_metrics import MetricSet
    from policies import load_policy
    from tools import default_registry

    registry = default_registry()
    assessor = make_assessor(suite.assessor)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _WORKER.clear()
    _WORKER.update(
        key=key,
        baselines=BaselineRunner(registry, assessor, load_policy(suite.baselines.reference_policy)),
        contexts={p: RunContext(policy=p, registry=registry, assessor=assessor) for p in suite.agents},
        metrics=MetricSet(metric_names, device=device),
    )
    return _WORKER


def agent_methods(suite: Suite) -> dict[str, str]:
    """Method name (``agent:<policy>``) -> the policy name or YAML path it runs."""
    return {f"agent:{Path(p).stem if p.endswith(('.yaml', '.yml')) else p}": p for p in suite.agents}


def method_names(suite: Suite, baselines: Any) -> list[str]:
    """The methods run on every item, in report order."""
    names = ["identity"] if suite.baselines.identity else []
    tools = suite.baselines.single_tools
    if tools == "all":
        tools = [t for t in baselines.policy.tool_names() if t in baselines.registry]
    names += [f"tool:{t}" for t in tools]
    names += [f"chain:{c}" for c in suite.baselines.fixed_chains]
    if suite.baselines.oracle:
        names.append("oracle")
    return names + list(agent_methods(suite))


def _chain_tools(suite: Suite, baselines: Any, name: str) -> list[str]:
    chain = suite.baselines.fixed_chains[name]
    if chain != "auto":
        return list(chain)
    degradations = list(suite.baselines.chain_degradations)
    if not degradations:
        from agent.degradations import parse_degradation
        from evals.synthesis import MIO100_COMBINATIONS

        found: set[Any] = set()
        for spec in suite.datasets:
            if spec.synthesis is None:
                continue
            if spec.synthesis.kind == "underwater":
                found |= {parse_degradation(n) for n in ("haze", "low_light", "color_cast")}
            elif spec.synthesis.kind == "udc":
                found |= {parse_degradation(n) for n in ("defocus_blur", "low_light", "noise", "color_cast")}
            else:
                for combo in spec.synthesis.variants():
                    parts = MIO100_COMBINATIONS.get(combo) or [parse_degradation(p) for p in combo.split("+")]
                    found |= set(parts)
        degradations = sorted(found)
    return baselines.auto_chain(degradations)


def _thumbnail(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    h, w = image.shape[:2]
    f = min(1.0, THUMBNAIL_SIDE / max(h, w))
    pic = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    if f < 1.0:
        pic = pic.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    pic.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def evaluate_item(item: Record, suite_data: dict[str, Any], metric_names: list[str], threads: int = 1) -> dict:
    """Run every method of the suite on one item; return ``{"record": ..., "files": {relpath: bytes}}``.

    This is the unit of work of every executor; it depends only on its arguments (and the installed code).
    """
    from evals.baselines import run_agent
    from evals.suite import Suite

    suite = Suite.model_validate(suite_data)
    state = _worker_state(suite, metric_names, threads)
    baselines, metrics = state["baselines"], state["metrics"]
    name = slug(item["id"])
    record: Record = {k: item[k] for k in ("id", "dataset", "name", "group", "variant")}
    record.update(fingerprint=suite.fingerprint(), methods={}, images={}, errors={})
    files: Files = {}
    try:
        data = materialize(item, suite)
    except Exception as exc:
        record["errors"]["input"] = f"{type(exc).__name__}: {exc}"
        return {"record": record, "files": files}
    lq, gt = data["lq"], data["gt"]
    from evals.synthesis import canonical_params

    record.update(
        paired=gt is not None,
        size=list(lq.shape[:2]),
        labels=data["labels"],
        severity=data["severity"],
        applied={d.value: canonical_params(d, p) for d, p in data["applied"]},
    )
    report = baselines.assessor.assess(lq)
    present = report.present()
    record["assessed"] = {
        "present": [d.value for d in present],
        "severity": float(max((report.severity(d) for d in present), default=0.0)),
    }
    record["images"]["input"] = f"{IMAGES_DIR}/{name}/input.jpg"
    files[record["images"]["input"]] = _thumbnail(lq)
    if gt is not None:
        record["images"]["gt"] = f"{IMAGES_DIR}/{name}/gt.jpg"
        files[record["images"]["gt"]] = _thumbnail(gt)
    input_scores = metrics.score(lq, gt)
    record["methods"]["input"] = {"metrics": input_scores}
    for method in method_names(suite, baselines):
        try:
            if method == "identity":
                result = baselines.identity(lq)
            elif method.startswith("tool:"):
                result = baselines.single_tool(lq, method[5:])
            elif method.startswith("chain:"):
                result = baselines.chain(lq, _chain_tools(suite, baselines, method[6:]))
            elif method == "oracle":
                if gt is None or not data["applied"]:
                    continue  # needs synthetic pairs: the true degradations and the clean image
                result = baselines.oracle(lq, gt, data["applied"])
            else:
                result = run_agent(lq, state["contexts"][agent_methods(suite)[method]])
        except Exception as exc:  # one failing method must not lose the item
            logger.debug("method %s failed on %s", method, item["id"], exc_info=True)
            record["errors"][method] = f"{type(exc).__name__}: {exc}"
            continue
        scores = dict(input_scores) if method == "identity" else metrics.score(result.image, gt)
        entry: dict[str, Any] = {"metrics": scores, "seconds": round(result.seconds, 4), "steps": result.steps}
        entry.update(result.extra)
        method_slug = slug(method)
        for filename, content in result.files.items():
            rel = f"{TRACES_DIR}/{name}/{method_slug}/{filename}"
            files[rel] = content
            entry["trace" if filename == "trace.json" else "report"] = rel
        record["methods"][method] = entry
        if method != "identity":
            rel = f"{IMAGES_DIR}/{name}/{method_slug}.jpg"
            files[rel] = _thumbnail(result.image)
            record["images"][method] = rel
        else:
            record["images"][method] = record["images"]["input"]
    return {"record": record, "files": files}


# ----------------------------------------------------------------------------------------------
# Executors
# ----------------------------------------------------------------------------------------------

ResultSink = Callable[[Record, dict[str, Any]], None]


def _run_local(items: list[Record], args: tuple[Any, ...], workers: int, sink: ResultSink, bar: Any) -> None:
    if workers <= 1:
        for item in items:
            sink(item, evaluate_item(item, *args))
            bar.update(1)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start-up is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(evaluate_item, item, *args): item for item in items}
        try:
            for future in as_completed(futures):
                sink(futures[future], future.result())
                bar.update(1)
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise


def ray_available() -> bool:
    """Whether ``ray`` can be imported (``pip install "ray>=2.40"``)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _run_ray(
    items: list[Record], args: tuple[Any, ...], workers: int, address: str | None, sink: ResultSink, bar: Any
) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError('the ray executor needs Ray: install it with pip install "ray>=2.40"') from None
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=workers, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024
            )
        started = True
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        in_flight = max(1, workers)
        num_gpus = min(1.0, gpus / in_flight) if gpus > 0 else 0
        task = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=1)(evaluate_item)
        queue = list(items)
        pending: dict[Any, Record] = {}
        while queue or pending:
            while queue and len(pending) < in_flight:
                item = queue.pop(0)
                pending[task.remote(item, *args)] = item
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                sink(item, ray.get(ref))
                bar.update(1)
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _write(path: Path, content: bytes) -> None:
    from agent.artifacts import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: handle.write(content))


def load_finished(out_dir: Path, fingerprint: str) -> dict[str, Record]:
    """Finished item records in ``out_dir`` made with the suite of ``fingerprint``, by item id."""
    finished: dict[str, Record] = {}
    folder = out_dir / ITEMS_DIR
    if not folder.is_dir():
        return finished
    for path in folder.glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("fingerprint") == fingerprint and "id" in record:
            finished[record["id"]] = record
    return finished


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def run_suite(suite: Suite, options: RunOptions) -> RunOutcome:
    """Evaluate ``suite``: skip finished items, run the rest, write the records and the reports.

    Raises:
        ValueError: for an unknown executor.
        RuntimeError: when the Ray executor is asked for and Ray is missing.

    """
    from tqdm import tqdm

    from evals.iqa_metrics import MetricSet

    if options.executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {options.executor!r}; use 'local' or 'ray'")
    if options.executor == "ray" and not ray_available():
        raise RuntimeError('the ray executor needs Ray: install it with pip install "ray>=2.40"')
    start = time.perf_counter()
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    items, notes = build_items(suite, options.data_root, options.limit)
    fingerprint = suite.fingerprint()
    finished = load_finished(out_dir, fingerprint)
    pending = [i for i in items if i["id"] not in finished]
    # Availability is decided once here; workers only create the metrics that are available.
    metric_set = MetricSet(suite.metrics)
    status = metric_set.availability()
    lower_better = metric_set.lower_better()
    active = [n for n in suite.metrics if status[n] == "available"]
    records: dict[str, Record] = {i["id"]: finished[i["id"]] for i in items if i["id"] in finished}
    failed: list[str] = []

    def sink(item: Record, result: dict[str, Any]) -> None:
        for rel, content in result["files"].items():
            _write(out_dir / rel, content)
        record = result["record"]
        if record.get("errors"):
            failed.append(f"{record['id']}: {record['errors']}")
        records[item["id"]] = record
        _write(out_dir / ITEMS_DIR / f"{slug(item['id'])}.json", json.dumps(record, default=_json_default).encode())

    args = (suite.model_dump(mode="json"), active, options.threads_per_worker)
    bar = tqdm(
        total=len(items),
        initial=len(items) - len(pending),
        desc=f"eval {suite.name}",
        unit="img",
        disable=not options.progress,
        file=sys.stderr,
    )
    try:
        if options.executor == "ray":
            _run_ray(pending, args, options.workers, options.address, sink, bar)
        else:
            _run_local(pending, args, options.workers, sink, bar)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    ordered = [records[i["id"]] for i in items if i["id"] in records]
    meta = {
        "suite": suite.name,
        "fingerprint": fingerprint,
        "suite_config": suite.model_dump(mode="json"),
        "executor": options.executor,
        "workers": options.workers,
        "address": options.address,
        "data_root": str(options.data_root),
        "items": len(items),
        "ran": len(pending),
        "skipped": len(items) - len(pending),
        "wall_seconds": round(wall, 2),
        "cpu_count": os.cpu_count(),
        "metric_status": status,
        "lower_better": lower_better,
        "notes": notes,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    from evals.report import write_reports

    write_reports(out_dir, ordered, meta)
    return RunOutcome(out_dir, ordered, len(pending), len(items) - len(pending), failed, wall, notes, meta)
