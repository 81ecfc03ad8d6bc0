"""Loopback emulator of the Telegram Bot API (the subset the pipeline uses), faithful on the wire.

It answers ``/bot<token>[/test]/<method>`` like ``api.telegram.org`` / ``tdlib/telegram-bot-api`` do:
the same routing errors, the ``{"ok":...}`` envelope with HTTP status == ``error_code``, the size,
dimension, caption and text limits, real ``Message`` objects (an array of them, sharing a
``media_group_id``, for ``sendMediaGroup``), and per-chat / global flood control with ``Retry-After``. See ``/work/shared/api-contracts.md`` section 2 for the evidence behind each rule.

Beyond the happy path it models what a real bot meets (sources at each rule): the bot's status and rights
in each chat (``set_bot_rights``: a channel where it is not an administrator allowed to post, a group
that restricts its photos, a chat it was removed from) with the real getChatMember object; a group that
became a supergroup (``migrate_group``); ``api.telegram.org``'s 404 for a malformed token (``front``);
long flood waits that hold every method of the bot (``flood_wait``); and a post that was made before its
answer failed (the ``committed_502`` fault). ``NAMED_FAULTS`` lists the faults a FaultPlan can name.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import math
import mimetypes
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from PIL import Image

from image_pipeline.testing.emulators.base import EmulatorServer, Fault, Request, Response

DEFAULT_TOKEN = "123456789:AAEmulatorTokenForTestsOnly_abcdefghij"
DEFAULT_CHANNEL_ID = -1001234567890
DEFAULT_CHANNEL_USERNAME = "image_pipeline_test"
ALERTS_CHANNEL_ID = -1009876543210

MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_DOCUMENT_BYTES = 50 * 1024 * 1024
MAX_PHOTO_SIDE_SUM = 10000
MAX_PHOTO_RATIO = 20
MAX_CAPTION_CHARS = 1024
MAX_TEXT_CHARS = 4096
# tdlib's MAX_GROUPED_MESSAGES. The docs say "2-10 items", but the server only refuses 0 and 11+: one item
# goes out as a plain message without media_group_id (MessagesManager::send_message_group).
MAX_ALBUM_ITEMS = 10

# Telegram keeps a few downscaled copies of every photo; these are the long-side limits of the
# "s", "m", "x" and "y" sizes. Photos are recompressed to at most 1280 px on the long side.
_PHOTO_SIZE_STEPS = (90, 320, 800, 1280)

# Tags the Bot API's HTML parse mode understands; anything else is a hard 400, which is exactly
# what bites pipelines that put raw prompts ("a cat <3") into an HTML caption.
_HTML_TAGS = {
    "a", "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
    "tg-emoji", "code", "pre", "blockquote", "tg-time",
}  # fmt: skip
_HTML_ENTITY = re.compile(r"&(lt|gt|amp|quot|#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6});")

_SEND_METHODS = {"sendphoto", "senddocument", "sendmessage", "sendmediagroup"}
_KNOWN_METHODS = {"getme", "getchat", "getchatmember", *_SEND_METHODS}
_BOT_STATUSES = {"creator", "administrator", "member", "restricted", "left", "kicked"}
# Faults a FaultPlan may name (``named_fault``); "flood:<seconds>" takes any number of seconds.
NAMED_FAULTS = ("rights", "photo_rights", "kicked", "flood:3600", "committed_502", "restart")
# What api.telegram.org's front routes as a token: "<bot id>:<secret>". Anything else (a token pasted
# with a "bot" prefix, a missing colon) never reaches a Bot API server and gets 404 "Not Found"
# (pyTelegramBotAPI#817; python-telegram-bot request/_baserequest.py: "TG returns 404 Not found for
# malformed tokens"). The front's exact pattern is not published; this is the shape BotFather issues.
_CLOUD_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")


class TelegramError(Exception):
    """A Bot API error: raised anywhere in a handler, turned into the envelope by ``route``."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


