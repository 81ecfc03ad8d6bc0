"""Chaos harness: the real worker against faulty emulators, SIGKILLs at the worst moments and a person editing.

``python -m image_pipeline.testing.chaos [--prompts N] [--fault-rate F] [--kills K] [--writer/--no-writer]
[--json PATH] [--seed S] [--timeout-s T]``

The pipeline runs exactly as in production (``image-pipeline run`` in a subprocess, real gspread,
InferenceClient and requests) against the sandbox's loopback emulators, which fail a fraction of all
requests. A supervisor restarts the worker whenever it exits, the way the next sensor tick or a
re-execution would, and kills it (SIGKILL, from inside the emulators) right where a crash hurts most:
during generation, just after Telegram accepted a photo, while the Done row is being appended and while the
queue row is being removed. Meanwhile a second thread plays the person curating the sheet.

Every prompt carries a marker (``#T00042``), so the verdict is computed from what the emulators hold at the
end - the channel's captions, the Done worksheet, the Process worksheet - and never from the pipeline's own
records:

- ``posted_twice``: the same text posted more than once (a prompt the person rewrote may be posted once per
  text: that is ``reposted_after_edit``, not a double post);
- ``lost``: not withdrawn, not posted, no FAILED/INVALID/UNCERTAIN Done row, no longer queued (a row the
  person deleted after finding its post in the channel is posted, not lost);
- ``wrongly_deleted``: not withdrawn, no longer queued, neither a Done row nor a post (a subset of lost);
- ``wrongly_failed``: a FAILED or INVALID Done row for a prompt whose only faults were the services' (every
  injected fault but the provider's refusal of that very prompt; the prompts made to be refused, with
  ``forbiddenfruit``, are the prompt's own fault too), or any UNCERTAIN Done row (an uncertain delivery
  stays queued now). Broken down by the Done rows;
- ``token_hits``: the bot token's secret, the HF token or a line of the service-account key in a worker log,
  the Done sheet, the data folder (ledger, asset files), the Dagster home's databases or a Telegram message.

Besides the transport faults (5xx, 429, timeouts, resets, truncated answers), the emulators answer with the
service-level faults of issue 12: a Sheets write applied and then answered 503 (``committed_503``), a
Telegram send refused for missing rights in the channel (``rights``, stops the run), an hour-long flood wait
(``flood:3600``), and the provider refusing a prompt (``provider_refusal``). A flood wait pauses the pipeline
(ledger) until the time Telegram named; the harness plays that hour passing: once a worker exited with the
pause recorded, it lifts the emulator's wait and the ledger's pause (``Ledger.resume``, what
``image-pipeline resume`` does) and counts it in ``waits_lifted``.

A send whose outcome is unknown (a 5xx or lost answer on sendPhoto, a kill during the send) is held in
the queue (``CHECK CHANNEL``) until a person looks. The harness plays that person after every worker
(``ChannelChecker``): for each held row it looks for a post with the row's caption in the emulated
channel; found, it deletes the row; missing, it types ``REPOST`` in the status cell (adding a "status"
column first, as the notice says), and the next worker sends it. ``uncertain_checked`` counts these
decisions, ``uncertain_reposted`` and ``uncertain_deleted`` each kind; the run does not end while a
held row waits for one.

Exit code 0 when posted_twice, lost, wrongly_deleted, wrongly_failed and token_hits are all 0. With ``--workdir`` the run's
files stay, with ``verdict.json``: the story of every prompt behind a non-zero figure, the kills, and every
row deletion of the pipeline (which rows it hit, and whether the answer reached the worker).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote

from image_pipeline.models import (
    CHECK_CHANNEL,
    ID_COLUMN,
    OPTIONAL_COLUMNS,
    REPOST,
    STATUS_COLUMN,
    PromptRow,
    caption_for,
    normalize_header,
)
from image_pipeline.testing.emulators.base import (
    COMMITTED_503,
    GARBAGE,
    RESET,
    TIMEOUT,
    TRUNCATE,
    Fault,
    FaultPlan,
    Request,
    Response,
)
from image_pipeline.testing.emulators.google import WRITE_ENDPOINTS
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import DONE_WORKSHEET, PROCESS_WORKSHEET, Sandbox

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESULT_KEYS = (
    "queued",
    "posted_once",
    "posted_twice",
    "lost",
    "wrongly_deleted",
    "wrongly_failed",
    "quarantined",
    "uncertain_checked",
    "uncertain_reposted",
    "uncertain_deleted",
    "faults",
    "kills",
    "token_hits",
)
KILL_KINDS = ("mid-generation", "after-telegram-accepted", "mid-done-append", "mid-removal")
MARKER_RE = re.compile(r"#T\d{5}\b")
# Prompts with this word are refused by the emulated content filter, so the FAILED path is exercised too.
REJECTED_WORD = "forbiddenfruit"
REJECT_EVERY = 20
# Small images: a 1024 px PNG costs the worker and the emulators CPU on every hop, and size has no bearing on
# what is being tested. The optional width/height columns of the queue carry it.
IMAGE_SIDE = "256"
PROCESS_HEADER = ["prompt", "width", "height"]

_WORDS = (  # noqa: SIM905 - a sentence of words reads better than a column of them
    "lighthouse storm harbor fox meadow neon city glacier desert caravan violin robot garden nebula "
    "lantern forest whale cathedral origami dragon tea ceremony subway mural orchard comet monastery"
).split()

# Pipeline variables of the calling shell that would point a worker away from the sandbox or change its
# behaviour; the sandbox env and the knobs below replace them.
_INHERITED_PIPELINE_VARS = (
    "GOOGLE_SERVICE_ACCOUNT_JSON",
    "GOOGLE_SHEET_TITLE",
    "GOOGLE_PROCESS_WORKSHEET",
    "GOOGLE_DONE_WORKSHEET",
    "HF_PROVIDER",
    "HF_HUB_OFFLINE",
    "IMAGE_PIPELINE_WORKBOOK",
    "IMAGE_PIPELINE_OUTBOX",
    "IMAGE_PIPELINE_INSTANT",
    "IMAGE_PIPELINE_PROMPTS_PER_TICK",
)
# Fast failure so a few hundred prompts with a fifth of all requests failing finish in minutes.
WORKER_KNOBS = {
    "IMAGE_PIPELINE_HTTP_TIMEOUT_S": "1",
    "IMAGE_PIPELINE_RETRY_ATTEMPTS": "4",
    "IMAGE_PIPELINE_RETRY_BASE_DELAY_S": "0.05",
    "GOOGLE_QUOTA_RETRY_S": "0.2",
    # the emulated Telegram's flood limits are off here, so spacing posts would only slow the run down
    "TELEGRAM_POSTS_PER_MINUTE": "0",
}
EMULATOR_TIMEOUT_HOLD_S = 2.0  # longer than the worker's 1 s timeout, short enough not to pile up threads
STALL_S = 90.0  # a worker that makes no request at all for this long is hung, not slow
# Workers in a row that may exit with "no run started" (code 2: a preflight check or the first queue read
# met an injected fault) before the harness gives up; each costs a process start of a few seconds.
NOT_STARTED_PATIENCE = 40


# ------------------------------------------------------------------------------------------------ faults


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


# ------------------------------------------------------------------------------------------------ truth


class Truth:
    """What the person did to the queue, kept by the harness: the only record the verdict trusts besides
    the emulators themselves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.texts: dict[str, str] = {}  # marker -> latest text the person gave it
        self.inserted: set[str] = set()
        self.edited: set[str] = set()
        self.withdrawn: set[str] = set()
        self.moved: set[str] = set()
        # marker -> the pipeline's applied row deletions that hit its row (rows as seen just before)
        self.pipeline_deleted: dict[str, list[dict[str, Any]]] = {}
        self.deletions: list[dict[str, Any]] = []  # every row deletion of the pipeline, in order
        # marker -> what the person decided for each uncertain delivery of it (ChannelChecker)
        self.checks: dict[str, list[dict[str, Any]]] = {}
        self._next = 1

    def new_prompt(self, rng: random.Random) -> str:
        with self.lock:
            number = self._next
            self._next += 1
        marker = f"#T{number:05d}"
        words = rng.sample(_WORDS, 3)
        if number % REJECT_EVERY == 0:
            words[1] = REJECTED_WORD
        text = f"chaos prompt {marker} " + " ".join(words)
        with self.lock:
            self.texts[marker] = text
        return text


