"""The Google Sheets backend through gspread + google-auth against the loopback Google emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.errors import QueueFormatError, ServiceBlocked
from image_pipeline.services.sheets import CHANGED, REMOVED, VANISHED, GoogleSheet

ANCESTOR_DONE_HEADER = ["Prompt", "Status", "Info", "Timestamp"]


def sheet_for(emulator, tmp_path: Path, **overrides) -> GoogleSheet:
    key_file = emulator.write_service_account_file(tmp_path / "chatbot_key.json")
    fields = {
        "service_account_file": str(key_file),
        "sheets_api_base_url": emulator.base_url,
        "drive_api_base_url": emulator.base_url,
        "retry_base_delay_s": 0.01,
        "timeout_s": 5.0,
    }
    fields.update(overrides)
    return GoogleSheet(**fields)


@pytest.fixture
def spreadsheet(google_emulator, tmp_path: Path) -> str:
    google_emulator.service_account_info()  # the key exists before the sheet is shared with it
    return google_emulator.create_spreadsheet(
        "Image Prompt",
        {
            "Process": [["prompt", "seed"], ["a fox", "1"], ["a cat", ""], ["a owl", ""]],
            "Done": [ANCESTOR_DONE_HEADER],
        },
    )


def test_found_by_title_and_ids_written_raw(google_emulator, spreadsheet: str, tmp_path: Path) -> None:
    sheet = sheet_for(google_emulator, tmp_path)
    snapshot = sheet.ensure_ids()
    ids = [r.prompt_id for r in snapshot.rows]
    values = google_emulator.values(spreadsheet, "Process")
    assert values[0] == ["prompt", "seed", "id"]
    assert [r[2] for r in values[1:]] == ids
    assert snapshot.rows[0].params == {"seed": "1"}
    assert google_emulator.count("drive.files.list") == 1
    # a second read keeps the ids and writes nothing
    writes = google_emulator.write_requests
    assert [r.prompt_id for r in sheet.ensure_ids().rows] == ids
    assert google_emulator.write_requests == writes


def test_remove_by_id_survives_a_person_editing_meanwhile(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    fox, cat, owl = rows["a fox"], rows["a cat"], rows["a owl"]
    google_emulator.insert_row(spreadsheet, "Process", 2, ["a person's new prompt"])
    google_emulator.update_cell(spreadsheet, "Process", 4, 1, "a cat, edited")
    google_emulator.delete_row(spreadsheet, "Process", 5)  # the owl
    outcome = sheet.remove_rows(
        {fox.prompt_id: fox.fingerprint(), cat.prompt_id: cat.fingerprint(), owl.prompt_id: owl.fingerprint()}
    )
    assert outcome == {fox.prompt_id: REMOVED, cat.prompt_id: CHANGED, owl.prompt_id: VANISHED}
    assert google_emulator.values(spreadsheet, "Process") == [
        ["prompt", "seed", "id"],
        ["a person's new prompt"],
        ["a cat, edited", "", cat.prompt_id],
    ]
    # one request deletes (and, on first use, adds the hidden worksheet for removed rows)
    assert google_emulator.count("sheets.batchUpdate") == 1


def test_done_rows_follow_the_ancestor_header_and_stay_literal(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    formula = '=IMPORTXML("http://x","//a")'
    sheet.append_done(
        [DoneEntry(id="p1", prompt=formula, status="INVALID", information="+cmd @x", model="m")]
    )
    done = google_emulator.values(spreadsheet, "Done")
    header = done[0]
    assert header[:4] == ANCESTOR_DONE_HEADER and "id" in header and "message_id" in header
    row = dict(zip(header, done[1], strict=False))
    assert row["Prompt"] == formula and row["Info"] == "+cmd @x" and row["id"] == "p1"
    assert not google_emulator.is_formula(spreadsheet, "Done", 2, 1)


def test_missing_done_worksheet_is_created(google_emulator, tmp_path: Path) -> None:
    google_emulator.service_account_info()
    key = google_emulator.create_spreadsheet("Image Prompt", {"Process": [["prompt"], ["x"]]})
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=key)
    sheet.append_done([DoneEntry(id="p1", prompt="x", status="SUCCESS", information="")])
    assert google_emulator.values(key, "Done")[0][:3] == ["id", "prompt", "status"]


def test_missing_process_worksheet_is_a_clear_error(google_emulator, tmp_path: Path) -> None:
    google_emulator.service_account_info()
    key = google_emulator.create_spreadsheet("Image Prompt", {"Queue": [["prompt"]]})
    with pytest.raises(QueueFormatError, match="no worksheet named 'Process'"):
        sheet_for(google_emulator, tmp_path, spreadsheet_key=key).read_queue()


def test_unshared_sheet_says_whom_to_share_with(google_emulator, spreadsheet: str, tmp_path: Path) -> None:
    info = google_emulator.service_account_info()
    google_emulator.unshare(spreadsheet, info["client_email"])
    with pytest.raises(ServiceBlocked, match="Share") as by_key:
        sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet).read_queue()
    assert by_key.value.status == 403
    with pytest.raises(ServiceBlocked, match=info["client_email"]):
        sheet_for(google_emulator, tmp_path).read_queue()


def test_unknown_key_is_rejected_without_leaking_it(google_emulator, tmp_path: Path) -> None:
    from image_pipeline.testing.emulators.google import GoogleEmulator

    with GoogleEmulator() as other:
        foreign = other.service_account_info("stranger@elsewhere.iam.gserviceaccount.com")
    foreign["token_uri"] = f"{google_emulator.base_url}/token"
    import json

    with pytest.raises(ServiceBlocked, match="key was rejected") as info:
        GoogleSheet(
            service_account_json=json.dumps(foreign),
            spreadsheet_key="x",
            sheets_api_base_url=google_emulator.base_url,
            retry_base_delay_s=0.01,
        ).read_queue()
    assert "PRIVATE KEY" not in str(info.value)


def test_quota_429_waits_for_the_quota_window(google_emulator, spreadsheet: str, tmp_path: Path) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet, quota_retry_s=0.3)
    sheet.read_queue()  # metadata + values: 2 reads
    google_emulator.read_quota_per_minute = 3
    google_emulator.quota_window_s = 0.5
    for _ in range(3):
        assert len(sheet.read_queue().rows) == 3
    statuses = [r.status for r in google_emulator.requests if r.endpoint == "values.get"]
    assert 429 in statuses and statuses[-1] == 200


def test_change_token_moves_on_edits_only(google_emulator, spreadsheet: str, tmp_path: Path) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    first = sheet.change_token()
    sheet.read_queue()
    assert sheet.change_token() == first
    google_emulator.append_rows(spreadsheet, "Process", [["a new row"]])
    assert sheet.change_token() != first
    assert google_emulator.count("drive.files.get") == 3


@pytest.mark.parametrize("fault", [500, 502, 503, "reset", "truncate", "timeout", "garbage"])
def test_transient_faults_are_retried(google_emulator, spreadsheet: str, tmp_path: Path, fault) -> None:
    google_emulator.timeout_hold_s = 2
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet, timeout_s=0.5)
    sheet.read_queue()
    google_emulator.fail_next(fault, endpoints=["values.get"])
    before = google_emulator.count("values.get")
    assert len(sheet.read_queue().rows) == 3
    assert google_emulator.count("values.get") == before + 2  # the fault, then the retry that worked


@pytest.mark.parametrize(("fault", "fragment"), [(400, "HTTP 400"), (404, "not found"), (401, "HTTP 401")])
def test_permanent_answers_are_not_retried(
    google_emulator, spreadsheet: str, tmp_path: Path, fault, fragment
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    sheet.read_queue()
    # a 401 makes google-auth refresh the token and try again (twice), then it surfaces
    google_emulator.fail_next(fault, fault, fault, endpoints=["values.get"])
    with pytest.raises(ServiceBlocked, match=fragment):
        sheet.read_queue()


def _once(action):
    fired = []

    def hook(request, endpoint, *rest):
        if not fired and action(request, endpoint):
            fired.append(endpoint)

    return hook, fired


def test_a_row_inserted_just_before_the_delete_is_not_lost(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    cat = rows["a cat"]

    def person_inserts_a_row_above(request, endpoint) -> bool:
        if endpoint != "sheets.batchUpdate":
            return False
        # lands between the pipeline's re-read and its position-based delete
        google_emulator.insert_row(spreadsheet, "Process", 2, ["typed by a person"])
        return True

    google_emulator.on_request, fired = _once(person_inserts_a_row_above)
    outcome = sheet.remove_rows({cat.prompt_id: cat.fingerprint()})
    google_emulator.on_request = None
    assert fired and outcome == {cat.prompt_id: REMOVED}
    prompts = [r[0] for r in google_emulator.values(spreadsheet, "Process")[1:]]
    assert sorted(prompts) == sorted(["typed by a person", "a fox", "a owl"])


def test_ids_written_while_rows_shift_are_repaired(google_emulator, spreadsheet: str, tmp_path: Path) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    first = {r.prompt: r.prompt_id for r in sheet.ensure_ids().rows}
    google_emulator.append_rows(spreadsheet, "Process", [["a new heron"]])

    def person_inserts_a_row_above(request, endpoint) -> bool:
        if endpoint != "values.batchUpdate":
            return False
        google_emulator.insert_row(spreadsheet, "Process", 2, ["typed by a person"])
        return True

    google_emulator.on_request, fired = _once(person_inserts_a_row_above)
    snapshot = sheet.ensure_ids()
    google_emulator.on_request = None
    assert fired
    by_prompt = {
        r[0]: (r[2] if len(r) > 2 else "") for r in google_emulator.values(spreadsheet, "Process")[1:]
    }
    # the rows that had ids keep them; the new rows end with ids of their own
    for prompt, pid in first.items():
        assert by_prompt[prompt] == pid
    final = {r.prompt: r.prompt_id for r in sheet.ensure_ids().rows}
    assert len(set(final.values())) == 5 and all(final.values())
    assert {r.prompt for r in snapshot.rows} >= {"a fox", "a cat", "a owl"}


def test_a_delete_whose_answer_is_lost_is_not_repeated_by_position(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    fox, owl = rows["a fox"], rows["a owl"]
    sheet.remove_rows({owl.prompt_id: owl.fingerprint()})  # adds the hidden worksheet for removed rows
    assert google_emulator.count("sheets.batchUpdate") == 1
    google_emulator.fail_next("truncate", endpoints=["sheets.batchUpdate"])
    outcome = sheet.remove_rows({fox.prompt_id: fox.fingerprint()})
    assert outcome == {fox.prompt_id: REMOVED}
    assert [r[0] for r in google_emulator.values(spreadsheet, "Process")[1:]] == ["a cat"]
    assert google_emulator.count("sheets.batchUpdate") == 2


def test_an_append_whose_answer_is_lost_is_not_duplicated(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)

    def done_ids() -> list[str]:
        table = google_emulator.values(spreadsheet, "Done")
        return [dict(zip(table[0], r, strict=False)).get("id", "") for r in table[1:]]

    google_emulator.fail_next("truncate", endpoints=["values.append"])  # applied, answer lost
    sheet.append_done([DoneEntry(id="p1", prompt="x", status="SUCCESS", information="")])
    assert done_ids() == ["p1"]
    google_emulator.fail_next("reset", endpoints=["values.append"])  # not applied
    sheet.append_done([DoneEntry(id="p2", prompt="y", status="SUCCESS", information="")])
    assert done_ids() == ["p1", "p2"]


def test_a_row_inserted_at_the_deleted_position_is_put_back(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    """The gap the re-read cannot see: a person's row lands exactly where our row was."""
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    cat = rows["a cat"]  # row 3

    def person_inserts_at_row_3(request, endpoint) -> bool:
        if endpoint != "sheets.batchUpdate":
            return False
        google_emulator.insert_row(spreadsheet, "Process", 3, ["typed by a person", "7"])
        return True

    google_emulator.on_request, fired = _once(person_inserts_at_row_3)
    outcome = sheet.remove_rows({cat.prompt_id: cat.fingerprint()})
    google_emulator.on_request = None
    assert fired and outcome == {cat.prompt_id: REMOVED}
    table = google_emulator.values(spreadsheet, "Process")
    # the person's row is back where they typed it, with its cells; only the cat is gone
    assert [r[:2] for r in table[1:]] == [["a fox", "1"], ["typed by a person", "7"], ["a owl", ""]]


