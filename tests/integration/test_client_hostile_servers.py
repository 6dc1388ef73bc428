"""MetaStudioClient against real servers that misbehave: a TLS listener whose certificate cannot
be verified, and the hostile proxy (tests/support/hostile.py) in front of the simulator, which
drips bodies, sends endless ones, rewrites counts, pages and the ``Date`` header.

The bounds themselves (one deadline per attempt, a size cap, the source's clock within reason,
names that do not resolve) are tested on a mock transport in tests/unit/test_client_limits.py.
No test holds a wall-clock threshold: real time only appears as a generous hang guard
(``HANG_GUARD``) that fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pipelines.metastudio.auth import AKSKAuth, TokenAuth
from pipelines.metastudio.client import MetaStudioClient, Page
from pipelines.metastudio.errors import (
    CertificateError,
    EndpointUnreachableError,
    ResponseTooLargeError,
    RetriesExhaustedError,
)
from pipelines.metastudio.transport import HttptoolsTransport
from tests.support.client_runs import HANG_GUARD, list_once, run
from tests.support.clock import FakeClock
from tests.support.hostile import HostileProxy

TOKEN = "IAM-TOKEN-VALUE-0002"
SKEW = 300.0


# ---------------------------------------------------------------- a certificate that cannot be verified


class SelfSignedServer:
    """A TLS listener on loopback with a self-signed certificate; counts connections, serves nothing."""

    def __init__(self, tmp_path) -> None:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60,
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused the certificate
            finally:
                conn.close()

    def __enter__(self) -> SelfSignedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                    reason="needs the openssl command to make a certificate")
def test_a_certificate_that_cannot_be_verified_is_one_attempt_naming_the_host(tmp_path):
    clock = FakeClock()
    with SelfSignedServer(tmp_path) as server:
        client = MetaStudioClient(
            f"https://127.0.0.1:{server.port}", TokenAuth(TOKEN), max_attempts=6, sleep=clock.sleep,
            monotonic=clock.monotonic,
        )
        with pytest.raises(CertificateError) as info:
            run(list_once(client))
        connections = server.connections
    assert connections == 1 and client.stats.requests == 1 and clock.sleeps == []
    text = str(info.value)
    assert "'127.0.0.1'" in text and "the TLS certificate could not be verified: self" in text
    assert "check the endpoint or the machine's CA certificates" in text and TOKEN not in text
    assert info.value.host == "127.0.0.1" and "\n" not in text


# ---------------------------------------------------------------- a server that drops idle connections


class OneAnswerServer:
    """Plain HTTP on loopback that answers one request per connection with an empty page, as
    if it kept the connection alive (HTTP/1.1, no ``Connection: close``), then closes it."""

    BODY = b'{"count": 0, "jobs": []}'

    def __init__(self, body: bytes = BODY, headers: bytes = b"", interim: bytes = b"") -> None:
        self.body, self.headers = body, headers
        self.interim = interim  # sent before the answer: an interim (1xx) answer, or nothing
        self.requests: list[bytes] = []  # each request's line and headers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    #: Whether a connection stays open for the next request (KeepAliveServer) or is closed
    #: after one answer.
    keep_alive = False

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.keep_alive:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
            else:
                self._answer(conn)
                self.closed.set()

    def _answer(self, conn: socket.socket) -> None:
        """Answer each request of ``conn`` with the page, one only unless ``keep_alive``."""
        with conn:
            conn.settimeout(HANG_GUARD)
            pending = b""
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                pending += chunk
                while b"\r\n\r\n" in pending:
                    request, pending = pending.split(b"\r\n\r\n", 1)
                    self.requests.append(request)
                    conn.sendall(self.interim + b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s"
                                 b"Content-Length: %d\r\n\r\n%s" % (self.headers, len(self.body), self.body))
                    if not self.keep_alive:
                        return

    def __enter__(self) -> OneAnswerServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() waiting in the thread
        self.sock.close()
        self._thread.join(timeout=HANG_GUARD)


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    """The pool sees that the server closed an idle keep-alive connection and opens a new one:
    the next request goes through at its first attempt, with no broken connection to retry."""
    clock = FakeClock()

    async def two_requests(client: MetaStudioClient, server: OneAnswerServer) -> list[Page]:
        async with client:
            first = await client.list_jobs("proj-1", {})
            await asyncio.to_thread(server.closed.wait, HANG_GUARD)  # the server has closed it
            for _ in range(3):
                await asyncio.sleep(0)  # the event loop takes in the end of the stream
            return [first, await client.list_jobs("proj-1", {})]

    with OneAnswerServer() as server:
        client = MetaStudioClient(f"http://127.0.0.1:{server.port}", TokenAuth(TOKEN), max_attempts=3,
                                  sleep=clock.sleep, monotonic=clock.monotonic)
        pages = run(two_requests(client, server))
        connections = server.connections
    assert [(p.count, p.jobs) for p in pages] == [(0, []), (0, [])]
    assert connections == 2 and client.stats.requests == 2
    assert dict(client.stats.retries) == {} and clock.sleeps == []


class KeepAliveServer(OneAnswerServer):
    """Plain HTTP on loopback that answers every request of a connection with an empty page and
    keeps the connection open, as the API does."""

    keep_alive = True


def test_requests_one_after_another_share_one_kept_alive_connection():
    """A connection the server keeps open carries the next request: one connection for five."""

    async def five(client: MetaStudioClient) -> list[Page]:
        async with client:
            return [await client.list_jobs("proj-1", {}) for _ in range(5)]

    with KeepAliveServer() as server:
        pages = run(five(MetaStudioClient(f"http://127.0.0.1:{server.port}", TokenAuth(TOKEN))))
        assert [p.count for p in pages] == [0] * 5
        assert len(server.requests) == 5 and server.connections == 1


def test_a_connection_idle_past_the_keepalive_expiry_is_closed_not_reused():
    """Idle for longer than httpx's keep-alive expiry (5 s), a connection may have been dropped
    on the way without a word: the next request opens a new one. Within it, it is reused."""
    clock = FakeClock()
    transport = HttptoolsTransport(verify=False, limits=httpx.Limits(max_connections=2), monotonic=clock.monotonic)

    async def requests(url: str) -> list[int]:
        statuses = []
        async with httpx.AsyncClient(transport=transport) as http:
            for wait in (0.0, 4.0, 6.0):
                clock.now += wait
                statuses.append((await http.get(url)).status_code)
        return statuses

    with KeepAliveServer() as server:
        assert run(requests(f"http://127.0.0.1:{server.port}/")) == [200, 200, 200]
        assert len(server.requests) == 3 and server.connections == 2


def test_the_request_line_carries_the_query_as_signed_and_only_the_headers_httpx_set():
    """The transport sends the URL's bytes as signed (not re-quoted), and the headers httpx
    built for the request, once each, none of its own."""
    params = {"create_since": datetime(2026, 3, 1, 0, 0, tzinfo=UTC), "job_type": "a b/c", "limit": 7}
    with OneAnswerServer() as server:
        client = MetaStudioClient(f"http://127.0.0.1:{server.port}", TokenAuth(TOKEN))
        run(list_once(client, params))
        url = httpx.URL(client.jobs_url("proj-1", params))
    request_line, *header_lines = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert request_line == b"GET " + url.raw_path + b" HTTP/1.1"
    assert b"%3A" in url.raw_path and b"a%20b%2Fc" in url.raw_path
    headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in header_lines]
    assert sorted(name.lower() for name, _ in headers) == [
        b"accept", b"accept-encoding", b"connection", b"host", b"user-agent", b"x-auth-token", b"x-project-id"]
    assert dict((name.lower(), value) for name, value in headers)[b"user-agent"].startswith(b"python-httpx/")


@pytest.mark.parametrize("app_user_id", ["user\r\nX-Injected: 1", "user\nX-Injected: 1", "user\x00"])
def test_a_header_value_with_a_line_break_is_refused_and_nothing_is_sent(app_user_id):
    """A configured value that would end the header early (METASTUDIO_APP_USER_ID with a line
    break) never reaches the server: the request fails as a local protocol error."""
    with KeepAliveServer() as server:
        client = MetaStudioClient(f"http://127.0.0.1:{server.port}", TokenAuth(TOKEN), app_user_id=app_user_id)
        with pytest.raises(httpx.LocalProtocolError):
            run(list_once(client))
        assert server.requests == []


@pytest.mark.parametrize("interim", [b"HTTP/1.1 100 Continue\r\n\r\n",
                                     b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"])
def test_an_interim_answer_is_skipped_for_the_page_after_it(interim):
    """A 1xx answer before the real one (early hints from a CDN) is not the page: the page is."""
    with KeepAliveServer(b'{"count": 1, "jobs": [{"job_id": "j1"}]}', interim=interim) as server:
        page = run(list_once(MetaStudioClient(f"http://127.0.0.1:{server.port}", TokenAuth(TOKEN), max_attempts=1)))
    assert (page.count, [job["job_id"] for job in page.jobs]) == (1, ["j1"])


def test_a_refused_header_does_not_keep_a_connection_slot():
    """With one connection allowed, requests refused for a header with a line break still leave
    the slot free: the next good request goes through (it would wait forever for a leaked one)."""
    transport = HttptoolsTransport(verify=False, limits=httpx.Limits(max_connections=1))

    async def bad_then_good(url: str) -> int:
        async with httpx.AsyncClient(transport=transport) as http:
            for _ in range(2):
                with pytest.raises(httpx.LocalProtocolError):
                    await http.get(url, headers={"X-App-UserId": "u\r\nX-Injected: 1"})
            return (await http.get(url)).status_code

    with KeepAliveServer() as server:
        assert run(bad_then_good(f"http://127.0.0.1:{server.port}/")) == 200
        assert len(server.requests) == 1


def test_a_compressed_page_is_decoded_and_capped_by_what_it_decoded():
    """A gzip-encoded body is decoded (httpx decodes what the transport hands over undecoded);
    the size cap counts the decoded bytes, so a small compressed bomb is cut as a big page."""
    import gzip

    page = b'{"count": 1, "jobs": [{"job_id": "j1", "create_time": 1772323200}]}'
    with OneAnswerServer(gzip.compress(page), b"Content-Encoding: gzip\r\n") as server:
        decoded = run(list_once(MetaStudioClient(f"http://127.0.0.1:{server.port}", TokenAuth(TOKEN))))
    assert (decoded.count, [job["job_id"] for job in decoded.jobs]) == (1, ["j1"])
    bomb = b'{"count": 0, "jobs": [], "pad": "' + b" " * (4 * 1024 * 1024) + b'"}'
    with OneAnswerServer(gzip.compress(bomb), b"Content-Encoding: gzip\r\n") as server:
        client = MetaStudioClient(f"http://127.0.0.1:{server.port}", TokenAuth(TOKEN), max_response_bytes=1024 * 1024)
        with pytest.raises(ResponseTooLargeError):
            run(list_once(client))
    assert len(gzip.compress(bomb)) < 64 * 1024 < client.stats.bytes_received


def test_a_refused_connection_is_retried_then_named():
    """Nothing listens on the port: each attempt is refused, and the error says so."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    clock = FakeClock()
    client = MetaStudioClient(f"http://127.0.0.1:{port}", TokenAuth(TOKEN), max_attempts=3, sleep=clock.sleep,
                              monotonic=clock.monotonic)
    with pytest.raises(EndpointUnreachableError) as info:
        run(list_once(client))
    assert client.stats.requests == 3 and len(clock.sleeps) == 2
    assert "connection refused" in str(info.value) and "'127.0.0.1'" in str(info.value)


