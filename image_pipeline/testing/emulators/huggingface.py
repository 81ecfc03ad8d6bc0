"""Loopback emulator of Hugging Face text-to-image inference, faithful on the wire.

Two ways in, as with the real service:
- an endpoint URL: ``InferenceClient(model="<base_url>/models/<org>/<name>")`` POSTs ``{"inputs": ...,
  "parameters": {...}}`` straight to that URL (contracts section 3.2);
- provider routing, the default (``HF_TOKEN`` set, provider ``auto``): the client asks the Hub
  ``GET https://huggingface.co/api/models/<id>?expand=inferenceProviderMapping`` and POSTs to the hard-coded
  ``https://router.huggingface.co/<provider>/...`` with that provider's body (huggingface_hub 2.4.0
  ``inference/_providers/*.py``). Those hosts cannot be changed by an environment variable, so a test gives
  the client a transport (``LoopbackTransport``) that sends them here; this server tells the hosts apart by
  the ``Host`` header the client set: ``router.huggingface.co``, ``huggingface.co``, the result download
  hosts of fal (``v3.fal.media``) and replicate (``replicate.delivery``), and the retired
  ``api-inference.huggingface.co``.
Answers are real image bytes, provider JSON, or the error bodies and headers the client turns into
``HfHubHTTPError`` / ``BadRequestError`` / ``ValueError`` / ``TimeoutError``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw

from image_pipeline.testing.emulators.base import EmulatorServer, Fault, Request, Response

ROUTER_HOST = "router.huggingface.co"  # constants.py INFERENCE_PROXY_TEMPLATE
HUB_HOST = "huggingface.co"  # constants.py ENDPOINT
LEGACY_HOST = "api-inference.huggingface.co"  # constants.py INFERENCE_ENDPOINT, retired
FAL_MEDIA_HOST = "v3.fal.media"  # where fal's {"images": [{"url"}]} point (fal.ai model API pages)
REPLICATE_MEDIA_HOST = "replicate.delivery"  # where a prediction's output URLs point
DOWNLOAD_HOSTS = (FAL_MEDIA_HOST, REPLICATE_MEDIA_HOST)
HOSTS = (ROUTER_HOST, HUB_HOST, LEGACY_HOST, *DOWNLOAD_HOSTS)

# a provider the Hub may list first that huggingface_hub 2.4.0 has no helper for (it was one in
# huggingface.js); the client raises ValueError "Provider 'black-forest-labs' not supported"
UNSUPPORTED_PROVIDER = "black-forest-labs"
# The fault names this emulator understands (base.FaultPlan entries; the chaos harness injects them):
# - provider_refusal: the provider's safety filter refuses the prompt, in the shape of the route it hits
# - unsupported_provider: the Hub lists a provider this client version does not support first
# - payg_402: the router's 402 for a provider that does not take pay-as-you-go yet
# - gone_410: the retired serverless API's 410
NAMED_FAULTS = ("provider_refusal", "unsupported_provider", "payg_402", "gone_410")

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
    elif fmt == "webp":
        img.save(out, format="WEBP", quality=80, method=0)  # replicate's default output_format
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
        # what an injected 429 says; a provider's per-minute limit may word it "... quota per minute"
        # (real-services.md), which is a rate limit, not an account out of money
        self.rate_limit_message = RATE_LIMIT_MESSAGE
        # the long side of a replicate flux image at aspect ratio 1:1 ("megapixels": "1" gives 1024)
        self.replicate_flux_side = 1024
        # The Hub API side (GET /api/whoami-v2, GET /api/models/<id>) that a preflight asks: which
        # providers serve a model for text-to-image, and what the token may do.
        # In the order the Hub gives them (the user's order): the client routes "auto" to the first.
        self.providers: dict[str, str] = {"hf-inference": "live", "fal-ai": "live"}
        # the model's id on each provider's side ("providerId"); defaults in _provider_id
        self.provider_ids: dict[str, str] = {}
        # result files the fal and replicate answers point at, by path on their download host
        self.files: dict[str, tuple[bytes, str]] = {}
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

    # ----------------------------------------------------------------- provider routes
    # Each route takes the body its provider helper in huggingface_hub 2.4.0 builds and answers what the
    # helper's get_response parses. Validation (token, credits, loading, concurrency) ran in _route.

    def _fal(self, request: Request, call: dict[str, Any]) -> Response:
        """``POST /fal-ai/<providerId>`` (fal_ai.py FalAITextToImageTask): ``{"prompt", "negative_prompt",
        "seed", "image_size": {"width", "height"}}``; answers ``{"images": [{"url", ...}]}`` and the client
        GETs the url, with no auth, no timeout and no status check (https://fal.ai/models/fal-ai/fast-sdxl/api
        for the output schema)."""
        body = _json_body(request)
        call["body"] = body
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            detail = [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]
            return self._error(422, {"detail": detail})
        size = body.get("image_size") or {}
        width = size.get("width", self.default_size[0]) if isinstance(size, dict) else self.default_size[0]
        height = size.get("height", self.default_size[1]) if isinstance(size, dict) else self.default_size[1]
        problem = self._size_problem(width, height)
        if problem:
            detail = [{"loc": ["body", "image_size"], "msg": problem, "type": "value_error"}]
            return self._error(422, {"detail": detail})
        if self._is_rejected(prompt):
            return self._refusal("fal-ai", prompt)
        seed = body.get("seed") if isinstance(body.get("seed"), int) else None
        image = self._render(prompt, seed, width, height, "jpeg")
        path = f"/files/{_request_id()[:8]}/{_request_id()}.jpeg"
        self._store(path, image, "image/jpeg")
        answer = {
            "images": [
                {
                    "url": f"https://{FAL_MEDIA_HOST}{path}",
                    "width": width,
                    "height": height,
                    "content_type": "image/jpeg",
                }
            ],
            "timings": {"inference": round(self.render_delay_s, 3)},
            "seed": seed if seed is not None else 0,
            "has_nsfw_concepts": [False],
            "prompt": prompt,
        }
        return Response.json(answer, 200, {"x-request-id": _request_id()})

    def _replicate(self, request: Request, call: dict[str, Any], refuse: bool = False) -> Response:
        """``POST /replicate/v1/models/<owner>/<name>/predictions`` (or ``/v1/predictions`` with a
        ``version``) with ``Prefer: wait`` (replicate.py ReplicateTask): ``{"input": {"prompt", ...}}``;
        answers 201 with the prediction (https://replicate.com/docs/reference/http#create-a-prediction).
        ``output`` is a list of URLs; a prediction that failed has ``status: failed``, ``output: null`` and
        an ``error``, which the client turns into a builtin TimeoutError."""
        body = _json_body(request)
        call["body"] = body
        data = body.get("input") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            return self._error(
                422,
                {"title": "Input validation failed", "detail": "- input: prompt is required", "status": 422},
            )
        path = request.path
        model = path.split("/v1/models/", 1)[-1].rsplit("/predictions", 1)[0] if "/v1/models/" in path else ""
        version = str(body.get("version") or "")
        prompt: str = data["prompt"]
        if "flux" in model:
            # black-forest-labs/flux-* take aspect_ratio (and megapixels), not width and height: the image
            # has the size the ratio gives, whatever was asked (replicate.com/black-forest-labs/flux-schnell)
            width, height = _aspect_size(str(data.get("aspect_ratio") or "1:1"), self.replicate_flux_side)
        else:
            width = data.get("width", self.default_size[0])
            height = data.get("height", self.default_size[1])
            problem = self._size_problem(width, height)
            if problem:
                return self._error(
                    422, {"title": "Input validation failed", "detail": problem, "status": 422}
                )
        prediction_id = _request_id()[:26]
        prediction: dict[str, Any] = {
            "id": prediction_id,
            "model": model or "stability-ai/sdxl",
            "version": version or "hidden",
            "input": data,
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "succeeded",
            "created_at": _now_iso(),
            "urls": {
                "cancel": f"https://api.replicate.com/v1/predictions/{prediction_id}/cancel",
                "get": f"https://api.replicate.com/v1/predictions/{prediction_id}",
                "stream": f"https://stream.replicate.com/v1/files/{prediction_id}",
                "web": f"https://replicate.com/p/{prediction_id}",
            },
        }
        if refuse or self._is_rejected(prompt):
            prediction.update(status="failed", error=REPLICATE_NSFW_ERROR, logs="NSFW content detected")
            return Response.json(prediction, 201, {"x-request-id": _request_id()})
        seed = data.get("seed") if isinstance(data.get("seed"), int) else None
        image = self._render(prompt, seed, width, height, "webp")
        path = f"/xezq/{prediction_id}/out-0.webp"
        self._store(path, image, "image/webp")
        prediction["output"] = [f"https://{REPLICATE_MEDIA_HOST}{path}"]
        return Response.json(prediction, 201, {"x-request-id": _request_id()})

    def _together(self, request: Request, call: dict[str, Any]) -> Response:
        """``POST /together/v1/images/generations`` (together.py TogetherTextToImageTask): ``{"prompt",
        "response_format": "base64", "model", "width", "height", "seed", ...}``; answers
        ``{"data": [{"b64_json"}]}`` (https://docs.together.ai/reference/post-images-generations; errors
        in the OpenAI shape {"error": {"message", "type"}}, https://docs.together.ai/docs/error-codes)."""
        body = _json_body(request)
        call["body"] = body
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            return self._error(
                400, {"error": {"message": "prompt is required", "type": "invalid_request_error"}}
            )
        width, height = body.get("width", self.default_size[0]), body.get("height", self.default_size[1])
        problem = self._size_problem(width, height)
        if problem:
            return self._error(400, {"error": {"message": problem, "type": "invalid_request_error"}})
        if self._is_rejected(prompt):
            return self._refusal("together", prompt)
        seed = body.get("seed") if isinstance(body.get("seed"), int) else None
        image = self._render(prompt, seed, width, height, "jpeg")
        answer = {
            "id": _request_id(),
            "model": body.get("model"),
            "object": "list",
            "data": [{"index": 0, "b64_json": base64.b64encode(image).decode("ascii"), "type": "b64_json"}],
        }
        return Response.json(answer, 200, {"x-request-id": _request_id()})

    def _download(self, request: Request) -> Response:
        stored = self.files.get(request.path)
        if stored is None:
            # what a storage bucket answers for a missing key; the client does not check the status
            return Response(
                404, b"<Error><Code>NoSuchKey</Code></Error>", {"Content-Type": "application/xml"}
            )
        body, content_type = stored
        return Response(200, body, {"Content-Type": content_type})

    def _gone(self) -> Response:
        return Response.json({"error": GONE_MESSAGE}, 410, {"x-amz-cf-id": _request_id()})

    def _refusal(self, route: str, prompt: str) -> Response:
        """The provider's safety filter refusing ``prompt``, in that route's shape."""
        if route == "fal-ai":
            detail = [
                {
                    "loc": ["body", "prompt"],
                    "msg": FAL_CONTENT_MESSAGE,
                    "type": "content_policy_violation",
                    "url": "https://docs.fal.ai/errors#content_policy_violation",
                    "input": prompt,
                }
            ]
            return self._error(422, {"detail": detail}, {"X-Fal-Retryable": "false"})
        if route == "together":
            return self._error(400, {"error": {"message": REJECTED_MESSAGE, "type": "invalid_request_error"}})
        return self._error(400, {"error": REJECTED_MESSAGE})

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

    # ----------------------------------------------------------------- rendering and files
    def _render(self, prompt: str, seed: int | None, width: int, height: int, fmt: str) -> bytes:
        if self.render_delay_s > 0:
            time.sleep(self.render_delay_s)
        return render_image(prompt, seed, width, height, fmt, self.blank)

    def _store(self, path: str, body: bytes, content_type: str) -> None:
        with self._lock:
            self.files[path] = (body, content_type)

    def _size_problem(self, width: Any, height: Any) -> str | None:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            return "`width` and `height` must be positive integers"
        if width > self.max_side or height > self.max_side:
            return f"`height` and `width` must be at most {self.max_side}"
        return None

    def _provider_id(self, provider: str, repo: str) -> str:
        if provider in self.provider_ids:
            return self.provider_ids[provider]
        # what each provider calls an SDXL-like model (the ids on the model pages' "Inference Providers")
        return {
            "fal-ai": "fal-ai/fast-sdxl",
            "replicate": "stability-ai/sdxl",
            "together": repo,
        }.get(provider, repo)

    # ----------------------------------------------------------------- Hub API
    def _authorized(self, request: Request) -> bool:
        scheme, _, credential = request.header("authorization").partition(" ")
        return scheme.lower() == "bearer" and credential.strip() == self.token

    def _hub(self, request: Request, providers: dict[str, str] | None = None) -> Response:
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
            # a dict keyed by provider, in the user's order, as model_info gets it (hf_api.py ModelInfo)
            mapping = {
                provider: {"status": status, "providerId": self._provider_id(provider, repo), "task": task}
                for provider, status in (providers if providers is not None else self.providers).items()
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
