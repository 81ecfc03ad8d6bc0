"""The Hugging Face generator through InferenceClient against the loopback text-to-image emulator."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from image_pipeline.domain.errors import CreditsDepleted, PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.testing.emulators.base import GARBAGE, TIMEOUT
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN

MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


def generator(emulator, **overrides) -> HuggingFaceGenerator:
    fields = {
        "token": DEFAULT_TOKEN,
        "base_url": f"{emulator.base_url}/models/{MODEL}",
        "model": MODEL,
        "retry_base_delay_s": 0.01,
        "timeout_s": 5.0,
    }
    fields.update(overrides)
    return HuggingFaceGenerator(**fields)


def request(prompt: str = "a red fox", **kw) -> GenerationRequest:
    base = {"negative_prompt": "blurry", "model": MODEL, "width": 256, "height": 128, "seed": 42}
    base.update(kw)
    return GenerationRequest(prompt=prompt, **base)


def test_generates_a_png_of_the_requested_size(hf_emulator) -> None:
    image = generator(hf_emulator).generate(request())
    assert (image.width, image.height, image.seed, image.model) == (256, 128, 42, MODEL)
    with Image.open(io.BytesIO(image.png)) as im:
        assert im.format == "PNG" and im.size == (256, 128)
    [call] = hf_emulator.calls
    assert call["body"] == {
        "inputs": "a red fox",
        "parameters": {"negative_prompt": "blurry", "height": 128, "width": 256, "seed": 42},
    }
    assert call["authorized"]


def test_a_seed_is_chosen_and_recorded_when_the_row_has_none(hf_emulator) -> None:
    image = generator(hf_emulator).generate(request(seed=None))
    assert isinstance(image.seed, int)
    assert hf_emulator.calls[0]["body"]["parameters"]["seed"] == image.seed


def test_model_loading_503_is_retried_after_estimated_time(hf_emulator, caplog) -> None:
    hf_emulator.loading_for_s = 0.3
    image = generator(hf_emulator).generate(request())
    assert image.width == 256
    statuses = [c["status"] for c in hf_emulator.calls]
    assert statuses[0] == 503 and statuses[-1] == 200


def test_429_and_5xx_are_retried(hf_emulator) -> None:
    hf_emulator.fail_next(429, 500)
    assert generator(hf_emulator).generate(request()).width == 256
    assert hf_emulator.count("text_to_image") == 3


def test_credits_depleted_is_not_retried(hf_emulator) -> None:
    hf_emulator.credits_depleted = True
    with pytest.raises(CreditsDepleted, match="402"):
        generator(hf_emulator).generate(request())
    assert hf_emulator.count("text_to_image") == 1


def test_bad_token_is_not_retried_and_not_shown(hf_emulator) -> None:
    with pytest.raises(ServiceBlocked, match="401") as info:
        generator(hf_emulator, token="hf_wrongwrongwrongwrong").generate(request())
    assert "hf_wrongwrongwrongwrong" not in str(info.value)
    assert hf_emulator.count("text_to_image") == 1


def test_rejected_prompt_fails_the_prompt_only(hf_emulator) -> None:
    hf_emulator.rejected_prompts.add("forbidden")
    with pytest.raises(PromptRejected, match="400"):
        generator(hf_emulator).generate(request("something forbidden"))
    assert hf_emulator.count("text_to_image") == 1


def test_unknown_default_model_blocks_the_run(hf_emulator) -> None:
    hf_emulator.unknown_models.add(MODEL)
    with pytest.raises(ServiceBlocked, match="HF_MODEL"):
        generator(hf_emulator).generate(request())


def test_non_image_bytes_are_retried_then_reported(hf_emulator) -> None:
    hf_emulator.fail_next(GARBAGE, GARBAGE, GARBAGE, GARBAGE)
    with pytest.raises(TransientError, match="not an image"):
        generator(hf_emulator).generate(request())
    assert hf_emulator.count("text_to_image") == 4


def test_timeout_is_finite_and_retried(hf_emulator) -> None:
    hf_emulator.timeout_hold_s = 3
    hf_emulator.fail_next(TIMEOUT)
    image = generator(hf_emulator, timeout_s=0.5).generate(request())
    assert image.width == 256 and hf_emulator.count("text_to_image") == 2


def test_unreachable_endpoint_is_transient(hf_emulator) -> None:
    gen = generator(hf_emulator, retry_attempts=1)
    hf_emulator.stop()
    with pytest.raises(TransientError, match="unreachable"):
        gen.generate(request())
