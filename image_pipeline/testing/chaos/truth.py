"""The harness's own record of the queue: every prompt's marker and text, and what the person did to it.

Every prompt carries a marker (``#T00042``) so the verdict can find it again in what the emulators hold;
``Truth`` keeps the texts the harness queued and the person's inserts, rewrites, moves and withdrawals,
the only record the verdict trusts besides the emulators. Here too are the words prompts are made of,
the word the emulated content filter refuses, and the small image size the queue asks for.
"""

from __future__ import annotations

import random
import re
import threading
from typing import Any

MARKER_RE = re.compile(r"#T\d{5}\b")
# Prompts with this word are refused by the emulated content filter, so the FAILED path is exercised too.
REJECTED_WORD = "forbiddenfruit"
REJECT_EVERY = 20
# Small images: a 1024 px PNG costs the worker and the emulators CPU on every hop, and size has no bearing on
# what is being tested. The optional width/height columns of the queue carry it.
IMAGE_SIDE = "256"
PROCESS_HEADER = ["prompt", "width", "height"]

_WORDS = (  # noqa: SIM905 - a sentence of words reads better than a column of them
    "lighthouse storm harbor fox meadow neon city glacier desert caravan violin robot garden nebula "
    "lantern forest whale cathedral origami dragon tea ceremony subway mural orchard comet monastery"
).split()


class Truth:
    """What the person did to the queue, kept by the harness: the only record the verdict trusts besides
    the emulators themselves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.texts: dict[str, str] = {}  # marker -> latest text the person gave it
        self.inserted: set[str] = set()
        self.edited: set[str] = set()
        self.withdrawn: set[str] = set()
        self.moved: set[str] = set()
        # marker -> the pipeline's applied row deletions that hit its row (rows as seen just before)
        self.pipeline_deleted: dict[str, list[dict[str, Any]]] = {}
        self.deletions: list[dict[str, Any]] = []  # every row deletion of the pipeline, in order
        # marker -> what the person decided for each uncertain delivery of it (ChannelChecker)
        self.checks: dict[str, list[dict[str, Any]]] = {}
        self._next = 1

    def new_prompt(self, rng: random.Random) -> str:
        with self.lock:
            number = self._next
            self._next += 1
        marker = f"#T{number:05d}"
        words = rng.sample(_WORDS, 3)
        if number % REJECT_EVERY == 0:
            words[1] = REJECTED_WORD
        text = f"chaos prompt {marker} " + " ".join(words)
        with self.lock:
            self.texts[marker] = text
        return text


def marker_of(text: str) -> str | None:
    found = MARKER_RE.search(text or "")
    return found.group(0) if found else None
