"""Spacing posts to one chat so Telegram never has to answer 429.

Telegram allows about 20 messages a minute into one group or channel. Posts are spaced evenly at
``60 / per_minute`` seconds, counted from when the previous post was answered (Telegram's window counts
accepted posts), across runs and processes: the time of the last post per chat is kept in a
small JSON file under an exclusive lock, and whoever holds the lock waits out the gap before taking the
next slot. An even spacing (not a burst of 20, then a pause) also keeps under the ~1 message per second
per chat that Telegram advises.

Workers on several hosts share no file: given a ``SlotBook`` (the post ledger, when it is shared), the pace
of each chat is kept there instead, by the database's clock (``lifecycle/ledger_pacing.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

log = logging.getLogger("image_pipeline.publisher")


class SlotBook(Protocol):
    """Each chat's pace, kept where all the workers posting into it see it (the ledger implements it)."""

    def take_slot(self, chat_id: str, interval_s: float) -> tuple[float, float]:
        """Take the next slot of the chat, at least ``interval_s`` after the one before: (its start, now),
        both by the book's own clock. Raises ``TransientError`` when the book cannot be reached."""
        ...

    def slot_used(self, chat_id: str, interval_s: float) -> None:
        """The post was answered now: no slot taken from here on starts less than ``interval_s`` later."""
        ...


class ChatPacer:
    def __init__(
        self,
        per_minute: float,
        state_path: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        slots: SlotBook | None = None,
    ) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        # set: the shared book, not the file, keeps the pace (assigned at run time, once the ledger is open)
        self.slots = slots
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
        if self.slots is not None:
            return self._shared_turn(self.slots, chat_id)
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
        if self.slots is not None:
            try:
                self.slots.slot_used(chat_id, self.interval)
            except Exception as exc:
                # whatever went wrong, the post went out: its receipt must reach the ledger. The next slot
                # still starts an interval after this post's own slot.
                log.warning(
                    "could not record the answer of a post to chat %s in the pacing: %s", chat_id, exc
                )
            return
        with self._exclusive() as state:
            state[chat_id] = max(float(state.get(chat_id, 0.0)), self._clock())

    def _shared_turn(self, slots: SlotBook, chat_id: str) -> float:
        """Take a slot in the shared book, then sleep until it, holding nothing.

        The file stays locked while its holder sleeps, so a slot is fixed only once the one before is over;
        the book hands out the next slots at once (each waiter sleeps to its own). So an answer pushes back
        the slots not taken yet, never one a worker already sleeps towards: a slower upload then brings two
        acceptances closer than the interval by at most the difference of the two uploads' durations."""
        start, now = slots.take_slot(chat_id, self.interval)
        wait = max(0.0, start - now)
        if wait > 0:
            self._sleep(wait)
        self.waited_s += wait
        return wait
