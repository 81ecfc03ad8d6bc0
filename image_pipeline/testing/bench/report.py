"""Figure formatting: the targets beside the figures, the ratios to the baseline, and the printed table.

``TARGETS`` and ``target_marks`` say which figures meet their targets (``ok`` / ``MISS`` / ``-``);
``with_ratios`` adds each scenario's ``*_vs_baseline`` keys when the baseline ran; ``format_table``
renders one row per scenario.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from image_pipeline.testing.bench.profiles import BASELINE


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


@dataclass(frozen=True)
class Target:
    label: str
    key: str
    ok: Callable[[Any], bool]


TARGETS: dict[str, list[Target]] = {
    "B100-gen": [
        Target("eff>=0.85", "efficiency", lambda v: v >= 0.85),
        Target("sheets/p<=0.1", "sheets_requests_per_prompt", lambda v: v <= 0.1),
        Target("ovh<=50ms", "overhead_ms_per_prompt", lambda v: v <= 50),
    ],
    # issue 15: one job at a time on the server, 1 s each: the wall within 10 % of prompts x 1 s
    "B100-a1111": [
        Target("wall<=1.1*bound", "efficiency", lambda v: v > 0 and 1 / v <= 1.1),
        Target("1 job at once", "a1111_max_concurrent_jobs", lambda v: v == 1),
    ],
    "B100-post": [
        Target("429=0", "telegram_429", lambda v: v == 0),
        Target("wall<=1.05*bound", "efficiency", lambda v: v > 0 and 1 / v <= 1.05),
        Target("sheets/p<=0.1", "sheets_requests_per_prompt", lambda v: v <= 0.1),
        Target("ovh<=50ms", "overhead_ms_per_prompt", lambda v: v <= 50),
    ],
    "B1000-mem": [
        Target("rss<=400MB", "peak_rss_mb", lambda v: v <= 400),
        Target("ovh<=50ms", "overhead_ms_per_prompt", lambda v: v <= 50),
    ],
    "sensor": [Target("tick<=1req", "tick_requests", lambda v: v <= 1)],
    # issue 14: three workers sharing only PostgreSQL and S3 at least twice as fast as one (same deployment)
    "B100-3w": [Target("x2 vs B100-1w", "speedup_vs_1w", lambda v: v >= 2)],
}


def target_marks(name: str, figures: dict[str, Any]) -> list[tuple[str, bool | None]]:
    marks = []
    for target in TARGETS.get(name, []):
        value = figures.get(target.key)
        marks.append((target.label, None if value is None else bool(target.ok(value))))
    return marks


def with_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Add ``*_vs_baseline`` keys to every scenario, when the baseline ran."""
    base = results.get(BASELINE)
    if not base:
        return

    def per_prompt(r: dict[str, Any]) -> float | None:
        return r["wall_s"] / r["prompts"] if r.get("wall_s") is not None and r.get("prompts") else None

    for name, r in results.items():
        if name == BASELINE:
            continue
        r["wall_per_prompt_vs_baseline"] = _ratio(per_prompt(r), per_prompt(base))
        for key in ("sheets_requests_per_prompt", "peak_rss_mb", "overhead_ms_per_prompt", "efficiency"):
            r[f"{key}_vs_baseline"] = _ratio(r.get(key), base.get(key))


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _with_ratio(value: Any, ratio: Any, digits: int = 2) -> str:
    text = _num(value, digits)
    return text if ratio is None else f"{text} (x{ratio:.2g})"


def _a1111_note(r: dict[str, Any]) -> str:
    """Where B100-a1111's time beyond its bound went, and how busy the product kept the server."""
    return (
        f"{r['a1111_jobs_run']} jobs, A1111_CONCURRENCY {r.get('a1111_concurrency')}, "
        f"{_num(r.get('a1111_max_queued'))} queued at most; "
        f"start {_num(r.get('a1111_before_first_job_s'), 1)} s, "
        f"between jobs {_num(r.get('a1111_between_jobs_ms'), 0)} ms, "
        f"end {_num(r.get('a1111_after_last_job_s'), 1)} s"
    )


def format_table(results: dict[str, dict[str, Any]]) -> str:
    header = [
        "scenario",
        "prompts",
        "posted",
        "wall s",
        "bound s",
        "eff",
        "wall/prompt s (vs base)",
        "sheets req/prompt (vs base)",
        "tg 429",
        "peak RSS MB (vs base)",
        "overhead ms/prompt (vs base)",
        "targets",
        "check",
    ]
    lines = [header]
    for name, r in results.items():
        per_prompt = r["wall_s"] / r["prompts"] if r.get("wall_s") is not None and r.get("prompts") else None
        marks = target_marks(name, r)
        targets = ", ".join(f"{label} {'-' if ok is None else 'ok' if ok else 'MISS'}" for label, ok in marks)
        if name == "sensor":
            extra = f"tick {_num(r.get('tick_requests'))} req/{_num(r.get('tick_ms'), 0)} ms"
            if r.get("drive_lag_row_to_post_s") is not None:
                extra += f"; Drive lag {_num(r.get('drive_lag_s'), 0)} s: {_num(r['drive_lag_row_to_post_s'], 1)} s"
            targets = f"{targets}; {extra}" if targets else extra
        if r.get("a1111_jobs_run") is not None:
            targets = f"{targets}; {_a1111_note(r)}" if targets else _a1111_note(r)
        if r.get("posts_per_s") is not None:
            note = f"{r['posts_per_s']:.2f} posts/s from post 1 to {r.get('posted')}"
            targets = f"{targets}; {note}" if targets else note
        if r.get("speedup_vs_1w") is not None:
            targets = f"{targets}; speed-up x{r['speedup_vs_1w']:.2f} wall"
        if r.get("rate_speedup_vs_1w") is not None:
            targets = f"{targets}, x{r['rate_speedup_vs_1w']:.2f} posts/s"
        lines.append(
            [
                name,
                _num(r.get("prompts")),
                _num(r.get("posted")),
                _num(r.get("wall_s"), 1),
                _num(r.get("bound_s"), 1),
                _num(r.get("efficiency"), 2),
                _with_ratio(per_prompt, r.get("wall_per_prompt_vs_baseline"), 3),
                _with_ratio(
                    r.get("sheets_requests_per_prompt"), r.get("sheets_requests_per_prompt_vs_baseline"), 2
                ),
                _num(r.get("telegram_429")),
                _with_ratio(r.get("peak_rss_mb"), r.get("peak_rss_mb_vs_baseline"), 0),
                _with_ratio(r.get("overhead_ms_per_prompt"), r.get("overhead_ms_per_prompt_vs_baseline"), 0),
                targets or "-",
                r.get("check", "-") if r.get("check") == "ok" else f"!! {r.get('check', '?')} !!",
            ]
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    rendered = ["  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in lines]
    rendered.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(rendered)
