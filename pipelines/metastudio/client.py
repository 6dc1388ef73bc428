"""Async client for one MetaStudio endpoint: list voice-training jobs, one page per call.

The client owns everything about a single request: the URL form that is signed,
bounded retries with backoff, concurrency and rate limits, error translation and
the source's clock. Windows, cursors and count reconciliation live in
:mod:`pipelines.metastudio.paging`.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import importlib.util
import logging
import random as _random
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import orjson

from pipelines.metastudio.auth import TokenAuth, canonical_query
from pipelines.metastudio.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    EndpointUnreachableError,
    MetaStudioError,
    RetriesExhaustedError,
)
from pipelines.metastudio.paging import format_time

log = logging.getLogger("voicejobs.client")

# httpcore imports sniffio on every request to learn the async library; when sniffio is not
# installed, each failed import searches all of sys.path again (about 0.2 ms, a tenth of a
# sync's CPU, measured with cProfile). Recording the absence once makes the import fail at
# once, and httpcore then takes asyncio, which is what runs here.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

DEFAULT_LIMIT = 100
PACING_MARGIN = 1.02
RETRY_CAUSES = ("429", "5xx", "timeout", "connection", "malformed")


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


@dataclass(frozen=True)
class Page:
    """One page of the listing: the total ``count`` matching the filters and this page's jobs."""

    count: int
    jobs: list[dict]
    server_time: datetime | None


