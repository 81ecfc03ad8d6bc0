"""Every answer of Hugging Face inference (``huggingface_hub`` 2.4.0 ``InferenceClient.text_to_image``), classed.

The client surfaces a provider's answer in several shapes, and each is read here:
- ``HfHubHTTPError`` (router, provider or Hub status): by status, then the server's text. The text is the
  client's ``server_message`` (``error``, ``errors[].message``, ``error_description``, ``X-Error-Message``,
  ``utils/_http.py: _format``) plus what it does not read: fal's ``{"detail": [{"msg", "type"}]}``.
- ``InferenceTimeoutError`` / an ``httpx2`` transport error: the network or our deadline.
- ``ValueError`` raised by the provider helpers (``inference/_providers/*.py``) for configuration and provider
  faults: an unsupported provider, a model a provider does not serve, a failed provider job.
- ``StopIteration`` when the Hub lists no provider for the model (``_providers/__init__.py``:
  ``next(iter(provider_mapping))``), ``JSONDecodeError`` when a 200 carries an HTML page instead of JSON.
- the builtin ``TimeoutError`` that ``replicate.py`` raises for any prediction without output: a cold
  start, or a failed prediction (a safety refusal among them). The prediction itself tells them apart, so
  the adapter passes the last JSON answer it saw (``answer``).

Decided: a 200 whose body is not what the provider documents (HTML gateway page, JSON of another shape) is
TRANSIENT for the retries of one prompt, and if it persists through them it is SERVICE (see
``persistent_service_message``): a page that keeps coming back is a gateway or a misconfigured endpoint,
which would refuse the next prompt too, so it must not count attempts against healthy prompts.

A content refusal (a provider's safety filter on the prompt) is PROMPT at the first answer, never retried:
the same prompt is refused again, and each try is a paid request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from image_pipeline.domain.errors import CreditsDepleted, PipelineError, TransientError
from image_pipeline.domain.redact import redact
from image_pipeline.domain.refusals import Refusal, Rule, first_rule, refuse

SERVICE = "images"
TOKEN_FIX = "check HF_TOKEN: it needs the permission 'Make calls to Inference Providers'"
PIN_FIX = (
    "set HF_PROVIDER to another provider that serves the model (its page lists them), or change the order "
    "at https://huggingface.co/settings/inference-providers"
)
CREDITS_FIX = "add credits or a payment method, or raise the spending limit; prompts stay queued"

# What a provider's safety filter says (fal ``content_policy_violation``, replicate/cog "NSFW content
# detected", diffusers' safety checker, the emulator's hf-inference text).
CONTENT_WORDS = r"content[_ ]polic|content checker|safety|nsfw|flagged|inappropriate|explicit content"
# What a provider says when an account's money or monthly quota is gone ("exceeded your monthly included
# credits", "Exhausted balance", "NOT_ENOUGH_BALANCE", "reached its monthly spending limit").
BILLING_WORDS = r"credits?\b|balance|quota|spending limit|billing|payment|insufficient[_ ]funds"
# A per-minute rate limit that happens to mention a quota: waiting fixes it, money does not.
RATE_WORDS = r"rate.?limit|per minute|too many requests|requests per"


@dataclass(frozen=True)
class HfRule(Rule):
    # SERVICE answers that are about money pause spending (CreditsDepleted) instead of only stopping
    credits: bool = False
    # what the message says happened, before the server's own text
    says: str = "refused us"


RULES: tuple[HfRule, ...] = (
    HfRule(
        Refusal.PROMPT,
        frozenset({400, 422}),
        CONTENT_WORDS,
        "change the prompt",
        "https://fal.ai/docs/documentation/model-apis/errors.md (422 content_policy_violation, "
        "X-Fal-Retryable: false); hf-inference passes the pipeline's 400 through",
        says="refused the prompt",
    ),
    HfRule(
        Refusal.SERVICE,
        frozenset({402}),
        r"pay.?as.?you.?go is not enabled",
        PIN_FIX,
        "fal-ai/fal#1043: 402 'Pay-as-you go is not enabled for provider fal-ai yet.' (credits do not help)",
        says="does not bill this provider to your account",
    ),
    HfRule(
        Refusal.SERVICE,
        frozenset({402}),
        "",
        CREDITS_FIX,
        "huggingface.co/docs/inference-providers/pricing: 402 once the included credits are used",
        credits=True,
        says="credits are depleted",
    ),
    HfRule(Refusal.TRANSIENT, frozenset({429}), RATE_WORDS, "", "utils/_http.py: 429 + RateLimit headers"),
    HfRule(
        Refusal.SERVICE,
        frozenset({403, 429}),
        BILLING_WORDS,
        CREDITS_FIX,
        "hub-docs#2392 (NOT_ENOUGH_BALANCE); providers' quota answers routed as 403/429",
        credits=True,
        says="the provider's quota or balance is used up",
    ),
    HfRule(Refusal.TRANSIENT, frozenset({429}), "", "", "a 429 without billing words is a rate limit"),
    HfRule(
        Refusal.SERVICE,
        frozenset({401}),
        "",
        TOKEN_FIX,
        "utils/_http.py: 401 Invalid credentials",
        says="rejected the token",
    ),
    HfRule(
        Refusal.SERVICE,
        frozenset({403}),
        "",
        "give the token access to the model (gated models need their terms accepted on the model page)",
        "utils/_http.py: 403 Forbidden",
        says="refused access",
    ),
    HfRule(
        Refusal.SERVICE,
        frozenset({410}),
        "",
        "api-inference.huggingface.co is retired: remove HF_INFERENCE_BASE_URL (requests then go through "
        "router.huggingface.co) or set it to https://router.huggingface.co/hf-inference/models/<model>",
        "'https://api-inference.huggingface.co is no longer supported. Please use "
        "https://router.huggingface.co instead.' (SreejanPersonal/JARVIS-AGI#9, promptfoo#6624)",
        says="endpoint is retired",
    ),
    HfRule(
        Refusal.TRANSIENT,
        frozenset({408, 500, 502, 503, 504}),
        "",
        "",
        "503 'currently loading' with estimated_time (transformers#23793); gateway errors",
    ),
)

# A model no provider serves for text-to-image: a row's own model fails that row, the configured model
# stops the run (see classify).
MODEL_RULE = HfRule(
    Refusal.PROMPT,
    frozenset(),
    r"is not supported by provider|is not supported for task|No provider mapping found|"
    r"doesn't support task|Please provide an HF model ID",
    "pick a model whose page lists an Inference Provider for text-to-image",
    "_providers/_common.py _prepare_mapping_info, _fetch_inference_provider_mapping; "
    "hf_inference.py _check_supported_task",
)

# ValueErrors raised by the provider helpers, by their text (huggingface_hub 2.4.0 sources in each source).
VALUE_RULES: tuple[HfRule, ...] = (
    HfRule(
        Refusal.SERVICE,
        frozenset(),
        r"Provider '[^']*' not supported",
        PIN_FIX,
        "_providers/__init__.py get_provider_helper: a provider the Hub lists that this client lacks",
    ),
    HfRule(
        Refusal.SERVICE,
        frozenset(),
        r"Task '[^']*' not supported for provider",
        "set HF_PROVIDER to a provider that makes images (fal-ai, hf-inference, replicate, together...)",
        "_providers/__init__.py get_provider_helper",
    ),
    HfRule(
        Refusal.SERVICE,
        frozenset(),
        r"must provide an api_key|Cannot select auto-router",
        TOKEN_FIX,
        "_providers/_common.py _prepare_api_key",
    ),
    MODEL_RULE,
    HfRule(
        Refusal.PROMPT,
        frozenset(),
        CONTENT_WORDS,
        "change the prompt",
        "wavespeed.py: 'WaveSpeed AI task failed: <error>' carrying the provider's safety text",
    ),
    HfRule(
        Refusal.SERVICE,
        frozenset(),
        r"task failed|Unknown status|No result URL|No output URL|No request ID",
        PIN_FIX,
        "wavespeed.py / fal_ai.py polling: the provider's job failed or answered an unknown state",
    ),
)


def request_id_of(exc: BaseException, answer: dict[str, Any] | None = None) -> str:
    """Hugging Face's id for the request, which is what its support asks for."""
    rid = getattr(exc, "request_id", None)
    if not rid and answer:
        rid = answer.get("request_id")
    return str(rid) if rid else ""


