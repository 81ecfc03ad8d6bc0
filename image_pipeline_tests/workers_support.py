"""Several ``image-pipeline run`` workers at once that share nothing but a PostgreSQL ledger and a bucket.

Each worker gets its own working directory (so its own local data folder), Dagster home and HF_HOME, and
runs in a PID namespace and UTS namespace of its own (``unshare``) under one hostname common to all: the
liveness trap of containers that share a hostname and repeat PIDs. Where ``unshare`` cannot do that
(not root, no util-linux, a sandbox that forbids namespaces) the workers are plain processes, and
``WorkerPool.note`` says so, so the test prints it instead of skipping quietly.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import PIPELINE_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_HOSTNAME = "worker"  # every worker's hostname: what containers of one deployment look like
# Fast failure and no spacing of posts, as the chaos harness uses (the emulated Telegram has no flood
# limit here): the test is about who posts, not about pacing.
WORKER_KNOBS = {
    "IMAGE_PIPELINE_HTTP_TIMEOUT_S": "5",
    "IMAGE_PIPELINE_RETRY_ATTEMPTS": "4",
    "IMAGE_PIPELINE_RETRY_BASE_DELAY_S": "0.05",
    "GOOGLE_QUOTA_RETRY_S": "0.2",
    "TELEGRAM_POSTS_PER_MINUTE": "0",
    "PYTHONUNBUFFERED": "1",  # a killed worker's log still shows how far it got
}
# "[3/30] pab12cd34ef: POSTED message 3 in chat ...": one line per prompt of `run`'s console progress
_PROGRESS_RE = re.compile(r"^\[\d+/\d+\] (?P<pid>\S+): (?P<status>[A-Z][A-Z ]*?)(?: |$)")


def _probe_namespaces() -> tuple[list[str], str]:
    """The command prefix that puts a worker in new PID and UTS namespaces, and a sentence saying what
    the workers got. Probed by running it once: ``unshare`` exists on many machines where the kernel or
    a container runtime refuses it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return [], "no `unshare` on PATH: workers run as plain processes (one PID namespace, one hostname)"
    # --kill-child: killing unshare takes the namespace's init (and so every process in it) down too
    prefix = [unshare, "--pid", "--uts", "--fork", "--mount-proc", "--kill-child"]
    probe = [*prefix, "sh", "-c", f'hostname {SHARED_HOSTNAME} && echo "$(hostname) $$"']
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"`unshare` failed ({exc}): workers run as plain processes"
    if done.returncode != 0 or done.stdout.split() != [SHARED_HOSTNAME, "1"]:
        reason = (done.stderr or done.stdout).strip()[:200]
        return [], f"`unshare` refused ({reason}): workers run as plain processes"
    return prefix, f"each worker in its own PID + UTS namespace, all with hostname {SHARED_HOSTNAME!r}"


def _in_namespace(prefix: list[str], pid_offset: int) -> list[str]:
    """The command prefix for one worker: set the shared hostname, start ``pid_offset`` throwaway
    processes, then run the worker as a child of the namespace's init.

    Not ``exec``: a worker that is PID 1 in every namespace sees its own PID in the others' run tags and
    takes them for itself, which hides the trap. With offsets the PIDs repeat for some workers and
    differ for others, as they do across real containers."""
    if not prefix:
        return []
    script = (
        f"hostname {SHARED_HOSTNAME} || exit 97; "
        f'i=0; while [ "$i" -lt {pid_offset} ]; do /bin/true; i=$((i+1)); done; "$@"'
    )
    return [*prefix, "sh", "-c", script, "worker"]


