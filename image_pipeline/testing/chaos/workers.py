"""The worker process: how the harness starts ``image-pipeline run``, with which environment, and reaps it.

``Supervisor`` runs one worker per slot (one unless ``--workers``), each in its own session, and knows
which process is which, so a kill never hits the wrong process (``requester`` finds the worker behind an
emulator request by its socket); ``WORKER_COMMAND`` and ``_worker_env`` are the command line and the
environment (the sandbox's, minus the calling shell's pipeline variables, plus fast-failure knobs), and
``STALL_S`` / ``NOT_STARTED_PATIENCE`` say when the harness stops waiting for a worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from image_pipeline.testing.emulators.base import Request
from image_pipeline.testing.sandbox import Sandbox

# Pipeline variables of the calling shell that would point a worker away from the sandbox or change its
# behaviour; the sandbox env and the knobs below replace them.
_INHERITED_PIPELINE_VARS = (
    "GOOGLE_SERVICE_ACCOUNT_JSON",
    "GOOGLE_SHEET_TITLE",
    "GOOGLE_PROCESS_WORKSHEET",
    "GOOGLE_DONE_WORKSHEET",
    "HF_PROVIDER",
    "HF_HUB_OFFLINE",
    "IMAGE_PIPELINE_WORKBOOK",
    "IMAGE_PIPELINE_OUTBOX",
    "IMAGE_PIPELINE_INSTANT",
    "IMAGE_PIPELINE_PROMPTS_PER_TICK",
    "IMAGE_PIPELINE_LEDGER_URL",
    "IMAGE_PIPELINE_S3_ENDPOINT_URL",
)
# Fast failure so a few hundred prompts with a fifth of all requests failing finish in minutes.
WORKER_KNOBS = {
    "IMAGE_PIPELINE_HTTP_TIMEOUT_S": "1",
    "IMAGE_PIPELINE_RETRY_ATTEMPTS": "4",
    "IMAGE_PIPELINE_RETRY_BASE_DELAY_S": "0.05",
    "GOOGLE_QUOTA_RETRY_S": "0.2",
    # the emulated Telegram's flood limits are off here, so spacing posts would only slow the run down
    "TELEGRAM_POSTS_PER_MINUTE": "0",
}
STALL_S = 90.0  # a worker that makes no request at all for this long is hung, not slow
# Workers in a row that may exit with "no run started" (code 2: a preflight check or the first queue read
# met an injected fault) before the harness gives up; each costs a process start of a few seconds.
NOT_STARTED_PATIENCE = 40


@dataclass
class Slot:
    """One place a worker runs: its working directory and environment, and the process now in it."""

    cwd: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0
    log: TextIO | None = None
    reaped: bool = True


class Supervisor:
    """Runs one worker per slot (one slot unless ``--workers``) and knows which process is which
    generation, so a kill never hits the wrong process.

    ``wrap`` goes before the command (``unshare ...`` for a PID namespace and hostname of its own). Every
    worker runs in a session of its own, so its session id names it: ``requester`` finds the worker
    behind an emulator request from the request's socket."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        log_dir: Path,
        command: list[str],
        *,
        slots: list[tuple[Path, dict[str, str]]] | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.command = command
        self.wrap = list(wrap or [])
        self.log_dir = log_dir
        self.lock = threading.Lock()
        self.slots = [Slot(workdir, env)] if slots is None else [Slot(cwd, e) for cwd, e in slots]
        self.generation = 0  # of the worker started last; each start gets the next number
        self.exit_codes: Counter[int] = Counter()

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.slots[0].proc

    def start(self, slot: int = 0) -> int:
        with self.lock:
            self.generation += 1
            place = self.slots[slot]
            name = f"worker-{self.generation:03d}" + (f"-w{slot + 1}" if self.size > 1 else "")
            place.log = open(self.log_dir / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed in reap()
            place.proc = subprocess.Popen(
                [*self.wrap, *self.command],
                cwd=place.cwd,
                env=place.env,
                stdout=place.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches it and nothing else
            )
            place.generation = self.generation
            place.reaped = False
            return self.generation

    def alive(self, slot: int | None = None) -> bool:
        with self.lock:
            places = self.slots if slot is None else [self.slots[slot]]
            return any(p.proc is not None and p.proc.poll() is None for p in places)

    def exited(self) -> list[int]:
        """Slots whose worker has exited and is not reaped yet."""
        with self.lock:
            return [
                i
                for i, p in enumerate(self.slots)
                if p.proc is not None and not p.reaped and p.proc.poll() is not None
            ]

    def kill(self, generation: int | None = None) -> bool:
        """SIGKILL the worker of ``generation`` if it still runs, or every live worker; True when a signal
        was sent."""
        with self.lock:
            sent = False
            for place in self.slots:
                proc = place.proc
                if proc is None or proc.poll() is not None:
                    continue
                if generation is not None and generation != place.generation:
                    continue
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                sent = True
            return sent

    def reap(self, slot: int = 0) -> int:
        with self.lock:
            place = self.slots[slot]
            assert place.proc is not None
            code = place.proc.wait()
            if place.log is not None:
                place.log.close()
                place.log = None
            if not place.reaped:
                self.exit_codes[code] += 1
                place.reaped = True
            return code

    def generation_of(self, slot: int) -> int:
        return self.slots[slot].generation

    def requester(self, request: Request) -> int | None:
        """The generation of the live worker that sent ``request`` (still waiting for its answer), or None.

        One slot: the current worker, whoever it is. Several: the client's socket (its port, and the
        emulator's port from the Host header) is looked up in /proc/net/tcp, and its inode among the
        open files of the workers' processes, found by their session."""
        with self.lock:
            if self.size == 1:
                return self.slots[0].generation
            sessions = {
                p.proc.pid: p.generation for p in self.slots if p.proc is not None and p.proc.poll() is None
            }
        if not sessions or not request.client_port:
            return None
        _, _, port_text = request.header("host").rpartition(":")
        inode = _socket_inode(request.client_port, int(port_text) if port_text.isdigit() else 0)
        return _holder(inode, sessions) if inode else None


def _socket_inode(client_port: int, server_port: int) -> int:
    """The inode of the client end of a loopback TCP connection from ``client_port``, 0 when gone."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
            if int(local, 16) == client_port and (not server_port or int(remote, 16) == server_port):
                return int(fields[9])
    return 0


def _holder(inode: int, sessions: dict[int, int]) -> int | None:
    """The generation whose session holds socket ``inode`` among its open files."""
    needle = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8") as fh:
                session = int(fh.read().rsplit(")", 1)[1].split()[3])
            if session not in sessions:
                continue
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) == needle:
                    return sessions[session]
        except (OSError, ValueError, IndexError):
            continue  # a process that exited meanwhile
    return None


# Small batches: a kill then lands inside a batch run as often as between runs.
WORKER_COMMAND = [sys.executable, "-m", "image_pipeline.cli", "run", "--batch-size", "5"]


def _worker_env(sandbox: Sandbox, root: Path, data: Path | str | None = None) -> dict[str, str]:
    """The environment of a worker whose folder is ``root``; ``data``: a data folder or URL elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_PIPELINE_VARS}
    env.update(sandbox.env())
    env.update(WORKER_KNOBS)
    env.update(
        DAGSTER_HOME=str(root / "home"),
        IMAGE_PIPELINE_DATA=str(root / "data" if data is None else data),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(root / "hf"),
        PYTHONUNBUFFERED="1",  # a SIGKILLed worker's log still shows how far it got
    )
    return env
