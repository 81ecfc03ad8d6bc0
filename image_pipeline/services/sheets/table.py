"""What every sheet backend shares: the queue snapshot, a cell write, the backend interface, and the
bookkeeping of a delete that copies what it removes (its intent outlives a crash)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from image_pipeline.domain.rows import PromptRow, is_valid_id
from image_pipeline.services.hosts import node_id, process_alive

log = logging.getLogger("image_pipeline.sheets")

# Outcomes of removing a row from the queue.
REMOVED = "removed"
CHANGED = "changed"  # the row still has the id but its text changed meanwhile: a person edited it, keep it
VANISHED = "vanished"  # no row has the id any more: a person deleted it (or it was removed already)

# A hidden worksheet that receives a copy of the rows a delete removes, in the same atomic batchUpdate,
# so the pipeline knows exactly what it deleted even when people edit the queue at the same moment. Each
# delete adds its own block on top (found again by a nonce the ledger holds), so a copy outlives a crash.
SHEETS = "Sheets"  # the service name in preflight tables
REMOVED_ROWS_WORKSHEET = "_image_pipeline_removed"


class RowsShifted(Exception):
    """A position-based write was refused because the sheet changed shape meanwhile; nothing was applied."""


class CaptureLost(Exception):
    """The copy of the deleted rows is not there (the delete has not taken effect, or not yet)."""


# Each capturing delete puts its copy in a block of its own on top of the hidden worksheet; this many rows
# of older blocks are kept below it (a copy is read back within seconds, or by the next run after a crash).
CAPTURE_KEEP_ROWS = 1000
CAPTURE_MIN_COLUMNS = 26
# An unfinished removal whose owner may still be alive elsewhere is taken over after this long.
REMOVAL_LEASE_S = 600.0


@dataclass(frozen=True)
class CaptureArea:
    """Where one capturing delete copies the rows it removes: a block of the hidden worksheet whose first
    cell is ``nonce``, followed by ``rows`` rows of ``width`` columns (twice: as they were, and as shown)."""

    nonce: str
    rows: int
    width: int


@dataclass
class QueueSnapshot:
    """One read of "Process"."""

    header: list[str]
    rows: list[PromptRow]
    id_column: int | None  # 0-based column index of "id", None when the header has no such column
    token: str = ""  # change token taken right after the read
    status_column: int | None = None  # 0-based index of the optional "status" column

    def by_id(self) -> dict[str, PromptRow]:
        out: dict[str, PromptRow] = {}
        for row in self.rows:
            if row.prompt_id and row.prompt_id not in out:
                out[row.prompt_id] = row
        return out


@dataclass
class CellWrite:
    row: int  # 1-based
    col: int  # 1-based
    value: str


@dataclass
class TableBackend:
    """Moves tables of strings. Row and column numbers are 1-based, like the sheet UI."""

    process: str
    done: str
    notes: list[str] = field(default_factory=list)
    # True when a read and the writes that depend on it cannot interleave with anyone else's edits
    atomic = False

    def read(self, worksheet: str) -> list[list[str]]:
        raise NotImplementedError

    def read_header(self, worksheet: str) -> list[str]:
        table = self.read(worksheet)
        return table[0] if table else []

    def read_many(self, worksheets: Sequence[str | tuple[str, str]]) -> list[list[list[str]]]:
        """Several worksheets at once (one request where the API allows it). An item may be
        ``(worksheet, "1:1")`` for the header row only."""
        out = []
        for item in worksheets:
            name, cells = (item, "") if isinstance(item, str) else item
            out.append([self.read_header(name)] if cells == "1:1" else self.read(name))
        return out

    def write_cells(self, worksheet: str, cells: Sequence[CellWrite]) -> None:
        raise NotImplementedError

    def append(self, worksheet: str, rows: Sequence[Sequence[str]]) -> None:
        raise NotImplementedError

    def delete_rows(self, worksheet: str, row_numbers: Sequence[int]) -> None:
        raise NotImplementedError

    def insert_row(self, worksheet: str, row_number: int, cells: Sequence[str]) -> None:
        raise NotImplementedError

    def delete_rows_capturing(
        self, worksheet: str, row_numbers: Sequence[int], width: int, area: CaptureArea | None = None
    ) -> list[list[str]] | None:
        """Delete rows by position; return the values they showed when deleted (ascending row order), or
        None when the backend cannot tell (the rows were deleted all the same). ``area``: where the copy
        goes, chosen (and recorded) by the caller before the request leaves."""
        self.delete_rows(worksheet, row_numbers)
        return None

    def read_capture(self, area: CaptureArea) -> list[list[str]] | None:
        """The copy an earlier capturing delete made, or None when there is none (it never took effect)."""
        return None

    def restore_captured(self, worksheet: str, placements: Sequence[tuple[int, int]]) -> None:
        """Re-insert captured rows: (row number to insert at, index into the last capture), ascending."""
        raise NotImplementedError

    def change_token(self) -> str:
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold off other writers of this backend between a read and the writes that depend on it."""
        yield

    def describe(self) -> str:
        raise NotImplementedError