def test_rows_edited_and_moved_in_the_gap_are_kept(google_emulator, spreadsheet: str, tmp_path: Path) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    fox, cat, owl = rows["a fox"], rows["a cat"], rows["a owl"]

    def person_edits_and_moves(request, endpoint) -> bool:
        if endpoint != "sheets.batchUpdate":
            return False
        # the fox's text is changed and the owl moved to the top, between our read and our delete
        google_emulator.delete_row(spreadsheet, "Process", 4)
        google_emulator.insert_row(spreadsheet, "Process", 2, ["a owl", "", owl.prompt_id])
        google_emulator.set_cell(spreadsheet, "Process", 3, 1, "a red fox")
        return True

    google_emulator.on_request, fired = _once(person_edits_and_moves)
    outcome = sheet.remove_rows({p.prompt_id: p.fingerprint() for p in (fox, cat, owl)})
    google_emulator.on_request = None
    assert fired
    assert outcome == {fox.prompt_id: CHANGED, cat.prompt_id: REMOVED, owl.prompt_id: REMOVED}
    assert [r[0] for r in google_emulator.values(spreadsheet, "Process")[1:]] == ["a red fox"]


def test_a_delete_after_the_sheet_shrank_reads_again(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    google_emulator.set_grid(spreadsheet, "Process", row_count=4)
    owl = rows["a owl"]  # row 4, the last row of the grid

    def person_deletes_the_fox(request, endpoint) -> bool:
        if endpoint != "sheets.batchUpdate":
            return False
        google_emulator.delete_row(
            spreadsheet, "Process", 2
        )  # row 4 no longer exists: a 400, nothing applied
        return True

    google_emulator.on_request, fired = _once(person_deletes_the_fox)
    outcome = sheet.remove_rows({owl.prompt_id: owl.fingerprint()})
    google_emulator.on_request = None
    assert fired and outcome == {owl.prompt_id: REMOVED}
    assert [r[0] for r in google_emulator.values(spreadsheet, "Process")[1:]] == ["a cat"]


def test_the_last_rows_of_a_trimmed_grid_with_a_frozen_header(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    rows = sheet.ensure_ids().rows
    google_emulator.set_grid(spreadsheet, "Process", row_count=4, frozen_rows=1)
    outcome = sheet.remove_rows({r.prompt_id: r.fingerprint() for r in rows})
    assert set(outcome.values()) == {REMOVED}
    assert google_emulator.values(spreadsheet, "Process") == [["prompt", "seed", "id"]]


def test_without_copy_paste_support_plain_deletes_are_checked(
    google_emulator, spreadsheet: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another implementation of the API that lacks copyPaste: the old verified path still works."""
    monkeypatch.delattr(type(google_emulator), "_req_copyPaste")
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    cat = rows["a cat"]
    outcome = sheet.remove_rows({cat.prompt_id: cat.fingerprint()})
    assert outcome == {cat.prompt_id: REMOVED}
    assert [r[0] for r in google_emulator.values(spreadsheet, "Process")[1:]] == ["a fox", "a owl"]


def test_status_words_that_land_on_a_moved_row_are_put_right(google_emulator, tmp_path: Path) -> None:
    google_emulator.service_account_info()
    sid = google_emulator.create_spreadsheet(
        "Image Prompt",
        {"Process": [["prompt", "status"], ["a fox", ""], ["a cat", "HOLD"], ["a owl", ""]]},
    )
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    snapshot = sheet.read_queue()

    def person_inserts_a_row_above(request, endpoint) -> bool:
        if endpoint != "values.batchUpdate":
            return False
        # between the pipeline's read and its position-based write: every row moves down by one
        google_emulator.insert_row(sid, "Process", 2, ["typed by a person", "HOLD"])
        return True

    google_emulator.on_request, fired = _once(person_inserts_a_row_above)
    written = sheet.write_statuses(
        {rows["a fox"].prompt_id: "GENERATING", rows["a owl"].prompt_id: "AWAITING APPROVAL"}, snapshot
    )
    google_emulator.on_request = None
    assert fired and set(written) == {rows["a fox"].prompt_id, rows["a owl"].prompt_id}
    status = {r[0]: (r[1] if len(r) > 1 else "") for r in google_emulator.values(sid, "Process")[1:]}
    # each word ends on its own row; a row typed in that instant, whose word we never saw, is held
    assert status == {
        "typed by a person": "HOLD",
        "a fox": "GENERATING",
        "a cat": "HOLD",
        "a owl": "AWAITING APPROVAL",
    }


def test_a_sheet_without_a_status_column_costs_no_status_request(
    google_emulator, spreadsheet: str, tmp_path: Path
) -> None:
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=spreadsheet)
    snapshot = sheet.ensure_ids()
    before = (google_emulator.read_requests, google_emulator.write_requests)
    assert sheet.write_statuses({snapshot.rows[0].prompt_id: "GENERATING"}, snapshot) == {}
    assert (google_emulator.read_requests, google_emulator.write_requests) == before


def test_status_words_after_a_row_above_was_deleted_leave_no_ghost_row(
    google_emulator, tmp_path: Path
) -> None:
    google_emulator.service_account_info()
    sid = google_emulator.create_spreadsheet(
        "Image Prompt",
        {"Process": [["prompt", "status"], ["a fox", ""], ["a cat", "HOLD"], ["a owl", ""]]},
    )
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    snapshot = sheet.read_queue()

    def person_deletes_the_fox(request, endpoint) -> bool:
        if endpoint != "values.batchUpdate":
            return False
        google_emulator.delete_row(sid, "Process", 2)  # every row below moves up by one
        return True

    google_emulator.on_request, fired = _once(person_deletes_the_fox)
    sheet.write_statuses(
        {rows["a fox"].prompt_id: "GENERATING", rows["a owl"].prompt_id: "AWAITING APPROVAL"}, snapshot
    )
    google_emulator.on_request = None
    assert fired
    table = google_emulator.values(sid, "Process")
    status = {r[0]: (r[1] if len(r) > 1 else "") for r in table[1:] if any(c.strip() for c in r)}
    # the cat gets its own HOLD back, the owl its word; the cell below the last row is cleared again
    assert status == {"a cat": "HOLD", "a owl": "AWAITING APPROVAL"}
    assert [r.prompt for r in sheet.read_queue().rows] == ["a cat", "a owl"]


def test_a_row_typed_in_that_instant_is_held_rather_than_released(google_emulator, tmp_path: Path) -> None:
    google_emulator.service_account_info()
    sid = google_emulator.create_spreadsheet(
        "Image Prompt", {"Process": [["prompt", "status"], ["a fox", ""], ["a owl", ""]]}
    )
    sheet = sheet_for(google_emulator, tmp_path, spreadsheet_key=sid)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    snapshot = sheet.read_queue()

    def person_inserts(request, endpoint) -> bool:
        if endpoint != "values.batchUpdate":
            return False
        google_emulator.insert_row(sid, "Process", 2, ["a new kite", ""])
        return True

    google_emulator.on_request, fired = _once(person_inserts)
    sheet.write_statuses({rows["a fox"].prompt_id: "GENERATING"}, snapshot)
    google_emulator.on_request = None
    assert fired
    status = {r[0]: (r[1] if len(r) > 1 else "") for r in google_emulator.values(sid, "Process")[1:]}
    # whatever word the new row had was overwritten before we could see it: it is held, never released
    assert status == {"a new kite": "HOLD", "a fox": "GENERATING", "a owl": ""}
