"""The ledger's record of the channel's reactions (table ``reaction_counts``) and of the weekly digest
(table ``digests``), both schema step 6.

Telegram sends a message's full current counts, late and in any order across polls: the row keeps the
counts of the newest update by its ``date`` and refuses an older one (compare and set in one transaction,
so two sensor ticks cannot interleave). ``written`` is cleared whenever the counts change and set once the
Done row shows them: a lost sheet write is made again by the next call.

A view over a ``Ledger`` (its transactions and dialect), not a mixin: ``ledger.py`` is at its size limit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlalchemy as sa

from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.ledger_schema import digests, reaction_counts

_R = reaction_counts.c
_D = digests.c

# digest states: the intent before the notice is sent, and what came of it
SENDING = "SENDING"
SENT = "SENT"
FAILED = "FAILED"  # the publisher said it could not deliver (no alert chat, a refusal): not tried again
EMPTY = "EMPTY"  # no post of the week had a reaction: nothing sent


@dataclass(frozen=True)
class PostRef:
    """The post a message belongs to, as its Done row tells it."""

    prompt_id: str
    post_id: str  # the post's first message id (an album's)
    posted_at: float
    link: str
    prompt: str


@dataclass(frozen=True)
class PostCounts:
    """A post's counts, its messages' added up: ``counts`` is [[label, n], ...], most first."""

    chat_id: str
    post_id: str
    prompt_id: str
    counts: list[list[object]]
    total: int
    posted_at: float
    link: str
    prompt: str


class ReactionBook:
    """Reads and durable writes of ``reaction_counts`` and ``digests``; each write is its own transaction."""

    def __init__(self, book: Ledger) -> None:
        self.book = book

    def store(self, chat_id: str, message_id: str, date: int, counts: list[list[object]]) -> bool:
        """Keep these counts unless the row has counts from a later update; True when they were kept.
        An update of the same date replaces the row: the poll hands updates over in the order they came.
        The post it belongs to is filled in by ``place`` once Done has been read."""
        values = {
            "counts": json.dumps(counts, ensure_ascii=False),
            "total": sum(int(n) for _, n in counts),  # type: ignore[call-overload]
            "date": int(date),
            "written": 0,
            "updated_at": time.time(),
        }
        key = (_R.chat_id == chat_id) & (_R.message_id == message_id)
        with self.book._tx() as db:
            have = db.execute(sa.select(_R.date).where(key)).first()
            if have is None:
                db.execute(
                    sa.insert(reaction_counts).values(chat_id=chat_id, message_id=message_id, **values)
                )
                return True
            if int(have[0]) > int(date):
                return False
            db.execute(sa.update(reaction_counts).where(key).values(**values))
            return True

    def unplaced(self) -> list[tuple[str, str]]:
        """(chat id, message id) of the counts not yet matched to a post in Done."""
        with self.book._read() as db:
            rows = db.execute(sa.select(_R.chat_id, _R.message_id).where(_R.post_id == "")).all()
        return [(str(c), str(m)) for c, m in rows]

    def place(self, chat_id: str, message_id: str, post: PostRef | None) -> None:
        """The message's post as Done tells it; None: not a post of ours, its counts are dropped."""
        key = (_R.chat_id == chat_id) & (_R.message_id == message_id)
        with self.book._tx() as db:
            if post is None:
                db.execute(sa.delete(reaction_counts).where(key))
                return
            db.execute(
                sa.update(reaction_counts)
                .where(key)
                .values(
                    post_id=post.post_id,
                    prompt_id=post.prompt_id,
                    posted_at=post.posted_at,
                    link=post.link,
                    prompt=post.prompt[:200],
                )
            )

    def unwritten(self) -> list[tuple[str, str]]:
        """(chat id, post id) of the posts whose Done row does not show their latest counts yet."""
        with self.book._read() as db:
            rows = db.execute(
                sa.select(_R.chat_id, _R.post_id).where(_R.written == 0, _R.post_id != "").distinct()
            ).all()
        return sorted((str(c), str(p)) for c, p in rows)

    def post(self, chat_id: str, post_id: str) -> PostCounts | None:
        with self.book._read() as db:
            rows = db.execute(
                sa.select(reaction_counts).where(_R.chat_id == chat_id, _R.post_id == post_id)
            ).all()
        return _add_up([r._mapping for r in rows])

    def mark_written(self, shown: PostCounts) -> None:
        """The Done row shows ``shown``: marked only while the post still has those counts (a newer update
        stored meanwhile stays unwritten, for the next call)."""
        where = (_R.chat_id == shown.chat_id) & (_R.post_id == shown.post_id)
        with self.book._tx() as db:
            now = _add_up([r._mapping for r in db.execute(sa.select(reaction_counts).where(where)).all()])
            if now is not None and now.counts == shown.counts:
                db.execute(sa.update(reaction_counts).where(where).values(written=1))

    def top_posts(self, since: float, limit: int) -> list[PostCounts]:
        """The posts made since ``since`` (epoch seconds) with the most reactions, most first."""
        with self.book._read() as db:
            rows = db.execute(sa.select(reaction_counts).where(_R.posted_at >= since)).all()
        posts: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            m = dict(r._mapping)
            posts.setdefault((m["chat_id"], m["post_id"]), []).append(m)
        added = [p for p in (_add_up(ms) for ms in posts.values()) if p is not None and p.total > 0]
        added.sort(key=lambda p: (-p.total, -p.posted_at, p.post_id))
        return added[: max(0, limit)]

    # ------------------------------------------------------------------------------------- digest
    def digest_state(self, week: str) -> str | None:
        with self.book._read() as db:
            return db.execute(sa.select(_D.state).where(_D.week == week)).scalar()

    def begin_digest(self, week: str, text: str) -> bool:
        """The intent, durable before the notice is sent; False when this week's digest was begun before
        (sent, failed, empty, or a send whose outcome is unknown): it is never sent twice."""
        insert = self.book._insert(digests).values(
            week=week, state=SENDING, text=text, updated_at=time.time()
        )
        with self.book._tx() as db:
            done = db.execute(insert.on_conflict_do_nothing(index_elements=[_D.week]))
            return bool(done.rowcount)

    def end_digest(self, week: str, state: str) -> None:
        with self.book._tx() as db:
            db.execute(sa.update(digests).where(_D.week == week).values(state=state, updated_at=time.time()))


def _add_up(rows: list) -> PostCounts | None:
    if not rows:
        return None
    per: dict[str, int] = {}
    for m in rows:
        for label, n in json.loads(m["counts"] or "[]"):
            per[str(label)] = per.get(str(label), 0) + int(n)
    counts: list[list[object]] = [[k, v] for k, v in sorted(per.items(), key=lambda kv: (-kv[1], kv[0])) if v]
    first = min(rows, key=lambda m: int(m["message_id"]) if str(m["message_id"]).isdigit() else 0)
    return PostCounts(
        chat_id=str(first["chat_id"]),
        post_id=str(first["post_id"]),
        prompt_id=str(first["prompt_id"]),
        counts=counts,
        total=sum(int(m["total"]) for m in rows),
        posted_at=float(first["posted_at"]),
        link=str(first["link"]),
        prompt=str(first["prompt"]),
    )
