"""The command line of ``python -m image_pipeline.testing.chaos``: its arguments, the table it prints, its exit code.

``main`` parses the arguments, runs ``run_chaos`` once, prints every figure as a table (the verdict's
figures first), optionally writes them as JSON, and exits 0 only when the pass figures are all 0.
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any

from image_pipeline.testing.chaos.audit import PASS_FIGURES, RESULT_KEYS, passed
from image_pipeline.testing.chaos.run import run_chaos


def format_table(result: dict[str, int | float]) -> str:
    width = max(len(k) for k in result)
    lines = [f"{'name':<{width}}  value", f"{'-' * width}  -----"]
    ordered = [*RESULT_KEYS, *(k for k in result if k not in RESULT_KEYS)]
    lines += [f"{k:<{width}}  {result[k]}" for k in ordered]
    return "\n".join(lines)


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m image_pipeline.testing.chaos",
        description="Run the real worker against faulty emulators with SIGKILLs and a concurrent editor.",
    )
    parser.add_argument("--prompts", type=int, default=500, help="prompts queued at the start")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of requests that fail")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the worker, spread over the run")
    parser.add_argument(
        "--writer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a second thread edits the queue while the pipeline runs",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as one JSON object")
    parser.add_argument("--seed", type=int, default=1, help="seed of prompts, faults, kills and edits")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="give up (not drained) after this")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run's files here")
    parser.add_argument("--workers", type=int, default=1, help="workers racing over the one backlog at once")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="share nothing but a PostgreSQL ledger and an s3:// store (throwaway servers started here)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    # SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C: the workers, the emulators and the
    # throwaway PostgreSQL and S3 servers are stopped on the way out, never left running
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        result = run_chaos(
            prompts=args.prompts,
            fault_rate=args.fault_rate,
            kills=args.kills,
            writer=args.writer,
            seed=args.seed,
            timeout_s=args.timeout_s,
            workdir=args.workdir,
            workers=args.workers,
            distributed=args.distributed,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ok = passed(result)
    print("PASS" if ok else f"FAIL: {', '.join(PASS_FIGURES)} must all be 0")
    return 0 if ok else 1
