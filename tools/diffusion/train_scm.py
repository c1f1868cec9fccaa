"""Train the structural-correction module ``F`` (``python -m tools.diffusion.train_scm --model FOLDER``).

AutoDIR's recipe, with the diffusion model frozen: for a clean image ``I_gt`` and its degraded
version ``I``, noise the clean latent to a random training step ``t``, let the UNet (conditioned on
``I``'s latent and the task's text) predict the noise, take the one-step estimate

    z~ = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)

decode it to ``I_sd`` and minimise ``|| I_sd + F([I_sd, I]) - I_gt ||^2`` over ``F`` only (Adam,
cosine learning rate from 1e-3; AutoDIR trains 8000 iterations at batch 256 on 8 GPUs).

Training pairs are synthesised on the fly (:mod:`evals.synthesis`, every degradation type) from random
crops of the calibration split (BSD100). The result goes to ``--out`` (default
``$RESTORA_WEIGHTS/scm`` or ``tools/learned/weights/scm``) as ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.diffusion.pipeline import DiffusionComponents
from tools.diffusion.scm import StructureCorrector

logger = logging.getLogger(__name__)

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"


@dataclass
class SCMSettings:
    """Hyper-parameters of one training run (recorded in ``config.json``)."""

    steps: int = 8000
    batch_size: int = 4
    crop: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-6
    seed: int = 0
    prompt_style: str = "instruction"


def one_step_estimate(
    components: DiffusionComponents,
    clean: torch.Tensor,
    degraded: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """``I_sd``: the decoded one-step clean estimate at random training steps (no gradients).

    Args:
        components: The frozen diffusion parts.
        clean: Ground truth ``(B, 3, H, W)`` in ``[0, 1]``; ``H, W`` multiples of ``components.pixel_multiple``.
        degraded: The degraded inputs, same shape.
        context: Text context ``(B, T, D)``.
        generator: CPU generator for ``t`` and the noise.
        timesteps: Fixed integer steps ``(B,)`` instead of random ones.

    Returns:
        ``(B, 3, H, W)`` float32 in ``[0, 1]`` on the UNet's device.
    """
    from tools.diffusion.pipeline import _module_device
    from tools.diffusion.sampler import decode_latent, encode_image

    multiple = components.pixel_multiple
    if clean.shape[-1] % multiple or clean.shape[-2] % multiple:
        raise ValueError(f"crop sides must be multiples of {multiple}, got {tuple(clean.shape[-2:])}")
    scheduler, unet = components.scheduler, components.unet
    batch = clean.shape[0]
    with torch.no_grad():
        clean_latent = encode_image(components, clean) * components.scaling_factor
        image_latent = encode_image(components, degraded)
        components.activate("unet", "vae")
        device = _module_device(unet)
        train_steps = int(scheduler.config.num_train_timesteps)
        if timesteps is None:
            timesteps = torch.randint(0, train_steps, (batch,), generator=generator)
        noise = torch.randn(clean_latent.shape, generator=generator).to(device)
        abar = scheduler.alphas_cumprod.to(device)[timesteps.to(device)].float()[:, None, None, None]
        clean_latent, image_latent = clean_latent.to(device), image_latent.to(device)
        noisy = abar.sqrt() * clean_latent + (1 - abar).sqrt() * noise
        stacked = torch.cat([noisy, image_latent], dim=1).to(unet.dtype)
        output = unet(stacked, timesteps.to(device), encoder_hidden_states=context.to(device, unet.dtype)).sample
        output = output.float()
        if scheduler.config.prediction_type == "v_prediction":
            estimate = abar.sqrt() * noisy - (1 - abar).sqrt() * output
        elif scheduler.config.prediction_type == "sample":
            estimate = output
        else:
            estimate = (noisy - (1 - abar).sqrt() * output) / abar.sqrt()
        return decode_latent(components, estimate)


def scm_loss(
    corrector: StructureCorrector,
    restored: torch.Tensor,
    degraded: torch.Tensor,
    clean: torch.Tensor,
    weight: float = 1.0,
) -> torch.Tensor:
    """Mean squared error of ``I_sd + w F([I_sd, I])`` to the ground truth."""
    return torch.nn.functional.mse_loss(corrector.correct(restored, degraded, weight), clean)


def training_step(
    corrector: StructureCorrector,
    optimizer: torch.optim.Optimizer,
    restored: torch.Tensor,
    degraded: torch.Tensor,
    clean: torch.Tensor,
    weight: float = 1.0,
) -> float:
    """One optimiser step of ``F`` on a batch; returns the loss before the step."""
    corrector.train()
    loss = scm_loss(corrector, restored, degraded, clean, weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(corrector.parameters(), 0.5)
    optimizer.step()
    return float(loss.detach())


def _batch(
    images: list[np.ndarray], settings: SCMSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Clean and degraded crops ``(B, 3, crop, crop)`` and the degradation applied to each."""
    from agent.degradations import ALL_DEGRADATIONS
    from evals.synthesis import degrade
    from tools.learned.train import random_crop

    clean, degraded, names = [], [], []
    for _ in range(settings.batch_size):
        patch = random_crop(images[int(rng.integers(len(images)))], settings.crop, rng)
        kind = ALL_DEGRADATIONS[int(rng.integers(len(ALL_DEGRADATIONS)))]
        bad, _ = degrade(patch, kind, rng)
        clean.append(patch.transpose(2, 0, 1))
        degraded.append(bad.transpose(2, 0, 1))
        names.append(kind.value)
    return np.stack(clean).astype(np.float32), np.stack(degraded).astype(np.float32), names


