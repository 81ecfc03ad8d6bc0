"""Telegram's refusals as the product meets them: the real publisher (requests) against the Bot API emulator,
the classification table on the exact texts the Bot API sends, and two runs through Dagster."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from image_pipeline.domain.errors import PromptRejected, ServiceBlocked, ServiceWait, TransientError
from image_pipeline.domain.refusals import Refusal, refusal_of
from image_pipeline.services.publisher.refusals import Answer, PhotoRefused, classify
from image_pipeline.services.publisher.telegram import DeliveryUncertain, TelegramPublisher
from image_pipeline.testing.emulators.base import RESET
from image_pipeline.testing.emulators.telegram import (
    ALERTS_CHANNEL_ID,
    DEFAULT_CHANNEL_ID,
    DEFAULT_TOKEN,
    NAMED_FAULTS,
    TelegramEmulator,
)

from .conftest import queue_prompts, read_csv, run_partitions


def png(width: int = 64, height: int = 48, colour: str = "teal") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def publisher(emulator: TelegramEmulator, **overrides: object) -> TelegramPublisher:
    fields: dict[str, object] = {
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


def post(emulator: TelegramEmulator, **overrides: object):
    return publisher(emulator, **overrides).publish(prompt_id="p1", png=png(), caption="a teal square")


# ----------------------------------------------------------------- the table, on the texts Telegram sends
@pytest.mark.parametrize(
    ("status", "description", "parameters", "kind"),
    [
        (400, "Bad Request: need administrator rights in the channel chat", None, Refusal.SERVICE),
        (400, "Bad Request: not enough rights to send photos to the chat", None, Refusal.SERVICE),
        (400, "Bad Request: not enough rights to send text messages to the chat", None, Refusal.SERVICE),
        (400, "Bad Request: have no rights to send a message", None, Refusal.SERVICE),
        (400, "Bad Request: have no write access to the chat", None, Refusal.SERVICE),
        (400, "Bad Request: TOPIC_CLOSED", None, Refusal.SERVICE),
        (400, "Bad Request: CHAT_WRITE_FORBIDDEN", None, Refusal.SERVICE),
        (400, "Bad Request: chat not found", None, Refusal.SERVICE),
        (403, "Forbidden: bot was kicked from the channel chat", None, Refusal.SERVICE),
        (403, "Forbidden: bot is not a member of the supergroup chat", None, Refusal.SERVICE),
        (403, "Forbidden: bot was blocked by the user", None, Refusal.SERVICE),
        (401, "Unauthorized", None, Refusal.SERVICE),
        (401, "Unauthorized: invalid token specified", None, Refusal.SERVICE),
        (404, "Not Found", None, Refusal.SERVICE),
        (
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            {"migrate_to_chat_id": -1001999},
            Refusal.SERVICE,
        ),
        (429, "Too Many Requests: retry after 5", {"retry_after": 5}, Refusal.TRANSIENT),
        (429, "Too Many Requests: retry after 3600", {"retry_after": 3600}, Refusal.WAIT),
        (400, "Bad Request: PHOTO_INVALID_DIMENSIONS", None, Refusal.PROMPT),
        (
            400,
            "Bad Request: file of size 11000000 bytes is too big for a photo; the maximum size is 10485760 bytes",
            None,
            Refusal.PROMPT,
        ),
        (400, "Bad Request: IMAGE_PROCESS_FAILED", None, Refusal.PROMPT),
        (400, "Bad Request: PHOTO_SAVE_FILE_INVALID", None, Refusal.PROMPT),
        (400, "Bad Request: message caption is too long", None, Refusal.PROMPT),
        (502, "Bad Gateway", None, Refusal.UNKNOWN),
        (500, "Internal Server Error: restart", None, Refusal.TRANSIENT),
    ],
)
def test_each_documented_answer_of_a_send_has_its_class(
    status: int, description: str, parameters: dict | None, kind: Refusal
) -> None:
    error = classify(Answer("sendPhoto", status, description, parameters), repeatable=False)
    assert refusal_of(error) is kind, error
    assert DEFAULT_TOKEN not in str(error)


def test_a_5xx_on_a_read_is_transient_and_fixes_name_the_setting() -> None:
    read = classify(Answer("getChat", 502, "Bad Gateway"), repeatable=True)
    assert type(read) is TransientError
    migrated = classify(
        Answer(
            "sendMessage",
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            {"migrate_to_chat_id": -1009},
        ),
        repeatable=True,
        chat_setting="TELEGRAM_ALERT_CHAT_ID",
    )
    assert "set TELEGRAM_ALERT_CHAT_ID to -1009" in str(migrated)
    wait = classify(
        Answer("getMe", 429, "Too Many Requests: retry after 3600", {"retry_after": 3600}), repeatable=True
    )
    assert isinstance(wait, ServiceWait) and wait.wait_s == 3600


def test_named_faults_are_listed() -> None:
    assert {"rights", "kicked", "flood:3600", "committed_502"} <= set(NAMED_FAULTS)


# ----------------------------------------------------------------- rights and membership stop the run
def test_a_channel_that_took_the_post_right_away_stops_the_run(telegram_emulator: TelegramEmulator) -> None:
    telegram_emulator.set_bot_rights(DEFAULT_CHANNEL_ID, can_post_messages=False)
    member = requests.get(
        f"{telegram_emulator.base_url}/bot{DEFAULT_TOKEN}/getChatMember",
        params={"chat_id": DEFAULT_CHANNEL_ID, "user_id": telegram_emulator.bot_id},
        timeout=5,
    ).json()["result"]
    assert member["status"] == "administrator" and member["can_post_messages"] is False
    with pytest.raises(ServiceBlocked) as info:
        post(telegram_emulator)
    message = str(info.value)
    print(message)
    assert not isinstance(info.value, PromptRejected)
    assert "need administrator rights in the channel chat" in message
    assert "ake the bot an administrator of the channel with the right 'Post messages'" in message
    assert DEFAULT_TOKEN not in message
    # no retry and no second try as a document: the chat refuses every post alike
    assert telegram_emulator.count("sendphoto") == 1 and telegram_emulator.count("senddocument") == 0


@pytest.mark.parametrize(
    ("setup", "text", "fix"),
    [
        ("subscriber", "need administrator rights in the channel chat", "'Post messages'"),
        ("restricted", "not enough rights to send photos to the chat", "permissions"),
        ("kicked", "bot was kicked from the channel chat", "administrator allowed to post"),
        ("left", "bot is not a member of the channel chat", "administrator allowed to post"),
        ("fault:rights", "need administrator rights in the channel chat", "'Post messages'"),
        ("fault:kicked", "bot was kicked from the channel chat", "administrator allowed to post"),
    ],
)
def test_rights_and_membership_errors_stop_the_run(
    telegram_emulator: TelegramEmulator, setup: str, text: str, fix: str
) -> None:
    chat = str(DEFAULT_CHANNEL_ID)
    if setup == "subscriber":
        telegram_emulator.set_bot_rights(DEFAULT_CHANNEL_ID, "member")
    elif setup == "restricted":
        telegram_emulator.add_chat(-1007001, "supergroup", "Group", bot_status="restricted")
        telegram_emulator.set_bot_rights(-1007001, can_send_photos=False)
        chat = "-1007001"
    elif setup in ("kicked", "left"):
        telegram_emulator.set_bot_rights(DEFAULT_CHANNEL_ID, setup)
    else:
        telegram_emulator.fail_next(setup.split(":")[1], endpoints=["sendPhoto"])
    with pytest.raises(ServiceBlocked) as info:
        post(telegram_emulator, chat_id=chat)
    assert refusal_of(info.value) is Refusal.SERVICE
    assert text in str(info.value) and fix in str(info.value)
    assert telegram_emulator.count("sendphoto") == 1 and telegram_emulator.messages == []


def test_a_group_that_became_a_supergroup_names_the_new_chat_id(telegram_emulator: TelegramEmulator) -> None:
    telegram_emulator.add_chat(-4001, "group", "Old group")
    new = telegram_emulator.migrate_group(-4001)
    with pytest.raises(ServiceBlocked, match=f"set TELEGRAM_CHAT_ID to {new.id}"):
        post(telegram_emulator, chat_id="-4001")


def test_a_token_pasted_with_its_bot_prefix_gets_404_and_says_check_the_token(
    telegram_emulator: TelegramEmulator,
) -> None:
    bad = f"bot{DEFAULT_TOKEN}"
    with pytest.raises(ServiceBlocked) as info:
        post(telegram_emulator, token=bad)
    assert info.value.status == 404 and "check TELEGRAM_TOKEN: the token is malformed" in str(info.value)
    assert DEFAULT_TOKEN not in str(info.value)
    checks = publisher(telegram_emulator, token=bad).preflight()
    assert checks[0].name == "token valid" and checks[0].failed
    assert "remove that prefix" in checks[0].fix and DEFAULT_TOKEN not in checks[0].detail


def test_doctor_fails_when_the_bot_may_not_post_in_the_channel(telegram_emulator: TelegramEmulator) -> None:
    telegram_emulator.set_bot_rights(DEFAULT_CHANNEL_ID, can_post_messages=False)
    checks = {c.name: c for c in publisher(telegram_emulator, alert_chat_id=None).preflight()}
    assert not checks["token valid"].failed and not checks["chat reachable"].failed
    assert checks["bot can post"].failed and "'Post messages'" in checks["bot can post"].fix
    telegram_emulator.set_bot_rights(DEFAULT_CHANNEL_ID, can_post_messages=True)
    assert not any(c.failed for c in publisher(telegram_emulator, alert_chat_id=None).preflight())


# ----------------------------------------------------------------- flood waits
def test_a_long_flood_wait_stops_at_once_and_holds_every_method(telegram_emulator: TelegramEmulator) -> None:
    telegram_emulator.fail_next("flood:3600", endpoints=["sendPhoto"])
    before = time.time()
    with pytest.raises(ServiceWait) as info:
        post(telegram_emulator)
    print(info.value, info.value.until - before)
    assert before + 3590 <= info.value.until <= time.time() + 3601
    assert telegram_emulator.count("sendphoto") == 1  # not retried
    # the bot is held: even getMe gets the wait, and the doctor says there is nothing to fix
    me = requests.get(f"{telegram_emulator.base_url}/bot{DEFAULT_TOKEN}/getMe", timeout=5)
    assert me.status_code == 429 and 3590 <= me.json()["parameters"]["retry_after"] <= 3600
    [token_check, *_] = publisher(telegram_emulator).preflight()
    assert token_check.failed and "flood wait" in token_check.fix
    telegram_emulator.lift_flood_wait()
    assert post(telegram_emulator).message_id == "1"


def test_a_short_flood_wait_is_waited_out_and_retried(telegram_emulator: TelegramEmulator) -> None:
    telegram_emulator.fail_next("flood:1", endpoints=["sendPhoto"])
    receipt = post(telegram_emulator)
    assert receipt.message_id == "1" and telegram_emulator.count("sendphoto") == 2


# ----------------------------------------------------------------- the photo's own faults
def test_the_real_oversize_text_sends_the_image_as_a_document(telegram_emulator: TelegramEmulator) -> None:
    telegram_emulator.max_photo_bytes = 1000  # stands in for 10 MB; our own fitting lets it through
    big = png(300, 300, "white")
    receipt = publisher(telegram_emulator).publish(prompt_id="p1", png=big + b"\0" * 2000, caption="big")
    assert receipt.method == "sendDocument"
    assert f"file of size {len(big) + 2000} bytes is too big for a photo" in receipt.note
    error = classify(
        Answer(
            "sendPhoto",
            400,
            f"Bad Request: file of size {len(big)} bytes is too big for a photo; "
            "the maximum size is 10485760 bytes",
        ),
        repeatable=False,
    )
    assert isinstance(error, PhotoRefused)


# ----------------------------------------------------------------- a send whose answer failed
@pytest.mark.parametrize("fault", ["committed_502", 502, 504, RESET])
def test_a_send_answered_with_a_5xx_or_lost_is_never_repeated(
    telegram_emulator: TelegramEmulator, fault
) -> None:
    telegram_emulator.fail_next(fault, endpoints=["sendPhoto"])
    with pytest.raises(DeliveryUncertain, match="may have gone through") as info:
        post(telegram_emulator)
    assert refusal_of(info.value) is Refusal.UNKNOWN
    assert telegram_emulator.count("sendphoto") == 1
    # committed_502 posted it: exactly once
    assert len(telegram_emulator.messages) == (1 if fault == "committed_502" else 0)


def test_a_5xx_on_a_read_is_retried(telegram_emulator: TelegramEmulator) -> None:
    telegram_emulator.fail_next(502, 504, endpoints=["getChat"])
    chat = publisher(telegram_emulator).call(
        "getChat", {"chat_id": DEFAULT_CHANNEL_ID}, retry_read_timeout=True
    )
    assert chat["id"] == DEFAULT_CHANNEL_ID and telegram_emulator.count("getchat") == 3


# ----------------------------------------------------------------- through Dagster
def _run_resources(local_resources: dict[str, object], emulator: TelegramEmulator) -> dict[str, object]:
    resources = dict(local_resources)
    resources["publisher"] = publisher(emulator)
    return resources


def captions(emulator: TelegramEmulator) -> list[str]:
    # the offline generator labels its images below the prompt
    return [m["caption"].split("\n")[0] for m in emulator.messages_for(DEFAULT_CHANNEL_ID)]


def _queued(workbook_dir: Path) -> list[str]:
    return [row[0] for row in read_csv(workbook_dir / "process.csv")[1:]]


def test_a_rights_error_mid_batch_stops_the_run_and_fails_no_prompt(
    telegram_emulator: TelegramEmulator, local_resources, instance, workbook_dir
) -> None:
    prompts = ["a lighthouse", "a fox", "a heron"]
    ids = queue_prompts(workbook_dir, prompts)
    resources = _run_resources(local_resources, telegram_emulator)
    telegram_emulator.fail_next(None, "rights", endpoints=["sendPhoto"])  # the second post is refused

    first = run_partitions(resources, instance, ids)
    assert not first.success
    assert _queued(workbook_dir) == prompts  # nothing removed
    done = read_csv(workbook_dir / "done.csv")[1:]
    assert not any("FAILED" in row for row in done), done
    book = resources["ledger"].open()
    assert all(n == 0 for n in book.attempts(ids).values()), book.attempts(ids)
    [alert] = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert "need administrator rights in the channel chat" in alert["text"]
    assert "'Post messages'" in alert["text"] and DEFAULT_TOKEN not in alert["text"]
    assert captions(telegram_emulator) == ["a lighthouse"]

    second = run_partitions(resources, instance, ids)
    assert second.success
    posted = captions(telegram_emulator)
    assert sorted(posted) == sorted(prompts)  # the first is logged from the ledger, not posted again
    assert _queued(workbook_dir) == []
    assert len(read_csv(workbook_dir / "done.csv")[1:]) == 3
    assert len(telegram_emulator.messages_for(ALERTS_CHANNEL_ID)) == 1


def test_a_flood_wait_of_an_hour_pauses_until_then_without_attempts(
    telegram_emulator: TelegramEmulator, local_resources, instance, workbook_dir
) -> None:
    prompts = ["a lighthouse", "a fox"]
    ids = queue_prompts(workbook_dir, prompts)
    resources = _run_resources(local_resources, telegram_emulator)
    telegram_emulator.fail_next("flood:3600", endpoints=["sendPhoto"])
    before = time.time()

    result = run_partitions(resources, instance, ids)
    assert not result.success
    assert telegram_emulator.count("sendphoto") == 1
    ledger = resources["ledger"]
    pause = ledger.open().pause_state()
    assert pause is not None and pause.timed and pause.service == "telegram"
    print(pause.message(), pause.until - before)
    assert before + 3590 <= pause.until <= time.time() + 3601
    why = ledger.why_not_spend()
    assert why is not None and "waiting until" in why and "retry after" in why
    assert all(n == 0 for n in ledger.open().attempts(ids).values())
    assert _queued(workbook_dir) == prompts
    assert not any("FAILED" in row for row in read_csv(workbook_dir / "done.csv")[1:])
