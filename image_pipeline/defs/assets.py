"""The asset graph: prompt record -> generated image -> Telegram post -> Done entry.

Every asset is partitioned by prompt id and handles all partitions of its run at once, so a run may
carry one prompt (from the UI or the schedule) or a batch. A prompt that fails gets a FAILED outcome
that flows downstream to its Done row; a service that refuses us (token, permission, credits) stops the
run instead, leaving the queue untouched.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg

from image_pipeline.defs.io_manager import PartitionFileIOManager
from image_pipeline.defs.partitions import prompt_partitions
from image_pipeline.domain.content_checks import CHECK_NAMES
from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.errors import (
    CreditsDepleted,
    ServiceBlocked,
    ServiceWait,
    TransientError,
    WriteOutcomeUnknown,
)
from image_pipeline.domain.records import ByPartition, ImageOutcome
from image_pipeline.domain.redact import redact
from image_pipeline.domain.rows import (
    GenerationRequest,
    build_request,
    clean_text,
    validate_prompt,
    variations_of,
)
from image_pipeline.domain.statuses import (
    AWAITING_APPROVAL,
    BUSY,
    CAPPED,
    CHECK_CHANNEL,
    FAILED,
    GENERATING,
    GONE,
    HELD_STATUS,
    INVALID,
    LOGGED,
    LOGGING,
    POSTED,
    POSTING,
    QUARANTINED,
    QUEUED,
    READY,
    REMOVED,
    RETRY,
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
from image_pipeline.lifecycle.claims import transient_outcome
from image_pipeline.lifecycle.done import entry_for, orphan_posts, read_done_index, stays_as
from image_pipeline.lifecycle.gate import RUN_SECOND_LOOK_S, gate
from image_pipeline.lifecycle.generation import generate_to_disk, plan_generation
from image_pipeline.lifecycle.ledger import Ledger, PostLedger, owner_token, stale_owner_check
from image_pipeline.lifecycle.posting import notify, post_one
from image_pipeline.lifecycle.progress import RunProgress, batch_logged
from image_pipeline.lifecycle.records import GENERATED_IMAGE, in_queue_order
from image_pipeline.lifecycle.suspects import Suspects
from image_pipeline.services.images.interface import ImageGenerator
from image_pipeline.services.images.preview import PREVIEW_LABEL
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet

GROUP = "image_pipeline"
IO = "pipeline_io_manager"
TELEGRAM_POST = "telegram_post"


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
            notify(publisher, f"image-pipeline is waiting: {pause.message() if pause else message}")
        return dg.Failure(
            description=message,
            metadata={"service": exc.service, "status": str(exc.status or ""), "resume_at": exc.until},
        )
    if isinstance(exc, CreditsDepleted) and book is not None:
        if book.pause(exc.service, message):
            notify(
                publisher,
                f"image-pipeline paused spending: {message} Resume with `image-pipeline resume` "
                "or the resume_spending_job in the Dagster UI.",
            )
        else:
            context.log.warning("spending was paused already; no second notice")
        return dg.Failure(
            description=message, metadata={"service": exc.service, "status": str(exc.status or "")}
        )
    notify(publisher, f"image-pipeline stopped: {message}")
    return dg.Failure(description=message, metadata={"service": exc.service, "status": str(exc.status or "")})


def _single(context: dg.AssetExecutionContext) -> str | None:
    keys = context.partition_keys
    return keys[0] if len(keys) == 1 else None


def _ledger_context(context: dg.AssetExecutionContext, ledger: PostLedger) -> tuple[Ledger, str, Any]:
    return ledger.open(), owner_token(context.run.run_id), stale_owner_check(context.instance)


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
        notify(publisher, f"image-pipeline: prompt {key} CHECK CHANNEL: {UNCERTAIN_HINT}")
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


CHECK_DESCRIPTIONS = (
    "The image decodes (a truncated or non-image body never reaches the channel).",
    "The image is not blank or a single colour (what providers send when their safety filter fires).",
    "The image is within Telegram's photo limits after the publisher's recompression (or goes as a document).",
    "The caption is within Telegram's 1024 characters.",
    "The prompt holds none of the banned words (IMAGE_PIPELINE_BANNED_WORDS / _FILE).",
)


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
    outcomes, todo = plan_generation(prompt_record, book, owner, is_stale, ledger)
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
            outcome, note = generate_to_disk(image_generator, store, book, ledger, key, fp, req, count)
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
            for key, record in in_queue_order(prompt_record):
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
                posts[key] = post_one(
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
                    status, reason = transient_outcome(
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
        fingerprint = record.get("fingerprint")
        entry = entry_for(key, record, generated_image[key], telegram_post[key])
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
                "status": stays_as(record, generated_image[key], telegram_post[key]),
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
        done_index = read_done_index(prompt_sheet) if needs_done_check else {}
        orphans = [
            (key, e.fingerprint, row)
            for key, record in prompt_record.items()
            for e, row in (
                orphan_posts(book, key, record.get("fingerprint"), done_index) if needs_done_check else []
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
            notify(publisher, f"image-pipeline: prompt {key} FAILED: {entry.information}")
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


ASSETS = [prompt_record, generate_and_post, done_entry]
