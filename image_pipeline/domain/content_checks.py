"""Pre-post content checks: pure functions over the image bytes, the caption and the prompt.

A colleague wires these into the asset graph as blocking asset checks; here there is no Dagster and no
network, so each rule is testable on its own and cheap enough to run on every image of a batch.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from image_pipeline.domain.errors import PromptRejected
from image_pipeline.domain.telegram_limits import (
    DOCUMENT_MAX_BYTES,
    PHOTO_MAX_BYTES,
    PHOTO_MAX_RATIO,
    PHOTO_MAX_SIDE_SUM,
    TELEGRAM_CAPTION_LIMIT,
)
from image_pipeline.domain.uploads import prepare_upload

# Asset-check names: Dagster keys check history on them, so they must never change.
IMAGE_DECODES = "image_decodes"
IMAGE_NOT_BLANK = "image_not_blank"
IMAGE_WITHIN_TELEGRAM_LIMITS = "image_within_telegram_limits"
CAPTION_WITHIN_LIMIT = "caption_within_limit"
PROMPT_FREE_OF_BANNED_WORDS = "prompt_free_of_banned_words"
CHECK_NAMES = (
    IMAGE_DECODES,
    IMAGE_NOT_BLANK,
    IMAGE_WITHIN_TELEGRAM_LIMITS,
    CAPTION_WITHIN_LIMIT,
    PROMPT_FREE_OF_BANNED_WORDS,
)

# An image is "blank" when, in every channel, the brightest and darkest pixel of the full-resolution
# image differ by at most this many 8-bit levels. Measured: a black frame carrying up to 8 levels of noise
# and re-encoded as JPEG (quality 30-95) spans at most 10 levels, a JPEG of any solid colour at most 2; a
# safety-filter frame spans 0. Anything a person would call content (a star, a hairline, a gradient)
# spans far more than 12 levels (~5% contrast), even if it covers a handful of pixels.
# Extrema rather than a standard deviation or a thumbnail on purpose: a night sky with ten 2-px stars has
# a standard deviation of ~1 level, and a box-filtered thumbnail averages those stars away; getextrema is
# one C pass (~2 ms at 1024x1024), so the full resolution costs nothing worth saving.
BLANK_MAX_SPAN = 12

_NOT_CHECKED = "not checked: the image does not decode"
# 16-bit modes hold 0..65535; scaling keeps the 8-bit threshold meaning the same contrast.
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_DIRECT_MODES = {"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"}


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    detail: str  # short and never the prompt in full: it ends up in the UI, logs and the Done sheet


# ---------------------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------------------
def check_image(png: bytes, prompt_id: str) -> list[CheckOutcome]:
    """image_decodes, image_not_blank and image_within_telegram_limits, in that order."""
    image, why = _decode(png)
    if image is None:
        # All three names are always reported, so each Dagster check gets a result on every run, and the
        # two that could not run fail instead of passing: a check that was not run must not let a post
        # through. Their detail points at the one real cause.
        return [
            CheckOutcome(IMAGE_DECODES, False, why),
            CheckOutcome(IMAGE_NOT_BLANK, False, _NOT_CHECKED),
            CheckOutcome(IMAGE_WITHIN_TELEGRAM_LIMITS, False, _NOT_CHECKED),
        ]
    with image:
        outcomes = [CheckOutcome(IMAGE_DECODES, True, why), _not_blank(image)]
    outcomes.append(_within_telegram_limits(png, prompt_id))
    return outcomes


def _decode(data: bytes) -> tuple[Image.Image | None, str]:
    """The fully loaded image and a short description, or None and why it does not decode."""
    if not data:
        return None, "the image does not decode: it is empty (0 bytes)"
    fmt = "image"
    try:
        # verify() checks what load() forgives (PNG chunk CRCs, a missing IEND) but leaves the object
        # unusable, hence the second open.
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format or fmt
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        # The first bytes tell an HTML error page or a JSON body from an image at a glance.
        return None, f"the image does not decode: not an image format Pillow knows (starts {data[:16]!r})"
    except Image.DecompressionBombError as exc:
        return None, f"the image does not decode: too many pixels to decode safely ({_short(exc)})"
    except Exception as exc:
        # Pillow's format plugins raise OSError, SyntaxError, struct.error, IndexError, ... on damaged
        # bytes; whichever it is, the answer is the same failed check, never a crashed run.
        return (
            None,
            f"the image does not decode: truncated or corrupt {fmt} ({type(exc).__name__}: {_short(exc)})",
        )
    width, height = image.size
    return image, f"{image.format or fmt} {width}x{height} {image.mode}, {len(data)} bytes"


def _not_blank(image: Image.Image) -> CheckOutcome:
    bands, threshold = _bands_for_extrema(image)
    names = bands.getbands()
    extrema = bands.getextrema() if len(names) > 1 else (bands.getextrema(),)
    by_band = dict(zip(names, extrema, strict=True))
    if "A" in by_band and by_band["A"][1] == 0:
        return CheckOutcome(IMAGE_NOT_BLANK, False, "a blank frame: every pixel is fully transparent")
    span = max(int(high - low) for low, high in extrema)
    if span > threshold:
        return CheckOutcome(IMAGE_NOT_BLANK, True, f"pixels differ by up to {span} levels in a channel")
    colour = tuple(int(low) for low, _ in extrema)
    black = bands.mode in ("L", "LA", "RGB", "RGBA") and all(
        high <= threshold for band, (_, high) in by_band.items() if band != "A"
    )
    what = (
        "an all-black frame (what providers return when their safety filter fires)"
        if black
        else "a single colour"
    )
    return CheckOutcome(
        IMAGE_NOT_BLANK,
        False,
        f"{what}: {bands.mode} {colour}, pixels differ by at most {span} levels (blank up to {threshold:g})",
    )


def _bands_for_extrema(image: Image.Image) -> tuple[Image.Image, float]:
    if image.mode in _DIRECT_MODES:
        return image, BLANK_MAX_SPAN
    if image.mode in _WIDE_MODES:
        return image, BLANK_MAX_SPAN * 257
    # Palette indices say nothing about colour (two indices may hold the same one), and "1"/"PA"/...
    # are rare enough that one conversion path is simpler than a rule per mode.
    has_alpha = "transparency" in image.info or image.mode.endswith("A")
    return image.convert("RGBA" if has_alpha else "RGB"), BLANK_MAX_SPAN


def _within_telegram_limits(png: bytes, prompt_id: str) -> CheckOutcome:
    # Check what the publisher would send, not the original: it may recompress or switch to a document.
    try:
        upload = prepare_upload(png, prompt_id)
    except PromptRejected as exc:
        return CheckOutcome(IMAGE_WITHIN_TELEGRAM_LIMITS, False, str(exc))
    size = len(upload.data)
    if upload.method == "sendDocument":
        if size > DOCUMENT_MAX_BYTES:
            return CheckOutcome(
                IMAGE_WITHIN_TELEGRAM_LIMITS, False, f"as a document: {size} bytes is over the 50 MB limit"
            )
        return CheckOutcome(
            IMAGE_WITHIN_TELEGRAM_LIMITS,
            True,
            f"goes as a document ({size} bytes, limit 50 MB): {upload.note.removeprefix('sent as a document: ')}",
        )
    try:
        # Only the header: size is known without decoding the pixels again.
        with Image.open(io.BytesIO(upload.data)) as sent:
            width, height = sent.size
    except Exception as exc:
        return CheckOutcome(
            IMAGE_WITHIN_TELEGRAM_LIMITS, False, f"the prepared photo does not open ({type(exc).__name__})"
        )
    problems = []
    if size > PHOTO_MAX_BYTES:
        problems.append(f"{size} bytes is over 10 MB")
    if width + height > PHOTO_MAX_SIDE_SUM:
        problems.append(f"width+height {width + height} is over {PHOTO_MAX_SIDE_SUM}")
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > PHOTO_MAX_RATIO:
        problems.append(f"aspect ratio {ratio:.1f} is over {PHOTO_MAX_RATIO:g}")
    if problems:
        return CheckOutcome(IMAGE_WITHIN_TELEGRAM_LIMITS, False, "as a photo: " + "; ".join(problems))
    detail = f"goes as a photo: {width}x{height}, {size} bytes {upload.content_type}"
    return CheckOutcome(
        IMAGE_WITHIN_TELEGRAM_LIMITS, True, detail + (f" ({upload.note})" if upload.note else "")
    )


# ---------------------------------------------------------------------------------------------------
# Caption
# ---------------------------------------------------------------------------------------------------
def utf16_units(text: str) -> int:
    # surrogatepass: a lone surrogate counts as the one unit it would be, instead of raising.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def check_caption(caption: str, banned: BannedWords | None = None) -> CheckOutcome:
    """Within Telegram's 1024-character caption limit; an empty caption passes.

    The publisher sends captions without parse_mode, so there are no entities and the visible text is
    the caption itself. Counted in characters (code points), the unit the Bot API documents and the one
    models.caption_for cuts to; should Telegram still count an emoji-heavy caption as too long (UTF-16
    units), the publisher cuts it by UTF-16 units and retries once, so such a post is not lost.
    """
    points = len(caption)
    units = utf16_units(caption)
    counted = f"{points} characters" + (f" ({units} UTF-16 units)" if points != units else "")
    if points > TELEGRAM_CAPTION_LIMIT:
        return CheckOutcome(CAPTION_WITHIN_LIMIT, False, f"{counted}; the limit is {TELEGRAM_CAPTION_LIMIT}")
    # a CAPTION_TEMPLATE adds text the prompt check never sees: the signature, hashtags, a caption column
    term = banned.first_match(caption) if banned is not None else None
    if term is not None:
        return CheckOutcome(CAPTION_WITHIN_LIMIT, False, f'the caption contains the banned term "{term}"')
    return CheckOutcome(CAPTION_WITHIN_LIMIT, True, f"{counted} of {TELEGRAM_CAPTION_LIMIT}")


# ---------------------------------------------------------------------------------------------------
# Banned words
# ---------------------------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """NFKC + casefold (fullwidth 'ＡＳＳ' and 'ASS' both become 'ass'), minus invisible format characters.

    Format characters (soft hyphen, zero-width space/joiner) are dropped because they are the cheapest
    way to hide a word from a matcher while it still reads the same.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")


