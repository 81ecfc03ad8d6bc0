"""The sheet-change sensor: notices new rows, gives them ids, registers their partitions.

A tick first asks for the queue's change token (a file stat locally, Drive ``modifiedTime`` for Google
Sheets); when it equals the cursor's, that one cheap request is all the tick costs.
"""

import json

import dagster as dg

from .batching import batches, run_request
from .errors import PipelineError
from .jobs import process_prompts_job
from .ledger import PostLedger
from .partitions import prompt_partitions
from .preflight import gate
from .resources.images import ImageGenerator
from .resources.publisher import Publisher
from .resources.sheets import PromptSheet


def build_prompt_sheet_sensor(
    *, instant: bool, interval_s: int = 60, batch_size: int = 200
) -> dg.SensorDefinition:
    @dg.sensor(
        name="prompt_sheet_sensor",
        job=process_prompts_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            "Watches the Process sheet; registers a partition per new prompt"
            + (" and runs it at once (instant mode)." if instant else ". The daily schedule runs them.")
        ),
    )
    def prompt_sheet_sensor(
        context: dg.SensorEvaluationContext,
        prompt_sheet: PromptSheet,
        image_generator: ImageGenerator,
        publisher: Publisher,
        ledger: PostLedger,
    ):
        cursor = _load_cursor(context.cursor)
        try:
            token = prompt_sheet.change_token()
            if token == cursor.get("token"):
                return dg.SkipReason("the queue has not changed since the last tick")
            # The token is taken before the read: an edit made after it shows up as a change next tick.
            snapshot = prompt_sheet.ensure_ids()
        except PipelineError as exc:
            # A sensor that raises shows as an error tick; the daemon keeps going either way, but a
            # clear skip reason is what a person needs to read in the tick log.
            return dg.SkipReason(f"cannot read the queue: {exc}")
        known = set(context.instance.get_dynamic_partitions(prompt_partitions.name))
        ids = [row.prompt_id for row in snapshot.rows]
        new_ids = [pid for pid in ids if pid not in known]
        run_requests = []
        if instant and new_ids:
            # the new partitions are registered in this order by this tick: batches are ranges of them
            order = [pid for pid in context.instance.get_dynamic_partitions(prompt_partitions.name)] + new_ids
            run_requests = [
                run_request(batch, key_prefix="prompts", tags={"trigger": "sensor"})
                for batch in batches(new_ids, order, batch_size)
            ]
        if run_requests:
            # a pause or a used-up daily cap first: no API call needed to know the answer
            refused = ledger.why_not_spend() or gate([prompt_sheet, image_generator, publisher])
            if refused:
                # the cursor stays, so the next tick sees the same new rows and checks again
                context.log.warning(refused)
                return dg.SkipReason(refused)
        new_cursor = json.dumps({"token": token, "rows": len(ids)})
        if not new_ids:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new prompts"), cursor=new_cursor)
        context.log.info(f"{len(new_ids)} new prompt(s): {', '.join(new_ids[:20])}")
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[prompt_partitions.build_add_request(new_ids)],
            cursor=new_cursor,
        )

    return prompt_sheet_sensor


def _load_cursor(raw: str | None) -> dict:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
