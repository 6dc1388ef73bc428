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
import email.utils
import importlib.util
import ipaddress
import logging
import math
import random as _random
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import orjson

from pipelines.contract import PAGE_LIMIT
from pipelines.metastudio.auth import TokenAuth, canonical_query
from pipelines.metastudio.errors import (
    AuthenticationError,
    BadRequestError,
    CertificateError,
    ConfigurationError,
    EndpointUnreachableError,
    MetaStudioError,
    ResponseTooLargeError,
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

PACING_MARGIN = 1.02
RETRY_CAUSES = ("429", "5xx", "timeout", "connection", "malformed")
#: A real page of 100 jobs is 100-300 KB; a body past this is not a page (an endless or hostile stream).
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: A source ``Date`` further than this from the local clock is not taken as the source's clock.
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 300.0
#: Longer header values are not dates (an RFC 7231 date has 29 characters); never parse a megabyte.
_MAX_DATE_CHARS = 100
_LOOPBACK_NAMES = ("localhost", "localhost.")


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
    """One page of the listing: the total ``count`` matching the filters and this page's jobs.

    ``server_time`` is the response's ``Date`` when the client believes it (present, readable and
    within the clock-skew bound), else None.
    """

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
        final: bool = False,
    ) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.retry_after = retry_after
        self.status = status
        self.error_code = error_code
        self.unreachable = unreachable
        self.final = final  # no retry can mend it (a name that does not resolve): stop at this attempt


class _OutOfBudget(Exception):
    """Internal: the next attempt could only start after the retry budget has run out."""


@dataclass
class _Budget:
    """One request's retry budget: measured from its first send, so queueing for a slot costs none of it."""

    started: float | None = None
    start_by: float | None = None  # the latest monotonic time a retry may still be sent


