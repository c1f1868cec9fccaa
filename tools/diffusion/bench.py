"""Benchmark the diffusion restorer: seconds per sampler step and peak memory.

Usage::

    python -m tools.diffusion.bench --model FOLDER|HUB_ID|CHECKPOINT|tiny|sd15-random --size 512 --steps 20 [--hfg]

``sd15-random`` builds an SD-1.5-sized 8-channel UNet and SD VAE with random weights (no text encoder:
random prompt embeddings of 77 x 768 are used), so realistic timings need no download. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the process's peak resident set size on the CPU
(which includes loading the model). A one-step warm-up run (no guidance) precedes the timed run.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time


def _peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per figure."""
    parser = argparse.ArgumentParser(description="seconds per step and peak memory of the diffusion restorer")
    parser.add_argument("--model", default="tiny", help="diffusers folder, hub id, checkpoint, tiny or sd15-random")
    parser.add_argument("--size", type=int, default=512, help="square image side in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hfg", action="store_true", help="switch high-frequency guidance on")
    parser.add_argument("--hfg-iters", type=int, default=5, help="HFG gradient steps per sampler step")
    parser.add_argument("--no-hfg-unet-grad", action="store_true", help="HFG without back-propagation through the UNet")
    parser.add_argument("--tile", type=int, default=0, help="UNet window in latent cells (0 = automatic)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: half on CUDA)")
    parser.add_argument("--offload", default="none", choices=("none", "model", "sequential"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from tools.diffusion.hfg import HFGConfig
    from tools.diffusion.pipeline import load_components
    from tools.diffusion.sampler import SamplerConfig, build_conditioning, restore

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = time.perf_counter()
    components = load_components(args.model, device=args.device, dtype=args.dtype, offload=args.offload)
    load_seconds = time.perf_counter() - load_start
    device = components.device
    if components.text_encoder is not None:
        conditioning = build_conditioning(components, "remove the noise")
    else:
        generator = torch.Generator("cpu").manual_seed(args.seed)
        embeds = torch.randn((1, 77, components.cross_attention_dim), generator=generator)
        conditioning = build_conditioning(components, prompt_embeds=embeds)
    image = torch.rand((1, 3, args.size, args.size), generator=torch.Generator("cpu").manual_seed(args.seed))
    image = image.to(device)
    hfg = HFGConfig(enabled=args.hfg, iterations=args.hfg_iters, through_unet=not args.no_hfg_unet_grad)
    restore(
        components, image, conditioning, SamplerConfig(steps=1, hfg=HFGConfig(enabled=False), latent_tile=args.tile)
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    config = SamplerConfig(steps=args.steps, hfg=hfg, seed=args.seed, latent_tile=args.tile)
    result = restore(components, image, conditioning, config)
    per_step = sum(result.step_seconds) / max(len(result.step_seconds), 1)
    if device.type == "cuda":
        memory = f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    else:
        memory = f"peak process RSS: {_peak_rss_mib():.0f} MiB"
    hfg_text = f"on ({args.hfg_iters} iterations/step)" if args.hfg else "off"
    print(f"model: {args.model} ({components.source}) on {device}, {str(components.dtype).removeprefix('torch.')}")
    tile = result.info["latent_tile"]
    print(f"image: {args.size}x{args.size}, steps: {args.steps}, hfg: {hfg_text}, latent tile: {tile}")
    print(f"load: {load_seconds:.2f} s")
    print(f"sampling: {result.seconds:.2f} s total, {per_step:.4f} s per step")
    print(memory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
