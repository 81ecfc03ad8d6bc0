"""The watermark: a label or a logo in a corner of each posted image (domain/watermark.py), applied by
posting after the content checks; the original file kept, the posted file's sha256 recorded, the original's
beside it, the same bytes on every attempt. Against the local outbox and the Telegram emulator."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, PngImagePlugin

from image_pipeline.domain.rows import PromptRow, build_request
from image_pipeline.domain.uploads import prepare_upload
from image_pipeline.domain.watermark import (
    CORNERS,
    Watermark,
    apply_watermark,
    mark_post,
    row_wants_watermark,
)
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.publisher.telegram import TelegramPublisher
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID, DEFAULT_TOKEN

from .conftest import read_csv, run_partitions, write_csv
from .test_prepost_checks import done_rows

LABEL = Watermark(text="AI-generated", opacity=1.0, size=0.4)


def png(width: int, height: int, colour: tuple[int, ...] = (128, 128, 128), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def logo_png() -> bytes:
    """A red disc on a transparent square: the logo a person would export, made here (no binary fixture)."""
    im = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse((5, 5, 95, 95), fill=(220, 20, 20, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def changed_box(before: bytes, after: bytes) -> tuple[int, int, int, int] | None:
    return ImageChops.difference(decode(before).convert("RGB"), decode(after).convert("RGB")).getbbox()


QUADRANTS = {  # the quarter of a 200x200 image each corner's mark must stay in
    "top-left": (0, 0, 100, 100),
    "top-right": (100, 0, 200, 100),
    "bottom-left": (0, 100, 100, 200),
    "bottom-right": (100, 100, 200, 200),
}
OPPOSITE = {
    "top-left": "bottom-right",
    "top-right": "bottom-left",
    "bottom-left": "top-right",
    "bottom-right": "top-left",
}


@pytest.mark.parametrize("corner", CORNERS)
@pytest.mark.parametrize("kind", ["text", "logo"])
def test_the_mark_lands_in_its_corner_and_nowhere_else(corner: str, kind: str) -> None:
    original = png(200, 200)
    mark = Watermark(
        text="AI-generated" if kind == "text" else "",
        logo=logo_png() if kind == "logo" else None,
        corner=corner,
    )
    marked = apply_watermark(original, mark)
    box = changed_box(original, marked)
    assert box is not None, "nothing was drawn"
    q = QUADRANTS[corner]
    assert q[0] <= box[0] and q[1] <= box[1] and box[2] <= q[2] and box[3] <= q[3], (corner, box)
    before, after = decode(original), decode(marked)
    far = QUADRANTS[OPPOSITE[corner]]
    assert before.crop(far).tobytes() == after.crop(far).tobytes()
    # the margin: 2% of the short side (4 px) between the mark and both edges of its corner
    assert box[0] >= 4 and box[1] >= 4 and box[2] <= 196 and box[3] <= 196
    assert after.size == before.size and after.mode == before.mode


def test_text_has_light_fill_and_dark_outline_so_it_reads_on_any_image() -> None:
    for background in ((0, 0, 0), (255, 255, 255)):
        marked = decode(apply_watermark(png(400, 300, background), LABEL))
        colours = {c for _, c in marked.getcolors(400 * 300) or []}
        assert (255, 255, 255) in colours and (0, 0, 0) in colours
        assert len(colours) > 2  # and the label really is on it: anti-aliased edges between the two


def test_opacity_shows_in_the_pixels() -> None:
    original = png(300, 300, (0, 0, 255))

    def centre_of_mark(opacity: float) -> tuple[int, ...]:
        marked = apply_watermark(original, Watermark(logo=logo_png(), opacity=opacity, size=0.3))
        box = changed_box(original, marked)
        assert box is not None and box[0] >= 150 and box[1] >= 150  # bottom-right
        return decode(marked).getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))  # type: ignore[return-value]

    assert centre_of_mark(1.0) == (220, 20, 20)  # the logo's own red
    r, g, b = centre_of_mark(0.3)  # about 30% of it over the blue
    assert 60 <= r <= 72 and 170 <= b <= 185
    assert decode(original).getpixel((0, 0)) == (0, 0, 255)


def test_the_mark_width_follows_the_size_setting() -> None:
    original = png(1000, 500)
    buf = io.BytesIO()
    Image.new("RGBA", (100, 40), (250, 250, 0, 255)).save(buf, format="PNG")  # opaque edge to edge
    for size in (0.1, 0.3):
        box = changed_box(original, apply_watermark(original, Watermark(logo=buf.getvalue(), size=size)))
        assert box is not None
        assert box[2] - box[0] == round(size * 1000) and box[3] - box[1] == round(size * 400)


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (1, 1), (3, 400), (400, 3)])
@pytest.mark.parametrize("kind", ["text", "logo"])
def test_tiny_and_thin_images_get_a_mark_that_fits(size: tuple[int, int], kind: str) -> None:
    mark = Watermark(text="@mychannel" if kind == "text" else "", logo=logo_png() if kind == "logo" else None)
    original = png(*size, (10, 200, 30))
    marked = apply_watermark(original, mark)
    assert decode(marked).size == size
    if size in ((16, 16), (64, 64)):
        box = changed_box(original, marked)
        assert box is not None and box[2] <= size[0] and box[3] <= size[1]


def test_a_huge_image_is_marked_in_its_corner_only() -> None:
    original = png(6000, 4000, (40, 60, 80))
    marked = apply_watermark(original, Watermark(text="AI-generated"))
    box = changed_box(original, marked)
    assert box is not None
    # 20% of the width, 2% of the short side (80 px) from the bottom-right edges
    assert box[0] >= 6000 - 80 - 1200 - 2 and box[2] <= 6000 - 80 and box[3] <= 4000 - 80
    assert box[3] - box[1] < 400
    # 6000+4000 is exactly sendPhoto's side sum: the marked file itself goes as the photo
    upload = prepare_upload(marked, "p1")
    assert upload.method == "sendPhoto" and upload.data == marked


def test_a_marked_photo_over_10_mb_is_still_recompressed_before_the_send() -> None:
    noise = Image.frombytes("RGB", (2400, 2400), random.Random(7).randbytes(2400 * 2400 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG", compress_level=1)
    original = buf.getvalue()
    marked = apply_watermark(original, LABEL)
    assert len(marked) > 10 * 1024 * 1024
    upload = prepare_upload(marked, "p1")
    assert upload.method == "sendPhoto" and upload.content_type == "image/jpeg"
    assert upload.data != prepare_upload(original, "p1").data  # the JPEG is made of the marked pixels


def test_other_image_modes_are_marked_too() -> None:
    for mode, colour in (("L", (90,)), ("RGBA", (10, 20, 30, 0)), ("P", (3,))):
        original = png(120, 90, colour, mode)
        marked = apply_watermark(original, LABEL)
        assert changed_box(original, marked) is not None
        if mode == "RGBA":  # transparency stays outside the mark
            assert decode(marked).getpixel((0, 0)) == (10, 20, 30, 0)


def test_marking_is_deterministic() -> None:
    original = png(512, 384, (200, 180, 90))
    for mark in (Watermark(text="@mychannel", opacity=0.6), Watermark(logo=logo_png(), corner="top-left")):
        first = apply_watermark(original, mark)
        assert apply_watermark(original, mark) == first
        # a fresh object with the same settings (a later run) gives the same bytes
        again = Watermark(mark.text, mark.logo, mark.corner, mark.margin, mark.opacity, mark.size)
        assert apply_watermark(original, again) == first


def test_generator_png_text_survives_the_mark() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse, Steps: 30")
    buf = io.BytesIO()
    Image.new("RGB", (100, 100), "navy").save(buf, format="PNG", pnginfo=info)
    marked = decode(apply_watermark(buf.getvalue(), LABEL))
    assert marked.text == {"parameters": "a lighthouse, Steps: 30"}  # type: ignore[attr-defined]


def test_settings_that_cannot_work_are_refused() -> None:
    for bad in (
        {},
        {"text": "x", "logo": logo_png()},
        {"text": "x", "corner": "middle"},
        {"text": "x", "opacity": 0.0},
        {"text": "x", "opacity": 1.5},
        {"text": "x", "size": 0.0},
        {"text": "x", "margin": 0.5},
        {"logo": b"not a png"},
    ):
        with pytest.raises(ValueError):
            Watermark(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be decoded"):
        apply_watermark(b"\x89PNG broken", LABEL)


def test_the_row_column_turns_it_off_and_typos_are_the_rows_fault() -> None:
    assert [row_wants_watermark(v) for v in ("", "on", "YES", "1", " true ")] == [True] * 5
    assert [row_wants_watermark(v) for v in ("off", "No", "0", "false")] == [False] * 4
    with pytest.raises(ValueError, match="watermark"):
        row_wants_watermark("maybe")
    row = PromptRow(2, "a fox", "p1", {"watermark": "nope"})
    with pytest.raises(ValueError, match="watermark"):
        build_request(row, default_model="m", default_width=512, default_height=512)
    # setting the column is an edit of the row; rows without it keep their fingerprints
    assert (
        PromptRow(2, "a fox").fingerprint() == PromptRow(2, "a fox", params={"watermark": ""}).fingerprint()
    )
    assert (
        PromptRow(2, "a fox").fingerprint()
        != PromptRow(2, "a fox", params={"watermark": "off"}).fingerprint()
    )


def test_mark_post_records_the_posted_hash_and_keeps_the_originals() -> None:
    pngs = [png(64, 64, (9, 9, 9)), png(64, 64, (99, 99, 99))]
    meta = {"sha256": sha(pngs[0]), "variations": [{"sha256": sha(p), "seed": i} for i, p in enumerate(pngs)]}
    marked, out = mark_post(pngs, meta, LABEL, "")
    assert out["sha256"] == sha(marked[0]) and out["original_sha256"] == sha(pngs[0])
    assert [v["sha256"] for v in out["variations"]] == [sha(m) for m in marked]
    assert [v["original_sha256"] for v in out["variations"]] == [sha(p) for p in pngs]
    assert meta["sha256"] == sha(pngs[0])  # the image's own record is not edited
    assert mark_post(pngs, meta, LABEL, "off") == (pngs, meta)
    assert mark_post(pngs, meta, None, "") == (pngs, meta)


# ---------------------------------------------------------------------------------------------------
# In the pipeline
# ---------------------------------------------------------------------------------------------------
def queue_rows(workbook_dir: Path, rows: list[tuple[str, str]]) -> list[str]:
    from image_pipeline.services.sheets import LocalWorkbook

    write_csv(workbook_dir / "process.csv", [["prompt", "watermark"], *[list(r) for r in rows]])
    return [r.prompt_id for r in LocalWorkbook(folder=str(workbook_dir)).ensure_ids().rows]


def generated_file(assets: Path, key: str) -> Path:
    [path] = [p for p in assets.rglob("*.png") if key in str(p)]
    return path


def test_outbox_posts_the_marked_image_and_keeps_the_original(
    local_resources, instance, workbook_dir, tmp_path
) -> None:
    ids = queue_rows(workbook_dir, [("a lighthouse at dawn", ""), ("a product shot", "off")])
    resources = dict(local_resources)
    outbox = LocalOutbox(folder=str(tmp_path / "outbox"), watermark_text="AI-generated")
    resources["publisher"] = outbox
    result = run_partitions(resources, instance, ids)
    assert result.success
    posts = {p["prompt_id"]: p for p in outbox.posts()}
    rows = {r["id"]: r for r in done_rows(workbook_dir)}
    assets = tmp_path / "assets"

    marked_key, plain_key = ids
    posted = (outbox.root / posts[marked_key]["file"]).read_bytes()
    original = generated_file(assets, marked_key).read_bytes()
    assert posted != original and changed_box(original, posted) is not None
    assert posted == apply_watermark(original, outbox.watermark())  # the same bytes on any later attempt
    assert rows[marked_key]["status"] == "SUCCESS"
    assert rows[marked_key]["image_sha256"] == sha(posted)
    assert f"original sha256 {sha(original)}" in rows[marked_key]["information"]
    [post_value] = [
        json.loads(p.read_text())
        for p in assets.rglob("*")
        if p.is_file() and "telegram_post" in str(p) and marked_key in str(p)
    ]
    assert post_value["image_sha256"] == sha(posted)
    assert post_value["image_meta"]["original_sha256"] == sha(original)

    # the row that said "off" is posted as generated
    plain = (outbox.root / posts[plain_key]["file"]).read_bytes()
    assert plain == generated_file(assets, plain_key).read_bytes()
    assert (
        rows[plain_key]["image_sha256"] == sha(plain) and "watermarked" not in rows[plain_key]["information"]
    )
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "watermark", "id"]]


def test_a_logo_that_cannot_be_read_stops_the_run_with_everything_queued(
    local_resources, instance, workbook_dir, tmp_path
) -> None:
    ids = queue_rows(workbook_dir, [("a fox in snow", "")])
    resources = dict(local_resources)
    outbox = LocalOutbox(folder=str(tmp_path / "outbox"), watermark_logo=str(tmp_path / "missing.png"))
    resources["publisher"] = outbox
    run_partitions(resources, instance, ids)
    assert outbox.posts() == []
    assert done_rows(workbook_dir) == []
    assert [r[0] for r in read_csv(workbook_dir / "process.csv")[1:]] == ["a fox in snow"]


def test_telegram_gets_the_marked_album_and_a_retry_sends_the_same_bytes(
    telegram_emulator, local_resources, instance, workbook_dir, tmp_path
) -> None:
    from image_pipeline.services.sheets import LocalWorkbook

    write_csv(workbook_dir / "process.csv", [["prompt", "count"], ["two herons", "2"]])
    ids = [r.prompt_id for r in LocalWorkbook(folder=str(workbook_dir)).ensure_ids().rows]
    logo = tmp_path / "logo.png"
    logo.write_bytes(logo_png())
    resources = dict(local_resources)
    resources["publisher"] = TelegramPublisher(
        token=DEFAULT_TOKEN,
        chat_id=str(DEFAULT_CHANNEL_ID),
        api_base_url=telegram_emulator.base_url,
        retry_attempts=1,
        posts_per_minute=0,
        watermark_logo=str(logo),
        watermark_corner="top-left",
    )
    # the first run's send is refused before Telegram took it (its server restarting): the row stays queued
    telegram_emulator.fail_next("restart", endpoints=["sendMediaGroup"])
    assert run_partitions(resources, instance, ids).success
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []
    assert done_rows(workbook_dir) == []

    assert run_partitions(resources, instance, ids).success
    sent = [m["image"] for m in telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)]
    assert len(sent) == 2
    originals = sorted((p for p in (tmp_path / "assets").rglob("*.png") if ids[0] in str(p)), key=str)
    assert len(originals) == 2
    mark = resources["publisher"].watermark()
    assert sorted(sha(s) for s in sent) == sorted(
        sha(apply_watermark(p.read_bytes(), mark)) for p in originals
    )
    [row] = done_rows(workbook_dir)
    assert row["status"] == "SUCCESS"
    assert row["image_sha256"] == ";".join(sha(s) for s in sent)
    assert all(sha(p.read_bytes()) in row["information"] for p in originals)


def test_the_doctor_checks_the_watermark_settings_before_any_run(tmp_path) -> None:
    from image_pipeline.domain.checks import FAIL, OK

    def rows(**fields) -> dict[str, tuple[str, str]]:
        outbox = LocalOutbox(folder=str(tmp_path / "outbox"), **fields)
        return {c.name: (c.status, c.detail) for c in outbox.preflight()}

    assert "watermark" not in rows()  # off: no row
    status, detail = rows(watermark_text="@mychannel")["watermark"]
    assert status == OK and "@mychannel" in detail
    status, detail = rows(watermark_logo=str(tmp_path / "missing.png"))["watermark"]
    assert status == FAIL and "missing.png" in detail
    status, detail = rows(watermark_text="x", watermark_corner="middle")["watermark"]
    assert status == FAIL and "middle" in detail
