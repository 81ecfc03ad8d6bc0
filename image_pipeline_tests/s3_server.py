"""A throwaway S3-compatible server for tests: moto's server mode on 127.0.0.1, a free port, in a thread.

MinIO's server is a Go binary with no package here; moto (``moto[server]``, a dev extra) speaks the S3 API
over real HTTP, conditional writes (``If-None-Match: *``) included, so s3fs and boto3 talk to it as to AWS.
moto keeps its buckets in the process's memory, shared by every server it runs: tests take a bucket of
their own (``new_bucket``) instead of resetting it.

Credentials reach the clients the way they do in production: from the standard AWS environment
(``aws_env``), never as arguments.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint_url: str

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables for this server (dummy keys: moto accepts any), and none of the
        machine's own configuration: no profile files, no instance-metadata lookups."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A boto3 client of its own: the tests look at the bucket without going through our code."""
        env = self.aws_env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


@contextmanager
def moto_s3() -> Iterator[S3Server]:
    """An S3 server on 127.0.0.1 (moto's default is every interface on port 5000), stopped afterwards."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
