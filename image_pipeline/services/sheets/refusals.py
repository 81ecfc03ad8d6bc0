"""Google Sheets v4, Drive v3 and the OAuth token endpoint: every answer we know, as rules.

``classify_api`` turns an HTTP answer of Sheets or Drive into the pipeline's typed error,
``classify_token`` does the same for the token endpoint's refusals (google-auth raises them as
``RefreshError("<error>: <error_description>", body)``, ``google/oauth2/_client.py``), and
``is_rows_moved`` says whether a 400 of a batchUpdate addressed by row position is one of the few
answers that mean "the sheet changed shape meanwhile" (re-read, try again) rather than a refusal.

Sources are in each rule; ``../shared/real-services.md`` (Google section) and ``api-contracts.md`` §1.5
collect them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from image_pipeline.domain.errors import PipelineError
from image_pipeline.domain.refusals import Refusal, Rule, first_rule, refuse

SERVICE = "sheets"
# the longest piece of Google's own text a message carries (it names the fix, but may be long)
TEXT_LIMIT = 400

_ERROR_MODEL = "https://cloud.google.com/apis/design/errors (google.rpc.ErrorInfo reasons: googleapis/googleapis google/api/error_reason.proto)"

# Matched against ``GoogleAnswer.subject()``: "<status name> <reasons> <domains> :: <message>".
API_RULES: tuple[Rule, ...] = (
    # An API switched off in the key's Cloud project. Sheets: 403 PERMISSION_DENIED with an ErrorInfo
    # reason SERVICE_DISABLED; Drive v3 adds errors[0] {domain usageLimits, reason accessNotConfigured},
    # so it must be matched before the usageLimits rate limit below (gspread's BackOffHTTPClient retries
    # it forever for that domain).
    Rule(
        Refusal.SERVICE,
        frozenset({403}),
        r"\bSERVICE_DISABLED\b|\baccessNotConfigured\b|has not been used in project",
        "enable the {api} in Google Cloud project {project} ({url}), wait a few minutes, then run again",
        f"{_ERROR_MODEL}; transloadit/uppy#1300 (Drive body); getodk/collect#334 (Sheets text)",
    ),
    # A protected range or sheet: every batch that touches it is refused whole (batchUpdate is atomic).
    Rule(
        Refusal.SERVICE,
        frozenset({400, 403}),
        r"protected cell or object",
        "remove the protection of the worksheet (Data > Protect sheets and ranges), or add {account} "
        "to its editors",
        "theoephraim/node-google-spreadsheet#20",
    ),
    # Drive's rate limit is a 403 (or 429) in the usageLimits domain: retried, not a permission problem.
    Rule(
        Refusal.TRANSIENT,
        frozenset({403, 429}),
        r"\b(userRateLimitExceeded|rateLimitExceeded)\b",
        "Drive's per-user rate limit: retried with backoff",
        "https://developers.google.com/workspace/drive/api/guides/handle-errors; "
        "labbots/google-drive-upload#192",
    ),
    Rule(
        Refusal.SERVICE,
        frozenset({403}),
        r"\bdailyLimitExceeded\b",
        "the project's daily Drive quota is used up: raise it in the Cloud console or wait for tomorrow",
        "https://developers.google.com/workspace/drive/api/guides/handle-errors",
    ),
    # Sheets' per-minute quotas: 429 RESOURCE_EXHAUSTED without Retry-After (the adapter supplies a
    # wait long enough to reach the next window).
    Rule(
        Refusal.TRANSIENT,
        frozenset({429}),
        "",
        "a per-minute quota window is up to 60 s: retried after the window",
        "https://developers.google.com/workspace/sheets/api/limits; gargle's recorded 429 fixture",
    ),
    Rule(
        Refusal.SERVICE,
        frozenset({401, 403}),
        r"ACCESS_TOKEN_SCOPE_INSUFFICIENT|insufficientPermissions|insufficient authentication scopes",
        "the access token lacks the spreadsheets/drive scopes: use a service-account key, not another credential",
        _ERROR_MODEL,
    ),
    # google-auth refreshes the token and repeats a 401 itself (AuthorizedSession), so one that reaches
    # us is a credential the API keeps refusing.
    Rule(
        Refusal.SERVICE,
        frozenset({401}),
        "",
        "the access token was refused: create a new key for the service account",
        "api-contracts.md §1.5 (401 UNAUTHENTICATED)",
    ),
    Rule(
        Refusal.SERVICE,
        frozenset({403}),
        "",
        "Share the spreadsheet with {account} as Editor (the sheet's Share button)",
        "api-contracts.md §1.5 (403 The caller does not have permission)",
    ),
    Rule(
        Refusal.SERVICE,
        frozenset({404}),
        "",
        "spreadsheet not found: check GOOGLE_SHEET_KEY / GOOGLE_SHEET_TITLE and that the sheet is shared "
        "with {account}",
        "api-contracts.md §1.5 (404 Requested entity was not found.)",
    ),
    Rule(
        Refusal.SERVICE,
        frozenset({400}),
        r"above the limit of \d+ cells",
        "the spreadsheet holds Google's maximum of 10,000,000 cells: delete unused rows, columns or "
        "worksheets (or move old Done rows to another spreadsheet)",
        "nithinmurali/pygsheets#589; https://support.google.com/drive/answer/37603",
    ),
    Rule(
        Refusal.TRANSIENT,
        frozenset({408, 409, 500, 502, 503, 504}),
        "",
        "Google did not complete the request: retried; a write that must not repeat is read back first",
        "https://developers.google.com/workspace/sheets/api/troubleshoot-api-errors; moneyman#484",
    ),
    Rule(Refusal.TRANSIENT, frozenset(range(500, 600)), "", "Google failed: retried", _ERROR_MODEL),
    Rule(
        Refusal.SERVICE,
        frozenset(),
        "",
        "Google refused the request as shown; fix what its text names",
        _ERROR_MODEL,
    ),
)

# The only 400s of a positional batchUpdate that mean the sheet changed shape between our read and the
# request (nothing was applied: batchUpdate is atomic): rows or a worksheet gone, or the scratch worksheet
# added by another run. Anything else is a refusal and stops the run with Google's text.
ROWS_MOVED_RULES: tuple[Rule, ...] = (
    Rule(
        Refusal.TRANSIENT,
        frozenset({400}),
        r"Cannot delete a (row|column) that doesn't exist",
        "the sheet is shorter than when read: read again",
        "api-contracts.md §1.5 (Deleting past the end)",
    ),
    Rule(
        Refusal.TRANSIENT,
        frozenset({400}),
        r"exceeds grid limits",
        "a range past the grid's end: read again",
        "api-contracts.md §1.5; copyPaste source beyond the last row",
    ),
    Rule(
        Refusal.TRANSIENT,
        frozenset({400}),
        r"must be <= the number of (rows|columns)",
        "an insert past the grid's end: read again",
        "Sheets insertDimension reference",
    ),
    Rule(
        Refusal.TRANSIENT,
        frozenset({400}),
        r"No grid with id|No sheet with id",
        "a worksheet was removed since we listed them: list again",
        "Sheets batchUpdate reference",
    ),
    Rule(
        Refusal.TRANSIENT,
        frozenset({400}),
        r"A sheet with the name .* already exists|Sheet with id \d+ already exists",
        "a worksheet was added since we listed them: list again",
        "Sheets addSheet reference",
    ),
)

# The token endpoint (google-auth RefreshError text "<error>: <error_description>").
TOKEN_RULES: tuple[Rule, ...] = (
    Rule(
        Refusal.SERVICE,
        frozenset(),
        r"short-lived token|reasonable timeframe|iat and exp",
        "this machine's clock is wrong: the key's signed request must fall within Google's time window. "
        "Fix the machine's clock (NTP: `timedatectl set-ntp true`); a new key does not help",
        "googleapis/oauth2client#193",
    ),
    Rule(
        Refusal.SERVICE,
        frozenset(),
        r"account not found",
        "the service account was deleted: create a new service account, share the spreadsheet with it "
        "as Editor and use its JSON key (a new key of the deleted account does not help)",
        "googleapis/google-auth-library-python (RefreshError 'invalid_grant: Invalid grant: account not found')",
    ),
    Rule(
        Refusal.SERVICE,
        frozenset(),
        r"Invalid JWT Signature",
        "the key was revoked or deleted: create a new JSON key for the service account (IAM > Service "
        "accounts > Keys) and point GOOGLE_SERVICE_ACCOUNT_FILE at it",
        "googleapis/google-cloud-python#8736, #10004",
    ),
    Rule(
        Refusal.SERVICE,
        frozenset(),
        "",
        "create a new JSON key for the service account and point GOOGLE_SERVICE_ACCOUNT_FILE at it",
        "RFC 6749 §5.2; google/oauth2/_client.py",
    ),
)

_API_NAMES = {"sheets.googleapis.com": "Google Sheets API", "drive.googleapis.com": "Google Drive API"}
_PROJECT_IN_TEXT = re.compile(r"project[ =](\d+)")


@dataclass(frozen=True)
class GoogleAnswer:
    """The parts of a Sheets or Drive error body the rules read."""

    status: int
    message: str
    status_name: str = ""  # "PERMISSION_DENIED"
    reasons: tuple[str, ...] = ()  # details[].reason (ErrorInfo) and errors[].reason (Drive)
    domains: tuple[str, ...] = ()  # errors[].domain (Drive)
    service: str = ""  # ErrorInfo metadata.service, e.g. "drive.googleapis.com"
    consumer: str = ""  # ErrorInfo metadata.consumer, e.g. "projects/603366585132"
    retry_after: float | None = None

    @classmethod
    def from_error(
        cls, status: int, error: Mapping[str, Any] | None, retry_after: float | None = None
    ) -> GoogleAnswer:
        """From the ``error`` object of a Google JSON error body (gspread's ``APIError.error``)."""
        error = error if isinstance(error, Mapping) else {}
        reasons: list[str] = []
        domains: list[str] = []
        service = consumer = ""
        for item in error.get("details") or []:
            if not isinstance(item, Mapping) or not item.get("reason"):
                continue
            reasons.append(str(item["reason"]))
            metadata = item.get("metadata") or {}
            if isinstance(metadata, Mapping):
                service = service or str(metadata.get("service", ""))
                consumer = consumer or str(metadata.get("consumer", ""))
        for item in error.get("errors") or []:
            if isinstance(item, Mapping):
                reasons.append(str(item.get("reason", "")))
                domains.append(str(item.get("domain", "")))
        return cls(
            status=status,
            message=str(error.get("message", "")),
            status_name=str(error.get("status", "")),
            reasons=tuple(r for r in reasons if r),
            domains=tuple(d for d in domains if d),
            service=service,
            consumer=consumer,
            retry_after=retry_after,
        )

    def subject(self) -> str:
        return f"{self.status_name} {' '.join(self.reasons)} {' '.join(self.domains)} :: {self.message}"

    def project(self) -> str:
        if self.consumer.startswith("projects/"):
            return self.consumer.split("/", 1)[1]
        found = _PROJECT_IN_TEXT.search(self.message)
        return found.group(1) if found else "of the key"

    def api(self, default: str) -> str:
        if self.service in _API_NAMES:
            return _API_NAMES[self.service]
        if "Drive API" in self.message or "drive.googleapis.com" in self.message:
            return "Google Drive API"
        if "Sheets API" in self.message or "sheets.googleapis.com" in self.message:
            return "Google Sheets API"
        return default


def rule_for(answer: GoogleAnswer) -> Rule:
    rule = first_rule(API_RULES, answer.status, answer.subject())
    assert rule is not None  # the last rule matches everything
    return rule


def classify_api(
    answer: GoogleAnswer,
    what: str,
    *,
    repeatable: bool = True,
    account: str = "the service account",
    api: str = "Google Sheets",
    clean: Any = str,
) -> PipelineError:
    """The typed error for a Sheets or Drive answer. ``repeatable=False`` for a write that must not be
    sent twice: a 5xx may come after Google committed it (moneyman#484), so its outcome is unknown.
    ``clean`` removes secrets from Google's text (redact)."""
    rule = rule_for(answer)
    kind = rule.kind
    if kind is Refusal.TRANSIENT and not repeatable and (answer.status >= 500 or answer.status == 408):
        kind = Refusal.UNKNOWN
    text = clean(answer.message)[:TEXT_LIMIT]
    default_api = "Google Drive API" if api == "Google Drive" else "Google Sheets API"
    fix = rule.fix.format(
        api=answer.api(default_api),
        project=answer.project(),
        url=f"https://console.cloud.google.com/apis/library/{answer.service or 'sheets.googleapis.com'}",
        account=account or "the service account",
    )
    head = f"{api} {what}: HTTP {answer.status} {answer.status_name}".rstrip()
    if kind is Refusal.SERVICE:
        message = f"{head}: {text.rstrip('.')}. {fix}" if text else f"{head}. {fix}"
    else:
        message = f"{head}: {text}" if text else head
    if kind is Refusal.UNKNOWN:
        message += "; the write may have been applied: read back before any repeat"
    error = refuse(kind, message, service=SERVICE, status=answer.status, retry_after=answer.retry_after)
    error.fix = fix if kind is Refusal.SERVICE else ""  # type: ignore[attr-defined]
    error.google_reasons = answer.reasons  # type: ignore[attr-defined]
    return error


def is_rows_moved(status: int, text: str) -> bool:
    """True for the 400s of a positional batchUpdate that mean "the sheet changed shape, read again"."""
    return first_rule(ROWS_MOVED_RULES, status, text) is not None


def classify_token(text: str, what: str, *, retryable: bool) -> PipelineError:
    """The typed error for the token endpoint's refusal (google-auth ``RefreshError``). google-auth has
    already retried what it calls retryable (5xx, ``temporarily_unavailable``...)."""
    if retryable:
        return refuse(Refusal.TRANSIENT, f"Google auth {what}: {text}", service=SERVICE)
    rule = first_rule(TOKEN_RULES, 400, text)
    assert rule is not None
    if rule is TOKEN_RULES[0]:
        message = (
            f"Google auth {what}: the token endpoint refused the key's signed request ({text}). {rule.fix}"
        )
    else:
        message = f"Google auth {what}: the service-account key was rejected ({text}). {rule.fix}"
    error = refuse(Refusal.SERVICE, message, service=SERVICE)
    error.fix = rule.fix  # type: ignore[attr-defined]
    return error
