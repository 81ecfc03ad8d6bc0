"""Progress of long work: a record per prompt as it finishes, for listeners and for the run's log.

The assets report here as each prompt finishes; ``image-pipeline run`` listens in process and prints a
line per prompt. The run's own log (the Dagster UI's event log) gets a throttled ``progress: ...`` line,
because every event costs a write to the event log storage (about 10 ms each on SQLite).

"Done" in the counts means the prompt's generate-and-post step is over for this run: posted, failed,
invalid, skipped, or left queued for a retry. Its row in the Done worksheet is appended later, once per
batch, after the last prompt of the batch (``BatchLogged``): a line per prompt has to come from the
step that finishes prompts one by one, and the append is one request for the whole batch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("image_pipeline.progress")

# Up to this many prompts in a run, the run log gets a line per prompt; above it, a line per 5% of the
# batch, or one after HEARTBEAT_S without one (slow generation still shows it is alive). A one-prompt run
# gets none: its own log lines and metadata say it all, and the event writes are the run's main cost.
LINE_PER_PROMPT_UP_TO = 20
STEPS = 20
HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class PromptFinished:
    """One prompt of a run is done (see the module docstring for what done means)."""

    run_id: str
    prompt_id: str
    status: str  # POSTED, FAILED, INVALID, RETRY, SKIPPED, BUSY, GONE, LOGGED, QUARANTINED
    detail: str
    done: int  # prompts of this run done so far, this one included
    total: int  # prompts in this run
    elapsed_s: float  # since the step started


@dataclass(frozen=True)
class BatchLogged:
    """The run appended its Done rows and removed its prompts from the queue."""

    run_id: str
    logged: int
    total: int
    statuses: Mapping[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return f"{self.logged} of {self.total} prompts logged in Done ({counts})"


Event = PromptFinished | BatchLogged
Listener = Callable[[Event], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener`` with every progress record emitted in this process while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def emit(event: Event) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            # a broken listener (a closed stdout) must never fail the prompt that reported
            log.exception("a progress listener failed")


def eta_s(done: int, total: int, elapsed_s: float) -> float | None:
    """Time left at the rate so far; None until a prompt finished."""
    if done <= 0:
        return None
    return elapsed_s / done * max(0, total - done)


def duration(seconds: float | None) -> str:
    """``--``, ``0.4s``, ``45s``, ``1m12s``, ``2h05m``."""
    if seconds is None:
        return "--"
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_text(done: int, total: int, elapsed_s: float) -> str:
    return f"elapsed {duration(elapsed_s)}, ETA {duration(eta_s(done, total, elapsed_s))}"


class RunProgress:
    """One step's count of finished prompts: tells the listeners each time, the run log now and then."""

    def __init__(
        self,
        run_id: str,
        total: int,
        log_line: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_id = run_id
        self.total = total
        self.done = 0
        self._log_line = log_line
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._next_step = 1
        self.lines = 0

    def start(self) -> None:
        if self.total > 1:
            self._write(f"progress: 0/{self.total} prompts done, ETA --")

    def finished(self, prompt_id: str, status: str, detail: str = "") -> None:
        self.done += 1
        now = self._clock()
        elapsed = now - self._started
        emit(PromptFinished(self.run_id, prompt_id, status, detail, self.done, self.total, elapsed))
        if self._due(now):
            self._last_line = now
            self._write(
                f"progress: {self.done}/{self.total} prompts done, {progress_text(self.done, self.total, elapsed)}"
                f" (last: {prompt_id} {status})"
            )

    def _due(self, now: float) -> bool:
        if self.total <= 1:
            return False
        if self.total <= LINE_PER_PROMPT_UP_TO or self.done in (1, self.total):
            return True
        step_reached = False
        while self.done >= math.ceil(self.total * self._next_step / STEPS):
            self._next_step += 1
            step_reached = True
        return step_reached or now - self._last_line >= HEARTBEAT_S

    def _write(self, text: str) -> None:
        self.lines += 1
        self._log_line(text)


def batch_logged(
    run_id: str, logged: int, statuses: Mapping[str, int], log_line: Callable[[str], None]
) -> None:
    event = BatchLogged(run_id, logged, sum(statuses.values()), dict(statuses))
    emit(event)
    if event.total > 1:
        log_line(f"progress: {event.summary()}")
