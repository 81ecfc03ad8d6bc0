"""The asset graph: prompt record -> generated image -> Telegram post -> Done entry.

Every asset is partitioned by prompt id and handles all partitions of its run at once, so a run may
carry one prompt (from the UI or the schedule) or a batch. A prompt that fails gets a FAILED outcome
that flows downstream to its Done row; a service that refuses us (token, permission, credits) stops the
run instead, leaving the queue untouched.
"""

import base64
import contextlib
import hashlib
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from .approval import (
    APPROVAL_HINT,
    APPROVED,
    HELD,
    POST,
    PREVIEW_ONLY,
    UNCERTAIN_HINT,
    approved_outcome,
    delivery_uncertain,
    keep_preview,
    outcome_pngs,
    plan_for,
    variation_seeds,
)
from .content_checks import CHECK_NAMES, CheckOutcome, check_image, first_failure, run_all
from .errors import (
    CreditsDepleted,
    PipelineError,
    PromptRejected,
    ServiceBlocked,
    ServiceWait,
    TransientError,
    WriteOutcomeUnknown,
)
from .io_managers import ByPartition, ImageOutcome, PartitionFileIOManager, PartitionFileStore
from .ledger import (
    LOGGED,
    LOGGING,
    POSTED,
    POSTING,
    PREVIEWED,
    REMOVED,
    UNCERTAIN,
    Entry,
    Ledger,
    PostLedger,
    owner_token,
    stale_owner_check,
)
from .models import (
    AWAITING_APPROVAL,
    CHECK_CHANNEL,
    FAILED,
    GENERATING,
    INVALID,
    QUEUED,
    SUCCESS,
    DoneEntry,
    GenerationRequest,
    PromptRow,
    build_request,
    caption_for,
    clean_text,
    validate_prompt,
    variations_of,
)
from .next_prompt import Suspects
from .partitions import prompt_partitions
from .preflight import RUN_SECOND_LOOK_S, gate
from .progress import RunProgress, batch_logged
from .redact import redact
from .refusals import signature
from .resources.images import PREVIEW_LABEL, ImageGenerator
from .resources.publisher import DeliveryUncertain, Publisher, receipt_dict
from .resources.sheets import PromptSheet

GROUP = "image_pipeline"
IO = "pipeline_io_manager"
GENERATED_IMAGE = "generated_image"
TELEGRAM_POST = "telegram_post"

# prompt_record statuses
READY = "READY"
GONE = "GONE"  # no row carries the id any more: deleted by a person, or already processed and removed
BUSY = "BUSY"  # another live run holds the claim
HELD_STATUS = "HELD"  # a person holds it (HOLD) or it waits for APPROVE: stays queued, nothing done
QUARANTINED = "QUARANTINED"  # failed transiently in too many runs: gets a FAILED Done row
# outcome of a transient failure that did not use up the attempts: the prompt stays queued
RETRY = "RETRY"
# today's cap of images or posts is used up: the prompt stays queued for another day, no attempt counted
CAPPED = "CAPPED"


def _stop(
    context: dg.AssetExecutionContext, publisher: Publisher, exc: ServiceBlocked, book: Ledger | None = None
) -> dg.Failure:
    """A service refuses us: tell the operator once, stop the run, leave the queue as it is.

    Credits depleted (or a provider's quota used up) also pauses spending until an operator resumes:
    the schedule and sensor skip their ticks meanwhile, and only the run that paused it sends a notice."""
    message = redact(str(exc))
    context.log.error(message)
    if isinstance(exc, ServiceWait) and book is not None:
        # no attempt is counted: the prompts are fine, the service asked for time
        if book.pause(exc.service, message, until=exc.until):
            pause = book.pause_state()
            _notify(publisher, f"image-pipeline is waiting: {pause.message() if pause else message}")
        return dg.Failure(
            description=message,
            metadata={"service": exc.service, "status": str(exc.status or ""), "resume_at": exc.until},
        )
    if isinstance(exc, CreditsDepleted) and book is not None:
        if book.pause(exc.service, message):
            _notify(
                publisher,
                f"image-pipeline paused spending: {message} Resume with `image-pipeline resume` "
                "or the resume_spending_job in the Dagster UI.",
            )
        else:
            context.log.warning("spending was paused already; no second notice")
        return dg.Failure(
            description=message, metadata={"service": exc.service, "status": str(exc.status or "")}
        )
    _notify(publisher, f"image-pipeline stopped: {message}")
    return dg.Failure(description=message, metadata={"service": exc.service, "status": str(exc.status or "")})


def _single(context: dg.AssetExecutionContext) -> str | None:
    keys = context.partition_keys
    return keys[0] if len(keys) == 1 else None


def _in_queue_order(records: ByPartition) -> list[tuple[str, dict[str, Any]]]:
    """Oldest first, as the queue lists them: a batch posts in the order a person queued."""
    return sorted(records.items(), key=lambda kv: (int(kv[1].get("row_number") or 0), kv[0]))


def _row_from_record(record: dict[str, Any]) -> PromptRow:
    return PromptRow(
        int(record.get("row_number") or 0), record["prompt"], record["id"], dict(record.get("params", {}))
    )


def _thumbnail_markdown(png: bytes, alt: str) -> str:
    # A ~256 px JPEG as a data URI stays small in the event log and renders inline in the UI.
    with Image.open(io.BytesIO(png)) as im:
        thumb = im.convert("RGB")
        thumb.thumbnail((256, 256))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=70)
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    safe_alt = "".join(ch for ch in alt[:40] if ch.isalnum() or ch == " ") or "image"
    return f"![{safe_alt}](data:image/jpeg;base64,{b64})"


