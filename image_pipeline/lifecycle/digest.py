"""The weekly digest: the week's most-reacted posts, with links, sent once to the alert chat.

"Once" is the ledger's: the week's row is written before the notice is sent (``begin_digest``) and a week
that has a row is never sent again, whatever came of it; a send whose answer was lost is not repeated
(a missing digest costs less than a second one). The schedule's run key keeps a second run from starting
at all. The counts are the ledger's (``ledger_reactions.py``): no sheet read.
"""

from __future__ import annotations

import re
from datetime import datetime

from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.ledger_reactions import EMPTY, FAILED, SENT, PostCounts, ReactionBook
from image_pipeline.lifecycle.reactions import counts_text
from image_pipeline.services.publisher.interface import Publisher

DIGEST_MODES = ("weekly", "off")
WEEK_S = 7 * 86400
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_AT = re.compile(r"^\s*([a-z]{3})[a-z]*\s+(\d{1,2}):(\d{2})\s*$")


def digest_cron(at: str) -> str:
    """``mon 09:00`` (a weekday and a 24-hour time) as a cron schedule; ValueError when it is not one."""
    found = _AT.match(at.lower())
    if found is None or found.group(1) not in _DAYS:
        raise ValueError(
            f"IMAGE_PIPELINE_DIGEST_AT must be a weekday and a time like 'mon 09:00', got {at!r}"
        )
    day, hour, minute = _DAYS.index(found.group(1)), int(found.group(2)), int(found.group(3))
    if hour > 23 or minute > 59:
        raise ValueError(f"IMAGE_PIPELINE_DIGEST_AT: {at!r} is not a time of day")
    return f"{minute} {hour} * * {(day + 1) % 7}"  # cron counts Sunday as 0


def week_key(when: datetime) -> str:
    """The ISO week of ``when`` (in the schedule's time zone): one digest each."""
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def digest_text(posts: list[PostCounts], week: str) -> str:
    lines = [f"Top posts of the last 7 days ({week}), by reactions:"]
    for n, post in enumerate(posts, 1):
        prompt = " ".join(post.prompt.split())
        prompt = prompt if len(prompt) <= 80 else prompt[:79] + "…"
        where = post.link or f"message {post.post_id}"
        lines.append(f"{n}. {post.total} · {counts_text(post.counts)} · {prompt} · {where}")
    return "\n".join(lines)


def send_digest(book: Ledger, publisher: Publisher, *, week: str, now: float, top: int) -> str:
    """Send the week's digest unless it was begun before; returns what happened, for the log."""
    reactions = ReactionBook(book)
    if reactions.digest_state(week) is not None:
        return f"digest {week}: {reactions.digest_state(week)} already; not sent again"
    posts = reactions.top_posts(now - WEEK_S, top)
    text = digest_text(posts, week)
    if not reactions.begin_digest(week, text):
        return f"digest {week}: begun by another run; not sent again"
    if not posts:
        reactions.end_digest(week, EMPTY)
        return f"digest {week}: no post of the last 7 days has a reaction; nothing sent"
    delivered = publisher.notify(text)
    reactions.end_digest(week, SENT if delivered else FAILED)
    if not delivered:
        return f"digest {week}: could not be delivered (no alert chat, or it refused); not tried again"
    return f"digest {week}: sent, {len(posts)} post(s)"
