"""Bad input: hostile, odd and broken sheet content and every HTTP error class of every API.

Every case ends in a defined status (SUCCESS / FAILED / INVALID, RETRY for a prompt that stays queued, or a
run that stops with a clear message and leaves the queue untouched), its message is clean (no token, no
traceback, no Bot API URL), and nothing crashes.

The sheet-content cases share ONE queue and ONE batched run on the real clients (gspread, InferenceClient,
requests) against the loopback emulators; the prompt-specific HTTP faults ride in the same batch, keyed by
the prompt's text. Faults that stop a run (a service refusing us) get a small run of their own.
"""

from __future__ import annotations

import contextvars
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from PIL import Image

from image_pipeline.definitions import build_definitions
from image_pipeline.domain.done_entries import DONE_COLUMNS
from image_pipeline.domain.errors import PromptRejected, QueueFormatError
from image_pipeline.domain.rows import clean_text
from image_pipeline.services.publisher.telegram import TelegramPublisher
from image_pipeline.testing.emulators.base import GARBAGE, RESET, TIMEOUT, TRUNCATE, Fault, Request
from image_pipeline.testing.emulators.google import GoogleEmulator
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN
from image_pipeline.testing.emulators.huggingface import HuggingFaceEmulator
from image_pipeline.testing.emulators.telegram import (
    ALERTS_CHANNEL_ID,
    DEFAULT_CHANNEL_ID,
    TelegramEmulator,
    parse_multipart,
)
from image_pipeline.testing.emulators.telegram import DEFAULT_TOKEN as TG_TOKEN

from .conftest import PIPELINE_ENV, QUIET, pass_gate

MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
REJECTED_WORD = "forbidden-subject"
ELLIPSIS = "…"


# ---------------------------------------------------------------------------------------------------
# The world: three emulators that every test of this module shares, with per-prompt fault scripts
# ---------------------------------------------------------------------------------------------------
@dataclass
class World:
    google: GoogleEmulator
    hf: HuggingFaceEmulator
    telegram: TelegramEmulator
    key_file: Path
    # exact prompt text (as HF receives it / as the caption reads) -> faults for its successive requests
    hf_script: dict[str, list[Fault]] = field(default_factory=dict)
    tg_script: dict[str, list[Fault]] = field(default_factory=dict)
    hf_inputs: list[str] = field(default_factory=list)  # every text_to_image request's prompt
    tg_captions: list[str] = field(default_factory=list)  # every sendPhoto/sendDocument request's caption

    def env(self, sid: str, data: Path, **overrides: str) -> dict[str, str]:
        env = {
            "GOOGLE_SERVICE_ACCOUNT_FILE": str(self.key_file),
            "GOOGLE_SHEETS_API_BASE_URL": self.google.base_url,
            "GOOGLE_DRIVE_API_BASE_URL": self.google.base_url,
            "GOOGLE_SHEET_KEY": sid,
            "GOOGLE_QUOTA_RETRY_S": "0.05",
            "HF_TOKEN": HF_TOKEN,
            "HF_INFERENCE_BASE_URL": f"{self.hf.base_url}/models/{MODEL}",
            "TELEGRAM_TOKEN": TG_TOKEN,
            "TELEGRAM_CHAT_ID": str(DEFAULT_CHANNEL_ID),
            "TELEGRAM_ALERT_CHAT_ID": str(ALERTS_CHANNEL_ID),
            "TELEGRAM_API_BASE_URL": self.telegram.base_url,
            "IMAGE_PIPELINE_DATA": str(data),
            "IMAGE_PIPELINE_RETRY_BASE_DELAY_S": "0.01",
            "IMAGE_PIPELINE_HTTP_TIMEOUT_S": "1",
            # module-scoped fixtures run before conftest's isolated_env: pacing off here too (the
            # emulated Telegram has no flood control in this module), or the corpus waits 3 s per post
            "TELEGRAM_POSTS_PER_MINUTE": "0",
        }
        env.update(overrides)
        return env

    def reset_faults(self) -> None:
        for emulator in (self.google, self.hf, self.telegram):
            emulator.fault_plan = None


