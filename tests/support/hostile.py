"""A hostile HTTP proxy on loopback: a test tool, not part of the product.

It sits in front of the simulator (or any plain-HTTP server) and forwards every request
unchanged: method, path, query and every header, ``Host`` included as the client sent it,
so AK/SK signatures (which cover ``host``) still verify upstream. On the way back it can
be told to misbehave::

    sim = make_simulator(**config)              # tests/support/simulators.py
    with HostileProxy(sim.url) as proxy:
        proxy.drip_seconds = 0.5          # any mode, any time, from any thread
        client = MetaStudioClient(proxy.url, auth, ...)
        ...
        assert len(proxy.requests) == 2

Modes (combinable; each request reads them when it arrives, a drip also on every byte):

``date_shift: timedelta | None``
    The upstream ``Date`` moved by this much (year 9999 / year 1 when it would overflow).
``date_header: str | None``
    A literal ``Date`` value instead, e.g. ``"Fri, 31 Dec 9999 23:59:59 GMT"`` or garbage.
``count_override: int | None``
    ``"count"`` of every 200 JSON body replaced, e.g. ``10**12``.
``drip_seconds: float | None``
    The body sent one byte every this many seconds (headers at once, honest Content-Length).
``endless_body: bool``
    A 200 chunked body that never ends (64 KiB chunks of JSON-looking bytes), not forwarded
    upstream; it stops when the client hangs up or the proxy stops.
``giant_field_bytes: int | None``
    The first job of every 200 page gets a string field (``giant_field_name``, default
    ``voice_name``) of this many bytes: valid JSON, a legal but huge field.
``out_of_window_job: dict | None``
    This job appended to every 200 page, ``count`` raised by one to match.
``page_hook: Callable[[str, dict], dict] | None``
    Called with the request's path and query and every decoded 200 page; its return value is
    sent instead (after the modes above). For misbehaviour no fixed mode describes, such as a
    listing that comes back empty once.

``requests`` lists the path and query of every request seen, in order; ``active_streams``
counts drips and endless bodies still being written (0 once clients have hung up).
"""

from __future__ import annotations

import http.client
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import orjson

from pipelines.simulator.server import LoopbackHTTPServer

CHUNK_BYTES = 64 * 1024
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
_MODES: dict[str, object] = {
    "date_shift": None,
    "date_header": None,
    "count_override": None,
    "drip_seconds": None,
    "endless_body": False,
    "giant_field_bytes": None,
    "giant_field_name": "voice_name",
    "out_of_window_job": None,
    "page_hook": None,
}
_LAST_DATE = "Fri, 31 Dec 9999 23:59:59 GMT"
_FIRST_DATE = "Mon, 01 Jan 0001 00:00:00 GMT"


def _mode(name: str) -> property:
    def get(self: HostileProxy):
        with self._lock:
            return self._modes[name]

    def set_(self: HostileProxy, value) -> None:
        with self._lock:
            self._modes[name] = value

    return property(get, set_, doc=f"Mode {name!r} (see the module docstring); thread-safe.")


