"""``image-pipeline``: the command line around the Dagster definitions.

``run`` processes every pending prompt of the configured queue through Dagster (one recorded run per
prompt in the local instance, so the runs show in the UI later) and exits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "samples"


def _load_env() -> None:
    from dotenv import load_dotenv

    # The ancestor kept TELEGRAM_TOKEN, TELEGRAM_CHAT_ID and HF_TOKEN in .env; real env wins over it.
    load_dotenv(Path.cwd() / ".env", override=False)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not os.environ.get("DAGSTER_HOME"):
        home = Path.cwd() / ".dagster_home"
        home.mkdir(exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    project_yaml = Path.cwd() / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and project_yaml.exists():
        shutil.copy(project_yaml, home / "dagster.yaml")


def _seed_workbook(folder: Path) -> bool:
    """On the embedded default, start from the shipped sample queue when there is no workbook yet."""
    if (folder / "process.csv").exists():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLES / "process.csv", folder / "process.csv")
    return True


def cmd_run(args: argparse.Namespace) -> int:
    _load_env()
    import dagster as dg

    from image_pipeline.definitions import build_definitions

    defs = build_definitions()
    # Resolved copies: fields bound with EnvVar (tokens, chat id, key JSON) only have values once built.
    with dg.build_resources({k: v for k, v in defs.resources.items() if k != "pipeline_io_manager"}) as built:
        resources = {
            "prompt_sheet": built.prompt_sheet,
            "image_generator": built.image_generator,
            "publisher": built.publisher,
            "ledger": built.ledger,
            "pipeline_io_manager": defs.resources["pipeline_io_manager"],
        }
        return _run(args, defs, resources)


def _run(args: argparse.Namespace, defs: Any, resources: dict[str, Any]) -> int:
    import dagster as dg

    from image_pipeline.defs.batching import RANGE_END, RANGE_START, batches
    from image_pipeline.defs.partitions import prompt_partitions
    from image_pipeline.errors import PipelineError
    from image_pipeline.preflight import RUN_SECOND_LOOK_S, gate
    from image_pipeline.progress import listening
    from image_pipeline.resources.sheets import LocalWorkbook

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
        snapshot = sheet.ensure_ids()
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
    instance = dg.DagsterInstance.get()
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
    planned = batches(ids, order, _batch_size(args))
    console = _ConsoleProgress(ids)
    console.begin(len(planned))
    for batch in planned:
        # One run per batch: a partition range (any finished prompt inside it is a cheap no-op).
        tags = {"trigger": "make run", HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        if len(batch) == 1:
            range_args: dict[str, Any] = {"partition_key": batch[0]}
        else:
            tags.update({RANGE_START: batch[0], RANGE_END: batch[-1]})
            range_args = {}
        # our own run id, so the lines printed come from this run only
        console.run_id = str(uuid.uuid4())
        with listening(console.on_event):
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
        for pid in [p for p in ids if p in set(batch)]:
            if result.success:
                # the Done row's status: what the final count reports
                entry = done.get(pid, {})
                status = entry.get("status", "?")
                if pid not in console.seen:  # not reported while running (should not happen): say it now
                    console.line(pid, status, entry.get("information") or entry.get("reason", ""))
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


class _ConsoleProgress:
    """The lines ``run`` prints: one per prompt as its run reports it, counted across all the batches."""

    def __init__(self, ids: list[str]) -> None:
        self.wanted = set(ids)
        self.total = len(ids)
        self.seen: dict[str, str] = {}  # prompt id -> the status printed for it
        self.run_id = ""
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def begin(self, runs: int) -> None:
        plural = "run" if runs == 1 else "runs"
        print(f"[0/{self.total}] starting: {self.total} prompts in {runs} {plural}  (ETA --)", flush=True)

    def line(self, pid: str, status: str, detail: str) -> None:
        from image_pipeline.progress import progress_text

        with self._lock:
            self.seen[pid] = status
            n = len(self.seen)
            timing = progress_text(n, self.total, time.monotonic() - self.started)
            print(f"[{n}/{self.total}] {pid}: {status} {detail[:160]}  ({timing})", flush=True)

    def on_event(self, event: object) -> None:
        from image_pipeline.progress import BatchLogged, PromptFinished

        if getattr(event, "run_id", None) != self.run_id:
            return
        if isinstance(event, PromptFinished):
            # ride-along prompts of a range (finished earlier) are not part of this command's count
            if event.prompt_id in self.wanted and event.prompt_id not in self.seen:
                self.line(event.prompt_id, event.status, event.detail)
        elif isinstance(event, BatchLogged):
            print(f"      {event.summary()}", flush=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    """One table of every check; the exit code says whether anything failed."""
    _load_env()
    import dagster as dg

    from image_pipeline.definitions import build_definitions
    from image_pipeline.preflight import FAIL, WARN, render_table, run_preflight

    defs = build_definitions()
    names = ("prompt_sheet", "image_generator", "publisher", "ledger")
    with dg.build_resources({k: defs.resources[k] for k in names}) as built:
        resources = [getattr(built, k) for k in names]
        for label, resource in zip(("queue", "generator", "publisher"), resources[:3], strict=True):
            try:
                text = resource.describe()
            except Exception as exc:  # a broken key shows in the table below; describing needs it too
                text = f"{type(resource).__name__} ({type(exc).__name__})"
            print(f"{label + ':':<11}{text}")
        print()
        checks = run_preflight(resources)
    print(render_table(checks))
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    print()
    if failed:
        print(f"{failed} check(s) failed, {warned} warning(s): fix the FAIL lines above, then run again")
        return 1
    print(f"all services ready ({warned} warning(s))")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Lift the budget guard's pause (after credits were added or the quota renewed)."""
    _load_env()
    from image_pipeline.definitions import build_definitions

    book = build_definitions().resources["ledger"].open()
    lifted = book.resume()
    if not lifted:
        print("spending was not paused; nothing to do")
        return 0
    for pause in lifted:
        print(f"resumed: {pause.service} had paused spending: {pause.reason}")
    print("the schedule and the sensor start work again at their next tick; `make run` works now")
    return 0


