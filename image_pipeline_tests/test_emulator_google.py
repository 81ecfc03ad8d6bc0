"""The Google emulator driven by the real gspread + google-auth clients (token flow included)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import gspread
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.exceptions import RefreshError

from image_pipeline.testing.emulators.base import RESET, TIMEOUT
from image_pipeline.testing.emulators.google import GoogleEmulator

QUEUE = [
    ["id", "prompt", "status"],
    ["1", "a red fox", ""],
    ["2", "a blue whale", "done"],
    ["3", "a green frog"],
]


class LoopbackHTTPClient(gspread.HTTPClient):
    """gspread's own HTTP client with the two Google hosts pointed at the emulator (contracts §1.2 A)."""

    base_url = ""  # set on a per-emulator subclass

    def request(self, method: str, endpoint: str, *args: Any, **kwargs: Any) -> requests.Response:
        endpoint = endpoint.replace("https://sheets.googleapis.com", self.base_url).replace(
            "https://www.googleapis.com", self.base_url
        )
        return super().request(method, endpoint, *args, **kwargs)


EmulatorFactory = Callable[..., GoogleEmulator]


@pytest.fixture
def make_emulator() -> Iterator[EmulatorFactory]:
    started: list[GoogleEmulator] = []

    def factory(**kwargs: Any) -> GoogleEmulator:
        emulator = GoogleEmulator(**kwargs)
        emulator.timeout_hold_s = 1.0  # a TIMEOUT fault must not keep a server thread busy for 30 s
        emulator.start()
        started.append(emulator)
        return emulator

    yield factory
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emu(make_emulator: EmulatorFactory) -> GoogleEmulator:
    return make_emulator()


def client_for(emu: GoogleEmulator, info: dict[str, str] | None = None) -> gspread.Client:
    bound = type("BoundLoopbackHTTPClient", (LoopbackHTTPClient,), {"base_url": emu.base_url})
    gc = gspread.service_account_from_dict(info or emu.service_account_info(), http_client=bound)
    gc.set_timeout(5)
    return gc


def drive_metadata(gc: gspread.Client, spreadsheet_id: str, fields: str = "modifiedTime,version") -> Any:
    url = gspread.urls.DRIVE_FILES_API_V3_URL + "/" + spreadsheet_id
    return gc.http_client.request("get", url, params={"fields": fields, "supportsAllDrives": True}).json()


def expected_quota_body(kind: str, limit: int) -> dict[str, Any]:
    noun = "Read" if kind == "read" else "Write"
    return {
        "error": {
            "code": 429,
            "message": f"Quota exceeded for quota metric '{noun} requests' and limit '{noun} requests per "
            "minute per user' of service 'sheets.googleapis.com' for consumer 'project_number:603366585132'.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "googleapis.com",
                    "metadata": {
                        "quota_limit_value": str(limit),
                        "service": "sheets.googleapis.com",
                        "consumer": "projects/603366585132",
                        "quota_unit": "1/min/{project}/{user}",
                        "quota_location": "global",
                        "quota_metric": f"sheets.googleapis.com/{kind}_requests",
                        "quota_limit": f"{noun}RequestsPerMinutePerUser",
                    },
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Request a higher quota limit.",
                            "url": "https://cloud.google.com/docs/quotas/help/request_increase",
                        }
                    ],
                },
            ],
        }
    }


# ------------------------------------------------------------------------------------------ auth


def test_token_flow_open_by_key_and_worksheet(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE, "Log": []})
    gc = client_for(emu)
    assert emu.count("token") == 0  # loading the key makes no HTTP call

    sh = gc.open_by_key(sid)
    ws = sh.worksheet("Queue")
    assert sh.title == "Feed"
    assert [w.title for w in sh.worksheets()] == ["Queue", "Log"]
    assert ws.id == 0 and ws.row_count == 1000 and ws.col_count == 26
    # gspread pads the ragged response into a rectangle
    assert ws.get_all_values() == [
        ["id", "prompt", "status"],
        ["1", "a red fox", ""],
        ["2", "a blue whale", "done"],
        ["3", "a green frog", ""],
    ]
    assert emu.count("token") == 1  # one token, reused
    assert emu.read_requests == 4 and emu.write_requests == 0
    assert "authorization" not in emu.requests[-1].headers  # the log never keeps the bearer token


