"""The Hugging Face wire, as data: the hosts a request may be meant for (told apart by its ``Host``
header), the token the emulator accepts, the error texts the real services answer with (sources at each),
and the small readers of a request (its model, host, provider route, JSON body, prompt) the rest of the
package shares. It imports nothing of the package."""

from __future__ import annotations

import time
import uuid
from typing import Any

from image_pipeline.testing.emulators.base import Request

ROUTER_HOST = "router.huggingface.co"  # constants.py INFERENCE_PROXY_TEMPLATE
HUB_HOST = "huggingface.co"  # constants.py ENDPOINT
LEGACY_HOST = "api-inference.huggingface.co"  # constants.py INFERENCE_ENDPOINT, retired
FAL_MEDIA_HOST = "v3.fal.media"  # where fal's {"images": [{"url"}]} point (fal.ai model API pages)
REPLICATE_MEDIA_HOST = "replicate.delivery"  # where a prediction's output URLs point
DOWNLOAD_HOSTS = (FAL_MEDIA_HOST, REPLICATE_MEDIA_HOST)
HOSTS = (ROUTER_HOST, HUB_HOST, LEGACY_HOST, *DOWNLOAD_HOSTS)

# The retired serverless API answers every request so (SreejanPersonal/JARVIS-AGI#9 through huggingface_hub:
# "Client error '410 Gone' ... (Amz CF ID: ...)" then this text; promptfoo/promptfoo#6624).
GONE_MESSAGE = "https://api-inference.huggingface.co is no longer supported. Please use https://router.huggingface.co instead."
# fal-ai/fal#1043: "Client error '402 Payment Required' for url 'https://router.huggingface.co/fal-ai/...'
# (Request ID: ...) ... Pay-as-you go is not enabled for provider fal-ai yet."
PAYG_MESSAGE = "Pay-as-you go is not enabled for provider {provider} yet."
# https://fal.ai/docs/documentation/model-apis/errors.md: 422, header X-Fal-Retryable, body {"detail": [...]}
FAL_CONTENT_MESSAGE = "The content was flagged by a content checker."
# replicate/cog-flux predict.py raises this when every image failed the safety checker; the prediction
# then has status "failed", output null and this error (replicate-python#397)
REPLICATE_NSFW_ERROR = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)

DEFAULT_TOKEN = "hf_emulatorTokenForTestsOnly123456"
CREDITS_MESSAGE = (
    "You have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)
RATE_LIMIT_MESSAGE = "Rate limit reached. Please retry later."
PROVIDER_QUOTA_MESSAGE = (
    "Your account has used all available credits or reached its monthly spending limit. "
    "To continue making API requests, purchase more credits or raise your spending limit."
)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
# the wording of the content filter is not documented; this keeps the shape ({"error": str}, 400)
REJECTED_MESSAGE = "The prompt was rejected by the content policy of the inference provider."


def model_of(path: str) -> str | None:
    """The model id a request path names: ``/models/org/name`` -> ``org/name``; ``/`` -> None."""
    rest = path.strip("/")
    for prefix in ("hf-inference/", "models/"):
        if rest.startswith(prefix):
            rest = rest[len(prefix) :]
    return rest or None


def _request_id() -> str:
    return uuid.uuid4().hex


def _host(request: Request) -> str:
    return request.header("host").split(":")[0].lower()


def _route_of(path: str) -> str:
    """The provider a router path names (``/fal-ai/...``); a bare ``/models/...`` is hf-inference."""
    first = path.strip("/").split("/", 1)[0]
    return first if first in ("fal-ai", "replicate", "together") else "hf-inference"


def _json_body(request: Request) -> Any:
    try:
        return request.json() or {}
    except (UnicodeDecodeError, ValueError):
        return {}


def _prompt_of(request: Request) -> str:
    body = _json_body(request)
    if not isinstance(body, dict):
        return ""
    inner = body.get("input") if isinstance(body.get("input"), dict) else body
    prompt = inner.get("prompt", inner.get("inputs", ""))
    return prompt if isinstance(prompt, str) else ""


def _aspect_size(ratio: str, side: int) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in ratio.split(":", 1))
    except ValueError:
        w, h = 1, 1
    if w >= h:
        return side, max(8, round(side * h / w / 8) * 8)
    return max(8, round(side * w / h / 8) * 8), side


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
