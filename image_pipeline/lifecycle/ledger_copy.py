"""Moving a SQLite post ledger into PostgreSQL (``image-pipeline ledger migrate``), row for row, all or nothing.

The copy is the moment a deployment goes from one host to several, so it must neither lose a record (a
prompt's message id forgotten is a prompt posted twice) nor let a worker go on writing to the old file.
Hence, in order:

- the source is only read, never migrated or written, and is opened without creating a file; its write
  lock is held from the check for live claims until the target has committed, so no worker writes a
  claim (or anything else) into the old file while it is copied;
- a live claim (owner set, lease still running, not provably gone) refuses the copy: its worker would
  carry on writing to the old file after the copy;
- the target gets the schema through the product's own migrations (``ledger_schema.migrate``), then every
  table in one transaction, with the tables locked and checked empty inside it, so nothing is merged
  into an existing ledger and a half-done copy never commits;
- before commit the target's rows are read back and compared with the source's, table by table (count
  and checksum); after commit the counts are read again on a fresh connection.

The target URL's password never appears in a message: ``redacted_url`` is what is shown.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from image_pipeline.domain.redact import redact, register_secret
from image_pipeline.lifecycle.ledger_schema import MIGRATIONS, SchemaTooNew, ledger_schema, metadata, migrate

# every table the ledger's migrations create, parents first (none has a foreign key today)
TABLES: tuple[sa.Table, ...] = tuple(metadata.sorted_tables)
# tables only a Dagster instance has: its storage is private to it (README, "Scale-out")
_DAGSTER_TABLES = {"runs", "event_logs", "alembic_version"}
_CHUNK = 1000  # rows per INSERT round trip
_BUSY_TIMEOUT_S = 30.0


class CopyRefused(RuntimeError):
    """Nothing was copied, for a reason the operator can act on (exit code 2)."""


class CopyFailed(RuntimeError):
    """The copy started but did not commit (a broken connection, a row the target rejected, a mismatch on
    reading back): the target is as it was."""


@dataclass(frozen=True)
class CopyReport:
    source: Path
    target: str  # redacted
    counts: dict[str, int]  # read back from the target after commit
    checksums: dict[str, str]


def redacted_url(url: str) -> str:
    """The URL with its password replaced by ``***``; unparsable text is not echoed at all."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a database URL)"


def target_url(url: str) -> sa.URL:
    """The parsed PostgreSQL URL, or ``CopyRefused``; its password is registered for redaction."""
    try:
        parsed = sa.make_url(url.strip())
    except sa.exc.ArgumentError:
        raise CopyRefused(
            "--to must be a database URL, e.g. postgresql+psycopg2://user:password@host:5432/image_pipeline_ledger"
        ) from None
    register_secret(parsed.password if isinstance(parsed.password, str) else None)
    if parsed.get_backend_name() != "postgresql":
        raise CopyRefused(
            f"--to must be a PostgreSQL URL (postgresql+psycopg2://...), not {parsed.get_backend_name()}: "
            "the ledger moves to PostgreSQL so that workers on several hosts can share it"
        )
    if not parsed.database:
        raise CopyRefused("--to names no database: the ledger needs its own, e.g. .../image_pipeline_ledger")
    return parsed


def _rows_key(rows: Iterable[Sequence[Any]]) -> str:
    """A checksum of a table's rows independent of their order and of which database returned them."""
    lines = sorted(json.dumps(list(row), separators=(",", ":")) for row in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _normalise(table: sa.Table, names: Sequence[str], row: Sequence[Any]) -> tuple[Any, ...]:
    # SQLite keeps whatever type a value was written with (0 for a float column, an int in a text one);
    # PostgreSQL returns the column's type: both are brought to the column's type before comparing
    out = []
    for name, value in zip(names, row, strict=True):
        kind = table.c[name].type
        if value is None:
            out.append(None)
        elif isinstance(kind, sa.Float):
            out.append(float(value))
        elif isinstance(kind, sa.Integer):
            out.append(int(value))
        else:
            out.append(str(value))
    return tuple(out)


def _source_engine(path: Path) -> Engine:
    # mode=rw: a mistyped path fails instead of creating an empty "ledger"; the journal mode is left alone
    engine = sa.create_engine(
        f"sqlite:///file:{path}?mode=rw&uri=true",
        poolclass=NullPool,
        connect_args={"timeout": _BUSY_TIMEOUT_S},
    )

    @sa.event.listens_for(engine, "connect")
    def _setup(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # our BEGIN below, not the driver's deferred one

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # the write lock: no worker writes between the claim check and the target's commit (reads go on)
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _target_engine(url: sa.URL) -> Engine:
    return sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})


