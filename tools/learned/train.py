"""Train one learned restorer (``python -m tools.learned.train --task denoise|jpeg|...|all_in_one``).

Training pairs are synthesised on the fly (:mod:`evals.synthesis`) from random crops of the
project's calibration split (BSD100) only; a seeded split of those images into training and
validation images is recorded in ``config.json``. AdamW with a cosine learning-rate schedule and the
PSNR loss (NAFNet's) or L1. A checkpoint (model, optimiser, scheduler, step, random states) is
written every ``--checkpoint-every`` steps and ``--resume`` continues from it; the GPU is used when
present. ``--workers N`` synthesises batches in N processes (needed to keep a GPU busy; each worker
draws from its own seeded stream, so a run is reproducible for a given worker count and resume
points). ``--time-budget SECONDS`` fits the cosine schedule to training time instead of steps: the
learning rate follows the elapsed share of the budget and training stops when it is spent (or at
``--steps``); the steps reached are recorded. The result is ``model.safetensors`` + ``config.json`` +
``MODEL_CARD.md`` in ``tools/learned/weights/<task>/`` (or ``--out``), followed by the held-out evaluation
(:mod:`tools.learned.evaluate`) unless ``--no-eval``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.learned.conditions import CONDITIONS, condition_dim, measure_condition
from tools.learned.tasks import (
    ALL_TASKS,
    CONTEXT_CHANCE,
    UNDONE_IN_CONTEXT,
    MixtureTask,
    Task,
    get_task,
    has_weights,
    weights_dir,
)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"
#: Training checkpoints live outside the shipped weights folder (``.restora-cache/`` is git-ignored).
CHECKPOINT_ROOT = Path(__file__).resolve().parents[2] / ".restora-cache" / "train"


@dataclass
class TrainSettings:
    """Everything that determines a training run (recorded in ``config.json``)."""

    task: str
    steps: int = 6000
    batch_size: int = 8
    crop: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    loss: str = "psnr"
    seed: int = 0
    val_images: int = 10
    val_every: int = 500
    checkpoint_every: int = 250
    workers: int = 0
    time_budget_s: float | None = None
    init_from: str | None = None
    #: Accept ``init_from`` weights trained for another task (e.g. a motion deblurrer started from the
    #: defocus deblurrer); the architecture then comes from there too.
    init_other_task: bool = False
    #: A condition vector measured on each input (:mod:`tools.learned.conditions`, e.g. ``"noise_level"``);
    #: an unconditioned ``init_from`` model gains zero-initialised conditioning layers (same outputs at first).
    condition: str | None = None


def split_images(names: list[str], val_images: int, seed: int) -> dict[str, list[str]]:
    """Seeded split of the calibration image names into ``{"train": [...], "val": [...]}``."""
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:val_images])
    return {"train": sorted(names[i] for i in order[val_images:]), "val": val}


def random_crop(image: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``crop`` x ``crop`` patch with a random flip and 90-degree rotation."""
    h, w = image.shape[:2]
    top, left = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
    patch = image[top : top + crop, left : left + crop]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(np.rot90(patch, int(rng.integers(4))))


