"""Two workers racing for one prompt, stopped at every step of its lifecycle (issue 14, item 4).

One prompt is queued. Worker A runs the real job and is stopped at one step: a request of A's is held
open by an emulator hook (``on_request``: before the request takes effect; ``after_route``: it took effect
and its answer has not left). Meanwhile worker B, a separate owner (its own Dagster instance, run id and
data folder; the same emulators and the same PostgreSQL ledger, as distributed workers share them), runs
over the same prompt. Then A goes on.

- A's lease still runs: B must skip the prompt as busy (no image, post, Done row or removal of B's), and
  once A goes on: one photo, one Done row, the queue row removed, the ledger consistent.
- A's lease ran out while it was stopped (``IMAGE_PIPELINE_CLAIM_LEASE_S``): B takes the prompt over.
  Still one post (A finds out before it posts: fencing; what A sent is never sent again by B without
  reading back: CHECK CHANNEL), never a lost prompt, and the outcome says what happened. Where A was
  stopped before its send, its Done step later re-claims the prompt B finished and released: it reads the
  ledger again and only removes (this once appended a second Done row).

Not covered, by design: a request of A's held *before* it applies for longer than A's lease (a Done append
landing after B appended its own) is a zombie write no lease can fence; the lease (900 s) must outlast any
request with its retries.

The two workers are threads of this process running ``execute_in_process`` of ``process_prompts_job``
with the resources ``build_definitions`` makes from their environment: a worker process costs seconds of
start-up per case, and the owners still differ (run id, Dagster instance), as the ledger sees owners. The
verdict comes from the emulators (the channel, the sheet) and the ledger, never from the workers' account.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from image_pipeline.definitions import build_definitions
from image_pipeline.domain.done_entries import DONE_COLUMNS
from image_pipeline.domain.statuses import CHECK_CHANNEL, LOGGED, POSTED, REMOVED, SUCCESS, UNCERTAIN
from image_pipeline.lifecycle.ledger import Entry, Ledger
from image_pipeline.testing.emulators.base import EmulatorServer, Request
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import DONE_WORKSHEET, PROCESS_WORKSHEET, Sandbox

from .conftest import QUIET, materializations
from .postgres_server import PostgresServer, postgres_server

B_WAITS_S = 1.5  # long enough for B to reach the queue lock and wait there
HOLD_LIMIT_S = 60.0  # a gate never held longer: a broken case fails instead of hanging the suite
SHORT_LEASE_S = 0.2
PERSONS_ROW = "a person's row, not part of the race"
_T0 = time.monotonic()


# ------------------------------------------------------------------------------------------ the gate
@dataclass
class Gate:
    """Holds the first request that ``matches`` (once ``armed``, when given) until ``release``.

    Installed as an emulator's ``on_request`` or ``after_route`` hook, which run in the request's own
    server thread: holding there keeps exactly that request open, and the others are served meanwhile."""

    matches: Callable[[Request, str], bool]
    armed: threading.Event | None = None
    hit: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    held: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request, endpoint: str, *_response: Any) -> None:
        with self._lock:
            if self.hit.is_set() or (self.armed is not None and not self.armed.is_set()):
                return
            if not self.matches(request, endpoint):
                return
            self.held = endpoint  # not the path: a bot API path carries the token
            self.hit.set()
        self.release.wait(HOLD_LIMIT_S)


def _is(*endpoints: str) -> Callable[[Request, str], bool]:
    return lambda _request, endpoint: endpoint in endpoints


def _deletes_rows(request: Request, endpoint: str) -> bool:
    return endpoint == "sheets.batchUpdate" and b"deleteDimension" in request.body


@dataclass(frozen=True)
class Step:
    """Where A is stopped: which emulator holds which request, and before or after it took effect."""

    what: str
    emulator: str  # the Sandbox attribute: google, hf, telegram
    hook: str  # on_request (not applied yet) or after_route (applied, answer held)
    matches: Callable[[Request, str], bool]
    # a gate armed only once another request was answered (A's post, for "after the post")
    armed_by: tuple[str, Callable[[Request, str], bool]] | None = None


STEPS = {
    # the GENERATING word in the status cell: A's prompt_record claimed the row, no image asked for yet
    "1-claimed": Step(
        "between the claim and the generation", "google", "after_route", _is("values.batchUpdate")
    ),
    # the emulator rendered the image, its answer is held
    "2-generating": Step("inside the Hugging Face request", "hf", "after_route", _is("text_to_image")),
    # the photo is in the channel, Telegram's answer (the message id) is held
    "3-sending": Step("inside sendPhoto", "telegram", "after_route", _is("sendphoto")),
    # the message id is recorded; A's Done step is stopped at its first request (the read before logging)
    "4-posted": Step(
        "after the post was answered, before the Done append",
        "google",
        "on_request",
        _is("values.batchGet", "values.get", "sheets.get"),
        armed_by=("telegram", _is("sendphoto")),
    ),
    # the Done row is appended, the answer is held
    "5-appending": Step("inside the Done append", "google", "after_route", _is("values.append")),
    # before the delete applies: B still sees the row, and must neither delete it nor repair A's delete
    "6-removing": Step("inside the row removal", "google", "on_request", _deletes_rows),
}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server(db_name="race_admin", user="ledger") as server:
        yield server


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("race_sandbox"), seed_rows=[["prompt"]]) as box:
        # two workers on one service account: quotas would only add back-off waits to this test
        google = box.google
        google.read_quota_per_minute = google.write_quota_per_minute = None
        google.project_read_quota_per_minute = google.project_write_quota_per_minute = None
        box.telegram.per_chat_per_minute = None
        box.telegram.global_per_second = None
        yield box


@pytest.fixture(scope="module")
def instances() -> Iterator[tuple[dg.DagsterInstance, dg.DagsterInstance]]:
    """A's and B's own Dagster instances: neither knows the other's runs, as separate deployments."""
    # in memory: a run's events cost no disk writes, and the two still share nothing
    with dg.DagsterInstance.ephemeral() as a, dg.DagsterInstance.ephemeral() as b:
        yield a, b


