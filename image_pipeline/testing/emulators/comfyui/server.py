"""``ComfyUIEmulator``: ComfyUI's HTTP API (``server.py`` routes) on the shared loopback server, every
route also under ``/api/``. The worker (``worker.py``) runs one job at a time; validation is
``validate.py``; node specs are ``nodes.py``. Knobs: the installed model files, ``seconds_per_job``, the
planned runtime faults (``fail_next_job``); counters: ``jobs_executed``, ``cached_hits``,
``max_concurrent``, plus the interrupts and queue deletes received.
"""

from __future__ import annotations

import json
import mimetypes
import posixpath
import uuid
from typing import Any

from image_pipeline.testing.emulators.base import EmulatorServer, Request, Response
from image_pipeline.testing.emulators.comfyui.nodes import catalog, object_info
from image_pipeline.testing.emulators.comfyui.validate import validate_prompt
from image_pipeline.testing.emulators.comfyui.worker import Job, Worker

VERSION = "0.3.68"
DEFAULT_FILES = {
    "checkpoints": ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"],
    "diffusion_models": ["flux1-dev.safetensors", "flux1-schnell.safetensors"],
    "text_encoders": ["clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"],
    "vae": ["ae.safetensors", "sdxl_vae.safetensors"],
}


def _not_found() -> Response:
    return Response(404, b"404: Not Found", {"Content-Type": "text/plain; charset=utf-8"})


def _empty(status: int = 200) -> Response:
    return Response(status, b"", {"Content-Type": "application/octet-stream"})


