"""A channel for the tests of posts: the real Telegram publisher against the emulator, a local queue, and
posts logged in Done as ``lifecycle/done.py`` words them (EDIT/DELETE, reactions, captions, originals)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.services.publisher.telegram import TelegramPublisher
from image_pipeline.services.sheets import LocalWorkbook
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID, DEFAULT_TOKEN
from image_pipeline_tests.conftest import write_csv

CHANNEL = str(DEFAULT_CHANNEL_ID)


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, format="PNG")
    return buf.getvalue()


def publisher(tg) -> TelegramPublisher:
    return TelegramPublisher(
        token=DEFAULT_TOKEN,
        chat_id=CHANNEL,
        alert_chat_id=str(ALERTS_CHANNEL_ID),
        api_base_url=tg.base_url,
        retry_base_delay_s=0.01,
        posts_per_minute=0,
    )


def post_and_log(pub, sheet: LocalWorkbook, key: str, prompt: str, count: int = 1, **extra: str) -> list[str]:
    """Post through the real publisher and log the Done row as done.py words it; the message ids."""
    if count == 1:
        receipt = pub.publish(prompt_id=key, png=png("teal"), caption=prompt)
        info = f"posted to chat {receipt.chat_id} as message {receipt.message_id}"
    else:
        colours = ["teal", "navy", "olive", "maroon"][:count]
        receipt = pub.publish_album(prompt_id=key, pngs=[png(c) for c in colours], caption=prompt)
        ids = receipt.message_ids
        info = f"posted an album of {len(ids)} to chat {receipt.chat_id} as messages {ids[0]}-{ids[-1]}"
    entry = DoneEntry(
        id=key,
        prompt=prompt,
        status="SUCCESS",
        information=info,
        message_id=receipt.message_id,
        chat_id=receipt.chat_id,
        message_link=receipt.link,
        **extra,
    )
    sheet.append_done([entry])
    return list(receipt.message_ids)


def telegram(emulator: Any, **fields: Any) -> TelegramPublisher:
    """The publisher of a pipeline run's tests: no alert chat unless given, a short read timeout."""
    return TelegramPublisher(
        token=DEFAULT_TOKEN,
        chat_id=CHANNEL,
        api_base_url=emulator.base_url,
        retry_base_delay_s=0.01,
        read_timeout_s=5.0,
        posts_per_minute=0,
        **fields,
    )


def queue(resources: dict[str, Any], header: list[str], *rows: list[str]) -> list[str]:
    """``rows`` under ``header`` as the local queue of ``resources``; their ids."""
    sheet: LocalWorkbook = resources["prompt_sheet"]
    write_csv(Path(sheet.folder) / "process.csv", [header, *rows])
    return [r.prompt_id for r in sheet.ensure_ids().rows]
