"""Instant mode while Drive's change token trails the sheet.

Drive's ``modifiedTime``/``version`` of a spreadsheet trail its Sheets edits by about 3 minutes, sometimes
~10 (googleapis/google-api-go-client#906, #444). The emulator models that with ``drive_lag_s`` and these
tests run the sensor through Dagster's sensor evaluation against it, through gspread: a new row must start
work within the Sheets check cadence plus one tick, whatever Drive says. Ticks are spaced by the sensor
interval with real sleeps, as the daemon spaces them; the scaled-down settings keep the defaults' ratio
(the check cadence equals the interval: 60 s and 60 s by default, 1 s and 1 s here).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import dagster as dg

from image_pipeline.definitions import build_definitions
from image_pipeline.defs.sensors import DEFAULT_SHEET_CHECK_S
from image_pipeline.services.sheets import SHEET_IDS_TTL_S

from .conftest import emulated_env, sensor_tick

DRIVE_LAG_S = 180.0
INTERVAL_S = 1
# The real service's per-minute read quotas (https://developers.google.com/workspace/sheets/api/limits)
PROJECT_READS_PER_MIN, USER_READS_PER_MIN = 300, 60
DEFAULT_INTERVAL_S = 60


def _env(google_emulator, hf_emulator, telegram_emulator, tmp_path, monkeypatch, **extra: str):
    rows = [["prompt"], ["first light on a pier"]]
    return emulated_env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        rows,
        IMAGE_PIPELINE_INSTANT="1",
        IMAGE_PIPELINE_SENSOR_INTERVAL_S=str(INTERVAL_S),
        **extra,
    )


def _new_partitions(result: object, before: set[str]) -> list[str]:
    """The partitions a tick's run requests cover that were not known before it."""
    if not isinstance(result, dg.SensorResult):
        return []
    keys = []
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            keys += [k for k in request.partition_keys if k not in before]
    return keys if result.run_requests else []


def _prime(defs: dg.Definitions, instance: dg.DagsterInstance) -> str:
    """Ticks until the sensor idles (the first one registers the seed row and writes its id)."""
    cursor: str | None = None
    for _ in range(6):
        result = sensor_tick(defs, instance, cursor)
        if isinstance(result, dg.SensorResult) and result.cursor:
            cursor = result.cursor
        if isinstance(result, dg.SkipReason) or (
            isinstance(result, dg.SensorResult)
            and not result.run_requests
            and not result.dynamic_partitions_requests
        ):
            break
        time.sleep(INTERVAL_S)
    assert cursor is not None
    return cursor


def _sheets_reads(google_emulator) -> int:
    return google_emulator.read_requests


def test_emulated_drive_reports_the_file_as_it_was_drive_lag_ago(
    google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch
) -> None:
    """Through gspread's HTTP client (the product's change_token): an edit does not move Drive's
    modifiedTime/version while the lag lasts; with no lag it does at once."""
    google_emulator.drive_lag_s = DRIVE_LAG_S
    env = _env(google_emulator, hf_emulator, telegram_emulator, tmp_path, monkeypatch)
    sheet = build_definitions(env).resources["prompt_sheet"]
    sid = env["GOOGLE_SHEET_KEY"]
    before = sheet.change_token()
    version, modified = google_emulator.version(sid), google_emulator.modified_time(sid)
    assert before == f"{version}:{modified}"
    google_emulator.append_rows(sid, "Process", [["a fox in snow"]])
    google_emulator.update_cell(sid, "Process", 2, 1, "first light on a long pier")
    assert google_emulator.version(sid) == version + 2  # Sheets has both edits ...
    assert sheet.change_token() == before  # ... Drive shows neither yet
    google_emulator.drive_lag_s = 0
    assert sheet.change_token() == f"{version + 2}:{google_emulator.modified_time(sid)}"


