"""One prompt's post, guarded by the ledger: the intent before the send, the message id right after it, and a
send whose outcome is unknown never repeated blind; a PREVIEW row's images go to the alert chat only."""

import contextlib
import json
import time
from typing import Any

import dagster as dg
from upath import UPath

from image_pipeline.domain.content_checks import (
    CHECK_NAMES,
    CheckOutcome,
    check_image,
    first_failure,
    run_all,
)
from image_pipeline.domain.errors import PipelineError, PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.records import ImageOutcome, PostOutcome, PromptRecord
from image_pipeline.domain.redact import redact
from image_pipeline.domain.refusals import signature
from image_pipeline.domain.statuses import (
    AWAITING_APPROVAL,
    BUSY,
    CAPPED,
    FAILED,
    POSTED,
    POSTING,
    PREVIEWED,
    READY,
    UNCERTAIN,
)
from image_pipeline.domain.watermark import mark_post
from image_pipeline.lifecycle.approval import (
    APPROVAL_HINT,
    PREVIEW_ONLY,
    UNCERTAIN_HINT,
    delivery_uncertain,
    keep_preview,
    outcome_pngs,
)
from image_pipeline.lifecycle.claims import hold, transient_outcome
from image_pipeline.lifecycle.ledger import Entry, Ledger, PostLedger
from image_pipeline.lifecycle.originals import (
    AFTER,
    INSTEAD,
    PENDING,
    SENDING,
    from_ledger,
    is_silent,
    kept_meta,
    original_mode,
    send_after,
)
from image_pipeline.lifecycle.planning import wait_for_slot
from image_pipeline.lifecycle.presses import card_buttons, record_card
from image_pipeline.lifecycle.records import check_dict
from image_pipeline.services.images.preview import PREVIEW_LABEL
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.publisher.telegram import DeliveryUncertain


