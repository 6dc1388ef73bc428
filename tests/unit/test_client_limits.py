"""MetaStudioClient against a hostile or broken server: bounds that hold whatever the server does.

A whole attempt has one deadline and the retry budget holds across attempts; a body is read up to
a size cap and no further; a ``Date`` far from the local clock is not the source's clock; plain
http to a remote host is called out; a name that does not resolve ends the request at the first
attempt. All on a mock transport; a real client against a TLS listener with a certificate that
cannot be verified, and through :class:`tests.support.hostile.HostileProxy` in front of the
simulator, is in tests/integration/test_client_hostile_servers.py.

No test holds a wall-clock threshold: timings are asserted on injected clocks, and real time
only appears as a generous hang guard (``HANG_GUARD``) that fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import orjson
import pytest

from pipelines.metastudio.auth import AKSKAuth, TokenAuth
from pipelines.metastudio.client import DEFAULT_MAX_RESPONSE_BYTES, MetaStudioClient
from pipelines.metastudio.errors import (
    ConfigurationError,
    EndpointUnreachableError,
    MetaStudioError,
    ResponseTooLargeError,
    RetriesExhaustedError,
)
from tests.support.client_runs import list_once, run
from tests.support.clock import FakeClock
from tests.support.hostile import CHUNK_BYTES

BASE = "https://metastudio.cn-north-4.myhuaweicloud.com"
TOKEN = "IAM-TOKEN-VALUE-0002"
OK_BODY = {"count": 2, "jobs": [{"job_id": "a"}, {"job_id": "b"}]}
WALL = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)  # the local clock of the clock tests
SKEW = 300.0


def json_response(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers={"Content-Type": "application/json", **headers})


def http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


def make_client(handler, clock: FakeClock | None = None, base: str = BASE, **kwargs) -> MetaStudioClient:
    clock = clock or FakeClock()
    kwargs.setdefault("jitter", lambda: 1.0)
    kwargs.setdefault("auth", TokenAuth(TOKEN))
    auth = kwargs.pop("auth")
    return MetaStudioClient(
        base, auth, transport=httpx.MockTransport(handler), sleep=clock.sleep, monotonic=clock.monotonic, **kwargs
    )


def counting(*responses):
    """A handler answering the given responses in order (the last one for ever), counting requests."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        handler.requests += 1  # type: ignore[attr-defined]
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        return item() if callable(item) else item

    handler.requests = 0  # type: ignore[attr-defined]
    return handler


# ---------------------------------------------------------------- 1. one deadline per attempt, one budget


def dripping_response() -> httpx.Response:
    async def drip():
        yield b'{"count": 2, '
        while True:  # a byte now and then, each well within any per-read timeout
            await asyncio.sleep(0.02)
            yield b" "

    return httpx.Response(200, headers={"Content-Type": "application/json"}, content=drip())


def test_a_dripping_body_cannot_hold_an_attempt_past_its_timeout():
    handler = counting(dripping_response)
    clock = FakeClock()
    client = make_client(handler, clock, timeout=0.2, max_attempts=3, max_retry_seconds=60)
    with pytest.raises(RetriesExhaustedError) as info:
        run(list_once(client))
    assert info.value.attempts == 3 and handler.requests == 3
    assert dict(client.stats.retries) == {"timeout": 3}
    assert "within the timeout of 0.2 s" in str(info.value)


def test_a_retry_is_not_sent_once_the_budget_is_spent_waiting_for_its_slot():
    # 0.1 request/s: the retry's slot comes 5.1 s after the first send.
    def attempt(budget: float):
        handler = counting(json_response(503, {"error_code": "X", "error_msg": "busy"}), json_response(200, OK_BODY))
        clock = FakeClock()
        client = make_client(handler, clock, max_requests_per_second=0.1, max_retry_seconds=budget, backoff_base=0.5)
        return handler, clock, client

    handler, clock, client = attempt(5.0)
    with pytest.raises(RetriesExhaustedError) as info:
        run(list_once(client))
    assert handler.requests == 1 and info.value.attempts == 1 and info.value.status == 503
    assert clock.now - 1_000.0 <= 5.0  # nothing was slept past the budget either

    handler, clock, client = attempt(6.0)  # a budget the slot fits in
    assert run(list_once(client)).count == 2 and handler.requests == 2


