"""The channel registry: membership, replacement, lifecycle, and the drop policy of each
subscriber's bounded queues."""

from __future__ import annotations

import asyncio

import pytest

from ingest.channels import (
    DEFAULT_MEDIA_BYTES,
    ChannelRegistry,
    MediaFrame,
    TrackInfo,
    TrackState,
    Transport,
)


def video(uid: str, i: int, key: bool = False) -> MediaFrame:
    return MediaFrame(uid, "v", "video", b"v%d" % i, i * 66_666, keyframe=key)


def audio(uid: str, i: int) -> MediaFrame:
    return MediaFrame(uid, "a", "audio", b"a%d" % i, i * 20_000)


async def test_join_track_leave_and_the_channel_lifecycle() -> None:
    reg = ChannelRegistry()
    alice = await reg.join("app", "room", "alice", Transport.WHIP)
    sub = reg.subscribe("app", "room")
    first = await sub.next_event()
    assert first is not None and first.kind == "snapshot"
    assert [m["uid"] for m in first.members] == ["alice"]

    bob = await reg.join("app", "room", "bob", Transport.WS)
    track = TrackInfo("v", "video", "vp8", 640, 360)
    reg.set_track("app", "room", bob, track)
    reg.set_track("app", "room", bob, track)  # the same again: no event
    reg.end_track("app", "room", bob, "v")
    reg.leave("app", "room", alice)
    kinds = [(e.kind, e.uid) for e in [await sub.next_event() for _ in range(4)] if e]
    assert kinds == [("join", "bob"), ("track", "bob"), ("track", "bob"), ("leave", "alice")]
    assert bob.tracks["v"].state is TrackState.ENDED
    assert list(reg.get("app", "room").members) == ["bob"]  # type: ignore[union-attr]

    reg.leave("app", "room", bob)
    assert reg.get("app", "room") is not None  # the subscriber keeps it
    sub.close()
    assert reg.get("app", "room") is None and await sub.next_event() is not None  # the leave
    assert await sub.next_event() is None


async def test_same_uid_replaces_the_old_connection() -> None:
    reg = ChannelRegistry()
    closed: list[str] = []

    async def close_old(reason: str) -> None:
        closed.append(reason)

    old = await reg.join("app", "room", "u1", Transport.WS, close_old)
    sub = reg.subscribe("app", "room")
    await sub.next_event()
    new = await reg.join("app", "room", "u1", Transport.WHIP)
    assert closed == ["replaced by a newer connection of the same uid"]
    events = [await sub.next_event() for _ in range(2)]
    assert [(e.kind, e.reason) for e in events if e] == [("leave", "replaced"), ("join", "")]

    reg.channels[("app", "room")].publish(old, video("u1", 0, key=True))  # ignored
    reg.leave("app", "room", old)  # a stale leave: ignored
    assert reg.get("app", "room").members["u1"] is new  # type: ignore[union-attr]
    reg.channels[("app", "room")].publish(new, video("u1", 1, key=True))
    got = await sub.next_media()
    assert got is not None and got.data == b"v1"


async def test_a_rejoin_lands_in_the_channel_served_after_it() -> None:
    """While a rejoin closes the uid's old connection, the last other member leaves: the
    channel must not end under the join (it did, and the new member, added to the dropped
    channel, had every frame discarded while it was connected)."""
    reg = ChannelRegistry()
    closing, go_on = asyncio.Event(), asyncio.Event()

    async def slow_close(reason: str) -> None:  # (a WHIP peer's close takes a few loop turns)
        closing.set()
        await go_on.wait()

    await reg.join("app", "room", "x", Transport.WHIP, slow_close)
    y = await reg.join("app", "room", "y", Transport.WHIP)
    rejoin = asyncio.create_task(reg.join("app", "room", "x", Transport.WHIP))
    await closing.wait()
    reg.leave("app", "room", y)
    go_on.set()
    x = await rejoin
    channel = reg.get("app", "room")
    assert channel is not None and list(channel.members) == ["x"]
    sub = reg.subscribe("app", "room")
    snapshot = await sub.next_event()
    assert snapshot is not None and [m["uid"] for m in snapshot.members] == ["x"]
    channel.publish(x, video("x", 0, key=True))
    got = await sub.next_media()
    assert got is not None and got.uid == "x"
    reg.leave("app", "room", x)
    sub.close()
    assert reg.get("app", "room") is None  # and it ends once it is empty


