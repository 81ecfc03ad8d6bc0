"""Images, previews and asset records in object storage (``IMAGE_PIPELINE_DATA=s3://bucket/prefix``),
against a real S3-compatible server on loopback (moto's server mode, ``s3_server.py``); and the
write-once rule that keeps two workers from overwriting each other's file, in a bucket and on disk.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import fsspec
import pytest
import s3fs
from PIL import Image
from upath import UPath

from image_pipeline.definitions import build_definitions
from image_pipeline.domain.records import DoneOutcome, ImageOutcome, PromptRecord
from image_pipeline.domain.statuses import SUCCESS
from image_pipeline.services.sheets import LocalWorkbook
from image_pipeline.services.storage import PartitionFileStore, WriteConflict, digest, read_file, write_once
from image_pipeline.services.storage.objects import RecentObjects, write_replacing

from .conftest import QUIET, materializations, queue_prompts, read_csv, run_partitions, write_csv
from .s3_server import S3Server, moto_s3


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The server, its credentials in the standard AWS variables, and fsspec's settings as they were
    afterwards (the store sets the endpoint process-wide)."""
    for name, value in s3_server.aws_env().items():
        monkeypatch.setenv(name, value)
    saved = copy.deepcopy(fsspec.config.conf)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    fsspec.config.conf.clear()
    fsspec.config.conf.update(saved)
    s3fs.S3FileSystem.clear_instance_cache()


