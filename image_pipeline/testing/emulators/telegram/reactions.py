"""Reactions on channel posts: a test sets a message's counts, the emulator queues the real
``message_reaction_count`` update (``push_update``), which getUpdates hands out only to a poll that lists
it in ``allowed_updates`` (``updates.py``).

Sources: the Bot API docs (Update.message_reaction_count: "The bot must be an administrator in the chat and
must explicitly specify "message_reaction_count" in the list of allowed_updates to receive these updates. The
updates are grouped and can be sent with delay up to a few minutes"; MessageReactionCountUpdated: chat,
message_id, date, reactions; ReactionCount: type, total_count; ReactionType: emoji / custom_emoji / paid).
The counts are the message's full current counts, not a change; ``date`` lets a test send an older update
late, as the grouping and delay can.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from image_pipeline.testing.emulators.telegram.updates import TelegramUpdates


def reaction_type(label: str) -> dict[str, str]:
    """``paid``, ``custom:<id>`` or an emoji as the Bot API's ReactionType."""
    if label == "paid":
        return {"type": "paid"}
    if label.startswith("custom:"):
        return {"type": "custom_emoji", "custom_emoji_id": label.split(":", 1)[1]}
    return {"type": "emoji", "emoji": label}


def set_reactions(
    tg: TelegramUpdates,
    chat_id: int | str,
    message_id: int,
    counts: Mapping[str, int],
    *,
    date: int | None = None,
) -> int | None:
    """People reacted: the message now has ``counts`` (label -> how many; ``paid``, ``custom:<id>`` or an
    emoji). Queues the update and returns its id; None when Telegram sends none: the bot is no
    administrator of the chat (the message's counts still change, the bot just does not hear of it)."""
    chat = tg.find_chat(chat_id)
    if chat is None:
        raise KeyError(f"no chat {chat_id!r}")
    message = tg._find(chat, int(message_id))
    if message is None:
        raise KeyError(f"no message {message_id} in chat {chat.id}")
    reactions: list[dict[str, Any]] = [
        {"type": reaction_type(label), "total_count": int(n)} for label, n in counts.items() if int(n) > 0
    ]
    with tg._lock:
        message["reactions"] = reactions
    if chat.bot_status not in ("administrator", "creator"):
        return None
    update = {
        "chat": chat.short(),
        "message_id": int(message_id),
        "date": int(tg.now()) if date is None else int(date),
        "reactions": reactions,
    }
    return tg.push_update({"message_reaction_count": update})
