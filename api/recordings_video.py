"""A recording's uploaded tab video made playable: probed and checked by decoding a frame,
cut into HLS with the mixer's writer (VP8/VP9 re-encoded to H.264, Opus to AAC, H.264 and AAC
passed through), a JPG thumbnail taken. Blocking and CPU-bound: run in a worker thread."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame

from mixer.errors import MediaError
from mixer.hls import HlsWriter
from mixer.tracks import Codec, Kind, TrackSpec

log = logging.getLogger(__name__)

THUMBNAIL_AT_S = 1.0  # past a black first frame, still inside the shortest clip
THUMBNAIL_MAX_WIDTH = 640
HLS_SEGMENT_S = 4.0
US_PER_S = 1_000_000
MAX_BAD_PACKETS = 50  # a few broken frames are skipped; more mean the file is broken
# One job at a time serves every tenant: a file past these is failed, not made playable for
# hours while the others wait (a tab's video is a screen's size, at most a working day long)
MAX_VIDEO_PIXELS = 3840 * 2160
MAX_VIDEO_S = 12 * 3600
MAX_VIDEO_FPS = 120  # video frames a second of media, on average: more is no tab recording
_VIDEO_CODECS = {"vp8": Codec.VP8, "vp9": Codec.VP9, "h264": Codec.H264}
_AUDIO_CODECS = {"opus": Codec.OPUS, "aac": Codec.AAC}


class VideoFailed(Exception):
    """The upload is not a video we can play back; the message is the reason users see."""


class Stopped(Exception):
    """Processing was told to stop (the recording was deleted, the server is closing)."""


@dataclass(frozen=True, slots=True)
class VideoResult:
    """What processing made: the HLS files (playlist last), the thumbnail, and the duration."""

    hls_files: list[Path]
    thumbnail: Path
    duration_ms: int
    width: int
    height: int
    audio: bool


def _said(exc: Exception) -> str:
    """What went wrong, without the file's path (FFmpeg's and the OS's messages name it: a
    tenant would read the server's directory layout in ``failure_reason``). A MediaError
    quotes its cause's text: that part is said without the path too."""
    text = str(getattr(exc, "strerror", None) or exc)
    cause = exc.__cause__
    if isinstance(cause, Exception) and str(cause):
        text = text.replace(str(cause), _said(cause))
    return text


def _open(src: Path) -> av.container.InputContainer:
    try:
        return av.open(str(src))
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise VideoFailed(f"not a video file that can be decoded: {_said(exc)}") from None


def _thumbnail(src: Path, dest: Path, stop: threading.Event) -> tuple[int, int]:
    """Write the frame at ``THUMBNAIL_AT_S`` (or the last before it) as JPG; its video size."""
    chosen: VideoFrame | None = None
    with _open(src) as container:
        if not container.streams.video:
            raise VideoFailed("the file has no video stream")
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                if stop.is_set():
                    raise Stopped
                chosen = frame
                if frame.time is not None and frame.time >= THUMBNAIL_AT_S:
                    break
        except av.error.FFmpegError as exc:
            if chosen is None:
                raise VideoFailed(f"video does not decode: {_said(exc)}") from None
    if chosen is None:
        raise VideoFailed("video has no decodable frame")
    width = min(THUMBNAIL_MAX_WIDTH, chosen.width) // 2 * 2
    height = max(2, round(chosen.height * width / chosen.width) // 2 * 2)
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, VideoCodecContext)  # PyAV typing only
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 1)
    image = chosen.reformat(width=width, height=height, format="yuvj420p")
    image.pts = 0
    data = b"".join(bytes(p) for p in encoder.encode(image) + encoder.encode(None))
    dest.write_bytes(data)
    return chosen.width, chosen.height


def _audio_spec(stream: av.audio.stream.AudioStream) -> TrackSpec | None:
    codec = _AUDIO_CODECS.get(stream.codec_context.name)
    channels = stream.codec_context.channels
    if codec is None or not 1 <= channels <= 2:
        return None  # the video still plays; its audio is left out
    rate = stream.codec_context.sample_rate or 48_000
    extradata = bytes(stream.codec_context.extradata or b"") if codec is Codec.AAC else b""
    return TrackSpec(2, Kind.AUDIO, codec, sample_rate=rate, channels=channels, extradata=extradata)


