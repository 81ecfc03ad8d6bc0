"""The default Hugging Face configuration (HF_TOKEN set, provider auto) through the real InferenceClient.

The client asks the Hub for the model's provider mapping and POSTs to the hard-coded router host; the
product installs its own httpx2 client (timeouts on every request) through ``set_client_factory``, and
these tests give that client a transport that sends the Hugging Face hosts to the loopback emulator.
Nothing of ours is mocked: what runs is the product's client, transport and classification.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub.inference._providers._common import _fetch_inference_provider_mapping
from huggingface_hub.inference._providers.hf_inference import _check_supported_task
from PIL import Image

from image_pipeline.domain.checks import FAIL, OK, WARN
from image_pipeline.domain.errors import CreditsDepleted, PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images.huggingface import HuggingFaceGenerator, install_http_client
from image_pipeline.testing.emulators.base import GARBAGE, TIMEOUT
from image_pipeline.testing.emulators.huggingface import (
    DEFAULT_TOKEN,
    FAL_CONTENT_MESSAGE,
    GONE_MESSAGE,
    NAMED_FAULTS,
    REPLICATE_NSFW_ERROR,
    UNSUPPORTED_PROVIDER,
    HuggingFaceEmulator,
    LoopbackTransport,
)

from .conftest import queue_prompts, read_csv, run_partitions

MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
# the endpoint each provider route counts under in the emulator
ROUTE = {
    "hf-inference": "text_to_image",
    "fal-ai": "fal_ai",
    "replicate": "replicate",
    "together": "together",
}


def _clear_client_caches() -> None:
    # huggingface_hub caches the Hub's mapping per model for the life of the process (lru_cache); each
    # test has its own emulator and mapping
    _fetch_inference_provider_mapping.cache_clear()
    _check_supported_task.cache_clear()


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch) -> Iterator[HuggingFaceEmulator]:
    """The emulator as huggingface.co, router.huggingface.co and the download hosts."""
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)  # what the client's Hub look-up sends, as in production
    with HuggingFaceEmulator() as emulator:
        install_http_client(LoopbackTransport(emulator))
        _clear_client_caches()
        try:
            yield emulator
        finally:
            install_http_client()
            _clear_client_caches()


def generator(**overrides: object) -> HuggingFaceGenerator:
    fields: dict[str, object] = {
        "token": DEFAULT_TOKEN,
        "model": MODEL,
        "provider": "auto",
        "retry_base_delay_s": 0.01,
        "timeout_s": 10.0,
    }
    fields.update(overrides)
    return HuggingFaceGenerator(**fields)  # type: ignore[arg-type]


def request(prompt: str = "a red fox", **kw: object) -> GenerationRequest:
    base: dict[str, object] = {
        "negative_prompt": "blurry",
        "model": MODEL,
        "width": 256,
        "height": 128,
        "seed": 7,
    }
    base.update(kw)
    return GenerationRequest(prompt=prompt, **base)  # type: ignore[arg-type]


def first(hf: HuggingFaceEmulator, provider: str) -> None:
    """The user's order on the Hub puts ``provider`` first, so "auto" routes there."""
    hf.providers = {provider: "live", **{p: s for p, s in hf.providers.items() if p != provider}}


# ------------------------------------------------------------------ every provider route, end to end


@pytest.mark.parametrize("provider", ["hf-inference", "fal-ai", "replicate", "together"])
def test_auto_routes_to_the_first_provider_and_records_it(hf: HuggingFaceEmulator, provider: str) -> None:
    first(hf, provider)
    hf.providers.setdefault("replicate", "live")
    image = generator().generate(request())
    assert image.provider == provider  # the provider that made it, not "auto"
    with Image.open(io.BytesIO(image.png)) as im:
        assert im.format == "PNG" and im.size == (image.width, image.height) == (256, 128)
    assert hf.count("hub_api") >= 1  # the mapping came from the Hub
    assert hf.count(ROUTE[provider]) == 1
    # fal and replicate answer a URL; the client downloads it from the provider's host
    assert hf.count("download") == (1 if provider in ("fal-ai", "replicate") else 0)
    [call] = [c for c in hf.calls if c["method"] == "POST"]
    body = call["body"]
    if provider == "fal-ai":  # fal_ai.py: width/height become image_size
        assert body["prompt"] == "a red fox" and body["image_size"] == {"width": 256, "height": 128}
    elif provider == "replicate":
        assert body["input"]["prompt"] == "a red fox" and body["input"]["seed"] == 7
    elif provider == "together":
        assert body["response_format"] == "base64" and body["model"] == MODEL
    else:
        assert body["inputs"] == "a red fox"


