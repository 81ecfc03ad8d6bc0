"""What a test does to the emulated Google as a person would: service accounts and their keys (and
deleting one), spreadsheets created, shared and protected, cells typed, rows inserted and deleted, sheets
added; and what it reads back (values as shown, grid size, version, modifiedTime). Plain methods, each
under the emulator's lock, with no HTTP involved.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from image_pipeline.testing.emulators.google.cells import _Skip, formatted, parse_input
from image_pipeline.testing.emulators.google.constants import DEFAULT_COLS, DEFAULT_ROWS, PROJECT_ID
from image_pipeline.testing.emulators.google.model import Protection, Sheet, SpreadsheetFile, _Account
from image_pipeline.testing.emulators.google.wire import _rfc3339


class PersonActions:
    """Mixed into GoogleEmulator (server.py): the test-facing helpers."""

    # ============================================================ test-facing helpers: accounts
    def service_account_info(
        self, email: str = "pipeline@image-pipeline.iam.gserviceaccount.com"
    ) -> dict[str, str]:
        """A complete key JSON whose ``token_uri`` points at this emulator; one RSA key per email."""
        with self._state:
            account = self._accounts.get(email)
            if account is None:
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                key_id = secrets.token_hex(20)
                account = _Account(
                    email=email,
                    client_id=str(self._id_rng.randrange(10**20, 10**21)),
                    key_id=key_id,
                    private_key=key,
                    public_keys={key_id: key.public_key()},
                )
                self._accounts[email] = account
        pem = account.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        return {
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": account.key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": account.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": f"{self.base_url}/token",
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
            + quote(email, safe=""),
            "universe_domain": "googleapis.com",
        }

    def write_service_account_file(
        self, path: str | Path, email: str = "pipeline@image-pipeline.iam.gserviceaccount.com"
    ) -> Path:
        target = Path(path)
        target.write_text(json.dumps(self.service_account_info(email), indent=2), encoding="utf-8")
        return target

    def delete_account(self, email: str) -> None:
        """The service account is deleted in the Cloud console: its key gets `account not found`."""
        with self._state:
            self._accounts.pop(email, None)
            self._tokens = {k: t for k, t in self._tokens.items() if t.email != email}

    def invalidate_tokens(self) -> None:
        """Forget every issued access token, as if they expired: the next API call gets a 401."""
        with self._state:
            self._tokens.clear()

    # ============================================================ test-facing helpers: files
    def create_spreadsheet(
        self,
        title: str,
        sheets: dict[str, list[list[str]]] | None = None,
        owner_email: str | None = None,
        shared_with: Iterable[str] | None = None,
    ) -> str:
        """A new spreadsheet; unless ``shared_with`` is given, every emulator service account can open it."""
        sheets = sheets if sheets else {"Sheet1": []}
        with self._state:
            spreadsheet_id = self._new_spreadsheet_id()
            now = self._next_ms()
            file = SpreadsheetFile(
                spreadsheet_id=spreadsheet_id,
                title=title,
                sheets=[],
                owner_email=owner_email or "sheet-owner@example.com",
                share_all=shared_with is None,
                shared=set(shared_with or ()),
                unshared=set(),
                created_ms=now,
                modified_ms=now,
            )
            for n, (sheet_title, rows) in enumerate(sheets.items()):
                sheet = Sheet(sheet_id=0 if n == 0 else self._new_sheet_id(file), title=sheet_title)
                file.sheets.append(sheet)
                self._person_write(sheet, 0, rows, raw=False)
            self._files[spreadsheet_id] = file
            return spreadsheet_id

    def set_grid(
        self,
        spreadsheet_id: str,
        sheet_title: str,
        *,
        row_count: int | None = None,
        frozen_rows: int | None = None,
    ) -> None:
        """What a person does in the UI: trim the grid to the data, freeze the header row."""
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            if row_count is not None:
                sheet.row_count = row_count
                del sheet.rows[row_count:]
            if frozen_rows is not None:
                sheet.frozen_rows = frozen_rows
            self._touch(self._file(spreadsheet_id))

    def set_cell(self, spreadsheet_id: str, sheet_title: str, row: int, col: int, value: Any) -> None:
        """A person types into one cell (1-based row and column)."""
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            cell = parse_input("" if value is None else value, user_entered=True)
            sheet.put(row - 1, col - 1, None if isinstance(cell, _Skip) else cell)
            self._touch(self._file(spreadsheet_id))

    def share(self, spreadsheet_id: str, email: str, role: str = "writer") -> None:
        """Share with ``email`` as Editor (``writer``) or Viewer (``reader``)."""
        with self._state:
            file = self._file(spreadsheet_id)
            file.shared.add(email)
            file.unshared.discard(email)
            if role == "reader":
                file.readers.add(email)
            else:
                file.readers.discard(email)

    def unshare(self, spreadsheet_id: str, email: str) -> None:
        with self._state:
            file = self._file(spreadsheet_id)
            file.shared.discard(email)
            file.unshared.add(email)

    def values(self, spreadsheet_id: str, sheet_title: str) -> list[list[str]]:
        """The grid as a person sees it: formatted strings, trailing empty cells and rows trimmed."""
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            out = [
                [formatted(sheet.get(r, c)) for c in range(len(self._trim_row(row)))]
                for r, row in enumerate(sheet.rows)
            ]
            while out and not out[-1]:
                out.pop()
            return out

    def is_formula(self, spreadsheet_id: str, sheet_title: str, row: int, col: int) -> bool:
        with self._state:
            cell = self._sheet(spreadsheet_id, sheet_title).get(row - 1, col - 1)
            return cell is not None and cell.formula is not None

    def grid_size(self, spreadsheet_id: str, sheet_title: str) -> tuple[int, int]:
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            return sheet.row_count, sheet.col_count

    def modified_time(self, spreadsheet_id: str) -> str:
        with self._state:
            return _rfc3339(self._file(spreadsheet_id).modified_ms)

    def version(self, spreadsheet_id: str) -> int:
        with self._state:
            return self._file(spreadsheet_id).version

    # Person edits: typed into the UI, so text is parsed like USER_ENTERED unless raw=True.
    def set_values(
        self, spreadsheet_id: str, sheet_title: str, rows: list[list[Any]], *, raw: bool = False
    ) -> None:
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            sheet.rows = []
            self._person_write(sheet, 0, rows, raw=raw)
            self._touch(self._file(spreadsheet_id))

    def append_rows(
        self, spreadsheet_id: str, sheet_title: str, rows: list[list[Any]], *, raw: bool = False
    ) -> None:
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            self._person_write(sheet, sheet.last_data_row() + 1, rows, raw=raw)
            self._touch(self._file(spreadsheet_id))

    def delete_row(self, spreadsheet_id: str, sheet_title: str, row_number: int) -> None:
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            if not 1 <= row_number <= sheet.row_count or sheet.row_count == 1:
                raise IndexError(f"row {row_number} cannot be deleted from a {sheet.row_count}-row grid")
            sheet.delete_rows(row_number - 1, row_number)
            self._touch(self._file(spreadsheet_id))

    def insert_row(
        self, spreadsheet_id: str, sheet_title: str, row_number: int, values: list[Any], *, raw: bool = False
    ) -> None:
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            if not 1 <= row_number <= sheet.row_count + 1:
                raise IndexError(f"row {row_number} is outside a {sheet.row_count}-row grid")
            sheet.insert_rows(row_number - 1, 1)
            self._person_write(sheet, row_number - 1, [values], raw=raw)
            self._touch(self._file(spreadsheet_id))

    def update_cell(
        self, spreadsheet_id: str, sheet_title: str, row: int, col: int, value: Any, *, raw: bool = False
    ) -> None:
        with self._state:
            sheet = self._sheet(spreadsheet_id, sheet_title)
            cell = parse_input("" if value is None else value, user_entered=not raw)
            sheet.put(row - 1, col - 1, None if isinstance(cell, _Skip) else cell)
            self._touch(self._file(spreadsheet_id))

    def add_worksheet(
        self, spreadsheet_id: str, title: str, rows: int = DEFAULT_ROWS, cols: int = DEFAULT_COLS
    ) -> int:
        with self._state:
            file = self._file(spreadsheet_id)
            if file.sheet_by_title(title) is not None:
                raise ValueError(f"a sheet named {title!r} already exists")
            sheet = Sheet(sheet_id=self._new_sheet_id(file), title=title, row_count=rows, col_count=cols)
            file.sheets.append(sheet)
            self._touch(file)
            return sheet.sheet_id

    def protect(
        self,
        spreadsheet_id: str,
        sheet_title: str,
        rows: tuple[int, int] | None = None,
        editors: Iterable[str] = (),
    ) -> int:
        """What the owner does with Data > Protect sheets and ranges: the whole sheet, or rows
        ``(first, last)`` (1-based, inclusive). Only the owner and ``editors`` may then change them."""
        with self._state:
            file = self._file(spreadsheet_id)
            sheet = self._sheet(spreadsheet_id, sheet_title)
            band = (rows[0] - 1, rows[1]) if rows is not None else None
            pid = self._id_rng.randrange(1, 2**31 - 1)
            file.protections.append(Protection(pid, sheet.sheet_id, band, frozenset(editors)))
            return pid

    def unprotect(self, spreadsheet_id: str, protected_range_id: int | None = None) -> None:
        with self._state:
            file = self._file(spreadsheet_id)
            file.protections = [
                p
                for p in file.protections
                if protected_range_id is not None and p.protected_range_id != protected_range_id
            ]

    def delete_worksheet(self, spreadsheet_id: str, title: str) -> None:
        with self._state:
            file = self._file(spreadsheet_id)
            sheet = self._sheet(spreadsheet_id, title)
            if len(file.sheets) == 1:
                raise ValueError("cannot delete the only sheet")
            file.sheets.remove(sheet)
            self._touch(file)
