"""CAPTION_TEMPLATE and CAPTION_SIGNATURE: every field rendered, the cut to Telegram's 1024 code points with
the signature kept, an unknown field refused by the doctor and the run gate, the caption check on the
rendered text; posts go through the real Telegram client to the Bot API emulator."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from image_pipeline.cli import main
from image_pipeline.domain.caption_template import ELLIPSIS, render_caption, template_problem
from image_pipeline.domain.content_checks import BannedWords, run_all, utf16_units
from image_pipeline.domain.rows import PromptRow
from image_pipeline.lifecycle import gate as preflight
from image_pipeline.services.images.preview import PREVIEW_LABEL
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID

from .channel_support import queue, telegram
from .conftest import run_partitions

EVERY_FIELD = "{caption}\\n{prompt}\\n{hashtags}\\nmodel={model} seed={seed} backend={backend} date={date}\\n{signature}"


def test_a_template_with_every_field_is_posted_as_rendered(
    local_resources, instance, telegram_emulator
) -> None:
    resources = {
        **local_resources,
        "publisher": telegram(
            telegram_emulator,
            caption_template=EVERY_FIELD,
            caption_signature="— @foxes_daily",
            caption_timezone="Pacific/Auckland",
        ),
    }
    header = ["prompt", "caption", "hashtags", "seed"]
    [pid] = queue(resources, header, ["a red fox in snow", "Winter fox", "fox, #winter  sci-fi", "7"])
    assert run_partitions(resources, instance, [pid]).success
    [message] = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    today = datetime.now(ZoneInfo("Pacific/Auckland")).strftime("%Y-%m-%d")
    assert message["caption"] == (
        "Winter fox\na red fox in snow\n#fox #winter #sci_fi\n"
        f"model=offline-preview seed=7 backend=preview date={today}\n— @foxes_daily\n\n{PREVIEW_LABEL}"
    )
    assert message["parse_mode"] is None  # plain text: nothing in a prompt is taken for markup


def test_no_template_keeps_todays_caption_exactly() -> None:
    row = PromptRow(1, "a red fox", params={"caption": "  the fox  "})
    assert render_caption(row, {"model": "m"}, suffix="label") == "the fox\n\nlabel"
    # a signature alone uses the default template: caption, hashtags, signature
    signed = render_caption(row, {}, signature="— me")
    assert signed == "the fox\n\n— me"


def test_a_template_over_1024_code_points_is_cut_in_the_caption_keeping_the_signature(
    local_resources, instance, telegram_emulator
) -> None:
    signature = "— 🦊 foxes daily, every image AI-made 🎨"
    resources = {
        **local_resources,
        "publisher": telegram(
            telegram_emulator,
            caption_template="{caption}\\n\\n{hashtags}\\n{signature}",
            caption_signature=signature,
        ),
    }
    long_caption = "🦊 fox " * 400  # 2400 code points, each emoji two UTF-16 units
    [pid] = queue(resources, ["prompt", "caption", "hashtags"], ["a fox", long_caption, "fox art"])
    assert run_partitions(resources, instance, [pid]).success
    [message] = telegram_emulator.messages_for(DEFAULT_CHANNEL_ID)
    caption = message["caption"]
    tail = f"\n\n#fox #art\n{signature}\n\n{PREVIEW_LABEL}"
    assert caption.endswith(ELLIPSIS + tail)  # the signature, hashtags and label whole; the text cut
    assert len(caption) == 1024  # Telegram's count for a bot: code points (tdlib utf8_length)
    assert utf16_units(caption) > 1024  # what a UTF-16 count would have refused
    body = caption[: -len(tail) - 1]
    assert long_caption.startswith(body) and body == body.rstrip()
    assert telegram_emulator.count("sendphoto") == 1  # accepted at the first try, no second cut


def test_the_cut_counts_code_points_and_drops_hashtags_only_when_the_text_is_gone() -> None:
    row = PromptRow(1, "p", params={"caption": "x" * 50, "hashtags": " ".join(f"t{i}" for i in range(40))})
    text = render_caption(row, {}, template="{caption} {hashtags} {signature}", signature="S" * 30, limit=60)
    assert len(text) <= 60 and text.endswith("S" * 30)
    assert "x" not in text and text.startswith("#t0")  # the caption went first, then tags from the end
    emoji = render_caption(
        PromptRow(1, "😀" * 30), {}, template="{prompt}|{signature}", signature="sig", limit=20
    )
    assert emoji == "😀" * 15 + ELLIPSIS + "|sig" and len(emoji) == 20


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("{caption} {author}", "{author}"),
        ("{caption.__class__}", "attribute and index access"),
        ("{caption[0]}", "attribute and index access"),
        ("{0}", "positional"),
        ("{caption!r}", "no conversion"),
    ],
)
def test_a_bad_template_is_refused_with_the_field_named(template: str, named: str) -> None:
    problem = template_problem(template)
    assert problem is not None and named in problem


def test_an_unknown_field_fails_the_doctor_and_the_run_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGE_PIPELINE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CAPTION_TEMPLATE", "{caption}\\n{sigature}")
    preflight.forget()
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "unknown field {sigature}" in out and "FAIL" in out
    outbox = LocalOutbox(folder=str(tmp_path / "outbox"), caption_template="{caption} {sigature}")
    refused = preflight.gate([outbox])
    assert refused is not None and "{sigature}" in str(refused)
    preflight.forget()
    monkeypatch.setenv("CAPTION_TEMPLATE", "{caption}\\n{signature}")
    assert main(["doctor"]) == 0


def test_a_banned_word_in_the_signature_is_blocked_by_the_caption_check(
    local_resources, instance, telegram_emulator
) -> None:
    resources = {
        **local_resources,
        "publisher": telegram(telegram_emulator, caption_signature="buy crypto now", banned_words="crypto"),
    }
    [pid] = queue(resources, ["prompt"], ["a calm lake"])
    result = run_partitions(resources, instance, [pid])
    post = result.output_for_node("generate_and_post", "telegram_post")[pid]
    assert post.status == "FAILED" and post.check == "caption_within_limit"
    assert 'banned term "crypto"' in post.reason
    assert telegram_emulator.messages_for(DEFAULT_CHANNEL_ID) == []
    [done] = resources["prompt_sheet"].read_done()
    assert done["status"] == "FAILED" and "caption_within_limit" in done["information"]


def test_a_banned_prompt_is_still_reported_by_the_prompt_check() -> None:
    banned = BannedWords.load(None, "crypto")
    caption = render_caption(PromptRow(1, "crypto coins"), {}, signature="— me")
    checks = {c.name: c.passed for c in run_all([], caption, "crypto coins", banned)}
    assert checks == {"caption_within_limit": True, "prompt_free_of_banned_words": False}


def test_the_gate_passes_a_good_template(tmp_path: Path) -> None:
    outbox = LocalOutbox(folder=str(tmp_path / "outbox"), caption_template=EVERY_FIELD)
    assert [c for c in outbox.preflight() if c.status == "FAIL"] == []
    assert isinstance(outbox, dg.ConfigurableResource)
