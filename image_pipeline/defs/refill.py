"""A queue that never runs dry, in Dagster: the ``queue_refill_sensor`` that watches the queue's length (one
notice per low-queue episode, remembered in its cursor) and, with a refill configured, starts
``refill_queue_job``, whose op asks the text model for new prompts (``lifecycle/refill.py``).

The sensor sends only the low-queue notice (an alert-chat message, like the slot sensor's notices); the
model request and the sheet writes happen in the run. A run is asked for while the queue is low, no refill
run is in flight and the budget guard allows one; its run key counts today's text requests, so a tick
evaluated twice asks once and a refill that failed transiently is tried again at a later tick.
"""

import json
from typing import Any

import dagster as dg
from pydantic import Field

from image_pipeline.domain.errors import PipelineError
from image_pipeline.lifecycle.ledger import PostLedger, utc_day
from image_pipeline.lifecycle.posting import notify
from image_pipeline.lifecycle.refill import (
    REFILL_STATUSES,
    TEXT_REQUESTS,
    RefillPlan,
    low_queue_notice,
    queued_count,
    refill_queue,
    waiting_count,
    why_not_refill,
)
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet
from image_pipeline.services.text import PromptWriter

REFILL_CHECK_S = 300  # the queue's length changes by one post at a time: every five minutes is enough
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


class RefillConfig(dg.Config):
    count: int = Field(default=5, description="Prompts the text model writes (IMAGE_PIPELINE_REFILL).")
    status: str = Field(default="PREVIEW", description="Status of the new rows: PREVIEW or HOLD.")
    daily_cap: int = Field(default=1, description="Refills per UTC day (IMAGE_PIPELINE_DAILY_REFILL_CAP).")


@dg.op(description="Asks the text model for new prompts and appends the ones that are not near-duplicates.")
def refill_queue_op(
    context: dg.OpExecutionContext,
    config: RefillConfig,
    prompt_sheet: PromptSheet,
    publisher: Publisher,
    ledger: PostLedger,
    prompt_writer: PromptWriter,
) -> dg.Output[None]:
    status = config.status.strip().upper()
    if status not in REFILL_STATUSES:
        raise dg.Failure(
            description=f"refill status must be one of {', '.join(REFILL_STATUSES)}, not {status!r}"
        )
    plan = RefillPlan(count=config.count, status=status, daily_cap=config.daily_cap)
    outcome = refill_queue(ledger.open(), prompt_sheet, prompt_writer, publisher, plan)
    if outcome.skipped:
        context.log.warning(f"no refill: {outcome.skipped}")
    for prompt in outcome.duplicates:
        context.log.info(f"near-duplicate dropped: {prompt}")
    return dg.Output(
        None,
        metadata={
            "written": len(outcome.written),
            "near_duplicates": len(outcome.duplicates),
            "ids": ", ".join(outcome.ids),
            "skipped": outcome.skipped,
            "model": prompt_writer.describe(),
        },
    )


@dg.job(
    description="Queue refill: a text model writes new prompts into Process (PREVIEW or HOLD), no duplicates.",
    tags={"pipeline": "refill"},
    executor_def=dg.in_process_executor,
)
def refill_queue_job() -> None:
    refill_queue_op()


def build_refill_sensor(*, low_queue: int, plan: RefillPlan | None) -> dg.SensorDefinition:
    """The sensor; ``plan`` None: the low-queue notice only (no refill job to start)."""

    def evaluate(
        context: dg.SensorEvaluationContext,
        prompt_sheet: PromptSheet,
        publisher: Publisher,
        ledger: PostLedger,
    ) -> Any:
        try:
            cursor = json.loads(context.cursor or "{}")
        except json.JSONDecodeError:
            cursor = {}
        cursor = cursor if isinstance(cursor, dict) else {}
        try:
            snapshot = prompt_sheet.read_queue()
        except PipelineError as exc:
            return dg.SkipReason(f"cannot read the queue: {exc}")
        queued = queued_count(snapshot)
        text, low = low_queue_notice(queued, waiting_count(snapshot), low_queue, bool(cursor.get("low")))
        if text is not None:
            context.log.warning(text)
            notify(publisher, text)
        new_cursor = json.dumps({"low": low})
        if not low:
            return dg.SensorResult(skip_reason=f"{queued} prompt(s) queued", cursor=new_cursor)
        if plan is None:
            return dg.SensorResult(
                skip_reason=f"the queue is low ({queued}); no refill set", cursor=new_cursor
            )
        book = ledger.open()
        reason = why_not_refill(book, plan)
        if reason is None and context.instance.get_runs(
            filters=dg.RunsFilter(job_name=refill_queue_job.name, statuses=_IN_FLIGHT), limit=1
        ):
            reason = "a refill run is in flight"
        if reason is not None:
            return dg.SensorResult(skip_reason=f"the queue is low ({queued}); {reason}", cursor=new_cursor)
        key = f"refill-{utc_day()}-{book.used_today(TEXT_REQUESTS)}"
        config = {"count": plan.count, "status": plan.status, "daily_cap": plan.daily_cap}
        request = dg.RunRequest(
            run_key=key,
            job_name=refill_queue_job.name,
            run_config={"ops": {refill_queue_op.name: {"config": config}}},
            tags={"trigger": "low queue"},
        )
        return dg.SensorResult(run_requests=[request], cursor=new_cursor)

    return dg.sensor(
        name="queue_refill_sensor",
        job=refill_queue_job if plan is not None else None,
        minimum_interval_seconds=REFILL_CHECK_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Watches the queue's length: one notice when it runs low, and the refill job if set.",
    )(evaluate)
