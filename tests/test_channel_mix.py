"""Mixing a channel: two WebRTC publishers (red and green) recorded in one layout; the MP4's
windows hold their colours where the layout puts them."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from media import encode_clip, encode_webm
from webrtc_peer import accept_answer, make_offer

from ingest.channel_mix import ChannelMixRecorder, UidSelector
from ingest.channels import ChannelRegistry, MediaFrame, TrackInfo, Transport
from ingest.member_frames import FrameDecoders
from ingest.webrtc import WebRtcSettings, WhipServer
from mixer.compositor import rgb_to_yuv, solid_frame
from mixer.layout import LayoutMode, LayoutSpec, compute_layout
from mixer.mix_config import FileType, MixConfig

pytestmark = pytest.mark.slow

WAIT_S = 30.0
W, H = 320, 180


async def test_two_publishers_mixed_side_by_side(tmp_path: Path) -> None:
    whip = WhipServer(ChannelRegistry(), WebRtcSettings(host_addresses="127.0.0.1"))
    config = MixConfig(
        width=W,
        height=H,
        fps=15,
        bitrate_kbps=400,
        layout=LayoutSpec(LayoutMode.ADAPTIVE),
        file_types=frozenset({FileType.HLS, FileType.MP4}),
    )
    mix = ChannelMixRecorder(whip.registry, "app", "room", tmp_path, config, segment_target_s=1.0)
    await mix.start()
    watch = whip.registry.subscribe("app", "room")
    peers = {"red": await make_offer("vp8", rgb=(255, 0, 0), audio=False)}
    peers["green"] = await make_offer("vp8", rgb=(0, 255, 0), audio=False)
    try:
        for uid, pc in peers.items():
            _, answer = await whip.publish("app", "room", uid, pc.localDescription.sdp)
            await accept_answer(pc, answer)
        counts = {"red": 0, "green": 0}
        async with asyncio.timeout(WAIT_S):
            while min(counts.values()) < 45:  # 1.5 s of each at aiortc's 30 fps
                frame = await watch.next_media()
                assert frame is not None
                counts[frame.uid] += frame.kind == "video"
        assert mix.members == {"red", "green"}
        output = await mix.stop()
    finally:
        for pc in peers.values():
            await pc.close()
        await whip.aclose()
    assert output is not None and len(output.mp4s) == 1
    windows = {w.uid: w.rect for w in compute_layout(W, H, ["red", "green"], config.layout)}
    with av.open(str(output.mp4s[0][0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    last = frames[-3]  # both are publishing by the end
    for uid, channel in (("red", 0), ("green", 1)):
        rect = windows[uid]
        pixel = last[rect.y + rect.height // 2, rect.x + rect.width // 2]
        assert pixel[channel] > 180 and min(pixel[c] for c in range(3) if c != channel) < 80, (
            uid,
            pixel,
        )
    assert mix.stats.video_in > 60 and mix.stats.joins == 2


@pytest.mark.parametrize("excluded", ["audio", "video"])
async def test_a_webm_publisher_is_filtered_per_kind(
    tmp_path: Path, excluded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WebM track holds both kinds: unsubscribing a uid's audio keeps its audio out of the
    mix (it was mixed all the same), and unsubscribing its video keeps its audio in (the
    whole track was skipped as "video"). The kind left out is not decoded either (an
    audio-only mix decoded every WebM member's video)."""
    decoded: list[str] = []
    decode = FrameDecoders._decode

    def counting(self: FrameDecoders, stream: str, codec: str, *args: Any) -> Any:
        decoded.append(codec)
        return decode(self, stream, codec, *args)

    monkeypatch.setattr(FrameDecoders, "_decode", counting)
    registry = ChannelRegistry()
    nobody_but_42 = UidSelector(exclude=frozenset({"42"}))
    selectors = {"audio_uids": nobody_but_42} if excluded == "audio" else {}
    if excluded == "video":
        selectors = {"video_uids": nobody_but_42}
    config = MixConfig(width=W, height=H, fps=15, bitrate_kbps=200)
    mix = ChannelMixRecorder(registry, "app", "room", tmp_path, config, **selectors)
    member = await registry.join("app", "room", "42", Transport.WS)
    registry.set_track("app", "room", member, TrackInfo("0", "video", "webm"))
    data, video_frames, audio_frames = await asyncio.to_thread(encode_webm, 2.0)
    # joined before the recorder starts: its first event (the members, read before any media)
    # lets the member in
    await mix.start()
    channel = registry.get("app", "room")
    assert channel is not None
    for i in range(0, len(data), 8_000):
        chunk = data[i : i + 8_000]
        channel.publish(member, MediaFrame("42", "0", "video", chunk, i, True, "webm"))
    await mix.stop()  # (the media queued is taken first)
    stats = mix.stats
    if excluded == "audio":
        assert stats.audio_in == 0 and stats.video_in >= video_frames - 1
        assert "opus" not in decoded and decoded.count("vp8") == video_frames
    else:
        assert stats.video_in == 0 and stats.audio_in >= audio_frames - 1
        assert "vp8" not in decoded and decoded.count("opus") == audio_frames
    assert stats.undecodable == 0


