"""What every image generator is: a Dagster resource that turns a generation request into PNG bytes."""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import dagster as dg
from PIL import Image
from pydantic import Field, PrivateAttr

from image_pipeline.domain.errors import PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.http import RetryPolicy, call_with_retry
from image_pipeline.services.images import refusals as hf_refusals

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    width: int
    height: int
    model: str
    provider: str
    seed: int | None
    seconds: float
    preview: bool
    backend: str = ""  # the kind of backend that made it (huggingface, a1111, comfyui, preview)
    fallback: str = ""  # why the backends before it in IMAGE_BACKENDS did not make it, when they did not


def encode_png(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    # Level 1, not zlib's 6: on a 1024x1024 generated-looking image 87 ms instead of 304 ms here, for a
    # file within a few percent of the size (photographic detail barely compresses further); every image
    # of a batch pays it on the worker's CPU, and Telegram recompresses photos anyway.
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


PROVIDER_INFO = "image_pipeline.provider"  # the key of Image.info that carries the provider used
SEED_INFO = "image_pipeline.seed"  # the seed the server reports it used, when it reports one
MODEL_INFO = "image_pipeline.model"  # the model the server reports it used, when it reports one


class ImageGenerator(dg.ConfigurableResource):
    """Turns a prompt into a PNG. Subclasses pick the backend."""

    kind: ClassVar[str] = ""  # the backend's name in IMAGE_BACKENDS and in a row's "backend" column

    model: str = Field(default=DEFAULT_MODEL, description="Model id used when a row names none.")
    width: int = Field(default=1024, description="Default width in pixels.")
    height: int = Field(default=1024, description="Default height in pixels.")
    retry_attempts: int = Field(default=4, description="Tries per image, the first included.")
    retry_base_delay_s: float = Field(default=2.0, description="First backoff delay; doubles per retry.")
    concurrency: int = Field(default=1, description="Images generated at once within a batch run.")
    _slots: threading.BoundedSemaphore | None = PrivateAttr(default=None)
    _slots_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    # Called with a slot held, before each request: a fallback chain raises here what this backend said
    # to another prompt meanwhile, so requests queued behind a refusal do not ask again.
    _before_request: Callable[[], None] | None = PrivateAttr(default=None)

    def _request_slots(self) -> threading.BoundedSemaphore:
        # Only the request to the provider holds a slot; decoding, encoding and writing the file happen
        # outside it, so `concurrency` requests are always in flight while a batch has work.
        with self._slots_lock:
            if self._slots is None:
                self._slots = threading.BoundedSemaphore(max(1, self.concurrency))
            return self._slots

    @property
    def is_preview(self) -> bool:
        return False

    def describe(self) -> str:
        raise NotImplementedError

    def _generate_once(self, request: GenerationRequest, seed: int | None) -> Image.Image:
        raise NotImplementedError

    def _provider(self) -> str:
        raise NotImplementedError

    def _served_model(self, request: GenerationRequest) -> str:
        return request.model

    def _pick_seed(self, request: GenerationRequest) -> int | None:
        # A seed we choose is still recorded, so every image can be regenerated.
        return request.seed if request.seed is not None else random.SystemRandom().randrange(0, 2**31)

    def generate(self, request: GenerationRequest) -> GeneratedImage:
        if request.backend and request.backend != self.kind:
            # the row's own choice, which this deployment cannot serve: its fault, not the service's
            raise PromptRejected(
                f"the row asks for backend {request.backend}, but only {self.kind} is configured "
                "(IMAGE_BACKENDS lists the backends a row may name)",
                service="images",
            )
        seed = self._pick_seed(request)
        policy = RetryPolicy(attempts=max(1, self.retry_attempts), base_delay_s=self.retry_base_delay_s)

        def attempt() -> tuple[Image.Image, float]:
            with self._request_slots():
                if self._before_request is not None:
                    self._before_request()
                started = time.monotonic()
                image = self._generate_once(request, seed)
                return image, time.monotonic() - started

        try:
            image, seconds = call_with_retry(attempt, policy, what=f"generate with {request.model}")
        except TransientError as exc:
            # an answer that is a blip once but a misconfiguration when it never changes (an HTML page)
            persistent = hf_refusals.persistent_service_message(exc)
            if persistent:
                raise ServiceBlocked(persistent, service=exc.service, status=exc.status) from None
            raise
        if image.width < 1 or image.height < 1:
            raise PromptRejected("the generator returned an empty image", service="images")
        return GeneratedImage(
            png=encode_png(image),
            # the size the image has, which a provider may have chosen (replicate's flux takes an
            # aspect ratio, not width and height)
            width=image.width,
            height=image.height,
            model=str(image.info.get(MODEL_INFO) or self._served_model(request)),
            # the provider that made this image ("auto" resolved), set by the backend on the image
            provider=str(image.info.get(PROVIDER_INFO) or self._provider()),
            seed=int(image.info[SEED_INFO]) if SEED_INFO in image.info else seed,
            seconds=round(seconds, 3),
            preview=self.is_preview,
            backend=self.kind,
        )