def post_one(
    context: dg.AssetExecutionContext,
    book: Ledger,
    owner: str,
    is_stale: Any,
    ledger: PostLedger,
    publisher: Publisher,
    key: str,
    record: PromptRecord,
    image: ImageOutcome,
    previews: UPath,
) -> PostOutcome:
    """Post one prompt's image(s) unless the ledger says it was (or may have been) posted already; for a
    PREVIEW row, send them to the alert chat only and wait for APPROVE."""
    if record.status != READY:
        status = BUSY if record.status == BUSY else "SKIPPED"
        return PostOutcome(status, record.reason or record.status)
    fingerprint = record.fingerprint
    entry = book.get(key, fingerprint)
    if entry is not None and entry.post_state == POSTED:
        context.log.warning(f"{key}: already posted as message {entry.message_id}; not posting again")
        if entry.original_state in (PENDING, SENDING):  # the photo went, its original did not (or may have)
            if not hold(book, owner, is_stale, ledger, key, record):
                return PostOutcome("BUSY", "another run took over this prompt")
            silent = is_silent(publisher, record.row())
            return send_after(context, book, owner, ledger, publisher, entry, post_from_ledger(entry), silent)
        return from_ledger(entry, post_from_ledger(entry))
    if delivery_uncertain(entry):  # planned as HELD by prompt_record; never sent again blind
        return PostOutcome(UNCERTAIN, f"delivery uncertain: {UNCERTAIN_HINT}")
    if not image.ok:
        return PostOutcome(image.status, image.meta.get("reason", image.status))
    if not hold(book, owner, is_stale, ledger, key, record):
        return PostOutcome("BUSY", "another run took over this prompt")
    suffix = PREVIEW_LABEL if image.meta.get("preview") else ""
    preview_only = record.mode == PREVIEW_ONLY
    if preview_only:
        suffix = f"{suffix}\n\nPREVIEW of {key}: {APPROVAL_HINT}".strip()
    caption = publisher.post_caption(record.row(), image.meta, suffix=suffix)
    pngs = outcome_pngs(image)
    checks = run_all(image_checks(image, pngs, key), caption, record.prompt, publisher.content_policy())
    checked = [check_dict(c) for c in checks]
    blocked = first_failure(checks)
    if blocked is not None:
        reason = f"blocked by the pre-post check {blocked.name}: {blocked.detail}"
        context.log.warning(f"{key}: {reason}")
        return PostOutcome(FAILED, reason, check=blocked.name, checks=checked)
    try:  # after the checks, before any send: the marked bytes are what is sent and recorded
        pngs, meta = mark_post(pngs, image.meta, publisher.watermark(), record.params.get("watermark", ""))
    except ValueError as exc:
        return PostOutcome(FAILED, f"the watermark could not be applied: {exc}", checks=checked)
    if preview_only:
        return send_preview(
            context, book, ledger, publisher, key, fingerprint, image, pngs, caption, previews, checked
        )
    # a slot's run is started ahead (IMAGE_PIPELINE_SLOT_LEAD_S): its post waits here, before the intent
    renew = lambda: hold(book, owner, is_stale, ledger, key, record)  # noqa: E731
    if not wait_for_slot(context.run.tags, renew, lambda m: context.log.info(f"{key}: {m}")):
        return PostOutcome("BUSY", "another run took over this prompt while it waited for its slot")
    if not book.reserve("posts", ledger.daily_post_cap):
        reason = f"the daily cap of {ledger.daily_post_cap} posts is reached; stays queued"
        context.log.warning(f"{key}: {reason}")
        return PostOutcome(CAPPED, reason, checks=checked)
    mode, silent = original_mode(publisher, record.row()), is_silent(publisher, record.row())
    # the original's files are kept before the photo leaves: nothing slow between the send and its record
    kept = kept_meta(previews, key, pngs, meta) if mode == AFTER else None
    # The intent is durable before the photo leaves: a crash from here on is never followed by a blind repost.
    book.update(key, fingerprint, owner=owner, post_state=POSTING, image_meta=json.dumps(meta))
    try:
        if mode == INSTEAD:
            receipt = publisher.publish_original(prompt_id=key, pngs=pngs, caption=caption, silent=silent)
        elif len(pngs) == 1:
            receipt = publisher.publish(prompt_id=key, png=pngs[0], caption=caption, silent=silent)
        else:
            receipt = publisher.publish_album(prompt_id=key, pngs=pngs, caption=caption, silent=silent)
    except DeliveryUncertain as exc:
        # no attempt counted and no Done row: the row stays queued, held, until a person looks
        book.update(key, fingerprint, post_state=UNCERTAIN, last_error=str(exc)[:500])
        context.log.warning(f"{key}: {exc}")
        notify(publisher, f"image-pipeline: prompt {key} CHECK CHANNEL: {redact(str(exc))}; {UNCERTAIN_HINT}")
        return PostOutcome(UNCERTAIN, f"delivery uncertain: {exc}; {UNCERTAIN_HINT}")
    except ServiceBlocked:
        book.update(key, fingerprint, post_state=None)
        book.unreserve("posts")
        raise
    except PromptRejected as exc:
        book.update(key, fingerprint, post_state=None)
        book.unreserve("posts")
        context.log.warning(f"{key}: posting failed: {exc}")
        return PostOutcome(
            FAILED, f"posting failed: {exc}", unknown_answer=signature(exc) if exc.unknown else ""
        )
    except TransientError as exc:
        book.update(key, fingerprint, post_state=None)
        book.unreserve("posts")
        status, reason = transient_outcome(book, ledger, key, fingerprint, "posting", exc)
        context.log.warning(f"{key}: {reason}")
        return PostOutcome(status, reason)
    # The one write that closes the duplicate window: Telegram's message id, recorded at once.
    book.update(
        key,
        fingerprint,
        owner=owner,  # fenced: a worker whose claim was taken over records nothing (ClaimLost)
        post_state=POSTED,
        posted_at=time.time(),
        chat_id=receipt.chat_id,
        message_id=receipt.message_id,
        link=receipt.link,
        method=receipt.method,
        # in the same write as the message id: a crash after the photo is followed by its original
        **({"original_state": PENDING, "image_meta": kept} if kept else {}),
    )
    context.log.info(f"{key}: posted as message {receipt.message_id} in chat {receipt.chat_id}")
    posted = PostOutcome.posted(
        receipt,
        image_sha256=meta.get("sha256", ""),
        caption=caption,
        image_meta=meta,
        checks=checked,
    )
    if mode != AFTER:
        return posted
    after = book.get(key, fingerprint)
    assert after is not None  # written just above, under our claim
    return send_after(context, book, owner, ledger, publisher, after, posted, silent)


