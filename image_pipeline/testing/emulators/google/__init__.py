"""Loopback emulator of Google's OAuth2 token endpoint, Sheets API v4 and Drive v3 (the subset gspread uses).

The wire format follows /work/shared/api-contracts.md section 1, so the real gspread + google-auth clients
can be pointed at it (rewrite the two Google hosts to ``base_url``; ``token_uri`` in the key JSON already
points here). Everything a test needs to play "the person editing the sheet" is a plain method.

Deliberate simplifications (kept small so behaviour stays predictable in tests):
- formulas are evaluated only for arithmetic on literals (``=1+1``); anything else renders ``#NAME?``;
- USER_ENTERED parses plain decimals and TRUE/FALSE; dates, percentages and currencies stay text;
- Drive has no folders and no quota; ``q`` supports ``and``-joined clauses only.

Layout (each module's docstring says more): constants.py (endpoint names, scopes, refusal texts,
``NAMED_FAULTS``) and errors.py (the error envelopes) at the bottom; a1_notation.py, cells.py and model.py
(the spreadsheet state as data); wire.py (routing and request parsing); the GoogleEmulator's mixins:
people.py (the test-facing helpers), auth.py (token endpoint, bearer tokens, quota), sheets_api.py,
values.py, batch_update.py and batch_kinds.py (Sheets v4), drive.py (Drive v3), store.py (bookkeeping);
server.py assembles ``GoogleEmulator``. This module is the package's interface: import from here.
"""

from __future__ import annotations

from image_pipeline.testing.emulators.google.a1_notation import a1, col_index, col_letters, sheet_ref
from image_pipeline.testing.emulators.google.cells import (
    Cell,
    CellValue,
    evaluate_formula,
    format_number,
    formatted,
    parse_input,
    rebase_formula,
    render,
    single_ref,
    unformatted,
)
from image_pipeline.testing.emulators.google.constants import (
    ACCOUNT_NOT_FOUND_MESSAGE,
    CELL_LIMIT,
    DEFAULT_COLS,
    DEFAULT_ROWS,
    JWT_BEARER,
    JWT_CLOCK_TOLERANCE_S,
    MAX_CELL_CHARS,
    NAMED_FAULTS,
    PROJECT_ID,
    PROJECT_NUMBER,
    PROTECTED_MESSAGE,
    READ_ENDPOINTS,
    SPREADSHEET_MIME,
    TOKEN_LIFETIME_S,
    UNAUTHENTICATED_MESSAGE,
    WRITE_ENDPOINTS,
)
from image_pipeline.testing.emulators.google.errors import (
    drive_error,
    drive_rate_limit_error,
    oauth_error,
    quota_error_body,
    service_disabled_error,
    sheets_error,
)
from image_pipeline.testing.emulators.google.model import GridBox, Protection, Sheet, SpreadsheetFile
from image_pipeline.testing.emulators.google.server import GoogleEmulator

__all__ = [
    "ACCOUNT_NOT_FOUND_MESSAGE",
    "CELL_LIMIT",
    "Cell",
    "CellValue",
    "DEFAULT_COLS",
    "DEFAULT_ROWS",
    "GoogleEmulator",
    "GridBox",
    "JWT_BEARER",
    "JWT_CLOCK_TOLERANCE_S",
    "MAX_CELL_CHARS",
    "NAMED_FAULTS",
    "PROJECT_ID",
    "PROJECT_NUMBER",
    "PROTECTED_MESSAGE",
    "Protection",
    "READ_ENDPOINTS",
    "SPREADSHEET_MIME",
    "Sheet",
    "SpreadsheetFile",
    "TOKEN_LIFETIME_S",
    "UNAUTHENTICATED_MESSAGE",
    "WRITE_ENDPOINTS",
    "a1",
    "col_index",
    "col_letters",
    "drive_error",
    "drive_rate_limit_error",
    "evaluate_formula",
    "format_number",
    "formatted",
    "oauth_error",
    "parse_input",
    "quota_error_body",
    "rebase_formula",
    "render",
    "service_disabled_error",
    "sheet_ref",
    "sheets_error",
    "single_ref",
    "unformatted",
]
