"""Per-track input normalisers: turn client frames into H.264 (Annex B) or AAC (ADTS) packets.

H.264 and AAC pass through untouched (never decode what you only store); VP8/VP9 are
transcoded to H.264 with libx264 and Opus to AAC with FFmpeg's native encoder, or Opus passes
through where the output keeps it (MPEG-TS carries Opus). The encoders alone
(:class:`H264Encoder`, :class:`AacFrameEncoder`) also take frames decoded elsewhere (WebRTC). Every
normaliser takes timestamps already on the output timeline, in `OUTPUT_TIME_BASE` ticks, and
returns `av.Packet`s in that time base, ready to mux.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import av
import av.error
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame

from mixer.errors import InvalidMedia, UnsupportedCodec
from mixer.tracks import Codec, Kind, TrackSpec

log = logging.getLogger(__name__)

TICKS_PER_S = 90_000  # MPEG-TS clock.
OUTPUT_TIME_BASE = Fraction(1, TICKS_PER_S)
# Keyframes are forced, and segments cut, once this close to the target (one TS clock ms), so
# that float rounding of a frame time never pushes a cut one frame later.
KEYFRAME_SLACK_TICKS = 90
AAC_FRAME_SAMPLES = 1024
AAC_SAMPLE_RATE_HZ = 48_000
AAC_BIT_RATE_MONO_BPS = 64_000
AAC_BIT_RATE_STEREO_BPS = 128_000
AAC_OBJECT_TYPE_LC = 2
# FFmpeg's AAC coders (its `aac_coder` option) that may be chosen. `twoloop`, FFmpeg's default,
# is the mixer's and the cloud recordings'. `fast` costs ~45 % less CPU per frame (0.0056
# against 0.0102 CPU-s per second of the ingest bench's Opus, decode included) and measured
# worse on speech-like input at 64 kbit/s mono (PESQ-WB 3.95 against 4.24, 8 % over the bit
# rate); screen recordings use it by default (`[recorder] aac_coder`, README.md).
AAC_CODERS = ("fast", "twoloop")
AAC_CODER = "twoloop"
ADTS_HEADER_BYTES = 7
ADTS_MAX_FRAME_BYTES = 0x1FFF  # 13-bit frame length field.
# The 13-bit frame length field ends 13 bits before the end of the 56-bit header.
ADTS_LENGTH_SHIFT = 13
AAC_TIME_BASE = Fraction(1, AAC_SAMPLE_RATE_HZ)
AAC_FRAME_TICKS = AAC_FRAME_SAMPLES * TICKS_PER_S // AAC_SAMPLE_RATE_HZ
ADTS_SAMPLE_RATES_HZ = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000,
                        11025, 8000, 7350)  # fmt: skip
# Opus input whose timestamps drift this far from the samples decoded is re-anchored (a gap).
AUDIO_RESYNC_TICKS = 9_000  # 100 ms.
X264_PRESET = "veryfast"
X264_TUNE = "zerolatency"
# Keyframes are forced at segment boundaries; this GOP cap only matters if none are forced.
X264_MAX_GOP_FRAMES = 600
ANNEX_B_START = b"\x00\x00\x01"
H264_NAL_LENGTH_BYTES_MASK = 0x03


class Normaliser(Protocol):
    """Turns one input stream's frames into output packets (H.264 Annex B or AAC ADTS)."""

    kind: Kind

    def push(self, data: bytes, pts: int, dts: int, keyframe: bool) -> list[av.Packet]:
        """Take one input frame (times in output ticks) and return the packets it completes."""
        ...

    def reset(self) -> None:
        """Forget timing state after a discontinuity; the next output starts a new GOP."""
        ...

    def flush(self) -> list[av.Packet]:
        """Drain buffered frames at the end of the stream."""
        ...


def _packet(data: bytes, pts: int, dts: int, keyframe: bool, duration: int) -> av.Packet:
    packet = av.Packet(data)
    packet.pts = pts
    packet.dts = dts
    packet.duration = duration
    packet.time_base = OUTPUT_TIME_BASE
    packet.is_keyframe = keyframe
    return packet


