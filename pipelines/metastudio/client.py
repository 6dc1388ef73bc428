"""Async client for one MetaStudio endpoint: list voice-training jobs, one page per call.

The client owns everything about a single request: the URL form that is signed,
bounded retries with backoff, concurrency and rate limits, error translation and
the source's clock. It also holds its own against a hostile or broken server: each
attempt has a total deadline (a body dripped byte by byte cannot hold it), a body is
read up to a size cap and no further, a ``Date`` far from the local clock is not
believed, and failures no retry can mend (a name that does not resolve, a TLS
certificate that cannot be verified) end the request at the first attempt.

Windows, cursors and count reconciliation live in :mod:`pipelines.metastudio.paging`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random as _random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

import httpx

from pipelines.contract import PAGE_LIMIT
from pipelines.metastudio.auth import TokenAuth, canonical_query
from pipelines.metastudio.clock import DEFAULT_MAX_CLOCK_SKEW_SECONDS, SourceClock
from pipelines.metastudio.errors import (
    ConfigurationError,
    EndpointUnreachableError,
    MetaStudioError,
    ResponseTooLargeError,
    RetriesExhaustedError,
)
from pipelines.metastudio.network import connect_failure, is_loopback
from pipelines.metastudio.pacing import PACING_MARGIN, Pacing
from pipelines.metastudio.paging import format_time
from pipelines.metastudio.response import (
    DEFAULT_MAX_RESPONSE_BYTES,
    Page,
    content_length,
    failure_for_status,
    parse_page,
)
from pipelines.metastudio.retry import RETRY_CAUSES, OutOfBudget, Retryable, RetryBudget
from pipelines.metastudio.transport import HttptoolsTransport

__all__ = [
    "DEFAULT_MAX_CLOCK_SKEW_SECONDS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "PACING_MARGIN",
    "RETRY_CAUSES",
    "ClientStats",
    "MetaStudioClient",
    "Page",
]

log = logging.getLogger("voicejobs.client")
#: The headers every request carries before its own, as httpx's client would send them (that
#: client is not used: see MetaStudioClient._fetch). Host comes first, from the URL.
_DEFAULT_HEADERS = (
    ("Accept", "application/json"),
    ("Accept-Encoding", "gzip, deflate"),
    ("Connection", "keep-alive"),
    ("User-Agent", f"python-httpx/{httpx.__version__}"),
)


@dataclass
class ClientStats:
    """Counters of one client's life; ``wait_seconds`` sums HTTP time, backoff and pacing."""

    requests: int = 0
    pages: int = 0
    jobs: int = 0
    retries: collections.Counter = field(default_factory=collections.Counter)
    wait_seconds: float = 0.0
    backoff_seconds: float = 0.0
    bytes_received: int = 0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "pages": self.pages,
            "jobs": self.jobs,
            "retries": {cause: self.retries.get(cause, 0) for cause in RETRY_CAUSES}
            | {k: v for k, v in self.retries.items() if k not in RETRY_CAUSES},
            "retries_total": sum(self.retries.values()),
            "wait_seconds": round(self.wait_seconds, 3),
            "backoff_seconds": round(self.backoff_seconds, 3),
            "bytes_received": self.bytes_received,
        }


