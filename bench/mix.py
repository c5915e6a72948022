"""Mixer benchmark: CPU of a composite mix per output second, against the ffmpeg CLI.

Run: ``.venv/bin/python bench/mix.py``. It makes a 640x360 15 fps H.264 clip once (cached in
bench/.cache/), then for 4, 9 and 16 inputs of that clip mixes a 1280x720 15 fps adaptive
layout (2x2, 3x3, 4x4 grids) with mono AAC (silence: no input audio) into HLS, two ways:

- ours: one process decodes every input with PyAV (one thread per decoder), pushes the frames
  through a :class:`~mixer.mix.MixSession` (compositor, libx264, AAC, HlsWriter), measured as
  the process CPU time (user + system);
- ffmpeg: one ``ffmpeg`` run doing the same composite with a filter graph (``scale`` per input,
  ``xstack`` at the same window positions, ``pad`` to the canvas), libx264 at the same preset
  and rate, ``-threads 1`` for decoders, filters and encoder, measured from ``RUSAGE_CHILDREN``.

Figures are CPU seconds per output second (median of ``--runs``) and ours over ffmpeg's; "mixes
in real time" is first estimated as the machine's cores over that figure, then measured for
the ``--realtime`` input counts: k mixes run at once (one process each, as fast as they go)
hold real time when all finish the clip's seconds of media within that many seconds of wall
time. Writes bench/results/mix.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
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

from mixer.layout import LayoutMode, LayoutSpec, compute_layout  # noqa: E402
from mixer.mix import MixSession  # noqa: E402
from mixer.mix_config import MixConfig  # noqa: E402
from mixer.transcode import X264_PRESET  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
IN_W, IN_H, FPS = 640, 360, 15
OUT_W, OUT_H = 1280, 720
BITRATE_KBPS = 2000
SEGMENT_S = 4.0
INPUT_COUNTS = (4, 9, 16)
US_PER_S = 1_000_000


def make_clip(seconds: int) -> Path:
    """The input clip, made once with the ffmpeg CLI (keyframe every 2 s, no B-frames)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    clip = CACHE / f"clip-360p15-h264-{seconds}s.mp4"
    if not clip.exists():
        tmp = clip.with_suffix(".tmp.mp4")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size={IN_W}x{IN_H}:rate={FPS}",
             "-c:v", "libx264", "-preset", "veryfast", "-g", str(2 * FPS), "-bf", "0",
             "-pix_fmt", "yuv420p", "-t", str(seconds), str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(clip)
    return clip


def _config() -> MixConfig:
    return MixConfig(
        width=OUT_W,
        height=OUT_H,
        fps=FPS,
        bitrate_kbps=BITRATE_KBPS,
        layout=LayoutSpec(LayoutMode.ADAPTIVE),
    )


def run_ours(clip: Path, n: int) -> float:
    """Decode n inputs and mix them with MixSession; return the CPU seconds it took."""
    with tempfile.TemporaryDirectory(prefix="mix-bench-") as tmp:
        start = cpu_self()
        session = MixSession(_config(), Path(tmp), segment_target_s=SEGMENT_S)
        containers = [av.open(str(clip)) for _ in range(n)]
        for c in containers:
            c.streams.video[0].thread_type = "SLICE"
            c.streams.video[0].codec_context.thread_count = 1
        decoders = [c.decode(video=0) for c in containers]
        base = 1_700_000_000_000_000
        k = 0
        while True:
            t_us = base + k * US_PER_S // FPS
            frames = [next(d, None) for d in decoders]
            if any(f is None for f in frames):
                break
            for i, frame in enumerate(frames):
                assert frame is not None  # Checked above.
                session.push_video(str(i + 1), frame, t_us)
            k += 1
        session.finish()
        for c in containers:
            c.close()
        return cpu_self() - start


def _filter_graph(n: int) -> str:
    uids = [str(i + 1) for i in range(n)]
    windows = compute_layout(OUT_W, OUT_H, uids, LayoutSpec(LayoutMode.ADAPTIVE))
    parts = [f"[{i}:v]scale={w.rect.width}:{w.rect.height}[v{i}]" for i, w in enumerate(windows)]
    layout = "|".join(f"{w.rect.x}_{w.rect.y}" for w in windows)
    inputs = "".join(f"[v{i}]" for i in range(n))
    parts.append(f"{inputs}xstack=inputs={n}:layout={layout}:fill=black,")
    parts[-1] += f"pad={OUT_W}:{OUT_H}:0:0:black[out]"
    return ";".join(parts)


