"""``image-pipeline doctor``: one table of every service check; the exit code says whether any failed."""

from __future__ import annotations

import argparse

from image_pipeline.cli.environment import load_env


def cmd_doctor(args: argparse.Namespace) -> int:
    """One table of every check; the exit code says whether anything failed."""
    load_env()
    import dagster as dg

    from image_pipeline.definitions import build_definitions
    from image_pipeline.domain.checks import FAIL, WARN, render_table
    from image_pipeline.lifecycle.gate import run_preflight

    defs = build_definitions()
    names = ("prompt_sheet", "image_generator", "publisher", "ledger")
    with dg.build_resources({k: defs.resources[k] for k in names}) as built:
        resources = [getattr(built, k) for k in names]
        for label, resource in zip(("queue", "generator", "publisher"), resources[:3], strict=True):
            try:
                text = resource.describe()
            except Exception as exc:  # a broken key shows in the table below; describing needs it too
                text = f"{type(resource).__name__} ({type(exc).__name__})"
            print(f"{label + ':':<11}{text}")
        print()
        checks = run_preflight(resources)
    print(render_table(checks))
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    print()
    if failed:
        print(f"{failed} check(s) failed, {warned} warning(s): fix the FAIL lines above, then run again")
        return 1
    print(f"all services ready ({warned} warning(s))")
    return 0