# ---------------------------------------------------------------- the hostile proxy, in front of a real simulator

SIM_NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SIM_PROJECT = "3c4d5e6f708192a3b4c5d6e7f8091a2b"


@pytest.fixture(scope="module")
def simulator(make_module_simulator):
    return make_module_simulator(jobs=300, seed=7, days=5, projects=(SIM_PROJECT,), now=SIM_NOW)


@pytest.fixture
def proxy(simulator):
    with HostileProxy(simulator.url) as hostile:
        yield hostile


def proxied_client(simulator, proxy: HostileProxy, **kwargs) -> MetaStudioClient:
    ak, sk = next(iter(simulator.config.credentials.items()))
    kwargs.setdefault("timeout", 5.0)
    return MetaStudioClient(proxy.url, AKSKAuth(ak, sk), **kwargs)


def list_through(simulator, proxy: HostileProxy, params=None, **kwargs) -> tuple[Page, MetaStudioClient]:
    client = proxied_client(simulator, proxy, **kwargs)

    async def main():
        async with client:
            return await client.list_jobs(SIM_PROJECT, params or {})

    return run(main()), client


def wait_for_hang_up(proxy: HostileProxy) -> None:
    """The proxy's stream noticed the client hung up (polled; the guard only catches a stream that never stops)."""
    deadline = time.monotonic() + HANG_GUARD
    while proxy.active_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.active_streams == 0