def _apply(mp: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Secrets are bound with EnvVar, so they are read from the process environment at run time."""
    for name in PIPELINE_ENV:
        mp.delenv(name, raising=False)
    for name, value in env.items():
        mp.setenv(name, value)


def _hf_hook(world: World):
    def on_request(request: Request, endpoint: str) -> None:
        if endpoint != "text_to_image":
            return  # a preflight's GET, not a generation
        try:
            prompt = str((request.json() or {}).get("inputs", ""))
        except ValueError:
            return
        world.hf_inputs.append(prompt)
        faults = world.hf_script.get(prompt)
        if faults:
            world.hf.fail_next(faults.pop(0))

    return on_request


def _tg_hook(world: World):
    def on_request(request: Request, endpoint: str) -> None:
        if endpoint not in ("sendphoto", "senddocument"):
            return
        fields, _ = parse_multipart(request.body, request.header("content-type"))
        caption = fields.get("caption", "")
        world.tg_captions.append(caption)
        faults = world.tg_script.get(caption)
        if faults:
            world.telegram.fail_next(faults.pop(0), endpoints=[endpoint])

    return on_request


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # No quotas and no flood control: this module's batch is large and its requests are deliberate.
    with (
        GoogleEmulator(
            read_quota_per_minute=None,
            write_quota_per_minute=None,
            project_read_quota_per_minute=None,
            project_write_quota_per_minute=None,
        ) as google,
        HuggingFaceEmulator() as hf,
        TelegramEmulator(per_chat_per_minute=None, global_per_second=None) as telegram,
    ):
        for emulator in (google, hf, telegram):
            emulator.timeout_hold_s = 2  # past the 1 s client timeout, short enough to shut down quickly
        hf.loading_estimated_time = 0.05  # what a 503 "loading" answer asks us to wait
        hf.rejected_prompts.add(REJECTED_WORD)
        key_file = google.write_service_account_file(tmp_path_factory.mktemp("keys") / "chatbot_key.json")
        w = World(google, hf, telegram, key_file)
        hf.on_request = _hf_hook(w)
        telegram.on_request = _tg_hook(w)
        yield w


# ---------------------------------------------------------------------------------------------------
# Helpers shared by the batch and the single runs
# ---------------------------------------------------------------------------------------------------
def table_dicts(table: list[list[str]]) -> list[dict[str, str]]:
    if not table:
        return []
    header = table[0]
    return [dict(zip(header, r + [""] * (len(header) - len(r)), strict=False)) for r in table[1:]]


def assert_clean(text: str) -> None:
    """A message a person reads: no secret, no traceback, no Bot API URL."""
    for secret in (TG_TOKEN, HF_TOKEN, TG_TOKEN.split(":", 1)[1]):
        assert secret not in text, f"secret in {text!r}"
    assert "Traceback" not in text and 'File "' not in text, text
    assert "/bot" not in text, text


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    return [
        e.step_failure_data.user_failure_data.description
        if e.step_failure_data.user_failure_data is not None
        else e.step_failure_data.error.message
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    ]


def run_range(
    defs: dg.Definitions, instance: dg.DagsterInstance, ids: list[str]
) -> dg.ExecuteInProcessResult:
    known = set(instance.get_dynamic_partitions("prompts"))
    instance.add_dynamic_partitions("prompts", [i for i in ids if i not in known])
    job = defs.resolve_job_def("process_prompts_job")
    if len(ids) == 1:
        return job.execute_in_process(
            partition_key=ids[0], instance=instance, run_config=QUIET, raise_on_error=False
        )
    ordered = [k for k in instance.get_dynamic_partitions("prompts") if k in set(ids)]
    assert ordered == ids, "a range run needs contiguous partitions in queue order"
    return job.execute_in_process(
        instance=instance,
        run_config=QUIET,
        raise_on_error=False,
        tags={"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]},
    )


def tick_sensor(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> Any:
    sensor = defs.resolve_sensor_def("prompt_sheet_sensor")
    ctx = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={k: defs.resources[k] for k in ("prompt_sheet", "image_generator", "publisher", "ledger")},
    )
    return sensor(ctx)


def tick_schedule(defs: dg.Definitions, instance: dg.DagsterInstance) -> Any:
    """``instance`` must have a ref (not ephemeral): the schedule context re-opens it with its resources."""
    schedule = defs.resolve_schedule_def("daily_prompt_schedule")
    ctx = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 1, 2, 7, tzinfo=UTC),
        resources={
            name: defs.resources[name] for name in ("prompt_sheet", "ledger", "image_generator", "publisher")
        },
    )
    # The context opens the instance from its ref and leaves Dagster's current-instance ContextVar
    # pointing at it; evaluated in a copied context, that cannot leak into the runs that follow.
    return contextvars.copy_context().run(schedule, ctx)


def formatted(value: Any) -> str:
    """A cell as the Sheets API hands it back (FORMATTED_VALUE)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------
SUCCESS, FAILED, INVALID, RETRY, IGNORED = "SUCCESS", "FAILED", "INVALID", "RETRY", "IGNORED"
# the send's outcome is unknown: the row stays queued, held (CHECK CHANNEL), until a person looks
DELIVERY_UNCERTAIN = "UNCERTAIN"
STAYS = (RETRY, DELIVERY_UNCERTAIN)
HEADER = ["Prompt", "negative_prompt", "model", "width", "height", "seed", "caption", "notes", "Colour"]
LONG_OK = ("lighthouse-at-dawn " * 600)[:10_000]  # no space where the caption is cut: 1024 exactly
LONG_BAD = LONG_OK + "x"


@dataclass(frozen=True)
class Case:
    name: str
    prompt: Any  # column A as the person left it (str, or a typed number / boolean)
    expect: str  # SUCCESS / FAILED / INVALID / RETRY (stays queued) / IGNORED (no row at all)
    info: str = ""  # fragment of the Done information (or of the RETRY reason)
    cells: dict[str, Any] = field(default_factory=dict)  # other columns; width/height default to 64
    hf: tuple[Fault, ...] = ()  # faults for this prompt's successive text_to_image requests
    tg: tuple[Fault, ...] = ()  # faults for this prompt's successive sendPhoto requests
    hf_calls: int | None = None  # text_to_image requests for this prompt (default from expect + faults)
    tg_calls: int | None = None  # sendPhoto requests for this prompt
    posts: int | None = None  # posts in the channel with this caption
    sent: str | None = None  # the prompt as the model gets it (default: cleaned, stripped)
    caption: str | None = None  # the caption as posted (default: ``sent``)
    size: str = "64x64"
    copies: int = 1  # identical rows
    typed: bool = False  # column A typed into the UI (a formula is evaluated), not pasted as text
    late_id: str | None = None  # appended after the first sensor tick with this id cell ("=<case>": its id)

    @property
    def text(self) -> str:
        if self.sent is not None:
            return self.sent
        return clean_text(formatted(self.prompt)).strip()

    @property
    def posted_caption(self) -> str:
        return self.caption if self.caption is not None else self.text

    @property
    def expected_hf_calls(self) -> int:
        if self.hf_calls is not None:
            return self.hf_calls
        return 0 if self.expect in (INVALID, IGNORED) else (1 + len(self.hf)) * self.copies

    @property
    def expected_tg_calls(self) -> int:
        if self.tg_calls is not None:
            return self.tg_calls
        return (1 + len(self.tg)) * self.copies if self.expect == SUCCESS else 0

    @property
    def expected_posts(self) -> int:
        if self.posts is not None:
            return self.posts
        return self.copies if self.expect == SUCCESS else 0


NOT_IMAGE = "not an image"
UNCERTAIN = "delivery uncertain"

CASES = [
    # -- empty and whitespace
    Case("empty", "", INVALID, "empty prompt"),
    Case("spaces", "   ", INVALID, "empty prompt"),
    Case("tabs-newlines", "\t\n  \n", INVALID, "empty prompt"),
    Case("unicode-spaces", "\u00a0\u2003\u3000", INVALID, "empty prompt"),
    Case("only-control-chars", "\x00\x01\x1f\x7f", INVALID, "empty prompt"),
    Case("blank-line", "", IGNORED),
    # -- length
    Case("10000-chars", LONG_OK, SUCCESS, caption=LONG_OK[:1023].rstrip() + ELLIPSIS),
    Case("10001-chars", LONG_BAD, INVALID, "prompt is 10001 characters; the limit is 10000"),
    Case("50000-chars", "y" * 50_000, INVALID, "prompt is 50000 characters"),
    # -- formula-like text, pasted as text: literal everywhere, never evaluated
    Case("importxml", '=IMPORTXML("http://x","//a")', SUCCESS),
    Case("plus-cmd", "+cmd", SUCCESS),
    Case("minus-arith", "-1+1", SUCCESS),
    Case("at-sign", "@x", SUCCESS),
    Case("equals-arith", "=1+1", SUCCESS),
    Case("dde", "=cmd|' /C calc'!A0", SUCCESS),
    Case("hyperlink", '=HYPERLINK("http://evil.example","click")', SUCCESS),
    # a formula a person typed into the UI: the sheet shows (and the API returns) its value
    Case("typed-formula", "=2+3", SUCCESS, typed=True, sent="5"),
    # -- markup: sent as plain text, no parse_mode
    Case("html", "<b>x</b> & <i>", SUCCESS),
    Case("markdown", "*bold* _it_ [l](u)", SUCCESS),
    Case("html-entities", "&lt;script&gt;alert(1)&lt;/script&gt; &amp;", SUCCESS),
    # -- scripts and symbols
    Case("emoji", "🦊 a fox in 🌨️ snow with its family 👨\u200d👩\u200d👧", SUCCESS),
    Case("right-to-left", "שועל בשלג — ثعلب في الثلج \u202eabc", SUCCESS),
    Case("zalgo", "Z\u0337\u0322\u031ba\u0334l\u0338g\u0335o\u0336 fox", SUCCESS),
    Case("null-word", "null", SUCCESS),
    # -- NUL and control characters are removed; the cleaned prompt is what goes out and into Done
    Case("nul-and-control", "a\x00 fox\x07 in\x1b[31m snow\x7f", SUCCESS, sent="a fox in[31m snow"),
    Case("newline-and-tab", "line one\nline two\tcolumn", SUCCESS),
    Case("padded", "   padded fox   ", SUCCESS),
    # -- typed numbers and booleans: valid text
    Case("number-int", 42, SUCCESS),
    Case("boolean", True, SUCCESS),
    Case("number-float", 3.14, SUCCESS),
    # -- extra columns are ignored; duplicates are two prompts
    Case("unknown-columns", "a fox with odd extra cells", SUCCESS, cells={"Colour": "=1+1 <b>"}),
    Case("duplicate", "the same prompt twice", SUCCESS, copies=2),
    # -- per-row parameters
    Case("width-abc", "a fox", INVALID, "width must be a whole number, got 'abc'", cells={"width": "abc"}),
    Case("height-0", "a fox", INVALID, "height must be between 64 and 4096, got 0", cells={"height": "0"}),
    Case("seed-negative", "a fox", INVALID, "seed must be between 0 and 4294967295, got -1", cells={"seed": "-1"}),
    Case("seed-fraction", "a fox", INVALID, "seed must be a whole number, got '1.5'", cells={"seed": "1.5"}),
    Case("width-99999", "a fox", INVALID, "width must be between 64 and 4096, got 99999", cells={"width": "99999"}),
    Case("12000x800", "a very wide fox", INVALID, "width must be between 64 and 4096, got 12000", cells={"width": "12000", "height": "800"}),
    Case("width-nan", "a fox", INVALID, "width must be a whole number, got 'nan'", cells={"width": "nan"}),
    Case("seed-2^32", "a fox", INVALID, "seed must be between", cells={"seed": "4294967296"}),
    Case("width-rounded", "a fox, 100 wide", SUCCESS, cells={"width": "100"}, size="96x64"),
    Case("width-padded", "a fox, 72 wide", SUCCESS, cells={"width": " 72 "}, size="72x64"),
    Case("width-typed-number", "a fox, typed width", SUCCESS, cells={"width": 80}, size="80x64"),
    Case("seed-7.0", "a fox, seed 7.0", SUCCESS, cells={"seed": "7.0"}),
    Case("caption-column", "a fox under a caption", SUCCESS, cells={"caption": "my own caption"}, caption="my own caption"),
    # -- ids a person made: a copied row gets its own id, junk is replaced, a good hand-made id is kept
    Case("copied-original", "a row a person copies", SUCCESS, hf_calls=2, tg_calls=2, posts=2),
    Case("copied-copy", "a row a person copies", SUCCESS, late_id="=copied-original", hf_calls=2, tg_calls=2, posts=2),
    Case("junk-id", "a row with a junk id", SUCCESS, late_id="../x,y"),
    Case("handmade-id", "a row with a hand-made id", SUCCESS, late_id="handmade-id-1"),
    # -- Hugging Face answers about this prompt. With HF_INFERENCE_BASE_URL the request goes to exactly that
    #    URL, which serves one model whatever the row names: the model column is recorded as the endpoint's
    #    (a row's own unknown model under provider routing fails that row: test_hf_routing.py)
    Case("hf-unknown-model", "a fox by a missing model", SUCCESS, cells={"model": "nobody/nothing"}),
    Case("hf-400-rejected", f"a {REJECTED_WORD} scene", FAILED, "refused the prompt (HTTP 400)"),
    Case("hf-422", "a fox the provider cannot parse", FAILED, "rejected the prompt (HTTP 422)", hf=(422,), hf_calls=1),
    Case("hf-429-once", "a fox after a rate limit", SUCCESS, hf=(429,)),
    Case("hf-500-once", "a fox after a server error", SUCCESS, hf=(500,)),
    Case("hf-502-once", "a fox after a bad gateway", SUCCESS, hf=(502,)),
    Case("hf-503-loading", "a fox while the model loads", SUCCESS, hf=(503,)),
    Case("hf-timeout-once", "a fox after a timeout", SUCCESS, hf=(TIMEOUT,)),
    Case("hf-reset-once", "a fox after a reset", SUCCESS, hf=(RESET,)),
    Case("hf-garbage-once", "a fox after garbage bytes", SUCCESS, hf=(GARBAGE,)),
    Case("hf-garbage-always", "a fox that is never an image", RETRY, f"generation failed (attempt 1 of 3, will retry): the generator via endpoint answered with bytes that are {NOT_IMAGE}", hf=(GARBAGE,) * 4, hf_calls=4),
    Case("hf-500-always", "a fox on a broken server", RETRY, "server error (HTTP 500)", hf=(500,) * 4, hf_calls=4),
    # -- Telegram answers about this post
    Case("tg-429-once", "a fox after flood control", SUCCESS, tg=(429,)),
    # a 5xx to a send may follow a post the server made (no idempotency key for bots): never sent again
    Case("tg-500-once", "a fox after a Bot API error", DELIVERY_UNCERTAIN, UNCERTAIN, tg=(500,), tg_calls=1),
    Case("tg-502-once", "a fox after a proxy error", DELIVERY_UNCERTAIN, UNCERTAIN, tg=(502,), tg_calls=1),
    Case("tg-restart", "a fox while the Bot API restarts", SUCCESS, tg=("restart",)),
    Case("tg-400", "a fox Telegram refuses", FAILED, "posting failed: Telegram sendPhoto: Bad Request", tg=(400,), tg_calls=1),
    Case("tg-timeout", "a fox whose answer never comes", DELIVERY_UNCERTAIN, UNCERTAIN, tg=(TIMEOUT,), tg_calls=1),
    Case("tg-reset", "a fox whose connection resets", DELIVERY_UNCERTAIN, UNCERTAIN, tg=(RESET,), tg_calls=1),
    # the emulator applied the post and cut the answer: it IS in the channel, and Done says it may be
    Case("tg-truncate", "a fox whose answer is cut", DELIVERY_UNCERTAIN, UNCERTAIN, tg=(TRUNCATE,), tg_calls=1, posts=1),
    Case("tg-restart-always", "a fox on a restarting Bot API", RETRY, "posting failed (attempt 1 of 3, will retry)", tg=("restart",) * 4, tg_calls=4),
]  # fmt: skip
CASE_BY_NAME = {c.name: c for c in CASES}
assert len(CASE_BY_NAME) == len(CASES)


def _row(case: Case) -> list[Any]:
    if case.expect == IGNORED:
        return []
    cells = {"width": "64", "height": "64", "notes": case.name, **case.cells}
    return [case.prompt, *(cells.get(h, "") for h in HEADER[1:])]


@dataclass
class Corpus:
    sid: str
    ids: dict[str, list[str]]  # case name -> partition ids of its rows
    rows: dict[str, list[int]]  # case name -> row numbers in the queue as the person left it
    done: dict[str, dict[str, str]]  # id -> Done row
    done_table: list[list[str]]
    process_before: list[list[str]]
    process_after: list[list[str]]
    outcomes: dict[str, dict[str, Any]]  # id -> done_entry output
    posts: list[dict[str, Any]]
    notices: list[dict[str, Any]]
    hf_inputs: list[str]
    tg_captions: list[str]
    triggers: list[tuple[str, Any]]
    success: bool
    failures: list[str]
    done_formula_cells: list[tuple[int, int]]
    process_formula_cells: list[tuple[int, int]]
    unused_faults: dict[str, list[Fault]]


@pytest.fixture(scope="module")
def schedule_instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="module")
def corpus(
    world: World, schedule_instance: dg.DagsterInstance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corpus]:
    """All sheet-content cases in one queue, found by the sensor, processed by ONE batched run."""
    early = [c for c in CASES if c.late_id is None]
    late = [c for c in CASES if c.late_id is not None]
    sid = world.google.create_spreadsheet("Bad input corpus", {"Process": [HEADER]})
    rows = [r for c in early for r in [_row(c)] * c.copies]
    world.google.set_values(sid, "Process", [HEADER, *rows], raw=True)  # pasted text stays text
    row_numbers: dict[str, list[int]] = {}
    for number, case in enumerate((c for c in early for _ in range(c.copies)), start=2):
        row_numbers.setdefault(case.name, []).append(number)
        if case.typed:
            world.google.update_cell(sid, "Process", number, 1, case.prompt)
    for case in CASES:
        if case.hf:
            world.hf_script[case.text] = list(case.hf)
        if case.tg:
            world.tg_script[case.posted_caption] = list(case.tg)
    world.hf_inputs.clear()
    world.tg_captions.clear()
    data = tmp_path_factory.mktemp("corpus")
    env = world.env(sid, data / "data")
    triggers: list[tuple[str, Any]] = []
    with pytest.MonkeyPatch.context() as mp, dg.DagsterInstance.ephemeral() as instance:
        _apply(mp, env)
        # module scope runs before conftest's isolated_env: keep the Hub client away from the user's HF_HOME
        mp.setenv("HF_HOME", str(data / "hf_home"))
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        defs = build_definitions(env)
        first = tick_sensor(defs, instance, None)
        triggers.append(("sensor: new queue", first))
        ids = list(first.dynamic_partitions_requests[0].partition_keys)
        instance.add_dynamic_partitions("prompts", ids)
        by_row = {}
        table = world.google.values(sid, "Process")
        id_col = table[0].index("id")
        for r in table[1:]:
            if len(r) > id_col and r[id_col]:
                by_row.setdefault(r[HEADER.index("notes")], []).append(r[id_col])
        # a person adds rows with id cells of their own making
        for case in late:
            ref = case.late_id or ""
            id_cell = by_row[ref[1:]][0] if ref.startswith("=") else ref
            row = _row(case) + [""] * (id_col - len(HEADER)) + [id_cell]
            world.google.append_rows(sid, "Process", [row], raw=True)
        second = tick_sensor(defs, instance, first.cursor)
        triggers.append(("sensor: rows added", second))
        new_ids = list(second.dynamic_partitions_requests[0].partition_keys)
        instance.add_dynamic_partitions("prompts", new_ids)
        triggers.append(("schedule", tick_schedule(defs, schedule_instance)))
        process_before = world.google.values(sid, "Process")
        process_formulas = [
            (r, c)
            for r in range(1, len(process_before) + 1)
            for c in range(1, len(process_before[0]) + 1)
            if world.google.is_formula(sid, "Process", r, c)
        ]
        ids_by_case: dict[str, list[str]] = {}
        for r in process_before[1:]:
            if len(r) > id_col and r[id_col]:
                ids_by_case.setdefault(r[HEADER.index("notes")], []).append(r[id_col])
        all_ids = ids + new_ids
        result = run_range(defs, instance, all_ids)
        triggers.append(("sensor: after the run", tick_sensor(defs, instance, second.cursor)))
        triggers.append(("schedule: after the run", tick_schedule(defs, schedule_instance)))
        outcomes = dict(result.output_for_node("done_entry")) if result.success else {}
    leftovers = {k: v for k, v in {**world.hf_script, **world.tg_script}.items() if v}
    world.hf_script.clear()
    world.tg_script.clear()
    done_table = world.google.values(sid, "Done")
    done = {r["id"]: r for r in table_dicts(done_table)}
    formula_cells = [
        (r, c)
        for r in range(1, len(done_table) + 1)
        for c in range(1, len(done_table[0]) + 1)
        if world.google.is_formula(sid, "Done", r, c)
    ]
    yield Corpus(
        sid=sid,
        ids=ids_by_case,
        rows=row_numbers,
        done=done,
        done_table=done_table,
        process_before=process_before,
        process_after=world.google.values(sid, "Process"),
        outcomes=outcomes,
        posts=world.telegram.messages_for(DEFAULT_CHANNEL_ID),
        notices=world.telegram.messages_for(ALERTS_CHANNEL_ID),
        hf_inputs=list(world.hf_inputs),
        tg_captions=list(world.tg_captions),
        triggers=triggers,
        success=result.success,
        failures=failure_messages(result),
        done_formula_cells=formula_cells,
        process_formula_cells=process_formulas,
        unused_faults=leftovers,
    )


