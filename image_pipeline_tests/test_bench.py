"""The benchmark's machinery at a tiny scale with no latency: figures present, every prompt posted once.

Timing is not asserted anywhere: on a shared CI machine it says nothing about the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from image_pipeline.testing.bench import BASELINE, JSON_KEYS, Profile, main, process_tree, target_marks


@pytest.mark.timeout(120)
def test_tiny_bench_reports_every_key_and_posts_each_prompt_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "bench.json"
    code = main(
        [
            "--only=B100-gen",
            "--with-baseline",
            "--prompts=4",
            "--baseline-prompts=2",
            "--no-latency",
            "--timeout-s=90",
            f"--workdir={tmp_path / 'run'}",
            f"--json={report}",
        ]
    )
    data = json.loads(report.read_text(encoding="utf-8"))
    assert set(data) == {"B100-gen", BASELINE}
    for name, prompts in (("B100-gen", 4), (BASELINE, 2)):
        figures = data[name]
        assert set(JSON_KEYS) <= set(figures), name
        assert figures["check"] == "ok", (name, figures["check"])
        assert figures["prompts"] == figures["posted"] == prompts
        assert figures["posted_twice"] == figures["not_posted"] == figures["queue_left"] == 0
        assert figures["telegram_429"] == 0
        spp = figures["sheets_requests_per_prompt"]
        assert isinstance(spp, int | float) and spp > 0
        assert figures["peak_rss_mb"] > 0
        # no latency: no bound, so no efficiency; the overhead is then wall / prompts
        assert figures["bound_s"] is None and figures["efficiency"] is None
    assert data[BASELINE]["processes"] == 2 and data[BASELINE]["retries"] == 0
    assert data["B100-gen"]["sheets_requests_per_prompt_vs_baseline"] is not None
    assert code == 0
    table = capsys.readouterr().out
    assert "B100-gen" in table and BASELINE in table


def test_bounds_follow_the_profiles() -> None:
    gen = Profile(prompts=100, side=512)
    assert gen.bound_s() == 25.0  # 100 images x 1 s / 4 at once
    post = Profile(prompts=100, side=512, telegram_per_chat_per_minute=20, posts_per_minute=20)
    assert post.bound_s() == 300.0  # 20 posts a minute
    assert gen.without_latency().bound_s() is None


def test_a_missed_target_is_marked_and_a_missing_figure_is_not_judged() -> None:
    marks = dict(target_marks("B100-gen", {"efficiency": 0.5, "sheets_requests_per_prompt": 0.05}))
    assert marks == {"eff>=0.85": False, "sheets/p<=0.1": True, "ovh<=50ms": None}


def test_process_tree_holds_the_root() -> None:
    import os

    assert os.getpid() in process_tree(os.getpid())


def test_the_scale_out_pair_is_judged_by_its_speed_up() -> None:
    from image_pipeline.testing.bench.workers import speedup

    three = Profile(prompts=100, side=512, workers=3)
    assert three.bound_s() == pytest.approx(8.333, abs=0.001)  # 100 images x 1 s / (4 slots x 3 workers)
    results = {"B100-1w": {"wall_s": 36.0, "prompts": 100}, "B100-3w": {"wall_s": 15.0, "prompts": 100}}
    assert speedup(results, "B100-1w", "B100-3w") == 2.4
    assert dict(target_marks("B100-3w", {"speedup_vs_1w": 2.4})) == {"x2 vs B100-1w": True}
    assert dict(target_marks("B100-3w", {"speedup_vs_1w": 1.5})) == {"x2 vs B100-1w": False}
    results["B100-3w"]["prompts"] = 50  # not the same backlog: no ratio
    assert speedup(results, "B100-1w", "B100-3w") is None
