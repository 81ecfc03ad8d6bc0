"""What a service check returns and how a set of them reads: the doctor's table, the UI's Markdown, and
the one line that says why a run may not start.

Each service's ``preflight()`` (in ``services/``) makes these; the gate that runs them lives in
``lifecycle.gate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"


@dataclass(frozen=True)
class Check:
    service: str
    name: str
    status: str
    detail: str = ""
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def ok(service: str, name: str, detail: str = "") -> Check:
    return Check(service, name, OK, detail)


def warn(service: str, name: str, detail: str, fix: str = "") -> Check:
    return Check(service, name, WARN, detail, fix)


def fail(service: str, name: str, detail: str, fix: str) -> Check:
    return Check(service, name, FAIL, detail, fix)


def skipped(service: str, names: Sequence[str], why: str) -> list[Check]:
    return [Check(service, name, SKIP, why) for name in names]


def render_table(checks: Sequence[Check]) -> str:
    rows = [("SERVICE", "CHECK", "RESULT", "DETAIL / WHAT TO DO")]
    for c in checks:
        text = c.detail
        if c.fix:
            text = f"{text} -> {c.fix}" if text else c.fix
        rows.append((c.service, c.name, c.status, text))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows
    )


def render_markdown(checks: Sequence[Check]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| service | check | result | detail / what to do |", "|---|---|---|---|"]
    for c in checks:
        text = f"{c.detail} -> {c.fix}" if c.fix and c.detail else (c.fix or c.detail)
        result = f"**{c.status}**" if c.failed else c.status
        lines.append(f"| {cell(c.service)} | {cell(c.name)} | {result} | {cell(text)} |")
    return "\n".join(lines)


def refusal(checks: Sequence[Check]) -> str | None:
    """The message a schedule or sensor gives for not starting work, or None when nothing failed."""
    failures = [c for c in checks if c.failed]
    if not failures:
        return None
    parts = [
        (f"{c.service} {c.name}: {c.detail} -> {c.fix}" if c.fix else f"{c.service} {c.name}: {c.detail}")
        for c in failures
    ]
    return "preflight failed, no run started: " + "; ".join(parts)
