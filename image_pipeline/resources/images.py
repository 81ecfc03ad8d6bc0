"""The image generator: Hugging Face ``InferenceClient.text_to_image`` or the offline preview generator."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from pydantic import Field, PrivateAttr

from ..errors import CreditsDepleted, PipelineError, PromptRejected, ServiceBlocked, TransientError
from ..models import GenerationRequest
from ..preflight import Check, fail, ok, skipped, warn
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


IMAGES = "Hugging Face"  # the service name in preflight tables


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
    hub_url: str | None = Field(
        default=None,
        description="Hub API the preflight asks about the token and model, instead of https://huggingface.co.",
    )

    def preflight(self) -> list[Check]:
        from huggingface_hub.utils import build_hf_headers, get_session

        register_secret(self.token)
        install_log_redaction()
        if self.base_url:
            return self._preflight_endpoint(get_session(), build_hf_headers(token=self.token or False))
        return self._preflight_hub()

    def _preflight_endpoint(self, session: Any, headers: dict[str, str]) -> list[Check]:
        """A GET on the endpoint: its gateway checks the token first, and nothing is generated or billed."""
        names = ["token valid", "model reachable"]
        where = f"endpoint {self.base_url}"
        try:
            response = session.get(self.base_url, headers=headers, timeout=min(self.timeout_s, 30.0))
        except Exception as exc:
            return [
                fail(
                    IMAGES,
                    names[0],
                    f"{where} unreachable ({type(exc).__name__})",
                    "check HF_INFERENCE_BASE_URL",
                ),
                *skipped(IMAGES, names[1:], "needs the endpoint"),
            ]
        status = response.status_code
        if status == 401:
            return [
                fail(IMAGES, names[0], f"{where} rejected the token (HTTP 401)", "check HF_TOKEN"),
                *skipped(IMAGES, names[1:], "needs a valid token"),
            ]
        token_check = ok(IMAGES, names[0], "accepted by the endpoint" if self.token else "no token sent")
        if status == 402:
            fix = "add credits or a payment method; prompts stay queued meanwhile"
            return [token_check, fail(IMAGES, names[1], "credits depleted (HTTP 402)", fix)]
        if status == 403:
            return [token_check, fail(IMAGES, names[1], "access refused (HTTP 403)", "give the token access")]
        if status == 404:
            fix = "check HF_INFERENCE_BASE_URL (the endpoint's URL, with the model path if it has one)"
            return [token_check, fail(IMAGES, names[1], f"{where}: not found (HTTP 404)", fix)]
        if status == 503:
            return [
                token_check,
                warn(IMAGES, names[1], f"{where} is starting (HTTP 503)", "runs wait for it"),
            ]
        if status >= 500:
            return [
                token_check,
                fail(IMAGES, names[1], f"{where}: server error (HTTP {status})", "try later"),
            ]
        # 2xx, 405 (POST only) or 4xx about the missing body: something is serving there
        return [token_check, ok(IMAGES, names[1], f"{self.model} at {where} (HTTP {status} to a GET)")]

    def _preflight_hub(self) -> list[Check]:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        names = ["token valid", "model reachable"]
        new_token = (
            "create a token at https://huggingface.co/settings/tokens with the permission 'Make calls to "
            "Inference Providers' and set HF_TOKEN"
        )
        if not self.token:
            return [
                fail(IMAGES, names[0], "no HF_TOKEN", new_token),
                *skipped(IMAGES, names[1:], "needs a token"),
            ]
        api = HfApi(endpoint=self.hub_url or None, token=self.token)
        try:
            me = api.whoami()
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            text = (
                "the token is invalid or revoked (HTTP 401)"
                if status == 401
                else f"Hub answered HTTP {status}"
            )
            return [
                fail(IMAGES, names[0], text, new_token),
                *skipped(IMAGES, names[1:], "needs a valid token"),
            ]
        except Exception as exc:
            detail = f"the Hub is unreachable ({type(exc).__name__})"
            return [
                fail(IMAGES, names[0], detail, "check the network"),
                *skipped(IMAGES, names[1:], "no Hub"),
            ]
        access = ((me.get("auth") or {}).get("accessToken")) or {}
        user = str(me.get("name", "?"))
        if access.get("role") == "fineGrained":
            allowed = set((access.get("fineGrained") or {}).get("global") or [])
            if "inference.serverless.write" not in allowed:
                fix = "edit the token and tick 'Make calls to Inference Providers'"
                checks = [
                    fail(IMAGES, names[0], f"the token of {user} may not call Inference Providers", fix)
                ]
            else:
                checks = [ok(IMAGES, names[0], f"user {user}, may call Inference Providers")]
        else:
            checks = [ok(IMAGES, names[0], f"user {user} ({access.get('role', 'token')})")]

        try:
            info = api.model_info(self.model, expand=["inferenceProviderMapping", "pipeline_tag"])
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if isinstance(exc, RepositoryNotFoundError) or status == 404:
                fix = (
                    f"check HF_MODEL ({self.model}): a public text-to-image model id such as {DEFAULT_MODEL}"
                )
                return [*checks, fail(IMAGES, names[1], f"no model {self.model} on the Hub", fix)]
            return [*checks, fail(IMAGES, names[1], f"Hub answered HTTP {status}", "try again later")]
        except Exception as exc:
            return [
                *checks,
                fail(IMAGES, names[1], f"Hub unreachable ({type(exc).__name__})", "check the network"),
            ]
        if info.pipeline_tag and info.pipeline_tag != "text-to-image":
            fix = "set HF_MODEL to a text-to-image model"
            return [*checks, fail(IMAGES, names[1], f"{self.model} is a {info.pipeline_tag} model", fix)]
        mapping = {m.provider: m.status for m in (info.inference_provider_mapping or [])}
        live = sorted(p for p, status in mapping.items() if status == "live")
        provider = self.provider or "auto"
        if provider == "auto":
            if not live:
                fix = "pick a model whose page lists Inference Providers, or set HF_INFERENCE_BASE_URL"
                return [*checks, fail(IMAGES, names[1], f"no provider serves {self.model}", fix)]
            return [*checks, ok(IMAGES, names[1], f"{self.model} via {', '.join(live)} (auto)")]
        if mapping.get(provider) == "live":
            return [*checks, ok(IMAGES, names[1], f"{self.model} via {provider}")]
        state = mapping.get(provider)
        detail = f"{provider} does not serve {self.model}" + (f" ({state})" if state else "")
        fix = f"set HF_PROVIDER to one of: {', '.join(live)}" if live else "pick another model"
        return [*checks, fail(IMAGES, names[1], detail, fix)]

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
            if status in (403, 429) and _is_billing_refusal(server):
                # A provider's quota or balance used up comes as 429 or 403 rather than 402: waiting
                # minutes does not fix it, so it is a refusal of our account, not a rate limit.
                return CreditsDepleted(
                    f"Hugging Face: the provider's quota or balance is used up (HTTP {status}): "
                    f"{server[:200]} Add credits or raise the spending limit; the prompt stays queued",
                    service="images",
                    status=status,
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


# What providers say when an account's money or monthly quota is gone, as opposed to a per-minute rate
# limit ("exceeded your monthly included credits", "Exhausted balance", "NOT_ENOUGH_BALANCE", "used all
# available credits or reached its monthly spending limit", "insufficient quota").
_BILLING_WORDS = re.compile(
    r"credits?\b|balance|quota|spending limit|billing|payment|insufficient[_ ]funds", re.I
)


def _is_billing_refusal(server_message: str) -> bool:
    return bool(server_message) and bool(_BILLING_WORDS.search(server_message))


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

    def preflight(self) -> list[Check]:
        return [
            ok(IMAGES, "generator", "offline preview generator (no HF_TOKEN): images are labelled previews")
        ]

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
