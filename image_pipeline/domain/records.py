"""The typed records the steps hand each other, one per asset: the prompt record, the image outcome, the post
outcome (with its receipt) and the Done outcome. All frozen: a step makes a new record, it never edits the
one it was given.

``ByPartition`` maps partition keys to these, so one run may carry one prompt or many with the same code.
They are stored as plain JSON (``services/storage/``), readable by a person and by the UI, and read back
into these types, also from files an older version wrote (the same keys, without the type tag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.rows import GenerationRequest, PromptRow

RECORD_TAG = "__record__"  # the key that names a record's type in its stored JSON


class ByPartition(dict[str, Any]):
    """Values of one asset for the partitions of the current run."""


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls``: a file from another version may have more or fewer."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


class StoredRecord:
    """JSON in and out, with the type named in the data so the store can read it back as this type."""

    TAG: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {RECORD_TAG: self.TAG, **asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class PromptRecord(StoredRecord):
    """One partition's queue row as this run found it: claimed and READY, or why not (``status``/``reason``)."""

    TAG: ClassVar[str] = "prompt_record"

    id: str
    status: str
    reason: str = ""
    row_number: int = 0
    prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""  # the row's version: an edited row is a new prompt to the ledger
    request: GenerationRequest | None = None  # what to generate, when READY
    attempts: int = 0  # transient failures in earlier runs
    mode: str = ""  # approval.POST / PREVIEW_ONLY / APPROVED / HELD
    count: int = 1  # images in the post (an album when more than one)
    uncertain: bool = False  # an earlier send may or may not have arrived: a person decides
    repost: bool = False  # a person typed REPOST after CHECK CHANNEL
    keep_word: bool = False  # the person's word stays in the status cell

    def but(self, **changes: Any) -> PromptRecord:
        return dataclasses.replace(self, **changes)

    def row(self) -> PromptRow:
        return PromptRow(self.row_number, self.prompt, self.id, dict(self.params))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PromptRecord:
        known = _known(cls, data)
        if isinstance(known.get("request"), Mapping):
            known["request"] = GenerationRequest(**known["request"])
        return cls(**known)


@dataclass(frozen=True)
class ImageOutcome(StoredRecord):
    """The image asset's value: where its PNG file is when generation succeeded, and what happened
    either way. The bytes stay on disk until someone reads them, so a batch never holds its images."""

    TAG: ClassVar[str] = "image_outcome"

    status: str  # OK, FAILED, SKIPPED, BUSY, RETRY or CAPPED
    # width, height, model, provider, seed, sha256, bytes, generation_s, checks, variations...: what the
    # generator reported; it varies by backend, so it stays a mapping, copied into Done and the metadata
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    thumbnail: str = ""  # a small JPEG data-URI in Markdown, for the UI

    @property
    def ok(self) -> bool:
        return self.status == "OK" and self.path is not None

    @property
    def reason(self) -> str:
        return str(self.meta.get("reason", ""))


@dataclass(frozen=True)
class PostReceipt:
    """What the publisher says about a post it made."""

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


@dataclass(frozen=True)
class PostOutcome(StoredRecord):
    """The post asset's value: POSTED with its receipt, AWAITING APPROVAL, or why nothing was posted."""

    TAG: ClassVar[str] = "post_outcome"

    status: str
    reason: str = ""
    check: str = ""  # the pre-post check that blocked the post
    checks: list[dict[str, Any]] = field(default_factory=list)  # every pre-post check's outcome
    caption: str = ""
    image_meta: dict[str, Any] = field(default_factory=dict)
    image_sha256: str = ""
    unknown_answer: str = ""  # the signature of an answer no rule explains (lifecycle/suspects.py)
    # the receipt, when posted
    chat_id: str = ""
    message_id: str = ""
    method: str = ""
    link: str = ""
    sent_bytes: int = 0
    note: str = ""
    message_ids: tuple[str, ...] = ()
    original_message_ids: tuple[str, ...] = ()  # the original PNG sent as a document after the photo

    @classmethod
    def posted(cls, receipt: PostReceipt, **rest: Any) -> PostOutcome:
        return cls(status="POSTED", **asdict(receipt), **rest)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PostOutcome:
        known = _known(cls, data)
        known["message_ids"] = tuple(known.get("message_ids") or ())
        known["original_message_ids"] = tuple(known.get("original_message_ids") or ())
        return cls(**known)


@dataclass(frozen=True)
class DoneOutcome(StoredRecord):
    """The Done asset's value: the Done row written for the prompt, or why it has none (it stays queued,
    is held, or is not ours), and what became of its queue row."""

    TAG: ClassVar[str] = "done_outcome"

    status: str
    reason: str = ""
    entry: DoneEntry | None = None
    queue_row: str = ""  # removed, or what the queue showed instead (changed, vanished...)

    @property
    def detail(self) -> str:
        return self.entry.information if self.entry is not None else self.reason

    def but(self, **changes: Any) -> DoneOutcome:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DoneOutcome:
        known = _known(cls, data)
        if isinstance(known.get("entry"), Mapping):
            known["entry"] = DoneEntry(**_known(DoneEntry, known["entry"]))
        elif "information" in data:  # written before the type existed: the entry's keys at the top
            known["entry"] = DoneEntry(**_known(DoneEntry, data))
        return cls(**known)


# Values that mean "this run did nothing for the partition" (another run holds it, the row is gone, it was
# already done). They are kept per run, so they never overwrite what the run that did the work stored.
NOOP_STATUSES = frozenset({"BUSY", "GONE", "SKIPPED", "LOGGED"})

# what each asset's stored JSON is read back as (files from before the type tag have none)
RECORD_TYPES: dict[str, type[StoredRecord]] = {
    "prompt_record": PromptRecord,
    "telegram_post": PostOutcome,
    "done_entry": DoneOutcome,
}
_BY_TAG: dict[str, type[StoredRecord]] = {
    t.TAG: t for t in (PromptRecord, ImageOutcome, PostOutcome, DoneOutcome)
}


def record_from_json(asset: str, data: Any) -> Any:
    """A stored value read back as its record type (by its tag, or by the asset that stored it)."""
    if not isinstance(data, Mapping):
        return data
    kind = _BY_TAG.get(str(data.get(RECORD_TAG, ""))) or RECORD_TYPES.get(asset)
    return kind.from_json(data) if kind is not None else data


def is_noop(value: Any) -> bool:
    if isinstance(value, ImageOutcome):
        return not value.ok
    status = value.get("status") if isinstance(value, Mapping) else getattr(value, "status", None)
    return status in NOOP_STATUSES