_CASES = iter(range(1, 1000))


@dataclass
class Race:
    """One case: a fresh spreadsheet with one prompt, a fresh ledger database, A's and B's definitions."""

    sandbox: Sandbox
    pg: PostgresServer
    instances: tuple[dg.DagsterInstance, dg.DagsterInstance]
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    lapsed: bool
    marker: str = ""
    sheet: str = ""
    ledger_db: str = ""
    key: str = ""
    persons: list[str] = field(default_factory=list)
    defs: dict[str, dg.Definitions] = field(default_factory=dict)

    def setup(self, name: str) -> None:
        n = next(_CASES)
        self.marker = f"#R{n:02d}"
        self.ledger_db = f"race_ledger_{n}"
        url = self.pg.create_database(self.ledger_db)
        self.sheet = self.sandbox.google.create_spreadsheet(
            f"Race {n}",
            {
                PROCESS_WORKSHEET: [
                    ["prompt", "width", "height", "status"],
                    [f"race {self.marker} {name}", "64", "64", ""],
                    # below ours: once our row is deleted it slides into its position, where a delete
                    # sent from an old read would hit it (HOLD: no run of this test works on it)
                    [PERSONS_ROW, "", "", "HOLD"],
                ],
                DONE_WORKSHEET: [list(DONE_COLUMNS)],
            },
        )
        shared = {
            **self.sandbox.env(),
            "GOOGLE_SHEET_KEY": self.sheet,
            "IMAGE_PIPELINE_LEDGER_URL": url,
            # a held request must outlast B's whole run without A's client giving up on it
            "IMAGE_PIPELINE_HTTP_TIMEOUT_S": "30",
            "IMAGE_PIPELINE_RETRY_ATTEMPTS": "2",
            "IMAGE_PIPELINE_RETRY_BASE_DELAY_S": "0.01",
            "GOOGLE_QUOTA_RETRY_S": "0.2",
            "TELEGRAM_POSTS_PER_MINUTE": "0",
        }
        for k, v in shared.items():  # secrets and the ledger URL are read through EnvVar
            self.monkeypatch.setenv(k, v)
        for who in ("A", "B"):
            env = {**shared, "IMAGE_PIPELINE_DATA": str(self.tmp / who / "data")}
            if who == "A" and self.lapsed:
                env["IMAGE_PIPELINE_CLAIM_LEASE_S"] = str(SHORT_LEASE_S)
            self.defs[who] = build_definitions(env)
        rows = self.defs["A"].resources["prompt_sheet"].ensure_ids().rows
        [self.key] = [r.prompt_id for r in rows if self.marker in r.prompt]
        self.persons = [r.prompt_id for r in rows if r.prompt == PERSONS_ROW]
        for instance in self.instances:
            instance.add_dynamic_partitions("prompts", [self.key])

    def run(self, who: str) -> dg.ExecuteInProcessResult:
        instance = self.instances[0 if who == "A" else 1]
        job = self.defs[who].resolve_job_def("process_prompts_job")
        return job.execute_in_process(
            partition_key=self.key, instance=instance, run_config=QUIET, raise_on_error=False
        )

    # ----------------------------------------------------------------- what the emulators and ledger hold
    def posts(self) -> list[dict[str, Any]]:
        return [m for m in self.sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID) if self.marker in _text(m)]

    def alerts(self) -> list[str]:
        return [
            _text(m) for m in self.sandbox.telegram.messages_for(ALERTS_CHANNEL_ID) if self.key in _text(m)
        ]

    def done_rows(self) -> list[dict[str, str]]:
        return _table(self.sandbox.google.values(self.sheet, DONE_WORKSHEET))

    def queue_rows(self) -> list[dict[str, str]]:
        return _table(self.sandbox.google.values(self.sheet, PROCESS_WORKSHEET))

    def entry(self) -> Entry:
        book = Ledger(url=self.pg.url(self.ledger_db))
        try:
            [entry] = book.entries_for(self.key)
        finally:
            book.close()
        return entry

    def lease_lapsed(self) -> bool:
        """By the database's clock, as the ledger compares leases."""
        conn = self.pg.connect(self.ledger_db)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT lease_until < extract(epoch from now()) FROM prompts WHERE prompt_id = %s",
                    (self.key,),
                )
                row = cur.fetchone()
        finally:
            conn.close()
        return bool(row and row[0])


