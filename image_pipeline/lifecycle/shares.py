"""A worker's share of a shared backlog: which prompts its next run takes, claimed before the run starts.

Workers that share a ledger (PostgreSQL) all read the same queue in the same order. Left to themselves they
would all start a run over the same first batch; the first claim wins every prompt of it and the others'
runs find nothing to do, so three workers go no faster than one. Instead each worker claims its next share
in the ledger before it starts a run (one transaction, in partition order, so two workers never wait on each
other in a cycle), skipping prompts that another live worker holds or that are already in Done, and the run
covers just that share. The run's own claims are the same owner's, so they only renew these.

The share is what is still free divided among the workers that hold no share right now (this one
included): workers started together split a backlog in equal parts and each goes through its part in one
run (the fewest runs, Sheets requests and run boundaries), and a worker that finishes early takes its part
of what is left. The batch size caps a share, so a long backlog still comes in several rounds, which evens
out workers of unequal speed (the idea of guided self-scheduling, Polychronopoulos & Kuck, IEEE Trans.
Computers C-36(12), 1987, with the busy workers left out of the divisor). The workers count themselves in
the ledger's ``workers`` table when they start, at each share and every heartbeat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from image_pipeline.lifecycle.ledger import Ledger

# The divisor of a worker's first share when it sees no other worker yet: one may be starting just now.
MIN_DIVISOR = 4
# A worker that said nothing for this long (at each share and every heartbeat, 10 s) is not counted.
WORKER_SEEN_S = 45.0


@dataclass(frozen=True)
class Candidate:
    """A queued prompt as the ledger keys it."""

    key: str
    fingerprint: str
    prompt: str


def worker_of(owner: str) -> str:
    """The process part of an owner token (``host/node:pid``), without the run id: one worker, many runs."""
    return owner.rsplit(":", 1)[0]


def free_candidates(
    book: Ledger, candidates: Sequence[Candidate], me: str, is_stale: Callable[[str], bool]
) -> tuple[list[Candidate], int]:
    """The candidates that no other live worker holds and that are not in Done yet; and how many other
    workers hold claims right now. A claim whose owner is provably gone counts as free (the claim takes
    it over)."""
    verdicts: dict[str, bool] = {}
    held: set[str] = set()
    logged: set[tuple[str, str]] = set()
    others: set[str] = set()
    for key, fingerprint, owner, is_logged in book.holders([c.key for c in candidates]):
        if is_logged:
            logged.add((key, fingerprint))
            continue
        if worker_of(owner) == me:
            continue
        if owner not in verdicts:
            verdicts[owner] = is_stale(owner)
        if not verdicts[owner]:
            held.add(key)
            others.add(worker_of(owner))
    free = [c for c in candidates if c.key not in held and (c.key, c.fingerprint) not in logged]
    return free, len(others)


def share_size(free: int, idle: int, *, unsure: bool, floor: int, ceiling: int, slots: int = 1) -> int:
    """How many of ``free`` prompts the next run takes: free / ``idle`` rounded up to whole rounds of the
    run's ``slots`` generation requests at once, at least ``floor`` (enough to keep the slots busy), at
    most ``ceiling`` (the batch size).

    ``idle``: the workers without a share now, this one included (the workers holding claims are busy
    with theirs). ``unsure``: this worker's first share and no other worker seen yet; another may be
    starting just now, so it takes about a quarter (and the rest in a second run if still alone).

    Whole rounds: a share of 34 on 4 slots is 8 full rounds and one with a single request, the same time
    as 36; three workers over 100 prompts take 36, 32 and 32 (9, 8 and 8 rounds) rather than 34, 33 and 33
    (9 each), so two of them are done a round earlier and the last one's Done step does not queue behind
    theirs for the queue lock."""
    if free <= 0:
        return 0
    divisor = MIN_DIVISOR if unsure else max(1, idle)
    per_slot = max(1, slots)
    even = math.ceil(math.ceil(free / divisor) / per_slot) * per_slot
    return min(free, ceiling, max(floor, even))


def reserve(
    book: Ledger,
    free: Sequence[Candidate],
    size: int,
    *,
    owner: str,
    lease_s: float,
    is_stale: Callable[[str], bool],
    order: Sequence[str],
) -> list[str]:
    """Up to ``size`` of ``free`` claimed for ``owner`` in one transaction, in partition order; stops before
    the claimed keys would span more than twice ``size`` partitions (a run is one partition range, and the
    prompts inside it that others hold are only skipped)."""
    index = {key: i for i, key in enumerate(order)}
    ordered = sorted((c for c in free if c.key in index), key=lambda c: index[c.key])
    taken: list[str] = []
    with book.batch():
        for c in ordered:
            if taken and index[c.key] - index[taken[0]] + 1 > 2 * size:
                break
            if book.claim(
                c.key, c.fingerprint, owner=owner, prompt=c.prompt, lease_s=lease_s, is_stale=is_stale
            ):
                taken.append(c.key)
                if len(taken) >= size:
                    break
    return taken
