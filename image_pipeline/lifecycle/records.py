"""A prompt record as the run carries it: queue order, the row it came from, check outcomes as data."""

from __future__ import annotations

from typing import Any

from image_pipeline.domain.content_checks import CheckOutcome
from image_pipeline.domain.records import ByPartition
from image_pipeline.domain.rows import PromptRow

# the asset whose files hold the images (also the folder of the PNGs)
GENERATED_IMAGE = "generated_image"


def in_queue_order(records: ByPartition) -> list[tuple[str, dict[str, Any]]]:
    """Oldest first, as the queue lists them: a batch posts in the order a person queued."""
    return sorted(records.items(), key=lambda kv: (int(kv[1].get("row_number") or 0), kv[0]))


def row_from_record(record: dict[str, Any]) -> PromptRow:
    return PromptRow(
        int(record.get("row_number") or 0), record["prompt"], record["id"], dict(record.get("params", {}))
    )


def check_dict(outcome: CheckOutcome) -> dict[str, Any]:
    return {"name": outcome.name, "passed": outcome.passed, "detail": outcome.detail}
