"""Hugging Face through ``huggingface_hub.InferenceClient.text_to_image``: provider routing or an endpoint URL.

Every request runs through our own HTTP client (timeouts on every request, one deadline per attempt);
refusals are classified by ``services/images/refusals.py``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image
from pydantic import Field

from image_pipeline.domain.checks import Check, fail, ok, skipped, warn
from image_pipeline.domain.errors import PipelineError, TransientError
from image_pipeline.domain.redact import install_log_redaction, register_secret
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images import refusals as hf_refusals
from image_pipeline.services.images.interface import DEFAULT_MODEL, PROVIDER_INFO, ImageGenerator

log = logging.getLogger("image_pipeline.images")


IMAGES = "Hugging Face"  # the service name in preflight tables


# ----------------------------------------------------------------------------- the HTTP client
# huggingface_hub 2.4.0 sends every request through one shared httpx2 client (utils/_http.py get_session),
# and gives a timeout to only the first POST (_client.py _inner_post): the Hub mapping look-up passes
# timeout=None, and the fal/replicate result downloads and wavespeed's polling use the client's default,
# which is None. So the product installs its own client (set_client_factory, the library's documented
# seam) whose transport puts a finite timeout on every request, and none past the current generation's
# deadline.
REQUEST_TIMEOUT_S = 60.0  # any request outside a generation (preflight, Hub look-ups)
ANSWER_CAPTURE_BYTES = 65536  # a JSON answer kept for classification (a replicate prediction)


@dataclass
class _Attempt:
    """One generation attempt, as the transport sees it from the thread that runs it."""

    deadline: float
    answers: list[dict[str, Any]] = field(default_factory=list)

    def last_answer(self) -> dict[str, Any] | None:
        return self.answers[-1] if self.answers else None


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("hf_attempt", default=None)


def bounded_transport(inner: Any | None = None) -> Any:
    """A transport that gives every request finite timeouts (connect, read, write, pool), none longer
    than what is left of the current generation, and keeps the JSON answers of a generation."""
    import httpx2

    class CapturedStream(httpx2.SyncByteStream):
        """The body as the client reads it, with a copy of its start kept for classification."""

        def __init__(self, stream: Any, on_done: Any) -> None:
            self._stream = stream
            self._on_done = on_done
            self._kept = bytearray()

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._stream:
                room = ANSWER_CAPTURE_BYTES - len(self._kept)
                if room > 0:
                    self._kept.extend(chunk[:room])
                yield chunk
            self._on_done(bytes(self._kept))

        def close(self) -> None:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()

    class BoundedTransport(httpx2.BaseTransport):
        def __init__(self, wrapped: httpx2.BaseTransport) -> None:
            self.wrapped = wrapped

        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            attempt = _ATTEMPT.get()
            limit = REQUEST_TIMEOUT_S
            if attempt is not None:
                left = attempt.deadline - time.monotonic()
                if left <= 0:
                    # a poll or download after the deadline: end the abandoned generation here
                    raise httpx2.ReadTimeout("the generation's deadline has passed", request=request)
                limit = min(limit, left)
            asked = dict(request.extensions.get("timeout") or {})
            timeout = {
                key: min(float(asked[key]), limit) if asked.get(key) is not None else limit
                for key in ("connect", "read", "write", "pool")
            }
            request.extensions = {**request.extensions, "timeout": timeout}
            response = self.wrapped.handle_request(request)
            content_type = response.headers.get("content-type", "")
            if attempt is None or "json" not in content_type:
                return response

            def keep(body: bytes) -> None:
                try:
                    parsed: Any = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    parsed = None
                attempt.answers.append(
                    {
                        "url": f"{request.url.host}{request.url.path}",
                        "status": response.status_code,
                        "request_id": response.headers.get("x-request-id", ""),
                        "json": parsed,
                    }
                )

            return httpx2.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=CapturedStream(response.stream, keep),
                extensions=response.extensions,
            )

        def close(self) -> None:
            self.wrapped.close()

    return BoundedTransport(inner if inner is not None else httpx2.HTTPTransport())


_http_lock = threading.Lock()
_http_installed = False


def install_http_client(transport: Any | None = None) -> None:
    """Make huggingface_hub use the product's client: ``transport`` is what sends the bytes (the network
    by default; a test passes one that reaches a loopback emulator), always under the bounded transport."""
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import hf_request_event_hook

    def factory() -> httpx2.Client:
        return httpx2.Client(
            # the library's own hook: request id header, offline mode, debug log
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
            timeout=REQUEST_TIMEOUT_S,
            transport=bounded_transport(transport),
        )

    global _http_installed
    with _http_lock:
        set_client_factory(factory)
        _http_installed = True


def ensure_http_client() -> None:
    """Install the product's client once per process, unless one of ours is already there."""
    if not _http_installed:
        install_http_client()


