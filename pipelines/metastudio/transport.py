"""The client's HTTP transport: httpx's interface, HTTP/1.1 parsed in C by httptools.

The client speaks httpx (requests, auth, responses, errors), and a transport is httpx's seam
for how a request reaches the server: tests hand the client an ``httpx.MockTransport``, a
sync gets :class:`HttptoolsTransport`. httpcore's pure-Python pool and h11 parser were most of
the event loop's time per request, and the event loop is what limits a sync: at eight
connections to a local simulator, a page request cost 1.9-2.3 ms of CPU with httpx's own
transport, JSON decoding included (``benchmarks/transport.py`` times both).

This transport keeps what the client asks of HTTP and nothing more: GET and small bodies over
keep-alive connections (plain, or TLS verified as httpx verifies it), at most
``limits.max_connections`` of them. A request goes out as httpx built and signed it (its
headers, once each, none added; the URL's bytes as signed). The response body is handed back
as it came, so httpx decodes any content encoding and the client's size cap counts what it
decoded, a read at a time of at most :data:`READ_BYTES`; a connection stops reading while that
much waits unread. Errors come back as httpx's, raised from the OS or TLS error that caused
them, so :mod:`pipelines.metastudio.network` reads the same causes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from typing import Any

import httptools
import httpx

#: Bytes handed over per read of a body at most, and unread bytes a connection holds before it
#: stops reading: the client's size cap is overshot by one read at most.
READ_BYTES = 64 * 1024


def _deadline(seconds: float | None):
    return asyncio.timeout(seconds) if seconds is not None else nullcontext()


def _head(request: httpx.Request) -> bytes:
    """The request line and headers as sent. A header whose name or value holds a line break or a
    NUL would end the header early and smuggle in another (httpx lets such values through): it
    is refused as httpx.LocalProtocolError, as httpx's own transport refuses it."""
    lines = [b"%s: %s" % (name, value) for name, value in request.headers.raw]
    content = request.content
    if content and "content-length" not in request.headers:
        lines.append(b"Content-Length: %d" % len(content))
    headers = b"\r\n".join(lines)
    if headers.count(b"\n") != len(lines) - 1 or headers.count(b"\r") != len(lines) - 1 or b"\0" in headers:
        raise httpx.LocalProtocolError("a request header holds a line break or a NUL; it was not sent")
    return b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (request.method.encode("ascii"), request.url.raw_path, headers)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request at a time, its response parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None
        self.closed = False
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.reset()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"the answer is not HTTP/1.1 ({exc})"))
        if self.buffered >= READ_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self.head_done and not self.complete and self._ends_at_close():
            self.complete = True  # a body without a length runs to the end of the connection
        if not self.complete and self.error is None:
            error = httpx.ReadError(str(exc) or type(exc).__name__) if exc else httpx.RemoteProtocolError(
                "the server closed the connection before its answer was complete")
            if exc is not None:
                error.__cause__ = exc
            self.error = error
        self._wake()

    def _ends_at_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # -- httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # an interim answer (100 Continue): the real one follows
            self.headers, self.reason, self.head_done = [], b"", False
            return
        # Asked now: once the message is complete, the parser answers for the next one.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True

    # -- used by the transport
    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until something arrives, the connection ends, or ``timeout`` (httpx.ReadTimeout)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with _deadline(timeout):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout("no data from the server within the read timeout") from None
        finally:
            self._waiter = None

    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and not self.closed and self.error is None and not self.body
                and self.transport is not None
                and not self.transport.is_closing())

    def reset(self) -> None:
        """Ready for the next answer: a new parser, nothing of the last answer kept."""
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.head_done = self.complete = self.keep_alive = False

    def take(self) -> bytes:
        """What the body holds so far, at most READ_BYTES of it."""
        chunk = self.body.popleft()
        if len(chunk) > READ_BYTES:
            self.body.appendleft(chunk[READ_BYTES:])
            chunk = chunk[:READ_BYTES]
        self.buffered -= len(chunk)
        if self.paused and self.buffered < READ_BYTES and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Body(httpx.AsyncByteStream):
    """A response body as the connection receives it; the connection goes back to the pool
    once the body was read to its end, and is closed when it was abandoned."""

    def __init__(self, transport: HttptoolsTransport, key: tuple[str, str, int], conn: _Connection,
                 read_timeout: float | None) -> None:
        self._transport, self._key, self._conn, self._read_timeout = transport, key, conn, read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.body:
                yield conn.take()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_timeout)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._key, self._conn)


class HttptoolsTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections, at most ``limits.max_connections`` at once, TLS verified
    as httpx verifies it when ``verify``. A connection idle for longer than
    ``limits.keepalive_expiry`` (httpx's default: 5 s) is closed instead of reused, as httpx's
    own pool does: a server or a load balancer may have dropped it without a word."""

    def __init__(self, *, verify: bool, limits: httpx.Limits, monotonic: Callable[[], float] = time.monotonic) -> None:
        # httpx's context (its certificate store), loaded once, and only for an https endpoint.
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._slots_count = limits.max_connections or 100
        self._expiry = limits.keepalive_expiry
        self._monotonic = monotonic
        self._slots: asyncio.Semaphore | None = None
        # Per (scheme, host, port): the idle connections, each with when it became idle.
        self._idle: dict[tuple[str, str, int], list[tuple[_Connection, float]]] = {}
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context(verify=self._verify)
        return self._ssl

    async def _connect(self, key: tuple[str, str, int], timeout: float | None) -> _Connection:
        scheme, host, port = key
        tls = self._ssl_context() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with _deadline(timeout):
                _, conn = await loop.create_connection(_Connection, host, port, ssl=tls,
                                                       server_hostname=host if tls else None)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within the connect timeout") from None
        except OSError as exc:  # refused, unresolvable, a TLS handshake that failed
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn

    def _acquire_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = self._monotonic()
        while idle:
            conn, since = idle.pop()
            if conn.reusable() and (self._expiry is None or now - since <= self._expiry):
                conn.reset()
                return conn
            conn.close()
        return None

    def _release(self, key: tuple[str, str, int], conn: _Connection) -> None:
        if self._slots is not None:
            self._slots.release()
        if conn.reusable() and not self._closed:
            self._idle.setdefault(key, []).append((conn, self._monotonic()))
        else:
            conn.close()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        message = _head(request) + (request.content or b"")  # refused before a slot or connection is taken
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._slots_count)
        await self._slots.acquire()
        conn: _Connection | None = None
        try:
            conn = self._acquire_idle(key) or await self._connect(key, timeouts.get("connect"))
            assert conn.transport is not None
            conn.transport.write(message)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(timeouts.get("read"))
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return httpx.Response(
            conn.parser.get_status_code(),
            headers=conn.headers,
            stream=_Body(self, key, conn, timeouts.get("read")),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn, _ in conns:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # lets the connections' transports finish closing
