"""The channel's reactions into the ledger, the Done sheet and the post's Dagster metadata.

Telegram sends ``message_reaction_count`` (chat, message_id, date, reactions: [{type, total_count}]) only to a
bot that administers the channel and lists it in ``allowed_updates``; the counts come late (grouped, minutes
after the change) and are the message's full current counts, not increments. So each message keeps the counts
of its newest update by date (``ledger_reactions.py``), and a post's counts are its messages' added up: an
album's messages and the original PNG sent as a document after it are one post, so reactions on any of them
count for it (Telegram clients put an album's reactions on the message a person reacted to).

Three steps, each safe to repeat, so a failed sheet read or write only delays the cells:
1. store every update's counts in the ledger (no sheet needed: nothing is lost when the sheet is out);
2. match the messages not matched yet to their Done row (chat id + one of the post's message ids); a message
   that is no post in Done (a person's own post in the channel) is dropped;
3. write the posts whose row does not show their latest counts yet.

The buttons sensor owns the one ``getUpdates`` poll and calls ``record_reactions`` on each poll, with the
poll's ``message_reaction_count`` updates (or none: step 3 then retries a write that failed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from image_pipeline.domain.errors import PipelineError
from image_pipeline.domain.retractions import album_ids, original_ids, parse_utc
from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.ledger_reactions import PostCounts, PostRef, ReactionBook
from image_pipeline.services.sheets import PromptSheet
from image_pipeline.services.sheets.done_cells import DoneRow, read_done_rows
from image_pipeline.services.sheets.done_reactions import write_reaction_cells

UPDATE_KIND = "message_reaction_count"
TELEGRAM_POST = "telegram_post"  # the asset whose partition (the prompt id) gets the counts as metadata
PAID = "⭐"  # a paid reaction is Telegram Stars; the label says so


def reaction_label(reaction_type: Mapping[str, Any]) -> str:
    """One ReactionType as the Done cell shows it: the emoji, ``custom:<id>``, or ``⭐paid``."""
    kind = str(reaction_type.get("type", ""))
    if kind == "emoji":
        return str(reaction_type.get("emoji", "")) or "?"
    if kind == "custom_emoji":
        return f"custom:{reaction_type.get('custom_emoji_id', '')}"
    if kind == "paid":
        return f"{PAID}paid"
    return kind or "?"  # a kind added to the Bot API later still counts


def parse_update(update: Mapping[str, Any]) -> tuple[str, str, int, list[list[object]]] | None:
    """(chat id, message id, date, [[label, count], ...] most first) of an Update carrying
    ``message_reaction_count``, or of the MessageReactionCountUpdated itself; None when it is neither."""
    body = update.get(UPDATE_KIND, update)
    try:
        chat_id = str(body["chat"]["id"])
        message_id = str(int(body["message_id"]))
        date = int(body["date"])
        per: dict[str, int] = {}
        for item in body.get("reactions") or []:
            label = reaction_label(item.get("type") or {})
            per[label] = per.get(label, 0) + int(item.get("total_count", 0))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    counts: list[list[object]] = [[k, v] for k, v in sorted(per.items(), key=lambda kv: (-kv[1], kv[0])) if v]
    return chat_id, message_id, date, counts


def counts_text(counts: Iterable[list[object]]) -> str:
    """``👍 12 · ❤ 3``: the Done cell, most first."""
    return " · ".join(f"{label} {n}" for label, n in counts)


def _post_index(rows: list[DoneRow]) -> dict[tuple[str, str], PostRef]:
    """(chat id, message id) -> the post, for every message of every posted Done row."""
    index: dict[tuple[str, str], PostRef] = {}
    for row in rows:
        chat_id, first = row.get("chat_id").strip(), row.get("message_id").strip()
        if not chat_id or not first:
            continue
        information = row.get("information")
        ids = album_ids(first, information) or (first,)
        post = PostRef(
            prompt_id=row.get("id").strip(),
            post_id=first,
            posted_at=parse_utc(row.get("timestamp")) or 0.0,
            link=row.get("message_link").strip(),
            prompt=row.get("prompt"),
        )
        for message_id in (*ids, *original_ids(information)):
            index[(chat_id, message_id.strip())] = post
    return index


def observation(post: PostCounts) -> dg.AssetObservation:
    """The counts on the post's ``telegram_post`` partition: an observation costs no run and shows in the
    asset's partition page and event list, beside the materialization that made the post."""
    return dg.AssetObservation(
        asset_key=TELEGRAM_POST,
        partition=post.prompt_id or None,
        metadata={
            "reactions": dg.MetadataValue.text(counts_text(post.counts) or "none"),
            "reactions_total": dg.MetadataValue.int(post.total),
            "message_id": dg.MetadataValue.text(post.post_id),
            **({"link": dg.MetadataValue.url(post.link)} if post.link else {}),
        },
    )


def record_reactions(
    book: Ledger,
    prompt_sheet: PromptSheet,
    updates: Iterable[Mapping[str, Any]],
    *,
    events: list[dg.AssetObservation] | None = None,
) -> list[str]:
    """Record a poll's ``message_reaction_count`` updates; returns log lines. ``events``: when given, gets
    one AssetObservation per post whose counts changed (a sensor returns them in ``SensorResult(asset_events=)``)."""
    reactions = ReactionBook(book)
    lines: list[str] = []
    for update in updates:
        parsed = parse_update(update)
        if parsed is None:
            lines.append(
                f"reactions: an update that is not a message_reaction_count ignored: {dict(update)!r:.200}"
            )
            continue
        chat_id, message_id, date, counts = parsed
        if not reactions.store(chat_id, message_id, date, counts):
            lines.append(f"reactions: message {message_id}: an older update (date {date}) came late, ignored")
    unplaced, unwritten = reactions.unplaced(), reactions.unwritten()
    if not unplaced and not unwritten:
        return lines
    try:
        _, rows = read_done_rows(prompt_sheet)
    except PipelineError as exc:
        return [*lines, f"reactions: Done could not be read ({exc}); the counts are kept for the next poll"]
    index = _post_index(rows)
    for chat_id, message_id in unplaced:
        post = index.get((chat_id, message_id))
        reactions.place(chat_id, message_id, post)
        if post is None:
            lines.append(f"reactions: message {message_id} in chat {chat_id} is no post in Done, ignored")
    posts = []
    for chat_id, post_id in reactions.unwritten():
        post = reactions.post(chat_id, post_id)
        if post is not None and (chat_id, post_id) not in index:
            reactions.mark_written(post)  # its Done row is gone: nothing to show the counts in
        elif post is not None:
            posts.append(post)
    if not posts:
        return lines
    try:
        written = set(
            write_reaction_cells(
                prompt_sheet, [(p.chat_id, p.post_id, counts_text(p.counts), p.total) for p in posts]
            )
        )
    except PipelineError as exc:
        written = set()
        lines.append(f"reactions: Done could not be written ({exc}); written on the next poll")
    for post in posts:
        if (post.chat_id, post.post_id) in written:
            reactions.mark_written(post)
            lines.append(
                f"reactions: {post.prompt_id} (message {post.post_id}): {counts_text(post.counts) or 'none'}"
            )
        if events is not None:
            events.append(observation(post))
    return lines
