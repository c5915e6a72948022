"""Bad input on the ingest WebSocket: each gets its documented close code, and a session
recording beside it is not harmed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from conftest import Server
from media import encode_clip
from recording import count_frames, event, fetch_recording, recording_client, start_session
from wsclient import RECEIVE_TIMEOUT_S, RawClient

from api.keys import INGEST, META

RACE_WAIT_S = 0.5  # how long a racing event is seen waiting for its session's START


def media(seq: int, data: bytes = b"\x00\x00\x00\x01\x09\xf0", track: int = 0) -> dict[str, Any]:
    return {
        "t": "media",
        "seq": seq,
        "track": track,
        "pts": seq * 66_666,
        "key": True,
        "data": data,
    }


async def connect(http: aiohttp.ClientSession, server: Server) -> RawClient:
    client = RawClient(http, server.url)
    await client.connect()
    return client


class Wire(bytes):
    """Bytes written to the socket as they are, not as a WebSocket message."""


def _masked(op: int, payload: bytes, *, first: int = 0x80) -> bytes:
    """A client frame (short payload), masked with a zero key: the payload reads as is."""
    return bytes((first | op, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload


BAD_AFTER_HELLO: list[tuple[str, list[Any], int, str]] = [
    ("garbage frame", [b"\xc1\xc1 not msgpack"], 4000, "not a msgpack"),
    ("unknown type", [{"t": "launch"}], 4000, "unknown message type"),
    ("wrong schema", [{"t": "media", "seq": "one"}], 4001, "seq must be"),
    ("unknown codec", [{"t": "track", "id": 0, "kind": "video", "codec": "h265"}], 4005, "h265"),
    ("unannounced track", [media(1)], 4006, "unannounced track"),
    (
        "seq skips ahead",
        [{"t": "track", "id": 0, "kind": "video", "codec": "h264"}, media(5)],
        4007,
        "expected seq 1",
    ),
    (
        "undecodable vp8",
        [{"t": "track", "id": 0, "kind": "video", "codec": "vp8"}, media(1, b"\xff" * 64)],
        4011,
        "seq 1",
    ),
    ("text frame", ["hello"], 1003, "text frames"),
    ("oversized frame", [b"\x00" * (256 * 1024 + 1)], 1009, ""),
    ("unmasked frame", [Wire(b"\x82\x02hi")], 1002, "masked"),
    ("reserved bits", [Wire(_masked(0x2, b"hi", first=0xC0))], 1002, "reserved"),
    ("unknown opcode", [Wire(_masked(0x3, b"hi"))], 1002, "opcode 3"),
    ("close reason not UTF-8", [Wire(_masked(0x8, b"\x03\xe8\xff"))], 1007, "UTF-8"),
]


@pytest.mark.parametrize(
    ("bad", "frames", "code", "fragment"), BAD_AFTER_HELLO, ids=[b[0] for b in BAD_AFTER_HELLO]
)
async def test_bad_input_closes_with_its_code_and_spares_other_sessions(
    server_factory: Any, bad: str, frames: list[Any], code: int, fragment: str, tmp_path: Path
) -> None:
    server = await server_factory(ingest={"max_frame_bytes": 256 * 1024})
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        good_sid = await start_session(http, server)
        good = await connect(http, server)
        await good.hello(server.api_key, session_id=good_sid)
        await good.tracks()
        half = len(clip.frames) // 2
        for f in clip.frames[:half]:
            await good.media(f)

        bad_sid = await start_session(http, server)
        client = await connect(http, server)
        await client.hello(server.api_key, session_id=bad_sid)
        for frame in frames:
            assert client.ws is not None
            if isinstance(frame, Wire):
                client.ws._writer.transport.write(frame)  # what no aiohttp client would send
            elif isinstance(frame, bytes):
                await client.ws.send_bytes(frame)
            elif isinstance(frame, str):
                await client.ws.send_str(frame)
            else:
                await client.send(frame)
        got_code, reason = await client.closed()
        assert got_code == code, reason
        assert fragment in reason

        for f in clip.frames[half:]:  # the other session goes on as if nothing happened
            await good.media(f)
        await good.wait_ack(len(clip.frames))
        await event(http, server, "EVENT_TYPE_END", good_sid)
        assert (await good.closed())[0] == 1000
        # its recording is whole: both sessions shared one writer lane, which wrote the bad
        # frames after acknowledging them
        playlist, mp4 = await fetch_recording(server, good_sid, tmp_path)
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == clip.video_frames
    assert abs(audio - clip.audio_frames * 960 / 1024) <= 2  # (Opus 960 → AAC 1024 samples)
    assert "#EXT-X-DISCONTINUITY" not in playlist.read_text()


@pytest.mark.parametrize(
    ("hello", "code", "fragment"),
    [
        ({"t": "hello", "v": 1, "token": "wrong", "session_id": "x"}, 4002, "invalid token"),
        ({"t": "hello", "v": 1, "token": "K", "session_id": "nope"}, 4003, "not found"),
        ({"t": "hello", "v": 1, "token": "K"}, 4001, "session_id or platform ids"),
        ({"t": "ping"}, 4001, "first message must be hello"),
        ({"t": "hello", "v": 2, "token": "K"}, 4001, "v must be 1"),
    ],
)
async def test_bad_hello(server: Server, hello: dict[str, Any], code: int, fragment: str) -> None:
    if hello.get("token") == "K":
        hello = {**hello, "token": server.api_key}
    async with aiohttp.ClientSession() as http:
        client = await connect(http, server)
        await client.send(hello)
        got_code, reason = await client.closed()
        assert (got_code, fragment in reason) == (code, True), reason


async def test_ended_session_refuses_connections(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        await event(http, server, "EVENT_TYPE_END", sid)
        client = await connect(http, server)
        await client.send({"t": "hello", "v": 1, "token": server.api_key, "session_id": sid})
        assert (await client.closed())[0] == 4004


async def test_media_before_start_is_refused(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        client = await connect(http, server)
        welcome = await client.hello(server.api_key, platform_call_id="call-x")
        assert welcome["session_id"] is None and welcome["state"] == "WAITING"
        await client.send({"t": "track", "id": 0, "kind": "video", "codec": "h264"})
        code, reason = await client.closed()
        assert code == 4004 and "before the session started" in reason


async def test_hello_timeout(server_factory: Any) -> None:
    server = await server_factory(ingest={"hello_timeout_s": 0.2})
    async with aiohttp.ClientSession() as http:
        client = await connect(http, server)
        assert (await client.closed())[0] == 4008


async def test_keepalive_closes_a_silent_client_with_4010_not_one_answering_pings(
    server_factory: Any,
) -> None:
    """The server pings a connection nothing came from for ``keepalive_s``; one that stays
    silent a second time, not even answering the ping, is closed with 4010."""
    server = await server_factory(ingest={"keepalive_s": 0.2})
    url = server.url.replace("http://", "ws://") + "/v1/ingest"
    hello = {"t": "hello", "v": 1, "token": server.api_key, "platform_call_id": "call-k"}
    async with aiohttp.ClientSession() as http:
        # neither client answers pings by itself: each decides below
        answering = await http.ws_connect(url, autoping=False)
        silent = await http.ws_connect(url, autoping=False)
        for ws in (answering, silent):
            await ws.send_bytes(msgpack.packb(hello))
            welcome = msgpack.unpackb((await ws.receive(timeout=5)).data)
            assert welcome["t"] == "welcome" and welcome["keepalive_s"] == 0.2

        async def stay_silent() -> tuple[int, str]:
            ping = await silent.receive(timeout=5)
            assert ping.type is aiohttp.WSMsgType.PING
            close = await silent.receive(timeout=5)
            assert close.type is aiohttp.WSMsgType.CLOSE
            return close.data, close.extra

        async def answer_pings() -> None:  # three of them span six silent periods
            for _ in range(3):
                msg = await answering.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.PING
                await answering.pong(msg.data)

        closed, _ = await asyncio.gather(stay_silent(), answer_pings())
        assert closed == (4010, "nothing received within 0.4 s")
        await answering.send_bytes(msgpack.packb({"t": "ping", "ts": 7}))
        assert msgpack.unpackb((await answering.receive(timeout=5)).data) == {"t": "pong", "ts": 7}
        await answering.close()


async def test_keepalive_spares_a_client_whose_frames_wait_for_room(
    server_factory: Any,
) -> None:
    """A handler held up on the server's side (a full session queue: the writer ticks slowly
    here) reads nothing for several keepalive periods; its client is not silent and is not
    closed: every frame is acknowledged."""
    server = await server_factory(ingest={"keepalive_s": 0.1, "queue_frames": 2, "tick_s": 0.7})
    clip = encode_clip("h264", duration_s=1.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        _, client = await recording_client(http, server)
        for f in clip.frames[:7]:  # two waits of a tick (0.7 s, 7 keepalive periods) each
            last = await client.media(f)
        await client.wait_ack(last)  # a 4010 close raises ConnectionError here
        assert client.acked == 7


async def test_a_session_queue_is_bounded_in_bytes_too(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames of 40 kB against a 100 kB queue (the frame count far from its bound, the writer
    ticking slowly): the writer never takes more than the byte bound plus the frame that
    crossed it, and every frame is acknowledged."""
    server = await server_factory(
        ingest={"queue_frames": 1000, "queue_bytes": 100_000, "tick_s": 0.3}
    )
    taken: list[int] = []
    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, server)
        (conn,) = [c for c in server.app[INGEST].connections if c.session is not None]
        assert conn.session is not None and conn.session.session_id == sid
        recorder = conn.session.recorder
        take = recorder.take

        def counted() -> list[tuple[Any, ...]]:
            items = take()
            taken.append(sum(len(i[7]) for i in items if i[0] == "media"))
            return items

        monkeypatch.setattr(recorder, "take", counted)
        clip = encode_clip("h264", duration_s=0.8, audio_codec=None)
        # (zero bytes after a NAL unit are allowed trailing bytes in H.264's byte stream)
        frames = [dataclasses.replace(f, data=f.data + bytes(40_000)) for f in clip.frames]
        for f in frames:  # 12 frames, ~480 kB, sent at once
            last = await client.media(f)
        await client.wait_ack(last)
    assert client.acked == len(frames) == 12
    assert max(taken) <= 100_000 + max(len(f.data) for f in frames), taken


