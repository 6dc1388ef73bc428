"""The lake in an S3-compatible object store (AWS S3, Huawei OBS, MinIO).

:class:`S3LakeStore` (pyarrow's S3FileSystem) encodes the file in memory and sends it as one
PutObject, which the store applies whole or not at all. pyarrow switches to a multipart upload at 10 MiB, and
a multipart upload it is made to close after a failure completes with the parts it has; a
file of SINGLE_PUT_BYTES or more therefore goes to a temporary key beside the target, is
checked for its full size, and is copied over the target server-side (CopyObject, again
all or nothing). A killed upload leaves at most a temporary key (named like the local
temporary files, which readers skip) and an incomplete multipart upload on the store;
a bucket lifecycle rule (AbortIncompleteMultipartUpload) clears those.

Deleting an object through pyarrow leaves an empty "directory" marker (a zero-byte key ending
in "/") for its parent; readers see no data in it.
"""

from __future__ import annotations

import errno
import ipaddress
import uuid
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.crashpoints import crashpoint
from pipelines.settings import ObjectStoreAccess
from pipelines.warehouse.lakestore import LakeStore, Rows, encode_parquet
from pipelines.warehouse.tables import JOBS_TABLE, STORED_JOBS_SCHEMA, WarehouseError

#: Files of this size or more are uploaded to a temporary key and copied into place (see above).
SINGLE_PUT_BYTES = 8 << 20


def _s3_filesystem(access: ObjectStoreAccess) -> pafs.S3FileSystem:
    """pyarrow's S3 client for the configured store; nothing is sent until it is used."""
    options: dict = {
        "access_key": access.access_key_id,
        "secret_key": access.secret_access_key,
        "session_token": access.session_token,
        "region": access.region,
        # One PutObject per file instead of create/upload/complete (see the module docstring).
        "allow_delayed_open": True,
        "connect_timeout": 10,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if access.endpoint_url:
        url = urlsplit(access.endpoint_url)
        options.update(endpoint_override=url.netloc + url.path.rstrip("/"), scheme=url.scheme,
                       force_virtual_addressing=_virtual_addressing(access))
    return pafs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})


def _virtual_addressing(access: ObjectStoreAccess) -> bool:
    """Whether requests name the bucket in the host (OBS requires it) rather than in the path.

    Unless VOICEJOBS_LAKE_URL_STYLE says, path-style for an endpoint that is an IP address or
    localhost (no bucket.<host> name can resolve there: MinIO, moto), virtual-hosted otherwise."""
    if access.url_style:
        return access.url_style == "vhost"
    host = urlsplit(access.endpoint_url or "").hostname or ""
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        return host != "localhost"


# What an S3 error says -> (the cause in plain words, the fix). First match wins.
_S3_CAUSES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("NETWORK_CONNECTION", "curlCode", "Could not resolve", "Couldn't resolve", "Could not connect",
      "Couldn't connect", "Connection refused", "timed out", "Timeout"),
     "the object store at {endpoint} cannot be reached",
     "check AWS_ENDPOINT_URL and that the store is up and reachable from this machine"),
    (("SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId",
      "EXPIRED_TOKEN", "ExpiredToken", "InvalidToken", "INVALID_TOKEN"),
     "the object store refused the credentials",
     "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)"),
    (("NO_SUCH_BUCKET", "NoSuchBucket"),
     "the bucket {bucket} does not exist",
     "create it, or point VOICEJOBS_LAKE_URI at an existing bucket"),
    (("ACCESS_DENIED", "AccessDenied", "Forbidden"),
     "the object store denied access",
     "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may read, write, list and delete under "
     "{root}"),
)


