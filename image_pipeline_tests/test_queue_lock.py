"""Workers started together give the queue's new rows their ids one at a time (``lifecycle/queue_lock.py``).

Three workers, each with its own Google client and ledger handle, read a queue of rows without ids at the
same moment, against the Sheets emulator with a real request latency and a real PostgreSQL ledger (and a
SQLite one, the lock then being a file beside it). Each must end with the ids that are in the sheet: a
worker whose ids were overwritten by another's would find its prompts gone, or run a row under a second id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_pipeline.definitions import build_definitions
from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.queue_lock import ids_assigned
from image_pipeline.testing.emulators.google import READ_ENDPOINTS, WRITE_ENDPOINTS
from image_pipeline.testing.sandbox import DONE_WORKSHEET, PROCESS_WORKSHEET, Sandbox
from image_pipeline_tests.postgres_server import PostgresServer, postgres_server

ROWS = 12


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server(db_name="ids_admin", user="ledger") as server:
        yield server


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("ids_sandbox"), seed_rows=[["prompt"]]) as box:
        # every Sheets request takes 50 ms: reads and writes of workers started together interleave
        box.google.set_latency(0.05, endpoints=(*READ_ENDPOINTS, *WRITE_ENDPOINTS))
        yield box


@pytest.mark.parametrize("ledger", ["postgres", "sqlite"])
def test_workers_started_together_agree_on_the_new_rows_ids(
    ledger: str,
    sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    sheet_id = sandbox.google.create_spreadsheet(
        f"Ids {ledger}",
        {
            PROCESS_WORKSHEET: [["prompt"]] + [[f"a prompt without an id {i}"] for i in range(ROWS)],
            DONE_WORKSHEET: [["id", "prompt", "status"]],
        },
    )
    env = {**sandbox.env(), "GOOGLE_SHEET_KEY": sheet_id}
    for k, v in env.items():  # the key JSON is read through EnvVar
        monkeypatch.setenv(k, v)
    if ledger == "postgres":
        url = request.getfixturevalue("pg").create_database(f"ids_{tmp_path.name[-20:].lower()}")
        books = [Ledger(url=url) for _ in range(3)]
    else:
        books = [Ledger(tmp_path / "ledger.sqlite") for _ in range(3)]
    sheets = [
        build_definitions({**env, "IMAGE_PIPELINE_DATA": str(tmp_path / f"w{i}")}).resources["prompt_sheet"]
        for i in range(3)
    ]
    for sheet in sheets:  # each client authorised and the spreadsheet opened: the passes start together
        sheet.read_queue()
    start = threading.Barrier(3)
    got: list[list[str]] = [[] for _ in range(3)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait(30)
            got[i] = [row.prompt_id for row in ids_assigned(sheets[i], books[i]).rows]
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    in_sheet = [row[1] for row in sandbox.google.values(sheet_id, PROCESS_WORKSHEET)[1:]]
    assert len(set(in_sheet)) == ROWS and all(in_sheet)
    assert got == [in_sheet] * 3  # every worker runs each row under the one id the sheet carries
    writes = sum(
        1 for r in list(sandbox.google.requests) if r.method in ("PUT", "POST") and sheet_id in r.path
    )
    print(f"{ledger}: 3 workers, {ROWS} new rows: one id each; Sheets writes to the queue: {writes}")
    # one pass wrote the ids, the others read them (without the lock all three write over each other)
    assert writes == 1
