"""WHIP publishing on aiortc, without HTTP: an aiortc peer publishes a colour and a tone, a
channel subscriber receives the decoded frames; bad offers are refused with their reason."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest
from webrtc_peer import accept_answer, make_offer

from ingest.channels import ChannelRegistry, Transport
from ingest.webrtc import (
    AtCapacity,
    OfferError,
    TrickleError,
    WebRtcSettings,
    WhipServer,
    check_offer,
)

MDNS_PORT = 5353
WAIT_S = 20.0


@pytest.fixture
async def whip() -> AsyncIterator[WhipServer]:
    server = WhipServer(ChannelRegistry(), WebRtcSettings(host_addresses="127.0.0.1"))
    yield server
    await server.aclose()


async def frames_of(sub, kind: str, count: int) -> list[object]:  # type: ignore[no-untyped-def]
    got: list[object] = []
    async with asyncio.timeout(WAIT_S):
        while len(got) < count:
            frame = await sub.next_media()
            assert frame is not None
            if frame.kind == kind:
                got.append(frame.data)
    return got


@pytest.mark.parametrize(("bind_host", "loopback"), [("127.0.0.1", True), ("0.0.0.0", False)])
async def test_candidates_stay_on_loopback_when_the_server_does(
    bind_host: str, loopback: bool
) -> None:
    """With ``host_addresses`` empty, a server listening on loopback announces loopback host
    candidates only; one listening on every interface announces aioice's choice (never
    loopback)."""
    whip = WhipServer(ChannelRegistry(), WebRtcSettings(), bind_host)
    pc = await make_offer("vp8")
    try:
        _, answer = await whip.publish("app", "room", "alice", pc.localDescription.sdp)
    finally:
        await pc.close()
        await whip.aclose()
    addresses = {line.split()[4] for line in re.findall(r"^a=candidate:(.+)$", answer, re.M)}
    if loopback:
        assert addresses == {"127.0.0.1"}
    else:
        assert "127.0.0.1" not in addresses


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_published_frames_reach_a_subscriber(whip: WhipServer, codec: str) -> None:
    sub = whip.registry.subscribe("app", "room")
    pc = await make_offer(codec, rgb=(0, 0, 255))
    try:
        resource, answer = await whip.publish("app", "room", "alice", pc.localDescription.sdp)
        await accept_answer(pc, answer)
        video = await frames_of(sub, "video", 10)
        audio = await frames_of(sub, "audio", 10)
    finally:
        await pc.close()
    last = video[-1]
    assert isinstance(last, av.VideoFrame) and (last.width, last.height) == (320, 240)
    rgb = last.to_ndarray(format="rgb24")[120, 160]
    assert rgb[2] > 200 and rgb[0] < 60 and rgb[1] < 60  # blue, as sent
    assert isinstance(audio[-1], av.AudioFrame) and audio[-1].sample_rate == 48000
    tone = np.concatenate([f.to_ndarray().reshape(-1) for f in audio[-5:]])  # type: ignore[attr-defined]
    assert np.abs(tone).max() > 1000  # the tone, not silence
    channel = whip.registry.get("app", "room")
    assert channel is not None and list(channel.members) == ["alice"]
    kinds = {t.kind: t.codec for t in channel.members["alice"].tracks.values()}
    assert kinds == {"video": codec, "audio": "opus"}
    await whip.close(whip.sessions[resource])
    assert "alice" not in channel.members and not whip.sessions


async def test_same_uid_replaces_its_old_session(whip: WhipServer) -> None:
    first = await make_offer("vp8")
    second = await make_offer("vp8")
    try:
        old, answer = await whip.publish("app", "room", "bob", first.localDescription.sdp)
        await accept_answer(first, answer)
        new, answer = await whip.publish("app", "room", "bob", second.localDescription.sdp)
        await accept_answer(second, answer)
        assert old not in whip.sessions and new in whip.sessions
        channel = whip.registry.get("app", "room")
        assert channel is not None and list(channel.members) == ["bob"]
    finally:
        await first.close()
        await second.close()


async def test_a_session_deleted_while_it_joins_leaves_no_member(whip: WhipServer) -> None:
    """A DELETE that lands while the offer's join waits (the uid's older connection closing)
    ends the offer too: the member it was about to add left a dead peer in the channel."""
    closing, go_on = asyncio.Event(), asyncio.Event()

    async def slow_close(reason: str) -> None:
        closing.set()
        await go_on.wait()

    await whip.registry.join("app", "room", "bob", Transport.WS, slow_close)
    pc = await make_offer("vp8")
    try:
        answering = asyncio.create_task(whip.publish("app", "room", "bob", pc.localDescription.sdp))
        await closing.wait()
        (session,) = whip.sessions.values()
        await whip.close(session)  # (what DELETE does)
        go_on.set()
        with pytest.raises(OfferError, match="ended while"):
            await answering
        assert whip.registry.get("app", "room") is None and not whip.sessions
    finally:
        await pc.close()


async def test_offers_that_come_together_cannot_pass_the_session_cap_together() -> None:
    server = WhipServer(
        ChannelRegistry(), WebRtcSettings(host_addresses="127.0.0.1", max_sessions=2)
    )
    peers = [await make_offer("vp8") for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(
                server.publish("app", "room", f"u{i}", pc.localDescription.sdp)
                for i, pc in enumerate(peers)
            ),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, AtCapacity)]  # (no fault of the offer)
        assert len(refused) == 2 and "holds 2 WHIP sessions" in str(refused[0])
        assert len(server.sessions) == 2
    finally:
        for pc in peers:
            await pc.close()
        await server.aclose()


async def test_a_session_takes_a_bounded_number_of_trickled_candidates(whip: WhipServer) -> None:
    pc = await make_offer("vp8")
    try:
        # (a client that trickles sends no end-of-candidates in its offer: after one, later
        # candidates are dropped)
        offer = pc.localDescription.sdp.replace("a=end-of-candidates\r\n", "")
        rid, _ = await whip.publish("app", "room", "bob", offer)
        session = whip.sessions[rid]
        line = "a=candidate:1 1 udp 2130706431 127.0.0.1 {} typ host\r\n"
        await whip.patch(session, "".join(line.format(9000 + i) for i in range(60)))
        ice = session.pc.getTransceivers()[0].receiver.transport.transport
        ports = {c.port for c in ice.getRemoteCandidates()}
        assert set(range(9000, 9060)) <= ports  # (applied, not only counted)
        with pytest.raises(TrickleError, match="at most 64 candidates"):
            await whip.patch(session, "".join(line.format(9100 + i) for i in range(5)))
        with pytest.raises(TrickleError, match="not an ICE candidate"):  # (aiortc asserted: 500)
            await whip.patch(session, "a=candidate:1 1\r\n")
        whole, _ = await whip.publish("app", "room", "eve", pc.localDescription.sdp)
        with pytest.raises(TrickleError, match="ended its candidates"):  # (dropped unsaid)
            await whip.patch(whip.sessions[whole], line.format(9200))
    finally:
        await pc.close()


def udp_ports_on_every_interface() -> set[int]:
    """UDP ports this machine has bound to 0.0.0.0 (from /proc/net/udp)."""
    rows = Path("/proc/net/udp").read_text().splitlines()[1:]
    return {
        int(r.split()[1].split(":")[1], 16) for r in rows if r.split()[1].startswith("00000000:")
    }


async def test_mdns_candidates_are_left_out(whip: WhipServer) -> None:
    """A browser names its host candidates ``….local``: resolving one made aioice bind UDP
    5353 on every interface, on a server told to stay on loopback. Left out, in the offer and
    trickled; ICE connects through the candidates the server learns from the checks."""
    pc = await make_offer("vp8")
    offer = pc.localDescription.sdp.replace("a=end-of-candidates\r\n", "").replace(
        "a=sendonly",
        "a=candidate:9 1 udp 2113937151 4f0f7a1e-1b1e.local 50000 typ host\r\na=sendonly",
        1,
    )
    try:
        rid, answer = await whip.publish("app", "room", "mdns", offer)
        await whip.patch(
            whip.sessions[rid],
            "a=candidate:8 1 udp 2113937151 5a5a5a5a-0000.local 50001 typ host\r\n",
        )
        await accept_answer(pc, answer)
        sub = whip.registry.subscribe("app", "room")
        await frames_of(sub, "video", 1)  # connected all the same
        assert MDNS_PORT not in await asyncio.to_thread(udp_ports_on_every_interface)
    finally:
        await pc.close()


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        ("hello", "must start with v=0"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n", "no media section"),
        ("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n", "only audio and video"),
        ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\na=rtpmap:98 VP9/90000\r\n", "needs one of"),
        (
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\n",
            "offers pcmu; needs one of opus",
        ),
        (
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\n",
            "not sending",
        ),
    ],
)
def test_bad_offers_say_why(sdp: str, reason: str) -> None:
    with pytest.raises(OfferError, match=reason):
        check_offer(sdp)


async def test_offer_aiortc_cannot_parse_is_refused(whip: WhipServer) -> None:
    broken = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\na=sendonly\r\n"
    with pytest.raises(OfferError, match="could not be answered"):
        await whip.publish("app", "room", "carol", broken)
    assert not whip.sessions and whip.registry.get("app", "room") is None


@pytest.mark.parametrize(
    "fmtp", ["packetization-mode=1;profile-level-id=640028", "profile-level-id=42e01f"]
)
async def test_h264_parameters_aiortc_cannot_take_are_refused_saying_what_it_takes(
    whip: WhipServer, fmtp: str
) -> None:
    """x264's High profile, or no packetization-mode: aiortc's OperationError was a 500."""
    pc = await make_offer("h264", audio=False)
    try:
        offer = re.sub(r"a=fmtp:(\d+) [^\r\n]*", rf"a=fmtp:\1 {fmtp}", pc.localDescription.sdp)
        with pytest.raises(OfferError, match="constrained baseline"):
            await whip.publish("app", "room", "dave", offer)
    finally:
        await pc.close()
    assert not whip.sessions and whip.registry.get("app", "room") is None


async def test_a_peer_that_never_connects_is_dropped() -> None:
    server = WhipServer(
        ChannelRegistry(), WebRtcSettings(host_addresses="127.0.0.1", connect_timeout_s=0.5)
    )
    sub = server.registry.subscribe("app", "room")
    pc = await make_offer("vp8")
    try:
        await server.publish("app", "room", "ghost", pc.localDescription.sdp)  # answer unused
        kinds = []
        async with asyncio.timeout(WAIT_S):
            while "leave" not in kinds:
                event = await sub.next_event()
                assert event is not None
                kinds.append(event.kind)
                reason = event.reason
        assert kinds[:2] == ["snapshot", "join"] and kinds[-1] == "leave"
        assert reason == "no connection within the connect timeout" and not server.sessions
    finally:
        await pc.close()
        await server.aclose()


async def test_two_publishers_share_a_channel_and_one_rejoins(whip: WhipServer) -> None:
    sub = whip.registry.subscribe("app", "room")
    peers = [await make_offer("vp8", rgb=(255, 0, 0)), await make_offer("vp8", rgb=(0, 255, 0))]
    try:
        resources = {}
        for uid, pc in zip(("red", "green"), peers, strict=True):
            resources[uid], answer = await whip.publish("app", "room", uid, pc.localDescription.sdp)
            await accept_answer(pc, answer)
        seen: set[str] = set()
        async with asyncio.timeout(WAIT_S):
            while seen != {"red", "green"}:
                frame = await sub.next_media()
                assert frame is not None
                if frame.kind == "video":
                    seen.add(frame.uid)
        await whip.close(whip.sessions[resources["red"]])  # red leaves ...
        channel = whip.registry.get("app", "room")
        assert channel is not None and list(channel.members) == ["green"]
        await peers[0].close()
        peers[0] = await make_offer("vp8", rgb=(255, 0, 0))  # ... and comes back
        _, answer = await whip.publish("app", "room", "red", peers[0].localDescription.sdp)
        await accept_answer(peers[0], answer)
        assert list(channel.members) == ["green", "red"]  # join order: green first now
        async with asyncio.timeout(WAIT_S):
            while True:
                frame = await sub.next_media()
                assert frame is not None
                if frame.uid == "red" and frame.kind == "video":
                    break
        pixel = frame.data.to_ndarray(format="rgb24")[120, 160]
        assert pixel[0] > 200 and pixel[1] < 60  # red again, from the new connection
    finally:
        for pc in peers:
            await pc.close()


async def test_two_tracks_under_one_msid_stay_two(whip: WhipServer) -> None:
    """An offer whose audio and video name the same msid track: aiortc names both tracks
    so, and the channel took them for one (the video's announcement replaced by the audio's,
    one clock for both). Tracks are named by kind and m-line now."""
    pc = await make_offer("vp8")
    try:
        offer = re.sub(r"^a=msid:(\S+) \S+", r"a=msid:\1 same", pc.localDescription.sdp, flags=re.M)
        assert offer.count(" same") == 2
        sub = whip.registry.subscribe("app", "room")
        _, answer = await whip.publish("app", "room", "carol", offer)
        member = whip.registry.get("app", "room").members["carol"]  # type: ignore[union-attr]
        assert sorted(t.kind for t in member.tracks.values()) == ["audio", "video"]
        await accept_answer(pc, answer)
        kinds: set[str] = set()
        async with asyncio.timeout(WAIT_S):
            while kinds != {"audio", "video"}:
                frame = await sub.next_media()
                assert frame is not None and frame.track_id in member.tracks
                kinds.add(frame.kind)
    finally:
        await pc.close()
