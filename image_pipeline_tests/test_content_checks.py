import io
import os
import random
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from image_pipeline.domain.content_checks import (
    BLANK_MAX_SPAN,
    CAPTION_WITHIN_LIMIT,
    CHECK_NAMES,
    IMAGE_DECODES,
    IMAGE_NOT_BLANK,
    IMAGE_WITHIN_TELEGRAM_LIMITS,
    PROMPT_FREE_OF_BANNED_WORDS,
    BannedWords,
    CheckOutcome,
    check_caption,
    check_image,
    first_failure,
    run_all,
    utf16_units,
)
from image_pipeline.domain.uploads import prepare_upload
from image_pipeline.services.publisher.telegram import _cut_utf16

SIDE = 1024


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def by_name(outcomes: list[CheckOutcome]) -> dict[str, CheckOutcome]:
    return {outcome.name: outcome for outcome in outcomes}


def night_sky() -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    rng = random.Random(7)
    for _ in range(10):  # ten stars of 2x2 pixels: 40 lit pixels out of a million
        x, y = rng.randrange(SIDE - 2), rng.randrange(SIDE - 2)
        draw.rectangle((x, y, x + 1, y + 1), fill=(230, 230, 255))
    return image


def white_page_with_line() -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    ImageDraw.Draw(image).line((100, 500, 900, 520), fill=(40, 40, 40), width=1)
    return image


def gradient() -> Image.Image:
    ramp = Image.linear_gradient("L").resize((SIDE, SIDE))
    return Image.merge("RGB", (ramp, ramp.rotate(90), ramp.rotate(180)))


def jpeg_black_frame() -> bytes:
    # A black frame carrying a few levels of noise, then JPEG: what a provider's re-encoding leaves.
    noise = Image.effect_noise((SIDE, SIDE), 64).point(lambda v: v * 6 // 255)
    frame = Image.merge("RGB", (noise, noise.rotate(90), noise.rotate(180)))
    return encode(frame, "JPEG", quality=75)


def busy_image(seed: int) -> Image.Image:
    # Generated-photo-like: smooth structure plus grain, so PNG sizes are realistic (~2 MB).
    ramp = Image.linear_gradient("L").resize((SIDE, SIDE)).rotate(seed * 37)
    grain = Image.effect_noise((SIDE, SIDE), 20 + seed)
    return Image.merge("RGB", (Image.blend(grain, ramp, 0.6), ramp, grain.rotate(90)))


# ---------------------------------------------------------------------------------------------------
# image_not_blank
# ---------------------------------------------------------------------------------------------------
def test_black_frame_fails_not_blank_as_a_safety_filter_frame() -> None:
    outcome = by_name(check_image(encode(Image.new("RGB", (SIDE, SIDE))), "p1"))[IMAGE_NOT_BLANK]
    assert not outcome.passed
    assert "all-black" in outcome.detail and "safety filter" in outcome.detail


@pytest.mark.parametrize("colour", [(200, 30, 30), (255, 255, 255), (12, 200, 99)])
def test_single_non_black_colour_fails_not_blank(colour: tuple[int, int, int]) -> None:
    outcome = by_name(check_image(encode(Image.new("RGB", (SIDE, SIDE), colour)), "p1"))[IMAGE_NOT_BLANK]
    assert not outcome.passed
    assert "single colour" in outcome.detail


def test_jpeg_compressed_black_frame_with_noise_fails_not_blank() -> None:
    jpeg = jpeg_black_frame()
    with Image.open(io.BytesIO(jpeg)) as im:
        low, high = zip(*im.getextrema(), strict=True)
    assert max(high) > 0, "the frame must really vary by a few levels, or this test proves nothing"
    outcome = by_name(check_image(jpeg, "p1"))[IMAGE_NOT_BLANK]
    assert not outcome.passed, outcome.detail


def test_single_colour_in_a_palette_or_grey_image_fails_too() -> None:
    grey = Image.new("L", (256, 256), 0)
    palette = Image.new("RGB", (256, 256), (10, 120, 200)).convert("P", palette=Image.Palette.ADAPTIVE)
    transparent = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    for image in (grey, palette, transparent):
        assert not by_name(check_image(encode(image), "p1"))[IMAGE_NOT_BLANK].passed, image.mode


@pytest.mark.parametrize(
    "make", [night_sky, white_page_with_line, gradient], ids=["night-sky", "thin-line", "gradient"]
)
def test_dark_or_minimalist_images_pass_not_blank(make) -> None:
    outcomes = by_name(check_image(encode(make()), "p1"))
    assert outcomes[IMAGE_NOT_BLANK].passed, outcomes[IMAGE_NOT_BLANK].detail
    assert all(outcome.passed for outcome in outcomes.values())


def test_night_sky_still_passes_after_jpeg() -> None:
    outcome = by_name(check_image(encode(night_sky(), "JPEG", quality=60), "p1"))[IMAGE_NOT_BLANK]
    assert outcome.passed, outcome.detail


def test_a_faint_mark_just_over_the_threshold_passes() -> None:
    image = Image.new("RGB", (SIDE, SIDE), (0, 0, 0))
    ImageDraw.Draw(image).line((0, 10, SIDE, 10), fill=(BLANK_MAX_SPAN + 1,) * 3)
    assert by_name(check_image(encode(image), "p1"))[IMAGE_NOT_BLANK].passed


# ---------------------------------------------------------------------------------------------------
# image_decodes
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [0.5, 0.99], ids=["half", "missing-end"])
def test_truncated_png_fails_decode_and_the_rest_is_not_checked(cut: float) -> None:
    png = encode(busy_image(1))
    outcomes = check_image(png[: int(len(png) * cut)], "p1")
    assert [o.name for o in outcomes] == [IMAGE_DECODES, IMAGE_NOT_BLANK, IMAGE_WITHIN_TELEGRAM_LIMITS]
    assert not outcomes[0].passed
    assert "truncated or corrupt PNG" in outcomes[0].detail
    for outcome in outcomes[1:]:
        assert (outcome.passed, outcome.detail) == (False, "not checked: the image does not decode")


