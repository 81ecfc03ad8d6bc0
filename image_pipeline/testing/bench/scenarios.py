"""The burst scenarios (B100-gen, B100-a1111, B100-post, B1000-mem) and the baseline's runner, with their figures.

``run_product_scenario`` runs ``image-pipeline run`` once over a burst of prompts against configured
emulators while ``TreeMemory`` watches its tree; ``run_baseline`` runs the ancestor's one process per
prompt back to back (``python -m image_pipeline.testing.bench --baseline-one``); ``_product_figures``
turns what the emulators counted into the figures of one row. ``Context`` and ``_figures`` serve every
scenario.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from image_pipeline.testing.bench.a1111 import a1111_env, add_a1111_figures, configure_a1111, uses_a1111
from image_pipeline.testing.bench.baseline import ANCESTOR_DONE_HEADER, SPREADSHEET_TITLE
from image_pipeline.testing.bench.emulated import (
    configure,
    emulated_waits_s,
    google_429,
    hf_429,
    queue_rows,
    sheets_requests,
    verify,
)
from image_pipeline.testing.bench.memory import TreeMemory, _children_maxrss_mb, _own_peak_mb, _reset_own_peak
from image_pipeline.testing.bench.processes import (
    _base_env,
    _tail,
    kill_tree,
    prepare_root,
    run_command,
    started,
    worker_env,
)
from image_pipeline.testing.bench.profiles import BASELINE, JSON_KEYS, Profile

if TYPE_CHECKING:  # the baseline's worker process must not pay for these imports
    from image_pipeline.testing.sandbox import Sandbox


@dataclass
class Context:
    root: Path
    timeout_s: float


def _figures(**values: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(JSON_KEYS)
    out.update(values)
    return out


def run_product_scenario(name: str, profile: Profile, ctx: Context) -> dict[str, Any]:
    """``image-pipeline run`` once over a burst of ``profile.prompts`` prompts."""
    from image_pipeline.testing.sandbox import Sandbox

    root = ctx.root / name
    prepare_root(root)
    rows = queue_rows(profile)
    sandbox = Sandbox(root / "sandbox", seed_rows=rows, a1111=uses_a1111(profile))
    configure(sandbox, profile)
    answered = configure_a1111(sandbox, profile)
    memory = TreeMemory().start()
    _reset_own_peak()
    sandbox.start()
    try:
        log = root / "logs" / "worker.log"
        env = a1111_env(worker_env(sandbox, root, profile), profile)
        t0 = time.monotonic()
        timed_out = False
        with started(run_command(), cwd=root, env=env, log=log) as proc:
            memory.watch(proc.pid)
            try:
                code = proc.wait(timeout=ctx.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                memory.poll()
                kill_tree(proc)
                code = proc.wait()
            wall = time.monotonic() - t0
        memory.stop()
        figures = _product_figures(name, profile, sandbox, rows, wall, code, timed_out, memory, log)
        add_a1111_figures(figures, sandbox, profile, answered, t0)
        return figures
    finally:
        memory.stop()
        sandbox.stop()


def _product_figures(
    name: str,
    profile: Profile,
    sandbox: Sandbox,
    rows: list[list[str]],
    wall: float,
    code: int,
    timed_out: bool,
    memory: TreeMemory,
    log: Path,
) -> dict[str, Any]:
    n = profile.prompts
    bound = profile.bound_s()
    check = verify(sandbox, [row[0] for row in rows[1:]])
    problems = list(check.pop("problems"))
    if timed_out:
        problems.insert(0, "TIMED OUT")
    elif code != 0:
        problems.insert(0, f"EXIT {code}: {_tail(log)}")
    overhead = (wall - (bound or 0.0)) / n * 1000 if n else None
    children_after = _children_maxrss_mb()
    return _figures(
        wall_s=round(wall, 2),
        bound_s=bound,
        efficiency=round(bound / wall, 3) if bound else None,
        sheets_requests_per_prompt=round(sheets_requests(sandbox) / n, 3) if n else None,
        telegram_429=sandbox.telegram.count_429,
        peak_rss_mb=memory.peak_mb,
        overhead_ms_per_prompt=round(overhead, 1) if overhead is not None else None,
        prompts=n,
        **check,
        sheets_requests=sheets_requests(sandbox),
        sheets_reads=sandbox.google.read_requests,
        sheets_writes=sandbox.google.write_requests,
        drive_requests=sum(v for k, v in sandbox.google.counters.items() if k.startswith("drive.")),
        token_requests=sandbox.google.count("token"),
        sheets_429=google_429(sandbox),
        hf_requests=sum(sandbox.hf.counters.values()),
        hf_429=hf_429(sandbox),
        hf_max_in_flight=sandbox.hf.max_in_flight_seen,
        telegram_requests=sum(sandbox.telegram.counters.values()),
        exit_code=code,
        peak_rss_by_process=memory.top(),
        # the largest child the bench has waited for so far (all scenarios): a cross-check of peak_rss_mb
        rusage_children_max_mb=children_after,
        bench_process_peak_rss_mb=_own_peak_mb(),
        check="ok" if not problems else "; ".join(problems),
        crashed=timed_out,
    )


def run_baseline(profile: Profile, ctx: Context) -> dict[str, Any]:
    """The ancestor: one fresh process per prompt, run back to back the way a cron line would."""
    from image_pipeline.testing.sandbox import DONE_WORKSHEET, Sandbox

    root = ctx.root / BASELINE
    prepare_root(root)
    rows = queue_rows(profile)
    sandbox = Sandbox(root / "sandbox", seed_rows=rows)
    configure(sandbox, profile)
    memory = TreeMemory().start()
    _reset_own_peak()
    sandbox.start()
    try:
        sandbox.google.set_values(sandbox.spreadsheet_id, DONE_WORKSHEET, [ANCESTOR_DONE_HEADER])
        env = _base_env(sandbox, root)
        env["GOOGLE_SHEET_TITLE"] = SPREADSHEET_TITLE
        log = root / "logs" / "baseline.log"
        codes: Counter[int] = Counter()
        timed_out = False
        deadline = time.monotonic() + ctx.timeout_s
        t0 = time.monotonic()
        for _ in range(profile.prompts):
            command = [sys.executable, "-m", "image_pipeline.testing.bench", "--baseline-one"]
            with started(command, cwd=root, env=env, log=log) as proc:
                memory.watch(proc.pid)
                try:
                    codes[proc.wait(timeout=max(1.0, deadline - time.monotonic()))] += 1
                except subprocess.TimeoutExpired:
                    timed_out = True
            if timed_out:
                break
        wall = time.monotonic() - t0
        memory.stop()
        figures = _product_figures(
            BASELINE,
            profile,
            sandbox,
            rows,
            wall,
            next((c for c in codes if c != 0), 0),
            timed_out,
            memory,
            log,
        )
        waits = emulated_waits_s(sandbox, profile)
        n = profile.prompts
        figures["emulated_wait_s"] = waits
        figures["overhead_ms_per_prompt"] = round((wall - waits) / n * 1000, 1) if n else None
        figures["processes"] = sum(codes.values())
        figures["processes_failed"] = sum(v for k, v in codes.items() if k != 0)
        figures["retries"] = _count_retries(log)
        return figures
    finally:
        memory.stop()
        sandbox.stop()


def _count_retries(log: Path) -> int:
    try:
        return log.read_text(encoding="utf-8", errors="replace").count("baseline retry:")
    except OSError:
        return 0