def train_scm(
    components: DiffusionComponents,
    settings: SCMSettings,
    out: Path,
    shared: Path = DEFAULT_SHARED,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``F`` against the frozen ``components`` on synthesised pairs; write and return the record."""
    from tqdm import tqdm

    from evals.synthesis import clean_split, load_clean_images
    from tools.diffusion.pipeline import _module_device
    from tools.diffusion.sampler import instruction_for
    from tools.diffusion.scm import save_corrector

    if settings.crop % components.pixel_multiple:
        raise ValueError(f"--crop must be a multiple of {components.pixel_multiple} for this model")
    paths = clean_split(shared)["calibration"]
    images = [image for _, image in load_clean_images(paths, crop=None) if min(image.shape[:2]) >= settings.crop]
    if not images:
        raise ValueError(f"no calibration image is at least {settings.crop} px; lower --crop")
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    device = _module_device(components.unet)
    style: Any = settings.prompt_style
    prompts = {kind: instruction_for(kind, style) for kind in _task_names()}
    unique = sorted(set(prompts.values()))
    contexts = dict(zip(unique, components.encode_prompt(unique).float(), strict=True))
    corrector = StructureCorrector().to(device)
    optimizer = torch.optim.Adam(corrector.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps, eta_min=settings.min_lr)
    history: list[dict[str, float]] = []
    running = math.nan
    started = time.perf_counter()
    bar = tqdm(total=settings.steps, desc="train scm", disable=not progress, smoothing=0.05)
    for step in range(1, settings.steps + 1):
        clean_np, degraded_np, kinds = _batch(images, settings, rng)
        clean, degraded = torch.from_numpy(clean_np).to(device), torch.from_numpy(degraded_np).to(device)
        context = torch.stack([contexts[prompts[kind]] for kind in kinds])
        restored = one_step_estimate(components, clean, degraded, context, generator)
        loss = training_step(corrector, optimizer, restored, degraded, clean)
        schedule.step()
        running = loss if math.isnan(running) else 0.98 * running + 0.02 * loss
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % 100 == 0 or step == settings.steps:
            history.append({"step": step, "loss": running})
            logger.info("step %d: loss %.5f", step, running)
    bar.close()
    record = {
        "training": asdict(settings) | {"seconds": round(time.perf_counter() - started, 1), "device": str(device)},
        "diffusion_model": components.source,
        "data": "BSD100 calibration split, every degradation type of evals.synthesis",
        "history": history,
    }
    save_corrector(corrector.cpu(), out, record)
    return record


def _task_names() -> list[str]:
    from agent.degradations import ALL_DEGRADATIONS

    return [d.value for d in ALL_DEGRADATIONS]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from tools.diffusion.pipeline import load_components
    from tools.diffusion.scm import default_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="diffusers folder, hub id, single-file checkpoint or 'tiny'")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $RESTORA_WEIGHTS/scm)")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared folder holding data/clean")
    parser.add_argument("--steps", type=int, default=SCMSettings.steps)
    parser.add_argument("--batch-size", type=int, default=SCMSettings.batch_size)
    parser.add_argument("--crop", type=int, default=SCMSettings.crop)
    parser.add_argument("--lr", type=float, default=SCMSettings.lr)
    parser.add_argument("--seed", type=int, default=SCMSettings.seed)
    parser.add_argument("--prompt-style", choices=("instruction", "autodir"), default="instruction")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    components = load_components(args.model, device=args.device, dtype=args.dtype)
    settings = SCMSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        seed=args.seed,
        prompt_style=args.prompt_style,
    )
    out = args.out or default_folder()
    record = train_scm(components, settings, out, args.shared)
    last = record["history"][-1]["loss"] if record["history"] else float("nan")
    print(f"wrote {out} (final loss {last:.5f}, {record['training']['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
