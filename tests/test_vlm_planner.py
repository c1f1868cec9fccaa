"""VLM planner: the plan schema, scripted models (valid, invalid, malicious), a tiny random VLM, and the
OpenAI-compatible client against a stub server on loopback."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.degradations import Degradation
from agent.planning.openai_client import OpenAICompatibleClient, OpenAIError, image_to_data_url
from agent.planning.plan_schema import PlanValidationError, build_plan_schema, parse_plan
from agent.planning.request import parse_request
from agent.planning.vlm import VLMPlanner
from agent.report import DegradationEstimate, DegradationReport
from policies import load_policy
from tools import default_registry
from tools.base import ToolRegistry

IMAGE = np.random.default_rng(0).random((24, 32, 3), dtype=np.float32)
VALID = {
    "description": "a noisy, hazy landscape",
    "steps": [
        {"tool": "denoise_dct", "target": "noise", "params": {"sigma": 0.05}, "rationale": "visible grain"},
        {"tool": "dehaze_dcp", "target": "haze", "params": {"strength": 0.8}, "rationale": "low contrast"},
    ],
}


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return default_registry()


@pytest.fixture(scope="module")
def schema(registry: ToolRegistry) -> Any:
    return build_plan_schema(registry, max_steps=4)


def report(**probabilities: float) -> DegradationReport:
    estimates = {
        d: DegradationEstimate(probability=probabilities.get(d.value, 0.02), severity=probabilities.get(d.value, 0.0))
        for d in Degradation
    }
    return DegradationReport(assessor="test", estimates=estimates)


class Scripted:
    """A fake model: returns the scripted replies in turn and records what it was shown."""

    def __init__(self, *replies: str | dict[str, Any]) -> None:
        self.replies = [r if isinstance(r, str) else json.dumps(r) for r in replies]
        self.calls: list[list[dict[str, Any]]] = []
        self.images: list[Any] = []

    def __call__(self, messages: list[dict[str, Any]], image: Any) -> str:
        self.calls.append([dict(m) for m in messages])
        self.images.append(image)
        return self.replies[len(self.calls) - 1]


def planner(model: Any, registry: ToolRegistry) -> VLMPlanner:
    return VLMPlanner(generate=model, registry=registry, max_steps=4, policy=load_policy("default"))


# ---------------------------------------------------------------------------------------------- schema


def test_schema_accepts_a_valid_plan_and_resolves_params(schema: Any, registry: ToolRegistry) -> None:
    plan = parse_plan("Here you go:\n```json\n" + json.dumps(VALID) + "\n```", schema, registry)
    assert [s["tool"] for s in plan["steps"]] == ["denoise_dct", "dehaze_dcp"]
    first = plan["steps"][0]["params"]
    assert first["sigma"] == 0.05 and first["strength"] == 1.0  # defaults filled in by the tool's spec


@pytest.mark.parametrize(
    ("steps", "extra", "fragment"),
    [
        ([{"tool": "rm -rf", "target": "noise"}], {}, "does not match any of the expected tags"),
        ([{"tool": "denoise_dct", "target": "haze"}], {}, "target"),
        ([{"tool": "denoise_dct", "target": "noise", "params": {"sigma": 5}}], {}, "less than or equal to 0.3"),
        ([{"tool": "denoise_dct", "target": "noise", "params": {"sigma": "0.1"}}], {}, "must be a number"),
        ([{"tool": "denoise_dct", "target": "noise", "params": {"path": "../../etc/passwd"}}], {}, "Extra inputs"),
        ([{"tool": "deblur_wiener", "target": "defocus_blur", "params": {"kind": "/etc/passwd"}}], {}, "kind"),
        ([{"tool": "denoise_dct", "target": "noise", "rationale": "see ../../etc/passwd"}], {}, "paths"),
        ([{"tool": "denoise_dct", "target": "noise", "rationale": "C:\\Windows\\system32"}], {}, "paths"),
        ([{"tool": "denoise_dct", "target": "noise", "extra": 1}], {}, "Extra inputs"),
        ([], {"shell": "rm -rf /"}, "Extra inputs"),
        ([{"tool": "denoise_dct", "target": "noise"}] * 5, {}, "at most 4"),
        ([], {"description": "x" * 5000}, "at most 1000"),
        ([{"tool": "denoise_dct", "target": "noise", "rationale": "bad\x00byte"}], {}, "control characters"),
    ],
)
def test_schema_rejects(
    schema: Any, registry: ToolRegistry, steps: list[Any], extra: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(PlanValidationError) as info:
        parse_plan(json.dumps({"steps": steps, **extra}), schema, registry)
    assert fragment in str(info.value)
    assert len(str(info.value)) < 1500  # short enough for a retry prompt and a trace


@pytest.mark.parametrize(
    "reply",
    [
        '{"steps": [{"tool": "denoise_dct", "target": "noise", "params": {"sigma": NaN}}]}',
        '{"steps": [], "steps": []}',
        "no json at all",
        '{"steps": [',
        "[1, 2, 3]",
        "{" + " " * 30_000 + "}",
    ],
)
def test_replies_that_are_not_a_plan_object_are_rejected(schema: Any, registry: ToolRegistry, reply: str) -> None:
    with pytest.raises(PlanValidationError):
        parse_plan(reply, schema, registry)


def test_schema_only_knows_the_registry_it_was_built_from(registry: ToolRegistry) -> None:
    small = build_plan_schema(registry, tools=["dehaze_dcp"])
    parse_plan({"steps": [{"tool": "dehaze_dcp", "target": "haze"}]}, small, registry)
    with pytest.raises(PlanValidationError):
        parse_plan({"steps": [{"tool": "denoise_dct", "target": "noise"}]}, small, registry)
    with pytest.raises(ValueError, match="no tools"):
        build_plan_schema(registry, tools=["nope"])


# --------------------------------------------------------------------------------- the planner, scripted


def test_valid_reply_is_used_and_the_prompt_carries_catalogue_report_and_request(registry: ToolRegistry) -> None:
    model = Scripted(VALID)
    result = planner(model, registry).plan(IMAGE, report(noise=0.9, haze=0.7), "remove the noise and the haze")
    assert [s["tool"] for s in result.steps] == ["denoise_dct", "dehaze_dcp"]
    assert all(s["source"] == "vlm" for s in result.steps)
    assert not result.record.fallback and result.record.description == "a noisy, hazy landscape"
    assert len(model.calls) == 1
    system, user = model.calls[0][0]["content"], model.calls[0][1]["content"]
    assert "denoise_dct (restores: noise)" in system and "sigma: float in [0, 0.3]" in system
    assert "noise: probability 0.90" in user and "remove the noise and the haze" in user
    assert model.images[0].size == (32, 24)


def test_tools_that_cannot_run_here_are_neither_offered_nor_accepted(
    registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESTORA_DIFFUSION_MODEL", raising=False)
    assert registry.get("diffusion_restore").missing()  # no diffusion model is configured in the tests
    proposal = {"steps": [{"tool": "diffusion_restore", "target": "noise"}, {"tool": "dehaze_dcp", "target": "haze"}]}
    model = Scripted(proposal, proposal)
    result = planner(model, registry).plan(IMAGE, report(noise=0.9, haze=0.7), "")
    assert "diffusion_restore" not in model.calls[0][0]["content"]
    assert result.record.fallback and all(s["tool"] != "diffusion_restore" for s in result.steps)


def test_invalid_then_valid_retries_once_with_the_error(registry: ToolRegistry) -> None:
    model = Scripted({"steps": [{"tool": "denoise_dct", "target": "noise", "params": {"sigma": 9}}]}, VALID)
    result = planner(model, registry).plan(IMAGE, report(noise=0.9), "fix it")
    assert not result.record.fallback and len(result.steps) == 2
    assert len(model.calls) == 2
    retry = model.calls[1]
    assert retry[-2]["role"] == "assistant" and '"sigma": 9' in retry[-2]["content"]
    assert "rejected" in retry[-1]["content"] and "0.3" in retry[-1]["content"]
    assert result.record.attempts[0]["error"] and result.record.attempts[1]["error"] is None


def test_invalid_twice_falls_back_to_the_rule_planner_and_says_so(registry: ToolRegistry) -> None:
    model = Scripted("I think you should denoise.", '{"steps": [{"tool": "magic", "target": "noise"}]}')
    result = planner(model, registry).plan(IMAGE, report(noise=0.9, jpeg=0.8), "")
    record = result.record.to_dict()
    assert record["fallback"] is True and record["planner"] == "rule"
    assert "invalid plan after 2 attempt(s)" in record["fallback_reason"]
    assert len(record["attempts"]) == 2 and all(a["error"] for a in record["attempts"])
    assert [s["target"] for s in result.steps] == ["jpeg", "noise"]  # the policy's order prior
    assert all(s["source"] == "rule" for s in result.steps)
    json.dumps(record)  # the record goes into trace.json


def test_malicious_replies_never_reach_the_plan(registry: ToolRegistry) -> None:
    huge = "A" * 50_000
    model = Scripted(
        {"steps": [{"tool": "rm -rf", "target": "noise", "params": {"path": "../../etc/passwd"}}]},
        {"description": huge, "steps": [{"tool": "denoise_dct", "target": "noise", "rationale": "../../etc/passwd"}]},
    )
    result = planner(model, registry).plan(IMAGE, report(noise=0.9), "denoise")
    assert result.record.fallback
    rule_choice = load_policy("default").candidates_for(Degradation.NOISE)[0].tool
    assert [s["tool"] for s in result.steps] == [rule_choice] and result.steps[0]["source"] == "rule"
    text = json.dumps(result.record.to_dict())
    assert len(text) < 10_000  # replies are truncated in the trace
    assert "rm -rf" not in json.dumps(result.steps) and "passwd" not in json.dumps(result.steps)


def test_backend_failure_falls_back_without_retrying(registry: ToolRegistry) -> None:
    calls = []

    def broken(messages: list[dict[str, Any]], image: Any) -> str:
        calls.append(1)
        raise ConnectionError("server down")

    result = planner(broken, registry).plan(IMAGE, report(haze=0.9), None)
    assert len(calls) == 1 and result.record.fallback
    assert "ConnectionError" in (result.record.fallback_reason or "")
    assert [s["target"] for s in result.steps] == ["haze"]


def test_the_request_overrides_the_model(registry: ToolRegistry) -> None:
    model = Scripted(VALID)
    result = planner(model, registry).plan(IMAGE, report(noise=0.9, haze=0.7), "denoise with sigma 15, keep the haze")
    assert [s["tool"] for s in result.steps] == ["denoise_dct"]
    assert result.steps[0]["params"]["sigma"] == pytest.approx(0.0588)
    assert result.record.dropped == [{"tool": "dehaze_dcp", "target": "haze", "reason": "excluded by the request"}]
    assert result.record.overridden[0]["params"] == {"sigma": 0.0588}


def test_a_request_that_needs_clarification_is_not_planned(registry: ToolRegistry) -> None:
    model = Scripted(VALID)
    result = planner(model, registry).plan(IMAGE, report(noise=0.9), "remove the watermark")
    assert result.steps == [] and model.calls == []
    assert "clarification" in (result.record.fallback_reason or "")


# ------------------------------------------------------------------------------------ a tiny random VLM


def _tiny_vlm(folder: Path) -> None:
    """Save a randomly initialised LLaVA-style model (~10k parameters) with its processor to ``folder``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "{", "}", "[", "]", ":", ",", '"', "steps", "tool", "noise"]
    vocab = {w: i for i, w in enumerate(words + [chr(c) for c in range(97, 123)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        text_config=transformers.LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        ),  # fmt: skip
        image_token_index=vocab["<image>"],
        vision_feature_layer=-1,
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForImageTextToText.from_config(config)
    template = (
        "{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size=16),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def test_tiny_random_transformers_vlm_falls_back_cleanly(tmp_path: Path, registry: ToolRegistry) -> None:
    _tiny_vlm(tmp_path / "tiny-vlm")
    vlm = VLMPlanner(
        f"local-dir:{tmp_path / 'tiny-vlm'}", registry=registry, offline=True, device="cpu", max_new_tokens=12
    )
    result = vlm.plan(IMAGE, report(low_light=0.9), "brighten it", policy=load_policy("default"))
    record = result.record
    assert record.backend.startswith("transformers:") and record.fallback
    assert len(record.attempts) == 2 and all(a["reply"] is not None and a["error"] for a in record.attempts)
    assert [s["target"] for s in result.steps] == ["low_light"]


def test_missing_local_model_falls_back_with_a_clear_reason(tmp_path: Path, registry: ToolRegistry) -> None:
    pytest.importorskip("transformers")
    vlm = VLMPlanner(str(tmp_path / "not-a-model"), registry=registry, offline=True)
    result = vlm.plan(IMAGE, report(noise=0.9), None, policy=load_policy("default"))
    assert result.record.fallback and "cannot load VLM" in (result.record.fallback_reason or "")
    assert [s["target"] for s in result.steps] == ["noise"]


# -------------------------------------------------------------------------- OpenAI-compatible client


class _Stub(BaseHTTPRequestHandler):
    replies: list[tuple[int, Any]] = []
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        type(self).seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload = type(self).replies.pop(0)
        data = json.dumps(payload).encode()
        self.send_response(status)
        if status in (301, 302, 307):
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        return


@pytest.fixture()
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    handler = type("Handler", (_Stub,), {"replies": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


def _completion(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_openai_client_sends_model_messages_image_and_key(
    stub: tuple[str, type[_Stub]], registry: ToolRegistry
) -> None:
    url, handler = stub
    handler.replies.append((200, _completion(json.dumps(VALID))))
    vlm = VLMPlanner.from_openai(url + "/", "qwen2-vl", "sk-secret-123", registry=registry, max_steps=4)
    result = vlm.plan(IMAGE, report(noise=0.9, haze=0.7), "denoise and dehaze")
    assert not result.record.fallback and result.record.backend == "openai:qwen2-vl"
    assert [s["tool"] for s in result.steps] == ["denoise_dct", "dehaze_dcp"]

    request = handler.seen[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-secret-123"
    body = request["body"]
    assert body["model"] == "qwen2-vl" and body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    parts = body["messages"][1]["content"]
    assert parts[0]["type"] == "text" and "denoise and dehaze" in parts[0]["text"]
    url_part = parts[1]["image_url"]["url"]
    assert parts[1]["type"] == "image_url" and url_part.startswith("data:image/png;base64,")
    from PIL import Image

    decoded = Image.open(io.BytesIO(base64.b64decode(url_part.split(",", 1)[1])))
    assert decoded.size == (32, 24)


def test_openai_client_reads_the_environment_and_hides_the_key(
    stub: tuple[str, type[_Stub]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = stub
    monkeypatch.setenv("RESTORA_VLM_BASE_URL", url)
    monkeypatch.setenv("RESTORA_VLM_MODEL", "llava")
    monkeypatch.setenv("RESTORA_VLM_API_KEY", "sk-env-456")
    client = OpenAICompatibleClient(timeout=5)
    assert "sk-env-456" not in repr(client) and client.model == "llava"
    handler.replies.append((401, {"error": {"message": "bad key sk-env-456"}}))
    caplog.set_level("DEBUG")
    with pytest.raises(OpenAIError, match="HTTP 401") as info:
        client.chat([{"role": "user", "content": "hi"}])
    assert "sk-env-456" not in str(info.value) and "RESTORA_VLM_API_KEY" in str(info.value)
    assert "sk-env-456" not in caplog.text
    assert handler.seen[0]["headers"]["Authorization"] == "Bearer sk-env-456"


def test_openai_client_errors_name_the_fix(stub: tuple[str, type[_Stub]], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RESTORA_VLM_BASE_URL", "RESTORA_VLM_MODEL", "RESTORA_VLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="RESTORA_VLM_BASE_URL"):
        OpenAICompatibleClient(model="m")
    with pytest.raises(ValueError, match="RESTORA_VLM_MODEL"):
        OpenAICompatibleClient("http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleClient("file:///etc/passwd", "m")
    with pytest.raises(ValueError, match="api_key"):
        OpenAICompatibleClient("http://user:pw@127.0.0.1/v1", "m")

    url, handler = stub
    client = OpenAICompatibleClient(url, "m", "k", timeout=5)
    handler.replies.append((302, {}))
    with pytest.raises(OpenAIError, match="redirects are not followed"):
        client.chat([{"role": "user", "content": "hi"}])
    handler.replies.append((200, {"unexpected": True}))
    with pytest.raises(OpenAIError, match="without choices"):
        client.chat([{"role": "user", "content": "hi"}])
    closed = OpenAICompatibleClient("http://127.0.0.1:9/v1", "m", timeout=2)  # discard port: nothing listens
    with pytest.raises(OpenAIError, match="cannot reach"):
        closed.chat([{"role": "user", "content": "hi"}])


def test_openai_planner_falls_back_when_the_server_is_down(registry: ToolRegistry) -> None:
    vlm = VLMPlanner.from_openai("http://127.0.0.1:9/v1", "m", registry=registry, timeout=2)
    result = vlm.plan(IMAGE, report(rain=0.9), "derain", policy=load_policy("default"))
    assert result.record.fallback and "cannot reach" in (result.record.fallback_reason or "")
    assert [s["target"] for s in result.steps] == ["rain"]


def test_data_url_shrinks_large_images() -> None:
    url = image_to_data_url(np.zeros((600, 2000, 3), np.float32), max_side=500)
    from PIL import Image

    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (500, 150)


def test_parse_request_feeds_the_planner_intent(registry: ToolRegistry) -> None:
    model = Scripted(VALID)
    intent = parse_request("only remove the haze")
    result = planner(model, registry).plan(IMAGE, report(noise=0.9, haze=0.7), "only remove the haze", intent)
    assert [s["target"] for s in result.steps] == ["haze"]
    assert "fix only: haze" in model.calls[0][1]["content"]
