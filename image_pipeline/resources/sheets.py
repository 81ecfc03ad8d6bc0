"""The prompt sheet: the "Process" queue and the "Done" log.

One resource with two backends that share every rule about the queue:
- ``GoogleSheet``: Google Sheets through gspread + a google-auth service account;
- ``LocalWorkbook``: a folder with ``process.csv`` and ``done.csv`` that a person edits by hand.

The backends only move tables of strings (read a worksheet, write cells, append rows, delete rows, a
cheap change token). Everything that gives rows meaning (ids, headers, the Done column mapping, the
"re-read before removing" rule) lives once, in ``PromptSheet``.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from ..errors import PipelineError, QueueFormatError, ServiceBlocked, TransientError, WriteOutcomeUnknown
from ..files import atomic_write
from ..ledger import REMOVED as LEDGER_REMOVED
from ..ledger import Ledger, process_alive
from ..models import (
    DONE_ALIASES,
    DONE_COLUMNS,
    HOLD,
    ID_COLUMN,
    OPTIONAL_COLUMNS,
    STATUS_COLUMN,
    DoneEntry,
    PromptRow,
    is_valid_id,
    new_prompt_id,
    normalize_header,
)
from ..preflight import Check, fail, ok, skipped, warn
from ..redact import install_log_redaction, redact, register_secret
from ..refusals.google import GoogleAnswer, classify_api, classify_token, is_rows_moved
from ..retry import RetryPolicy, call_with_retry
from ..transport import never_reached_server

log = logging.getLogger("image_pipeline.sheets")

# Outcomes of removing a row from the queue.
REMOVED = "removed"
CHANGED = "changed"  # the row still has the id but its text changed meanwhile: a person edited it, keep it
VANISHED = "vanished"  # no row has the id any more: a person deleted it (or it was removed already)

# A hidden worksheet that receives a copy of the rows a delete removes, in the same atomic batchUpdate,
# so the pipeline knows exactly what it deleted even when people edit the queue at the same moment. Each
# delete adds its own block on top (found again by a nonce the ledger holds), so a copy outlives a crash.
SHEETS = "Sheets"  # the service name in preflight tables
REMOVED_ROWS_WORKSHEET = "_image_pipeline_removed"


class RowsShifted(Exception):
    """A position-based write was refused because the sheet changed shape meanwhile; nothing was applied."""


class CaptureLost(Exception):
    """The copy of the deleted rows is not there (the delete has not taken effect, or not yet)."""


# Each capturing delete puts its copy in a block of its own on top of the hidden worksheet; this many rows
# of older blocks are kept below it (a copy is read back within seconds, or by the next run after a crash).
CAPTURE_KEEP_ROWS = 1000
CAPTURE_MIN_COLUMNS = 26
# An unfinished removal whose owner may still be alive elsewhere is taken over after this long.
REMOVAL_LEASE_S = 600.0


@dataclass(frozen=True)
class CaptureArea:
    """Where one capturing delete copies the rows it removes: a block of the hidden worksheet whose first
    cell is ``nonce``, followed by ``rows`` rows of ``width`` columns (twice: as they were, and as shown)."""

    nonce: str
    rows: int
    width: int


@dataclass
class QueueSnapshot:
    """One read of "Process"."""

    header: list[str]
    rows: list[PromptRow]
    id_column: int | None  # 0-based column index of "id", None when the header has no such column
    token: str = ""  # change token taken right after the read
    status_column: int | None = None  # 0-based index of the optional "status" column

    def by_id(self) -> dict[str, PromptRow]:
        out: dict[str, PromptRow] = {}
        for row in self.rows:
            if row.prompt_id and row.prompt_id not in out:
                out[row.prompt_id] = row
        return out


@dataclass
class CellWrite:
    row: int  # 1-based
    col: int  # 1-based
    value: str


@dataclass
class TableBackend:
    """Moves tables of strings. Row and column numbers are 1-based, like the sheet UI."""

    process: str
    done: str
    notes: list[str] = field(default_factory=list)
    # True when a read and the writes that depend on it cannot interleave with anyone else's edits
    atomic = False

    def read(self, worksheet: str) -> list[list[str]]:
        raise NotImplementedError

    def read_header(self, worksheet: str) -> list[str]:
        table = self.read(worksheet)
        return table[0] if table else []

    def read_many(self, worksheets: Sequence[str | tuple[str, str]]) -> list[list[list[str]]]:
        """Several worksheets at once (one request where the API allows it). An item may be
        ``(worksheet, "1:1")`` for the header row only."""
        out = []
        for item in worksheets:
            name, cells = (item, "") if isinstance(item, str) else item
            out.append([self.read_header(name)] if cells == "1:1" else self.read(name))
        return out

    def write_cells(self, worksheet: str, cells: Sequence[CellWrite]) -> None:
        raise NotImplementedError

    def append(self, worksheet: str, rows: Sequence[Sequence[str]]) -> None:
        raise NotImplementedError

    def delete_rows(self, worksheet: str, row_numbers: Sequence[int]) -> None:
        raise NotImplementedError

    def insert_row(self, worksheet: str, row_number: int, cells: Sequence[str]) -> None:
        raise NotImplementedError

    def delete_rows_capturing(
        self, worksheet: str, row_numbers: Sequence[int], width: int, area: CaptureArea | None = None
    ) -> list[list[str]] | None:
        """Delete rows by position; return the values they showed when deleted (ascending row order), or
        None when the backend cannot tell (the rows were deleted all the same). ``area``: where the copy
        goes, chosen (and recorded) by the caller before the request leaves."""
        self.delete_rows(worksheet, row_numbers)
        return None

    def read_capture(self, area: CaptureArea) -> list[list[str]] | None:
        """The copy an earlier capturing delete made, or None when there is none (it never took effect)."""
        return None

    def restore_captured(self, worksheet: str, placements: Sequence[tuple[int, int]]) -> None:
        """Re-insert captured rows: (row number to insert at, index into the last capture), ascending."""
        raise NotImplementedError

    def change_token(self) -> str:
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold off other writers of this backend between a read and the writes that depend on it."""
        yield

    def describe(self) -> str:
        raise NotImplementedError


def _trim(table: list[list[str]]) -> list[list[str]]:
    """Drop trailing empty cells and rows, as the Sheets API does, so both backends read alike."""
    out = [list(r) for r in table]
    for r in out:
        while r and str(r[-1]) == "":
            r.pop()
    while out and not out[-1]:
        out.pop()
    return out


def _with_usable_ids(snapshot: QueueSnapshot) -> QueueSnapshot:
    """Only rows that carry a valid id of their own (the others get one on the next pass)."""
    seen: set[str] = set()
    rows = []
    for row in snapshot.rows:
        if row.prompt_id and is_valid_id(row.prompt_id) and row.prompt_id not in seen:
            seen.add(row.prompt_id)
            rows.append(row)
    snapshot.rows = rows
    return snapshot


def _same_row(a: PromptRow, b: PromptRow) -> bool:
    return a.prompt_id == b.prompt_id and a.fingerprint() == b.fingerprint()


# Owners of the removals running in this process: an unfinished one whose owner is not among them was
# interrupted (an exception, or a process killed before it read its copy back).
_LIVE_REMOVALS: set[str] = set()