class HuggingFaceGenerator(ImageGenerator):
    """``huggingface_hub.InferenceClient.text_to_image`` through an inference provider or an endpoint URL."""

    kind: ClassVar[str] = "huggingface"

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
        ensure_http_client()
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
        if status == 410:
            # the retired serverless API answers 410 to every request, GET and POST alike
            rule = hf_refusals.first_rule(hf_refusals.RULES, 410, "")
            detail = f"{where} is retired (HTTP 410)"
            return [token_check, fail(IMAGES, names[1], detail, rule.fix if rule else "")]
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
        entries = list(info.inference_provider_mapping or [])
        mapping = {m.provider: m.status for m in entries}
        # only the providers this client version can call for text-to-image are any use
        usable = sorted(
            m.provider
            for m in entries
            if m.status == "live" and m.task == "text-to-image" and _client_supports(m.provider)
        )
        pin = f"set HF_PROVIDER to one of: {', '.join(usable)}" if usable else "pick another model"
        provider = self.provider or "auto"
        if provider == "auto":
            if not entries:
                fix = "pick a model whose page lists Inference Providers, or set HF_INFERENCE_BASE_URL"
                return [*checks, fail(IMAGES, names[1], f"no provider serves {self.model}", fix)]
            # the client sends every image to the first entry, whatever its status (_providers/__init__.py)
            first = entries[0]
            order = "; or change the order at https://huggingface.co/settings/inference-providers"
            if not _client_supports(first.provider):
                import huggingface_hub

                detail = (
                    f"auto routes {self.model} to {first.provider}, which huggingface_hub "
                    f"{huggingface_hub.__version__} cannot call for text-to-image"
                )
                return [*checks, fail(IMAGES, names[1], detail, f"{pin}{order}")]
            if first.task != "text-to-image":
                detail = f"auto routes {self.model} to {first.provider}, which serves it for {first.task}"
                return [*checks, fail(IMAGES, names[1], detail, f"{pin}{order}")]
            if first.status != "live":
                detail = f"auto routes {self.model} to {first.provider}, whose status is {first.status}"
                return [*checks, warn(IMAGES, names[1], detail, f"{pin}{order}")]
            return [*checks, ok(IMAGES, names[1], f"{self.model} via {first.provider} (auto)")]
        if not _client_supports(provider):
            detail = f"HF_PROVIDER={provider} is not a text-to-image provider this client can call"
            return [*checks, fail(IMAGES, names[1], detail, pin)]
        if mapping.get(provider) == "live":
            return [*checks, ok(IMAGES, names[1], f"{self.model} via {provider}")]
        state = mapping.get(provider)
        detail = f"{provider} does not serve {self.model}" + (f" ({state})" if state else "")
        return [*checks, fail(IMAGES, names[1], detail, pin)]

    def describe(self) -> str:
        where = self.base_url or f"provider {self.provider}"
        return f"Hugging Face InferenceClient ({self.model} via {where})"

    def _provider(self) -> str:
        return "endpoint" if self.base_url else self.provider

    def _served_model(self, request: GenerationRequest) -> str:
        # An endpoint URL serves one model whatever a row asks for: record what made the image.
        return self.model if self.base_url else request.model

    def _client(self, provider: str | None) -> Any:
        from huggingface_hub import InferenceClient

        register_secret(self.token)
        install_log_redaction()
        ensure_http_client()
        if self.base_url:
            # A URL as the model makes the client POST to exactly that URL, with no Hub look-ups.
            return InferenceClient(model=self.base_url, token=self.token or None, timeout=self.timeout_s)
        return InferenceClient(provider=provider, token=self.token or None, timeout=self.timeout_s)  # type: ignore[arg-type]

    def _route(self, request: GenerationRequest) -> str:
        """The provider that will make the image: "auto" resolved the way the client resolves it (the
        first entry of the Hub's mapping, in the user's order), by the client's own function, so its
        refusals (an unsupported provider, an empty mapping) are the client's too."""
        from huggingface_hub.inference._providers import get_provider_helper

        helper = get_provider_helper(self.provider or "auto", task="text-to-image", model=request.model)  # type: ignore[arg-type]
        return str(helper.provider)

    def _generate_once(self, request: GenerationRequest, seed: int | None) -> Image.Image:
        """One attempt, bounded by ``timeout_s`` from the first byte to the decoded image: it runs in a
        thread of its own, every request of it is cut at the deadline, and the caller stops waiting then,
        so the generation slot is freed even when a download or a provider's polling never ends."""
        attempt = _Attempt(deadline=time.monotonic() + self.timeout_s)
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def work() -> None:
            _ATTEMPT.set(attempt)
            try:
                outcome["image"] = self._call(request, seed, outcome)
            except BaseException as exc:  # handed to the waiting thread
                outcome["error"] = exc
            finally:
                finished.set()

        threading.Thread(target=work, name="hf-generation", daemon=True).start()
        # a little past the deadline: the thread's own requests end at the deadline and report why
        if not finished.wait(self.timeout_s + 0.5):
            where = f" via {outcome['provider']}" if outcome.get("provider") else ""
            raise TransientError(
                f"Hugging Face{where} did not finish within {self.timeout_s:g}s", service="images"
            )
        error = outcome.get("error")
        if error is None:
            return outcome["image"]
        if isinstance(error, PipelineError):
            raise error
        raise hf_refusals.classify(
            error,
            model=request.model,
            own_model=request.model != self.model and not self.base_url,
            provider=str(outcome.get("provider") or ""),
            timeout_s=self.timeout_s,
            answer=attempt.last_answer(),
        ) from None

    def _call(self, request: GenerationRequest, seed: int | None, outcome: dict[str, Any]) -> Image.Image:
        ensure_http_client()
        provider = "endpoint" if self.base_url else self._route(request)
        outcome["provider"] = provider
        client = self._client(None if self.base_url else provider)
        image = client.text_to_image(
            request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            seed=seed,
            model=None if self.base_url else request.model,
        )
        image.load()  # decode now, so a truncated body fails here and not later
        image.info[PROVIDER_INFO] = provider
        return image


def _client_supports(provider: str) -> bool:
    """Whether this huggingface_hub knows how to call ``provider`` for text-to-image."""
    from huggingface_hub.inference._providers import PROVIDERS

    return "text-to-image" in PROVIDERS.get(provider, {})  # type: ignore[call-overload]
