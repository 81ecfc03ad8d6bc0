"""``ChatEmulator``: ``POST [/<prefix>]/v1/chat/completions`` as the Hugging Face router and local
OpenAI-compatible servers answer it.

- a reply: ``{"id", "object": "chat.completion", "created", "model", "choices": [{"index": 0, "message":
  {"role": "assistant", "content"}, "finish_reason": "stop"}], "usage"}`` (the OpenAI chat object, which
  huggingface_hub parses into ``ChatCompletionOutput``); the content is ``reply`` (a string, or a function of
  the request's messages), or numbered lines when none is set;
- the router's own errors, ``{"error": "<text>"}``: 401 "Invalid credentials in Authorization header" for a
  missing or wrong bearer token (when ``token`` is set), 402 with the credits text (``credits = False``),
  429 "Rate limit reached. Please retry later." with ``Retry-After`` (``fail_next(429)``);
- an unknown model (``models`` set and the body's model not in it): 404 ``{"error": {"message": "The model
  `x` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": null,
  "code": "model_not_found"}}``, as OpenAI-compatible providers answer it;
- a body without ``messages``: 400 ``invalid_request_error`` naming the field.

Texts come from ``emulators/huggingface/wire.py`` (each with its source there).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from image_pipeline.testing.emulators.base import EmulatorServer, Request, Response
from image_pipeline.testing.emulators.huggingface.wire import (
    CREDITS_MESSAGE,
    DEFAULT_TOKEN,
    INVALID_CREDENTIALS,
    RATE_LIMIT_MESSAGE,
)

CHAT_TOKEN = DEFAULT_TOKEN  # the same HF token the image emulator accepts
MODEL_NOT_FOUND = "The model `{model}` does not exist or you do not have access to it."
_PATH = "/v1/chat/completions"

Reply = str | Callable[[list[dict[str, Any]]], str]


def completion(model: str, content: str, n: int) -> dict[str, Any]:
    """The chat completion object a server answers with."""
    return {
        "id": f"chatcmpl-emulator-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": len(content.split()), "total_tokens": 0},
    }


def _openai_error(status: int, message: str, code: str, param: str | None = None) -> Response:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return Response.json({"error": error}, status)


class ChatEmulator(EmulatorServer):
    name = "chat"

    def __init__(self, *, token: str | None = CHAT_TOKEN, models: set[str] | None = None) -> None:
        super().__init__()
        self.token = token  # None: a local server, which takes any or no key
        self.models = models  # None: every model is served (a local server answers whatever is loaded)
        self.credits = True
        self.reply: Reply | None = None
        self.bodies: list[dict[str, Any]] = []  # every accepted request body, in order
        self._ids = itertools.count(1)

    def endpoint_of(self, request: Request) -> str:
        return "chat" if request.path.rstrip("/").endswith(_PATH) else "other"

    def error_response(self, status: int, request: Request) -> Response:
        texts = {401: INVALID_CREDENTIALS, 402: CREDITS_MESSAGE, 429: RATE_LIMIT_MESSAGE}
        headers = {"Retry-After": "1"} if status == 429 else {}
        return Response.json({"error": texts.get(status, "Internal Server Error")}, status, headers)

    def route(self, request: Request) -> Response:
        if request.method != "POST" or self.endpoint_of(request) != "chat":
            return Response.json({"error": "Not Found"}, 404)
        if self.token is not None and request.header("authorization") != f"Bearer {self.token}":
            return self.error_response(401, request)
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _openai_error(
                400, "'messages' is a required property", "invalid_request_error", "messages"
            )
        model = str(body.get("model") or "")
        if self.models is not None and model not in self.models:
            return _openai_error(404, MODEL_NOT_FOUND.format(model=model), "model_not_found")
        if not self.credits:
            return self.error_response(402, request)
        with self._lock:
            self.bodies.append(body)
            n = next(self._ids)
        reply = self.reply
        if reply is None:
            content = "\n".join(f"{i}. emulated prompt {n}-{i}" for i in range(1, 4))
        else:
            content = reply if isinstance(reply, str) else reply(body["messages"])
        return Response.json(completion(model, content, n))