@dataclass
class Chat:
    id: int
    type: str
    title: str
    username: str | None = None
    bot_status: str = "administrator"
    # ChatAdministratorRights.can_post_messages: without it a channel refuses the bot's posts
    can_post_messages: bool = True
    # ChatPermissions of a restricted bot in a group or supergroup
    can_send_messages: bool = True
    can_send_photos: bool = True
    can_send_documents: bool = True
    migrated_to: int | None = None  # a basic group upgraded to this supergroup

    def short(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.type == "private":
            out["first_name"] = self.title
        else:
            out["title"] = self.title
        if self.username:
            out["username"] = self.username
        out["type"] = self.type
        return out

    def kind(self) -> str:
        # the wording tdlib uses in "bot is not a member of the <kind>"
        return {"channel": "channel chat", "supergroup": "supergroup chat", "group": "group chat"}.get(
            self.type, "chat"
        )


@dataclass
class UploadedFile:
    filename: str
    content_type: str
    data: bytes


@dataclass
class AlbumItem:
    """One parsed InputMedia of a sendMediaGroup request."""

    kind: str  # "photo" or "document"
    upload: UploadedFile
    stored: StoredFile | None  # set when the item named an earlier file_id
    caption: str | None  # as sent
    parse_mode: str | None
    has_spoiler: bool


@dataclass
class StoredFile:
    kind: str  # "photo" or "document"
    data: bytes
    filename: str
    content_type: str
    width: int | None
    height: int | None
    file_unique_id: str


def _json_response(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    # tdlib's JSON writer is compact and emits UTF-8 as-is; the content type has no charset
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    return Response(status, body, hdrs)


def error_envelope(code: int, description: str, parameters: dict[str, Any] | None = None) -> Response:
    payload: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    headers: dict[str, str] = {}
    if parameters:
        payload["parameters"] = parameters
        if "retry_after" in parameters:
            headers["Retry-After"] = str(parameters["retry_after"])
    return _json_response(payload, code, headers)


def split_bot_path(path: str) -> tuple[str, str] | None:
    """``/bot<token>[/test]/<method>`` -> (token, method as sent); None when the path is not a bot path."""
    if not path.startswith("/bot"):
        return None
    token, _, tail = path[4:].partition("/")
    if tail.startswith("test/"):
        tail = tail[5:]
    return token, tail


def token_is_well_formed(token: str) -> bool:
    # mirrors ClientManager: "<positive bot id>:<secret>", at most 80 chars, no leading zero
    if not token or len(token) > 80 or "/" in token or ":" not in token:
        return False
    bot_id = token.split(":", 1)[0]
    return bot_id.isdigit() and not bot_id.startswith("0")


def _entities_error(detail: str) -> TelegramError:
    return TelegramError(400, f"Bad Request: can't parse entities: {detail}")


def _html_to_plain(text: str) -> str:
    """Plain text the Bot API would keep after HTML entity parsing; raises the parse errors it raises."""
    out: list[str] = []
    stack: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "&":
            m = _HTML_ENTITY.match(text, i)
            if m:
                out.append(html.unescape(m.group(0)))
                i = m.end()
                continue
            # an unknown entity is kept literally, it is not an error
            out.append(c)
            i += 1
            continue
        if c != "<":
            out.append(c)
            i += 1
            continue
        # tdlib reports positions in UTF-8 bytes, not characters
        offset = len(text[:i].encode("utf-8"))
        j = i + 1
        closing = j < n and text[j] == "/"
        if closing:
            j += 1
        k = j
        while k < n and not text[k].isspace() and text[k] != ">":
            k += 1
        name = text[j:k].lower()
        end = text.find(">", k)
        if not closing:
            # same order as tdlib: the name is judged before the rest of the tag is looked at
            if k >= n:
                raise _entities_error(f"Unclosed start tag at byte offset {offset}")
            if name not in _HTML_TAGS:
                raise _entities_error(f'Unsupported start tag "{name}" at byte offset {offset}')
            if end < 0:
                raise _entities_error(f"Unclosed start tag at byte offset {offset}")
            stack.append(name)
        else:
            if not stack:
                raise _entities_error(f"Unexpected end tag at byte offset {offset}")
            if end < 0 or text[k:end].strip():
                raise _entities_error(f"Unclosed end tag at byte offset {offset}")
            expected = stack.pop()
            if name and name != expected:
                raise _entities_error(
                    f'Unmatched end tag at byte offset {offset}, expected "</{expected}>", found "</{name}>"'
                )
        i = end + 1
    if stack:
        raise _entities_error(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def visible_text(text: str, parse_mode: str | None) -> str:
    """The text the limits are counted on (in code points) and the Message carries: markup removed."""
    if parse_mode and parse_mode.lower() == "html":
        return _html_to_plain(text)
    return text


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, UploadedFile]]:
    """Split a multipart/form-data body into text fields and file parts (parts with a filename)."""
    ct = Message()
    ct["content-type"] = content_type
    boundary = ct.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise TelegramError(400, "Bad Request: can't parse multipart/form-data: no boundary")
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    # every delimiter is CRLF "--" boundary; prefixing a CRLF makes the first one look like the rest,
    # and splitting on the full delimiter leaves each part's content byte-exact
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, part = chunk.partition(b"\r\n")
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = headers.get_filename()
        if filename is None:
            fields[name] = content.decode("utf-8", errors="replace")
        else:
            files[name] = UploadedFile(filename, headers.get_content_type(), content)
    return fields, files


def _stringify(value: Any) -> str:
    # JSON bodies carry typed values; the server treats every argument as a string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _to_bool(value: str | None) -> bool:
    return (value or "").lower() in ("true", "yes", "1")


class TelegramEmulator(EmulatorServer):
    name = "telegram"
    max_photo_bytes = MAX_PHOTO_BYTES
    max_document_bytes = MAX_DOCUMENT_BYTES

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        per_chat_per_minute: int | None = 20,
        global_per_second: int | None = 30,
        front: str = "cloud",
    ) -> None:
        super().__init__()
        if front not in ("cloud", "local"):
            raise ValueError(
                "front is 'cloud' (api.telegram.org) or 'local' (a self-hosted telegram-bot-api)"
            )
        self.front = front
        self._flood_until = 0.0  # time.monotonic() until which every method answers 429
        self.token = token
        self.per_chat_per_minute = per_chat_per_minute
        self.global_per_second = global_per_second
        self.rate_window_s = 60.0
        self.bot_id = int(token.split(":", 1)[0]) if token_is_well_formed(token) else 123456789
        self.chats: dict[int, Chat] = {}
        self.messages: list[dict[str, Any]] = []
        self.count_429 = 0
        self._files: dict[str, StoredFile] = {}
        self._next_message_id: dict[int, int] = {}
        self._chat_sends: dict[int, deque[float]] = {}
        self._global_sends: deque[float] = deque()
        self._file_seq = 0
        self._media_group_seq = 0
        self.add_chat(DEFAULT_CHANNEL_ID, "channel", "Test channel", DEFAULT_CHANNEL_USERNAME)
        self.add_chat(ALERTS_CHANNEL_ID, "channel", "Alerts")

    # ----------------------------------------------------------------- setup and inspection
    def add_chat(
        self,
        chat_id: int | str,
        type: str = "channel",  # noqa: A002 - the Bot API's own field name
        title: str = "Test channel",
        username: str | None = None,
        bot_status: str = "administrator",
    ) -> Chat:
        if bot_status not in _BOT_STATUSES:
            raise ValueError(f"bot_status must be one of {sorted(_BOT_STATUSES)}")
        chat = Chat(int(chat_id), type, title, username.lstrip("@") if username else None, bot_status)
        with self._lock:
            self.chats[chat.id] = chat
        return chat

    def set_bot_rights(
        self,
        chat_id: int | str,
        status: str | None = None,
        *,
        can_post_messages: bool | None = None,
        can_send_messages: bool | None = None,
        can_send_photos: bool | None = None,
        can_send_documents: bool | None = None,
    ) -> Chat:
        """Change the bot's membership or rights in a chat, as an owner would in the chat's settings."""
        chat = self.find_chat(chat_id)
        if chat is None:
            raise KeyError(chat_id)
        if status is not None and status not in _BOT_STATUSES:
            raise ValueError(f"status must be one of {sorted(_BOT_STATUSES)}")
        with self._lock:
            if status is not None:
                chat.bot_status = status
            for name, value in (
                ("can_post_messages", can_post_messages),
                ("can_send_messages", can_send_messages),
                ("can_send_photos", can_send_photos),
                ("can_send_documents", can_send_documents),
            ):
                if value is not None:
                    setattr(chat, name, value)
        return chat

    def migrate_group(self, chat_id: int | str, new_id: int | None = None) -> Chat:
        """A basic group becomes a supergroup: the old id answers 400 with ``migrate_to_chat_id``."""
        old = self.find_chat(chat_id)
        if old is None or old.type != "group":
            raise ValueError("only a basic group can be upgraded")
        new = self.add_chat(new_id or int(f"-100{abs(old.id)}"), "supergroup", old.title, old.username)
        with self._lock:
            old.migrated_to, old.username = new.id, None
        return new

    def flood_wait(self, seconds: float) -> None:
        """Telegram's flood control imposes a wait: until it passes every method of the bot answers
        429 ``Too Many Requests: retry after N`` with the seconds left (Client.cpp get_closing_error keeps
        answering with next_authorization_time_ - now + 1; Query.cpp set_retry_after_error writes it)."""
        with self._lock:
            self._flood_until = max(self._flood_until, time.monotonic() + seconds)

    def lift_flood_wait(self) -> None:
        with self._lock:
            self._flood_until = 0.0

    def flood_left(self) -> int:
        """Seconds of the flood wait still to run, as the server reports them (0: none)."""
        left = self._flood_until - time.monotonic()
        return max(1, math.ceil(left)) if left > 0 else 0

    def find_chat(self, chat_id: int | str) -> Chat | None:
        if isinstance(chat_id, str):
            ref = chat_id.strip()
            if ref.startswith("@"):
                wanted = ref[1:].lower()
                return next(
                    (c for c in self.chats.values() if c.username and c.username.lower() == wanted), None
                )
            try:
                chat_id = int(ref)
            except ValueError:
                return None
        return self.chats.get(chat_id)

    def messages_for(self, chat_id: int | str) -> list[dict[str, Any]]:
        chat = self.find_chat(chat_id)
        if chat is None:
            return []
        with self._lock:
            return [m for m in self.messages if m["chat_id"] == chat.id]

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

    def _parse_params(self, request: Request) -> tuple[dict[str, str], dict[str, UploadedFile]]:
        params = {k: v[0] for k, v in request.query.items() if v}
        files: dict[str, UploadedFile] = {}
        ctype = request.header("content-type").lower()
        if not request.body:
            return params, files
        if ctype.startswith("multipart/form-data"):
            fields, files = parse_multipart(request.body, request.header("content-type"))
            params.update(fields)
        elif ctype.startswith("application/json"):
            try:
                payload = json.loads(request.body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise TelegramError(400, "Bad Request: can't parse JSON object") from exc
            if not isinstance(payload, dict):
                raise TelegramError(400, "Bad Request: JSON object expected")
            params.update({k: _stringify(v) for k, v in payload.items() if v is not None})
        elif ctype.startswith("application/x-www-form-urlencoded") or not ctype:
            try:
                form = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError as exc:
                raise TelegramError(400, "Bad Request: request must be encoded in UTF-8") from exc
            params.update({k: v[0] for k, v in form.items() if v})
        return params, files

    # ----------------------------------------------------------------- methods
    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Image Pipeline Bot",
            "username": "image_pipeline_bot",
        }

    def _m_getme(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _require_chat(self, params: dict[str, str]) -> Chat:
        ref = params.get("chat_id", "").strip()
        if not ref:
            raise TelegramError(400, "Bad Request: chat_id is empty")
        chat = self.find_chat(ref)
        if chat is None:
            raise TelegramError(400, "Bad Request: chat not found")
        return chat

    def _check_can_read(self, chat: Chat) -> None:
        """Client.cpp check_chat_access with Read rights (getChat, getChatMember of the bot itself): a
        banned bot is refused everywhere; a non-member reads only a public channel or supergroup."""
        if chat.type in ("channel", "supergroup"):
            if chat.bot_status == "kicked":
                raise TelegramError(403, f"Forbidden: bot was kicked from the {chat.kind()}")
            if chat.bot_status == "left" and not chat.username:
                raise TelegramError(403, f"Forbidden: bot is not a member of the {chat.kind()}")

    def _m_getchat(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._require_chat(params)
        self._check_can_read(chat)
        info = chat.short()
        info.update(
            {
                "accent_color_id": abs(chat.id) % 7,
                "max_reaction_count": 11,
                "accepted_gift_types": {
                    "unlimited_gifts": False,
                    "limited_gifts": False,
                    "unique_gifts": False,
                    "premium_subscription": False,
                },
            }
        )
        return info

    def _m_getchatmember(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._require_chat(params)
        user_ref = params.get("user_id", "").strip()
        if not user_ref:
            raise TelegramError(400, "Bad Request: user_id is empty")
        try:
            user_id = int(user_ref)
        except ValueError as exc:
            raise TelegramError(400, "Bad Request: invalid user_id specified") from exc
        if user_id != self.bot_id:
            raise TelegramError(400, "Bad Request: user not found")
        self._check_can_read(chat)
        return self._member_object(chat)

    def _member_object(self, chat: Chat) -> dict[str, Any]:
        """The bot's ChatMember in the order and with the fields Client.cpp JsonChatMember writes."""
        member: dict[str, Any] = {"user": self._bot_user(), "status": chat.bot_status}
        if chat.bot_status == "creator":
            member["is_anonymous"] = False
        elif chat.bot_status == "administrator":
            # json_store_administrator_rights: channel-only and group-only rights as the server picks them
            member["can_be_edited"] = False
            member.update({"can_manage_chat": True, "can_change_info": True})
            if chat.type == "channel":
                member.update({"can_post_messages": chat.can_post_messages, "can_edit_messages": True})
            member.update(
                {"can_delete_messages": True, "can_invite_users": True, "can_restrict_members": True}
            )
            if chat.type in ("group", "supergroup"):
                member["can_pin_messages"] = True
            if chat.type == "supergroup":
                member["can_manage_topics"] = False
            member.update(
                {
                    "can_promote_members": False,
                    "can_manage_video_chats": True,
                    "can_post_stories": True,
                    "can_edit_stories": True,
                    "can_delete_stories": True,
                }
            )
            if chat.type == "channel":
                member["can_manage_direct_messages"] = False
            if chat.type in ("group", "supergroup"):
                member["can_manage_tags"] = False
            member.update({"is_anonymous": False, "can_manage_voice_chats": True})
        elif chat.bot_status == "restricted" and chat.type == "supergroup":
            media = chat.can_send_photos or chat.can_send_documents
            member.update(
                {
                    "until_date": 0,
                    "can_send_messages": chat.can_send_messages,
                    "can_send_media_messages": media,
                    "can_send_audios": False,
                    "can_send_documents": chat.can_send_documents,
                    "can_send_photos": chat.can_send_photos,
                    "can_send_videos": False,
                    "can_send_video_notes": False,
                    "can_send_voice_notes": False,
                    "can_send_polls": False,
                    "can_send_other_messages": False,
                    "can_add_web_page_previews": False,
                    "can_react_to_messages": True,
                    "can_edit_tag": False,
                    "can_change_info": False,
                    "can_invite_users": False,
                    "can_pin_messages": False,
                    "can_manage_topics": False,
                    "is_member": True,
                }
            )
        elif chat.bot_status == "kicked":
            member["until_date"] = 0
        return member

    def _check_can_post(self, chat: Chat, content: str = "text") -> None:
        """Whether the bot may post ``content`` ("photo", "document" or "text") here, with the answer
        the server gives when not, in the order it checks."""
        if chat.migrated_to is not None:
            # Client.cpp check_chat_access: a deactivated basic group that was upgraded
            raise TelegramError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": chat.migrated_to},
            )
        if chat.bot_status == "kicked":
            if chat.type == "private":
                raise TelegramError(403, "Forbidden: bot was blocked by the user")
            raise TelegramError(403, f"Forbidden: bot was kicked from the {chat.kind()}")
        if chat.bot_status == "left":
            # sends need edit access, so even a public chat refuses a non-member (check_chat_access)
            raise TelegramError(403, f"Forbidden: bot is not a member of the {chat.kind()}")
        if chat.type == "channel":
            allowed = chat.bot_status == "creator" or (
                chat.bot_status == "administrator" and chat.can_post_messages
            )
            if not allowed:
                # td DialogManager.cpp can_send_message_to_dialog: a broadcast channel without
                # can_post_messages (a subscriber, or an administrator whose right was taken away)
                raise TelegramError(400, "Bad Request: need administrator rights in the channel chat")
            return
        if chat.bot_status == "restricted":
            # td MessageContent.cpp can_send_message_content: the member's effective permissions
            wanted = {"photo": chat.can_send_photos, "document": chat.can_send_documents}.get(
                content, chat.can_send_messages
            )
            if not wanted:
                what = {"photo": "photos", "document": "documents"}.get(content, "text messages")
                raise TelegramError(400, f"Bad Request: not enough rights to send {what} to the chat")

    def _resolve_file(
        self, field: str, kind: str, params: dict[str, str], files: dict[str, UploadedFile]
    ) -> tuple[UploadedFile, StoredFile | None]:
        """The uploaded part, an ``attach://`` reference, or a previously returned file_id."""
        if field in files:
            return files[field], None
        ref = params.get(field, "").strip()
        if ref.startswith("attach://") and ref[9:] in files:
            return files[ref[9:]], None
        if not ref:
            raise TelegramError(400, f"Bad Request: there is no {kind} in the request")
        stored = self._files.get(ref)
        if stored is None:
            raise TelegramError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        if stored.kind != kind:
            raise TelegramError(400, f"Bad Request: type of file mismatch, can't use {stored.kind} as {kind}")
        return UploadedFile(stored.filename, stored.content_type, stored.data), stored

    def _check_caption(self, params: dict[str, str]) -> str | None:
        caption = params.get("caption")
        if caption is None:
            return None
        plain = visible_text(caption, params.get("parse_mode"))
        if len(plain) > MAX_CAPTION_CHARS:
            raise TelegramError(400, "Bad Request: message caption is too long")
        return plain

    def _m_sendphoto(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        upload, stored = self._resolve_file("photo", "photo", params, files)
        chat = self._require_chat(params)
        self._check_can_post(chat, "photo")
        caption = self._check_caption(params)
        if stored is not None:
            width, height = stored.width, stored.height
        else:
            if len(upload.data) > self.max_photo_bytes:
                raise self._photo_too_big(len(upload.data))
            width, height = self._photo_dimensions(upload.data)
        assert width is not None and height is not None
        file_id, unique_id, stored = self._store("photo", upload, width, height, stored)
        sizes = self._photo_sizes(file_id, unique_id, width, height, len(upload.data))
        extra: dict[str, Any] = {"photo": sizes}
        if caption:
            extra["caption"] = caption
        if _to_bool(params.get("has_spoiler")):
            extra["has_media_spoiler"] = True
        return self._deliver(chat, "sendPhoto", params, extra, upload, width, height)

    def _m_senddocument(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        upload, stored = self._resolve_file("document", "document", params, files)
        chat = self._require_chat(params)
        self._check_can_post(chat, "document")
        caption = self._check_caption(params)
        if len(upload.data) > self.max_document_bytes:
            raise TelegramError(413, "Request Entity Too Large")
        if not upload.data:
            raise TelegramError(400, "Bad Request: file must be non-empty")
        width, height = self._try_dimensions(upload.data)
        file_id, unique_id, stored = self._store("document", upload, width, height, stored)
        extra: dict[str, Any] = {"document": self._document_object(upload, file_id, unique_id)}
        if caption:
            extra["caption"] = caption
        return self._deliver(chat, "sendDocument", params, extra, upload, width, height)

    def _m_sendmessage(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._require_chat(params)
        self._check_can_post(chat)
        plain = visible_text(params.get("text", ""), params.get("parse_mode"))
        if not plain.strip():
            raise TelegramError(400, "Bad Request: message text is empty")
        if len(plain) > MAX_TEXT_CHARS:
            raise TelegramError(400, "Bad Request: message is too long")
        return self._deliver(chat, "sendMessage", params, {"text": plain}, None, None, None)

    def _m_sendmediagroup(
        self, params: dict[str, str], files: dict[str, UploadedFile]
    ) -> list[dict[str, Any]]:
        # The order of checks is the server's: the Bot API parses "media" first, then resolves the chat,
        # then tdlib counts the items, checks each one and finally uploads them.
        raw = params.get("media", "")
        if not raw:
            raise TelegramError(400, 'Bad Request: parameter "media" is required')
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise TelegramError(400, "Bad Request: can't parse media JSON object") from exc
        if not isinstance(value, list):
            raise TelegramError(400, "Bad Request: expected an Array of InputMedia")
        items = [self._album_item(entry, files) for entry in value]
        chat = self._require_chat(params)
        for kind in sorted({i.kind for i in items}):
            self._check_can_post(chat, kind)
        if len(items) > MAX_ALBUM_ITEMS:
            raise TelegramError(400, "Bad Request: too many messages to send as an album")
        if not items:
            raise TelegramError(400, "Bad Request: there are no messages to send")
        captions = [
            self._check_caption(
                {k: v for k, v in (("caption", i.caption), ("parse_mode", i.parse_mode)) if v}
            )
            for i in items
        ]
        if len({i.kind for i in items}) > 1:
            # documents (and audio) group only with their own kind; the only mix the emulator can see
            raise TelegramError(400, "Bad Request: document can't be mixed with other media types")
        sizes: list[tuple[int | None, int | None]] = []
        for number, item in enumerate(items, 1):
            try:
                sizes.append(self._album_item_size(item))
            except TelegramError as err:
                if err.code != 400:
                    raise
                # the album is one upload: a photo the server refuses fails the whole request, named by position
                inner = err.description.removeprefix("Bad Request: ")
                # tdlib's own text goes in as tdlib wrote it, capitalised (Client.cpp
                # on_message_send_failed); only the outer message gets the lower-case first letter
                inner = inner[:1].upper() + inner[1:]
                raise TelegramError(
                    400, f'Bad Request: failed to send message #{number} with the error message "{inner}"'
                ) from err
        with self._lock:
            self._media_group_seq += 1
            group_seq = self._media_group_seq
        # real ids are long decimal strings; only an album of two or more gets one
        group_id = str(13_000_000_000_000_000 + group_seq) if len(items) > 1 else None
        entries: list[_Outgoing] = []
        for item, caption, (width, height) in zip(items, captions, sizes, strict=True):
            file_id, unique_id, _ = self._store(item.kind, item.upload, width, height, item.stored)
            extra: dict[str, Any] = {"media_group_id": group_id} if group_id else {}
            if item.kind == "photo":
                assert width is not None and height is not None
                extra["photo"] = self._photo_sizes(file_id, unique_id, width, height, len(item.upload.data))
            else:
                extra["document"] = self._document_object(item.upload, file_id, unique_id)
            if caption:
                extra["caption"] = caption
            if item.has_spoiler and item.kind == "photo":
                extra["has_media_spoiler"] = True
            item_params = {**params, "caption": item.caption, "parse_mode": item.parse_mode}
            entries.append(_Outgoing(item_params, extra, item.upload, width, height, group_id))
        return self._deliver_many(chat, "sendMediaGroup", params, entries)

    def _album_item(self, entry: Any, files: dict[str, UploadedFile]) -> AlbumItem:
        """One InputMedia, checked in the order ``Client::get_input_media`` checks it."""

        def bad(detail: str) -> TelegramError:
            return TelegramError(400, f"Bad Request: can't parse InputMedia: {detail}")

        if not isinstance(entry, dict):
            raise bad("expected an Object")
        caption, parse_mode = entry.get("caption"), entry.get("parse_mode")
        for name, field in (("caption", caption), ("parse_mode", parse_mode), ("media", entry.get("media"))):
            if field is not None and (isinstance(field, bool) or not isinstance(field, str | int | float)):
                raise bad(f'Field "{name}" must be of type String')
        caption = None if caption is None else str(caption)
        parse_mode = None if parse_mode is None else str(parse_mode)
        if caption:
            try:
                visible_text(caption, parse_mode)
            except TelegramError as err:
                # tdlib nests the parser's message, capitalised, inside the InputMedia one
                detail = err.description.removeprefix("Bad Request: ")
                raise bad(detail[:1].upper() + detail[1:]) from err
        media = str(entry.get("media") or "").strip()
        upload: UploadedFile | None = None
        if media.startswith("attach://"):
            upload = files.get(media[len("attach://") :])
        if upload is None and (not media or media.startswith("attach://")):
            raise bad("media not found")
        kind = entry.get("type")
        if kind is None:
            raise bad('Can\'t find field "type"')
        kind = str(kind)
        if kind == "animation":
            raise bad('type "animation" can\'t be used in sendMediaGroup')
        if kind not in ("photo", "document", "video", "audio"):
            raise bad(f'type "{kind}" is unsupported')
        if kind not in ("photo", "document"):
            # valid on the real server; the pipeline never sends them, so the emulator does not model them
            raise TelegramError(400, f'Bad Request: type "{kind}" is not emulated')
        stored: StoredFile | None = None
        if upload is None:
            # a file_id (or URL) instead of an upload, as sendPhoto accepts
            stored = self._files.get(media)
            if stored is None:
                raise TelegramError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            if stored.kind != kind:
                raise TelegramError(
                    400, f"Bad Request: type of file mismatch, can't use {stored.kind} as {kind}"
                )
            upload = UploadedFile(stored.filename, stored.content_type, stored.data)
        return AlbumItem(
            kind, upload, stored, caption, parse_mode, _to_bool(_stringify(entry.get("has_spoiler", "")))
        )

    def _album_item_size(self, item: AlbumItem) -> tuple[int | None, int | None]:
        """The same limits sendPhoto / sendDocument enforce; raises their errors."""
        if item.kind == "photo":
            if item.stored is not None:
                return item.stored.width, item.stored.height
            if len(item.upload.data) > self.max_photo_bytes:
                raise self._photo_too_big(len(item.upload.data))
            return self._photo_dimensions(item.upload.data)
        if len(item.upload.data) > self.max_document_bytes:
            raise TelegramError(413, "Request Entity Too Large")
        if not item.upload.data:
            raise TelegramError(400, "Bad Request: file must be non-empty")
        return self._try_dimensions(item.upload.data)

    # ----------------------------------------------------------------- helpers
    def _photo_too_big(self, size: int) -> TelegramError:
        # td/telegram/files/FileLoaderUtils.cpp check_local_location ("File of size N bytes is too big
        # for a photo; the maximum size is 10485760 bytes"), first letter lower-cased by the Bot API
        return TelegramError(
            400,
            f"Bad Request: file of size {size} bytes is too big for a photo; the maximum size is "
            f"{self.max_photo_bytes} bytes",
        )

    @staticmethod
    def _document_object(upload: UploadedFile, file_id: str, unique_id: str) -> dict[str, Any]:
        mime = upload.content_type
        if not mime or mime == "application/octet-stream":
            mime = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
        return {
            "file_name": upload.filename,
            "mime_type": mime,
            "file_id": file_id,
            "file_unique_id": unique_id,
            "file_size": len(upload.data),
        }

    @staticmethod
    def _photo_dimensions(data: bytes) -> tuple[int, int]:
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
        except Exception as exc:
            raise TelegramError(400, "Bad Request: IMAGE_PROCESS_FAILED") from exc
        # checked on the header before decoding, so an oversized test image costs nothing to reject
        if width + height > MAX_PHOTO_SIDE_SUM or max(width, height) > MAX_PHOTO_RATIO * min(width, height):
            raise TelegramError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        try:
            img.load()
        except Exception as exc:  # truncated or corrupt pixel data
            raise TelegramError(400, "Bad Request: IMAGE_PROCESS_FAILED") from exc
        return width, height

    @staticmethod
    def _try_dimensions(data: bytes) -> tuple[int | None, int | None]:
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.size
        except Exception:
            return None, None

    def _store(
        self,
        kind: str,
        upload: UploadedFile,
        width: int | None,
        height: int | None,
        existing: StoredFile | None,
    ) -> tuple[str, str, StoredFile]:
        with self._lock:
            self._file_seq += 1
            seq = self._file_seq
        digest = hashlib.sha256(upload.data).digest()
        unique_id = existing.file_unique_id if existing else "AQAD" + _b64(digest[:9])
        # the real prefixes: photos' file_ids start with "AgAC", documents' with "BQAC"
        prefix = "AgACAgIAAxkDAAI" if kind == "photo" else "BQACAgIAAxkDAAI"
        file_id = prefix + _b64(hashlib.sha256(digest + seq.to_bytes(8, "big")).digest()[:48])
        stored = existing or StoredFile(
            kind, upload.data, upload.filename, upload.content_type, width, height, unique_id
        )
        with self._lock:
            self._files[file_id] = stored
        return file_id, unique_id, stored

    def _photo_sizes(
        self, file_id: str, unique_id: str, width: int, height: int, size: int
    ) -> list[dict[str, Any]]:
        sizes: list[dict[str, Any]] = []
        longest = max(width, height)
        seen: set[tuple[int, int]] = set()
        for step, letter in zip(_PHOTO_SIZE_STEPS, "smxy", strict=True):
            scale = min(1.0, step / longest)
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            if (w, h) in seen:
                break
            seen.add((w, h))
            # each size is its own file on Telegram; the suffix keeps the ids distinct but resolvable
            size_id = f"{file_id}{letter}"
            with self._lock:
                self._files[size_id] = self._files[file_id]
            sizes.append(
                {
                    "file_id": size_id,
                    "file_unique_id": f"{unique_id}{letter}",
                    "file_size": max(1, int(size * (w * h) / (width * height))),
                    "width": w,
                    "height": h,
                }
            )
            if scale == 1.0:
                break
        return sizes

    def _check_rate(self, chat: Chat, now: float, count: int = 1) -> None:
        """Flood control for ``count`` messages sent at once (an album is one message per item).

        Must run under ``self._lock`` together with the send it guards. An album is all or nothing: it
        waits until the window has room for every one of its messages."""
        waits: list[float] = []
        per_chat = self._chat_sends.setdefault(chat.id, deque())
        while per_chat and per_chat[0] <= now - self.rate_window_s:
            per_chat.popleft()
        while self._global_sends and self._global_sends[0] <= now - 1.0:
            self._global_sends.popleft()
        for sent, cap, window in (
            (per_chat, self.per_chat_per_minute, self.rate_window_s),
            (self._global_sends, self.global_per_second, 1.0),
        ):
            if cap is None:
                continue
            # an album larger than the cap goes out into an empty window rather than never
            need = min(count, cap)
            if len(sent) + need > cap:
                # the oldest sends that must expire first; the last of them decides the wait
                waits.append(sent[len(sent) + need - cap - 1] + window - now)
        if waits:
            retry_after = max(1, math.ceil(max(waits)))
            raise TelegramError(
                429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
            )
        per_chat.extend([now] * count)
        self._global_sends.extend([now] * count)

    def _deliver(
        self,
        chat: Chat,
        method: str,
        params: dict[str, str],
        extra: dict[str, Any],
        upload: UploadedFile | None,
        width: int | None,
        height: int | None,
    ) -> dict[str, Any]:
        [message] = self._deliver_many(
            chat, method, params, [_Outgoing(params, extra, upload, width, height)]
        )
        return message

    def _deliver_many(
        self, chat: Chat, method: str, params: dict[str, str], entries: list[_Outgoing]
    ) -> list[dict[str, Any]]:
        """Post ``entries`` as consecutive messages: flood control, ids and the record are one step."""
        now_mono = time.monotonic()
        date = int(time.time())
        with self._lock:
            self._check_rate(chat, now_mono, len(entries))
            first_id = self._next_message_id.get(chat.id, 0) + 1
            self._next_message_id[chat.id] = first_id + len(entries) - 1
            for offset, entry in enumerate(entries):
                upload = entry.upload
                self.messages.append(
                    {
                        "chat_id": chat.id,
                        "message_id": first_id + offset,
                        "method": method,
                        "media_group_id": entry.media_group_id,
                        "caption": entry.params.get("caption"),
                        "parse_mode": entry.params.get("parse_mode"),
                        "text": entry.params.get("text"),
                        "visible_text": entry.extra.get("caption", entry.extra.get("text")),
                        "filename": upload.filename if upload else None,
                        "content_type": upload.content_type if upload else None,
                        "image": upload.data if upload else None,
                        "width": entry.width,
                        "height": entry.height,
                        "date": date,
                        "params": dict(params),
                    }
                )
        messages = []
        for offset, entry in enumerate(entries):
            message: dict[str, Any] = {"message_id": first_id + offset}
            if chat.type == "channel":
                message["sender_chat"] = chat.short()
            else:
                message["from"] = self._bot_user()
            message["chat"] = chat.short()
            message["date"] = date
            message.update(entry.extra)
            messages.append(message)
        return messages


@dataclass
class _Outgoing:
    """One message about to be posted: what the record keeps and what the answer carries."""

    params: dict[str, Any]
    extra: dict[str, Any]
    upload: UploadedFile | None
    width: int | None
    height: int | None
    media_group_id: str | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
