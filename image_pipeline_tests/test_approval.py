"""Approval and variations from the sheet: HOLD, PREVIEW then APPROVE in the "status" column, "count"
variations posted as one album, and the state written back to the status cell.

Against the emulated Google Sheet (gspread), the Hugging Face emulator (InferenceClient) and the Telegram
emulator (requests, sendPhoto and sendMediaGroup).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.definitions import build_definitions
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID

from .conftest import QUIET, emulated_env, pass_gate, sensor_tick

HEADER = ["prompt", "status", "count", "seed"]


@pytest.fixture
def env(google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch) -> dict[str, str]:
    return emulated_env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        [HEADER],
        IMAGE_PIPELINE_INSTANT="1",
    )


class Sheet:
    def __init__(self, google_emulator, sid: str) -> None:
        self.google, self.sid = google_emulator, sid

    def rows(self, title: str = "Process") -> list[dict[str, str]]:
        try:
            table = self.google.values(self.sid, title)
        except Exception:  # "Done" appears with the first log
            return []
        if not table:
            return []
        return [dict(zip(table[0], r + [""] * (len(table[0]) - len(r)), strict=False)) for r in table[1:]]

    def status_of(self, prompt: str) -> str:
        return next(r["status"] for r in self.rows() if r["prompt"] == prompt)

    def type_status(self, prompt: str, word: str) -> None:
        number = 2 + [r["prompt"] for r in self.rows()].index(prompt)
        self.google.update_cell(self.sid, "Process", number, HEADER.index("status") + 1, word)


tick = sensor_tick


def launch(defs: dg.Definitions, instance: dg.DagsterInstance, requests) -> None:
    job = defs.resolve_job_def("process_prompts_job")
    for request in requests:
        kwargs = {"partition_key": request.partition_key} if request.partition_key else {}
        result = job.execute_in_process(
            instance=instance, run_config=QUIET, tags=dict(request.tags), **kwargs
        )
        assert result.success


def sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def test_preview_then_approve_posts_exactly_the_previewed_image(
    env, google_emulator, hf_emulator, telegram_emulator, instance
) -> None:
    sheet = Sheet(google_emulator, env["GOOGLE_SHEET_KEY"])
    google_emulator.append_rows(sheet.sid, "Process", [["a paper boat on a puddle", "PREVIEW", "", ""]])
    defs = build_definitions(env)

    first = tick(defs, instance, None)
    launch(defs, instance, first.run_requests)
    [preview] = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert "PREVIEW" in preview["caption"] and "APPROVE" in preview["caption"]
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []
    assert sheet.status_of("a paper boat on a puddle") == "AWAITING APPROVAL"
    assert sheet.rows("Done") == []
    generated = sum(1 for c in hf_emulator.calls if c["method"] == "POST")
    assert generated == 1

    # nothing happens while it waits, even when a run covers it
    waiting = tick(defs, instance, first.cursor)
    assert not getattr(waiting, "run_requests", None)

    # the person approves: the sensor releases the row, the run posts the previewed bytes, generates nothing
    sheet.type_status("a paper boat on a puddle", "approve")
    released = tick(defs, instance, waiting.cursor)
    assert len(released.run_requests) == 1
    launch(defs, instance, released.run_requests)
    [post] = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert sha(post["image"]) == sha(preview["image"])
    assert sum(1 for c in hf_emulator.calls if c["method"] == "POST") == generated
    assert post["caption"] == "a paper boat on a puddle"
    [done] = sheet.rows("Done")
    assert done["status"] == "SUCCESS" and done["prompt"] == "a paper boat on a puddle"
    assert sheet.rows() == []


def test_a_prompt_edited_after_its_preview_is_previewed_again(
    env, google_emulator, hf_emulator, telegram_emulator, instance
) -> None:
    sheet = Sheet(google_emulator, env["GOOGLE_SHEET_KEY"])
    google_emulator.append_rows(sheet.sid, "Process", [["a kettle", "PREVIEW", "", "5"]])
    defs = build_definitions(env)
    first = tick(defs, instance, None)
    launch(defs, instance, first.run_requests)
    pid = instance.get_dynamic_partitions("prompts")[0]
    google_emulator.update_cell(sheet.sid, "Process", 2, 1, "a copper kettle")
    sheet.type_status("a copper kettle", "APPROVE")
    result = defs.resolve_job_def("process_prompts_job").execute_in_process(
        partition_key=pid, instance=instance, run_config=QUIET
    )
    assert result.success
    # APPROVE never publishes a text nobody saw: a new preview, and the row waits again
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []
    previews = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert [p["caption"].split("\n")[0] for p in previews] == ["a kettle", "a copper kettle"]
    assert sheet.status_of("a copper kettle") == "AWAITING APPROVAL"


def test_hold_keeps_the_row_queued_and_skipped(env, google_emulator, telegram_emulator, instance) -> None:
    sheet = Sheet(google_emulator, env["GOOGLE_SHEET_KEY"])
    google_emulator.append_rows(
        sheet.sid, "Process", [["a held heron", "HOLD", "", ""], ["a free fox", "", "", ""]]
    )
    defs = build_definitions(env)
    first = tick(defs, instance, None)
    launch(defs, instance, first.run_requests)
    assert [m["caption"] for m in telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)] == ["a free fox"]
    assert [(r["prompt"], r["status"]) for r in sheet.rows()] == [("a held heron", "HOLD")]
    # a run that covers it by hand (the UI) leaves it too
    pid = instance.get_dynamic_partitions("prompts")[0]
    result = defs.resolve_job_def("process_prompts_job").execute_in_process(
        partition_key=pid, instance=instance, run_config=QUIET
    )
    assert result.success and result.output_for_node("done_entry")[pid].status == "HELD"
    # the person clears HOLD: the sensor runs it
    sheet.type_status("a held heron", "")
    released = tick(defs, instance, first.cursor)
    launch(defs, instance, released.run_requests)
    assert [m["caption"] for m in telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)] == [
        "a free fox",
        "a held heron",
    ]


def test_count_posts_variations_with_different_seeds_as_one_album(
    env, google_emulator, hf_emulator, telegram_emulator, instance
) -> None:
    sheet = Sheet(google_emulator, env["GOOGLE_SHEET_KEY"])
    google_emulator.append_rows(sheet.sid, "Process", [["three koi in a pond", "", "3", "40"]])
    defs = build_definitions(env)
    first = tick(defs, instance, None)
    launch(defs, instance, first.run_requests)
    posts = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert len(posts) == 3
    assert len({p["media_group_id"] for p in posts}) == 1 and posts[0]["media_group_id"]
    assert posts[0]["caption"] == "three koi in a pond" and not posts[1]["caption"]
    assert len({sha(p["image"]) for p in posts}) == 3  # three different images
    seeds = [c["body"]["parameters"]["seed"] for c in hf_emulator.calls if c["method"] == "POST"]
    assert seeds == [40, 41, 42]
    [done] = sheet.rows("Done")
    assert done["status"] == "SUCCESS" and done["seed"] == "40;41;42"
    assert len(done["image_sha256"].split(";")) == 3
    assert done["message_id"] == str(posts[0]["message_id"])


def test_a_bad_count_is_invalid(env, google_emulator, telegram_emulator, instance) -> None:
    sheet = Sheet(google_emulator, env["GOOGLE_SHEET_KEY"])
    google_emulator.append_rows(sheet.sid, "Process", [["eleven cats", "", "11", ""]])
    defs = build_definitions(env)
    first = tick(defs, instance, None)
    launch(defs, instance, first.run_requests)
    [done] = sheet.rows("Done")
    assert done["status"] == "INVALID" and "count must be between 1 and 10" in done["information"]
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []


def test_the_status_column_shows_progress(env, google_emulator, hf_emulator, instance) -> None:
    sheet = Sheet(google_emulator, env["GOOGLE_SHEET_KEY"])
    google_emulator.append_rows(sheet.sid, "Process", [["a slow sunrise", "", "", ""]])
    defs = build_definitions({**env, "IMAGE_PIPELINE_INSTANT": ""})
    tick(defs, instance, None)
    assert sheet.status_of("a slow sunrise") == "QUEUED"  # registered by the sensor
    seen: list[str] = []

    def on_request(request, endpoint) -> None:
        if endpoint == "text_to_image":
            seen.append(sheet.status_of("a slow sunrise"))

    hf_emulator.on_request = on_request
    hf_emulator.loading_estimated_time = 0.05
    pass_gate(defs)  # the faults are for the generation, not the run gate's look-up
    hf_emulator.fail_next(503, 503, 503, 503)  # outlasts the run's retries: the prompt stays queued
    pid = instance.get_dynamic_partitions("prompts")[0]
    result = defs.resolve_job_def("process_prompts_job").execute_in_process(
        partition_key=pid, instance=instance, run_config=QUIET
    )
    assert result.success
    assert seen and set(seen) == {"GENERATING"}
    assert sheet.status_of("a slow sunrise") == "QUEUED"


def test_preview_and_approve_on_the_embedded_default(local_resources, instance, workbook_dir) -> None:
    """The local workbook's status column, the offline generator and the outbox: the preview is a notice
    with the image (a preview card in the gallery), and APPROVE posts the same bytes."""
    from .conftest import read_csv, run_partitions, write_csv

    write_csv(workbook_dir / "process.csv", [["prompt", "status", "count"], ["two lanterns", "preview", "2"]])
    sheet = local_resources["prompt_sheet"]
    [pid] = [r.prompt_id for r in sheet.ensure_ids().rows]
    outbox = local_resources["publisher"]
    assert run_partitions(local_resources, instance, [pid]).success
    [notice] = outbox.notices()
    assert notice["kind"] == "preview" and len(notice["files"]) == 2
    assert outbox.posts() == []
    table = read_csv(workbook_dir / "process.csv")
    status = table[0].index("status")
    assert table[1][status] == "AWAITING APPROVAL"

    table[1][status] = "APPROVE"
    write_csv(workbook_dir / "process.csv", table)
    assert run_partitions(local_resources, instance, [pid]).success
    [post] = outbox.posts()
    assert post["method"] == "sendMediaGroup" and len(post["files"]) == 2
    root = Path(outbox.folder)
    previewed = [sha((root / f).read_bytes()) for f in notice["files"]]
    posted = [sha((root / f).read_bytes()) for f in post["files"]]
    assert posted == previewed
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "status", "count", "id"]]
    assert (root / "index.html").read_text().count("PREVIEW") >= 1


def test_an_uncertain_post_is_held_until_repost_and_a_repost_is_used_once(
    env, google_emulator, hf_emulator, telegram_emulator, instance
) -> None:
    from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID

    sheet = Sheet(google_emulator, env["GOOGLE_SHEET_KEY"])
    google_emulator.append_rows(sheet.sid, "Process", [["a quiet harbour", "", "", ""]])
    defs = build_definitions({**env, "IMAGE_PIPELINE_INSTANT": ""})
    tick(defs, instance, None)
    pid = instance.get_dynamic_partitions("prompts")[0]
    job = defs.resolve_job_def("process_prompts_job")

    def run() -> dg.ExecuteInProcessResult:
        return job.execute_in_process(partition_key=pid, instance=instance, run_config=QUIET)

    def posts() -> int:
        return len(telegram_emulator.messages_for(DEFAULT_CHANNEL_ID))

    pass_gate(defs)
    telegram_emulator.fail_next(502, endpoints=["sendPhoto"])  # a bad gateway: was it posted?
    assert run().output_for_node("done_entry")[pid].status == "UNCERTAIN"
    assert sheet.status_of("a quiet harbour") == "CHECK CHANNEL" and sheet.rows("Done") == []
    sent = telegram_emulator.count("sendphoto")
    run()  # held: nothing is sent while nobody has looked
    assert (
        telegram_emulator.count("sendphoto") == sent and sheet.status_of("a quiet harbour") == "CHECK CHANNEL"
    )

    # The person finds it missing and types REPOST, but the pipeline cannot change the cell this run:
    # a REPOST it could not take out of the cell is not used (it could send blind a second time later)
    sheet.type_status("a quiet harbour", "repost")
    google_emulator.fail_next(500, 500, endpoints=["values.batchUpdate"])  # the write and its repair
    run()
    assert telegram_emulator.count("sendphoto") == sent
    assert sheet.status_of("a quiet harbour") == "repost"
    google_emulator.set_faults(None)
    before = posts()
    assert run().output_for_node("done_entry")[pid].status == "SUCCESS"
    assert posts() == before + 1 and [r["status"] for r in sheet.rows("Done")] == ["SUCCESS"]
