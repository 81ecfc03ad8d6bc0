"""The original PNG as a document after the photo: a second irreversible send, exactly once like the first.

The photo's message id and ``original_state=PENDING`` are one ledger write, so a crash after the photo is
followed by the document (never by the photo again). ``SENDING`` is recorded before the document leaves and
``SENT`` with its message id(s) right after; a run that finds ``SENDING`` (a crash during the send) or gets
no answer marks it ``UNCERTAIN`` and never sends it again blind: a missing document is a smaller harm than a
doubled one, and a person is told to look.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import dagster as dg
from upath import UPath

from image_pipeline.domain.errors import PipelineError, PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.records import PostOutcome
from image_pipeline.domain.redact import redact
from image_pipeline.domain.rows import ORIGINAL_MODES, SILENT_CHOICES, PromptRow, choice
from image_pipeline.domain.statuses import FAILED, RETRY, UNCERTAIN
from image_pipeline.lifecycle.claims import transient_outcome
from image_pipeline.lifecycle.ledger import Entry, Ledger, PostLedger
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.publisher.refusals import DeliveryUncertain
from image_pipeline.services.storage import as_path, digest, read_file, write_once

AFTER, INSTEAD = ORIGINAL_MODES[:2]
PENDING, SENDING, SENT, REFUSED = "PENDING", "SENDING", "SENT", "REFUSED"


def original_mode(publisher: Publisher, row: PromptRow) -> str:
    """after, instead or off: the row's "original" column, else TELEGRAM_SEND_ORIGINAL."""
    return choice(row, "original", ORIGINAL_MODES) or publisher.send_original


def is_silent(publisher: Publisher, row: PromptRow) -> bool:
    """The row's "silent" column (yes/no), else TELEGRAM_SILENT."""
    word = choice(row, "silent", SILENT_CHOICES)
    return word == "yes" if word else publisher.silent


def kept_meta(folder: UPath, key: str, pngs: list[bytes], meta: dict[str, Any]) -> str:
    """The image meta the ledger keeps for a post whose original follows, with the files to send: the very
    bytes the photo showed (marked, when a watermark is on), kept where no later run overwrites them (named
    by their hash), so a run after a crash sends the same document."""
    paths = []
    for png in pngs:
        target = folder / f"{key}-original-{digest(png)}.png"
        write_once(target, png)
        paths.append(str(target))
    return json.dumps({**meta, "original_paths": paths})


def send_after(
    context: dg.AssetExecutionContext,
    book: Ledger,
    owner: str,
    ledger: PostLedger,
    publisher: Publisher,
    entry: Entry,
    posted: PostOutcome,
    silent: bool,
) -> PostOutcome:
    """Send the original of a posted photo (``entry.original_state`` PENDING or SENDING), at most once."""
    key, fingerprint = entry.prompt_id, entry.fingerprint
    if entry.original_state == SENDING:  # a run died during the send: it may be in the channel
        return _uncertain(
            context, book, publisher, key, fingerprint, posted, "the run stopped during the send"
        )
    meta = json.loads(entry.image_meta) if entry.image_meta else {}
    pngs = [read_file(as_path(p)) for p in meta.get("original_paths") or []]
    book.update(key, fingerprint, owner=owner, original_state=SENDING)
    try:
        receipt = publisher.publish_original(prompt_id=key, pngs=pngs, silent=silent)
    except DeliveryUncertain as exc:
        return _uncertain(context, book, publisher, key, fingerprint, posted, str(exc))
    except ServiceBlocked:
        book.update(key, fingerprint, original_state=PENDING)  # nothing left: the next run sends it
        raise
    except PromptRejected as exc:
        book.update(key, fingerprint, original_state=REFUSED, last_error=str(exc)[:500])
        context.log.warning(f"{key}: the original was refused: {exc}")
        return _noted(posted, f"the original PNG was refused: {exc}")
    except TransientError as exc:
        status, reason = transient_outcome(book, ledger, key, fingerprint, "sending the original", exc)
        if status == RETRY:  # the row stays queued and the next run sends the document
            book.update(key, fingerprint, original_state=PENDING)
            context.log.warning(f"{key}: posted as message {posted.message_id}; {reason}")
            return PostOutcome(RETRY, f"posted as message {posted.message_id}; {reason}")
        book.update(key, fingerprint, original_state=FAILED)
        return _noted(posted, reason)
    book.update(
        key, fingerprint, owner=owner, original_state=SENT, original_message_id=",".join(receipt.message_ids)
    )
    context.log.info(f"{key}: the original PNG sent as message {receipt.message_id}")
    return dataclasses.replace(posted, original_message_ids=receipt.message_ids)


def from_ledger(entry: Entry, posted: PostOutcome) -> PostOutcome:
    """A post recorded earlier, with its original's message id(s) when one was sent."""
    if entry.original_state == SENT and entry.original_message_id:
        return dataclasses.replace(posted, original_message_ids=tuple(entry.original_message_id.split(",")))
    if entry.original_state == UNCERTAIN:
        return _noted(posted, "the original's delivery is uncertain; check the channel")
    return posted


def _uncertain(
    context: dg.AssetExecutionContext,
    book: Ledger,
    publisher: Publisher,
    key: str,
    fingerprint: str,
    posted: PostOutcome,
    why: str,
) -> PostOutcome:
    book.update(key, fingerprint, original_state=UNCERTAIN, last_error=why[:500])
    text = (
        f"the original PNG may or may not be in the channel ({why}); it is not sent again: check the channel"
    )
    context.log.warning(f"{key}: {text}")
    _notify(publisher, f"image-pipeline: prompt {key} CHECK CHANNEL: {redact(text)}")
    return _noted(posted, text)


def _noted(posted: PostOutcome, text: str) -> PostOutcome:
    return dataclasses.replace(posted, note="; ".join(n for n in (posted.note, text) if n))


def _notify(publisher: Publisher, text: str) -> Any:
    try:
        return publisher.notify(text)
    except PipelineError:  # the Done row says it too; a lost notice is not a second failure
        return False
