"""The audit of outcomes: the verdict's figures, computed from what the emulators hold, and its evidence.

``verdict`` reads the channel, the Done worksheet and the Process worksheet at the end and counts, per
marker, what was posted once or twice, lost, wrongly deleted or wrongly failed, with the story of every
prompt behind a non-zero figure. ``Witness`` notes during the run which prompts the pipeline's own row
deletions hit; ``scan_secrets`` looks for the credentials everywhere they must not be;
``duplicate_window`` measures how long each post stayed exposed to a repeat; ``passed`` is the pass rule.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from image_pipeline.testing.chaos.books import LedgerRef, ledger_query
from image_pipeline.testing.chaos.faults import CountingFaultPlan
from image_pipeline.testing.chaos.truth import REJECTED_WORD, Truth, marker_of
from image_pipeline.testing.chaos.workers import Supervisor
from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import DONE_WORKSHEET, PROCESS_WORKSHEET, Sandbox

RESULT_KEYS = (
    "queued",
    "posted_once",
    "posted_twice",
    "lost",
    "wrongly_deleted",
    "wrongly_failed",
    "quarantined",
    "uncertain_checked",
    "uncertain_reposted",
    "uncertain_deleted",
    "faults",
    "kills",
    "token_hits",
)


class Witness:
    """Notes which prompts the pipeline's own row deletions hit, so a wrongly deleted prompt has a culprit."""

    def __init__(
        self, sandbox: Sandbox, truth: Truth, supervisor: Supervisor, plan: CountingFaultPlan, t0: float
    ) -> None:
        self.sandbox = sandbox
        self.truth = truth
        self.supervisor = supervisor
        self.plan = plan
        self.t0 = t0
        # server thread -> (arrival, the rows (marker, id, number) its deleteDimension is about to remove)
        self._aimed: dict[int, tuple[float, list[dict[str, str]]]] = {}

    def google_request(self, request: Request, endpoint: str) -> None:
        if endpoint != "sheets.batchUpdate" or b"deleteDimension" not in request.body:
            return
        try:
            body = json.loads(request.body)
        except ValueError:
            return
        google, sid = self.sandbox.google, self.sandbox.spreadsheet_id
        process_id = 0  # the first worksheet of a sandbox spreadsheet ("Process") has sheetId 0
        with google._state:  # the lock the request takes when it is applied a moment later
            rows = google.values(sid, PROCESS_WORKSHEET)
        header = [h.strip().lower() for h in rows[0]] if rows else []
        id_col = header.index("id") if "id" in header else None
        hit: list[dict[str, str]] = []
        for item in body.get("requests", []):
            span = item.get("deleteDimension", {}).get("range", {})
            if span.get("sheetId", 0) != process_id or span.get("dimension") != "ROWS":
                continue
            for index in range(int(span.get("startIndex", 0)), int(span.get("endIndex", 0))):
                row = rows[index] if index < len(rows) else []
                if marker := marker_of(row[0] if row else ""):
                    row_id = row[id_col] if id_col is not None and id_col < len(row) else ""
                    hit.append({"marker": marker, "id": row_id, "row": str(index + 1)})
        self._aimed[threading.get_ident()] = (time.monotonic(), hit)

    def google_routed(self, request: Request, endpoint: str, response: Response) -> None:
        aimed = self._aimed.pop(threading.get_ident(), None)
        if aimed is None or response.status != 200:
            return
        arrived, hit = aimed
        # the deletion took effect; "truncate" means the worker never learnt that it did
        fault = self.plan.last.get(threading.get_ident())
        event = {
            "worker": self.supervisor.requester(request) or 0,
            "at_s": round(arrived - self.t0, 2),
            # applied later than the worker's HTTP timeout: it gave up and may have sent the request again
            "applied_after_s": round(time.monotonic() - arrived, 2),
            "fault": str(fault) if fault else "",
            "rows": hit,
        }
        with self.truth.lock:
            self.truth.deletions.append(event)
            for row in hit:
                self.truth.pipeline_deleted.setdefault(row["marker"], []).append(event)


