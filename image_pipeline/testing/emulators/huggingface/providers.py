"""The generation routes: hf-inference's raw ``{"inputs", "parameters"}`` POST that answers image bytes,
and the provider routes (fal-ai, replicate, together), each taking the body its huggingface_hub helper
builds and answering what that helper parses, with each provider's own refusal shape."""

from __future__ import annotations

import base64
import time
from typing import Any

from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.huggingface.render import render_image
from image_pipeline.testing.emulators.huggingface.state import HuggingFaceState
from image_pipeline.testing.emulators.huggingface.wire import (
    FAL_CONTENT_MESSAGE,
    FAL_MEDIA_HOST,
    REJECTED_MESSAGE,
    REPLICATE_MEDIA_HOST,
    REPLICATE_NSFW_ERROR,
    _aspect_size,
    _json_body,
    _now_iso,
    _request_id,
)


class HuggingFaceProviders(HuggingFaceState):
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
