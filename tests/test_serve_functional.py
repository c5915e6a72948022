"""``reelhouse serve`` as a process: what its HTTP server does with slow clients."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
from pathlib import Path

from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError
from conftest import API_KEY

from api.cli import NOFILE_CEILING
from api.logs import ClientErrorsQuiet

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


async def test_serve_lifts_its_open_files_limit(tmp_path: Path) -> None:
    """Started with a soft limit of 256 open files (the usual default is 1024) under a higher
    hard one, the server runs with the hard one: each publisher holds descriptors, and at the
    soft limit the next accept and every session's next segment failed with EMFILE."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 256  # (the test needs room to lift into)

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", "0",
        "--data-dir", str(tmp_path / "data"), "--api-key", API_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=low_soft_limit,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)  # (listening)
        limits = await asyncio.to_thread(Path(f"/proc/{proc.pid}/limits").read_text)
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        soft = int(row.split()[3])
        assert soft == (NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard)
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_request_that_does_not_parse_is_one_info_line_in_the_log(tmp_path: Path) -> None:
    """aiohttp logged each request it could not parse (the client's fault, answered 400) as
    an ERROR with a traceback: any client could fill the log. Now one INFO line says who
    and why."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", "0",
        "--data-dir", str(tmp_path / "data"), "--api-key", API_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        host, port = line.decode().split()[-1].removeprefix("http://").split(":")
        for bad in (b"Bad Header\r\n", b"Content-Length: abc\r\n", b"X: " + b"a" * 9000 + b"\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /healthz HTTP/1.1\r\nHost: x\r\n" + bad + b"\r\n")
            answer = await asyncio.wait_for(reader.read(), START_TIMEOUT_S)
            assert answer.startswith(b"HTTP/1.0 400"), answer[:100]
            writer.close()
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
    log = err.decode()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    told = [line for line in log.splitlines() if "bad request from 127.0.0.1: 400" in line]
    assert len(told) == 3 and all(" INFO " in line for line in told), told
    assert "Invalid header token: b'Bad Header' ^" in told[0]
    assert "Got more than 8190 bytes" in told[2]


def test_the_quieted_line_follows_the_log_level() -> None:
    """The level is checked before a filter runs: at WARNING the rewritten INFO line must not
    show; an error of the server's own (a 500, or no status at all) keeps its ERROR."""
    quiet = ClientErrorsQuiet()
    server = logging.getLogger("aiohttp.server")

    def record(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            info = sys.exc_info()
        return server.makeRecord(
            server.name, logging.ERROR, __file__, 1, "Error handling request from %s",
            ("127.0.0.1",), info,
        )  # fmt: skip

    before = server.level
    try:
        server.setLevel(logging.WARNING)
        assert not quiet.filter(record(BadHttpMessage("Invalid header token")))
        server.setLevel(logging.INFO)
        told = record(BadHttpMessage("Invalid header token"))
        assert quiet.filter(told) and told.levelno == logging.INFO and told.exc_info is None
        assert told.getMessage() == "bad request from 127.0.0.1: 400 Invalid header token"
        for own in (HttpProcessingError(code=500, message="boom"), HttpProcessingError()):
            kept = record(own)
            assert quiet.filter(kept) and kept.levelno == logging.ERROR and kept.exc_info
    finally:
        server.setLevel(before)
