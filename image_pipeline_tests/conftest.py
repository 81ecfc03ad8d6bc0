"""Shared fixtures: isolated environment, temp workbook/outbox, temp Dagster instance, emulators."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from image_pipeline.defs.assets import ASSETS
from image_pipeline.defs.io_manager import PartitionFileIOManager
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.services.images.preview import OfflinePreviewGenerator
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.sheets import LocalWorkbook

PIPELINE_ENV = (
    "TELEGRAM_TOKEN",
    "TELEGRAM_CHAT_ID",
    "TELEGRAM_ALERT_CHAT_ID",
    "HF_TOKEN",
    "HF_MODEL",
    "HF_PROVIDER",
    "HF_INFERENCE_BASE_URL",
    "GOOGLE_SERVICE_ACCOUNT_FILE",
    "GOOGLE_SERVICE_ACCOUNT_JSON",
    "GOOGLE_SHEET_KEY",
    "GOOGLE_SHEET_TITLE",
    "GOOGLE_SHEETS_API_BASE_URL",
    "GOOGLE_DRIVE_API_BASE_URL",
    "TELEGRAM_API_BASE_URL",
    "IMAGE_PIPELINE_WORKBOOK",
    "IMAGE_PIPELINE_OUTBOX",
    "IMAGE_PIPELINE_DATA",
    "IMAGE_PIPELINE_INSTANT",
    "IMAGE_PIPELINE_DAILY_IMAGE_CAP",
    "IMAGE_PIPELINE_DAILY_POST_CAP",
    "IMAGE_PIPELINE_BANNED_WORDS",
    "IMAGE_PIPELINE_BANNED_WORDS_FILE",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No developer credentials, no telemetry, a throwaway HF_HOME; tests never reach the internet."""
    for name in PIPELINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # Real pacing (20 posts a minute) is tested on its own; elsewhere it would only make tests wait.
    monkeypatch.setenv("TELEGRAM_POSTS_PER_MINUTE", "0")
    # One image at a time unless a test asks for more, so injected fault sequences land where they aim.
    monkeypatch.setenv("HF_CONCURRENCY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))


def write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def read_csv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return [list(r) for r in csv.reader(fh)]


@pytest.fixture
def workbook_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "workbook"
    folder.mkdir()
    return folder


@pytest.fixture
def local_resources(tmp_path: Path, workbook_dir: Path) -> dict[str, object]:
    """The embedded default, with retries fast enough for tests."""
    return {
        "prompt_sheet": LocalWorkbook(folder=str(workbook_dir), retry_base_delay_s=0.01),
        "image_generator": OfflinePreviewGenerator(width=256, height=256, retry_base_delay_s=0.01),
        "publisher": LocalOutbox(folder=str(tmp_path / "outbox"), retry_base_delay_s=0.01),
        "pipeline_io_manager": PartitionFileIOManager(base_dir=str(tmp_path / "assets")),
        "ledger": PostLedger(path=str(tmp_path / "ledger.sqlite")),
    }


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    # No captured stdout/stderr: Dagster mirrors the process's file descriptors through a `tail -F` per
    # step, and two runs at once in one process (test_two_runs_never_take_the_same_prompt) that end out of
    # order leave the first one's tail without its end of file, so that step waits 30 s and fails. The
    # tests read the event log, never the captured output; deployments run one run per process.
    with dg.instance_for_test(overrides={"compute_logs": NO_COMPUTE_LOGS}) as inst:
        yield inst


NO_COMPUTE_LOGS = {
    "module": "dagster._core.storage.noop_compute_log_manager",
    "class": "NoOpComputeLogManager",
}


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_partitions(
    resources: dict[str, object], instance: dg.DagsterInstance, keys: list[str]
) -> dg.ExecuteInProcessResult:
    """Materialize all four assets for ``keys`` in one run (a partition range when several)."""
    known = set(instance.get_dynamic_partitions("prompts"))
    missing = [k for k in keys if k not in known]
    if missing:
        instance.add_dynamic_partitions("prompts", missing)
    if len(keys) == 1:
        return dg.materialize(
            ASSETS,
            partition_key=keys[0],
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config=QUIET,
        )
    ordered = [k for k in instance.get_dynamic_partitions("prompts") if k in set(keys)]
    assert len(ordered) == len(keys), "a range run needs contiguous partitions"
    return dg.materialize(
        ASSETS,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        run_config=QUIET,
        tags={
            "dagster/asset_partition_range_start": ordered[0],
            "dagster/asset_partition_range_end": ordered[-1],
        },
    )


@pytest.fixture
def clean_environ() -> Iterator[dict[str, str]]:
    saved = dict(os.environ)
    yield os.environ  # type: ignore[misc]
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def telegram_emulator() -> Iterator[object]:
    from image_pipeline.testing.emulators.telegram import TelegramEmulator

    with TelegramEmulator() as emulator:
        yield emulator


@pytest.fixture
def hf_emulator() -> Iterator[object]:
    from image_pipeline.testing.emulators.huggingface import HuggingFaceEmulator

    with HuggingFaceEmulator() as emulator:
        yield emulator


@pytest.fixture
def google_emulator() -> Iterator[object]:
    from image_pipeline.testing.emulators.google import GoogleEmulator

    with GoogleEmulator() as emulator:
        yield emulator


def materializations(result, asset: str) -> list:
    """The materializations of one asset in a run result, whichever step made them."""
    import dagster as dg

    return [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(asset)
    ]


def emulated_env(
    google_emulator,
    hf_emulator,
    telegram_emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    process_rows: list[list[str]],
    **extra: str,
) -> dict[str, str]:
    """A spreadsheet "Image Prompt" with these "Process" rows and the environment of the real backends
    pointed at the three emulators (set in the process too: secrets are read through EnvVar)."""
    from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN
    from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
    from image_pipeline.testing.emulators.telegram import DEFAULT_TOKEN as TG_TOKEN

    key_file = google_emulator.write_service_account_file(tmp_path / "chatbot_key.json")
    sid = google_emulator.create_spreadsheet("Image Prompt", {"Process": process_rows})
    values = {
        "GOOGLE_SERVICE_ACCOUNT_FILE": str(key_file),
        "GOOGLE_SHEETS_API_BASE_URL": google_emulator.base_url,
        "GOOGLE_DRIVE_API_BASE_URL": google_emulator.base_url,
        "GOOGLE_SHEET_KEY": sid,
        "HF_TOKEN": HF_TOKEN,
        "HF_INFERENCE_BASE_URL": f"{hf_emulator.base_url}/models/stabilityai/stable-diffusion-xl-base-1.0",
        "TELEGRAM_TOKEN": TG_TOKEN,
        "TELEGRAM_CHAT_ID": str(DEFAULT_CHANNEL_ID),
        "TELEGRAM_ALERT_CHAT_ID": str(ALERTS_CHANNEL_ID),
        "TELEGRAM_API_BASE_URL": telegram_emulator.base_url,
        "IMAGE_PIPELINE_DATA": str(tmp_path / "data"),
        "IMAGE_PIPELINE_RETRY_BASE_DELAY_S": "0.01",
        **extra,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def sensor_tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    """One tick of the sheet sensor, then what the daemon does with its partition requests."""
    sensor = defs.resolve_sensor_def("prompt_sheet_sensor")
    resources = {k: defs.resources[k] for k in ("prompt_sheet", "image_generator", "publisher", "ledger")}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def queue_prompts(workbook_dir: Path, prompts: list[str]) -> list[str]:
    """A local "Process" queue of these prompts (a fresh header), and the ids the pipeline gives them."""
    write_csv(workbook_dir / "process.csv", [["prompt"], *[[p] for p in prompts]])
    return [r.prompt_id for r in LocalWorkbook(folder=str(workbook_dir)).ensure_ids().rows]


def pass_gate(defs: dg.Definitions | dict[str, object]) -> None:
    """The run gate's preflight, against the services as they are now, recorded in the ledger as the
    schedule or sensor records it: what a run launched minutes later finds. Tests of a service that
    starts refusing *after* the gate passed (a token revoked mid-day, a fault in the middle of a batch)
    call this before they inject the fault."""
    from image_pipeline.lifecycle.gate import gate

    resources = defs.resources if isinstance(defs, dg.Definitions) else defs
    names = ("prompt_sheet", "image_generator", "publisher", "ledger")
    with dg.build_resources({k: v for k, v in resources.items() if k in names}) as built:
        trio = [built.prompt_sheet, built.image_generator, built.publisher]
        refused = gate(trio, store=built.ledger.open())
    assert refused is None, refused


def skip_reason_of(tick: object) -> dg.SkipReason | None:
    """A sensor tick that starts nothing: a SkipReason, or a SensorResult that only saves its cursor (the
    sheet-actions part of the cursor) with the reason; None when the tick requests runs."""
    if isinstance(tick, dg.SkipReason):
        return tick
    if isinstance(tick, dg.SensorResult) and not tick.run_requests and tick.skip_reason is not None:
        return tick.skip_reason
    return None
