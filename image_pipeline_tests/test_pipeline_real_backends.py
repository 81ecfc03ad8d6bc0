"""The whole pipeline on the real backends (gspread, InferenceClient, requests) against the emulators."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.definitions import build_definitions
from image_pipeline.defs.batching import RANGE_END, RANGE_START
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
from image_pipeline.testing.emulators.telegram import DEFAULT_TOKEN as TG_TOKEN

from .conftest import QUIET, materializations, pass_gate

PROMPTS = [
    ["prompt", "width", "height", "seed"],
    ["a lighthouse at dawn", "320", "192", "3"],
    ["   ", "", "", ""],
    ["something forbidden", "", "", ""],
    ["a fox in snow, <b>bold</b> & more", "", "", ""],
]


@pytest.fixture
def real_env(google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch) -> dict[str, str]:
    key_file = google_emulator.write_service_account_file(tmp_path / "chatbot_key.json")
    sid = google_emulator.create_spreadsheet(
        "Image Prompt", {"Process": PROMPTS, "Done": [["Prompt", "Status", "Info", "Timestamp"]]}
    )
    hf_emulator.rejected_prompts.add("forbidden")
    env = {
        "GOOGLE_SERVICE_ACCOUNT_FILE": str(key_file),
        "GOOGLE_SHEETS_API_BASE_URL": google_emulator.base_url,
        "GOOGLE_DRIVE_API_BASE_URL": google_emulator.base_url,
        "HF_TOKEN": HF_TOKEN,
        "HF_INFERENCE_BASE_URL": f"{hf_emulator.base_url}/models/stabilityai/stable-diffusion-xl-base-1.0",
        "TELEGRAM_TOKEN": TG_TOKEN,
        "TELEGRAM_CHAT_ID": str(DEFAULT_CHANNEL_ID),
        "TELEGRAM_ALERT_CHAT_ID": str(ALERTS_CHANNEL_ID),
        "TELEGRAM_API_BASE_URL": telegram_emulator.base_url,
        "IMAGE_PIPELINE_DATA": str(tmp_path / "data"),
        "IMAGE_PIPELINE_INSTANT": "1",
        "TELEGRAM_POSTS_PER_MINUTE": "0",  # pacing has tests of its own
        "TEST_SPREADSHEET_ID": sid,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_sensor_then_one_batched_run_on_the_real_backends(
    real_env, google_emulator, hf_emulator, telegram_emulator, instance
) -> None:
    defs = build_definitions(real_env)
    sensor = defs.resolve_sensor_def("prompt_sheet_sensor")
    ctx = dg.build_sensor_context(
        instance=instance,
        cursor=None,
        resources={k: defs.resources[k] for k in ("prompt_sheet", "image_generator", "publisher", "ledger")},
    )
    tick = sensor(ctx)
    ids = list(tick.dynamic_partitions_requests[0].partition_keys)
    [request] = tick.run_requests  # one batched run for the four new prompts
    assert len(ids) == 4 and (request.tags[RANGE_START], request.tags[RANGE_END]) == (ids[0], ids[-1])
    instance.add_dynamic_partitions("prompts", ids)

    job = defs.resolve_job_def("process_prompts_job")
    result = job.execute_in_process(instance=instance, run_config=QUIET, tags=dict(request.tags))
    assert result.success

    sid = real_env["TEST_SPREADSHEET_ID"]
    done = _done_rows(google_emulator, sid)
    by_id = {r["id"]: r for r in done}
    assert [by_id[i]["Status"] for i in ids] == ["SUCCESS", "INVALID", "FAILED", "SUCCESS"]
    assert "400" in by_id[ids[2]]["Info"]
    assert (
        by_id[ids[0]]["message_id"] == "1"
        and by_id[ids[0]]["size"] == "320x192"
        and by_id[ids[0]]["seed"] == "3"
    )
    assert by_id[ids[0]]["model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert google_emulator.values(sid, "Process") == [["prompt", "width", "height", "seed", "id"]]

    posts = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert [p["caption"] for p in posts] == ["a lighthouse at dawn", "a fox in snow, <b>bold</b> & more"]
    assert (posts[0]["width"], posts[0]["height"]) == (320, 192)
    [notice] = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert ids[2] in notice["text"] and "FAILED" in notice["text"]
    generations = [c for c in hf_emulator.calls if c["method"] == "POST"]
    assert len(generations) == 2 + 1  # two images and one rejected prompt; the invalid one never left
    # the sensor's preflight asked the endpoint once, with a GET that generates nothing
    assert [c["method"] for c in hf_emulator.calls if c["method"] != "POST"] == ["GET"]

    # which backends ran is in the run log, and no secret is anywhere in it
    logs = "\n".join(str(e.user_message) for e in instance.all_logs(result.run_id))
    assert "Google Sheets (" in logs and "Hugging Face InferenceClient" in logs and "Telegram Bot API" in logs
    for secret in (TG_TOKEN, HF_TOKEN):
        assert secret not in logs
        assert secret not in repr(done)


def test_credentials_failure_stops_the_run_and_leaves_the_queue(
    real_env, google_emulator, hf_emulator, telegram_emulator, instance
) -> None:
    defs = build_definitions(real_env)
    ids = [r.prompt_id for r in defs.resources["prompt_sheet"].ensure_ids().rows]
    pass_gate(defs)  # the credits run out after the run's gate passed
    hf_emulator.credits_depleted = True
    instance.add_dynamic_partitions("prompts", ids)
    result = defs.resolve_job_def("process_prompts_job").execute_in_process(
        partition_key=ids[0], instance=instance, run_config=QUIET, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "credits are depleted" in failure.step_failure_data.user_failure_data.description
    sid = real_env["TEST_SPREADSHEET_ID"]
    assert len(google_emulator.values(sid, "Process")) == 5  # nothing left the queue
    assert _done_rows(google_emulator, sid) == []
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []
    [notice] = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert "credits" in notice["text"]


def _done_rows(google_emulator, sid: str) -> list[dict[str, str]]:
    table = google_emulator.values(sid, "Done")
    return [dict(zip(table[0], r + [""] * (len(table[0]) - len(r)), strict=False)) for r in table[1:]]


def test_request_budget_per_prompt_and_per_idle_sensor_tick(
    real_env, google_emulator, hf_emulator, telegram_emulator, instance, capsys
) -> None:
    defs = build_definitions(real_env)
    sheet = defs.resources["prompt_sheet"]
    sensor = defs.resolve_sensor_def("prompt_sheet_sensor")

    def tick(cursor):
        return sensor(
            dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={
                    "prompt_sheet": sheet,
                    **{k: defs.resources[k] for k in ("image_generator", "publisher", "ledger")},
                },
            )
        )

    first = tick(None)
    ids = list(first.dynamic_partitions_requests[0].partition_keys)
    instance.add_dynamic_partitions("prompts", ids)
    settle = tick(first.cursor)  # sees our own id write once
    before = (
        google_emulator.read_requests,
        google_emulator.write_requests,
        google_emulator.count("drive.files.get"),
    )
    idle = tick(settle.cursor)
    after = (
        google_emulator.read_requests,
        google_emulator.write_requests,
        google_emulator.count("drive.files.get"),
    )
    assert isinstance(idle, dg.SkipReason)
    idle_cost = (after[0] - before[0], after[1] - before[1], after[2] - before[2])
    assert idle_cost == (0, 0, 1)  # one Drive metadata request, no Sheets quota at all

    job = defs.resolve_job_def("process_prompts_job")
    reads0, writes0 = google_emulator.read_requests, google_emulator.write_requests
    result = job.execute_in_process(partition_key=ids[0], instance=instance, run_config=QUIET)
    assert result.success
    reads, writes = google_emulator.read_requests - reads0, google_emulator.write_requests - writes0
    # A batch costs the same: 20 more prompts in one run (the channel's 20-a-minute cap lifted: pacing is
    # off in these tests and has tests of its own).
    telegram_emulator.per_chat_per_minute = None
    sid = real_env["TEST_SPREADSHEET_ID"]
    google_emulator.append_rows(sid, "Process", [[f"a quiet harbour {i}"] for i in range(20)])
    batch_ids = [r.prompt_id for r in sheet.ensure_ids().rows]
    instance.add_dynamic_partitions("prompts", batch_ids)
    reads1, writes1 = google_emulator.read_requests, google_emulator.write_requests
    batch = job.execute_in_process(
        instance=instance, run_config=QUIET, tags={RANGE_START: batch_ids[0], RANGE_END: batch_ids[-1]}
    )
    assert batch.success and len(telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)) == 1 + 20 + 1
    batch_reads, batch_writes = (
        google_emulator.read_requests - reads1,
        google_emulator.write_requests - writes1,
    )
    with capsys.disabled():
        print(
            f"\n[request budget] one prompt end to end: {reads} Sheets reads + {writes} Sheets writes; "
            f"a batch of {len(batch_ids)}: {batch_reads} + {batch_writes}; "
            f"idle sensor tick: {idle_cost[2]} Drive request, {idle_cost[0] + idle_cost[1]} Sheets requests"
        )
    # reads: queue + Done (prompt_record), queue + Done header (done_entry), the copy of the removed rows;
    # writes: Done append, the delete (+ missing Done header cells on first use)
    assert reads <= 3 and writes <= 3
    assert batch_reads <= 3 and batch_writes <= 2


def test_a_3000_character_prompt_is_posted_with_a_cut_caption(
    real_env, google_emulator, telegram_emulator, instance
) -> None:
    long_prompt = ("a very detailed scene " * 140)[:3000]
    sid = real_env["TEST_SPREADSHEET_ID"]
    google_emulator.set_values(sid, "Process", [["prompt"], [long_prompt]], raw=True)
    defs = build_definitions(real_env)
    [pid] = [r.prompt_id for r in defs.resources["prompt_sheet"].ensure_ids().rows]
    instance.add_dynamic_partitions("prompts", [pid])
    result = defs.resolve_job_def("process_prompts_job").execute_in_process(
        partition_key=pid, instance=instance, run_config=QUIET
    )
    assert result.success
    [post] = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert len(post["caption"]) == 1024 and post["caption"].endswith("…")
    assert long_prompt.startswith(post["caption"][:-1].rstrip())
    [done] = _done_rows(google_emulator, sid)
    assert done["Prompt"] == long_prompt and done["Status"] == "SUCCESS"


def test_a_batch_posts_while_it_still_generates_and_keeps_images_on_disk(
    real_env, google_emulator, hf_emulator, telegram_emulator, instance, monkeypatch
) -> None:
    """Generation and posting overlap in one step: the first post leaves before the last image is asked
    for, posts keep queue order, and every image is a file on disk when it is posted."""
    import time

    sid = real_env["TEST_SPREADSHEET_ID"]
    google_emulator.append_rows(sid, "Process", [[f"a calm sea number {i}"] for i in range(6)])
    hf_emulator.rejected_prompts.clear()
    hf_emulator.set_latency(0.3)
    monkeypatch.setenv("HF_CONCURRENCY", "2")
    seen: dict[str, list[float]] = {"generate": [], "post": []}
    on_disk: list[bool] = []
    images = Path(real_env["IMAGE_PIPELINE_DATA"]) / "assets" / "generated_image"

    def hf_request(request, endpoint) -> None:
        if request.method == "POST":  # a generation; the run gate's endpoint check is a GET
            seen["generate"].append(time.monotonic())

    def posted(request, endpoint, response) -> None:
        if endpoint == "sendphoto" and response.status == 200:
            seen["post"].append(time.monotonic())
            on_disk.append(len(list(images.glob("*.png"))) >= len(seen["post"]))

    hf_emulator.on_request = hf_request
    telegram_emulator.after_route = posted
    defs = build_definitions({**real_env, "HF_CONCURRENCY": "2"})
    ids = [r.prompt_id for r in defs.resources["prompt_sheet"].ensure_ids().rows]
    instance.add_dynamic_partitions("prompts", ids)
    result = defs.resolve_job_def("process_prompts_job").execute_in_process(
        instance=instance, run_config=QUIET, tags={RANGE_START: ids[0], RANGE_END: ids[-1]}
    )
    assert result.success
    posts = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert len(posts) == 9 and len(seen["generate"]) == 9  # every prompt but the blank one

    assert seen["post"][0] < seen["generate"][-1]
    assert [p["caption"] for p in posts][-6:] == [f"a calm sea number {i}" for i in range(6)]
    assert all(on_disk)
    # each prompt of the batch has its own materialization with its own preview and message id
    image_mats = {m.partition: m for m in materializations(result, "generated_image")}
    post_mats = {m.partition: m for m in materializations(result, "telegram_post")}
    assert set(image_mats) == set(ids) == set(post_mats)
    previews = {image_mats[i].metadata["preview"].value for i in ids if "preview" in image_mats[i].metadata}
    assert len(previews) == 9
    message_ids = {
        post_mats[i].metadata["message_id"].value for i in ids if "message_id" in post_mats[i].metadata
    }
    assert len(message_ids) == 9


def test_every_done_row_and_post_carries_what_it_takes_to_generate_the_image_again(
    real_env, google_emulator, hf_emulator, telegram_emulator, instance, monkeypatch, tmp_path
) -> None:
    """The reproducibility record: model, provider, seed, size, negative prompt, SHA-256, generation time
    and the message link, in the Done row and in the post's materialization; regenerating from it gives
    the same bytes."""
    import hashlib

    from image_pipeline.domain.rows import GenerationRequest

    telegram_emulator.add_chat(-1009990001, type="channel", title="Gallery", username="pipeline_gallery")
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "@pipeline_gallery")
    sid = real_env["TEST_SPREADSHEET_ID"]
    google_emulator.set_values(
        sid,
        "Process",
        [
            ["prompt", "negative_prompt", "width", "seed"],
            ["a glass whale over a city", "blurry, text", "256", ""],
        ],
        raw=True,
    )
    defs = build_definitions({**real_env, "TELEGRAM_CHAT_ID": "@pipeline_gallery"})
    [pid] = [r.prompt_id for r in defs.resources["prompt_sheet"].ensure_ids().rows]
    instance.add_dynamic_partitions("prompts", [pid])
    result = defs.resolve_job_def("process_prompts_job").execute_in_process(
        partition_key=pid, instance=instance, run_config=QUIET
    )
    assert result.success
    [post] = telegram_emulator.messages_for(-1009990001)
    [done] = _done_rows(google_emulator, sid)
    assert done["Status"] == "SUCCESS"
    assert done["model"] == "stabilityai/stable-diffusion-xl-base-1.0" and done["provider"] == "endpoint"
    assert done["negative_prompt"] == "blurry, text" and done["size"] == "256x1024"
    assert done["seed"].isdigit()  # no seed in the row: one was chosen, and recorded
    assert float(done["generation_s"]) > 0
    assert done["message_link"] == f"https://t.me/pipeline_gallery/{post['message_id']}"
    [png_file] = (Path(real_env["IMAGE_PIPELINE_DATA"]) / "assets" / "generated_image").glob(f"{pid}-*.png")
    png = png_file.read_bytes()
    assert done["image_sha256"] == hashlib.sha256(png).hexdigest()

    [mat] = materializations(result, "telegram_post")
    recorded = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert recorded["link"] == done["message_link"]
    assert (recorded["model"], recorded["provider"], recorded["seed"], recorded["size"]) == (
        done["model"],
        done["provider"],
        done["seed"],
        done["size"],
    )
    assert recorded["negative_prompt"] == "blurry, text" and recorded["image_sha256"] == done["image_sha256"]

    # what the record says is enough to make the same image again
    with dg.build_resources({"image_generator": defs.resources["image_generator"]}) as built:
        width, height = (int(x) for x in done["size"].split("x"))
        again = built.image_generator.generate(
            GenerationRequest(
                done["Prompt"], done["negative_prompt"], done["model"], width, height, int(done["seed"])
            )
        )
    assert hashlib.sha256(again.png).hexdigest() == done["image_sha256"]
