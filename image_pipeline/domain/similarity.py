"""When two prompts are "the same prompt": the near-duplicate measure the queue refill uses.

Normalisation first: Unicode NFKC (full-width letters, ligatures and compatibility forms become their plain
letters), case folded, every run of punctuation or symbols a space, whitespace collapsed, and the English
articles (a, an, the) dropped: in a 6-word prompt "a" against "the" alone would weigh like a new word. Two
prompts equal after that are duplicates, whatever else.

Then the Jaccard similarity of the two prompts' character 3-gram sets (of the normalised text, with a space
at each end so a word's edges count); a duplicate at ``NEAR_DUPLICATE`` = 0.8 or more. Why this measure:
image prompts are short (5 to 40 words), so word shingles move in large steps (one changed word out of six
halves a word-bigram Jaccard) and cannot tell a plural or a spelling variant from a new idea, while
character 3-grams degrade gradually. Measured (test_refill.py keeps these as examples): a plural plus an
article 0.83, "watercolor"/"watercolour" 0.83, a reordered tail 0.91 -- all duplicates; "snow"/"rain"
0.53, a new subject under the same style tail 0.57, "dawn"/"dusk" 0.73, one added style phrase 0.67 --
all new. Why 0.8: at 0.7 "dawn"/"dusk" (another picture) would be refused; at 0.9 a plural or a British
spelling would pass as new. The measure errs towards "duplicate" near the line ("an old man ..." against
"an old woman ..." is 0.84): a prompt the refill drops costs nothing, a repeated picture in the channel does.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

NEAR_DUPLICATE = 0.8
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)
_ARTICLES = frozenset({"a", "an", "the"})


def normalise(text: str) -> str:
    """The text as the comparison sees it: NFKC, case folded, punctuation a space, no articles."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(w for w in _NOT_WORD.sub(" ", folded).split() if w not in _ARTICLES)


def trigrams(text: str) -> frozenset[str]:
    """The character 3-grams of the normalised text, padded so a word's edges count."""
    padded = f" {normalise(text)} "
    if len(padded) < 3:
        return frozenset()
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def similarity(a: str, b: str) -> float:
    """Jaccard of the two texts' 3-gram sets: 1.0 for prompts equal after normalisation."""
    if normalise(a) == normalise(b):
        return 1.0
    ga, gb = trigrams(a), trigrams(b)
    if not ga or not gb:
        return 0.0
    return len(ga & gb) / len(ga | gb)


class PromptIndex:
    """Prompts already known (Process and Done); tells a new one apart from a near-duplicate of any."""

    def __init__(self, prompts: Iterable[str] = (), threshold: float = NEAR_DUPLICATE) -> None:
        self.threshold = threshold
        self._exact: set[str] = set()
        self._grams: list[frozenset[str]] = []
        for p in prompts:
            self.add(p)

    def add(self, prompt: str) -> None:
        key = normalise(prompt)
        if key and key not in self._exact:
            self._exact.add(key)
            self._grams.append(trigrams(prompt))

    def duplicate_of_any(self, prompt: str) -> bool:
        key = normalise(prompt)
        if not key or key in self._exact:
            return True
        grams = trigrams(prompt)
        # a cheap bound first: Jaccard <= min/max of the set sizes, so most pairs never intersect sets
        for known in self._grams:
            small, big = sorted((len(grams), len(known)))
            if big and small / big < self.threshold:
                continue
            if len(grams & known) / len(grams | known) >= self.threshold:
                return True
        return False