def _ledger_context(context: dg.AssetExecutionContext, ledger: PostLedger) -> tuple[Ledger, str, Any]:
    return ledger.open(), owner_token(context.run.run_id), stale_owner_check(context.instance)


def _hold(
    book: Ledger, owner: str, is_stale: Any, ledger: PostLedger, key: str, record: dict[str, Any]
) -> bool:
    """Renew this run's claim before an irreversible step; False when another live run took the prompt."""
    return book.claim(
        key,
        record["fingerprint"],
        owner=owner,
        prompt=clean_text(record["prompt"]),
        lease_s=ledger.lease_s,
        is_stale=is_stale,
    )


def _done_index(
    prompt_sheet: PromptSheet, rows: list[dict[str, str]] | None = None
) -> dict[tuple[str, str], str]:
    """(id, prompt) -> status of the rows already in Done: the durable record when the ledger is new."""
    index: dict[tuple[str, str], str] = {}
    for row in prompt_sheet.read_done() if rows is None else rows:
        pid = row.get("id", "").strip()
        if pid:
            index[(pid, row.get("prompt", ""))] = row.get("status", "")
    return index


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
        done = _done_index(prompt_sheet, done_rows)
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
                records[key] = {"id": key, "status": GONE, "reason": "no row in the queue carries this id"}
                context.log.warning(f"{key}: no row in the queue carries this id; nothing to do")
                continue
            fingerprint = row.fingerprint()
            record: dict[str, Any] = {
                "id": key,
                "row_number": row.row_number,
                "prompt": row.prompt,
                "params": row.params,
                "fingerprint": fingerprint,
            }
            records[key] = record
            if not book.claim(
                key,
                fingerprint,
                owner=owner,
                prompt=clean_text(row.prompt),
                lease_s=ledger.lease_s,
                is_stale=is_stale,
            ):
                record.update(status=BUSY, reason="another run is working on this prompt")
                context.log.warning(f"{key}: another run is working on this prompt; skipped")
                continue
            entry = book.get(key, fingerprint)
            assert entry is not None
            logged = done.get((key, clean_text(row.prompt)))
            if entry.done_state == LOGGED or logged:
                record.update(
                    status=LOGGED, reason=f"already in Done ({logged or entry.final_status}); only removed"
                )
                if entry.done_state != LOGGED:
                    book.update(key, fingerprint, done_state=LOGGED, final_status=logged or "")
                continue
            check = validate_prompt(row.prompt)
            if not check.ok:
                record.update(status=INVALID, reason=check.reason)
                continue
            try:
                req = build_request(
                    row,
                    default_model=image_generator.model,
                    default_width=image_generator.width,
                    default_height=image_generator.height,
                )
            except ValueError as exc:
                record.update(status=INVALID, reason=str(exc))
                continue
            record.update(status=READY, reason="", request=req.__dict__, attempts=entry.attempts)
            mode, why = plan_for(row, entry)
            record.update(mode=mode, count=variations_of(row))
            uncertain = delivery_uncertain(entry)
            if mode == HELD and (entry.post_state is None or uncertain):
                record.update(status=HELD_STATUS, reason=why, uncertain=uncertain)
                if entry.post_state == POSTING:
                    # a process died during the send: from now on a person decides, told once
                    book.update(key, fingerprint, post_state=UNCERTAIN)
                    newly_uncertain.append(key)
                continue
            if uncertain:  # REPOST: a person checked the channel and found the post missing
                record["repost"] = True
            if why:
                context.log.info(f"{key}: {why}")
            if entry.attempts >= ledger.max_attempts and entry.post_state is None:
                record.update(
                    status=QUARANTINED,
                    reason=f"quarantined after {entry.attempts} failed attempts; last error: {entry.last_error}",
                )
    for key in newly_uncertain:
        _notify(publisher, f"image-pipeline: prompt {key} CHECK CHANNEL: {UNCERTAIN_HINT}")
    working = {
        k: GENERATING
        for k, r in records.items()
        if r["status"] == READY and r.get("mode") in (POST, PREVIEW_ONLY)
    }
    # what a person sees in the status column while the batch runs (only where the sheet has one)
    shown = prompt_sheet.write_statuses(working, snapshot) if working else {}
    for key, record in records.items():
        if not record.get("repost"):
            continue
        if shown.get(key) == GENERATING:
            # the REPOST is used up: the cell no longer says it, so a second uncertain send is held again
            book.update(key, record["fingerprint"], post_state=None)
        else:
            # a REPOST left in the cell could send blind once more after another uncertain send
            record.update(
                status=HELD_STATUS,
                uncertain=True,
                reason="REPOST seen, but the status cell could not be changed yet; sent at the next run",
                keep_word=True,  # done_entry leaves the person's REPOST in the cell
            )
    # the batch's counts only: per prompt, the image and the post carry the details
    metadata = _per_partition(context, "prompt_record", records, _record_metadata, per_prompt=False)
    return dg.Output(records, metadata=metadata)


