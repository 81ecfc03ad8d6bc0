"""The ComfyUI backend through real HTTP against the loopback ComfyUI emulator."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from image_pipeline.domain.errors import PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images import comfy_workflow as wf
from image_pipeline.services.images.comfyui import ComfyUIGenerator
from image_pipeline.testing.emulators.comfyui import ComfyUIEmulator


@pytest.fixture
def comfy() -> Iterator[ComfyUIEmulator]:
    emulator = ComfyUIEmulator(seconds_per_job=0.02).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def generator(emulator: ComfyUIEmulator, **overrides: object) -> ComfyUIGenerator:
    fields: dict[str, object] = {
        "base_url": emulator.base_url,
        "workflow": "sdxl",
        "width": 64,
        "height": 64,
        "poll_interval_s": 0.01,
        "timeout_s": 10.0,
        "retry_attempts": 2,
        "retry_base_delay_s": 0.01,
    }
    fields.update(overrides)
    return ComfyUIGenerator(**fields)  # type: ignore[arg-type]


def request(prompt: str = "a red fox", **kw: object) -> GenerationRequest:
    base: dict[str, object] = {
        "negative_prompt": "blurry",
        "model": "",
        "width": 64,
        "height": 64,
        "seed": 42,
    }
    base.update(kw)
    return GenerationRequest(prompt=prompt, **base)  # type: ignore[arg-type]


def write_workflow(tmp_path: Path, graph: dict) -> str:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(graph))
    return str(path)


# ----------------------------------------------------------------------------- happy paths
def test_sdxl_workflow_gets_our_prompt_seed_size_and_checkpoint(comfy: ComfyUIEmulator) -> None:
    image = generator(comfy).generate(request(width=96, height=64, seed=7))
    with Image.open(io.BytesIO(image.png)) as im:
        assert im.format == "PNG" and im.size == (96, 64)
    assert (image.seed, image.model, image.provider) == (7, "sd_xl_base_1.0.safetensors", "comfyui")
    [job] = comfy.jobs
    assert job["positive"] == ["a red fox"] and job["negative"] == ["blurry"]
    assert (job["seed"], job["width"], job["height"]) == (7, 96, 64)
    assert job["models"] == ["sd_xl_base_1.0.safetensors"]
    [body] = comfy.prompts
    # our prompt_id was honoured: the job ran under it
    assert job["prompt_id"] == body["prompt_id"] and job["client_id"] == body["client_id"]
    assert comfy.count("GET /history/*") >= 1 and comfy.count("GET /view") == 1


def test_flux_workflow_with_a_row_model_and_no_negative_node(comfy: ComfyUIEmulator, caplog) -> None:
    gen = generator(comfy, workflow="flux")
    image = gen.generate(request(model="flux1-schnell.safetensors", seed=5))
    [job] = comfy.jobs
    assert job["positive"] == ["a red fox"] and job["negative"] == []
    assert job["models"] == ["flux1-schnell.safetensors"] and job["seed"] == 5
    assert image.model == "flux1-schnell.safetensors"
    assert "no negative prompt node" in caplog.text
    assert gen.generate(request(model="", negative_prompt=None)).model == "flux1-dev.safetensors"


def test_configured_default_model_is_injected(comfy: ComfyUIEmulator) -> None:
    gen = generator(comfy, model="v1-5-pruned-emaonly.safetensors")
    req = request(model="v1-5-pruned-emaonly.safetensors")  # what intake puts in when the row names none
    assert gen.generate(req).model == "v1-5-pruned-emaonly.safetensors"
    assert comfy.jobs[-1]["models"] == ["v1-5-pruned-emaonly.safetensors"]


# ----------------------------------------------------------------------------- the cache and the seed
def test_new_seed_per_image_defeats_the_cache_and_an_identical_graph_is_served_from_it(
    comfy: ComfyUIEmulator,
) -> None:
    gen = generator(comfy)
    first, second = gen.generate(request(seed=None)), gen.generate(request(seed=None))
    print("seeds", first.seed, second.seed)
    assert first.seed != second.seed and first.png != second.png
    assert 0 <= first.seed < 2**31 and (comfy.jobs_executed, comfy.cached_hits) == (2, 0)
    # the same graph again, straight to the server: nothing runs, history points at the previous file
    graph = comfy.prompts[-1]["prompt"]
    answer = requests.post(f"{comfy.base_url}/prompt", json={"prompt": graph}, timeout=5).json()
    entry: dict = {}
    for _ in range(500):
        entry = requests.get(f"{comfy.base_url}/api/history/{answer['prompt_id']}", timeout=5).json()
        if entry:
            break
        time.sleep(0.01)
    [image] = entry[answer["prompt_id"]]["outputs"]["9"]["images"]
    assert image["filename"] == comfy.jobs[-1]["filename"]
    assert (comfy.jobs_executed, comfy.cached_hits) == (2, 1)


# ----------------------------------------------------------------------------- validation refusals
def test_a_checkpoint_the_row_chose_that_is_not_installed_fails_the_row(comfy: ComfyUIEmulator) -> None:
    with pytest.raises(PromptRejected) as caught:
        generator(comfy).generate(request(model="dreamshaper_8.safetensors"))
    text = str(caught.value)
    print(text)
    assert '#4 CheckpointLoaderSimple "Load Checkpoint" input ckpt_name: Value not in list' in text
    assert "dreamshaper_8.safetensors" in text and caught.value.status == 400
    assert comfy.jobs_executed == 0


def test_the_configured_default_checkpoint_not_installed_blocks_the_service(comfy: ComfyUIEmulator) -> None:
    gen = generator(comfy, model="missing.safetensors")
    with pytest.raises(
        ServiceBlocked, match="configured model 'missing.safetensors' is not installed"
    ) as caught:
        gen.generate(request(model="missing.safetensors"))
    assert "COMFYUI_MODEL" in str(caught.value)


def test_a_missing_custom_node_blocks_the_service_and_the_doctor_names_it(
    comfy: ComfyUIEmulator, tmp_path: Path
) -> None:
    graph = wf.load_workflow("sdxl")
    graph["10"] = {
        "class_type": "UltimateSDUpscale",
        "inputs": {"image": ["8", 0]},
        "_meta": {"title": "Upscale"},
    }
    graph["9"]["inputs"]["images"] = ["10", 0]
    gen = generator(comfy, workflow=write_workflow(tmp_path, graph))
    with pytest.raises(ServiceBlocked) as caught:
        gen.generate(request())
    text = str(caught.value)
    print(text)
    assert "UltimateSDUpscale does not exist" in text and '#10 UltimateSDUpscale "Upscale"' in text
    rows = {c.name: c for c in gen.preflight()}
    assert rows["nodes installed"].failed and "UltimateSDUpscale" in rows["nodes installed"].detail
    assert rows["model installed"].status == "skip"


def test_other_outputs_failing_validation_do_not_stop_ours(comfy: ComfyUIEmulator, tmp_path: Path) -> None:
    graph = wf.load_workflow("sdxl")
    graph["20"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0]}}  # no vae: invalid
    graph["21"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}
    image = generator(comfy, workflow=write_workflow(tmp_path, graph)).generate(request())
    assert image.width == 64 and comfy.jobs_executed == 1
    assert [j["prompt_id"] for j in comfy.jobs] == [comfy.prompts[0]["prompt_id"]]


def test_the_emulator_refuses_a_negative_seed_like_comfyui() -> None:
    with ComfyUIEmulator() as comfy:
        graph = wf.load_workflow("sdxl")
        graph["3"]["inputs"]["seed"] = -1
        answer = requests.post(f"{comfy.base_url}/prompt", json={"prompt": graph}, timeout=5)
        assert answer.status_code == 400
        body = answer.json()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        [error] = body["node_errors"]["3"]["errors"]
        assert error["type"] == "value_smaller_than_min" and error["extra_info"]["input_name"] == "seed"
        assert body["node_errors"]["3"]["dependent_outputs"] == ["9"]
        del graph["3"]["inputs"]["steps"]
        graph["3"]["inputs"]["seed"] = 1
        body = requests.post(f"{comfy.base_url}/prompt", json={"prompt": graph}, timeout=5).json()
        assert body["node_errors"]["3"]["errors"][0]["type"] == "required_input_missing"


# ----------------------------------------------------------------------------- configuration
def test_ui_format_and_unlocatable_seed_are_configuration_errors(
    comfy: ComfyUIEmulator, tmp_path: Path
) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    gen = generator(comfy, workflow=str(ui))
    with pytest.raises(ServiceBlocked, match=r"Export \(API\)"):
        gen.generate(request())
    assert gen.preflight()[0].failed
    graph = wf.load_workflow("sdxl")
    graph["3"]["class_type"] = "MyFancySampler"
    graph["6"]["_meta"] = {"title": "positive"}
    with pytest.raises(ServiceBlocked, match="no node takes the seed: give the sampler") as caught:
        generator(comfy, workflow=write_workflow(tmp_path, graph)).generate(request())
    assert "'seed'" in str(caught.value) and not comfy.prompts


# ----------------------------------------------------------------------------- runtime failures
def test_a_node_exception_makes_the_prompt_a_suspect(comfy: ComfyUIEmulator) -> None:
    comfy.fail_next_job("exception", "VAEDecode")
    with pytest.raises(PromptRejected) as caught:
        generator(comfy).generate(request())
    print(caught.value)
    assert caught.value.unknown
    assert '#8 VAEDecode "VAE Decode" raised safetensors_rust.SafetensorError' in str(caught.value)


def test_out_of_memory_is_retried_then_blocks_and_a_large_row_size_fails_the_row(
    comfy: ComfyUIEmulator,
) -> None:
    comfy.fail_next_job("oom")
    assert generator(comfy).generate(request()).width == 64  # ComfyUI unloads models: the retry works
    comfy.fail_next_job("oom", times=2)
    # another seed: the same graph again would be served from ComfyUI's cache without running
    with pytest.raises(ServiceBlocked, match="out of GPU memory .* on every try"):
        generator(comfy).generate(request(seed=43))
    comfy.fail_next_job("oom")
    with pytest.raises(PromptRejected, match="smaller width/height"):
        generator(comfy).generate(request(width=128, height=128))


def test_a_timeout_interrupts_our_job_and_deletes_it_from_the_queue(comfy: ComfyUIEmulator) -> None:
    comfy.seconds_per_job = 5.0
    gen = generator(comfy, timeout_s=0.3, retry_attempts=1)
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not finish the image within 0.3s"):
        gen.generate(request())
    print(f"gave up after {time.monotonic() - started:.2f}s")
    prompt_id = comfy.prompts[0]["prompt_id"]
    assert comfy.interrupts == [prompt_id] and comfy.deleted == [prompt_id]
    entry: dict = {}
    for _ in range(500):
        entry = requests.get(f"{comfy.base_url}/history/{prompt_id}", timeout=5).json()
        if entry:
            break
        time.sleep(0.01)
    events = [m[0] for m in entry[prompt_id]["status"]["messages"]]
    assert events[-1] == "execution_interrupted" and comfy.jobs_executed == 0


def test_an_interrupt_by_someone_else_is_transient(comfy: ComfyUIEmulator) -> None:
    comfy.seconds_per_job = 2.0

    def cancel() -> None:
        for _ in range(500):
            if comfy.worker.running:
                requests.post(f"{comfy.base_url}/interrupt", timeout=5)  # global, as the UI's Cancel
                return
            time.sleep(0.01)

    helper = threading.Thread(target=cancel)
    helper.start()
    with pytest.raises(TransientError, match="interrupted the job at node #3 KSampler"):
        generator(comfy, retry_attempts=1).generate(request())
    helper.join()


def test_a_server_that_is_down_is_transient() -> None:
    with ComfyUIEmulator() as comfy:
        url = comfy.base_url
    with pytest.raises(TransientError, match="unreachable on POST /prompt"):
        ComfyUIGenerator(base_url=url, width=64, height=64, retry_attempts=1).generate(request())


# ----------------------------------------------------------------------------- one job at a time
def test_the_server_runs_one_job_at_a_time_whatever_the_client_sends(comfy: ComfyUIEmulator) -> None:
    comfy.seconds_per_job = 0.1
    gen = generator(comfy, concurrency=4)
    results: list[int] = []
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda i=i: results.append(gen.generate(request(f"p{i}", seed=i)).seed or 0))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"4 jobs of 0.1s in {time.monotonic() - started:.2f}s; max concurrent {comfy.max_concurrent}")
    assert sorted(results) == [0, 1, 2, 3]
    assert comfy.max_concurrent == 1 and comfy.jobs_executed == 4


# ----------------------------------------------------------------------------- the doctor
def test_preflight_rows_on_a_healthy_server(comfy: ComfyUIEmulator) -> None:
    rows = generator(comfy).preflight()
    for row in rows:
        print(row)
    assert [(r.name, r.status) for r in rows] == [
        ("workflow", "ok"),
        ("server reachable", "ok"),
        ("nodes installed", "ok"),
        ("model installed", "ok"),
    ]
    assert "ComfyUI 0.3.68" in rows[1].detail and "RTX 4090" in rows[1].detail
    assert "prompt -> #6 (class)" in rows[0].detail
    flux = generator(comfy, workflow="flux").preflight()
    assert flux[0].status == "warn" and "negative" in flux[0].fix
    assert [r.status for r in flux[1:]] == ["ok", "ok", "ok"]


def test_preflight_names_the_missing_model_files(comfy: ComfyUIEmulator) -> None:
    rows = {r.name: r for r in generator(comfy, model="nope.safetensors").preflight()}
    assert (
        rows["model installed"].failed
        and "'nope.safetensors' is not installed" in rows["model installed"].detail
    )
    assert "sd_xl_base_1.0.safetensors" in rows["model installed"].fix
    comfy.files["vae"] = ["sdxl_vae.safetensors"]
    rows = {r.name: r for r in generator(comfy, workflow="flux").preflight()}
    assert rows["model installed"].failed and "vae_name='ae.safetensors'" in rows["model installed"].detail


def test_preflight_when_the_server_is_down() -> None:
    with ComfyUIEmulator() as comfy:
        url = comfy.base_url
    rows = ComfyUIGenerator(base_url=url).preflight()
    assert [(r.name, r.status) for r in rows] == [
        ("workflow", "ok"),
        ("server reachable", "FAIL"),
        ("nodes installed", "skip"),
        ("model installed", "skip"),
    ]
    assert "--listen" in rows[1].fix


# ----------------------------------------------------------------------------- the emulator's other routes
def test_emulator_view_queue_and_api_prefix(comfy: ComfyUIEmulator) -> None:
    base = comfy.base_url
    assert requests.get(f"{base}/view", params={"filename": "../x.png"}, timeout=5).status_code == 400
    assert requests.get(f"{base}/view", params={"filename": "none.png"}, timeout=5).status_code == 404
    assert requests.get(f"{base}/api/models/checkpoints", timeout=5).json()[0] == "sd_xl_base_1.0.safetensors"
    assert requests.get(f"{base}/object_info/NoSuchNode", timeout=5).json() == {}
    info = requests.get(f"{base}/api/object_info/CheckpointLoaderSimple", timeout=5).json()
    assert "sd_xl_base_1.0.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    comfy.seconds_per_job = 1.0
    graph = wf.load_workflow("sdxl")
    ids = []
    for seed in (1, 2, 3):
        graph["3"]["inputs"]["seed"] = seed
        ids.append(
            requests.post(
                f"{base}/prompt", json={"prompt": graph, "prompt_id": f"id{seed}"}, timeout=5
            ).json()
        )
    assert [a["prompt_id"] for a in ids] == ["id1", "id2", "id3"]
    assert requests.get(f"{base}/prompt", timeout=5).json()["exec_info"]["queue_remaining"] == 3
    requests.post(f"{base}/queue", json={"delete": ["id3"]}, timeout=5)
    queue = requests.get(f"{base}/queue", timeout=5).json()
    pending = [item[1] for item in queue["queue_pending"]] + [item[1] for item in queue["queue_running"]]
    assert "id3" not in pending and "id2" in pending
    requests.post(f"{base}/queue", json={"clear": True}, timeout=5)
    requests.post(f"{base}/interrupt", json={"prompt_id": "id1"}, timeout=5)
    assert requests.get(f"{base}/queue", timeout=5).json()["queue_pending"] == []
