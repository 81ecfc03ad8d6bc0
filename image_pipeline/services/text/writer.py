"""``PromptWriter``: a text model that writes prompts, through ``InferenceClient.chat_completion``.

Two ways to reach a model, one client: without ``base_url`` the Hugging Face router
(``https://router.huggingface.co/v1/chat/completions``, the HF token, the model id in the body); with
``base_url`` any OpenAI-compatible server (llama.cpp's ``llama-server``, Ollama, vLLM, a dedicated
endpoint): huggingface_hub 2.4 posts to ``<base_url>/v1/chat/completions`` (``/chat/completions`` when the
URL ends in ``/v1``; as is when it ends in ``/chat/completions``: ``_providers/hf_inference.py
_build_chat_completion_url``) and puts ``model`` in the body, which is how those servers pick a model.

The requests go through the product's own HTTP client (``services/images/huggingface.py``
``ensure_http_client``): finite timeouts on every request. Refusals are typed by ``refusals.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import dagster as dg
from pydantic import Field

from image_pipeline.domain.checks import Check, fail, ok
from image_pipeline.domain.errors import PipelineError
from image_pipeline.domain.redact import install_log_redaction, register_secret
from image_pipeline.services.images.huggingface import ensure_http_client
from image_pipeline.services.text.refusals import classify

# A small instruct model the router serves from several providers (hf.co/models?inference_provider=all)
DEFAULT_TEXT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ROUTER = "the Hugging Face router"


class PromptWriter(dg.ConfigurableResource):
    """A chat model that writes new image prompts (the queue refill), on the HF router or a local server."""

    preflight_service: ClassVar[str] = "Text model"

    token: str | None = Field(
        default=None,
        description="Hugging Face token (bind with EnvVar('HF_TOKEN')); a local server ignores it.",
    )
    model: str = Field(
        default=DEFAULT_TEXT_MODEL, description="The chat model's id (or a local server's name)."
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "An OpenAI-compatible server instead of the HF router, e.g. http://127.0.0.1:8080 (llama.cpp), "
            "http://127.0.0.1:11434 (Ollama), http://127.0.0.1:8000 (vLLM); /v1/chat/completions is appended."
        ),
    )
    timeout_s: float = Field(default=120.0, description="Seconds one chat completion may take.")
    max_tokens: int = Field(default=1200, description="Upper bound of the answer's length, in tokens.")
    temperature: float = Field(default=0.9, description="Sampling temperature: higher, more varied prompts.")

    def describe(self) -> str:
        return f"{self.model} via {self.base_url or ROUTER}"

    def _client(self) -> Any:
        from huggingface_hub import InferenceClient

        register_secret(self.token)
        install_log_redaction()
        ensure_http_client()
        if self.base_url:
            return InferenceClient(base_url=self.base_url, token=self.token or None, timeout=self.timeout_s)
        return InferenceClient(token=self.token or None, timeout=self.timeout_s)

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The model's answer to ``messages`` (its text; "" when it said nothing). Raises the typed
        errors of ``refusals.py``: never the client's own exceptions."""
        where = self.base_url or ROUTER
        try:
            output = self._client().chat_completion(
                messages, model=self.model, max_tokens=self.max_tokens, temperature=self.temperature
            )
        except PipelineError:
            raise
        except Exception as exc:
            raise classify(exc, model=self.model, where=where) from None
        choices = getattr(output, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        return str(getattr(message, "content", None) or "")

    def preflight(self) -> list[Check]:
        """Only the configuration: a check that calls the model would spend a request each time."""
        name = "configured"
        if not self.base_url and not self.token:
            return [
                fail(
                    self.preflight_service,
                    name,
                    "no HF_TOKEN for the HF router",
                    "set HF_TOKEN or IMAGE_PIPELINE_REFILL_BASE_URL",
                )
            ]
        return [ok(self.preflight_service, name, self.describe())]
