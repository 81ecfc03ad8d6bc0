"""The A1111 emulator on the wire, driven with plain requests: the shapes a real webui answers with."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from image_pipeline.testing.emulators.a1111 import A1111Emulator, Checkpoint, closest_match

TXT2IMG = "/sdapi/v1/txt2img"


@pytest.fixture
def a1111() -> Iterator[A1111Emulator]:
    with A1111Emulator() as emulator:
        yield emulator


def post(emulator: A1111Emulator, body: dict, **kw) -> requests.Response:
    return requests.post(emulator.base_url + TXT2IMG, json=body, timeout=10, **kw)


def test_txt2img_answers_a_png_the_seed_in_info_and_echoes_seed_minus_one(a1111) -> None:
    answer = post(a1111, {"prompt": "a fox", "width": 64, "height": 72, "seed": -1, "steps": 3})
    assert answer.status_code == 200
    payload = answer.json()
    assert payload["parameters"]["seed"] == -1
    assert isinstance(payload["info"], str)  # a JSON string, not an object
    info = json.loads(payload["info"])
    [b64] = payload["images"]
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        assert image.format == "PNG" and image.size == (64, 72)
        assert f"Seed: {info['seed']}" in image.info["parameters"]
    assert info["all_seeds"] == [info["seed"]] and 0 <= info["seed"] < 4294967294
    assert f"Seed: {info['seed']}" in info["infotexts"][0]
    assert info["sd_model_name"] == "sd_xl_base_1.0"
    assert a1111.jobs_run == 1


def test_a_size_is_rounded_down_to_a_multiple_of_8_and_a_batch_has_consecutive_seeds(a1111) -> None:
    payload = post(a1111, {"prompt": "x", "width": 70, "height": 64, "seed": 5, "batch_size": 2}).json()
    info = json.loads(payload["info"])
    assert info["all_seeds"] == [5, 6] and len(payload["images"]) == 2
    assert (info["width"], info["height"]) == (64, 64)


def test_an_unknown_checkpoint_is_dropped_silently(a1111) -> None:
    body = {"prompt": "x", "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "nope"}}
    answer = post(a1111, body)
    assert answer.status_code == 200
    assert json.loads(answer.json()["info"])["sd_model_name"] == "sd_xl_base_1.0"
    body["override_settings"] = {"sd_model_checkpoint": "juggernautXL_v9"}
    assert json.loads(post(a1111, body).json()["info"])["sd_model_name"] == "juggernautXL_v9"
    # restored afterwards by default
    assert (
        requests.get(a1111.base_url + "/sdapi/v1/options", timeout=5)
        .json()["sd_model_checkpoint"]
        .startswith("sd_xl_base_1.0.safetensors [")
    )


def test_checkpoint_aliases_resolve_as_the_server_resolves_them() -> None:
    ckpt = Checkpoint("flux/flux1-dev-fp8.safetensors")
    other = Checkpoint("sd_xl_base_1.0.safetensors")
    for alias in (
        ckpt.title,
        ckpt.model_name,
        ckpt.shorthash,
        ckpt.sha256,
        ckpt.name,
        ckpt.stem,
        "flux1-dev",
    ):
        assert closest_match([other, ckpt], alias) == ckpt, alias
    assert closest_match([other, ckpt], "juggernaut") is None


def test_a_wrong_type_is_fastapis_422(a1111) -> None:
    answer = post(a1111, {"prompt": "x", "steps": "abc"})
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": [
            {"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}
        ]
    }
    assert a1111.jobs_run == 0


def test_login_answers_in_the_webui_error_shape() -> None:
    with A1111Emulator(api_auth="ann:s3cret-pass") as emulator:
        missing = requests.get(emulator.base_url + "/sdapi/v1/sd-models", timeout=5)
        wrong = requests.get(emulator.base_url + "/sdapi/v1/sd-models", auth=("ann", "nope"), timeout=5)
        right = requests.get(
            emulator.base_url + "/sdapi/v1/sd-models", auth=("ann", "s3cret-pass"), timeout=5
        )
    assert (missing.status_code, missing.json()["detail"]) == (401, "Not authenticated")
    assert (wrong.status_code, wrong.json()["detail"]) == (401, "Incorrect username or password")
    assert set(wrong.json()) == {"error", "detail", "body", "errors"}
    assert right.status_code == 200 and len(right.json()) == 3


def test_without_api_every_route_is_404() -> None:
    with A1111Emulator(api_enabled=False) as emulator:
        answer = post(emulator, {"prompt": "x"})
    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})


def test_sdnext_without_a_model_answers_200_with_no_image() -> None:
    with A1111Emulator(flavour="sdnext", loaded=None) as emulator:
        payload = post(emulator, {"prompt": "x", "width": 64, "height": 64}).json()
    assert payload["images"] == [] and payload["info"] == ""


def test_interrupt_stops_the_running_job_which_still_answers_with_an_image() -> None:
    with A1111Emulator(generation_s=5.0) as emulator:
        answers: list[requests.Response] = []
        worker = threading.Thread(
            target=lambda: answers.append(post(emulator, {"prompt": "x", "width": 64, "height": 64}))
        )
        started = time.monotonic()
        worker.start()
        while emulator.job_state["job_count"] == 0 and time.monotonic() - started < 5:
            time.sleep(0.01)
        progress = requests.get(emulator.base_url + "/sdapi/v1/progress", timeout=5).json()
        assert progress["state"]["job_count"] == 1
        assert requests.post(emulator.base_url + "/sdapi/v1/interrupt", timeout=5).json() == {}
        worker.join(10)
        wall = time.monotonic() - started
    print(f"interrupted job answered after {wall:.2f}s of a 5 s generation")
    assert answers[0].status_code == 200 and len(answers[0].json()["images"]) == 1
    assert emulator.jobs_interrupted == 1 and emulator.jobs[0]["interrupted"]


def test_jobs_run_one_at_a_time_in_arrival_order() -> None:
    with A1111Emulator(generation_s=0.1) as emulator:
        threads = []
        for i in range(4):
            body = {"prompt": f"p{i}", "width": 64, "height": 64}
            threads.append(threading.Thread(target=post, args=(emulator, body)))
            threads[-1].start()
            time.sleep(0.03)  # arrive in order, while the first job still runs
        for thread in threads:
            thread.join(10)
    assert emulator.max_concurrent_jobs == 1 and emulator.queue_lock.max_waiting >= 2
    assert [job["prompt"] for job in emulator.jobs] == ["p0", "p1", "p2", "p3"]


def test_injected_oom_has_the_webui_error_shape(a1111) -> None:
    a1111.fail_next("oom", endpoints=["txt2img"])
    answer = post(a1111, {"prompt": "x"})
    assert answer.status_code == 500
    body = answer.json()
    assert body["error"] == "OutOfMemoryError" and "CUDA out of memory" in body["errors"]
    assert set(body) == {"error", "detail", "body", "errors"}