# ---------------------------------------------------------------------------------------------------
# Corpus assertions, one test per case
# ---------------------------------------------------------------------------------------------------
def test_the_batch_ran_through(corpus: Corpus) -> None:
    assert corpus.success, corpus.failures
    assert corpus.unused_faults == {}, "every scripted fault was met by a request"
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_ends_in_its_defined_status(corpus: Corpus, case: Case) -> None:
    ids = corpus.ids.get(case.name, [])
    if case.expect == IGNORED:  # an empty line: no id written into it, no Done row, nothing sent
        assert ids == []
        assert all(corpus.process_before[n - 1] == [] for n in corpus.rows[case.name])
        return
    assert len(ids) == case.copies and len(set(ids)) == case.copies
    for pid in ids:
        outcome = corpus.outcomes[pid]
        if case.expect in STAYS:
            assert pid not in corpus.done, "a prompt that stays queued gets no Done row yet"
            assert outcome.status == case.expect
            assert case.info in outcome.reason
            assert_clean(outcome.reason)
            continue
        row = corpus.done[pid]
        assert row["status"] == case.expect, row
        assert case.info in row["information"], row["information"]
        assert_clean(row["information"])
        assert outcome.queue_row == "removed"
        # the prompt as the sheet held it, cleaned of control characters, never cut and never evaluated
        expected_prompt = clean_text(case.sent if case.typed and case.sent else formatted(case.prompt))
        assert row["prompt"] == expected_prompt
        if case.expect == SUCCESS:
            assert row["chat_id"] == str(DEFAULT_CHANNEL_ID) and row["message_id"]
            assert row["size"] == case.size and row["seed"] and row["image_sha256"]
            assert row["model"] == MODEL


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_reaches_the_services_as_expected(corpus: Corpus, case: Case) -> None:
    """Retried when transient, once when permanent, never when invalid; the caption is the cleaned text."""
    if case.expect in (INVALID, IGNORED):
        return
    assert corpus.hf_inputs.count(case.text) == case.expected_hf_calls
    assert corpus.tg_captions.count(case.posted_caption) == case.expected_tg_calls
    posts = [p for p in corpus.posts if p["caption"] == case.posted_caption]
    assert len(posts) == case.expected_posts
    for post in posts:
        assert post["parse_mode"] is None  # plain text: markup is shown, not interpreted
        assert len(post["caption"]) <= 1024


