"""High-frequency guidance (PromptFix's HGS): keep the input's fine detail through the VAE bottleneck.

At a sampling step with latent ``z_t`` the clean latent is estimated (``x0``), decoded to pixels and its
high-frequency content compared with the degraded input's; the latent then moves down the gradient of
that loss, ``n`` times per step::

    z <- z - scale * grad_z [ w(t) * L_hf(D(x0(z)), I) ],    w(t) = exp(-lambda * t)

with ``t`` the integer training timestep (0..999), so the constraint is strongest near the end of
sampling. ``L_hf`` is the mean of the squared differences of two normalised maps of the grayscale
images (either alone is selectable): the magnitude of the image with its Fourier spectrum zeroed inside a
radius around DC (an ideal high-pass), and the Sobel gradient magnitude; each map is divided by its own
maximum, per image, floored at a small constant so that a flat image keeps a flat map.

Two flaws of the released PromptFix script are avoided: guidance is **on by default** here, and the x0
estimate is the one of the scheduler in use. For k-diffusion sigma schedulers (Euler, Euler-ancestral,
LMS) the latent is ``z = x + sigma * eps`` and the UNet sees ``z / sqrt(sigma^2 + 1)``, so
``x0 = z - sigma * eps`` (epsilon prediction) or ``x0 = z / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)``
(v prediction); for alpha-bar schedulers (DDIM, DDPM, PNDM, DPM-Solver, UniPC, ...)
``x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)`` or ``x0 = sqrt(abar) z - sqrt(1 - abar) v``. The released
script divided ``z`` by sigma, which is wrong by a factor ``sqrt(1 + sigma^2) / sigma`` and explodes as
sigma goes to zero.

Memory: the gradient runs through the VAE decoder (and, by default, the UNet). Gradient checkpointing of
both is switched on for the guidance pass, and large latents are decoded tile by tile (diffusers' VAE
tiling, differentiable).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

HFLoss = Literal["both", "fft", "sobel"]

#: Schedulers whose latent lives in k-diffusion's sigma parameterisation (model input scaled by 1/sqrt(sigma^2+1)).
SIGMA_SCHEDULERS = frozenset({"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler"})
#: k-diffusion schedulers whose mid-step states make a per-step x0 estimate ambiguous: refused for guidance.
UNSUPPORTED_SCHEDULERS = frozenset(
    {
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "DPMSolverSDEScheduler",
        "EDMEulerScheduler",
        "EDMDPMSolverMultistepScheduler",
    }
)


@dataclass
class HFGConfig:
    """Settings of high-frequency guidance.

    Attributes:
        enabled: Apply guidance (on by default).
        lam: ``lambda`` of ``w(t) = exp(-lambda t)`` (PromptFix: 0.001; its paper also shows 0.01 and 0.1).
        iterations: Gradient steps per guided sampler step (PromptFix: 5).
        radius: Radius of the zeroed low-frequency disc, in index units of the centred spectrum (PromptFix: 30).
        loss: ``"both"`` (mean of the two terms), ``"fft"`` or ``"sobel"``.
        scale: Step size multiplying the gradient (PromptFix: 1).
        start: Guide the sampler steps from this fraction of the schedule on (0 = every step).
        steps: Explicit sampler-step indices to guide (overrides ``start`` when given).
        through_unet: Back-propagate through the UNet's noise prediction (exact gradient, PromptFix's choice);
            ``False`` treats the prediction as a constant (cheaper: one UNet pass per guided step).
        checkpointing: Use gradient checkpointing in the UNet and VAE decoder during guidance.
    """

    enabled: bool = True
    lam: float = 0.001
    iterations: int = 5
    radius: float = 30.0
    loss: HFLoss = "both"
    scale: float = 1.0
    start: float = 0.0
    steps: Sequence[int] | None = None
    through_unet: bool = True
    checkpointing: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("both", "fft", "sobel"):
            raise ValueError(f"hfg loss {self.loss!r} must be 'both', 'fft' or 'sobel'")
        if self.iterations < 0 or self.lam < 0 or self.radius < 0:
            raise ValueError("hfg iterations, lambda and radius must be >= 0")
        if not 0.0 <= self.start <= 1.0:
            raise ValueError(f"hfg start {self.start} must lie in [0, 1]")

    def guided(self, index: int, total: int) -> bool:
        """Whether sampler step ``index`` of ``total`` is guided."""
        if not self.enabled or self.iterations == 0:
            return False
        if self.steps is not None:
            return index in set(self.steps)
        return index >= int(math.floor(self.start * total))


def scheduler_kind(scheduler: Any) -> Literal["sigma", "alpha"]:
    """``"sigma"`` for k-diffusion schedulers, ``"alpha"`` for alpha-bar schedulers.

    Raises:
        ValueError: for schedulers whose x0 estimate is not defined per step here (Heun, KDPM2, EDM...).
    """
    name = type(scheduler).__name__
    if name in SIGMA_SCHEDULERS:
        return "sigma"
    if name in UNSUPPORTED_SCHEDULERS or not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"high-frequency guidance does not support {name}; use euler_a, euler, lms, ddim, ddpm, dpmpp or unipc, "
            "or switch hfg off"
        )
    return "alpha"


def current_sigma(scheduler: Any, timestep: Any) -> torch.Tensor:
    """The sigma a k-diffusion scheduler uses at ``timestep`` (its current step index, else the timestep's)."""
    index = scheduler.step_index
    if index is None:
        index = scheduler.begin_index if scheduler.begin_index is not None else scheduler.index_for_timestep(timestep)
    return scheduler.sigmas[index]


def train_timestep(timestep: Any) -> int:
    """The integer training timestep (0..999) nearest to a scheduler's (possibly fractional) ``timestep``."""
    return int(round(float(timestep)))


def predict_x0(scheduler: Any, sample: torch.Tensor, model_output: torch.Tensor, timestep: Any) -> torch.Tensor:
    """The clean-latent estimate from ``sample`` (the scheduler's own latent) and the UNet's ``model_output``.

    Uses the parameterisation of ``scheduler`` (sigma or alpha-bar) and its ``prediction_type``
    (``epsilon``, ``v_prediction`` or ``sample``); equal to ``step(...).pred_original_sample`` of the same
    scheduler (without thresholding or clipping).

    Raises:
        ValueError: for an unsupported scheduler or prediction type.
    """
    prediction = scheduler.config.prediction_type
    if prediction == "sample":
        return model_output
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type {prediction!r} is not supported; use epsilon, v_prediction or sample")
    if scheduler_kind(scheduler) == "sigma":
        sigma = current_sigma(scheduler, timestep).to(device=sample.device, dtype=sample.dtype)
        if prediction == "epsilon":
            return sample - sigma * model_output
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    abar = scheduler.alphas_cumprod[train_timestep(timestep)].to(device=sample.device, dtype=sample.dtype)
    if prediction == "epsilon":
        return (sample - (1 - abar) ** 0.5 * model_output) / abar**0.5
    return abar**0.5 * sample - (1 - abar) ** 0.5 * model_output


def guidance_weight(timestep: Any, lam: float) -> float:
    """``w(t) = exp(-lambda t)`` with ``t`` the integer training timestep."""
    return math.exp(-lam * train_timestep(timestep))


def grayscale(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB -> ``(B, H, W)`` luma (ITU-R BT.601 weights)."""
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


#: Smallest maxima the maps are divided by, so that a flat image keeps a (near-)zero map instead of being
#: stretched to all ones (PromptFix divides by the bare maximum).
FFT_FLOOR = 1e-3
SOBEL_FLOOR = 1e-2


def _normalise(maps: torch.Tensor, floor: float) -> torch.Tensor:
    """Divide every ``(H, W)`` map of the batch by its own maximum (at least ``floor``)."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(floor)
    return maps / peak[:, None, None]


def fft_high_pass(gray: torch.Tensor, radius: float) -> torch.Tensor:
    """Magnitude of ``gray`` (B, H, W) with every frequency within ``radius`` of DC removed, normalised per image."""
    import torch

    height, width = gray.shape[-2:]
    rows = torch.arange(height, device=gray.device, dtype=torch.float32) - height // 2
    cols = torch.arange(width, device=gray.device, dtype=torch.float32) - width // 2
    distance = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)
    keep = (distance > radius).to(torch.float32)
    spectrum = torch.fft.fftshift(torch.fft.fft2(gray.float()), dim=(-2, -1))
    filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum * keep, dim=(-2, -1)))
    return _normalise(filtered.abs(), FFT_FLOOR)


