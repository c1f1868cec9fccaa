"""Time fine-tuning epochs of SA-CLIP on a published-CLIP architecture (``python -m agent.perception.bench_finetune``).

Usage::

    python -m agent.perception.bench_finetune --arch ViT-B-16 [--samples 4096] [--batch-size 64] [--epochs 1]
    python -m agent.perception.bench_finetune --backend local-dir:~/clip/vit-b-16 ...

The training path is the one :mod:`agent.perception.saclip_train` takes for published weights (image tower
fine-tuned, text tower frozen, heads trained). ``--backend`` names published weights; ``--arch`` writes an
open_clip folder of that architecture with random weights first, so the timing needs nothing downloaded
(speed does not depend on the weight values; accuracy after such a run means nothing). One epoch is one
pass over ``--samples`` synthesised samples (``saclip_train --cache``). Prints the seconds per epoch, steps
and samples per second of the optimisation, and the wall time of the whole run (model building,
synthesis, validation included). Measured on a lent H200 (ViT-B-16, 4096 samples, batch 64): 20.4 s per
epoch, 3.2 steps/s (the README has the details).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def write_random_folder(arch: str, folder: Path, seed: int = 0) -> Path:
    """Write ``arch`` (an open_clip model name) with random weights in open_clip's local-folder layout.

    The folder holds ``open_clip_config.json`` and ``open_clip_model.safetensors``, like a published
    checkpoint downloaded with ``huggingface-cli download``, so ``--backend local-dir:<folder>`` loads it.
    """
    import open_clip
    import torch
    from safetensors.torch import save_model

    from agent.perception.saclip import OPEN_CLIP_CONFIG_FILE, register_default_config

    register_default_config()
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ValueError(f"open_clip knows no architecture {arch!r}; e.g. ViT-B-16, ViT-L-14 (open_clip.list_models())")
    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (folder / OPEN_CLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_model(model, str(folder / "open_clip_model.safetensors"))
    return folder


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune for ``args.epochs`` epochs and return the timing record."""
    from agent.perception import saclip_train
    from agent.perception.saclip import SETTINGS_FILE

    work = Path(args.work or tempfile.mkdtemp(prefix="restora-finetune-"))
    started = time.perf_counter()
    backend = args.backend
    if backend is None:
        backend = f"local-dir:{write_random_folder(args.arch, work / 'clip')}"
    steps = max(1, math.ceil(args.epochs * args.samples / args.batch_size))
    out = work / "saclip"
    train_args = [
        f"--backend={backend}",
        f"--out={out}",
        f"--steps={steps}",
        f"--batch-size={args.batch_size}",
        f"--cache={args.samples}",
        f"--cache-dir={work / 'cache'}",
        f"--workers={args.workers}",
        f"--val-per-class={args.val_per_class}",
        "--val-mixed=2",
        f"--eval-every={steps}",
        f"--save-every={steps}",
        "--calibrate-per-class=0",
        f"--shared={args.shared}",
    ]
    if args.device:
        train_args.append(f"--device={args.device}")
    saclip_train.main(train_args)
    training = json.loads((out / SETTINGS_FILE).read_text())["training"]
    seconds = float(training["seconds"])
    return {
        "backend": backend if args.backend else f"{args.arch} (random weights)",
        "device": training["device"],
        "samples_per_epoch": args.samples,
        "batch_size": args.batch_size,
        "steps": steps,
        "epochs": steps * args.batch_size / args.samples,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds * args.samples / (steps * args.batch_size),
        "steps_per_second": steps / seconds,
        "samples_per_second": steps * args.batch_size / seconds,
        "wall_seconds": time.perf_counter() - started,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m agent.perception.bench_finetune``."""
    from agent.perception.saclip_train import DEFAULT_SHARED

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--backend", default=None, help="published weights: hf-hub:<id> or local-dir:<folder>")
    source.add_argument("--arch", default="ViT-B-16", help="open_clip architecture built with random weights")
    parser.add_argument("--samples", type=int, default=4096, help="synthesised samples per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2, help="processes synthesising the samples")
    parser.add_argument("--val-per-class", type=int, default=2, help="validation crops per class (kept small)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="shared folder holding data/clean")
    parser.add_argument("--work", type=Path, default=None, help="folder for the model, cache and checkpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the timing of the fine-tuning epochs."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    record = run(build_parser().parse_args(argv))
    print(
        f"{record['backend']} on {record['device']}: {record['seconds_per_epoch']:.1f} s per epoch of "
        f"{record['samples_per_epoch']} samples ({record['steps_per_second']:.2f} steps/s, "
        f"{record['samples_per_second']:.0f} samples/s at batch {record['batch_size']}); "
        f"whole run {record['wall_seconds']:.1f} s"
    )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
