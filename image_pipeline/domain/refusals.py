"""The one classification of every answer a service gives us.

Each service's rules live in a module of this package (``telegram``, ``google``, ``huggingface``): they
turn a status, the service's own error text and its wait hint into one of five classes, and the class into
the typed error the pipeline acts on. The adapters in ``image_pipeline.services`` only call these rules;
the assets decide from the error's type alone.

| class       | whose fault                               | what happens                                        |
|-------------|-------------------------------------------|-----------------------------------------------------|
| PROMPT      | the prompt (its text, parameters, image)  | FAILED / INVALID Done row, removed from the queue   |
| SERVICE     | ours: credentials, rights, configuration  | run stops, every prompt stays queued, no attempt    |
|             | an endpoint or provider that refuses us   | counted, one message naming the fix, one alert      |
| TRANSIENT   | nobody's: a blip                          | retried with the service's wait hint; past the      |
|             |                                           | retries the prompt stays queued, attempt counted    |
| WAIT        | nobody's: the service imposes a long wait | run stops, no attempt counted, the resume time is   |
|             | (flood wait, quota window)                | recorded; schedule and sensor skip until then       |
| UNKNOWN     | nobody knows: the answer to a write that  | read back before anything is repeated; a post whose |
|             | must not repeat was lost                  | fate is unknown is never sent again                 |

The rule that decides between PROMPT and the others: would the same answer refuse the *next* prompt too?
Then it is not this prompt's fault (``../shared/real-services.md``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from image_pipeline.domain.errors import (
    PipelineError,
    PromptRejected,
    ServiceBlocked,
    ServiceWait,
    TransientError,
    WriteOutcomeUnknown,
)

# A wait hint up to this long is waited out inside the run (a short flood wait, a model loading); a
# longer one stops the run and is recorded, so no process sits idle holding a pool slot for an hour.
LONG_WAIT_S = 120.0


class Refusal(StrEnum):
    PROMPT = "prompt"
    SERVICE = "service"
    TRANSIENT = "transient"
    WAIT = "wait"
    UNKNOWN = "unknown"


def refusal_of(exc: BaseException) -> Refusal:
    """The class of an error raised by an adapter (anything unexpected counts as TRANSIENT)."""
    if isinstance(exc, ServiceWait):
        return Refusal.WAIT
    if isinstance(exc, WriteOutcomeUnknown) or getattr(exc, "uncertain", False):
        return Refusal.UNKNOWN
    if isinstance(exc, ServiceBlocked):
        return Refusal.SERVICE
    if isinstance(exc, PromptRejected):
        return Refusal.PROMPT
    if isinstance(exc, TransientError) and exc.ambiguous:
        return Refusal.UNKNOWN
    return Refusal.TRANSIENT


def refuse(
    kind: Refusal,
    message: str,
    *,
    service: str,
    status: int | None = None,
    retry_after: float | None = None,
    unknown: bool = False,
) -> PipelineError:
    """The typed error for a class. A TRANSIENT answer whose wait hint is longer than a run waits is a
    WAIT: the service decided it, and counting it against the prompt would quarantine healthy prompts."""
    if kind is Refusal.TRANSIENT and retry_after is not None and retry_after > LONG_WAIT_S:
        kind = Refusal.WAIT
    if kind is Refusal.PROMPT:
        rejected = PromptRejected(message, service=service, status=status)
        # ``unknown``: no rule that names the prompt matched, only the fallback "another 4xx to this
        # request": the run checks it against the next prompt before it fails this one
        rejected.unknown = unknown
        return rejected
    if kind is Refusal.SERVICE:
        return ServiceBlocked(message, service=service, status=status)
    if kind is Refusal.WAIT:
        return ServiceWait(message, service=service, status=status, wait_s=retry_after or LONG_WAIT_S)
    if kind is Refusal.UNKNOWN:
        return WriteOutcomeUnknown(message, service=service, status=status)
    return TransientError(message, service=service, status=status, retry_after=retry_after)


@dataclass(frozen=True)
class Rule:
    """One documented answer: the statuses it comes with, a pattern of the service's text, its class,
    and what a person does about it. ``source`` says where the answer is documented or was seen."""

    kind: Refusal
    statuses: frozenset[int]
    pattern: str
    fix: str = ""
    source: str = ""

    def matches(self, status: int, text: str) -> bool:
        if self.statuses and status not in self.statuses:
            return False
        return not self.pattern or re.search(self.pattern, text, re.I) is not None


def first_rule(rules: Iterable[Rule], status: int, text: str) -> Rule | None:
    return next((r for r in rules if r.matches(status, text)), None)


def signature(exc: PipelineError) -> str:
    """The same answer, whichever prompt it came for: numbers and request ids blanked out."""
    text = re.sub(r"\(Request ID: [^)]*\)|\d+", "#", str(exc))
    return f"{exc.service}:{exc.status}:{text}"
