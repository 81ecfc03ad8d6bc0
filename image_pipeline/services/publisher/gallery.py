"""The local outbox's ``index.html``: every post and notice, newest first, readable straight from disk.

An album (one post of several images) is one card showing all of them; a preview (images shown to the
operator only) is a PREVIEW card among the notices, never a post.

Opened as a ``file://`` page, so everything is in the one file: inline CSS, no script, no fetch of the
JSON lines (browsers refuse ``fetch`` on ``file://``), images by paths relative to the page. Captions and
notices are user text and are always escaped; a Content-Security-Policy forbids scripts on top of that.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from image_pipeline.services.files import atomic_write

INDEX = "index.html"

# The pipeline's own notice texts (lifecycle.posting.notify); anything else shows as a plain NOTICE.
_PROMPT_NOTICE = re.compile(r"^image-pipeline: prompt (?P<id>\S+) (?P<status>[A-Z]+): ", re.DOTALL)
_STOPPED_NOTICE = "image-pipeline stopped: "


@dataclass(frozen=True)
class Card:
    kind: str  # "post", "notice" or "preview"
    status: str  # POSTED, FAILED, STOPPED, NOTICE, PREVIEW
    date: str  # ISO 8601 UTC, as the outbox records it
    text: str  # the caption, or the notice
    prompt_id: str = ""
    message_id: str = ""  # the first message of the post
    images: tuple[str, ...] = ()  # paths relative to index.html, in album order
    note: str = ""
    last_message_id: str = ""  # set for an album: its messages run from message_id to this one

    @property
    def image(self) -> str:
        return self.images[0] if self.images else ""


def cards(posts: Iterable[Mapping[str, Any]], notices: Iterable[Mapping[str, Any]]) -> list[Card]:
    """Posts and notices as one timeline, newest first.

    The outbox records times to the second; within a second, later lines of a file are newer, and a
    notice counts as newer than a post (the pipeline sends its notices after the batch's posts).
    """
    keyed: list[tuple[tuple[str, int, int], Card]] = []
    for i, p in enumerate(posts):
        ids = [str(m) for m in p.get("message_ids") or ()]
        card = Card(
            kind="post",
            status="POSTED",
            date=str(p.get("date", "")),
            text=str(p.get("caption", "")),
            prompt_id=str(p.get("prompt_id", "")),
            message_id=str(p.get("message_id", "")),
            images=_images(p),
            note=str(p.get("note", "") or ""),
            last_message_id=ids[-1] if len(ids) > 1 else "",
        )
        keyed.append(((card.date, 0, i), card))
    for i, n in enumerate(notices):
        text = str(n.get("text", ""))
        if n.get("kind") == "preview":
            preview = Card(
                kind="preview",
                status="PREVIEW",
                date=str(n.get("date", "")),
                text=text,
                prompt_id=str(n.get("prompt_id", "")),
                images=_images(n),
                note=str(n.get("note", "") or ""),
            )
            keyed.append(((preview.date, 1, i), preview))
            continue
        status, prompt_id = "NOTICE", ""
        if m := _PROMPT_NOTICE.match(text):
            status, prompt_id = m["status"], m["id"]
        elif text.startswith(_STOPPED_NOTICE):
            status = "STOPPED"
        keyed.append(
            ((str(n.get("date", "")), 1, i), Card("notice", status, str(n.get("date", "")), text, prompt_id))
        )
    keyed.sort(key=lambda kc: kc[0], reverse=True)
    return [card for _, card in keyed]


def _images(record: Mapping[str, Any]) -> tuple[str, ...]:
    """An album's ``files``, or the single ``file`` every record written before albums has."""
    files = record.get("files")
    paths = [str(f) for f in files] if isinstance(files, list) else [str(record.get("file", ""))]
    return tuple(r for r in map(_relative, paths) if r)


def _relative(path: str) -> str:
    """The image path if it stays inside the outbox folder; otherwise none (the card shows no image)."""
    if not path or path.startswith("/") or ":" in path or "\\" in path or ".." in path.split("/"):
        return ""
    return path


def render(items: list[Card]) -> str:
    counts: dict[str, int] = {}
    for c in items:
        counts[c.status] = counts.get(c.status, 0) + 1
    summary = ", ".join(f"{_e(k)} {v}" for k, v in sorted(counts.items())) or "nothing yet"
    newest = _e(_when(items[0].date)) if items else "-"
    body = "\n".join(_card_html(c) for c in items) or '<p class="empty">No posts yet.</p>'
    return _PAGE.format(summary=summary, newest=newest, cards=body)


# A card never changes once written, and every post renders the whole page again: with the cache a
# post at 1000 entries pays for the new card and the join, not for escaping 1000 captions.
@functools.lru_cache(maxsize=8192)
def _card_html(c: Card) -> str:
    status_class = "s-" + (re.sub(r"[^a-z]", "", c.status.lower()) or "notice")
    count = len(c.images)
    links = []
    for n, path in enumerate(c.images, 1):
        src = _e(quote(path))
        alt = _e(c.text[:200] + (f" ({n}/{count})" if count > 1 else ""))
        links.append(f'<a href="{src}"><img src="{src}" loading="lazy" decoding="async" alt="{alt}"></a>')
    # an album lays its images out in a grid inside the one card, as Telegram groups them in one post
    figure = f'<div class="grid n{min(count, 4)}">{"".join(links)}</div>' if count > 1 else "".join(links)
    album = " album" if count > 1 else ""
    meta = [f'<time datetime="{_e(c.date)}">{_e(_when(c.date))}</time>']
    if c.message_id:
        last = f"–#{_e(c.last_message_id)}" if c.last_message_id else ""
        meta.append(f"#{_e(c.message_id)}{last}")
    if count > 1:
        meta.append(f"{count} images")
    if c.prompt_id:
        meta.append(_e(c.prompt_id))
    if c.note:
        meta.append(_e(c.note))
    return (
        f'<article class="card {c.kind}{album} {status_class}">{figure}'
        f'<div class="body"><p class="meta"><span class="status">{_e(c.status)}</span> '
        f"{' · '.join(meta)}</p>"
        f'<p class="text">{_e(c.text)}</p></div></article>'
    )


def _when(date: str) -> str:
    return date.replace("T", " ").replace("Z", " UTC")


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def write(folder: Path, posts: list[dict[str, Any]], notices: list[dict[str, Any]]) -> Path:
    """Rewrite ``folder/index.html`` atomically: a browser reloading it never sees half a page."""
    path = Path(folder) / INDEX
    atomic_write(path, render(cards(posts, notices)).encode("utf-8"))
    return path


# The policy allows the images beside the page and the inline style; no script-src: nothing in it can run.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>image-pipeline outbox</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;background:#f6f6f4;color:#222}}
header p{{color:#555;margin:.2rem 0 1rem}}
main{{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1.2rem;align-items:start}}
.card{{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;overflow:hidden;border-top:4px solid #999}}
.card img{{width:100%;display:block;background:#eee}}
.grid{{display:grid;grid-template-columns:1fr 1fr;gap:2px;background:#fff}}
.grid img{{height:100%;object-fit:cover;aspect-ratio:1}}
.grid.n3 a:first-child{{grid-column:span 2}} .grid.n3 a:first-child img{{aspect-ratio:2}}
.body{{padding:.6rem .7rem}}
.meta{{margin:0 0 .4rem;color:#666;font-size:.85rem}}
.text{{margin:0;white-space:pre-wrap;word-break:break-word}}
.status{{display:inline-block;font-weight:600;font-size:.75rem;padding:.1rem .4rem;border-radius:4px;
background:#999;color:#fff}}
.s-posted{{border-top-color:#2e7d32}} .s-posted .status{{background:#2e7d32}}
.s-failed,.s-stopped{{border-top-color:#c62828}} .s-failed .status,.s-stopped .status{{background:#c62828}}
.s-preview{{border-top-color:#1565c0}} .s-preview .status{{background:#1565c0}}
.notice .text{{font-family:ui-monospace,monospace;font-size:.85rem}}
</style></head><body>
<header><h1>image-pipeline outbox</h1>
<p>Newest first. {summary}. Latest: {newest}. Reload the page to see new posts.</p></header>
<main>
{cards}
</main></body></html>
"""
