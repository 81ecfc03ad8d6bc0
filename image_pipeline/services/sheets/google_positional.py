"""Sheets' positional edits, done so that a person's edit between our read and our write cannot misplace them.

Deletes and inserts address rows by index; each batch carries a check that the rows are where we read them,
deletes can capture a copy of what they remove (found again by a nonce), and a capture is read back and
restored cell by cell. The rest of the Sheets backend is in google.py."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any

from image_pipeline.domain.errors import (
    PipelineError,
    ServiceBlocked,
    WriteOutcomeUnknown,
)
from image_pipeline.services.sheets.refusals import is_rows_moved
from image_pipeline.services.sheets.table import (
    CAPTURE_KEEP_ROWS,
    CAPTURE_MIN_COLUMNS,
    REMOVED_ROWS_WORKSHEET,
    CaptureArea,
    CaptureLost,
    RowsShifted,
    log,
)


class PositionalEdits:
    """Mixed into ``GoogleSheetsBackend``: these methods use its other methods and attributes."""

    def _delete_requests(self, sheet_id: int, row_numbers: Sequence[int]) -> list[dict[str, Any]]:
        # Descending order so earlier deletions do not shift the later indices.
        return [
            {
                "deleteDimension": {
                    "range": {"sheetId": sheet_id, "dimension": "ROWS", "startIndex": n - 1, "endIndex": n}
                }
            }
            for n in sorted(set(row_numbers), reverse=True)
        ]

    def _positional_batch(self, what: str, requests_: list[dict[str, Any]], sheet_id: int) -> Any:
        """A batchUpdate addressed by row position. Google applies it all or nothing, so a 400 means
        nothing happened: either the rows moved (RowsShifted, the caller re-reads) or the grid has no
        spare row left below the data, which one appended row fixes. Only the answers that
        ``refusals.ROWS_MOVED_RULES`` lists mean moved rows; any other 400 (a protected range, the
        workbook's cell limit, a request this endpoint does not know) is a ServiceBlocked with Google's
        text: re-reading would meet it again, and the rows were not removed."""
        body = {"requests": requests_}
        try:
            return self._call(what, lambda: self.http.batch_update(self.key(), body), repeatable=False)
        except ServiceBlocked as exc:
            if exc.status != 400:
                raise
            text = str(exc)
            if "non-frozen rows" in text or "all the rows" in text:
                grow = {"appendDimension": {"sheetId": sheet_id, "dimension": "ROWS", "length": 1}}
                body = {"requests": [grow, *requests_]}
                return self._call(what, lambda: self.http.batch_update(self.key(), body), repeatable=False)
            if not is_rows_moved(400, text):
                raise
            if "No grid with id" in text or "already exists" in text:
                self.forget_sheet_ids()  # a worksheet was removed or added since we listed them
            raise RowsShifted(text) from None

    def delete_rows(self, worksheet: str, row_numbers: Sequence[int]) -> None:
        if not row_numbers:
            return
        self._require(worksheet)
        sheet_id = self.sheet_ids()[worksheet]
        self._positional_batch("delete rows", self._delete_requests(sheet_id, row_numbers), sheet_id)

    def delete_rows_capturing(
        self, worksheet: str, row_numbers: Sequence[int], width: int, area: CaptureArea | None = None
    ) -> list[list[str]] | None:
        if not row_numbers:
            return []
        if not self._capture:
            self.delete_rows(worksheet, row_numbers)
            return None
        self._require(worksheet)
        sheet_id = self.sheet_ids()[worksheet]
        rows = sorted(set(row_numbers))
        area = area or CaptureArea(uuid.uuid4().hex, len(rows), max(1, width))
        width = area.width
        columns = max(2 * width, CAPTURE_MIN_COLUMNS)
        adding: list[dict[str, Any]] = []
        scratch = self.sheet_ids().get(REMOVED_ROWS_WORKSHEET)
        if scratch is None:
            # created in the same request as its first use: no request of its own
            scratch = random.randint(10**8, 2 * 10**9)
            props = {
                "sheetId": scratch,
                "title": REMOVED_ROWS_WORKSHEET,
                "hidden": True,
                "gridProperties": {"rowCount": 1, "columnCount": columns},
            }
            adding = [{"addSheet": {"properties": props}}]
        block = len(rows) + 1

        def paste(source_row: int, row: int, first_col: int, kind: str) -> dict[str, Any]:
            return {
                "copyPaste": {
                    "source": {
                        "sheetId": sheet_id,
                        "startRowIndex": source_row - 1,
                        "endRowIndex": source_row,
                        "startColumnIndex": 0,
                        "endColumnIndex": width,
                    },
                    "destination": {
                        "sheetId": scratch,
                        "startRowIndex": row,
                        "endRowIndex": row + 1,
                        "startColumnIndex": first_col,
                        "endColumnIndex": first_col + width,
                    },
                    "pasteType": kind,
                }
            }

        requests_: list[dict[str, Any]] = [
            *adding,
            # A fresh block on top for this delete: the copies of earlier deletes move down and are never
            # overwritten, so a copy whose reader was killed is still there for the next run.
            {
                "insertDimension": {
                    "range": {"sheetId": scratch, "dimension": "ROWS", "startIndex": 0, "endIndex": block},
                    "inheritFromBefore": False,
                }
            },
            # the oldest copies fall off the bottom, long after the deletes that made them were checked
            {
                "updateSheetProperties": {
                    "properties": {
                        "sheetId": scratch,
                        "gridProperties": {"rowCount": CAPTURE_KEEP_ROWS, "columnCount": columns},
                    },
                    "fields": "gridProperties.rowCount,gridProperties.columnCount",
                }
            },
            {
                "updateCells": {
                    "start": {"sheetId": scratch, "rowIndex": 0, "columnIndex": 0},
                    "rows": [{"values": [{"userEnteredValue": {"stringValue": area.nonce}}]}],
                    "fields": "userEnteredValue",
                }
            },
            # Copied in the same atomic request as the delete: exactly what the delete removes. Columns
            # [0, width) hold the row as it was (formulas, formats) to put it back; [width, 2*width) hold
            # the values it showed, with its number formats, to compare: PASTE_NORMAL re-bases relative
            # references (=A5 copied two rows up is =A3), so the first copy may show other values.
            *(
                request
                for i, n in enumerate(rows)
                for request in (
                    paste(n, i + 1, 0, "PASTE_NORMAL"),
                    paste(n, i + 1, width, "PASTE_VALUES"),
                    paste(n, i + 1, width, "PASTE_FORMAT"),
                )
            ),
            *self._delete_requests(sheet_id, rows),
        ]
        try:
            self._positional_batch("delete rows", requests_, sheet_id)
        except WriteOutcomeUnknown:
            # the copy below tells whether it was applied; whether the worksheet was added, a fresh
            # list of worksheets does
            if adding:
                self.forget_sheet_ids()
        except ServiceBlocked as exc:
            text = str(exc)
            if exc.status != 400 or not ("Unknown name" in text or "Cannot find field" in text):
                raise  # refused as a whole (a protected range...): nothing was deleted
            return self._stop_capturing(worksheet, rows, exc)
        else:
            if adding:
                self.sheet_ids()[REMOVED_ROWS_WORKSHEET] = scratch
                self.drop_shared_sheet_ids()
        try:
            captured = self.read_capture(area)
        except PipelineError as exc:
            # the delete may well have happened: its copy stays, and so does its intent, for a later check
            raise CaptureLost(f"the copy of the deleted rows could not be read ({exc})") from None
        if captured is None:
            raise CaptureLost("the copy of the deleted rows is not there: the delete was not applied")
        return captured

    def read_capture(self, area: CaptureArea) -> list[list[str]] | None:
        """What a capturing delete removed (the values each row showed), or None when its copy is not
        there: the delete never took effect. Its block is on top unless another delete came after it."""
        if REMOVED_ROWS_WORKSHEET not in self.sheet_ids():
            self.forget_sheet_ids()
            if REMOVED_ROWS_WORKSHEET not in self.sheet_ids():
                return None

        def fetch(cells: str) -> list[list[str]]:
            a1 = self._a1(REMOVED_ROWS_WORKSHEET, cells)
            reply = self._call("read removed rows", lambda: self.http.values_get(self.key(), a1))
            return [[str(c) for c in row] for row in reply.get("values", [])]

        try:
            values = fetch(f"1:{area.rows + 1}")
        except ServiceBlocked as exc:
            if exc.status != 400:
                raise
            # "Unable to parse range": the worksheet is not there (a delete that added it never took effect)
            self.forget_sheet_ids()
            if REMOVED_ROWS_WORKSHEET in self.sheet_ids():
                raise
            return None
        start = next((i for i, row in enumerate(values) if row[:1] == [area.nonce]), None)
        if start is None:
            values = fetch("")
            start = next((i for i, row in enumerate(values) if row[:1] == [area.nonce]), None)
        if start is None:
            return None
        self._capture_row0 = start
        self._capture_width = area.width
        out = []
        for i in range(area.rows):
            row = values[start + 1 + i] if start + 1 + i < len(values) else []
            shown = list(row[area.width : 2 * area.width])
            while shown and shown[-1] == "":
                shown.pop()
            out.append(shown)
        return out

    def _stop_capturing(self, worksheet: str, rows: list[int], exc: Exception) -> None:
        # An implementation of the Sheets API without copyPaste / hidden sheets: plain deletes,
        # checked afterwards by a re-read as before.
        log.warning("this Sheets endpoint refused the capturing delete (%s); using plain deletes", exc)
        self._capture = False
        self.delete_rows(worksheet, rows)
        return None

    def restore_captured(self, worksheet: str, placements: Sequence[tuple[int, int]]) -> None:
        if not placements:
            return
        sheet_id = self.sheet_ids()[worksheet]
        scratch = self.sheet_ids()[REMOVED_ROWS_WORKSHEET]
        # the row as it was (formulas re-based back, formats), from the copy the last read found;
        # the same columns as captured: a wider destination would repeat the row across it
        cols = {"startColumnIndex": 0, "endColumnIndex": self._capture_width}
        first = self._capture_row0 + 1
        requests_: list[dict[str, Any]] = []
        for position, index in sorted(placements):
            requests_.append(
                {
                    "insertDimension": {
                        "range": {
                            "sheetId": sheet_id,
                            "dimension": "ROWS",
                            "startIndex": position - 1,
                            "endIndex": position,
                        },
                        "inheritFromBefore": position > 2,
                    }
                }
            )
            requests_.append(
                {
                    "copyPaste": {
                        "source": {
                            "sheetId": scratch,
                            "startRowIndex": first + index,
                            "endRowIndex": first + index + 1,
                            **cols,
                        },
                        "destination": {
                            "sheetId": sheet_id,
                            "startRowIndex": position - 1,
                            "endRowIndex": position,
                            **cols,
                        },
                        "pasteType": "PASTE_NORMAL",
                    }
                }
            )
        self._positional_batch("restore rows", requests_, sheet_id)

    def insert_row(self, worksheet: str, row_number: int, cells: Sequence[str]) -> None:
        self._require(worksheet)
        sheet_id = self.sheet_ids()[worksheet]
        body = {
            "requests": [
                {
                    "insertDimension": {
                        "range": {
                            "sheetId": sheet_id,
                            "dimension": "ROWS",
                            "startIndex": row_number - 1,
                            "endIndex": row_number,
                        },
                        "inheritFromBefore": row_number > 2,
                    }
                }
            ]
        }
        self._call("insert row", lambda: self.http.batch_update(self.key(), body), repeatable=False)
        if any(c != "" for c in cells):
            data = {
                "valueInputOption": "RAW",
                "data": [{"range": self._a1(worksheet, f"A{row_number}"), "values": [list(cells)]}],
            }
            self._call(
                "restore row", lambda: self.http.values_batch_update(self.key(), data), repeatable=False
            )
