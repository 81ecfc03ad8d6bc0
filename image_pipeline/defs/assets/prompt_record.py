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
    build_request,
    clean_text,
    validate_prompt,
    variations_of,
)
from image_pipeline.domain.statuses import (
    BUSY,
    GENERATING,
    GONE,
    HELD_STATUS,
    INVALID,
    LOGGED,
    POSTING,
    QUARANTINED,
    READY,
    UNCERTAIN,
)
from image_pipeline.lifecycle.approval import (
    HELD,
    POST,
    PREVIEW_ONLY,
    UNCERTAIN_HINT,
    delivery_uncertain,
    plan_for,
)
from image_pipeline.lifecycle.done import read_done_index
from image_pipeline.lifecycle.gate import RUN_SECOND_LOOK_S, gate
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
    records = ByPartition()
    newly_uncertain: list[str] = []
    with book.batch():  # one commit for the whole batch's claims
        for key in keys:
            row = rows.get(key)
            if row is None:
                records[key] = PromptRecord(key, GONE, "no row in the queue carries this id")
                context.log.warning(f"{key}: no row in the queue carries this id; nothing to do")
                continue
            fingerprint = row.fingerprint()
            found = PromptRecord(
                key,
                "",
                row_number=row.row_number,
                prompt=row.prompt,
                params=dict(row.params),
                fingerprint=fingerprint,
            )
            if not book.claim(
                key,
                fingerprint,
                owner=owner,
                prompt=clean_text(row.prompt),
                lease_s=ledger.lease_s,
                is_stale=is_stale,
            ):
                records[key] = found.but(status=BUSY, reason="another run is working on this prompt")
                context.log.warning(f"{key}: another run is working on this prompt; skipped")
                continue
            entry = book.get(key, fingerprint)
            assert entry is not None
            logged = done.get((key, clean_text(row.prompt)))
            if entry.done_state == LOGGED or logged:
                records[key] = found.but(
                    status=LOGGED, reason=f"already in Done ({logged or entry.final_status}); only removed"
                )
                if entry.done_state != LOGGED:
                    book.update(key, fingerprint, done_state=LOGGED, final_status=logged or "")
                continue
            check = validate_prompt(row.prompt)
            if not check.ok:
                records[key] = found.but(status=INVALID, reason=check.reason)
                continue
            try:
                req = build_request(
                    row,
                    default_model=image_generator.model,
                    default_width=image_generator.width,
                    default_height=image_generator.height,
                )
            except ValueError as exc:
                records[key] = found.but(status=INVALID, reason=str(exc))
                continue
            mode, why = plan_for(row, entry)
            ready = found.but(
                status=READY, request=req, attempts=entry.attempts, mode=mode, count=variations_of(row)
            )
            records[key] = ready
            uncertain = delivery_uncertain(entry)
            if mode == HELD and (entry.post_state is None or uncertain):
                records[key] = ready.but(status=HELD_STATUS, reason=why, uncertain=uncertain)
                if entry.post_state == POSTING:
                    # a process died during the send: from now on a person decides, told once
                    book.update(key, fingerprint, post_state=UNCERTAIN)
                    newly_uncertain.append(key)
                continue
            if uncertain:  # REPOST: a person checked the channel and found the post missing
                records[key] = ready = ready.but(repost=True)
            if why:
                context.log.info(f"{key}: {why}")
            if entry.attempts >= ledger.max_attempts and entry.post_state is None:
                records[key] = ready.but(
                    status=QUARANTINED,
                    reason=f"quarantined after {entry.attempts} failed attempts; last error: {entry.last_error}",
                )
    for key in newly_uncertain:
        notify(publisher, f"image-pipeline: prompt {key} CHECK CHANNEL: {UNCERTAIN_HINT}")
    working = {
        k: GENERATING for k, r in records.items() if r.status == READY and r.mode in (POST, PREVIEW_ONLY)
    }
    # what a person sees in the status column while the batch runs (only where the sheet has one)
    shown = prompt_sheet.write_statuses(working, snapshot) if working else {}
    for key, record in list(records.items()):
        if not record.repost:
            continue
        if shown.get(key) == GENERATING:
            # the REPOST is used up: the cell no longer says it, so a second uncertain send is held again
            book.update(key, record.fingerprint, post_state=None)
        else:
            # a REPOST left in the cell could send blind once more after another uncertain send
            records[key] = record.but(
                status=HELD_STATUS,
                uncertain=True,
                reason="REPOST seen, but the status cell could not be changed yet; sent at the next run",
                keep_word=True,  # done_entry leaves the person's REPOST in the cell
            )
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
