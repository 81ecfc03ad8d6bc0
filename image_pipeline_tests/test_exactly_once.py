"""Nothing lost, nothing posted twice: the ledger, reconciliation with the sheets, claims, quarantine."""

from __future__ import annotations

import threading
import time

import dagster as dg

from image_pipeline.defs.assets import ASSETS, generate_and_post, prompt_record
from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.statuses import POSTED, POSTING
from image_pipeline.lifecycle.ledger import Ledger, owner_token
from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.services.sheets import LocalWorkbook
from image_pipeline.testing.emulators.base import GARBAGE
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN

from .conftest import QUIET, pass_gate, read_csv, run_partitions, write_csv
from .conftest import queue_prompts as queue


def ledger_of(resources) -> Ledger:
    return resources["ledger"].open()


def materialize(resources, instance, pid: str, selection) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        partition_key=pid,
        instance=instance,
        resources=resources,
        selection=selection,
        run_config=QUIET,
    )


def post_only(resources, instance, pid: str) -> None:
    """Run the graph up to the post, as a process killed right after Telegram accepted it would have."""
    instance.add_dynamic_partitions("prompts", [pid])
    assert materialize(resources, instance, pid, [prompt_record, generate_and_post]).success


def test_crash_after_telegram_accepted_is_logged_not_reposted(
    local_resources, instance, workbook_dir
) -> None:
    [pid] = queue(workbook_dir, ["a lighthouse"])
    post_only(local_resources, instance, pid)  # the process "dies" after the post: Done and removal never ran
    assert len(local_resources["publisher"].posts()) == 1
    # the restart re-runs everything for the partition, as a re-execution from the UI would
    result = run_partitions(local_resources, instance, [pid])
    assert result.success
    assert len(local_resources["publisher"].posts()) == 1
    [done] = local_resources["prompt_sheet"].read_done()
    assert done["status"] == "SUCCESS" and done["message_id"] == "1"
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"]]


def test_interrupted_post_is_never_repeated_blindly(local_resources, instance, workbook_dir) -> None:
    [pid] = queue(workbook_dir, ["a fox"])
    instance.add_dynamic_partitions("prompts", [pid])
    row = LocalWorkbook(folder=str(workbook_dir)).read_queue().rows[0]
    book = ledger_of(local_resources)
    # what a process killed during sendPhoto leaves behind: the intent, no message id
    book.claim(
        pid, row.fingerprint(), owner="elsewhere:1:gone", prompt="a fox", lease_s=0, is_stale=lambda o: True
    )
    book.update(pid, row.fingerprint(), post_state=POSTING)
    outbox = local_resources["publisher"]
    for _ in range(2):  # held, run after run, until a person decides; told once
        result = run_partitions(local_resources, instance, [pid])
        assert result.success
        assert result.output_for_node("done_entry")[pid].status == "UNCERTAIN"
        assert outbox.posts() == [] and local_resources["prompt_sheet"].read_done() == []
        assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"], ["a fox", pid]]
    [notice] = outbox.notices()
    assert "CHECK CHANNEL" in notice["text"] and "REPOST" in notice["text"]
    entry = book.get(pid, row.fingerprint())
    assert entry is not None and entry.post_state == "UNCERTAIN" and entry.attempts == 0
    # the person found it missing from the channel: REPOST sends it, once
    write_csv(workbook_dir / "process.csv", [["prompt", "id", "status"], ["a fox", pid, "repost"]])
    assert run_partitions(local_resources, instance, [pid]).success
    assert len(outbox.posts()) == 1
    [done] = local_resources["prompt_sheet"].read_done()
    assert done["status"] == "SUCCESS"
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id", "status"]]


def test_an_uncertain_row_that_a_person_deletes_ends_there(local_resources, instance, workbook_dir) -> None:
    [pid] = queue(workbook_dir, ["a heron"])
    instance.add_dynamic_partitions("prompts", [pid])
    row = LocalWorkbook(folder=str(workbook_dir)).read_queue().rows[0]
    book = ledger_of(local_resources)
    book.claim(pid, row.fingerprint(), owner="x:1:gone", prompt="a heron", lease_s=0, is_stale=lambda o: True)
    book.update(pid, row.fingerprint(), post_state="UNCERTAIN")
    write_csv(workbook_dir / "process.csv", [["prompt", "id", "status"], ["a heron", pid, "CHECK CHANNEL"]])
    assert run_partitions(local_resources, instance, [pid]).success
    assert read_csv(workbook_dir / "process.csv")[1][2] == "CHECK CHANNEL"
    write_csv(workbook_dir / "process.csv", [["prompt", "id", "status"]])  # it was in the channel
    result = run_partitions(local_resources, instance, [pid])
    assert result.success and result.output_for_node("done_entry")[pid].status == "GONE"
    assert local_resources["publisher"].posts() == [] and local_resources["prompt_sheet"].read_done() == []


