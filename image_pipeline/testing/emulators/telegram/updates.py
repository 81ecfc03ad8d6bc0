"""What comes back from Telegram: the bot's update queue (getUpdates with offset / limit / timeout /
allowed_updates, ``push_update``), button presses (``press`` builds a real ``callback_query``,
answerCallbackQuery), inline keyboards on sent messages (reply_markup checked as the server checks it,
editMessageReplyMarkup, editMessageText) and the webhook that excludes getUpdates (getWebhookInfo,
setWebhook, deleteWebhook).

Sources: ``tdlib/telegram-bot-api`` ``Client.cpp`` (process_get_updates_query: limit clamped to 1..100,
offset confirms the updates before it, a negative offset counts from the end; "Conflict: can't use
getUpdates method while webhook is active; use deleteWebhook to delete the webhook first";
get_inline_keyboard_button: "BUTTON_DATA_INVALID" for callback_data outside 1-64 bytes;
process_answer_callback_query_query and QUERY_ID_INVALID -> "query is too old and response timeout
expired or query ID is invalid"); the Bot API docs (Update, CallbackQuery, allowed_updates: by default
every kind except chat_member, message_reaction and message_reaction_count).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from image_pipeline.testing.emulators.telegram.edits import NOT_MODIFIED, TelegramEdits
from image_pipeline.testing.emulators.telegram.markup import visible_text
from image_pipeline.testing.emulators.telegram.wire import (
    ALERTS_CHANNEL_ID,
    MAX_TEXT_CHARS,
    TelegramError,
    UploadedFile,
)

UPDATE_METHODS = {
    "getupdates",
    "answercallbackquery",
    "editmessagereplymarkup",
    "editmessagetext",
    "getwebhookinfo",
    "setwebhook",
    "deletewebhook",
}
# delivered only when a getUpdates call names them in allowed_updates
_OPT_IN = {"chat_member", "message_reaction", "message_reaction_count"}
# how long a press may wait for its answer before the server calls its id invalid (clients give up
# after about 15 s; tdlib forgets the query soon after)
CALLBACK_ANSWER_WINDOW_S = 15.0
QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the "
    "webhook first"
)


class TelegramUpdates(TelegramEdits):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self.callback_answers: list[dict[str, Any]] = []  # answerCallbackQuery calls that were accepted
        self.webhook_url = ""
        self.allowed_updates: list[str] = []  # as last set by getUpdates (the server remembers it)
        self._update_seq = 700_000_000
        self._queries: dict[str, dict[str, Any]] = {}  # id -> {"at": server time, "answered": bool}
        self._query_seq = 0
        self._updates_lock = threading.Lock()

    # ----------------------------------------------------------------- what a test does
    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update (anything but its ``update_id``, which is assigned here); returns the id."""
        with self._updates_lock:
            self._update_seq += 1
            self.updates.append({"update_id": self._update_seq, **update})
            return self._update_seq

    def press(
        self, user_id: int, message: dict[str, Any] | int, data: str, username: str | None = "admin"
    ) -> int:
        """A person taps the button carrying ``data`` under ``message`` (a record of ``messages`` or a
        message id in the alert chat): queues the ``callback_query`` update; returns its update id."""
        if isinstance(message, int):
            message = next(m for m in self.messages_for(ALERTS_CHANNEL_ID) if m["message_id"] == message)
        chat = self.chats[message["chat_id"]]
        with self._updates_lock:
            self._query_seq += 1
            query_id = str(4_000_000_000_000_000 + self._query_seq)
            self._queries[query_id] = {"at": self.now(), "answered": False}
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}
        if username:
            user["username"] = username
        shown: dict[str, Any] = {"message_id": message["message_id"], "chat": chat.short()}
        shown["sender_chat" if chat.type == "channel" else "from"] = (
            chat.short() if chat.type == "channel" else self._bot_user()
        )
        shown["date"] = message["date"]
        text = message.get("visible_text")
        if text:
            shown["caption" if message.get("image") is not None else "text"] = text
        if message.get("reply_markup"):
            shown["reply_markup"] = message["reply_markup"]
        query = {
            "id": query_id,
            "from": user,
            "message": shown,
            "chat_instance": str(abs(chat.id) * 7 + 3),
            "data": data,
        }
        return self.push_update({"callback_query": query})

    def markup_of(self, message: dict[str, Any]) -> dict[str, Any] | None:
        return message.get("reply_markup")

    # ----------------------------------------------------------------- keyboards on sends
    def _keyboard(self, params: dict[str, str]) -> dict[str, Any] | None:
        raw = params.get("reply_markup")
        if not raw:
            return None
        try:
            markup = json.loads(raw)
        except ValueError as exc:
            raise TelegramError(400, "Bad Request: can't parse reply keyboard markup JSON object") from exc
        rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
        if not isinstance(rows, list):
            raise TelegramError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        for row in rows:
            if not isinstance(row, list):
                raise TelegramError(400, "Bad Request: can't parse inline keyboard button: expected an Array")
            for button in row:
                data = button.get("callback_data") if isinstance(button, dict) else None
                if data is not None and not 1 <= len(str(data).encode("utf-8")) <= 64:
                    raise TelegramError(400, "Bad Request: BUTTON_DATA_INVALID")
        return {"inline_keyboard": rows} if rows else None

    def _with_keyboard(self, sent: Any, markup: dict[str, Any] | None) -> Any:
        if markup is not None and isinstance(sent, dict):
            record = self._find(self.chats[sent["chat"]["id"]], sent["message_id"])
            if record is not None:
                record["reply_markup"] = markup
            sent["reply_markup"] = markup
        return sent

    def _m_sendphoto(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        markup = self._keyboard(params)
        return self._with_keyboard(super()._m_sendphoto(params, files), markup)

    def _m_senddocument(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        markup = self._keyboard(params)
        return self._with_keyboard(super()._m_senddocument(params, files), markup)

    def _m_sendmessage(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        markup = self._keyboard(params)
        return self._with_keyboard(super()._m_sendmessage(params, files), markup)

    # ----------------------------------------------------------------- getUpdates and the webhook
    def _m_getupdates(self, params: dict[str, str], files: dict[str, UploadedFile]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise TelegramError(409, WEBHOOK_CONFLICT)
        offset = _int(params.get("offset"), 0)
        limit = min(100, max(1, _int(params.get("limit"), 100)))
        if "allowed_updates" in params:
            try:
                allowed = json.loads(params["allowed_updates"] or "[]")
            except ValueError:
                allowed = []
            self.allowed_updates = [str(a) for a in allowed] if isinstance(allowed, list) else []
        # long polling is not modelled: the answer comes at once, as it does when updates are waiting
        with self._updates_lock:
            if offset < 0:
                self.updates = self.updates[offset:]
            elif offset > 0:
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
            wanted = [u for u in self.updates if self._allowed(u)]
            return [dict(u) for u in wanted[:limit]]

    def _allowed(self, update: dict[str, Any]) -> bool:
        kind = next(k for k in update if k != "update_id")
        if self.allowed_updates:
            return kind in self.allowed_updates
        return kind not in _OPT_IN

    def _m_getwebhookinfo(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }
        if self.webhook_url and self.allowed_updates:
            info["allowed_updates"] = self.allowed_updates
        return info

    def _m_setwebhook(self, params: dict[str, str], files: dict[str, UploadedFile]) -> bool:
        url = params.get("url", "").strip()
        if url and not url.startswith("https://"):
            raise TelegramError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook_url = url
        return True

    def _m_deletewebhook(self, params: dict[str, str], files: dict[str, UploadedFile]) -> bool:
        self.webhook_url = ""
        if params.get("drop_pending_updates", "").lower() in ("true", "1", "yes"):
            with self._updates_lock:
                self.updates = []
        return True

    # ----------------------------------------------------------------- presses and card edits
    def _m_answercallbackquery(self, params: dict[str, str], files: dict[str, UploadedFile]) -> bool:
        query_id = params.get("callback_query_id", "").strip()
        with self._updates_lock:
            query = self._queries.get(query_id)
            if query is None or query["answered"] or self.now() - query["at"] > CALLBACK_ANSWER_WINDOW_S:
                raise TelegramError(400, QUERY_INVALID)
            if len(params.get("text", "")) > 200:
                raise TelegramError(400, "Bad Request: MESSAGE_TOO_LONG")
            query["answered"] = True
            self.callback_answers.append(
                {"id": query_id, "text": params.get("text", ""), "show_alert": params.get("show_alert")}
            )
        return True

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        chat = self.chats[message["chat_id"]]
        answer: dict[str, Any] = {"message_id": message["message_id"], "chat": chat.short()}
        answer["date"] = message["date"]
        answer["edit_date"] = int(self.now())
        if message.get("visible_text"):
            answer["caption" if message.get("image") is not None else "text"] = message["visible_text"]
        if message.get("reply_markup"):
            answer["reply_markup"] = message["reply_markup"]
        return answer

    def _m_editmessagereplymarkup(
        self, params: dict[str, str], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        markup = self._keyboard(params)
        message = self._edited(params)
        if message.get("reply_markup") == markup:
            raise TelegramError(400, NOT_MODIFIED)
        with self._lock:
            message["reply_markup"] = markup
        return self._answer(message)

    def _m_editmessagetext(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        plain = visible_text(params.get("text", ""), params.get("parse_mode"))
        if not plain.strip():
            raise TelegramError(400, "Bad Request: message text is empty")
        if len(plain) > MAX_TEXT_CHARS:
            raise TelegramError(400, "Bad Request: message is too long")
        markup = self._keyboard(params)
        message = self._edited(params)
        if message.get("image") is not None:
            raise TelegramError(400, "Bad Request: there is no text in the message to edit")
        if message.get("visible_text") == plain and message.get("reply_markup") == markup:
            raise TelegramError(400, NOT_MODIFIED)
        with self._lock:
            # an edit without reply_markup takes the inline keyboard away, as on the real server
            message.update(text=params.get("text"), visible_text=plain, reply_markup=markup)
        return self._answer(message)


def _int(raw: str | None, default: int) -> int:
    try:
        return int(str(raw).strip()) if raw not in (None, "") else default
    except ValueError:
        return default
