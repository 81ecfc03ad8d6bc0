"""A row of the Done worksheet: its columns (and the names older sheets used for them) and its values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from image_pipeline.domain.rows import normalize_header

# Done columns in the order we write them into a fresh sheet. Existing sheets keep their order; the
# ancestor's "info" column is accepted for "information".
DONE_COLUMNS = (
    "id",
    "prompt",
    "status",
    "information",
    "timestamp",
    "model",
    "message_id",
    "chat_id",
    "seed",
    "size",
    "generation_s",
    "image_sha256",
    "provider",
    "negative_prompt",
    "message_link",
    "backend",
    "reactions",
    "reactions_total",
)
DONE_ALIASES = {
    "info": "information",
    "time": "timestamp",
    "date": "timestamp",
    "message": "message_id",
    "link": "message_link",
}


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class DoneEntry:
    """One audit row in "Done"."""

    id: str
    prompt: str
    status: str
    information: str
    timestamp: str = field(default_factory=utc_now)
    model: str = ""
    message_id: str = ""
    chat_id: str = ""
    seed: str = ""
    size: str = ""
    generation_s: str = ""
    image_sha256: str = ""
    provider: str = ""
    negative_prompt: str = ""
    message_link: str = ""
    backend: str = ""  # the image backend that made it (IMAGE_BACKENDS: huggingface, a1111, comfyui, ...)
    # the channel's reactions, filled in later from Telegram's counts (lifecycle/reactions.py): "👍 12 · ❤ 3"
    reactions: str = ""
    reactions_total: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    def value_for(self, header: str) -> str | None:
        key = normalize_header(header)
        key = DONE_ALIASES.get(key, key)
        data = self.as_dict()
        return data.get(key)
