"""Recording a whole channel in one layout (the cloud recording API's mix mode).

Subscribes to the channel: members joining and leaving re-lay the canvas (the mixer places
users in join order); every subscribed member's frames, decoded by aiortc (WebRTC) or here
(WebSocket publishers' encoded frames, off the loop), are pushed into one
:class:`mixer.mix.MixRecorder`. A timer keeps output frames coming while nobody sends.

A failure of the mix (an encoder, the disk) ends the task it happened in; ``on_error`` is told
once, and what the mix wrote until then stays (the caller decides what to do: the cloud
recording service ends the session abnormally).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import av

from mixer.errors import InvalidMedia
from mixer.layout import LayoutSpec
from mixer.mix import MixOutput, MixRecorder
from mixer.mix_config import MixConfig, MixStyle
from mixer.segmenter import SegmentInfo
from mixer.throttle import LogThrottle
from mixer.tracks import Codec

from .channels import ChannelEvent, ChannelRegistry, MediaFrame, Subscription
from .member_frames import FrameDecoders, TrackClock

log = logging.getLogger(__name__)

US = 1_000_000
TICK_S = 0.5
VIDEO_TAKEOVER_US = 2_000_000  # a member's other video track is shown once the first stops
TICK_LAG_US = 500_000  # advance only past what late frames can no longer change


@dataclass(frozen=True, slots=True)
class UidSelector:
    """Whose audio (or video) is recorded: everyone but ``exclude``, or only ``only``."""

    only: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()

    def allows(self, uid: str) -> bool:
        """Whether ``uid`` is recorded."""
        return uid not in self.exclude and (self.only is None or uid in self.only)


EVERYONE = UidSelector()


@dataclass(slots=True)
class MixStats:
    """What the mix saw."""

    video_in: int = 0
    audio_in: int = 0
    undecodable: int = 0
    video_ignored: int = 0  # frames of a member's second video track (one is shown)
    joins: int = 0
    leaves: int = 0


class ChannelMixRecorder:
    """All (or the subscribed) members of a channel, mixed, until :meth:`stop`."""

    def __init__(
        self,
        registry: ChannelRegistry,
        appid: str,
        cname: str,
        directory: Path,
        config: MixConfig,
        *,
        name: str = "index",
        audio_uids: UidSelector = EVERYONE,
        video_uids: UidSelector = EVERYONE,
        segment_target_s: float = 4.0,
        on_segment: Callable[[SegmentInfo], None] | None = None,
        clock: Callable[[], float] = time.time,
        utc_segment_names: bool = False,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        """``on_error``: told (once) when the mix fails; its tasks end then."""
        self._registry, self._appid, self._cname = registry, appid, cname
        self._on_error = on_error
        self.failed: Exception | None = None
        self._clock = clock
        self._wall0_us, self._mono0 = int(clock() * US), time.monotonic()
        self.audio_uids, self.video_uids = audio_uids, video_uids
        self._mix = MixRecorder(
            config,
            directory,
            name=name,
            segment_target_s=segment_target_s,
            on_segment=on_segment,
            utc_segment_names=utc_segment_names,
        )
        self._sub: Subscription | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._decoders = FrameDecoders()
        self._clocks: dict[tuple[str, str], TrackClock] = {}
        self._video_tracks: dict[str, tuple[str, int]] = {}  # uid: (track shown, its last)
        self._joined: set[str] = set()
        # joins and leaves (the events task) and update's changes, one at a time: each reads
        # who is in and acts on the mix thread in between
        self._membership = asyncio.Lock()
        self._seen: set[str] = set()  # members with a window (their video is recorded)
        # members that left: their decoders and clocks go before the next frame is decoded
        # (by the media task, which decodes one frame at a time: never under a decode)
        self._gone: set[str] = set()
        self.stats = MixStats()
        self._bad_log = LogThrottle()
        self.started_at_ms = 0

    def _now_us(self) -> int:
        # the wall clock at the start, moved on by the monotonic clock: a step of the wall
        # clock (NTP, a VM resumed) would otherwise carry the mix past every member's frames
        return self._wall0_us + int((time.monotonic() - self._mono0) * US)

    def _wanted(self, uid: str, kind: str) -> bool:
        return (self.video_uids if kind == "video" else self.audio_uids).allows(uid)

    async def start(self) -> None:
        """Open the mix and subscribe: who is already in the channel joins at once."""
        await self._mix.start()
        self.started_at_ms = int(self._clock() * 1000)
        self._sub = self._registry.subscribe(self._appid, self._cname)
        self._readers = [
            asyncio.create_task(
                self._guard(partial(self._events, self._sub)), name=f"mix-events-{self._cname}"
            ),
            asyncio.create_task(
                self._guard(partial(self._media, self._sub)), name=f"mix-media-{self._cname}"
            ),
        ]
        self._ticker = asyncio.create_task(self._guard(self._tick), name=f"mix-tick-{self._cname}")

    async def _guard(self, work: Callable[[], Coroutine[None, None, None]]) -> None:
        """Run one of the mix's tasks; a failure is logged and told, and ends that task.
        (Made here: a task cancelled before it ran leaves no coroutine never awaited.)"""
        try:
            await work()
        except Exception as exc:
            log.exception("mix %s/%s failed", self._appid, self._cname)
            if self.failed is None:
                self.failed = exc
                if self._on_error is not None:
                    self._on_error(exc)

    async def _join(self, uid: str) -> None:
        if uid not in self._joined and (self._wanted(uid, "video") or self._wanted(uid, "audio")):
            self._joined.add(uid)
            self._gone.discard(uid)
            self.stats.joins += 1
            if self._wanted(uid, "video"):  # (a member only heard takes no window)
                self._seen.add(uid)
                await self._mix.join(uid, self._now_us())
            else:
                await self._mix.hear(uid)

    async def _leave(self, uid: str) -> None:
        if uid in self._joined:
            self._joined.discard(uid)
            self._seen.discard(uid)
            self._video_tracks.pop(uid, None)  # (one that comes back shows its new track)
            self._gone.add(uid)
            self.stats.leaves += 1
            await self._mix.leave(uid, self._now_us())

    async def _events(self, sub: Subscription) -> None:
        while (event := await sub.next_event()) is not None:
            await self._on_event(event)

    async def _on_event(self, event: ChannelEvent) -> None:
        async with self._membership:
            if event.kind == "snapshot":  # first event, or a resync after falling behind
                present = [m["uid"] for m in event.members]
                for uid in sorted(self._joined - set(present)):
                    await self._leave(uid)
                for uid in present:
                    await self._join(uid)
            elif event.kind == "join":
                await self._join(event.uid)
            elif event.kind == "leave":
                await self._leave(event.uid)

    async def _decoded(self, media: MediaFrame) -> list[tuple[str, av.frame.Frame, int]]:
        wanted = [kind for kind in ("video", "audio") if self._wanted(media.uid, kind)]
        try:
            return await self._decoders.frames_of(media, wanted)
        except InvalidMedia as exc:
            self.stats.undecodable += 1
            if (held := self._bad_log.allow(media.uid)) is not None:
                log.warning(
                    "mix %s/%s: %s: %s (and %d more since the last such warning)",
                    self._appid, self._cname, media.uid, exc, held,
                )  # fmt: skip
            return []

    async def _media(self, sub: Subscription) -> None:
        while (media := await sub.next_media()) is not None:
            if self._gone:
                await self._forget_gone()
            uid = media.uid
            if uid not in self._joined:
                continue
            if media.codec == Codec.WEBM:  # both kinds in one track: each decoded frame is checked
                if not (self._wanted(uid, "video") or self._wanted(uid, "audio")):
                    continue
            elif not self._wanted(uid, media.kind):
                continue
            now_us = self._wall0_us + int((media.received - self._mono0) * US)  # (its arrival)
            # (a WebSocket member's tracks share one clock: placed apart, the video's later
            # arrival, its encoder's latency, was an A/V offset in the mix)
            clock = self._clocks.setdefault((uid, media.clock), TrackClock(follow_arrival=True))
            for _, data, pts_us in await self._decoded(media):
                t_us = clock.place(pts_us, now_us)
                if isinstance(data, av.VideoFrame):
                    if self._wanted(uid, "video") and self._shown(uid, media.track_id, now_us):
                        self.stats.video_in += 1
                        await self._mix.push_video(uid, data, t_us, now_us)
                elif isinstance(data, av.AudioFrame) and self._wanted(uid, "audio"):
                    self.stats.audio_in += 1  # (each track of a member mixed with the others)
                    window = self._wanted(uid, "video")
                    await self._mix.push_audio(uid, data, t_us, now_us, media.track_id, window)

    def _shown(self, uid: str, track_id: str, now_us: int) -> bool:
        """Whether this video track is the one shown of ``uid``'s window: the first that
        came, until it has been silent for ``VIDEO_TAKEOVER_US`` (two tracks shown in one
        window took turns, frame by frame). Its other frames are counted, not shown."""
        shown = self._video_tracks.get(uid)
        if shown is None or shown[0] == track_id or now_us - shown[1] > VIDEO_TAKEOVER_US:
            self._video_tracks[uid] = (track_id, now_us)
            return True
        self.stats.video_ignored += 1
        return False

    async def _forget_gone(self) -> None:
        gone, self._gone = self._gone, set()
        self._clocks = {key: c for key, c in self._clocks.items() if key[0] not in gone}
        for uid in gone:
            self._video_tracks.pop(uid, None)
        for uid in gone:
            await asyncio.to_thread(self._decoders.forget, uid)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await self._mix.advance(self._now_us() - TICK_LAG_US)

    async def update_layout(self, layout: LayoutSpec, style: MixStyle | None = None) -> None:
        """updateLayout: the new layout (and colour and images) from now on."""
        await self._mix.update_layout(layout, self._now_us(), style)

    async def update_subscriptions(self, audio: UidSelector, video: UidSelector) -> None:
        """update: who is heard and seen from now on (members not wanted at all leave).
        Under the membership lock: a leave handled while it waits on the mix thread gave the
        member its window back (a ghost for the rest of the recording)."""
        async with self._membership:
            self.audio_uids, self.video_uids = audio, video
            channel = self._registry.get(self._appid, self._cname)
            present = list(channel.members) if channel is not None else []
            for uid in list(self._joined):
                seen, wanted = uid in self._seen, self._wanted(uid, "video")
                if not (wanted or self._wanted(uid, "audio")):
                    await self._leave(uid)
                elif seen and not wanted:  # heard on, without its window (its decoders kept)
                    self._seen.discard(uid)
                    await self._mix.hide(uid, self._now_us())
                elif wanted and not seen:
                    self._seen.add(uid)
                    await self._mix.join(uid, self._now_us())
            for uid in present:  # (one that left since is told by its queued leave event)
                await self._join(uid)

    @property
    def members(self) -> set[str]:
        """Who is in the mix now."""
        return set(self._joined)

    async def stop(self) -> MixOutput | None:
        """End the recording: the playlist is ended and the MP4s built."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._sub is not None:
            self._sub.close()  # the readers drain what is queued, then end
        await asyncio.gather(*self._readers)
        await asyncio.to_thread(self._decoders.forget)
        return await self._mix.aclose()