def server_text(exc: BaseException) -> str:
    """The server's reason: the client's ``server_message`` plus the body fields it does not read."""
    parts: list[str] = []
    response = getattr(exc, "response", None)
    try:
        body = response.json() if response is not None else None
    except Exception:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        # OpenAI-shaped providers (together): {"error": {"message", "type"}}; the client would print the dict
        parts.append(str(error.get("message") or ""))
    else:
        message = getattr(exc, "server_message", None)
        if message:
            parts.append(str(message))
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            parts.append(detail)
        elif isinstance(detail, list):  # fal: [{"loc", "msg", "type", ...}]
            for item in detail:
                if isinstance(item, dict):
                    parts.append(" ".join(str(item.get(k, "")) for k in ("msg", "type")).strip())
    text = " ".join(dict.fromkeys(p.strip() for p in parts if p and p.strip()))
    return redact(text)[:300]


def _with_id(message: str, rid: str) -> str:
    return f"{message} (Request ID: {rid})" if rid else message


def classify(
    exc: BaseException,
    *,
    model: str,
    own_model: bool,
    provider: str,
    timeout_s: float,
    answer: dict[str, Any] | None = None,
) -> PipelineError:
    """The typed error for an exception of ``text_to_image``.

    ``own_model``: the row named a model other than the configured one, so a model the providers do not
    serve is that row's fault; the configured model refusing would refuse every row.
    ``answer``: the last JSON answer of this attempt, as the adapter's transport saw it.
    """
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

    rid = request_id_of(exc, answer)
    via = f" via {provider}" if provider else ""

    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        return _http(exc, model=model, own_model=own_model, via=via, rid=rid)
    if isinstance(exc, InferenceTimeoutError) or _is_timeout(exc):
        return TransientError(
            _with_id(f"Hugging Face{via} did not answer within {timeout_s:g}s", rid), service=SERVICE
        )
    if isinstance(exc, TimeoutError):  # replicate.py: a prediction that came back without output
        return _replicate(answer, model=model, via=via, rid=rid)
    if _is_transport_error(exc):
        return TransientError(
            _with_id(f"Hugging Face{via} unreachable ({type(exc).__name__})", rid), service=SERVICE
        )
    if _is_not_an_image(exc):
        # a 200 whose bytes PIL cannot open, or a truncated body: may be a glitch, retried, then the
        # prompt stays queued with an attempt counted
        return TransientError(
            _with_id(f"the generator{via} answered with bytes that are not an image", rid), service=SERVICE
        )
    if isinstance(exc, StopIteration):
        # _providers/__init__.py: next(iter(provider_mapping)) on an empty mapping
        kind = Refusal.PROMPT if own_model else Refusal.SERVICE
        fix = "pick a model whose page lists Inference Providers, or set HF_INFERENCE_BASE_URL"
        text = f"no Inference Provider serves {model} (the Hub lists none): {fix}"
        return refuse(kind, _with_id(text, rid), service=SERVICE)
    if isinstance(exc, json.JSONDecodeError | KeyError | IndexError | TypeError):
        return _unexpected_body(exc, via=via, rid=rid)
    if isinstance(exc, ValueError):
        # the client's list of every provider it knows says nothing the fix does not
        text = redact(str(exc)).split(" Available values:")[0].split(" Available tasks:")[0][:300]
        rule = first_rule(VALUE_RULES, 0, text)
        if rule is None:
            # an answer we do not know: stopping costs a run, failing would cost a healthy prompt
            return refuse(
                Refusal.SERVICE,
                _with_id(f"Hugging Face{via} refused the request: {text}", rid),
                service=SERVICE,
            )
        kind, fix = rule.kind, rule.fix
        if rule is MODEL_RULE and not own_model:
            kind, fix = Refusal.SERVICE, f"check HF_MODEL ({model}) and HF_PROVIDER: {rule.fix}"
        return refuse(
            kind, _with_id(f"Hugging Face{via}: {text.rstrip('.')}", rid) + f". Fix: {fix}", service=SERVICE
        )
    return TransientError(_with_id(f"Hugging Face call failed ({type(exc).__name__})", rid), service=SERVICE)