def test_the_proxy_forwards_signed_requests_unchanged(simulator, proxy):
    page, client = list_through(simulator, proxy, {"limit": 7, "sort_dir": "asc"})
    assert page.count == len(simulator.state.truth(SIM_PROJECT)) and len(page.jobs) == 7
    assert page.server_time == SIM_NOW  # the check is off by default: the simulator's clock is the source's
    url = httpx.URL(client.jobs_url(SIM_PROJECT, {"limit": 7, "sort_dir": "asc"}))
    assert proxy.requests == [url.raw_path.decode()]


def test_the_proxy_rewrites_pages_as_told(simulator, proxy):
    far_job = {"job_id": "from-year-9999", "create_time": 253402214400000, "state": "SUCCEED"}
    proxy.configure(count_override=10**12, giant_field_bytes=2_000_000)
    page, _ = list_through(simulator, proxy, {"limit": 3})
    assert page.count == 10**12 and len(page.jobs[0]["voice_name"]) == 2_000_000
    proxy.reset()
    proxy.out_of_window_job = far_job
    honest = len(simulator.state.truth(SIM_PROJECT))
    page, _ = list_through(simulator, proxy, {"limit": 3})
    assert page.count == honest + 1 and page.jobs[-1] == far_job and len(page.jobs) == 4


