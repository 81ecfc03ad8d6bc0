"""`image-pipeline run` (what `make run` calls) and the Dagster CLI loading the workspace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import read_csv

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TELEGRAM_", "HF_TOKEN", "GOOGLE_", "IMAGE_PIPELINE_"))
    }
    env.update(
        DAGSTER_HOME=str(tmp_path / "home"), HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "hf")
    )
    return env


def test_run_processes_the_sample_queue_then_finds_it_empty(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    cmd = [sys.executable, "-m", "image_pipeline.cli", "run"]
    first = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-2000:]
    out = first.stdout
    assert "copied the sample queue" in out
    assert "[5/5]" in out and "done: SUCCESS 5" in out
    assert "gallery:" in out and "done log:" in out
    assert (tmp_path / "data" / "outbox" / "index.html").exists()
    done = read_csv(tmp_path / "data" / "workbook" / "done.csv")
    assert len(done) == 6 and {r[2] for r in done[1:]} == {"SUCCESS"}
    assert len(read_csv(tmp_path / "data" / "workbook" / "process.csv")) == 1
    # runs are recorded in the instance under DAGSTER_HOME, so the UI shows them later
    assert (tmp_path / "home" / "dagster.yaml").exists()
    assert any((tmp_path / "home").rglob("runs.db")) or any((tmp_path / "home").rglob("*.db"))

    second = subprocess.run(
        cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=240
    )
    assert second.returncode == 0 and "the queue is empty" in second.stdout
    assert len(read_csv(tmp_path / "data" / "workbook" / "done.csv")) == 6  # an empty queue writes nothing


def test_dagster_cli_validates_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "image_pipeline" in result.stdout + result.stderr


def test_run_on_the_real_backends_against_the_sandbox(tmp_path: Path) -> None:
    from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
    from image_pipeline.testing.sandbox import Sandbox

    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with Sandbox(tmp_path / "sandbox", seed_rows=[["prompt"], ["a lighthouse"], ["a fox"]]) as sandbox:
        env = {**_env(tmp_path), **sandbox.env()}
        result = subprocess.run(
            [sys.executable, "-m", "image_pipeline.cli", "run"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "Telegram Bot API" in result.stdout and "Google Sheets" in result.stdout
        assert "done: SUCCESS 2" in result.stdout
        assert len(sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)) == 2
        assert sandbox.google.values(sandbox.spreadsheet_id, "Process")[1:] == []
        for secret in (env["TELEGRAM_TOKEN"], env["HF_TOKEN"]):
            assert secret not in result.stdout + result.stderr


def test_a_killed_run_does_not_wedge_the_next_one(tmp_path: Path) -> None:
    import signal

    from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
    from image_pipeline.testing.sandbox import Sandbox

    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with Sandbox(tmp_path / "sandbox", seed_rows=[["prompt"], ["a lighthouse"], ["a fox"]]) as sandbox:
        env = {**_env(tmp_path), **sandbox.env()}
        cmd = [sys.executable, "-m", "image_pipeline.cli", "run"]
        worker = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL
        )
        killed: list[int] = []

        def kill_mid_generation(request, endpoint) -> None:
            # a generation is a POST; the run gate's look-ups (token, model) before it are GETs
            if not killed and request.method == "POST":
                killed.append(worker.pid)
                os.killpg(worker.pid, signal.SIGKILL)  # inside the hf_api pool slot

        sandbox.hf.on_request = kill_mid_generation
        try:
            worker.wait(120)
        finally:
            if worker.poll() is None:
                worker.kill()
        sandbox.hf.on_request = None
        assert killed and worker.returncode == -signal.SIGKILL
        again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "marked 1 run(s) of a killed earlier" in again.stdout
        assert "done: SUCCESS 2" in again.stdout
        assert len(sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)) == 2


def test_batches_are_consecutive_ranges_of_pending_prompts() -> None:
    from image_pipeline.defs.batching import batches

    order = [f"k{i}" for i in range(10)]
    assert batches(["k1", "k2", "k3"], order, 25) == [["k1", "k2", "k3"]]
    assert batches(["k0", "k1", "k2", "k3", "k4"], order, 2) == [["k0", "k1"], ["k2", "k3"], ["k4"]]
    # finished prompts in between ride along, but a long gap starts a new batch
    assert batches(["k0", "k2"], order, 2) == [["k0", "k1", "k2"]]
    assert batches(["k0", "k9"], order, 2) == [["k0"], ["k9"]]
    assert batches(["k5", "unknown"], order, 3) == [["k5"]]
