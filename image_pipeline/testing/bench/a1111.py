"""B100-a1111: the B100 queue made by a self-hosted AUTOMATIC1111 (its loopback emulator) instead of Hugging Face.

``run_product_scenario`` runs it like B100-gen with three additions from here: ``configure_a1111`` sets the
emulator's time per job and records when each txt2img answer leaves; ``a1111_env`` gives the worker
``A1111_CONCURRENCY`` and drops the calling shell's other ``A1111_*`` variables (a login or a checkpoint
of the user's own server would change what is measured); ``add_a1111_figures`` adds what the emulator
counted (jobs, most jobs at once, most requests queued in the server) and where the time beyond the
bound went: before the first job (start-up, preflight, the first Sheets reads), between jobs (the server
idle while the product handles an answer, plus the emulator's own encoding inside its lock) and after
the last job (the last post, Done, exit).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from image_pipeline.testing.bench.profiles import Profile

if TYPE_CHECKING:  # the baseline's worker process must not pay for these imports
    from image_pipeline.testing.sandbox import Sandbox


def uses_a1111(profile: Profile) -> bool:
    return profile.a1111_s is not None


def configure_a1111(sandbox: Sandbox, profile: Profile) -> list[float]:
    """The emulator's time per job; returns the list it fills with the moment each txt2img answer is
    ready (the job is over: the FIFO lock is released before the answer is written)."""
    answered: list[float] = []
    emulator = sandbox.a1111
    if emulator is None or profile.a1111_s is None:
        return answered
    emulator.generation_s = profile.a1111_s

    def job_over(request: Any, endpoint: str, response: Any) -> None:
        if endpoint == "txt2img" and response.status == 200:
            answered.append(time.monotonic())

    emulator.after_route = job_over
    return answered


def a1111_env(env: dict[str, str], profile: Profile) -> dict[str, str]:
    if not uses_a1111(profile):
        return env
    out = {k: v for k, v in env.items() if not k.startswith("A1111_")}
    out["A1111_CONCURRENCY"] = str(profile.a1111_concurrency)
    return out


def add_a1111_figures(
    figures: dict[str, Any], sandbox: Sandbox, profile: Profile, answered: list[float], t0: float
) -> None:
    """The emulator's counts and the time split; a job run twice or two jobs at once fail the check."""
    emulator = sandbox.a1111
    if emulator is None or profile.a1111_s is None:
        return
    n, per_job = profile.prompts, profile.a1111_s
    wall = figures.get("wall_s") or 0.0
    ends = sorted(answered)
    figures.update(
        a1111_jobs_run=emulator.jobs_run,
        a1111_max_concurrent_jobs=emulator.max_concurrent_jobs,
        a1111_max_queued=emulator.queue_lock.max_waiting,
        a1111_concurrency=profile.a1111_concurrency,
        a1111_s_per_job=per_job,
    )
    if ends:
        first_start = ends[0] - per_job
        figures["a1111_before_first_job_s"] = round(first_start - t0, 2)
        figures["a1111_after_last_job_s"] = round(t0 + wall - ends[-1], 2)
        if len(ends) > 1:
            # the time of a job beyond its emulated sampling, from one answer to the next
            gap = (ends[-1] - ends[0]) / (len(ends) - 1) - per_job
            figures["a1111_between_jobs_ms"] = round(gap * 1000, 1)
    problems = []
    if emulator.max_concurrent_jobs > 1:
        problems.append(f"A1111 RAN {emulator.max_concurrent_jobs} JOBS AT ONCE")
    if emulator.jobs_run != n:
        problems.append(f"A1111 RAN {emulator.jobs_run} JOBS FOR {n} PROMPTS")
    if problems:
        check = figures.get("check")
        figures["check"] = "; ".join(([check] if check and check != "ok" else []) + problems)
