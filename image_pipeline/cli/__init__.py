"""``image-pipeline``: the command line around the Dagster definitions.

``run`` processes every pending prompt of the configured queue through Dagster (one recorded run per
prompt in the local instance, so the runs show in the UI later) and exits; ``doctor`` checks every
service; ``resume`` lifts a pause. Each command lives in its own module; this one parses the arguments.
"""

from __future__ import annotations

import argparse
import gc
import sys

from image_pipeline.cli.doctor import cmd_doctor
from image_pipeline.cli.ledger import add_ledger_parser
from image_pipeline.cli.resume import cmd_resume
from image_pipeline.cli.run import cmd_run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sandbox"]:
        # the emulators belong to the testing layer, which the product never imports
        print(
            "the sandbox has its own command now: image-pipeline-sandbox (or make sandbox)", file=sys.stderr
        )
        return 2
    parser = argparse.ArgumentParser(prog="image-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="process every pending prompt of the queue, then exit")
    run.add_argument("--limit", type=int, default=0, help="process at most this many prompts")
    run.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per Dagster run (default IMAGE_PIPELINE_BATCH_SIZE or 200; 1: one run per prompt)",
    )
    run.set_defaults(func=cmd_run)
    doctor = sub.add_parser(
        "doctor", help="check each configured service with its cheapest real call; exit 1 if any fails"
    )
    doctor.set_defaults(func=cmd_doctor)
    resume = sub.add_parser(
        "resume", help="lift the pause set when credits ran out or a quota was used up (budget guard)"
    )
    resume.set_defaults(func=cmd_resume)
    add_ledger_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def entry() -> None:
    """The ``image-pipeline`` script: ``main``, then exit.

    A run leaves a large heap behind (Dagster's definitions and instance, the service clients), and the
    interpreter's last full garbage collection on exit walks all of it: 0.3-0.7 s of every ``make run``
    and of every worker of a scale-out, for memory the process is about to give back anyway. Frozen
    objects are left out of that collection; the rest of exiting (other threads, atexit handlers,
    flushing) is unchanged."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
