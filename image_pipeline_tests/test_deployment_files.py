"""The deployment files: the daily GitHub workflow, the systemd units, compose.yaml and the Dockerfile.

Each file is parsed and checked, and the commands they run are run here against the sandbox's loopback
emulators: the workflow's steps as a runner would run them (its secrets replaced by the sandbox's), and the
units' ExecStart commands as systemd would start them (webserver and daemon together, a run launched
through the UI's GraphQL API, picked up by the daemon's run queue). Docker itself is not run: this machine
has no Docker engine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient
from dotenv import dotenv_values

from image_pipeline.defs.batching import RANGE_END, RANGE_START
from image_pipeline.settings import prompt_sheet_from, settings_from
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID
from image_pipeline.testing.sandbox import Sandbox

from .conftest import PIPELINE_ENV
from .dagster_dev import ROOT, base_env, dagster_home, free_port, running, stop
from .postgres_server import postgres_server

WORKFLOW = ROOT / ".github" / "workflows" / "daily.yml"
UNITS = ROOT / "deploy" / "systemd"
WEBSERVER_UNIT = UNITS / "image-pipeline-webserver.service"
DAEMON_UNIT = UNITS / "image-pipeline-daemon.service"
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENV_EXAMPLE = ROOT / "deploy" / "image-pipeline.env.example"
POSTGRES_INSTANCE = "deploy/dagster.postgres.yaml"
VENV_BIN = Path(sys.executable).parent

# What the workflow must take from repository secrets: every credential, and the sheet's key.
SECRETS = {
    "TELEGRAM_TOKEN",
    "TELEGRAM_CHAT_ID",
    "TELEGRAM_ALERT_CHAT_ID",
    "HF_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_JSON",
    "GOOGLE_SHEET_KEY",
}
# Where the services are: on a runner the public defaults; here the sandbox's loopback emulators.
SERVICE_URLS = (
    "GOOGLE_SHEETS_API_BASE_URL",
    "GOOGLE_DRIVE_API_BASE_URL",
    "HF_INFERENCE_BASE_URL",
    "TELEGRAM_API_BASE_URL",
)
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


# ------------------------------------------------------------------------------------------- helpers


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def triggers(wf: dict) -> dict:
    # YAML 1.1 reads the bare key `on` as the boolean true
    return wf.get("on", wf.get(True)) or {}


def job_steps(wf: dict) -> list[dict]:
    [job] = wf["jobs"].values()
    return job["steps"]


def make_run_step(wf: dict) -> dict:
    [step] = [s for s in job_steps(wf) if s.get("run", "").strip() == "make run"]
    return step


def script_steps(wf: dict) -> list[dict]:
    return [s for s in job_steps(wf) if "run" in s]


def sandbox_secrets(sandbox: Sandbox) -> dict[str, str]:
    """The repository secrets a user would create, pointing at the sandbox instead of the real services."""
    env = sandbox.env()
    return {
        "TELEGRAM_TOKEN": env["TELEGRAM_TOKEN"],
        "TELEGRAM_CHAT_ID": env["TELEGRAM_CHAT_ID"],
        "TELEGRAM_ALERT_CHAT_ID": env["TELEGRAM_ALERT_CHAT_ID"],
        "HF_TOKEN": env["HF_TOKEN"],
        "GOOGLE_SERVICE_ACCOUNT_JSON": sandbox.key_file.read_text(encoding="utf-8"),
        "GOOGLE_SHEET_KEY": env["GOOGLE_SHEET_KEY"],
    }


def substitute(value: str, secrets: Mapping[str, str]) -> str:
    """Evaluate a step's `${{ secrets.X }}` / `${{ vars.X }}` like the runner (an unset variable is '')."""

    def one(match: re.Match[str]) -> str:
        kind, _, name = match.group(1).partition(".")
        if kind == "secrets":
            return secrets.get(name, "")
        if kind == "vars":
            return ""
        raise AssertionError(f"the test cannot evaluate ${{{{ {match.group(1)} }}}}")

    return EXPRESSION.sub(one, str(value))


