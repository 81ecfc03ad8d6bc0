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

The modules, each importing only those before it: ``wire`` (constants, limits, records, the envelope),
``markup`` (HTML parse mode), ``state`` (chats, rights, files, messages, flood control), ``uploads``
(request bodies, multipart, the file store), ``chats`` (getMe/getChat/getChatMember, the bot's rights),
``sends`` (sendPhoto/sendDocument/sendMessage/sendMediaGroup), ``edits`` (editMessageCaption and
deleteMessage with the 48-hour rule on the emulator's clock: ``advance_clock``), ``updates`` (getUpdates,
``push_update``, button presses with ``press``, answerCallbackQuery, keyboards, the webhook), ``faults`` (named and injected faults),
``server`` (``TelegramEmulator``: routing). This module is the package's interface.
"""

from image_pipeline.testing.emulators.telegram.faults import NAMED_FAULTS
from image_pipeline.testing.emulators.telegram.markup import visible_text
from image_pipeline.testing.emulators.telegram.server import TelegramEmulator
from image_pipeline.testing.emulators.telegram.uploads import parse_multipart
from image_pipeline.testing.emulators.telegram.wire import (
    ALERTS_CHANNEL_ID,
    DEFAULT_CHANNEL_ID,
    DEFAULT_CHANNEL_USERNAME,
    DEFAULT_TOKEN,
    MAX_ALBUM_ITEMS,
    MAX_CAPTION_CHARS,
    MAX_DOCUMENT_BYTES,
    MAX_PHOTO_BYTES,
    MAX_PHOTO_RATIO,
    MAX_PHOTO_SIDE_SUM,
    MAX_TEXT_CHARS,
    AlbumItem,
    Chat,
    StoredFile,
    TelegramError,
    UploadedFile,
    error_envelope,
    split_bot_path,
    token_is_well_formed,
)

__all__ = [
    "ALERTS_CHANNEL_ID",
    "DEFAULT_CHANNEL_ID",
    "DEFAULT_CHANNEL_USERNAME",
    "DEFAULT_TOKEN",
    "MAX_ALBUM_ITEMS",
    "MAX_CAPTION_CHARS",
    "MAX_DOCUMENT_BYTES",
    "MAX_PHOTO_BYTES",
    "MAX_PHOTO_RATIO",
    "MAX_PHOTO_SIDE_SUM",
    "MAX_TEXT_CHARS",
    "NAMED_FAULTS",
    "AlbumItem",
    "Chat",
    "StoredFile",
    "TelegramEmulator",
    "TelegramError",
    "UploadedFile",
    "error_envelope",
    "parse_multipart",
    "split_bot_path",
    "token_is_well_formed",
    "visible_text",
]
