"""The methods that read a chat (getMe, getChat, getChatMember) and the bot's rights in a chat: who may
read it, the ChatMember object the server writes for the bot, and whether, and with which error, the bot
may post text, a photo or a document there (``_check_can_post``, in the server's order of checks)."""

from __future__ import annotations

from typing import Any

from image_pipeline.testing.emulators.telegram.state import TelegramState
from image_pipeline.testing.emulators.telegram.wire import Chat, TelegramError, UploadedFile


class TelegramChats(TelegramState):
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
                {
                    "can_delete_messages": chat.can_delete_messages,
                    "can_invite_users": True,
                    "can_restrict_members": True,
                }
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
