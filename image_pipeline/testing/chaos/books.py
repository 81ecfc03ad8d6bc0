"""Where the harness reads the post ledger: the SQLite file of one host, or the PostgreSQL database of many.

A ``LedgerRef`` is a ``Path`` (the embedded SQLite ledger) or a ``str`` (a database URL, ``--distributed``).
``ledger_query`` runs one read-only query with ``:name`` parameters, which both sqlite3 and SQLAlchemy
accept, so the person and the audit ask the same question of either; the SQLite file is opened read-only
and never created, as before. ``open_ledger`` is the product's ``Ledger`` on either, for the one write the
harness makes (lifting a timed pause, as ``image-pipeline resume`` does).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from image_pipeline.lifecycle.ledger import Ledger

LedgerRef = Path | str


def ledger_query(
    where: LedgerRef, sql: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]] | None:
    """The rows of ``sql``, or None while the ledger (or the table) does not exist yet: no worker has run."""
    if isinstance(where, Path):
        if not where.exists():
            return None
        db = sqlite3.connect(f"file:{where}?mode=ro", uri=True)
        try:
            return [tuple(row) for row in db.execute(sql, params or {}).fetchall()]
        except sqlite3.OperationalError:
            return None  # a ledger from before the table
        finally:
            db.close()
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    # NullPool: read between workers, a handful of times per round; no connection outlives the question
    engine = sa.create_engine(where, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params or {}).fetchall()]
    except sa.exc.ProgrammingError:
        return None  # the first worker has not migrated the schema yet
    finally:
        engine.dispose()


def ledger_exists(where: LedgerRef) -> bool:
    return where.exists() if isinstance(where, Path) else True


def open_ledger(where: LedgerRef) -> Ledger:
    from image_pipeline.lifecycle.ledger import Ledger

    return Ledger(where) if isinstance(where, Path) else Ledger(url=where)
