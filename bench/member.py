"""Recording one channel member (individual mode): our two paths against the ffmpeg CLI.

Run: ``.venv/bin/python bench/member.py``. Both write a member's audio and video as separate
HLS playlists (the cloud recording API's streamMode "default") through
``mixer.member_writer.MemberWriter``, the synchronous core of ``ingest.individual``:

* **remux**: H.264 + AAC frames as a WebSocket publisher sends them (read from an MPEG-TS clip
  into memory first: the server gets them from the network) copied into the playlists, against
  one ``ffmpeg -c copy`` run writing the same two playlists from the clip;
* **transcode**: a VP8 + Opus clip decoded with PyAV (what aiortc does for a WebRTC member before
  the recorder sees it; counted on our side) and encoded once to H.264 (libx264 veryfast,
  zerolatency) + AAC, against one ``ffmpeg`` run doing the same decode and encode.

Clips are 640x360 15 fps, made once with the ffmpeg CLI and cached in bench/.cache/. CPU seconds
per media second, median of ``--runs`` (alternating, so drift in the machine's load hits both
sides), and the ratio ours / ffmpeg. Writes bench/results/member.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
from rusage import cpu_children, cpu_self  # noqa: E402 - bench/ is the script's folder

from mixer.member_writer import MemberFrame, MemberOutputs, MemberWriter  # noqa: E402
from mixer.tracks import Kind  # noqa: E402
from mixer.transcode import X264_PRESET, X264_TUNE  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
WIDTH, HEIGHT, FPS = 640, 360, 15
SEGMENT_S = 4.0
US = 1_000_000
BASE_US = 1_700_000_000 * US  # the recording's clock


def make_clip(kind: str, seconds: int) -> Path:
    """``remux``: H.264 + AAC in MPEG-TS (Annex B, ADTS: as a client sends them);
    ``transcode``: VP8 + Opus in WebM (as a browser sends them)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if kind == "remux":
        clip = CACHE / f"member-360p15-h264-aac-{seconds}s.ts"
        codecs = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
                  "-g", str(FPS), "-b:v", "600k", "-c:a", "aac", "-b:a", "64k"]  # fmt: skip
    else:
        clip = CACHE / f"member-360p15-vp8-opus-{seconds}s.webm"
        codecs = ["-c:v", "libvpx", "-b:v", "600k", "-deadline", "realtime",
                  "-c:a", "libopus", "-b:a", "32k"]  # fmt: skip
    if not clip.exists():
        tmp = clip.with_name(f"tmp-{clip.name}")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
             "-t", str(seconds), *codecs, str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(clip)
    return clip


@dataclass(frozen=True, slots=True)
class Packet:
    kind: Kind
    codec: str
    data: bytes
    pts_us: int
    keyframe: bool


def read_packets(clip: Path) -> list[Packet]:
    """The clip's packets in file order, as a publisher would send them."""
    out = []
    with av.open(str(clip)) as container:
        for p in container.demux():
            if not p.size or p.pts is None or p.time_base is None:
                continue
            kind = Kind.VIDEO if p.stream.type == "video" else Kind.AUDIO
            pts = int(p.pts * p.time_base * US)
            out.append(Packet(kind, p.stream.codec_context.name, bytes(p), pts, p.is_keyframe))
    start = min(p.pts_us for p in out)
    return [Packet(p.kind, p.codec, p.data, p.pts_us - start, p.keyframe) for p in out]


def run_remux(packets: list[Packet]) -> float:
    """Copy encoded frames into the audio and video playlists; CPU seconds."""
    with tempfile.TemporaryDirectory(prefix="member-bench-") as tmp:
        start = cpu_self()
        writer = MemberWriter(Path(tmp), "bench", MemberOutputs(), segment_target_s=SEGMENT_S)
        for p in packets:
            t = BASE_US + p.pts_us
            writer.push([MemberFrame(p.kind.value, p.kind, p.codec, p.data, t, None, p.keyframe)])
        writer.finish()
        assert writer.stats.frames_decoded == 0 and writer.stats.copied == len(packets)
        return cpu_self() - start