def _adts_base(sample_rate: int, channels: int) -> int:
    """The 7-byte ADTS header (AAC-LC, no CRC) as an integer, frame length field left zero."""
    try:
        rate_index = ADTS_SAMPLE_RATES_HZ.index(sample_rate)
    except ValueError as exc:
        raise UnsupportedCodec(f"AAC sample rate {sample_rate} Hz has no ADTS index") from exc
    profile = AAC_OBJECT_TYPE_LC - 1
    header = bytes(
        (
            0xFF,
            0xF1,  # Sync word, MPEG-4, layer 0, no CRC.
            (profile << 6) | (rate_index << 2) | (channels >> 2),
            (channels & 3) << 6,  # Then the frame length's top 2 bits.
            0,  # Frame length, bits 10-3.
            0x1F,  # Frame length's low 3 bits, then buffer fullness 0x7FF (variable rate)...
            0xFC,  # ...and one raw block.
        )
    )
    return int.from_bytes(header, "big")


def adts_header(payload_size: int, sample_rate: int, channels: int) -> bytes:
    """Build the 7-byte ADTS header (AAC-LC, no CRC) for one raw AAC frame."""
    base = _adts_base(sample_rate, channels)
    length = payload_size + ADTS_HEADER_BYTES
    if length > ADTS_MAX_FRAME_BYTES:
        raise InvalidMedia(f"AAC frame of {payload_size} bytes is too large")
    return (base | length << ADTS_LENGTH_SHIFT).to_bytes(ADTS_HEADER_BYTES, "big")


def parse_audio_specific_config(config: bytes) -> tuple[int, int]:
    """Return (sample_rate, channels) from an AAC AudioSpecificConfig."""
    if len(config) < 2:
        raise InvalidMedia("AAC AudioSpecificConfig is shorter than 2 bytes")
    rate_index = ((config[0] & 0x07) << 1) | (config[1] >> 7)
    channels = (config[1] >> 3) & 0x0F
    if rate_index >= len(ADTS_SAMPLE_RATES_HZ) or not 1 <= channels <= 2:
        raise InvalidMedia("AAC AudioSpecificConfig is not mono/stereo at a known rate")
    return ADTS_SAMPLE_RATES_HZ[rate_index], channels


def _avcc_to_annexb_prefix(avcc: bytes) -> tuple[int, bytes]:
    """Return (NAL length size, SPS+PPS in Annex B) from an avcC record."""
    # Parsed here rather than with `h264_mp4toannexb` because that filter takes its avcC from a
    # stream's codec parameters, which PyAV only fills from an opened container.
    try:
        length_size = (avcc[4] & H264_NAL_LENGTH_BYTES_MASK) + 1
        out = bytearray()
        pos = 5
        for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count (8 bits).
            count = avcc[pos] & count_mask
            pos += 1
            for _ in range(count):
                size = int.from_bytes(avcc[pos : pos + 2], "big")
                out += b"\x00\x00\x00\x01" + avcc[pos + 2 : pos + 2 + size]
                pos += 2 + size
    except IndexError as exc:
        raise InvalidMedia("H.264 avcC extradata is truncated") from exc
    if avcc[0] != 1 or not out:
        raise InvalidMedia("H.264 extradata is not an avcC record")
    return length_size, bytes(out)


class H264Passthrough:
    """Passes H.264 through; length-prefixed frames (avcC given) are rewritten as Annex B."""

    kind = Kind.VIDEO

    def __init__(self, spec: TrackSpec) -> None:
        self._length_size = 0
        self._parameter_sets = b""
        if spec.extradata:
            self._length_size, self._parameter_sets = _avcc_to_annexb_prefix(spec.extradata)

    def _to_annexb(self, data: bytes, keyframe: bool) -> bytes:
        out = bytearray(self._parameter_sets if keyframe else b"")
        pos, size = 0, len(data)
        while pos < size:
            n = int.from_bytes(data[pos : pos + self._length_size], "big")
            pos += self._length_size
            if n == 0 or pos + n > size:
                raise InvalidMedia("length-prefixed H.264 frame is truncated")
            out += b"\x00\x00\x00\x01" + data[pos : pos + n]
            pos += n
        return bytes(out)

    def push(self, data: bytes, pts: int, dts: int, keyframe: bool) -> list[av.Packet]:
        """Check the framing and wrap the frame as a packet."""
        if self._length_size:
            data = self._to_annexb(data, keyframe)
        # Cheap sanity check instead of parsing: Annex B starts with a start code and the
        # first NAL header has its forbidden bit clear.
        start = 4 if data.startswith(b"\x00\x00\x00\x01") else 3
        if not data.startswith(ANNEX_B_START, start - 3) or len(data) <= start:
            raise InvalidMedia("H.264 frame is not Annex B (no start code)")
        if data[start] & 0x80:
            raise InvalidMedia("H.264 NAL header has the forbidden bit set")
        return [_packet(data, pts, dts, keyframe, 0)]

    def reset(self) -> None:
        """Nothing to forget: passthrough keeps no timing state."""

    def flush(self) -> list[av.Packet]:
        """Nothing is buffered."""
        return []


