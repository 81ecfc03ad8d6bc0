"""The faults: the Hugging Face answers a FaultPlan can name (``NAMED_FAULTS``: a provider's refusal, an
unsupported provider listed first, pay-as-you-go not enabled, the retired API's 410), the body and
headers an injected status code gets, and what an injected garbage answer looks like on each route."""

from __future__ import annotations

from typing import Any

from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.huggingface.hub import HuggingFaceHub
from image_pipeline.testing.emulators.huggingface.providers import HuggingFaceProviders
from image_pipeline.testing.emulators.huggingface.wire import (
    CREDITS_MESSAGE,
    INVALID_CREDENTIALS,
    PAYG_MESSAGE,
    _prompt_of,
    _request_id,
    _route_of,
    model_of,
)

# a provider the Hub may list first that huggingface_hub 2.4.0 has no helper for (it was one in
# huggingface.js); the client raises ValueError "Provider 'black-forest-labs' not supported"
UNSUPPORTED_PROVIDER = "black-forest-labs"
# The fault names this emulator understands (base.FaultPlan entries; the chaos harness injects them):
# - provider_refusal: the provider's safety filter refuses the prompt, in the shape of the route it hits
# - unsupported_provider: the Hub lists a provider this client version does not support first
# - payg_402: the router's 402 for a provider that does not take pay-as-you-go yet
# - gone_410: the retired serverless API's 410
NAMED_FAULTS = ("provider_refusal", "unsupported_provider", "payg_402", "gone_410")


class HuggingFaceFaults(HuggingFaceHub, HuggingFaceProviders):
    def error_response(self, status: int, request: Request) -> Response:
        model = model_of(request.path) or "default"
        messages = {
            400: "Bad request",
            401: INVALID_CREDENTIALS,
            402: CREDITS_MESSAGE,
            403: "You don't have access to this model.",
            404: f"Model {model} does not exist",
            429: self.rate_limit_message,
            500: "Internal Server Error",
            502: "Bad Gateway",
            503: f"Model {model} is currently loading",
            504: "Gateway Timeout",
        }
        payload: dict[str, Any] = {"error": messages.get(status, f"HTTP {status}")}
        if status == 503:
            payload["estimated_time"] = self.loading_estimated_time
        headers = self._rate_headers() if status == 429 else {}
        if status == 401:
            headers["X-Error-Message"] = INVALID_CREDENTIALS
        return self._error(status, payload, headers)

    def garbage_response(self, request: Request) -> Response:
        if request.method == "POST" and _route_of(request.path) != "hf-inference":
            # a gateway's HTML page with a 200 where a provider's JSON belongs: the client's json.loads
            # raises JSONDecodeError (real-services.md, "ValueError ... JSONDecodeError when a 200 carries
            # an HTML gateway page")
            page = b"<!DOCTYPE html><html><head><title>Service unavailable</title></head><body></body></html>"
            return Response(200, page, {"Content-Type": "text/html; charset=utf-8"})
        # claims to be a PNG but is not one: the client's PIL.Image.open must fail
        body = b'{"generated_image": "not-really-an-image", "status": "ok"}\n'
        return Response(200, body, {"Content-Type": "image/png", "x-request-id": _request_id()})

    def named_fault(self, fault: str, request: Request) -> Response | None:
        endpoint = self.endpoint_of(request)
        generation = request.method == "POST"
        if fault == "gone_410":
            return self._gone()
        if fault == "payg_402" and generation:
            provider = _route_of(request.path)
            return self._error(402, {"error": PAYG_MESSAGE.format(provider=provider)})
        if fault == "provider_refusal" and generation:
            route = _route_of(request.path)
            if route == "replicate":
                return self._replicate(request, {}, refuse=True)
            return self._refusal(route, _prompt_of(request))
        if fault == "unsupported_provider" and endpoint == "hub_api" and "/api/models/" in request.path:
            return self._hub(request, {UNSUPPORTED_PROVIDER: "live", **self.providers})
        return None
