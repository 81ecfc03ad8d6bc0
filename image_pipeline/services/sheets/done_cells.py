"""Done's status cells: where a person types EDIT or DELETE under a post, and where the outcome is written.

The status cell, not a column of its own: Done already has one, a person already types words into the
queue's status cells (HOLD, APPROVE), and nothing has to be added to an existing sheet. The sensor reads the status
column with the queue's columns (``watch_done``, ``action_cells``): on Google Sheets in the same request;
``read_done_rows`` is the run's full read; ``write_done_statuses`` puts each outcome on the row it belongs
to, found again by what it logged (id, chat, message id) in case rows moved since the read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from image_pipeline.domain.done_entries import DONE_ALIASES
from image_pipeline.domain.errors import WriteOutcomeUnknown
from image_pipeline.domain.retractions import action_word
from image_pipeline.domain.rows import normalize_header
from image_pipeline.services.sheets.google import GoogleSheetsBackend
from image_pipeline.services.sheets.queue import PromptSheet
from image_pipeline.services.sheets.table import CellWrite, _col_letter

STATUS = "status"


@dataclass(frozen=True)
class DoneRow:
    number: int  # 1-based row of the sheet
    values: dict[str, str]

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def same_post(self, other: DoneRow) -> bool:
        return all(self.get(k).strip() == other.get(k).strip() for k in ("id", "chat_id", "message_id"))


def _names(header: Sequence[str]) -> list[str]:
    return [DONE_ALIASES.get(normalize_header(h), normalize_header(h)) for h in header]


def _rows(table: list[list[str]]) -> tuple[int | None, list[DoneRow]]:
    if not table:
        return None, []
    names = _names(table[0])
    col = names.index(STATUS) if STATUS in names else None
    rows = [
        DoneRow(n, {name: (cells[i] if i < len(cells) else "") for i, name in enumerate(names)})
        for n, cells in enumerate(table[1:], start=2)
    ]
    return col, rows


def read_done_rows(sheet: PromptSheet) -> tuple[int | None, list[DoneRow]]:
    """Done as rows with their row numbers, and the 0-based index of its status column (None: none)."""
    return _rows(sheet.backend.read(sheet.done_worksheet))


def reads_are_free(sheet: PromptSheet) -> bool:
    """A read costs no API quota (the local workbook): the sensor may read Done every tick."""
    return not isinstance(sheet.backend, GoogleSheetsBackend)


def _span(status_col: int | None) -> str:
    letter = _col_letter(status_col + 1) if status_col is not None else ""
    return f"{letter}:{letter}" if letter else "1:1"


def watch_done(sheet: PromptSheet, status_col: int | None) -> None:
    """Ask for Done's status column (its header row while its place is unknown) in the request that reads
    the queue's columns this tick, if one is made (``PromptSheet.column_digest``): no request of its own."""
    sheet._done_also, sheet._done_seen = _span(status_col), None


def _found(table: list[list[str]], status_col: int | None) -> tuple[int | None, list[tuple[int, str]]]:
    """(status column, the rows asking) from a read of ``_span(status_col)``."""
    if status_col is None:  # the header row
        names = _names(table[0]) if table else []
        return (names.index(STATUS) if STATUS in names else None), []
    if not table or not table[0] or normalize_header(table[0][0]) != STATUS:
        return None, []  # the column moved: its header is asked for next
    return status_col, [(n, r[0]) for n, r in enumerate(table[1:], start=2) if r and action_word(r[0])]


def action_cells(
    sheet: PromptSheet, status_col: int | None, *, must: bool
) -> tuple[int | None, list[tuple[int, str]]] | None:
    """Done's status column and the (row, word) of each row asking for EDIT or DELETE; None when nothing
    was read. What ``watch_done`` got with the queue columns, else (local workbook: always, it is a file;
    Google: only when ``must``) one read of its own."""
    seen, sheet._done_also, sheet._done_seen = sheet._done_seen, None, None
    if seen is not None:
        return _found(seen, status_col)
    if reads_are_free(sheet):
        col, rows = read_done_rows(sheet)
        return col, [
            (r.number, r.get(STATUS)) for r in rows if col is not None and action_word(r.get(STATUS))
        ]
    if not must:
        return None
    [table] = sheet.backend.read_many([(sheet.done_worksheet, _span(status_col))])
    return _found(table, status_col)


def write_done_statuses(sheet: PromptSheet, outcomes: Sequence[tuple[DoneRow, str]]) -> list[DoneRow]:
    """Write each outcome into its row's status cell, the row found again by its post; returns the rows
    written. A row whose cell no longer shows the action word (a person changed it) is left alone."""
    if not outcomes:
        return []
    backend = sheet.backend
    with backend.transaction():
        col, rows = read_done_rows(sheet)
        if col is None:
            return []
        cells: list[CellWrite] = []
        done: list[DoneRow] = []
        for wanted, text in outcomes:
            here = next(
                (r for r in rows if r.same_post(wanted) and action_word(r.get(STATUS)) is not None), None
            )
            if here is None:
                continue
            cells.append(CellWrite(here.number, col + 1, text))
            done.append(wanted)
        if cells:
            # an unknown outcome is settled by the next run's read: the word is there, or the outcome is
            with contextlib.suppress(WriteOutcomeUnknown):
                backend.write_cells(sheet.done_worksheet, cells)
    return done
