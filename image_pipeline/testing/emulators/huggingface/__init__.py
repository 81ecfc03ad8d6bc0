"""Loopback emulator of Hugging Face text-to-image inference, faithful on the wire.

Two ways in, as with the real service:
- an endpoint URL: ``InferenceClient(model="<base_url>/models/<org>/<name>")`` POSTs ``{"inputs": ...,
  "parameters": {...}}`` straight to that URL (contracts section 3.2);
- provider routing, the default (``HF_TOKEN`` set, provider ``auto``): the client asks the Hub
  ``GET https://huggingface.co/api/models/<id>?expand=inferenceProviderMapping`` and POSTs to the hard-coded
  ``https://router.huggingface.co/<provider>/...`` with that provider's body (huggingface_hub 2.4.0
  ``inference/_providers/*.py``). Those hosts cannot be changed by an environment variable, so a test gives
  the client a transport (``LoopbackTransport``) that sends them here; this server tells the hosts apart by
  the ``Host`` header the client set: ``router.huggingface.co``, ``huggingface.co``, the result download
  hosts of fal (``v3.fal.media``) and replicate (``replicate.delivery``), and the retired
  ``api-inference.huggingface.co``.
Answers are real image bytes, provider JSON, or the error bodies and headers the client turns into
``HfHubHTTPError`` / ``BadRequestError`` / ``ValueError`` / ``TimeoutError``.

The modules, each importing only those before it: ``wire`` (hosts, tokens, error texts, request
readers), ``render`` (the images), ``state`` (what the service holds, the knobs, shared helpers), ``hub``
(the Hub API, downloads, the retired API), ``providers`` (hf-inference and the fal-ai, replicate and
together routes), ``faults`` (named and injected faults), ``server`` (``HuggingFaceEmulator``: routing;
``LoopbackTransport``). This module is the package's interface.
"""

from image_pipeline.testing.emulators.huggingface.faults import NAMED_FAULTS, UNSUPPORTED_PROVIDER
from image_pipeline.testing.emulators.huggingface.render import render_image
from image_pipeline.testing.emulators.huggingface.server import HuggingFaceEmulator, LoopbackTransport
from image_pipeline.testing.emulators.huggingface.wire import (
    CREDITS_MESSAGE,
    DEFAULT_TOKEN,
    DOWNLOAD_HOSTS,
    FAL_CONTENT_MESSAGE,
    FAL_MEDIA_HOST,
    GONE_MESSAGE,
    HOSTS,
    HUB_HOST,
    INVALID_CREDENTIALS,
    LEGACY_HOST,
    PAYG_MESSAGE,
    PROVIDER_QUOTA_MESSAGE,
    RATE_LIMIT_MESSAGE,
    REJECTED_MESSAGE,
    REPLICATE_MEDIA_HOST,
    REPLICATE_NSFW_ERROR,
    ROUTER_HOST,
    model_of,
)

__all__ = [
    "CREDITS_MESSAGE",
    "DEFAULT_TOKEN",
    "DOWNLOAD_HOSTS",
    "FAL_CONTENT_MESSAGE",
    "FAL_MEDIA_HOST",
    "GONE_MESSAGE",
    "HOSTS",
    "HUB_HOST",
    "INVALID_CREDENTIALS",
    "LEGACY_HOST",
    "NAMED_FAULTS",
    "PAYG_MESSAGE",
    "PROVIDER_QUOTA_MESSAGE",
    "RATE_LIMIT_MESSAGE",
    "REJECTED_MESSAGE",
    "REPLICATE_MEDIA_HOST",
    "REPLICATE_NSFW_ERROR",
    "ROUTER_HOST",
    "UNSUPPORTED_PROVIDER",
    "HuggingFaceEmulator",
    "LoopbackTransport",
    "model_of",
    "render_image",
]
