"""Loopback emulator of Google's OAuth2 token endpoint, Sheets API v4 and Drive v3 (the subset gspread uses).

The wire format follows /work/shared/api-contracts.md section 1, so the real gspread + google-auth clients
can be pointed at it (rewrite the two Google hosts to ``base_url``; ``token_uri`` in the key JSON already
points here). Everything a test needs to play "the person editing the sheet" is a plain method.

Deliberate simplifications (kept small so behaviour stays predictable in tests):
- formulas are evaluated only for arithmetic on literals (``=1+1``); anything else renders ``#NAME?``;
- USER_ENTERED parses plain decimals and TRUE/FALSE; dates, percentages and currencies stay text;
- Drive has no folders and no quota; ``q`` supports ``and``-joined clauses only.
"""

from __future__ import annotations

import ast
import base64
import copy
import json
import math
import operator
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from image_pipeline.testing.emulators.base import EmulatorServer, Request, Response

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SPREADSHEET_MIME = "application/vnd.google-apps.spreadsheet"
PROJECT_ID = "image-pipeline"
# The project number of the recorded 429 fixture, so the body matches it byte for byte.
PROJECT_NUMBER = "603366585132"
MAX_CELL_CHARS = 50000
DEFAULT_ROWS = 1000
DEFAULT_COLS = 26
TOKEN_LIFETIME_S = 3599
_WWW_AUTHENTICATE = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'

READ_ENDPOINTS = ("sheets.get", "values.get", "values.batchGet")
WRITE_ENDPOINTS = (
    "values.append",
    "values.update",
    "values.batchUpdate",
    "sheets.batchUpdate",
    "values.clear",
    "values.batchClear",
)

_SCOPE = "https://www.googleapis.com/auth/"
_SHEETS_READ_SCOPES = {
    _SCOPE + s for s in ("spreadsheets", "spreadsheets.readonly", "drive", "drive.readonly", "drive.file")
}
_SHEETS_WRITE_SCOPES = {_SCOPE + s for s in ("spreadsheets", "drive", "drive.file")}
_DRIVE_SCOPES = {
    _SCOPE + s for s in ("drive", "drive.readonly", "drive.file", "drive.metadata", "drive.metadata.readonly")
}

UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_JWT_TIME_MESSAGE = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)
# google-auth surfaces it as "invalid_grant: Invalid grant: account not found" (a deleted service account)
ACCOUNT_NOT_FOUND_MESSAGE = "Invalid grant: account not found"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_STATUS_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: UNAUTHENTICATED_MESSAGE,
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    409: "The operation was aborted.",
    500: "Internal error encountered.",
    501: "Operation is not implemented, or supported, or enabled.",
    503: "The service is currently unavailable.",
    504: "Deadline expired before operation could complete.",
}
# Drive v3 keeps the older envelope; (reason, message, domain) per status for injected faults.
_DRIVE_FAULTS = {
    400: ("badRequest", "Bad Request", "global"),
    401: ("authError", "Invalid Credentials", "global"),
    # Drive reports its rate limit as 403 usageLimits; gspread's BackOffHTTPClient keys off that domain.
    403: ("userRateLimitExceeded", "User rate limit exceeded.", "usageLimits"),
    404: ("notFound", "File not found.", "global"),
    429: ("rateLimitExceeded", "Rate Limit Exceeded", "usageLimits"),
    500: ("internalError", "Internal Error", "global"),
    503: ("backendError", "Backend Error", "global"),
}
_OAUTH_FAULTS = {
    400: ("invalid_request", "Bad Request"),
    401: ("invalid_client", "Unauthorized"),
    403: ("access_denied", "Forbidden"),
    429: ("rate_limit_exceeded", "Rate Limit Exceeded"),
    500: ("internal_failure", "Internal error encountered."),
    503: ("temporarily_unavailable", "The service is currently unavailable."),
}


# A write touching a protected range or sheet (one the caller may not edit) is refused whole, with this
# text (theoephraim/node-google-spreadsheet#20); batchUpdate prefixes it with "Invalid requests[i].<kind>: ".
PROTECTED_MESSAGE = (
    "You are trying to edit a protected cell or object. Please contact the spreadsheet owner to remove "
    "protection if you need to edit."
)
# Google's per-spreadsheet cell limit (https://support.google.com/drive/answer/37603) and the 400 a write
# growing past it gets (nithinmurali/pygsheets#589).
CELL_LIMIT = 10_000_000
_CELL_LIMIT_MESSAGE = (
    "This action would increase the number of cells in the workbook above the limit of {limit} cells."
)
# How far the token endpoint lets a JWT's iat/exp stray from its own clock. Google does not document
# it; 5 minutes is the allowance its client libraries' clock-skew errors are usually discussed with
# (googleapis/oauth2client#193), so a machine clock off by more than that gets the invalid_grant below.
JWT_CLOCK_TOLERANCE_S = 300.0
_API_TITLES = {"sheets": "Google Sheets API", "drive": "Google Drive API"}

