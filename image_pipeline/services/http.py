"""The one transport seam of the HTTP services: did a failed call reach the server, and retrying it.

A write whose answer was lost (read timeout, connection cut mid-answer, a truncated body) may have been
applied. Repeating it blindly can post a photo twice, append a Done row twice or, for Sheets' positional
deletes, delete a different row. Only a connection that never opened is certainly safe to repeat.

Retries use exponential backoff and jitter, honouring the service's own wait hint; one policy object per
resource, so base delay and attempt count are configuration, not constants. Secrets are kept out of every
message by ``domain.redact``, which each client registers its token with.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
import urllib3.exceptions

from image_pipeline.domain.errors import ServiceWait, TransientError
from image_pipeline.domain.refusals import LONG_WAIT_S


def never_reached_server(exc: BaseException) -> bool:
    """True when the connection itself failed (refused, DNS, connect timeout): nothing was sent."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = exc.args[0] if exc.args else None
        inner = getattr(reason, "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError) or isinstance(
            inner, urllib3.exceptions.NewConnectionError
        )
    return False


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
