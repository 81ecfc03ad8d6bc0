"""Memory: the peak RSS of a process tree, read from /proc, and the bench's own peak.

``TreeMemory`` polls every process of the watched trees for its VmHWM every ``POLL_S`` seconds;
``process_tree`` lists a process and its descendants (also used to kill a tree); the rest reads or resets
the bench process's own peak and the largest waited-for child (``getrusage``), a cross-check.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from pathlib import Path

POLL_S = 0.2


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: the fields after the last ')' are fixed
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that exist now."""
    children = _proc_children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _status_kb(pid: int | str, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            parts = [p.decode("utf-8", "replace") for p in fh.read().split(b"\0") if p]
    except OSError:
        return "?"
    # "python -m image_pipeline.cli run" -> the interesting words, not the interpreter's path
    words = [Path(p).name if p.startswith("/") else p for p in parts[:6]]
    return " ".join(words)[:80]


class TreeMemory:
    """Peak RSS of a process tree: every process's VmHWM (its own peak), read every ``POLL_S`` seconds.

    VmHWM only grows, so the last reading of a pid before it exits is its peak; a process living less
    than one poll can be missed, which ``getrusage(RUSAGE_CHILDREN)`` (``rusage_children_max_mb``) covers.
    """

    def __init__(self, interval_s: float = POLL_S) -> None:
        self.interval_s = interval_s
        self.roots: list[int] = []
        self.peaks_kb: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def watch(self, pid: int) -> None:
        with self._lock:
            self.roots.append(pid)
        self.poll()

    def start(self) -> TreeMemory:
        self._thread.start()
        return self

    def poll(self) -> None:
        with self._lock:
            roots = list(self.roots)
        for root in roots:
            for pid in process_tree(root):
                hwm = _status_kb(pid, "VmHWM")
                if hwm is None:
                    continue
                with self._lock:
                    if hwm > self.peaks_kb.get(pid, 0):
                        self.peaks_kb[pid] = hwm
                    if pid not in self.names:
                        self.names[pid] = _comm(pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def peak_mb(self) -> float | None:
        with self._lock:
            return round(max(self.peaks_kb.values()) / 1024, 1) if self.peaks_kb else None

    def top(self, n: int = 3) -> str:
        with self._lock:
            ranked = sorted(self.peaks_kb.items(), key=lambda kv: -kv[1])[:n]
            return "; ".join(f"{self.names.get(pid, '?')}: {kb / 1024:.0f} MB" for pid, kb in ranked)


def _reset_own_peak() -> None:
    # writing 5 to clear_refs resets this process's VmHWM (Linux 4.0+), so each scenario gets its own peak
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def _own_peak_mb() -> float | None:
    kb = _status_kb("self", "VmHWM")
    return round(kb / 1024, 1) if kb else None


def _children_maxrss_mb() -> float:
    # Linux reports kilobytes; the largest waited-for descendant over the bench's whole life
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
