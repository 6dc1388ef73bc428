"""AK/SK signing must equal the official SDK's Signer byte for byte; the token goes in X-Auth-Token."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import orjson
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from pipelines.metastudio.auth import (
    DATE_FORMAT,
    AKSKAuth,
    TokenAuth,
    _encode,
    canonical_query,
    parse_authorization,
    query_pairs,
    query_pairs_of,
)
from pipelines.metastudio.client import MetaStudioClient

AK, SK, STS = "HPUAEXAMPLEAK0000001", "exampleSecretKey/With+Symbols=0001", "temporary-security-token-0001"
FIXED = datetime(2025, 3, 1, 8, 43, 17, tzinfo=UTC)
PATH = "/v1/0a1b2c3d4e5f60718293a4b5c6d7e8f9/voice-training-manage/user/jobs"

QUERIES = [
    [],
    [("limit", "100"), ("offset", "0")],
    [("voice_name", "my voice"), ("state", "FAILED,WAITING"), ("limit", "100")],
    [("voice_name", "声音 训练"), ("tag", "NEWS"), ("batch_name", "a+b/c?d=e&f")],
    [("create_since", "2025-01-10T08:43:17Z"), ("create_until", "2025-01-11T00:00:00Z"), ("job_id", "~x%y")],
    [("is_ondemand_resource", "true"), ("sort_key", "update_time"), ("sort_dir", "asc")],
]
HEADER_SETS = [
    {},
    {"X-App-UserId": "third-party-user-42"},
    {"X-Security-Token": STS},
    {"X-Security-Token": STS, "X-App-UserId": "user 7"},
]


def sdk_authorization(host: str, query: list[tuple[str, str]], headers: dict[str, str]) -> tuple[str, str]:
    """Authorization header and request URI as the official SDK signs and sends them."""
    header_params = {
        "X-Project-Id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "X-Sdk-Date": FIXED.strftime(DATE_FORMAT),
    }
    header_params.update(headers)
    request = SdkRequest(
        method="GET",
        schema="https",
        host=host,
        resource_path=PATH,
        query_params=list(query),
        header_params=header_params,
        body="",
    )
    signed = Signer(BasicCredentials(AK, SK)).sign(request)
    return signed.header_params["Authorization"], signed.uri


def our_request(host: str, query: list[tuple[str, str]], headers: dict[str, str]) -> httpx.Request:
    security_token = headers.get("X-Security-Token")
    extra = {k: v for k, v in headers.items() if k != "X-Security-Token"}
    url = f"https://{host}{PATH}" + (f"?{canonical_query(query)}" if query else "")
    request = httpx.Request("GET", url, headers={"X-Project-Id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9", **extra})
    AKSKAuth(AK, SK, security_token, clock=lambda: FIXED).sign(request)
    return request


@pytest.mark.parametrize("host", ["metastudio.cn-north-4.myhuaweicloud.com", "127.0.0.1:18080"])
@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("headers", HEADER_SETS)
def test_aksk_signature_equals_the_official_signer(host, query, headers):
    expected_auth, expected_uri = sdk_authorization(host, query, headers)
    request = our_request(host, query, headers)
    assert request.headers["Authorization"] == expected_auth
    # the bytes sent are the bytes signed: the path and query equal the SDK's request URI
    assert request.url.raw_path.decode("ascii") == expected_uri
    assert request.headers["X-Sdk-Date"] == "20250301T084317Z"
    if "X-Security-Token" in headers:
        assert request.headers["X-Security-Token"] == STS


def test_signature_changes_with_every_signed_input():
    base = our_request("h.example", [("limit", "100")], {}).headers["Authorization"]
    assert our_request("h.example", [("limit", "99")], {}).headers["Authorization"] != base
    assert (
        our_request("h.example", [("limit", "100")], {"X-App-UserId": "u"}).headers["Authorization"] != base
    )
    assert our_request("other.example", [("limit", "100")], {}).headers["Authorization"] != base
    parts = parse_authorization(base)
    assert parts == {
        "Access": AK,
        "SignedHeaders": "host;x-project-id;x-sdk-date",
        "Signature": parts["Signature"],
    }
    assert len(parts["Signature"]) == 64


def test_the_client_sends_exactly_what_the_official_signer_signs():
    """End to end through MetaStudioClient: its URL form and headers sign as the SDK would."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=orjson.dumps({"count": 0, "jobs": []}))

    async def main():
        async with MetaStudioClient(
            "https://metastudio.cn-north-4.myhuaweicloud.com",
            AKSKAuth(AK, SK, STS, clock=lambda: FIXED),
            app_user_id="user-9",
            transport=httpx.MockTransport(handler),
        ) as client:
            await client.list_jobs(
                "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
                {"voice_name": "声音, a b", "state": ["FAILED", "WAITING"], "is_ondemand_resource": False},
            )

    asyncio.run(main())
    [request] = seen
    query = [
        ("voice_name", "声音, a b"),
        ("state", "FAILED,WAITING"),
        ("is_ondemand_resource", "false"),
        ("limit", "100"),
    ]
    expected_auth, expected_uri = sdk_authorization(
        "metastudio.cn-north-4.myhuaweicloud.com", query, {"X-Security-Token": STS, "X-App-UserId": "user-9"}
    )
    assert request.headers["Authorization"] == expected_auth
    assert request.url.raw_path.decode("ascii") == expected_uri


def test_token_auth_sets_only_the_token_header():
    request = httpx.Request("GET", f"https://h.example{PATH}")
    flow = TokenAuth("iam-token-value-123").auth_flow(request)
    sent = next(flow)
    assert sent.headers["X-Auth-Token"] == "iam-token-value-123"
    assert "Authorization" not in sent.headers and "X-Sdk-Date" not in sent.headers
    assert "iam-token-value-123" not in repr(TokenAuth("iam-token-value-123"))
    assert SK not in repr(AKSKAuth(AK, SK, STS)) and STS not in repr(AKSKAuth(AK, SK, STS))


RAW_QUERIES = [
    "", "limit=1", "a=1&&b=2&", "a&b=&=c", "a+b=c+d", "x=%2B%20%3A", "x=%zz&y=%4", "v=%E5%A3%B0+%C3%A9",
    "v=%FF%FE", "k=a=b=c", "create_since=2025-01-10T08%3A43%3A17Z&create_until=2025-01-11T00%3A00%3A00Z&limit=1",
    "声=音&ü=1", "~-._=~-._",
]


@pytest.mark.parametrize("raw", RAW_QUERIES)
def test_query_pairs_read_a_query_as_the_signer_read_it_through_httpx(raw):
    """The pairs a signature is made of are those httpx's QueryParams gave, which the signer and
    the simulator's check used before they read the query themselves."""
    assert query_pairs_of(raw) == list(httpx.QueryParams(raw).multi_items())


def test_query_pairs_of_a_url_are_its_query_string_read():
    url = httpx.URL("https://h.example/p?b=2&a=%3A+x&a=1")
    assert query_pairs(url) == [("b", "2"), ("a", ": x"), ("a", "1")]


@pytest.mark.parametrize("value", [
    "", "abc", "AZaz09", "_.-~", "a b", "a/b", "2025-01-10T08:43:17Z", "100%", "声音", "é", "a+b", "\x00", "\n",
    "a~b", "*", "'", "(", "!", ",",
])
def test_encode_is_quote_with_tilde_safe(value):
    assert _encode(value) == quote(value, safe="~")
