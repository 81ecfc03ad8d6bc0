"""The Hugging Face text-to-image emulator, driven by the real ``huggingface_hub.InferenceClient``."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import huggingface_hub
import PIL
import pytest
import requests
from huggingface_hub import InferenceClient
from huggingface_hub.errors import BadRequestError, HfHubHTTPError, InferenceTimeoutError
from PIL import Image

from image_pipeline.testing.emulators.base import GARBAGE, TIMEOUT
from image_pipeline.testing.emulators.huggingface import CREDITS_MESSAGE, HuggingFaceEmulator, render_image


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HuggingFaceEmulator]:
    # huggingface_hub reads these at import time, so the constants are patched as well as the environment:
    # no telemetry call to the real Hub, and no developer token leaking into (or out of) the tests
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    emulator = HuggingFaceEmulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def client(hf: HuggingFaceEmulator, model: str = "stabilityai/sdxl", **kwargs: object) -> InferenceClient:
    options: dict[str, object] = {"token": hf.token, "timeout": 5}
    options.update(kwargs)
    return InferenceClient(model=f"{hf.base_url}/models/{model}", **options)  # type: ignore[arg-type]


def test_text_to_image_returns_a_real_image_of_the_requested_size(hf: HuggingFaceEmulator) -> None:
    img = client(hf).text_to_image("a cat", width=256, height=128, seed=3, negative_prompt="blurry")
    assert isinstance(img, Image.Image) and img.size == (256, 128)
    (call,) = hf.calls
    assert call["path"] == "/models/stabilityai/sdxl" and call["model"] == "stabilityai/sdxl"
    assert call["authorized"] is True and call["status"] == 200
    assert call["body"] == {
        "inputs": "a cat",
        "parameters": {"negative_prompt": "blurry", "height": 128, "width": 256, "seed": 3},
    }
    assert hf.count("text_to_image") == 1
    assert all("authorization" not in r.headers for r in hf.requests)


def test_images_are_deterministic_per_prompt_and_seed(hf: HuggingFaceEmulator) -> None:
    c = client(hf)
    a = c.text_to_image("a fox", width=64, height=64, seed=1).tobytes()
    assert c.text_to_image("a fox", width=64, height=64, seed=1).tobytes() == a
    assert c.text_to_image("a fox", width=64, height=64, seed=2).tobytes() != a
    assert c.text_to_image("a dog", width=64, height=64, seed=1).tobytes() != a
    assert c.text_to_image("no size given").size == (512, 512)


def test_wire_format_png_jpeg_and_request_id(hf: HuggingFaceEmulator) -> None:
    url = f"{hf.base_url}/models/x/y"
    auth = {"Authorization": f"Bearer {hf.token}"}
    resp = requests.post(url, json={"inputs": "cat", "parameters": {}}, headers=auth, timeout=5)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/png"
    assert resp.content.startswith(b"\x89PNG\r\n\x1a\n") and resp.headers["x-request-id"]
    hf.image_format = "jpeg"
    resp = requests.post(url, json={"inputs": "cat"}, headers=auth, timeout=5)
    assert resp.headers["Content-Type"] == "image/jpeg" and resp.content.startswith(b"\xff\xd8")
    denied = requests.post(url, json={"inputs": "cat"}, timeout=5)
    assert denied.status_code == 401 and denied.headers["x-request-id"]


def test_blank_image_mimics_the_safety_filter(hf: HuggingFaceEmulator) -> None:
    hf.blank = True
    img = client(hf).text_to_image("anything", width=64, height=64)
    assert img.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))


def test_render_of_a_1024_square_reports_its_time() -> None:
    # the figure is printed for the benchmark's latency budget; speed is not asserted in tests
    best = min(_timed(lambda: render_image("a castle", 7, 1024, 1024)) for _ in range(3))
    print(f"render_image 1024x1024: {best * 1000:.1f} ms (best of 3)")
    with Image.open(io.BytesIO(render_image("a castle", 7, 1024, 1024))) as im:
        assert im.size == (1024, 1024)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------- errors the client raises
def test_wrong_or_missing_token_is_401(hf: HuggingFaceEmulator) -> None:
    with pytest.raises(HfHubHTTPError) as err:
        client(hf, token="hf_wrong").text_to_image("a cat")
    assert err.value.response.status_code == 401
    assert err.value.response.json() == {"error": "Invalid credentials in Authorization header"}
    assert type(err.value) is HfHubHTTPError  # not RepositoryNotFoundError
    with pytest.raises(HfHubHTTPError) as err:
        client(hf, token=None).text_to_image("a cat")
    assert err.value.response.status_code == 401
    assert [c["authorized"] for c in hf.calls] == [False, False]


def test_credits_depleted_is_402(hf: HuggingFaceEmulator) -> None:
    hf.credits_depleted = True
    with pytest.raises(HfHubHTTPError) as err:
        client(hf).text_to_image("a cat")
    assert err.value.response.status_code == 402
    assert err.value.server_message is not None and CREDITS_MESSAGE in err.value.server_message


def test_unknown_model_is_404(hf: HuggingFaceEmulator) -> None:
    hf.unknown_models.add("nobody/nothing")
    with pytest.raises(HfHubHTTPError) as err:
        client(hf, model="nobody/nothing").text_to_image("a cat")
    assert err.value.response.status_code == 404
    assert err.value.response.json() == {"error": "Model nobody/nothing does not exist"}
    assert client(hf).text_to_image("a cat", width=64, height=64).size == (64, 64)


def test_loading_model_is_503_with_estimated_time_then_recovers(hf: HuggingFaceEmulator) -> None:
    hf.loading_for_s = 0.4
    with pytest.raises(HfHubHTTPError) as err:
        client(hf).text_to_image("a cat")
    assert not isinstance(err.value, InferenceTimeoutError)
    assert err.value.response.status_code == 503
    body = err.value.response.json()
    assert body["error"] == "Model stabilityai/sdxl is currently loading"
    assert 0 < body["estimated_time"] <= 0.4
    time.sleep(0.45)
    assert client(hf).text_to_image("a cat", width=64, height=64).size == (64, 64)


def test_rejected_prompt_and_bad_size_are_bad_requests(hf: HuggingFaceEmulator) -> None:
    hf.rejected_prompts.add("forbidden")
    with pytest.raises(BadRequestError) as err:
        client(hf).text_to_image("a FORBIDDEN thing")
    assert err.value.response.status_code == 400 and "error" in err.value.response.json()
    hf.reject_if = lambda prompt: prompt.startswith("nope")
    with pytest.raises(BadRequestError):
        client(hf).text_to_image("nope, not this")
    with pytest.raises(BadRequestError, match="divisible by 8"):
        client(hf).text_to_image("a cat", width=250, height=256)


def test_max_concurrent_rejects_the_overflow_with_429(hf: HuggingFaceEmulator) -> None:
    hf.max_concurrent = 2
    hf.render_delay_s = 0.5
    results: list[object] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            outcome: object = client(hf).text_to_image("a cat", width=64, height=64)
        except HfHubHTTPError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    errors = [r for r in results if isinstance(r, HfHubHTTPError)]
    assert len(results) == 4 and len(errors) == 2
    for exc in errors:
        assert exc.response.status_code == 429
        assert exc.response.json() == {"error": "Rate limit reached. Please retry later."}
        assert exc.response.headers["RateLimit"] == '"api";r=0;t=1'
        assert "you have reached your 'api' rate limit" in str(exc)
    # the two admitted requests overlap with at least one rejected one; a rejected one may be done
    # before the last thread connects, so 4 at once is likely but not guaranteed
    assert 3 <= hf.max_in_flight_seen <= 4


# ----------------------------------------------------------------- injected faults
def test_timeout_fault_raises_inference_timeout_error(hf: HuggingFaceEmulator) -> None:
    hf.timeout_hold_s = 3
    hf.fail_next(TIMEOUT)
    start = time.monotonic()
    with pytest.raises(InferenceTimeoutError):
        client(hf, timeout=1).text_to_image("a cat")
    assert time.monotonic() - start < 2.5


def test_garbage_fault_is_an_unidentified_image(hf: HuggingFaceEmulator) -> None:
    hf.fail_next(GARBAGE)
    with pytest.raises(PIL.UnidentifiedImageError):
        client(hf).text_to_image("a cat")


def test_injected_status_faults_have_the_hf_error_shape(hf: HuggingFaceEmulator) -> None:
    hf.fail_next(503, 500, 429)
    c = client(hf)
    with pytest.raises(HfHubHTTPError) as err:
        c.text_to_image("a cat")
    assert err.value.response.status_code == 503
    assert err.value.response.json()["estimated_time"] == 20.0
    with pytest.raises(HfHubHTTPError) as err:
        c.text_to_image("a cat")
    assert err.value.response.status_code == 500 and err.value.response.json() == {
        "error": "Internal Server Error"
    }
    with pytest.raises(HfHubHTTPError) as err:
        c.text_to_image("a cat")
    assert err.value.response.status_code == 429 and err.value.response.headers["x-request-id"]
    assert c.text_to_image("a cat", width=64, height=64).size == (64, 64)
