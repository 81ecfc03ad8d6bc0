"""What this host can tell about a process: whether a process id is alive here, and which kernel and PID
namespace "here" is.

A process id means something only between processes of one kernel and one PID namespace: containers share
hostnames and repeat PIDs (pid_namespaces(7)), so a hostname alone never justifies a PID check.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_id() -> str:
    """This kernel (its boot id, shared by every container on it) and this PID namespace (its inode):
    two owners with the same node see the same process ids, so a PID check between them is sound."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip().replace("-", "")
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
        inode = namespace[namespace.index("[") + 1 : namespace.index("]")]
    except (OSError, ValueError):
        return ""  # not Linux: no PID check, the lease and the run's status decide
    return f"{boot}.{inode}" if boot and inode.isdigit() else ""
