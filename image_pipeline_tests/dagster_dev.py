"""Start the real ``dagster dev`` (webserver + daemon) on loopback for end-to-end tests, and stop it.

Used by the browser test, the Postgres instance test and the deployment tests. The process gets its own
session so the whole tree (webserver, daemon, code server, run workers) is signalled together; SIGINT is
what ``dagster dev`` handles cleanly, SIGKILL is the fallback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("IMAGE_PIPELINE_TEST_ARTIFACTS") or ROOT / "test-artifacts")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dagster_home(folder: Path, instance_yaml: Path = ROOT / "dagster.yaml") -> Path:
    """A fresh Dagster home holding a copy of ``instance_yaml`` as its dagster.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(instance_yaml, folder / "dagster.yaml")
    return folder


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment minus the pipeline's settings, plus ``extra``.

    The conftest's autouse fixture has already removed developer credentials and set HF_HOME and
    HF_HUB_DISABLE_TELEMETRY; they pass through.
    """
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    # the venv's scripts (dagster, dagster-daemon, image-pipeline) first, as `make` would have them
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class DagsterDev:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body.get("errors")
        return body["data"]

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/server_info", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout_s:.0f} s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # children that outlived the leader (a run worker mid-step) go with the group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(
    command: list[str],
    *,
    env: Mapping[str, str],
    log: Path,
    port: int,
    cwd: Path = ROOT,
    ready_timeout_s: float = 120,
) -> Iterator[DagsterDev]:
    """Run ``command`` (which serves the Dagster webserver on ``port``) until the block ends."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = DagsterDev(proc=proc, port=port, log=log)
    try:
        wait_ready(server.url, proc, log, ready_timeout_s)
        yield server
    finally:
        stop(proc)


@contextlib.contextmanager
def dagster_dev(home: Path, env: Mapping[str, str], log: Path) -> Iterator[DagsterDev]:
    """``dagster dev -h 127.0.0.1 -p <free port> -w workspace.yaml`` with ``DAGSTER_HOME=home``."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "dagster"),
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "workspace.yaml",
    ]
    with running(command, env={**env, "DAGSTER_HOME": str(home)}, log=log, port=port) as server:
        yield server


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
