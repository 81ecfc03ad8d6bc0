"""EDIT / DELETE from Done in Dagster: the small job that applies them (``sheet_actions_job``) and the part of
the sheet sensor's tick that notices them (``notice_sheet_actions``).

The sensor does not call Telegram: side effects belong in runs. On Google Sheets Done's status column is read
in the request that reads the queue's columns anyway (``watch_done`` before the prompt tick asks for it), so
noticing costs no request of its own; a tick reads it on its own only while words seen earlier still wait. A
local workbook's file is read every tick (it costs no quota). One run is started while none is queued or
running; the run re-reads Done itself.
"""

import hashlib
import json
import time
from typing import Any

import dagster as dg

from image_pipeline.defs.jobs import process_prompts_job
from image_pipeline.domain.errors import PipelineError
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.retractions import apply_sheet_actions
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet
from image_pipeline.services.sheets.done_cells import action_cells, watch_done

CURSOR_KEY = "actions"  # the sensor cursor's part: {"col": status column, "pending": [[row, word], ...]}
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
# A sheet-actions run fails only when a service refuses the whole run (the bot's token or rights, the sheet,
# an outage past the retries): the words still waiting are asked again this long after it, not every tick.
RETRY_AFTER_FAILURE_S = 300.0


@dg.op(description="Applies EDIT / DELETE typed in Done's status cells, once each, and writes the outcome.")
def apply_sheet_actions_op(
    context: dg.OpExecutionContext, prompt_sheet: PromptSheet, publisher: Publisher, ledger: PostLedger
) -> dg.Output[None]:
    applied = apply_sheet_actions(ledger.open(), publisher, prompt_sheet)
    for a in applied:
        context.log.info(f"{a.prompt_id}: {a.action}: {a.outcome or 'not settled; tried again next run'}")
    return dg.Output(
        None,
        metadata={
            "requests": len(applied),
            "telegram_calls": sum(a.calls for a in applied),
            "settled": sum(bool(a.outcome) for a in applied),
        },
    )


@dg.job(
    description="EDIT / DELETE from Done: edits a post's caption or retracts it, and writes the outcome.",
    tags={"pipeline": "image"},
    executor_def=dg.in_process_executor,
)
def sheet_actions_job() -> None:
    apply_sheet_actions_op()


def _last_run(instance: dg.DagsterInstance) -> dg.RunRecord | None:
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=sheet_actions_job.name), limit=1)
    return records[0] if records else None


def _after_failure(last: dg.RunRecord | None) -> float:
    """Seconds still to wait when the latest sheet-actions run failed less than RETRY_AFTER_FAILURE_S ago."""
    if last is None or last.dagster_run.status != dg.DagsterRunStatus.FAILURE:
        return 0.0
    ended = last.end_time or last.update_timestamp.timestamp()
    return max(0.0, ended + RETRY_AFTER_FAILURE_S - time.time())


def _state(cursor: dict[str, Any]) -> dict[str, Any]:
    state = cursor.get(CURSOR_KEY)
    state = state if isinstance(state, dict) else {}
    col = state.get("col")
    pending = state.get("pending")
    return {
        "col": col if isinstance(col, int) else None,
        "pending": pending if isinstance(pending, list) else [],
    }


def before_tick(prompt_sheet: PromptSheet, old_cursor: dict[str, Any]) -> None:
    """Before the prompt tick: Done's status column rides along with the queue read, if there is one."""
    watch_done(prompt_sheet, _state(old_cursor)["col"])


def notice_sheet_actions(
    context: dg.SensorEvaluationContext,
    prompt_sheet: PromptSheet,
    result: Any,
    old_cursor: dict[str, Any],
) -> Any:
    """The prompt tick's ``result`` with this tick's EDIT / DELETE run (if any) and cursor part added;
    the result itself when neither changes."""
    old = _state(old_cursor)
    state = dict(old)
    run_requests = _prompt_requests(result)
    try:
        # a read of its own only while words seen earlier wait (a run to notice their outcome)
        seen = action_cells(prompt_sheet, old["col"], must=bool(old["pending"]))
    except PipelineError as exc:
        context.log.warning(f"cannot read Done's status cells: {exc}")
        seen = None
    asked = False
    if seen is not None:
        state["col"], found = seen
        state["pending"] = [[n, w] for n, w in found]
        last = _last_run(context.instance) if found else None
        wait = _after_failure(last)
        if wait > 0:
            context.log.info(
                f"the last {sheet_actions_job.name} run failed: EDIT / DELETE are tried again in {wait:.0f} s"
            )
        elif found and not context.instance.get_runs(
            filters=dg.RunsFilter(job_name=sheet_actions_job.name, statuses=_IN_FLIGHT), limit=1
        ):
            # the same words seen again after a run that did not settle them start another: the key
            # changes with the cursor the tick started from and with the last run (a retry after a failure
            # is a new request, not one the daemon already saw), and stays the same if the tick is evaluated
            # again
            after = last.dagster_run.run_id if last is not None else ""
            key = hashlib.sha256(json.dumps([old_cursor, found, after]).encode()).hexdigest()[:16]
            run_requests.append(
                dg.RunRequest(
                    run_key=f"sheet-actions-{key}",
                    job_name=sheet_actions_job.name,
                    tags={"trigger": "sensor"},
                )
            )
            asked = True
    new_cursor = _cursor_of(result, old_cursor)
    if not asked and state == old and (CURSOR_KEY in new_cursor or state == _state({})):
        return (
            result
            if not run_requests
            else dg.SensorResult(
                run_requests=run_requests,
                dynamic_partitions_requests=result.dynamic_partitions_requests,
                cursor=result.cursor,
            )
        )
    new_cursor[CURSOR_KEY] = state
    if isinstance(result, dg.SensorResult):
        return dg.SensorResult(
            run_requests=run_requests,
            skip_reason=result.skip_reason if not run_requests else None,
            dynamic_partitions_requests=result.dynamic_partitions_requests,
            cursor=json.dumps(new_cursor),
        )
    if run_requests:
        return dg.SensorResult(run_requests=run_requests, cursor=json.dumps(new_cursor))
    return dg.SensorResult(skip_reason=result, cursor=json.dumps(new_cursor))


def _cursor_of(result: Any, old_cursor: dict[str, Any]) -> dict[str, Any]:
    if isinstance(result, dg.SensorResult) and result.cursor:
        try:
            value = json.loads(result.cursor)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
    return dict(old_cursor)


def _prompt_requests(result: Any) -> list[dg.RunRequest]:
    """The prompt tick's runs, named for their job: a sensor with two jobs must say which each is for."""
    if not isinstance(result, dg.SensorResult):
        return []
    return [
        r if r.job_name else r.with_replaced_attrs(job_name=process_prompts_job.name)
        for r in (result.run_requests or [])
    ]
