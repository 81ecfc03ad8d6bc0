"""The post ledger's tables, its versioned migrations, and the engine that reaches it (SQLite or PostgreSQL).

One schema for both databases, written with SQLAlchemy Core. Its own tables only (never Dagster's, even on
the same server): ``prompts``, ``pauses``, ``preflight_passes``, ``removals``, ``daily_counts``, ``workers``,
``chat_slots``, ``sheet_actions``, ``reaction_counts``, ``digests`` and ``ledger_schema``, which records each migration step applied. A SQLite ledger from before
versioning has no ``ledger_schema`` table; step 1 brings it to the baseline in place (the columns it lacks are
added).

Times are seconds since the epoch (floats), as they always were in the SQLite file, so older tools that read
the file keep working. ``db_now`` is the database's clock: ``now()`` on PostgreSQL, so workers on several
hosts compare leases against one clock; on SQLite the ledger lives on one host, whose clock is that clock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

metadata = sa.MetaData()


def _text(name: str, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.Text, nullable=False, server_default="", **kw)


def _time(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Float, nullable=False, server_default="0")


prompts = sa.Table(
    "prompts",
    metadata,
    sa.Column("prompt_id", sa.Text, primary_key=True),
    sa.Column("fingerprint", sa.Text, primary_key=True),
    _text("prompt"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    _text("last_error"),
    sa.Column("post_state", sa.Text),
    _text("chat_id"),
    _text("message_id"),
    _text("link"),
    _text("method"),
    _text("image_meta"),
    sa.Column("done_state", sa.Text),
    _text("final_status"),
    sa.Column("queue_state", sa.Text),
    _text("owner"),
    _time("lease_until"),
    _time("updated_at"),
    _time("posted_at"),
    sa.Column("preview_state", sa.Text),
    _text("preview_images"),
    # the original PNG sent as a document after the photo: PENDING, SENDING, SENT or UNCERTAIN
    sa.Column("original_state", sa.Text),
    _text("original_message_id"),
)

pauses = sa.Table(
    "pauses",
    metadata,
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("since", sa.Float, nullable=False),
    _time("until"),
)

preflight_passes = sa.Table(
    "preflight_passes",
    metadata,
    sa.Column("config", sa.Text, primary_key=True),
    sa.Column("passed_at", sa.Float, nullable=False),
)

removals = sa.Table(
    "removals",
    metadata,
    sa.Column("nonce", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)

daily_counts = sa.Table(
    "daily_counts",
    metadata,
    sa.Column("day", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False, server_default="0"),
)

# The workers sharing this ledger, each seen at its last share or heartbeat (migration step 2): how a worker
# sizes its share of the backlog (``shares.py``). Nothing depends on a row being there.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker", sa.Text, primary_key=True),
    sa.Column("seen_at", sa.Float, nullable=False),
)

# Per chat, the earliest moment (database clock) the next post may start (migration step 3): Telegram's pace
# shared by the workers of a shared ledger (``ledger_pacing.py``). A lost row costs one early post at most.
chat_slots = sa.Table(
    "chat_slots",
    metadata,
    sa.Column("chat_id", sa.Text, primary_key=True),
    sa.Column("next_at", sa.Float, nullable=False),
)

# EDIT / DELETE typed in Done, one row per request (migration step 5; ``ledger_edits.py``): ``sent_ids``
# are the messages whose call was made or may have been (the intent, before each call), ``done_ids`` those
# Telegram confirmed, ``outcome`` what the Done row gets, set once; ``written`` once the row shows it.
sheet_actions = sa.Table(
    "sheet_actions",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    _text("prompt_id"),
    _text("action"),
    _text("chat_id"),
    _text("message_ids"),
    _text("sent_ids"),
    _text("done_ids"),
    _text("outcome"),
    sa.Column("written", sa.Integer, nullable=False, server_default="0"),
    _time("updated_at"),
)

# Reaction counts, the latest per channel message (migration step 6; ``ledger_reactions.py``): ``date`` is the
# update's, so a late older update never replaces a newer one; ``post_id`` the post's first message (an
# album's messages add up); ``written`` once its Done row shows the post's counts.
reaction_counts = sa.Table(
    "reaction_counts",
    metadata,
    sa.Column("chat_id", sa.Text, primary_key=True),
    sa.Column("message_id", sa.Text, primary_key=True),
    _text("post_id"),
    _text("prompt_id"),
    _text("counts"),
    sa.Column("total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("date", sa.Integer, nullable=False, server_default="0"),
    _time("posted_at"),
    _text("link"),
    _text("prompt"),
    sa.Column("written", sa.Integer, nullable=False, server_default="0"),
    _time("updated_at"),
)

# One row per digest week (step 6): the intent before the notice is sent, its outcome after.
digests = sa.Table(
    "digests",
    metadata,
    sa.Column("week", sa.Text, primary_key=True),
    _text("state"),
    _text("text"),
    _time("updated_at"),
)


def _reactions(db: Connection) -> None:
    reaction_counts.create(db, checkfirst=True)
    digests.create(db, checkfirst=True)


# The preview cards sent with buttons, one row per card (migration step 7; ``ledger_cards.py``): which prompt
# text it shows, and the press that decided it (``outcome``, set once, before the card and the row change).
preview_cards = sa.Table(
    "preview_cards",
    metadata,
    sa.Column("chat_id", sa.Text, primary_key=True),
    sa.Column("message_id", sa.Text, primary_key=True),
    _text("prompt_id"),
    _text("fingerprint"),
    _text("outcome"),
    _time("created_at"),
    _time("updated_at"),
)

# Kept out of ``metadata``: it is created before any step runs, and a step never drops or changes it.
ledger_schema = sa.Table(
    "ledger_schema",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

COLUMNS = [c.name for c in prompts.columns]


# ---------------------------------------------------------------------------------------------- migrations
def _baseline(db: Connection) -> None:
    """The five tables; a ledger from before versioning gets the columns added since it was made."""
    baseline = [prompts, pauses, preflight_passes, removals, daily_counts]  # later steps add theirs
    metadata.create_all(db, tables=baseline, checkfirst=True)
    inspector = sa.inspect(db)
    for table in (prompts, pauses):
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                ddl = column.type.compile(dialect=db.dialect)
                nullable = "" if column.nullable else " NOT NULL"
                default = (
                    f" DEFAULT {column.server_default.arg!r}" if column.server_default is not None else ""
                )
                # (quoted: ``until`` is a keyword on some databases)
                name = db.dialect.identifier_preparer.quote(column.name)
                db.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {ddl}{nullable}{default}")


def _workers(db: Connection) -> None:
    workers.create(db, checkfirst=True)


def _chat_slots(db: Connection) -> None:
    chat_slots.create(db, checkfirst=True)


def _originals(db: Connection) -> None:
    # the baseline's step adds every column a ledger lacks: here original_state and original_message_id
    _baseline(db)


# In order; a step never changes once released: a change of the schema is a new step at the end.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "baseline", _baseline),
    (2, "workers", _workers),
    (3, "chat_slots", _chat_slots),
    (4, "originals", _originals),
    (5, "sheet_actions", lambda db: sheet_actions.create(db, checkfirst=True)),
    (6, "reactions", _reactions),
    (7, "preview_cards", lambda db: preview_cards.create(db, checkfirst=True)),
]

# Any constant: serialises first-time migration of a PostgreSQL ledger by several workers at once.
_PG_MIGRATION_LOCK = 0x1ED6E5


class SchemaTooNew(RuntimeError):
    """The ledger was migrated by a newer release: this one does not know its tables."""


def migrate(engine: Engine) -> int:
    """Apply the steps the ledger has not had yet, in one transaction; returns the version it is at."""
    latest = MIGRATIONS[-1][0]
    # the usual case, every time a ledger is opened: up to date, found without taking SQLite's write lock
    try:
        with engine.connect() as db:
            db.execution_options(ledger_read=True)
            if db.execute(sa.select(sa.func.max(ledger_schema.c.version))).scalar() == latest:
                return latest
    except sa.exc.DBAPIError:
        pass  # no version table yet: a new ledger, or one from before versioning
    with engine.begin() as db:
        if db.dialect.name == "postgresql":
            # two workers starting on a fresh database would both create the tables
            db.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
        ledger_schema.create(db, checkfirst=True)
        current = db.execute(sa.select(sa.func.max(ledger_schema.c.version))).scalar() or 0
        if current > latest:
            raise SchemaTooNew(
                f"the post ledger is at schema version {current}, this release knows up to {latest}: "
                "upgrade image-pipeline on this worker"
            )
        for version, name, step in MIGRATIONS:
            if version > current:
                step(db)
                db.execute(ledger_schema.insert().values(version=version, name=name, applied_at=time.time()))
        return max(current, latest)


# ---------------------------------------------------------------------------------------------- engines
def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path)}"


def _sqlite_engine(url: str, busy_timeout_s: float) -> Engine:
    engine = sa.create_engine(
        url,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        # a connection per thread at work, kept: opening SQLite and setting it up costs more than the
        # writes themselves, and a batch makes hundreds of them
        pool_size=8,
        max_overflow=-1,
    )
    busy_ms = int(busy_timeout_s * 1000)

    @sa.event.listens_for(engine, "connect")
    def _setup(dbapi_conn: Any, _record: Any) -> None:
        # the driver's own transaction handling off: each transaction below starts with BEGIN IMMEDIATE
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a recorded message id survives a power cut, not only a killed process
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # IMMEDIATE: the write lock from the first statement on, so a read-then-write (a claim, a reserve)
        # cannot be overtaken by another process between the two; reads take no lock at all
        if not conn.get_execution_options().get("ledger_read"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgres_engine(url: str, busy_timeout_s: float) -> Engine:
    return sa.create_engine(
        url,
        pool_pre_ping=True,  # a worker outlives a server restart or a dropped idle connection
        pool_size=4,
        max_overflow=8,
        connect_args={
            "connect_timeout": max(1, int(busy_timeout_s)),
            # a row lock held by a stuck worker fails this statement instead of hanging the run forever
            "options": f"-c lock_timeout={int(busy_timeout_s * 1000)}",
        },
    )


_ENGINES: dict[tuple[str, int], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(url: str, busy_timeout_s: float) -> Engine:
    """One engine (and pool) per ledger URL and process: a forked child never shares its parent's sockets."""
    key = (url, os.getpid())
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            make = _sqlite_engine if url.startswith("sqlite") else _postgres_engine
            engine = _ENGINES[key] = make(url, busy_timeout_s)
        return engine


def drop_engine(url: str) -> None:
    """Close this process's pooled connections to ``url`` (tests, tools that open a ledger once)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop((url, os.getpid()), None)
    if engine is not None:
        engine.dispose()


def db_now(dialect: str) -> ColumnElement[float]:
    """The database's clock in epoch seconds, for a lease computed or compared in the statement itself."""
    if dialect == "postgresql":
        return sa.cast(sa.extract("epoch", sa.func.now()), sa.Float)
    # one host: its clock is the database's (bound per statement, full precision, as before)
    return sa.literal(time.time(), sa.Float)
