"""The prompt sheet: the "Process" queue and the "Done" log.

One resource with two backends that share every rule about the queue:
- ``GoogleSheet``: Google Sheets through gspread + a google-auth service account;
- ``LocalWorkbook``: a folder with ``process.csv`` and ``done.csv`` that a person edits by hand.

The backends only move tables of strings (read a worksheet, write cells, append rows, delete rows, a
cheap change token). Everything that gives rows meaning (ids, headers, the Done column mapping, the
"re-read before removing" rule) lives once, in ``PromptSheet``.

The modules: ``table`` (shared records and the backend interface), ``queue`` (the resource and its
position-safe writes and removals), ``workbook`` (local CSV), ``google`` (gspread transport and errors),
``google_sheet`` (the Google resource)."""

from image_pipeline.services.sheets.google import SHEET_IDS_TTL_S, GoogleSheetsBackend
from image_pipeline.services.sheets.google_sheet import GoogleSheet
from image_pipeline.services.sheets.queue import PromptSheet
from image_pipeline.services.sheets.table import (
    CHANGED,
    REMOVED,
    REMOVED_ROWS_WORKSHEET,
    VANISHED,
    CaptureLost,
    CellWrite,
    QueueSnapshot,
    RowsShifted,
    TableBackend,
)
from image_pipeline.services.sheets.workbook import LocalWorkbook, WorkbookBackend

__all__ = [
    "CHANGED",
    "REMOVED",
    "REMOVED_ROWS_WORKSHEET",
    "SHEET_IDS_TTL_S",
    "VANISHED",
    "CaptureLost",
    "CellWrite",
    "GoogleSheet",
    "GoogleSheetsBackend",
    "LocalWorkbook",
    "PromptSheet",
    "QueueSnapshot",
    "RowsShifted",
    "TableBackend",
    "WorkbookBackend",
]
