"""``A1111Emulator``: the routes of ``/sdapi/v1`` a client of txt2img uses, in the real order of checks
(no ``--api`` -> 404 for every API route; ``--api-auth`` -> 401 before the body is read; then the body's
422; then the queue), and the faults a FaultPlan injects in the server's own shapes."""

from __future__ import annotations

from secrets import compare_digest

from image_pipeline.testing.emulators.a1111.jobs import A1111Jobs
from image_pipeline.testing.emulators.a1111.wire import (
    CLOUDFLARE_524,
    OOM_TEXT,
    credentials_of,
    handled_error,
    not_found,
)
from image_pipeline.testing.emulators.base import Request, Response

API = "/sdapi/v1/"
# The fault names this emulator understands (FaultPlan entries, besides a status code):
# - oom: the 500 a CUDA out-of-memory answers with (Forge #2858)
# - cloudflare_524: a Cloudflare tunnel gave up waiting for the origin (A1111 #9384)
# - no_images: SD.Next's 200 with an empty image list (no model loaded)
# - 422:<field>: FastAPI's validation answer about that body field
NAMED_FAULTS = ("oom", "cloudflare_524", "no_images")


class A1111Emulator(A1111Jobs):
    """Start with ``A1111Emulator(generation_s=1.0).start()`` (or as a context manager); ``base_url``
    is what the backend's ``base_url`` field takes. See ``A1111State`` for the knobs."""

    def endpoint_of(self, request: Request) -> str:
        if request.path.startswith(API):
            return request.path[len(API) :].strip("/") or "root"
        return request.path

    def route(self, request: Request) -> Response:
        if not request.path.startswith(API) or not self.api_enabled:
            return not_found()
        refused = self._check_login(request)
        if refused is not None:
            return refused
        endpoint = self.endpoint_of(request)
        method = request.method
        if endpoint == "txt2img" and method == "POST":
            return self._txt2img(request)
        if endpoint == "sd-models" and method == "GET":
            return Response.json([c.listing() for c in self.checkpoints])
        if endpoint == "options" and method == "GET":
            return Response.json(self._options())
        if endpoint == "progress" and method == "GET":
            return Response.json(self._progress())
        if endpoint == "interrupt" and method == "POST":
            self._interrupt()
            return Response.json({})
        if endpoint == "samplers" and method == "GET":
            names = ("DPM++ 2M", "DPM++ SDE", "Euler a", "Euler", "DDIM")
            return Response.json([{"name": n, "aliases": [], "options": {}} for n in names])
        known = ("txt2img", "sd-models", "options", "progress", "interrupt", "samplers")
        if endpoint in known:
            return Response.json({"detail": "Method Not Allowed"}, 405)
        return not_found()

    def _check_login(self, request: Request) -> Response | None:
        if self.credentials is None:
            return None
        sent = credentials_of(request)
        if sent is None:
            if self.flavour == "sdnext":
                return handled_error(401, "HTTPException", "Unauthorized")
            # FastAPI's HTTPBasic, answered through the webui's handler for HTTPException
            return handled_error(401, "HTTPException", "Not authenticated")
        user, password = sent
        expected = self.credentials.get(user)
        if expected is None or not compare_digest(password, expected):
            detail = "Unauthorized" if self.flavour == "sdnext" else "Incorrect username or password"
            return handled_error(401, "HTTPException", detail)
        return None

    def _options(self) -> dict[str, object]:
        loaded = self.loaded
        return {
            "sd_model_checkpoint": loaded.title if loaded else None,
            "sd_checkpoint_hash": loaded.sha256 if loaded else None,
            "samples_format": "png",
            "sd_checkpoints_limit": 1,
            "CLIP_stop_at_last_layers": 1,
        }

    # ----------------------------------------------------------------- faults
    def error_response(self, status: int, request: Request) -> Response:
        if status == 500:
            return handled_error(500, "RuntimeError", "", "Expected all tensors to be on the same device")
        if status == 422:
            item = {
                "loc": ["body", "steps"],
                "msg": "value is not a valid integer",
                "type": "type_error.integer",
            }
            return Response.json({"detail": [item]}, 422)
        if status == 404:
            return not_found()
        if status in (502, 503, 504):
            page = f"<html><body><h1>{status}</h1>bad gateway</body></html>".encode()
            return Response(status, page, {"Content-Type": "text/html"})
        return handled_error(status, "HTTPException", f"HTTP {status}")

    def garbage_response(self, request: Request) -> Response:
        page = b"<!DOCTYPE html><html><head><title>Stable Diffusion</title></head><body></body></html>"
        return Response(200, page, {"Content-Type": "text/html; charset=utf-8"})

    def named_fault(self, fault: str, request: Request) -> Response | None:
        if fault == "oom":
            return handled_error(500, "OutOfMemoryError", "", OOM_TEXT)
        if fault == "cloudflare_524":
            return Response(524, CLOUDFLARE_524, {"Content-Type": "text/html", "Server": "cloudflare"})
        if fault.startswith("422:"):
            # FastAPI's answer for a field of the body that does not fit its type ("422:width")
            field = fault.split(":", 1)[1]
            item = {
                "loc": ["body", field],
                "msg": "value is not a valid integer",
                "type": "type_error.integer",
            }
            return Response.json({"detail": [item]}, 422)
        if fault == "no_images":
            return Response.json({"images": [], "parameters": {}, "info": ""})
        return None
