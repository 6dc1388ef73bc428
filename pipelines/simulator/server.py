"""The simulator's HTTP face: the MetaStudio list endpoint plus loopback admin endpoints.

API (what a client sees):
    GET /v1/{project_id}/voice-training-manage/user/jobs   token or AK/SK auth, all query
                                                            parameters of the real service
Admin (loopback clients only, not counted in ``stats``):
    POST /_sim/advance?seconds=N[&seed_step=K]   -> {"created", "transitioned", "deleted", "now", ...}
                                                    (or the same fields in the JSON body)
    GET  /_sim/truth[?project_id=P]              -> the jobs the API currently lists
    POST /_sim/config  {"latency_ms": .., "fault_rate": .., "rate_limit": .., "hostile_paging": ..}
    GET  /_sim/stats                             -> requests by status, faults by kind

Admin calls that change state (every method but GET) need ``Content-Type: application/json``
(else 415) and the per-process admin token in the ``X-Sim-Admin-Token`` header (else 403):
a web page open in a browser on the same machine can send a loopback POST, but only a "simple"
one (text/plain, no custom header) unless the server allows it by CORS, which this one never
does; and it cannot learn the token. ``SimulatorServer.admin_token`` holds the token,
``SimulatorServer.admin()`` makes such a call, and ``voicejobs simulator`` prints it in its
start banner (``admin token: ...``). The read-only calls need neither.

The ``Date`` header always carries the simulated clock, which clients use as the
source's notion of now.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import secrets
import threading
import time
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl

import httpx
import orjson

from .access import Reject, authenticate, error_body
from .admin import ADMIN_TOKEN_HEADER, READ_ONLY_METHODS, admin_answer
from .config import SimulatorConfig
from .loopback import LoopbackHTTPServer
from .params import ListParams, ParamError, parse_list_params
from .quirks import corrupt_page
from .state import SimulatorState

__all__ = ["ADMIN_TOKEN_HEADER", "JSON_TYPE", "LoopbackHTTPServer", "SimulatorServer"]

JSON_TYPE = "application/json;charset=UTF-8"
_JOBS_PATH = re.compile(r"^/v1/([^/]+)/voice-training-manage/user/jobs/?$")
_RUNTIME_FIELDS = (
    "latency_ms",
    "fault_rate",
    "faults",
    "rate_limit",
    "stall_seconds",
    "hostile_paging",
    "quirks",
)
_THROTTLED = error_body("APIGW.0308", "The throttling threshold has been reached.")
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>API Gateway</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
#: The answer each fault kind that replaces the page gets: status, body, content type, headers.
_FAULT_ANSWERS: dict[str, tuple[int, bytes, str, dict[str, str]]] = {
    "429": (429, _THROTTLED, JSON_TYPE, {"Retry-After": "1"}),
    "500": (500, error_body("MSS.00000002", "Internal server error, please try again later."), JSON_TYPE, {}),
    "502": (502, _BAD_GATEWAY_HTML, "text/html", {}),
    "503": (
        503,
        error_body("APIGW.0203", "Backend service unavailable, please try again later."),
        JSON_TYPE,
        {},
    ),
}


class _TokenBucket:
    """``rate`` requests/s with a burst of max(1, rate)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0.0 when admitted, otherwise the seconds until a token is available."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