def _http(exc: Any, *, model: str, own_model: bool, via: str, rid: str) -> PipelineError:
    response = exc.response
    status = int(response.status_code)
    text = server_text(exc)
    said = f": {text}" if text else ""
    if status == 404:
        # the router's and the Hub's "no such model": a row's own model fails that row only
        if own_model:
            return refuse(
                Refusal.PROMPT,
                _with_id(f"model {model} not found (HTTP 404){said}", rid),
                service=SERVICE,
                status=404,
            )
        return refuse(
            Refusal.SERVICE,
            _with_id(f"model {model} not found{via} (HTTP 404){said}: check HF_MODEL and HF_PROVIDER", rid),
            service=SERVICE,
            status=404,
        )
    rule = first_rule(RULES, status, text)
    if rule is None:
        # another 4xx: the provider refused this prompt's input (a size it does not take, a bad parameter)
        return refuse(
            Refusal.PROMPT,
            _with_id(f"Hugging Face{via} rejected the prompt (HTTP {status}){said}", rid),
            service=SERVICE,
            status=status,
            unknown=True,
        )
    if rule.kind is Refusal.PROMPT:
        message = f"the provider{via} {rule.says} (HTTP {status}){said}"
        return refuse(Refusal.PROMPT, _with_id(message, rid), service=SERVICE, status=status)
    if rule.kind is Refusal.TRANSIENT:
        hint = _estimated_time(response) if status == 503 else _rate_limit_wait(response)
        what = "is loading" if status == 503 else ("rate limit" if status == 429 else "server error")
        message = f"Hugging Face{via} {what} (HTTP {status}){said}"
        return refuse(
            Refusal.TRANSIENT, _with_id(message, rid), service=SERVICE, status=status, retry_after=hint
        )
    sep = ": " if rule.says.startswith("the ") else " "
    message = _with_id(f"Hugging Face{sep}{rule.says} (HTTP {status}){via}{said}", rid) + f". Fix: {rule.fix}"
    if rule.credits:
        return CreditsDepleted(message, service=SERVICE, status=status)
    return refuse(rule.kind, message, service=SERVICE, status=status)


