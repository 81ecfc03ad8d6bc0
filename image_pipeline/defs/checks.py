"""The pre-post asset checks on ``generated_image``: their specs (blocking, so a failed one stops the post) and,
once the batch is through, one result per check for the run's prompts. The checks themselves are pure
(``domain/content_checks.py``); they run in the generation and posting steps, and their outcomes ride along
in each prompt's post outcome."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg

from image_pipeline.domain.content_checks import CHECK_NAMES
from image_pipeline.domain.records import ByPartition
from image_pipeline.lifecycle.records import GENERATED_IMAGE

CHECK_DESCRIPTIONS = (
    "The image decodes (a truncated or non-image body never reaches the channel).",
    "The image is not blank or a single colour (what providers send when their safety filter fires).",
    "The image is within Telegram's photo limits after the publisher's recompression (or goes as a document).",
    "The caption is within Telegram's 1024 characters.",
    "The prompt holds none of the banned words (IMAGE_PIPELINE_BANNED_WORDS / _FILE).",
)


def pre_post_check_specs() -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=GENERATED_IMAGE, blocking=True, description=description)
        for name, description in zip(CHECK_NAMES, CHECK_DESCRIPTIONS, strict=True)
    ]


def pre_post_check_results(posts: ByPartition) -> Iterator[dg.AssetCheckResult]:
    """One result per pre-post check for the run's prompts. Each prompt that failed one was not posted
    (the step blocks it) and gets a FAILED Done row naming the check; the result is a warning, so the
    batch's other prompts and its Done log go on."""
    for name in CHECK_NAMES:
        checked = 0
        blocked: list[dict[str, str]] = []
        for key, post in posts.items():
            for outcome in post.checks:
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