async def test_acks_wait_for_a_backed_up_socket_without_holding_up_the_lane(
    server: Server,
) -> None:
    """While a connection's socket is backed up (its transport asked to pause writing: more
    than ``ACK_BACKLOG_BYTES`` unsent), its session's acks are held back (the writer's tick
    does not wait, so another session on the same lane is acknowledged meanwhile); once the
    socket drains the client gets one ack, the newest, covering everything made safe in
    between."""
    clip = encode_clip("h264", duration_s=1.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid, held = await recording_client(http, server)
        _, other = await recording_client(http, server)
        (conn,) = [
            c for c in server.app[INGEST].connections
            if c.session is not None and c.session.session_id == sid
        ]  # fmt: skip
        assert conn.session is not None
        conn.stream.pause_writing()  # as its transport does when the buffer passes the mark
        for f in clip.frames:
            last = await held.media(f)
        await conn.session.recorder.wait_acked(last, RECEIVE_TIMEOUT_S)  # safe, not told
        for f in clip.frames:
            other_last = await other.media(f)
        await other.wait_ack(other_last)  # the lane ticks on for the other session
        conn.stream.resume_writing()  # drained
        acks = []
        while held.acked < last:
            message = await held.recv()
            acks += [message["seq"]] if message["t"] == "ack" else []
        assert acks == [last]


async def test_recording_app_waits_for_start_and_acks_events(server: Server) -> None:
    """A recording app connected with platform ids gets the START pushed and acks it."""
    async with aiohttp.ClientSession() as http:
        app = await connect(http, server)
        await app.hello(server.api_key, platform_call_id="call-7", user_id="agent-7")
        other = await connect(http, server)  # same call, another user: must not get it
        await other.hello(server.api_key, platform_call_id="call-7", user_id="agent-8")
        sid = await start_session(http, server, platformCallId="call-7", userId="agent-7")
        control = await app.wait_control("start")
        assert control["session_id"] == sid
        assert control["event"] == {
            "eventType": "EVENT_TYPE_START",
            "sessionId": sid,
            "platformCallId": "call-7",
            "userId": "agent-7",
        }
        await app.send({"t": "ack", "id": control["id"]})
        # the push went out before START answered; a ping round trip shows nothing came
        await other.send({"t": "ping", "ts": 1})
        assert (await other.recv())["t"] == "pong"
        await event(http, server, "EVENT_TYPE_PAUSE", sid)
        pause = await app.wait_control("pause")
        # (the PAUSE named only the session: the app hears the ids it was paired by too)
        assert pause["event"] == {**control["event"], "eventType": "EVENT_TYPE_PAUSE"}
        await app.send({"t": "ack", "id": pause["id"]})
        await app.send({"t": "ping", "ts": 42})
        assert (await app.recv())["t"] == "pong"  # acks before the ping are processed by now
        url = f"{server.url}/v1/customers/acme/profiles/support/screenRecordingSessions/{sid}"
        async with http.get(url, headers=server.auth) as resp:
            events = (await resp.json())["events"]
        assert [(e["eventType"], e["acked"]) for e in events] == [
            ("EVENT_TYPE_START", True),
            ("EVENT_TYPE_PAUSE", True),
        ]
        assert all(e["ackTime"] for e in events)


async def test_an_event_racing_its_sessions_start_reaches_the_app_after_start(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """START publishes its session and then pushes "start" to the waiting app: a PAUSE of it
    in between (the client chose the id) waits for START to finish, so the app hears "start"
    then "pause", never a session paused behind its back."""
    meta = server.app[META]  # type: ignore[index]
    add_event = meta.add_event
    entered, go_on = asyncio.Event(), asyncio.Event()

    async def held(session_id: str, event_type: str, at: Any) -> Any:
        if event_type == "EVENT_TYPE_START":
            entered.set()
            await go_on.wait()
        return await add_event(session_id, event_type, at)

    monkeypatch.setattr(meta, "add_event", held)
    async with aiohttp.ClientSession() as http:
        app = await connect(http, server)
        await app.hello(server.api_key, platform_call_id="call-race")
        sid = "race-1"
        start = asyncio.create_task(
            event(http, server, "EVENT_TYPE_START", sid, platformCallId="call-race")
        )
        await entered.wait()
        pause = asyncio.create_task(event(http, server, "EVENT_TYPE_PAUSE", sid))
        done, _ = await asyncio.wait({pause}, timeout=RACE_WAIT_S)
        assert not done  # (it waits for START; an absence: nothing to await but a bound)
        go_on.set()
        await asyncio.gather(start, pause)
        assert (await app.wait_control("start"))["session_id"] == sid
        assert (await asyncio.wait_for(app.wait_control("pause"), RECEIVE_TIMEOUT_S))["id"]


async def test_events_not_acked_are_pushed_again_when_the_app_connects(server: Server) -> None:
    """Events the app never heard (it was not connected) come, in order, once it connects,
    each with the session's id and the platform ids it started with."""
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server, platformCallId="call-9", agentPlatformId="pc-3")
        await event(http, server, "EVENT_TYPE_PAUSE", sid)
        app = await connect(http, server)
        await app.hello(server.api_key, session_id=sid)
        ids = {"sessionId": sid, "platformCallId": "call-9", "agentPlatformId": "pc-3"}
        start = await app.wait_control("start")
        assert start["event"] == {"eventType": "EVENT_TYPE_START", **ids}
        pause = await app.wait_control("pause")
        assert pause["event"] == {"eventType": "EVENT_TYPE_PAUSE", **ids}
        assert pause["id"] > start["id"]


async def test_newer_connection_replaces_older(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        first = await connect(http, server)
        await first.hello(server.api_key, session_id=sid)
        second = await connect(http, server)
        await second.hello(server.api_key, session_id=sid)
        code, reason = await first.closed()
        assert code == 4009 and "replaced" in reason


async def test_a_frame_sent_before_the_upgrade_is_answered_closes_with_1002(
    server: Server,
) -> None:
    """A client that sends its first frame in the same write as the upgrade request (without
    waiting for the answer) gets the upgrade, then a close frame with 1002."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    hello = msgpack.packb({"t": "hello", "v": 1, "token": server.api_key}, use_bin_type=True)
    writer.write(
        b"GET /v1/ingest HTTP/1.1\r\n"
        + f"Host: {host}:{port}\r\n".encode()
        + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: reelhouse.v1\r\n\r\n" + _masked(0x2, hello)
    )
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECEIVE_TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 101")
        first, size = await asyncio.wait_for(reader.readexactly(2), RECEIVE_TIMEOUT_S)
        body = await asyncio.wait_for(reader.readexactly(size), RECEIVE_TIMEOUT_S)
        writer.write(_masked(0x8, body[:2]))  # the close handshake's answer
        assert await asyncio.wait_for(reader.read(), RECEIVE_TIMEOUT_S) == b""  # then the end
    finally:
        writer.close()
    assert first == 0x88  # a close frame, whole
    code = int.from_bytes(body[:2], "big")
    assert (code, b"before the upgrade" in body) == (1002, True), body


async def test_a_server_bug_closes_with_1011_not_1000(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception the handler did not expect (a bug of ours, made here by breaking the
    control-ack path) closes with 1011, which tells the client to reconnect and resend;
    not 1000, which would tell it the session is over."""

    async def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.app[INGEST]._manager, "control_acked", broken)
    async with aiohttp.ClientSession() as http:
        _, client = await recording_client(http, server)
        await client.send({"t": "ack", "id": 1})
        assert await client.closed() == (1011, "server error")


async def test_a_plain_get_of_the_ingest_path_leaves_its_connection_usable(
    server: Server,
) -> None:
    """A GET of /v1/ingest without the upgrade (a health check, a proxy's probe) is a 400, and
    the next request on that kept-alive connection is answered: the socket's reading was
    paused for the take-over and never resumed, so it hung until the keep-alive timeout."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /v1/ingest HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECEIVE_TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 400")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )  # fmt: skip
        await reader.readexactly(length)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        again = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECEIVE_TIMEOUT_S)
        assert again.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_connections_past_the_cap_wait_but_a_live_session_goes_on(
    server_factory: Any,
) -> None:
    """``[ingest] max_connections`` (2 here): past it a new recording app hears its hello
    answered 1013; a live session's reconnect is let in (its stale connection replaced: a
    recording must not wait for the keepalive to notice the dead one); and past the cap plus
    as many again still in their hello, an upgrade is answered 503 UNAVAILABLE in the
    rpcStatus shape, with Retry-After, before the upgrade. All counted; a place frees when a
    connection closes."""
    server = await server_factory(ingest={"max_connections": 2})
    handler = server.app[INGEST]
    async with aiohttp.ClientSession() as http:
        waiting = await connect(http, server)
        await waiting.hello(server.api_key, platform_call_id="held")
        sid, stale = await recording_client(http, server)  # the cap is reached

        newcomer = await connect(http, server)
        await newcomer.send({"t": "hello", "v": 1, "token": server.api_key, "user_id": "new"})
        assert await newcomer.closed() == (
            1013, "this server holds 2 ingest connections: try again later"
        )  # fmt: skip

        back = await connect(http, server)  # the live session's reconnect
        assert (await back.hello(server.api_key, session_id=sid))["session_id"] == sid
        assert (await stale.closed())[0] == 4009
        await back.send({"t": "ping", "ts": 7})
        while (answer := await back.recv())["t"] == "control":
            pass  # (the start, again, when its ack had not been recorded yet)
        assert answer == {"t": "pong", "ts": 7}

        silent = [await connect(http, server) for _ in range(2)]  # (no hello yet)
        head, body = await raw_upgrade(server)
        assert head.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 5\r\n" in head
        assert json.loads(body) == {
            "code": 14,
            "message": "this server holds 2 ingest connections: try again later",
            "details": [],
        }
        async with http.get(f"{server.url}/metrics") as resp:
            assert "\nreelhouse_ws_refused_total 2\n" in await resp.text()

        serving = set(handler._serving)
        assert silent[0].ws is not None
        await silent[0].ws.close()
        done, _ = await asyncio.wait(
            serving, timeout=RECEIVE_TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        assert done
        await connect(http, server)  # upgraded again


async def raw_upgrade(server: Server) -> tuple[bytes, bytes]:
    """An upgrade request on a plain socket: the answer's head and body, as sent."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET /v1/ingest HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECEIVE_TIMEOUT_S)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )  # fmt: skip
        return head, await reader.readexactly(length)
    finally:
        writer.close()
