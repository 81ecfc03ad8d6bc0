"""Posting slots: the times of day posts go out, and which queued row takes which one.

Pure arithmetic on aware datetimes, no Dagster and no I/O. Local times are read in the configured zone with
zoneinfo's fold semantics, which decide the two daylight-saving cases: a time that does not exist (02:30 on
the spring-forward day in Europe/Berlin) takes the offset from before the change, so it lands an hour later
on the wall clock (03:30); a time that exists twice (02:30 on the fall-back day) is its first occurrence
(fold=0, still summer time). Every instant handed out is in UTC, so comparisons never meet a fold.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

POST = "post"  # a missed slot's row is posted at the next tick, with a notice
SKIP = "skip"  # a missed slot's row waits for the next free slot
MISSED_MODES = (POST, SKIP)

_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::00)?$")
_DATE_ONLY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from None


def parse_time(text: str) -> dtime | None:
    """``13:00`` (or ``13:00:00``, as a sheet may show a time cell) -> a time of day; None if not one."""
    match = _TIME_RE.match(text.strip())
    return dtime(int(match.group(1)), int(match.group(2))) if match else None


def parse_slots(text: str) -> tuple[dtime, ...]:
    """``09:00,13:00,18:30`` -> the slot times, sorted, each once; ValueError names the bad entry."""
    found: set[dtime] = set()
    for raw in text.replace(";", ",").split(","):
        if not raw.strip():
            continue
        at = parse_time(raw)
        if at is None:
            raise ValueError(f"IMAGE_PIPELINE_SLOTS: {raw.strip()!r} is not a time of day like 09:00")
        found.add(at)
    if not found:
        raise ValueError("IMAGE_PIPELINE_SLOTS is set but names no time")
    return tuple(sorted(found))


def name_of(at: dtime) -> str:
    return f"{at.hour:02d}:{at.minute:02d}"


def instant(day: date, at: dtime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time (fold=0: the first of a repeated time, a missing one shifted)."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def occurrences(slots: Sequence[dtime], zone: ZoneInfo, start: datetime) -> Iterator[datetime]:
    """Every slot instant at or after ``start``, ascending, each instant once (a shifted missing time may
    coincide with another slot)."""
    day = start.astimezone(zone).date() - timedelta(days=1)  # a slot's instant may fall on the day before
    last: datetime | None = None
    while True:
        for when in sorted({instant(day, at, zone) for at in slots}):
            if when >= start and (last is None or when > last):
                last = when
                yield when
        day += timedelta(days=1)


def parse_post_at(text: str, zone: ZoneInfo, now: datetime) -> datetime | None:
    """A row's ``post_at`` cell -> its UTC instant; None when empty; ValueError with a reason a person can act
    on. A date and time is read in ``zone`` (an ISO time with an offset or Z as written); a time of day alone
    (``13:00``) is its next occurrence from ``now``."""
    raw = " ".join(str(text).split())
    if not raw:
        return None
    at = parse_time(raw)
    if at is not None:
        return next(occurrences([at], zone, now))
    problem = (
        f"post_at {raw[:40]!r} is not a date and time (2026-12-24 18:00, in {zone.key}), an ISO time with "
        "an offset (2026-12-24T18:00+01:00) or a time of day (13:00)"
    )
    if _DATE_ONLY_RE.match(raw):
        raise ValueError(f"{problem}: the time is missing")
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(problem) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)  # fold=0, as for the slots
    return parsed.astimezone(UTC)


def post_at_problem(text: str) -> str:
    """Why a ``post_at`` cell cannot be read, whatever the zone ("" when it can): rows.py's validation."""
    try:
        parse_post_at(text, ZoneInfo("UTC"), datetime.now(UTC))
    except ValueError as exc:
        return str(exc)
    return ""


@dataclass(frozen=True)
class Planned:
    prompt_id: str
    at: datetime  # UTC
    source: str  # "slot", "post_at", "requested" (its run was asked for), "kept" (due within the grace)
    missed: bool = False  # its time passed while nothing ran; posted now (missed mode "post")


@dataclass
class Plan:
    entries: list[Planned] = field(default_factory=list)  # ascending by time
    errors: dict[str, str] = field(default_factory=dict)  # rows whose post_at cannot be read
    skipped: list[Planned] = field(default_factory=list)  # missed times given up (missed mode "skip")


def assign(
    queue: Sequence[tuple[str, str]],
    slots: Sequence[dtime],
    zone: ZoneInfo,
    now: datetime,
    *,
    requested: Mapping[str, datetime] | None = None,
    earlier: Mapping[str, datetime] | None = None,
    grace_s: float = 60.0,
    missed: str = POST,
) -> Plan:
    """Each queued row's time: ``queue`` is (prompt id, post_at cell) in queue order.

    A row whose run was already requested keeps its time; a post_at row has its own (and occupies that
    instant); every other row takes the next free slot from ``now`` in queue order. ``earlier`` is the
    previous plan: a time it gave that passed less than ``grace_s`` ago is still on time (due now); one that
    passed longer ago, and a post_at in the past, was missed: posted now (``missed="post"``) or given up for
    the next free slot (``"skip"``)."""
    requested = requested or {}
    earlier = earlier or {}
    plan = Plan()
    late = now - timedelta(seconds=grace_s)
    taken: set[datetime] = set()
    fixed: dict[str, Planned] = {}
    free: list[str] = []
    for pid, cell in queue:
        if pid in requested:
            fixed[pid] = Planned(pid, requested[pid], "requested")
            taken.add(requested[pid])
            continue
        try:
            own = parse_post_at(cell, zone, now)
        except ValueError as exc:
            plan.errors[pid] = str(exc)
            continue
        source, when = ("post_at", own) if own is not None else ("kept", earlier.get(pid))
        if when is None or (source == "kept" and when > now):
            free.append(pid)  # not due yet: placed afresh, as the queue is now
        elif when >= late:
            fixed[pid] = Planned(pid, when, source)
            taken.add(when)
        elif missed == POST:
            fixed[pid] = Planned(pid, when, source, missed=True)
        else:
            plan.skipped.append(Planned(pid, when, source, missed=True))
            free.append(pid)
    upcoming = occurrences(slots, zone, now)
    for pid in free:
        when = next(upcoming)
        while when in taken:
            when = next(upcoming)
        fixed[pid] = Planned(pid, when, "slot")
    position = {pid: i for i, (pid, _) in enumerate(queue)}
    plan.entries = sorted(fixed.values(), key=lambda p: (p.at, position[p.prompt_id]))
    return plan