def run_script(
    step: dict, secrets: Mapping[str, str], runner_env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a step's `run:` script as the runner does with `shell: bash`, in the repository."""
    env = {**runner_env, **{k: substitute(v, secrets) for k, v in step.get("env", {}).items()}}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: sections of keys, each with every value it was given (Environment= repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}: unexpected line {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_environment(service: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in service.get("Environment", []):
        for assignment in shlex.split(value):
            key, _, val = assignment.partition("=")
            env[key] = val
    return env


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def done_rows(sandbox: Sandbox) -> list[dict[str, str]]:
    table = sandbox.google.values(sandbox.spreadsheet_id, "Done")
    return [dict(zip(table[0], row, strict=False)) for row in table[1:] if any(row)]


def queued_rows(sandbox: Sandbox) -> list[list[str]]:
    return [row for row in sandbox.google.values(sandbox.spreadsheet_id, "Process")[1:] if any(row)]


def assert_all_posted_and_logged(sandbox: Sandbox, prompts: list[str]) -> None:
    posts = sandbox.telegram.messages_for(DEFAULT_CHANNEL_ID)
    assert len(posts) == len(prompts)
    done = done_rows(sandbox)
    assert sorted(r["prompt"] for r in done) == sorted(prompts)
    assert {r["status"] for r in done} == {"SUCCESS"}
    assert {r["message_id"] for r in done} == {str(p["message_id"]) for p in posts}
    assert queued_rows(sandbox) == []
    assert sandbox.telegram.messages_for(ALERTS_CHANNEL_ID) == []


# ------------------------------------------------------------------------------- the daily workflow


def test_workflow_runs_make_run_daily_and_by_hand_with_python_3_11() -> None:
    wf = workflow()
    on = triggers(wf)
    [schedule] = on["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()
    assert "workflow_dispatch" in on
    assert set(on) == {"schedule", "workflow_dispatch"}  # no push/pull_request: secrets stay off forks
    setup = next(s for s in job_steps(wf) if str(s.get("uses", "")).startswith("actions/setup-python@"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert make_run_step(wf)
    assert wf["permissions"] == {"contents": "read"}


def test_workflow_never_overlaps_and_has_timeouts() -> None:
    wf = workflow()
    assert wf["concurrency"]["group"]
    assert wf["concurrency"]["cancel-in-progress"] is False  # a run is never killed mid-post for a newer one
    [job] = wf["jobs"].values()
    step = make_run_step(wf)
    assert 0 < step["timeout-minutes"] < job["timeout-minutes"]  # the ledger is still saved after a timeout


def test_workflow_takes_every_secret_from_repository_secrets() -> None:
    step = make_run_step(workflow())
    env = step["env"]
    from_secrets = {}
    for key, value in env.items():
        assert key in PIPELINE_ENV, f"{key} is not a variable the pipeline reads"
        [expression] = EXPRESSION.findall(str(value))
        kind, _, name = expression.partition(".")
        assert kind in ("secrets", "vars") and name == key
        if kind == "secrets":
            from_secrets[key] = name
    assert set(from_secrets) == SECRETS
    # the key is passed as JSON content: no key file is written on the runner
    assert "GOOGLE_SERVICE_ACCOUNT_FILE" not in env


def test_workflow_scripts_never_print_a_secret() -> None:
    wf = workflow()
    secret_vars = {k for s in script_steps(wf) for k, v in s.get("env", {}).items() if "secrets." in str(v)}
    assert secret_vars >= SECRETS
    for step in script_steps(wf):
        script = step["run"]
        # secrets reach scripts only through env: an expression in the script text is pasted into the
        # script file before it runs
        assert "${{" not in script, step
        assert not re.search(r"\bset\s+(-\w*x|-o\s+xtrace)|\bbash\s+-\w*x", script), step
        for line in script.splitlines():
            if re.search(r"\b(echo|printf|cat|tee|env|printenv|declare|export -p)\b", line):
                for name in secret_vars:
                    assert not re.search(rf"\$\{{?!?{name}\b", line), f"prints {name}: {line!r}"


def test_workflow_keeps_the_post_ledger_between_runs_even_after_a_failure() -> None:
    steps = job_steps(workflow())
    uses = [str(s.get("uses", "")) for s in steps]
    restore = steps[next(i for i, u in enumerate(uses) if u.startswith("actions/cache/restore@"))]
    save = steps[next(i for i, u in enumerate(uses) if u.startswith("actions/cache/save@"))]
    run_index = steps.index(make_run_step(workflow()))
    assert steps.index(restore) < run_index < steps.index(save)
    assert save["if"] == "always()"
    assert restore["with"]["path"] == save["with"]["path"] == "data/ledger.sqlite*"
    # entries are immutable: one key per run, the newest restored by prefix
    key = save["with"]["key"]
    assert key == restore["with"]["key"] and "github.run_id" in key
    assert key.startswith(restore["with"]["restore-keys"])


def test_workflow_steps_run_against_the_emulators(tmp_path: Path) -> None:
    """The workflow's scripts, run as the runner would with the sandbox's credentials as the secrets."""
    wf = workflow()
    started = time.monotonic()
    with Sandbox(tmp_path / "sandbox") as sandbox:
        prompts = [row[0] for row in queued_rows(sandbox)]
        secrets = sandbox_secrets(sandbox)
        urls = {k: v for k, v in sandbox.env().items() if k in SERVICE_URLS}
        runner_env = base_env(
            {
                **urls,
                "IMAGE_PIPELINE_DATA": str(tmp_path / "data"),
                # The Makefile sets DAGSTER_HOME itself: a command-line variable (passed in MAKEFLAGS, so
                # the script runs as written) is what overrides it. STAMP points make's "venv installed"
                # stamp at a fresh file: the test uses the venv as it is and never reinstalls it.
                "MAKEFLAGS": f"-- DAGSTER_HOME={tmp_path / 'home'} STAMP={_fresh_stamp(tmp_path)}",
            }
        )
        for name in SECRETS | {"GOOGLE_SERVICE_ACCOUNT_FILE"}:
            runner_env.pop(name, None)
        for step in script_steps(wf):
            result = run_script(step, secrets, runner_env, timeout=180)
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{step.get('name', step['run'])}:\n{output[-3000:]}"
            for name in ("TELEGRAM_TOKEN", "HF_TOKEN", "GOOGLE_SERVICE_ACCOUNT_JSON"):
                assert secrets[name] not in output
            assert "PRIVATE KEY" not in output
        assert "done: SUCCESS 5" in result.stdout and f"instance in {tmp_path / 'home'}" in result.stdout
        assert "Google Sheets (" in result.stdout  # the key JSON selected the real Sheets client
        assert_all_posted_and_logged(sandbox, prompts)
        # the ledger the cache steps keep is where they look for it (relative to the repository)
        assert (tmp_path / "data" / "ledger.sqlite").is_file()
    print(f"\nworkflow steps against the emulators: {time.monotonic() - started:.1f} s")


def test_workflow_stops_before_running_when_a_secret_is_missing(tmp_path: Path) -> None:
    wf = workflow()
    check = next(s for s in script_steps(wf) if s["run"].strip() != "make run")
    secrets = {name: f"value-of-{name}-0123456789" for name in SECRETS}
    secrets["TELEGRAM_TOKEN"] = ""
    result = run_script(check, secrets, base_env(), timeout=30)
    assert result.returncode != 0
    assert "TELEGRAM_TOKEN" in result.stdout
    assert not any(value and value in result.stdout + result.stderr for value in secrets.values())


def _fresh_stamp(tmp_path: Path) -> Path:
    stamp = tmp_path / "venv-installed"
    stamp.touch()
    return stamp


# ----------------------------------------------------------------------------------- systemd units


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        (WEBSERVER_UNIT, ["dagster-webserver", "-h", "127.0.0.1", "-p", "3000", "-w", "workspace.yaml"]),
        (DAEMON_UNIT, ["dagster-daemon", "run", "-w", "workspace.yaml"]),
    ],
)
def test_units_start_the_dagster_services_as_a_dedicated_user(unit: Path, command: list[str]) -> None:
    sections = parse_unit(unit)
    service = sections["Service"]
    [workdir] = service["WorkingDirectory"]
    [exec_start] = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == f"{workdir}/.venv/bin/{command[0]}" and argv[1:] == command[1:]
    assert service["User"] == ["image-pipeline"] and service["Group"] == ["image-pipeline"]
    assert service["Restart"] == ["on-failure"]
    # SIGINT: what Dagster's CLIs shut down on cleanly (exit 0); see test_units_run_... below
    assert service["KillSignal"] == ["SIGINT"]
    [env_file] = service["EnvironmentFile"]
    assert env_file.startswith("/etc/") and not env_file.startswith("-")  # a missing secrets file fails
    env = unit_environment(service)
    assert env["DAGSTER_HOME"].startswith("/var/lib/image-pipeline/")
    assert env["IMAGE_PIPELINE_DATA"].startswith("/var/lib/image-pipeline/")
    assert service["StateDirectory"] == ["image-pipeline"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_units_share_one_instance_and_one_data_folder() -> None:
    web, daemon = (parse_unit(u)["Service"] for u in (WEBSERVER_UNIT, DAEMON_UNIT))
    assert unit_environment(web) == unit_environment(daemon)
    for key in ("WorkingDirectory", "EnvironmentFile", "User", "StateDirectory"):
        assert web[key] == daemon[key]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """`systemd-analyze verify` with the venv path pointed at this venv (it checks ExecStart exists)."""
    for unit in (WEBSERVER_UNIT, DAEMON_UNIT):
        text = unit.read_text(encoding="utf-8").replace("/opt/image-pipeline/.venv/bin/", f"{VENV_BIN}/")
        (tmp_path / unit.name).write_text(text, encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # unknown keys and bad values are only warnings for systemd: any output is a finding
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stderr


def test_units_run_against_the_emulators(tmp_path: Path) -> None:
    """Both ExecStart commands as systemd would start them, on the Postgres instance they are documented
    with; a run launched through the UI's API is started by the daemon's run queue."""
    started = time.monotonic()
    state = tmp_path / "state"  # stands in for /var/lib/image-pipeline (StateDirectory=)
    web, daemon = (parse_unit(u)["Service"] for u in (WEBSERVER_UNIT, DAEMON_UNIT))
    [workdir] = web["WorkingDirectory"]
    port = free_port()

    def localize(value: str) -> str:
        return value.replace("/var/lib/image-pipeline", str(state)).replace(
            f"{workdir}/.venv/bin/", f"{VENV_BIN}/"
        )

    def argv(service: dict[str, list[str]]) -> list[str]:
        args = [localize(a) for a in shlex.split(service["ExecStart"][0])]
        return [str(port) if a == "3000" else a for a in args]

    with (
        postgres_server(keep_log=tmp_path / "postgres.log") as pg,
        Sandbox(tmp_path / "sandbox") as sandbox,
    ):
        prompts = [row[0] for row in queued_rows(sandbox)]
        unit_env = {k: localize(v) for k, v in unit_environment(web).items()}
        # the install step: deploy/dagster.postgres.yaml as the Dagster home's dagster.yaml
        dagster_home(Path(unit_env["DAGSTER_HOME"]), instance_yaml=ROOT / POSTGRES_INSTANCE)
        secrets_env = _environment_file(tmp_path, sandbox, pg.env())
        urls = {k: v for k, v in sandbox.env().items() if k in SERVICE_URLS}
        # EnvironmentFile= overrides Environment=
        env = base_env({**unit_env, **secrets_env, **urls})
        env.pop("GOOGLE_SERVICE_ACCOUNT_FILE", None)
        prepared = time.monotonic() - started

        # started together, as systemd does at boot: both create the fresh instance's tables at once
        with _process(argv(daemon), env, tmp_path / "daemon.log") as daemon_proc:
            with running(argv(web), env=env, log=tmp_path / "webserver.log", port=port) as server:
                ready = time.monotonic() - started
                _wait_daemon_healthy(server)
                healthy = time.monotonic() - started
                # compose's healthchecks, run the same way against these processes
                _check(["dagster-daemon", "liveness-check"], env)
                _check(["python", "-c", _compose_webserver_probe(port)], env)

                ids = _register_prompts(server, sandbox)
                client = DagsterGraphQLClient("127.0.0.1", port_number=port)
                run_id = client.submit_job_execution(
                    "process_prompts_job",
                    repository_location_name="image_pipeline",
                    repository_name="__repository__",
                    tags={RANGE_START: ids[0], RANGE_END: ids[-1]},
                )
                status = _wait_run(client, run_id)
                assert status == dg.DagsterRunStatus.SUCCESS, _tail(tmp_path / "daemon.log")
                ran = time.monotonic() - started
                assert_all_posted_and_logged(sandbox, prompts)
                # the webserver only queued it: the daemon's run coordinator launched it, as its child
                daemon_log = (tmp_path / "daemon.log").read_text(encoding="utf-8", errors="replace")
                assert "QueuedRunCoordinatorDaemon - INFO - Launched 1 runs" in _plain(daemon_log)
                assert run_id in daemon_log
                assert (state / "data" / "ledger.sqlite").is_file()

                # systemctl stop: KillSignal=SIGINT to the unit's processes; exit 0 leaves it inactive
                assert _stop_with(server.proc, signal.SIGINT) == 0
            assert _stop_with(daemon_proc, signal.SIGINT) == 0
    print(
        f"\nunits on Postgres: server + sandbox {prepared:.1f} s, webserver ready {ready:.1f} s, "
        f"daemon healthy {healthy:.1f} s, run succeeded {ran:.1f} s, total {time.monotonic() - started:.1f} s"
    )


def _environment_file(tmp_path: Path, sandbox: Sandbox, postgres: Mapping[str, str]) -> dict[str, str]:
    """Fill in deploy/image-pipeline.env.example the documented way, then read it back.

    The key JSON is appended with the printf command the example documents. python-dotenv reads it back;
    for this file (single-quoted JSON, no backslash before a quote or a backslash) its rules are
    systemd's: "a '-quoted value ... can contain any character verbatim other than single quote".
    """
    secrets = {**sandbox_secrets(sandbox), **postgres}
    key_json = secrets.pop("GOOGLE_SERVICE_ACCOUNT_JSON")
    path = tmp_path / "image-pipeline.env"
    lines = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        key = line.partition("=")[0]
        if key in secrets:
            line = f"{key}={secrets.pop(key)}"
        elif key == "GOOGLE_SERVICE_ACCOUNT_JSON":
            continue
        lines.append(line)
    assert not secrets, f"not in {ENV_EXAMPLE.name}: {sorted(secrets)}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    [recipe] = [ln for ln in lines if ln.lstrip("# ").startswith("printf ")]
    command = recipe.lstrip("# ").replace("key.json", shlex.quote(str(sandbox.key_file)))
    command = command.replace(">> FILE", f">> {shlex.quote(str(path))}")
    subprocess.run(["bash", "-c", command], check=True, timeout=30)
    path.chmod(0o600)
    values = {k: v or "" for k, v in dotenv_values(path).items()}
    assert json.loads(values["GOOGLE_SERVICE_ACCOUNT_JSON"]) == json.loads(key_json)
    return values


@contextmanager
def _process(command: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop(proc)


def _stop_with(proc: subprocess.Popen[bytes], sig: int, timeout_s: float = 60) -> int | None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def _wait_daemon_healthy(server, timeout_s: float = 90) -> None:
    query = "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
    deadline = time.monotonic() + timeout_s
    statuses: list[dict] = []
    while time.monotonic() < deadline:
        statuses = server.graphql(query)["instance"]["daemonHealth"]["allDaemonStatuses"]
        required = [s for s in statuses if s["required"]]
        if required and all(s["healthy"] for s in required):
            assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"} <= {s["daemonType"] for s in required}
            return
        time.sleep(1)
    raise AssertionError(f"daemon not healthy within {timeout_s:.0f} s: {statuses}")


def _register_prompts(server, sandbox: Sandbox) -> list[str]:
    """Give the queued rows their ids (as the sensor would) and add their partitions through the UI's API."""
    env = {
        "GOOGLE_SERVICE_ACCOUNT_FILE": str(sandbox.key_file),
        **{k: v for k, v in sandbox.env().items() if k.startswith("GOOGLE_")},
    }
    ids = [row.prompt_id for row in prompt_sheet_from(env, settings_from(env)).ensure_ids().rows]
    mutation = """
      mutation($key: String!) {
        addDynamicPartition(
          repositorySelector: {repositoryLocationName: "image_pipeline", repositoryName: "__repository__"},
          partitionsDefName: "prompts", partitionKey: $key
        ) { __typename }
      }"""
    for key in ids:
        result = server.graphql(mutation, {"key": key})["addDynamicPartition"]["__typename"]
        assert result == "AddDynamicPartitionSuccess", result
    return ids


def _wait_run(client: DagsterGraphQLClient, run_id: str, timeout_s: float = 90) -> dg.DagsterRunStatus:
    deadline = time.monotonic() + timeout_s
    status = client.get_run_status(run_id)
    while time.monotonic() < deadline and status not in (
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    ):
        time.sleep(0.5)
        status = client.get_run_status(run_id)
    return status


def _check(command: list[str], env: Mapping[str, str]) -> None:
    result = subprocess.run(command, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


def _compose_webserver_probe(port: int) -> str:
    test = compose()["services"]["webserver"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    return test[3].replace(":3000/", f":{port}/")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------ compose, Dockerfile


def test_compose_runs_postgres_the_webserver_and_the_daemon_from_one_image() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "webserver", "daemon"}
    web, daemon, pg = services["webserver"], services["daemon"], services["postgres"]
    assert web["command"] == ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]
    assert daemon["command"] == ["dagster-daemon", "run", "-w", "workspace.yaml"]
    assert web["build"] == daemon["build"] and web["image"] == daemon["image"]
    assert (COMPOSE.parent / web["build"]["context"] / web["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert web["ports"] == ["127.0.0.1:3000:3000"]  # Dagster OSS has no login: loopback only
    for service in (web, daemon, pg):
        assert service["healthcheck"]["test"]
        assert service["restart"] == "unless-stopped"
    for service in (web, daemon):
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert service["stop_signal"] == "SIGINT"


def test_compose_uses_the_postgres_instance_config_and_keeps_secrets_and_data_out_of_the_image() -> None:
    spec = compose()
    pg = spec["services"]["postgres"]["environment"]
    for name in ("web", "daemon"):
        service = spec["services"]["webserver" if name == "web" else "daemon"]
        env = service["environment"]
        home = env["DAGSTER_HOME"]
        mounts = [v.split(":") for v in service["volumes"]]
        assert [f"./{Path(POSTGRES_INSTANCE).name}", f"{home}/dagster.yaml", "ro"] in mounts
        assert (COMPOSE.parent / Path(POSTGRES_INSTANCE).name) == ROOT / POSTGRES_INSTANCE
        assert env["DAGSTER_PG_HOST"] == "postgres"
        # the ledger outlives containers: the data folder is a named volume
        assert [m for m in mounts if m[1] == env["IMAGE_PIPELINE_DATA"] and m[0] in spec["volumes"]]
        assert service["env_file"] == ".env"
    assert "${DAGSTER_PG_PASSWORD:?" in pg["POSTGRES_PASSWORD"]
    # deploy/.env holds the secrets: git must ignore it
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0


def test_dockerfile_installs_the_project_with_the_postgres_extra() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [rest for word, rest in instructions if word == "RUN"]
    assert any(re.search(r"pip install\s+'\.\[postgres\]'", r) for r in runs)
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    home = re.search(r"DAGSTER_HOME=(\S+)", env).group(1)
    copies = [shlex.split(rest) for word, rest in instructions if word == "COPY"]
    assert [POSTGRES_INSTANCE, f"{home}/dagster.yaml"] in copies
    user = [rest for word, rest in instructions if word == "USER"]
    assert user and user[-1] not in ("root", "0")
    # every file copied is in the build context the Dockerfile's own .dockerignore lets through
    allowed = {
        line[1:].strip()
        for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for *sources, _ in copies:
        for source in sources:
            assert source.removeprefix("./") in allowed, source


def test_the_postgres_instance_config_exists_and_reads_its_settings_from_the_environment() -> None:
    config = yaml.safe_load((ROOT / POSTGRES_INSTANCE).read_text(encoding="utf-8"))
    text = json.dumps(config)
    for name in ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB"):
        assert name in text
    assert "postgres" in config["storage"]


def test_every_variable_the_settings_read_is_in_the_env_example_and_the_readme() -> None:
    """The guide's rule: every variable in .env.example and the README's table (names are the upper-case
    string literals of settings.py, where the environment is read)."""
    import re

    source = (ROOT / "image_pipeline" / "settings.py").read_text(encoding="utf-8")
    names = sorted(set(re.findall(r'"([A-Z][A-Z0-9]*_[A-Z0-9_]+)"', source)))
    assert len(names) > 40, names  # the pattern still finds them
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    assert [n for n in names if n not in listed] == []
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    assert [n for n in names if f"`{n}`" not in table] == []
