"""The emulators for a profile, and what is counted from them: the queue, latencies, caps, the checks.

``queue_rows`` makes the marked prompts (``#B00042``) of a scenario's queue; ``configure`` sets the three
emulators' latency, caps and quotas for a profile and records when Telegram accepts each photo; the
counters (Sheets requests, 429s, emulated waits) and ``verify`` (every prompt posted exactly once, the
queue empty) read only the emulators, never the pipeline's own records.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from image_pipeline.testing.bench.profiles import Profile

if TYPE_CHECKING:  # the baseline's worker process must not pay for these imports
    from image_pipeline.testing.sandbox import Sandbox

MARKER_RE = re.compile(r"#B\d{5}\b")

_WORDS = (  # noqa: SIM905 - a sentence of words reads better than a column of them
    "lighthouse storm harbor fox meadow neon city glacier desert caravan violin robot garden nebula "
    "lantern forest whale cathedral origami dragon tea ceremony subway mural orchard comet monastery"
).split()


def prompt_text(number: int) -> str:
    words = " ".join(_WORDS[(number * 7 + k * 5) % len(_WORDS)] for k in range(3))
    return f"bench prompt #B{number:05d} {words}"


def queue_rows(profile: Profile, first: int = 1) -> list[list[str]]:
    if profile.side is None:
        return [["prompt"]] + [[prompt_text(first + i)] for i in range(profile.prompts)]
    side = str(profile.side)
    return [["prompt", "width", "height"]] + [
        [prompt_text(first + i), side, side] for i in range(profile.prompts)
    ]


def configure(sandbox: Sandbox, profile: Profile) -> list[float]:
    """Latency, caps and quotas of the three emulators for ``profile`` (before or after start).

    Returns the list the Telegram emulator fills with the moment it accepts each photo or document.
    """
    from image_pipeline.testing.emulators.google import READ_ENDPOINTS, WRITE_ENDPOINTS

    google, hf, telegram = sandbox.google, sandbox.hf, sandbox.telegram
    google.read_quota_per_minute = google.write_quota_per_minute = None
    google.project_read_quota_per_minute = google.project_write_quota_per_minute = None
    if profile.sheets_s > 0:
        google.set_latency(profile.sheets_s, endpoints=(*READ_ENDPOINTS, *WRITE_ENDPOINTS))
    hf.max_concurrent = profile.hf_max_concurrent
    hf.render_delay_s = profile.hf_s
    hf.default_size = (profile.hf_default_side, profile.hf_default_side)
    if profile.telegram_s > 0:
        telegram.set_latency(profile.telegram_s)
    telegram.per_chat_per_minute = profile.telegram_per_chat_per_minute

    accepted: list[float] = []

    def forget_uploads(request: Any, endpoint: str, response: Any) -> None:
        # The emulator keeps every upload's bytes; 1,000 images of 1024x1024 would weigh on the bench's
        # own memory (and time) for nothing, since the bench reads only captions.
        if endpoint in ("sendphoto", "senddocument") and response.status == 200:
            accepted.append(time.monotonic())
            with telegram._lock:
                telegram._files.clear()
                for message in reversed(telegram.messages):
                    if message.get("image") is None:
                        break
                    message["image"] = None

    telegram.after_route = forget_uploads
    return accepted


def sheets_requests(sandbox: Sandbox) -> int:
    return sandbox.google.read_requests + sandbox.google.write_requests


def google_429(sandbox: Sandbox) -> int:
    return sum(1 for r in list(sandbox.google.requests) if r.status == 429)


def hf_429(sandbox: Sandbox) -> int:
    return sum(1 for r in list(sandbox.hf.requests) if r.status == 429)


def emulated_waits_s(sandbox: Sandbox, profile: Profile) -> float:
    """Every emulated wait the scenario's requests sat through (all of them on the path when sequential)."""
    sheets = sheets_requests(sandbox) * profile.sheets_s
    telegram = sum(sandbox.telegram.counters.values()) * profile.telegram_s
    generated = sum(1 for call in list(sandbox.hf.calls) if call.get("status") == 200)
    return round(sheets + telegram + generated * profile.hf_s, 3)


def _data_rows(rows: list[list[str]]) -> list[list[str]]:
    return [row for row in rows[1:] if any(cell != "" for cell in row)]


def verify(sandbox: Sandbox, expected: list[str]) -> dict[str, Any]:
    """Every expected prompt posted exactly once and the queue empty, from the emulators' state."""
    from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
    from image_pipeline.testing.sandbox import PROCESS_WORKSHEET

    posts: Counter[str] = Counter()
    for message in sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID):
        text = message.get("caption") or message.get("visible_text") or message.get("text") or ""
        if found := MARKER_RE.search(text):
            posts[found.group(0)] += 1
    markers = [m.group(0) for text in expected if (m := MARKER_RE.search(text))]
    left = len(_data_rows(sandbox.google.values(sandbox.spreadsheet_id, PROCESS_WORKSHEET)))
    out = {
        "posted": sum(1 for m in markers if posts[m] == 1),
        "posted_twice": sum(1 for m in markers if posts[m] > 1),
        "not_posted": sum(1 for m in markers if posts[m] == 0),
        "queue_left": left,
        "alerts": len(sandbox.telegram.messages_for(_alerts_chat())),
    }
    problems = []
    if out["not_posted"]:
        problems.append(f"{out['not_posted']} NOT POSTED")
    if out["posted_twice"]:
        problems.append(f"{out['posted_twice']} POSTED TWICE")
    if left:
        problems.append(f"{left} LEFT IN QUEUE")
    out["problems"] = problems
    return out


def _alerts_chat() -> int:
    from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID

    return ALERTS_CHANNEL_ID
