"""The original PNG as a document (after the photo, or instead of it) and silent posts, per row and
globally, through the real Telegram client and the Bot API emulator; the document is a second irreversible
send and is exactly-once too: a crash or a lost answer between the photo and the document never posts the
photo twice, and a document whose outcome is unknown is never sent again blind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from image_pipeline.lifecycle.originals import PENDING, SENDING, SENT
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.publisher.telegram import TelegramPublisher
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID

from .channel_support import queue
from .channel_support import telegram as channel_publisher
from .conftest import run_partitions, write_csv


def telegram(emulator: Any, **fields: Any) -> TelegramPublisher:
    return channel_publisher(emulator, retry_attempts=2, **fields)


def channel(emulator: Any) -> list[tuple[str, str | None, bool]]:
    return [
        (m["method"], m["caption"], m["disable_notification"])
        for m in emulator.messages_for(DEFAULT_CHANNEL_ID)
    ]


def done_rows(resources: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in resources["prompt_sheet"].read_done()}


def test_original_and_silent_per_row(local_resources, instance, telegram_emulator) -> None:
    resources = {**local_resources, "publisher": telegram(telegram_emulator)}
    header = ["prompt", "caption", "original", "silent"]
    after, instead, off = queue(
        resources,
        header,
        ["a fox", "one", "after", "yes"],
        ["a hare", "two", "Instead", ""],
        ["an owl", "three", "off", "no"],
    )
    assert run_partitions(resources, instance, [after, instead, off]).success
    assert [(m, c and c.split("\n")[0], s) for m, c, s in channel(telegram_emulator)] == [
        ("sendPhoto", "one", True),
        ("sendDocument", "", True),  # the original after the photo, silent like it, no caption
        ("sendDocument", "two", False),  # instead of the photo: the caption goes on the document
        ("sendPhoto", "three", False),
    ]
    photo, original = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)[:2]
    assert original["image"] == photo["image"] and original["content_type"] == "image/png"
    done = done_rows(resources)
    assert done[after]["message_id"] == "1"
    assert "the original PNG as a document: message 2" in done[after]["information"]
    assert done[instead]["message_id"] == "3" and "document: message" not in done[instead]["information"]
    book = resources["ledger"].open()
    [entry] = book.entries_for(after)
    assert entry.original_state == SENT and entry.original_message_id == "2"


def test_original_and_silent_globally_and_a_row_overrides(
    local_resources, instance, telegram_emulator
) -> None:
    resources = {
        **local_resources,
        "publisher": telegram(telegram_emulator, send_original="instead", silent=True),
    }
    default, own = queue(
        resources, ["prompt", "original", "silent"], ["a fox", "", ""], ["a hare", "off", "no"]
    )
    assert run_partitions(resources, instance, [default, own]).success
    assert [(m, s) for m, _, s in channel(telegram_emulator)] == [
        ("sendDocument", True),
        ("sendPhoto", False),
    ]


def test_an_unknown_outcome_of_the_document_is_never_sent_again(
    local_resources, instance, telegram_emulator
) -> None:
    alerts = telegram(telegram_emulator, send_original="after", alert_chat_id=str(ALERTS_CHANNEL_ID))
    resources = {**local_resources, "publisher": alerts}
    [pid] = queue(resources, ["prompt"], ["a fox in the rain"])
    # the emulator posts the document, then its front answers 502: the client cannot know it went
    telegram_emulator.fail_next("committed_502", endpoints=["sendDocument"])
    result = run_partitions(resources, instance, [pid])
    assert result.success
    assert [m for m, _, _ in channel(telegram_emulator)] == ["sendPhoto", "sendDocument"]
    post = result.output_for_node("generate_and_post", "telegram_post")[pid]
    assert post.status == "POSTED" and "not sent again" in post.note and post.original_message_ids == ()
    [done] = resources["prompt_sheet"].read_done()
    assert done["status"] == "SUCCESS" and "check the channel" in done["information"]
    assert any("CHECK CHANNEL" in m["text"] for m in telegram_emulator.messages_for(ALERTS_CHANNEL_ID))
    # queue the same row again (a person restores it): neither the photo nor the document goes twice
    write_csv(
        Path(resources["prompt_sheet"].folder) / "process.csv", [["prompt", "id"], ["a fox in the rain", pid]]
    )
    run_partitions(resources, instance, [pid])
    assert [m for m, _, _ in channel(telegram_emulator)] == ["sendPhoto", "sendDocument"]


def test_after_a_failed_document_the_next_run_sends_only_the_document_or_nothing_when_a_send_was_cut(
    local_resources, instance, telegram_emulator
) -> None:
    resources = {**local_resources, "publisher": telegram(telegram_emulator, send_original="after")}
    owed, cut = queue(resources, ["prompt"], ["a fox at dawn"], ["a fox asleep"])
    # the server is restarting: the query never reached tdlib, every try of this run (two per prompt)
    telegram_emulator.fail_next(*["restart"] * 4, endpoints=["sendDocument"])
    result = run_partitions(resources, instance, [owed, cut])
    assert {result.output_for_node("generate_and_post", "telegram_post")[k].status for k in (owed, cut)} == {
        "RETRY"
    }
    assert [m for m, _, _ in channel(telegram_emulator)] == ["sendPhoto", "sendPhoto"]
    assert resources["prompt_sheet"].read_done() == []  # both stay queued: their originals are owed
    book = resources["ledger"].open()
    [first] = book.entries_for(owed)
    assert first.original_state == PENDING and first.message_id == "1"
    # what a process killed after recording SENDING (before or after the request left) leaves behind
    [second] = book.entries_for(cut)
    book.update(cut, second.fingerprint, original_state=SENDING)
    result = run_partitions(resources, instance, [owed, cut])
    # the owed document goes, once; the cut one is never sent blind; no photo goes twice
    assert [m for m, _, _ in channel(telegram_emulator)] == ["sendPhoto", "sendPhoto", "sendDocument"]
    photo, _, original = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert original["image"] == photo["image"]  # the same bytes, kept for the run after
    done = done_rows(resources)
    assert done[owed]["message_id"] == "1" and "document: message 3" in done[owed]["information"]
    post = result.output_for_node("generate_and_post", "telegram_post")[cut]
    assert post.status == "POSTED" and "not sent again" in post.note
    assert done[cut]["status"] == "SUCCESS" and done[cut]["message_id"] == "2"


def test_the_local_outbox_sends_originals_and_records_silent_posts(local_resources, instance) -> None:
    outbox = LocalOutbox(folder=str(local_resources["publisher"].folder), send_original="after", silent=True)
    resources = {**local_resources, "publisher": outbox}
    [pid] = queue(resources, ["prompt"], ["a fox"])
    assert run_partitions(resources, instance, [pid]).success
    photo, original = outbox.posts()
    assert (photo["method"], original["method"]) == ("sendPhoto", "sendDocument")
    assert photo["disable_notification"] is True and original["caption"] == ""
    assert "document: message 2" in done_rows(resources)[pid]["information"]


def test_a_word_other_than_the_choices_makes_the_row_invalid_before_its_image() -> None:
    from image_pipeline.domain.rows import PromptRow, build_request

    defaults = {"default_model": "m", "default_width": 64, "default_height": 64}
    for column, word, choices in (
        ("original", "later", "after, instead, off"),
        ("silent", "maybe", "yes, no"),
    ):
        with pytest.raises(ValueError, match=f"{column} '{word}' is not one of {choices}"):
            build_request(PromptRow(1, "a fox", params={column: word}), **defaults)
    assert build_request(PromptRow(1, "a fox", params={"original": "AFTER", "silent": "Yes"}), **defaults)
