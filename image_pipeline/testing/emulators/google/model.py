"""The emulator's state as data: a ``Sheet`` (grid size, rows of cells, frozen rows), a ``Protection``,
a ``SpreadsheetFile`` (its sheets, owner, sharing, version and times), a service account and an issued
token, and ``GridBox``, a parsed range. Plain dataclasses with no I/O; the handlers change them under the
emulator's lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from image_pipeline.testing.emulators.google.a1_notation import a1
from image_pipeline.testing.emulators.google.cells import Cell, single_ref
from image_pipeline.testing.emulators.google.constants import DEFAULT_COLS, DEFAULT_ROWS


@dataclass
class Sheet:
    sheet_id: int
    title: str
    row_count: int = DEFAULT_ROWS
    col_count: int = DEFAULT_COLS
    rows: list[list[Cell | None]] = field(default_factory=list)
    frozen_rows: int = 0
    frozen_cols: int = 0
    hidden: bool = False

    def get(self, r: int, c: int, depth: int = 0) -> Cell | None:
        cell = self.rows[r][c] if r < len(self.rows) and c < len(self.rows[r]) else None
        ref = single_ref(cell.formula) if cell is not None and cell.formula else None
        if cell is None or ref is None:
            return cell
        # A reference is live: it shows what the referenced cell holds now (a circular one is #REF!,
        # as Sheets shows "Circular dependency detected"; an empty one shows as empty).
        target = None if depth > 50 else self.get(ref[0], ref[1], depth + 1)
        value = "#REF!" if depth > 50 else (target.value if target is not None else "")
        return Cell(value, formula=cell.formula)

    def put(self, r: int, c: int, cell: Cell | None) -> None:
        if cell is None and self.get(r, c) is None:
            return
        while len(self.rows) <= r:
            self.rows.append([])
        row = self.rows[r]
        while len(row) <= c:
            row.append(None)
        row[c] = cell
        # writes may land outside the grid only through paths that grow it first; keep the grid honest anyway
        self.row_count = max(self.row_count, r + 1)
        self.col_count = max(self.col_count, c + 1)

    def row_is_empty(self, r: int, c0: int = 0, c1: int | None = None) -> bool:
        if r >= len(self.rows):
            return True
        row = self.rows[r]
        return all(cell is None for cell in row[c0 : len(row) if c1 is None else c1])

    def last_data_row(self) -> int:
        """0-based index of the last row holding anything, -1 when the sheet is empty."""
        for r in range(len(self.rows) - 1, -1, -1):
            if not self.row_is_empty(r):
                return r
        return -1

    def insert_rows(self, at: int, count: int) -> None:
        if at < len(self.rows):
            self.rows[at:at] = [[] for _ in range(count)]
        self.row_count += count

    def delete_rows(self, start: int, end: int) -> None:
        del self.rows[start:end]
        self.row_count -= end - start

    def insert_cols(self, at: int, count: int) -> None:
        for row in self.rows:
            if at < len(row):
                row[at:at] = [None] * count
        self.col_count += count

    def delete_cols(self, start: int, end: int) -> None:
        for row in self.rows:
            del row[start:end]
        self.col_count -= end - start

    def properties(self, index: int) -> dict[str, Any]:
        grid: dict[str, Any] = {"rowCount": self.row_count, "columnCount": self.col_count}
        if self.frozen_rows:
            grid["frozenRowCount"] = self.frozen_rows
        if self.frozen_cols:
            grid["frozenColumnCount"] = self.frozen_cols
        props: dict[str, Any] = {
            "sheetId": self.sheet_id,
            "title": self.title,
            "index": index,
            "sheetType": "GRID",
            "gridProperties": grid,
        }
        if self.hidden:
            props["hidden"] = True
        return props


@dataclass
class Protection:
    """A protected sheet (rows None) or band of rows [r0, r1) of one sheet; 0-based, half-open."""

    protected_range_id: int
    sheet_id: int
    rows: tuple[int, int] | None
    editors: frozenset[str] = frozenset()

    def covers(self, sheet_id: int, r0: int | None, r1: int | None) -> bool:
        """Does a change of rows [r0, r1) of the sheet touch it? ``r0 is None``: a change of the sheet's
        structure (columns, grid size, the sheet itself), which touches any protection on it."""
        if sheet_id != self.sheet_id:
            return False
        if self.rows is None or r0 is None:
            return True
        end = r1 if r1 is not None else r0 + 1
        return r0 < self.rows[1] and self.rows[0] < end


@dataclass
class SpreadsheetFile:
    spreadsheet_id: str
    title: str
    sheets: list[Sheet]
    owner_email: str
    share_all: bool
    shared: set[str]
    unshared: set[str]
    created_ms: int
    modified_ms: int
    version: int = 1
    # shared as Viewer: may read, every write is refused with 403 like the real API
    readers: set[str] = field(default_factory=set)
    locale: str = "en_US"
    time_zone: str = "Etc/GMT"
    # protected ranges (Data > Protect sheets and ranges): only the owner and their editors may change them
    protections: list[Protection] = field(default_factory=list)

    def sheet_by_title(self, title: str) -> Sheet | None:
        for sheet in self.sheets:
            if sheet.title == title:
                return sheet
        # A1 references match sheet names case-insensitively, and addSheet / a rename refuse a title that
        # differs from an existing one only in case (`A sheet with the name "Done" already exists`), both
        # through this lookup (../shared/real-services.md, Google section)
        lowered = title.lower()
        return next((s for s in self.sheets if s.title.lower() == lowered), None)

    def sheet_by_id(self, sheet_id: Any) -> Sheet | None:
        return next((s for s in self.sheets if s.sheet_id == sheet_id), None)


@dataclass
class _Account:
    email: str
    client_id: str
    key_id: str
    private_key: rsa.RSAPrivateKey
    public_keys: dict[str, rsa.RSAPublicKey]


@dataclass
class _Token:
    email: str
    scopes: frozenset[str]
    expires_at: float


@dataclass
class GridBox:
    """A parsed range: 0-based, half-open; ``None`` ends are unbounded (run to the grid edge)."""

    sheet: Sheet
    r0: int
    c0: int
    r1: int | None
    c1: int | None
    text: str
    anchor: bool = False  # a single cell: reads see that cell, writes spill right and down from it

    def bounded(self) -> tuple[int, int, int, int]:
        r1 = self.sheet.row_count if self.r1 is None else self.r1
        c1 = self.sheet.col_count if self.c1 is None else self.c1
        return self.r0, self.c0, r1, c1

    def a1(self) -> str:
        r0, c0, r1, c1 = self.bounded()
        return a1(self.sheet.title, r0, c0, max(r1, r0 + 1), max(c1, c0 + 1))