def test_the_real_size_is_recorded_when_the_provider_chooses_it(hf: HuggingFaceEmulator) -> None:
    # replicate's flux-schnell takes an aspect ratio, not width and height
    first(hf, "replicate")
    hf.provider_ids["replicate"] = "black-forest-labs/flux-schnell"
    hf.replicate_flux_side = 192
    image = generator().generate(request(width=256, height=128))
    assert (image.provider, image.width, image.height) == ("replicate", 192, 192)


def test_done_row_and_metadata_name_the_provider_and_the_real_size(
    hf: HuggingFaceEmulator, local_resources, instance, workbook_dir: Path
) -> None:
    first(hf, "fal-ai")
    ids = queue_prompts(workbook_dir, ["a lighthouse at dusk"])
    resources = dict(local_resources)
    resources["image_generator"] = generator(width=128, height=64)
    result = run_partitions(resources, instance, ids)
    assert result.success
    rows = read_csv(workbook_dir / "done.csv")
    header, [row] = rows[0], rows[1:]
    done = dict(zip(header, row, strict=False))
    print("Done row:", done)
    assert done.get("provider") == "fal-ai"
    assert done.get("size") == "128x64"
    [mat] = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "generated_image"
    ]
    assert mat.metadata["provider"].value == "fal-ai"


# ------------------------------------------------------------------ timeout_s bounds a generation


def test_a_hanging_download_is_cut_at_timeout_s_and_frees_the_slot(hf: HuggingFaceEmulator) -> None:
    first(hf, "fal-ai")
    hf.timeout_hold_s = 20  # the download would hang this long: huggingface_hub gives it no timeout
    hf.fail_next(TIMEOUT, endpoints=["download"])
    gen = generator(timeout_s=1.0, retry_attempts=1, concurrency=1)
    started = time.monotonic()
    with pytest.raises(TransientError, match="within 1s"):
        gen.generate(request())
    elapsed = time.monotonic() - started
    print(f"generate() returned after {elapsed:.2f}s with timeout_s=1 (download held {hf.timeout_hold_s}s)")
    assert elapsed < hf.timeout_hold_s / 2  # bounded by us, not by the server giving up
    slots = gen._request_slots()
    assert slots.acquire(blocking=False)  # the generation slot was given back
    slots.release()
    assert gen.generate(request()).provider == "fal-ai"  # and the next generation uses it


def test_a_slow_router_answer_is_cut_at_timeout_s(hf: HuggingFaceEmulator) -> None:
    first(hf, "replicate")
    hf.set_latency(3.0, endpoints=["replicate"])  # replicate holds the answer up to 60 s with Prefer: wait
    started = time.monotonic()
    with pytest.raises(TransientError, match="replicate"):
        generator(timeout_s=1.0, retry_attempts=1).generate(request())
    print(f"generate() returned after {time.monotonic() - started:.2f}s with timeout_s=1")
    live = [t for t in threading.enumerate() if t.name == "hf-generation"]
    print(f"generation threads still alive right after: {len(live)}")


# ------------------------------------------------------------------ a content refusal costs one request


@pytest.mark.parametrize("provider", ["hf-inference", "fal-ai", "replicate", "together"])
def test_a_content_refusal_fails_the_prompt_after_one_request(hf: HuggingFaceEmulator, provider: str) -> None:
    first(hf, provider)
    hf.providers.setdefault("replicate", "live")
    hf.rejected_prompts.add("forbidden")
    with pytest.raises(PromptRejected) as info:
        generator(retry_attempts=12).generate(request("something forbidden"))
    message = str(info.value)
    print(message)
    assert hf.count(ROUTE[provider]) == 1  # one paid request, not twelve
    assert "Request ID:" in message  # what Hugging Face support asks for
    assert provider in message
    if provider == "fal-ai":
        assert FAL_CONTENT_MESSAGE in message  # read from fal's {"detail": [...]}, which the client skips
    if provider == "replicate":
        assert REPLICATE_NSFW_ERROR in message


