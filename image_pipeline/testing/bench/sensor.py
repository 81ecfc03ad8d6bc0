"""The sensor scenario: a no-change tick in process, and a row's trip to the channel through the daemon.

``no_change_tick`` evaluates ``prompt_sheet_sensor`` on the Definitions the product builds and counts one
idle tick's Google requests; ``instant_trip`` starts ``dagster sensor start`` and ``dagster-daemon run``
in instant mode, appends a row once the daemon idles and times it until Telegram accepts the photo;
``run_sensor`` runs both, and the trip again with Drive's change token lagging ``DRIVE_LAG_S``.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from image_pipeline.testing.bench.emulated import (
    configure,
    google_429,
    prompt_text,
    queue_rows,
    sheets_requests,
    verify,
)
from image_pipeline.testing.bench.memory import TreeMemory, _own_peak_mb, _reset_own_peak, process_tree
from image_pipeline.testing.bench.processes import (
    PROJECT_ROOT,
    _base_env,
    _tail,
    prepare_root,
    started,
    worker_env,
)
from image_pipeline.testing.bench.profiles import Profile
from image_pipeline.testing.bench.scenarios import Context, _figures

if TYPE_CHECKING:  # the baseline's worker process must not pay for these imports
    from image_pipeline.testing.sandbox import Sandbox

DRIVE_LAG_S = 180.0  # how far Drive's modifiedTime trails Sheets edits (google-api-go-client#906)


def run_sensor(profile: Profile, ctx: Context) -> dict[str, Any]:
    from image_pipeline.testing.sandbox import Sandbox

    root = ctx.root / "sensor"
    prepare_root(root)
    out = _figures(prompts=1, bound_s=None, efficiency=None, overhead_ms_per_prompt=None)
    problems: list[str] = []

    # (a) a no-change tick, in process
    seed = replace(profile, prompts=10)
    sandbox = Sandbox(root / "tick-sandbox", seed_rows=queue_rows(seed, first=90001))
    configure(sandbox, profile)
    sandbox.start()
    # Dagster's error boundary around the sensor leaves SIGTERM mapped to whatever SIGINT does, which is
    # "ignore" in a background job: keep the bench's own handler, so it can still be stopped cleanly
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        out.update(no_change_tick(sandbox, root))
    except Exception as exc:  # the other half still has something to say
        problems.append(f"TICK FAILED: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
        sandbox.stop()

    # (b) instant mode through the real daemon
    sandbox = Sandbox(root / "sandbox", seed_rows=queue_rows(replace(profile, prompts=0)))
    accepted = configure(sandbox, profile)
    memory = TreeMemory().start()
    _reset_own_peak()
    sandbox.start()
    try:
        trip = instant_trip(sandbox, accepted, root, profile, ctx, memory)
        problems.extend(trip.pop("problems"))
        out.update(trip)
    finally:
        memory.stop()
        sandbox.stop()
    # (c) the same trip while Drive's token lags minutes behind the sheet
    sandbox = Sandbox(root / "lag-sandbox", seed_rows=queue_rows(replace(profile, prompts=0)))
    accepted = configure(sandbox, profile)
    sandbox.start()
    sandbox.google.drive_lag_s = DRIVE_LAG_S
    try:
        lag_root = root / "lag"
        prepare_root(lag_root)
        lagged = instant_trip(
            sandbox,
            accepted,
            lag_root,
            profile,
            ctx,
            TreeMemory(),
            {"IMAGE_PIPELINE_SHEET_CHECK_S": "1"},
            ready_ticks=3,
        )
        problems.extend(f"drive lag: {p}" for p in lagged.pop("problems"))
        out["drive_lag_s"] = DRIVE_LAG_S
        out["drive_lag_row_to_post_s"] = lagged.get("row_to_post_s")
        out["drive_lag_sheets_requests"] = lagged.get("sheets_requests_per_prompt")
    finally:
        sandbox.stop()
    out["peak_rss_mb"] = memory.peak_mb
    out["peak_rss_by_process"] = memory.top()
    out["bench_process_peak_rss_mb"] = _own_peak_mb()
    out["check"] = "ok" if not problems else "; ".join(problems)
    out["crashed"] = any(p.startswith(("TIMED OUT", "DAEMON")) for p in problems)
    return out


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def no_change_tick(sandbox: Sandbox, root: Path) -> dict[str, Any]:
    import dagster as dg

    from image_pipeline.definitions import build_definitions

    env = _base_env(sandbox, root / "tick")
    env["IMAGE_PIPELINE_INSTANT"] = "1"
    defs = build_definitions(env)
    sensor = defs.resolve_sensor_def("prompt_sheet_sensor")
    sheet = defs.resources["prompt_sheet"]
    instance = dg.DagsterInstance.ephemeral()
    google = sandbox.google

    def tick(cursor: str | None) -> tuple[Any, str | None]:
        # the sensor logs through a console handler made with the context: keep it out of the table;
        # secrets are bound with EnvVar, which reads the process environment when the context is built
        with (
            contextlib.redirect_stderr(io.StringIO()),
            _environ(env),
            dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={
                    "prompt_sheet": sheet,
                    **{k: defs.resources[k] for k in ("image_generator", "publisher", "ledger")},
                },
            ) as c,
        ):
            result = sensor(c)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                keys = list(getattr(request, "partition_keys", []) or [])
                if keys:
                    instance.add_dynamic_partitions(request.partitions_def_name, keys)
            return result, result.cursor if result.cursor is not None else cursor
        return result, cursor

    cursor: str | None = None
    primed = False
    for _ in range(5):  # the first tick writes the ids, the next one sees that write once
        result, cursor = tick(cursor)
        if isinstance(result, dg.SkipReason):
            primed = True
            break
    google_total = sum(google.counters.values())
    sheets0, token0 = sheets_requests(sandbox), google.count("token")
    t0 = time.perf_counter()
    result, cursor = tick(cursor)
    tick_ms = (time.perf_counter() - t0) * 1000
    total = sum(google.counters.values()) - google_total
    tokens = google.count("token") - token0
    return {
        "tick_requests": total - tokens,
        "tick_sheets_requests": sheets_requests(sandbox) - sheets0,
        "tick_token_requests": tokens,
        "tick_ms": round(tick_ms, 1),
        "tick_skipped": isinstance(result, dg.SkipReason),
        "tick_primed": primed,
    }


def _is_run_process(pid: int) -> bool:
    """A run worker (``dagster api execute_run``) or one of its step processes."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return False
    return b"execute_run" in cmdline or b"spawn_main" in cmdline


def _idle_tick_seen(google: Any, since: int) -> bool:
    """True once two change-token requests came with no Sheets request between them (an idle tick)."""
    from image_pipeline.testing.emulators.google import READ_ENDPOINTS, WRITE_ENDPOINTS

    sheets = set(READ_ENDPOINTS) | set(WRITE_ENDPOINTS)
    quiet_since_token: bool | None = None
    for entry in list(google.requests)[since:]:
        if entry.endpoint == "drive.files.get":
            if quiet_since_token:
                return True
            quiet_since_token = True
        elif entry.endpoint in sheets and quiet_since_token is not None:
            quiet_since_token = False
    return False


def instant_trip(
    sandbox: Sandbox,
    accepted: list[float],
    root: Path,
    profile: Profile,
    ctx: Context,
    memory: TreeMemory,
    extra_env: dict[str, str] | None = None,
    ready_ticks: int | None = None,
) -> dict[str, Any]:
    """``ready_ticks``: start once the daemon made that many ticks, instead of once one tick read no
    Sheets (a sensor that reads the sheet at every tick never makes one)."""
    from image_pipeline.testing.sandbox import PROCESS_WORKSHEET

    env = worker_env(sandbox, root, profile)
    env.update(IMAGE_PIPELINE_INSTANT="1", IMAGE_PIPELINE_SENSOR_INTERVAL_S="1", **(extra_env or {}))
    bin_dir = Path(sys.executable).parent
    dagster_cli = str(bin_dir / "dagster") if (bin_dir / "dagster").is_file() else "dagster"
    daemon_cli = (
        str(bin_dir / "dagster-daemon") if (bin_dir / "dagster-daemon").is_file() else "dagster-daemon"
    )
    workspace = ["-w", str(PROJECT_ROOT / "workspace.yaml")]
    logs = root / "logs"
    problems: list[str] = []
    out: dict[str, Any] = {}
    # turned on in the instance (sensors are off when Dagster starts), as `dagster sensor start` does
    start_log = logs / "sensor-start.log"
    command = [dagster_cli, "sensor", "start", "prompt_sheet_sensor", *workspace]
    with started(command, cwd=PROJECT_ROOT, env=env, log=start_log) as proc:
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0:
        return {"problems": [f"DAEMON: `dagster sensor start` exited {code}: {_tail(start_log)}"]}
    google, telegram = sandbox.google, sandbox.telegram
    deadline = time.monotonic() + min(ctx.timeout_s, 600.0)
    t_daemon = time.monotonic()
    with started(
        [daemon_cli, "run", *workspace], cwd=PROJECT_ROOT, env=env, log=logs / "daemon.log"
    ) as daemon:
        memory.watch(daemon.pid)
        while not (
            google.count("drive.files.get") >= ready_ticks if ready_ticks else _idle_tick_seen(google, 0)
        ):
            if daemon.poll() is not None:
                return {"problems": [f"DAEMON exited {daemon.returncode}: {_tail(logs / 'daemon.log')}"]}
            if time.monotonic() > deadline:
                return {"problems": ["TIMED OUT waiting for the daemon's first idle sensor tick"]}
            time.sleep(0.05)
        out["daemon_ready_s"] = round(time.monotonic() - t_daemon, 2)
        out["daemon_ticks_before_row"] = google.count("drive.files.get")
        out["daemon_token_requests_before_row"] = google.count("token")
        idle_pids = set(process_tree(daemon.pid))
        sheets0, posts0 = sheets_requests(sandbox), len(accepted)
        with google._state:  # one atomic person edit
            google.append_rows(
                sandbox.spreadsheet_id, PROCESS_WORKSHEET, queue_rows(profile, 80001)[1:], raw=True
            )
            t_row = time.monotonic()
        while len(accepted) <= posts0:
            if daemon.poll() is not None:
                problems.append(f"DAEMON exited {daemon.returncode}: {_tail(logs / 'daemon.log')}")
                break
            if time.monotonic() > deadline:
                problems.append("TIMED OUT waiting for the post")
                break
            time.sleep(0.02)
        if len(accepted) > posts0:
            out["row_to_post_s"] = round(accepted[posts0] - t_row, 2)
            out["wall_s"] = out["row_to_post_s"]
            # the trip ends when the run's processes are gone (Done row written, queue row removed), so
            # the daemon is not killed in the middle of it
            end = time.monotonic() + 60
            while time.monotonic() < end and daemon.poll() is None:
                if not any(_is_run_process(p) for p in set(process_tree(daemon.pid)) - idle_pids):
                    out["row_to_run_end_s"] = round(time.monotonic() - t_row, 2)
                    break
                memory.poll()
                time.sleep(0.05)
        out["sheets_requests_per_prompt"] = sheets_requests(sandbox) - sheets0
        memory.poll()
    check = verify(sandbox, [prompt_text(80001)])
    problems.extend(check.pop("problems"))
    out.update(check)
    out["telegram_429"] = telegram.count_429
    out["sheets_429"] = google_429(sandbox)
    out["problems"] = problems
    return out
