"""Spacing posts to one chat so Telegram never has to answer 429.

Telegram allows about 20 messages a minute into one group or channel. Posts are spaced evenly at
``60 / per_minute`` seconds, counted from when the previous post was answered (Telegram's window counts
accepted posts), across runs and processes: the time of the last post per chat is kept in a
small JSON file under an exclusive lock, and whoever holds the lock waits out the gap before taking the
next slot. An even spacing (not a burst of 20, then a pause) also keeps under the ~1 message per second
per chat that Telegram advises.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path


class ChatPacer:
    def __init__(
        self,
        per_minute: float,
        state_path: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.path = Path(state_path) if state_path else None
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self.waited_s = 0.0

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[dict[str, float]]:
        with self._lock:
            if self.path is None:
                yield self._last
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                raw = os.read(fd, 1 << 20)
                try:
                    state = json.loads(raw) if raw else {}
                except ValueError:
                    state = {}
                yield state
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(state).encode())
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def wait_turn(self, chat_id: str) -> float:
        """Block until a post to ``chat_id`` keeps the spacing; returns the seconds waited."""
        if self.interval <= 0:
            return 0.0
        with self._exclusive() as state:
            now = self._clock()
            due = float(state.get(chat_id, 0.0)) + self.interval
            wait = max(0.0, due - now)
            if wait > 0:
                self._sleep(wait)
            state[chat_id] = max(now, due)
        self.waited_s += wait
        return wait

    def sent(self, chat_id: str) -> None:
        """The post's answer came back: the next one is due a full interval after this moment.

        Telegram counts posts by when it accepts them, and an upload takes a variable time; spacing the
        starts alone lets two acceptances come closer than the interval."""
        if self.interval <= 0:
            return
        with self._exclusive() as state:
            state[chat_id] = max(float(state.get(chat_id, 0.0)), self._clock())
