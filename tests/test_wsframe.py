"""The ingest WebSocket codec: frames a real client implementation (aiohttp's) masks and
sends are parsed back whole however the bytes are split; every framing error gets its close
code; server frames follow RFC 6455's layout."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
from aiohttp.http_websocket import WebSocketWriter

from ingest.ws import WsConnection
from ingest.wsconn import WsStream
from ingest.wsframe import (
    MAX_FRAGMENTS,
    MESSAGE_TOO_BIG,
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    close_frame,
    frame,
    parse_close,
)


class _Collect:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """(the pausing is driven by hand here)"""


class _Protocol:
    _paused = False


async def client_frames(*messages: tuple[bytes, int]) -> bytes:
    """What aiohttp's client writer puts on the wire for ``messages``: masked frames."""
    out = _Collect()
    writer = WebSocketWriter(_Protocol(), out, use_mask=True)  # type: ignore[arg-type]
    for payload, op in messages:
        await writer.send_frame(payload, op)
    return bytes(out.data)


def masked(op: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame built by hand (for what aiohttp's writer does not send)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | op
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + body


SIZES = [0, 1, 125, 126, 65535, 65536, 200_000]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 30], ids=["1B", "7B", "4kB", "whole"])
async def test_client_frames_come_back_whole_however_the_bytes_are_split(chunk: int) -> None:
    payloads = [os.urandom(n) for n in SIZES]
    wire = await client_frames(*((p, OP_BINARY) for p in payloads))
    parser = FrameParser(1 << 20)
    got: list[Any] = []
    for i in range(0, len(wire), chunk):
        got += parser.feed(wire[i : i + chunk])
    assert [(op, bytes(p)) for op, p in got] == [(OP_BINARY, p) for p in payloads]
    assert parser.error is None and parser.unparsed == b"" and not parser.mid_message


async def test_control_frames_and_text_pass_through_in_order() -> None:
    wire = await client_frames(
        (b"are you there", OP_PING), (b"\x81\x00", OP_BINARY), (b"hi", OP_TEXT), (b"", OP_PONG)
    )
    got = FrameParser(1024).feed(wire)
    assert [(op, bytes(p)) for op, p in got] == [
        (OP_PING, b"are you there"),
        (OP_BINARY, b"\x81\x00"),
        (OP_TEXT, b"hi"),
        (OP_PONG, b""),
    ]


def test_a_fragmented_message_is_joined_around_a_control_frame() -> None:
    parser = FrameParser(1024)
    assert parser.feed(masked(OP_BINARY, b"one ", fin=False)) == []
    assert parser.mid_message
    got = parser.feed(masked(OP_PING, b"p") + masked(0, b"two ", fin=False) + masked(0, b"three"))
    assert [(op, bytes(p)) for op, p in got] == [(OP_PING, b"p"), (OP_BINARY, b"one two three")]
    assert not parser.mid_message


def test_a_message_in_too_many_fragments_is_refused() -> None:
    """Empty fragments cost the peer two bytes each and the parser an entry: counted, too."""
    parser = FrameParser(1024)
    head = masked(OP_BINARY, b"a", fin=False)
    empty = masked(0, b"", fin=False)
    assert parser.feed(head + empty * (MAX_FRAGMENTS - 2) + masked(0, b"z")) == [
        (OP_BINARY, bytearray(b"az"))
    ]
    assert parser.feed(head + empty * MAX_FRAGMENTS) == []
    assert parser.error is not None and parser.error.code == MESSAGE_TOO_BIG


def test_a_partial_frame_is_kept_as_unparsed() -> None:
    parser = FrameParser(1024)
    wire = masked(OP_BINARY, b"x" * 300)
    assert parser.feed(wire[:100]) == []
    assert parser.unparsed == wire[:100]
    assert [bytes(p) for _, p in parser.feed(wire[100:])] == [b"x" * 300]


