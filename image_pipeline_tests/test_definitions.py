"""Definitions load, and the backends follow the environment without exposing secrets."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from image_pipeline.definitions import build_definitions
from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.services.images.preview import OfflinePreviewGenerator
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.publisher.telegram import TelegramPublisher
from image_pipeline.services.sheets import GoogleSheet, LocalWorkbook

ROOT = Path(__file__).resolve().parents[1]


def test_module_definitions_validate() -> None:
    from image_pipeline.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"prompt_record", "generated_image", "telegram_post", "done_entry"}
    assert graph.get(dg.AssetKey("done_entry")).parent_keys >= {dg.AssetKey("telegram_post")}
    assert graph.get(dg.AssetKey("telegram_post")).parent_keys >= {dg.AssetKey("generated_image")}
    assert graph.get(dg.AssetKey("generated_image")).parent_keys == {dg.AssetKey("prompt_record")}


def test_no_credentials_means_the_three_local_backends(tmp_path: Path) -> None:
    defs = build_definitions({"IMAGE_PIPELINE_DATA": str(tmp_path)})
    r = defs.resources
    assert isinstance(r["prompt_sheet"], LocalWorkbook)
    assert isinstance(r["image_generator"], OfflinePreviewGenerator)
    assert isinstance(r["publisher"], LocalOutbox)
    assert r["prompt_sheet"].folder == str(tmp_path / "workbook")


def test_credentials_select_the_real_backends_as_env_vars(tmp_path: Path, monkeypatch) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account"}))
    env = {
        "TELEGRAM_TOKEN": "123456:SECRET_TELEGRAM_TOKEN_VALUE_xxxxxxxx",
        "TELEGRAM_CHAT_ID": "-1001",
        "HF_TOKEN": "hf_SECRETSECRETSECRET",
        "HF_MODEL": "black-forest-labs/FLUX.1-schnell",
        "GOOGLE_SERVICE_ACCOUNT_FILE": str(key),
        "GOOGLE_SHEET_KEY": "abc",
        "IMAGE_PIPELINE_DATA": str(tmp_path),
    }
    defs = build_definitions(env)
    r = defs.resources
    assert isinstance(r["prompt_sheet"], GoogleSheet) and r["prompt_sheet"].spreadsheet_key == "abc"
    assert isinstance(r["image_generator"], HuggingFaceGenerator)
    assert r["image_generator"].model == "black-forest-labs/FLUX.1-schnell"
    assert isinstance(r["publisher"], TelegramPublisher)
    # secrets are bound as EnvVar: the definitions hold the variable's name, never the value
    assert r["publisher"].token == "TELEGRAM_TOKEN" and isinstance(r["publisher"].token, dg.EnvVar)
    assert r["image_generator"].token == "HF_TOKEN"
    text = repr(r)
    assert "SECRET" not in text
    dg.Definitions.validate_loadable(defs)


def test_mixing_backends_is_allowed(tmp_path: Path) -> None:
    defs = build_definitions({"HF_TOKEN": "hf_x", "IMAGE_PIPELINE_DATA": str(tmp_path)})
    r = defs.resources
    assert isinstance(r["prompt_sheet"], LocalWorkbook)
    assert isinstance(r["image_generator"], HuggingFaceGenerator)
    assert isinstance(r["publisher"], LocalOutbox)


def test_pyproject_and_workspace_name_the_same_location() -> None:
    import tomllib

    import yaml

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert tool["module_name"] == workspace["module_name"] == "image_pipeline.definitions"
    assert tool["code_location_name"] == workspace["location_name"] == "image_pipeline"


def test_instance_yaml_loads(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert not instance.telemetry_enabled
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
