"""Which answer of a chat-completion server becomes which typed error, for the queue refill.

The Hugging Face router answers errors as ``{"error": "text"}`` (401 bad token, 402 credits, 429 rate);
OpenAI-compatible servers (a provider behind the router, vLLM, Ollama, llama.cpp) as
``{"error": {"message", "type", "code"}}``, and an unknown model there is 404 ``code: model_not_found``
(vLLM: 404 ``NotFoundError``; Ollama: 404 ``model "x" not found``; llama.cpp's router mode: 400
``{"error": {"code": 400, "message": "model not found", "type": "invalid_request_error"}}``).

| answer                              | error              | what the refill does                          |
|-------------------------------------|--------------------|-----------------------------------------------|
| 402                                 | CreditsDepleted    | pauses the ``text`` service, one notice       |
| 401, 403                            | ServiceBlocked     | pauses the ``text`` service, one notice       |
| 404, 400 naming the model           | ModelRefused       | pauses the ``text`` service, one notice       |
| other 400/422                       | ServiceBlocked     | pauses the ``text`` service, one notice       |
| 429, 5xx, timeout, reset            | TransientError     | gives the refill back, tried again next tick  |

The images never stop for any of these: the pause is the refill's own (``TEXT_SERVICE``).
"""

from __future__ import annotations

from typing import Any

from image_pipeline.domain.errors import CreditsDepleted, PipelineError, ServiceBlocked, TransientError
from image_pipeline.domain.redact import redact

TEXT_SERVICE = "text"  # the budget guard's pause of the refill alone (lifecycle/ledger.py pause_state)


class ModelRefused(ServiceBlocked):
    """The server does not serve the configured model: only a new IMAGE_PIPELINE_REFILL_MODEL helps."""


def _body(response: Any) -> Any:
    try:
        return response.json()
    except Exception:
        return None


def _error_fields(body: Any) -> tuple[str, str]:
    """(message, code) of either error shape."""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or ""), str(error.get("code") or error.get("type") or "")
    if isinstance(error, str):
        return error, ""
    return str(body.get("message") or body.get("detail") or ""), str(body.get("code") or "")


def _wait_hint(response: Any) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


def classify(exc: BaseException, *, model: str, where: str) -> PipelineError:
    """The typed error for an exception raised by ``InferenceClient.chat_completion``."""
    import httpx2

    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, httpx2.TimeoutException):
        return TransientError(f"the text model at {where} did not answer in time", service=TEXT_SERVICE)
    if isinstance(exc, httpx2.TransportError):
        return TransientError(
            f"cannot reach the text model at {where} ({type(exc).__name__})", service=TEXT_SERVICE
        )
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        # the client could not read the answer as a chat completion: the server speaks something else
        return ServiceBlocked(
            f"the text model at {where} answered something that is not a chat completion "
            f"({type(exc).__name__})",
            service=TEXT_SERVICE,
        )
    message, code = _error_fields(_body(response))
    said = redact(message).rstrip(". ")[:300]
    head = f"{where} answered HTTP {status}" + (f": {said}" if said else "")
    names_model = code == "model_not_found" or "model" in message.lower()
    if status == 402:
        return CreditsDepleted(f"{head}. Add credits, then resume", service=TEXT_SERVICE, status=status)
    if status in (401, 403):
        return ServiceBlocked(f"{head}. Check HF_TOKEN", service=TEXT_SERVICE, status=status)
    if status == 404 or (status == 400 and names_model):
        return ModelRefused(
            f"{head}. The model {model!r} is not served there: set IMAGE_PIPELINE_REFILL_MODEL",
            service=TEXT_SERVICE,
            status=status,
        )
    if status == 429 or status >= 500:
        return TransientError(head, service=TEXT_SERVICE, status=status, retry_after=_wait_hint(response))
    return ServiceBlocked(head, service=TEXT_SERVICE, status=status)
