"""A channel mix's decoders of WebSocket members: a member that leaves leaves nothing behind."""

from __future__ import annotations

import threading

import numpy as np
from media import encode_clip, encode_webm

from ingest.channels import MediaFrame
from ingest.member_frames import FrameDecoders


def test_a_member_that_left_holds_no_decoder_and_no_thread() -> None:
    clip = encode_clip("h264", duration_s=0.5, audio_codec="opus")
    webm, _, _ = encode_webm(1.0)
    decoders = FrameDecoders()
    before = {t.ident for t in threading.enumerate()}
    for uid in ("a", "b"):
        for f in clip.frames[:4]:
            media = MediaFrame(uid, "0" if f.kind == "video" else "1", f.kind, f.data, f.pts_us)
            decoders.decode(media, f.codec)
        decoders.decode(MediaFrame(uid, "2", "video", webm[:20_000], 0), "webm")
    readers = [t for t in threading.enumerate() if t.ident not in before]
    assert len(readers) == 2  # a WebM demuxer reads on a thread of its own, per member
    decoders.forget("a")
    assert {key[0].split("/")[0] for key in decoders._contexts} == {"b"}
    assert sum(t.is_alive() for t in readers) == 1  # a's reader ended, b's still reads
    decoders.forget()
    assert not decoders._contexts and not any(t.is_alive() for t in readers)


def test_pictures_decoded_with_b_frames_keep_their_own_times() -> None:
    """With B-frames the decoder gives pictures in display order, one or two packets late:
    each keeps its own time (it took the time of the packet that released it: off by up to
    four frames, stepping back, so the compositor dropped some)."""
    width, fps = 320, 15
    clip = encode_clip("h264", width=width, fps=fps, duration_s=1.0, audio_codec=None, bframes=2)
    assert any(f.dts_us is not None and f.dts_us < f.pts_us for f in clip.frames)
    decoders = FrameDecoders()
    times = []
    for f in clip.frames:
        media = MediaFrame("a", "0", "video", f.data, f.pts_us, f.keyframe, "h264", f.dts_us)
        for _, picture, pts_us in decoders.decode(media, "h264"):
            index = round(pts_us * fps / 1_000_000)
            luma = picture.to_ndarray()[0]  # (its top row: the bar at 8 x index)
            assert int(np.argmax(luma > 200)) == (index * 8) % width, (index, pts_us)
            times.append(pts_us)
    assert times == sorted(times) and len(times) >= clip.video_frames - 2  # (delay at the end)
