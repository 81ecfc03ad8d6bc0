"""What the ledger tells a worker about the others: who holds which prompts, how many workers are about, and
a lock one worker at a time holds across all of them (the queue's id pass).

A mixin of ``Ledger`` (it uses the ledger's transactions and clock), kept apart because the claims and
fenced writes in ``ledger.py`` do not depend on it: sizing a worker's share of the backlog (``shares.py``)
does. Times are the database's clock, as for leases.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from image_pipeline.domain.statuses import LOGGED
from image_pipeline.lifecycle.ledger_schema import prompts, workers

_P = prompts.c
# How long a worker waits for ``exclusive`` on PostgreSQL before its step fails (and is run again later).
EXCLUSIVE_WAIT_S = 600.0
_W = workers.c


class WorkerRegistry:
    _engine: Any
    _dialect: str
    path: Path
    _tx: Callable[[], Any]
    _read: Callable[[], Any]
    _now: Callable[[], ColumnElement[float]]
    _insert: Any

    @property
    def shared(self) -> bool:
        """Whether workers on several hosts may share this ledger (PostgreSQL), not one host's SQLite file."""
        return self._dialect == "postgresql"

    def holders(self, prompt_ids: list[str]) -> list[tuple[str, str, str, bool]]:
        """(id, fingerprint, owner, logged) of each entry of these ids that a live claim holds (its lease still
        running by the database's clock) or that is in Done already: what a worker need not reserve."""
        out: list[tuple[str, str, str, bool]] = []
        with self._read() as db:
            for chunk in _chunks(prompt_ids):
                query = sa.select(_P.prompt_id, _P.fingerprint, _P.owner, _P.done_state).where(
                    _P.prompt_id.in_(chunk),
                    sa.or_(sa.and_(_P.owner != "", _P.lease_until > self._now()), _P.done_state == LOGGED),
                )
                out.extend((str(i), str(f), str(o or ""), d == LOGGED) for i, f, o, d in db.execute(query))
        return out

    def seen_worker(self, worker: str) -> None:
        """``worker`` is at work now (its next share, or its heartbeat while a run goes on)."""
        with self._tx() as db:
            now = self._now()
            upsert = self._insert(workers).values(worker=worker, seen_at=now)
            db.execute(upsert.on_conflict_do_update(index_elements=[_W.worker], set_={"seen_at": now}))

    def workers_seen(self, within_s: float) -> set[str]:
        """The workers seen in the last ``within_s`` seconds (this one included, once it said so)."""
        with self._read() as db:
            query = sa.select(_W.worker).where(_W.seen_at > self._now() - within_s)
            return {str(w) for (w,) in db.execute(query)}

    def forget_worker(self, worker: str) -> None:
        """A worker that finished its backlog and exits: the others need not leave it a share."""
        with self._tx() as db:
            db.execute(sa.delete(workers).where(_W.worker == worker))

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """``name`` held by one worker at a time, across hosts (a PostgreSQL advisory lock, held by a
        transaction of its own and given up with it; a waiter gives up after ``EXCLUSIVE_WAIT_S``) or on the one
        host of a SQLite ledger (an exclusive lock on a file beside it, never the database's own lock,
        which every write of every worker needs)."""
        if self._dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            with self._engine.begin() as db:
                # the holder may sit out a Sheets quota wait with its retries: wait longer than for a row
                db.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(EXCLUSIVE_WAIT_S * 1000)}ms'")
                db.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
                yield
            return
        slug = hashlib.sha256(name.encode()).hexdigest()[:12]
        fd = os.open(self.path.parent / f".{self.path.name}.{slug}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor gives the lock up


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