class HostileProxy:
    """``with HostileProxy(upstream_url) as proxy: proxy.url``; modes are attributes (see the module)."""

    date_shift = _mode("date_shift")
    date_header = _mode("date_header")
    count_override = _mode("count_override")
    drip_seconds = _mode("drip_seconds")
    endless_body = _mode("endless_body")
    giant_field_bytes = _mode("giant_field_bytes")
    giant_field_name = _mode("giant_field_name")
    out_of_window_job = _mode("out_of_window_job")
    page_hook = _mode("page_hook")

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0, **modes) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the upstream must be a plain http:// URL, not {upstream!r}")
        self._upstream = (parts.hostname, parts.port or 80)
        self._address = (host, port)
        self._lock = threading.Lock()
        self._modes = dict(_MODES)
        self.configure(**modes)
        self.requests: list[str] = []
        self._streams = 0
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> HostileProxy:
        if self._httpd is None:
            self._stopping.clear()
            self._httpd = _Server(self._address, self)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="hostile-proxy", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; drips and endless bodies in flight end, their sockets are shut."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_open_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        deadline = time.monotonic() + 5  # streams wake at once on _stopping or on their shut socket
        while self.active_streams and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> HostileProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------ behaviour
    def configure(self, **modes) -> None:
        """Set several modes at once (atomically for requests arriving meanwhile)."""
        unknown = set(modes) - set(_MODES)
        if unknown:
            raise ValueError(f"unknown modes {sorted(unknown)}; known: {sorted(_MODES)}")
        with self._lock:
            self._modes.update(modes)

    def reset(self) -> None:
        """Every mode back to forwarding honestly (the request record is kept)."""
        with self._lock:
            self._modes = dict(_MODES)

    @property
    def active_streams(self) -> int:
        with self._lock:
            return self._streams

    def _snapshot(self) -> dict:
        with self._lock:
            return dict(self._modes)

    # ------------------------------------------------------------ serving
    def _serve(self, handler: _Handler) -> None:
        modes = self._snapshot()
        with self._lock:
            self.requests.append(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body_in = handler.rfile.read(length) if length > 0 else b""
        if modes["endless_body"]:
            self._send_endless(handler, modes)
            return
        try:
            status, reason, headers, body = self._forward(handler, body_in)
        except OSError as exc:
            message = f"<html><body>hostile proxy: upstream failed: {type(exc).__name__}</body></html>".encode()
            status, reason, headers, body = 502, "Bad Gateway", [("Content-Type", "text/html")], message
        if status == 200:
            body = _rewrite_page(body, modes, handler.path)
        handler.send_response_only(status, reason)
        for name, value in _rewrite_date(headers, modes):
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if modes["drip_seconds"]:
            self._drip(handler, body)
        else:
            handler.wfile.write(body)

    def _forward(self, handler: _Handler, body_in: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=300)
        try:
            # skip_host: the client's own Host goes upstream, as signed.
            conn.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
            for name, value in handler.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            conn.endheaders(body_in or None)
            response = conn.getresponse()
            body = response.read()
            headers = [
                (name, value)
                for name, value in response.getheaders()
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length"
            ]
            return response.status, response.reason, headers, body
        finally:
            conn.close()

    def _drip(self, handler: _Handler, body: bytes) -> None:
        with self._lock:
            self._streams += 1
        try:
            for i in range(len(body)):
                every = self.drip_seconds
                if not every:  # switched off mid-body: the rest at once
                    handler.wfile.write(body[i:])
                    return
                if self._stopping.wait(every):
                    handler.close_connection = True
                    return
                handler.wfile.write(body[i : i + 1])
        except OSError:  # the client hung up (its deadline): stop writing
            handler.close_connection = True
        finally:
            with self._lock:
                self._streams -= 1

    def _send_endless(self, handler: _Handler, modes: dict) -> None:
        handler.close_connection = True
        handler.send_response_only(200, "OK")
        handler.send_header("Content-Type", "application/json;charset=UTF-8")
        handler.send_header("Transfer-Encoding", "chunked")
        for name, value in _rewrite_date([("Date", format_datetime(datetime.now(UTC), usegmt=True))], modes):
            handler.send_header(name, value)
        handler.end_headers()
        with self._lock:
            self._streams += 1
        try:
            _write_chunk(handler, b'{"count": 1, "jobs": [')
            while not self._stopping.is_set():
                if not self.endless_body:  # switched off: end the body as valid JSON
                    _write_chunk(handler, b'{"job_id": "endless-last"}]}')
                    handler.wfile.write(b"0\r\n\r\n")
                    return
                _write_chunk(handler, _ENDLESS_CHUNK)
        except OSError:  # the client hung up (its size cap): stop writing
            pass
        finally:
            with self._lock:
                self._streams -= 1


def _endless_chunk() -> bytes:
    head, tail = b'{"job_id": "endless", "voice_name": "', b'"},'
    return head + b"a" * (CHUNK_BYTES - len(head) - len(tail)) + tail


_ENDLESS_CHUNK = _endless_chunk()


def _write_chunk(handler: _Handler, data: bytes) -> None:
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def _rewrite_date(headers: list[tuple[str, str]], modes: dict) -> list[tuple[str, str]]:
    literal, shift = modes["date_header"], modes["date_shift"]
    if literal is None and shift is None:
        return headers
    kept = [(name, value) for name, value in headers if name.lower() != "date"]
    original = next((value for name, value in headers if name.lower() == "date"), None)
    if literal is not None:
        return [*kept, ("Date", literal)]
    try:
        base = parsedate_to_datetime(original) if original else datetime.now(UTC)
    except (TypeError, ValueError):
        base = datetime.now(UTC)
    try:
        value = format_datetime((base + shift).astimezone(UTC), usegmt=True)
    except OverflowError:
        value = _LAST_DATE if shift > timedelta(0) else _FIRST_DATE
    return [*kept, ("Date", value)]


def _rewrite_page(body: bytes, modes: dict, target: str = "") -> bytes:
    count, extra, giant = modes["count_override"], modes["out_of_window_job"], modes["giant_field_bytes"]
    hook = modes["page_hook"]
    if count is None and extra is None and not giant and hook is None:
        return body
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(page, dict) or not isinstance(page.get("jobs", []), list):
        return body
    jobs = list(page.get("jobs") or [])
    if extra is not None:
        jobs.append(dict(extra))
        page["count"] = (page.get("count") or 0) + 1
    if giant and jobs:
        jobs[0] = {**jobs[0], modes["giant_field_name"]: "x" * giant}
    page["jobs"] = jobs
    if count is not None:
        page["count"] = count
    if hook is not None:
        page = hook(target, page)
    return orjson.dumps(page)


class _Server(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], proxy: HostileProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle keep-alive connection does not hold a thread for ever
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        return

    def do_GET(self) -> None:
        self.server.proxy._serve(self)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET
