"""Subprocesses: the environment and command a scenario's worker gets, and starting and killing its tree.

``worker_env`` is the sandbox's environment minus the calling shell's pipeline variables plus the
profile's knobs; ``prepare_root`` makes a scenario's work folder (its own Dagster home, data folder and
HF_HOME); ``run_command`` is ``image-pipeline run`` as a user types it; ``started`` runs a command in its
own session and ``kill_tree`` stops it and every descendant on the way out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from image_pipeline.testing.bench.memory import process_tree
from image_pipeline.testing.bench.profiles import Profile

if TYPE_CHECKING:  # the baseline's worker process must not pay for these imports
    from image_pipeline.testing.sandbox import Sandbox

# image_pipeline/testing/bench/processes.py -> the project root
PROJECT_ROOT = Path(__file__).resolve().parents[3]


# Pipeline variables of the calling shell that would point a worker elsewhere or change what is measured.
_INHERITED_PIPELINE_VARS = (
    "GOOGLE_SERVICE_ACCOUNT_JSON",
    "GOOGLE_SHEET_TITLE",
    "GOOGLE_PROCESS_WORKSHEET",
    "GOOGLE_DONE_WORKSHEET",
    "HF_PROVIDER",
    "HF_HUB_OFFLINE",
    "HF_CONCURRENCY",
    "IMAGE_BACKENDS",  # the shell's own servers: B100-a1111 sets its own, the others use Hugging Face
    "TELEGRAM_POSTS_PER_MINUTE",
    # the shared ledger and object store of a scale-out deployment: never the calling shell's
    "IMAGE_PIPELINE_LEDGER_URL",
    "IMAGE_PIPELINE_S3_ENDPOINT_URL",
    "IMAGE_PIPELINE_WORKBOOK",
    "IMAGE_PIPELINE_OUTBOX",
    "IMAGE_PIPELINE_INSTANT",
    "IMAGE_PIPELINE_PROMPTS_PER_TICK",
    "IMAGE_PIPELINE_SENSOR_INTERVAL_S",
    "IMAGE_PIPELINE_SHEET_CHECK_S",
    "IMAGE_PIPELINE_HTTP_TIMEOUT_S",
    "IMAGE_PIPELINE_RETRY_ATTEMPTS",
    "IMAGE_PIPELINE_RETRY_BASE_DELAY_S",
    "IMAGE_PIPELINE_MAX_ATTEMPTS",
    "IMAGE_PIPELINE_CLAIM_LEASE_S",
    "GOOGLE_QUOTA_RETRY_S",
    "DAGSTER_HOME",
)


def _base_env(sandbox: Sandbox, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_PIPELINE_VARS}
    env.update(sandbox.env())
    env.update(
        DAGSTER_HOME=str(root / "home"),
        IMAGE_PIPELINE_DATA=str(root / "data"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(root / "hf"),
        PYTHONUNBUFFERED="1",
    )
    return env


def worker_env(sandbox: Sandbox, root: Path, profile: Profile) -> dict[str, str]:
    env = _base_env(sandbox, root)
    env.update(
        HF_CONCURRENCY=str(profile.hf_concurrency),
        TELEGRAM_POSTS_PER_MINUTE=str(profile.posts_per_minute),
    )
    return env


def prepare_root(root: Path) -> None:
    for folder in (root / "home", root / "data", root / "hf", root / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    if (PROJECT_ROOT / "dagster.yaml").is_file():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", root / "home" / "dagster.yaml")


def run_command() -> list[str]:
    """``image-pipeline run`` as a user types it: the venv's console script, else the module."""
    script = Path(sys.executable).parent / "image-pipeline"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "run"]
    return [sys.executable, "-m", "image_pipeline.cli", "run"]


def kill_tree(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM then SIGKILL ``proc`` and every descendant, by pid (its own session, started here)."""
    if proc.poll() is not None:
        return
    pids = process_tree(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        # descendants that outlived the leader (a run worker) get the same treatment
        if not any(_alive(pid) for pid in pids if pid != proc.pid):
            return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def started(command: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            kill_tree(proc)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[:300]