def test_prompt_already_in_done_is_only_removed(local_resources, instance, workbook_dir) -> None:
    [pid] = queue(workbook_dir, ["an owl"])
    # the ledger is new (another machine, a fresh CI runner) but Done already has the row
    local_resources["prompt_sheet"].append_done(
        [DoneEntry(id=pid, prompt="an owl", status="SUCCESS", information="")]
    )
    result = run_partitions(local_resources, instance, [pid])
    assert result.success
    assert local_resources["publisher"].posts() == []
    assert len(local_resources["prompt_sheet"].read_done()) == 1
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"]]
    assert result.output_for_node("done_entry")[pid].status == "LOGGED"


def test_crash_mid_done_append_does_not_duplicate_the_row(local_resources, instance, workbook_dir) -> None:
    [pid] = queue(workbook_dir, ["a heron"])
    post_only(local_resources, instance, pid)
    row = LocalWorkbook(folder=str(workbook_dir)).read_queue().rows[0]
    # the append reached the sheet, then the process died before recording it
    local_resources["prompt_sheet"].append_done(
        [DoneEntry(id=pid, prompt="a heron", status="SUCCESS", information="x")]
    )
    ledger_of(local_resources).update(pid, row.fingerprint(), done_state="LOGGING")
    assert run_partitions(local_resources, instance, [pid]).success
    assert len(local_resources["prompt_sheet"].read_done()) == 1
    assert len(local_resources["publisher"].posts()) == 1
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"]]


def test_row_edited_after_posting_is_a_new_prompt_and_the_old_post_is_logged(
    local_resources, instance, workbook_dir
) -> None:
    [pid] = queue(workbook_dir, ["first version"])
    post_only(local_resources, instance, pid)
    write_csv(workbook_dir / "process.csv", [["prompt", "id"], ["second version", pid]])
    assert run_partitions(local_resources, instance, [pid]).success
    captions = [p["caption"].split("\n")[0] for p in local_resources["publisher"].posts()]
    assert captions == ["first version", "second version"]
    done = {r["prompt"]: r for r in local_resources["prompt_sheet"].read_done()}
    assert set(done) == {"first version", "second version"}
    assert {r["status"] for r in done.values()} == {"SUCCESS"}


def test_two_runs_never_take_the_same_prompt(hf_emulator, local_resources, instance, workbook_dir) -> None:
    [pid] = queue(workbook_dir, ["a slow painting"])
    instance.add_dynamic_partitions("prompts", [pid])
    hf_emulator.set_latency(3.0)
    resources = dict(local_resources)
    resources["image_generator"] = HuggingFaceGenerator(
        token=HF_TOKEN, base_url=f"{hf_emulator.base_url}/models/m", model="m", width=64, height=64
    )
    results: list[dg.ExecuteInProcessResult] = []

    def run() -> None:
        results.append(
            dg.materialize(
                ASSETS, partition_key=pid, instance=instance, resources=resources, run_config=QUIET
            )
        )

    first = threading.Thread(target=run)
    first.start()
    # The second run starts once the first one's request is at the emulator, not after a fixed sleep:
    # Dagster reconfigures Python logging (dictConfig) when a run starts, and doing that while the other
    # run's thread is inside a log handler can deadlock in CPython's logging locks.
    deadline = time.monotonic() + 30
    while hf_emulator.max_in_flight_seen == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hf_emulator.max_in_flight_seen == 1, "the first run never asked for its image"
    run()  # the second run starts while the first one generates
    first.join(30)
    assert all(r.success for r in results) and len(results) == 2
    statuses = sorted(r.output_for_node("done_entry")[pid].status for r in results)
    assert statuses == ["BUSY", "SUCCESS"]
    assert len(local_resources["publisher"].posts()) == 1
    # one generation (a POST); the run gate's look-ups before it are GETs
    assert [c["method"] for c in hf_emulator.calls].count("POST") == 1
    assert len(local_resources["prompt_sheet"].read_done()) == 1


