"""Retry with exponential backoff and jitter, honouring the service's own wait hint.

One policy object per resource, so base delay and attempt count are configuration, not constants.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from image_pipeline.errors import ServiceWait, TransientError
from image_pipeline.refusals import LONG_WAIT_S

T = TypeVar("T")
log = logging.getLogger("image_pipeline.retry")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # the first try plus three retries, as the ancestor did
    base_delay_s: float = 2.0
    max_delay_s: float = 60.0
    # A wait hint longer than this is not waited out inside a step: the run stops and records when to
    # come back (a ServiceWait), without counting it against the prompt.
    max_hint_s: float = LONG_WAIT_S

    def delay_for(self, attempt: int, hint: float | None, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based)."""
        backoff = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        # "Equal jitter": half fixed, half random, so concurrent clients spread out without ever
        # retrying immediately.
        jittered = backoff / 2 + rng.uniform(0, backoff / 2)
        if hint is not None and hint > 0:
            # The service knows best; add a little so we do not land exactly on its boundary.
            return hint + rng.uniform(0, min(1.0, self.base_delay_s))
        return jittered


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[TransientError, int, float], None] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn``; retry on TransientError; re-raise anything else at once."""
    rng = rng or random.Random()
    attempt = 1
    while True:
        try:
            return fn()
        except TransientError as exc:
            if exc.retry_after is not None and exc.retry_after > policy.max_hint_s:
                raise ServiceWait(
                    f"{exc} (the service asks us to wait {exc.retry_after:.0f}s)",
                    service=exc.service,
                    status=exc.status,
                    wait_s=exc.retry_after,
                ) from None
            if attempt >= policy.attempts:
                raise
            delay = policy.delay_for(attempt, exc.retry_after, rng)
            log.warning("%s: %s; retry %d/%d in %.1fs", what, exc, attempt, policy.attempts - 1, delay)
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            sleep(delay)
            attempt += 1
