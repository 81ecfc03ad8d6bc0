"""The typed records the steps hand each other: the image outcome and the post receipt.

``ByPartition`` maps partition keys to these, so one run may carry one prompt or many with the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class ByPartition(dict[str, Any]):
    """Values of one asset for the partitions of the current run."""


@dataclass
class ImageOutcome:
    """The image asset's value: where its PNG file is when generation succeeded, and what happened
    either way. The bytes stay on disk until someone reads them, so a batch never holds its images."""

    status: str  # OK, FAILED or SKIPPED
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    thumbnail: str = ""  # a small JPEG data-URI in Markdown, for the UI

    @property
    def ok(self) -> bool:
        return self.status == "OK" and self.path is not None

    def read_png(self) -> bytes:
        if self.path is None:
            raise FileNotFoundError("no image was stored for this outcome")
        return Path(self.path).read_bytes()


# Values that mean "this run did nothing for the partition" (another run holds it, the row is gone, it was
# already done). They are kept per run, so they never overwrite what the run that did the work stored.
NOOP_STATUSES = frozenset({"BUSY", "GONE", "SKIPPED", "LOGGED"})


def is_noop(value: Any) -> bool:
    if isinstance(value, ImageOutcome):
        return not value.ok
    return isinstance(value, dict) and value.get("status") in NOOP_STATUSES


@dataclass(frozen=True)
class PostReceipt:
    chat_id: str
    message_id: str  # the first message of the post
    method: str  # sendPhoto, sendDocument or sendMediaGroup
    link: str
    sent_bytes: int
    note: str = ""
    # every message of the post, in order; an album is one message per image
    message_ids: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.message_ids and self.message_id:
            object.__setattr__(self, "message_ids", (self.message_id,))


def receipt_dict(receipt: PostReceipt) -> dict[str, Any]:
    out = asdict(receipt)
    out["message_ids"] = list(receipt.message_ids)  # plain JSON data, like the rest of the dict
    return out
