"""VLM planner: an image-text chat model proposes a plan as JSON, validated against the catalogue.

The planner shows the model the image, the tool catalogue, the assessor's report and the request
(with what the request parser understood), and asks for one JSON object
``{"description": ..., "steps": [{"tool", "target", "params", "rationale"}]}``. The reply is
untrusted: it is validated against the schema built from the registry
(:mod:`agent.planning.plan_schema`). An invalid reply is retried once with the validation error;
a second failure, or a backend that cannot run, hands over to the rule planner. Steps whose target
the request protects, skips or leaves out are dropped, and the request's explicit numbers and
strengths override the model's. The returned record says all of this, for the trace.

Backends: any ``generate(messages, image) -> str`` callable (tests inject scripted ones); a local
transformers model (``AutoModelForImageTextToText`` + ``AutoProcessor``, from a hub id or a local
folder, loaded on first use, ``local_files_only`` when offline); or an OpenAI-compatible server
(:meth:`VLMPlanner.from_openai`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.degradations import ALL_DEGRADATIONS, DESCRIPTIONS, Degradation
from agent.planning.plan_schema import (
    DEFAULT_MAX_STEPS,
    PlanValidationError,
    build_plan_schema,
    catalogue_text,
    parse_plan,
)
from agent.planning.request import Intent, parse_request, tool_params
from agent.report import DegradationReport

if TYPE_CHECKING:
    from tools.base import ToolRegistry

logger = logging.getLogger(__name__)

#: ``generate(messages, image) -> reply``: messages are ``{"role": "system"|"user"|"assistant", "content": str}``
#: and the image (a PIL image, or None) belongs to the first user message.
GenerateFn = Callable[[list[dict[str, Any]], Any], str]

#: How much of each model reply the trace keeps.
TRACE_REPLY_CHARS = 2000
_OFFLINE_VALUES = {"1", "true", "yes", "on"}


@dataclass
class PlannerRecord:
    """What the planner did, for the trace: every model reply, errors, fallback and its reason."""

    planner: str
    backend: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    fallback: bool = False
    fallback_reason: str | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)
    overridden: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass
class PlanResult:
    """An ordered plan (``tool``, ``target``, ``params``, ``rationale`` per step) and how it was made."""

    steps: list[dict[str, Any]]
    record: PlannerRecord


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set."""
    if offline is not None:
        return offline
    return any(
        os.environ.get(v, "").strip().lower() in _OFFLINE_VALUES for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def to_pil(image: Any, max_side: int | None = None) -> Any:
    """A PIL RGB image from a float [0, 1] / uint8 array or a PIL image, shrunk to ``max_side``."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image if image.dtype == np.uint8 else (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(array)
    elif isinstance(image, Image.Image):
        pil = image
    else:
        raise TypeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    pil = pil.convert("RGB")
    if max_side is not None and max(pil.size) > max_side:
        pil = pil.copy()
        pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return pil


# ------------------------------------------------------------------------------------------ prompting


def system_prompt(registry: ToolRegistry, max_steps: int) -> str:
    """Instructions, the degradation vocabulary and the tool catalogue."""
    kinds = "\n".join(f"- {d.value}: {DESCRIPTIONS[d]}" for d in ALL_DEGRADATIONS)
    return (
        "You are the planning module of Restora, an image restoration agent. Look at the image and propose an "
        "ordered plan of restoration steps that uses only the tools listed below.\n"
        "Reply with exactly one JSON object and nothing else:\n"
        '{"description": "<one or two sentences: what the image shows and its flaws>", '
        '"steps": [{"tool": "<tool name>", "target": "<degradation the tool restores>", '
        '"params": {"<parameter>": <value>}, "rationale": "<why this step, short>"}]}\n'
        f"Rules: at most {max_steps} steps, in the order to run them (usually compression artifacts first and "
        "scene effects such as haze last); a tool only for a degradation it restores; only the parameters "
        "listed for that tool, within their ranges (leave a parameter out to use its default); never target "
        "what the user wants kept or skipped; an empty steps list means the image needs nothing. No other keys, "
        "no file paths, no code.\n"
        f"Degradations:\n{kinds}\n"
        f"Tools:\n{catalogue_text(registry, tools=registry.runnable())}"
    )


def _describe_intent(intent: Intent) -> str:
    parts = []
    if intent.only is not None:
        parts.append("fix only: " + (", ".join(d.value for d in intent.only) or "nothing"))
    elif intent.blind:
        parts.append("fix everything found")
    if intent.protect:
        parts.append("keep (never touch): " + ", ".join(d.value for d in intent.protect))
    if intent.skip:
        parts.append("skip: " + ", ".join(d.value for d in intent.skip))
    if intent.strength is not None:
        parts.append(f"strength for every step: {intent.strength:g}")
    if intent.strengths:
        parts.append("strengths: " + ", ".join(f"{d.value} {s:g}" for d, s in intent.strengths.items()))
    if intent.params:
        parts.append(
            "numbers: "
            + "; ".join(f"{d.value} " + ", ".join(f"{k}={v:g}" for k, v in p.items()) for d, p in intent.params.items())
        )
    if intent.semantic:
        parts.append(f"the photo shows: {intent.semantic}")
    if intent.preference:
        parts.append(f"preference: {intent.preference}")
    return "; ".join(parts) or "no constraints"


def user_prompt(report: DegradationReport | None, request: str | None, intent: Intent) -> str:
    """The assessor's findings, the request and what the parser understood of it."""
    lines = []
    if report is not None:
        rows = []
        for d, est in sorted(report.estimates.items(), key=lambda kv: -kv[1].probability):
            params = ", ".join(f"{k}={v:.3g}" for k, v in est.params.items())
            rows.append(
                f"- {d.value}: probability {est.probability:.2f}, severity {est.severity:.2f}"
                + (f" ({params})" if params else "")
            )
        lines.append(f"Assessor report ({report.assessor}):\n" + "\n".join(rows))
    else:
        lines.append("No assessor report is available; judge from the image.")
    lines.append(f"User request: {request!r}" if request else "User request: none (fix what needs fixing).")
    lines.append(f"Understood as: {_describe_intent(intent)}.")
    lines.append("Reply with the JSON plan only.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ transformers backend


def _split_prefix(model_id: str) -> tuple[str, bool]:
    """``(id or path, is_local)`` from a ``local-dir:``/``hf-hub:`` prefixed or bare model id."""
    if model_id.startswith("local-dir:"):
        path = model_id[len("local-dir:") :]
        if not Path(path).is_dir():
            raise FileNotFoundError(f"local-dir:{path} is not a folder; point it at a saved model folder")
        return path, True
    if model_id.startswith("hf-hub:"):
        return model_id[len("hf-hub:") :], False
    return model_id, Path(model_id).is_dir()


class TransformersBackend:
    """``generate(messages, image)`` over a transformers image-text chat model, loaded on first use.

    Args:
        model_id: hub id (``hf-hub:`` prefix optional) or local folder (``local-dir:`` prefix optional).
        offline: only read local files; default from ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``.
        device: ``"cpu"``, ``"cuda"``, ... or ``None`` for CUDA when available.
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 on CPU) or a torch dtype name.
        max_new_tokens: most tokens generated per reply.
        model: an already built model (tests); ``processor`` must then be given too.
        processor: an already built processor.
    """

    def __init__(
        self,
        model_id: str | None = None,
        *,
        offline: bool | None = None,
        device: str | None = None,
        dtype: str = "auto",
        max_new_tokens: int = 512,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        if model is None and not model_id:
            raise ValueError(
                "no VLM given: pass a hub id or a local folder (e.g. HuggingFaceTB/SmolVLM-256M-Instruct), "
                "or an OpenAI-compatible server with VLMPlanner.from_openai()"
            )
        if (model is None) != (processor is None):
            raise ValueError("pass both model= and processor=, or neither")
        self.model_id = model_id or type(model).__name__
        self.offline = offline
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self._model = model
        self._processor = processor

    def load(self) -> None:
        """Load the processor and the model (once)."""
        if self._model is not None:
            return
        try:
            import torch
            import transformers
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as exc:
            raise ImportError("the VLM planner needs transformers: pip install 'transformers>=4.44'") from exc
        assert self.model_id is not None
        source, local = _split_prefix(self.model_id)
        offline = is_offline(self.offline)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.dtype == "auto":
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, self.dtype)
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        try:
            processor: Any = AutoProcessor.from_pretrained(source, local_files_only=offline or local)
            model: Any = AutoModelForImageTextToText.from_pretrained(
                source, local_files_only=offline or local, **{dtype_kw: dtype}
            )
        except OSError as exc:
            where = "the local folder" if local else ("the local cache (offline)" if offline else "the hub")
            raise RuntimeError(
                f"cannot load VLM {self.model_id!r} from {where}: {exc}. Download it first "
                f"(huggingface-cli download {source}) or pass a local folder"
            ) from exc
        self._processor, self._model = processor, model.to(device).eval()
        logger.info("VLM %s loaded on %s (%s)", self.model_id, device, dtype)

    def __call__(self, messages: list[dict[str, Any]], image: Any) -> str:
        """Generate a reply with the chat template of the processor."""
        self.load()
        import torch

        hf_messages: list[dict[str, Any]] = []
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        attached = image is None
        for message in (m for m in messages if m["role"] != "system"):
            text = message["content"]
            content: list[dict[str, Any]] = []
            if message["role"] == "user" and not attached:
                content.append({"type": "image", "image": image})
                attached = True
                text = f"{system}\n\n{text}" if system else text
            content.append({"type": "text", "text": text})
            hf_messages.append({"role": message["role"], "content": content})
        inputs = self._processor.apply_chat_template(
            hf_messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        inputs = inputs.to(self._model.device)
        with torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return str(self._processor.batch_decode(new_tokens, skip_special_tokens=True)[0])


# ----------------------------------------------------------------------------------------- the planner


def rule_plan(report: DegradationReport, intent: Intent, policy: Any, registry: ToolRegistry) -> list[dict[str, Any]]:
    """The rule planner's whole plan for ``report``: its first attempt for each step, in order."""
    from agent.planning.rule_planner import next_step

    handled = [d.value for d in intent.skip]  # skipped types are never planned
    steps: list[dict[str, Any]] = []
    while len(steps) < policy.budgets.max_steps:
        step = next_step(report, handled, intent, policy, registry)
        if step is None:
            break
        handled.append(step["target"])
        if step["attempts"]:
            first = step["attempts"][0]
            steps.append(
                {
                    "tool": first["tool"],
                    "target": step["target"],
                    "params": first["params"],
                    "rationale": step["rationale"],
                }
            )
    return steps


class VLMPlanner:
    """Plans with an image-text model; validates its JSON; retries once; falls back to the rule planner.

    Args:
        model_id: transformers model (hub id or local folder) when no ``generate`` is given.
        registry: the tools a plan may use (default: ``tools.default_registry()``).
        generate: a ready backend ``generate(messages, image) -> str`` (tests, remote servers).
        backend_name: how the trace names the backend.
        max_steps: most steps a plan may hold.
        max_retries: retries after an invalid reply (1: one retry, as the design asks).
        max_image_side: longer image side shown to the model, in pixels.
        policy: the policy the rule planner uses on fallback (default: the ``default`` policy).
        **backend_options: passed to :class:`TransformersBackend` (offline, device, dtype, model, processor, ...).
    """

    def __init__(
        self,
        model_id: str | None = None,
        *,
        registry: ToolRegistry | None = None,
        generate: GenerateFn | None = None,
        backend_name: str | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        max_retries: int = 1,
        max_image_side: int = 768,
        policy: Any = None,
        **backend_options: Any,
    ) -> None:
        if generate is None:
            backend = TransformersBackend(model_id, **backend_options)
            generate = backend
            backend_name = backend_name or f"transformers:{backend.model_id}"
        elif backend_options:
            raise ValueError(f"backend options {sorted(backend_options)} only apply without generate=")
        self._generate = generate
        self.backend_name: str = str(backend_name or getattr(generate, "__name__", type(generate).__name__))
        self._registry = registry
        self.max_steps = max_steps
        self.max_retries = max_retries
        self.max_image_side = max_image_side
        self._policy = policy
        self._schema: Any = None

    @classmethod
    def from_openai(
        cls,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        **options: Any,
    ) -> VLMPlanner:
        """A planner over an OpenAI-compatible server (arguments or ``RESTORA_VLM_*`` environment)."""
        from agent.planning.openai_client import OpenAICompatibleClient

        client = OpenAICompatibleClient(base_url, model, api_key, timeout=timeout)
        return cls(generate=client.generate, backend_name=f"openai:{client.model}", **options)

    @property
    def registry(self) -> ToolRegistry:
        """The tool registry plans are validated against."""
        if self._registry is None:
            from tools import default_registry

            self._registry = default_registry()
        return self._registry

    @property
    def schema(self) -> Any:
        """The plan schema (built once from the registry's runnable tools)."""
        if self._schema is None:
            # Tools that cannot run here (no weights, no model) are neither offered nor accepted.
            self._schema = build_plan_schema(self.registry, max_steps=self.max_steps, tools=self.registry.runnable())
        return self._schema

    def plan(
        self,
        image: Any,
        report: DegradationReport | None = None,
        request: str | None = None,
        intent: Intent | None = None,
        *,
        policy: Any = None,
    ) -> PlanResult:
        """Propose a plan for ``image``; never raises for a bad model or backend (falls back instead).

        Args:
            image: float [0, 1] or uint8 ``(H, W, 3)`` array, or a PIL image.
            report: the assessor's report (shown to the model; needed by the rule-planner fallback).
            request: the user's request; parsed here when ``intent`` is not given.
            intent: the parsed request.
            policy: the policy for the fallback (default: this planner's, else ``default``).
        """
        start = time.perf_counter()
        intent = intent if intent is not None else parse_request(request)
        record = PlannerRecord(planner="vlm", backend=self.backend_name)
        if intent.needs_clarification:
            assert intent.clarification is not None
            record.fallback_reason = f"request needs clarification: {intent.clarification.question}"
            record.seconds = time.perf_counter() - start
            return PlanResult([], record)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system_prompt(self.registry, self.max_steps)},
            {"role": "user", "content": user_prompt(report, request, intent)},
        ]
        pil = to_pil(image, self.max_image_side)
        plan: dict[str, Any] | None = None
        for attempt in range(1 + self.max_retries):
            t0 = time.perf_counter()
            try:
                reply = self._generate(messages, pil)
            except Exception as exc:  # a backend that cannot run hands over to the rule planner
                record.attempts.append(
                    {
                        "reply": None,
                        "error": f"backend: {type(exc).__name__}: {exc}"[:500],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                record.fallback_reason = f"backend failed: {type(exc).__name__}: {str(exc)[:300]}"
                logger.warning("VLM planner backend %s failed: %s", self.backend_name, exc)
                break
            reply = reply if isinstance(reply, str) else str(reply)
            entry: dict[str, Any] = {"reply": reply[:TRACE_REPLY_CHARS], "error": None}
            try:
                plan = parse_plan(reply, self.schema, self.registry)
            except PlanValidationError as exc:
                entry["error"] = str(exc)
                logger.info("VLM plan attempt %d rejected: %s", attempt + 1, exc)
                messages = messages + [
                    {"role": "assistant", "content": reply[:TRACE_REPLY_CHARS]},
                    {
                        "role": "user",
                        "content": f"That reply was rejected: {exc}. Reply again with only the corrected JSON object.",
                    },
                ]
                record.fallback_reason = f"invalid plan after {attempt + 1} attempt(s): {exc}"
            entry["seconds"] = time.perf_counter() - t0
            record.attempts.append(entry)
            if plan is not None:
                record.fallback_reason = None
                break
        if plan is None:
            record.fallback = True
            record.planner = "rule"
            steps = self._fallback(report, intent, policy, record)
        else:
            record.description = plan["description"]
            steps = self._honour_request(plan["steps"], intent, record)
        record.seconds = time.perf_counter() - start
        return PlanResult(steps, record)

    def _honour_request(
        self, steps: list[dict[str, Any]], intent: Intent, record: PlannerRecord
    ) -> list[dict[str, Any]]:
        """Drop steps the request excludes; let the request's numbers and strengths override the model's."""
        specs = {s.name: s for s in self.registry.specs()}
        kept = []
        for step in steps:
            target = Degradation(step["target"])
            if not intent.allows(target):
                record.dropped.append(
                    {"tool": step["tool"], "target": target.value, "reason": "excluded by the request"}
                )
                continue
            overrides = tool_params(intent, target, specs[step["tool"]])
            changed = {k: v for k, v in overrides.items() if step["params"].get(k) != v}
            if changed:
                record.overridden.append({"tool": step["tool"], "target": target.value, "params": changed})
                step = {**step, "params": specs[step["tool"]].resolve({**step["params"], **changed})}
            kept.append({**step, "source": "vlm"})
        return kept

    def _fallback(
        self, report: DegradationReport | None, intent: Intent, policy: Any, record: PlannerRecord
    ) -> list[dict[str, Any]]:
        if report is None:
            reason = record.fallback_reason or "no plan"
            record.fallback_reason = f"{reason}; no report, so the rule planner has nothing to plan"
            return []
        policy = policy or self._policy
        if policy is None:
            from policies import load_policy

            policy = load_policy("default")
        steps = rule_plan(report, intent, policy, self.registry)
        return [{**s, "source": "rule"} for s in steps]
