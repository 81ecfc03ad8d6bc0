"""The queue's id pass, one worker at a time.

Rows a person adds have no id; whoever reads the queue first gives each one a fresh random id and writes
them into the sheet. Two workers doing that at once would each write their own ids over the same rows: the
ids one worker keeps in its snapshot then vanish from the sheet under it (its prompts look GONE), and a
worker that read its ids back before the other's write could even run a row under an id the other worker
runs under another one, two claims for one prompt. So the pass runs under a lock in the ledger that every
worker shares: the second worker reads the ids the first one wrote and writes none.
"""

from __future__ import annotations

from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.services.sheets import PromptSheet
from image_pipeline.services.sheets.table import QueueSnapshot

QUEUE_IDS_LOCK = "queue ids"


def ids_assigned(sheet: PromptSheet, book: Ledger | None) -> QueueSnapshot:
    """The queue, every row with its id, read and written while no other worker does the same."""
    if book is None:
        return sheet.ensure_ids()
    with book.exclusive(QUEUE_IDS_LOCK):
        return sheet.ensure_ids()
