"""Loopback emulator of a Hugging Face text-to-image endpoint (hf-inference style), faithful on the wire.

``InferenceClient(model="<base_url>/models/<org>/<name>")`` POSTs ``{"inputs": ..., "parameters": {...}}``
straight to that URL (contracts section 3.2); this server answers with real image bytes, or with the
``{"error": ...}`` bodies and headers the client turns into ``HfHubHTTPError`` / ``BadRequestError``.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw

from image_pipeline.emulators.base import EmulatorServer, Fault, Request, Response

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

_GRADIENT = Image.linear_gradient("L")  # 256x256, built once: resizing it is far cheaper than drawing


def model_of(path: str) -> str | None:
    """The model id a request path names: ``/models/org/name`` -> ``org/name``; ``/`` -> None."""
    rest = path.strip("/")
    for prefix in ("hf-inference/", "models/"):
        if rest.startswith(prefix):
            rest = rest[len(prefix) :]
    return rest or None


def render_image(
    prompt: str, seed: int | None, width: int, height: int, fmt: str = "png", blank: bool = False
) -> bytes:
    """A deterministic picture for (prompt, seed): a coloured gradient with a few shapes on it."""
    if blank:
        img = Image.new("RGB", (width, height), (0, 0, 0))
    else:
        digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
        rng = random.Random(digest)
        base = _GRADIENT.resize((width, height))
        channels = [
            base,
            base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            Image.new("L", (width, height), rng.randrange(40, 220)),
        ]
        rng.shuffle(channels)
        img = Image.merge("RGB", channels)
        draw = ImageDraw.Draw(img)
        for _ in range(5):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            x1 = min(width, x0 + rng.randrange(max(2, width // 8), max(3, width // 2)))
            y1 = min(height, y0 + rng.randrange(max(2, height // 8), max(3, height // 2)))
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            if rng.random() < 0.5:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            else:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
    out = io.BytesIO()
    if fmt == "jpeg":
        img.save(out, format="JPEG", quality=85)
    else:
        # level 1: 1024x1024 encodes in a few ms; the default level costs several times that
        img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class HuggingFaceEmulator(EmulatorServer):
    name = "huggingface"

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        max_concurrent: int | None = None,
        default_size: tuple[int, int] = (512, 512),
    ) -> None:
        super().__init__()
        self.token = token
        self.max_concurrent = max_concurrent
        self.default_size = default_size
        self.unknown_models: set[str] = set()
        self.credits_depleted = False
        # a routed provider's own account limit (money or monthly quota), answered as 429 with no
        # RateLimit header: waiting does not help
        self.provider_quota_exhausted = False
        self.rejected_prompts: set[str] = set()
        self.reject_if: Callable[[str], bool] | None = None
        self.blank = False
        self.image_format = "png"
        # time spent "generating" inside the request, so concurrency can actually overlap in tests
        self.render_delay_s = 0.0
        # diffusers pipelines refuse sizes that are not multiples of 8; turn off to accept anything
        self.require_multiple_of_8 = True
        self.max_side = 2048
        self.loading_estimated_time = 20.0  # what an injected 503 reports
        # The Hub API side (GET /api/whoami-v2, GET /api/models/<id>) that a preflight asks: which
        # providers serve a model for text-to-image, and what the token may do.
        self.providers: dict[str, str] = {"hf-inference": "live", "fal-ai": "live"}
        self.model_tasks: dict[str, str] = {}
        self.token_role = "fineGrained"
        self.token_permissions: list[str] = ["inference.serverless.write"]
        self.calls: list[dict[str, Any]] = []  # every request: generations and a preflight's GETs
        self.max_in_flight_seen = 0
        self._in_flight = 0  # requests anywhere in dispatch (what the client is doing)
        self._active = 0  # requests admitted past the concurrency cap (what the "GPU" is doing)
        self._flight_lock = threading.Lock()
        self._loading_until = 0.0

    # ----------------------------------------------------------------- knobs
    @property
    def loading_for_s(self) -> float:
        """Seconds the model keeps answering 503 "currently loading"; setting it starts the clock."""
        return max(0.0, self._loading_until - time.monotonic())

    @loading_for_s.setter
    def loading_for_s(self, seconds: float) -> None:
        self._loading_until = time.monotonic() + seconds

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ----------------------------------------------------------------- base hooks
    def endpoint_of(self, request: Request) -> str:
        if request.method == "GET":
            # what a preflight asks: the Hub API, or the endpoint URL itself (no generation)
            return "hub_api" if request.path.startswith("/api/") else "probe"
        return "text_to_image"

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

    def error_response(self, status: int, request: Request) -> Response:
        model = model_of(request.path) or "default"
        messages = {
            400: "Bad request",
            401: INVALID_CREDENTIALS,
            402: CREDITS_MESSAGE,
            403: "You don't have access to this model.",
            404: f"Model {model} does not exist",
            429: RATE_LIMIT_MESSAGE,
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
        # claims to be a PNG but is not one: the client's PIL.Image.open must fail
        body = b'{"generated_image": "not-really-an-image", "status": "ok"}\n'
        return Response(200, body, {"Content-Type": "image/png", "x-request-id": _request_id()})

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
        if model is not None and model in self.unknown_models:
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
        try:
            return self._generate(request, call)
        finally:
            with self._flight_lock:
                self._active -= 1

    def _generate(self, request: Request, call: dict[str, Any]) -> Response:
        try:
            body = request.json()
        except (UnicodeDecodeError, ValueError):
            return self._error(400, {"error": "Invalid JSON in request body"})
        call["body"] = body
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            return self._error(400, {"error": "Input should be a valid string: field `inputs` is required"})
        prompt: str = body["inputs"]
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            return self._error(400, {"error": "`parameters` must be an object"})
        width, height = params.get("width", self.default_size[0]), params.get("height", self.default_size[1])
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            return self._error(400, {"error": "`width` and `height` must be positive integers"})
        if width > self.max_side or height > self.max_side:
            return self._error(400, {"error": f"`height` and `width` must be at most {self.max_side}"})
        if self.require_multiple_of_8 and (width % 8 or height % 8):
            # the message diffusers raises from check_inputs, passed through by the endpoint
            return self._error(
                400,
                {"error": f"`height` and `width` have to be divisible by 8 but are {height} and {width}."},
            )
        if self._is_rejected(prompt):
            return self._error(400, {"error": REJECTED_MESSAGE})

        if self.render_delay_s > 0:
            time.sleep(self.render_delay_s)
        seed = params.get("seed")
        fmt = "jpeg" if self.image_format == "jpeg" else "png"
        image = render_image(prompt, seed if isinstance(seed, int) else None, width, height, fmt, self.blank)
        return Response(200, image, {"Content-Type": f"image/{fmt}", "x-request-id": _request_id()})

    # ----------------------------------------------------------------- Hub API
    def _authorized(self, request: Request) -> bool:
        scheme, _, credential = request.header("authorization").partition(" ")
        return scheme.lower() == "bearer" and credential.strip() == self.token

    def _hub(self, request: Request) -> Response:
        path = request.path.split("?")[0]
        if path == "/api/whoami-v2":
            if not self._authorized(request):
                return self._error(
                    401, {"error": INVALID_CREDENTIALS}, {"X-Error-Message": INVALID_CREDENTIALS}
                )
            token: dict[str, Any] = {"displayName": "image-pipeline", "role": self.token_role}
            if self.token_role == "fineGrained":
                token["fineGrained"] = {
                    "canReadGatedRepos": True,
                    "global": list(self.token_permissions),
                    "scoped": [],
                }
            return Response.json(
                {
                    "type": "user",
                    "id": "65f0c0ffee0123456789abcd",
                    "name": "pipeline-user",
                    "fullname": "Pipeline User",
                    "canPay": True,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": token},
                }
            )
        if path.startswith("/api/models/"):
            repo = path[len("/api/models/") :].strip("/")
            if repo in self.unknown_models or repo.count("/") != 1:
                headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
                return self._error(
                    404 if self._authorized(request) else 401, {"error": "Repository not found"}, headers
                )
            task = self.model_tasks.get(repo, "text-to-image")
            mapping = {
                provider: {"status": status, "providerId": repo, "task": task}
                for provider, status in self.providers.items()
            }
            return Response.json(
                {
                    "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                    "id": repo,
                    "pipeline_tag": task,
                    "inferenceProviderMapping": mapping,
                }
            )
        return self._error(404, {"error": "Not Found"})

    # ----------------------------------------------------------------- helpers
    def _is_rejected(self, prompt: str) -> bool:
        lowered = prompt.lower()
        if any(bad.lower() in lowered for bad in self.rejected_prompts):
            return True
        return bool(self.reject_if and self.reject_if(prompt))

    def _rate_headers(self) -> dict[str, str]:
        # the IETF draft headers huggingface_hub parses into "Retry after N seconds (0/q ... w s window)"
        quota = self.max_concurrent or 1
        return {"RateLimit": '"api";r=0;t=1', "RateLimit-Policy": f'"fixed window";"api";q={quota};w=1'}

    @staticmethod
    def _error(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
        return Response.json(payload, status, {"x-request-id": _request_id(), **(headers or {})})


def _request_id() -> str:
    return uuid.uuid4().hex
