"""The worker process: how the harness starts ``image-pipeline run``, with which environment, and reaps it.

``Supervisor`` runs one worker at a time in its own process group and knows which one is current, so a
kill never hits the wrong process; ``WORKER_COMMAND`` and ``_worker_env`` are the command line and the
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
from pathlib import Path
from typing import TextIO

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


class Supervisor:
    """Runs one worker at a time and knows which one is current, so a kill never hits the wrong process."""

    def __init__(self, workdir: Path, env: dict[str, str], log_dir: Path, command: list[str]) -> None:
        self.workdir = workdir
        self.env = env
        self.command = command
        self.log_dir = log_dir
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.exit_codes: Counter[int] = Counter()
        self._log: TextIO | None = None

    def start(self) -> int:
        with self.lock:
            self.generation += 1
            log_path = self.log_dir / f"worker-{self.generation:03d}.log"
            self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in reap()
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                env=self.env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches it and nothing else
            )
            return self.generation

    def alive(self) -> bool:
        with self.lock:
            return self.proc is not None and self.proc.poll() is None

    def kill(self, generation: int | None = None) -> bool:
        """SIGKILL the current worker (only if it is still ``generation``); True when a signal was sent."""
        with self.lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
            if generation is not None and generation != self.generation:
                return False
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return False
            return True

    def reap(self) -> int:
        with self.lock:
            assert self.proc is not None
            code = self.proc.wait()
            if self._log is not None:
                self._log.close()
                self._log = None
            self.exit_codes[code] += 1
            return code


# Small batches: a kill then lands inside a batch run as often as between runs.
WORKER_COMMAND = [sys.executable, "-m", "image_pipeline.cli", "run", "--batch-size", "5"]


def _worker_env(sandbox: Sandbox, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_PIPELINE_VARS}
    env.update(sandbox.env())
    env.update(WORKER_KNOBS)
    env.update(
        DAGSTER_HOME=str(root / "home"),
        IMAGE_PIPELINE_DATA=str(root / "data"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(root / "hf"),
        PYTHONUNBUFFERED="1",  # a SIGKILLed worker's log still shows how far it got
    )
    return env
