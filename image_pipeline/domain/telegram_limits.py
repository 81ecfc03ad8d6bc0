"""Telegram's documented limits as data: caption and message lengths, photo size and shape, album size.

Sources: core.telegram.org/bots/api#sendphoto, #sendmediagroup, #sendmessage.
"""

from __future__ import annotations

MAX_COUNT = 10  # Telegram albums hold 2-10 items

TELEGRAM_CAPTION_LIMIT = 1024


# Telegram's documented sendPhoto limits.
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDE_SUM = 10_000
PHOTO_MAX_RATIO = 20.0
DOCUMENT_MAX_BYTES = 50 * 1024 * 1024
MESSAGE_MAX_CHARS = 4096
ALBUM_MAX_IMAGES = 10  # sendMediaGroup: "must include 2-10 items"; one image goes through sendPhoto
CAPTION_MAX_CHARS = 1024
