"""The sheet-change sensor and the daily schedule, evaluated with Dagster's test contexts."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from image_pipeline.definitions import build_definitions
from image_pipeline.defs.batching import RANGE_END, RANGE_START
from image_pipeline.defs.schedules import build_daily_schedule
from image_pipeline.defs.sensors import build_prompt_sheet_sensor
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.services.images.preview import OfflinePreviewGenerator
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.sheets import LocalWorkbook

from .conftest import read_csv, write_csv


def _sheet(workbook_dir: Path) -> LocalWorkbook:
    return LocalWorkbook(folder=str(workbook_dir))


def _services(workbook_dir: Path) -> dict[str, object]:
    """The generator and publisher the triggers' preflight checks (the embedded stand-ins)."""
    return {
        "image_generator": OfflinePreviewGenerator(),
        "publisher": LocalOutbox(folder=str(workbook_dir.parent / "outbox")),
    }


def _tick(sensor, instance, sheet, cursor):
    resources = {
        "prompt_sheet": sheet,
        "ledger": PostLedger(path=str(Path(sheet.folder) / "ledger.sqlite")),
        **_services(Path(sheet.folder)),
    }
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return sensor(ctx)


def test_sensor_registers_new_rows_and_skips_when_nothing_changed(instance, workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"], ["a"], ["b"]])
    sensor = build_prompt_sheet_sensor(instant=False)
    sheet = _sheet(workbook_dir)

    first = _tick(sensor, instance, sheet, None)
    assert isinstance(first, dg.SensorResult)
    [request] = first.dynamic_partitions_requests
    ids = [row[1] for row in read_csv(workbook_dir / "process.csv")[1:]]
    assert list(request.partition_keys) == ids and all(ids)
    assert first.run_requests == []  # not in instant mode: the schedule runs them
    cursor = json.loads(first.cursor)
    assert cursor["rows"] == 2

    instance.add_dynamic_partitions("prompts", ids)
    # our own id write changed the file once; this tick re-reads and finds nothing new
    second = _tick(sensor, instance, sheet, first.cursor)
    assert isinstance(second, dg.SensorResult)
    assert not second.dynamic_partitions_requests and not second.run_requests
    third = _tick(sensor, instance, sheet, second.cursor)
    assert isinstance(third, dg.SkipReason)
    assert "not changed" in third.skip_message


def test_sensor_instant_mode_requests_runs_for_new_rows_only(instance, workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"], ["a"]])
    sensor = build_prompt_sheet_sensor(instant=True)
    sheet = _sheet(workbook_dir)
    first = _tick(sensor, instance, sheet, None)
    [run] = first.run_requests
    old_id = run.partition_key
    instance.add_dynamic_partitions("prompts", [old_id])

    table = read_csv(workbook_dir / "process.csv")
    table.append(["b", ""])
    write_csv(workbook_dir / "process.csv", table)
    os.utime(workbook_dir / "process.csv", ns=(1, 1))  # make sure the stat differs even within one tick
    second = _tick(sensor, instance, sheet, first.cursor)
    [run2] = second.run_requests
    assert run2.partition_key != old_id
    assert run2.run_key == f"prompts-{run2.partition_key}"
    assert list(second.dynamic_partitions_requests[0].partition_keys) == [run2.partition_key]


def test_sensor_reports_a_broken_queue_as_a_skip_reason(instance, workbook_dir: Path) -> None:
    sensor = build_prompt_sheet_sensor(instant=True)
    result = _tick(sensor, instance, _sheet(workbook_dir), None)
    assert isinstance(result, dg.SkipReason) and "process.csv" in result.skip_message


def test_sensor_evaluate_tick_adds_partitions_like_the_daemon(workbook_dir: Path, tmp_path: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"], ["a"], ["b"]])
    defs = build_definitions(
        {
            "IMAGE_PIPELINE_WORKBOOK": str(workbook_dir),
            "IMAGE_PIPELINE_DATA": str(tmp_path),
            "IMAGE_PIPELINE_INSTANT": "1",
        }
    )
    sensor = defs.resolve_sensor_def("prompt_sheet_sensor")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(
            instance_ref=instance.get_ref(),
            cursor=None,
            definitions=defs,
            resources={
                "prompt_sheet": _sheet(workbook_dir),
                "ledger": PostLedger(path=str(workbook_dir / "ledger.sqlite")),
                **_services(workbook_dir),
            },
        )
        data = sensor.evaluate_tick(ctx)
        # one batched run: a range over the two new partitions, in queue order
        ids = [row[1] for row in read_csv(workbook_dir / "process.csv")[1:]]
        [run] = data.run_requests
        assert run.partition_key is None
        assert (run.tags[RANGE_START], run.tags[RANGE_END]) == (ids[0], ids[1])
        assert run.run_key == f"prompts-{ids[0]}-{ids[1]}"


def test_schedule_picks_the_oldest_prompt_and_registers_it(instance, workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"], ["oldest"], ["newer"], ["newest"]])
    schedule = build_daily_schedule(cron="0 7 * * *", timezone="UTC", per_tick=2)
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 1, 2, 7, tzinfo=UTC),
        resources={
            "prompt_sheet": _sheet(workbook_dir),
            "ledger": PostLedger(path=str(workbook_dir / "l.sqlite")),
            **_services(workbook_dir),
        },
    ) as ctx:
        requests = schedule(ctx)
    ids = [row[1] for row in read_csv(workbook_dir / "process.csv")[1:]]
    [run] = requests  # the two oldest in one run, a partition range that stops before the third
    assert (run.tags[RANGE_START], run.tags[RANGE_END]) == (ids[0], ids[1])
    assert run.run_key == f"2026-01-02-{ids[0]}-{ids[1]}"
    assert set(ids[:2]) <= set(instance.get_dynamic_partitions("prompts"))


def test_schedule_batches_never_cover_a_prompt_left_for_later(instance, workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"], ["a"], ["b"], ["c"], ["d"]])
    sheet = _sheet(workbook_dir)
    ledger = PostLedger(path=str(workbook_dir / "l.sqlite"))
    ids = [row.prompt_id for row in sheet.ensure_ids().rows]
    # "a" failed before: it goes behind the fresh ones, so the day's three are b, c, d
    book = ledger.open()
    book.claim(ids[0], "f", owner="x", prompt="a", lease_s=0, is_stale=lambda _o: True)
    book.add_attempt(ids[0], "f", "boom")
    schedule = build_daily_schedule(cron="0 7 * * *", timezone="UTC", per_tick=3, batch_size=2)
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 1, 2, 7, tzinfo=UTC),
        resources={"prompt_sheet": sheet, "ledger": ledger, **_services(workbook_dir)},
    ) as ctx:
        requests = schedule(ctx)
    spans = [
        (r.tags.get(RANGE_START, r.partition_key), r.tags.get(RANGE_END, r.partition_key)) for r in requests
    ]
    assert spans == [(ids[1], ids[2]), (ids[3], ids[3])]


def test_schedule_on_an_empty_queue_skips_and_writes_nothing(instance, workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt", "id"]])
    before = (workbook_dir / "process.csv").read_bytes()
    schedule = build_daily_schedule(cron="0 7 * * *", timezone="UTC", per_tick=1)
    with dg.build_schedule_context(
        instance=instance,
        resources={
            "prompt_sheet": _sheet(workbook_dir),
            "ledger": PostLedger(path=str(workbook_dir / "l.sqlite")),
            **_services(workbook_dir),
        },
    ) as ctx:
        result = schedule(ctx)
    assert isinstance(result, dg.SkipReason) and "empty" in result.skip_message
    assert (workbook_dir / "process.csv").read_bytes() == before
    assert not (workbook_dir / "done.csv").exists()
    assert instance.get_dynamic_partitions("prompts") == []


def test_schedule_uses_configured_cron_and_timezone(tmp_path: Path) -> None:
    defs = build_definitions(
        {
            "IMAGE_PIPELINE_DATA": str(tmp_path),
            "IMAGE_PIPELINE_SCHEDULE_CRON": "30 9 * * 1",
            "IMAGE_PIPELINE_SCHEDULE_TIMEZONE": "Europe/Berlin",
        }
    )
    [schedule] = [s for s in defs.schedules if s.name == "daily_prompt_schedule"]
    assert schedule.cron_schedule == "30 9 * * 1" and schedule.execution_timezone == "Europe/Berlin"


def test_schedule_puts_prompts_that_failed_before_behind_fresh_ones(instance, workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"], ["keeps failing"], ["fresh"]])
    rows = _sheet(workbook_dir).ensure_ids().rows
    ledger = PostLedger(path=str(workbook_dir / "l.sqlite"))
    book = ledger.open()
    book.update(rows[0].prompt_id, rows[0].fingerprint(), prompt="keeps failing")
    book.add_attempt(rows[0].prompt_id, rows[0].fingerprint(), "HTTP 503")
    schedule = build_daily_schedule(cron="0 7 * * *", timezone="UTC", per_tick=1)
    with dg.build_schedule_context(
        instance=instance,
        resources={"prompt_sheet": _sheet(workbook_dir), "ledger": ledger, **_services(workbook_dir)},
    ) as ctx:
        [request] = schedule(ctx)
    assert request.partition_key == rows[1].prompt_id
