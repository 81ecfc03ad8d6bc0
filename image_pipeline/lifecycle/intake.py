"""A batch's rows taken in: each partition's queue row claimed for this run and planned (READY, HELD, ...),
or why not (gone, busy in another run, already in Done, invalid, quarantined); and a REPOST used up only
once the status cell no longer says it."""

from __future__ import annotations

from typing import Any, Protocol

from image_pipeline.domain.records import ByPartition, PromptRecord
from image_pipeline.domain.rows import PromptRow, build_request, clean_text, validate_prompt, variations_of
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
from image_pipeline.lifecycle.approval import HELD, POST, PREVIEW_ONLY, delivery_uncertain, plan_for
from image_pipeline.lifecycle.ledger import Ledger, PostLedger
from image_pipeline.services.images.interface import ImageGenerator


class Log(Protocol):
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...


def claim_rows(
    keys: list[str],
    rows: dict[str, PromptRow],
    done: dict[tuple[str, str], str],
    book: Ledger,
    owner: str,
    is_stale: Any,
    ledger: PostLedger,
    image_generator: ImageGenerator,
    log: Log,
) -> tuple[ByPartition, list[str]]:
    """Each key's record, claimed in one ledger commit; and the prompts whose send died mid-way, which a
    person must now check (CHECK CHANNEL, told once)."""
    records = ByPartition()
    newly_uncertain: list[str] = []
    with book.batch():  # one commit for the whole batch's claims
        for key in keys:
            row = rows.get(key)
            if row is None:
                records[key] = PromptRecord(key, GONE, "no row in the queue carries this id")
                log.warning(f"{key}: no row in the queue carries this id; nothing to do")
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
                log.warning(f"{key}: another run is working on this prompt; skipped")
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
                log.info(f"{key}: {why}")
            if entry.attempts >= ledger.max_attempts and entry.post_state is None:
                records[key] = ready.but(
                    status=QUARANTINED,
                    reason=f"quarantined after {entry.attempts} failed attempts; last error: {entry.last_error}",
                )
    return records, newly_uncertain


def generating_words(records: ByPartition) -> dict[str, str]:
    """GENERATING in the status cell of each prompt this run will generate (not a held or approved one)."""
    return {k: GENERATING for k, r in records.items() if r.status == READY and r.mode in (POST, PREVIEW_ONLY)}


def settle_reposts(records: ByPartition, shown: dict[str, str], book: Ledger) -> None:
    """A REPOST is used up once the run's GENERATING replaced it in the cell; otherwise the row waits."""
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
