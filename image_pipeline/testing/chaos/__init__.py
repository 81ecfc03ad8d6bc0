"""Chaos harness: the real worker against faulty emulators, SIGKILLs at the worst moments and a person editing.

``python -m image_pipeline.testing.chaos [--prompts N] [--fault-rate F] [--kills K] [--writer/--no-writer]
[--json PATH] [--seed S] [--timeout-s T] [--workers N] [--distributed]``

The pipeline runs exactly as in production (``image-pipeline run`` in a subprocess, real gspread,
InferenceClient and requests) against the sandbox's loopback emulators, which fail a fraction of all
requests. A supervisor restarts the worker whenever it exits, the way the next sensor tick or a
re-execution would, and kills it (SIGKILL, from inside the emulators) right where a crash hurts most:
during generation, just after Telegram accepted a photo, while the Done row is being appended and while the
queue row is being removed. Meanwhile a second thread plays the person curating the sheet.

With ``--workers N`` N workers race over the one backlog, each in its own folder with its own Dagster home;
a kill hits the worker whose request reached that point. ``--distributed`` shares nothing between them but
a PostgreSQL ledger and an s3:// store, throwaway servers the harness starts on 127.0.0.1, and runs each
worker in its own PID and UTS namespace with one hostname for all (``unshare``, where allowed). The
figures ``workers`` and ``distributed`` say which run it was.

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

The package: ``truth`` (markers, prompt texts, what the person did), ``faults`` (fault plans and the
emulators' set-up), ``workers`` (the worker process and its supervisor), ``fleet`` (the workers' folders
and the servers they share), ``books`` (reads of the ledger), ``kills`` (planned SIGKILLs fired from the
emulators), ``person`` (the editor thread and the CHECK CHANNEL checker), ``audit`` (the verdict, the
secret scan, the pass rule), ``run`` (one chaos run), ``cli`` (arguments, table, exit code); this file
re-exports their names, so ``from image_pipeline.testing.chaos import X`` works as it did.
"""

from __future__ import annotations

from image_pipeline.testing.chaos.audit import (
    PASS_FIGURES,
    RESULT_KEYS,
    WRONGLY_FAILED_KINDS,
    Witness,
    duplicate_window,
    passed,
    scan_secrets,
    verdict,
)
from image_pipeline.testing.chaos.cli import format_table, main
from image_pipeline.testing.chaos.faults import (
    EMULATOR_TIMEOUT_HOLD_S,
    GENERATIONS_NOT,
    LONG_FLOOD,
    PROVIDER_REFUSAL,
    RIGHTS,
    ROWS_WRITES,
    SENDS,
    CountingFaultPlan,
)
from image_pipeline.testing.chaos.kills import (
    KILL_KINDS,
    Kill,
    Killer,
    KillPoint,
    appended_worksheet,
    plan_kills,
)
from image_pipeline.testing.chaos.person import ChannelChecker, PersonWriter, queue_rows, uncertain_deliveries
from image_pipeline.testing.chaos.run import PROJECT_ROOT, lift_timed_pause, open_removals, run_chaos
from image_pipeline.testing.chaos.truth import (
    IMAGE_SIDE,
    MARKER_RE,
    PROCESS_HEADER,
    REJECT_EVERY,
    REJECTED_WORD,
    Truth,
    marker_of,
)
from image_pipeline.testing.chaos.workers import (
    NOT_STARTED_PATIENCE,
    STALL_S,
    WORKER_COMMAND,
    WORKER_KNOBS,
    Supervisor,
)

__all__ = [
    "EMULATOR_TIMEOUT_HOLD_S",
    "GENERATIONS_NOT",
    "IMAGE_SIDE",
    "KILL_KINDS",
    "LONG_FLOOD",
    "MARKER_RE",
    "NOT_STARTED_PATIENCE",
    "PASS_FIGURES",
    "PROCESS_HEADER",
    "PROJECT_ROOT",
    "PROVIDER_REFUSAL",
    "REJECTED_WORD",
    "REJECT_EVERY",
    "RESULT_KEYS",
    "RIGHTS",
    "ROWS_WRITES",
    "SENDS",
    "STALL_S",
    "WORKER_COMMAND",
    "WORKER_KNOBS",
    "WRONGLY_FAILED_KINDS",
    "ChannelChecker",
    "CountingFaultPlan",
    "Kill",
    "KillPoint",
    "Killer",
    "PersonWriter",
    "Supervisor",
    "Truth",
    "Witness",
    "appended_worksheet",
    "duplicate_window",
    "format_table",
    "lift_timed_pause",
    "main",
    "marker_of",
    "open_removals",
    "passed",
    "plan_kills",
    "queue_rows",
    "run_chaos",
    "scan_secrets",
    "uncertain_deliveries",
    "verdict",
]
