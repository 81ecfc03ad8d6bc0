"""The four assets on the embedded default: one partition, several, invalid prompts, failures."""

from __future__ import annotations

import io
from pathlib import Path

import dagster as dg
from PIL import Image

from image_pipeline.defs.assets import ASSETS, done_entry, generate_and_post, prompt_record
from image_pipeline.domain.statuses import INVALID, SUCCESS
from image_pipeline.services.sheets import LocalWorkbook

from .conftest import materializations, read_csv, run_partitions, write_csv


def queue(workbook_dir: Path, rows: list[list[str]], header: list[str] | None = None) -> list[str]:
    write_csv(workbook_dir / "process.csv", [header or ["prompt"], *rows])
    return [r.prompt_id for r in LocalWorkbook(folder=str(workbook_dir)).ensure_ids().rows]


def test_one_partition_end_to_end(local_resources, instance, workbook_dir: Path, tmp_path: Path) -> None:
    [pid] = queue(
        workbook_dir,
        [["a lighthouse at dawn", "", "320", "200", "7"]],
        ["prompt", "negative_prompt", "width", "height", "seed"],
    )
    result = run_partitions(local_resources, instance, [pid])
    assert result.success

    record = result.output_for_node("prompt_record")[pid]
    assert record.status == "READY" and record.request is not None and record.request.seed == 7

    [png] = (tmp_path / "assets" / "generated_image").glob(f"{pid}-*.png")  # write-once: named by its hash
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (320, 200)
    image_md = materializations(result, "generated_image")[0].metadata
    assert image_md["preview"].value.startswith("![")
    assert "data:image/jpeg;base64," in image_md["preview"].value
    assert len(image_md["preview"].value) < 30_000
    assert image_md["size"].value == "320x200" and image_md["seed"].value == 7
    assert image_md["model"].value == "offline-preview"
    assert image_md["generation_s"].value >= 0
    assert "offline_preview" in image_md

    post_md = materializations(result, "telegram_post")[0].metadata
    assert post_md["chat_id"].value == "outbox" and post_md["message_id"].value == "1"

    done = read_csv(workbook_dir / "done.csv")
    row = dict(zip(done[0], done[1], strict=False))
    assert row["id"] == pid and row["status"] == SUCCESS and row["message_id"] == "1"
    assert row["model"] == "offline-preview" and row["timestamp"].endswith("Z")
    assert "offline preview" in row["information"]
    assert read_csv(workbook_dir / "process.csv") == [
        ["prompt", "negative_prompt", "width", "height", "seed", "id"]
    ]

    posts = local_resources["publisher"].posts()
    assert len(posts) == 1 and posts[0]["prompt_id"] == pid
    assert "Offline preview" in posts[0]["caption"]
    gallery = (tmp_path / "outbox" / "index.html").read_text()
    assert posts[0]["file"] in gallery and "a lighthouse at dawn" in gallery
    with Image.open(tmp_path / "outbox" / posts[0]["file"]) as im:
        assert im.size == (320, 200)


def test_several_partitions_in_one_run_post_in_queue_order(
    local_resources, instance, workbook_dir: Path
) -> None:
    prompts = [f"prompt number {i}" for i in range(5)]
    ids = queue(workbook_dir, [[p] for p in prompts])
    result = run_partitions(local_resources, instance, ids)
    assert result.success
    done = result.output_for_node("done_entry")
    assert set(done) == set(ids) and all(d.status == SUCCESS for d in done.values())
    posts = local_resources["publisher"].posts()
    assert [p["caption"].split("\n")[0] for p in posts] == prompts
    assert [p["message_id"] for p in posts] == ["1", "2", "3", "4", "5"]
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"]]
    logged = {r["id"]: r for r in local_resources["prompt_sheet"].read_done()}
    assert set(logged) == set(ids)


