"""The channel registry: who is in each channel of each app, their tracks, and fan-out.

A channel (``appid``, ``cname``) comes into being with its first member or subscriber and ends
when the last of both is gone. Members are publishers, whatever their transport (WHIP or the
WebSocket protocol); each holds its tracks (id → kind, codec, size, state). Recorders and other
consumers *subscribe*: they are told of joins, leaves and track changes, and receive media.

Every subscriber has its own bounded queues, so a slow one never slows the publishers or the
other subscribers. The drop policy, when a subscriber's queue is full:

* **events** (join, leave, track): the queue is emptied and replaced by one ``snapshot`` event
  holding the whole membership: the subscriber resynchronises instead of growing memory;
* **video**: the new frame is dropped and so is that track's video until its next keyframe
  (a frame without its references cannot be decoded);
* **audio** is never dropped silently: it first evicts the oldest queued video frame (whose
  track then also waits for a keyframe); only a queue full of audio drops its oldest audio
  frame, counted in ``audio_dropped`` and logged.

A uid joining twice replaces its old connection: the old one is told to close, its leave is
announced, then the new join. A leave from a replaced connection is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_EVENT_QUEUE = 256
SHARED_CLOCK = "shared"  # MediaFrame.clock of the tracks that share their member's clock
DEFAULT_MEDIA_QUEUE = 512  # frames: ~8 s of 15 fps video and 50 fps audio for one publisher
# video bytes queued for one subscriber (encoded, or decoded pictures at 1.5 bytes a pixel):
# past them video is dropped as past the frame count (512 WebSocket frames of 4 MiB would be
# 2 GiB; 512 decoded 4K pictures 6 GiB)
DEFAULT_MEDIA_BYTES = 64 * 1024 * 1024


def _video_bytes(frame: MediaFrame) -> int:
    """What a queued video frame holds: its encoded bytes, or a decoded 4:2:0 picture's."""
    if frame.kind != "video":
        return 0
    data = frame.data
    if isinstance(data, bytes | bytearray | memoryview):
        return len(data)
    return getattr(data, "width", 0) * getattr(data, "height", 0) * 3 // 2


class Transport(StrEnum):
    """How a member publishes."""

    WHIP = "whip"
    WS = "ws"


class TrackState(StrEnum):
    """A track's state as the channel sees it."""

    LIVE = "live"
    MUTED = "muted"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """One published track."""

    track_id: str
    kind: str  # "audio" | "video"
    codec: str
    width: int = 0
    height: int = 0
    state: TrackState = TrackState.LIVE


@dataclass(slots=True)
class Member:
    """A publisher in a channel; ``close`` ends its connection (when a newer one replaces it)."""

    uid: str
    transport: Transport
    joined_at: float
    close: Callable[[str], Awaitable[None]] | None = None
    tracks: dict[str, TrackInfo] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """The member as a plain dict, safe to hand to a subscriber."""
        return {
            "uid": self.uid,
            "transport": self.transport.value,
            "tracks": [vars_of(t) for t in self.tracks.values()],
        }


def vars_of(track: TrackInfo) -> dict[str, Any]:
    """A track as a plain dict."""
    return {
        "track_id": track.track_id,
        "kind": track.kind,
        "codec": track.codec,
        "width": track.width,
        "height": track.height,
        "state": track.state.value,
    }


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """What a subscriber is told: ``join``, ``leave``, ``track`` or ``snapshot``."""

    kind: str
    uid: str = ""
    track: TrackInfo | None = None
    reason: str = ""
    members: tuple[dict[str, Any], ...] = ()  # for ``snapshot``: every member, join order


@dataclass(frozen=True, slots=True)
class MediaFrame:
    """One encoded frame of a member's track, as a subscriber receives it."""

    uid: str
    track_id: str
    kind: str  # "audio" | "video"
    data: Any  # bytes or an av.Packet / av.Frame: the registry does not look inside
    pts_us: int
    keyframe: bool = True  # audio frames are all "key"
    codec: str = ""  # of encoded data (WebSocket publishers); "" for decoded frames
    dts_us: int | None = None  # decode time of encoded data, when it differs from pts_us
    # pts_us is on a clock all of this member's tracks share (a WebRTC member's packet
    # arrivals: ingest.arrival), so recorders place the tracks together, keeping lip sync
    shared_clock: bool = False
    # when the server had it (``time.monotonic``): a recorder that took it from its queue
    # later (busy) still knows when it came
    received: float = field(default_factory=time.monotonic)

    @property
    def clock(self) -> str:
        """The clock its pts_us is on, of the member's clocks: a WebSocket publisher's tracks
        (encoded data) share one, as do a WebRTC member's placed by packet arrival; other
        tracks have one each (recorders place each clock by its first arrival)."""
        if self.shared_clock or isinstance(self.data, bytes | bytearray | memoryview):
            return SHARED_CLOCK
        return self.track_id


