"""Done's reaction cells: a post's counts per emoji ("👍 12 · ❤ 3") and their total, written into its row.

The row is found again under the backend's lock by what it logged (chat id and message id), in case rows
moved since the read that matched the update; the two columns are added to the header when a sheet from
before them lacks them. The cells hold the full current counts, so writing them again is harmless: a write
whose answer was lost is simply made again by the next call.
"""

from __future__ import annotations

from collections.abc import Sequence

from image_pipeline.domain.errors import WriteOutcomeUnknown
from image_pipeline.services.sheets.done_cells import _names, _rows
from image_pipeline.services.sheets.queue import PromptSheet
from image_pipeline.services.sheets.table import CellWrite

REACTIONS = "reactions"
REACTIONS_TOTAL = "reactions_total"


def write_reaction_cells(
    sheet: PromptSheet, posts: Sequence[tuple[str, str, str, int]]
) -> list[tuple[str, str]]:
    """Write (chat id, first message id, per-emoji text, total) into each post's Done row; returns the
    (chat id, message id) of the rows written. A post with no Done row is left out."""
    if not posts:
        return []
    backend = sheet.backend
    with backend.transaction():
        table = backend.read(sheet.done_worksheet)
        _, rows = _rows(table)
        names = _names(table[0]) if table else []
        cells: list[CellWrite] = []
        cols: dict[str, int] = {}
        for column in (REACTIONS, REACTIONS_TOTAL):
            if column not in names:
                names.append(column)
                cells.append(CellWrite(1, len(names), column))
            cols[column] = names.index(column) + 1
        where = {(r.get("chat_id").strip(), r.get("message_id").strip()): r.number for r in rows}
        written: list[tuple[str, str]] = []
        for chat_id, message_id, text, total in posts:
            number = where.get((chat_id, message_id))
            if number is None:
                continue
            cells.append(CellWrite(number, cols[REACTIONS], text))
            cells.append(CellWrite(number, cols[REACTIONS_TOTAL], str(total)))
            written.append((chat_id, message_id))
        if not written:
            return []
        try:
            backend.write_cells(sheet.done_worksheet, cells)
        except WriteOutcomeUnknown:
            return []  # not marked written: the next call writes the same cells again
    return written