def _check_length(span_us: int, frames: int) -> None:
    """Past ``MAX_VIDEO_S`` of media, or ``MAX_VIDEO_FPS`` video frames a second on average
    (a second's grace: a file's first frames come all at one time): ``VideoFailed``."""
    if span_us > MAX_VIDEO_S * US_PER_S:
        raise VideoFailed(f"video is longer than {MAX_VIDEO_S} s")
    if frames > MAX_VIDEO_FPS * (max(0, span_us) / US_PER_S + 1):
        raise VideoFailed(f"video has more than {MAX_VIDEO_FPS} frames a second")


def process_video(src: Path, work: Path, stop: threading.Event) -> VideoResult:
    """Probe, thumbnail and transcode ``src`` into ``work``; ``VideoFailed`` says why not."""
    work.mkdir(parents=True, exist_ok=True)
    thumbnail = work / "thumbnail.jpg"
    width, height = _thumbnail(src, thumbnail, stop)
    hls_dir = work / "hls"
    writer = HlsWriter(hls_dir, target_segment_s=HLS_SEGMENT_S, name="index")
    first_us: int | None = None
    end_us = 0
    bad = 0
    frames = 0
    with _open(src) as container:
        video = container.streams.video[0]
        codec = _VIDEO_CODECS.get(video.codec_context.name)
        if codec is None:
            raise VideoFailed(f"video codec {video.codec_context.name} is not supported")
        if video.width * video.height > MAX_VIDEO_PIXELS:
            raise VideoFailed(
                f"video is {video.width}x{video.height}; at most {MAX_VIDEO_PIXELS} pixels"
            )
        extradata = bytes(video.codec_context.extradata or b"") if codec is Codec.H264 else b""
        try:
            writer.add_track(
                TrackSpec(1, Kind.VIDEO, codec, video.width, video.height, extradata=extradata)
            )
        except MediaError as exc:  # (a damaged avcC, ...)
            raise VideoFailed(f"video track cannot be read: {_said(exc)}") from None
        streams: list[av.stream.Stream] = [video]
        track_of = {video.index: 1}
        if container.streams.audio:
            audio = container.streams.audio[0]
            try:
                spec = _audio_spec(audio)
                if spec is not None:
                    writer.add_track(spec)
                    streams.append(audio)
                    track_of[audio.index] = 2
            except MediaError as exc:  # (a sample rate AAC cannot carry here, ...)
                log.info("%s: its audio is left out: %s", src.name, exc)
        try:
            for packet in container.demux(*streams):
                if stop.is_set():
                    raise Stopped
                if packet.pts is None or packet.size == 0 or packet.time_base is None:
                    continue
                pts_us = int(packet.pts * packet.time_base * US_PER_S)
                dts_us = (
                    None if packet.dts is None else int(packet.dts * packet.time_base * US_PER_S)
                )
                dur_us = int((packet.duration or 0) * packet.time_base * US_PER_S)
                first_us = pts_us if first_us is None else min(first_us, pts_us)
                end_us = max(end_us, pts_us + dur_us)
                frames += packet.stream.index == video.index
                _check_length(end_us - first_us, frames)
                try:
                    writer.write(
                        track_of[packet.stream.index],
                        bytes(packet),
                        pts_us,
                        keyframe=packet.is_keyframe,
                        dts_us=dts_us,
                    )
                except MediaError:
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise VideoFailed("video has too many undecodable frames") from None
            writer.finish()
        except av.error.FFmpegError as exc:
            raise VideoFailed(f"video does not demux: {_said(exc)}") from None
        except MediaError as exc:  # (the last segment failing to close)
            raise VideoFailed(f"video cannot be written: {_said(exc)}") from None
        duration_s = container.duration / av.time_base if container.duration else None
    segments = sorted(hls_dir.glob("index_*.ts"))
    if not segments:
        raise VideoFailed("video has no frames that could be written")
    if duration_s is None or duration_s <= 0:  # MediaRecorder's WebM states none: count it
        duration_s = max(0, end_us - (first_us or 0)) / US_PER_S
    return VideoResult(
        hls_files=[*segments, hls_dir / "index.m3u8"],
        thumbnail=thumbnail,
        duration_ms=round(duration_s * 1000),
        width=width,
        height=height,
        audio=len(streams) > 1,
    )
