"""The sheet-change sensor: notices new rows, gives them ids, registers their partitions.

A tick first asks for the queue's change token (a file stat locally, Drive ``modifiedTime`` for Google
Sheets); when it equals the cursor's, that one request is all most ticks cost. Drive's token trails
Sheets edits by about 3 minutes, sometimes ~10 (google-api-go-client#906, #444), so on Google Sheets a
tick also reads the queue's prompt and status columns (one Sheets read) every ``sheet_check_s`` and
compares their digest: a new row starts work within that cadence plus one tick, not when Drive notices.
"""

import hashlib
import json
import time

import dagster as dg

from image_pipeline.defs.batching import RANGE_END, RANGE_START, batches, run_request
from image_pipeline.defs.jobs import process_prompts_job
from image_pipeline.defs.partitions import prompt_partitions
from image_pipeline.defs.sheet_actions import before_tick, notice_sheet_actions, sheet_actions_job
from image_pipeline.domain.errors import PipelineError
from image_pipeline.domain.statuses import AWAITING_APPROVAL, CHECK_CHANNEL, HOLD, QUEUED
from image_pipeline.lifecycle.gate import gate
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.queue_lock import ids_assigned
from image_pipeline.services.images.interface import ImageGenerator
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet

DEFAULT_SHEET_CHECK_S = 60.0


def build_prompt_sheet_sensor(
    *,
    instant: bool,
    interval_s: int = 60,
    batch_size: int = 200,
    sheet_check_s: float = DEFAULT_SHEET_CHECK_S,
) -> dg.SensorDefinition:
    """``sheet_check_s``: seconds between the direct Sheets reads (0: Drive's token alone)."""
    # Ticks come every interval_s or a little later: a check due within half a tick of now is made
    # now, so a cadence equal to the interval reads at every tick instead of every other one.
    check_after_s = sheet_check_s - interval_s / 2

    @dg.sensor(
        name="prompt_sheet_sensor",
        jobs=[process_prompts_job, sheet_actions_job],
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
        # EDIT / DELETE typed in Done are noticed in the same tick and read (defs/sheet_actions.py)
        before_tick(prompt_sheet, load_cursor(context.cursor))
        result = prompt_tick(context, prompt_sheet, image_generator, publisher, ledger)
        return notice_sheet_actions(context, prompt_sheet, result, load_cursor(context.cursor))

    def prompt_tick(
        context: dg.SensorEvaluationContext,
        prompt_sheet: PromptSheet,
        image_generator: ImageGenerator,
        publisher: Publisher,
        ledger: PostLedger,
    ):
        cursor = load_cursor(context.cursor)
        columns = _columns(cursor)
        digest = cursor.get("digest")
        checked = cursor.get("checked")
        try:
            token = prompt_sheet.change_token()
            now = time.time()
            last = float(checked) if isinstance(checked, int | float) else 0.0
            due = sheet_check_s > 0 and not 0 <= now - last < check_after_s
            if token == cursor.get("token"):
                if not due:
                    return dg.SkipReason("the queue has not changed since the last tick")
                seen = prompt_sheet.column_digest(columns)
                if seen is None:  # the token is exact here (a file stat): nothing else to compare
                    return dg.SkipReason("the queue has not changed since the last tick")
                if seen == digest:
                    return dg.SensorResult(
                        skip_reason=dg.SkipReason("the queue has not changed since the last tick"),
                        cursor=json.dumps({**cursor, "checked": now}),
                    )
                digest = seen
            elif sheet_check_s > 0:
                # the baseline the next checks compare with, taken before the read like the token
                digest = prompt_sheet.column_digest(columns)
            # The token is taken before the read: an edit made after it shows up as a change next tick.
            snapshot = ids_assigned(prompt_sheet, ledger.open())  # one worker at a time
        except PipelineError as exc:
            # A sensor that raises shows as an error tick; the daemon keeps going either way, but a
            # clear skip reason is what a person needs to read in the tick log.
            return dg.SkipReason(f"cannot read the queue: {exc}")
        registered = list(context.instance.get_dynamic_partitions(prompt_partitions.name))
        known = set(registered)
        ids = [row.prompt_id for row in snapshot.rows]
        new_ids = [pid for pid in ids if pid not in known]
        dropped = _deleted_before_they_ran(context, ledger, registered, set(ids))
        word = {row.prompt_id: row.command for row in snapshot.rows}
        waiting = [pid for pid in ids if word.get(pid) in (HOLD, AWAITING_APPROVAL, CHECK_CHANNEL)]
        run_requests = []
        if instant:
            # the new partitions are registered in this order by this tick: batches are ranges of them
            order = registered + new_ids
            fresh = [pid for pid in new_ids if pid not in waiting]
            run_requests = [
                run_request(batch, key_prefix="prompts", tags={"trigger": "sensor"})
                for batch in batches(fresh, order, batch_size)
            ]
            # rows a person released since the last tick (HOLD cleared, APPROVE typed under a preview)
            held_before = set(cursor.get("held", []))
            # Drive's token may not have moved since an earlier release of the same rows: the cursor
            # this tick started from tells the two apart, and is the same if this tick is evaluated again
            release_key = f"released-{token}"
            if digest is not None:
                release_key += "-" + hashlib.sha256((context.cursor or "").encode()).hexdigest()[:12]
            released = [pid for pid in ids if pid in held_before and pid in known and pid not in waiting]
            run_requests += [
                run_request(batch, key_prefix=release_key, tags={"trigger": "sensor"})
                for batch in batches(released, order, batch_size)
            ]
        if run_requests:
            # a pause or a used-up daily cap first: no API call needed to know the answer
            # the pass is recorded in the ledger, so the runs this tick starts trust it
            refused = ledger.why_not_spend() or gate(
                [prompt_sheet, image_generator, publisher], store=ledger.open()
            )
            if refused:
                # the cursor stays, so the next tick sees the same new rows and checks again
                context.log.warning(refused)
                return dg.SkipReason(refused)
        state: dict[str, object] = {"token": token, "rows": len(ids), "held": waiting}
        if digest is not None:
            status_column = snapshot.status_column
            state.update(
                digest=digest,
                checked=now,
                cols=[0] if status_column is None else [0, status_column],
            )
        new_cursor = json.dumps(state)
        fresh_rows = {
            row.prompt_id: QUEUED for row in snapshot.rows if row.prompt_id in new_ids and not row.status
        }
        if fresh_rows:
            prompt_sheet.write_statuses(fresh_rows, snapshot)
        partition_requests = []
        if dropped:
            partition_requests.append(prompt_partitions.build_delete_request(dropped))
        if not new_ids and not run_requests:
            skip = "no new prompts" + (f"; {len(dropped)} deleted row(s) dropped" if dropped else "")
            return dg.SensorResult(
                skip_reason=dg.SkipReason(skip),
                dynamic_partitions_requests=partition_requests,
                cursor=new_cursor,
            )
        if new_ids:
            context.log.info(f"{len(new_ids)} new prompt(s): {', '.join(new_ids[:20])}")
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[
                *partition_requests,
                *([prompt_partitions.build_add_request(new_ids)] if new_ids else []),
            ],
            cursor=new_cursor,
        )

    return prompt_sheet_sensor


