"""Writer micro-benchmark: CPU of ``HlsWriter.write`` per stream-second, against the ffmpeg CLI.

Run: ``.venv/bin/python bench/writer.py``. It makes a 30 s 1280x720 15 fps H.264 (no B-frames)
+ mono 48 kHz Opus (20 ms frames) clip once (cached in bench/.cache/), demuxes it once into
memory as the server receives it (Annex B H.264 access units and raw Opus packets, times in
µs), then feeds it through an :class:`HlsWriter` (4 s segments) into a temporary directory and
measures the process CPU time (user + system). The ffmpeg CLI does the same job
(``-c:v copy -c:a aac -b:a 64k -ac 1 -f hls -hls_time 4``, no ``-re``) and is measured from
``RUSAGE_CHILDREN``. Both run full (video copy + Opus → AAC) and audio-only (``-vn``); every
figure is the median of ``--runs`` runs. Writes bench/results/writer.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
from rusage import cpu_children, cpu_self  # noqa: E402 - bench/ is the script's folder

from mixer.hls import HlsWriter  # noqa: E402
from mixer.sources import EncodedFrame, MemoryClip  # noqa: E402
from mixer.tracks import Codec, Kind, TrackSpec  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
CLIP_S = 30
WIDTH, HEIGHT, FPS = 1280, 720, 15
SEGMENT_S = 4.0
VIDEO, AUDIO = 1, 2
BASE_US = 1_700_000_000_000_000  # Client clocks are wall clocks, not zero-based.


def make_clip() -> Path:
    """The benchmark clip, made once with the ffmpeg CLI (same recipe as bench/ingest.py)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    clip = CACHE / f"clip-720p15-h264-opus-{CLIP_S}s.mkv"
    if not clip.exists():
        tmp = clip.with_suffix(".tmp.mkv")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
             "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-bf", "0",
             "-pix_fmt", "yuv420p", "-c:a", "libopus", "-ac", "1", "-frame_duration", "20",
             "-t", str(CLIP_S), str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(clip)
    return clip


def feed_writer(frames: tuple[EncodedFrame, ...], *, audio_only: bool) -> float:
    """Feed the frames through one HlsWriter; return the CPU seconds it took."""
    with tempfile.TemporaryDirectory(prefix="writer-bench-") as tmp:
        writer = HlsWriter(Path(tmp), target_segment_s=SEGMENT_S)
        if not audio_only:
            writer.add_track(TrackSpec(VIDEO, Kind.VIDEO, Codec.H264, WIDTH, HEIGHT))
        writer.add_track(TrackSpec(AUDIO, Kind.AUDIO, Codec.OPUS, sample_rate=48_000))
        items = [
            (VIDEO if f.kind == "video" else AUDIO, f.data, f.pts_us + BASE_US,
             f.dts_us + BASE_US, f.keyframe)
            for f in frames
            if not (audio_only and f.kind == "video")
        ]  # fmt: skip
        arrival = time.time()
        write = writer.write
        start = cpu_self()
        for track, data, pts, dts, key in items:
            write(track, data, pts, keyframe=key, dts_us=dts, arrival=arrival)
        writer.finish()
        return cpu_self() - start


def run_ffmpeg(clip: Path, *, audio_only: bool) -> float:
    """One ffmpeg CLI run (no -re) to HLS; return its CPU seconds."""
    with tempfile.TemporaryDirectory(prefix="writer-bench-ff-") as tmp:
        video = ["-vn"] if audio_only else ["-c:v", "copy"]
        start = cpu_children()
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(clip), *video,
             "-c:a", "aac", "-b:a", "64k", "-ac", "1",
             "-f", "hls", "-hls_time", "4",
             str(Path(tmp) / "out.m3u8")],
            check=True,
        )  # fmt: skip
        return cpu_children() - start


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    """Median and all samples of `runs` calls (one warm-up call first)."""
    fn()
    samples = [fn() for _ in range(runs)]
    return statistics.median(samples), samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    p.add_argument("--no-ffmpeg", action="store_true", help="skip the ffmpeg comparison")
    p.add_argument("--out", type=Path, default=RESULTS / "writer.json")
    args = p.parse_args()
    if not shutil.which("ffmpeg"):
        sys.exit("ffmpeg is needed (apt-get install ffmpeg)")
    clip_path = make_clip()
    clip = MemoryClip(clip_path)
    media_s = clip.period_us / 1_000_000
    frames = clip.frames
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "clip": clip_path.name,
        "media_s": media_s,
        "video_frames": sum(f.kind == "video" for f in frames),
        "audio_frames": sum(f.kind == "audio" for f in frames),
        "runs": args.runs,
        "pyav": av.__version__,
        "ffmpeg_lib": av.ffmpeg_version_info,
        "ffmpeg_cli": subprocess.run(
            ["ffmpeg", "-version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0],
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    for mode, audio_only in (("full", False), ("audio", True)):
        ours, ours_samples = median_of(
            args.runs, functools.partial(feed_writer, frames, audio_only=audio_only)
        )
        row: dict[str, Any] = {
            "writer_cpu_s_per_stream_s": ours / media_s,
            "writer_min_cpu_s_per_stream_s": min(ours_samples) / media_s,
            "writer_samples_cpu_s": ours_samples,
        }
        if not args.no_ffmpeg:
            ff, ff_samples = median_of(
                args.runs, functools.partial(run_ffmpeg, clip_path, audio_only=audio_only)
            )
            row |= {
                "ffmpeg_cpu_s_per_stream_s": ff / media_s,
                "ffmpeg_min_cpu_s_per_stream_s": min(ff_samples) / media_s,
                "ffmpeg_samples_cpu_s": ff_samples,
                "ratio_writer_over_ffmpeg": ours / ff,
            }
        result[mode] = row
        ff_text = ""
        if "ffmpeg_cpu_s_per_stream_s" in row:
            ff_text = (
                f"  ffmpeg {row['ffmpeg_cpu_s_per_stream_s']:.5f}"
                f"  ratio {row['ratio_writer_over_ffmpeg']:.2f}"
            )
        print(f"{mode:5s}: writer {row['writer_cpu_s_per_stream_s']:.5f} CPU-s/stream-s{ff_text}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