def sobel_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of ``gray`` (B, H, W), normalised per image."""
    import torch
    import torch.nn.functional as functional

    kernel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=gray.device)
    kernels = torch.stack([kernel_x, kernel_x.T])[:, None]
    padded = functional.pad(gray.float()[:, None], (1, 1, 1, 1), mode="replicate")
    grad = functional.conv2d(padded, kernels)
    return _normalise(torch.sqrt(grad.pow(2).sum(dim=1) + 1e-8), SOBEL_FLOOR)


def high_frequency_maps(rgb: torch.Tensor, radius: float, loss: HFLoss = "both") -> list[torch.Tensor]:
    """The selected normalised high-frequency maps of ``rgb`` (B, 3, H, W) in ``[0, 1]``."""
    gray = grayscale(rgb.float())
    maps = []
    if loss in ("both", "fft"):
        maps.append(fft_high_pass(gray, radius))
    if loss in ("both", "sobel"):
        maps.append(sobel_magnitude(gray))
    return maps


def high_frequency_loss(
    prediction: torch.Tensor, reference: torch.Tensor, radius: float = 30.0, loss: HFLoss = "both"
) -> torch.Tensor:
    """Per-image ``L_hf`` (B,) between two ``(B, 3, H, W)`` images in ``[0, 1]``: mean of the selected MSE terms."""
    import torch

    predicted = high_frequency_maps(prediction, radius, loss)
    target = high_frequency_maps(reference, radius, loss)
    terms = [(p - t).pow(2).flatten(1).mean(dim=1) for p, t in zip(predicted, target, strict=True)]
    return torch.stack(terms).mean(dim=0)


def apply_guidance(
    latent: torch.Tensor,
    timestep: Any,
    reference: torch.Tensor,
    *,
    scheduler: Any,
    predict_noise: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    config: HFGConfig,
) -> tuple[torch.Tensor, list[float]]:
    """Move ``latent`` down the weighted high-frequency loss for ``config.iterations`` gradient steps.

    Args:
        latent: The sampler's current latent ``z_t`` (scheduler space, float32).
        timestep: The current scheduler timestep.
        reference: The degraded input ``(B, 3, H, W)`` in ``[0, 1]`` (same size as the decoded image).
        scheduler: The scheduler in use (for ``scale_model_input`` and the x0 formula).
        predict_noise: Maps the *scaled* model input to the UNet's output (the conditional branch).
        decode: Maps a scaled clean latent (``x0``) to an image in ``[0, 1]``; must be differentiable.
        config: The guidance settings.

    Returns:
        The guided latent (detached) and the weighted loss before each gradient step.
    """
    import torch

    weight = guidance_weight(timestep, config.lam)
    losses: list[float] = []
    z = latent.detach()
    for _ in range(config.iterations):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            model_input = scheduler.scale_model_input(z, timestep)
            if config.through_unet:
                noise = predict_noise(model_input)
            else:
                with torch.no_grad():
                    noise = predict_noise(model_input)
            x0 = predict_x0(scheduler, z, noise.to(z.dtype), timestep)
            image = decode(x0).float().clamp(0.0, 1.0)
            loss = weight * high_frequency_loss(image, reference.float(), config.radius, config.loss).mean()
            (grad,) = torch.autograd.grad(loss, [z])
        losses.append(float(loss.detach()))
        z = (z - config.scale * grad).detach()
    return z, losses


__all__ = [
    "HFGConfig",
    "SIGMA_SCHEDULERS",
    "apply_guidance",
    "fft_high_pass",
    "guidance_weight",
    "high_frequency_loss",
    "high_frequency_maps",
    "predict_x0",
    "scheduler_kind",
    "sobel_magnitude",
]
