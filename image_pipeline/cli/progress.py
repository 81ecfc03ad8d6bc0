"""The lines ``image-pipeline run`` prints while it works: one per prompt, counted across batches.

It listens to the lifecycle's progress events (``lifecycle.progress``) in this process.
"""

from __future__ import annotations

import threading
import time


class ConsoleProgress:
    """The lines ``run`` prints: one per prompt as its run reports it, counted across all the batches."""

    def __init__(self, ids: list[str]) -> None:
        self.wanted = set(ids)
        self.total = len(ids)
        self.seen: dict[str, str] = {}  # prompt id -> the status printed for it
        self.run_id = ""
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def begin(self, runs: int | None) -> None:
        """``runs``: how many runs are planned; None when each run's share is claimed as it goes."""
        plan = "shares claimed as the runs go" if runs is None else f"{runs} {'run' if runs == 1 else 'runs'}"
        print(f"[0/{self.total}] starting: {self.total} prompts in {plan}  (ETA --)", flush=True)

    def line(self, pid: str, status: str, detail: str) -> None:
        from image_pipeline.lifecycle.progress import progress_text

        with self._lock:
            self.seen[pid] = status
            n = len(self.seen)
            timing = progress_text(n, self.total, time.monotonic() - self.started)
            print(f"[{n}/{self.total}] {pid}: {status} {detail[:160]}  ({timing})", flush=True)

    def on_event(self, event: object) -> None:
        from image_pipeline.lifecycle.progress import BatchLogged, PromptFinished

        if getattr(event, "run_id", None) != self.run_id:
            return
        if isinstance(event, PromptFinished):
            # ride-along prompts of a range (finished earlier) are not part of this command's count
            if event.prompt_id in self.wanted and event.prompt_id not in self.seen:
                self.line(event.prompt_id, event.status, event.detail)
        elif isinstance(event, BatchLogged):
            print(f"      {event.summary()}", flush=True)
