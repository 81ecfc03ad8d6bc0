"""The job that the schedule, the sensor and ``make run`` share: all four assets for given prompts."""

import dagster as dg

from .assets import GROUP

process_prompts_job = dg.define_asset_job(
    "process_prompts_job",
    selection=dg.AssetSelection.groups(GROUP),
    tags={"pipeline": "image"},
    description="Generate, post and log the selected prompt partitions.",
)