@pytest.mark.parametrize("audio_codec", ["aac", "opus"])
async def test_a_websocket_members_audio_is_heard_in_the_mix(
    tmp_path: Path, audio_codec: str
) -> None:
    """A WebSocket member's encoded audio is decoded and mixed: its tone is in the MP4 (the
    mixer writes an AAC track of silence anyway, so a track's presence proves nothing)."""
    tone_hz = 440.0
    registry = ChannelRegistry()
    config = MixConfig(width=W, height=H, fps=15, bitrate_kbps=200, file_types=frozenset(FileType))
    mix = ChannelMixRecorder(registry, "app", "room", tmp_path, config)
    member = await registry.join("app", "room", "42", Transport.WS)
    registry.set_track("app", "room", member, TrackInfo("0", "video", "h264"))
    registry.set_track("app", "room", member, TrackInfo("1", "audio", audio_codec))
    clip = await asyncio.to_thread(
        encode_clip, "h264", duration_s=3.0, audio_codec=audio_codec, tone_hz=tone_hz
    )
    await mix.start()  # (joined before: the members' snapshot lets it in first)
    channel = registry.get("app", "room")
    assert channel is not None
    for f in clip.frames:
        track = "0" if f.kind == "video" else "1"
        channel.publish(
            member, MediaFrame("42", track, f.kind, f.data, f.pts_us, f.keyframe, f.codec)
        )
    output = await mix.stop()
    assert output is not None and len(output.mp4s) == 1 and mix.stats.undecodable == 0
    with av.open(str(output.mp4s[0][0])) as container:
        pcm = np.concatenate(
            [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
        )
    middle = pcm[len(pcm) // 4 : 3 * len(pcm) // 4]  # (clear of the start and the end)
    assert np.sqrt(np.mean(middle**2)) > 0.05
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    peak_hz = np.argmax(spectrum) * 48_000 / len(middle)
    assert abs(peak_hz - tone_hz) < 5, peak_hz


async def test_a_members_two_audio_tracks_are_summed_and_one_video_is_shown(
    tmp_path: Path,
) -> None:
    """A desktop agent's microphone and system audio (two audio tracks of one member) are
    both heard, at their levels (laid end to end as one input, they ran at twice the rate and
    came out garbled); of its two video tracks one is shown (they took turns, frame by frame)."""
    registry = ChannelRegistry()
    config = MixConfig(width=W, height=H, fps=15, bitrate_kbps=200, file_types=frozenset(FileType))
    mix = ChannelMixRecorder(registry, "app", "room", tmp_path, config)
    member = await registry.join("app", "room", "42", Transport.WS)
    clips = {}
    for track, (kind, hz) in {"1": ("audio", 440.0), "2": ("audio", 660.0),
                              "3": ("video", 0.0), "4": ("video", 0.0)}.items():  # fmt: skip
        registry.set_track(
            "app", "room", member, TrackInfo(track, kind, "opus" if kind == "audio" else "h264")
        )
        if kind == "audio":
            clips[track] = await asyncio.to_thread(
                encode_clip, None, duration_s=3.0, audio_codec="opus", tone_hz=hz
            )
    video = await asyncio.to_thread(encode_clip, "h264", duration_s=3.0, audio_codec=None)
    await mix.start()
    channel = registry.get("app", "room")
    assert channel is not None
    frames = [(track, f) for track, clip in clips.items() for f in clip.frames]
    frames += [(track, f) for track in ("3", "4") for f in video.frames]
    for track, f in sorted(frames, key=lambda tf: (tf[1].pts_us, tf[0])):
        channel.publish(
            member, MediaFrame("42", track, f.kind, f.data, f.pts_us, f.keyframe, f.codec)
        )
    output = await mix.stop()
    assert output is not None and mix.stats.undecodable == 0
    assert mix.stats.video_ignored == video.video_frames  # (track 4: track 3 is shown)
    with av.open(str(output.mp4s[0][0])) as container:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    middle = pcm[len(pcm) // 4 : 3 * len(pcm) // 4]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    hz = np.fft.rfftfreq(len(middle), 1 / 48_000)
    levels = [spectrum[np.abs(hz - f) < 5].max() for f in (440.0, 660.0)]
    assert min(levels) / max(levels) > 0.7, levels  # both tones, at one level
    # nothing else: the two summed, not cut and laid end to end
    near = (np.abs(hz - 440) < 20) | (np.abs(hz - 660) < 20)
    assert (spectrum[near] ** 2).sum() / (spectrum**2).sum() > 0.95


def red_h264(seconds: float, fps: int = 15) -> list[tuple[bytes, int, bool]]:
    """A solid red 160x120 H.264 clip: (Annex B frame, pts µs, keyframe)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 160, 120, "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.options = {"bframes": "0", "g": str(fps)}
    out = []
    for i in range(int(seconds * fps) + 1):
        frame = solid_frame(160, 120, rgb_to_yuv("#FF0000")) if i < seconds * fps else None
        if frame is not None:
            frame.pts = i
        for p in encoder.encode(frame):
            out.append((bytes(p), int(p.pts * 1_000_000 / fps), p.is_keyframe))
    return out


async def test_a_member_only_heard_takes_no_window(tmp_path: Path) -> None:
    """subscribeVideoUids names the host only: an audience member heard, not seen, who came
    first, took a window (the whole canvas, in floating layout), and the host a corner tile.
    The host fills the canvas now; the other is heard."""
    registry = ChannelRegistry()
    config = MixConfig(width=W, height=H, fps=15, bitrate_kbps=300, file_types=frozenset(FileType))
    only_host = UidSelector(only=frozenset({"100"}))
    mix = ChannelMixRecorder(registry, "app", "room", tmp_path, config, video_uids=only_host)
    audience = await registry.join("app", "room", "5", Transport.WS)
    registry.set_track("app", "room", audience, TrackInfo("1", "audio", "opus"))
    host = await registry.join("app", "room", "100", Transport.WS)
    registry.set_track("app", "room", host, TrackInfo("0", "video", "h264"))
    voice = await asyncio.to_thread(encode_clip, None, duration_s=2.0, audio_codec="opus")
    picture = await asyncio.to_thread(red_h264, 2.0)
    await mix.start()
    channel = registry.get("app", "room")
    assert channel is not None
    for f in voice.frames:
        channel.publish(audience, MediaFrame("5", "1", "audio", f.data, f.pts_us, True, "opus"))
    for data, pts, key in picture:
        channel.publish(host, MediaFrame("100", "0", "video", data, pts, key, "h264"))
    output = await mix.stop()
    assert output is not None and mix.stats.audio_in > 0
    with av.open(str(output.mp4s[0][0])) as container:
        last = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][-2]
    for x, y in ((W // 2, H // 2), (8, 8), (W - 8, H - 8)):  # red all over: no other window
        r, g, b = (int(v) for v in last[y, x])
        assert r > 180 and g < 80 and b < 80, ((x, y), (r, g, b))


async def test_a_member_unseen_midway_is_heard_on(tmp_path: Path) -> None:
    """update stops recording a WebM member's video a third of the way in: it is heard to
    the end (taking its window away used to make it leave and join again, and the leave
    dropped its WebM demuxer: every later chunk undecodable, its audio gone)."""
    registry = ChannelRegistry()
    config = MixConfig(width=W, height=H, fps=15, bitrate_kbps=200)
    mix = ChannelMixRecorder(registry, "app", "room", tmp_path, config)
    member = await registry.join("app", "room", "42", Transport.WS)
    registry.set_track("app", "room", member, TrackInfo("0", "video", "webm"))
    data, _, audio_frames = await asyncio.to_thread(encode_webm, 3.0)
    await mix.start()
    channel = registry.get("app", "room")
    assert channel is not None and mix._sub is not None
    chunks = [data[i : i + 8_000] for i in range(0, len(data), 8_000)]
    third = len(chunks) // 3
    idle, taken = asyncio.Event(), [0]
    next_media = mix._sub.next_media

    async def watched() -> Any:  # (the media task asks for its next frame: it is idle)
        if taken[0] == third:
            idle.set()
        taken[0] += 1
        return await next_media()

    mix._sub.next_media = watched  # type: ignore[method-assign]
    for i, chunk in enumerate(chunks[:third]):
        channel.publish(member, MediaFrame("42", "0", "video", chunk, i, True, "webm"))
    await idle.wait()
    # a chunk comes, and at once the update: the media task wakes to it while the update waits
    channel.publish(member, MediaFrame("42", "0", "video", chunks[third], third, True, "webm"))
    await mix.update_subscriptions(UidSelector(), UidSelector(exclude=frozenset({"42"})))
    for i, chunk in enumerate(chunks[third + 1 :], third + 1):
        channel.publish(member, MediaFrame("42", "0", "video", chunk, i, True, "webm"))
    await mix.stop()
    assert mix.stats.undecodable == 0 and mix.stats.audio_in >= audio_frames - 1, mix.stats


async def test_a_member_leaving_during_an_update_stays_gone(tmp_path: Path) -> None:
    """update works through the members while it waits on the mix thread; one that left
    meanwhile was given its window back or joined again, and stayed as an empty window for
    the rest of the recording (its leave had been handled already)."""
    registry = ChannelRegistry()
    config = MixConfig(width=W, height=H, fps=10, bitrate_kbps=100)
    mix = ChannelMixRecorder(registry, "app", "room", tmp_path, config)
    members = {uid: await registry.join("app", "room", uid, Transport.WS) for uid in "ABC"}
    all_in, leave_taken = asyncio.Event(), asyncio.Event()
    on_event = mix._on_event

    async def watched(event: Any) -> None:
        if event.kind == "leave":
            leave_taken.set()  # (the events task took it: as far as it may, it goes on now)
        await on_event(event)
        if mix.members == set("ABC"):
            all_in.set()

    mix._on_event = watched  # type: ignore[method-assign]
    await mix.start()
    await all_in.wait()
    hide = mix._mix.hide

    async def leave_meanwhile(uid: str, t_us: int) -> None:
        registry.leave("app", "room", members["C"])
        await leave_taken.wait()
        await hide(uid, t_us)

    mix._mix.hide = leave_meanwhile  # type: ignore[method-assign]
    await mix.update_subscriptions(UidSelector(), UidSelector(exclude=frozenset({"A"})))
    output = await mix.stop()
    assert output is not None
    assert mix.members == {"A", "B"} and mix._seen == {"B"}, (mix.members, mix._seen)


async def test_a_websocket_members_audio_and_video_share_its_clock(tmp_path: Path) -> None:
    """A WebSocket publisher's video reaches the server 80 ms after its pts (its encoder's
    latency) and its audio 5 ms after: both are placed on its one clock, so frames of the same
    pts land at the same place (each track placed by its own first arrival put the video
    75 ms late against the audio, for good)."""
    registry = ChannelRegistry()
    config = MixConfig(width=W, height=H, fps=15, bitrate_kbps=200)
    mix = ChannelMixRecorder(registry, "app", "room", tmp_path, config)
    member = await registry.join("app", "room", "42", Transport.WS)
    registry.set_track("app", "room", member, TrackInfo("0", "video", "h264"))
    registry.set_track("app", "room", member, TrackInfo("1", "audio", "opus"))
    clip = await asyncio.to_thread(encode_clip, "h264", duration_s=4.0, audio_codec="opus")
    placed: dict[str, list[tuple[int, int]]] = {"audio": [], "video": []}  # (t_us, pts_us)
    decoded_pts: dict[int, int] = {}
    decoders = mix._decoders
    frames_of = decoders.frames_of

    async def watched(media: MediaFrame, *kinds: Any) -> Any:
        out = await frames_of(media, *kinds)
        for _, data, pts_us in out:
            decoded_pts[id(data)] = pts_us
        return out

    decoders.frames_of = watched  # type: ignore[method-assign]
    inner = mix._mix
    push_audio, push_video = inner.push_audio, inner.push_video

    async def audio(uid: str, frame: Any, t_us: int, *args: Any, **kwargs: Any) -> None:
        placed["audio"].append((t_us, decoded_pts[id(frame)]))
        await push_audio(uid, frame, t_us, *args, **kwargs)

    async def video(uid: str, frame: Any, t_us: int, *args: Any) -> bool:
        placed["video"].append((t_us, decoded_pts[id(frame)]))
        return await push_video(uid, frame, t_us, *args)

    inner.push_audio, inner.push_video = audio, video  # type: ignore[method-assign]
    await mix.start()
    channel = registry.get("app", "room")
    assert channel is not None
    base = time.monotonic() - 10.0  # arrivals in the recent past: nothing waits
    arrivals = sorted(
        (f.pts_us + (80_000 if f.kind == "video" else 5_000), i) for i, f in enumerate(clip.frames)
    )
    for delay_us, i in arrivals:
        f = clip.frames[i]
        track = "0" if f.kind == "video" else "1"
        channel.publish(
            member,
            MediaFrame(
                "42", track, f.kind, f.data, f.pts_us, f.keyframe, f.codec,
                received=base + delay_us / 1e6,
            ),
        )  # fmt: skip
    await mix.stop()
    offsets = {kind: {t - pts for t, pts in placed[kind]} for kind in placed}
    assert len(offsets["audio"]) == 1 and offsets["audio"] == offsets["video"], offsets
