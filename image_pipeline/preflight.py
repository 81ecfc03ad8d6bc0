"""Preflight: each configured service checked with its cheapest real call, before any work starts.

``image-pipeline doctor`` prints the table, the ``preflight_job`` shows it in the UI, and the schedule
and sensor call :func:`gate` before they start runs. The checks themselves live with each service's
resource (``preflight()`` in resources/sheets/, images.py, publisher.py); this module holds what they
return, the table, and the gate's cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"

# A passing preflight is trusted this long per process, so a sensor that starts runs every minute does
# not pay half a dozen extra API calls each time; a failing one is re-checked on every tick.
OK_TTL_S = 600.0
# how long a run waits before it checks a failed preflight a second time
RUN_SECOND_LOOK_S = 2.0


@dataclass(frozen=True)
class Check:
    service: str
    name: str
    status: str
    detail: str = ""
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def ok(service: str, name: str, detail: str = "") -> Check:
    return Check(service, name, OK, detail)


def warn(service: str, name: str, detail: str, fix: str = "") -> Check:
    return Check(service, name, WARN, detail, fix)


def fail(service: str, name: str, detail: str, fix: str) -> Check:
    return Check(service, name, FAIL, detail, fix)


def skipped(service: str, names: Sequence[str], why: str) -> list[Check]:
    return [Check(service, name, SKIP, why) for name in names]


def run_preflight(resources: Sequence[Any]) -> list[Check]:
    """Every resource's checks, in order; a check that breaks is reported, never raised."""
    checks: list[Check] = []
    for resource in resources:
        try:
            checks.extend(resource.preflight())
        except Exception as exc:  # a bug in one check must not hide the others or crash a sensor
            service = getattr(resource, "preflight_service", type(resource).__name__)
            checks.append(
                fail(
                    service, "preflight", f"the check itself failed ({type(exc).__name__})", "report this bug"
                )
            )
    return checks


def render_table(checks: Sequence[Check]) -> str:
    rows = [("SERVICE", "CHECK", "RESULT", "DETAIL / WHAT TO DO")]
    for c in checks:
        text = c.detail
        if c.fix:
            text = f"{text} -> {c.fix}" if text else c.fix
        rows.append((c.service, c.name, c.status, text))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows
    )


def render_markdown(checks: Sequence[Check]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| service | check | result | detail / what to do |", "|---|---|---|---|"]
    for c in checks:
        text = f"{c.detail} -> {c.fix}" if c.fix and c.detail else (c.fix or c.detail)
        result = f"**{c.status}**" if c.failed else c.status
        lines.append(f"| {cell(c.service)} | {cell(c.name)} | {result} | {cell(text)} |")
    return "\n".join(lines)


def refusal(checks: Sequence[Check]) -> str | None:
    """The message a schedule or sensor gives for not starting work, or None when nothing failed."""
    failures = [c for c in checks if c.failed]
    if not failures:
        return None
    parts = [
        (f"{c.service} {c.name}: {c.detail} -> {c.fix}" if c.fix else f"{c.service} {c.name}: {c.detail}")
        for c in failures
    ]
    return "preflight failed, no run started: " + "; ".join(parts)


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
