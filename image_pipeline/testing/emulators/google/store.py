"""The emulator's bookkeeping of its files, shared by every handler: who may read or edit a file, file
and sheet lookup, writes a person types, the strictly increasing clock behind ``modifiedTime``, the version
history that lets Drive lag behind Sheets (``drive_lag_s``), new ids, and the JSON body of a request.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from image_pipeline.testing.emulators.base import Request
from image_pipeline.testing.emulators.google.cells import _Skip, parse_input
from image_pipeline.testing.emulators.google.errors import _Reply, sheets_error
from image_pipeline.testing.emulators.google.model import Sheet, SpreadsheetFile


class FileStore:
    """Mixed into GoogleEmulator (server.py): the internals over its ``_files``, ``_accounts`` and
    ``_drive_history``."""

    @staticmethod
    def _json_body(request: Request) -> Any:
        if not request.body:
            return None
        try:
            return json.loads(request.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Reply(sheets_error(400, f"Invalid JSON payload received. {exc}")) from exc

    def _can_access(self, file: SpreadsheetFile, email: str) -> bool:
        if email == file.owner_email or email in file.shared:
            return True
        return file.share_all and email not in file.unshared and email in self._accounts

    def _can_edit(self, file: SpreadsheetFile, email: str) -> bool:
        return self._can_access(file, email) and (email == file.owner_email or email not in file.readers)

    def _file_of(self, sheet: Sheet) -> SpreadsheetFile | None:
        return next((f for f in self._files.values() if any(s is sheet for s in f.sheets)), None)

    def _file(self, spreadsheet_id: str) -> SpreadsheetFile:
        try:
            return self._files[spreadsheet_id]
        except KeyError:
            raise KeyError(f"no spreadsheet {spreadsheet_id!r} in the emulator") from None

    def _sheet(self, spreadsheet_id: str, title: str) -> Sheet:
        file = self._file(spreadsheet_id)
        sheet = next((s for s in file.sheets if s.title == title), None)
        if sheet is None:
            raise KeyError(f"no sheet {title!r} in spreadsheet {spreadsheet_id!r}")
        return sheet

    def _person_write(self, sheet: Sheet, r0: int, rows: list[list[Any]], raw: bool) -> None:
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                cell = parse_input("" if value is None else value, user_entered=not raw)
                sheet.put(r0 + i, j, None if isinstance(cell, _Skip) else cell)

    def _next_ms(self) -> int:
        # strictly increasing, so two edits in the same millisecond still look like two changes
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        return self._last_ms

    def _touch(self, file: SpreadsheetFile) -> None:
        history = self._drive_history.setdefault(file.spreadsheet_id, deque())
        if self.drive_lag_s > 0 and not history:
            # the state before the first recorded edit is as old as Drive's view can be
            history.append((float("-inf"), file.version, file.modified_ms))
        file.version += 1
        file.modified_ms = self._next_ms()
        if self.drive_lag_s > 0:
            now = time.monotonic()
            history.append((now, file.version, file.modified_ms))
            # keep only the newest state Drive already shows and the ones it will show next
            while len(history) > 1 and history[1][0] <= now - self.drive_lag_s:
                history.popleft()

    def _drive_seen(self, file: SpreadsheetFile) -> tuple[int, int]:
        """(version, modified_ms) as Drive reports them: the file as it was drive_lag_s ago."""
        history = self._drive_history.get(file.spreadsheet_id)
        if self.drive_lag_s <= 0 or not history:
            return file.version, file.modified_ms
        cutoff = time.monotonic() - self.drive_lag_s
        seen = history[0]
        for entry in history:
            if entry[0] > cutoff:
                break
            seen = entry
        return seen[1], seen[2]

    def _new_spreadsheet_id(self) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        while True:
            candidate = "1" + "".join(self._id_rng.choice(alphabet) for _ in range(43))
            if candidate not in self._files:
                return candidate

    def _new_sheet_id(self, file: SpreadsheetFile) -> int:
        while True:
            candidate = self._id_rng.randrange(1, 2**31 - 1)
            if file.sheet_by_id(candidate) is None:
                return candidate