def test_invalid_rows_never_leave_the_sheet(corpus: Corpus) -> None:
    invalid = [c for c in CASES if c.expect == INVALID]
    texts = {c.text for c in invalid if c.text}
    assert not texts & set(corpus.hf_inputs)
    assert all(text.strip() for text in corpus.hf_inputs), "an empty prompt reached the model"
    invalid_ids = {pid for c in invalid for pid in corpus.ids[c.name]}
    assert len(invalid_ids) == sum(c.copies for c in invalid)
    assert {corpus.done[pid]["status"] for pid in invalid_ids} == {INVALID}
    assert all(not corpus.done[pid]["message_id"] for pid in invalid_ids)


def test_long_prompt_caption_is_cut_and_done_keeps_it_whole(corpus: Corpus) -> None:
    case = CASE_BY_NAME["10000-chars"]
    [post] = [p for p in corpus.posts if p["caption"] == case.posted_caption]
    assert len(post["caption"]) == 1024 and post["caption"].endswith(ELLIPSIS)
    [pid] = corpus.ids[case.name]
    assert corpus.done[pid]["prompt"] == LONG_OK and len(LONG_OK) == 10_000
    assert LONG_OK in corpus.hf_inputs  # the model gets the whole prompt
    [bad] = corpus.ids["10001-chars"]
    assert corpus.done[bad]["prompt"] == LONG_BAD


