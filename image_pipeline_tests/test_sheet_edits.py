"""The sheet is the source of truth: rows deleted or edited by a person, against the emulated Google Sheet
through gspread.

- deleted before it ran: the sensor drops its partition and cancels its queued run;
- edited before it ran: the run posts the new text;
- edited after it ran (posted, not yet logged): a new prompt; the earlier post is logged as it was.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.definitions import build_definitions
from image_pipeline.defs.assets import generate_and_post, prompt_record
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID

from .conftest import QUIET, emulated_env, sensor_tick

PROMPTS = ["a red kite over hills", "a tram in fog", "a moth on a lamp"]


@pytest.fixture
def env(google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch) -> dict[str, str]:
    # register-only sensor: a person or the schedule starts the runs
    rows = [["prompt"], *[[p] for p in PROMPTS]]
    return emulated_env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        rows,
        IMAGE_PIPELINE_INSTANT="",
    )


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    result = sensor_tick(defs, instance, cursor)
    assert isinstance(result, dg.SensorResult), result
    return result


def queued_run(instance: dg.DagsterInstance, **tags: str) -> str:
    """A run waiting in the run queue, as the queued run coordinator leaves it for the daemon."""
    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("image_pipeline"), "__repository__"),
        "process_prompts_job",
    )
    run_id = str(uuid.uuid4())
    instance.add_run(
        dg.DagsterRun(
            job_name="process_prompts_job",
            run_id=run_id,
            status=dg.DagsterRunStatus.QUEUED,
            tags=tags,
            remote_job_origin=origin,
        )
    )
    return run_id


def sheet_rows(google_emulator, env: dict[str, str], title: str = "Process") -> list[list[str]]:
    return google_emulator.values(env["GOOGLE_SHEET_KEY"], title)


def run(defs: dg.Definitions, instance: dg.DagsterInstance, pid: str) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("process_prompts_job").execute_in_process(
        partition_key=pid, instance=instance, run_config=QUIET
    )


def test_a_row_deleted_before_it_ran_drops_its_partition_and_cancels_its_queued_run(
    env, google_emulator, telegram_emulator, instance
) -> None:
    defs = build_definitions(env)
    first = tick(defs, instance, None)
    ids = instance.get_dynamic_partitions("prompts")
    assert len(ids) == 3
    # the first prompt runs and leaves the queue; the second waits in the run queue
    assert run(defs, instance, ids[0]).success
    waiting = queued_run(instance, **{"dagster/partition": ids[1]})
    untouched = queued_run(instance, **{"dagster/partition": ids[2]})
    # a person deletes the second row (row 2 now: the first left the queue)
    assert [r[0] for r in sheet_rows(google_emulator, env)[1:]] == PROMPTS[1:]
    google_emulator.delete_row(env["GOOGLE_SHEET_KEY"], "Process", 2)

    second = tick(defs, instance, first.cursor)
    assert instance.get_dynamic_partitions("prompts") == [ids[0], ids[2]]  # the one that ran keeps its own
    assert instance.get_run_by_id(waiting).status == dg.DagsterRunStatus.CANCELED
    assert instance.get_run_by_id(untouched).status == dg.DagsterRunStatus.QUEUED
    assert "1 deleted row(s) dropped" in (second.skip_reason.skip_message if second.skip_reason else "")
    assert [m["caption"] for m in telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)] == [PROMPTS[0]]


def test_a_range_run_is_cancelled_only_when_all_its_rows_are_gone(env, google_emulator, instance) -> None:
    defs = build_definitions(env)
    first = tick(defs, instance, None)
    ids = instance.get_dynamic_partitions("prompts")
    both = queued_run(
        instance,
        **{"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[1]},
    )
    with_live = queued_run(
        instance,
        **{"dagster/asset_partition_range_start": ids[1], "dagster/asset_partition_range_end": ids[2]},
    )
    sid = env["GOOGLE_SHEET_KEY"]
    google_emulator.delete_row(sid, "Process", 2)
    google_emulator.delete_row(sid, "Process", 2)
    tick(defs, instance, first.cursor)
    assert instance.get_dynamic_partitions("prompts") == [ids[2]]
    assert instance.get_run_by_id(both).status == dg.DagsterRunStatus.CANCELED
    assert instance.get_run_by_id(with_live).status == dg.DagsterRunStatus.QUEUED


def test_a_row_edited_before_it_ran_is_posted_with_the_new_text(
    env, google_emulator, telegram_emulator, instance
) -> None:
    defs = build_definitions(env)
    tick(defs, instance, None)
    pid = instance.get_dynamic_partitions("prompts")[0]
    google_emulator.update_cell(env["GOOGLE_SHEET_KEY"], "Process", 2, 1, "a red kite over the sea")
    assert run(defs, instance, pid).success
    [post] = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert post["caption"] == "a red kite over the sea"
    done = sheet_rows(google_emulator, env, "Done")
    prompt_col = done[0].index("prompt")
    assert [r[prompt_col] for r in done[1:]] == ["a red kite over the sea"]


def test_a_row_edited_after_it_was_posted_is_a_new_prompt(
    env, google_emulator, telegram_emulator, instance
) -> None:
    defs = build_definitions(env)
    tick(defs, instance, None)
    pid = instance.get_dynamic_partitions("prompts")[0]
    # posted, and the process stopped before the Done row (only the first two steps ran)
    posted = dg.materialize(
        [prompt_record, generate_and_post],
        partition_key=pid,
        instance=instance,
        resources=defs.resources,
        run_config=QUIET,
    )
    assert posted.success
    google_emulator.update_cell(env["GOOGLE_SHEET_KEY"], "Process", 2, 1, "a red kite at night")
    assert run(defs, instance, pid).success
    captions = [m["caption"] for m in telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)]
    assert captions == [
        PROMPTS[0],
        "a red kite at night",
    ]  # the new text is a new post, the old one not repeated
    done = sheet_rows(google_emulator, env, "Done")
    prompt_col, status_col = done[0].index("prompt"), done[0].index("status")
    assert sorted((r[prompt_col], r[status_col]) for r in done[1:]) == [
        ("a red kite at night", "SUCCESS"),
        (PROMPTS[0], "SUCCESS"),
    ]
    assert [r[0] for r in sheet_rows(google_emulator, env)[1:]] == PROMPTS[1:]
