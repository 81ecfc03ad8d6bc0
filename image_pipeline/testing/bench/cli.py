"""The command line of ``python -m image_pipeline.testing.bench``: arguments, the run of every scenario, exit code.

``main`` parses the arguments (or runs the baseline's worker with ``--baseline-one``), runs the selected
scenarios in turn with ``run_bench`` (a crash is reported in its row, Ctrl-C or SIGTERM keeps what
finished), prints the table, optionally writes the JSON, and exits 1 only when a scenario crashed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from image_pipeline.testing.bench.baseline import baseline_one
from image_pipeline.testing.bench.profiles import (
    ALL_NAMES,
    BASELINE,
    WORKER_SCENARIOS,
    Profile,
    default_profiles,
)
from image_pipeline.testing.bench.report import format_table, with_ratios
from image_pipeline.testing.bench.scenarios import Context, _figures, run_baseline, run_product_scenario
from image_pipeline.testing.bench.sensor import run_sensor
from image_pipeline.testing.bench.workers import rate_speedup, run_workers_scenario, speedup


def selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        names = [n for n in ALL_NAMES if n in args.only]
        if args.with_baseline and BASELINE not in names:
            names.append(BASELINE)
        return names
    return [n for n in ALL_NAMES if n != BASELINE or not args.no_baseline]


def profiles_for(args: argparse.Namespace) -> dict[str, Profile]:
    profiles = default_profiles(args.side)
    for name in ("B100-gen", "B100-a1111", "B100-post", "B1000-mem", *WORKER_SCENARIOS):
        count = args.prompts if args.prompts else max(1, round(profiles[name].prompts * args.scale))
        profiles[name] = replace(profiles[name], prompts=count)
    profiles[BASELINE] = replace(profiles[BASELINE], prompts=args.baseline_prompts)
    if args.a1111_concurrency:
        profiles["B100-a1111"] = replace(profiles["B100-a1111"], a1111_concurrency=args.a1111_concurrency)
    if args.no_latency:
        profiles = {k: p.without_latency() for k, p in profiles.items()}
    return profiles


def run_bench(
    args: argparse.Namespace, results: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Every selected scenario in turn; ``results`` fills as they finish (an interrupt keeps those)."""
    results = {} if results is None else results
    profiles = profiles_for(args)
    own_root = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="image-pipeline-bench-")) if own_root else Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    ctx = Context(root=root, timeout_s=args.timeout_s)
    try:
        for name in selected(args):
            print(f"[bench] {name}: {profiles[name].prompts} prompt(s) ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                if name == BASELINE:
                    results[name] = run_baseline(profiles[name], ctx)
                elif name == "sensor":
                    results[name] = run_sensor(profiles[name], ctx)
                elif name in WORKER_SCENARIOS:
                    results[name] = run_workers_scenario(name, profiles[name], ctx)
                else:
                    results[name] = run_product_scenario(name, profiles[name], ctx)
            except Exception as exc:  # report it and go on: the other scenarios still measure something
                results[name] = _figures(
                    prompts=profiles[name].prompts,
                    check=f"CRASHED: {type(exc).__name__}: {str(exc)[:300]}",
                    crashed=True,
                )
            print(
                f"[bench] {name}: done in {time.monotonic() - t0:.0f}s ({results[name].get('check')})",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    with_ratios(results)
    if name_pair := [n for n in WORKER_SCENARIOS if n in results]:
        many = name_pair[-1]
        results[many]["speedup_vs_1w"] = speedup(results, WORKER_SCENARIOS[0], many)
        results[many]["rate_speedup_vs_1w"] = rate_speedup(results, WORKER_SCENARIOS[0], many)
    return results


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m image_pipeline.testing.bench",
        description="Time the pipeline against emulators with a fixed latency profile and print one table.",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument(
        "--only", action="append", choices=ALL_NAMES, help="run only this scenario (repeatable)"
    )
    parser.add_argument("--with-baseline", action="store_true", help="with --only: run the baseline too")
    parser.add_argument("--no-baseline", action="store_true", help="without --only: skip the baseline")
    parser.add_argument(
        "--baseline-prompts", type=int, default=100, help="prompts of the baseline (default 100)"
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=0,
        help="prompts of B100-gen, B100-a1111, B100-post, B1000-mem, B100-1w and B100-3w",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the default prompt counts")
    parser.add_argument(
        "--side", type=int, default=512, help="image side of the B100 scenarios and the sensor"
    )
    parser.add_argument(
        "--a1111-concurrency",
        type=int,
        default=0,
        help="A1111_CONCURRENCY of B100-a1111 (default: its profile's)",
    )
    parser.add_argument("--no-latency", action="store_true", help="no emulated latency at all (smoke runs)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="give up on a scenario after this")
    parser.add_argument("--workdir", type=Path, default=None, help="keep every scenario's files here")
    parser.add_argument("--baseline-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_one:
        return baseline_one()
    results: dict[str, dict[str, Any]] = {}
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        run_bench(args, results)
    except KeyboardInterrupt:
        # every server and subprocess was stopped on the way out; what finished is still worth printing
        interrupted = True
        print("[bench] interrupted: the table holds the scenarios that finished", file=sys.stderr)
        with_ratios(results)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if interrupted:
        return 130
    return 1 if any(r.get("crashed") for r in results.values()) else 0
