"""The benchmark's machinery at a tiny scale with no latency: figures present, every prompt posted once.

Timing is not asserted anywhere: on a shared CI machine it says nothing about the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from image_pipeline.testing.bench import BASELINE, JSON_KEYS, Profile, main, process_tree, target_marks
from image_pipeline.testing.bench.profiles import default_profiles
from image_pipeline.testing.bench.report import format_table
from image_pipeline.testing.bench.scenarios import Context, run_product_scenario


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
    a1111 = Profile(prompts=100, side=512, a1111_s=1.0)
    # the server's FIFO lock: one job at a time, however many requests the product keeps in flight
    assert a1111.bound_s() == replace(a1111, a1111_concurrency=2).bound_s() == 100.0
    assert a1111.without_latency().bound_s() is None and a1111.without_latency().a1111_s == 0.0


@pytest.mark.timeout(60)
def test_b100_a1111_small_goes_through_the_a1111_emulator_one_job_at_a_time(tmp_path: Path) -> None:
    profile = replace(
        default_profiles(64)["B100-a1111"], prompts=5, a1111_s=0.05, sheets_s=0.0, telegram_s=0.0
    )
    figures = run_product_scenario("B100-a1111", profile, Context(root=tmp_path, timeout_s=50))
    print(format_table({"B100-a1111": figures}))
    assert figures["check"] == "ok", figures["check"]
    assert figures["prompts"] == figures["posted"] == 5
    assert figures["posted_twice"] == figures["not_posted"] == figures["queue_left"] == 0
    # the images came from the A1111 emulator, each made once, never two at once; Hugging Face was idle
    assert figures["a1111_jobs_run"] == 5 and figures["a1111_max_concurrent_jobs"] == 1
    assert figures["hf_requests"] == 0 and figures["a1111_concurrency"] == 1
    assert figures["bound_s"] == 0.25 and figures["efficiency"] > 0
    for key in ("a1111_before_first_job_s", "a1111_between_jobs_ms", "a1111_after_last_job_s"):
        assert isinstance(figures[key], float), key
    marks = dict(target_marks("B100-a1111", figures))
    assert set(marks) == {"wall<=1.1*bound", "1 job at once"} and marks["1 job at once"] is True


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


def test_the_posting_rate_runs_from_the_first_accepted_photo_to_the_last() -> None:
    from image_pipeline.testing.bench.workers import posting_figures, rate_speedup

    # started at 100.0; photos accepted at 103.0 .. 112.9, 100 of them: 99 intervals over 9.9 s
    accepted = [103.0 + i * 0.1 for i in range(100)]
    assert posting_figures(accepted, 100.0) == {"first_post_s": 3.0, "last_post_s": 12.9, "posts_per_s": 10.0}
    assert posting_figures([], 100.0)["posts_per_s"] is None
    assert posting_figures([103.0], 100.0)["posts_per_s"] is None  # one photo: no rate
    results = {
        "B100-1w": {"posts_per_s": 4.0, "prompts": 100},
        "B100-3w": {"posts_per_s": 10.0, "prompts": 100},
    }
    assert rate_speedup(results, "B100-1w", "B100-3w") == 2.5
    results["B100-1w"]["posts_per_s"] = None
    assert rate_speedup(results, "B100-1w", "B100-3w") is None
