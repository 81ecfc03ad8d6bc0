"""One batch's generation, apart from Dagster: the daily caps decided in queue order, the work each generation
thread does, a service refusal any thread heard stopping the others, and the suspects settled at the end.

The caps are decided in the main thread as requests are submitted, so requests start in queue order; a unit
of the image cap is reserved then and given back when nothing was made.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from image_pipeline.domain.errors import CreditsDepleted, ServiceBlocked, ServiceWait
from image_pipeline.domain.records import ByPartition, ImageOutcome, PostOutcome
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.domain.statuses import CAPPED
from image_pipeline.lifecycle.claims import transient_outcome
from image_pipeline.lifecycle.generation import generate_to_disk
from image_pipeline.lifecycle.ledger import BACKEND_PAUSE, Ledger, PostLedger
from image_pipeline.lifecycle.suspects import Suspects
from image_pipeline.services.images.chain import BackendChain
from image_pipeline.services.images.interface import ImageGenerator
from image_pipeline.services.storage import PartitionFileStore


class BatchGeneration:
    """The generation half of a batch: caps, the threads' work, and the first service refusal."""

    def __init__(
        self,
        image_generator: ImageGenerator,
        store: PartitionFileStore,
        book: Ledger,
        ledger: PostLedger,
    ) -> None:
        self.image_generator = image_generator
        self.store = store
        self.book = book
        self.ledger = ledger
        self.refused: list[ServiceBlocked] = []  # a service refusing us, seen by any generation thread
        self.awaiting_post: set[str] = set()  # generation started, post not done yet (the daily post cap)
        self._notices: list[str] = []  # what the operator hears about the backends of a chain, once each
        self._told: set[str] = set()
        self._lock = threading.Lock()
        if isinstance(image_generator, BackendChain):
            for name, paused in book.backend_pauses().items():
                # paused by an earlier run: leave it out, the next backend takes its prompts
                error = (
                    ServiceWait(paused.message(), service=name, wait_s=paused.until - time.time())
                    if paused.timed
                    else CreditsDepleted(paused.message(), service=name)
                )
                image_generator.avoid(name, error)

    def capped(self, key: str, count: int) -> tuple[ImageOutcome, str] | None:
        """The daily caps, decided in queue order before the requests start (so they start in queue
        order too). Units of the image cap are reserved here and given back if nothing is made."""
        book, ledger = self.book, self.ledger
        if ledger.daily_post_cap > 0:
            # images of this batch not posted yet count: generation runs ahead of posting
            if book.used_today("posts") + len(self.awaiting_post) >= ledger.daily_post_cap:
                reason = (
                    f"the daily cap of {ledger.daily_post_cap} posts is reached; not generated, stays queued"
                )
                return ImageOutcome(CAPPED, {"reason": reason}), reason
            self.awaiting_post.add(key)
        if ledger.daily_image_cap > 0:
            taken = 0
            while taken < count and book.reserve("images", ledger.daily_image_cap):
                taken += 1
            if taken < count:
                for _ in range(taken):
                    book.unreserve("images")
                self.awaiting_post.discard(key)
                reason = f"the daily cap of {ledger.daily_image_cap} images is reached; stays queued"
                return ImageOutcome(CAPPED, {"reason": reason}), reason
        return None

    def generate(self, key: str, fp: str, req: GenerationRequest, count: int) -> tuple[ImageOutcome, str]:
        """A generation thread's work: the prompt's image(s) on disk, or why not."""
        self.stop_if_refused()
        try:
            outcome, note = generate_to_disk(
                self.image_generator, self.store, self.book, self.ledger, key, fp, req, count
            )
        except ServiceBlocked as exc:
            self.refused.append(exc)
            self.give_back(count)
            self._backends_heard()
            raise
        except BaseException:
            self.give_back(count)
            raise
        self._backends_heard()
        if not outcome.ok:
            self.give_back(count)  # only images that exist count against the cap
        return outcome, note

    def _backends_heard(self) -> None:
        """A backend of the chain that refused us while the next one went on: credits or a quota pause
        that backend in the ledger (one notice, from the run that paused it); any other refusal is told
        once per run, as a single backend's refusal is."""
        if not isinstance(self.image_generator, BackendChain):
            return
        for refusal in self.image_generator.take_refusals():
            error, name = refusal.error, refusal.backend
            if refusal.pauses:
                until = error.until if isinstance(error, ServiceWait) else 0.0
                # the run stopping (no backend left) tells once for all, with the pipeline's own pause
                if self.book.pause(BACKEND_PAUSE + name, str(error), until=until) and not self.refused:
                    self._tell(
                        name,
                        f"paused image backend {name}: {error}. The next backends of "
                        "IMAGE_BACKENDS make the images meanwhile; `image-pipeline resume` lifts it.",
                    )
            elif not self.refused:
                self._tell(
                    name,
                    f"image backend {name} refused: {error}. The next backends of "
                    "IMAGE_BACKENDS make the images this run.",
                )

    def _tell(self, name: str, message: str) -> None:
        with self._lock:
            if name not in self._told:
                self._told.add(name)
                self._notices.append(message)

    def take_notices(self) -> list[str]:
        """What the operator should hear about the backends so far (the asset sends it to the alert chat)."""
        with self._lock:
            taken, self._notices = self._notices, []
        return taken

    def give_back(self, count: int) -> None:
        if self.ledger.daily_image_cap > 0:
            for _ in range(count):
                self.book.unreserve("images")

    def posted(self, key: str) -> None:
        self.awaiting_post.discard(key)

    def stop_if_refused(self) -> None:
        """Credits, token or permission: nothing more leaves, whichever prompt heard it first."""
        if self.refused:
            raise self.refused[0]


def witness(
    suspects: Suspects, key: str, service: str, accepted: bool, unknown_answer: str | None, reason: str
) -> None:
    """What this prompt's answer tells about the service (``suspects.py``)."""
    if accepted:
        suspects.accepted(service)
    elif unknown_answer:
        suspects.refused(key, service, unknown_answer, reason)


def settle_suspects(
    suspects: Suspects,
    fingerprints: dict[str, str],
    outcomes: ByPartition,
    posts: ByPartition,
    book: Ledger,
    ledger: PostLedger,
) -> list[str]:
    """The batch is through: each suspect fails (its service took another prompt) or stays queued with an
    attempt counted (nothing to compare it with). Returns the suspects, in the order they were met."""
    verdicts = suspects.verdicts()
    for key, fails in verdicts.items():
        if fails:
            continue
        why: Any = outcomes[key].reason or posts[key].reason
        status, reason = transient_outcome(
            book,
            ledger,
            key,
            fingerprints[key],
            "an answer no rule explains, and no other prompt to compare",
            why,
        )
        posts[key] = PostOutcome(status, reason)
        if not outcomes[key].ok:
            outcomes[key] = ImageOutcome(status, {"reason": reason})
    return list(verdicts)
