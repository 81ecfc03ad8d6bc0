"""``image-pipeline run``: every pending prompt through the Dagster job, in batches, in this process.

Runs are recorded in the local instance, so they show in the UI later. Runs a killed command left
behind are reaped first, so their prompts are not stuck as "started" forever.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from image_pipeline.cli.environment import load_env
from image_pipeline.cli.progress import ConsoleProgress
from image_pipeline.services.hosts import node_id

SAMPLES = Path(__file__).parents[1] / "samples"  # the package's sample queue for the embedded default


def _seed_workbook(folder: Path) -> bool:
    """On the embedded default, start from the shipped sample queue when there is no workbook yet."""
    if (folder / "process.csv").exists():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLES / "process.csv", folder / "process.csv")
    return True


def cmd_run(args: argparse.Namespace) -> int:
    load_env()
    import dagster as dg

    from image_pipeline.definitions import build_definitions

    defs = build_definitions()
    # The instance the runs use, given to build_resources too: without one it builds an ephemeral
    # instance of its own (about 0.3 s of a worker's start).
    instance = dg.DagsterInstance.get()
    # Resolved copies: fields bound with EnvVar (tokens, chat id, key JSON) only have values once built.
    buildable = {k: v for k, v in defs.resources.items() if k != "pipeline_io_manager"}
    with dg.build_resources(buildable, instance=instance) as built:
        resources = {
            "prompt_sheet": built.prompt_sheet,
            "image_generator": built.image_generator,
            "publisher": built.publisher,
            "ledger": built.ledger,
            "pipeline_io_manager": defs.resources["pipeline_io_manager"],
        }
        return _run(args, defs, resources, instance)


def _run(args: argparse.Namespace, defs: Any, resources: dict[str, Any], instance: Any) -> int:

    from image_pipeline.defs.batching import RANGE_END, RANGE_START, batches
    from image_pipeline.defs.partitions import prompt_partitions
    from image_pipeline.domain.errors import PipelineError
    from image_pipeline.lifecycle.gate import RUN_SECOND_LOOK_S, gate
    from image_pipeline.lifecycle.progress import listening
    from image_pipeline.lifecycle.queue_lock import ids_assigned
    from image_pipeline.services.sheets import LocalWorkbook

    # these lines are the progress display: through a pipe (`make run | tee`) they must not wait in a buffer
    if callable(reconfigure := getattr(sys.stdout, "reconfigure", None)):
        reconfigure(line_buffering=True)
    sheet = resources["prompt_sheet"]
    if isinstance(sheet, LocalWorkbook) and _seed_workbook(Path(sheet.folder)):
        print(f"copied the sample queue into {sheet.folder}/process.csv")
    print(f"queue:     {sheet.describe()}")
    print(f"generator: {resources['image_generator'].describe()}")
    print(f"publisher: {resources['publisher'].describe()}")
    # the schedule's and sensor's gate, before the first queue write (ids) and the first paid request
    book = resources["ledger"].open() if "ledger" in resources else None
    if book is not None and getattr(resources["ledger"], "url", ""):
        # said before the gate and the id pass (seconds of requests): workers started together then all
        # count each other when they size their first shares (lifecycle/shares.py)
        _say_at_work(book)
    pause = book.pause_state() if book is not None else None
    trio = [sheet, resources["image_generator"], resources["publisher"]]
    refused = (
        pause.message() if pause is not None else gate(trio, store=book, second_look_s=RUN_SECOND_LOOK_S)
    )
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    try:
        if book is not None:  # rows an interrupted run deleted by mistake, put back before anything else
            sheet.recover_removals(book)
        snapshot = ids_assigned(sheet, book)  # one worker at a time writes new ids
    except PipelineError as exc:
        print(f"error: cannot read the queue: {exc}", file=sys.stderr)
        return 2
    ids = [row.prompt_id for row in snapshot.rows]
    if args.limit:
        ids = ids[: args.limit]
    if not ids:
        print("the queue is empty: nothing to do")
        _print_locations(resources)
        return 0
    reaped = reap_dead_runs(instance)
    if reaped:
        print(f"marked {reaped} run(s) of a killed earlier `run` as failed and freed their pool slots")
    known = set(instance.get_dynamic_partitions(prompt_partitions.name))
    new = [pid for pid in ids if pid not in known]
    if new:
        instance.add_dynamic_partitions(prompt_partitions.name, new)
    job = defs.resolve_job_def("process_prompts_job")
    counts: dict[str, int] = {}
    exit_code = 0
    order = instance.get_dynamic_partitions(prompt_partitions.name)
    console = ConsoleProgress(ids)
    shared_ledger = book is not None and bool(getattr(resources["ledger"], "url", ""))
    if shared_ledger:
        # workers sharing the ledger: each run takes a share claimed beforehand, not the next fixed batch
        wanted = set(ids)
        rows = [row for row in snapshot.rows if row.prompt_id in wanted]
        planned: Iterator[tuple[list[str], str, list[str]]] = _shares(
            book, resources, rows, order, _batch_size(args), instance
        )
        console.begin(None)
    else:
        fixed = batches(ids, order, _batch_size(args))
        planned = iter([(batch, str(uuid.uuid4()), batch) for batch in fixed])
        console.begin(len(fixed))
    for batch, run_id, mine in planned:
        # One run per batch: a partition range (any finished prompt inside it is a cheap no-op).
        tags = {
            "trigger": "make run",
            HOST_TAG: socket.gethostname(),
            PID_TAG: str(os.getpid()),
            NODE_TAG: node_id(),
            HEARTBEAT_TAG: str(int(time.time())),
        }
        if len(batch) == 1:
            range_args: dict[str, Any] = {"partition_key": batch[0]}
        else:
            tags.update({RANGE_START: batch[0], RANGE_END: batch[-1]})
            range_args = {}
        # our own run id, so the lines printed come from this run only (and a share's claims are its)
        console.run_id = run_id
        with (
            listening(console.on_event),
            _heartbeat(instance, console.run_id, book if shared_ledger else None),
        ):
            result = job.execute_in_process(
                instance=instance,
                raise_on_error=False,
                tags=tags,
                run_id=console.run_id,
                # the progress lines are the console output; the full log stays in the instance
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                **range_args,
            )
        done = result.output_for_node("done_entry") if result.success else {}
        failure = ""
        if not result.success:
            event = next((e for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None)
            failure = _failure_text(event)
        # the prompts this run was for (in a share's range, others' prompts are only skipped)
        for pid in [p for p in ids if p in set(mine)]:
            if result.success:
                # the Done row's status: what the final count reports
                outcome = done.get(pid)
                status = outcome.status if outcome is not None else "?"
                if pid not in console.seen:  # not reported while running (should not happen): say it now
                    console.line(pid, status, outcome.detail if outcome is not None else "")
            elif pid in console.seen:
                # it got its outcome (posted, failed, ...) before the run stopped; no Done row yet
                status = console.seen[pid]
            else:
                status = "RUN FAILED"
                console.line(pid, status, failure)
            counts[status] = counts.get(status, 0) + 1
        if not result.success:
            print(
                "stopping: fix the problem above and run again; the remaining prompts stay queued",
                file=sys.stderr,
            )
            exit_code = 1
            break
    print("done: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    _print_locations(resources)
    return exit_code


HOST_TAG = "image_pipeline/host"
PID_TAG = "image_pipeline/pid"
NODE_TAG = "image_pipeline/node"  # kernel boot id + PID namespace: where PID_TAG means something
HEARTBEAT_TAG = "image_pipeline/heartbeat"  # unix time, renewed while the run executes
HEARTBEAT_S = 10.0
HEARTBEAT_STALE_S = 60.0  # a run of another PID namespace silent this long is dead (a restarted container)


def _shares(
    book: Any, resources: dict[str, Any], rows: list[Any], order: list[str], size: int, instance: Any
) -> Iterator[tuple[list[str], str, list[str]]]:
    """Each next run's partition range, run id and prompts: a share of the still-free prompts claimed for that run
    in the ledger before it starts (``lifecycle/shares.py``), until nothing is free for this worker."""
    from image_pipeline.domain.rows import clean_text
    from image_pipeline.lifecycle.ledger import owner_token, stale_owner_check
    from image_pipeline.lifecycle.shares import (
        WORKER_SEEN_S,
        Candidate,
        free_candidates,
        reserve,
        share_size,
        worker_of,
    )

    is_stale = stale_owner_check(instance)
    ledger = resources["ledger"]
    me = worker_of(owner_token(""))
    # enough for two rounds of the generation slots: a smaller run would leave slots idle at its end
    slots = max(1, int(getattr(resources["image_generator"], "concurrency", 1)))
    floor = 2 * slots
    left = [Candidate(r.prompt_id, r.fingerprint(), clean_text(r.prompt)) for r in rows]
    first = True
    while left:
        run_id = str(uuid.uuid4())
        owner = owner_token(run_id)
        book.seen_worker(me)
        free, others = free_candidates(book, left, me, is_stale)
        workers = max(len(book.workers_seen(WORKER_SEEN_S) | {me}), others + 1)
        # the free prompts go to the workers without a share: those holding one are busy with it
        unsure = first and workers == 1
        n = share_size(len(free), workers - others, unsure=unsure, floor=floor, ceiling=size, slots=slots)
        first = False
        taken = reserve(book, free, n, owner=owner, lease_s=ledger.lease_s, is_stale=is_stale, order=order)
        if not taken:
            return  # what is left is another live worker's, or in Done already
        mine = set(taken)
        left = [c for c in free if c.key not in mine]
        first_i, last_i = order.index(taken[0]), order.index(taken[-1])
        yield order[first_i : last_i + 1], run_id, taken


def _say_at_work(book: Any) -> None:
    from image_pipeline.lifecycle.ledger import owner_token
    from image_pipeline.lifecycle.shares import worker_of

    me = worker_of(owner_token(""))
    with contextlib.suppress(Exception):  # it only sizes shares; the claims keep the work apart anyway
        book.seen_worker(me)
    atexit.register(_forget, book, me)


def _forget(book: Any, me: str) -> None:
    with contextlib.suppress(Exception):
        book.forget_worker(me)


def _batch_size(args: argparse.Namespace) -> int:
    from image_pipeline.settings import settings_from

    return max(1, args.batch_size or settings_from(os.environ).batch_size)


@contextlib.contextmanager
def _heartbeat(instance: Any, run_id: str, book: Any = None) -> Iterator[None]:
    """While the run executes: its heartbeat tag renewed, and dead runs reaped again, so a step waiting for a
    pool slot that a killed worker's run holds gets it once that run's heartbeat is stale; with a shared
    ``book``, this worker still counted among the ledger's workers."""
    from image_pipeline.lifecycle.ledger import owner_token
    from image_pipeline.lifecycle.shares import worker_of

    me = worker_of(owner_token(""))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            # a missed beat is harmless (the run is only judged after HEARTBEAT_STALE_S of silence)
            with contextlib.suppress(Exception):
                instance.add_run_tags(run_id, {HEARTBEAT_TAG: str(int(time.time()))})
            with contextlib.suppress(Exception):
                reap_dead_runs(instance)
            if book is not None:
                with contextlib.suppress(Exception):
                    book.seen_worker(me)

    thread = threading.Thread(target=beat, name="run-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def reap_dead_runs(instance: Any) -> int:
    """Fail the unfinished runs of an earlier ``run`` whose process is gone, and free their pool slots.

    ``run`` executes in process, without the daemon whose run monitoring would do this: a killed process
    leaves its run STARTED holding a sheets_api/hf_api/telegram_api slot, and every later run would wait
    for that slot forever.
    """
    import dagster as dg

    from image_pipeline.services.hosts import process_alive

    host, node = socket.gethostname(), node_id()
    unfinished = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]
    reaped = 0
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=unfinished, tags={HOST_TAG: host})):
        try:
            pid = int(run.tags.get(PID_TAG, ""))
        except ValueError:
            continue
        # A process id means something only in the kernel and PID namespace that tagged it: workers in
        # containers share hostnames and repeat PIDs, and a live worker's run must never be failed by a
        # PID check. A run tagged in another namespace (a restarted container) is dead when its heartbeat
        # stopped; one without a heartbeat (an older release) is left to Dagster's run monitoring.
        if run.tags.get(NODE_TAG, node) != node:
            try:
                beat = float(run.tags.get(HEARTBEAT_TAG, ""))
            except ValueError:
                continue
            if time.time() - beat < HEARTBEAT_STALE_S:
                continue
        elif pid == os.getpid() or process_alive(pid):
            continue
        instance.report_run_failed(run, message=f"the `image-pipeline run` process {pid} is gone")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped += 1
    return reaped


def _failure_text(event: object) -> str:
    if event is None:
        return ""
    data = getattr(event, "step_failure_data", None)
    if data is not None and data.user_failure_data is not None and data.user_failure_data.description:
        return str(data.user_failure_data.description)
    if data is not None and data.error is not None:
        return data.error.message.strip().splitlines()[-1]
    return str(getattr(event, "message", ""))


def _print_locations(resources: dict) -> None:
    from image_pipeline.services.publisher.outbox import LocalOutbox
    from image_pipeline.services.sheets import LocalWorkbook

    sheet, publisher = resources["prompt_sheet"], resources["publisher"]
    io = resources["pipeline_io_manager"]
    print(f"images:    {io.base_dir.rstrip('/')}/generated_image")
    if isinstance(publisher, LocalOutbox):
        print(f"gallery:   {Path(publisher.folder) / 'index.html'}")
    if isinstance(sheet, LocalWorkbook):
        print(f"done log:  {Path(sheet.folder) / 'done.csv'}")
    else:
        print(f"done log:  worksheet {sheet.done_worksheet!r} of {sheet.describe()}")
    print(f"runs:      `make dev`, then http://127.0.0.1:3000 (instance in {os.environ.get('DAGSTER_HOME')})")
