"""A queue that never runs dry: the low-queue notice and the refill by a text model.

- ``low_queue_notice``: one notice per low-queue episode. The queue is low while fewer than N rows would
  reach the channel without a person's word; the episode ends once it holds N again, and only then can a
  new one start (the caller keeps the flag: the refill sensor's cursor).
- ``refill_queue``: the text model writes ``count`` prompts in the style of the channel's best posts (Done's
  ``reactions_total`` when it has one, else its most recent SUCCESS rows), near-duplicates of any prompt in
  Process or Done are dropped (``domain/similarity.py``), and the rest go to the end of Process with the
  configured status (PREVIEW or HOLD: a person sees each one before it is posted).

The budget guard covers it: one ``refills`` unit per refill under ``daily_cap`` (reserved before the model
is asked, given back when nothing was spent or the answer was lost to a transient error), every request
counted as ``text_requests`` under ``TEXT_TRIES`` times the cap (an outage cannot call the model every
tick), and a refusal of the text service (credits, token, a model it does not serve) pauses the ``text``
service alone: one notice, the images go on, ``image-pipeline resume`` lifts it with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from image_pipeline.domain.errors import PipelineError, ServiceBlocked, TransientError
from image_pipeline.domain.redact import redact
from image_pipeline.domain.refill_prompts import build_messages, parse_prompts
from image_pipeline.domain.similarity import PromptIndex
from image_pipeline.domain.statuses import APPROVE, AWAITING_APPROVAL, HOLD, PREVIEW, REPOST, SUCCESS
from image_pipeline.lifecycle.ledger import Ledger, Pause
from image_pipeline.lifecycle.posting import notify
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet, QueueSnapshot
from image_pipeline.services.sheets.appends import append_prompts
from image_pipeline.services.text import TEXT_SERVICE, PromptWriter

log = logging.getLogger("image_pipeline.refill")

REFILLS = "refills"  # the ledger's daily counter of refills
TEXT_REQUESTS = "text_requests"  # and of chat requests
TEXT_TRIES = 3  # chat requests a day per allowed refill: a transient failure is tried again, not forever
REFILL_STATUSES = (PREVIEW, HOLD)
EXAMPLES = 10  # best posts shown to the model
_POSTABLE = ("", APPROVE, REPOST)  # commands of rows that go out without anyone's word
_WAITING = (PREVIEW, AWAITING_APPROVAL, HOLD)


@dataclass(frozen=True)
class RefillPlan:
    count: int  # prompts per refill
    status: str = PREVIEW
    daily_cap: int = 1  # refills per UTC day (0: no cap)


@dataclass
class RefillOutcome:
    written: list[str] = field(default_factory=list)  # the prompts appended to Process
    duplicates: list[str] = field(default_factory=list)  # the model's prompts dropped as near-duplicates
    ids: list[str] = field(default_factory=list)
    skipped: str = ""  # why nothing was asked or written ("" when the model was asked)


# ----------------------------------------------------------------------------------------- the queue
def queued_count(snapshot: QueueSnapshot) -> int:
    """Rows that will reach the channel without a person's word (not held, not waiting for APPROVE)."""
    return sum(1 for r in snapshot.rows if r.prompt.strip() and r.command in _POSTABLE)


def waiting_count(snapshot: QueueSnapshot) -> int:
    """Rows that wait for a person (PREVIEW, AWAITING APPROVAL, HOLD): an earlier refill not yet reviewed."""
    return sum(1 for r in snapshot.rows if r.prompt.strip() and r.command in _WAITING)


def low_queue_notice(queued: int, waiting: int, threshold: int, was_low: bool) -> tuple[str | None, bool]:
    """(the notice to send now or None, whether the queue is low now). Low means fewer than
    ``threshold`` postable rows; a notice goes out when an episode starts, never twice in one."""
    low = threshold > 0 and queued < threshold
    if not low or was_low:
        return None, low
    text = (
        f"image-pipeline: the queue is low, {queued} prompt(s) queued in Process "
        f"(IMAGE_PIPELINE_LOW_QUEUE={threshold})"
    )
    if waiting:
        text += f"; {waiting} more wait for a person's word (PREVIEW / HOLD)"
    return text + ".", True


def best_examples(done: Sequence[dict[str, str]], limit: int = EXAMPLES) -> list[str]:
    """The prompts of the channel's best posts: by Done's ``reactions_total`` where any row has one
    (another part of the pipeline fills it from Telegram's reaction counts), else the latest SUCCESS rows."""
    posted = [
        (i, r["prompt"].strip())
        for i, r in enumerate(done)
        if (r.get("status") or "").strip().upper() == SUCCESS and (r.get("prompt") or "").strip()
    ]
    scores = {i: _int(done[i].get("reactions_total")) for i, _ in posted}
    if any(s is not None for s in scores.values()):
        # most reactions first; on a tie (or no count yet) the newer post first
        posted.sort(key=lambda item: (scores[item[0]] or 0, item[0]), reverse=True)
    else:
        posted.reverse()
    return list(dict.fromkeys(p for _, p in posted))[:limit]


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- the budget
def text_pause(book: Ledger) -> Pause | None:
    """The refill's own pause (credits, token or model refused), while it is in force."""
    return book.pause_of(TEXT_SERVICE)


