"""The reference client of the WebSocket ingest protocol: streams a source to a reelhouse server.

One :class:`Publisher` runs one session's media: it keeps every unacknowledged frame in a
bounded resend buffer, paces frames in real time, obeys ``control`` messages, and after a
dropped connection reconnects with backoff and resends what the server does not hold.
Reading and encoding the source runs in worker threads; the event loop only does I/O.

With a :class:`Channel` instead of a session it publishes into an app's channel (for its
recorders: the cloud recording API, docs/protocol.md "Publishing into a channel"): nothing is
stored on that path, so after a reconnect it goes on live, numbering from 1 again, and what
was not acknowledged before the drop is counted lost, not resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from mixer.sources import EncodedFrame, MediaSource, SourceInfo, TestPattern, open_source

from .protocol import (
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    Control,
    ControlAck,
    Hello,
    Media,
    Track,
    Welcome,
    decode_server,
    encode,
)
from .publisher_parts import (
    RESEND_MAX_BYTES,
    RESEND_MAX_MEDIA_S,
    US_PER_S,
    Pacer,
    ResendBuffer,
    backoff_delays,
    ws_url,
)

log = logging.getLogger(__name__)

RECONNECT_GIVE_UP_S = 60.0  # of failed attempts in a row, since the last good connection
CONNECT_TIMEOUT_S = 10.0
WELCOME_TIMEOUT_S = 10.0
BYE_TIMEOUT_S = 30.0  # for the server to ack everything and close after bye
QUEUE_FRAMES_REALTIME = 16  # ≈0.25 s of 15 fps video + 50 fps audio: small, so resume is quick
QUEUE_FRAMES_FAST = 256
FILE_READ_BATCH = 32  # frames read per worker-thread call (a live pattern reads one)
PING_IDLE_S_FRACTION = 0.5  # send a ping after this fraction of keepalive_s without sending

# close codes after which the same session can go on (docs/protocol.md, "Close codes")
RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1013, 4007, 4008, 4010, 4012})
# the session is over, or another connection owns it: stop without an error
FINAL_CLOSE_CODES = frozenset({1000, 4004, 4009})
TRACK_IDS = {"video": 0, "audio": 1}

EventCallback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Channel:
    """Where a channel publisher goes: ``token`` is a channel token (``reelhouse token``), or
    empty for an app made with ``--no-token``, whose publishers may name their ``uid``."""

    appid: str
    cname: str
    uid: str | None = None
    token: str = ""


class PublishError(ConnectionError):
    """Publishing failed for good: a client fault, bad credentials, or the server stayed away."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class PublishResult:
    """What a publish sent and what the server acknowledged."""

    session_id: str | None
    frames_sent: int
    frames_acked: int
    bytes_sent: int
    reconnects: int
    last_seq: int
    ack_latencies_ms: list[float] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    uid: str | None = None  # publishing into a channel: the uid the server admitted


class _SessionOver(Exception):
    """The connection ended and the session must not be resumed (stop, or a final close)."""


