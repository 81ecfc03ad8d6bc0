"""The embedded default: the queue and Done as CSV files in a folder (the local workbook)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import Field

from image_pipeline.domain.checks import Check, fail, ok, warn
from image_pipeline.domain.errors import PipelineError, QueueFormatError
from image_pipeline.services.files import atomic_write
from image_pipeline.services.sheets.queue import PromptSheet
from image_pipeline.services.sheets.table import SHEETS, CellWrite, TableBackend, _trim


class WorkbookBackend(TableBackend):
    """CSV files in a folder; every change is a whole-file atomic replace under an exclusive lock."""

    atomic = True

    def __init__(self, folder: Path, process: str, done: str) -> None:
        super().__init__(process, done)
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_path = folder / ".workbook.lock"
        self._local = threading.local()  # re-entrancy is per thread; flock excludes other threads/processes

    def path(self, worksheet: str) -> Path:
        return self.folder / f"{worksheet.strip().lower()}.csv"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            # A fresh open file description per acquisition, so flock also excludes other threads
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._local.fd = fd
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            if self._local.depth == 0:
                fcntl.flock(self._local.fd, fcntl.LOCK_UN)
                os.close(self._local.fd)

    def _read_raw(self, worksheet: str) -> list[list[str]]:
        path = self.path(worksheet)
        if not path.exists():
            if worksheet == self.process:
                raise QueueFormatError(
                    f"the local workbook has no {path.name} in {self.folder}; "
                    "create it with a header row (prompt) or run `make run` to copy the sample",
                    service="workbook",
                )
            return []
        # utf-8-sig: spreadsheet programs often save CSV with a byte-order mark
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return [list(r) for r in csv.reader(fh)]

    def _write_raw(self, worksheet: str, table: list[list[str]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(table)
        # durable: the workbook is the only copy of a person's queue
        atomic_write(self.path(worksheet), buf.getvalue().encode("utf-8"), durable=True)

    def read(self, worksheet: str) -> list[list[str]]:
        with self.transaction():
            return _trim(self._read_raw(worksheet))

    def write_cells(self, worksheet: str, cells: Sequence[CellWrite]) -> None:
        with self.transaction():
            table = self._read_raw(worksheet)
            for c in cells:
                while len(table) < c.row:
                    table.append([])
                row = table[c.row - 1]
                while len(row) < c.col:
                    row.append("")
                row[c.col - 1] = c.value
            self._write_raw(worksheet, table)

    def append(self, worksheet: str, rows: Sequence[Sequence[str]]) -> None:
        with self.transaction():
            table = _trim(self._read_raw(worksheet))
            table.extend([list(r) for r in rows])
            self._write_raw(worksheet, table)

    def delete_rows(self, worksheet: str, row_numbers: Sequence[int]) -> None:
        with self.transaction():
            table = self._read_raw(worksheet)
            drop = set(row_numbers)
            self._write_raw(worksheet, [r for i, r in enumerate(table, start=1) if i not in drop])

    def insert_row(self, worksheet: str, row_number: int, cells: Sequence[str]) -> None:
        with self.transaction():
            table = self._read_raw(worksheet)
            table.insert(row_number - 1, list(cells))
            self._write_raw(worksheet, table)

    def change_token(self) -> str:
        try:
            st = self.path(self.process).stat()
        except FileNotFoundError:
            return "missing"
        return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"

    def describe(self) -> str:
        return f"local workbook {self.folder}"


class LocalWorkbook(PromptSheet):
    """Embedded default: ``process.csv`` and ``done.csv`` in a folder, edited by hand."""

    folder: str = Field(description="Folder holding process.csv and done.csv.")

    def _make_backend(self) -> TableBackend:
        return WorkbookBackend(Path(self.folder), self.process_worksheet, self.done_worksheet)

    def preflight(self) -> list[Check]:
        backend = WorkbookBackend(Path(self.folder), self.process_worksheet, self.done_worksheet)
        checks = [ok(SHEETS, "workbook", f"local workbook {self.folder} (no Google credentials set)")]
        process, done = backend.path(self.process_worksheet), backend.path(self.done_worksheet)
        if not process.exists():
            checks.append(
                warn(
                    SHEETS,
                    "worksheets present",
                    f"no {process.name} yet",
                    "`make run` copies the sample queue there; or create it with 'prompt' in row 1",
                )
            )
        else:
            checks.append(
                ok(SHEETS, "worksheets present", f"{process.name}; {done.name} is made on the first log")
            )
            try:
                process_header = backend.read_header(self.process_worksheet)
                done_header = backend.read_header(self.done_worksheet) if done.exists() else None
            except PipelineError as exc:
                checks.append(fail(SHEETS, "header as expected", str(exc), "fix the file's format"))
            else:
                checks.append(self._header_check(process_header, done_header))
        existing = Path(self.folder)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if os.access(existing, os.W_OK):
            checks.append(ok(SHEETS, "write permission", f"{existing} is writable"))
        else:
            checks.append(
                fail(SHEETS, "write permission", f"{existing} is not writable", "set IMAGE_PIPELINE_WORKBOOK")
            )
        return checks