def stream_framing(spec: TrackSpec) -> Callable[[bytes, bool], bytes] | None:
    """For a track in MP4 framing (H.264 with ``extradata`` = avcC, length-prefixed; AAC with
    ``extradata`` = AudioSpecificConfig, raw frames), a function rewriting one frame (its bytes,
    whether it is a keyframe) in stream framing: Annex B with the parameter sets on keyframes,
    or ADTS. Frames of a track without extradata are in stream framing already: None.
    ``InvalidMedia`` for extradata that does not parse (and, from the function, a frame)."""
    if not spec.extradata:
        return None
    if spec.codec is Codec.H264:
        return H264Passthrough(spec)._to_annexb
    if spec.codec is Codec.AAC:
        rate, channels = parse_audio_specific_config(spec.extradata)
        return lambda data, keyframe: adts_header(len(data), rate, channels) + data
    return None


class AacPassthrough:
    """Passes AAC through as ADTS; raw frames get an ADTS header built from the config."""

    kind = Kind.AUDIO

    def __init__(self, spec: TrackSpec) -> None:
        self._raw = bool(spec.extradata)
        self._rate, self._channels = spec.sample_rate, spec.channels
        self._adts_base = 0
        if self._raw:
            self._rate, self._channels = parse_audio_specific_config(spec.extradata)
            self._adts_base = _adts_base(self._rate, self._channels)

    def push(self, data: bytes, pts: int, dts: int, keyframe: bool) -> list[av.Packet]:
        """Check the framing and wrap the frame(s) as one packet."""
        if self._raw:
            if not data:
                raise InvalidMedia("empty AAC frame")
            length = len(data) + ADTS_HEADER_BYTES
            if length > ADTS_MAX_FRAME_BYTES:
                raise InvalidMedia(f"AAC frame of {len(data)} bytes is too large")
            header = self._adts_base | length << ADTS_LENGTH_SHIFT
            data = header.to_bytes(ADTS_HEADER_BYTES, "big") + data
            frames, rate = 1, self._rate
        else:
            frames, rate = self._count_adts_frames(data)
        duration = frames * AAC_FRAME_SAMPLES * TICKS_PER_S // rate
        return [_packet(data, pts, pts, True, duration)]

    @staticmethod
    def _count_adts_frames(data: bytes) -> tuple[int, int]:
        pos, frames, rate, size = 0, 0, AAC_SAMPLE_RATE_HZ, len(data)
        while pos < size:
            if size - pos < ADTS_HEADER_BYTES or data[pos] != 0xFF or data[pos + 1] & 0xF6 != 0xF0:
                raise InvalidMedia("AAC frame is not ADTS (no sync word)")
            rate_index = (data[pos + 2] >> 2) & 0x0F
            length = ((data[pos + 3] & 3) << 11) | (data[pos + 4] << 3) | (data[pos + 5] >> 5)
            if rate_index >= len(ADTS_SAMPLE_RATES_HZ) or length < ADTS_HEADER_BYTES:
                raise InvalidMedia("AAC ADTS header is invalid")
            rate = ADTS_SAMPLE_RATES_HZ[rate_index]
            frames += 1 + (data[pos + 6] & 3)
            pos += length
        if pos != size:
            raise InvalidMedia("AAC ADTS frame is truncated")
        return frames, rate

    def reset(self) -> None:
        """Nothing to forget: passthrough keeps no timing state."""

    def flush(self) -> list[av.Packet]:
        """Nothing is buffered."""
        return []


