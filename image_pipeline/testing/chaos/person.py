"""The person: someone curating the queue during the run, and someone answering CHECK CHANNEL notices.

``PersonWriter`` is a thread that adds, rewrites, reorders and withdraws prompts in "Process" while the
pipeline works, each edit atomic as in the Sheets UI. ``ChannelChecker`` runs between workers: for each
row held because its delivery is uncertain it looks for the post in the emulated channel and deletes the
row or types REPOST; ``uncertain_deliveries`` and ``queue_rows`` read the ledger and the queue the way
the pipeline does, so the fingerprint and caption it compares are the pipeline's own.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from image_pipeline.domain.captions import caption_for
from image_pipeline.domain.rows import ID_COLUMN, OPTIONAL_COLUMNS, STATUS_COLUMN, PromptRow, normalize_header
from image_pipeline.domain.statuses import CHECK_CHANNEL, REPOST
from image_pipeline.testing.chaos.books import LedgerRef, ledger_query
from image_pipeline.testing.chaos.truth import _WORDS, IMAGE_SIDE, Truth, marker_of
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import PROCESS_WORKSHEET, Sandbox


class PersonWriter(threading.Thread):
    """Someone curating "Process" while the pipeline works: adds, rewrites, reorders and withdraws prompts."""

    def __init__(self, sandbox: Sandbox, truth: Truth, rng: random.Random) -> None:
        super().__init__(name="chaos-person", daemon=True)
        self.sandbox = sandbox
        self.truth = truth
        self.rng = rng
        self.stop_event = threading.Event()
        self.ops: Counter[str] = Counter()

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(0.2, 0.5)):
            op = self.rng.choice(("insert", "edit", "move", "delete"))
            with self._one_ui_action():
                if self._apply(op):
                    self.ops[op] += 1

    @contextmanager
    def _one_ui_action(self) -> Iterator[None]:
        # A person's edit in the Sheets UI is atomic; the emulator locks each person-edit call on its own,
        # so read-then-edit is held under its state lock, or the pipeline could shift the rows in between
        # and the harness would withdraw the wrong prompt.
        with self.sandbox.google._state:
            yield

    def _apply(self, op: str) -> bool:
        google, sid = self.sandbox.google, self.sandbox.spreadsheet_id
        rows = google.values(sid, PROCESS_WORKSHEET)
        data = [n for n in range(2, len(rows) + 1) if any(cell != "" for cell in rows[n - 1])]
        if op == "insert" or not data:
            text = self.truth.new_prompt(self.rng)
            marker = marker_of(text)
            position = self.rng.randint(2, len(rows) + 1)
            google.insert_row(sid, PROCESS_WORKSHEET, position, [text, IMAGE_SIDE, IMAGE_SIDE], raw=True)
            with self.truth.lock:
                self.truth.inserted.add(marker or "")
            return True
        number = self.rng.choice(data)
        cells = rows[number - 1]
        marker = marker_of(cells[0] if cells else "")
        if marker is None:
            return False
        if op == "edit":
            # the marker stays, so the prompt stays traceable; processing either text is correct
            text = f"chaos prompt {marker} edited " + " ".join(self.rng.sample(_WORDS, 3))
            google.update_cell(sid, PROCESS_WORKSHEET, number, 1, text, raw=True)
            with self.truth.lock:
                self.truth.edited.add(marker)
                self.truth.texts[marker] = text
            return True
        if op == "move":
            google.delete_row(sid, PROCESS_WORKSHEET, number)
            remaining = len(rows) - 1
            google.insert_row(sid, PROCESS_WORKSHEET, self.rng.randint(2, remaining + 1), cells, raw=True)
            with self.truth.lock:
                self.truth.moved.add(marker)
            return True
        google.delete_row(sid, PROCESS_WORKSHEET, number)
        with self.truth.lock:
            self.truth.withdrawn.add(marker)
        return True


def uncertain_deliveries(ledger: LedgerRef) -> dict[tuple[str, str], tuple[str, float]]:
    """(prompt id, fingerprint) -> (post_state, updated_at) of every send whose outcome the pipeline does
    not know: UNCERTAIN (its answer was lost) or POSTING (the process died during it; read between
    workers, so no live run holds it)."""
    from image_pipeline.domain.statuses import POSTING, UNCERTAIN

    rows = ledger_query(
        ledger,
        "SELECT prompt_id, fingerprint, post_state, updated_at FROM prompts WHERE post_state IN (:u, :p)",
        {"u": UNCERTAIN, "p": POSTING},
    )
    return {(str(pid), str(fp)): (str(state), float(at)) for pid, fp, state, at in rows or []}


def queue_rows(grid: list[list[str]]) -> tuple[list[str], list[PromptRow]]:
    """The queue as the pipeline parses it (services/sheets/queue.py ``_parse``): the header's names, and the
    rows with id, params and status, so the fingerprint and caption are the pipeline's own."""
    names = [normalize_header(h) for h in grid[0]] if grid else []
    id_col = names.index(ID_COLUMN) if ID_COLUMN in names else None
    status_col = names.index(STATUS_COLUMN) if STATUS_COLUMN in names else None
    optional = {name: names.index(name) for name in OPTIONAL_COLUMNS if name in names}
    rows: list[PromptRow] = []
    for number, cells in enumerate(grid[1:], start=2):
        if not any(c != "" for c in cells):
            continue

        def cell(i: int | None, cells: list[str] = cells) -> str:
            return str(cells[i]) if i is not None and i < len(cells) else ""

        params = {name: cell(i) for name, i in optional.items() if cell(i).strip() != ""}
        rows.append(
            PromptRow(number, cell(0), cell(id_col).strip(), params, tuple(cells), status=cell(status_col))
        )
    return names, rows


