"""Files in a local folder or in an object store (``s3://bucket/prefix``), through one path type.

``upath.UPath`` gives the local disk and fsspec's object stores the same path API: s3fs for S3 and
S3-compatible servers; GCS (gcsfs) and Azure (adlfs) go through the same layer but are not tested here.
Credentials are never ours to hold: s3fs asks botocore's standard chain (``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and its config files, an instance or pod role).

Images and previews are written once: a name that exists is never replaced, so two workers cannot
overwrite each other's file. Their names carry the bytes' hash, so two different images never want the
same name, and a write repeated after a lost answer finds its own bytes there. Such a file never changes,
so the bytes a process wrote to an object store stay at hand for a while (``RecentObjects``): the post a
moment later reads them from memory instead of asking the store again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import fsspec
from upath import UPath

from image_pipeline.services.files import atomic_write

LOCAL_PROTOCOLS = frozenset({"", "file", "local"})
# Write-once objects kept in memory after this process wrote them: about a batch's images in flight
# between generation and post at 1024x1024, and never more, whatever the batch size.
RECENT_OBJECTS_BYTES = 64 * 1024 * 1024


class RecentObjects:
    """The last write-once objects this process wrote to an object store, by URL, up to ``limit`` bytes
    (least recently used out first). Safe to read from because such a name never gets other bytes."""

    def __init__(self, limit: int = RECENT_OBJECTS_BYTES) -> None:
        self.limit = limit
        self._held: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, url: str, data: bytes) -> None:
        if len(data) > self.limit:
            return
        with self._lock:
            old = self._held.pop(url, None)
            self._size -= len(old) if old is not None else 0
            self._held[url] = data
            self._size += len(data)
            while self._size > self.limit:
                _url, dropped = self._held.popitem(last=False)
                self._size -= len(dropped)

    def get(self, url: str) -> bytes | None:
        with self._lock:
            data = self._held.get(url)
            if data is not None:
                self._held.move_to_end(url)
            return data


_recent = RecentObjects()


class WriteConflict(FileExistsError):
    """A write-once name already holds different bytes: another writer got there first."""


def is_object_store(location: str) -> bool:
    """``s3://bucket/prefix`` and the like; a plain folder (or a ``file://`` URL) is local."""
    scheme, sep, _rest = location.partition("://")
    return bool(sep) and scheme.lower() not in LOCAL_PROTOCOLS


def use_s3_endpoint(endpoint_url: str) -> None:
    """Send every ``s3://`` path of this process to this S3-compatible server (MinIO, Ceph, moto).

    fsspec's per-protocol default rather than an option on one path: a stored record names its image by
    URL alone, and whoever reads it later (the next step, APPROVE's run) must reach the same store."""
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint_url


def as_path(location: str | os.PathLike[str] | UPath, *, s3_endpoint_url: str | None = None) -> UPath:
    """The folder or object-store prefix ``location`` names."""
    if s3_endpoint_url:
        use_s3_endpoint(s3_endpoint_url)
    return location if isinstance(location, UPath) else UPath(location)


def is_local(path: UPath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def digest(data: bytes) -> str:
    """The part of a write-once name that makes it unique: 64 bits of the bytes' SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


def read_file(path: UPath) -> bytes:
    """The file's bytes; FileNotFoundError when it is not there. In an object store one GET (a UPath's
    read_bytes asks for the size first, and on a miss lists the "folder" too), none for a write-once
    object this process wrote a moment ago."""
    if is_local(path):
        return Path(path.path).read_bytes()
    kept = _recent.get(str(path))
    if kept is not None:
        return kept
    return path.fs.cat_file(path.path)


def write_replacing(path: UPath, data: bytes) -> None:
    """A file whose newest version is the one that counts (a partition's JSON record): replaced whole,
    never seen half-written (a temp file renamed over it on disk; one PUT in an object store)."""
    if is_local(path):
        atomic_write(Path(path.path), data)
    else:
        # one PutObject, as UPath.write_bytes sends too, without its buffered file object around it
        path.fs.pipe_file(path.path, data)


def write_once(path: UPath, data: bytes) -> None:
    """Create ``path`` holding ``data``; an existing file is never replaced.

    When the name exists, its bytes are read back: the same bytes are fine (a write repeated after its
    answer was lost, or another worker that stored the same image); different bytes raise
    ``WriteConflict`` and the file stays as the first writer left it."""
    try:
        if is_local(path):
            _create_local(Path(path.path), data)
        else:
            # S3: PutObject with If-None-Match: * (HTTP 412 when the key exists, FileExistsError here)
            path.fs.pipe_file(path.path, data, mode="create")
            _recent.put(str(path), data)
        return
    except FileExistsError:
        pass
    existing = read_file(path)
    if existing != data:
        raise WriteConflict(
            f"{path} already holds other bytes (sha256 {digest(existing)}, not {digest(data)}): not replaced"
        )
    if not is_local(path):
        _recent.put(str(path), data)


def _create_local(path: Path, data: bytes) -> None:
    # A temp file hard-linked to its name: link() refuses an existing name, so the file appears whole
    # or not at all, and never replaces another writer's.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:
            # a filesystem without hard links: an exclusive create (a crash mid-write leaves a short
            # file, which the next writer finds different and refuses, rather than replacing it)
            with open(path, "xb") as out:
                out.write(data)
    finally:
        os.unlink(tmp)
