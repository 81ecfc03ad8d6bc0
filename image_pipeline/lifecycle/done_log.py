"""The Done step of a batch: which prompts get a Done row and which stay queued (and why), the rows appended
with the ledger's LOGGING -> LOGGED around the one append, the finished rows removed from the queue, and the
claims released. The Done row itself is made by ``done.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.records import ByPartition, DoneOutcome, PromptRecord
from image_pipeline.domain.statuses import (
    AWAITING_APPROVAL,
    BUSY,
    CAPPED,
    CHECK_CHANNEL,
    LOGGED,
    LOGGING,
    POSTED,
    QUEUED,
    REMOVED,
    RETRY,
    UNCERTAIN,
)
from image_pipeline.lifecycle.done import entry_for, orphan_posts, read_done_index, stays_as
from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.queue_lock import queue_writes
from image_pipeline.lifecycle.records import in_queue_order
from image_pipeline.services.sheets import PromptSheet


@dataclass
class DonePlan:
    results: ByPartition = field(default_factory=ByPartition)  # the prompts that get no Done row now
    to_log: list[tuple[str, str, DoneEntry]] = field(default_factory=list)  # (id, fingerprint, row)
    to_remove: dict[str, str] = field(default_factory=dict)  # id -> fingerprint
    needs_done_check: bool = False  # an earlier version of a row was posted and never logged
    # prompts whose Done append by another run has an unknown outcome: read Done back before appending
    read_back: set[str] = field(default_factory=set)


def plan_done(
    prompt_record: ByPartition,
    generated_image: ByPartition,
    telegram_post: ByPartition,
    book: Ledger,
    held: Callable[[str, PromptRecord], bool] | None = None,
) -> DonePlan:
    """Each prompt's Done row, or why it stays queued, from what its run did. ``held``: whether this run
    holds the prompt's claim now (renewed, or taken over from a finished run when the Done step is re-executed
    alone); a prompt another live run holds is left to that run."""
    plan = DonePlan()
    with book.batch():  # the batch's claims renewed and its entries read in one transaction
        for key, record in in_queue_order(prompt_record):
            _plan_one(plan, key, record, generated_image, telegram_post, book, held)
    return plan


def _plan_one(
    plan: DonePlan,
    key: str,
    record: PromptRecord,
    generated_image: ByPartition,
    telegram_post: ByPartition,
    book: Ledger,
    held: Callable[[str, PromptRecord], bool] | None,
) -> None:
    results, to_log, to_remove = plan.results, plan.to_log, plan.to_remove
    fingerprint = record.fingerprint
    if fingerprint and record.status != BUSY and held is not None and not held(key, record):
        results[key] = DoneOutcome(BUSY, "another run is working on this prompt")
        return
    entry = entry_for(key, record, generated_image[key], telegram_post[key])
    entries = book.entries_for(key)
    # What the ledger says now, not at intake: another worker may have finished this prompt since
    # (it took over when this run's lease ran out, then released it, and ``held`` took it back).
    # Only for a Done row this run would append (a prompt it holds and finished).
    now = next((e for e in entries if e.fingerprint == fingerprint), None) if entry is not None else None
    if now is not None and now.done_state == LOGGED:
        to_remove[key] = fingerprint
        results[key] = DoneOutcome("LOGGED", f"already in Done ({now.final_status}); only removed")
        return
    if now is not None and now.done_state == LOGGING:
        plan.read_back.add(key)
        plan.needs_done_check = True
    if record.status == LOGGED:
        to_remove[key] = fingerprint
        results[key] = DoneOutcome("LOGGED", record.reason)
    elif entry is None:
        reason = record.reason or generated_image[key].reason or telegram_post[key].reason
        results[key] = DoneOutcome(stays_as(record, generated_image[key], telegram_post[key]), reason)
    else:
        to_log.append((key, fingerprint, entry))
        to_remove[key] = fingerprint
    if any(
        e.post_state == POSTED and e.done_state != LOGGED and e.fingerprint != fingerprint for e in entries
    ):
        plan.needs_done_check = True


def log_and_remove(
    plan: DonePlan,
    prompt_record: ByPartition,
    prompt_sheet: PromptSheet,
    book: Ledger,
    owner: str | None = None,
) -> tuple[dict[str, str], int]:
    """Append the Done rows (and those of orphan posts), then remove the finished rows from the queue.
    Returns what became of each queue row, and how many orphan posts were logged. Raises the sheet's
    typed errors: the ledger already holds what a later run needs to read back."""
    to_log, to_remove, needs_done_check = plan.to_log, plan.to_remove, plan.needs_done_check
    done_index = read_done_index(prompt_sheet) if needs_done_check else {}
    orphans = [
        (key, e.fingerprint, row)
        for key, record in prompt_record.items()
        for e, row in (
            orphan_posts(book, key, record.fingerprint or None, done_index) if needs_done_check else []
        )
    ]
    logged_meanwhile = [
        (key, fp, row) for key, fp, row in to_log if key in plan.read_back and (key, row.prompt) in done_index
    ]
    if logged_meanwhile:
        # another run's append did land: recorded, never appended twice
        with book.batch():
            for key, fingerprint, row in logged_meanwhile:
                status = done_index[(key, row.prompt)]
                book.update(key, fingerprint, owner=owner, done_state=LOGGED, final_status=status)
                plan.results[key] = DoneOutcome("LOGGED", f"already in Done ({status}); only removed")
        to_log = plan.to_log = [item for item in to_log if item not in logged_meanwhile]
    rows = to_log + orphans
    # one read for the Done header and the queue the removal starts from
    before = prompt_sheet.read_before_logging() if rows and to_remove else None
    if rows:
        # fenced by this run's claim (ClaimLost otherwise); an orphan post is under no claim of ours
        fence = {(key, fp): owner for key, fp, _row in to_log}
        with book.batch():  # durable, all of it, before the append
            for key, fingerprint, _row in rows:
                book.update(key, fingerprint, owner=fence.get((key, fingerprint)), done_state=LOGGING)
        prompt_sheet.append_done([row for _, _, row in rows], header=before[1] if before else None)
        with book.batch():
            for key, fingerprint, row in rows:
                book.update(
                    key,
                    fingerprint,
                    owner=fence.get((key, fingerprint)),
                    done_state=LOGGED,
                    final_status=row.status,
                )
    if not to_remove:
        return {}, len(orphans)
    with queue_writes(book):
        # under the lock of a shared ledger the queue is read afresh: another worker's removal may have
        # moved every row since the read above
        snapshot = None if book.shared or before is None else before[0]
        removal = prompt_sheet.remove_rows(to_remove, snapshot=snapshot, journal=book)
    return removal, len(orphans)


def settle_done(
    plan: DonePlan, prompt_record: ByPartition, removal: dict[str, str], book: Ledger, owner: str
) -> ByPartition:
    """The ledger told what was removed, the batch's claims released; each prompt's Done outcome."""
    to_remove, results = plan.to_remove, plan.results
    with book.batch():
        for key, fingerprint in to_remove.items():
            if removal.get(key) == "removed":
                book.update(key, fingerprint, owner=owner, queue_state=REMOVED)
        for key, record in prompt_record.items():
            if record.fingerprint:
                book.release(key, record.fingerprint, owner)
    for key, _fingerprint, entry in plan.to_log:
        results[key] = DoneOutcome(entry.status, entry=entry, queue_row=removal.get(key, ""))
    for key in to_remove:
        results[key] = results[key].but(queue_row=removal.get(key, ""))
    return results


_STAYS_WORDS = {AWAITING_APPROVAL: AWAITING_APPROVAL, UNCERTAIN: CHECK_CHANNEL, RETRY: QUEUED, CAPPED: QUEUED}


def status_words(results: ByPartition, prompt_record: ByPartition) -> dict[str, str]:
    """The word in the status cell of each row that stays queued (a person's REPOST left where it is)."""
    return {
        key: _STAYS_WORDS[res.status]
        for key, res in results.items()
        if res.status in _STAYS_WORDS and not prompt_record[key].keep_word
    }
