"""Google Sheets and Drive through gspread and google-auth: the transport, worksheet titles as Sheets matches
them, and every answer turned into the pipeline's typed errors (``image_pipeline.services.sheets.refusals``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from image_pipeline.domain.errors import (
    PipelineError,
    QueueFormatError,
    ServiceBlocked,
    TransientError,
    WriteOutcomeUnknown,
)
from image_pipeline.domain.redact import redact
from image_pipeline.services.http import RetryPolicy, call_with_retry, never_reached_server
from image_pipeline.services.sheets.google_positional import PositionalEdits
from image_pipeline.services.sheets.refusals import GoogleAnswer, classify_api, classify_token, is_rows_moved
from image_pipeline.services.sheets.table import (
    CellWrite,
    TableBackend,
    _col_letter,
    _trim,
)

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
    answers are classified by ``image_pipeline.services.sheets.refusals``; ``repeatable=False`` for a write that
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


class GoogleSheetsBackend(PositionalEdits, TableBackend):
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

    def drop_shared_sheet_ids(self) -> None:
        """Other backends of this process re-read the ids (this one's own copy was just updated)."""
        _SHEET_IDS.pop(self.key(), None)

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