class S3LakeStore(LakeStore):
    """The lake under ``s3://bucket/prefix`` of an S3-compatible object store."""

    writers = 8

    def __init__(self, bucket: str, prefix: str, access: ObjectStoreAccess) -> None:
        self.bucket = bucket
        self.base = "/".join(part for part in (bucket, prefix, JOBS_TABLE) if part)
        self.root = f"s3://{self.base}"
        # The endpoint's scheme, host and port only: never a user or password in its URL.
        endpoint = urlsplit(access.endpoint_url or "")
        port = f":{endpoint.port}" if endpoint.port else ""
        self.place = f"{self.root} at {endpoint.scheme}://{endpoint.hostname}{port}" if endpoint.hostname else f"{self.root} at AWS"
        self.endpoint = access.endpoint_url or "the region's AWS endpoint"
        self.virtual_hosts = bool(access.endpoint_url) and _virtual_addressing(access)
        self.filesystem = _s3_filesystem(access)

    def location(self, key: str) -> str:
        return f"{self.root}/{key}"

    def read(self, key: str) -> pa.Table | None:
        data = self.read_bytes(key)
        return None if data is None else pq.read_table(pa.BufferReader(data), schema=STORED_JOBS_SCHEMA)

    def read_bytes(self, key: str) -> pa.Buffer | None:
        try:
            with self.filesystem.open_input_stream(f"{self.base}/{key}") as stream:
                return stream.read_buffer()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self.filesystem.get_file_info(f"{self.base}/{key}").type == pafs.FileType.File

    def write(self, key: str, table: Rows) -> None:
        sink = pa.BufferOutputStream()
        encode_parquet(table, sink)
        data = sink.getvalue()
        path = f"{self.base}/{key}"
        if data.size < SINGLE_PUT_BYTES:
            crashpoint("lake_tmp_written")  # the new file complete, the old object untouched
            self._put(path, data)
            return
        tmp = f"{path.rpartition('/')[0]}/.data-{uuid.uuid4().hex}.parquet.tmp"
        try:
            self._put(tmp, data)
            size = self.filesystem.get_file_info(tmp).size
            if size != data.size:
                raise OSError(errno.EIO, f"the uploaded temporary object {tmp} holds {size} of {data.size} bytes")
            crashpoint("lake_tmp_written")
            self.filesystem.copy_file(tmp, path)
        finally:
            with suppress(OSError):
                self.filesystem.delete_file(tmp)

    def _put(self, path: str, data: pa.Buffer) -> None:
        with self.filesystem.open_output_stream(path) as out:
            out.write(data)

    def remove(self, key: str) -> None:
        with suppress(FileNotFoundError):
            self.filesystem.delete_file(f"{self.base}/{key}")

    def files(self) -> list[str]:
        selector = pafs.FileSelector(self.base, recursive=True, allow_not_found=True)
        start = len(self.base) + 1
        return sorted(info.path[start:] for info in self.filesystem.get_file_info(selector)
                      if info.type == pafs.FileType.File)

    def check(self) -> None:
        """Write and remove a probe object: reachability, credentials, bucket and permission at once."""
        probe = f".write-probe-{uuid.uuid4().hex}"
        try:
            self._put(f"{self.base}/{probe}", pa.py_buffer(b""))
            self.filesystem.delete_file(f"{self.base}/{probe}")
        except OSError as exc:
            raise WarehouseError(f"the lake at {self.root} cannot be written: {self.explain(exc)}") from None

    def fix(self, exc: OSError, location: Path | str) -> str:
        return self._cause(exc)[1]

    def explain(self, exc: OSError) -> str:
        """``exc`` as one line: the cause in plain words, the store's own words, and the fix."""
        cause, fix = self._cause(exc)
        said = " ".join(str(exc).split())
        return f"{cause} ({said}); {fix}"

    def _cause(self, exc: OSError) -> tuple[str, str]:
        text = str(exc)
        for needles, cause, fix in _S3_CAUSES:
            if any(needle in text for needle in needles):
                values = {"endpoint": self.endpoint, "bucket": self.bucket, "root": self.root}
                fix = fix.format(**values)
                if self.virtual_hosts and "AWS_ENDPOINT_URL" in fix:
                    fix += (f" (requests went to {self.bucket}.<endpoint host>; a store that wants the bucket in "
                            "the path, as MinIO usually does, needs VOICEJOBS_LAKE_URL_STYLE=path)")
                return cause.format(**values), fix
        return "the object store failed", f"check the object store and VOICEJOBS_LAKE_URI ({self.root})"
