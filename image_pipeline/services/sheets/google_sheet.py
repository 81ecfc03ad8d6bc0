"""The Google Sheet resource: the service-account key, the spreadsheet by key or title, and its doctor checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from image_pipeline.domain.checks import Check, fail, ok, skipped, warn
from image_pipeline.domain.errors import PipelineError, ServiceBlocked, TransientError
from image_pipeline.domain.redact import install_log_redaction, register_secret
from image_pipeline.services.http import RetryPolicy, call_with_retry
from image_pipeline.services.sheets.google import GoogleSheetsBackend, SheetTitles
from image_pipeline.services.sheets.queue import PromptSheet
from image_pipeline.services.sheets.table import REMOVED_ROWS_WORKSHEET, SHEETS


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
