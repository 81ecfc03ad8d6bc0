"""What the emulated Bot API server holds, and the one step that changes it for a post: the chats and the
bot's status and rights in each (``add_chat``, ``set_bot_rights``, ``migrate_group``), a flood wait that
holds every method (``flood_wait``), the stored files, and the messages posted, with per-chat and global
flood control (``_check_rate``) and message ids assigned under one lock (``_deliver_many``).
``TelegramState`` is the base of the package's other classes; ``TelegramEmulator`` (server.py) is them
together."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from image_pipeline.testing.emulators.base import EmulatorServer
from image_pipeline.testing.emulators.telegram.wire import (
    ALERTS_CHANNEL_ID,
    DEFAULT_CHANNEL_ID,
    DEFAULT_CHANNEL_USERNAME,
    DEFAULT_TOKEN,
    MAX_DOCUMENT_BYTES,
    MAX_PHOTO_BYTES,
    Chat,
    StoredFile,
    TelegramError,
    UploadedFile,
    _to_bool,
    token_is_well_formed,
)

_BOT_STATUSES = {"creator", "administrator", "member", "restricted", "left", "kicked"}


class TelegramState(EmulatorServer):
    # class attributes, so a test scales a limit down on one instance (``tg.max_photo_bytes = 1000``)
    max_photo_bytes = MAX_PHOTO_BYTES
    max_document_bytes = MAX_DOCUMENT_BYTES
    # the server's clock runs this far ahead of the host's (``advance_clock``): message dates and the
    # 48-hour delete rule read it, so a test makes a post two days old without waiting
    clock_offset_s = 0.0

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
        self.deleted: list[dict[str, Any]] = []  # messages taken back with deleteMessage
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
        can_delete_messages: bool | None = None,
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
                ("can_delete_messages", can_delete_messages),
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

    def now(self) -> float:
        """The server's clock (epoch seconds): the host's plus ``clock_offset_s``."""
        return time.time() + self.clock_offset_s

    def advance_clock(self, seconds: float) -> None:
        self.clock_offset_s += seconds

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

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Image Pipeline Bot",
            "username": "image_pipeline_bot",
        }

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
        date = int(self.now())
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
                        # the channel's members get no sound for it (Client.cpp to_bool: true, yes, 1)
                        "disable_notification": _to_bool(params.get("disable_notification")),
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
