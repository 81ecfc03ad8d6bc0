"""What the queue refill asks a text model, and how its answer becomes prompts.

The request shows the channel's best prompts and asks for N new ones, one per line. Models do not keep to
a format: they number the lines ("1.", "2)"), add bullets, wrap each prompt in quotes, answer with a JSON
list (sometimes inside a code fence), put a sentence before the list ("Here are 5 prompts:"), or leave
empty lines. ``parse_prompts`` takes any of these and returns the prompts only, in order.
"""

from __future__ import annotations

import json
import re
from typing import Any

from image_pipeline.domain.rows import clean_text

MAX_REFILL_PROMPT_CHARS = 1000  # a "prompt" longer than this is the model talking, not a prompt
_FENCE = re.compile(r"^```[\w-]*\s*$")
# "1.", "1)", "(1)", "#1", "1:", "- ", "* ", "• ", "Prompt 3:", in any mix, at the start of a line
_MARKER = re.compile(
    r"^\s*(?:(?:prompt\s*)?(?:\(?\d{1,3}[.):]|#\d{1,3}[.):]?)|[-*•·–—]|\d{1,3}\s*-)\s*", re.I
)
_QUOTES = ('""', "''", "“”", "‘’", "«»", "„“", "``")

SYSTEM = (
    "You write prompts for a text-to-image model that illustrates a Telegram channel. "
    "Answer with the prompts only: one prompt per line, no numbering, no quotes, no commentary."
)


def build_messages(examples: list[str], count: int) -> list[dict[str, str]]:
    """The chat request: the channel's best prompts as the style to follow, and how many new ones."""
    shown = "\n".join(f"- {e}" for e in examples) or "- (no posts yet: choose a varied, striking theme)"
    user = (
        f"These prompts made the channel's most liked posts:\n{shown}\n\n"
        f"Write {count} new prompts in the same style and length. Each must show a different subject "
        "from every prompt above and from each other. One prompt per line."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_prompts(answer: str) -> list[str]:
    """The prompts in a model's answer (see the module docstring for the shapes it survives)."""
    text = clean_text(answer or "").strip()
    listed = _json_list(text)
    lines = listed if listed is not None else text.splitlines()
    out: list[str] = []
    for line in lines:
        prompt = _clean_line(line)
        if prompt:
            out.append(prompt)
    return out


def _json_list(text: str) -> list[str] | None:
    """The strings of a JSON list answer (bare, fenced, or under a "prompts" key), else None."""
    body = "\n".join(line for line in text.splitlines() if not _FENCE.match(line.strip())).strip()
    start, end = body.find("["), body.rfind("]")
    candidates = [body] + ([body[start : end + 1]] if 0 <= start < end else [])
    for candidate in candidates:
        try:
            value: Any = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            value = value.get("prompts")
        if isinstance(value, list):
            return [str(v) for v in value if isinstance(v, (str, int, float))]
    return None


def _clean_line(line: str) -> str:
    text = " ".join(str(line).split())
    if not text or _FENCE.match(text) or text in ("[", "]", "{", "}"):
        return ""
    # twice: "1. - prompt" and "- 1. prompt" both happen
    for _ in range(2):
        text = _MARKER.sub("", text, count=1).strip()
    text = text.rstrip(",").strip()
    for _ in range(2):
        for pair in _QUOTES:
            if len(text) >= 2 and text[0] == pair[0] and text[-1] == pair[1]:
                text = text[1:-1].strip()
        text = text.strip("*_").strip()  # **bold** markdown around a prompt
    if text.endswith(":") or len(text) > MAX_REFILL_PROMPT_CHARS:
        return ""  # "Here are five prompts:" -- a preamble, not a prompt
    return text
