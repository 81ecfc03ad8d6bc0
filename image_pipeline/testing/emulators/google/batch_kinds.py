"""The request kinds of ``spreadsheets.batchUpdate`` the emulator knows: delete/insert/appendDimension,
add/deleteSheet, updateSheetProperties, copyPaste, updateCells and updateSpreadsheetProperties.

Each is a function of the emulator (``self`` is the GoogleEmulator) bound as a ``_req_<kind>`` method in
the GoogleEmulator class body (server.py), where batchUpdate looks it up by name. They are bound there
rather than inherited from a mixin so that a test can take one away from the class
(``monkeypatch.delattr(GoogleEmulator, "_req_copyPaste")``) and play an implementation of the API that
lacks it.
"""

from __future__ import annotations

import copy
from typing import Any

from image_pipeline.testing.emulators.google.cells import Cell, _cell_from_extended, rebase_formula
from image_pipeline.testing.emulators.google.constants import DEFAULT_COLS, DEFAULT_ROWS
from image_pipeline.testing.emulators.google.errors import _Reply, sheets_error
from image_pipeline.testing.emulators.google.model import Sheet, SpreadsheetFile


def _req_deleteDimension(self, file: SpreadsheetFile, spec: dict[str, Any], where: str) -> dict[str, Any]:
    rng = spec.get("range") or {}
    sheet, rows = self._dimension_target(file, rng, where)
    count = sheet.row_count if rows else sheet.col_count
    noun = "row" if rows else "column"
    start = int(rng.get("startIndex", 0))
    end = int(rng.get("endIndex", count))
    if start < 0 or end <= start:
        raise _Reply(
            sheets_error(400, f"{where}: Invalid dimensionRange: startIndex must be less than endIndex.")
        )
    if end > count:
        raise _Reply(
            sheets_error(
                400,
                f"{where}: Cannot delete a {noun} that doesn't exist. "
                f"Tried to delete {noun} index {end - 1} but there are only {count} {noun}s.",
            )
        )
    if start == 0 and end == count:
        raise _Reply(sheets_error(400, f"{where}: You can't delete all the {noun}s on the sheet."))
    frozen = sheet.frozen_rows if rows else sheet.frozen_cols
    if frozen and count - (end - start) <= frozen:
        raise _Reply(
            sheets_error(400, f"{where}: Sorry, it is not possible to delete all non-frozen {noun}s.")
        )
    if rows:
        sheet.delete_rows(start, end)
    else:
        sheet.delete_cols(start, end)
    return {}


def _req_insertDimension(self, file: SpreadsheetFile, spec: dict[str, Any], where: str) -> dict[str, Any]:
    rng = spec.get("range") or {}
    sheet, rows = self._dimension_target(file, rng, where)
    count = sheet.row_count if rows else sheet.col_count
    start, end = int(rng.get("startIndex", 0)), int(rng.get("endIndex", 0))
    if start < 0 or end <= start:
        raise _Reply(
            sheets_error(400, f"{where}: Invalid dimensionRange: startIndex must be less than endIndex.")
        )
    if start > count:
        raise _Reply(
            sheets_error(
                400,
                f"{where}: range.startIndex ({start}) must be <= the number of "
                f"{'rows' if rows else 'columns'} ({count}).",
            )
        )
    if spec.get("inheritFromBefore") and start == 0:
        raise _Reply(sheets_error(400, f"{where}: Cannot inherit from before when inserting at index 0."))
    if rows:
        sheet.insert_rows(start, end - start)
    else:
        sheet.insert_cols(start, end - start)
    return {}


def _req_appendDimension(self, file: SpreadsheetFile, spec: dict[str, Any], where: str) -> dict[str, Any]:
    sheet, rows = self._dimension_target(file, spec, where)
    length = int(spec.get("length", 0))
    if length <= 0:
        raise _Reply(sheets_error(400, f"{where}: length must be greater than 0."))
    if rows:
        sheet.row_count += length
    else:
        sheet.col_count += length
    return {}