def _record_metadata(_key: str, rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": rec["status"],
        "prompt": dg.MetadataValue.text(clean_text(rec.get("prompt", ""))[:500]),
        "reason": rec.get("reason", ""),
        "row_number": int(rec.get("row_number") or 0),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _transient_outcome(
    book: Ledger, ledger: PostLedger, key: str, fingerprint: str, what: str, exc: Exception
) -> tuple[str, str]:
    """A fault that outlasted the retries: try again in a later run, until the prompt is quarantined."""
    attempts = book.add_attempt(key, fingerprint, f"{what}: {exc}")
    if attempts >= ledger.max_attempts:
        return FAILED, f"{what} failed {attempts} times (quarantined): {exc}"
    return RETRY, f"{what} failed (attempt {attempts} of {ledger.max_attempts}, will retry): {exc}"


def _plan_generation(
    prompt_record: ByPartition, book: Ledger, owner: str, is_stale: Any, ledger: PostLedger
) -> tuple[ByPartition, list[tuple[str, str, GenerationRequest, int]]]:
    """Which prompts of the batch need images (and how many); the others get their outcome at once."""
    outcomes = ByPartition()
    todo: list[tuple[str, str, GenerationRequest, int]] = []
    with book.batch():
        todo_keys = _plan_into(prompt_record, book, owner, is_stale, ledger, outcomes)
    for key in todo_keys:
        record = prompt_record[key]
        todo.append(
            (key, record["fingerprint"], GenerationRequest(**record["request"]), record.get("count", 1))
        )
    return outcomes, todo


def _plan_into(
    prompt_record: ByPartition,
    book: Ledger,
    owner: str,
    is_stale: Any,
    ledger: PostLedger,
    outcomes: ByPartition,
) -> list[str]:
    todo: list[str] = []
    for key, record in _in_queue_order(prompt_record):
        if record["status"] != READY:
            status = BUSY if record["status"] == BUSY else "SKIPPED"
            outcomes[key] = ImageOutcome(status, {"reason": record.get("reason", record["status"])})
            continue
        fingerprint = record["fingerprint"]
        entry = book.get(key, fingerprint)
        if entry is not None and entry.post_state is not None:
            # Posted (or maybe posted) in an earlier run: generating again would only spend credits.
            outcomes[key] = ImageOutcome("SKIPPED", {"reason": f"post already {entry.post_state.lower()}"})
            continue
        if not _hold(book, owner, is_stale, ledger, key, record):
            outcomes[key] = ImageOutcome("BUSY", {"reason": "another run took over this prompt"})
            continue
        if record.get("mode") == APPROVED and entry is not None:
            # exactly what the person approved: the previewed files, not a new generation
            outcomes[key] = approved_outcome(entry)
            continue
        todo.append(key)
    return todo


CHECK_DESCRIPTIONS = (
    "The image decodes (a truncated or non-image body never reaches the channel).",
    "The image is not blank or a single colour (what providers send when their safety filter fires).",
    "The image is within Telegram's photo limits after the publisher's recompression (or goes as a document).",
    "The caption is within Telegram's 1024 characters.",
    "The prompt holds none of the banned words (IMAGE_PIPELINE_BANNED_WORDS / _FILE).",
)


def _generate_to_disk(
    image_generator: ImageGenerator,
    store: PartitionFileStore,
    book: Ledger,
    ledger: PostLedger,
    key: str,
    fingerprint: str,
    request: GenerationRequest,
    count: int = 1,
) -> tuple[ImageOutcome, str]:
    """The prompt's image (or ``count`` variations with different seeds), each written to its PNG file as
    soon as it exists: memory holds only the images in flight. All or nothing: a variation that fails
    fails the prompt's images, as one post shows them all."""
    made: list[ImageOutcome] = []
    for i, seed in enumerate(variation_seeds(request.seed, count)):
        outcome, note = _generate_one(
            image_generator,
            store,
            book,
            ledger,
            key if i == 0 else f"{key}-v{i + 1}",
            key,
            fingerprint,
            replace(request, seed=seed),
        )
        if not outcome.ok:
            return outcome, note
        made.append(outcome)
    if count == 1:
        return made[0], note
    first = made[0]
    meta = {**first.meta, "variations": [{**m.meta, "path": m.path} for m in made]}
    note = f"{count} variations, {first.meta['width']}x{first.meta['height']} from {first.meta['model']}"
    return ImageOutcome("OK", meta, path=first.path, thumbnail=first.thumbnail), note


def _generate_one(
    image_generator: ImageGenerator,
    store: PartitionFileStore,
    book: Ledger,
    ledger: PostLedger,
    file_key: str,
    key: str,
    fingerprint: str,
    request: GenerationRequest,
) -> tuple[ImageOutcome, str]:
    try:
        image = image_generator.generate(request)
    except PromptRejected as exc:
        meta = {"reason": f"generation failed: {exc}"}
        if exc.unknown:
            meta["unknown_answer"] = signature(exc)
        return ImageOutcome(FAILED, meta), f"generation failed: {exc}"
    except TransientError as exc:
        status, reason = _transient_outcome(book, ledger, key, fingerprint, "generation", exc)
        return ImageOutcome(status, {"reason": reason}), reason
    meta = {
        "width": image.width,
        "height": image.height,
        "model": image.model,
        "provider": image.provider,
        "seed": image.seed,
        "negative_prompt": request.negative_prompt or "",
        "generation_s": image.seconds,
        "preview": image.preview,
        "sha256": hashlib.sha256(image.png).hexdigest(),
        "bytes": len(image.png),
    }
    path = store.write_png(GENERATED_IMAGE, file_key, image.png)
    # the image half of the pre-post checks, here in the generation thread while others are in flight
    meta["checks"] = [_check_dict(c) for c in check_image(image.png, key)]
    thumbnail = _thumbnail_markdown(image.png, key)
    note = f"{image.width}x{image.height} from {image.model} in {image.seconds:.2f}s"
    return ImageOutcome("OK", meta, path=str(path), thumbnail=thumbnail), note


@dg.multi_asset(
    name="generate_and_post",
    outs={
        GENERATED_IMAGE: dg.AssetOut(
            io_manager_key=IO,
            kinds={"huggingface"},
            group_name=GROUP,
            code_version="3",
            description="The image generated for the prompt, stored as a PNG file, with a preview in the UI.",
        ),
        TELEGRAM_POST: dg.AssetOut(
            io_manager_key=IO,
            kinds={"telegram"},
            group_name=GROUP,
            code_version="3",
            description="The post of the image to the channel, with the chat id and message id Telegram gave it.",
        ),
    },
    internal_asset_deps={
        GENERATED_IMAGE: {dg.AssetKey("prompt_record")},
        TELEGRAM_POST: {dg.AssetKey("prompt_record"), dg.AssetKey(GENERATED_IMAGE)},
    },
    partitions_def=prompt_partitions,
    pool="hf_api",
    check_specs=[
        dg.AssetCheckSpec(name, asset=GENERATED_IMAGE, blocking=True, description=description)
        for name, description in zip(CHECK_NAMES, CHECK_DESCRIPTIONS, strict=True)
    ],
)
def generate_and_post(
    context: dg.AssetExecutionContext,
    prompt_record: ByPartition,
    image_generator: ImageGenerator,
    publisher: Publisher,
    ledger: PostLedger,
    pipeline_io_manager: dg.ResourceParam[PartitionFileIOManager],
) -> Iterator[dg.Output[ByPartition]]:
    """Generate the batch's images and post each one as soon as it and the ones before it are ready.

    One step, so that generation (the provider's latency, ``concurrency`` requests at a time) and posting
    (Telegram's pace) overlap instead of waiting for each other; posts still leave in queue order. Images
    go to disk as they are made. A service refusing us stops the step: posts already made are in the
    ledger, and the next run logs them without posting again.
    """
    context.log.info(f"image generator backend: {image_generator.describe()}")
    context.log.info(f"publisher backend: {publisher.describe()}")
    book, owner, is_stale = _ledger_context(context, ledger)
    store = pipeline_io_manager.store(context.run.run_id)
    previews = store.base / "previews"  # what APPROVE posts: kept apart from files a later run rewrites
    outcomes, todo = _plan_generation(prompt_record, book, owner, is_stale, ledger)
    posts = ByPartition()
    batch = _single(context) is None
    progress = RunProgress(context.run.run_id, len(prompt_record), context.log.info)
    progress.start()
    # More threads than request slots: an image is decoded, encoded and written while the next
    # requests are already in flight (the generator holds a slot only for the request itself).
    refused: list[ServiceBlocked] = []  # a service refusing us, seen by any generation thread
    awaiting_post: set[str] = set()  # generation started, post not done yet (the daily post cap)

    def capped(key: str, count: int) -> tuple[ImageOutcome, str] | None:
        """The daily caps, decided in queue order before the requests start (so they start in queue
        order too). Units of the image cap are reserved here and given back if nothing is made."""
        if ledger.daily_post_cap > 0:
            # images of this batch not posted yet count: generation runs ahead of posting
            if book.used_today("posts") + len(awaiting_post) >= ledger.daily_post_cap:
                reason = (
                    f"the daily cap of {ledger.daily_post_cap} posts is reached; not generated, stays queued"
                )
                return ImageOutcome(CAPPED, {"reason": reason}), reason
            awaiting_post.add(key)
        if ledger.daily_image_cap > 0:
            taken = 0
            while taken < count and book.reserve("images", ledger.daily_image_cap):
                taken += 1
            if taken < count:
                for _ in range(taken):
                    book.unreserve("images")
                awaiting_post.discard(key)
                reason = f"the daily cap of {ledger.daily_image_cap} images is reached; stays queued"
                return ImageOutcome(CAPPED, {"reason": reason}), reason
        return None

    def generate(key: str, fp: str, req: GenerationRequest, count: int) -> tuple[ImageOutcome, str]:
        if refused:
            raise refused[0]
        try:
            outcome, note = _generate_to_disk(image_generator, store, book, ledger, key, fp, req, count)
        except ServiceBlocked as exc:
            refused.append(exc)
            give_back(count)
            raise
        except BaseException:
            give_back(count)
            raise
        if not outcome.ok:
            give_back(count)  # only images that exist count against the cap
        return outcome, note

    def give_back(count: int) -> None:
        if ledger.daily_image_cap > 0:
            for _ in range(count):
                book.unreserve("images")

    suspects = Suspects()  # prompts refused with an answer no rule explains (next_prompt.py)

    def finished(key: str, record: dict[str, Any]) -> None:
        progress.finished(key, *_progress_status(record, posts[key]))
        if batch:
            # attached as each prompt finishes, while the next images are still being made
            context.add_asset_metadata(
                _image_partition_metadata(key, outcomes[key]), asset_key=GENERATED_IMAGE, partition_key=key
            )
            context.add_asset_metadata(
                _post_partition_metadata(posts[key]), asset_key=TELEGRAM_POST, partition_key=key
            )

    with ThreadPoolExecutor(max_workers=max(1, image_generator.concurrency) + 2) as pool:
        futures = {}
        counts = {key: n for key, _fp, _req, n in todo}
        for key, fp, req, n in todo:
            over = capped(key, n)
            if over is not None:
                outcomes[key] = over[0]
                context.log.warning(f"{key}: {over[1]}")
            else:
                futures[key] = pool.submit(generate, key, fp, req, n)
        try:
            for key, record in _in_queue_order(prompt_record):
                if refused:
                    # credits, token or permission: nothing more leaves, whichever prompt heard it first
                    raise refused[0]
                if key in futures:
                    outcome, note = futures[key].result()
                    (context.log.info if outcome.ok else context.log.warning)(f"{key}: {note}")
                    outcomes[key] = outcome
                    _witness(suspects, key, "images", outcome.ok, outcome.meta)
                if refused:
                    raise refused[0]
                posts[key] = _post_one(
                    context, book, owner, is_stale, ledger, publisher, key, record, outcomes[key], previews
                )
                awaiting_post.discard(key)
                _witness(suspects, key, "telegram", posts[key]["status"] == "POSTED", posts[key])
                if key not in suspects.pending:  # a suspect's outcome is known once the batch is through
                    finished(key, record)
            for key, fails in suspects.verdicts().items():
                if not fails:
                    fp = prompt_record[key]["fingerprint"]
                    why = outcomes[key].meta.get("reason") or posts[key].get("reason", "")
                    status, reason = _transient_outcome(
                        book,
                        ledger,
                        key,
                        fp,
                        "an answer no rule explains, and no other prompt to compare",
                        why,
                    )
                    posts[key] = {"status": status, "reason": reason}
                    if not outcomes[key].ok:
                        outcomes[key] = ImageOutcome(status, {"reason": reason})
                finished(key, prompt_record[key])
        except ServiceBlocked as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            for key, future in futures.items():
                if future.cancelled():  # never started: its reserved share of the image cap goes back
                    give_back(counts[key])
            raise _stop(context, publisher, exc, book) from None
    yield dg.Output(
        outcomes,
        output_name=GENERATED_IMAGE,
        metadata=_per_partition(context, GENERATED_IMAGE, outcomes, _image_partition_metadata, added=batch),
    )
    yield dg.Output(
        posts,
        output_name=TELEGRAM_POST,
        metadata=_per_partition(
            context, TELEGRAM_POST, posts, lambda _key, post: _post_partition_metadata(post), added=batch
        ),
    )
    yield from _check_results(posts)


def _witness(suspects: Suspects, key: str, service: str, accepted: bool, result: dict[str, Any]) -> None:
    """What this prompt's answer tells about the service (``next_prompt.py``)."""
    if accepted:
        suspects.accepted(service)
    elif result.get("unknown_answer"):
        suspects.refused(key, service, result["unknown_answer"], str(result.get("reason", "")))


def _check_results(posts: ByPartition) -> Iterator[dg.AssetCheckResult]:
    """One result per pre-post check for the run's prompts. Each prompt that failed one was not posted
    (the step blocks it) and gets a FAILED Done row naming the check; the result is a warning, so the
    batch's other prompts and its Done log go on."""
    for name in CHECK_NAMES:
        checked = 0
        blocked: list[dict[str, str]] = []
        for key, post in posts.items():
            for outcome in post.get("checks", []):
                if outcome["name"] != name:
                    continue
                checked += 1
                if not outcome["passed"]:
                    blocked.append({"prompt_id": key, "detail": outcome["detail"]})
        yield dg.AssetCheckResult(
            asset_key=GENERATED_IMAGE,
            check_name=name,
            passed=not blocked,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "prompts_checked": checked,
                "prompts_blocked": len(blocked),
                "blocked": dg.MetadataValue.json(blocked[:50]),
            },
        )


