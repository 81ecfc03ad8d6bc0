"""The ledger's record of EDIT / DELETE requests typed in Done (table ``sheet_actions``, schema step 5).

One row per request (``SheetAction.key``: the action, the messages and, for EDIT, the caption). Before each
Telegram call the message goes into ``sent_ids`` (the intent); after it, into ``done_ids``; the row's text
goes into ``outcome`` once, and ``written`` says the Done row shows it. So a repeated tick or a crashed run
never calls for a message Telegram already confirmed, and a message in ``sent_ids`` but not ``done_ids``
had a call whose answer was lost: the next call is the read-back.

A view over a ``Ledger`` (its transactions and dialect), not a mixin: ``ledger.py`` is at its size limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from image_pipeline.domain.retractions import SheetAction
from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.ledger_schema import sheet_actions

_A = sheet_actions.c


def _ids(text: str) -> tuple[str, ...]:
    return tuple(i for i in text.split(",") if i)


@dataclass(frozen=True)
class ActionRecord:
    key: str
    sent_ids: tuple[str, ...]
    done_ids: tuple[str, ...]
    outcome: str
    written: bool


class ActionBook:
    """Reads and durable writes of ``sheet_actions``; each write is its own transaction."""

    def __init__(self, book: Ledger) -> None:
        self.book = book

    def get(self, key: str) -> ActionRecord | None:
        with self.book._read() as db:
            row = db.execute(sa.select(sheet_actions).where(_A.key == key)).first()
        if row is None:
            return None
        m = row._mapping
        return ActionRecord(key, _ids(m["sent_ids"]), _ids(m["done_ids"]), m["outcome"], bool(m["written"]))

    def begin(self, action: SheetAction) -> ActionRecord:
        """The request's row (made the first time it is seen), as it stands."""
        insert = self.book._insert(sheet_actions).values(
            key=action.key,
            prompt_id=action.prompt_id,
            action=action.action,
            chat_id=action.chat_id,
            message_ids=",".join(action.message_ids),
            updated_at=time.time(),
        )
        with self.book._tx() as db:
            db.execute(insert.on_conflict_do_nothing(index_elements=[_A.key]))
        record = self.get(action.key)
        assert record is not None
        return record

    def _add(self, key: str, column: sa.Column[str], message_id: str) -> None:
        with self.book._tx() as db:
            have = db.execute(sa.select(column).where(_A.key == key)).scalar() or ""
            if message_id not in _ids(have):
                joined = ",".join([*_ids(have), message_id])
                db.execute(
                    sa.update(sheet_actions)
                    .where(_A.key == key)
                    .values({column.name: joined, "updated_at": time.time()})
                )

    def sending(self, key: str, message_id: str) -> None:
        """The intent, durable before the call: from here on its outcome is unknown until confirmed."""
        self._add(key, _A.sent_ids, message_id)

    def confirmed(self, key: str, message_id: str) -> None:
        self._add(key, _A.done_ids, message_id)

    def settle(self, key: str, outcome: str) -> str:
        """Record the row's text once; a second settle keeps the first (returned)."""
        with self.book._tx() as db:
            db.execute(
                sa.update(sheet_actions)
                .where(_A.key == key, _A.outcome == "")
                .values(outcome=outcome, updated_at=time.time())
            )
            return str(db.execute(sa.select(_A.outcome).where(_A.key == key)).scalar() or outcome)

    def written(self, key: str) -> None:
        with self.book._tx() as db:
            db.execute(
                sa.update(sheet_actions).where(_A.key == key).values(written=1, updated_at=time.time())
            )
