"""The Telegram emulator, driven by the real ``requests`` client the pipeline uses."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from image_pipeline.testing.emulators.base import GARBAGE
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID, TelegramEmulator

CHANNEL = DEFAULT_CHANNEL_ID


def png(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def tg() -> Iterator[TelegramEmulator]:
    emulator = TelegramEmulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def api(tg: TelegramEmulator, method: str) -> str:
    return f"{tg.base_url}/bot{tg.token}/{method}"


def send_photo(
    tg: TelegramEmulator,
    photo: bytes | None = None,
    chat_id: int | str = CHANNEL,
    **fields: str,
) -> requests.Response:
    data: dict[str, str | int] = {"chat_id": chat_id, **fields}
    files = {"photo": ("img.png", png() if photo is None else photo, "image/png")}
    return requests.post(api(tg, "sendPhoto"), data=data, files=files, timeout=5)


def assert_error(resp: requests.Response, code: int, description: str) -> dict:
    assert resp.status_code == code
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["ok"] is False
    assert body["error_code"] == code
    assert body["description"] == description
    assert list(body)[:3] == ["ok", "error_code", "description"]
    return body


# ----------------------------------------------------------------- routing and auth
def test_get_me_and_routing_variants(tg: TelegramEmulator) -> None:
    me = requests.get(api(tg, "getMe"), timeout=5)
    assert me.status_code == 200 and me.headers["Content-Type"] == "application/json"
    assert me.json() == {
        "ok": True,
        "result": {
            "id": 123456789,
            "is_bot": True,
            "first_name": "Image Pipeline Bot",
            "username": "image_pipeline_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        },
    }
    # method names are case-insensitive, POST works too, and the test environment path is accepted
    assert requests.post(api(tg, "GETME"), timeout=5).json()["ok"] is True
    assert requests.get(f"{tg.base_url}/bot{tg.token}/test/getMe", timeout=5).json()["ok"] is True
    assert tg.count("getme") == 3


def test_routing_errors(tg: TelegramEmulator) -> None:
    assert_error(requests.get(f"{tg.base_url}/getMe", timeout=5), 404, "Not Found")
    # api.telegram.org: a token not shaped like "<id>:<secret>" never reaches a Bot API server
    for malformed in ("nocolon", f"bot{tg.token}", "12345:a b"):
        assert_error(requests.get(f"{tg.base_url}/bot{malformed}/getMe", timeout=5), 404, "Not Found")
    # well-shaped, but refused by the Bot API server's own checks (ClientManager.cpp)
    assert_error(
        requests.get(f"{tg.base_url}/bot0123:abc/getMe", timeout=5),
        401,
        "Unauthorized: invalid token specified",
    )
    assert_error(
        requests.get(f"{tg.base_url}/bot987654321:WrongSecret/getMe", timeout=5), 401, "Unauthorized"
    )
    assert_error(requests.get(api(tg, "sendSticker"), timeout=5), 404, "Not Found: method not found")
    assert tg.count("invalid") == 1


def test_a_self_hosted_server_answers_a_malformed_token_with_401() -> None:
    with TelegramEmulator(front="local") as local:
        for malformed in ("nocolon", f"bot{local.token}"):
            assert_error(
                requests.get(f"{local.base_url}/bot{malformed}/getMe", timeout=5),
                401,
                "Unauthorized: invalid token specified",
            )


def test_token_never_appears_in_the_request_log(tg: TelegramEmulator) -> None:
    send_photo(tg)
    requests.get(f"{tg.base_url}/bot987654321:AnotherSecret/getMe", timeout=5)
    paths = [r.path for r in tg.requests]
    assert paths == ["/bot<token>/sendPhoto", "/bot<token>/getMe"]
    assert all(tg.token not in p and "AnotherSecret" not in p for p in paths)


# ----------------------------------------------------------------- sendPhoto
def test_send_photo_returns_a_real_message_and_records_the_upload(tg: TelegramEmulator) -> None:
    image = png(1600, 900)
    resp = send_photo(tg, image, caption="<b>Fox</b> &amp; hound", parse_mode="HTML")
    assert resp.status_code == 200, resp.text
    msg = resp.json()["result"]
    assert msg["message_id"] == 1
    assert msg["chat"] == {
        "id": CHANNEL,
        "title": "Test channel",
        "username": "image_pipeline_test",
        "type": "channel",
    }
    assert msg["sender_chat"]["id"] == CHANNEL
    assert isinstance(msg["date"], int)
    assert msg["caption"] == "Fox & hound"  # entities are parsed out of the returned caption
    sizes = msg["photo"]
    assert [(s["width"], s["height"]) for s in sizes] == [(90, 51), (320, 180), (800, 450), (1280, 720)]
    assert all({"file_id", "file_unique_id", "width", "height", "file_size"} <= set(s) for s in sizes)

    second = send_photo(tg).json()["result"]
    assert second["message_id"] == 2
    other = send_photo(tg, chat_id=ALERTS_CHANNEL_ID).json()["result"]
    assert other["message_id"] == 1  # ids are per chat

    (first, _) = tg.messages_for(CHANNEL)
    assert first["image"] == image
    assert (first["width"], first["height"]) == (1600, 900)
    assert first["filename"] == "img.png" and first["content_type"] == "image/png"
    assert first["caption"] == "<b>Fox</b> &amp; hound"
    assert first["method"] == "sendPhoto"
    assert len(tg.messages_for("@image_pipeline_test")) == 2
    assert tg.count("sendphoto") == 3


def test_photo_can_be_resent_by_file_id(tg: TelegramEmulator) -> None:
    original = send_photo(tg, png(300, 200)).json()["result"]["photo"][-1]["file_id"]
    resp = requests.post(
        api(tg, "sendPhoto"), json={"chat_id": ALERTS_CHANNEL_ID, "photo": original}, timeout=5
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["photo"][-1]["width"] == 300
    bad = requests.post(api(tg, "sendPhoto"), data={"chat_id": CHANNEL, "photo": "nope"}, timeout=5)
    assert_error(bad, 400, "Bad Request: wrong file identifier/HTTP URL specified")


def test_caption_limit_counts_visible_code_points(tg: TelegramEmulator) -> None:
    assert send_photo(tg, caption="x" * 1024).status_code == 200
    assert_error(send_photo(tg, caption="x" * 1025), 400, "Bad Request: message caption is too long")
    # an emoji is one code point; tags cost nothing and an entity counts as one character under HTML
    assert send_photo(tg, caption="🦊" * 1024).status_code == 200
    html_caption = "<b>" + "y" * 1023 + "</b>&amp;"
    assert send_photo(tg, caption=html_caption, parse_mode="HTML").status_code == 200
    assert_error(
        send_photo(tg, caption=html_caption + "z", parse_mode="HTML"),
        400,
        "Bad Request: message caption is too long",
    )
    # without a parse mode the same markup is plain text and counts in full
    assert_error(send_photo(tg, caption=html_caption), 400, "Bad Request: message caption is too long")


def test_html_caption_with_a_stray_angle_bracket_is_rejected(tg: TelegramEmulator) -> None:
    resp = send_photo(tg, caption="a cat <3 you", parse_mode="HTML")
    assert_error(resp, 400, 'Bad Request: can\'t parse entities: Unsupported start tag "3" at byte offset 6')
    resp = send_photo(tg, caption="<b>bold", parse_mode="HTML")
    assert resp.json()["description"].startswith("Bad Request: can't parse entities: Can't find end tag")
    assert send_photo(tg, caption="a cat &lt;3 you & me", parse_mode="HTML").status_code == 200


def test_photo_dimension_size_and_decoding_limits(tg: TelegramEmulator) -> None:
    assert_error(send_photo(tg, png(12000, 800)), 400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
    assert_error(send_photo(tg, png(2100, 100)), 400, "Bad Request: PHOTO_INVALID_DIMENSIONS")  # ratio 21
    assert send_photo(tg, png(2000, 100)).status_code == 200  # ratio exactly 20
    assert send_photo(tg, png(5000, 5000, (0, 0, 0))).status_code == 200  # sum exactly 10000
    assert_error(send_photo(tg, b"this is not an image"), 400, "Bad Request: IMAGE_PROCESS_FAILED")
    assert_error(send_photo(tg, png(400, 400)[:200]), 400, "Bad Request: IMAGE_PROCESS_FAILED")  # truncated
    tg.max_photo_bytes = 1000  # the real 10 MB limit, scaled down so the test stays fast
    assert_error(
        send_photo(tg, b"\0" * 1001),
        400,
        "Bad Request: file of size 1001 bytes is too big for a photo; the maximum size is 1000 bytes",
    )
    no_photo = requests.post(api(tg, "sendPhoto"), data={"chat_id": CHANNEL}, timeout=5)
    assert_error(no_photo, 400, "Bad Request: there is no photo in the request")
    assert tg.messages_for(CHANNEL) and all(m["width"] + m["height"] <= 10000 for m in tg.messages)


def test_default_photo_limit_is_ten_megabytes() -> None:
    assert TelegramEmulator.max_photo_bytes == 10 * 1024 * 1024
    assert TelegramEmulator.max_document_bytes == 50 * 1024 * 1024


# ----------------------------------------------------------------- chats and membership
def test_chat_errors(tg: TelegramEmulator) -> None:
    assert_error(send_photo(tg, chat_id=-100111), 400, "Bad Request: chat not found")
    assert_error(send_photo(tg, chat_id="@nobody_here"), 400, "Bad Request: chat not found")
    tg.add_chat(-100222, title="Left", bot_status="left")
    tg.add_chat(-100333, title="Kicked", username="kicked_chan", bot_status="kicked")
    assert_error(send_photo(tg, chat_id=-100222), 403, "Forbidden: bot is not a member of the channel chat")
    assert_error(
        send_photo(tg, chat_id="@kicked_chan"), 403, "Forbidden: bot was kicked from the channel chat"
    )
    tg.add_chat(-100444, type="supergroup", title="Group", bot_status="left")
    assert_error(
        send_photo(tg, chat_id=-100444), 403, "Forbidden: bot is not a member of the supergroup chat"
    )
    assert tg.messages == []


def test_get_chat_and_get_chat_member(tg: TelegramEmulator) -> None:
    chat = requests.post(api(tg, "getChat"), data={"chat_id": "@image_pipeline_test"}, timeout=5).json()[
        "result"
    ]
    assert chat["id"] == CHANNEL and chat["type"] == "channel" and chat["title"] == "Test channel"
    assert chat["username"] == "image_pipeline_test"
    assert {"accent_color_id", "max_reaction_count", "accepted_gift_types"} <= set(chat)
    member = requests.get(
        api(tg, "getChatMember"), params={"chat_id": CHANNEL, "user_id": tg.bot_id}, timeout=5
    ).json()["result"]
    assert member["status"] == "administrator" and member["can_post_messages"] is True
    assert member["user"]["id"] == 123456789
    # a public channel the bot left can still be read; a private one cannot (Client.cpp check_chat_access)
    tg.add_chat(-100555, username="public_left", bot_status="left")
    left = requests.get(
        api(tg, "getChatMember"), params={"chat_id": -100555, "user_id": tg.bot_id}, timeout=5
    )
    assert left.json()["result"] == {"user": tg._bot_user(), "status": "left"}
    tg.add_chat(-100556, bot_status="left")
    for method in ("getChat", "getChatMember"):
        private = requests.get(api(tg, method), params={"chat_id": -100556, "user_id": tg.bot_id}, timeout=5)
        assert_error(private, 403, "Forbidden: bot is not a member of the channel chat")
    missing = requests.post(api(tg, "getChat"), json={"chat_id": -1}, timeout=5)
    assert_error(missing, 400, "Bad Request: chat not found")


# ----------------------------------------------------------------- sendMessage / sendDocument
def test_send_message_limits_and_encodings(tg: TelegramEmulator) -> None:
    ok = requests.post(
        api(tg, "sendMessage"), json={"chat_id": ALERTS_CHANNEL_ID, "text": "x" * 4096}, timeout=5
    )
    assert ok.status_code == 200 and ok.json()["result"]["text"] == "x" * 4096
    too_long = requests.post(api(tg, "sendMessage"), json={"chat_id": CHANNEL, "text": "x" * 4097}, timeout=5)
    assert_error(too_long, 400, "Bad Request: message is too long")
    empty = requests.post(api(tg, "sendMessage"), data={"chat_id": CHANNEL, "text": ""}, timeout=5)
    assert_error(empty, 400, "Bad Request: message text is empty")
    via_query = requests.get(api(tg, "sendMessage"), params={"chat_id": CHANNEL, "text": "héllo"}, timeout=5)
    assert via_query.json()["result"]["text"] == "héllo"
    assert [m["text"] for m in tg.messages] == ["x" * 4096, "héllo"]


def test_send_document(tg: TelegramEmulator) -> None:
    payload = b'{"run": 1}'
    resp = requests.post(
        api(tg, "sendDocument"),
        data={"chat_id": CHANNEL, "caption": "report"},
        files={"document": ("report.json", payload, "application/json")},
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    doc = resp.json()["result"]["document"]
    assert doc["file_name"] == "report.json" and doc["mime_type"] == "application/json"
    assert doc["file_size"] == len(payload) and doc["file_id"] and doc["file_unique_id"]
    assert tg.messages[-1]["image"] == payload and tg.messages[-1]["method"] == "sendDocument"
    tg.max_document_bytes = 100  # stands in for 50 MB
    big = requests.post(
        api(tg, "sendDocument"),
        data={"chat_id": CHANNEL},
        files={"document": ("big.bin", b"\0" * 101, "application/octet-stream")},
        timeout=5,
    )
    assert_error(big, 413, "Request Entity Too Large")
    missing = requests.post(api(tg, "sendDocument"), data={"chat_id": CHANNEL}, timeout=5)
    assert_error(missing, 400, "Bad Request: there is no document in the request")


# ----------------------------------------------------------------- flood control and faults
def test_per_chat_rate_cap_answers_429_with_retry_after(tg: TelegramEmulator) -> None:
    tg.per_chat_per_minute = 3
    tg.rate_window_s = 1.0
    for _ in range(3):
        assert send_photo(tg).status_code == 200
    resp = send_photo(tg)
    body = assert_error(resp, 429, "Too Many Requests: retry after 1")
    assert body["parameters"] == {"retry_after": 1}
    assert resp.headers["Retry-After"] == "1"
    assert send_photo(tg, chat_id=ALERTS_CHANNEL_ID).status_code == 200  # other chats are unaffected
    assert tg.count_429 == 1
    time.sleep(1.05)
    assert send_photo(tg).status_code == 200
    assert len(tg.messages_for(CHANNEL)) == 4


def test_retry_after_reports_real_seconds_until_a_slot_frees(tg: TelegramEmulator) -> None:
    tg.per_chat_per_minute = 2  # default 60 s window
    assert send_photo(tg).status_code == 200
    assert send_photo(tg).status_code == 200
    body = send_photo(tg).json()
    assert body["parameters"]["retry_after"] == 60
    assert body["description"] == "Too Many Requests: retry after 60"


def test_global_rate_cap_across_chats(tg: TelegramEmulator) -> None:
    tg.per_chat_per_minute = None
    tg.global_per_second = 2
    tg.add_chat(-100666, title="Third")
    assert send_photo(tg, chat_id=CHANNEL).status_code == 200
    assert send_photo(tg, chat_id=ALERTS_CHANNEL_ID).status_code == 200
    resp = send_photo(tg, chat_id=-100666)
    assert resp.status_code == 429 and resp.json()["parameters"]["retry_after"] == 1


def test_injected_faults_use_the_bot_api_envelope(tg: TelegramEmulator) -> None:
    tg.fail_next(429, 500, 502, GARBAGE, endpoints=["sendMessage"])
    url = api(tg, "sendMessage")
    data = {"chat_id": CHANNEL, "text": "hi"}
    r429 = requests.post(url, data=data, timeout=5)
    assert_error(r429, 429, "Too Many Requests: retry after 1")
    assert r429.headers["Retry-After"] == "1" and r429.json()["parameters"] == {"retry_after": 1}
    assert_error(requests.post(url, data=data, timeout=5), 500, "Internal Server Error")
    assert_error(requests.post(url, data=data, timeout=5), 502, "Bad Gateway")
    garbage = requests.post(url, data=data, timeout=5)
    assert garbage.status_code == 200 and garbage.headers["Content-Type"] == "text/html"
    with pytest.raises(requests.JSONDecodeError):
        garbage.json()
    assert requests.post(url, data=data, timeout=5).json()["ok"] is True
    assert tg.count_429 == 1 and len(tg.messages) == 1


# ----------------------------------------------------------------- sendMediaGroup
def send_album(
    tg: TelegramEmulator,
    media: list | str | None,
    files: dict[str, bytes] | None = None,
    chat_id: int | str = CHANNEL,
) -> requests.Response:
    data: dict[str, str | int] = {"chat_id": chat_id}
    if media is not None:
        data["media"] = media if isinstance(media, str) else json.dumps(media)
    parts = {name: (f"{name}.png", body, "image/png") for name, body in (files or {}).items()}
    return requests.post(api(tg, "sendMediaGroup"), data=data, files=parts or None, timeout=5)


def photos(count: int, caption: str | None = None, **first: str) -> tuple[list[dict], dict[str, bytes]]:
    media: list[dict] = [{"type": "photo", "media": f"attach://img{i}"} for i in range(count)]
    if caption is not None:
        media[0].update(caption=caption, **first)
    return media, {f"img{i}": png(60 + i, 40) for i in range(count)}


def test_send_media_group_posts_one_message_per_item_sharing_a_group_id(tg: TelegramEmulator) -> None:
    send_photo(tg)  # message 1, so the album's ids are seen to continue the chat's numbering
    media, files = photos(3, "<b>Three</b> foxes", parse_mode="HTML")
    resp = send_album(tg, media, files)
    assert resp.status_code == 200, resp.text
    result = resp.json()["result"]
    assert [m["message_id"] for m in result] == [2, 3, 4]
    group = result[0]["media_group_id"]
    assert isinstance(group, str) and group.isdigit()
    assert all(m["media_group_id"] == group and m["chat"]["id"] == CHANNEL for m in result)
    assert [m.get("caption") for m in result] == ["Three foxes", None, None]
    assert [m["photo"][-1]["width"] for m in result] == [60, 61, 62]
    album = tg.messages_for(CHANNEL)[1:]
    assert [(m["method"], m["media_group_id"], m["caption"]) for m in album] == [
        ("sendMediaGroup", group, "<b>Three</b> foxes"),
        ("sendMediaGroup", group, None),
        ("sendMediaGroup", group, None),
    ]
    assert [m["image"] for m in album] == list(files.values())
    assert (album[2]["width"], album[2]["height"]) == (62, 40)
    # a second album gets its own group id
    again = send_album(tg, *photos(2)).json()["result"]
    assert again[0]["media_group_id"] != group and tg.count("sendmediagroup") == 2


def test_send_media_group_accepts_file_ids_documents_and_json(tg: TelegramEmulator) -> None:
    file_id = send_photo(tg, png(300, 200)).json()["result"]["photo"][-1]["file_id"]
    media = [{"type": "photo", "media": file_id}, {"type": "photo", "media": "attach://new"}]
    resp = send_album(tg, media, {"new": png(30, 30)}, chat_id=ALERTS_CHANNEL_ID)
    assert resp.status_code == 200, resp.text
    assert [m["photo"][-1]["width"] for m in resp.json()["result"]] == [300, 30]
    docs = [
        {"type": "document", "media": "attach://a", "caption": "two files"},
        {"type": "document", "media": "attach://b"},
    ]
    result = send_album(tg, docs, {"a": png(), "b": png()}).json()["result"]
    assert [m["document"]["file_name"] for m in result] == ["a.png", "b.png"]
    # application/json works when every item is a file_id (uploads need multipart)
    as_json = requests.post(
        api(tg, "sendMediaGroup"),
        json={"chat_id": CHANNEL, "media": [{"type": "photo", "media": file_id}] * 2},
        timeout=5,
    )
    assert as_json.status_code == 200 and len(as_json.json()["result"]) == 2


def test_send_media_group_item_count_limits(tg: TelegramEmulator) -> None:
    assert_error(send_album(tg, *photos(11)), 400, "Bad Request: too many messages to send as an album")
    assert_error(send_album(tg, []), 400, "Bad Request: there are no messages to send")
    # the documented minimum is 2, but the server posts a single item as a plain message without a group
    single = send_album(tg, *photos(1, "only one"))
    assert single.status_code == 200, single.text
    [message] = single.json()["result"]
    assert "media_group_id" not in message and message["caption"] == "only one"
    assert len(tg.messages) == 1 and tg.messages[0]["media_group_id"] is None


def test_send_media_group_parameter_errors(tg: TelegramEmulator) -> None:
    files = {"img0": png()}
    cases = [
        (None, 'Bad Request: parameter "media" is required'),
        ("not json", "Bad Request: can't parse media JSON object"),
        ('{"type": "photo"}', "Bad Request: expected an Array of InputMedia"),
        (["attach://img0"] * 2, "Bad Request: can't parse InputMedia: expected an Object"),
        (
            [{"type": "photo", "media": "attach://missing"}] * 2,
            "Bad Request: can't parse InputMedia: media not found",
        ),
        ([{"type": "photo"}] * 2, "Bad Request: can't parse InputMedia: media not found"),
        ([{"media": "attach://img0"}] * 2, "Bad Request: can't parse InputMedia: Can't find field \"type\""),
        (
            [{"type": "sticker", "media": "attach://img0"}] * 2,
            'Bad Request: can\'t parse InputMedia: type "sticker" is unsupported',
        ),
        (
            [{"type": "animation", "media": "attach://img0"}] * 2,
            "Bad Request: can't parse InputMedia: type \"animation\" can't be used in sendMediaGroup",
        ),
        (
            [{"type": "photo", "media": "attach://img0", "caption": "a cat <3 you", "parse_mode": "HTML"}]
            * 2,
            "Bad Request: can't parse InputMedia: Can't parse entities: Unsupported start tag \"3\" at byte offset 6",
        ),
        ([{"type": "photo", "media": "nope"}] * 2, "Bad Request: wrong file identifier/HTTP URL specified"),
        (
            [{"type": "photo", "media": "attach://img0"}, {"type": "document", "media": "attach://img0"}],
            "Bad Request: document can't be mixed with other media types",
        ),
    ]
    for media, description in cases:
        assert_error(send_album(tg, media, files), 400, description)
    assert_error(send_album(tg, *photos(2), chat_id=-100111), 400, "Bad Request: chat not found")
    assert tg.messages == []


def test_send_media_group_caption_and_photo_limits(tg: TelegramEmulator) -> None:
    media, files = photos(2, "x" * 1024)
    assert send_album(tg, media, files).status_code == 200
    media, files = photos(2, "x" * 1025)
    assert_error(send_album(tg, media, files), 400, "Bad Request: message caption is too long")
    # the caption limit holds for every item, not only the first
    media, files = photos(2)
    media[1]["caption"] = "y" * 1025
    assert_error(send_album(tg, media, files), 400, "Bad Request: message caption is too long")
    # a photo the server refuses fails the whole album, named by its position
    media, files = photos(3)
    files["img1"] = png(2100, 100)  # ratio 21
    assert_error(
        send_album(tg, media, files),
        400,
        'Bad Request: failed to send message #2 with the error message "PHOTO_INVALID_DIMENSIONS"',
    )
    files["img1"] = png(6000, 4001)  # sides over 10000
    assert_error(
        send_album(tg, media, files),
        400,
        'Bad Request: failed to send message #2 with the error message "PHOTO_INVALID_DIMENSIONS"',
    )
    files["img1"], files["img2"] = png(), b"not an image"
    assert_error(
        send_album(tg, media, files),
        400,
        'Bad Request: failed to send message #3 with the error message "IMAGE_PROCESS_FAILED"',
    )
    tg.max_photo_bytes = 1000  # stands in for 10 MB
    files["img2"] = big = png(400, 400, (1, 2, 3)) + b"\0" * 1000
    assert_error(
        send_album(tg, media, files),
        400,
        f'Bad Request: failed to send message #3 with the error message "File of size {len(big)} bytes is '
        'too big for a photo; the maximum size is 1000 bytes"',
    )
    assert len(tg.messages) == 2  # only the first album


def test_each_album_item_counts_against_the_rate_caps(tg: TelegramEmulator) -> None:
    tg.per_chat_per_minute = 4
    tg.rate_window_s = 1.0
    assert send_album(tg, *photos(3)).status_code == 200
    resp = send_album(tg, *photos(2))  # 3 + 2 > 4: the whole album waits, none of it is posted
    body = assert_error(resp, 429, "Too Many Requests: retry after 1")
    assert body["parameters"] == {"retry_after": 1} and resp.headers["Retry-After"] == "1"
    assert send_photo(tg).status_code == 200  # one more message still fits
    time.sleep(1.05)
    assert send_album(tg, *photos(2)).status_code == 200
    assert len(tg.messages_for(CHANNEL)) == 6 and tg.count_429 == 1
    tg.per_chat_per_minute = None
    tg.global_per_second = 3
    time.sleep(1.05)
    assert send_album(tg, *photos(2), chat_id=ALERTS_CHANNEL_ID).status_code == 200
    assert send_album(tg, *photos(2)).status_code == 429  # 4 messages in one second across chats


def test_faults_apply_to_send_media_group(tg: TelegramEmulator) -> None:
    tg.fail_next(502, endpoints=["sendMediaGroup"])
    assert_error(send_album(tg, *photos(2)), 502, "Bad Gateway")
    assert send_photo(tg).status_code == 200  # other methods are not in the plan
    assert send_album(tg, *photos(2)).status_code == 200
    assert tg.count("sendmediagroup") == 2
    assert [r.path for r in tg.requests][0] == "/bot<token>/sendMediaGroup"
