"""The budget guard: credits depleted or a provider quota used up pauses spending until an operator
resumes, with exactly one notice; optional daily caps on images and posts, counted across runs.

The generator is the real InferenceClient against the loopback Hugging Face emulator; the queue, the
outbox and the ledger are the embedded default's.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.cli import main as cli_main
from image_pipeline.defs.jobs import resume_spending_job
from image_pipeline.defs.schedules import build_daily_schedule
from image_pipeline.defs.sensors import build_prompt_sheet_sensor
from image_pipeline.domain.errors import CreditsDepleted, TransientError
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.lifecycle.ledger import PostLedger, utc_day
from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN

from .conftest import queue_prompts as queue
from .conftest import read_csv, run_partitions, skip_reason_of


def with_hf(resources: dict[str, object], hf_emulator, **ledger: int) -> dict[str, object]:
    out = dict(resources)
    out["image_generator"] = HuggingFaceGenerator(
        token=HF_TOKEN,
        base_url=f"{hf_emulator.base_url}/models/m",
        model="m",
        width=64,
        height=64,
        retry_base_delay_s=0.01,
    )
    if ledger:
        out["ledger"] = PostLedger(path=resources["ledger"].path, **ledger)
    return out


def generations(hf_emulator) -> int:
    return sum(1 for c in hf_emulator.calls if c["method"] == "POST")


def queued_prompts(workbook_dir: Path) -> list[str]:
    return [row[0] for row in read_csv(workbook_dir / "process.csv")[1:]]


def schedule_tick(resources: dict[str, object], instance: dg.DagsterInstance):
    schedule = build_daily_schedule(cron="0 7 * * *", timezone="UTC", per_tick=5)
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 12, 4, 7, tzinfo=UTC),
        resources={k: resources[k] for k in ("prompt_sheet", "ledger", "image_generator", "publisher")},
    ) as context:
        return schedule(context)


def sensor_tick(resources: dict[str, object]):
    """An instant-mode tick that finds every queued row new (a fresh instance): it would start runs."""
    sensor = build_prompt_sheet_sensor(instant=True)
    with (
        dg.instance_for_test() as fresh,
        dg.build_sensor_context(
            instance=fresh,
            resources={k: resources[k] for k in ("prompt_sheet", "ledger", "image_generator", "publisher")},
        ) as context,
    ):
        return sensor(context)


def test_credits_depleted_pauses_spending_until_resumed_with_one_notice(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    prompts = ["a lighthouse", "a fox", "a heron"]
    ids = queue(workbook_dir, prompts)
    resources = with_hf(local_resources, hf_emulator)
    outbox = local_resources["publisher"]
    hf_emulator.fail_next(None, 402)  # the first image is made, then the credits run out

    first = run_partitions(resources, instance, ids)
    assert not first.success
    # the refusal stops posting at once: the first image may or may not have gone out before it
    assert [p["caption"] for p in outbox.posts()] in ([], ["a lighthouse"])
    assert queued_prompts(workbook_dir) == prompts  # nothing FAILED, nothing removed
    assert not (workbook_dir / "done.csv").exists() or len(read_csv(workbook_dir / "done.csv")) <= 1
    [notice] = outbox.notices()
    assert "paused spending" in notice["text"] and "image-pipeline resume" in notice["text"]
    pause = resources["ledger"].open().pause_state()
    assert pause is not None and "402" in pause.reason

    # while paused: a run spends nothing and sends no second notice; the triggers skip with the reason
    calls = generations(hf_emulator)
    second = run_partitions(resources, instance, ids)
    assert not second.success
    failure = next(e for e in second.all_events if e.event_type_value == "STEP_FAILURE")
    assert "spending is paused since" in failure.step_failure_data.user_failure_data.description
    assert generations(hf_emulator) == calls
    assert len(outbox.notices()) == 1
    for tick in (schedule_tick(resources, instance), sensor_tick(resources)):
        assert isinstance(tick, dg.SkipReason), tick
        assert "spending is paused" in tick.skip_message and "image-pipeline resume" in tick.skip_message

    # the operator resumes from the UI's job; the next run logs the post already made and does the rest
    result = resume_spending_job.execute_in_process(resources={"ledger": resources["ledger"]})
    assert result.success
    assert resources["ledger"].open().pause_state() is None
    assert isinstance(schedule_tick(resources, instance), list)
    assert run_partitions(resources, instance, ids).success
    assert [p["caption"] for p in outbox.posts()] == prompts  # each posted once
    done = [r for r in read_csv(workbook_dir / "done.csv")[1:]]
    assert len(done) == 3
    assert queued_prompts(workbook_dir) == []
    assert len(outbox.notices()) == 1


def test_resume_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("IMAGE_PIPELINE_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["resume"]) == 0
    assert "was not paused" in capsys.readouterr().out
    book = PostLedger(path=str(tmp_path / "data" / "ledger.sqlite")).open()
    assert book.pause("images", "credits depleted (HTTP 402)") is True
    assert book.pause("images", "again") is False  # one pause, one notice
    assert cli_main(["resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed: images had paused spending: credits depleted (HTTP 402)" in out
    assert book.pause_state() is None


def test_a_provider_quota_is_a_budget_refusal_and_a_rate_limit_is_not(hf_emulator) -> None:
    generator = HuggingFaceGenerator(
        token=HF_TOKEN,
        base_url=f"{hf_emulator.base_url}/models/m",
        model="m",
        retry_attempts=1,
        retry_base_delay_s=0.01,
    )
    request = GenerationRequest("a fox", None, "m", 64, 64, 1)
    hf_emulator.provider_quota_exhausted = True
    with pytest.raises(CreditsDepleted, match="quota or balance is used up \\(HTTP 429\\)"):
        generator.generate(request)
    hf_emulator.provider_quota_exhausted = False
    hf_emulator.fail_next(429)
    with pytest.raises(TransientError, match="rate limit"):
        generator.generate(request)


def test_daily_image_cap_leaves_the_rest_queued_until_the_next_day(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    prompts = ["one", "two", "three"]
    ids = queue(workbook_dir, prompts)
    resources = with_hf(local_resources, hf_emulator, daily_image_cap=2)
    outbox = local_resources["publisher"]

    assert run_partitions(resources, instance, ids).success
    assert [p["caption"] for p in outbox.posts()] == ["one", "two"]
    assert queued_prompts(workbook_dir) == ["three"]  # CAPPED: queued, not FAILED, no attempt counted
    assert resources["ledger"].open().attempts([ids[2]]).get(ids[2], 0) == 0
    assert generations(hf_emulator) == 2

    # counted across runs: a second run the same day generates nothing; the schedule says why
    assert run_partitions(resources, instance, [ids[2]]).success
    assert generations(hf_emulator) == 2
    tick = schedule_tick(resources, instance)
    assert isinstance(tick, dg.SkipReason) and "daily cap of 2 images is reached" in tick.skip_message

    # the next UTC day the cap starts again
    with sqlite3.connect(resources["ledger"].path) as db:
        db.execute("UPDATE daily_counts SET day='2000-01-01' WHERE day=?", (utc_day(),))
    assert run_partitions(resources, instance, [ids[2]]).success
    assert [p["caption"] for p in outbox.posts()] == prompts
    assert queued_prompts(workbook_dir) == []


def test_daily_post_cap_stops_generating_once_reached(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    ids = queue(workbook_dir, ["alpha", "beta", "gamma", "delta"])
    resources = with_hf(local_resources, hf_emulator, daily_post_cap=1)
    assert run_partitions(resources, instance, ids).success
    assert [p["caption"] for p in local_resources["publisher"].posts()] == ["alpha"]
    assert queued_prompts(workbook_dir) == ["beta", "gamma", "delta"]
    # at most the images already in flight when the first post went out; the rest were never asked for
    assert generations(hf_emulator) <= 3
    assert resources["ledger"].open().used_today("posts") == 1
    tick = skip_reason_of(sensor_tick(resources))
    assert tick is not None and "daily cap of 1 posts is reached" in tick.skip_message


def test_doctor_shows_the_pause_and_the_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGE_PIPELINE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGE_PIPELINE_DAILY_IMAGE_CAP", "2")
    book = PostLedger(path=str(tmp_path / "data" / "ledger.sqlite")).open()
    assert cli_main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "Budget        spending" in out and "0 of 2 images today" in out

    book.pause("images", "Hugging Face credits are depleted (HTTP 402)")
    assert cli_main(["doctor"]) == 1
    out = capsys.readouterr().out
    budget = next(line for line in out.splitlines() if line.startswith("Budget") and "spending" in line)
    assert "FAIL" in budget and "credits are depleted" in budget and "image-pipeline resume" in budget

    assert cli_main(["resume"]) == 0
    book.reserve("images", 2)
    book.reserve("images", 2)
    capsys.readouterr()
    assert cli_main(["doctor"]) == 0  # a cap reached is a warning: work resumes tomorrow by itself
    out = capsys.readouterr().out
    cap = next(line for line in out.splitlines() if "daily images cap" in line)
    assert "warn" in cap and "2 of 2 images today" in cap


def test_credits_gone_during_a_timed_wait_stay_paused_after_the_wait(tmp_path: Path) -> None:
    import time

    book = PostLedger(path=str(tmp_path / "ledger.sqlite")).open()
    assert book.pause("images", "loading for 10 minutes", until=time.time() + 600)
    assert book.pause("images", "credits depleted") is True  # a new, untimed pause: its own notice
    pause = book.pause_state()
    assert pause is not None and not pause.timed and pause.reason == "credits depleted"
    assert book.pause("images", "credits depleted again") is False  # one notice only
    assert book.pause("images", "another wait", until=time.time() + 60) is False
    state = book.pause_state()
    assert state is not None and not state.timed  # a later wait never turns it back into a timed one