def _post_one(
    context: dg.AssetExecutionContext,
    book: Ledger,
    owner: str,
    is_stale: Any,
    ledger: PostLedger,
    publisher: Publisher,
    key: str,
    record: dict[str, Any],
    image: ImageOutcome,
    previews: Path,
) -> dict[str, Any]:
    """Post one prompt's image(s) unless the ledger says it was (or may have been) posted already; for a
    PREVIEW row, send them to the alert chat only and wait for APPROVE."""
    if record["status"] != READY:
        status = BUSY if record["status"] == BUSY else "SKIPPED"
        return {"status": status, "reason": record.get("reason", record["status"])}
    fingerprint = record["fingerprint"]
    entry = book.get(key, fingerprint)
    if entry is not None and entry.post_state == POSTED:
        context.log.warning(f"{key}: already posted as message {entry.message_id}; not posting again")
        return _post_from_ledger(entry)
    if delivery_uncertain(entry):  # planned as HELD by prompt_record; never sent again blind
        return {"status": UNCERTAIN, "reason": f"delivery uncertain: {UNCERTAIN_HINT}"}
    if not image.ok:
        return {"status": image.status, "reason": image.meta.get("reason", image.status)}
    if not _hold(book, owner, is_stale, ledger, key, record):
        return {"status": "BUSY", "reason": "another run took over this prompt"}
    suffix = PREVIEW_LABEL if image.meta.get("preview") else ""
    preview_only = record.get("mode") == PREVIEW_ONLY
    if preview_only:
        suffix = f"{suffix}\n\nPREVIEW of {key}: {APPROVAL_HINT}".strip()
    caption = caption_for(_row_from_record(record), suffix=suffix)
    pngs = outcome_pngs(image)
    checks = run_all(_image_checks(image, pngs, key), caption, record["prompt"], publisher.content_policy())
    checked = [_check_dict(c) for c in checks]
    blocked = first_failure(checks)
    if blocked is not None:
        reason = f"blocked by the pre-post check {blocked.name}: {blocked.detail}"
        context.log.warning(f"{key}: {reason}")
        return {"status": FAILED, "reason": reason, "check": blocked.name, "checks": checked}
    if preview_only:
        return _send_preview(
            context, book, ledger, publisher, key, fingerprint, image, pngs, caption, previews, checked
        )
    if not book.reserve("posts", ledger.daily_post_cap):
        reason = f"the daily cap of {ledger.daily_post_cap} posts is reached; stays queued"
        context.log.warning(f"{key}: {reason}")
        return {"status": CAPPED, "reason": reason, "checks": checked}
    # The intent is durable before the photo leaves: a crash from here on is never followed by a blind repost.
    book.update(key, fingerprint, post_state=POSTING, image_meta=json.dumps(image.meta))
    try:
        if len(pngs) == 1:
            receipt = publisher.publish(prompt_id=key, png=pngs[0], caption=caption)
        else:
            receipt = publisher.publish_album(prompt_id=key, pngs=pngs, caption=caption)
    except DeliveryUncertain as exc:
        # no attempt counted and no Done row: the row stays queued, held, until a person looks
        book.update(key, fingerprint, post_state=UNCERTAIN, last_error=str(exc)[:500])
        context.log.warning(f"{key}: {exc}")
        _notify(
            publisher, f"image-pipeline: prompt {key} CHECK CHANNEL: {redact(str(exc))}; {UNCERTAIN_HINT}"
        )
        return {"status": UNCERTAIN, "reason": f"delivery uncertain: {exc}; {UNCERTAIN_HINT}"}
    except ServiceBlocked:
        book.update(key, fingerprint, post_state=None)
        book.unreserve("posts")
        raise
    except PromptRejected as exc:
        book.update(key, fingerprint, post_state=None)
        book.unreserve("posts")
        context.log.warning(f"{key}: posting failed: {exc}")
        failed = {"status": FAILED, "reason": f"posting failed: {exc}"}
        if exc.unknown:
            failed["unknown_answer"] = signature(exc)
        return failed
    except TransientError as exc:
        book.update(key, fingerprint, post_state=None)
        book.unreserve("posts")
        status, reason = _transient_outcome(book, ledger, key, fingerprint, "posting", exc)
        context.log.warning(f"{key}: {reason}")
        return {"status": status, "reason": reason}
    # The one write that closes the duplicate window: Telegram's message id, recorded at once.
    book.update(
        key,
        fingerprint,
        post_state=POSTED,
        posted_at=time.time(),
        chat_id=receipt.chat_id,
        message_id=receipt.message_id,
        link=receipt.link,
        method=receipt.method,
    )
    context.log.info(f"{key}: posted as message {receipt.message_id} in chat {receipt.chat_id}")
    return {
        "status": "POSTED",
        "image_sha256": image.meta.get("sha256", ""),
        "caption": caption,
        "image_meta": image.meta,
        "checks": checked,
        **receipt_dict(receipt),
    }


