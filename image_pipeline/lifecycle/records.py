"""A run's prompt records in queue order, and check outcomes as plain data for the records and metadata."""

from __future__ import annotations

from typing import Any

from image_pipeline.domain.content_checks import CheckOutcome
from image_pipeline.domain.records import ByPartition, PromptRecord

# the asset whose files hold the images (also the folder of the PNGs)
GENERATED_IMAGE = "generated_image"


def in_queue_order(records: ByPartition) -> list[tuple[str, PromptRecord]]:
    """Oldest first, as the queue lists them: a batch posts in the order a person queued."""
    return sorted(records.items(), key=lambda kv: (kv[1].row_number, kv[0]))


def check_dict(outcome: CheckOutcome) -> dict[str, Any]:
    return {"name": outcome.name, "passed": outcome.passed, "detail": outcome.detail}