def duplicate_window(ledger_path: LedgerRef, accepted: dict[str, float]) -> dict[str, float]:
    """How long each post stayed exposed to a repeat: from Telegram accepting it (seen by the emulator) to
    the ledger recording its message id (the pipeline's ``posted_at``). A kill inside that gap is the only
    way a prompt could be posted twice."""
    rows = ledger_query(ledger_path, "SELECT message_id, posted_at FROM prompts WHERE posted_at > 0")
    if not rows or not accepted:
        return {"window_ms_p50": -1.0, "window_ms_max": -1.0, "window_samples": 0}
    # paired by message id: an edited prompt posted again has its own message and its own window
    gaps = sorted(
        (posted_at - accepted[m]) * 1000
        for message_id, posted_at in rows
        if (m := str(message_id)) in accepted and posted_at >= accepted[m]
    )
    if not gaps:
        return {"window_ms_p50": -1.0, "window_ms_max": -1.0, "window_samples": 0}
    return {
        "window_ms_p50": round(gaps[len(gaps) // 2], 2),
        "window_ms_max": round(gaps[-1], 2),
        "window_samples": len(gaps),
    }


def _pem_fragment(key_file: Path) -> str:
    """One full base64 line of the private key: distinctive, and intact in any JSON or log dump of it."""
    pem = json.loads(key_file.read_text(encoding="utf-8"))["private_key"]
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return body[1] if len(body) > 1 else body[0]


def _files(folder: Path) -> Iterator[Path]:
    if folder.exists():
        yield from (p for p in sorted(folder.rglob("*")) if p.is_file())


def scan_secrets(secrets: list[str], sources: dict[str, list[bytes]]) -> dict[str, int]:
    needles = [s.encode("utf-8") for s in secrets if s]
    return {name: sum(blob.count(n) for blob in blobs for n in needles) for name, blobs in sources.items()}


def _data_rows(rows: list[list[str]]) -> list[list[str]]:
    return [row for row in rows[1:] if any(cell != "" for cell in row)]


def _why_wrongly_failed(markers: set[str], statuses: dict[str, list[str]]) -> dict[str, int]:
    """The wrongly failed prompts by their Done rows: an UNCERTAIN row (no longer written: an uncertain
    delivery stays queued for a person), quarantined after transient failures, anything else."""
    out = Counter[str]()
    for m in markers:
        rows = statuses.get(m, [])
        if any(status == "UNCERTAIN" for status, _ in rows):
            out["uncertain_row"] += 1
        elif any("quarantined" in info.lower() for _, info in rows):
            out["quarantined"] += 1
        else:
            out["other"] += 1
    return {f"wrongly_failed_{k}": out[k] for k in WRONGLY_FAILED_KINDS}


WRONGLY_FAILED_KINDS = ("uncertain_row", "quarantined", "other")


def verdict(
    sandbox: Sandbox, truth: Truth, refused: set[str] | None = None
) -> tuple[dict[str, int], dict[str, Any]]:
    """The figures, and for every prompt behind a non-zero failure figure what the emulators hold of it.
    ``refused``: the markers of the prompts the provider refused (their FAILED is their own)."""
    refused = refused or set()
    google, sid = sandbox.google, sandbox.spreadsheet_id
    process = _data_rows(google.values(sid, PROCESS_WORKSHEET))
    in_process = {m for row in process if (m := marker_of(row[0] if row else ""))}

    done = google.values(sid, DONE_WORKSHEET)
    header = [h.strip().lower() for h in done[0]] if done else []
    prompt_col = header.index("prompt") if "prompt" in header else 1
    status_col = header.index("status") if "status" in header else 2
    info_col = header.index("information") if "information" in header else 3
    done_statuses: dict[str, set[str]] = {}
    done_rows: dict[str, list[list[str]]] = {}
    # marker -> (status, reason) of each FAILED/INVALID/UNCERTAIN row that was not the prompt's own fault
    not_their_fault: dict[str, list[tuple[str, str]]] = {}
    for row in _data_rows(done):
        prompt = row[prompt_col] if prompt_col < len(row) else ""
        marker = marker_of(prompt)
        if marker:
            status = row[status_col] if status_col < len(row) else ""
            done_statuses.setdefault(marker, set()).add(status.strip().upper())
            done_rows.setdefault(marker, []).append(row)
            own_fault = REJECTED_WORD in prompt or marker in refused
            status = status.strip().upper()
            # an UNCERTAIN row is never the prompt's fault, and no longer written at all
            if status == "UNCERTAIN" or (status in ("FAILED", "INVALID") and not own_fault):
                info = row[info_col] if info_col < len(row) else ""
                not_their_fault.setdefault(marker, []).append((status, info))

    posts: Counter[str] = Counter()
    captions: dict[str, Counter[str]] = {}
    for message in sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID):
        text = message.get("caption") or message.get("visible_text") or message.get("text") or ""
        marker = marker_of(text)
        if marker:
            posts[marker] += 1
            captions.setdefault(marker, Counter())[text] += 1

    with truth.lock:
        queued = set(truth.texts)
        withdrawn = set(truth.withdrawn)
        edited = set(truth.edited)
        moved = set(truth.moved)
        deleted_by = {m: list(g) for m, g in truth.pipeline_deleted.items()}
        texts = dict(truth.texts)
        checks = {m: list(c) for m, c in truth.checks.items()}
    failed = {m for m, s in done_statuses.items() if "FAILED" in s}
    invalid = {m for m, s in done_statuses.items() if "INVALID" in s}
    # an UNCERTAIN Done row: what the pipeline wrote before uncertain deliveries stayed queued
    uncertain = {m for m, s in done_statuses.items() if "UNCERTAIN" in s}
    kept = queued - withdrawn
    # Not lost: posted (a row the person deleted after finding its post in the channel is posted), in Done
    # as FAILED/INVALID/UNCERTAIN (the last is counted as wrongly failed), or still queued.
    lost = {m for m in kept if not posts[m] and m not in failed | invalid | uncertain and m not in in_process}
    wrongly_deleted = {m for m in kept if m not in in_process and m not in done_statuses and not posts[m]}
    # A person's rewrite is a new prompt, so its text may be posted besides the old one; the same text
    # twice, or two texts of a prompt nobody edited, is a double post.
    twice = {m for m in queued if posts[m] >= 2 and (max(captions[m].values()) >= 2 or m not in edited)}
    reposted_after_edit = {m for m in queued if posts[m] >= 2 and m not in twice}
    # whatever became of the prompt afterwards: a FAILED/INVALID row for a service's fault, or any
    # UNCERTAIN row, is a wrong verdict the person reading Done has to see through
    wrongly_failed = set(not_their_fault) & queued
    # the same Done row (text and status) logged twice: an append repeated after it had landed
    logged_twice = {
        m
        for m, rows in done_rows.items()
        if len({(r[prompt_col], r[status_col]) for r in rows if len(r) > status_col}) < len(rows)
    }

    def story(marker: str) -> dict[str, Any]:
        return {
            "marker": marker,
            "text": texts.get(marker, ""),
            "edited": marker in edited,
            "moved": marker in moved,
            "withdrawn": marker in withdrawn,
            "inserted": marker in truth.inserted,
            "posts": dict(captions.get(marker, {})),
            "done_rows": done_rows.get(marker, []),
            "in_process": marker in in_process,
            "deleted_by_pipeline": deleted_by.get(marker, []),
            "checked_by_person": checks.get(marker, []),
        }

    details = {
        "posted_twice": [story(m) for m in sorted(twice)],
        "lost": [story(m) for m in sorted(lost)],
        "wrongly_deleted": [story(m) for m in sorted(wrongly_deleted)],
        "wrongly_failed": [story(m) for m in sorted(wrongly_failed)],
        "reposted_after_edit": [story(m) for m in sorted(reposted_after_edit)],
        "logged_twice": [story(m) for m in sorted(logged_twice)],
        "checked_by_person": [story(m) for m in sorted(checks)],
        "process_at_end": process,
    }
    figures = {
        "queued": len(queued),
        "posted_once": sum(1 for m in queued if posts[m] == 1),
        "posted_twice": len(twice),
        # of those, prompts the person sent back with REPOST: the channel check or REPOST itself at fault
        "posted_twice_after_repost": sum(
            1 for m in twice if any(c["decision"] == "reposted" for c in checks.get(m, []))
        ),
        "lost": len(lost),
        "wrongly_deleted": len(wrongly_deleted),
        "wrongly_failed": len(wrongly_failed),
        **_why_wrongly_failed(wrongly_failed, not_their_fault),
        "logged_twice": len(logged_twice),
        "quarantined": len(failed & queued),
        "invalid": len(invalid & queued),
        "uncertain": len(uncertain & queued),
        "uncertain_posted": sum(1 for m in uncertain & queued if posts[m]),
        "withdrawn": len(withdrawn),
        "edited": len(edited),
        "inserted": len(truth.inserted),
        "remaining": len(in_process & kept),
        "reposted_after_edit": len(reposted_after_edit),
        "success_without_post": sum(
            1 for m in kept if "SUCCESS" in done_statuses.get(m, set()) and not posts[m]
        ),
        "posts_total": sum(posts.values()),
        "done_rows": len(_data_rows(done)),
    }
    return figures, details


PASS_FIGURES = ("posted_twice", "lost", "wrongly_deleted", "wrongly_failed", "token_hits")


def passed(result: dict[str, int | float]) -> bool:
    return all(result[k] == 0 for k in PASS_FIGURES)
