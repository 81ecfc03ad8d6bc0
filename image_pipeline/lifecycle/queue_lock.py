"""Writes to the queue by position, one worker at a time: the id pass, the status cells, the removal of rows.

The Sheets API addresses cells and rows by position. Each of these writes reads the queue, writes, and
reads again to check that what it wrote landed on the row it meant (a person may have moved rows
meanwhile). Workers sharing a ledger would otherwise make each other's positions wrong all the time:

- the id pass: rows a person adds have no id, and whoever reads the queue first gives each a fresh random
  id. Two workers at once write their own ids over the same rows; the ids one of them keeps vanish from the
  sheet under it (its prompts look GONE), and a row could run under two ids, two claims for one prompt;
- the removal: deleting rows shifts every row below, so two workers' deletes hit each other's rows, which
  are then put back, and finished rows stay queued until a later run.

So these two hold a lock in the ledger that every worker shares (``Ledger.exclusive``), the removal with a
fresh read of the queue taken under it. They are a few requests per run; the generation, the posts and the
Done append never wait on it. The status cells are a courtesy to the reader, checked by their own re-read,
and take no lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.services.sheets import PromptSheet
from image_pipeline.services.sheets.table import QueueSnapshot

QUEUE_LOCK = "queue rows"


@contextlib.contextmanager
def queue_writes(book: Ledger | None) -> Iterator[None]:
    """While no other worker of a shared ledger (PostgreSQL) removes rows: one host's runs keep the
    removal's own checks, as they always did."""
    if book is None or not book.shared:
        yield
        return
    with book.exclusive(QUEUE_LOCK):
        yield


def ids_assigned(sheet: PromptSheet, book: Ledger | None) -> QueueSnapshot:
    """The queue, every row with its id, read and written while no other worker does the same (on one
    host's SQLite ledger too: several ``run`` processes there would race the same way)."""
    if book is None:
        return sheet.ensure_ids()
    with book.exclusive(QUEUE_LOCK):
        return sheet.ensure_ids()
