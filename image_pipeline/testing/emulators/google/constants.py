"""The Google emulator's constants: wire identifiers, OAuth scopes, status tables, the texts of the refusals.

Everything here is data the other modules of the package share (the endpoint names the counters and the
chaos harness group requests by, the scopes each API accepts, Google's status names and messages, the
protected-range and cell-limit texts, ``NAMED_FAULTS``); it imports nothing, so any module may use it.
"""

from __future__ import annotations

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