def _replicate(answer: dict[str, Any] | None, *, model: str, via: str, rid: str) -> PipelineError:
    body = (answer or {}).get("json")
    body = body if isinstance(body, dict) else {}
    status = str(body.get("status") or "")
    error = redact(str(body.get("error") or ""))[:300]
    if status == "failed" and re.search(CONTENT_WORDS, error, re.I):
        # replicate/cog-flux predict.py: "All generated images contained NSFW content. ..."
        message = _with_id(f"the provider{via} refused the prompt: {error}", rid)
        return refuse(Refusal.PROMPT, message, service=SERVICE)
    if status in ("failed", "canceled"):
        message = _with_id(f"the prediction{via} {status}: {error or 'no reason given'}", rid)
        return TransientError(message, service=SERVICE)
    # "starting"/"processing" after the 60 s of `Prefer: wait`: a cold model (replicate.py's own words)
    message = _with_id(f"the prediction{via} for {model} did not finish in time (cold start)", rid)
    return TransientError(message, service=SERVICE)


def _unexpected_body(exc: BaseException, *, via: str, rid: str) -> PipelineError:
    message = _with_id(
        f"Hugging Face{via} answered 200 with a body that is not what the provider documents "
        f"({type(exc).__name__}: an HTML gateway page or another shape)",
        rid,
    )
    error = TransientError(message, service=SERVICE)
    error.persistent_service_message = (  # type: ignore[attr-defined]
        f"{message}, on every retry: a gateway or endpoint answers instead of the provider. Fix: check "
        "HF_INFERENCE_BASE_URL / HF_PROVIDER, or see https://status.huggingface.co; prompts stay queued"
    )
    return error


def persistent_service_message(exc: BaseException) -> str | None:
    """For a TRANSIENT answer that turns into SERVICE once it persists through the retries."""
    return getattr(exc, "persistent_service_message", None)


def _is_timeout(exc: BaseException) -> bool:
    try:
        import httpx2
    except ImportError:  # pragma: no cover - older huggingface_hub
        return False
    return isinstance(exc, httpx2.TimeoutException)


def _is_transport_error(exc: BaseException) -> bool:
    try:
        import httpx2
    except ImportError:  # pragma: no cover - older huggingface_hub
        return False
    return isinstance(exc, httpx2.TransportError)


def _is_not_an_image(exc: BaseException) -> bool:
    from PIL import UnidentifiedImageError

    return isinstance(exc, UnidentifiedImageError | OSError | SyntaxError) and not _is_transport_error(exc)


def _estimated_time(response: Any) -> float | None:
    try:
        value = response.json().get("estimated_time")
        return float(value) if value is not None else None
    except Exception:
        return None


def _rate_limit_wait(response: Any) -> float | None:
    headers = response.headers
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            return float(retry_after)
        except ValueError:
            pass
    # IETF RateLimit header as Hugging Face sends it: "api";r=0;t=42
    for part in (headers.get("RateLimit") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                return float(value)
            except ValueError:
                return None
    return None