class ChannelChecker:
    """The person who reads a CHECK CHANNEL notice: for every row held because its delivery is uncertain,
    they look in the channel for a post with the row's caption. There: they delete the row (it is done).
    Missing: they type REPOST in its status cell (adding a "status" column first if the sheet has none,
    as the notice says), and the next run sends it once. Called between workers, when no send is in
    flight, so what the channel holds is final."""

    MAX_PER_DELIVERY = 6  # a delivery that stays uncertain after this many decisions is left (not drained)

    def __init__(self, sandbox: Sandbox, truth: Truth, t0: float) -> None:
        self.sandbox = sandbox
        self.truth = truth
        self.t0 = t0
        self.decisions: Counter[str] = Counter()
        # (id, fingerprint) -> the ledger's updated_at when REPOST was typed: a row still saying REPOST
        # with the same entry is waiting for its run, not a new uncertainty
        self._reposted: dict[tuple[str, str], float] = {}
        self._per_delivery: Counter[tuple[str, str]] = Counter()

    def pending(self, ledger_path: LedgerRef) -> int:
        """Rows held as uncertain that no decision covers yet."""
        return len(self._held(ledger_path, self._grid()))

    def check(self, ledger_path: LedgerRef) -> int:
        """Decide every held row; the number of decisions (deletions and REPOSTs) made."""
        if not self._held(ledger_path, self._grid()):
            return 0
        time.sleep(0.3)  # a dead worker's last request is routed (or dropped) by now
        google, sid = self.sandbox.google, self.sandbox.spreadsheet_id
        channel = Counter(
            m.get("caption") or m.get("text") or ""
            for m in self.sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)
        )
        made = 0
        # one UI session: the person reads and edits while no request of the pipeline lands in between;
        # rows are handled bottom-up, so a deletion never shifts a row still to be handled
        with google._state:
            grid = google.values(sid, PROCESS_WORKSHEET)
            held = self._held(ledger_path, grid)
            names = [normalize_header(h) for h in grid[0]] if grid else []
            for row, key, signal in sorted(held, key=lambda h: -h[0].row_number):
                caption = caption_for(row)
                posted = channel[caption] > 0
                if posted:
                    google.delete_row(sid, PROCESS_WORKSHEET, row.row_number)
                    decision = "deleted"
                else:
                    if STATUS_COLUMN not in names:
                        names.append(STATUS_COLUMN)
                        google.update_cell(sid, PROCESS_WORKSHEET, 1, len(names), STATUS_COLUMN, raw=True)
                    col = names.index(STATUS_COLUMN) + 1
                    google.update_cell(sid, PROCESS_WORKSHEET, row.row_number, col, REPOST, raw=True)
                    self._reposted[key] = signal[1]
                    decision = "reposted"
                self._per_delivery[key] += 1
                self.decisions[decision] += 1
                made += 1
                event = {
                    "id": key[0],
                    "fingerprint": key[1],
                    "signal": signal[0],
                    "status_cell": row.status,
                    "decision": decision,
                    "posts_with_caption": channel[caption],
                    "at_s": round(time.monotonic() - self.t0, 2),
                }
                if marker := marker_of(row.prompt):
                    with self.truth.lock:
                        self.truth.checks.setdefault(marker, []).append(event)
        return made

    def _grid(self) -> list[list[str]]:
        return self.sandbox.google.values(self.sandbox.spreadsheet_id, PROCESS_WORKSHEET)

    def _held(
        self, ledger_path: LedgerRef, grid: list[list[str]]
    ) -> list[tuple[PromptRow, tuple[str, str], tuple[str, float]]]:
        """(row, (id, fingerprint), (signal, ledger updated_at)) of each row a person has to decide."""
        entries = uncertain_deliveries(ledger_path)
        _, rows = queue_rows(grid)
        held = []
        for row in rows:
            key = (row.prompt_id, row.fingerprint())
            word = " ".join(row.status.split()).upper()
            entry = entries.get(key) if row.prompt_id else None
            if entry is None and word != CHECK_CHANNEL:
                continue
            if self._per_delivery[key] >= self.MAX_PER_DELIVERY:
                continue
            # a CHECK CHANNEL cell whose text changed since: the ledger knows nothing uncertain of this
            # text, but the row is held by the word all the same, and a person answers it the same way
            signal = entry if entry is not None else (CHECK_CHANNEL, 0.0)
            if word == REPOST and self._reposted.get(key) == signal[1]:
                continue  # typed already; its run has not come yet
            held.append((row, key, signal))
        return held
