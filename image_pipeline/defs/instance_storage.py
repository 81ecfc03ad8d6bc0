"""The embedded default's Dagster storage: SQLite, as Dagster ships it, with a cheaper event log write.

Dagster's ``SqliteEventLogStorage`` builds a new SQLAlchemy engine and connection for every event and
commits each one with a full WAL sync; on this kind of machine that is 6-8 ms per event, and a run over
100 prompts writes about 800 events (planned + materialized, per asset and prompt). This storage keeps a
few connections open (per run shard, least recently used first out) and commits with
``synchronous=NORMAL`` in WAL mode, which SQLite documents as safe from corruption: a power cut can lose
the last events, never the database. The exactly-once record is the post ledger (``lifecycle/ledger.py``, with full
syncs), not the event log, so nothing the pipeline relies on for safety changes.

Selected in ``dagster.yaml``::

    storage:
      custom:
        module: image_pipeline.defs.instance_storage
        class: FastSqliteStorage
        config:
          base_dir: {env: DAGSTER_HOME}

It keeps Dagster's on-disk layout (``history/runs.db``, ``history/runs/<run id>.db``, ``schedules/``), so an
instance home made with the stock ``storage: sqlite`` keeps working with it and back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from dagster._config import Field, StringSource
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from dagster._utils import mkdir_p
from sqlalchemy import create_engine
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_S = 15


class FastSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with open connections kept per shard and a configurable WAL sync."""

    def __init__(
        self,
        base_dir: str,
        inst_data: ConfigurableClassData | None = None,
        synchronous: str = "NORMAL",
        open_shards: int = 8,
        planned_events_per_range: bool = True,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._planned_per_range = planned_events_per_range
        self._open_shards = max(1, open_shards)
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "base_dir": StringSource,
            "synchronous": Field(str, is_required=False, default_value="NORMAL"),
            "planned_events_per_range": Field(bool, is_required=False, default_value=True),
        }

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> FastSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        # A batch run announces its partitions with one planned event per asset instead of one per
        # asset and prompt (what DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS does for stock storage).
        # The price, as Dagster documents it: a run that fails leaves its prompts "missing" rather than
        # "failed" in the UI, which is what they are here (a failed run leaves the queue untouched).
        return (
            self._planned_per_range
            or super().supports_partition_subset_in_asset_materialization_planned_events
        )

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            engine = self._engines.get(shard)
            if engine is not None:
                self._engines.move_to_end(shard)
                return engine
            engine = create_engine(
                self.conn_string_for_shard(shard),
                pool_size=1,
                max_overflow=4,
                connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
            )
            synchronous = self._synchronous

            @sa_event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.execute(f"PRAGMA synchronous={synchronous}")

            self._engines[shard] = engine
            while len(self._engines) > self._open_shards:
                _, old = self._engines.popitem(last=False)
                old.dispose()
            return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _close_all(self) -> None:
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def wipe(self) -> None:
        # the files go away: no connection may keep pointing at them
        self._close_all()
        super().wipe()

    def delete_events(self, run_id: str) -> None:
        super().delete_events(run_id)
        with self._engines_lock:
            engine = self._engines.pop(run_id, None)
        if engine is not None:
            engine.dispose()

    def dispose(self) -> None:
        self._close_all()
        super().dispose()


class FastSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (runs, schedules, event log) with the event log above."""

    def __init__(
        self,
        base_dir: str,
        inst_data: ConfigurableClassData | None = None,
        synchronous: str = "NORMAL",
        planned_events_per_range: bool = True,
    ) -> None:
        self.base_dir = base_dir
        self._synchronous = synchronous
        self._planned_per_range = planned_events_per_range
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = FastSqliteEventLogStorage(
            _event_logs_directory(base_dir),
            synchronous=synchronous,
            planned_events_per_range=planned_events_per_range,
        )
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return FastSqliteEventLogStorage.config_type()  # the same options, passed through

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> FastSqliteStorage:
        mkdir_p(config_value["base_dir"])
        return cls(inst_data=inst_data, **config_value)

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        # what run workers and the webserver use to open the same event log
        return ConfigurableClassData(
            __name__,
            FastSqliteEventLogStorage.__name__,
            yaml.dump(
                {
                    "base_dir": _event_logs_directory(self.base_dir),
                    "synchronous": self._synchronous,
                    "planned_events_per_range": self._planned_per_range,
                },
                default_flow_style=False,
            ),
        )
