"""The weekly digest in Dagster: a schedule at IMAGE_PIPELINE_DIGEST_AT (the schedule's time zone) and the
small job that sends it (``lifecycle/digest.py``).

Once per week twice over: the run key is the ISO week, so the daemon starts one run per week even if the
tick is evaluated again, and the job asks the ledger, which refuses a week it has seen (a run launched by
hand, or a retried run)."""

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg

from image_pipeline.lifecycle.digest import digest_cron, send_digest, week_key
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.services.publisher.interface import Publisher

WEEK_TAG = "digest_week"
TOP_TAG = "digest_top"
DEFAULT_TOP = 5


@dg.op(description="Sends the week's most-reacted posts to the alert chat, once per week.")
def send_digest_op(
    context: dg.OpExecutionContext, publisher: Publisher, ledger: PostLedger
) -> dg.Output[None]:
    tags = context.run.tags
    week = tags.get(WEEK_TAG) or week_key(datetime.now(ZoneInfo("UTC")))  # launched by hand: this week
    top = int(tags.get(TOP_TAG) or DEFAULT_TOP)
    outcome = send_digest(ledger.open(), publisher, week=week, now=time.time(), top=top)
    context.log.info(outcome)
    return dg.Output(None, metadata={"week": week, "outcome": outcome})


@dg.job(
    description="The weekly digest of the channel's most-reacted posts, to the alert chat.",
    tags={"pipeline": "image"},
    executor_def=dg.in_process_executor,
)
def digest_job() -> None:
    send_digest_op()


def build_digest_schedule(*, at: str, timezone: str, top: int) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="weekly_digest_schedule",
        job=digest_job,
        cron_schedule=digest_cron(at),
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"The top {top} posts of the last 7 days by reactions, {at} ({timezone}).",
    )
    def weekly_digest_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        when = context.scheduled_execution_time or datetime.now(ZoneInfo(timezone))
        week = week_key(when.astimezone(ZoneInfo(timezone)))
        return dg.RunRequest(run_key=f"digest-{week}", tags={WEEK_TAG: week, TOP_TAG: str(top)})

    return weekly_digest_schedule
