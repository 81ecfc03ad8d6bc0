"""What the emulated service holds and the knobs a test turns: the token, unknown models, credits and
quotas, refused prompts, image size rules and format, a model that is loading, the concurrency cap and
what is in flight, the providers the Hub lists for a model, the result files served for download, and
every call. Also the helpers every route shares (rendering, the size rules, the error shape).
``HuggingFaceState`` is the base of the package's other classes; ``HuggingFaceEmulator`` (server.py) is
them together."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from image_pipeline.testing.emulators.base import EmulatorServer, Response
from image_pipeline.testing.emulators.huggingface.render import render_image
from image_pipeline.testing.emulators.huggingface.wire import DEFAULT_TOKEN, RATE_LIMIT_MESSAGE, _request_id


class HuggingFaceState(EmulatorServer):
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