BAD: list[tuple[str, bytes, int, str]] = [
    ("unmasked", b"\x82\x02hi", 1002, "masked"),
    ("reserved bit", masked(OP_BINARY, b"hi", rsv=0x40), 1002, "reserved"),
    ("unknown opcode", masked(0x3, b"hi"), 1002, "opcode 3"),
    ("long control frame", masked(OP_PING, b"p" * 126), 1002, "control"),
    ("fragmented control frame", masked(OP_PING, b"p", fin=False), 1002, "control"),
    ("continuation first", masked(0, b"hi"), 1002, "continuation"),
    (
        "message inside a fragmented one",
        masked(OP_BINARY, b"a", fin=False) + masked(OP_BINARY, b"b"),
        1002,
        "inside",
    ),
    # refused from the header alone: the 2 MB need not arrive
    ("too big", masked(OP_BINARY, b"x" * (2 << 20))[:14], 1009, "exceeds 1048576"),
    (
        "too big in fragments",
        masked(OP_BINARY, b"x" * 700_000, fin=False) + masked(0, b"x" * 700_000),
        1009,
        "exceeds",
    ),
]


@pytest.mark.parametrize(
    ("wire", "code", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_a_framing_error_carries_its_close_code(wire: bytes, code: int, fragment: str) -> None:
    parser = FrameParser(1 << 20)
    good = masked(OP_BINARY, b"before")
    got = parser.feed(good + wire)
    assert [bytes(p) for _, p in got] == [b"before"]  # what came before it is delivered
    assert parser.error is not None
    assert (parser.error.code, fragment in parser.error.reason) == (code, True), parser.error
    assert parser.feed(masked(OP_BINARY, b"after")) == []  # and nothing after it


@pytest.mark.parametrize(
    ("size", "head"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65536, b"\x82\x7f" + (65536).to_bytes(8, "big")),
    ],
)
def test_server_frames_are_unmasked_with_rfc_length_fields(size: int, head: bytes) -> None:
    payload = os.urandom(size)
    assert frame(OP_BINARY, payload) == head + payload


def test_close_frames_and_their_parsing() -> None:
    assert close_frame(4010, "quiet") == b"\x88\x07\x0f\xaaquiet"
    long = close_frame(1000, "é" * 100)  # 200 bytes of UTF-8: cut on a character
    assert len(long) <= 127 and parse_close(long[2:]) == (1000, "é" * 61)
    assert parse_close(b"") == (1005, "")
    assert parse_close(b"\x0f\xa0bye") == (4000, "bye")
    for payload, code in [(b"\x03", 1002), (b"\x03\xed", 1002), (b"\x03\xe8\xff", 1007)]:
        with pytest.raises(FrameError) as err:
            parse_close(payload)
        assert err.value.code == code


def server_frames(data: bytes | bytearray) -> list[tuple[int, bytes]]:
    """Short unmasked server frames; a msgpack message shown as ``<t> <ts>``."""
    out = []
    pos = 0
    while pos < len(data):
        op, size = data[pos] & 0x0F, data[pos + 1]
        assert size < 126  # (short frames only here)
        body = bytes(data[pos + 2 : pos + 2 + size])
        if op == OP_BINARY:
            msg = msgpack.unpackb(body)
            body = f"{msg['t']} {msg['ts']}".encode()
        out.append((op, body))
        pos += 2 + size
    return out


async def test_pings_while_the_peer_reads_nothing_get_one_pong_when_it_drains() -> None:
    """A peer that pings and never reads must not grow the server's send buffer: while
    writing is paused only the newest ping (WebSocket's and the protocol's) is kept, and
    answered once the socket drains."""
    stream = WsStream(1 << 20)
    transport = _Collect()
    stream.transport = transport  # type: ignore[assignment]
    conn = WsConnection(stream, {})
    stream.data_received(masked(OP_PING, b"first"))
    conn.pong(1)
    assert server_frames(transport.data) == [(OP_PONG, b"first"), (OP_BINARY, b"pong 1")]
    transport.data.clear()
    stream.pause_writing()
    for i in range(1000):
        stream.data_received(masked(OP_PING, b"p%d" % i))
        conn.pong(i)
    assert transport.data == b""
    stream.resume_writing()
    assert server_frames(transport.data) == [(OP_PONG, b"p999"), (OP_BINARY, b"pong 999")]