def why_not_refill(book: Ledger, plan: RefillPlan) -> str | None:
    """Why no refill may start now (the text service paused, the pipeline paused, today's cap), or None."""
    paused = text_pause(book) or book.pause_state()
    if paused is not None:
        return paused.message()
    if plan.daily_cap > 0 and book.used_today(REFILLS) >= plan.daily_cap:
        return f"the daily cap of {plan.daily_cap} refill(s) is reached"
    if plan.daily_cap > 0 and book.used_today(TEXT_REQUESTS) >= TEXT_TRIES * plan.daily_cap:
        return f"{TEXT_TRIES * plan.daily_cap} text model requests today already"
    return None


# ----------------------------------------------------------------------------------------- the refill
def refill_queue(
    book: Ledger, sheet: PromptSheet, writer: PromptWriter, publisher: Publisher, plan: RefillPlan
) -> RefillOutcome:
    """One refill, if the budget guard allows it (see the module docstring). Raises TransientError only
    for the sheet (the refill unit given back)."""
    if plan.count <= 0:
        return RefillOutcome(skipped="IMAGE_PIPELINE_REFILL is 0")
    reason = why_not_refill(book, plan)
    if reason is not None:
        return RefillOutcome(skipped=reason)
    cap = plan.daily_cap if plan.daily_cap > 0 else None
    if not book.reserve(REFILLS, cap):
        return RefillOutcome(skipped=f"the daily cap of {plan.daily_cap} refill(s) is reached")
    try:
        snapshot, done = sheet.read_queue_and_done()
        if waiting_count(snapshot) >= plan.count:
            book.unreserve(REFILLS)
            return RefillOutcome(skipped="the last refill's rows still wait for review")
        if not book.reserve(TEXT_REQUESTS, TEXT_TRIES * cap if cap else None):
            book.unreserve(REFILLS)
            return RefillOutcome(skipped="today's text model requests are used up")
        known = PromptIndex([r.prompt for r in snapshot.rows] + [d.get("prompt") or "" for d in done])
        answer = writer.complete(build_messages(best_examples(done), plan.count))
        outcome = RefillOutcome()
        for prompt in parse_prompts(answer):
            if len(outcome.written) >= plan.count:
                break
            if known.duplicate_of_any(prompt):
                outcome.duplicates.append(prompt)
                continue
            known.add(prompt)  # two near-identical lines of one answer: the first one only
            outcome.written.append(prompt)
        outcome.ids = append_prompts(sheet, outcome.written, plan.status)
    except ServiceBlocked as exc:
        if exc.service != TEXT_SERVICE:  # the sheet refuses us: the pipeline's matter, not the refill's
            book.unreserve(REFILLS)
            raise
        _stop_refill(book, publisher, exc)
        return RefillOutcome(skipped=redact(str(exc)))
    except TransientError as exc:
        book.unreserve(REFILLS)  # nothing landed: the next tick may try again, within TEXT_TRIES
        if exc.service == TEXT_SERVICE:
            log.warning("refill: %s; tried again later", redact(str(exc)))
            return RefillOutcome(skipped=redact(str(exc)))
        raise
    except PipelineError:
        book.unreserve(REFILLS)
        raise
    log.info("refill: %d written, %d near-duplicates dropped", len(outcome.written), len(outcome.duplicates))
    if outcome.written:
        notify(
            publisher,
            f"image-pipeline refilled the queue: {len(outcome.written)} new prompt(s) in Process with "
            f"status {plan.status}"
            + (f" ({len(outcome.duplicates)} near-duplicate(s) dropped)" if outcome.duplicates else ""),
        )
    return outcome


def _stop_refill(book: Ledger, publisher: Publisher, exc: ServiceBlocked) -> None:
    """The text service refuses us: the refill stops until an operator resumes; one notice (the pause
    is made once). The refill unit stays spent: the same request would be refused again today."""
    message = redact(str(exc))
    if book.pause(TEXT_SERVICE, message):
        notify(
            publisher,
            f"image-pipeline stopped the queue refill: {message}. The images go on; once fixed, resume "
            "with `image-pipeline resume` or the resume_spending_job.",
        )
    else:
        log.warning("refill: the text service was paused already; no second notice")
