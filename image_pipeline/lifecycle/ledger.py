"""The post ledger: what happened to each prompt, written before and after every irreversible step.

One row per (prompt id, fingerprint): an edited row is a new prompt. The steps are recorded in order —
the claim, the intent to post, Telegram's message id, the intent to log, the Done row, the removal — each
as one durable SQLite write (WAL, synchronous=FULL), so a process killed at any moment leaves a record
that the next run reconciles instead of repeating:

- message id recorded: never posted again, only logged and removed;
- intent recorded but no message id: the post may or may not have reached the channel (the process died
  during the HTTP call, or Telegram's answer was lost), so it is not repeated: the prompt gets a FAILED Done
  row saying so and the operator is told. The only window in which a post can be repeated is between
  Telegram accepting it and the one write that records its message id;
- intent to log recorded: the Done sheet is checked for the row before appending again.

Claims keep two runs from working on the same prompt. A claim is stale when its lease ran out, when its
process is gone (same host), or when its Dagster run has finished.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field

from image_pipeline.domain.checks import Check, fail, ok, warn
from image_pipeline.services.hosts import process_alive

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id     TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    prompt        TEXT NOT NULL DEFAULT '',
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT NOT NULL DEFAULT '',
    post_state    TEXT,
    chat_id       TEXT NOT NULL DEFAULT '',
    message_id    TEXT NOT NULL DEFAULT '',
    link          TEXT NOT NULL DEFAULT '',
    method        TEXT NOT NULL DEFAULT '',
    image_meta    TEXT NOT NULL DEFAULT '',
    done_state    TEXT,
    final_status  TEXT NOT NULL DEFAULT '',
    queue_state   TEXT,
    owner         TEXT NOT NULL DEFAULT '',
    lease_until   REAL NOT NULL DEFAULT 0,
    updated_at    REAL NOT NULL DEFAULT 0,
    posted_at     REAL NOT NULL DEFAULT 0,
    preview_state TEXT,
    preview_images TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (prompt_id, fingerprint)
);
CREATE TABLE IF NOT EXISTS pauses (
    service       TEXT PRIMARY KEY,
    reason        TEXT NOT NULL,
    since         REAL NOT NULL,
    until         REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS preflight_passes (
    config        TEXT PRIMARY KEY,
    passed_at     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS removals (
    nonce         TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    created       REAL NOT NULL,
    body          TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS daily_counts (
    day           TEXT NOT NULL,
    kind          TEXT NOT NULL,
    n             INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, kind)
);
"""

_COLUMNS = [
    "prompt_id",
    "fingerprint",
    "prompt",
    "attempts",
    "last_error",
    "post_state",
    "chat_id",
    "message_id",
    "link",
    "method",
    "image_meta",
    "done_state",
    "final_status",
    "queue_state",
    "owner",
    "lease_until",
    "updated_at",
    "posted_at",
    "preview_state",
    "preview_images",
]


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


