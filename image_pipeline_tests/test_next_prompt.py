"""An answer no rule explains fails a prompt only when the service took another prompt of the run; the same
answer for two prompts stops the run (lifecycle/suspects.py). Real publisher and InferenceClient against the
emulators, whole runs through Dagster."""

from __future__ import annotations

from pathlib import Path

from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN
from image_pipeline.testing.emulators.telegram import TelegramEmulator

from .conftest import queue_prompts, read_csv, run_partitions
from .test_telegram_refusals import _queued, _run_resources, captions


def _done(workbook_dir: Path) -> list[list[str]]:
    path = workbook_dir / "done.csv"
    return read_csv(path)[1:] if path.exists() else []


def test_the_same_unexplained_400_for_two_posts_stops_the_run(
    telegram_emulator: TelegramEmulator, local_resources, instance, workbook_dir
) -> None:
    prompts = ["a lighthouse", "a fox", "a heron"]
    ids = queue_prompts(workbook_dir, prompts)
    resources = _run_resources(local_resources, telegram_emulator)
    # "Bad Request" and nothing else: no rule says it is about the photo
    telegram_emulator.fail_next(400, 400, endpoints=["sendPhoto"])
    result = run_partitions(resources, instance, ids)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "the same answer for two prompts" in failure.step_failure_data.user_failure_data.description
    assert _queued(workbook_dir) == prompts and _done(workbook_dir) == []
    assert all(n == 0 for n in resources["ledger"].open().attempts(ids).values())
    assert captions(telegram_emulator) == []  # the third was never sent


def test_an_unexplained_400_for_the_only_prompt_keeps_it_queued_with_an_attempt(
    telegram_emulator: TelegramEmulator, local_resources, instance, workbook_dir
) -> None:
    [pid] = queue_prompts(workbook_dir, ["a lighthouse"])
    resources = _run_resources(local_resources, telegram_emulator)
    telegram_emulator.fail_next(400, endpoints=["sendPhoto"])
    result = run_partitions(resources, instance, [pid])
    assert result.success
    assert result.output_for_node("done_entry")[pid].status == "RETRY"
    assert _queued(workbook_dir) == ["a lighthouse"] and _done(workbook_dir) == []
    assert resources["ledger"].open().attempts([pid]) == {pid: 1}
    assert run_partitions(resources, instance, [pid]).success  # the answer does not come again
    assert captions(telegram_emulator) == ["a lighthouse"]


def test_an_unexplained_400_fails_the_prompt_when_the_next_one_is_posted(
    telegram_emulator: TelegramEmulator, local_resources, instance, workbook_dir
) -> None:
    ids = queue_prompts(workbook_dir, ["a lighthouse", "a fox"])
    resources = _run_resources(local_resources, telegram_emulator)
    telegram_emulator.fail_next(400, None, endpoints=["sendPhoto"])
    result = run_partitions(resources, instance, ids)
    assert result.success
    statuses = [result.output_for_node("done_entry")[pid].status for pid in ids]
    assert statuses == ["FAILED", "SUCCESS"]
    assert captions(telegram_emulator) == ["a fox"] and _queued(workbook_dir) == []


def test_the_same_unexplained_422_for_two_generations_stops_the_run(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    ids = queue_prompts(workbook_dir, ["a lighthouse", "a fox"])
    resources = dict(local_resources)
    resources["image_generator"] = HuggingFaceGenerator(
        token=HF_TOKEN,
        base_url=f"{hf_emulator.base_url}/models/m",
        model="m",
        width=64,
        height=64,
        retry_base_delay_s=0.01,
    )
    hf_emulator.fail_next(None, 422, 422)  # the run gate's GET, then both generations
    result = run_partitions(resources, instance, ids)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.user_failure_data.description
    assert "HTTP 422" in message and "the same answer for two prompts" in message
    assert _queued(workbook_dir) == ["a lighthouse", "a fox"] and _done(workbook_dir) == []
    assert all(n == 0 for n in resources["ledger"].open().attempts(ids).values())
