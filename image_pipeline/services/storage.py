"""Where asset values live: one file per partition under the data folder (PNG for images, JSON for records).

The Dagster IO manager (``defs/io_manager.py``) and the lifecycle's generation step both use this store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from image_pipeline.domain.records import ImageOutcome, StoredRecord, is_noop, record_from_json
from image_pipeline.services.files import atomic_write


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
        elif isinstance(value, StoredRecord):
            record = value.to_json()
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
        return record_from_json(asset, record)
