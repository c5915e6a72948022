"""Recording one channel member (the cloud recording API's individual mode).

A :class:`UidRecorder` subscribes to one uid's media in a channel and hands it, in batches, to
a :class:`mixer.member_writer.MemberWriter` on a worker thread of its own: encoded frames
(WebSocket publishers) as they came, so H.264 and AAC are copied without a decoder, and
decoded ones (WebRTC: aiortc decodes before anyone sees the media) to be encoded once. What the
writer finishes (segments per playlist, JPGs) is handed to the caller's callbacks in order.
A batch that fails is logged and left out, and the recording goes on with the next one; the
first failure is told to ``on_error``, so the caller can report it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from mixer.member_writer import (
    DEFAULT_OUTPUTS,
    MemberFrame,
    MemberOutput,
    MemberOutputs,
    MemberWriter,
    MemberWriterStats,
    OutputKind,
    Produced,
)
from mixer.segmenter import DEFAULT_SEGMENT_TARGET_S, SegmentInfo
from mixer.tracks import Kind

from .channels import ChannelRegistry, MediaFrame, Subscription, TrackState
from .member_frames import TrackClock

log = logging.getLogger(__name__)

US = 1_000_000
# the kinds of a member's announced tracks, and whether it has a WebM track (kinds of its own)
Published = tuple[set[Kind], bool]
MAX_BATCH_FRAMES = 64  # frames handed to the worker thread at once (one hop for many frames)
_T = TypeVar("_T")


class UidRecorder:
    """Records one uid of a channel into its playlists and snapshots until :meth:`stop`."""

    def __init__(
        self,
        registry: ChannelRegistry,
        appid: str,
        cname: str,
        uid: str,
        directory: Path,
        outputs: MemberOutputs = DEFAULT_OUTPUTS,
        *,
        name: str = "index",
        audio: bool = True,
        video: bool = True,
        segment_target_s: float = DEFAULT_SEGMENT_TARGET_S,
        on_segment: Callable[[OutputKind, SegmentInfo], None] | None = None,
        on_snapshot: Callable[[Path, int], Awaitable[None]] | None = None,
        resume: Mapping[OutputKind, int] | None = None,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        """``name``: the files' stem; ``audio`` / ``video``: the kinds recorded now;
        ``on_snapshot`` gets each JPG with its time in ms; ``resume``: see MemberWriter;
        ``on_error`` is told of the first batch that fails (later ones are counted)."""
        self.uid = uid
        self._registry, self._appid, self._cname = registry, appid, cname
        self._new_writer = partial(
            MemberWriter,
            directory,
            name,
            outputs,
            segment_target_s=segment_target_s,
            audio=audio,
            video=video,
            resume=resume,
        )
        self.kinds = (audio, video)
        self._on_segment, self._on_snapshot = on_segment, on_snapshot
        self._on_error = on_error
        self.failures = 0  # batches that failed
        self._clock = clock
        self._clocks: dict[str, TrackClock] = {}
        self._writer: MemberWriter | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._expected = False
        self._stopping: asyncio.Task[MemberOutput] | None = None

    @property
    def stats(self) -> MemberWriterStats:
        """The writer's counters (frames in, copied, decoded, encoded)."""
        return self._writer.stats if self._writer is not None else MemberWriterStats()

    async def start(self) -> None:
        """Open the writer on its thread and subscribe: frames from now on are recorded."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"uid-{self.uid}")
        try:
            self._writer = await self._call(self._new_writer)  # its folder is made there
        except BaseException:
            self._executor.shutdown(wait=False)  # not started: a later start tries again
            self._executor = None
            raise
        self._sub = self._registry.subscribe(self._appid, self._cname, uid=self.uid)
        self._task = asyncio.create_task(self._run(self._sub), name=f"record-{self.uid}")

    async def _call(self, fn: Callable[[], _T]) -> _T:
        assert self._executor is not None  # started
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _place(self, media: MediaFrame, now_us: int) -> MemberFrame:
        key = media.clock  # (a WebSocket publisher's tracks share one, see MediaFrame.clock)
        clock = self._clocks.get(key)
        if clock is None:
            clock = self._clocks[key] = TrackClock()
        t_us = clock.place(media.pts_us, now_us)
        dts = None if media.dts_us is None else t_us - (media.pts_us - media.dts_us)
        kind = Kind.VIDEO if media.kind == "video" else Kind.AUDIO
        return MemberFrame(media.track_id, kind, media.codec, media.data, t_us, dts, media.keyframe)

    def _published(self) -> Published | None:
        """The kinds the member publishes (announced tracks), once it has announced any: a
        WebM track's are the ones its stream's header announces (the writer reads them)."""
        channel = self._registry.get(self._appid, self._cname)
        member = channel.members.get(self.uid) if channel is not None else None
        if member is None or not member.tracks:
            return None
        kinds: set[Kind] = set()
        webm = False
        for track in member.tracks.values():
            if track.state is not TrackState.ENDED:
                if track.codec == "webm":
                    webm = True
                else:
                    kinds.add(Kind(track.kind))
        return kinds, webm

    async def _run(self, sub: Subscription) -> None:
        writer = self._writer
        assert writer is not None  # started
        while (media := await sub.next_media()) is not None:
            batch = [media, *sub.take_media(MAX_BATCH_FRAMES - 1)]
            try:
                now_us = int(self._clock() * US)
                frames = [self._place(m, now_us) for m in batch]
                kinds: Published | None = None
                if not self._expected:
                    kinds = self._published()
                    self._expected = kinds is not None
                await self._deliver(await self._call(partial(_push, writer, frames, kinds)))
            except Exception as exc:  # a bug must not end the recording of everything after it
                self.failures += 1
                if self.failures > 1:  # a broken writer fails every batch: log it once
                    log.debug("recording %s: batch failed again: %s", self.uid, exc)
                    continue
                log.exception("recording %s of %s/%s", self.uid, self._appid, self._cname)
                if self._on_error is not None:
                    self._on_error(exc)

    async def _deliver(self, produced: Produced) -> None:
        if self._on_segment is not None:
            for okind, info in produced.segments:
                self._on_segment(okind, info)
        if self._on_snapshot is not None:
            for path, t_us in produced.snapshots:
                await self._on_snapshot(path, t_us // 1000)

    async def set_kinds(self, audio: bool, video: bool) -> None:
        """Record only these kinds from now on (an update of the subscriptions)."""
        if self._writer is None or (audio, video) == self.kinds:
            return
        self.kinds = (audio, video)
        writer = self._writer
        await self._deliver(await self._call(lambda: writer.set_kinds(audio, video)))

    async def stop(self) -> MemberOutput | None:
        """Stop: what is queued is written, then the playlists are ended; ``None`` if never
        started. Calling it again returns the same output."""
        if self._writer is None:
            return None
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop(self._writer))
        return await asyncio.shield(self._stopping)

    async def _stop(self, writer: MemberWriter) -> MemberOutput:
        if self._sub is not None:
            self._sub.close()  # the reader drains what is queued, then ends
        if self._task is not None:
            await self._task
        assert self._executor is not None
        try:
            produced, output = await self._call(writer.finish)
            await self._deliver(produced)
        finally:
            self._executor.shutdown(wait=False)  # its thread ends, finished or failed
        stats = writer.stats
        log.info(
            "recorded %s of %s/%s: %d video and %d audio frames in, %d copied, %d decoded, "
            "%d encoded, %d snapshots",
            self.uid, self._appid, self._cname, stats.video_in, stats.audio_in, stats.copied,
            stats.frames_decoded, stats.frames_encoded, stats.snapshots,
        )  # fmt: skip
        return output


def _push(writer: MemberWriter, frames: list[MemberFrame], kinds: Published | None) -> Produced:
    if kinds is not None:
        writer.expect(*kinds)
    return writer.push(frames)
