"""Progress: `image-pipeline run` prints a line per prompt as it finishes, and the run log says it too."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.lifecycle import progress
from image_pipeline.lifecycle.progress import BatchLogged, PromptFinished, RunProgress

from .test_cli import ROOT, _env

LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+): (\S+) .*\(elapsed (\S+), ETA (\S+)\)$")


class Output:
    """`image-pipeline run` in a child process, its stdout read line by line as it comes (with the time
    each line arrived); stderr goes to a file, so nothing blocks on a full pipe."""

    def __init__(self) -> None:
        self.timed: list[tuple[float, str]] = []
        self.first_prompt = threading.Event()

    def run(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> list[str]:
        with open(tmp_path / "stderr.txt", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "image_pipeline.cli", "run", *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    self.timed.append((time.monotonic(), raw.rstrip("\n")))
                    if raw.startswith("[1/"):
                        self.first_prompt.set()
                proc.wait(timeout=240)
            finally:
                if proc.poll() is None:
                    proc.kill()
        lines = [text for _, text in self.timed]
        stderr = (tmp_path / "stderr.txt").read_text()
        assert proc.returncode == 0, "\n".join(lines[-20:]) + stderr[-2000:]
        return lines


def _child_env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**_env(tmp_path), **(extra or {}), "TELEGRAM_POSTS_PER_MINUTE": "0"}
    # `make run | tee log` is a pipe without PYTHONUNBUFFERED: the lines must arrive as they are printed
    env.pop("PYTHONUNBUFFERED", None)
    return env


def _progress_lines(lines: list[str]) -> list[re.Match[str]]:
    return [m for m in map(LINE.match, lines) if m]


def _run_log(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """run id -> the progress lines in that run's event log."""
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the instance's dagster.yaml reads it
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return {
            run.run_id: [
                e.user_message
                for e in instance.all_logs(run.run_id)
                if e.user_message.startswith("progress:")
            ]
            for run in instance.get_runs()
        }