def run_transcode(clip: Path) -> float:
    """Decode the clip (as aiortc would) and encode it once into the two playlists."""
    with tempfile.TemporaryDirectory(prefix="member-bench-") as tmp:
        start = cpu_self()
        writer = MemberWriter(Path(tmp), "bench", MemberOutputs(), segment_target_s=SEGMENT_S)
        with av.open(str(clip)) as container:
            for frame in container.decode(video=0, audio=0):
                kind = Kind.VIDEO if isinstance(frame, av.VideoFrame) else Kind.AUDIO
                t = BASE_US + int((frame.time or 0.0) * US)
                writer.push([MemberFrame(kind.value, kind, "", frame, t)])
        writer.finish()
        assert writer.stats.encoders_opened == 2
        return cpu_self() - start


def run_ffmpeg(clip: Path, transcode: bool) -> float:
    """The same two playlists from one ffmpeg process; CPU seconds."""
    if transcode:
        video = ["-c:v", "libx264", "-preset", X264_PRESET, "-tune", X264_TUNE, "-threads", "1",
                 "-bf", "0", "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT_S})"]  # fmt: skip
        audio = ["-c:a", "aac", "-b:a", "64k"]
    else:
        video, audio = ["-c", "copy"], ["-c", "copy"]
    with tempfile.TemporaryDirectory(prefix="member-bench-ff-") as tmp:
        start = cpu_children()
        hls = ["-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_list_size", "0"]
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-threads", "1", "-i", str(clip),
             "-map", "0:v", *video, *hls, str(Path(tmp) / "video.m3u8"),
             "-map", "0:a", *audio, *hls, str(Path(tmp) / "audio.m3u8")],
            check=True,
        )  # fmt: skip
        return cpu_children() - start


def run_ffmpeg_startup() -> float:
    """CPU seconds of an ffmpeg run that does next to nothing: its fixed cost per process."""
    start = cpu_children()
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "anullsrc", "-t", "0.01",
         "-f", "null", "-"],
        check=True,
    )  # fmt: skip
    return cpu_children() - start


def summary(
    ours: list[float], ff: list[float], startup_s: float, seconds: int, clip: Path
) -> dict[str, object]:
    ff_s = statistics.median(ff)
    ours_s = statistics.median(ours)
    return {
        "clip": clip.name,
        "ours_cpu_s_per_media_s": ours_s / seconds,
        "ffmpeg_cpu_s_per_media_s": ff_s / seconds,
        "ratio_ours_over_ffmpeg": ours_s / ff_s,
        # the process start (libraries, probing) weighs on a short clip: without it
        "ffmpeg_cpu_s_per_media_s_less_startup": max(0.0, ff_s - startup_s) / seconds,
        "ratio_ours_over_ffmpeg_less_startup": ours_s / max(1e-9, ff_s - startup_s),
        "samples_cpu_s": {"ours": ours, "ffmpeg": ff},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--remux-seconds", type=int, default=120)
    p.add_argument("--transcode-seconds", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    remux_clip = make_clip("remux", args.remux_seconds)
    transcode_clip = make_clip("transcode", args.transcode_seconds)
    packets = read_packets(remux_clip)
    samples: dict[str, tuple[list[float], list[float]]] = {
        "remux": ([], []),
        "transcode": ([], []),
    }
    startup = statistics.median(run_ffmpeg_startup() for _ in range(3))
    for _ in range(args.runs):
        samples["remux"][0].append(run_remux(packets))
        samples["remux"][1].append(run_ffmpeg(remux_clip, transcode=False))
        samples["transcode"][0].append(run_transcode(transcode_clip))
        samples["transcode"][1].append(run_ffmpeg(transcode_clip, transcode=True))
    result = {
        "output": f"{WIDTH}x{HEIGHT} {FPS} fps, separate audio and video HLS playlists, "
        f"{SEGMENT_S:g} s segments",
        "ffmpeg_startup_cpu_s": startup,
        "remux": {
            "what": "H.264 + AAC copied (ours: frames already in memory) vs ffmpeg -c copy",
            **summary(*samples["remux"], startup, args.remux_seconds, remux_clip),
        },
        "transcode": {
            "what": f"VP8 + Opus decoded, libx264 {X264_PRESET} {X264_TUNE} + AAC 64k, vs the "
            "same in ffmpeg (one thread)",
            **summary(*samples["transcode"], startup, args.transcode_seconds, transcode_clip),
        },
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "member.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