def _send_preview(
    context: dg.AssetExecutionContext,
    book: Ledger,
    ledger: PostLedger,
    publisher: Publisher,
    key: str,
    fingerprint: str,
    image: ImageOutcome,
    pngs: list[bytes],
    caption: str,
    previews: Path,
    checked: list[dict[str, Any]],
) -> dict[str, Any]:
    """The images go to the alert chat only; the ledger keeps them for APPROVE. Nothing is posted."""
    try:
        receipt = publisher.preview(prompt_id=key, pngs=pngs, caption=caption)
    except PromptRejected as exc:
        return {"status": FAILED, "reason": f"preview failed: {exc}", "checks": checked}
    except TransientError as exc:
        status, reason = _transient_outcome(book, ledger, key, fingerprint, "preview", exc)
        return {"status": status, "reason": reason, "checks": checked}
    book.update(
        key,
        fingerprint,
        preview_state=PREVIEWED,
        preview_images=keep_preview(previews, key, fingerprint, image),
        image_meta=json.dumps(image.meta),
    )
    where = "the alert chat" if receipt is not None else f"{previews} (no alert chat is set)"
    context.log.info(f"{key}: preview of {len(pngs)} image(s) sent to {where}; awaiting approval")
    return {
        "status": AWAITING_APPROVAL,
        "reason": f"preview sent to {where}; {APPROVAL_HINT}",
        "checks": checked,
        "image_meta": image.meta,
    }