@pytest.mark.parametrize(
    "data",
    [b"", b"<!DOCTYPE html><html>502 Bad Gateway</html>", os.urandom(4096)],
    ids=["empty", "html", "noise"],
)
def test_non_image_bytes_fail_decode(data: bytes) -> None:
    outcome = check_image(data, "p1")[0]
    assert outcome.name == IMAGE_DECODES and not outcome.passed
    assert outcome.detail.startswith("the image does not decode")


def test_html_body_is_recognisable_from_the_detail() -> None:
    assert "<!DOCTYPE" in check_image(b"<!DOCTYPE html><html></html>", "p1")[0].detail


# ---------------------------------------------------------------------------------------------------
# image_within_telegram_limits
# ---------------------------------------------------------------------------------------------------
def test_9000x1000_png_over_10_mb_passes_as_recompressed_photo() -> None:
    # width+height = 10000 is exactly Telegram's limit; the uncompressed PNG is 27 MB.
    ramp = Image.linear_gradient("L").resize((9000, 1000))
    image = Image.merge("RGB", (ramp, ramp.rotate(180), Image.effect_noise((9000, 1000), 10)))
    png = encode(image, compress_level=0)
    assert len(png) > 10 * 1024 * 1024
    prepared = prepare_upload(png, "p1")
    outcome = by_name(check_image(png, "p1"))[IMAGE_WITHIN_TELEGRAM_LIMITS]
    assert outcome.passed, outcome.detail
    assert prepared.method == "sendPhoto" and prepared.content_type == "image/jpeg"
    assert "goes as a photo: 9000x1000" in outcome.detail and "JPEG" in outcome.detail


