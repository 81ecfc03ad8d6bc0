"""`image-pipeline run` fails the runs a killed worker left STARTED (they hold pool slots), and never a live one:
a PID is checked only in the kernel and PID namespace that tagged it; a run of another namespace (a restarted
container under the same hostname) is dead once its heartbeat is old."""

from __future__ import annotations

import os
import socket
import time
import uuid

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun

from image_pipeline.cli.run import (
    HEARTBEAT_STALE_S,
    HEARTBEAT_TAG,
    HOST_TAG,
    NODE_TAG,
    PID_TAG,
    reap_dead_runs,
)
from image_pipeline.services.hosts import node_id


def _started(instance: dg.DagsterInstance, **tags: str) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(
        DagsterRun(
            job_name="process_prompts_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags
        )
    )
    return run_id


def test_only_dead_runs_are_failed(instance: dg.DagsterInstance) -> None:
    host, here, now = socket.gethostname(), node_id(), time.time()
    other = "0" * 32 + ".4026530000"  # the same hostname, another PID namespace (every container is PID 1)
    runs = {
        # this namespace: decided by the process id
        "live here": _started(instance, **{HOST_TAG: host, PID_TAG: str(os.getpid()), NODE_TAG: here}),
        "dead here": _started(instance, **{HOST_TAG: host, PID_TAG: "999999", NODE_TAG: here}),
        # another namespace with our own PID: its process id says nothing here; its heartbeat decides
        "beating elsewhere": _started(
            instance,
            **{HOST_TAG: host, PID_TAG: str(os.getpid()), NODE_TAG: other, HEARTBEAT_TAG: str(int(now))},
        ),
        "silent elsewhere": _started(
            instance,
            **{
                HOST_TAG: host,
                PID_TAG: "1",
                NODE_TAG: other,
                HEARTBEAT_TAG: str(int(now - HEARTBEAT_STALE_S - 5)),
            },
        ),
        # an older release's run from another namespace (no heartbeat): left to Dagster's run monitoring
        "no heartbeat elsewhere": _started(instance, **{HOST_TAG: host, PID_TAG: "999999", NODE_TAG: other}),
        # another host: never ours to judge
        "other host": _started(instance, **{HOST_TAG: host + "-x", PID_TAG: "999999", NODE_TAG: here}),
    }
    assert reap_dead_runs(instance) == 2
    status = {name: instance.get_run_by_id(run_id).status for name, run_id in runs.items()}  # type: ignore[union-attr]
    failed = {name for name, s in status.items() if s == dg.DagsterRunStatus.FAILURE}
    assert failed == {"dead here", "silent elsewhere"}
    assert reap_dead_runs(instance) == 0  # failed runs are not unfinished any more
