"""One chaos run: the sandbox, the faults, the kills and the person wired together, and the loop over workers.

``run_chaos`` queues the prompts, starts the sandbox with its fault plans and hooks, restarts the worker
whenever it exits (lifting a timed pause, answering CHECK CHANNEL notices, stopping the person for the
final drain) until the queue is drained or no worker changes anything, then computes the figures of the
verdict plus diagnostics. ``lift_timed_pause`` and ``open_removals`` read the ledger between workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from image_pipeline.testing.chaos.audit import (
    RESULT_KEYS,
    Witness,
    _data_rows,
    _files,
    _pem_fragment,
    duplicate_window,
    scan_secrets,
    verdict,
)
from image_pipeline.testing.chaos.books import LedgerRef, ledger_exists, ledger_query, open_ledger
from image_pipeline.testing.chaos.faults import PROVIDER_REFUSAL, _configure
from image_pipeline.testing.chaos.fleet import fleet, local_files
from image_pipeline.testing.chaos.kills import KILL_KINDS, Killer, plan_kills
from image_pipeline.testing.chaos.person import ChannelChecker, PersonWriter
from image_pipeline.testing.chaos.truth import IMAGE_SIDE, PROCESS_HEADER, Truth, marker_of
from image_pipeline.testing.chaos.workers import (
    NOT_STARTED_PATIENCE,
    STALL_S,
    WORKER_COMMAND,
    Supervisor,
)
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import DONE_WORKSHEET, PROCESS_WORKSHEET, Sandbox

# image_pipeline/testing/chaos/run.py -> the project root
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _chain(*hooks: Any) -> Any:
    def run(*args: Any) -> None:
        for hook in hooks:
            hook(*args)

    return run


def lift_timed_pause(ledger: LedgerRef, sandbox: Sandbox) -> bool:
    """Play the wait a service imposed passing: when the worker left the pipeline paused until a time
    (a flood wait), lift Telegram's wait and the ledger's pause, as the clock would. A pause without a
    time (credits) needs a person and stays. True when one was lifted."""
    if not ledger_exists(ledger):
        return False
    book = open_ledger(ledger)
    try:
        pause = book.pause_state()
        if pause is None or not pause.timed:
            return False
        sandbox.telegram.lift_flood_wait()
        book.resume()
        return True
    finally:
        book.close()


def open_removals(ledger: LedgerRef) -> int:
    """Deletes of queue rows whose copy no run has checked yet (a worker killed in between): the next
    worker puts back what they removed by mistake, so the harness does not stop before it ran."""
    rows = ledger_query(ledger, "SELECT COUNT(*) FROM removals")
    return int(rows[0][0]) if rows else 0


def _queue_signature(sandbox: Sandbox) -> tuple[Any, ...]:
    google, sid = sandbox.google, sandbox.spreadsheet_id
    process = _data_rows(google.values(sid, PROCESS_WORKSHEET))
    done = _data_rows(google.values(sid, DONE_WORKSHEET))
    posts = len(sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID))
    return (tuple(tuple(r) for r in process), len(done), posts)


def _round_code(codes: list[int]) -> int:
    """One exit code for a round of workers: 0 when all exited 0, 2 when the others did not start a run
    (the next tick tries again), else the first other code (a kill, a crash)."""
    odd = [c for c in codes if c not in (0, 2)]
    return odd[0] if odd else (2 if 2 in codes else 0)


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
    workers: int = 1,
    distributed: bool = False,
) -> dict[str, int | float]:
    """One chaos run; the figures of the verdict (RESULT_KEYS first) plus diagnostics.

    ``workers`` run at once over the one backlog (``fleet``: their folders, and with ``distributed`` the
    PostgreSQL ledger and S3 store they share). A round starts every worker; a killed one is started again
    at once while others still run, and the person's between-worker duties (a timed pause, CHECK CHANNEL)
    wait until the whole round has exited, when no send is in flight.

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
    servers = contextlib.ExitStack()
    try:
        crew = servers.enter_context(
            fleet(root, sandbox, workers, distributed, PROJECT_ROOT / "dagster.yaml")
        )
        supervisor = Supervisor(
            root, crew.slots[0][1], logs, WORKER_COMMAND, slots=crew.slots, wrap=crew.wrap
        )
        killer = Killer(plan_kills(kills, prompts), supervisor, random.Random(seed + 1), t0)
        witness = Witness(sandbox, truth, supervisor, plans[0], t0)
        checker = ChannelChecker(sandbox, truth, t0)
        sandbox.hf.on_request = _chain(plans[1].note, killer.hf_request)
        sandbox.google.on_request = _chain(plans[0].note, witness.google_request, killer.google_request)
        sandbox.google.after_route = _chain(witness.google_routed, killer.google_routed)
        sandbox.telegram.on_request = _chain(plans[2].note, killer.any_request)
        ledger_path = crew.ledger
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
            for slot in range(supervisor.size):
                supervisor.start(slot)
            killer.last_request = time.monotonic()
            codes: list[int] = []
            ending = False  # the round is being stopped (time out, a hung worker): no restarts
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
                    timed_out = ending = True
                    supervisor.kill()
                elif not ending and now - killer.last_request > STALL_S:
                    stalls += 1  # once per round, however many workers the round had
                    ending = True
                    supervisor.kill()
                for slot in supervisor.exited():  # only with several workers: one left while others run
                    codes.append(supervisor.reap(slot))
                    if codes[-1] == -signal.SIGKILL and not ending and supervisor.alive():
                        supervisor.start(slot)  # a re-execution of the killed worker's run
            codes += [supervisor.reap(slot) for slot in supervisor.exited()]
            code = _round_code(codes)
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
            *crew.secrets,
        ]
        sources = {
            "worker_logs": [p.read_bytes() for p in _files(logs)],
            "done_sheet": [
                json.dumps(sandbox.google.values(sandbox.spreadsheet_id, DONE_WORKSHEET)).encode()
            ],
            "data_dir": local_files(crew.data_dirs),
            "dagster_home": local_files(crew.homes),
            "telegram_messages": [
                json.dumps(
                    [[m.get("caption"), m.get("text")] for m in sandbox.telegram.messages], ensure_ascii=False
                ).encode()
            ],
        }
        sources.update(crew.extra_sources())
        token_hits = scan_secrets(secrets, sources)
        faults = Counter[str]()
        for plan in plans:
            faults.update(plan.injected)
        kill_kinds = Counter(k.kind for k in killer.kills)

        result.update({key: figures[key] for key in RESULT_KEYS if key in figures})
        result["uncertain_checked"] = sum(checker.decisions.values())
        result["uncertain_reposted"] = checker.decisions["reposted"]
        result["uncertain_deleted"] = checker.decisions["deleted"]
        result.update(duplicate_window(ledger_path, accepted))
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
        result["workers"] = workers
        result["distributed"] = int(distributed)
        result["worker_namespaces"] = int(bool(crew.wrap))
        result["worker_starts"] = supervisor.generation
        result["workers_exit_0"] = supervisor.exit_codes[0]
        result["person_edits"] = sum(person.ops.values()) if person is not None else 0
        result["waits_lifted"] = waits_lifted
        result["workers_not_started"] = not_started
        result["provider_refused"] = len(refused)
        result["wall_s"] = round(time.monotonic() - t0, 1)
        return result
    finally:
        servers.close()
        sandbox.stop()
        if own_dir and not os.environ.get("CHAOS_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