def _trim(table: list[list[str]]) -> list[list[str]]:
    """Drop trailing empty cells and rows, as the Sheets API does, so both backends read alike."""
    out = [list(r) for r in table]
    for r in out:
        while r and str(r[-1]) == "":
            r.pop()
    while out and not out[-1]:
        out.pop()
    return out


def _with_usable_ids(snapshot: QueueSnapshot) -> QueueSnapshot:
    """Only rows that carry a valid id of their own (the others get one on the next pass)."""
    seen: set[str] = set()
    rows = []
    for row in snapshot.rows:
        if row.prompt_id and is_valid_id(row.prompt_id) and row.prompt_id not in seen:
            seen.add(row.prompt_id)
            rows.append(row)
    snapshot.rows = rows
    return snapshot


def _same_row(a: PromptRow, b: PromptRow) -> bool:
    return a.prompt_id == b.prompt_id and a.fingerprint() == b.fingerprint()


# Owners of the removals running in this process: an unfinished one whose owner is not among them was
# interrupted (an exception, or a process killed before it read its copy back).
_LIVE_REMOVALS: set[str] = set()


def _removal_owner() -> str:
    # host[/node]:pid:nonce, like the ledger's claims: the node (kernel + PID namespace) makes a PID check sound
    node = node_id()
    where = f"{socket.gethostname()}/{node}" if node else socket.gethostname()
    return f"{where}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _removal_is_stale(owner: str, created: float) -> bool:
    """Whether an unfinished removal was abandoned: its call in this process has returned, its process is
    gone (provably the same kernel and PID namespace), or it is older than any removal takes. ``created`` is
    the ledger's clock (the database's on PostgreSQL): a host clock far off it only moves that last limit."""
    try:
        where, pid_text, _ = owner.split(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True
    if time.time() - created > REMOVAL_LEASE_S:
        return True
    node = where.partition("/")[2]
    if not node or node != node_id():
        return False  # another kernel or namespace (or an older token): only the age decides
    if pid == os.getpid():
        return owner not in _LIVE_REMOVALS
    return not process_alive(pid)


def _removal_intent(snapshot: QueueSnapshot, targets: list[PromptRow], area: CaptureArea) -> str:
    """What the next run needs to check a delete it did not see finish: which rows were meant."""
    return json.dumps(
        {
            "header": snapshot.header,
            "width": area.width,
            "targets": [
                {"id": t.prompt_id, "fingerprint": t.fingerprint(), "row": t.row_number} for t in targets
            ],
        }
    )


def _col_letter(col: int) -> str:
    letters = ""
    while col > 0:
        col, rem = divmod(col - 1, 26)
        letters = chr(65 + rem) + letters
    return letters
