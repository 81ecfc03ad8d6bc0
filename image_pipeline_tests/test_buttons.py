"""Buttons on preview cards: Approve / Regenerate / Hold / Skip pressed in Telegram, read by the one
getUpdates sensor, each press handled once (cursor, restarts), only from admins, only on the card that
shows the row's current text; the webhook conflict in the doctor and in the sensor.

Against the emulated Google Sheet, Hugging Face and the Telegram emulator (getUpdates, callback_query,
answerCallbackQuery, editMessageReplyMarkup / editMessageCaption, getWebhookInfo).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pytest
import requests

from image_pipeline.definitions import build_definitions
from image_pipeline.domain.checks import FAIL, Check
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID

from .conftest import QUIET, emulated_env, sensor_tick

HEADER = ["prompt", "status", "seed", "count"]
ADMIN = 42
PROMPT = "a paper boat on a puddle"


@pytest.fixture
def env(google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch) -> dict[str, str]:
    return emulated_env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        [HEADER, [PROMPT, "PREVIEW", "", ""]],
        IMAGE_PIPELINE_INSTANT="1",
        TELEGRAM_ADMIN_IDS=f"{ADMIN}, 77",
    )


def rows(google_emulator, sid: str, title: str = "Process") -> list[dict[str, str]]:
    try:
        table = google_emulator.values(sid, title)
    except Exception:  # "Done" appears with the first log
        return []
    return [dict(zip(table[0], r + [""] * (len(table[0]) - len(r)), strict=False)) for r in table[1:]]


def status(google_emulator, sid: str) -> str:
    return rows(google_emulator, sid)[0]["status"]


def launch(defs: dg.Definitions, instance: dg.DagsterInstance, run_requests) -> None:
    job = defs.resolve_job_def("process_prompts_job")
    for request in run_requests or []:
        kwargs = {"partition_key": request.partition_key} if request.partition_key else {}
        result = job.execute_in_process(
            instance=instance, run_config=QUIET, tags=dict(request.tags), **kwargs
        )
        assert result.success


def press_tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    sensor = defs.resolve_sensor_def("telegram_updates_sensor")
    resources = {k: defs.resources[k] for k in ("prompt_sheet", "publisher", "ledger")}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor(context)


def previewed(defs, instance, telegram_emulator) -> dict:
    """The sheet sensor's first tick and its run: the PREVIEW row's card in the alert chat."""
    launch(defs, instance, sensor_tick(defs, instance, None).run_requests)
    return telegram_emulator.messages_for(ALERTS_CHANNEL_ID)[-1]


def button(card: dict, label: str) -> str:
    return next(b["callback_data"] for b in card["reply_markup"]["inline_keyboard"][0] if b["text"] == label)


def sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def test_approve_is_handled_once_and_posts_the_previewed_image_once(
    env, google_emulator, telegram_emulator, instance
) -> None:
    sid = env["GOOGLE_SHEET_KEY"]
    defs = build_definitions(env)
    card = previewed(defs, instance, telegram_emulator)
    labels = [b["text"] for b in card["reply_markup"]["inline_keyboard"][0]]
    assert labels == ["Approve", "Regenerate", "Hold", "Skip"]
    assert all(1 <= len(button(card, x).encode()) <= 64 for x in labels)
    assert status(google_emulator, sid) == "AWAITING APPROVAL"

    update_id = telegram_emulator.press(ADMIN, card, button(card, "Approve"), username="editor")
    first = press_tick(defs, instance, None)
    assert [r.partition_key for r in first.run_requests] == [rows(google_emulator, sid)[0]["id"]]
    assert first.cursor == str(update_id)
    assert telegram_emulator.callback_answers[-1]["text"] == "Approved."
    assert status(google_emulator, sid) == "APPROVE"
    assert card.get("reply_markup") is None  # the keyboard is gone: the card is decided
    assert card["visible_text"].endswith("Approved by @editor")

    # the next evaluation with the cursor carried, and a restart (new definitions, same stored cursor)
    second = press_tick(defs, instance, first.cursor)
    assert isinstance(second, dg.SkipReason)
    restarted = press_tick(build_definitions(env), instance, first.cursor)
    assert isinstance(restarted, dg.SkipReason)
    assert len(telegram_emulator.callback_answers) == 1

    launch(defs, instance, first.run_requests)
    # the sheet sensor's own release of the row finds it posted: still one post
    launch(defs, instance, getattr(sensor_tick(defs, instance, None), "run_requests", None))
    [post] = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert sha(post["image"]) == sha(card["image"])
    assert rows(google_emulator, sid, "Done")[0]["status"] == "SUCCESS"


def test_a_strangers_press_and_forged_data_change_nothing(
    env, google_emulator, telegram_emulator, instance
) -> None:
    sid = env["GOOGLE_SHEET_KEY"]
    defs = build_definitions(env)
    card = previewed(defs, instance, telegram_emulator)
    approve = button(card, "Approve")
    action, pid, tag = approve.split("|")
    forged = [
        f"{action}|{pid}|{'A' * len(tag)}",  # a tag nobody signed
        f"a|{pid}|{button(card, 'Hold').split('|')[2]}",  # Hold's tag under Approve
        "a|someone-else|xyz",
    ]
    telegram_emulator.press(999, card, approve, username="stranger")
    for data in forged:
        telegram_emulator.press(ADMIN, card, data)
    result = press_tick(defs, instance, None)
    assert not getattr(result, "run_requests", None)
    answers = [a["text"] for a in telegram_emulator.callback_answers]
    assert answers[0].startswith("Not allowed") and answers[1:] == ["This button is not valid."] * 3
    assert status(google_emulator, sid) == "AWAITING APPROVAL"
    assert card["reply_markup"]["inline_keyboard"]  # still undecided
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []


def test_regenerate_makes_a_new_card_and_the_old_one_goes_stale(
    env, google_emulator, hf_emulator, telegram_emulator, instance
) -> None:
    sid = env["GOOGLE_SHEET_KEY"]
    defs = build_definitions(env)
    old = previewed(defs, instance, telegram_emulator)
    generated = sum(1 for c in hf_emulator.calls if c["method"] == "POST")
    old_approve = button(old, "Approve")
    telegram_emulator.press(ADMIN, old, button(old, "Regenerate"))
    result = press_tick(defs, instance, None)
    assert status(google_emulator, sid) == "PREVIEW"
    launch(defs, instance, result.run_requests)
    assert sum(1 for c in hf_emulator.calls if c["method"] == "POST") == generated + 1
    new = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)[-1]
    assert new["message_id"] != old["message_id"] and new["reply_markup"]
    assert status(google_emulator, sid) == "AWAITING APPROVAL"

    # the old card's Approve (its data was valid once) changes nothing; the new card's Hold does
    telegram_emulator.press(ADMIN, old, old_approve)
    telegram_emulator.press(ADMIN, new, button(new, "Hold"))
    second = press_tick(defs, instance, result.cursor)
    assert not getattr(second, "run_requests", None)
    answers = [a["text"] for a in telegram_emulator.callback_answers[-2:]]
    assert answers == ["This preview was replaced by a newer one.", "Held."]
    assert status(google_emulator, sid) == "HOLD"
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []


def test_skip_holds_the_row_and_a_row_edited_since_its_card_is_stale(
    env, google_emulator, telegram_emulator, instance
) -> None:
    sid = env["GOOGLE_SHEET_KEY"]
    defs = build_definitions(env)
    card = previewed(defs, instance, telegram_emulator)
    google_emulator.update_cell(sid, "Process", 2, 1, "a paper boat on a lake")
    telegram_emulator.press(ADMIN, card, button(card, "Skip"))
    stale = press_tick(defs, instance, None)
    assert telegram_emulator.callback_answers[-1]["text"] == "The row was edited since this preview."
    assert status(google_emulator, sid) == "AWAITING APPROVAL"

    google_emulator.update_cell(sid, "Process", 2, 1, PROMPT)  # back to the previewed text
    telegram_emulator.press(ADMIN, card, button(card, "Skip"), username=None)
    skipped = press_tick(defs, instance, stale.cursor)
    assert not getattr(skipped, "run_requests", None)
    assert status(google_emulator, sid) == "SKIP"
    assert card["visible_text"].endswith(f"Skipped by User {ADMIN}")
    # a run that covers the row leaves it alone: nothing posted, still queued
    pid = rows(google_emulator, sid)[0]["id"]
    launch(defs, instance, [dg.RunRequest(partition_key=pid)])
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []
    assert rows(google_emulator, sid)[0]["status"] == "SKIP"


def test_an_albums_buttons_are_on_a_card_of_their_own(
    env, google_emulator, telegram_emulator, instance
) -> None:
    sid = env["GOOGLE_SHEET_KEY"]
    google_emulator.update_cell(sid, "Process", 2, 4, "2")
    defs = build_definitions(env)
    card = previewed(defs, instance, telegram_emulator)
    *album, _ = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert card["method"] == "sendMessage" and len(album) == 2
    assert all(m.get("reply_markup") is None for m in album)
    telegram_emulator.press(77, card, button(card, "Approve"))
    launch(defs, instance, press_tick(defs, instance, None).run_requests)
    assert card["visible_text"].endswith("Approved by @admin") and card.get("reply_markup") is None
    posted = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    assert [sha(m["image"]) for m in posted] == [sha(m["image"]) for m in album]


def preflight(defs: dg.Definitions) -> dict[str, Check]:
    """The publisher's rows of the doctor's table (``doctor`` runs this preflight)."""
    with dg.build_resources({"publisher": defs.resources["publisher"]}) as resources:
        return {c.name: c for c in resources.publisher.preflight()}


def test_a_webhook_fails_the_doctor_and_the_sensor_says_why(env, telegram_emulator, instance) -> None:
    defs = build_definitions(env)
    assert preflight(defs)["button presses"].status != FAIL
    hook = f"{telegram_emulator.base_url}/bot{env['TELEGRAM_TOKEN']}/setWebhook"
    requests.post(hook, data={"url": "https://x.example/hook"}).raise_for_status()
    row = preflight(defs)["button presses"]
    assert row.status == FAIL and "deleteWebhook" in row.fix and "x.example" in row.detail
    result = press_tick(defs, instance, None)
    assert isinstance(result, dg.SkipReason) and "Conflict" in str(result.skip_message)
    assert "deleteWebhook" in str(result.skip_message)

    # without admins: no buttons, no sensor, no webhook row
    plain = build_definitions({**env, "TELEGRAM_ADMIN_IDS": ""})
    assert all(s.name != "telegram_updates_sensor" for s in plain.sensors)
    assert "button presses" not in preflight(plain)


def test_emulator_get_updates_offsets_limits_and_allowed_updates(env, telegram_emulator) -> None:
    url = f"{telegram_emulator.base_url}/bot{env['TELEGRAM_TOKEN']}"
    ids = [telegram_emulator.push_update({"message_reaction_count": {"n": i}}) for i in range(3)]
    press = telegram_emulator.push_update({"callback_query": {"id": "1", "data": "x"}})
    # by default reaction counts are not delivered: they must be asked for
    default = requests.post(f"{url}/getUpdates", data={}).json()["result"]
    assert [u["update_id"] for u in default] == [press]
    asked = {"allowed_updates": json.dumps(["callback_query", "message_reaction_count"]), "limit": "2"}
    two = requests.post(f"{url}/getUpdates", data=asked).json()["result"]
    assert [u["update_id"] for u in two] == ids[:2]
    rest = requests.post(f"{url}/getUpdates", data={"offset": str(ids[1] + 1)}).json()["result"]
    assert [u["update_id"] for u in rest] == [ids[2], press]  # allowed_updates is remembered
    assert requests.post(f"{url}/getUpdates", data={"offset": str(press + 1)}).json()["result"] == []
    long = {"chat_id": str(ALERTS_CHANNEL_ID), "text": "x"}
    long["reply_markup"] = json.dumps({"inline_keyboard": [[{"text": "b", "callback_data": "d" * 65}]]})
    refused = requests.post(f"{url}/sendMessage", data=long).json()
    assert refused["description"] == "Bad Request: BUTTON_DATA_INVALID"
    long["reply_markup"] = json.dumps({"inline_keyboard": [[{"text": "b", "callback_data": "d"}]]})
    requests.post(f"{url}/sendMessage", data=long).raise_for_status()
    card = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)[-1]
    telegram_emulator.press(ADMIN, card, "d")
    query = requests.post(f"{url}/getUpdates", data={"offset": str(press + 1)}).json()["result"][0]
    telegram_emulator.advance_clock(60)  # the presser's client gave up long ago
    late = requests.post(
        f"{url}/answerCallbackQuery", data={"callback_query_id": query["callback_query"]["id"]}
    )
    assert late.json()["description"].startswith("Bad Request: query is too old")
