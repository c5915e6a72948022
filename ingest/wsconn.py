"""An ingest WebSocket on a transport of its own, once aiohttp has answered the upgrade.

aiohttp's WebSocket layer costs several event-loop callbacks per message (a future and a
task wake-up per ``receive``, its reader's queue, a message object) and keeps its parser's
state to itself. ``WsStream`` parses with ``ingest.wsframe`` straight in ``data_received``
and offers each data message first to ``fast``, a callback that takes a media frame there
and then (no task wakes up: at one message per frame, this is most of what the server's
event loop does); what it declines queues in an inbox the handler reads, in order, and
reading pauses while the inbox is full. Frames go out as one ``write`` each. ``take_over``
moves a freshly upgraded request's socket from aiohttp to a ``WsStream``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import Callable

from aiohttp import web

from .errors import CloseCode, ProtocolError
from .wsframe import (
    NO_STATUS,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameError,
    FrameParser,
    Message,
    close_frame,
    frame,
    parse_close,
)

CLOSE_HANDSHAKE_TIMEOUT_S = 5.0  # a close handshake the peer leaves hanging ends then
# messages queued unread, or their bytes: stop reading the socket at either high mark...
INBOX_HIGH = 64
INBOX_HIGH_BYTES = 1024 * 1024
# ...and read again once the handler has taken the inbox down to both low marks
INBOX_LOW = 16
INBOX_LOW_BYTES = 256 * 1024


class WsStream(asyncio.Protocol):
    """One WebSocket connection, the server's end."""

    def __init__(self, max_message: int) -> None:
        self._parser = FrameParser(max_message)
        self.transport: asyncio.Transport | None = None
        self._inbox: deque[Message] = deque()
        self._inbox_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: FrameError | None = None  # the peer broke the framing
        self._eof = False  # the peer closed, or the connection is gone
        self._paused = False  # reading paused: the inbox is full
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.heard = True  # bytes came since the keepalive last looked
        self.close_sent = False
        self.writing_paused = False
        self.on_drained: Callable[[], None] | None = None  # the write buffer emptied
        self._linger: asyncio.TimerHandle | None = None  # ends a close handshake that hangs
        # takes a data message at once, when nothing before it is unhandled (the inbox is
        # empty and the handler holds none); False leaves it to the inbox, and the handler
        self.fast: Callable[[int, bytearray], bool] | None = None
        self.busy = False  # the handler holds a message (between two ``receive`` calls)
        self._pong: bytearray | None = None  # a ping's payload, answered when writing may

    # asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard = True
        parser = self._parser
        messages = parser.feed(data)
        inbox = self._inbox
        fast = self.fast
        for op, payload in messages:
            if op < OP_CLOSE:  # text or binary
                if self.close_sent:  # data after our close frame is dropped
                    continue
                if fast is not None and not inbox and not self.busy and fast(op, payload):
                    continue
                inbox.append((op, payload))
                self._inbox_bytes += len(payload)
            elif op == OP_PING:  # answered once the socket drains, the newest only (RFC 6455
                # 5.5.3 allows it): a peer that pings and never reads grows nothing here
                self._pong = payload
                if not self.writing_paused:
                    self._flush_pong()
            elif op == OP_CLOSE:
                self._peer_closed(payload)
                break
            # (a pong only shows the peer is there: ``heard``)
        if parser.error is not None and self._error is None:
            self._error = parser.error
        if inbox or self._error is not None:
            self._wake()
        full = len(inbox) >= INBOX_HIGH or self._inbox_bytes >= INBOX_HIGH_BYTES
        if full and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._eof = True  # (after our close frame: the peer's answer, or its going away)
        self._wake()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        self._eof = True
        self._wake()
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._flush_pong()
        if self.on_drained is not None:
            self.on_drained()

    def _flush_pong(self) -> None:
        if self._pong is not None:
            payload, self._pong = self._pong, None
            self._write(frame(OP_PONG, payload))

    # the handler's side -------------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> Message | None:
        """The next data message; None once the connection is closing or gone. A broken
        framing raises ``ProtocolError`` (after the messages before it). The handler holds
        the message it gets (``busy``) until it asks for the next."""
        self.busy = False
        while not self._inbox:
            if self._error is not None:
                raise ProtocolError(CloseCode(self._error.code), self._error.reason)
            if self._eof or self.close_sent:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            finally:
                self._waiter = None
        msg = self._inbox.popleft()
        self._inbox_bytes -= len(msg[1])
        self.busy = True
        low = len(self._inbox) <= INBOX_LOW and self._inbox_bytes <= INBOX_LOW_BYTES
        if self._paused and low and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return msg

    def send(self, payload: bytes) -> None:
        """One binary message (dropped once closing: the client resends what it needs)."""
        if not self.close_sent:
            self._write(frame(OP_BINARY, payload))

    def ping(self) -> None:
        if not self.close_sent:
            self._write(frame(OP_PING))

    async def close(self, code: int, reason: str) -> None:
        """Start the close handshake (it never waits): send a close frame and the end of
        our side; the connection ends when the peer's close frame (or its end) comes, or
        after ``CLOSE_HANDSHAKE_TIMEOUT_S``. Data the peer sends meanwhile is dropped."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.close_sent:
            self._write(close_frame(code, reason))
            self.close_sent = True
            self._inbox.clear()
            self._inbox_bytes = 0
            if transport.can_write_eof():
                transport.write_eof()  # the peer reads our close frame, then the end
            if self._paused:  # the peer's close frame must be read
                self._paused = False
                transport.resume_reading()
            self._linger = asyncio.get_running_loop().call_later(
                CLOSE_HANDSHAKE_TIMEOUT_S, transport.abort
            )
            self._wake()
        if self._eof:
            transport.close()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone (a close handshake ends within seconds)."""
        if self.transport is not None:
            await asyncio.shield(self._lost)

    # --------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.close_sent and not transport.is_closing():
            transport.write(data)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _peer_closed(self, payload: bytearray) -> None:
        try:
            code, _ = parse_close(payload)  # (the reason is checked: UTF-8)
        except FrameError as exc:
            self._error = exc
            return
        self._eof = True
        if not self.close_sent:  # answer with its code, as RFC 6455 5.5.1 asks
            self._write(close_frame(CloseCode.NORMAL if code == NO_STATUS else code))
            self.close_sent = True
        if self.transport is not None:
            self.transport.close()  # the server closes the TCP connection first


async def take_over(request: web.Request, ws: web.WebSocketResponse, stream: WsStream) -> bool:
    """Answer the upgrade with aiohttp's ``ws`` and move the socket to ``stream``: aiohttp's
    transport lets go of it (its copy of the descriptor is closed, which sends nothing) and
    ``stream`` reads it from the first frame on. False when aiohttp read a frame already (a
    client that did not wait for the upgrade's answer): it is closed with 1002."""
    transport = request.transport
    assert transport is not None
    transport.pause_reading()  # nothing after the upgrade request reaches aiohttp's parser
    try:
        await ws.prepare(request)
    except BaseException:  # (not an upgrade: its 400 goes, and the connection reads on)
        transport.resume_reading()
        raise
    early = getattr(getattr(ws, "_reader", None), "_buffer", None)
    if early or transport.get_write_buffer_size():
        transport.resume_reading()  # aiohttp's close waits for the peer's answer: read it
        await ws.close(code=1002, message=b"data sent before the upgrade was answered")
        return False
    sock = transport.get_extra_info("socket")
    own = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: stream, own)
    except BaseException:
        own.close()
        raise
    # last, with nothing awaited after it: aiohttp may cancel the request's handler once its
    # transport is gone
    transport.abort()
    return True
