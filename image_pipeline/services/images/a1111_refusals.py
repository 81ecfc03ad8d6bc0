"""Every answer of the AUTOMATIC1111 / Forge / SD.Next txt2img API, classed (shared/selfhosted-backends.md 1).

Shapes: FastAPI's 422 ``{"detail": [{"loc": ["body", field], "msg", "type"}]}``; everything else through
``api_middleware.handle_exception``: ``{"error": <exception class>, "detail", "body", "errors"}``; without
``--api`` the app's own 404 ``{"detail": "Not Found"}``; in front of the server, proxies' HTML pages.

| answer                                   | class     | why                                                    |
|------------------------------------------|-----------|--------------------------------------------------------|
| 404 ``Not Found`` on txt2img             | SERVICE   | the API is off (no ``--api``) or the URL is wrong      |
| 404 ``Sampler not found`` (<=1.9, SD.Next)| SERVICE  | our configured sampler, not the prompt                 |
| 401 / 403                                | SERVICE   | login (``--api-auth``) or a proxy refuses every prompt |
| 422 about prompt/negative/seed/size/model| PROMPT    | only the row supplies those                            |
| 422 about any other field, or a script   | SERVICE   | our request does not fit this server's version         |
| 500 ``OutOfMemoryError``                 | TRANSIENT | once (memory may be held by a model switch); decided   |
|                                          |           | again by the backend when it repeats (see a1111.py)    |
| other 5xx, 429, Cloudflare 524           | TRANSIENT | a blip; a 524 that persists is SERVICE (proxy timeout) |
| 200 not JSON / not an image              | TRANSIENT | persistent -> SERVICE (something else answers there)   |
| 200 ``images: []``                       | SERVICE   | SD.Next without a loaded model: every prompt gets none |
| other 4xx                                | PROMPT?   | unknown: the run checks it against the next prompt     |
"""

from __future__ import annotations

import json
from typing import Any

import requests

from image_pipeline.domain.errors import PipelineError, ServiceBlocked, TransientError
from image_pipeline.domain.redact import redact
from image_pipeline.domain.refusals import Refusal, refuse

SERVICE = "images"
# the request fields whose values come from the row (prompt, negative_prompt, seed, width, height, model)
ROW_FIELDS = frozenset({"prompt", "negative_prompt", "seed", "width", "height", "override_settings"})
API_FIX = (
    "start the server with its API enabled (webui --api, or --nowebui; Forge: --api; SD.Next has it on) "
    "and set A1111_BASE_URL to its root, e.g. http://gpu:7860"
)


