"""MetaStudioClient: one request, retries, throttling and errors, on a mock transport and a fake clock.

The same client against the simulator over loopback is in tests/integration/test_client_simulator.py.
"""

from __future__ import annotations

import asyncio
import random
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import orjson
import pytest

from pipelines.metastudio.auth import AKSKAuth, TokenAuth, parse_authorization
from pipelines.metastudio.client import PACING_MARGIN, MetaStudioClient, Page
from pipelines.metastudio.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    EndpointUnreachableError,
    MetaStudioError,
    RetriesExhaustedError,
)
from pipelines.redact import register_secret
from tests.support.clock import FakeClock as _Clock

AK, SK, STS, TOKEN = "AKTESTVALUE0001", "SKTESTSECRET-0001", "STS-TEMP-TOKEN-0001", "IAM-TOKEN-VALUE-0001"
SECRETS = (SK, STS, TOKEN)
BASE = "https://metastudio.cn-north-4.myhuaweicloud.com"
OK_BODY = {"count": 2, "jobs": [{"job_id": "a"}, {"job_id": "b"}]}


class FakeClock(_Clock):
    """The support clock without the yield on sleep: these tests drive one request at a time."""

    def __init__(self) -> None:
        super().__init__(yields=False)


def json_response(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(body), headers={"Content-Type": "application/json", **headers}
    )


def scripted(*responses):
    """A handler answering with the given responses (or raising the given exceptions) in order."""
    queue = list(responses)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, type) and issubclass(item, Exception):
            raise item("simulated failure", request=request)
        return item

    handler.requests = seen  # type: ignore[attr-defined]
    return handler


def make_client(
    handler, clock: FakeClock | None = None, auth: httpx.Auth | None = None, **kwargs
) -> MetaStudioClient:
    clock = clock or FakeClock()
    kwargs.setdefault("jitter", lambda: 1.0)
    return MetaStudioClient(
        BASE,
        auth or TokenAuth(TOKEN),
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        **kwargs,
    )


def run(coro):
    return asyncio.run(coro)


async def list_once(client: MetaStudioClient, params=None) -> Page:
    async with client:
        return await client.list_jobs("proj-1", params or {})


# ---------------------------------------------------------------- request shape


def test_url_headers_and_params_are_canonical_and_signed():
    handler = scripted(json_response(200, OK_BODY))
    clock = FakeClock()
    client = make_client(handler, clock, auth=AKSKAuth(AK, SK, STS), app_user_id="user-7")
    page = run(
        list_once(
            client,
            {
                "voice_name": "my voice, 声音",
                "state": ["FAILED", "WAITING"],
                "is_ondemand_resource": True,
                "create_since": datetime(2025, 1, 10, 8, 43, 17, 999_000, tzinfo=UTC),
                "tag": None,
            },
        )
    )
    assert page.count == 2 and [j["job_id"] for j in page.jobs] == ["a", "b"]
    request = handler.requests[0]
    assert request.url.path == "/v1/proj-1/voice-training-manage/user/jobs"
    query = request.url.query.decode()
    # sorted, percent-encoded, limit defaulted to 100, bool lower-case, time in RFC 3339 whole seconds
    assert query == (
        "create_since=2025-01-10T08%3A43%3A17Z&is_ondemand_resource=true&limit=100"
        "&state=FAILED%2CWAITING&voice_name=my%20voice%2C%20%E5%A3%B0%E9%9F%B3"
    )
    assert request.headers["X-Project-Id"] == "proj-1"
    assert request.headers["X-App-UserId"] == "user-7"
    auth = parse_authorization(request.headers["Authorization"])
    assert auth is not None
    assert auth["SignedHeaders"] == "host;x-app-userid;x-project-id;x-sdk-date;x-security-token"


def test_page_has_server_time_and_server_now_follows_date_header():
    server_date = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    handler = scripted(json_response(200, OK_BODY, Date=format_datetime(server_date, usegmt=True)))
    clock = FakeClock()
    local = datetime(2025, 3, 1, 11, 58, 1, tzinfo=UTC)
    client = make_client(handler, clock, wall_clock=lambda: local)
    assert client.server_now() == local  # the local clock until a Date is seen
    page = run(list_once(client))
    assert page.server_time == server_date
    assert client.server_now() == server_date
    clock.now += 42.5
    assert client.server_now() == server_date + timedelta(seconds=42.5)


