"""A small loopback HTTP server that the three service emulators share.

It owns what every emulator needs and none should re-implement: binding to 127.0.0.1 on a free port,
a thread per connection, a request log and per-endpoint counters, latency, and a fault plan that can
answer with a status code, hang past the client's timeout, reset the connection or truncate the body.
Service emulators only implement ``route(request) -> Response``.

Two optional hooks let a harness act at exact moments of a request (the chaos harness kills the client
there): ``on_request(request, endpoint)`` runs before latency, faults and routing; ``after_route(request,
endpoint, response)`` runs once the emulator has applied a request (normal answers and TRUNCATE) and before
a byte of the response is written.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Fault actions understood by the base server. An int is an HTTP status answered by the emulator's own
# ``error_response`` (so the body has the service's error shape).
TIMEOUT = "timeout"  # hold the request longer than any sane client timeout, then close
RESET = "reset"  # close the TCP connection with RST before answering
TRUNCATE = "truncate"  # announce a Content-Length, send half the body, close
GARBAGE = "garbage"  # the emulator answers 200 with bytes that are not what the client expects
# The request takes effect, then the answer is a 503 (a gateway or backend failing after the commit:
# moneyman#484 saw appended rows duplicated by a retry after such an answer).
COMMITTED_503 = "committed_503"

Fault = int | str


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_ip: str = ""
    client_port: int = 0  # with the IP, names the client's socket (the chaos harness finds its process)

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        hdrs = {"Content-Type": "application/json; charset=UTF-8"}
        hdrs.update(headers or {})
        return cls(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), hdrs)


@dataclass
class FaultPlan:
    """Which requests fail, and how.

    ``sequence`` is consumed first, one entry per matching request (``None`` = answer normally);
    afterwards each matching request fails with ``probability``, drawing uniformly from ``choices``.
    ``endpoints`` restricts the plan to endpoint names (as returned by the emulator's ``endpoint_of``).
    """

    sequence: list[Fault | None] = field(default_factory=list)
    probability: float = 0.0
    choices: list[Fault] = field(default_factory=lambda: [500])
    endpoints: set[str] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self, endpoint: str) -> Fault | None:
        if self.endpoints is not None and endpoint not in self.endpoints:
            return None
        with self._lock:
            if self.sequence:
                return self.sequence.pop(0)
            if self.probability > 0 and self._rng.random() < self.probability:
                return self._rng.choice(self.choices)
        return None


@dataclass
class Latency:
    """Fixed latency (``low == high``) or uniform within [low, high], in seconds."""

    low: float = 0.0
    high: float = 0.0
    endpoints: set[str] | None = None

    def sample(self, rng: random.Random) -> float:
        return self.low if self.high <= self.low else rng.uniform(self.low, self.high)


@dataclass
class LoggedRequest:
    at: float
    method: str
    path: str
    endpoint: str
    status: int | str
    headers: dict[str, str]
    body_size: int


class EmulatorServer:
    """Base class: subclasses implement ``route`` and ``error_response`` and may override ``endpoint_of``."""

    name = "emulator"
    timeout_hold_s = 30.0

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._rng = random.Random(1234)
        self.fault_plan: FaultPlan | None = None
        self.latency: Latency | None = None
        self.requests: list[LoggedRequest] = []
        self.counters: Counter[str] = Counter()
        self.on_request: Callable[[Request, str], None] | None = None
        self.after_route: Callable[[Request, str, Response], None] | None = None
        self._stopping = threading.Event()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> EmulatorServer:
        handler = _make_handler(self)
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- knobs
    def set_faults(self, plan: FaultPlan | None) -> None:
        self.fault_plan = plan

    def fail_next(self, *faults: Fault | None, endpoints: Iterable[str] | None = None) -> None:
        self.fault_plan = FaultPlan(sequence=list(faults), endpoints=set(endpoints) if endpoints else None)

    def set_latency(
        self, low: float, high: float | None = None, endpoints: Iterable[str] | None = None
    ) -> None:
        self.latency = Latency(low, low if high is None else high, set(endpoints) if endpoints else None)

    def count(self, endpoint: str) -> int:
        return self.counters[endpoint]

    # ----------------------------------------------------------------- for subclasses
    def endpoint_of(self, request: Request) -> str:
        return f"{request.method} {request.path}"

    def route(self, request: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    def error_response(self, status: int, request: Request) -> Response:
        return Response.json({"error": {"code": status, "message": "injected fault"}}, status)

    def garbage_response(self, request: Request) -> Response:
        return Response(200, b"<html>not what you asked for</html>", {"Content-Type": "text/html"})

    def named_fault(self, fault: str, request: Request) -> Response | None:
        """A service-specific fault (a rights error, a long flood wait, a provider refusal...): the
        answer, or None when this emulator does not know the name (the request is then answered)."""
        return None

    # ----------------------------------------------------------------- dispatch
    @staticmethod
    def _run_hook(hook: Callable[..., None] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:  # a harness bug must not take the request (or the server thread) down with it
            traceback.print_exc()

    def _dispatch(self, request: Request) -> tuple[Response | None, Fault | None, str]:
        endpoint = self.endpoint_of(request)
        with self._lock:
            self.counters[endpoint] += 1
        self._run_hook(self.on_request, request, endpoint)
        lat = self.latency
        if lat is not None and (lat.endpoints is None or endpoint in lat.endpoints):
            delay = lat.sample(self._rng)
            if delay > 0:
                time.sleep(delay)
        fault = self.fault_plan.draw(endpoint) if self.fault_plan else None
        if isinstance(fault, int):
            return self.error_response(fault, request), fault, endpoint
        if fault == GARBAGE:
            return self.garbage_response(request), fault, endpoint
        if fault in (TIMEOUT, RESET, TRUNCATE):
            return None, fault, endpoint
        try:
            if fault == COMMITTED_503:
                applied = self.route(request)
                self._run_hook(self.after_route, request, endpoint, applied)
                return self.error_response(503, request), fault, endpoint
            if isinstance(fault, str):
                named = self.named_fault(fault, request)
                if named is not None:
                    return named, fault, endpoint
            return self.route(request), None, endpoint
        except Exception as exc:  # an emulator bug must look like a 500, not kill the server thread
            return (
                Response.json({"error": {"code": 500, "message": f"emulator error: {exc!r}"}}, 500),
                None,
                endpoint,
            )

    def _log(self, request: Request, endpoint: str, status: int | str) -> None:
        safe_headers = {k: v for k, v in request.headers.items() if k != "authorization"}
        with self._lock:
            self.requests.append(
                LoggedRequest(
                    time.time(),
                    request.method,
                    request.path,
                    endpoint,
                    status,
                    safe_headers,
                    len(request.body),
                )
            )


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer (killed, timed out) is routine here, not an emulator error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _make_handler(emulator: EmulatorServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two sends: on a kept-alive connection Nagle would hold the body until
        # the client's delayed ACK (about 40 ms a request), a latency no real server adds.
        disable_nagle_algorithm = True
        server_version = f"{emulator.name}-emulator"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return  # quiet: tests read emulator.requests instead

        def _handle(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                client_ip=self.client_address[0],
                client_port=int(self.client_address[1]),
            )
            response, fault, endpoint = emulator._dispatch(request)
            if fault == TIMEOUT:
                emulator._log(request, endpoint, TIMEOUT)
                emulator._stopping.wait(emulator.timeout_hold_s)
                self.close_connection = True
                return
            if fault == RESET:
                emulator._log(request, endpoint, RESET)
                # SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer"
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            if fault == TRUNCATE:
                response = emulator.route(request)
            assert response is not None
            if fault is None or fault == TRUNCATE:
                # only these two reached route(): the request took effect, the client has not heard yet
                emulator._run_hook(emulator.after_route, request, endpoint, response)
            emulator._log(request, endpoint, response.status if fault != TRUNCATE else TRUNCATE)
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(response.body)))
            if fault == TRUNCATE:
                self.send_header("Connection", "close")
            self.end_headers()
            if fault == TRUNCATE:
                self.wfile.write(response.body[: max(1, len(response.body) // 2)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    return Handler