def test_new_row_starts_within_one_tick_while_drive_lags_three_minutes(
    google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch, instance, capsys
) -> None:
    google_emulator.drive_lag_s = DRIVE_LAG_S
    env = _env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        IMAGE_PIPELINE_SHEET_CHECK_S=str(INTERVAL_S),  # the defaults' ratio: a check at every tick
    )
    defs = build_definitions(env)
    sid = env["GOOGLE_SHEET_KEY"]
    cursor = _prime(defs, instance)
    drive_token = json.loads(cursor)["token"]

    # an idle tick at this cadence: Drive's token and the digest read
    time.sleep(INTERVAL_S)
    reads0, drive0 = _sheets_reads(google_emulator), google_emulator.count("drive.files.get")
    idle = sensor_tick(defs, instance, cursor)
    idle_reads = _sheets_reads(google_emulator) - reads0
    idle_drive = google_emulator.count("drive.files.get") - drive0
    assert not isinstance(idle, dg.SensorResult) or not idle.run_requests
    if isinstance(idle, dg.SensorResult) and idle.cursor:
        cursor = idle.cursor

    # the worst case: the row lands just after a tick read the sheet
    known = set(instance.get_dynamic_partitions("prompts"))
    google_emulator.append_rows(sid, "Process", [["a heron in the rain"]])
    t_row = time.monotonic()
    ticks, started = 0, []
    while not started and ticks < 5:
        time.sleep(INTERVAL_S)
        result = sensor_tick(defs, instance, cursor)
        ticks += 1
        started = _new_partitions(result, known)
        if isinstance(result, dg.SensorResult) and result.cursor:
            cursor = result.cursor
    latency = time.monotonic() - t_row
    assert started, "the new row never started while Drive lagged"
    # Drive had not noticed the row: the sheet's own columns started it
    assert json.loads(cursor)["token"] == drive_token
    assert google_emulator.values(sid, "Process")[-1][0] == "a heron in the rain"
    assert ticks == 1  # the first tick after the row: within the interval plus one tick

    reads_per_hour = 3600 / max(DEFAULT_SHEET_CHECK_S, DEFAULT_INTERVAL_S) * idle_reads
    metadata_per_hour = 3600 / SHEET_IDS_TTL_S  # the worksheet ids, re-read when their cache expires
    per_min = (reads_per_hour + metadata_per_hour) / 60
    with capsys.disabled():
        print(
            f"\n[instant, Drive lag {DRIVE_LAG_S:.0f} s] row -> run request {latency:.2f} s "
            f"({ticks} tick at {INTERVAL_S} s interval, check every {INTERVAL_S} s); "
            f"idle tick {idle_drive} Drive + {idle_reads} Sheets read; at the defaults "
            f"({DEFAULT_INTERVAL_S} s, check {DEFAULT_SHEET_CHECK_S:.0f} s): {reads_per_hour:.0f} reads/h "
            f"+ <= {metadata_per_hour:.0f} metadata reads/h = {per_min:.2f}/min, "
            f"{100 * per_min / PROJECT_READS_PER_MIN:.2f}% of {PROJECT_READS_PER_MIN}/min/project, "
            f"{100 * per_min / USER_READS_PER_MIN:.2f}% of {USER_READS_PER_MIN}/min/user"
        )
    assert (idle_drive, idle_reads) == (1, 1)


def test_ticks_between_checks_cost_one_drive_request_and_no_sheets_quota(
    google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch, instance
) -> None:
    """A cadence of 3 intervals: two ticks of three read nothing from Sheets, the third reads the
    columns once, and a row added meanwhile starts at that third tick at the latest."""
    google_emulator.drive_lag_s = DRIVE_LAG_S
    check_s = 3 * INTERVAL_S
    env = _env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        IMAGE_PIPELINE_SHEET_CHECK_S=str(check_s),
    )
    defs = build_definitions(env)
    cursor = _prime(defs, instance)
    costs = []
    for _ in range(3):
        time.sleep(INTERVAL_S)
        reads0, drive0 = _sheets_reads(google_emulator), google_emulator.count("drive.files.get")
        result = sensor_tick(defs, instance, cursor)
        costs.append(
            (google_emulator.count("drive.files.get") - drive0, _sheets_reads(google_emulator) - reads0)
        )
        assert not isinstance(result, dg.SensorResult) or not result.run_requests
        if isinstance(result, dg.SensorResult) and result.cursor:
            cursor = result.cursor
    assert sorted(costs) == [(1, 0), (1, 0), (1, 1)], costs

    known = set(instance.get_dynamic_partitions("prompts"))
    google_emulator.append_rows(env["GOOGLE_SHEET_KEY"], "Process", [["a lamp in a window"]])
    started, ticks = [], 0
    while not started and ticks < math.ceil(check_s / INTERVAL_S) + 2:
        time.sleep(INTERVAL_S)
        result = sensor_tick(defs, instance, cursor)
        ticks += 1
        started = _new_partitions(result, known)
        if isinstance(result, dg.SensorResult) and result.cursor:
            cursor = result.cursor
    assert started and ticks <= math.ceil(check_s / INTERVAL_S), ticks


