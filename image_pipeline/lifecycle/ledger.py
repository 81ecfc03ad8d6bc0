"""The post ledger: what happened to each prompt, written before and after every irreversible step.

One row per (prompt id, fingerprint): an edited row is a new prompt. The steps are recorded in order —
the claim, the intent to post, Telegram's message id, the intent to log, the Done row, the removal — each
as one durable write (SQLite in WAL with synchronous=FULL on one host, or PostgreSQL shared by several
workers: ``ledger_schema.py``), so a process killed at any moment leaves a record that the next run
reconciles instead of repeating:

- message id recorded: never posted again, only logged and removed;
- intent recorded but no message id: the post may or may not have reached the channel (the process died
  during the HTTP call, or Telegram's answer was lost), so it is not repeated: the prompt gets a FAILED Done
  row saying so and the operator is told. The only window in which a post can be repeated is between
  Telegram accepting it and the one write that records its message id;
- intent to log recorded: the Done sheet is checked for the row before appending again.

Claims keep two runs from working on the same prompt. A claim is stale when its lease ran out (by the
database's clock), when its Dagster run has finished, or when its process is gone on this kernel and in this
PID namespace. The writes after an irreversible step (the message id, LOGGED, REMOVED) are fenced: they
apply only while the writer still holds the claim, else ``ClaimLost``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from image_pipeline.domain.errors import ClaimLost
from image_pipeline.lifecycle.ledger_budget import BudgetRows, utc_day
from image_pipeline.lifecycle.ledger_owners import owner_token, stale_owner_check
from image_pipeline.lifecycle.ledger_pacing import ChatSlots
from image_pipeline.lifecycle.ledger_schema import (
    COLUMNS,
    daily_counts,
    db_now,
    drop_engine,
    engine_for,
    migrate,
    pauses,
    preflight_passes,
    prompts,
    removals,
    sqlite_url,
)
from image_pipeline.lifecycle.ledger_workers import WorkerRegistry
from image_pipeline.services.filesystems import network_filesystem

__all__ = ["Entry", "Ledger", "Pause", "PostLedger", "owner_token", "stale_owner_check", "utc_day"]


@dataclass
class Entry:
    prompt_id: str
    fingerprint: str
    prompt: str = ""
    attempts: int = 0
    last_error: str = ""
    post_state: str | None = None
    chat_id: str = ""
    message_id: str = ""
    link: str = ""
    method: str = ""
    image_meta: str = ""
    done_state: str | None = None
    final_status: str = ""
    queue_state: str | None = None
    owner: str = ""
    lease_until: float = 0.0
    updated_at: float = 0.0
    posted_at: float = 0.0  # when the message id was recorded: the end of the duplicate window
    preview_state: str | None = None  # PREVIEWED: sent to the alert chat, waiting for APPROVE
    preview_images: str = ""  # JSON list of {path, meta} of the previewed images: what APPROVE posts
    original_state: str | None = None  # the original as a document after the photo (lifecycle/originals.py)
    original_message_id: str = ""


@dataclass(frozen=True)
class Pause:
    """Work stopped by a service's answer: until an operator resumes (credits depleted, quota used up),
    or, when ``until`` is set, until the time the service told us to come back (a long flood wait)."""

    service: str
    reason: str
    since: float
    until: float = 0.0

    @property
    def timed(self) -> bool:
        return self.until > 0

    def message(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.since))
        if self.timed:
            back = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.until))
            return (
                f"waiting until {back} as {self.service} asked: {self.reason} Runs start again by "
                "themselves then; every prompt stays queued"
            )
        return (
            f"spending is paused since {when}: {self.reason} Resume once it is fixed: "
            "`image-pipeline resume`, or launch resume_spending_job in the Dagster UI"
        )


BACKEND_PAUSE = "backend:"  # the service name of a pause that covers one image backend of the chain


class UnsafeLedgerLocation(RuntimeError):
    """A SQLite ledger on a network filesystem: its locks and WAL do not hold there (see filesystems.py)."""


def refuse_network_filesystem(folder: Path, mountinfo: str | None = None) -> None:
    """Refuse, before the first write, to keep a SQLite ledger where SQLite cannot lock it."""
    reason = network_filesystem(folder, mountinfo)
    if reason is not None:
        raise UnsafeLedgerLocation(reason)


class Ledger(WorkerRegistry, ChatSlots):
    """The ledger's reads and writes; each write is one durable transaction, or one of a ``batch()``.

    ``url`` names a PostgreSQL ledger (``postgresql+psycopg2://...``); empty: the SQLite file at ``path``."""

    def __init__(self, path: str | Path = "", *, url: str = "", busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        if not url:
            if not path:
                raise ValueError("the ledger needs a SQLite path or a database URL")
            if sqlite3.sqlite_version_info < (3, 35):  # RETURNING
                raise RuntimeError(
                    f"the post ledger needs SQLite 3.35 or newer, not {sqlite3.sqlite_version}"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            refuse_network_filesystem(self.path.parent)
            url = sqlite_url(self.path)
        self.url = url
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        engine = self._engine
        self._dialect = engine.dialect.name
        self._insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        migrate(engine)

    @property
    def _engine(self) -> Engine:
        # looked up each time: a forked child gets its own pool, never its parent's connections
        return engine_for(self.url, self._busy_timeout_s)

    def _now(self) -> ColumnElement[float]:
        return db_now(self._dialect)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite), or the open ``batch()`` of this thread."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        # inside batch() a read must see the batch's own writes (a claim, then the entry it made)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._engine.connect() as conn:
            yield conn.execution_options(ledger_read=True)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Several writes of this thread as one transaction (one disk sync): for bookkeeping of a whole
        batch, never around an irreversible action, whose guard must be durable on its own."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._engine.begin() as conn:
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def close(self) -> None:
        """Close this process's pooled connections to the ledger (another Ledger on it reopens them)."""
        drop_engine(self.url)

    @staticmethod
    def _key(prompt_id: str, fingerprint: str) -> ColumnElement[bool]:
        return sa.and_(_P.prompt_id == prompt_id, _P.fingerprint == fingerprint)

    def get(self, prompt_id: str, fingerprint: str) -> Entry | None:
        with self._read() as db:
            row = db.execute(sa.select(prompts).where(self._key(prompt_id, fingerprint))).first()
        return Entry(**row._mapping) if row else None

    def entries_for(self, prompt_id: str) -> list[Entry]:
        query = sa.select(prompts).where(_P.prompt_id == prompt_id).order_by(_P.updated_at, _P.fingerprint)
        with self._read() as db:
            return [Entry(**row._mapping) for row in db.execute(query)]

    def ids_seen(self, prompt_ids: list[str]) -> set[str]:
        """The ids any run has worked on (claimed at least once): a prompt not among them never ran."""
        seen: set[str] = set()
        with self._read() as db:
            for chunk in _chunks(prompt_ids):
                query = sa.select(_P.prompt_id).where(_P.prompt_id.in_(chunk)).distinct()
                seen.update(str(r[0]) for r in db.execute(query))
        return seen

    def attempts(self, prompt_ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._read() as db:
            for chunk in _chunks(prompt_ids):
                query = (
                    sa.select(_P.prompt_id, sa.func.max(_P.attempts))
                    .where(_P.prompt_id.in_(chunk))
                    .group_by(_P.prompt_id)
                )
                out.update({str(pid): int(n or 0) for pid, n in db.execute(query)})
        return out

    def claim(
        self,
        prompt_id: str,
        fingerprint: str,
        *,
        owner: str,
        prompt: str,
        lease_s: float,
        is_stale: Callable[[str], bool],
    ) -> bool:
        """Take the prompt for ``owner`` unless another live owner holds it. Idempotent for the same owner.

        One conditional statement decides: the row is created, or taken when it is free, ours, or its
        lease ran out by the database's clock. Only when another owner's lease still runs is that owner
        asked about (its run finished, its process gone) and then taken by a compare-and-set on it, so of
        two workers that both judged it stale exactly one wins."""
        with self._tx() as db:
            now = self._now()
            until = now + lease_s
            ins = self._insert(prompts).values(
                prompt_id=prompt_id,
                fingerprint=fingerprint,
                prompt=prompt,
                owner=owner,
                lease_until=until,
                updated_at=now,
            )
            taken = ins.on_conflict_do_update(
                index_elements=[_P.prompt_id, _P.fingerprint],
                set_={"owner": owner, "lease_until": until, "updated_at": now},
                where=sa.or_(_P.owner == "", _P.owner == owner, _P.lease_until <= now),
            ).returning(_P.owner)
            if db.execute(taken).first() is not None:
                return True
            current = db.execute(sa.select(_P.owner).where(self._key(prompt_id, fingerprint))).scalar()
            if current is None or not is_stale(str(current)):
                return False
            swap = (
                sa.update(prompts)
                .where(self._key(prompt_id, fingerprint), _P.owner == current)
                .values(owner=owner, lease_until=until, updated_at=now)
                .returning(_P.owner)
            )
            return db.execute(swap).first() is not None

    def release(self, prompt_id: str, fingerprint: str, owner: str) -> None:
        with self._tx() as db:
            db.execute(
                sa.update(prompts)
                .where(self._key(prompt_id, fingerprint), _P.owner == owner)
                .values(owner="", lease_until=0)
            )

    def update(self, prompt_id: str, fingerprint: str, *, owner: str | None = None, **fields: Any) -> None:
        """One durable write of some fields.

        With ``owner`` (fencing, for the writes after an irreversible step) it applies only while that
        owner holds the claim, in the same statement; otherwise ``ClaimLost`` and nothing is written.
        Without it the row is created when missing (a record of something found, not a claim)."""
        unknown = set(fields) - _SETTABLE
        if unknown:
            raise ValueError(f"unknown ledger fields: {sorted(unknown)}")
        with self._tx() as db:
            values = {**fields, "updated_at": self._now()}
            if owner is not None:
                fenced = (
                    sa.update(prompts)
                    .where(self._key(prompt_id, fingerprint), _P.owner == owner)
                    .values(**values)
                    .returning(_P.owner)
                )
                if db.execute(fenced).first() is None:
                    holder = db.execute(sa.select(_P.owner).where(self._key(prompt_id, fingerprint))).scalar()
                    raise ClaimLost(_lost(prompt_id, owner, holder, fields))
                return
            ins = self._insert(prompts).values(prompt_id=prompt_id, fingerprint=fingerprint, **values)
            db.execute(ins.on_conflict_do_update(index_elements=[_P.prompt_id, _P.fingerprint], set_=values))

    # ------------------------------------------------------------------ the budget guard
    def pause(self, service: str, reason: str, until: float = 0.0) -> bool:
        """Stop spending (until ``until``, or until resumed when 0); True only for the call that paused
        it, so exactly one notice goes out. A later, longer wait of the same service extends it.

        Each step is one conditional statement on the service's row, so of workers pausing at once one
        inserts it and the others find it (the insert waits for the first one's commit)."""
        reason = reason[:500]
        with self._tx() as db:
            now = self._now()
            db.execute(sa.delete(pauses).where(_Q.until > 0, _Q.until <= now))
            first = (
                self._insert(pauses)
                .values(service=service, reason=reason, since=now, until=until)
                .on_conflict_do_nothing(index_elements=[_Q.service])
                .returning(_Q.service)
            )
            if db.execute(first).first() is not None:
                return True
            if until == 0:
                # credits gone while the same service's timed wait runs: the wait must not end the pause
                untimed = (
                    sa.update(pauses)
                    .where(_Q.service == service, _Q.until > 0)
                    .values(until=0, reason=reason, since=now)
                    .returning(_Q.service)
                )
                return db.execute(untimed).first() is not None
            db.execute(
                sa.update(pauses)
                .where(_Q.service == service, _Q.until > 0, _Q.until < until)
                .values(until=until, reason=reason)
            )
            return False

    def pause_state(self) -> Pause | None:
        """The pause in force: an untimed one first (it needs a person), else the wait that ends last.
        A pause of one image backend (``backend:NAME``) or of the refill (``text``) is not the pipeline's."""
        query = (
            sa.select(_Q.service, _Q.reason, _Q.since, _Q.until)
            .where(sa.or_(_Q.until == 0, _Q.until > self._now()))
            .where(sa.not_(_Q.service.startswith(BACKEND_PAUSE)), _Q.service != "text")
            .order_by(sa.case((_Q.until == 0, 1), else_=0).desc(), _Q.until.desc())
            .limit(1)
        )
        with self._read() as db:
            row = db.execute(query).first()
        return Pause(str(row[0]), str(row[1]), float(row[2]), float(row[3])) if row else None

    def pause_of(self, service: str) -> Pause | None:
        """The pause of exactly ``service`` while it is in force (the refill's ``text``, a backend's)."""
        query = sa.select(_Q.service, _Q.reason, _Q.since, _Q.until).where(
            _Q.service == service, sa.or_(_Q.until == 0, _Q.until > self._now())
        )
        with self._read() as db:
            row = db.execute(query).first()
        return Pause(str(row[0]), str(row[1]), float(row[2]), float(row[3])) if row else None

    def backend_pauses(self) -> dict[str, Pause]:
        """The image backends paused now (credits or a quota of one backend of the chain), by name."""
        query = (
            sa.select(_Q.service, _Q.reason, _Q.since, _Q.until)
            .where(sa.or_(_Q.until == 0, _Q.until > self._now()))
            .where(_Q.service.startswith(BACKEND_PAUSE))
        )
        with self._read() as db:
            rows = db.execute(query).all()
        return {
            str(s)[len(BACKEND_PAUSE) :]: Pause(str(s), str(r), float(a), float(u)) for s, r, a, u in rows
        }

    def resume(self) -> list[Pause]:
        """Lift every pause; returns what was lifted (one statement: a pause made meanwhile is in it or stays)."""
        with self._tx() as db:
            rows = db.execute(sa.delete(pauses).returning(_Q.service, _Q.reason, _Q.since, _Q.until)).all()
        return sorted(
            (Pause(str(s), str(r), float(a), float(u)) for s, r, a, u in rows), key=lambda p: p.since
        )

    # ------------------------------------------------------------------ the run gate's memory
    def preflight_passed_at(self, key: str) -> float | None:
        with self._read() as db:
            row = db.execute(
                sa.select(preflight_passes.c.passed_at).where(preflight_passes.c.config == key)
            ).first()
        return float(row[0]) if row else None

    def record_preflight(self, key: str, passed: bool) -> None:
        with self._tx() as db:
            if passed:
                now = self._now()
                ins = self._insert(preflight_passes).values(config=key, passed_at=now)
                db.execute(ins.on_conflict_do_update(index_elements=["config"], set_={"passed_at": now}))
            else:
                db.execute(sa.delete(preflight_passes).where(preflight_passes.c.config == key))

    def reserve(self, kind: str, cap: int | None, day: str | None = None) -> bool:
        """Count one more ``kind`` (images, posts) for today unless that would pass ``cap``.

        Reserved before the request, in one conditional statement (the count goes up only while under
        the cap), so concurrent runs, threads and workers never go past the cap together; ``unreserve``
        gives the unit back when nothing was spent after all."""
        ins = self._insert(daily_counts).values(day=day or utc_day(), kind=kind, n=1)
        under = _D.n < cap if cap is not None and cap > 0 else None
        counted = ins.on_conflict_do_update(
            index_elements=[_D.day, _D.kind], set_={"n": _D.n + 1}, where=under
        ).returning(_D.n)
        with self._tx() as db:
            return db.execute(counted).first() is not None

    def unreserve(self, kind: str, day: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                sa.update(daily_counts)
                .where(_D.day == (day or utc_day()), _D.kind == kind, _D.n > 0)
                .values(n=_D.n - 1)
            )

    def used_today(self, kind: str, day: str | None = None) -> int:
        with self._read() as db:
            n = db.execute(sa.select(_D.n).where(_D.day == (day or utc_day()), _D.kind == kind)).scalar()
        return int(n or 0)

    # ------------------------------------------------------------------ deletes that copy what they remove
    def begin_removal(self, nonce: str, owner: str, body: str) -> None:
        """A delete of queue rows is about to be sent; its copy in the sheet is found by ``nonce``.
        Durable before the request leaves, so a process killed before it read the copy back leaves
        the next run what it needs to put back rows that were not ours."""
        with self._tx() as db:
            now = self._now()
            ins = self._insert(removals).values(nonce=nonce, owner=owner, created=now, body=body)
            db.execute(
                ins.on_conflict_do_update(
                    index_elements=[_R.nonce], set_={"owner": owner, "created": now, "body": body}
                )
            )

    def open_removals(self) -> list[tuple[str, str, float, str]]:
        """Deletes whose copy was never checked: (nonce, owner, created, body), oldest first."""
        with self._read() as db:
            rows = db.execute(sa.select(_R.nonce, _R.owner, _R.created, _R.body).order_by(_R.created)).all()
        return [(str(n), str(o), float(c), str(b)) for n, o, c, b in rows]

    def take_removal(self, nonce: str, owner: str, is_stale: Callable[[str, float], bool]) -> bool:
        """Hand an unfinished removal to ``owner`` when its owner is gone; True when taken (one taker:
        a compare-and-set on the owner that was judged gone)."""
        with self._tx() as db:
            row = db.execute(sa.select(_R.owner, _R.created).where(_R.nonce == nonce)).first()
            if row is None:
                return False
            current = str(row[0])
            if current != owner and not is_stale(current, float(row[1])):
                return False
            swap = (
                sa.update(removals)
                .where(_R.nonce == nonce, _R.owner == current)
                .values(owner=owner)
                .returning(_R.nonce)
            )
            return db.execute(swap).first() is not None

    def end_removal(self, nonce: str) -> None:
        with self._tx() as db:
            db.execute(sa.delete(removals).where(_R.nonce == nonce))

    def add_attempt(self, prompt_id: str, fingerprint: str, error: str) -> int:
        with self._tx() as db:
            n = db.execute(
                sa.update(prompts)
                .where(self._key(prompt_id, fingerprint))
                .values(attempts=_P.attempts + 1, last_error=error[:500], updated_at=self._now())
                .returning(_P.attempts)
            ).scalar()
        return int(n or 0)


_P, _Q, _D, _R = prompts.c, pauses.c, daily_counts.c, removals.c
# the claim's own columns are written by claim() and release() only
_SETTABLE = set(COLUMNS) - {"prompt_id", "fingerprint", "owner", "lease_until"}


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    # well under SQLite's and PostgreSQL's limits on bound parameters
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _lost(prompt_id: str, owner: str, holder: str | None, fields: dict[str, Any]) -> str:
    """What a worker that lost its claim could not record: the ids are kept in the message (and the run's
    log), so a person can still see, e.g., which message went out."""
    kept = {
        k: fields[k]
        for k in ("post_state", "message_id", "chat_id", "done_state", "queue_state")
        if k in fields
    }
    who = (
        f"held by {holder}" if holder else "no longer held by anyone" if holder == "" else "not in the ledger"
    )
    return f"{prompt_id}: this worker ({owner}) lost its claim (now {who}); not recorded: {kept}"


class PostLedger(BudgetRows, dg.ConfigurableResource):
    """Durable record of each prompt's progress (SQLite on one host, PostgreSQL across workers), so nothing
    is posted twice or lost."""

    path: str = Field(description="SQLite file of the ledger (the embedded default, one host only).")
    url: str = Field(
        default="",
        description=(
            "Database URL of a ledger shared by workers on several hosts, e.g. "
            "postgresql+psycopg2://user:password@host/db (its own tables only; empty: the SQLite file)."
        ),
    )
    lease_s: float = Field(default=900.0, description="How long a claim holds without being renewed.")
    max_attempts: int = Field(
        default=3,
        description="Runs in which a prompt may fail transiently before it is quarantined as FAILED.",
    )

    daily_image_cap: int = Field(
        default=0,
        description="Images generated per UTC day, across runs (0: no cap). Prompts over it stay queued.",
    )
    daily_post_cap: int = Field(
        default=0,
        description="Posts per UTC day, across runs (0: no cap). Prompts over it stay queued.",
    )

    def open(self) -> Ledger:
        url = self.url
        if isinstance(url, dg.EnvVar):  # a resource used unbuilt (image-pipeline resume): read it now
            url = url.get_value() or ""
        return Ledger(self.path, url=url)

    preflight_service: ClassVar[str] = "Budget"  # the service name when the check itself breaks
