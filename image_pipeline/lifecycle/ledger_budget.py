"""The budget guard as doctor and the preflight show it, and the question the schedule and sensor ask before
they start work: a pause of the pipeline (fails), of one image backend or of the refill (warns), and the
daily caps. Mixed into ``PostLedger`` (``ledger.py``), whose fields and ledger it reads."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from image_pipeline.domain.checks import Check, fail, ok, warn
from image_pipeline.services.text.refusals import TEXT_SERVICE

if TYPE_CHECKING:
    from image_pipeline.lifecycle.ledger import Ledger


def utc_day(now: float | None = None) -> str:
    """The day daily caps are counted in: the UTC date, the same on every machine."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


class BudgetRows:
    """``PostLedger``'s budget rows; no fields of its own (the resource's caps and ``open`` are used)."""

    if TYPE_CHECKING:
        daily_image_cap: int
        daily_post_cap: int

        def open(self) -> Ledger: ...

    def preflight(self) -> list[Check]:
        """The budget guard's state, for doctor and the preflight job: paused fails, a cap reached warns."""
        book = self.open()
        pause = book.pause_state()
        if pause is not None and pause.timed:
            return [
                fail("Budget", "spending", pause.message(), "nothing to do: runs start again by themselves")
            ]
        if pause is not None:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(pause.since))
            return [
                fail(
                    "Budget",
                    "spending",
                    f"paused since {when}: {pause.reason}",
                    "add credits, then `image-pipeline resume` (or launch resume_spending_job)",
                )
            ]
        checks = [ok("Budget", "spending", "not paused")]
        for name, paused in sorted(book.backend_pauses().items()):
            checks.append(
                warn(
                    "Budget",
                    f"backend {name}",
                    paused.message(),
                    "the other backends of IMAGE_BACKENDS make the images meanwhile",
                )
            )
        refill = book.pause_of(TEXT_SERVICE)
        if refill is not None:
            fix = "fix the text model's account, then `image-pipeline resume`; the images are not affected"
            checks.append(warn("Budget", "refill", refill.message(), fix))
        for kind, cap in (("images", self.daily_image_cap), ("posts", self.daily_post_cap)):
            if cap > 0:
                used = book.used_today(kind)
                detail = f"{used} of {cap} {kind} today ({utc_day()} UTC)"
                checks.append(
                    warn("Budget", f"daily {kind} cap", detail, "the rest waits for the next UTC day")
                    if used >= cap
                    else ok("Budget", f"daily {kind} cap", detail)
                )
        return checks

    def why_not_spend(self) -> str | None:
        """Why the schedule and sensor must not start work now (a pause, a daily cap), or None."""
        book = self.open()
        pause = book.pause_state()
        if pause is not None:
            return pause.message()
        for kind, cap in (("images", self.daily_image_cap), ("posts", self.daily_post_cap)):
            if cap > 0 and book.used_today(kind) >= cap:
                return (
                    f"the daily cap of {cap} {kind} is reached ({utc_day()} UTC); "
                    "queued prompts go out after midnight UTC"
                )
        return None
