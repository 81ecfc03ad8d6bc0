"""``image-pipeline resume``: lift a spending or service pause before its time."""

from __future__ import annotations

import argparse

from image_pipeline.cli.environment import load_env


def cmd_resume(args: argparse.Namespace) -> int:
    """Lift the budget guard's pause (after credits were added or the quota renewed)."""
    load_env()
    from image_pipeline.definitions import build_definitions

    book = build_definitions().resources["ledger"].open()
    lifted = book.resume()
    if not lifted:
        print("spending was not paused; nothing to do")
        return 0
    for pause in lifted:
        print(f"resumed: {pause.service} had paused spending: {pause.reason}")
    print("the schedule and the sensor start work again at their next tick; `make run` works now")
    return 0