def _text(message: dict[str, Any]) -> str:
    return str(message.get("caption") or message.get("text") or "")


def _table(rows: list[list[str]]) -> list[dict[str, str]]:
    header = rows[0] if rows else []
    return [dict(zip(header, row, strict=False)) for row in rows[1:] if any(cell != "" for cell in row)]


# what B must not do while A's lease runs, counted at the emulators
_SPENDING = {
    "images": ("hf", "text_to_image"),
    "posts": ("telegram", "sendphoto"),
    "Done appends": ("google", "values.append"),
    "sheet batchUpdates (deletes)": ("google", "sheets.batchUpdate"),
    "status writes": ("google", "values.batchUpdate"),
}


def _counts(sandbox: Sandbox) -> Counter[str]:
    return Counter({name: getattr(sandbox, emu).count(ep) for name, (emu, ep) in _SPENDING.items()})


def _status(result: dg.ExecuteInProcessResult, asset: str) -> str:
    found = materializations(result, asset)
    return str(found[-1].metadata["status"].value) if found else "(not materialized)"


def _failure(result: dg.ExecuteInProcessResult | None) -> str:
    if result is None:
        return "(no result)"
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            error, errors = data.error, []
            while error is not None:  # Dagster wraps the product's exception: its message is in a cause
                errors.append(error.message.strip())
                error = error.cause
            desc = data.user_failure_data.description if data.user_failure_data else ""
            return f"{event.step_key}: {desc or ' <- '.join(errors)}"[:600]
    return ""


@dataclass
class Outcome:
    a: dg.ExecuteInProcessResult
    b: dg.ExecuteInProcessResult
    b_did: Counter[str]
    held: str
    timings: dict[str, float]


class Worker:
    """One worker's run of the job in a thread of its own, so that the test can stop it at a gate."""

    def __init__(self, race: Race, who: str) -> None:
        self.who = who
        self.result: dg.ExecuteInProcessResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(race,), name=f"worker-{who}", daemon=True)
        self.thread.start()

    def _run(self, race: Race) -> None:
        try:
            self.result = race.run(self.who)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def reach(self, gate: Gate, what: str) -> None:
        """Until this worker's request is held at ``gate``; fails if the worker ended without reaching it."""
        t0 = time.monotonic()
        while not gate.hit.wait(0.05):
            assert self.thread.is_alive(), (
                f"{self.who} never reached {what}: {self.error or _failure(self.result)}"
            )
            assert time.monotonic() - t0 < HOLD_LIMIT_S, f"{self.who} never reached {what}"

    def finish(self) -> dg.ExecuteInProcessResult:
        self.thread.join(HOLD_LIMIT_S)
        assert not self.thread.is_alive(), f"{self.who} did not finish after its gate opened"
        assert self.error is None and self.result is not None, self.error
        return self.result


def _install(box: Sandbox, step: Step, gate: Gate) -> list[tuple[EmulatorServer, str]]:
    """The step's gate (and what arms it) on the emulators' hooks; the hooks set, to be cleared after."""
    hooks: list[tuple[EmulatorServer, str]] = []
    if step.armed_by is not None:
        gate.armed = armed = threading.Event()
        arm_emu, arm_match = step.armed_by

        def arm(request: Request, endpoint: str, *_: Any) -> None:
            if arm_match(request, endpoint):
                armed.set()

        getattr(box, arm_emu).after_route = arm
        hooks.append((getattr(box, arm_emu), "after_route"))
    target: EmulatorServer = getattr(box, step.emulator)
    setattr(target, step.hook, gate)
    hooks.append((target, step.hook))
    return hooks