class BannedWords:
    """Words and phrases a prompt must not contain; an empty list passes everything."""

    def __init__(self, terms: Iterable[str] = ()) -> None:
        seen: dict[str, str] = {}
        for term in terms:
            key = " ".join(normalize(term).split())
            if key and key not in seen:
                seen[key] = " ".join(term.split())
        self.terms: tuple[str, ...] = tuple(seen.values())  # as written, for the detail
        self._patterns = [(re.compile(_pattern(key)), shown) for key, shown in seen.items()]

    @classmethod
    def load(cls, file: str | None = None, inline: str | None = None) -> BannedWords:
        """Terms from a file (one per line, '#' comment lines, UTF-8) plus a comma-separated string.

        Only whole lines starting with '#' are comments, so a term may itself contain '#'. A file that is
        named but missing raises: silently checking against nothing would let everything through.
        """
        terms: list[str] = []
        if file:
            path = Path(file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"banned-words file {str(path)!r} does not exist (or is not a file); "
                    "create it or stop pointing the setting at it"
                )
            try:
                # utf-8-sig: files saved by Windows Notepad start with a BOM that would glue onto word one.
                text = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"banned-words file {str(path)!r} is not UTF-8 text (bad byte at offset {exc.start})"
                ) from None
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    terms.append(line)
        if inline:
            terms.extend(part.strip() for part in inline.split(","))
        return cls(terms)

    def first_match(self, prompt: str) -> str | None:
        """The banned term that occurs earliest in the prompt (the longest one on a tie), as written."""
        text = normalize(prompt)
        best: tuple[int, int, str] | None = None
        for pattern, shown in self._patterns:
            found = pattern.search(text)
            if found and (best is None or (found.start(), -len(found.group())) < best[:2]):
                best = (found.start(), -len(found.group()), shown)
        return best[2] if best else None

    def check_prompt(self, prompt: str) -> CheckOutcome:
        term = self.first_match(prompt)
        if term is not None:
            return CheckOutcome(
                PROMPT_FREE_OF_BANNED_WORDS, False, f'prompt contains the banned term "{term}"'
            )
        return CheckOutcome(
            PROMPT_FREE_OF_BANNED_WORDS, True, f"none of {len(self.terms)} banned terms in the prompt"
        )