def _image_checks(image: ImageOutcome, pngs: list[bytes], key: str) -> list[CheckOutcome]:
    """The image checks of every image of the post, worst first per check. They ran in the generation
    thread as each image was written (off the posting thread); an outcome from elsewhere is checked now."""
    per_image = [m.get("checks") for m in (image.meta.get("variations") or [image.meta])]
    if not all(per_image):
        per_image = [[_check_dict(c) for c in check_image(png, key)] for png in pngs]
    merged: list[CheckOutcome] = []
    for name in CHECK_NAMES[:3]:
        results = [CheckOutcome(**c) for checks in per_image for c in checks if c["name"] == name]
        merged.append(next((c for c in results if not c.passed), results[0]))
    return merged


def _check_dict(outcome: CheckOutcome) -> dict[str, Any]:
    return {"name": outcome.name, "passed": outcome.passed, "detail": outcome.detail}


def _progress_status(record: dict[str, Any], post: dict[str, Any]) -> tuple[str, str]:
    if post["status"] == "POSTED":
        note = f" ({post['note']})" if post.get("note") else ""
        return "POSTED", f"message {post['message_id']} in chat {post['chat_id']}{note}"
    # a prompt that never got to the post: its record says why (INVALID, GONE, LOGGED, ...)
    status = post["status"] if record["status"] in (READY, BUSY) else record["status"]
    return status, redact(post.get("reason", ""))


