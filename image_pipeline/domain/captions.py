"""The caption a post carries: the row's caption or its prompt, cut to Telegram's limit with an ellipsis."""

from __future__ import annotations

from image_pipeline.domain.rows import PromptRow, clean_text
from image_pipeline.domain.telegram_limits import TELEGRAM_CAPTION_LIMIT

ELLIPSIS = "…"


def caption_for(row: PromptRow, *, suffix: str = "", limit: int = TELEGRAM_CAPTION_LIMIT) -> str:
    """The post caption: the row's caption column or the prompt, cut to Telegram's limit with an ellipsis.

    Telegram counts caption length in Unicode code points after entity parsing; we send plain text (no
    parse_mode) so what we count is what Telegram counts. A suffix (e.g. the preview label) is kept whole.
    """
    base = clean_text(row.params.get("caption", "")).strip() or clean_text(row.prompt).strip()
    suffix = suffix.strip()
    joiner = "\n\n" if suffix else ""
    room = limit - len(suffix) - len(joiner)
    if len(base) > room:
        base = base[: max(0, room - len(ELLIPSIS))].rstrip() + ELLIPSIS
    return f"{base}{joiner}{suffix}"