# Service-specific faults a FaultPlan may name (base.EmulatorServer.named_fault); the chaos harness
# draws from these.
NAMED_FAULTS = (
    "protected",  # a write refused by a protected range (400, whole request not applied)
    "cell_limit",  # a write refused at the 10,000,000-cell limit (400)
    "service_disabled",  # the Sheets or Drive API disabled in the key's project (403 SERVICE_DISABLED)
    "drive_rate_limit",  # Drive's per-user rate limit (403 usageLimits userRateLimitExceeded)
    "clock_skew",  # the token endpoint refusing a JWT outside its time window (invalid_grant)
    "account_deleted",  # the token endpoint: the service account no longer exists (invalid_grant)
    "key_revoked",  # the token endpoint: the key's signature no longer verifies (invalid_grant)
)


def service_disabled_error(api: str, project: str = "") -> Response:
    """403 for an API switched off in the caller's project, in the shape of that API.

    Sheets v4: the google.rpc envelope, with a Help link and an ErrorInfo whose reason is SERVICE_DISABLED
    and whose metadata names consumer and service (https://cloud.google.com/apis/design/errors;
    googleapis/googleapis google/api/error_reason.proto; message text: getodk/collect#334). Drive v3 adds
    its older ``errors[]`` item, domain usageLimits and reason accessNotConfigured (transloadit/uppy#1300):
    the same domain as its rate limit, which is why a client must read the reason, not the domain."""
    project = project or PROJECT_NUMBER
    host = f"{api}.googleapis.com"
    url = f"https://console.developers.google.com/apis/api/{host}/overview?project={project}"
    message = (
        f"{_API_TITLES.get(api, api)} has not been used in project {project} before or it is disabled. "
        f"Enable it by visiting {url} then retry. If you enabled this API recently, wait a few minutes "
        "for the action to propagate to our systems and retry."
    )
    error: dict[str, Any] = {"code": 403, "message": message}
    if api == "drive":
        error["errors"] = [
            {
                "message": message,
                "domain": "usageLimits",
                "reason": "accessNotConfigured",
                "extendedHelp": "https://console.developers.google.com",
            }
        ]
    error["status"] = "PERMISSION_DENIED"
    error["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{"description": "Google developers console API activation", "url": url}],
        },
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "SERVICE_DISABLED",
            "domain": "googleapis.com",
            "metadata": {"consumer": f"projects/{project}", "service": host},
        },
    ]
    return Response.json({"error": error}, 403)


def drive_rate_limit_error() -> Response:
    """Drive's per-user rate limit: a 403 (not a 429) in the usageLimits domain, as documented in
    https://developers.google.com/workspace/drive/api/guides/handle-errors (labbots/google-drive-upload#192)."""
    return drive_error(403, "User Rate Limit Exceeded", "userRateLimitExceeded", "usageLimits")