def test_lines_arrive_while_the_batch_is_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One run of 4 prompts (batch size 200): the line of the first prompt is printed while the second
    image is still being generated. The Hugging Face emulator holds that request until the line has
    arrived, so the order is forced, not timed."""
    from image_pipeline.testing.sandbox import Sandbox

    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    rows = [["prompt"], ["a lighthouse"], ["a fox"], ["a tram"], ["a bookshop"]]
    with Sandbox(tmp_path / "sandbox", seed_rows=rows) as sandbox:
        generations: list[str] = []
        held: list[bool] = []
        out = Output()

        def hold_the_second_image(request, endpoint) -> None:
            if request.method != "POST":
                return
            generations.append(request.path)
            if len(generations) == 2:
                # True: the first prompt's line arrived while this request was still open
                held.append(out.first_prompt.wait(60))

        sandbox.hf.on_request = hold_the_second_image
        lines = out.run(tmp_path, [], _child_env(tmp_path, sandbox.env()))
        sandbox.hf.on_request = None
    assert held == [True], lines
    assert len(generations) == 4
    found = _progress_lines(lines)
    assert [(int(m[1]), int(m[2])) for m in found] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert {m[4] for m in found} == {"POSTED"}
    assert all(m[6] != "--" for m in found)  # an ETA from the first finished prompt on
    assert any(line.startswith("[0/4] starting") and "ETA --" in line for line in lines)
    assert lines.index(next(m[0] for m in found)) < lines.index("done: SUCCESS 4")
    when = {text: t for t, text in out.timed}
    spread = when[found[-1][0]] - when[found[0][0]]
    print(
        f"first to last prompt line: {spread:.3f} s; last prompt line to exit: {when[lines[-1]] - when[found[-1][0]]:.3f} s"
    )

    [(run_id, logged)] = _run_log(tmp_path / "home", monkeypatch).items()
    assert logged[0] == "progress: 0/4 prompts done, ETA --"
    assert [line.split(",")[0] for line in logged[1:5]] == [
        f"progress: {n}/4 prompts done" for n in range(1, 5)
    ]
    assert "ETA" in logged[1] and "(last: " in logged[1]
    assert logged[-1] == "progress: 4 of 4 prompts logged in Done (SUCCESS 4)"


def test_a_stopped_run_keeps_the_lines_printed_and_counts_the_rest_as_run_failed(tmp_path: Path) -> None:
    from image_pipeline.testing.emulators.base import FaultPlan
    from image_pipeline.testing.sandbox import Sandbox

    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    rows = [["prompt"], ["a lighthouse"], ["a fox"], ["a tram"]]
    with Sandbox(tmp_path / "sandbox", seed_rows=rows) as sandbox:
        # the second photo hears 401: the run stops after the first post
        sandbox.telegram.fault_plan = FaultPlan(sequence=[None, 401], endpoints={"sendphoto"})
        out = Output()
        with pytest.raises(AssertionError, match="stopping: fix the problem above"):
            out.run(tmp_path, [], _child_env(tmp_path, sandbox.env()))
    lines = [text for _, text in out.timed]
    found = _progress_lines(lines)
    assert [(m[1], m[4]) for m in found] == [("1", "POSTED"), ("2", "RUN"), ("3", "RUN")]
    assert "Telegram rejected the bot token" in found[1][0]
    # posted but not yet in Done: the next run logs it without posting again
    assert "done: POSTED 1, RUN FAILED 2" in lines


def test_counts_go_across_batches_on_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    lines = Output().run(tmp_path, ["--batch-size", "2"], _child_env(tmp_path))
    found = _progress_lines(lines)
    # the sample queue's 5 prompts in 3 runs, counted 1..5 of 5 across them
    assert [(int(m[1]), int(m[2])) for m in found] == [(n, 5) for n in range(1, 6)]
    assert all(m[6] != "--" for m in found) and found[-1][6] == "0.0s"
    assert "[0/5] starting: 5 prompts in 3 runs  (ETA --)" in lines
    assert sum(line.strip().endswith("logged in Done (SUCCESS 2)") for line in lines) == 2
    assert "done: SUCCESS 5" in lines
    logs = _run_log(tmp_path / "home", monkeypatch)
    assert len(logs) == 3
    assert sorted(len(v) for v in logs.values()) == [0, 4, 4]  # a one-prompt run writes no progress lines
    for logged in (v for v in logs.values() if v):
        assert logged[0] == "progress: 0/2 prompts done, ETA --"
        assert logged[2].startswith("progress: 2/2 prompts done, elapsed ")


def test_run_log_lines_are_throttled_for_big_batches() -> None:
    clock = [0.0]
    written: list[str] = []
    events: list[object] = []
    with progress.listening(events.append):
        tracker = RunProgress("r1", 1000, written.append, clock=lambda: clock[0])
        tracker.start()
        for i in range(1000):
            clock[0] += 0.05  # 50 s for the batch
            tracker.finished(f"p{i}", "POSTED")
    # every prompt reaches the listeners, the run log gets the start, each 5%, and the last
    assert len(events) == 1000 and all(isinstance(e, PromptFinished) for e in events)
    assert [e.done for e in events[:3]] == [1, 2, 3] and {e.total for e in events} == {1000}
    assert 20 <= len(written) <= 23
    assert written[0] == "progress: 0/1000 prompts done, ETA --"
    assert written[1].startswith("progress: 1/1000 prompts done, elapsed 0.1s, ETA 50s")
    assert written[-1].startswith("progress: 1000/1000 prompts done, elapsed 50s, ETA 0.0s")

    # slow prompts: a heartbeat line at least every HEARTBEAT_S even between 5% steps
    slow: list[str] = []
    tracker = RunProgress("r2", 1000, slow.append, clock=lambda: clock[0])
    for i in range(30):
        clock[0] += 4.0
        tracker.finished(f"p{i}", "POSTED")
    assert 10 <= len(slow) <= 12

    # small batches and one-prompt runs
    small: list[str] = []
    tracker = RunProgress("r3", 5, small.append)
    tracker.start()
    for i in range(5):
        tracker.finished(f"p{i}", "FAILED", "generation failed")
    assert len(small) == 6
    single: list[str] = []
    RunProgress("r4", 1, single.append).finished("p0", "POSTED")
    assert single == []


def test_listeners_are_optional_and_isolated() -> None:
    seen: list[object] = []

    def broken(_event: object) -> None:
        raise OSError("stdout closed")

    progress.emit(BatchLogged("r0", 1, 1, {"SUCCESS": 1}))  # nobody listening: nothing happens
    with progress.listening(broken), progress.listening(seen.append):
        progress.batch_logged("r1", 3, {"SUCCESS": 3, "RETRY": 1}, seen.append)
    progress.emit(BatchLogged("r2", 1, 1, {}))
    assert seen[0] == BatchLogged("r1", 3, 4, {"SUCCESS": 3, "RETRY": 1})
    assert seen[1] == "progress: 3 of 4 prompts logged in Done (RETRY 1, SUCCESS 3)"
    assert len(seen) == 2


def test_durations() -> None:
    assert progress.duration(None) == "--"
    assert progress.duration(0.44) == "0.4s"
    assert progress.duration(45.2) == "45s"
    assert progress.duration(72) == "1m12s"
    assert progress.duration(7500) == "2h05m"
    assert progress.eta_s(0, 10, 5.0) is None
    assert progress.eta_s(2, 10, 5.0) == 20.0
    assert progress.progress_text(37, 200, 41.0) == "elapsed 41s, ETA 3m01s"
