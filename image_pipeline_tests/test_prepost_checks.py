"""Pre-post content checks as Dagster asset checks: a prompt failing one is not posted and gets a FAILED
Done row naming the check; the run's check results show in the UI; the batch's other prompts go on."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from image_pipeline.domain.content_checks import CHECK_NAMES
from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN

from .conftest import queue_prompts as queue
from .conftest import read_csv, run_partitions


def done_rows(workbook_dir: Path) -> list[dict[str, str]]:
    table = read_csv(workbook_dir / "done.csv")
    return [dict(zip(table[0], row, strict=False)) for row in table[1:]]


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_blank_image_from_a_safety_filter_is_never_posted(
    hf_emulator, local_resources, instance, workbook_dir
) -> None:
    ids = queue(workbook_dir, ["a quiet street at night"])
    hf_emulator.blank = True  # the provider's safety filter answered with an all-black image
    resources = dict(local_resources)
    resources["image_generator"] = HuggingFaceGenerator(
        token=HF_TOKEN, base_url=f"{hf_emulator.base_url}/models/m", model="m", width=128, height=128
    )
    result = run_partitions(resources, instance, ids)
    assert result.success
    assert local_resources["publisher"].posts() == []
    [row] = done_rows(workbook_dir)
    assert row["status"] == "FAILED" and "image_not_blank" in row["information"]
    checks = evaluations(result)
    assert set(checks) == set(CHECK_NAMES)
    assert not checks["image_not_blank"].passed
    assert checks["image_not_blank"].severity == dg.AssetCheckSeverity.WARN
    assert checks["image_not_blank"].metadata["prompts_blocked"].value == 1
    assert checks["image_decodes"].passed and checks["caption_within_limit"].passed
    [notice] = local_resources["publisher"].notices()
    assert "image_not_blank" in notice["text"]


def test_banned_words_block_only_their_prompt(local_resources, instance, workbook_dir, tmp_path) -> None:
    banned = tmp_path / "banned.txt"
    banned.write_text("# words we never post\nheron\nblood moon\n", encoding="utf-8")
    ids = queue(workbook_dir, ["a fox in snow", "a grey HERON by a lake", "a  blood   moon rising"])
    resources = dict(local_resources)
    resources["publisher"] = LocalOutbox(folder=str(tmp_path / "outbox"), banned_words_file=str(banned))
    result = run_partitions(resources, instance, ids)
    assert result.success
    assert [p["caption"].split("\n")[0] for p in resources["publisher"].posts()] == ["a fox in snow"]
    rows = {r["prompt"]: r for r in done_rows(workbook_dir)}
    assert rows["a fox in snow"]["status"] == "SUCCESS"
    for prompt, word in (("a grey HERON by a lake", "heron"), ("a  blood   moon rising", "blood moon")):
        assert rows[prompt]["status"] == "FAILED"
        assert "prompt_free_of_banned_words" in rows[prompt]["information"]
        assert f'"{word}"' in rows[prompt]["information"]
    check = evaluations(result)["prompt_free_of_banned_words"]
    assert not check.passed and check.metadata["prompts_blocked"].value == 2
    assert check.metadata["prompts_checked"].value == 3
    assert read_csv(workbook_dir / "process.csv") == [["prompt", "id"]]  # all three left the queue


def test_every_check_passes_and_is_reported_for_a_normal_run(local_resources, instance, workbook_dir) -> None:
    ids = queue(workbook_dir, ["a lighthouse", "a heron"])
    result = run_partitions(local_resources, instance, ids)
    assert result.success
    checks = evaluations(result)
    assert set(checks) == set(CHECK_NAMES) and all(c.passed for c in checks.values())
    assert all(c.metadata["prompts_checked"].value == 2 for c in checks.values())
    assert len(local_resources["publisher"].posts()) == 2


def test_banned_words_come_from_the_environment(tmp_path, monkeypatch) -> None:
    from image_pipeline.settings import resources_from

    monkeypatch.setenv("IMAGE_PIPELINE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGE_PIPELINE_BANNED_WORDS", "gore, blood moon")
    publisher = resources_from()["publisher"]
    assert publisher.content_policy().first_match("A Blood Moon over GORE hills") is not None
    assert publisher.content_policy().check_prompt("a calm lake").passed