def test_server_now_uses_the_newest_date_and_never_runs_backwards():
    dates = [datetime(2025, 3, 1, 12, 0, 10, tzinfo=UTC), datetime(2025, 3, 1, 12, 0, 9, tzinfo=UTC)]
    dates += [dates[0]]
    handler = scripted(*(json_response(200, OK_BODY, Date=format_datetime(d, usegmt=True)) for d in dates))
    clock = FakeClock()

    async def main():
        async with make_client(handler, clock) as client:
            await client.list_jobs("p", {})
            clock.now += 3.0
            await client.list_jobs("p", {})  # an older Date (another server node): ignored
            assert client.server_now() == dates[0] + timedelta(seconds=3)
            clock.now += 2.0
            await client.list_jobs("p", {})  # the same Date again, received later: the earlier estimate
            assert client.server_now() == dates[0]

    run(main())


# ---------------------------------------------------------------- retries


def test_429_retry_after_seconds_is_honoured_even_with_zero_jitter():
    handler = scripted(
        json_response(429, {"error_code": "APIGW.0308", "error_msg": "throttled"}, **{"Retry-After": "7"}),
        json_response(200, OK_BODY),
    )
    clock = FakeClock()
    client = make_client(handler, clock, jitter=lambda: 0.0)
    page = run(list_once(client))
    assert page.count == 2
    assert clock.sleeps and clock.sleeps[0] >= 7.0
    assert sum(clock.sleeps) >= 7.0
    assert client.stats.retries["429"] == 1 and client.stats.requests == 2
    assert client.stats.backoff_seconds >= 7.0


def test_429_retry_after_http_date_is_measured_against_the_server_date():
    server_date = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    handler = scripted(
        json_response(
            429,
            {"error_code": "APIGW.0308", "error_msg": "throttled"},
            **{
                "Date": format_datetime(server_date, usegmt=True),
                "Retry-After": format_datetime(server_date + timedelta(seconds=12), usegmt=True),
            },
        ),
        json_response(200, OK_BODY),
    )
    clock = FakeClock()
    run(list_once(make_client(handler, clock, jitter=lambda: 0.0)))
    assert clock.sleeps[0] >= 12.0


def test_jitter_never_shortens_a_short_retry_after_and_backoff_grows():
    handler = scripted(
        json_response(429, {}, **{"Retry-After": "0.1"}),
        json_response(503, {"error_code": "X", "error_msg": "busy"}),
        json_response(503, {}),
        json_response(200, OK_BODY),
    )
    clock = FakeClock()
    run(list_once(make_client(handler, clock, backoff_base=0.5)))
    # full jitter at its maximum: 0.5, 1.0, 2.0; the 429 asked for 0.1 and got at least that
    assert clock.sleeps == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    ("first", "cause"),
    [
        (json_response(500, {"error_code": "MSS.500", "error_msg": "internal"}), "5xx"),
        (json_response(503, {"error_code": "MSS.503", "error_msg": "busy"}), "5xx"),
        (httpx.Response(502, content=b"<html><body>Bad Gateway</body></html>"), "5xx"),
        (httpx.Response(200, content=b"<html><body>maintenance</body></html>"), "malformed"),
        (httpx.Response(200, content=b'{"count": 3, "jobs": [{"job_id": "a"'), "malformed"),
        (json_response(200, {"count": "3", "jobs": []}), "malformed"),
        (json_response(200, {"count": 1, "jobs": ["not-an-object"]}), "malformed"),
        (json_response(200, [1, 2]), "malformed"),
        (httpx.ReadTimeout, "timeout"),
        (httpx.ConnectTimeout, "timeout"),
        (httpx.RemoteProtocolError, "connection"),
        (httpx.ConnectError, "connection"),
    ],
)
def test_retryable_failures_are_retried_and_counted_by_cause(first, cause):
    handler = scripted(first, json_response(200, OK_BODY))
    clock = FakeClock()
    client = make_client(handler, clock)
    page = run(list_once(client))
    assert page.count == 2
    assert len(handler.requests) == 2
    assert dict(client.stats.retries) == {cause: 1}
    stats = client.stats.as_dict()
    assert stats["retries"][cause] == 1 and stats["retries_total"] == 1
    assert stats["requests"] == 2 and stats["pages"] == 1 and stats["jobs"] == 2
    assert stats["wait_seconds"] >= stats["backoff_seconds"] > 0


def test_attempts_are_bounded():
    handler = scripted(json_response(503, {"error_code": "MSS.503", "error_msg": "busy"}))
    clock = FakeClock()
    client = make_client(handler, clock, max_attempts=3)
    with pytest.raises(RetriesExhaustedError) as info:
        run(list_once(client))
    err = info.value
    assert len(handler.requests) == 3 and err.attempts == 3
    assert err.status == 503 and err.error_code == "MSS.503"
    text = str(err)
    assert "HTTP 503" in text and "3 attempts" in text and "VOICEJOBS_MAX_ATTEMPTS" in text
    assert client.stats.retries["5xx"] == 3


