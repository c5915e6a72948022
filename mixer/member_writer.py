"""One channel member's recording (the cloud recording API's individual mode), synchronous.

The member's audio and video each go to an HLS playlist of their own (``<name>_audio.m3u8``,
``<name>_video.m3u8``), and, when asked, both into a merged one (``<name>_av.m3u8``), each
through the existing :class:`~mixer.hls.HlsWriter`. Media is touched as little as its codec
allows, and at most once however many playlists take it:

* H.264 and AAC (encoded frames of WebSocket publishers) are copied: no decoder, no encoder;
  segments are cut on the publisher's keyframes once the target length is reached;
* VP8/VP9 are decoded and encoded once to H.264 (libx264, a keyframe on every segment bound),
  Opus to AAC; WebM chunks are demuxed first;
* decoded frames (WebRTC: aiortc decodes before anyone sees the media) are encoded once;
* ``keep_audio_codec`` (streamMode "original"): Opus is written as received (MPEG-TS carries
  it); AAC is copied anyway, and decoded audio, which has no original left, is encoded to AAC.

Snapshots take decoded frames where there are any and otherwise decode only the next keyframe
once one is due (:mod:`mixer.snapshot`).

Times are µs on one clock for all of the member's tracks (the caller places them). Only one
track of each kind is recorded: another one takes over once the first has been silent for
``TAKEOVER_S`` (a publisher that reconnected). A playlist whose input stops for longer than
``MAX_GAP_S`` continues after an ``EXT-X-DISCONTINUITY`` rather than with one segment spanning
the gap.

Not thread-safe: one thread at a time (``ingest.individual`` gives each member a worker thread).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import av
import av.error
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext

from mixer.errors import InvalidMedia, MediaError
from mixer.hls import HlsWriter
from mixer.segmenter import DEFAULT_SEGMENT_TARGET_S, SegmentInfo
from mixer.snapshot import KeyframeDecoder, SnapshotSchedule, utc_stamp, write_jpeg
from mixer.tracks import Codec, Kind, TrackSpec
from mixer.transcode import ADTS_SAMPLE_RATES_HZ, AacFrameEncoder, H264Encoder
from mixer.webm import WebmDemuxer

log = logging.getLogger(__name__)

US_PER_S = 1_000_000
VIDEO_TRACK, AUDIO_TRACK = 1, 2
# A playlist whose input pauses this long continues after a discontinuity (the segment would
# otherwise span the pause); shorter pauses are media time (a frozen picture, a muted mic).
MAX_GAP_S = 5.0
# A second track of one kind replaces the recorded one once that has been silent this long.
TAKEOVER_S = 2.0
VIDEO_DECODERS = {"vp8": "vp8", "vp9": "vp9"}  # decoded to be transcoded (H.264 is copied)
OPUS_STEREO_BIT = 0x04  # in an Opus packet's TOC byte (RFC 6716 3.1)


class OutputKind(StrEnum):
    """A member's playlists: audio alone, video alone, or both merged."""

    AUDIO = "audio"
    VIDEO = "video"
    AV = "av"

    @property
    def track_type(self) -> str:
        """The cloud recording API's ``trackType`` of the playlist."""
        return "audio_and_video" if self is OutputKind.AV else self.value

    def takes(self, kind: Kind) -> bool:
        """Whether this playlist holds ``kind``."""
        return self is OutputKind.AV or self.value == kind.value


SEPARATE = frozenset({OutputKind.AUDIO, OutputKind.VIDEO})


@dataclass(frozen=True, slots=True)
class MemberOutputs:
    """What a member's recording writes (no playlists at all: snapshots only)."""

    playlists: frozenset[OutputKind] = SEPARATE
    keep_audio_codec: bool = False  # streamMode "original": Opus as received
    snapshot_every_s: float | None = None


DEFAULT_OUTPUTS = MemberOutputs()