def make_batch(
    task: Task | MixtureTask,
    images: list[np.ndarray],
    batch_size: int,
    crop: int,
    rng: np.random.Generator,
    condition: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Degraded and target patches, each ``(B, 3, crop, crop)`` float32, and their conditions ``(B, D)``.

    The target is the clean crop, or what the task leaves of a mixture (:meth:`Task.sample_pair`). The
    conditions are measured on each degraded patch (``D`` is 0 without a ``condition``).
    """
    patches = (random_crop(images[int(rng.integers(len(images)))], crop, rng) for _ in range(batch_size))
    return _degraded_batch(task, patches, rng, condition)


def _degraded_batch(
    task: Task | MixtureTask, patches: Iterable[np.ndarray], rng: np.random.Generator, condition: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Degrade each patch as :meth:`Task.sample_pair` does and stack inputs, targets and conditions (channels first).

    ``patches`` may draw from ``rng`` too: each is taken just before it is degraded.
    """
    degraded, clean, conditions = [], [], []
    for patch in patches:
        noisy, target, _ = task.sample_pair(patch, rng)
        degraded.append(noisy.transpose(2, 0, 1))
        clean.append(target.transpose(2, 0, 1))
        conditions.append(measure_condition(condition, noisy) if condition else np.zeros(0, np.float32))
    return (
        np.stack(degraded).astype(np.float32),
        np.stack(clean).astype(np.float32),
        np.stack(conditions).astype(np.float32),
    )


def batch_stream(task: Task | MixtureTask, images: list[np.ndarray], settings: TrainSettings, start_step: int):
    """Endless batches synthesised by ``settings.workers`` DataLoader processes.

    Worker ``i`` draws from ``np.random.default_rng([seed, start_step, i])``, so a run is reproducible
    for a given worker count and the same resume points.
    """
    import multiprocessing

    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class _Batches(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            rng = np.random.default_rng([settings.seed, start_step, info.id if info else 0])
            while True:
                batch = make_batch(task, images, settings.batch_size, settings.crop, rng, settings.condition)
                yield tuple(torch.from_numpy(part) for part in batch)

    loader = DataLoader(
        _Batches(),
        # The stream is a local class over in-memory images: fork (POSIX) shares them without pickling.
        multiprocessing_context="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
        batch_size=None,
        num_workers=settings.workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4,
        persistent_workers=True,
    )
    return iter(loader)


def cosine_lr(base_lr: float, min_lr: float, fraction: float) -> float:
    """The cosine schedule's learning rate after ``fraction`` (0-1) of training, from ``base_lr`` to ``min_lr``."""
    fraction = min(max(fraction, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * fraction)) / 2


def loss_fn(name: str):
    """The training loss: ``"psnr"`` (mean over the batch of 10 log10 MSE) or ``"l1"``."""
    import torch

    if name == "l1":
        return lambda out, target: (out - target).abs().mean()
    if name == "psnr":
        return lambda out, target: 10.0 * torch.log10(((out - target) ** 2).mean(dim=(1, 2, 3)) + 1e-8).mean()
    raise ValueError(f"unknown loss {name!r}; use 'psnr' or 'l1'")


def pick_device() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def validation_set(
    task: Task | MixtureTask, images: list[np.ndarray], seed: int, crop: int = 128, condition: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed validation batch: two centre-ish crops per validation image, degraded with a fixed seed.

    Returns degraded and target crops and the conditions measured on the degraded ones (as :func:`make_batch`).
    """
    rng = np.random.default_rng([seed, 12345])
    patches = (random_crop(image, min(crop, *image.shape[:2]), rng) for image in images for _ in range(2))
    return _degraded_batch(task, patches, rng, condition)


def _condition_or_none(conditions):
    """The model's ``condition`` argument: the batch's conditions, or ``None`` when they are empty (D = 0)."""
    return conditions if conditions.shape[-1] else None


def evaluate_batch(
    model, degraded: np.ndarray, clean: np.ndarray, device: str, conditions: np.ndarray | None = None
) -> tuple[float, float]:
    """Mean RGB PSNR (dB) of the input and of the model's output on a validation batch."""
    import torch

    if conditions is None:
        conditions = np.zeros((len(degraded), 0), np.float32)
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(degraded), 8):
            batch = torch.from_numpy(degraded[start : start + 8]).to(device)
            condition = _condition_or_none(torch.from_numpy(conditions[start : start + 8]).to(device))
            outputs.append(model(batch, condition).clamp(0, 1).cpu().numpy())
    model.train()
    restored = np.concatenate(outputs)

    def mean_psnr(a: np.ndarray) -> float:
        mse = ((a - clean) ** 2).reshape(len(a), -1).mean(axis=1)
        return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))

    return mean_psnr(degraded), mean_psnr(restored)