def marker_of(text: str) -> str | None:
    found = MARKER_RE.search(text or "")
    return found.group(0) if found else None


# ------------------------------------------------------------------------------------------------ workers


class Supervisor:
    """Runs one worker at a time and knows which one is current, so a kill never hits the wrong process."""

    def __init__(self, workdir: Path, env: dict[str, str], log_dir: Path, command: list[str]) -> None:
        self.workdir = workdir
        self.env = env
        self.command = command
        self.log_dir = log_dir
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.exit_codes: Counter[int] = Counter()
        self._log: TextIO | None = None

    def start(self) -> int:
        with self.lock:
            self.generation += 1
            log_path = self.log_dir / f"worker-{self.generation:03d}.log"
            self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in reap()
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                env=self.env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches it and nothing else
            )
            return self.generation

    def alive(self) -> bool:
        with self.lock:
            return self.proc is not None and self.proc.poll() is None

    def kill(self, generation: int | None = None) -> bool:
        """SIGKILL the current worker (only if it is still ``generation``); True when a signal was sent."""
        with self.lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
            if generation is not None and generation != self.generation:
                return False
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return False
            return True

    def reap(self) -> int:
        with self.lock:
            assert self.proc is not None
            code = self.proc.wait()
            if self._log is not None:
                self._log.close()
                self._log = None
            self.exit_codes[code] += 1
            return code


@dataclass
class KillPoint:
    kind: str
    after_done_rows: int  # armed once this many Done rows were appended: spreads the kills over the run


@dataclass
class Kill:
    kind: str
    generation: int
    at_s: float


class Killer:
    """Fires the planned kills, in order, from inside the emulators' request threads."""

    def __init__(self, plan: list[KillPoint], supervisor: Supervisor, rng: random.Random, t0: float) -> None:
        self.plan = plan
        self.supervisor = supervisor
        self.rng = rng
        self.t0 = t0
        self.lock = threading.Lock()
        self.done_rows = 0
        self.kills: list[Kill] = []
        self.last_request = time.monotonic()
        self._next = 0
        self._pending = False  # a delayed kill is scheduled; the next one waits for it
        self._last_generation = 0  # one kill per worker, so every worker gets to make progress first
        self._timers: list[threading.Timer] = []
        self.active = True

    # -- emulator hooks ----------------------------------------------------------------------------------
    def hf_request(self, request: Request, endpoint: str) -> None:
        self.last_request = time.monotonic()
        self._event("mid-generation")

    def any_request(self, request: Request, endpoint: str) -> None:
        self.last_request = time.monotonic()

    def google_request(self, request: Request, endpoint: str) -> None:
        self.last_request = time.monotonic()

    def google_routed(self, request: Request, endpoint: str, response: Response) -> None:
        if response.status != 200:
            return
        if endpoint == "values.append" and appended_worksheet(request.path) == DONE_WORKSHEET:
            # a batch appends many rows in one request: count rows, or the later kills never arm
            try:
                appended = len(json.loads(request.body).get("values", [])) or 1
            except (ValueError, AttributeError):
                appended = 1
            with self.lock:
                self.done_rows += appended
            self._event("mid-done-append")
        elif endpoint == "sheets.batchUpdate" and b"deleteDimension" in request.body:
            # a process killed after sending is the same as this: the row is gone, the worker never heard
            self._event("mid-removal")

    def telegram_routed(self, request: Request, endpoint: str, response: Response) -> None:
        if endpoint in ("sendphoto", "senddocument") and response.status == 200:
            # a little later, so the worker has read the answer and may have recorded the post
            self._event("after-telegram-accepted", delay=self.rng.uniform(0.02, 0.2))

    # -- firing ----------------------------------------------------------------------------------------
    def _event(self, kind: str, delay: float = 0.0) -> None:
        with self.lock:
            if not self.active or self._pending or self._next >= len(self.plan):
                return
            point = self.plan[self._next]
            if point.kind != kind:
                return
            if self.done_rows < point.after_done_rows:
                return
            generation = self.supervisor.generation
            if generation == self._last_generation:
                return
            if delay <= 0:
                self._fire(point, generation)
                return
            self._pending = True
        timer = threading.Timer(delay, self._delayed, args=(point, generation))
        timer.daemon = True
        with self.lock:
            self._timers.append(timer)
        timer.start()

    def _delayed(self, point: KillPoint, generation: int) -> None:
        with self.lock:
            self._pending = False
            if self.active and self._next < len(self.plan) and self.plan[self._next] is point:
                self._fire(point, generation)

    def _fire(self, point: KillPoint, generation: int) -> None:
        # called with self.lock held; a worker that already exited keeps the point armed for the next one
        if self.supervisor.kill(generation):
            self._next += 1
            self._last_generation = generation
            self.kills.append(Kill(point.kind, generation, round(time.monotonic() - self.t0, 2)))

    def stop(self) -> None:
        with self.lock:
            self.active = False
            timers = list(self._timers)
        for timer in timers:
            timer.cancel()


