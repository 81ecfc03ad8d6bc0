"""Entry point for Dagster: the asset graph, its job, schedule, sensor and resources."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from image_pipeline.defs.assets import ASSETS
from image_pipeline.defs.digest import build_digest_schedule
from image_pipeline.defs.jobs import preflight_job, process_prompts_job, resume_spending_job
from image_pipeline.defs.refill import build_refill_sensor, refill_queue_job
from image_pipeline.defs.schedules import build_daily_schedule
from image_pipeline.defs.sensors import build_prompt_sheet_sensor
from image_pipeline.defs.sheet_actions import sheet_actions_job
from image_pipeline.defs.slots import build_slot_sensor
from image_pipeline.defs.telegram_updates import build_telegram_updates_sensor
from image_pipeline.domain.redact import install_log_redaction
from image_pipeline.domain.slots import parse_slots
from image_pipeline.settings import refill_from, resources_from, settings_from


def build_definitions(env: Mapping[str, str] | None = None) -> dg.Definitions:
    env = os.environ if env is None else env
    settings = settings_from(env)
    low_queue, refill = refill_from(env)
    # With slots the slot sensor decides when rows run: no daily schedule, no instant runs
    slots: list[dg.SensorDefinition] = []
    if settings.slots:
        slots.append(
            build_slot_sensor(
                slots=parse_slots(settings.slots),
                timezone=settings.schedule_timezone,
                lead_s=settings.slot_lead_s,
                missed=settings.missed_slot,
                batch_size=settings.batch_size,
                sheet_check_s=settings.sheet_check_s,
            )
        )
    daily = build_daily_schedule(
        cron=settings.schedule_cron,
        timezone=settings.schedule_timezone,
        per_tick=settings.prompts_per_tick,
        batch_size=settings.batch_size,
    )
    digest = build_digest_schedule(
        at=settings.digest_at, timezone=settings.schedule_timezone, top=settings.digest_top
    )
    return dg.Definitions(
        assets=ASSETS,
        jobs=[process_prompts_job, preflight_job, resume_spending_job, sheet_actions_job]
        + ([refill_queue_job] if refill else []),
        schedules=[*([] if slots else [daily]), *([digest] if settings.digest == "weekly" else [])],
        sensors=[
            build_prompt_sheet_sensor(
                instant=settings.instant and not slots,
                interval_s=settings.sensor_interval_s,
                batch_size=settings.batch_size,
                sheet_check_s=settings.sheet_check_s,
            ),
            *slots,
            # buttons on preview cards: the one reader of the bot's updates
            *([build_telegram_updates_sensor()] if settings.buttons else []),
            *([build_refill_sensor(low_queue=low_queue, plan=refill)] if low_queue or refill else []),
        ],
        resources=resources_from(env),
    )


install_log_redaction()
defs = build_definitions()
