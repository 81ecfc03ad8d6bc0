"""The local workbook backend and the queue rules shared by both backends."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.errors import QueueFormatError
from image_pipeline.services.sheets import CHANGED, REMOVED, VANISHED, LocalWorkbook

from .conftest import read_csv, write_csv


def make(folder: Path) -> LocalWorkbook:
    return LocalWorkbook(folder=str(folder))


def test_ids_are_assigned_once_and_kept(workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt", "seed"], ["a fox", "1"], ["a cat", ""]])
    sheet = make(workbook_dir)
    first = sheet.ensure_ids()
    ids = [r.prompt_id for r in first.rows]
    assert len(set(ids)) == 2 and all(ids)
    table = read_csv(workbook_dir / "process.csv")
    assert table[0] == ["prompt", "seed", "id"]
    assert [r[2] for r in table[1:]] == ids
    again = sheet.ensure_ids()
    assert [r.prompt_id for r in again.rows] == ids
    assert again.rows[0].params == {"seed": "1"}


def test_copied_row_with_same_id_gets_a_new_id(workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt", "id"], ["a", "p1"], ["a", "p1"], ["b", "bad/id"]])
    snapshot = make(workbook_dir).ensure_ids()
    ids = [r.prompt_id for r in snapshot.rows]
    assert ids[0] == "p1"
    assert ids[1] != "p1" and ids[2] != "bad/id"
    assert len(set(ids)) == 3


def test_empty_lines_are_skipped_but_whitespace_rows_are_kept(workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"], ["a"], [], ["", ""], ["   "], ["b"]])
    snapshot = make(workbook_dir).ensure_ids()
    assert [r.prompt for r in snapshot.rows] == ["a", "   ", "b"]


def test_missing_header_and_missing_file_are_clear_errors(workbook_dir: Path) -> None:
    sheet = make(workbook_dir)
    with pytest.raises(QueueFormatError, match="process.csv"):
        sheet.read_queue()
    write_csv(workbook_dir / "process.csv", [])
    with pytest.raises(QueueFormatError, match="no header row"):
        sheet.read_queue()


def test_remove_rows_by_id_after_rereading(workbook_dir: Path) -> None:
    write_csv(
        workbook_dir / "process.csv", [["prompt", "id"], ["a", "p1"], ["b", "p2"], ["c", "p3"], ["d", "p4"]]
    )
    sheet = make(workbook_dir)
    snap = {r.prompt_id: r for r in sheet.read_queue().rows}
    # meanwhile a person inserts a row at the top, edits p2 and deletes p3
    write_csv(
        workbook_dir / "process.csv",
        [["prompt", "id"], ["new", ""], ["a", "p1"], ["b edited", "p2"], ["d", "p4"]],
    )
    outcome = sheet.remove_rows({pid: snap[pid].fingerprint() for pid in ("p1", "p2", "p3")})
    assert outcome == {"p1": REMOVED, "p2": CHANGED, "p3": VANISHED}
    assert read_csv(workbook_dir / "process.csv") == [
        ["prompt", "id"],
        ["new", ""],
        ["b edited", "p2"],
        ["d", "p4"],
    ]


def test_done_rows_match_existing_ancestor_header(workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"]])
    write_csv(
        workbook_dir / "done.csv", [["Prompt", "Status", "Info", "Timestamp"], ["old", "SUCCESS", "x", "t"]]
    )
    sheet = make(workbook_dir)
    sheet.append_done([DoneEntry(id="p9", prompt="fox", status="FAILED", information="why", model="m")])
    table = read_csv(workbook_dir / "done.csv")
    assert table[0][:4] == ["Prompt", "Status", "Info", "Timestamp"]
    assert "id" in table[0] and "model" in table[0] and "message_id" in table[0]
    row = dict(zip(table[0], table[2], strict=False))
    assert row["Prompt"] == "fox" and row["Status"] == "FAILED" and row["Info"] == "why"
    assert row["id"] == "p9" and row["model"] == "m"
    assert table[1][:4] == ["old", "SUCCESS", "x", "t"]


def test_done_header_written_into_empty_log(workbook_dir: Path) -> None:
    write_csv(workbook_dir / "process.csv", [["prompt"]])
    sheet = make(workbook_dir)
    sheet.append_done([DoneEntry(id="p1", prompt='=IMPORTXML("x")', status="SUCCESS", information="")])
    records = sheet.read_done()
    assert records[0]["id"] == "p1" and records[0]["prompt"] == '=IMPORTXML("x")'


def _writer(folder: str, worker: int, count: int) -> None:
    sheet = LocalWorkbook(folder=folder)
    for i in range(count):
        sheet.append_done(
            [DoneEntry(id=f"w{worker}x{i}", prompt=f"prompt {worker}/{i}", status="SUCCESS", information="")]
        )
        sheet.remove_rows({f"q{worker}x{i}": _fingerprints[f"q{worker}x{i}"]})


_fingerprints: dict[str, str] = {}


def test_concurrent_writers_lose_nothing(workbook_dir: Path) -> None:
    workers, per_worker = 4, 15
    rows = [["prompt", "id"]]
    for w in range(workers):
        for i in range(per_worker):
            rows.append([f"prompt {w}/{i}", f"q{w}x{i}"])
    write_csv(workbook_dir / "process.csv", rows)
    for row in LocalWorkbook(folder=str(workbook_dir)).read_queue().rows:
        _fingerprints[row.prompt_id] = row.fingerprint()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(workbook_dir), w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    done = LocalWorkbook(folder=str(workbook_dir)).read_done()
    assert sorted(d["id"] for d in done) == sorted(
        f"w{w}x{i}" for w in range(workers) for i in range(per_worker)
    )
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"]]
    leftovers = [p.name for p in workbook_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
