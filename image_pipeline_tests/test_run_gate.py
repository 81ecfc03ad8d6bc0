"""Every run passes the schedule's and sensor's gate: `image-pipeline run` before its first queue write, a
run launched from the UI (prompt_record) before its first paid request; a blip at the gate gets a second look."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from image_pipeline.testing.emulators.telegram import TelegramEmulator

from .conftest import queue_prompts, run_partitions
from .test_cli import ROOT, _env
from .test_telegram_refusals import _queued, _run_resources, captions, publisher


def test_image_pipeline_run_stops_at_the_gate_before_writing_ids(tmp_path: Path) -> None:
    from image_pipeline.testing.sandbox import Sandbox

    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with Sandbox(tmp_path / "sandbox", seed_rows=[["prompt"], ["a lighthouse"], ["a fox"]]) as sandbox:
        env = {**_env(tmp_path), **sandbox.env(), "TELEGRAM_CHAT_ID": "-1005550404"}  # no such chat
        result = subprocess.run(
            [sys.executable, "-m", "image_pipeline.cli", "run"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        assert "preflight failed, no run started" in result.stderr and "TELEGRAM_CHAT_ID" in result.stderr
        # nothing written into the queue (no id column), nothing generated
        assert sandbox.google.values(sandbox.spreadsheet_id, "Process") == [
            ["prompt"],
            ["a lighthouse"],
            ["a fox"],
        ]
        assert [c for c in sandbox.hf.calls if c["method"] == "POST"] == []


def test_a_blip_at_the_run_gate_gets_a_second_look(
    telegram_emulator: TelegramEmulator, local_resources, instance, workbook_dir
) -> None:
    ids = queue_prompts(workbook_dir, ["a lighthouse"])
    resources = _run_resources(local_resources, telegram_emulator)
    telegram_emulator.fail_next(502, endpoints=["getMe"])  # the gate's first look meets a bad gateway
    result = run_partitions(resources, instance, ids)
    assert result.success
    assert telegram_emulator.count("getme") >= 2
    assert captions(telegram_emulator) == ["a lighthouse"] and _queued(workbook_dir) == []


def test_a_run_launched_with_a_broken_configuration_stops_before_any_request(
    telegram_emulator: TelegramEmulator, local_resources, instance, workbook_dir
) -> None:
    ids = queue_prompts(workbook_dir, ["a lighthouse"])
    resources = _run_resources(local_resources, telegram_emulator)
    telegram_emulator.add_chat(-1005550001, bot_status="kicked")
    resources["publisher"] = publisher(telegram_emulator, chat_id="-1005550001")
    result = run_partitions(resources, instance, ids)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "prompt_record"
    assert "bot was kicked" in failure.step_failure_data.user_failure_data.description
    assert telegram_emulator.count("sendphoto") == 0 and _queued(workbook_dir) == ["a lighthouse"]
