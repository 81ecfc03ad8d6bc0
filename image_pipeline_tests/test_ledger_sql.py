"""The post ledger on both of its databases: SQLite (the embedded default) and a real PostgreSQL server.

Each behaviour runs on both: claims and their takeover by lease, fencing of the writes after an irreversible
step, pauses and daily counters under concurrent workers, removals, versioned migrations (an old SQLite file
upgraded in place), processes racing to claim the same prompts, and the owner token across PID namespaces.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from image_pipeline.domain.errors import ClaimLost
from image_pipeline.lifecycle import ledger_schema
from image_pipeline.lifecycle.ledger import Ledger, PostLedger, owner_token, stale_owner_check
from image_pipeline.lifecycle.ledger_schema import SchemaTooNew, drop_engine
from image_pipeline_tests.postgres_server import PostgresServer, postgres_server

ROOT = Path(__file__).resolve().parents[1]
_names = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server(db_name="ledger_admin", user="ledger") as server:
        yield server


def _fresh_pg_url(pg: PostgresServer) -> str:
    return pg.create_database(f"ledger_{os.getpid()}_{next(_names)}")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PostLedger]:
    """The ledger resource as a deployment configures it: a SQLite path, or a PostgreSQL URL."""
    if request.param == "postgres":
        resource = PostLedger(
            path=str(tmp_path / "unused.sqlite"), url=_fresh_pg_url(request.getfixturevalue("pg"))
        )
    else:
        resource = PostLedger(path=str(tmp_path / "ledger.sqlite"))
    yield resource
    drop_engine(resource.url or ledger_schema.sqlite_url(resource.path))


def _live(_owner: str) -> bool:
    return False


def _gone(_owner: str) -> bool:
    return True


# ---------------------------------------------------------------------------------------------- claims
def test_a_claim_is_exclusive_idempotent_and_released(store: PostLedger) -> None:
    book = store.open()
    assert book.claim("p1", "f", owner="A", prompt="a fox", lease_s=600, is_stale=_live)
    assert book.claim("p1", "f", owner="A", prompt="a fox", lease_s=600, is_stale=_live)  # renewal
    assert not book.claim("p1", "f", owner="B", prompt="a fox", lease_s=600, is_stale=_live)
    other = store.open()  # another handle (another worker's view) sees the same claim
    assert not other.claim("p1", "f", owner="B", prompt="a fox", lease_s=600, is_stale=_live)
    book.release("p1", "f", "B")  # not B's to release
    assert book.get("p1", "f").owner == "A"  # type: ignore[union-attr]
    book.release("p1", "f", "A")
    assert other.claim("p1", "f", owner="B", prompt="a fox", lease_s=600, is_stale=_live)
    entry = other.get("p1", "f")
    assert entry is not None and entry.owner == "B" and entry.prompt == "a fox"
    # the lease is in the database's epoch seconds, about lease_s from its now
    print(f"lease_until - updated_at = {entry.lease_until - entry.updated_at:.3f} s")
    assert abs(entry.lease_until - entry.updated_at - 600) < 1


def test_a_lapsed_lease_is_taken_over_and_a_stale_owner_only_by_one(store: PostLedger) -> None:
    book = store.open()
    assert book.claim("p1", "f", owner="A", prompt="", lease_s=0, is_stale=_live)  # lapses at once
    assert book.claim("p1", "f", owner="B", prompt="", lease_s=600, is_stale=_live)  # by the lease alone
    asked: list[str] = []

    def judged_gone(owner: str) -> bool:
        asked.append(owner)
        return True

    # a live lease: taken only when its owner is judged gone (run finished, process gone)
    assert book.claim("p1", "f", owner="C", prompt="", lease_s=600, is_stale=judged_gone)
    assert asked == ["B"]
    # workers that all judged C gone (and nobody else): the compare-and-set on C lets one through
    with ThreadPoolExecutor(8) as pool:
        wins = list(
            pool.map(
                lambda n: store.open().claim(
                    "p1", "f", owner=f"W{n}", prompt="", lease_s=600, is_stale=lambda o: o == "C"
                ),
                range(8),
            )
        )
    print(f"takeover winners: {wins.count(True)} of {len(wins)}")
    assert wins.count(True) == 1


def test_leases_are_compared_with_the_database_clock(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL only: a SQLite ledger lives on one host, whose clock is the database's clock
    store = PostLedger(path=str(tmp_path / "unused.sqlite"), url=_fresh_pg_url(pg))
    try:
        book = store.open()
        assert book.claim("p1", "f", owner="A", prompt="", lease_s=600, is_stale=_live)
        # this worker's clock runs two hours ahead: by it the lease is long over, by the server's it is not
        skewed = time.time() + 7200
        monkeypatch.setattr(time, "time", lambda: skewed)
        assert not book.claim("p1", "f", owner="B", prompt="", lease_s=600, is_stale=_live)
        assert book.get("p1", "f").owner == "A"  # type: ignore[union-attr]
    finally:
        drop_engine(store.url)


# ---------------------------------------------------------------------------------------------- fencing
def test_writes_after_an_irreversible_step_are_refused_once_the_claim_was_taken_over(
    store: PostLedger,
) -> None:
    a, b = store.open(), store.open()
    assert a.claim("p1", "f", owner="A", prompt="", lease_s=0, is_stale=_live)
    a.update("p1", "f", owner="A", post_state="POSTING")  # fenced intent: A still holds it
    assert b.claim("p1", "f", owner="B", prompt="", lease_s=600, is_stale=_live)  # A's lease ran out
    for fields in (
        {"post_state": "POSTED", "message_id": "42"},
        {"done_state": "LOGGED", "final_status": "SUCCESS"},
        {"queue_state": "REMOVED"},
    ):
        with pytest.raises(ClaimLost) as lost:
            a.update("p1", "f", owner="A", **fields)
        print(lost.value)
        assert "held by B" in str(lost.value)
    with pytest.raises(ClaimLost, match="'message_id': '7'"):
        a.update("p1", "f", owner="A", post_state="POSTED", message_id="7")
    entry = b.get("p1", "f")
    assert entry is not None and (entry.post_state, entry.message_id, entry.done_state) == (
        "POSTING",
        "",
        None,
    )
    b.update("p1", "f", owner="B", post_state="POSTED", message_id="43")
    assert b.get("p1", "f").message_id == "43"  # type: ignore[union-attr]
    with pytest.raises(ClaimLost, match="not in the ledger"):
        a.update("p2", "f", owner="A", post_state="POSTED")
    assert a.get("p2", "f") is None
    # inside a batch a refused write rolls back the batch's other writes too
    with pytest.raises(ClaimLost), b.batch():
        b.update("p1", "f", owner="B", done_state="LOGGING")
        b.update("p1", "f", owner="A", done_state="LOGGED")
    assert b.get("p1", "f").done_state is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="lease_until"):  # a claim is made by claim() only
        b.update("p1", "f", lease_until=0)


# ---------------------------------------------------------------------------------------------- budget guard
def test_pauses_notify_once_across_workers_and_keep_their_order(store: PostLedger) -> None:
    with ThreadPoolExecutor(8) as pool:
        firsts = list(pool.map(lambda _n: store.open().pause("HF", "credits gone"), range(8)))
    print(f"pause() returned True {firsts.count(True)} time(s) of {len(firsts)}")
    assert firsts.count(True) == 1
    book = store.open()
    pause = book.pause_state()
    assert pause is not None and pause.service == "HF" and not pause.timed
    assert [p.service for p in book.resume()] == ["HF"] and book.pause_state() is None
    soon, later = time.time() + 600, time.time() + 1200
    assert book.pause("Telegram", "flood wait", until=soon)
    assert not book.pause("Telegram", "flood wait", until=later)  # extends the wait, no second notice
    assert book.pause_state().until == later  # type: ignore[union-attr]
    assert book.pause("Telegram", "credits gone")  # untimed overrides the wait: a person must act
    assert not book.pause_state().timed  # type: ignore[union-attr]
    book.resume()
    assert book.pause("HF", "wait", until=time.time() - 1)  # a wait already over is not in force
    assert book.pause_state() is None
    assert book.pause("HF", "again")  # and does not hide a new pause


def test_daily_counters_never_pass_the_cap_across_workers(store: PostLedger) -> None:
    def worker(_n: int) -> int:
        book = store.open()
        return sum(book.reserve("images", 5, day="2026-01-01") for _ in range(3))

    with ThreadPoolExecutor(8) as pool:
        taken = sum(pool.map(worker, range(8)))
    book = store.open()
    print(f"reserved {taken} of 24 asked under a cap of 5; used {book.used_today('images', '2026-01-01')}")
    assert taken == 5 and book.used_today("images", "2026-01-01") == 5
    book.unreserve("images", "2026-01-01")
    assert book.reserve("images", 5, day="2026-01-01")
    for _ in range(7):
        book.unreserve("images", "2026-01-01")
    assert book.used_today("images", "2026-01-01") == 0  # never below zero
    assert all(book.reserve("posts", 0, day="2026-01-01") for _ in range(3))  # 0: no cap
    assert book.used_today("posts", "2026-01-01") == 3 and book.used_today("posts", "2026-01-02") == 0


def test_removals_preflight_attempts_and_lookups(store: PostLedger) -> None:
    book = store.open()
    book.begin_removal("n1", "A", '{"targets": []}')
    book.begin_removal("n2", "A", "{}")
    assert [r[0] for r in book.open_removals()] == ["n1", "n2"]
    assert not book.take_removal("n1", "B", lambda _o, _c: False)
    with ThreadPoolExecutor(6) as pool:
        takers = list(
            pool.map(lambda n: store.open().take_removal("n1", f"T{n}", lambda o, _c: o == "A"), range(6))
        )
    assert takers.count(True) == 1
    book.end_removal("n1")
    assert [r[0] for r in book.open_removals()] == ["n2"]
    assert book.preflight_passed_at("cfg") is None
    book.record_preflight("cfg", True)
    assert book.preflight_passed_at("cfg") is not None
    book.record_preflight("cfg", False)
    assert book.preflight_passed_at("cfg") is None
    assert book.add_attempt("nope", "f", "x") == 0
    book.claim("p1", "f", owner="A", prompt="", lease_s=600, is_stale=_live)
    assert book.add_attempt("p1", "f", "boom") == 1 and book.add_attempt("p1", "f", "boom") == 2
    book.update("p1", "g", post_state="POSTED")  # unfenced: creates the row (a record found elsewhere)
    assert book.attempts(["p1", "p9"]) == {"p1": 2}
    assert book.ids_seen([f"p{i}" for i in range(1200)]) == {"p1"}  # more ids than one statement binds
    assert {e.fingerprint for e in book.entries_for("p1")} == {"f", "g"}
    assert store.why_not_spend() is None and [c.status for c in store.preflight()][0] == "ok"


# ---------------------------------------------------------------------------------------------- migrations
_OLD_SCHEMA = """
CREATE TABLE prompts (
    prompt_id TEXT NOT NULL, fingerprint TEXT NOT NULL, prompt TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '', post_state TEXT,
    chat_id TEXT NOT NULL DEFAULT '', message_id TEXT NOT NULL DEFAULT '', link TEXT NOT NULL DEFAULT '',
    method TEXT NOT NULL DEFAULT '', image_meta TEXT NOT NULL DEFAULT '', done_state TEXT,
    final_status TEXT NOT NULL DEFAULT '', queue_state TEXT, owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0, updated_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (prompt_id, fingerprint)
);
CREATE TABLE pauses (service TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE removals (nonce TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL, body TEXT NOT NULL);
INSERT INTO prompts (prompt_id, fingerprint, prompt, post_state, message_id, updated_at)
    VALUES ('p1', 'f', 'a fox', 'POSTED', '7', 1.5);
INSERT INTO pauses (service, reason, since) VALUES ('HF', 'credits gone', 2.5);
"""


def test_a_ledger_from_before_versioning_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:  # as an old release left it: no version table, columns missing
        db.executescript(_OLD_SCHEMA)
    book = Ledger(path)
    entry = book.get("p1", "f")
    assert entry is not None and (entry.post_state, entry.message_id, entry.posted_at) == ("POSTED", "7", 0)
    assert entry.preview_images == "" and entry.preview_state is None
    pause = book.pause_state()
    assert pause is not None and pause.service == "HF" and pause.until == 0
    assert book.reserve("posts", 1)  # the tables it never had exist now
    book.update("p1", "f", preview_state="PREVIEWED")
    Ledger(path)  # opening again changes nothing
    with sqlite3.connect(path) as db:
        versions = db.execute("SELECT version, name FROM ledger_schema").fetchall()
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    steps = [(version, name) for version, name, _ in ledger_schema.MIGRATIONS]  # every step, in order
    assert versions[:3] == [(1, "baseline"), (2, "workers"), (3, "chat_slots")] and versions == steps
    assert mode == "wal"
    drop_engine(ledger_schema.sqlite_url(path))


def test_a_new_step_runs_once_and_a_newer_ledger_is_refused(
    store: PostLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.open()
    ran: list[str] = []

    def step(db: object) -> None:
        ran.append(type(db).__name__)

    latest = ledger_schema.MIGRATIONS[-1][0]
    monkeypatch.setattr(
        ledger_schema, "MIGRATIONS", [*ledger_schema.MIGRATIONS, (latest + 1, "test step", step)]
    )
    store.open()
    store.open()
    assert ran == ["Connection"]
    monkeypatch.setattr(ledger_schema, "MIGRATIONS", ledger_schema.MIGRATIONS[:latest])
    with pytest.raises(SchemaTooNew, match=f"schema version {latest + 1}"):
        store.open()


# ---------------------------------------------------------------------------------------------- processes
def _race(url: str, path: str, prompts: int, start: mp.synchronize.Barrier, out: mp.Queue) -> None:  # type: ignore[name-defined]
    book = Ledger(path, url=url)  # every worker migrates on open too: a fresh database races there first
    start.wait(60)
    mine = owner_token(f"race-{os.getpid()}")
    order = list(range(prompts))
    random.Random(os.getpid()).shuffle(order)  # each worker its own order: they collide all along the way
    won = [
        p
        for p in order
        if book.claim(f"p{p}", "f", owner=mine, prompt="", lease_s=600, is_stale=stale_owner_check(None))
    ]
    out.put((mine, won))


def test_processes_racing_for_the_same_prompts_each_get_each_prompt_once(store: PostLedger) -> None:
    ctx = mp.get_context("spawn")  # no engine inherited: each process is a worker of its own
    workers, prompts = 3, 120
    start, out = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(store.url, store.path, prompts, start, out)) for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert all(proc.exitcode == 0 for proc in procs)
    winners = {p: [owner for owner, won in results if p in won] for p in range(prompts)}
    print("prompts won per worker:", sorted(len(won) for _owner, won in results))
    assert all(len(w) == 1 for w in winners.values()), winners
    book = store.open()
    assert all(book.get(f"p{p}", "f").owner == w[0] for p, w in winners.items())  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------- liveness
def test_owner_tokens_allow_a_pid_check_only_within_one_pid_namespace() -> None:
    check = stale_owner_check(None)
    mine = owner_token("run")
    where, _pid, _run = mine.split(":", 2)
    host = where.partition("/")[0]
    print("owner token:", mine)
    assert check(mine) is False  # this very process
    if "/" in where:  # Linux: a dead pid of this kernel and namespace is gone for sure
        assert check(f"{where}:999999999:run") is True
    # an older token (no node) with this hostname: a pid says nothing, the lease and run decide
    assert check(f"{host}:999999999:run") is False
    # the same hostname on another kernel or namespace: no pid check either
    assert check(f"{host}/0000.1:999999999:run") is False
    assert check("garbage") is True


def test_a_live_owner_in_another_pid_namespace_with_the_same_hostname_is_not_stale() -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and util-linux unshare for a new PID namespace")
    mine = owner_token("parent-run")
    code = (
        "import sys; from image_pipeline.lifecycle.ledger_owners import owner_token, stale_owner_check; "
        "print(owner_token('child-run')); print(stale_owner_check(None)(sys.argv[1]))"
    )
    done = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, mine],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"unshare refused here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    child_token, verdict = done.stdout.split()
    print("parent:", mine, "child:", child_token)
    # same hostname, and our pid does not exist in the child's namespace: the old check called us dead
    assert child_token.split("/")[0] == mine.split("/")[0]
    assert child_token.split(":")[0] != mine.split(":")[0]
    assert int(child_token.split(":")[1]) < 10  # the child is (near) pid 1 of its own namespace
    assert verdict == "False"


def test_the_ledger_url_setting_reaches_postgres_built_or_not(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from image_pipeline.settings import resources_from

    url = _fresh_pg_url(pg)
    monkeypatch.setenv("IMAGE_PIPELINE_LEDGER_URL", url)
    env = {"IMAGE_PIPELINE_DATA": str(tmp_path / "data"), "IMAGE_PIPELINE_LEDGER_URL": url}
    resource = resources_from(env)["ledger"]
    assert isinstance(resource, PostLedger) and resource.url != url  # bound by name: a secret (password)
    resource.open().pause("HF", "credits gone")  # unbuilt, as `image-pipeline resume` uses it
    with dg.build_resources({"ledger": resource}) as built:
        assert built.ledger.open().pause_state().service == "HF"
    assert not (tmp_path / "data" / "ledger.sqlite").exists()  # nothing went to the SQLite file
    drop_engine(url)


def test_a_sqlite_ledger_on_a_network_filesystem_is_refused(tmp_path: Path) -> None:
    from image_pipeline.lifecycle.ledger import UnsafeLedgerLocation, refuse_network_filesystem

    mounted = "36 25 0:32 / /mnt/shared rw,relatime shared:1 - nfs4 server:/export rw,vers=4.2\n"
    with pytest.raises(UnsafeLedgerLocation, match="network filesystem") as refused:
        refuse_network_filesystem(Path("/mnt/shared/data"), mounted)
    print(refused.value)
    refuse_network_filesystem(tmp_path)  # this machine's own disk: fine
    Ledger(tmp_path / "ledger.sqlite")  # and the ledger opens there (the check runs on every open)
    drop_engine(ledger_schema.sqlite_url(tmp_path / "ledger.sqlite"))
