"""Where the lake's files live: a local directory or an S3-compatible object store.

:class:`LakeStore` is everything the lake asks of its storage, by key, a path relative to the
table's root (``create_day=YYYY-MM-DD/project_id=<id>/data.parquet``): read the old file of
a partition, replace it, remove an emptied one, list the files there are (for rebuild_lake),
and say where a key is and what to do when writing it failed.

Every write replaces a file whole or leaves the old one readable:

- :class:`LocalLakeStore` writes a temporary file beside the target, fsyncs it, renames it
  over the target with os.replace and fsyncs the directory.
- :class:`S3LakeStore` (pyarrow's S3FileSystem; AWS S3, Huawei OBS, MinIO and other
  S3-compatible stores) encodes the file in memory and sends it as one PutObject, which the
  store applies whole or not at all. pyarrow switches to a multipart upload at 10 MiB, and
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
import os
import re
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.crashpoints import crashpoint
from pipelines.settings import ObjectStoreAccess, parse_lake_uri
from pipelines.warehouse.tables import JOBS_TABLE, STORED_JOBS_SCHEMA, WarehouseError, probe_writable

T = TypeVar("T")
R = TypeVar("R")

#: Files of this size or more are uploaded to a temporary key and copied into place (see above).
SINGLE_PUT_BYTES = 8 << 20
#: Temporary files of interrupted writes: skipped by readers (the leading dot), removed by rebuild_lake.
TEMPORARY = re.compile(r"(^|/)\.data-[^/]*\.parquet\.tmp$")


def encode_parquet(table: pa.Table, sink) -> None:
    """Write ``table`` as one lake file to ``sink`` (a path, file object or Arrow stream)."""
    # Dictionary pages cost a quarter of the time of a small file and saved nothing after zstd
    # on these columns.
    pq.write_table(table, sink, compression="zstd", use_dictionary=False)


#: fsyncs in flight at once: the file system commits concurrent ones together.
_SYNCS = 16


def _side_by_side(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``fn`` of every item, ``workers`` at a time; the results in the order of ``items``.

    Parquet encoding and compression release the GIL, fsyncs and uploads wait on the disk
    or the network."""
    items = list(items)
    if len(items) <= 1 or workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="lake") as pool:
        return list(pool.map(fn, items))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LakeStore(ABC):
    """The storage of the lake's files, addressed by keys relative to the table's root."""

    #: The table's root as people write it: a directory, or s3://bucket/prefix/voice_training_jobs.
    root: str
    #: Partitions written at once: encoding is CPU-bound locally, uploads wait on the network.
    writers: int = 2

    @abstractmethod
    def location(self, key: str) -> Path | str:
        """Where ``key`` is: a Path for a local lake, an s3:// URI otherwise."""

    @abstractmethod
    def read(self, key: str) -> pa.Table | None:
        """The file at ``key`` as STORED_JOBS_SCHEMA; None when there is none. Raises when unreadable."""

    @abstractmethod
    def write(self, key: str, table: pa.Table) -> None:
        """Replace the file at ``key`` with ``table``, whole; raises OSError leaving the old file as it was."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """Remove the file at ``key`` if there is one (and, locally, the directories it leaves empty)."""

    def write_all(self, items: Sequence[tuple[str, pa.Table]]) -> list[OSError | None]:
        """Replace each key's file with its table (remove it for an empty table), ``writers`` at a
        time; per item None, or the OSError that left its old file as it was."""
        def one(item: tuple[str, pa.Table]) -> OSError | None:
            key, table = item
            try:
                if table.num_rows:
                    self.write(key, table)
                else:
                    self.remove(key)
            except OSError as exc:
                return exc
            return None

        return _side_by_side(one, items, self.writers)

    @abstractmethod
    def files(self) -> list[str]:
        """The keys of every file under the root, temporary files of interrupted writes included."""

    @abstractmethod
    def check(self) -> None:
        """Raise a WarehouseError naming the cause and the fix unless the lake can be written."""

    @abstractmethod
    def fix(self, exc: OSError, location: Path | str) -> str:
        """What to do about ``exc``, raised while writing ``location``."""


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class LocalLakeStore(LakeStore):
    """The lake in a local directory (by default ``<data-dir>/lake``)."""

    #: Files encoded at once: encoding is CPU-bound (fsyncs come after, all at once).
    writers = 2

    def __init__(self, root_dir: Path, *, home: Path, home_var: str) -> None:
        self.root_dir = root_dir
        self.root = str(root_dir)
        # The directory people chose and the setting that chose it, for the fixes in messages.
        self.home, self.home_var = home, home_var

    def location(self, key: str) -> Path:
        return self.root_dir / key

    def read(self, key: str) -> pa.Table | None:
        path = self.root_dir / key
        if not path.exists():
            return None
        return pq.read_table(path, schema=STORED_JOBS_SCHEMA)

    def write(self, key: str, table: pa.Table) -> None:
        path = self.root_dir / key
        tmp: Path | None = None
        try:
            self._remove_temporaries(path.parent)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".data-", suffix=".parquet.tmp", dir=path.parent)
            tmp = Path(name)
            with os.fdopen(fd, "wb") as fh:
                encode_parquet(table, fh)
                fh.flush()
                os.fsync(fh.fileno())
            crashpoint("lake_tmp_written")
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        finally:
            if tmp is not None:
                with suppress(OSError):
                    tmp.unlink()

    def write_all(self, items: Sequence[tuple[str, pa.Table]]) -> list[OSError | None]:
        """Like LakeStore.write_all, with each step taken for every file before the next: temporary
        files encoded (``writers`` at a time), fsynced all at once, renamed into place, and their
        directories fsynced all at once. A file system commits concurrent fsyncs together, so a run's
        hundreds of partitions cost a few commits rather than two each; every file still reaches the
        disk before its rename, and every rename before the caller clears its mark."""
        errors: list[OSError | None] = [None] * len(items)
        staged: dict[int, Path] = {}

        def encode(i: int) -> None:
            key, table = items[i]
            try:
                if table.num_rows:
                    staged[i] = self._stage(self.root_dir / key, table)
                else:
                    self.remove(key)
            except OSError as exc:
                errors[i] = exc

        def sync(i: int) -> None:
            try:
                _fsync(staged[i])
            except OSError as exc:
                errors[i] = exc
                with suppress(OSError):
                    staged.pop(i).unlink()

        _side_by_side(encode, range(len(items)), self.writers)
        _side_by_side(sync, sorted(staged), _SYNCS)
        for i, tmp in sorted(staged.items()):
            crashpoint("lake_tmp_written")
            try:
                os.replace(tmp, self.root_dir / items[i][0])
            except OSError as exc:
                errors[i] = exc
                with suppress(OSError):
                    tmp.unlink()
        _side_by_side(_fsync_dir, sorted({(self.root_dir / items[i][0]).parent for i in staged}), _SYNCS)
        return errors

    def _stage(self, path: Path, table: pa.Table) -> Path:
        """``table`` encoded into a temporary file beside ``path`` (not yet fsynced)."""
        self._remove_temporaries(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".data-", suffix=".parquet.tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                encode_parquet(table, fh)
        except BaseException:
            with suppress(OSError):
                os.unlink(name)
            raise
        return Path(name)

    def remove(self, key: str) -> None:
        path = self.root_dir / key
        self._remove_temporaries(path.parent)
        with suppress(FileNotFoundError):
            path.unlink()
            _fsync_dir(path.parent)
        for empty in (path.parent, path.parent.parent):
            if empty == self.root_dir:
                break
            with suppress(OSError):
                empty.rmdir()  # only succeeds when nothing else is left

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.root_dir)) for p in self.root_dir.rglob("*") if p.is_file())

    def check(self) -> None:
        try:
            probe_writable(self.root_dir)
        except OSError as exc:
            raise WarehouseError(
                f"cannot create or write the lake directory {self.root_dir} ({exc.strerror or exc}); "
                f"choose a writable directory ({self.home_var}) or fix its permissions"
            ) from None

    def fix(self, exc: OSError, location: Path | str) -> str:
        path = Path(location)
        if exc.errno in _DISK_FULL_ERRNOS:
            return f"free space on the disk holding {self.home}"
        if exc.errno in _PERMISSION_ERRNOS:
            return f"fix the permissions of {path.parent} (and of the directories above it in {self.home})"
        if exc.errno == errno.ENAMETOOLONG:
            where = "data directory" if self.home_var == "VOICEJOBS_DATA_DIR" else "lake directory"
            return (f"the name is too long for the file system; use a {where} with a shorter path "
                    f"({self.home_var}) or a shorter project id")
        return "fix that path"

    @staticmethod
    def _remove_temporaries(directory: Path) -> None:
        # Temporary files left by a crashed export; this process is the only writer.
        for stale in directory.glob(".data-*.parquet.tmp"):
            with suppress(OSError):
                stale.unlink()


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
        self.endpoint = access.endpoint_url or "the region's AWS endpoint"
        self.virtual_hosts = bool(access.endpoint_url) and _virtual_addressing(access)
        self.filesystem = _s3_filesystem(access)

    def location(self, key: str) -> str:
        return f"{self.root}/{key}"

    def read(self, key: str) -> pa.Table | None:
        try:
            with self.filesystem.open_input_stream(f"{self.base}/{key}") as stream:
                data = stream.read_buffer()
        except FileNotFoundError:
            return None
        return pq.read_table(pa.BufferReader(data), schema=STORED_JOBS_SCHEMA)

    def write(self, key: str, table: pa.Table) -> None:
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


def open_lake_store(lake_uri: str | None, data_dir: Path, access: ObjectStoreAccess | None = None) -> LakeStore:
    """The store of ``lake_uri``: ``s3://bucket/prefix``, a local directory, or None for <data_dir>/lake."""
    if not lake_uri:
        return LocalLakeStore(data_dir / "lake" / JOBS_TABLE, home=data_dir, home_var="VOICEJOBS_DATA_DIR")
    bucket_prefix = parse_lake_uri(lake_uri)
    if bucket_prefix is None:
        root = Path(lake_uri.removeprefix("file://")).expanduser()
        return LocalLakeStore(root / JOBS_TABLE, home=root, home_var="VOICEJOBS_LAKE_URI")
    bucket, prefix = bucket_prefix
    access = access or ObjectStoreAccess()
    access.validate()
    return S3LakeStore(bucket, prefix, access)
