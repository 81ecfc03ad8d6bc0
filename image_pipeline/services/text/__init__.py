"""The text model that writes new prompts for the queue refill: ``PromptWriter`` (``writer``), through
``huggingface_hub.InferenceClient.chat_completion`` on the Hugging Face router or on a local
OpenAI-compatible server, and the classes of its refusals (``refusals``)."""

from image_pipeline.services.text.refusals import TEXT_SERVICE, ModelRefused
from image_pipeline.services.text.writer import DEFAULT_TEXT_MODEL, PromptWriter

__all__ = ["DEFAULT_TEXT_MODEL", "TEXT_SERVICE", "ModelRefused", "PromptWriter"]
