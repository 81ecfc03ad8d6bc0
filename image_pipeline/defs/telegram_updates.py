"""The one reader of the bot's updates: ``telegram_updates_sensor`` polls getUpdates for button presses on
preview cards (``callback_query``) and channel reaction counts (``message_reaction_count``).

Telegram hands each update to one getUpdates caller and forgets it once a later call's ``offset`` passes
it, so one sensor reads them all. The cursor is the last update id handled: the next tick asks from the
one after it, which also confirms the earlier ones to Telegram. A press is handled at most once across
ticks and restarts (the cursor), and decided at most once even when a tick dies half-way and reads it
again (the ledger's card record, ``lifecycle/presses.py``).

A press is answered within the tick: Telegram gives it seconds, not a run's start-up. The row's status
word is written in the tick too, as the prompt sheet sensor writes QUEUED: a small write. What starts
work (Approve posts, Regenerate generates) is a run request of the prompt's partition.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from image_pipeline.defs.jobs import process_prompts_job
from image_pipeline.domain.errors import PipelineError
from image_pipeline.lifecycle.ledger import Ledger, PostLedger
from image_pipeline.lifecycle.presses import handle_presses
from image_pipeline.lifecycle.reactions import record_reactions
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet

ALLOWED_UPDATES = ("callback_query", "message_reaction_count")


# A press must be answered while Telegram still takes the answer (about 15 s; later: "query is too old"),
# so the reader ticks often; one getUpdates call a tick.
UPDATES_INTERVAL_S = 5


def build_telegram_updates_sensor(interval_s: int = UPDATES_INTERVAL_S) -> dg.SensorDefinition:
    @dg.sensor(
        name="telegram_updates_sensor",
        job=process_prompts_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Reads the bot's updates: Approve / Regenerate / Hold / Skip pressed on preview cards "
        "(answered, the card and the row updated, a run started for Approve and Regenerate) and reaction counts.",
    )
    def telegram_updates_sensor(
        context: dg.SensorEvaluationContext,
        prompt_sheet: PromptSheet,
        publisher: Publisher,
        ledger: PostLedger,
    ):
        last = _cursor(context.cursor)
        try:
            updates = publisher.get_updates(offset=last + 1, allowed_updates=ALLOWED_UPDATES)
        except PipelineError as exc:
            why = f"cannot read the bot's updates: {exc}"
            if exc.status == 409:  # a webhook set on the bot takes every update instead
                why += "; the bot has a webhook: delete it (deleteWebhook), `doctor` shows it"
            context.log.warning(why)
            return dg.SkipReason(why)
        book = ledger.open()
        if not updates:
            # counts stored earlier but not yet in their Done rows (a failed sheet write) are tried again
            events = _record_reactions(context, book, prompt_sheet, [])
            note = "no button presses or reactions since the last tick"
            return (
                dg.SensorResult(skip_reason=dg.SkipReason(note), asset_events=events)
                if events
                else dg.SkipReason(note)
            )
        try:
            outcomes = handle_presses(book, prompt_sheet, publisher, updates)
        except PipelineError as exc:
            # nothing of this batch counts as handled: the next tick reads it again (each decision once)
            context.log.warning(f"could not act on the presses: {exc}")
            return dg.SkipReason(f"could not act on the presses: {exc}")
        for outcome in outcomes:
            context.log.info(f"press {outcome.update_id} on {outcome.prompt_id or '?'}: {outcome.note}")
        reactions = [u for u in updates if "message_reaction_count" in u]
        events = _record_reactions(context, book, prompt_sheet, reactions)
        runs = [
            dg.RunRequest(
                partition_key=o.prompt_id,
                run_key=f"press-{o.update_id}",
                tags={"trigger": "button", "press": str(o.update_id)},
            )
            for o in outcomes
            if o.start_run
        ]
        cursor = str(max(int(u.get("update_id", 0)) for u in updates))
        if not runs:
            note = f"{len(outcomes)} press(es), {len(reactions)} reaction update(s): no run needed"
            return dg.SensorResult(skip_reason=dg.SkipReason(note), cursor=cursor, asset_events=events)
        return dg.SensorResult(run_requests=runs, cursor=cursor, asset_events=events)

    return telegram_updates_sensor


def _record_reactions(
    context: dg.SensorEvaluationContext,
    book: Ledger,
    prompt_sheet: PromptSheet,
    updates: list[dict[str, Any]],
) -> list[dg.AssetObservation]:
    """Reaction counts into the ledger, then their Done rows; the observations for the posts whose counts
    changed. The cursor moves past the updates either way: a count is a snapshot, the next one replaces it,
    and counts stored but not yet written are written at a later tick."""
    events: list[dg.AssetObservation] = []
    try:
        for line in record_reactions(book, prompt_sheet, updates, events=events):
            context.log.info(line)
    except PipelineError as exc:
        context.log.warning(f"could not record the reaction counts: {exc}")
    return events


def _cursor(raw: str | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        return 0
