"""The daily schedule: the oldest pending prompt(s), like the ancestor's daily run."""

import dagster as dg

from image_pipeline.defs.batching import batches, run_request
from image_pipeline.defs.jobs import process_prompts_job
from image_pipeline.defs.partitions import prompt_partitions
from image_pipeline.domain.errors import PipelineError
from image_pipeline.domain.statuses import AWAITING_APPROVAL, CHECK_CHANNEL, HOLD
from image_pipeline.lifecycle.gate import gate
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.queue_lock import ids_assigned
from image_pipeline.services.images.interface import ImageGenerator
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet


def build_daily_schedule(
    *, cron: str, timezone: str, per_tick: int, batch_size: int = 200
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="daily_prompt_schedule",
        job=process_prompts_job,
        cron_schedule=cron,
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Processes the {per_tick} oldest queued prompt(s) at {cron} ({timezone}).",
    )
    def daily_prompt_schedule(
        context: dg.ScheduleEvaluationContext,
        prompt_sheet: PromptSheet,
        ledger: PostLedger,
        image_generator: ImageGenerator,
        publisher: Publisher,
    ):
        # before the first queue write (ids): a misconfigured service leaves the sheet untouched
        refused = ledger.why_not_spend() or gate(
            [prompt_sheet, image_generator, publisher], store=ledger.open()
        )
        if refused:
            context.log.warning(refused)
            return dg.SkipReason(refused)
        try:
            snapshot = ids_assigned(prompt_sheet, ledger.open())  # one worker at a time
        except PipelineError as exc:
            return dg.SkipReason(f"cannot read the queue: {exc}")
        # rows a person holds, or that wait for APPROVE, are not the schedule's to run
        rows = [row for row in snapshot.rows if row.command not in (HOLD, AWAITING_APPROVAL, CHECK_CHANNEL)]
        if not rows:
            return dg.SkipReason(
                "the queue is empty"
                if not snapshot.rows
                else "every queued row is on hold or awaiting approval"
            )
        # Oldest first, but a prompt that already failed in an earlier run goes behind the fresh ones, so
        # one bad prompt cannot hold the daily post back until it is quarantined.
        attempts = ledger.open().attempts([row.prompt_id for row in rows])
        ordered = sorted(rows, key=lambda row: (attempts.get(row.prompt_id, 0) > 0, row.row_number))
        chosen = [row.prompt_id for row in ordered[: max(1, per_tick)]]
        # Schedules cannot return partition requests, so register new ids directly before targeting them.
        known = set(context.instance.get_dynamic_partitions(prompt_partitions.name))
        missing = [pid for pid in chosen if pid not in known]
        if missing:
            context.instance.add_dynamic_partitions(prompt_partitions.name, missing)
        try:
            day = context.scheduled_execution_time.strftime("%Y-%m-%d")
        except Exception:  # evaluated by hand (UI "test schedule", tests): no tick time
            day = "manual"
        # Batched runs (partition ranges) that never cover a queued prompt left for another day.
        order = context.instance.get_dynamic_partitions(prompt_partitions.name)
        left = {row.prompt_id for row in snapshot.rows} - set(chosen)
        return [
            run_request(batch, key_prefix=day, tags={"trigger": "schedule"})
            for batch in batches(chosen, order, batch_size, avoid=left)
        ]

    return daily_prompt_schedule
