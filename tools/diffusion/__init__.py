"""The text-conditioned diffusion restorer: our sampler over diffusers parts, HFG and structural correction.

* :mod:`~tools.diffusion.pipeline` loads the parts (diffusers folder, hub id, single-file checkpoint, tiny
  or SD-1.5-sized random weights), with device, dtype and offload choices.
* :mod:`~tools.diffusion.sampler` is the sampling loop: InstructPix2Pix / PromptFix text + image guidance,
  seeds, steps, img2img strength, latent tiling.
* :mod:`~tools.diffusion.hfg` is PromptFix's high-frequency guidance with a scheduler-correct x0 estimate.
* :mod:`~tools.diffusion.scm` and :mod:`~tools.diffusion.train_scm` are AutoDIR's structural correction.
* :mod:`~tools.diffusion.convert` maps original-LDM checkpoints (PromptFix, AutoDIR) onto diffusers parts.
* :mod:`~tools.diffusion.tool` declares ``diffusion_restore``; :func:`register` adds it to a registry.
* ``python -m tools.diffusion.bench`` prints seconds per step and peak memory.

Importing this package is light (no torch, diffusers or transformers until a model is used).
"""

from __future__ import annotations

from tools.diffusion.tool import DiffusionRestore, register

__all__ = ["DiffusionRestore", "register"]
