"""Telegram's per-chat pacing kept in the ledger, so that workers sharing it share one pace per chat.

A mixin of ``Ledger`` (it uses the ledger's transactions and clock) that implements ``SlotBook`` of
``services/publisher/pacing.py``. A chat's row holds ``next_at``: the earliest moment, by the database's
clock, at which the next post into the chat may start. Taking a slot is one statement (an upsert that
returns the new ``next_at``), so the database's row lock orders two workers and never hands out one slot
twice; the lock is held for that statement only, never while a worker sleeps until its slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from image_pipeline.domain.errors import TransientError
from image_pipeline.lifecycle.ledger_schema import chat_slots

_S = chat_slots.c


def _later(a: ColumnElement[float], b: ColumnElement[float]) -> ColumnElement[float]:
    # GREATEST on PostgreSQL, a two-argument max() on SQLite: CASE is the same on both
    return sa.case((a > b, a), else_=b)


class ChatSlots:
    _tx: Callable[[], Any]
    _now: Callable[[], ColumnElement[float]]
    _insert: Any

    def take_slot(self, chat_id: str, interval_s: float) -> tuple[float, float]:
        """The next free slot of ``chat_id``, taken: (its start, now), both by the database's clock.

        The slot starts at ``next_at`` or now, whichever is later, and moves ``next_at`` one interval past
        it; the caller waits ``start - now``, so no two hosts' clocks are ever compared."""
        now = self._now()  # one value for the whole statement: PostgreSQL's now() is the transaction's
        start_of_next = _later(_S.next_at, now) + interval_s
        upsert = self._insert(chat_slots).values(chat_id=chat_id, next_at=now + interval_s)
        upsert = upsert.on_conflict_do_update(index_elements=[_S.chat_id], set_={"next_at": start_of_next})
        try:
            with self._tx() as db:
                next_at, db_now = db.execute(upsert.returning(_S.next_at, now)).one()
        except sa.exc.DBAPIError as exc:
            # before anything was sent: the prompt stays queued for a later try, never "maybe posted"
            raise TransientError(
                f"could not take a posting slot from the ledger: {exc}", service="Ledger"
            ) from exc
        return float(next_at) - interval_s, float(db_now)

    def slot_used(self, chat_id: str, interval_s: float) -> None:
        """Telegram answered the post of ``chat_id`` now: no slot handed out from here on starts less than an
        interval after this moment (Telegram counts posts by when it took them, not by when they left)."""
        now = self._now()
        with self._tx() as db:
            db.execute(
                sa.update(chat_slots)
                .where(_S.chat_id == chat_id)
                .values(next_at=_later(_S.next_at, now + interval_s))
            )
