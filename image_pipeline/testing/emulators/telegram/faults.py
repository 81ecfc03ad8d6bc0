"""The faults: the Telegram answers a FaultPlan can name (``NAMED_FAULTS``: lost rights, a kick, a long
flood wait, a post made before its answer failed, a restarting server), the envelope an injected status
code gets, and the gateway page an injected garbage answer is."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

from image_pipeline.testing.emulators.base import Fault, Request, Response
from image_pipeline.testing.emulators.telegram.uploads import TelegramUploads
from image_pipeline.testing.emulators.telegram.wire import Chat, TelegramError, error_envelope

# Faults a FaultPlan may name (``named_fault``); "flood:<seconds>" takes any number of seconds.
NAMED_FAULTS = ("rights", "photo_rights", "kicked", "flood:3600", "committed_502", "restart")


class TelegramFaults(TelegramUploads):
    def error_response(self, status: int, request: Request) -> Response:
        if status == 429:
            with self._lock:
                self.count_429 += 1
            return error_envelope(429, "Too Many Requests: retry after 1", {"retry_after": 1})
        prefixes = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
        if status in prefixes:
            return error_envelope(status, prefixes[status])
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return error_envelope(status, phrase)

    def named_fault(self, fault: str, request: Request) -> Response | None:
        """The Telegram faults a FaultPlan can name (``NAMED_FAULTS``)."""
        chat = self._fault_chat(request)
        if fault == "rights":
            # a channel admin demoted, or its "Post messages" right taken away (DialogManager.cpp)
            return error_envelope(400, "Bad Request: need administrator rights in the channel chat")
        if fault == "photo_rights":
            # a group that restricts its members' photos (MessageContent.cpp can_send_message_content)
            return error_envelope(400, "Bad Request: not enough rights to send photos to the chat")
        if fault == "kicked":
            kind = chat.kind() if chat is not None else "channel chat"
            return error_envelope(403, f"Forbidden: bot was kicked from the {kind}")
        if fault.startswith("flood:"):
            self.flood_wait(float(fault.split(":", 1)[1]))
            return self._flood_answer()
        if fault == "committed_502":
            # the post is made, then the front answers 502 (no idempotency key: telegram-bot-api#482)
            applied = self.route(request)
            self._run_hook(self.after_route, request, self.endpoint_of(request), applied)
            return error_envelope(502, "Bad Gateway")
        if fault == "restart":
            # the server's client for this bot is closing: the query never reached tdlib
            # (Client.cpp get_closing_error)
            return error_envelope(500, "Internal Server Error: restart")
        return None

    def _fault_chat(self, request: Request) -> Chat | None:
        try:
            params, _ = self._parse_params(request)
        except TelegramError:
            return None
        return self.find_chat(params.get("chat_id", "").strip() or "0")

    def _flood_answer(self) -> Response:
        with self._lock:
            self.count_429 += 1
        left = self.flood_left() or 1
        return error_envelope(429, f"Too Many Requests: retry after {left}", {"retry_after": left})

    def garbage_response(self, request: Request) -> Response:
        # what a misbehaving reverse proxy in front of the Bot API serves
        body = (
            b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n"
            b"</body>\r\n</html>\r\n"
        )
        return Response(200, body, {"Content-Type": "text/html"})

    def fail_next(self, *faults: Fault | None, endpoints: Iterable[str] | None = None) -> None:
        # endpoint names are lower-cased method names; accept "sendPhoto" too
        names = {e.lower() for e in endpoints} if endpoints else None
        super().fail_next(*faults, endpoints=names)