def _req_addSheet(self, file: SpreadsheetFile, spec: dict[str, Any], where: str) -> dict[str, Any]:
    props = spec.get("properties") or {}
    title = props.get("title")
    if not title:
        n = len(file.sheets) + 1
        while file.sheet_by_title(f"Sheet{n}") is not None:
            n += 1
        title = f"Sheet{n}"
    if file.sheet_by_title(title) is not None:
        raise _Reply(
            sheets_error(
                400,
                f'{where}: A sheet with the name "{title}" already exists. Please enter another name.',
            )
        )
    sheet_id = props.get("sheetId")
    if sheet_id is None:
        sheet_id = self._new_sheet_id(file)
    elif file.sheet_by_id(sheet_id) is not None:
        raise _Reply(sheets_error(400, f"{where}: Sheet with id {sheet_id} already exists."))
    grid = props.get("gridProperties") or {}
    sheet = Sheet(
        sheet_id=int(sheet_id),
        title=title,
        row_count=int(grid.get("rowCount", DEFAULT_ROWS)),
        col_count=int(grid.get("columnCount", DEFAULT_COLS)),
        frozen_rows=int(grid.get("frozenRowCount", 0)),
        frozen_cols=int(grid.get("frozenColumnCount", 0)),
        hidden=bool(props.get("hidden", False)),
    )
    index = props.get("index")
    position = len(file.sheets) if index is None else max(0, min(int(index), len(file.sheets)))
    file.sheets.insert(position, sheet)
    return {"addSheet": {"properties": sheet.properties(position)}}


def _req_deleteSheet(self, file: SpreadsheetFile, spec: dict[str, Any], where: str) -> dict[str, Any]:
    sheet = file.sheet_by_id(spec.get("sheetId"))
    if sheet is None:
        raise _Reply(sheets_error(400, f"{where}: No sheet with id: {spec.get('sheetId')}"))
    if len(file.sheets) == 1:
        raise _Reply(sheets_error(400, f"{where}: You can't remove all the sheets in a document."))
    file.sheets.remove(sheet)
    return {}


def _req_updateSheetProperties(
    self, file: SpreadsheetFile, spec: dict[str, Any], where: str
) -> dict[str, Any]:
    props = spec.get("properties") or {}
    sheet = file.sheet_by_id(props.get("sheetId", 0))
    if sheet is None:
        raise _Reply(sheets_error(400, f"{where}: No grid with id: {props.get('sheetId', 0)}"))
    fields = str(spec.get("fields") or "")
    if not fields:
        raise _Reply(sheets_error(400, f"{where}: At least one field must be updated."))
    grid = props.get("gridProperties") or {}
    wanted = {f.strip().replace("/", ".") for f in fields.split(",")}
    everything = "*" in wanted

    def chosen(name: str) -> bool:
        return everything or name in wanted or name.split(".")[0] in wanted

    if chosen("title") and "title" in props:
        other = file.sheet_by_title(props["title"])
        if other is not None and other is not sheet:
            raise _Reply(
                sheets_error(
                    400,
                    f'{where}: A sheet with the name "{props["title"]}" already '
                    "exists. Please enter another name.",
                )
            )
        sheet.title = props["title"]
    if chosen("gridProperties.rowCount") and "rowCount" in grid:
        sheet.row_count = int(grid["rowCount"])
        del sheet.rows[sheet.row_count :]
    if chosen("gridProperties.columnCount") and "columnCount" in grid:
        sheet.col_count = int(grid["columnCount"])
        for row in sheet.rows:
            del row[sheet.col_count :]
    if chosen("gridProperties.frozenRowCount") and "frozenRowCount" in grid:
        sheet.frozen_rows = int(grid["frozenRowCount"])
    if chosen("gridProperties.frozenColumnCount") and "frozenColumnCount" in grid:
        sheet.frozen_cols = int(grid["frozenColumnCount"])
    if chosen("hidden") and "hidden" in props:
        sheet.hidden = bool(props["hidden"])
    if chosen("index") and "index" in props:
        file.sheets.remove(sheet)
        file.sheets.insert(max(0, min(int(props["index"]), len(file.sheets))), sheet)
    return {}