class MetaStudioClient:
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
        url = httpx.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                "The MetaStudio base URL is not an http(s) URL; set METASTUDIO_ENDPOINT like "
                "https://metastudio.cn-north-4.myhuaweicloud.com."
            )
        self._base_url = str(url).rstrip("/")
        self._host = url.host
        if url.scheme == "http" and not _is_loopback(url.host):
            secret = "IAM token" if isinstance(auth, TokenAuth) else "request signature"
            log.warning(
                "METASTUDIO_ENDPOINT is plain http:// to host %r: the %s travels in clear text, readable "
                "and replayable by anyone on the network path; use https://.",
                url.host,
                secret,
            )
        self._auth = auth
        self._token_auth = isinstance(auth, TokenAuth)
        self._app_user_id = app_user_id
        self.max_in_flight = max_in_flight
        self.max_requests_per_second = max_requests_per_second
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.max_clock_skew_seconds = max_clock_skew_seconds
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep or asyncio.sleep
        self._monotonic = monotonic or time.monotonic
        self._jitter = jitter or _random.random
        self._wall_clock = wall_clock or _utc_now
        self._semaphore = asyncio.Semaphore(max_in_flight)
        # Pacing: requests start at least one interval apart; a 429 pauses every request.
        # 2% under the cap, so scheduling jitter between here and the server never brings two
        # requests closer together than the server's own spacing.
        self._interval = PACING_MARGIN / max_requests_per_second if max_requests_per_second else 0.0
        self._next_slot = 0.0
        self._blocked_until = 0.0
        self._pace_lock = asyncio.Lock()
        # Source clock: the newest believed server Date and the local monotonic time it arrived.
        self._server_date: tuple[datetime, float] | None = None
        #: The largest skew (server Date minus local clock) of a Date not believed; None when none.
        self.clock_skew: timedelta | None = None
        self.stats = ClientStats()
        #: Told about each retry as it is scheduled (one line of text), instead of a WARNING.
        self.on_retry: Callable[[str], None] | None = None
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
        early, never late: the safe side for deciding which windows are complete. A ``Date``
        too far from the local clock (see ``max_clock_skew_seconds``) is never used.
        """
        if self._server_date is None:
            return self._wall_clock()
        date_value, received_at = self._server_date
        try:
            return date_value + timedelta(seconds=max(0.0, self._monotonic() - received_at))
        except OverflowError:  # only when every Date is believed and one said year 9999
            return datetime.max.replace(tzinfo=UTC)

    def _observe_date(self, headers: httpx.Headers, received_at: float) -> tuple[datetime | None, bool]:
        """The response's ``Date`` as sent (None if absent or not a date) and whether it is believed.

        A Date further than the skew bound from the local clock is not: it never moves
        :meth:`server_now`, however far off (year 9999 included).
        """
        server_time = _parse_http_date(headers.get("Date"))
        if server_time is None:
            return None, False
        if self.max_clock_skew_seconds is not None:
            local = self._wall_clock()
            skew = server_time - local
            if abs(skew) > timedelta(seconds=self.max_clock_skew_seconds):
                self._note_skew(skew, server_time, local)
                return server_time, False
        if self._server_date is None or server_time >= self._server_date[0]:
            self._server_date = (server_time, received_at)
        return server_time, True

    def _note_skew(self, skew: timedelta, server_time: datetime, local: datetime) -> None:
        first = self.clock_skew is None
        if first or abs(skew) > abs(self.clock_skew):
            self.clock_skew = skew
        if first:
            log.warning(
                "The MetaStudio endpoint at host %r sends a Date of %s, %s %s the local clock (%s), more than "
                "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS=%g allows; using the local clock as the source's clock "
                "(check the machine's clock or the endpoint).",
                self._host,
                server_time.isoformat(),
                _describe_seconds(abs(skew) / timedelta(seconds=1)),
                "ahead of" if skew > timedelta(0) else "behind",
                local.isoformat(timespec="seconds"),
                self.max_clock_skew_seconds,
            )

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
        params.setdefault("limit", PAGE_LIMIT)
        url = self.jobs_url(project_id, params)
        headers = {"X-Project-Id": project_id}
        if self._app_user_id:
            headers["X-App-UserId"] = self._app_user_id
        budget = _Budget()
        attempt = 0
        last: _Retryable | None = None
        while True:
            attempt += 1
            try:
                page = await self._attempt(url, headers, budget)
            except _OutOfBudget:
                assert last is not None and budget.started is not None
                raise self._exhausted(last, attempt - 1, self._monotonic() - budget.started) from None
            except _Retryable as failure:
                last = failure
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

    async def _pace(self, start_by: float | None = None) -> None:
        """Wait for this request's start slot (rate cap) and for any server-requested pause.

        Requests pass one at a time on an ideal schedule, one interval apart: a late wake-up
        (a busy event loop oversleeps by milliseconds) is made up by the next slot instead of
        adding up over thousands of requests, but two requests never leave less than half an
        interval apart, and after an idle spell the schedule restarts from now (no burst).
        A retry whose slot falls after ``start_by`` gives its slot up (:class:`_OutOfBudget`).
        """
        if not self._interval and self._blocked_until <= self._monotonic():
            return
        async with self._pace_lock:
            slot = max(self._next_slot, self._blocked_until)
            if start_by is not None and slot > start_by:
                raise _OutOfBudget
            wait = slot - self._monotonic()
            if wait > 0:
                await self._sleep(wait)
                self.stats.wait_seconds += wait
            left = self._monotonic()
            self._next_slot = max(max(slot, left - self._interval) + self._interval, left + self._interval / 2)

    async def _fetch(self, url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytearray]:
        """Status, headers and the body, read as a stream and abandoned once past ``max_response_bytes``.

        Never more than the cap plus one decoded network read is held.
        """
        cap = self.max_response_bytes
        async with self._http.stream("GET", url, headers=headers) as response:
            declared = _content_length(response.headers)
            if declared is not None and declared > cap:
                raise ResponseTooLargeError(self._host, declared, cap, declared=True, status=response.status_code)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                self.stats.bytes_received += len(chunk)
                if len(body) + len(chunk) > cap:
                    raise ResponseTooLargeError(self._host, len(body) + len(chunk), cap, status=response.status_code)
                body += chunk
        return response, body

    def _connect_failure(self, exc: httpx.ConnectError) -> _Retryable:
        """A failed connection as a retry cause; a TLS failure raises at once (no retry mends a certificate)."""
        tls = _tls_failure(exc)
        if tls is not None:
            reason, verification = tls
            raise CertificateError(self._host, reason, verification=verification) from None
        detail, final = _connect_detail(exc)
        return _Retryable("connection", detail, unreachable=True, final=final)

    async def _attempt(self, url: str, headers: dict[str, str], budget: _Budget) -> Page:
        async with self._semaphore:
            await self._pace(budget.start_by)
            sent_at = self._monotonic()
            if budget.started is None:
                budget.started = sent_at
            elif budget.start_by is not None and sent_at > budget.start_by:
                raise _OutOfBudget
            self.stats.requests += 1
            try:
                # The whole attempt, not each read: a body dripped a byte at a time cannot hold it.
                async with asyncio.timeout(self._timeout):
                    response, body = await self._fetch(url, headers)
            except TimeoutError:
                raise _Retryable(
                    "timeout", f"no complete answer within the timeout of {self._timeout:g} s"
                ) from None
            except httpx.TimeoutException as exc:
                raise _Retryable("timeout", f"no answer within the timeout ({type(exc).__name__})") from None
            except httpx.ConnectError as exc:
                raise self._connect_failure(exc) from None
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise _Retryable("connection", f"connection broken ({type(exc).__name__})") from None
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
            return _parse_page(body, server_time if believed else None)
        error_code, error_msg = _error_fields(body)
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"), server_time or self._wall_clock())
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


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: the only hosts where plain http keeps credentials on the machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _content_length(headers: httpx.Headers) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not value.strip().isdigit() or len(value) > 30:
        return None
    return int(value)


def _describe_seconds(seconds: float) -> str:
    if seconds >= 2 * 86_400 * 365:
        return f"{seconds / (86_400 * 365.25):,.0f} years"
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:,.0f} days"
    if seconds >= 2 * 3_600:
        return f"{seconds / 3_600:,.0f} hours"
    return f"{seconds:,.0f} s"


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
    """An HTTP-date as an aware UTC datetime; None for anything else (never raises, never parses much)."""
    if not value or len(value) > _MAX_DATE_CHARS:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed is None:
            return None
        if parsed.tzinfo is None:  # "-0000" form: RFC 7231 dates are GMT
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):  # year 10000, day 32, year 1 at -0100
        return None


def _retry_after(value: str | None, reference: datetime) -> float | None:
    """Seconds the server asked to wait: delta-seconds, or an HTTP-date measured against ``reference``.

    ``reference`` is the server's own ``Date`` of the same response when it sent one (both then
    come from one clock, however wrong it is), else the local clock. Non-finite or unreadable
    values are ignored (None); the caller never sleeps past its retry budget.
    """
    if value is None or len(value) > _MAX_DATE_CHARS:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    when = _parse_http_date(value)
    if when is None:
        return None
    return max(0.0, (when - reference) / timedelta(seconds=1))


def _exception_chain(exc: BaseException, limit: int = 10) -> list[BaseException]:
    """The exception and its causes (async transports wrap the OS error a few levels down)."""
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and len(chain) < limit and node not in chain:
        chain.append(node)
        node = node.__cause__ or node.__context__
    return chain


#: TLS errors that are a connection dropped mid-handshake, not a verdict on the certificate.
_TLS_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ssl.SSLWantReadError,
                  ssl.SSLWantWriteError)


def _tls_failure(exc: BaseException) -> tuple[str, bool] | None:
    """``(reason, is_certificate_verification)`` when the handshake failed for good, else None."""
    for node in _exception_chain(exc):
        if isinstance(node, ssl.SSLCertVerificationError):
            reason = node.verify_message or node.reason or str(node)
            return _one_line(str(reason)), True
        if isinstance(node, ssl.SSLError) and not isinstance(node, _TLS_TRANSIENT):
            return _one_line(str(node.reason or node.strerror or node)), False
    return None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _connect_detail(exc: BaseException) -> tuple[str, bool]:
    """Why a connection failed, and whether retrying is pointless (a name that does not resolve).

    A temporary resolver failure (EAI_AGAIN) is retried like a refused connection: the name may
    well exist, the resolver did not answer.
    """
    texts = []
    for node in _exception_chain(exc):
        if isinstance(node, ConnectionRefusedError):
            return "connection refused", False
        if isinstance(node, socket.gaierror):
            if node.errno == socket.EAI_AGAIN:
                return "the host name could not be resolved just now (temporary DNS failure)", False
            return "the host name does not resolve", True
        texts.append(str(node).lower())
    text = " ".join(texts)
    if "temporary failure in name resolution" in text:
        return "the host name could not be resolved just now (temporary DNS failure)", False
    if "name or service" in text or "nodename" in text or "getaddrinfo" in text or "name resolution" in text:
        return "the host name does not resolve", True
    if "refused" in text:
        return "connection refused", False
    return "connection failed", False
