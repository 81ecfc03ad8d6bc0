"""Posting slots: the slot arithmetic (queue order, post_at, both daylight-saving changes), missed slots, the
slot sensor's ticks (exactly one run per row), and the post waiting for its slot, on a clock the test drives."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from image_pipeline.definitions import build_definitions
from image_pipeline.defs.assets import ASSETS
from image_pipeline.defs.slots import build_slot_sensor
from image_pipeline.domain.rows import PromptRow, build_request
from image_pipeline.domain.slots import POST, SKIP, assign, occurrences, parse_post_at, parse_slots
from image_pipeline.lifecycle.planning import POST_AT_TAG, SLOT_TAG, plan_tick, wait_for_slot
from image_pipeline.services.sheets import LocalWorkbook

from .conftest import QUIET, read_csv, write_csv

BERLIN = ZoneInfo("Europe/Berlin")
SLOTS = parse_slots("09:00,13:00,18:30")


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold).astimezone(UTC)


# --- the arithmetic ---------------------------------------------------------------------------------------


def test_slots_parse_sorted_once_and_bad_entries_are_named() -> None:
    assert [t.strftime("%H:%M") for t in parse_slots("18:30, 09:00,13:00,09:00")] == [
        "09:00",
        "13:00",
        "18:30",
    ]
    with pytest.raises(ValueError, match="'25:00'"):
        parse_slots("09:00,25:00")


def test_rows_take_the_next_free_slots_in_queue_order() -> None:
    now = berlin(2026, 12, 7, 10, 0)
    plan = assign([("a", ""), ("b", ""), ("c", ""), ("d", "")], SLOTS, BERLIN, now)
    assert [(p.prompt_id, p.at) for p in plan.entries] == [
        ("a", berlin(2026, 12, 7, 13, 0)),
        ("b", berlin(2026, 12, 7, 18, 30)),
        ("c", berlin(2026, 12, 8, 9, 0)),
        ("d", berlin(2026, 12, 8, 13, 0)),
    ]


def test_post_at_by_date_and_by_slot_name_occupy_their_slots() -> None:
    now = berlin(2026, 12, 7, 10, 0)
    queue = [("a", ""), ("b", "18:30"), ("c", "2026-12-08 09:00"), ("d", ""), ("e", "2026-12-24T18:00+01:00")]
    plan = assign(queue, SLOTS, BERLIN, now)
    at = {p.prompt_id: (p.at, p.source) for p in plan.entries}
    assert at["b"] == (berlin(2026, 12, 7, 18, 30), "post_at")  # the slot's next occurrence
    assert at["c"] == (berlin(2026, 12, 8, 9, 0), "post_at")  # a date and time in the slot zone
    assert at["e"] == (berlin(2026, 12, 24, 18, 0), "post_at")  # ISO with an offset
    # a and d skip the slots b and c hold
    assert at["a"] == (berlin(2026, 12, 7, 13, 0), "slot")
    assert at["d"] == (berlin(2026, 12, 8, 13, 0), "slot")


def test_a_bad_post_at_is_an_error_with_a_reason_and_makes_the_row_invalid() -> None:
    plan = assign(
        [("a", "tomorrow-ish"), ("b", "2026-12-24"), ("c", "")], SLOTS, BERLIN, berlin(2026, 12, 7, 8, 0)
    )
    assert "is not a date and time" in plan.errors["a"]
    assert "the time is missing" in plan.errors["b"]
    assert [p.prompt_id for p in plan.entries] == ["c"]
    row = PromptRow(2, "a cat", "p1", params={"post_at": "2026-02-30 10:00"})
    with pytest.raises(ValueError, match="post_at '2026-02-30 10:00'"):
        build_request(row, default_model="m", default_width=512, default_height=512)


def test_post_at_is_no_edit_of_the_row() -> None:
    plain = PromptRow(2, "a cat", "p1")
    timed = PromptRow(2, "a cat", "p1", params={"post_at": "13:00"})
    assert plain.fingerprint() == timed.fingerprint()


def test_spring_forward_a_missing_slot_is_shifted_by_the_hour() -> None:
    # Europe/Berlin 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day
    slots = parse_slots("02:30,09:00")
    got = list(_take(occurrences(slots, BERLIN, berlin(2026, 3, 28, 12, 0)), 5))
    assert got == [
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # read with the winter offset: 03:30 CEST on the wall
        datetime(2026, 3, 29, 7, 0, tzinfo=UTC),  # 09:00 CEST
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST, a normal day again
        datetime(2026, 3, 30, 7, 0, tzinfo=UTC),
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]
    assert got[0].astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"
    # a post_at at the missing time lands at the same shifted instant
    assert parse_post_at("2026-03-29 02:30", BERLIN, berlin(2026, 3, 1, 0, 0)) == got[0]
    # a slot that coincides with the shifted one is one slot, not two
    both = list(_take(occurrences(parse_slots("02:30,03:30"), BERLIN, berlin(2026, 3, 29, 0, 0)), 2))
    assert both == [datetime(2026, 3, 29, 1, 30, tzinfo=UTC), datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]


def test_fall_back_a_repeated_slot_is_taken_once_at_its_first_occurrence() -> None:
    # Europe/Berlin 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice
    slots = parse_slots("02:30,09:00")
    got = list(_take(occurrences(slots, BERLIN, berlin(2026, 10, 24, 12, 0)), 4))
    assert got == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST, the first one
        datetime(2026, 10, 25, 8, 0, tzinfo=UTC),  # 09:00 CET
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 10, 26, 8, 0, tzinfo=UTC),
    ]
    # between the two 02:30s (at the second one's wall time) the slot is not handed out again
    second = berlin(2026, 10, 25, 2, 15, fold=1)
    assert next(occurrences(slots, BERLIN, second)) == datetime(2026, 10, 25, 8, 0, tzinfo=UTC)
    assert parse_post_at("2026-10-25 02:30", BERLIN, second) == got[0]
    # a queue across the change: each row one slot, none twice, in queue order
    plan = assign([("a", ""), ("b", ""), ("c", "")], slots, BERLIN, berlin(2026, 10, 24, 12, 0))
    assert [p.at for p in plan.entries] == got[:3]


# --- missed slots ------------------------------------------------------------------------------------------


def test_a_missed_slot_is_posted_at_the_next_tick_with_a_notice() -> None:
    first = plan_tick([("a", ""), ("b", "")], SLOTS, BERLIN, _ts(2026, 12, 7, 8, 0), lead_s=900)
    assert not first.runs and first.cursor["plan"] == {
        "a": _ts(2026, 12, 7, 9, 0),
        "b": _ts(2026, 12, 7, 13, 0),
    }
    # the machine was off from 08:00 to 11:00: a's 09:00 slot passed
    later = plan_tick(
        [("a", ""), ("b", "")],
        SLOTS,
        BERLIN,
        _ts(2026, 12, 7, 11, 0),
        lead_s=900,
        state=first.cursor,
        missed=POST,
    )
    assert [(r.prompt_ids, r.missed) for r in later.runs] == [(["a"], True)]
    assert later.runs[0].at == berlin(2026, 12, 7, 9, 0)  # a past slot: the post waits for nothing
    assert len(later.notices) == 1 and "prompt a missed its time 2026-12-07 09:00 CET" in later.notices[0]
    assert later.cursor["plan"] == {"b": _ts(2026, 12, 7, 13, 0)}
    # the next tick neither posts a again nor repeats the notice
    again = plan_tick(
        [("a", ""), ("b", "")], SLOTS, BERLIN, _ts(2026, 12, 7, 11, 0, 30), lead_s=900, state=later.cursor
    )
    assert not again.runs and not again.notices


def test_a_missed_slot_is_skipped_and_the_row_takes_the_next_free_slot() -> None:
    first = plan_tick([("a", ""), ("b", "")], SLOTS, BERLIN, _ts(2026, 12, 7, 8, 0), lead_s=900)
    later = plan_tick(
        [("a", ""), ("b", "")],
        SLOTS,
        BERLIN,
        _ts(2026, 12, 7, 11, 0),
        lead_s=900,
        state=first.cursor,
        missed=SKIP,
    )
    assert not later.runs and not later.notices
    assert any("a: its time 2026-12-07 09:00 CET passed" in line for line in later.logs)
    assert later.cursor["plan"] == {"a": _ts(2026, 12, 7, 13, 0), "b": _ts(2026, 12, 7, 18, 30)}
    # a post_at in the past is missed the same way
    past = plan_tick(
        [("c", "2026-12-06 18:30")], SLOTS, BERLIN, _ts(2026, 12, 7, 11, 0), lead_s=900, missed=SKIP
    )
    assert not past.runs and past.cursor["plan"] == {"c": _ts(2026, 12, 7, 13, 0)}
    posted = plan_tick([("c", "2026-12-06 18:30")], SLOTS, BERLIN, _ts(2026, 12, 7, 11, 0), lead_s=900)
    assert [(r.prompt_ids, r.missed) for r in posted.runs] == [(["c"], True)]


def test_a_slot_just_passed_is_still_on_time() -> None:
    first = plan_tick([("a", "")], SLOTS, BERLIN, _ts(2026, 12, 7, 8, 0), lead_s=0)
    # no tick between 08:00 and 09:00:40 (lead 0): 40 s after the slot is within the minute, no notice
    late = plan_tick([("a", "")], SLOTS, BERLIN, _ts(2026, 12, 7, 9, 0, 40), lead_s=0, state=first.cursor)
    assert [(r.prompt_ids, r.missed) for r in late.runs] == [(["a"], False)] and not late.notices


# --- the wait for the slot -----------------------------------------------------------------------------------


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self, now: float) -> None:
        self.t = now
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def test_the_post_waits_for_its_slot_and_leaves_within_a_minute() -> None:
    slot = _ts(2026, 12, 7, 9, 0)
    clock = FakeClock(slot - 900)
    renewed: list[float] = []
    tags = {POST_AT_TAG: f"{slot:.0f}", SLOT_TAG: "2026-12-07 09:00 CET"}
    assert wait_for_slot(tags, lambda: renewed.append(clock.now()) or True, lambda _m: None, clock)
    assert slot <= clock.now() < slot + 60
    # the claim was renewed all along: no gap longer than a step, whatever the lease
    assert max(clock.sleeps) <= 30 and len(renewed) == len(clock.sleeps) == 30
    # a run without a slot, or with one already past, does not wait
    assert wait_for_slot({}, lambda: False, lambda _m: None, clock) and clock.sleeps[-1] <= 30
    before = len(clock.sleeps)
    assert wait_for_slot({POST_AT_TAG: f"{slot - 3600:.0f}"}, lambda: False, lambda _m: None, clock)
    assert len(clock.sleeps) == before


def test_a_wait_ends_when_another_run_takes_the_prompt() -> None:
    clock = FakeClock(0.0)
    assert not wait_for_slot({POST_AT_TAG: "600"}, lambda: clock.now() < 90, lambda _m: None, clock)
    assert clock.now() < 600


# --- the sensor and the run ---------------------------------------------------------------------------------


def _queue(workbook_dir: Path, rows: list[list[str]]) -> list[str]:
    write_csv(workbook_dir / "process.csv", [["prompt", "post_at"], *rows])
    return [r.prompt_id for r in LocalWorkbook(folder=str(workbook_dir)).ensure_ids().rows]


def _tick(sensor, instance, resources, cursor):
    names = ("prompt_sheet", "image_generator", "publisher", "ledger")
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={k: resources[k] for k in names}
    ) as ctx:
        result = sensor(ctx)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_the_sensor_asks_once_per_row_ahead_of_its_slot_and_the_post_goes_out_once(
    instance, local_resources, workbook_dir: Path, tmp_path: Path
) -> None:
    a, b = _queue(workbook_dir, [["a red fox", ""], ["a blue owl", "13:00"]])
    now = [_ts(2026, 12, 7, 8, 0)]
    sensor = build_slot_sensor(slots=SLOTS, timezone="Europe/Berlin", lead_s=900, clock=lambda: now[0])
    first = _tick(sensor, instance, local_resources, None)
    assert isinstance(first, dg.SensorResult) and not first.run_requests
    assert first.skip_reason and f"2026-12-07 09:00 CET {a}" in first.skip_reason.skip_message
    assert f"2026-12-07 13:00 CET {b}" in first.skip_reason.skip_message
    # nothing changed and nothing is due: the tick repeats the plan without reading the queue
    now[0] += 30
    quiet = _tick(sensor, instance, local_resources, first.cursor)
    assert isinstance(quiet, dg.SkipReason) and a in quiet.skip_message
    # 08:45:10, within the lead of a's 09:00 slot: one run for a, tagged with its slot
    now[0] = _ts(2026, 12, 7, 8, 45, 10)
    due = _tick(sensor, instance, local_resources, first.cursor)
    assert [r.partition_key for r in due.run_requests] == [a]
    tags = due.run_requests[0].tags
    assert tags[POST_AT_TAG] == f"{_ts(2026, 12, 7, 9, 0):.0f}" and tags[SLOT_TAG] == "2026-12-07 09:00 CET"
    assert f"{a} (run requested)" in json.loads(due.cursor)["summary"]
    # the next tick, 30 s later and with the queue re-read, asks for nothing more
    now[0] += 30
    state = {**json.loads(due.cursor), "token": "", "checked": 0}
    again = _tick(sensor, instance, local_resources, json.dumps(state))
    assert isinstance(again, dg.SensorResult) and not again.run_requests

    # the run itself, with its slot one second ahead in real time: the post does not leave before it
    fingerprint = _fingerprint(workbook_dir, a)
    slot = time.time() + 1.0
    result = dg.materialize(
        ASSETS,
        partition_key=a,
        instance=instance,
        resources=local_resources,
        run_config=QUIET,
        tags={POST_AT_TAG: f"{slot}", SLOT_TAG: "soon"},
    )
    assert result.success
    book = local_resources["ledger"].open()
    entry = book.get(a, fingerprint)
    assert entry is not None and entry.post_state == "POSTED" and entry.posted_at >= slot
    # a second run for the same row (a repeated request) posts nothing
    again_run = dg.materialize(
        ASSETS, partition_key=a, instance=instance, resources=local_resources, run_config=QUIET, tags=tags
    )
    assert again_run.success
    assert [p["prompt_id"] for p in local_resources["publisher"].posts()] == [a]


def test_a_bad_post_at_is_run_at_once_and_lands_in_done_as_invalid(
    instance, local_resources, workbook_dir: Path
) -> None:
    (bad,) = _queue(workbook_dir, [["a green frog", "next tuesday"]])
    sensor = build_slot_sensor(slots=SLOTS, timezone="Europe/Berlin", clock=lambda: _ts(2026, 12, 7, 8, 0))
    result = _tick(sensor, instance, local_resources, None)
    assert [r.partition_key for r in result.run_requests] == [bad]
    assert POST_AT_TAG not in result.run_requests[0].tags
    run = dg.materialize(
        ASSETS, partition_key=bad, instance=instance, resources=local_resources, run_config=QUIET
    )
    assert run.success
    done = read_csv(workbook_dir / "done.csv")
    assert any("INVALID" in cell for row in done for cell in row)
    assert any("next tuesday" in cell and "not a date and time" in cell for row in done for cell in row)


def test_without_slots_the_definitions_are_as_before_and_with_them_the_sensor_replaces_the_schedule(
    tmp_path: Path,
) -> None:
    base = {"IMAGE_PIPELINE_DATA": str(tmp_path / "data"), "IMAGE_PIPELINE_INSTANT": "1"}
    plain = build_definitions(base)
    assert plain.resolve_schedule_def("daily_prompt_schedule")
    assert [s.name for s in plain.sensors] == ["prompt_sheet_sensor"]
    slotted = build_definitions(
        {**base, "IMAGE_PIPELINE_SLOTS": "09:00,18:30", "IMAGE_PIPELINE_SCHEDULE_TIMEZONE": "Europe/Berlin"}
    )
    assert [s.name for s in slotted.sensors] == ["prompt_sheet_sensor", "post_slot_sensor"]
    # the slots replace the daily schedule (the weekly digest's, a schedule of its own, stays)
    assert "daily_prompt_schedule" not in [s.name for s in slotted.schedules or []]
    assert "18:30 (Europe/Berlin)" in (slotted.resolve_sensor_def("post_slot_sensor").description or "")
    with pytest.raises(ValueError, match="IMAGE_PIPELINE_MISSED_SLOT"):
        build_definitions({**base, "IMAGE_PIPELINE_SLOTS": "09:00", "IMAGE_PIPELINE_MISSED_SLOT": "later"})
    with pytest.raises(ValueError, match="IMAGE_PIPELINE_SLOTS"):
        build_definitions({**base, "IMAGE_PIPELINE_SLOTS": "9am"})


def _fingerprint(workbook_dir: Path, pid: str) -> str:
    rows = LocalWorkbook(folder=str(workbook_dir)).ensure_ids().rows
    return next(r.fingerprint() for r in rows if r.prompt_id == pid)


def _take(it, n: int) -> list:
    return [next(it) for _ in range(n)]


def _ts(*args: int) -> float:
    return berlin(*args).timestamp()


def test_a_slot_run_posts_to_telegram_at_its_slot_once(
    instance, local_resources, workbook_dir: Path, telegram_emulator
) -> None:
    """The slot's run through the real Telegram client: the photo is accepted at or after the slot (the
    emulator stamps when it accepted it), and a repeated run of the slot posts nothing more."""
    from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID

    from .test_publisher_albums import publisher

    (a,) = _queue(workbook_dir, [["a lantern on the harbour", ""]])
    instance.add_dynamic_partitions("prompts", [a])
    accepted: list[float] = []

    def stamp(request, endpoint, response) -> None:  # noqa: ANN001 - the emulator's hook signature
        if endpoint == "sendphoto" and response.status == 200:
            accepted.append(time.time())

    telegram_emulator.after_route = stamp
    resources = {**local_resources, "publisher": publisher(telegram_emulator)}
    slot = time.time() + 1.0
    tags = {POST_AT_TAG: f"{slot}", SLOT_TAG: "soon"}
    for _ in range(2):  # the slot's run, and the same request again
        result = dg.materialize(
            ASSETS, partition_key=a, instance=instance, resources=resources, run_config=QUIET, tags=tags
        )
        assert result.success
    [message] = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert message["caption"].startswith("a lantern on the harbour")
    [when] = accepted
    print(f"slot at {slot:.3f}, photo accepted {when - slot:+.3f} s after it")
    assert when >= slot
