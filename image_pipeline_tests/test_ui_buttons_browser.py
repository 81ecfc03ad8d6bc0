"""A press of a preview card's Approve button seen in the Dagster UI, in real Chromium, against ``dagster dev``.

Issue 17's last item: the sensor's ticks handling a press are visible where a person looks for them. A
PREVIEW row's card (with its Approve / Regenerate / Hold / Skip buttons) is sent to the alert chat before
``dagster dev`` starts, through the real sheet sensor and job, as ``test_buttons.py`` does. In the UI a
person switches ``telegram_updates_sensor`` on; a stranger's press is read by a tick that requests
nothing, the admin's Approve by a tick that requests one run, and that run posts the previewed image to
the channel once. Screenshots go to ``test-artifacts/ui-buttons/``. The presses come from the Telegram
emulator's ``press`` (a real ``callback_query`` update that the sensor reads through getUpdates).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from playwright.sync_api import Locator, Page, expect

from image_pipeline.definitions import build_definitions
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import DONE_WORKSHEET, PROCESS_WORKSHEET, Sandbox

from .conftest import QUIET, sensor_tick
from .dagster_dev import ARTIFACTS, DagsterDev, base_env, dagster_dev, dagster_home
from .ui_browser_support import (
    VIEWPORT,
    Screens,
    chromium,
    instigator_status,
    runs,
    sensor_ticks,
    tail,
    toggle_on,
    wait_for_run,
    wait_until,
)

SENSOR = "telegram_updates_sensor"
ADMIN = 42
STRANGER = 999
PROMPT = "A lighthouse knitted from red and white wool, studio photograph"
HEADER = ["prompt", "status", "seed", "count"]
UI_TIMEOUT_MS = 30_000
# the sensor ticks every 15 s: the stranger's tick, the admin's one interval later, then the run
TICK_TIMEOUT_S = 45
RUN_TIMEOUT_S = 60
FOLDER = ARTIFACTS / "ui-buttons"


def _sheet(sandbox: Sandbox, worksheet: str) -> list[dict[str, str]]:
    rows = sandbox.google.values(sandbox.spreadsheet_id, worksheet)
    header = rows[0]
    return [dict(zip(header, row + [""] * (len(header) - len(row)), strict=True)) for row in rows[1:]]


def _send_preview(home: Path, sandbox: Sandbox) -> dict[str, Any]:
    """The sheet sensor's tick and its run against the UI's DAGSTER_HOME: the PREVIEW row's card.

    Done before ``dagster dev`` starts so the UI part waits only on what it shows: the partition is
    registered in the same instance the daemon later launches the Approve run in.
    """
    defs = build_definitions(dict(os.environ))
    job = defs.resolve_job_def("process_prompts_job")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = sensor_tick(defs, instance, None)
        assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1, result
        request = result.run_requests[0]
        ran = job.execute_in_process(
            instance=instance, run_config=QUIET, partition_key=request.partition_key, tags=dict(request.tags)
        )
        assert ran.success
    [card] = sandbox.telegram.messages_for(ALERTS_CHANNEL_ID)
    assert [row["status"] for row in _sheet(sandbox, PROCESS_WORKSHEET)] == ["AWAITING APPROVAL"]
    return card


def _button(card: dict[str, Any], label: str) -> str:
    return next(b["callback_data"] for b in card["reply_markup"]["inline_keyboard"][0] if b["text"] == label)


def _sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


@pytest.mark.timeout(240)
def test_the_updates_sensor_ticks_handle_a_press_in_the_dagster_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    screens = Screens(FOLDER)
    log = FOLDER / "dagster-dev.log"
    log.unlink(missing_ok=True)
    with Sandbox(tmp_path / "sandbox", seed_rows=[HEADER, [PROMPT, "PREVIEW", "", ""]]) as sandbox:
        env = {
            **sandbox.env(),
            "IMAGE_PIPELINE_DATA": str(tmp_path / "data"),
            "IMAGE_PIPELINE_INSTANT": "1",
            "TELEGRAM_ADMIN_IDS": str(ADMIN),
        }
        home = dagster_home(tmp_path / "dagster_home")
        for name, value in {**env, "DAGSTER_HOME": str(home)}.items():
            monkeypatch.setenv(name, value)
        card = _send_preview(home, sandbox)

        with dagster_dev(home, base_env(env), log) as server, chromium() as browser:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(UI_TIMEOUT_MS)
            try:
                _press_and_watch(page, server, sandbox, screens, card)
            except Exception:
                for n, shown in enumerate(page.context.pages):  # the run opens in a tab of its own
                    screens.shot(shown, f"failure-{n}")
                print(page.inner_text("body")[-3000:])
                print(tail(server))
                raise
    print(f"UI buttons test took {time.monotonic() - started:.1f} s; screenshots in {screens.folder}")


def _tick_row(page: Page, update_id: int, result: str) -> Locator:
    """The sensor page's tick history row whose cursor is ``update_id``: the tick that read that press.

    The cursor is the last update id a tick handled, so it names the press; the page is reloaded rather
    than left to its own refresh, which waits for the next interval.
    """
    page.reload()
    page.wait_for_load_state("networkidle")
    # newest first: the last match is the tick that moved the cursor there
    row = page.get_by_role("row").filter(has_text=str(update_id)).filter(has_text=result).last
    expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    return row


def _press_and_watch(
    page: Page, server: DagsterDev, sandbox: Sandbox, screens: Screens, card: dict[str, Any]
) -> None:
    approve = _button(card, "Approve")
    # the stranger presses before the sensor runs: its first tick reads that press alone
    stranger = sandbox.telegram.press(STRANGER, card, approve, username="stranger")

    page.goto(server.url + "/automation")
    page.wait_for_load_state("networkidle")
    toggle_on(page, SENSOR, UI_TIMEOUT_MS)
    # the switch shows "on" as soon as it is clicked, before the UI's mutation has reached the server
    wait_until(
        "the sensor stored as running",
        lambda: instigator_status(server, "sensor", SENSOR) == "RUNNING",
        timeout_s=UI_TIMEOUT_MS / 1000,
        every_s=0.2,
    )
    screens.shot(page, "updates-sensor-running")

    def explain() -> str:
        return f"ticks: {sensor_ticks(server, SENSOR)}\n{tail(server)}"

    finished = wait_until(
        "the tick that read the stranger's press",
        lambda: [t for t in sensor_ticks(server, SENSOR) if t["status"] != "STARTED"],
        timeout_s=TICK_TIMEOUT_S,
        explain=explain,
    )
    first = finished[-1]  # newest first
    assert (first["status"], first["runIds"]) == ("SKIPPED", []), finished
    assert first["skipReason"] == "1 press(es), 0 reaction update(s): no run needed", finished
    # whether the presser still sees an answer depends on the tick landing within Telegram's answer
    # window (15 s, as long as the sensor's interval), so only what the press changed is checked
    assert card["reply_markup"]["inline_keyboard"]  # the card is still undecided
    assert [row["status"] for row in _sheet(sandbox, PROCESS_WORKSHEET)] == ["AWAITING APPROVAL"]
    row = _tick_row(page, stranger, "0 runs requested")
    screens.shot(page, "stranger-press-tick")
    row.get_by_text("0 runs requested").last.click()
    details = page.get_by_role("dialog").filter(has_text=f"Tick for {SENSOR}")
    expect(details.locator("strong", has_text="Skip reason:")).to_be_visible()
    expect(details).to_contain_text("1 press(es), 0 reaction update(s): no run needed")
    screens.shot(page, "stranger-press-tick-details")
    details.get_by_role("button", name="Close").click()
    expect(details).to_be_hidden()
    row.get_by_role("button", name="View logs").click()
    logs = page.get_by_role("dialog")
    expect(logs).to_contain_text(f"press {stranger} on ")
    expect(logs).to_contain_text("@stranger is not an admin")
    screens.shot(page, "stranger-press-tick-logs")
    logs.get_by_role("button", name="Done").click()
    expect(logs).to_be_hidden()

    press = sandbox.telegram.press(ADMIN, card, approve, username="editor")
    handled = wait_until(
        "the tick that handled the admin's Approve",
        lambda: [t for t in sensor_ticks(server, SENSOR) if t["runIds"]],
        timeout_s=TICK_TIMEOUT_S,
        explain=explain,
    )
    assert len(handled) == 1 and len(handled[0]["runIds"]) == 1, handled
    run_id = handled[0]["runIds"][0]
    [by_sensor] = runs(server, {"dagster/sensor_name": SENSOR})
    assert by_sensor["runId"] == run_id
    assert {"key": "press", "value": str(press)} in by_sensor["tags"], by_sensor
    row = _tick_row(page, press, "1 run requested")
    run_link = row.get_by_role("link", name=run_id[:8])
    expect(run_link).to_be_visible()
    screens.shot(page, "approve-press-tick")
    row.get_by_role("button", name="View logs").click()
    logs = page.get_by_role("dialog")
    prompt_id = _sheet(sandbox, PROCESS_WORKSHEET)[0]["id"]
    expect(logs).to_contain_text(f"press {press} on {prompt_id}: Approved by @editor")
    screens.shot(page, "approve-press-tick-logs")
    logs.get_by_role("button", name="Done").click()
    expect(logs).to_be_hidden()

    with page.context.expect_page() as opened:
        run_link.click()  # the tick's run link opens the run in a new tab
    run_page = opened.value
    run_page.wait_for_url(re.compile(rf"/runs/{run_id}"))
    wait_for_run(server, run_id, RUN_TIMEOUT_S)
    expect(run_page.get_by_role("img", name="run_success")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(run_page.get_by_text(f"partition: {prompt_id}")).to_be_visible()
    screens.shot(run_page, "approve-run-succeeded")
    [post] = sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)
    assert _sha(post["image"]) == _sha(card["image"])  # the previewed image, not a new one
    assert PROMPT in (post["caption"] or "")
    done = _sheet(sandbox, DONE_WORKSHEET)
    assert [(row["id"], row["status"]) for row in done] == [(prompt_id, "SUCCESS")] and done[0][
        "message_id"
    ] == str(post["message_id"])
    assert card.get("reply_markup") is None and card["visible_text"].endswith("Approved by @editor")
    assert len(runs(server)) == 2  # the preview's run and the Approve's: the stranger started nothing
