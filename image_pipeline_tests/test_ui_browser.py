"""The Dagster UI in real Chromium, used as a person would, against ``dagster dev`` and the sandbox.

One test, in the order a person meets the product: the asset graph, a prompt materialized by hand from
the launch dialog, the image's preview on the asset page, the schedule and the sensor switched on, and a
row typed into the sheet that the sensor picks up and posts by itself. Each step leaves a screenshot in
``test-artifacts/ui/``. The pipeline talks to the loopback emulators of Google, Hugging Face and
Telegram through its real clients, so what the UI shows is what production would show.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import Page, expect

from image_pipeline.definitions import build_definitions
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import DONE_WORKSHEET, PROCESS_WORKSHEET, Sandbox

from .dagster_dev import ARTIFACTS, DagsterDev, base_env, dagster_dev, dagster_home
from .ui_browser_support import (
    VIEWPORT,
    Screens,
    chromium,
    instigator_status,
    runs,
    sensor_ticks,
    tail,
    wait_for_run,
    wait_until,
)

ASSETS = ("prompt_record", "generated_image", "telegram_post", "done_entry")
SENSOR = "prompt_sheet_sensor"
SCHEDULE = "daily_prompt_schedule"
NEW_PROMPT = "A paper crane folded from a subway map, macro photograph, shallow depth of field"
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_S = 90


def _sheet(sandbox: Sandbox, worksheet: str) -> list[dict[str, str]]:
    rows = sandbox.google.values(sandbox.spreadsheet_id, worksheet)
    header = rows[0]
    return [dict(zip(header, row + [""] * (len(header) - len(row)), strict=True)) for row in rows[1:]]


def _register_pending_prompts(home: Path) -> list[str]:
    """Give the queued rows ids and register their partitions, as the sensor does in register-only mode.

    A person who runs prompts by hand keeps the sensor in its default register-only mode (no
    IMAGE_PIPELINE_INSTANT): its ticks write ids into the sheet and register a partition per row, and the
    person picks one in the UI. This ``dagster dev`` runs in instant mode for the last step, where a new
    row must start its own run, so that register-only tick is evaluated here once, against the same
    DAGSTER_HOME, before ``dagster dev`` starts. The instant sensor later finds these partitions known and
    leaves them to the person. (The schedule registers partitions too, but only at its cron time.)
    """
    defs = build_definitions({**os.environ, "IMAGE_PIPELINE_INSTANT": ""})
    sensor = defs.resolve_sensor_def(SENSOR)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
        assert isinstance(result, dg.SensorResult) and not result.run_requests, result
        keys: list[str] = []
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            keys += list(request.partition_keys)
        assert instance.get_dynamic_partitions("prompts") == keys
    return keys


def _open(page: Page, server: DagsterDev, path: str) -> None:
    page.goto(server.url + path)
    page.wait_for_load_state("networkidle")


def _toggle_on(page: Page, name: str) -> None:
    """Automation > ``name`` > the "Running" switch, as a person turns a schedule or sensor on."""
    page.get_by_role("navigation").get_by_role("link", name=re.compile(r"\bAutomation$")).click()
    page.get_by_role("link", name=re.compile(rf"\b{name}\b")).click()
    page.wait_for_url(re.compile(rf"/{name}$"))
    running = page.get_by_role("row", name="Running")
    switch = running.get_by_role("checkbox")
    expect(switch).not_to_be_checked(timeout=UI_TIMEOUT_MS)
    # The checkbox itself is drawn hidden; the visible switch is its label.
    running.locator("label").filter(has=page.get_by_role("checkbox")).click()
    expect(switch).to_be_checked(timeout=UI_TIMEOUT_MS)


@pytest.mark.timeout(300)
def test_a_person_runs_the_pipeline_from_the_dagster_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    screens = Screens(ARTIFACTS / "ui")
    log = ARTIFACTS / "ui" / "dagster-dev.log"
    log.unlink(missing_ok=True)
    with Sandbox(tmp_path / "sandbox") as sandbox:
        env = {
            **sandbox.env(),
            "IMAGE_PIPELINE_DATA": str(tmp_path / "data"),
            "IMAGE_PIPELINE_INSTANT": "1",
            "IMAGE_PIPELINE_SENSOR_INTERVAL_S": "5",
            # Switching the schedule on must not launch anything while the test watches: its tick is
            # put twelve hours away from now.
            "IMAGE_PIPELINE_SCHEDULE_CRON": f"0 {(dt.datetime.now(dt.UTC).hour + 12) % 24} * * *",
        }
        home = dagster_home(tmp_path / "dagster_home")
        for name, value in {**env, "DAGSTER_HOME": str(home)}.items():
            monkeypatch.setenv(name, value)
        prompt_ids = _register_pending_prompts(home)
        queued = _sheet(sandbox, PROCESS_WORKSHEET)
        assert [row["id"] for row in queued] == prompt_ids and len(prompt_ids) == 5
        chosen, chosen_prompt = prompt_ids[0], queued[0]["prompt"]

        with dagster_dev(home, base_env(env), log) as server, chromium() as browser:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(UI_TIMEOUT_MS)
            console: list[str] = []
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            try:
                _run_as_a_person(page, server, sandbox, screens, chosen, chosen_prompt, prompt_ids)
            except Exception:
                screens.shot(page, "failure")
                print(tail(server))
                raise
            finally:
                (ARTIFACTS / "ui" / "page-errors.log").write_text("\n".join(console) + "\n")
    print(f"UI test took {time.monotonic() - started:.1f} s; screenshots in {screens.folder}")


def _run_as_a_person(
    page: Page,
    server: DagsterDev,
    sandbox: Sandbox,
    screens: Screens,
    chosen: str,
    chosen_prompt: str,
    prompt_ids: list[str],
) -> None:
    # -- 2. the asset graph of the group: four nodes
    _open(page, server, "/asset-groups~group%3A%22image_pipeline%22")
    graph = page.locator("svg foreignObject")
    for asset in ASSETS:
        expect(graph.get_by_text(asset, exact=True).first).to_be_visible(timeout=60_000)
    screens.shot(page, "asset-graph")

    # -- 3. materialize one pending prompt from the launch dialog
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize 4 assets")
    expect(dialog).to_be_visible()
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("textbox", name="Filter partitions").fill(chosen)
    page.get_by_role("menuitem", name=re.compile(chosen)).click()
    page.keyboard.press("Escape")  # closes the partition list, not the dialog
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    screens.shot(page, "launch-dialog")
    dialog.get_by_role("button", name="Launch 1 run").click()
    toast = page.get_by_role("region", name=re.compile("Notifications")).get_by_role("listitem")
    expect(toast.filter(has_text="Launched run")).to_be_visible()
    toast.get_by_role("link", name="View").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = page.url.rsplit("/runs/", 1)[1].split("?")[0]
    finished = wait_for_run(server, run_id, RUN_TIMEOUT_S)
    assert {"key": "dagster/partition", "value": chosen} in finished["tags"], finished
    expect(page.get_by_role("img", name="run_success")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text(f"partition: {chosen}")).to_be_visible()
    screens.shot(page, "run-succeeded")

    posts = sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)
    assert len(posts) == 1, posts
    assert chosen_prompt in (posts[0]["caption"] or ""), posts[0]
    done = _sheet(sandbox, DONE_WORKSHEET)
    assert [(row["id"], row["status"]) for row in done] == [(chosen, "SUCCESS")], done
    assert done[0]["message_id"] == str(posts[0]["message_id"]), done
    assert chosen not in [row["id"] for row in _sheet(sandbox, PROCESS_WORKSHEET)]

    # -- 4. the image asset's latest materialization, with its preview
    page.get_by_role("navigation").get_by_role("link", name=re.compile(r"\bCatalog$")).click()
    page.get_by_role("link", name=re.compile(r"^generated_image\b")).first.click()
    page.wait_for_url(re.compile(r"/assets/generated_image"))
    expect(page.get_by_text("Latest materialization")).to_be_visible()
    expect(page.get_by_role("link", name=chosen, exact=True)).to_be_visible()
    preview_row = page.get_by_role("row", name=re.compile(r"^preview\b"))
    # The thumbnail's markdown is over the UI's 1000-character inline limit: it opens in a dialog.
    preview_row.get_by_text("[Show Markdown]").click()
    preview = page.get_by_role("dialog").filter(has_text="preview")
    image = preview.get_by_role("img", name=chosen)
    expect(image).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=UI_TIMEOUT_MS
    )
    size = image.evaluate("img => [img.naturalWidth, img.naturalHeight, img.src.slice(0, 23)]")
    assert size[0] > 0 and size[1] > 0 and size[2] == "data:image/jpeg;base64,", size
    screens.shot(page, "image-preview")
    preview.get_by_role("button", name="Close").click()
    expect(preview).to_be_hidden()

    # -- 5. the schedule and the sensor switched on
    _toggle_on(page, SCHEDULE)
    screens.shot(page, "schedule-running")
    _toggle_on(page, SENSOR)
    screens.shot(page, "sensor-running")
    assert instigator_status(server, "schedule", SCHEDULE) == "RUNNING"
    assert instigator_status(server, "sensor", SENSOR) == "RUNNING"

    # -- 6. a person adds a row to the sheet; the sensor runs and posts it
    sandbox.google.append_rows(sandbox.spreadsheet_id, PROCESS_WORKSHEET, [[NEW_PROMPT]])
    by_sensor = {"dagster/sensor_name": SENSOR}
    sensor_run = wait_until(
        "a run started by the sensor for the new row",
        lambda: runs(server, by_sensor),
        timeout_s=RUN_TIMEOUT_S,
        explain=lambda: f"latest ticks: {sensor_ticks(server, SENSOR)}\n{tail(server)}",
    )
    assert len(sensor_run) == 1, sensor_run  # the registered prompts stay with the person
    finished = wait_for_run(server, sensor_run[0]["runId"], RUN_TIMEOUT_S)
    new_ids = [row["id"] for row in _sheet(sandbox, DONE_WORKSHEET) if row["prompt"] == NEW_PROMPT]
    assert len(new_ids) == 1 and new_ids[0] not in prompt_ids, new_ids
    assert {"key": "dagster/partition", "value": new_ids[0]} in finished["tags"], finished

    page.get_by_role("navigation").get_by_role("link", name=re.compile(r"\bRuns$")).click()
    page.wait_for_url(re.compile(r"/runs/?(\?.*)?$"))
    short = sensor_run[0]["runId"][:8]
    # The runs list is a virtualized grid of divs (no ARIA rows): a run's row is the closest element
    # around its id link that also holds the row's "View" link.
    run_link = page.get_by_role("link", name=re.compile(rf"\b{short}$"))
    row = run_link.locator("xpath=ancestor::*[.//a[normalize-space(.)='View']][1]")
    expect(row).to_contain_text("Success", timeout=UI_TIMEOUT_MS)
    expect(row).to_contain_text(SENSOR)
    expect(row).to_contain_text(f"partition: {new_ids[0]}")
    screens.shot(page, "sensor-run-in-runs-list")

    posts = sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)
    assert len(posts) == 2 and NEW_PROMPT in (posts[1]["caption"] or ""), posts
    done = _sheet(sandbox, DONE_WORKSHEET)
    assert [(row["id"], row["status"]) for row in done] == [(chosen, "SUCCESS"), (new_ids[0], "SUCCESS")]
    assert len(runs(server)) == 2  # the manual run and the sensor's: the schedule launched nothing
