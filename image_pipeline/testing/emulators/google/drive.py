"""Drive v3 as gspread uses it: ``files.get`` (hiding what the caller cannot see behind a 404) and
``files.list`` with ``q``, ``orderBy``, paging and field masks, over the file resource (whose
``modifiedTime`` and ``version`` may trail Sheets by ``drive_lag_s``).
"""

from __future__ import annotations

import base64
from typing import Any

from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.google.constants import _DRIVE_SCOPES, SPREADSHEET_MIME
from image_pipeline.testing.emulators.google.errors import _Reply, drive_error, service_disabled_error
from image_pipeline.testing.emulators.google.model import SpreadsheetFile, _Token
from image_pipeline.testing.emulators.google.wire import (
    _apply_fields,
    _param,
    _parse_drive_q,
    _parse_fields,
    _rfc3339,
    _RouteInfo,
)


class DriveEndpoints:
    """Mixed into GoogleEmulator (server.py): the Drive v3 handlers."""

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
