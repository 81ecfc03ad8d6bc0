"""A prompt row of the queue and what may be read from it: ids, headers, validation, the generation request.

No Dagster and no I/O here, so every rule about what a row means is testable on its own.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass, field

from image_pipeline.domain.slots import post_at_problem
from image_pipeline.domain.statuses import AWAITING_APPROVAL, CHECK_CHANNEL, COMMANDS
from image_pipeline.domain.telegram_limits import MAX_COUNT
from image_pipeline.domain.watermark import row_wants_watermark

# Optional "Process" columns, matched by header name (case-insensitive).
OPTIONAL_COLUMNS = ("negative_prompt", "model", "width", "height", "seed", "caption", "count", "backend")
OPTIONAL_COLUMNS += ("hashtags", "original", "silent")  # issue 16: caption templates, originals, silent posts
# Columns that came later join a row's fingerprint only when set, so rows (and ledgers) from before keep
# their prints.
LATE_COLUMNS = ("count", "backend")
LATE_COLUMNS += ("hashtags", "original", "silent")
OPTIONAL_COLUMNS += ("watermark",)  # issue 16: "off" leaves one row's image unmarked
LATE_COLUMNS += ("watermark",)
# issue 16: a row's own posting time (slots). When a row goes out is not what it posts: moving it is no edit,
# so it joins no fingerprint (a new print would let a rescheduled row that was posted be posted again).
SCHEDULE_COLUMNS = ("post_at",)
OPTIONAL_COLUMNS += SCHEDULE_COLUMNS
ID_COLUMN = "id"
# An optional "status" column steers a row and shows its progress. It is not part of the row's
# fingerprint: typing a word there (or the pipeline writing its state) is not an edit of the prompt.
STATUS_COLUMN = "status"
# The image backends a row's "backend" column may name (each has a module in services/images).
BACKEND_KINDS = ("huggingface", "a1111", "comfyui", "preview")
MAX_PROMPT_CHARS = 10_000  # longer prompts are rejected: no text-to-image model reads that far
MAX_SIDE = 4096
MIN_SIDE = 64
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def new_prompt_id() -> str:
    """A fresh partition-safe id: no '/', ',', '...' (they clash with Dagster partition syntax)."""
    return "p" + secrets.token_hex(5)


def is_valid_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def normalize_header(name: str) -> str:
    return re.sub(r"[\s-]+", "_", str(name).strip().lower())


@dataclass(frozen=True)
class PromptRow:
    """One queued row as read from "Process". ``row_number`` is 1-based and only valid for this read."""

    row_number: int
    prompt: str
    prompt_id: str = ""
    params: dict[str, str] = field(default_factory=dict)
    cells: tuple[str, ...] = field(default=(), compare=False, repr=False)  # the raw row, to restore it
    status: str = field(default="", compare=False)  # the "status" cell as typed

    @property
    def command(self) -> str:
        """HOLD, PREVIEW, APPROVE, REPOST when a person typed one (any case), AWAITING APPROVAL while a
        preview waits, CHECK CHANNEL while a delivery is uncertain, else "" (process normally: empty, or a
        state the pipeline wrote)."""
        word = " ".join(self.status.split()).upper()
        return word if word in (*COMMANDS, AWAITING_APPROVAL, CHECK_CHANNEL) else ""

    def fingerprint(self) -> str:
        """What a person can change about the row; used to tell "changed meanwhile" from "same row"."""
        unprinted = LATE_COLUMNS + SCHEDULE_COLUMNS
        parts = [f"{k}={self.params.get(k, '')}" for k in OPTIONAL_COLUMNS if k not in unprinted]
        parts += [f"{k}={self.params[k]}" for k in LATE_COLUMNS if self.params.get(k, "")]
        payload = "\x1f".join([self.prompt, *parts])
        return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str | None
    model: str
    width: int
    height: int
    seed: int | None
    # The image backend the row asks for ("" = the configured order) and whether the model is the row's
    # own choice, not a default: a fallback backend of another kind then uses its own default model.
    backend: str = ""
    model_from_row: bool = False


@dataclass(frozen=True)
class Validation:
    ok: bool
    reason: str = ""


def clean_text(text: str) -> str:
    """Drop NULs and control characters (other than newline/tab) that no API accepts, keep everything else."""
    out = []
    for ch in str(text):
        if ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cs"):
            continue
        else:
            out.append(ch)
    return "".join(out)


def validate_prompt(prompt: str) -> Validation:
    text = clean_text(prompt)
    if not text.strip():
        return Validation(False, "empty prompt")
    if len(text) > MAX_PROMPT_CHARS:
        return Validation(False, f"prompt is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
    return Validation(True)


def _parse_int(name: str, raw: str, low: int, high: int) -> int | None:
    raw = str(raw).strip()
    if raw == "":
        return None
    try:
        number = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw[:40]!r}") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {raw[:40]!r}")
    value = int(number)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _multiple_of_8(side: int) -> int:
    # Diffusion pipelines (SDXL, FLUX) reject sizes that are not divisible by 8.
    return max(MIN_SIDE, side - side % 8)


def build_request(
    row: PromptRow, *, default_model: str, default_width: int, default_height: int
) -> GenerationRequest:
    """The generation request a row asks for; raises ValueError with a person-readable reason."""
    p = row.params
    width = _multiple_of_8(_parse_int("width", p.get("width", ""), MIN_SIDE, MAX_SIDE) or default_width)
    height = _multiple_of_8(_parse_int("height", p.get("height", ""), MIN_SIDE, MAX_SIDE) or default_height)
    seed = _parse_int("seed", p.get("seed", ""), 0, 2**32 - 1)
    _parse_int("count", p.get("count", ""), 1, MAX_COUNT)  # validated here; variations_of() reads it
    row_model = clean_text(p.get("model", "")).strip()
    negative = clean_text(p.get("negative_prompt", "")).strip() or None
    backend = clean_text(p.get("backend", "")).strip().lower()
    if backend and backend not in BACKEND_KINDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKEND_KINDS)}")
    choice(row, "original", ORIGINAL_MODES)  # validated here, before an image is paid for
    choice(row, "silent", SILENT_CHOICES)
    row_wants_watermark(p.get("watermark", ""))  # a typo is said before the image is paid for
    if problem := post_at_problem(p.get("post_at", "")):
        raise ValueError(problem)
    return GenerationRequest(
        clean_text(row.prompt).strip(),
        negative,
        row_model or default_model,
        width,
        height,
        seed,
        backend=backend,
        model_from_row=bool(row_model),
    )


# The "original" column (and TELEGRAM_SEND_ORIGINAL): the PNG as a document after the photo, instead of it, or not.
ORIGINAL_MODES = ("after", "instead", "off")
SILENT_CHOICES = ("yes", "no")


def choice(row: PromptRow, column: str, choices: tuple[str, ...]) -> str:
    """A column that takes one of a few words ("" when empty: the configured default)."""
    value = clean_text(row.params.get(column, "")).strip().lower()
    if value and value not in choices:
        raise ValueError(f"{column} {value[:40]!r} is not one of {', '.join(choices)}")
    return value


def variations_of(row: PromptRow) -> int:
    """How many images the row asks for (the optional "count" column, 1-10)."""
    return _parse_int("count", row.params.get("count", ""), 1, MAX_COUNT) or 1
