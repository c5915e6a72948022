"""WebSocket framing (RFC 6455), the server's side, without I/O: client frames in, whole
messages out; server frames built.

Ingest runs its WebSockets on this codec rather than aiohttp's once the upgrade is done
(``ingest.wsconn``): the parser's state is then ours, so a connection can be handed on whole,
with the bytes it has read and not yet parsed. No extension is negotiated, so the reserved
bits must be clear; client frames must be masked; control frames may come between the
fragments of a message.
"""

from __future__ import annotations

from typing import Final

try:  # aiohttp's Cython unmasking, in place (about 1 µs for a 12 kB frame)
    from aiohttp._websocket.helpers import websocket_mask as _mask_in_place
except ImportError:  # pragma: no cover - aiohttp moved it: numpy does it in a few µs
    import numpy as np

    def _mask_in_place(mask: bytes, data: bytearray) -> None:
        n = len(data)
        view = np.frombuffer(data, np.uint8)
        view ^= np.frombuffer((mask * ((n >> 2) + 1))[:n], np.uint8)


OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

PROTOCOL_ERROR: Final = 1002
UNSUPPORTED_DATA: Final = 1003
NO_STATUS: Final = 1005  # (never sent: what a close without a code reads as)
INVALID_PAYLOAD: Final = 1007
MESSAGE_TOO_BIG: Final = 1009

_CONTROL_MAX = 125
# fragments of one message: each is a few bytes on the wire and an entry here, so the
# message's size limit alone would let a peer pile up millions of empty ones
MAX_FRAGMENTS = 1024
# close codes a peer may send (RFC 6455 7.4): 1004-1006 and 1015 are reserved
_VALID_CLOSE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


class FrameError(Exception):
    """The peer broke the framing: close with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


Message = tuple[int, bytearray]  # (opcode, payload): data messages whole, control frames


class FrameParser:
    """Parses the masked frames a client sends into messages.

    ``feed`` returns the messages its bytes completed; a framing error is kept in ``error``
    (the messages before it are returned first) and ends the parsing.
    """

    __slots__ = ("_buf", "_frag_len", "_frag_op", "_frags", "_max", "_need", "error")

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        # bytes received, not yet parsed (a frame's start), and how many there must be before
        # parsing again is worth it: a large frame arriving in small reads is appended to, not
        # copied whole on every read
        self._buf = bytearray()
        self._need = 0
        self._frag_op: int | None = None  # the opcode of a fragmented message under way
        self._frags: list[bytearray] = []
        self._frag_len = 0
        self.error: FrameError | None = None

    @property
    def unparsed(self) -> bytes:
        """What was received and is not part of a message yet (a frame's first bytes)."""
        return bytes(self._buf)

    @property
    def mid_message(self) -> bool:
        """Some fragments of a message have come, not its last."""
        return self._frag_op is not None

    def feed(self, data: bytes) -> list[Message]:
        """The messages ``data`` completes, in order."""
        out: list[Message] = []
        if self.error is not None:
            return out
        buf: bytes | bytearray = data
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return out
            buf = self._buf
        n = len(buf)
        pos = 0
        need = 2  # (bytes from ``pos`` the frame there needs, once it is known)
        try:
            while n - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                if b0 & 0x70:
                    raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
                if not b1 & 0x80:
                    raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
                op = b0 & 0x0F
                size = b1 & 0x7F
                head = pos + 2
                if size == 126:
                    if n - pos < 4:
                        need = 4
                        break
                    size = int.from_bytes(buf[head : head + 2], "big")
                    head += 2
                elif size == 127:
                    if n - pos < 10:
                        need = 10
                        break
                    size = int.from_bytes(buf[head : head + 8], "big")
                    head += 8
                if op >= OP_CLOSE:
                    if not b0 & 0x80 or size > _CONTROL_MAX:
                        raise FrameError(PROTOCOL_ERROR, "a control frame must be whole and short")
                elif size + self._frag_len > self._max:  # refused before it is all read
                    raise FrameError(MESSAGE_TOO_BIG, f"message exceeds {self._max} bytes")
                end = head + 4 + size
                if end > n:
                    need = end - pos
                    break
                payload = bytearray(buf[head + 4 : end])
                if size:
                    _mask_in_place(bytes(buf[head : head + 4]), payload)
                pos = end
                if op == OP_BINARY or op == OP_TEXT:
                    if self._frag_op is not None:
                        raise FrameError(PROTOCOL_ERROR, "a new message inside a fragmented one")
                    if b0 & 0x80:
                        out.append((op, payload))
                    else:
                        self._frag_op, self._frags, self._frag_len = op, [payload], size
                elif op == OP_CONTINUATION:
                    if self._frag_op is None:
                        raise FrameError(PROTOCOL_ERROR, "a continuation frame with no message")
                    if len(self._frags) >= MAX_FRAGMENTS:
                        raise FrameError(
                            MESSAGE_TOO_BIG, f"a message in more than {MAX_FRAGMENTS} fragments"
                        )
                    self._frags.append(payload)
                    self._frag_len += size
                    if b0 & 0x80:
                        out.append((self._frag_op, bytearray().join(self._frags)))
                        self._frag_op, self._frags, self._frag_len = None, [], 0
                elif op >= OP_CLOSE and op <= OP_PONG:
                    out.append((op, payload))
                else:
                    raise FrameError(PROTOCOL_ERROR, f"unknown opcode {op}")
        except FrameError as exc:
            self.error = exc
            self._buf = bytearray()
            return out
        if pos >= n:
            self._buf = bytearray()
        elif buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(buf[pos:])
        self._need = need
        return out


def frame(op: int, payload: bytes | bytearray = b"") -> bytes:
    """One whole, unmasked server frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | op, n)) + payload
    if n < 65536:
        return bytes((0x80 | op, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | op, 127)) + n.to_bytes(8, "big") + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and ``reason`` (cut to fit 125 bytes on a character)."""
    text = reason.encode()[:123].decode(errors="ignore").encode()
    return frame(OP_CLOSE, code.to_bytes(2, "big") + text)


def parse_close(payload: bytes | bytearray) -> tuple[int, str]:
    """The code and reason of a peer's close frame (``NO_STATUS`` when it has none)."""
    if not payload:
        return NO_STATUS, ""
    if len(payload) < 2:
        raise FrameError(PROTOCOL_ERROR, "a close frame's code is two bytes")
    code = int.from_bytes(payload[:2], "big")
    if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
        raise FrameError(PROTOCOL_ERROR, f"close code {code} is not one a peer may send")
    try:
        reason = bytes(payload[2:]).decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_PAYLOAD, "a close reason must be UTF-8") from None
    return code, reason
