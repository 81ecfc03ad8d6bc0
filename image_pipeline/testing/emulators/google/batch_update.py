"""``spreadsheets.batchUpdate``: the dispatcher that applies its requests in order, each checked against
protected ranges (what it would change: its footprint) and the 10,000,000-cell limit; and the helpers its
request kinds share (a dimension's target sheet, a GridRange as a box). The kinds themselves are in
batch_kinds.py.
"""

from __future__ import annotations

from typing import Any

from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.google.constants import _CELL_LIMIT_MESSAGE, PROTECTED_MESSAGE
from image_pipeline.testing.emulators.google.errors import _Reply, sheets_error
from image_pipeline.testing.emulators.google.model import Sheet, SpreadsheetFile
from image_pipeline.testing.emulators.google.wire import _RouteInfo


class BatchUpdate:
    """Mixed into GoogleEmulator (server.py): the batchUpdate dispatcher, protections, cell limit."""

    def _sheets_sheets_batchUpdate(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not requests:
            raise _Reply(sheets_error(400, "Must specify at least one request."))
        replies = []
        for i, item in enumerate(requests):
            if not isinstance(item, dict) or len(item) != 1:
                raise _Reply(
                    sheets_error(400, f"Invalid requests[{i}]: exactly one request kind must be set.")
                )
            [(kind, spec)] = item.items()
            handler = getattr(self, f"_req_{kind}", None)
            if handler is None:
                raise _Reply(
                    sheets_error(
                        400,
                        f"Invalid JSON payload received. Unknown name \"{kind}\" at 'requests[{i}]': "
                        "Cannot find field.",
                    )
                )
            spec = spec if isinstance(spec, dict) else {}
            where = f"Invalid requests[{i}].{kind}"
            self._check_protected(file, self._footprint(file, kind, spec), where)
            cells_before = self._cell_count(file)
            replies.append(handler(file, spec, where))
            self._check_cell_limit(file, cells_before, where)
        return Response.json({"spreadsheetId": file.spreadsheet_id, "replies": replies})

    # ---------------------------------------------------------------- protections and the cell limit
    def _footprint(
        self, file: SpreadsheetFile, kind: str, spec: dict[str, Any]
    ) -> list[tuple[int, int | None, int | None]]:
        """What one batchUpdate request changes: (sheetId, first row, end row), rows None for a change of
        the sheet's structure. Best effort: a malformed request is refused by its handler anyway."""

        def grid(rng: Any) -> tuple[int, int | None, int | None]:
            rng = rng if isinstance(rng, dict) else {}
            sheet = file.sheet_by_id(rng.get("sheetId", 0))
            end = rng.get("endRowIndex", sheet.row_count if sheet else None)
            return int(rng.get("sheetId", 0)), int(rng.get("startRowIndex", 0)), end

        if kind in ("deleteDimension", "insertDimension"):
            rng = spec.get("range") or {}
            sid = int(rng.get("sheetId", 0))
            if rng.get("dimension") != "ROWS":
                return [(sid, None, None)]
            start = int(rng.get("startIndex", 0))
            if kind == "insertDimension":
                # rows pushed into or out of a protected band change it; inserting below it does not
                return [(sid, max(0, start - 1), start + 1)]
            return [(sid, start, rng.get("endIndex"))]
        if kind == "copyPaste":
            return [grid(spec.get("destination"))]
        if kind == "updateCells":
            if "range" in spec:
                return [grid(spec["range"])]
            start = spec.get("start") or {}
            height = max(1, len(spec.get("rows") or []))
            row = int(start.get("rowIndex", 0))
            return [(int(start.get("sheetId", 0)), row, row + height)]
        if kind in ("appendDimension", "deleteSheet"):
            return [(int(spec.get("sheetId", 0)), None, None)]
        if kind == "updateSheetProperties":
            return [(int((spec.get("properties") or {}).get("sheetId", 0)), None, None)]
        return []

    def _check_protected(
        self, file: SpreadsheetFile, footprint: list[tuple[int, int | None, int | None]], where: str
    ) -> None:
        if self._caller == file.owner_email or not file.protections:
            return
        for sheet_id, r0, r1 in footprint:
            for protection in file.protections:
                if self._caller not in protection.editors and protection.covers(sheet_id, r0, r1):
                    message = f"{where}: {PROTECTED_MESSAGE}" if where else PROTECTED_MESSAGE
                    raise _Reply(sheets_error(400, message))

    @staticmethod
    def _cell_count(file: SpreadsheetFile) -> int:
        return sum(sheet.row_count * sheet.col_count for sheet in file.sheets)

    def _check_cell_limit(self, file: SpreadsheetFile, before: int, where: str) -> None:
        after = self._cell_count(file)
        if after > self.cell_limit and after > before:
            message = _CELL_LIMIT_MESSAGE.format(limit=self.cell_limit)
            raise _Reply(sheets_error(400, f"{where}: {message}" if where else message))

    # ---------------------------------------------------------------- helpers of the kinds (batch_kinds.py)
    def _dimension_target(
        self, file: SpreadsheetFile, spec: dict[str, Any], where: str
    ) -> tuple[Sheet, bool]:
        sheet = file.sheet_by_id(spec.get("sheetId", 0))
        if sheet is None:
            raise _Reply(sheets_error(400, f"{where}: No grid with id: {spec.get('sheetId', 0)}"))
        dimension = spec.get("dimension")
        if dimension not in ("ROWS", "COLUMNS"):
            raise _Reply(sheets_error(400, f"{where}: range.dimension must be ROWS or COLUMNS."))
        return sheet, dimension == "ROWS"

    def _grid_box(
        self, file: SpreadsheetFile, rng: Any, where: str, name: str
    ) -> tuple[Sheet, int, int, int, int]:
        """A GridRange -> (sheet, r0, c0, r1, c1), half-open; omitted bounds mean the whole grid."""
        if not isinstance(rng, dict):
            raise _Reply(sheets_error(400, f"{where}: {name} must be a GridRange."))
        sheet = file.sheet_by_id(rng.get("sheetId", 0))
        if sheet is None:
            raise _Reply(sheets_error(400, f"{where}: No grid with id: {rng.get('sheetId', 0)}"))
        r0 = int(rng.get("startRowIndex", 0))
        r1 = int(rng.get("endRowIndex", sheet.row_count))
        c0 = int(rng.get("startColumnIndex", 0))
        c1 = int(rng.get("endColumnIndex", sheet.col_count))
        if r0 < 0 or c0 < 0 or r1 < r0 or c1 < c0:
            raise _Reply(sheets_error(400, f"{where}: Invalid {name}: start index must be <= end index."))
        if r1 > sheet.row_count:
            raise _Reply(
                sheets_error(
                    400,
                    f"{where}: Range ('{sheet.title}'!R{r0 + 1}C{c0 + 1}:R{r1}C{c1}) exceeds grid limits. "
                    f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}",
                )
            )
        if c1 > sheet.col_count:
            raise _Reply(
                sheets_error(
                    400,
                    f"{where}: Range ('{sheet.title}'!R{r0 + 1}C{c0 + 1}:R{r1}C{c1}) exceeds grid limits. "
                    f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}",
                )
            )
        return sheet, r0, c0, r1, c1
