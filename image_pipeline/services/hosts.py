"""What this host can tell about a process: whether a process id is alive here.

Only meaningful on the same host and in the same PID namespace; the claims that use it say so.
"""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
