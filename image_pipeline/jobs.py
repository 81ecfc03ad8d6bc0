"""The job that the schedule, the sensor and ``make run`` share: all four assets for given prompts."""

import dagster as dg

from .assets import GROUP

process_prompts_job = dg.define_asset_job(
    "process_prompts_job",
    selection=dg.AssetSelection.groups(GROUP),
    tags={"pipeline": "image"},
    description="Generate, post and log the selected prompt partitions.",
    # The steps wait on APIs and overlap their own work inside; a process per step would only add a
    # Python start and a code load to every run the daemon launches (seconds, for an instant post).
    executor_def=dg.in_process_executor,
)
