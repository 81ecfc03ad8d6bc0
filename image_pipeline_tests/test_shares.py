"""A worker's share of a shared backlog (``lifecycle/shares.py``), on SQLite and on a real PostgreSQL server.

The share's size (guided self-scheduling), prompts that other live workers hold or that are in Done left
out, a dead worker's claims taken over, the ledger's register of workers, and workers reserving at the same
moment never getting the same prompt while together taking all of them.
"""

from __future__ import annotations

import threading
import time

from image_pipeline.lifecycle.ledger import Ledger, PostLedger
from image_pipeline.lifecycle.shares import Candidate, free_candidates, reserve, share_size, worker_of

# the same two ledgers as the ledger's own tests: a SQLite file, or a fresh database on a real PostgreSQL
from image_pipeline_tests import test_ledger_sql

pg, store, _live = test_ledger_sql.pg, test_ledger_sql.store, test_ledger_sql._live


def _candidates(n: int) -> list[Candidate]:
    return [Candidate(f"p{i:03d}", f"f{i}", f"prompt {i}") for i in range(n)]


def test_the_share_is_what_is_free_over_the_idle_workers_within_bounds() -> None:
    # a worker that sees no other one at its first share takes a quarter: another may be starting now
    assert share_size(100, 1, unsure=True, floor=8, ceiling=200) == 25
    # three workers without a share: a third each; the last of them, with the others busy: the rest
    assert share_size(100, 3, unsure=False, floor=8, ceiling=200) == 34
    assert share_size(66, 2, unsure=False, floor=8, ceiling=200) == 33
    assert share_size(33, 1, unsure=False, floor=8, ceiling=200) == 33
    assert share_size(75, 1, unsure=False, floor=8, ceiling=50) == 50  # the batch size caps it
    assert share_size(12, 3, unsure=False, floor=8, ceiling=200) == 8  # never below two rounds of slots
    assert share_size(5, 3, unsure=False, floor=8, ceiling=200) == 5
    assert share_size(0, 3, unsure=False, floor=8, ceiling=200) == 0


def test_a_share_is_whole_rounds_of_the_generation_slots() -> None:
    # three workers over 100 prompts on 4 slots each: 36, 32, 32 (9, 8, 8 rounds), not 34, 33, 33 (9 each)
    assert share_size(100, 3, unsure=False, floor=8, ceiling=200, slots=4) == 36
    assert share_size(64, 2, unsure=False, floor=8, ceiling=200, slots=4) == 32
    assert share_size(32, 1, unsure=False, floor=8, ceiling=200, slots=4) == 32
    # one worker alone at first: about a quarter, in whole rounds (7), then the rest (18 rounds)
    assert share_size(100, 1, unsure=True, floor=8, ceiling=200, slots=4) == 28
    assert share_size(72, 1, unsure=False, floor=8, ceiling=200, slots=4) == 72
    # never more than what is free, nor than the batch size, whatever the rounding
    assert share_size(33, 1, unsure=False, floor=8, ceiling=200, slots=4) == 33
    assert share_size(75, 1, unsure=False, floor=8, ceiling=50, slots=4) == 50


def test_free_leaves_out_what_live_workers_hold_and_what_is_done(store: PostLedger) -> None:
    book = store.open()
    cands = _candidates(6)
    other, dead, me = "h/n:11:run-a", "h/n:12:run-b", "h/n:13:run-c"
    assert book.claim("p000", "f0", owner=other, prompt="x", lease_s=600, is_stale=_live)
    assert book.claim("p001", "f1", owner=dead, prompt="x", lease_s=600, is_stale=_live)
    assert book.claim("p002", "f2", owner="h/n:13:earlier-run", prompt="x", lease_s=600, is_stale=_live)
    book.update("p003", "f3", done_state="LOGGED")  # in Done already
    book.update("p004", "fOLD", done_state="LOGGED")  # an edited row: the new text is a new prompt
    assert book.claim("p005", "f5", owner=other, prompt="x", lease_s=0.0, is_stale=_live)  # lease ran out

    free, others = free_candidates(book, cands, worker_of(me), lambda owner: owner == dead)
    assert [c.key for c in free] == ["p001", "p002", "p004", "p005"]
    assert others == 1  # the live one; a dead worker and this worker's own earlier run are not others
    # this worker's earlier run has finished (its claims are stale to a claim), the dead one's too
    finished = {dead, "h/n:13:earlier-run"}
    taken = reserve(
        book, free, 10, owner=me, lease_s=600, is_stale=finished.__contains__, order=[c.key for c in cands]
    )
    assert taken == ["p001", "p002", "p004", "p005"]
    assert {book.get(k, f"f{k[-1]}").owner for k in taken} == {me}  # type: ignore[union-attr]


def test_a_share_is_consecutive_in_partition_order(store: PostLedger) -> None:
    book = store.open()
    cands = _candidates(30)
    order = [c.key for c in cands]
    # another worker holds every other prompt from p004 on: the share stops before spanning 2 x its size
    for c in cands[4::2]:
        assert book.claim(c.key, c.fingerprint, owner="h/n:1:other", prompt="x", lease_s=600, is_stale=_live)
    taken = reserve(book, cands, 5, owner="h/n:2:mine", lease_s=600, is_stale=_live, order=order)
    assert taken == ["p000", "p001", "p002", "p003", "p005"]
    span = order.index(taken[-1]) - order.index(taken[0]) + 1
    assert span <= 2 * 5


def test_the_register_of_workers(store: PostLedger) -> None:
    book, other_view = store.open(), store.open()
    book.seen_worker("h/a:1")
    other_view.seen_worker("h/b:2")
    book.seen_worker("h/a:1")  # again: one row
    assert book.workers_seen(45) == {"h/a:1", "h/b:2"}
    time.sleep(0.3)
    book.seen_worker("h/a:1")
    assert book.workers_seen(0.2) == {"h/a:1"}  # b said nothing for 0.3 s
    book.forget_worker("h/a:1")
    assert other_view.workers_seen(45) == {"h/b:2"}


def test_workers_reserving_together_split_the_backlog(store: PostLedger) -> None:
    cands = _candidates(90)
    order = [c.key for c in cands]
    start = threading.Barrier(3)
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            book = Ledger(store.path, url=store.url)  # a handle of its own, as another process has
            me = f"host/{name}:1"
            left, first, mine = list(cands), True, []
            book.seen_worker(me)  # as `run` does before its preflight: started together, all counted
            start.wait(30)
            while left:
                book.seen_worker(me)
                free, others = free_candidates(book, left, me, _live)
                workers = max(len(book.workers_seen(45) | {me}), others + 1)
                unsure = first and workers == 1
                n = share_size(len(free), workers - others, unsure=unsure, floor=4, ceiling=200)
                first = False
                taken = reserve(
                    book, free, n, owner=f"{me}:run{len(mine)}", lease_s=600, is_stale=_live, order=order
                )
                if not taken:
                    break
                mine.extend(taken)
                time.sleep(0.01 * len(taken))  # the run over this share: the others reserve meanwhile
                left = [c for c in free if c.key not in set(taken)]
            got[name] = mine
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    everything = [k for keys in got.values() for k in keys]
    assert len(everything) == len(set(everything)) == 90  # nobody got a prompt twice, none was left
    sizes = {name: len(keys) for name, keys in got.items()}
    print(f"shares of 90 prompts among 3 workers reserving at once: {sizes}")
    assert all(size > 0 for size in sizes.values())  # no worker left idle while the others had a backlog