class ComfyUIEmulator(EmulatorServer):
    name = "comfyui"

    def __init__(self, seconds_per_job: float = 0.05, files: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        self.files = {k: list(v) for k, v in (files or DEFAULT_FILES).items()}
        self.worker = Worker(seconds_per_job)
        self.number = 0
        self.prompts: list[dict[str, Any]] = []  # every POST /prompt body, as received
        self.interrupts: list[str | None] = []  # the prompt_id of each POST /interrupt (None = global)
        self.deleted: list[str] = []  # ids asked to be deleted from the queue

    # ------------------------------------------------------------------ lifecycle and knobs
    def start(self) -> ComfyUIEmulator:
        self.worker.start()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self.worker.stop()

    @property
    def seconds_per_job(self) -> float:
        return self.worker.seconds_per_job

    @seconds_per_job.setter
    def seconds_per_job(self, value: float) -> None:
        self.worker.seconds_per_job = value

    def fail_next_job(self, kind: str = "exception", node_class: str | None = None, times: int = 1) -> None:
        """The next executed job(s) fail at run time: ``exception`` (a node raises) or ``oom``."""
        with self.worker.lock:
            self.worker.job_faults.extend([(kind, node_class)] * times)

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return self.worker.jobs

    @property
    def jobs_executed(self) -> int:
        return self.worker.jobs_executed

    @property
    def cached_hits(self) -> int:
        return self.worker.cached_hits

    @property
    def max_concurrent(self) -> int:
        return self.worker.max_concurrent

    def catalog(self) -> dict[str, Any]:
        return catalog(self.files)

    # ------------------------------------------------------------------ routing
    @staticmethod
    def _path(request: Request) -> str:
        return request.path[4:] if request.path.startswith("/api/") else request.path

    def endpoint_of(self, request: Request) -> str:
        path = self._path(request)
        for prefix in ("/history/", "/object_info/", "/models/"):
            if path.startswith(prefix):
                return f"{request.method} {prefix}*"
        return f"{request.method} {path}"

    def error_response(self, status: int, request: Request) -> Response:
        # aiohttp's own pages: ComfyUI has no JSON error shape outside POST /prompt
        return Response(status, f"{status}: injected".encode(), {"Content-Type": "text/plain; charset=utf-8"})

    def route(self, request: Request) -> Response:
        path, method = self._path(request), request.method
        if method == "POST" and path == "/prompt":
            return self._post_prompt(request)
        if method == "GET" and path == "/prompt":
            return Response.json({"exec_info": {"queue_remaining": self.worker.remaining()}})
        if path == "/queue":
            return self._queue(request) if method == "POST" else self._get_queue()
        if method == "POST" and path == "/interrupt":
            return self._interrupt(request)
        if method == "GET" and path == "/history":
            with self.worker.lock:
                return Response.json(json.loads(json.dumps(self.worker.history)))
        if method == "GET" and path.startswith("/history/"):
            prompt_id = path[len("/history/") :]
            with self.worker.lock:
                entry = self.worker.history.get(prompt_id)
                return Response.json({prompt_id: json.loads(json.dumps(entry))} if entry else {})
        if method == "GET" and path == "/view":
            return self._view(request)
        if method == "GET" and path == "/system_stats":
            return Response.json(self._system_stats())
        if method == "GET" and path == "/object_info":
            return Response.json({k: object_info(k, v) for k, v in self.catalog().items()})
        if method == "GET" and path.startswith("/object_info/"):
            name = path[len("/object_info/") :]
            known = self.catalog()
            return Response.json({name: object_info(name, known[name])} if name in known else {})
        if method == "GET" and path == "/models":
            return Response.json(list(self.files))
        if method == "GET" and path.startswith("/models/"):
            folder = path[len("/models/") :]
            return Response.json(self.files[folder]) if folder in self.files else _not_found()
        return _not_found()

    def _post_prompt(self, request: Request) -> Response:
        try:
            data = request.json()
        except ValueError:
            # request.json() raising is unhandled in server.py: aiohttp answers its bare 500
            return Response(
                500,
                b"500 Internal Server Error\n\nServer got itself in trouble",
                {"Content-Type": "text/plain; charset=utf-8"},
            )
        data = data if isinstance(data, dict) else {}
        self.prompts.append(data)
        if "number" in data:
            number = float(data["number"])
        else:
            number = -self.number if data.get("front") else self.number
            self.number += 1
        if "prompt" not in data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return Response.json({"error": error, "node_errors": {}}, 400)
        prompt = data["prompt"]
        prompt_id = str(data.get("prompt_id", uuid.uuid4()))
        ok, error, outputs, node_errors = validate_prompt(prompt, self.catalog())
        if not ok:
            return Response.json({"error": error, "node_errors": node_errors}, 400)
        extra = dict(data.get("extra_data") or {})
        if "client_id" in data:
            extra["client_id"] = data["client_id"]
        self.worker.put(Job(number, prompt_id, prompt, extra, outputs))
        return Response.json({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _get_queue(self) -> Response:
        running, pending = self.worker.snapshot()
        return Response.json({"queue_running": running, "queue_pending": pending})

    def _queue(self, request: Request) -> Response:
        data = request.json() or {}
        if data.get("clear"):
            self.worker.clear()
        for prompt_id in data.get("delete") or []:
            self.deleted.append(str(prompt_id))
            self.worker.delete(str(prompt_id))
        return _empty()

    def _interrupt(self, request: Request) -> Response:
        try:
            data = request.json() or {}
        except ValueError:
            data = {}
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        self.interrupts.append(prompt_id)
        self.worker.interrupt(prompt_id)
        return _empty()

    def _view(self, request: Request) -> Response:
        query = {k: v[0] for k, v in request.query.items()}
        if "filename" not in query:
            return _not_found()
        filename = query["filename"]
        if not filename or filename[0] == "/" or ".." in filename:
            return _empty(400)
        kind = query.get("type", "output")
        if kind not in ("output", "temp", "input"):
            return _empty(400)
        subfolder = query.get("subfolder", "")
        if (
            subfolder.startswith("/")
            or posixpath.normpath(posixpath.join("x", subfolder)).split("/")[0] != "x"
        ):
            return _empty(403)
        with self.worker.lock:
            body = self.worker.files.get((kind, subfolder, posixpath.basename(filename)))
        if body is None:
            return _not_found()
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return Response(
            200, body, {"Content-Type": content_type, "Content-Disposition": f'filename="{filename}"'}
        )

    def _system_stats(self) -> dict[str, Any]:
        return {
            "system": {
                "os": "posix",
                "ram_total": 34359738368,
                "ram_free": 17179869184,
                "comfyui_version": VERSION,
                "python_version": "3.12.3 (emulated)",
                "pytorch_version": "2.7.0+cu128",
                "embedded_python": False,
                "argv": ["main.py", "--listen"],
            },
            "devices": [
                {
                    "name": "cuda:0 NVIDIA GeForce RTX 4090 (emulated) : cudaMallocAsync",
                    "type": "cuda",
                    "index": 0,
                    "vram_total": 25757220864,
                    "vram_free": 24000000000,
                    "torch_vram_total": 0,
                    "torch_vram_free": 0,
                }
            ],
        }
