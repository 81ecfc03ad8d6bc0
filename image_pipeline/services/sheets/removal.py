"""Finished rows removed by position without ever deleting a stranger's row: capture, delete, read back, restore.

Sheets deletes rows by index, and a person may insert or sort rows between our read and our delete. So each
removal captures the rows it means to delete (a copy in a hidden block), deletes, reads the sheet back, and
puts back any stranger's row the delete took. The journal (the ledger) records each delete's intent, so a
crash between the delete and the check is repaired at the next start (``recover_removals``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from image_pipeline.domain.errors import (
    ServiceBlocked,
    TransientError,
    WriteOutcomeUnknown,
)
from image_pipeline.domain.rows import (
    PromptRow,
)
from image_pipeline.domain.statuses import REMOVED as LEDGER_REMOVED
from image_pipeline.services.sheets.table import (
    _LIVE_REMOVALS,
    CHANGED,
    REMOVED,
    VANISHED,
    CaptureArea,
    CaptureLost,
    QueueSnapshot,
    RowsShifted,
    _removal_intent,
    _removal_is_stale,
    _removal_owner,
    _same_row,
    log,
)


class RemovalJournal(Protocol):
    """What removal needs from the ledger: each delete's intent, kept until its outcome is known."""

    def begin_removal(self, nonce: str, owner: str, body: str) -> None: ...
    def end_removal(self, nonce: str) -> None: ...
    def open_removals(self) -> list[tuple[str, str, float, str]]: ...
    def take_removal(self, nonce: str, owner: str, is_stale: Callable[[str, float], bool]) -> bool: ...
    def get(self, prompt_id: str, fingerprint: str) -> Any: ...


