"""The ingest WebSocket stream's flow control and fast path, on a transport that records
what the stream asks of it."""

from __future__ import annotations

import asyncio
from typing import Any

from ingest.wsconn import INBOX_HIGH_BYTES, INBOX_LOW_BYTES, WsStream
from ingest.wsframe import OP_BINARY


class _Transport:
    """Counts pause/resume calls; keeps what is written."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.written = bytearray()

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


def _client_frame(payload: bytes) -> bytes:
    """A masked binary frame (zero mask: the payload reads as is)."""
    n = len(payload)
    head = bytes((0x80 | OP_BINARY, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def _stream() -> tuple[WsStream, _Transport]:
    stream = WsStream(max_message=4 * 1024 * 1024)
    transport = _Transport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    return stream, transport


async def test_reading_pauses_on_the_inbox_bytes_not_only_its_count() -> None:
    """Three 600 kB messages (far fewer than the count mark) stop the reading once the
    unread bytes pass the high mark, and reading starts again only when the handler has
    taken them down to the low mark: a client sending large frames to a busy handler is
    held at about a megabyte, not at 64 of its frames."""
    stream, transport = _stream()
    big = b"x" * (600 * 1024)
    stream.data_received(_client_frame(big))
    assert transport.paused == 0 and len(big) < INBOX_HIGH_BYTES  # under the high mark
    stream.data_received(_client_frame(big) + _client_frame(big))
    assert transport.paused == 1 and transport.resumed == 0
    assert 2 * len(big) > INBOX_LOW_BYTES  # two left after one is taken: still above low
    assert await stream.receive() == (OP_BINARY, bytearray(big))
    assert transport.resumed == 0
    await stream.receive()
    await stream.receive()  # the inbox is empty: read again
    assert transport.resumed == 1


async def test_the_fast_path_keeps_order_behind_what_waits_in_the_inbox() -> None:
    """A message the fast path declines waits in the inbox; those after it wait behind it
    (even ones the fast path would take) until the handler has taken it and asks again."""
    stream, _ = _stream()
    taken: list[bytes] = []

    def fast(op: int, payload: bytearray) -> bool:
        if payload.startswith(b"slow"):
            return False
        taken.append(bytes(payload))
        return True

    stream.fast = fast
    stream.data_received(_client_frame(b"a") + _client_frame(b"slow") + _client_frame(b"b"))
    assert taken == [b"a"]
    got: Any = await stream.receive()
    assert got == (OP_BINARY, bytearray(b"slow"))  # the handler holds it: busy
    stream.data_received(_client_frame(b"c"))
    assert taken == [b"a"]  # "b" and "c" are behind "slow" in the inbox
    assert await stream.receive() == (OP_BINARY, bytearray(b"b"))
    assert await stream.receive() == (OP_BINARY, bytearray(b"c"))
    # the handler asks again and waits on an empty inbox: the fast path takes "d"
    waiting = asyncio.create_task(stream.receive())
    await asyncio.sleep(0)
    stream.data_received(_client_frame(b"d"))
    assert taken == [b"a", b"d"] and not waiting.done()
    waiting.cancel()