class _Drop(Exception):
    """The connection ended in a way that calls for a reconnect (``wait_s``: not before)."""

    def __init__(self, message: str, wait_s: float = 0.0) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class Publisher:
    """Streams one source to one session over ``/v1/ingest``; see :func:`publish`."""

    def __init__(
        self,
        source: str | Path | MediaSource,
        *,
        server: str,
        api_key: str,
        session_id: str | None = None,
        platform_call_id: str | None = None,
        agent_platform_id: str | None = None,
        user_id: str | None = None,
        duration_s: float | None = None,
        codec: str = "h264",
        realtime: bool = True,
        loop: bool = False,
        on_event: EventCallback | None = None,
        session: aiohttp.ClientSession | None = None,
        reconnect: bool = True,
        resend_max_media_s: float = RESEND_MAX_MEDIA_S,
        resend_max_bytes: int = RESEND_MAX_BYTES,
        channel: Channel | None = None,
    ) -> None:
        if not (session_id or platform_call_id or agent_platform_id or user_id or channel):
            raise ValueError("publish needs a session_id, a platform id to wait for, or a channel")
        self.channel = channel
        self._source_spec = source
        self.url = ws_url(server)
        self._api_key = api_key
        self.session_id = session_id
        self._ids = {
            k: v
            for k, v in (
                ("platform_call_id", platform_call_id),
                ("agent_platform_id", agent_platform_id),
                ("user_id", user_id),
            )
            if v
        }
        self._duration_us = None if duration_s is None else round(duration_s * US_PER_S)
        self._codec = codec
        self._realtime = realtime
        self._loop_file = loop
        self._on_event = on_event
        self._http = session
        self._reconnect = reconnect
        self._buffer = ResendBuffer(resend_max_media_s, resend_max_bytes)
        self._source: MediaSource | None = None
        self._info: SourceInfo | None = None
        self._queue: asyncio.Queue[EncodedFrame | None] = asyncio.Queue(
            QUEUE_FRAMES_REALTIME if realtime else QUEUE_FRAMES_FAST
        )
        self._reader: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._started = asyncio.Event()
        self._resumed = asyncio.Event()
        self._acked = asyncio.Event()  # set on every ack: wakes a sender held by a full buffer
        self._stopping = False  # a stop control came, or the source ended: bye next
        self._source_done = False
        self._need_key = False
        self._pacer = Pacer()
        self._first_ts: int | None = None
        self._last_sent_at = 0.0
        self._seq = 0
        self._frames_sent = 0
        self._frames_acked = 0
        self._frames_lost = 0  # channel publishing: unacknowledged when a connection dropped
        self._uid: str | None = None  # channel publishing: as the welcome names it
        self._bytes_sent = 0
        self._reconnects = 0
        self._latencies_ms: list[float] = []
        self._close_code: int | None = None
        self._close_reason = ""
        self._resumed.set()

    # ---- public -------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The sequence number of the last media message sent."""
        return self._seq

    @property
    def acked_seq(self) -> int:
        """The highest sequence number the server has acknowledged."""
        return self._buffer.acked_seq

    async def drop_connection(self) -> None:
        """Abort the current socket without a close handshake (a test's network failure)."""
        ws = self._ws
        if ws is None:
            return
        conn = getattr(ws, "_conn", None)
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()
        else:  # pragma: no cover - aiohttp internals moved: close uncleanly as best we can
            await ws.close(code=1006)

    async def publish(self) -> PublishResult:
        """Stream until the source ends, ``duration_s`` passes, or the server stops the session."""
        own_http = self._http is None
        http = self._http or aiohttp.ClientSession()
        try:
            self._source = await asyncio.to_thread(self._open_source)
            self._info = self._source.info
            await self._connection_loop(http)
        finally:
            await self._close_source()
            if own_http:
                await http.close()
        return self.result()

    def result(self) -> PublishResult:
        """What was sent and acknowledged so far (also usable after a cancelled publish)."""
        return PublishResult(
            session_id=self.session_id,
            frames_sent=self._frames_sent,
            frames_acked=self._frames_acked,
            bytes_sent=self._bytes_sent,
            reconnects=self._reconnects,
            last_seq=self._seq,
            ack_latencies_ms=self._latencies_ms,
            close_code=self._close_code,
            close_reason=self._close_reason,
            uid=self._uid,
        )

    # ---- source ---------------------------------------------------------------------------

    def _open_source(self) -> MediaSource:
        spec = self._source_spec
        if isinstance(spec, (str, Path)):
            return open_source(spec, codec=self._codec, duration_s=None, loop=self._loop_file)
        return spec

    async def _read_source(self) -> None:
        """Fill the queue from the source in worker-thread batches; ``None`` marks the end."""
        assert self._source is not None
        frames = iter(self._source)
        if getattr(self._source, "in_memory", False):  # nothing to wait for: no thread hops
            try:
                for frame in frames:
                    await self._queue.put(frame)
            finally:
                self._source.close()
            await self._queue.put(None)
            return
        batch = 1 if isinstance(self._source, TestPattern) else FILE_READ_BATCH  # live: no lag

        def pull() -> list[EncodedFrame]:
            out: list[EncodedFrame] = []
            for frame in frames:
                out.append(frame)
                if len(out) >= batch:
                    break
            return out

        try:
            while True:
                chunk = await asyncio.to_thread(pull)
                if not chunk:
                    break
                for frame in chunk:
                    await self._queue.put(frame)
        finally:
            with contextlib.suppress(Exception):
                close = getattr(frames, "close", None)
                if close is not None:
                    await asyncio.to_thread(close)
        await self._queue.put(None)

    async def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None

    async def _next_frame(self) -> EncodedFrame | None:
        """The next frame to send (paced, filtered for pause and resume), or ``None`` at the end."""
        while True:
            if self._reader is None:
                self._reader = asyncio.create_task(self._read_source(), name="publisher-source")
            if self._reader.done() and self._queue.empty():
                exc = self._reader.exception()
                if exc is not None:
                    raise exc
                return None
            if not self._queue.empty():
                frame = self._queue.get_nowait()
            else:
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait(
                    {getter, self._reader}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    continue
                frame = getter.result()
            if frame is None:
                return None
            if self._first_ts is None:
                self._first_ts = frame.dts_us
            if self._duration_us is not None and frame.dts_us - self._first_ts >= self._duration_us:
                return None
            if self._realtime:
                wait = self._pacer.delay(frame.dts_us)
                if wait > 0:
                    await asyncio.sleep(wait)
            elif not self._resumed.is_set():
                await self._resumed.wait()  # a file sent as fast as possible just waits
            if not self._resumed.is_set():
                continue  # paused: a live clock runs on, frames produced meanwhile are skipped
            if frame.kind == "video" and self._need_key:
                if not frame.keyframe:
                    continue
                self._need_key = False
            return frame

    # ---- connection -----------------------------------------------------------------------

    def _emit(self, name: str, **info: Any) -> None:
        if self._on_event is not None:
            try:
                self._on_event(name, info)
            except Exception:
                log.exception("on_event callback failed for %s", name)

    async def _connection_loop(self, http: aiohttp.ClientSession) -> None:
        delays = backoff_delays()
        failing_since: float | None = None
        first = True
        while True:
            if not first:
                self._reconnects += 1
            first = False
            try:
                await self._run_connection(http)
                return
            except _SessionOver:
                return
            except _Drop as exc:
                if not self._reconnect:
                    raise PublishError(f"connection lost: {exc}", self._close_code) from None
                now = time.monotonic()
                if self._welcomed_this_time:
                    failing_since, delays = None, backoff_delays()
                failing_since = failing_since or now
                if now - failing_since > RECONNECT_GIVE_UP_S:
                    raise PublishError(
                        f"gave up reconnecting after {RECONNECT_GIVE_UP_S:.0f} s: {exc}",
                        self._close_code,
                    ) from None
                delay = max(next(delays), exc.wait_s)
                log.info("connection lost (%s); reconnecting in %.2f s", exc, delay)
                self._emit("reconnect", delay_s=delay, reason=str(exc), code=self._close_code)
                await asyncio.sleep(delay)

    async def _run_connection(self, http: aiohttp.ClientSession) -> None:
        self._welcomed_this_time = False
        try:
            ws = await http.ws_connect(
                self.url,
                protocols=(SUBPROTOCOL,),
                max_msg_size=0,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=BYE_TIMEOUT_S),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status in (401, 403):
                raise PublishError(f"handshake refused: {exc.status}", 4002) from None
            if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status in (429, 503):
                # the server is full: come back no sooner than it asks (Retry-After seconds)
                wait = exc.headers.get("Retry-After", "") if exc.headers else ""
                raise _Drop(
                    f"server busy ({exc.status}), retry after {wait or '?'} s",
                    float(wait) if wait.isdigit() else 0.0,
                ) from None
            raise _Drop(f"connect failed: {type(exc).__name__}: {exc}") from None
        self._ws = ws
        self._emit("connect", url=self.url)
        try:
            await self._converse(ws)
        except (aiohttp.ClientError, OSError, ConnectionError) as exc:
            if isinstance(exc, PublishError):
                raise
            await self._finish_close(ws)
            if self._stopping and self._source_done and len(self._buffer) == 0:
                raise _SessionOver from None
            raise _Drop(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._ws = None
            if not ws.closed:
                await ws.close()

    async def _finish_close(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._close_code = int(ws.close_code) if ws.close_code is not None else 1006
        reason = ws.exception()
        self._close_reason = str(reason) if reason is not None else ""
        self._emit("close", code=self._close_code, reason=self._close_reason)

    async def _converse(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        hello: Hello = {"t": "hello", "v": PROTOCOL_VERSION, "token": self._api_key}
        if self.channel is not None:
            hello.update(self._channel_hello(self.channel))  # type: ignore[typeddict-item]
        elif self.session_id:
            hello["session_id"] = self.session_id
        else:
            hello.update(self._ids)  # type: ignore[typeddict-item]
        await ws.send_bytes(encode(hello))
        msg = await ws.receive(timeout=WELCOME_TIMEOUT_S)
        if msg.type != aiohttp.WSMsgType.BINARY:
            # refused at the first hello: even the session having ended means nothing went
            # out (after a drop, it ended while we were away: that is the end of it)
            await self._closed(ws, msg, refused=not self._welcomed_once)
        welcome = decode_server(msg.data)
        if welcome["t"] != "welcome":
            raise PublishError(f"expected welcome, got {welcome['t']}")
        await self._on_welcome(welcome)
        self._welcomed_this_time = self._welcomed_once = True
        receiver = asyncio.create_task(self._receive(ws), name="publisher-receive")
        sender = asyncio.create_task(self._send(ws), name="publisher-send")
        try:
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done and sender.exception() is None and not receiver.done():
                # bye sent: the server acks what it holds, then closes
                await asyncio.wait({receiver}, timeout=BYE_TIMEOUT_S)
            for task in (receiver, sender):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if not receiver.done():
                raise PublishError("the server did not close the connection after bye")
        finally:
            for task in (receiver, sender):
                task.cancel()
            await asyncio.gather(receiver, sender, return_exceptions=True)

    @staticmethod
    def _channel_hello(channel: Channel) -> dict[str, str]:
        fields = {"appid": channel.appid, "cname": channel.cname, "token": channel.token}
        if channel.uid:
            fields["uid"] = channel.uid
        return fields

    def _go_live(self) -> None:
        """A channel connection, new or again: numbering starts at 1, nothing is resent (what
        a dropped connection left unacknowledged is lost), and video starts on a keyframe."""
        self._frames_lost += len(self._buffer)
        self._buffer = ResendBuffer(self._buffer.max_media_us / US_PER_S, self._buffer.max_bytes)
        self._seq = 0
        self._need_key = True
        if self._source is not None:
            self._source.force_keyframe()
        self._count_acked()

    def _number_on(self, acked_seq: int) -> None:
        """The session already holds media numbered past ours: another publisher sent it (this
        is a new process, say, after the app restarted). Number on from there, or the server
        would take our frames for ones it has and drop them; any we hold unacknowledged carry
        numbers it has used, so they are counted lost."""
        log.info("the session holds frames up to seq %d: numbering on from there", acked_seq)
        self._frames_lost += len(self._buffer)
        self._buffer = ResendBuffer(self._buffer.max_media_us / US_PER_S, self._buffer.max_bytes)
        self._buffer.acked_seq = acked_seq
        self._seq = acked_seq
        self._count_acked()

    async def _on_welcome(self, welcome: Welcome) -> None:
        if self.channel is not None:
            self._go_live()
            self._started.set()
            self._resumed.set()
            self._keepalive_s = float(welcome.get("keepalive_s") or 0)
            self._max_frame = int(welcome.get("max_frame") or 0)
            self._uid = welcome.get("uid")
            self._emit("welcome", state=welcome["state"], uid=self._uid)
            return
        if welcome["acked_seq"] > self._seq:
            self._number_on(welcome["acked_seq"])
        self._on_ack(welcome["acked_seq"])  # frames the server got before the drop are safe
        if welcome["session_id"]:
            self.session_id = welcome["session_id"]
            self._started.set()
        if welcome.get("state") == "PAUSED":
            self._resumed.clear()
        elif welcome.get("state") == "RECORDING" and not self._resumed.is_set():
            self._need_key = True  # resumed while we were away
            if self._source is not None:
                self._source.force_keyframe()
            self._resumed.set()
        self._keepalive_s = float(welcome.get("keepalive_s") or 0)
        self._max_frame = int(welcome.get("max_frame") or 0)
        self._emit(
            "welcome",
            session_id=welcome["session_id"],
            state=welcome["state"],
            acked_seq=welcome["acked_seq"],
        )

    async def _closed(
        self, ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage, refused: bool = False
    ) -> None:
        """The socket closed (or failed): decide between stopping, failing and reconnecting.
        ``refused``: closed instead of the first welcome, so even a final code (the session
        has ended) is a failure."""
        if msg.type == aiohttp.WSMsgType.CLOSE:
            code, reason = int(msg.data), str(msg.extra or "")
        else:
            code = int(ws.close_code) if ws.close_code is not None else 1006
            reason = str(ws.exception() or msg.extra or "")
        if code == 1000 and not (self._stopping or self._source_done):
            log.info("server ended the session: %s", reason)
        self._close_code, self._close_reason = code, reason
        self._emit("close", code=code, reason=reason)
        if code in FINAL_CLOSE_CODES and not refused:
            raise _SessionOver
        if code in RETRYABLE_CLOSE_CODES:
            raise _Drop(f"closed {code} {reason}")
        raise PublishError(f"server closed the connection: {code} {reason}", code)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    log.warning("ignoring a text frame from the server")
                    continue
                await self._closed(ws, msg)
            try:
                message = decode_server(msg.data)
            except ValueError as exc:
                log.warning("ignoring a malformed server message: %s", exc)
                continue
            kind = message["t"]
            if kind == "ack":
                self._on_ack(message["seq"])  # type: ignore[typeddict-item]
            elif kind == "control":
                await self._on_control(ws, message)  # type: ignore[arg-type]

    def _on_ack(self, seq: int) -> None:
        now = time.monotonic()
        self._latencies_ms.extend(1000.0 * s for s in self._buffer.ack(seq, now))
        self._count_acked()
        self._acked.set()

    def _count_acked(self) -> None:
        self._frames_acked = self._frames_sent - self._frames_lost - len(self._buffer)

    async def _on_control(self, ws: aiohttp.ClientWebSocketResponse, control: Control) -> None:
        action = control["action"]
        self._emit("control", action=action, id=control["id"], session_id=control.get("session_id"))
        if action == "start":
            if control.get("session_id"):
                self.session_id = control["session_id"]
            self._resumed.set()
            self._started.set()
        elif action == "pause":
            self._resumed.clear()
        elif action == "resume":
            if not self._resumed.is_set():
                self._need_key = True
                if self._source is not None:
                    self._source.force_keyframe()
            self._resumed.set()
        elif action == "stop":
            self._stopping = True
            self._resumed.set()  # wake a sender waiting on pause or acks: it sends bye
            self._acked.set()
        else:
            log.warning("ignoring unknown control action %r", action)
        ack: ControlAck = {"t": "ack", "id": control["id"]}
        await ws.send_bytes(encode(ack))

    async def _announce(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        assert self._info is not None
        for track in self._info.tracks:
            kind: Literal["video", "audio"] = "video" if track.kind == "video" else "audio"
            msg: Track = {"t": "track", "id": TRACK_IDS[kind], "kind": kind, "codec": track.codec}
            if track.width:
                msg["width"] = track.width
            if track.height:
                msg["height"] = track.height
            if track.sample_rate:
                msg["sample_rate"] = track.sample_rate
            if track.channels:
                msg["channels"] = track.channels
            if track.extradata:
                msg["extradata"] = track.extradata
            await ws.send_bytes(encode(msg))

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await self._started.wait()
        await self._announce(ws)
        for item in self._buffer.above(self._buffer.acked_seq):
            item.sent_at = time.monotonic()
            await ws.send_bytes(item.payload)
        self._last_sent_at = time.monotonic()
        keepalive = asyncio.create_task(self._keepalive(ws), name="publisher-keepalive")
        try:
            while not self._stopping:
                while self._buffer.full and not self._stopping:
                    self._acked.clear()
                    await self._acked.wait()
                frame = await self._next_frame()
                if frame is None:
                    self._source_done = True
                    break
                if self._stopping:
                    break
                await self._send_frame(ws, frame)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        self._stopping = True
        await ws.send_bytes(encode({"t": "bye"}))
        log.info("bye sent after seq %d", self._seq)

    async def _send_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: EncodedFrame) -> None:
        self._seq += 1
        msg: Media = {
            "t": "media",
            "seq": self._seq,
            "track": TRACK_IDS[frame.kind],
            "pts": frame.pts_us,
            "key": frame.keyframe,
            "data": frame.data,
        }
        if frame.dts_us != frame.pts_us:
            msg["dts"] = frame.dts_us
        payload = encode(msg)
        if self._max_frame and len(payload) > self._max_frame:
            raise PublishError(f"a {frame.kind} frame of {len(payload)} bytes exceeds max_frame")
        now = time.monotonic()
        self._buffer.push(self._seq, payload, frame.dts_us, now)
        self._frames_sent += 1
        self._bytes_sent += len(payload)
        self._last_sent_at = now
        await ws.send_bytes(payload)

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Ping while nothing else is sent (paused), so the server's idle timer never fires."""
        if self._keepalive_s <= 0:
            return
        idle_s = self._keepalive_s * PING_IDLE_S_FRACTION
        while True:
            await asyncio.sleep(max(0.05, self._last_sent_at + idle_s - time.monotonic()))
            if time.monotonic() - self._last_sent_at >= idle_s:
                self._last_sent_at = time.monotonic()
                await ws.send_bytes(encode({"t": "ping", "ts": int(time.time() * 1000)}))

    _welcomed_this_time = False
    _welcomed_once = False
    _keepalive_s = 0.0
    _max_frame = 0


async def publish(
    source: str | Path,
    *,
    server: str,
    api_key: str,
    session_id: str | None = None,
    platform_call_id: str | None = None,
    agent_platform_id: str | None = None,
    user_id: str | None = None,
    duration_s: float | None = None,
    codec: str = "h264",
    realtime: bool = True,
    on_event: EventCallback | None = None,
    session: aiohttp.ClientSession | None = None,
    reconnect: bool = True,
    channel: Channel | None = None,
) -> PublishResult:
    """Stream a file, or ``"testsrc"`` (a live pattern with a tone), to a reelhouse server.

    With ``session_id`` the media goes to that session; with platform ids only, the client
    waits for a START event that matches them; with ``channel`` (``api_key`` unused) it goes
    into that channel. Raises :class:`PublishError` on a client fault, bad credentials, or
    when reconnecting fails for :data:`RECONNECT_GIVE_UP_S`.
    """
    publisher = Publisher(
        source,
        server=server,
        api_key=api_key,
        session_id=session_id,
        platform_call_id=platform_call_id,
        agent_platform_id=agent_platform_id,
        user_id=user_id,
        duration_s=duration_s,
        codec=codec,
        realtime=realtime,
        on_event=on_event,
        session=session,
        reconnect=reconnect,
        channel=channel,
    )
    return await publisher.publish()
