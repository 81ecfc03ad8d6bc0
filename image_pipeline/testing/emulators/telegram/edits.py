"""The methods that change a message already posted: editMessageCaption and deleteMessage, with the server's
checks in its order and its error texts, and the 48-hour rule read on the emulator's clock (``advance_clock``).

Sources: ``tdlib/telegram-bot-api`` ``Client.cpp`` (process_edit_message_caption_query,
process_delete_message_query, check_message: "message to edit not found" / "message to delete not found",
"chat identifier is not specified", fail_query_with_error: MESSAGE_NOT_MODIFIED, MESSAGE_DELETE_FORBIDDEN ->
"message can't be deleted"); ``tdlib/td`` ``MessagesManager.cpp`` (can_delete_channel_message: a bot cannot
delete a message 2 days old or older; in a channel its own posts need can_post_messages, others'
can_delete_messages; otherwise "Message can't be deleted"), ``MessageContent.cpp`` ("Message caption is too
long")."""

from __future__ import annotations

from typing import Any

from image_pipeline.testing.emulators.telegram.sends import TelegramSends
from image_pipeline.testing.emulators.telegram.wire import Chat, TelegramError, UploadedFile

BOT_DELETE_WINDOW_S = 2 * 86400
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)


class TelegramEdits(TelegramSends):
    def _message_id(self, params: dict[str, str]) -> int:
        # Client.cpp get_message_id: a missing or malformed id reads as 0
        try:
            return int(params.get("message_id", "").strip() or 0)
        except ValueError:
            return 0

    def _check_can_touch(self, chat: Chat) -> None:
        """check_chat_access with Edit / Write rights: a banned bot, or one that is not a member."""
        if chat.bot_status == "kicked":
            raise TelegramError(403, f"Forbidden: bot was kicked from the {chat.kind()}")
        if chat.bot_status == "left":
            raise TelegramError(403, f"Forbidden: bot is not a member of the {chat.kind()}")

    def _find(self, chat: Chat, message_id: int) -> dict[str, Any] | None:
        with self._lock:
            return next(
                (m for m in self.messages if m["chat_id"] == chat.id and m["message_id"] == message_id), None
            )

    def _may_change(self, chat: Chat) -> bool:
        # the bot's own channel posts: can_post_messages (or can_delete_messages) as an administrator
        if chat.type != "channel" or chat.bot_status == "creator":
            return True
        return chat.bot_status == "administrator" and (chat.can_post_messages or chat.can_delete_messages)

    def _edited(self, params: dict[str, str]) -> dict[str, Any]:
        """The message an edit names, after the checks every edit method makes in this order."""
        chat = self._require_chat(params)
        self._check_can_touch(chat)
        message = self._find(chat, self._message_id(params))
        if message is None:
            raise TelegramError(400, "Bad Request: message to edit not found")
        if not self._may_change(chat):
            raise TelegramError(400, "Bad Request: message can't be edited")
        return message

    def _m_editmessagecaption(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        caption = self._check_caption(params) or ""  # entities are parsed before anything else
        message = self._edited(params)
        chat = self.chats[message["chat_id"]]
        if message.get("image") is None:
            raise TelegramError(400, "Bad Request: there is no caption in the message to edit")
        if (message.get("visible_text") or "") == caption:
            raise TelegramError(400, NOT_MODIFIED)
        edit_date = int(self.now())
        with self._lock:
            message.update(caption=params.get("caption"), visible_text=caption, edit_date=edit_date)
        answer: dict[str, Any] = {"message_id": message["message_id"]}
        answer["sender_chat" if chat.type == "channel" else "from"] = (
            chat.short() if chat.type == "channel" else self._bot_user()
        )
        answer.update(chat=chat.short(), date=message["date"], edit_date=edit_date)
        if message.get("media_group_id"):
            answer["media_group_id"] = message["media_group_id"]
        if caption:
            answer["caption"] = caption
        return answer

    def _m_deletemessage(self, params: dict[str, str], files: dict[str, UploadedFile]) -> bool:
        if not params.get("chat_id", "").strip():
            raise TelegramError(400, "Bad Request: chat identifier is not specified")
        message_id = self._message_id(params)
        if message_id == 0:
            raise TelegramError(400, "Bad Request: message identifier is not specified")
        chat = self._require_chat(params)
        self._check_can_touch(chat)
        message = self._find(chat, message_id)
        if message is None:
            raise TelegramError(400, "Bad Request: message to delete not found")
        if self.now() >= message["date"] + BOT_DELETE_WINDOW_S or not self._may_change(chat):
            raise TelegramError(400, "Bad Request: message can't be deleted")
        with self._lock:
            self.messages = [m for m in self.messages if m is not message]
            self.deleted.append(message)
        return True
