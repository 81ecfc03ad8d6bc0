"""Typed errors raised at each service seam.

Assets decide what to do from the type alone, never from message text:
- ``TransientError``: worth retrying (timeouts, resets, 5xx, 429, a model still loading), with the
  service's own wait hint when it gave one.
- ``PromptRejected``: this prompt cannot succeed (the model refuses it, the image is unusable, Telegram
  refuses the photo). The prompt gets a FAILED Done row and leaves the queue.
- ``ServiceBlocked``: the service refuses *us* (bad token, no permission, credits depleted, missing
  sheet). Nothing about the prompt is wrong, so the run stops and the queue stays as it is.
- ``ServiceWait``: the service imposes a long wait (a flood wait, a quota window). The run stops, the
  resume time is recorded, and the schedule and sensor skip until then.
- ``WriteOutcomeUnknown``: a write that must not be repeated blind lost its answer; read back first.

Which answer of which service becomes which of these is decided in ``image_pipeline.domain.refusals``.

Every message is built by our code from status codes and sanitized service text, never from a raw
exception that could carry a URL with a token in it.
"""

from __future__ import annotations

import time


class PipelineError(Exception):
    service = "pipeline"

    def __init__(self, message: str, *, service: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if service:
            self.service = service
        self.status = status

    def __str__(self) -> str:
        return self.message


class TransientError(PipelineError):
    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message, service=service, status=status)
        self.retry_after = retry_after
        # The request went out and its answer was lost: a write may have been applied.
        self.ambiguous = ambiguous


class WriteOutcomeUnknown(PipelineError):
    """A write that is not safe to repeat lost its answer; the caller re-reads to find out."""


class ClaimLost(PipelineError):
    """Another worker holds this prompt's claim now (ours ran out and was taken over): this worker must not
    record, post or log anything more for it; the holder reconciles from the ledger."""

    service = "ledger"


class PromptRejected(PipelineError):
    """Permanent for this prompt."""

    # No documented answer says this refusal is about the prompt: only the fallback rule put it here.
    # The run then asks "would it refuse the next prompt too?" before the prompt may be given FAILED.
    unknown = False


class ServiceBlocked(PipelineError):
    """Permanent for the service configuration: stop, fix credentials/permissions/billing, run again."""


class CreditsDepleted(ServiceBlocked):
    pass


class ServiceWait(ServiceBlocked):
    """The service told us to come back later than a run may wait (flood wait, quota window).

    Not the prompt's fault and not worth an attempt: the run stops and nothing starts before ``until``."""

    def __init__(
        self, message: str, *, service: str | None = None, status: int | None = None, wait_s: float
    ) -> None:
        super().__init__(message, service=service, status=status)
        self.wait_s = max(0.0, float(wait_s))
        self.until = time.time() + self.wait_s


class BackendUnavailable(PipelineError):
    """The image backend a row names refuses the service now (paused for credits, a bad login, an outage)
    while other backends still work: that row waits, queued with no attempt counted; the run goes on."""


class QueueFormatError(ServiceBlocked):
    """The sheet is not shaped like a queue (missing worksheet or header); a person has to fix it."""
