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
import hmac
import math
import random
import re
import secrets
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import httpx
import orjson

from pipelines.metastudio import auth

from .config import SimulatorConfig
from .params import ParamError, parse_list_params
from .quirks import corrupt_page
from .state import SimulatorState

JSON_TYPE = "application/json;charset=UTF-8"
#: Header that carries :attr:`SimulatorServer.admin_token` on admin calls that change state.
ADMIN_TOKEN_HEADER = "X-Sim-Admin-Token"
_READ_ONLY_METHODS = ("GET", "HEAD")
_JOBS_PATH = re.compile(r"^/v1/([^/]+)/voice-training-manage/user/jobs/?$")
_MAX_SKEW_SECONDS = 15 * 60
_RUNTIME_FIELDS = ("latency_ms", "fault_rate", "faults", "rate_limit", "stall_seconds", "hostile_paging", "quirks")
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>API Gateway</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class _Reject(Exception):
    """An error answer: status, error_code, error_msg."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error_code": code, "error_msg": message})


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


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server on IPv4 or IPv6 that can close its keep-alive connections on stop,
    and treats clients hanging up mid-answer as normal (stalls and faults provoke it).

    The simulator serves on it; test servers that stand in front of the simulator do too."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):  # type: ignore[override]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        """Keep-alive connections would otherwise outlive the server."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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
            self._admin(path, query, body)
            return
        config = simulator.config
        if config.latency_ms:
            time.sleep(config.latency_ms / 1000)
        match = _JOBS_PATH.match(path)
        try:
            if not match:
                raise _Reject(404, "APIGW.0101", "The API does not exist or has not been published.")
            if self.command != "GET":
                raise _Reject(405, "APIGW.0101", f"Method {self.command} is not allowed on this API.")
            wait = simulator._throttle()
            if wait:
                simulator._count_fault("rate_limit")
                self._send(
                    429,
                    _error_body("APIGW.0308", "The throttling threshold has been reached."),
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
                return
            project_id = match.group(1)
            self._authenticate(simulator, path, query, body, project_id)
            if not simulator.state.has_project(project_id):
                raise _Reject(
                    403,
                    "MSS.00000003",
                    f"Project {project_id} does not exist or you have no permission on it.",
                )
            params = parse_list_params(parse_qsl(query, keep_blank_values=True))
        except _Reject as reject:
            self._send(reject.status, _error_body(reject.code, reject.message))
            return
        except ParamError as exc:
            self._send(400, _error_body("MSS.00000001", f"Invalid parameter: {exc}"))
            return
        app_user = self.headers.get("X-App-UserId") or None
        fault = simulator._draw_fault()
        if fault == "429":
            self._send(
                429,
                _error_body("APIGW.0308", "The throttling threshold has been reached."),
                headers={"Retry-After": "1"},
            )
            return
        if fault == "500":
            self._send(500, _error_body("MSS.00000002", "Internal server error, please try again later."))
            return
        if fault == "502":
            self._send(502, _BAD_GATEWAY_HTML, "text/html")
            return
        if fault == "503":
            self._send(503, _error_body("APIGW.0203", "Backend service unavailable, please try again later."))
            return
        if fault == "stall":
            time.sleep(config.stall_seconds)
        if config.hostile_paging and (params.offset > 0 or params.windowed):
            simulator.state.hostile_mutation(match.group(1), params, app_user)
        page = simulator.state.list_page(match.group(1), params, app_user)
        if config.quirks:
            page = corrupt_page(page, config.quirks)
        if fault == "truncated":
            page = page[: max(1, len(page) // 2)]
        self._send(200, page)

    # ------------------------------------------------------------------- auth
    def _authenticate(
        self, simulator: SimulatorServer, path: str, query: str, body: bytes, project_id: str
    ) -> None:
        config = simulator.config
        token = self.headers.get("X-Auth-Token")
        if token is not None:
            if token in config.expired_tokens:
                raise _Reject(401, "APIGW.0307", "The token has expired. Obtain a new token.")
            if not any(hmac.compare_digest(token, known) for known in config.tokens):
                raise _Reject(
                    401, "APIGW.0301", "Incorrect IAM authentication information: token verification failed."
                )
            return
        authorization = self.headers.get("Authorization")
        if authorization is None:
            raise _Reject(
                401,
                "APIGW.0301",
                "Incorrect IAM authentication information: no authentication information in the request.",
            )
        parts = auth.parse_authorization(authorization)
        if parts is None:
            raise _Reject(
                401, "APIGW.0301", "Incorrect IAM authentication information: malformed Authorization header."
            )
        access = parts["Access"]
        security_token: str | None = None
        if access in config.credentials:
            secret = config.credentials[access]
        elif access in config.temporary_credentials:
            secret, security_token = config.temporary_credentials[access]
        else:
            raise _Reject(
                401, "APIGW.0301", "Incorrect IAM authentication information: the access key does not exist."
            )
        headers = {name.lower(): value for name, value in self.headers.items()}
        signed = parts["SignedHeaders"].split(";")
        if "host" not in signed or "x-sdk-date" not in signed:
            raise _Reject(
                401,
                "APIGW.0301",
                "Incorrect IAM authentication information: host and x-sdk-date must be signed.",
            )
        missing = [name for name in signed if name not in headers]
        if missing:
            raise _Reject(
                401,
                "APIGW.0301",
                f"Incorrect IAM authentication information: signed header {missing[0]} is missing.",
            )
        sdk_date = headers["x-sdk-date"]
        try:
            signed_at = datetime.strptime(sdk_date, auth.DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise _Reject(
                401, "APIGW.0301", "Incorrect IAM authentication information: X-Sdk-Date is malformed."
            ) from None
        if abs((datetime.now(UTC) - signed_at).total_seconds()) > _MAX_SKEW_SECONDS:
            raise _Reject(
                401,
                "APIGW.0303",
                "Incorrect app authentication information: the request has expired (X-Sdk-Date is more than 15 minutes off).",
            )
        if security_token is not None:
            sent = headers.get("x-security-token")
            if sent is None or "x-security-token" not in signed:
                raise _Reject(
                    401,
                    "APIGW.0301",
                    "Incorrect IAM authentication information: temporary credentials need a signed X-Security-Token.",
                )
            if not hmac.compare_digest(sent, security_token):
                raise _Reject(
                    401,
                    "APIGW.0301",
                    "Incorrect IAM authentication information: the security token is invalid.",
                )
        pairs = auth.query_pairs(httpx.URL("http://simulator" + path + ("?" + query if query else "")))
        canonical = auth.canonical_request(self.command, path, pairs, headers, signed, body)
        expected = auth.signature(secret, sdk_date, canonical)
        if not hmac.compare_digest(expected, parts["Signature"]):
            raise _Reject(
                401,
                "APIGW.0301",
                "Incorrect IAM authentication information: the request signature does not match.",
            )
        sent_project = headers.get("x-project-id")
        if sent_project is not None and sent_project != project_id:
            raise _Reject(403, "MSS.00000003", "X-Project-Id does not match the project in the request path.")

    # ------------------------------------------------------------------ admin
    def _admin(self, path: str, query: str, body: bytes) -> None:
        simulator = self.server.simulator
        if self.client_address[0] not in ("127.0.0.1", "::1", "localhost"):
            self._send(
                403, _error_body("SIM.403", "Admin endpoints answer loopback clients only."), count=False
            )
            return
        args: dict = dict(parse_qsl(query, keep_blank_values=True))
        if self.command not in _READ_ONLY_METHODS:
            # Checked before anything is parsed or routed: a refused call changes nothing.
            if self.headers.get_content_type() != "application/json":
                self._send(
                    415,
                    _error_body(
                        "SIM.415", "Admin calls that change state take Content-Type: application/json."
                    ),
                    count=False,
                )
                return
            sent = (self.headers.get(ADMIN_TOKEN_HEADER) or "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(sent, simulator.admin_token.encode()):
                self._send(
                    403,
                    _error_body(
                        "SIM.403",
                        f"Admin calls that change state need the simulator's admin token in {ADMIN_TOKEN_HEADER}.",
                    ),
                    count=False,
                )
                return
        try:
            if path == "/_sim/advance" and self.command == "POST":
                fields = orjson.loads(body or b"{}")
                if not isinstance(fields, dict):
                    raise ValueError("advance body must be a JSON object")
                args.update(fields)
                seed_step = int(args["seed_step"]) if args.get("seed_step") is not None else None
                result = simulator.state.advance(float(args.get("seconds", "0")), seed_step=seed_step)
            elif path == "/_sim/truth" and self.command == "GET":
                project_id = args.get("project_id") or None
                result = simulator.state.truth(project_id)
            elif path == "/_sim/config" and self.command == "POST":
                changes = orjson.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("config body must be a JSON object")
                simulator.configure(**changes)
                result = simulator.runtime_config()
            elif path == "/_sim/stats" and self.command == "GET":
                result = simulator.stats
            else:
                self._send(404, _error_body("SIM.404", "No such admin endpoint."), count=False)
                return
        except (ValueError, TypeError, KeyError) as exc:
            self._send(400, _error_body("SIM.400", str(exc)), count=False)
            return
        self._send(200, orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS), count=False)


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
        content = orjson.dumps(body if body is not None else {}) if method not in _READ_ONLY_METHODS else None
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