def png_bytes(shade: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (shade, 100, 200)).save(buf, format="PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_store_round_trips_images_and_records_through_a_bucket(s3: S3Server) -> None:
    bucket = s3.new_bucket()
    base = f"s3://{bucket}/pipeline/assets"
    store = PartitionFileStore(base, "run-1", s3_endpoint_url=s3.endpoint_url)
    png = png_bytes()

    path = store.write_png("generated_image", "p1", png)
    name = f"p1-{digest(png)}.png"
    assert str(path) == f"{base}/generated_image/{name}"
    assert s3.get(bucket, f"pipeline/assets/generated_image/{name}") == png
    assert store.write_png("generated_image", "p1", png) == path  # a repeated write finds its own bytes

    outcome = ImageOutcome("OK", {"sha256": sha(png), "width": 8}, path=str(path), thumbnail="![p1](x)")
    record = PromptRecord(id="p1", status="READY", prompt="a paper boat", fingerprint="f" * 16)
    store.write("generated_image", "p1", outcome)
    store.write("prompt_record", "p1", record)
    # the record is plain JSON in the bucket, readable by a person
    assert json.loads(s3.get(bucket, "pipeline/assets/prompt_record/p1.json"))["prompt"] == "a paper boat"

    later = PartitionFileStore(base, "run-2")  # another run: the URL alone reaches the same server
    assert later.read("prompt_record", "p1") == record
    back = later.read("generated_image", "p1")
    assert back == outcome and read_file(UPath(back.path)) == png
    print(f"keys: {s3.keys(bucket)}")


def test_a_no_op_value_stays_with_its_run_in_a_bucket(s3: S3Server) -> None:
    bucket = s3.new_bucket()
    base = f"s3://{bucket}/a"
    done = DoneOutcome(SUCCESS, entry=None, queue_row="removed")
    busy = DoneOutcome("BUSY", "another run holds this prompt")
    PartitionFileStore(base, "run-a", s3_endpoint_url=s3.endpoint_url).write("done_entry", "p1", done)
    PartitionFileStore(base, "run-b").write("done_entry", "p1", busy)
    PartitionFileStore(base, "run-b").write("generated_image", "p1", ImageOutcome("BUSY", {"reason": "x"}))

    assert PartitionFileStore(base, "run-b").read("done_entry", "p1") == busy
    assert PartitionFileStore(base, "run-a").read("done_entry", "p1") == done
    assert PartitionFileStore(base, "run-c").read("done_entry", "p1") == done  # what a later run loads
    assert s3.keys(bucket) == [
        "a/.runs/run-b/done_entry/p1.json",
        "a/.runs/run-b/generated_image/p1.json",
        "a/done_entry/p1.json",
    ]
    with pytest.raises(FileNotFoundError):
        PartitionFileStore(base, "run-c").read("generated_image", "p1")


def test_on_the_embedded_default_an_image_is_a_plain_local_file(
    local_resources: dict[str, object], instance: dg.DagsterInstance, workbook_dir: Path, tmp_path: Path
) -> None:
    [pid] = queue_prompts(workbook_dir, ["a lighthouse at dawn"])
    result = run_partitions(local_resources, instance, [pid])
    assert result.success
    shown = materializations(result, "generated_image")[0].metadata["path"].value
    [png] = (tmp_path / "assets" / "generated_image").glob(f"{pid}-*.png")
    assert shown == str(png)  # a path the UI shows as it is, no file:// URL
    assert png.name == f"{pid}-{digest(png.read_bytes())}.png"


def test_an_image_written_here_is_read_from_memory_and_a_record_from_the_bucket(s3: S3Server) -> None:
    """A write-once object never gets other bytes, so the post reads the image it just stored without a
    GET; a record, which another worker may replace, is always read from the bucket."""
    bucket = s3.new_bucket()
    store = PartitionFileStore(f"s3://{bucket}/m", "run-1", s3_endpoint_url=s3.endpoint_url)
    png = png_bytes(3)
    path = store.write_png("generated_image", "p1", png)
    s3.client().delete_object(Bucket=bucket, Key=f"m/generated_image/p1-{digest(png)}.png")
    assert read_file(path) == png  # the bucket no longer has it: these bytes came from memory

    record = store.json_path("prompt_record", "p1")
    write_replacing(record, b'{"v": 1}')
    s3.client().put_object(Bucket=bucket, Key="m/prompt_record/p1.json", Body=b'{"v": 2}')  # another worker
    assert read_file(record) == b'{"v": 2}'
    with pytest.raises(FileNotFoundError):  # never written here: asked of the bucket, which has no such key
        read_file(store.base / "generated_image" / "p2-0000000000000000.png")


def test_the_recent_objects_keep_to_their_byte_limit() -> None:
    recent = RecentObjects(limit=10)
    recent.put("a", b"1234")
    recent.put("b", b"5678")
    assert recent.get("a") == b"1234"  # now the most recently used
    recent.put("c", b"9abc")  # 12 bytes: the least recently used goes
    assert recent.get("b") is None and recent.get("a") == b"1234" and recent.get("c") == b"9abc"
    recent.put("big", b"x" * 11)  # larger than the whole limit: not kept, nothing else dropped
    assert recent.get("big") is None and recent.get("a") == b"1234"


@pytest.mark.parametrize("where", ["bucket", "local"])
def test_a_write_once_name_is_never_replaced(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if where == "bucket":
        s3: S3Server = request.getfixturevalue("s3")
        bucket = s3.new_bucket()
        target = PartitionFileStore(f"s3://{bucket}/p", s3_endpoint_url=s3.endpoint_url).base / "x.png"
    else:
        target = UPath(tmp_path) / "previews" / "x.png"
    first, other = png_bytes(1), png_bytes(2)
    write_once(target, first)
    write_once(target, first)  # the same bytes again: a retry after a lost answer, not a conflict
    with pytest.raises(WriteConflict, match="already holds other bytes"):
        write_once(target, other)
    assert target.read_bytes() == first
    if where == "bucket":
        assert s3.get(bucket, "p/x.png") == first
    else:
        assert [p.name for p in (tmp_path / "previews").iterdir()] == ["x.png"]  # no temp file left


def test_local_writers_racing_for_one_name_leave_one_file_whole(tmp_path: Path) -> None:
    """Eight threads write different bytes to each name at once: one wins, the others are refused."""
    writers = 8
    for round_ in range(10):
        target = UPath(tmp_path) / f"race-{round_}.png"
        payloads = [png_bytes(i, (64, 64)) for i in range(writers)]
        barrier = threading.Barrier(writers)
        outcomes: list[str] = [""] * writers

        def write(
            i: int,
            target: UPath = target,
            payloads: list[bytes] = payloads,
            barrier: threading.Barrier = barrier,
            outcomes: list[str] = outcomes,
        ) -> None:
            barrier.wait()
            try:
                write_once(target, payloads[i])
                outcomes[i] = "won"
            except WriteConflict:
                outcomes[i] = "refused"

        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["refused"] * (writers - 1) + ["won"]
        assert target.read_bytes() == payloads[outcomes.index("won")]


@pytest.fixture
def bucket_env(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The embedded default's stand-ins (local workbook, offline generator, outbox) with the data in a
    bucket. The files that stay local (the SQLite ledger) go to ./data, so the test runs in tmp_path."""
    monkeypatch.chdir(tmp_path)
    bucket = s3.new_bucket()
    return {
        "IMAGE_PIPELINE_DATA": f"s3://{bucket}/pipeline",
        "IMAGE_PIPELINE_S3_ENDPOINT_URL": s3.endpoint_url,
        "IMAGE_PIPELINE_WORKBOOK": str(tmp_path / "workbook"),
        "IMAGE_PIPELINE_OUTBOX": str(tmp_path / "outbox"),
        "IMAGE_PIPELINE_RETRY_BASE_DELAY_S": "0.01",
        "TELEGRAM_POSTS_PER_MINUTE": "0",
        "BUCKET": bucket,
    }


def run_job(
    env: dict[str, str], instance: dg.DagsterInstance, pid: str
) -> tuple[dg.Definitions, dg.ExecuteInProcessResult]:
    """One run of the pipeline's job for the partition, with resources built afresh from the environment
    (as a worker process builds them)."""
    defs = build_definitions(env)
    if pid not in instance.get_dynamic_partitions("prompts"):
        instance.add_dynamic_partitions("prompts", [pid])
    result = defs.resolve_job_def("process_prompts_job").execute_in_process(
        partition_key=pid, instance=instance, run_config=QUIET
    )
    assert result.success
    return defs, result


def local_pngs(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*.png") if "outbox" not in p.relative_to(tmp_path).parts]


def test_a_run_with_its_data_in_a_bucket_posts_and_logs_done(
    bucket_env: dict[str, str], s3: S3Server, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    bucket = bucket_env["BUCKET"]
    [pid] = queue_prompts(tmp_path / "workbook", ["a lighthouse at dawn"])
    defs, result = run_job(bucket_env, instance, pid)

    folder = "pipeline/assets/generated_image/"
    [image_key] = [k for k in s3.keys(bucket, folder) if k.endswith(".png")]
    assert image_key.startswith(f"{folder}{pid}-")
    assert f"{folder}{pid}.json" in s3.keys(bucket, folder)
    png = s3.get(bucket, image_key)
    # the UI's link to the full-size image names it where it is
    assert (
        materializations(result, "generated_image")[0].metadata["path"].value == f"s3://{bucket}/{image_key}"
    )
    [post] = defs.resources["publisher"].posts()
    assert post["prompt_id"] == pid
    assert sha((tmp_path / "outbox" / post["file"]).read_bytes()) == sha(png)

    done = read_csv(tmp_path / "workbook" / "done.csv")
    row = dict(zip(done[0], done[1], strict=False))
    assert row["id"] == pid and row["status"] == SUCCESS and row["message_id"] == post["message_id"]
    assert row["image_sha256"] == sha(png)
    assert read_csv(tmp_path / "workbook" / "process.csv") == [["prompt", "id"]]
    # the records are in the bucket too, and no image was left on the local disk
    assert f"pipeline/assets/done_entry/{pid}.json" in s3.keys(bucket)
    assert local_pngs(tmp_path) == []
    print(f"bucket: {s3.keys(bucket)}")


def test_preview_then_approve_across_two_runs_posts_the_previews_from_the_bucket(
    bucket_env: dict[str, str], s3: S3Server, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    bucket = bucket_env["BUCKET"]
    workbook = tmp_path / "workbook"
    write_csv(workbook / "process.csv", [["prompt", "status", "count"], ["two lanterns", "preview", "2"]])
    [pid] = [r.prompt_id for r in LocalWorkbook(folder=str(workbook)).ensure_ids().rows]

    first, _ = run_job(bucket_env, instance, pid)
    [notice] = first.resources["publisher"].notices()
    assert notice["kind"] == "preview" and len(notice["files"]) == 2
    assert first.resources["publisher"].posts() == []
    previews = s3.keys(bucket, "pipeline/assets/previews/")
    assert len(previews) == 2 and all(k.split("/")[-1].startswith(f"{pid}-") for k in previews)
    kept = sorted(sha(s3.get(bucket, k)) for k in previews)
    outbox = tmp_path / "outbox"
    assert sorted(sha((outbox / f).read_bytes()) for f in notice["files"]) == kept

    table = read_csv(workbook / "process.csv")
    table[1][table[0].index("status")] = "APPROVE"
    write_csv(workbook / "process.csv", table)
    second, _ = run_job(
        bucket_env, instance, pid
    )  # resources of its own: only the bucket (and ledger) shared
    [post] = second.resources["publisher"].posts()
    assert post["method"] == "sendMediaGroup" and len(post["files"]) == 2
    assert sorted(sha((outbox / f).read_bytes()) for f in post["files"]) == kept
    assert s3.keys(bucket, "pipeline/assets/previews/") == previews  # posted as kept, nothing rewritten
    assert read_csv(workbook / "process.csv") == [["prompt", "status", "count", "id"]]
    assert local_pngs(tmp_path) == []
