"""A real S3-compatible server for the tests: moto's server on a free loopback port.

One server per test session (:func:`s3_server`), with signature checking on: requests must be
signed with the access key it made, as a real store would insist. Each test gets its own lake
prefix in the one bucket (:func:`s3_lake`), so tests never see each other's files, and its
AWS_* variables set as a user would set them.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from pipelines.settings import ObjectStoreAccess

BUCKET = "voicejobs-lake"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running server and the credentials of a user who may do anything on it."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str = BUCKET
    region: str = REGION

    def access(self, **changes: str) -> ObjectStoreAccess:
        values = dict(access_key_id=self.access_key_id, secret_access_key=self.secret_access_key,
                      region=self.region, endpoint_url=self.endpoint_url)
        values.update(changes)
        return ObjectStoreAccess(**values)

    def env(self, lake_uri: str, **changes: str) -> dict[str, str]:
        """The variables a user sets to put the lake at ``lake_uri`` on this server."""
        values = {"VOICEJOBS_LAKE_URI": lake_uri, "AWS_ACCESS_KEY_ID": self.access_key_id,
                  "AWS_SECRET_ACCESS_KEY": self.secret_access_key, "AWS_REGION": self.region,
                  "AWS_ENDPOINT_URL": self.endpoint_url}
        values.update(changes)
        return values

    def filesystem(self) -> pafs.S3FileSystem:
        host = self.endpoint_url.removeprefix("http://")
        return pafs.S3FileSystem(access_key=self.access_key_id, secret_key=self.secret_access_key,
                                 region=self.region, endpoint_override=host, scheme="http")


@dataclass(frozen=True)
class S3Lake:
    """One test's lake on the server: its URI and how to read it back."""

    server: S3Server
    uri: str

    @property
    def table_path(self) -> str:
        """The jobs table's directory, as pyarrow's S3FileSystem names it (bucket/prefix/table)."""
        return f"{self.uri.removeprefix('s3://')}/voice_training_jobs"

    def keys(self) -> list[str]:
        """Every object under the table, relative to it (directory markers left out)."""
        fs = self.server.filesystem()
        selector = pafs.FileSelector(self.table_path, recursive=True, allow_not_found=True)
        start = len(self.table_path) + 1
        return sorted(i.path[start:] for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)

    def read(self) -> pa.Table:
        """The lake as a reader sees it: pyarrow.dataset over S3 with hive partitioning."""
        dataset = ds.dataset(self.table_path, filesystem=self.server.filesystem(), format="parquet",
                             partitioning="hive")
        return dataset.to_table()


def _start() -> tuple[object, S3Server]:
    from moto import settings as moto_settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    import boto3

    setup = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup-key-id",
                 aws_secret_access_key="setup-secret")
    user = f"voicejobs-{uuid.uuid4().hex[:8]}"
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="lake", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    # From here on every request must carry a valid signature of a key the server knows.
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    return server, S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto import settings as moto_settings

    before = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    server, info = _start()
    try:
        yield info
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = before
        server.stop()


@pytest.fixture
def s3_lake(s3_server: S3Server, monkeypatch) -> S3Lake:
    """A fresh lake prefix for this test, with the AWS_* variables set for it."""
    lake = S3Lake(s3_server, f"s3://{s3_server.bucket}/test-{uuid.uuid4().hex[:12]}")
    for name, value in s3_server.env(lake.uri).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return lake
