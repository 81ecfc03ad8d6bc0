"""Who holds a claim in the post ledger, and whether that holder is gone.

An owner token is ``host[/node]:pid:run_id``; the node is this kernel's boot id and this PID namespace's
inode. A process id means something only between owners with the same node: containers share hostnames and
repeat PIDs (pid_namespaces(7)), so a hostname alone never justifies a PID check.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import dagster as dg

from image_pipeline.services.hosts import node_id, process_alive


def owner_token(run_id: str) -> str:
    """``host[/node]:pid:run_id``. The node sits with the host so that an older release, which splits on the
    first two colons, still reads the pid and run id, sees another host, and never checks the pid."""
    node = node_id()
    where = f"{socket.gethostname()}/{node}" if node else socket.gethostname()
    return f"{where}:{os.getpid()}:{run_id}"


def stale_owner_check(instance: dg.DagsterInstance | None) -> Callable[[str], bool]:
    """Whether a claim's owner, whose lease still runs, is gone anyway: its Dagster run has finished, or it
    is provably on this kernel and in this PID namespace and its process is gone.

    A hostname alone proves nothing (containers share one, PID namespaces repeat ids), so an owner token
    without a node (older releases, non-Linux) gets no PID check: its lease and its run decide."""
    here = node_id()

    def is_stale(owner: str) -> bool:
        try:
            where, pid_text, run_id = owner.split(":", 2)
            pid = int(pid_text)
        except ValueError:
            return True
        node = where.partition("/")[2]
        if here and node == here and not process_alive(pid):
            return True
        if instance is not None and run_id:
            # A run this instance does not know is not proof of anything: a worker with another Dagster
            # instance (or a wiped one) may hold it alive. Only a finished run is; otherwise the lease decides.
            run = instance.get_run_by_id(run_id)
            if run is not None and run.is_finished:
                return True
        return False

    return is_stale