def save_weights(model, out: Path, config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_model(folder: Path, device: str = "cpu", condition: str | None = None):
    """Build the network described by ``folder/config.json`` and load ``folder/model.safetensors``.

    With ``condition`` naming a kind the saved model was not trained with, the network gets
    zero-initialised conditioning layers of that kind's size (its outputs are unchanged until trained).

    Raises:
        ValueError: when the saved model is conditioned on another kind than ``condition``.
    """
    from safetensors.torch import load_file

    from tools.learned.nafnet import NAFNet, NAFNetConfig

    config = NAFNetConfig.load(folder / "config.json")
    saved_condition = json.loads((folder / "config.json").read_text()).get("condition")
    state = load_file(str(folder / "model.safetensors"), device="cpu")
    if condition is None or condition == saved_condition:
        model = NAFNet(config)
        model.load_state_dict(state)
    elif config.condition_dim:
        raise ValueError(f"{folder} holds a model conditioned on {saved_condition!r}, not {condition!r}")
    else:
        config = NAFNetConfig.from_dict({**config.to_dict(), "condition_dim": condition_dim(condition)})
        model = NAFNet(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any("condition" not in key for key in missing):
            raise ValueError(f"{folder}: weights do not fit the conditioned network ({missing=}, {unexpected=})")
    return model.to(device).eval()


def train(
    settings: TrainSettings,
    shared: Path,
    out: Path,
    resume: bool = False,
    model_config: dict[str, Any] | None = None,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) training and write the weights; returns the recorded ``config.json`` content.

    Args:
        settings: The run's hyper-parameters; on ``resume`` a different ``steps`` re-targets the cosine schedule.
        shared: The shared folder holding ``data/clean``.
        out: Where ``model.safetensors``, ``config.json`` and ``MODEL_CARD.md`` are written.
        resume: Continue from the checkpoint in ``checkpoint_dir``.
        model_config: :class:`NAFNetConfig` fields (default config when ``None``; the checkpoint's on resume).
        progress: Show a tqdm progress bar.
        checkpoint_dir: Folder of ``checkpoint.pt`` (default ``.restora-cache/train/<task>`` in the repository).

    ``settings.init_from`` names a weights folder (``model.safetensors`` + ``config.json``, e.g. the shipped
    weights) whose network and architecture a fresh run starts from, with a new optimiser and schedule: how
    to continue training a model whose checkpoint is gone. On ``resume`` it is read from the checkpoint.
    """
    import torch
    from tqdm import tqdm

    from evals.synthesis import clean_split, load_clean_images
    from tools.learned.nafnet import NAFNet, NAFNetConfig, count_parameters

    task = get_task(settings.task)
    device = pick_device()
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    paths = clean_split(shared)["calibration"]
    loaded = dict(load_clean_images(paths, crop=None))
    split = split_images(sorted(loaded), settings.val_images, settings.seed)
    train_images = [loaded[n] for n in split["train"] if min(loaded[n].shape[:2]) >= settings.crop]
    val_images = [loaded[n] for n in split["val"]]

    checkpoint_path = (checkpoint_dir or CHECKPOINT_ROOT / settings.task) / CHECKPOINT_NAME
    state: dict[str, Any] | None = None
    if resume:
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"no {checkpoint_path} to resume from; run without --resume to start afresh")
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["settings"]["task"] != settings.task:
            raise ValueError(f"{checkpoint_path} is for task {state['settings']['task']!r}, not {settings.task!r}")
        model_config = state["model_config"]
        settings.init_from = state["settings"].get("init_from")  # the checkpoint already holds those weights
        if settings.condition and settings.condition != state["settings"].get("condition"):
            raise ValueError(
                f"{checkpoint_path} was trained with condition {state['settings'].get('condition')!r}, "
                f"not {settings.condition!r}"
            )
        settings.condition = state["settings"].get("condition")
    initial: dict[str, Any] | None = None
    if settings.init_from and not resume:
        start = Path(settings.init_from)
        if not has_weights(start):
            raise FileNotFoundError(f"--init-from {start}: no config.json and model.safetensors there")
        initial = json.loads((start / "config.json").read_text())
        if initial.get("task") != settings.task and not settings.init_other_task:
            raise ValueError(
                f"{settings.init_from} holds a {initial.get('task')!r} model, not {settings.task!r} "
                "(--init-other-task starts from it anyway)"
            )
        model_config = initial["model"]
    if settings.condition and not resume and initial is None:
        model_config = {**(model_config or {}), "condition_dim": condition_dim(settings.condition)}
    torch.manual_seed(settings.seed)
    config = NAFNetConfig.from_dict(model_config) if model_config else NAFNetConfig()
    initialised_from = state.get("initialised_from") if state is not None else None
    if initial is not None:
        model = load_model(start, device, settings.condition)  # put in training mode before the loop
        config = model.config
        initialised_from = {
            "folder": str(settings.init_from),
            "steps_done": initial["training"].get("steps_done", initial["training"].get("steps")),
            "val_psnr": initial["history"][-1]["val_psnr"] if initial.get("history") else None,
        }
        logger.info("starting from the weights in %s", settings.init_from)
    else:
        model = NAFNet(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.9)
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps, eta_min=settings.min_lr)
    rng = np.random.default_rng(settings.seed)
    step, history, seconds_before = 0, [], 0.0
    # Cosine targets (steps, or a time budget); a resume that re-targets appends an entry.
    schedule: list[dict[str, float]] = [{"from_step": 0, "steps": settings.steps}]
    if settings.time_budget_s:
        schedule = [{"from_step": 0, "time_budget_s": settings.time_budget_s}]
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location moved it to the GPU
        step, history = state["step"], state["history"]
        seconds_before = float(state.get("train_seconds", 0.0))
        schedule = state.get("schedule", [{"from_step": 0, "steps": state["settings"]["steps"]}])
        if settings.time_budget_s:
            if schedule[-1].get("time_budget_s") != settings.time_budget_s:
                schedule.append({"from_step": step, "time_budget_s": settings.time_budget_s})
        elif scheduler.T_max != settings.steps:  # a resumed run may be lengthened or shortened
            logger.info("cosine schedule now ends at step %d (was %d)", settings.steps, scheduler.T_max)
            scheduler.T_max = settings.steps
            schedule.append({"from_step": step, "steps": settings.steps})
            for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                # The scheduler's recursive update only scales the current lr; set the closed form instead.
                group["lr"] = cosine_lr(float(base_lr), settings.min_lr, step / settings.steps)
        logger.info("resumed %s at step %d", settings.task, step)

    def checkpoint() -> None:
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "history": history,
            "schedule": schedule,
            "train_seconds": seconds_before + time.perf_counter() - started,
            "settings": vars(settings),
            "initialised_from": initialised_from,
            "model_config": config.to_dict(),
        }
        partial = checkpoint_path.with_suffix(".tmp")
        torch.save(snapshot, partial)
        partial.replace(checkpoint_path)

    val_degraded, val_clean, val_conditions = validation_set(
        task, val_images, settings.seed, condition=settings.condition
    )
    criterion = loss_fn(settings.loss)
    model.train()
    started = time.perf_counter()
    budget = settings.time_budget_s
    bar = tqdm(total=settings.steps, initial=step, desc=f"train {task.name}", disable=not progress, smoothing=0.05)
    running = math.nan
    stream = batch_stream(task, train_images, settings, step) if settings.workers > 0 else None

    def out_of_time() -> bool:
        return budget is not None and seconds_before + time.perf_counter() - started >= budget

    while step < settings.steps and not out_of_time():
        if stream is not None:
            degraded_t, clean_t, condition_t = next(stream)
        else:
            batch = make_batch(task, train_images, settings.batch_size, settings.crop, rng, settings.condition)
            degraded_t, clean_t, condition_t = (torch.from_numpy(part) for part in batch)
        degraded_t = degraded_t.to(device, non_blocking=True)
        clean_t = clean_t.to(device, non_blocking=True)
        condition_t = condition_t.to(device, non_blocking=True)
        if budget is not None:  # the cosine schedule follows the share of the time budget spent
            lr = cosine_lr(settings.lr, settings.min_lr, (seconds_before + time.perf_counter() - started) / budget)
            for group in optimizer.param_groups:
                group["lr"] = lr
        loss = criterion(model(degraded_t, _condition_or_none(condition_t)), clean_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        if budget is None:
            scheduler.step()
        step += 1
        loss_value = loss.item()
        running = loss_value if math.isnan(running) else 0.98 * running + 0.02 * loss_value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if step % settings.val_every == 0 or step == settings.steps or out_of_time():
            psnr_in, psnr_out = evaluate_batch(model, val_degraded, val_clean, device, val_conditions)
            history.append({"step": step, "val_psnr_input": psnr_in, "val_psnr": psnr_out, "loss": running})
            logger.info("step %d: validation PSNR %.2f dB (input %.2f dB)", step, psnr_out, psnr_in)
            bar.write(f"step {step}: val PSNR {psnr_out:.2f} dB (input {psnr_in:.2f} dB)")
        if step % settings.checkpoint_every == 0 or step == settings.steps or out_of_time():
            checkpoint()
    bar.close()

    record = {
        "model": config.to_dict(),
        "task": task.name,
        "restores": [d.value for d in task.restores],
        "condition": settings.condition,
        "parameters": count_parameters(model),
        "training": vars(settings)
        | {
            "device": device,
            "seconds": round(seconds_before + time.perf_counter() - started, 1),
            "steps_done": step,
            "schedule": schedule,
        },
        "data": {"source": "BSD100 (calibration split of evals.synthesis.clean_split)", "split": split},
        "history": history,
    }
    if initialised_from is not None:
        record["initialised_from"] = initialised_from
    save_weights(model.cpu(), out, record)
    write_model_card(out, record)
    return record


def _capture_line(task: Task) -> str:
    """How a task's training draws add a real capture's noise (:func:`tools.learned.tasks.capture_noise`), if any."""
    if not (task.capture_share or task.capture_only_share):
        return "."
    return (
        f"; {task.capture_share:.0%} of the draws{' not placed in a mixture' if task.context_share else ''} also "
        "get a real capture's noise and compression on top "
        f"(tools.learned.tasks.capture_noise: signal-dependent, spatially correlated noise, then JPEG quality 60-95) "
        f"and {task.capture_only_share:.0%} get only that"
        + (
            f"; {task.capture_deblock_share:.0%} of all these noisy draws are then deblocked by deblock_jpeg, as "
            "the agent's JPEG step leaves a photo"
            if task.capture_deblock_share
            else ""
        )
        + "; the target is always the clean crop (validation crops are drawn the same way; the held-out "
        "evaluation below has no capture noise)."
    )


def _context_line(task: Task) -> str:
    """How a task's training draws place its degradation inside mixtures (:meth:`Task.sample_pair`), if they do."""
    if not task.context_share:
        return ""

    def kinds(items: tuple) -> str:
        return ", ".join(kind.value for kind in items)

    after_undone = tuple(kind for kind in task.context_after if kind in UNDONE_IN_CONTEXT)
    after_left = tuple(kind for kind in task.context_after if kind not in UNDONE_IN_CONTEXT)
    places = []
    if task.context_kept:
        places.append(f"applied first and kept in the target ({kinds(task.context_kept)})")
    if task.context_removed:
        places.append(f"applied first and removed too ({kinds(task.context_removed)})")
    if after_undone:
        places.append(
            f"applied after it and undone by the classical tool the agent runs first ({kinds(after_undone)}; "
            "low resolution left as a bicubic upsampling)"
        )
    if after_left:
        places.append(f"applied after it and left, as a failed earlier step leaves it ({kinds(after_left)})")
    if task.context_after_kept:
        missed = kinds(task.context_after_kept)
        places.append(f"applied after it and kept in the target, as missed by perception ({missed})")
    return (
        f" {task.context_share:.0%} of the draws are placed inside a mixture, as the agent meets this "
        f"degradation: each of the other degradations with chance {CONTEXT_CHANCE:.0%} (at least one), "
        f"{', or '.join(places)}; {task.context_only_share:.0%} of those draws lack the task's own degradation."
    )


def write_model_card(out: Path, record: dict[str, Any], evaluation: str | None = None) -> Path:
    """Write ``MODEL_CARD.md`` for a trained model; ``evaluation`` is the held-out table's Markdown."""
    task = ALL_TASKS[record["task"]]
    training = record["training"]
    last = record["history"][-1] if record["history"] else {}
    lines = [
        f"# nafnet_{task.name}: {task.description}",
        "",
        "Architecture: NAFNet-class U-Net (tools/learned/nafnet.py), "
        f"width {record['model']['width']}, encoder {record['model']['encoder_blocks']}, "
        f"middle {record['model']['middle_blocks']}, decoder {record['model']['decoder_blocks']}, "
        f"{record['parameters']:,} parameters.",
        "",
        "## Training",
        f"- Data: {record['data']['source']}; {len(record['data']['split']['train'])} training images, "
        f"{len(record['data']['split']['val'])} validation images (seed {training['seed']}; names in config.json).",
        f"- Degradations synthesised on the fly with evals.synthesis on random {training['crop']}x{training['crop']} "
        "crops (flips and 90-degree rotations)"
        + (
            "; mixtures of 1 / 2 / 3 distinct types drawn with weights "
            + " / ".join(f"{w:g}" for w in task.size_weights)
            + ", each sample's ranges from the default or the MiO100 preset at random, severities at random."
            if isinstance(task, MixtureTask)
            else _capture_line(task) + _context_line(task)
        ),
        f"- {training.get('steps_done', training['steps'])} steps, batch {training['batch_size']}, AdamW lr "
        f"{training['lr']} cosine to {training['min_lr']}"
        + (f" over a {training['time_budget_s']:.0f} s time budget" if training.get("time_budget_s") else "")
        + f", {training['loss']} loss, device {training['device']}, {training.get('seconds', 0) / 60:.1f} min.",
        f"- Reproduce: `{reproduce_command(task.name, training, record['model'])}`.",
    ]
    if len(training.get("schedule", [])) > 1:
        changes = "; ".join(
            f"from step {c['from_step']} towards "
            + (f"a {c['time_budget_s']:g} s time budget" if "time_budget_s" in c else f"{c['steps']}")
            for c in training["schedule"]
        )
        lines.append(f"- Resumed with a re-targeted cosine schedule ({changes}); reproduce with the same resumes.")
    if record.get("condition"):
        lines.append(
            f"- Conditioned on `{record['condition']}` measured on its input (tools/learned/conditions.py), at "
            "training and at inference alike: the tool stays blind for its user."
        )
    start = record.get("initialised_from")
    if start:
        score = f", validation {start['val_psnr']:.2f} dB" if start.get("val_psnr") is not None else ""
        lines.append(
            f"- Started from the weights in {start['folder']} ({start['steps_done']} steps{score}) with a new "
            "optimiser and schedule."
        )
    if training.get("note"):
        lines.append(f"- Note: {training['note']}")
    if last:
        lines.append(
            f"- Validation PSNR (RGB, BSD100 validation crops) at step {last['step']}: "
            f"{last['val_psnr']:.2f} dB (input {last['val_psnr_input']:.2f} dB)."
        )
    lines += ["", "## Held-out evaluation", ""]
    lines.append(evaluation or f"Not run yet: `python -m tools.learned.evaluate --task {task.name} --write-card`.")
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def reproduce_command(task: str, training: dict[str, Any], model: dict[str, Any]) -> str:
    """The ``tools.learned.train`` command line that repeats a recorded run (its non-default settings)."""
    defaults = TrainSettings(task=task)
    parts = [f"python -m tools.learned.train --task {task}"]
    for name in (
        "steps",
        "batch_size",
        "crop",
        "lr",
        "loss",
        "seed",
        "workers",
        "time_budget_s",
        "init_from",
        "condition",
    ):
        value = training.get(name)
        if name == "steps" or (value is not None and value != getattr(defaults, name)):
            flag = {"time_budget_s": "--time-budget"}.get(name, "--" + name.replace("_", "-"))
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    if training.get("init_other_task"):
        parts.append("--init-other-task")
    from tools.learned.nafnet import NAFNetConfig

    default_model = NAFNetConfig().to_dict()
    for name in ("width", "encoder_blocks", "middle_blocks", "decoder_blocks"):
        value = model.get(name)
        if value is not None and value != default_model[name]:
            shown = " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
            parts.append(f"--{name.replace('_', '-')} {shown}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(ALL_TASKS))
    parser.add_argument("--steps", type=int, default=TrainSettings.steps)
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    parser.add_argument("--crop", type=int, default=TrainSettings.crop)
    parser.add_argument("--lr", type=float, default=TrainSettings.lr)
    parser.add_argument("--loss", choices=("psnr", "l1"), default=TrainSettings.loss)
    parser.add_argument("--seed", type=int, default=TrainSettings.seed)
    parser.add_argument("--val-every", type=int, default=TrainSettings.val_every)
    parser.add_argument("--checkpoint-every", type=int, default=TrainSettings.checkpoint_every)
    parser.add_argument("--width", type=int, default=None, help="network width (default: NAFNetConfig's)")
    parser.add_argument("--encoder-blocks", type=int, nargs="+", default=None, help="NAF blocks per encoder level")
    parser.add_argument("--middle-blocks", type=int, default=None, help="NAF blocks at the lowest resolution")
    parser.add_argument("--decoder-blocks", type=int, nargs="+", default=None, help="NAF blocks per decoder level")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default tools/learned/weights/<task>)")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="shared folder holding data/clean")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint (see --checkpoint-dir)")
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=None, help="checkpoint folder (default .restora-cache/train/<task>)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=0, help="processes synthesising batches (0: in the loop)")
    parser.add_argument(
        "--time-budget", type=float, default=None, help="seconds of training; the cosine schedule follows the time"
    )
    parser.add_argument(
        "--init-from", default=None, help="weights folder to start from (new optimiser and schedule; e.g. shipped)"
    )
    parser.add_argument(
        "--init-other-task", action="store_true", help="accept --init-from weights trained for another task"
    )
    parser.add_argument(
        "--condition",
        choices=sorted(CONDITIONS),
        default=None,
        help="condition the network on a vector measured on its input (e.g. noise_level: FFDNet-like)",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation afterwards")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = TrainSettings(
        task=args.task,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        loss=args.loss,
        seed=args.seed,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        workers=args.workers,
        time_budget_s=args.time_budget,
        init_from=args.init_from,
        init_other_task=args.init_other_task,
        condition=args.condition,
    )
    out = args.out or weights_dir(args.task)
    architecture = {
        "width": args.width,
        "encoder_blocks": args.encoder_blocks,
        "middle_blocks": args.middle_blocks,
        "decoder_blocks": args.decoder_blocks,
    }
    model_config = {name: value for name, value in architecture.items() if value is not None} or None
    train(settings, args.shared, out, resume=args.resume, model_config=model_config, checkpoint_dir=args.checkpoint_dir)
    if not args.no_eval:
        from tools.learned.evaluate import evaluate_and_record

        evaluate_and_record(args.task, out, args.shared, limit=args.eval_limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
