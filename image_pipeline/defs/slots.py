"""The slot sensor: with IMAGE_PIPELINE_SLOTS set, it asks for each queued row's run ``lead_s`` before the
row's slot (its post waits for the slot in the run), and shows the next slots in its tick text.

Every 30 s, so a post leaves within a minute of its slot. A tick reads the queue only when its change token
moved, a planned run is due, or ``sheet_check_s`` passed (Drive's token trails Sheets edits); otherwise the
tick's text repeats the plan from the cursor at the cost of one token request.
"""

import json
import time
from collections.abc import Callable, Sequence
from datetime import time as dtime

import dagster as dg

from image_pipeline.defs.batching import batches, run_request
from image_pipeline.defs.jobs import process_prompts_job
from image_pipeline.defs.partitions import prompt_partitions
from image_pipeline.defs.sensors import load_cursor
from image_pipeline.domain.errors import PipelineError
from image_pipeline.domain.slots import POST, zone_of
from image_pipeline.domain.statuses import AWAITING_APPROVAL, CHECK_CHANNEL, HOLD
from image_pipeline.lifecycle.gate import gate
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.planning import POST_AT_TAG, SLOT_TAG, local, plan_tick
from image_pipeline.lifecycle.posting import notify
from image_pipeline.lifecycle.queue_lock import ids_assigned
from image_pipeline.services.images.interface import ImageGenerator
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet

SLOT_SENSOR_INTERVAL_S = 30


def build_slot_sensor(
    *,
    slots: Sequence[dtime],
    timezone: str,
    lead_s: float = 900.0,
    missed: str = POST,
    batch_size: int = 200,
    sheet_check_s: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """``clock``: the tick's time (tests drive it; the daemon's ticks use the wall clock)."""
    zone = zone_of(timezone)
    names = ", ".join(f"{t.hour:02d}:{t.minute:02d}" for t in slots)

    @dg.sensor(
        name="post_slot_sensor",
        job=process_prompts_job,
        minimum_interval_seconds=SLOT_SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Posts the queue at {names} ({timezone}): each row's run starts {lead_s:.0f} s before its slot "
            "and its post waits for the slot. The tick text lists the next slots."
        ),
    )
    def post_slot_sensor(
        context: dg.SensorEvaluationContext,
        prompt_sheet: PromptSheet,
        image_generator: ImageGenerator,
        publisher: Publisher,
        ledger: PostLedger,
    ):
        state = load_cursor(context.cursor)
        now = clock()
        try:
            token = prompt_sheet.change_token()
            checked = _number(state.get("checked"), 0.0)
            next_due = _number(state.get("next_due"), float("inf"))
            fresh = sheet_check_s <= 0 or 0 <= now - checked < sheet_check_s
            if token == state.get("token") and now < next_due and fresh:
                return dg.SkipReason(str(state.get("summary") or "nothing due"))
            snapshot = ids_assigned(prompt_sheet, ledger.open())  # one worker at a time
        except PipelineError as exc:
            return dg.SkipReason(f"cannot read the queue: {exc}")
        # rows a person holds, or that wait for APPROVE or a channel check, take no slot
        rows = [r for r in snapshot.rows if r.command not in (HOLD, AWAITING_APPROVAL, CHECK_CHANNEL)]
        tick = plan_tick(
            [(r.prompt_id, r.params.get("post_at", "")) for r in rows],
            slots,
            zone,
            now,
            lead_s=lead_s,
            missed=missed,
            state=state,
        )
        for line in tick.logs:
            context.log.info(line)
        cursor = json.dumps({**tick.cursor, "token": token, "checked": now})
        if not tick.runs:
            return dg.SensorResult(skip_reason=dg.SkipReason(tick.summary), cursor=cursor)
        # a pause or a used-up daily cap first; the cursor stays, so the next tick asks again
        refused = ledger.why_not_spend() or gate(
            [prompt_sheet, image_generator, publisher], store=ledger.open()
        )
        if refused:
            context.log.warning(refused)
            return dg.SkipReason(refused)
        known = list(context.instance.get_dynamic_partitions(prompt_partitions.name))
        ids = [r.prompt_id for r in snapshot.rows]
        new_ids = [pid for pid in ids if pid not in set(known)]
        order = known + new_ids
        requests = []
        for run in tick.runs:
            others = set(ids) - set(run.prompt_ids)
            tags = {"trigger": "slot"}
            prefix = f"post-at-invalid-{now:.0f}"
            if run.at is not None:
                tags.update({POST_AT_TAG: f"{run.at.timestamp():.0f}", SLOT_TAG: local(run.at, zone)})
                prefix = f"slot-{run.at.timestamp():.0f}"
            requests += [
                run_request(batch, key_prefix=prefix, tags=tags)
                for batch in batches(run.prompt_ids, order, batch_size, avoid=others)
            ]
        for text in tick.notices:
            context.log.warning(text)
            notify(publisher, text)
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[prompt_partitions.build_add_request(new_ids)] if new_ids else [],
            cursor=cursor,
        )

    return post_slot_sensor


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default
