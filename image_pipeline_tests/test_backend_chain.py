"""The fallback chain (IMAGE_BACKENDS): a backend refusing the service hands the prompt to the next one in the
same run, a prompt's own refusal does not fall through, credits pause one backend and not the pipeline, and
Done says which backend made each image. A row may name its backend.

The Hugging Face member is the real InferenceClient against the loopback emulator; the queue, outbox and
ledger are the embedded default's.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.domain.checks import WARN
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.services.images.chain import BackendChain
from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.services.images.preview import OfflinePreviewGenerator
from image_pipeline.settings import backend_chain_from, image_generator_from, parse_backends
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN

from .conftest import read_csv, run_partitions, write_csv
from .test_budget_guard import generations, queued_prompts, schedule_tick


def _hf(hf_emulator) -> HuggingFaceGenerator:
    return HuggingFaceGenerator(
        token=HF_TOKEN,
        base_url=f"{hf_emulator.base_url}/models/m",
        model="m",
        width=64,
        height=64,
        retry_attempts=2,
        retry_base_delay_s=0.01,
    )


def _chain(hf_emulator, order: list[str]) -> BackendChain:
    return BackendChain(
        order=order,
        model="m",
        width=64,
        height=64,
        concurrency=1,
        huggingface=_hf(hf_emulator) if "huggingface" in order else None,
        preview=OfflinePreviewGenerator(width=64, height=64) if "preview" in order else None,
    )


def _queue(workbook_dir: Path, rows: list[list[str]], header: list[str] | None = None) -> list[str]:
    from image_pipeline.services.sheets import LocalWorkbook

    write_csv(workbook_dir / "process.csv", [header or ["prompt"], *rows])
    return [r.prompt_id for r in LocalWorkbook(folder=str(workbook_dir)).ensure_ids().rows]


def _done(workbook_dir: Path) -> list[dict[str, str]]:
    rows = read_csv(workbook_dir / "done.csv")
    return [dict(zip(rows[0], r, strict=False)) for r in rows[1:]]


def test_credits_gone_on_the_first_backend_the_second_makes_the_image_and_one_backend_is_paused(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    prompts = ["a lighthouse", "a fox", "a heron"]
    ids = _queue(workbook_dir, [[p] for p in prompts])
    hf_emulator.credits_depleted = True  # 402 on every generation
    resources = {**local_resources, "image_generator": _chain(hf_emulator, ["huggingface", "preview"])}
    outbox = local_resources["publisher"]

    assert run_partitions(resources, instance, ids).success
    # each posted once, in queue order (a preview's caption says what it is on a line of its own)
    assert [p["caption"].split("\n")[0] for p in outbox.posts()] == prompts
    assert queued_prompts(workbook_dir) == []
    done = _done(workbook_dir)
    assert [(d["prompt"], d["status"], d["backend"], d["model"]) for d in done] == [
        (p, "SUCCESS", "preview", "offline-preview") for p in prompts
    ]
    # the refusing backend was asked once, then left out for the rest of the run
    assert generations(hf_emulator) == 1
    [notice] = outbox.notices()
    assert "paused image backend huggingface" in notice["text"] and "402" in notice["text"]

    ledger: PostLedger = resources["ledger"]
    book = ledger.open()
    assert book.pause_state() is None  # the pipeline is not paused: another backend works
    assert set(book.backend_pauses()) == {"huggingface"}
    assert ledger.why_not_spend() is None
    rows = {(c.name, c.status) for c in ledger.preflight()}
    assert ("backend huggingface", WARN) in rows

    # the schedule still starts runs; the next one does not ask the paused backend, and no second notice
    more = _queue(workbook_dir, [["a wren"]])
    assert isinstance(schedule_tick(resources, instance), list)
    assert run_partitions(resources, instance, more).success
    assert generations(hf_emulator) == 1
    assert _done(workbook_dir)[-1]["backend"] == "preview"
    assert len(outbox.notices()) == 1

    # resume lifts the backend's pause too: the first backend is asked again
    book.resume()
    hf_emulator.credits_depleted = False
    last = _queue(workbook_dir, [["a kite"]])
    assert run_partitions(resources, instance, last).success
    assert _done(workbook_dir)[-1]["backend"] == "huggingface"
    assert generations(hf_emulator) == 2


def test_a_chain_of_one_backend_behaves_as_that_backend_credits_pause_the_pipeline(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    prompts = ["a lighthouse", "a fox"]
    ids = _queue(workbook_dir, [[p] for p in prompts])
    hf_emulator.fail_next(None, 402)  # the preflight's GET passes, the first generation finds no credits
    resources = {**local_resources, "image_generator": _chain(hf_emulator, ["huggingface"])}
    assert not run_partitions(resources, instance, ids).success
    assert queued_prompts(workbook_dir) == prompts  # nothing failed, nothing removed
    pause = resources["ledger"].open().pause_state()
    assert pause is not None and "402" in pause.reason
    [notice] = local_resources["publisher"].notices()
    assert "paused spending" in notice["text"]


def test_a_prompts_own_refusal_does_not_fall_through(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    ids = _queue(workbook_dir, [["a forbidden thing"], ["a fox"]])
    hf_emulator.rejected_prompts = {"forbidden"}
    resources = {**local_resources, "image_generator": _chain(hf_emulator, ["huggingface", "preview"])}
    assert run_partitions(resources, instance, ids).success
    done = {d["prompt"]: d for d in _done(workbook_dir)}
    assert done["a forbidden thing"]["status"] == "FAILED"
    assert done["a forbidden thing"]["backend"] == ""  # no backend made an image for it
    assert done["a fox"]["status"] == "SUCCESS" and done["a fox"]["backend"] == "huggingface"
    assert [p["caption"].split("\n")[0] for p in local_resources["publisher"].posts()] == ["a fox"]
    # the operator hears of the failed prompt, not of a backend: none refused the service
    [notice] = local_resources["publisher"].notices()
    assert "FAILED" in notice["text"] and "image backend" not in notice["text"]


def test_an_outage_past_the_retries_falls_through_and_the_backend_is_left_out_for_the_run(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    prompts = ["one", "two", "three"]
    ids = _queue(workbook_dir, [[p] for p in prompts])
    hf_emulator.fail_next(*([500] * 50))
    resources = {**local_resources, "image_generator": _chain(hf_emulator, ["huggingface", "preview"])}
    assert run_partitions(resources, instance, ids).success
    assert [d["backend"] for d in _done(workbook_dir)] == ["preview"] * 3
    # prompts already waiting for the backend's slot pay their own tries; none asks after it is out
    asked = hf_emulator.count("text_to_image")
    print(f"generation requests during the outage: {asked} (3 prompts x 2 tries at most)")
    assert 2 <= asked <= 6
    assert resources["ledger"].open().backend_pauses() == {}  # an outage is not a pause
    [notice] = local_resources["publisher"].notices()
    assert "image backend huggingface refused" in notice["text"]


def test_a_row_names_its_backend_and_model(hf_emulator, local_resources, instance, workbook_dir) -> None:
    rows = [
        ["by the default order", "", ""],
        ["on the preview", "preview", ""],
        ["with its own model", "huggingface", "other/model"],
        ["on a backend not listed", "a1111", ""],
        ["on no such backend", "dalle", ""],
    ]
    ids = _queue(workbook_dir, rows, header=["prompt", "backend", "model"])
    resources = {**local_resources, "image_generator": _chain(hf_emulator, ["huggingface", "preview"])}
    assert run_partitions(resources, instance, ids).success
    done = {d["prompt"]: d for d in _done(workbook_dir)}
    assert (done["by the default order"]["backend"], done["by the default order"]["model"]) == (
        "huggingface",
        "m",
    )
    assert (done["on the preview"]["backend"], done["on the preview"]["model"]) == (
        "preview",
        "offline-preview",
    )
    # an endpoint URL serves one model: Done records what made it, the request carried the row's choice
    assert done["with its own model"]["backend"] == "huggingface"
    assert done["on a backend not listed"]["status"] == "FAILED"
    assert "IMAGE_BACKENDS does not list" in done["on a backend not listed"]["information"]
    assert done["on no such backend"]["status"] == "INVALID"
    assert "backend 'dalle'" in done["on no such backend"]["information"]
    assert generations(hf_emulator) == 2  # the preview row never reached Hugging Face


def test_image_backends_parse_and_build_the_chain(hf_emulator) -> None:
    assert parse_backends("huggingface:fal-ai, preview") == [("huggingface", "fal-ai"), ("preview", "")]
    for bad, why in (("dalle", "not one of"), ("preview, preview", "twice"), (" , ", "lists no backend")):
        with pytest.raises(ValueError, match=why):
            parse_backends(bad)
    env = {"IMAGE_BACKENDS": "huggingface:fal-ai, preview", "HF_TOKEN": "hf_x", "HF_MODEL": "a/b"}
    chain = image_generator_from(env)
    assert isinstance(chain, BackendChain)
    assert chain.order == ["huggingface", "preview"] and chain.model == "a/b"
    assert chain.huggingface is not None and chain.huggingface.provider == "fal-ai"
    url = f"{hf_emulator.base_url}/models/m"
    chain = backend_chain_from({"IMAGE_BACKENDS": f"huggingface:{url}"})
    assert chain.huggingface is not None and chain.huggingface.base_url == url
    # the resource is what Dagster shows and builds: nested members with their own fields
    defs = dg.Definitions(resources={"image_generator": chain})
    assert defs.get_repository_def() is not None


def test_one_prompt_after_another_an_outage_is_asked_once_then_left_out(hf_emulator) -> None:
    from image_pipeline.domain.rows import GenerationRequest

    chain = _chain(hf_emulator, ["huggingface", "preview"])
    hf_emulator.fail_next(*([503] * 10))
    made = [chain.generate(GenerationRequest(p, None, "m", 64, 64, None)) for p in ("a", "b", "c")]
    assert [m.backend for m in made] == ["preview"] * 3
    assert hf_emulator.count("text_to_image") == 2  # the first prompt's two tries
    assert all("huggingface" in m.fallback for m in made)
    [refusal] = chain.take_refusals()
    assert refusal.backend == "huggingface" and not refusal.pauses


def test_hugging_face_out_of_credits_the_a1111_server_makes_the_image(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    from image_pipeline.services.images.a1111 import A1111Generator
    from image_pipeline.testing.emulators.a1111 import A1111Emulator

    ids = _queue(workbook_dir, [["a lighthouse at dusk", "sd_xl_base_1.0"]], header=["prompt", "model"])
    hf_emulator.fail_next(None, 402)  # the preflight passes; the generation finds no credits
    with A1111Emulator(generation_s=0.01) as gpu:
        chain = BackendChain(
            order=["huggingface", "a1111"],
            model="m",
            width=64,
            height=64,
            huggingface=_hf(hf_emulator),
            a1111=A1111Generator(base_url=gpu.base_url, width=64, height=64, retry_base_delay_s=0.01),
        )
        resources = {**local_resources, "image_generator": chain}
        assert run_partitions(resources, instance, ids).success
        [body] = gpu.txt2img_bodies
    [done] = _done(workbook_dir)
    assert (done["status"], done["backend"]) == ("SUCCESS", "a1111")
    # the row's model was chosen for Hugging Face: the fallback used its own default (the loaded checkpoint)
    assert "override_settings" not in body or not body["override_settings"].get("sd_model_checkpoint")
    assert done["seed"] == str(json_seed(gpu))
    assert [p["caption"] for p in local_resources["publisher"].posts()] == ["a lighthouse at dusk"]


def json_seed(gpu) -> int:
    return int(gpu.jobs[-1]["seed"])


def test_rows_choose_comfyui_and_a1111_with_their_own_checkpoints_and_the_doctor_checks_each(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    from image_pipeline.services.images.a1111 import A1111Generator
    from image_pipeline.services.images.comfyui import ComfyUIGenerator
    from image_pipeline.testing.emulators.a1111 import A1111Emulator
    from image_pipeline.testing.emulators.comfyui import ComfyUIEmulator

    rows = [
        ["on the comfy server", "comfyui", "v1-5-pruned-emaonly.safetensors"],
        ["on the webui", "a1111", "juggernautXL_v9"],
        ["by the order", "", ""],
    ]
    ids = _queue(workbook_dir, rows, header=["prompt", "backend", "model"])
    with A1111Emulator(generation_s=0.01) as webui, ComfyUIEmulator(seconds_per_job=0.01) as comfy:
        chain = BackendChain(
            order=["comfyui", "a1111", "huggingface"],
            model="",
            width=64,
            height=64,
            huggingface=_hf(hf_emulator),
            comfyui=ComfyUIGenerator(base_url=comfy.base_url, poll_interval_s=0.02, width=64, height=64),
            a1111=A1111Generator(base_url=webui.base_url, width=64, height=64, retry_base_delay_s=0.01),
        )
        checks = {(c.service, c.name): c.status for c in chain.preflight()}
        # the doctor's rows, named by backend: each one asked with its own cheapest call
        for name in ("comfyui", "a1111", "huggingface"):
            assert any(service.endswith(f"({name})") for service, _ in checks), (name, checks)
        assert all(status in ("ok", "skipped") for status in checks.values()), checks
        resources = {**local_resources, "image_generator": chain}
        assert run_partitions(resources, instance, ids).success
        [job] = webui.jobs
        comfy_models = [
            node["inputs"].get("ckpt_name")
            for body in comfy.prompts
            for node in body["prompt"].values()
            if "ckpt_name" in node["inputs"]
        ]
    done = {d["prompt"]: d for d in _done(workbook_dir)}
    assert done["on the comfy server"]["backend"] == "comfyui"
    assert "v1-5-pruned-emaonly.safetensors" in comfy_models
    assert done["on the webui"]["backend"] == "a1111" and "juggernautXL_v9" in done["on the webui"]["model"]
    assert job["asked_checkpoint"] and "juggernautXL_v9" in job["asked_checkpoint"]
    assert done["by the order"]["backend"] == "comfyui"
    assert hf_emulator.count("text_to_image") == 0


def test_a_row_whose_own_backend_is_out_waits_while_the_others_go_on(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    rows = [["wants hugging face", "huggingface"], ["any backend", ""]]
    ids = _queue(workbook_dir, rows, header=["prompt", "backend"])
    hf_emulator.credits_depleted = True
    resources = {**local_resources, "image_generator": _chain(hf_emulator, ["huggingface", "preview"])}
    assert run_partitions(resources, instance, ids).success
    # the row that named the paused backend stays queued with no attempt counted; the other one is made
    assert queued_prompts(workbook_dir) == ["wants hugging face"]
    [done] = _done(workbook_dir)
    assert (done["prompt"], done["backend"]) == ("any backend", "preview")
    book = resources["ledger"].open()
    assert book.pause_state() is None and set(book.backend_pauses()) == {"huggingface"}
    assert all(e.attempts == 0 for e in book.entries_for(ids[0]))
    # a second run: the row still waits, nothing asks the paused backend, no second notice
    asked = hf_emulator.count("text_to_image")
    assert run_partitions(resources, instance, ids[:1]).success
    assert queued_prompts(workbook_dir) == ["wants hugging face"]
    assert hf_emulator.count("text_to_image") == asked
    assert len(local_resources["publisher"].notices()) == 1
