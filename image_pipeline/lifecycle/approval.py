"""Steering a row from the sheet: HOLD, PREVIEW, APPROVE in its "status" cell, and variations ("count").

What a run does with a row depends on the word a person typed and on what the ledger says was previewed
for the row's current text. The rule that matters: what is posted after APPROVE is exactly what was
previewed (the same files, never generated again), and only for the text that was previewed; a row
edited since its preview is previewed again.
"""

from __future__ import annotations

import json
from typing import Any

from upath import UPath

from image_pipeline.domain.records import ImageOutcome
from image_pipeline.domain.rows import PromptRow
from image_pipeline.domain.statuses import (
    APPROVE,
    AWAITING_APPROVAL,
    CHECK_CHANNEL,
    HOLD,
    POSTING,
    PREVIEW,
    PREVIEWED,
    REPOST,
    SKIP,
    UNCERTAIN,
)
from image_pipeline.lifecycle.ledger import Entry
from image_pipeline.services.storage import as_path, digest, read_file, write_once

# what a run does with a row
POST = "post"  # generate and publish (no word, or a state the pipeline wrote)
PREVIEW_ONLY = "preview"  # generate, send to the alert chat only, wait for APPROVE
APPROVED = "approved"  # publish the previewed images as they are
HELD = "held"  # nothing: it waits in the queue

APPROVAL_HINT = "type APPROVE in its status cell to publish it, or edit the prompt for a new preview"
UNCERTAIN_HINT = (
    "the photo may or may not be in the channel (its answer was lost); it is not sent again blind. Check "
    f"the channel: if it is missing, type {REPOST} in the row's status cell (add a 'status' column if the "
    "sheet has none); if it is there, delete the row"
)


def delivery_uncertain(entry: Entry | None) -> bool:
    """A send left without an answer (UNCERTAIN), or a process that died during it (POSTING, seen by
    the run that took its stale claim over)."""
    return entry is not None and entry.post_state in (POSTING, UNCERTAIN)


def has_preview(entry: Entry | None) -> bool:
    return entry is not None and entry.preview_state == PREVIEWED and bool(entry.preview_images)


def plan_for(row: PromptRow, entry: Entry | None) -> tuple[str, str]:
    """(mode, reason) for a row, given the ledger entry of its current text."""
    word = row.command
    previewed = has_preview(entry)
    if delivery_uncertain(entry):
        if word == REPOST:
            return POST, f"{REPOST}: a person found the uncertain post missing from the channel"
        return HELD, f"delivery uncertain: {UNCERTAIN_HINT}"
    if word in (HOLD, CHECK_CHANNEL, SKIP):
        return HELD, f"on hold (the status cell says {word})"
    if word in (PREVIEW, AWAITING_APPROVAL):
        if previewed:
            return HELD, f"awaiting approval: the preview was sent; {APPROVAL_HINT}"
        # AWAITING APPROVAL without a preview of this text: the prompt was edited after its preview
        return PREVIEW_ONLY, ""
    if word == APPROVE:
        if previewed:
            return APPROVED, ""
        return (
            PREVIEW_ONLY,
            "APPROVE before a preview of this text: previewed first, so what is posted is what was seen",
        )
    return POST, ""


def variation_seeds(seed: int | None, count: int) -> list[int | None]:
    """Different seeds for the variations: consecutive from the row's seed, else each chosen at random."""
    if seed is None:
        return [None] * count
    return [(seed + i) % 2**32 for i in range(count)]


def outcome_pngs(outcome: ImageOutcome) -> list[bytes]:
    """Every image of a prompt's outcome: one, or the variations in order."""
    variations = outcome.meta.get("variations") or []
    if not variations:
        if outcome.path is None:
            raise FileNotFoundError("no image was stored for this outcome")
        return [read_file(as_path(outcome.path))]
    return [read_file(as_path(v["path"])) for v in variations]


def keep_preview(folder: UPath, key: str, fingerprint: str, outcome: ImageOutcome) -> str:
    """Copy the previewed images where no later run overwrites them; the JSON the ledger keeps.

    Written once, named by their bytes' hash: a second preview of the same text (a run that died before
    the ledger recorded its preview, a worker that took the prompt over) gets files of its own, and the
    ledger's entry names the ones APPROVE posts. ``folder`` may be local or in an object store."""
    variations = outcome.meta.get("variations") or [{**outcome.meta, "path": outcome.path}]
    kept: list[dict[str, Any]] = []
    for i, variation in enumerate(variations, start=1):
        png = read_file(as_path(variation["path"]))
        target = folder / f"{key}-{fingerprint}-{i}-{digest(png)}.png"
        write_once(target, png)
        kept.append({**{k: v for k, v in variation.items() if k != "path"}, "path": str(target)})
    meta = {k: v for k, v in outcome.meta.items() if k != "variations"}
    return json.dumps({"meta": meta, "variations": kept, "thumbnail": outcome.thumbnail})


def approved_outcome(entry: Entry) -> ImageOutcome:
    """The previewed images as this run's image outcome: nothing is generated again."""
    kept = json.loads(entry.preview_images)
    variations = kept["variations"]
    meta = dict(kept["meta"])
    if len(variations) > 1:
        meta["variations"] = variations
    meta["approved"] = True
    return ImageOutcome("OK", meta, path=variations[0]["path"], thumbnail=kept.get("thumbnail", ""))
