"""Recording one WebRTC channel member: the encode-once path against the ffmpeg CLI.

Run: ``.venv/bin/python bench/member.py``. aiortc hands the server decoded frames, so recording
a member means encoding once (``ingest.member_recorder``: a one-user mix at the member's size,
libx264 + AAC into HLS and an MP4). This measures that path on a 640x360 15 fps VP8 + Opus
clip (made once with the ffmpeg CLI, cached in bench/.cache/): decode with PyAV (as aiortc
does), push the frames through the same ``MixSession`` the recorder uses, and finish the MP4;
against one ``ffmpeg`` run doing the same decode and re-encode to HLS at the same preset and
rate. CPU seconds per media second, median of ``--runs``, and the ratio. Writes
bench/results/member.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
from rusage import cpu_children, cpu_self  # noqa: E402 - bench/ is the script's folder

from ingest.member_recorder import BITS_PER_PIXEL_FRAME, DEFAULT_FPS  # noqa: E402
from mixer.layout import LayoutMode, LayoutSpec  # noqa: E402
from mixer.mix import FileType, MixConfig, MixSession  # noqa: E402
from mixer.transcode import X264_PRESET  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
WIDTH, HEIGHT = 640, 360
SEGMENT_S = 4.0
US = 1_000_000
BITRATE_KBPS = max(200, int(WIDTH * HEIGHT * DEFAULT_FPS * BITS_PER_PIXEL_FRAME / 1000))


def make_clip(seconds: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    clip = CACHE / f"member-360p15-vp8-opus-{seconds}s.webm"
    if not clip.exists():
        tmp = clip.with_suffix(".tmp.webm")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={DEFAULT_FPS}",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
             "-t", str(seconds), "-c:v", "libvpx", "-b:v", "600k", "-deadline", "realtime",
             "-c:a", "libopus", "-b:a", "32k", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(clip)
    return clip


def run_ours(clip: Path) -> float:
    """Decode the clip and record it as the member recorder does; CPU seconds."""
    config = MixConfig(
        width=WIDTH,
        height=HEIGHT,
        fps=DEFAULT_FPS,
        bitrate_kbps=BITRATE_KBPS,
        layout=LayoutSpec(LayoutMode.FLOATING),
        file_types=frozenset({FileType.HLS, FileType.MP4}),
    )
    with tempfile.TemporaryDirectory(prefix="member-bench-") as tmp:
        start = cpu_self()
        session = MixSession(config, Path(tmp), name="index", segment_target_s=SEGMENT_S)
        base = 1_700_000_000 * US
        session.join("m", base)
        with av.open(str(clip)) as container:
            for frame in container.decode(video=0, audio=0):
                t_us = base + int(frame.time * US)
                if isinstance(frame, av.VideoFrame):
                    session.push_video("m", frame, t_us)
                else:
                    session.push_audio("m", frame, t_us)
        session.finish()
        return cpu_self() - start


def run_ffmpeg(clip: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="member-bench-ff-") as tmp:
        start = cpu_children()
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-threads", "1", "-i", str(clip),
             "-c:v", "libx264", "-preset", X264_PRESET, "-tune", "zerolatency", "-threads", "1",
             "-b:v", f"{BITRATE_KBPS}k", "-g", str(round(DEFAULT_FPS * SEGMENT_S)),
             "-r", str(DEFAULT_FPS), "-c:a", "aac", "-b:a", "48k", "-ac", "1",
             "-f", "hls", "-hls_time", str(SEGMENT_S), str(Path(tmp) / "index.m3u8")],
            check=True,
        )  # fmt: skip
        return cpu_children() - start


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    clip = make_clip(args.seconds)
    ours, ff = [], []
    for _ in range(args.runs):  # alternate, so drift in the machine's load hits both
        ours.append(run_ours(clip))
        ff.append(run_ffmpeg(clip))
    result = {
        "clip": clip.name,
        "output": f"{WIDTH}x{HEIGHT} {DEFAULT_FPS} fps {BITRATE_KBPS} kbps libx264 {X264_PRESET}"
        " + AAC, HLS (ours also builds the MP4)",
        "ours_cpu_s_per_media_s": statistics.median(ours) / args.seconds,
        "ffmpeg_cpu_s_per_media_s": statistics.median(ff) / args.seconds,
        "ratio_ours_over_ffmpeg": statistics.median(ours) / statistics.median(ff),
        "samples_cpu_s": {"ours": ours, "ffmpeg": ff},
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "member.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