def appended_worksheet(path: str) -> str:
    """The worksheet a ``.../values/<range>:append`` path writes to (quotes removed)."""
    _, _, tail = unquote(path).partition("/values/")
    name = tail.rsplit("!", 1)[0] if "!" in tail else tail.split(":", 1)[0]
    if name.startswith("'") and name.endswith("'"):
        name = name[1:-1].replace("''", "'")
    return name


class Witness:
    """Notes which prompts the pipeline's own row deletions hit, so a wrongly deleted prompt has a culprit."""

    def __init__(
        self, sandbox: Sandbox, truth: Truth, supervisor: Supervisor, plan: CountingFaultPlan, t0: float
    ) -> None:
        self.sandbox = sandbox
        self.truth = truth
        self.supervisor = supervisor
        self.plan = plan
        self.t0 = t0
        # server thread -> (arrival, the rows (marker, id, number) its deleteDimension is about to remove)
        self._aimed: dict[int, tuple[float, list[dict[str, str]]]] = {}

    def google_request(self, request: Request, endpoint: str) -> None:
        if endpoint != "sheets.batchUpdate" or b"deleteDimension" not in request.body:
            return
        try:
            body = json.loads(request.body)
        except ValueError:
            return
        google, sid = self.sandbox.google, self.sandbox.spreadsheet_id
        process_id = 0  # the first worksheet of a sandbox spreadsheet ("Process") has sheetId 0
        with google._state:  # the lock the request takes when it is applied a moment later
            rows = google.values(sid, PROCESS_WORKSHEET)
        header = [h.strip().lower() for h in rows[0]] if rows else []
        id_col = header.index("id") if "id" in header else None
        hit: list[dict[str, str]] = []
        for item in body.get("requests", []):
            span = item.get("deleteDimension", {}).get("range", {})
            if span.get("sheetId", 0) != process_id or span.get("dimension") != "ROWS":
                continue
            for index in range(int(span.get("startIndex", 0)), int(span.get("endIndex", 0))):
                row = rows[index] if index < len(rows) else []
                if marker := marker_of(row[0] if row else ""):
                    row_id = row[id_col] if id_col is not None and id_col < len(row) else ""
                    hit.append({"marker": marker, "id": row_id, "row": str(index + 1)})
        self._aimed[threading.get_ident()] = (time.monotonic(), hit)

    def google_routed(self, request: Request, endpoint: str, response: Response) -> None:
        aimed = self._aimed.pop(threading.get_ident(), None)
        if aimed is None or response.status != 200:
            return
        arrived, hit = aimed
        # the deletion took effect; "truncate" means the worker never learnt that it did
        fault = self.plan.last.get(threading.get_ident())
        event = {
            "worker": self.supervisor.generation,
            "at_s": round(arrived - self.t0, 2),
            # applied later than the worker's HTTP timeout: it gave up and may have sent the request again
            "applied_after_s": round(time.monotonic() - arrived, 2),
            "fault": str(fault) if fault else "",
            "rows": hit,
        }
        with self.truth.lock:
            self.truth.deletions.append(event)
            for row in hit:
                self.truth.pipeline_deleted.setdefault(row["marker"], []).append(event)


