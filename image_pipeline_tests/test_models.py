import pytest

from image_pipeline.domain.captions import ELLIPSIS, caption_for
from image_pipeline.domain.done_entries import DoneEntry
from image_pipeline.domain.rows import PromptRow, build_request, is_valid_id, new_prompt_id, validate_prompt
from image_pipeline.domain.telegram_limits import TELEGRAM_CAPTION_LIMIT


@pytest.mark.parametrize("prompt", ["", " ", "\t\n ", "\x00\x00", "\u200b"[:0]])
def test_empty_and_whitespace_prompts_are_invalid(prompt: str) -> None:
    check = validate_prompt(prompt)
    assert not check.ok
    assert check.reason == "empty prompt"


def test_overlong_prompt_is_invalid_with_its_length() -> None:
    check = validate_prompt("x" * 10_001)
    assert not check.ok and "10001" in check.reason


@pytest.mark.parametrize("prompt", ["a cat", "=IMPORTXML(1)", "<b>&amp;</b>", "😀 émoji", "مرحبا"])
def test_ordinary_prompts_are_valid(prompt: str) -> None:
    assert validate_prompt(prompt).ok


def test_caption_is_cut_to_telegram_limit_with_ellipsis() -> None:
    row = PromptRow(2, "word " * 400, "p1")
    caption = caption_for(row)
    assert len(caption) == TELEGRAM_CAPTION_LIMIT
    assert caption.endswith(ELLIPSIS)


def test_caption_keeps_suffix_whole_and_prefers_caption_column() -> None:
    row = PromptRow(2, "the prompt", "p1", {"caption": "y" * 2000})
    caption = caption_for(row, suffix="Offline preview")
    assert len(caption) == TELEGRAM_CAPTION_LIMIT
    assert caption.endswith("\n\nOffline preview")
    assert caption.startswith("yyy")


def test_short_caption_is_unchanged() -> None:
    assert caption_for(PromptRow(2, "  a fox  ", "p1")) == "a fox"


def test_emoji_caption_counts_code_points() -> None:
    row = PromptRow(2, "😀" * 1024, "p1")
    assert caption_for(row) == "😀" * 1024


def test_build_request_uses_defaults_and_row_parameters() -> None:
    row = PromptRow(
        2, "fox", "p1", {"width": "512", "height": "768.0", "seed": "7", "negative_prompt": "blur"}
    )
    req = build_request(row, default_model="m", default_width=1024, default_height=1024)
    assert (req.width, req.height, req.seed, req.model, req.negative_prompt) == (512, 768, 7, "m", "blur")
    plain = build_request(
        PromptRow(2, "fox", "p1"), default_model="m", default_width=1024, default_height=1024
    )
    assert (plain.width, plain.height, plain.seed) == (1024, 1024, None)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"width": "abc"}, "width must be a whole number"),
        ({"seed": "-1"}, "seed must be between"),
        ({"height": "100000"}, "height must be between"),
        ({"width": "12.5"}, "width must be a whole number"),
    ],
)
def test_bad_row_parameters_raise_clear_errors(params: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build_request(PromptRow(2, "fox", "p1", params), default_model="m", default_width=8, default_height=8)


def test_ids_are_partition_safe_and_unique() -> None:
    ids = {new_prompt_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(is_valid_id(i) and "/" not in i and "," not in i for i in ids)
    assert not is_valid_id("a/b") and not is_valid_id("a...b") and not is_valid_id("")


def test_done_entry_maps_ancestor_header_names() -> None:
    entry = DoneEntry(id="p1", prompt="fox", status="SUCCESS", information="ok")
    assert entry.value_for("Info") == "ok"
    assert entry.value_for("Prompt") == "fox"
    assert entry.value_for("Timestamp").endswith("Z")
    assert entry.value_for("unknown column") is None


def test_sizes_are_rounded_down_to_multiples_of_8() -> None:
    row = PromptRow(2, "fox", "p1", {"width": "1001", "height": "250"})
    req = build_request(row, default_model="m", default_width=1024, default_height=1024)
    assert (req.width, req.height) == (1000, 248)
