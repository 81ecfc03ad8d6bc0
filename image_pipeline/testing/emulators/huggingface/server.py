"""``HuggingFaceEmulator``: the server the tests start. It tells the hosts apart, checks the token,
credits, quota, loading and the concurrency cap in the real order, records every call, and hands a
generation to its route; its behaviour comes from the package's other classes, put together here.
``LoopbackTransport`` sends the client's requests for the real hosts to it."""

from __future__ import annotations

from typing import Any

from image_pipeline.testing.emulators.base import Fault, Request, Response
from image_pipeline.testing.emulators.huggingface.faults import HuggingFaceFaults
from image_pipeline.testing.emulators.huggingface.wire import (
    CREDITS_MESSAGE,
    DOWNLOAD_HOSTS,
    HOSTS,
    INVALID_CREDENTIALS,
    LEGACY_HOST,
    PROVIDER_QUOTA_MESSAGE,
    RATE_LIMIT_MESSAGE,
    _host,
    _route_of,
    model_of,
)


class HuggingFaceEmulator(HuggingFaceFaults):
    name = "huggingface"

    # ----------------------------------------------------------------- base hooks
    def endpoint_of(self, request: Request) -> str:
        if request.method == "GET":
            if _host(request) in DOWNLOAD_HOSTS or request.path.startswith("/files/"):
                return "download"
            # what a preflight asks: the Hub API, or the endpoint URL itself (no generation)
            return "hub_api" if request.path.startswith("/api/") else "probe"
        route = _route_of(request.path)
        return "text_to_image" if route == "hf-inference" else route.replace("-", "_")

    def _dispatch(self, request: Request) -> tuple[Response | None, Fault | None, str]:
        # counted around the whole dispatch so injected latency also shows up as concurrency
        with self._flight_lock:
            self._in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self._in_flight)
        try:
            return super()._dispatch(request)
        finally:
            with self._flight_lock:
                self._in_flight -= 1

    # ----------------------------------------------------------------- routing
    def route(self, request: Request) -> Response:
        model = model_of(request.path)
        call: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "model": model,
            "body": None,
            "authorized": False,
        }
        response = self._route(request, model, call)
        call["status"] = response.status
        with self._lock:
            self.calls.append(call)
        return response

    def _route(self, request: Request, model: str | None, call: dict[str, Any]) -> Response:
        if _host(request) == LEGACY_HOST:
            return self._gone()
        if request.method == "GET" and self.endpoint_of(request) == "download":
            return self._download(request)
        if request.method == "GET" and request.path.split("?")[0].startswith("/api/"):
            return self._hub(request)
        if request.method != "POST":
            # the gateway checks the token before it looks at the method, as the hosted endpoints do
            if not self._authorized(request):
                return self._error(
                    401, {"error": INVALID_CREDENTIALS}, {"X-Error-Message": INVALID_CREDENTIALS}
                )
            if self.credits_depleted:
                return self._error(402, {"error": CREDITS_MESSAGE})
            return self._error(405, {"error": "Method Not Allowed"})
        scheme, _, credential = request.header("authorization").partition(" ")
        if scheme.lower() != "bearer" or credential.strip() != self.token:
            return self._error(401, {"error": INVALID_CREDENTIALS}, {"X-Error-Message": INVALID_CREDENTIALS})
        call["authorized"] = True
        route = _route_of(request.path)
        call["provider"] = route
        if route != "hf-inference":
            call["model"] = request.path.strip("/").split("/", 1)[-1]
        if route == "hf-inference" and model is not None and model in self.unknown_models:
            return self._error(404, {"error": f"Model {model} does not exist"})
        if self.credits_depleted:
            return self._error(402, {"error": CREDITS_MESSAGE})
        if self.provider_quota_exhausted:
            return self._error(429, {"error": PROVIDER_QUOTA_MESSAGE})
        remaining = self.loading_for_s
        if remaining > 0:
            payload = {
                "error": f"Model {model or 'default'} is currently loading",
                "estimated_time": round(remaining, 3),
            }
            return self._error(503, payload)
        with self._flight_lock:
            # check-and-take in one step, so a burst of N+k requests admits exactly N
            if self.max_concurrent is not None and self._active >= self.max_concurrent:
                return self._error(429, {"error": RATE_LIMIT_MESSAGE}, self._rate_headers())
            self._active += 1
        handler = {
            "fal-ai": self._fal,
            "replicate": self._replicate,
            "together": self._together,
        }.get(route, self._generate)
        try:
            return handler(request, call)
        finally:
            with self._flight_lock:
                self._active -= 1


class LoopbackTransport:
    """An httpx2 transport for tests: requests to the Hugging Face hosts (router, Hub, result downloads,
    the retired API) reach this emulator instead, with their ``Host`` header as the client set it; any
    other host is refused, so a test never reaches the internet. Installed by a test under the product's
    client (``install_http_client(transport=...)``)."""

    def __new__(cls, emulator: HuggingFaceEmulator) -> Any:
        import httpx2

        class _Loopback(httpx2.BaseTransport):
            def __init__(self) -> None:
                self.inner = httpx2.HTTPTransport()

            def handle_request(self, request: httpx2.Request) -> httpx2.Response:
                host = request.url.host
                if host in HOSTS:
                    request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=emulator.port)
                elif host not in ("127.0.0.1", "localhost"):
                    raise httpx2.ConnectError(f"tests do not reach {host}", request=request)
                return self.inner.handle_request(request)

            def close(self) -> None:
                self.inner.close()

        return _Loopback()