class MetaStudioClient(SourceClock, Pacing):
    """List voice-training jobs of MetaStudio projects with retries, throttling and honest errors.

    Bounds that hold whatever the server does:

    - ``timeout`` bounds a whole attempt (connect, send and the full body), and a request
      never takes longer than ``max_retry_seconds`` plus one ``timeout`` from its first send:
      a retry that could only start after the budget is not sent;
    - a body is read up to ``max_response_bytes`` and abandoned past it
      (:class:`ResponseTooLargeError`, not retried), so memory stays bounded;
    - a ``Date`` further than ``max_clock_skew_seconds`` from ``wall_clock()`` is not used as
      the source's clock; the largest such skew is kept in :attr:`clock_skew` (None: none seen)
      and logged once. ``max_clock_skew_seconds=None`` trusts every ``Date`` (a simulator
      whose clock is deliberately elsewhere).

    ``sleep``, ``monotonic``, ``jitter`` (uniform in [0, 1)) and ``wall_clock`` exist so tests can
    run the retry schedule and the source clock on fake clocks; production leaves them alone.

    The source clock is :class:`pipelines.metastudio.clock.SourceClock`, the rate cap and the
    pause a 429 asks for :class:`pipelines.metastudio.pacing.Pacing`, what an answer means
    :mod:`pipelines.metastudio.response`, why a connection failed :mod:`pipelines.metastudio.network`.
    """

    def __init__(
        self,
        base_url: str,
        auth: httpx.Auth,
        *,
        app_user_id: str | None = None,
        max_in_flight: int = 8,
        max_requests_per_second: float | None = None,
        timeout: float = 30.0,
        max_attempts: int = 6,
        max_retry_seconds: float = 120.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_clock_skew_seconds: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        monotonic: Callable[[], float] | None = None,
        jitter: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        _check_limits(max_in_flight, max_attempts, max_requests_per_second, timeout, max_response_bytes,
                      max_clock_skew_seconds)
        url = _endpoint_url(base_url, auth)
        self._base_url = str(url).rstrip("/")
        self._host = url.host
        self._auth = auth
        self._token_auth = isinstance(auth, TokenAuth)
        self._app_user_id = app_user_id
        self.max_in_flight = max_in_flight
        self.max_requests_per_second = max_requests_per_second
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep or asyncio.sleep
        self._monotonic = monotonic or time.monotonic
        self._jitter = jitter or _random.random
        self._semaphore = asyncio.Semaphore(max_in_flight)
        self._init_pacing(max_requests_per_second)
        self._init_clock(wall_clock, max_clock_skew_seconds)
        self.stats = ClientStats()
        #: Told about each retry as it is scheduled (one line of text), instead of a WARNING.
        self.on_retry: Callable[[str], None] | None = None
        # A plain-http endpoint (a local gateway, the simulator) makes no TLS connection:
        # loading the certificate store would cost every run its time for nothing.
        verify = url.scheme == "https"
        limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
        # Requests go to the transport itself. httpx's client around it (its send machinery,
        # hooks, cookie jar and redirect handling, none of which this client needs) cost about
        # 60 us of the event loop's CPU a page request: 733 us against 667-679 us, the page's
        # reading included, 3,000 requests to the simulator. No cookie jar means no cookie an
        # answer sets is kept or sent back; a redirect is an answer like any other.
        self._transport = transport or HttptoolsTransport(verify=verify, limits=limits)
        self._timeouts = httpx.Timeout(timeout).as_dict()

    async def __aenter__(self) -> MetaStudioClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"MetaStudioClient(host={self._host!r}, auth={self._auth!r})"

    # ------------------------------------------------------------------ listing

    def jobs_url(self, project_id: str, params: Mapping[str, object]) -> str:
        """The exact URL sent (and signed): the query in canonical form, so bytes sent == bytes signed."""
        pairs = [(str(k), _wire_value(v)) for k, v in params.items() if v is not None]
        base = f"{self._base_url}/v1/{quote(project_id, safe='')}/voice-training-manage/user/jobs"
        return f"{base}?{canonical_query(pairs)}" if pairs else base

    async def list_jobs(self, project_id: str, params: Mapping[str, object], *, lean: bool = False) -> Page:
        """One page of ``GET /v1/{project_id}/voice-training-manage/user/jobs``; ``limit`` defaults to 100.

        Values: bools become ``true``/``false``, datetimes RFC 3339 UTC, lists comma-joined, None dropped.
        Raises :class:`MetaStudioError` subclasses; retryable failures are retried within the budget.
        ``lean``: the page's jobs as WireJobs where it allows (see parse_page), for paging.
        """
        if not project_id:
            raise ConfigurationError("No project id was given; set HUAWEICLOUD_SDK_PROJECT_ID.")
        params = dict(params)
        params.setdefault("limit", PAGE_LIMIT)
        url = self.jobs_url(project_id, params)
        headers = {"X-Project-Id": project_id}
        if self._app_user_id:
            headers["X-App-UserId"] = self._app_user_id
        budget = RetryBudget()
        attempt = 0
        last: Retryable | None = None
        while True:
            attempt += 1
            try:
                page = await self._attempt(url, headers, budget, lean)
            except OutOfBudget:
                assert last is not None and budget.started is not None
                raise self._exhausted(last, attempt - 1, self._monotonic() - budget.started) from None
            except Retryable as failure:
                last = failure
                await self._wait_to_retry(failure, attempt, budget)
                continue
            self.stats.pages += 1
            self.stats.jobs += len(page.jobs)
            return page

    async def _wait_to_retry(self, failure: Retryable, attempt: int, budget: RetryBudget) -> None:
        """Sleep until the next attempt may go, or raise the error that ends the request."""
        self.stats.retries[failure.cause] += 1
        assert budget.started is not None
        elapsed = self._monotonic() - budget.started
        delay = self._backoff(attempt)
        if failure.retry_after is not None:
            # Jitter only ever lengthens what the server asked for.
            delay = max(delay, failure.retry_after)
        # A wait past the budget (a Retry-After of an hour, or of year 9999) is never slept:
        # the request fails now, which caps every Retry-After at max_retry_seconds.
        out_of_time = elapsed + delay > self._max_retry_seconds
        if failure.final or attempt >= self._max_attempts or out_of_time:
            raise self._exhausted(failure, attempt, elapsed) from None
        note = (f"MetaStudio request failed ({failure.cause}: {failure.detail}); "
                f"attempt {attempt} of {self._max_attempts}, retrying in {delay:.2f} s")
        if self.on_retry is not None:
            # A display shows it on one line that updates; the log keeps it below the default level.
            self.on_retry(note)
            log.info("%s", note)
        else:
            log.warning("%s", note)
        if failure.retry_after is not None:
            self._blocked_until = max(self._blocked_until, self._monotonic() + failure.retry_after)
        await self._sleep(delay)
        self.stats.backoff_seconds += delay
        self.stats.wait_seconds += delay
        # Pacing or a queue for a slot may hold the retry further; it is not sent past the budget.
        budget.start_by = budget.started + self._max_retry_seconds

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^(attempt-1))]."""
        return self._jitter() * min(self._backoff_max, self._backoff_base * (2 ** (attempt - 1)))

    def _exhausted(self, failure: Retryable, attempts: int, elapsed: float) -> MetaStudioError:
        if failure.unreachable:
            return EndpointUnreachableError(self._host, failure.detail, attempts)
        return RetriesExhaustedError(
            f"last cause: {failure.detail}",
            attempts,
            elapsed,
            status=failure.status,
            error_code=failure.error_code,
        )

    async def _fetch(self, url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytearray]:
        """Status, headers and the body, read as a stream and abandoned once past ``max_response_bytes``.

        Never more than the cap plus one decoded network read is held. The request is built,
        authenticated (the auth's first and only step: a token or a signature in its headers)
        and handed to the transport; the body is decoded as httpx decodes it.
        """
        cap = self.max_response_bytes
        request = httpx.Request("GET", url, headers=[*_DEFAULT_HEADERS, *headers.items()],
                                extensions={"timeout": self._timeouts})
        flow = self._auth.async_auth_flow(request)
        try:
            request = await flow.__anext__()
        finally:
            await flow.aclose()
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            declared = content_length(response.headers)
            if declared is not None and declared > cap:
                raise ResponseTooLargeError(self._host, declared, cap, declared=True, status=response.status_code)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                self.stats.bytes_received += len(chunk)
                if len(body) + len(chunk) > cap:
                    raise ResponseTooLargeError(self._host, len(body) + len(chunk), cap, status=response.status_code)
                body += chunk
        finally:
            await response.aclose()
        return response, body

    async def _attempt(self, url: str, headers: dict[str, str], budget: RetryBudget, lean: bool = False) -> Page:
        """One send and its answer: a page, or :class:`Retryable`, :class:`OutOfBudget` or an error raised."""
        async with self._semaphore:
            await self._pace(budget.start_by)
            sent_at = self._monotonic()
            if budget.started is None:
                budget.started = sent_at
            elif budget.start_by is not None and sent_at > budget.start_by:
                raise OutOfBudget
            self.stats.requests += 1
            try:
                # The whole attempt, not each read: a body dripped a byte at a time cannot hold it.
                async with asyncio.timeout(self._timeout):
                    response, body = await self._fetch(url, headers)
            except TimeoutError:
                raise Retryable(
                    "timeout", f"no complete answer within the timeout of {self._timeout:g} s"
                ) from None
            except httpx.TimeoutException as exc:
                raise Retryable("timeout", f"no answer within the timeout ({type(exc).__name__})") from None
            except httpx.ConnectError as exc:
                raise connect_failure(exc, self._host) from None
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise Retryable("connection", f"connection broken ({type(exc).__name__})") from None
            finally:
                self.stats.wait_seconds += self._monotonic() - sent_at
        received_at = self._monotonic()
        server_time, believed = self._observe_date(response.headers, received_at)
        status = response.status_code
        log.debug(
            "GET %s -> %d (%d bytes, %.3f s)",
            response.request.url.path,
            status,
            len(body),
            received_at - sent_at,
        )
        if status == 200:
            return parse_page(body, server_time if believed else None, lean=lean)
        raise failure_for_status(
            status, response.headers, body, server_time, token_auth=self._token_auth, wall_clock=self._wall_clock
        )


def _check_limits(
    max_in_flight: int,
    max_attempts: int,
    max_requests_per_second: float | None,
    timeout: float,
    max_response_bytes: int,
    max_clock_skew_seconds: float | None,
) -> None:
    """ConfigurationError for a limit the client cannot work with."""
    if max_in_flight < 1:
        raise ConfigurationError(
            f"max_in_flight={max_in_flight} is too small; allow at least 1 request in flight."
        )
    if max_attempts < 1:
        raise ConfigurationError(f"max_attempts={max_attempts} is too small; allow at least 1 attempt.")
    if max_requests_per_second is not None and max_requests_per_second <= 0:
        raise ConfigurationError("max_requests_per_second must be positive; leave it unset for no cap.")
    if not timeout > 0:
        raise ConfigurationError(f"timeout={timeout} is too small; allow each attempt some seconds.")
    if max_response_bytes < 1:
        raise ConfigurationError(
            f"max_response_bytes={max_response_bytes} is too small; set VOICEJOBS_MAX_RESPONSE_BYTES "
            "well above a page of 100 jobs (about 300 KB)."
        )
    if max_clock_skew_seconds is not None and not max_clock_skew_seconds > 0:
        raise ConfigurationError(
            f"max_clock_skew_seconds={max_clock_skew_seconds} is too small; set "
            "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS to a positive number of seconds."
        )


def _endpoint_url(base_url: str, auth: httpx.Auth) -> httpx.URL:
    """The endpoint as a URL; ConfigurationError unless http(s), a warning when credentials leave in clear."""
    url = httpx.URL(base_url.rstrip("/"))
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            "The MetaStudio base URL is not an http(s) URL; set METASTUDIO_ENDPOINT like "
            "https://metastudio.cn-north-4.myhuaweicloud.com."
        )
    if url.scheme == "http" and not is_loopback(url.host):
        secret = "IAM token" if isinstance(auth, TokenAuth) else "request signature"
        log.warning(
            "METASTUDIO_ENDPOINT is plain http:// to host %r: the %s travels in clear text, readable "
            "and replayable by anyone on the network path; use https://.",
            url.host,
            secret,
        )
    return url


def _wire_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(_wire_value(v) for v in value)
    return str(value)
