"""deploy/dagster.postgres.yaml for real: ``dagster dev`` (webserver + daemon) on a PostgreSQL instance.

A throwaway PostgreSQL server, the sandbox's Google/Hugging Face/Telegram emulators, the sensor registering
the prompts, two runs submitted at the same moment through GraphQL, queued by the run coordinator and
launched by the daemon; then the database, the event log, the Done worksheet and the channel are read back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from image_pipeline.defs.batching import RANGE_END, RANGE_START
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import DONE_WORKSHEET, PROCESS_WORKSHEET, Sandbox
from image_pipeline_tests.dagster_dev import ARTIFACTS, ROOT, DagsterDev, base_env, dagster_dev, dagster_home
from image_pipeline_tests.postgres_server import postgres_server

INSTANCE_YAML = ROOT / "deploy" / "dagster.postgres.yaml"
LOCATION = "image_pipeline"
REPOSITORY = "__repository__"
JOB = "process_prompts_job"
SENSOR = "prompt_sheet_sensor"
ASSET_KEYS = ("prompt_record", "generated_image", "telegram_post", "done_entry")
PROMPTS = [
    "A lighthouse on a basalt cliff at dawn, long exposure",
    "Isometric cozy bookshop interior, warm lamps, rain on the windows",
    "A red fox curled up in fresh snow, wildlife photography",
    "Watercolor map of an imaginary archipelago with tiny sailing boats",
]
HF_API_LIMIT = 2
RUN_LIFECYCLE = [
    dg.DagsterEventType.RUN_ENQUEUED,
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.RUN_SUCCESS,
]

START_SENSOR = """
mutation ($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, server: DagsterDev) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    tail = "\n".join(server.log_text().splitlines()[-60:])
    raise AssertionError(f"{what} not within {timeout_s:.0f} s; dagster dev log tail:\n{tail}")


def column(rows: list[list[str]], name: str) -> list[str]:
    index = rows[0].index(name)
    return [row[index] if index < len(row) else "" for row in rows[1:] if any(cell != "" for cell in row)]


