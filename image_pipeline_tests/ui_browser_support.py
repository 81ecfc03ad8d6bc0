"""Helpers for the browser test of the Dagster UI: Debian's Chromium, numbered screenshots, GraphQL reads.

The browser is the system's ``/usr/bin/chromium`` (scripts/system-deps.sh installs it); Playwright never
downloads one. The GraphQL helpers only read (run status, sensor ticks, instigator state): everything a
person does goes through the page.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect, sync_playwright

from .dagster_dev import DagsterDev

CHROMIUM = Path("/usr/bin/chromium")
# As root Chromium needs --no-sandbox; the networking flags keep it from calling Google services, which on
# a closed network means a flood of failing connections (updates, sync, safe browsing, field trials).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
LOCATION = "image_pipeline"
REPOSITORY = "__repository__"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium; a missing browser is a failure, never a skip."""
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: the UI test needs Debian's Chromium (run scripts/system-deps.sh, "
        "which `make test` does first)"
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Screens:
    """Numbered full-page screenshots in one folder, so a failed CI run shows what the page looked like."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.png"):  # a previous run's pictures would mislead
            old.unlink()

    def shot(self, page: Page, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


def toggle_on(page: Page, name: str, timeout_ms: float) -> None:
    """Automation > ``name`` > the "Running" switch, as a person turns a schedule or sensor on."""
    page.get_by_role("navigation").get_by_role("link", name=re.compile(r"\bAutomation$")).click()
    page.get_by_role("link", name=re.compile(rf"\b{name}\b")).click()
    page.wait_for_url(re.compile(rf"/{name}$"))
    running = page.get_by_role("row", name="Running")
    switch = running.get_by_role("checkbox")
    expect(switch).not_to_be_checked(timeout=timeout_ms)
    # The checkbox itself is drawn hidden; the visible switch is its label.
    running.locator("label").filter(has=page.get_by_role("checkbox")).click()
    expect(switch).to_be_checked(timeout=timeout_ms)


def wait_until(
    what: str, probe: Callable[[], Any], *, timeout_s: float, every_s: float = 1.0, explain=lambda: ""
) -> Any:
    """``probe()``'s first truthy value, or an AssertionError naming ``what`` and ``explain()``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s. {explain()}")
        time.sleep(every_s)


RUN_FIELDS = "runId status pipelineName tags { key value }"


def runs(server: DagsterDev, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The instance's runs, newest first, optionally only those carrying all of ``tags``."""
    data = server.graphql(
        f"""query Runs($filter: RunsFilter) {{
              runsOrError(filter: $filter) {{ ... on Runs {{ results {{ {RUN_FIELDS} }} }} }}
            }}""",
        {"filter": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}},
    )
    return data["runsOrError"]["results"]


def run(server: DagsterDev, run_id: str) -> dict[str, Any]:
    data = server.graphql(
        f"""query Run($id: ID!) {{ runOrError(runId: $id) {{ __typename ... on Run {{ {RUN_FIELDS} }} }} }}""",
        {"id": run_id},
    )
    return data["runOrError"]


def run_errors(server: DagsterDev, run_id: str) -> list[str]:
    """The messages of a run's failure events, for an assertion message."""
    data = server.graphql(
        """query Logs($id: ID!) {
             logsForRun(runId: $id) {
               ... on EventConnection { events { __typename ... on MessageEvent { message } } }
             }
           }""",
        {"id": run_id},
    )
    events = data["logsForRun"].get("events", [])
    return [e.get("message", "") for e in events if re.search("Failure", e["__typename"])]


def wait_for_run(server: DagsterDev, run_id: str, timeout_s: float) -> dict[str, Any]:
    """The run once it finished; an AssertionError with its failure messages unless it succeeded."""
    finished = wait_until(
        f"run {run_id} to finish",
        lambda: (r := run(server, run_id)).get("status") in TERMINAL and r,
        timeout_s=timeout_s,
        explain=lambda: f"last status {run(server, run_id).get('status')}\n{tail(server)}",
    )
    assert finished["status"] == "SUCCESS", (
        f"run {run_id} ended {finished['status']}: {run_errors(server, run_id)}\n{tail(server)}"
    )
    return finished


def instigator_status(server: DagsterDev, kind: str, name: str) -> str:
    """``RUNNING`` or ``STOPPED`` for the schedule or sensor ``name`` (kind ``schedule``/``sensor``)."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, f"{kind}Name": name}
    type_name = kind.capitalize()
    data = server.graphql(
        f"""query State($s: {type_name}Selector!) {{
              {kind}OrError({kind}Selector: $s) {{
                __typename ... on {type_name} {{ {kind}State {{ status }} }}
              }}
            }}""",
        {"s": selector},
    )
    answer = data[f"{kind}OrError"]
    assert answer["__typename"] == type_name, answer
    return answer[f"{kind}State"]["status"]


def sensor_ticks(server: DagsterDev, name: str, limit: int = 10) -> list[dict[str, Any]]:
    """The sensor's latest ticks (status, skip reason, error, run ids), newest first."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
    data = server.graphql(
        """query Ticks($s: SensorSelector!, $n: Int) {
             sensorOrError(sensorSelector: $s) {
               ... on Sensor {
                 sensorState { ticks(limit: $n) { status skipReason runIds error { message } } }
               }
             }
           }""",
        {"s": selector, "n": limit},
    )
    return data["sensorOrError"]["sensorState"]["ticks"]


def tail(server: DagsterDev, chars: int = 3000) -> str:
    return f"--- dagster dev log ({server.log}) ---\n{server.log_text()[-chars:]}"
