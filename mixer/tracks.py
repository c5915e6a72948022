"""Descriptions of the input tracks a writer accepts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mixer.errors import UnsupportedCodec

DEFAULT_SAMPLE_RATE_HZ = 48_000


class Codec(StrEnum):
    """Codecs of input tracks; `webm` is a muxed WebM byte stream (VP8/VP9 + Opus inside)."""

    H264 = "h264"
    VP8 = "vp8"
    VP9 = "vp9"
    OPUS = "opus"
    AAC = "aac"
    WEBM = "webm"


class Kind(StrEnum):
    """Media kind of a track."""

    VIDEO = "video"
    AUDIO = "audio"


VIDEO_CODECS = frozenset({Codec.H264, Codec.VP8, Codec.VP9, Codec.WEBM})
AUDIO_CODECS = frozenset({Codec.OPUS, Codec.AAC})
MAX_CHANNELS = 2
SUPPORTED_SAMPLE_RATES_HZ = frozenset({8000, 16000, 22050, 24000, 32000, 44100, 48000})


@dataclass(frozen=True, slots=True)
class TrackSpec:
    """One input track: its id, kind, codec and the parameters its frames need.

    For AAC, `extradata` is the AudioSpecificConfig when frames are raw and empty when frames
    carry ADTS headers. For H.264, `extradata` is an avcC record when frames are
    length-prefixed; empty (the normal case) means Annex B. A `webm` track is of kind video and
    carries consecutive chunks of one WebM byte stream holding both video and audio. `copy`
    (Opus only) writes the packets as received instead of transcoding them to AAC.
    """

    track_id: int
    kind: Kind
    codec: Codec
    width: int = 0
    height: int = 0
    sample_rate: int = DEFAULT_SAMPLE_RATE_HZ
    channels: int = 1
    extradata: bytes = b""
    copy: bool = False

    def __post_init__(self) -> None:
        allowed = VIDEO_CODECS if self.kind is Kind.VIDEO else AUDIO_CODECS
        if self.codec not in allowed:
            raise UnsupportedCodec(f"codec {self.codec!s} is not a {self.kind!s} codec")
        if self.kind is Kind.AUDIO:
            if not 1 <= self.channels <= MAX_CHANNELS:
                raise UnsupportedCodec(f"{self.channels} audio channels are not supported")
            if self.sample_rate not in SUPPORTED_SAMPLE_RATES_HZ:
                raise UnsupportedCodec(f"sample rate {self.sample_rate} Hz is not supported")
        if self.width < 0 or self.height < 0:
            raise ValueError("width and height must not be negative")
