"""How pending prompts are cut into Dagster runs: partition ranges of consecutive prompt partitions.

``make run``, the sensor (instant mode) and the schedule all ask for runs this way, so a burst of prompts
pays one process start, one queue read and one Done append per batch instead of per prompt.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import dagster as dg

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def batches(
    pending: Sequence[str], order: Sequence[str], size: int, avoid: Collection[str] = ()
) -> list[list[str]]:
    """Consecutive runs of partition keys (in registration order) holding up to ``size`` pending prompts.

    A range also covers the prompts registered in between (finished ones are cheap no-ops); a batch is
    cut before it would span more than ``size`` of those, and before it would cover a key of ``avoid``
    (pending prompts this request must leave for later).
    """
    size = max(1, size)
    index = {key: i for i, key in enumerate(order)}
    blocked = sorted(index[k] for k in avoid if k in index)
    wanted = sorted(index[p] for p in pending if p in index)
    out: list[list[str]] = []
    current: list[int] = []
    for i in wanted:
        if current and (
            len(current) >= size or i - current[0] + 1 > 2 * size or any(current[-1] < b < i for b in blocked)
        ):
            out.append([order[j] for j in range(current[0], current[-1] + 1)])
            current = []
        current.append(i)
    if current:
        out.append([order[j] for j in range(current[0], current[-1] + 1)])
    return out


def run_request(batch: Sequence[str], *, key_prefix: str, tags: dict[str, str]) -> dg.RunRequest:
    """One run for a batch: a single partition, or a partition range."""
    if len(batch) == 1:
        return dg.RunRequest(partition_key=batch[0], run_key=f"{key_prefix}-{batch[0]}", tags=tags)
    return dg.RunRequest(
        run_key=f"{key_prefix}-{batch[0]}-{batch[-1]}",
        tags={**tags, RANGE_START: batch[0], RANGE_END: batch[-1]},
    )