class H264Encoder:
    """libx264 (no B-frames) for one stream of decoded frames, a keyframe forced every interval.

    ``follow_input_keys``: output keyframes fall on input keyframes where the input has them
    often enough (a transcoded segment then decodes from its own start, which replaying a
    write-ahead log from that cut needs); without it they come exactly when due.
    """

    def __init__(self, keyframe_interval_s: float, *, follow_input_keys: bool = True) -> None:
        self._encoder: VideoCodecContext | None = None
        self._interval = round(keyframe_interval_s * TICKS_PER_S)
        self._follow = follow_input_keys
        self._next_key: int | None = None
        self._last_pts: int | None = None
        self.opened = 0  # encoders opened so far (one per stream, again after a flush)
        self.frames = 0  # frames encoded

    def _open(self, frame: VideoFrame) -> VideoCodecContext:
        encoder = av.CodecContext.create("libx264", "w")
        assert isinstance(encoder, VideoCodecContext)  # PyAV typing only.
        encoder.width = frame.width - frame.width % 2  # 4:2:0 needs even sizes.
        encoder.height = frame.height - frame.height % 2
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = OUTPUT_TIME_BASE
        encoder.max_b_frames = 0
        encoder.gop_size = X264_MAX_GOP_FRAMES
        encoder.thread_count = 1  # Many streams per core: threads would only add overhead.
        encoder.options = {"preset": X264_PRESET, "tune": X264_TUNE, "forced-idr": "1"}
        self.opened += 1
        return encoder

    def encode(self, frame: VideoFrame, pts: int, key_in: bool = False) -> list[av.Packet]:
        """Encode ``frame`` at ``pts`` (output ticks); the packets it completes."""
        if self._last_pts is not None and pts <= self._last_pts:
            return []  # x264 refuses non-increasing times; the writer already logged why.
        self._last_pts = pts
        if self._encoder is None:
            self._encoder = self._open(frame)
        encoder = self._encoder
        size = (encoder.width, encoder.height)
        if (frame.width, frame.height) != size or frame.format.name != "yuv420p":
            frame = frame.reformat(width=encoder.width, height=encoder.height, format="yuv420p")
        frame.pts = pts
        frame.time_base = OUTPUT_TIME_BASE
        due = self._next_key is None or pts >= self._next_key - KEYFRAME_SLACK_TICKS
        if self._follow:
            overdue = self._next_key is not None and pts >= self._next_key + self._interval
            key = self._next_key is None or (due and key_in) or overdue
        else:
            key = due
        if key:
            frame.pict_type = PictureType.I
            self._next_key = pts + self._interval
        else:
            frame.pict_type = PictureType.NONE
        self.frames += 1
        return _in_ticks(encoder.encode(frame))

    def reset(self) -> None:
        """Force a keyframe on the next frame so the new segment starts with one."""
        self._next_key = None

    def flush(self) -> list[av.Packet]:
        """Drain the encoder; the next frame opens a new one (at that frame's size)."""
        if self._encoder is None:
            return []
        try:
            return _in_ticks(self._encoder.encode(None))
        finally:
            self._encoder = None
            self._next_key = None


def _in_ticks(packets: list[av.Packet]) -> list[av.Packet]:
    for packet in packets:
        packet.time_base = OUTPUT_TIME_BASE
    return packets


class VideoTranscoder:
    """Decodes VP8/VP9 and encodes H.264 (libx264, no B-frames) with forced segment keyframes."""

    kind = Kind.VIDEO

    def __init__(self, spec: TrackSpec, keyframe_interval_s: float) -> None:
        if spec.codec not in (Codec.VP8, Codec.VP9):
            raise UnsupportedCodec(f"cannot transcode {spec.codec!s} video")
        decoder = av.CodecContext.create(str(spec.codec), "r")
        assert isinstance(decoder, VideoCodecContext)  # PyAV typing only.
        self._decoder = decoder
        self._h264 = H264Encoder(keyframe_interval_s)

    def push(self, data: bytes, pts: int, dts: int, keyframe: bool) -> list[av.Packet]:
        """Decode one frame and encode what it yields."""
        packet = av.Packet(data)
        packet.pts = pts
        packet.dts = pts
        packet.time_base = OUTPUT_TIME_BASE
        out: list[av.Packet] = []
        for frame in self._decode(packet):
            assert isinstance(frame, VideoFrame)  # PyAV typing only.
            out += self._h264.encode(frame, pts if frame.pts is None else frame.pts, keyframe)
        return out

    def prime(self, data: bytes) -> None:
        """Decode ``data`` and drop what it yields: a replay of a segment that began past an
        input keyframe feeds the frames from that keyframe through here first (the decoder
        needs them; the segment before has them already)."""
        self._decode(av.Packet(data))

    def _decode(self, packet: av.Packet) -> list[av.frame.Frame]:
        try:
            return list(self._decoder.decode(packet))
        except av.error.FFmpegError as exc:
            raise InvalidMedia(f"cannot decode video frame: {exc}") from exc

    def reset(self) -> None:
        """Force a keyframe on the next frame so the new segment starts with one."""
        self._h264.reset()

    def flush(self) -> list[av.Packet]:
        """Drain the encoder."""
        return self._h264.flush()


