"""Normalisers: passthrough framing checks and transcoders' output."""

from __future__ import annotations

import io
import itertools

import av
import numpy as np
import pytest
from media import encode_clip

from mixer.errors import InvalidMedia, UnsupportedCodec
from mixer.tracks import Codec, Kind, TrackSpec
from mixer.transcode import (
    AAC_FRAME_SAMPLES,
    AacPassthrough,
    AudioTranscoder,
    H264Passthrough,
    VideoTranscoder,
    adts_header,
    parse_audio_specific_config,
)

TICKS_PER_US_NUM, TICKS_PER_US_DEN = 9, 100


def _ticks(us: int) -> int:
    return us * TICKS_PER_US_NUM // TICKS_PER_US_DEN


def test_vp8_to_h264_keyframes_follow_the_input_ones() -> None:
    clip = encode_clip("vp8", duration_s=2.0, audio_codec=None)  # input keyframes every 1 s
    t = VideoTranscoder(TrackSpec(1, Kind.VIDEO, Codec.VP8), keyframe_interval_s=0.5)
    packets = []
    for f in clip.frames:
        packets += t.push(f.data, _ticks(f.pts_us), _ticks(f.pts_us), f.keyframe)
    packets += t.flush()
    assert abs(len(packets) - clip.video_frames) <= 1
    keys = [p.pts for p in packets if p.is_keyframe]
    # due every 0.5 s, but placed on the input's keyframes (so a segment decodes on its own)
    assert keys == [_ticks(f.pts_us) for f in clip.frames if f.keyframe]
    assert bytes(packets[0]).startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))


def test_vp8_to_h264_forces_keyframes_when_the_input_has_none() -> None:
    clip = encode_clip("vp8", duration_s=2.0, audio_codec=None)
    interval_s = 0.4
    t = VideoTranscoder(TrackSpec(1, Kind.VIDEO, Codec.VP8), keyframe_interval_s=interval_s)
    packets = []
    for f in clip.frames:  # flagged as no keyframes at all after the first
        packets += t.push(f.data, _ticks(f.pts_us), _ticks(f.pts_us), f.pts_us == 0)
    packets += t.flush()
    keys = [p.pts for p in packets if p.is_keyframe]
    assert keys[0] == 0 and len(keys) >= 3
    assert max(b - a for a, b in itertools.pairwise(keys)) <= _ticks(round(2 * interval_s * 1e6))


def test_opus_to_aac_is_adts_and_continuous() -> None:
    clip = encode_clip(None, audio_codec="opus", duration_s=1.0)
    t = AudioTranscoder(TrackSpec(2, Kind.AUDIO, Codec.OPUS))
    packets = []
    for f in clip.frames:
        packets += t.push(f.data, _ticks(f.pts_us), _ticks(f.pts_us), True)
    packets += t.flush()
    assert all(bytes(p)[:2] == b"\xff\xf1" for p in packets)
    steps = {b.pts - a.pts for a, b in itertools.pairwise(packets)}
    assert steps == {AAC_FRAME_SAMPLES * 90_000 // 48_000}
    assert len(packets) >= 48_000 // AAC_FRAME_SAMPLES


def _aac_of_opus(coder: str, clip: object) -> tuple[bytes, np.ndarray]:
    t = AudioTranscoder(TrackSpec(2, Kind.AUDIO, Codec.OPUS), aac_coder=coder)
    packets = []
    for f in clip.frames:  # type: ignore[attr-defined]
        packets += t.push(f.data, _ticks(f.pts_us), _ticks(f.pts_us), True)
    packets += t.flush()
    adts = b"".join(bytes(p) for p in packets)
    with av.open(io.BytesIO(adts), format="aac") as c:
        pcm = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
    return adts, pcm


def test_the_aac_coder_is_the_one_asked_for() -> None:
    clip = encode_clip(None, audio_codec="opus", duration_s=2.0)
    fast, fast_pcm = _aac_of_opus("fast", clip)
    twoloop, twoloop_pcm = _aac_of_opus("twoloop", clip)
    assert fast != twoloop  # another coder: another bitstream of the same input
    # ...of the same sound: the test clip's tone at the same level, sample-aligned
    n = min(len(fast_pcm), len(twoloop_pcm))
    assert n >= 2 * 48_000 - 2 * AAC_FRAME_SAMPLES
    rms = float(np.sqrt(np.mean(twoloop_pcm[:n] ** 2)))
    assert rms > 0.05
    assert float(np.sqrt(np.mean((fast_pcm[:n] - twoloop_pcm[:n]) ** 2))) < 0.1 * rms
    with pytest.raises(ValueError, match="unknown AAC coder 'anmr'"):
        AudioTranscoder(TrackSpec(2, Kind.AUDIO, Codec.OPUS), aac_coder="anmr")


def test_raw_aac_gets_adts_header() -> None:
    clip = encode_clip(None, audio_codec="aac", duration_s=0.2, adts=False)
    assert parse_audio_specific_config(clip.aac_config) == (48_000, 1)
    t = AacPassthrough(TrackSpec(2, Kind.AUDIO, Codec.AAC, extradata=clip.aac_config))
    f = clip.frames[1]
    (packet,) = t.push(f.data, 0, 0, True)
    assert bytes(packet) == adts_header(len(f.data), 48_000, 1) + f.data


def test_passthrough_rejects_garbage() -> None:
    with pytest.raises(InvalidMedia):
        H264Passthrough(TrackSpec(1, Kind.VIDEO, Codec.H264)).push(b"\x01\x02\x03\x04", 0, 0, True)
    with pytest.raises(InvalidMedia):
        AacPassthrough(TrackSpec(2, Kind.AUDIO, Codec.AAC)).push(b"\x01\x02" * 20, 0, 0, True)


def test_avcc_frames_become_annex_b() -> None:
    sps, pps, idr = b"\x67\x42\x00\x1f\xaa", b"\x68\xce\x3c\x80", b"\x65\x88\x84"
    avcc = bytes([1, 0x42, 0, 0x1F, 0xFF, 0xE1, 0, len(sps)]) + sps + bytes([1, 0, len(pps)]) + pps
    t = H264Passthrough(TrackSpec(1, Kind.VIDEO, Codec.H264, extradata=avcc))
    (packet,) = t.push(len(idr).to_bytes(4, "big") + idr, 0, 0, True)
    start = b"\x00\x00\x00\x01"
    assert bytes(packet) == start + sps + start + pps + start + idr


def test_bad_specs() -> None:
    with pytest.raises(UnsupportedCodec):
        TrackSpec(1, Kind.AUDIO, Codec.H264)
    with pytest.raises(UnsupportedCodec):
        TrackSpec(1, Kind.AUDIO, Codec.OPUS, channels=6)
