"""``diffusion_restore``: the text-conditioned latent-diffusion restorer as an agent tool.

One declared tool restores any degradation: the planner passes the targeted degradation as ``task``
(through :meth:`DiffusionRestore.suggest`), which picks the instruction prompt and the structural
correction weight. The result may contain invented detail, so the spec is ``generative`` and every
step is verified like any other (the fidelity guard compares it with its input).

Where the model comes from, first found wins: the constructor's ``model`` (or injected
``components``), the policy (:meth:`DiffusionRestore.from_policy`), ``$RESTORA_DIFFUSION_MODEL``. Each
may be a diffusers folder, a hub id (read from the local cache when ``HF_HUB_OFFLINE=1``), an
original-LDM single-file checkpoint (PromptFix / AutoDIR ``.ckpt``) or ``tiny`` for random test
weights. Nothing loads before the first call.

Conditioning, in the order the tokens enter the UNet's context:

* the instruction: free text set with :meth:`DiffusionRestore.set_conditioning` (or
  :meth:`DiffusionRestore.restore`), else the task's prompt (:data:`tools.diffusion.sampler.INSTRUCTIONS`,
  or AutoDIR's ``"A photo needs {c} artifact reduction"`` with ``prompt_style="autodir"``);
* AutoDIR's ``e_auto``: a tensor passed in, or with ``conditioning="e_auto"`` the probability-weighted
  mix of the AutoDIR prompts computed with this model's text encoder from the last assessor report
  seen by :meth:`DiffusionRestore.suggest`;
* the auxiliary description (PromptFix's second text): appended to the same context, since stock
  diffusers UNets have a single cross-attention per block.

Device: ``device`` or ``$RESTORA_DEVICE``, default ``auto`` (CUDA when present); dtype half precision on
CUDA (bfloat16 where supported), float32 on the CPU; ``offload="model"`` / ``"sequential"`` trade speed
for GPU memory. A CUDA out-of-memory error becomes a :class:`~tools.base.ToolError` naming the remedies.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from agent.degradations import ALL_DEGRADATIONS, Degradation
from agent.report import DegradationReport
from tools.base import STRENGTH, Param, Tool, ToolError, ToolRegistry, ToolSpec

logger = logging.getLogger(__name__)

#: Environment variable naming the diffusion model (folder, hub id, checkpoint file or ``tiny``).
MODEL_ENV = "RESTORA_DIFFUSION_MODEL"
#: Environment variable naming the structural-corrector weights folder.
SCM_ENV = "RESTORA_SCM_WEIGHTS"

MISSING_MODEL = (
    "diffusion_restore has no model: set RESTORA_DIFFUSION_MODEL (or pass model=...) to a diffusers folder with an "
    "8-channel InstructPix2Pix-layout UNet (e.g. a local copy of timbrooks/instruct-pix2pix), a hub id already in "
    "the local cache (`hf download timbrooks/instruct-pix2pix`), or an original-LDM checkpoint such as PromptFix's "
    "promptfix.ckpt; use 'tiny' for random test weights"
)

_TASKS = ("auto", *(d.value for d in ALL_DEGRADATIONS))

PARAMS: tuple[Param, ...] = (
    STRENGTH,
    Param("task", "choice", "auto", choices=_TASKS, description="degradation to remove (picks prompt and SCM weight)"),
    Param(
        "conditioning",
        "choice",
        "task",
        choices=("task", "e_auto"),
        description="task prompt, or AutoDIR's e_auto from the last assessor report",
    ),
    Param("steps", "int", 20, 1, 100, description="sampler steps"),
    Param("text_scale", "float", 6.5, 0.0, 20.0, description="text guidance scale"),
    Param("image_scale", "float", 1.25, 0.0, 10.0, description="image guidance scale"),
    Param("cfg", "choice", "promptfix", choices=("promptfix", "instructpix2pix"), description="guidance formula"),
    Param("denoise", "float", 1.0, 0.05, 1.0, description="share of the schedule run (<1 starts from the input)"),
    Param("seed", "int", 0, 0, 2**31 - 1, description="noise seed"),
    Param("hfg", "bool", True, description="high-frequency guidance (PromptFix HGS)"),
    Param("hfg_lambda", "float", 0.001, 0.0, 1.0, description="lambda of w(t) = exp(-lambda t)"),
    Param("hfg_iters", "int", 5, 0, 20, description="gradient steps per guided sampler step"),
    Param("hfg_radius", "float", 30.0, 0.0, 512.0, description="FFT high-pass radius (index units)"),
    Param("hfg_loss", "choice", "both", choices=("both", "fft", "sobel"), description="high-frequency loss terms"),
    Param("hfg_scale", "float", 1.0, 0.0, 1e6, description="step size of the guidance gradient"),
    Param("hfg_start", "float", 0.0, 0.0, 1.0, description="guide the steps from this share of the schedule on"),
    Param(
        "scm",
        "choice",
        "auto",
        choices=("auto", "learned", "classical", "off"),
        description="structural correction: trained F if present, else classical detail transfer",
    ),
    Param("scm_weight", "float", -1.0, -1.0, 1.0, description="w of I_sd + w F; negative = per task (0.1 for SR)"),
    Param("tile", "int", 0, 0, 1024, description="UNet window in latent cells (0 = automatic above 768 px)"),
)


class DiffusionRestore(Tool):
    """Text- and image-conditioned latent-diffusion restoration with HFG and structural correction."""

    spec = ToolSpec(
        name="diffusion_restore",
        description=(
            "Generative all-in-one restorer: an InstructPix2Pix-layout latent diffusion model (PromptFix / AutoDIR "
            "class) guided by a text instruction for the targeted degradation, with high-frequency guidance that "
            "keeps the input's fine detail and AutoDIR's structural correction. May invent detail; slow on CPU "
            "(seconds per step at 512 px on a GPU). Needs a model: RESTORA_DIFFUSION_MODEL."
        ),
        restores=ALL_DEGRADATIONS,
        params=PARAMS,
        generative=True,
        device="any",
        family="diffusion",
    )

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        components: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        offload: str = "none",
        scheduler: str | None = None,
        prompt_style: str = "instruction",
        scm_weights: str | os.PathLike[str] | None = None,
        scm_model: Any = None,
        local_files_only: bool | None = None,
        ignore_keys: tuple[str, ...] = (),
    ) -> None:
        """Create the tool; nothing is loaded until the first call.

        Args:
            model: Diffusers folder, hub id, original-LDM checkpoint or ``"tiny"``; default
                ``$RESTORA_DIFFUSION_MODEL``.
            components: Ready :class:`~tools.diffusion.pipeline.DiffusionComponents` (tests inject tiny ones).
            device: ``"cpu"``, ``"cuda"``, ``"auto"``; default ``$RESTORA_DEVICE``, else ``"auto"``.
            dtype: ``"float32"``, ``"float16"``, ``"bfloat16"``; default half precision on CUDA, float32 on CPU.
            offload: ``"none"``, ``"model"`` or ``"sequential"`` CPU offload.
            scheduler: Scheduler short name (default Euler-ancestral).
            prompt_style: ``"instruction"`` (InstructPix2Pix / PromptFix) or ``"autodir"`` task prompts.
            scm_weights: Folder of a trained structural corrector (default ``$RESTORA_SCM_WEIGHTS``, then
                ``$RESTORA_WEIGHTS/scm``); absent weights fall back to the classical correction.
            scm_model: A ready :class:`~tools.diffusion.scm.StructureCorrector` (tests).
            local_files_only: Hub ids from the local cache only (default: ``HF_HUB_OFFLINE``).
            ignore_keys: Checkpoint key substrings the converter may drop (e.g. PromptFix's extra attention).
        """
        super().__init__()
        if offload not in ("none", "model", "sequential"):
            raise ValueError(f"offload {offload!r} must be 'none', 'model' or 'sequential'")
        if prompt_style not in ("instruction", "autodir"):
            raise ValueError(f"prompt_style {prompt_style!r} must be 'instruction' or 'autodir'")
        self.model = model
        self.components = components
        self.device_name, self.dtype_name = device, dtype
        self.offload, self.scheduler_name, self.prompt_style = offload, scheduler, prompt_style
        self.scm_weights = scm_weights
        self.scm_model = scm_model
        self.local_files_only, self.ignore_keys = local_files_only, tuple(ignore_keys)
        self.probabilities: dict[str, float] = {}
        self.last_info: dict[str, Any] = {}
        self._conditioning: dict[str, Any] = {}

    @classmethod
    def from_policy(cls, policy: Any, **kwargs: Any) -> DiffusionRestore:
        """A tool configured by a policy's optional ``diffusion`` section (model, device, dtype, offload, ...)."""
        section = getattr(policy, "diffusion", None)
        settings: dict[str, Any] = {}
        if section is not None:
            raw = section if isinstance(section, dict) else getattr(section, "model_dump", lambda: vars(section))()
            known = ("model", "device", "dtype", "offload", "scheduler", "prompt_style", "scm_weights")
            settings = {k: v for k, v in raw.items() if k in known and v is not None}
        settings.update(kwargs)
        return cls(**settings)

    # ------------------------------------------------------------------------------------------
    # Conditioning
    # ------------------------------------------------------------------------------------------

    def set_conditioning(self, prompt: str | None = None, e_auto: Any = None, auxiliary: str | None = None) -> None:
        """Condition the following calls on free text, an ``e_auto`` tensor and/or an auxiliary description.

        Call with no arguments to go back to the task prompts.
        """
        self._conditioning = {"prompt": prompt, "e_auto": e_auto, "auxiliary": auxiliary}

    def restore(
        self,
        image: np.ndarray,
        prompt: str | None = None,
        *,
        e_auto: Any = None,
        auxiliary: str | None = None,
        params: dict[str, Any] | None = None,
    ):
        """Run the tool once with explicit conditioning (then restore the previous one); returns the ToolResult."""
        previous = self._conditioning
        self.set_conditioning(prompt, e_auto, auxiliary)
        try:
            return self(image, params)
        finally:
            self._conditioning = previous

    def suggest(self, report: DegradationReport, target: Degradation) -> dict[str, Any]:
        """Target ``target``; remember the report's probabilities for ``conditioning="e_auto"``."""
        self.probabilities = {d.value: float(e.probability) for d, e in report.estimates.items()}
        return {"task": Degradation(target).value}

    # ------------------------------------------------------------------------------------------
    # Loading and running
    # ------------------------------------------------------------------------------------------

    def missing(self) -> str | None:
        """How to provide a model when none is configured (``model=``, ``$RESTORA_DIFFUSION_MODEL``); else ``None``."""
        if self.components is None and not (self.model or os.environ.get(MODEL_ENV)):
            return MISSING_MODEL
        return None

    def setup(self) -> None:
        """Load the diffusion parts and the structural corrector.

        Raises:
            ToolError: when no model is configured or it cannot be loaded (the message says how to provide one).
        """
        from tools.diffusion.pipeline import ModelNotFoundError, load_components, select_device, select_dtype

        device_name = self.device_name or os.environ.get("RESTORA_DEVICE") or "auto"
        try:
            self.device = select_device(device_name)
        except ValueError as exc:
            raise ToolError(f"diffusion_restore: {exc}") from exc
        if self.components is None:
            source = self.model or os.environ.get(MODEL_ENV)
            if not source:
                raise ToolError(MISSING_MODEL)
            from tools.diffusion.convert import ConversionError

            try:
                self.components = load_components(
                    source,
                    device=str(self.device),
                    dtype=self.dtype_name,
                    scheduler=self.scheduler_name,
                    offload=self.offload,  # type: ignore[arg-type]
                    local_files_only=self.local_files_only,
                    ignore_keys=self.ignore_keys,
                )
            except (ModelNotFoundError, ConversionError) as exc:
                raise ToolError(f"diffusion_restore: {exc}") from exc
            logger.info("diffusion_restore: loaded %s on %s", source, self.device)
        elif self.components.device is None or self.device_name is not None:
            self.components.to(self.device, select_dtype(self.dtype_name, self.device), self.offload)  # type: ignore[arg-type]
        self._load_corrector()

    def _load_corrector(self) -> None:
        from tools.diffusion.scm import default_folder, load_corrector

        if self.scm_model is not None:
            self.scm_model = self.scm_model.to(self.device).eval()
            return
        folder = Path(self.scm_weights or os.environ.get(SCM_ENV) or default_folder())
        if (folder / "model.safetensors").is_file():
            self.scm_model = load_corrector(folder, self.device)
            logger.info("diffusion_restore: structural corrector from %s", folder)
        else:
            logger.info("diffusion_restore: no trained structural corrector in %s; classical fallback", folder)

    def _context(self, task: str, mode: str) -> Any:
        from tools.diffusion.sampler import build_conditioning, build_e_auto, instruction_for

        components = self.components
        explicit = self._conditioning
        prompt = explicit.get("prompt")
        e_auto = explicit.get("e_auto")
        if prompt is None and e_auto is None:
            if mode == "e_auto" and self.probabilities:
                e_auto = build_e_auto(components, self.probabilities)
            else:
                if mode == "e_auto":
                    logger.info("diffusion_restore: no assessor report seen; using the task prompt")
                prompt = instruction_for(task, self.prompt_style)  # type: ignore[arg-type]
        if prompt is not None and components.text_encoder is None:
            raise ToolError(
                "diffusion_restore: this model has no text encoder, so text prompts cannot be encoded; load a model "
                "with text_encoder/ and tokenizer/ or pass e_auto embeddings"
            )
        return build_conditioning(components, prompt, e_auto=e_auto, auxiliary=explicit.get("auxiliary"))

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Sample a restoration of ``image``, then apply the structural correction."""
        import torch

        from tools.diffusion.hfg import HFGConfig
        from tools.diffusion.pipeline import _module_device
        from tools.diffusion.sampler import SamplerConfig, restore
        from tools.diffusion.scm import apply_correction, task_weight

        task = str(params.get("task", "auto"))
        config = SamplerConfig(
            steps=int(params.get("steps", 20)),
            text_scale=float(params.get("text_scale", 6.5)),
            image_scale=float(params.get("image_scale", 1.25)),
            cfg=params.get("cfg", "promptfix"),
            denoise=float(params.get("denoise", 1.0)),
            seed=int(params.get("seed", 0)),
            latent_tile=int(params.get("tile", 0)),
            hfg=HFGConfig(
                enabled=bool(params.get("hfg", True)),
                lam=float(params.get("hfg_lambda", 0.001)),
                iterations=int(params.get("hfg_iters", 5)),
                radius=float(params.get("hfg_radius", 30.0)),
                loss=params.get("hfg_loss", "both"),
                scale=float(params.get("hfg_scale", 1.0)),
                start=float(params.get("hfg_start", 0.0)),
            ),
        )
        conditioning = self._context(task, str(params.get("conditioning", "task")))
        device = _module_device(self.components.unet)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)
        try:
            result = restore(self.components, tensor, conditioning, config)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            height, width = image.shape[:2]
            raise ToolError(
                f"diffusion_restore: a {width}x{height} image does not fit in GPU memory ({exc}); lower the tile "
                "parameter (e.g. tile=64), use dtype float16, offload='model' or 'sequential', fewer hfg_iters, or "
                "hfg=false"
            ) from exc
        restored = result.image[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
        mode = str(params.get("scm", "auto"))
        weight = float(params.get("scm_weight", -1.0))
        weight = task_weight(task) if weight < 0 else weight
        corrector = None
        if mode in ("auto", "learned"):
            corrector = self.scm_model
            if corrector is None and mode == "learned":
                raise ToolError(
                    "diffusion_restore: scm='learned' but no trained structural corrector was found; train one with "
                    "`python -m tools.diffusion.train_scm --model MODEL` or use scm='auto'"
                )
        if mode == "off":
            weight = 0.0
        corrector_device = _module_device(corrector) if corrector is not None else "cpu"
        out, used = apply_correction(restored, image, weight, corrector, corrector_device)
        self.last_info = {
            "seconds": round(result.seconds, 3),
            "seconds_per_step": round(float(np.mean(result.step_seconds)), 4) if result.step_seconds else 0.0,
            "hfg_steps": len(result.hfg_losses),
            "scm": used,
            "scm_weight": weight,
            "model": getattr(self.components, "source", ""),
        }
        return out


def register(registry: ToolRegistry | None = None) -> type[DiffusionRestore]:
    """Add :class:`DiffusionRestore` to ``registry`` (default: the process-wide one); idempotent."""
    from tools.base import REGISTRY

    (registry or REGISTRY).register(DiffusionRestore)
    return DiffusionRestore


__all__ = ["MISSING_MODEL", "MODEL_ENV", "PARAMS", "DiffusionRestore", "register"]
