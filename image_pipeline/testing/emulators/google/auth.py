"""The OAuth2 token endpoint (a service account's signed JWT for a bearer token: signature, issuer,
time window, scopes) and what every API call goes through first: the bearer token and its scopes, then the
per-user and per-project read/write quotas with their recorded 429 bodies.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.google.constants import (
    _JWT_TIME_MESSAGE,
    _WWW_AUTHENTICATE,
    ACCOUNT_NOT_FOUND_MESSAGE,
    JWT_BEARER,
    TOKEN_LIFETIME_S,
    UNAUTHENTICATED_MESSAGE,
)
from image_pipeline.testing.emulators.google.errors import (
    _Reply,
    drive_error,
    oauth_error,
    quota_error_body,
    sheets_error,
)
from image_pipeline.testing.emulators.google.model import _Token
from image_pipeline.testing.emulators.google.wire import _b64url_decode


class TokenAndQuota:
    """Mixed into GoogleEmulator (server.py): the token endpoint, authentication and quota."""

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
