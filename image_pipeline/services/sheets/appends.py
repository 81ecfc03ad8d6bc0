"""New rows at the end of "Process" (the queue refill): each with its own id and a status word.

Each row gets its id before it is sent, so a write whose answer was lost is read back by id and only the
rows that are not there are sent again: a refill never lands twice, on Google as on the local workbook.
The "id" and "status" columns are added to the header when the sheet has none (as ``ensure_ids`` adds "id").
"""

from __future__ import annotations

from collections.abc import Sequence

from image_pipeline.domain.errors import TransientError, WriteOutcomeUnknown
from image_pipeline.domain.rows import ID_COLUMN, STATUS_COLUMN, new_prompt_id, normalize_header
from image_pipeline.services.sheets.queue import PromptSheet
from image_pipeline.services.sheets.table import CellWrite


def append_prompts(sheet: PromptSheet, prompts: Sequence[str], status: str) -> list[str]:
    """Append one row per prompt (column A the prompt, ``status`` in the status column); their new ids."""
    if not prompts:
        return []
    backend, worksheet = sheet.backend, sheet.process_worksheet
    with backend.transaction():
        header = [str(c) for c in backend.read_header(worksheet)]
        if not any(h.strip() for h in header):
            header = ["prompt"]
            backend.write_cells(worksheet, [CellWrite(1, 1, "prompt")])
        names = [normalize_header(h) for h in header]
        missing = [n for n in (ID_COLUMN, STATUS_COLUMN) if n not in names]
        if missing:
            cells = [CellWrite(1, len(names) + 1 + i, n) for i, n in enumerate(missing)]
            try:
                backend.write_cells(worksheet, cells)
            except WriteOutcomeUnknown:
                landed = [normalize_header(h) for h in backend.read_header(worksheet)]
                if any(n not in landed for n in missing):
                    backend.write_cells(worksheet, cells)
            names += missing
        id_col, status_col = names.index(ID_COLUMN), names.index(STATUS_COLUMN)
        pending: dict[str, list[str]] = {}
        for prompt in prompts:
            cells_of = [""] * len(names)
            pid = new_prompt_id()
            cells_of[0], cells_of[id_col], cells_of[status_col] = prompt, pid, status
            pending[pid] = cells_of
        ids = list(pending)
        for _ in range(3):
            try:
                backend.append(worksheet, list(pending.values()))
                return ids
            except WriteOutcomeUnknown:
                present = {r.prompt_id for r in sheet.read_queue().rows}
                pending = {pid: cells for pid, cells in pending.items() if pid not in present}
                if not pending:
                    return ids
        raise TransientError("appending the refill's rows: the answer was lost three times", service="sheets")
