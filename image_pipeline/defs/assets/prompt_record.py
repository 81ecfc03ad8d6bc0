"""The ``prompt_record`` asset: each partition's queue row, claimed for this run, or why it is not processed
now (gone, busy in another run, held, awaiting approval, over a cap). Every run passes the service gate here
first, so a run launched from the UI is checked like a scheduled one."""

# no `from __future__ import annotations` here: Dagster reads the `context` annotation as a real type

from typing import Any

import dagster as dg

from image_pipeline.defs.assets.common import GROUP, IO, _ledger_context, _per_partition, _stop
from image_pipeline.defs.partitions import prompt_partitions
from image_pipeline.domain.errors import (
    ServiceBlocked,
    TransientError,
)
from image_pipeline.domain.records import ByPartition, PromptRecord
from image_pipeline.domain.rows import (
    clean_text,
)
from image_pipeline.lifecycle.approval import (
    UNCERTAIN_HINT,
)
from image_pipeline.lifecycle.done import read_done_index
from image_pipeline.lifecycle.gate import RUN_SECOND_LOOK_S, gate
from image_pipeline.lifecycle.intake import claim_rows, generating_words, settle_reposts
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.posting import notify
from image_pipeline.services.images.interface import ImageGenerator
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
def prompt_record(
    context: dg.AssetExecutionContext,
    prompt_sheet: PromptSheet,
    image_generator: ImageGenerator,
    publisher: Publisher,
    ledger: PostLedger,
) -> dg.Output[ByPartition]:
    """The queued prompt as the sheet holds it now, validated and claimed for this run."""
    keys = context.partition_keys
    context.log.info(f"prompt sheet backend: {prompt_sheet.describe()}")
    book, owner, is_stale = _ledger_context(context, ledger)
    pause = book.pause_state()
    if pause is not None:
        # nothing is claimed or spent: the queue stays as it is until an operator resumes
        raise dg.Failure(description=pause.message())
    # Every run passes the schedule's and sensor's preflight, launched from the UI or `make run` too, so a
    # misconfiguration stops before the first queue write or paid request (a recent pass is trusted).
    refused = gate([prompt_sheet, image_generator, publisher], store=book, second_look_s=RUN_SECOND_LOOK_S)
    if refused:
        context.log.error(refused)
        raise dg.Failure(description=refused)
    try:
        # rows an interrupted run deleted by mistake are back before this run reads the queue
        prompt_sheet.recover_removals(book)
        snapshot, done_rows = prompt_sheet.read_queue_and_done()
        current = snapshot.by_id()
        rows = {key: current[key] for key in keys if key in current}
        # Reconcile with the sheets on every start: a prompt already in Done is only removed.
        done = read_done_index(prompt_sheet, done_rows)
    except ServiceBlocked as exc:
        raise _stop(context, publisher, exc, book) from None
    except TransientError as exc:
        raise dg.Failure(description=f"the prompt sheet is unreachable: {exc}") from None
    records, newly_uncertain = claim_rows(
        keys, rows, done, book, owner, is_stale, ledger, image_generator, context.log
    )
    for key in newly_uncertain:
        notify(publisher, f"image-pipeline: prompt {key} CHECK CHANNEL: {UNCERTAIN_HINT}")
    # what a person sees in the status column while the batch runs (only where the sheet has one)
    working = generating_words(records)
    shown = prompt_sheet.write_statuses(working, snapshot) if working else {}
    settle_reposts(records, shown, book)
    # the batch's counts only: per prompt, the image and the post carry the details
    metadata = _per_partition(context, "prompt_record", records, _record_metadata, per_prompt=False)
    return dg.Output(records, metadata=metadata)


def _record_metadata(_key: str, rec: PromptRecord) -> dict[str, Any]:
    return {
        "status": rec.status,
        "prompt": dg.MetadataValue.text(clean_text(rec.prompt)[:500]),
        "reason": rec.reason,
        "row_number": rec.row_number,
    }
