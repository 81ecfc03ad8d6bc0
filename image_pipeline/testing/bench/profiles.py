"""The scenarios' names and profiles: what the emulators do in each, and how the product paces itself.

``Profile`` holds a scenario's prompts, image side, emulated latencies, caps and the product's knobs, and
its ``bound_s`` (the emulated waits on the critical path with perfect overlap); ``default_profiles`` gives
each scenario of the package docstring its own. ``JSON_KEYS`` are the figures every scenario reports.
A profile with ``a1111_s`` set makes its images on the A1111 emulator (one job at a time) instead of
Hugging Face.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SCENARIOS = ("B100-gen", "B100-a1111", "B100-post", "B1000-mem", "sensor", "B100-1w", "B100-3w")
# the scale-out pair: the same deployment (PostgreSQL ledger, S3 store) with one worker and with three
WORKER_SCENARIOS = ("B100-1w", "B100-3w")
BASELINE = "baseline-B100-gen"
ALL_NAMES = (*SCENARIOS, BASELINE)
JSON_KEYS = (
    "wall_s",
    "bound_s",
    "efficiency",
    "sheets_requests_per_prompt",
    "telegram_429",
    "peak_rss_mb",
    "overhead_ms_per_prompt",
)


@dataclass(frozen=True)
class Profile:
    """What the emulators do, and how the product is told to pace itself."""

    prompts: int
    side: int | None  # width/height columns in the queue; None: the product's default size
    sheets_s: float = 0.05  # per Sheets API request
    hf_s: float = 1.0  # per image, inside the concurrency cap
    hf_max_concurrent: int | None = 4
    telegram_s: float = 0.1  # per Bot API call
    telegram_per_chat_per_minute: int | None = None  # the emulator's flood control; None: lifted
    posts_per_minute: int = 0  # TELEGRAM_POSTS_PER_MINUTE for the product
    hf_concurrency: int = 4  # HF_CONCURRENCY for the product
    hf_default_side: int = 512  # what the emulated endpoint makes when a request names no size
    workers: int = 1  # ``image-pipeline run`` processes sharing a PostgreSQL ledger and an S3 store
    # per job on the A1111 emulator, which runs one job at a time (IMAGE_BACKENDS=a1111:...); None: HF
    a1111_s: float | None = None
    a1111_concurrency: int = 1  # A1111_CONCURRENCY for the product: requests in flight to that server

    def without_latency(self) -> Profile:
        a1111_s = None if self.a1111_s is None else 0.0
        return replace(self, sheets_s=0.0, hf_s=0.0, telegram_s=0.0, a1111_s=a1111_s)

    def bound_s(self) -> float | None:
        """The emulated waits on the critical path with perfect overlap; None when nothing is emulated."""
        slots = max(1, min(self.hf_concurrency, self.hf_max_concurrent or 10**6)) * max(1, self.workers)
        parts = [self.prompts * self.hf_s / slots]
        if self.a1111_s is not None:
            # the server's FIFO lock: one job at a time whatever the requests in flight
            parts = [self.prompts * self.a1111_s]
        if self.telegram_per_chat_per_minute:
            parts.append(self.prompts * 60.0 / self.telegram_per_chat_per_minute)
        bound = max(parts)
        return round(bound, 3) if bound > 0 else None


def default_profiles(side: int) -> dict[str, Profile]:
    return {
        "B100-gen": Profile(prompts=100, side=side),
        # the same queue made by a self-hosted AUTOMATIC1111 taking 1 s a job (a user's own GPU)
        "B100-a1111": Profile(prompts=100, side=side, a1111_s=1.0, a1111_concurrency=1),
        "B100-post": Profile(prompts=100, side=side, telegram_per_chat_per_minute=20, posts_per_minute=20),
        "B1000-mem": Profile(prompts=1000, side=None, sheets_s=0.0, hf_s=0.0, telegram_s=0.0),
        "sensor": Profile(prompts=1, side=side),
        "B100-1w": Profile(prompts=100, side=side, workers=1),
        "B100-3w": Profile(prompts=100, side=side, workers=3),
        # the ancestor never asked for a size: it gets the endpoint's default, the B100 size
        BASELINE: Profile(prompts=100, side=None, hf_default_side=side),
    }
