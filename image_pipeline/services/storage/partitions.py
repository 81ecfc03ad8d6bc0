"""Where asset values live: one file per partition under the data folder (PNG for images, JSON for records).

The folder may be local or an object-store prefix (``s3://bucket/prefix``, see ``objects.py``). The Dagster
IO manager (``defs/io_manager.py``) and the lifecycle's generation step both use this store.
"""

from __future__ import annotations

import json
import os
from typing import Any

from upath import UPath

from image_pipeline.domain.records import ImageOutcome, StoredRecord, is_noop, record_from_json
from image_pipeline.services.storage.objects import as_path, digest, read_file, write_once, write_replacing


class PartitionFileStore:
    """``<base>/<asset>/<partition>.json``, images as ``<partition>-<hash>.png`` beside it (written once);
    no-op values under ``.runs/<run id>/``."""

    def __init__(
        self, base_dir: str | os.PathLike[str] | UPath, run_id: str = "", s3_endpoint_url: str | None = None
    ) -> None:
        self.base = as_path(base_dir, s3_endpoint_url=s3_endpoint_url)
        self.run_id = run_id

    def folder(self, asset: str) -> UPath:
        return self.base / asset

    def run_local_path(self, asset: str, key: str) -> UPath:
        return self.base / ".runs" / (self.run_id or "none") / asset / f"{key}.json"

    def png_path(self, asset: str, key: str) -> UPath:
        """Where versions before write-once names kept a partition's image (still read from)."""
        return self.folder(asset) / f"{key}.png"

    def json_path(self, asset: str, key: str) -> UPath:
        return self.folder(asset) / f"{key}.json"

    def write_png(self, asset: str, key: str, png: bytes) -> UPath:
        # The bytes' hash in the name: a new image of the partition (an edited prompt, a retry, another
        # worker that took the prompt over) never lands on a file a running post may still read.
        path = self.folder(asset) / f"{key}-{digest(png)}.png"
        write_once(path, png)
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
                "path": value.path,
            }
        elif isinstance(value, StoredRecord):
            record = value.to_json()
        else:
            record = value
        path = self.run_local_path(asset, key) if is_noop(value) else self.json_path(asset, key)
        write_replacing(path, json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8"))

    def read(self, asset: str, key: str) -> Any:
        record = json.loads(self._read_json(asset, key))
        if isinstance(record, dict) and record.get("__image__"):
            stored = record.get("path")  # absent in files written before images had write-once names
            png_path = as_path(stored) if stored else self.png_path(asset, key)
            found = record["status"] == "OK" and png_path.exists()
            return ImageOutcome(
                record["status"],
                record.get("meta", {}),
                str(png_path) if found else None,
                record.get("thumbnail", ""),
            )
        return record_from_json(asset, record)

    def _read_json(self, asset: str, key: str) -> bytes:
        # Read rather than ask whether it exists: one request instead of two in an object store, and no
        # stale answer from a listing cache.
        for path in (self.run_local_path(asset, key), self.json_path(asset, key)):
            try:
                return read_file(path)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"no stored value of {asset} for partition {key} ({path})")
