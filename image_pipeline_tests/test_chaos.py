"""The chaos harness, reduced: the real worker against faulty emulators, SIGKILLs and a person editing.

One run serves every test of the module (about a minute): the figures must be present and add up, and no
secret may leak anywhere. Exactly-once (nothing posted twice, nothing lost, nothing deleted without a
trace) and "only a prompt's own fault fails it" are asserted separately, so each state is visible on its
own. The run meets the service-level faults of issue 12 at least once each: a Sheets write committed then
answered 503, a rights error on a send, an hour-long flood wait (lifted by the harness) and a provider
refusing a prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from image_pipeline.chaos import KILL_KINDS, RESULT_KEYS, appended_worksheet, main, run_chaos
from image_pipeline.emulators.base import Request, Response
from image_pipeline.emulators.telegram import DEFAULT_CHANNEL_ID, TelegramEmulator

# 30 prompts, not more: a prompt costs the worker ~1.3 s of Dagster run overhead on a 2-core machine, and
# faults, kills and crashed workers add restarts of ~5 s each; this keeps the run around a minute.
REDUCED = {"prompts": 30, "fault_rate": 0.2, "kills": 3, "writer": True, "seed": 7, "timeout_s": 300.0}


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int | float]:
    return run_chaos(**REDUCED, workdir=tmp_path_factory.mktemp("chaos"))  # type: ignore[arg-type]


@pytest.mark.timeout(480)
def test_reduced_run_accounts_for_every_prompt_and_leaks_no_secret(reduced: dict[str, int | float]) -> None:
    r = reduced
    assert set(RESULT_KEYS) <= set(r)
    assert all(isinstance(r[k], int) and r[k] >= 0 for k in RESULT_KEYS)
    assert r["token_hits"] == 0, {k: v for k, v in r.items() if k.startswith("token_hits")}

    assert r["timed_out"] == 0 and r["stalled_workers"] == 0, "the pipeline did not drain the queue"
    assert r["faults"] > 0
    assert r["kills"] == sum(r["kills_" + kind.replace("-", "_")] for kind in KILL_KINDS)
    assert 1 <= r["kills"] <= REDUCED["kills"]
    assert r["person_edits"] > 0 and r["queued"] == REDUCED["prompts"] + r["inserted"]

    posted = r["posted_once"] + r["posted_twice"] + r["reposted_after_edit"]
    assert posted <= r["queued"] and r["posts_total"] >= posted
    # every prompt ends somewhere: posted, in Done as FAILED/INVALID, still queued, withdrawn, or lost
    accounted = posted + r["quarantined"] + r["invalid"] + r["uncertain"] + r["remaining"] + r["withdrawn"]
    assert accounted + r["lost"] >= r["queued"]
    assert r["wrongly_deleted"] <= r["lost"]  # no Done row and no post is one way of being lost
    # the service-level faults were met, and the hour-long wait was waited out
    for fault in ("committed_503", "rights", "flood:3600", "provider_refusal"):
        assert r["faults_" + fault] >= 1, fault
    assert r["waits_lifted"] >= 1
    breakdown = ("quarantined", "uncertain_posted", "uncertain_not_posted", "other")
    assert r["wrongly_failed"] == sum(r["wrongly_failed_" + k] for k in breakdown)


@pytest.mark.timeout(480)
def test_reduced_run_posts_exactly_once(reduced: dict[str, int | float]) -> None:
    figures = {k: reduced[k] for k in ("posted_twice", "lost", "wrongly_deleted", "token_hits")}
    assert figures == {"posted_twice": 0, "lost": 0, "wrongly_deleted": 0, "token_hits": 0}


@pytest.mark.timeout(480)
@pytest.mark.xfail(
    reason="a send whose answer is lost (a 5xx, a timeout, a kill after the intent) ends UNCERTAIN and leaves "
    "the queue unposted (wrongly_failed_uncertain_not_posted); the lead decides the treatment (issue 12)",
    strict=False,
)
def test_reduced_run_fails_no_prompt_for_a_service_fault(reduced: dict[str, int | float]) -> None:
    figures = {k: v for k, v in reduced.items() if k.startswith("wrongly_failed")}
    assert reduced["wrongly_failed"] == 0, figures


def test_json_report_has_the_required_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "chaos.json"
    code = main(
        [
            "--prompts=5",
            "--fault-rate=0",
            "--kills=0",
            "--no-writer",
            "--seed=3",
            "--timeout-s=120",
            f"--json={report}",
            f"--workdir={tmp_path / 'run'}",
        ]
    )
    data = json.loads(report.read_text(encoding="utf-8"))
    assert set(RESULT_KEYS) <= set(data)
    assert all(isinstance(v, int | float) for v in data.values())
    assert data["queued"] == data["posted_once"] == 5
    assert code == 0
    table = capsys.readouterr().out
    assert all(key in table for key in RESULT_KEYS)


def test_emulator_hooks_see_every_request_and_only_applied_ones_after_routing() -> None:
    seen: list[tuple[object, ...]] = []
    with TelegramEmulator() as tg:

        def on_request(request: Request, endpoint: str) -> None:
            seen.append(("request", endpoint, len(tg.messages)))

        def after_route(request: Request, endpoint: str, response: Response) -> None:
            # the message is stored already, and the client has not had a byte of the answer yet
            seen.append(("routed", endpoint, response.status, len(tg.messages)))

        tg.on_request, tg.after_route = on_request, after_route
        tg.fail_next(500)
        url = f"{tg.base_url}/bot{tg.token}/sendMessage"
        for text in ("refused by the fault", "delivered"):
            requests.post(url, json={"chat_id": DEFAULT_CHANNEL_ID, "text": text}, timeout=5)
    assert seen == [
        ("request", "sendmessage", 0),
        ("request", "sendmessage", 0),
        ("routed", "sendmessage", 200, 1),
    ]


@pytest.mark.parametrize(
    ("path", "sheet"),
    [
        ("/v4/spreadsheets/abc/values/%27Done%27%21A1:append", "Done"),
        ("/v4/spreadsheets/abc/values/Done!A1:append", "Done"),
        ("/v4/spreadsheets/abc/values/%27It%27%27s%27%21A1:append", "It's"),
        ("/v4/spreadsheets/abc/values/Process:append", "Process"),
    ],
)
def test_append_paths_name_their_worksheet(path: str, sheet: str) -> None:
    assert appended_worksheet(path) == sheet


def test_the_duplicate_window_is_measured_and_small(reduced: dict[str, int | float]) -> None:
    # from Telegram accepting a post to the ledger recording its message id: one local write
    assert reduced["window_samples"] > 0
    assert 0 <= reduced["window_ms_p50"] < 250