def test_done_is_written_raw_so_nothing_is_a_formula(corpus: Corpus) -> None:
    assert len(corpus.done_table) > 40 and corpus.done_formula_cells == []
    formula_like = ["importxml", "plus-cmd", "minus-arith", "at-sign", "equals-arith", "dde", "hyperlink"]
    for name in formula_like:
        [pid] = corpus.ids[name]
        # literal text, not a value such as "2" or "#NAME?"
        assert corpus.done[pid]["prompt"] == CASE_BY_NAME[name].prompt
    # our id writes left the pasted text in Process alone: the only formula there is the one a person typed
    typed_row = next(i for i, r in enumerate(corpus.process_before, start=1) if "typed-formula" in r)
    assert corpus.process_formula_cells == [(typed_row, 1)]


def test_done_header_and_id_column(corpus: Corpus) -> None:
    assert corpus.done_table[0] == list(DONE_COLUMNS)  # "Done" was missing: created with the full header
    # "Process" had no id column: the sensor added it after the last header cell
    assert corpus.process_before[0] == [*HEADER, "id"]


def test_ids_made_by_a_person(corpus: Corpus) -> None:
    original, copy = corpus.ids["copied-original"][0], corpus.ids["copied-copy"][0]
    assert original != copy
    [junk] = corpus.ids["junk-id"]
    assert junk != "../x,y" and "/" not in junk and "," not in junk
    assert corpus.ids["handmade-id"] == ["handmade-id-1"]