def test_named_provider_refusal_fault(hf: HuggingFaceEmulator) -> None:
    assert set(NAMED_FAULTS) >= {"provider_refusal", "unsupported_provider", "payg_402", "gone_410"}
    first(hf, "fal-ai")
    hf.fail_next("provider_refusal", endpoints=["fal_ai"])
    with pytest.raises(PromptRejected, match="content_policy_violation"):
        generator().generate(request("a harmless cat"))
    assert hf.count("fal_ai") == 1
    assert generator().generate(request("a harmless cat")).provider == "fal-ai"  # only that answer


# ------------------------------------------------------------------ refusals of us, not of the prompt


def test_payg_402_says_to_pin_another_provider_not_to_buy_credits(hf: HuggingFaceEmulator) -> None:
    first(hf, "fal-ai")
    hf.fail_next("payg_402", endpoints=["fal_ai"])
    with pytest.raises(ServiceBlocked) as info:
        generator().generate(request())
    assert not isinstance(info.value, CreditsDepleted)  # no spending pause: money does not fix it
    message = str(info.value)
    print(message)
    assert "Pay-as-you go is not enabled for provider fal-ai" in message
    assert "HF_PROVIDER" in message and "Request ID:" in message
    assert hf.count("fal_ai") == 1
    hf.fail_next(402)  # the other 402: credits gone, which pauses spending
    with pytest.raises(CreditsDepleted, match="credits"):
        generator().generate(request())


def test_the_retired_endpoint_410_stops_the_run_and_fails_the_preflight(hf: HuggingFaceEmulator) -> None:
    retired = f"https://api-inference.huggingface.co/models/{MODEL}"
    gen = generator(base_url=retired)
    with pytest.raises(ServiceBlocked) as info:
        gen.generate(request())
    message = str(info.value)
    print(message)
    assert GONE_MESSAGE in message and "HF_INFERENCE_BASE_URL" in message
    assert hf.count("text_to_image") == 1  # not retried
    checks = {c.name: c for c in gen.preflight()}
    model_check = checks["model reachable"]
    print(model_check)
    assert model_check.status == FAIL and "410" in model_check.detail
    assert "router.huggingface.co" in model_check.fix


def test_named_gone_410_fault(hf: HuggingFaceEmulator) -> None:
    hf.fail_next("gone_410", endpoints=["text_to_image"])
    with pytest.raises(ServiceBlocked, match="retired"):
        generator(provider="hf-inference").generate(request())


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("unsupported_provider", f"Provider '{UNSUPPORTED_PROVIDER}' not supported"),
        ("empty_mapping", "no Inference Provider serves"),
        ("wrong_task", "doesn't support task"),
    ],
)
def test_client_value_errors_stop_the_run(hf: HuggingFaceEmulator, setup: str, expected: str) -> None:
    if setup == "unsupported_provider":
        hf.fail_next("unsupported_provider", endpoints=["hub_api"])
    elif setup == "empty_mapping":
        hf.providers = {}
    else:
        hf.model_tasks[MODEL] = "text-to-video"
    with pytest.raises(ServiceBlocked) as info:
        generator(retry_attempts=4).generate(request())
    print(info.value)
    assert expected in str(info.value)
    assert sum(hf.count(e) for e in ROUTE.values()) == 0  # nothing was generated, nothing billed


def test_a_rows_own_model_that_no_provider_serves_fails_that_row_only(hf: HuggingFaceEmulator) -> None:
    hf.model_tasks["someone/a-text-model"] = "text-generation"
    with pytest.raises(PromptRejected, match="someone/a-text-model"):
        generator().generate(request(model="someone/a-text-model"))


def test_an_html_page_with_a_200_is_retried_then_stops_the_run(hf: HuggingFaceEmulator) -> None:
    first(hf, "fal-ai")
    hf.fail_next(GARBAGE, endpoints=["fal_ai"])  # once: a blip, retried
    assert generator().generate(request()).provider == "fal-ai"
    hf.fail_next(GARBAGE, GARBAGE, GARBAGE, endpoints=["fal_ai"])  # every try: a gateway, not the prompt
    with pytest.raises(ServiceBlocked, match="HTML") as info:
        generator(retry_attempts=3).generate(request())
    print(info.value)


# ------------------------------------------------------------------ preflight of the auto route


