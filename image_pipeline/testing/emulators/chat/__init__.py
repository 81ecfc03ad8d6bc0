"""Loopback emulator of an OpenAI-compatible chat-completion server (``ChatEmulator``, in ``server``): the
``POST /v1/chat/completions`` that the Hugging Face router and the local servers (llama.cpp, Ollama, vLLM)
speak, with their error shapes, for the queue refill's tests."""

from image_pipeline.testing.emulators.chat.server import (
    CHAT_TOKEN,
    MODEL_NOT_FOUND,
    ChatEmulator,
    completion,
)

__all__ = ["CHAT_TOKEN", "MODEL_NOT_FOUND", "ChatEmulator", "completion"]