def _read_source(
    src: Connection, now: float, is_stale: Callable[[str], bool]
) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Each table's copied columns and rows, after the checks that refuse the copy."""
    have = set(sa.inspect(src).get_table_names())
    if "prompts" not in have:
        raise CopyRefused("the source has no prompts table: it is not a post ledger")
    if "ledger_schema" in have:
        version = src.execute(sa.select(sa.func.max(ledger_schema.c.version))).scalar() or 0
        if version > MIGRATIONS[-1][0]:
            raise CopyRefused(
                f"the source ledger is at schema version {version}, this release knows up to "
                f"{MIGRATIONS[-1][0]}: run the migration with the release that wrote it"
            )
    prompts = metadata.tables["prompts"]
    claims = src.execute(
        sa.select(prompts.c.prompt_id, prompts.c.owner, prompts.c.lease_until).where(
            prompts.c.owner != "", prompts.c.lease_until > now
        )
    ).all()
    live = [(str(p), float(until)) for p, owner, until in claims if not is_stale(str(owner))]
    if live:
        ends = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(max(u for _, u in live)))
        shown = ", ".join(p for p, _ in live[:5]) + (", ..." if len(live) > 5 else "")
        raise CopyRefused(
            f"{len(live)} prompt(s) are claimed by a running worker ({shown}): it would go on writing to "
            "this file after the copy. Stop the workers first (image-pipeline run, the Dagster daemon and "
            f"its runs), then migrate; a claim whose worker died lapses by {ends} at the latest."
        )
    out: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    inspector = sa.inspect(src)
    for table in TABLES:
        if table.name not in have:  # an old ledger without this table: nothing to copy
            out[table.name] = ([], [])
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        # a column the old file lacks gets its default in the target, as the in-place migration would
        names = [c.name for c in table.columns if c.name in present]
        rows = src.execute(sa.select(*(table.c[n] for n in names))).all()
        out[table.name] = (names, [_normalise(table, names, r) for r in rows])
    return out


def _check_target(db: Connection) -> None:
    present = set(sa.inspect(db).get_table_names())
    if _DAGSTER_TABLES & present:
        raise CopyRefused(
            "the target database holds a Dagster instance's tables: the ledger needs a database of its "
            "own (the same server is fine), e.g. .../image_pipeline_ledger"
        )


def _lock_and_check_empty(db: Connection) -> None:
    # EXCLUSIVE: a worker already pointed at the new URL waits (readers do not) until this commits
    names = ", ".join(db.dialect.identifier_preparer.quote(t.name) for t in TABLES)
    # a worker stuck inside a transaction on the new URL fails the copy instead of hanging it
    db.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(_BUSY_TIMEOUT_S * 1000)}ms'")
    db.exec_driver_sql(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
    held = {
        t.name: n
        for t in TABLES
        if (n := int(db.execute(sa.select(sa.func.count()).select_from(t)).scalar() or 0))
    }
    if held:
        listed = ", ".join(f"{name} {n}" for name, n in held.items())
        raise CopyRefused(
            f"the target already holds ledger rows ({listed}): a ledger is never merged into another "
            "(two records of one prompt could disagree on whether it was posted). Use an empty database."
        )


def _verify(db: Connection, wanted: dict[str, tuple[list[str], list[tuple[Any, ...]]]]) -> dict[str, str]:
    sums: dict[str, str] = {}
    for table in TABLES:
        names, rows = wanted[table.name]
        got = (
            [_normalise(table, names, r) for r in db.execute(sa.select(*(table.c[n] for n in names))).all()]
            if names
            else []
        )
        expected = _rows_key(rows)
        if len(got) != len(rows) or _rows_key(got) != expected:
            raise CopyFailed(
                f"{table.name}: read back {len(got)} row(s) that differ from the source's {len(rows)}; "
                "nothing was committed"
            )
        sums[table.name] = expected
    return sums


def _write_target(
    target: Engine, wanted: dict[str, tuple[list[str], list[tuple[Any, ...]]]]
) -> tuple[dict[str, int], dict[str, str]]:
    """The schema, then every table in one transaction verified before it commits; the counts after."""
    with target.connect() as probe:
        _check_target(probe)
    migrate(target)  # the normal path: the same steps a worker's first start would apply
    with target.begin() as db:
        _lock_and_check_empty(db)
        for table in TABLES:
            names, rows = wanted[table.name]
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                db.execute(table.insert(), [dict(zip(names, r, strict=True)) for r in chunk])
        checksums = _verify(db, wanted)
    with target.connect() as fresh:
        counts = {
            t.name: int(fresh.execute(sa.select(sa.func.count()).select_from(t)).scalar() or 0)
            for t in TABLES
        }
    return counts, checksums


def copy_ledger(
    source: Path, url: str, *, is_stale: Callable[[str], bool], now: float | None = None
) -> CopyReport:
    """Copy the SQLite ledger at ``source`` into the empty PostgreSQL database at ``url``.

    ``is_stale`` says whether a claim's owner is gone although its lease still runs (the product's own
    rule, ``stale_owner_check``): such a claim does not hold the copy up. Raises ``CopyRefused`` before
    anything was written, ``CopyFailed`` when the target transaction was rolled back."""
    parsed = target_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if not source.is_file():
        raise CopyRefused(f"no ledger at {source} (name another with --from)")
    try:
        target = _target_engine(parsed)
    except ModuleNotFoundError as exc:
        raise CopyRefused(f"{exc.name} is missing: pip install '.[postgres]' (the postgres extra)") from None
    src_engine = _source_engine(source)
    try:
        with src_engine.connect() as src:
            try:
                held = src.begin()
                wanted = _read_source(src, time.time() if now is None else now, is_stale)
            except sa.exc.OperationalError as exc:
                raise CopyRefused(
                    f"cannot lock {source} for the copy ({exc.orig}): a worker may be writing to it (stop the "
                    "workers first), or this user may not write to the file"
                ) from None
            except sa.exc.DatabaseError as exc:
                raise CopyRefused(f"{source} is not a SQLite ledger ({exc.orig})") from None
            try:
                counts, checksums = _write_target(target, wanted)
            except SchemaTooNew as exc:
                raise CopyRefused(str(exc)) from None
            except sa.exc.DBAPIError as exc:
                raise CopyFailed(redact(f"{shown}: {exc.orig}".strip())) from None
            finally:
                held.rollback()  # nothing was written to the source; its lock ends here
    finally:
        src_engine.dispose()
        target.dispose()
    return CopyReport(source=source, target=shown, counts=counts, checksums=checksums)
