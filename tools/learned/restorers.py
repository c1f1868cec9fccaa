"""Learned restoration tools: one small NAFNet-class model per task (``nafnet_denoise``, ``nafnet_jpeg``, ...).

Weights load lazily in :meth:`LearnedRestorer.setup` from ``tools/learned/weights/<task>/`` or from
``$RESTORA_WEIGHTS/<task>/``; when they are missing the tool fails with a :class:`~tools.base.ToolError`
that names the command which trains them. Inference is tiled (overlapping tiles, feathered blending),
on the CPU in float32 unless ``RESTORA_DEVICE`` / ``RESTORA_DTYPE`` or the constructor say otherwise.

This module is imported by :func:`tools.learned.register_all`, not by ``tools`` itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tools.base import STRENGTH, Param, Tool, ToolError, ToolSpec, register_tool
from tools.learned.tasks import get_task, has_weights, train_command, weights_dir

logger = logging.getLogger(__name__)

TILE = Param("tile", "int", 512, 0, 4096, description="tile side for inference (0 = whole image in one pass)")
OVERLAP = 32


class LearnedRestorer(Tool):
    """Base of the learned tools: finds, loads and runs the trained network of one task."""

    task: ClassVar[str]

    def __init__(
        self,
        weights: Path | str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        model: Any = None,
        condition: str | None = None,
    ) -> None:
        """Create the tool; nothing is loaded until the first call.

        Args:
            weights: Folder holding ``model.safetensors`` and ``config.json`` (default: the task's weights folder).
            device: ``"cpu"`` (default), ``"cuda"``, ``"auto"``...; falls back to ``$RESTORA_DEVICE``.
            dtype: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``; falls back to ``$RESTORA_DTYPE``.
            model: An already built network (tests inject a tiny one); skips loading weights.
            condition: The condition kind an injected conditioned ``model`` takes (loaded weights name their own
                in ``config.json``; see :mod:`tools.learned.conditions`).
        """
        super().__init__()
        self.weights = Path(weights) if weights is not None else None
        self.device_name, self.dtype_name = device, dtype
        self.model = model
        self.condition = condition

    def weights_folder(self) -> Path:
        """Where this tool looks for its weights."""
        return self.weights if self.weights is not None else weights_dir(self.task)

    def missing(self) -> str | None:
        """The missing weights, naming the command that trains them; ``None`` when present (or a model was given)."""
        folder = self.weights_folder()
        if self.model is not None or has_weights(folder):
            return None
        return (
            f"no trained weights in {folder}; train them with `{train_command(self.task)}` "
            f"or set RESTORA_WEIGHTS to a folder holding {self.task}/model.safetensors"
        )

    def setup(self) -> None:
        """Load the network onto the chosen device and dtype.

        Raises:
            ToolError: when the weights are missing, naming the command that trains them.
        """
        from tools.learned.tiling import select_device, select_dtype

        self.device = select_device(self.device_name)
        self.dtype = select_dtype(self.dtype_name, self.device)
        if self.model is None:
            problem = self.missing()
            if problem:
                raise ToolError(f"{self.spec.name}: {problem}")
            folder = self.weights_folder()
            from tools.learned.train import load_model

            self.model = load_model(folder)
            self.condition = json.loads((folder / "config.json").read_text()).get("condition")
            logger.info("%s: loaded weights from %s", self.spec.name, folder)
        if getattr(self.model, "config", None) is not None and self.model.config.condition_dim and not self.condition:
            raise ToolError(f"{self.spec.name}: the network is conditioned but no condition kind is known")
        self.model = self.model.to(device=self.device, dtype=self.dtype).eval()

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Restore ``image`` with the trained network, tile by tile."""
        import torch

        from tools.learned.tiling import tiled_forward, to_image, to_tensor

        tile = int(params.get("tile", TILE.default))
        vector = None
        if self.condition:  # measured once on the whole image, shared by every tile
            from tools.learned.conditions import measure_condition

            vector = torch.from_numpy(measure_condition(self.condition, image)).to(self.device, self.dtype)

        def network(patch: torch.Tensor) -> torch.Tensor:
            return self.model(patch, None if vector is None else vector.expand(patch.shape[0], -1))

        with torch.inference_mode():
            tensor = to_tensor(image, self.device, self.dtype)
            out = tiled_forward(network, tensor, tile=tile, overlap=min(OVERLAP, tile // 4))
        return to_image(out)


def _spec(task_name: str, description: str) -> ToolSpec:
    task = get_task(task_name)
    return ToolSpec(
        name=f"nafnet_{task_name}",
        description=description,
        restores=task.restores,
        params=(STRENGTH, TILE),
        device="any",
        family="learned",
    )


@register_tool
class NAFNetDenoise(LearnedRestorer):
    """Blind denoiser (Gaussian sigma 0-50 of 255 and Poisson noise)."""

    task = "denoise"
    spec = _spec(
        "denoise",
        "Removes Gaussian and Poisson sensor noise blindly (sigma 0-50 of 255) with a small NAFNet trained here; "
        "no parameters to estimate; ~1 s per 512x512 on CPU.",
    )


@register_tool
class NAFNetJpeg(LearnedRestorer):
    """JPEG artifact remover (quality 10-90)."""

    task = "jpeg"
    spec = _spec(
        "jpeg",
        "Removes JPEG blocking and ringing (quality 10-90) blindly with a small NAFNet trained here; ~1 s per 512x512.",
    )


@register_tool
class NAFNetDerain(LearnedRestorer):
    """Rain-streak remover."""

    task = "derain"
    spec = _spec(
        "derain",
        "Removes rain streaks of any direction and density with a small NAFNet trained here; ~1 s per 512x512.",
    )


@register_tool
class NAFNetLowlight(LearnedRestorer):
    """Low-light enhancer."""

    task = "lowlight"
    spec = _spec(
        "lowlight",
        "Brightens under-exposed images (value shift, gamma or range compression) with a small NAFNet trained here; "
        "~1 s per 512x512.",
    )


@register_tool
class NAFNetMotionDeblur(LearnedRestorer):
    """Blind motion deblurring."""

    task = "motion_deblur"
    spec = _spec(
        "motion_deblur",
        "Removes linear motion blur (5-25 px, any direction) blindly with a small NAFNet trained here, also inside "
        "mixtures where no blur kernel can be estimated (after JPEG, noise, low resolution or low light were "
        "undone; any defocus under it goes too); ~1 s per 512x512.",
    )


@register_tool
class NAFNetDefocusDeblur(LearnedRestorer):
    """Blind defocus deblurring."""

    task = "defocus_deblur"
    spec = _spec(
        "defocus_deblur",
        "Removes defocus blur (disc radius 1.5-6 px) blindly with a small NAFNet trained here; ~1 s per 512x512.",
    )


@register_tool
class NAFNetUpscale(LearnedRestorer):
    """Detail restoration for images upsampled from a lower resolution."""

    task = "upscale"
    spec = _spec(
        "upscale",
        "Restores the detail of an image upsampled from 2x-4x lower resolution (same size in and out) with a small "
        "NAFNet trained here; ~1 s per 512x512.",
    )


@register_tool
class NAFNetAllInOne(LearnedRestorer):
    """All-in-one restorer for mixtures of up to three degradations."""

    task = "all_in_one"
    spec = _spec(
        "all_in_one",
        "Removes any mix of up to three of noise, motion and defocus blur, JPEG artifacts, low resolution (same "
        "size in and out), haze, rain and low light in one blind pass with a NAFNet trained here on synthetic "
        "mixtures; ~1 s per 512x512.",
    )


#: Tool class per task name.
RESTORERS: dict[str, type[LearnedRestorer]] = {
    cls.task: cls
    for cls in (
        NAFNetDenoise,
        NAFNetJpeg,
        NAFNetDerain,
        NAFNetLowlight,
        NAFNetMotionDeblur,
        NAFNetDefocusDeblur,
        NAFNetUpscale,
        NAFNetAllInOne,
    )
}

__all__ = [
    "RESTORERS",
    "LearnedRestorer",
    "NAFNetAllInOne",
    "NAFNetDefocusDeblur",
    "NAFNetDenoise",
    "NAFNetDerain",
    "NAFNetJpeg",
    "NAFNetLowlight",
    "NAFNetMotionDeblur",
    "NAFNetUpscale",
]