def test_duplicates_are_two_prompts(corpus: Corpus) -> None:
    ids = corpus.ids["duplicate"]
    assert len(set(ids)) == 2
    assert [corpus.done[i]["status"] for i in ids] == [SUCCESS, SUCCESS]
    assert len({corpus.done[i]["message_id"] for i in ids}) == 2


def test_only_the_retried_rows_stay_queued(corpus: Corpus) -> None:
    notes = HEADER.index("notes")
    left = [r[notes] for r in corpus.process_after[1:] if any(r)]
    assert sorted(left) == sorted(c.name for c in CASES if c.expect in STAYS)
    assert corpus.process_after[0] == [*HEADER, "id"]


def test_failure_notices_are_clean(corpus: Corpus) -> None:
    failed = {pid for c in CASES if c.expect in (FAILED, DELIVERY_UNCERTAIN) for pid in corpus.ids[c.name]}
    assert len(corpus.notices) == len(failed)
    for notice in corpus.notices:
        assert "FAILED" in notice["text"] or "CHECK CHANNEL" in notice["text"]
        assert_clean(notice["text"])
    assert {pid for pid in failed if any(pid in n["text"] for n in corpus.notices)} == failed


def test_sensor_and_schedule_never_raise_on_the_corpus(corpus: Corpus) -> None:
    kinds = {name: type(result) for name, result in corpus.triggers}
    assert kinds["sensor: new queue"] is dg.SensorResult
    assert kinds["sensor: rows added"] is dg.SensorResult
    assert kinds["sensor: after the run"] in (dg.SensorResult, dg.SkipReason)
    for name in ("schedule", "schedule: after the run"):
        result = dict(corpus.triggers)[name]
        assert isinstance(result, dg.SkipReason) or all(isinstance(r, dg.RunRequest) for r in result)
    [first] = dict(corpus.triggers)["schedule"]
    assert first.partition_key == corpus.ids["empty"][0]  # the oldest row, even though it is invalid
    found = dict(corpus.triggers)["sensor: new queue"].dynamic_partitions_requests[0].partition_keys
    early = [c for c in CASES if c.late_id is None and c.expect != IGNORED]
    assert len(found) == sum(c.copies for c in early)  # every row but the empty line
    added = dict(corpus.triggers)["sensor: rows added"].dynamic_partitions_requests[0].partition_keys
    assert len(added) == 3


# ---------------------------------------------------------------------------------------------------
# Broken sheets: no header, no "Process" worksheet
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def instance_e() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def scene(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    instance_e: dg.DagsterInstance,
    schedule_instance: dg.DagsterInstance,
):
    """A fresh spreadsheet and data folder on the shared emulators; the caller fills the queue."""

    class Scene:
        def __init__(self) -> None:
            self.instance = instance_e
            self.schedule_instance = schedule_instance
            self.sid = ""

        def setup(self, sheets: dict[str, list[list[Any]]], **env: str) -> dg.Definitions:
            self.sid = world.google.create_spreadsheet("Scene", {name: [] for name in sheets})
            for name, rows in sheets.items():
                world.google.set_values(self.sid, name, rows, raw=True)
            self.env = world.env(self.sid, tmp_path / "data", **env)
            _apply(monkeypatch, self.env)
            self.defs = build_definitions(self.env)
            return self.defs

        def queue(self, prompts: list[str], *, gate: bool = True, **env: str) -> list[str]:
            header = ["prompt", "width", "height"]
            self.setup({"Process": [header, *[[p, "64", "64"] for p in prompts]]}, **env)
            self.ids = [r.prompt_id for r in self.defs.resources["prompt_sheet"].ensure_ids().rows]
            if gate:  # the sensor that queued them passed the gate; faults come after
                pass_gate(self.defs)
            self.before = world.google.values(self.sid, "Process")
            self.posts_before = len(world.telegram.messages_for(self.env["TELEGRAM_CHAT_ID"]))
            self.notices_before = len(world.telegram.messages_for(ALERTS_CHANNEL_ID))
            self.hf_before = world.hf.count("text_to_image")
            return self.ids

        def run(self) -> dg.ExecuteInProcessResult:
            return run_range(self.defs, self.instance, self.ids)

        def process(self) -> list[list[str]]:
            return world.google.values(self.sid, "Process")

        def done(self) -> list[dict[str, str]]:
            try:
                return table_dicts(world.google.values(self.sid, "Done"))
            except KeyError:  # the run never got as far as creating it
                return []

        def new_posts(self) -> list[dict[str, Any]]:
            return world.telegram.messages_for(self.env["TELEGRAM_CHAT_ID"])[self.posts_before :]

        def new_notices(self) -> list[dict[str, Any]]:
            return world.telegram.messages_for(ALERTS_CHANNEL_ID)[self.notices_before :]

        def assert_stopped_untouched(self, result: dg.ExecuteInProcessResult, fragment: str) -> str:
            """The run stopped with a clear message; the queue, Done and the channel are as they were."""
            assert not result.success
            [message] = failure_messages(result)
            assert fragment in message, message
            assert_clean(message)
            assert self.process() == self.before
            assert self.done() == []
            assert self.new_posts() == []
            return message

    world.reset_faults()
    yield Scene()
    world.reset_faults()


