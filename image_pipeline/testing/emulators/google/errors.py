"""Google's error responses as the emulator sends them: the Sheets v4 google.rpc envelope, Drive v3's
older ``errors[]`` envelope, the OAuth token endpoint's ``error``/``error_description``, the recorded 429
quota body, SERVICE_DISABLED and Drive's rate limit; and ``_Reply``, the exception that carries a finished
error response out of deep helpers so the handlers read linearly.
"""

from __future__ import annotations

from typing import Any

from image_pipeline.testing.emulators.base import Response
from image_pipeline.testing.emulators.google.constants import (
    _API_TITLES,
    _STATUS_MESSAGES,
    _STATUS_NAMES,
    _WWW_AUTHENTICATE,
    PROJECT_NUMBER,
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