def _pattern(term: str) -> str:
    # Words match on word boundaries ("ass" is not in "class"); the words of a phrase may be separated by
    # any run of whitespace. Boundaries are only asserted next to word characters, so terms such as "c++"
    # or "#nsfw" still match where they stand.
    body = r"\s+".join(re.escape(word) for word in term.split(" "))
    head = r"(?<!\w)" if re.match(r"\w", term) else ""
    tail = r"(?!\w)" if re.search(r"\w$", term) else ""
    return head + body + tail


# ---------------------------------------------------------------------------------------------------
# All together
# ---------------------------------------------------------------------------------------------------
def run_all(
    image_outcomes: Sequence[CheckOutcome], caption: str, prompt: str, banned: BannedWords
) -> list[CheckOutcome]:
    """Every check, in CHECK_NAMES order: the image's (from ``check_image``, which the pipeline runs in
    the generation thread as each image is written), then the caption's and the prompt's."""
    prompt_check = banned.check_prompt(prompt)
    # a banned prompt is reported as such, not again through the caption that repeats it
    caption_check = check_caption(caption, banned if prompt_check.passed else None)
    return [*image_outcomes, caption_check, prompt_check]


def first_failure(outcomes: Sequence[CheckOutcome]) -> CheckOutcome | None:
    return next((outcome for outcome in outcomes if not outcome.passed), None)


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
