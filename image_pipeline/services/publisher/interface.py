"""What every publisher is: a Dagster resource that posts an image or an album and returns a receipt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from image_pipeline.domain.records import PostReceipt
from image_pipeline.services.http import RetryPolicy

if TYPE_CHECKING:
    from image_pipeline.domain.content_checks import BannedWords
    from image_pipeline.services.publisher.pacing import SlotBook


class Publisher(dg.ConfigurableResource):
    """Publishes an image with a caption and sends operator notices. Subclasses pick the backend."""

    retry_attempts: int = Field(default=4, description="Tries per request, the first included.")
    retry_base_delay_s: float = Field(default=2.0, description="First backoff delay; doubles per retry.")
    banned_words: str = Field(
        default="",
        description="Comma-separated words or phrases no posted prompt may contain (a pre-post check).",
    )
    banned_words_file: str = Field(
        default="", description="A file of banned words or phrases, one per line ('#' starts a comment)."
    )

    _banned: Any = PrivateAttr(default=None)

    def content_policy(self) -> BannedWords:
        """The banned words, loaded once per resource instance (a missing file is an error at once)."""
        from image_pipeline.domain.content_checks import BannedWords

        if self._banned is None:
            self._banned = BannedWords.load(self.banned_words_file or None, self.banned_words or None)
        return self._banned

    def describe(self) -> str:
        raise NotImplementedError

    def publish(self, *, prompt_id: str, png: bytes, caption: str) -> PostReceipt:
        raise NotImplementedError

    def publish_album(self, *, prompt_id: str, pngs: list[bytes], caption: str) -> PostReceipt:
        """One post of 1-10 images, the caption under the first; one image is exactly ``publish``.

        Raises ValueError for 0 or more than 10 images, before anything is sent."""
        raise NotImplementedError

    def preview(self, *, prompt_id: str, pngs: list[bytes], caption: str) -> PostReceipt | None:
        """Show the image(s) to the operator only, never in the channel; None when there is nowhere to."""
        raise NotImplementedError

    def notify(self, text: str) -> bool:
        """Send an operator notice; False when no alert destination is configured."""
        raise NotImplementedError

    def pace_with(self, slots: SlotBook | None) -> None:
        """Keep the pace of posts per chat in ``slots`` (a ledger the workers share); None: as configured."""

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=max(1, self.retry_attempts), base_delay_s=self.retry_base_delay_s)
