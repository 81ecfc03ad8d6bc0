"""The gate every run passes: each configured service checked with its cheapest real call first.

``image-pipeline run``, every run's first step, the schedule and the sensor call :func:`gate`. The checks
live with each service (``preflight()`` in ``services/``); this module runs them and remembers a pass for
a while (in the ledger when there is one), so the runs a sensor tick starts trust it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from image_pipeline.domain.checks import Check, fail, refusal

# A passing preflight is trusted this long per process, so a sensor that starts runs every minute does
# not pay half a dozen extra API calls each time; a failing one is re-checked on every tick.
OK_TTL_S = 600.0
# how long a run waits before it checks a failed preflight a second time
RUN_SECOND_LOOK_S = 2.0


def run_preflight(resources: Sequence[Any]) -> list[Check]:
    """Every resource's checks, in order; a check that breaks is reported, never raised. The services are
    asked at once (each check is a few requests to its own service), so a run starts after the slowest
    one, not after all of them in turn."""
    if len(resources) <= 1:
        return [c for resource in resources for c in _checks_of(resource)]
    with ThreadPoolExecutor(max_workers=len(resources)) as pool:
        return [c for checks in pool.map(_checks_of, resources) for c in checks]


def _checks_of(resource: Any) -> list[Check]:
    try:
        return list(resource.preflight())
    except Exception as exc:  # a bug in one check must not hide the others or crash a sensor
        service = getattr(resource, "preflight_service", type(resource).__name__)
        return [
            fail(service, "preflight", f"the check itself failed ({type(exc).__name__})", "report this bug")
        ]


_passed: dict[str, float] = {}
_lock = threading.Lock()


def _fingerprint(resources: Sequence[Any]) -> str:
    # the resolved configuration (secrets included, hashed) names "the same services"
    parts = []
    for resource in resources:
        try:
            config = resource.model_dump()
        except Exception:
            config = repr(resource)
        parts.append([type(resource).__name__, config])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class PassStore(Protocol):
    """Where passes are remembered across processes (the ledger): a run launched from the UI is a
    process of its own, and should trust the pass the sensor or the previous run just recorded."""

    def preflight_passed_at(self, key: str) -> float | None: ...

    def record_preflight(self, key: str, passed: bool) -> None: ...


def gate(
    resources: Sequence[Any],
    *,
    ttl_s: float = OK_TTL_S,
    store: PassStore | None = None,
    second_look_s: float = 0.0,
) -> str | None:
    """None when the services passed their preflight (recently, or now); else the refusal message.

    ``second_look_s``: a run (not a tick, which simply tries again at the next one) checks a failure once
    more after that pause, since each check makes one request and a blip would otherwise stop the run."""
    key = _fingerprint(resources)
    now = time.time()
    with _lock:
        when = _passed.get(key)
    if when is None and store is not None:
        when = store.preflight_passed_at(key)
    if when is not None and now - when < ttl_s:
        return None
    message = refusal(run_preflight(resources))
    if message is not None and second_look_s > 0:
        time.sleep(second_look_s)
        message = refusal(run_preflight(resources))
    with _lock:
        if message is None:
            _passed[key] = time.time()
        else:
            _passed.pop(key, None)
    if store is not None:
        store.record_preflight(key, message is None)
    return message


def forget() -> None:
    """Drop the cached passes (tests; after an operator changed credentials in a long-lived process)."""
    with _lock:
        _passed.clear()
