"""Reactions in Done and the weekly digest: the real TelegramPublisher posts to the Bot API emulator, the
emulator produces real ``message_reaction_count`` updates that the real client fetches with getUpdates, and
``record_reactions`` puts them into the real ledger, the local workbook's Done and Dagster observations."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from image_pipeline.defs.digest import TOP_TAG, WEEK_TAG, build_digest_schedule, digest_job
from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.lifecycle.digest import digest_cron, send_digest, week_key
from image_pipeline.lifecycle.ledger import Ledger, PostLedger
from image_pipeline.lifecycle.ledger_reactions import EMPTY, SENT, ReactionBook
from image_pipeline.lifecycle.reactions import parse_update, record_reactions
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.sheets import LocalWorkbook
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
from image_pipeline.testing.emulators.telegram.reactions import set_reactions
from image_pipeline_tests.channel_support import CHANNEL, png, post_and_log, publisher
from image_pipeline_tests.conftest import read_csv

ALLOWED = json.dumps(["callback_query", "message_reaction_count"])


class Channel:
    """The pieces of one test: emulator, publisher, workbook, ledger; ``poll`` is what the sensor does."""

    def __init__(self, tg, tmp_path: Path) -> None:
        self.tg = tg
        self.pub = publisher(tg)
        (tmp_path / "wb").mkdir()
        self.sheet = LocalWorkbook(folder=str(tmp_path / "wb"), retry_base_delay_s=0.01)
        self.book = Ledger(tmp_path / "ledger.sqlite")
        self.offset = 0
        self.events: list[dg.AssetObservation] = []

    def poll(self) -> list[str]:
        updates = self.pub.call("getUpdates", {"offset": self.offset, "allowed_updates": ALLOWED})
        if updates:
            self.offset = updates[-1]["update_id"] + 1
        reactions = [u for u in updates if "message_reaction_count" in u]
        return record_reactions(self.book, self.sheet, reactions, events=self.events)

    def done(self) -> dict[str, dict[str, str]]:
        table = read_csv(Path(self.sheet.folder) / "done.csv")
        return {r[0]: dict(zip(table[0], r, strict=False)) for r in table[1:]}


@pytest.fixture
def ch(telegram_emulator, tmp_path: Path) -> Channel:
    return Channel(telegram_emulator, tmp_path)


def test_counts_go_into_done_and_the_posts_metadata(ch: Channel, instance: dg.DagsterInstance) -> None:
    [single] = post_and_log(ch.pub, ch.sheet, "p-1", "a red fox")
    album = post_and_log(ch.pub, ch.sheet, "p-2", "three lighthouses", count=3)
    set_reactions(ch.tg, CHANNEL, int(single), {"👍": 12, "❤": 3})
    # an album's reactions sit on whichever message people reacted to: they add up into its row
    set_reactions(ch.tg, CHANNEL, int(album[0]), {"🔥": 1, "paid": 2, "custom:5368324170671202286": 1})
    set_reactions(ch.tg, CHANNEL, int(album[2]), {"🔥": 3})

    lines = ch.poll()

    done = ch.done()
    assert (done["p-1"]["reactions"], done["p-1"]["reactions_total"]) == ("👍 12 · ❤ 3", "15")
    assert done["p-2"]["reactions"] == "🔥 4 · ⭐paid 2 · custom:5368324170671202286 1"
    assert done["p-2"]["reactions_total"] == "7"
    assert any("p-1" in line and "👍 12" in line for line in lines)
    # the metadata: one observation per post, on its telegram_post partition, as a sensor reports them
    by_partition = {e.partition: e for e in ch.events}
    assert set(by_partition) == {"p-1", "p-2"}
    assert by_partition["p-2"].metadata["reactions_total"].value == 7
    assert (
        by_partition["p-1"].metadata["link"].value
        == f"https://t.me/{ch.tg.chats[DEFAULT_CHANNEL_ID].username}/{single}"
    )
    instance.add_dynamic_partitions("prompts", ["p-1", "p-2"])
    for event in ch.events:
        instance.report_runless_asset_event(event)
    [record] = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("telegram_post"), asset_partitions=["p-1"]), limit=5
    ).records
    assert record.asset_observation.metadata["reactions"].value == "👍 12 · ❤ 3"
    # nothing new: no sheet write, no observation
    ch.events.clear()
    assert ch.poll() == [] and ch.events == []


def test_a_later_update_replaces_and_an_older_one_arriving_late_does_not(ch: Channel) -> None:
    [mid] = post_and_log(ch.pub, ch.sheet, "p-1", "a red fox")
    now = int(ch.tg.now())
    set_reactions(ch.tg, CHANNEL, int(mid), {"👍": 5}, date=now + 10)
    ch.poll()
    assert ch.done()["p-1"]["reactions"] == "👍 5"
    set_reactions(ch.tg, CHANNEL, int(mid), {"👍": 7, "😂": 1}, date=now + 30)
    ch.poll()
    assert (ch.done()["p-1"]["reactions"], ch.done()["p-1"]["reactions_total"]) == ("👍 7 · 😂 1", "8")
    # Telegram groups and delays these: an update of an earlier moment may come after a later one
    set_reactions(ch.tg, CHANNEL, int(mid), {"👍": 6}, date=now + 20)
    lines = ch.poll()
    assert (ch.done()["p-1"]["reactions"], ch.done()["p-1"]["reactions_total"]) == ("👍 7 · 😂 1", "8")
    assert any("older update" in line for line in lines)
    # all reactions taken back: the counts are empty, not stale
    set_reactions(ch.tg, CHANNEL, int(mid), {}, date=now + 40)
    ch.poll()
    assert (ch.done()["p-1"]["reactions"], ch.done()["p-1"]["reactions_total"]) == ("", "0")


def test_a_message_that_is_no_post_in_done_is_ignored(ch: Channel) -> None:
    post_and_log(ch.pub, ch.sheet, "p-1", "a red fox")
    by_hand = ch.pub.call("sendMessage", {"chat_id": CHANNEL, "text": "posted by a person"})
    before = read_csv(Path(ch.sheet.folder) / "done.csv")
    set_reactions(ch.tg, CHANNEL, by_hand["message_id"], {"👍": 40})
    lines = ch.poll()
    assert any("no post in Done" in line for line in lines)
    assert read_csv(Path(ch.sheet.folder) / "done.csv") == before
    assert ch.events == [] and ReactionBook(ch.book).top_posts(0, 10) == []


def test_counts_wait_for_the_row_when_done_is_not_written_yet(ch: Channel) -> None:
    """A message posted but not logged yet is no post of ours yet; its next update, once the row is there,
    is written."""
    receipt = ch.pub.publish(prompt_id="p-1", png=png("teal"), caption="a red fox")
    set_reactions(ch.tg, CHANNEL, int(receipt.message_id), {"👍": 2})
    ch.poll()  # no Done row yet (and no Done sheet): the counts are dropped as no post of ours
    set_reactions(ch.tg, CHANNEL, int(receipt.message_id), {"👍": 3})
    ch.sheet.append_done(
        [
            DoneEntry(
                id="p-1",
                prompt="a red fox",
                status="SUCCESS",
                information=f"posted to chat {receipt.chat_id} as message {receipt.message_id}",
                message_id=receipt.message_id,
                chat_id=receipt.chat_id,
            )
        ]
    )
    ch.poll()
    assert ch.done()["p-1"]["reactions"] == "👍 3"


def test_the_emulator_sends_counts_only_to_an_administrator_that_asks_for_them(ch: Channel) -> None:
    [mid] = post_and_log(ch.pub, ch.sheet, "p-1", "a red fox")
    # a poll that does not list message_reaction_count in allowed_updates never sees one
    set_reactions(ch.tg, CHANNEL, int(mid), {"👍": 1})
    assert not ch.pub.call("getUpdates", {"allowed_updates": json.dumps(["callback_query"])})
    ch.tg.set_bot_rights(CHANNEL, "member")
    assert set_reactions(ch.tg, CHANNEL, int(mid), {"👍": 2}) is None
    updates = ch.pub.call("getUpdates", {"allowed_updates": ALLOWED})
    assert [parse_update(u)[3] for u in updates] == [[["👍", 1]]]


def test_the_digest_lists_the_weeks_top_posts_once(ch: Channel) -> None:
    ids = {
        key: post_and_log(ch.pub, ch.sheet, key, prompt)[0]
        for key, prompt in [("p-1", "a red fox"), ("p-2", "three lighthouses"), ("p-3", "a quiet harbour")]
    }
    old = post_and_log(ch.pub, ch.sheet, "p-0", "last month's hit", timestamp="2020-01-01T00:00:00Z")[0]
    for key, n in [("p-1", 3), ("p-2", 9), ("p-3", 5)]:
        set_reactions(ch.tg, CHANNEL, int(ids[key]), {"👍": n})
    set_reactions(ch.tg, CHANNEL, int(old), {"👍": 99})
    ch.poll()

    outcome = send_digest(ch.book, ch.pub, week="2026-W10", now=time.time(), top=2)

    assert outcome == "digest 2026-W10: sent, 2 post(s)"
    [notice] = ch.tg.messages_for(ALERTS_CHANNEL_ID)
    lines = notice["visible_text"].splitlines()
    assert lines[0].startswith("Top posts of the last 7 days (2026-W10)")
    assert lines[1].startswith("1. 9 · 👍 9 · three lighthouses · https://t.me/")
    assert lines[1].endswith(f"/{ids['p-2']}") and lines[2].startswith("2. 5 · 👍 5 · a quiet harbour")
    assert len(lines) == 3  # top 2; the old post is outside the 7 days
    # once per week: a second run, even with other counts, sends nothing
    set_reactions(ch.tg, CHANNEL, int(ids["p-1"]), {"👍": 50})
    ch.poll()
    assert "already" in send_digest(ch.book, ch.pub, week="2026-W10", now=time.time(), top=2)
    assert len(ch.tg.messages_for(ALERTS_CHANNEL_ID)) == 1
    assert ReactionBook(ch.book).digest_state("2026-W10") == SENT


def test_the_digest_schedule_and_job_send_once_per_week(
    tmp_path: Path, telegram_emulator, instance: dg.DagsterInstance
) -> None:
    ch = Channel(telegram_emulator, tmp_path)
    [mid] = post_and_log(ch.pub, ch.sheet, "p-1", "a red fox")
    set_reactions(ch.tg, CHANNEL, int(mid), {"❤": 4})
    ch.poll()
    schedule = build_digest_schedule(at="mon 09:00", timezone="Europe/Berlin", top=3)
    assert schedule.cron_schedule == "0 9 * * 1"
    tick = datetime(2026, 3, 9, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    request = schedule.evaluate_tick(
        dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
    )
    [run] = request.run_requests
    assert (run.run_key, run.tags[WEEK_TAG], run.tags[TOP_TAG]) == ("digest-2026-W11", "2026-W11", "3")
    outbox = LocalOutbox(folder=str(tmp_path / "outbox"))
    resources = {"publisher": outbox, "ledger": PostLedger(path=str(tmp_path / "ledger.sqlite"))}
    for _ in range(2):  # a second run of the week (by hand, a retry) sends nothing
        result = digest_job.execute_in_process(instance=instance, tags=run.tags, resources=resources)
        assert result.success
    [notice] = outbox.notices()
    assert "1. 4 · ❤ 4 · a red fox" in notice["text"]
    # a week without reactions sends nothing, and says so
    assert "nothing sent" in send_digest(
        ch.book, outbox, week="2026-W20", now=time.time() + 30 * 86400, top=3
    )
    assert ReactionBook(ch.book).digest_state("2026-W20") == EMPTY and len(outbox.notices()) == 1


def test_digest_time_and_week() -> None:
    assert digest_cron("mon 09:00") == "0 9 * * 1"
    assert digest_cron("Sunday 23:59") == "59 23 * * 0"
    for bad in ("monday", "xyz 09:00", "mon 25:00", "mon 9"):
        with pytest.raises(ValueError, match="IMAGE_PIPELINE_DIGEST_AT"):
            digest_cron(bad)
    assert week_key(datetime(2027, 1, 1, tzinfo=ZoneInfo("UTC"))) == "2026-W53"


def test_update_shapes() -> None:
    raw = {
        "update_id": 5,
        "message_reaction_count": {
            "chat": {"id": -100123, "type": "channel", "title": "x"},
            "message_id": 41,
            "date": 1700000000,
            "reactions": [
                {"type": {"type": "emoji", "emoji": "👍"}, "total_count": 2},
                {"type": {"type": "paid"}, "total_count": 5},
                {"type": {"type": "custom_emoji", "custom_emoji_id": "77"}, "total_count": 1},
                {"type": {"type": "some_new_kind"}, "total_count": 1},
            ],
        },
    }
    assert parse_update(raw) == (
        "-100123",
        "41",
        1700000000,
        [["⭐paid", 5], ["👍", 2], ["custom:77", 1], ["some_new_kind", 1]],
    )
    assert parse_update(raw["message_reaction_count"]) == parse_update(raw)
    assert parse_update({"update_id": 6, "callback_query": {}}) is None


def test_the_updates_sensor_records_counts_once_and_reports_them_as_observations(
    ch: Channel, tmp_path: Path
) -> None:
    """The one getUpdates reader (``telegram_updates_sensor``) hands reaction counts to the Done rows and
    returns the observations with its cursor; the next tick reads nothing new and reports nothing."""
    from image_pipeline.defs.telegram_updates import build_telegram_updates_sensor
    from image_pipeline.lifecycle.ledger import PostLedger

    [mid] = post_and_log(ch.pub, ch.sheet, "p-1", "a red fox")
    set_reactions(ch.tg, CHANNEL, int(mid), {"👍": 4, "❤": 1})
    sensor = build_telegram_updates_sensor()
    resources = {
        "prompt_sheet": ch.sheet,
        "publisher": ch.pub,
        "ledger": PostLedger(path=str(tmp_path / "ledger.sqlite")),
    }
    # the emulator hands counts only to a bot that asked for them once (allowed_updates is remembered)
    ch.pub.call("getUpdates", {"offset": 0, "allowed_updates": ALLOWED})
    set_reactions(ch.tg, CHANNEL, int(mid), {"👍": 5, "❤": 1})
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, cursor=None, resources=resources) as context:
            first = sensor(context)
        assert isinstance(first, dg.SensorResult) and not first.run_requests
        [event] = first.asset_events
        assert event.partition == "p-1" and event.metadata["reactions_total"].value == 6
        assert (ch.done()["p-1"]["reactions"], ch.done()["p-1"]["reactions_total"]) == ("👍 5 · ❤ 1", "6")
        with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources) as context:
            second = sensor(context)
        assert isinstance(second, dg.SkipReason), second