@pytest.mark.parametrize(
    "process",
    [
        pytest.param([], id="empty-worksheet"),
        pytest.param([[], ["a fox", "64"]], id="blank-first-row"),
        pytest.param([["  ", ""], ["a fox", "64"]], id="whitespace-header"),
    ],
)
def test_missing_header_row_is_a_clear_queue_format_error(scene, process) -> None:
    defs = scene.setup({"Process": process})
    with pytest.raises(QueueFormatError, match="has no header row: put 'prompt' in A1") as info:
        defs.resources["prompt_sheet"].read_queue()
    assert_clean(str(info.value))
    sensor = tick_sensor(defs, scene.instance, None)
    assert isinstance(sensor, dg.SkipReason) and "no header row" in sensor.skip_message
    schedule = tick_schedule(defs, scene.schedule_instance)
    # the schedule's gate runs before it touches the queue: the preflight names the same fix
    assert isinstance(schedule, dg.SkipReason) and "put 'prompt' in A1" in schedule.skip_message


def test_missing_process_worksheet_is_a_clear_error_and_stops_a_run(scene, world: World) -> None:
    defs = scene.setup({"Queue": [["prompt"], ["a fox"]], "Done": [list(DONE_COLUMNS)]})
    with pytest.raises(QueueFormatError, match="no worksheet named 'Process' \\(found: Queue, Done\\)"):
        defs.resources["prompt_sheet"].read_queue()
    sensor = tick_sensor(defs, scene.instance, None)
    assert isinstance(sensor, dg.SkipReason) and "no worksheet named 'Process'" in sensor.skip_message
    assert isinstance(tick_schedule(defs, scene.schedule_instance), dg.SkipReason)
    # a run for a partition that was registered before the worksheet was renamed
    result = run_range(defs, scene.instance, ["p0123456789"])
    assert not result.success
    [message] = failure_messages(result)
    # stopped by the run's gate, which names the worksheet and what the sheet has instead
    assert "no worksheet 'Process' (found: Queue, Done)" in message
    assert_clean(message)
    assert world.google.values(scene.sid, "Queue") == [["prompt"], ["a fox"]]
    assert table_dicts(world.google.values(scene.sid, "Done")) == []


# ---------------------------------------------------------------------------------------------------
# Google Sheets: every HTTP error class
# ---------------------------------------------------------------------------------------------------
def _statuses(emulator: Any, endpoint: str, since: int) -> list[Any]:
    return [r.status for r in emulator.requests[since:] if r.endpoint == endpoint]


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        pytest.param(429, None, id="429"),
        pytest.param(500, None, id="500"),
        pytest.param(503, None, id="503"),
        pytest.param(TIMEOUT, None, id="timeout"),
        pytest.param(RESET, None, id="reset"),
        pytest.param(400, "HTTP 400", id="400"),
        pytest.param(401, "HTTP 401", id="401"),
        pytest.param(403, "Share the spreadsheet with pipeline@", id="403"),
        pytest.param(
            404, "HTTP 404 NOT_FOUND: Requested entity was not found. spreadsheet not found", id="404"
        ),
    ],
)
def test_sheets_error_classes(scene, world: World, fault: Fault, fragment: str | None) -> None:
    scene.queue(["a fox for the sheets", "a cat for the sheets"])
    since = len(world.google.requests)
    # a 401 makes google-auth refresh the token and ask again (twice): all of those get the 401 too
    world.google.fail_next(*([fault] * (3 if fault == 401 else 1)), endpoints=["values.batchGet"])
    result = scene.run()
    statuses = _statuses(world.google, "values.batchGet", since)
    if fragment is None:  # transient: retried, and the run goes through
        assert result.success, failure_messages(result)
        assert statuses[:2] == [fault, 200]
        assert [r["status"] for r in scene.done()] == [SUCCESS, SUCCESS]
        assert scene.process() == [["prompt", "width", "height", "id"]]
    else:  # permanent: not retried, the run stops and the queue stays as it is
        assert statuses == [fault] * (3 if fault == 401 else 1)
        scene.assert_stopped_untouched(result, fragment)
        assert world.hf.count("text_to_image") == scene.hf_before


def test_sheets_fault_that_outlasts_the_retries_stops_the_run(scene, world: World) -> None:
    scene.queue(["a fox in a long outage"])
    world.google.fail_next(503, 503, 503, 503, endpoints=["values.batchGet"])
    result = scene.run()
    message = scene.assert_stopped_untouched(result, "the prompt sheet is unreachable")
    assert "HTTP 503" in message
    assert world.google.fault_plan is not None and world.google.fault_plan.sequence == []


def test_sheets_write_fault_is_retried_without_a_duplicate_done_row(scene, world: World) -> None:
    scene.queue(["a fox logged after a hiccup"])
    world.google.fail_next(500, endpoints=["values.append"])
    result = scene.run()
    assert result.success, failure_messages(result)
    assert [r["status"] for r in scene.done()] == [SUCCESS]
    assert scene.process() == [["prompt", "width", "height", "id"]]


