"""CAPTION_TEMPLATE: the caption a post carries, rendered from named fields and cut to Telegram's limit.

A template is configuration, so it gets plain named fields only: no attribute or index access (``{x.y}``,
``{x[0]}``), no conversion and no format spec, so a template can never reach into an object. The variable
part (the caption or the prompt) is what gets cut; the signature and a preview suffix stay whole.

Telegram counts a bot's caption in Unicode code points of the text after entity parsing (tdlib
``MessageContent.cpp``: ``utf8_length(caption.text) > message_caption_length_max``, 1024 by default). We send
plain text (no parse_mode), so nothing needs escaping and what we count here is what Telegram counts: Python's
``len`` of a str is its code points, an emoji outside the BMP is one.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from image_pipeline.domain.captions import ELLIPSIS, caption_for
from image_pipeline.domain.rows import PromptRow, clean_text
from image_pipeline.domain.telegram_limits import TELEGRAM_CAPTION_LIMIT

FIELDS = ("prompt", "caption", "hashtags", "model", "seed", "signature", "date", "backend")
# The parts a too long caption gives up, in order: the text first, whole hashtags next.
CUT_FIELDS = ("caption", "prompt")
# What a signature or a hashtags column means when no CAPTION_TEMPLATE is set.
DEFAULT_TEMPLATE = "{caption}\n\n{hashtags}\n{signature}"

_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_NOT_HASHTAG = re.compile(r"[^\w]+")


def expand(text: str) -> str:
    r"""A literal ``\n`` is a line break: an .env file or a compose file carries one line per variable."""
    return text.replace("\\n", "\n")


def template_problem(template: str) -> str | None:
    """Why the template cannot be rendered (the first bad field named), or None when it can."""
    try:
        parsed = list(string.Formatter().parse(expand(template)))
    except ValueError as exc:
        return f"CAPTION_TEMPLATE is not a valid template ({exc}); a literal brace is written {{{{ or }}}}"
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            return f"CAPTION_TEMPLATE has a positional field {{{field}}}: name one of {', '.join(FIELDS)}"
        if any(c in field for c in ".["):
            return f"CAPTION_TEMPLATE field {{{field}}}: attribute and index access are not allowed"
        if field not in FIELDS:
            return f"CAPTION_TEMPLATE has an unknown field {{{field}}}; the fields are {', '.join(FIELDS)}"
        if spec or conversion:
            return f"CAPTION_TEMPLATE field {{{field}}}: no conversion or format spec, only the plain name"
    return None


def hashtags(raw: str) -> str:
    """The hashtags column (words, with or without '#', separated by spaces or commas) as '#word #word'."""
    words = (_NOT_HASHTAG.sub("_", w.lstrip("#")).strip("_") for w in re.split(r"[\s,]+", clean_text(raw)))
    return " ".join(f"#{w}" for w in words if w)


def field_values(
    row: PromptRow, meta: Mapping[str, Any], *, signature: str = "", date: str = ""
) -> dict[str, str]:
    """Every field's value for one post; ``meta`` is the image outcome's (model, seed, backend)."""
    prompt = clean_text(row.prompt).strip()
    variations = meta.get("variations") or []
    seeds = [v.get("seed") for v in variations] if variations else [meta.get("seed")]
    return {
        "prompt": prompt,
        "caption": clean_text(row.params.get("caption", "")).strip() or prompt,
        "hashtags": hashtags(row.params.get("hashtags", "")),
        "model": str(meta.get("model") or ""),
        "seed": ", ".join(str(s) for s in seeds if s is not None and s != ""),
        "signature": clean_text(expand(signature)).strip(),
        "date": date,
        "backend": str(meta.get("backend") or ""),
    }


def render_caption(
    row: PromptRow,
    meta: Mapping[str, Any],
    *,
    template: str = "",
    signature: str = "",
    date: str = "",
    suffix: str = "",
    limit: int = TELEGRAM_CAPTION_LIMIT,
) -> str:
    """The post caption. Without a template, a signature or hashtags it is exactly ``caption_for``'s."""
    values = field_values(row, meta, signature=signature, date=date)
    if not template and not values["signature"] and not values["hashtags"]:
        return caption_for(row, suffix=suffix, limit=limit)
    problem = template_problem(template or DEFAULT_TEMPLATE)
    if problem:
        raise ValueError(problem)  # the doctor and the run gate refuse such a template before any run
    pieces = [
        (literal, field)
        for literal, field, _, _ in string.Formatter().parse(expand(template or DEFAULT_TEMPLATE))
    ]
    suffix = suffix.strip()
    joiner = "\n\n" if suffix else ""
    body = _fit(pieces, values, limit - len(suffix) - len(joiner))
    return f"{body}{joiner}{suffix}" if body else suffix


def _render(pieces: list[tuple[str, str | None]], values: Mapping[str, str]) -> str:
    text = "".join(literal + (values[field] if field else "") for literal, field in pieces)
    # an empty field (no hashtags, no signature) leaves no run of blank lines behind
    return _BLANK_LINES.sub("\n\n", text).strip()


def _fit(pieces: list[tuple[str, str | None]], values: dict[str, str], room: int) -> str:
    """The rendered text in ``room`` code points: the caption/prompt cut first (with an ellipsis), then
    whole hashtags from the end; the signature and the other fields are kept."""
    values = dict(values)
    uses = {f: sum(1 for _, field in pieces if field == f) for f in FIELDS}
    for _ in range(64):  # each pass shortens a value; a few passes always settle it
        text = _render(pieces, values)
        over = len(text) - room
        if over <= 0:
            return text
        cuttable = [f for f in CUT_FIELDS if uses[f] and values[f]]
        if cuttable:
            name = max(cuttable, key=lambda f: len(values[f]) * uses[f])
            value = values[name].removesuffix(ELLIPSIS)
            keep = len(value) - -(-over // uses[name]) - len(ELLIPSIS)
            values[name] = value[: max(0, keep)].rstrip() + ELLIPSIS if keep > 0 else ""
        elif uses["hashtags"] and values["hashtags"]:
            values["hashtags"] = values["hashtags"].rpartition(" ")[0]
        else:
            break
    text = _render(pieces, values)
    # what the configuration alone makes too long (a huge signature): cut at the end, never refused
    return text if len(text) <= room else text[: max(0, room - len(ELLIPSIS))].rstrip() + ELLIPSIS
