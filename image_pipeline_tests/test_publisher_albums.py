"""Albums (several images in one post) and previews: the real publishers against the Bot API emulator and
the local outbox's gallery."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from image_pipeline.domain.errors import TransientError
from image_pipeline.domain.records import PostOutcome
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.publisher.telegram import DeliveryUncertain, TelegramPublisher
from image_pipeline.testing.emulators.base import TRUNCATE
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID, DEFAULT_TOKEN
from image_pipeline_tests.test_gallery import parse


def png(width: int = 64, height: int = 48, colour: str = "teal") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def images(count: int) -> list[bytes]:
    colours = [
        "teal",
        "navy",
        "olive",
        "maroon",
        "purple",
        "gray",
        "orange",
        "lime",
        "aqua",
        "silver",
        "black",
    ]
    return [png(60 + i, 40, colours[i % len(colours)]) for i in range(count)]


def noisy_png_over_10mb() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((2600, 2600), 120).convert("RGB").save(buf, format="PNG", compress_level=0)
    assert buf.tell() > 10 * 1024 * 1024
    return buf.getvalue()


def publisher(emulator, **overrides) -> TelegramPublisher:
    fields = {
        "token": DEFAULT_TOKEN,
        "chat_id": str(DEFAULT_CHANNEL_ID),
        "alert_chat_id": str(ALERTS_CHANNEL_ID),
        "api_base_url": emulator.base_url,
        "retry_base_delay_s": 0.01,
        "read_timeout_s": 5.0,
        "posts_per_minute": 0,
    }
    fields.update(overrides)
    return TelegramPublisher(**fields)


def albums(messages: list[dict]) -> dict[str | None, list[dict]]:
    groups: dict[str | None, list[dict]] = {}
    for m in messages:
        groups.setdefault(m["media_group_id"], []).append(m)
    return groups


# ----------------------------------------------------------------- Telegram
def test_album_of_three_is_one_post_with_the_caption_on_the_first_image(telegram_emulator) -> None:
    pngs = images(3)
    receipt = publisher(telegram_emulator).publish_album(prompt_id="p1", pngs=pngs, caption="three foxes")
    assert receipt.method == "sendMediaGroup"
    assert receipt.message_id == "1" and receipt.message_ids == ("1", "2", "3")
    assert receipt.chat_id == str(DEFAULT_CHANNEL_ID) and receipt.link == "https://t.me/image_pipeline_test/1"
    assert receipt.sent_bytes == sum(map(len, pngs))
    assert PostOutcome.posted(receipt).to_json()["message_ids"] == ("1", "2", "3")
    messages = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    [(group, album)] = albums(messages).items()
    assert group is not None and len(album) == 3
    assert [m["caption"] for m in album] == ["three foxes", None, None]
    assert [m["image"] for m in album] == pngs  # small PNGs go as they are, in order
    assert [(m["width"], m["height"]) for m in album] == [(60, 40), (61, 40), (62, 40)]
    assert telegram_emulator.count("sendmediagroup") == 1 and telegram_emulator.count("sendphoto") == 0


def test_album_of_one_is_a_plain_photo_post(telegram_emulator) -> None:
    receipt = publisher(telegram_emulator).publish_album(prompt_id="p1", pngs=images(1), caption="one fox")
    assert receipt.method == "sendPhoto" and receipt.message_ids == ("1",)
    [message] = telegram_emulator.messages
    assert message["method"] == "sendPhoto" and message["caption"] == "one fox"
    assert message["filename"] == "p1.png"  # exactly what publish sends
    assert telegram_emulator.count("sendmediagroup") == 0


def test_albums_outside_one_to_ten_images_are_refused_before_any_request(telegram_emulator, tmp_path) -> None:
    pub = publisher(telegram_emulator)
    outbox = LocalOutbox(folder=str(tmp_path / "outbox"))
    for post in (pub.publish_album, pub.preview, outbox.publish_album, outbox.preview):
        with pytest.raises(ValueError, match="at most 10 images"):
            post(prompt_id="p1", pngs=images(11), caption="too many")
        with pytest.raises(ValueError, match="at least one image"):
            post(prompt_id="p1", pngs=[], caption="none")
    assert telegram_emulator.requests == [] and outbox.posts() == [] and outbox.notices() == []
    ten = pub.publish_album(prompt_id="p1", pngs=images(10), caption="ten")
    assert len(ten.message_ids) == 10


def test_oversize_image_inside_an_album_is_recompressed(telegram_emulator) -> None:
    pngs = [png(), noisy_png_over_10mb(), png(50, 50)]
    receipt = publisher(telegram_emulator).publish_album(prompt_id="p1", pngs=pngs, caption="noise")
    assert receipt.method == "sendMediaGroup" and receipt.note.startswith("image 2: PNG of")
    first, second, third = telegram_emulator.messages
    assert second["content_type"] == "image/jpeg" and len(second["image"]) <= 10 * 1024 * 1024
    assert second["filename"] == "p1-2.jpg" and (second["width"], second["height"]) == (2600, 2600)
    assert first["image"] == pngs[0] and third["image"] == pngs[2]
    assert first["media_group_id"] == second["media_group_id"] == third["media_group_id"]


def test_an_image_that_can_only_be_a_document_makes_a_document_album(telegram_emulator) -> None:
    pngs = [png(), png(12000, 400), png()]
    receipt = publisher(telegram_emulator).publish_album(prompt_id="p1", pngs=pngs, caption="wide")
    assert receipt.method == "sendMediaGroup" and "sent as a document" in receipt.note
    messages = telegram_emulator.messages
    assert [m["filename"] for m in messages] == ["p1-1.png", "p1-2.png", "p1-3.png"]
    assert [m["image"] for m in messages] == pngs  # byte for byte
    assert len(albums(messages)) == 1 and messages[0]["caption"] == "wide"
    assert all(m["params"]["media"].count('"type": "document"') == 3 for m in messages)


def test_photos_telegram_refuses_are_sent_again_as_documents(telegram_emulator) -> None:
    # the server's photo limit scaled down, so that our own fitting lets the album through
    telegram_emulator.max_photo_bytes = 1000
    pngs = [png(), png(300, 300, "white") + b"\0" * 2000]
    receipt = publisher(telegram_emulator).publish_album(prompt_id="p1", pngs=pngs, caption="refused")
    assert "Telegram refused the photo" in receipt.note and "too big for a photo" in receipt.note
    assert telegram_emulator.count("sendmediagroup") == 2
    assert [m["image"] for m in telegram_emulator.messages] == pngs and len(receipt.message_ids) == 2


def test_429_on_an_album_waits_retry_after_and_posts_it_once(telegram_emulator, caplog) -> None:
    pngs = images(3)
    telegram_emulator.fail_next(429, endpoints=["sendMediaGroup"])
    caplog.set_level(logging.WARNING, logger="image_pipeline.retry")
    receipt = publisher(telegram_emulator).publish_album(prompt_id="p1", pngs=pngs, caption="x")
    [record] = [r for r in caplog.records if r.name == "image_pipeline.retry"]
    assert record.args[-1] >= 1.0  # the emulator's retry_after of 1 s, not our 0.01 s base delay
    assert telegram_emulator.count("sendmediagroup") == 2
    messages = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert len(albums(messages)) == 1 and receipt.message_ids == ("1", "2", "3")
    assert [m["image"] for m in messages] == pngs  # the retry uploaded every image again in full


def test_an_album_counts_each_image_against_the_chat_cap(telegram_emulator) -> None:
    # Telegram's per-chat cap scaled down: 4 messages a second. Two albums of 3 do not fit in one window.
    telegram_emulator.per_chat_per_minute = 4
    telegram_emulator.rate_window_s = 1.0
    pub = publisher(telegram_emulator)
    pub.publish_album(prompt_id="p1", pngs=images(3), caption="first")
    second = pub.publish_album(prompt_id="p2", pngs=images(3), caption="second")
    assert telegram_emulator.count_429 == 1 and telegram_emulator.count("sendmediagroup") == 3
    assert second.message_ids == ("4", "5", "6") and len(albums(telegram_emulator.messages)) == 2


def test_pacing_gives_an_album_one_turn_per_image(telegram_emulator) -> None:
    pub = publisher(telegram_emulator, posts_per_minute=600)  # 0.1 s apart
    pub.publish_album(prompt_id="p1", pngs=images(5), caption="five")
    assert pub.pacer().waited_s == pytest.approx(0.4, abs=0.05)  # 4 turns after the first one's


@pytest.mark.parametrize("fault", ["read timeout", TRUNCATE])
def test_a_lost_answer_is_not_retried_and_the_album_is_in_the_channel_once(telegram_emulator, fault) -> None:
    if fault == TRUNCATE:
        telegram_emulator.fail_next(TRUNCATE, endpoints=["sendMediaGroup"])
    else:
        # the album is posted, then the answer is held past the client's read timeout
        release = threading.Event()
        telegram_emulator.after_route = lambda _req, endpoint, _resp: (
            endpoint == "sendmediagroup" and release.wait(3)
        )
    try:
        with pytest.raises(DeliveryUncertain, match="may have gone through"):
            publisher(telegram_emulator, read_timeout_s=0.5).publish_album(
                prompt_id="p1", pngs=images(3), caption="x"
            )
    finally:
        if fault != TRUNCATE:
            release.set()
    deadline = time.monotonic() + 5
    while len(telegram_emulator.messages) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert telegram_emulator.count("sendmediagroup") == 1
    [(_, album)] = albums(telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)).items()
    assert len(album) == 3


def test_a_connection_that_never_opened_is_retried_as_transient(telegram_emulator) -> None:
    pub = publisher(telegram_emulator, retry_attempts=2)
    telegram_emulator.stop()
    with pytest.raises(TransientError, match="connection failed") as info:
        pub.publish_album(prompt_id="p1", pngs=images(2), caption="x")
    assert not isinstance(info.value, DeliveryUncertain)
    assert DEFAULT_TOKEN not in str(info.value) and info.value.__cause__ is None


def test_preview_goes_to_the_alert_chat_only(telegram_emulator) -> None:
    pub = publisher(telegram_emulator)
    album = pub.preview(prompt_id="p1", pngs=images(3), caption="preview of three")
    single = pub.preview(prompt_id="p2", pngs=images(1), caption="preview of one")
    assert album is not None and single is not None
    assert album.chat_id == str(ALERTS_CHANNEL_ID) and album.method == "sendMediaGroup"
    assert single.method == "sendPhoto" and single.message_ids == ("4",)
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []
    alerts = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert [m["caption"] for m in alerts] == ["preview of three", None, None, "preview of one"]
    assert len({m["media_group_id"] for m in alerts[:3]}) == 1 and alerts[3]["media_group_id"] is None


def test_preview_without_an_alert_chat_sends_nothing(telegram_emulator) -> None:
    pub = publisher(telegram_emulator, alert_chat_id=None)
    assert pub.preview(prompt_id="p1", pngs=images(2), caption="x") is None
    assert telegram_emulator.requests == []


# ----------------------------------------------------------------- local outbox
def test_outbox_album_and_preview_in_the_gallery(tmp_path: Path) -> None:
    outbox = LocalOutbox(folder=str(tmp_path / "outbox"))
    single = outbox.publish(prompt_id="p1", png=png(), caption="one lighthouse")
    album = outbox.publish_album(prompt_id="p2", pngs=images(3), caption="three foxes")
    after = outbox.publish_album(prompt_id="p3", pngs=images(1), caption="one owl")
    preview = outbox.preview(prompt_id="p4", pngs=images(2), caption="draft of two")

    assert single.message_ids == ("1",) and album.message_ids == ("2", "3", "4")
    assert album.method == "sendMediaGroup" and after.message_ids == ("5",) and after.method == "sendPhoto"
    assert preview.chat_id == "notices" and len(preview.message_ids) == 2
    posts = outbox.posts()
    assert [p["prompt_id"] for p in posts] == ["p1", "p2", "p3"]  # one record per post; the preview is none
    assert posts[1]["files"] == ["images/00002-p2-1.png", "images/00003-p2-2.png", "images/00004-p2-3.png"]
    assert posts[1]["message_ids"] == ["2", "3", "4"] and posts[1]["file"] == posts[1]["files"][0]
    assert "files" not in posts[0] and "files" not in posts[2]  # single posts keep the old record shape

    index = tmp_path / "outbox" / "index.html"
    page = parse(index)
    assert [c["status"] for c in page.cards] == ["PREVIEW", "POSTED", "POSTED", "POSTED"]
    draft, owl, foxes, lighthouse = page.cards
    assert "preview" in draft["classes"] and draft["text"] == "draft of two" and len(draft["imgs"]) == 2
    assert (
        "album" in foxes["classes"] and foxes["imgs"] == posts[1]["files"] and foxes["text"] == "three foxes"
    )
    assert owl["imgs"] == ["images/00005-p3.png"] and lighthouse["imgs"] == ["images/00001-p1.png"]
    for card in page.cards:
        assert all((index.parent / src).is_file() for src in card["imgs"])


def test_outbox_reads_posts_written_before_albums(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    folder.mkdir()
    old = '{"message_id": "7", "chat_id": "outbox", "prompt_id": "old", "caption": "from before", "file": "images/00007-old.png", "method": "sendPhoto", "note": "", "date": "2025-05-01T10:00:00Z"}\n'
    (folder / "posts.jsonl").write_text(old)
    outbox = LocalOutbox(folder=str(folder))
    receipt = outbox.publish_album(prompt_id="new", pngs=images(2), caption="after")
    assert receipt.message_ids == ("8", "9")
    page = parse(folder / "index.html")
    assert [c["text"] for c in page.cards] == ["after", "from before"]
    assert page.cards[1]["imgs"] == ["images/00007-old.png"]
