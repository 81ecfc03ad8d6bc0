"""Which filesystem a path lives on, so a SQLite file is never opened where SQLite cannot lock it.

SQLite's own documentation rules out network filesystems for a database several processes use: "WAL does not
work over a network filesystem" (sqlite.org/wal.html: the wal-index is shared memory, so all readers must be on
one machine), and "POSIX advisory locking is known to be buggy or even unimplemented on many NFS
implementations" (sqlite.org/lockingv3.html, faq.html#q5). Corruption reports on EFS, NFS, GlusterFS and
Kubernetes volumes are listed in ../shared/scale-out.md.

The mount of a path is read from /proc/self/mountinfo (proc(5)): the longest mount point that is a prefix of
the path's real location, and its filesystem type (field after the " - " separator).
"""

from __future__ import annotations

import os
from pathlib import Path

# filesystem types (as /proc/self/mountinfo names them) whose locking or shared memory SQLite cannot trust
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.goofys",
        "fuse.rclone",
        "fuse.juicefs",
        "fuse.mountpoint-s3",
        "fuse.blobfuse2",
        "virtiofs",
    }
)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...)
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_of(path: str | Path, mountinfo: str | None = None) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount that holds ``path`` (its nearest existing parent)."""
    # the real location: symlinks of the part that exists resolved, the part not created yet kept as written
    target = Path(path).absolute()
    missing: list[str] = []
    while not target.exists() and target != target.parent:
        missing.insert(0, target.name)
        target = target.parent
    real = os.path.join(os.path.realpath(target), *missing)
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
        except OSError:
            return "", ""  # not Linux: nothing known
    best = ("", "")
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _unescape(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, right.split()[0])
    return best


def network_filesystem(path: str | Path, mountinfo: str | None = None) -> str | None:
    """Why ``path`` must not hold a SQLite database several processes share, or None when it may."""
    point, fstype = mount_of(path, mountinfo)
    if fstype in NETWORK_FILESYSTEMS:
        return (
            f"{path} is on a network filesystem ({fstype} mounted at {point}); SQLite's locking and WAL do "
            "not work there and the ledger could be corrupted or a prompt posted twice (sqlite.org/wal.html, "
            "lockingv3.html). Keep the SQLite ledger on a local disk of one host, or set "
            "IMAGE_PIPELINE_LEDGER_URL to a PostgreSQL database for several hosts"
        )
    return None