def test_claims_of_dead_processes_and_finished_runs_are_taken_over(tmp_path, instance) -> None:
    from image_pipeline.lifecycle.ledger import stale_owner_check

    book = Ledger(tmp_path / "l.sqlite")
    is_stale = stale_owner_check(instance)
    dead = "{}:999999:run".format(owner_token("x").split(":")[0])
    assert book.claim("p1", "f", owner=dead, prompt="", lease_s=600, is_stale=is_stale)
    assert book.claim("p1", "f", owner=owner_token("other"), prompt="", lease_s=600, is_stale=is_stale)
    live = owner_token("other")
    assert not book.claim(
        "p1", "f", owner=owner_token("third"), prompt="", lease_s=600, is_stale=lambda o: False
    )
    book.release("p1", "f", live)
    assert book.claim("p1", "f", owner=owner_token("third"), prompt="", lease_s=600, is_stale=lambda o: False)


def test_poison_prompt_is_quarantined_after_three_runs_and_the_queue_flows(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    ids = queue(workbook_dir, ["always broken", "a fine prompt"])
    resources = dict(local_resources)
    resources["image_generator"] = HuggingFaceGenerator(
        token=HF_TOKEN,
        base_url=f"{hf_emulator.base_url}/models/m",
        model="m",
        width=64,
        height=64,
        retry_attempts=2,
        retry_base_delay_s=0.01,
    )
    pass_gate(resources)  # the faults below are for the generations, not the run gate's look-ups
    for attempt in (1, 2, 3):
        hf_emulator.fail_next(GARBAGE, GARBAGE)  # every try of this run gets non-image bytes
        result = run_partitions(resources, instance, [ids[0]])
        assert result.success
        status = result.output_for_node("done_entry")[ids[0]].status
        if attempt < 3:
            assert status == "RETRY"
            assert [r[0] for r in read_csv(workbook_dir / "process.csv")[1:]] == [
                "always broken",
                "a fine prompt",
            ]
            assert local_resources["prompt_sheet"].read_done() == []
    [failed] = local_resources["prompt_sheet"].read_done()
    assert failed["status"] == "FAILED" and "quarantined" in failed["information"]
    assert "not an image" in failed["information"]
    assert run_partitions(resources, instance, [ids[1]]).success
    assert [r["status"] for r in local_resources["prompt_sheet"].read_done()] == ["FAILED", "SUCCESS"]
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"]]


def test_ledger_records_each_step(local_resources, instance, workbook_dir) -> None:
    [pid] = queue(workbook_dir, ["a quiet harbour"])
    row = LocalWorkbook(folder=str(workbook_dir)).read_queue().rows[0]
    assert run_partitions(local_resources, instance, [pid]).success
    entry = ledger_of(local_resources).get(pid, row.fingerprint())
    assert entry is not None
    assert (entry.post_state, entry.message_id, entry.done_state, entry.queue_state) == (
        POSTED,
        "1",
        "LOGGED",
        "REMOVED",
    )
    assert entry.owner == ""  # released


def test_a_batch_generates_concurrently_and_posts_in_queue_order(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    prompts = [f"prompt {i}" for i in range(6)]
    ids = queue(workbook_dir, prompts)
    hf_emulator.set_latency(0.3)
    resources = dict(local_resources)
    resources["image_generator"] = HuggingFaceGenerator(
        token=HF_TOKEN,
        base_url=f"{hf_emulator.base_url}/models/m",
        model="m",
        width=64,
        height=64,
        concurrency=3,
    )
    assert run_partitions(resources, instance, ids).success
    assert hf_emulator.max_in_flight_seen == 3
    assert [p["caption"] for p in local_resources["publisher"].posts()] == prompts
    assert [r["status"] for r in local_resources["prompt_sheet"].read_done()] == ["SUCCESS"] * 6


def test_a_refusal_during_concurrent_generation_stops_the_batch_cleanly(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    ids = queue(workbook_dir, [f"prompt {i}" for i in range(5)])
    resources = dict(local_resources)
    resources["image_generator"] = HuggingFaceGenerator(
        token=HF_TOKEN,
        base_url=f"{hf_emulator.base_url}/models/m",
        model="m",
        width=64,
        height=64,
        concurrency=3,
    )
    pass_gate(resources)
    hf_emulator.credits_depleted = True  # after the run's gate passed: the generations hear it
    result = run_partitions(resources, instance, ids)
    assert not result.success
    assert local_resources["publisher"].posts() == []
    assert local_resources["prompt_sheet"].read_done() == []
    assert len(read_csv(workbook_dir / "process.csv")) == 6
    assert len(local_resources["publisher"].notices()) == 1