class _Reply(Exception):
    """Carries a finished error response out of deep helpers, so handlers read linearly."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def sheets_error(
    code: int, message: str | None = None, details: list[dict[str, Any]] | None = None
) -> Response:
    error: dict[str, Any] = {
        "code": code,
        "message": message if message is not None else _STATUS_MESSAGES.get(code, "Unknown error."),
        "status": _STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    headers = {}
    if code == 401:
        headers["WWW-Authenticate"] = _WWW_AUTHENTICATE
    return Response.json({"error": error}, code, headers)


def drive_error(
    code: int,
    message: str,
    reason: str,
    domain: str = "global",
    location: str | None = None,
    location_type: str = "parameter",
) -> Response:
    item: dict[str, Any] = {"domain": domain, "reason": reason, "message": message}
    if location is not None:
        item["locationType"] = location_type
        item["location"] = location
    return Response.json({"error": {"errors": [item], "code": code, "message": message}}, code)


def oauth_error(code: int, error: str, description: str) -> Response:
    return Response.json({"error": error, "error_description": description}, code)


def quota_error_body(kind: str, limit: int, per_user: bool = True) -> dict[str, Any]:
    """The recorded RESOURCE_EXHAUSTED body (gargle fixture), for ``kind`` "read" or "write"."""
    noun = "Read" if kind == "read" else "Write"
    limit_text = f"{noun} requests per minute per user" if per_user else f"{noun} requests per minute"
    message = (
        f"Quota exceeded for quota metric '{noun} requests' and limit '{limit_text}' of service "
        f"'sheets.googleapis.com' for consumer 'project_number:{PROJECT_NUMBER}'."
    )
    return {
        "error": {
            "code": 429,
            "message": message,
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "googleapis.com",
                    "metadata": {
                        "quota_limit_value": str(limit),
                        "service": "sheets.googleapis.com",
                        "consumer": f"projects/{PROJECT_NUMBER}",
                        "quota_unit": "1/min/{project}/{user}" if per_user else "1/min/{project}",
                        "quota_location": "global",
                        "quota_metric": f"sheets.googleapis.com/{kind}_requests",
                        "quota_limit": f"{noun}RequestsPerMinutePer{'User' if per_user else 'Project'}",
                    },
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Request a higher quota limit.",
                            "url": "https://cloud.google.com/docs/quotas/help/request_increase",
                        }
                    ],
                },
            ],
        }
    }


# ---------------------------------------------------------------------------------------------- cells


CellValue = str | float | bool


@dataclass(frozen=True)
class Cell:
    value: CellValue  # the effective value (a formula's result)
    formula: str | None = None  # the text as entered, only for USER_ENTERED "=..."


class _Skip:
    """A JSON null in input: Sheets leaves that cell untouched."""


_SKIP = _Skip()
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


class _Unsupported(Exception):
    pass


_BIN_OPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


def _eval_node(node: ast.AST) -> CellValue:
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        if isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node.value, str):
            return node.value
    if isinstance(node, ast.Name) and node.id.upper() in ("TRUE", "FALSE"):
        return node.id.upper() == "TRUE"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _eval_node(node.operand)
        if not isinstance(operand, float):
            raise _Unsupported
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if not isinstance(left, float) or not isinstance(right, float):
            raise _Unsupported
        return _BIN_OPS[type(node.op)](left, right)
    raise _Unsupported


def evaluate_formula(formula: str) -> CellValue:
    """Arithmetic on literals only; other formulas render as Google would for an unknown name."""
    # Sheets writes power as ^; the AST is only inspected, never executed.
    expr = formula[1:].strip().replace("^", "**")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "#ERROR!"
    try:
        result = _eval_node(tree.body)
    except ZeroDivisionError:
        return "#DIV/0!"
    except OverflowError:
        return "#NUM!"
    except (_Unsupported, RecursionError):
        return "#NAME?"
    if isinstance(result, float) and not math.isfinite(result):
        return "#NUM!"
    return result


# A formula that is one cell of the same sheet (=A5, =$A$5): enough to show how copyPaste re-bases
# relative references. Anything bigger stays "arithmetic on literals only" (module docstring).
_REF_RE = re.compile(r"^=\s*(\$?)([A-Za-z]{1,3})(\$?)([1-9]\d*)\s*$")


def single_ref(formula: str) -> tuple[int, int] | None:
    """(row, col), 0-based, of a formula that is a single same-sheet cell reference."""
    found = _REF_RE.match(formula)
    return (int(found.group(4)) - 1, col_index(found.group(2).upper())) if found else None


def rebase_formula(formula: str, d_row: int, d_col: int) -> str:
    """A single-reference formula as PASTE_NORMAL pastes it ``d_row``/``d_col`` away: relative parts move
    with it, ``$`` parts stay ("Copy and paste ... relative references change", Sheets Help: "Use cell
    references in a formula", https://support.google.com/docs/answer/46977); off the grid it is #REF!."""
    found = _REF_RE.match(formula)
    if found is None:
        return formula
    col_abs, letters, row_abs, digits = found.groups()
    col = col_index(letters.upper()) + (0 if col_abs else d_col)
    row = int(digits) - 1 + (0 if row_abs else d_row)
    if col < 0 or row < 0:
        return "=#REF!"
    return f"={col_abs}{col_letters(col)}{row_abs}{row + 1}"


def format_number(x: float) -> str:
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return format(x, ".15g").replace("e", "E")


def formatted(cell: Cell | None) -> str:
    if cell is None:
        return ""
    value = cell.value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return format_number(value)
    return value


def unformatted(cell: Cell | None) -> Any:
    if cell is None:
        return ""
    value = cell.value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def render(cell: Cell | None, option: str) -> Any:
    if option == "FORMATTED_VALUE":
        return formatted(cell)
    if option == "FORMULA" and cell is not None and cell.formula is not None:
        return cell.formula
    return unformatted(cell)


def _cell_from_extended(value: Any, where: str) -> Cell | None:
    """An ExtendedValue (``{"stringValue": ...}`` etc.) as stored; None or {} clears the cell."""
    if not value:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise _Reply(sheets_error(400, f"{where}: exactly one value kind must be set."))
    [(kind, raw)] = value.items()
    if kind == "stringValue":
        return Cell(str(raw)) if raw != "" else None
    if kind == "numberValue":
        return Cell(float(raw))
    if kind == "boolValue":
        return Cell(bool(raw))
    if kind == "formulaValue":
        return Cell(evaluate_formula(str(raw)), formula=str(raw))
    raise _Reply(sheets_error(400, f"{where}: Unknown value kind {kind}."))


def parse_input(value: Any, user_entered: bool) -> Cell | None | _Skip:
    """One input cell as the API stores it (``None`` clears the cell). Raises ValueError on bad types."""
    if value is None:
        return _SKIP
    if isinstance(value, bool):
        return Cell(value)
    if isinstance(value, int | float):
        return Cell(float(value))
    if not isinstance(value, str):
        raise ValueError(type(value).__name__)
    if len(value) > MAX_CELL_CHARS:
        raise OverflowError
    if value == "":
        return None
    if not user_entered:
        return Cell(value)
    if value.startswith("'"):
        # a leading apostrophe is the UI's "treat as text" marker and is not part of the value
        return Cell(value[1:]) if len(value) > 1 else None
    if value.startswith("=") and len(value) > 1:
        return Cell(evaluate_formula(value), formula=value)
    if value.upper() in ("TRUE", "FALSE"):
        return Cell(value.upper() == "TRUE")
    if _NUMBER_RE.match(value):
        return Cell(float(value))
    return Cell(value)


# ---------------------------------------------------------------------------------------------- A1


def col_letters(index: int) -> str:
    """0-based column index -> A1 letters."""
    letters = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def col_index(letters: str) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + (ord(ch) - 64)
    return n - 1


_PLAIN_SHEET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CELLISH = re.compile(r"^([A-Za-z]{1,3}\d+|[Rr]\d*[Cc]\d*)$")
_A1_END = re.compile(r"^([A-Za-z]{1,3})?([1-9]\d*)?$")


def sheet_ref(title: str) -> str:
    """The sheet name as Google echoes it: quoted only when a bare name would be ambiguous."""
    if _PLAIN_SHEET.match(title) and not _CELLISH.match(title):
        return title
    return "'" + title.replace("'", "''") + "'"


def a1(title: str, r0: int, c0: int, r1: int, c1: int) -> str:
    """Half-open 0-based box -> "Sheet!A1:C3" (a single cell stays "Sheet!C5")."""
    start = f"{col_letters(c0)}{r0 + 1}"
    if r1 - r0 <= 1 and c1 - c0 <= 1:
        return f"{sheet_ref(title)}!{start}"
    return f"{sheet_ref(title)}!{start}:{col_letters(c1 - 1)}{r1}"


# ---------------------------------------------------------------------------------------------- model


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


def _rfc3339(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parse_fields(text: str) -> dict[str, Any]:
    """A Google field mask ("kind,files(id,name)", "sheets.properties") as a nested dict; {} = whole value."""
    tokens = re.findall(r"[^,()./\s]+|[,()./]", text)
    pos = 0

    def parse_seq() -> dict[str, Any]:
        nonlocal pos
        tree: dict[str, Any] = {}
        while pos < len(tokens) and tokens[pos] != ")":
            if tokens[pos] == ",":
                pos += 1
                continue
            parse_path(tree)
        return tree

    def parse_path(tree: dict[str, Any]) -> None:
        nonlocal pos
        sub = tree.setdefault(tokens[pos], {})
        pos += 1
        if pos < len(tokens) and tokens[pos] in (".", "/") and pos + 1 < len(tokens):
            pos += 1
            parse_path(sub)
        elif pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            sub.update(parse_seq())
            pos += 1  # the closing parenthesis

    return parse_seq()


def _apply_fields(value: Any, tree: dict[str, Any]) -> Any:
    if not tree or "*" in tree:
        return value
    if isinstance(value, list):
        return [_apply_fields(v, tree) for v in value]
    if isinstance(value, dict):
        return {k: _apply_fields(v, tree[k]) for k, v in value.items() if k in tree}
    return value


def _flag(request: Request, name: str, default: bool = False) -> bool:
    values = request.query.get(name)
    if not values:
        return default
    return values[0].strip().lower() == "true"


def _param(request: Request, name: str, default: str | None = None) -> str | None:
    values = request.query.get(name)
    return values[0] if values else default


_Q_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<op>!=|=|<=|>=|<|>)|(?P<word>[A-Za-z_][\w.]*))"""
)


def _unescape_q(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def _parse_drive_q(q: str) -> list[tuple[str, str, Any]]:
    """Drive ``q`` as (field, op, value) clauses joined by ``and``; raises ValueError on anything else."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    q = q.strip()
    while pos < len(q):
        m = _Q_TOKEN.match(q, pos)
        if not m or m.end() == pos:
            raise ValueError(q)
        pos = m.end()
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        while pos < len(q) and q[pos].isspace():
            pos += 1
    clauses: list[tuple[str, str, Any]] = []
    i = 0
    while i < len(tokens):
        a, b, c = (tokens[i : i + 3] + [("", ""), ("", "")])[:3]
        if a[0] == "word" and b[0] == "op" and c[0] in ("str", "word"):
            value: Any = _unescape_q(c[1]) if c[0] == "str" else c[1].lower()
            if c[0] == "word" and value not in ("true", "false"):
                raise ValueError(q)
            clauses.append((a[1], b[1], value))
        elif a[0] == "word" and b == ("word", "contains") and c[0] == "str":
            clauses.append((a[1], "contains", _unescape_q(c[1])))
        elif a[0] == "str" and b == ("word", "in") and c[0] == "word":
            clauses.append((c[1], "in", _unescape_q(a[1])))
        else:
            raise ValueError(q)
        i += 3
        if i < len(tokens):
            if tokens[i] != ("word", "and"):
                raise ValueError(q)
            i += 1
            if i >= len(tokens):
                raise ValueError(q)
    return clauses


