"""The scale-out scenarios (B100-1w, B100-3w): N workers sharing nothing but a PostgreSQL ledger and an S3 store.

Each worker is ``image-pipeline run`` in a folder of its own (its Dagster home, HF cache, pacing files),
started at the same moment over one backlog, with ``IMAGE_PIPELINE_LEDGER_URL`` on a throwaway PostgreSQL
server and ``IMAGE_PIPELINE_DATA=s3://...`` on moto's S3 server, both on 127.0.0.1. The Hugging Face
emulator admits ``hf_max_concurrent`` requests per worker (4 GPU slots each), Telegram's per-chat cap is
lifted, so the bound is prompts x 1 s / (4 x workers) and the one-worker row is the same deployment with one
worker: the two rows side by side are the speed-up of adding workers. Every figure is counted by the
emulators; the check column says whether each prompt was posted exactly once and the queue ended empty.
The target is on wall time, start-up and wind-down included; the posting rate between the first and
the last photo Telegram accepted is printed beside it.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from typing import Any

from image_pipeline.testing.bench.emulated import configure, queue_rows
from image_pipeline.testing.bench.memory import TreeMemory, _reset_own_peak
from image_pipeline.testing.bench.processes import kill_tree, prepare_root, run_command, worker_env
from image_pipeline.testing.bench.profiles import Profile


def run_workers_scenario(name: str, profile: Profile, ctx: Any) -> dict[str, Any]:
    """``profile.workers`` workers started together over a burst of ``profile.prompts`` prompts."""
    import logging
    from dataclasses import replace

    from image_pipeline.testing.bench.scenarios import _product_figures
    from image_pipeline.testing.sandbox import Sandbox
    from image_pipeline.testing.servers import moto_s3, postgres_server

    root = ctx.root / name
    prepare_root(root)
    rows = queue_rows(profile)
    sandbox = Sandbox(root / "sandbox", seed_rows=rows)
    # the emulated provider serves every worker's 4 slots: a fifth request of one worker still gets 429
    accepted = configure(
        sandbox, replace(profile, hf_max_concurrent=(profile.hf_max_concurrent or 4) * profile.workers)
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise
    memory = TreeMemory().start()
    _reset_own_peak()
    sandbox.start()
    try:
        with (
            postgres_server(
                db_name="image_pipeline_ledger", user="ledger", keep_log=root / "postgres.log"
            ) as pg,
            moto_s3(own_process=True) as s3,
        ):
            bucket = s3.new_bucket("bench")
            shared = {
                "IMAGE_PIPELINE_LEDGER_URL": pg.url(),
                "IMAGE_PIPELINE_S3_ENDPOINT_URL": s3.endpoint_url,
                "IMAGE_PIPELINE_DATA": f"s3://{bucket}/bench",
                **s3.aws_env(),
            }
            logs = []
            with contextlib.ExitStack() as stack:
                procs = []
                for i in range(profile.workers):
                    folder = root / f"w{i + 1}"
                    prepare_root(folder)
                    env = worker_env(sandbox, folder, profile)
                    env.update(shared)
                    log = folder / "logs" / "worker.log"
                    logs.append(log)
                    out = stack.enter_context(open(log, "ab"))
                    procs.append(
                        subprocess.Popen(
                            run_command(),
                            cwd=folder,
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                for proc in procs:
                    stack.callback(kill_tree, proc)
                    memory.watch(proc.pid)
                t0 = time.monotonic()
                deadline = t0 + ctx.timeout_s
                codes, timed_out = [], False
                for proc in procs:
                    try:
                        codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
                    except subprocess.TimeoutExpired:
                        timed_out = True
                        memory.poll()
                        kill_tree(proc)
                        codes.append(proc.wait())
                wall = time.monotonic() - t0
            memory.stop()
            code = next((c for c in codes if c != 0), 0)
            figures = _product_figures(name, profile, sandbox, rows, wall, code, timed_out, memory, logs[0])
            figures["workers"] = profile.workers
            figures["worker_exit_codes"] = codes
            figures.update(posting_figures(accepted, t0))
            return figures
    finally:
        memory.stop()
        sandbox.stop()


def posting_figures(accepted: list[float], t0: float) -> dict[str, Any]:
    """When Telegram accepted the first and the last photo (seconds after the workers started), and the
    rate in between: the pace the workers keep once they are running, without the start-up and wind-down
    each worker process pays once whatever the number of workers."""
    if not accepted:
        return {"first_post_s": None, "last_post_s": None, "posts_per_s": None}
    first, last = min(accepted), max(accepted)
    rate = (len(accepted) - 1) / (last - first) if len(accepted) > 1 and last > first else None
    return {
        "first_post_s": round(first - t0, 2),
        "last_post_s": round(last - t0, 2),
        "posts_per_s": round(rate, 2) if rate is not None else None,
    }


def _ratio_of(results: dict[str, dict[str, Any]], top: str, bottom: str, key: str) -> float | None:
    """``results[top][key] / results[bottom][key]`` when both rows ran over the same prompts."""
    a, b = results.get(top, {}), results.get(bottom, {})
    if not a.get(key) or not b.get(key) or a.get("prompts") != b.get("prompts"):
        return None
    return round(a[key] / b[key], 2)


def speedup(results: dict[str, dict[str, Any]], one: str, many: str) -> float | None:
    """Wall time of the one-worker row over the many-worker row's (same prompts), when both ran."""
    return _ratio_of(results, one, many, "wall_s")


def rate_speedup(results: dict[str, dict[str, Any]], one: str, many: str) -> float | None:
    """The many-worker row's posting rate over the one-worker row's (same prompts), when both ran."""
    return _ratio_of(results, many, one, "posts_per_s")
