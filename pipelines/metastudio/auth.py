"""Authentication for the MetaStudio API: IAM token or AK/SK request signing.

AK/SK follows the algorithm ``SDK-HMAC-SHA256`` exactly as the official
``huaweicloudsdkcore.signer.Signer`` implements it (tests compare the two).
The same canonicalisation is used by the embedded simulator to verify
signatures, so both sides of the wire share one definition.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import parse_qsl, quote, unquote

import httpx

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


#: A string quote() leaves as it is: ASCII letters, digits and ``_.-~`` only.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def _encode(value: str) -> str:
    """Percent-encode everything but unreserved characters and ``~`` (the SDK's rule). Most
    names and values need nothing encoded, and are returned without quote()'s pass over them."""
    return value if _UNRESERVED(value) else quote(value, safe="~")


@lru_cache(maxsize=256)  # a client signs one path per project, again and again
def canonical_uri(path: str) -> str:
    """Path segments percent-encoded, always ending in ``/``."""
    encoded = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Sorted ``key=value`` pairs, both percent-encoded; the form the SDK signs and sends."""
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params))


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    body: bytes = b"",
) -> str:
    """The canonical request; ``headers`` keys must already be lower-case."""
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in signed_headers)
    body_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers,
            ";".join(signed_headers),
            body_hash,
        ]
    )


def signature(sk: str, sdk_date: str, canonical: str) -> str:
    """Hex HMAC-SHA256 keyed by SK over the string to sign."""
    string_to_sign = f"{ALGORITHM}\n{sdk_date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    return hmac.new(sk.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def parse_authorization(value: str) -> dict[str, str] | None:
    """Split ``SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=...``; None if malformed."""
    if not value.startswith(ALGORITHM + " "):
        return None
    parts: dict[str, str] = {}
    for item in value[len(ALGORITHM) + 1 :].split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            return None
        parts[key] = val
    if not {"Access", "SignedHeaders", "Signature"} <= parts.keys():
        return None
    return parts


def query_pairs(url: httpx.URL) -> list[tuple[str, str]]:
    """Decoded query pairs of a URL, in order."""
    return query_pairs_of(url.query.decode("ascii"))


def query_pairs_of(query: str) -> list[tuple[str, str]]:
    """Decoded pairs of a raw query string, in order, blank values kept (``+`` a space, ``a``
    alone ``("a", "")``, empty pieces skipped): without the httpx.URL and QueryParams a signature
    check once built for it, 41 us and more a request."""
    return parse_qsl(query, keep_blank_values=True)


class TokenAuth(httpx.Auth):
    """IAM token sent as ``X-Auth-Token``."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request):
        request.headers["X-Auth-Token"] = self._token
        yield request

    def __repr__(self) -> str:  # never show the token
        return "TokenAuth(token=***)"


class AKSKAuth(httpx.Auth):
    """AK/SK signing (``SDK-HMAC-SHA256``), optionally with a security token.

    Signs ``host``, ``x-sdk-date``, ``x-project-id`` and, when present,
    ``x-security-token`` and ``x-app-userid`` (every header the request carries
    under those names). The query string must have been built with
    :func:`canonical_query` so the bytes sent are the bytes signed.
    """

    SIGNED = ("host", "x-app-userid", "x-project-id", "x-sdk-date", "x-security-token")

    def __init__(self, ak: str, sk: str, security_token: str | None = None, clock=None) -> None:
        self._ak = ak
        self._sk = sk
        self._security_token = security_token
        self._clock = clock or (lambda: datetime.now(UTC))

    def auth_flow(self, request: httpx.Request):
        self.sign(request)
        yield request

    def sign(self, request: httpx.Request) -> None:
        request.headers["X-Sdk-Date"] = self._clock().strftime(DATE_FORMAT)
        if self._security_token:
            request.headers["X-Security-Token"] = self._security_token
        headers = {k.lower(): v for k, v in request.headers.items()}
        headers.setdefault("host", request.url.netloc.decode("ascii"))
        signed = sorted(name for name in self.SIGNED if name in headers)
        canonical = canonical_request(
            request.method,
            request.url.path,
            query_pairs(request.url),
            headers,
            signed,
            request.content if request.content else b"",
        )
        sig = signature(self._sk, headers["x-sdk-date"], canonical)
        request.headers["Authorization"] = (
            f"{ALGORITHM} Access={self._ak}, SignedHeaders={';'.join(signed)}, Signature={sig}"
        )

    def __repr__(self) -> str:  # never show the secret
        return f"AKSKAuth(ak={self._ak[:4]}***, sk=***)"
