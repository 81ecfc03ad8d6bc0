"""What every publisher is: a Dagster resource that posts an image or an album and returns a receipt."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import Field, PrivateAttr

from image_pipeline.domain.caption_template import render_caption, template_problem
from image_pipeline.domain.checks import Check, fail, ok
from image_pipeline.domain.errors import PipelineError
from image_pipeline.domain.records import PostReceipt
from image_pipeline.domain.rows import ORIGINAL_MODES, PromptRow
from image_pipeline.services.http import RetryPolicy

if TYPE_CHECKING:
    from image_pipeline.domain.content_checks import BannedWords
    from image_pipeline.domain.watermark import Watermark
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
    # the mark on posted images (domain/watermark.py); set a text or a logo to turn it on
    watermark_text: str = Field(default="", description="A label on every posted image, e.g. 'AI-generated'.")
    watermark_logo: str = Field(default="", description="A PNG (with alpha) on every posted image instead.")
    watermark_corner: str = Field(default="bottom-right", description="bottom-right, bottom-left, top-*.")
    watermark_margin: float = Field(default=0.02, description="Gap to the edges, fraction of the short side.")
    watermark_opacity: float = Field(default=0.8, description="0 (invisible) to 1 (opaque).")
    watermark_size: float = Field(default=0.2, description="The mark's width, fraction of the image width.")

    caption_template: str = Field(
        default="",
        description="CAPTION_TEMPLATE: the caption from {prompt} {caption} {hashtags} {model} {seed} "
        "{signature} {date} {backend}; unset: the row's caption or prompt (plus signature and hashtags).",
    )
    caption_signature: str = Field(default="", description="CAPTION_SIGNATURE: the {signature} field.")
    caption_timezone: str = Field(default="UTC", description="The time zone of the {date} field.")
    send_original: str = Field(
        default="off",
        description="The original PNG as a document: after the photo, instead of it, or off (a row's "
        "'original' column wins).",
    )
    silent: bool = Field(
        default=False, description="Posts without a notification (a row's 'silent' column wins)."
    )

    _banned: Any = PrivateAttr(default=None)
    _mark: Any = PrivateAttr(default=None)

    def content_policy(self) -> BannedWords:
        """The banned words, loaded once per resource instance (a missing file is an error at once)."""
        from image_pipeline.domain.content_checks import BannedWords

        if self._banned is None:
            self._banned = BannedWords.load(self.banned_words_file or None, self.banned_words or None)
        return self._banned

    def watermark(self) -> Watermark | None:
        """The mark for posted images, None when off; a bad setting or logo file stops the run
        (ServiceBlocked): it would refuse every prompt alike."""
        from image_pipeline.domain.errors import ServiceBlocked
        from image_pipeline.domain.watermark import Watermark

        if not (self.watermark_text.strip() or self.watermark_logo):
            return None
        if self._mark is None:
            try:
                logo = Path(self.watermark_logo).read_bytes() if self.watermark_logo else None
                self._mark = Watermark(
                    self.watermark_text.strip(),
                    logo,
                    self.watermark_corner.strip().lower(),
                    self.watermark_margin,
                    self.watermark_opacity,
                    self.watermark_size,
                )
            except (OSError, ValueError) as exc:
                raise ServiceBlocked(f"watermark: {exc}; fix WATERMARK_* and run again") from None
        return self._mark

    def post_caption(self, row: PromptRow, meta: dict[str, Any], *, suffix: str = "") -> str:
        """The caption of a post of ``row`` now: CAPTION_TEMPLATE rendered, cut to Telegram's limit."""
        date = datetime.now(ZoneInfo(self.caption_timezone or "UTC")).strftime("%Y-%m-%d")
        return render_caption(
            row,
            meta,
            template=self.caption_template,
            signature=self.caption_signature,
            date=date,
            suffix=suffix,
        )

    def caption_checks(self) -> list[Check]:
        """The caption settings, checked before any run (the doctor and the run gate): none when unset."""
        checks = []
        problem = template_problem(self.caption_template) if self.caption_template else None
        if problem:
            checks.append(fail("Telegram", "caption template", problem, "fix CAPTION_TEMPLATE"))
        if self.send_original not in ORIGINAL_MODES:
            detail = f"TELEGRAM_SEND_ORIGINAL={self.send_original!r}: not one of {', '.join(ORIGINAL_MODES)}"
            checks.append(fail("Telegram", "originals", detail, "fix TELEGRAM_SEND_ORIGINAL"))
        # the mark is built here as the first post would build it: a bad setting or logo shows before a run
        try:
            mark = self.watermark()
        except PipelineError as exc:
            checks.append(fail("Telegram", "watermark", str(exc), "fix the WATERMARK_* settings"))
        else:
            if mark is not None:
                what = (
                    f"logo {self.watermark_logo}" if self.watermark_logo else f"text {self.watermark_text!r}"
                )
                checks.append(ok("Telegram", "watermark", f"{what}, {self.watermark_corner}"))
        return checks

    def describe(self) -> str:
        raise NotImplementedError

    def publish(self, *, prompt_id: str, png: bytes, caption: str, silent: bool = False) -> PostReceipt:
        raise NotImplementedError

    def publish_original(
        self, *, prompt_id: str, pngs: list[bytes], caption: str = "", silent: bool = False
    ) -> PostReceipt:
        """The PNG(s) byte for byte as document(s): one sendDocument, or an album of documents."""
        raise NotImplementedError

    def publish_album(
        self, *, prompt_id: str, pngs: list[bytes], caption: str, silent: bool = False
    ) -> PostReceipt:
        """One post of 1-10 images, the caption under the first; one image is exactly ``publish``.

        Raises ValueError for 0 or more than 10 images, before anything is sent."""
        raise NotImplementedError

    def preview(
        self, *, prompt_id: str, pngs: list[bytes], caption: str, buttons: Sequence[tuple[str, str]] = ()
    ) -> PostReceipt | None:
        """Show the image(s) to the operator only, never in the channel; None when there is nowhere to.
        ``buttons`` (label, callback data) go under the card in one row; the receipt's message is the card."""
        raise NotImplementedError

    # -- button presses on preview cards (lifecycle/presses.py); a publisher nobody can press answers none
    def card_key(self) -> bytes:
        """The key that signs the cards' button data; empty: no buttons (not configured, or no bot)."""
        return b""

    def admins(self) -> frozenset[int]:
        """The Telegram user ids whose presses count (TELEGRAM_ADMIN_IDS)."""
        return frozenset()

    def get_updates(self, *, offset: int, allowed_updates: Sequence[str]) -> list[dict[str, Any]]:
        """The updates after ``offset`` - 1 (getUpdates confirms those before it); [] when none can come."""
        return []

    def answer_press(self, *, query_id: str, text: str) -> bool:
        """Answer a button press (the toast its presser sees); False when it is too old to answer."""
        return False

    def close_card(self, *, chat_id: str, message_id: str, text: str, has_image: bool) -> None:
        """Take the card's buttons away and show ``text`` (its caption or text with the outcome line)."""

    def notify(self, text: str) -> bool:
        """Send an operator notice; False when no alert destination is configured."""
        raise NotImplementedError

    def edit_caption(self, *, chat_id: str, message_id: str, caption: str) -> str:
        """Give a posted message this caption: ``EDITED``, or ``UNCHANGED`` when it has it already (so a
        repeat after a lost answer reads back). Raises ``MessageGone`` when it is not there any more."""
        raise NotImplementedError

    def delete_message(self, *, chat_id: str, message_id: str) -> str:
        """Retract a posted message: ``DELETED``, or ``GONE`` when it is not there (already deleted: by a
        call of ours whose answer was lost, or in the app). Raises ``MessageNotDeletable`` when refused."""
        raise NotImplementedError

    def pace_with(self, slots: SlotBook | None) -> None:
        """Keep the pace of posts per chat in ``slots`` (a ledger the workers share); None: as configured."""

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=max(1, self.retry_attempts), base_delay_s=self.retry_base_delay_s)
