"""EDIT and DELETE typed into Done: the real TelegramPublisher against the Bot API emulator (its
editMessageCaption / deleteMessage with the 48-hour rule on a clock the test moves), the real ledger and the
local workbook; the sheet sensor noticing the words and the job applying each exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.defs.sensors import build_prompt_sheet_sensor
from image_pipeline.defs.sheet_actions import sheet_actions_job
from image_pipeline.domain.errors import PromptRejected
from image_pipeline.domain.retractions import DELETED, EDITED, GONE, UNCHANGED
from image_pipeline.domain.uploads import _as_document
from image_pipeline.lifecycle.ledger import Ledger, PostLedger
from image_pipeline.lifecycle.ledger_edits import ActionBook
from image_pipeline.lifecycle.retractions import apply_sheet_actions, describe
from image_pipeline.services.images.preview import OfflinePreviewGenerator
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.publisher.refusals import MessageGone, MessageNotDeletable
from image_pipeline.services.publisher.telegram import TelegramPublisher
from image_pipeline.services.sheets import LocalWorkbook
from image_pipeline.services.sheets.done_cells import read_done_rows
from image_pipeline_tests.channel_support import CHANNEL, png, post_and_log, publisher
from image_pipeline_tests.conftest import read_csv, write_csv


def type_in_done(folder: Path, key: str, word: str, **cells: str) -> None:
    """A person types into the Done row of ``key``: the status word, and other cells (adding columns)."""
    table = read_csv(folder / "done.csv")
    header = table[0]
    for name in cells:
        if name not in header:
            header.append(name)
    for row in table[1:]:
        row.extend([""] * (len(header) - len(row)))
        if row[header.index("id")] == key:
            row[header.index("status")] = word
            for name, value in cells.items():
                row[header.index(name)] = value
    write_csv(folder / "done.csv", table)


def status_of(folder: Path, key: str) -> str:
    table = read_csv(folder / "done.csv")
    header = table[0]
    return next(r[header.index("status")] for r in table[1:] if r[header.index("id")] == key)


def in_channel(tg) -> list[dict]:
    return tg.messages_for(CHANNEL)


@pytest.fixture
def setup(tmp_path: Path, workbook_dir: Path, telegram_emulator):
    write_csv(workbook_dir / "process.csv", [["prompt", "id", "status"]])
    sheet = LocalWorkbook(folder=str(workbook_dir), retry_base_delay_s=0.01)
    book = Ledger(tmp_path / "ledger.sqlite")
    return telegram_emulator, publisher(telegram_emulator), sheet, book


# ------------------------------------------------------------------------------------------------ emulator
def test_the_emulator_answers_edits_and_deletes_as_the_bot_api_does(telegram_emulator) -> None:
    tg, pub = telegram_emulator, publisher(telegram_emulator)
    first = pub.publish(prompt_id="p", png=png("teal"), caption="a cat").message_id
    assert pub.edit_caption(chat_id=CHANNEL, message_id=first, caption="a dog") == EDITED
    assert in_channel(tg)[0]["visible_text"] == "a dog"
    assert pub.edit_caption(chat_id=CHANNEL, message_id=first, caption="a dog") == UNCHANGED
    with pytest.raises(PromptRejected, match="message caption is too long"):
        pub.edit_caption(chat_id=CHANNEL, message_id=first, caption="x" * 1025)
    with pytest.raises(MessageGone, match="message to edit not found"):
        pub.edit_caption(chat_id=CHANNEL, message_id="999", caption="a dog")
    # rights: an administrator without the rights to post or delete cannot take a post back
    tg.set_bot_rights(CHANNEL, can_post_messages=False, can_delete_messages=False)
    with pytest.raises(MessageNotDeletable, match="message can't be deleted"):
        pub.delete_message(chat_id=CHANNEL, message_id=first)
    tg.set_bot_rights(CHANNEL, can_post_messages=True)
    tg.advance_clock(48 * 3600)  # exactly two days: tdlib refuses from date + 2 days on
    with pytest.raises(MessageNotDeletable, match="message can't be deleted"):
        pub.delete_message(chat_id=CHANNEL, message_id=first)
    tg.advance_clock(-60)
    assert pub.delete_message(chat_id=CHANNEL, message_id=first) == DELETED
    assert in_channel(tg) == [] and [m["message_id"] for m in tg.deleted] == [int(first)]
    assert pub.delete_message(chat_id=CHANNEL, message_id=first) == GONE  # "message to delete not found"


def test_the_local_outbox_edits_and_deletes_too(tmp_path: Path) -> None:
    outbox = LocalOutbox(folder=str(tmp_path / "outbox"))
    receipt = outbox.publish_album(prompt_id="p", pngs=[png("teal"), png("navy")], caption="a cat")
    first, second = receipt.message_ids
    assert outbox.edit_caption(chat_id="outbox", message_id=first, caption="a dog") == EDITED
    assert outbox.edit_caption(chat_id="outbox", message_id=first, caption="a dog") == UNCHANGED
    assert outbox.posts()[0]["caption"] == "a dog"
    assert outbox.delete_message(chat_id="outbox", message_id=first) == DELETED
    assert not outbox.posts()[0].get("deleted")
    assert outbox.delete_message(chat_id="outbox", message_id=second) == DELETED
    assert outbox.delete_message(chat_id="outbox", message_id=second) == GONE
    assert outbox.posts()[0]["deleted"] and "a dog" not in (tmp_path / "outbox" / "index.html").read_text()


# ------------------------------------------------------------------------------------------------ EDIT
def test_edit_puts_the_corrected_caption_on_a_single_post_once(setup, workbook_dir: Path) -> None:
    tg, pub, sheet, book = setup
    [mid] = post_and_log(pub, sheet, "p1", "a cat on a mat")
    type_in_done(workbook_dir, "p1", "edit", caption="A cat, on a mat.")
    [applied] = apply_sheet_actions(book, pub, sheet)
    assert applied.calls == 1 and status_of(workbook_dir, "p1").startswith("EDITED 20")
    assert (
        in_channel(tg)[0]["visible_text"] == "A cat, on a mat."
        and str(in_channel(tg)[0]["message_id"]) == mid
    )
    # the next run finds no word to act on, and a word typed again for the same caption calls nothing
    assert apply_sheet_actions(book, pub, sheet) == []
    type_in_done(workbook_dir, "p1", "EDIT")
    [again] = apply_sheet_actions(book, pub, sheet)
    assert again.calls == 0 and tg.count("editmessagecaption") == 1
    assert status_of(workbook_dir, "p1").startswith("EDITED")


def test_edit_of_an_album_changes_the_caption_on_its_first_message(setup, workbook_dir: Path) -> None:
    tg, pub, sheet, book = setup
    ids = post_and_log(pub, sheet, "p2", "three cats", count=3)
    type_in_done(workbook_dir, "p2", "EDIT", prompt="three cats, corrected")  # no caption column: the prompt
    [applied] = apply_sheet_actions(book, pub, sheet)
    assert applied.calls == 1 and status_of(workbook_dir, "p2").startswith("EDITED")
    captions = {str(m["message_id"]): m["visible_text"] for m in in_channel(tg)}
    assert captions == {ids[0]: "three cats, corrected", ids[1]: None, ids[2]: None}


# ------------------------------------------------------------------------------------------------ DELETE
def test_delete_retracts_a_single_post_and_every_message_of_an_album(setup, workbook_dir: Path) -> None:
    tg, pub, sheet, book = setup
    post_and_log(pub, sheet, "one", "a cat")
    album = post_and_log(pub, sheet, "many", "cats", count=4)
    kept = post_and_log(pub, sheet, "kept", "a dog")
    type_in_done(workbook_dir, "one", "DELETE")
    type_in_done(workbook_dir, "many", "delete ")
    applied = apply_sheet_actions(book, pub, sheet)
    assert sorted(a.calls for a in applied) == [1, 4]
    assert [str(m["message_id"]) for m in in_channel(tg)] == kept
    assert {str(m["message_id"]) for m in tg.deleted} >= set(album)
    assert status_of(workbook_dir, "one").startswith("DELETED 20")
    assert status_of(workbook_dir, "many").startswith("DELETED 20")
    assert status_of(workbook_dir, "kept") == "SUCCESS"


def test_delete_older_than_48_hours_gets_a_clear_answer_and_deletes_nothing(
    setup, workbook_dir: Path
) -> None:
    tg, pub, sheet, book = setup
    post_and_log(pub, sheet, "old", "cats", count=2)
    tg.advance_clock(49 * 3600)
    type_in_done(workbook_dir, "old", "DELETE")
    two_days_on = lambda: time.time() + tg.clock_offset_s  # noqa: E731 - our clock, two days on too
    [applied] = apply_sheet_actions(book, pub, sheet, now=two_days_on)
    assert status_of(workbook_dir, "old") == "DELETE REFUSED: older than 48 hours; delete it in the app"
    assert len(in_channel(tg)) == 2 and tg.deleted == []
    # settled once: a second run makes no call
    type_in_done(workbook_dir, "old", "DELETE")
    assert apply_sheet_actions(book, pub, sheet)[0].calls == 0 and tg.count("deletemessage") == applied.calls


def test_an_album_whose_ids_cannot_be_told_is_refused_not_half_deleted(setup, workbook_dir: Path) -> None:
    tg, pub, sheet, book = setup
    post_and_log(pub, sheet, "alb", "cats", count=2)
    table = read_csv(workbook_dir / "done.csv")
    table[1][table[0].index("information")] = "posted an album (a person shortened this text)"
    write_csv(workbook_dir / "done.csv", table)
    type_in_done(workbook_dir, "alb", "DELETE")
    apply_sheet_actions(book, pub, sheet)
    assert status_of(workbook_dir, "alb").startswith(
        "DELETE REFUSED: the album's message ids are not all known"
    )
    assert len(in_channel(tg)) == 2 and tg.count("deletemessage") == 0


# ------------------------------------------------------------------------------------------------ crashes
def test_a_crash_between_the_call_and_the_outcome_is_read_back_not_repeated_blind(
    setup, workbook_dir: Path
) -> None:
    tg, pub, sheet, book = setup
    post_and_log(pub, sheet, "p", "a cat")
    type_in_done(workbook_dir, "p", "DELETE")
    # what a run had done when it died: the intent, then Telegram's delete; no outcome, no cell written
    _, rows = read_done_rows(sheet)
    action, _ = describe(book, rows[0], "DELETE")
    assert action is not None
    actions = ActionBook(book)
    actions.begin(action)
    actions.sending(action.key, action.message_ids[0])
    assert pub.delete_message(chat_id=CHANNEL, message_id=action.message_ids[0]) == DELETED
    [applied] = apply_sheet_actions(book, pub, sheet)
    # the one further call is the read-back: "message to delete not found" after our own call
    assert applied.calls == 1 and tg.count("deletemessage") == 2
    assert status_of(workbook_dir, "p").startswith("DELETED 20")


def test_a_crash_between_the_outcome_and_the_write_back_only_writes(setup, workbook_dir: Path) -> None:
    tg, pub, sheet, book = setup
    post_and_log(pub, sheet, "p", "a cat")
    type_in_done(workbook_dir, "p", "EDIT", caption="a better cat")
    _, rows = read_done_rows(sheet)
    action, _ = describe(book, rows[0], "EDIT")
    assert action is not None
    actions = ActionBook(book)
    actions.begin(action)
    actions.sending(action.key, action.message_ids[0])
    pub.edit_caption(chat_id=CHANNEL, message_id=action.message_ids[0], caption=action.caption)
    actions.confirmed(action.key, action.message_ids[0])
    settled = actions.settle(action.key, "EDITED 2026-01-01T00:00:00Z")
    [applied] = apply_sheet_actions(book, pub, sheet)
    assert applied.calls == 0 and tg.count("editmessagecaption") == 1
    assert status_of(workbook_dir, "p") == settled


def test_an_answer_lost_after_telegram_applied_the_edit_is_read_back(setup, workbook_dir: Path) -> None:
    tg, pub, sheet, book = setup
    post_and_log(pub, sheet, "p", "a cat")
    type_in_done(workbook_dir, "p", "EDIT", caption="a cat, edited")
    tg.fail_next("committed_502", endpoints=["editMessageCaption"])  # applied, then the front says 502
    [applied] = apply_sheet_actions(book, pub, sheet)
    assert status_of(workbook_dir, "p").startswith("EDITED") and applied.calls == 1
    assert tg.count("editmessagecaption") == 2  # the repeat answered "message is not modified"
    assert in_channel(tg)[0]["visible_text"] == "a cat, edited"


# ------------------------------------------------------------------------------------------------ sensor
def sheet_sensor(sheet: LocalWorkbook, pub, ledger: PostLedger, instance: dg.DagsterInstance):
    """The instant prompt sheet sensor over these parts: ``tick(cursor)`` evaluates it once."""
    resources = {
        "prompt_sheet": sheet,
        "image_generator": OfflinePreviewGenerator(width=64, height=64),
        "publisher": pub,
        "ledger": ledger,
    }
    sensor = build_prompt_sheet_sensor(instant=True, interval_s=30)

    def tick(cursor: str | None):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            return sensor(context)

    return tick


def run_actions(sheet: LocalWorkbook, pub, ledger: PostLedger, instance: dg.DagsterInstance) -> bool:
    """One run of ``sheet_actions_job`` with this publisher; whether it succeeded."""
    resources = {"prompt_sheet": sheet, "publisher": pub, "ledger": ledger}
    return sheet_actions_job.execute_in_process(
        instance=instance, resources=resources, raise_on_error=False
    ).success


def test_the_sensor_notices_the_words_and_each_is_applied_once(
    setup, workbook_dir: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    tg, pub, sheet, _ = setup
    ledger = PostLedger(path=str(tmp_path / "ledger.sqlite"))
    tick = sheet_sensor(sheet, pub, ledger, instance)
    post_and_log(pub, sheet, "p", "cats", count=2)

    quiet = tick(None)
    assert isinstance(quiet, dg.SensorResult) and not quiet.run_requests
    type_in_done(workbook_dir, "p", "DELETE")
    first = tick(quiet.cursor)
    [request] = first.run_requests
    assert request.job_name == sheet_actions_job.name

    # two ticks' runs (the second tick came before the first run wrote the row): Telegram is called once
    second = tick(first.cursor)
    assert len(second.run_requests) == 1
    assert run_actions(sheet, pub, ledger, instance)
    assert run_actions(sheet, pub, ledger, instance)
    assert tg.count("deletemessage") == 2 and in_channel(tg) == []  # the album's two messages, once each
    assert status_of(workbook_dir, "p").startswith("DELETED")
    after = tick(second.cursor)
    assert not after.run_requests


def test_after_a_run_the_service_refused_the_words_wait_before_the_next_run(
    setup, workbook_dir: Path, tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked bot token fails the whole run: the sensor does not start another every tick, but once the
    wait after the failure is over, and that one (the token fixed) deletes the post."""
    from image_pipeline.defs import sheet_actions

    tg, pub, sheet, _ = setup
    ledger = PostLedger(path=str(tmp_path / "ledger.sqlite"))
    tick = sheet_sensor(sheet, pub, ledger, instance)
    post_and_log(pub, sheet, "p", "cats")

    quiet = tick(None)
    type_in_done(workbook_dir, "p", "DELETE")
    first = tick(quiet.cursor)
    assert len(first.run_requests) == 1
    revoked = TelegramPublisher(
        token="123456:revoked", chat_id=CHANNEL, api_base_url=tg.base_url, retry_base_delay_s=0.01
    )
    assert not run_actions(
        sheet, revoked, ledger, instance
    )  # 401 Unauthorized: the whole service refuses, not this row
    assert in_channel(tg) and status_of(workbook_dir, "p") == "DELETE"
    waiting = tick(first.cursor)
    assert not getattr(waiting, "run_requests", None)  # the next tick does not try again at once
    monkeypatch.setattr(sheet_actions, "RETRY_AFTER_FAILURE_S", 0.0)  # the wait is over
    again = tick(getattr(waiting, "cursor", None) or first.cursor)
    assert len(again.run_requests) == 1
    assert again.run_requests[0].run_key != first.run_requests[0].run_key  # not taken for the same request
    assert run_actions(sheet, pub, ledger, instance)
    assert in_channel(tg) == [] and status_of(workbook_dir, "p").startswith("DELETED")


