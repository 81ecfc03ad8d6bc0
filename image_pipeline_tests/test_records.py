"""The records the steps hand each other: typed, frozen, stored as plain JSON and read back as their types,
also from files an older version wrote (plain dicts with the same keys)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.records import DoneOutcome, ImageOutcome, PostOutcome, PostReceipt, PromptRecord
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.storage import PartitionFileStore


def _ready() -> PromptRecord:
    request = GenerationRequest("a lighthouse", None, "m", 512, 512, 7)
    return PromptRecord(
        "p1",
        "READY",
        row_number=3,
        prompt="a lighthouse",
        params={"seed": "7"},
        fingerprint="f1",
        request=request,
    )


def test_records_are_frozen_and_a_step_makes_a_new_one() -> None:
    record = _ready()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "HELD"  # type: ignore[misc]
    held = record.but(status="HELD", reason="HOLD")
    assert (record.status, held.status, held.fingerprint) == ("READY", "HELD", "f1")
    assert record.row().prompt == "a lighthouse" and record.row().row_number == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        DoneEntry("p1", "x", "SUCCESS", "").status = "FAILED"  # type: ignore[misc]


def test_stored_json_is_plain_and_reads_back_as_the_type(tmp_path: Path) -> None:
    store = PartitionFileStore(tmp_path, run_id="r1")
    receipt = PostReceipt("-100", "5", "sendMediaGroup", "https://t.me/c/100/5", 10, message_ids=("5", "6"))
    entry = DoneEntry("p1", "a lighthouse", "SUCCESS", "posted", message_id="5")
    values = {
        "prompt_record": _ready(),
        "telegram_post": PostOutcome.posted(
            receipt, caption="a lighthouse", checks=[{"name": "c", "passed": True}]
        ),
        "done_entry": DoneOutcome("SUCCESS", entry=entry, queue_row="removed"),
    }
    for asset, value in values.items():
        store.write(asset, "p1", value)
        stored = json.loads(store.json_path(asset, "p1").read_text(encoding="utf-8"))
        assert stored["status"] == value.status  # a person (and the UI) reads plain keys
        assert store.read(asset, "p1") == value
    assert json.loads(store.json_path("prompt_record", "p1").read_text())["request"]["seed"] == 7
    assert store.read("telegram_post", "p1").message_ids == ("5", "6")


def test_files_written_before_the_types_read_back_as_the_types(tmp_path: Path) -> None:
    store = PartitionFileStore(tmp_path)
    legacy = {
        "prompt_record": {
            "id": "p1",
            "status": "READY",
            "reason": "",
            "row_number": 2,
            "prompt": "old",
            "params": {},
            "fingerprint": "f0",
            "request": {
                "prompt": "old",
                "negative_prompt": None,
                "model": "m",
                "width": 64,
                "height": 64,
                "seed": None,
            },
            "attempts": 1,
            "mode": "post",
            "count": 1,
            "a_key_from_a_later_version": True,
        },
        "telegram_post": {
            "status": "POSTED",
            "chat_id": "-1",
            "message_id": "9",
            "message_ids": ["9"],
            "link": "",
        },
        "done_entry": {
            "id": "p1",
            "prompt": "old",
            "status": "SUCCESS",
            "information": "posted",
            "queue_row": "removed",
        },
    }
    for asset, data in legacy.items():
        store.json_path(asset, "p1").parent.mkdir(parents=True, exist_ok=True)
        store.json_path(asset, "p1").write_text(json.dumps(data), encoding="utf-8")
    record = store.read("prompt_record", "p1")
    assert isinstance(record, PromptRecord) and record.request == GenerationRequest(
        "old", None, "m", 64, 64, None
    )
    post = store.read("telegram_post", "p1")
    assert isinstance(post, PostOutcome) and post.message_ids == ("9",) and post.message_id == "9"
    done = store.read("done_entry", "p1")
    assert isinstance(done, DoneOutcome) and done.entry is not None and done.detail == "posted"
    assert done.queue_row == "removed"


def test_a_run_that_did_nothing_never_overwrites_the_stored_value(tmp_path: Path) -> None:
    store = PartitionFileStore(tmp_path, run_id="r2")
    store.write("prompt_record", "p1", _ready())
    store.write("prompt_record", "p1", PromptRecord("p1", "BUSY", "another run is working on this prompt"))
    assert json.loads(store.json_path("prompt_record", "p1").read_text())["status"] == "READY"
    assert store.read("prompt_record", "p1").status == "BUSY"  # this run's own value, kept apart
    assert ImageOutcome("SKIPPED").reason == "" and not ImageOutcome("OK").ok
