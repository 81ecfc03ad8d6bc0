"""The Done row of each prompt from what its run did, or why it stays queued; posts of edited or deleted rows."""

import json
from typing import Any

from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.records import ImageOutcome, PostOutcome, PromptRecord
from image_pipeline.domain.redact import redact
from image_pipeline.domain.rows import clean_text
from image_pipeline.domain.statuses import (
    AWAITING_APPROVAL,
    BUSY,
    CAPPED,
    FAILED,
    GONE,
    HELD_STATUS,
    INVALID,
    LOGGED,
    POSTED,
    QUARANTINED,
    RETRY,
    SUCCESS,
    UNCERTAIN,
)
from image_pipeline.lifecycle.ledger import Entry, Ledger
from image_pipeline.services.sheets import PromptSheet


def read_done_index(
    prompt_sheet: PromptSheet, rows: list[dict[str, str]] | None = None
) -> dict[tuple[str, str], str]:
    """(id, prompt) -> status of the rows already in Done: the durable record when the ledger is new."""
    index: dict[tuple[str, str], str] = {}
    for row in prompt_sheet.read_done() if rows is None else rows:
        pid = row.get("id", "").strip()
        if pid:
            index[(pid, row.get("prompt", ""))] = row.get("status", "")
    return index


def entry_for(key: str, record: PromptRecord, image: ImageOutcome, post: PostOutcome) -> DoneEntry | None:
    """The Done row for a prompt, or None when it stays queued (RETRY, BUSY) or is not ours (GONE)."""
    status = record.status
    if (
        status in (GONE, BUSY, LOGGED, HELD_STATUS)
        or image.status in (RETRY, "BUSY", CAPPED)
        or post.status in (RETRY, "BUSY", CAPPED, AWAITING_APPROVAL, UNCERTAIN)
    ):
        return None
    fields: dict[str, str] = {"status": SUCCESS, "information": ""}
    fields["model"] = record.request.model if record.request is not None else ""
    if status == INVALID:
        fields.update(status=INVALID, information=record.reason)
    elif status == QUARANTINED:
        fields.update(status=FAILED, information=record.reason)
    elif post.status == "POSTED":
        information = f"posted to chat {post.chat_id} as message {post.message_id}"
        if post.note:
            information += f" ({post.note})"
        if len(post.message_ids) > 1:
            ids = post.message_ids
            information = (
                f"posted an album of {len(ids)} to chat {post.chat_id} as messages {ids[0]}-{ids[-1]}"
            )
        if post.original_message_ids:
            information += f"; the original PNG as a document: message {', '.join(post.original_message_ids)}"
        fields.update(
            information=information, message_id=post.message_id, chat_id=post.chat_id, message_link=post.link
        )
    elif not image.ok and image.status == FAILED:
        fields.update(status=FAILED, information=image.meta.get("reason", "generation failed"))
    else:
        fields.update(status=FAILED, information=post.reason or "posting failed")
    meta = image.meta if image.ok else post.image_meta
    if post.image_meta.get("original_sha256"):
        meta = post.image_meta  # watermarked: Done's image_sha256 is the posted file's
    if meta.get("sha256"):
        fields.update(_image_fields(meta, fields["model"]))
        if meta.get("preview"):
            fields["information"] += " [offline preview]"
        if meta.get("original_sha256"):
            originals = [v.get("original_sha256", "") for v in meta.get("variations") or [meta]]
            fields["information"] += f" [watermarked; original sha256 {';'.join(originals)}]"
    fields["information"] = redact(fields["information"])[:1000]
    return DoneEntry(id=key, prompt=clean_text(record.prompt), **fields)


def _image_fields(meta: dict[str, Any], model: str) -> dict[str, str]:
    """What Done records of the image(s): model, seed, size, hash...; one value per variation of an album."""
    out = {
        "model": meta.get("model", model),
        "seed": str(meta["seed"] if meta.get("seed") is not None else ""),
        "size": f"{meta['width']}x{meta['height']}",
        "generation_s": str(meta.get("generation_s", "")),
        "image_sha256": meta["sha256"],
        "provider": str(meta.get("provider", "")),
        "negative_prompt": str(meta.get("negative_prompt", "")),
        "backend": str(meta.get("backend", "")),
    }
    if meta.get("variations"):
        out["seed"] = ";".join(str(v.get("seed", "")) for v in meta["variations"])
        out["image_sha256"] = ";".join(str(v.get("sha256", "")) for v in meta["variations"])
    return out


def stays_as(record: PromptRecord, image: ImageOutcome, post: PostOutcome) -> str:
    """Why a prompt without a Done row is still queued (or not ours)."""
    if record.uncertain or post.status == UNCERTAIN:
        return UNCERTAIN
    if record.status in (GONE, BUSY, HELD_STATUS):
        return record.status
    if post.status == AWAITING_APPROVAL:
        return AWAITING_APPROVAL
    if CAPPED in (image.status, post.status):
        return CAPPED
    return RETRY


def orphan_posts(
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
            backend=str(meta.get("backend", "")),
        )
        out.append((e, row))
    return out