class Subscription:
    """One consumer's view of a channel: events and media, each in a bounded queue."""

    def __init__(
        self,
        channel: Channel,
        max_events: int,
        max_media: int,
        media: bool = True,
        uid: str | None = None,
        max_media_bytes: int = DEFAULT_MEDIA_BYTES,
    ) -> None:
        self.channel = channel
        self.wants_media = media  # False: events only (who is there), no frames held
        self.uid = uid  # media of this member only (None: everyone's)
        self._events: deque[ChannelEvent] = deque()
        self._media: deque[MediaFrame] = deque()
        self._max_events, self._max_media = max_events, max_media
        self._max_bytes = max_media_bytes
        self._video_bytes = 0  # of the queued video frames (``_video_bytes``)
        self._event_ready = asyncio.Event()
        self._media_ready = asyncio.Event()
        self._wait_key: set[tuple[str, str]] = set()  # (uid, track) dropping until a keyframe
        self.closed = False
        self.resyncs = 0
        self.video_dropped = 0
        self.audio_dropped = 0

    # producer side (the registry) ------------------------------------------------------

    def _event(self, event: ChannelEvent) -> None:
        if len(self._events) >= self._max_events:
            self._events.clear()  # resynchronise: one snapshot says it all
            self.resyncs += 1
            event = ChannelEvent("snapshot", members=self.channel.snapshot())
        self._events.append(event)
        self._event_ready.set()

    def _offer(self, frame: MediaFrame) -> None:
        if not self.wants_media or (self.uid is not None and frame.uid != self.uid):
            return
        stream = (frame.uid, frame.track_id)
        if frame.kind == "video":
            if stream in self._wait_key:
                if not frame.keyframe:
                    self.video_dropped += 1
                    return
                self._wait_key.discard(stream)
            size = _video_bytes(frame)
            if len(self._media) >= self._max_media or self._video_bytes + size > self._max_bytes:
                self.video_dropped += 1
                self._wait_key.add(stream)
                return
            self._video_bytes += size
        elif len(self._media) >= self._max_media and not self._evict_video():
            dropped = self._pop()
            self.audio_dropped += 1
            log.warning(
                "subscriber of %s/%s full of audio: dropped %s's frame at %d us",
                self.channel.appid,
                self.channel.cname,
                dropped.uid,
                dropped.pts_us,
            )
        self._media.append(frame)
        self._media_ready.set()

    def _evict_video(self) -> bool:
        for i, queued in enumerate(self._media):
            if queued.kind == "video":
                del self._media[i]
                self._video_bytes -= _video_bytes(queued)
                self.video_dropped += 1
                self._wait_key.add((queued.uid, queued.track_id))
                return True
        return False

    # consumer side ---------------------------------------------------------------------

    async def next_event(self) -> ChannelEvent | None:
        """The next event, waiting for one; ``None`` once the subscription is closed."""
        while not self._events:
            if self.closed:
                return None
            self._event_ready.clear()
            await self._event_ready.wait()
        return self._events.popleft()

    async def next_media(self) -> MediaFrame | None:
        """The next media frame, waiting for one; ``None`` once the subscription is closed."""
        while not self._media:
            if self.closed:
                return None
            self._media_ready.clear()
            await self._media_ready.wait()
        return self._pop()

    def take_media(self, limit: int) -> list[MediaFrame]:
        """Up to ``limit`` frames that are queued already, without waiting (a batch)."""
        return [self._pop() for _ in range(min(limit, len(self._media)))]

    def _pop(self) -> MediaFrame:
        frame = self._media.popleft()
        self._video_bytes -= _video_bytes(frame)
        return frame

    def close(self) -> None:
        """Stop receiving; what is queued can still be read, then the readers get ``None``."""
        if not self.closed:
            self.closed = True
            self._event_ready.set()
            self._media_ready.set()
            self.channel._unsubscribe(self)


