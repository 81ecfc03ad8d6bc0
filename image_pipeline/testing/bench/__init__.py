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
- ``B100-a1111``: the B100-gen queue and latencies, but the images come from the sandbox's AUTOMATIC1111
  emulator (``IMAGE_BACKENDS=a1111:<its URL>``): one job at a time behind its FIFO lock, 1 s each, and
  ``A1111_CONCURRENCY=1`` (``--a1111-concurrency`` changes it). Bound = prompts x 1 s = 100 s, target
  wall <= 1.1 x bound; the emulator's counts (``a1111_jobs_run``, ``a1111_max_concurrent_jobs``, which
  must be 1, ``a1111_max_queued``) and where the time beyond the bound went (before the first job,
  between jobs, after the last one) are printed beside the targets. See ``a1111.py``.
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

The package: ``profiles`` (scenario names and profiles), ``emulated`` (the emulators' set-up and what is
counted from them), ``memory`` (peak RSS of a process tree), ``processes`` (a worker's environment, start
and kill), ``scenarios`` (the burst scenarios and the baseline's runner), ``sensor`` (the sensor
scenario), ``baseline`` (the ancestor's one-prompt process), ``report`` (targets, ratios, the table),
``cli`` (arguments, the run, exit code); this file re-exports their names, so
``from image_pipeline.testing.bench import X`` works as it did. Every submodule imports only the standard
library at the top: ``--baseline-one`` runs in a fresh process per prompt and must not pay for more.
"""

from __future__ import annotations

from image_pipeline.testing.bench.baseline import ANCESTOR_DONE_HEADER, SPREADSHEET_TITLE, baseline_one
from image_pipeline.testing.bench.cli import main, profiles_for, run_bench, selected
from image_pipeline.testing.bench.emulated import (
    MARKER_RE,
    configure,
    emulated_waits_s,
    google_429,
    hf_429,
    prompt_text,
    queue_rows,
    sheets_requests,
    verify,
)
from image_pipeline.testing.bench.memory import POLL_S, TreeMemory, process_tree
from image_pipeline.testing.bench.processes import (
    PROJECT_ROOT,
    kill_tree,
    prepare_root,
    run_command,
    started,
    worker_env,
)
from image_pipeline.testing.bench.profiles import (
    ALL_NAMES,
    BASELINE,
    JSON_KEYS,
    SCENARIOS,
    Profile,
    default_profiles,
)
from image_pipeline.testing.bench.report import TARGETS, Target, format_table, target_marks, with_ratios
from image_pipeline.testing.bench.scenarios import Context, run_baseline, run_product_scenario
from image_pipeline.testing.bench.sensor import DRIVE_LAG_S, instant_trip, no_change_tick, run_sensor

__all__ = [
    "ALL_NAMES",
    "ANCESTOR_DONE_HEADER",
    "BASELINE",
    "DRIVE_LAG_S",
    "JSON_KEYS",
    "MARKER_RE",
    "POLL_S",
    "PROJECT_ROOT",
    "SCENARIOS",
    "SPREADSHEET_TITLE",
    "TARGETS",
    "Context",
    "Profile",
    "Target",
    "TreeMemory",
    "baseline_one",
    "configure",
    "default_profiles",
    "emulated_waits_s",
    "format_table",
    "google_429",
    "hf_429",
    "instant_trip",
    "kill_tree",
    "main",
    "no_change_tick",
    "prepare_root",
    "process_tree",
    "profiles_for",
    "prompt_text",
    "queue_rows",
    "run_baseline",
    "run_bench",
    "run_command",
    "run_product_scenario",
    "run_sensor",
    "selected",
    "sheets_requests",
    "started",
    "target_marks",
    "verify",
    "with_ratios",
    "worker_env",
]
