"""``image-pipeline ledger migrate``: a SQLite post ledger copied into a real PostgreSQL server, then used there.

One throwaway PostgreSQL server for the module, a fresh database per test. The copy is judged by the
product's own ``Ledger`` on the new URL (a posted prompt stays posted when claimed again, counters go on
from where they were), never by the copier's own account; the refusals leave the target untouched.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from image_pipeline.cli import main
from image_pipeline.domain.statuses import POSTED
from image_pipeline.lifecycle.ledger import Ledger, owner_token, utc_day
from image_pipeline.lifecycle.ledger_schema import drop_engine, sqlite_url
from image_pipeline.services.hosts import node_id

from .conftest import PIPELINE_ENV
from .postgres_server import PostgresServer, postgres_server

ROOT = Path(__file__).resolve().parents[1]
SCALE_OUT = ROOT / "deploy" / "compose.scale-out.yaml"
ENV_EXAMPLE = ROOT / "deploy" / "image-pipeline.env.example"
_names = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server(db_name="migrate_admin", user="ledger") as server:
        yield server


@pytest.fixture
def target(pg: PostgresServer) -> Iterator[str]:
    url = pg.create_database(f"ledger_migrate_{os.getpid()}_{next(_names)}")
    yield url
    drop_engine(url)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The command's surroundings: a working directory without the developer's .env, its own Dagster home."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IMAGE_PIPELINE_LEDGER_URL", raising=False)
    env = {k: v for k, v in os.environ.items() if k not in PIPELINE_ENV}
    return env


def _never_stale(_owner: str) -> bool:
    return False


def _sqlite_ledger(path: Path) -> Ledger:
    """A ledger with a bit of everything a deployment accumulates."""
    book = Ledger(path)
    today = utc_day()
    # p1: the whole lifecycle, claim released at the end
    assert book.claim("p1", "f1", owner="w:1:run-a", prompt="a fox", lease_s=600, is_stale=_never_stale)
    book.update(
        "p1", "f1", owner="w:1:run-a", post_state=POSTED, message_id="101", chat_id="-100", link="t.me/1"
    )
    book.update(
        "p1", "f1", owner="w:1:run-a", done_state="LOGGED", final_status="SUCCESS", queue_state="REMOVED"
    )
    book.release("p1", "f1", "w:1:run-a")
    # p2: posted by a worker that died before logging it; its lease has run out since
    assert book.claim("p2", "f2", owner="w:2:run-b", prompt="an owl", lease_s=0, is_stale=_never_stale)
    book.update("p2", "f2", owner="w:2:run-b", post_state=POSTED, message_id="102", chat_id="-100")
    # p3: a transient failure counted
    assert book.claim("p3", "f3", owner="w:1:run-a", prompt="a cat", lease_s=600, is_stale=_never_stale)
    book.add_attempt("p3", "f3", "HF 503")
    book.release("p3", "f3", "w:1:run-a")
    assert book.pause("HF", "credits gone")
    book.begin_removal("nonce-1", "w:1:run-a", '{"rows": [2]}')
    assert book.reserve("posts", 3, day=today) and book.reserve("posts", 3, day=today)
    assert book.reserve("images", None, day=today)
    book.record_preflight("config-key", True)
    return book


def _ledger_tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as db:
            return set(sa.inspect(db).get_table_names())
    finally:
        engine.dispose()


def test_a_copied_ledger_is_used_on_postgres_as_it_was_on_sqlite(
    pg: PostgresServer, target: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    source = tmp_path / "data" / "ledger.sqlite"
    old = _sqlite_ledger(source)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "image_pipeline.cli",
            "ledger",
            "migrate",
            "--from",
            str(source),
            "--to",
            target,
        ],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout, done.stderr)
    assert done.returncode == 0
    assert pg.password not in done.stdout + done.stderr
    shown = sa.make_url(target).render_as_string(hide_password=True)
    assert f"IMAGE_PIPELINE_LEDGER_URL={shown}" in done.stdout and "***" in shown
    for line in ("prompts", "pauses", "removals", "daily_counts", "preflight_passes"):
        assert line in done.stdout
    assert " 3 row(s)" in next(line for line in done.stdout.splitlines() if "prompts" in line)

    new = Ledger(url=target)
    for pid in ("p1", "p2", "p3"):
        assert new.entries_for(pid) == old.entries_for(pid)
    assert new.pause_state() == old.pause_state()
    assert new.open_removals() == old.open_removals()
    assert new.preflight_passed_at("config-key") == old.preflight_passed_at("config-key")
    # a new worker takes over the dead worker's lapsed claim and finds the prompt posted: not sent again
    assert new.claim("p2", "f2", owner="pg:7:run-c", prompt="an owl", lease_s=600, is_stale=_never_stale)
    taken = new.get("p2", "f2")
    assert taken is not None and (taken.owner, taken.post_state, taken.message_id) == (
        "pg:7:run-c",
        POSTED,
        "102",
    )
    assert new.claim("p1", "f1", owner="pg:7:run-c", prompt="a fox", lease_s=600, is_stale=_never_stale)
    assert new.get("p1", "f1").message_id == "101"  # type: ignore[union-attr]
    # the counters go on from the copied day's counts: one post left under the cap of 3
    assert new.reserve("posts", 3) and not new.reserve("posts", 3)
    assert new.used_today("posts") == 3 and new.used_today("images") == 1
    assert [p.service for p in new.resume()] == ["HF"]
    drop_engine(sqlite_url(source))


def test_a_live_claim_refuses_the_copy_and_a_dead_workers_claim_does_not(
    target: str, tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "ledger.sqlite"
    book = Ledger(source)
    live = owner_token("run-live")  # this process: alive, on this host and in this PID namespace
    assert book.claim("p1", "f", owner=live, prompt="", lease_s=600, is_stale=_never_stale)
    argv = ["ledger", "migrate", "--from", str(source), "--to", target]
    assert main(argv) == 2
    err = capsys.readouterr().err
    print(err)
    assert "Stop the workers first" in err and "p1" in err
    assert "prompts" not in _ledger_tables(target)  # refused before the target was touched

    # the worker finished; another one was killed with its lease still running, on this very node
    book.release("p1", "f", live)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = f"{os.uname().nodename}/{node_id()}:{int(gone.stdout)}:run-dead" if node_id() else ""
    if dead:
        assert book.claim("p2", "f", owner=dead, prompt="", lease_s=600, is_stale=_never_stale)
    assert main(argv) == 0, capsys.readouterr().err
    copied = Ledger(url=target).get("p2", "f")
    assert not dead or (copied is not None and copied.owner == dead)
    drop_engine(sqlite_url(source))


def test_a_target_that_holds_a_ledger_or_dagster_is_refused_untouched(
    pg: PostgresServer,
    target: str,
    tmp_path: Path,
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = tmp_path / "first.sqlite", tmp_path / "second.sqlite"
    Ledger(first).record_preflight("a", True)
    book = Ledger(second)
    book.record_preflight("b", True)
    book.pause("HF", "credits gone")
    assert main(["ledger", "migrate", "--from", str(first)]) == 2  # no target named anywhere
    assert "IMAGE_PIPELINE_LEDGER_URL" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as env:  # the URL from the environment: no password in argv
        env.setenv("IMAGE_PIPELINE_LEDGER_URL", target)
        assert main(["ledger", "migrate", "--from", str(first)]) == 0
    assert pg.password not in capsys.readouterr().out
    assert main(["ledger", "migrate", "--from", str(second), "--to", target]) == 2
    err = capsys.readouterr().err
    print(err)
    assert "already holds ledger rows (preflight_passes 1)" in err
    after = Ledger(url=target)
    assert after.preflight_passed_at("a") is not None and after.preflight_passed_at("b") is None
    assert after.pause_state() is None

    dagster_db = pg.create_database(f"dagster_like_{os.getpid()}_{next(_names)}")
    with pg.connect(sa.make_url(dagster_db).database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE runs (id serial primary key)")
    assert main(["ledger", "migrate", "--from", str(second), "--to", dagster_db]) == 2
    assert "a Dagster instance's tables" in capsys.readouterr().err
    assert "prompts" not in _ledger_tables(dagster_db)
    for path in (first, second):
        drop_engine(sqlite_url(path))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://bucket/prefix", "PostgreSQL URL"),
        ("ledger.sqlite", "database URL"),
        ("sqlite:///data/ledger.sqlite", "PostgreSQL URL"),
        ("mysql://u:sekret-password@db/x", "PostgreSQL URL"),
        ("postgresql+psycopg2://u:sekret-password@127.0.0.1:1", "names no database"),
        ("postgresql+psycopg2://u:sekret-password@127.0.0.1:1/db", "no ledger at"),
    ],
)
def test_what_is_not_a_database_or_not_a_ledger_is_refused(
    url: str, says: str, tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "migrate", "--from", str(tmp_path / "missing.sqlite"), "--to", url]) == 2
    out = capsys.readouterr()
    print(out.err)
    assert says in out.err
    assert "sekret-password" not in out.out + out.err
    assert not (tmp_path / "missing.sqlite").exists()  # never created by looking at it


def test_a_wrong_password_fails_without_showing_it(
    pg: PostgresServer, tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "ledger.sqlite"
    Ledger(source).record_preflight("a", True)
    wrong = sa.make_url(pg.url()).set(password="wrong-password-123").render_as_string(hide_password=False)
    assert main(["ledger", "migrate", "--from", str(source), "--to", wrong]) == 1
    out = capsys.readouterr()
    print(out.err)
    assert "password authentication failed" in out.err
    assert "wrong-password-123" not in out.out + out.err
    not_a_ledger = tmp_path / "notes.txt"
    not_a_ledger.write_text("hello, not a database" * 100)
    assert main(["ledger", "migrate", "--from", str(not_a_ledger), "--to", pg.url()]) == 2
    assert "not a SQLite ledger" in capsys.readouterr().err
    drop_engine(sqlite_url(source))


# ---------------------------------------------------------------------------------------------- compose
def _scale_out() -> dict:
    return yaml.safe_load(SCALE_OUT.read_text(encoding="utf-8"))


def _interpolated(value: str) -> str:
    """What compose makes of ${VAR:-default} and ${VAR:?message} when VAR is unset or set to ``x``."""
    value = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", value)
    return re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", "x", value)


def test_scale_out_workers_share_nothing_but_postgres_and_the_bucket() -> None:
    spec = _scale_out()
    services = spec["services"]
    ours = {name: s for name, s in services.items() if s.get("image") == "image-pipeline:local"}
    assert {"worker", "webserver", "daemon"} <= set(ours)
    worker = services["worker"]
    assert "image-pipeline run" in " ".join(worker["command"]) and worker["deploy"]["replicas"] >= 2
    for name, service in ours.items():
        env = service["environment"]
        for mount in service.get("volumes", []):
            source, _, rest = mount.partition(":")
            # configuration files from this folder, read-only; never a named volume or a data folder
            assert source.startswith("./") and rest.endswith(":ro"), (name, mount)
            assert source not in spec.get("volumes", {}), (name, mount)
        assert env["IMAGE_PIPELINE_DATA"].startswith("s3://"), name
        bucket = env["IMAGE_PIPELINE_DATA"].removeprefix("s3://").split("/")[0]
        assert f"store/{bucket}" in " ".join(services["bucket"]["entrypoint"])
        assert env["IMAGE_PIPELINE_S3_ENDPOINT_URL"] == "http://minio:9000"
        # the ledger on PostgreSQL, in a database of its own on the same server
        ledger = sa.make_url(_interpolated(env["IMAGE_PIPELINE_LEDGER_URL"]))
        dagster_db = _interpolated(services["postgres"]["environment"]["POSTGRES_DB"])
        assert ledger.get_backend_name() == "postgresql" and ledger.host == "postgres"
        assert ledger.database and ledger.database != dagster_db, name
        assert f"CREATE DATABASE {ledger.database}" in " ".join(services["ledger-db"]["command"])
        assert env["DAGSTER_PG_HOST"] == "postgres" and service["env_file"] == ".env"
    assert services["minio"]["image"] == "minio/minio" and services["minio"]["command"][:2] == [
        "server",
        "/data",
    ]
    assert services["bucket"]["image"] == "minio/mc"


def test_every_variable_the_scale_out_file_reads_is_in_the_env_example() -> None:
    text = SCALE_OUT.read_text(encoding="utf-8")
    # ${VAR...} is compose's interpolation; $${VAR} is a literal $ left to the container's shell
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M))
    print(f"variables read: {sorted(used)}")
    assert used and used <= listed, sorted(used - listed)


def test_the_scale_out_ledger_db_command_makes_a_database_the_migration_fills(
    pg: PostgresServer, tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    service = _scale_out()["services"]["ledger-db"]
    assert shutil.which("psql"), "psql comes with the postgresql package (scripts/system-deps.sh)"
    env = {
        **cli_env,
        **{k: _interpolated(v) for k, v in service["environment"].items()},
        "PGHOST": "127.0.0.1",
        "PGPORT": str(pg.port),
        "PGUSER": pg.user,
        "PGPASSWORD": pg.password,
        "PGDATABASE": pg.db_name,
    }
    for _ in range(2):  # a second start finds the database and leaves it
        done = subprocess.run(service["command"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    url = sa.make_url(pg.url()).set(database="image_pipeline_ledger").render_as_string(hide_password=False)
    source = tmp_path / "ledger.sqlite"
    Ledger(source).record_preflight("a", True)
    assert main(["ledger", "migrate", "--from", str(source), "--to", url]) == 0, capsys.readouterr().err
    assert Ledger(url=url).preflight_passed_at("a") is not None
    drop_engine(url)
    drop_engine(sqlite_url(source))