class _HTTPServer(LoopbackHTTPServer):
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], simulator: SimulatorServer) -> None:
        self.simulator = simulator
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MetaStudioSimulator/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300
    server: _HTTPServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: tests and benchmarks
        return

    def date_time_string(self, timestamp: float | None = None) -> str:
        return format_datetime(self.server.simulator.state.now, usegmt=True)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # --------------------------------------------------------------- plumbing
    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = JSON_TYPE,
        headers: dict[str, str] | None = None,
        *,
        count: bool = True,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        # Headers and body in one write: one segment per small answer on keep-alive.
        self._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]
        self._headers_buffer.append(body)  # type: ignore[attr-defined]
        if count:
            self.server.simulator._count(status)
        try:
            self.flush_headers()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        simulator = self.server.simulator
        body = self._read_body()
        path, _, query = self.path.partition("?")
        if path.startswith("/_sim/"):
            status, answer = admin_answer(
                simulator,
                self.client_address[0],
                self.command,
                path,
                query,
                self.headers.get_content_type(),
                self.headers,
                body,
            )
            self._send(status, answer, count=False)
            return
        config = simulator.config
        if config.latency_ms:
            time.sleep(config.latency_ms / 1000)
        try:
            admitted = self._admit(simulator, path, query, body)
        except Reject as reject:
            self._send(reject.status, error_body(reject.code, reject.message))
            return
        except ParamError as exc:
            self._send(400, error_body("MSS.00000001", f"Invalid parameter: {exc}"))
            return
        if admitted is not None:
            self._list(simulator, config, *admitted)

    def _admit(
        self, simulator: SimulatorServer, path: str, query: str, body: bytes
    ) -> tuple[str, ListParams] | None:
        """(project id, parameters) of a list request that may be served, or None when the rate
        limit refused it (answered here); raises Reject or ParamError for the caller to answer."""
        match = _JOBS_PATH.match(path)
        if not match:
            raise Reject(404, "APIGW.0101", "The API does not exist or has not been published.")
        if self.command != "GET":
            raise Reject(405, "APIGW.0101", f"Method {self.command} is not allowed on this API.")
        wait = simulator._throttle()
        if wait:
            simulator._count_fault("rate_limit")
            self._send(429, _THROTTLED, headers={"Retry-After": str(max(1, math.ceil(wait)))})
            return None
        project_id = match.group(1)
        authenticate(simulator.config, self.command, path, query, self.headers, body, project_id)
        if not simulator.state.has_project(project_id):
            raise Reject(
                403,
                "MSS.00000003",
                f"Project {project_id} does not exist or you have no permission on it.",
            )
        return project_id, parse_list_params(parse_qsl(query, keep_blank_values=True))

    def _list(
        self, simulator: SimulatorServer, config: SimulatorConfig, project_id: str, params: ListParams
    ) -> None:
        """Answer an admitted list request: a drawn fault, or the page (hostile, corrupted or cut
        short as configured)."""
        app_user = self.headers.get("X-App-UserId") or None
        fault = simulator._draw_fault()
        if fault in _FAULT_ANSWERS:
            status, answer, content_type, headers = _FAULT_ANSWERS[fault]
            self._send(status, answer, content_type, headers)
            return
        if fault == "stall":
            time.sleep(config.stall_seconds)
        if config.hostile_paging and (params.offset > 0 or params.windowed):
            simulator.state.hostile_mutation(project_id, params, app_user)
        page = simulator.state.list_page(project_id, params, app_user)
        if config.quirks:
            page = corrupt_page(page, config.quirks)
        if fault == "truncated":
            page = page[: max(1, len(page) // 2)]
        self._send(200, page)


class SimulatorServer:
    """A MetaStudio stand-in on loopback: ``with SimulatorServer(cfg) as sim: sim.url``.

    ``start()`` serves from a background (daemon) thread and returns self;
    ``stop()`` shuts the listener and every open connection.

    ``admin_token`` (random per instance unless given) authorizes the admin calls that change
    state (``X-Sim-Admin-Token`` header, JSON content type); :meth:`admin` makes one.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        admin_token: str | None = None,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.admin_token: str = admin_token or secrets.token_urlsafe(32)
        self.state = SimulatorState(self.config)
        self._host, self._port = host, port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._by_status: dict[int, int] = {}
        self._faults: dict[str, int] = {}
        self._fault_rng = random.Random(self.config.seed * 7_919 + 3)
        self._bucket = _TokenBucket(self.config.rate_limit) if self.config.rate_limit else None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> SimulatorServer:
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="metastudio-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_open_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the simulator is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765`` (what a client's endpoint setting takes)."""
        host = self._host if ":" not in self._host else f"[{self._host}]"
        return f"http://{host}:{self.port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers an admin call that changes state needs (content type and admin token)."""
        return {"Content-Type": "application/json", ADMIN_TOKEN_HEADER: self.admin_token}

    def admin(
        self, path: str, body: dict | None = None, *, method: str = "POST", timeout: float = 120
    ) -> object:
        """Make an admin call over HTTP and return its decoded JSON answer; raises on an error status.

        ``sim.admin("/_sim/advance?seconds=3600")``, ``sim.admin("/_sim/config", {"latency_ms": 5})``,
        ``sim.admin("/_sim/stats", method="GET")``.
        """
        content = orjson.dumps(body if body is not None else {}) if method not in READ_ONLY_METHODS else None
        headers = self.admin_headers if content is not None else {}
        response = httpx.request(method, self.url + path, content=content, headers=headers, timeout=timeout)
        response.raise_for_status()
        return response.json()

    # ------------------------------------------------------------ behaviour
    def configure(self, **changes) -> None:
        """Change run-time behaviour: latency_ms, fault_rate, faults, rate_limit, stall_seconds, hostile_paging."""
        unknown = set(changes) - set(_RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)} at run time; allowed: {list(_RUNTIME_FIELDS)}")
        for name in ("faults", "quirks"):
            if name in changes:
                changes[name] = tuple(changes[name])
        with self._lock:
            self.config = dataclasses.replace(self.config, **changes)
            if "rate_limit" in changes:
                self._bucket = _TokenBucket(self.config.rate_limit) if self.config.rate_limit else None

    def runtime_config(self) -> dict:
        return {name: getattr(self.config, name) for name in _RUNTIME_FIELDS}

    def _throttle(self) -> float:
        bucket = self._bucket
        return bucket.take() if bucket is not None else 0.0

    def _draw_fault(self) -> str | None:
        config = self.config
        if config.fault_rate <= 0:
            return None
        with self._lock:
            if self._fault_rng.random() >= config.fault_rate:
                return None
            kind = self._fault_rng.choice(config.faults)
        self._count_fault(kind)
        return kind

    def _count(self, status: int) -> None:
        with self._lock:
            self._by_status[status] = self._by_status.get(status, 0) + 1

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] = self._faults.get(kind, 0) + 1

    @property
    def stats(self) -> dict:
        """Snapshot: ``{"requests", "by_status": {status: n}, "faults": {kind: n}, "hostile_mutations"}``.

        Fault kinds are those of :data:`~pipelines.simulator.config.FAULT_KINDS` plus
        ``rate_limit`` for requests refused by the token bucket. Admin calls are not counted.
        """
        with self._lock:
            by_status = dict(self._by_status)
            faults = dict(self._faults)
        return {
            "requests": sum(by_status.values()),
            "by_status": by_status,
            "faults": faults,
            "hostile_mutations": self.state.hostile_mutations,
        }