@dataclass(frozen=True, slots=True)
class MemberFrame:
    """One frame of the member: encoded bytes (``codec`` names them) or, with ``codec`` "", a
    decoded ``av.VideoFrame`` / ``av.AudioFrame``. ``stream`` names the input track."""

    stream: str
    kind: Kind
    codec: str
    data: object
    t_us: int
    dts_us: int | None = None
    keyframe: bool = True


@dataclass(slots=True)
class MemberWriterStats:
    """What went through: frames in, copied, decoded and encoded, and the codecs opened."""

    video_in: int = 0
    audio_in: int = 0
    copied: int = 0  # frames written as received
    decoders_opened: int = 0
    encoders_opened: int = 0
    frames_decoded: int = 0
    frames_encoded: int = 0
    undecodable: int = 0
    ignored: int = 0  # of a kind not recorded now, or of a second track of one kind
    snapshots: int = 0


@dataclass(slots=True)
class Produced:
    """What one call finished: closed segments (per playlist) and JPGs (path, time µs)."""

    segments: list[tuple[OutputKind, SegmentInfo]] = field(default_factory=list)
    snapshots: list[tuple[Path, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MemberOutput:
    """A finished member recording: its playlists and where each would continue."""

    playlists: dict[OutputKind, Path]
    next_index: dict[OutputKind, int]


@dataclass(slots=True)
class _Source:
    """The input track recorded for one kind."""

    stream: str
    codec: str
    last_us: int
    decoder: VideoCodecContext | AudioCodecContext | None = None  # to transcode
    keyframes: KeyframeDecoder | None = None  # for snapshots of a stream not decoded
    warned: bool = False


@dataclass(slots=True)
class _Output:
    """One playlist's writer and its tracks."""

    writer: HlsWriter
    tracks: dict[Kind, Codec] = field(default_factory=dict)
    last_us: int | None = None


def _us(ticks: int | None) -> int | None:
    return None if ticks is None else ticks * 100 // 9  # exact inverse of the writer's rounding


def _ticks(us: int) -> int:
    return (us * 9 + 50) // 100


class MemberWriter:
    """Writes one member's frames to its playlists and snapshots until :meth:`finish`."""

    def __init__(
        self,
        directory: Path,
        name: str,
        outputs: MemberOutputs = DEFAULT_OUTPUTS,
        *,
        segment_target_s: float = DEFAULT_SEGMENT_TARGET_S,
        audio: bool = True,
        video: bool = True,
        resume: Mapping[OutputKind, int] | None = None,
    ) -> None:
        """``name``: the files' common stem (``<sid>_<cname>__uid_s_<uid>__uid_e``);
        ``audio`` / ``video``: which kinds are recorded now (see :meth:`set_kinds`);
        ``resume``: playlists of an earlier recording of this member to continue, with the
        index of their next segment."""
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._name = name
        self._config = outputs
        # the playlists each kind goes to (AV last: its first segment then has both streams)
        self._targets = {
            kind: sorted(
                (o for o in outputs.playlists if o.takes(kind)), key=list(OutputKind).index
            )
            for kind in Kind
        }
        self._target_s = segment_target_s
        self._on = {Kind.AUDIO: audio, Kind.VIDEO: video}
        self._resume = dict(resume or {})
        self._published: set[Kind] = {Kind.AUDIO, Kind.VIDEO}
        self._webm_expected = False
        self._webm_kinds: dict[str, frozenset[Kind]] = {}  # stream → what its header says
        self._outputs: dict[OutputKind, _Output] = {}
        self._sources: dict[Kind, _Source] = {}
        self._webm: dict[str, tuple[WebmDemuxer, int]] = {}  # stream → demuxer, its base µs
        self._h264: H264Encoder | None = None
        self._aac: AacFrameEncoder | None = None
        self._encoders: list[H264Encoder | AacFrameEncoder] = []
        self._schedule = (
            SnapshotSchedule(outputs.snapshot_every_s) if outputs.snapshot_every_s else None
        )
        self._counts = MemberWriterStats()
        self._finished = False

    # state -----------------------------------------------------------------------------------

    @property
    def stats(self) -> MemberWriterStats:
        """Counters so far (a copy)."""
        c = self._counts  # read from another thread too: copies, not live iterators
        keyframes = [s.keyframes for s in list(self._sources.values()) if s.keyframes is not None]
        return MemberWriterStats(
            video_in=c.video_in,
            audio_in=c.audio_in,
            copied=c.copied,
            decoders_opened=c.decoders_opened + sum(k.opened for k in keyframes),
            encoders_opened=c.encoders_opened
            + sum(e.opened for e in list(self._encoders) if isinstance(e, H264Encoder)),
            frames_decoded=c.frames_decoded + sum(k.frames for k in keyframes),
            frames_encoded=sum(e.frames for e in list(self._encoders)),
            undecodable=c.undecodable,
            ignored=c.ignored,
            snapshots=c.snapshots,
        )

    def expect(self, kinds: Iterable[Kind], webm: bool = False) -> None:
        """The kinds the member publishes: a merged playlist gets a stream for each from its
        first segment on (a kind that comes later joins at the next segment). ``webm``: it
        publishes a WebM track too, whose kinds its stream's header says (audio only, as
        MediaRecorder's ``audio/webm``, makes no video stream)."""
        self._published = set(kinds)
        self._webm_expected = webm
        if not self._published and not webm:
            self._published = {Kind.AUDIO, Kind.VIDEO}

    def set_kinds(self, audio: bool, video: bool) -> Produced:
        """Record only these kinds from now on (update): a kind's own playlist is paused (its
        open segment closed; it continues after a discontinuity when the kind comes back)."""
        out = Produced()
        for kind, on in ((Kind.AUDIO, audio), (Kind.VIDEO, video)):
            if self._on[kind] and not on:
                own = self._outputs.get(OutputKind(kind.value))
                if own is not None:
                    out.segments += [
                        (OutputKind(kind.value), i) for i in own.writer.discontinuity()
                    ]
                    own.last_us = None
                if kind is Kind.VIDEO and self._h264 is not None:
                    self._h264.reset()  # a keyframe first when video comes back
            self._on[kind] = on
        return out

    # input -----------------------------------------------------------------------------------

    def push(self, frames: Iterable[MemberFrame]) -> Produced:
        """Write frames (each of them, in order); the segments and snapshots they finished."""
        if self._finished:
            raise RuntimeError("the member writer is finished")
        out = Produced()
        for frame in frames:
            if frame.codec == Codec.WEBM:
                self._webm_chunk(frame, out)
            else:
                self._frame(frame, out)
        return out

    def _webm_chunk(self, chunk: MemberFrame, out: Produced) -> None:
        """A MediaRecorder chunk: its VP8/VP9 and Opus frames, on the chunk's clock."""
        data = bytes(chunk.data)  # type: ignore[call-overload]  # encoded: bytes-like
        demuxer, base = self._webm.get(chunk.stream, (None, chunk.t_us))
        if demuxer is None:
            demuxer = WebmDemuxer()
        if WebmDemuxer.starts_stream(data):  # WebM times start at 0 with each recorder
            base = chunk.t_us
        self._webm[chunk.stream] = (demuxer, base)
        try:
            packets = demuxer.feed(data)
        except MediaError as exc:
            self._counts.undecodable += 1
            log.warning("member %s: %s", self._name, exc)
            return
        if demuxer.kinds:
            self._webm_kinds[chunk.stream] = demuxer.kinds
        for p in packets:
            stream = f"{chunk.stream}/{p.kind}"
            self._frame(
                MemberFrame(
                    stream, p.kind, str(p.codec), p.data, base + p.pts_us, None, p.keyframe
                ),
                out,
            )

    def _source(self, frame: MemberFrame, out: Produced) -> _Source | None:
        """The recorded track of the frame's kind, switched to this one when that went quiet."""
        kind = frame.kind
        src = self._sources.get(kind)
        if src is not None and (src.stream, src.codec) == (frame.stream, frame.codec):
            if frame.t_us - src.last_us > MAX_GAP_S * US_PER_S and kind is Kind.VIDEO:
                if self._h264 is not None:
                    self._h264.reset()  # the playlist continues after a discontinuity: key first
            src.last_us = max(src.last_us, frame.t_us)
            return src
        if src is not None and frame.t_us - src.last_us < TAKEOVER_S * US_PER_S:
            self._counts.ignored += 1  # a second live track of this kind: not recorded
            return None
        if src is not None:
            log.info("member %s: %s track %s replaces %s", self._name, kind, frame.stream,
                     src.stream)  # fmt: skip
            if src.keyframes is not None:  # keep its counts
                self._counts.decoders_opened += src.keyframes.opened
                self._counts.frames_decoded += src.keyframes.frames
            self._flush_encoder(kind, out)
        src = self._sources[kind] = _Source(frame.stream, frame.codec, frame.t_us)
        return src

    def _frame(self, frame: MemberFrame, out: Produced) -> None:
        if frame.kind is Kind.VIDEO:
            self._counts.video_in += 1
        else:
            self._counts.audio_in += 1
        if not self._on[frame.kind]:
            self._counts.ignored += 1
            return
        src = self._source(frame, out)
        if src is None:
            return
        try:
            if frame.kind is Kind.VIDEO:
                self._video(frame, src, out)
            else:
                self._audio(frame, src, out)
        except MediaError as exc:
            self._counts.undecodable += 1
            if not src.warned:  # once per track: a broken publisher would flood the log
                src.warned = True
                log.warning("member %s: %s frame dropped: %s", self._name, frame.kind, exc)

    def _records(self, kind: Kind) -> bool:
        return bool(self._targets[kind])

    def _video(self, frame: MemberFrame, src: _Source, out: Produced) -> None:
        record = self._records(Kind.VIDEO)
        snap = self._schedule is not None and self._schedule.due(frame.t_us)
        data = frame.data
        if isinstance(data, av.VideoFrame):
            if record:
                self._encode_video(data, frame.t_us, out)
            if snap:
                self._snapshot(data, frame.t_us, out)
            return
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidMedia(f"video frame of type {type(data).__name__}")
        raw = bytes(data)
        if frame.codec == Codec.H264:
            if record:
                self._write(Kind.VIDEO, Codec.H264, raw, frame.t_us, frame.dts_us, frame.keyframe,
                            out)  # fmt: skip
                self._counts.copied += 1
            if snap and frame.keyframe:
                self._snapshot_keyframe(src, raw, frame.t_us, out)
        elif frame.codec in VIDEO_DECODERS:
            if record:
                for picture in self._decode(src, raw):
                    assert isinstance(picture, av.VideoFrame)  # PyAV typing only
                    self._encode_video(picture, frame.t_us, out)
                    if snap:
                        self._snapshot(picture, frame.t_us, out)
                        snap = False
            elif snap and frame.keyframe:
                self._snapshot_keyframe(src, raw, frame.t_us, out)
        else:
            raise InvalidMedia(f"video codec {frame.codec!r} cannot be recorded")

    def _audio(self, frame: MemberFrame, src: _Source, out: Produced) -> None:
        if not self._records(Kind.AUDIO):
            self._counts.ignored += 1
            return
        data = frame.data
        if isinstance(data, av.AudioFrame):
            self._encode_audio([data], frame.t_us, out)
            return
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidMedia(f"audio frame of type {type(data).__name__}")
        raw = bytes(data)
        if frame.codec == Codec.AAC:
            self._write(Kind.AUDIO, Codec.AAC, raw, frame.t_us, None, True, out)
            self._counts.copied += 1
        elif frame.codec == Codec.OPUS and self._config.keep_audio_codec:
            self._write(Kind.AUDIO, Codec.OPUS, raw, frame.t_us, None, True, out)
            self._counts.copied += 1
        elif frame.codec == Codec.OPUS:
            decoded = [f for f in self._decode(src, raw) if isinstance(f, av.AudioFrame)]
            self._encode_audio(decoded, frame.t_us, out)
        else:
            raise InvalidMedia(f"audio codec {frame.codec!r} cannot be recorded")

    # codecs ----------------------------------------------------------------------------------

    def _decode(self, src: _Source, data: bytes) -> list[av.frame.Frame]:
        if src.decoder is None:
            context = av.CodecContext.create(VIDEO_DECODERS.get(src.codec, src.codec), "r")
            assert isinstance(context, VideoCodecContext | AudioCodecContext)  # PyAV typing
            if isinstance(context, AudioCodecContext):
                # Opus from a WebSocket comes without a header: its first packet says stereo
                context.layout = "stereo" if data[:1] and data[0] & OPUS_STEREO_BIT else "mono"
            src.decoder = context
            self._counts.decoders_opened += 1
        try:
            frames: list[av.frame.Frame] = list(src.decoder.decode(av.Packet(data)))
        except (av.error.FFmpegError, ValueError) as exc:
            raise InvalidMedia(f"{src.codec} frame did not decode: {exc}") from exc
        self._counts.frames_decoded += len(frames)
        return frames

    def _encode_video(self, picture: av.VideoFrame, t_us: int, out: Produced) -> None:
        if self._h264 is None:
            self._h264 = H264Encoder(self._target_s, follow_input_keys=False)
            self._encoders.append(self._h264)
        self._write_packets(Kind.VIDEO, self._h264.encode(picture, _ticks(t_us)), out)

    def _encode_audio(self, frames: list[av.AudioFrame], t_us: int, out: Produced) -> None:
        if not frames:
            return
        if self._aac is None:
            first = frames[0]
            rate = first.sample_rate if first.sample_rate in ADTS_SAMPLE_RATES_HZ else 48_000
            channels = 2 if first.layout.nb_channels >= 2 else 1
            self._aac = AacFrameEncoder(rate, channels)
            self._encoders.append(self._aac)
            self._counts.encoders_opened += 1
        try:
            packets = self._aac.encode(frames, _ticks(t_us))
        except (av.error.FFmpegError, ValueError) as exc:  # e.g. the layout changed midway
            raise InvalidMedia(f"audio did not encode: {exc}") from exc
        self._write_packets(Kind.AUDIO, packets, out)

    def _write_packets(self, kind: Kind, packets: list[av.Packet], out: Produced) -> None:
        codec = Codec.H264 if kind is Kind.VIDEO else Codec.AAC
        for p in packets:
            pts = _us(p.pts) or 0
            self._write(kind, codec, bytes(p), pts, _us(p.dts), p.is_keyframe, out)

    def _flush_encoder(self, kind: Kind, out: Produced) -> None:
        """The encoder of ``kind`` drained (its input track ended or was replaced)."""
        if kind is Kind.VIDEO and self._h264 is not None:
            self._write_packets(kind, self._h264.flush(), out)
        elif kind is Kind.AUDIO and self._aac is not None:
            self._write_packets(kind, self._aac.flush(), out)
            self._aac = None

    # snapshots -------------------------------------------------------------------------------

    def _snapshot(self, picture: av.VideoFrame, t_us: int, out: Produced) -> None:
        assert self._schedule is not None  # only called when one is due
        path = self._dir / f"{self._name}_video_{utc_stamp(t_us)}.jpg"
        write_jpeg(picture, path)
        self._schedule.taken(t_us)
        self._counts.snapshots += 1
        out.snapshots.append((path, t_us))

    def _snapshot_keyframe(self, src: _Source, data: bytes, t_us: int, out: Produced) -> None:
        if src.keyframes is None:
            src.keyframes = KeyframeDecoder(src.codec)
        picture = src.keyframes.decode(data)
        if picture is not None:
            self._snapshot(picture, t_us, out)

    # output ----------------------------------------------------------------------------------

    def _output(self, okind: OutputKind, kind: Kind, codec: Codec) -> _Output:
        """The playlist's writer, opened at its first packet, with a track for ``kind``."""
        output = self._outputs.get(okind)
        if output is None:
            start = self._resume.get(okind, 0)
            writer = HlsWriter(
                self._dir,
                target_segment_s=self._target_s,
                name=f"{self._name}_{okind.value}",
                start_index=start,
                discontinuity_first=start > 0,
                utc_names=True,
            )
            output = self._outputs[okind] = _Output(writer)
            if okind is OutputKind.AV:  # both streams from the first segment, when both come
                published = set(self._published)
                if self._webm_expected:  # (what the WebM headers say; both until one does)
                    webm = set().union(*self._webm_kinds.values()) or {Kind.AUDIO, Kind.VIDEO}
                    published |= webm
                for other in published - {kind}:
                    if self._on[other]:
                        self._add_track(output, other, Codec.H264 if other is Kind.VIDEO
                                        else Codec.AAC)  # fmt: skip
        known = output.tracks.get(kind)
        if known is None:
            self._add_track(output, kind, codec)
        elif known is not codec:  # "original": Opus, then a publisher with another codec
            raise InvalidMedia(f"{okind} playlist holds {known}, not {codec}")
        return output

    @staticmethod
    def _add_track(output: _Output, kind: Kind, codec: Codec) -> None:
        track = VIDEO_TRACK if kind is Kind.VIDEO else AUDIO_TRACK
        output.writer.add_track(TrackSpec(track, kind, codec, copy=codec is Codec.OPUS))
        output.tracks[kind] = codec

    def _write(
        self,
        kind: Kind,
        codec: Codec,
        data: bytes,
        t_us: int,
        dts_us: int | None,
        keyframe: bool,
        out: Produced,
    ) -> None:
        track = VIDEO_TRACK if kind is Kind.VIDEO else AUDIO_TRACK
        arrival = t_us / US_PER_S
        for okind in self._targets[kind]:
            output = self._output(okind, kind, codec)
            writer = output.writer
            if output.last_us is not None and t_us - output.last_us > MAX_GAP_S * US_PER_S:
                out.segments += [(okind, i) for i in writer.discontinuity()]
            output.last_us = t_us if output.last_us is None else max(output.last_us, t_us)
            finished = writer.write(
                track, data, t_us, keyframe=keyframe, dts_us=dts_us, arrival=arrival
            )
            out.segments += [(okind, i) for i in finished]

    def finish(self) -> tuple[Produced, MemberOutput]:
        """Drain the encoders, close the last segments and end the playlists."""
        out = Produced()
        if self._finished:
            return out, self._result()
        for stream, (demuxer, base) in list(self._webm.items()):
            for p in demuxer.close():
                frame = MemberFrame(f"{stream}/{p.kind}", p.kind, str(p.codec), p.data,
                                    base + p.pts_us, None, p.keyframe)  # fmt: skip
                self._frame(frame, out)
        self._webm.clear()
        for kind in (Kind.VIDEO, Kind.AUDIO):
            try:
                self._flush_encoder(kind, out)
            except MediaError as exc:
                log.warning("member %s: the %s encoder did not drain: %s", self._name, kind, exc)
        for okind, output in self._outputs.items():
            out.segments += [(okind, i) for i in output.writer.finish()]
        self._finished = True
        return out, self._result()

    def _result(self) -> MemberOutput:
        return MemberOutput(
            {k: self._dir / f"{self._name}_{k.value}.m3u8" for k in self._outputs},
            {k: o.writer.next_index for k, o in self._outputs.items()},
        )
