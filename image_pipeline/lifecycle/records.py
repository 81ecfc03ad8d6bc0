"""A prompt record as the run carries it: the statuses prompt_record gives, queue order, the row it came from."""

from __future__ import annotations

from typing import Any

from image_pipeline.content_checks import CheckOutcome
from image_pipeline.io_managers import ByPartition
from image_pipeline.models import PromptRow

# the asset whose files hold the images (also the folder of the PNGs)
GENERATED_IMAGE = "generated_image"

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


def in_queue_order(records: ByPartition) -> list[tuple[str, dict[str, Any]]]:
    """Oldest first, as the queue lists them: a batch posts in the order a person queued."""
    return sorted(records.items(), key=lambda kv: (int(kv[1].get("row_number") or 0), kv[0]))


def row_from_record(record: dict[str, Any]) -> PromptRow:
    return PromptRow(
        int(record.get("row_number") or 0), record["prompt"], record["id"], dict(record.get("params", {}))
    )


def check_dict(outcome: CheckOutcome) -> dict[str, Any]:
    return {"name": outcome.name, "passed": outcome.passed, "detail": outcome.detail}
