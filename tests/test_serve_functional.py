"""``reelhouse serve`` as a process: what its HTTP server does with slow clients."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from conftest import API_KEY

KEEPALIVE_S = 1.0
START_TIMEOUT_S = 30.0


async def test_a_request_that_trickles_its_headers_is_cut_off(tmp_path: Path) -> None:
    """A client that sends part of its headers and waits held a socket (and its memory) for
    an hour, aiohttp's default: it is closed after [http] keepalive_timeout_s now, while a
    whole request on another connection is answered."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", "0",
        "--data-dir", str(tmp_path / "data"), "--api-key", API_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "REELHOUSE_HTTP__KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_S)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        host, port = line.decode().split()[-1].removeprefix("http://").split(":")
        slow_reader, slow = await asyncio.open_connection(host, int(port))
        slow.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
        await slow.drain()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), START_TIMEOUT_S)
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()
        async with asyncio.timeout(KEEPALIVE_S + 5):
            assert await slow_reader.read() == b""  # closed, nothing answered
        slow.close()
    finally:
        proc.terminate()
        await proc.wait()
