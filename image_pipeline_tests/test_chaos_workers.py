"""The chaos harness across workers: two workers racing over one backlog, sharing only PostgreSQL and S3.

One reduced distributed run (a throwaway PostgreSQL server and a moto S3 server started by the harness,
each worker in its own folder, Dagster home, PID namespace and hostname where ``unshare`` works) serves
the run's tests: the verdict (nothing posted twice, nothing lost, nothing deleted without a trace, no
secret anywhere, the bucket and the ledger's tables included), and that nothing but the two servers was
shared. A separate test checks that a kill finds the worker that sent the request, among several.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from image_pipeline.testing.chaos import RESULT_KEYS, Supervisor, format_table, main, run_chaos
from image_pipeline.testing.chaos.fleet import namespace_wrap
from image_pipeline.testing.emulators.base import Request
from image_pipeline.testing.emulators.telegram import TelegramEmulator

# 20 prompts, 2 workers, one kill: small enough to stay well under a minute of wall time on 2 cores
DISTRIBUTED = {
    "prompts": 20,
    "fault_rate": 0.1,
    "kills": 1,
    "writer": True,
    "seed": 11,
    "timeout_s": 240.0,
    "workers": 2,
    "distributed": True,
}


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, int | float], Path]:
    root = tmp_path_factory.mktemp("chaos-workers")
    result = run_chaos(**DISTRIBUTED, workdir=root)  # type: ignore[arg-type]
    print(format_table(result))  # the figures, for whoever reads a failure
    return result, root


@pytest.mark.timeout(300)
def test_two_distributed_workers_post_exactly_once(
    distributed_run: tuple[dict[str, int | float], Path],
) -> None:
    r, _ = distributed_run
    figures = {k: r[k] for k in ("posted_twice", "lost", "wrongly_deleted", "token_hits")}
    assert figures == {"posted_twice": 0, "lost": 0, "wrongly_deleted": 0, "token_hits": 0}
    assert r["timed_out"] == 0 and r["stalled_workers"] == 0, "the workers did not drain the queue"
    assert set(RESULT_KEYS) <= set(r)
    assert r["workers"] == 2 and r["distributed"] == 1
    assert r["kills"] == 1  # the kill found the worker whose request reached the kill point
    assert r["faults"] > 0 and r["person_edits"] > 0
    assert r["posts_total"] > 0
    # the bucket and the ledger's tables were scanned for secrets too
    assert "token_hits_object_store" in r and "token_hits_ledger_db" in r
    if namespace_wrap():
        assert r["worker_namespaces"] == 1
    table = format_table(r).splitlines()
    assert any(line.split() == ["workers", "2"] for line in table)
    assert any(line.split() == ["distributed", "1"] for line in table)


@pytest.mark.timeout(300)
def test_distributed_workers_share_no_folder(distributed_run: tuple[dict[str, int | float], Path]) -> None:
    _, root = distributed_run
    folders = sorted((root / "workers").iterdir())
    assert [f.name for f in folders] == ["w1", "w2"]
    for folder in folders:
        assert (folder / "home").is_dir()  # a Dagster home of its own
    # the ledger is in PostgreSQL and the images in S3: no SQLite ledger, no image file on local disk
    assert not list(root.rglob("ledger.sqlite"))
    assert not [p for p in (root / "workers").rglob("*.png")]
    assert not list((root / "data").iterdir())


def test_a_kill_finds_the_worker_that_sent_the_request(tmp_path: Path) -> None:
    """Three workers send one request each; the hook names each request's worker by its socket."""
    seen: dict[str, int | None] = {}
    with TelegramEmulator() as tg:
        url = f"{tg.base_url}/bot{tg.token}/sendMessage"
        script = textwrap.dedent(
            f"""
            import sys, requests
            requests.post({url!r}, json={{"chat_id": 1, "text": sys.argv[1]}}, timeout=10)
            """
        )
        slots = [(tmp_path, {"PATH": "/usr/bin:/bin"}) for _ in range(3)]
        supervisor = Supervisor(tmp_path, slots[0][1], tmp_path, [sys.executable, "-c", script], slots=slots)

        def on_request(request: Request, endpoint: str) -> None:
            seen[request.json()["text"]] = supervisor.requester(request)

        tg.on_request = on_request
        generations = {}
        for slot in range(3):
            supervisor.command = [sys.executable, "-c", script, f"slot {slot}"]
            generations[f"slot {slot}"] = supervisor.start(slot)
        deadline = time.monotonic() + 60
        while supervisor.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        codes = [supervisor.reap(slot) for slot in range(3)]
    assert codes == [0, 0, 0]
    assert seen == generations


def test_workers_must_be_at_least_one() -> None:
    with pytest.raises(SystemExit):
        main(["--workers=0"])


def test_namespace_wrap_gives_every_worker_the_same_hostname() -> None:
    wrap = namespace_wrap()
    if not wrap:
        pytest.skip("unshare of a PID and UTS namespace is not allowed here (needs root)")
    out = subprocess.run([*wrap, "sh", "-c", "hostname; echo $$"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["chaos-worker", "1"]  # the shared hostname, and PID 1 of its own namespace
