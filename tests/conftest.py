"""Shared fixtures: the loop-blocking guard, and a real reelhouse server on a free loopback port."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster, BlockBusterFunction, blockbuster_ctx
from s3server import SeaweedS3

# (at import: importing them inside the fixture, on the event loop, is blocking file work)
from api.app import create_app
from api.settings import load_settings

PROJECT_PACKAGES = ["api", "ingest", "mixer", "storage"]
# botocore stats a few model files that do not exist each time a client is built (a miss is
# not cached); microseconds, once per store. Everything it reads is loaded off the loop first
# (storage.s3.warm_up).
BOTOCORE_LOADER_STATS = {"_potential_locations", "load_data_with_path", "list_available_services"}


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which our code makes a blocking call on the event loop thread."""
    with blockbuster_ctx(PROJECT_PACKAGES) as bb:
        for name in ("os.stat", "os.listdir", "os.scandir"):
            if name in bb.functions:
                bb.functions[name].can_block_in("botocore/loaders.py", BOTOCORE_LOADER_STATS)
        # closing an aiortc peer joins each receiver's decoder thread, which ends at its next
        # queue read: a bounded wait inside aiortc that no caller can move off the loop
        for name in ("threading.Lock.acquire", "threading.Lock.acquire_lock"):
            if name in bb.functions:
                bb.functions[name].can_block_in("aiortc/rtcrtpreceiver.py", {"__stop_decoder"})
        # not in blockbuster's list, and what durable writes are made of: an fsync on the loop
        # stalls every session for a disk's flush
        extra = [
            BlockBusterFunction(None, f"os.{name}", scanned_modules=PROJECT_PACKAGES).activate()
            for name in ("fsync", "fdatasync", "open")
        ]
        try:
            yield bb
        finally:
            for function in extra:
                function.deactivate()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One real S3 server (SeaweedFS on loopback) for the whole test session."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def s3_bucket(s3: SeaweedS3, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the session's S3 server, named after the test."""
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    return s3.create_bucket(f"{name}-{uuid.uuid4().hex[:8]}")


@dataclass
class Server:
    """A running reelhouse on loopback, with what a test needs to talk to it."""

    url: str
    api_key: str
    data_dir: Path
    app: object
    stop: Callable[[], Awaitable[None]]  # a graceful stop, as at SIGTERM (harmless twice)

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of the development key."""
        return {"Authorization": f"Bearer {self.api_key}"}


API_KEY = "test-key-0123456789"
# storageConfig endpoints may be on loopback, where the tests' S3 server is
LOOPBACK_S3: dict[str, Any] = {"storage": {"private_endpoints": True}}


@pytest.fixture
async def server_factory(tmp_path: Path, aiohttp_server):  # type: ignore[no-untyped-def]
    """Start reelhouse servers (same data dir restarts the same server's state)."""
    started = []

    async def start(data_dir: Path | None = None, **overrides: object) -> Server:
        data = data_dir or tmp_path / "data"
        settings = load_settings(
            env={},
            overrides={
                "data_dir": data,
                "auth": {"api_key": API_KEY},
                **overrides,
                # the test S3 server is on loopback (a test of the refusal says False)
                "storage": {**LOOPBACK_S3["storage"], **overrides.get("storage", {})},
            },
        )
        app = create_app(settings)
        srv = await aiohttp_server(app, host="127.0.0.1", port=0)
        started.append(srv)
        return Server(
            url=str(srv.make_url("")).rstrip("/"),
            api_key=API_KEY,
            data_dir=data,
            app=app,
            stop=srv.close,
        )

    yield start


@pytest.fixture
async def server(server_factory) -> AsyncIterator[Server]:  # type: ignore[no-untyped-def]
    """One reelhouse server with a fresh data directory."""
    yield await server_factory()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slow end-to-end tests last so quick failures show first."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