def test_without_lag_drive_starts_the_row_at_the_first_tick_with_no_sheets_check(
    google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch, instance
) -> None:
    """Drive's token stays the free fast path: with the default check cadence (60 s, never due in
    this test) the first tick after the row starts it, and the idle tick before read no Sheets."""
    env = _env(google_emulator, hf_emulator, telegram_emulator, tmp_path, monkeypatch)
    defs = build_definitions(env)
    cursor = _prime(defs, instance)
    reads0 = _sheets_reads(google_emulator)
    idle = sensor_tick(defs, instance, cursor)
    assert isinstance(idle, dg.SkipReason) and _sheets_reads(google_emulator) == reads0
    known = set(instance.get_dynamic_partitions("prompts"))
    google_emulator.append_rows(env["GOOGLE_SHEET_KEY"], "Process", [["a kite at dusk"]])
    result = sensor_tick(defs, instance, cursor)
    assert len(_new_partitions(result, known)) == 1


def test_a_release_starts_while_drive_lags(
    google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch, instance
) -> None:
    """The status column is in the digest: a HOLD cleared by a person starts its run before Drive
    notices, and a second hold-and-release of the same row is a new run key, not a duplicate."""
    google_emulator.drive_lag_s = DRIVE_LAG_S
    env = _env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        IMAGE_PIPELINE_SHEET_CHECK_S=str(INTERVAL_S),
    )
    sid = env["GOOGLE_SHEET_KEY"]
    google_emulator.set_values(sid, "Process", [["prompt", "status"], ["a bell tower", "HOLD"]])
    defs = build_definitions(env)
    cursor = _prime(defs, instance)
    assert json.loads(cursor)["held"]
    keys = []
    for _ in range(2):
        google_emulator.update_cell(sid, "Process", 2, 2, "")
        released = None
        for _ in range(3):
            time.sleep(INTERVAL_S)
            result = sensor_tick(defs, instance, cursor)
            if isinstance(result, dg.SensorResult) and result.cursor:
                cursor = result.cursor
            if isinstance(result, dg.SensorResult) and result.run_requests:
                released = result.run_requests
                break
        assert released, "the released row did not start while Drive lagged"
        keys += [r.run_key for r in released]
        google_emulator.update_cell(sid, "Process", 2, 2, "HOLD")
        for _ in range(3):  # the sensor sees the hold again
            time.sleep(INTERVAL_S)
            result = sensor_tick(defs, instance, cursor)
            if isinstance(result, dg.SensorResult) and result.cursor:
                cursor = result.cursor
            if json.loads(cursor)["held"]:
                break
    assert len(set(keys)) == 2, keys


def test_a_cursor_of_the_earlier_format_is_read(
    google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch, instance
) -> None:
    """A cursor written before the digest existed ({token, rows, held}) is taken as it is: the first
    check reads the queue once, registers nothing twice, and the sensor idles after it."""
    google_emulator.drive_lag_s = DRIVE_LAG_S
    env = _env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        IMAGE_PIPELINE_SHEET_CHECK_S=str(INTERVAL_S),
    )
    defs = build_definitions(env)
    cursor = _prime(defs, instance)
    state = json.loads(cursor)
    old = json.dumps({k: state[k] for k in ("token", "rows", "held")})
    known = set(instance.get_dynamic_partitions("prompts"))
    first = sensor_tick(defs, instance, old)
    assert isinstance(first, dg.SensorResult) and not first.run_requests
    assert not _new_partitions(first, known)
    assert {"digest", "checked", "cols"} <= set(json.loads(first.cursor or "{}"))
    time.sleep(INTERVAL_S)
    second = sensor_tick(defs, instance, first.cursor)
    assert isinstance(second, dg.SensorResult) and second.skip_reason and not second.run_requests