class Channel:
    """Members (join order kept) and subscribers of one channel."""

    def __init__(self, registry: ChannelRegistry, appid: str, cname: str) -> None:
        self.registry, self.appid, self.cname = registry, appid, cname
        self.members: dict[str, Member] = {}
        self.subscribers: list[Subscription] = []
        self.created_at = time.time()

    def snapshot(self) -> tuple[dict[str, Any], ...]:
        """Every member as plain dicts, in join order."""
        return tuple(m.snapshot() for m in self.members.values())

    def _broadcast(self, event: ChannelEvent) -> None:
        for sub in self.subscribers:
            sub._event(event)

    def publish(self, member: Member, frame: MediaFrame) -> None:
        """Fan one frame out to every subscriber; frames of a replaced member are ignored."""
        if self.members.get(member.uid) is not member:
            return
        for sub in self.subscribers:
            sub._offer(frame)

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        self.registry._maybe_end(self)


class ChannelRegistry:
    """Every live channel of every app."""

    def __init__(
        self, max_events: int = DEFAULT_EVENT_QUEUE, max_media: int = DEFAULT_MEDIA_QUEUE
    ) -> None:
        self.channels: dict[tuple[str, str], Channel] = {}
        self._max_events, self._max_media = max_events, max_media
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def get(self, appid: str, cname: str) -> Channel | None:
        """The channel, or ``None`` when nobody is in it."""
        return self.channels.get((appid, cname))

    def _channel(self, appid: str, cname: str) -> Channel:
        key = (appid, cname)
        channel = self.channels.get(key)
        if channel is None:
            channel = self.channels[key] = Channel(self, appid, cname)
            log.info("channel %s/%s begins", appid, cname)
        return channel

    def _maybe_end(self, channel: Channel) -> None:
        key = (channel.appid, channel.cname)
        if channel.members or channel.subscribers or self.channels.get(key) is not channel:
            return
        lock = self._locks.get(key)
        if lock is not None and lock.locked():
            return  # a join is closing a replaced connection: its member comes in a moment
        del self.channels[key]
        self._locks.pop(key, None)
        log.info("channel %s/%s ends", channel.appid, channel.cname)

    async def join(
        self,
        appid: str,
        cname: str,
        uid: str,
        transport: Transport,
        close: Callable[[str], Awaitable[None]] | None = None,
    ) -> Member:
        """Add ``uid``; an earlier connection of the same uid is closed and announced as left."""
        lock = self._locks.setdefault((appid, cname), asyncio.Lock())
        async with lock:  # two joins of one uid: the later one wins, cleanly
            channel = self._channel(appid, cname)
            old = channel.members.pop(uid, None)
            if old is not None:
                channel._broadcast(ChannelEvent("leave", uid, reason="replaced"))
                if old.close is not None:
                    try:
                        await old.close("replaced by a newer connection of the same uid")
                    except Exception:
                        log.exception("closing the replaced connection of %s failed", uid)
                channel = self._channel(appid, cname)  # (the one served now, after the wait)
            member = Member(uid, transport, time.time(), close)
            channel.members[uid] = member
            channel._broadcast(ChannelEvent("join", uid))
        return member

    def leave(self, appid: str, cname: str, member: Member, reason: str = "left") -> None:
        """Remove ``member``; nothing happens when a newer connection has replaced it."""
        channel = self.channels.get((appid, cname))
        if channel is None or channel.members.get(member.uid) is not member:
            return
        del channel.members[member.uid]
        channel._broadcast(ChannelEvent("leave", member.uid, reason=reason))
        self._maybe_end(channel)

    def set_track(self, appid: str, cname: str, member: Member, track: TrackInfo) -> None:
        """Add or change one of ``member``'s tracks and tell the subscribers."""
        channel = self.channels.get((appid, cname))
        if channel is None or channel.members.get(member.uid) is not member:
            return
        if member.tracks.get(track.track_id) == track:
            return
        member.tracks[track.track_id] = track
        channel._broadcast(ChannelEvent("track", member.uid, track=track))

    def end_track(self, appid: str, cname: str, member: Member, track_id: str) -> None:
        """Mark a track ended (it stays listed until its member leaves)."""
        track = member.tracks.get(track_id)
        if track is not None:
            self.set_track(appid, cname, member, replace(track, state=TrackState.ENDED))

    def subscribe(
        self,
        appid: str,
        cname: str,
        max_events: int | None = None,
        max_media: int | None = None,
        *,
        media: bool = True,
        uid: str | None = None,
    ) -> Subscription:
        """A new subscription; its first event is a snapshot of who is already there.

        ``media=False`` for a watcher that only needs joins and leaves: no frames are queued.
        ``uid``: only that member's media is queued (a recorder of one member).
        """
        channel = self._channel(appid, cname)
        sub = Subscription(
            channel,
            max_events or self._max_events,
            max_media or self._max_media,
            media,
            uid,
        )
        channel.subscribers.append(sub)
        sub._event(ChannelEvent("snapshot", members=channel.snapshot()))
        return sub