def utc_day(now: float | None = None) -> str:
    """The day daily caps are counted in: the UTC date, the same on every machine."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def owner_token(run_id: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


class Ledger:
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(prompts)")}
            # ledgers from before a column existed
            for column, ddl in (
                ("posted_at", "REAL NOT NULL DEFAULT 0"),
                ("preview_state", "TEXT"),
                ("preview_images", "TEXT NOT NULL DEFAULT ''"),
            ):
                if column not in have:
                    db.execute(f"ALTER TABLE prompts ADD COLUMN {column} {ddl}")
            if "until" not in {row[1] for row in db.execute("PRAGMA table_info(pauses)")}:
                db.execute("ALTER TABLE pauses ADD COLUMN until REAL NOT NULL DEFAULT 0")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per thread, kept open: opening SQLite and setting it up costs more than the
        # writes themselves, and a batch makes hundreds of them.
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or getattr(local, "db", None) is None:
            db = sqlite3.connect(
                self.path, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=True
            )
            db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a recorded message id survives a power cut, not only a killed process
            db.execute("PRAGMA synchronous=FULL")
            local.db, local.pid, local.depth = db, os.getpid(), 0
        yield local.db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            local = self._local
            if local.depth > 0:  # inside batch(): one commit at its end
                local.depth += 1
                try:
                    yield db
                finally:
                    local.depth -= 1
                return
            db.execute("BEGIN IMMEDIATE")
            local.depth = 1
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                local.depth = 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Several writes of this thread as one transaction (one disk sync): for bookkeeping of a whole
        batch, never around an irreversible action, whose guard must be durable on its own."""
        with self._tx():
            yield

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @staticmethod
    def _entry(row: tuple[Any, ...] | None) -> Entry | None:
        return Entry(**dict(zip(_COLUMNS, row, strict=True))) if row else None

    def get(self, prompt_id: str, fingerprint: str) -> Entry | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM prompts WHERE prompt_id=? AND fingerprint=?",
                (prompt_id, fingerprint),
            ).fetchone()
        return self._entry(row)

    def entries_for(self, prompt_id: str) -> list[Entry]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM prompts WHERE prompt_id=? ORDER BY updated_at",
                (prompt_id,),
            ).fetchall()
        return [e for e in (self._entry(r) for r in rows) if e is not None]

    def ids_seen(self, prompt_ids: list[str]) -> set[str]:
        """The ids any run has worked on (claimed at least once): a prompt not among them never ran."""
        seen: set[str] = set()
        with self._connect() as db:
            for start in range(0, len(prompt_ids), 500):  # SQLite's limit on bound parameters
                chunk = prompt_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT DISTINCT prompt_id FROM prompts WHERE prompt_id IN ({marks})", chunk
                ).fetchall()
                seen.update(r[0] for r in rows)
        return seen

    def attempts(self, prompt_ids: list[str]) -> dict[str, int]:
        if not prompt_ids:
            return {}
        with self._connect() as db:
            marks = ",".join("?" * len(prompt_ids))
            rows = db.execute(
                f"SELECT prompt_id, MAX(attempts) FROM prompts WHERE prompt_id IN ({marks}) GROUP BY prompt_id",
                prompt_ids,
            ).fetchall()
        return {pid: int(n or 0) for pid, n in rows}

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
        """Take the prompt for ``owner`` unless another live owner holds it. Idempotent for the same owner."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT owner, lease_until FROM prompts WHERE prompt_id=? AND fingerprint=?",
                (prompt_id, fingerprint),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO prompts (prompt_id, fingerprint, prompt, owner, lease_until, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (prompt_id, fingerprint, prompt, owner, now + lease_s, now),
                )
                return True
            current, lease_until = row
            if current and current != owner and lease_until > now and not is_stale(current):
                return False
            db.execute(
                "UPDATE prompts SET owner=?, lease_until=?, updated_at=? WHERE prompt_id=? AND fingerprint=?",
                (owner, now + lease_s, now, prompt_id, fingerprint),
            )
            return True

    def release(self, prompt_id: str, fingerprint: str, owner: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE prompts SET owner='', lease_until=0 WHERE prompt_id=? AND fingerprint=? AND owner=?",
                (prompt_id, fingerprint, owner),
            )

    def update(self, prompt_id: str, fingerprint: str, **fields: Any) -> None:
        """One durable write of some fields (the row must exist: it is created by ``claim``)."""
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown ledger fields: {sorted(unknown)}")
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE prompts SET {assignments} WHERE prompt_id=? AND fingerprint=?",
                (*fields.values(), prompt_id, fingerprint),
            )
            if cur.rowcount == 0:
                db.execute(
                    "INSERT INTO prompts (prompt_id, fingerprint, updated_at) VALUES (?, ?, ?)",
                    (prompt_id, fingerprint, fields["updated_at"]),
                )
                db.execute(
                    f"UPDATE prompts SET {assignments} WHERE prompt_id=? AND fingerprint=?",
                    (*fields.values(), prompt_id, fingerprint),
                )

    # ------------------------------------------------------------------ the budget guard
    def pause(self, service: str, reason: str, until: float = 0.0) -> bool:
        """Stop spending (until ``until``, or until resumed when 0); True only for the call that paused
        it, so exactly one notice goes out. A later, longer wait of the same service extends it."""
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM pauses WHERE until > 0 AND until <= ?", (now,))
            cur = db.execute(
                "INSERT OR IGNORE INTO pauses (service, reason, since, until) VALUES (?, ?, ?, ?)",
                (service, reason[:500], now, until),
            )
            if cur.rowcount == 1:
                return True
            if until == 0:
                # credits gone while the same service's timed wait runs: the wait must not end the pause
                cur = db.execute(
                    "UPDATE pauses SET until=0, reason=?, since=? WHERE service=? AND until > 0",
                    (reason[:500], now, service),
                )
                return cur.rowcount == 1
            if until > 0:
                db.execute(
                    "UPDATE pauses SET until=?, reason=? WHERE service=? AND until > 0 AND until < ?",
                    (until, reason[:500], service, until),
                )
            return False

    def pause_state(self) -> Pause | None:
        """The pause in force: an untimed one first (it needs a person), else the wait that ends last."""
        with self._connect() as db:
            row = db.execute(
                "SELECT service, reason, since, until FROM pauses WHERE until = 0 OR until > ? "
                "ORDER BY until = 0 DESC, until DESC LIMIT 1",
                (time.time(),),
            ).fetchone()
        return Pause(*row) if row else None

    def resume(self) -> list[Pause]:
        """Lift every pause; returns what was lifted."""
        with self._tx() as db:
            rows = db.execute("SELECT service, reason, since, until FROM pauses ORDER BY since").fetchall()
            db.execute("DELETE FROM pauses")
        return [Pause(*r) for r in rows]

    # ------------------------------------------------------------------ the run gate's memory
    def preflight_passed_at(self, key: str) -> float | None:
        with self._connect() as db:
            row = db.execute("SELECT passed_at FROM preflight_passes WHERE config=?", (key,)).fetchone()
        return float(row[0]) if row else None

    def record_preflight(self, key: str, passed: bool) -> None:
        with self._tx() as db:
            if passed:
                db.execute(
                    "INSERT INTO preflight_passes (config, passed_at) VALUES (?, ?) "
                    "ON CONFLICT(config) DO UPDATE SET passed_at = excluded.passed_at",
                    (key, time.time()),
                )
            else:
                db.execute("DELETE FROM preflight_passes WHERE config=?", (key,))

    def reserve(self, kind: str, cap: int | None, day: str | None = None) -> bool:
        """Count one more ``kind`` (images, posts) for today unless that would pass ``cap``.

        Reserved before the request, in one transaction, so concurrent runs and threads never go past
        the cap together; ``unreserve`` gives the unit back when nothing was spent after all."""
        day = day or utc_day()
        with self._tx() as db:
            row = db.execute("SELECT n FROM daily_counts WHERE day=? AND kind=?", (day, kind)).fetchone()
            used = int(row[0]) if row else 0
            if cap is not None and cap > 0 and used >= cap:
                return False
            db.execute(
                "INSERT INTO daily_counts (day, kind, n) VALUES (?, ?, 1) "
                "ON CONFLICT(day, kind) DO UPDATE SET n = n + 1",
                (day, kind),
            )
            return True

    def unreserve(self, kind: str, day: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE daily_counts SET n = MAX(0, n - 1) WHERE day=? AND kind=?", (day or utc_day(), kind)
            )

    def used_today(self, kind: str, day: str | None = None) -> int:
        with self._connect() as db:
            row = db.execute(
                "SELECT n FROM daily_counts WHERE day=? AND kind=?", (day or utc_day(), kind)
            ).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ deletes that copy what they remove
    def begin_removal(self, nonce: str, owner: str, body: str) -> None:
        """A delete of queue rows is about to be sent; its copy in the sheet is found by ``nonce``.
        Durable before the request leaves, so a process killed before it read the copy back leaves
        the next run what it needs to put back rows that were not ours."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO removals (nonce, owner, created, body) VALUES (?, ?, ?, ?)",
                (nonce, owner, time.time(), body),
            )

    def open_removals(self) -> list[tuple[str, str, float, str]]:
        """Deletes whose copy was never checked: (nonce, owner, created, body), oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT nonce, owner, created, body FROM removals ORDER BY created").fetchall()
        return [(str(n), str(o), float(c), str(b)) for n, o, c, b in rows]

    def take_removal(self, nonce: str, owner: str, is_stale: Callable[[str, float], bool]) -> bool:
        """Hand an unfinished removal to ``owner`` when its owner is gone; True when taken (one taker)."""
        with self._tx() as db:
            row = db.execute("SELECT owner, created FROM removals WHERE nonce=?", (nonce,)).fetchone()
            if row is None or (row[0] != owner and not is_stale(str(row[0]), float(row[1]))):
                return False
            db.execute("UPDATE removals SET owner=? WHERE nonce=?", (owner, nonce))
            return True

    def end_removal(self, nonce: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM removals WHERE nonce=?", (nonce,))

    def add_attempt(self, prompt_id: str, fingerprint: str, error: str) -> int:
        with self._tx() as db:
            db.execute(
                "UPDATE prompts SET attempts=attempts+1, last_error=?, updated_at=? WHERE prompt_id=? AND fingerprint=?",
                (error[:500], time.time(), prompt_id, fingerprint),
            )
            row = db.execute(
                "SELECT attempts FROM prompts WHERE prompt_id=? AND fingerprint=?", (prompt_id, fingerprint)
            ).fetchone()
        return int(row[0]) if row else 0


def stale_owner_check(instance: dg.DagsterInstance | None) -> Callable[[str], bool]:
    """A claim's owner is stale when its process is gone (same host) or its run has finished."""
    host = socket.gethostname()

    def is_stale(owner: str) -> bool:
        try:
            owner_host, pid_text, run_id = owner.split(":", 2)
            pid = int(pid_text)
        except ValueError:
            return True
        if owner_host == host and not process_alive(pid):
            return True
        if instance is not None and run_id:
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                return True
        return False

    return is_stale