def test_total_retry_time_is_bounded():
    handler = scripted(json_response(500, {}))
    clock = FakeClock()
    client = make_client(handler, clock, max_attempts=100, max_retry_seconds=10.0, backoff_base=1.0)
    with pytest.raises(RetriesExhaustedError) as info:
        run(list_once(client))
    # waits of 1, 2 and 4 s fit in 10 s; the next (8 s) would not, so the client gives up without sleeping it
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert info.value.attempts == 4


def test_retry_after_beyond_the_time_budget_fails_at_once_instead_of_sleeping():
    handler = scripted(json_response(429, {}, **{"Retry-After": "3600"}))
    clock = FakeClock()
    with pytest.raises(RetriesExhaustedError) as info:
        run(list_once(make_client(handler, clock, max_retry_seconds=60.0)))
    assert clock.sleeps == []
    assert info.value.status == 429 and "HTTP 429" in str(info.value)


def test_timeouts_until_exhausted_name_the_cause():
    handler = scripted(httpx.ReadTimeout)
    with pytest.raises(RetriesExhaustedError) as info:
        run(list_once(make_client(handler, max_attempts=2)))
    assert "timeout" in str(info.value) and "2 attempts" in str(info.value)


def test_unreachable_endpoint_names_the_host_and_the_settings():
    # A real refused connection on loopback: bind a port, close it, connect to it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clock = FakeClock()
    client = MetaStudioClient(
        f"http://127.0.0.1:{port}",
        TokenAuth(TOKEN),
        max_attempts=3,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    with pytest.raises(EndpointUnreachableError) as info:
        run(list_once(client))
    text = str(info.value)
    assert "127.0.0.1" in text and "METASTUDIO_ENDPOINT" in text and "METASTUDIO_REGION" in text
    assert "refused" in text and info.value.attempts == 3
    assert client.stats.retries["connection"] == 3


# ---------------------------------------------------------------- errors that are not retried


@pytest.mark.parametrize(
    ("status", "body", "auth", "error", "fix"),
    [
        (
            400,
            {"error_code": "MSS.00000001", "error_msg": "limit must be within 1..100"},
            None,
            BadRequestError,
            "MSS.00000001: limit must be within 1..100",
        ),
        (
            401,
            {"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication information"},
            "aksk",
            AuthenticationError,
            "HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK",
        ),
        (
            401,
            {"error_code": "APIGW.0307", "error_msg": "The token has expired"},
            "token",
            AuthenticationError,
            "METASTUDIO_AUTH_TOKEN",
        ),
        (
            401,
            {"error_code": "APIGW.0301", "error_msg": "the security token is invalid"},
            "aksk",
            AuthenticationError,
            "HUAWEICLOUD_SDK_SECURITY_TOKEN",
        ),
        (
            401,
            {
                "error_code": "APIGW.0303",
                "error_msg": "the request has expired (X-Sdk-Date is 20 minutes off)",
            },
            "aksk",
            AuthenticationError,
            "local clock",
        ),
        (
            403,
            {"error_code": "APIGW.0302", "error_msg": "no permission"},
            "aksk",
            AuthenticationError,
            "HUAWEICLOUD_SDK_PROJECT_ID",
        ),
        (
            403,
            {"error_code": "MSS.403", "error_msg": "forbidden"},
            "token",
            AuthenticationError,
            "HUAWEICLOUD_SDK_PROJECT_ID",
        ),
        (
            404,
            {"error_code": "APIGW.0101", "error_msg": "not found"},
            None,
            ConfigurationError,
            "METASTUDIO_ENDPOINT",
        ),
    ],
)
def test_client_errors_are_not_retried_and_name_the_fix(status, body, auth, error, fix):
    handler = scripted(json_response(status, body))
    clock = FakeClock()
    credentials = AKSKAuth(AK, SK, STS) if auth == "aksk" else TokenAuth(TOKEN)
    client = make_client(handler, clock, auth=credentials)
    with pytest.raises(error) as info:
        run(list_once(client))
    assert len(handler.requests) == 1 and clock.sleeps == []
    err = info.value
    text = str(err)
    assert fix in text
    assert err.status == status and err.error_code == body["error_code"]
    assert text.count(". ") == 0 and text.endswith(".")  # one sentence
    assert "\n" not in text and BASE not in text
    for secret in (*SECRETS, AK):
        assert secret not in text and secret not in repr(err)
    assert sum(client.stats.retries.values()) == 0


def test_error_texts_never_carry_secrets_even_when_the_server_echoes_them():
    for secret in SECRETS:
        register_secret(secret)
    handler = scripted(json_response(400, {"error_code": "MSS.1", "error_msg": f"bad header {TOKEN} / {SK}"}))
    with pytest.raises(BadRequestError) as info:
        run(list_once(make_client(handler)))
    assert TOKEN not in str(info.value) and SK not in str(info.value)
    assert "MSS.1" in str(info.value)


def test_every_error_class_is_a_metastudio_error_with_status_and_code():
    for cls in (
        ConfigurationError,
        AuthenticationError,
        BadRequestError,
        RetriesExhaustedError,
        EndpointUnreachableError,
    ):
        assert issubclass(cls, MetaStudioError)
    err = RetriesExhaustedError("last cause: HTTP 502", 6, 12.5, status=502)
    assert err.status == 502 and err.error_code is None and "6 attempts" in str(err)


def test_client_repr_and_logs_hide_credentials(caplog):
    handler = scripted(json_response(503, {}), json_response(200, OK_BODY))
    client = make_client(handler, auth=AKSKAuth(AK, SK, STS))
    with caplog.at_level("DEBUG", logger="voicejobs.client"):
        run(list_once(client))
    assert caplog.records, "retries and requests are logged"
    logged = caplog.text + repr(client)
    for secret in (*SECRETS, "Authorization", "Signature="):
        assert secret not in logged


# ---------------------------------------------------------------- concurrency and pacing


class OversleepingClock(FakeClock):
    """A fake clock whose sleeps end late, as on a busy event loop: ``late()`` seconds after due."""

    def __init__(self, late) -> None:
        super().__init__()
        self.late = late

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.late()


def _paced_starts(clock: FakeClock, rate: float, n: int) -> tuple[list[float], object]:
    """Start times (by ``clock``) of ``n`` concurrent requests of a client capped at ``rate``/s."""
    starts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(clock.now)
        return json_response(200, OK_BODY)

    async def main():
        async with make_client(handler, clock, max_requests_per_second=rate) as client:
            await asyncio.gather(*(client.list_jobs("p", {}) for _ in range(n)))
            return client.stats

    stats = run(main())
    assert len(starts) == n
    return starts, stats


def test_rate_pacing_spaces_request_starts():
    """12 concurrent requests at 40/s, on an injected clock: the second starts half an interval
    after the first (the schedule restarts from now, no burst), then one every interval."""
    interval = PACING_MARGIN / 40
    clock = FakeClock()
    starts, stats = _paced_starts(clock, 40.0, 12)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps == pytest.approx([interval / 2] + [interval] * 10)
    assert stats.wait_seconds == pytest.approx(sum(clock.sleeps)) == pytest.approx(10.5 * interval)


@pytest.mark.parametrize("seed", range(3))
def test_late_wake_ups_are_made_up_by_the_next_slot(seed):
    """Sleeps ending up to just under half an interval late (a busy event loop) do not add up
    over 200 requests: each is made up by the next slot, the ideal schedule is kept."""
    interval, n = PACING_MARGIN / 40, 200
    rng = random.Random(seed)
    clock = OversleepingClock(lambda: rng.uniform(0, 0.49 * interval))
    starts, stats = _paced_starts(clock, 40.0, n)
    span = starts[-1] - starts[0]
    # The ideal schedule: half an interval, then n - 2 intervals, plus the last one's lateness.
    assert (n - 1.5) * interval - 1e-9 <= span < (n - 1) * interval  # 200 x 0.25 intervals did not add up
    assert stats.wait_seconds == pytest.approx(sum(clock.sleeps))


@pytest.mark.parametrize("worst", [0.9, 3.0])
def test_a_late_wake_up_never_brings_two_starts_closer_than_half_an_interval(worst):
    interval, n = PACING_MARGIN / 40, 200
    rng = random.Random(7)
    clock = OversleepingClock(lambda: rng.uniform(0, worst * interval))
    starts, _ = _paced_starts(clock, 40.0, n)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= interval / 2 - 1e-9  # made up, but never by a burst
    assert starts[-1] - starts[0] >= (n - 1.5) * interval - 1e-9  # never faster than the cap overall


@pytest.mark.parametrize("late", [0.0, 0.5, 0.9], ids=["on-time", "half-late", "nearly-an-interval-late"])
def test_pacing_never_trips_a_server_cap_equal_to_the_rate(late):
    """A token-bucket server (refill = cap, a burst of 2) on the same clock never answers 429 to
    a client paced at the cap, also when the client's sleeps end late."""
    cap = 50.0
    clock = OversleepingClock(lambda: late / cap)
    state = {"tokens": 2.0, "at": clock.now, "throttled": 0, "admitted": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        now = clock.now
        state["tokens"] = min(2.0, state["tokens"] + (now - state["at"]) * cap)
        state["at"] = now
        if state["tokens"] < 1.0:
            state["throttled"] += 1
            return json_response(429, {}, **{"Retry-After": "1"})
        state["tokens"] -= 1.0
        state["admitted"] += 1
        return json_response(200, OK_BODY)

    async def main():
        async with make_client(handler, clock, max_requests_per_second=cap) as client:
            await asyncio.gather(*(client.list_jobs("p", {}) for _ in range(25)))
            return client.stats

    stats = run(main())
    assert state["throttled"] == 0 and stats.retries["429"] == 0
    assert stats.pages == state["admitted"] == 25


def test_an_unpaced_client_does_trip_that_server_cap():
    """The cap above is not toothless: the same 25 requests without pacing are throttled."""
    clock = FakeClock()
    state = {"tokens": 2.0, "throttled": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if state["tokens"] < 1.0:
            state["throttled"] += 1
            return json_response(429, {}, **{"Retry-After": "1"})
        state["tokens"] -= 1.0
        return json_response(200, OK_BODY)

    async def main():
        async with make_client(handler, clock, max_in_flight=25) as client:
            await asyncio.gather(*(client.list_jobs("p", {}) for _ in range(25)), return_exceptions=True)

    run(main())
    assert state["throttled"] >= 23


def test_in_flight_requests_are_bounded():
    active = {"now": 0, "max": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.01)
        active["now"] -= 1
        return json_response(200, OK_BODY)

    async def main():
        async with MetaStudioClient(
            BASE, TokenAuth(TOKEN), transport=httpx.MockTransport(handler), max_in_flight=3
        ) as client:
            await asyncio.gather(*(client.list_jobs("p", {}) for _ in range(12)))

    run(main())
    assert active["max"] == 3


def test_a_429_pauses_every_request_not_only_the_throttled_one():
    clock = FakeClock()
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(clock.now)
        if len(calls) == 1:
            return json_response(429, {}, **{"Retry-After": "5"})
        return json_response(200, OK_BODY)

    async def main():
        async with make_client(handler, clock, jitter=lambda: 0.0) as client:
            await client.list_jobs("p", {})
            await client.list_jobs("p", {})  # a fresh request after the pause also respects it

    run(main())
    assert calls[1] >= 1_005.0 and calls[2] >= 1_005.0


def test_invalid_settings_raise_configuration_errors():
    with pytest.raises(ConfigurationError, match="METASTUDIO_ENDPOINT"):
        MetaStudioClient("metastudio.example.com", TokenAuth(TOKEN))
    with pytest.raises(ConfigurationError):
        MetaStudioClient(BASE, TokenAuth(TOKEN), max_in_flight=0)
    with pytest.raises(ConfigurationError):
        MetaStudioClient(BASE, TokenAuth(TOKEN), max_requests_per_second=0)


def test_a_cookie_an_answer_sets_is_neither_kept_nor_sent_back():
    """The API authenticates each request by itself; a cookie set on the way (a proxy, a
    gateway) does not ride along on the next request."""
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("Cookie"))
        response = json_response(200, OK_BODY)
        response.headers["Set-Cookie"] = "session=abc123; Path=/"
        return response

    client = make_client(handler)

    async def twice() -> list[Page]:
        async with client:
            return [await client.list_jobs("proj-1", {}) for _ in range(2)]

    pages = run(twice())
    assert [len(page.jobs) for page in pages] == [2, 2]
    assert sent == [None, None]


def test_the_client_keeps_no_cookie_jar_and_takes_no_cookies():
    """Requests go to the transport itself, not through httpx's client and its cookie jar: there
    is nowhere a cookie could be kept, and none can be handed to the client."""
    client = make_client(lambda request: json_response(200, OK_BODY))
    assert not any(isinstance(value, httpx.Cookies | httpx.AsyncClient) for value in vars(client).values())
    with pytest.raises(TypeError):
        MetaStudioClient(BASE, TokenAuth(TOKEN), cookies={"session": "abc"})  # type: ignore[call-arg]
