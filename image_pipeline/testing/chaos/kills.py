"""The kills: SIGKILLs of the worker planned over the run and fired from inside the emulators.

``plan_kills`` spreads the planned kills over the run by Done rows appended; ``Killer``'s hooks run in the
emulators' request threads and fire each kill right where a crash hurts most (during generation, just
after Telegram accepted a photo, while the Done row is appended, while the queue row is removed), at the
worker that sent that request (one of several with ``--workers``), at most once per worker. ``appended_worksheet`` tells which worksheet an append request writes to.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

from image_pipeline.testing.chaos.workers import Supervisor
from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.sandbox import DONE_WORKSHEET

KILL_KINDS = ("mid-generation", "after-telegram-accepted", "mid-done-append", "mid-removal")


@dataclass
class KillPoint:
    kind: str
    after_done_rows: int  # armed once this many Done rows were appended: spreads the kills over the run


@dataclass
class Kill:
    kind: str
    generation: int
    at_s: float


class Killer:
    """Fires the planned kills, in order, from inside the emulators' request threads."""

    def __init__(self, plan: list[KillPoint], supervisor: Supervisor, rng: random.Random, t0: float) -> None:
        self.plan = plan
        self.supervisor = supervisor
        self.rng = rng
        self.t0 = t0
        self.lock = threading.Lock()
        self.done_rows = 0
        self.kills: list[Kill] = []
        self.last_request = time.monotonic()
        self._next = 0
        self._pending = False  # a delayed kill is scheduled; the next one waits for it
        self._killed: set[int] = set()  # one kill per worker, so every worker gets to make progress first
        self._timers: list[threading.Timer] = []
        self.active = True

    # -- emulator hooks ----------------------------------------------------------------------------------
    def hf_request(self, request: Request, endpoint: str) -> None:
        self.last_request = time.monotonic()
        self._event("mid-generation", request)

    def any_request(self, request: Request, endpoint: str) -> None:
        self.last_request = time.monotonic()

    def google_request(self, request: Request, endpoint: str) -> None:
        self.last_request = time.monotonic()

    def google_routed(self, request: Request, endpoint: str, response: Response) -> None:
        if response.status != 200:
            return
        if endpoint == "values.append" and appended_worksheet(request.path) == DONE_WORKSHEET:
            # a batch appends many rows in one request: count rows, or the later kills never arm
            try:
                appended = len(json.loads(request.body).get("values", [])) or 1
            except (ValueError, AttributeError):
                appended = 1
            with self.lock:
                self.done_rows += appended
            self._event("mid-done-append", request)
        elif endpoint == "sheets.batchUpdate" and b"deleteDimension" in request.body:
            # a process killed after sending is the same as this: the row is gone, the worker never heard
            self._event("mid-removal", request)

    def telegram_routed(self, request: Request, endpoint: str, response: Response) -> None:
        if endpoint in ("sendphoto", "senddocument") and response.status == 200:
            # a little later, so the worker has read the answer and may have recorded the post
            self._event("after-telegram-accepted", request, delay=self.rng.uniform(0.02, 0.2))

    # -- firing ----------------------------------------------------------------------------------------
    def _event(self, kind: str, request: Request, delay: float = 0.0) -> None:
        # the worker that sent this request is the one killed: with several running, any other would
        # die at a moment that means nothing
        with self.lock:
            if not self.active or self._pending or self._next >= len(self.plan):
                return
            point = self.plan[self._next]
            if point.kind != kind:
                return
            if self.done_rows < point.after_done_rows:
                return
            generation = self.supervisor.requester(request)
            if generation is None or generation in self._killed:
                return
            if delay <= 0:
                self._fire(point, generation)
                return
            self._pending = True
        timer = threading.Timer(delay, self._delayed, args=(point, generation))
        timer.daemon = True
        with self.lock:
            self._timers.append(timer)
        timer.start()

    def _delayed(self, point: KillPoint, generation: int) -> None:
        with self.lock:
            self._pending = False
            if self.active and self._next < len(self.plan) and self.plan[self._next] is point:
                self._fire(point, generation)

    def _fire(self, point: KillPoint, generation: int) -> None:
        # called with self.lock held; a worker that already exited keeps the point armed for the next one
        if self.supervisor.kill(generation):
            self._next += 1
            self._killed.add(generation)
            self.kills.append(Kill(point.kind, generation, round(time.monotonic() - self.t0, 2)))

    def stop(self) -> None:
        with self.lock:
            self.active = False
            timers = list(self._timers)
        for timer in timers:
            timer.cancel()


def appended_worksheet(path: str) -> str:
    """The worksheet a ``.../values/<range>:append`` path writes to (quotes removed)."""
    _, _, tail = unquote(path).partition("/values/")
    name = tail.rsplit("!", 1)[0] if "!" in tail else tail.split(":", 1)[0]
    if name.startswith("'") and name.endswith("'"):
        name = name[1:-1].replace("''", "'")
    return name


def plan_kills(kills: int, prompts: int) -> list[KillPoint]:
    # Done rows grow with progress; withdrawals and retries make the final count uncertain, so the last
    # kill is armed well before the expected end.
    expected = max(1, int(prompts * 0.8))
    return [KillPoint(KILL_KINDS[i % len(KILL_KINDS)], i * expected // max(1, kills)) for i in range(kills)]
