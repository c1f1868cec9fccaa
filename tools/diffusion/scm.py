"""AutoDIR's structural correction: ``I_res = I_sd + w * F([I_sd, I])`` after the diffusion restorer.

``F`` is a NAFNet (:mod:`tools.learned.nafnet`) taking the diffusion output ``I_sd`` and the degraded
input ``I`` stacked into 6 channels. The project's NAFNet maps ``C`` channels to ``C`` with a global
residual, so :class:`StructureCorrector` builds one with 6 channels and reads ``F`` off the first three
output channels minus the first three input channels (``F`` is therefore exactly the network's learned
residual on ``I_sd``); its last convolution starts at zero, so an untrained ``F`` leaves ``I_sd`` unchanged.

``w`` is per task: 1 by default, 0.1 after super-resolution so the generative detail survives (AutoDIR's
inference settings). Without trained weights the classical, training-free counterpart
(:class:`tools.classical.structure.StructureCorrect`: guided detail transfer from the input where it
agrees with the restored structure) is used instead.

Weights live in ``<folder>/model.safetensors`` + ``config.json`` (written by
:mod:`tools.diffusion.train_scm`); the default folder is ``$RESTORA_WEIGHTS/scm`` or the package's
``tools/learned/weights/scm``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tools.learned.nafnet import NAFNet, NAFNetConfig

logger = logging.getLogger(__name__)

#: Weight of the correction per degradation (AutoDIR: 0.1 for super-resolution, 1 otherwise).
TASK_WEIGHTS: dict[str, float] = {"low_resolution": 0.1}
DEFAULT_WEIGHT = 1.0
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def task_weight(task: str | None) -> float:
    """AutoDIR's ``w`` for a degradation name (``None`` or ``"auto"``: the default 1)."""
    return TASK_WEIGHTS.get(str(getattr(task, "value", task)), DEFAULT_WEIGHT)


def default_config() -> NAFNetConfig:
    """The NAFNet configuration of ``F``: 6 input channels, the learned restorers' default sizes."""
    return NAFNetConfig(in_channels=6, width=16, encoder_blocks=(1, 1, 2), middle_blocks=2, decoder_blocks=(1, 1, 1))


class StructureCorrector(nn.Module):
    """``F([I_sd, I])``: the structural residual added to the diffusion output."""

    def __init__(self, config: NAFNetConfig | None = None) -> None:
        super().__init__()
        config = config or default_config()
        if config.in_channels != 6:
            raise ValueError(
                f"the structural corrector takes 6 channels (I_sd and I), got in_channels={config.in_channels}"
            )
        if config.condition_dim:
            raise ValueError("the structural corrector is not conditioned; build it with condition_dim=0")
        self.net = NAFNet(config)
        nn.init.zeros_(self.net.ending.weight)
        if self.net.ending.bias is not None:
            nn.init.zeros_(self.net.ending.bias)

    @property
    def config(self) -> NAFNetConfig:
        """The wrapped NAFNet's configuration."""
        return self.net.config

    def forward(self, restored: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """``F([I_sd, I])``, ``(B, 3, H, W)``: the correction to add (times ``w``) to ``restored``."""
        if restored.shape != degraded.shape:
            raise ValueError(f"restored {tuple(restored.shape)} and degraded {tuple(degraded.shape)} differ in shape")
        stacked = torch.cat([restored, degraded], dim=1)
        return self.net(stacked)[:, :3] - restored

    def correct(self, restored: torch.Tensor, degraded: torch.Tensor, weight: float = DEFAULT_WEIGHT) -> torch.Tensor:
        """``I_res = I_sd + w * F([I_sd, I])`` (not clipped)."""
        return restored + weight * self(restored, degraded)


def save_corrector(model: StructureCorrector, folder: Path | str, record: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (the NAFNet config under ``"model"``) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    payload = {"kind": "structure_corrector", "model": model.config.to_dict()} | (record or {})
    (folder / CONFIG_NAME).write_text(json.dumps(payload, indent=2))
    return folder


def load_corrector(folder: Path | str, device: str | torch.device = "cpu") -> StructureCorrector:
    """Read a corrector written by :func:`save_corrector`.

    Raises:
        FileNotFoundError: when ``folder`` lacks the weights or config, naming the training command.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"no structural-corrector weights in {folder}; train them with "
            "`python -m tools.diffusion.train_scm --model FOLDER --out " + str(folder) + "`"
        )
    model = StructureCorrector(NAFNetConfig.load(folder / CONFIG_NAME))
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME), device="cpu"))
    return model.to(device).eval()


def default_folder() -> Path:
    """``$RESTORA_WEIGHTS/scm``, else the package's ``tools/learned/weights/scm``."""
    from tools.learned.tasks import weights_dir

    return weights_dir("scm")


def classical_correct(restored: np.ndarray, degraded: np.ndarray, weight: float) -> np.ndarray:
    """The training-free fallback: guided detail transfer from ``degraded`` (``structure_correct``)."""
    from tools.classical.structure import StructureCorrect

    if weight <= 0:
        return restored
    return StructureCorrect().correct(restored, degraded, weight=float(min(weight, 1.0)))


def apply_correction(
    restored: np.ndarray,
    degraded: np.ndarray,
    weight: float,
    model: StructureCorrector | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, str]:
    """``I_res`` for float32 ``(H, W, 3)`` images with the learned ``F`` when given, else the classical fallback.

    Returns:
        The corrected image clipped to ``[0, 1]`` and which corrector ran (``"learned"``, ``"classical"``, ``"off"``).
    """
    if weight <= 0:
        return restored, "off"
    if model is None:
        return np.clip(classical_correct(restored, degraded, weight), 0.0, 1.0).astype(np.float32), "classical"
    dtype = next(model.parameters()).dtype

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device, dtype)

    with torch.no_grad():
        out = model.correct(tensor(restored), tensor(degraded), weight)
    return np.clip(out[0].float().permute(1, 2, 0).cpu().numpy(), 0.0, 1.0).astype(np.float32), "learned"


__all__ = [
    "StructureCorrector",
    "apply_correction",
    "classical_correct",
    "default_config",
    "default_folder",
    "load_corrector",
    "save_corrector",
    "task_weight",
]
