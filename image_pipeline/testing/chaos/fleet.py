"""The workers of a chaos run: where each runs, what it shares with the others, and what is scanned for secrets.

One worker and no ``--distributed``: the run's folder as before (``home``, ``data``, ``hf`` under it). More
workers: a folder and a Dagster home per worker (``workers/wN``), the data folder (SQLite ledger, asset
files) shared as on one host. ``--distributed``: nothing shared but a PostgreSQL ledger and an s3:// store,
both throwaway servers on 127.0.0.1 started here; each worker keeps its local state (pacing, HF cache) in
its own folder and runs in a PID namespace and UTS namespace of its own with the same hostname, when
``unshare`` works here (root), so owner tokens that repeat PIDs and hostnames are what the ledger sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_pipeline.testing.chaos.audit import _files
from image_pipeline.testing.chaos.books import LedgerRef, ledger_query
from image_pipeline.testing.chaos.workers import _worker_env
from image_pipeline.testing.sandbox import Sandbox

# every worker gets this hostname: containers of one deployment often share one, so a hostname proves nothing
WORKER_HOSTNAME = "chaos-worker"
LEDGER_DB = "image_pipeline_ledger"
LEDGER_TABLES = ("prompts", "pauses", "removals", "daily_counts", "preflight_passes")


@dataclass
class Fleet:
    slots: list[tuple[Path, dict[str, str]]]
    ledger: LedgerRef
    homes: list[Path]
    data_dirs: list[Path]
    wrap: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # besides the sandbox's: the ledger's password
    bucket_objects: Any = None  # () -> list[bytes] of everything in the object store

    def extra_sources(self) -> dict[str, list[bytes]]:
        """Where a distributed run keeps what the data folder holds otherwise: the bucket and the ledger."""
        if self.bucket_objects is None:
            return {}
        rows = [ledger_query(self.ledger, f"SELECT * FROM {table}") or [] for table in LEDGER_TABLES]  # noqa: S608
        return {
            "object_store": self.bucket_objects(),
            "ledger_db": [json.dumps(rows, default=str, ensure_ascii=False).encode()],
        }


def namespace_wrap() -> list[str]:
    """``unshare`` with a new PID and UTS namespace (and /proc to match) setting the shared hostname, or
    [] where the machine does not allow it (not root, no unshare): the workers then share this host's."""
    unshare, hostname = shutil.which("unshare"), shutil.which("hostname")
    if unshare is None or hostname is None:
        return []
    wrap = [unshare, "--pid", "--uts", "--fork", "--mount-proc", "sh", "-c", 'hostname "$0" && exec "$@"']
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        probe = subprocess.run([*wrap, WORKER_HOSTNAME, "true"], capture_output=True, timeout=20)
        if probe.returncode == 0:
            return [*wrap, WORKER_HOSTNAME]
    return []


def _worker_folder(root: Path, project_yaml: Path) -> Path:
    for sub in ("home", "hf", "data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if project_yaml.is_file():
        shutil.copy(project_yaml, root / "home" / "dagster.yaml")
    return root


@contextlib.contextmanager
def fleet(
    root: Path, sandbox: Sandbox, workers: int, distributed: bool, project_yaml: Path
) -> Iterator[Fleet]:
    """The slots of ``workers`` workers; with ``distributed`` the servers they share, stopped afterwards."""
    if workers == 1 and not distributed:
        # exactly the single worker of before: the run's folder is its folder
        yield Fleet(
            [(root, _worker_env(sandbox, root))],
            root / "data" / "ledger.sqlite",
            [root / "home"],
            [root / "data"],
        )
        return
    folders = [_worker_folder(root / "workers" / f"w{i + 1}", project_yaml) for i in range(workers)]
    homes = [f / "home" for f in folders]
    if not distributed:
        shared = root / "data"
        envs = [_worker_env(sandbox, f, data=shared) for f in folders]
        yield Fleet(list(zip(folders, envs, strict=True)), shared / "ledger.sqlite", homes, [shared])
        return
    from image_pipeline.testing.servers import moto_s3, postgres_server

    # moto's server logs every request on stderr through werkzeug; the table is what this run prints
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with (
        postgres_server(db_name=LEDGER_DB, user="ledger", keep_log=root / "postgres.log") as pg,
        moto_s3() as s3,
    ):
        bucket = s3.new_bucket("chaos")
        extra = {
            "IMAGE_PIPELINE_LEDGER_URL": pg.url(),
            "IMAGE_PIPELINE_S3_ENDPOINT_URL": s3.endpoint_url,
            **s3.aws_env(),
        }
        envs = []
        for folder in folders:
            env = _worker_env(sandbox, folder, data=f"s3://{bucket}/chaos")
            env.update(extra)
            envs.append(env)

        def bucket_objects() -> list[bytes]:
            return [s3.get(bucket, key) for key in s3.keys(bucket)]

        yield Fleet(
            list(zip(folders, envs, strict=True)),
            pg.url(),
            homes,
            # what stays local when the data is in object storage: the folder "data" under each worker's
            [f / "data" for f in folders],
            wrap=namespace_wrap(),
            secrets=[pg.password],
            bucket_objects=bucket_objects,
        )


def local_files(folders: list[Path]) -> list[bytes]:
    return [p.read_bytes() for folder in folders for p in _files(folder)]
