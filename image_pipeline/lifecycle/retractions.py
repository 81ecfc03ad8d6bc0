"""EDIT and DELETE from Done, applied exactly once through the ledger, the outcome written back to the row.

For each Done row whose status says EDIT or DELETE: the request's ledger row (``ledger_edits.py``) is made,
each message goes into its intent before the call (editMessageCaption on the post's first message, where an
album's caption is; deleteMessage on every message of the post), into ``done_ids`` after Telegram's answer,
and the row's text is settled once and then written into the cell. A request whose text is settled never
calls Telegram again (a repeated tick, a crash before the cell was written). A call whose answer was lost is
read back by calling again, which both calls allow: "message is not modified" means the caption is there,
"message to delete not found" that it is gone (after our own call: we deleted it).

Which messages: Done's ``message_id`` and, for an album, "messages A-B" of its information (consecutive ids
as Telegram numbers an album: one sendMediaGroup); failing that, the ledger's record of the post (the first
id and the number of images). A post whose messages cannot all be named is refused, never half deleted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from image_pipeline.domain.errors import PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.retractions import (
    DELETE,
    DELETE_WINDOW_S,
    EDIT,
    TOO_OLD,
    SheetAction,
    action_word,
    album_ids,
    done_word,
    edit_caption_text,
    original_ids,
    parse_utc,
    refused,
)
from image_pipeline.domain.statuses import POSTED
from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.ledger_edits import ActionBook
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.publisher.refusals import CaptionRefused, MessageGone, MessageNotDeletable
from image_pipeline.services.sheets import PromptSheet
from image_pipeline.services.sheets.done_cells import STATUS, DoneRow, read_done_rows, write_done_statuses

log = logging.getLogger("image_pipeline.retractions")


@dataclass(frozen=True)
class Applied:
    prompt_id: str
    action: str
    outcome: str  # the row's text; "" when it stays (a transient refusal: the next run tries again)
    calls: int  # Telegram calls this run made for it


def apply_sheet_actions(
    book: Ledger, publisher: Publisher, sheet: PromptSheet, now: Callable[[], float] = time.time
) -> list[Applied]:
    """Every EDIT / DELETE in Done, applied and written back. Raises ServiceBlocked (after writing what
    was settled) when the service refuses every request alike (token, chat, flood wait)."""
    _, rows = read_done_rows(sheet)
    actions = ActionBook(book)
    applied: list[Applied] = []
    settled: list[tuple[DoneRow, str, str]] = []
    try:
        for row in rows:
            word = action_word(row.get(STATUS))
            if word is None:
                continue
            action, why = describe(book, row, word)
            if action is None:
                text = refused(word, why)
                settled.append((row, text, ""))
                applied.append(Applied(row.get("id"), word, text, 0))
                continue
            result = _apply(actions, publisher, action, now)
            applied.append(result)
            if result.outcome:
                settled.append((row, result.outcome, action.key))
    finally:
        for row in write_done_statuses(sheet, [(r, text) for r, text, _ in settled]):
            key = next(k for r, _, k in settled if r is row)
            if key:
                actions.written(key)
    return applied


def describe(book: Ledger, row: DoneRow, word: str) -> tuple[SheetAction | None, str]:
    """The request a Done row makes, or None and why it cannot be carried out."""
    pid, chat_id, first = row.get("id").strip(), row.get("chat_id").strip(), row.get("message_id").strip()
    if not chat_id or not first.isdigit():
        return None, "this row records no posted message"
    ids = album_ids(first, row.get("information"))
    entry = next((e for e in book.entries_for(pid) if e.post_state == POSTED and e.message_id == first), None)
    if entry is not None:
        # the ledger's record of the post (how many images) settles a Done text a person changed
        count = len((json.loads(entry.image_meta or "{}") or {}).get("variations") or []) or 1
        known = tuple(str(int(first) + i) for i in range(count))
        ids = known if ids is None or len(ids) == count else None
    if ids is None:
        return None, "the album's message ids are not all known; delete or edit it in the app"
    originals = original_ids(row.get("information"))
    if entry is not None and getattr(entry, "original_message_id", ""):
        originals = tuple(dict.fromkeys([*originals, *entry.original_message_id.split(",")]))
    if word == DELETE:
        ids = (*ids, *(o.strip() for o in originals if o.strip() and o.strip() not in ids))
    posted_at = entry.posted_at if entry is not None and entry.posted_at else parse_utc(row.get("timestamp"))
    caption = edit_caption_text(row.get("caption"), row.get("prompt")) if word == EDIT else ""
    if word == EDIT and not caption:
        return None, "the row has no caption or prompt to put on the post"
    return SheetAction(word, pid, chat_id, ids, caption, posted_at), ""


def _apply(
    actions: ActionBook, publisher: Publisher, action: SheetAction, now: Callable[[], float]
) -> Applied:
    record = actions.begin(action)
    if record.outcome:  # settled before: never called again, only written again
        return Applied(action.prompt_id, action.action, record.outcome, 0)
    calls = 0
    try:
        if action.action == EDIT:
            first = action.message_ids[0]  # an album's caption is its first message's
            actions.sending(action.key, first)
            calls += 1
            answer = publisher.edit_caption(chat_id=action.chat_id, message_id=first, caption=action.caption)
            actions.confirmed(action.key, first)
            # UNCHANGED is the read-back of a call whose answer was lost, or a row typed EDIT unchanged:
            # either way the post now shows the row's caption
            log.info("%s: caption of %s %s", action.prompt_id, first, answer)
            text = done_word(EDIT, now())
        else:
            for message_id in action.message_ids:
                if message_id in record.done_ids:
                    continue  # confirmed by an earlier run: never called again
                actions.sending(action.key, message_id)
                calls += 1
                # GONE after a call of ours whose answer was lost (sent_ids) means we deleted it; without
                # one, that it was deleted in the app: the post is retracted either way
                publisher.delete_message(chat_id=action.chat_id, message_id=message_id)
                actions.confirmed(action.key, message_id)
            text = done_word(DELETE, now())
    except MessageGone:
        text = refused(action.action, "the message is not in the chat any more")
    except MessageNotDeletable as exc:
        text = refused(DELETE, _why_not_deletable(action, now(), str(exc)))
    except CaptionRefused:
        text = refused(EDIT, "Telegram counts the caption as longer than 1024 characters; shorten it")
    except PromptRejected as exc:
        text = refused(action.action, str(exc))
    except TransientError as exc:
        # the intent stays: the next run calls again, which is the read-back
        log.warning(
            "%s %s of %s: %s; tried again next run", action.action, action.chat_id, action.prompt_id, exc
        )
        return Applied(action.prompt_id, action.action, "", calls)
    except ServiceBlocked:
        raise
    return Applied(action.prompt_id, action.action, actions.settle(action.key, text), calls)


def _why_not_deletable(action: SheetAction, now: float, detail: str) -> str:
    if action.posted_at is not None and now - action.posted_at >= DELETE_WINDOW_S - 60:
        return TOO_OLD
    return (
        f"{detail} (older than 48 hours, or the bot lacks the right to delete messages in the channel); "
        "delete it in the app"
    )
