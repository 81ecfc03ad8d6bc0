"""The ``done_entry`` asset: the Done rows of this run appended in one request, then the finished rows removed
from the queue without touching a stranger's row."""

# no `from __future__ import annotations` here: Dagster reads the `context` annotation as a real type

from typing import Any

import dagster as dg

from image_pipeline.defs.assets.common import GROUP, IO, _count, _ledger_context, _per_partition, _stop
from image_pipeline.defs.partitions import prompt_partitions
from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.errors import (
    ServiceBlocked,
    TransientError,
    WriteOutcomeUnknown,
)
from image_pipeline.domain.records import ByPartition, DoneOutcome
from image_pipeline.domain.statuses import (
    AWAITING_APPROVAL,
    CAPPED,
    CHECK_CHANNEL,
    FAILED,
    LOGGED,
    LOGGING,
    POSTED,
    QUEUED,
    REMOVED,
    RETRY,
    UNCERTAIN,
)
from image_pipeline.lifecycle.done import entry_for, orphan_posts, read_done_index, stays_as
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.posting import notify
from image_pipeline.lifecycle.progress import batch_logged
from image_pipeline.lifecycle.records import in_queue_order
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet


@dg.asset(
    partitions_def=prompt_partitions,
    group_name=GROUP,
    io_manager_key=IO,
    kinds={"googlesheets"},
    pool="sheets_api",
    code_version="2",
)
def done_entry(
    context: dg.AssetExecutionContext,
    prompt_record: ByPartition,
    generated_image: ByPartition,
    telegram_post: ByPartition,
    prompt_sheet: PromptSheet,
    publisher: Publisher,
    ledger: PostLedger,
) -> dg.Output[ByPartition]:
    """The audit row appended to "Done"; afterwards the prompt's row leaves "Process" (by id)."""
    book, owner, _ = _ledger_context(context, ledger)
    results = ByPartition()
    to_log: list[tuple[str, str, DoneEntry]] = []  # (id, fingerprint, row)
    to_remove: dict[str, str] = {}
    needs_done_check = False
    for key, record in in_queue_order(prompt_record):
        fingerprint = record.fingerprint
        entry = entry_for(key, record, generated_image[key], telegram_post[key])
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
            e.post_state == POSTED and e.done_state != LOGGED and e.fingerprint != fingerprint
            for e in book.entries_for(key)
        ):
            needs_done_check = True
    try:
        done_index = read_done_index(prompt_sheet) if needs_done_check else {}
        orphans = [
            (key, e.fingerprint, row)
            for key, record in prompt_record.items()
            for e, row in (
                orphan_posts(book, key, record.fingerprint or None, done_index) if needs_done_check else []
            )
        ]
        rows = to_log + orphans
        # one read for the Done header and the queue the removal starts from
        before = prompt_sheet.read_before_logging() if rows and to_remove else None
        if rows:
            with book.batch():  # durable, all of it, before the append
                for key, fingerprint, _row in rows:
                    book.update(key, fingerprint, done_state=LOGGING)
            prompt_sheet.append_done([row for _, _, row in rows], header=before[1] if before else None)
            with book.batch():
                for key, fingerprint, row in rows:
                    book.update(key, fingerprint, done_state=LOGGED, final_status=row.status)
        removal = (
            prompt_sheet.remove_rows(to_remove, snapshot=before[0] if before else None, journal=book)
            if to_remove
            else {}
        )
    except ServiceBlocked as exc:
        raise _stop(context, publisher, exc, book) from None
    except TransientError as exc:
        raise dg.Failure(description=f"the prompt sheet is unreachable: {exc}") from None
    except WriteOutcomeUnknown as exc:
        # the ledger says LOGGING / the removal intent is recorded: the next run reads back, never repeats
        raise dg.Failure(
            description=f"a sheet write's outcome is unknown; the next run reads it back: {exc}"
        ) from None
    with book.batch():
        for key, fingerprint in to_remove.items():
            if removal.get(key) == "removed":
                book.update(key, fingerprint, queue_state=REMOVED)
        for key, record in prompt_record.items():
            if record.fingerprint:
                book.release(key, record.fingerprint, owner)
    for key, _fingerprint, entry in to_log:
        results[key] = DoneOutcome(entry.status, entry=entry, queue_row=removal.get(key, ""))
        if entry.status == FAILED:
            notify(publisher, f"image-pipeline: prompt {key} FAILED: {entry.information}")
    for key in to_remove:
        if removal.get(key) not in (None, "removed"):
            context.log.warning(
                f"{key}: the row was {removal.get(key)} in the queue meanwhile; nothing was deleted"
            )
        results[key] = results[key].but(queue_row=removal.get(key, ""))
    # rows that stay queued show why in their status cell (only where the sheet has that column)
    words = {AWAITING_APPROVAL: AWAITING_APPROVAL, UNCERTAIN: CHECK_CHANNEL, RETRY: QUEUED, CAPPED: QUEUED}
    stay = {
        key: words[res.status]
        for key, res in results.items()
        if res.status in words and not prompt_record[key].keep_word
    }
    if stay:
        prompt_sheet.write_statuses(stay)
    statuses = _count(r.status for r in results.values())
    batch_logged(context.run.run_id, len(to_log), statuses, context.log.info)
    metadata = _per_partition(
        context, "done_entry", results, lambda _key, res: _done_partition_metadata(res), per_prompt=False
    )
    metadata["orphan_posts_logged"] = len(orphans)
    return dg.Output(results, metadata=metadata)


def _done_partition_metadata(res: DoneOutcome) -> dict[str, Any]:
    return {
        "status": res.status,
        "information": res.detail,
        "queue_row": res.queue_row,
        "message_id": res.entry.message_id if res.entry is not None else "",
    }