def _req_copyPaste(self, file: SpreadsheetFile, spec: dict[str, Any], where: str) -> dict[str, Any]:
    src, sr0, sc0, sr1, sc1 = self._grid_box(file, spec.get("source"), where, "source")
    dst, dr0, dc0, dr1, dc1 = self._grid_box(file, spec.get("destination"), where, "destination")
    paste = spec.get("pasteType", "PASTE_NORMAL")
    if paste not in (
        "PASTE_NORMAL",
        "PASTE_VALUES",
        "PASTE_FORMAT",
        "PASTE_NO_BORDERS",
        "PASTE_FORMULA",
        "PASTE_DATA_VALIDATION",
        "PASTE_CONDITIONAL_FORMATTING",
    ):
        raise _Reply(sheets_error(400, f"{where}: Invalid value at 'pasteType': {paste}"))
    if paste in ("PASTE_FORMAT", "PASTE_DATA_VALIDATION", "PASTE_CONDITIONAL_FORMATTING"):
        return {}
    height, width = sr1 - sr0, sc1 - sc0
    if height == 0 or width == 0:
        return {}
    # the source is read whole before anything is written, so overlapping ranges copy what was there
    block = [[src.get(sr0 + r, sc0 + c) for c in range(width)] for r in range(height)]
    # a destination that is a multiple of the source repeats it; a smaller one still takes it whole
    reps_r = max(1, (dr1 - dr0) // height) if (dr1 - dr0) % height == 0 else 1
    reps_c = max(1, (dc1 - dc0) // width) if (dc1 - dc0) % width == 0 else 1
    if dr0 + height * reps_r > dst.row_count or dc0 + width * reps_c > dst.col_count:
        raise _Reply(
            sheets_error(
                400,
                f"{where}: Range ('{dst.title}'!R{dr0 + 1}C{dc0 + 1}:R{dr0 + height * reps_r}"
                f"C{dc0 + width * reps_c}) exceeds grid limits. "
                f"Max rows: {dst.row_count}, max columns: {dst.col_count}",
            )
        )
    for i in range(reps_r):
        for j in range(reps_c):
            for r in range(height):
                for c in range(width):
                    cell = block[r][c]
                    if cell is not None and paste == "PASTE_VALUES":
                        cell = Cell(cell.value)
                    elif cell is not None and cell.formula is not None:
                        # PASTE_NORMAL pastes the formula, re-based on where it lands
                        moved = rebase_formula(cell.formula, dr0 + i * height - sr0, dc0 + j * width - sc0)
                        cell = Cell("#REF!" if moved == "=#REF!" else cell.value, moved)
                    elif cell is not None:
                        cell = copy.copy(cell)
                    dst.put(dr0 + i * height + r, dc0 + j * width + c, cell)
    return {}


def _req_updateCells(self, file: SpreadsheetFile, spec: dict[str, Any], where: str) -> dict[str, Any]:
    fields = str(spec.get("fields") or "")
    if not fields:
        raise _Reply(sheets_error(400, f"{where}: At least one field must be specified in 'fields'."))
    if "range" in spec and "start" in spec:
        raise _Reply(sheets_error(400, f"{where}: Only one of range or start may be set."))
    wanted = {f.strip() for f in fields.split(",")}
    touches_values = bool(wanted & {"*", "userEnteredValue", "userEnteredValue.stringValue"})
    if "range" in spec:
        sheet, r0, c0, r1, c1 = self._grid_box(file, spec["range"], where, "range")
    else:
        start = spec.get("start") or {}
        sheet, r0, c0, _, _ = self._grid_box(
            file,
            {
                "sheetId": start.get("sheetId", 0),
                "startRowIndex": start.get("rowIndex", 0),
                "startColumnIndex": start.get("columnIndex", 0),
            },
            where,
            "start",
        )
        r1, c1 = sheet.row_count, sheet.col_count
    rows = spec.get("rows") or []
    if not touches_values:
        return {}
    for r in range(r0, r1):
        data = rows[r - r0].get("values", []) if r - r0 < len(rows) else None
        if data is None and "range" not in spec:
            break
        for c in range(c0, c1):
            entry = data[c - c0] if data is not None and c - c0 < len(data) else None
            if data is not None and "range" not in spec and c - c0 >= len(data):
                break
            value = (entry or {}).get("userEnteredValue") if isinstance(entry, dict) else None
            sheet.put(r, c, _cell_from_extended(value, where))
    return {}


def _req_updateSpreadsheetProperties(
    self, file: SpreadsheetFile, spec: dict[str, Any], where: str
) -> dict[str, Any]:
    props = spec.get("properties") or {}
    fields = str(spec.get("fields") or "")
    if not fields:
        raise _Reply(sheets_error(400, f"{where}: At least one field must be updated."))
    wanted = {f.strip() for f in fields.split(",")}
    if ("title" in wanted or "*" in wanted) and props.get("title"):
        file.title = str(props["title"])
    if ("timeZone" in wanted or "*" in wanted) and props.get("timeZone"):
        file.time_zone = str(props["timeZone"])
    if ("locale" in wanted or "*" in wanted) and props.get("locale"):
        file.locale = str(props["locale"])
    return {}
