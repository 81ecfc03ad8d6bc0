"""Asset storage as plain files, one per partition: PNG for images, JSON for records.

Assets exchange ``ByPartition`` maps (partition key -> value) so that one run may carry one partition
or many with the same code. Images are real ``.png`` files anyone can open, never pickles. The folder may
be an object-store prefix (``s3://bucket/prefix``), so that runs on several nodes share nothing else.

Not Dagster's ``UPathIOManager``: it derives a file's path from the partition alone, before it sees the
value, while a no-op value here goes to its run's own folder (``.runs/<run id>/``) so that it never
replaces what the run that did the work stored; and it hands a one-partition input over bare, where the
assets always take a ``ByPartition``. The store underneath is on ``UPath`` all the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field, PrivateAttr

from image_pipeline.domain.records import ByPartition
from image_pipeline.services.storage import PartitionFileStore
from image_pipeline.services.storage.objects import is_local

T = TypeVar("T")
R = TypeVar("R")

# Requests in flight at once per input or output of an object store: each partition is its own object,
# and one GET or PUT at a time would make a batch of 200 wait 600 round trips (tens of ms each) in a row.
OBJECT_STORE_PARALLEL = 16
# Runs whose stored values are kept in memory for their later steps (see PartitionFileIOManager._written).
KEPT_RUNS = 4


def _each(store: PartitionFileStore, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``fn`` over ``items``: in turn on a local disk, several at once in an object store."""
    if is_local(store.base) or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(OBJECT_STORE_PARALLEL, len(items))) as pool:
        return list(pool.map(fn, items))


class PartitionFileIOManager(dg.ConfigurableIOManager):
    """Stores each partition of each asset as its own file under ``base_dir``."""

    base_dir: str = Field(
        description="Folder or object-store URL (s3://bucket/prefix) for asset values (images as .png, "
        "records as .json)."
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="An S3-compatible server for s3:// folders (MinIO, Ceph); unset: AWS, or the endpoint "
        "the standard AWS configuration names. Credentials come from the standard AWS chain only.",
    )
    # What this run stored, by (asset, partition): a later step of the same run in the same process (the
    # in-process executor of `image-pipeline run` and of tests) takes it from here instead of reading back
    # the file it just wrote; in an object store that is two or three requests per partition and input.
    # Kept per run id (the last few runs: runs of one process follow each other, or run at once in
    # tests that share one resource); another process (a step launched on its own) reads the files.
    _written: dict[str, dict[tuple[str, str], Any]] = PrivateAttr(default_factory=dict)
    _written_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def store(self, run_id: str = "") -> PartitionFileStore:
        """Direct access for a step that writes files as it goes (images, before the step ends)."""
        return PartitionFileStore(self.base_dir, run_id, s3_endpoint_url=self.s3_endpoint_url)

    @staticmethod
    def _asset(context: dg.OutputContext | dg.InputContext) -> str:
        return "__".join(context.asset_key.path)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        if not isinstance(obj, ByPartition):
            raise TypeError(f"{self._asset(context)} must return ByPartition, got {type(obj).__name__}")
        expected = set(context.asset_partition_keys) if context.has_asset_partitions else {"__all__"}
        unknown = set(obj) - expected
        if unknown:
            raise ValueError(f"values for partitions outside this run: {sorted(unknown)[:5]}")
        store = self.store(context.run_id)
        asset = self._asset(context)
        _each(store, lambda item: store.write(asset, *item), list(obj.items()))
        with self._written_lock:
            kept = self._written.setdefault(context.run_id, {})
            kept.update({(asset, key): value for key, value in obj.items()})
            while len(self._written) > KEPT_RUNS:
                self._written.pop(next(iter(self._written)))  # the oldest run's values

    def load_input(self, context: dg.InputContext) -> ByPartition:
        keys = context.asset_partition_keys if context.has_asset_partitions else ["__all__"]
        run_id = context.step_context.run_id
        store = self.store(run_id)
        asset = self._asset(context)
        with self._written_lock:
            kept = dict(self._written.get(run_id, {}))
        missing = [key for key in keys if (asset, key) not in kept]
        read = dict(zip(missing, _each(store, lambda key: store.read(asset, key), missing), strict=True))
        return ByPartition({key: read[key] if key in read else kept[(asset, key)] for key in keys})
