"""A queue that never runs dry: the near-duplicate measure, the model answer's parsing, the low-queue notice
(once per episode, through the real sensor), and the refill through the real ``InferenceClient`` against the
chat-completion emulator on loopback, into the local workbook and the Google emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from image_pipeline.defs.refill import build_refill_sensor, refill_queue_job
from image_pipeline.domain.checks import OK, WARN
from image_pipeline.domain.refill_prompts import parse_prompts
from image_pipeline.domain.similarity import NEAR_DUPLICATE, PromptIndex, normalise, similarity
from image_pipeline.lifecycle.ledger import Ledger, PostLedger
from image_pipeline.lifecycle.refill import (
    REFILLS,
    RefillPlan,
    best_examples,
    refill_queue,
    text_pause,
)
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.sheets import GoogleSheet, LocalWorkbook
from image_pipeline.services.text import ModelRefused, PromptWriter
from image_pipeline.settings import refill_from
from image_pipeline.testing.emulators.chat import CHAT_TOKEN, ChatEmulator
from image_pipeline_tests.conftest import read_csv, write_csv

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DONE = [
    ["id", "prompt", "status", "information", "timestamp"],
    ["p1", "a red fox in the snow, watercolor", "SUCCESS", "", "2026-01-01"],
    ["p2", "a lighthouse at dusk, oil painting, golden hour", "SUCCESS", "", "2026-01-02"],
    ["p3", "a broken prompt", "FAILED", "", "2026-01-03"],
]


# ------------------------------------------------------------------------------------------- the measure
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("a red fox in the snow, watercolor", "A Red Fox in the Snow — Watercolor!"),  # case, punctuation
        ("ｒｅｄ ｆｏｘ， ｓｎｏｗ", "red fox, snow"),  # full-width forms (NFKC)
        ("a cat sleeping on a windowsill", "cats sleeping on the windowsill"),  # a plural, an article
        ("a red fox in the snow, watercolor", "a red fox in the snow, watercolour"),  # a spelling
        (
            "a lighthouse at dusk, oil painting, golden hour",
            "a lighthouse at dusk, golden hour, oil painting",
        ),
    ],
)
def test_near_duplicates_are_recognised(a: str, b: str) -> None:
    assert similarity(a, b) >= NEAR_DUPLICATE
    assert PromptIndex([a]).duplicate_of_any(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("a red fox in the snow", "a red fox in the rain"),  # another picture
        ("a fox in a misty forest at dawn", "a fox in a misty forest at dusk"),
        ("a lighthouse at dusk, oil painting, golden hour", "a castle at dawn, oil painting, golden hour"),
        ("a lighthouse at dusk, oil painting", "a lighthouse at dusk, oil painting, highly detailed"),
    ],
)
def test_new_pictures_are_not_duplicates(a: str, b: str) -> None:
    assert similarity(a, b) < NEAR_DUPLICATE
    assert not PromptIndex([a]).duplicate_of_any(b)


def test_normalisation() -> None:
    assert normalise("  The  Ｆｏｘ,\tin—the SNOW!! ") == "fox in snow"
    assert PromptIndex(["x"]).duplicate_of_any("   ")  # nothing left is never "new"


# ------------------------------------------------------------------------------------------- the answer
@pytest.mark.parametrize(
    "answer",
    [
        'Here are three prompts:\n\n1. "a koi pond at night"\n2) a desert caravan\n\n3. “snowy owl, macro”\n',
        '```json\n["a koi pond at night", "a desert caravan", "snowy owl, macro"]\n```',
        '{"prompts": ["a koi pond at night", "a desert caravan", "snowy owl, macro"]}',
        "- **a koi pond at night**\n* 'a desert caravan'\n• snowy owl, macro,\n",
        'Sure! ["a koi pond at night", "a desert caravan", "snowy owl, macro"] Enjoy.',
    ],
)
def test_a_malformed_answer_is_parsed(answer: str) -> None:
    assert parse_prompts(answer) == ["a koi pond at night", "a desert caravan", "snowy owl, macro"]


def test_an_answer_with_no_prompts() -> None:
    assert parse_prompts("") == []
    assert parse_prompts("\n\n  \n") == []
    assert parse_prompts("Here you go:") == []
    # a number that belongs to the prompt stays
    assert parse_prompts("1970s diner at night\n3 cats on a sofa") == [
        "1970s diner at night",
        "3 cats on a sofa",
    ]


def test_best_examples_by_reactions_else_latest() -> None:
    rows = [dict(zip(DONE[0], r, strict=True)) for r in DONE[1:]]
    assert best_examples(rows) == [
        "a lighthouse at dusk, oil painting, golden hour",
        "a red fox in the snow, watercolor",
    ]
    rows[0]["reactions_total"], rows[1]["reactions_total"] = "12", "3"
    assert best_examples(rows, limit=1) == ["a red fox in the snow, watercolor"]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def chat() -> Iterator[ChatEmulator]:
    with ChatEmulator(models={MODEL}) as emulator:
        yield emulator  # type: ignore[misc]


@pytest.fixture
def parts(tmp_path: Path, workbook_dir: Path, chat: ChatEmulator) -> dict[str, Any]:
    write_csv(workbook_dir / "process.csv", [["prompt", "status"], ["a teapot in space", ""]])
    write_csv(workbook_dir / "done.csv", DONE)
    return {
        "prompt_sheet": LocalWorkbook(folder=str(workbook_dir), retry_base_delay_s=0.01),
        "publisher": LocalOutbox(folder=str(tmp_path / "outbox"), retry_base_delay_s=0.01),
        "ledger": PostLedger(path=str(tmp_path / "ledger.sqlite")),
        "prompt_writer": PromptWriter(token=CHAT_TOKEN, model=MODEL, base_url=chat.base_url, timeout_s=10),
    }


def _refill(parts: dict[str, Any], plan: RefillPlan) -> Any:
    return refill_queue(
        parts["ledger"].open(), parts["prompt_sheet"], parts["prompt_writer"], parts["publisher"], plan
    )


def _process(workbook_dir: Path) -> list[list[str]]:
    return read_csv(workbook_dir / "process.csv")


DUPLICATES_AND_NEW = (
    "Here are 5 new prompts:\n"
    '1. "A red fox in the snow - watercolour"\n'  # near-duplicate of Done
    "2. a lighthouse at dusk, oil painting, golden hour\n"  # exact duplicate of Done
    "3. A teapot in space!\n"  # duplicate of Process
    "\n"
    "4. a koi pond under lanterns at night, ink wash\n"
    "5. a desert caravan at noon, heat haze, gouache\n"
    "6. A koi pond under lanterns at night - ink wash\n"  # near-duplicate of line 4
)


# ------------------------------------------------------------------------------------------- the refill
def test_a_refill_writes_only_new_prompts(
    parts: dict[str, Any], chat: ChatEmulator, workbook_dir: Path
) -> None:
    chat.reply = DUPLICATES_AND_NEW
    outcome = _refill(parts, RefillPlan(count=5, status="PREVIEW"))
    assert outcome.written == [
        "a koi pond under lanterns at night, ink wash",
        "a desert caravan at noon, heat haze, gouache",
    ]
    assert len(outcome.duplicates) == 4
    table = _process(workbook_dir)
    header = table[0]
    rows = [dict(zip(header, r, strict=False)) for r in table[1:]]
    assert [r["prompt"] for r in rows] == ["a teapot in space", *outcome.written]
    assert [r["status"] for r in rows[1:]] == ["PREVIEW", "PREVIEW"]
    assert [r["id"] for r in rows[1:]] == outcome.ids and all(outcome.ids)
    # the request: the real client's OpenAI shape, the configured model, the channel's posts as examples
    body = chat.bodies[-1]
    assert body["model"] == MODEL and body["messages"][0]["role"] == "system"
    assert "a lighthouse at dusk, oil painting, golden hour" in body["messages"][1]["content"]
    assert "a broken prompt" not in body["messages"][1]["content"]  # FAILED rows are no example
    assert chat.requests[-1].path == "/v1/chat/completions"
    assert any("2 new prompt(s)" in n["text"] for n in parts["publisher"].notices())


def test_a_second_refill_the_same_day_does_nothing(parts: dict[str, Any], chat: ChatEmulator) -> None:
    chat.reply = "a koi pond under lanterns at night"
    first = _refill(parts, RefillPlan(count=1, status="HOLD", daily_cap=1))
    assert first.written and not first.skipped
    second = _refill(parts, RefillPlan(count=1, status="HOLD", daily_cap=1))
    assert second.written == [] and "daily cap" in second.skipped
    assert chat.count("chat") == 1
    assert parts["ledger"].open().used_today(REFILLS) == 1


def test_status_hold_is_written(parts: dict[str, Any], chat: ChatEmulator, workbook_dir: Path) -> None:
    chat.reply = '["a paper boat on a rain puddle", "an astronaut gardening on the moon"]'
    _refill(parts, RefillPlan(count=2, status="HOLD"))
    assert [r[1] for r in _process(workbook_dir)[2:]] == ["HOLD", "HOLD"]
    # the pipeline reads them as held: queued, never posted without a person's word
    rows = parts["prompt_sheet"].read_queue().rows
    assert [r.command for r in rows[1:]] == ["HOLD", "HOLD"]


def test_credits_pause_the_refill_alone_with_one_notice(parts: dict[str, Any], chat: ChatEmulator) -> None:
    chat.credits = False
    book: Ledger = parts["ledger"].open()
    outcome = _refill(parts, RefillPlan(count=3, daily_cap=5))
    assert outcome.written == [] and "402" in outcome.skipped
    pause = text_pause(book)
    assert pause is not None and pause.service == "text"
    assert book.pause_state() is None  # the images and posts go on
    # doctor and the preflight show it as a warning of its own; spending is not paused
    rows = {c.name: c for c in parts["ledger"].preflight()}
    assert rows["spending"].status == OK
    assert rows["refill"].status == WARN and "402" in rows["refill"].detail
    again = _refill(parts, RefillPlan(count=3, daily_cap=5))
    assert again.written == [] and chat.count("chat") == 1  # paused: the model is not asked again
    notices = [n["text"] for n in parts["publisher"].notices()]
    assert sum("stopped the queue refill" in n for n in notices) == 1
    chat.credits = True
    assert [p.service for p in book.resume()] == ["text"]
    assert "refill" not in {c.name for c in parts["ledger"].preflight()}
    assert _refill(parts, RefillPlan(count=3, daily_cap=5)).written


def test_a_refused_model_stops_only_the_refill(parts: dict[str, Any], chat: ChatEmulator) -> None:
    parts["prompt_writer"] = PromptWriter(token=CHAT_TOKEN, model="no/such-model", base_url=chat.base_url)
    with pytest.raises(ModelRefused):
        parts["prompt_writer"].complete([{"role": "user", "content": "hi"}])
    outcome = _refill(parts, RefillPlan(count=3, daily_cap=5))
    assert "no/such-model" in outcome.skipped and "IMAGE_PIPELINE_REFILL_MODEL" in outcome.skipped
    assert text_pause(parts["ledger"].open()) is not None
    assert parts["ledger"].open().pause_state() is None
    _refill(parts, RefillPlan(count=3, daily_cap=5))
    notices = [n["text"] for n in parts["publisher"].notices()]
    assert sum("stopped the queue refill" in n for n in notices) == 1


def test_a_rate_limit_gives_the_refill_back(parts: dict[str, Any], chat: ChatEmulator) -> None:
    chat.fail_next(429)
    first = _refill(parts, RefillPlan(count=2, daily_cap=1))
    assert first.written == [] and "429" in first.skipped
    book = parts["ledger"].open()
    assert book.used_today(REFILLS) == 0 and text_pause(book) is None
    assert _refill(parts, RefillPlan(count=2, daily_cap=1)).written  # the next tick tries again


# ------------------------------------------------------------------------------------------- the sensor
def _tick(
    sensor: dg.SensorDefinition, parts: dict[str, Any], instance: dg.DagsterInstance, cursor: str | None
) -> Any:
    resources = {k: parts[k] for k in ("prompt_sheet", "publisher", "ledger")}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor(context)


def test_the_low_queue_notice_goes_out_once_per_episode(
    parts: dict[str, Any], instance: dg.DagsterInstance, workbook_dir: Path
) -> None:
    sensor = build_refill_sensor(low_queue=3, plan=None)

    def low_notices() -> int:
        return sum("queue is low" in n["text"] for n in parts["publisher"].notices())

    first = _tick(sensor, parts, instance, None)
    assert low_notices() == 1 and not first.run_requests
    second = _tick(sensor, parts, instance, first.cursor)
    assert low_notices() == 1  # the same episode: no second notice
    # held rows are not queued: still low, still one notice
    write_csv(
        workbook_dir / "process.csv", [["prompt", "status"], ["a", ""], ["b", "HOLD"], ["c", "PREVIEW"]]
    )
    third = _tick(sensor, parts, instance, second.cursor)
    assert low_notices() == 1
    write_csv(workbook_dir / "process.csv", [["prompt"], ["a"], ["b"], ["c"]])
    refilled = _tick(sensor, parts, instance, third.cursor)
    assert low_notices() == 1
    write_csv(workbook_dir / "process.csv", [["prompt"], ["a"]])
    _tick(sensor, parts, instance, refilled.cursor)
    assert low_notices() == 2  # a new episode after the queue was refilled


def test_the_sensor_starts_the_refill_job_which_refills(
    parts: dict[str, Any], chat: ChatEmulator, instance: dg.DagsterInstance, workbook_dir: Path
) -> None:
    chat.reply = "1. a paper boat on a rain puddle\n2. an astronaut gardening on the moon"
    sensor = build_refill_sensor(low_queue=3, plan=RefillPlan(count=2, status="PREVIEW", daily_cap=1))
    tick = _tick(sensor, parts, instance, None)
    [request] = tick.run_requests
    assert request.job_name == refill_queue_job.name
    result = refill_queue_job.execute_in_process(
        run_config=request.run_config, resources=parts, instance=instance, raise_on_error=False
    )
    assert result.success
    assert [r[0] for r in _process(workbook_dir)[2:]] == [
        "a paper boat on a rain puddle",
        "an astronaut gardening on the moon",
    ]
    # the cap is used: the next tick starts nothing (and sends no second low-queue notice)
    again = _tick(sensor, parts, instance, tick.cursor)
    assert not again.run_requests and "daily cap" in str(again.skip_reason)


def test_settings() -> None:
    assert refill_from({}) == (0, None)
    low, plan = refill_from({"IMAGE_PIPELINE_REFILL": "4", "IMAGE_PIPELINE_REFILL_STATUS": "hold"})
    assert (low, plan) == (4, RefillPlan(count=4, status="HOLD", daily_cap=1))
    with pytest.raises(ValueError, match="PREVIEW or HOLD"):
        refill_from({"IMAGE_PIPELINE_REFILL": "4", "IMAGE_PIPELINE_REFILL_STATUS": "POST"})


# ------------------------------------------------------------------------------------------- Google Sheets
def test_a_refill_appends_to_google_sheets(
    google_emulator: Any, tmp_path: Path, parts: dict[str, Any], chat: ChatEmulator
) -> None:
    key = google_emulator.create_spreadsheet(
        "Image Prompt", {"Process": [["prompt"], ["a teapot in space"]], "Done": DONE}
    )
    parts["prompt_sheet"] = GoogleSheet(
        service_account_file=str(google_emulator.write_service_account_file(tmp_path / "key.json")),
        sheets_api_base_url=google_emulator.base_url,
        drive_api_base_url=google_emulator.base_url,
        spreadsheet_key=key,
        retry_base_delay_s=0.01,
        timeout_s=5.0,
    )
    chat.reply = "a teapot in space\na paper boat on a rain puddle"
    outcome = _refill(parts, RefillPlan(count=2, status="PREVIEW"))
    assert outcome.written == ["a paper boat on a rain puddle"]
    values = google_emulator.values(key, "Process")
    assert values[0] == ["prompt", "id", "status"]
    assert values[2] == ["a paper boat on a rain puddle", outcome.ids[0], "PREVIEW"]
