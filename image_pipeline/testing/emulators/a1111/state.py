"""What the emulated webui holds and the knobs a test turns: flavour (a1111, forge, sdnext), the API switch,
the login, the installed and loaded checkpoints, the emulated generation time, and the global job state
that ``/progress`` reports and ``/interrupt`` sets. Also the FIFO lock every generation takes, as the real
``queue_lock`` (``modules/fifo_lock.py``), and the counters tests assert on (jobs run, most jobs at once)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from image_pipeline.testing.emulators.a1111.wire import Checkpoint
from image_pipeline.testing.emulators.base import EmulatorServer

DEFAULT_CHECKPOINTS = (
    "sd_xl_base_1.0.safetensors",
    "juggernautXL_v9.safetensors",
    "flux/flux1-dev-fp8.safetensors",
)


class FifoLock:
    """A lock handed over in arrival order, as ``modules/fifo_lock.py``: a waiter never overtakes."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Event] = deque()
        self.max_waiting = 0  # the longest queue seen: requests blocked behind the running job

    def acquire(self) -> None:
        with self._guard:
            if not self._held and not self._waiters:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
            self.max_waiting = max(self.max_waiting, len(self._waiters))
        turn.wait()  # release() hands the lock over: _held stays True

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False

    @property
    def waiting(self) -> int:
        with self._guard:
            return len(self._waiters)

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class A1111State(EmulatorServer):
    name = "a1111"

    def __init__(
        self,
        *,
        flavour: str = "a1111",
        checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS,
        loaded: str | None = "",
        api_auth: str | None = None,
        api_enabled: bool = True,
        generation_s: float = 0.0,
    ) -> None:
        """``loaded``: the checkpoint's name in memory ("" = the first installed one, None = no model,
        which on SD.Next makes every txt2img answer 200 with no image); ``api_auth``: "user:password"
        as ``--api-auth`` takes it (several separated by commas)."""
        super().__init__()
        if flavour not in ("a1111", "forge", "sdnext"):
            raise ValueError(f"unknown flavour {flavour!r}")
        self.flavour = flavour
        self.api_enabled = api_enabled
        self.credentials: dict[str, str] | None = None
        if api_auth:
            self.credentials = dict(pair.split(":", 1) for pair in api_auth.split(","))
        self.checkpoints = [Checkpoint(name) for name in checkpoints]
        self.loaded: Checkpoint | None = None
        if loaded is not None and self.checkpoints:
            self.loaded = next((c for c in self.checkpoints if c.name == loaded), self.checkpoints[0])
        self.generation_s = generation_s  # emulated sampling time of one job, inside the queue lock
        self.queue_lock = FifoLock()
        self.txt2img_bodies: list[dict[str, Any]] = []  # what each txt2img asked, in arrival order
        self.jobs: list[dict[str, Any]] = []  # each job run: seed, size, asked and used checkpoint
        self.jobs_run = 0
        self.jobs_interrupted = 0
        self.interrupts = 0
        self.max_concurrent_jobs = 0
        self._running = 0
        # the global ``shared.state`` the real server keeps (modules/shared_state.py)
        self.job_state: dict[str, Any] = _idle_state()
        self._interrupted = threading.Event()
        self._time_start = 0.0

    # ----------------------------------------------------------------- knobs
    def add_checkpoint(self, name: str) -> Checkpoint:
        checkpoint = Checkpoint(name)
        with self._lock:
            self.checkpoints.append(checkpoint)
        return checkpoint

    def checkpoint(self, name: str) -> Checkpoint:
        return next(c for c in self.checkpoints if c.name == name)

    @property
    def waiting_jobs(self) -> int:
        return self.queue_lock.waiting

    # ----------------------------------------------------------------- the global job state
    def _begin(self, steps: int) -> None:
        with self._lock:
            self._running += 1
            self.max_concurrent_jobs = max(self.max_concurrent_jobs, self._running)
            # state.begin() clears a flag set while nothing ran: an interrupt only stops a running job
            self._interrupted.clear()
            self._time_start = time.time()
            self.job_state = {
                **_idle_state(),
                "job": "scripts_txt2img",
                "job_count": 1,
                "sampling_steps": steps,
            }

    def _end(self) -> None:
        with self._lock:
            self._running -= 1
            self.jobs_run += 1
            self.job_state = _idle_state()

    def _interrupt(self) -> None:
        with self._lock:
            self.interrupts += 1
            self.job_state["interrupted"] = True
        self._interrupted.set()

    def _progress(self) -> dict[str, Any]:
        with self._lock:
            state = dict(self.job_state)
            started = self._time_start
        if not state["job_count"]:
            return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}
        steps = max(1, state["sampling_steps"])
        progress = min(1.0, 0.01 + state["sampling_step"] / steps)
        elapsed = time.time() - started
        eta = elapsed / progress - elapsed
        return {
            "progress": progress,
            "eta_relative": eta,
            "state": state,
            "current_image": None,
            "textinfo": None,
            "current_task": "task(emulated)",
        }


def _idle_state() -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