def test_postgres_instance_runs_queued_runs_through_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    artifacts = ARTIFACTS / "postgres_instance"
    artifacts.mkdir(parents=True, exist_ok=True)
    dev_log = artifacts / "dagster-dev.log"
    dev_log.unlink(missing_ok=True)
    home = dagster_home(tmp_path / "dagster_home", instance_yaml=INSTANCE_YAML)

    with (
        postgres_server(keep_log=artifacts / "postgres.log") as pg,
        Sandbox(tmp_path / "sandbox", seed_rows=[["prompt"], *([p] for p in PROMPTS)]) as sandbox,
    ):
        # the yaml reads DAGSTER_PG_* when an instance is opened: here, in dagster dev and in its children
        for name, value in pg.env().items():
            monkeypatch.setenv(name, value)
        env = base_env(
            {
                **sandbox.env(),
                **pg.env(),
                "IMAGE_PIPELINE_DATA": str(tmp_path / "data"),
                "IMAGE_PIPELINE_SENSOR_INTERVAL_S": "2",
            }
        )

        # the per-pool limit exactly as the yaml's comment documents it
        subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"),
                "instance",
                "concurrency",
                "set",
                "hf_api",
                str(HF_API_LIMIT),
            ],
            cwd=ROOT,
            env={**env, "DAGSTER_HOME": str(home)},
            check=True,
            capture_output=True,
            timeout=60,
        )

        with dg.DagsterInstance.from_config(str(home)) as instance, dagster_dev(home, env, dev_log) as server:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
            # hf_api as set above, sheets_api from the yaml's default_limit
            assert instance.event_log_storage.get_concurrency_info("hf_api").slot_count == HF_API_LIMIT
            assert instance.event_log_storage.get_concurrency_info("sheets_api").limit == 1

            # the sensor gives the rows ids and registers one partition per prompt
            selector = {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "sensorName": SENSOR,
            }
            result = server.graphql(START_SENSOR, {"selector": selector})["startSensor"]
            assert result["__typename"] == "Sensor", result

            def registered() -> list[str] | None:
                keys = list(instance.get_dynamic_partitions("prompts"))
                return keys if len(keys) == len(PROMPTS) else None

            keys = wait_for("a partition per prompt", registered, 60, server)

            # two batch runs (partition ranges of two prompts each), submitted at the same moment
            batches = [keys[:2], keys[2:]]

            def submit(batch: list[str]) -> str:
                client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
                return client.submit_job_execution(
                    JOB,
                    repository_location_name=LOCATION,
                    repository_name=REPOSITORY,
                    tags={RANGE_START: batch[0], RANGE_END: batch[-1]},
                )

            with ThreadPoolExecutor(max_workers=2) as pool:
                run_ids = list(pool.map(submit, batches))
            submitted = time.monotonic()

            client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)

            def all_finished() -> list[dg.DagsterRunStatus] | None:
                statuses = [client.get_run_status(run_id) for run_id in run_ids]
                finished = all(
                    s
                    in (
                        dg.DagsterRunStatus.SUCCESS,
                        dg.DagsterRunStatus.FAILURE,
                        dg.DagsterRunStatus.CANCELED,
                    )
                    for s in statuses
                )
                return statuses if finished else None

            statuses = wait_for("both runs finished", all_finished, 120, server)
            runs_done = time.monotonic()
            assert statuses == [dg.DagsterRunStatus.SUCCESS] * 2, (statuses, server.log_text()[-5000:])

            # both went through the queue: enqueued by the run coordinator, then STARTING is the daemon
            # dequeuing the run and handing it to the run launcher
            records = {
                r.dagster_run.run_id: r for r in instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
            }
            for run_id in run_ids:
                lifecycle = [
                    e.dagster_event.event_type
                    for e in instance.all_logs(run_id)
                    if e.dagster_event is not None and e.dagster_event.event_type in RUN_LIFECYCLE
                ]
                assert lifecycle == RUN_LIFECYCLE, (run_id, lifecycle)
                assert records[run_id].dagster_run.tags.get("pipeline") == "image"

            # the rows really are in PostgreSQL
            conn = pg.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", (run_ids,))
                    assert dict(cur.fetchall()) == dict.fromkeys(run_ids, "SUCCESS")
                    cur.execute(
                        "SELECT count(*) FROM event_logs WHERE run_id = ANY(%s) AND dagster_event_type = %s",
                        (run_ids, "ASSET_MATERIALIZATION"),
                    )
                    assert cur.fetchone()[0] == len(ASSET_KEYS) * len(PROMPTS)
            finally:
                conn.close()

            # every asset of every prompt materialized exactly once, by one of the two runs
            for asset in ASSET_KEYS:
                for key in keys:
                    found = instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=5
                    ).records
                    assert [r.run_id in run_ids for r in found] == [True], (asset, key, found)

            # the pool slots were all given back
            for pool_name in ("sheets_api", "hf_api"):
                assert instance.event_log_storage.get_concurrency_info(pool_name).claimed_slots == []

            together = min(r.end_time for r in records.values()) - max(r.start_time for r in records.values())

        # the sheet and the channel: one Done row and one post per prompt, the queue empty, no alerts
        done = sandbox.google.values(sandbox.spreadsheet_id, DONE_WORKSHEET)
        process = sandbox.google.values(sandbox.spreadsheet_id, PROCESS_WORKSHEET)
        posts = sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)
        alerts = sandbox.telegram.messages_for(ALERTS_CHANNEL_ID)

    assert Counter(column(done, "id")) == Counter(keys)
    assert set(column(done, "status")) == {"SUCCESS"}
    assert Counter(column(done, "prompt")) == Counter(PROMPTS)
    assert [row for row in process[1:] if any(cell != "" for cell in row)] == [], process
    assert len(posts) == len(PROMPTS)
    assert sorted(column(done, "message_id")) == sorted(str(m["message_id"]) for m in posts)
    for prompt in PROMPTS:
        assert sum(prompt in (m["visible_text"] or "") for m in posts) == 1, prompt
    assert alerts == []

    total = time.monotonic() - started
    print(
        f"\npostgres instance test: {total:.1f} s in all; runs finished {runs_done - submitted:.1f} s after"
        f" submission; both runs in flight together for {max(0.0, together):.1f} s"
    )
