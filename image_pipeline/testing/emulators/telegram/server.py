"""``TelegramEmulator``: the server the tests start. It routes ``/bot<token>[/test]/<method>`` as the
real server does (a malformed token, a wrong one, a flood wait, an unknown method) to the method
handlers, turns a ``TelegramError`` into the Bot API's envelope, and keeps the token out of the request
log. Its behaviour comes from the package's other classes, put together here."""

from __future__ import annotations

import dataclasses
import re

from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.telegram.faults import TelegramFaults
from image_pipeline.testing.emulators.telegram.updates import UPDATE_METHODS, TelegramUpdates
from image_pipeline.testing.emulators.telegram.wire import (
    TelegramError,
    _json_response,
    error_envelope,
    split_bot_path,
    token_is_well_formed,
)

_SEND_METHODS = {"sendphoto", "senddocument", "sendmessage", "sendmediagroup"}
_EDIT_METHODS = {"editmessagecaption", "deletemessage"}
_KNOWN_METHODS = {"getme", "getchat", "getchatmember", *_SEND_METHODS, *_EDIT_METHODS, *UPDATE_METHODS}
# What api.telegram.org's front routes as a token: "<bot id>:<secret>". Anything else (a token pasted
# with a "bot" prefix, a missing colon) never reaches a Bot API server and gets 404 "Not Found"
# (pyTelegramBotAPI#817; python-telegram-bot request/_baserequest.py: "TG returns 404 Not found for
# malformed tokens"). The front's exact pattern is not published; this is the shape BotFather issues.
_CLOUD_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")


class TelegramEmulator(TelegramFaults, TelegramUpdates):
    name = "telegram"

    # ----------------------------------------------------------------- base hooks
    def endpoint_of(self, request: Request) -> str:
        parts = split_bot_path(request.path)
        if parts is None or not parts[1]:
            return "invalid"
        return parts[1].lower()

    def _log(self, request: Request, endpoint: str, status: int | str) -> None:
        # the token is a credential: keep it out of the request log the way the base keeps headers out
        parts = split_bot_path(request.path)
        if parts is not None and parts[0]:
            redacted = request.path.replace(f"/bot{parts[0]}", "/bot<token>", 1)
            request = dataclasses.replace(request, path=redacted)
        super()._log(request, endpoint, status)

    # ----------------------------------------------------------------- routing
    def route(self, request: Request) -> Response:
        try:
            return self._route(request)
        except TelegramError as err:
            if err.code == 429:
                with self._lock:
                    self.count_429 += 1
            return error_envelope(err.code, err.description, err.parameters)
        except Exception as exc:  # an emulator bug must still look like a Bot API answer
            return error_envelope(500, f"Internal Server Error: emulator error: {exc!r}")

    def _route(self, request: Request) -> Response:
        parts = split_bot_path(request.path)
        if parts is None:
            raise TelegramError(404, "Not Found")
        token, method = parts
        if self.front == "cloud" and not _CLOUD_TOKEN.fullmatch(token):
            raise TelegramError(404, "Not Found")
        if not token_is_well_formed(token):
            raise TelegramError(401, "Unauthorized: invalid token specified")
        if token != self.token:
            raise TelegramError(401, "Unauthorized")
        left = self.flood_left()
        if left:
            raise TelegramError(429, f"Too Many Requests: retry after {left}", {"retry_after": left})
        method = method.lower()
        if method not in _KNOWN_METHODS:
            raise TelegramError(404, "Not Found: method not found")
        params, files = self._parse_params(request)
        handler = getattr(self, f"_m_{method}")
        result = handler(params, files)
        return _json_response({"ok": True, "result": result})
