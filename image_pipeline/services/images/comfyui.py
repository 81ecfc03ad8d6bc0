"""The ``comfyui`` backend: a user's API-format workflow run on a ComfyUI server over its HTTP API.

One image = POST ``/prompt`` ``{"prompt": graph, "client_id", "prompt_id"}`` (the id is ours, so a lost
answer never leaves us without a handle), then GET ``/history/{id}`` every ``poll_interval_s`` until the
entry appears (``{}`` until the job is done), then GET ``/view?filename=&subfolder=&type=`` for the output
node's first image. The websocket is not used: users report it stalling on long runs, and ComfyUI's own
example and maintainers point to polling ``/history``. Past ``timeout_s`` (queue wait included) the job
is interrupted (POST ``/interrupt`` with its id, so another client's job is left alone) and deleted from
the queue (POST ``/queue`` ``{"delete": [id]}``), and the attempt is a TransientError.

The seed is always ours (ComfyUI has no "random": ``control_after_generate`` is a frontend widget), kept
within 0..2**31 unless the row gives one, so it is known and recorded; a new seed per image also keeps
ComfyUI's cache from answering an identical graph with the previous file. Where the values go in the
graph: ``comfy_workflow``; what each answer means: ``comfy_answers``. ComfyUI has no authentication; a
password in ``base_url`` (a reverse proxy's) is registered as a secret and never shown.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import requests
from PIL import Image
from pydantic import Field, PrivateAttr

from image_pipeline.domain.checks import Check
from image_pipeline.domain.errors import PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.redact import register_secret
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images import comfy_answers as answers
from image_pipeline.services.images import comfy_workflow as wf
from image_pipeline.services.images.comfy_doctor import preflight_checks
from image_pipeline.services.images.interface import PROVIDER_INFO, ImageGenerator

log = logging.getLogger("image_pipeline.images.comfyui")

SERVICE = answers.SERVICE
CONNECT_TIMEOUT_S = 5.0
POLL_FAILURES_TOLERATED = 3  # consecutive failed polls (a blip) before the job is given up


class ComfyUIGenerator(ImageGenerator):
    """A ComfyUI server running the configured API-format workflow with each row's values injected."""

    kind: ClassVar[str] = "comfyui"

    base_url: str = Field(default="http://127.0.0.1:8188", description="ComfyUI server URL.")
    workflow: str = Field(
        default="sdxl",
        description="API-format workflow: a path to a JSON file made with Export (API), or a shipped "
        "example: sdxl, flux.",
    )
    model: str = Field(
        default="",
        description="Model file (ckpt_name / unet_name) used when a row names none; empty = the "
        "workflow's own.",
    )
    poll_interval_s: float = Field(default=0.5, description="Seconds between two GET /history polls.")
    timeout_s: float = Field(
        default=600.0, description="Seconds one image may take, waiting in ComfyUI's queue included."
    )
    request_timeout_s: float = Field(default=30.0, description="Read timeout of each HTTP request.")

    _session: requests.Session | None = PrivateAttr(default=None)
    _loaded: tuple[wf.Graph, wf.Mapping] | None = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _client_id: str = PrivateAttr(default_factory=lambda: uuid.uuid4().hex)

    # ------------------------------------------------------------------ the interface
    def describe(self) -> str:
        return f"ComfyUI at {self._public_url()} (workflow {self.workflow})"

    def _provider(self) -> str:
        return "comfyui"

    def _served_model(self, request: GenerationRequest) -> str:
        graph, mapping = self._workflow()
        if request.model and mapping.checkpoint:
            return request.model
        return wf.checkpoint_in(graph, mapping) or f"workflow {self.workflow}"

    def _generate_once(self, request: GenerationRequest, seed: int | None) -> Image.Image:
        graph, mapping = self._workflow()
        if seed is None:  # the interface always picks one; keep ComfyUI's cache from ever answering
            seed = self._pick_seed(request) or 0
        row_model = bool(request.model) and request.model != self.model
        if row_model and not mapping.checkpoint:
            raise PromptRejected(
                f"the row names the model {request.model!r} but the workflow has no model loader rows may "
                "change: clear the row's model, or title the loader 'checkpoint'",
                service=SERVICE,
            )
        if request.negative_prompt and not mapping.negative:
            log.warning("the workflow %s has no negative prompt node: the row's is ignored", self.workflow)
        values = wf.Values(
            request.prompt,
            request.negative_prompt,
            seed,
            request.width,
            request.height,
            request.model or None,
        )
        sent_graph = wf.inject(graph, mapping, values)
        chose_size = (request.width, request.height) != (self.width, self.height)
        row_slots = {*(mapping.checkpoint if row_model else ()), *(mapping.size if chose_size else ())}
        if request.seed is not None:
            row_slots |= set(mapping.seed)
        sent = answers.Submitted(
            graph=sent_graph,
            output=mapping.output,
            row_slots=frozenset(row_slots),
            checkpoint_slots=frozenset(mapping.checkpoint),
            model=wf.checkpoint_in(sent_graph, mapping),
            row_chose_model=row_model,
            row_larger_than_default=request.width * request.height > self.width * self.height,
        )
        prompt_id = self._submit(sent)
        entry = self._wait(prompt_id)
        failure = answers.job_failure(entry, sent)
        if failure is not None:
            raise failure
        image_ref = answers.first_image(entry.get("outputs") or {}, mapping.output)
        if image_ref is None:
            raise ServiceBlocked(
                f"the workflow ran but made no image (output node #{mapping.output or '?'}) -> make sure a "
                "SaveImage node is connected, or title your output node 'output'",
                service=SERVICE,
            )
        image = self._download(image_ref)
        image.info[PROVIDER_INFO] = "comfyui"
        return image

    # ------------------------------------------------------------------ the workflow
    def _workflow(self) -> tuple[wf.Graph, wf.Mapping]:
        """The loaded graph and its mapping, once; an unusable workflow blocks the service."""
        with self._load_lock:
            if self._loaded is None:
                try:
                    graph = wf.load_workflow(self.workflow)
                    mapping = wf.locate(graph)
                except wf.WorkflowError as exc:
                    raise ServiceBlocked(f"COMFYUI_WORKFLOW: {exc}", service=SERVICE) from None
                missing = mapping.missing()
                if missing:
                    raise ServiceBlocked(
                        f"COMFYUI_WORKFLOW {self.workflow}: " + "; ".join(missing), service=SERVICE
                    )
                self._loaded = (graph, mapping)
            return self._loaded

    # ------------------------------------------------------------------ HTTP
    def _public_url(self) -> str:
        parts = urlsplit(self.base_url.rstrip("/"))
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def _http(self) -> requests.Session:
        if self._session is None:
            register_secret(urlsplit(self.base_url).password)
            self._session = requests.Session()
        return self._session

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = self.base_url.rstrip("/") + path
        try:
            return self._http().request(
                method, url, timeout=(CONNECT_TIMEOUT_S, self.request_timeout_s), **kw
            )
        except requests.RequestException as exc:
            raise TransientError(
                f"ComfyUI at {self._public_url()} unreachable on {method} {path} ({type(exc).__name__}) -> "
                "is ComfyUI running, and started with --listen when it is on another machine?",
                service=SERVICE,
            ) from None

    def _unexpected(self, response: requests.Response, what: str) -> TransientError | ServiceBlocked:
        status = response.status_code
        where = f"ComfyUI at {self._public_url()}: {what} answered HTTP {status}"
        if status >= 500 or status in (408, 429):
            return TransientError(where, service=SERVICE, status=status)
        fix = {
            401: "a proxy in front of ComfyUI wants credentials: put them in COMFYUI_URL",
            403: "refused: ComfyUI's origin check or a proxy; call it directly",
            404: "no ComfyUI API there: check COMFYUI_URL",
            405: "no ComfyUI API there: check COMFYUI_URL",
        }.get(status, "check COMFYUI_URL and the server's log")
        return ServiceBlocked(f"{where} -> {fix}", service=SERVICE, status=status)

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _submit(self, sent: answers.Submitted) -> str:
        prompt_id = str(uuid.uuid4())
        body = {"prompt": sent.graph, "client_id": self._client_id, "prompt_id": prompt_id}
        response = self._call("POST", "/prompt", json=body)
        payload = self._json(response)
        if response.status_code == 400:
            raise answers.refusal(400, payload, sent)
        if response.status_code != 200 or not isinstance(payload, dict):
            raise self._unexpected(response, "POST /prompt")
        node_errors = payload.get("node_errors") or {}
        if answers.output_refused(node_errors, sent.output):
            self._abandon(prompt_id)  # other outputs may have been queued: they are not what we want
            raise answers.refusal(200, payload, sent)
        if node_errors:
            log.warning(
                "ComfyUI skipped outputs of the workflow: %s",
                "; ".join(answers.node_error_lines(sent.graph, node_errors)),
            )
        return str(payload.get("prompt_id") or prompt_id)

    def _wait(self, prompt_id: str) -> dict[str, Any]:
        """The history entry once the job is done; on timeout the job is interrupted and dequeued."""
        deadline = time.monotonic() + self.timeout_s
        failures = 0
        while True:
            try:
                response = self._call("GET", f"/history/{prompt_id}")
                payload = self._json(response)
                if response.status_code != 200 or not isinstance(payload, dict):
                    raise self._unexpected(response, f"GET /history/{prompt_id}")
                failures = 0
                entry = payload.get(prompt_id)
                if isinstance(entry, dict):
                    return entry
            except TransientError:
                failures += 1
                if failures >= POLL_FAILURES_TOLERATED:
                    self._abandon(prompt_id)
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                self._abandon(prompt_id)
                raise TransientError(
                    f"ComfyUI did not finish the image within {self.timeout_s:g}s (queue wait included); "
                    "the job was interrupted and removed from the queue",
                    service=SERVICE,
                )
            time.sleep(min(max(0.01, self.poll_interval_s), left))

    def _abandon(self, prompt_id: str) -> None:
        """Stop our job whether it runs (interrupt with its id) or waits (delete from the queue)."""
        for path, body in (("/interrupt", {"prompt_id": prompt_id}), ("/queue", {"delete": [prompt_id]})):
            try:
                self._call("POST", path, json=body)
            except TransientError as exc:  # best effort: the caller reports the real failure
                log.warning("could not %s job %s: %s", path.strip("/"), prompt_id, exc)

    def _download(self, ref: dict[str, Any]) -> Image.Image:
        params = {
            "filename": ref.get("filename", ""),
            "subfolder": ref.get("subfolder", ""),
            "type": ref.get("type", "output"),
        }
        response = self._call("GET", "/view", params=params)
        if response.status_code == 404:
            raise TransientError(
                f"ComfyUI lists the image {params['filename']} but /view has no such file (HTTP 404)",
                service=SERVICE,
                status=404,
            )
        if response.status_code != 200:
            raise self._unexpected(response, "GET /view")
        try:
            image = Image.open(io.BytesIO(response.content))
            image.load()
        except (OSError, SyntaxError) as exc:
            raise TransientError(
                f"ComfyUI's /view answer is not an image ({type(exc).__name__})", service=SERVICE
            ) from None
        return image

    # ------------------------------------------------------------------ the doctor
    def preflight(self) -> list[Check]:
        return preflight_checks(self)