_NOT_FOUND_HTML = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1</title>\n"
    "  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n  <p>The requested URL <code>{path}</code> was not "
    "found on this server.  <ins>That\u2019s all we know.</ins>\n"
)


@dataclass(frozen=True)
class _RouteInfo:
    endpoint: str
    spreadsheet_id: str = ""
    range_text: str = ""


def _classify(method: str, path: str) -> _RouteInfo | None:
    if path == "/token":
        return _RouteInfo("token") if method == "POST" else None
    if path.startswith("/drive/v3/files"):
        rest = path[len("/drive/v3/files") :]
        if method != "GET":
            return None
        if rest in ("", "/"):
            return _RouteInfo("drive.files.list")
        if rest.startswith("/") and "/" not in rest[1:]:
            return _RouteInfo("drive.files.get", unquote(rest[1:]))
        return None
    if not path.startswith("/v4/spreadsheets/"):
        return None
    rest = path[len("/v4/spreadsheets/") :]
    head, slash, tail = rest.partition("/")
    if not slash:
        sid, colon, verb = head.partition(":")
        if not colon and method == "GET":
            return _RouteInfo("sheets.get", unquote(sid))
        if verb == "batchUpdate" and method == "POST":
            return _RouteInfo("sheets.batchUpdate", unquote(sid))
        return None
    sid = unquote(head)
    if tail.startswith("values:"):
        verb = tail[len("values:") :]
        table = {"batchGet": "GET", "batchUpdate": "POST", "batchClear": "POST"}
        if table.get(verb) == method:
            return _RouteInfo(f"values.{verb}", sid)
        return None
    if not tail.startswith("values/"):
        return None
    segment = tail[len("values/") :]
    if not segment or "/" in segment:
        return None
    # the range itself arrives percent-encoded, so a literal ':' can only be the custom-method suffix
    for suffix, endpoint in ((":append", "values.append"), (":clear", "values.clear")):
        if segment.endswith(suffix):
            if method != "POST":
                return None
            return _RouteInfo(endpoint, sid, unquote(segment[: -len(suffix)]))
    if method == "GET":
        return _RouteInfo("values.get", sid, unquote(segment))
    if method == "PUT":
        return _RouteInfo("values.update", sid, unquote(segment))
    return None


