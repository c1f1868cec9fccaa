"""SA-CLIP: a semantic-agnostic CLIP that tells which degradations an image carries (AutoDIR, RESEARCH.md section 1).

An open_clip model scores the prompts ``"A photo needs {phrase} artifact reduction."`` for every type of
:class:`~agent.degradations.Degradation` plus ``"no"`` (clean): cosine similarity of the image and text
embeddings times the CLIP logit scale, softmaxed over the K prompts, gives the *dominant* degradation as in
AutoDIR (``"no"`` winning means stop). Images here often carry several degradations at once, so two small
heads on the image embedding add independent per-type *presence* probabilities (multi-label) and
*severities*. :meth:`SAClipModel.e_auto` is AutoDIR's probability-weighted text embedding
``e_auto = sum_i p_i E_T(T_i)`` for a text-conditioned restorer.

Backends, one code path (:func:`create_model`):

* ``"default"``: the small open_clip config shipped in ``saclip_configs/`` (a narrow ModifiedResNet image
  tower and a two-layer text tower), trained from scratch by :mod:`agent.perception.saclip_train`; the
  other configs there (``"SACLIP-small"``) are named directly and trained the same way;
* ``"hf-hub:<org/repo>"`` or ``"local-dir:<folder>"``: published CLIP weights; the text tower is frozen
  and the image tower fine-tuned, as in the paper. ``local_files_only`` (or ``HF_HUB_OFFLINE=1``) reads only
  the local Hugging Face cache. A bare path is refused as ambiguous.

Importing this module imports torch; the CLI and the agent import it only when SA-CLIP is asked for.
Optionally (``use_measurements``) the hand-crafted measurements of
:func:`agent.perception.estimators.measure` enter through a small MLP added to the image embedding.

Trained checkpoints are folders (:func:`save_checkpoint`): ``saclip.json`` (the SA-CLIP settings),
``open_clip_config.json`` (the architecture, so open_clip rebuilds it offline) and ``saclip.safetensors``.
The packaged default lives in :data:`DEFAULT_WEIGHTS_DIR`.

The losses of the paper and this project's additions are pure functions: :func:`fidelity_loss`,
:func:`semantic_agnostic_loss` and :func:`saclip_loss`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from agent.degradations import Degradation
from agent.report import DegradationEstimate, DegradationReport

logger = logging.getLogger(__name__)

#: The prompt of AutoDIR; ``{}`` is replaced by a phrase of :data:`PHRASES`.
PROMPT_TEMPLATE = "A photo needs {} artifact reduction."

#: Label of the clean class (its prompt reads "A photo needs no artifact reduction.").
CLEAN = "no"

#: Readable phrase per class name, in class order: ``"no"`` (clean) first, then every degradation.
PHRASES: dict[str, str] = {
    CLEAN: "no",
    Degradation.NOISE.value: "noise",
    Degradation.MOTION_BLUR.value: "motion blur",
    Degradation.DEFOCUS_BLUR.value: "defocus blur",
    Degradation.JPEG.value: "JPEG compression",
    Degradation.LOW_RESOLUTION.value: "low resolution",
    Degradation.HAZE.value: "haze",
    Degradation.RAIN.value: "rain",
    Degradation.RAINDROP.value: "raindrop",
    Degradation.LOW_LIGHT.value: "low light",
    Degradation.COLOR_CAST.value: "color cast",
}

#: Class names of the softmax, index 0 is clean.
CLASSES: tuple[str, ...] = tuple(PHRASES)

#: The degradation types of the presence and severity heads, in :data:`CLASSES` order without ``"no"``.
TYPES: tuple[Degradation, ...] = tuple(Degradation(name) for name in CLASSES[1:])

#: Name of the shipped small open_clip config (``saclip_configs/SACLIP-tiny.json``).
DEFAULT_MODEL_NAME = "SACLIP-tiny"
CONFIG_DIR = Path(__file__).with_name("saclip_configs")
#: Where the packaged default checkpoint lives.
DEFAULT_WEIGHTS_DIR = Path(__file__).with_name("weights") / "saclip"
TRAIN_COMMAND = "python -m agent.perception.saclip_train --backend default --out agent/perception/weights/saclip"

SETTINGS_FILE = "saclip.json"
WEIGHTS_FILE = "saclip.safetensors"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"

_SCHEMES = ("hf-hub:", "local-dir:")

#: The text tower's token table; checkpoints store only the rows the class prompts use (:func:`save_checkpoint`).
TOKEN_EMBEDDING = "clip.token_embedding.weight"
TOKEN_ROWS = "clip.token_embedding.prompt_rows"
TOKEN_IDS = "clip.token_embedding.prompt_ids"


def prompts(classes: Sequence[str] = CLASSES) -> list[str]:
    """The prompt of every class, e.g. ``"A photo needs motion blur artifact reduction."``."""
    return [PROMPT_TEMPLATE.format(PHRASES[c]) for c in classes]


@dataclass
class SAClipSettings:
    """Everything besides the weights that a checkpoint needs to be rebuilt and used.

    Attributes:
        backend: ``"default"``, ``"hf-hub:<id>"`` or ``"local-dir:<path>"`` the model started from.
        freeze_text: Keep the text tower fixed (published weights); the default trains it from scratch.
        head_hidden: Hidden width of the presence/severity heads.
        use_measurements: Feed the estimators' measurements through an MLP into the image embedding.
        measurement_names: The measurement keys used, in order (empty when unused).
        measurement_hidden: Hidden width of the measurement MLP.
        crops: Number of native-resolution crops averaged at inference (1 = centre only, up to 5).
        image_size: Crop side fed to the image tower (the open_clip config's ``image_size``).
        class_bias: Offsets added to the K prompt logits after training (empty: none), fitted on held-out
            photos so that the softmax's decisions are balanced over the classes
            (:func:`agent.perception.saclip_train.fit_output_biases`).
        presence_bias: Offsets added to the T presence logits, so that probability 0.5 is each type's
            best operating point on the same held-out photos (empty: none).
        hybrid_weights: Per type, the weight of the estimator assessor's probability and severity in the
            ``hybrid`` assessor, fitted on held-out photos
            (:func:`agent.perception.saclip_train.fit_hybrid_weights`; empty: 0.5 for every type).
        half_weights: Store the weights in float16 (half the file; they are used in float32 after loading).
        training: Free-form record of how the checkpoint was trained (steps, data, seed, ...).
    """

    backend: str = "default"
    freeze_text: bool = False
    head_hidden: int = 128
    use_measurements: bool = False
    measurement_names: list[str] = field(default_factory=list)
    measurement_hidden: int = 64
    crops: int = 5
    image_size: int = 160
    class_bias: list[float] = field(default_factory=list)
    presence_bias: list[float] = field(default_factory=list)
    hybrid_weights: dict[str, float] = field(default_factory=dict)
    half_weights: bool = False
    training: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


def register_default_config() -> None:
    """Make the project's open_clip configs (``saclip_configs/*.json``) known to open_clip (idempotent)."""
    import open_clip

    if not set(project_configs()) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def project_configs() -> list[str]:
    """Names of the project's own open_clip configs (``saclip_configs/*.json``), trained from scratch."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def parse_backend(backend: str) -> tuple[str, str]:
    """Split a backend string into ``(kind, identifier)``: ``("default", "SACLIP-tiny")``, ``("hf-hub", id)``...

    ``"default"`` is the shipped config; another name from :func:`project_configs` (``"SACLIP-small"``)
    picks that config, also trained from scratch.

    Raises:
        ValueError: for a bare path or an unknown name; the message shows the accepted forms.
    """
    if backend in ("default", DEFAULT_MODEL_NAME):
        return "default", DEFAULT_MODEL_NAME
    if backend in project_configs():
        return "default", backend
    for scheme in _SCHEMES:
        if backend.startswith(scheme):
            identifier = backend[len(scheme) :]
            if not identifier:
                raise ValueError(f"backend {backend!r} names nothing after {scheme!r}")
            return scheme[:-1], identifier
    raise ValueError(
        f"backend {backend!r} is ambiguous; use 'default', a project config ({', '.join(project_configs())}), "
        "'hf-hub:<org/repo>' or 'local-dir:<folder>' "
        "(a folder holding open_clip_config.json and the weights)"
    )


#: Files of a hub repository that an open_clip model needs (config, weights, tokenizer).
HUB_FILES = [
    "open_clip_config.json",
    "open_clip_model.safetensors",
    "tokenizer*",
    "vocab*",
    "merges*",
    "special_tokens_map.json",
    "*.model",
]


def hub_snapshot(repo_id: str, local_files_only: bool) -> Path:
    """Local folder of the hub repository ``repo_id`` (downloaded unless ``local_files_only``).

    Raises:
        RuntimeError: when the files are neither cached nor downloadable; the message says how to fix it.
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=local_files_only))
    except Exception as exc:
        hint = (
            "it is not in the local Hugging Face cache (offline); download it once or use local-dir:<folder>"
            if local_files_only
            else "check the id and the network, or use local-dir:<folder>"
        )
        raise RuntimeError(f"could not get hf-hub:{repo_id}: {hint} ({type(exc).__name__}: {exc})") from exc


