"""The Bot API's HTML parse mode: which tags it accepts and the errors it raises for anything else, and
the visible text (markup removed) that caption and message limits are counted on."""

from __future__ import annotations

import html
import re

from image_pipeline.testing.emulators.telegram.wire import TelegramError

# Tags the Bot API's HTML parse mode understands; anything else is a hard 400, which is exactly
# what bites pipelines that put raw prompts ("a cat <3") into an HTML caption.
_HTML_TAGS = {
    "a", "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
    "tg-emoji", "code", "pre", "blockquote", "tg-time",
}  # fmt: skip
_HTML_ENTITY = re.compile(r"&(lt|gt|amp|quot|#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6});")


def _entities_error(detail: str) -> TelegramError:
    return TelegramError(400, f"Bad Request: can't parse entities: {detail}")


def _html_to_plain(text: str) -> str:
    """Plain text the Bot API would keep after HTML entity parsing; raises the parse errors it raises."""
    out: list[str] = []
    stack: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "&":
            m = _HTML_ENTITY.match(text, i)
            if m:
                out.append(html.unescape(m.group(0)))
                i = m.end()
                continue
            # an unknown entity is kept literally, it is not an error
            out.append(c)
            i += 1
            continue
        if c != "<":
            out.append(c)
            i += 1
            continue
        # tdlib reports positions in UTF-8 bytes, not characters
        offset = len(text[:i].encode("utf-8"))
        j = i + 1
        closing = j < n and text[j] == "/"
        if closing:
            j += 1
        k = j
        while k < n and not text[k].isspace() and text[k] != ">":
            k += 1
        name = text[j:k].lower()
        end = text.find(">", k)
        if not closing:
            # same order as tdlib: the name is judged before the rest of the tag is looked at
            if k >= n:
                raise _entities_error(f"Unclosed start tag at byte offset {offset}")
            if name not in _HTML_TAGS:
                raise _entities_error(f'Unsupported start tag "{name}" at byte offset {offset}')
            if end < 0:
                raise _entities_error(f"Unclosed start tag at byte offset {offset}")
            stack.append(name)
        else:
            if not stack:
                raise _entities_error(f"Unexpected end tag at byte offset {offset}")
            if end < 0 or text[k:end].strip():
                raise _entities_error(f"Unclosed end tag at byte offset {offset}")
            expected = stack.pop()
            if name and name != expected:
                raise _entities_error(
                    f'Unmatched end tag at byte offset {offset}, expected "</{expected}>", found "</{name}>"'
                )
        i = end + 1
    if stack:
        raise _entities_error(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def visible_text(text: str, parse_mode: str | None) -> str:
    """The text the limits are counted on (in code points) and the Message carries: markup removed."""
    if parse_mode and parse_mode.lower() == "html":
        return _html_to_plain(text)
    return text