class AacFrameEncoder:
    """AAC-LC (FFmpeg's native encoder) of decoded audio, as ADTS packets on the output clock.

    Input is stamped by a sample counter, so the output is sample-exact; the counter is
    re-anchored to the caller's times when they drift apart by more than
    ``AUDIO_RESYNC_TICKS`` (a gap in the input).
    """

    def __init__(
        self, sample_rate: int = AAC_SAMPLE_RATE_HZ, channels: int = 1, coder: str = AAC_CODER
    ) -> None:
        if coder not in AAC_CODERS:
            raise ValueError(f"unknown AAC coder {coder!r} (one of {', '.join(AAC_CODERS)})")
        encoder = av.CodecContext.create("aac", "w")
        assert isinstance(encoder, AudioCodecContext)  # PyAV typing only.
        encoder.sample_rate = sample_rate
        encoder.layout = "stereo" if channels == 2 else "mono"
        encoder.format = "fltp"
        encoder.bit_rate = AAC_BIT_RATE_STEREO_BPS if channels == 2 else AAC_BIT_RATE_MONO_BPS
        encoder.time_base = Fraction(1, sample_rate)
        encoder.options = {"aac_coder": coder}
        # No resampler of our own: PyAV's `AudioCodecContext.encode` already passes every frame
        # through one (built for the encoder's format, layout, rate and 1024-sample frame
        # size), which re-cuts the decoder's 20 ms frames and converts only when the decoder's
        # output differs. A second one in front of it only doubled that cost.
        self._encoder: AudioCodecContext | None = encoder
        self._rate = sample_rate
        self._time_base = Fraction(1, sample_rate)
        self._frame_ticks = AAC_FRAME_SAMPLES * TICKS_PER_S // sample_rate
        # Encoder input is stamped by a sample counter; `_shift` maps samples to output ticks.
        self._samples_in = 0
        self._shift: int | None = None
        self._adts_base = _adts_base(sample_rate, channels)
        self.frames = 0  # frames encoded

    def encode(self, frames: list[AudioFrame], pts: int) -> list[av.Packet]:
        """Encode decoded ``frames`` that start at ``pts`` (output ticks); the AAC packets
        completed so far."""
        samples = self._samples_in
        expected = samples * TICKS_PER_S // self._rate
        shift = self._shift
        if shift is None or abs(pts - (expected + shift)) > AUDIO_RESYNC_TICKS:
            self._shift = pts - expected  # First frame, or a gap in the input: re-anchor.
        encoder = self._encoder
        out: list[av.Packet] = []
        for frame in frames:
            # Stamped in samples (the encoder's time base); the encoder's resampler re-cuts
            # them into 1024-sample frames stamped from these, sample-exact.
            frame.pts = samples
            frame.time_base = self._time_base
            samples += frame.samples
            self.frames += 1
            if encoder is not None and (packets := encoder.encode(frame)):
                out += self._wrap(packets)
        self._samples_in = samples
        return out

    def _wrap(self, packets: list[av.Packet]) -> list[av.Packet]:
        out = []
        shift = self._shift or 0
        base = self._adts_base
        for packet in packets:
            payload = bytes(packet)
            size = len(payload) + ADTS_HEADER_BYTES
            if size > ADTS_MAX_FRAME_BYTES:
                raise InvalidMedia(f"AAC frame of {len(payload)} bytes is too large")
            pts = (packet.pts or 0) * TICKS_PER_S // self._rate + shift
            header = (base | size << ADTS_LENGTH_SHIFT).to_bytes(ADTS_HEADER_BYTES, "big")
            wrapped = av.Packet(header + payload)
            wrapped.pts = wrapped.dts = pts
            wrapped.duration = self._frame_ticks
            wrapped.time_base = OUTPUT_TIME_BASE
            wrapped.is_keyframe = True
            out.append(wrapped)
        return out

    def flush(self) -> list[av.Packet]:
        """Drain the encoder (and the re-cutting resampler in front of it); it is done after."""
        if self._encoder is None:
            return []
        out = self._wrap(self._encoder.encode(None))
        self._encoder = None
        return out