def test_side_sum_over_10000_goes_as_document() -> None:
    png = encode(gradient().resize((9000, 1001)))
    outcome = by_name(check_image(png, "p1"))[IMAGE_WITHIN_TELEGRAM_LIMITS]
    assert outcome.passed and "document" in outcome.detail
    assert prepare_upload(png, "p1").method == "sendDocument"


def test_aspect_ratio_25_goes_as_document() -> None:
    png = encode(gradient().resize((2500, 100)))
    outcome = by_name(check_image(png, "p1"))[IMAGE_WITHIN_TELEGRAM_LIMITS]
    assert outcome.passed
    assert outcome.detail.startswith("goes as a document")
    assert prepare_upload(png, "p1").method == "sendDocument"


def test_over_50_mb_outside_photo_limits_fails() -> None:
    # 9000x2000 is outside the photo limits, and 54 MB of incompressible pixels is over the document limit.
    image = Image.frombytes("RGB", (9000, 2000), os.urandom(9000 * 2000 * 3))
    outcome = by_name(check_image(encode(image, compress_level=0), "p1"))[IMAGE_WITHIN_TELEGRAM_LIMITS]
    assert not outcome.passed
    assert "50 MB" in outcome.detail


def test_ordinary_image_goes_as_photo_unchanged() -> None:
    png = encode(busy_image(2))
    outcome = by_name(check_image(png, "p1"))[IMAGE_WITHIN_TELEGRAM_LIMITS]
    assert outcome.passed
    assert outcome.detail == f"goes as a photo: 1024x1024, {len(png)} bytes image/png"


# ---------------------------------------------------------------------------------------------------
# caption_within_limit
# ---------------------------------------------------------------------------------------------------
def test_caption_of_1024_passes_and_1025_fails() -> None:
    assert check_caption("a" * 1024).passed
    failed = check_caption("a" * 1025)
    assert failed.name == CAPTION_WITHIN_LIMIT and not failed.passed
    assert "1025" in failed.detail and "1024" in failed.detail


def test_empty_caption_passes() -> None:
    assert check_caption("").passed


@pytest.mark.parametrize(
    ("caption", "passes"),
    [
        ("😀" * 1024, True),  # 1024 characters (2048 UTF-16 units): the documented limit is characters
        ("😀" * 1025, False),
        ("a" * 1023 + "😀", True),
        ("é" * 1024, True),
        ("𝔘" * 1025, False),
    ],
)
def test_caption_is_counted_in_characters(caption: str, passes: bool) -> None:
    assert check_caption(caption).passed is passes


def test_a_caption_cut_by_caption_for_or_by_the_publishers_retry_passes() -> None:
    # what the pipeline actually sends: caption_for's cut, or the publisher's UTF-16 cut on a refusal
    from image_pipeline.domain.captions import caption_for
    from image_pipeline.domain.rows import PromptRow

    long_prompt = "😀" * 3000
    assert check_caption(caption_for(PromptRow(2, long_prompt, "p1"))).passed
    assert check_caption(_cut_utf16(long_prompt, 1024)).passed


def test_caption_detail_shows_both_counts_for_astral_text() -> None:
    detail = check_caption("a" * 1023 + "😀").detail
    assert "1024 characters (1025 UTF-16 units)" in detail
    assert utf16_units("\ud800") == 1  # a lone surrogate is counted, not raised on


# ---------------------------------------------------------------------------------------------------
# prompt_free_of_banned_words
# ---------------------------------------------------------------------------------------------------
def test_match_is_case_insensitive_and_names_the_word_not_the_prompt() -> None:
    banned = BannedWords.load(inline="Gore")
    prompt = "A long and detailed prompt about GORE in a forest at dusk, cinematic"
    outcome = banned.check_prompt(prompt)
    assert outcome.name == PROMPT_FREE_OF_BANNED_WORDS and not outcome.passed
    assert '"Gore"' in outcome.detail and prompt not in outcome.detail and "forest" not in outcome.detail


