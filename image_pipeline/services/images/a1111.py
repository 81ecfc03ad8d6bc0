"""AUTOMATIC1111 / Forge / SD.Next through their web API: one blocking ``POST /sdapi/v1/txt2img`` per image.

The server runs one job at a time behind a FIFO lock and a request waits for its turn inside its open HTTP
request (no job id, no queue-full answer), so the read timeout covers queue + model load + generation and
is long; more requests in flight than one buy nothing, hence concurrency 1. When the read timeout fires
the job may still be running: a best-effort ``/interrupt`` frees the GPU before the retry (it is global:
it stops whichever job runs, which with concurrency 1 and no other users is ours).

A row's model is a checkpoint name, sent as ``override_settings.sd_model_checkpoint``. The server drops
an unknown name silently and uses whatever is loaded, so names are checked first against
``/sdapi/v1/sd-models`` (cached per resource instance, i.e. per run; fetched again once when a name is
missing, in case a checkpoint was just added). The seed and model the server reports in ``info`` are what
the image records. Answers are classed in ``a1111_refusals``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import requests
from PIL import Image, UnidentifiedImageError
from pydantic import Field, PrivateAttr

from image_pipeline.domain.checks import Check, fail, ok, skipped
from image_pipeline.domain.errors import PipelineError, PromptRejected, ServiceBlocked
from image_pipeline.domain.redact import install_log_redaction, register_secret
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images import a1111_refusals as refusals
from image_pipeline.services.images.interface import MODEL_INFO, PROVIDER_INFO, SEED_INFO, ImageGenerator

log = logging.getLogger("image_pipeline.images")

IMAGES = "A1111"  # the service name in preflight tables
PROVIDER = "a1111"
PREFLIGHT_TIMEOUT_S = 15.0
INTERRUPT_TIMEOUT_S = 10.0
NAMES_SHOWN = 5  # installed checkpoints listed in a refusal


def checkpoint_ids(item: dict[str, Any]) -> list[str]:
    """The names the server resolves to this ``/sd-models`` item, as far as the listing shows them
    (``CheckpointInfo.ids``: title, model_name, short hash, sha256, file name, file stem, "stem [hash]")."""
    title = str(item.get("title") or "")
    short = str(item.get("hash") or "")
    name = title[: -len(f" [{short}]")] if short and title.endswith(f" [{short}]") else title
    stem = str(item.get("filename") or name).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    ids = [title, str(item.get("model_name") or ""), short, str(item.get("sha256") or ""), name, stem]
    if short:
        ids.append(f"{stem} [{short}]")
    return [i for i in ids if i]


def match_checkpoint(listing: list[dict[str, Any]], wanted: str) -> str | None:
    """The title of the checkpoint ``wanted`` names, by the server's own rule
    (``get_closet_checkpoint_match``: an exact alias, else the shortest title containing it)."""
    for item in listing:
        if wanted in checkpoint_ids(item):
            return str(item.get("title"))
    found = sorted(
        (str(i.get("title")) for i in listing if wanted and wanted in str(i.get("title"))), key=len
    )
    return found[0] if found else None


class A1111Generator(ImageGenerator):
    """``POST /sdapi/v1/txt2img`` of an AUTOMATIC1111, Forge or SD.Next server started with ``--api``."""

    kind: ClassVar[str] = "a1111"

    base_url: str = Field(
        default="http://127.0.0.1:7860", description="The server's root URL (A1111_BASE_URL)."
    )
    model: str = Field(
        default="",
        description="Checkpoint used when a row names none (title, file name or hash); empty = the loaded one.",
    )
    user: str | None = Field(default=None, description="User of the server's --api-auth (A1111_USER).")
    password: str | None = Field(
        default=None, description="Password of --api-auth (bind with EnvVar('A1111_PASSWORD'))."
    )
    steps: int = Field(default=30, description="Sampling steps (the server's own default is 50).")
    cfg_scale: float = Field(default=7.0, description="CFG scale.")
    sampler_name: str = Field(default="DPM++ 2M", description="Sampler, a name GET /sdapi/v1/samplers lists.")
    scheduler: str | None = Field(default=None, description="Scheduler (None = the server's 'Automatic').")
    restore_settings: bool = Field(
        default=True,
        description="Restore the server's checkpoint after a row's own one (False keeps it loaded: faster "
        "when consecutive rows use it, but changes the model selected in the server's UI).",
    )
    timeout_s: float = Field(
        default=600.0, description="Read timeout of one txt2img: queue wait + model load + generation."
    )
    connect_timeout_s: float = Field(default=10.0, description="Connect timeout of every request.")
    _session: requests.Session | None = PrivateAttr(default=None)
    _session_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _listing: list[dict[str, Any]] | None = PrivateAttr(default=None)
    _missed: set[str] = PrivateAttr(default_factory=set)
    _listing_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _oom_once: set[tuple[GenerationRequest, int | None]] = PrivateAttr(default_factory=set)

    # ----------------------------------------------------------------- the transport seam
    @property
    def _where(self) -> str:
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host  # never a user:password@ of the URL
        return f"A1111 at {urlunsplit((parts.scheme, netloc, parts.path, '', ''))}"

    def _url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/sdapi/v1/{path}"

    def _http(self) -> requests.Session:
        with self._session_lock:
            if self._session is None:
                register_secret(self.password)
                install_log_redaction()
                session = requests.Session()
                if self.user:
                    session.auth = (self.user, self.password or "")
                self._session = session
            return self._session

    def _get(self, path: str, read_timeout_s: float) -> requests.Response:
        return self._http().get(self._url(path), timeout=(self.connect_timeout_s, read_timeout_s))

    def _interrupt(self) -> None:
        """Best effort: the job we stopped waiting for would otherwise hold the GPU for the retry."""
        try:
            self._http().post(self._url("interrupt"), timeout=(self.connect_timeout_s, INTERRUPT_TIMEOUT_S))
        except requests.RequestException as exc:
            log.warning("%s: interrupt after a timeout failed (%s)", self._where, type(exc).__name__)

    # ----------------------------------------------------------------- the interface
    def describe(self) -> str:
        return f"AUTOMATIC1111 web API at {self._where[len('A1111 at ') :]} ({self.model or 'loaded checkpoint'})"

    def _provider(self) -> str:
        return PROVIDER

    def _served_model(self, request: GenerationRequest) -> str:
        return request.model or self.model or "(loaded checkpoint)"

    def _generate_once(self, request: GenerationRequest, seed: int | None) -> Image.Image:
        checkpoint = self._checkpoint_for(request) if request.model else None
        body = self._body(request, seed, checkpoint)
        try:
            response = self._http().post(
                self._url("txt2img"), json=body, timeout=(self.connect_timeout_s, self.timeout_s)
            )
        except requests.RequestException as exc:
            if isinstance(exc, requests.ReadTimeout):
                self._interrupt()
            raise refusals.transport_error(exc, where=self._where, read_timeout_s=self.timeout_s) from None
        if response.status_code != 200:
            raise self._refusal(response, request, seed)
        self._oom_once.discard((request, seed))
        image = self._image_of(response)
        image.info[PROVIDER_INFO] = PROVIDER
        return image

    def _body(self, request: GenerationRequest, seed: int | None, checkpoint: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or "",
            "seed": -1 if seed is None else seed,
            # the latent is a side / 8, so the server rounds a size down to a multiple of 8 anyway: round
            # it here, where it is visible (build_request has already done so for rows)
            "width": max(8, request.width - request.width % 8),
            "height": max(8, request.height - request.height % 8),
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "sampler_name": self.sampler_name,
            "batch_size": 1,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
        }
        if self.scheduler:
            body["scheduler"] = self.scheduler
        if checkpoint:
            body["override_settings"] = {"sd_model_checkpoint": checkpoint}
            body["override_settings_restore_afterwards"] = self.restore_settings
        return body

    def _refusal(
        self, response: requests.Response, request: GenerationRequest, seed: int | None
    ) -> PipelineError:
        error = refusals.classify(
            response, where=self._where, has_login=bool(self.user), sampler=self.sampler_name
        )
        if not refusals.is_out_of_memory(response.status_code, refusals.payload_of(response)):
            return error
        # Out of memory once may be memory held by a model switch or another user's job: one retry. Twice
        # for the same request it is this size/checkpoint on this GPU: the row's fault when it asks for
        # more than the configured default, the service's otherwise (every prompt would hit it).
        key = (request, seed)
        if key not in self._oom_once:
            self._oom_once.add(key)
            return error
        self._oom_once.discard(key)
        size = f"{request.width}x{request.height}"
        bigger = request.width * request.height > self.width * self.height
        own_model = request.model_from_row and bool(request.model) and request.model != self.model
        if bigger or own_model:
            what = f"size {size}" if bigger else f"checkpoint {request.model!r}"
            return PromptRejected(
                f"{self._where} runs out of GPU memory for this row's {what}, twice (HTTP 500 "
                "OutOfMemoryError). Fix: a smaller width/height or another checkpoint in the row",
                service=refusals.SERVICE,
                status=500,
            )
        return ServiceBlocked(
            f"{self._where} runs out of GPU memory at the default size {size}, twice (HTTP 500 "
            "OutOfMemoryError). Fix: free the GPU (other jobs, other apps), start the server with --medvram "
            "(or --lowvram), or lower the default width/height; prompts stay queued",
            service=refusals.SERVICE,
            status=500,
        )

    def _image_of(self, response: requests.Response) -> Image.Image:
        payload = refusals.payload_of(response)
        if not isinstance(payload, dict) or "images" not in payload:
            raise refusals.unexpected_body(self._where, "a body that is not a txt2img answer")
        images = payload.get("images") or []
        if not images:
            raise ServiceBlocked(
                f"{self._where} answered with no image: no model is loaded (SD.Next answers so). Fix: load a "
                "checkpoint on the server, or set A1111_MODEL; prompts stay queued",
                service=refusals.SERVICE,
                status=200,
            )
        try:
            raw = base64.b64decode(str(images[0]).split(",", 1)[-1], validate=False)
            image = Image.open(io.BytesIO(raw))
            image.load()  # decode now, so a truncated image fails here and not later
        except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
            raise refusals.unexpected_body(self._where, "an image that does not decode") from None
        info = refusals.info_of(payload.get("info"))
        seeds = info.get("all_seeds") or [info.get("seed")]
        if isinstance(seeds, list) and seeds and isinstance(seeds[0], int):
            image.info[SEED_INFO] = seeds[0]
        if info.get("sd_model_name"):
            image.info[MODEL_INFO] = str(info["sd_model_name"])
        return image

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint_for(self, request: GenerationRequest) -> str:
        """The title of the row's checkpoint; an unknown name never reaches txt2img (it would be ignored)."""
        wanted = request.model
        with self._listing_lock:
            listing = self._listing if self._listing is not None else self._fetch_listing()
            title = match_checkpoint(listing, wanted)
            if title is None and wanted not in self._missed:
                self._missed.add(wanted)
                listing = self._fetch_listing()
                title = match_checkpoint(listing, wanted)
        if title is not None:
            return title
        names = [str(i.get("title")) for i in listing[:NAMES_SHOWN]]
        more = f" (+{len(listing) - NAMES_SHOWN} more)" if len(listing) > NAMES_SHOWN else ""
        installed = f"installed: {', '.join(names)}{more}" if names else "no checkpoint is installed"
        if wanted == self.model or not request.model_from_row:
            # a default of the configuration, not the row's choice: every row without a model would fail
            raise ServiceBlocked(
                f"A1111_MODEL {wanted!r} is not installed on {self._where}; {installed}. Fix: set A1111_MODEL to "
                "one of them; prompts stay queued",
                service=refusals.SERVICE,
            )
        raise PromptRejected(
            f"checkpoint {wanted!r} is not installed on {self._where} (the server would silently use its loaded "
            f"model instead); {installed}. Fix: put one of them in the row's model column",
            service=refusals.SERVICE,
        )

    def _fetch_listing(self) -> list[dict[str, Any]]:
        try:
            response = self._get("sd-models", PREFLIGHT_TIMEOUT_S)
        except requests.RequestException as exc:
            raise refusals.transport_error(
                exc, where=self._where, read_timeout_s=PREFLIGHT_TIMEOUT_S
            ) from None
        if response.status_code != 200:
            raise refusals.classify(response, where=self._where, has_login=bool(self.user), sampler=None)
        listing = refusals.payload_of(response)
        if not isinstance(listing, list):
            raise refusals.unexpected_body(self._where, "a checkpoint list that is not a list")
        self._listing = [i for i in listing if isinstance(i, dict)]
        return self._listing

    # ----------------------------------------------------------------- doctor
    def preflight(self) -> list[Check]:
        """Reachable, API enabled, login accepted, default checkpoint installed: from ``/sd-models`` (and
        ``/options`` for the loaded checkpoint when no default is set); nothing is generated."""
        names = ["server reachable", "API enabled", "login", "checkpoint"]
        try:
            response = self._get("sd-models", PREFLIGHT_TIMEOUT_S)
        except requests.RequestException as exc:
            detail = f"{self._where}: no answer ({type(exc).__name__})"
            fix = "start the server (webui --api --listen) and check A1111_BASE_URL"
            return [fail(IMAGES, names[0], detail, fix), *skipped(IMAGES, names[1:], "needs the server")]
        reached = ok(IMAGES, names[0], self._where)
        status = response.status_code
        if status == 404:
            return [
                reached,
                fail(IMAGES, names[1], "/sdapi/v1 answers 404", refusals.API_FIX),
                *skipped(IMAGES, names[2:], "needs the API"),
            ]
        api = ok(IMAGES, names[1], "/sdapi/v1 answers")
        if status == 401:
            fix = (
                "check A1111_USER / A1111_PASSWORD against --api-auth"
                if self.user
                else "the server has --api-auth: set A1111_USER and A1111_PASSWORD"
            )
            return [
                reached,
                api,
                fail(IMAGES, names[2], "refused (HTTP 401)", fix),
                *skipped(IMAGES, names[3:], "needs a login"),
            ]
        if status != 200 or not isinstance(refusals.payload_of(response), list):
            detail = f"/sdapi/v1/sd-models answered HTTP {status}"
            return [
                reached,
                fail(IMAGES, names[1], detail, "check A1111_BASE_URL and the server's log"),
                *skipped(IMAGES, names[2:], "needs the API"),
            ]
        login = ok(IMAGES, names[2], f"user {self.user} accepted" if self.user else "none asked")
        listing = [i for i in refusals.payload_of(response) if isinstance(i, dict)]
        with self._listing_lock:
            self._listing = listing
        return [reached, api, login, self._checkpoint_check(listing, names[3])]

    def _checkpoint_check(self, listing: list[dict[str, Any]], name: str) -> Check:
        titles = [str(i.get("title")) for i in listing]
        if not listing:
            return fail(
                IMAGES, name, "no checkpoint installed", "put a checkpoint in models/Stable-diffusion"
            )
        if self.model:
            title = match_checkpoint(listing, self.model)
            if title is None:
                shown = ", ".join(titles[:NAMES_SHOWN])
                return fail(
                    IMAGES, name, f"A1111_MODEL {self.model!r} is not installed", f"set it to one of: {shown}"
                )
            return ok(IMAGES, name, f"{title} installed")
        try:
            response = self._get("options", PREFLIGHT_TIMEOUT_S)
            loaded = (refusals.payload_of(response) or {}).get("sd_model_checkpoint")
        except (requests.RequestException, AttributeError):
            loaded = None
        if not loaded:
            fix = "load a checkpoint on the server or set A1111_MODEL"
            return fail(IMAGES, name, "no checkpoint is loaded (generations would return no image)", fix)
        return ok(IMAGES, name, f"loaded: {loaded}")