class PostLedger(dg.ConfigurableResource):
    """Durable record of each prompt's progress (SQLite), so nothing is posted twice or lost."""

    path: str = Field(description="SQLite file of the ledger.")
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
        return Ledger(self.path)

    preflight_service: ClassVar[str] = "Budget"  # the service name when the check itself breaks

    def preflight(self) -> list[Check]:
        """The budget guard's state, for doctor and the preflight job: paused fails, a cap reached warns."""
        book = self.open()
        pause = book.pause_state()
        if pause is not None and pause.timed:
            return [
                fail("Budget", "spending", pause.message(), "nothing to do: runs start again by themselves")
            ]
        if pause is not None:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(pause.since))
            return [
                fail(
                    "Budget",
                    "spending",
                    f"paused since {when}: {pause.reason}",
                    "add credits, then `image-pipeline resume` (or launch resume_spending_job)",
                )
            ]
        checks = [ok("Budget", "spending", "not paused")]
        for kind, cap in (("images", self.daily_image_cap), ("posts", self.daily_post_cap)):
            if cap > 0:
                used = book.used_today(kind)
                detail = f"{used} of {cap} {kind} today ({utc_day()} UTC)"
                checks.append(
                    warn("Budget", f"daily {kind} cap", detail, "the rest waits for the next UTC day")
                    if used >= cap
                    else ok("Budget", f"daily {kind} cap", detail)
                )
        return checks

    def why_not_spend(self) -> str | None:
        """Why the schedule and sensor must not start work now (a pause, a daily cap), or None."""
        book = self.open()
        pause = book.pause_state()
        if pause is not None:
            return pause.message()
        for kind, cap in (("images", self.daily_image_cap), ("posts", self.daily_post_cap)):
            if cap > 0 and book.used_today(kind) >= cap:
                return (
                    f"the daily cap of {cap} {kind} is reached ({utc_day()} UTC); "
                    "queued prompts go out after midnight UTC"
                )
        return None