class AudioTranscoder:
    """Decodes Opus and encodes AAC-LC at 48 kHz (native `aac` encoder), output as ADTS."""

    kind = Kind.AUDIO

    def __init__(self, spec: TrackSpec, aac_coder: str = AAC_CODER) -> None:
        if spec.codec is not Codec.OPUS:
            raise UnsupportedCodec(f"cannot transcode {spec.codec!s} audio")
        decoder = av.CodecContext.create("opus", "r")
        assert isinstance(decoder, AudioCodecContext)  # PyAV typing only.
        decoder.sample_rate = spec.sample_rate
        decoder.layout = "stereo" if spec.channels == 2 else "mono"
        self._decoder = decoder
        self._aac = AacFrameEncoder(AAC_SAMPLE_RATE_HZ, spec.channels, aac_coder)

    def push(self, data: bytes, pts: int, dts: int, keyframe: bool) -> list[av.Packet]:
        """Decode one Opus packet and return the AAC packets completed so far."""
        if not data:
            raise InvalidMedia("empty Opus packet")
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.error.FFmpegError as exc:
            raise InvalidMedia(f"cannot decode Opus packet: {exc}") from exc
        return self._aac.encode(frames, pts)

    def reset(self) -> None:
        """Keep the sample clock: the writer's timeline continues without a gap."""

    def flush(self) -> list[av.Packet]:
        """Drain the encoder (and the re-cutting resampler in front of it)."""
        return self._aac.flush()


# Opus frame lengths in 48 kHz samples by TOC configuration (RFC 6716 3.1): SILK 10/20/40/60
# ms, hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
_OPUS_CONFIG_SAMPLES = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
OPUS_RATE_HZ = 48_000


def opus_packet_samples(data: bytes) -> int:
    """The 48 kHz samples one Opus packet holds (its TOC byte and frame count, RFC 6716 3.1)."""
    if not data:
        raise InvalidMedia("empty Opus packet")
    toc = data[0]
    per_frame = _OPUS_CONFIG_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(data) < 2:
            raise InvalidMedia("Opus packet with code 3 has no frame count")
        frames = data[1] & 0x3F
    return per_frame * frames


class OpusPassthrough:
    """Passes Opus through as received (MPEG-TS carries Opus; streamMode "original")."""

    kind = Kind.AUDIO

    def push(self, data: bytes, pts: int, dts: int, keyframe: bool) -> list[av.Packet]:
        """Wrap the packet, its duration read from its TOC byte."""
        duration = opus_packet_samples(data) * TICKS_PER_S // OPUS_RATE_HZ
        return [_packet(data, pts, pts, True, duration)]

    def reset(self) -> None:
        """Nothing to forget: passthrough keeps no timing state."""

    def flush(self) -> list[av.Packet]:
        """Nothing is buffered."""
        return []


def create_normaliser(
    spec: TrackSpec, keyframe_interval_s: float, aac_coder: str = AAC_CODER
) -> Normaliser:
    """Pick the normaliser for an audio or video track (not `webm`, which is demuxed first)."""
    match spec.codec:
        case Codec.H264:
            return H264Passthrough(spec)
        case Codec.AAC:
            return AacPassthrough(spec)
        case Codec.VP8 | Codec.VP9:
            return VideoTranscoder(spec, keyframe_interval_s)
        case Codec.OPUS:
            return OpusPassthrough() if spec.copy else AudioTranscoder(spec, aac_coder)
    raise UnsupportedCodec(f"no normaliser for codec {spec.codec!s}")
