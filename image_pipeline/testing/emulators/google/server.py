"""``GoogleEmulator``: the OAuth2 token endpoint, Sheets v4 and Drive v3 on one loopback base URL.

The class assembles the package: its state (``__init__``), the hooks the base EmulatorServer calls
(routing, injected faults by status or by name, the garbage answer), the read/write counters, and the
mixins that hold the rest: the person-facing helpers (people.py), token and quota (auth.py), the Sheets
handlers (sheets_api.py, values.py, batch_update.py), Drive (drive.py) and the file bookkeeping
(store.py). batchUpdate's request kinds (batch_kinds.py) are bound here as ``_req_<kind>`` methods.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import deque

from image_pipeline.testing.emulators.base import EmulatorServer, Request, Response
from image_pipeline.testing.emulators.google import batch_kinds
from image_pipeline.testing.emulators.google.auth import TokenAndQuota
from image_pipeline.testing.emulators.google.batch_update import BatchUpdate
from image_pipeline.testing.emulators.google.constants import (
    _CELL_LIMIT_MESSAGE,
    _DRIVE_FAULTS,
    _JWT_TIME_MESSAGE,
    _OAUTH_FAULTS,
    ACCOUNT_NOT_FOUND_MESSAGE,
    CELL_LIMIT,
    JWT_CLOCK_TOLERANCE_S,
    PROTECTED_MESSAGE,
    READ_ENDPOINTS,
    WRITE_ENDPOINTS,
)
from image_pipeline.testing.emulators.google.drive import DriveEndpoints
from image_pipeline.testing.emulators.google.errors import (
    _Reply,
    drive_error,
    drive_rate_limit_error,
    oauth_error,
    quota_error_body,
    service_disabled_error,
    sheets_error,
)
from image_pipeline.testing.emulators.google.model import SpreadsheetFile, _Account, _Token
from image_pipeline.testing.emulators.google.people import PersonActions
from image_pipeline.testing.emulators.google.sheets_api import SheetsEndpoints
from image_pipeline.testing.emulators.google.store import FileStore
from image_pipeline.testing.emulators.google.values import ValuesAccess
from image_pipeline.testing.emulators.google.wire import _NOT_FOUND_HTML, _classify


class GoogleEmulator(
    PersonActions,
    TokenAndQuota,
    SheetsEndpoints,
    BatchUpdate,
    ValuesAccess,
    DriveEndpoints,
    FileStore,
    EmulatorServer,
):
    """OAuth2 token endpoint + Sheets v4 + Drive v3 on one loopback base URL."""

    name = "google"

    # The spreadsheets.batchUpdate request kinds (batch_kinds.py), looked up by name as _req_<kind>.
    # Bound here on the class itself, not inherited, so a test can delete one from it
    # (monkeypatch.delattr(GoogleEmulator, "_req_copyPaste")) to play an API that lacks that kind.
    _req_deleteDimension = batch_kinds._req_deleteDimension
    _req_insertDimension = batch_kinds._req_insertDimension
    _req_appendDimension = batch_kinds._req_appendDimension
    _req_addSheet = batch_kinds._req_addSheet
    _req_deleteSheet = batch_kinds._req_deleteSheet
    _req_updateSheetProperties = batch_kinds._req_updateSheetProperties
    _req_copyPaste = batch_kinds._req_copyPaste
    _req_updateCells = batch_kinds._req_updateCells
    _req_updateSpreadsheetProperties = batch_kinds._req_updateSpreadsheetProperties

    def __init__(
        self,
        read_quota_per_minute: int | None = 60,
        write_quota_per_minute: int | None = 60,
        *,
        project_read_quota_per_minute: int | None = 300,
        project_write_quota_per_minute: int | None = 300,
        quota_window_s: float = 60.0,
        drive_lag_s: float = 0.0,
    ) -> None:
        super().__init__()
        # Drive's modifiedTime/version of a spreadsheet trail its Sheets edits by about 3 minutes,
        # sometimes ~10 (googleapis/google-api-go-client#906, #444): with drive_lag_s > 0, Drive
        # files.get/files.list show each file as it was drive_lag_s ago (settable at any time).
        self.drive_lag_s = drive_lag_s
        self._drive_history: dict[str, deque[tuple[float, int, int]]] = {}
        self.read_quota_per_minute = read_quota_per_minute
        self.write_quota_per_minute = write_quota_per_minute
        self.project_read_quota_per_minute = project_read_quota_per_minute
        self.project_write_quota_per_minute = project_write_quota_per_minute
        self.quota_window_s = quota_window_s
        self._state = threading.RLock()
        self._accounts: dict[str, _Account] = {}
        self._tokens: dict[str, _Token] = {}
        self._files: dict[str, SpreadsheetFile] = {}
        self._quota_log: dict[tuple[str, str], deque[float]] = {}
        self._last_ms = 0
        self._id_rng = secrets.SystemRandom()
        # APIs switched off in the project ("sheets", "drive"): every call answers 403 SERVICE_DISABLED
        self.disabled_apis: set[str] = set()
        # the token endpoint's clock minus the machine's: +7200 plays a machine whose clock is 2 h slow
        self.clock_offset_s = 0.0
        self.jwt_clock_tolerance_s = JWT_CLOCK_TOLERANCE_S
        self.cell_limit = CELL_LIMIT
        self._caller = ""  # the account of the write being applied (protections exempt editors)

    # ============================================================ counters
    @property
    def read_requests(self) -> int:
        return sum(self.counters[e] for e in READ_ENDPOINTS)

    @property
    def write_requests(self) -> int:
        return sum(self.counters[e] for e in WRITE_ENDPOINTS)

    # ============================================================ base-class hooks
    def endpoint_of(self, request: Request) -> str:
        info = _classify(request.method, request.path)
        return info.endpoint if info else "unknown"

    def error_response(self, status: int, request: Request) -> Response:
        info = _classify(request.method, request.path)
        endpoint = info.endpoint if info else "unknown"
        if endpoint == "token":
            error, description = _OAUTH_FAULTS.get(status, ("server_error", "Error"))
            return oauth_error(status, error, description)
        if endpoint.startswith("drive."):
            reason, message, domain = _DRIVE_FAULTS.get(status, ("unknown", "Unknown Error", "global"))
            return drive_error(status, message, reason, domain)
        if status == 429:
            kind = "write" if endpoint in WRITE_ENDPOINTS else "read"
            limit = self.write_quota_per_minute if kind == "write" else self.read_quota_per_minute
            return Response.json(quota_error_body(kind, limit if limit is not None else 60), 429)
        return sheets_error(status)

    def named_fault(self, fault: str, request: Request) -> Response | None:
        """The answers of NAMED_FAULTS; None (answered normally) where the name does not apply to the
        endpoint (a protected-range refusal of a read, a Drive rate limit on Sheets)."""
        info = _classify(request.method, request.path)
        endpoint = info.endpoint if info else "unknown"
        token_faults = {
            "clock_skew": _JWT_TIME_MESSAGE,
            "account_deleted": ACCOUNT_NOT_FOUND_MESSAGE,
            "key_revoked": "Invalid JWT Signature.",
        }
        if endpoint == "token":
            return oauth_error(400, "invalid_grant", token_faults[fault]) if fault in token_faults else None
        if fault == "service_disabled":
            return service_disabled_error("drive" if endpoint.startswith("drive.") else "sheets")
        if fault == "drive_rate_limit":
            return drive_rate_limit_error() if endpoint.startswith("drive.") else None
        if fault in ("protected", "cell_limit") and endpoint in WRITE_ENDPOINTS:
            message = (
                PROTECTED_MESSAGE
                if fault == "protected"
                else _CELL_LIMIT_MESSAGE.format(limit=self.cell_limit)
            )
            if endpoint == "sheets.batchUpdate":
                try:
                    first = (json.loads(request.body or b"{}").get("requests") or [{}])[0]
                except (ValueError, AttributeError):
                    first = {}
                kind = next(iter(first), "") if isinstance(first, dict) else ""
                message = f"Invalid requests[0].{kind}: {message}"
            return sheets_error(400, message)
        return None

    def garbage_response(self, request: Request) -> Response:
        # what a captive portal or a misrouted proxy hands back: a 200 that is not JSON
        body = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in.</body></html>"
        return Response(200, body, {"Content-Type": "text/html; charset=UTF-8"})

    def route(self, request: Request) -> Response:
        info = _classify(request.method, request.path)
        if info is None:
            body = _NOT_FOUND_HTML.format(path=request.path).encode("utf-8")
            return Response(404, body, {"Content-Type": "text/html; charset=UTF-8"})
        try:
            if info.endpoint == "token":
                return self._token(request)
            with self._state:
                if info.endpoint.startswith("drive."):
                    return self._drive(request, info)
                return self._sheets(request, info)
        except _Reply as reply:
            return reply.response