def test_preflight_fails_when_auto_routes_to_a_provider_this_client_cannot_call(
    hf: HuggingFaceEmulator,
) -> None:
    hf.providers = {UNSUPPORTED_PROVIDER: "live", "fal-ai": "live"}
    check = {c.name: c for c in generator().preflight()}["model reachable"]
    print(check)
    assert check.status == FAIL and UNSUPPORTED_PROVIDER in check.detail
    assert "HF_PROVIDER to one of: fal-ai" in check.fix


def test_preflight_warns_when_auto_routes_to_a_provider_that_is_not_live(hf: HuggingFaceEmulator) -> None:
    hf.providers = {"fal-ai": "error", "hf-inference": "live"}
    check = {c.name: c for c in generator().preflight()}["model reachable"]
    print(check)
    assert check.status == WARN and "fal-ai" in check.detail and "error" in check.detail
    hf.providers = {"together": "live"}
    check = {c.name: c for c in generator().preflight()}["model reachable"]
    assert check.status == OK and "via together (auto)" in check.detail


# ------------------------------------------------------------------ a whole run


def test_an_unsupported_provider_stops_the_run_with_every_prompt_queued(
    hf: HuggingFaceEmulator, local_resources, instance, workbook_dir: Path
) -> None:
    hf.providers = {UNSUPPORTED_PROVIDER: "live", "fal-ai": "live"}
    prompts = ["a fox", "a heron", "a lighthouse"]
    ids = queue_prompts(workbook_dir, prompts)
    resources = dict(local_resources)
    resources["image_generator"] = generator(width=64, height=64)
    result = run_partitions(resources, instance, ids)
    assert not result.success
    process = [r[0] for r in read_csv(workbook_dir / "process.csv")[1:]]
    assert process == prompts  # nothing FAILED, nothing removed
    done = read_csv(workbook_dir / "done.csv")[1:]
    assert done == []
    attempts = resources["ledger"].open().attempts(ids)
    assert all(attempts.get(i, 0) == 0 for i in ids), attempts
    assert sum(hf.count(e) for e in ROUTE.values()) == 0
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.step_failure_data.user_failure_data.description
    print(description)
    assert UNSUPPORTED_PROVIDER in description and "HF_PROVIDER" in description


def test_a_provider_fault_met_at_generation_stops_the_run_with_every_prompt_queued(
    hf: HuggingFaceEmulator, local_resources, instance, workbook_dir: Path
) -> None:
    # the preflight sees a healthy mapping; the Hub answers the client's own look-up (expand=
    # inferenceProviderMapping alone) with an unsupported provider first, as when a user reorders
    # providers between the check and the run
    def on_request(request, endpoint: str) -> None:
        if endpoint == "hub_api" and request.query.get("expand") == ["inferenceProviderMapping"]:
            hf.fail_next("unsupported_provider", endpoints=["hub_api"])

    first(hf, "fal-ai")
    hf.on_request = on_request
    prompts = ["a fox", "a heron"]
    ids = queue_prompts(workbook_dir, prompts)
    resources = dict(local_resources)
    resources["image_generator"] = generator(width=64, height=64)
    result = run_partitions(resources, instance, ids)
    assert not result.success
    assert [r[0] for r in read_csv(workbook_dir / "process.csv")[1:]] == prompts
    assert read_csv(workbook_dir / "done.csv")[1:] == []
    attempts = resources["ledger"].open().attempts(ids)
    assert all(attempts.get(i, 0) == 0 for i in ids), attempts
    assert hf.count("fal_ai") == 0  # nothing billed
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    descriptions = " ".join(e.step_failure_data.user_failure_data.description or "" for e in failures)
    print(descriptions)
    assert f"Provider '{UNSUPPORTED_PROVIDER}' not supported" in descriptions
    assert "preflight failed" not in descriptions  # it was the generation that met it


def test_a_rate_limit_that_mentions_a_quota_is_waited_out_not_a_credits_pause(
    hf: HuggingFaceEmulator,
) -> None:
    first(hf, "fal-ai")
    hf.rate_limit_message = "Rate limit reached: 10 requests quota per minute exceeded"
    hf.fail_next(429, endpoints=["fal_ai"])
    assert generator().generate(request()).provider == "fal-ai"  # retried, then made
    assert hf.count("fal_ai") == 2
