"""The asset graph: prompt record -> generated image -> Telegram post -> Done entry, one module per asset
(or multi-asset), each the step it names:

- ``prompt_record``: the queue row of a partition, claimed for this run (or why not);
- ``generate_and_post``: its image, checked and posted exactly once (``generated_image`` + ``telegram_post``);
- ``done_entry``: the Done row appended and the queue row removed.

Each one is Dagster in, the lifecycle's steps (``image_pipeline.lifecycle``), Dagster out. ``common.py`` holds
what they share: how a run stops for a service, the partitions of this run, the per-partition metadata.

Every asset is partitioned by prompt id and handles all partitions of its run at once, so a run may carry one
prompt (from the UI or the schedule) or a batch. A prompt that fails gets a FAILED outcome that flows
downstream to its Done row; a service that refuses us (token, permission, credits) stops the run instead,
leaving the queue untouched.
"""

from __future__ import annotations

from image_pipeline.defs.assets.common import GROUP, IO, TELEGRAM_POST
from image_pipeline.defs.assets.done_entry import done_entry
from image_pipeline.defs.assets.generate_and_post import generate_and_post
from image_pipeline.defs.assets.prompt_record import prompt_record

ASSETS = [prompt_record, generate_and_post, done_entry]

__all__ = ["ASSETS", "GROUP", "IO", "TELEGRAM_POST", "done_entry", "generate_and_post", "prompt_record"]
