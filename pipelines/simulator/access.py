"""Who may list jobs: an IAM token in ``X-Auth-Token``, or a request signed with an AK/SK
pair (temporary pairs also with their signed ``X-Security-Token``), answered like API Gateway
answers when they fail."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime

import orjson

from pipelines.metastudio import auth

from .config import SimulatorConfig

_MAX_SKEW_SECONDS = 15 * 60
_IAM = "Incorrect IAM authentication information: "


class Reject(Exception):
    """An error answer: status, error_code, error_msg."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error_code": code, "error_msg": message})


def _refuse(reason: str) -> Reject:
    return Reject(401, "APIGW.0301", _IAM + reason)


def authenticate(
    config: SimulatorConfig,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    project_id: str,
) -> None:
    """Raise :class:`Reject` unless the request carries valid credentials for ``project_id``."""
    token = headers.get("X-Auth-Token")
    if token is not None:
        if token in config.expired_tokens:
            raise Reject(401, "APIGW.0307", "The token has expired. Obtain a new token.")
        if not any(hmac.compare_digest(token, known) for known in config.tokens):
            raise _refuse("token verification failed.")
        return
    authorization = headers.get("Authorization")
    if authorization is None:
        raise _refuse("no authentication information in the request.")
    parts = auth.parse_authorization(authorization)
    if parts is None:
        raise _refuse("malformed Authorization header.")
    secret, security_token = _secret_of(config, parts["Access"])
    lowered = {name.lower(): value for name, value in headers.items()}
    signed = parts["SignedHeaders"].split(";")
    _check_signed_headers(lowered, signed, security_token)
    pairs = auth.query_pairs_of(query)
    canonical = auth.canonical_request(method, path, pairs, lowered, signed, body)
    expected = auth.signature(secret, lowered["x-sdk-date"], canonical)
    if not hmac.compare_digest(expected, parts["Signature"]):
        raise _refuse("the request signature does not match.")
    sent_project = lowered.get("x-project-id")
    if sent_project is not None and sent_project != project_id:
        raise Reject(403, "MSS.00000003", "X-Project-Id does not match the project in the request path.")


def _secret_of(config: SimulatorConfig, access: str) -> tuple[str, str | None]:
    """(secret key, security token or None) of an access key."""
    if access in config.credentials:
        return config.credentials[access], None
    if access in config.temporary_credentials:
        return config.temporary_credentials[access]
    raise _refuse("the access key does not exist.")


def _check_signed_headers(headers: dict[str, str], signed: list[str], security_token: str | None) -> None:
    """The headers a signature must cover are signed and sent, and the signing time is fresh."""
    if "host" not in signed or "x-sdk-date" not in signed:
        raise _refuse("host and x-sdk-date must be signed.")
    missing = [name for name in signed if name not in headers]
    if missing:
        raise _refuse(f"signed header {missing[0]} is missing.")
    try:
        signed_at = datetime.strptime(headers["x-sdk-date"], auth.DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _refuse("X-Sdk-Date is malformed.") from None
    if abs((datetime.now(UTC) - signed_at).total_seconds()) > _MAX_SKEW_SECONDS:
        raise Reject(
            401,
            "APIGW.0303",
            "Incorrect app authentication information: the request has expired "
            "(X-Sdk-Date is more than 15 minutes off).",
        )
    if security_token is not None:
        sent = headers.get("x-security-token")
        if sent is None or "x-security-token" not in signed:
            raise _refuse("temporary credentials need a signed X-Security-Token.")
        if not hmac.compare_digest(sent, security_token):
            raise _refuse("the security token is invalid.")
