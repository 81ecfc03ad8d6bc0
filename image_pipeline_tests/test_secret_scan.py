"""No secret leaks: after runs that fail in every way a credential can, scan everywhere text ends up.

The runs: a successful one (with a rejected prompt and its notice), Hugging Face 401 with a wrong token and
402, Telegram 401 with a wrong token and 403, a foreign service-account key, connection refused by each
service (and by Google's token endpoint), 5xx answers and timeouts. The places: captured stdout/stderr,
Python logs at DEBUG, the Dagster event log and run storage (and every file of the instance, SQLite blobs
decompressed), the sheets, the data folder (asset JSON and PNGs, the ledger), the Telegram chats and the
sensor's answers. None of them may hold a token, the private key or its id, in any common encoding.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import socket
import sqlite3
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from PIL import Image

from image_pipeline.definitions import build_definitions
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.testing.emulators.base import TIMEOUT
from image_pipeline.testing.emulators.google import GoogleEmulator
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
from image_pipeline.testing.emulators.telegram import DEFAULT_TOKEN as TG_TOKEN

from .conftest import PIPELINE_ENV

MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
WRONG_TG_TOKEN = "987654321:AAMadeUpWrongTokenForTheSecretScan_z9"
WRONG_HF_TOKEN = "hf_madeUpWrongTokenForTheSecretScan42"
KICKED_CHAT_ID = -1005550001
REJECTED_WORD = "forbidden-subject"
DEBUG_CONSOLE = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
CHATTY_LOGGERS = (
    "",  # root
    "urllib3",
    "requests",
    "httpx",
    "httpx2",
    "httpcore",
    "google",
    "google.auth",
    "gspread",
    "huggingface_hub",
    "dagster",
    "image_pipeline",
)


def _pem_slice(pem: str) -> str:
    """A distinctive 40-character run from the middle of the PEM body (one line, so no line breaks)."""
    body = [line for line in pem.splitlines() if line and "-----" not in line]
    return body[len(body) // 2][10:50]


def _variants(secret: str) -> set[str]:
    """The secret as it could appear once encoded: raw, in a URL, in JSON with escaped slashes."""
    return {secret, quote(secret, safe=""), secret.replace("/", "\\/")}


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens here any more: connection refused


def _apply(mp: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in PIPELINE_ENV:
        mp.delenv(name, raising=False)
    for name, value in env.items():
        mp.setenv(name, value)


def _sqlite_texts(path: Path) -> list[str]:
    """Every cell of every table, compressed blobs (Dagster snapshots) inflated."""
    out: list[str] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return out
    with db:
        try:
            tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        except sqlite3.DatabaseError:
            return out
        for table in tables:
            for row in db.execute(f'select * from "{table}"'):  # noqa: S608 - names from sqlite_master
                for cell in row:
                    if isinstance(cell, bytes):
                        with contextlib.suppress(zlib.error):
                            cell = zlib.decompress(cell)
                        out.append(cell.decode("utf-8", "replace"))
                    elif cell is not None:
                        out.append(str(cell))
    db.close()
    return out


def _files(root: Path) -> list[tuple[str, str]]:
    """Every file under ``root`` as bytes, plus what SQLite databases and PNG text chunks hold."""
    sinks: list[tuple[str, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = f"{root.name}/{path.relative_to(root)}"
        data = path.read_bytes()
        sinks.append((f"file {name}", data.decode("latin-1")))
        if data.startswith(b"SQLite format 3"):
            sinks.append((f"sqlite {name}", "\n".join(_sqlite_texts(path))))
        if data.startswith(b"\x89PNG"):
            with Image.open(path) as im:  # text chunks, compressed ones inflated
                sinks.append((f"png metadata {name}", json.dumps(im.info, default=repr)))
    return sinks


class _RawRecords(logging.Handler):
    """Every record as a handler added by the host application would get it.

    Inserted first among the root handlers: the redaction filter that the product puts on the handlers that
    exist when it starts (pytest's among them) rewrites records in place, so a later handler would only see
    the cleaned text and the scan would prove nothing about handlers added afterwards.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def raw_log(caplog: pytest.LogCaptureFixture) -> Iterator[_RawRecords]:
    for name in CHATTY_LOGGERS:  # everything at DEBUG, the HTTP libraries included
        caplog.set_level(logging.DEBUG, logger=name)
    handler = _RawRecords()
    root = logging.getLogger()
    root.handlers.insert(0, handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def test_no_secret_reaches_any_output(
    google_emulator,
    hf_emulator,
    telegram_emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    raw_log: _RawRecords,
) -> None:
    for emulator in (google_emulator, hf_emulator, telegram_emulator):
        emulator.timeout_hold_s = 2
    for quota in ("read", "write", "project_read", "project_write"):  # many short runs within a minute
        setattr(google_emulator, f"{quota}_quota_per_minute", None)
    hf_emulator.rejected_prompts.add(REJECTED_WORD)
    telegram_emulator.add_chat(KICKED_CHAT_ID, bot_status="kicked")

    keys = tmp_path / "keys"  # outside every folder that is scanned: the key file itself is no leak
    keys.mkdir()
    key_file = google_emulator.write_service_account_file(keys / "chatbot_key.json")
    key = json.loads(key_file.read_text())
    dead_token_key = keys / "dead_token_uri.json"
    dead_token_key.write_text(json.dumps({**key, "token_uri": f"{_dead_url()}/token"}))
    with GoogleEmulator() as other:  # a key Google has never heard of
        foreign = other.service_account_info("stranger@elsewhere.iam.gserviceaccount.com")
    foreign["token_uri"] = f"{google_emulator.base_url}/token"

    secrets = {
        "telegram token": TG_TOKEN,
        "telegram token secret part": TG_TOKEN.split(":", 1)[1],
        "wrong telegram token": WRONG_TG_TOKEN,
        "wrong telegram token secret part": WRONG_TG_TOKEN.split(":", 1)[1],
        "hf token": HF_TOKEN,
        "wrong hf token": WRONG_HF_TOKEN,
        "private key": _pem_slice(key["private_key"]),
        "private_key_id": key["private_key_id"],
        "foreign private key": _pem_slice(foreign["private_key"]),
        "foreign private_key_id": foreign["private_key_id"],
        "any PEM": "PRIVATE KEY-----",
    }
    assert len(secrets["private key"]) == 40 and len(secrets["foreign private key"]) == 40

    data = tmp_path / "data"
    home = tmp_path / "home"
    home.mkdir()
    sheets: list[str] = []
    texts: list[tuple[str, str]] = []  # (where, text) produced along the way: sensor answers, outcomes

    def base_env(sid: str) -> dict[str, str]:
        return {
            "GOOGLE_SERVICE_ACCOUNT_FILE": str(key_file),
            "GOOGLE_SHEETS_API_BASE_URL": google_emulator.base_url,
            "GOOGLE_DRIVE_API_BASE_URL": google_emulator.base_url,
            "GOOGLE_SHEET_KEY": sid,
            "HF_TOKEN": HF_TOKEN,
            "HF_INFERENCE_BASE_URL": f"{hf_emulator.base_url}/models/{MODEL}",
            "TELEGRAM_TOKEN": TG_TOKEN,
            "TELEGRAM_CHAT_ID": str(DEFAULT_CHANNEL_ID),
            "TELEGRAM_ALERT_CHAT_ID": str(ALERTS_CHANNEL_ID),
            "TELEGRAM_API_BASE_URL": telegram_emulator.base_url,
            "IMAGE_PIPELINE_DATA": str(data),
            "IMAGE_PIPELINE_RETRY_ATTEMPTS": "2",
            "IMAGE_PIPELINE_RETRY_BASE_DELAY_S": "0.01",
            "IMAGE_PIPELINE_HTTP_TIMEOUT_S": "1",
        }

    with dg.instance_for_test(temp_dir=str(home)) as instance:

        def scenario(
            name: str,
            prompts: list[str],
            fragment: str,
            *,
            success: bool,
            env: dict[str, str | None] | None = None,
            before: Callable[[], None] | None = None,
        ) -> dg.ExecuteInProcessResult:
            header = ["prompt", "width", "height"]
            sid = google_emulator.create_spreadsheet(
                f"scan {name}", {"Process": [header, *[[p, "64", "64"] for p in prompts]]}
            )
            sheets.append(sid)
            good = base_env(sid)
            _apply(monkeypatch, good)
            ids = [r.prompt_id for r in build_definitions(good).resources["prompt_sheet"].ensure_ids().rows]
            bad = {k: v for k, v in {**good, **(env or {})}.items() if v is not None}
            _apply(monkeypatch, bad)
            defs = build_definitions(bad)
            sensor = defs.resolve_sensor_def("prompt_sheet_sensor")
            ctx = dg.build_sensor_context(
                instance=instance,
                cursor=None,
                resources={
                    k: defs.resources[k] for k in ("prompt_sheet", "image_generator", "publisher", "ledger")
                },
            )
            tick = contextvars.copy_context().run(sensor, ctx)
            texts.append((f"{name}: sensor", repr(tick)))
            schedule = defs.resolve_schedule_def("daily_prompt_schedule")
            sctx = dg.build_schedule_context(
                instance=instance,
                scheduled_execution_time=datetime(2026, 1, 2, 7, tzinfo=UTC),
                resources={
                    k: defs.resources[k] for k in ("prompt_sheet", "ledger", "image_generator", "publisher")
                },
            )
            texts.append((f"{name}: schedule", repr(contextvars.copy_context().run(schedule, sctx))))
            known = set(instance.get_dynamic_partitions("prompts"))
            instance.add_dynamic_partitions("prompts", [i for i in ids if i not in known])
            if before is not None:
                before()
            job = defs.resolve_job_def("process_prompts_job")
            tags = (
                {"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]}
                if len(ids) > 1
                else {}
            )
            result = job.execute_in_process(
                instance=instance,
                run_config=DEBUG_CONSOLE,
                raise_on_error=False,
                partition_key=ids[0] if len(ids) == 1 else None,
                tags=tags,
            )
            for emulator in (google_emulator, hf_emulator, telegram_emulator):
                emulator.fault_plan = None
            said = [
                e.step_failure_data.user_failure_data.description
                for e in result.all_events
                if e.event_type_value == "STEP_FAILURE" and e.step_failure_data.user_failure_data
            ]
            if result.success:
                said += [f"{v.status}: {v.detail}" for v in result.output_for_node("done_entry").values()]
            texts.append((f"{name}: outcome", "\n".join(said)))
            assert result.success == success, (name, said)
            assert fragment in "\n".join(said), (name, said)
            return result

        scenario(
            "success",
            ["a calm lake at dusk", f"a {REJECTED_WORD} scene"],
            "FAILED: ",
            success=True,
        )
        scenario(
            "local-outbox",
            ["a calm lake for the outbox", f"a {REJECTED_WORD} scene for the outbox"],
            "FAILED: ",
            success=True,
            env={"TELEGRAM_TOKEN": None, "TELEGRAM_CHAT_ID": None, "TELEGRAM_ALERT_CHAT_ID": None},
        )
        scenario(
            "hf-401-wrong-token",
            ["a fox"],
            # the run's gate meets the wrong token before any generation
            "rejected the token (HTTP 401)",
            success=False,
            env={"HF_TOKEN": WRONG_HF_TOKEN},
        )

        def deplete() -> None:
            hf_emulator.credits_depleted = True

        scenario("hf-402", ["a fox"], "credits are depleted (HTTP 402)", success=False, before=deplete)
        hf_emulator.credits_depleted = False
        # the budget guard paused spending; the operator resumes, as the pause's notice says
        paused = PostLedger(path=str(data / "ledger.sqlite")).open().resume()
        assert [p.service for p in paused] == ["images"]
        texts.append(("hf-402: the pause", repr(paused)))
        scenario(
            "telegram-401-wrong-token",
            ["a fox"],
            "Telegram rejected the bot token (401 Unauthorized)",
            success=False,
            env={"TELEGRAM_TOKEN": WRONG_TG_TOKEN},
        )
        scenario(
            "telegram-403",
            ["a fox"],
            "bot was kicked from the channel",
            success=False,
            env={"TELEGRAM_CHAT_ID": str(KICKED_CHAT_ID)},
        )
        scenario(
            "sheets-foreign-key",
            ["a fox"],
            "the service-account key was rejected",
            success=False,
            env={"GOOGLE_SERVICE_ACCOUNT_FILE": None, "GOOGLE_SERVICE_ACCOUNT_JSON": json.dumps(foreign)},
        )
        scenario(
            "sheets-refused",
            ["a fox"],
            "Google Sheets read metadata: connection failed",  # the run's gate finds no Sheets API
            success=False,
            env={"GOOGLE_SHEETS_API_BASE_URL": _dead_url()},
        )
        scenario(
            "google-token-endpoint-refused",
            ["a fox"],
            "token endpoint unreachable",
            success=False,
            env={"GOOGLE_SERVICE_ACCOUNT_FILE": str(dead_token_key)},
        )
        scenario(
            "hf-refused",
            ["a fox"],
            "unreachable (ConnectError) -> check HF_INFERENCE_BASE_URL",  # the run's gate
            success=False,
            env={"HF_INFERENCE_BASE_URL": f"{_dead_url()}/models/{MODEL}"},
        )
        scenario(
            "telegram-refused",
            ["a fox"],
            "TELEGRAM_API_BASE_URL",  # the run's gate cannot reach the Bot API and names the setting
            success=False,
            env={"TELEGRAM_API_BASE_URL": _dead_url()},
        )

        scenario(
            "5xx-generator",
            ["a fox for a broken generator"],
            "server error (HTTP 500)",
            success=True,
            before=lambda: hf_emulator.fail_next(500, 500),  # both tries
        )
        scenario(
            "5xx-bot-api",
            ["a fox for a broken Bot API"],
            "502",
            success=True,
            before=lambda: telegram_emulator.fail_next(502, 502, endpoints=["sendPhoto"]),  # both tries
        )

        def timeouts() -> None:
            hf_emulator.fail_next(TIMEOUT)  # retried
            telegram_emulator.fail_next(TIMEOUT, endpoints=["sendPhoto"])  # never retried: FAILED

        scenario(
            "timeouts",
            ["a fox after a slow generator", "a fox after a silent Bot API"],
            "delivery uncertain",
            success=True,
            before=timeouts,
        )

        def sheets_faults() -> None:
            google_emulator.fail_next(503, TIMEOUT, endpoints=["values.batchGet"])

        scenario(
            "sheets-503-then-timeout",
            ["a fox"],
            "Google Sheets read values: timed out",
            success=False,
            before=sheets_faults,
        )

        # ---- collect every place text ended up
        sinks: list[tuple[str, str]] = list(texts)
        runs = instance.get_runs()
        assert len(runs) == 15
        for run in runs:
            sinks.append((f"run {run.run_id}", serialize_value(run)))
            for entry in instance.all_logs(run.run_id):
                sinks.append((f"event log {run.run_id}", serialize_value(entry)))
        sinks += _files(home)
    sinks += _files(data)
    for sid in sheets:
        for title in ("Process", "Done"):
            with contextlib.suppress(KeyError):  # a run that stopped before creating "Done"
                sinks.append((f"sheet {title} {sid}", json.dumps(google_emulator.values(sid, title))))
    for message in telegram_emulator.messages:
        sinks.append((f"telegram chat {message['chat_id']}", json.dumps(message, default=repr)))
    captured = capfd.readouterr()
    sinks += [("stdout", captured.out), ("stderr", captured.err), ("python logs", caplog.text)]
    sinks += [("python log record", f"{r.getMessage()} {r.exc_text or ''}") for r in caplog.records]
    sinks += [("python log record as emitted", line) for line in raw_log.lines]

    # ---- the scan is not vacuous: the secrets were used, the failures were recorded where we look
    assert any(c["authorized"] for c in hf_emulator.calls) and telegram_emulator.messages_for(
        DEFAULT_CHANNEL_ID
    )
    assert google_emulator.count("token") > 0
    everything = "\n".join(text for _, text in sinks)
    for recorded in (
        "credits are depleted",
        "Telegram rejected the bot token",
        "the service-account key was rejected",
        "token endpoint unreachable",
        "delivery uncertain",
        "rejected the token (HTTP 401)",
        "bot was kicked",
        "a calm lake at dusk",
    ):
        assert recorded in everything, recorded
    assert "DEBUG" in captured.err and any(r.levelno == logging.DEBUG for r in caplog.records)

    def where(prefix: str, needle: str) -> bool:
        return any(name.startswith(prefix) and needle in text for name, text in sinks)

    for prefix in ("event log", "sqlite home", "stderr"):
        assert where(prefix, "credits are depleted"), prefix
    assert where("python logs", "server error (HTTP 500)")  # our retry warnings
    assert where("run ", "process_prompts_job")
    assert where("sqlite home", "process_prompts_job")  # compressed snapshots were inflated
    assert where("file data/outbox/notices.jsonl", "FAILED") and where("file data/outbox/posts.jsonl", "lake")
    assert where("png metadata data/assets/generated_image/", "{")
    assert where("file data/assets/", '"status"')
    assert where("sqlite data/ledger.sqlite", "a calm lake at dusk")
    # the Bot API URL (token inside) was logged by urllib3 at DEBUG: the scan below proves it was masked
    assert any("urllib3" in line and "/sendPhoto" in line for line in raw_log.lines)
    assert any("image_pipeline.retry" in line for line in raw_log.lines)

    def scan(where: str, text: str) -> list[tuple[str, str, str]]:
        found = []
        for what, secret in secrets.items():
            for variant in _variants(secret):
                at = text.find(variant)
                if at >= 0:
                    context = text[max(0, at - 80) : at + len(variant) + 40].replace(variant, f"<{what}>")
                    found.append((what, where, context))
        return found

    assert scan("canary", f"x {TG_TOKEN} y") and scan("canary", quote(TG_TOKEN, safe=""))
    leaks = [leak for where, text in sinks for leak in scan(where, text)]
    kinds = Counter(f"{what} in {where.split(' ')[0]}" for what, where, _ in leaks)
    details = [f"{what} in {where}: ...{context}..." for what, where, context in leaks[:10]]
    assert leaks == [], "\n".join([*(f"{n} x {k}" for k, n in kinds.most_common()), "", *details])