def test_unregistered_key_is_rejected(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    info = emu.service_account_info()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = dict(info)
    forged["private_key_id"] = "0" * 40
    forged["private_key"] = stranger.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    gc = client_for(emu, forged)
    with pytest.raises(RefreshError, match=r"invalid_grant: Invalid JWT Signature\."):
        gc.open_by_key(sid)

    unknown_account = dict(emu.service_account_info("other@image-pipeline.iam.gserviceaccount.com"))
    unknown_account["client_email"] = "ghost@image-pipeline.iam.gserviceaccount.com"
    with pytest.raises(RefreshError, match="invalid_grant"):
        client_for(emu, unknown_account).open_by_key(sid)


def test_token_endpoint_rejects_other_grants(emu: GoogleEmulator) -> None:
    r = requests.post(f"{emu.base_url}/token", data={"grant_type": "client_credentials"}, timeout=5)
    assert r.status_code == 400
    assert r.json() == {
        "error": "unsupported_grant_type",
        "error_description": "Invalid grant_type: client_credentials",
    }


def test_401_makes_the_client_refresh_and_retry(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    gc = client_for(emu)
    ws = gc.open_by_key(sid).worksheet("Queue")
    emu.invalidate_tokens()
    assert ws.acell("B2").value == "a red fox"
    assert emu.count("token") == 2
    statuses = [(r.endpoint, r.status) for r in emu.requests]
    assert ("values.get", 401) in statuses and statuses[-1] == ("values.get", 200)

    r = requests.get(f"{emu.base_url}/v4/spreadsheets/{sid}", timeout=5)
    assert r.status_code == 401
    assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert r.json()["error"]["message"].startswith("Request had invalid authentication credentials.")


# ------------------------------------------------------------------------------------------ Drive


def test_open_by_title_via_drive_and_pagination(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    emu.create_spreadsheet("Feed archive", {"Queue": []})
    emu.create_spreadsheet("Secret", {"Queue": []}, shared_with=["someone@example.com"])
    gc = client_for(emu)

    sh = gc.open("Feed")
    assert sh.id == sid
    assert emu.count("drive.files.list") == 1
    with pytest.raises(gspread.SpreadsheetNotFound):
        gc.open("Secret")  # exists, but not shared with the service account
    assert sorted(f["name"] for f in gc.list_spreadsheet_files()) == ["Feed", "Feed archive"]

    url = gspread.urls.DRIVE_FILES_API_V3_URL
    params: dict[str, Any] = {
        "q": f'mimeType="{gspread.utils.MimeType.google_sheets}"',
        "pageSize": 1,
        "fields": "nextPageToken,files(id,name)",
    }
    first = gc.http_client.request("get", url, params=params).json()
    assert set(first) == {"nextPageToken", "files"} and set(first["files"][0]) == {"id", "name"}
    second = gc.http_client.request("get", url, params={**params, "pageToken": first["nextPageToken"]}).json()
    assert "nextPageToken" not in second
    assert {first["files"][0]["name"], second["files"][0]["name"]} == {"Feed", "Feed archive"}


def test_drive_files_get_fields_and_not_found(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    gc = client_for(emu)
    meta = gc.get_file_drive_metadata(sid)
    assert set(meta) == {"id", "name", "createdTime", "modifiedTime"}
    assert meta["name"] == "Feed" and meta["modifiedTime"] == emu.modified_time(sid)
    assert drive_metadata(gc, sid) == {
        "modifiedTime": emu.modified_time(sid),
        "version": str(emu.version(sid)),
    }

    with pytest.raises(gspread.exceptions.APIError) as info:
        drive_metadata(gc, "nope")
    assert info.value.code == 404
    assert info.value.response.json() == {
        "error": {
            "errors": [
                {
                    "domain": "global",
                    "reason": "notFound",
                    "message": "File not found: nope.",
                    "locationType": "parameter",
                    "location": "fileId",
                }
            ],
            "code": 404,
            "message": "File not found: nope.",
        }
    }


# ------------------------------------------------------------------------------------------ values


def test_raw_response_is_ragged_and_empty_has_no_values(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE, "Empty": []})
    gc = client_for(emu)
    sh = gc.open_by_key(sid)
    raw = sh.values_get("'Queue'")
    assert raw["range"] == "Queue!A1:Z1000" and raw["majorDimension"] == "ROWS"
    assert raw["values"][1] == ["1", "a red fox"] and raw["values"][3] == ["3", "a green frog"]
    empty = sh.values_get("Empty")
    assert "values" not in empty
    assert sh.worksheet("Empty").get_all_values() == [[]]

    ws = sh.worksheet("Queue")
    assert ws.row_values(3) == ["2", "a blue whale", "done"]
    assert ws.col_values(3) == ["status", "", "done"]
    assert sh.values_get("Queue!A2:2")["range"] == "Queue!A2:Z2"
    assert ws.get("B2:C3") == [["a red fox"], ["a blue whale", "done"]]
    assert sh.values_get("A1:A2")["values"] == [["id"], ["1"]]  # no sheet name: the first sheet

    emu.add_worksheet(sid, "It's")
    emu.set_values(sid, "It's", [["quoted"]])
    assert sh.worksheet("It's").get_all_values() == [["quoted"]]


def test_append_raw_vs_user_entered(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    ws = client_for(emu).open_by_key(sid).worksheet("Queue")

    response = ws.append_row(["4", "=1+1", 2.5, True])
    assert response["tableRange"] == "Queue!A1:C4"
    assert response["updates"]["updatedRange"] == "Queue!A5:D5"
    assert response["updates"]["updatedCells"] == 4
    ws.append_row(["5", "=1+1", 7], value_input_option="USER_ENTERED")

    assert emu.values(sid, "Queue")[4:] == [["4", "=1+1", "2.5", "TRUE"], ["5", "2", "7"]]
    assert not emu.is_formula(sid, "Queue", 5, 2)  # RAW keeps the text
    assert emu.is_formula(sid, "Queue", 6, 2)  # USER_ENTERED made Google evaluate it
    assert ws.row_values(5) == ["4", "=1+1", "2.5", "TRUE"]  # numbers and booleans come back as strings
    assert ws.get("A6:C6", value_render_option="UNFORMATTED_VALUE") == [[5, 2, 7]]
    assert ws.get("B6", value_render_option="FORMULA") == [["=1+1"]]

    ws.append_rows(
        [["a"], ["b"]], value_input_option="RAW", insert_data_option="INSERT_ROWS", table_range="A1"
    )
    assert emu.values(sid, "Queue")[-2:] == [["a"], ["b"]]
    assert emu.grid_size(sid, "Queue") == (1002, 26)


def test_values_batch_update_and_batch_get(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    ws = client_for(emu).open_by_key(sid).worksheet("Queue")
    ws.batch_update([{"range": "C2", "values": [["posted"]]}, {"range": "D1:E1", "values": [["t", "=2*3"]]}])
    assert emu.values(sid, "Queue")[0] == ["id", "prompt", "status", "t", "=2*3"]
    assert emu.values(sid, "Queue")[1] == ["1", "a red fox", "posted"]
    ws.batch_update([{"range": "F1", "values": [["=2*3"]]}], raw=False)
    assert emu.values(sid, "Queue")[0][5] == "6" and emu.is_formula(sid, "Queue", 1, 6)

    got = ws.batch_get(["A1:B2", "C2", "Z999"])
    assert [list(r) for r in got] == [[["id", "prompt"], ["1", "a red fox"]], [["posted"]], []]
    assert emu.count("values.batchGet") == 1

    with pytest.raises(gspread.exceptions.APIError) as info:
        ws.update([["x", "y", "z"]], "A1:B1")
    assert info.value.code == 400 and "tried writing to column [C]" in str(info.value)


def test_cell_over_50000_characters_is_rejected(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    ws = client_for(emu).open_by_key(sid).worksheet("Queue")
    version = emu.version(sid)
    with pytest.raises(gspread.exceptions.APIError) as info:
        ws.append_row(["x" * 50001])
    assert info.value.code == 400
    assert info.value.error["message"] == (
        "Your input contains more than the maximum of 50000 characters in a single cell."
    )
    assert emu.version(sid) == version and len(emu.values(sid, "Queue")) == 4
    ws.append_row(["x" * 50000])


# ------------------------------------------------------------------------------------------ batchUpdate


def test_delete_rows_in_one_descending_batch(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    sh = client_for(emu).open_by_key(sid)
    ws = sh.worksheet("Queue")

    def delete(start: int, end: int) -> dict[str, Any]:
        return {
            "deleteDimension": {
                "range": {"sheetId": ws.id, "dimension": "ROWS", "startIndex": start, "endIndex": end}
            }
        }

    reply = sh.batch_update({"requests": [delete(3, 4), delete(1, 2)]})  # rows 4 and 2, bottom first
    assert reply == {"spreadsheetId": sid, "replies": [{}, {}]}
    assert emu.values(sid, "Queue") == [["id", "prompt", "status"], ["2", "a blue whale", "done"]]
    assert emu.grid_size(sid, "Queue") == (998, 26)
    ws.delete_rows(2)
    assert emu.values(sid, "Queue") == [["id", "prompt", "status"]]


def test_delete_errors_are_atomic(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    sh = client_for(emu).open_by_key(sid)
    version = emu.version(sid)

    def delete(start: int, end: int) -> dict[str, Any]:
        return {
            "deleteDimension": {
                "range": {"sheetId": 0, "dimension": "ROWS", "startIndex": start, "endIndex": end}
            }
        }

    with pytest.raises(gspread.exceptions.APIError) as info:
        sh.batch_update({"requests": [delete(0, 1000)]})
    assert info.value.code == 400
    assert info.value.error == {
        "code": 400,
        "message": "Invalid requests[0].deleteDimension: You can't delete all the rows on the sheet.",
        "status": "INVALID_ARGUMENT",
    }
    with pytest.raises(gspread.exceptions.APIError) as info:
        sh.batch_update(
            {"requests": [delete(1, 2), delete(999, 1000)]}
        )  # the grid is 999 rows after the first
    assert info.value.error["message"] == (
        "Invalid requests[1].deleteDimension: Cannot delete a row that doesn't exist. "
        "Tried to delete row index 999 but there are only 999 rows."
    )
    with pytest.raises(gspread.exceptions.APIError) as info:
        sh.batch_update({"requests": [delete(1, 2), {"frobnicate": {}}]})
    assert info.value.code == 400 and info.value.error["status"] == "INVALID_ARGUMENT"
    assert emu.values(sid, "Queue") == [
        ["id", "prompt", "status"],
        ["1", "a red fox"],  # trailing empty cells are trimmed, as a person sees the sheet
        ["2", "a blue whale", "done"],
        ["3", "a green frog"],
    ]
    assert emu.version(sid) == version  # nothing applied, nothing bumped


# ------------------------------------------------------------------------------------------ errors


def test_unknown_sheet_spreadsheet_and_unshared(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    gc = client_for(emu)
    sh = gc.open_by_key(sid)
    with pytest.raises(gspread.exceptions.APIError) as info:
        sh.values_get("'Nope'!A5:F15")
    assert info.value.code == 400
    assert info.value.error == {
        "code": 400,
        "message": "Unable to parse range: 'Nope'!A5:F15",
        "status": "INVALID_ARGUMENT",
    }
    with pytest.raises(gspread.WorksheetNotFound):
        sh.worksheet("Nope")

    with pytest.raises(gspread.SpreadsheetNotFound):
        gc.open_by_key("1" + "x" * 43)

    emu.unshare(sid, emu.service_account_info()["client_email"])
    with pytest.raises(PermissionError) as denied:
        gc.open_by_key(sid)
    cause = denied.value.__cause__
    assert isinstance(cause, gspread.exceptions.APIError) and cause.code == 403
    assert cause.error == {
        "code": 403,
        "message": "The caller does not have permission",
        "status": "PERMISSION_DENIED",
    }
    assert gc.list_spreadsheet_files() == []
    emu.share(sid, emu.service_account_info()["client_email"])
    assert gc.open_by_key(sid).title == "Feed"


def test_read_quota_gives_the_recorded_429(make_emulator: EmulatorFactory) -> None:
    emu = make_emulator(read_quota_per_minute=3, write_quota_per_minute=1, quota_window_s=0.5)
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    gc = client_for(emu)
    ws = gc.open_by_key(sid).worksheet("Queue")  # 2 reads
    ws.get_all_values()  # 3rd read
    with pytest.raises(gspread.exceptions.APIError) as info:
        ws.get_all_values()
    assert info.value.code == 429
    assert info.value.response.status_code == 429
    assert info.value.response.json() == expected_quota_body("read", 3)

    ws.append_row(["4", "w"])  # writes have their own bucket
    with pytest.raises(gspread.exceptions.APIError) as info:
        ws.append_row(["5", "w"])
    assert info.value.response.json() == expected_quota_body("write", 1)

    time.sleep(0.6)
    assert ws.get_all_values()[-1] == ["4", "w", ""]


def test_injected_faults(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    gc = client_for(emu)
    ws = gc.open_by_key(sid).worksheet("Queue")

    emu.fail_next(503, endpoints=["values.get"])
    with pytest.raises(gspread.exceptions.APIError) as info:
        ws.get_all_values()
    assert info.value.code == 503
    assert info.value.error == {
        "code": 503,
        "message": "The service is currently unavailable.",
        "status": "UNAVAILABLE",
    }
    assert ws.get_all_values()[0] == ["id", "prompt", "status"]

    emu.fail_next(500, endpoints=["drive.files.get"])
    with pytest.raises(gspread.exceptions.APIError) as info:
        drive_metadata(gc, sid)
    assert info.value.code == 500 and info.value.error["errors"][0]["reason"] == "internalError"

    emu.fail_next(RESET, endpoints=["values.get"])
    with pytest.raises(requests.exceptions.ConnectionError):
        ws.get_all_values()

    gc.set_timeout(0.3)
    emu.fail_next(TIMEOUT, endpoints=["values.get"])
    with pytest.raises(requests.exceptions.Timeout):
        ws.get_all_values()

    gc.set_timeout(5)
    emu.fail_next("garbage", endpoints=["values.get"])
    with pytest.raises(requests.exceptions.JSONDecodeError):
        ws.get_all_values()
    assert ws.get_all_values()[1] == ["1", "a red fox", ""]


# ------------------------------------------------------------------------------------------ change tracking


def test_version_and_modified_time(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    gc = client_for(emu)
    ws = gc.open_by_key(sid).worksheet("Queue")
    before = drive_metadata(gc, sid)
    assert before["version"] == str(emu.version(sid))
    assert before["modifiedTime"].endswith("Z") and len(before["modifiedTime"]) == len(
        "2024-06-01T12:00:00.000Z"
    )

    ws.get_all_values()
    ws.batch_get(["A1"])
    assert drive_metadata(gc, sid) == before  # reads change nothing

    ws.update_cell(2, 3, "posted")
    after_write = drive_metadata(gc, sid)
    assert int(after_write["version"]) > int(before["version"])
    assert after_write["modifiedTime"] > before["modifiedTime"]

    emu.insert_row(sid, "Queue", 2, ["0", "a person's new prompt"])  # a person edits in the UI
    after_edit = drive_metadata(gc, sid)
    assert int(after_edit["version"]) > int(after_write["version"])
    assert after_edit["modifiedTime"] > after_write["modifiedTime"]
    assert ws.row_values(2) == ["0", "a person's new prompt"]
    assert ws.row_values(3) == ["1", "a red fox", "posted"]
    assert emu.count("drive.files.get") == 4
    assert json.loads(json.dumps(emu.values(sid, "Queue")))[0] == ["id", "prompt", "status"]


def test_copy_paste_and_clear_in_one_atomic_batch(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE + [["4", "=1+1"]], "Scratch": []})
    sh = client_for(emu).open_by_key(sid)
    queue, scratch = sh.worksheet("Queue").id, sh.worksheet("Scratch").id

    def copy(row: int, to: int, paste: str) -> dict[str, Any]:
        return {
            "copyPaste": {
                "source": {"sheetId": queue, "startRowIndex": row, "endRowIndex": row + 1},
                "destination": {"sheetId": scratch, "startRowIndex": to, "endRowIndex": to + 1},
                "pasteType": paste,
            }
        }

    sh.batch_update(
        {"requests": [copy(1, 0, "PASTE_NORMAL"), copy(4, 1, "PASTE_VALUES"), copy(4, 2, "PASTE_NORMAL")]}
    )
    assert emu.values(sid, "Scratch") == [["1", "a red fox"], ["4", "2"], ["4", "2"]]
    assert not emu.is_formula(sid, "Scratch", 2, 2) and emu.is_formula(sid, "Scratch", 3, 2)
    # a destination twice the source's height takes it twice
    sh.batch_update(
        {
            "requests": [
                {
                    "copyPaste": {
                        "source": {"sheetId": queue, "startRowIndex": 2, "endRowIndex": 3},
                        "destination": {"sheetId": scratch, "startRowIndex": 3, "endRowIndex": 5},
                    }
                }
            ]
        }
    )
    assert emu.values(sid, "Scratch")[3:] == [["2", "a blue whale", "done"]] * 2
    # updateCells with a range and no rows clears the values in it
    sh.batch_update(
        {"requests": [{"updateCells": {"range": {"sheetId": scratch}, "fields": "userEnteredValue"}}]}
    )
    assert emu.values(sid, "Scratch") == []
    # past the grid: 400 and nothing applied, the clear before it included
    emu.set_grid(sid, "Scratch", row_count=2)
    version = emu.version(sid)
    with pytest.raises(gspread.exceptions.APIError) as info:
        sh.batch_update({"requests": [copy(1, 0, "PASTE_NORMAL"), copy(2, 2, "PASTE_NORMAL")]})
    assert info.value.code == 400 and "exceeds grid limits" in str(info.value)
    assert emu.values(sid, "Scratch") == [] and emu.version(sid) == version


def test_deleting_every_row_below_a_frozen_header_is_refused(emu: GoogleEmulator) -> None:
    sid = emu.create_spreadsheet("Feed", {"Queue": QUEUE})
    emu.set_grid(sid, "Queue", row_count=4, frozen_rows=1)
    ws = client_for(emu).open_by_key(sid).worksheet("Queue")
    with pytest.raises(gspread.exceptions.APIError) as info:
        ws.delete_rows(2, 4)
    assert info.value.code == 400 and "non-frozen rows" in str(info.value)
    ws.delete_rows(2, 3)
    assert emu.values(sid, "Queue") == [["id", "prompt", "status"], ["3", "a green frog"]]
