"""What the assets share: their group and IO manager, how a run stops when a service refuses us (one alert,
the queue untouched), the partitions of this run, and metadata per partition."""

from __future__ import annotations

from typing import Any

import dagster as dg

from image_pipeline.domain.errors import (
    CreditsDepleted,
    ServiceBlocked,
    ServiceWait,
)
from image_pipeline.domain.records import ByPartition
from image_pipeline.domain.redact import redact
from image_pipeline.lifecycle.ledger import Ledger, PostLedger, owner_token, stale_owner_check
from image_pipeline.lifecycle.posting import notify
from image_pipeline.services.publisher.interface import Publisher

GROUP = "image_pipeline"
IO = "pipeline_io_manager"
TELEGRAM_POST = "telegram_post"


def _stop(
    context: dg.AssetExecutionContext, publisher: Publisher, exc: ServiceBlocked, book: Ledger | None = None
) -> dg.Failure:
    """A service refuses us: tell the operator once, stop the run, leave the queue as it is.

    Credits depleted (or a provider's quota used up) also pauses spending until an operator resumes:
    the schedule and sensor skip their ticks meanwhile, and only the run that paused it sends a notice."""
    message = redact(str(exc))
    context.log.error(message)
    if isinstance(exc, ServiceWait) and book is not None:
        # no attempt is counted: the prompts are fine, the service asked for time
        if book.pause(exc.service, message, until=exc.until):
            pause = book.pause_state()
            notify(publisher, f"image-pipeline is waiting: {pause.message() if pause else message}")
        return dg.Failure(
            description=message,
            metadata={"service": exc.service, "status": str(exc.status or ""), "resume_at": exc.until},
        )
    if isinstance(exc, CreditsDepleted) and book is not None:
        if book.pause(exc.service, message):
            notify(
                publisher,
                f"image-pipeline paused spending: {message} Resume with `image-pipeline resume` "
                "or the resume_spending_job in the Dagster UI.",
            )
        else:
            context.log.warning("spending was paused already; no second notice")
        return dg.Failure(
            description=message, metadata={"service": exc.service, "status": str(exc.status or "")}
        )
    notify(publisher, f"image-pipeline stopped: {message}")
    return dg.Failure(description=message, metadata={"service": exc.service, "status": str(exc.status or "")})


def _single(context: dg.AssetExecutionContext) -> str | None:
    keys = context.partition_keys
    return keys[0] if len(keys) == 1 else None


def _ledger_context(context: dg.AssetExecutionContext, ledger: PostLedger) -> tuple[Ledger, str, Any]:
    return ledger.open(), owner_token(context.run.run_id), stale_owner_check(context.instance)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _per_partition(
    context: dg.AssetExecutionContext,
    asset: str,
    values: ByPartition,
    describe: Any,
    added: bool = False,
    per_prompt: bool = True,
) -> dict[str, Any]:
    """Each prompt's own materialization metadata (preview, message id, ...), in a batch run too; the
    output's metadata is the one partition's, or the batch's counts. ``added``: the step attached each
    partition's metadata already, as it went. ``per_prompt=False``: a batch shows only its counts (Dagster
    checks every partition key against the whole partition set on each call: about 4 ms per prompt)."""
    if (key := _single(context)) is not None:
        return describe(key, values[key])
    if per_prompt and not added:
        for key, value in values.items():
            context.add_asset_metadata(describe(key, value), asset_key=asset, partition_key=key)
    statuses = _count(v.status for v in values.values())
    return {"batch_partitions": len(values), "batch_statuses": dg.MetadataValue.json(statuses)}
