"""The Sheets v4 endpoints other than batchUpdate's request kinds: the dispatcher that authenticates,
charges quota, checks access and makes every write atomic, then ``spreadsheets.get`` (with grid data and
field masks) and ``values.get``, ``batchGet``, ``update``, ``batchUpdate``, ``append`` (with its "logical
table"), ``clear`` and ``batchClear``.
"""

from __future__ import annotations

import copy
from typing import Any

from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.google.a1_notation import a1, col_letters, sheet_ref
from image_pipeline.testing.emulators.google.cells import Cell, formatted, unformatted
from image_pipeline.testing.emulators.google.constants import (
    _SHEETS_READ_SCOPES,
    _SHEETS_WRITE_SCOPES,
    WRITE_ENDPOINTS,
)
from image_pipeline.testing.emulators.google.errors import _Reply, service_disabled_error, sheets_error
from image_pipeline.testing.emulators.google.model import Sheet, SpreadsheetFile
from image_pipeline.testing.emulators.google.wire import (
    _apply_fields,
    _flag,
    _param,
    _parse_fields,
    _RouteInfo,
)


class SheetsEndpoints:
    """Mixed into GoogleEmulator (server.py): the Sheets v4 handlers."""

    # ============================================================ Sheets v4
    def _sheets(self, request: Request, info: _RouteInfo) -> Response:
        writing = info.endpoint in WRITE_ENDPOINTS
        token = self._authenticate(
            request, _SHEETS_WRITE_SCOPES if writing else _SHEETS_READ_SCOPES, drive=False
        )
        if "sheets" in self.disabled_apis:
            raise _Reply(service_disabled_error("sheets"))
        self._charge_quota(token.email, "write" if writing else "read")
        file = self._files.get(info.spreadsheet_id)
        if file is None:
            raise _Reply(sheets_error(404))
        if not self._can_access(file, token.email) or (writing and not self._can_edit(file, token.email)):
            raise _Reply(sheets_error(403))
        body = self._json_body(request) if request.method in ("POST", "PUT") else None
        handler = getattr(self, "_sheets_" + info.endpoint.replace(".", "_"))
        if not writing:
            return handler(request, file, info, body)
        snapshot = copy.deepcopy(file.sheets), file.title
        self._caller = token.email
        cells_before = self._cell_count(file)
        try:
            response = handler(request, file, info, body)
            if info.endpoint != "sheets.batchUpdate":  # batchUpdate checks after each of its requests
                self._check_cell_limit(file, cells_before, "")
        except Exception:
            # every write request is atomic: a failure part-way leaves the file as it was
            file.sheets, file.title = snapshot
            raise
        self._touch(file)
        return response

    def _sheets_sheets_get(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        sheets = []
        for index, sheet in enumerate(file.sheets):
            entry: dict[str, Any] = {"properties": sheet.properties(index)}
            if _flag(request, "includeGridData"):
                entry["data"] = [self._grid_data(sheet)]
            sheets.append(entry)
        payload = {
            "spreadsheetId": file.spreadsheet_id,
            "properties": {
                "title": file.title,
                "locale": file.locale,
                "autoRecalc": "ON_CHANGE",
                "timeZone": file.time_zone,
            },
            "sheets": sheets,
            "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{file.spreadsheet_id}/edit",
        }
        fields = _param(request, "fields")
        if fields:
            payload = _apply_fields(payload, _parse_fields(fields))
        return Response.json(payload)

    def _grid_data(self, sheet: Sheet) -> dict[str, Any]:
        row_data = []
        for row in sheet.rows[: sheet.last_data_row() + 1]:
            cells = []
            for cell in self._trim_row(row):
                if cell is None:
                    cells.append({})
                    continue
                value = cell.value
                kind = (
                    "boolValue"
                    if isinstance(value, bool)
                    else "numberValue"
                    if isinstance(value, float)
                    else "stringValue"
                )
                effective = {kind: unformatted(cell)}
                entered = {"formulaValue": cell.formula} if cell.formula else effective
                cells.append(
                    {
                        "userEnteredValue": entered,
                        "effectiveValue": effective,
                        "formattedValue": formatted(cell),
                    }
                )
            row_data.append({"values": cells} if cells else {})
        return {"startRow": 0, "startColumn": 0, "rowData": row_data}

    def _sheets_values_get(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        major, option = self._read_options(request)
        box = self._resolve_range(file, info.range_text)
        return Response.json(self._value_range(box, major, option, check_grid=True))

    def _sheets_values_batchGet(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        major, option = self._read_options(request)
        boxes = [self._resolve_range(file, text) for text in request.query.get("ranges", [])]
        value_ranges = [self._value_range(box, major, option, check_grid=True) for box in boxes]
        return Response.json({"spreadsheetId": file.spreadsheet_id, "valueRanges": value_ranges})

    def _sheets_values_update(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        user_entered = self._input_option(_param(request, "valueInputOption"))
        box = self._resolve_range(file, info.range_text)
        payload = body if isinstance(body, dict) else {}
        result = self._write(box, payload.get("values"), payload.get("majorDimension"), user_entered)
        result = {"spreadsheetId": file.spreadsheet_id, **result}
        if _flag(request, "includeValuesInResponse"):
            result["updatedData"] = self._updated_data(result, file, request)
        return Response.json(result)

    def _sheets_values_batchUpdate(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        payload = body if isinstance(body, dict) else {}
        user_entered = self._input_option(payload.get("valueInputOption"))
        responses = []
        for item in payload.get("data") or []:
            box = self._resolve_range(file, str(item.get("range", "")))
            result = self._write(box, item.get("values"), item.get("majorDimension"), user_entered)
            responses.append({"spreadsheetId": file.spreadsheet_id, **result})
        result_body: dict[str, Any] = {"spreadsheetId": file.spreadsheet_id}
        if responses:
            result_body.update(
                {
                    "totalUpdatedRows": sum(r.get("updatedRows", 0) for r in responses),
                    "totalUpdatedColumns": sum(r.get("updatedColumns", 0) for r in responses),
                    "totalUpdatedCells": sum(r.get("updatedCells", 0) for r in responses),
                    "totalUpdatedSheets": len({r["updatedRange"].rpartition("!")[0] for r in responses}),
                    "responses": responses,
                }
            )
        return Response.json(result_body)

    def _sheets_values_append(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        user_entered = self._input_option(_param(request, "valueInputOption"))
        insert = _param(request, "insertDataOption", "OVERWRITE")
        if insert not in ("OVERWRITE", "INSERT_ROWS"):
            raise _Reply(
                sheets_error(
                    400,
                    f"Invalid value at 'insert_data_option' (type.googleapis.com/"
                    f'google.apps.sheets.v4.InsertDataOption), "{insert}"',
                )
            )
        box = self._resolve_range(file, info.range_text)
        payload = body if isinstance(body, dict) else {}
        matrix = self._input_matrix(payload.get("values"), payload.get("majorDimension"), user_entered)
        sheet = box.sheet
        r0, c0, r1, c1 = box.bounded()
        table = self._find_table(sheet, r0, c0, r1, c1)
        result: dict[str, Any] = {"spreadsheetId": file.spreadsheet_id}
        if table is None:
            write_row, write_col = r0, c0
        else:
            t_r0, t_c0, t_r1, t_c1 = table
            result["tableRange"] = a1(sheet.title, t_r0, t_c0, t_r1, t_c1)
            write_row, write_col = t_r1, t_c0
        height = len(matrix)
        width = max((len(row) for row in matrix), default=0)
        if width and write_col + width > sheet.col_count:
            cell_ref = f"{sheet_ref(sheet.title)}!{col_letters(sheet.col_count)}{write_row + 1}"
            raise _Reply(sheets_error(400, self._grid_limit_message(cell_ref, sheet)))
        self._check_protected(file, [(sheet.sheet_id, write_row, write_row + max(1, height))], "")
        if insert == "INSERT_ROWS":
            sheet.insert_rows(write_row, height)
        # appends grow the grid downwards instead of failing like update does
        sheet.row_count = max(sheet.row_count, write_row + height)
        cells = self._put_matrix(sheet, write_row, write_col, matrix)
        updates: dict[str, Any] = {"spreadsheetId": file.spreadsheet_id}
        if height and width:
            updates.update(
                {
                    "updatedRange": a1(
                        sheet.title, write_row, write_col, write_row + height, write_col + width
                    ),
                    "updatedRows": height,
                    "updatedColumns": width,
                    "updatedCells": cells,
                }
            )
        else:
            updates["updatedRange"] = a1(sheet.title, write_row, write_col, write_row + 1, write_col + 1)
        if _flag(request, "includeValuesInResponse"):
            updates["updatedData"] = self._updated_data(updates, file, request)
        result["updates"] = updates
        return Response.json(result)

    @staticmethod
    def _find_table(sheet: Sheet, r0: int, c0: int, r1: int, c1: int) -> tuple[int, int, int, int] | None:
        """The "logical table" append writes after: the block of data around the range's first non-empty cell.

        The range only seeds the search; the table itself may extend past it (``table_range="A1"`` appends
        after the whole table starting at A1), and it ends at the first row that is empty across its columns.
        """
        seed = next(
            (
                (r, c)
                for r in range(r0, min(r1, len(sheet.rows)))
                for c in range(c0, min(c1, len(sheet.rows[r])))
                if sheet.rows[r][c] is not None
            ),
            None,
        )
        if seed is None:
            return None

        def grow(row: list[Cell | None], lo: int, hi: int) -> tuple[int, int]:
            while 0 < lo <= len(row) and row[lo - 1] is not None:
                lo -= 1
            while hi < len(row) and row[hi] is not None:
                hi += 1
            return lo, hi

        top, col = seed
        lo, hi = grow(sheet.rows[top], col, col + 1)
        bottom = top
        while bottom + 1 < len(sheet.rows) and not sheet.row_is_empty(bottom + 1, lo, hi):
            bottom += 1
            lo, hi = grow(sheet.rows[bottom], lo, hi)
        return top, lo, bottom + 1, hi

    def _sheets_values_clear(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        box = self._resolve_range(file, info.range_text)
        return Response.json({"spreadsheetId": file.spreadsheet_id, "clearedRange": self._clear(box)})

    def _sheets_values_batchClear(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        ranges = (body.get("ranges") if isinstance(body, dict) else None) or []
        cleared = [self._clear(self._resolve_range(file, str(text))) for text in ranges]
        return Response.json({"spreadsheetId": file.spreadsheet_id, "clearedRanges": cleared})