def send_preview(
    context: dg.AssetExecutionContext,
    book: Ledger,
    ledger: PostLedger,
    publisher: Publisher,
    key: str,
    fingerprint: str,
    image: ImageOutcome,
    pngs: list[bytes],
    caption: str,
    previews: UPath,
    checked: list[dict[str, Any]],
) -> PostOutcome:
    """The images go to the alert chat only; the ledger keeps them for APPROVE. Nothing is posted."""
    buttons = card_buttons(publisher, key, fingerprint)  # Approve / Regenerate / Hold / Skip, when on
    try:
        receipt = publisher.preview(prompt_id=key, pngs=pngs, caption=caption, buttons=buttons)
    except PromptRejected as exc:
        return PostOutcome(FAILED, f"preview failed: {exc}", checks=checked)
    except TransientError as exc:
        status, reason = transient_outcome(book, ledger, key, fingerprint, "preview", exc)
        return PostOutcome(status, reason, checks=checked)
    if buttons and receipt is not None:  # the card whose presses count, known before the preview is
        record_card(book, receipt.chat_id, receipt.message_id, key, fingerprint)
    book.update(
        key,
        fingerprint,
        preview_state=PREVIEWED,
        preview_images=keep_preview(previews, key, fingerprint, image),
        image_meta=json.dumps(image.meta),
    )
    where = "the alert chat" if receipt is not None else f"{previews} (no alert chat is set)"
    context.log.info(f"{key}: preview of {len(pngs)} image(s) sent to {where}; awaiting approval")
    return PostOutcome(
        AWAITING_APPROVAL, f"preview sent to {where}; {APPROVAL_HINT}", checks=checked, image_meta=image.meta
    )


def post_from_ledger(entry: Entry) -> PostOutcome:
    meta = json.loads(entry.image_meta) if entry.image_meta else {}
    return PostOutcome(
        "POSTED",
        image_sha256=meta.get("sha256", ""),
        chat_id=entry.chat_id,
        message_id=entry.message_id,
        message_ids=(entry.message_id,) if entry.message_id else (),
        method=entry.method,
        link=entry.link,
        sent_bytes=0,
        note="posted in an earlier run",
        image_meta=meta,
    )


def image_checks(image: ImageOutcome, pngs: list[bytes], key: str) -> list[CheckOutcome]:
    """The image checks of every image of the post, worst first per check. They ran in the generation
    thread as each image was written (off the posting thread); an outcome from elsewhere is checked now."""
    per_image = [m.get("checks") for m in (image.meta.get("variations") or [image.meta])]
    if not all(per_image):
        per_image = [[check_dict(c) for c in check_image(png, key)] for png in pngs]
    merged: list[CheckOutcome] = []
    for name in CHECK_NAMES[:3]:
        results = [CheckOutcome(**c) for checks in per_image for c in checks if c["name"] == name]
        merged.append(next((c for c in results if not c.passed), results[0]))
    return merged


def notify(publisher: Publisher, text: str) -> None:
    # the Done row already says what happened; a lost notice is not a second failure
    with contextlib.suppress(PipelineError):
        publisher.notify(text)
