"""`image-pipeline doctor`, the preflight job and the schedule/sensor gate, against the emulators."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.cli import main
from image_pipeline.defs.jobs import preflight_job
from image_pipeline.defs.schedules import build_daily_schedule
from image_pipeline.defs.sensors import build_prompt_sheet_sensor
from image_pipeline.lifecycle import gate as preflight
from image_pipeline.settings import resources_from
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import HF_MODEL, Sandbox

from .conftest import skip_reason_of

EMAIL = "pipeline@image-pipeline.iam.gserviceaccount.com"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    preflight.forget()
    with Sandbox(tmp_path / "sandbox") as sb:
        yield sb
    preflight.forget()


@pytest.fixture
def doctor(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Runs `image-pipeline doctor` in process with the sandbox's env; returns (exit code, output)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGE_PIPELINE_DATA", str(tmp_path / "data"))
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)

    def run(**env: str | None) -> tuple[int, str]:
        for key, value in env.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = main(["doctor"])
        out = capsys.readouterr().out
        secrets = [sandbox.hf.token, sandbox.telegram.token, sandbox.telegram.token.split(":")[-1]]
        key = json.loads(sandbox.key_file.read_text())
        secrets += [key["private_key_id"], key["private_key"].splitlines()[1]]
        for secret in secrets:
            assert secret not in out, "a secret reached the doctor's output"
        return code, out

    return run


def line(out: str, service: str, check: str) -> str:
    for text in out.splitlines():
        if text.startswith(service) and f" {check} " in f" {text[len(service) :].strip()} ":
            return text
    raise AssertionError(f"no {service} / {check} line in:\n{out}")


def test_all_services_ready(doctor) -> None:
    code, out = doctor()
    assert code == 0, out
    for service, check in [
        ("Sheets", "key valid"),
        ("Sheets", "spreadsheet reachable"),
        ("Sheets", "worksheets present"),
        ("Sheets", "header as expected"),
        ("Sheets", "write permission"),
        ("Hugging Face", "token valid"),
        ("Hugging Face", "model reachable"),
        ("Telegram", "token valid"),
        ("Telegram", "chat reachable"),
        ("Telegram", "bot can post"),
        ("Telegram", "alert chat"),
        ("Budget", "spending"),
    ]:
        assert "  ok  " in line(out, service, check), line(out, service, check)
    assert "all services ready" in out


def test_sheet_not_shared(doctor, sandbox: Sandbox) -> None:
    sandbox.google.unshare(sandbox.spreadsheet_id, EMAIL)
    code, out = doctor()
    assert code == 1
    text = line(out, "Sheets", "spreadsheet reachable")
    assert "FAIL" in text and f"share the spreadsheet with {EMAIL} as Editor" in text
    assert "skip" in line(out, "Sheets", "write permission")


def test_sheet_shared_read_only(doctor, sandbox: Sandbox) -> None:
    sandbox.google.share(sandbox.spreadsheet_id, EMAIL, role="reader")
    code, out = doctor()
    assert code == 1
    text = line(out, "Sheets", "write permission")
    assert "FAIL" in text and "may only view" in text and "as Editor" in text
    assert "  ok  " in line(out, "Sheets", "spreadsheet reachable")


def test_wrong_spreadsheet_key(doctor) -> None:
    code, out = doctor(GOOGLE_SHEET_KEY="1NoSuchSpreadsheet")
    assert code == 1
    text = line(out, "Sheets", "spreadsheet reachable")
    assert "FAIL" in text and "check GOOGLE_SHEET_KEY" in text


def test_missing_queue_worksheet_and_empty_header(doctor, sandbox: Sandbox) -> None:
    code, out = doctor(GOOGLE_PROCESS_WORKSHEET="Queue")
    assert code == 1
    text = line(out, "Sheets", "worksheets present")
    assert "FAIL" in text and "add a worksheet named 'Queue'" in text

    sid = sandbox.google.create_spreadsheet("Blank", {"Process": [], "Done": []})
    code, out = doctor(GOOGLE_SHEET_KEY=sid, GOOGLE_PROCESS_WORKSHEET=None)
    assert code == 1
    text = line(out, "Sheets", "header as expected")
    assert "FAIL" in text and "put 'prompt' in A1 of 'Process'" in text


def test_rejected_service_account_key(doctor, sandbox: Sandbox, tmp_path: Path) -> None:
    # the right e-mail signed with some other key: Google answers invalid_grant
    forged = sandbox.google.service_account_info("someone-else@image-pipeline.iam.gserviceaccount.com")
    forged["client_email"] = EMAIL
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    code, out = doctor(GOOGLE_SERVICE_ACCOUNT_FILE=str(path))
    assert code == 1
    text = line(out, "Sheets", "key valid")
    assert "FAIL" in text and "create a new JSON key" in text
    assert forged["private_key_id"] not in out


def test_hugging_face_endpoint_token_and_credits(doctor, sandbox: Sandbox) -> None:
    code, out = doctor(HF_TOKEN="hf_wrongTokenWrongToken")
    assert code == 1
    assert "FAIL" in line(out, "Hugging Face", "token valid")
    assert "hf_wrongTokenWrongToken" not in out

    sandbox.hf.credits_depleted = True
    code, out = doctor(HF_TOKEN=sandbox.hf.token)
    assert code == 1
    text = line(out, "Hugging Face", "model reachable")
    assert "FAIL" in text and "credits depleted" in text and "add credits" in text


def test_hugging_face_hub_checks(doctor, sandbox: Sandbox) -> None:
    routed = {"HF_INFERENCE_BASE_URL": None, "HF_ENDPOINT": sandbox.hf.base_url}
    code, out = doctor(**routed, HF_PROVIDER="fal-ai")
    assert code == 0, out
    assert "via fal-ai" in line(out, "Hugging Face", "model reachable")

    code, out = doctor(HF_PROVIDER="replicate")
    assert code == 1
    text = line(out, "Hugging Face", "model reachable")
    assert "replicate does not serve" in text and "set HF_PROVIDER to one of: fal-ai, hf-inference" in text

    sandbox.hf.unknown_models.add("acme/nothing")
    code, out = doctor(HF_PROVIDER="auto", HF_MODEL="acme/nothing")
    assert code == 1
    assert "check HF_MODEL" in line(out, "Hugging Face", "model reachable")

    sandbox.hf.token_permissions = ["repo.content.read"]
    code, out = doctor(HF_MODEL=HF_MODEL)
    assert code == 1
    assert "Make calls to Inference Providers" in line(out, "Hugging Face", "token valid")

    code, out = doctor(HF_TOKEN="hf_revokedRevokedRevoked")
    assert code == 1
    text = line(out, "Hugging Face", "token valid")
    assert "invalid or revoked" in text and "skip" in line(out, "Hugging Face", "model reachable")


def test_telegram_token_chat_and_rights(doctor, sandbox: Sandbox) -> None:
    code, out = doctor(TELEGRAM_TOKEN="123456:wrongwrongwrongwrongwrong")
    assert code == 1
    assert "@BotFather" in line(out, "Telegram", "token valid")
    assert "wrongwrongwrong" not in out

    code, out = doctor(TELEGRAM_TOKEN=sandbox.telegram.token, TELEGRAM_CHAT_ID="-1009999999999")
    assert code == 1
    assert "check TELEGRAM_CHAT_ID" in line(out, "Telegram", "chat reachable")

    sandbox.telegram.find_chat(DEFAULT_CHANNEL_ID).bot_status = "member"
    code, out = doctor(TELEGRAM_CHAT_ID=str(DEFAULT_CHANNEL_ID))
    assert code == 1
    text = line(out, "Telegram", "bot can post")
    assert "FAIL" in text and "as an administrator with the right 'Post messages'" in text

    sandbox.telegram.find_chat(DEFAULT_CHANNEL_ID).bot_status = "administrator"
    sandbox.telegram.find_chat(ALERTS_CHANNEL_ID).bot_status = "left"
    code, out = doctor()
    assert code == 1
    assert "FAIL" in line(out, "Telegram", "alert chat")


def test_embedded_default_needs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGE_PIPELINE_DATA", str(tmp_path / "data"))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "offline preview generator" in out and "local outbox" in out


@pytest.fixture
def sandbox_resources(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    # the tokens are bound with EnvVar, so they are read from the environment when resources are built
    for key, value in {**sandbox.env(), "IMAGE_PIPELINE_DATA": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    return resources_from()


def test_schedule_and_sensor_refuse_with_the_doctor_message(
    sandbox: Sandbox, sandbox_resources: dict[str, object]
) -> None:
    resources = sandbox_resources
    sandbox.telegram.find_chat(DEFAULT_CHANNEL_ID).bot_status = "member"
    schedule = build_daily_schedule(cron="0 7 * * *", timezone="UTC", per_tick=1)
    sensor = build_prompt_sheet_sensor(instant=True, interval_s=30)
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(
            instance=instance,
            resources=resources,
            scheduled_execution_time=datetime(2026, 11, 25, 7, tzinfo=UTC),
        ) as context:
            result = schedule(context)
        assert isinstance(result, dg.SkipReason)
        assert result.skip_message.startswith("preflight failed, no run started")
        assert "as an administrator with the right 'Post messages'" in result.skip_message

        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            tick = sensor(context)
        result = skip_reason_of(tick)
        assert result is not None, tick
        assert "Telegram bot can post" in result.skip_message
        assert sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID) == []

        # fixed by the operator: the very next tick starts work (a failure is never cached)
        sandbox.telegram.find_chat(DEFAULT_CHANNEL_ID).bot_status = "administrator"
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        assert isinstance(result, dg.SensorResult) and result.run_requests


def test_gate_caches_a_pass_not_a_failure(sandbox: Sandbox, sandbox_resources: dict[str, object]) -> None:
    resources = sandbox_resources
    with dg.build_resources(
        {k: resources[k] for k in ("prompt_sheet", "image_generator", "publisher")}
    ) as built:
        trio = [built.prompt_sheet, built.image_generator, built.publisher]
        assert preflight.gate(trio) is None
        calls = len(sandbox.telegram.requests)
        assert calls >= 3  # getMe, getChat, getChatMember at least
        sandbox.telegram.find_chat(DEFAULT_CHANNEL_ID).bot_status = "member"
        assert preflight.gate(trio) is None  # the pass is trusted for OK_TTL_S, without a call
        assert len(sandbox.telegram.requests) == calls
        assert preflight.gate(trio, ttl_s=0) is not None
        assert preflight.gate(trio) is not None  # the failure was not cached as a pass


def test_preflight_job_in_the_ui_fails_with_the_fix(
    sandbox: Sandbox, sandbox_resources: dict[str, object]
) -> None:
    resources = sandbox_resources
    needed = {k: resources[k] for k in ("prompt_sheet", "image_generator", "publisher", "ledger")}
    result = preflight_job.execute_in_process(resources=needed, raise_on_error=False)
    assert result.success
    sandbox.google.share(sandbox.spreadsheet_id, EMAIL, role="reader")
    result = preflight_job.execute_in_process(resources=needed, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.step_failure_data.user_failure_data.description
    assert "Sheets write permission" in description and f"share the spreadsheet with {EMAIL}" in description
    table = failure.step_failure_data.user_failure_data.metadata["checks"].value
    assert "| Sheets | write permission | **FAIL** |" in table
