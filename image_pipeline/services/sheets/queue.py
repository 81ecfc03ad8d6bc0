"""The prompt sheet resource: the queue read as rows, ids and status words written back by position and checked
by a re-read, Done appended, and finished rows removed without ever deleting a stranger's row."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence

import dagster as dg
from pydantic import Field, PrivateAttr

from image_pipeline.domain.checks import Check, fail, ok, warn
from image_pipeline.domain.done_entries import DONE_ALIASES, DONE_COLUMNS, DoneEntry
from image_pipeline.domain.errors import (
    PipelineError,
    QueueFormatError,
    TransientError,
    WriteOutcomeUnknown,
)
from image_pipeline.domain.rows import (
    ID_COLUMN,
    OPTIONAL_COLUMNS,
    STATUS_COLUMN,
    PromptRow,
    is_valid_id,
    new_prompt_id,
    normalize_header,
)
from image_pipeline.domain.statuses import HOLD
from image_pipeline.services.http import RetryPolicy
from image_pipeline.services.sheets.google import GoogleSheetsBackend
from image_pipeline.services.sheets.removal import PositionSafeRemoval
from image_pipeline.services.sheets.table import (
    SHEETS,
    CellWrite,
    QueueSnapshot,
    TableBackend,
    _col_letter,
    _with_usable_ids,
    log,
)


class PromptSheet(PositionSafeRemoval, dg.ConfigurableResource):
    """The queue ("Process") and the audit log ("Done"). Subclasses pick the backend."""

    process_worksheet: str = Field(default="Process", description="Worksheet holding the queue.")
    done_worksheet: str = Field(default="Done", description="Worksheet receiving one audit row per prompt.")
    retry_attempts: int = Field(default=4, description="Tries per request, the first included.")
    retry_base_delay_s: float = Field(default=2.0, description="First backoff delay; doubles per retry.")

    _backend_cache: TableBackend | None = PrivateAttr(default=None)
    # Done cells the sensor wants read in the same request as the queue columns (done_cells.py)
    _done_also: str | None = PrivateAttr(default=None)
    _done_seen: list[list[str]] | None = PrivateAttr(default=None)

    # -- backend selection ---------------------------------------------------------------------------
    def _make_backend(self) -> TableBackend:
        raise NotImplementedError

    @property
    def backend(self) -> TableBackend:
        if self._backend_cache is None:
            self._backend_cache = self._make_backend()
        return self._backend_cache

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=max(1, self.retry_attempts), base_delay_s=self.retry_base_delay_s)

    def describe(self) -> str:
        return self.backend.describe()

    # -- the queue -------------------------------------------------------------------------------------
    def _parse(self, table: list[list[str]]) -> QueueSnapshot:
        if not table or not any(str(c).strip() for c in table[0]):
            raise QueueFormatError(
                f"worksheet {self.process_worksheet!r} has no header row: put 'prompt' in A1 "
                "(and optionally id, negative_prompt, model, width, height, seed, caption)",
                service="sheets",
            )
        header = [str(c) for c in table[0]]
        names = [normalize_header(h) for h in header]
        id_col = names.index(ID_COLUMN) if ID_COLUMN in names else None
        optional = {name: names.index(name) for name in OPTIONAL_COLUMNS if name in names}
        status_col = names.index(STATUS_COLUMN) if STATUS_COLUMN in names else None
        rows: list[PromptRow] = []
        for number, cells in enumerate(table[1:], start=2):
            if not any(str(c) != "" for c in cells):
                continue  # an empty line in the sheet is not a prompt; a whitespace-only one is INVALID

            def cell(i: int | None, cells: list[str] = cells) -> str:
                return str(cells[i]) if i is not None and i < len(cells) else ""

            params = {name: cell(i) for name, i in optional.items() if cell(i).strip() != ""}
            # Column A is the prompt whatever its header says, as the ancestor had it.
            rows.append(
                PromptRow(
                    number,
                    cell(0),
                    cell(id_col).strip(),
                    params,
                    tuple(str(c) for c in cells),
                    status=cell(status_col),
                )
            )
        return QueueSnapshot(header, rows, id_col, status_column=status_col)

    def read_queue(self) -> QueueSnapshot:
        snapshot = self._parse(self.backend.read(self.process_worksheet))
        return snapshot

    def preflight(self) -> list[Check]:
        """The cheapest real calls showing the queue can be read, logged to and edited (see lifecycle/gate.py)."""
        raise NotImplementedError

    def _header_check(self, process_header: Sequence[str], done_header: Sequence[str] | None) -> Check:
        name, process, done = "header as expected", self.process_worksheet, self.done_worksheet
        cells = [str(c) for c in process_header]
        if not any(c.strip() for c in cells):
            return fail(
                SHEETS,
                name,
                f"row 1 of {process!r} is empty",
                f"put 'prompt' in A1 of {process!r} (optional columns: id, {', '.join(OPTIONAL_COLUMNS)})",
            )
        detail = f"{process!r}: {', '.join(c for c in cells if c.strip())}"
        if done_header is not None:
            names = [DONE_ALIASES.get(normalize_header(h), normalize_header(h)) for h in done_header]
            missing = [c for c in DONE_COLUMNS if c not in names]
            if not any(str(h).strip() for h in done_header):
                detail += f"; {done!r}: empty (the header is written on the first log)"
            elif missing:
                detail += f"; {done!r} gets the missing columns {', '.join(missing)} on the first log"
            else:
                detail += f"; {done!r}: all columns present"
        if normalize_header(cells[0]) != "prompt":
            return warn(
                SHEETS, name, f"A1 of {process!r} says {cells[0]!r}; column A is read as the prompt", detail
            )
        return ok(SHEETS, name, detail)

    def ensure_ids(self) -> QueueSnapshot:
        """Read the queue and give every row without a usable id a fresh one (a single write).

        Cells are addressed by position, so on a sheet that people edit at the same time (Google) the
        write is checked by a second read: an id that landed on another row is taken back, and that
        row gets its own id back.
        """
        with self.backend.transaction():
            snapshot = self.read_queue()
            cells: list[CellWrite] = []
            id_col = snapshot.id_column
            if id_col is None:
                id_col = len(snapshot.header)
                snapshot.header.append(ID_COLUMN)
                snapshot.id_column = id_col
                cells.append(CellWrite(1, id_col + 1, ID_COLUMN))
            seen: set[str] = set()
            rows: list[PromptRow] = []
            written: dict[str, str] = {}  # new id -> fingerprint of the row it is meant for
            for row in snapshot.rows:
                pid = row.prompt_id
                # A copied row carries its id along: the copy is a new prompt and gets its own id.
                if not pid or not is_valid_id(pid) or pid in seen:
                    pid = new_prompt_id()
                    while pid in seen:
                        pid = new_prompt_id()
                    cells.append(CellWrite(row.row_number, id_col + 1, pid))
                    written[pid] = row.fingerprint()
                    row = PromptRow(row.row_number, row.prompt, pid, row.params, row.cells)
                seen.add(pid)
                rows.append(row)
            snapshot.rows = rows
            if not cells:
                return snapshot
            with contextlib.suppress(WriteOutcomeUnknown):  # the check below reads what actually landed
                self.backend.write_cells(self.process_worksheet, cells)
            if self.backend.atomic:
                return snapshot
            return _with_usable_ids(self._verify_ids(snapshot, written, id_col))

    def _verify_ids(self, before: QueueSnapshot, written: dict[str, str], id_col: int) -> QueueSnapshot:
        for _ in range(3):
            after = self.read_queue()
            present = {r.prompt_id for r in after.rows}
            fixes: list[CellWrite] = []
            for row in after.rows:
                intended = written.get(row.prompt_id)
                if intended is None or intended == row.fingerprint():
                    continue
                # Our id sits on a row it was not meant for (rows shifted between read and write).
                old_ids = {
                    b.prompt_id
                    for b in before.rows
                    if b.fingerprint() == row.fingerprint() and b.prompt_id and b.prompt_id not in written
                }
                old_ids -= present
                restore = old_ids.pop() if len(old_ids) == 1 else ""
                fixes.append(CellWrite(row.row_number, id_col + 1, restore))
                log.warning("an id landed on a row that moved meanwhile; restoring %r", restore or "(empty)")
            if not fixes:
                return after
            try:
                self.backend.write_cells(self.process_worksheet, fixes)
            except WriteOutcomeUnknown:
                continue  # read again
        return self.read_queue()

    def write_statuses(self, states: dict[str, str], snapshot: QueueSnapshot | None = None) -> dict[str, str]:
        """Show each row's state in its "status" cell (only where the sheet has that column).

        Returns what was written (id -> word). A cell is addressed by position, so where people edit at
        the same time (Google) a re-read checks that each word sits on the row it was meant for; a word
        that landed on another row is taken back (that row gets its own cell again) and written again
        where its row is now. Never raises for a failed write: the status is a courtesy to the reader,
        the ledger and the Done log are the record."""
        if not states:
            return {}
        try:
            with self.backend.transaction():
                before = snapshot if snapshot is not None and not self.backend.atomic else self.read_queue()
                if before.status_column is None:
                    return {}
                cells, written = self._status_cells(before, states)
                if not cells:
                    return {}
                with contextlib.suppress(WriteOutcomeUnknown):
                    self.backend.write_cells(self.process_worksheet, cells)
                if not self.backend.atomic:
                    # only the words the re-read saw where they belong count as shown
                    seen = self._verify_statuses(before, written)
                    return {pid: word for pid, word in written.items() if pid in seen}
                return written
        except PipelineError as exc:
            log.warning("could not write the status column (%s); the run goes on", exc)
            return {}

    @staticmethod
    def _status_cells(
        snapshot: QueueSnapshot, states: dict[str, str]
    ) -> tuple[list[CellWrite], dict[str, str]]:
        col = snapshot.status_column
        assert col is not None
        cells: list[CellWrite] = []
        written: dict[str, str] = {}
        for row in snapshot.rows:
            word = states.get(row.prompt_id)
            if word is None or row.prompt_id in written or row.status == word:
                continue
            cells.append(CellWrite(row.row_number, col + 1, word))
            written[row.prompt_id] = word
        return cells, written

    def _verify_statuses(self, before: QueueSnapshot, written: dict[str, str]) -> set[str]:
        """Put right what landed on the wrong row; the ids whose word the re-read saw on their own row."""
        after = self.read_queue()
        col = after.status_column
        if col is None:
            return set()
        old_status = {r.prompt_id: r.status for r in before.rows}
        where = {r.row_number: r for r in before.rows if r.prompt_id in written}
        fixes: list[CellWrite] = []
        for row in after.rows:
            meant = where.get(row.row_number)
            if meant is None or meant.prompt_id == row.prompt_id:
                continue
            if row.status == written[meant.prompt_id] and row.prompt_id not in written:
                # Our word sits on a row that moved into the position: give that row its own word back.
                # A row typed in that very instant had a word we never saw: it gets HOLD, so a row a
                # person held is never released by our mistake (clearing HOLD runs it).
                if (
                    not row.prompt_id
                    and not row.prompt.strip()
                    and not any(c.strip() for i, c in enumerate(row.cells) if i != col)
                ):
                    fixes.append(CellWrite(row.row_number, col + 1, ""))  # a row only our word made
                else:
                    fixes.append(CellWrite(row.row_number, col + 1, old_status.get(row.prompt_id, HOLD)))
        placed = {r.prompt_id: r for r in after.rows}
        seen = set()
        for pid, word in written.items():
            row = placed.get(pid)
            if row is not None and row.status != word:
                fixes.append(CellWrite(row.row_number, col + 1, word))
            elif row is not None:
                seen.add(pid)
        if fixes:
            log.warning("status words landed on rows that moved meanwhile; putting them right")
            with contextlib.suppress(WriteOutcomeUnknown):
                self.backend.write_cells(self.process_worksheet, fixes)
            # one more read, only in this rare case: a word counts as shown once it was seen in place
            now = self.read_queue().by_id()
            seen |= {pid for pid, word in written.items() if pid in now and now[pid].status == word}
        return seen

    def find_rows(self, ids: Sequence[str]) -> dict[str, PromptRow]:
        """Re-read the queue; the rows that currently carry these ids."""
        current = self.read_queue().by_id()
        return {pid: current[pid] for pid in ids if pid in current}

    def read_before_logging(self) -> tuple[QueueSnapshot, list[str]] | None:
        """The queue and the Done header in one request, for a batch about to log and remove its rows
        (None where reads are free and must happen under the backend's lock: the local workbook)."""
        if self.backend.atomic:
            return None
        process, done_head = self.backend.read_many([self.process_worksheet, (self.done_worksheet, "1:1")])
        return self._parse(process), (done_head[0] if done_head else [])

    def append_done(self, entries: Sequence[DoneEntry], header: list[str] | None = None) -> None:
        """Append audit rows, matching columns by header name and adding the headers that are missing.
        ``header``: the Done header as just read (saves the read)."""
        if not entries:
            return
        with self.backend.transaction():
            if header is None or self.backend.atomic:
                header = self.backend.read_header(self.done_worksheet)
            names = [DONE_ALIASES.get(normalize_header(h), normalize_header(h)) for h in header]
            header_cells: list[CellWrite] = []
            if not any(n.strip() for n in names):
                names = list(DONE_COLUMNS)
                header_cells = [CellWrite(1, i + 1, n) for i, n in enumerate(DONE_COLUMNS)]
            else:
                for col in DONE_COLUMNS:
                    if col not in names:
                        names.append(col)
                        header_cells.append(CellWrite(1, len(names), col))
            if header_cells:
                try:
                    self.backend.write_cells(self.done_worksheet, header_cells)
                except WriteOutcomeUnknown:
                    # Read back before repeating: rows appended under a header that never landed
                    # would be read as the header next time.
                    landed = self.backend.read_header(self.done_worksheet)
                    missing = [c for c in header_cells if c.col > len(landed) or landed[c.col - 1] != c.value]
                    if missing:
                        self.backend.write_cells(self.done_worksheet, missing)
            pending = list(entries)
            for _ in range(3):
                rows = []
                for e in pending:
                    values = e.as_dict()
                    rows.append([values.get(n, "") for n in names])
                try:
                    self.backend.append(self.done_worksheet, rows)
                    return
                except WriteOutcomeUnknown:
                    # The rows may be there already (a 5xx can follow a committed append): append only
                    # the ones that are not, matched by id and prompt as lifecycle.done.read_done_index matches them.
                    logged = {(r.get("id", "").strip(), r.get("prompt", "")) for r in self.read_done()}
                    pending = [e for e in pending if (e.id.strip(), e.prompt) not in logged]
                    if not pending:
                        return
            raise TransientError(
                "Google Sheets append rows: the answer was lost three times", service="sheets"
            )

    def read_queue_and_done(self) -> tuple[QueueSnapshot, list[dict[str, str]]]:
        """Both worksheets in one request: what a run needs to start (the queue and the audit log)."""
        process, done = self.backend.read_many([self.process_worksheet, self.done_worksheet])
        return self._parse(process), self._done_rows(done)

    def read_done(self) -> list[dict[str, str]]:
        return self._done_rows(self.backend.read(self.done_worksheet))

    @staticmethod
    def _done_rows(table: list[list[str]]) -> list[dict[str, str]]:
        if not table:
            return []
        names = [DONE_ALIASES.get(normalize_header(h), normalize_header(h)) for h in table[0]]
        return [{n: (r[i] if i < len(r) else "") for i, n in enumerate(names)} for r in table[1:]]

    def change_token(self) -> str:
        return self.backend.change_token()

    def column_digest(self, columns: Sequence[int]) -> str | None:
        """A digest of these queue columns (0-based), read in one request (one Sheets read of quota);
        None where change_token() is exact (the workbook's file stat) and this read would add nothing.
        Drive's token trails Sheets edits by minutes (google-api-go-client#906), so the sensor also
        compares this, on a slower cadence, to see new rows at once."""
        if not isinstance(self.backend, GoogleSheetsBackend):
            return None
        spans = [f"{_col_letter(c + 1)}:{_col_letter(c + 1)}" for c in sorted(set(columns))]
        ranges = [(self.process_worksheet, span) for span in spans]
        if self._done_also and self.done_worksheet in self.backend.sheet_ids():  # never adds a Done here
            ranges.append((self.done_worksheet, self._done_also))
        tables = self.backend.read_many(ranges)
        if len(ranges) > len(spans):
            self._done_seen, tables = tables[-1], tables[:-1]
        return hashlib.sha256(json.dumps([spans, tables]).encode()).hexdigest()[:16]
