"""The capturing delete of queue rows, through gspread against the Google emulator: a process killed
between the delete and reading its copy back, and formulas that a copy re-bases.

Issue 12 item 8: a person's row slid into the position of a batch's row, the delete removed it, the
worker was killed before it read the copy back, and the next run's delete overwrote the copy. Here the
worker is a real subprocess, SIGKILLed by the emulator after the delete was applied and before a byte of
the answer left; a fresh sheet with the same ledger must put the person's row back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import gspread
import pytest

from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.services.sheets import REMOVED, REMOVED_ROWS_WORKSHEET, GoogleSheet

PROCESS = "Process"

# The worker: one removal with the ledger as its journal, as done_entry makes it.
WORKER = """
import json, sys
from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.services.sheets import GoogleSheet
fields, ledger, expected = json.loads(sys.argv[1])
GoogleSheet(**fields).remove_rows(expected, journal=Ledger(ledger))
print("the removal returned: the kill came too late", flush=True)
"""


def sheet_fields(emulator: Any, tmp_path: Path, key: str) -> dict[str, Any]:
    key_file = emulator.write_service_account_file(tmp_path / "chatbot_key.json")
    return {
        "service_account_file": str(key_file),
        "sheets_api_base_url": emulator.base_url,
        "drive_api_base_url": emulator.base_url,
        "spreadsheet_key": key,
        "retry_base_delay_s": 0.01,
        "timeout_s": 5.0,
    }


@pytest.fixture
def spreadsheet(google_emulator: Any) -> str:
    google_emulator.service_account_info()
    return google_emulator.create_spreadsheet(
        "Image Prompt",
        {
            PROCESS: [["prompt", "seed"], ["a fox", "1"], ["a cat", "2"], ["a owl", "3"]],
            "Done": [["id", "prompt", "status"]],
        },
    )


def prompts(emulator: Any, key: str) -> list[str]:
    return [r[0] for r in emulator.values(key, PROCESS)[1:]]


def is_delete(request: Any, endpoint: str) -> bool:
    return endpoint == "sheets.batchUpdate" and b"deleteDimension" in request.body


def test_a_worker_killed_before_reading_its_copy_back_loses_no_row(
    google_emulator: Any, spreadsheet: str, tmp_path: Path
) -> None:
    fields = sheet_fields(google_emulator, tmp_path, spreadsheet)
    rows = {r.prompt: r for r in GoogleSheet(**fields).ensure_ids().rows}
    cat = rows["a cat"]  # row 3
    ledger = tmp_path / "ledger.sqlite"
    Ledger(ledger)  # the schema, before two processes open it
    worker: list[subprocess.Popen[bytes]] = []
    killed = threading.Event()

    def person_types_at_row_3(request: Any, endpoint: str) -> None:
        if is_delete(request, endpoint) and not killed.is_set():
            # between the worker's re-read and its delete: the person's row takes the cat's position
            google_emulator.insert_row(spreadsheet, PROCESS, 3, ["typed by a person", "7"])

    def kill_before_the_answer(request: Any, endpoint: str, response: Any) -> None:
        if is_delete(request, endpoint) and response.status == 200 and not killed.is_set():
            killed.set()
            os.kill(worker[0].pid, signal.SIGKILL)
            worker[0].wait()

    google_emulator.on_request, google_emulator.after_route = person_types_at_row_3, kill_before_the_answer
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = json.dumps([fields, str(ledger), {cat.prompt_id: cat.fingerprint()}])
    worker.append(subprocess.Popen([sys.executable, "-c", WORKER, args], env=env, stdout=subprocess.PIPE))
    out, _ = worker[0].communicate(timeout=120)
    google_emulator.on_request = google_emulator.after_route = None
    assert killed.is_set() and worker[0].returncode == -signal.SIGKILL, out.decode()
    # the crash window: the person's row went with the delete, and only the ledger knows to look
    assert "typed by a person" not in prompts(google_emulator, spreadsheet)
    assert len(Ledger(ledger).open_removals()) == 1

    # Another delete that does not look first (no journal) adds its own copy; it must not cost the first.
    owl = rows["a owl"]
    assert GoogleSheet(**fields).remove_rows({owl.prompt_id: owl.fingerprint()}) == {owl.prompt_id: REMOVED}

    # the next run: a fresh sheet resource and the same ledger
    fresh = GoogleSheet(**fields)
    assert fresh.recover_removals(Ledger(ledger)) == 1
    table = google_emulator.values(spreadsheet, PROCESS)
    # back where the person typed it; the cat, never deleted, is removed by the next run's done_entry
    assert [r[:2] for r in table[1:]] == [["a fox", "1"], ["typed by a person", "7"], ["a cat", "2"]]
    assert Ledger(ledger).open_removals() == []
    # checked once: running it again puts nothing back twice
    assert fresh.recover_removals(Ledger(ledger)) == 0
    assert prompts(google_emulator, spreadsheet) == ["a fox", "typed by a person", "a cat"]


def test_a_delete_that_never_took_effect_leaves_nothing_to_recover(
    google_emulator: Any, spreadsheet: str, tmp_path: Path
) -> None:
    fields = sheet_fields(google_emulator, tmp_path, spreadsheet)
    sheet = GoogleSheet(**fields)
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    cat = rows["a cat"]
    book = Ledger(tmp_path / "ledger.sqlite")
    # the connection is reset before the request is read: not applied, and the worker cannot tell
    google_emulator.fail_next("reset", endpoints=["sheets.batchUpdate"])
    assert sheet.remove_rows({cat.prompt_id: cat.fingerprint()}, journal=book) == {cat.prompt_id: REMOVED}
    assert prompts(google_emulator, spreadsheet) == ["a fox", "a owl"]
    # the lost answer's intent is kept for the next run, which finds no copy of it and drops it
    assert len(book.open_removals()) == 1
    assert GoogleSheet(**fields).recover_removals(book) == 0
    assert book.open_removals() == []
    assert prompts(google_emulator, spreadsheet) == ["a fox", "a owl"]


def test_a_formula_row_of_ours_is_not_a_stranger_and_a_strangers_row_is(
    google_emulator: Any, tmp_path: Path
) -> None:
    """PASTE_NORMAL re-bases relative references: our row ``=A2`` (the prompt above) reads ``=A2``'s
    neighbour in the copy. The comparison uses the values each row showed, so it is not fooled."""
    google_emulator.service_account_info()
    key = google_emulator.create_spreadsheet(
        "Image Prompt", {PROCESS: [["prompt", "seed"], ["a fox", "1"], ["", "2"], ["a owl", "3"]]}
    )
    google_emulator.set_cell(key, PROCESS, 3, 1, "=A2")  # a person: "the same prompt as above"
    sheet = GoogleSheet(**sheet_fields(google_emulator, tmp_path, key))
    rows = sheet.ensure_ids().rows
    formula, owl = rows[1], rows[2]
    assert (formula.prompt, google_emulator.is_formula(key, PROCESS, 3, 1)) == ("a fox", True)
    fired = threading.Event()

    def person_types_at_the_owls_row(request: Any, endpoint: str) -> None:
        if is_delete(request, endpoint) and not fired.is_set():
            fired.set()
            google_emulator.insert_row(key, PROCESS, 4, ["typed by a person", "7"])

    google_emulator.on_request = person_types_at_the_owls_row
    book = Ledger(tmp_path / "ledger.sqlite")
    outcome = sheet.remove_rows({r.prompt_id: r.fingerprint() for r in (formula, owl)}, journal=book)
    google_emulator.on_request = None
    assert fired.is_set()
    assert outcome == {formula.prompt_id: REMOVED, owl.prompt_id: REMOVED}
    table = google_emulator.values(key, PROCESS)
    # the formula row is gone for good, the person's row is back, the owl was found again and removed
    assert [r[:2] for r in table[1:]] == [["a fox", "1"], ["typed by a person", "7"]]
    assert book.open_removals() == []
    # the copies of both deletes are on top of each other in the hidden worksheet, none overwritten
    nonces = [r[0] for r in google_emulator.values(key, REMOVED_ROWS_WORKSHEET) if r and len(r[0]) == 32]
    assert len(set(nonces)) == 2


def test_single_reference_formulas_are_live_and_copies_re_base_them(
    google_emulator: Any, tmp_path: Path
) -> None:
    """The emulator's formula model, through gspread: ``=A2`` shows A2; PASTE_NORMAL moves relative
    references with the paste, ``$`` ones stay, and PASTE_VALUES pastes what the cell showed."""
    google_emulator.service_account_info()
    key = google_emulator.create_spreadsheet("Formulas", {"Sheet1": [["top"], ["x"], [""]]})
    fields = sheet_fields(google_emulator, tmp_path, key)
    client = gspread.service_account(
        filename=fields["service_account_file"], http_client=_routed(google_emulator)
    )
    book = client.open_by_key(key)
    ws = book.worksheet("Sheet1")
    ws.update([["=A2", "=$A$1"]], "B3", value_input_option="USER_ENTERED")
    assert ws.get("B3:C3") == [["x", "top"]]
    ws.update_acell("A2", "y")  # live: the reference shows the new value
    assert ws.get("B3:C3") == [["y", "top"]]

    def paste(kind: str, row: int) -> dict[str, Any]:
        box = {"sheetId": ws.id, "startColumnIndex": 1, "endColumnIndex": 3}
        return {
            "copyPaste": {
                "source": {**box, "startRowIndex": 2, "endRowIndex": 3},
                "destination": {**box, "startRowIndex": row, "endRowIndex": row + 1},
                "pasteType": kind,
            }
        }

    book.batch_update({"requests": [paste("PASTE_NORMAL", 1), paste("PASTE_VALUES", 3)]})
    assert ws.get("B2:C4", value_render_option="FORMULA") == [
        ["=A1", "=$A$1"],
        ["=A2", "=$A$1"],
        ["y", "top"],
    ]
    assert ws.get("B2:C2") == [["top", "top"]]  # the re-based copy shows another cell


def _routed(emulator: Any) -> type:
    from image_pipeline.services.sheets.google import _http_client_class

    return _http_client_class(emulator.base_url, emulator.base_url)


def test_rows_shifted_by_one_put_back_only_the_row_that_slid_in(
    google_emulator: Any, spreadsheet: str, tmp_path: Path
) -> None:
    """A person inserts a row above the batch: every deleted position holds the row that was above it.
    Only the one row that is not ours goes back; our own row in the copy is recognised as ours."""
    sheet = GoogleSheet(**sheet_fields(google_emulator, tmp_path, spreadsheet))
    rows = {r.prompt: r for r in sheet.ensure_ids().rows}
    cat, owl = rows["a cat"], rows["a owl"]  # rows 3 and 4
    inserted: list[int] = []

    def person_inserts_above(request: Any, endpoint: str) -> None:
        if endpoint != "sheets.batchUpdate":
            return
        if is_delete(request, endpoint) and not inserted:
            google_emulator.insert_row(spreadsheet, PROCESS, 2, ["typed by a person", "7"])
        body = json.loads(request.body)
        inserted.extend(
            1
            for r in body["requests"]
            if r.get("insertDimension", {}).get("range", {}).get("sheetId") == 0  # "Process"
        )

    google_emulator.on_request = person_inserts_above
    outcome = sheet.remove_rows({cat.prompt_id: cat.fingerprint(), owl.prompt_id: owl.fingerprint()})
    google_emulator.on_request = None
    assert outcome == {cat.prompt_id: REMOVED, owl.prompt_id: REMOVED}
    table = google_emulator.values(spreadsheet, PROCESS)
    assert [r[:2] for r in table[1:]] == [["typed by a person", "7"], ["a fox", "1"]]
    assert sum(inserted) == 1  # the fox alone was put back, not the cat that the delete rightly took