class PositionSafeRemoval:
    """The removal half of ``PromptSheet`` (mixed into it): it uses the sheet's backend and queue reads."""

    def remove_rows(
        self,
        expected: dict[str, str],
        snapshot: QueueSnapshot | None = None,
        journal: RemovalJournal | None = None,
    ) -> dict[str, str]:
        """Remove rows by id after re-reading them. ``expected`` maps id -> the fingerprint we processed.

        A row whose content changed meanwhile is kept (CHANGED); a missing id deletes nothing (VANISHED).
        Rows are deleted by position, so where people edit at the same time (Google) the delete copies
        the rows it removes into a hidden worksheet in the same atomic request: any removed row that is
        not the one we meant (a person inserted or moved rows between our read and the delete) is put
        back where it was, and the row we meant is looked up again. ``snapshot``, a read made just
        before (Google only: the local workbook reads under its lock), saves the first re-read.

        ``journal`` (the ledger) makes that check survive a crash: each delete's intent is recorded
        before it is sent, and cleared once its copy was checked; the copy is never overwritten, so the
        next run (``recover_removals``, called here first) puts back what a killed run could not.
        """
        if not expected:
            return {}
        owner = _removal_owner()
        _LIVE_REMOVALS.add(owner)
        try:
            if journal is not None and not self.backend.atomic:
                try:
                    self.recover_removals(journal, owner=owner)
                except (TransientError, WriteOutcomeUnknown) as exc:
                    # the copies stay where they are and the intents stay recorded: the next run retries
                    log.warning("could not check the deletes of an interrupted run yet (%s)", exc)
            return self._remove_rows(expected, snapshot, journal, owner)
        finally:
            _LIVE_REMOVALS.discard(owner)

    def _remove_rows(
        self,
        expected: dict[str, str],
        snapshot: QueueSnapshot | None,
        journal: RemovalJournal | None,
        owner: str,
    ) -> dict[str, str]:
        outcome: dict[str, str] = {}
        pending = dict(expected)
        earlier = None if self.backend.atomic else snapshot
        with self.backend.transaction():
            for _ in range(4):
                snapshot, earlier = earlier or self.read_queue(), None
                targets: list[PromptRow] = []
                for pid, fingerprint in pending.items():
                    matches = [r for r in snapshot.rows if r.prompt_id == pid]
                    same = [r for r in matches if r.fingerprint() == fingerprint]
                    if same:
                        targets.append(same[0])
                    else:
                        outcome[pid] = CHANGED if matches else VANISHED
                if not targets:
                    break
                targets.sort(key=lambda t: t.row_number)
                for t in targets:
                    outcome[t.prompt_id] = REMOVED
                if self.backend.atomic:
                    self.backend.delete_rows(self.process_worksheet, [t.row_number for t in targets])
                    break
                width = max([len(snapshot.header), *(len(r.cells) for r in snapshot.rows)])
                area = CaptureArea(uuid.uuid4().hex, len(targets), max(1, width))
                if journal is not None:
                    # durable before the request leaves: a crash before the copy is checked is repaired
                    journal.begin_removal(area.nonce, owner, _removal_intent(snapshot, targets, area))
                settled = True  # whether the copy is checked once this pass is over
                try:
                    captured = self.backend.delete_rows_capturing(
                        self.process_worksheet, [t.row_number for t in targets], width, area
                    )
                except RowsShifted:
                    if journal is not None:
                        journal.end_removal(area.nonce)  # refused as a whole: nothing was applied
                    continue  # read again
                except (ServiceBlocked, TransientError):
                    # refused, or failed before it could apply (an unknown outcome is WriteOutcomeUnknown)
                    if journal is not None:
                        journal.end_removal(area.nonce)
                    raise
                except (CaptureLost, WriteOutcomeUnknown):
                    # no copy yet: a request whose answer was lost may still take effect later, so its
                    # intent stays for the next run to check
                    captured, settled = None, False
                if captured is not None:
                    still = self._put_back_strangers(snapshot, targets, captured)
                else:
                    # A delete whose answer was lost is never repeated as is: by now the same positions
                    # may hold other rows. The read below tells what happened; the loop deletes again by id.
                    after = self.read_queue()
                    still = [t for t in targets if any(_same_row(a, t) for a in after.rows)]
                    self._restore_lost(snapshot, targets, after, len(still))
                if journal is not None and settled:
                    journal.end_removal(area.nonce)
                if not still:
                    break
                pending = {t.prompt_id: t.fingerprint() for t in still}
        return outcome

    def recover_removals(self, journal: RemovalJournal, owner: str | None = None) -> int:
        """Finish the deletes an interrupted run left unchecked: read each one's copy and put back the
        rows it removed that were not the ones meant (a person's row that slid into the position).
        Returns how many rows were put back. Cheap when there is nothing to do (one ledger read)."""
        if self.backend.atomic:
            return 0
        open_ = journal.open_removals()
        if not open_:
            return 0
        mine = owner or _removal_owner()
        _LIVE_REMOVALS.add(mine)
        restored = 0
        try:
            for nonce, _owner, _created, body in open_:
                if not journal.take_removal(nonce, mine, _removal_is_stale):
                    continue  # its run is still at work
                intent = json.loads(body)
                targets = [
                    PromptRow(int(t["row"]), "", str(t["id"]), {}, (), status="") for t in intent["targets"]
                ]
                prints = [str(t["fingerprint"]) for t in intent["targets"]]
                area = CaptureArea(nonce, len(targets), int(intent["width"]))
                try:
                    captured = self.backend.read_capture(area)
                    if captured is not None:
                        restored += self._put_back_after_crash(intent, targets, prints, captured, journal)
                except WriteOutcomeUnknown as exc:
                    log.warning("putting back rows of an interrupted delete: %s; checked again next run", exc)
                    continue
                journal.end_removal(nonce)  # (no copy: that delete never took effect)
        finally:
            if owner is None:
                _LIVE_REMOVALS.discard(mine)
        return restored

    def _put_back_after_crash(
        self,
        intent: dict[str, Any],
        targets: list[PromptRow],
        prints: list[str],
        captured: list[list[str]],
        journal: RemovalJournal,
    ) -> int:
        header = [str(h) for h in intent["header"]]
        now = self.read_queue()
        present = {(r.prompt_id, r.fingerprint()) for r in now.rows} | {tuple(r.cells) for r in now.rows}
        strangers: list[int] = []
        for i in self._judge(header, targets, prints, captured)[0]:
            got = self._parse([header, captured[i]]).rows if any(c != "" for c in captured[i]) else []
            if not got:
                continue  # an empty line: nothing of anyone's was lost
            row = got[0]
            if (row.prompt_id, row.fingerprint()) in present or tuple(row.cells) in present:
                continue  # put back already (the run was killed after restoring it)
            entry = journal.get(row.prompt_id, row.fingerprint()) if row.prompt_id else None
            if entry is not None and entry.queue_state == LEDGER_REMOVED:
                continue  # a prompt of ours that a later run removed on purpose
            strangers.append(i)
        if not strangers:
            return 0
        log.warning(
            "an interrupted run deleted %d row(s) that were not its own; putting them back", len(strangers)
        )
        self._restore_strangers(targets, strangers, captured)
        return len(strangers)

    def _put_back_strangers(
        self, snapshot: QueueSnapshot, targets: list[PromptRow], captured: list[list[str]]
    ) -> list[PromptRow]:
        """Compare what the delete removed with what we meant; re-insert the rows that were not ours.
        Returns the targets that were not deleted (the caller looks them up again). ``captured`` holds
        the values the removed rows showed, compared with the values our read showed: re-based formulas
        in the copy cannot make our own row look like a stranger, nor a stranger like ours."""
        prints = [t.fingerprint() for t in targets]
        strangers, unmatched = self._judge(snapshot.header, targets, prints, captured)
        missed = [targets[j] for j in unmatched]
        if strangers:
            log.warning(
                "%d row(s) moved into the deleted positions while the sheet changed; putting them back",
                len(strangers),
            )
            self._restore_strangers(targets, strangers, captured)
        return missed

    def _judge(
        self, header: list[str], targets: list[PromptRow], prints: list[str], captured: list[list[str]]
    ) -> tuple[list[int], list[int]]:
        """Which removed rows were not ours (indexes into ``captured``) and which targets no removed row
        was (indexes into ``targets``). Matched as sets, by id and fingerprint: when a person inserted a
        row above the batch, every position holds the row that was above it, and only the one row that
        slid in is a stranger."""
        wanted: dict[tuple[str, str], int] = {}
        for j, (target, fingerprint) in enumerate(zip(targets, prints, strict=True)):
            wanted.setdefault((target.prompt_id, fingerprint), j)
        strangers: list[int] = []
        for i, cells in enumerate(captured):
            got = self._parse([header, cells]).rows if any(c != "" for c in cells) else []
            key = (got[0].prompt_id, got[0].fingerprint()) if got else None
            if key is not None and key in wanted:
                del wanted[key]
            else:
                strangers.append(i)
        return strangers, sorted(wanted.values())

    def _restore_strangers(
        self, targets: list[PromptRow], strangers: list[int], captured: list[list[str]]
    ) -> None:
        # Where each removed row stood once the whole delete is applied: its old position less the
        # rows above it that were rightly deleted. Re-inserting in ascending order keeps every position.
        ours = [t.row_number for i, t in enumerate(targets) if i not in strangers]
        placements = [
            (targets[i].row_number - sum(1 for n in ours if n < targets[i].row_number), i) for i in strangers
        ]
        try:
            self.backend.restore_captured(self.process_worksheet, placements)
        except (RowsShifted, WriteOutcomeUnknown):
            # fall back to writing the values it showed, after checking which ones are missing
            present = [tuple(r.cells) for r in self.read_queue().rows]
            for position, i in placements:
                cells = captured[i]
                if any(c != "" for c in cells) and tuple(cells) not in present:
                    self.backend.insert_row(self.process_worksheet, position, cells)

    def _restore_lost(
        self, before: QueueSnapshot, targets: list[PromptRow], after: QueueSnapshot, limit: int
    ) -> None:
        """Put back rows that a position-based delete removed by mistake (at most one per missed target)."""
        if limit <= 0:
            return
        target_rows = {t.row_number for t in targets}
        remaining = list(after.rows)
        lost: list[PromptRow] = []
        for row in before.rows:
            if row.row_number in target_rows:
                continue
            match = next((a for a in remaining if _same_row(a, row)), None)
            if match is None:
                lost.append(row)
            else:
                remaining.remove(match)
        for row in lost[:limit]:
            # where it was relative to the row above it, which is what a person sees
            previous = [
                b for b in before.rows if b.row_number < row.row_number and b.row_number not in target_rows
            ]
            position = 2
            if previous:
                anchor = next((a for a in self.read_queue().rows if _same_row(a, previous[-1])), None)
                position = anchor.row_number + 1 if anchor else row.row_number
            log.warning(
                "a row was deleted by mistake while the sheet changed; restoring it at row %d", position
            )
            self.backend.insert_row(self.process_worksheet, position, list(row.cells))

    # -- the log ---------------------------------------------------------------------------------------
