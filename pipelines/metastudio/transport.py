"""The client's HTTP transport: httpx's, with connections made by asyncio's own streams.

httpx's default transport reaches sockets through anyio, and its connection pool asks every
idle connection, at every request and every response closed, whether the server has dropped
it: through anyio, each question built a table of the socket's attributes and polled the
socket. At eight connections that bookkeeping was a quarter of the event loop's time in a
100,000-job sync (the loop being what limits it). :class:`AsyncioBackend` is httpcore's
network-backend interface (``httpcore.AsyncNetworkBackend``) on asyncio streams, where the
answer is the stream's own state. Errors are httpcore's, raised from the OS or TLS error as
with anyio, so :mod:`pipelines.metastudio.network` reads the same causes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Iterable
from contextlib import nullcontext
from typing import Any

import httpcore
import httpx
from httpcore._backends.base import SOCKET_OPTION

_CONNECT_ERRORS = {TimeoutError: httpcore.ConnectTimeout, OSError: httpcore.ConnectError}
_READ_ERRORS = {TimeoutError: httpcore.ReadTimeout, OSError: httpcore.ReadError}
_WRITE_ERRORS = {TimeoutError: httpcore.WriteTimeout, OSError: httpcore.WriteError}


class _Mapped:
    """``with _Mapped(errors):`` re-raises a listed error as its httpcore counterpart, from it."""

    def __init__(self, errors: dict[type[Exception], type[Exception]]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        for source, target in self.errors.items():
            if isinstance(exc, source):
                raise target(str(exc) or type(exc).__name__) from exc
        return False


def _deadline(timeout: float | None):
    return asyncio.timeout(timeout) if timeout is not None else nullcontext()


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection, as an asyncio StreamReader and StreamWriter."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _Mapped(_READ_ERRORS):
            async with _deadline(timeout):
                return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with _Mapped(_WRITE_ERRORS):
            async with _deadline(timeout):
                self._writer.write(buffer)
                await self._writer.drain()

    async def aclose(self) -> None:
        transport = self._writer.transport
        if not transport.is_closing():
            transport.close()
            await asyncio.sleep(0)  # a chance to flush, then no waiting on the peer
        transport.abort()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncioStream:
        with _Mapped(_CONNECT_ERRORS):
            async with _deadline(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of idle connections only: the server closed it, or broke it.
            return self._reader.at_eof() or self._reader.exception() is not None
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections for httpcore's pool, opened with asyncio.open_connection."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[SOCKET_OPTION] | None = None) -> AsyncioStream:
        local = (local_address, 0) if local_address else None
        return await self._connect(asyncio.open_connection(host, port, local_addr=local), timeout, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[SOCKET_OPTION] | None = None) -> AsyncioStream:
        return await self._connect(asyncio.open_unix_connection(path), timeout, socket_options)

    @staticmethod
    async def _connect(opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
                       timeout: float | None, socket_options: Iterable[SOCKET_OPTION] | None) -> AsyncioStream:
        with _Mapped(_CONNECT_ERRORS):
            async with _deadline(timeout):
                reader, writer = await opening
            sock = writer.get_extra_info("socket")
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def asyncio_transport(*, verify: bool, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's HTTP/1.1 transport (TLS set up by httpx, ``verify`` as for a client) whose pool
    connects through :class:`AsyncioBackend`. httpx does not take a network backend, so the
    pool it built is replaced by an equal one that does, sharing its TLS context (the
    certificate store is loaded once)."""
    ssl_context = httpx.create_ssl_context(verify=verify)
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits, http2=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=AsyncioBackend(),
    )
    return transport
