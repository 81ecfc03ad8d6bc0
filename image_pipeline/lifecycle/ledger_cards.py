"""The ledger's record of preview cards with buttons (table ``preview_cards``, schema step 7).

One row per card: the prompt text it shows (id and fingerprint) and the press that decided it. ``settle``
records the decision once, before the row or the card change, so a press seen again (a tick that died
half-way, a double tap, a second admin) finds the first decision and repeats only its idempotent
follow-ups (the status word, the card's edit), never a second decision.

A view over a ``Ledger`` (its transactions), not a mixin: ``ledger.py`` is at its size limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.ledger_schema import preview_cards

_C = preview_cards.c


@dataclass(frozen=True)
class Card:
    chat_id: str
    message_id: str
    prompt_id: str
    fingerprint: str
    outcome: str  # "" while it waits for a press


class CardBook:
    """Reads and durable writes of ``preview_cards``; each write is its own transaction."""

    def __init__(self, book: Ledger) -> None:
        self.book = book

    def record(self, chat_id: str, message_id: str, prompt_id: str, fingerprint: str) -> None:
        insert = self.book._insert(preview_cards).values(
            chat_id=str(chat_id),
            message_id=str(message_id),
            prompt_id=prompt_id,
            fingerprint=fingerprint,
            created_at=time.time(),
            updated_at=time.time(),
        )
        with self.book._tx() as db:
            db.execute(insert.on_conflict_do_nothing(index_elements=[_C.chat_id, _C.message_id]))

    def get(self, chat_id: str, message_id: str) -> Card | None:
        with self.book._read() as db:
            row = db.execute(
                sa.select(preview_cards).where(_C.chat_id == str(chat_id), _C.message_id == str(message_id))
            ).first()
        if row is None:
            return None
        m = row._mapping
        return Card(m["chat_id"], m["message_id"], m["prompt_id"], m["fingerprint"], m["outcome"])

    def latest(self, prompt_id: str, fingerprint: str) -> Card | None:
        """The newest card of this prompt text: only it may decide (an older one was replaced)."""
        with self.book._read() as db:
            row = db.execute(
                sa.select(preview_cards)
                .where(_C.prompt_id == prompt_id, _C.fingerprint == fingerprint)
                .order_by(_C.created_at.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        m = row._mapping
        return Card(m["chat_id"], m["message_id"], m["prompt_id"], m["fingerprint"], m["outcome"])

    def settle(self, card: Card, outcome: str) -> str:
        """Record the card's decision once; returns the decision that stands (the first)."""
        where = (_C.chat_id == card.chat_id, _C.message_id == card.message_id)
        with self.book._tx() as db:
            db.execute(
                sa.update(preview_cards)
                .where(*where, _C.outcome == "")
                .values(outcome=outcome, updated_at=time.time())
            )
            return str(db.execute(sa.select(_C.outcome).where(*where)).scalar() or outcome)