def _await_lapse(race: Race) -> None:
    while not race.lease_lapsed():
        time.sleep(0.05)


def _race(race: Race, step: Step) -> Outcome:
    """A until the gate, B all the way (after A's lease ran out, when the case says so), then A on."""
    box = race.sandbox
    gate = Gate(step.matches)
    hooks = _install(box, step, gate)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        a = Worker(race, "A")
        a.reach(gate, step.what)
        timings["A to the gate"] = time.monotonic() - t0
        if race.lapsed:
            _await_lapse(race)
            timings["lease lapse"] = time.monotonic() - t0 - timings["A to the gate"]
        before = _counts(box)
        t1 = time.monotonic()
        if race.lapsed and step is STEPS["6-removing"]:
            # A is inside its removal, which holds the queue lock of the shared ledger: B, which took the
            # prompt over, waits for that lock. What B did before A goes on is what B did on its own.
            result: list[dg.ExecuteInProcessResult] = []
            waiter = threading.Thread(target=lambda: result.append(race.run("B")))
            waiter.start()
            waiter.join(B_WAITS_S)
            assert waiter.is_alive(), "B removed rows while A was inside its own removal"
            b_did = _counts(box) - before
            gate.release.set()
            waiter.join(60)
            [b] = result
        else:
            b = race.run("B")
            b_did = _counts(box) - before
        timings["B's run"] = time.monotonic() - t1
    finally:
        after_b = _counts(box)
        gate.release.set()
        for emulator, hook in hooks:
            setattr(emulator, hook, None)
    t2 = time.monotonic()
    a_result = a.finish()
    timings["A after the gate"] = time.monotonic() - t2
    a_then = _counts(box) - after_b
    out = Outcome(a_result, b, b_did, gate.held, timings)
    print(
        f"\n[{race.marker} {step.what}{', lease lapsed' if race.lapsed else ''}] held {out.held}; "
        + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
        + f"; B did {dict(b_did) or 'nothing'}, A then {dict(a_then) or 'nothing'}"
        + f"; A {'ok' if a_result.success else 'failed: ' + _failure(a_result)}"
        + f"; B {'ok' if b.success else 'failed: ' + _failure(b)}; module at {time.monotonic() - _T0:.1f} s"
    )
    return out


@pytest.fixture
def race_for(
    sandbox: Sandbox,
    pg: PostgresServer,
    instances: tuple[dg.DagsterInstance, dg.DagsterInstance],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[str, bool], Race]:
    def make(name: str, lapsed: bool) -> Race:
        race = Race(sandbox, pg, instances, tmp_path, monkeypatch, lapsed)
        race.setup(name)
        return race

    return make


def _assert_once_and_consistent(race: Race, removed_by_the_holder: bool = True) -> None:
    """One photo, one Done row naming it, the queue row gone, the ledger saying all of it."""
    posts, done, queue = race.posts(), race.done_rows(), race.queue_rows()
    assert len(posts) == 1, f"{len(posts)} photos in the channel: {posts}"
    assert [r["id"] for r in done] == [race.key], f"Done rows: {done}"
    assert done[0]["status"] == SUCCESS and done[0]["message_id"] == str(posts[0]["message_id"]), done[0]
    assert [r["id"] for r in queue] == race.persons, f"the queue now: {queue}"
    entry = race.entry()
    removed = REMOVED if removed_by_the_holder else None
    assert (entry.post_state, entry.done_state, entry.queue_state) == (POSTED, LOGGED, removed), entry
    assert entry.message_id == str(posts[0]["message_id"]) and entry.owner == "", entry


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(STEPS))
def test_while_a_holds_the_claim_b_skips_the_prompt_and_a_finishes_it_once(
    name: str, race_for: Callable[[str, bool], Race]
) -> None:
    step = STEPS[name]
    race = race_for(name, False)
    out = _race(race, step)
    assert out.b.success, _failure(out.b)
    assert _status(out.b, "prompt_record") == "BUSY", "B must see the prompt as another run's"
    assert sum(out.b_did.values()) == 0, f"B acted on a prompt A holds: {dict(out.b_did)}"
    assert out.a.success, _failure(out.a)
    _assert_once_and_consistent(race)


