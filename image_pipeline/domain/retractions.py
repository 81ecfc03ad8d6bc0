"""EDIT and DELETE typed into a Done row's status cell: the words, what each asks of which messages, and the
text the row gets back (``EDITED <utc time>``, ``DELETED <utc time>`` or ``<WORD> REFUSED: <why>``).

Pure: no I/O. The ledger-guarded calls are ``lifecycle/retractions.py``; reading and writing the cells is
``services/sheets/done_cells.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from image_pipeline.domain.rows import clean_text
from image_pipeline.domain.telegram_limits import TELEGRAM_CAPTION_LIMIT

EDIT = "EDIT"
DELETE = "DELETE"
ACTIONS = (EDIT, DELETE)

# What a publisher answers (services/publisher/interface.py): the message now has the caption / is gone.
EDITED = "edited"
UNCHANGED = "unchanged"  # it had that caption already ("message is not modified")
DELETED = "deleted"
GONE = "gone"  # "message to delete not found": deleted already (by our own unanswered call, or in the app)

# Bots may delete a message only while it is younger than 2 days (tdlib MessagesManager.cpp
# can_delete_channel_message: "bots can't delete messages older than 2 days").
DELETE_WINDOW_S = 2 * 86400
TOO_OLD = "older than 48 hours; delete it in the app"

_ALBUM = re.compile(r"album of (\d+)\b.*?\bmessages (\d+)-(\d+)")
_ORIGINALS = re.compile(r"original PNG as a document: messages? ([\d, ]+)")


def action_word(status: str) -> str | None:
    """EDIT or DELETE when that is what the cell says (any case, spaces around), else None."""
    word = status.strip().upper()
    return word if word in ACTIONS else None


def utc_stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def done_word(action: str, now: float) -> str:
    return f"{'EDITED' if action == EDIT else 'DELETED'} {utc_stamp(now)}"


def refused(action: str, why: str) -> str:
    return f"{action} REFUSED: {why}"[:500]


def parse_utc(stamp: str) -> float | None:
    """A Done ``timestamp`` (``2026-01-02T03:04:05Z``) as epoch seconds; None when it is not one."""
    try:
        return datetime.strptime(stamp.strip(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def album_ids(message_id: str, information: str) -> tuple[str, ...] | None:
    """Every message id of the post as Done logged it: ``message_id`` for one image; for an album, the
    ids ``A..B`` of "an album of N ... as messages A-B" when they are N consecutive ids. None when the
    row says album but the ids cannot be told from it (then only the ledger knows them)."""
    if "album" not in information:
        return (message_id,) if message_id.strip() else None
    found = _ALBUM.search(information)
    if found is None:
        return None
    count, first, last = (int(g) for g in found.groups())
    if last - first + 1 != count or str(first) != message_id.strip():
        return None
    return tuple(str(i) for i in range(first, last + 1))


def original_ids(information: str) -> tuple[str, ...]:
    """The messages that carried the original PNG(s) as documents after the post (done.py words them
    "the original PNG as a document: message 12, 13"): part of the post, so DELETE takes them back too."""
    found = _ORIGINALS.search(information)
    return tuple(re.findall(r"\d+", found.group(1))) if found else ()


def edit_caption_text(caption_cell: str, prompt_cell: str, limit: int = TELEGRAM_CAPTION_LIMIT) -> str:
    """The corrected caption: the Done row's ``caption`` cell, else its ``prompt`` cell, cut to Telegram's
    limit with an ellipsis as a post's caption is (captions.py)."""
    text = clean_text(caption_cell).strip() or clean_text(prompt_cell).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass(frozen=True)
class SheetAction:
    """One EDIT or DELETE asked for in a Done row."""

    action: str
    prompt_id: str
    chat_id: str
    message_ids: tuple[str, ...]
    caption: str = ""  # EDIT only
    posted_at: float | None = None  # when the post was made, as far as we know (the 48-hour answer)

    @property
    def key(self) -> str:
        """The same request typed again (same messages, same caption) is the same ledger row: a repeated
        tick or a crash never makes the call twice. A new caption is a new EDIT."""
        body = [
            self.action,
            self.chat_id,
            list(self.message_ids),
            self.caption if self.action == EDIT else "",
        ]
        return hashlib.sha256(json.dumps(body, ensure_ascii=False).encode()).hexdigest()[:32]
