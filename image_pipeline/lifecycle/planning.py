"""Posting at slot times: what one tick of the slot sensor decides, and the wait of a post for its slot.

A slot's run is requested ``lead_s`` before the slot, so generation (however slow the provider) is done
early; its post then waits in ``post_one`` until the slot's instant, carried by the run's tag, and goes out
through the ledger like any other (intent, send, message id). The tick remembers in its cursor which rows
it asked a run for (so a second tick asks for none) and what it planned (so a slot that passed while
nothing ran is recognised as missed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Protocol
from zoneinfo import ZoneInfo

from image_pipeline.domain.slots import POST, Planned, assign

POST_AT_TAG = "image_pipeline/post_at"  # the slot's instant, UTC epoch seconds: the post waits for it
SLOT_TAG = "image_pipeline/slot"  # the same instant in the slot zone, for people (Runs list, run page)
GRACE_S = 60.0  # a slot is on time while it passed less than this ago: "within a minute of the slot"
WAIT_STEP_S = 30.0  # the claim is renewed this often while a post waits (a wait may outlast the lease)
# A requested run's row keeps its slot this long; a row still queued after that (its run failed and left
# it queued, or never started) is planned afresh. A second run for it is harmless: the ledger answers
# "already posted" or "another run holds it".
REQUEST_TTL_S = 3600.0
PLAN_KEPT = 200  # planned rows remembered in the cursor (missed-slot detection needs only the first ones)
SHOWN = 5  # planned rows named in the tick's text


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def slot_of(tags: Mapping[str, str]) -> float | None:
    raw = tags.get(POST_AT_TAG, "")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def wait_for_slot(
    tags: Mapping[str, str],
    renew: Callable[[], bool],
    log: Callable[[str], None],
    clock: Clock = SYSTEM_CLOCK,
) -> bool:
    """Return once the run's slot has come (at once for a run without one, or a slot already past); False
    when another run took the prompt over during the wait. The wait happens before the ledger's POSTING
    intent, so a run stopped while it waits leaves nothing uncertain behind."""
    due = slot_of(tags)
    if due is None:
        return True
    told = False
    while (left := due - clock.now()) > 0:
        if not told:
            log(f"waiting {left:.0f} s for the slot at {tags.get(SLOT_TAG) or due}")
            told = True
        clock.sleep(min(left, WAIT_STEP_S))
        if not renew():
            return False
    return True


@dataclass(frozen=True)
class SlotRun:
    """One run to request now: the rows of one slot (or the rows to mark INVALID, ``at`` None)."""

    at: datetime | None
    prompt_ids: list[str]
    missed: bool = False


@dataclass
class Tick:
    runs: list[SlotRun] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # for the alert chat
    logs: list[str] = field(default_factory=list)  # for the tick's log
    summary: str = ""  # the next slots, for the tick's text in the UI
    cursor: dict[str, object] = field(default_factory=dict)


def local(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def plan_tick(
    queue: Sequence[tuple[str, str]],
    slots: Sequence[dtime],
    zone: ZoneInfo,
    now: float,
    *,
    lead_s: float,
    missed: str = POST,
    state: Mapping[str, object] | None = None,
) -> Tick:
    """The runs due now for ``queue`` ((prompt id, post_at cell) in queue order, held rows left out), given
    the previous tick's ``state`` (its cursor fields); the new state is ``Tick.cursor``."""
    state = state or {}
    ids = {pid for pid, _ in queue}
    requested = {
        pid: float(ts)
        for pid, ts in _mapping(state.get("requested")).items()
        if pid in ids and float(ts) + REQUEST_TTL_S > now
    }
    earlier = {pid: _utc(ts) for pid, ts in _mapping(state.get("plan")).items()}
    moment = _utc(now)
    plan = assign(
        queue,
        slots,
        zone,
        moment,
        requested={pid: _utc(ts) for pid, ts in requested.items()},
        earlier=earlier,
        grace_s=GRACE_S,
        missed=missed,
    )
    tick = Tick()
    if plan.errors:
        # asked for at once: the run's validation marks them INVALID with the reason, and Done records it
        tick.runs.append(SlotRun(None, list(plan.errors)))
        for pid, reason in plan.errors.items():
            requested[pid] = now
            tick.logs.append(f"{pid}: {reason}")
    for skipped in plan.skipped:
        tick.logs.append(
            f"{skipped.prompt_id}: its time {local(skipped.at, zone)} passed while nothing ran; it waits for "
            "the next free slot (IMAGE_PIPELINE_MISSED_SLOT=skip)"
        )
    waiting = [e for e in plan.entries if e.source != "requested"]
    due = [e for e in waiting if e.at.timestamp() - lead_s <= now]
    for at in sorted({e.at for e in due}):
        group = [e for e in due if e.at == at]
        late = any(e.missed for e in group)
        tick.runs.append(SlotRun(at, [e.prompt_id for e in group], missed=late))
        for e in group:
            requested[e.prompt_id] = at.timestamp()
            if e.missed:
                tick.notices.append(
                    f"image-pipeline: prompt {e.prompt_id} missed its time {local(at, zone)} (nothing ran "
                    "then); posting it now"
                )
    later = [e for e in waiting if e not in due]
    tick.summary = _summary(plan.entries, zone, requested)
    tick.cursor = {
        "requested": requested,
        "plan": {e.prompt_id: e.at.timestamp() for e in later[:PLAN_KEPT]},
        "next_due": min((e.at.timestamp() - lead_s for e in later), default=None),
        "summary": tick.summary,
    }
    return tick


def _summary(entries: Sequence[Planned], zone: ZoneInfo, requested: Mapping[str, float]) -> str:
    if not entries:
        return "no queued row to plan"
    shown = []
    for e in entries[:SHOWN]:
        state = " (run requested)" if e.prompt_id in requested else ""
        shown.append(f"{local(e.at, zone)} {e.prompt_id}{state}")
    more = f"; {len(entries) - SHOWN} more planned" if len(entries) > SHOWN else ""
    return "next slots: " + ", ".join(shown) + more


def _mapping(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