def _image_partition_metadata(key: str, outcome: ImageOutcome) -> dict[str, Any]:
    if not outcome.ok:
        return {"status": outcome.status, "reason": outcome.meta.get("reason", "")}
    m = outcome.meta
    metadata: dict[str, Any] = {
        "status": "OK",
        "size": f"{m['width']}x{m['height']}",
        "width": m["width"],
        "height": m["height"],
        "model": m["model"],
        "provider": m["provider"],
        "seed": m["seed"] if m["seed"] is not None else "",
        "negative_prompt": dg.MetadataValue.text(str(m.get("negative_prompt", ""))),
        "generation_s": dg.MetadataValue.float(float(m["generation_s"])),
        "bytes": m["bytes"],
        "sha256": m["sha256"],
    }
    if outcome.thumbnail:
        metadata["preview"] = dg.MetadataValue.md(outcome.thumbnail)
    if outcome.path:
        metadata["path"] = dg.MetadataValue.path(outcome.path)
    if m.get("preview"):
        metadata["offline_preview"] = dg.MetadataValue.text(PREVIEW_LABEL)
    return metadata


def _post_partition_metadata(post: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"status": post["status"]}
    if post["status"] == "POSTED":
        metadata.update(
            chat_id=post["chat_id"],
            message_id=post["message_id"],
            method=post.get("method", ""),
            image_sha256=post.get("image_sha256", ""),
        )
        if post.get("link"):
            metadata["link"] = dg.MetadataValue.url(post["link"])
        if post.get("note"):
            metadata["note"] = post["note"]
        # the reproducibility record: with these the image can be traced and generated again
        meta = post.get("image_meta") or {}
        if meta.get("sha256"):
            metadata.update(
                model=str(meta.get("model", "")),
                provider=str(meta.get("provider", "")),
                seed=str(meta["seed"]) if meta.get("seed") is not None else "",
                size=f"{meta['width']}x{meta['height']}",
                negative_prompt=dg.MetadataValue.text(str(meta.get("negative_prompt", ""))),
                generation_s=dg.MetadataValue.float(float(meta.get("generation_s") or 0.0)),
            )
    else:
        metadata["reason"] = post.get("reason", "")
    return metadata


def _per_partition(
    context: dg.AssetExecutionContext,
    asset: str,
    values: ByPartition,
    describe: Any,
    added: bool = False,
    per_prompt: bool = True,
) -> dict[str, Any]:
    """Each prompt's own materialization metadata (preview, message id, ...), in a batch run too; the
    output's metadata is the one partition's, or the batch's counts. ``added``: the step attached each
    partition's metadata already, as it went. ``per_prompt=False``: a batch shows only its counts (Dagster
    checks every partition key against the whole partition set on each call: about 4 ms per prompt)."""
    if (key := _single(context)) is not None:
        return describe(key, values[key])
    if per_prompt and not added:
        for key, value in values.items():
            context.add_asset_metadata(describe(key, value), asset_key=asset, partition_key=key)
    statuses = _count(
        v.status if isinstance(v, ImageOutcome) else v.get("status", "") for v in values.values()
    )
    return {"batch_partitions": len(values), "batch_statuses": dg.MetadataValue.json(statuses)}


def _post_from_ledger(entry: Entry) -> dict[str, Any]:
    meta = json.loads(entry.image_meta) if entry.image_meta else {}
    return {
        "status": "POSTED",
        "image_sha256": meta.get("sha256", ""),
        "chat_id": entry.chat_id,
        "message_id": entry.message_id,
        "method": entry.method,
        "link": entry.link,
        "sent_bytes": 0,
        "note": "posted in an earlier run",
        "image_meta": meta,
    }


def _entry_for(
    key: str, record: dict[str, Any], image: ImageOutcome, post: dict[str, Any]
) -> DoneEntry | None:
    """The Done row for a prompt, or None when it stays queued (RETRY, BUSY) or is not ours (GONE)."""
    status = record["status"]
    if (
        status in (GONE, BUSY, LOGGED, HELD_STATUS)
        or image.status in (RETRY, "BUSY", CAPPED)
        or post.get("status") in (RETRY, "BUSY", CAPPED, AWAITING_APPROVAL, UNCERTAIN)
    ):
        return None
    entry = DoneEntry(id=key, prompt=clean_text(record["prompt"]), status=SUCCESS, information="")
    entry.model = record.get("request", {}).get("model", "")
    if status == INVALID:
        entry.status, entry.information = INVALID, record["reason"]
    elif status == QUARANTINED:
        entry.status, entry.information = FAILED, record["reason"]
    elif post.get("status") == "POSTED":
        entry.information = f"posted to chat {post['chat_id']} as message {post['message_id']}"
        if post.get("note"):
            entry.information += f" ({post['note']})"
        entry.message_id, entry.chat_id = post["message_id"], post["chat_id"]
        entry.message_link = post.get("link", "")
        if len(post.get("message_ids") or []) > 1:
            ids = post["message_ids"]
            entry.information = (
                f"posted an album of {len(ids)} to chat {post['chat_id']} as messages {ids[0]}-{ids[-1]}"
            )
    elif not image.ok and image.status == FAILED:
        entry.status, entry.information = FAILED, image.meta.get("reason", "generation failed")
    else:
        entry.status, entry.information = FAILED, post.get("reason", "posting failed")
    meta = image.meta if image.ok else post.get("image_meta", {})
    if meta.get("sha256"):
        entry.model = meta.get("model", entry.model)
        entry.seed = str(meta["seed"] if meta.get("seed") is not None else "")
        entry.size = f"{meta['width']}x{meta['height']}"
        entry.generation_s = str(meta.get("generation_s", ""))
        entry.image_sha256 = meta["sha256"]
        entry.provider = str(meta.get("provider", ""))
        entry.negative_prompt = str(meta.get("negative_prompt", ""))
        if meta.get("variations"):
            entry.seed = ";".join(str(v.get("seed", "")) for v in meta["variations"])
            entry.image_sha256 = ";".join(str(v.get("sha256", "")) for v in meta["variations"])
        if meta.get("preview"):
            entry.information += " [offline preview]"
    entry.information = redact(entry.information)[:1000]
    return entry