HOST_TAG = "image_pipeline/host"
PID_TAG = "image_pipeline/pid"


def _batch_size(args: argparse.Namespace) -> int:
    from image_pipeline.config import settings_from

    return max(1, args.batch_size or settings_from(os.environ).batch_size)


def reap_dead_runs(instance: Any) -> int:
    """Fail the unfinished runs of an earlier ``run`` whose process is gone, and free their pool slots.

    ``run`` executes in process, without the daemon whose run monitoring would do this: a killed process
    leaves its run STARTED holding a sheets_api/hf_api/telegram_api slot, and every later run would wait
    for that slot forever.
    """
    import dagster as dg

    from image_pipeline.ledger import process_alive

    host = socket.gethostname()
    unfinished = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]
    reaped = 0
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=unfinished, tags={HOST_TAG: host})):
        try:
            pid = int(run.tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if pid == os.getpid() or process_alive(pid):
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
    from image_pipeline.resources.publisher import LocalOutbox
    from image_pipeline.resources.sheets import LocalWorkbook

    sheet, publisher = resources["prompt_sheet"], resources["publisher"]
    io = resources["pipeline_io_manager"]
    print(f"images:    {Path(io.base_dir) / 'generated_image'}")
    if isinstance(publisher, LocalOutbox):
        print(f"gallery:   {Path(publisher.folder) / 'index.html'}")
    if isinstance(sheet, LocalWorkbook):
        print(f"done log:  {Path(sheet.folder) / 'done.csv'}")
    else:
        print(f"done log:  worksheet {sheet.done_worksheet!r} of {sheet.describe()}")
    print(f"runs:      `make dev`, then http://127.0.0.1:3000 (instance in {os.environ.get('DAGSTER_HOME')})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sandbox"]:
        # the emulators belong to the testing layer, which the product never imports
        print(
            "the sandbox has its own command now: image-pipeline-sandbox (or make sandbox)", file=sys.stderr
        )
        return 2
    parser = argparse.ArgumentParser(prog="image-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="process every pending prompt of the queue, then exit")
    run.add_argument("--limit", type=int, default=0, help="process at most this many prompts")
    run.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per Dagster run (default IMAGE_PIPELINE_BATCH_SIZE or 200; 1: one run per prompt)",
    )
    run.set_defaults(func=cmd_run)
    doctor = sub.add_parser(
        "doctor", help="check each configured service with its cheapest real call; exit 1 if any fails"
    )
    doctor.set_defaults(func=cmd_doctor)
    resume = sub.add_parser(
        "resume", help="lift the pause set when credits ran out or a quota was used up (budget guard)"
    )
    resume.set_defaults(func=cmd_resume)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
