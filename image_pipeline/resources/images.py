"""The image generator: Hugging Face ``InferenceClient.text_to_image`` or the offline preview generator."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from pydantic import Field, PrivateAttr

from ..errors import CreditsDepleted, PipelineError, PromptRejected, ServiceBlocked, TransientError
from ..models import GenerationRequest
from ..redact import install_log_redaction, redact, register_secret
from ..retry import RetryPolicy, call_with_retry

log = logging.getLogger("image_pipeline.images")

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
PREVIEW_LABEL = "Offline preview: abstract art drawn locally, not an AI image"


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


def encode_png(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class ImageGenerator(dg.ConfigurableResource):
    """Turns a prompt into a PNG. Subclasses pick the backend."""

    model: str = Field(default=DEFAULT_MODEL, description="Model id used when a row names none.")
    width: int = Field(default=1024, description="Default width in pixels.")
    height: int = Field(default=1024, description="Default height in pixels.")
    retry_attempts: int = Field(default=4, description="Tries per image, the first included.")
    retry_base_delay_s: float = Field(default=2.0, description="First backoff delay; doubles per retry.")
    concurrency: int = Field(default=1, description="Images generated at once within a batch run.")
    _slots: threading.BoundedSemaphore | None = PrivateAttr(default=None)
    _slots_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

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
        seed = self._pick_seed(request)
        policy = RetryPolicy(attempts=max(1, self.retry_attempts), base_delay_s=self.retry_base_delay_s)

        def attempt() -> tuple[Image.Image, float]:
            with self._request_slots():
                started = time.monotonic()
                image = self._generate_once(request, seed)
                return image, time.monotonic() - started

        image, seconds = call_with_retry(attempt, policy, what=f"generate with {request.model}")
        if image.width < 1 or image.height < 1:
            raise PromptRejected("the generator returned an empty image", service="images")
        return GeneratedImage(
            png=encode_png(image),
            width=image.width,
            height=image.height,
            model=self._served_model(request),
            provider=self._provider(),
            seed=seed,
            seconds=round(seconds, 3),
            preview=self.is_preview,
        )


class HuggingFaceGenerator(ImageGenerator):
    """``huggingface_hub.InferenceClient.text_to_image`` through an inference provider or an endpoint URL."""

    token: str | None = Field(default=None, description="Hugging Face token (bind with EnvVar('HF_TOKEN')).")
    provider: str = Field(default="auto", description="Inference provider, e.g. auto, hf-inference, fal-ai.")
    base_url: str | None = Field(
        default=None, description="Send requests to exactly this URL (self-hosted endpoint, local server)."
    )
    timeout_s: float = Field(default=120.0, description="Timeout of one generation request.")

    def describe(self) -> str:
        where = self.base_url or f"provider {self.provider}"
        return f"Hugging Face InferenceClient ({self.model} via {where})"

    def _provider(self) -> str:
        return "endpoint" if self.base_url else self.provider

    def _served_model(self, request: GenerationRequest) -> str:
        # An endpoint URL serves one model whatever a row asks for: record what made the image.
        return self.model if self.base_url else request.model

    def _client(self) -> Any:
        from huggingface_hub import InferenceClient

        register_secret(self.token)
        install_log_redaction()
        if self.base_url:
            # A URL as the model makes the client POST to exactly that URL, with no Hub look-ups.
            return InferenceClient(model=self.base_url, token=self.token or None, timeout=self.timeout_s)
        return InferenceClient(
            provider=self.provider or None, token=self.token or None, timeout=self.timeout_s
        )

    def _generate_once(self, request: GenerationRequest, seed: int | None) -> Image.Image:
        client = self._client()
        try:
            image = client.text_to_image(
                request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                seed=seed,
                model=None if self.base_url else request.model,
            )
            image.load()  # decode now, so a truncated body fails here and not later
            return image
        except PipelineError:
            raise
        except Exception as exc:
            raise self._classify(exc, request) from None

    def _classify(self, exc: BaseException, request: GenerationRequest) -> PipelineError:
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

        if isinstance(exc, InferenceTimeoutError):
            return TransientError(f"Hugging Face did not answer within {self.timeout_s:g}s", service="images")
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            server = redact(getattr(exc, "server_message", "") or "").strip()[:300]
            if status == 503:
                return TransientError(
                    f"model {request.model} is loading (HTTP 503)",
                    service="images",
                    status=status,
                    retry_after=_estimated_time(exc.response),
                )
            if status == 429:
                return TransientError(
                    "Hugging Face rate limit (HTTP 429)",
                    service="images",
                    status=status,
                    retry_after=_rate_limit_wait(exc.response),
                )
            if status >= 500 or status == 408:
                return TransientError(
                    f"Hugging Face server error (HTTP {status})", service="images", status=status
                )
            if status == 401:
                return ServiceBlocked(
                    "Hugging Face rejected the token (HTTP 401): check HF_TOKEN, it needs the "
                    "'Make calls to Inference Providers' permission",
                    service="images",
                    status=status,
                )
            if status == 402:
                return CreditsDepleted(
                    "Hugging Face credits are depleted (HTTP 402): add credits or a payment method, "
                    "then run again; the prompt stays queued",
                    service="images",
                    status=status,
                )
            if status == 403:
                return ServiceBlocked(
                    f"Hugging Face refused access (HTTP 403): {server or 'the token lacks permission'}",
                    service="images",
                    status=status,
                )
            if status == 404:
                if request.model != self.model:
                    return PromptRejected(
                        f"model {request.model} not found (HTTP 404)", service="images", status=404
                    )
                return ServiceBlocked(
                    f"model {request.model} not found (HTTP 404): check HF_MODEL and HF_PROVIDER",
                    service="images",
                    status=404,
                )
            return PromptRejected(
                f"Hugging Face rejected the prompt (HTTP {status}){': ' + server if server else ''}",
                service="images",
                status=status,
            )
        if isinstance(exc, UnidentifiedImageError | OSError | SyntaxError) and not _is_transport_error(exc):
            # A 200 whose body is not an image (or is truncated): may be a glitch, retried, then FAILED.
            return TransientError("the generator answered with bytes that are not an image", service="images")
        if _is_transport_error(exc):
            return TransientError(f"Hugging Face unreachable ({type(exc).__name__})", service="images")
        if isinstance(exc, ValueError):
            # huggingface_hub raises ValueError for a model the provider does not serve for this task
            return PromptRejected(f"cannot use model {request.model}: {redact(exc)[:200]}", service="images")
        return TransientError(f"Hugging Face call failed ({type(exc).__name__})", service="images")


def _is_transport_error(exc: BaseException) -> bool:
    try:
        import httpx2 as httpx_mod  # what huggingface_hub 2.x uses
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx as httpx_mod  # type: ignore[no-redef]
    return isinstance(exc, httpx_mod.TransportError)


def _estimated_time(response: Any) -> float | None:
    try:
        value = response.json().get("estimated_time")
        return float(value) if value is not None else None
    except Exception:
        return None


def _rate_limit_wait(response: Any) -> float | None:
    headers = response.headers
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            return float(retry_after)
        except ValueError:
            pass
    # IETF RateLimit header as Hugging Face sends it: "api";r=0;t=42
    for part in (headers.get("RateLimit") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                return float(value)
            except ValueError:
                return None
    return None


class OfflinePreviewGenerator(ImageGenerator):
    """Deterministic abstract art drawn with Pillow from the prompt; no network, no model, clearly labelled."""

    model: str = Field(default="offline-preview", description="Label recorded as the model.")

    @property
    def is_preview(self) -> bool:
        return True

    def describe(self) -> str:
        return "offline preview generator (Pillow; no AI model)"

    def _provider(self) -> str:
        return "offline"

    def _pick_seed(self, request: GenerationRequest) -> int | None:
        if request.seed is not None:
            return request.seed
        digest = hashlib.sha256(request.prompt.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:4], "big") >> 1

    def _generate_once(self, request: GenerationRequest, seed: int | None) -> Image.Image:
        return render_preview(request.prompt, request.width, request.height, seed or 0)


def render_preview(prompt: str, width: int, height: int, seed: int) -> Image.Image:
    rng = random.Random(f"{seed}:{prompt}")

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    # A diagonal two-colour gradient as the ground, then translucent shapes.
    mask = Image.linear_gradient("L").rotate(rng.choice([0, 45, 90, 135, 180]), expand=False)
    mask = mask.resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), colour()), Image.new("RGB", (width, height), colour()), mask
    )
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    side = min(width, height)
    for _ in range(rng.randint(6, 14)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randint(side // 16, side // 3)
        fill = (*colour(), rng.randint(70, 170))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            points = [(x + rng.randint(-r, r), y + rng.randint(-r, r)) for _ in range(rng.randint(3, 6))]
            draw.polygon(points, fill=fill)
    image = Image.alpha_composite(image.convert("RGBA"), overlay)
    # The label is part of the picture, so a preview can never pass for a generated image.
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, side // 28))
    text = "OFFLINE PREVIEW"
    box = draw.textbbox((0, 0), text, font=font)
    pad = max(4, side // 100)
    tw, th = box[2] - box[0], box[3] - box[1]
    draw.rectangle((pad, pad, pad * 3 + tw, pad * 3 + th), fill=(0, 0, 0, 170))
    draw.text((pad * 2 - box[0], pad * 2 - box[1]), text, fill=(255, 255, 255, 255), font=font)
    return image.convert("RGB")