class _Retryable(Exception):
    """Internal: one attempt failed with a cause worth retrying."""

    def __init__(
        self,
        cause: str,
        detail: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        error_code: str | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.retry_after = retry_after
        self.status = status
        self.error_code = error_code
        self.unreachable = unreachable


class MetaStudioClient:
    """List voice-training jobs of MetaStudio projects with retries, throttling and honest errors.

    ``sleep``, ``monotonic`` and ``jitter`` (uniform in [0, 1)) exist so tests can run the retry
    schedule on a fake clock; production leaves them alone.
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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        monotonic: Callable[[], float] | None = None,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ConfigurationError(
                f"max_in_flight={max_in_flight} is too small; allow at least 1 request in flight."
            )
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts={max_attempts} is too small; allow at least 1 attempt.")
        if max_requests_per_second is not None and max_requests_per_second <= 0:
            raise ConfigurationError("max_requests_per_second must be positive; leave it unset for no cap.")
        url = httpx.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                "The MetaStudio base URL is not an http(s) URL; set METASTUDIO_ENDPOINT like "
                "https://metastudio.cn-north-4.myhuaweicloud.com."
            )
        self._base_url = str(url).rstrip("/")
        self._host = url.host
        self._auth = auth
        self._token_auth = isinstance(auth, TokenAuth)
        self._app_user_id = app_user_id
        self.max_in_flight = max_in_flight
        self.max_requests_per_second = max_requests_per_second
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep or asyncio.sleep
        self._monotonic = monotonic or time.monotonic
        self._jitter = jitter or _random.random
        self._semaphore = asyncio.Semaphore(max_in_flight)
        # Pacing: requests start at least one interval apart; a 429 pauses every request.
        # 2% under the cap, so scheduling jitter between here and the server never brings two
        # requests closer together than the server's own spacing.
        self._interval = PACING_MARGIN / max_requests_per_second if max_requests_per_second else 0.0
        self._next_slot = 0.0
        self._blocked_until = 0.0
        self._pace_lock = asyncio.Lock()
        # Source clock: the newest server Date and the local monotonic time it arrived.
        self._server_date: tuple[datetime, float] | None = None
        self.stats = ClientStats()
        self._http = httpx.AsyncClient(
            auth=auth,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
            http2=False,
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )

    async def __aenter__(self) -> MetaStudioClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"MetaStudioClient(host={self._host!r}, auth={self._auth!r})"

    # ------------------------------------------------------------------ source clock

    def server_now(self) -> datetime:
        """The source's current time: newest server ``Date`` plus monotonic time since; local clock before any.

        ``Date`` has whole seconds and is stamped before the answer travels, so this errs
        early, never late: the safe side for deciding which windows are complete.
        """
        if self._server_date is None:
            return datetime.now(UTC)
        date_value, received_at = self._server_date
        return date_value + timedelta(seconds=max(0.0, self._monotonic() - received_at))

    def _observe_date(self, response: httpx.Response, received_at: float) -> datetime | None:
        server_time = _parse_http_date(response.headers.get("Date"))
        if server_time is not None and (self._server_date is None or server_time >= self._server_date[0]):
            self._server_date = (server_time, received_at)
        return server_time

    # ------------------------------------------------------------------ listing

    def jobs_url(self, project_id: str, params: Mapping[str, object]) -> str:
        """The exact URL sent (and signed): the query in canonical form, so bytes sent == bytes signed."""
        pairs = [(str(k), _wire_value(v)) for k, v in params.items() if v is not None]
        base = f"{self._base_url}/v1/{quote(project_id, safe='')}/voice-training-manage/user/jobs"
        return f"{base}?{canonical_query(pairs)}" if pairs else base

    async def list_jobs(self, project_id: str, params: Mapping[str, object]) -> Page:
        """One page of ``GET /v1/{project_id}/voice-training-manage/user/jobs``; ``limit`` defaults to 100.

        Values: bools become ``true``/``false``, datetimes RFC 3339 UTC, lists comma-joined, None dropped.
        Raises :class:`MetaStudioError` subclasses; retryable failures are retried within the budget.
        """
        if not project_id:
            raise ConfigurationError("No project id was given; set HUAWEICLOUD_SDK_PROJECT_ID.")
        params = dict(params)
        params.setdefault("limit", DEFAULT_LIMIT)
        url = self.jobs_url(project_id, params)
        headers = {"X-Project-Id": project_id}
        if self._app_user_id:
            headers["X-App-UserId"] = self._app_user_id
        started = self._monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                page = await self._attempt(url, headers)
            except _Retryable as failure:
                self.stats.retries[failure.cause] += 1
                elapsed = self._monotonic() - started
                delay = self._backoff(attempt)
                if failure.retry_after is not None:
                    # Jitter only ever lengthens what the server asked for.
                    delay = max(delay, failure.retry_after)
                out_of_time = elapsed + delay > self._max_retry_seconds
                if attempt >= self._max_attempts or out_of_time:
                    raise self._exhausted(failure, attempt, elapsed) from None
                log.warning(
                    "MetaStudio request failed (%s: %s); attempt %d of %d, retrying in %.2f s",
                    failure.cause,
                    failure.detail,
                    attempt,
                    self._max_attempts,
                    delay,
                )
                if failure.retry_after is not None:
                    self._blocked_until = max(self._blocked_until, self._monotonic() + failure.retry_after)
                await self._sleep(delay)
                self.stats.backoff_seconds += delay
                self.stats.wait_seconds += delay
                continue
            self.stats.pages += 1
            self.stats.jobs += len(page.jobs)
            return page

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^(attempt-1))]."""
        return self._jitter() * min(self._backoff_max, self._backoff_base * (2 ** (attempt - 1)))

    def _exhausted(self, failure: _Retryable, attempts: int, elapsed: float) -> MetaStudioError:
        if failure.unreachable:
            return EndpointUnreachableError(self._host, failure.detail, attempts)
        return RetriesExhaustedError(
            f"last cause: {failure.detail}",
            attempts,
            elapsed,
            status=failure.status,
            error_code=failure.error_code,
        )

    async def _pace(self) -> None:
        """Wait for this request's start slot (rate cap) and for any server-requested pause.

        Requests pass one at a time on an ideal schedule, one interval apart: a late wake-up
        (a busy event loop oversleeps by milliseconds) is made up by the next slot instead of
        adding up over thousands of requests, but two requests never leave less than half an
        interval apart, and after an idle spell the schedule restarts from now (no burst).
        """
        if not self._interval and self._blocked_until <= self._monotonic():
            return
        async with self._pace_lock:
            slot = max(self._next_slot, self._blocked_until)
            wait = slot - self._monotonic()
            if wait > 0:
                await self._sleep(wait)
                self.stats.wait_seconds += wait
            left = self._monotonic()
            self._next_slot = max(max(slot, left - self._interval) + self._interval, left + self._interval / 2)

    async def _attempt(self, url: str, headers: dict[str, str]) -> Page:
        async with self._semaphore:
            await self._pace()
            self.stats.requests += 1
            sent_at = self._monotonic()
            try:
                response = await self._http.get(url, headers=headers)
            except httpx.TimeoutException as exc:
                raise _Retryable("timeout", f"no answer within the timeout ({type(exc).__name__})") from None
            except httpx.ConnectError as exc:
                raise _Retryable("connection", _connect_detail(exc), unreachable=True) from None
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise _Retryable("connection", f"connection broken ({type(exc).__name__})") from None
            finally:
                self.stats.wait_seconds += self._monotonic() - sent_at
        received_at = self._monotonic()
        body = response.content
        self.stats.bytes_received += len(body)
        server_time = self._observe_date(response, received_at)
        status = response.status_code
        log.debug(
            "GET %s -> %d (%d bytes, %.3f s)",
            response.request.url.path,
            status,
            len(body),
            received_at - sent_at,
        )
        if status == 200:
            return _parse_page(body, server_time)
        error_code, error_msg = _error_fields(body)
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"), server_time)
            raise _Retryable(
                "429", "HTTP 429 throttled", retry_after=retry_after, status=429, error_code=error_code
            )
        if status >= 500 or status == 408:
            cause = "timeout" if status == 408 else "5xx"
            raise _Retryable(cause, f"HTTP {status}", status=status, error_code=error_code)
        if status in (401, 403):
            raise AuthenticationError.from_response(
                status, error_code, error_msg, token_auth=self._token_auth
            )
        if status == 400:
            raise BadRequestError(error_code, error_msg)
        if status == 404:
            raise ConfigurationError(
                "MetaStudio answered 404 for the job listing; check METASTUDIO_ENDPOINT (the API's base URL) "
                "and HUAWEICLOUD_SDK_PROJECT_ID.",
                status=404,
                error_code=error_code,
            )
        raise MetaStudioError(
            f"MetaStudio answered HTTP {status}, which the sync does not expect; "
            "check METASTUDIO_ENDPOINT points at the MetaStudio API and not at a proxy page.",
            status=status,
            error_code=error_code,
        )


def _wire_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(_wire_value(v) for v in value)
    return str(value)


def _parse_page(body: bytes, server_time: datetime | None) -> Page:
    """A validated page, or a retryable "malformed" failure (truncated, HTML or wrongly shaped bodies)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = "an HTML page" if body.lstrip()[:1] == b"<" else "a body that is not complete JSON"
        raise _Retryable("malformed", f"HTTP 200 with {snippet}") from None
    if not isinstance(data, dict):
        raise _Retryable("malformed", "HTTP 200 with JSON that is not an object")
    count, jobs = data.get("count"), data.get("jobs")
    if jobs is None and count == 0:
        jobs = []  # servers omit empty fields
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise _Retryable("malformed", "HTTP 200 without an integer 'count'")
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
        raise _Retryable("malformed", "HTTP 200 without a list of job objects in 'jobs'")
    return Page(count=count, jobs=jobs, server_time=server_time)


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    code, msg = data.get("error_code"), data.get("error_msg")
    return (str(code) if code is not None else None, str(msg) if msg is not None else None)


def _parse_http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # "-0000" form: RFC 7231 dates are GMT
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _retry_after(value: str | None, server_time: datetime | None) -> float | None:
    """Seconds the server asked to wait: delta-seconds or an HTTP-date (measured against its own Date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    when = _parse_http_date(value)
    if when is None:
        return None
    reference = server_time or datetime.now(UTC)
    return max(0.0, (when - reference) / timedelta(seconds=1))


def _connect_detail(exc: BaseException) -> str:
    """Why a connection failed, from the exception chain (async transports wrap the OS error)."""
    texts = []
    node: BaseException | None = exc
    while node is not None and len(texts) < 10:
        if isinstance(node, ConnectionRefusedError):
            return "connection refused"
        if isinstance(node, socket.gaierror):
            return "the host name does not resolve"
        texts.append(str(node).lower())
        node = node.__cause__ or node.__context__
    text = " ".join(texts)
    if "name or service" in text or "nodename" in text or "getaddrinfo" in text or "name resolution" in text:
        return "the host name does not resolve"
    if "refused" in text:
        return "connection refused"
    return "connection failed"