def payload_of(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _detail_text(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    parts = [payload.get("error"), payload.get("detail"), payload.get("errors")]
    return redact("; ".join(str(p) for p in parts if isinstance(p, str) and p))[:300]


def is_out_of_memory(status: int, payload: Any) -> bool:
    if status != 500 or not isinstance(payload, dict):
        return False
    text = f"{payload.get('error', '')} {payload.get('errors', '')}".lower()
    return "outofmemory" in text or "out of memory" in text


def with_persistent(error: TransientError, message: str) -> TransientError:
    """A TRANSIENT answer that is SERVICE once it outlasts the retries (read by ``ImageGenerator``)."""
    error.persistent_service_message = message  # type: ignore[attr-defined]
    return error


def classify(
    response: requests.Response, *, where: str, has_login: bool, sampler: str | None
) -> PipelineError:
    """The error for a txt2img answer that is not a 200."""
    status = response.status_code
    payload = payload_of(response)
    text = _detail_text(payload)
    if status == 404:
        detail = payload.get("detail") if isinstance(payload, dict) else None
        if isinstance(detail, str) and "sampler" in detail.lower():
            return ServiceBlocked(
                f"{where} does not know the sampler {sampler!r} (HTTP 404 {detail!r}). Fix: set A1111_SAMPLER "
                "to a name GET /sdapi/v1/samplers lists; prompts stay queued",
                service=SERVICE,
                status=404,
            )
        return ServiceBlocked(
            f"{where}: /sdapi/v1/txt2img not found (HTTP 404): the API is not enabled. Fix: {API_FIX}; prompts "
            "stay queued",
            service=SERVICE,
            status=404,
        )
    if status == 401:
        fix = (
            "check A1111_USER / A1111_PASSWORD against the server's --api-auth user:password"
            if has_login
            else "the server asks for a login (--api-auth): set A1111_USER and A1111_PASSWORD"
        )
        return ServiceBlocked(
            f"{where} refused the login (HTTP 401 {text or 'Unauthorized'}). Fix: {fix}; prompts stay queued",
            service=SERVICE,
            status=401,
        )
    if status == 403:
        return ServiceBlocked(
            f"{where} answered 403 Forbidden{f' ({text})' if text else ''}: a proxy or the server refuses this "
            "client. Fix: allow this host, or reach the server directly; prompts stay queued",
            service=SERVICE,
            status=403,
        )
    if status == 422:
        return _validation(payload, where=where)
    if is_out_of_memory(status, payload):
        return TransientError(
            f"{where} ran out of GPU memory (HTTP 500 OutOfMemoryError)", service=SERVICE, status=500
        )
    if status == 524 or (status in (502, 504) and payload is None):
        message = f"{where}: a proxy gave up waiting for the server (HTTP {status})"
        return with_persistent(
            TransientError(message, service=SERVICE, status=status),
            f"{message} on every retry: each generation outlasts the proxy's timeout (Cloudflare's is 100 s). "
            "Fix: reach the server without the proxy, or raise the proxy's timeout; prompts stay queued",
        )
    if status == 429 or status >= 500:
        retry_after = _retry_after(response)
        what = f" ({text})" if text else ""
        return refuse(
            Refusal.TRANSIENT, f"{where} answered HTTP {status}{what}", service=SERVICE, status=status,
            retry_after=retry_after,
        )  # fmt: skip
    return refuse(
        Refusal.PROMPT,
        f"{where} refused this request (HTTP {status}{f': {text}' if text else ''})",
        service=SERVICE,
        status=status,
        unknown=True,
    )


def _validation(payload: Any, *, where: str) -> PipelineError:
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not isinstance(detail, list):
        # an HTTPException(422) of the webui itself: an unknown script or always-on script we sent
        text = _detail_text(payload) or "no detail"
        return ServiceBlocked(
            f"{where} refused our request (HTTP 422: {text}). Fix: check the A1111 settings against the "
            "server's version; prompts stay queued",
            service=SERVICE,
            status=422,
        )
    fields: list[str] = []
    for item in detail:
        loc = item.get("loc") if isinstance(item, dict) else None
        if isinstance(loc, list) and len(loc) >= 2 and loc[0] == "body":
            fields.append(str(loc[1]))
        else:
            fields.append("?")
    said = "; ".join(
        f"{'.'.join(str(x) for x in (item.get('loc') or [])[1:])}: {item.get('msg', '')}"
        for item in detail
        if isinstance(item, dict)
    )
    said = redact(said)[:300]
    if fields and all(f in ROW_FIELDS for f in fields):
        return refuse(
            Refusal.PROMPT,
            f"{where} refused the row's values (HTTP 422: {said})",
            service=SERVICE,
            status=422,
        )
    return ServiceBlocked(
        f"{where} refused our request's fields (HTTP 422: {said}): the request does not fit this server. Fix: "
        "check A1111_STEPS / A1111_CFG_SCALE / A1111_SAMPLER and the server's version; prompts stay queued",
        service=SERVICE,
        status=422,
    )


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def transport_error(exc: requests.RequestException, *, where: str, read_timeout_s: float) -> TransientError:
    """A request that got no answer: refused, reset, or slower than the read timeout."""
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError(
            f"{where}: connection timed out (is the server up and reachable?)", service=SERVICE
        )
    if isinstance(exc, requests.ReadTimeout):
        return TransientError(
            f"{where} did not answer within {read_timeout_s:g}s (queue + model load + generation); the running "
            "job was interrupted. Fix if it repeats: raise A1111_TIMEOUT_S",
            service=SERVICE,
        )
    if isinstance(exc, requests.ConnectionError):
        return TransientError(
            f"{where}: cannot connect ({type(exc).__name__}): is the server running and listening (--listen)?",
            service=SERVICE,
        )
    return TransientError(f"{where}: request failed ({type(exc).__name__})", service=SERVICE)


def unexpected_body(where: str, what: str) -> TransientError:
    message = f"{where} answered 200 with {what}"
    return with_persistent(
        TransientError(message, service=SERVICE),
        f"{message}, on every retry: something other than the webui API answers there. Fix: check "
        "A1111_BASE_URL (the server's root, e.g. http://gpu:7860); prompts stay queued",
    )


def info_of(raw: Any) -> dict[str, Any]:
    """``info`` is a JSON *string* (``Processed.js()``); SD.Next sends "" when it made nothing."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}