def _deleted_before_they_ran(
    context: dg.SensorEvaluationContext, ledger: PostLedger, registered: list[str], in_sheet: set[str]
) -> list[str]:
    """Partitions whose row a person deleted before any run worked on it: dropped, their queued runs
    cancelled. A prompt that ran (the ledger knows it) keeps its partition and its history, whether its
    row left the queue because it was done or because a person deleted it afterwards."""
    gone = [pid for pid in registered if pid not in in_sheet]
    if not gone:
        return []
    seen = ledger.open().ids_seen(gone)
    dropped = [pid for pid in gone if pid not in seen]
    if not dropped:
        return []
    doomed = set(dropped)
    position = {pid: i for i, pid in enumerate(registered)}
    waiting = context.instance.get_runs(
        filters=dg.RunsFilter(
            job_name=process_prompts_job.name,
            statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED],
        )
    )
    for run in waiting:
        tags = run.tags
        if tags.get("dagster/partition"):
            members = {tags["dagster/partition"]}
        elif tags.get(RANGE_START) in position and tags.get(RANGE_END) in position:
            first, last = position[tags[RANGE_START]], position[tags[RANGE_END]]
            members = set(registered[first : last + 1])
        else:
            continue
        # a range that still holds a live prompt runs: its deleted ones just come out GONE
        if members and members <= doomed:
            context.instance.report_run_canceled(
                run, message=f"the queue row of {', '.join(sorted(members))} was deleted before it ran"
            )
            context.log.info(f"cancelled queued run {run.run_id}: its prompt row was deleted")
    context.log.info(f"{len(dropped)} row(s) deleted before they ran: {', '.join(dropped[:20])}")
    return dropped


def _columns(cursor: dict) -> list[int]:
    """The columns the digest covers: the prompt (new, copied, deleted rows) and the status word
    (releases); not the id column or any other we write, so our own writes mostly leave it alone."""
    cols = cursor.get("cols")
    if isinstance(cols, list) and cols and all(isinstance(c, int) and c >= 0 for c in cols):
        return cols
    return [0]


def load_cursor(raw: str | None) -> dict:
    """A sensor's JSON cursor as a dict; an empty, unreadable or non-object cursor is a fresh one."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
