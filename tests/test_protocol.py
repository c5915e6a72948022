"""The v1 wire codec: every malformed frame maps to its documented close code."""

from __future__ import annotations

import msgpack
import pytest

from ingest.errors import CloseCode, ProtocolError
from ingest.protocol import MAX_FRAME_BYTES, decode_client, decode_server, encode


def frame(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def test_round_trip_media() -> None:
    msg = {"t": "media", "seq": 7, "track": 1, "pts": 40_000, "key": True, "data": b"\x00\x00\x01"}
    assert decode_client(encode(msg)) == msg  # type: ignore[arg-type]


def test_hello_and_track_round_trip() -> None:
    hello = {"t": "hello", "v": 1, "token": "k", "session_id": "s-1"}
    assert decode_client(encode(hello)) == hello  # type: ignore[arg-type]
    track = {"t": "track", "id": 0, "kind": "video", "codec": "h264", "width": 1280, "height": 720}
    assert decode_client(encode(track)) == track  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1garbage", CloseCode.BAD_MESSAGE),
        (msgpack.packb([1, 2, 3]), CloseCode.BAD_MESSAGE),
        (msgpack.packb("hello"), CloseCode.BAD_MESSAGE),
        (frame(t="launch"), CloseCode.BAD_MESSAGE),
        (frame(t={"a": 1}), CloseCode.BAD_MESSAGE),  # (unhashable: no lookup may raise)
        (frame(t=["media"]), CloseCode.BAD_MESSAGE),
        (frame(t="media", seq=1, track=0, pts=0, key=True), CloseCode.SCHEMA),
        (frame(t="media", seq=0, track=0, pts=0, key=True, data=b"x"), CloseCode.SCHEMA),
        (frame(t="media", seq=1, track=99, pts=0, key=True, data=b"x"), CloseCode.SCHEMA),
        (frame(t="media", seq=1, track=0, pts=1.5, key=True, data=b"x"), CloseCode.SCHEMA),
        (frame(t="media", seq=1, track=0, pts=0, key=1, data=b"x"), CloseCode.SCHEMA),
        (frame(t="media", seq=1, track=0, pts=0, key=True, data="text"), CloseCode.SCHEMA),
        (frame(t="media", seq=True, track=0, pts=0, key=True, data=b"x"), CloseCode.SCHEMA),
        (frame(t="hello", v=2, token="k"), CloseCode.SCHEMA),
        (frame(t="hello", v=1), CloseCode.UNAUTHENTICATED),  # (no credential: 4002, as documented)
        (frame(t="hello", v=1, token=""), CloseCode.UNAUTHENTICATED),
        (frame(t="hello", v=1, token=5), CloseCode.SCHEMA),
        (frame(t="hello", v=1, token="k", session_id=""), CloseCode.SCHEMA),
        (frame(t="track", id=0, kind="video", codec="h265"), CloseCode.UNSUPPORTED_CODEC),
        (frame(t="track", id=0, kind="audio", codec="h264"), CloseCode.UNSUPPORTED_CODEC),
        (frame(t="track", id=0, kind="subtitle", codec="srt"), CloseCode.SCHEMA),
        (frame(t="track", id=0, kind="video", codec="vp8", width=0), CloseCode.SCHEMA),
        (frame(t="ack"), CloseCode.SCHEMA),
    ],
)
def test_malformed_frames(data: bytes, code: CloseCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client(data)
    assert info.value.code is code
    assert info.value.reason


def test_oversized_frame() -> None:
    big = frame(t="media", seq=1, track=0, pts=0, key=True, data=b"x" * 100)
    with pytest.raises(ProtocolError) as info:
        decode_client(big, max_frame=50)
    assert info.value.code is CloseCode.MESSAGE_TOO_BIG
    assert MAX_FRAME_BYTES >= 1024 * 1024


def test_decode_server_rejects_client_messages() -> None:
    assert decode_server(encode({"t": "ack", "seq": 3}))["t"] == "ack"
    with pytest.raises(ValueError):
        decode_server(encode({"t": "hello", "v": 1, "token": "k"}))  # type: ignore[typeddict-item]
