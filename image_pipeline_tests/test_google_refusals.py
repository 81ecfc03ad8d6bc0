"""Google's refusals as the real service sends them, through gspread + google-auth against the emulator:
protected ranges, the cell limit, disabled APIs, Drive's rate limit, the token endpoint's invalid_grant
texts, 5xx after a committed write, worksheet titles matched case-insensitively; and what the product
does with each (image_pipeline.services.sheets.refusals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import gspread
import pytest
from google.auth.exceptions import RefreshError

from image_pipeline.definitions import build_definitions
from image_pipeline.domain.checks import FAIL, OK
from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.errors import ServiceBlocked, TransientError, WriteOutcomeUnknown
from image_pipeline.domain.refusals import Refusal, refusal_of
from image_pipeline.domain.statuses import REMOVED
from image_pipeline.services.sheets.refusals import (
    API_RULES,
    TOKEN_RULES,
    GoogleAnswer,
    classify_api,
    is_rows_moved,
)
from image_pipeline.testing.emulators.base import COMMITTED_503
from image_pipeline.testing.emulators.google import (
    NAMED_FAULTS,
    PROJECT_NUMBER,
    PROTECTED_MESSAGE,
    GoogleEmulator,
)
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID

from .conftest import QUIET, emulated_env, sensor_tick
from .test_emulator_google import client_for
from .test_sheets_client import sheet_for

CELL_LIMIT_TEXT = (
    "This action would increase the number of cells in the workbook above the limit of {} cells."
)


@pytest.fixture
def sid(google_emulator: GoogleEmulator) -> str:
    google_emulator.service_account_info()
    return google_emulator.create_spreadsheet(
        "Image Prompt",
        {"Process": [["prompt"], ["a fox"], ["a cat"], ["a owl"]], "Done": [["id", "prompt", "status"]]},
    )


def api_error(call: Any) -> gspread.exceptions.APIError:
    with pytest.raises(gspread.exceptions.APIError) as info:
        call()
    return info.value


# ------------------------------------------------------------------------------- the emulator, by client
def test_a_protected_sheet_refuses_every_write_and_applies_nothing(
    google_emulator: GoogleEmulator, sid: str
) -> None:
    google_emulator.protect(sid, "Process")
    book = client_for(google_emulator).open_by_key(sid)
    process = book.worksheet("Process")
    delete = {
        "deleteDimension": {"range": {"sheetId": 0, "dimension": "ROWS", "startIndex": 1, "endIndex": 2}}
    }
    grow_done = {"appendDimension": {"sheetId": book.worksheet("Done").id, "dimension": "ROWS", "length": 5}}
    # the batch is atomic: the request before the refused one is not applied either
    error = api_error(lambda: book.batch_update({"requests": [grow_done, delete]}))
    assert error.code == 400 and error.error["status"] == "INVALID_ARGUMENT"
    assert error.error["message"] == f"Invalid requests[1].deleteDimension: {PROTECTED_MESSAGE}"
    assert google_emulator.grid_size(sid, "Done")[0] == 1000
    error = api_error(lambda: process.update([["typed"]], "A2"))
    assert error.error["message"] == PROTECTED_MESSAGE
    error = api_error(lambda: process.append_row(["new"], table_range="A1"))
    assert error.error["message"] == PROTECTED_MESSAGE
    assert google_emulator.values(sid, "Process") == [["prompt"], ["a fox"], ["a cat"], ["a owl"]]
    assert process.get_all_values()[1] == ["a fox"]  # reading is not editing


def test_a_protected_band_of_rows_and_its_editors(google_emulator: GoogleEmulator, sid: str) -> None:
    email = google_emulator.service_account_info()["client_email"]
    pid = google_emulator.protect(sid, "Process", rows=(1, 1))  # the header row only
    process = client_for(google_emulator).open_by_key(sid).worksheet("Process")
    process.update([["a red fox"]], "A2")  # outside the band
    assert api_error(lambda: process.update([["title"]], "A1")).error["message"] == PROTECTED_MESSAGE
    google_emulator.unprotect(sid, pid)
    google_emulator.protect(sid, "Process", editors=[email])  # the account may edit it
    process.update([["title"]], "A1")
    assert google_emulator.values(sid, "Process")[:2] == [["title"], ["a red fox"]]


def test_the_workbook_cell_limit(google_emulator: GoogleEmulator, sid: str) -> None:
    google_emulator.cell_limit = 2 * 1000 * 26  # exactly the two default grids
    done = client_for(google_emulator).open_by_key(sid).worksheet("Done")
    done.append_rows([["p1", "x", "SUCCESS"]], table_range="A1")  # fills a row the grid already has
    error = api_error(lambda: done.append_rows([["p", "y", "SUCCESS"]] * 1000, table_range="A1"))
    assert error.code == 400 and error.error["message"] == CELL_LIMIT_TEXT.format(2 * 1000 * 26)
    assert len(google_emulator.values(sid, "Done")) == 2


def test_disabled_apis_answer_in_each_apis_shape(google_emulator: GoogleEmulator, sid: str) -> None:
    gc = client_for(google_emulator)
    gc.open_by_key(sid)  # the token first: the API check comes after authentication
    google_emulator.disabled_apis = {"sheets"}
    # (gspread's open_by_key turns any 403 into a bare PermissionError: the lower-level call keeps the body)
    error = api_error(lambda: gc.http_client.fetch_sheet_metadata(sid))
    assert error.code == 403 and error.error["status"] == "PERMISSION_DENIED"
    assert error.error["message"].startswith(
        f"Google Sheets API has not been used in project {PROJECT_NUMBER} before or it is disabled."
    )
    [info] = [d for d in error.error["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["reason"] == "SERVICE_DISABLED"
    assert info["metadata"] == {"consumer": f"projects/{PROJECT_NUMBER}", "service": "sheets.googleapis.com"}
    google_emulator.disabled_apis = {"drive"}
    error = api_error(lambda: gc.open("Image Prompt"))
    assert error.error["errors"][0]["domain"] == "usageLimits"
    assert error.error["errors"][0]["reason"] == "accessNotConfigured"
    assert "Google Drive API has not been used" in error.error["message"]


def test_named_faults(google_emulator: GoogleEmulator, sid: str) -> None:
    assert set(NAMED_FAULTS) >= {"protected", "service_disabled", "drive_rate_limit"}
    gc = client_for(google_emulator)
    process = gc.open_by_key(sid).worksheet("Process")
    google_emulator.fail_next("drive_rate_limit", endpoints=["drive.files.list"])
    error = api_error(lambda: gc.open("Image Prompt"))
    assert (error.code, error.error["errors"][0]["domain"], error.error["errors"][0]["reason"]) == (
        403,
        "usageLimits",
        "userRateLimitExceeded",
    )
    google_emulator.fail_next("protected", endpoints=["values.update"])
    assert api_error(lambda: process.update([["x"]], "A2")).error["message"] == PROTECTED_MESSAGE
    google_emulator.fail_next("service_disabled", endpoints=["values.get"])
    assert api_error(lambda: process.get_all_values()).error["details"][1]["reason"] == "SERVICE_DISABLED"
    assert google_emulator.values(sid, "Process")[1] == ["a fox"]


def test_token_endpoint_clock_skew_and_a_deleted_account(google_emulator: GoogleEmulator) -> None:
    info = google_emulator.service_account_info()
    google_emulator.clock_offset_s = 2 * 3600  # this machine's clock is two hours slow
    with pytest.raises(RefreshError, match="Invalid JWT: Token must be a short-lived token"):
        client_for(google_emulator, info).http_client.login()
    google_emulator.clock_offset_s = 200  # within the tolerance
    client_for(google_emulator, info).http_client.login()
    google_emulator.delete_account(info["client_email"])
    with pytest.raises(RefreshError, match="invalid_grant: Invalid grant: account not found"):
        client_for(google_emulator, info).http_client.login()


def test_titles_match_case_insensitively_and_a_case_twin_is_refused(
    google_emulator: GoogleEmulator, sid: str
) -> None:
    book = client_for(google_emulator).open_by_key(sid)
    assert book.values_get("'done'!A1:C1")["values"] == [["id", "prompt", "status"]]
    error = api_error(lambda: book.add_worksheet("DONE", 10, 3))
    assert error.error["message"] == (
        'Invalid requests[0].addSheet: A sheet with the name "DONE" already exists. Please enter another name.'
    )


# ------------------------------------------------------------------------------------- the classification
def answer(code: int, message: str = "", **fields: Any) -> GoogleAnswer:
    return GoogleAnswer.from_error(code, {"code": code, "message": message, **fields})


def test_every_rule_cites_its_source() -> None:
    assert all(rule.source for rule in (*API_RULES, *TOKEN_RULES))


@pytest.mark.parametrize(
    ("status", "fields", "repeatable", "expected"),
    [
        (503, {}, True, Refusal.TRANSIENT),
        (503, {}, False, Refusal.UNKNOWN),  # values.append: may have been committed
        (500, {}, False, Refusal.UNKNOWN),
        (429, {"status": "RESOURCE_EXHAUSTED"}, False, Refusal.TRANSIENT),
        (
            403,
            {"errors": [{"domain": "usageLimits", "reason": "userRateLimitExceeded"}]},
            True,
            Refusal.TRANSIENT,
        ),
        (
            403,
            {"errors": [{"domain": "usageLimits", "reason": "rateLimitExceeded"}]},
            True,
            Refusal.TRANSIENT,
        ),
        (
            403,
            {"errors": [{"domain": "usageLimits", "reason": "accessNotConfigured"}]},
            True,
            Refusal.SERVICE,
        ),
        (403, {"status": "PERMISSION_DENIED"}, True, Refusal.SERVICE),
        (401, {"status": "UNAUTHENTICATED"}, True, Refusal.SERVICE),
        (400, {"message": PROTECTED_MESSAGE}, False, Refusal.SERVICE),
        (400, {"message": "Unable to parse range: Nope!A1"}, True, Refusal.SERVICE),
    ],
)
def test_answers_are_classified(status: int, fields: dict, repeatable: bool, expected: Refusal) -> None:
    error = classify_api(answer(status, **fields), "x", repeatable=repeatable)
    assert refusal_of(error) is expected, error


def test_only_the_known_moved_rows_answers_are_shifts() -> None:
    assert is_rows_moved(400, "Invalid requests[3].deleteDimension: Cannot delete a row that doesn't exist.")
    assert is_rows_moved(400, "Range ('Process'!R5C1:R6C3) exceeds grid limits. Max rows: 4, max columns: 3")
    assert not is_rows_moved(400, f"Invalid requests[0].deleteDimension: {PROTECTED_MESSAGE}")
    assert not is_rows_moved(400, CELL_LIMIT_TEXT.format(10000000))
    assert not is_rows_moved(400, 'Invalid JSON payload received. Unknown name "x": Cannot find field.')


# ------------------------------------------------------------------------------------------ the product
def test_a_protected_queue_stops_the_removal_with_googles_text(
    google_emulator: GoogleEmulator, sid: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    rows = sheet.ensure_ids().rows
    google_emulator.protect(sid, "Process")
    before = google_emulator.count("sheets.batchUpdate")
    with pytest.raises(ServiceBlocked) as info:
        sheet.remove_rows({r.prompt_id: r.fingerprint() for r in rows[:2]})
    assert PROTECTED_MESSAGE in str(info.value) and "Protect sheets and ranges" in str(info.value)
    assert info.value.status == 400
    print("batchUpdate requests:", google_emulator.count("sheets.batchUpdate") - before)
    assert [r[0] for r in google_emulator.values(sid, "Process")[1:]] == ["a fox", "a cat", "a owl"]


def test_the_cell_limit_on_the_done_append_stops_the_run(
    google_emulator: GoogleEmulator, sid: str, tmp_path: Path
) -> None:
    google_emulator.cell_limit = 2 * 1000 * 26
    google_emulator.append_rows(sid, "Done", [["r"]] * 999)  # Done's grid is full
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    with pytest.raises(ServiceBlocked, match="10,000,000 cells") as info:
        sheet.append_done([DoneEntry(id="p1", prompt="x", status="SUCCESS", information="")])
    assert CELL_LIMIT_TEXT.format(2 * 1000 * 26) in str(info.value)
    assert google_emulator.count("values.append") == 1  # not retried


def test_a_committed_503_on_the_done_append_is_read_back_not_repeated(
    google_emulator: GoogleEmulator, sid: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    google_emulator.fail_next(COMMITTED_503, endpoints=["values.append"])
    entries = [DoneEntry(id=f"p{i}", prompt=f"x{i}", status="SUCCESS", information="") for i in range(3)]
    sheet.append_done(entries)
    assert [r[0] for r in google_emulator.values(sid, "Done")[1:]] == ["p0", "p1", "p2"]
    assert google_emulator.count("values.append") == 1


def test_a_committed_503_on_an_id_write_or_a_delete_is_read_back(
    google_emulator: GoogleEmulator, sid: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    google_emulator.fail_next(COMMITTED_503, endpoints=["values.batchUpdate"])
    ids = [r.prompt_id for r in sheet.ensure_ids().rows]
    assert len(set(ids)) == 3 and google_emulator.count("values.batchUpdate") == 1
    assert [r[1] for r in google_emulator.values(sid, "Process")[1:]] == ids
    rows = sheet.read_queue().rows
    google_emulator.fail_next(COMMITTED_503, endpoints=["sheets.batchUpdate"])
    outcome = sheet.remove_rows({rows[0].prompt_id: rows[0].fingerprint()})
    assert outcome == {rows[0].prompt_id: "removed"}
    assert [r[0] for r in google_emulator.values(sid, "Process")[1:]] == ["a cat", "a owl"]
    assert google_emulator.count("sheets.batchUpdate") == 1


def test_a_5xx_on_a_non_repeatable_write_is_not_retried(
    google_emulator: GoogleEmulator, sid: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    backend = sheet.backend
    backend.read("Done")
    google_emulator.fail_next(503, endpoints=["values.append"])
    with pytest.raises(WriteOutcomeUnknown, match="read back"):
        backend.append("Done", [["p9", "z", "SUCCESS"]])
    google_emulator.fail_next(503, endpoints=["values.get"])
    assert backend.read("Done")[0] == ["id", "prompt", "status"]  # a read is retried


def test_drive_rate_limit_is_retried(google_emulator: GoogleEmulator, sid: str, tmp_path: Path) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    google_emulator.fail_next("drive_rate_limit", "drive_rate_limit", endpoints=["drive.files.get"])
    assert sheet.change_token()
    assert google_emulator.count("drive.files.get") == 3


def test_a_disabled_sheets_api_names_the_project_to_enable_it_in(
    google_emulator: GoogleEmulator, sid: str, tmp_path: Path
) -> None:
    google_emulator.disabled_apis = {"sheets"}
    with pytest.raises(ServiceBlocked) as info:
        sheet_for(google_emulator, tmp_path, spreadsheet_key=sid).read_queue()
    assert f"enable the Google Sheets API in Google Cloud project {PROJECT_NUMBER}" in str(info.value)
    assert google_emulator.count("values.get") + google_emulator.count("sheets.get") == 1  # not retried


def _checks(sheet) -> dict[str, Any]:
    return {c.name: c for c in sheet.preflight()}


def test_doctor_fails_a_disabled_drive_api_and_retries_its_rate_limit(
    google_emulator: GoogleEmulator, sid: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    google_emulator.fail_next("drive_rate_limit", endpoints=["drive.files.get"])
    assert _checks(sheet)["write permission"].status == OK
    google_emulator.disabled_apis = {"drive"}
    check = _checks(sheet)["write permission"]
    assert check.status == FAIL
    assert f"enable the Google Drive API in Google Cloud project {PROJECT_NUMBER}" in check.fix
    print(check.detail)


def test_doctor_says_fix_the_clock_or_replace_a_deleted_account(
    google_emulator: GoogleEmulator, sid: str, tmp_path: Path
) -> None:
    from image_pipeline.services.sheets import google as sheets_module

    sheets_module._CLIENTS.clear()  # a fresh process: no access token held yet
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    google_emulator.clock_offset_s = -3 * 3600  # this machine's clock is three hours fast
    check = _checks(sheet)["key valid"]
    assert check.status == FAIL and "clock" in check.fix and "NTP" in check.fix
    with pytest.raises(ServiceBlocked, match="clock"):
        sheet_for(google_emulator, tmp_path, spreadsheet_key=sid).read_queue()
    google_emulator.clock_offset_s = 0
    gone = "gone@image-pipeline.iam.gserviceaccount.com"
    key = google_emulator.write_service_account_file(tmp_path / "gone.json", gone)
    google_emulator.delete_account(gone)
    deleted = sheet_for(google_emulator, tmp_path, service_account_file=str(key), spreadsheet_key=sid)
    check = _checks(deleted)["key valid"]
    assert check.status == FAIL and "service account was deleted" in check.fix


def test_worksheets_are_found_whatever_their_case(google_emulator: GoogleEmulator, tmp_path: Path) -> None:
    google_emulator.service_account_info()
    key = google_emulator.create_spreadsheet(
        "Image Prompt", {"PROCESS": [["prompt"], ["a fox"]], "done": [["id", "prompt", "status"]]}
    )
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=key)
    [row] = sheet.ensure_ids().rows
    sheet.append_done([DoneEntry(id=row.prompt_id, prompt="a fox", status="SUCCESS", information="")])
    assert sheet.remove_rows({row.prompt_id: row.fingerprint()}) == {row.prompt_id: "removed"}
    titles = [t for t in client_for(google_emulator).open_by_key(key).worksheets()]
    assert [w.title for w in titles if not w.title.startswith("_")] == ["PROCESS", "done"]
    assert google_emulator.values(key, "done")[1][:2] == [row.prompt_id, "a fox"]
    checks = _checks(sheet)
    assert checks["worksheets present"].status == OK and checks["header as expected"].status == OK


def test_an_add_worksheet_whose_answer_was_a_503_is_not_repeated(
    google_emulator: GoogleEmulator, tmp_path: Path
) -> None:
    google_emulator.service_account_info()
    key = google_emulator.create_spreadsheet("Image Prompt", {"Process": [["prompt"], ["x"]]})
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=key)
    google_emulator.fail_next(COMMITTED_503, endpoints=["sheets.batchUpdate"])
    sheet.append_done([DoneEntry(id="p1", prompt="x", status="SUCCESS", information="")])
    assert google_emulator.count("sheets.batchUpdate") == 1
    assert google_emulator.values(key, "Done")[1][:2] == ["p1", "x"]


# ------------------------------------------------------------------------------------------ end to end
PROMPTS = ["a kite over hills", "a tram in fog"]


@pytest.fixture
def env(google_emulator, hf_emulator, telegram_emulator, tmp_path: Path, monkeypatch) -> dict[str, str]:
    rows = [["prompt"], *[[p] for p in PROMPTS]]
    return emulated_env(
        google_emulator,
        hf_emulator,
        telegram_emulator,
        tmp_path,
        monkeypatch,
        rows,
        IMAGE_PIPELINE_INSTANT="",
    )


def _run(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    ids = instance.get_dynamic_partitions("prompts")
    return defs.resolve_job_def("process_prompts_job").execute_in_process(
        instance=instance,
        run_config=QUIET,
        raise_on_error=False,
        tags={"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]},
    )


def _done_rows(google_emulator: GoogleEmulator, sid: str) -> list[dict[str, str]]:
    table = google_emulator.values(sid, "Done")
    return [dict(zip(table[0], r, strict=False)) for r in table[1:]]


def test_a_protected_queue_stops_the_run_and_nothing_is_recorded_as_removed(
    env, google_emulator, telegram_emulator, instance
) -> None:
    sid = env["GOOGLE_SHEET_KEY"]
    defs = build_definitions(env)
    sensor_tick(defs, instance, None)
    ids = instance.get_dynamic_partitions("prompts")
    google_emulator.protect(sid, "Process")

    first = _run(defs, instance)
    assert not first.success
    posts = [m["caption"] for m in telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)]
    assert posts == PROMPTS
    [alert] = telegram_emulator.messages_for(ALERTS_CHANNEL_ID)
    assert PROTECTED_MESSAGE in alert["text"]
    book = defs.resources["ledger"].open()
    assert not any(e.queue_state == REMOVED for pid in ids for e in book.entries_for(pid))
    assert [r[0] for r in google_emulator.values(sid, "Process")[1:]] == PROMPTS

    # the owner lifts the protection: the next run only removes the rows, nothing is posted again
    google_emulator.unprotect(sid)
    assert _run(defs, instance).success
    assert [m["caption"] for m in telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)] == PROMPTS
    assert sorted(r["id"] for r in _done_rows(google_emulator, sid)) == sorted(ids)
    assert google_emulator.values(sid, "Process") == [["prompt", "id"]]
    book = defs.resources["ledger"].open()
    assert all(any(e.queue_state == REMOVED for e in book.entries_for(pid)) for pid in ids)
    assert len(telegram_emulator.messages_for(ALERTS_CHANNEL_ID)) == 1


def test_a_committed_503_on_the_done_append_logs_each_prompt_once(
    env, google_emulator, telegram_emulator, instance
) -> None:
    sid = env["GOOGLE_SHEET_KEY"]
    defs = build_definitions(env)
    sensor_tick(defs, instance, None)
    ids = instance.get_dynamic_partitions("prompts")
    google_emulator.fail_next(COMMITTED_503, endpoints=["values.append"])
    assert _run(defs, instance).success
    assert sorted(r["id"] for r in _done_rows(google_emulator, sid)) == sorted(ids)
    assert [m["caption"] for m in telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)] == PROMPTS
    assert google_emulator.values(sid, "Process") == [["prompt", "id"]]


def test_a_transient_error_is_still_a_transient_error() -> None:
    error = classify_api(answer(503), "read values")
    assert isinstance(error, TransientError) and not isinstance(error, WriteOutcomeUnknown)