def test_the_budget_starts_at_the_first_send_not_while_queued_for_a_slot():
    # Rate-capped requests queue for their slots (the last one about 7 s); the queueing costs none
    # of their retry budget, so the last one's failure is still retried within 3 s.
    handler = counting(*[json_response(200, OK_BODY)] * 7, json_response(503, {}), json_response(200, OK_BODY))
    clock = FakeClock()

    async def main():
        async with make_client(handler, clock, max_requests_per_second=1.0, max_retry_seconds=3.0) as client:
            pages = await asyncio.gather(*(client.list_jobs("p", {}) for _ in range(8)))
            return client.stats, pages

    stats, pages = run(main())
    assert [p.count for p in pages] == [2] * 8 and stats.retries["5xx"] == 1 and handler.requests == 9


# ---------------------------------------------------------------- 2. a size cap on every body


def endless_response(produced: list[int]) -> httpx.Response:
    async def endless():
        yield b'{"count": 1, "jobs": ['
        for _ in range(400):  # 25 MiB, then the test gives up on the client (it should stop at 1 MiB)
            produced.append(CHUNK_BYTES)
            yield b'{"job_id": "x"},'.ljust(CHUNK_BYTES, b" ")

    return httpx.Response(200, headers={"Content-Type": "application/json"}, content=endless())


def test_an_endless_body_is_abandoned_at_the_size_cap_and_not_retried():
    produced: list[int] = []
    handler = counting(lambda: endless_response(produced))
    cap = 1024 * 1024
    client = make_client(handler, max_response_bytes=cap)
    with pytest.raises(ResponseTooLargeError) as info:
        run(list_once(client))
    assert handler.requests == 1 and sum(client.stats.retries.values()) == 0
    assert cap < client.stats.bytes_received <= cap + CHUNK_BYTES
    assert sum(produced) <= cap + 2 * CHUNK_BYTES  # reading stopped: the rest was never produced
    err = info.value
    assert err.cap == cap and err.size > cap and isinstance(err, MetaStudioError)
    text = str(err)
    assert "1,048,576" in text and "VOICEJOBS_MAX_RESPONSE_BYTES" in text and "metastudio.cn-north-4" in text
    assert text.count(". ") == 0 and text.endswith(".")


class _RecordingStream(httpx.AsyncByteStream):
    def __init__(self) -> None:
        self.read = False

    async def __aiter__(self):
        self.read = True
        yield b"{}"


def test_a_declared_length_over_the_cap_is_refused_before_reading():
    stream = _RecordingStream()
    handler = counting(httpx.Response(200, headers={"Content-Length": str(10**12)}, stream=stream))
    client = make_client(handler, max_response_bytes=1024)
    with pytest.raises(ResponseTooLargeError) as info:
        run(list_once(client))
    assert info.value.size == 10**12 and not stream.read and client.stats.bytes_received == 0
    assert "1,000,000,000,000" in str(info.value)


def test_a_body_exactly_at_the_cap_is_a_page_one_byte_more_is_not():
    body = orjson.dumps(OK_BODY)
    assert run(list_once(make_client(counting(json_response(200, OK_BODY)), max_response_bytes=len(body)))).count == 2
    with pytest.raises(ResponseTooLargeError):
        run(list_once(make_client(counting(json_response(200, OK_BODY)), max_response_bytes=len(body) - 1)))
    assert DEFAULT_MAX_RESPONSE_BYTES == 64 * 1024 * 1024
    with pytest.raises(ConfigurationError, match="VOICEJOBS_MAX_RESPONSE_BYTES"):
        MetaStudioClient(BASE, TokenAuth(TOKEN), max_response_bytes=0)


# ---------------------------------------------------------------- 3. the source's clock, within reason


def clock_client(*responses, clock: FakeClock | None = None, **kwargs) -> tuple[MetaStudioClient, FakeClock]:
    clock = clock or FakeClock()
    kwargs.setdefault("max_clock_skew_seconds", SKEW)
    return make_client(counting(*responses), clock, wall_clock=lambda: WALL, **kwargs), clock


@pytest.mark.parametrize(
    ("date", "ahead"),
    [
        (WALL.replace(year=2000), False),
        (WALL.replace(year=2055), True),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), True),
        (WALL - timedelta(seconds=SKEW + 1), False),
    ],
)
def test_a_date_far_from_the_local_clock_is_not_the_source_clock(date, ahead):
    client, clock = clock_client(json_response(200, OK_BODY, Date=http_date(date)))
    page = run(list_once(client))
    assert page.count == 2 and page.server_time is None
    assert client.server_now() == WALL
    clock.now += 3_600.0  # never runs on from the rejected Date (year 9999 would overflow)
    assert client.server_now() == WALL
    assert client.clock_skew == date - WALL and (client.clock_skew > timedelta(0)) == ahead


def test_a_date_within_the_bound_is_the_source_clock():
    date = WALL - timedelta(seconds=SKEW - 1)
    client, clock = clock_client(json_response(200, OK_BODY, Date=http_date(date)))
    page = run(list_once(client))
    assert page.server_time == date and client.server_now() == date and client.clock_skew is None
    clock.now += 10.0
    assert client.server_now() == date + timedelta(seconds=10)


@pytest.mark.parametrize(
    "value",
    [
        "Sat, 01 Jan 10000 00:00:00 GMT",
        "Fri, 31 Dec 99999999999999999999999 23:59:59 GMT",
        "Fri, 31 Dec 9999 23:59:59 -0100",  # year 10000 in UTC
        "Fri, 32 Dec 2025 25:61:61 GMT",
        "yesterday, around noon",
        "x" * 50_000,
        "",
    ],
)
def test_an_unreadable_date_is_ignored_without_raising(value):
    client, _ = clock_client(json_response(200, OK_BODY, Date=value))
    page = run(list_once(client))
    assert page.count == 2 and page.server_time is None
    assert client.server_now() == WALL and client.clock_skew is None


def test_with_the_check_off_even_year_9999_never_raises():
    client, clock = clock_client(
        json_response(200, OK_BODY, Date="Fri, 31 Dec 9999 23:59:59 GMT"), max_clock_skew_seconds=None
    )
    run(list_once(client))
    clock.now += 10.0
    assert client.server_now().year == 9999 and client.clock_skew is None


def test_skew_is_warned_once_per_client_and_the_largest_is_kept(caplog):
    dates = [WALL + timedelta(hours=2), WALL + timedelta(days=3), WALL + timedelta(hours=1)]
    responses = [json_response(200, OK_BODY, Date=http_date(d)) for d in dates]
    client, _ = clock_client(*responses)

    async def main():
        async with client:
            for _ in dates:
                await client.list_jobs("p", {})

    with caplog.at_level(logging.WARNING, logger="voicejobs.client"):
        run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "metastudio.cn-north-4.myhuaweicloud.com" in text and "ahead of" in text
    assert "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS" in text and "local clock" in text
    assert client.clock_skew == timedelta(days=3)
    with pytest.raises(ConfigurationError, match="VOICEJOBS_MAX_CLOCK_SKEW_SECONDS"):
        MetaStudioClient(BASE, TokenAuth(TOKEN), max_clock_skew_seconds=0)


def throttled(**headers: str) -> httpx.Response:
    return json_response(429, {"error_code": "APIGW.0308", "error_msg": "throttled"}, **headers)


def test_retry_after_as_a_date_without_a_server_date_is_measured_on_the_local_clock():
    client, clock = clock_client(
        throttled(**{"Retry-After": http_date(WALL + timedelta(seconds=12))}), json_response(200, OK_BODY),
        jitter=lambda: 0.0,
    )
    assert run(list_once(client)).count == 2
    assert clock.sleeps == [12.0]


def test_retry_after_as_a_date_is_measured_on_a_skewed_server_clock_against_its_own_date():
    server_date = WALL.replace(year=2000)
    client, clock = clock_client(
        throttled(Date=http_date(server_date), **{"Retry-After": http_date(server_date + timedelta(seconds=7))}),
        json_response(200, OK_BODY),
        jitter=lambda: 0.0,
    )
    assert run(list_once(client)).count == 2
    assert clock.sleeps == [7.0] and client.clock_skew is not None


