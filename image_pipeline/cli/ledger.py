"""``image-pipeline ledger migrate --to URL``: move the SQLite post ledger into PostgreSQL before scaling out.

The copying and its checks live in ``lifecycle/ledger_copy.py``; this module finds the source the
configuration points at, prints the outcome and tells the operator what to set next. Exit codes: 0 copied,
1 the copy failed and the target is as it was, 2 refused (nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from image_pipeline.cli.environment import load_env


def add_ledger_parser(sub: Any) -> None:
    """``ledger`` and its subcommands, on the main parser's subparsers."""
    ledger = sub.add_parser("ledger", help="tools for the post ledger (migrate it to PostgreSQL)")
    commands = ledger.add_subparsers(dest="ledger_command", required=True)
    migrate = commands.add_parser(
        "migrate",
        help="copy the SQLite ledger into an empty PostgreSQL database (stop the workers first)",
        description=(
            "Copy every table of the SQLite post ledger into an empty PostgreSQL database, in one "
            "transaction, verified by reading it back. Refused while a worker holds a claim."
        ),
    )
    migrate.add_argument(
        "--to",
        default=None,
        metavar="URL",
        help=(
            "the target database, e.g. postgresql+psycopg2://user:password@host:5432/image_pipeline_ledger "
            "(default: IMAGE_PIPELINE_LEDGER_URL, which keeps the password off the command line)"
        ),
    )
    migrate.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        default=None,
        help="the SQLite ledger to copy (default: ledger.sqlite in the configured data folder)",
    )
    migrate.set_defaults(func=cmd_ledger_migrate)


def _default_source() -> Path:
    from image_pipeline.settings import settings_from

    # the same file the product opens when IMAGE_PIPELINE_LEDGER_URL is empty (settings.resources_from)
    return settings_from(os.environ).data / "ledger.sqlite"


def _owner_gone(stack: contextlib.ExitStack) -> Callable[[str], bool]:
    """The product's own staleness rule (its process gone on this host, its Dagster run finished), with
    the Dagster instance loaded only if a claim needs asking about."""
    from image_pipeline.lifecycle.ledger_owners import stale_owner_check

    check: list[Callable[[str], bool]] = []

    def is_stale(owner: str) -> bool:
        if not check:
            import dagster as dg

            try:
                instance: Any = stack.enter_context(dg.DagsterInstance.get())
            except Exception:  # no reachable instance: only the lease and the PID check decide
                instance = None
            check.append(stale_owner_check(instance))
        return check[0](owner)

    return is_stale


def cmd_ledger_migrate(args: argparse.Namespace) -> int:
    load_env()
    from image_pipeline.domain.redact import redact
    from image_pipeline.lifecycle.ledger_copy import CopyFailed, CopyRefused, copy_ledger

    source = Path(args.source).resolve() if args.source else _default_source()
    url = args.to or os.environ.get("IMAGE_PIPELINE_LEDGER_URL", "")
    if not url:
        print("error: name the target with --to URL or IMAGE_PIPELINE_LEDGER_URL", file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as stack:
            report = copy_ledger(source, url, is_stale=_owner_gone(stack))
    except CopyRefused as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return 2
    except CopyFailed as exc:
        print(f"error: the copy failed and was rolled back: {redact(exc)}", file=sys.stderr)
        return 1
    print(f"copied {report.source} into {report.target} (one transaction, read back and verified):")
    for table, n in report.counts.items():
        print(f"  {table:<18} {n:>8} row(s)   sha256 {report.checksums[table][:16]}")
    print(
        "next: for every worker, the daemon and the webserver set\n"
        f"  IMAGE_PIPELINE_LEDGER_URL={report.target}\n"
        "(the real password in place of ***), then start the workers again. The SQLite file was not\n"
        "changed: keep it as a backup, nothing reads it once the URL is set."
    )
    return 0
