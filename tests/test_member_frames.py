"""A channel mix's decoders of WebSocket members: a member that leaves leaves nothing behind."""

from __future__ import annotations

import threading

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