def run_ffmpeg(clip: Path, n: int) -> float:
    """The same mix with one ffmpeg run; return its CPU seconds."""
    with tempfile.TemporaryDirectory(prefix="mix-bench-ff-") as tmp:
        inputs: list[str] = []
        for _ in range(n):
            inputs += ["-threads", "1", "-i", str(clip)]
        start = cpu_children()
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", *inputs,
             "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono",
             "-filter_complex", _filter_graph(n), "-filter_complex_threads", "1",
             "-map", "[out]", "-map", f"{n}:a", "-shortest",
             "-c:v", "libx264", "-preset", X264_PRESET, "-tune", "zerolatency",
             "-threads", "1", "-b:v", f"{BITRATE_KBPS}k", "-g", str(round(FPS * SEGMENT_S)),
             "-r", str(FPS), "-c:a", "aac", "-b:a", "48k",
             "-f", "hls", "-hls_time", str(SEGMENT_S), str(Path(tmp) / "out.m3u8")],
            check=True,
        )  # fmt: skip
        return cpu_children() - start


def concurrent_wall_s(clip: Path, n: int, k: int) -> float:
    """Wall seconds for k mixes of n inputs run at once, one process each (no shared GIL)."""
    start = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, __file__, "--one", str(n)], stdout=subprocess.DEVNULL)
        for _ in range(k)
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"a concurrent mix failed with {proc.returncode}")
    return time.monotonic() - start


def most_realtime_mixes(clip: Path, n: int, seconds: int, guess: int) -> dict[str, Any]:
    """The most mixes of n inputs that finish ``seconds`` of media within ``seconds`` of wall
    time when run together: measured, starting from the CPU estimate and stepping by one."""
    tried: dict[int, float] = {}
    k = max(1, guess)
    while k not in tried:
        tried[k] = concurrent_wall_s(clip, n, k)
        k = k + 1 if tried[k] <= seconds else k - 1
        if k < 1 or k > 4 * max(1, guess):
            break
    held = [k for k, wall in tried.items() if wall <= seconds]
    return {"most_held": max(held, default=0), "wall_s_by_count": tried}


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    """Median and all samples of `runs` calls."""
    samples = [fn() for _ in range(runs)]
    return statistics.median(samples), samples


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    p.add_argument("--seconds", type=int, default=20, help="length of the input clip")
    p.add_argument("--inputs", type=int, nargs="*", default=list(INPUT_COUNTS))
    p.add_argument("--out", type=Path, default=RESULTS / "mix.json")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one mix of N inputs
    p.add_argument(
        "--realtime", type=int, nargs="*", default=[9], help="input counts to find the most "
        "mixes held in real time for (concurrent processes; empty: skip)"
    )  # fmt: skip
    args = p.parse_args()
    clip = make_clip(args.seconds)
    if args.one:
        run_ours(clip, args.one)
        return
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "clip": clip.name,
        "output": f"{OUT_W}x{OUT_H} {FPS} fps {BITRATE_KBPS} kbps, libx264 {X264_PRESET}",
        "media_s": args.seconds,
        "runs": args.runs,
        "cores": cores,
        "pyav": av.__version__,
        "ffmpeg_cli": subprocess.run(
            ["ffmpeg", "-version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0],
        "python": platform.python_version(),
        "mixes": {},
    }
    for n in args.inputs:
        ours, ours_samples = median_of(args.runs, functools.partial(run_ours, clip, n))
        ff, ff_samples = median_of(args.runs, functools.partial(run_ffmpeg, clip, n))
        row = {
            "ours_cpu_s_per_s": ours / args.seconds,
            "ffmpeg_cpu_s_per_s": ff / args.seconds,
            "ratio_ours_over_ffmpeg": ours / ff,
            "ours_realtime_mixes_estimate": int(cores / (ours / args.seconds)),
            "ffmpeg_realtime_mixes_estimate": int(cores / (ff / args.seconds)),
            "ours_samples_cpu_s": ours_samples,
            "ffmpeg_samples_cpu_s": ff_samples,
        }
        if n in args.realtime:
            row["ours_realtime_measured"] = most_realtime_mixes(
                clip, n, args.seconds, row["ours_realtime_mixes_estimate"]
            )
        result["mixes"][str(n)] = row
        print(
            f"{n:2d} inputs: ours {row['ours_cpu_s_per_s']:.3f}  ffmpeg "
            f"{row['ffmpeg_cpu_s_per_s']:.3f} CPU-s/s  ratio {row['ratio_ours_over_ffmpeg']:.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