def _removal_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _removal_is_stale(owner: str, created: float) -> bool:
    """Whether an unfinished removal was abandoned: its process is gone (same host), its call in this
    process has returned, or it is older than any removal takes (another host)."""
    try:
        host, pid_text, _ = owner.split(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True
    if time.time() - created > REMOVAL_LEASE_S:
        return True
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return owner not in _LIVE_REMOVALS
    return not process_alive(pid)


def _removal_intent(snapshot: QueueSnapshot, targets: list[PromptRow], area: CaptureArea) -> str:
    """What the next run needs to check a delete it did not see finish: which rows were meant."""
    return json.dumps(
        {
            "header": snapshot.header,
            "width": area.width,
            "targets": [
                {"id": t.prompt_id, "fingerprint": t.fingerprint(), "row": t.row_number} for t in targets
            ],
        }
    )


def _col_letter(col: int) -> str:
    letters = ""
    while col > 0:
        col, rem = divmod(col - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


# ---------------------------------------------------------------------------------------------------
# Local workbook
# ---------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# Google Sheets
# ---------------------------------------------------------------------------------------------------
SHEETS_HOST = "https://sheets.googleapis.com"
DRIVE_HOST = "https://www.googleapis.com"


def _http_client_class(sheets_base: str | None, drive_base: str | None) -> type:
    """A gspread HTTPClient that sends the real requests to another host (a proxy, an emulator)."""
    import gspread

    class RoutedHTTPClient(gspread.HTTPClient):
        def request(self, method: str, endpoint: str, *args: Any, **kwargs: Any) -> Any:
            if sheets_base and endpoint.startswith(SHEETS_HOST):
                endpoint = sheets_base.rstrip("/") + endpoint[len(SHEETS_HOST) :]
            elif drive_base and endpoint.startswith(DRIVE_HOST):
                endpoint = drive_base.rstrip("/") + endpoint[len(DRIVE_HOST) :]
            return super().request(method, endpoint, *args, **kwargs)

    return RoutedHTTPClient


def _google_error(
    exc: BaseException, what: str, *, repeatable: bool = True, account: str = ""
) -> PipelineError:
    """Map gspread / google-auth / requests failures to our typed errors, with clean messages. Google's
    answers are classified by ``image_pipeline.refusals.google``; ``repeatable=False`` for a write that
    must not be sent twice (a 5xx may follow a commit)."""
    import google.auth.exceptions
    import gspread
    import requests

    if isinstance(exc, gspread.exceptions.APIError):
        code = exc.code if isinstance(exc.code, int) and exc.code > 0 else exc.response.status_code
        drive = "/drive/" in str(getattr(exc.response, "url", "") or "")
        answer = GoogleAnswer.from_error(
            code, exc.error if isinstance(exc.error, dict) else None, _retry_after_header(exc.response)
        )
        return classify_api(
            answer,
            what,
            repeatable=repeatable,
            account=account,
            api="Google Drive" if drive else "Google Sheets",
            clean=redact,
        )
    if isinstance(exc, gspread.exceptions.SpreadsheetNotFound):
        return ServiceBlocked(
            f"Google Sheets {what}: no spreadsheet with that title is shared with the service account",
            service="sheets",
            status=404,
        )
    if isinstance(exc, PermissionError):
        return ServiceBlocked(
            f"Google Sheets {what}: permission denied. Share the spreadsheet with the service account's e-mail",
            service="sheets",
            status=403,
        )
    if isinstance(exc, google.auth.exceptions.TransportError):
        return TransientError(f"Google auth {what}: token endpoint unreachable", service="sheets")
    if isinstance(exc, google.auth.exceptions.RefreshError):
        text = redact(str(exc.args[0]) if exc.args else "")[:300]
        return classify_token(text, what, retryable=bool(getattr(exc, "retryable", False)))
    if isinstance(exc, requests.exceptions.JSONDecodeError | ValueError | KeyError):
        return TransientError(
            f"Google Sheets {what}: malformed response ({type(exc).__name__})",
            service="sheets",
            ambiguous=True,
        )
    if isinstance(exc, requests.Timeout):
        return TransientError(
            f"Google Sheets {what}: timed out", service="sheets", ambiguous=not never_reached_server(exc)
        )
    if isinstance(exc, requests.RequestException):
        return TransientError(
            f"Google Sheets {what}: connection failed ({type(exc).__name__})",
            service="sheets",
            ambiguous=not never_reached_server(exc),
        )
    if isinstance(exc, ValueError | KeyError):
        return TransientError(
            f"Google Sheets {what}: malformed response ({type(exc).__name__})", service="sheets"
        )
    return TransientError(f"Google Sheets {what}: {type(exc).__name__}", service="sheets")


def _retry_after_header(response: Any) -> float | None:
    """Retry-After in seconds (Sheets quotas send none; a proxy in front of Google may)."""
    try:
        value = response.headers.get("Retry-After")
        return float(value) if value else None
    except (AttributeError, ValueError):
        return None


class SheetTitles(dict[str, int]):
    """Worksheet title -> sheetId, looked up the way Sheets matches titles: case-insensitively (an A1
    range 'done'!A1 reads "Done", and a second sheet whose title differs only in case is refused with
    `A sheet with the name "Done" already exists`), so a queue named "PROCESS" or a log named "done" is
    found and never added twice (../shared/real-services.md, Google section)."""

    def actual(self, title: str) -> str | None:
        """The title as the spreadsheet spells it, or None when no worksheet has it."""
        if dict.__contains__(self, title):
            return title
        folded = title.casefold()
        return next((t for t in self if t.casefold() == folded), None)

    def __contains__(self, title: object) -> bool:
        return isinstance(title, str) and self.actual(title) is not None

    def __getitem__(self, title: str) -> int:
        return dict.__getitem__(self, self.actual(title) or title)

    def get(self, title: str, default: Any = None) -> Any:  # type: ignore[override]
        actual = self.actual(title)
        return default if actual is None else dict.__getitem__(self, actual)


# (key hash, endpoints, timeout) -> gspread client
_CLIENTS: dict[tuple[Any, ...], Any] = {}
# spreadsheet key -> (when read, worksheet title -> sheetId)
_SHEET_IDS: dict[str, tuple[float, dict[str, int]]] = {}
SHEET_IDS_TTL_S = 600.0


class GoogleSheetsBackend(TableBackend):
    def __init__(
        self,
        *,
        info: dict[str, Any],
        spreadsheet_key: str | None,
        spreadsheet_title: str,
        process: str,
        done: str,
        sheets_base: str | None,
        drive_base: str | None,
        timeout_s: float,
        policy: RetryPolicy,
        quota_retry_s: float,
    ) -> None:
        import gspread

        super().__init__(process, done)
        self._policy = policy
        self._quota_retry_s = quota_retry_s
        self._title = spreadsheet_title
        self._key = spreadsheet_key
        self.service_account_email = str(info.get("client_email", ""))
        # One authorized client per key and endpoints in the process: its access token lasts an hour,
        # so sensor ticks and the runs of `image-pipeline run` do not each fetch a new one.
        cache_key = (
            hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest(),
            sheets_base,
            drive_base,
            timeout_s,
        )
        client = _CLIENTS.get(cache_key)
        if client is None:
            try:
                client = gspread.service_account_from_dict(
                    info, http_client=_http_client_class(sheets_base, drive_base)
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ServiceBlocked(
                    f"the Google service-account key is not usable ({type(exc).__name__}); download a new JSON key",
                    service="sheets",
                ) from None
            # gspread passes timeout=None by default, which disables every timeout
            client.set_timeout(timeout_s)
            _CLIENTS[cache_key] = client
        self._gc = client
        self._sheet_ids: SheetTitles | None = None
        self._capture = True
        self._capture_width = 1
        self._capture_row0 = 0  # the block of the copy the last read found (its nonce row, 0-based)

    # every API call goes through here: typed errors, retries with the service's hint
    def _call(self, what: str, fn: Any, *, repeatable: bool = True) -> Any:
        """One API call with retries. ``repeatable=False`` for writes addressed by position or that add
        rows: when their answer is lost, or is a 5xx (Google may send one after committing the write,
        moneyman#484), they are not repeated (WriteOutcomeUnknown): the caller reads back first."""

        def attempt() -> Any:
            try:
                return fn()
            except PipelineError:
                raise
            except Exception as exc:
                error = _google_error(exc, what, repeatable=repeatable, account=self.service_account_email)
                if isinstance(error, TransientError) and error.ambiguous and not repeatable:
                    raise WriteOutcomeUnknown(
                        f"{error}; the write may have been applied", service="sheets"
                    ) from None
                if isinstance(error, TransientError) and error.status == 429 and error.retry_after is None:
                    # Sheets quotas refill per minute and the 429 carries no Retry-After: short
                    # exponential steps would all land inside the same exhausted minute.
                    error.retry_after = self._quota_retry_s
                raise error from None

        return call_with_retry(attempt, self._policy, what=f"sheets {what}")

    @property
    def http(self) -> Any:
        return self._gc.http_client

    def key(self) -> str:
        if self._key:
            return self._key

        def find() -> str:
            files = self._gc.list_spreadsheet_files(self._title)
            for f in files:
                if f.get("name") == self._title:
                    return str(f["id"])
            raise ServiceBlocked(
                f"no spreadsheet titled {self._title!r} is shared with {self.service_account_email}; "
                "share it with that e-mail as Editor, or set GOOGLE_SHEET_KEY",
                service="sheets",
                status=404,
            )

        self._key = self._call("find spreadsheet", find)
        return self._key

    def sheet_ids(self) -> SheetTitles:
        if self._sheet_ids is None:
            # Worksheet ids rarely change: the process shares them between resource instances (the
            # `run` command and its runs, sensor ticks) for a while instead of paying a read each time.
            # A worksheet removed meanwhile shows as a refused request, which forgets them.
            cached = _SHEET_IDS.get(self.key())
            if cached is not None and time.monotonic() - cached[0] < SHEET_IDS_TTL_S:
                self._sheet_ids = SheetTitles(cached[1])
            else:
                meta = self._call("read metadata", lambda: self.http.fetch_sheet_metadata(self.key()))
                self._sheet_ids = SheetTitles(
                    {s["properties"]["title"]: int(s["properties"]["sheetId"]) for s in meta["sheets"]}
                )
                _SHEET_IDS[self.key()] = (time.monotonic(), dict(self._sheet_ids))
        return self._sheet_ids

    # -- preflight: the cheapest real calls that prove each part works --------------------------------
    def check_credentials(self) -> None:
        """An access token from the key's token endpoint (skipped while this process holds a valid one)."""
        if getattr(self.http.auth, "valid", False):
            return
        self._call("fetch an access token", self.http.login)

    def metadata(self) -> dict[str, Any]:
        meta = self._call("read metadata", lambda: self.http.fetch_sheet_metadata(self.key()))
        self._sheet_ids = SheetTitles(
            {s["properties"]["title"]: int(s["properties"]["sheetId"]) for s in meta["sheets"]}
        )
        _SHEET_IDS[self.key()] = (time.monotonic(), dict(self._sheet_ids))
        return dict(meta)

    def can_edit(self) -> bool | None:
        """Drive's ``capabilities.canEdit`` for the service account: Viewer access reads but cannot log."""
        import gspread

        url = f"{gspread.urls.DRIVE_FILES_API_V3_URL}/{self.key()}"
        params = {"fields": "capabilities(canEdit)", "supportsAllDrives": True}
        reply = self._call("read sharing", lambda: self.http.request("get", url, params=params).json())
        value = (reply.get("capabilities") or {}).get("canEdit")
        return value if isinstance(value, bool) else None

    def forget_sheet_ids(self) -> None:
        self._sheet_ids = None
        _SHEET_IDS.pop(self._key or "", None)

    def _require(self, worksheet: str) -> None:
        """The worksheet exists (titles match case-insensitively, as in Sheets); a missing Done is added."""
        if worksheet not in self.sheet_ids() and _SHEET_IDS.get(self._key or ""):
            self.forget_sheet_ids()  # maybe added since we looked
        if worksheet not in self.sheet_ids():
            if worksheet.casefold() == self.done.casefold():
                self._add_worksheet(worksheet)
                return
            raise QueueFormatError(
                f"the spreadsheet has no worksheet named {worksheet!r} (found: {', '.join(self.sheet_ids())}); "
                "rename the queue worksheet or set the worksheet name in the resource config",
                service="sheets",
            )

    def _add_worksheet(self, title: str) -> None:
        """Add a worksheet. Not repeated blind: an addSheet whose answer was lost or was a 5xx may have
        been applied, and repeating it is refused (`A sheet with the name ... already exists`); so is one
        racing another run. Either way the list of worksheets is read again and decides."""
        body = {"requests": [{"addSheet": {"properties": {"title": title}}}]}
        try:
            reply = self._call(
                "add worksheet", lambda: self.http.batch_update(self.key(), body), repeatable=False
            )
        except WriteOutcomeUnknown:
            reply = None
        except ServiceBlocked as exc:
            if exc.status != 400 or not is_rows_moved(400, str(exc)):
                raise
            reply = None
        if reply is None:
            self.forget_sheet_ids()
            if title not in self.sheet_ids():
                raise TransientError(
                    f"Google Sheets add worksheet: {title!r} is not there after an unanswered request",
                    service="sheets",
                )
            return
        props = reply["replies"][0]["addSheet"]["properties"]
        assert self._sheet_ids is not None
        self._sheet_ids[title] = int(props["sheetId"])
        _SHEET_IDS.pop(self._key or "", None)

    def _a1(self, worksheet: str, cells: str = "") -> str:
        """An A1 range on the worksheet, spelled as the spreadsheet spells its title (Sheets itself
        matches case-insensitively; an implementation that does not still finds it)."""
        actual = self._sheet_ids.actual(worksheet) if self._sheet_ids is not None else None
        quoted = "'" + (actual or worksheet).replace("'", "''") + "'"
        return f"{quoted}!{cells}" if cells else quoted

    def read(self, worksheet: str) -> list[list[str]]:
        self._require(worksheet)
        with self._recheck_on_refusal([worksheet]):
            reply = self._call("read values", lambda: self.http.values_get(self.key(), self._a1(worksheet)))
        return _trim([[str(c) for c in row] for row in reply.get("values", [])])

    @contextlib.contextmanager
    def _recheck_on_refusal(self, worksheets: Sequence[str]) -> Iterator[None]:
        """A range refused with 400 usually means a worksheet went away since we listed them: say so."""
        try:
            yield
        except ServiceBlocked as exc:
            if exc.status == 400:
                self.forget_sheet_ids()
                for worksheet in worksheets:
                    self._require(worksheet)
            raise

    def read_many(self, worksheets: Sequence[str | tuple[str, str]]) -> list[list[list[str]]]:
        items = [(w, "") if isinstance(w, str) else w for w in worksheets]
        names = [name for name, _ in items]
        for worksheet in names:
            self._require(worksheet)
        ranges = [self._a1(name, cells) for name, cells in items]
        with self._recheck_on_refusal(names):
            reply = self._call(
                "read values",
                lambda: self.http.values_batch_get(self.key(), ranges, {"majorDimension": "ROWS"}),
            )
        value_ranges = reply.get("valueRanges", [])
        if len(value_ranges) != len(worksheets):
            raise TransientError("Google Sheets read values: malformed batchGet answer", service="sheets")
        return [_trim([[str(c) for c in row] for row in vr.get("values", [])]) for vr in value_ranges]

    def read_header(self, worksheet: str) -> list[str]:
        self._require(worksheet)
        reply = self._call(
            "read header", lambda: self.http.values_get(self.key(), self._a1(worksheet, "1:1"))
        )
        values = reply.get("values", [])
        return [str(c) for c in values[0]] if values else []

    def write_cells(self, worksheet: str, cells: Sequence[CellWrite]) -> None:
        if not cells:
            return
        self._require(worksheet)
        body = {
            "valueInputOption": "RAW",  # never let Sheets evaluate text we write
            "data": [
                {"range": self._a1(worksheet, f"{_col_letter(c.col)}{c.row}"), "values": [[c.value]]}
                for c in cells
            ],
        }
        self._call("write cells", lambda: self.http.values_batch_update(self.key(), body), repeatable=False)

    def append(self, worksheet: str, rows: Sequence[Sequence[str]]) -> None:
        if not rows:
            return
        self._require(worksheet)
        params = {"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"}
        body = {"values": [list(r) for r in rows]}
        self._call(
            "append rows",
            lambda: self.http.values_append(self.key(), self._a1(worksheet, "A1"), params, body),
            repeatable=False,
        )

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
        ``refusals.google.ROWS_MOVED_RULES`` lists mean moved rows; any other 400 (a protected range, the
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
                _SHEET_IDS.pop(self.key(), None)
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

    def change_token(self) -> str:
        import gspread.urls

        def fetch() -> str:
            r = self.http.request(
                "get",
                f"{gspread.urls.DRIVE_FILES_API_V3_URL}/{self.key()}",
                params={"fields": "modifiedTime,version", "supportsAllDrives": True},
            )
            data = r.json()
            return f"{data.get('version', '')}:{data.get('modifiedTime', '')}"

        return self._call("read modifiedTime", fetch)

    def describe(self) -> str:
        target = f"key {self._key}" if self._key else f"title {self._title!r}"
        return f"Google Sheets ({target}, as {self.service_account_email})"


# ---------------------------------------------------------------------------------------------------
# The resource
# ---------------------------------------------------------------------------------------------------
class PromptSheet(dg.ConfigurableResource):
    """The queue ("Process") and the audit log ("Done"). Subclasses pick the backend."""

    process_worksheet: str = Field(default="Process", description="Worksheet holding the queue.")
    done_worksheet: str = Field(default="Done", description="Worksheet receiving one audit row per prompt.")
    retry_attempts: int = Field(default=4, description="Tries per request, the first included.")
    retry_base_delay_s: float = Field(default=2.0, description="First backoff delay; doubles per retry.")

    _backend_cache: TableBackend | None = PrivateAttr(default=None)

    # -- backend selection ---------------------------------------------------------------------------
    def _make_backend(self) -> TableBackend:
        raise NotImplementedError

    @property
    def backend(self) -> TableBackend:
        if self._backend_cache is None:
            self._backend_cache = self._make_backend()
        return self._backend_cache

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=max(1, self.retry_attempts), base_delay_s=self.retry_base_delay_s)

    def describe(self) -> str:
        return self.backend.describe()

    # -- the queue -------------------------------------------------------------------------------------
    def _parse(self, table: list[list[str]]) -> QueueSnapshot:
        if not table or not any(str(c).strip() for c in table[0]):
            raise QueueFormatError(
                f"worksheet {self.process_worksheet!r} has no header row: put 'prompt' in A1 "
                "(and optionally id, negative_prompt, model, width, height, seed, caption)",
                service="sheets",
            )
        header = [str(c) for c in table[0]]
        names = [normalize_header(h) for h in header]
        id_col = names.index(ID_COLUMN) if ID_COLUMN in names else None
        optional = {name: names.index(name) for name in OPTIONAL_COLUMNS if name in names}
        status_col = names.index(STATUS_COLUMN) if STATUS_COLUMN in names else None
        rows: list[PromptRow] = []
        for number, cells in enumerate(table[1:], start=2):
            if not any(str(c) != "" for c in cells):
                continue  # an empty line in the sheet is not a prompt; a whitespace-only one is INVALID

            def cell(i: int | None, cells: list[str] = cells) -> str:
                return str(cells[i]) if i is not None and i < len(cells) else ""

            params = {name: cell(i) for name, i in optional.items() if cell(i).strip() != ""}
            # Column A is the prompt whatever its header says, as the ancestor had it.
            rows.append(
                PromptRow(
                    number,
                    cell(0),
                    cell(id_col).strip(),
                    params,
                    tuple(str(c) for c in cells),
                    status=cell(status_col),
                )
            )
        return QueueSnapshot(header, rows, id_col, status_column=status_col)

    def read_queue(self) -> QueueSnapshot:
        snapshot = self._parse(self.backend.read(self.process_worksheet))
        return snapshot

    def preflight(self) -> list[Check]:
        """The cheapest real calls showing the queue can be read, logged to and edited (see preflight.py)."""
        raise NotImplementedError

    def _header_check(self, process_header: Sequence[str], done_header: Sequence[str] | None) -> Check:
        name, process, done = "header as expected", self.process_worksheet, self.done_worksheet
        cells = [str(c) for c in process_header]
        if not any(c.strip() for c in cells):
            return fail(
                SHEETS,
                name,
                f"row 1 of {process!r} is empty",
                f"put 'prompt' in A1 of {process!r} (optional columns: id, {', '.join(OPTIONAL_COLUMNS)})",
            )
        detail = f"{process!r}: {', '.join(c for c in cells if c.strip())}"
        if done_header is not None:
            names = [DONE_ALIASES.get(normalize_header(h), normalize_header(h)) for h in done_header]
            missing = [c for c in DONE_COLUMNS if c not in names]
            if not any(str(h).strip() for h in done_header):
                detail += f"; {done!r}: empty (the header is written on the first log)"
            elif missing:
                detail += f"; {done!r} gets the missing columns {', '.join(missing)} on the first log"
            else:
                detail += f"; {done!r}: all columns present"
        if normalize_header(cells[0]) != "prompt":
            return warn(
                SHEETS, name, f"A1 of {process!r} says {cells[0]!r}; column A is read as the prompt", detail
            )
        return ok(SHEETS, name, detail)

    def ensure_ids(self) -> QueueSnapshot:
        """Read the queue and give every row without a usable id a fresh one (a single write).

        Cells are addressed by position, so on a sheet that people edit at the same time (Google) the
        write is checked by a second read: an id that landed on another row is taken back, and that
        row gets its own id back.
        """
        with self.backend.transaction():
            snapshot = self.read_queue()
            cells: list[CellWrite] = []
            id_col = snapshot.id_column
            if id_col is None:
                id_col = len(snapshot.header)
                snapshot.header.append(ID_COLUMN)
                snapshot.id_column = id_col
                cells.append(CellWrite(1, id_col + 1, ID_COLUMN))
            seen: set[str] = set()
            rows: list[PromptRow] = []
            written: dict[str, str] = {}  # new id -> fingerprint of the row it is meant for
            for row in snapshot.rows:
                pid = row.prompt_id
                # A copied row carries its id along: the copy is a new prompt and gets its own id.
                if not pid or not is_valid_id(pid) or pid in seen:
                    pid = new_prompt_id()
                    while pid in seen:
                        pid = new_prompt_id()
                    cells.append(CellWrite(row.row_number, id_col + 1, pid))
                    written[pid] = row.fingerprint()
                    row = PromptRow(row.row_number, row.prompt, pid, row.params, row.cells)
                seen.add(pid)
                rows.append(row)
            snapshot.rows = rows
            if not cells:
                return snapshot
            with contextlib.suppress(WriteOutcomeUnknown):  # the check below reads what actually landed
                self.backend.write_cells(self.process_worksheet, cells)
            if self.backend.atomic:
                return snapshot
            return _with_usable_ids(self._verify_ids(snapshot, written, id_col))

    def _verify_ids(self, before: QueueSnapshot, written: dict[str, str], id_col: int) -> QueueSnapshot:
        for _ in range(3):
            after = self.read_queue()
            present = {r.prompt_id for r in after.rows}
            fixes: list[CellWrite] = []
            for row in after.rows:
                intended = written.get(row.prompt_id)
                if intended is None or intended == row.fingerprint():
                    continue
                # Our id sits on a row it was not meant for (rows shifted between read and write).
                old_ids = {
                    b.prompt_id
                    for b in before.rows
                    if b.fingerprint() == row.fingerprint() and b.prompt_id and b.prompt_id not in written
                }
                old_ids -= present
                restore = old_ids.pop() if len(old_ids) == 1 else ""
                fixes.append(CellWrite(row.row_number, id_col + 1, restore))
                log.warning("an id landed on a row that moved meanwhile; restoring %r", restore or "(empty)")
            if not fixes:
                return after
            try:
                self.backend.write_cells(self.process_worksheet, fixes)
            except WriteOutcomeUnknown:
                continue  # read again
        return self.read_queue()

    def write_statuses(self, states: dict[str, str], snapshot: QueueSnapshot | None = None) -> dict[str, str]:
        """Show each row's state in its "status" cell (only where the sheet has that column).

        Returns what was written (id -> word). A cell is addressed by position, so where people edit at
        the same time (Google) a re-read checks that each word sits on the row it was meant for; a word
        that landed on another row is taken back (that row gets its own cell again) and written again
        where its row is now. Never raises for a failed write: the status is a courtesy to the reader,
        the ledger and the Done log are the record."""
        if not states:
            return {}
        try:
            with self.backend.transaction():
                before = snapshot if snapshot is not None and not self.backend.atomic else self.read_queue()
                if before.status_column is None:
                    return {}
                cells, written = self._status_cells(before, states)
                if not cells:
                    return {}
                with contextlib.suppress(WriteOutcomeUnknown):
                    self.backend.write_cells(self.process_worksheet, cells)
                if not self.backend.atomic:
                    # only the words the re-read saw where they belong count as shown
                    seen = self._verify_statuses(before, written)
                    return {pid: word for pid, word in written.items() if pid in seen}
                return written
        except PipelineError as exc:
            log.warning("could not write the status column (%s); the run goes on", exc)
            return {}

    @staticmethod
    def _status_cells(
        snapshot: QueueSnapshot, states: dict[str, str]
    ) -> tuple[list[CellWrite], dict[str, str]]:
        col = snapshot.status_column
        assert col is not None
        cells: list[CellWrite] = []
        written: dict[str, str] = {}
        for row in snapshot.rows:
            word = states.get(row.prompt_id)
            if word is None or row.prompt_id in written or row.status == word:
                continue
            cells.append(CellWrite(row.row_number, col + 1, word))
            written[row.prompt_id] = word
        return cells, written

    def _verify_statuses(self, before: QueueSnapshot, written: dict[str, str]) -> set[str]:
        """Put right what landed on the wrong row; the ids whose word the re-read saw on their own row."""
        after = self.read_queue()
        col = after.status_column
        if col is None:
            return set()
        old_status = {r.prompt_id: r.status for r in before.rows}
        where = {r.row_number: r for r in before.rows if r.prompt_id in written}
        fixes: list[CellWrite] = []
        for row in after.rows:
            meant = where.get(row.row_number)
            if meant is None or meant.prompt_id == row.prompt_id:
                continue
            if row.status == written[meant.prompt_id] and row.prompt_id not in written:
                # Our word sits on a row that moved into the position: give that row its own word back.
                # A row typed in that very instant had a word we never saw: it gets HOLD, so a row a
                # person held is never released by our mistake (clearing HOLD runs it).
                if (
                    not row.prompt_id
                    and not row.prompt.strip()
                    and not any(c.strip() for i, c in enumerate(row.cells) if i != col)
                ):
                    fixes.append(CellWrite(row.row_number, col + 1, ""))  # a row only our word made
                else:
                    fixes.append(CellWrite(row.row_number, col + 1, old_status.get(row.prompt_id, HOLD)))
        placed = {r.prompt_id: r for r in after.rows}
        seen = set()
        for pid, word in written.items():
            row = placed.get(pid)
            if row is not None and row.status != word:
                fixes.append(CellWrite(row.row_number, col + 1, word))
            elif row is not None:
                seen.add(pid)
        if fixes:
            log.warning("status words landed on rows that moved meanwhile; putting them right")
            with contextlib.suppress(WriteOutcomeUnknown):
                self.backend.write_cells(self.process_worksheet, fixes)
            # one more read, only in this rare case: a word counts as shown once it was seen in place
            now = self.read_queue().by_id()
            seen |= {pid for pid, word in written.items() if pid in now and now[pid].status == word}
        return seen

    def find_rows(self, ids: Sequence[str]) -> dict[str, PromptRow]:
        """Re-read the queue; the rows that currently carry these ids."""
        current = self.read_queue().by_id()
        return {pid: current[pid] for pid in ids if pid in current}

    def remove_rows(
        self,
        expected: dict[str, str],
        snapshot: QueueSnapshot | None = None,
        journal: Ledger | None = None,
    ) -> dict[str, str]:
        """Remove rows by id after re-reading them. ``expected`` maps id -> the fingerprint we processed.

        A row whose content changed meanwhile is kept (CHANGED); a missing id deletes nothing (VANISHED).
        Rows are deleted by position, so where people edit at the same time (Google) the delete copies
        the rows it removes into a hidden worksheet in the same atomic request: any removed row that is
        not the one we meant (a person inserted or moved rows between our read and the delete) is put
        back where it was, and the row we meant is looked up again. ``snapshot``, a read made just
        before (Google only: the local workbook reads under its lock), saves the first re-read.

        ``journal`` (the ledger) makes that check survive a crash: each delete's intent is recorded
        before it is sent, and cleared once its copy was checked; the copy is never overwritten, so the
        next run (``recover_removals``, called here first) puts back what a killed run could not.
        """
        if not expected:
            return {}
        owner = _removal_owner()
        _LIVE_REMOVALS.add(owner)
        try:
            if journal is not None and not self.backend.atomic:
                try:
                    self.recover_removals(journal, owner=owner)
                except (TransientError, WriteOutcomeUnknown) as exc:
                    # the copies stay where they are and the intents stay recorded: the next run retries
                    log.warning("could not check the deletes of an interrupted run yet (%s)", exc)
            return self._remove_rows(expected, snapshot, journal, owner)
        finally:
            _LIVE_REMOVALS.discard(owner)

    def _remove_rows(
        self, expected: dict[str, str], snapshot: QueueSnapshot | None, journal: Ledger | None, owner: str
    ) -> dict[str, str]:
        outcome: dict[str, str] = {}
        pending = dict(expected)
        earlier = None if self.backend.atomic else snapshot
        with self.backend.transaction():
            for _ in range(4):
                snapshot, earlier = earlier or self.read_queue(), None
                targets: list[PromptRow] = []
                for pid, fingerprint in pending.items():
                    matches = [r for r in snapshot.rows if r.prompt_id == pid]
                    same = [r for r in matches if r.fingerprint() == fingerprint]
                    if same:
                        targets.append(same[0])
                    else:
                        outcome[pid] = CHANGED if matches else VANISHED
                if not targets:
                    break
                targets.sort(key=lambda t: t.row_number)
                for t in targets:
                    outcome[t.prompt_id] = REMOVED
                if self.backend.atomic:
                    self.backend.delete_rows(self.process_worksheet, [t.row_number for t in targets])
                    break
                width = max([len(snapshot.header), *(len(r.cells) for r in snapshot.rows)])
                area = CaptureArea(uuid.uuid4().hex, len(targets), max(1, width))
                if journal is not None:
                    # durable before the request leaves: a crash before the copy is checked is repaired
                    journal.begin_removal(area.nonce, owner, _removal_intent(snapshot, targets, area))
                settled = True  # whether the copy is checked once this pass is over
                try:
                    captured = self.backend.delete_rows_capturing(
                        self.process_worksheet, [t.row_number for t in targets], width, area
                    )
                except RowsShifted:
                    if journal is not None:
                        journal.end_removal(area.nonce)  # refused as a whole: nothing was applied
                    continue  # read again
                except (ServiceBlocked, TransientError):
                    # refused, or failed before it could apply (an unknown outcome is WriteOutcomeUnknown)
                    if journal is not None:
                        journal.end_removal(area.nonce)
                    raise
                except (CaptureLost, WriteOutcomeUnknown):
                    # no copy yet: a request whose answer was lost may still take effect later, so its
                    # intent stays for the next run to check
                    captured, settled = None, False
                if captured is not None:
                    still = self._put_back_strangers(snapshot, targets, captured)
                else:
                    # A delete whose answer was lost is never repeated as is: by now the same positions
                    # may hold other rows. The read below tells what happened; the loop deletes again by id.
                    after = self.read_queue()
                    still = [t for t in targets if any(_same_row(a, t) for a in after.rows)]
                    self._restore_lost(snapshot, targets, after, len(still))
                if journal is not None and settled:
                    journal.end_removal(area.nonce)
                if not still:
                    break
                pending = {t.prompt_id: t.fingerprint() for t in still}
        return outcome

    def recover_removals(self, journal: Ledger, owner: str | None = None) -> int:
        """Finish the deletes an interrupted run left unchecked: read each one's copy and put back the
        rows it removed that were not the ones meant (a person's row that slid into the position).
        Returns how many rows were put back. Cheap when there is nothing to do (one ledger read)."""
        if self.backend.atomic:
            return 0
        open_ = journal.open_removals()
        if not open_:
            return 0
        mine = owner or _removal_owner()
        _LIVE_REMOVALS.add(mine)
        restored = 0
        try:
            for nonce, _owner, _created, body in open_:
                if not journal.take_removal(nonce, mine, _removal_is_stale):
                    continue  # its run is still at work
                intent = json.loads(body)
                targets = [
                    PromptRow(int(t["row"]), "", str(t["id"]), {}, (), status="") for t in intent["targets"]
                ]
                prints = [str(t["fingerprint"]) for t in intent["targets"]]
                area = CaptureArea(nonce, len(targets), int(intent["width"]))
                try:
                    captured = self.backend.read_capture(area)
                    if captured is not None:
                        restored += self._put_back_after_crash(intent, targets, prints, captured, journal)
                except WriteOutcomeUnknown as exc:
                    log.warning("putting back rows of an interrupted delete: %s; checked again next run", exc)
                    continue
                journal.end_removal(nonce)  # (no copy: that delete never took effect)
        finally:
            if owner is None:
                _LIVE_REMOVALS.discard(mine)
        return restored

    def _put_back_after_crash(
        self,
        intent: dict[str, Any],
        targets: list[PromptRow],
        prints: list[str],
        captured: list[list[str]],
        journal: Ledger,
    ) -> int:
        header = [str(h) for h in intent["header"]]
        now = self.read_queue()
        present = {(r.prompt_id, r.fingerprint()) for r in now.rows} | {tuple(r.cells) for r in now.rows}
        strangers: list[int] = []
        for i in self._judge(header, targets, prints, captured)[0]:
            got = self._parse([header, captured[i]]).rows if any(c != "" for c in captured[i]) else []
            if not got:
                continue  # an empty line: nothing of anyone's was lost
            row = got[0]
            if (row.prompt_id, row.fingerprint()) in present or tuple(row.cells) in present:
                continue  # put back already (the run was killed after restoring it)
            entry = journal.get(row.prompt_id, row.fingerprint()) if row.prompt_id else None
            if entry is not None and entry.queue_state == LEDGER_REMOVED:
                continue  # a prompt of ours that a later run removed on purpose
            strangers.append(i)
        if not strangers:
            return 0
        log.warning(
            "an interrupted run deleted %d row(s) that were not its own; putting them back", len(strangers)
        )
        self._restore_strangers(targets, strangers, captured)
        return len(strangers)

    def _put_back_strangers(
        self, snapshot: QueueSnapshot, targets: list[PromptRow], captured: list[list[str]]
    ) -> list[PromptRow]:
        """Compare what the delete removed with what we meant; re-insert the rows that were not ours.
        Returns the targets that were not deleted (the caller looks them up again). ``captured`` holds
        the values the removed rows showed, compared with the values our read showed: re-based formulas
        in the copy cannot make our own row look like a stranger, nor a stranger like ours."""
        prints = [t.fingerprint() for t in targets]
        strangers, unmatched = self._judge(snapshot.header, targets, prints, captured)
        missed = [targets[j] for j in unmatched]
        if strangers:
            log.warning(
                "%d row(s) moved into the deleted positions while the sheet changed; putting them back",
                len(strangers),
            )
            self._restore_strangers(targets, strangers, captured)
        return missed

    def _judge(
        self, header: list[str], targets: list[PromptRow], prints: list[str], captured: list[list[str]]
    ) -> tuple[list[int], list[int]]:
        """Which removed rows were not ours (indexes into ``captured``) and which targets no removed row
        was (indexes into ``targets``). Matched as sets, by id and fingerprint: when a person inserted a
        row above the batch, every position holds the row that was above it, and only the one row that
        slid in is a stranger."""
        wanted: dict[tuple[str, str], int] = {}
        for j, (target, fingerprint) in enumerate(zip(targets, prints, strict=True)):
            wanted.setdefault((target.prompt_id, fingerprint), j)
        strangers: list[int] = []
        for i, cells in enumerate(captured):
            got = self._parse([header, cells]).rows if any(c != "" for c in cells) else []
            key = (got[0].prompt_id, got[0].fingerprint()) if got else None
            if key is not None and key in wanted:
                del wanted[key]
            else:
                strangers.append(i)
        return strangers, sorted(wanted.values())

    def _restore_strangers(
        self, targets: list[PromptRow], strangers: list[int], captured: list[list[str]]
    ) -> None:
        # Where each removed row stood once the whole delete is applied: its old position less the
        # rows above it that were rightly deleted. Re-inserting in ascending order keeps every position.
        ours = [t.row_number for i, t in enumerate(targets) if i not in strangers]
        placements = [
            (targets[i].row_number - sum(1 for n in ours if n < targets[i].row_number), i) for i in strangers
        ]
        try:
            self.backend.restore_captured(self.process_worksheet, placements)
        except (RowsShifted, WriteOutcomeUnknown):
            # fall back to writing the values it showed, after checking which ones are missing
            present = [tuple(r.cells) for r in self.read_queue().rows]
            for position, i in placements:
                cells = captured[i]
                if any(c != "" for c in cells) and tuple(cells) not in present:
                    self.backend.insert_row(self.process_worksheet, position, cells)

    def _restore_lost(
        self, before: QueueSnapshot, targets: list[PromptRow], after: QueueSnapshot, limit: int
    ) -> None:
        """Put back rows that a position-based delete removed by mistake (at most one per missed target)."""
        if limit <= 0:
            return
        target_rows = {t.row_number for t in targets}
        remaining = list(after.rows)
        lost: list[PromptRow] = []
        for row in before.rows:
            if row.row_number in target_rows:
                continue
            match = next((a for a in remaining if _same_row(a, row)), None)
            if match is None:
                lost.append(row)
            else:
                remaining.remove(match)
        for row in lost[:limit]:
            # where it was relative to the row above it, which is what a person sees
            previous = [
                b for b in before.rows if b.row_number < row.row_number and b.row_number not in target_rows
            ]
            position = 2
            if previous:
                anchor = next((a for a in self.read_queue().rows if _same_row(a, previous[-1])), None)
                position = anchor.row_number + 1 if anchor else row.row_number
            log.warning(
                "a row was deleted by mistake while the sheet changed; restoring it at row %d", position
            )
            self.backend.insert_row(self.process_worksheet, position, list(row.cells))

    # -- the log ---------------------------------------------------------------------------------------
    def read_before_logging(self) -> tuple[QueueSnapshot, list[str]] | None:
        """The queue and the Done header in one request, for a batch about to log and remove its rows
        (None where reads are free and must happen under the backend's lock: the local workbook)."""
        if self.backend.atomic:
            return None
        process, done_head = self.backend.read_many([self.process_worksheet, (self.done_worksheet, "1:1")])
        return self._parse(process), (done_head[0] if done_head else [])

    def append_done(self, entries: Sequence[DoneEntry], header: list[str] | None = None) -> None:
        """Append audit rows, matching columns by header name and adding the headers that are missing.
        ``header``: the Done header as just read (saves the read)."""
        if not entries:
            return
        with self.backend.transaction():
            if header is None or self.backend.atomic:
                header = self.backend.read_header(self.done_worksheet)
            names = [DONE_ALIASES.get(normalize_header(h), normalize_header(h)) for h in header]
            header_cells: list[CellWrite] = []
            if not any(n.strip() for n in names):
                names = list(DONE_COLUMNS)
                header_cells = [CellWrite(1, i + 1, n) for i, n in enumerate(DONE_COLUMNS)]
            else:
                for col in DONE_COLUMNS:
                    if col not in names:
                        names.append(col)
                        header_cells.append(CellWrite(1, len(names), col))
            if header_cells:
                try:
                    self.backend.write_cells(self.done_worksheet, header_cells)
                except WriteOutcomeUnknown:
                    # Read back before repeating: rows appended under a header that never landed
                    # would be read as the header next time.
                    landed = self.backend.read_header(self.done_worksheet)
                    missing = [c for c in header_cells if c.col > len(landed) or landed[c.col - 1] != c.value]
                    if missing:
                        self.backend.write_cells(self.done_worksheet, missing)
            pending = list(entries)
            for _ in range(3):
                rows = []
                for e in pending:
                    values = e.as_dict()
                    rows.append([values.get(n, "") for n in names])
                try:
                    self.backend.append(self.done_worksheet, rows)
                    return
                except WriteOutcomeUnknown:
                    # The rows may be there already (a 5xx can follow a committed append): append only
                    # the ones that are not, matched by id and prompt as lifecycle.done.read_done_index matches them.
                    logged = {(r.get("id", "").strip(), r.get("prompt", "")) for r in self.read_done()}
                    pending = [e for e in pending if (e.id.strip(), e.prompt) not in logged]
                    if not pending:
                        return
            raise TransientError(
                "Google Sheets append rows: the answer was lost three times", service="sheets"
            )

    def read_queue_and_done(self) -> tuple[QueueSnapshot, list[dict[str, str]]]:
        """Both worksheets in one request: what a run needs to start (the queue and the audit log)."""
        process, done = self.backend.read_many([self.process_worksheet, self.done_worksheet])
        return self._parse(process), self._done_rows(done)

    def read_done(self) -> list[dict[str, str]]:
        return self._done_rows(self.backend.read(self.done_worksheet))

    @staticmethod
    def _done_rows(table: list[list[str]]) -> list[dict[str, str]]:
        if not table:
            return []
        names = [DONE_ALIASES.get(normalize_header(h), normalize_header(h)) for h in table[0]]
        return [{n: (r[i] if i < len(r) else "") for i, n in enumerate(names)} for r in table[1:]]

    def change_token(self) -> str:
        return self.backend.change_token()

    def column_digest(self, columns: Sequence[int]) -> str | None:
        """A digest of these queue columns (0-based), read in one request (one Sheets read of quota);
        None where change_token() is exact (the workbook's file stat) and this read would add nothing.
        Drive's token trails Sheets edits by minutes (google-api-go-client#906), so the sensor also
        compares this, on a slower cadence, to see new rows at once."""
        if not isinstance(self.backend, GoogleSheetsBackend):
            return None
        spans = [f"{_col_letter(c + 1)}:{_col_letter(c + 1)}" for c in sorted(set(columns))]
        tables = self.backend.read_many([(self.process_worksheet, span) for span in spans])
        return hashlib.sha256(json.dumps([spans, tables]).encode()).hexdigest()[:16]


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


class GoogleSheet(PromptSheet):
    """Google Sheets through gspread and a service account."""

    service_account_file: str | None = Field(
        default=None, description="Path of the service-account key JSON."
    )
    service_account_json: str | None = Field(
        default=None, description="The key JSON itself (bind with EnvVar; never shown in the UI)."
    )
    spreadsheet_key: str | None = Field(default=None, description="Spreadsheet id; wins over the title.")
    spreadsheet_title: str = Field(
        default="Image Prompt", description="Spreadsheet title, looked up via Drive."
    )
    sheets_api_base_url: str | None = Field(
        default=None, description="Instead of https://sheets.googleapis.com."
    )
    drive_api_base_url: str | None = Field(default=None, description="Instead of https://www.googleapis.com.")
    timeout_s: float = Field(default=30.0, description="Timeout of every HTTP request.")
    quota_retry_s: float = Field(
        default=20.0, description="Wait after a per-minute quota 429 (Sheets sends no Retry-After)."
    )

    def _key_info(self) -> dict[str, Any]:
        try:
            if self.service_account_json:
                info = json.loads(self.service_account_json)
            elif self.service_account_file:
                info = json.loads(Path(self.service_account_file).read_text(encoding="utf-8"))
            else:
                raise ServiceBlocked(
                    "no service-account key: set GOOGLE_SERVICE_ACCOUNT_FILE (or put chatbot_key.json in the project)",
                    service="sheets",
                )
        except OSError as exc:
            raise ServiceBlocked(
                f"cannot read the service-account key file {self.service_account_file}: {exc.strerror}",
                service="sheets",
            ) from None
        except json.JSONDecodeError:
            raise ServiceBlocked("the service-account key is not valid JSON", service="sheets") from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ServiceBlocked(
                "the key JSON is not a service-account key (type != service_account)", service="sheets"
            )
        install_log_redaction()
        register_secret(info.get("private_key"))
        register_secret(info.get("private_key_id"))
        return info

    def _make_backend(self, policy: RetryPolicy | None = None) -> GoogleSheetsBackend:
        return GoogleSheetsBackend(
            info=self._key_info(),
            spreadsheet_key=self.spreadsheet_key or None,
            spreadsheet_title=self.spreadsheet_title,
            process=self.process_worksheet,
            done=self.done_worksheet,
            sheets_base=self.sheets_api_base_url or None,
            drive_base=self.drive_api_base_url or None,
            timeout_s=self.timeout_s,
            policy=policy or self.retry_policy(),
            quota_retry_s=self.quota_retry_s,
        )

    def preflight(self) -> list[Check]:
        names = ["key valid", "spreadsheet reachable", "worksheets present", "header as expected"]
        names.append("write permission")
        new_key = (
            "create a new JSON key for the service account (Google Cloud console: IAM > Service accounts "
            "> Keys) and set GOOGLE_SERVICE_ACCOUNT_FILE or GOOGLE_SERVICE_ACCOUNT_JSON"
        )
        try:
            # one attempt per call: a preflight reports what it meets instead of waiting out backoffs
            backend = self._make_backend(RetryPolicy(attempts=1, base_delay_s=0.0))
        except ServiceBlocked as exc:
            return [fail(SHEETS, names[0], str(exc), new_key), *skipped(SHEETS, names[1:], "needs a key")]
        email = backend.service_account_email
        try:
            backend.check_credentials()
        except PipelineError as exc:
            # the token endpoint's answer names its fix: a wrong clock, a deleted account, a revoked key
            fix = getattr(exc, "fix", "") or new_key
            if isinstance(exc, TransientError):
                fix = "check the network and the key's token_uri"
            return [fail(SHEETS, names[0], str(exc), fix), *skipped(SHEETS, names[1:], "needs a valid key")]
        checks = [ok(SHEETS, names[0], f"service account {email}")]

        share = f"share the spreadsheet with {email} as Editor (the sheet's Share button)"
        try:
            meta = backend.metadata()
        except PipelineError as exc:
            text = str(exc)
            if "SERVICE_DISABLED" in getattr(exc, "google_reasons", ()):
                fix = getattr(exc, "fix", "")
            elif isinstance(exc, TransientError):
                fix = "Google did not answer properly: check the network and try again"
            elif exc.status == 404 and self.spreadsheet_key:
                fix = f"check GOOGLE_SHEET_KEY (the id between /d/ and /edit in the sheet's address); {share}"
            elif exc.status == 404:
                fix = f"{share}, or set GOOGLE_SHEET_KEY"
            else:
                fix = share
            return [
                *checks,
                fail(SHEETS, names[1], text, fix),
                *skipped(SHEETS, names[2:], "needs the sheet"),
            ]
        title = str((meta.get("properties") or {}).get("title", ""))
        checks.append(ok(SHEETS, names[1], f"{title!r} ({backend.key()})"))

        titles = SheetTitles({str(s["properties"]["title"]): 0 for s in meta.get("sheets", [])})
        worksheets = list(titles)
        # matched as Sheets matches titles (case-insensitively), and named as the spreadsheet spells them
        process = titles.actual(self.process_worksheet) or self.process_worksheet
        done = titles.actual(self.done_worksheet) or self.done_worksheet
        if process not in titles:
            found = ", ".join(w for w in worksheets if w != REMOVED_ROWS_WORKSHEET) or "none"
            fix = f"add a worksheet named {process!r} with 'prompt' in A1, or set GOOGLE_PROCESS_WORKSHEET"
            checks.append(fail(SHEETS, names[2], f"no worksheet {process!r} (found: {found})", fix))
            checks.extend(skipped(SHEETS, [names[3]], "needs the queue worksheet"))
        else:
            has_done = done in titles
            if has_done:
                checks.append(ok(SHEETS, names[2], f"{process!r} and {done!r}"))
            else:
                checks.append(
                    warn(SHEETS, names[2], f"no worksheet {done!r}", "the pipeline adds it on its first log")
                )
            try:
                tables = backend.read_many([(process, "1:1"), *([(done, "1:1")] if has_done else [])])
            except PipelineError as exc:
                checks.append(fail(SHEETS, names[3], str(exc), share))
            else:
                heads = [t[0] if t else [] for t in tables]
                checks.append(self._header_check(heads[0], heads[1] if has_done else None))

        try:
            # Drive's rate limit (403 usageLimits) is retried here too: it says nothing about the setup
            policy = RetryPolicy(attempts=3, base_delay_s=self.retry_base_delay_s, max_delay_s=8.0)
            can_edit = call_with_retry(backend.can_edit, policy, what="preflight drive")
        except ServiceBlocked as exc:
            # The sensor reads Drive's change token on every tick (and a sheet found by title is looked
            # up in Drive): a Drive that refuses us would leave instant mode blind, so this fails.
            fix = getattr(exc, "fix", "") or "enable the Google Drive API in the key's Cloud project"
            checks.append(fail(SHEETS, names[4], f"{exc} (the sheet sensor's change token reads Drive)", fix))
        except PipelineError as exc:
            checks.append(
                warn(SHEETS, names[4], f"Drive did not answer ({exc})", "check the network and try again")
            )
        else:
            if can_edit is False:
                checks.append(fail(SHEETS, names[4], f"{email} may only view the spreadsheet", share))
            elif can_edit is None:
                checks.append(warn(SHEETS, names[4], "Drive did not say whether the account may edit"))
            else:
                checks.append(ok(SHEETS, names[4], f"{email} can edit"))
        return checks
