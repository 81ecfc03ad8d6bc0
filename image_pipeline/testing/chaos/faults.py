"""Fault injection: which faults each emulator injects, where, how often, and a count of what it injected.

``CountingFaultPlan`` is the emulators' ``FaultPlan`` that remembers every fault it drew (the emulators'
logs miss faults on hung requests), keeps the service-level faults of issue 12 to the endpoints where they
mean something, caps them per run and plants each at least once; ``_configure`` sets the three emulators
up for a chaos run (quotas and flood control off, one plan each).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from image_pipeline.testing.chaos.truth import REJECTED_WORD
from image_pipeline.testing.emulators.base import (
    COMMITTED_503,
    GARBAGE,
    RESET,
    TIMEOUT,
    TRUNCATE,
    Fault,
    FaultPlan,
    Request,
)
from image_pipeline.testing.emulators.google import WRITE_ENDPOINTS
from image_pipeline.testing.sandbox import Sandbox

EMULATOR_TIMEOUT_HOLD_S = 2.0  # longer than the worker's 1 s timeout, short enough not to pile up threads


# Service-level faults (issue 12): where each may strike, and how often at most in one run
ROWS_WRITES = frozenset(WRITE_ENDPOINTS)
SENDS = frozenset({"sendphoto", "senddocument", "sendmediagroup"})
GENERATIONS_NOT = frozenset({"download", "hub_api", "probe"})
RIGHTS, LONG_FLOOD, PROVIDER_REFUSAL = "rights", "flood:3600", "provider_refusal"


@dataclass
class CountingFaultPlan(FaultPlan):
    """A FaultPlan that remembers what it injected: the emulators' own logs miss faults on hung requests.
    ``only`` keeps a fault to the endpoints where it means something (a committed write on a write, a
    rights error on a send), ``limits`` caps how many times a fault is injected in the run."""

    injected: Counter[str] = field(default_factory=Counter)
    # the fault drawn for the request the calling server thread is handling (one request per thread)
    last: dict[int, Fault | None] = field(default_factory=dict)
    only: dict[Fault, Any] = field(default_factory=dict)  # fault -> predicate on the endpoint name
    limits: dict[Fault, int] = field(default_factory=dict)
    # the request each server thread is handling (noted by an on_request hook) and the named faults
    # injected with the request's body: which prompt the provider refused
    current: dict[int, Request] = field(default_factory=dict)
    named_hits: list[tuple[str, bytes]] = field(default_factory=list)
    # (fault, n): inject the fault on the n-th request it fits, so every run meets it at least once
    planned: list[tuple[Fault, int]] = field(default_factory=list)
    _fitting: Counter[str] = field(default_factory=Counter)

    def note(self, request: Request, endpoint: str) -> None:
        self.current[threading.get_ident()] = request

    def _fits(self, fault: Fault, endpoint: str) -> bool:
        allowed = self.only.get(fault)
        if allowed is not None and not allowed(endpoint):
            return False
        return fault not in self.limits or self.injected[str(fault)] < self.limits[fault]

    def draw(self, endpoint: str) -> Fault | None:
        fault = super().draw(endpoint)
        with self._lock:
            for wanted, n in self.planned:
                allowed = self.only.get(wanted)
                if allowed is None or allowed(endpoint):
                    self._fitting[str(wanted)] += 1
                    if self._fitting[str(wanted)] == n:
                        fault = wanted
            if fault is not None and not self._fits(fault, endpoint):
                fits = [c for c in self.choices if self._fits(c, endpoint)]
                fault = self._rng.choice(fits) if fits else None
            self.last[threading.get_ident()] = fault
            if fault is not None:
                self.injected[str(fault)] += 1
            if isinstance(fault, str) and fault in self.only:
                request = self.current.get(threading.get_ident())
                self.named_hits.append((fault, request.body if request is not None else b""))
        return fault


def _configure(sandbox: Sandbox, fault_rate: float, seed: int, prompts: int = 100) -> list[CountingFaultPlan]:
    google, hf, telegram = sandbox.google, sandbox.hf, sandbox.telegram
    # Quotas and flood control are their own tests; here they would only turn into long waits.
    google.read_quota_per_minute = google.write_quota_per_minute = None
    google.project_read_quota_per_minute = google.project_write_quota_per_minute = None
    telegram.per_chat_per_minute = None
    telegram.global_per_second = None
    hf.loading_estimated_time = 0.5  # what an injected 503 asks the client to wait
    hf.rejected_prompts = {REJECTED_WORD}
    common: list[Fault] = [500, 503, 429, TIMEOUT, RESET, TRUNCATE]
    own: list[list[Fault]] = [[COMMITTED_503], [GARBAGE, PROVIDER_REFUSAL], [RIGHTS, LONG_FLOOD]]
    only: dict[Fault, Any] = {
        COMMITTED_503: lambda endpoint: endpoint in ROWS_WRITES,
        RIGHTS: lambda endpoint: endpoint in SENDS,
        LONG_FLOOD: lambda endpoint: endpoint in SENDS,
        PROVIDER_REFUSAL: lambda endpoint: endpoint not in GENERATIONS_NOT,
    }
    # each stop or hour-long wait costs a worker restart: a few per run show the behaviour
    limits: dict[Fault, int] = {RIGHTS: 2, LONG_FLOOD: 1, PROVIDER_REFUSAL: max(1, prompts // 40)}
    # and each at least once, early enough for a small run to meet it (the n-th request it fits)
    planned: list[list[tuple[Fault, int]]] = [
        [(COMMITTED_503, 7)],
        [(PROVIDER_REFUSAL, 4)],
        [(RIGHTS, 6), (LONG_FLOOD, 14)],
    ]
    plans = []
    for n, emulator in enumerate((google, hf, telegram)):
        plan = CountingFaultPlan(
            probability=fault_rate,
            choices=[*common, *own[n]],
            seed=seed * 31 + n,
            only=only,
            limits=limits,
            planned=planned[n] if fault_rate > 0 else [],
        )
        emulator.set_faults(plan)
        emulator.timeout_hold_s = EMULATOR_TIMEOUT_HOLD_S
        plans.append(plan)
    return plans
