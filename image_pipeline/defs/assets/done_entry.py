"""The ``done_entry`` asset: the Done rows of this run appended in one request, then the finished rows removed
from the queue without touching a stranger's row."""

# no `from __future__ import annotations` here: Dagster reads the `context` annotation as a real type

from typing import Any

import dagster as dg

from image_pipeline.defs.assets.common import GROUP, IO, _count, _ledger_context, _per_partition, _stop
from image_pipeline.defs.partitions import prompt_partitions
from image_pipeline.domain.errors import (
    ServiceBlocked,
    TransientError,
    WriteOutcomeUnknown,
)
from image_pipeline.domain.records import ByPartition, DoneOutcome, PromptRecord
from image_pipeline.domain.statuses import (
    FAILED,
)
from image_pipeline.lifecycle.claims import hold
from image_pipeline.lifecycle.done_log import log_and_remove, plan_done, settle_done, status_words
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.posting import notify
from image_pipeline.lifecycle.progress import batch_logged
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
    book, owner, is_stale = _ledger_context(context, ledger)

    def held(key: str, record: PromptRecord) -> bool:
        return hold(book, owner, is_stale, ledger, key, record)

    plan = plan_done(prompt_record, generated_image, telegram_post, book, held)
    try:
        removal, orphans = log_and_remove(plan, prompt_record, prompt_sheet, book, owner)
    except ServiceBlocked as exc:
        raise _stop(context, publisher, exc, book) from None
    except TransientError as exc:
        raise dg.Failure(description=f"the prompt sheet is unreachable: {exc}") from None
    except WriteOutcomeUnknown as exc:
        # the ledger says LOGGING / the removal intent is recorded: the next run reads back, never repeats
        raise dg.Failure(
            description=f"a sheet write's outcome is unknown; the next run reads it back: {exc}"
        ) from None
    results = settle_done(plan, prompt_record, removal, book, owner)
    for key, _fingerprint, entry in plan.to_log:
        if entry.status == FAILED:
            notify(publisher, f"image-pipeline: prompt {key} FAILED: {entry.information}")
    for key in plan.to_remove:
        if removal.get(key) not in (None, "removed"):
            context.log.warning(
                f"{key}: the row was {removal.get(key)} in the queue meanwhile; nothing was deleted"
            )
    # rows that stay queued show why in their status cell (only where the sheet has that column)
    stay = status_words(results, prompt_record)
    if stay:
        prompt_sheet.write_statuses(stay)
    statuses = _count(r.status for r in results.values())
    batch_logged(context.run.run_id, len(plan.to_log), statuses, context.log.info)
    metadata = _per_partition(
        context, "done_entry", results, lambda _key, res: _done_partition_metadata(res), per_prompt=False
    )
    metadata["orphan_posts_logged"] = orphans
    return dg.Output(results, metadata=metadata)


def _done_partition_metadata(res: DoneOutcome) -> dict[str, Any]:
    return {
        "status": res.status,
        "information": res.detail,
        "queue_row": res.queue_row,
        "message_id": res.entry.message_id if res.entry is not None else "",
    }