# ---------------------------------------------------------------------------------------------- server


class GoogleEmulator(EmulatorServer):
    """OAuth2 token endpoint + Sheets v4 + Drive v3 on one loopback base URL."""

    name = "google"

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

    # ============================================================ token endpoint
    def _token(self, request: Request) -> Response:
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        grant_type = (form.get("grant_type") or [""])[0]
        if not grant_type:
            return oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != JWT_BEARER:
            return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = (form.get("assertion") or [""])[0]
        if not assertion:
            return oauth_error(400, "invalid_request", "Missing required parameter: assertion")
        claims = self._verify_assertion(assertion)
        scopes = frozenset(str(claims.get("scope") or "").split())
        if not scopes:
            return oauth_error(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29.c." + secrets.token_urlsafe(96)
        with self._state:
            self._tokens[token] = _Token(str(claims["iss"]), scopes, time.time() + TOKEN_LIFETIME_S)
        return Response.json({"access_token": token, "expires_in": TOKEN_LIFETIME_S, "token_type": "Bearer"})

    def _verify_assertion(self, assertion: str) -> dict[str, Any]:
        bad_signature = _Reply(oauth_error(400, "invalid_grant", "Invalid JWT Signature."))
        parts = assertion.split(".")
        if len(parts) != 3:
            raise bad_signature
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except ValueError as exc:
            raise bad_signature from exc
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            raise bad_signature
        with self._state:
            account = self._accounts.get(str(claims.get("iss")))
        if account is None:
            raise _Reply(oauth_error(400, "invalid_grant", ACCOUNT_NOT_FOUND_MESSAGE))
        kid = header.get("kid")
        keys = [account.public_keys[kid]] if kid in account.public_keys else []
        if kid is None:
            keys = list(account.public_keys.values())
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        for key in keys:
            try:
                key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
                break
            except InvalidSignature:
                continue
        else:
            raise bad_signature
        iat, exp = claims.get("iat"), claims.get("exp")
        # checked against the token endpoint's own clock: a machine whose clock is off signs an
        # assertion that is already expired or not yet valid (googleapis/oauth2client#193)
        now = time.time() + self.clock_offset_s
        slack = self.jwt_clock_tolerance_s
        if (
            not isinstance(iat, int | float)
            or not isinstance(exp, int | float)
            or exp - iat > 3600
            or exp <= iat
            or iat > now + slack
            or exp < now - slack
        ):
            raise _Reply(oauth_error(400, "invalid_grant", _JWT_TIME_MESSAGE))
        return claims

    # ============================================================ auth + quota
    def _authenticate(self, request: Request, allowed_scopes: set[str], drive: bool) -> _Token:
        scheme, _, value = request.header("authorization").partition(" ")
        token = self._tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None or token.expires_at < time.time():
            if drive:
                response = Response.json(
                    {
                        "error": {
                            "code": 401,
                            "message": UNAUTHENTICATED_MESSAGE,
                            "errors": [
                                {
                                    "message": "Invalid Credentials",
                                    "domain": "global",
                                    "reason": "authError",
                                    "location": "Authorization",
                                    "locationType": "header",
                                }
                            ],
                            "status": "UNAUTHENTICATED",
                        }
                    },
                    401,
                    {"WWW-Authenticate": _WWW_AUTHENTICATE},
                )
                raise _Reply(response)
            raise _Reply(sheets_error(401))
        if not token.scopes & allowed_scopes:
            message = "Request had insufficient authentication scopes."
            if drive:
                raise _Reply(drive_error(403, "Insufficient Permission", "insufficientPermissions"))
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                    "domain": "googleapis.com",
                    "metadata": {"service": "sheets.googleapis.com"},
                }
            ]
            raise _Reply(sheets_error(403, message, details))
        return token

    def _charge_quota(self, email: str, kind: str) -> None:
        user_limit = self.read_quota_per_minute if kind == "read" else self.write_quota_per_minute
        project_limit = (
            self.project_read_quota_per_minute if kind == "read" else self.project_write_quota_per_minute
        )
        now = time.monotonic()
        checks = ((email, user_limit, True), ("", project_limit, False))
        logs = []
        for who, limit, per_user in checks:
            log = self._quota_log.setdefault((who, kind), deque())
            while log and log[0] <= now - self.quota_window_s:
                log.popleft()
            if limit is not None and len(log) >= limit:
                # a rejected request does not consume quota, so the window drains on its own
                raise _Reply(Response.json(quota_error_body(kind, limit, per_user), 429))
            logs.append(log)
        for log in logs:
            log.append(now)

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

    def _sheets_sheets_batchUpdate(
        self, request: Request, file: SpreadsheetFile, info: _RouteInfo, body: Any
    ) -> Response:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not requests:
            raise _Reply(sheets_error(400, "Must specify at least one request."))
        replies = []
        for i, item in enumerate(requests):
            if not isinstance(item, dict) or len(item) != 1:
                raise _Reply(
                    sheets_error(400, f"Invalid requests[{i}]: exactly one request kind must be set.")
                )
            [(kind, spec)] = item.items()
            handler = getattr(self, f"_req_{kind}", None)
            if handler is None:
                raise _Reply(
                    sheets_error(
                        400,
                        f"Invalid JSON payload received. Unknown name \"{kind}\" at 'requests[{i}]': "
                        "Cannot find field.",
                    )
                )
            spec = spec if isinstance(spec, dict) else {}
            where = f"Invalid requests[{i}].{kind}"
            self._check_protected(file, self._footprint(file, kind, spec), where)
            cells_before = self._cell_count(file)
            replies.append(handler(file, spec, where))
            self._check_cell_limit(file, cells_before, where)
        return Response.json({"spreadsheetId": file.spreadsheet_id, "replies": replies})

    # ---------------------------------------------------------------- protections and the cell limit
    def _footprint(
        self, file: SpreadsheetFile, kind: str, spec: dict[str, Any]
    ) -> list[tuple[int, int | None, int | None]]:
        """What one batchUpdate request changes: (sheetId, first row, end row), rows None for a change of
        the sheet's structure. Best effort: a malformed request is refused by its handler anyway."""

        def grid(rng: Any) -> tuple[int, int | None, int | None]:
            rng = rng if isinstance(rng, dict) else {}
            sheet = file.sheet_by_id(rng.get("sheetId", 0))
            end = rng.get("endRowIndex", sheet.row_count if sheet else None)
            return int(rng.get("sheetId", 0)), int(rng.get("startRowIndex", 0)), end

        if kind in ("deleteDimension", "insertDimension"):
            rng = spec.get("range") or {}
            sid = int(rng.get("sheetId", 0))
            if rng.get("dimension") != "ROWS":
                return [(sid, None, None)]
            start = int(rng.get("startIndex", 0))
            if kind == "insertDimension":
                # rows pushed into or out of a protected band change it; inserting below it does not
                return [(sid, max(0, start - 1), start + 1)]
            return [(sid, start, rng.get("endIndex"))]
        if kind == "copyPaste":
            return [grid(spec.get("destination"))]
        if kind == "updateCells":
            if "range" in spec:
                return [grid(spec["range"])]
            start = spec.get("start") or {}
            height = max(1, len(spec.get("rows") or []))
            row = int(start.get("rowIndex", 0))
            return [(int(start.get("sheetId", 0)), row, row + height)]
        if kind in ("appendDimension", "deleteSheet"):
            return [(int(spec.get("sheetId", 0)), None, None)]
        if kind == "updateSheetProperties":
            return [(int((spec.get("properties") or {}).get("sheetId", 0)), None, None)]
        return []

    def _check_protected(
        self, file: SpreadsheetFile, footprint: list[tuple[int, int | None, int | None]], where: str
    ) -> None:
        if self._caller == file.owner_email or not file.protections:
            return
        for sheet_id, r0, r1 in footprint:
            for protection in file.protections:
                if self._caller not in protection.editors and protection.covers(sheet_id, r0, r1):
                    message = f"{where}: {PROTECTED_MESSAGE}" if where else PROTECTED_MESSAGE
                    raise _Reply(sheets_error(400, message))

    @staticmethod
    def _cell_count(file: SpreadsheetFile) -> int:
        return sum(sheet.row_count * sheet.col_count for sheet in file.sheets)

    def _check_cell_limit(self, file: SpreadsheetFile, before: int, where: str) -> None:
        after = self._cell_count(file)
        if after > self.cell_limit and after > before:
            message = _CELL_LIMIT_MESSAGE.format(limit=self.cell_limit)
            raise _Reply(sheets_error(400, f"{where}: {message}" if where else message))

    # ---------------------------------------------------------------- spreadsheets.batchUpdate kinds
    def _dimension_target(
        self, file: SpreadsheetFile, spec: dict[str, Any], where: str
    ) -> tuple[Sheet, bool]:
        sheet = file.sheet_by_id(spec.get("sheetId", 0))
        if sheet is None:
            raise _Reply(sheets_error(400, f"{where}: No grid with id: {spec.get('sheetId', 0)}"))
        dimension = spec.get("dimension")
        if dimension not in ("ROWS", "COLUMNS"):
            raise _Reply(sheets_error(400, f"{where}: range.dimension must be ROWS or COLUMNS."))
        return sheet, dimension == "ROWS"

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

    def _grid_box(
        self, file: SpreadsheetFile, rng: Any, where: str, name: str
    ) -> tuple[Sheet, int, int, int, int]:
        """A GridRange -> (sheet, r0, c0, r1, c1), half-open; omitted bounds mean the whole grid."""
        if not isinstance(rng, dict):
            raise _Reply(sheets_error(400, f"{where}: {name} must be a GridRange."))
        sheet = file.sheet_by_id(rng.get("sheetId", 0))
        if sheet is None:
            raise _Reply(sheets_error(400, f"{where}: No grid with id: {rng.get('sheetId', 0)}"))
        r0 = int(rng.get("startRowIndex", 0))
        r1 = int(rng.get("endRowIndex", sheet.row_count))
        c0 = int(rng.get("startColumnIndex", 0))
        c1 = int(rng.get("endColumnIndex", sheet.col_count))
        if r0 < 0 or c0 < 0 or r1 < r0 or c1 < c0:
            raise _Reply(sheets_error(400, f"{where}: Invalid {name}: start index must be <= end index."))
        if r1 > sheet.row_count:
            raise _Reply(
                sheets_error(
                    400,
                    f"{where}: Range ('{sheet.title}'!R{r0 + 1}C{c0 + 1}:R{r1}C{c1}) exceeds grid limits. "
                    f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}",
                )
            )
        if c1 > sheet.col_count:
            raise _Reply(
                sheets_error(
                    400,
                    f"{where}: Range ('{sheet.title}'!R{r0 + 1}C{c0 + 1}:R{r1}C{c1}) exceeds grid limits. "
                    f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}",
                )
            )
        return sheet, r0, c0, r1, c1

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
                            moved = rebase_formula(
                                cell.formula, dr0 + i * height - sr0, dc0 + j * width - sc0
                            )
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

    # ============================================================ Drive v3
    def _drive(self, request: Request, info: _RouteInfo) -> Response:
        token = self._authenticate(request, _DRIVE_SCOPES, drive=True)
        if "drive" in self.disabled_apis:
            raise _Reply(service_disabled_error("drive"))
        fields = _param(request, "fields")
        if info.endpoint == "drive.files.get":
            file = self._files.get(info.spreadsheet_id)
            if file is None or not self._can_access(file, token.email):
                # Drive hides files the caller cannot see behind the same 404 as missing ones
                message = f"File not found: {info.spreadsheet_id}."
                raise _Reply(drive_error(404, message, "notFound", location="fileId"))
            resource = self._drive_resource(file, token.email)
            tree = _parse_fields(fields) if fields else {"kind": {}, "id": {}, "name": {}, "mimeType": {}}
            return Response.json(_apply_fields(resource, tree))
        return self._drive_list(request, token, fields)

    def _drive_list(self, request: Request, token: _Token, fields: str | None) -> Response:
        invalid_q = _Reply(drive_error(400, "Invalid Value", "invalid", location="q"))
        try:
            clauses = _parse_drive_q(_param(request, "q") or "")
        except ValueError as exc:
            raise invalid_q from exc
        known = ("name", "mimeType", "trashed", "parents", "owners", "writers", "readers")
        if any(name not in known for name, _, _ in clauses):
            raise invalid_q
        matches = []
        for file in self._files.values():
            if not self._can_access(file, token.email):
                continue
            resource = self._drive_resource(file, token.email)
            if all(self._q_match(resource, clause) for clause in clauses):
                matches.append(resource)
        order = _param(request, "orderBy")
        if order:
            for key in reversed([k.strip() for k in order.split(",") if k.strip()]):
                name, _, direction = key.partition(" ")
                matches.sort(key=lambda res, n=name: str(res.get(n, "")), reverse=direction.strip() == "desc")
        try:
            page_size = max(1, min(int(_param(request, "pageSize") or 100), 1000))
            token_text = _param(request, "pageToken")
            offset = int(base64.urlsafe_b64decode(token_text.encode()).decode()) if token_text else 0
        except ValueError as exc:
            raise _Reply(drive_error(400, "Invalid Value", "invalid", location="pageToken")) from exc
        page = matches[offset : offset + page_size]
        payload: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False}
        if offset + page_size < len(matches):
            payload["nextPageToken"] = base64.urlsafe_b64encode(str(offset + page_size).encode()).decode()
        payload["files"] = page
        tree = (
            _parse_fields(fields)
            if fields
            else {
                "kind": {},
                "incompleteSearch": {},
                "nextPageToken": {},
                "files": {"kind": {}, "id": {}, "name": {}, "mimeType": {}},
            }
        )
        return Response.json(_apply_fields(payload, tree))

    @staticmethod
    def _q_match(resource: dict[str, Any], clause: tuple[str, str, Any]) -> bool:
        name, op, value = clause
        if op == "in":
            if name == "owners":
                return any(o["emailAddress"] == value for o in resource["owners"])
            return False  # the emulator has no folders and tracks no writer/reader lists
        actual = resource.get(name)
        if name == "trashed":
            actual = "true" if actual else "false"
        if op == "=":
            return actual == value
        if op == "!=":
            return actual != value
        if op == "contains":
            return isinstance(actual, str) and value.lower() in actual.lower()
        return False

    def _drive_resource(self, file: SpreadsheetFile, caller: str) -> dict[str, Any]:
        return {
            "kind": "drive#file",
            "id": file.spreadsheet_id,
            "name": file.title,
            "mimeType": SPREADSHEET_MIME,
            "starred": False,
            "trashed": False,
            "webViewLink": f"https://docs.google.com/spreadsheets/d/{file.spreadsheet_id}/edit?usp=drivesdk",
            "createdTime": _rfc3339(file.created_ms),
            "modifiedTime": _rfc3339(self._drive_seen(file)[1]),
            "version": str(self._drive_seen(file)[0]),
            "shared": True,
            "ownedByMe": file.owner_email == caller,
            "capabilities": {
                "canEdit": self._can_edit(file, caller),
                "canComment": True,
                "canShare": self._can_edit(file, caller),
                "canDownload": True,
            },
            "owners": [
                {
                    "kind": "drive#user",
                    "displayName": file.owner_email.split("@")[0],
                    "me": file.owner_email == caller,
                    "emailAddress": file.owner_email,
                }
            ],
        }

    # ============================================================ internals
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
