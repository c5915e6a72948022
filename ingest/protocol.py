"""WebSocket ingest protocol v1: typed messages and the one codec that validates them.

Every frame is a binary WebSocket message holding one msgpack map whose ``t`` names its
type. ``docs/protocol.md`` is the reference; this module is the only place that turns bytes
into messages, so every size and type rule lives here.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

import msgpack

from .errors import CloseCode, ProtocolError

PROTOCOL_VERSION = 1
SUBPROTOCOL = "reelhouse.v1"
MAX_FRAME_BYTES = 4 * 1024 * 1024  # one WebSocket message; a 4K keyframe fits
MAX_TRACKS = 16
MAX_ID_CHARS = 128  # session ids, platform ids, user ids
MAX_EXTRADATA_BYTES = 64 * 1024

VIDEO_CODECS = frozenset({"h264", "vp8", "vp9", "webm"})
AUDIO_CODECS = frozenset({"opus", "aac"})
CONTROL_ACTIONS = frozenset({"start", "pause", "resume", "stop", "reconnect"})


# client → server
class Hello(TypedDict):
    """First message: who the client is and which session (or channel) it belongs to.

    With ``appid`` and ``cname`` the connection publishes into that channel; ``token`` is then
    the channel token (empty for an app made without tokens) and ``uid`` the publisher's.
    """

    t: Literal["hello"]
    v: int
    token: str
    session_id: NotRequired[str]
    platform_call_id: NotRequired[str]
    agent_platform_id: NotRequired[str]
    user_id: NotRequired[str]
    appid: NotRequired[str]
    cname: NotRequired[str]
    uid: NotRequired[str]


class Track(TypedDict):
    """Announces a track before its first media message."""

    t: Literal["track"]
    id: int
    kind: Literal["video", "audio"]
    codec: str
    width: NotRequired[int]
    height: NotRequired[int]
    sample_rate: NotRequired[int]
    channels: NotRequired[int]
    extradata: NotRequired[bytes]


class Media(TypedDict):
    """One encoded frame (or WebM chunk) of a track."""

    t: Literal["media"]
    seq: int
    track: int
    pts: int
    dts: NotRequired[int]
    key: bool
    data: bytes


class ControlAck(TypedDict):
    """The client has carried out a control message."""

    t: Literal["ack"]
    id: int


class Ping(TypedDict):
    """Keepalive; the server answers ``pong`` with the same ``ts``."""

    t: Literal["ping"]
    ts: NotRequired[int]


class Bye(TypedDict):
    """The client has no more media to send on this connection."""

    t: Literal["bye"]


ClientMessage = Hello | Track | Media | ControlAck | Ping | Bye


# server → client
class Welcome(TypedDict):
    """Answer to hello: the session, its state and what the server already holds."""

    t: Literal["welcome"]
    v: int
    session_id: str | None
    state: str
    acked_seq: int
    max_frame: int
    keepalive_s: float
    uid: NotRequired[str]  # a channel publisher's admitted uid


class Ack(TypedDict):
    """Every media message with ``seq`` at or below this one is safe on the server."""

    t: Literal["ack"]
    seq: int


class Control(TypedDict):
    """Start, pause, resume or stop recording; the client answers with ``ack`` of ``id``."""

    t: Literal["control"]
    id: int
    action: str
    session_id: str
    event: dict[str, str]


class Pong(TypedDict):
    """Answer to ping."""

    t: Literal["pong"]
    ts: int


ServerMessage = Welcome | Ack | Control | Pong


def _fail(code: CloseCode, reason: str) -> ProtocolError:
    return ProtocolError(code, reason)


def _int(msg: dict[str, Any], name: str, *, lo: int, hi: int, required: bool = True) -> None:
    if name not in msg:
        if required:
            raise _fail(CloseCode.SCHEMA, f"{msg['t']}: missing {name}")
        return
    value = msg[name]
    if type(value) is not int or not lo <= value <= hi:
        raise _fail(CloseCode.SCHEMA, f"{msg['t']}: {name} must be an integer in [{lo}, {hi}]")


def _str(
    msg: dict[str, Any], name: str, *, required: bool = False, limit: int = MAX_ID_CHARS
) -> None:
    if name not in msg:
        if required:
            raise _fail(CloseCode.SCHEMA, f"{msg['t']}: missing {name}")
        return
    value = msg[name]
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise _fail(CloseCode.SCHEMA, f"{msg['t']}: {name} must be a string of 1-{limit} chars")


_I64 = 2**63 - 1
_SEQ_MAX = 2**53  # stays exact in JavaScript clients


def _check_media(msg: dict[str, Any]) -> None:
    # the hot path: one message per frame, so checks are inline and cheap
    seq, track, pts, key, data = (
        msg.get("seq"),
        msg.get("track"),
        msg.get("pts"),
        msg.get("key"),
        msg.get("data"),
    )
    if type(seq) is not int or not 0 < seq <= _SEQ_MAX:
        raise _fail(CloseCode.SCHEMA, "media: seq must be a positive integer")
    if type(track) is not int or not 0 <= track < MAX_TRACKS:
        raise _fail(CloseCode.SCHEMA, f"media: track must be an integer in [0, {MAX_TRACKS - 1}]")
    if type(pts) is not int or not -_I64 <= pts <= _I64:
        raise _fail(CloseCode.SCHEMA, "media: pts must be an integer (microseconds)")
    if type(key) is not bool:
        raise _fail(CloseCode.SCHEMA, "media: key must be a boolean")
    if type(data) is not bytes or not data:
        raise _fail(CloseCode.SCHEMA, "media: data must be non-empty binary")
    if "dts" in msg:
        _int(msg, "dts", lo=-_I64, hi=_I64)


def _check_track(msg: dict[str, Any]) -> None:
    _int(msg, "id", lo=0, hi=MAX_TRACKS - 1)
    kind, codec = msg.get("kind"), msg.get("codec")
    if kind not in ("video", "audio"):
        raise _fail(CloseCode.SCHEMA, "track: kind must be 'video' or 'audio'")
    if not isinstance(codec, str):
        raise _fail(CloseCode.SCHEMA, "track: codec must be a string")
    allowed = VIDEO_CODECS if kind == "video" else AUDIO_CODECS
    if codec not in allowed:
        raise _fail(
            CloseCode.UNSUPPORTED_CODEC,
            f"track: {kind} codec {codec[:20]!r} not supported (use {', '.join(sorted(allowed))})",
        )
    _int(msg, "width", lo=1, hi=7680, required=False)
    _int(msg, "height", lo=1, hi=4320, required=False)
    _int(msg, "sample_rate", lo=8000, hi=192000, required=False)
    _int(msg, "channels", lo=1, hi=8, required=False)
    extradata = msg.get("extradata", b"")
    if type(extradata) is not bytes or len(extradata) > MAX_EXTRADATA_BYTES:
        raise _fail(
            CloseCode.SCHEMA,
            f"track: extradata must be binary of at most {MAX_EXTRADATA_BYTES} bytes",
        )


def _check_hello(msg: dict[str, Any]) -> None:
    if msg.get("v") != PROTOCOL_VERSION:
        raise _fail(CloseCode.SCHEMA, f"hello: v must be {PROTOCOL_VERSION}")
    channel = "appid" in msg or "cname" in msg
    if channel:  # a channel publisher: both names, and a token that may be empty
        _str(msg, "appid", required=True, limit=64)
        _str(msg, "cname", required=True, limit=64)
        _str(msg, "uid", limit=255)
        if not isinstance(msg.get("token"), str) or len(msg["token"]) > 2048:
            raise _fail(CloseCode.SCHEMA, "hello: token must be a string (empty: no token)")
        return
    if msg.get("token") in (None, ""):  # no credential: what 4002 says (not a schema fault)
        raise _fail(CloseCode.UNAUTHENTICATED, "hello: no token (the server's API key)")
    _str(msg, "token", required=True, limit=512)
    for name in ("session_id", "platform_call_id", "agent_platform_id", "user_id"):
        _str(msg, name)


def _check_ack(msg: dict[str, Any]) -> None:
    _int(msg, "id", lo=1, hi=_SEQ_MAX)


def _check_ping(msg: dict[str, Any]) -> None:
    _int(msg, "ts", lo=-_I64, hi=_I64, required=False)


def _check_nothing(msg: dict[str, Any]) -> None:
    return None


_CHECKS = {
    "media": _check_media,
    "track": _check_track,
    "hello": _check_hello,
    "ack": _check_ack,
    "ping": _check_ping,
    "bye": _check_nothing,
}


def decode_client(frame: bytes | bytearray, max_frame: int = MAX_FRAME_BYTES) -> ClientMessage:
    """Parse and validate one client frame; raises :class:`ProtocolError` with a close code."""
    if len(frame) > max_frame:
        raise _fail(CloseCode.MESSAGE_TOO_BIG, f"frame of {len(frame)} bytes exceeds {max_frame}")
    try:
        msg = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_map_len=32,
            max_array_len=0,
            max_str_len=4096,
            max_bin_len=max_frame,
            max_ext_len=0,
        )
    except (
        ValueError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        TypeError,
    ) as exc:
        raise _fail(CloseCode.BAD_MESSAGE, f"not a msgpack message: {type(exc).__name__}") from None
    if type(msg) is not dict:
        raise _fail(CloseCode.BAD_MESSAGE, "a message must be a msgpack map")
    kind = msg.get("t")
    check = _CHECKS.get(kind) if type(kind) is str else None  # (a map or list: unhashable)
    if check is None:
        raise _fail(CloseCode.BAD_MESSAGE, f"unknown message type {str(msg.get('t'))[:20]!r}")
    check(msg)
    return msg  # type: ignore[return-value]


def decode_server(frame: bytes) -> ServerMessage:
    """Parse one server frame (for clients); raises ``ValueError`` on anything malformed."""
    msg = msgpack.unpackb(frame, raw=False)
    if type(msg) is not dict or msg.get("t") not in ("welcome", "ack", "control", "pong"):
        raise ValueError(f"unexpected server message: {str(msg)[:60]}")
    return msg  # type: ignore[return-value]


def encode(message: ClientMessage | ServerMessage) -> bytes:
    """Serialise a message to one binary frame."""
    return msgpack.packb(message, use_bin_type=True)
