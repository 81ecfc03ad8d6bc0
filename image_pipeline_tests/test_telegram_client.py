"""The Telegram publisher through requests against the loopback Bot API emulator."""

from __future__ import annotations

import io
import logging

import pytest
from PIL import Image

from image_pipeline.domain.errors import PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.records import PostOutcome
from image_pipeline.services.publisher.telegram import DeliveryUncertain, TelegramPublisher
from image_pipeline.testing.emulators.base import RESET, TIMEOUT, TRUNCATE
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID, DEFAULT_TOKEN


def png(width: int, height: int, colour: str = "teal") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def publisher(emulator, **overrides) -> TelegramPublisher:
    fields = {
        "token": DEFAULT_TOKEN,
        "chat_id": str(DEFAULT_CHANNEL_ID),
        "alert_chat_id": str(ALERTS_CHANNEL_ID),
        "api_base_url": emulator.base_url,
        "retry_base_delay_s": 0.01,
        "read_timeout_s": 5.0,
    }
    fields.update(overrides)
    return TelegramPublisher(**fields)


def test_send_photo_records_chat_and_message_id(telegram_emulator) -> None:
    receipt = publisher(telegram_emulator).publish(prompt_id="p1", png=png(64, 48), caption="a teal square")
    assert receipt.method == "sendPhoto" and receipt.chat_id == str(DEFAULT_CHANNEL_ID)
    assert receipt.message_id == "1" and receipt.message_ids == ("1",)
    assert receipt.link == "https://t.me/image_pipeline_test/1"
    assert PostOutcome.posted(receipt).to_json()["message_ids"] == ("1",)
    [message] = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert message["caption"] == "a teal square" and (message["width"], message["height"]) == (64, 48)


def test_retries_resend_the_whole_photo(telegram_emulator) -> None:
    image = png(80, 80)
    # answers that say the post was not made (a 5xx may follow a post that was: see test_telegram_refusals)
    telegram_emulator.fail_next("restart", 429, endpoints=["sendPhoto"])
    receipt = publisher(telegram_emulator).publish(prompt_id="p1", png=image, caption="x")
    assert receipt.message_id == "1"
    [message] = telegram_emulator.messages
    assert message["image"] == image  # not an empty buffer read to its end by the first attempt
    assert telegram_emulator.count("sendphoto") == 3


def test_429_waits_for_retry_after(telegram_emulator, caplog) -> None:
    telegram_emulator.fail_next(429, endpoints=["sendPhoto"])
    caplog.set_level(logging.WARNING, logger="image_pipeline.retry")
    receipt = publisher(telegram_emulator).publish(prompt_id="p1", png=png(10, 10), caption="x")
    assert receipt.message_id == "1"
    [record] = [r for r in caplog.records if r.name == "image_pipeline.retry"]
    assert record.args[-1] >= 1.0  # the delay honours the emulator's retry_after of 1 s, not our 0.01 s base


def test_out_of_limits_image_goes_as_document(telegram_emulator) -> None:
    receipt = publisher(telegram_emulator).publish(prompt_id="p1", png=png(12000, 400), caption="wide")
    assert receipt.method == "sendDocument" and "photo limits" in receipt.note
    [message] = telegram_emulator.messages
    assert message["method"].lower() == "senddocument" and message["filename"] == "p1.png"


def test_oversized_png_is_recompressed_below_10mb(telegram_emulator) -> None:
    noise = Image.effect_noise((2600, 2600), 120).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, format="PNG", compress_level=0)
    assert buf.tell() > 10 * 1024 * 1024
    receipt = publisher(telegram_emulator).publish(prompt_id="p1", png=buf.getvalue(), caption="noise")
    assert receipt.method == "sendPhoto" and "JPEG" in receipt.note
    assert receipt.sent_bytes <= 10 * 1024 * 1024


def test_caption_at_the_limit_is_accepted(telegram_emulator) -> None:
    publisher(telegram_emulator).publish(prompt_id="p1", png=png(10, 10), caption="é" * 1024)
    assert telegram_emulator.messages[0]["caption"] == "é" * 1024


def test_wrong_token_is_blocked_and_never_shown(telegram_emulator, caplog) -> None:
    bad = "987654321:AAWrongTokenWrongTokenWrongToken_xy"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ServiceBlocked) as info:
        publisher(telegram_emulator, token=bad).publish(prompt_id="p1", png=png(10, 10), caption="x")
    assert "401" in str(info.value) and bad not in str(info.value)
    assert bad not in caplog.text


def test_connection_refused_message_has_no_token(telegram_emulator) -> None:
    pub = publisher(telegram_emulator, retry_attempts=1)
    telegram_emulator.stop()
    with pytest.raises(TransientError) as info:
        pub.publish(prompt_id="p1", png=png(10, 10), caption="x")
    assert DEFAULT_TOKEN not in str(info.value) and DEFAULT_TOKEN not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_chat_problems_say_what_to_do(telegram_emulator) -> None:
    with pytest.raises(ServiceBlocked, match="TELEGRAM_CHAT_ID"):
        publisher(telegram_emulator, chat_id="-100555").publish(prompt_id="p1", png=png(10, 10), caption="x")
    telegram_emulator.add_chat(-100777, username=None, bot_status="left")
    with pytest.raises(ServiceBlocked, match="administrator"):
        publisher(telegram_emulator, chat_id="-100777").publish(prompt_id="p1", png=png(10, 10), caption="x")


def test_undecodable_image_is_refused_before_any_upload(telegram_emulator) -> None:
    with pytest.raises(PromptRejected, match="cannot be decoded"):
        publisher(telegram_emulator).publish(prompt_id="p1", png=b"not a png", caption="x")
    assert telegram_emulator.messages == []


@pytest.mark.parametrize("fault", [RESET, TRUNCATE])
def test_broken_connection_after_sending_is_not_retried(telegram_emulator, fault) -> None:
    telegram_emulator.fail_next(fault, endpoints=["sendPhoto"])
    with pytest.raises(DeliveryUncertain, match="may have gone through"):
        publisher(telegram_emulator).publish(prompt_id="p1", png=png(10, 10), caption="x")
    assert telegram_emulator.count("sendphoto") == 1


def test_read_timeout_on_send_is_not_retried(telegram_emulator) -> None:
    telegram_emulator.timeout_hold_s = 3
    telegram_emulator.fail_next(TIMEOUT, endpoints=["sendPhoto"])
    with pytest.raises(DeliveryUncertain, match="may have gone through"):
        publisher(telegram_emulator, read_timeout_s=0.5).publish(prompt_id="p1", png=png(10, 10), caption="x")
    assert telegram_emulator.count("sendphoto") == 1


def test_notice_goes_to_the_alert_chat(telegram_emulator) -> None:
    assert publisher(telegram_emulator).notify("generation failed: credits depleted")
    [message] = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert message["text"] == "generation failed: credits depleted"
    assert not publisher(telegram_emulator, alert_chat_id=None).notify("x")


def test_bad_request_becomes_prompt_rejected(telegram_emulator) -> None:
    telegram_emulator.fail_next(400, endpoints=["sendPhoto"])
    with pytest.raises(PromptRejected):
        publisher(telegram_emulator).publish(prompt_id="p1", png=png(10, 10), caption="x")
