"""The sandbox: emulators plus the env that selects them, the real pipeline against it, the command."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from dotenv import dotenv_values

from image_pipeline.testing.emulators.huggingface import DEFAULT_TOKEN as HF_TOKEN
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
from image_pipeline.testing.emulators.telegram import DEFAULT_TOKEN as TG_TOKEN
from image_pipeline.testing.sandbox import Sandbox, _banner, dotenv_quote, read_sample_queue

from .conftest import QUIET

ENV_KEYS = {
    "GOOGLE_SERVICE_ACCOUNT_FILE",
    "GOOGLE_SHEET_KEY",
    "GOOGLE_SHEETS_API_BASE_URL",
    "GOOGLE_DRIVE_API_BASE_URL",
    "HF_TOKEN",
    "HF_INFERENCE_BASE_URL",
    "HF_MODEL",
    "TELEGRAM_TOKEN",
    "TELEGRAM_CHAT_ID",
    "TELEGRAM_ALERT_CHAT_ID",
    "TELEGRAM_API_BASE_URL",
}


def test_sandbox_serves_the_sample_queue_and_a_matching_env(tmp_path: Path) -> None:
    with Sandbox(tmp_path) as sandbox:
        env = sandbox.env()
        assert set(env) == ENV_KEYS
        assert env["HF_TOKEN"] == HF_TOKEN and env["TELEGRAM_TOKEN"] == TG_TOKEN
        assert env["GOOGLE_SHEET_KEY"] == sandbox.spreadsheet_id
        assert (
            env["GOOGLE_SHEETS_API_BASE_URL"] == env["GOOGLE_DRIVE_API_BASE_URL"] == sandbox.google.base_url
        )

        key_file = Path(env["GOOGLE_SERVICE_ACCOUNT_FILE"])
        assert key_file == (tmp_path / "service_account.json").resolve() and key_file.is_file()
        assert json.loads(key_file.read_text())["token_uri"].startswith("http://127.0.0.1")

        sample = read_sample_queue()
        process = sandbox.google.values(sandbox.spreadsheet_id, "Process")
        assert process[0] == sample[0] == ["prompt", "negative_prompt", "width", "height", "seed", "caption"]
        assert len(process) == 6 and [r[0] for r in process[1:]] == [r[0] for r in sample[1:]]

        env_file = sandbox.write_env_file(tmp_path / "nested" / "sandbox.env")
        assert dotenv_values(env_file) == env


def test_an_a1111_sandbox_makes_the_product_generate_through_its_emulator(tmp_path: Path) -> None:
    from image_pipeline.domain.rows import GenerationRequest
    from image_pipeline.settings import image_generator_from

    with Sandbox(tmp_path, a1111=True) as sandbox:
        assert sandbox.a1111 is not None
        env = sandbox.env()
        assert set(env) == ENV_KEYS | {"IMAGE_BACKENDS"}
        assert env["IMAGE_BACKENDS"] == f"a1111:{sandbox.a1111.base_url}"
        assert sandbox.a1111.base_url in _banner(sandbox, tmp_path / "sandbox.env")
        generator = image_generator_from(env)
        request = GenerationRequest(
            prompt="a fox", negative_prompt=None, model="", width=64, height=64, seed=7
        )
        image = generator.generate(request)
        assert image.backend == "a1111" and image.seed == 7 and (image.width, image.height) == (64, 64)
        assert sandbox.a1111.jobs_run == 1 and sum(sandbox.hf.counters.values()) == 0
        url = sandbox.a1111.base_url
    with pytest.raises(requests.ConnectionError):  # stopped with the sandbox
        requests.get(f"{url}/sdapi/v1/sd-models", timeout=2)
    with Sandbox(tmp_path / "plain") as plain:
        assert plain.a1111 is None and "IMAGE_BACKENDS" not in plain.env()


@pytest.mark.parametrize(
    "value", ["plain", "/tmp/with space/key.json", "it's", 'quo"te\\back', "a;b $ `x` *"]
)
def test_env_file_values_read_back_unchanged(tmp_path: Path, value: str) -> None:
    path = tmp_path / "x.env"
    path.write_text(f"X={dotenv_quote(value)}\n", encoding="utf-8")
    assert dotenv_values(path) == {"X": value}


@pytest.mark.parametrize("backend", ["huggingface", "comfyui"])
def test_the_real_pipeline_runs_against_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    with Sandbox(tmp_path / "sandbox", comfyui=backend == "comfyui") as sandbox:
        for name, value in sandbox.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("IMAGE_PIPELINE_DATA", str(tmp_path / "data"))
        assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and os.environ["HF_HOME"]

        from image_pipeline.definitions import build_definitions

        defs = build_definitions(dict(os.environ))
        snapshot = defs.resources["prompt_sheet"].ensure_ids()
        ids = [row.prompt_id for row in snapshot.rows]
        assert len(ids) == 5

        with dg.instance_for_test() as inst:
            inst.add_dynamic_partitions("prompts", ids)
            result = defs.resolve_job_def("process_prompts_job").execute_in_process(
                partition_key=ids[0], instance=inst, run_config=QUIET
            )
        assert result.success

        sid = sandbox.spreadsheet_id
        assert len(sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)) == 1
        done = sandbox.google.values(sid, "Done")
        assert len(done) == 2 and ids[0] in done[1]
        process = sandbox.google.values(sid, "Process")
        assert len(process) == 5 and all(ids[0] not in row for row in process)
        assert "Process: 4 left, Done: 1 rows, Telegram: 1 posted" in sandbox.status_line()
        header = done[0]
        assert done[1][header.index("backend")] == backend
        if backend == "comfyui":  # what `make sandbox` + `make dev-sandbox` show: ComfyUI made the image
            assert sandbox.comfyui is not None and sandbox.comfyui.jobs_executed == 1
            assert sandbox.hf.count("text_to_image") == 0


def _pump(stream, lines: queue.Queue[str]) -> None:
    # A reader thread keeps the pipe drained, so the child never blocks on a full pipe while we wait.
    for line in stream:
        lines.put(line)


def test_sandbox_command_serves_until_sigint(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
    folder = tmp_path / "sb"
    env_file = folder / "sandbox.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "image_pipeline.testing.sandbox", "--dir", str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        printed: list[str] = []
        deadline = time.monotonic() + 30
        # The usage hint is the banner's last part, so waiting for it means the whole banner is in.
        while not (env_file.exists() and any("make dev-sandbox" in x for x in printed)):
            assert proc.poll() is None, f"the sandbox exited early: {printed}"
            assert time.monotonic() < deadline, f"no banner within 30 s: {printed}"
            with contextlib.suppress(queue.Empty):
                printed.append(lines.get(timeout=0.5))

        values = dotenv_values(env_file)
        assert set(values) == ENV_KEYS | {"IMAGE_BACKENDS"}  # the command serves ComfyUI by default
        comfy = str(values["IMAGE_BACKENDS"]).removeprefix("comfyui:")
        assert requests.get(f"{comfy}/system_stats", timeout=5).json()["system"]
        assert f"export TELEGRAM_API_BASE_URL={values['TELEGRAM_API_BASE_URL']}\n" in printed
        assert any(values["GOOGLE_SHEETS_API_BASE_URL"] in x for x in printed)

        base = values["TELEGRAM_API_BASE_URL"]
        assert requests.get(f"{base}/bot{values['TELEGRAM_TOKEN']}/getMe", timeout=5).json()["ok"] is True
        hf = requests.post(
            values["HF_INFERENCE_BASE_URL"],
            json={"inputs": "a lighthouse"},
            headers={"Authorization": f"Bearer {values['HF_TOKEN']}"},
            timeout=5,
        )
        assert hf.status_code == 200 and hf.headers["Content-Type"].startswith("image/")

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
