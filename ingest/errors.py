"""Errors of the ingest layer: each maps to a WebSocket close code or an ``rpcStatus``."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes of protocol v1 (RFC 6455 codes, then 4000-4099 of our own)."""

    NORMAL = 1000  # session ended
    GOING_AWAY = 1001  # server shutting down: reconnect later
    PROTOCOL_ERROR = 1002  # broken WebSocket framing (RFC 6455)
    UNSUPPORTED_DATA = 1003  # a text frame: v1 is binary msgpack only
    INVALID_PAYLOAD = 1007  # a close reason that is not UTF-8 (RFC 6455)
    MESSAGE_TOO_BIG = 1009  # frame larger than the announced max_frame
    INTERNAL_ERROR = 1011  # the server failed; reconnect and resend
    TRY_AGAIN_LATER = 1013  # the server holds max_connections (RFC 6455's registry)
    BAD_MESSAGE = 4000  # not msgpack, or not a map with a known "t"
    SCHEMA = 4001  # a known message with missing or wrong-typed fields
    UNAUTHENTICATED = 4002  # no or wrong token
    UNKNOWN_SESSION = 4003  # the session named in hello does not exist
    SESSION_STATE = 4004  # the session has ended or cannot take media now
    UNSUPPORTED_CODEC = 4005  # a track announced a codec we do not take
    UNKNOWN_TRACK = 4006  # media for a track that was not announced
    SEQUENCE = 4007  # a media sequence number skipped ahead
    HELLO_TIMEOUT = 4008  # no hello in time
    REPLACED = 4009  # a newer connection took over this session
    KEEPALIVE_TIMEOUT = 4010  # nothing heard from the client in time
    INVALID_MEDIA = 4011  # payload did not decode as the announced codec
    BACKPRESSURE = 4012  # reserved, never sent: a writer that falls behind holds the socket back


class ProtocolError(Exception):
    """A client broke protocol v1; the connection closes with ``code`` and ``reason``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason[:120]  # a close reason must fit 123 bytes


class RpcCode(IntEnum):
    """gRPC canonical status codes, as ``rpcStatus.code`` carries them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class SessionError(Exception):
    """A session event or lookup that cannot be carried out; ``code`` is its ``rpcStatus``."""

    code: RpcCode = RpcCode.INTERNAL
    retry_after_s: int | None = None  # sent as Retry-After: when trying again may work

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidEvent(SessionError, ValueError):
    """The request body is malformed or names an impossible event."""

    code = RpcCode.INVALID_ARGUMENT


class SessionNotFound(SessionError, LookupError):
    """No such session under this profile."""

    code = RpcCode.NOT_FOUND


class SessionExists(SessionError):
    """START named a session id that is already taken."""

    code = RpcCode.ALREADY_EXISTS


class TransitionNotAllowed(SessionError):
    """The event is not allowed in the session's current state."""

    code = RpcCode.FAILED_PRECONDITION


class Unavailable(SessionError):
    """The server cannot take the event now (shutting down, storage full)."""

    code = RpcCode.UNAVAILABLE


class WritersUnavailable(SessionError):
    """A writer lane crashed: what it held is safe in its WAL, recovered at the next start."""

    code = RpcCode.UNAVAILABLE


class StorageBacklogFull(SessionError):
    """The upload spool is full: sessions already recording go on, new ones must wait."""

    code = RpcCode.RESOURCE_EXHAUSTED


class ConnectionsFull(SessionError):
    """The server holds ``[ingest] max_connections`` WebSockets: a place frees when one
    closes (the reference client reconnects with backoff)."""

    code = RpcCode.UNAVAILABLE
    retry_after_s = 5