def test_non_image_bytes_in_every_run_end_quarantined_as_failed(scene, world: World) -> None:
    [pid] = scene.queue(["a fox that never becomes an image"], IMAGE_PIPELINE_RETRY_ATTEMPTS="2")
    for attempt in (1, 2, 3):
        world.hf.fail_next(GARBAGE, GARBAGE)  # both tries of this run get bytes that are not an image
        result = scene.run()
        assert result.success, failure_messages(result)
        outcome = result.output_for_node("done_entry")[pid]
        if attempt < 3:
            assert outcome.status == RETRY and f"attempt {attempt} of 3" in outcome.reason
            assert scene.process() == scene.before and scene.done() == []
    [row] = scene.done()
    assert row["status"] == FAILED and "failed 3 times (quarantined)" in row["information"]
    assert NOT_IMAGE in row["information"]
    assert_clean(row["information"])
    assert scene.process() == [["prompt", "width", "height", "id"]]
    assert scene.new_posts() == []


def test_sheets_refusal_notifies_the_alert_chat(scene, world: World) -> None:
    scene.queue(["a fox on an unshared sheet"])
    world.google.fail_next(403, endpoints=["values.batchGet"])
    result = scene.run()
    scene.assert_stopped_untouched(result, "Share the spreadsheet")
    [notice] = scene.new_notices()
    assert "Share the spreadsheet" in notice["text"]


# ---------------------------------------------------------------------------------------------------
# Hugging Face and Telegram: the answers that refuse US stop the run and leave the queue untouched
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        pytest.param(401, "Hugging Face rejected the token (HTTP 401)", id="401"),
        pytest.param(402, "Hugging Face credits are depleted (HTTP 402)", id="402"),
        pytest.param(403, "Hugging Face refused access (HTTP 403)", id="403"),
        pytest.param(404, f"model {MODEL} not found via endpoint (HTTP 404)", id="404-default-model"),
    ],
)
def test_hugging_face_refusing_us_stops_the_run(scene, world: World, fault: int, fragment: str) -> None:
    scene.queue(["a fox for a refusing generator", "a cat for a refusing generator"])
    world.hf.fail_next(fault)
    result = scene.run()
    scene.assert_stopped_untouched(result, fragment)
    # not retried; with HF_CONCURRENCY=2 the second prompt's request may already be in flight
    assert scene.hf_before + 1 <= world.hf.count("text_to_image") <= scene.hf_before + 2
    [notice] = scene.new_notices()
    assert fragment in notice["text"]
    assert_clean(notice["text"])


@pytest.mark.parametrize(
    ("how", "fragment"),
    [
        pytest.param("401", "Telegram rejected the bot token (401 Unauthorized)", id="401"),
        pytest.param("403", "Add the bot to the channel as an administrator", id="403-injected"),
        pytest.param("kicked", "bot was kicked from the channel", id="403-bot-kicked"),
        pytest.param("no-chat", "chat not found. Check TELEGRAM_CHAT_ID", id="400-chat-not-found"),
    ],
)
def test_telegram_refusing_us_stops_the_run(scene, world: World, how: str, fragment: str) -> None:
    env: dict[str, str] = {}
    if how == "kicked":
        world.telegram.add_chat(-1005550001, bot_status="kicked")
        env["TELEGRAM_CHAT_ID"] = "-1005550001"
    elif how == "no-chat":
        env["TELEGRAM_CHAT_ID"] = "-1005550404"
    # a chat that is wrong from the start is caught by the run's gate; a token revoked or a bot
    # demoted after the gate passed is caught by the first send
    at_the_gate = how in ("kicked", "no-chat")
    scene.queue(["a fox for a refusing channel", "a cat for a refusing channel"], gate=not at_the_gate, **env)
    if how in ("401", "403"):
        world.telegram.fail_next(int(how), endpoints=["sendPhoto"])
    before = world.telegram.count("sendphoto")
    result = scene.run()
    scene.assert_stopped_untouched(result, fragment)
    if at_the_gate:
        assert world.telegram.count("sendphoto") == before  # nothing was generated or sent
        assert scene.new_notices() == []  # the person who launched the run reads it there
        return
    assert world.telegram.count("sendphoto") == before + 1  # not retried, the second prompt not tried
    [notice] = scene.new_notices()
    assert fragment in notice["text"]
    assert_clean(notice["text"])


# ---------------------------------------------------------------------------------------------------
# Images the publisher must handle: too large for a photo, empty, broken. A row cannot ask for 12000x800
# (INVALID, see the corpus) and the generator refuses sides over 2048, so the publisher gets them directly.
# ---------------------------------------------------------------------------------------------------
def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(buf, format="PNG")
    return buf.getvalue()


def _publisher(world: World) -> TelegramPublisher:
    return TelegramPublisher(
        token=TG_TOKEN,
        chat_id=str(DEFAULT_CHANNEL_ID),
        api_base_url=world.telegram.base_url,
        retry_base_delay_s=0.01,
    )


@pytest.mark.parametrize(
    ("size", "why"),
    [
        pytest.param((12000, 800), "12000x800 is outside Telegram's photo limits", id="12000x800"),
        pytest.param((2500, 100), "2500x100 is outside Telegram's photo limits", id="ratio-25"),
    ],
)
def test_out_of_limits_image_is_sent_as_a_document(world: World, size: tuple[int, int], why: str) -> None:
    world.reset_faults()
    receipt = _publisher(world).publish(prompt_id="pwide", png=_png(*size), caption="a wide fox")
    assert receipt.method == "sendDocument" and why in receipt.note
    message = world.telegram.messages_for(DEFAULT_CHANNEL_ID)[-1]
    assert message["method"] == "sendDocument" and (message["width"], message["height"]) == size


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="0-bytes"),
        pytest.param(_png(64, 64)[:40], id="truncated-png"),
        pytest.param(b"<html>not an image</html>", id="html"),
    ],
)
def test_undecodable_image_is_refused_cleanly_before_any_upload(world: World, data: bytes) -> None:
    before = world.telegram.count("sendphoto") + world.telegram.count("senddocument")
    with pytest.raises(PromptRejected, match="cannot be decoded; nothing was sent") as info:
        _publisher(world).publish(prompt_id="pbroken", png=data, caption="x")
    assert_clean(str(info.value))
    assert world.telegram.count("sendphoto") + world.telegram.count("senddocument") == before