def test_fullwidth_letters_match_after_nfkc() -> None:
    assert not BannedWords.load(inline="ass").check_prompt("a ＡＳＳ in fullwidth").passed
    assert not BannedWords.load(inline="ＮＵＤＥ").check_prompt("nude figure").passed


def test_invisible_format_characters_do_not_hide_a_word() -> None:
    assert not BannedWords.load(inline="nude").check_prompt("a nu\u00adde, a n\u200bude").passed


def test_words_match_on_word_boundaries() -> None:
    banned = BannedWords.load(inline="ass")
    assert banned.check_prompt("a class of bass players passing by").passed
    assert not banned.check_prompt("kick ass!").passed
    assert not banned.check_prompt("ass").passed


def test_phrase_matches_across_extra_whitespace() -> None:
    banned = BannedWords.load(inline="blood  bath")
    assert not banned.check_prompt("a BLOOD \n\t  bath at noon").passed
    assert banned.check_prompt("a blood-red bath").passed
    assert banned.terms == ("blood bath",)


def test_first_banned_word_in_the_prompt_is_named() -> None:
    banned = BannedWords.load(inline="zombie, gore, gore fest")
    assert banned.check_prompt("gore fest with a zombie").detail.endswith('"gore fest"')
    assert banned.check_prompt("a zombie gore fest").detail.endswith('"zombie"')


def test_file_with_comments_blank_lines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "banned.txt"
    path.write_text("\ufeff# house list\n\ngore\n   # indented comment\n  blood bath  \n#nsfw\n", "utf-8")
    banned = BannedWords.load(str(path), "extra, , ")
    assert banned.terms == ("gore", "blood bath", "extra")
    assert banned.check_prompt("house list nsfw indented comment").passed


def test_file_and_inline_terms_combine_and_deduplicate(tmp_path: Path) -> None:
    path = tmp_path / "banned.txt"
    path.write_text("Gore\n", "utf-8")
    banned = BannedWords.load(str(path), "gore,GORE, zombie")
    assert banned.terms == ("Gore", "zombie")
    assert not banned.check_prompt("zombies? no: a zombie").passed


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="banned-words file .*nope.txt.* does not exist"):
        BannedWords.load(str(missing), "gore")


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("gr\xfcn\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        BannedWords.load(str(path))


def test_empty_list_passes_everything() -> None:
    for banned in (BannedWords.load(None, None), BannedWords.load(inline=" , ,"), BannedWords()):
        assert banned.check_prompt("anything at all, gore included").passed


# ---------------------------------------------------------------------------------------------------
# run_all / first_failure
# ---------------------------------------------------------------------------------------------------
def test_run_all_reports_every_check_in_order_and_first_failure_picks_the_earliest() -> None:
    banned = BannedWords.load(inline="gore")
    good = run_all(check_image(encode(busy_image(3)), "p1"), "a caption", "a quiet lake", banned)
    assert [o.name for o in good] == list(CHECK_NAMES)
    assert all(o.passed for o in good) and first_failure(good) is None

    bad = run_all(check_image(encode(Image.new("RGB", (64, 64))), "p1"), "x" * 2000, "gore", banned)
    assert [o.passed for o in bad] == [True, False, True, False, False]
    assert first_failure(bad) == bad[1]


def test_timing_of_50_images_of_1024() -> None:
    pngs = [encode(busy_image(seed)) for seed in range(5)]
    banned = BannedWords.load(inline="gore, blood bath, zombie")
    start = time.perf_counter()
    for i in range(50):
        outcomes = run_all(check_image(pngs[i % 5], f"p{i}"), "caption " * 20, "a prompt " * 30, banned)
        assert first_failure(outcomes) is None
    elapsed = time.perf_counter() - start
    size = sum(map(len, pngs)) // len(pngs)
    print(f"\ncontent checks: 50 PNGs of 1024x1024 (~{size / 1e6:.1f} MB each) in {elapsed:.2f} s")
