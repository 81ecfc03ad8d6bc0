"""A SQLite ledger is never opened on a network filesystem: the mount of a path and its type, from mountinfo."""

from __future__ import annotations

from pathlib import Path

from image_pipeline.services.filesystems import mount_of, network_filesystem

# the shape of /proc/self/mountinfo (proc(5)): an NFS export mounted below a local root, and a path with a space
MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 0:50 /exports/pipeline /srv/shared rw,relatime shared:30 - nfs4 fileserver:/exports/pipeline rw,vers=4.2
41 22 0:51 / /srv/shared/local\\040disk rw,relatime - ext4 /dev/sdb1 rw
42 22 0:52 / /mnt/efs rw - nfs4 fs-1234.efs.eu-west-1.amazonaws.com:/ rw
43 22 0:53 / /mnt/smb rw - cifs //nas/share rw
"""


def test_a_path_on_nfs_efs_or_smb_is_refused_with_the_reason() -> None:
    why = network_filesystem("/srv/shared/data/ledger.sqlite", MOUNTINFO)
    assert why is not None and "nfs4" in why and "/srv/shared" in why
    assert "IMAGE_PIPELINE_LEDGER_URL" in why and "sqlite.org/wal.html" in why
    assert network_filesystem("/mnt/efs/ledger.sqlite", MOUNTINFO) is not None
    assert "cifs" in (network_filesystem("/mnt/smb/x/ledger.sqlite", MOUNTINFO) or "")


def test_the_longest_mount_wins_and_local_disks_are_fine() -> None:
    # a local disk mounted inside the NFS tree is local; the root and its siblings too
    assert mount_of("/srv/shared/local disk/ledger.sqlite", MOUNTINFO) == ("/srv/shared/local disk", "ext4")
    assert network_filesystem("/srv/shared/local disk/ledger.sqlite", MOUNTINFO) is None
    assert network_filesystem("/srv/sharedother/ledger.sqlite", MOUNTINFO) is None  # a prefix, not a parent
    assert network_filesystem("/var/lib/ledger.sqlite", MOUNTINFO) is None


def test_this_machines_temporary_folder_is_local(tmp_path: Path) -> None:
    # the real mountinfo of this machine: the suite's folders are on a local disk
    point, fstype = mount_of(tmp_path / "not-yet" / "ledger.sqlite")
    assert point and fstype
    assert network_filesystem(tmp_path / "ledger.sqlite") is None