def test_a_dripping_proxy_is_cut_by_the_attempt_deadline(simulator, proxy):
    proxy.drip_seconds = 0.5  # a 100-job page would take half a day
    client = proxied_client(simulator, proxy, timeout=1.0, max_attempts=2, max_retry_seconds=10.0,
                            backoff_base=0.01)

    async def main():
        async with client:
            await client.list_jobs(SIM_PROJECT, {})

    with pytest.raises(RetriesExhaustedError) as info:
        run(main())
    assert info.value.attempts == 2 and len(proxy.requests) == 2
    assert dict(client.stats.retries) == {"timeout": 2} and "timeout" in str(info.value)
    wait_for_hang_up(proxy)


def test_the_proxy_stops_cleanly_with_a_drip_in_flight(simulator):
    proxy = HostileProxy(simulator.url, drip_seconds=1.0).start()
    client = proxied_client(simulator, proxy, timeout=HANG_GUARD, max_attempts=1)

    async def main():
        async with client:
            request = asyncio.create_task(client.list_jobs(SIM_PROJECT, {}))
            while not proxy.active_streams:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(proxy.stop)
            with pytest.raises(RetriesExhaustedError, match="connection"):
                await request

    run(main())
    assert proxy.active_streams == 0 and len(proxy.requests) == 1


def test_an_endless_body_from_the_proxy_stops_at_the_size_cap(simulator, proxy):
    proxy.endless_body = True
    cap = 1024 * 1024
    with pytest.raises(ResponseTooLargeError) as info:
        list_through(simulator, proxy, max_response_bytes=cap)
    assert len(proxy.requests) == 1 and info.value.cap == cap
    wait_for_hang_up(proxy)


def test_an_endless_body_never_holds_more_than_the_cap_and_one_read(simulator, proxy):
    proxy.endless_body = True
    cap = 512 * 1024
    client = proxied_client(simulator, proxy, max_response_bytes=cap)

    async def main():
        async with client:
            await client.list_jobs(SIM_PROJECT, {})

    with pytest.raises(ResponseTooLargeError):
        run(main())
    assert cap < client.stats.bytes_received <= cap + 64 * 1024  # one network read past the cap at most


@pytest.mark.parametrize(
    ("mode", "value", "skewed"),
    [
        ("date_shift", -(SIM_NOW - datetime(2000, 1, 1, tzinfo=UTC)), True),
        ("date_shift", timedelta(days=365 * 30), True),
        ("date_header", "Fri, 31 Dec 9999 23:59:59 GMT", True),
        ("date_header", "Sat, 01 Jan 10000 00:00:00 GMT", False),
        ("date_header", "garbage", False),
        ("date_shift", timedelta(seconds=30), False),
    ],
)
def test_a_rewritten_date_is_caught_as_skew_through_a_real_client(simulator, proxy, mode, value, skewed):
    setattr(proxy, mode, value)
    page, client = list_through(simulator, proxy, {"limit": 1}, max_clock_skew_seconds=SKEW,
                                wall_clock=lambda: SIM_NOW)
    assert page.jobs  # the page itself is fine
    if skewed:
        assert client.clock_skew is not None and abs(client.clock_skew) > timedelta(days=365 * 25)
        assert client.server_now() == SIM_NOW and page.server_time is None
    elif mode == "date_shift":  # within the bound: the (shifted) Date is the source's clock
        assert client.clock_skew is None and page.server_time == SIM_NOW + value
    else:  # unreadable: ignored
        assert client.clock_skew is None and page.server_time is None and client.server_now() == SIM_NOW
