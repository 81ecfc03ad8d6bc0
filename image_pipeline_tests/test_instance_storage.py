"""The embedded default's instance storage (dagster.yaml): Dagster's SQLite layout, cheaper event writes."""

import shutil
import sqlite3
from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.defs.instance_storage import FastSqliteEventLogStorage

PROJECT_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"

parts = dg.DynamicPartitionsDefinition(name="p")


@dg.asset(partitions_def=parts)
def first(context: dg.AssetExecutionContext) -> None:
    for key in context.partition_keys:
        context.add_asset_metadata({"n": int(key[1:])}, partition_key=key)


@dg.asset(partitions_def=parts, deps=[first])
def second() -> None:
    return None


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(PROJECT_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    return tmp_path


def _run(instance: dg.DagsterInstance, keys: list[str]) -> dg.ExecuteInProcessResult:
    job = dg.Definitions(assets=[first, second]).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )


def test_project_instance_uses_it_and_everything_reads_back(home: Path) -> None:
    keys = [f"k{i}" for i in range(30)]
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, FastSqliteEventLogStorage)
        instance.add_dynamic_partitions("p", keys)
        result = _run(instance, keys)
        assert result.success
        run_id = result.run_id
    # a second instance (as the webserver or the daemon would open it) sees every event
    with dg.DagsterInstance.get() as other:
        assert other.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        records = other.fetch_materializations(dg.AssetKey("first"), limit=100).records
        assert sorted(r.partition_key for r in records) == sorted(keys)
        by_key = {r.partition_key: r.asset_materialization.metadata["n"].value for r in records}
        assert by_key["k7"] == 7
        assert len(other.fetch_materializations(dg.AssetKey("second"), limit=100).records) == 30
        # the same files the stock `storage: sqlite` writes, so a home can switch either way
        assert (home / "history" / "runs.db").exists() and (
            home / "history" / "runs" / f"{run_id}.db"
        ).exists()
        with sqlite3.connect(home / "history" / "runs" / "index.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other.delete_run(run_id)
        assert other.get_run_by_id(run_id) is None
        assert other.all_logs(run_id) == []


def test_stock_sqlite_storage_reads_what_it_wrote(home: Path) -> None:
    keys = ["k1", "k2"]
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("p", keys)
        run_id = _run(instance, keys).run_id
    (home / "dagster.yaml").write_text("storage:\n  sqlite:\n    base_dir:\n      env: DAGSTER_HOME\n")
    with dg.DagsterInstance.get() as stock:
        assert type(stock.event_log_storage).__name__ == "SqliteEventLogStorage"
        assert stock.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        assert len(stock.fetch_materializations(dg.AssetKey("second"), limit=10).records) == 2


def test_wipe_closes_connections_and_starts_clean(home: Path) -> None:
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("p", ["k1"])
        _run(instance, ["k1"])
        instance.wipe()
        assert instance.fetch_materializations(dg.AssetKey("first"), limit=10).records == []
        instance.add_dynamic_partitions("p", ["k1"])  # wiped with the rest
        assert _run(instance, ["k1"]).success
        assert len(instance.fetch_materializations(dg.AssetKey("first"), limit=10).records) == 1


def test_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        FastSqliteEventLogStorage(str(tmp_path), synchronous="SOMETIMES")
