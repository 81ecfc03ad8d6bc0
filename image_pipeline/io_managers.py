"""Asset storage as plain files, one per partition: PNG for images, JSON for records.

Assets exchange ``ByPartition`` maps (partition key -> value) so that one run may carry one partition
or many with the same code. Images are real ``.png`` files anyone can open, never pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from image_pipeline.files import atomic_write


class ByPartition(dict[str, Any]):
    """Values of one asset for the partitions of the current run."""


@dataclass
class ImageOutcome:
    """The image asset's value: where its PNG file is when generation succeeded, and what happened
    either way. The bytes stay on disk until someone reads them, so a batch never holds its images."""

    status: str  # OK, FAILED or SKIPPED
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    thumbnail: str = ""  # a small JPEG data-URI in Markdown, for the UI

    @property
    def ok(self) -> bool:
        return self.status == "OK" and self.path is not None

    def read_png(self) -> bytes:
        if self.path is None:
            raise FileNotFoundError("no image was stored for this outcome")
        return Path(self.path).read_bytes()


# Values that mean "this run did nothing for the partition" (another run holds it, the row is gone, it was
# already done). They are kept per run, so they never overwrite what the run that did the work stored.
NOOP_STATUSES = frozenset({"BUSY", "GONE", "SKIPPED", "LOGGED"})


def is_noop(value: Any) -> bool:
    if isinstance(value, ImageOutcome):
        return not value.ok
    return isinstance(value, dict) and value.get("status") in NOOP_STATUSES


class PartitionFileStore:
    """``<base>/<asset>/<partition>.json`` (+ ``.png`` for images); no-op values under ``.runs/<run id>/``."""

    def __init__(self, base_dir: str | Path, run_id: str = "") -> None:
        self.base = Path(base_dir)
        self.run_id = run_id

    def folder(self, asset: str) -> Path:
        return self.base / asset

    def run_local_path(self, asset: str, key: str) -> Path:
        return self.base / ".runs" / (self.run_id or "none") / asset / f"{key}.json"

    def png_path(self, asset: str, key: str) -> Path:
        return self.folder(asset) / f"{key}.png"

    def json_path(self, asset: str, key: str) -> Path:
        return self.folder(asset) / f"{key}.json"

    def write_png(self, asset: str, key: str, png: bytes) -> Path:
        path = self.png_path(asset, key)
        atomic_write(path, png)
        return path

    def write(self, asset: str, key: str, value: Any) -> None:
        if isinstance(value, ImageOutcome):
            # The PNG itself was written when it was made (write_png); never unlink: a run that did
            # nothing for the partition must not delete another run's image.
            record = {
                "__image__": True,
                "status": value.status,
                "meta": value.meta,
                "thumbnail": value.thumbnail,
            }
        else:
            record = value
        path = self.run_local_path(asset, key) if is_noop(value) else self.json_path(asset, key)
        atomic_write(path, json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8"))

    def read(self, asset: str, key: str) -> Any:
        path = self.run_local_path(asset, key)
        if not path.exists():
            path = self.json_path(asset, key)
        if not path.exists():
            raise FileNotFoundError(f"no stored value of {asset} for partition {key} ({path})")
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and record.get("__image__"):
            png_path = self.png_path(asset, key)
            found = record["status"] == "OK" and png_path.exists()
            return ImageOutcome(
                record["status"],
                record.get("meta", {}),
                str(png_path) if found else None,
                record.get("thumbnail", ""),
            )
        return record


class PartitionFileIOManager(dg.ConfigurableIOManager):
    """Stores each partition of each asset as its own file under ``base_dir``."""

    base_dir: str = Field(description="Folder for asset values (images as .png, records as .json).")

    def store(self, run_id: str = "") -> PartitionFileStore:
        """Direct access for a step that writes files as it goes (images, before the step ends)."""
        return PartitionFileStore(self.base_dir, run_id)

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
        for key, value in obj.items():
            store.write(self._asset(context), key, value)

    def load_input(self, context: dg.InputContext) -> ByPartition:
        keys = context.asset_partition_keys if context.has_asset_partitions else ["__all__"]
        store = self.store(context.step_context.run_id)
        asset = self._asset(context)
        return ByPartition({key: store.read(asset, key) for key in keys})