async def test_slow_subscriber_resyncs_with_a_snapshot() -> None:
    reg = ChannelRegistry()
    sub = reg.subscribe("app", "room", max_events=3)
    fast = reg.subscribe("app", "room")
    for i in range(5):
        await reg.join("app", "room", f"u{i}", Transport.WS)
    events = []
    while sub._events:
        events.append(await sub.next_event())
    assert [e.kind for e in events if e] == ["snapshot", "join", "join"]
    assert [m["uid"] for m in events[0].members] == ["u0", "u1", "u2"]  # type: ignore[union-attr]
    assert sub.resyncs == 1
    joins = [await fast.next_event() for _ in range(6)]
    assert [e.kind for e in joins if e].count("join") == 5  # the other is not affected


async def test_video_waits_for_a_keyframe_after_a_drop() -> None:
    reg = ChannelRegistry()
    pub = await reg.join("app", "room", "p", Transport.WHIP)
    ch = reg.channels[("app", "room")]
    sub = reg.subscribe("app", "room", max_media=3)
    for i, key in enumerate([True, False, False, False, False, True, False]):
        ch.publish(pub, video("p", i, key))
        if i == 4:  # the reader catches up after the queue overflowed at frame 3
            got = [await sub.next_media() for _ in range(3)]
            assert [g.data for g in got if g] == [b"v0", b"v1", b"v2"]
    rest = [await sub.next_media() for _ in range(2)]
    assert [r.data for r in rest if r] == [b"v5", b"v6"]  # 3 dropped, then 4 for want of a key
    assert sub.video_dropped == 2


async def test_queued_video_is_bounded_in_bytes_too() -> None:
    """512 WebSocket frames of 4 MiB would be 2 GiB for one subscriber: video past the byte
    bound drops as past the frame count (its track waits for a keyframe), audio never."""
    reg = ChannelRegistry()
    pub = await reg.join("app", "room", "p", Transport.WS)
    ch = reg.channels[("app", "room")]
    sub = reg.subscribe("app", "room")
    frame_bytes = 8 * 1024 * 1024
    per_bound = DEFAULT_MEDIA_BYTES // frame_bytes

    def big(i: int, key: bool = False) -> MediaFrame:
        return MediaFrame("p", "v", "video", bytes(frame_bytes), i * 66_666, keyframe=key)

    for i in range(per_bound + 2):
        ch.publish(pub, big(i, key=i == 0))
    ch.publish(pub, audio("p", 0))
    assert sub.video_dropped == 2 and len(sub._media) == per_bound + 1
    got = sub.take_media(per_bound + 1)  # the reader catches up: room again, from a keyframe
    assert got[-1].kind == "audio"
    ch.publish(pub, big(per_bound + 2))
    ch.publish(pub, big(per_bound + 3, key=True))
    assert [m.pts_us for m in sub._media] == [(per_bound + 3) * 66_666]
    assert sub.video_dropped == 3


async def test_audio_evicts_video_first_and_its_own_drops_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = ChannelRegistry()
    pub = await reg.join("app", "room", "p", Transport.WHIP)
    ch = reg.channels[("app", "room")]
    sub = reg.subscribe("app", "room", max_media=3)
    ch.publish(pub, video("p", 0, key=True))
    ch.publish(pub, audio("p", 0))
    ch.publish(pub, audio("p", 1))
    ch.publish(pub, audio("p", 2))  # full: the video frame makes room
    assert [m.kind for m in sub._media] == ["audio"] * 3 and sub.audio_dropped == 0
    ch.publish(pub, video("p", 1))  # its track waits for a keyframe now: dropped
    ch.publish(pub, audio("p", 3))  # full of audio: the oldest audio goes, loudly
    assert [m.data for m in sub._media] == [b"a1", b"a2", b"a3"]
    assert sub.audio_dropped == 1 and sub.video_dropped == 2
    assert "dropped p's frame at 0 us" in caplog.text