def test_each_partition_separately_and_rematerializing_does_not_repost(
    local_resources, instance, workbook_dir: Path
) -> None:
    ids = queue(workbook_dir, [["one"], ["two"]])
    for pid in ids:
        assert run_partitions(local_resources, instance, [pid]).success
    assert len(local_resources["publisher"].posts()) == 2
    # the row is gone now: running the partition again writes nothing and posts nothing
    again = run_partitions(local_resources, instance, [ids[0]])
    assert again.success
    assert again.output_for_node("done_entry")[ids[0]].status == "GONE"
    assert len(local_resources["publisher"].posts()) == 2
    assert len(local_resources["prompt_sheet"].read_done()) == 2


def test_invalid_prompts_are_logged_and_leave_the_queue_unsent(
    local_resources, instance, workbook_dir: Path
) -> None:
    ids = queue(
        workbook_dir,
        [["   ", ""], ["a fox", "abc"], ["ok prompt", ""], ["x" * 10_001, ""]],
        ["prompt", "width"],
    )
    result = run_partitions(local_resources, instance, ids)
    assert result.success
    done = {r["id"]: r for r in local_resources["prompt_sheet"].read_done()}
    assert done[ids[0]]["status"] == INVALID and done[ids[0]]["information"] == "empty prompt"
    assert done[ids[1]]["status"] == INVALID and "width must be a whole number" in done[ids[1]]["information"]
    assert done[ids[2]]["status"] == SUCCESS
    assert done[ids[3]]["status"] == INVALID and "10001" in done[ids[3]]["information"]
    posts = local_resources["publisher"].posts()
    assert [p["prompt_id"] for p in posts] == [ids[2]]
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "width", "id"]]


def test_row_edited_during_the_run_is_not_deleted(local_resources, instance, workbook_dir: Path) -> None:
    [pid] = queue(workbook_dir, [["first text"]])
    instance.add_dynamic_partitions("prompts", [pid])
    first = dg.materialize(
        ASSETS, partition_key=pid, instance=instance, resources=local_resources, selection=[prompt_record]
    )
    assert first.success
    # a person edits the prompt after it was read; the rest of the graph runs on the stored record
    write_csv(workbook_dir / "process.csv", [["prompt", "id"], ["edited text", pid]])
    rest = dg.materialize(
        ASSETS,
        partition_key=pid,
        instance=instance,
        resources=local_resources,
        selection=[generate_and_post, done_entry],
    )
    assert rest.success
    md = rest.asset_materializations_for_node("done_entry")[0].metadata
    assert md["queue_row"].value == "changed"
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"], ["edited text", pid]]


def test_thumbnail_is_a_valid_small_jpeg(local_resources, instance, workbook_dir: Path) -> None:
    [pid] = queue(workbook_dir, [["thumbnail check"]])
    result = run_partitions(local_resources, instance, [pid])
    preview = materializations(result, "generated_image")[0].metadata["preview"].value
    import base64

    data = base64.b64decode(preview.split("base64,", 1)[1].rstrip(")"))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and max(im.size) <= 256


def test_the_done_step_re_executed_alone_takes_over_the_finished_runs_claims(
    local_resources, instance, workbook_dir: Path
) -> None:
    # The UI can materialize done_entry alone, in a new run: the run that claimed the prompt is over, so its
    # claims are stale and the Done step takes them over (the ledger's writes after the post are fenced).
    [pid] = queue(workbook_dir, [["a harbour at noon"]])
    instance.add_dynamic_partitions("prompts", [pid])
    first = dg.materialize(
        ASSETS,
        selection=[prompt_record, generate_and_post],
        partition_key=pid,
        instance=instance,
        resources=local_resources,
    )
    assert first.success and len(local_resources["publisher"].posts()) == 1
    second = dg.materialize(
        ASSETS, selection=[done_entry], partition_key=pid, instance=instance, resources=local_resources
    )
    assert second.success
    assert second.output_for_node("done_entry")[pid].status == SUCCESS
    assert [r["id"] for r in local_resources["prompt_sheet"].read_done()] == [pid]
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"]]
    assert len(local_resources["publisher"].posts()) == 1
