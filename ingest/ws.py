"""The WebSocket transport of protocol v1 (``docs/protocol.md``): one handler per connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from mixer.errors import MediaError
from mixer.transcode import stream_framing

from .channels import ChannelRegistry, MediaFrame, TrackInfo, Transport
from .config import IngestSettings
from .errors import CloseCode, ConnectionsFull, ProtocolError
from .protocol import PROTOCOL_VERSION, SUBPROTOCOL, decode_client, encode
from .session_writer import track_spec
from .sessions import PLATFORM_FIELDS, LiveSession, SessionManager
from .wsconn import WsStream, take_over
from .wsframe import OP_BINARY

log = logging.getLogger(__name__)

# (appid, cname, uid or None, token) → the admitted uid, or ProtocolError(UNAUTHENTICATED, why)
Admit = Callable[[str, str, str | None, str], Awaitable[str]]

BYE_DRAIN_TIMEOUT_S = 30.0  # how long `bye` waits for the last frames to be made safe
# acks are held back (the newest goes when the socket drains) while this much is unsent
ACK_BACKLOG_BYTES = 16 * 1024
# upgrades taken past [ingest] max_connections, to hear their hello: a live session's
# reconnect is let in over the cap (its stale connection, if any, is replaced), others are
# closed 1013; one more than this is answered 503 before the upgrade
HELLO_ROOM = 32


class WsConnection:
    """A recording app's WebSocket, as the session registry sees it."""

    def __init__(self, stream: WsStream, ids: dict[str, str]) -> None:
        self.stream = stream
        self.ids = ids
        self.session: LiveSession | None = None
        self._ack_seq = 0  # an ack held back while the client's socket is backed up
        self._pong_ts: Any = None  # likewise the answer to the newest ping
        stream.on_drained = self._flush_held
        if stream.transport is not None:
            stream.transport.set_write_buffer_limits(high=ACK_BACKLOG_BYTES)
        self.silent_checks = 0  # keepalive checks in a row that found nothing heard

    async def send(self, message: Any) -> None:
        """Send one message; a closed socket drops it (the client resends what it needs)."""
        self.stream.send(encode(message))

    async def send_control(
        self, event_id: int, action: str, session_id: str, event: dict[str, str]
    ) -> None:
        """Push a control message."""
        await self.send(
            {
                "t": "control",
                "id": event_id,
                "action": action,
                "session_id": session_id,
                "event": event,
            }
        )

    async def send_ack(self, seq: int) -> None:
        """Cumulative ack; never waits (the writer's tick calls it for every session). While
        the client's socket is backed up the newest ack waits and goes when it drains, so a
        slow client delays only itself."""
        self._ack_seq = seq
        if not self.stream.writing_paused:
            self._flush_ack()

    def _flush_ack(self) -> None:
        if self._ack_seq:
            seq, self._ack_seq = self._ack_seq, 0
            self.stream.send(encode({"t": "ack", "seq": seq}))

    def pong(self, ts: Any) -> None:
        """Answer a ping; while the client's socket is backed up only the newest ping is
        answered, once it drains (a client that pings and never reads grows nothing here)."""
        self._pong_ts = ts
        if not self.stream.writing_paused:
            self._flush_held()

    def _flush_held(self) -> None:
        self._flush_ack()
        if self._pong_ts is not None:
            ts, self._pong_ts = self._pong_ts, None
            self.stream.send(encode({"t": "pong", "ts": ts}))

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close with a protocol close code and reason (from any task; never waits)."""
        await self.stream.close(int(code), reason)


class IngestHandler:
    """Serves ``GET /v1/ingest``."""

    def __init__(
        self,
        manager: SessionManager,
        settings: IngestSettings,
        authenticate: Callable[[str], Awaitable[bool]],
        channels: ChannelRegistry | None = None,
        admit: Admit | None = None,
    ) -> None:
        self._manager = manager
        self._settings = settings
        self._authenticate = authenticate
        self._channels = channels
        self._admit = admit
        self.connections: set[WsConnection] = set()
        self._upgrading = 0  # upgrades being answered: they count against max_connections
        self.refused = 0  # upgrades refused at max_connections, for /metrics
        self._keepalive: asyncio.Task[None] | None = None
        self._keepalive_tasks: set[asyncio.Task[None]] = set()  # the closes it started
        self._serving: set[asyncio.Task[None]] = set()  # one per connection

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """Run one connection to its end."""
        # (counted before the first await: upgrades that come together cannot all pass)
        cap = self._settings.max_connections
        if len(self.connections) + self._upgrading >= cap + min(cap, HELLO_ROOM):
            self.refused += 1
            raise ConnectionsFull(self._full())
        # (no aiohttp heartbeat or autoping: the socket is ours once the upgrade is answered)
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), autoping=False, compress=False)
        stream = WsStream(self._settings.max_frame_bytes)
        self._upgrading += 1
        try:
            if not await take_over(request, ws, stream):
                return ws
            conn = WsConnection(stream, {})
            self.connections.add(conn)
        finally:
            self._upgrading -= 1
        if self._keepalive is None and self._settings.keepalive_s > 0:
            self._keepalive = asyncio.create_task(self._keep_alive(), name="ws-keepalive")
        # the connection is ours now, not the request's: aiohttp may cancel its handler once
        # its transport is gone (``handler_cancellation``), and the connection goes on
        serving = asyncio.create_task(self._serve(conn), name="ingest-ws")
        self._serving.add(serving)
        serving.add_done_callback(self._serving.discard)
        await asyncio.shield(serving)
        return ws

    def _full(self) -> str:
        cap = self._settings.max_connections
        return f"this server holds {cap} ingest connections: try again later"

    def _over_cap(self) -> bool:
        """Past ``max_connections`` (this connection counted): what only a live session's
        reconnect may be, never a new recording app or publisher."""
        if len(self.connections) <= self._settings.max_connections:
            return False
        self.refused += 1
        return True

    async def _serve(self, conn: WsConnection) -> None:
        try:
            await self._run(conn)
        except ProtocolError as exc:
            log.info("closing ws: %s (%d)", exc.reason, exc.code, extra=_ctx(conn))
            await conn.close(exc.code, exc.reason)
        except Exception:  # a bug of ours: the client reconnects and resends (not 1000: stop)
            log.exception("ingest connection failed", extra=_ctx(conn))
            await conn.close(CloseCode.INTERNAL_ERROR, "server error")
        finally:
            conn.stream.fast = None
            self._manager.detach(conn)
            self.connections.discard(conn)
            await conn.close(CloseCode.NORMAL, "")

    async def _keep_alive(self) -> None:
        """Every ``keepalive_s``: ping each connection nothing came from since the last look
        while its handler waited for it, and close with 4010 one that stayed silent a second
        time (a pong counts). A handler held up on our side (a full queue, a ``bye`` waiting
        for the writer) is not the client's silence."""
        period = self._settings.keepalive_s
        while True:
            await asyncio.sleep(period)
            for conn in list(self.connections):
                # (a handler that holds a message is busy, or waits for room in the session's
                # queue: the silence is not the client's)
                stream = conn.stream
                if stream.heard or stream.busy:
                    stream.heard = False
                    conn.silent_checks = 0
                    continue
                conn.silent_checks += 1
                if conn.silent_checks == 1:
                    stream.ping()
                elif conn.silent_checks == 2:
                    log.info("closing ws: nothing received", extra=_ctx(conn))
                    reason = f"nothing received within {2 * period:g} s"
                    self._spawn(conn.close(CloseCode.KEEPALIVE_TIMEOUT, reason))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._keepalive_tasks.add(task)
        task.add_done_callback(self._keepalive_tasks.discard)

    async def _receive(
        self, conn: WsConnection, timeout: float | None = None
    ) -> dict[str, Any] | None:
        msg = await conn.stream.receive(timeout)
        if msg is None:
            return None  # closed or closing
        op, payload = msg
        if op != OP_BINARY:
            raise ProtocolError(
                CloseCode.UNSUPPORTED_DATA, "text frames are not part of protocol v1"
            )
        return decode_client(payload, self._settings.max_frame_bytes)  # type: ignore[return-value]

    def _fast(self, conn: WsConnection) -> Callable[[int, bytearray], bool]:
        """The connection's fast path: a media frame the session's recorder can take at once
        is queued in ``data_received``; anything else (another message, a frame that breaks
        a rule, a full queue) goes to the handler, which decodes it again and acts."""
        max_frame = self._settings.max_frame_bytes

        def fast(op: int, payload: bytearray) -> bool:
            live = conn.session
            if op != OP_BINARY or live is None:
                return False
            try:
                msg = decode_client(payload, max_frame)
            except ProtocolError:
                return False
            return msg["t"] == "media" and live.recorder.take_now(msg)  # type: ignore[arg-type]

        return fast

    async def _run(self, conn: WsConnection) -> None:
        try:
            hello = await self._receive(conn, timeout=self._settings.hello_timeout_s)
        except TimeoutError:
            raise ProtocolError(CloseCode.HELLO_TIMEOUT, "no hello in time") from None
        if hello is None:
            return
        if hello["t"] != "hello":
            raise ProtocolError(CloseCode.SCHEMA, "the first message must be hello")
        if "appid" in hello:
            if self._over_cap():
                raise ProtocolError(CloseCode.TRY_AGAIN_LATER, self._full())
            await self._run_channel(conn, hello)
            return
        if not await self._authenticate(hello["token"]):
            raise ProtocolError(CloseCode.UNAUTHENTICATED, "invalid token")
        conn.ids = {k: hello.get(k, "") for k in PLATFORM_FIELDS}
        live = await self._manager.attach(conn, hello.get("session_id"))
        if live is None and self._over_cap():  # (a waiting app: _serve's end detaches it)
            raise ProtocolError(CloseCode.TRY_AGAIN_LATER, self._full())
        await conn.send(
            {
                "t": "welcome",
                "v": PROTOCOL_VERSION,
                "session_id": live.session_id if live else None,
                "state": live.row.state if live else "WAITING",
                "acked_seq": live.recorder.acked_seq if live else 0,
                "max_frame": self._settings.max_frame_bytes,
                "keepalive_s": self._settings.keepalive_s,
            }
        )
        if live is not None:
            for event_id, action, event in await self._manager.pending_controls(live):
                await conn.send_control(event_id, action, live.session_id, event)
            if (notice := live.recorder.take_notice()) is not None:
                raise notice  # (after the welcome: the client knows where to go on from)
        conn.stream.fast = self._fast(conn)
        while True:
            msg = await self._receive(conn)
            if msg is None:
                return
            kind = msg["t"]
            if kind == "media":
                live = conn.session
                if live is None:
                    raise ProtocolError(CloseCode.SESSION_STATE, "media before the session started")
                await live.recorder.submit(msg)
            elif kind == "track":
                live = conn.session
                if live is None:
                    raise ProtocolError(CloseCode.SESSION_STATE, "track before the session started")
                await live.recorder.add_track(msg)
            elif kind == "ack":
                await self._manager.control_acked(conn, msg["id"])
            elif kind == "ping":
                conn.pong(msg.get("ts", 0))
            elif kind == "bye":
                live = conn.session
                if live is not None:
                    with contextlib.suppress(TimeoutError):
                        await live.recorder.wait_acked(
                            live.recorder.received_seq, BYE_DRAIN_TIMEOUT_S
                        )
                    await conn.send({"t": "ack", "seq": live.recorder.acked_seq})  # the last
                await conn.close(CloseCode.NORMAL, "bye")
                return
            else:
                raise ProtocolError(CloseCode.BAD_MESSAGE, f"{kind} is not a client message here")

    async def _run_channel(self, conn: WsConnection, hello: dict[str, Any]) -> None:
        """A publisher in a channel: tracks and media go to the channel's subscribers.

        Nothing is stored on this path (a subscriber records what it wants), so a media
        message is acknowledged as soon as it has been handed to the channel.
        """
        if self._channels is None or self._admit is None:
            raise ProtocolError(CloseCode.SESSION_STATE, "channels are not served here")
        appid, cname = hello["appid"], hello["cname"]
        uid = await self._admit(appid, cname, hello.get("uid"), hello["token"])
        registry = self._channels

        async def replaced(reason: str) -> None:
            await conn.close(CloseCode.REPLACED, reason)

        member = await registry.join(appid, cname, uid, Transport.WS, replaced)
        conn.ids = {"uid": uid, "appid": appid, "cname": cname}
        tracks: dict[int, TrackInfo] = {}
        framings: dict[int, Callable[[bytes, bool], bytes] | None] = {}
        seq = 0
        try:
            await conn.send(
                {
                    "t": "welcome",
                    "v": PROTOCOL_VERSION,
                    "session_id": None,
                    "state": "PUBLISHING",
                    "acked_seq": 0,
                    "max_frame": self._settings.max_frame_bytes,
                    "keepalive_s": self._settings.keepalive_s,
                    "uid": uid,
                }
            )
            while (msg := await self._receive(conn)) is not None:
                kind = msg["t"]
                if kind == "media":
                    if msg["seq"] != seq + 1:
                        raise ProtocolError(
                            CloseCode.SEQUENCE, f"media seq {msg['seq']} after {seq}"
                        )
                    track = tracks.get(msg["track"])
                    if track is None:
                        raise ProtocolError(
                            CloseCode.UNKNOWN_TRACK, f"track {msg['track']} was not announced"
                        )
                    seq = msg["seq"]
                    data = msg["data"]
                    framing = framings.get(msg["track"])
                    if framing is not None:  # subscribers take stream framing: no extradata
                        try:
                            data = framing(data, msg["key"])
                        except MediaError as exc:
                            raise ProtocolError(CloseCode.INVALID_MEDIA, str(exc)) from None
                    channel = registry.get(appid, cname)
                    if channel is not None:
                        frame = MediaFrame(
                            uid,
                            track.track_id,
                            track.kind,
                            data,
                            msg["pts"],
                            msg["key"],
                            track.codec,
                            msg.get("dts"),  # B-frames: the decode order's clock
                        )
                        channel.publish(member, frame)
                    await conn.send_ack(seq)
                elif kind == "track":
                    info = TrackInfo(
                        str(msg["id"]),
                        msg["kind"],
                        msg["codec"],
                        msg.get("width", 0),
                        msg.get("height", 0),
                    )
                    known = tracks.get(msg["id"])
                    if known is not None and (known.kind, known.codec) != (info.kind, info.codec):
                        raise ProtocolError(
                            CloseCode.SCHEMA, f"track {msg['id']} already announced"
                        )
                    try:  # (MP4 framing, as files hold it, is rewritten frame by frame)
                        spec = track_spec(msg) if msg.get("extradata") else None
                        framings[msg["id"]] = stream_framing(spec) if spec else None
                    except MediaError as exc:
                        raise ProtocolError(CloseCode.SCHEMA, f"track: {exc}") from None
                    tracks[msg["id"]] = info
                    registry.set_track(appid, cname, member, info)
                elif kind == "ping":
                    conn.pong(msg.get("ts", 0))
                elif kind == "bye":
                    await conn.close(CloseCode.NORMAL, "bye")
                    return
                else:
                    reason = f"{kind} is not a client message here"
                    raise ProtocolError(CloseCode.BAD_MESSAGE, reason)
        finally:
            registry.leave(appid, cname, member, "disconnected")

    async def aclose(self) -> None:
        """Close every connection with GOING_AWAY."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        streams = [conn.stream for conn in self.connections]
        for conn in list(self.connections):
            await conn.close(CloseCode.GOING_AWAY, "server shutting down")
        await asyncio.gather(*self._keepalive_tasks, *self._serving, return_exceptions=True)
        await asyncio.gather(*(stream.wait_closed() for stream in streams))


def _ctx(conn: WsConnection) -> dict[str, str]:
    return {"session_id": conn.session.session_id if conn.session else "-"}