def test_delete_takes_back_the_original_sent_as_a_document_after_the_post(setup, workbook_dir: Path) -> None:
    tg, pub, sheet, book = setup
    [photo] = post_and_log(pub, sheet, "p", "a cat")
    document = _as_document(png("teal"), "p", "the original")
    original = pub.call("sendDocument", {"chat_id": CHANNEL}, document)["message_id"]
    table = read_csv(workbook_dir / "done.csv")
    table[1][table[0].index("information")] += f"; the original PNG as a document: message {original}"
    write_csv(workbook_dir / "done.csv", table)
    type_in_done(workbook_dir, "p", "DELETE")
    [applied] = apply_sheet_actions(book, pub, sheet)
    assert applied.calls == 2 and in_channel(tg) == []
    assert {str(m["message_id"]) for m in tg.deleted} == {photo, str(original)}


def test_on_google_sheets_the_words_ride_along_with_the_queue_read(
    google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch, instance
) -> None:
    """Done's status column is read in the request that reads the queue's columns: noticing a DELETE costs
    the sensor no Sheets request of its own; the run deletes the post and writes the row on Google."""
    from image_pipeline.definitions import build_definitions
    from image_pipeline_tests.conftest import emulated_env, sensor_tick

    google_emulator.drive_lag_s = 180.0  # Drive's token does not show the edit: the queue check must
    env = emulated_env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        [["prompt", "id", "status"]],
        IMAGE_PIPELINE_INSTANT="1",
        IMAGE_PIPELINE_SENSOR_INTERVAL_S="1",
        IMAGE_PIPELINE_SHEET_CHECK_S="1",
    )
    sid = env["GOOGLE_SHEET_KEY"]
    message_id = (
        publisher(telegram_emulator).publish(prompt_id="p", png=png("teal"), caption="a cat").message_id
    )
    google_emulator.add_worksheet(sid, "Done")
    google_emulator.set_values(
        sid,
        "Done",
        [
            ["id", "prompt", "status", "information", "message_id", "chat_id"],
            [
                "p",
                "a cat",
                "SUCCESS",
                f"posted to chat {CHANNEL} as message {message_id}",
                message_id,
                CHANNEL,
            ],
        ],
    )
    defs = build_definitions(env)
    first = sensor_tick(defs, instance, None)  # learns where Done's status column is
    assert isinstance(first, dg.SensorResult) and not first.run_requests
    time.sleep(1)
    idle = sensor_tick(defs, instance, first.cursor)  # the queue digest over its final columns
    cursor = idle.cursor if isinstance(idle, dg.SensorResult) and idle.cursor else first.cursor
    google_emulator.set_cell(sid, "Done", 2, 3, "DELETE")
    time.sleep(1)  # the next queue check is due
    reads = google_emulator.read_requests
    second = sensor_tick(defs, instance, cursor)
    assert google_emulator.read_requests - reads == 1  # the queue check, Done's column inside it
    [request] = second.run_requests
    assert request.job_name == sheet_actions_job.name
    result = defs.resolve_job_def(sheet_actions_job.name).execute_in_process(instance=instance)
    assert result.success
    assert in_channel(telegram_emulator) == []
    assert google_emulator.values(sid, "Done")[1][2].startswith("DELETED 20")