@pytest.mark.parametrize("value", ["Fri, 31 Dec 9999 23:59:59 GMT", "9" * 40, "86400"])
def test_a_retry_after_beyond_the_budget_fails_at_once(value):
    client, clock = clock_client(throttled(**{"Retry-After": value}), max_retry_seconds=60.0)
    with pytest.raises(RetriesExhaustedError) as info:
        run(list_once(client))
    assert clock.sleeps == [] and info.value.attempts == 1


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "soon", "x" * 5_000])
def test_an_unreadable_retry_after_falls_back_to_backoff(value):
    client, clock = clock_client(throttled(**{"Retry-After": value}), json_response(200, OK_BODY), backoff_base=0.5)
    assert run(list_once(client)).count == 2
    assert clock.sleeps == [0.5]


# ---------------------------------------------------------------- 4. credentials in clear text


@pytest.mark.parametrize(
    ("base", "auth", "secret"),
    [
        ("http://metastudio.cn-north-4.myhuaweicloud.com", TokenAuth(TOKEN), "IAM token"),
        ("http://10.1.2.3:8080", AKSKAuth("AKTESTVALUE0001", "SKTESTSECRET-0001"), "request signature"),
    ],
)
def test_plain_http_to_a_remote_host_is_warned_once(caplog, base, auth, secret):
    host = httpx.URL(base).host
    with caplog.at_level(logging.WARNING, logger="voicejobs.client"):
        client = make_client(counting(json_response(200, OK_BODY)), base=base, auth=auth)

        async def main():
            async with client:
                await client.list_jobs("p", {})
                await client.list_jobs("p", {})

        run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert repr(host) in warnings[0] and "use https://" in warnings[0] and secret in warnings[0]
    assert "SKTESTSECRET" not in warnings[0] and TOKEN not in warnings[0]


@pytest.mark.parametrize(
    "base",
    ["http://127.0.0.1:8000", "http://127.8.9.10", "http://localhost:8000", "http://[::1]:8000",
     "http://[::ffff:127.0.0.1]:8000", BASE],
)
def test_loopback_http_and_https_are_not_warned(caplog, base):
    with caplog.at_level(logging.WARNING, logger="voicejobs.client"):
        MetaStudioClient(base, TokenAuth(TOKEN))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- 5. a name that does not resolve


def test_a_name_that_does_not_resolve_fails_at_the_first_attempt():
    # RFC 2606: .invalid never resolves.
    host = "metastudio.cn-nrth-4.myhuaweicloud.invalid"
    clock = FakeClock()
    client = MetaStudioClient(
        f"https://{host}", TokenAuth(TOKEN), max_attempts=6, sleep=clock.sleep, monotonic=clock.monotonic
    )
    with pytest.raises(EndpointUnreachableError) as info:
        run(list_once(client))
    assert info.value.attempts == 1 and client.stats.requests == 1 and clock.sleeps == []
    text = str(info.value)
    assert repr(host) in text and "does not resolve" in text and "after 1 attempt;" in text
    assert "METASTUDIO_ENDPOINT" in text and "METASTUDIO_REGION" in text


def dns_failure(errno: int, message: str):
    def handler(request: httpx.Request) -> httpx.Response:
        handler.requests += 1  # type: ignore[attr-defined]
        if handler.requests == 1:  # type: ignore[attr-defined]
            raise httpx.ConnectError("[Errno] " + message, request=request) from socket.gaierror(errno, message)
        return json_response(200, OK_BODY)

    handler.requests = 0  # type: ignore[attr-defined]
    return handler


def test_a_temporary_resolver_failure_is_retried_a_missing_name_is_not():
    handler = dns_failure(socket.EAI_AGAIN, "Temporary failure in name resolution")
    client = make_client(handler)
    assert run(list_once(client)).count == 2
    assert handler.requests == 2 and dict(client.stats.retries) == {"connection": 1}

    handler = dns_failure(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(EndpointUnreachableError) as info:
        run(list_once(make_client(handler)))
    assert handler.requests == 1 and info.value.attempts == 1
