"""``make bench``: the pipeline's speed, request economy and memory against emulators with a fixed latency.

``python -m image_pipeline.testing.bench [--only NAME ...] [--with-baseline | --no-baseline] [--json PATH]
[--prompts N | --scale F] [--baseline-prompts N] [--side PX] [--no-latency] [--timeout-s T] [--workdir DIR]``

Every scenario starts the sandbox's loopback emulators (Google OAuth/Sheets/Drive, Hugging Face, Telegram)
on free 127.0.0.1 ports with a fresh work folder (its own Dagster home, data folder and HF_HOME) and runs
the product as a user would: ``image-pipeline run`` as a subprocess, with the sandbox's environment plus
``HF_CONCURRENCY=4`` and ``TELEGRAM_POSTS_PER_MINUTE``; no batch size is passed, the product's defaults
decide. Every figure is counted by the emulators, never taken from the pipeline's own records.

Scenarios (the JSON holds one object per name):

- ``B100-gen``: 100 prompts (512x512, ``--side``); every Sheets API request takes 50 ms (the OAuth token
  endpoint and Drive answer at once); Hugging Face takes 1 s per image with at most 4 at once - the
  emulator's ``render_delay_s`` inside its concurrency cap, so a fifth concurrent request gets 429 at once
  (a plain ``set_latency`` would sleep before the cap is checked); every Bot API call takes 100 ms;
  Telegram's per-chat cap is lifted (its global 30/s stays) and ``TELEGRAM_POSTS_PER_MINUTE=0``.
  Bound = prompts x 1 s / 4 = 25 s.
- ``B100-post``: the same with Telegram's real per-chat cap (20 a minute) and
  ``TELEGRAM_POSTS_PER_MINUTE=20``. Bound = max(generation bound, prompts x 60 s / 20) = 5 minutes; the
  figures that matter are the Telegram 429s (target 0) and wall / bound.
- ``B1000-mem``: 1,000 prompts with no size columns, so the product's default size (1024x1024) is
  requested; no latency, Telegram's cap lifted: the peak RSS of every process of the worker's tree. No
  bound, so efficiency is null and the overhead is wall / prompts.
- ``sensor``: (a) a no-change tick of ``prompt_sheet_sensor``, evaluated in this process on the
  Definitions the product builds from the sandbox env, after priming ticks until the cursor is current:
  its Google requests (Sheets + Drive; ``tick_token_requests`` counts OAuth separately) and wall time.
  (b) instant mode: ``dagster sensor start`` then ``dagster-daemon run`` (``-w workspace.yaml``, cwd the
  project, a temp Dagster home with the project's dagster.yaml) with ``IMAGE_PIPELINE_INSTANT=1`` and
  ``IMAGE_PIPELINE_SENSOR_INTERVAL_S=1``; once the daemon has made an idle tick a row is appended to
  "Process", and ``row_to_post_s`` runs until the Telegram emulator accepts its photo. ``wall_s`` is
  that delay, the bound is null, the Sheets requests per prompt are those of the whole trip (ticks
  included), the peak RSS is the daemon's tree (daemon, code server, run workers).
  (c) the same trip with Drive's change token lagging ``DRIVE_LAG_S`` (180 s: the emulator's
  ``drive_lag_s``, as the real Drive trails Sheets edits) and ``IMAGE_PIPELINE_SHEET_CHECK_S=1`` (the
  defaults' ratio: a check at every tick), so the sensor's own Sheets read finds the row: ``drive_lag_row_to_post_s`` and ``drive_lag_sheets_requests``.
- ``baseline-B100-gen``: the ancestor's algorithm on the B100-gen profile: one fresh Python process per
  prompt (``python -m image_pipeline.testing.bench --baseline-one``) that opens the sheet by title through
  gspread, reads column A, reads row 2, generates with ``InferenceClient.text_to_image`` (no size: the
  emulated endpoint's default, set to the B100 side), posts with ``requests`` sendPhoto, deletes row 2
  and appends [prompt, status, info, timestamp] to Done, each step tried 3 times 5 s apart (with no
  faults no retry fires: ``retries`` counts them). ``--baseline-prompts`` (default 100) shortens it. Its
  bound is the same ideal as B100-gen's (prompts x 1 s / 4); its overhead is wall minus all of its
  emulated waits (``emulated_wait_s``: it is sequential, so every wait is on the critical path). Every
  other row shows its figures' ratio to this row (``x0.05`` = a twentieth of the baseline's; the JSON
  has them as ``*_vs_baseline``), whatever that row's own profile.

Columns: wall time; bound (the emulated waits on the critical path with perfect overlap); efficiency =
bound / wall; Sheets API requests (reads + writes; not Drive, not OAuth) per prompt; Telegram answers with
status 429; peak RSS in MB (the largest VmHWM of any process of the subprocess tree, polled every 0.2 s;
the bench's own process, which hosts the emulators, is ``bench_process_peak_rss_mb``); overhead per
prompt = (wall - bound) / prompts for B100-gen and B100-post. Sheets quotas are lifted in every scenario
(the baseline's request rate would otherwise turn into quota waits, which measure the quota, not the
algorithm); ``sheets_429`` shows there were none. The emulators keep no image bytes of posts, so the
bench's own memory stays small.

Targets are printed beside the figures with ``ok`` / ``MISS`` (``-`` when the figure does not exist):
B100-gen efficiency >= 0.85; B100-post no 429 and wall <= 1.05 x bound; Sheets requests per prompt <= 0.1
in both B100; overhead <= 50 ms per prompt; a no-change sensor tick <= 1 request; B1000-mem peak RSS
<= 400 MB in every process. A miss never changes the exit code (this is a measurement, not a test). A
scenario that could not finish still reports what it measured, and its ``check`` column says what went
wrong (every prompt must be posted exactly once and the queue must end empty); the exit code is 1 only
when a scenario crashed or its subprocess was killed at the timeout.

``--only NAME`` (repeatable) runs just those scenarios: the baseline runs only when named
(``--only baseline-B100-gen``) or with ``--with-baseline``. Without ``--only`` every scenario runs, the
baseline too unless ``--no-baseline``. ``--prompts N`` sets the prompts of B100-gen, B100-post and
B1000-mem; ``--scale F`` multiplies their defaults instead; ``--no-latency`` turns every emulated wait off
(the bounds are then null). ``--workdir DIR`` keeps each scenario's files (worker logs) under DIR.
Ctrl-C or SIGTERM stops every emulator and subprocess and prints the scenarios that finished.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the baseline's worker process must not pay for these imports
    from image_pipeline.testing.sandbox import Sandbox

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("B100-gen", "B100-post", "B1000-mem", "sensor")
BASELINE = "baseline-B100-gen"
ALL_NAMES = (*SCENARIOS, BASELINE)
JSON_KEYS = (
    "wall_s",
    "bound_s",
    "efficiency",
    "sheets_requests_per_prompt",
    "telegram_429",
    "peak_rss_mb",
    "overhead_ms_per_prompt",
)
MARKER_RE = re.compile(r"#B\d{5}\b")
ANCESTOR_DONE_HEADER = ["Prompt", "Status", "Info", "Timestamp"]
SPREADSHEET_TITLE = "Image Prompt"  # the sandbox's, and the ancestor's default title
POLL_S = 0.2
DRIVE_LAG_S = 180.0  # how far Drive's modifiedTime trails Sheets edits (google-api-go-client#906)

# Pipeline variables of the calling shell that would point a worker elsewhere or change what is measured.
_INHERITED_PIPELINE_VARS = (
    "GOOGLE_SERVICE_ACCOUNT_JSON",
    "GOOGLE_SHEET_TITLE",
    "GOOGLE_PROCESS_WORKSHEET",
    "GOOGLE_DONE_WORKSHEET",
    "HF_PROVIDER",
    "HF_HUB_OFFLINE",
    "HF_CONCURRENCY",
    "TELEGRAM_POSTS_PER_MINUTE",
    "IMAGE_PIPELINE_WORKBOOK",
    "IMAGE_PIPELINE_OUTBOX",
    "IMAGE_PIPELINE_INSTANT",
    "IMAGE_PIPELINE_PROMPTS_PER_TICK",
    "IMAGE_PIPELINE_SENSOR_INTERVAL_S",
    "IMAGE_PIPELINE_SHEET_CHECK_S",
    "IMAGE_PIPELINE_HTTP_TIMEOUT_S",
    "IMAGE_PIPELINE_RETRY_ATTEMPTS",
    "IMAGE_PIPELINE_RETRY_BASE_DELAY_S",
    "IMAGE_PIPELINE_MAX_ATTEMPTS",
    "IMAGE_PIPELINE_CLAIM_LEASE_S",
    "GOOGLE_QUOTA_RETRY_S",
    "DAGSTER_HOME",
)

_WORDS = (  # noqa: SIM905 - a sentence of words reads better than a column of them
    "lighthouse storm harbor fox meadow neon city glacier desert caravan violin robot garden nebula "
    "lantern forest whale cathedral origami dragon tea ceremony subway mural orchard comet monastery"
).split()


# ------------------------------------------------------------------------------------------------ profiles


@dataclass(frozen=True)
class Profile:
    """What the emulators do, and how the product is told to pace itself."""

    prompts: int
    side: int | None  # width/height columns in the queue; None: the product's default size
    sheets_s: float = 0.05  # per Sheets API request
    hf_s: float = 1.0  # per image, inside the concurrency cap
    hf_max_concurrent: int | None = 4
    telegram_s: float = 0.1  # per Bot API call
    telegram_per_chat_per_minute: int | None = None  # the emulator's flood control; None: lifted
    posts_per_minute: int = 0  # TELEGRAM_POSTS_PER_MINUTE for the product
    hf_concurrency: int = 4  # HF_CONCURRENCY for the product
    hf_default_side: int = 512  # what the emulated endpoint makes when a request names no size

    def without_latency(self) -> Profile:
        return replace(self, sheets_s=0.0, hf_s=0.0, telegram_s=0.0)

    def bound_s(self) -> float | None:
        """The emulated waits on the critical path with perfect overlap; None when nothing is emulated."""
        parts = [self.prompts * self.hf_s / max(1, min(self.hf_concurrency, self.hf_max_concurrent or 10**6))]
        if self.telegram_per_chat_per_minute:
            parts.append(self.prompts * 60.0 / self.telegram_per_chat_per_minute)
        bound = max(parts)
        return round(bound, 3) if bound > 0 else None


def default_profiles(side: int) -> dict[str, Profile]:
    return {
        "B100-gen": Profile(prompts=100, side=side),
        "B100-post": Profile(prompts=100, side=side, telegram_per_chat_per_minute=20, posts_per_minute=20),
        "B1000-mem": Profile(prompts=1000, side=None, sheets_s=0.0, hf_s=0.0, telegram_s=0.0),
        "sensor": Profile(prompts=1, side=side),
        # the ancestor never asked for a size: it gets the endpoint's default, the B100 size
        BASELINE: Profile(prompts=100, side=None, hf_default_side=side),
    }


# ------------------------------------------------------------------------------------------------ memory


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: the fields after the last ')' are fixed
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that exist now."""
    children = _proc_children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _status_kb(pid: int | str, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            parts = [p.decode("utf-8", "replace") for p in fh.read().split(b"\0") if p]
    except OSError:
        return "?"
    # "python -m image_pipeline.cli run" -> the interesting words, not the interpreter's path
    words = [Path(p).name if p.startswith("/") else p for p in parts[:6]]
    return " ".join(words)[:80]


class TreeMemory:
    """Peak RSS of a process tree: every process's VmHWM (its own peak), read every ``POLL_S`` seconds.

    VmHWM only grows, so the last reading of a pid before it exits is its peak; a process living less
    than one poll can be missed, which ``getrusage(RUSAGE_CHILDREN)`` (``rusage_children_max_mb``) covers.
    """

    def __init__(self, interval_s: float = POLL_S) -> None:
        self.interval_s = interval_s
        self.roots: list[int] = []
        self.peaks_kb: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def watch(self, pid: int) -> None:
        with self._lock:
            self.roots.append(pid)
        self.poll()

    def start(self) -> TreeMemory:
        self._thread.start()
        return self

    def poll(self) -> None:
        with self._lock:
            roots = list(self.roots)
        for root in roots:
            for pid in process_tree(root):
                hwm = _status_kb(pid, "VmHWM")
                if hwm is None:
                    continue
                with self._lock:
                    if hwm > self.peaks_kb.get(pid, 0):
                        self.peaks_kb[pid] = hwm
                    if pid not in self.names:
                        self.names[pid] = _comm(pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def peak_mb(self) -> float | None:
        with self._lock:
            return round(max(self.peaks_kb.values()) / 1024, 1) if self.peaks_kb else None

    def top(self, n: int = 3) -> str:
        with self._lock:
            ranked = sorted(self.peaks_kb.items(), key=lambda kv: -kv[1])[:n]
            return "; ".join(f"{self.names.get(pid, '?')}: {kb / 1024:.0f} MB" for pid, kb in ranked)


def _reset_own_peak() -> None:
    # writing 5 to clear_refs resets this process's VmHWM (Linux 4.0+), so each scenario gets its own peak
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def _own_peak_mb() -> float | None:
    kb = _status_kb("self", "VmHWM")
    return round(kb / 1024, 1) if kb else None


def _children_maxrss_mb() -> float:
    # Linux reports kilobytes; the largest waited-for descendant over the bench's whole life
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


# ------------------------------------------------------------------------------------------------ emulators


def prompt_text(number: int) -> str:
    words = " ".join(_WORDS[(number * 7 + k * 5) % len(_WORDS)] for k in range(3))
    return f"bench prompt #B{number:05d} {words}"


def queue_rows(profile: Profile, first: int = 1) -> list[list[str]]:
    if profile.side is None:
        return [["prompt"]] + [[prompt_text(first + i)] for i in range(profile.prompts)]
    side = str(profile.side)
    return [["prompt", "width", "height"]] + [
        [prompt_text(first + i), side, side] for i in range(profile.prompts)
    ]


def configure(sandbox: Sandbox, profile: Profile) -> list[float]:
    """Latency, caps and quotas of the three emulators for ``profile`` (before or after start).

    Returns the list the Telegram emulator fills with the moment it accepts each photo or document.
    """
    from image_pipeline.testing.emulators.google import READ_ENDPOINTS, WRITE_ENDPOINTS

    google, hf, telegram = sandbox.google, sandbox.hf, sandbox.telegram
    google.read_quota_per_minute = google.write_quota_per_minute = None
    google.project_read_quota_per_minute = google.project_write_quota_per_minute = None
    if profile.sheets_s > 0:
        google.set_latency(profile.sheets_s, endpoints=(*READ_ENDPOINTS, *WRITE_ENDPOINTS))
    hf.max_concurrent = profile.hf_max_concurrent
    hf.render_delay_s = profile.hf_s
    hf.default_size = (profile.hf_default_side, profile.hf_default_side)
    if profile.telegram_s > 0:
        telegram.set_latency(profile.telegram_s)
    telegram.per_chat_per_minute = profile.telegram_per_chat_per_minute

    accepted: list[float] = []

    def forget_uploads(request: Any, endpoint: str, response: Any) -> None:
        # The emulator keeps every upload's bytes; 1,000 images of 1024x1024 would weigh on the bench's
        # own memory (and time) for nothing, since the bench reads only captions.
        if endpoint in ("sendphoto", "senddocument") and response.status == 200:
            accepted.append(time.monotonic())
            with telegram._lock:
                telegram._files.clear()
                for message in reversed(telegram.messages):
                    if message.get("image") is None:
                        break
                    message["image"] = None

    telegram.after_route = forget_uploads
    return accepted


def sheets_requests(sandbox: Sandbox) -> int:
    return sandbox.google.read_requests + sandbox.google.write_requests


def google_429(sandbox: Sandbox) -> int:
    return sum(1 for r in list(sandbox.google.requests) if r.status == 429)


def hf_429(sandbox: Sandbox) -> int:
    return sum(1 for r in list(sandbox.hf.requests) if r.status == 429)


def emulated_waits_s(sandbox: Sandbox, profile: Profile) -> float:
    """Every emulated wait the scenario's requests sat through (all of them on the path when sequential)."""
    sheets = sheets_requests(sandbox) * profile.sheets_s
    telegram = sum(sandbox.telegram.counters.values()) * profile.telegram_s
    generated = sum(1 for call in list(sandbox.hf.calls) if call.get("status") == 200)
    return round(sheets + telegram + generated * profile.hf_s, 3)


def _data_rows(rows: list[list[str]]) -> list[list[str]]:
    return [row for row in rows[1:] if any(cell != "" for cell in row)]


def verify(sandbox: Sandbox, expected: list[str]) -> dict[str, Any]:
    """Every expected prompt posted exactly once and the queue empty, from the emulators' state."""
    from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
    from image_pipeline.testing.sandbox import PROCESS_WORKSHEET

    posts: Counter[str] = Counter()
    for message in sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID):
        text = message.get("caption") or message.get("visible_text") or message.get("text") or ""
        if found := MARKER_RE.search(text):
            posts[found.group(0)] += 1
    markers = [m.group(0) for text in expected if (m := MARKER_RE.search(text))]
    left = len(_data_rows(sandbox.google.values(sandbox.spreadsheet_id, PROCESS_WORKSHEET)))
    out = {
        "posted": sum(1 for m in markers if posts[m] == 1),
        "posted_twice": sum(1 for m in markers if posts[m] > 1),
        "not_posted": sum(1 for m in markers if posts[m] == 0),
        "queue_left": left,
        "alerts": len(sandbox.telegram.messages_for(_alerts_chat())),
    }
    problems = []
    if out["not_posted"]:
        problems.append(f"{out['not_posted']} NOT POSTED")
    if out["posted_twice"]:
        problems.append(f"{out['posted_twice']} POSTED TWICE")
    if left:
        problems.append(f"{left} LEFT IN QUEUE")
    out["problems"] = problems
    return out


def _alerts_chat() -> int:
    from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID

    return ALERTS_CHANNEL_ID


# ------------------------------------------------------------------------------------------------ processes


def _base_env(sandbox: Sandbox, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_PIPELINE_VARS}
    env.update(sandbox.env())
    env.update(
        DAGSTER_HOME=str(root / "home"),
        IMAGE_PIPELINE_DATA=str(root / "data"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(root / "hf"),
        PYTHONUNBUFFERED="1",
    )
    return env


def worker_env(sandbox: Sandbox, root: Path, profile: Profile) -> dict[str, str]:
    env = _base_env(sandbox, root)
    env.update(
        HF_CONCURRENCY=str(profile.hf_concurrency),
        TELEGRAM_POSTS_PER_MINUTE=str(profile.posts_per_minute),
    )
    return env


def prepare_root(root: Path) -> None:
    for folder in (root / "home", root / "data", root / "hf", root / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    if (PROJECT_ROOT / "dagster.yaml").is_file():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", root / "home" / "dagster.yaml")


def run_command() -> list[str]:
    """``image-pipeline run`` as a user types it: the venv's console script, else the module."""
    script = Path(sys.executable).parent / "image-pipeline"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "run"]
    return [sys.executable, "-m", "image_pipeline.cli", "run"]


def kill_tree(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM then SIGKILL ``proc`` and every descendant, by pid (its own session, started here)."""
    if proc.poll() is not None:
        return
    pids = process_tree(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        # descendants that outlived the leader (a run worker) get the same treatment
        if not any(_alive(pid) for pid in pids if pid != proc.pid):
            return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def started(command: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            kill_tree(proc)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[:300]


# ------------------------------------------------------------------------------------------------ scenarios


@dataclass
class Context:
    root: Path
    timeout_s: float


def _figures(**values: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(JSON_KEYS)
    out.update(values)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def run_product_scenario(name: str, profile: Profile, ctx: Context) -> dict[str, Any]:
    """``image-pipeline run`` once over a burst of ``profile.prompts`` prompts."""
    from image_pipeline.testing.sandbox import Sandbox

    root = ctx.root / name
    prepare_root(root)
    rows = queue_rows(profile)
    sandbox = Sandbox(root / "sandbox", seed_rows=rows)
    configure(sandbox, profile)
    memory = TreeMemory().start()
    _reset_own_peak()
    sandbox.start()
    try:
        log = root / "logs" / "worker.log"
        t0 = time.monotonic()
        timed_out = False
        with started(run_command(), cwd=root, env=worker_env(sandbox, root, profile), log=log) as proc:
            memory.watch(proc.pid)
            try:
                code = proc.wait(timeout=ctx.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                memory.poll()
                kill_tree(proc)
                code = proc.wait()
            wall = time.monotonic() - t0
        memory.stop()
        return _product_figures(name, profile, sandbox, rows, wall, code, timed_out, memory, log)
    finally:
        memory.stop()
        sandbox.stop()


def _product_figures(
    name: str,
    profile: Profile,
    sandbox: Sandbox,
    rows: list[list[str]],
    wall: float,
    code: int,
    timed_out: bool,
    memory: TreeMemory,
    log: Path,
) -> dict[str, Any]:
    n = profile.prompts
    bound = profile.bound_s()
    check = verify(sandbox, [row[0] for row in rows[1:]])
    problems = list(check.pop("problems"))
    if timed_out:
        problems.insert(0, "TIMED OUT")
    elif code != 0:
        problems.insert(0, f"EXIT {code}: {_tail(log)}")
    overhead = (wall - (bound or 0.0)) / n * 1000 if n else None
    children_after = _children_maxrss_mb()
    return _figures(
        wall_s=round(wall, 2),
        bound_s=bound,
        efficiency=round(bound / wall, 3) if bound else None,
        sheets_requests_per_prompt=round(sheets_requests(sandbox) / n, 3) if n else None,
        telegram_429=sandbox.telegram.count_429,
        peak_rss_mb=memory.peak_mb,
        overhead_ms_per_prompt=round(overhead, 1) if overhead is not None else None,
        prompts=n,
        **check,
        sheets_requests=sheets_requests(sandbox),
        sheets_reads=sandbox.google.read_requests,
        sheets_writes=sandbox.google.write_requests,
        drive_requests=sum(v for k, v in sandbox.google.counters.items() if k.startswith("drive.")),
        token_requests=sandbox.google.count("token"),
        sheets_429=google_429(sandbox),
        hf_requests=sum(sandbox.hf.counters.values()),
        hf_429=hf_429(sandbox),
        hf_max_in_flight=sandbox.hf.max_in_flight_seen,
        telegram_requests=sum(sandbox.telegram.counters.values()),
        exit_code=code,
        peak_rss_by_process=memory.top(),
        # the largest child the bench has waited for so far (all scenarios): a cross-check of peak_rss_mb
        rusage_children_max_mb=children_after,
        bench_process_peak_rss_mb=_own_peak_mb(),
        check="ok" if not problems else "; ".join(problems),
        crashed=timed_out,
    )


def run_baseline(profile: Profile, ctx: Context) -> dict[str, Any]:
    """The ancestor: one fresh process per prompt, run back to back the way a cron line would."""
    from image_pipeline.testing.sandbox import DONE_WORKSHEET, Sandbox

    root = ctx.root / BASELINE
    prepare_root(root)
    rows = queue_rows(profile)
    sandbox = Sandbox(root / "sandbox", seed_rows=rows)
    configure(sandbox, profile)
    memory = TreeMemory().start()
    _reset_own_peak()
    sandbox.start()
    try:
        sandbox.google.set_values(sandbox.spreadsheet_id, DONE_WORKSHEET, [ANCESTOR_DONE_HEADER])
        env = _base_env(sandbox, root)
        env["GOOGLE_SHEET_TITLE"] = SPREADSHEET_TITLE
        log = root / "logs" / "baseline.log"
        codes: Counter[int] = Counter()
        timed_out = False
        deadline = time.monotonic() + ctx.timeout_s
        t0 = time.monotonic()
        for _ in range(profile.prompts):
            command = [sys.executable, "-m", "image_pipeline.testing.bench", "--baseline-one"]
            with started(command, cwd=root, env=env, log=log) as proc:
                memory.watch(proc.pid)
                try:
                    codes[proc.wait(timeout=max(1.0, deadline - time.monotonic()))] += 1
                except subprocess.TimeoutExpired:
                    timed_out = True
            if timed_out:
                break
        wall = time.monotonic() - t0
        memory.stop()
        figures = _product_figures(
            BASELINE,
            profile,
            sandbox,
            rows,
            wall,
            next((c for c in codes if c != 0), 0),
            timed_out,
            memory,
            log,
        )
        waits = emulated_waits_s(sandbox, profile)
        n = profile.prompts
        figures["emulated_wait_s"] = waits
        figures["overhead_ms_per_prompt"] = round((wall - waits) / n * 1000, 1) if n else None
        figures["processes"] = sum(codes.values())
        figures["processes_failed"] = sum(v for k, v in codes.items() if k != 0)
        figures["retries"] = _count_retries(log)
        return figures
    finally:
        memory.stop()
        sandbox.stop()


def _count_retries(log: Path) -> int:
    try:
        return log.read_text(encoding="utf-8", errors="replace").count("baseline retry:")
    except OSError:
        return 0


def run_sensor(profile: Profile, ctx: Context) -> dict[str, Any]:
    from image_pipeline.testing.sandbox import Sandbox

    root = ctx.root / "sensor"
    prepare_root(root)
    out = _figures(prompts=1, bound_s=None, efficiency=None, overhead_ms_per_prompt=None)
    problems: list[str] = []

    # (a) a no-change tick, in process
    seed = replace(profile, prompts=10)
    sandbox = Sandbox(root / "tick-sandbox", seed_rows=queue_rows(seed, first=90001))
    configure(sandbox, profile)
    sandbox.start()
    # Dagster's error boundary around the sensor leaves SIGTERM mapped to whatever SIGINT does, which is
    # "ignore" in a background job: keep the bench's own handler, so it can still be stopped cleanly
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        out.update(no_change_tick(sandbox, root))
    except Exception as exc:  # the other half still has something to say
        problems.append(f"TICK FAILED: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
        sandbox.stop()

    # (b) instant mode through the real daemon
    sandbox = Sandbox(root / "sandbox", seed_rows=queue_rows(replace(profile, prompts=0)))
    accepted = configure(sandbox, profile)
    memory = TreeMemory().start()
    _reset_own_peak()
    sandbox.start()
    try:
        trip = instant_trip(sandbox, accepted, root, profile, ctx, memory)
        problems.extend(trip.pop("problems"))
        out.update(trip)
    finally:
        memory.stop()
        sandbox.stop()
    # (c) the same trip while Drive's token lags minutes behind the sheet
    sandbox = Sandbox(root / "lag-sandbox", seed_rows=queue_rows(replace(profile, prompts=0)))
    accepted = configure(sandbox, profile)
    sandbox.start()
    sandbox.google.drive_lag_s = DRIVE_LAG_S
    try:
        lag_root = root / "lag"
        prepare_root(lag_root)
        lagged = instant_trip(
            sandbox,
            accepted,
            lag_root,
            profile,
            ctx,
            TreeMemory(),
            {"IMAGE_PIPELINE_SHEET_CHECK_S": "1"},
            ready_ticks=3,
        )
        problems.extend(f"drive lag: {p}" for p in lagged.pop("problems"))
        out["drive_lag_s"] = DRIVE_LAG_S
        out["drive_lag_row_to_post_s"] = lagged.get("row_to_post_s")
        out["drive_lag_sheets_requests"] = lagged.get("sheets_requests_per_prompt")
    finally:
        sandbox.stop()
    out["peak_rss_mb"] = memory.peak_mb
    out["peak_rss_by_process"] = memory.top()
    out["bench_process_peak_rss_mb"] = _own_peak_mb()
    out["check"] = "ok" if not problems else "; ".join(problems)
    out["crashed"] = any(p.startswith(("TIMED OUT", "DAEMON")) for p in problems)
    return out


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def no_change_tick(sandbox: Sandbox, root: Path) -> dict[str, Any]:
    import dagster as dg

    from image_pipeline.definitions import build_definitions

    env = _base_env(sandbox, root / "tick")
    env["IMAGE_PIPELINE_INSTANT"] = "1"
    defs = build_definitions(env)
    sensor = defs.resolve_sensor_def("prompt_sheet_sensor")
    sheet = defs.resources["prompt_sheet"]
    instance = dg.DagsterInstance.ephemeral()
    google = sandbox.google

    def tick(cursor: str | None) -> tuple[Any, str | None]:
        # the sensor logs through a console handler made with the context: keep it out of the table;
        # secrets are bound with EnvVar, which reads the process environment when the context is built
        with (
            contextlib.redirect_stderr(io.StringIO()),
            _environ(env),
            dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={
                    "prompt_sheet": sheet,
                    **{k: defs.resources[k] for k in ("image_generator", "publisher", "ledger")},
                },
            ) as c,
        ):
            result = sensor(c)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                keys = list(getattr(request, "partition_keys", []) or [])
                if keys:
                    instance.add_dynamic_partitions(request.partitions_def_name, keys)
            return result, result.cursor if result.cursor is not None else cursor
        return result, cursor

    cursor: str | None = None
    primed = False
    for _ in range(5):  # the first tick writes the ids, the next one sees that write once
        result, cursor = tick(cursor)
        if isinstance(result, dg.SkipReason):
            primed = True
            break
    google_total = sum(google.counters.values())
    sheets0, token0 = sheets_requests(sandbox), google.count("token")
    t0 = time.perf_counter()
    result, cursor = tick(cursor)
    tick_ms = (time.perf_counter() - t0) * 1000
    total = sum(google.counters.values()) - google_total
    tokens = google.count("token") - token0
    return {
        "tick_requests": total - tokens,
        "tick_sheets_requests": sheets_requests(sandbox) - sheets0,
        "tick_token_requests": tokens,
        "tick_ms": round(tick_ms, 1),
        "tick_skipped": isinstance(result, dg.SkipReason),
        "tick_primed": primed,
    }


def _is_run_process(pid: int) -> bool:
    """A run worker (``dagster api execute_run``) or one of its step processes."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return False
    return b"execute_run" in cmdline or b"spawn_main" in cmdline


def _idle_tick_seen(google: Any, since: int) -> bool:
    """True once two change-token requests came with no Sheets request between them (an idle tick)."""
    from image_pipeline.testing.emulators.google import READ_ENDPOINTS, WRITE_ENDPOINTS

    sheets = set(READ_ENDPOINTS) | set(WRITE_ENDPOINTS)
    quiet_since_token: bool | None = None
    for entry in list(google.requests)[since:]:
        if entry.endpoint == "drive.files.get":
            if quiet_since_token:
                return True
            quiet_since_token = True
        elif entry.endpoint in sheets and quiet_since_token is not None:
            quiet_since_token = False
    return False


def instant_trip(
    sandbox: Sandbox,
    accepted: list[float],
    root: Path,
    profile: Profile,
    ctx: Context,
    memory: TreeMemory,
    extra_env: dict[str, str] | None = None,
    ready_ticks: int | None = None,
) -> dict[str, Any]:
    """``ready_ticks``: start once the daemon made that many ticks, instead of once one tick read no
    Sheets (a sensor that reads the sheet at every tick never makes one)."""
    from image_pipeline.testing.sandbox import PROCESS_WORKSHEET

    env = worker_env(sandbox, root, profile)
    env.update(IMAGE_PIPELINE_INSTANT="1", IMAGE_PIPELINE_SENSOR_INTERVAL_S="1", **(extra_env or {}))
    bin_dir = Path(sys.executable).parent
    dagster_cli = str(bin_dir / "dagster") if (bin_dir / "dagster").is_file() else "dagster"
    daemon_cli = (
        str(bin_dir / "dagster-daemon") if (bin_dir / "dagster-daemon").is_file() else "dagster-daemon"
    )
    workspace = ["-w", str(PROJECT_ROOT / "workspace.yaml")]
    logs = root / "logs"
    problems: list[str] = []
    out: dict[str, Any] = {}
    # turned on in the instance (sensors are off when Dagster starts), as `dagster sensor start` does
    start_log = logs / "sensor-start.log"
    command = [dagster_cli, "sensor", "start", "prompt_sheet_sensor", *workspace]
    with started(command, cwd=PROJECT_ROOT, env=env, log=start_log) as proc:
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0:
        return {"problems": [f"DAEMON: `dagster sensor start` exited {code}: {_tail(start_log)}"]}
    google, telegram = sandbox.google, sandbox.telegram
    deadline = time.monotonic() + min(ctx.timeout_s, 600.0)
    t_daemon = time.monotonic()
    with started(
        [daemon_cli, "run", *workspace], cwd=PROJECT_ROOT, env=env, log=logs / "daemon.log"
    ) as daemon:
        memory.watch(daemon.pid)
        while not (
            google.count("drive.files.get") >= ready_ticks if ready_ticks else _idle_tick_seen(google, 0)
        ):
            if daemon.poll() is not None:
                return {"problems": [f"DAEMON exited {daemon.returncode}: {_tail(logs / 'daemon.log')}"]}
            if time.monotonic() > deadline:
                return {"problems": ["TIMED OUT waiting for the daemon's first idle sensor tick"]}
            time.sleep(0.05)
        out["daemon_ready_s"] = round(time.monotonic() - t_daemon, 2)
        out["daemon_ticks_before_row"] = google.count("drive.files.get")
        out["daemon_token_requests_before_row"] = google.count("token")
        idle_pids = set(process_tree(daemon.pid))
        sheets0, posts0 = sheets_requests(sandbox), len(accepted)
        with google._state:  # one atomic person edit
            google.append_rows(
                sandbox.spreadsheet_id, PROCESS_WORKSHEET, queue_rows(profile, 80001)[1:], raw=True
            )
            t_row = time.monotonic()
        while len(accepted) <= posts0:
            if daemon.poll() is not None:
                problems.append(f"DAEMON exited {daemon.returncode}: {_tail(logs / 'daemon.log')}")
                break
            if time.monotonic() > deadline:
                problems.append("TIMED OUT waiting for the post")
                break
            time.sleep(0.02)
        if len(accepted) > posts0:
            out["row_to_post_s"] = round(accepted[posts0] - t_row, 2)
            out["wall_s"] = out["row_to_post_s"]
            # the trip ends when the run's processes are gone (Done row written, queue row removed), so
            # the daemon is not killed in the middle of it
            end = time.monotonic() + 60
            while time.monotonic() < end and daemon.poll() is None:
                if not any(_is_run_process(p) for p in set(process_tree(daemon.pid)) - idle_pids):
                    out["row_to_run_end_s"] = round(time.monotonic() - t_row, 2)
                    break
                memory.poll()
                time.sleep(0.05)
        out["sheets_requests_per_prompt"] = sheets_requests(sandbox) - sheets0
        memory.poll()
    check = verify(sandbox, [prompt_text(80001)])
    problems.extend(check.pop("problems"))
    out.update(check)
    out["telegram_429"] = telegram.count_429
    out["sheets_429"] = google_429(sandbox)
    out["problems"] = problems
    return out


# ------------------------------------------------------------------------------------------------ baseline


def _baseline_retry(what: str, fn: Callable[[], Any], attempts: int = 3, delay_s: float = 5.0) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts:
                raise
            print(
                f"baseline retry: {what} failed ({type(exc).__name__}), again in {delay_s:g}s",
                file=sys.stderr,
            )
            time.sleep(delay_s)
    raise AssertionError("unreachable")


def baseline_one(env: dict[str, str] | None = None) -> int:
    """The ancestor bot's whole life: one prompt, then exit (see the module docstring)."""
    import io
    from datetime import datetime

    import gspread
    import requests
    from huggingface_hub import InferenceClient

    env = dict(os.environ) if env is None else env
    sheets_base = env["GOOGLE_SHEETS_API_BASE_URL"].rstrip("/")
    drive_base = env.get("GOOGLE_DRIVE_API_BASE_URL", sheets_base).rstrip("/")

    class LoopbackHTTPClient(gspread.HTTPClient):
        def request(self, method: str, endpoint: str, *args: Any, **kwargs: Any) -> Any:
            endpoint = endpoint.replace("https://sheets.googleapis.com", sheets_base).replace(
                "https://www.googleapis.com", drive_base
            )
            return super().request(method, endpoint, *args, **kwargs)

    gc = gspread.service_account(filename=env["GOOGLE_SERVICE_ACCOUNT_FILE"], http_client=LoopbackHTTPClient)
    gc.set_timeout(30)
    sh = _baseline_retry("open", lambda: gc.open(env.get("GOOGLE_SHEET_TITLE", SPREADSHEET_TITLE)))
    process = _baseline_retry("worksheet", lambda: sh.worksheet("Process"))
    prompts = _baseline_retry("read column A", lambda: process.col_values(1))
    if len(prompts) < 2:
        print("no prompts left")
        return 0
    row = _baseline_retry("read row 2", lambda: process.row_values(2))
    prompt = row[0] if row else ""
    client = InferenceClient(model=env["HF_INFERENCE_BASE_URL"], token=env.get("HF_TOKEN"), timeout=120)
    try:
        image = _baseline_retry("generate", lambda: client.text_to_image(prompt))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        url = f"{env['TELEGRAM_API_BASE_URL'].rstrip('/')}/bot{env['TELEGRAM_TOKEN']}/sendPhoto"

        def send() -> Any:
            response = requests.post(
                url,
                data={"chat_id": env["TELEGRAM_CHAT_ID"], "caption": prompt},
                files={"photo": ("image.png", buf.getvalue(), "image/png")},
                timeout=60,
            )
            response.raise_for_status()
            return response.json()["result"]

        result = _baseline_retry("sendPhoto", send)
        status, info = "SUCCESS", f"message_id {result['message_id']}"
    except Exception as exc:
        status, info = "FAILED", f"{type(exc).__name__}"
    _baseline_retry("delete row 2", lambda: process.delete_rows(2))
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    done = _baseline_retry("Done worksheet", lambda: sh.worksheet("Done"))
    _baseline_retry("append Done", lambda: done.append_row([prompt, status, info, stamp]))
    print(f"{status}: {prompt[:60]}")
    return 0 if status == "SUCCESS" else 1


# ------------------------------------------------------------------------------------------------ table


@dataclass(frozen=True)
class Target:
    label: str
    key: str
    ok: Callable[[Any], bool]


TARGETS: dict[str, list[Target]] = {
    "B100-gen": [
        Target("eff>=0.85", "efficiency", lambda v: v >= 0.85),
        Target("sheets/p<=0.1", "sheets_requests_per_prompt", lambda v: v <= 0.1),
        Target("ovh<=50ms", "overhead_ms_per_prompt", lambda v: v <= 50),
    ],
    "B100-post": [
        Target("429=0", "telegram_429", lambda v: v == 0),
        Target("wall<=1.05*bound", "efficiency", lambda v: v > 0 and 1 / v <= 1.05),
        Target("sheets/p<=0.1", "sheets_requests_per_prompt", lambda v: v <= 0.1),
        Target("ovh<=50ms", "overhead_ms_per_prompt", lambda v: v <= 50),
    ],
    "B1000-mem": [
        Target("rss<=400MB", "peak_rss_mb", lambda v: v <= 400),
        Target("ovh<=50ms", "overhead_ms_per_prompt", lambda v: v <= 50),
    ],
    "sensor": [Target("tick<=1req", "tick_requests", lambda v: v <= 1)],
}


def target_marks(name: str, figures: dict[str, Any]) -> list[tuple[str, bool | None]]:
    marks = []
    for target in TARGETS.get(name, []):
        value = figures.get(target.key)
        marks.append((target.label, None if value is None else bool(target.ok(value))))
    return marks


def with_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Add ``*_vs_baseline`` keys to every scenario, when the baseline ran."""
    base = results.get(BASELINE)
    if not base:
        return

    def per_prompt(r: dict[str, Any]) -> float | None:
        return r["wall_s"] / r["prompts"] if r.get("wall_s") is not None and r.get("prompts") else None

    for name, r in results.items():
        if name == BASELINE:
            continue
        r["wall_per_prompt_vs_baseline"] = _ratio(per_prompt(r), per_prompt(base))
        for key in ("sheets_requests_per_prompt", "peak_rss_mb", "overhead_ms_per_prompt", "efficiency"):
            r[f"{key}_vs_baseline"] = _ratio(r.get(key), base.get(key))


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _with_ratio(value: Any, ratio: Any, digits: int = 2) -> str:
    text = _num(value, digits)
    return text if ratio is None else f"{text} (x{ratio:.2g})"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    header = [
        "scenario",
        "prompts",
        "posted",
        "wall s",
        "bound s",
        "eff",
        "wall/prompt s (vs base)",
        "sheets req/prompt (vs base)",
        "tg 429",
        "peak RSS MB (vs base)",
        "overhead ms/prompt (vs base)",
        "targets",
        "check",
    ]
    lines = [header]
    for name, r in results.items():
        per_prompt = r["wall_s"] / r["prompts"] if r.get("wall_s") is not None and r.get("prompts") else None
        marks = target_marks(name, r)
        targets = ", ".join(f"{label} {'-' if ok is None else 'ok' if ok else 'MISS'}" for label, ok in marks)
        if name == "sensor":
            extra = f"tick {_num(r.get('tick_requests'))} req/{_num(r.get('tick_ms'), 0)} ms"
            if r.get("drive_lag_row_to_post_s") is not None:
                extra += f"; Drive lag {_num(r.get('drive_lag_s'), 0)} s: {_num(r['drive_lag_row_to_post_s'], 1)} s"
            targets = f"{targets}; {extra}" if targets else extra
        lines.append(
            [
                name,
                _num(r.get("prompts")),
                _num(r.get("posted")),
                _num(r.get("wall_s"), 1),
                _num(r.get("bound_s"), 1),
                _num(r.get("efficiency"), 2),
                _with_ratio(per_prompt, r.get("wall_per_prompt_vs_baseline"), 3),
                _with_ratio(
                    r.get("sheets_requests_per_prompt"), r.get("sheets_requests_per_prompt_vs_baseline"), 2
                ),
                _num(r.get("telegram_429")),
                _with_ratio(r.get("peak_rss_mb"), r.get("peak_rss_mb_vs_baseline"), 0),
                _with_ratio(r.get("overhead_ms_per_prompt"), r.get("overhead_ms_per_prompt_vs_baseline"), 0),
                targets or "-",
                r.get("check", "-") if r.get("check") == "ok" else f"!! {r.get('check', '?')} !!",
            ]
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    rendered = ["  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in lines]
    rendered.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(rendered)


# ------------------------------------------------------------------------------------------------ main


def selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        names = [n for n in ALL_NAMES if n in args.only]
        if args.with_baseline and BASELINE not in names:
            names.append(BASELINE)
        return names
    return [n for n in ALL_NAMES if n != BASELINE or not args.no_baseline]


def profiles_for(args: argparse.Namespace) -> dict[str, Profile]:
    profiles = default_profiles(args.side)
    for name in ("B100-gen", "B100-post", "B1000-mem"):
        count = args.prompts if args.prompts else max(1, round(profiles[name].prompts * args.scale))
        profiles[name] = replace(profiles[name], prompts=count)
    profiles[BASELINE] = replace(profiles[BASELINE], prompts=args.baseline_prompts)
    if args.no_latency:
        profiles = {k: p.without_latency() for k, p in profiles.items()}
    return profiles


def run_bench(
    args: argparse.Namespace, results: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Every selected scenario in turn; ``results`` fills as they finish (an interrupt keeps those)."""
    results = {} if results is None else results
    profiles = profiles_for(args)
    own_root = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="image-pipeline-bench-")) if own_root else Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    ctx = Context(root=root, timeout_s=args.timeout_s)
    try:
        for name in selected(args):
            print(f"[bench] {name}: {profiles[name].prompts} prompt(s) ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                if name == BASELINE:
                    results[name] = run_baseline(profiles[name], ctx)
                elif name == "sensor":
                    results[name] = run_sensor(profiles[name], ctx)
                else:
                    results[name] = run_product_scenario(name, profiles[name], ctx)
            except Exception as exc:  # report it and go on: the other scenarios still measure something
                results[name] = _figures(
                    prompts=profiles[name].prompts,
                    check=f"CRASHED: {type(exc).__name__}: {str(exc)[:300]}",
                    crashed=True,
                )
            print(
                f"[bench] {name}: done in {time.monotonic() - t0:.0f}s ({results[name].get('check')})",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    with_ratios(results)
    return results


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m image_pipeline.testing.bench",
        description="Time the pipeline against emulators with a fixed latency profile and print one table.",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument(
        "--only", action="append", choices=ALL_NAMES, help="run only this scenario (repeatable)"
    )
    parser.add_argument("--with-baseline", action="store_true", help="with --only: run the baseline too")
    parser.add_argument("--no-baseline", action="store_true", help="without --only: skip the baseline")
    parser.add_argument(
        "--baseline-prompts", type=int, default=100, help="prompts of the baseline (default 100)"
    )
    parser.add_argument("--prompts", type=int, default=0, help="prompts of B100-gen, B100-post and B1000-mem")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the default prompt counts")
    parser.add_argument(
        "--side", type=int, default=512, help="image side of the B100 scenarios and the sensor"
    )
    parser.add_argument("--no-latency", action="store_true", help="no emulated latency at all (smoke runs)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="give up on a scenario after this")
    parser.add_argument("--workdir", type=Path, default=None, help="keep every scenario's files here")
    parser.add_argument("--baseline-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_one:
        return baseline_one()
    results: dict[str, dict[str, Any]] = {}
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        run_bench(args, results)
    except KeyboardInterrupt:
        # every server and subprocess was stopped on the way out; what finished is still worth printing
        interrupted = True
        print("[bench] interrupted: the table holds the scenarios that finished", file=sys.stderr)
        with_ratios(results)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if interrupted:
        return 130
    return 1 if any(r.get("crashed") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