def _stays_as(record: dict[str, Any], image: ImageOutcome, post: dict[str, Any]) -> str:
    """Why a prompt without a Done row is still queued (or not ours)."""
    if record.get("uncertain") or post.get("status") == UNCERTAIN:
        return UNCERTAIN
    if record["status"] in (GONE, BUSY, HELD_STATUS):
        return record["status"]
    if post.get("status") == AWAITING_APPROVAL:
        return AWAITING_APPROVAL
    if CAPPED in (image.status, post.get("status")):
        return CAPPED
    return RETRY


def _orphan_posts(
    book: Ledger, key: str, current: str | None, done: dict[tuple[str, str], str]
) -> list[tuple[Entry, DoneEntry]]:
    """Posts of an earlier version of the row (edited or deleted after posting) that never got a Done row."""
    out = []
    for e in book.entries_for(key):
        if e.fingerprint == current or e.post_state != POSTED or e.done_state == LOGGED:
            continue
        if (key, e.prompt) in done:
            book.update(key, e.fingerprint, done_state=LOGGED, final_status=done[(key, e.prompt)])
            continue
        meta = json.loads(e.image_meta) if e.image_meta else {}
        row = DoneEntry(
            id=key,
            prompt=e.prompt,
            status=SUCCESS,
            information=f"posted to chat {e.chat_id} as message {e.message_id} (the row was edited or deleted since)",
            model=meta.get("model", ""),
            message_id=e.message_id,
            chat_id=e.chat_id,
            seed=str(meta.get("seed", "")),
            size=f"{meta['width']}x{meta['height']}" if meta.get("width") else "",
            generation_s=str(meta.get("generation_s", "")),
            image_sha256=meta.get("sha256", ""),
            provider=str(meta.get("provider", "")),
            negative_prompt=str(meta.get("negative_prompt", "")),
            message_link=e.link,
        )
        out.append((e, row))
    return out


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
    for key, record in _in_queue_order(prompt_record):
        fingerprint = record.get("fingerprint")
        entry = _entry_for(key, record, generated_image[key], telegram_post[key])
        if record["status"] == LOGGED:
            to_remove[key] = fingerprint
            results[key] = {"status": "LOGGED", "reason": record["reason"]}
        elif entry is None:
            reason = (
                record.get("reason")
                or generated_image[key].meta.get("reason")
                or telegram_post[key].get("reason", "")
            )
            results[key] = {
                "status": _stays_as(record, generated_image[key], telegram_post[key]),
                "reason": reason,
            }
        else:
            to_log.append((key, fingerprint, entry))
            to_remove[key] = fingerprint
        if any(
            e.post_state == POSTED and e.done_state != LOGGED and e.fingerprint != fingerprint
            for e in book.entries_for(key)
        ):
            needs_done_check = True
    try:
        done_index = _done_index(prompt_sheet) if needs_done_check else {}
        orphans = [
            (key, e.fingerprint, row)
            for key, record in prompt_record.items()
            for e, row in (
                _orphan_posts(book, key, record.get("fingerprint"), done_index) if needs_done_check else []
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
            if record.get("fingerprint"):
                book.release(key, record["fingerprint"], owner)
    for key, _fingerprint, entry in to_log:
        results[key] = {**entry.as_dict(), "queue_row": removal.get(key, "")}
        if entry.status == FAILED:
            _notify(publisher, f"image-pipeline: prompt {key} FAILED: {entry.information}")
    for key in to_remove:
        if removal.get(key) not in (None, "removed"):
            context.log.warning(
                f"{key}: the row was {removal.get(key)} in the queue meanwhile; nothing was deleted"
            )
        results[key]["queue_row"] = removal.get(key, "")
    # rows that stay queued show why in their status cell (only where the sheet has that column)
    words = {AWAITING_APPROVAL: AWAITING_APPROVAL, UNCERTAIN: CHECK_CHANNEL, RETRY: QUEUED, CAPPED: QUEUED}
    stay = {
        key: words[res["status"]]
        for key, res in results.items()
        if res.get("status") in words and not prompt_record[key].get("keep_word")
    }
    if stay:
        prompt_sheet.write_statuses(stay)
    statuses = _count(r.get("status", "") for r in results.values())
    batch_logged(context.run.run_id, len(to_log), statuses, context.log.info)
    metadata = _per_partition(
        context, "done_entry", results, lambda _key, res: _done_partition_metadata(res), per_prompt=False
    )
    metadata["orphan_posts_logged"] = len(orphans)
    return dg.Output(results, metadata=metadata)


def _done_partition_metadata(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": res.get("status", ""),
        "information": res.get("information", res.get("reason", "")),
        "queue_row": res.get("queue_row", ""),
        "message_id": res.get("message_id", ""),
    }


def _notify(publisher: Publisher, text: str) -> None:
    # the Done row already says what happened; a lost notice is not a second failure
    with contextlib.suppress(PipelineError):
        publisher.notify(text)


ASSETS = [prompt_record, generate_and_post, done_entry]