def load_clip(backend: str, *, pretrained: bool = True, local_files_only: bool | None = None) -> tuple[Any, Any, dict]:
    """Build the open_clip model, its tokenizer and its architecture config for ``backend``.

    Args:
        backend: See :func:`parse_backend`.
        pretrained: Load the published weights (``False`` builds the architecture with random weights).
        local_files_only: Never download (hub backends read the local Hugging Face cache only); ``None``
            follows the ``HF_HUB_OFFLINE`` environment variable.

    Returns:
        ``(clip_model, tokenizer, open_clip_config)`` where the config is the ``{"model_cfg", "preprocess_cfg"}``
        dict that rebuilds the architecture.
    """
    import open_clip

    kind, identifier = parse_backend(backend)
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if kind == "default":
        register_default_config()
        config = {"model_cfg": open_clip.get_model_config(identifier), "preprocess_cfg": {}}
        clip = open_clip.create_model(identifier, load_weights=False)
        tokenizer = open_clip.get_tokenizer(identifier)
        return clip, tokenizer, config
    path = Path(identifier).expanduser() if kind == "local-dir" else hub_snapshot(identifier, local_files_only)
    if not (path / OPEN_CLIP_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{path} holds no {OPEN_CLIP_CONFIG_FILE}; a local-dir: backend needs open_clip's folder layout "
            "(open_clip_config.json with model_cfg, and open_clip_model.safetensors)"
        )
    if pretrained and not any(any(path.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth")):
        raise FileNotFoundError(
            f"{path} holds no weights (open_clip_model.safetensors); put them there, or pass pretrained=False "
            "to start from random weights"
        )
    config = json.loads((path / OPEN_CLIP_CONFIG_FILE).read_text())
    clip = open_clip.create_model(f"local-dir:{path}", load_weights=pretrained)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    return clip, tokenizer, {"model_cfg": config["model_cfg"], "preprocess_cfg": config.get("preprocess_cfg", {})}


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class SAClipModel(nn.Module):
    """The open_clip model plus the multi-label heads and the optional measurement MLP.

    Args:
        clip: An open_clip ``CLIP`` model.
        tokenizer: Its tokenizer (used once, to tokenise the class prompts).
        settings: The :class:`SAClipSettings`.
    """

    def __init__(self, clip: Any, tokenizer: Any, settings: SAClipSettings) -> None:
        super().__init__()
        self.clip = clip
        self.settings = settings
        self.register_buffer("prompt_tokens", tokenizer(prompts()), persistent=False)
        embed_dim = int(clip.text_projection.shape[-1] if hasattr(clip, "text_projection") else clip.visual.output_dim)
        self.embed_dim = embed_dim
        n_types = len(TYPES)
        self.heads = nn.Sequential(
            nn.Linear(embed_dim, settings.head_hidden), nn.GELU(), nn.Linear(settings.head_hidden, 2 * n_types)
        )
        n_measure = len(settings.measurement_names)
        self.measurement_mlp: nn.Sequential | None
        if settings.use_measurements:
            if not n_measure:
                raise ValueError("use_measurements needs measurement_names (the keys of estimators.measure)")
            self.measurement_mlp = nn.Sequential(
                nn.Linear(embed_dim + n_measure, settings.measurement_hidden),
                nn.GELU(),
                nn.Linear(settings.measurement_hidden, embed_dim),
            )
        else:
            self.measurement_mlp = None
        self.register_buffer("measurement_mean", torch.zeros(n_measure))
        self.register_buffer("measurement_std", torch.ones(n_measure))
        mean = (
            clip.visual.image_mean if getattr(clip.visual, "image_mean", None) else (0.48145466, 0.4578275, 0.40821073)
        )
        std = clip.visual.image_std if getattr(clip.visual, "image_std", None) else (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._text_cache: torch.Tensor | None = None
        if settings.freeze_text:
            self.freeze_text_tower()

    # -- parameters ---------------------------------------------------------------------------

    def text_parameters(self) -> list[Any]:
        """Parameters of the text tower (everything of the CLIP model outside ``visual``, logit scale excluded)."""
        return [p for n, p in self.clip.named_parameters() if not n.startswith("visual.") and "logit" not in n]

    def freeze_text_tower(self) -> None:
        """Stop gradients into the text tower, as AutoDIR fine-tunes only the image tower."""
        for parameter in self.text_parameters():
            parameter.requires_grad_(False)

    # -- forward ------------------------------------------------------------------------------

    def normalize_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(N, 3, S, S)`` RGB in [0, 1] to the tower's normalised input."""
        mean = cast(torch.Tensor, self.pixel_mean)
        std = cast(torch.Tensor, self.pixel_std)
        return (images - mean) / std

    def text_features(self) -> torch.Tensor:
        """L2-normalised text embeddings ``E_T(T_i)`` of the K prompts, ``(K, D)`` (cached while frozen or in eval)."""
        trainable = self.training and any(p.requires_grad for p in self.text_parameters())
        if not trainable and self._text_cache is not None:
            return self._text_cache
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            features = functional.normalize(self.clip.encode_text(self.prompt_tokens), dim=-1)
        self._text_cache = None if trainable else features.detach()
        return features

    def train(self, mode: bool = True) -> SAClipModel:
        """Switch train/eval mode and drop the cached text embeddings."""
        self._text_cache = None
        return super().train(mode)

    def forward(self, images: torch.Tensor, measurements: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Score a batch.

        Args:
            images: ``(N, 3, S, S)`` RGB in [0, 1] (not yet normalised), S the tower's image size.
            measurements: ``(N, M)`` raw measurements in ``settings.measurement_names`` order; required when
                ``use_measurements`` is on, ignored otherwise.

        Returns:
            ``logits`` (N, K) scaled cosine similarities over :data:`CLASSES`; ``presence_logits`` (N, T)
            and ``severity`` (N, T) in [0, 1] over :data:`TYPES`; ``image_features`` (N, D) normalised.
        """
        features = self.clip.encode_image(self.normalize_pixels(images))
        if self.measurement_mlp is not None:
            if measurements is None:
                raise ValueError("this SA-CLIP model uses measurements; pass estimators.measure() values")
            m_mean = cast(torch.Tensor, self.measurement_mean)
            m_std = cast(torch.Tensor, self.measurement_std)
            standardised = (measurements - m_mean) / m_std
            features = features + self.measurement_mlp(torch.cat([features, standardised.clamp(-8, 8)], dim=-1))
        features = functional.normalize(features, dim=-1)
        logits = self.clip.logit_scale.exp() * features @ self.text_features().T
        heads = self.heads(features)
        n_types = len(TYPES)
        presence_logits = heads[:, :n_types]
        if self.settings.class_bias:
            logits = logits + logits.new_tensor(self.settings.class_bias)
        if self.settings.presence_bias:
            presence_logits = presence_logits + presence_logits.new_tensor(self.settings.presence_bias)
        return {
            "logits": logits,
            "presence_logits": presence_logits,
            "severity": torch.sigmoid(heads[:, n_types:]),
            "image_features": features,
        }

    def e_auto(self, probabilities: torch.Tensor) -> torch.Tensor:
        """AutoDIR's ``e_auto = sum_i p_i E_T(T_i)``: ``(N, K)`` softmax probabilities -> ``(N, D)``."""
        return probabilities @ self.text_features()


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------

_SQRT_FLOOR = 1e-8


def fidelity_loss(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AutoDIR's fidelity loss ``L_FID = 1 - sum_i sqrt(y_i p_i(I))``, averaged over the batch.

    Args:
        probabilities: ``(N, K)`` softmax over the classes for the degraded images.
        targets: ``(N, K)`` target distribution ``y`` (one-hot, or spread over the degradations present).

    Returns:
        The scalar loss (0 when ``p == y``; 1 when they share no support).
    """
    return (1.0 - torch_where_positive_sqrt(targets * probabilities).sum(dim=-1)).mean()


def semantic_agnostic_loss(clean_probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AutoDIR's semantic-agnostic loss ``L_SA = sum_i sqrt(y_i p_i(I_gt))``, averaged over the batch.

    It penalises predicting the degraded image's labels ``y`` on its clean ground truth ``I_gt``, so
    that what the image shows (content) cannot stand in for how it looks (quality). The ``"no"`` entry
    of ``y`` (index 0) is ignored: predicting "no" on a clean image is the desired answer.

    Args:
        clean_probabilities: ``(M, K)`` softmax for the clean images.
        targets: ``(M, K)`` the targets of the corresponding degraded images.
    """
    masked = targets.clone()
    masked[:, 0] = 0.0
    products = masked * clean_probabilities
    return torch_where_positive_sqrt(products).sum(dim=-1).mean()


def torch_where_positive_sqrt(values: torch.Tensor) -> torch.Tensor:
    """``sqrt(values)`` with a floor against infinite gradients, exact zeros kept at zero."""
    return torch.where(values > 0, values.clamp_min(_SQRT_FLOOR).sqrt(), torch.zeros_like(values))


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of :func:`saclip_loss` (``lambda_sa`` is AutoDIR's lambda, 1 in the paper)."""

    fidelity: float = 1.0
    lambda_sa: float = 1.0
    cross_entropy: float = 1.0
    presence: float = 1.0
    severity: float = 1.0


def saclip_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: torch.Tensor,
    presence: torch.Tensor,
    severity: torch.Tensor,
    sa_rows: torch.Tensor | None = None,
    sa_targets: torch.Tensor | None = None,
    weights: LossWeights = LossWeights(),  # noqa: B008 - frozen dataclass, safe as a default
    presence_known: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The full SA-CLIP objective and its terms.

    ``total = w_f L_FID + lambda L_SA + w_ce CE + w_p BCE + w_s L1``. The fidelity loss alone collapses
    (``1 - sqrt(p)`` has almost no gradient once the model is confidently wrong, and the SA term pushes
    everything toward "no"), so the softmax also gets a cross-entropy term. The presence heads get a
    multi-label binary cross-entropy and the severity head an L1 error counted only where the type is present
    and its severity known. A real photo is labelled with its dominant degradation only: ``presence_known``
    limits its BCE to that type, and a negative severity marks the severity as unknown.

    Args:
        outputs: :meth:`SAClipModel.forward` results for the whole batch (degraded and clean rows).
        targets: ``(N, K)`` softmax targets (rows sum to 1; clean rows one-hot on "no").
        presence: ``(N, T)`` 0/1 labels per type.
        severity: ``(N, T)`` severities in [0, 1] (ignored where ``presence`` is 0 or the severity negative).
        sa_rows: Indices of the clean rows that are the ground truth of a degraded row, or ``None``.
        sa_targets: ``(M, K)`` the degraded rows' targets for those clean rows.
        weights: The term weights.
        presence_known: ``(N, T)`` 1 where the presence label is known, 0 where it is not (``None``: all known).

    Returns:
        ``{"total", "fidelity", "sa", "cross_entropy", "presence", "severity"}`` scalar tensors.
    """
    logits = outputs["logits"]
    probabilities = logits.softmax(dim=-1)
    zero = logits.new_zeros(())
    fid = fidelity_loss(probabilities, targets)
    ce = -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
    sa = zero
    if sa_rows is not None and sa_targets is not None and len(sa_rows):
        sa = semantic_agnostic_loss(probabilities[sa_rows], sa_targets)
    known = torch.ones_like(presence) if presence_known is None else presence_known
    per_entry = functional.binary_cross_entropy_with_logits(outputs["presence_logits"], presence, reduction="none")
    bce = (per_entry * known).sum() / known.sum().clamp(min=1.0)
    mask = (presence > 0.5) & (severity >= 0)
    sev = (outputs["severity"] - severity).abs()[mask].mean() if bool(mask.any()) else zero
    total = (
        weights.fidelity * fid
        + weights.lambda_sa * sa
        + weights.cross_entropy * ce
        + weights.presence * bce
        + weights.severity * sev
    )
    return {"total": total, "fidelity": fid, "sa": sa, "cross_entropy": ce, "presence": bce, "severity": sev}


# ----------------------------------------------------------------------------------------------
# Creating, saving, loading
# ----------------------------------------------------------------------------------------------


def create_model(
    backend: str = "default",
    *,
    pretrained: bool = True,
    local_files_only: bool | None = None,
    use_measurements: bool = False,
    **settings: Any,
) -> SAClipModel:
    """A new (untrained heads) SA-CLIP model on ``backend``.

    Args:
        backend: ``"default"``, ``"hf-hub:<org/repo>"`` or ``"local-dir:<folder>"`` (see :func:`parse_backend`).
        pretrained: Load the published weights of a hub/local backend (the default backend starts random).
        local_files_only: Never download (``None``: follow ``HF_HUB_OFFLINE``).
        use_measurements: Feed the estimators' measurements into the image embedding.
        **settings: Further :class:`SAClipSettings` fields (``head_hidden``, ``crops``, ...).

    Returns:
        The model; for published backends the text tower is frozen.
    """
    from agent.perception.estimators import MEASUREMENTS

    kind, _ = parse_backend(backend)
    clip, tokenizer, config = load_clip(backend, pretrained=pretrained, local_files_only=local_files_only)
    image_size = config["model_cfg"]["vision_cfg"].get("image_size", 224)
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    options: dict[str, Any] = {"freeze_text": kind != "default", "image_size": image_size}
    options.update(settings)
    if use_measurements:
        options["use_measurements"] = True
        options.setdefault("measurement_names", sorted(MEASUREMENTS))
    model = SAClipModel(clip, tokenizer, SAClipSettings(backend=backend, **options))
    model.open_clip_config = config  # type: ignore[assignment]  # plain attribute, not a module or buffer
    return model


def save_checkpoint(model: SAClipModel, folder: Path | str, training: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` into ``folder`` (``saclip.json``, ``open_clip_config.json``, ``saclip.safetensors``).

    Of the token-embedding table only the rows of the tokens in the class prompts are stored (the others
    never reach the model), which keeps the small default at a few MB.

    Args:
        model: A model from :func:`create_model` or :func:`load_checkpoint`.
        folder: Created when missing; existing checkpoint files are replaced atomically.
        training: Optional record stored in the settings' ``training`` field.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = model.settings
    if training is not None:
        settings.training = dict(training)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if settings.half_weights:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    if TOKEN_EMBEDDING in state:  # keep only the rows the prompts use: the rest never reaches the model
        ids = torch.unique(model.prompt_tokens.cpu())
        state[TOKEN_ROWS] = state.pop(TOKEN_EMBEDDING)[ids].contiguous()
        state[TOKEN_IDS] = ids
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS_FILE)
    (folder / OPEN_CLIP_CONFIG_FILE).write_text(json.dumps(model.open_clip_config, indent=2))
    (folder / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2))
    return folder


class _OpenClipWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's root-logger warnings while building an architecture whose weights we load ourselves."""
    quiet = _OpenClipWarnings()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def load_checkpoint(folder: Path | str | None = None, device: str = "cpu") -> SAClipModel:
    """Load a trained SA-CLIP checkpoint folder (``None``: the packaged default) in eval mode.

    Raises:
        FileNotFoundError: if the folder lacks the checkpoint files; the message names the training command.
    """
    import open_clip
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else DEFAULT_WEIGHTS_DIR
    missing = [name for name in (SETTINGS_FILE, WEIGHTS_FILE, OPEN_CLIP_CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no SA-CLIP checkpoint in {folder} (missing {', '.join(missing)}); train one with `{TRAIN_COMMAND}`"
        )
    settings = SAClipSettings(**json.loads((folder / SETTINGS_FILE).read_text()))
    config = json.loads((folder / OPEN_CLIP_CONFIG_FILE).read_text())
    with _quiet_open_clip():  # it warns that no CLIP weights were loaded: ours are loaded below
        clip = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model = SAClipModel(clip, tokenizer, settings)
    model.open_clip_config = config
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
    if TOKEN_ROWS in state:
        full = model.state_dict()[TOKEN_EMBEDDING].clone()
        full[state.pop(TOKEN_IDS)] = state.pop(TOKEN_ROWS)
        state[TOKEN_EMBEDDING] = full
    model.load_state_dict(state)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# The assessor
# ----------------------------------------------------------------------------------------------


def crop_views(image: np.ndarray, size: int, count: int) -> np.ndarray:
    """Up to five native-resolution ``size`` x ``size`` crops (centre, then corners) as ``(n, 3, S, S)``.

    Pixels are never resampled (noise, JPEG blocks and blur keep their scale); an image smaller than
    ``size`` is padded by reflection.
    """
    h, w = image.shape[:2]
    if h < size or w < size:
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)), "reflect")
        h, w = image.shape[:2]
    corners = [((h - size) // 2, (w - size) // 2), (0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    views = [image[t : t + size, s : s + size] for t, s in corners[: max(1, min(count, 5))]]
    return np.ascontiguousarray(np.stack(views).transpose(0, 3, 1, 2), dtype=np.float32)


class SAClipAssessor:
    """The trained SA-CLIP as an :class:`~agent.perception.assessor.Assessor`.

    Per type, the report's probability is the presence head's sigmoid and the severity the severity
    head's output, averaged over the crops; the parameters come from the estimator assessor (the CLIP
    says *what*, the estimators say *how much*). The softmax over the prompts is kept in ``measurements``
    as ``saclip_softmax_<class>`` and the argmax as ``saclip_dominant_index``.

    Args:
        model: A loaded :class:`SAClipModel`, or a checkpoint folder; ``None`` loads the packaged default.
        with_parameters: Fill the parameters (and measurements) from the estimator assessor.
        device: Torch device for inference.
        blend: Weight of the estimator assessor in each type's probability and severity: one number for
            every type, a mapping per type name (missing types: 0), or ``"fitted"`` for the checkpoint's
            fitted :attr:`SAClipSettings.hybrid_weights` (0.5 where none were fitted; the ``hybrid``
            assessor). Blended reports carry no softmax winner; their dominant type is the most probable
            one at or above 0.5.
    """

    name = "saclip"

    def __init__(
        self,
        model: SAClipModel | Path | str | None = None,
        with_parameters: bool = True,
        device: str = "cpu",
        blend: float | Mapping[str, float] | str = 0.0,
    ) -> None:
        #: The checkpoint folder the model came from (``None`` for a model passed in).
        self.folder: Path | None = None
        if isinstance(model, SAClipModel):
            self.model = model
        else:
            self.folder = Path(model) if model is not None else DEFAULT_WEIGHTS_DIR
            self.model = load_checkpoint(self.folder, device=device)
        self.model.eval()
        self.device = device
        #: Per type (in :data:`TYPES` order), the weight of the estimator assessor in the report (0: SA-CLIP alone).
        self.blend = self._blend_weights(blend)
        if self.blend.any():
            with_parameters = True
            self.name = "saclip+estimators"
        self.with_parameters = with_parameters
        self._estimators: Any = None

    def _blend_weights(self, blend: float | Mapping[str, float] | str) -> np.ndarray:
        if isinstance(blend, str):
            if blend != "fitted":
                raise ValueError(f"blend must be a number, a mapping per type or 'fitted', got {blend!r}")
            blend = self.model.settings.hybrid_weights or 0.5
        if isinstance(blend, Mapping):
            unknown = set(blend) - {d.value for d in TYPES}
            if unknown:
                raise ValueError(f"blend names unknown degradation types: {sorted(unknown)}")
            weights = np.array([float(blend.get(d.value, 0.0)) for d in TYPES])
        else:
            weights = np.full(len(TYPES), float(blend))
        if not ((weights >= 0.0) & (weights <= 1.0)).all():
            raise ValueError(f"blend weights must be in [0, 1], got {blend}")
        return weights

    def _estimator_assessor(self) -> Any:
        if self._estimators is None:
            from agent.perception.assessor import EstimatorAssessor

            self._estimators = EstimatorAssessor()
        return self._estimators

    def predict(self, image: np.ndarray, measurements: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        """Crop-averaged outputs: ``softmax`` (K,), ``presence`` (T,), ``severity`` (T,), ``image_features`` (D,)."""
        settings = self.model.settings
        views = torch.from_numpy(crop_views(image, settings.image_size, settings.crops)).to(self.device)
        extra = None
        if settings.use_measurements:
            if measurements is None:
                from agent.perception.estimators import measure

                measurements = measure(image)
            row = [float(measurements[k]) for k in settings.measurement_names]
            extra = torch.tensor([row], dtype=torch.float32, device=self.device).expand(len(views), -1)
        with torch.no_grad():
            out = self.model(views, extra)
            result = {
                "softmax": out["logits"].softmax(-1).mean(0),
                "presence": torch.sigmoid(out["presence_logits"]).mean(0),
                "severity": out["severity"].mean(0),
                "image_features": functional.normalize(out["image_features"].mean(0), dim=-1),
            }
        return {k: v.cpu().numpy() for k, v in result.items()}

    def e_auto(self, image: np.ndarray) -> np.ndarray:
        """AutoDIR's probability-weighted text embedding ``sum_i p_i E_T(T_i)`` for ``image``, shape ``(D,)``."""
        probabilities = torch.from_numpy(self.predict(image)["softmax"]).to(self.device)[None]
        with torch.no_grad():
            return self.model.e_auto(probabilities)[0].cpu().numpy()

    def assess(self, image: np.ndarray) -> DegradationReport:
        """Per-type presence probability, severity and (from the estimators) parameters for ``image``."""
        start = time.perf_counter()
        base: DegradationReport | None = None
        measurements: dict[str, float] = {}
        if self.with_parameters or self.model.settings.use_measurements:
            from agent.perception.estimators import measure

            measurements = measure(image)
            if self.with_parameters:
                base = self._estimator_assessor().assess_measurements(measurements)
        raw = self.predict(image, measurements or None)
        estimates = {}
        for i, degradation in enumerate(TYPES):
            probability, severity = float(raw["presence"][i]), float(raw["severity"][i])
            params: dict[str, float] = {}
            if base is not None:
                other, w = base.estimates[degradation], float(self.blend[i])
                params = dict(other.params)
                probability = (1 - w) * probability + w * other.probability
                severity = (1 - w) * severity + w * other.severity
            estimates[degradation] = DegradationEstimate(
                probability=float(np.clip(probability, 0.0, 1.0)),
                severity=float(np.clip(severity, 0.0, 1.0)),
                params=params,
            )
        extra = {f"saclip_softmax_{c}": float(p) for c, p in zip(CLASSES, raw["softmax"], strict=True)}
        if not self.blend.any():  # blended reports are decided by their presence probabilities, not the softmax
            extra["saclip_dominant_index"] = float(int(np.argmax(raw["softmax"])))
        report = DegradationReport(assessor=self.name, estimates=estimates, measurements={**measurements, **extra})
        report.seconds = time.perf_counter() - start
        return report

    def dominant(self, image: np.ndarray) -> str:
        """AutoDIR's answer: the class whose prompt wins the softmax (``"no"`` means nothing left to fix)."""
        return CLASSES[int(np.argmax(self.predict(image)["softmax"]))]


def softmax_dominant(report: DegradationReport) -> str | None:
    """The softmax winner stored in a SA-CLIP report's measurements (``None`` for other assessors)."""
    index = report.measurements.get("saclip_dominant_index")
    return None if index is None or math.isnan(index) else CLASSES[int(index)]