# What B does once A's lease ran out while A was stopped, counted at the emulators (the other counters 0).
LAPSED_B_DOES = {
    # nothing was sent yet: B has nothing to read back, so it does the whole job itself
    "1-claimed": {"images": 1, "posts": 1, "Done appends": 1, "sheet batchUpdates (deletes)": 1},
    "2-generating": {"images": 1, "posts": 1, "Done appends": 1, "sheet batchUpdates (deletes)": 1},
    # a send began (POSTING) and its answer is unknown: never sent again blind, held for a person
    "3-sending": {},
    # the message id is recorded: logged and removed, never posted again
    "4-posted": {"Done appends": 1, "sheet batchUpdates (deletes)": 1},
    # the Done row is there (read back): only removed
    "5-appending": {"sheet batchUpdates (deletes)": 1},
    # A is inside its removal, under the queue lock of the shared ledger: B waits for it; then A's delete
    # lands (its fenced REMOVED is refused: ClaimLost) and B, reading the queue afresh, finds the row gone
    "6-removing": {},
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "name",
    [
        "1-claimed",
        "2-generating",
        "3-sending",
        "4-posted",
        "5-appending",
        "6-removing",
    ],
)
def test_when_a_lease_ran_out_b_takes_over_and_nothing_is_posted_twice_or_lost(
    name: str, race_for: Callable[[str, bool], Race]
) -> None:
    step = STEPS[name]
    race = race_for(name, True)
    out = _race(race, step)
    did = {
        k: v
        for k, v in out.b_did.items()
        if k in ("images", "posts", "Done appends", "sheet batchUpdates (deletes)")
    }
    assert did == LAPSED_B_DOES[name], f"B did {dict(out.b_did)}"
    posts = race.posts()
    assert len(posts) == 1, f"{len(posts)} photos in the channel: {posts}"
    entry = race.entry()
    if name == "3-sending":
        # A's photo is in the channel, its answer unknown to B: B never sends blind, it holds the row for
        # a person (CHECK CHANNEL) and says so; A finds its claim gone and records nothing.
        assert _status(out.b, "prompt_record") == "HELD", _status(out.b, "prompt_record")
        assert [(r["id"], r["status"]) for r in race.queue_rows()] == [
            (race.key, CHECK_CHANNEL),
            (race.persons[0], "HOLD"),
        ], race.queue_rows()
        assert race.done_rows() == []
        assert entry.post_state == UNCERTAIN, entry
        assert any(CHECK_CHANNEL in text for text in race.alerts()), race.alerts()
        assert not out.a.success and "lost its claim" in _failure(out.a), _failure(out.a)
        return
    assert out.b.success, _failure(out.b)
    if name == "6-removing":
        assert not out.a.success and "lost its claim" in _failure(out.a), _failure(out.a)
        # the row is gone (A's delete); nobody holding the claim saw it go, so no REMOVED is recorded
        _assert_once_and_consistent(race, removed_by_the_holder=False)
        return
    _assert_once_and_consistent(race)


@pytest.mark.timeout(120)
def test_a_worker_whose_lease_ran_out_finds_out_before_it_posts(
    race_for: Callable[[str, bool], Race],
) -> None:
    """Fencing before the send: A's lease runs out inside its image request, B takes the prompt over and
    is itself stopped inside its image request (holding the claim); A comes back with its image and must
    not post. Then B goes on and posts the prompt once."""
    race = race_for("fenced", True)
    box = race.sandbox
    step = STEPS["2-generating"]
    gate_a = Gate(step.matches)
    gate_b = Gate(step.matches, armed=gate_a.hit)  # the next image request after A's: B's

    def both(request: Request, endpoint: str, *response: Any) -> None:
        gate_a(request, endpoint, *response)
        gate_b(request, endpoint, *response)

    box.hf.after_route = both
    try:
        a = Worker(race, "A")
        a.reach(gate_a, step.what)
        _await_lapse(race)
        b = Worker(race, "B")
        b.reach(gate_b, "B's " + step.what)
        gate_a.release.set()
        a_result = a.finish()
        posts_after_a = len(race.posts())
    finally:
        gate_a.release.set()
        gate_b.release.set()
        box.hf.after_route = None
    b_result = b.finish()
    print(
        f"\n[{race.marker} A back while B holds the claim] A: telegram_post "
        f"{_status(a_result, 'telegram_post')}, done_entry {_status(a_result, 'done_entry')}; photos after A: "
        f"{posts_after_a}; B {'ok' if b_result.success else _failure(b_result)}"
    )
    assert posts_after_a == 0, "A posted although B had taken its prompt over"
    assert a_result.success and _status(a_result, "telegram_post") == "BUSY", _failure(a_result)
    assert b_result.success, _failure(b_result)
    _assert_once_and_consistent(race)