@dataclass
class Worker:
    """One worker: its folder (home/, hf/, work/ and worker.log), its process and how it ended."""

    name: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def log(self) -> Path:
        return self.root / "worker.log"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def statuses(self) -> Counter[str]:
        """What this worker's progress lines said per prompt (POSTED, BUSY, GONE, RUN FAILED, ...)."""
        found: Counter[str] = Counter()
        for line in self.log_text().splitlines():
            if (m := _PROGRESS_RE.match(line.strip())) is not None:
                found[m["status"].strip()] += 1
        return found

    def posted(self) -> list[str]:
        """The prompts this worker sent itself (not the ones it found posted by an earlier run)."""
        return [
            m["pid"]
            for line in self.log_text().splitlines()
            if (m := _PROGRESS_RE.match(line.strip())) is not None
            and m["status"].strip() == "POSTED"
            and "posted in an earlier run" not in line
        ]


@dataclass
class WorkerPool:
    """N workers started together over one shared environment (ledger URL, data URL, emulators)."""

    base: Path
    shared_env: dict[str, str]
    count: int
    command: list[str]
    # the Dagster instance settings each worker's home gets (its own SQLite instance, or a shared one)
    instance_yaml: Path = PROJECT_ROOT / "dagster.yaml"
    pid_offsets: tuple[int, ...] = (0, 0, 1)
    workers: list[Worker] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)
    note: str = ""

    def __post_init__(self) -> None:
        self.prefix, self.note = _probe_namespaces()
        self.workers = [Worker(f"w{i + 1}", self.base / f"w{i + 1}") for i in range(self.count)]
        for worker in self.workers:
            for folder in (worker.root / "home", worker.root / "hf", worker.root / "work"):
                folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.instance_yaml, worker.root / "home" / "dagster.yaml")

    def _env(self, worker: Worker) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in PIPELINE_ENV and k != "DAGSTER_HOME"}
        env.update(self.shared_env)
        env.update(WORKER_KNOBS)
        env.update(DAGSTER_HOME=str(worker.root / "home"), HF_HOME=str(worker.root / "hf"))
        return env

    def set_pools_once(self, pools: tuple[str, ...], limit: int = 1) -> None:
        """The deployment's one-time step on a shared instance (deploy/dagster.postgres.yaml): each pool's
        limit set before the workers start, so their first runs do not race to create it."""
        worker = self.workers[0]
        for pool in pools:
            subprocess.run(
                [sys.executable, "-m", "dagster", "instance", "concurrency", "set", pool, str(limit)],
                cwd=worker.root / "work",
                env=self._env(worker),
                check=True,
                capture_output=True,
                timeout=120,
            )

    def start(self, worker: Worker) -> None:
        index = self.workers.index(worker)
        offset = self.pid_offsets[index % len(self.pid_offsets)]
        with open(worker.log, "wb") as out:
            worker.proc = subprocess.Popen(
                [*_in_namespace(self.prefix, offset), *self.command],
                cwd=worker.root / "work",  # the local data folder ("data", relative) is the worker's own
                env=self._env(worker),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches it and nothing else
            )
        worker.started_at = time.monotonic()

    def any_running(self) -> bool:
        return any(w.proc is not None and w.proc.poll() is None for w in self.workers)

    def wait(self, timeout_s: float) -> None:
        """Until every worker exits, at most ``timeout_s`` in all; the ones still running then are killed
        (their exit code is then -9, which the test reports)."""
        deadline = time.monotonic() + timeout_s
        running = [w for w in self.workers if w.proc is not None]
        while running and time.monotonic() < deadline:
            for worker in list(running):
                assert worker.proc is not None
                if (code := worker.proc.poll()) is not None:
                    worker.exit_code, worker.ended_at = code, time.monotonic()
                    running.remove(worker)
            time.sleep(0.1)
        for worker in running:
            assert worker.proc is not None
            self._kill(worker.proc)
            worker.exit_code, worker.ended_at = worker.proc.wait(), time.monotonic()

    def stop(self) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                self._kill(worker.proc)
                worker.proc.wait()

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_command(batch_size: int) -> list[str]:
    return [sys.executable, "-m", "image_pipeline.cli", "run", "--batch-size", str(batch_size)]
