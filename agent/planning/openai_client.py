"""A minimal client for OpenAI-compatible chat-completions servers (vLLM, Ollama, hosted APIs).

Standard library only (``urllib``): no ``openai`` package. The base URL, model and key come from
the arguments or from ``RESTORA_VLM_BASE_URL``, ``RESTORA_VLM_MODEL`` and ``RESTORA_VLM_API_KEY``.
The image travels as a PNG data URL in an ``image_url`` content part. The key is sent only as the
``Authorization`` header of requests to the configured endpoint: redirects are refused (so it
cannot be forwarded elsewhere), and it never appears in logs, ``repr`` or error messages.

Typical base URLs: ``http://localhost:8000/v1`` (vLLM), ``http://localhost:11434/v1`` (Ollama),
``https://api.openai.com/v1``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ENV_BASE_URL = "RESTORA_VLM_BASE_URL"
ENV_MODEL = "RESTORA_VLM_MODEL"
ENV_API_KEY = "RESTORA_VLM_API_KEY"

#: Largest response body read, in bytes.
MAX_RESPONSE_BYTES = 4_000_000
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class OpenAIError(RuntimeError):
    """The server could not be reached or answered with an error; the message says what to check."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: the Authorization header must never follow a redirect to another host."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        """Return ``None`` so that a redirect surfaces as an HTTP error instead of being followed."""
        return None


def image_to_data_url(image: np.ndarray | Any, max_side: int = 1024) -> str:
    """A ``data:image/png;base64,...`` URL of an image (float [0, 1] or uint8 array, or a PIL image).

    The image is shrunk so that its longer side is at most ``max_side`` (PNG keeps it lossless:
    JPEG would add the very artifacts the planner is asked to look for).
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(array)
    elif isinstance(image, Image.Image):
        pil = image
    else:
        raise TypeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    pil = pil.convert("RGB")
    if max(pil.size) > max_side:
        pil = pil.copy()
        pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAICompatibleClient:
    """Chat completions over HTTP against any OpenAI-compatible server.

    Args:
        base_url: server base URL (ends with ``/v1`` on most servers); default ``$RESTORA_VLM_BASE_URL``.
        model: model name as the server knows it; default ``$RESTORA_VLM_MODEL``.
        api_key: bearer token; default ``$RESTORA_VLM_API_KEY`` (local servers usually need none).
        timeout: seconds to wait for the answer.
        max_tokens: most tokens the server may generate.
        temperature: sampling temperature (0: as deterministic as the server allows).
        json_mode: ask for ``response_format={"type": "json_object"}`` (not every server supports it).
        max_image_side: longer image side sent, in pixels.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        json_mode: bool = False,
        max_image_side: int = 1024,
    ) -> None:
        base_url = base_url or os.environ.get(ENV_BASE_URL)
        if not base_url:
            raise ValueError(
                f"no server URL: pass base_url= or set {ENV_BASE_URL} "
                "(e.g. http://localhost:8000/v1 for vLLM, http://localhost:11434/v1 for Ollama)"
            )
        parsed = urllib.parse.urlsplit(base_url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port]/path, got scheme {parsed.scheme!r}")
        if parsed.username or parsed.password:
            raise ValueError(f"put credentials in api_key= or {ENV_API_KEY}, not in the base URL")
        self.model = model or os.environ.get(ENV_MODEL) or ""
        if not self.model:
            raise ValueError(f"no model name: pass model= or set {ENV_MODEL} (the name the server serves)")
        path = parsed.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path += "/chat/completions"
        self.endpoint = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))
        self._api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.json_mode = json_mode
        self.max_image_side = int(max_image_side)
        handlers: list[Any] = [_NoRedirect()]
        if parsed.hostname in _LOOPBACK:
            handlers.append(urllib.request.ProxyHandler({}))  # a local server is never reached through a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        key = "***" if self._api_key else None
        return f"OpenAICompatibleClient(endpoint={self.endpoint!r}, model={self.model!r}, api_key={key})"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def chat(self, messages: list[dict[str, Any]]) -> str:
        """Send OpenAI-format ``messages``; return the assistant's text.

        Raises:
            OpenAIError: on connection failures, timeouts, HTTP errors or an unexpected answer.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "restora"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode("utf-8"), headers=headers)
        logger.info("VLM request to %s (model %s, %d messages)", self.endpoint, self.model, len(messages))
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = self._redact(exc.read(2000).decode("utf-8", "replace")) if exc.fp is not None else ""
            hint = {
                401: f"; check {ENV_API_KEY}",
                403: f"; check {ENV_API_KEY}",
                404: f"; check {ENV_BASE_URL} (usually ends with /v1) and {ENV_MODEL}",
            }.get(exc.code, "")
            if 300 <= exc.code < 400:
                hint = f"; redirects are not followed, set {ENV_BASE_URL} to the final URL"
            raise OpenAIError(f"{self.endpoint} answered HTTP {exc.code}: {detail[:300]}{hint}") from None
        except TimeoutError:
            raise OpenAIError(f"{self.endpoint} did not answer within {self.timeout:g} s; raise timeout=") from None
        except urllib.error.URLError as exc:
            reason = self._redact(str(exc.reason))
            raise OpenAIError(
                f"cannot reach {self.endpoint}: {reason}; is the server running? ({ENV_BASE_URL})"
            ) from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise OpenAIError(f"{self.endpoint} sent more than {MAX_RESPONSE_BYTES} bytes; refusing to read it")
        try:
            data = json.loads(raw.decode("utf-8"))
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise OpenAIError(f"{self.endpoint} sent an answer without choices[0].message.content") from None
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise OpenAIError(f"{self.endpoint} sent non-text content ({type(content).__name__})")
        return content

    def generate(self, messages: list[dict[str, Any]], image: Any | None) -> str:
        """The planner's backend call: neutral ``messages`` (role + text) and the image, -> text.

        The image is attached to the first user message as a data URL.
        """
        converted: list[dict[str, Any]] = []
        attached = image is None
        for message in messages:
            if message["role"] == "user" and not attached:
                url = image_to_data_url(image, self.max_image_side)
                content: Any = [
                    {"type": "text", "text": message["content"]},
                    {"type": "image_url", "image_url": {"url": url}},
                ]
                attached = True
            else:
                content = message["content"]
            converted.append({"role": message["role"], "content": content})
        return self.chat(converted)
