"""Throwaway servers for tests and harnesses: PostgreSQL from Debian's binaries and moto's S3, both on 127.0.0.1.

``postgres_server`` runs a temp cluster on a free port. ``scripts/system-deps.sh`` (run by ``make test``)
installs the ``postgresql`` package when it is missing. initdb and postgres refuse to run as root, so under
root they run as the package's ``postgres`` user, in a data directory it owns outside any temp tree of
mode 0700. The server is the direct child of the caller (no pg_ctl daemonizing), so stopping it is a signal
to a pid we hold: SIGINT is Postgres's fast shutdown, SIGKILL the fallback; the data directory is removed
afterwards.

``moto_s3`` runs moto's S3 server mode in a thread. MinIO's server is a Go binary with no package here;
moto (``moto[server]``, a dev extra) speaks the S3 API over real HTTP, conditional writes
(``If-None-Match: *``) included, so s3fs and boto3 talk to it as to AWS. moto keeps its buckets in the
process's memory, shared by every server it runs: callers take a bucket of their own (``new_bucket``)
instead of resetting it. Credentials reach clients the way they do in production: from the standard AWS
environment (``aws_env``), never as arguments.

psycopg2, boto3 and moto are imported where used, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_USER = "postgres"  # created by the Debian package
S3_REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bin_dir() -> Path:
    """The newest installed /usr/lib/postgresql/<version>/bin that has initdb and postgres."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (Path(d) / "initdb").is_file() and (Path(d) / "postgres").is_file()
    ]
    if not found:
        raise RuntimeError(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; "
            "run scripts/system-deps.sh (make test does) to install the Debian postgresql package"
        )
    return max(found, key=lambda d: [int(x) for x in re.findall(r"\d+", d.parent.name)] or [0])


@dataclass
class PostgresServer:
    proc: subprocess.Popen[bytes]
    port: int
    user: str
    password: str
    db_name: str
    log: Path

    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables that deploy/dagster.postgres.yaml reads."""
        return {
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.db_name,
        }

    def url(self, db_name: str | None = None) -> str:
        """A SQLAlchemy URL of ``db_name`` (the server's database by default), password included."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{db_name or self.db_name}"

    def connect(self, db_name: str | None = None) -> Any:  # a psycopg2 connection
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db_name or self.db_name,
            connect_timeout=5,
        )

    def create_database(self, name: str) -> str:
        """A new empty database on this server; its SQLAlchemy URL."""
        admin = self.connect("postgres")
        try:
            admin.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            admin.close()
        return self.url(name)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


def _as_service_user() -> dict[str, object]:
    """Popen arguments that drop root to the postgres user (and its groups only); nothing otherwise."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise RuntimeError(
            f"running as root but there is no {SERVICE_USER!r} user to run PostgreSQL as "
            "(the Debian postgresql package creates it)"
        ) from exc
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _owned_temp_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="image-pipeline-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVICE_USER)
        os.chown(folder, account.pw_uid, account.pw_gid)
    return folder


def _run_as_service_user(command: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=_child_env(), timeout=120, **_as_service_user()
        )
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {done.returncode}:\n{_tail(log)}")


def _child_env() -> dict[str, str]:
    # no PG* variables from the developer's shell; LC_ALL=C keeps initdb away from missing locales
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _wait_ready(server: PostgresServer, timeout_s: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.proc.returncode}:\n{_tail(server.log)}")
        try:
            server.connect("postgres").close()
            return
        except psycopg2.OperationalError:
            time.sleep(0.2)
    raise RuntimeError(f"postgres not accepting connections within {timeout_s:.0f} s:\n{_tail(server.log)}")


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    if proc.poll() is not None:
        return
    # SIGINT = "fast" shutdown: roll back open transactions, disconnect clients, exit
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def postgres_server(
    *,
    db_name: str = "dagster",
    user: str = "dagster",
    ready_timeout_s: float = 60,
    keep_log: Path | None = None,
) -> Iterator[PostgresServer]:
    """A running server with ``db_name`` created, password auth on 127.0.0.1; gone when the block ends.

    The server's log is copied to ``keep_log`` (when given) before its folder is removed.
    """
    bin_dir = find_bin_dir()
    folder = _owned_temp_dir()
    data = folder / "data"
    log = folder / "postgres.log"
    password = secrets.token_urlsafe(16)
    proc: subprocess.Popen[bytes] | None = None
    try:
        pwfile = folder / "pwfile"
        pwfile.write_text(password + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVICE_USER)
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        pwfile.chmod(0o600)
        # password (scram) over TCP, as a real deployment would use; --no-sync: a throwaway cluster
        _run_as_service_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                user,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            log,
        )
        pwfile.unlink()
        for _attempt in range(3):
            port = free_port()
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(data),
                        "-p",
                        str(port),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        # the socket stays inside the temp dir, not /var/run/postgresql
                        "-c",
                        f"unix_socket_directories={folder}",
                        # durability is pointless for a cluster deleted after the test
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_child_env(),
                    start_new_session=True,
                    **_as_service_user(),
                )
            server = PostgresServer(
                proc=proc, port=port, user=user, password=password, db_name=db_name, log=log
            )
            try:
                _wait_ready(server, ready_timeout_s)
                break
            except RuntimeError:
                # another process took the free port between free_port() and bind(): try another
                if proc.poll() is not None and "Address already in use" in _tail(log):
                    continue
                raise
        else:
            raise RuntimeError(f"postgres could not bind a free port:\n{_tail(log)}")
        server.create_database(db_name)
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        if keep_log is not None and log.exists():
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, keep_log)
        shutil.rmtree(folder, ignore_errors=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class S3Server:
    endpoint_url: str

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables for this server (dummy keys: moto accepts any), and none of the
        machine's own configuration: no profile files, no instance-metadata lookups."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A boto3 client of its own: the tests look at the bucket without going through our code."""
        import boto3

        env = self.aws_env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


@contextlib.contextmanager
def moto_s3(own_process: bool = False) -> Iterator[S3Server]:
    """An S3 server on 127.0.0.1 (moto's default is every interface on port 5000), stopped afterwards.

    ``own_process``: moto's server in a process of its own, as a real store is a service of its own; in
    this one its request handling shares the interpreter lock with whatever else runs here (the bench's
    emulators), which would slow every worker's storage down together."""
    if own_process:
        yield from _moto_process()
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


def _moto_process() -> Iterator[S3Server]:
    import sys

    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start on 127.0.0.1:{port}")
            time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        _stop(proc, grace_s=5)
