"""The Bot API's wire, as data: the default bot and chats, Telegram's size and text limits, the records
the server keeps (a chat and the bot's place in it, an upload, a stored file, an album item), the error a
handler raises (``TelegramError``) and the ``{"ok": ...}`` envelope it becomes, and the parsing of a
``/bot<token>/<method>`` path. Everything else in the package builds on these; they import nothing of it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from image_pipeline.testing.emulators.base import Response

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
    # ChatAdministratorRights.can_delete_messages: deletes others' posts (its own need can_post_messages)
    can_delete_messages: bool = True
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


def _stringify(value: Any) -> str:
    # JSON bodies carry typed values; the server treats every argument as a string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _to_bool(value: str | None) -> bool:
    return (value or "").lower() in ("true", "yes", "1")
