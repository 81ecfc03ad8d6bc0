"""The values layer under the Sheets handlers: read options and valueInputOption, a range text resolved
to a ``GridBox`` (quoted sheet names, bare A1, reversed corners), a box rendered as a ValueRange, input
values parsed to a matrix of cells and written (with the grid-limit and range-bound refusals), and clears.
"""

from __future__ import annotations

from typing import Any

from image_pipeline.testing.emulators.base import Request
from image_pipeline.testing.emulators.google.a1_notation import _A1_END, a1, col_index, col_letters
from image_pipeline.testing.emulators.google.cells import _SKIP, Cell, _Skip, parse_input, render
from image_pipeline.testing.emulators.google.constants import MAX_CELL_CHARS
from image_pipeline.testing.emulators.google.errors import _Reply, sheets_error
from image_pipeline.testing.emulators.google.model import GridBox, Sheet, SpreadsheetFile
from image_pipeline.testing.emulators.google.wire import _param


class ValuesAccess:
    """Mixed into GoogleEmulator (server.py): range resolution and value reads/writes."""

    # ---------------------------------------------------------------- values helpers
    def _read_options(self, request: Request) -> tuple[str, str]:
        major = _param(request, "majorDimension") or "ROWS"
        if major == "DIMENSION_UNSPECIFIED":
            major = "ROWS"
        if major not in ("ROWS", "COLUMNS"):
            raise _Reply(
                sheets_error(
                    400,
                    f"Invalid value at 'major_dimension' (type.googleapis.com/"
                    f'google.apps.sheets.v4.Dimension), "{major}"',
                )
            )
        option = _param(request, "valueRenderOption") or "FORMATTED_VALUE"
        if option not in ("FORMATTED_VALUE", "UNFORMATTED_VALUE", "FORMULA"):
            raise _Reply(
                sheets_error(
                    400,
                    f"Invalid value at 'value_render_option' (type.googleapis.com/"
                    f'google.apps.sheets.v4.ValueRenderOption), "{option}"',
                )
            )
        return major, option

    @staticmethod
    def _input_option(option: Any) -> bool:
        """True for USER_ENTERED; Google rejects a missing or unknown option."""
        if option in (None, "", "INPUT_VALUE_OPTION_UNSPECIFIED"):
            raise _Reply(sheets_error(400, "'valueInputOption' is required but not specified"))
        if option not in ("RAW", "USER_ENTERED"):
            raise _Reply(
                sheets_error(
                    400,
                    f"Invalid value at 'value_input_option' (type.googleapis.com/"
                    f'google.apps.sheets.v4.ValueInputOption), "{option}"',
                )
            )
        return option == "USER_ENTERED"

    def _resolve_range(self, file: SpreadsheetFile, text: str) -> GridBox:
        unparseable = _Reply(sheets_error(400, f"Unable to parse range: {text}"))
        sheet: Sheet | None
        cells: str | None
        if text.startswith("'"):
            name_chars: list[str] = []
            i = 1
            while i < len(text):
                if text[i] == "'":
                    if text[i + 1 : i + 2] == "'":
                        name_chars.append("'")
                        i += 2
                        continue
                    break
                name_chars.append(text[i])
                i += 1
            else:
                raise unparseable
            rest = text[i + 1 :]
            if rest and not rest.startswith("!"):
                raise unparseable
            sheet = file.sheet_by_title("".join(name_chars))
            cells = rest[1:] if rest else None
        elif "!" in text:
            name, _, cells = text.rpartition("!")
            sheet = file.sheet_by_title(name)
        else:
            sheet = file.sheet_by_title(text) if text else None
            cells = None
            if sheet is None:
                # a bare A1 range refers to the first sheet
                sheet, cells = (file.sheets[0] if file.sheets else None), text
        if sheet is None:
            raise unparseable
        if cells is None:
            return GridBox(sheet, 0, 0, None, None, text)
        parsed = self._parse_a1(cells)
        if parsed is None:
            raise unparseable
        return GridBox(sheet, *parsed, text=text, anchor=":" not in cells)

    @staticmethod
    def _parse_a1(cells: str) -> tuple[int, int, int | None, int | None] | None:
        start, colon, end = cells.partition(":")
        m1 = _A1_END.match(start)
        if not start or m1 is None:
            return None
        sc = col_index(m1[1]) if m1[1] else None
        sr = int(m1[2]) - 1 if m1[2] else None
        if not colon:
            if sc is None or sr is None:
                return None
            return sr, sc, sr + 1, sc + 1
        m2 = _A1_END.match(end)
        if not end or m2 is None:
            return None
        ec = col_index(m2[1]) + 1 if m2[1] else None
        er = int(m2[2]) if m2[2] else None
        r0, c0 = sr or 0, sc or 0
        # Google normalises reversed corners ("B2:A1")
        if er is not None and er <= r0:
            r0, er = er - 1, r0 + 1
        if ec is not None and ec <= c0:
            c0, ec = ec - 1, c0 + 1
        return r0, c0, er, ec

    @staticmethod
    def _grid_limit_message(range_text: str, sheet: Sheet) -> str:
        return (
            f"Range ({range_text}) exceeds grid limits. Max rows: {sheet.row_count}, "
            f"max columns: {sheet.col_count}"
        )

    def _value_range(self, box: GridBox, major: str, option: str, check_grid: bool) -> dict[str, Any]:
        sheet = box.sheet
        r0, c0, r1, c1 = box.bounded()
        if check_grid and (
            r0 >= sheet.row_count or c0 >= sheet.col_count or r1 > sheet.row_count or c1 > sheet.col_count
        ):
            raise _Reply(sheets_error(400, self._grid_limit_message(box.text, sheet)))
        grid = [[sheet.get(r, c) for c in range(c0, c1)] for r in range(r0, min(r1, len(sheet.rows)))]
        if major == "COLUMNS":
            grid = [list(col) for col in zip(*grid, strict=True)] if grid else []
        out = [[render(cell, option) for cell in self._trim_row(line)] for line in grid]
        while out and not out[-1]:
            out.pop()
        result: dict[str, Any] = {"range": box.a1(), "majorDimension": major}
        if out:
            result["values"] = out
        return result

    @staticmethod
    def _trim_row(row: list[Cell | None]) -> list[Cell | None]:
        end = len(row)
        while end and row[end - 1] is None:
            end -= 1
        return row[:end]

    def _input_matrix(self, values: Any, major: Any, user_entered: bool) -> list[list[Cell | None | _Skip]]:
        if values is None:
            return []
        if not isinstance(values, list) or not all(isinstance(row, list | type(None)) for row in values):
            raise _Reply(
                sheets_error(
                    400, "Invalid value at 'data.values' (type.googleapis.com/google.protobuf.ListValue)"
                )
            )
        matrix: list[list[Cell | None | _Skip]] = []
        for i, row in enumerate(values):
            out_row: list[Cell | None | _Skip] = []
            for j, value in enumerate(row or []):
                try:
                    out_row.append(parse_input(value, user_entered))
                except OverflowError as exc:
                    raise _Reply(
                        sheets_error(
                            400,
                            f"Your input contains more than the maximum of {MAX_CELL_CHARS} characters "
                            "in a single cell.",
                        )
                    ) from exc
                except ValueError as exc:
                    raise _Reply(
                        sheets_error(400, f"Invalid values[{i}][{j}]: {exc} value not supported")
                    ) from exc
            matrix.append(out_row)
        if major == "COLUMNS":
            width = max((len(r) for r in matrix), default=0)
            padded = [r + [_SKIP] * (width - len(r)) for r in matrix]
            matrix = [list(col) for col in zip(*padded, strict=True)] if padded else []
        elif major not in (None, "ROWS", "DIMENSION_UNSPECIFIED"):
            raise _Reply(
                sheets_error(
                    400,
                    f"Invalid value at 'data.major_dimension' (type.googleapis.com/"
                    f'google.apps.sheets.v4.Dimension), "{major}"',
                )
            )
        return matrix

    @staticmethod
    def _put_matrix(sheet: Sheet, r0: int, c0: int, matrix: list[list[Cell | None | _Skip]]) -> int:
        written = 0
        for i, row in enumerate(matrix):
            for j, cell in enumerate(row):
                if isinstance(cell, _Skip):
                    continue
                sheet.put(r0 + i, c0 + j, cell)
                written += 1
        return written

    def _write(self, box: GridBox, values: Any, major: Any, user_entered: bool) -> dict[str, Any]:
        matrix = self._input_matrix(values, major, user_entered)
        sheet = box.sheet
        height = len(matrix)
        file = self._file_of(sheet)
        if file is not None and height:
            self._check_protected(file, [(sheet.sheet_id, box.r0, box.r0 + height)], "")
        width = max((len(row) for row in matrix), default=0)
        if not height or not width:
            return {"updatedRange": a1(sheet.title, box.r0, box.c0, box.r0 + 1, box.c0 + 1)}
        if not box.anchor and box.r1 is not None and box.r0 + height > box.r1:
            raise _Reply(
                sheets_error(
                    400,
                    f"Requested writing within range [{box.text}], but tried writing "
                    f"to row [{box.r0 + height}]",
                )
            )
        if not box.anchor and box.c1 is not None and box.c0 + width > box.c1:
            raise _Reply(
                sheets_error(
                    400,
                    f"Requested writing within range [{box.text}], but tried writing "
                    f"to column [{col_letters(box.c0 + width - 1)}]",
                )
            )
        if box.r0 + height > sheet.row_count or box.c0 + width > sheet.col_count:
            raise _Reply(sheets_error(400, self._grid_limit_message(box.text, sheet)))
        cells = self._put_matrix(sheet, box.r0, box.c0, matrix)
        return {
            "updatedRange": a1(sheet.title, box.r0, box.c0, box.r0 + height, box.c0 + width),
            "updatedRows": height,
            "updatedColumns": width,
            "updatedCells": cells,
        }

    def _updated_data(
        self, result: dict[str, Any], file: SpreadsheetFile, request: Request
    ) -> dict[str, Any]:
        option = _param(request, "responseValueRenderOption") or "FORMATTED_VALUE"
        box = self._resolve_range(file, result["updatedRange"])
        return self._value_range(box, "ROWS", option, check_grid=False)

    def _clear(self, box: GridBox) -> str:
        r0, c0, r1, c1 = box.bounded()
        file = self._file_of(box.sheet)
        if file is not None:
            self._check_protected(file, [(box.sheet.sheet_id, r0, r1)], "")
        for r in range(r0, min(r1, len(box.sheet.rows))):
            row = box.sheet.rows[r]
            for c in range(c0, min(c1, len(row))):
                row[c] = None
        return box.a1()