def duplicate_window(ledger_path: Path, accepted: dict[str, float]) -> dict[str, float]:
    """How long each post stayed exposed to a repeat: from Telegram accepting it (seen by the emulator) to
    the ledger recording its message id (the pipeline's ``posted_at``). A kill inside that gap is the only
    way a prompt could be posted twice."""
    import sqlite3

    if not ledger_path.exists() or not accepted:
        return {"window_ms_p50": -1.0, "window_ms_max": -1.0, "window_samples": 0}
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT message_id, posted_at FROM prompts WHERE posted_at > 0").fetchall()
    finally:
        db.close()
    # paired by message id: an edited prompt posted again has its own message and its own window
    gaps = sorted(
        (posted_at - accepted[m]) * 1000
        for message_id, posted_at in rows
        if (m := str(message_id)) in accepted and posted_at >= accepted[m]
    )
    if not gaps:
        return {"window_ms_p50": -1.0, "window_ms_max": -1.0, "window_samples": 0}
    return {
        "window_ms_p50": round(gaps[len(gaps) // 2], 2),
        "window_ms_max": round(gaps[-1], 2),
        "window_samples": len(gaps),
    }


def _chain(*hooks: Any) -> Any:
    def run(*args: Any) -> None:
        for hook in hooks:
            hook(*args)

    return run


def plan_kills(kills: int, prompts: int) -> list[KillPoint]:
    # Done rows grow with progress; withdrawals and retries make the final count uncertain, so the last
    # kill is armed well before the expected end.
    expected = max(1, int(prompts * 0.8))
    return [KillPoint(KILL_KINDS[i % len(KILL_KINDS)], i * expected // max(1, kills)) for i in range(kills)]


# ------------------------------------------------------------------------------------------------ person


class PersonWriter(threading.Thread):
    """Someone curating "Process" while the pipeline works: adds, rewrites, reorders and withdraws prompts."""

    def __init__(self, sandbox: Sandbox, truth: Truth, rng: random.Random) -> None:
        super().__init__(name="chaos-person", daemon=True)
        self.sandbox = sandbox
        self.truth = truth
        self.rng = rng
        self.stop_event = threading.Event()
        self.ops: Counter[str] = Counter()

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(0.2, 0.5)):
            op = self.rng.choice(("insert", "edit", "move", "delete"))
            with self._one_ui_action():
                if self._apply(op):
                    self.ops[op] += 1

    @contextmanager
    def _one_ui_action(self) -> Iterator[None]:
        # A person's edit in the Sheets UI is atomic; the emulator locks each person-edit call on its own,
        # so read-then-edit is held under its state lock, or the pipeline could shift the rows in between
        # and the harness would withdraw the wrong prompt.
        with self.sandbox.google._state:
            yield

    def _apply(self, op: str) -> bool:
        google, sid = self.sandbox.google, self.sandbox.spreadsheet_id
        rows = google.values(sid, PROCESS_WORKSHEET)
        data = [n for n in range(2, len(rows) + 1) if any(cell != "" for cell in rows[n - 1])]
        if op == "insert" or not data:
            text = self.truth.new_prompt(self.rng)
            marker = marker_of(text)
            position = self.rng.randint(2, len(rows) + 1)
            google.insert_row(sid, PROCESS_WORKSHEET, position, [text, IMAGE_SIDE, IMAGE_SIDE], raw=True)
            with self.truth.lock:
                self.truth.inserted.add(marker or "")
            return True
        number = self.rng.choice(data)
        cells = rows[number - 1]
        marker = marker_of(cells[0] if cells else "")
        if marker is None:
            return False
        if op == "edit":
            # the marker stays, so the prompt stays traceable; processing either text is correct
            text = f"chaos prompt {marker} edited " + " ".join(self.rng.sample(_WORDS, 3))
            google.update_cell(sid, PROCESS_WORKSHEET, number, 1, text, raw=True)
            with self.truth.lock:
                self.truth.edited.add(marker)
                self.truth.texts[marker] = text
            return True
        if op == "move":
            google.delete_row(sid, PROCESS_WORKSHEET, number)
            remaining = len(rows) - 1
            google.insert_row(sid, PROCESS_WORKSHEET, self.rng.randint(2, remaining + 1), cells, raw=True)
            with self.truth.lock:
                self.truth.moved.add(marker)
            return True
        google.delete_row(sid, PROCESS_WORKSHEET, number)
        with self.truth.lock:
            self.truth.withdrawn.add(marker)
        return True


def uncertain_deliveries(ledger_path: Path) -> dict[tuple[str, str], tuple[str, float]]:
    """(prompt id, fingerprint) -> (post_state, updated_at) of every send whose outcome the pipeline does
    not know: UNCERTAIN (its answer was lost) or POSTING (the process died during it; read between
    workers, so no live run holds it)."""
    import sqlite3

    from image_pipeline.ledger import POSTING, UNCERTAIN

    if not ledger_path.exists():
        return {}
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT prompt_id, fingerprint, post_state, updated_at FROM prompts WHERE post_state IN (?, ?)",
            (UNCERTAIN, POSTING),
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {(str(pid), str(fp)): (str(state), float(at)) for pid, fp, state, at in rows}


def queue_rows(grid: list[list[str]]) -> tuple[list[str], list[PromptRow]]:
    """The queue as the pipeline parses it (resources/sheets/queue.py ``_parse``): the header's names, and the
    rows with id, params and status, so the fingerprint and caption are the pipeline's own."""
    names = [normalize_header(h) for h in grid[0]] if grid else []
    id_col = names.index(ID_COLUMN) if ID_COLUMN in names else None
    status_col = names.index(STATUS_COLUMN) if STATUS_COLUMN in names else None
    optional = {name: names.index(name) for name in OPTIONAL_COLUMNS if name in names}
    rows: list[PromptRow] = []
    for number, cells in enumerate(grid[1:], start=2):
        if not any(c != "" for c in cells):
            continue

        def cell(i: int | None, cells: list[str] = cells) -> str:
            return str(cells[i]) if i is not None and i < len(cells) else ""

        params = {name: cell(i) for name, i in optional.items() if cell(i).strip() != ""}
        rows.append(
            PromptRow(number, cell(0), cell(id_col).strip(), params, tuple(cells), status=cell(status_col))
        )
    return names, rows


class ChannelChecker:
    """The person who reads a CHECK CHANNEL notice: for every row held because its delivery is uncertain,
    they look in the channel for a post with the row's caption. There: they delete the row (it is done).
    Missing: they type REPOST in its status cell (adding a "status" column first if the sheet has none,
    as the notice says), and the next run sends it once. Called between workers, when no send is in
    flight, so what the channel holds is final."""

    MAX_PER_DELIVERY = 6  # a delivery that stays uncertain after this many decisions is left (not drained)

    def __init__(self, sandbox: Sandbox, truth: Truth, t0: float) -> None:
        self.sandbox = sandbox
        self.truth = truth
        self.t0 = t0
        self.decisions: Counter[str] = Counter()
        # (id, fingerprint) -> the ledger's updated_at when REPOST was typed: a row still saying REPOST
        # with the same entry is waiting for its run, not a new uncertainty
        self._reposted: dict[tuple[str, str], float] = {}
        self._per_delivery: Counter[tuple[str, str]] = Counter()

    def pending(self, ledger_path: Path) -> int:
        """Rows held as uncertain that no decision covers yet."""
        return len(self._held(ledger_path, self._grid()))

    def check(self, ledger_path: Path) -> int:
        """Decide every held row; the number of decisions (deletions and REPOSTs) made."""
        if not self._held(ledger_path, self._grid()):
            return 0
        time.sleep(0.3)  # a dead worker's last request is routed (or dropped) by now
        google, sid = self.sandbox.google, self.sandbox.spreadsheet_id
        channel = Counter(
            m.get("caption") or m.get("text") or ""
            for m in self.sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)
        )
        made = 0
        # one UI session: the person reads and edits while no request of the pipeline lands in between;
        # rows are handled bottom-up, so a deletion never shifts a row still to be handled
        with google._state:
            grid = google.values(sid, PROCESS_WORKSHEET)
            held = self._held(ledger_path, grid)
            names = [normalize_header(h) for h in grid[0]] if grid else []
            for row, key, signal in sorted(held, key=lambda h: -h[0].row_number):
                caption = caption_for(row)
                posted = channel[caption] > 0
                if posted:
                    google.delete_row(sid, PROCESS_WORKSHEET, row.row_number)
                    decision = "deleted"
                else:
                    if STATUS_COLUMN not in names:
                        names.append(STATUS_COLUMN)
                        google.update_cell(sid, PROCESS_WORKSHEET, 1, len(names), STATUS_COLUMN, raw=True)
                    col = names.index(STATUS_COLUMN) + 1
                    google.update_cell(sid, PROCESS_WORKSHEET, row.row_number, col, REPOST, raw=True)
                    self._reposted[key] = signal[1]
                    decision = "reposted"
                self._per_delivery[key] += 1
                self.decisions[decision] += 1
                made += 1
                event = {
                    "id": key[0],
                    "fingerprint": key[1],
                    "signal": signal[0],
                    "status_cell": row.status,
                    "decision": decision,
                    "posts_with_caption": channel[caption],
                    "at_s": round(time.monotonic() - self.t0, 2),
                }
                if marker := marker_of(row.prompt):
                    with self.truth.lock:
                        self.truth.checks.setdefault(marker, []).append(event)
        return made

    def _grid(self) -> list[list[str]]:
        return self.sandbox.google.values(self.sandbox.spreadsheet_id, PROCESS_WORKSHEET)

    def _held(
        self, ledger_path: Path, grid: list[list[str]]
    ) -> list[tuple[PromptRow, tuple[str, str], tuple[str, float]]]:
        """(row, (id, fingerprint), (signal, ledger updated_at)) of each row a person has to decide."""
        entries = uncertain_deliveries(ledger_path)
        _, rows = queue_rows(grid)
        held = []
        for row in rows:
            key = (row.prompt_id, row.fingerprint())
            word = " ".join(row.status.split()).upper()
            entry = entries.get(key) if row.prompt_id else None
            if entry is None and word != CHECK_CHANNEL:
                continue
            if self._per_delivery[key] >= self.MAX_PER_DELIVERY:
                continue
            # a CHECK CHANNEL cell whose text changed since: the ledger knows nothing uncertain of this
            # text, but the row is held by the word all the same, and a person answers it the same way
            signal = entry if entry is not None else (CHECK_CHANNEL, 0.0)
            if word == REPOST and self._reposted.get(key) == signal[1]:
                continue  # typed already; its run has not come yet
            held.append((row, key, signal))
        return held


# ------------------------------------------------------------------------------------------------ verdict


def _pem_fragment(key_file: Path) -> str:
    """One full base64 line of the private key: distinctive, and intact in any JSON or log dump of it."""
    pem = json.loads(key_file.read_text(encoding="utf-8"))["private_key"]
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return body[1] if len(body) > 1 else body[0]


def _files(folder: Path) -> Iterator[Path]:
    if folder.exists():
        yield from (p for p in sorted(folder.rglob("*")) if p.is_file())


def scan_secrets(secrets: list[str], sources: dict[str, list[bytes]]) -> dict[str, int]:
    needles = [s.encode("utf-8") for s in secrets if s]
    return {name: sum(blob.count(n) for blob in blobs for n in needles) for name, blobs in sources.items()}


def _data_rows(rows: list[list[str]]) -> list[list[str]]:
    return [row for row in rows[1:] if any(cell != "" for cell in row)]


def _why_wrongly_failed(markers: set[str], statuses: dict[str, list[str]]) -> dict[str, int]:
    """The wrongly failed prompts by their Done rows: an UNCERTAIN row (no longer written: an uncertain
    delivery stays queued for a person), quarantined after transient failures, anything else."""
    out = Counter[str]()
    for m in markers:
        rows = statuses.get(m, [])
        if any(status == "UNCERTAIN" for status, _ in rows):
            out["uncertain_row"] += 1
        elif any("quarantined" in info.lower() for _, info in rows):
            out["quarantined"] += 1
        else:
            out["other"] += 1
    return {f"wrongly_failed_{k}": out[k] for k in WRONGLY_FAILED_KINDS}


WRONGLY_FAILED_KINDS = ("uncertain_row", "quarantined", "other")


def verdict(
    sandbox: Sandbox, truth: Truth, refused: set[str] | None = None
) -> tuple[dict[str, int], dict[str, Any]]:
    """The figures, and for every prompt behind a non-zero failure figure what the emulators hold of it.
    ``refused``: the markers of the prompts the provider refused (their FAILED is their own)."""
    refused = refused or set()
    google, sid = sandbox.google, sandbox.spreadsheet_id
    process = _data_rows(google.values(sid, PROCESS_WORKSHEET))
    in_process = {m for row in process if (m := marker_of(row[0] if row else ""))}

    done = google.values(sid, DONE_WORKSHEET)
    header = [h.strip().lower() for h in done[0]] if done else []
    prompt_col = header.index("prompt") if "prompt" in header else 1
    status_col = header.index("status") if "status" in header else 2
    info_col = header.index("information") if "information" in header else 3
    done_statuses: dict[str, set[str]] = {}
    done_rows: dict[str, list[list[str]]] = {}
    # marker -> (status, reason) of each FAILED/INVALID/UNCERTAIN row that was not the prompt's own fault
    not_their_fault: dict[str, list[tuple[str, str]]] = {}
    for row in _data_rows(done):
        prompt = row[prompt_col] if prompt_col < len(row) else ""
        marker = marker_of(prompt)
        if marker:
            status = row[status_col] if status_col < len(row) else ""
            done_statuses.setdefault(marker, set()).add(status.strip().upper())
            done_rows.setdefault(marker, []).append(row)
            own_fault = REJECTED_WORD in prompt or marker in refused
            status = status.strip().upper()
            # an UNCERTAIN row is never the prompt's fault, and no longer written at all
            if status == "UNCERTAIN" or (status in ("FAILED", "INVALID") and not own_fault):
                info = row[info_col] if info_col < len(row) else ""
                not_their_fault.setdefault(marker, []).append((status, info))

    posts: Counter[str] = Counter()
    captions: dict[str, Counter[str]] = {}
    for message in sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID):
        text = message.get("caption") or message.get("visible_text") or message.get("text") or ""
        marker = marker_of(text)
        if marker:
            posts[marker] += 1
            captions.setdefault(marker, Counter())[text] += 1

    with truth.lock:
        queued = set(truth.texts)
        withdrawn = set(truth.withdrawn)
        edited = set(truth.edited)
        moved = set(truth.moved)
        deleted_by = {m: list(g) for m, g in truth.pipeline_deleted.items()}
        texts = dict(truth.texts)
        checks = {m: list(c) for m, c in truth.checks.items()}
    failed = {m for m, s in done_statuses.items() if "FAILED" in s}
    invalid = {m for m, s in done_statuses.items() if "INVALID" in s}
    # an UNCERTAIN Done row: what the pipeline wrote before uncertain deliveries stayed queued
    uncertain = {m for m, s in done_statuses.items() if "UNCERTAIN" in s}
    kept = queued - withdrawn
    # Not lost: posted (a row the person deleted after finding its post in the channel is posted), in Done
    # as FAILED/INVALID/UNCERTAIN (the last is counted as wrongly failed), or still queued.
    lost = {m for m in kept if not posts[m] and m not in failed | invalid | uncertain and m not in in_process}
    wrongly_deleted = {m for m in kept if m not in in_process and m not in done_statuses and not posts[m]}
    # A person's rewrite is a new prompt, so its text may be posted besides the old one; the same text
    # twice, or two texts of a prompt nobody edited, is a double post.
    twice = {m for m in queued if posts[m] >= 2 and (max(captions[m].values()) >= 2 or m not in edited)}
    reposted_after_edit = {m for m in queued if posts[m] >= 2 and m not in twice}
    # whatever became of the prompt afterwards: a FAILED/INVALID row for a service's fault, or any
    # UNCERTAIN row, is a wrong verdict the person reading Done has to see through
    wrongly_failed = set(not_their_fault) & queued
    # the same Done row (text and status) logged twice: an append repeated after it had landed
    logged_twice = {
        m
        for m, rows in done_rows.items()
        if len({(r[prompt_col], r[status_col]) for r in rows if len(r) > status_col}) < len(rows)
    }

    def story(marker: str) -> dict[str, Any]:
        return {
            "marker": marker,
            "text": texts.get(marker, ""),
            "edited": marker in edited,
            "moved": marker in moved,
            "withdrawn": marker in withdrawn,
            "inserted": marker in truth.inserted,
            "posts": dict(captions.get(marker, {})),
            "done_rows": done_rows.get(marker, []),
            "in_process": marker in in_process,
            "deleted_by_pipeline": deleted_by.get(marker, []),
            "checked_by_person": checks.get(marker, []),
        }

    details = {
        "posted_twice": [story(m) for m in sorted(twice)],
        "lost": [story(m) for m in sorted(lost)],
        "wrongly_deleted": [story(m) for m in sorted(wrongly_deleted)],
        "wrongly_failed": [story(m) for m in sorted(wrongly_failed)],
        "reposted_after_edit": [story(m) for m in sorted(reposted_after_edit)],
        "checked_by_person": [story(m) for m in sorted(checks)],
        "process_at_end": process,
    }
    figures = {
        "queued": len(queued),
        "posted_once": sum(1 for m in queued if posts[m] == 1),
        "posted_twice": len(twice),
        # of those, prompts the person sent back with REPOST: the channel check or REPOST itself at fault
        "posted_twice_after_repost": sum(
            1 for m in twice if any(c["decision"] == "reposted" for c in checks.get(m, []))
        ),
        "lost": len(lost),
        "wrongly_deleted": len(wrongly_deleted),
        "wrongly_failed": len(wrongly_failed),
        **_why_wrongly_failed(wrongly_failed, not_their_fault),
        "logged_twice": len(logged_twice),
        "quarantined": len(failed & queued),
        "invalid": len(invalid & queued),
        "uncertain": len(uncertain & queued),
        "uncertain_posted": sum(1 for m in uncertain & queued if posts[m]),
        "withdrawn": len(withdrawn),
        "edited": len(edited),
        "inserted": len(truth.inserted),
        "remaining": len(in_process & kept),
        "reposted_after_edit": len(reposted_after_edit),
        "success_without_post": sum(
            1 for m in kept if "SUCCESS" in done_statuses.get(m, set()) and not posts[m]
        ),
        "posts_total": sum(posts.values()),
        "done_rows": len(_data_rows(done)),
    }
    return figures, details


# ------------------------------------------------------------------------------------------------ the run


# Small batches: a kill then lands inside a batch run as often as between runs.
WORKER_COMMAND = [sys.executable, "-m", "image_pipeline.cli", "run", "--batch-size", "5"]


def _worker_env(sandbox: Sandbox, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_PIPELINE_VARS}
    env.update(sandbox.env())
    env.update(WORKER_KNOBS)
    env.update(
        DAGSTER_HOME=str(root / "home"),
        IMAGE_PIPELINE_DATA=str(root / "data"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(root / "hf"),
        PYTHONUNBUFFERED="1",  # a SIGKILLed worker's log still shows how far it got
    )
    return env


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


def lift_timed_pause(ledger_path: Path, sandbox: Sandbox) -> bool:
    """Play the wait a service imposed passing: when the worker left the pipeline paused until a time
    (a flood wait), lift Telegram's wait and the ledger's pause, as the clock would. A pause without a
    time (credits) needs a person and stays. True when one was lifted."""
    from image_pipeline.ledger import Ledger

    if not ledger_path.exists():
        return False
    book = Ledger(ledger_path)
    try:
        pause = book.pause_state()
        if pause is None or not pause.timed:
            return False
        sandbox.telegram.lift_flood_wait()
        book.resume()
        return True
    finally:
        book.close()


def open_removals(ledger_path: Path) -> int:
    """Deletes of queue rows whose copy no run has checked yet (a worker killed in between): the next
    worker puts back what they removed by mistake, so the harness does not stop before it ran."""
    import sqlite3

    if not ledger_path.exists():
        return 0
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM removals").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # a ledger from before the table
    finally:
        db.close()


def _queue_signature(sandbox: Sandbox) -> tuple[Any, ...]:
    google, sid = sandbox.google, sandbox.spreadsheet_id
    process = _data_rows(google.values(sid, PROCESS_WORKSHEET))
    done = _data_rows(google.values(sid, DONE_WORKSHEET))
    posts = len(sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID))
    return (tuple(tuple(r) for r in process), len(done), posts)


def _queue_left(sandbox: Sandbox) -> int:
    return len(_data_rows(sandbox.google.values(sandbox.spreadsheet_id, PROCESS_WORKSHEET)))


def run_chaos(
    prompts: int,
    fault_rate: float,
    kills: int,
    writer: bool,
    seed: int,
    timeout_s: float,
    workdir: Path | None = None,
) -> dict[str, int | float]:
    """One chaos run; the figures of the verdict (RESULT_KEYS first) plus diagnostics.

    A killed worker's run is left STARTED holding its pool slot; the next ``image-pipeline run`` fails
    that run and frees the slot itself, so the harness does nothing a user would not.
    """
    t0 = time.monotonic()
    rng = random.Random(seed)
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="image-pipeline-chaos-")) if workdir is None else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    home, logs = root / "home", root / "logs"
    for folder in (home, logs, root / "data", root / "hf"):
        folder.mkdir(parents=True, exist_ok=True)
    if (PROJECT_ROOT / "dagster.yaml").is_file():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")

    truth = Truth()
    seed_rows = [PROCESS_HEADER] + [[truth.new_prompt(rng), IMAGE_SIDE, IMAGE_SIDE] for _ in range(prompts)]
    sandbox = Sandbox(root / "sandbox", seed_rows=seed_rows)
    plans = _configure(
        sandbox, fault_rate, seed, prompts
    )  # the sandbox's setup uses no HTTP: faults cannot hit it
    sandbox.start()
    try:
        supervisor = Supervisor(root, _worker_env(sandbox, root), logs, WORKER_COMMAND)
        killer = Killer(plan_kills(kills, prompts), supervisor, random.Random(seed + 1), t0)
        witness = Witness(sandbox, truth, supervisor, plans[0], t0)
        checker = ChannelChecker(sandbox, truth, t0)
        sandbox.hf.on_request = _chain(plans[1].note, killer.hf_request)
        sandbox.google.on_request = _chain(plans[0].note, witness.google_request, killer.google_request)
        sandbox.google.after_route = _chain(witness.google_routed, killer.google_routed)
        sandbox.telegram.on_request = _chain(plans[2].note, killer.any_request)
        ledger_path = root / "data" / "ledger.sqlite"
        waits_lifted = 0
        accepted: dict[str, float] = {}  # message id -> when the emulated Telegram accepted the post

        def note_accepted(request: Any, endpoint: str, response: Any) -> None:
            if endpoint in ("sendphoto", "senddocument") and response.status == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    message_id = json.loads(response.body)["result"]["message_id"]
                    accepted.setdefault(str(message_id), time.time())

        sandbox.telegram.after_route = _chain(note_accepted, killer.telegram_routed)

        person = PersonWriter(sandbox, truth, random.Random(seed + 2)) if writer else None
        if person is not None:
            person.start()
        writer_until = t0 + timeout_s * 0.5
        writer_floor = max(3, prompts // 10)
        writer_budget = max(10, prompts)  # about N/4 each of inserts, rewrites, moves and withdrawals

        def stop_person() -> None:
            if person is not None and person.is_alive():
                person.stop_event.set()
                person.join()

        deadline = t0 + timeout_s
        timed_out = False
        stalls = 0
        unchanged_clean = unchanged_failed = 0
        not_started = not_started_in_a_row = 0
        while True:
            before = _queue_signature(sandbox)
            supervisor.start()
            killer.last_request = time.monotonic()
            while supervisor.alive():
                time.sleep(0.1)
                now = time.monotonic()
                if (
                    person is not None
                    and person.is_alive()
                    and (
                        now >= writer_until
                        or sum(person.ops.values()) >= writer_budget
                        or _queue_left(sandbox) <= writer_floor
                    )
                ):
                    stop_person()  # the final drain: the pipeline must be able to finish
                if now >= deadline:
                    timed_out = True
                    supervisor.kill()
                elif now - killer.last_request > STALL_S:
                    stalls += 1
                    supervisor.kill()
            code = supervisor.reap()
            if timed_out:
                break
            if waits_lifted < 10 and lift_timed_pause(ledger_path, sandbox):
                waits_lifted += 1  # the hour Telegram asked for has passed
                continue
            if checker.check(ledger_path):
                # a person answered the CHECK CHANNEL notices: the rows they sent back go out now
                unchanged_clean = unchanged_failed = not_started_in_a_row = 0
                continue
            if person is not None and person.is_alive() and _queue_left(sandbox) <= writer_floor:
                stop_person()
            if (
                _queue_left(sandbox) == 0
                and (person is None or not person.is_alive())
                and not open_removals(ledger_path)
            ):
                break
            if _queue_signature(sandbox) == before:
                # no row, Done entry or post changed during a whole worker's life
                if code == 0:
                    unchanged_clean += 1
                elif code == 2 and not_started_in_a_row < NOT_STARTED_PATIENCE:
                    # no run started: the preflight gate met a fault, or the queue read failed; the next
                    # sensor tick would try again, and so does the harness
                    not_started += 1
                    not_started_in_a_row += 1
                else:
                    unchanged_failed += 1
                if unchanged_clean >= 2 or unchanged_failed >= 5:
                    break
            else:
                unchanged_clean = unchanged_failed = not_started_in_a_row = 0
        stop_person()
        killer.stop()

        result: dict[str, int | float] = {}
        refused = {
            m
            for plan in plans
            for fault, body in plan.named_hits
            if fault == PROVIDER_REFUSAL and (m := marker_of(body.decode("utf-8", "replace")))
        }
        figures, details = verdict(sandbox, truth, refused)
        details["kills"] = [vars(k) for k in killer.kills]
        details["pipeline_deletions"] = truth.deletions
        (root / "verdict.json").write_text(
            json.dumps(details, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        secrets = [
            # the part after "<bot id>:" is the credential, and a leak of it alone is as bad as the whole
            sandbox.telegram.token.split(":", 1)[-1],
            sandbox.hf.token,
            _pem_fragment(sandbox.key_file),
        ]
        sources = {
            "worker_logs": [p.read_bytes() for p in _files(logs)],
            "done_sheet": [
                json.dumps(sandbox.google.values(sandbox.spreadsheet_id, DONE_WORKSHEET)).encode()
            ],
            "data_dir": [p.read_bytes() for p in _files(root / "data")],
            "dagster_home": [p.read_bytes() for p in _files(home)],
            "telegram_messages": [
                json.dumps(
                    [[m.get("caption"), m.get("text")] for m in sandbox.telegram.messages], ensure_ascii=False
                ).encode()
            ],
        }
        token_hits = scan_secrets(secrets, sources)
        faults = Counter[str]()
        for plan in plans:
            faults.update(plan.injected)
        kill_kinds = Counter(k.kind for k in killer.kills)

        result.update({key: figures[key] for key in RESULT_KEYS if key in figures})
        result["uncertain_checked"] = sum(checker.decisions.values())
        result["uncertain_reposted"] = checker.decisions["reposted"]
        result["uncertain_deleted"] = checker.decisions["deleted"]
        result.update(duplicate_window(root / "data" / "ledger.sqlite", accepted))
        result["faults"] = sum(faults.values())
        result["kills"] = len(killer.kills)
        result["token_hits"] = sum(token_hits.values())
        for key, value in figures.items():
            result.setdefault(key, value)
        result["not_drained"] = figures["remaining"]
        result["uncertain_undecided"] = checker.pending(ledger_path)  # gave up after MAX_PER_DELIVERY
        result["timed_out"] = int(timed_out)
        result["stalled_workers"] = stalls
        result["kills_planned"] = kills
        for kind in KILL_KINDS:
            result["kills_" + kind.replace("-", "_")] = kill_kinds[kind]
        for fault, count in sorted(faults.items()):
            result["faults_" + fault] = count
        for name, count in token_hits.items():
            result["token_hits_" + name] = count
        result["workers"] = supervisor.generation
        result["workers_exit_0"] = supervisor.exit_codes[0]
        result["person_edits"] = sum(person.ops.values()) if person is not None else 0
        result["waits_lifted"] = waits_lifted
        result["workers_not_started"] = not_started
        result["provider_refused"] = len(refused)
        result["wall_s"] = round(time.monotonic() - t0, 1)
        return result
    finally:
        sandbox.stop()
        if own_dir and not os.environ.get("CHAOS_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


PASS_FIGURES = ("posted_twice", "lost", "wrongly_deleted", "wrongly_failed", "token_hits")


def passed(result: dict[str, int | float]) -> bool:
    return all(result[k] == 0 for k in PASS_FIGURES)


def format_table(result: dict[str, int | float]) -> str:
    width = max(len(k) for k in result)
    lines = [f"{'name':<{width}}  value", f"{'-' * width}  -----"]
    ordered = [*RESULT_KEYS, *(k for k in result if k not in RESULT_KEYS)]
    lines += [f"{k:<{width}}  {result[k]}" for k in ordered]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m image_pipeline.testing.chaos",
        description="Run the real worker against faulty emulators with SIGKILLs and a concurrent editor.",
    )
    parser.add_argument("--prompts", type=int, default=500, help="prompts queued at the start")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of requests that fail")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the worker, spread over the run")
    parser.add_argument(
        "--writer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a second thread edits the queue while the pipeline runs",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as one JSON object")
    parser.add_argument("--seed", type=int, default=1, help="seed of prompts, faults, kills and edits")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="give up (not drained) after this")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run's files here")
    args = parser.parse_args(argv)
    result = run_chaos(
        prompts=args.prompts,
        fault_rate=args.fault_rate,
        kills=args.kills,
        writer=args.writer,
        seed=args.seed,
        timeout_s=args.timeout_s,
        workdir=args.workdir,
    )
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ok = passed(result)
    print("PASS" if ok else f"FAIL: {', '.join(PASS_FIGURES)} must all be 0")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
