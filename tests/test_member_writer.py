"""The individual-mode writer alone: encoded clips in, and what comes out checked with ffprobe
and PyAV (streams, durations, packet bytes, keyframes, snapshots)."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from media import Clip, encode_clip, encode_webm, ffprobe

from mixer.member_writer import (
    SEPARATE,
    MemberFrame,
    MemberOutput,
    MemberOutputs,
    MemberWriter,
    OutputKind,
)
from mixer.playlist import Playlist
from mixer.tracks import Kind
from mixer.transcode import opus_packet_samples

BASE_US = 1_700_000_000_000_000  # the recording's clock: any wall-clock time
NAME = "sid_room__uid_s_7__uid_e"
# FFmpeg's MPEG-TS muxer puts an access unit delimiter in front of every H.264 packet that has
# none (H.264 in MPEG-TS requires one); everything after it is the publisher's bytes.
AUD = b"\x00\x00\x00\x01\x09\xf0"
AAC_FRAME_S = 1024 / 48_000
DURATION_TOLERANCE_S = 0.05  # one AAC frame and rounding to ms in the playlist


def frames_of(clip: Clip) -> list[MemberFrame]:
    return [
        MemberFrame(
            "0" if f.kind == "video" else "1",
            Kind(f.kind),
            f.codec,
            f.data,
            BASE_US + f.pts_us,
            None if f.dts_us is None else BASE_US + f.dts_us,
            f.keyframe,
        )
        for f in clip.frames
    ]


def record(
    tmp_path: Path, clip: Clip, outputs: MemberOutputs, target_s: float = 2.0
) -> tuple[MemberWriter, MemberOutput]:
    writer = MemberWriter(tmp_path, NAME, outputs, segment_target_s=target_s)
    for frame in frames_of(clip):
        writer.push([frame])
    _, output = writer.finish()
    return writer, output


def segments(playlist: Path) -> list[Path]:
    return [playlist.with_name(s.uri) for s in Playlist.parse(playlist.read_text()).segments]


def demuxed(playlist: Path, kind: str) -> list[av.Packet]:
    out = []
    for path in segments(playlist):
        with av.open(str(path)) as container:
            streams = [s for s in container.streams if s.type == kind]
            out += [p for p in container.demux(streams) if p.size]
    return out


def probe(playlist: Path) -> tuple[list[str], float]:
    info = ffprobe(playlist, "-show_streams", "-show_format")
    codecs = [s["codec_name"] for s in info["streams"]]
    return codecs, float(info["format"]["duration"])


def test_h264_and_aac_are_copied_byte_for_byte(tmp_path: Path) -> None:
    clip = encode_clip("h264", duration_s=3.0, audio_codec="aac")  # a keyframe every second
    writer, output = record(tmp_path, clip, MemberOutputs(SEPARATE))
    stats = writer.stats
    assert (stats.decoders_opened, stats.encoders_opened, stats.frames_decoded) == (0, 0, 0)
    assert stats.copied == len(clip.frames)
    video, audio = output.playlists[OutputKind.VIDEO], output.playlists[OutputKind.AUDIO]
    assert video.name == f"{NAME}_video.m3u8" and audio.name == f"{NAME}_audio.m3u8"
    assert probe(video)[0] == ["h264"] and probe(audio)[0] == ["aac"]
    assert probe(video)[1] == pytest.approx(3.0, abs=DURATION_TOLERANCE_S)
    assert probe(audio)[1] == pytest.approx(clip.audio_frames * AAC_FRAME_S, abs=0.05)
    sent_video = [f.data for f in clip.of("video")]
    got_video = demuxed(video, "video")
    assert [bytes(p).removeprefix(AUD) for p in got_video] == sent_video
    assert b"".join(bytes(p) for p in demuxed(audio, "audio")) == b"".join(
        f.data for f in clip.of("audio")
    )
    # cut on the publisher's keyframes once the 2 s target is reached: 2 s, then the last 1 s
    durations = [s.duration_s for s in Playlist.parse(video.read_text()).segments]
    assert durations == [pytest.approx(2.0, abs=0.01), pytest.approx(1.0, abs=0.01)]
    for path in segments(video):
        with av.open(str(path)) as container:
            assert next(container.demux(video=0)).is_keyframe
    for path in segments(video) + segments(audio):  # <playlist stem>_<UTC YYYYMMDDhhmmssSSS>.ts
        stem, stamp = path.stem.rsplit("_", 1)
        assert path.parent / f"{stem}.m3u8" in (video, audio) and len(stamp) == 17


def test_standard_adds_a_merged_playlist_with_both_streams(tmp_path: Path) -> None:
    clip = encode_clip("h264", duration_s=3.0, audio_codec="aac")
    outputs = MemberOutputs(SEPARATE | {OutputKind.AV})
    _, output = record(tmp_path, clip, outputs)
    merged = output.playlists[OutputKind.AV]
    assert merged.name == f"{NAME}_av.m3u8"
    codecs, duration = probe(merged)
    assert sorted(codecs) == ["aac", "h264"] and duration == pytest.approx(3.0, abs=0.05)
    with av.open(str(segments(merged)[0])) as container:
        kinds = {s.type for s in container.streams}
    assert kinds == {"audio", "video"}  # both from the first segment on
    assert len(demuxed(merged, "video")) == clip.video_frames
    assert len(demuxed(merged, "audio")) == clip.audio_frames


def test_vp8_and_opus_are_encoded_once_for_every_playlist(tmp_path: Path) -> None:
    clip = encode_clip("vp8", duration_s=3.0, audio_codec="opus")
    target_s = 1.0
    writer, output = record(tmp_path, clip, MemberOutputs(SEPARATE | {OutputKind.AV}), target_s)
    stats = writer.stats
    assert (stats.decoders_opened, stats.encoders_opened) == (2, 2)  # three playlists
    assert stats.frames_decoded == len(clip.frames) and stats.copied == 0
    for kind, codecs in ((OutputKind.VIDEO, ["h264"]), (OutputKind.AUDIO, ["aac"])):
        got, duration = probe(output.playlists[kind])
        assert got == codecs and duration == pytest.approx(3.0, abs=0.1)
    video = output.playlists[OutputKind.VIDEO]
    parsed = Playlist.parse(video.read_text()).segments
    assert [s.duration_s for s in parsed[:-1]] == [pytest.approx(target_s, abs=0.07)] * (
        len(parsed) - 1
    )  # a keyframe forced on every segment bound
    for path in segments(video):
        with av.open(str(path)) as container:
            assert next(container.demux(video=0)).is_keyframe
    with av.open(str(segments(video)[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == round(target_s * 15)


def test_original_keeps_opus_as_received(tmp_path: Path) -> None:
    clip = encode_clip(None, duration_s=2.0, audio_codec="opus")
    outputs = MemberOutputs(frozenset({OutputKind.AUDIO}), keep_audio_codec=True)
    writer, output = record(tmp_path, clip, outputs)
    assert writer.stats.copied == clip.audio_frames and writer.stats.encoders_opened == 0
    playlist = output.playlists[OutputKind.AUDIO]
    codecs, duration = probe(playlist)
    assert codecs == ["opus"] and duration == pytest.approx(2.0, abs=0.05)
    assert [bytes(p) for p in demuxed(playlist, "audio")] == [f.data for f in clip.frames]
    samples = 0
    for path in segments(playlist):
        with av.open(str(path)) as container:
            samples += sum(f.samples for f in container.decode(audio=0))
    assert samples == pytest.approx(2.0 * 48_000, abs=960)


def test_snapshots_only_decode_just_the_keyframes_they_need(tmp_path: Path) -> None:
    clip = encode_clip("h264", duration_s=4.0, audio_codec="aac")  # keyframes at 0, 1, 2, 3 s
    outputs = MemberOutputs(frozenset(), snapshot_every_s=1.5)
    writer = MemberWriter(tmp_path, NAME, outputs)
    taken: list[tuple[Path, int]] = []
    for frame in frames_of(clip):
        taken += writer.push([frame]).snapshots
    _, output = writer.finish()
    assert output.playlists == {} and not list(tmp_path.glob("*.m3u8"))
    assert not list(tmp_path.glob("*.ts"))
    # due at 0, 1.5 and 3 s; the one due at 1.5 s waits for the keyframe at 2 s
    assert [t - BASE_US for _, t in taken] == [0, 2_000_000, 3_000_000]
    stats = writer.stats
    assert stats.frames_decoded == 3 and stats.decoders_opened == 1 and stats.encoders_opened == 0
    path = taken[0][0]
    assert path.name == f"{NAME}_video_20231114221320000.jpg"
    with av.open(str(path)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="gray")
    assert image.shape == (240, 320) and 90 < image[120, 200] < 110  # the clip's grey field


def test_a_pause_in_the_input_continues_after_a_discontinuity(tmp_path: Path) -> None:
    clip = encode_clip(None, duration_s=2.0, audio_codec="aac")
    writer = MemberWriter(tmp_path, NAME, MemberOutputs(SEPARATE), segment_target_s=1.0)
    frames = frames_of(clip)
    half = len(frames) // 2
    writer.push(frames[:half])
    pause_us = 30_000_000  # the member left for 30 s
    writer.push(
        [MemberFrame(f.stream, f.kind, f.codec, f.data, f.t_us + pause_us) for f in frames[half:]]
    )
    _, output = writer.finish()
    playlist = output.playlists[OutputKind.AUDIO]
    text = playlist.read_text()
    assert text.count("#EXT-X-DISCONTINUITY") == 1
    parsed = Playlist.parse(text).segments
    assert max(s.duration_s for s in parsed) < 1.2
    assert sum(s.duration_s for s in parsed) == pytest.approx(2.0, abs=0.1)


def test_an_unsubscribed_kind_pauses_its_own_playlist(tmp_path: Path) -> None:
    clip = encode_clip("h264", duration_s=4.0, audio_codec="aac")
    writer = MemberWriter(tmp_path, NAME, MemberOutputs(SEPARATE), segment_target_s=1.0)
    frames = frames_of(clip)
    first = [f for f in frames if f.t_us - BASE_US < 2_000_000]
    writer.push(first)
    closed = writer.set_kinds(audio=False, video=True).segments
    assert [kind for kind, _ in closed] == [OutputKind.AUDIO]  # its open segment, closed now
    writer.push(frames[len(first) :])
    _, output = writer.finish()
    assert probe(output.playlists[OutputKind.AUDIO])[1] == pytest.approx(2.0, abs=0.05)
    assert probe(output.playlists[OutputKind.VIDEO])[1] == pytest.approx(4.0, abs=0.05)


def test_opus_packet_lengths_from_the_toc() -> None:
    clip = encode_clip(None, duration_s=0.1, audio_codec="opus")
    assert {opus_packet_samples(f.data) for f in clip.frames} == {960}  # 20 ms frames
    assert opus_packet_samples(bytes([0xFB, 0x03])) == 3 * 960  # code 3: three 20 ms frames
    assert opus_packet_samples(bytes([0x18])) == 2880  # SILK 60 ms


@pytest.mark.parametrize("video", [False, True])
def test_a_webm_members_merged_playlist_has_the_kinds_its_stream_has(
    tmp_path: Path, video: bool
) -> None:
    """A member publishing WebM (announced as one ``webm`` track): its merged playlist's
    streams are the ones the stream's header announces, so MediaRecorder's ``audio/webm``
    gives an AAC-only playlist (it declared an H.264 stream that never got a packet)."""
    data, _, _ = encode_webm(3.0, video=video)
    writer = MemberWriter(
        tmp_path, "m", MemberOutputs(SEPARATE | {OutputKind.AV}), segment_target_s=1.0
    )
    writer.expect(set(), webm=True)  # (what the recorder says of a member with a webm track)
    chunks = [data[i : i + 4_000] for i in range(0, len(data), 4_000)]
    produced = writer.push(
        MemberFrame("0", Kind.VIDEO, "webm", chunk, 1_000_000 + i * 200_000)
        for i, chunk in enumerate(chunks)
    )
    finished, _ = writer.finish()
    merged = [info for okind, info in [*produced.segments, *finished.segments]
              if okind is OutputKind.AV]  # fmt: skip
    assert merged
    for info in merged:
        with av.open(str(info.path)) as container:
            kinds = sorted(s.type for s in container.streams)
        assert kinds == (["audio", "video"] if video else ["audio"]), info.path.name
