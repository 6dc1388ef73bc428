"""Where the Parquet lake goes: a local directory or an ``s3://`` store, and the store's access.

OBS, MinIO and other S3-compatible stores are reached as ``s3://`` with AWS_ENDPOINT_URL; the
credentials come from the standard AWS_* variables (see :class:`ObjectStoreAccess`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from pipelines.metastudio.errors import ConfigurationError
from pipelines.redact import register_secret

#: An S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens.
S3_BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_lake_uri(uri: str) -> tuple[str, str] | None:
    """(bucket, prefix) of an ``s3://bucket/prefix`` lake, None for a local directory.

    Any other scheme is refused with a ConfigurationError: OBS and MinIO are reached as
    s3:// with AWS_ENDPOINT_URL."""
    scheme, sep, rest = uri.strip().partition("://")
    if not sep or scheme.lower() == "file":
        return None
    if scheme.lower() not in ("s3", "s3a"):
        raise ConfigurationError(
            f"VOICEJOBS_LAKE_URI={uri!r} has the scheme {scheme!r}; use a local directory or s3://bucket/prefix "
            "(Huawei OBS, MinIO and other S3-compatible stores too, with AWS_ENDPOINT_URL)."
        )
    bucket, _, prefix = rest.partition("/")
    if not S3_BUCKET_PATTERN.fullmatch(bucket):
        raise ConfigurationError(
            f"VOICEJOBS_LAKE_URI={uri!r} does not name a bucket; write it as s3://bucket/prefix "
            "(3 to 63 lowercase letters, digits, '.' or '-')."
        )
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class ObjectStoreAccess:
    """Credentials, region and endpoint of the S3-compatible store of an s3:// lake.

    From the standard AWS_* variables, and VOICEJOBS_LAKE_URL_STYLE. Without keys, the store's client looks in its usual
    places (~/.aws, an instance role). Secrets are registered for redaction when read."""

    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = None
    url_style: str | None = None  # "vhost" or "path"; None: path for IP and localhost endpoints

    def __post_init__(self) -> None:
        for secret in (self.access_key_id, self.secret_access_key, self.session_token):
            register_secret(secret)
        if self.url_style not in (None, "vhost", "path"):
            raise ConfigurationError(
                f"VOICEJOBS_LAKE_URL_STYLE={self.url_style!r} is not known; use 'vhost' or 'path'."
            )

    def validate(self) -> None:
        """Raise a ConfigurationError unless these settings can work (checked when an s3:// lake uses them)."""
        if bool(self.access_key_id) != bool(self.secret_access_key):
            missing = "AWS_SECRET_ACCESS_KEY" if self.access_key_id else "AWS_ACCESS_KEY_ID"
            raise ConfigurationError(f"object-store credentials need both keys; {missing} is not set.")
        if self.endpoint_url:
            parsed = httpx.URL(self.endpoint_url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ConfigurationError(
                    f"AWS_ENDPOINT_URL={self.endpoint_url!r} is not an http(s) URL; set it like "
                    "https://obs.cn-north-4.myhuaweicloud.com or http://127.0.0.1:9000."
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ObjectStoreAccess:
        def text(name: str) -> str | None:
            return env.get(name, "").strip() or None

        return cls(
            access_key_id=text("AWS_ACCESS_KEY_ID"),
            secret_access_key=text("AWS_SECRET_ACCESS_KEY"),
            session_token=text("AWS_SESSION_TOKEN"),
            region=text("AWS_REGION"),
            endpoint_url=text("AWS_ENDPOINT_URL"),
            url_style=(text("VOICEJOBS_LAKE_URL_STYLE") or "").lower() or None,
        )
